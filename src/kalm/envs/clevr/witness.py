"""Witness layouts: a concrete state in which a goal holds.

They prove that a suite goal is satisfiable and give a scripted expert somewhere to push the
balls to. Layouts keep every centre inside `LOW`..`HIGH` (a margin inside the reachable table)
and every pair of centres at least `MIN_SEP` apart, i.e. clear of contact, so that the state is
a stable resting position. Goals that cannot meet those promises get the least relaxation they
need: relation sets that crowd one sector relax the spacing in `RELAXED_SEPS` steps, and the
line (which needs the full table width and near-touching balls) uses `LINE_LOW`..`LINE_HIGH`
with pairs at least `LINE_MIN_SEP` apart.

Relations are built constructively: a ball is placed at reference + r * (direction rotated by
up to +-35 degrees), r in [0.30, 0.34] (later tries widen both), with random restarts. Sets the
sampler misses (cycles, crowded sectors, chains across the table) go to a batched penalty
descent, first at MIN_SEP and then at each relaxed spacing. Given a start state the layout that
moves the fewest balls the least distance wins, and balls the goal does not name keep their
start positions whenever they are not in the way. The line is a zig-zag/staircase with steps
of 0.2325 in x tilted 28-29.5 degrees; the circle puts the others 0.30-0.32 from the centre.
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
    DIRECTION_VECTORS,
    LINE_MAX_ANGLE_DEG,
    NUM_BALLS,
    OBS_DIM,
    RELATION_DIST,
    TABLE_HIGH,
    TABLE_LOW,
)
from kalm.envs.clevr.goals import is_success, relation_holds, validate_goal

LOW = np.array([-0.45, -0.15])
HIGH = np.array([0.45, 0.55])
MIN_SEP = 0.30
RELAXED_SEPS = (0.29, 0.28, 0.27, 0.262)
# Five near-touching balls need almost the full reachable width (TABLE_LOW/HIGH x = +-0.47).
LINE_LOW = np.array([TABLE_LOW[0], LOW[1]])
LINE_HIGH = np.array([TABLE_HIGH[0], HIGH[1]])
LINE_SPAN = 0.93  # x from -0.465 to 0.465: steps of 0.2325, tilted 28-29.5 degrees
LINE_MIN_SEP = 0.262

RADIUS_RANGE = (0.30, 0.34)
MAX_ANGLE_DEG = 35.0
WIDE_RADIUS_RANGE = (0.30, 0.385)  # for the later tries on crowded relation sets
WIDE_ANGLE_DEG = 44.0
_PLACE_ATTEMPTS = 25
OPT_RESTARTS = 64
OPT_ITERS = 300
OPT_LR = 0.5
OPT_MARGIN = 0.004
_MOVE_EPS = 1e-9

Edge = tuple[str, str, str]  # (object, reference, direction)


def min_pair_distance(state: np.ndarray) -> float:
    """Smallest distance between two ball centres of a state."""
    pts = np.asarray(state, dtype=np.float64)[:OBS_DIM].reshape(NUM_BALLS, 2)
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    return float(d[np.triu_indices(NUM_BALLS, 1)].min())


def layout_ok(
    state: np.ndarray, min_sep: float = MIN_SEP, low: np.ndarray = LOW, high: np.ndarray = HIGH
) -> bool:
    """Are all centres inside [low, high] and all pairs at least `min_sep` apart?"""
    pts = np.asarray(state, dtype=np.float64)[:OBS_DIM].reshape(NUM_BALLS, 2)
    inside = bool(np.all(pts >= low - 1e-12) and np.all(pts <= high + 1e-12))
    return inside and min_pair_distance(state) >= min_sep


def _cost(layout: np.ndarray, start: np.ndarray | None) -> float:
    """Moved balls count first, distance second: the expert should touch few balls."""
    if start is None:
        return 0.0
    moves = np.hypot(*(layout - start).reshape(NUM_BALLS, 2).T)
    return float(np.sum(moves > _MOVE_EPS)) + float(np.sum(moves))


def _rotate(v: np.ndarray, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _clear(p: np.ndarray, placed: Mapping[str, np.ndarray], min_sep: float) -> bool:
    inside = bool(np.all(p >= LOW) and np.all(p <= HIGH))
    return inside and all(float(np.hypot(*(p - q))) >= min_sep for q in placed.values())


def _edges_hold(
    ball: str, p: np.ndarray, placed: Mapping[str, np.ndarray], edges: list[Edge]
) -> bool:
    """Do all relations between `ball` (at p) and already placed balls hold?"""
    state = np.zeros(OBS_DIM)
    for c, q in placed.items():
        state[2 * COLOR_INDEX[c] : 2 * COLOR_INDEX[c] + 2] = q
    state[2 * COLOR_INDEX[ball] : 2 * COLOR_INDEX[ball] + 2] = p
    for obj, ref, direction in edges:
        if ball in (obj, ref) and (obj in placed or ref in placed):
            goal = {"object": obj, "reference": ref, "direction": direction}
            if not relation_holds(goal, state):
                return False
    return True


def _links(ball: str, placed: Mapping[str, np.ndarray], edges: list[Edge]) -> list[Edge]:
    """The relations tying `ball` to balls already placed."""
    return [e for e in edges if ball in e[:2] and (set(e[:2]) - {ball}) <= set(placed)]


def _near(
    rng: np.random.Generator,
    anchor: np.ndarray,
    placed: Mapping[str, np.ndarray],
    min_sep: float,
) -> np.ndarray | None:
    """A clear spot as close to `anchor` as a widening random search finds."""
    p = np.clip(anchor, LOW, HIGH)
    if _clear(p, placed, min_sep):
        return p
    for k in range(80):
        radius = 0.03 + 0.015 * k
        ang = rng.uniform(0.0, 2 * math.pi)
        p = np.clip(anchor + radius * np.array([math.cos(ang), math.sin(ang)]), LOW, HIGH)
        if _clear(p, placed, min_sep):
            return p
    return None


def _relation_try(
    edges: list[Edge],
    rng: np.random.Generator,
    start: np.ndarray | None,
    min_sep: float,
    keep_unnamed: bool,
    wide: bool,
) -> np.ndarray | None:
    named = list(dict.fromkeys(c for e in edges for c in e[:2]))
    unnamed = [c for c in COLORS if c not in named]
    start_pos = None
    if start is not None:
        start_pos = {c: start[2 * COLOR_INDEX[c] : 2 * COLOR_INDEX[c] + 2] for c in COLORS}
    placed: dict[str, np.ndarray] = {}
    if keep_unnamed and start_pos is not None:
        for c in unnamed:
            p = _near(rng, start_pos[c], placed, min_sep)
            if p is None:
                return None
            placed[c] = p
    r_lo, r_hi = WIDE_RADIUS_RANGE if wide else RADIUS_RANGE
    max_angle = WIDE_ANGLE_DEG if wide else MAX_ANGLE_DEG
    todo = list(named)
    while todo:
        linked = [c for c in todo if _links(c, placed, edges)]
        pool = linked or todo
        ball = pool[int(rng.integers(len(pool)))]
        mine = _links(ball, placed, edges)
        spot = None
        # Staying put is tried first: it is free when the relation already holds.
        if start_pos is not None and (mine or rng.random() < 0.8):
            p = np.clip(start_pos[ball], LOW, HIGH)
            if _clear(p, placed, min_sep) and _edges_hold(ball, p, placed, edges):
                spot = p
        for _ in range(_PLACE_ATTEMPTS if spot is None else 0):
            if mine:
                obj, ref, direction = mine[int(rng.integers(len(mine)))]
                step = rng.uniform(r_lo, r_hi) * _rotate(
                    DIRECTION_VECTORS[direction], rng.uniform(-max_angle, max_angle)
                )
                p = placed[ref] + step if ball == obj else placed[obj] - step
            else:
                p = rng.uniform(LOW, HIGH)
            if _clear(p, placed, min_sep) and _edges_hold(ball, p, placed, edges):
                spot = p
                break
        if spot is None:
            return None
        placed[ball] = spot
        todo.remove(ball)
    for c in unnamed:
        if c in placed:
            continue
        anchor = start_pos[c] if start_pos is not None else rng.uniform(LOW, HIGH)
        p = _near(rng, anchor, placed, min_sep)
        if p is None:
            return None
        placed[c] = p
    return np.concatenate([placed[c] for c in COLORS])


def _relation_layout(
    edges: list[Edge],
    goal: Mapping[str, Any],
    rng: np.random.Generator,
    start: np.ndarray | None,
    tries: int,
    min_sep: float,
) -> np.ndarray | None:
    best, best_cost = None, math.inf
    for t in range(tries):
        keep = start is not None and t < (7 * tries) // 10
        wide = t >= tries // 2
        layout = _relation_try(edges, rng, start, min_sep, keep, wide)
        if layout is None or not is_success(goal, layout) or not layout_ok(layout, min_sep):
            continue
        cost = _cost(layout, start)
        if cost < best_cost:
            best, best_cost = layout, cost
        if start is None or best_cost <= _lower_bound(goal, start):
            break
    return best


def _lower_bound(goal: Mapping[str, Any], start: np.ndarray) -> float:
    """A cost no layout beats: 0 if the start already works, else one ball moved a little."""
    return 0.0 if is_success(goal, start) and layout_ok(start) else 1.0 + 1e-3


def _line_layout(
    goal: Mapping[str, Any], rng: np.random.Generator, start: np.ndarray | None
) -> np.ndarray | None:
    """A zig-zag / staircase across the full width with steps tilted about 28 degrees."""
    order = goal["order"]
    n = len(order)
    dx = min(LINE_SPAN / max(n - 1, 1), 0.30)
    tan_max = math.tan(math.radians(LINE_MAX_ANGLE_DEG - 0.5))
    dy_lo = math.sqrt(max(LINE_MIN_SEP**2 + 1e-5 - dx * dx, 0.0))
    dy_hi = dx * tan_max
    if dy_lo > dy_hi:
        return None
    x0 = -dx * (n - 1) / 2.0
    best, best_cost = None, math.inf
    for signs in itertools.product((1.0, -1.0), repeat=n - 1):
        dy = rng.uniform(dy_lo, dy_hi)
        offs = np.concatenate([[0.0], np.cumsum(np.array(signs) * dy)])
        layout = _others_at_start(start)
        if start is not None:
            ys = np.array([start[2 * COLOR_INDEX[c] + 1] for c in order])
            base = float(np.mean(ys - offs))
        else:
            base = rng.uniform(LINE_LOW[1], LINE_HIGH[1])
        base = float(np.clip(base, LINE_LOW[1] - offs.min(), LINE_HIGH[1] - offs.max()))
        if LINE_LOW[1] - offs.min() > LINE_HIGH[1] - offs.max():
            continue
        for k, c in enumerate(order):
            i = COLOR_INDEX[c]
            layout[2 * i : 2 * i + 2] = (x0 + k * dx, base + offs[k])
        if not _place_rest(layout, [c for c in COLORS if c not in order], rng, start):
            continue
        if not is_success(goal, layout) or not layout_ok(layout, LINE_MIN_SEP, LINE_LOW, LINE_HIGH):
            continue
        cost = _cost(layout, start) if start is not None else float(rng.random())
        if cost < best_cost:
            best, best_cost = layout, cost
    return best


def _others_at_start(start: np.ndarray | None) -> np.ndarray:
    return np.array(start[:OBS_DIM], dtype=np.float64) if start is not None else np.zeros(OBS_DIM)


def _place_rest(
    layout: np.ndarray, rest: list[str], rng: np.random.Generator, start: np.ndarray | None
) -> bool:
    """Put the balls a line/circle goal does not name clear of the others (near start)."""
    placed = {
        c: layout[2 * COLOR_INDEX[c] : 2 * COLOR_INDEX[c] + 2] for c in COLORS if c not in rest
    }
    for c in rest:
        i = COLOR_INDEX[c]
        anchor = start[2 * i : 2 * i + 2] if start is not None else rng.uniform(LOW, HIGH)
        p = _near(rng, anchor, placed, MIN_SEP)
        if p is None:
            return False
        placed[c] = p
        layout[2 * i : 2 * i + 2] = p
    return True


def _circle_layout(
    goal: Mapping[str, Any], rng: np.random.Generator, start: np.ndarray | None, tries: int
) -> np.ndarray | None:
    """Ring layouts, plus (given a start) gathering that leaves balls already close alone."""
    best, best_cost = None, math.inf
    for t in range(tries):
        if start is not None and t % 2 == 0:
            layout = _circle_gather(goal, rng, start, first=t == 0)
        else:
            layout = _circle_ring(goal, rng, start)
        if layout is None or not (is_success(goal, layout) and layout_ok(layout)):
            continue
        if start is None:
            return layout
        cost = _cost(layout, start)
        if cost < best_cost:
            best, best_cost = layout, cost
    return best


def _circle_ring(
    goal: Mapping[str, Any], rng: np.random.Generator, start: np.ndarray | None
) -> np.ndarray | None:
    """The other balls evenly spaced on a ring of radius 0.30-0.32 around the centre ball."""
    ci = COLOR_INDEX[goal["center"]]
    others = [c for c in COLORS if c != goal["center"]]
    k = len(others)
    r = rng.uniform(MIN_SEP + 1e-3, CIRCLE_RADIUS - 5e-3)
    angles = rng.uniform(0.0, 2 * math.pi) + 2 * math.pi * np.arange(k) / k
    slots = r * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    lo, hi = LOW - slots.min(axis=0), HIGH - slots.max(axis=0)
    if np.any(lo > hi):
        return None
    anchor = start[2 * ci : 2 * ci + 2] if start is not None else rng.uniform(lo, hi)
    centre = np.clip(anchor, lo, hi)
    layout = np.zeros(OBS_DIM)
    layout[2 * ci : 2 * ci + 2] = centre
    perms = itertools.permutations(range(k)) if start is not None else [tuple(range(k))]
    best, best_cost = None, math.inf
    for perm in perms:
        for j, c in enumerate(others):
            layout[2 * COLOR_INDEX[c] : 2 * COLOR_INDEX[c] + 2] = centre + slots[perm[j]]
        cost = _cost(layout, start)
        if cost < best_cost:
            best, best_cost = layout.copy(), cost
    return best


def _circle_gather(
    goal: Mapping[str, Any], rng: np.random.Generator, start: np.ndarray, first: bool
) -> np.ndarray | None:
    """Keep the centre (or shift it inward) and pull only the far balls in, along their bearing."""
    ci = COLOR_INDEX[goal["center"]]
    s = start.reshape(NUM_BALLS, 2)
    centre = np.clip(s[ci], LOW, HIGH)
    if not first:
        centre = np.clip(
            centre + rng.uniform(0.0, 0.6) * (rng.uniform(LOW, HIGH) - centre), LOW, HIGH
        )
    placed = {goal["center"]: centre}
    others = sorted(
        (c for c in COLORS if c != goal["center"]),
        key=lambda c: float(np.hypot(*(s[COLOR_INDEX[c]] - centre))),
    )
    for c in others:
        p = np.clip(s[COLOR_INDEX[c]], LOW, HIGH)
        off = p - centre
        dist = float(np.hypot(*off))
        if dist < CIRCLE_RADIUS - 5e-3 and _clear(p, placed, MIN_SEP):
            placed[c] = p
            continue
        bearing = math.atan2(off[1], off[0]) if dist > 1e-9 else rng.uniform(0, 2 * math.pi)
        r = rng.uniform(MIN_SEP + 1e-3, CIRCLE_RADIUS - 5e-3)
        for step in range(36):
            turn = math.radians(10.0 * ((step + 1) // 2) * (1 if step % 2 else -1))
            q = centre + r * np.array([math.cos(bearing + turn), math.sin(bearing + turn)])
            if _clear(q, placed, MIN_SEP):
                placed[c] = q
                break
        else:
            return None
    return np.concatenate([placed[c] for c in COLORS])


def _edges(goal: Mapping[str, Any]) -> list[Edge] | None:
    subs = goal["goals"] if goal["kind"] == "all" else [goal]
    if any(g["kind"] != "relation" for g in subs):
        return None
    return [(g["object"], g["reference"], g["direction"]) for g in subs]


def _optimise(
    edges: list[Edge],
    goal: Mapping[str, Any],
    rng: np.random.Generator,
    start: np.ndarray | None,
    min_sep: float,
    restarts: int = OPT_RESTARTS,
    iters: int = OPT_ITERS,
) -> np.ndarray | None:
    """Penalty descent from many starts at once, for relation sets too tight to build.

    Crowded sectors (three balls beside one) and cycles of relations rarely come out of the
    constructive sampler; pushing all balls down the squared constraint violations (relation
    sector and distance, pair spacing) with the bounds as a projection finds them.
    """
    idx = {c: COLOR_INDEX[c] for e in edges for c in e[:2]}
    pos = rng.uniform(LOW, HIGH, size=(restarts, NUM_BALLS, 2))
    movable = np.ones((restarts, NUM_BALLS, 1))
    if start is not None:
        s = np.clip(start.reshape(NUM_BALLS, 2), LOW, HIGH)
        half = restarts // 2
        pos[:half] = s + rng.normal(0.0, 0.03, size=(half, NUM_BALLS, 2))
        unnamed = [i for i in range(NUM_BALLS) if i not in idx.values()]
        pos[:half, unnamed] = s[unnamed]
        movable[:half, unnamed] = 0.0
    pos = np.clip(pos, LOW, HIGH)
    sep = min_sep + OPT_MARGIN
    pairs = list(itertools.combinations(range(NUM_BALLS), 2))
    rel = [
        (
            idx[o],
            idx[r],
            DIRECTION_VECTORS[d],
            np.array([-DIRECTION_VECTORS[d][1], DIRECTION_VECTORS[d][0]]),
        )
        for o, r, d in edges
    ]
    for _ in range(iters):
        grad = np.zeros_like(pos)
        for i, j in pairs:
            delta = pos[:, i] - pos[:, j]
            dist = np.hypot(delta[:, 0], delta[:, 1])[:, None] + 1e-9
            viol = np.maximum(sep - dist, 0.0)
            g = -2.0 * viol * delta / dist
            grad[:, i] += g
            grad[:, j] -= g
        for o, r, v, w in rel:
            delta = pos[:, o] - pos[:, r]
            along, side = delta @ v, delta @ w
            viol_sector = np.maximum(np.abs(side) - along + OPT_MARGIN, 0.0)[:, None]
            g = 2.0 * viol_sector * (np.sign(side)[:, None] * w - v)
            dist = np.hypot(delta[:, 0], delta[:, 1])[:, None] + 1e-9
            viol_dist = np.maximum(dist - (RELATION_DIST - OPT_MARGIN), 0.0)
            g = g + 2.0 * viol_dist * delta / dist
            grad[:, o] += g
            grad[:, r] -= g
        pos = np.clip(pos - OPT_LR * movable * grad, LOW, HIGH)
    best, best_cost = None, math.inf
    for layout in pos.reshape(restarts, OBS_DIM):
        if is_success(goal, layout) and layout_ok(layout, min_sep):
            cost = _cost(layout, start) if start is not None else 0.0
            if cost < best_cost:
                best, best_cost = layout.copy(), cost
    return best


def satisfying_layout(
    goal: Mapping[str, Any],
    rng: np.random.Generator,
    start: np.ndarray | Sequence[float] | None = None,
    tries: int = 200,
) -> np.ndarray | None:
    """A 10-float state in which `goal` holds, or None when none was found.

    Promises (see the module docstring): centres inside LOW..HIGH and pairs >= MIN_SEP apart;
    crowded relation sets may get RELAXED_SEPS, the line LINE_LOW..LINE_HIGH / LINE_MIN_SEP.
    With `start`, the layout moves few balls and stays close to it. Deterministic given `rng`.
    Push goals are judged on an action, not a state: they raise ValueError.
    """
    goal = validate_goal(goal)
    start_arr = None if start is None else np.asarray(start, dtype=np.float64)[:OBS_DIM].copy()
    kind = goal["kind"]
    if kind == "push":
        raise ValueError("push goals are judged on an action; no state satisfies them")
    if kind == "line":
        return _line_layout(goal, rng, start_arr)
    if kind == "circle":
        return _circle_layout(goal, rng, start_arr, tries)
    edges = _edges(goal)
    if edges is None:
        return _mixed_layout(goal, rng, start_arr, tries)
    layout = _relation_layout(edges, goal, rng, start_arr, tries, MIN_SEP)
    if layout is not None:
        return layout
    for min_sep in (MIN_SEP, *RELAXED_SEPS):
        layout = _optimise(edges, goal, rng, start_arr, min_sep)
        if layout is not None:
            return layout
    return None


def _mixed_layout(
    goal: Mapping[str, Any], rng: np.random.Generator, start: np.ndarray | None, tries: int
) -> np.ndarray | None:
    """An `all` goal with a line or circle inside: shape layouts that happen to fit the rest.

    No suite has such a goal; this keeps `satisfying_layout` total over valid goals, so it
    ignores `start`.
    """
    del start
    shapes = [g for g in goal["goals"] if g["kind"] in ("line", "circle")]
    shape = shapes[0]
    for _ in range(max(tries // 10, 1)):
        layout = (
            _line_layout(shape, rng, None)
            if shape["kind"] == "line"
            else _circle_layout(shape, rng, None, 20)
        )
        if layout is not None and is_success(goal, layout):
            return layout
    return None
