"""The report's success table for a level with no KALM policy: it must say that no policy was
trained and why, not "= real only", which reads like a measured KALM result equal to the
baseline."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kalm.eval.report import success_table, untrained_levels, untrained_reasons
from kalm.imagination.labelling import KEEP_FILES, STATS_FILE
from kalm.run_folder import RunConfig, label_folder


def _label(root: Path, level: str, kept_success: int, tasks: int) -> None:
    """A label folder as the label stage leaves it: its stats, and the kept file when it kept
    something (the file's content is never read here)."""
    folder = label_folder(root, level)
    folder.mkdir(parents=True)
    (folder / STATS_FILE).write_text(json.dumps(
        {"kept": {"all": tasks, "success": kept_success}}))
    if kept_success:
        (folder / KEEP_FILES["success"]).write_bytes(b"")


def _cfg(root: Path) -> RunConfig:
    cfg = RunConfig(out=str(root))
    return dataclasses.replace(
        cfg, imagine=dataclasses.replace(cfg.imagine,
                                         levels={"rephrase": 3, "easy": 10, "hard": 2}),
        rl=dataclasses.replace(cfg.rl, algos=["bc"], keep={"bc": "success"},
                               min_kept_share=0.1))


def test_a_level_without_a_kalm_policy_says_so_and_why(tmp_path):
    root = tmp_path / "run"
    _label(root, "rephrase", 103, 240)  # trained
    _label(root, "easy", 0, 200)        # the labeller kept nothing
    _label(root, "hard", 1, 164)        # kept one, under min_kept_share 0.10
    cfg = _cfg(root)

    reasons = untrained_reasons(root, cfg, "bc")
    assert reasons == {"kalm": {"easy": "0 of 200 tasks kept",
                                "hard": "1 of 164 tasks kept, under rl.min_kept_share 0.10"}}
    assert untrained_levels(root, cfg, "bc") == {"kalm": {"easy", "hard"}}

    summaries = {"bc": {"success": {"baseline": {"rephrase": [0.36], "easy": [0.46],
                                                 "hard": [0.031]},
                                    "kalm": {"rephrase": [0.387]}},
                        "episodes_per_level_and_seed": {"rephrase": 300, "easy": 300,
                                                        "hard": 300}}}
    table = success_table(summaries, {"bc": reasons})
    assert "real only |" in table.splitlines()[0]  # the baseline column keeps its name
    assert "| rephrase | 300 | 36.0 ± 0.0 | 38.7 ± 0.0 |" in table
    assert "| easy | 300 | 46.0 ± 0.0 | no KALM policy (0 of 200 tasks kept) |" in table
    assert ("| hard | 300 | 3.1 ± 0.0 | no KALM policy (1 of 164 tasks kept, under "
            "rl.min_kept_share 0.10) |") in table
    assert "= real only" not in table

    # without the reasons (the sets of untrained_levels) the cell still says no policy
    bare = success_table(summaries, {"bc": untrained_levels(root, cfg, "bc")})
    assert "| hard | 300 | 3.1 ± 0.0 | no KALM policy (too few rollouts kept) |" in bare
    assert "= real only" not in bare


def test_a_stale_kalm_evaluation_is_shown_as_measured(tmp_path):
    """A KALM evaluation on disk for a level now untrained (an earlier config) is a measured
    number and is shown as one."""
    root = tmp_path / "run"
    _label(root, "rephrase", 103, 240)
    _label(root, "easy", 153, 200)
    _label(root, "hard", 1, 164)
    cfg = _cfg(root)
    summaries = {"bc": {"success": {"baseline": {"hard": [0.031]}, "kalm": {"hard": [0.05]}},
                        "episodes_per_level_and_seed": {"hard": 300}}}
    table = success_table(summaries, {"bc": untrained_reasons(root, cfg, "bc")})
    assert "| hard | 300 | 3.1 ± 0.0 | 5.0 ± 0.0 |" in table


def test_compute_table_sets_the_proposers_cpu_seconds_side_by_side(tmp_path):
    from kalm.eval.report import compute_table, stage_table
    from kalm.run_folder import RECORD, shoot_folder

    root = tmp_path / "run"
    cfg = _cfg(root)
    cfg = dataclasses.replace(cfg, imagine=dataclasses.replace(cfg.imagine, levels={"easy": 10},
                                                               proposals=8),
                              rl=dataclasses.replace(cfg.rl, reference_rows=["shooting"]))
    _label(root, "easy", 20, 200)
    stats = json.loads((label_folder(root, "easy") / STATS_FILE).read_text())
    stats["judged_successful"] = 20
    (label_folder(root, "easy") / STATS_FILE).write_text(json.dumps(stats))
    for stage, cpu in (("imagine-easy", 300.0), ("label-easy", 20.0)):
        (root / stage).mkdir(exist_ok=True)
        (root / stage / RECORD).write_text(json.dumps(
            {"stage": stage, "hash": "0" * 16, "wall_s": cpu / 2, "cpu_s": cpu, "done": True}))
    shoot_folder(root, "easy").mkdir()
    (shoot_folder(root, "easy") / STATS_FILE).write_text(json.dumps(
        {"kept": {"all": 200, "success": 40}, "judged_successful": 40, "generated": 200,
         "tasks": 200, "cpu_seconds": 80.0, "candidates_tried": 51200}))
    table = compute_table(root, cfg)
    assert "| easy | the LLM, best-of-8 (imagine + label) | 200 | - | 320 | 20 | 16.00 |" in table
    assert "| easy | no LLM (shooting) | 200 | 51200 | 80 | 40 | 2.00 |" in table
    stages = stage_table(root, ["imagine-easy", "label-easy", "train-bc-seed0"])
    assert "| imagine-easy | done | 2.5 | 5.0 |" in stages
    assert "| train-bc-seed0 | not run |" in stages and "**5.3**" in stages
    # no shooting row: no compute table
    assert compute_table(root, dataclasses.replace(
        cfg, rl=dataclasses.replace(cfg.rl, reference_rows=[]))) is None
