"""Bring your own environment: the toy grid world of examples/toy_env through every `kalm` stage."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kalm.cli import main
from kalm.data.episodes import read_episodes
from kalm.data.suites import SuiteError, load_builtin_suite, resolve_suite
from kalm.envs.registry import EnvDefinition, EnvError, get_env
from kalm.eval.evaluate import evaluate_policy
from kalm.llm.model import RolloutSpec

REPO = Path(__file__).resolve().parents[1]
TOY = "examples/toy_env/toy.py:TOY"  # the string of the docs, read from the repository root


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def toy():
    return get_env(str(REPO / TOY))


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r


def manhattan(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b)).sum())


def test_toy_env_through_collect_ground_imagine_train_evaluate(tmp_path, in_repo, toy):
    from kalm.llm.backbone import tiny_backbone

    mod = sys.modules[type(toy.make()).__module__]  # the loaded examples/toy_env/toy.py
    real, model, im, pol = (tmp_path / n for n in ("real.h5", "model", "im.h5", "pol"))

    cli("collect", "--env", TOY, "--suite", "train", "--episodes", 40, "--workers", 1,
        "--out", real)
    data = read_episodes(real)
    assert (data.spec.env, data.spec.obs_dim, data.spec.action_type, data.spec.action_dim) == (
        TOY, 2, "discrete", 4)
    assert len(data) == 40 and data.source == "real"
    train_targets = {"top-left", "top-right", "bottom-left", "bottom-right", "center"}
    for ep in data.episodes():
        target = mod.TARGETS[ep.goal["target"]]
        assert ep.goal["target"] in train_targets and ep.success
        assert ep.length == manhattan(ep.observations[0], target)  # the expert's shortest path
        np.testing.assert_allclose(ep.rewards, mod.episode_rewards(ep.goal, ep.observations))

    backbone = tmp_path / "tiny"
    bb = tiny_backbone()
    bb.model.save_pretrained(backbone)
    bb.tokenizer.save_pretrained(backbone)
    cli("ground", "--data", real, "--backbone", backbone, "--out", model, "--steps", 3,
        "--batch", 4)
    meta = json.loads((model / "kalm_model.json").read_text())
    assert meta["spec"]["env"] == TOY and meta["spec"]["obs_dim"] == 2
    assert meta["spec"]["state_low"] == [0.0, 0.0] and meta["spec"]["state_high"] == [4.0, 4.0]
    metrics = json.loads((model / "grounding_metrics.json").read_text())
    assert metrics["explanation"]["episodes"] == metrics["val_episodes"] == 4  # toy's judge ran

    r = cli("imagine", "--model", model, "--suite", "unseen", "--per-goal", 2, "--max-steps", 6,
            "--out", im)
    assert "out of table" not in r.output  # the toy defines no realism checks
    imagined = read_episodes(im)
    assert imagined.source == "imagined" and imagined.spec == data.spec and len(imagined) == 8
    assert {g["target"] for g in imagined.goals} == {"top", "bottom", "left", "right"}
    for ep in imagined.episodes():
        np.testing.assert_allclose(ep.rewards, mod.episode_rewards(ep.goal, ep.observations),
                                   rtol=1e-5, atol=1e-6)
        assert ep.terminals.tolist() == [mod.is_success(ep.goal, o) for o in ep.observations[1:]]
        assert ep.length <= 6 and (ep.observations >= 0).all() and (ep.observations <= 4).all()
    stats = json.loads(im.with_suffix(".stats.json").read_text())["levels"]["unseen"]
    # replayed_match, by hand: put the agent on each rollout's (rounded) first cell, walk the
    # imagined actions on the grid (walls stop it) and check the target is reached at the end
    replayed = []
    for ep in imagined.episodes():
        pos = np.clip(np.rint(ep.observations[0]), 0, 4)
        for a in ep.actions:
            pos = np.clip(pos + mod.MOVES[int(a)], 0, 4)
        replayed.append(bool(np.array_equal(pos, mod.TARGETS[ep.goal["target"]])))
    assert imagined.extras["replay_success"].tolist() == replayed
    assert stats["rollouts"] == 8
    assert stats["replayed_match"] == pytest.approx(sum(replayed) / 8)  # the set_state hook
    assert "out_of_table_pct" not in stats and stats["unrealistic_rollouts_pct"] is None

    cli("train", "--algo", "bc", "--real", real, "--imagined", im, "--steps", 20,
        "--save-every", 10, "--out", pol)
    assert json.loads((pol / "train_config.json").read_text())["env"] == TOY

    cli("evaluate", "--policy", pol, "--suite", "all", "--episodes", 3, "--workers", 1,
        "--json", tmp_path / "e.json")  # the env comes from the policy
    levels = json.loads((tmp_path / "e.json").read_text())["levels"]
    assert {k: v["episodes"] for k, v in levels.items()} == {"train": 3, "unseen": 3}
    r = CliRunner().invoke(main, ["evaluate", "--policy", str(pol), "--env", "clevr"])
    assert r.exit_code == 2 and "trained for env" in r.output and "toy-grid" in r.output


def test_expert_solves_toy_goals_and_random_does_not(toy):
    suite = resolve_suite("all", None, str(REPO / TOY))
    assert suite.levels == ["train", "unseen"]
    expert = evaluate_policy("expert", suite, episodes=9, workers=1, progress=False,
                             env=str(REPO / TOY))
    assert all(r.success_rate == 1.0 and r.episodes == 9 for r in expert.levels.values())
    rand = evaluate_policy("random", suite, episodes=9, workers=1, progress=False,
                           env=str(REPO / TOY))
    assert sum(r.successes for r in rand.levels.values()) < 18


def test_bad_env_strings_name_the_string_and_what_was_expected(tmp_path, in_repo):
    def fails(env, *needles):
        r = CliRunner().invoke(main, ["collect", "--env", env, "--episodes", "1", "--out",
                                      str(tmp_path / "x.h5")])
        assert r.exit_code == 2, r.output
        for n in (repr(env), *needles):
            assert n in r.output, r.output

    fails("nope", "unknown env", "path/to/file.py:ATTR")
    fails("examples/toy_env/toy.py:NOPE", "no attribute 'NOPE'", "TOY")
    fails("examples/toy_env/missing.py:TOY", "no such file")
    fails("kalm.cli:main", "expected a kalm.envs.registry.EnvDefinition")
    fails("kalm.not_a_module:X", "cannot import module")
    r = CliRunner().invoke(main, ["collect", "--env", TOY, "--policy", "oracle", "--out",
                                  str(tmp_path / "x.h5")])
    assert r.exit_code == 2 and "no built-in policy 'oracle'" in r.output
    r = CliRunner().invoke(main, ["collect", "--env", TOY, "--init-region", "table", "--out",
                                  str(tmp_path / "x.h5")])
    assert r.exit_code == 2 and "no init_region option" in r.output
    with pytest.raises(SuiteError, match="unknown built-in suite 'hard' for env 'toy-grid'"):
        load_builtin_suite("hard", TOY)
    clevr_suite = REPO / "src/kalm/envs/clevr/suites/easy.jsonl"
    r = CliRunner().invoke(main, ["check-suite", "--env", TOY, str(clevr_suite)])
    assert r.exit_code == 2 and f"{clevr_suite}:1:" in r.output and "'target'" in r.output
    r = cli("check-suite", "--env", TOY, "examples/toy_env/suites/unseen.jsonl")
    assert "unseen: 8 instructions, 4 goals" in r.output


def test_definition_checks_and_uniform_calls(toy):
    with pytest.raises(ValueError, match="state_low has 1 values, expected obs_dim=2"):
        dataclasses.replace(toy, state_low=(0.0,))
    with pytest.raises(EnvError, match="non-empty string"):
        get_env("")
    assert isinstance(get_env("clevr"), EnvDefinition) and get_env(str(REPO / TOY)) is toy
    # two-argument hooks (the toy's) and four-argument ones (CLEVR's) are called alike
    obs = np.array([[1, 4], [0, 4]], dtype=np.float32)
    rewards, terminals = toy.labels({"target": "top-left"}, obs, np.array([2]))
    assert rewards.tolist() == [1.0] and terminals.tolist() == [True]
    assert toy.success({"target": "top-left"}, obs[1], obs[0], 2)
    assert toy.explanation_correct("go to the upper left corner", {"target": "top-left"})
    assert not toy.explanation_correct("go to the left side", {"target": "top-left"})
    assert RolloutSpec.for_env(toy, "x").state_high == (4.0, 4.0)


def test_without_a_replay_hook_replay_numbers_are_null(toy):
    from kalm.imagination.quality import QualityReport, RolloutCheck, assess_rollout

    bare = dataclasses.replace(toy, set_state=None)
    obs = np.array([[0, 0], [1, 0]], dtype=np.float32)
    a = assess_rollout(bare, bare.make(), {"target": "right"}, obs, np.array([3]), False,
                       np.random.default_rng(0))
    assert (a.replay_ok, a.random_ok, a.check, a.errors.size) == (None, None, None, 0)
    report = QualityReport()
    report.add(False, False, False, RolloutCheck(transitions=1), a.errors, replayed=False,
               checked=False)
    out = report.to_json()
    assert out["replayed_match"] is None and out["state_error_mean"] is None
    assert out["self_judged_match"] == 0.0
    b = assess_rollout(toy, toy.make(), {"target": "right"}, obs, np.array([3]), False,
                       np.random.default_rng(0))
    assert b.replay_ok is False and b.errors.tolist() == [0.0]  # (1, 0) is not the target
