"""Dev and test halves of the built-in suites: every default is chosen on dev, the headline is
reported on test; a goal's phrasings never straddle the halves, and each split (and each RL seed)
is evaluated on scenes of its own."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from kalm.config import ConfigError
from kalm.data.suites import GoalSuite, SuiteError, load_builtin_suite
from kalm.eval.compare import eval_seed_for, scene_seed
from kalm.run_folder import compare_config, evaluate_stage, load_run_config, stage_names

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env", ["clevr", "metaworld"])
@pytest.mark.parametrize("level", ["rephrase", "easy", "hard"])
def test_halves_split_goals_not_phrasings(env, level):
    whole = load_builtin_suite(level, env)
    dev, test = whole.split("dev"), whole.split("test")
    dev_goals = {e.goal_key for e in dev.entries}
    test_goals = {e.goal_key for e in test.entries}
    assert dev_goals and test_goals and not dev_goals & test_goals
    assert dev_goals | test_goals == {e.goal_key for e in whole.entries}
    assert len(dev) + len(test) == len(whole)
    assert abs(len(dev_goals) - len(test_goals)) <= 1
    # every phrasing of a goal goes with it
    for e in whole.entries:
        assert e in (dev.entries if e.goal_key in dev_goals else test.entries)


def test_the_split_depends_on_the_goals_not_the_file_order():
    whole = load_builtin_suite("hard")
    shuffled = list(whole.entries)
    random.Random(0).shuffle(shuffled)
    again = GoalSuite(shuffled).split("dev")
    assert {e.goal_key for e in again.entries} == {
        e.goal_key for e in whole.split("dev").entries}
    assert load_builtin_suite("hard", split="dev").goals == whole.split("dev").goals


def test_the_train_level_is_never_split():
    whole = load_builtin_suite("train", "metaworld")
    assert load_builtin_suite("train", "metaworld", split="dev").goals == whole.goals


def test_bad_splits_are_refused():
    whole = load_builtin_suite("easy")
    with pytest.raises(SuiteError, match="unknown split 'val'"):
        whole.split("val")
    one_goal = GoalSuite([e for e in whole.entries if e.goal_key == whole.entries[0].goal_key])
    with pytest.raises(SuiteError, match="dev half is empty"):
        one_goal.split("dev")


def test_scenes_differ_by_split_and_rl_seed():
    assert scene_seed(1000) == 1000  # whole suites, shared scenes: as before the split
    seeds = {scene_seed(1000, split, s) for split in ("dev", "test") for s in (0, 1, 2)}
    assert len(seeds) == 6
    assert scene_seed(1000, "dev") != scene_seed(1000, "test")
    assert scene_seed(1000, "test", 0) == scene_seed(1000, "test", 0)


def test_the_run_evaluates_test_and_dev_in_stages_of_their_own(tmp_path):
    cfg = load_run_config(ROOT / "configs" / "clevr-quick.yaml", out=str(tmp_path / "r"))
    names = stage_names(cfg)
    assert cfg.evaluate.split == "test" and cfg.evaluate.dev
    assert "evaluate-cql-seed2" in names and "evaluate-dev-cql-seed2" in names
    assert evaluate_stage("bc", 1, "paper", "dev") == "evaluate-dev-bc-paper-seed1"
    test = compare_config(cfg, "bc", cfg.run_dir)
    dev = compare_config(cfg, "bc", cfg.run_dir, split="dev")
    assert (test.split, dev.split) == ("test", "dev") and test.scenes_per_seed
    assert eval_seed_for(test, 0) != eval_seed_for(dev, 0) != eval_seed_for(dev, 1)
    # a user's own suite file is evaluated whole, with no dev stages
    own = dataclasses.replace(cfg, suite_file=str(ROOT / "configs" / "clevr-quick.yaml"))
    assert not any(n.startswith("evaluate-dev-") for n in stage_names(own))
    old = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, split=None))
    assert not any(n.startswith("evaluate-dev-") for n in stage_names(old))


def test_a_bad_split_in_the_config_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evaluate: {split: validation}\n")
    with pytest.raises(ConfigError, match=r"evaluate\.split"):
        load_run_config(path)


def test_cli_split(tmp_path):
    from kalm.cli import main

    res = CliRunner().invoke(main, ["evaluate", "--policy", "random", "--suite", "easy",
                                    "--split", "dev", "--episodes", "4", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "(dev half)" in res.output
    bad = CliRunner().invoke(main, ["evaluate", "--policy", "random", "--split", "dev",
                                    "--suite-file", str(tmp_path / "x.jsonl")])
    assert bad.exit_code != 0 and "--split splits a built-in suite" in bad.output
