"""Issue 26's curve: benchmarks/grounding_curve.py reads each point from a run folder's files,
and the BC line counts a policy's agreement with the held-out expert actions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark_module import load_benchmark
from kalm.data.episodes import Episode, EpisodeData, read_episodes, write_episodes
from kalm.eval.held_out import policy_action_accuracy
from kalm.llm.train import split_episodes
from kalm.rl.train import TrainedPolicy
from test_eval_speed_paths import policy  # noqa: F401  (the module's small BC policy fixture)


def _write_run(root, budget, accuracy, replayed, kept, llm=None):
    """A run folder holding only the files the curve reads, with the given numbers."""
    root.mkdir(parents=True)
    (root / "run_config.yaml").write_text(
        "name: t\nenv: clevr\nseeds: [0]\nimagine:\n  levels: {rephrase: 8, easy: 1}\n")
    (root / "ground").mkdir()
    (root / "ground" / "ground_config.json").write_text(json.dumps(
        {"budget_minutes": budget, "val_fraction": 0.1, "seed": 0}))
    (root / "ground" / "grounding_metrics.json").write_text(json.dumps({
        "steps": int(35 * (budget or 8)), "dtype": "bfloat16", "train_seconds": 60.0 * 3,
        "val_episodes": 100, "rollout_teacher_forced": {"action_accuracy": accuracy},
        "dynamics": {"rmse_m": 0.07}, "explanation": {"accuracy": 0.025}}))
    (root / "ground" / "stage.json").write_text(json.dumps({"wall_s": 600.0, "cpu_s": 1200.0}))
    for level, tasks in (("rephrase", 240), ("easy", 200)):
        (root / f"imagine-{level}").mkdir()
        (root / f"imagine-{level}" / "imagined.stats.json").write_text(json.dumps({"levels": {
            level: {"rollouts": 8 * tasks, "replayed_match": replayed,
                    "random_replay_match": 0.06}}}))
        (root / f"label-{level}").mkdir()
        (root / f"label-{level}" / "label_stats.json").write_text(json.dumps({"diagnostic": {
            "labeller": {"n": tasks, "kept": kept, "true_positives": kept // 2}}}))
    if llm is not None:
        (root / "evaluate-llm-policy").mkdir()
        (root / "evaluate-llm-policy" / "eval-easy.json").write_text(
            json.dumps({"episodes": 30, "success_rate": llm}))


def test_points_are_read_from_the_run_files_and_ordered_by_minutes(tmp_path):
    bench = load_benchmark("grounding_curve")
    _write_run(tmp_path / "a", 16.0, 0.115, 0.092, 131)
    _write_run(tmp_path / "b", None, 0.2, 0.15, 150, llm=0.4)
    with pytest.raises(ValueError, match="MINUTES=RUN"):
        bench.curve_point(tmp_path / "b")
    b = bench.curve_point(*bench.parse_point(f"32={tmp_path / 'b'}"))
    a = bench.curve_point(tmp_path / "a")
    assert (a["budget_minutes"], a["budget_from"]) == (16.0, "ground.budget_minutes")
    assert (b["budget_minutes"], b["budget_from"]) == (32.0, "argument")
    assert a["action_accuracy"] == 0.115 and a["stage_cpu_minutes"] == 20.0
    assert a["levels"]["rephrase"] == {"rollouts": 1920, "replayed": 0.092,
                                       "random_replayed": 0.06, "tasks": 240, "kept": 131,
                                       "kept_right": 65}
    assert "llm_policy" not in a["levels"]["easy"] and b["levels"]["easy"]["llm_policy"] == 0.4
    assert a["dev_success"] == {}  # no dev evaluation in the folder: nothing invented
    text = bench.table([a, b], bc=0.327)
    rows = [line for line in text.splitlines() if line.startswith("| 16") or
            line.startswith("| 32")]
    assert rows[0].split(" | ")[3:5] == ["11.5", "0.070"]
    assert "9.2 / 6.0" in rows[0] and "131 of 240 (65)" in rows[0]
    assert "15.0 / 6.0" in rows[1] and rows[1].rstrip(" |").endswith("40.0")
    assert "action accuracy 32.7%" in text
    bench.plot([a, b], 0.327, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_a_point_needs_a_grounded_model_and_minutes_must_be_a_number(tmp_path):
    bench = load_benchmark("grounding_curve")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run_config.yaml").write_text("name: t\nenv: clevr\n")
    with pytest.raises(FileNotFoundError, match=r"grounding_metrics\.json"):
        bench.curve_point(tmp_path / "run")
    with pytest.raises(ValueError, match="MINUTES=RUN"):
        bench.parse_point("soon=runs/x")
    assert bench.parse_point("runs/x") == ("runs/x", None)


def test_policy_action_accuracy_counts_agreement_on_the_held_out_split(policy, tmp_path):  # noqa: F811
    data = read_episodes(str(policy.parent / "real.h5"))
    _, val = split_episodes(len(data), 0.1, 0)
    pol = TrainedPolicy(policy)
    # the held-out episodes in split order; the first agrees with the policy when AGREE_FIRST,
    # the others when AGREE_REST; training episodes keep their actions
    order = {int(i): k for k, i in enumerate(val)}

    def write(name, agree_first, agree_rest):
        eps = []
        for i in range(len(data)):
            ep = data.episode(i)
            actions = ep.actions.copy()
            if i in order:
                own = pol.act_batch(ep.observations[: ep.length], [ep.goal] * ep.length,
                                    [ep.instruction] * ep.length)
                agree = agree_first if order[i] == 0 else agree_rest
                actions[: ep.length] = own if agree else (own + 1) % 40
            eps.append(Episode(ep.observations, actions, ep.rewards, ep.terminals,
                               ep.instruction, ep.goal))
        write_episodes(EpisodeData.from_episodes(eps, data.spec), tmp_path / name)
        return tmp_path / name

    assert len(val) == 4 and np.all(data.lengths == 1)
    assert policy_action_accuracy(write("all.h5", True, True), policy, episodes=100) == 1.0
    assert policy_action_accuracy(write("none.h5", False, False), policy, episodes=100) == 0.0
    first = write("first.h5", True, False)
    assert policy_action_accuracy(first, policy, episodes=100) == 0.25
    assert policy_action_accuracy(first, policy, episodes=1) == 1.0  # only the first counts


@pytest.mark.parametrize("split", ["dev", "test"])
def test_dev_success_is_read_where_the_run_kept_it(tmp_path, split):
    """A curve point evaluated on dev alone keeps dev in its headline stages; a run whose
    headline is the test half keeps dev in `evaluate-dev-*`; the test half is never read."""
    bench = load_benchmark("grounding_curve")
    run = tmp_path / "run"
    _write_run(run, 16.0, 0.1, 0.1, 10)
    (run / "run_config.yaml").write_text(
        "name: t\nenv: clevr\nseeds: [0, 1]\nimagine:\n  levels: {rephrase: 8}\n"
        f"rl:\n  algos: [bc]\nevaluate:\n  levels: [rephrase]\n  split: {split}\n")
    (run / "label-rephrase" / "labelled-success.h5").write_bytes(b"")  # a KALM policy's data
    dev = "evaluate" if split == "dev" else "evaluate-dev"
    for seed, (real, kalm) in enumerate(((0.40, 0.50), (0.44, 0.56))):
        for stage, shift in ((f"{dev}-bc-seed{seed}", 0.0), (f"evaluate-bc-seed{seed}", 0.3)):
            if split == "dev" and shift:
                continue  # a dev-only run has no test-half stages
            for name, rate in ((f"baseline-seed{seed}", real), (f"kalm-rephrase-seed{seed}", kalm)):
                (run / stage / name).mkdir(parents=True)
                (run / stage / name / "eval-rephrase.json").write_text(
                    json.dumps({"episodes": 300, "success_rate": rate + shift}))
    got = bench.curve_point(run)["dev_success"]["bc"]
    assert got["baseline"]["rephrase"] == pytest.approx([0.40, 0.44])
    assert got["kalm"]["rephrase"] == pytest.approx([0.50, 0.56])
    assert "42.0 ± 2.0 | 53.0 ± 3.0" in bench.table([bench.curve_point(run)], None)


def test_llm_policy_rows_come_from_evaluate_files_when_given(tmp_path):
    bench = load_benchmark("grounding_curve")
    _write_run(tmp_path / "a", 16.0, 0.1, 0.1, 10, llm=0.9)
    point = bench.curve_point(tmp_path / "a")
    for level, rate in (("rephrase", 0.2), ("easy", 0.5)):
        (tmp_path / f"ev-{level}.json").write_text(json.dumps(
            {"levels": {level: {"success_rate": rate, "episodes": 30}}, "seed": 7}))
    bench.apply_llm_policy(point, str(tmp_path / "ev-{level}.json"))
    assert point["levels"]["easy"]["llm_policy"] == 0.5  # the file's, not the run's 0.9
    assert point["levels"]["rephrase"]["llm_policy"] == 0.2
    (tmp_path / "ev-easy.json").write_text(json.dumps({"rephrase": 1}))
    with pytest.raises(ValueError, match=r"levels\.easy\.success_rate"):
        bench.apply_llm_policy(point, str(tmp_path / "ev-{level}.json"))
    with pytest.raises(FileNotFoundError, match="kalm evaluate"):
        bench.apply_llm_policy(point, str(tmp_path / "missing-{level}.json"))


def test_recipes_are_named_points_at_one_budget_in_the_order_given(tmp_path):
    """A recipe comparison: NAME=RUN points keep their names and order (no sorting by
    minutes, which would tie), and the table's first column is the recipe."""
    bench = load_benchmark("grounding_curve")
    _write_run(tmp_path / "base", 16.0, 0.115, 0.092, 131)
    _write_run(tmp_path / "alt", 16.0, 0.2, 0.15, 150)
    points = [bench.curve_point(run, recipe=name) for run, name in map(
        bench.parse_recipe, [f"quick={tmp_path / 'base'}", f"no-explain={tmp_path / 'alt'}"])]
    assert [p["recipe"] for p in points] == ["quick", "no-explain"]
    text = bench.table(points, bc=None)
    lines = text.splitlines()
    assert lines[0].startswith("| recipe | steps")
    assert lines[2].startswith("| quick | 560 |") and lines[3].startswith("| no-explain | 560 |")
    assert "| 20.0 | 0.070 |" in lines[3]
    with pytest.raises(ValueError, match="NAME=RUN"):
        bench.parse_recipe("runs/recipes/x")


def test_series_keep_two_recipes_apart_in_the_table_and_the_figure(tmp_path):
    bench = load_benchmark("grounding_curve")
    _write_run(tmp_path / "q16", 16.0, 0.10, 0.07, 140)
    _write_run(tmp_path / "q32", None, 0.15, 0.12, 150)
    _write_run(tmp_path / "c16", 16.0, 0.17, 0.16, 130)
    _write_run(tmp_path / "c64", None, 0.25, 0.20, 160)
    specs = [f"quick@32={tmp_path / 'q32'}", f"combined@64={tmp_path / 'c64'}",
             f"quick@{tmp_path / 'q16'}", f"combined@{tmp_path / 'c16'}"]
    parsed = [bench.parse_series(s) for s in specs]
    assert [series for series, _ in parsed] == ["quick", "combined", "quick", "combined"]
    assert bench.parse_series("runs/a@b/x") == (None, "runs/a@b/x")  # an @ inside a path
    assert bench.parse_series("32=runs/x") == (None, "32=runs/x")
    with pytest.raises(ValueError, match="SERIES@"):
        bench.parse_series("quick@")
    points = [{**bench.curve_point(*bench.parse_point(rest)), "series": series}
              for series, rest in parsed]
    grouped = bench.by_series(points)
    assert list(grouped) == ["quick", "combined"]  # in the order they first appear
    assert [p["budget_minutes"] for p in grouped["combined"]] == [16.0, 64.0]
    flat = [p for pts in grouped.values() for p in pts]
    lines = bench.table(flat, bc=0.294).splitlines()
    assert lines[0].startswith("| series, budget (min) |")
    assert [line.split(" | ")[0] for line in lines[2:6]] == [
        "| quick 16", "| quick 32", "| combined 16", "| combined 64"]
    assert lines[5].split(" | ")[3] == "25.0"
    bench.plot(flat, 0.294, tmp_path / "two.png")
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"


def test_kept_points_carry_over_an_earlier_file_unless_their_run_is_given(tmp_path):
    """A curve file is the record of points whose run folders may be gone: --keep carries them
    over as measured, names the unnamed ones' series, and a point whose run is given again is
    read afresh instead of twice."""
    bench = load_benchmark("grounding_curve")
    _write_run(tmp_path / "q16", 16.0, 0.10, 0.07, 140)
    _write_run(tmp_path / "c16", 16.0, 0.17, 0.16, 130)
    earlier = [bench.curve_point(tmp_path / "q16"),
               {**bench.curve_point(tmp_path / "c16"), "series": "combined"}]
    gone = {**earlier[0], "run": str(tmp_path / "q32"), "budget_minutes": 32.0,
            "action_accuracy": 0.15}  # a run folder deleted since
    file = tmp_path / "curve.json"
    file.write_text(json.dumps({"bc_action_accuracy": 0.3, "points": [*earlier, gone]}))
    given = [{**bench.curve_point(tmp_path / "c16"), "series": "combined"}]
    kept = bench.kept_points(f"quick@{file}", given)
    assert [(p["series"], p["budget_minutes"]) for p in kept] == [("quick", 16.0),
                                                                 ("quick", 32.0)]
    assert kept[1]["action_accuracy"] == 0.15 and kept[1]["kept_from"] == str(file)
    lines = bench.table(kept + given, bc=None).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:5]] == [
        "| quick 16", "| quick 32", "| combined 16"]
    with pytest.raises(FileNotFoundError, match="--json"):
        bench.kept_points(str(tmp_path / "none.json"), given)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="points"):
        bench.kept_points(str(tmp_path / "bad.json"), given)
