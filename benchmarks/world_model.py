"""How far can the learned dynamics ensemble be trusted, open loop?

The planner (`kalm.imagination.planner`) searches action sequences on `DynamicsEnsemble` and keeps
the ones the ensemble says reach the goal, so a kept rollout is only as good as the model's
multi-step accuracy: an error that grows with the horizon turns into kept "successes" that the
simulator would not reproduce, and into real successes the model cannot see. This script
measures both on real episodes the ensemble was NOT fitted on (the validation episodes its fit
held out, `split_episodes(len(data), val_fraction, seed)`):

1. open-loop error: the episode's real expert actions replayed through the ensemble's mean chain
   from the episode's real s_0, compared with the real state at step k (over the episodes that
   last at least k steps): median and 90th percentile of the env's state distance
   (`definition.distance`; CLEVR: mean ball distance in m) and, where the env has entities that
   are easy to separate (CLEVR's balls), of the largest per-entity error; beside "nothing moves"
   (s_k = s_0), the floor any useful model must beat. With and without the env's `project_state`
   hook (`ens.with_projection`), which the planner applies after every predicted step;
2. the judge's recall on real successes: the same real actions through the mean chain and each
   member (`member_rollouts`), labelled by the label stage's own rule
   (`relabel.label_resimulated` with `RelabelConfig(min_votes=K)`): the share of real successful
   episodes the ensemble calls successful, and the share the mean chain alone does (no votes).

Inputs: a `kalm run` folder (`--run RUN`: RUN/dynamics and RUN/collect/real.h5), an episode
file and an ensemble folder (`--data FILE --dynamics DIR`; without `--dynamics` one is fitted),
or a fresh collection (`--env ENV --episodes N`: the scripted expert collects N episodes, an
ensemble with the default `DynamicsConfig` is fitted on them, `--workdir` keeps both for a
rerun).

    python benchmarks/world_model.py --run runs/plan/run
    python benchmarks/world_model.py --env metaworld --episodes 600 --workdir /tmp/wm-mw \\
        --steps 10 20 40 80 --out wm-mw.json
    # the one-step fit beside an open-loop fit (DynamicsConfig.rollout_steps) on the same data
    python benchmarks/world_model.py --run runs/plan/run --fit rollout_steps=4 \\
        --fit-dir runs/plan/fits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kalm.config import settings_from_text
from kalm.data.episodes import EpisodeData, read_episodes
from kalm.envs.base import EnvDefinition
from kalm.envs.registry import get_env
from kalm.imagination.dynamics import (
    META,
    DynamicsConfig,
    DynamicsEnsemble,
    check_spec,
    split_episodes,
)
from kalm.imagination.relabel import Dynamics, RelabelConfig, label_resimulated, member_rollouts
from kalm.io import write_json

DEFAULT_STEPS = {"clevr": (1, 2, 4, 6), "metaworld": (10, 20, 40, 80)}
DEFAULT_POLICY = {"metaworld": "expert:noise=mix"}


def _max_ball_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CLEVR: the largest ball-centre error per row (states are (x, y) per ball)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1, 2)
    b = np.asarray(b, np.float64).reshape(len(b), -1, 2)
    return np.linalg.norm(a - b, axis=-1).max(-1)


# env name -> (column label, per-row error): the worst entity, where entities are easy to split
ENTITY_ERRORS: dict[str, tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = {
    "clevr": ("max ball", _max_ball_error),
}


# ------------------------------------------------------------------------------- measuring
def _quantiles(d: np.ndarray) -> tuple[float | None, float | None]:
    if not len(d):
        return None, None
    return float(np.median(d)), float(np.quantile(d, 0.9))


def measure(model: Dynamics, definition: EnvDefinition, data: EpisodeData,
            steps: Sequence[int], min_votes: int | None = None, batch_size: int = 1024
            ) -> dict[str, Any]:
    """Open-loop errors at `steps` and the judge's recall on the real successes of `data`.

    `model` needs `rollout(s0 (B, obs), actions (B, T...))` -> (states (B, T+1, obs), u (B, T));
    with `member_rollouts` (a DynamicsEnsemble) the members vote, `min_votes` of them (default:
    all K) must reach the goal too, as in the label stage."""
    entity = ENTITY_ERRORS.get(definition.name)
    n = len(data)
    lengths = np.asarray(data.lengths)
    pred_at: dict[int, list[np.ndarray]] = {k: [] for k in steps}
    judge_real = 0
    # every episode, success or not: (real success, mean chain succeeds, members reaching the
    # goal); the label rule with K votes accepts an episode where both of the last hold (>= K)
    verdicts: list[tuple[bool, bool, int]] = []
    k_members: int | None = None
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        t_max = int(lengths[idx].max())
        s0, acts = data.observations[idx, 0], data.actions[idx, :t_max]
        states, u = model.rollout(s0, acts)
        members = member_rollouts(model, s0, acts)
        if members is not None:
            k_members = len(members)
        for k in steps:
            pred_at[k].append(states[:, min(k, t_max)])
        for row, i in enumerate(idx):
            ep = data.episode(int(i))
            judged = label_resimulated(ep, states[row], u[row], definition, RelabelConfig(),
                                       None if members is None else members[:, row])
            verdicts.append((bool(ep.success), bool(judged.extras["ensemble_success"]),
                             int(judged.extras.get("ensemble_votes", 0))))
            if ep.success:
                real = label_resimulated(ep, ep.observations, np.zeros(ep.length, np.float32),
                                         definition, RelabelConfig())
                judge_real += bool(real.extras["ensemble_success"])  # the rule itself, on truth
    rows = []
    for k in steps:
        pred = np.concatenate(pred_at[k])
        has = np.flatnonzero(lengths >= k)
        true = data.observations[has, k]
        d = definition.distance(pred[has], true) if len(has) else np.zeros(0)
        d0 = definition.distance(data.observations[has, 0], true) if len(has) else np.zeros(0)
        row: dict[str, Any] = {"step": int(k), "episodes": len(has)}
        row["median"], row["p90"] = _quantiles(d)
        row["static_median"], row["static_p90"] = _quantiles(d0)
        if entity is not None:
            e = entity[1](pred[has], true) if len(has) else np.zeros(0)
            row["entity_median"], row["entity_p90"] = _quantiles(e)
        rows.append(row)
    used_votes = None if k_members is None else (min_votes or k_members)
    on_successes = [(ok, votes) for real_ok, ok, votes in verdicts if real_ok]
    successes = len(on_successes)
    judge_mean = sum(ok for ok, _ in on_successes)
    judge_votes = sum(ok and votes >= used_votes for ok, votes in on_successes) if k_members \
        else 0
    votes_seen = [votes for _, votes in on_successes] if k_members else []
    judge = {"successful_episodes": successes,
             "real_states_recall": judge_real / successes if successes else None,
             "mean_chain_recall": judge_mean / successes if successes else None,
             "members": k_members, "min_votes": used_votes,
             "votes_recall": (judge_votes / successes if successes and k_members else None),
             "mean_votes": float(np.mean(votes_seen)) if votes_seen else None,
             "votes_curve": votes_curve(verdicts, k_members)}
    return {"steps": rows, "judge": judge}


def votes_curve(verdicts: Sequence[tuple[bool, bool, int]], members: int | None
                ) -> list[dict[str, Any]]:
    """The label rule's trade-off over its one knob, `min_votes`: per K, the share of real
    successes it accepts (recall) and of real failures it calls successful (false positives).
    A judge a planner can use must accept real successes and reject the rest; on Meta-World
    all-member votes accept none (experiment 15), so the votes a run requires are chosen here,
    on held-out real episodes, never on the suites it reports on. K = 0 is the mean chain
    alone. `verdicts`: (real success, mean chain succeeds, members reaching the goal)."""
    if not members:
        return []
    real = np.array([v[0] for v in verdicts], bool)
    mean_ok = np.array([v[1] for v in verdicts], bool)
    votes = np.array([v[2] for v in verdicts], int)
    n_pos, n_neg = int(real.sum()), int((~real).sum())
    curve = []
    for k in range(members + 1):
        accepted = mean_ok & (votes >= k)
        curve.append({"min_votes": k, "successes": n_pos, "failures": n_neg,
                      "recall": float(accepted[real].mean()) if n_pos else None,
                      "false_positive": float(accepted[~real].mean()) if n_neg else None})
    return curve


def measure_variants(ens: DynamicsEnsemble, definition: EnvDefinition, val: EpisodeData,
                     steps: Sequence[int], min_votes: int | None = None, fit: str = ""
                     ) -> dict[str, Any]:
    """`measure` on the raw ensemble and, where the env has `project_state`, projected; FIT
    names a refitted variant (its `--fit` settings) in the keys."""
    variants = {f"{fit}: raw" if fit else "raw": ens}
    if definition.project_state is not None:
        variants[f"{fit}: projected" if fit else "projected"] = ens.with_projection(
            definition.project_state)
    out = {}
    for name, model in variants.items():
        t0 = time.perf_counter()
        out[name] = measure(model, definition, val, steps, min_votes)
        out[name]["wall_s"] = time.perf_counter() - t0
    return out


def add_negatives(variants: dict[str, Any], negatives: dict[str, list[dict[str, Any]]]
                  ) -> None:
    """Each variant's votes curve gains the false positives measured on the negatives file."""
    for name, curve in negatives.items():
        for c, f in zip(variants[name]["judge"]["votes_curve"], curve, strict=True):
            c["negatives"], c["negatives_false_positive"] = f["failures"], f["false_positive"]


# ------------------------------------------------------------------------------- printing
def _f(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def label_of(variant: str) -> str:
    """A variant's key (`raw`, `projected`, `FIT: raw`) as the tables name it."""
    fit, _, kind = variant.rpartition(": ")
    return ("ensemble mean" + (f" ({fit})" if fit else "")
            + (" + project_state" if kind == "projected" else ""))


def render(results: dict[str, Any], definition: EnvDefinition) -> str:
    units = f" ({definition.state_units})" if definition.state_units else ""
    entity = ENTITY_ERRORS.get(definition.name)
    header = ["model", "step", "episodes", f"median{units}", f"p90{units}"]
    if entity is not None:
        header += [f"{entity[0]} median", f"{entity[0]} p90"]
    header += ["s_k = s_0 median", "s_k = s_0 p90"]
    err_rows, judge_rows = [], []
    for name, res in results["variants"].items():
        label = label_of(name)
        for r in res["steps"]:
            row = [label, str(r["step"]), str(r["episodes"]), _f(r["median"]), _f(r["p90"])]
            if entity is not None:
                row += [_f(r["entity_median"]), _f(r["entity_p90"])]
            row += [_f(r["static_median"]), _f(r["static_p90"])]
            err_rows.append(row)
        j = res["judge"]
        votes = (f">= {j['min_votes']} of {j['members']} members"
                 if j["members"] else "no members")
        judge_rows.append([label, str(j["successful_episodes"]), _pct(j["real_states_recall"]),
                           _pct(j["mean_chain_recall"]),
                           votes, _pct(j["votes_recall"]), _f(j["mean_votes"], 2)])
    dist = "distance" if not definition.state_units else f"distance in {definition.state_units}"
    neg = any("negatives" in c for res in results["variants"].values()
              for c in res["judge"].get("votes_curve", []))
    curve_rows = [[label_of(name), "mean chain only" if c["min_votes"] == 0
                   else f">= {c['min_votes']}", f"{c['successes']} / {c['failures']}",
                   _pct(c["recall"]), _pct(c["false_positive"])]
                  + ([str(c.get("negatives", "n/a")), _pct(c.get("negatives_false_positive"))]
                     if neg else [])
                  for name, res in results["variants"].items()
                  for c in res["judge"].get("votes_curve", [])]
    out = [f"Open-loop error of the real actions from the real s_0 (env {dist}, "
           f"{results['episodes']} held-out episodes):", "",
           _table(header, err_rows), "",
           "Judged successful, real successful held-out episodes (label stage's rule):", "",
           _table(["model", "real successes", "rule on the real states", "mean chain succeeds",
                   "vote rule", "label rule succeeds (recall)", "mean votes"], judge_rows)]
    if curve_rows:
        out += ["", "The rule over min_votes, all held-out episodes (successes accepted vs "
                "failures accepted):", "",
                _table(["model", "min_votes", "real successes / failures", "recall",
                        "false positives"]
                       + (["negatives file: failures", "false positives"] if neg else []),
                       curve_rows)]
    return "\n".join(out)


# ------------------------------------------------------------------------------- inputs
def _held_out(data: EpisodeData, ens: DynamicsEnsemble) -> EpisodeData:
    _, val = split_episodes(len(data), ens.config.val_fraction, ens.config.seed)
    want = ens.training.get("val_episodes")
    if want is not None and want != len(val):
        raise SystemExit(f"the ensemble's fit held out {want} episodes, the split of this data "
                         f"gives {len(val)}: is it the data the ensemble was fitted on?")
    if not len(val):
        raise SystemExit("the ensemble was fitted without held-out episodes (val_fraction 0)")
    return data.subset(val)


def _collect(args: argparse.Namespace, folder: Path, definition: EnvDefinition
             ) -> tuple[Path, float | None]:
    from kalm.data.collect import CollectConfig, collect

    path = folder / "real.h5"
    if path.exists():
        print(f"(reusing {path})", file=sys.stderr)
        return path, None
    policy = args.policy or DEFAULT_POLICY.get(definition.name, "expert")
    cfg = CollectConfig(out=str(path), env=args.env, suite=args.suite, episodes=args.episodes,
                        seed=args.seed, epsilon=args.epsilon, policy=policy,
                        workers=args.workers)
    t0 = time.perf_counter()
    collect(cfg, progress=False)
    return path, time.perf_counter() - t0


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "=._-" else "_" for c in text)


def _fit_or_load(data: EpisodeData, definition: EnvDefinition, folder: Path | None,
                 cfg: DynamicsConfig | None = None) -> tuple[DynamicsEnsemble, float | None]:
    if folder is not None and (folder / META).exists():
        print(f"(reusing {folder})", file=sys.stderr)
        ens = DynamicsEnsemble.load(folder, data.spec)
        if cfg is not None and ens.config != cfg:
            raise SystemExit(f"{folder} holds an ensemble fitted with {ens.config}, not {cfg}")
        return ens, None
    t0 = time.perf_counter()
    ens = DynamicsEnsemble.fit(data, cfg or DynamicsConfig(), bounds=definition.clamp_box(),
                               progress=False, threads=1,
                               symmetry=definition.dynamics_symmetry)
    wall = time.perf_counter() - t0
    if folder is not None:
        ens.save(folder)
    return ens, wall


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("inputs (one of --run, --data, --env with --episodes)")
    src.add_argument("--run", help="a `kalm run` folder (RUN/dynamics, RUN/collect/real.h5)")
    src.add_argument("--data", help="a real episode file")
    src.add_argument("--dynamics", help="with --data: the ensemble fitted on it (else fitted)")
    src.add_argument("--env", help="env string (default: the data's); with --episodes, collect")
    src.add_argument("--episodes", type=int, help="collect this many expert episodes")
    col = ap.add_argument_group("collection (with --episodes)")
    col.add_argument("--workdir", help="keep real.h5 and dynamics/ here (reused when present)")
    col.add_argument("--policy", help="default: expert:noise=mix for metaworld, else expert")
    col.add_argument("--suite", default="train")
    col.add_argument("--seed", type=int, default=1)
    col.add_argument("--epsilon", type=float, default=0.0)
    col.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, nargs="+",
                    help="open-loop steps (default: CLEVR 1 2 4 6, Meta-World 10 20 40 80)")
    ap.add_argument("--min-votes", type=int, help="members that must agree (default: all K)")
    ap.add_argument("--negatives", help="an episode file of real failures from the same env "
                    "(e.g. `kalm collect --policy random --keep-failures`): the votes curve's "
                    "false positives on them, where the held-out episodes hold few failures")
    ap.add_argument("--fit", action="append", default=[], metavar="SETTINGS",
                    help="also fit an ensemble with these DynamicsConfig fields changed, e.g. "
                         "rollout_steps=4 (repeatable; same data and held-out episodes), and "
                         "measure it beside the first")
    ap.add_argument("--fit-dir", help="keep (and reuse) the --fit ensembles here, one folder "
                                      "per setting")
    ap.add_argument("--out", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if sum(x is not None for x in (args.run, args.data, args.episodes)) != 1:
        ap.error("give exactly one of --run, --data, --episodes (the last with --env)")
    if args.episodes is not None and not args.env:
        ap.error("--episodes needs --env")
    if args.dynamics and not args.data:
        ap.error("--dynamics goes with --data")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    timings: dict[str, float | None] = {}
    tmp = None
    try:
        if args.episodes is not None:
            definition = get_env(args.env)
            if args.workdir:
                folder = Path(args.workdir)
                folder.mkdir(parents=True, exist_ok=True)
            else:
                tmp = tempfile.TemporaryDirectory(prefix="kalm-world-model-")
                folder = Path(tmp.name)
            data_path, timings["collect_s"] = _collect(args, folder, definition)
            data = read_episodes(data_path)
            ens, timings["fit_s"] = _fit_or_load(
                data, definition, folder / "dynamics" if args.workdir else None)
            source = f"{args.episodes} episodes collected ({data_path})"
        else:
            if args.run:
                data_path = Path(args.run) / "collect" / "real.h5"
                dyn_path: Path | None = Path(args.run) / "dynamics"
            else:
                data_path = Path(args.data)
                dyn_path = Path(args.dynamics) if args.dynamics else None
            data = read_episodes(data_path)
            definition = get_env(args.env or data.spec.env)
            if dyn_path is not None:
                ens = DynamicsEnsemble.load(dyn_path)
                check_spec(ens.spec, data.spec, str(dyn_path), keys=("obs_dim", "action_type",
                                                                     "action_dim"))
            else:
                ens, timings["fit_s"] = _fit_or_load(data, definition, None)
            source = str(args.run or data_path)
    finally:
        if tmp is not None:
            tmp.cleanup()
    val = _held_out(data, ens)
    steps = tuple(args.steps or DEFAULT_STEPS.get(definition.name, (1, 2, 4, 8)))
    t0 = time.perf_counter()
    variants = measure_variants(ens, definition, val, steps, args.min_votes)
    timings["measure_s"] = time.perf_counter() - t0
    fits = {}
    for text in args.fit:
        changed = settings_from_text(DynamicsConfig, text, "--fit")
        if {"val_fraction", "seed"} & set(changed):
            raise SystemExit(f"--fit {text!r}: val_fraction and seed decide the held-out "
                             "episodes; a comparison needs the same ones")
        cfg = dataclasses.replace(ens.config, **changed)
        folder = Path(args.fit_dir) / _slug(text) if args.fit_dir else None
        refit, timings[f"fit {text}_s"] = _fit_or_load(data, definition, folder, cfg)
        fits[text] = {"config": dataclasses.asdict(cfg), "training": {
            k: v for k, v in refit.training.items() if k != "history"}}
        t0 = time.perf_counter()
        variants.update(measure_variants(refit, definition, val, steps, args.min_votes, text))
        timings[f"measure {text}_s"] = time.perf_counter() - t0
    negatives = {}
    if args.negatives:
        neg = read_episodes(args.negatives)
        for k in ("env", "obs_dim", "action_type", "action_dim"):
            if getattr(neg.spec, k) != getattr(data.spec, k):
                raise SystemExit(f"{args.negatives}: field 'spec.{k}' is "
                                 f"{getattr(neg.spec, k)!r}, the real data has "
                                 f"{getattr(data.spec, k)!r}")
        neg = neg.subset(np.flatnonzero([not neg.episode(i).success for i in range(len(neg))]))
        if not len(neg):
            raise SystemExit(f"{args.negatives}: no failed episode to count false positives on")
        t0 = time.perf_counter()
        for name, res in measure_variants(ens, definition, neg, steps, args.min_votes).items():
            negatives[name] = res["judge"]["votes_curve"]
        timings["negatives_s"] = time.perf_counter() - t0
        add_negatives(variants, negatives)
    timings["total_s"] = time.perf_counter() - t_start
    results = {"source": source, "env": definition.name, "episodes": len(val),
               "data_episodes": len(data), "members": ens.config.members,
               "val_fraction": ens.config.val_fraction, "split_seed": ens.config.seed,
               "steps_asked": list(steps), "variants": variants, "timings": timings,
               "training": {k: v for k, v in ens.training.items() if k != "history"},
               "fits": fits, "negatives": negatives, "negatives_file": args.negatives}
    print(f"{source}: env {definition.name}, {len(data)} episodes, {len(val)} held out by the "
          f"fit (val_fraction {ens.config.val_fraction}, seed {ens.config.seed}), "
          f"K={ens.config.members}")
    print()
    print(render(results, definition))
    print()
    print("wall s: " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in timings.items()
                                   if v is not None))
    if args.out:
        write_json(json.loads(json.dumps(results)), args.out)
    return results


if __name__ == "__main__":
    main()
