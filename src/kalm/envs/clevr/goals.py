"""Goal dicts for CLEVR-Robot: validation and the success checks of KALM.

A goal is a plain JSON-able dict (the goal-suite format), so the same object travels through
suites, episode files, imagination and evaluation without conversion.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import (
    CIRCLE_RADIUS,
    COLOR_INDEX,
    COLORS,
    DIRECTION_SECTORS,
    GOAL_DIRECTIONS,
    LINE_MAX_ANGLE_DEG,
    MAX_EPISODE_STEPS,
    NUM_ACTIONS,
    NUM_PUSH_DIRECTIONS,
    OBS_DIM,
    PUSH_EPISODE_STEPS,
    PUSHES_ALONG,
    RELATION_DIST,
    RELATION_EPS,
)

GOAL_KINDS = ("relation", "push", "all", "line", "circle")
_KEYS: dict[str, tuple[set[str], set[str]]] = {  # kind -> (required, optional)
    "relation": ({"kind", "object", "reference", "direction"}, set()),
    "push": ({"kind", "object", "direction"}, set()),
    "all": ({"kind", "goals"}, set()),
    "line": ({"kind"}, {"order"}),
    "circle": ({"kind"}, {"center"}),
}


class GoalError(ValueError):
    """A goal dict that does not follow the goal-suite format."""


def _colour(goal: Mapping[str, Any], key: str) -> str:
    value = goal[key]
    if value not in COLOR_INDEX:
        raise GoalError(f"unknown colour {value!r} in {key!r}; expected one of {', '.join(COLORS)}")
    return value


def _direction(goal: Mapping[str, Any]) -> str:
    value = goal["direction"]
    if value not in GOAL_DIRECTIONS:
        raise GoalError(
            f"unknown direction {value!r}; expected one of {', '.join(GOAL_DIRECTIONS)}"
        )
    return value


def validate_goal(goal: Any, *, nested: bool = False) -> dict[str, Any]:
    """Check a goal dict and return a normalised copy (defaults filled in).

    Raises GoalError naming the offending key; callers add file and line.
    """
    if not isinstance(goal, Mapping):
        raise GoalError(f"a goal must be a JSON object, got {type(goal).__name__}")
    kind = goal.get("kind")
    if kind not in GOAL_KINDS:
        raise GoalError(f"unknown goal kind {kind!r}; expected one of {', '.join(GOAL_KINDS)}")
    required, optional = _KEYS[kind]
    missing = sorted(required - set(goal))
    if missing:
        raise GoalError(f"{kind} goal is missing key(s) {', '.join(map(repr, missing))}")
    unknown = sorted(set(goal) - required - optional)
    if unknown:
        raise GoalError(f"{kind} goal has unknown key(s) {', '.join(map(repr, unknown))}")
    out: dict[str, Any] = {"kind": kind}
    if kind == "relation":
        out["object"] = _colour(goal, "object")
        out["reference"] = _colour(goal, "reference")
        if out["object"] == out["reference"]:
            raise GoalError(f"relation goal has object == reference ({out['object']!r})")
        out["direction"] = _direction(goal)
    elif kind == "push":
        out["object"] = _colour(goal, "object")
        out["direction"] = _direction(goal)
    elif kind == "all":
        if nested:
            raise GoalError("'all' goals cannot be nested")
        subs = goal["goals"]
        if not isinstance(subs, list) or len(subs) < 1:
            raise GoalError("'goals' of an 'all' goal must be a non-empty list")
        out["goals"] = []
        for i, sub in enumerate(subs):
            try:
                checked = validate_goal(sub, nested=True)
            except GoalError as exc:
                raise GoalError(f"goals[{i}]: {exc}") from None
            if checked["kind"] == "push":
                raise GoalError(f"goals[{i}]: 'push' goals are judged on one action; not in 'all'")
            out["goals"].append(checked)
    elif kind == "line":
        order = goal.get("order", list(COLORS))
        if not isinstance(order, list) or len(order) < 2:
            raise GoalError("'order' of a line goal must be a list of at least two colours")
        out["order"] = [_colour({"order": c}, "order") for c in order]
        if len(set(out["order"])) != len(out["order"]):
            raise GoalError(f"'order' of a line goal repeats a colour: {out['order']}")
    elif kind == "circle":
        out["center"] = _colour(goal, "center") if "center" in goal else "green"
    return out


def max_steps(goal: Mapping[str, Any]) -> int:
    """Episode length limit for a goal: push goals are one-step tasks."""
    return PUSH_EPISODE_STEPS if goal["kind"] == "push" else MAX_EPISODE_STEPS


def _xy(state: np.ndarray, colour: str) -> np.ndarray:
    i = COLOR_INDEX[colour]
    return state[2 * i : 2 * i + 2]


def relation_angle(delta: np.ndarray) -> float:
    """Angle of (object - reference) in degrees in [0, 360), computed as KALM's judge does."""
    dx, dy = (0.0 if abs(v) < RELATION_EPS else float(v) for v in delta)
    norm = math.hypot(dx, dy)
    theta = math.degrees(math.acos(max(-1.0, min(1.0, dx / (norm + 1e-6)))))
    if dy < 0:
        theta = 360.0 - theta
    return theta % 360.0


def relation_holds(goal: Mapping[str, Any], state: np.ndarray) -> bool:
    delta = _xy(state, goal["object"]) - _xy(state, goal["reference"])
    if float(np.hypot(*delta)) >= RELATION_DIST:
        return False
    theta = relation_angle(delta)
    return any(lo <= theta < hi for lo, hi in DIRECTION_SECTORS[goal["direction"]])


def push_holds(goal: Mapping[str, Any], action: int | None) -> bool:
    if action is None:
        return False
    action = int(action)
    if not 0 <= action < NUM_ACTIONS:
        raise ValueError(f"action {action} out of range [0, {NUM_ACTIONS})")
    ball, direction = divmod(action, NUM_PUSH_DIRECTIONS)
    return ball == COLOR_INDEX[goal["object"]] and direction in PUSHES_ALONG[goal["direction"]]


_COS_LINE = math.cos(math.radians(LINE_MAX_ANGLE_DEG))


def line_pairs(goal: Mapping[str, Any], state: np.ndarray) -> list[bool]:
    """For each consecutive pair of the order: is the step within 30 degrees of +x?"""
    order = goal.get("order", COLORS)
    out = []
    for a, b in itertools.pairwise(order):
        d = _xy(state, b) - _xy(state, a)
        n = float(np.hypot(*d))
        out.append(n > 0 and float(d[0]) / n >= _COS_LINE)
    return out


def circle_members(goal: Mapping[str, Any], state: np.ndarray) -> list[bool]:
    """For each ball other than the centre: is it within 0.325 of the centre ball?"""
    centre = goal.get("center", "green")
    c = _xy(state, centre)
    return [
        float(np.hypot(*(_xy(state, col) - c))) < CIRCLE_RADIUS for col in COLORS if col != centre
    ]


def _as_state(state: Sequence[float] | np.ndarray) -> np.ndarray:
    s = np.asarray(state, dtype=np.float64).reshape(-1)
    if s.shape[0] < OBS_DIM:
        raise ValueError(f"a CLEVR state has {OBS_DIM} coordinates, got {s.shape[0]}")
    return s[:OBS_DIM]


def satisfied_parts(
    goal: Mapping[str, Any], state: Sequence[float] | np.ndarray, action: int | None = None
) -> list[bool]:
    """The sub-conditions of a goal, each True when it holds (used by success and rewards)."""
    s = _as_state(state)
    kind = goal["kind"]
    if kind == "relation":
        return [relation_holds(goal, s)]
    if kind == "push":
        return [push_holds(goal, action)]
    if kind == "all":
        return [all(satisfied_parts(g, s, action)) for g in goal["goals"]]
    if kind == "line":
        return line_pairs(goal, s)
    if kind == "circle":
        return circle_members(goal, s)
    raise GoalError(f"unknown goal kind {kind!r}")


def is_success(
    goal: Mapping[str, Any],
    state: Sequence[float] | np.ndarray,
    prev_state: Sequence[float] | np.ndarray | None = None,
    action: int | None = None,
) -> bool:
    """KALM's success check for `goal` on `state`.

    `push` goals are judged on the action that produced `state` (the action-based judge of
    KALM's easy level); with no action they are not satisfied. `prev_state` is accepted for a
    uniform signature across environments.
    """
    del prev_state
    return all(satisfied_parts(goal, state, action))
