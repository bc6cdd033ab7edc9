"""Offline-RL data: terminals vs timeouts, intervals, 1:1 mixing, text encoder, tiny training."""

import json
from pathlib import Path

import numpy as np
import pytest

from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData, write_episodes
from kalm.rl.datasets import TransitionSampler, to_d3rlpy, to_transitions
from kalm.rl.text_encoder import TextEncoder

SPEC = EnvSpecInfo("clevr", 10, "discrete", 40)
GOAL = {"kind": "push", "object": "red", "direction": "right"}


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def ep(n, success, instruction="Nudge the red ball to the right.", value=0.0, action=0):
    obs = np.full((n + 1, 10), value, np.float32) + np.arange(n + 1)[:, None]
    term = np.zeros(n, bool)
    term[-1] = success
    return Episode(obs, np.full(n, action), np.arange(n, dtype=np.float32), term, instruction,
                   GOAL)


def test_text_encoder_is_deterministic_offline_and_cached(encoder):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    a = encoder.encode(["Push the red ball left.", "Open the drawer."])
    b = TextEncoder().encode(["Push the red ball left.", "Open the drawer."])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.shape == (2, 384) and np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    para = encoder.encode(["Shove the red ball leftwards."])[0]
    assert para @ a[0] > para @ a[1]  # a paraphrase is closer than an unrelated goal
    # an embedding does not depend on what it is encoded with (no padded batches)
    texts = ["Push it.", "Put the green ball in front of the cyan ball, please.",
             "Red left of blue.", "Move the purple ball to the right of the red one."]
    together = TextEncoder.shared().encode(texts)
    fresh = TextEncoder()
    alone = np.stack([fresh.encode([t])[0] for t in texts])  # one text per call
    np.testing.assert_array_equal(together, alone)


def test_terminals_timeouts_and_intervals(encoder):
    data = EpisodeData.from_episodes([ep(3, True), ep(2, False, value=10.0)], SPEC)
    t = to_transitions(data, encoder)
    assert len(t) == 5
    assert t.terminals[:, 0].tolist() == [0, 0, 1, 0, 0]  # the timeout is not terminal
    np.testing.assert_array_equal(t.next_observations[2], 0.0)  # after a terminal: zeros
    np.testing.assert_allclose(t.next_observations[4, :10], 12.0)  # timeout bootstraps s_n
    np.testing.assert_allclose(t.observations[0, 10:], t.observations[3, 10:])
    assert t.observations.shape[1] == 10 + 384
    mdp = to_d3rlpy(data, encoder)
    assert len(mdp.episodes) == 2
    assert mdp.episodes[0].terminated and not mdp.episodes[1].terminated
    assert mdp.episodes[1].transition_count == 2  # both real transitions of the timeout
    tr = mdp.transition_picker(mdp.episodes[1], 1)
    np.testing.assert_allclose(tr.next_observation[:10], 12.0)
    assert tr.interval == 1 and tr.terminal == 0.0
    batch = TransitionSampler(t).sample(8)
    assert (batch.intervals == 1).all()


def test_one_to_one_mixing_in_every_batch(encoder):
    # every transition is distinguishable: real ones have state values 10 * episode + step,
    # imagined ones 1000 + ..., and their own instruction
    real = to_transitions(EpisodeData.from_episodes(
        [ep(3, True, value=10.0 * i, action=i) for i in range(6)], SPEC), encoder)
    imag = to_transitions(EpisodeData.from_episodes(
        [ep(3, True, value=1000.0 + 10 * i, action=20 + i, instruction="Imagined.")
         for i in range(4)], SPEC), encoder)
    real_rows = {(o, a) for o, a in zip(real.observations[:, 0], real.actions[:, 0],
                                        strict=True)}
    imag_rows = {(o, a) for o, a in zip(imag.observations[:, 0], imag.actions[:, 0],
                                        strict=True)}
    assert len(real_rows) == 18 and len(imag_rows) == 12

    def sources(batch):
        rows = list(zip(batch.observations[:, 0], batch.actions[:, 0], strict=True))
        from_real = np.array([r in real_rows for r in rows])
        from_imag = np.array([r in imag_rows for r in rows])
        assert (from_real ^ from_imag).all()  # each row is a transition of exactly one source
        # the rest of the row belongs to that same transition
        np.testing.assert_array_equal(batch.observations[from_real, 10:],
                                      np.repeat(real.observations[:1, 10:], from_real.sum(), 0))
        np.testing.assert_array_equal(batch.observations[from_imag, 10:],
                                      np.repeat(imag.observations[:1, 10:], from_imag.sum(), 0))
        np.testing.assert_array_equal(batch.next_observations[~batch.terminals[:, 0].astype(
            bool), 0], batch.observations[~batch.terminals[:, 0].astype(bool), 0] + 1)
        return from_real, from_imag

    sampler = TransitionSampler(real, imag, imagined_ratio=0.5, seed=0)
    seen_real, seen_imag = set(), set()
    for size in (32, 33, 100, *[32] * 20):
        b = sampler.sample(size)
        from_real, from_imag = sources(b)
        assert (from_real.sum(), from_imag.sum()) == (size - round(size / 2), round(size / 2))
        seen_real |= set(b.observations[from_real, 0].tolist())
        seen_imag |= set(b.observations[from_imag, 0].tolist())
    assert len(seen_real) == 18 and len(seen_imag) == 12  # both sources sampled throughout
    from_real, from_imag = sources(
        TransitionSampler(real, imag, imagined_ratio=0.25, seed=0).sample(40))
    assert (from_real.sum(), from_imag.sum()) == (30, 10)
    from_real, _ = sources(TransitionSampler(real).sample(16))
    assert from_real.all()


def _trivial_data(n=60):
    """One-step push goals: the right action is 0 (red, +x); others fail."""
    rng = np.random.default_rng(0)
    eps = []
    for i in range(n):
        a = 0 if i % 2 == 0 else int(rng.integers(1, 40))
        success = a in (0, 4, 6)
        e = ep(1, success, action=a)
        e.rewards[:] = 100.0 if success else 0.0
        eps.append(e)
    return EpisodeData.from_episodes(eps, SPEC)


def test_tiny_training_beats_random_and_round_trips(tmp_path):
    from kalm.rl.algos import AlgoConfig
    from kalm.rl.train import TrainConfig, TrainedPolicy, train_policy

    write_episodes(_trivial_data(), tmp_path / "real.h5")
    cfg = TrainConfig(real=str(tmp_path / "real.h5"), out=str(tmp_path / "pol"), steps=300,
                      save_every=100, log_every=100,
                      algo=AlgoConfig(algo="cql", hidden_units=[64, 64], learning_rate=1e-3,
                                      target_update_interval=50))
    summary = train_policy(cfg, progress=False)
    assert summary["steps"] == 300 and 0 < summary["sampling_share"] < 1
    policy = TrainedPolicy(tmp_path / "pol")
    policy.begin(None, GOAL, "Nudge the red ball to the right.")
    obs = np.zeros(10, np.float32)
    assert policy.act(obs) in (0, 4, 6)  # random would be right 3/40 of the time
    again = TrainedPolicy(tmp_path / "pol" / "policy.d3")
    again.begin(None, GOAL, "Nudge the red ball to the right.")
    rng = np.random.default_rng(1)
    for _ in range(5):
        o = rng.uniform(-0.4, 0.4, 10).astype(np.float32)
        assert policy.act(o) == again.act(o)
    saved = json.loads((tmp_path / "pol" / "train_config.json").read_text())
    assert saved["algo"]["gamma"] == 0.99 and saved["real_transitions"] == 60


def _q_values(path, obs):
    import d3rlpy

    algo = d3rlpy.load_learnable(str(path), device="cpu:0")
    return np.stack([algo.predict_value(obs, np.full(len(obs), a)) for a in range(40)], 1)


def test_interrupted_and_resumed_training_matches_uninterrupted(tmp_path,
                                                                interrupted_training):
    """CQL with a target sync every 7 gradient steps, interrupted at step 16 (last checkpoint:
    step 10) and resumed, ends with exactly the weights of an uninterrupted run."""
    import yaml

    write_episodes(_trivial_data(20), tmp_path / "real.h5")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"train": {"log_every": 5, "algo": {
        "hidden_units": [32, 32], "learning_rate": 3e-3, "target_update_interval": 7}}}))
    whole_file, split_file = interrupted_training("cql", tmp_path / "real.h5", config)
    obs = np.random.default_rng(0).uniform(-1, 1, (16, 10 + 384)).astype(np.float32)
    whole = _q_values(whole_file, obs)
    split = _q_values(split_file, obs)
    assert np.abs(whole - split).max() <= 1e-6


def test_cli_trains_and_evaluates_a_policy(tmp_path):
    from click.testing import CliRunner

    from kalm.cli import main

    write_episodes(_trivial_data(20), tmp_path / "real.h5")
    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"instruction": "Nudge the red ball to the right.",
                                 "level": "easy", "goal": GOAL}) + "\n")
    r = CliRunner().invoke(main, ["train", "--algo", "bc", "--real", str(tmp_path / "real.h5"),
                                  "--steps", "50", "--save-every", "25", "--out",
                                  str(tmp_path / "pol")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["evaluate", "--policy", str(tmp_path / "pol"), "--suite-file",
                                  str(suite), "--episodes", "3", "--workers", "1", "--json",
                                  str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["levels"]["easy"]["episodes"] == 3
    r = CliRunner().invoke(main, ["evaluate", "--policy", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not 'expert'" in r.output


def test_compare_baseline_vs_kalm_table_and_plot(tmp_path, monkeypatch):
    import dataclasses

    import kalm.eval.compare as compare_mod
    from kalm.eval.compare import CompareConfig, run_compare

    write_episodes(_trivial_data(20), tmp_path / "real.h5")
    write_episodes(_trivial_data(10), tmp_path / "im.h5")
    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"instruction": "Nudge the red ball to the right.",
                                 "level": "easy", "goal": GOAL}) + "\n")
    cfg = CompareConfig(real=str(tmp_path / "real.h5"), out=str(tmp_path / "cmp"),
                        imagined={"easy": str(tmp_path / "im.h5")}, algo="bc", seeds=[0, 1],
                        steps=20, episodes=2, easy_episodes=2, suite_file=str(suite),
                        levels=["easy"], workers=1)
    calls = {"train": [], "evaluate": []}
    train, evaluate = compare_mod.train_policy, compare_mod.evaluate_policy

    def count_train(tc, **kw):
        calls["train"].append((Path(tc.out).name, tc.steps))
        return train(tc, **kw)

    def count_evaluate(policy, suite, episodes, **kw):
        calls["evaluate"].append((Path(kw["name"]).name, episodes))
        return evaluate(policy, suite, episodes, **kw)

    monkeypatch.setattr(compare_mod, "train_policy", count_train)
    monkeypatch.setattr(compare_mod, "evaluate_policy", count_evaluate)
    root = tmp_path / "cmp"
    summary = run_compare(cfg)
    assert len(calls["train"]) == 4 and len(calls["evaluate"]) == 4
    assert len(summary["success"]["baseline"]["easy"]) == 2
    assert len(summary["success"]["kalm"]["easy"]) == 2
    md = (root / "results.md").read_text()
    assert "| easy |" in md and "±" in md
    assert (root / "results.png").stat().st_size > 0

    calls = {"train": [], "evaluate": []}
    again = run_compare(cfg)  # same config: every policy and evaluation is reused
    assert calls == {"train": [], "evaluate": []}
    assert again == summary

    # (seed 1 only from here, to keep the test short)
    more = dataclasses.replace(cfg, seeds=[1], episodes=3, easy_episodes=3)  # re-evaluate
    calls = {"train": [], "evaluate": []}
    res = run_compare(more)
    assert calls["train"] == [] and sorted(calls["evaluate"]) == [
        ("baseline-seed1", 3), ("kalm-easy-seed1", 3)]
    assert res["episodes_per_level_and_seed"] == {"easy": 3}
    ev = json.loads((root / "evaluate" / "kalm-easy-seed1" / "eval-easy.json").read_text())
    assert ev["episodes"] == 3

    old_policy = (root / "baseline-seed1" / "policy.d3").read_bytes()
    longer = dataclasses.replace(more, steps=30)  # retrain (old folders kept aside), re-evaluate
    calls = {"train": [], "evaluate": []}
    res = run_compare(longer)
    assert sorted(calls["train"]) == [("baseline-seed1", 30), ("kalm-easy-seed1", 30)]
    assert sorted(calls["evaluate"]) == [("baseline-seed1", 3), ("kalm-easy-seed1", 3)]
    assert res["steps"] == 30
    assert (root / "baseline-seed1" / "policy.d3").read_bytes() != old_policy
    moved = sorted(p.name for p in root.glob("baseline-seed1.superseded-*"))
    assert len(moved) == 1
    assert (root / moved[0] / "policy.d3").read_bytes() == old_policy
    assert json.loads((root / "baseline-seed1" / "manifest.json").read_text())["steps"] == 30
    assert (root / "baseline-seed0" / "policy.d3").exists()  # other seeds untouched
