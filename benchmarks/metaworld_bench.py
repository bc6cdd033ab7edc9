"""Meta-World: wrapper overhead, scripted-expert success and judge parity per task, collection.

    python benchmarks/metaworld_bench.py step --steps 3000 --repeats 5
    python benchmarks/metaworld_bench.py expert --episodes 40 --workers 2
    python benchmarks/metaworld_bench.py collect --episodes 10000 --workers 2 --out mw.h5
    python benchmarks/metaworld_bench.py realism mw.h5

`step` times the same random actions through the bare metaworld v3 env and through
kalm/MetaWorld-v0, interleaved in blocks in one process (the machine is shared: the ratio is what
is comparable), resets excluded from both. `expert` runs the noiseless scripted expert (and
`--noise` others) for N seeded episodes per task at KALM's 100-step horizon, with 95% Wilson
intervals, and counts the steps where the state-only judge agrees with metaworld's
`info["success"]`. `collect` runs `kalm collect --env metaworld --policy expert:noise=mix`;
`realism` gives the realism-check rates of real episodes (the floor for imagined ones).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


# ---------------------------------------------------------------------- step overhead
def step_overhead(tasks: list[str], steps: int, repeats: int) -> None:
    """Paired blocks of 100 steps, bare then wrapped, so both see the same machine load; the
    overhead is the median over blocks of the wrapped/bare time ratio."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    from kalm.envs.metaworld.env import MetaWorldKALMEnv, goal_for

    print(f"load average at start: {_load()}")
    print("| task | bare metaworld steps/s | kalm env steps/s | overhead (median of paired "
          "blocks) |")
    print("|---|---|---|---|")
    for task in tasks:
        bare = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-v3-goal-observable"](seed=0)
        bare.max_path_length = 10**9
        ours = MetaWorldKALMEnv(task=task)
        actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4)).astype(np.float32)
        t_bare, t_ours = [], []
        for _ in range(repeats):
            for start in range(0, steps, 100):
                block = actions[start : start + 100]
                bare.reset()
                t0 = time.perf_counter()
                for a in block:
                    bare.step(a)
                t_bare.append(time.perf_counter() - t0)
                ours.reset(seed=start, options={"goal": goal_for(task)})
                t0, paused = time.perf_counter(), 0.0
                for a in block:
                    _, _, term, trunc, _ = ours.step(a)
                    if term or trunc:  # a random success: restart, untimed
                        p0 = time.perf_counter()
                        ours.reset(seed=start + 1, options={"goal": goal_for(task)})
                        paused += time.perf_counter() - p0
                t_ours.append(time.perf_counter() - t0 - paused)
        ratio = np.median(np.asarray(t_ours) / np.asarray(t_bare))
        n = repeats * steps
        print(f"| {task} | {n / sum(t_bare):,.0f} | {n / sum(t_ours):,.0f} | "
              f"{100 * (ratio - 1):.1f}% |", flush=True)
    print(f"load average at end: {_load()}")


# ---------------------------------------------------------------------- expert success
def _expert_task(args: tuple[str, int, float, int]) -> dict:
    from kalm.envs.metaworld.env import MetaWorldKALMEnv, goal_for
    from kalm.envs.registry import get_env

    task, episodes, noise, horizon = args
    env = MetaWorldKALMEnv(max_episode_steps=horizon)
    agent = get_env("metaworld").policy(f"expert:noise={noise}")
    succ, first, agree, steps = 0, [], 0, 0
    for i in range(episodes):
        agent.rng = np.random.default_rng(20000 + i)
        s, _ = env.reset(seed=10000 + i, options={"goal": goal_for(task)})
        agent.begin(env, env.goal, "")
        for t in range(horizon):
            s, _, term, trunc, info = env.step(agent.act(s))
            steps += 1
            agree += int(info["is_success"] == info["sim_success"])
            if term:
                succ += 1
                first.append(t + 1)
            if term or trunc:
                break
    return {"task": task, "episodes": episodes, "successes": succ, "first": first,
            "agree": agree, "steps": steps}


def expert(episodes: int, noise: float, workers: int, horizon: int) -> None:
    from kalm.data.parallel import imap_ordered
    from kalm.envs.metaworld.tasks import TASKS, task_level
    from kalm.eval.stats import wilson_interval

    print(f"load average at start: {_load()}; noise sigma {noise}, horizon {horizon}, "
          f"{episodes} episodes per task (layout seeds 10000+i)")
    print("| task | level | success | 95% CI | median steps to success | judge agreement "
          "(steps) |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    work = [(t, episodes, noise, horizon) for t in TASKS]
    for r in imap_ordered(_expert_task, work, workers):
        lo, hi = wilson_interval(r["successes"], r["episodes"])
        med = f"{np.median(r['first']):.0f}" if r["first"] else "-"
        print(f"| {r['task']} | {task_level(r['task'])} | "
              f"{100 * r['successes'] / r['episodes']:.0f}% | [{100 * lo:.0f}, {100 * hi:.0f}] | "
              f"{med} | {100 * r['agree'] / r['steps']:.2f}% ({r['steps']}) |", flush=True)
    print(f"wall {time.perf_counter() - t0:.0f} s; load average at end: {_load()}")


# ---------------------------------------------------------------------- collection
def collect_time(episodes: int, workers: int, out: str | None) -> None:
    from kalm.data.collect import CollectConfig, collect

    print(f"load average at start: {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out) if out else Path(tmp) / "real.h5"
        t0 = time.perf_counter()
        data = collect(CollectConfig(out=str(path), env="metaworld", suite="train",
                                     episodes=episodes, workers=workers,
                                     policy="expert:noise=mix"))
        wall = time.perf_counter() - t0
        size = os.path.getsize(path)
    print("| episodes kept | attempts | workers | transitions | median length | wall time | "
          "episodes/s | file size |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {len(data)} | {int(data.attrs['attempts'])} | {workers} | "
          f"{data.num_transitions} | {np.median(data.lengths):.0f} | {wall / 60:.1f} min | "
          f"{len(data) / wall:.1f} | {size / 1e6:.1f} MB |")
    tasks, counts = np.unique(data.extras["task"].astype(str), return_counts=True)
    print("episodes per task: " + ", ".join(f"{t} {c}" for t, c in zip(tasks, counts,
                                                                        strict=True)))
    print(f"load average at end: {_load()}")


# ---------------------------------------------------------------------- realism floor
def realism_floor(path: str) -> None:
    """The realism rates of real episodes (the floor imagined rollouts are read against)."""
    from kalm.data.episodes import read_episodes
    from kalm.envs.registry import get_env

    data = read_episodes(path)
    checks = get_env("metaworld").realism_checks
    totals: dict[str, int] = {}
    transitions = flagged = 0
    for ep in data.episodes():
        counts = checks(ep.observations, ep.actions)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + int(v)
        transitions += ep.length
        flagged += int(any(counts.values()))
    print(f"{path}: {len(data)} episodes, {transitions} transitions")
    print("| " + " | ".join(totals) + " | episodes with a flag |")
    print("|" + "---|" * (len(totals) + 1))
    print("| " + " | ".join(f"{100 * v / transitions:.3f}%" for v in totals.values())
          + f" | {100 * flagged / len(data):.2f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step")
    s.add_argument("--tasks", nargs="+", default=["reach", "pick-place", "door-open",
                                                  "coffee-push"])
    s.add_argument("--steps", type=int, default=3000)
    s.add_argument("--repeats", type=int, default=5)
    e = sub.add_parser("expert")
    e.add_argument("--episodes", type=int, default=40)
    e.add_argument("--noise", type=float, default=0.0)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--horizon", type=int, default=100)
    c = sub.add_parser("collect")
    c.add_argument("--episodes", type=int, default=10000)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--out", default=None)
    r = sub.add_parser("realism")
    r.add_argument("file", help="an episode file of real Meta-World episodes")
    args = ap.parse_args()
    if args.what == "step":
        step_overhead(args.tasks, args.steps, args.repeats)
    elif args.what == "expert":
        expert(args.episodes, args.noise, args.workers, args.horizon)
    elif args.what == "collect":
        collect_time(args.episodes, args.workers, args.out)
    else:
        realism_floor(args.file)


if __name__ == "__main__":
    main()
