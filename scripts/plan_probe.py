"""The planner's settings side by side on one level of a `kalm run` folder, on the DEV half.

Plans one rollout per task (the imagine stage's goals and start states, the tasks whose goal is
in the level's dev half, a fixed random subset with --tasks) on the run's dynamics ensemble,
for each setting given, and prints per setting: tasks kept (judged successful by the label
stage's rule), kept rollouts right on replay (a DIAGNOSTIC that uses the simulator, which KALM
may not; never used to choose a rollout), CPU-seconds and CPU-seconds per kept rollout. The
planner's defaults are chosen on these tables; the headline reports the test half.

    python scripts/plan_probe.py runs/plan/run --level hard --tasks 40 \
        --set prior=uniform --set prior=llm --set prior=uniform,horizon=30

`--write DIR` instead plans every task of the level (both halves: RL learns from all of them)
with the one setting given, into DIR in the label stage's layout, for `scripts/dev_ablation.py
--labels DIR/labelled-success.h5` to train on:

    python scripts/plan_probe.py runs/plan/run --level rephrase --set prior=llm,project=0 \
        --write runs/abl/plan-llm-noproj-rephrase
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from kalm.data.episodes import Episode, EpisodeData, read_episodes
from kalm.data.suites import load_builtin_suite
from kalm.envs.registry import get_env
from kalm.imagination.dynamics import DynamicsEnsemble
from kalm.imagination.planner import (
    plan,
    plan_into,
    plan_level,
    planner_settings,
    proposals_by_task,
)
from kalm.imagination.relabel import RelabelConfig, first_proposals
from kalm.imagination.stage import task_starts
from kalm.pipeline import imagine_settings
from kalm.run_folder import DYNAMICS, imagined_data, load_run


def parse_setting(text: str) -> dict[str, object]:
    try:
        return planner_settings(text)
    except ValueError as exc:
        raise SystemExit(f"--set {text}: {exc}") from None


def level_tasks(run: Path, cfg, level: str) -> tuple[EpisodeData | None, list[Episode]]:
    """(the imagine stage's file, its first proposals) of LEVEL; where the run imagined no such
    level, (None, the tasks its imagine stage would have decoded: same goals and starts)."""
    path = imagined_data(run, level)
    if path.exists():
        data = read_episodes(path)
        return data, first_proposals(data).episodes()
    if level not in cfg.imagine.levels:
        raise SystemExit(f"{run}: level {level!r} is neither imagined nor in imagine.levels")
    print(f"(no {path}: tasks built from the run's imagine settings, uniform prior only)")
    return None, run_task_starts(cfg, level, cfg.imagine.levels[level])


def run_task_starts(cfg, level: str, per_goal: int) -> list[Episode]:
    """PER_GOAL tasks per goal of LEVEL as the run's imagine stage would draw them."""
    with tempfile.TemporaryDirectory() as tmp:  # a suite file's level, where the run has one
        return task_starts(imagine_settings(cfg, level, Path(tmp), per_goal), cfg.env)


def print_written(level: str, stats: dict, out: Path) -> None:
    d = stats["diagnostic"]
    print(f"{level}: {stats['judged_successful']} of {stats['tasks']} tasks kept, "
          f"{d['replayed_successful_of_kept']} right on replay (diagnostic), "
          f"{stats['cpu_seconds']:.0f} CPU-s -> {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--level", required=True)
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--tasks", type=int, default=None, help="a random subset of this many")
    ap.add_argument("--set", action="append", default=[], dest="settings",
                    help="planner fields, e.g. prior=llm,candidates=500 (repeatable)")
    ap.add_argument("--dynamics", type=Path, default=None,
                    help="plan on this ensemble instead of RUN/dynamics (fitted on the run's "
                         "real data, e.g. by benchmarks/world_model.py --fit)")
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    ap.add_argument("--write", type=Path, default=None,
                    help="plan the whole level with the one --set into this label folder")
    ap.add_argument("--per-goal", type=int, default=None,
                    help="with --write: this many tasks per goal of the level (fresh starts, "
                         "uniform prior) instead of the imagine stage's")
    args = ap.parse_args(argv)
    if args.write is not None:
        write_level(args)
        return

    cfg = load_run(args.run)
    definition = get_env(cfg.env)
    data, tasks = level_tasks(args.run, cfg, args.level)
    half = {json.dumps(g, sort_keys=True)
            for g in load_builtin_suite(args.level, cfg.env, args.split).goals}
    keep = [i for i in range(len(tasks)) if json.dumps(tasks[i].goal, sort_keys=True) in half]
    if args.tasks is not None and args.tasks < len(keep):
        keep = sorted(np.random.default_rng(0).choice(keep, args.tasks, replace=False))
    tasks = [tasks[i] for i in keep]
    proposals = proposals_by_task(data) if data is not None else {}
    if data is None and any(parse_setting(t).get("prior", cfg.planner.prior) != "uniform"
                            for t in args.settings or ["prior=uniform"]):
        raise SystemExit(f"{args.run}: no imagine stage for {args.level}, so no LLM proposals: "
                         f"only prior=uniform can be probed")
    dynamics = DynamicsEnsemble.load(args.dynamics or args.run / DYNAMICS,
                                     spec=definition.episode_spec(cfg.env))
    judge = RelabelConfig(min_votes=cfg.label.min_votes)
    print(f"{args.level} ({args.split} half): {len(tasks)} tasks; judge min_votes "
          f"{judge.min_votes}")
    print("| setting | kept | kept right on replay (diagnostic) | CPU-s | CPU-s per kept | "
          "candidates | wall s |")
    print("|---|---|---|---|---|---|---|")
    for text in args.settings or ["prior=uniform"]:
        pc = dataclasses.replace(cfg.planner, **parse_setting(text))
        usage: dict[str, float] = {}
        t0 = time.perf_counter()
        eps = plan(tasks, dynamics, definition, pc, proposals, judge, progress=False,
                   usage=usage)
        wall = time.perf_counter() - t0
        kept = [e for e in eps if e.extras["ensemble_success"]]
        right = sum(bool(e.extras.get("replay_success")) for e in kept)
        cpu = usage["cpu_seconds"]
        per = f"{cpu / len(kept):.1f}" if kept else "-"
        print(f"| {text} | {len(kept)} of {len(eps)} | {right} | {cpu:.0f} | {per} | "
              f"{int(usage['candidates'])} | {wall:.0f} |", flush=True)
        if args.out is not None:
            row = {"run": str(args.run), "level": args.level, "split": args.split,
                   "dynamics": str(args.dynamics or args.run / DYNAMICS),
                   "tasks": len(eps), "setting": text, "config": dataclasses.asdict(pc),
                   "kept": len(kept), "right": right, "cpu_seconds": cpu,
                   "candidates": int(usage["candidates"]), "wall_s": wall,
                   "replay_success_all": sum(bool(e.extras.get("replay_success"))
                                             for e in eps)}
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


def write_level(args: argparse.Namespace) -> None:
    if len(args.settings) != 1:
        raise SystemExit("--write plans with exactly one --set")
    cfg = load_run(args.run)
    if args.per_goal is not None:
        write_per_goal(args, cfg)
        return
    imagined = imagined_data(args.run, args.level)
    spec = read_episodes(imagined).spec
    pc = dataclasses.replace(cfg.planner, **parse_setting(args.settings[0]))
    dynamics = DynamicsEnsemble.load(args.dynamics or args.run / DYNAMICS, spec=spec)
    stats = plan_level(imagined, args.write, dynamics,
                       get_env(cfg.env), pc, judge=RelabelConfig(min_votes=cfg.label.min_votes))
    print_written(args.level, stats, args.write)


def write_per_goal(args: argparse.Namespace, cfg) -> None:
    """--write with --per-goal: the level's tasks drawn afresh, N per goal (the imagine stage's
    seeds and starts for that count), planned from the uniform prior (no LLM proposals)."""
    pc = dataclasses.replace(cfg.planner, **parse_setting(args.settings[0]))
    if pc.prior != "uniform":
        raise SystemExit("--per-goal plans tasks the LLM never imagined: prior=uniform only")
    definition = get_env(cfg.env)
    tasks = run_task_starts(cfg, args.level, args.per_goal)
    dynamics = DynamicsEnsemble.load(args.dynamics or args.run / DYNAMICS,
                                     spec=definition.episode_spec(cfg.env))
    stats = plan_into(tasks, args.write, dynamics, definition, pc,
                      judge=RelabelConfig(min_votes=cfg.label.min_votes),
                      source=f"{args.level} suite, {args.per_goal} per goal", env=cfg.env)
    print_written(args.level, stats, args.write)


if __name__ == "__main__":
    main()
