"""One reward for real and imagined Meta-World data, computed from the 91-d states alone.

metaworld's dense reward reads hidden simulator values (contact forces, joint angles, the tcp at
reset), so it cannot label imagined states. kalm uses a potential from the state and s0 only:

    phi(s) = 10 * (0.2 * reach(s) + 0.8 * place(s))
    place  = clip(1 - d(s) / d(s0)),  d: the task's success distance (goals.CHECKS)
    reach  = clip(1 - |tcp - key(s)| / |tcp0 - key(s0)|),  key: the entity the task moves

with KALM's shaping on top: r_t = phi(s_t+1) - phi(s_t), and 10 on the success step. Composites
count half per stage: 0.5 * phi_1 until stage 1 has held, then 5 + 0.5 * phi_2. The env pays these
rewards step by step through `RewardTracker`, and `episode_rewards` runs the same tracker over a
stored episode, so both are one function of the states.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from kalm.envs.metaworld.constants import (
    ENTITY_POS,
    POTENTIAL_SCALE,
    SUCCESS_REWARD,
    TARGET,
)
from kalm.envs.metaworld.goals import (
    BUTTON_FROM_MUG_GOAL,
    CHECKS,
    UNLOCK_FROM_OPEN_TARGET,
    StageTracker,
    as_state,
    goal_task,
)

EPS = 1e-3  # floor of the normalising distances (a start already at the target)
REACH_WEIGHT = 0.2


def _key_entity(task: str) -> str | None:
    """The entity the gripper has to reach (None: the target itself, for reach tasks)."""
    return "hammer" if task == "hammer" else CHECKS[task].entity


def _stage_terms(task: str, stage: int):
    """(distance, key entity) of one stage of a composite."""
    if task == "make-coffee":
        if stage == 0:
            return CHECKS["coffee-push"].error, "coffee"
        return (lambda s: abs(s[TARGET][1] + BUTTON_FROM_MUG_GOAL[1]
                              - s[ENTITY_POS["coffee_button"]][1])), "coffee_button"
    if stage == 0:
        return (lambda s: abs(s[TARGET][0] + UNLOCK_FROM_OPEN_TARGET[0]
                              - s[ENTITY_POS["lock"]][0])), "lock"
    return CHECKS["door-open"].error, "handle"


class _Potential:
    """phi of one (sub)task, normalised by its distances in s0."""

    def __init__(self, distance, key: str | None, s0: np.ndarray) -> None:
        self.distance, self.key = distance, key
        self._key_start = ENTITY_POS[key].start if key is not None else 0
        self.d0 = max(distance(s0), EPS)
        self.r0 = max(self._reach_distance(s0), EPS) if key is not None else None

    def _reach_distance(self, s) -> float:
        k = self._key_start  # the tcp, s[0:3], to the key entity (scalar arithmetic: see
        dx, dy, dz = s[0] - s[k], s[1] - s[k + 1], s[2] - s[k + 2]  # goals.Check.error)
        return math.sqrt(dx * dx + dy * dy + dz * dz)

    def __call__(self, s: np.ndarray) -> float:
        place = min(1.0, max(0.0, 1.0 - self.distance(s) / self.d0))
        if self.key is None:
            reach = place
        else:
            reach = min(1.0, max(0.0, 1.0 - self._reach_distance(s) / self.r0))
        return POTENTIAL_SCALE * (REACH_WEIGHT * reach + (1.0 - REACH_WEIGHT) * place)


class RewardTracker:
    """Rewards and the ordered success judge of one episode, one transition at a time."""

    def __init__(self, goal: Mapping[str, Any], s0: np.ndarray) -> None:
        s0 = as_state(s0, "s0")
        self.task = goal_task(goal)
        self.judge = StageTracker(goal, s0)
        if self.task in CHECKS:
            self.parts = [_Potential(CHECKS[self.task].error, _key_entity(self.task), s0)]
        else:
            self.parts = [_Potential(*_stage_terms(self.task, k), s0) for k in (0, 1)]
        self.phi = self._phi(s0)

    def _phi(self, s: np.ndarray) -> float:
        if len(self.parts) == 1:
            return self.parts[0](s)
        if not self.judge.stage1:
            return 0.5 * self.parts[0](s)
        return 0.5 * POTENTIAL_SCALE + 0.5 * self.parts[1](s)

    def step(self, s: np.ndarray, checked: bool = False) -> tuple[float, bool]:
        """(reward, success) of the transition into state `s` (`checked`: a float64 (91,)
        state the env built itself, so validation is skipped)."""
        if not checked:
            s = as_state(s)
        if len(self.parts) == 1:
            s = s.tolist()  # native judges and potentials index scalars (see Check.error)
        success = self.judge.update(s)
        phi = self._phi(s)
        reward = SUCCESS_REWARD if success else phi - self.phi
        self.phi = phi
        return float(reward), bool(success)


def episode_rewards(goal: Mapping[str, Any], observations: np.ndarray,
                    actions: np.ndarray | None = None) -> np.ndarray:
    """(T,) rewards of an episode (observations has one row more than the actions)."""
    obs = np.asarray(observations, dtype=np.float64)
    if obs.ndim != 2 or len(obs) < 1:
        raise ValueError(f"observations must have shape (T+1, 91), got {obs.shape}")
    if actions is not None and len(actions) != len(obs) - 1:
        raise ValueError(f"observations has {len(obs)} rows, so actions must have "
                         f"{len(obs) - 1}, got {len(actions)}")
    tracker = RewardTracker(goal, obs[0])
    out = np.zeros(len(obs) - 1, dtype=np.float32)
    for t in range(len(out)):
        out[t] = tracker.step(obs[t + 1])[0]
    return out
