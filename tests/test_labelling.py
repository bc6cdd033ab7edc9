"""Labelling imagined rollouts for RL: the labellers, the files each learner gets, the config
checks, the pipeline's label and paper-mode stages, and the report's tables of them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from kalm.config import ConfigError
from kalm.data.episodes import EpisodeData, read_episodes, write_episodes
from kalm.eval.compare import policy_runs, policy_train_config
from kalm.imagination.labelling import LabelConfig, label_level, labelled_file
from kalm.run_folder import (
    PAPER,
    RunConfig,
    compare_config,
    imagined_data,
    label_folder,
    load_run_config,
)
from test_dynamics import CLEVR, GOAL, SimulatorDynamics, imagined
from test_pipeline import _fake_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _rollouts(real):
    """Three imagined rollouts of the expert episode's start state:
    `right`: the LLM predicts nothing moves (it judges a failure) but its actions, the
    expert's, reach the goal (replay: success); `wrong`, twice: the LLM moves red next to
    blue on its own states (it judges a success) with a push that does nothing (replay:
    failure)."""
    s0 = real.observations[0]
    right = imagined(real, np.repeat(real.observations[:1], real.length + 1, axis=0),
                     real.actions)
    right.extras["replay_success"] = True
    fake = s0.copy()
    fake[0:2] = s0[2:4] + np.array([-0.3, 0.0])
    wrong = imagined(real, np.stack([s0, fake]), np.array([8 * 2 + 0]))
    assert wrong.extras["self_success"] and not right.extras["self_success"]
    return right, wrong


def _write(episodes, path: Path) -> Path:
    for e in episodes:
        e.extras["level"] = "rephrase"
    write_episodes(EpisodeData.from_episodes(episodes, CLEVR.episode_spec("clevr"),
                                             source="imagined"), path)
    return path


def test_ensemble_labels_keep_only_what_the_ensemble_judges_successful(expert_episode,
                                                                      tmp_path):
    right, wrong = _rollouts(expert_episode)
    src = _write([right, wrong, wrong], tmp_path / "imagined.h5")
    stats = label_level(src, tmp_path / "ens", LabelConfig("ensemble"), CLEVR,
                        SimulatorDynamics(GOAL))
    assert stats["generated"] == 3 and stats["kept"] == {"all": 3, "success": 1}
    every = read_episodes(tmp_path / "ens" / "labelled.h5")
    assert list(every.extras["ensemble_success"]) == [True, False, False]
    success = read_episodes(tmp_path / "ens" / "labelled-success.h5")
    assert len(success) == 1 and success.extras["replay_success"].all()
    assert success.terminals[0, success.lengths[0] - 1]  # relabelled: a terminal success
    d = stats["diagnostic"]
    assert d["replayed_successful"] == 1 and d["replayed_successful_of_kept"] == 1
    assert d["labeller"]["precision"] == 1.0 and d["llm_self"]["precision"] == 0.0

    # the paper's labeller: the LLM's own verdicts, the two wrong rollouts "succeed"
    stats = label_level(src, tmp_path / "llm", LabelConfig("llm"), CLEVR)
    assert stats["kept"] == {"all": 3, "success": 2}
    assert stats["diagnostic"]["labeller"]["precision"] == 0.0
    success = read_episodes(tmp_path / "llm" / "labelled-success.h5")
    assert not success.extras["replay_success"].any()


def test_kept_rollouts_are_judged_on_the_replay_of_the_actions_they_keep(expert_episode,
                                                                         tmp_path):
    """The ensemble ends a rollout at its first success and the learner gets only those
    actions: the diagnostic must replay them, not the LLM's whole sequence, whose later pushes
    may undo the goal (that counted right labels as wrong)."""
    from kalm.envs.registry import make_env
    from kalm.imagination.quality import replay_actions

    env = make_env(CLEVR, "paper")
    s0, acts = expert_episode.observations[0], list(expert_episode.actions)
    undo = next(a for a in range(CLEVR.spec.action_dim)  # a push that breaks the goal again
                if not replay_actions(CLEVR, env, GOAL, s0, [*acts, a, a])[1])
    longer = np.array([*acts, undo, undo])
    # the LLM predicts that nothing moves (its own label: failure); the ensemble, here the
    # simulator itself, sees the goal met after the expert's pushes
    rollout = imagined(expert_episode, np.repeat(s0[None], len(longer) + 1, axis=0), longer)
    rollout.extras.update(replay_success=False, replayed=True)  # as `kalm imagine` stores it
    src = _write([rollout], tmp_path / "imagined.h5")
    stats = label_level(src, tmp_path / "ens", LabelConfig("ensemble"), CLEVR,
                        SimulatorDynamics(GOAL))
    kept = read_episodes(tmp_path / "ens" / "labelled-success.h5")
    assert kept.lengths[0] == len(acts)  # cut where the goal first holds
    assert kept.extras["replay_success"][0] and not kept.extras["replay_success_uncut"][0]
    d = stats["diagnostic"]
    assert d["replayed_successful_of_kept"] == 1 and d["labeller"]["precision"] == 1.0
    assert d["replayed_successful"] == 0  # the LLM's rollouts as generated: none ends there


def test_no_judged_success_writes_no_success_file_and_trains_no_bc_kalm_policy(
        expert_episode, tmp_path):
    _, wrong = _rollouts(expert_episode)
    root = tmp_path / "run"
    src = _write([wrong, wrong], imagined_data(root, "rephrase"))
    # a stale success file from an earlier labelling must not survive
    (label_folder(root, "rephrase")).mkdir(parents=True)
    (label_folder(root, "rephrase") / "labelled-success.h5").write_text("old")
    stats = label_level(src, label_folder(root, "rephrase"), LabelConfig(), CLEVR,
                        SimulatorDynamics(GOAL))
    assert stats["files"] == {"all": "labelled.h5", "success": None}
    assert labelled_file(label_folder(root, "rephrase"), "success") is None
    cfg = RunConfig(out=str(root), imagine=dataclasses.replace(
        RunConfig().imagine, levels={"rephrase": 2}), rl=dataclasses.replace(
        RunConfig().rl, keep={"cql": "all"}))
    bc = compare_config(cfg, "bc", root)
    assert [name for name, _ in policy_runs(bc, 0)] == ["baseline-seed0"]
    cql = compare_config(cfg, "cql", root)
    assert [name for name, _ in policy_runs(cql, 0)] == ["baseline-seed0",
                                                          "kalm-rephrase-seed0"]


def test_a_level_whose_kept_rollouts_cover_too_few_tasks_trains_no_kalm_policy(
        expert_episode, tmp_path):
    """One judged success of three tasks: under rl.min_kept_share 0.5 the level has no KALM
    policy for a learner of the successes (and the report says why), above it, it has one; a
    learner of every rollout is never short."""
    from kalm.eval.report import imagined_use_table

    right, wrong = _rollouts(expert_episode)
    root = tmp_path / "run"
    src = _write([right, wrong, wrong], imagined_data(root, "rephrase"))
    label_level(src, label_folder(root, "rephrase"), LabelConfig(), CLEVR,
                SimulatorDynamics(GOAL))

    def runs(algo, share):
        cfg = RunConfig(out=str(root), imagine=dataclasses.replace(
            RunConfig().imagine, levels={"rephrase": 2}), rl=dataclasses.replace(
            RunConfig().rl, keep={"cql": "all"}, min_kept_share=share))
        return cfg, [name for name, _ in policy_runs(compare_config(cfg, algo, root), 0)]

    assert runs("bc", 0.0)[1] == runs("bc", 0.3)[1] == ["baseline-seed0", "kalm-rephrase-seed0"]
    cfg, names = runs("bc", 0.5)
    assert names == ["baseline-seed0"]
    assert runs("cql", 0.5)[1] == ["baseline-seed0", "kalm-rephrase-seed0"]
    assert "1 of 3 tasks kept, under rl.min_kept_share 0.50" in imagined_use_table(root, cfg)


def test_bc_learns_only_from_judged_successes_cql_from_all_paper_mode_from_the_llm(
        expert_episode, tmp_path):
    right, wrong = _rollouts(expert_episode)
    root = tmp_path / "run"
    src = _write([right, wrong, wrong], imagined_data(root, "rephrase"))
    label_level(src, label_folder(root, "rephrase"), LabelConfig(), CLEVR,
                SimulatorDynamics(GOAL))
    cfg = RunConfig(out=str(root), imagine=dataclasses.replace(
        RunConfig().imagine, levels={"rephrase": 2}), rl=dataclasses.replace(
        RunConfig().rl, level_ratios={"rephrase": 0.25}, reference_rows=["paper"],
        keep={"cql": "all"}))
    assert RunConfig().rl.keep_for("cql") == RunConfig().rl.keep_for("bc") == "success"

    def train_data(algo, variant=None):
        cc = compare_config(cfg, algo, root, variant)
        name, level = policy_runs(cc, 0)[-1]
        tc = policy_train_config(cc, 0, level, tmp_path / name)
        return name, tc.imagined, tc.imagined_ratio

    name, files, ratio = train_data("bc")
    assert name == "kalm-rephrase-seed0" and ratio == 0.25
    # a share per algorithm; the level's own share still wins
    per_algo = dataclasses.replace(cfg.rl, algo_ratios={"cql": 0.1})
    assert per_algo.ratio_for("rephrase", "cql") == 0.25
    assert dataclasses.replace(per_algo, level_ratios={}).ratio_for("rephrase", "cql") == 0.1
    assert dataclasses.replace(per_algo, level_ratios={}).ratio_for("rephrase", "bc") == 0.5
    by_algo = dataclasses.replace(cfg, rl=dataclasses.replace(per_algo, level_ratios={}))
    assert compare_config(by_algo, "cql", root).imagined_ratio == 0.1
    assert compare_config(by_algo, "bc", root).imagined_ratio == 0.5
    bc_data = read_episodes(files[0])
    assert len(bc_data) == 1 and bc_data.extras["ensemble_success"].all()
    name, files, ratio = train_data("cql")
    assert len(read_episodes(files[0])) == 3 and ratio == 0.25
    name, files, ratio = train_data("bc", PAPER)
    assert name == "paper-rephrase-seed0" and files == [str(src)] and ratio == 0.5
    assert [n for n, _ in policy_runs(compare_config(cfg, "bc", root, PAPER), 0)] == [
        "paper-rephrase-seed0"]  # the baseline is trained once, by the default variant


@pytest.mark.parametrize("section, bad, match", [
    ("label", {"labeller": "oracle"}, "label.*labeller must be one of"),
    ("label", {"labeller": "llm", "penalty": 1.0}, "need the dynamics ensemble"),
    ("label", {"max_uncertainty_quantile": 1.5}, r"in \(0, 1\]"),
    ("rl", {"keep": {"bc": "best"}}, "rl.keep.bc"),
    ("rl", {"level_ratios": {"rephrase": 1.0}}, "rl.level_ratios.rephrase"),
    ("rl", {"level_ratios": {"novel": 0.2}}, r"levels \['novel'\] are not imagined"),
    ("rl", {"algo_ratios": {"cql": 0.0}}, "rl.algo_ratios.cql"),
    ("rl", {"algo_ratios": {"iql": 0.2}}, r"rl.algo_ratios: \['iql'\] not among rl.algos"),
    ("rl", {"imagined_ratio": 0.0}, "rl.imagined_ratio"),
    ("rl", {"reference_rows": ["oracle"]}, "rl.reference_rows: unknown row 'oracle'"),
    ("label", {"min_votes": 6}, r"label.min_votes \(6\) exceeds dynamics.members \(5\)"),
])
def test_bad_label_and_rl_settings_name_the_key(tmp_path, section, bad, match):
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "clevr-quick.yaml").read_text())
    raw[section] = {**(raw.get(section) or {}), **bad}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=match):
        load_run_config(path)


def test_label_stages_read_the_ensemble_and_paper_rows_add_only_their_stages(tmp_path):
    from kalm.pipeline import Runner

    cfg = load_run_config(ROOT / "configs" / "clevr-quick.yaml", out=str(tmp_path / "r"),
                          seeds=[0])
    stages = {s.name: s for s in _fake_pipeline(cfg, [])}
    assert stages["label-easy"].inputs == ["imagine-easy", "dynamics"]
    assert stages["train-bc-seed0"].inputs == ["collect", "label-rephrase", "label-easy",
                                               "label-hard"]
    calls: list[str] = []
    runner = Runner(cfg.run_dir, lambda m: None)
    for s in _fake_pipeline(cfg, calls):
        runner.run(s)
    assert "dynamics" in calls and "train-cql-paper-seed0" not in calls

    with_paper = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, reference_rows=["paper"]))
    calls.clear()
    runner = Runner(cfg.run_dir, lambda m: None)
    for s in _fake_pipeline(with_paper, calls):
        runner.run(s)
    assert calls == ["train-bc-paper-seed0", "evaluate-bc-paper-seed0",
                     "evaluate-dev-bc-paper-seed0", "train-cql-paper-seed0",
                     "evaluate-cql-paper-seed0", "evaluate-dev-cql-paper-seed0", "report"]

    # rollouts without the LLM: shot for the same tasks, trained and evaluated in their stages
    with_shooting = dataclasses.replace(cfg, rl=dataclasses.replace(
        cfg.rl, reference_rows=["paper", "shooting", "llm_policy"]))
    calls.clear()
    runner = Runner(cfg.run_dir, lambda m: None)
    stages = _fake_pipeline(with_shooting, calls)
    assert {s.name: s for s in stages}["shoot-hard"].inputs == ["imagine-hard", "dynamics"]
    for s in stages:
        runner.run(s)
    assert calls == ["shoot-rephrase", "shoot-easy", "shoot-hard",
                     "train-bc-shooting-seed0", "evaluate-bc-shooting-seed0",
                     "evaluate-dev-bc-shooting-seed0", "train-cql-shooting-seed0",
                     "evaluate-cql-shooting-seed0", "evaluate-dev-cql-shooting-seed0",
                     "evaluate-llm-policy", "report"]
    assert {s.name: s for s in stages}["evaluate-llm-policy"].inputs == ["ground"]

    # a changed labeller relabels and retrains, but imagines nothing again
    llm = dataclasses.replace(with_paper, label=LabelConfig("llm"))
    calls.clear()
    runner = Runner(cfg.run_dir, lambda m: None)
    for s in _fake_pipeline(llm, calls):
        runner.run(s)
    assert not any(c.startswith(("imagine", "ground", "collect")) for c in calls)
    assert {"label-easy", "train-bc-seed0"} <= set(calls)
    assert "dynamics" not in calls and "train-bc-paper-seed0" not in calls


def test_report_tables_show_labels_use_and_the_paper_column(expert_episode, tmp_path):
    from kalm.eval.report import (
        imagined_use_table,
        labelling_table,
        success_table,
        untrained_levels,
    )

    right, wrong = _rollouts(expert_episode)
    root = tmp_path / "run"
    src = _write([right, wrong, wrong], imagined_data(root, "rephrase"))
    (src.with_suffix(".stats.json")).write_text(json.dumps({"kept": 3}))
    label_level(src, label_folder(root, "rephrase"), LabelConfig(), CLEVR,
                SimulatorDynamics(GOAL))
    cfg = RunConfig(out=str(root), imagine=dataclasses.replace(
        RunConfig().imagine, levels={"rephrase": 2, "hard": 1}),
        rl=dataclasses.replace(RunConfig().rl, reference_rows=["paper"], keep={"cql": "all"}))
    table = labelling_table(root, ["rephrase", "hard"])
    assert "| rephrase | ensemble | 3 | 3 | 1 | 1 (33.3%) | 1 (100.0%) | 100.0% / 100.0% / " \
           "1.00 | 0.0% |" in table
    assert "| hard | not labelled yet |" in table
    use = imagined_use_table(root, cfg)
    assert "| BC | KALM | rephrase | ensemble, judged successful | 1 |" in use
    assert "| CQL | KALM | rephrase | ensemble, every kept rollout | 3 |" in use
    assert "| BC | paper mode | rephrase | LLM's own, every rollout | 3 | - | 0.50 |" in use
    summaries = {"bc": {"success": {"baseline": {"easy": [0.5, 0.7]}, "kalm": {"easy": [0.6]},
                                    "paper": {"easy": [0.1]}},
                        "episodes_per_level_and_seed": {"easy": 300}}}
    assert "| easy | 300 | 60.0 ± 10.0 | 60.0 ± 0.0 | 10.0 ± 0.0 |" in success_table(summaries)
    assert "BC KALM, paper mode" in success_table(summaries)
    # a level whose labels keep nothing trains no KALM policy: its cell says so
    untrained = {"bc": untrained_levels(root, dataclasses.replace(
        cfg, rl=dataclasses.replace(cfg.rl, min_kept_share=0.9)), "bc")}
    assert untrained == {"bc": {"kalm": {"rephrase"}}}  # 1 of 3 tasks kept, under 0.9
    summaries["bc"]["success"]["baseline"]["rephrase"] = [0.4]
    table = success_table(summaries, untrained)
    assert "| rephrase | - | 40.0 ± 0.0 | no KALM policy (too few rollouts kept) | - |" in table
    assert "| easy | 300 | 60.0 ± 10.0 | 60.0 ± 0.0 | 10.0 ± 0.0 |" in table


# ----------------------------------------------------------------- rollouts without the LLM
class _StepSuccessEnv:
    """A definition stand-in whose goal is met when the state's first entry reaches 1."""

    @staticmethod
    def success(goal, obs, prev=None, action=None):
        return bool(obs[0] >= 1.0)

    @staticmethod
    def first_success(goal, states, actions):
        hits = [t for t in range(len(actions)) if states[t + 1][0] >= 1.0]
        return hits[0] if hits else None


def test_shooting_chooses_the_soonest_success_then_the_least_uncertain():
    from kalm.imagination.shooting import choose

    states = np.zeros((4, 4, 1), np.float32)
    states[1, 3, 0] = 1.0  # succeeds at step 2
    states[2, 2, 0] = 1.0  # succeeds at step 1, uncertain
    states[3, 2, 0] = 1.0  # succeeds at step 1, confident
    u = np.array([[0.1] * 3, [0.1] * 3, [0.9] * 3, [0.2] * 3], np.float32)
    acts = np.zeros((4, 3), np.int64)
    assert choose(_StepSuccessEnv, {}, states, u, acts) == (3, 1)
    assert choose(_StepSuccessEnv, {}, states[:1], u[:1], acts[:1]) == (0, None)


def test_the_verified_diagnostic_keeps_what_really_reaches_the_goal_on_simulator_states(
        expert_episode, tmp_path):
    from kalm.imagination.labelling import verify_level

    right, wrong = _rollouts(expert_episode)
    src = _write([right, wrong, wrong], tmp_path / "imagined.h5")
    stats = verify_level(src, tmp_path / "verify", CLEVR)
    assert stats["labeller"] == "simulator (diagnostic)" and stats["uses_simulator"]
    assert stats["judged_successful"] == 1 and stats["kept"]["all"] == 3
    ok = read_episodes(tmp_path / "verify" / "labelled-success.h5")
    assert len(ok) == 1 and ok.episode(0).terminals[-1]
    # the simulator's states: the expert episode's own, cut at its first success
    first = int(np.flatnonzero(expert_episode.success_steps)[0])
    assert ok.lengths[0] == first + 1
    assert np.allclose(ok.observations[0, : first + 2],
                       expert_episode.observations[: first + 2], atol=1e-5)
    every = read_episodes(tmp_path / "verify" / "labelled.h5")
    assert not every.terminals[1:].any()  # the LLM's "successes" did not happen


def test_shooting_with_min_votes_skips_successes_the_members_do_not_confirm():
    from kalm.imagination.shooting import choose

    states = np.zeros((3, 4, 1), np.float32)
    states[1, 2, 0] = 1.0  # the mean says: success at step 1
    states[2, 3, 0] = 1.0  # the mean says: success at step 2
    u = np.full((3, 3), 0.1, np.float32)
    acts = np.zeros((3, 3), np.int64)
    members = np.repeat(states[None], 3, axis=0)
    members[1:, 1] = 0.0  # only one member reaches candidate 1's goal
    assert choose(_StepSuccessEnv, {}, states, u, acts) == (1, 1)
    assert choose(_StepSuccessEnv, {}, states, u, acts, members, min_votes=1) == (1, 1)
    assert choose(_StepSuccessEnv, {}, states, u, acts, members, min_votes=2) == (2, 2)
    assert choose(_StepSuccessEnv, {}, states, u, acts, members, min_votes=4) == (0, None)
    with pytest.raises(ValueError, match="min_votes needs"):
        choose(_StepSuccessEnv, {}, states, u, acts, None, min_votes=2)


def test_random_sequences_fit_the_action_space():
    import gymnasium as gym

    from kalm.imagination.shooting import random_sequences

    rng = np.random.default_rng(0)
    d = random_sequences(gym.spaces.Discrete(40), 8, 5, rng)
    assert d.shape == (8, 5) and d.min() >= 0 and d.max() < 40
    box = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    c = random_sequences(box, 3, 2, rng)
    assert c.shape == (3, 2, 4) and c.dtype == np.float32 and np.abs(c).max() <= 1.0


def test_shot_rollouts_on_perfect_dynamics_are_judged_as_the_simulator_judges_them(
        expert_episode, tmp_path):
    from kalm.imagination.shooting import ShootingConfig, shoot_level

    right, wrong = _rollouts(expert_episode)
    src = _write([right, wrong, right], tmp_path / "imagined.h5")
    cfg = ShootingConfig(candidates=48, horizon=4, seed=3)
    stats = shoot_level(src, tmp_path / "shot", SimulatorDynamics(GOAL), CLEVR, cfg,
                        progress=False)
    shot = read_episodes(tmp_path / "shot" / "labelled.h5")
    assert len(shot) == stats["generated"] == 3 and shot.lengths.max() <= 4
    # a perfect model's verdicts are the simulator's (the replay is the diagnostic)
    assert list(shot.extras["ensemble_success"]) == list(shot.extras["replay_success"])
    assert stats["judged_successful"] == int(shot.extras["ensemble_success"].sum()) > 0
    ok = shot.extras["ensemble_success"]
    assert shot.terminals[np.flatnonzero(ok), shot.lengths[ok] - 1].all()
    assert list(shot.instructions) == [right.instruction] * 3
    assert np.allclose(shot.observations[:, 0], read_episodes(src).observations[:, 0])
    again = shoot_level(src, tmp_path / "again", SimulatorDynamics(GOAL), CLEVR, cfg,
                        progress=False)
    assert again["kept"] == stats["kept"]
    assert np.array_equal(read_episodes(tmp_path / "again" / "labelled.h5").actions,
                          shot.actions)


# ----------------------------------------------------------------------------- best-of-N
def _proposal(task: int, j: int, ok: bool, u: float):
    from kalm.data.episodes import Episode

    return Episode(np.zeros((2, 10), np.float32), np.zeros(1, np.int64), np.zeros(1, np.float32),
                   np.array([ok]), "x", dict(GOAL),
                   extras={"task_index": task, "proposal": j, "ensemble_success": ok,
                           "ensemble_uncertainty_mean": u})


def test_best_of_n_keeps_one_rollout_per_task_a_verified_one_where_there_is_one():
    from kalm.imagination.labelling import select_proposals

    eps = [_proposal(0, 0, False, 0.1), _proposal(0, 1, True, 0.5), _proposal(0, 2, True, 0.2),
           _proposal(1, 0, False, 0.1), _proposal(1, 1, False, 0.0),
           _proposal(2, 1, True, 0.3), _proposal(2, 0, True, 0.3)]
    chosen = select_proposals(eps, "ensemble_success")
    assert [(e.extras["task_index"], e.extras["proposal"]) for e in chosen] == [
        (0, 2), (1, 0), (2, 0)]  # least uncertain verified; greedy when none; earliest on ties
    single = [_proposal(0, 0, False, 0.1), _proposal(1, 0, True, 0.1)]
    assert select_proposals(single, "ensemble_success") is single


def test_run_reference_rows_flag_adds_their_stages_to_the_dry_run(tmp_path):
    from click.testing import CliRunner

    from kalm.cli import main

    args = ["run", "--config", str(ROOT / "configs" / "clevr-quick.yaml"), "--out",
            str(tmp_path / "r"), "--seeds", "0", "--dry-run"]
    plain = CliRunner().invoke(main, args)
    refs = CliRunner().invoke(main, [*args, "--reference-rows", "paper,llm_policy"])
    assert plain.exit_code == 0 and refs.exit_code == 0, refs.output
    assert "train-cql-paper-seed0" not in plain.output
    assert "train-cql-paper-seed0" in refs.output and "evaluate-llm-policy" in refs.output
    assert "shoot-easy" not in refs.output
    bad = CliRunner().invoke(main, [*args, "--reference-rows", "oracle"])
    assert bad.exit_code != 0 and "unknown row 'oracle'" in bad.output
