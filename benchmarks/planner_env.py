"""The planner on an env's own tasks, with no LLM and no `kalm run`: what it keeps and how much
of it the simulator reproduces, per planner setting.

`scripts/plan_probe.py` plans a `kalm run` folder's imagined tasks (the LLM's goals and starts);
this plans fresh tasks: one per goal of a built-in level's DEV half (`--split`), its start state
from a seeded reset of the env (`reset_unsolved`, as the imagine stage draws them), on an
ensemble fitted to real episodes (the `--workdir` that `benchmarks/world_model.py --env ENV
--episodes N --workdir DIR` leaves, or `--data`/`--dynamics`). So a world model can be judged by
the planning it supports before any grounding is paid for (issue 25: Meta-World first).

Per setting it prints: tasks kept (the label stage's rule: every member reaches the goal), kept
rollouts right on replay, planned rollouts right on replay, CPU-seconds and CPU-seconds per kept
rollout. The replay re-runs the planned actions in the simulator from the same seeded reset
(exact for every env, unlike `set_state`); it is a DIAGNOSTIC, which nothing chooses by.

    python benchmarks/planner_env.py --workdir runs/wm-mw --level rephrase --goals 10 \\
        --set horizon=100,project=0 --set horizon=100,project=1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kalm.data.episodes import Episode, EpisodeData, read_episodes
from kalm.data.rollout import episode_seed, reset_unsolved
from kalm.data.suites import load_builtin_suite
from kalm.envs.base import EnvDefinition
from kalm.envs.registry import get_env, make_env
from kalm.imagination.dynamics import DynamicsEnsemble, check_spec
from kalm.imagination.planner import PlannerConfig, plan, planner_settings
from kalm.imagination.relabel import RelabelConfig


def env_tasks(definition: EnvDefinition, level: str, split: str | None, goals: int | None,
              seed: int) -> tuple[EpisodeData, list[tuple[int, Any]]]:
    """One task per goal of the level's half: tasks as one-step episodes from their start state,
    and the (seed,
    init) of the reset each start state came from."""
    suite = load_builtin_suite(level, definition.name, split)
    groups = suite.groups()[:goals] if goals is not None else suite.groups()
    env = make_env(definition)
    episodes, seeds = [], []
    try:
        for i, group in enumerate(groups):
            rng = np.random.default_rng(episode_seed(seed, i))
            entry = group[int(rng.integers(len(group)))]
            s = episode_seed(seed, i)
            s0, _ = reset_unsolved(env, entry.goal, entry.instruction, s, entry.init)
            # a placeholder step (an episode file holds at least one): the planner reads s0 only
            step = (np.zeros((1, definition.spec.action_dim), np.float32)
                    if definition.spec.action_type == "continuous" else np.zeros(1, np.int64))
            start = np.asarray(s0, np.float32)
            episodes.append(Episode(np.stack([start, start]), step,
                                    np.zeros(1, np.float32), np.zeros(1, bool),
                                    entry.instruction, dict(entry.goal),
                                    extras={"level": level}))
            seeds.append((s, entry.init))
    finally:
        env.close()
    return EpisodeData.from_episodes(episodes, definition.spec, source="imagined"), seeds


def replay_from_reset(env: Any, episode: Episode, reset: tuple[int, Any]) -> bool:
    """Whether EPISODE's actions reach its goal in the simulator from the seeded reset its
    start state came from (the env's own success, step by step)."""
    s0, _ = reset_unsolved(env, episode.goal, episode.instruction, *reset)
    if not np.allclose(s0, episode.observations[0], atol=1e-5):
        raise RuntimeError("the seeded reset no longer gives the task's start state")
    for a in episode.actions:
        _, _, terminated, truncated, info = env.step(a)
        if info.get("is_success"):
            return True
        if terminated or truncated:
            break
    return False


def run_setting(tasks: EpisodeData, resets: Sequence[tuple[int, Any]], ens: DynamicsEnsemble,
                definition: EnvDefinition, cfg: PlannerConfig, judge: RelabelConfig
                ) -> dict[str, Any]:
    usage: dict[str, float] = {}
    t0 = time.perf_counter()
    eps = plan(tasks, ens, definition, cfg, judge=judge, progress=False, replay=False,
               usage=usage)
    wall = time.perf_counter() - t0
    env = make_env(definition)
    try:
        right = [replay_from_reset(env, e, r) for e, r in zip(eps, resets, strict=True)]
    finally:
        env.close()
    kept = [bool(e.extras["ensemble_success"]) for e in eps]
    return {"tasks": len(eps), "kept": sum(kept),
            "kept_right": sum(k and r for k, r in zip(kept, right, strict=True)),
            "planned_right": sum(right), "cpu_seconds": usage["cpu_seconds"],
            "candidates": int(usage["candidates"]), "wall_s": wall,
            "mean_length": float(np.mean([e.length for e in eps])) if eps else None}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="a folder with real.h5 and dynamics/ "
                                      "(benchmarks/world_model.py --workdir)")
    ap.add_argument("--data", help="the real episode file the ensemble was fitted on")
    ap.add_argument("--dynamics", help="the ensemble folder")
    ap.add_argument("--level", required=True)
    ap.add_argument("--split", default="dev", help="dev, test or all (default dev)")
    ap.add_argument("--goals", type=int, help="the half's first N goals only")
    ap.add_argument("--seed", type=int, default=7000, help="reset seeds of the tasks")
    ap.add_argument("--min-votes", type=int, help="members that must agree (default: all)")
    ap.add_argument("--set", action="append", default=[], dest="settings",
                    help="planner fields, e.g. horizon=100,project=0 (repeatable)")
    ap.add_argument("--out", type=Path, help="append one JSON line per setting here")
    args = ap.parse_args(argv)
    if (args.workdir is None) == (args.data is None):
        ap.error("give --workdir, or --data with --dynamics")
    if args.data is not None and args.dynamics is None:
        ap.error("--data needs --dynamics")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data_path = Path(args.workdir) / "real.h5" if args.workdir else Path(args.data)
    dyn_path = Path(args.workdir) / "dynamics" if args.workdir else Path(args.dynamics)
    spec = read_episodes(data_path).spec
    ens = DynamicsEnsemble.load(dyn_path)
    check_spec(ens.spec, spec, str(dyn_path), keys=("obs_dim", "action_type", "action_dim"))
    definition = get_env(spec.env)
    split = None if args.split == "all" else args.split
    tasks, seeds = env_tasks(definition, args.level, split, args.goals, args.seed)
    judge = RelabelConfig(min_votes=args.min_votes)
    print(f"{definition.name} {args.level} ({args.split} half): {len(tasks)} tasks, "
          f"ensemble {dyn_path}", file=sys.stderr)
    print("| setting | kept | kept right on replay (diagnostic) | planned right on replay "
          "(diagnostic) | CPU-s | CPU-s per kept | mean length |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for text in args.settings or [""]:
        try:
            cfg = dataclasses.replace(PlannerConfig(), **planner_settings(text))
        except ValueError as exc:
            raise SystemExit(f"--set {text}: {exc}") from None
        row = run_setting(tasks, seeds, ens, definition, cfg, judge)
        per = f"{row['cpu_seconds'] / row['kept']:.1f}" if row["kept"] else "-"
        print(f"| {text or 'defaults'} | {row['kept']} of {row['tasks']} | {row['kept_right']} "
              f"| {row['planned_right']} | {row['cpu_seconds']:.0f} | {per} | "
              f"{row['mean_length']:.1f} |", flush=True)
        row.update(setting=text, level=args.level, split=args.split, env=definition.name,
                   config=dataclasses.asdict(cfg))
        rows.append(row)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
