"""One of a finished `kalm run`'s defaults changed, measured on the DEV half beside the run.

Trains the run's policies of one algorithm again with one setting changed (same real data,
seeds, steps and dev scenes; `--baseline` retrains the real-only policy too, for settings that
change it), evaluates them on the dev half of the suites with the run's per-seed dev scenes,
and prints one table with the run's own dev results beside them. kalm's defaults are chosen on
such tables, never on the test half the headline reports.

Settings:
- `--interval N|old`: CQL's target sync interval (`old`: d3rlpy's and the paper's 8,000, which
  kalm refuses for runs this short: one sync, after the first step; allowed here only to
  measure what it did); retrains the baseline too.
- `--ratio R`: the imagined share of each KALM batch.
- `--cql-alpha A`: CQL's conservative weight (kalm's default 10); retrains the baseline too.
- `--labels PATTERN`: KALM's data from other label folders, PATTERN with `{level}` (e.g.
  `runs/x/label1-{level}` made by `--relabel-first`).
- `--relabel-first`: first label the greedy proposal of each task alone (best-of-1) with the
  run's label config, into OUT/label1-LEVEL, and learn from those.
- `--min-votes K`: label every level again with K members' votes (OUT/label-mvK-LEVEL) and
  learn from those.
- `--labels 'RUN/label-{level}/labelled-success.h5'` with every level's file: KALM on every
  level, however few rollouts it kept (`rl.min_kept_share` 0); with `labelled-all.h5`: CQL on
  every labelled rollout (`rl.keep: all`).

    python scripts/dev_ablation.py runs/honest/run --algo cql --interval old --out runs/abl
    python scripts/dev_ablation.py runs/honest/run --algo cql --ratio 0.5 --out runs/abl
    python scripts/dev_ablation.py runs/honest/run --algo bc --relabel-first --out runs/abl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

import kalm.rl.algos as algos
from kalm.eval.compare import evaluate_seed, evaluations, train_seed
from kalm.run_folder import (
    compare_config,
    evaluate_stage,
    first_proposals_data,
    imagined_data,
    load_run,
)


def results(cc, folder: Path, seed: int) -> dict[tuple[str, str], float]:
    out = {}
    for method, name, lv in evaluations(cc, seed):
        path = folder / name / f"eval-{lv}.json"
        if path.exists():
            out[(method, lv)] = json.loads(path.read_text())["success_rate"]
    return out


def relabel(run: Path, cfg, out: Path, first_only: bool = False,
            min_votes: int | None = None) -> dict[str, str]:
    """The label stage again with one change: on each task's greedy proposal alone (best-of-1,
    FIRST_ONLY) and/or with MIN_VOTES members' agreement; level -> the file `rl.keep` reads
    (levels that keep too few are left out, as kalm_data does)."""
    from kalm.envs.registry import get_env
    from kalm.imagination.dynamics import DynamicsEnsemble
    from kalm.imagination.labelling import label_level, labelled_file
    from kalm.imagination.relabel import write_first_proposals
    from kalm.run_folder import DYNAMICS, too_few_kept

    label_cfg = cfg.label if min_votes is None else dataclasses.replace(cfg.label,
                                                                         min_votes=min_votes)
    tag = ("label1" if first_only else "label") + (f"-mv{min_votes}" if min_votes else "")
    files = {}
    for lv in cfg.imagine.levels:
        source = imagined_data(run, lv)
        if first_only:
            source = write_first_proposals(source, first_proposals_data(run, lv))
        folder = out / f"{tag}-{lv}"
        dyn = DynamicsEnsemble.load(run / DYNAMICS, spec=None)
        stats = label_level(source, folder, label_cfg, get_env(cfg.env), dyn)
        path = labelled_file(folder, "success")
        if path is not None and not too_few_kept(stats, "success", cfg.rl.min_kept_share):
            files[lv] = str(path)
        d = stats.get("diagnostic", {})
        print(f"{tag} {lv}: {stats['kept']['success']} of {stats['kept']['all']} kept, "
              f"{d.get('replayed_successful_of_kept')} right on replay (diagnostic)")
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--algo", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--interval", default=None)
    ap.add_argument("--ratio", type=float, default=None)
    ap.add_argument("--cql-alpha", type=float, default=None)
    ap.add_argument("--labels", default=None)
    ap.add_argument("--relabel-first", action="store_true")
    ap.add_argument("--min-votes", type=int, default=None,
                    help="label every level again with this many members' votes")
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--split", default="dev", choices=["dev", "test"],
                    help="test: the headline half, once a setting was chosen on dev")
    args = ap.parse_args()
    cfg = load_run(args.run)
    seeds = args.seeds if args.seeds is not None else list(cfg.seeds)
    base = compare_config(cfg, args.algo, args.run, split=args.split)
    cc, what = dataclasses.replace(base, method="kalm"), []
    if args.interval is not None:
        interval = 8000 if args.interval == "old" else int(args.interval)
        if base.steps // interval < algos.MIN_TARGET_SYNCS:
            algos.MIN_TARGET_SYNCS = 1  # measuring the refused setting, on purpose
        cc = dataclasses.replace(cc, target_update_interval=interval)
        what.append(f"target interval {interval} ({base.steps // interval} syncs)")
        args.baseline = True
    if args.cql_alpha is not None:
        cc = dataclasses.replace(cc, cql_alpha=args.cql_alpha)
        what.append(f"CQL alpha {args.cql_alpha:g}")
        args.baseline = True
    if args.ratio is not None:
        cc = dataclasses.replace(cc, imagined_ratio=args.ratio, level_ratios={})
        what.append(f"imagined share {args.ratio}")
    if args.relabel_first or args.min_votes is not None:
        cc = dataclasses.replace(cc, imagined=relabel(args.run, cfg, args.out,
                                                      args.relabel_first, args.min_votes))
        if args.relabel_first:
            what.append("best-of-1 (the greedy proposal, labelled alone)")
        if args.min_votes is not None:
            what.append(f"min_votes {args.min_votes}")
    elif args.labels:
        cc = dataclasses.replace(cc, imagined={
            lv: args.labels.format(level=lv) for lv in cfg.imagine.levels
            if Path(args.labels.format(level=lv)).exists()})
        what.append(f"labels {args.labels}")
    cc = dataclasses.replace(cc, baseline=args.baseline)
    name = "; ".join(what) or "unchanged"
    slug = "-".join(w.split(" (")[0].replace(" ", "_").replace("/", "_") for w in what)
    root = args.out / f"{args.algo}-{slug or 'unchanged'}"
    rows = {"the run's default": {
        s: results(base, args.run / evaluate_stage(args.algo, s, split=args.split), s)
        for s in seeds}, name: {}}
    for s in seeds:
        train_seed(cc, root / "train", s)
        evaluate_seed(cc, root / "train", root / f"evaluate-{args.split}-seed{s}", s)
        rows[name][s] = results(cc, root / f"evaluate-{args.split}-seed{s}", s)
    cells = sorted({k for r in rows.values() for res in r.values() for k in res},
                   key=lambda k: (k[0] != "baseline", k[1]))
    print(f"{args.algo.upper()}, {base.steps} steps, {args.split} half, seeds {seeds}, episodes "
          "per level "
          f"and seed {base.episodes} (easy {base.easy_episodes}); success % mean ± std over "
          "seeds")
    print("| setting | " + " | ".join(f"{'real only' if m == 'baseline' else 'KALM'} {lv}"
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
