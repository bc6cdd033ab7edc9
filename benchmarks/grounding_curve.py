"""Issue 26's curve: what a grounded LLM is worth against how many CPU-minutes it was grounded.

Each point is a `kalm run` folder of the same config, data and seeds whose ground stage had its
own `ground.budget_minutes` (the other stages as the run ran them). Read from each folder's
files, nothing recomputed but the BC policy's action accuracy:

- grounding (held-out episodes): teacher-forced action accuracy, one-step (dynamics objective)
  state RMSE, explanation accuracy, steps, dtype, the stage's wall and CPU minutes;
- per imagined level: the LLM's rollouts replayed in the simulator to the goal vs random actions
  replayed beside them (a diagnostic: KALM may not use the simulator), the tasks whose rollout
  the ensemble kept, and of those the ones right on replay (diagnostic);
- the LLM acting in the real env itself (the `llm_policy` reference row), where the run has it;
- BC and CQL, real only and KALM, on the dev half (`evaluate-dev-*`), where the run has them.

The BC MLP's action accuracy (the first point's real-only BC policy, seed 0, on the same
held-out episodes as the grounding metrics) is the horizontal line of the action panel.

    python benchmarks/grounding_curve.py runs/q/run 32=runs/curve/g32 \\
        --llm-policy "16=runs/curve/llm16/llm16-{level}.json" \\
        --json docs/grounding-curve/curve.json --plot docs/img/grounding-curve.png

Two recipes' curves in one table and figure, each point named SERIES@ (one line per series);
`--keep` carries over the points of an earlier file whose run folders are not given (here the
quick recipe's, measured in an earlier session):

    python benchmarks/grounding_curve.py combined@runs/recipes/lr10-delta-no-explain \
        combined@64=runs/curve/combined-64 --keep quick@docs/grounding-curve/curve.json \
        --llm-policy "combined@64=runs/curve/llm64/llm64-{level}.json" \
        --json docs/grounding-curve/curve.json --plot docs/img/grounding-curve.png

The same reading for a recipe comparison at one budget (issue 26's "learn more per CPU-minute":
runs of one config and data whose ground stages differ in one field), points named and in the
order given (kept ones first, in their file's order):

    python benchmarks/grounding_curve.py --recipes quick=runs/q/run \
        no-explain=runs/recipes/no-explain --json docs/grounding-recipes/recipes.json
    python benchmarks/grounding_curve.py --recipes mlp1=runs/recipes/mlp1 \
        --keep docs/grounding-recipes/recipes.json --json docs/grounding-recipes/recipes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from kalm.eval.compare import fmt_rate
from kalm.eval.report import success_summaries
from kalm.run_folder import (
    GROUND,
    LLM_POLICY_STAGE,
    dev_split,
    imagine_stage,
    label_stage,
    load_run,
    real_data,
    train_stage,
)


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _dev_success(run: Path, cfg) -> dict[str, dict[str, dict[str, list[float]]]]:
    """algo -> method (`baseline` = real only, `kalm`) -> level -> success per seed, on the dev
    half: a run whose headline is the test half keeps it in `evaluate-dev-*`; a curve point
    evaluated on dev alone (`evaluate.split: dev`) in its headline stages."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    if cfg.evaluate.split == "dev":
        summaries = success_summaries(run, cfg)
    elif dev_split(cfg):
        summaries = success_summaries(run, cfg, "dev")
    else:
        return out
    for algo, summary in summaries.items():
        out[algo] = {method: {lv: list(v) for lv, v in levels.items()}
                     for method, levels in summary["success"].items() if levels}
    return out


def curve_point(run: str | Path, minutes: float | None = None,
                recipe: str | None = None) -> dict[str, Any]:
    """One point of the curve, read from a finished (or partly finished) run folder. Its place
    on the axis is the ground stage's `budget_minutes`, or MINUTES for a run grounded for a
    fixed step count (a budget is only honest on an idle machine; a step count is the same
    model whatever else runs beside it). RECIPE names a point of a recipe comparison instead
    (several runs at one budget)."""
    run = Path(run)
    cfg = load_run(run)
    ground = run / GROUND
    metrics = _json(ground / "grounding_metrics.json")
    if metrics is None:
        raise FileNotFoundError(f"{ground}/grounding_metrics.json: no grounded model in {run} "
                                "(expected a finished ground stage)")
    ground_cfg = json.loads((ground / "ground_config.json").read_text())
    stage = _json(ground / "stage.json") or {}
    budget = minutes if minutes is not None else ground_cfg.get("budget_minutes")
    if budget is None:
        raise ValueError(f"{ground}/ground_config.json: no budget_minutes (grounded for a fixed "
                         "step count); give the point's minutes as MINUTES=RUN")
    point: dict[str, Any] = {
        "run": str(run),
        **({"recipe": recipe} if recipe is not None else {}),
        "budget_minutes": budget,
        "budget_from": "argument" if minutes is not None else "ground.budget_minutes",
        "steps": metrics["steps"],
        "dtype": metrics.get("dtype"),
        "train_minutes": metrics["train_seconds"] / 60,
        "step_seconds": metrics.get("step_seconds"),
        "stage_wall_minutes": stage["wall_s"] / 60 if "wall_s" in stage else None,
        "stage_cpu_minutes": stage["cpu_s"] / 60 if "cpu_s" in stage else None,
        "action_accuracy": metrics["rollout_teacher_forced"]["action_accuracy"],
        "one_step_rmse_m": metrics["dynamics"]["rmse_m"],
        "explanation_accuracy": metrics["explanation"]["accuracy"],
        "held_out_episodes": metrics["val_episodes"],
        "levels": {},
    }
    for level in cfg.imagine.levels:
        stats = _json(run / imagine_stage(level) / "imagined.stats.json")
        label = _json(run / label_stage(level) / "label_stats.json")
        row: dict[str, Any] = {}
        if stats is not None:
            s = stats["levels"][level]
            row.update(rollouts=s["rollouts"], replayed=s["replayed_match"],
                       random_replayed=s["random_replay_match"])
        if label is not None:
            d = label["diagnostic"]["labeller"]
            row.update(tasks=d["n"], kept=d["kept"], kept_right=d["true_positives"])
        llm = _json(run / LLM_POLICY_STAGE / f"eval-{level}.json")
        if llm is not None:
            row["llm_policy"] = llm["success_rate"]
        point["levels"][level] = row
    point["dev_success"] = _dev_success(run, cfg)
    return point


def parse_point(text: str) -> tuple[str, float | None]:
    """`RUN` or `MINUTES=RUN`."""
    head, sep, rest = text.partition("=")
    if not sep:
        return text, None
    try:
        return rest, float(head)
    except ValueError:
        raise ValueError(f"{text!r}: expected RUN or MINUTES=RUN with a number of minutes"
                         ) from None


def parse_series(text: str) -> tuple[str | None, str]:
    """`SERIES@REST` -> (SERIES, REST); plain REST -> (None, REST). A series is one recipe's
    curve (the same ground settings at several budgets), so two recipes' points are not drawn
    as one line."""
    head, sep, rest = text.partition("@")
    if not sep or "/" in head or "=" in head:  # no series, or an @ inside a path
        return None, text
    if not head or not rest:
        raise ValueError(f"{text!r}: expected SERIES@[MINUTES=]RUN")
    return head, rest


def parse_recipe(text: str) -> tuple[str, str]:
    """`NAME=RUN` -> (RUN, NAME)."""
    name, sep, run = text.partition("=")
    if not sep or not name or not run:
        raise ValueError(f"{text!r}: expected NAME=RUN, e.g. no-explain=runs/recipes/no-explain")
    return run, name


def _point_name(p: dict[str, Any]) -> str:
    if "recipe" in p:
        return p["recipe"]
    minutes = f"{p['budget_minutes']:g}"
    return f"{p['series']} {minutes}" if "series" in p else minutes


def by_series(points: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    """The points of each series (None: points given without one), each by minutes, the
    series in the order they first appear."""
    out: dict[str | None, list[dict[str, Any]]] = {}
    for p in points:
        out.setdefault(p.get("series"), []).append(p)
    return {k: sorted(v, key=lambda p: p["budget_minutes"]) for k, v in out.items()}


def kept_points(spec: str, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`[SERIES@]FILE`: the points of an earlier `--json` file whose run folders are not among
    the ones given, as they were measured then (a run folder may be gone from this machine; the
    file is the record). SERIES names the ones saved without a series."""
    series, path = parse_series(spec)
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file}: expected a curve file written by --json")
    try:
        saved = json.loads(file.read_text())["points"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{file}: expected a JSON object with a `points` list (--json output)"
                         ) from None
    runs = {str(Path(p["run"])) for p in given}
    out = []
    for p in saved:
        if str(Path(p["run"])) in runs:
            continue
        p = {**p, "kept_from": str(file)}
        if series is not None and "series" not in p:
            p["series"] = series
        out.append(p)
    return out


def apply_llm_policy(point: dict[str, Any], pattern: str) -> None:
    """The LLM-as-policy success per level from `kalm evaluate --json` files (PATTERN with
    `{level}`) instead of the run's own row: points whose runs evaluated on different halves
    or scenes are compared on one set of scenes this way."""
    for level, row in point["levels"].items():
        path = Path(pattern.format(level=level))
        if not path.exists():
            raise FileNotFoundError(f"{path}: expected `kalm evaluate --json` output for {level}")
        data = json.loads(path.read_text())
        try:
            row["llm_policy"] = data["levels"][level]["success_rate"]
        except KeyError:
            raise ValueError(f"{path}: expected levels.{level}.success_rate "
                             "(a `kalm evaluate --json` file)") from None
        row["llm_policy_source"] = str(path)


def bc_line(run: str | Path, episodes: int) -> float:
    """The run's real-only BC policy (seed 0) on the grounding's held-out episodes."""
    from kalm.eval.held_out import policy_action_accuracy

    run = Path(run)
    cfg = load_run(run)
    ground_cfg = json.loads((run / GROUND / "ground_config.json").read_text())
    policy = run / train_stage("bc", cfg.seeds[0]) / f"baseline-seed{cfg.seeds[0]}"
    if not policy.exists():
        raise FileNotFoundError(f"{policy}: expected the run's real-only BC policy")
    return policy_action_accuracy(real_data(run), policy, episodes,
                                  ground_cfg.get("val_fraction", 0.1), ground_cfg.get("seed", 0))


def first_bc_line(points: list[dict[str, Any]]) -> float:
    """`bc_line` of the first point whose run still has its BC policy (a kept point's run may
    be gone or trimmed; the points share their data, so their held-out episodes agree)."""
    for p in points:
        run = Path(p["run"])
        if (run / "run_config.yaml").exists() and (
                run / train_stage("bc", load_run(run).seeds[0])).exists():
            return bc_line(run, p["held_out_episodes"])
    raise FileNotFoundError("no point's run has its real-only BC policy (train-bc-seed*); "
                            "give --no-bc")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(points: list[dict[str, Any]], bc: float | None) -> str:
    levels = list(dict.fromkeys(lv for p in points for lv in p["levels"]))
    first = ("recipe" if any("recipe" in p for p in points) else
             "series, budget (min)" if any("series" in p for p in points) else "budget (min)")
    head = [first, "steps", "dtype", "action acc. (%)", "one-step RMSE (m)",
            "explanation (%)", "s/step"]
    for lv in levels:
        head += [f"{lv}: replayed / random (%, diag.)", f"{lv}: kept (right, diag.)",
                 f"{lv}: LLM as policy (%)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for p in points:
        step_s = p.get("step_seconds")
        cells = [_point_name(p), str(p["steps"]),
                 str(p["dtype"]), _pct(p["action_accuracy"]), f"{p['one_step_rmse_m']:.3f}",
                 _pct(p["explanation_accuracy"]), "-" if step_s is None else f"{step_s:.2f}"]
        for lv in levels:
            r = p["levels"].get(lv, {})
            cells += [f"{_pct(r.get('replayed'))} / {_pct(r.get('random_replayed'))}",
                      f"{r['kept']} of {r['tasks']} ({r['kept_right']})" if "kept" in r else "-",
                      _pct(r.get("llm_policy"))]
        lines.append("| " + " | ".join(cells) + " |")
    if bc is not None:
        lines.append(f"\nBC MLP (real only, seed 0) on the same held-out episodes: action "
                     f"accuracy {100 * bc:.1f}%.")
    dev = [p for p in points if p["dev_success"]]
    if dev:
        lines += ["", "Dev half, success in the real simulator (%), mean ± std over seeds:", ""]
        algos = list(dict.fromkeys(a for p in dev for a in p["dev_success"]))
        head = [first, "level"] + [f"{a.upper()} {m}" for a in algos
                                            for m in ("real only", "KALM")]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for p in dev:
            for lv in levels:
                cells = [_point_name(p), lv]
                for a in algos:
                    s = p["dev_success"].get(a, {})
                    cells += [fmt_rate(s.get("baseline", {}).get(lv, [])),
                              fmt_rate(s.get("kalm", {}).get(lv, []))]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], bc: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = sorted({p["budget_minutes"] for p in points})
    levels = list(dict.fromkeys(lv for p in points for lv in p["levels"]))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for k, (series, pts) in enumerate(by_series(points).items()):
        x = [p["budget_minutes"] for p in pts]
        style = ("o-", "s--", "^-.", "d:")[k % 4]  # a marker and line per series
        name = "" if series is None else f"{series}: "
        axes[0, 0].plot(x, [100 * p["action_accuracy"] for p in pts], style,
                        label=f"{name}LLM, teacher forced")
        axes[0, 1].plot(x, [p["one_step_rmse_m"] for p in pts], style, label=series)
        axes[0, 2].plot(x, [100 * p["explanation_accuracy"] for p in pts], style,
                        label=series)
        for i, lv in enumerate(levels):
            c = f"C{i}"
            rows = [p["levels"].get(lv, {}) for p in pts]
            axes[1, 0].plot(x, [100 * r.get("replayed", np.nan) for r in rows], style,
                            color=c, label=f"{name}{lv} LLM")
            axes[1, 0].plot(x, [100 * r.get("random_replayed", np.nan) for r in rows], "x:",
                            color=c, label=f"{name}{lv} random")
            axes[1, 1].plot(x, [100 * r["kept"] / r["tasks"] if "kept" in r else np.nan
                                for r in rows], style, color=c, label=f"{name}{lv}")
            axes[1, 2].plot(x, [100 * r.get("llm_policy", np.nan) for r in rows], style,
                            color=c, label=f"{name}{lv}")
    if bc is not None:
        axes[0, 0].axhline(100 * bc, color="k", ls="--", label="BC MLP")
    axes[0, 0].set_title("action accuracy (%)")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].set_title("one-step state RMSE (m)")
    axes[0, 2].set_title("explanation accuracy (%)")
    if len(by_series(points)) > 1:
        axes[0, 1].legend(fontsize=7)
    axes[1, 0].set_title("imagined rollouts replayed to the goal (%, diagnostic)")
    axes[1, 1].set_title("tasks with a kept rollout (%)")
    axes[1, 2].set_title("LLM as policy, real env (%)")
    for ax in axes[1]:
        ax.legend(fontsize=7)
    for ax in axes.flat:
        ax.set_xlabel("grounding budget (CPU-minutes, 2 cores)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="[SERIES@][MINUTES=]RUN",
                    help="run folders, one per grounding budget; MINUTES for one grounded "
                         "for a fixed step count; SERIES names the recipe's curve where "
                         "several are drawn")
    ap.add_argument("--recipes", action="store_true",
                    help="a recipe comparison at one budget: RUN arguments are NAME=RUN, kept "
                         "in the order given, and there is no plot")
    ap.add_argument("--json", type=Path, help="write the points here")
    ap.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    ap.add_argument("--no-bc", action="store_true", help="skip the BC policy's accuracy")
    ap.add_argument("--keep", action="append", default=[], metavar="[SERIES@]FILE",
                    help="carry over the points of an earlier --json file whose run folders "
                         "are not given (first in the table); SERIES names those without one")
    ap.add_argument("--llm-policy", action="append", default=[],
                    metavar="[SERIES@]MINUTES=PATTERN",
                    help="the point's LLM-as-policy row from `kalm evaluate --json` files, "
                         "PATTERN with {level}")
    args = ap.parse_args()
    if args.recipes:
        if args.plot:
            raise SystemExit("--plot draws the curve against minutes; not with --recipes")
        points = [curve_point(run, recipe=name) for run, name in map(parse_recipe, args.runs)]
        points = [p for spec in args.keep for p in kept_points(spec, points)] + points
    else:
        points = [p for pts in by_series([
            {**curve_point(*parse_point(rest)), **({"series": series} if series else {})}
            for series, rest in map(parse_series, args.runs)]).values() for p in pts]
        kept = [p for spec in args.keep for p in kept_points(spec, points)]
        points = [p for pts in by_series(kept + points).values() for p in pts]
    for spec in args.llm_policy:
        series, rest = parse_series(spec)
        pattern, minutes = parse_point(rest)
        match = [p for p in points if p["budget_minutes"] == minutes
                 and p.get("series") == series]
        if not match:
            raise SystemExit(f"--llm-policy {spec}: no point at {minutes} minutes"
                             + (f" in series {series!r}" if series else ""))
        apply_llm_policy(match[0], pattern)
    bc = None if args.no_bc else first_bc_line(points)
    print(table(points, bc))
    if args.json:
        from kalm.io import write_json

        write_json({"bc_action_accuracy": bc, "points": points}, args.json)
    if args.plot:
        plot(points, bc, args.plot)


if __name__ == "__main__":
    main()
