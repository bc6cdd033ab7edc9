"""Side-by-side tables of finished `kalm run` folders that differ in the grounding (e.g. the
action head, docs/experiments/11-metaworld-3-seeds.md, 11.1): held-out teacher-forced metrics,
then per level what the imagined rollouts did. Reads only; the replay column is a diagnostic
(it used the simulator).

  python scripts/compare_action_heads.py NAME=RUN [NAME=RUN ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SystemExit(f"{path}: missing (is the run finished up to this stage?)")
    return json.loads(path.read_text())


def _join(values: list[float] | None, scale: float = 1.0, digits: int = 2) -> str:
    return " / ".join(f"{scale * v:.{digits}f}" for v in values) if values else "-"


def grounding_rows(runs: dict[str, Path]) -> list[str]:
    rows = ["| run | dtype | step s | action MAE | MAE per dim | sign right per dim % | "
            "state RMSE |", "|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        g = _read(run / "ground" / "grounding_metrics.json")
        t = g["rollout_teacher_forced"]
        rows.append(f"| {name} | {g['dtype']} | {g['step_seconds']:.2f} | {t['action_mae']:.3f} "
                    f"| {_join(t.get('action_mae_per_dim'))} "
                    f"| {_join(t.get('action_sign_accuracy_per_dim'), 100, 0)} "
                    f"| {t['rmse_m']:.4f} |")
    return rows


def imagination_rows(runs: dict[str, Path]) -> list[str]:
    rows = ["| run | level | rollouts | LLM self-judged | ensemble kept | replayed | replayed "
            "reaching goal (diagnostic) | state error step 10 / 50 |",
            "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        levels = sorted(p.name.removeprefix("imagine-") for p in run.glob("imagine-*"))
        for level in levels:
            st = _read(run / f"imagine-{level}" / "imagined.stats.json")["levels"][level]
            lb = _read(run / f"label-{level}" / "label_stats.json")
            diag = lb.get("diagnostic", {})
            err = st.get("state_error_by_step") or [float("nan")]
            at = [err[min(k, len(err) - 1)] for k in (9, 49)]
            rows.append(f"| {name} | {level} | {st['rollouts']} "
                        f"| {100 * st['self_judged_match']:.1f}% | {lb['judged_successful']} "
                        f"| {diag.get('replayed', '-')} | {diag.get('replayed_successful', '-')} "
                        f"| {at[0]:.2f} / {at[1]:.2f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN")
    args = ap.parse_args()
    runs = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: expected NAME=RUN_FOLDER")
        runs[name] = Path(path)
    print("\n".join(grounding_rows(runs)))
    print()
    print("\n".join(imagination_rows(runs)))


if __name__ == "__main__":
    main()
