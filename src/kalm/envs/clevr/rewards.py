"""Rewards per goal kind, shared by real and imagined data so both are labelled identically.

- relation: 10 x the decrease of the distance from the object ball to the point 0.195 beyond the
  reference ball in the goal direction (the shaping of KALM's real data); 100 on the success step
  (replacing the shaping term, as in that data).
- all / line / circle: 10 x the change in the number of satisfied sub-conditions; 100 on success.
- push: 100 on success, else 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import (
    COLOR_INDEX,
    DIRECTION_VECTORS,
    REWARD_TARGET_OFFSET,
    SHAPING_SCALE,
    SUCCESS_REWARD,
)
from kalm.envs.clevr.goals import is_success, satisfied_parts


def relation_target_distance(goal: Mapping[str, Any], state: np.ndarray) -> float:
    a, b = COLOR_INDEX[goal["object"]], COLOR_INDEX[goal["reference"]]
    target = state[2 * b : 2 * b + 2] + REWARD_TARGET_OFFSET * DIRECTION_VECTORS[goal["direction"]]
    return float(np.hypot(*(state[2 * a : 2 * a + 2] - target)))


def reward(
    goal: Mapping[str, Any],
    prev_state: Sequence[float] | np.ndarray,
    state: Sequence[float] | np.ndarray,
    action: int | None = None,
    success: bool | None = None,
) -> float:
    """Reward of the transition prev_state --action--> state under `goal`."""
    prev = np.asarray(prev_state, dtype=np.float64).reshape(-1)
    cur = np.asarray(state, dtype=np.float64).reshape(-1)
    if success is None:
        success = is_success(goal, cur, prev, action)
    if success:
        return SUCCESS_REWARD
    kind = goal["kind"]
    if kind == "push":
        return 0.0
    if kind == "relation":
        return SHAPING_SCALE * (
            relation_target_distance(goal, prev) - relation_target_distance(goal, cur)
        )
    before = sum(satisfied_parts(goal, prev, action))
    after = sum(satisfied_parts(goal, cur, action))
    return SHAPING_SCALE * float(after - before)


def episode_rewards(
    goal: Mapping[str, Any], observations: np.ndarray, actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and terminal flags of an episode (observations has one row more than actions)."""
    n = len(actions)
    rewards = np.zeros(n, dtype=np.float32)
    terminals = np.zeros(n, dtype=bool)
    for t in range(n):
        ok = is_success(goal, observations[t + 1], observations[t], int(actions[t]))
        rewards[t] = reward(goal, observations[t], observations[t + 1], int(actions[t]), ok)
        terminals[t] = ok
    return rewards, terminals
