"""Environment step rate against the bare physics of the same model, side by side in one run.

The raw loop replays the same action sequence with the minimum work MuJoCo needs (teleport the
pusher, set ctrl, mj_step x40), so the ratio isolates the wrapper's overhead (observation,
success check, reward, bookkeeping).

    python benchmarks/env_speed.py --steps 5000 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import time

import mujoco
import numpy as np

from kalm.envs.clevr import scene
from kalm.envs.clevr.constants import PUSH_VECTORS
from kalm.envs.clevr.env import PHYSICS_STEPS_PER_ACTION, PUSH_OFFSET, CLEVRRobotEnv

GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}


def run_env(env: CLEVRRobotEnv, actions: np.ndarray, episode_len: int) -> float:
    t0 = time.perf_counter()
    for i, a in enumerate(actions):
        if i % episode_len == 0:
            env.reset(seed=i, options={"goal": GOAL, "instruction": "bench"})
        env.step(int(a))
    return time.perf_counter() - t0


def run_raw(env: CLEVRRobotEnv, actions: np.ndarray, episode_len: int) -> float:
    """Same scenes and actions; only the physics (resets are excluded from the timing)."""
    m, d = env.model, env.data
    total = 0.0
    for i, a in enumerate(actions):
        if i % episode_len == 0:
            env.reset(seed=i, options={"goal": GOAL, "instruction": "bench"})
        t0 = time.perf_counter()
        ball, k = divmod(int(a), 8)
        vec = PUSH_VECTORS[k]
        base = 7 * ball
        d.qpos[scene.PUSHER_QPOS] = d.qpos[base : base + 2] - PUSH_OFFSET * vec
        d.qvel[scene.PUSHER_QVEL] = 0.0
        d.ctrl[:] = vec
        mujoco.mj_step(m, d, nstep=PHYSICS_STEPS_PER_ACTION)
        total += time.perf_counter() - t0
    return total


def run_env_steps_only(env: CLEVRRobotEnv, actions: np.ndarray, episode_len: int) -> float:
    """env.step timed alone (resets excluded), comparable with run_raw."""
    total = 0.0
    for i, a in enumerate(actions):
        if i % episode_len == 0:
            env.reset(seed=i, options={"goal": GOAL, "instruction": "bench"})
        t0 = time.perf_counter()
        env.step(int(a))
        total += time.perf_counter() - t0
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--episode-len", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 40, args.steps)
    env = CLEVRRobotEnv()
    env.reset(seed=0, options={"goal": GOAL, "instruction": "bench"})
    raw, wrapped, full = [], [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        raw.append(run_raw(env, actions, args.episode_len))
        wrapped.append(run_env_steps_only(env, actions, args.episode_len))
        full.append(run_env(env, actions, args.episode_len))
    r, w, f = (float(np.median(x)) for x in (raw, wrapped, full))
    n = args.steps
    print(f"machine: {platform.processor() or platform.machine()}, mujoco {mujoco.__version__}, "
          f"{args.steps} actions x {args.repeats} repeats (median)")
    print("| loop | actions/s | mj_step/s | time per action |")
    print("|---|---|---|---|")
    print(f"| bare physics (teleport + 40 x mj_step) | {n / r:,.0f} | "
          f"{n * PHYSICS_STEPS_PER_ACTION / r:,.0f} | {1e6 * r / n:.0f} us |")
    print(f"| env.step | {n / w:,.0f} | | {1e6 * w / n:.0f} us |")
    print(f"| env.step incl. reset every {args.episode_len} | {n / f:,.0f} | | "
          f"{1e6 * f / n:.0f} us |")
    print(f"\nwrapper overhead of env.step over bare physics: {100 * (w / r - 1):.1f}% "
          "(target < 25%)")


if __name__ == "__main__":
    main()
