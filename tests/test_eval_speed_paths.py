"""Batched evaluation (many envs per worker, one forward pass per step) gives exactly the
episodes of the one-episode-at-a-time path, for the same seeds."""

import functools
import json
from typing import ClassVar

import numpy as np
import pytest

from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData, write_episodes
from kalm.data.suites import load_suite
from kalm.eval.evaluate import evaluate_policy
from kalm.rl.train import TrainedPolicy

SUITE = [
    {"instruction": "Put the red ball left of the blue ball.", "level": "train",
     "goal": {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}},
    {"instruction": "Red to the left of blue, please.", "level": "train",
     "goal": {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}},
    {"instruction": "Green in front of cyan.", "level": "train",
     "goal": {"kind": "relation", "object": "green", "reference": "cyan", "direction": "front"}},
    {"instruction": "Nudge the purple ball to the right.", "level": "easy",
     "goal": {"kind": "push", "object": "purple", "direction": "right"}},
    {"instruction": "Push the red ball forward.", "level": "easy",
     "goal": {"kind": "push", "object": "red", "direction": "front"}},
]


class Spy(TrainedPolicy):
    """Counts the batched calls (in this process) and the rows they carried."""

    batches: ClassVar[list[int]] = []

    def act_batch(self, obs, goals, instructions):
        Spy.batches.append(len(obs))
        return super().act_batch(obs, goals, instructions)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A small BC policy on made-up CLEVR transitions: its actions depend on the state."""
    from kalm.rl.algos import AlgoConfig
    from kalm.rl.train import TrainConfig, train_policy

    tmp = tmp_path_factory.mktemp("policy")
    rng = np.random.default_rng(0)
    eps = []
    for i in range(40):
        obs = rng.uniform(-0.4, 0.4, (2, 10)).astype(np.float32)
        a = 8 if obs[0, 0] > 0 else 3
        eps.append(Episode(obs, np.array([a]), np.zeros(1, np.float32), np.array([True]),
                           SUITE[i % len(SUITE)]["instruction"], SUITE[i % len(SUITE)]["goal"]))
    write_episodes(EpisodeData.from_episodes(eps, EnvSpecInfo("clevr", 10, "discrete", 40)),
                   tmp / "real.h5")
    train_policy(TrainConfig(real=str(tmp / "real.h5"), out=str(tmp / "pol"), steps=150,
                             save_every=150, log_every=150,
                             algo=AlgoConfig(algo="bc", hidden_units=[32, 32],
                                             learning_rate=1e-2)), progress=False)
    return tmp / "pol"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    p = tmp_path_factory.mktemp("suite") / "s.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in SUITE))
    return load_suite(p)


def test_act_batch_rows_are_what_act_gives(policy):
    pol = TrainedPolicy(policy)
    rng = np.random.default_rng(1)
    obs = rng.uniform(-0.4, 0.4, (12, 10)).astype(np.float32)
    instructions = [SUITE[i % len(SUITE)]["instruction"] for i in range(12)]
    goals = [SUITE[i % len(SUITE)]["goal"] for i in range(12)]
    batched = pol.act_batch(obs, goals, instructions)
    single = []
    for o, g, t in zip(obs, goals, instructions, strict=True):
        pol.begin(None, g, t)
        single.append(pol.act(o))
    assert batched.tolist() == single
    assert len(set(single)) > 1  # the rows really differ


def _same(a, b):
    assert len(a.episodes) == len(b.episodes)
    for x, y in zip(a.episodes, b.episodes, strict=True):
        assert (x.instruction, x.goal, x.extras["level"]) == (y.instruction, y.goal,
                                                              y.extras["level"])
        np.testing.assert_array_equal(x.observations, y.observations)
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.successes, y.successes)
    assert a.to_json() == b.to_json()


def test_batched_evaluation_gives_the_unbatched_episodes(policy, suite):
    run = functools.partial(evaluate_policy, suite=suite, episodes=7, seed=4, progress=False)
    Spy.batches.clear()
    one = run(functools.partial(Spy, str(policy)), vector_envs=1)
    assert Spy.batches == []  # one episode at a time: act only
    many = run(functools.partial(Spy, str(policy)), vector_envs=5)
    assert max(Spy.batches) == 5  # five episodes stepped side by side
    _same(one, many)
    lengths = {e.length for e in one.episodes}
    assert len(lengths) > 1  # episodes of different lengths: envs refill at different times
    pooled = run(functools.partial(TrainedPolicy, str(policy)), vector_envs=4, workers=2)
    _same(one, pooled)
