"""CLEVR's planner hooks: goal success and a distance to the goal for many states at once.

The planner scores thousands of candidate rollouts per call; the scalar judge in `goals` is
exact but walks one state at a time. These are the same judges in numpy, equal to `is_success`
state by state: the few states within rounding of a boundary (numpy's arccos and hypot may differ
from `math`'s in the last bit) or not finite are judged by the scalar code itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import (
    CIRCLE_RADIUS,
    COLOR_INDEX,
    COLORS,
    DIRECTION_SECTORS,
    DIRECTION_VECTORS,
    LINE_MAX_ANGLE_DEG,
    NUM_ACTIONS,
    NUM_BALLS,
    NUM_PUSH_DIRECTIONS,
    OBS_DIM,
    PUSHES_ALONG,
    RELATION_DIST,
    RELATION_EPS,
    TABLE_HIGH,
    TABLE_LOW,
)
from kalm.envs.clevr.expert import _LINE_DX, _LINE_DY, BOX_HIGH, BOX_LOW, RELATION_RADIUS
from kalm.envs.clevr.goals import GoalError, circle_members, line_pairs, relation_holds

# states this close to a boundary (degrees, metres, cosines) are judged by the scalar code
_ANGLE_DOUBT = 1e-9
_LENGTH_DOUBT = 1e-12
_COS_LINE = math.cos(math.radians(LINE_MAX_ANGLE_DEG))
# goal_distance: added when a goal does not hold, so that only holding states score 0
_NOT_YET = 0.01
_SUBGOAL_NOT_YET = 0.05  # per unmet sub-goal of an `all` goal (as the expert's potential)
_WALL_WEIGHT = 2.0  # how far the relation target lies off the table counts double
_PUSH_DISTANCE = 1.0  # push goals hold on an action, never on a state


def _states(observations: Any) -> np.ndarray:
    obs = np.asarray(observations, dtype=np.float64)
    if obs.ndim == 0 or obs.shape[-1] != OBS_DIM:
        width = obs.shape[-1] if obs.ndim else 0
        raise ValueError(f"a CLEVR state has {OBS_DIM} coordinates (x, y of {NUM_BALLS} balls), "
                         f"got {width} (observations of shape {obs.shape})")
    return obs


def _actions(actions: np.ndarray) -> np.ndarray:
    """Discrete actions as int64, checked as `goals.push_holds` checks them."""
    if actions.dtype.kind in "iub":
        out = actions.astype(np.int64)
    elif actions.dtype.kind == "f":
        if not np.isfinite(actions).all():
            raise ValueError("actions must be finite")
        out = actions.astype(np.int64)  # truncates towards zero, as int() does
    else:
        raise ValueError(f"CLEVR actions are integers, got dtype {actions.dtype}")
    bad = (out < 0) | (out >= NUM_ACTIONS)
    if bad.any():
        raise ValueError(f"action {int(out[bad][0])} out of range [0, {NUM_ACTIONS})")
    return out


def _xy(s: np.ndarray, colour: str) -> tuple[np.ndarray, np.ndarray]:
    i = COLOR_INDEX[colour]
    return s[:, 2 * i], s[:, 2 * i + 1]


def _rescue(holds: np.ndarray, doubt: np.ndarray, s: np.ndarray, judge) -> np.ndarray:
    for i in np.flatnonzero(doubt):
        holds[i] = bool(judge(s[i]))
    return holds


def _relation_holds(goal: Mapping[str, Any], s: np.ndarray) -> np.ndarray:
    """`goals.relation_holds` per row of s (M, 10)."""
    ox, oy = _xy(s, goal["object"])
    rx, ry = _xy(s, goal["reference"])
    dx, dy = ox - rx, oy - ry
    r = np.hypot(dx, dy)
    zx = np.where(np.abs(dx) < RELATION_EPS, 0.0, dx)
    zy = np.where(np.abs(dy) < RELATION_EPS, 0.0, dy)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(zx / (np.hypot(zx, zy) + 1e-6), -1.0, 1.0)
        theta = np.degrees(np.arccos(cos))
    theta = np.where(zy < 0, 360.0 - theta, theta) % 360.0
    sectors = DIRECTION_SECTORS[goal["direction"]]
    in_sector = np.zeros(len(s), dtype=bool)
    for lo, hi in sectors:
        in_sector |= (lo <= theta) & (theta < hi)
    holds = ~(r >= RELATION_DIST) & in_sector
    doubt = ~np.isfinite(r) | ~np.isfinite(theta) | (np.abs(r - RELATION_DIST) < _LENGTH_DOUBT)
    for edge in {0.0, 360.0, *itertools.chain.from_iterable(sectors)}:
        doubt |= np.abs(theta - edge) < _ANGLE_DOUBT
    return _rescue(holds, doubt, s, lambda row: relation_holds(goal, row))


def _line_holds(goal: Mapping[str, Any], s: np.ndarray) -> np.ndarray:
    holds = np.ones(len(s), dtype=bool)
    doubt = np.zeros(len(s), dtype=bool)
    for a, b in itertools.pairwise(goal.get("order", COLORS)):
        (ax, ay), (bx, by) = _xy(s, a), _xy(s, b)
        dx, dy = bx - ax, by - ay
        n = np.hypot(dx, dy)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = dx / np.where(n > 0, n, 1.0)
        holds &= (n > 0) & (cos >= _COS_LINE)
        doubt |= ~np.isfinite(n) | ~np.isfinite(cos) | (np.abs(cos - _COS_LINE) < _LENGTH_DOUBT)
    return _rescue(holds, doubt, s, lambda row: all(line_pairs(goal, row)))


def _circle_holds(goal: Mapping[str, Any], s: np.ndarray) -> np.ndarray:
    centre = goal.get("center", "green")
    cx, cy = _xy(s, centre)
    holds = np.ones(len(s), dtype=bool)
    doubt = np.zeros(len(s), dtype=bool)
    for colour in COLORS:
        if colour != centre:
            x, y = _xy(s, colour)
            r = np.hypot(x - cx, y - cy)
            holds &= r < CIRCLE_RADIUS
            doubt |= ~np.isfinite(r) | (np.abs(r - CIRCLE_RADIUS) < _LENGTH_DOUBT)
    return _rescue(holds, doubt, s, lambda row: all(circle_members(goal, row)))


def _holds(goal: Mapping[str, Any], s: np.ndarray, actions: np.ndarray | None) -> np.ndarray:
    """`is_success(goal, s[i], action=actions[i])` per row (no action: push goals fail)."""
    kind = goal["kind"]
    if kind == "relation":
        return _relation_holds(goal, s)
    if kind == "push":
        if actions is None:
            return np.zeros(len(s), dtype=bool)
        ball, direction = np.divmod(actions, NUM_PUSH_DIRECTIONS)
        along = np.isin(direction, sorted(PUSHES_ALONG[goal["direction"]]))
        return (ball == COLOR_INDEX[goal["object"]]) & along
    if kind == "all":
        out = np.ones(len(s), dtype=bool)
        for sub in goal["goals"]:
            out &= _holds(sub, s, actions)
        return out
    if kind == "line":
        return _line_holds(goal, s)
    if kind == "circle":
        return _circle_holds(goal, s)
    raise GoalError(f"unknown goal kind {kind!r}")


def _has_push(goal: Mapping[str, Any]) -> bool:
    return goal["kind"] == "push" or (
        goal["kind"] == "all" and any(_has_push(g) for g in goal["goals"]))


def batch_successes(goal: Mapping[str, Any], observations: Any, actions: Any) -> np.ndarray:
    """(N, T) success of each step of N rollouts: observations (N, T+1, 10), actions (N, T);
    step t is judged on the move into observations[:, t+1], as `EnvDefinition.successes`."""
    obs = _states(observations)
    acts = np.asarray(actions)
    if acts.ndim == 3 and acts.shape[-1] == 1:
        acts = acts[..., 0]
    if obs.ndim != 3 or acts.shape != (obs.shape[0], obs.shape[1] - 1):
        raise ValueError(f"batch_successes takes observations (N, T+1, {OBS_DIM}) and actions "
                         f"(N, T), got {obs.shape} and {np.shape(actions)}")
    n, t = acts.shape
    flat_actions = _actions(acts.reshape(-1)) if _has_push(goal) else None
    return _holds(goal, obs[:, 1:].reshape(-1, OBS_DIM), flat_actions).reshape(n, t)


# ----------------------------------------------------------------------------- distances
def _relation_distance(goal: Mapping[str, Any], s: np.ndarray) -> np.ndarray:
    """Distance of the object to a point RELATION_RADIUS from the reference in the goal
    direction, clipped to the table, plus twice how far that point lies off the table (the
    reference must first leave the wall)."""
    ox, oy = _xy(s, goal["object"])
    rx, ry = _xy(s, goal["reference"])
    ux, uy = DIRECTION_VECTORS[goal["direction"]]
    tx, ty = rx + RELATION_RADIUS * ux, ry + RELATION_RADIUS * uy
    cx, cy = np.clip(tx, TABLE_LOW[0], TABLE_HIGH[0]), np.clip(ty, TABLE_LOW[1], TABLE_HIGH[1])
    return np.hypot(ox - cx, oy - cy) + _WALL_WEIGHT * np.hypot(cx - tx, cy - ty)


def _line_potential(goal: Mapping[str, Any], s: np.ndarray) -> np.ndarray:
    """`expert.line_potential` per row: angle violations plus distance to the nearer zig-zag."""
    order = list(goal.get("order", COLORS))
    cos_ok = math.cos(math.radians(LINE_MAX_ANGLE_DEG - 2.0))
    viol = np.zeros(len(s))
    for a, b in itertools.pairwise(order):
        (ax, ay), (bx, by) = _xy(s, a), _xy(s, b)
        n = np.hypot(bx - ax, by - ay)
        viol += np.maximum(0.0, cos_ok - (bx - ax) / np.maximum(n, 1e-9))
    idx = [COLOR_INDEX[c] for c in order]
    pos = s.reshape(-1, NUM_BALLS, 2)[:, idx]  # (M, n, 2)
    k = len(order)
    xs = (np.arange(k) - (k - 1) / 2) * _LINE_DX
    best = np.full(len(s), np.inf)
    for phase in (0, 1):
        offs = np.where((np.arange(k) + phase) % 2 == 1, _LINE_DY, 0.0)
        base = np.clip(np.mean(pos[:, :, 1] - offs, axis=1), BOX_LOW[1], BOX_HIGH[1] - _LINE_DY)
        ys = base[:, None] + offs
        cost = np.sum(np.hypot(pos[:, :, 0] - xs, pos[:, :, 1] - ys), axis=1)
        best = np.minimum(best, cost)
    return 2.0 * viol + 0.5 * best


def _circle_potential(goal: Mapping[str, Any], s: np.ndarray) -> np.ndarray:
    """`expert.circle_potential` per row: balls outside a ring around the centre ball, plus a
    pull of the centre away from the walls."""
    c = COLOR_INDEX[goal.get("center", "green")]
    pos = s.reshape(-1, NUM_BALLS, 2)
    out = np.zeros(len(s))
    for i in range(NUM_BALLS):
        if i != c:
            r = np.hypot(*(pos[:, i] - pos[:, c]).T)
            out += np.maximum(0.0, r - (CIRCLE_RADIUS - 0.03))
    ring = CIRCLE_RADIUS - 0.05
    room = np.clip(pos[:, c], BOX_LOW + ring, BOX_HIGH - ring) - pos[:, c]
    return out + 0.3 * np.hypot(*room.T)


def _distance(goal: Mapping[str, Any], s: np.ndarray) -> np.ndarray:
    kind = goal["kind"]
    if kind == "push":
        return np.full(len(s), _PUSH_DISTANCE)
    if kind == "all":
        out = np.zeros(len(s))
        for sub in goal["goals"]:
            d = _distance(sub, s)  # 0 exactly where the sub-goal holds
            out += d if sub["kind"] == "push" else np.where(d > 0, d + _SUBGOAL_NOT_YET, 0.0)
        return out
    potentials = {"relation": _relation_distance, "line": _line_potential,
                  "circle": _circle_potential}
    if kind not in potentials:
        raise GoalError(f"unknown goal kind {kind!r}")
    return np.where(_holds(goal, s, None), 0.0, potentials[kind](goal, s) + _NOT_YET)


def goal_distance(goal: Mapping[str, Any], observations: Any) -> np.ndarray:
    """(...) how far each state of observations (..., 10) is from meeting `goal`, in metres
    (roughly): 0 exactly where `is_success(goal, state)` holds, > 0 elsewhere; a constant 1 for
    push goals, which hold on an action and never on a state."""
    obs = _states(observations)
    flat = obs.reshape(-1, OBS_DIM)
    return _distance(goal, flat).reshape(obs.shape[:-1])
