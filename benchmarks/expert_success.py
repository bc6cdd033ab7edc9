"""Measure the scripted CLEVR expert's success rate per goal kind on random scenes.

Each episode resets the env with seed = --seed + i (default initial region, balls may start in a
wall) and a goal drawn from a generator seeded the same way, then runs the expert until success
or the goal's step limit (50; 1 for push goals). Prints one markdown table row per goal kind;
episode lengths are over successful episodes only.

    python benchmarks/expert_success.py --episodes 1000 --other-episodes 200 --workers 2
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import time
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import COLORS, GOAL_DIRECTIONS
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.expert import ExpertPolicy
from kalm.envs.clevr.goals import max_steps

KINDS = ("relation", "push", "all", "line", "circle")
_AXIS = {"behind": (1, 1), "front": (1, -1), "left": (0, -1), "right": (0, 1)}


def sample_relation(rng: np.random.Generator) -> dict[str, Any]:
    """Uniform over the 20 ordered colour pairs x 4 directions."""
    a, b = rng.choice(len(COLORS), size=2, replace=False)
    d = GOAL_DIRECTIONS[int(rng.integers(4))]
    return {"kind": "relation", "object": COLORS[a], "reference": COLORS[b], "direction": d}


def _consistent(goals: list[dict[str, Any]]) -> bool:
    """Reject combinations that contradict one another: the same ordered or reversed pair twice,
    or a strict cycle along one axis (A right of B, B right of C, C right of A)."""
    pairs = set()
    for g in goals:
        key = frozenset((g["object"], g["reference"]))
        if key in pairs:
            return False
        pairs.add(key)
    # Order constraints per axis: "A right of B" means x_A > x_B (plus at most 45 degrees off).
    for axis in (0, 1):
        edges: dict[str, set[str]] = {}
        for g in goals:
            ax, sign = _AXIS[g["direction"]]
            if ax != axis:
                continue
            lo, hi = (g["reference"], g["object"]) if sign > 0 else (g["object"], g["reference"])
            edges.setdefault(lo, set()).add(hi)
        seen: set[str] = set()
        stack: set[str] = set()

        def cyclic(
            n: str,
            edges: dict[str, set[str]] = edges,
            seen: set[str] = seen,
            stack: set[str] = stack,
        ) -> bool:
            if n in stack:
                return True
            if n in seen:
                return False
            seen.add(n)
            stack.add(n)
            found = any(cyclic(m) for m in edges.get(n, ()))
            stack.discard(n)
            return found

        if any(cyclic(n) for n in list(edges)):
            return False
    return True


def _satisfiable(goal: dict[str, Any], rng: np.random.Generator) -> bool:
    try:
        from kalm.envs.clevr import witness  # written by another helper; optional
    except ImportError:
        return True
    try:
        return witness.satisfying_layout(goal, rng) is not None
    except Exception:  # an unsatisfiable goal may raise instead of returning None
        return False


def sample_all(rng: np.random.Generator) -> dict[str, Any]:
    """2 or 3 relations that can hold at once (rejection sampling)."""
    while True:
        n = int(rng.integers(2, 4))
        goals = [sample_relation(rng) for _ in range(n)]
        if not _consistent(goals):
            continue
        goal = {"kind": "all", "goals": goals}
        if _satisfiable(goal, np.random.default_rng(int(rng.integers(2**31)))):
            return goal


def sample_goal(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    if kind == "relation":
        return sample_relation(rng)
    if kind == "push":
        return {
            "kind": "push",
            "object": COLORS[int(rng.integers(5))],
            "direction": GOAL_DIRECTIONS[int(rng.integers(4))],
        }
    if kind == "all":
        return sample_all(rng)
    if kind == "line":
        return {"kind": "line", "order": list(COLORS)}
    if kind == "circle":
        return {"kind": "circle", "center": "green"}
    raise ValueError(f"unknown goal kind {kind!r}")


def run_episode(args: tuple[str, int, bool]) -> tuple[bool, int, float]:
    """(success, steps, seconds) of one expert episode."""
    kind, seed, lookahead = args
    t0 = time.perf_counter()
    env = _ENV.get("env")
    if env is None:
        env = _ENV["env"] = CLEVRRobotEnv()
    goal = sample_goal(kind, np.random.default_rng([seed, KINDS.index(kind)]))
    env.reset(seed=seed, options={"goal": goal, "instruction": ""})
    expert = ExpertPolicy(env, lookahead=lookahead)
    limit = max_steps(env.goal)
    success, steps = False, 0
    for steps in range(1, limit + 1):  # noqa: B007 - steps is used after the loop
        _, _, success, _, _ = env.step(expert.act(env.goal))
        if success:
            break
    return success, steps, time.perf_counter() - t0


_ENV: dict[str, CLEVRRobotEnv] = {}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--episodes",
        type=int,
        default=1000,
        help="episodes for relation goals (others use --other-episodes)",
    )
    ap.add_argument(
        "--other-episodes", type=int, default=200, help="episodes for push/all/line/circle goals"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="relation,push,all,line,circle")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--no-lookahead",
        action="store_true",
        help="the plain geometric heuristic, without simulator lookahead",
    )
    ap.add_argument("--show-failures", action="store_true", help="list the failed episode seeds")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}; expected some of {', '.join(KINDS)}")
    print("| kind | episodes | success | 95% Wilson CI | median len | mean len | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers) as pool:
        for kind in kinds:
            n = args.episodes if kind == "relation" else args.other_episodes
            t0 = time.perf_counter()
            jobs = [(kind, args.seed + i, not args.no_lookahead) for i in range(n)]
            results = pool.map(run_episode, jobs, chunksize=4)
            wall = time.perf_counter() - t0
            wins = [steps for ok, steps, _ in results if ok]
            lo, hi = wilson(len(wins), n)
            med = statistics.median(wins) if wins else float("nan")
            mean = statistics.fmean(wins) if wins else float("nan")
            print(
                f"| {kind} | {n} | {len(wins) / n:.1%} | [{lo:.1%}, {hi:.1%}] | {med:g} | "
                f"{mean:.2f} | {wall:.0f} |",
                flush=True,
            )
            if args.show_failures:
                failed = [job[1] for job, res in zip(jobs, results, strict=True) if not res[0]]
                print(f"<!-- {kind} failed seeds: {failed} -->", flush=True)


if __name__ == "__main__":
    main()
