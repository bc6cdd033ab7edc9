"""Offline RL and evaluation with continuous actions, on a tiny made-up env (Slide, below):
the algorithm families, the action scaler and bounds, save/load, refusals of mismatched action
spaces, exact resume, evaluation by the env's success signal and the per-task breakdown."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData, write_episodes
from kalm.envs.base import EnvDefinition

LOW = np.array([-0.5, -2.0], np.float32)
HIGH = np.array([0.5, 2.0], np.float32)
ENV = f"{Path(__file__)}:SLIDE"  # the data names its env, so training finds the bounds
SPEC = EnvSpecInfo(ENV, 1, "continuous", 2)
RIGHT = {"dir": 1, "task": "right"}
LEFT = {"dir": -1, "task": "left"}
TEXT = {1: "Slide to the right.", -1: "Slide to the left."}


class SlideEnv(gym.Env):
    """obs = [x], x starts at 0; action (2,): x += a[0], a[1] does nothing; bounds LOW/HIGH
    (clipped, as Meta-World clips). Goal {"dir": +-1, "task"?}: success when x * dir >= 1, in
    info["is_success"] only; the episode never terminates (Meta-World style) and truncates
    after 5 steps."""

    LIMIT = 5

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(LOW, HIGH, dtype=np.float32)
        self.goal: dict = {}
        self.t, self.x = 0, 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.goal, self.t, self.x = dict(options["goal"]), 0, 0.0
        return np.zeros(1, np.float32), {"is_success": False, "goal": self.goal}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float32), LOW, HIGH)
        self.t += 1
        self.x += float(a[0])
        success = _reached(self.goal, self.x)
        return (np.array([self.x], np.float32), float(success), False, self.t >= self.LIMIT,
                {"is_success": success})


def _reached(goal, x) -> bool:
    return float(x) * goal["dir"] >= 1.0 - 1e-6


class SlideExpert:
    """Full speed towards the goal: success at step 2 (the ceiling)."""

    def begin(self, env, goal, instruction):
        self.dir = goal["dir"]

    def act(self, obs):
        return np.array([0.5 * self.dir, 0.0], np.float32)


SLIDE = EnvDefinition(
    name="slide", spec=EnvSpecInfo("slide", 1, "continuous", 2), state_low=[-10.0],
    state_high=[10.0], action_low=LOW.tolist(), action_high=HIGH.tolist(), make=SlideEnv,
    validate_goal=dict, is_success=lambda goal, obs: _reached(goal, obs[0]),
    max_steps=lambda goal: SlideEnv.LIMIT,
    episode_rewards=lambda goal, obs: np.array([_reached(goal, o[0]) for o in obs[1:]],
                                               np.float32),
    policies={"expert": lambda seed: SlideExpert()})


def _episode(direction: int, speed: float, rng) -> Episode:
    """Actions [speed * dir, noise]; the noise dimension also goes past its bounds (+-3),
    which training clips as the env does."""
    x, obs, acts = 0.0, [[0.0]], []
    for _ in range(SlideEnv.LIMIT):
        a = [speed * direction, float(rng.choice([-3.0, -1.0, 0.0, 1.0, 3.0]))]
        x += float(np.clip(a[0], LOW[0], HIGH[0]))
        obs.append([x])
        acts.append(a)
        if _reached({"dir": direction}, x):
            break
    n = len(acts)
    term = np.zeros(n, bool)
    term[-1] = _reached({"dir": direction}, x)
    return Episode(np.asarray(obs, np.float32), np.asarray(acts, np.float32),
                   term.astype(np.float32), term, TEXT[direction],
                   RIGHT if direction == 1 else LEFT)


def _data(n: int = 24) -> EpisodeData:
    """Expert episodes both ways (terminal at success) and a few slow ones (timeouts)."""
    rng = np.random.default_rng(0)
    eps = [_episode(1 if i % 2 == 0 else -1, 0.5, rng) for i in range(n)]
    eps += [_episode(1 if i % 2 == 0 else -1, 0.1, rng) for i in range(4)]
    return EpisodeData.from_episodes(eps, SPEC)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return write_episodes(_data(), tmp_path_factory.mktemp("data") / "real.h5")


def _train(real_path, out, algo, steps=6, **algo_kw):
    from kalm.rl.algos import AlgoConfig
    from kalm.rl.train import TrainConfig, train_policy

    cfg = TrainConfig(real=str(real_path), out=str(out), steps=steps, save_every=steps,
                      log_every=steps, algo=AlgoConfig(algo=algo, **algo_kw))
    return train_policy(cfg, progress=False)


# ------------------------------------------------------------------ data and configs
def test_continuous_transitions_and_dataset():
    import d3rlpy

    from kalm.rl.datasets import to_d3rlpy, to_transitions
    from kalm.rl.text_encoder import TextEncoder

    data = _data(4)
    data.actions = np.sign(data.actions)  # saturated, as Meta-World's often are
    enc = TextEncoder.shared()
    t = to_transitions(data, enc)
    assert t.actions.shape == (len(t), 2) and t.actions.dtype == np.float32
    mdp = to_d3rlpy(data, enc)
    # every action here is a whole number: d3rlpy would have guessed "discrete"
    assert mdp.dataset_info.action_space == d3rlpy.ActionSpace.CONTINUOUS
    assert mdp.dataset_info.action_size == 2


def test_paper_settings_per_family():
    import d3rlpy

    from kalm.rl.algos import AlgoConfig, create_algo

    def conf(algo, action_type="continuous", **kw):
        return create_algo(AlgoConfig(algo=algo, **kw), action_type).config

    td3 = conf("td3bc")
    assert isinstance(td3, d3rlpy.algos.TD3PlusBCConfig)
    assert (td3.batch_size, td3.actor_learning_rate, td3.critic_learning_rate, td3.alpha,
            td3.gamma) == (256, 3e-4, 3e-4, 2.5, 0.99)
    assert conf("td3bc", td3bc_alpha=0.5).alpha == 0.5
    iql = conf("iql")
    assert isinstance(iql, d3rlpy.algos.IQLConfig) and iql.batch_size == 256
    assert (iql.expectile, iql.weight_temp) == (0.7, 3.0)  # d3rlpy's defaults
    bc = conf("bc")
    assert isinstance(bc, d3rlpy.algos.BCConfig) and (bc.batch_size, bc.learning_rate) == (
        100, 1e-3)
    cql = conf("cql")
    assert isinstance(cql, d3rlpy.algos.CQLConfig)
    assert (cql.batch_size, cql.conservative_weight, cql.n_action_samples) == (256, 10.0, 10)
    enc = td3.actor_encoder_factory
    assert (enc.hidden_units, enc.activation) == ([256, 256], "relu")
    # the same names on discrete data are the discrete algorithms, as before
    assert isinstance(conf("bc", "discrete"), d3rlpy.algos.DiscreteBCConfig)
    discrete_cql = create_algo(AlgoConfig(algo="cql"), "discrete", steps=8000).config
    assert isinstance(discrete_cql, d3rlpy.algos.DiscreteCQLConfig)
    assert discrete_cql.target_update_interval == 1000  # the run's steps / 8


def test_identity_of_discrete_configs_is_unchanged():
    """Compare folders made before the continuous settings existed keep their manifest."""
    from dataclasses import asdict

    from kalm.rl.algos import AlgoConfig

    cfg = AlgoConfig(algo="cql")
    old = {k: v for k, v in asdict(cfg).items() if k not in ("td3bc_alpha", "cql_action_samples")}
    assert cfg.identity() == old
    assert AlgoConfig(algo="td3bc", td3bc_alpha=0.5).identity()["td3bc_alpha"] == 0.5


def test_algorithm_and_action_type_mismatches_are_refused(tmp_path, real):
    from click.testing import CliRunner

    from kalm.cli import main
    from kalm.config import ConfigError
    from kalm.rl.algos import check_algo
    from kalm.run_folder import RLStage, RunConfig

    for algo in ("td3bc", "iql"):
        with pytest.raises(ValueError, match=f"'{algo}'.*discrete actions.*env 'clevr'"):
            check_algo(algo, "discrete", "clevr")
    for algo in ("bcq", "sac"):
        with pytest.raises(ValueError, match=f"'{algo}'.*continuous"):
            _train(real, tmp_path / algo, algo)
    discrete = EpisodeData.from_episodes(
        [Episode(np.zeros((2, 10), np.float32), np.array([0]), np.ones(1, np.float32),
                 np.array([True]), "Push red right.", {"kind": "push"})],
        EnvSpecInfo("clevr", 10, "discrete", 40))
    write_episodes(discrete, tmp_path / "discrete.h5")
    r = CliRunner().invoke(main, ["train", "--algo", "td3bc", "--real",
                                  str(tmp_path / "discrete.h5"), "--steps", "2", "--out",
                                  str(tmp_path / "no")])
    assert r.exit_code == 2 and "'td3bc'" in r.output and "'clevr' has discrete" in r.output
    with pytest.raises(ConfigError, match=r"rl\.algos: unknown algo 'dqn'"):
        RunConfig(rl=RLStage(algos=["dqn"], steps={"dqn": 1}))
    with pytest.raises(ConfigError, match=r"rl\.algos: algo 'iql'.*discrete"):
        RunConfig(rl=RLStage(algos=["bc", "iql"], steps={"bc": 1, "iql": 1})).check_algos()
    from kalm.data.collect import CollectConfig

    RunConfig(env="metaworld", collect=CollectConfig(env="metaworld"),
              rl=RLStage(algos=["td3bc", "bc"], steps={"td3bc": 1, "bc": 1})).check_algos()


# ------------------------------------------------------------------ training, saving, acting
@pytest.mark.parametrize("algo", ["bc", "td3bc", "iql", "cql"])
def test_each_algorithm_trains_saves_loads_and_stays_in_bounds(tmp_path, real, monkeypatch,
                                                                algo):
    import kalm.rl.train as train_mod
    from kalm.rl.train import POLICY_FILE, TrainedPolicy

    saved = {}
    atomic_save = train_mod._atomic_save

    def keep(a, path):
        if path.name == POLICY_FILE:
            saved["algo"] = a
        atomic_save(a, path)

    monkeypatch.setattr(train_mod, "_atomic_save", keep)
    summary = _train(real, tmp_path / "pol", algo, steps=6, hidden_units=[16, 16])
    assert summary["steps"] == 6
    cfg = json.loads((tmp_path / "pol" / "train_config.json").read_text())
    assert cfg["action_type"] == "continuous" and cfg["action_bounds"] == f"env {ENV}"
    assert (cfg["action_low"], cfg["action_high"]) == (LOW.tolist(), HIGH.tolist())

    policy = TrainedPolicy(tmp_path / "pol")
    again = TrainedPolicy(tmp_path / "pol" / POLICY_FILE)
    assert not policy.discrete and policy.action_size == 2
    rng = np.random.default_rng(1)
    obs = np.concatenate([rng.uniform(-2, 2, (6, 1)), [[500.0], [-500.0]]]).astype(np.float32)
    texts = [TEXT[1], TEXT[-1]] * 4
    batch = policy.act_batch(obs, [RIGHT, LEFT] * 4, texts)
    assert batch.shape == (8, 2) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, again.act_batch(obs, [RIGHT, LEFT] * 4, texts))
    # the saved file acts as the trained object did (the scaler travels in the file)
    x = np.concatenate([obs, policy.encoder.encode(texts)], axis=1)
    raw = saved["algo"].predict(x)
    np.testing.assert_array_equal(batch, raw)
    # the scaler keeps predictions inside the bounds even far from the data; clipping is a no-op
    assert (raw >= LOW - 1e-6).all() and (raw <= HIGH + 1e-6).all()
    for i in range(len(obs)):
        policy.begin(SlideEnv(), RIGHT if i % 2 == 0 else LEFT, texts[i])
        a = policy.act(obs[i])
        assert a.shape == (2,) and a.dtype == np.float32
        # a batch of one multiplies in another order than a batch of eight: the last bit may
        # differ (discrete policies hide it behind the argmax)
        np.testing.assert_allclose(a, batch[i], rtol=0, atol=1e-6)


def test_action_bounds_come_from_the_data_for_an_unknown_env(tmp_path):
    from kalm.rl.train import TrainedPolicy

    data = _data(4)
    data.spec = EnvSpecInfo("elsewhere", 1, "continuous", 2)
    write_episodes(data, tmp_path / "real.h5")
    _train(tmp_path / "real.h5", tmp_path / "pol", "bc", steps=2, hidden_units=[8])
    cfg = json.loads((tmp_path / "pol" / "train_config.json").read_text())
    assert cfg["action_bounds"] == "data"
    assert cfg["action_low"] == [-0.5, -3.0] and cfg["action_high"] == [0.5, 3.0]
    a = TrainedPolicy(tmp_path / "pol").act(np.array([100.0], np.float32))
    assert (np.abs(a) <= [0.5, 3.0]).all()


def test_policies_refuse_an_env_with_other_actions(tmp_path, real):
    from kalm.rl.train import TrainedPolicy

    _train(real, tmp_path / "cont", "bc", steps=2, hidden_units=[8])
    cont = TrainedPolicy(tmp_path / "cont")
    obs_space = gym.spaces.Box(-10.0, 10.0, shape=(1,), dtype=np.float32)
    for space in (gym.spaces.Discrete(2), gym.spaces.Box(-1.0, 1.0, shape=(3,))):
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'cont'} was trained for "
                                                       f"continuous 2-d actions in env {ENV!r}; "
                                                       "this env's action space is")):
            cont.begin(SimpleNamespace(action_space=space, observation_space=obs_space), RIGHT,
                       TEXT[1])

    discrete = EpisodeData.from_episodes(
        [Episode(np.zeros((2, 10), np.float32), np.array([a]), np.ones(1, np.float32),
                 np.array([True]), "Push red right.", {"kind": "push"}) for a in (0, 3)],
        EnvSpecInfo("clevr", 10, "discrete", 40))
    write_episodes(discrete, tmp_path / "discrete.h5")
    _train(tmp_path / "discrete.h5", tmp_path / "disc", "bc", steps=2, hidden_units=[8])
    disc = TrainedPolicy(tmp_path / "disc")
    assert isinstance(disc.act(np.zeros(10, np.float32)), int)
    with pytest.raises(ValueError, match=r"trained for discrete actions \(40\) in env 'clevr'; "
                                         r"this env's action space is Box"):
        disc.begin(SlideEnv(), RIGHT, TEXT[1])


def _actions_and_values(path, x):
    import d3rlpy

    algo = d3rlpy.load_learnable(str(path), device="cpu:0")
    actions = algo.predict(x)
    return actions, algo.predict_value(x, actions)


def test_interrupted_and_resumed_training_matches_uninterrupted(tmp_path, real,
                                                                interrupted_training):
    """TD3+BC (target-policy noise from the torch RNG, the actor updated every 2nd gradient
    step), interrupted at step 16 (last checkpoint: step 10) and resumed, ends with exactly the
    weights of an uninterrupted run."""
    import yaml

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"train": {"log_every": 5, "algo": {
        "hidden_units": [32, 32], "batch_size": 32}}}))
    whole_file, split_file = interrupted_training("td3bc", real, config)
    x = np.random.default_rng(0).uniform(-1, 1, (16, 1 + 384)).astype(np.float32)
    whole_a, whole_q = _actions_and_values(whole_file, x)
    split_a, split_q = _actions_and_values(split_file, x)
    assert np.abs(whole_a - split_a).max() <= 1e-6
    assert np.abs(whole_q - split_q).max() <= 1e-5


# ------------------------------------------------------------------ evaluation
def _suite_file(tmp_path) -> Path:
    lines = [{"instruction": TEXT[1], "level": "train", "goal": RIGHT},
             {"instruction": TEXT[-1], "level": "train", "goal": LEFT},
             {"instruction": TEXT[1], "level": "plain", "goal": {"dir": 1}}]  # no task
    p = tmp_path / "s.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


def test_evaluation_counts_the_envs_success_per_task(tmp_path):
    from kalm.data.suites import load_suite
    from kalm.eval.evaluate import evaluate_policy

    suite = load_suite(_suite_file(tmp_path), env=ENV)
    for k in (1, 4):  # one episode at a time, and the batched path
        res = evaluate_policy("expert", suite, episodes=5, progress=False, env=ENV,
                              vector_envs=k)
        j = res.to_json()["levels"]
        # never terminates: every episode runs to the limit, success from info["is_success"]
        assert (j["train"]["successes"], j["train"]["episodes"]) == (5, 5)
        assert j["train"]["mean_length"] == SlideEnv.LIMIT
        tasks = j["train"]["tasks"]
        assert list(tasks) == ["right", "left"]  # the suite's order
        assert (tasks["right"]["episodes"], tasks["left"]["episodes"]) == (3, 2)
        assert sum(t["successes"] for t in tasks.values()) == j["train"]["successes"]
        assert "tasks" not in j["plain"]  # goals without a task: no breakdown
        assert "| train | left | 100.0% |" in res.table()
    rand = evaluate_policy("random", suite, episodes=5, progress=False, env=ENV).to_json()
    tasks = rand["levels"]["train"]["tasks"]
    assert sum(t["successes"] for t in tasks.values()) == rand["levels"]["train"]["successes"]
    assert sum(t["episodes"] for t in tasks.values()) == 5


def test_cli_trains_and_evaluates_a_continuous_policy(tmp_path, real):
    """BC on the expert's episodes learns which way each instruction means."""
    from click.testing import CliRunner

    from kalm.cli import main

    r = CliRunner().invoke(main, ["train", "--algo", "bc", "--real", str(real), "--steps", "300",
                                  "--save-every", "300", "--out", str(tmp_path / "pol")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["evaluate", "--policy", str(tmp_path / "pol"), "--suite-file",
                                  str(_suite_file(tmp_path)), "--episodes", "4", "--workers",
                                  "1", "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    train = json.loads((tmp_path / "e.json").read_text())["levels"]["train"]
    assert train["success_rate"] == 1.0, train
    assert {t: v["episodes"] for t, v in train["tasks"].items()} == {"right": 2, "left": 2}
    assert "| train | right |" in r.output
