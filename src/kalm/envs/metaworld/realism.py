"""Realism of imagined Meta-World transitions: KALM's four categories, defined on the state.

The paper names the categories (floating in the air, out of the workbench, implausible pose,
exceeding dynamics) without defining them; these definitions are kalm's, with thresholds set
above what real scripted episodes reach (docs/metaworld.md gives the measured maxima and the
same rates on real held-out episodes, the floor). Which entities exist is read from s0 (absent
entities are exact zeros), so no goal is needed.

- floating_in_air: a free object (cube, mug, ball, hammer) above its rest height (its height in
  s0; by 3 cm, the mug and the ball 7 cm, the hammer 5 cm: real ones tip and bounce up to
  5.5 cm) while the gripper is not holding it (tcp further than 6 cm, hammer 15 cm, or the
  gripper open wider than 0.9) and it is not falling (a dropped object descends; a floating one
  does not);
- out_of_workbench: a present entity off the table top (x outside [-0.7, 0.7], y outside
  [0.2, 1.0], z below -0.05) or the tcp outside the arm's reachable box;
- implausible_pose: a unit quaternion whose norm leaves 1 by more than 0.05, an absent entity
  or the window's zero quaternion turning non-zero, a fixed part (button, faucet base,
  coffee-button, wall, nail) rotating, the gripper opening outside [0, 1], an articulated part
  leaving its joint's axis (button and nail move only in y, the window only in x), the wall
  moving;
- exceeding_dynamics: the tcp moving more than 6 cm in one step (real: at most 4.7 cm), an
  object more than 3 cm (real: 1.7 cm), the door handle more than 20 cm (real: 16.5 cm when the
  door swings shut), or the target moving at all (it is fixed within an episode).
"""

from __future__ import annotations

import numpy as np

from kalm.envs.metaworld.constants import (
    ENTITIES,
    ENTITY_POS,
    ENTITY_QUAT,
    ENTITY_SLICE,
    FREE_ENTITIES,
    HAND,
    OPENING,
    STATE_HIGH,
    STATE_LOW,
    TABLE_X,
    TABLE_Y,
    TARGET,
)

CATEGORIES = ("floating_in_air", "out_of_workbench", "implausible_pose", "exceeding_dynamics")
LIFT = {"coffee": 0.07, "soccer": 0.07, "hammer": 0.05}  # tipping raises their centres
LIFT_DEFAULT = 0.03
FALLING = 1e-3  # descending by more than this per step
HOLD_DISTANCE = {"hammer": 0.15}  # the hammer is held by its handle, away from its centre
HOLD_DEFAULT = 0.06
OPEN_GRIPPER = 0.9
TABLE_Z_MIN = -0.05
QUAT_NORM_TOL = 0.05
ZERO_TOL = 0.02
FIXED_ORIENTATION = ("button", "faucet", "coffee_button", "wall", "nail")
ROTATION_TOL = 0.05
OFF_AXIS = {"button": (0, 2), "nail": (0, 2), "window": (1, 2)}  # axes that must not move
OFF_AXIS_TOL = 0.01
MAX_TCP_STEP = 0.06
MAX_OBJECT_STEP = 0.03
MAX_HANDLE_STEP = 0.2
TARGET_TOL = 1e-4
WALL_TOL = 0.01
_TCP_LOW = np.asarray(STATE_LOW)[HAND]
_TCP_HIGH = np.asarray(STATE_HIGH)[HAND]


def present_entities(s0: np.ndarray) -> list[str]:
    """Entities whose block is not all zeros in the start state."""
    return [e for e in ENTITIES if np.any(s0[ENTITY_SLICE[e]] != 0)]


def _floating(s: np.ndarray, prev: np.ndarray, s0: np.ndarray, present: list[str]) -> bool:
    for e in present:
        if e not in FREE_ENTITIES:
            continue
        pos = s[ENTITY_POS[e]]
        if pos[2] <= s0[ENTITY_POS[e]][2] + LIFT.get(e, LIFT_DEFAULT):
            continue
        if pos[2] < prev[ENTITY_POS[e]][2] - FALLING:
            continue
        held = (np.linalg.norm(s[HAND] - pos) <= HOLD_DISTANCE.get(e, HOLD_DEFAULT)
                and s[OPENING] <= OPEN_GRIPPER)
        if not held:
            return True
    return False


def _off_table(s: np.ndarray, present: list[str]) -> bool:
    for e in present:
        x, y, z = s[ENTITY_POS[e]]
        if not (TABLE_X[0] <= x <= TABLE_X[1] and TABLE_Y[0] <= y <= TABLE_Y[1]
                and z >= TABLE_Z_MIN):
            return True
    return bool(np.any(s[HAND] < _TCP_LOW) or np.any(s[HAND] > _TCP_HIGH))


def _implausible(s: np.ndarray, s0: np.ndarray, present: list[str]) -> bool:
    if not 0.0 <= s[OPENING] <= 1.0:
        return True
    for e in ENTITIES:
        block, q, q0 = s[ENTITY_SLICE[e]], s[ENTITY_QUAT[e]], s0[ENTITY_QUAT[e]]
        if e not in present:
            if np.any(np.abs(block) > ZERO_TOL):
                return True
            continue
        if np.linalg.norm(q0) < ZERO_TOL:  # the window reports no orientation
            if np.any(np.abs(q) > ZERO_TOL):
                return True
        elif abs(np.linalg.norm(q) - 1.0) > QUAT_NORM_TOL:
            return True
        if e in FIXED_ORIENTATION and np.linalg.norm(q - q0) > ROTATION_TOL:
            return True
        if e in OFF_AXIS:
            moved = np.abs(s[ENTITY_POS[e]] - s0[ENTITY_POS[e]])[list(OFF_AXIS[e])]
            if np.any(moved > OFF_AXIS_TOL):
                return True
        if e == "wall" and np.linalg.norm(s[ENTITY_POS[e]] - s0[ENTITY_POS[e]]) > WALL_TOL:
            return True
    return False


def _too_fast(s: np.ndarray, prev: np.ndarray, present: list[str]) -> bool:
    if np.linalg.norm(s[HAND] - prev[HAND]) > MAX_TCP_STEP:
        return True
    if np.any(np.abs(s[TARGET] - prev[TARGET]) > TARGET_TOL):
        return True
    for e in present:
        limit = MAX_HANDLE_STEP if e == "handle" else MAX_OBJECT_STEP
        if np.linalg.norm(s[ENTITY_POS[e]] - prev[ENTITY_POS[e]]) > limit:
            return True
    return False


def check_transitions(observations: np.ndarray, actions: np.ndarray) -> dict[str, int]:
    """Unrealistic transitions of one rollout, counted per category (each transition s -> s'
    is judged on s' against s and the start state)."""
    obs = np.asarray(observations, dtype=np.float64)
    if obs.ndim != 2 or obs.shape[1] != len(STATE_LOW):
        raise ValueError(f"observations must have shape (T+1, {len(STATE_LOW)}), "
                         f"got {obs.shape}")
    n = len(np.asarray(actions))
    if n != len(obs) - 1:
        raise ValueError(f"observations has {len(obs)} rows, so actions must have "
                         f"{len(obs) - 1}, got {n}")
    counts = dict.fromkeys(CATEGORIES, 0)
    s0 = obs[0]
    present = present_entities(s0)
    for t in range(n):
        prev, s = obs[t], obs[t + 1]
        if not np.all(np.isfinite(s)):
            counts["implausible_pose"] += 1
            continue
        counts["floating_in_air"] += int(_floating(s, prev, s0, present))
        counts["out_of_workbench"] += int(_off_table(s, present))
        counts["implausible_pose"] += int(_implausible(s, s0, present))
        counts["exceeding_dynamics"] += int(_too_fast(s, prev, present))
    return counts
