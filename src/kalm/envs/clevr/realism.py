"""What can be judged about an imagined CLEVR rollout without a model: realism and replay.

The categories of unrealistic transitions: a ball out of the reachable table, a ball moving further
in one step than any real push, two balls interpenetrating, a ball moving that the push could not
reach. `replay` puts the simulator in the imagined start state and applies the imagined pushes.
Both are hooks of the CLEVR EnvDefinition; the generic imagination code knows none of this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import BALL_RADIUS, NUM_BALLS, TABLE_HIGH, TABLE_LOW
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.goals import is_success

CATEGORIES = ("out_of_table", "exceed_dynamics", "interpenetration", "untouched_moved")
TABLE_TOL = 0.03  # centres may sit this far outside the measured limits
MAX_STEP_MOVE = 0.45  # no real push moves a ball further (one push ~0.25-0.33 plus momentum)
PENETRATION = 2 * BALL_RADIUS - 0.04  # centres closer than this overlap by > 4 cm
MOVED = 0.08  # displacement that counts as "moved" (rolling momentum stays below)
PUSH_REACH = 0.35  # how far a pushed ball travels in one step, at most (measured ~0.25-0.33)
REACH = 2 * BALL_RADIUS + PUSH_REACH  # a ball further than this from every moved-ball chain


def check_transitions(observations: np.ndarray, actions: np.ndarray) -> dict[str, int]:
    """Unrealistic transitions of one imagined rollout, counted per category."""
    c = dict.fromkeys(CATEGORIES, 0)
    obs = np.asarray(observations, dtype=np.float64).reshape(len(observations), NUM_BALLS, 2)
    low, high = TABLE_LOW - TABLE_TOL, TABLE_HIGH + TABLE_TOL
    for t, a in enumerate(np.asarray(actions).reshape(-1)):
        prev, cur = obs[t], obs[t + 1]
        c["out_of_table"] += int(((cur < low) | (cur > high)).any())
        move = np.linalg.norm(cur - prev, axis=1)
        c["exceed_dynamics"] += int(move.max() > MAX_STEP_MOVE)
        d = np.linalg.norm(cur[:, None] - cur[None], axis=-1)[np.triu_indices(NUM_BALLS, 1)]
        c["interpenetration"] += int(d.min() < PENETRATION)
        # balls the push can reach: the pushed ball, then anything within reach of a reached ball
        reached = {int(a) // 8}
        frontier = list(reached)
        while frontier:
            i = frontier.pop()
            for j in range(NUM_BALLS):
                if j not in reached and np.linalg.norm(prev[j] - prev[i]) < REACH:
                    reached.add(j)
                    frontier.append(j)
        c["untouched_moved"] += int(any(move[j] > MOVED for j in range(NUM_BALLS)
                                     if j not in reached))
    return c


def batch_plausible(observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(N, T) whether each transition of N rollouts (N, T+1, 10) falls in none of the
    categories of `check_transitions`, for a planner that scores thousands of candidates: the
    same tests in numpy (a transition is plausible where `check_transitions` counts nothing)."""
    obs = np.asarray(observations, dtype=np.float64)
    if obs.ndim != 3 or obs.shape[-1] != 2 * NUM_BALLS:
        raise ValueError(f"batch_plausible takes observations (N, T+1, {2 * NUM_BALLS}), got "
                         f"{obs.shape}")
    n, t1 = obs.shape[:2]
    balls = obs.reshape(n, t1, NUM_BALLS, 2)
    prev, cur = balls[:, :-1], balls[:, 1:]
    low, high = TABLE_LOW - TABLE_TOL, TABLE_HIGH + TABLE_TOL
    out_of_table = ((cur < low) | (cur > high)).any((-1, -2))
    move = np.linalg.norm(cur - prev, axis=-1)  # (N, T, balls)
    exceed = move.max(-1) > MAX_STEP_MOVE
    i, j = np.triu_indices(NUM_BALLS, 1)
    penetrate = (np.linalg.norm(cur[:, :, i] - cur[:, :, j], axis=-1) < PENETRATION).any(-1)
    # balls the push can reach: the pushed ball, then by chains of balls within reach
    near = np.linalg.norm(prev[:, :, :, None] - prev[:, :, None], axis=-1) < REACH
    pushed = np.asarray(actions).reshape(n, t1 - 1).astype(np.int64) // 8
    reached = np.arange(NUM_BALLS)[None, None] == pushed[..., None]  # (N, T, balls)
    for _ in range(NUM_BALLS - 1):
        reached = reached | (near & reached[..., :, None]).any(-2)
    untouched = ((move > MOVED) & ~reached).any(-1)
    return ~(out_of_table | exceed | penetrate | untouched)


def replay(env: CLEVRRobotEnv, goal: Mapping[str, Any], s0: np.ndarray,
           actions: np.ndarray) -> tuple[np.ndarray, bool]:
    """Real states after replaying `actions` from s0, and whether the goal holds at the end."""
    env.reset(options={"init": np.asarray(s0, dtype=np.float64).tolist(), "goal": dict(goal),
                       "instruction": "replay"})
    states = [env.ball_positions().copy()]
    for a in np.asarray(actions).reshape(-1):
        env.apply_action(int(a))
        states.append(env.ball_positions().copy())
    arr = np.asarray(states)
    ok = len(arr) > 1 and is_success(goal, arr[-1], arr[-2], int(np.asarray(actions)[-1]))
    return arr, bool(ok)



def ball_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean distance (m) between the balls of two state sequences, per row."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), NUM_BALLS, 2)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), NUM_BALLS, 2)
    return np.linalg.norm(a - b, axis=-1).mean(-1)
