"""CLEVR goal vectors of KALM's published data -> kalm goal dicts (`kalm import`).

KALM's files store a goal as a vector of whole numbers (docs/datasets.md):

- relation (training and rephrase levels), 6 entries: entries 0-4 are one per ball in colour
  order, 1 on the ball to move, 2 on the reference ball, 0 elsewhere; entry 5 is the direction
  (0 behind, 1 left, 2 front, 3 right);
- push (unseen easy), 6 entries: a 1 on the ball to move, 0 elsewhere; entry 5 the direction
  (4, "stay still", has no kalm goal and is refused);
- hard (unseen hard): entry 5 is the task type, 0 two relations at once, 1 three (their
  6-entry relation vectors follow from entry 6 on), 2 the five balls in a line from left to
  right in colour order, 3 the other balls gathered around the green one; entries 0-4 are not
  read.

A 6-entry vector alone cannot always tell a hard goal from the others, so the level the file
holds may be given (`kalm import --level`); without it the kind is read from the entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import COLORS, GOAL_DIRECTIONS, NUM_BALLS

# level names of KALM's and ImagineBench's code, and kalm's -> the kind of goal vector
_LEVEL_KIND = {
    **dict.fromkeys(("train", "real", "baseline", "rephrase", "rephrase_level", "tau_level"),
                    "relation"),
    **dict.fromkeys(("easy", "easy_level", "step_level"), "push"),
    **dict.fromkeys(("hard", "hard_level", "task_level"), "hard"),
}
_STILL = 4
_TAU_2, _TAU_3, _ORDER, _SORT = 0, 1, 2, 3


def _whole(vector: Any) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.size < NUM_BALLS + 1:
        raise ValueError(f"a CLEVR goal vector has at least {NUM_BALLS + 1} entries, got "
                         f"{v.size}")
    if not np.all(np.isfinite(v)) or not np.all(v == np.round(v)):
        raise ValueError(f"a CLEVR goal vector holds whole numbers, got {v.tolist()}")
    return v.astype(np.int64)


def _direction(value: int, where: str) -> str:
    if value == _STILL:
        raise ValueError(f"{where}: direction 4 ('stay still') has no kalm goal")
    if not 0 <= value < len(GOAL_DIRECTIONS):
        raise ValueError(f"{where}: direction {value} is not one of 0-3 "
                         f"({', '.join(GOAL_DIRECTIONS)})")
    return GOAL_DIRECTIONS[value]


def _relation(six: np.ndarray) -> dict[str, Any]:
    flags = six[:NUM_BALLS]
    movers, references = np.flatnonzero(flags == 1), np.flatnonzero(flags == 2)
    if len(movers) != 1 or len(references) != 1 or np.count_nonzero(flags) != 2:
        raise ValueError(f"relation vector {six.tolist()}: entries 0-4 need exactly one 1 (the "
                         "ball to move) and one 2 (the reference ball)")
    return {"kind": "relation", "object": COLORS[int(movers[0])],
            "reference": COLORS[int(references[0])],
            "direction": _direction(int(six[NUM_BALLS]), f"relation vector {six.tolist()}")}


def _push(six: np.ndarray) -> dict[str, Any]:
    flags = six[:NUM_BALLS]
    movers = np.flatnonzero(flags == 1)
    if len(movers) != 1 or np.count_nonzero(flags) != 1:
        raise ValueError(f"push vector {six.tolist()}: entries 0-4 need exactly one 1 (the ball "
                         "to move) and zeros")
    return {"kind": "push", "object": COLORS[int(movers[0])],
            "direction": _direction(int(six[NUM_BALLS]), f"push vector {six.tolist()}")}


def _hard(v: np.ndarray) -> dict[str, Any]:
    kind = int(v[NUM_BALLS])
    width = NUM_BALLS + 1
    if kind in (_TAU_2, _TAU_3):
        parts = 2 if kind == _TAU_2 else 3
        if v.size < width * (parts + 1):
            raise ValueError(f"hard vector of type {kind} ({parts} relations) needs "
                             f"{width * (parts + 1)} entries, got {v.size}")
        return {"kind": "all", "goals": [_relation(v[width * (k + 1): width * (k + 2)])
                                          for k in range(parts)]}
    if kind == _ORDER:
        return {"kind": "line", "order": list(COLORS)}
    if kind == _SORT:
        return {"kind": "circle", "center": "green"}
    raise ValueError(f"hard vector: entry 5 (the task type) is {kind}, not 0-3")


def _infer_kind(v: np.ndarray) -> str:
    if v.size > NUM_BALLS + 1:
        return "hard"
    nonzero = sorted(int(x) for x in v[:NUM_BALLS] if x)
    if nonzero == [1, 2]:
        return "relation"
    if nonzero == [1]:
        return "push"
    if not nonzero and int(v[NUM_BALLS]) in (_ORDER, _SORT):
        return "hard"
    raise ValueError(f"cannot tell which kind of goal vector {v.tolist()} is; give the level "
                     "the file holds (kalm import --level train|rephrase|easy|hard)")


def goal_from_vector(vector: Any, level: str | None = None) -> dict[str, Any]:
    """The kalm goal dict of one KALM goal vector; ValueError naming what is wrong."""
    v = _whole(vector)
    if level is not None and level not in _LEVEL_KIND:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(_LEVEL_KIND)}")
    kind = _LEVEL_KIND[level] if level is not None else _infer_kind(v)
    if kind == "relation":
        return _relation(v[: NUM_BALLS + 1])
    if kind == "push":
        return _push(v[: NUM_BALLS + 1])
    return _hard(v)


def published_goal(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `published_goal` hook of CLEVR: goal vectors only (task names do not occur)."""
    vector = record.get("vector")
    if vector is None:
        return None
    return goal_from_vector(vector, record.get("level"))
