"""CQL's target-network sync interval, side by side on a finished `kalm run` folder's data.

For each interval asked for, trains the run's CQL policies again (real only, and KALM on each
level the run trained one for: same data, shares, seeds and steps) with only the interval
changed, evaluates them on the DEV half of the suites with the run's per-seed dev scenes, and
prints one table with the run's own CQL (its default interval, read from its evaluate-dev
stages) beside them. Defaults are chosen on this table, never on the test half.

`old` stands for d3rlpy's and the paper's 8,000, which kalm now refuses for runs this short
(one sync, after the first step); it is allowed here only to measure what it did.

    python scripts/cql_target_interval.py runs/honest/run --intervals old 2000 --out runs/cqlt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

import kalm.rl.algos as algos
from kalm.eval.compare import evaluate_seed, evaluations, train_seed
from kalm.run_folder import compare_config, evaluate_stage, load_run


def results(cc, folder: Path, seed: int) -> dict[tuple[str, str], float]:
    out = {}
    for method, name, lv in evaluations(cc, seed):
        path = folder / name / f"eval-{lv}.json"
        if path.exists():
            out[(method, lv)] = json.loads(path.read_text())["success_rate"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--intervals", nargs="+", default=["old", "2000"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    args = ap.parse_args()
    cfg = load_run(args.run)
    seeds = args.seeds if args.seeds is not None else list(cfg.seeds)
    base = compare_config(cfg, "cql", args.run, split="dev")
    default = algos.target_interval(algos.AlgoConfig(algo="cql"), base.steps)
    rows: dict[str, dict[int, dict]] = {f"{default} (run default)": {
        s: results(base, args.run / evaluate_stage("cql", s, split="dev"), s) for s in seeds}}
    for name in args.intervals:
        interval = 8000 if name == "old" else int(name)
        if base.steps // interval < algos.MIN_TARGET_SYNCS:
            algos.MIN_TARGET_SYNCS = 1  # measuring the refused setting, on purpose
        cc = dataclasses.replace(base, target_update_interval=interval)
        root = args.out / f"interval-{interval}"
        old = ", the old default" if name == "old" else ""
        label = f"{interval} ({base.steps // interval} syncs{old})"
        rows[label] = {}
        for s in seeds:
            train_seed(cc, root / "train", s)
            evaluate_seed(cc, root / "train", root / f"evaluate-dev-seed{s}", s)
            rows[label][s] = results(cc, root / f"evaluate-dev-seed{s}", s)
    cells = sorted({k for r in rows.values() for res in r.values() for k in res},
                   key=lambda k: (k[0] != "baseline", k[1]))
    print(f"CQL, {base.steps} steps, dev half, seeds {seeds}, episodes per level and seed "
          f"{base.episodes} (easy {base.easy_episodes}); success % mean ± std over seeds")
    print("| interval | " + " | ".join(f"{'real only' if m == 'baseline' else 'KALM'} {lv}"
                                        for m, lv in cells) + " |")
    print("|---|" + "---|" * len(cells))
    for label, per_seed in rows.items():
        vals = []
        for key in cells:
            v = [100 * r[key] for r in per_seed.values() if key in r]
            vals.append(f"{np.mean(v):.1f} ± {np.std(v):.1f}" if v else "-")
        print(f"| {label} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
