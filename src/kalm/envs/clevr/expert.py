"""Scripted experts for CLEVR-Robot goals, used to collect the offline data and as an upper bound.

`ExpertPolicy` reads the live simulator state of a `CLEVRRobotEnv` and picks one of the 40 push
actions. Its design (spec section 7.2) follows from the dynamics: one push moves a ball about
0.25, roughly one ball diameter, while a relation's success region is a 90-degree slice of the
ring 0.26 <= |A - B| < 0.39 around the reference ball, so a few well-aimed pushes suffice and the
hard cases are obstacles (the reference ball or a third ball on the path) and walls.

With `lookahead=True` (the default) every decision simulates all 40 pushes with the real
dynamics on a copy of the simulator state (about 15 ms), returns at once a push that succeeds,
and otherwise takes the push that most lowers a goal potential:
- relation: angular + radial error of the object around the reference (measured in polar
  coordinates, so going round the reference is downhill), plus a term that pushes the
  reference away from a wall when no target in the success sector fits on the table;
- all: the sum over unsatisfied relations, plus a pull towards a consistent target layout
  (`witness.satisfying_layout`), which gets stronger, then focuses on one ball, then is
  re-planned, each time the search stops making progress;
- line: angle violations plus distance to a 28-degree zig-zag across the full table width;
- circle: distance of the four balls outside a ring around the centre ball.
When no single push makes progress it runs a beam search three pushes deep. The simulator state
(positions, velocities, solver warm start, controls, time) is restored exactly after each
lookahead, so looking ahead never changes the episode. `lookahead=False` gives the plain
geometric heuristic of spec section 7.2 (no simulation).

`ExpertAgent` puts it behind kalm's Policy interface (begin/act) for collection and evaluation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np

from kalm.envs.clevr.constants import (
    CIRCLE_RADIUS,
    COLOR_INDEX,
    COLORS,
    DIRECTION_VECTORS,
    LINE_MAX_ANGLE_DEG,
    NUM_ACTIONS,
    NUM_BALLS,
    NUM_PUSH_DIRECTIONS,
    PUSH_VECTORS,
)
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.goals import is_success, relation_holds

# Where ball centres can rest (measured wall limits on mujoco 3.x, slightly inside TABLE_LOW/HIGH).
BOX_LOW = np.array([-0.466, -0.166])
BOX_HIGH = np.array([0.466, 0.566])
_UNIT_PUSHES = PUSH_VECTORS / np.linalg.norm(PUSH_VECTORS, axis=1, keepdims=True)
# Relation target: this far beyond the reference, the middle of the success ring [0.26, 0.39).
RELATION_RADIUS = 0.31
# The potential aims inside a shrunk success region so that small errors still succeed.
_REL_ANGLE_OK = math.radians(33.0)
_REL_R_LOW, _REL_R_HIGH = 0.28, 0.35
# Directions (offsets from the goal direction) tried when looking for a target inside the box.
_TARGET_OFFSETS = np.radians([0.0, -12.0, 12.0, -24.0, 24.0, -34.0, 34.0])
_WALL_WEIGHT = 2.0
_PROGRESS_EPS = 0.01
_LAYOUT_WEIGHT = 0.3
_LAYOUT_WEIGHT_MAX = 4.8
_FOCUS_OTHERS = 0.2
_FOCUS_GOAL = 0.1


def _angle_between(v: np.ndarray, u: np.ndarray) -> float:
    """Unsigned angle in radians between 2-d vectors v and unit u."""
    n = float(np.hypot(*v))
    if n < 1e-9:
        return math.pi
    return math.acos(max(-1.0, min(1.0, float(v @ u) / n)))


def _rotate(u: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * u[0] - s * u[1], s * u[0] + c * u[1]])


def _box_excess(p: np.ndarray) -> float:
    """Distance of point p outside the reachable box (0 inside)."""
    return float(np.hypot(*(np.clip(p, BOX_LOW, BOX_HIGH) - p)))


def _best_direction(v: np.ndarray) -> int:
    """Index of the push direction best aligned with v."""
    return int(np.argmax(_UNIT_PUSHES @ v))


def relation_target(goal: Mapping[str, Any], pos: np.ndarray) -> tuple[np.ndarray, float]:
    """Target direction (unit) for the object around the reference, and how far outside the box
    the best target lies (0 when some target in the shrunk success sector is reachable)."""
    b = pos[COLOR_INDEX[goal["reference"]]]
    u = DIRECTION_VECTORS[goal["direction"]]
    best_dir, best_excess = u, math.inf
    for off in _TARGET_OFFSETS:
        w = _rotate(u, float(off))
        excess = _box_excess(b + RELATION_RADIUS * w)
        if excess < best_excess - 1e-9:
            best_dir, best_excess = w, excess
        if excess == 0.0:
            break
    return best_dir, best_excess


def relation_potential(goal: Mapping[str, Any], pos: np.ndarray) -> float:
    """How far a relation is from holding: angular and radial error of A around B, plus how far
    B must move away from a wall for the target to become reachable. 0 inside the shrunk region."""
    a, b = pos[COLOR_INDEX[goal["object"]]], pos[COLOR_INDEX[goal["reference"]]]
    w, excess = relation_target(goal, pos)
    d = a - b
    r = float(np.hypot(*d))
    ang = max(0.0, _angle_between(d, w) - (_REL_ANGLE_OK if excess == 0 else 0.0))
    radial = max(0.0, r - _REL_R_HIGH) + max(0.0, _REL_R_LOW - r)
    return RELATION_RADIUS * ang + radial + _WALL_WEIGHT * excess


# ----------------------------------------------------------------------------- line and circle
_LINE_DX = 0.232
_LINE_DY = 0.124


def line_layout(order: Sequence[str], pos: np.ndarray) -> dict[int, np.ndarray]:
    """A zig-zag satisfying the line goal (each step about 0.263 long at about 28 degrees), with
    its vertical position and phase chosen close to the current balls."""
    n = len(order)
    xs = (np.arange(n) - (n - 1) / 2) * _LINE_DX
    idx = [COLOR_INDEX[c] for c in order]
    best: dict[int, np.ndarray] = {}
    best_cost = math.inf
    for phase in (0, 1):
        offs = np.array([(_LINE_DY if (i + phase) % 2 else 0.0) for i in range(n)])
        base = float(np.clip(np.mean(pos[idx, 1] - offs), BOX_LOW[1], BOX_HIGH[1] - _LINE_DY))
        pts = np.stack([xs, base + offs], axis=1)
        cost = float(np.sum(np.hypot(*(pos[idx] - pts).T)))
        if cost < best_cost:
            best_cost = cost
            best = {i: p for i, p in zip(idx, pts, strict=True)}
    return best


def line_potential(goal: Mapping[str, Any], pos: np.ndarray) -> float:
    """Angle violations of the consecutive steps, plus distance to a zig-zag layout (which keeps
    the greedy search out of the many local minima of the angle test alone)."""
    order = goal.get("order", list(COLORS))
    cos_ok = math.cos(math.radians(LINE_MAX_ANGLE_DEG - 2.0))
    viol = 0.0
    for a, b in itertools.pairwise(order):
        d = pos[COLOR_INDEX[b]] - pos[COLOR_INDEX[a]]
        n = float(np.hypot(*d))
        viol += max(0.0, cos_ok - float(d[0]) / max(n, 1e-9))
    layout = line_layout(order, pos)
    dist = sum(float(np.hypot(*(pos[i] - p))) for i, p in layout.items())
    return 2.0 * viol + 0.5 * dist


def circle_potential(goal: Mapping[str, Any], pos: np.ndarray) -> float:
    """Sum over non-centre balls of how far they are outside a ring slightly inside 0.325, plus a
    pull of the centre ball away from the walls so that the ring fits on the table."""
    c = COLOR_INDEX[goal.get("center", "green")]
    out = 0.0
    for i in range(NUM_BALLS):
        if i != c:
            out += max(0.0, float(np.hypot(*(pos[i] - pos[c]))) - (CIRCLE_RADIUS - 0.03))
    ring = CIRCLE_RADIUS - 0.05
    room = np.clip(pos[c], BOX_LOW + ring, BOX_HIGH - ring) - pos[c]
    return out + 0.3 * float(np.hypot(*room))


def goal_potential(
    goal: Mapping[str, Any],
    pos: np.ndarray,
    layout: np.ndarray | None = None,
    layout_weight: float = _LAYOUT_WEIGHT,
) -> float:
    """A non-negative measure of distance to success for relation, all, line and circle goals.

    For `all` goals an optional target `layout` (5 x 2, e.g. a witness layout) adds a weak pull
    of every named ball towards it: the relations' own potentials can pull one ball two ways,
    and the layout picks one consistent arrangement.
    """
    kind = goal["kind"]
    if kind == "relation":
        return 0.0 if relation_holds(goal, pos.reshape(-1)) else relation_potential(goal, pos)
    if kind == "all":
        flat = pos.reshape(-1)
        out = sum(
            0.0 if is_success(g, flat) else goal_potential(g, pos) + 0.05 for g in goal["goals"]
        )
        if layout is not None:
            named = sorted(_named_balls(goal))
            out += layout_weight * float(np.sum(np.hypot(*(pos[named] - layout[named]).T)))
        return out
    if kind == "line":
        return line_potential(goal, pos)
    if kind == "circle":
        return circle_potential(goal, pos)
    raise ValueError(f"no potential for goal kind {kind!r}")


def _named_balls(goal: Mapping[str, Any]) -> set[int]:
    return {COLOR_INDEX[g[k]] for g in goal["goals"] for k in ("object", "reference") if k in g}


# ----------------------------------------------------------------------------- policies
_Snapshot = tuple[np.ndarray, np.ndarray, np.ndarray, float]  # qpos, qvel, warm start, time


class ExpertPolicy:
    """Scripted expert for every CLEVR goal kind (see the module docstring for the design).

    `act(goal)` is deterministic given the simulator state and the episode memory (`reset()`
    clears it). When no single push makes progress, or after `stuck_patience` decisions
    without a new best potential (oscillation), it runs a beam search `beam_depth` pushes deep
    keeping `beam_width` nodes per depth (`beam_depth=1` disables it).
    """

    def __init__(
        self,
        env: CLEVRRobotEnv,
        lookahead: bool = True,
        beam_depth: int = 3,
        beam_width: int = 8,
        stuck_patience: int = 3,
    ) -> None:
        self.env = env
        self.lookahead = lookahead
        self.beam_depth = beam_depth
        self.beam_width = beam_width
        self.stuck_patience = stuck_patience
        self.reset()

    def reset(self) -> None:
        """Forget the per-episode memory (progress tracking, visited layouts, the plan)."""
        self._best_seen = math.inf
        self._no_progress = 0
        self._visited: list[np.ndarray] = []
        self._layout: np.ndarray | None = None
        self._replans = 0
        self._layout_weight = _LAYOUT_WEIGHT
        self._focus: int | None = None

    # ------------------------------------------------------------------ simulator access
    def _positions(self) -> np.ndarray:
        return self.env.ball_positions().reshape(NUM_BALLS, 2).copy()

    def _snapshot(self) -> _Snapshot:
        data = self.env.data
        qpos, qvel = self.env.get_sim_state()
        return qpos, qvel, data.qacc_warmstart.copy(), float(data.time)

    def _restore(self, snap: _Snapshot) -> None:
        data = self.env.data
        self.env.set_sim_state((snap[0], snap[1]))
        data.qacc_warmstart[:] = snap[2]
        data.time = snap[3]

    @contextmanager
    def _lookahead(self) -> Iterator[Callable[[_Snapshot, int], np.ndarray]]:
        """Yield `run(snapshot, action) -> positions`, which simulates one push from a saved
        state (leaving the simulator in the result, ready for `_snapshot`). On exit the live
        state is restored exactly: positions, velocities, controls, solver warm start, time."""
        data = self.env.data
        root = self._snapshot()
        ctrl, act = data.ctrl.copy(), data.act.copy()
        self._root = root

        def run(snap: _Snapshot, action: int) -> np.ndarray:
            self._restore(snap)
            self.env.apply_action(int(action))
            return self._positions()

        try:
            yield run
        finally:
            self._restore(root)
            data.ctrl[:] = ctrl
            data.act[:] = act

    # ------------------------------------------------------------------ entry point
    def act(self, goal: Mapping[str, Any]) -> int:
        """The push to make now for `goal` (a validated goal dict)."""
        kind = goal["kind"]
        if kind == "push":
            ball = COLOR_INDEX[goal["object"]]
            k = _best_direction(DIRECTION_VECTORS[goal["direction"]])
            return ball * NUM_PUSH_DIRECTIONS + k
        pos = self._positions()
        if not self.lookahead:
            return self._heuristic(goal, pos)
        return self._search(goal, pos)

    # ------------------------------------------------------------------ heuristics
    def _heuristic(self, goal: Mapping[str, Any], pos: np.ndarray) -> int:
        """Geometric rule without simulation (spec 7.2 steps 1-3, chained for composite goals)."""
        kind = goal["kind"]
        flat = pos.reshape(-1)
        if kind == "all":
            for g in goal["goals"]:
                if not is_success(g, flat):
                    return self._heuristic(g, pos)
            return 0
        if kind == "relation":
            ia, ib = COLOR_INDEX[goal["object"]], COLOR_INDEX[goal["reference"]]
            w, excess = relation_target(goal, pos)
            target = pos[ib] + RELATION_RADIUS * w
            if excess > 0:
                into_box = np.clip(target, BOX_LOW, BOX_HIGH) - target
                return ib * NUM_PUSH_DIRECTIONS + _best_direction(into_box)
            return ia * NUM_PUSH_DIRECTIONS + _best_direction(target - pos[ia])
        if kind == "circle":
            c = COLOR_INDEX[goal.get("center", "green")]
            far = max(
                (i for i in range(NUM_BALLS) if i != c),
                key=lambda i: float(np.hypot(*(pos[i] - pos[c]))),
            )
            return far * NUM_PUSH_DIRECTIONS + _best_direction(pos[c] - pos[far])
        if kind == "line":
            layout = line_layout(goal.get("order", list(COLORS)), pos)
            i, p = max(layout.items(), key=lambda kv: float(np.hypot(*(pos[kv[0]] - kv[1]))))
            return i * NUM_PUSH_DIRECTIONS + _best_direction(p - pos[i])
        raise ValueError(f"no heuristic for goal kind {kind!r}")

    # ------------------------------------------------------------------ lookahead search
    def _potential(self, goal: Mapping[str, Any], pos: np.ndarray) -> float:
        if self._focus is not None and self._layout is not None:
            dist = np.hypot(*(pos - self._layout).T)
            named = sorted(_named_balls(goal))
            return float(dist[self._focus] + _FOCUS_OTHERS * np.sum(dist[named])) + (
                _FOCUS_GOAL * goal_potential(goal, pos)
            )
        return goal_potential(goal, pos, self._layout, self._layout_weight)

    def _update_layout(self, goal: Mapping[str, Any], pos: np.ndarray, stuck: bool) -> None:
        """For `all` goals, (re)plan a consistent target layout at the first decision and
        whenever the search is stuck (it starts from the current positions, so it moves few
        balls). The planner is seeded with a constant: the expert stays deterministic."""
        if goal["kind"] != "all" or (self._layout is not None and not stuck):
            return
        try:
            from kalm.envs.clevr.witness import satisfying_layout
        except ImportError:  # the planner is optional; the relation potentials still work
            return
        self._best_seen = math.inf
        if stuck and self._layout_weight < _LAYOUT_WEIGHT_MAX:
            # Follow the plan more strictly: leave the relations' local minimum.
            self._layout_weight = min(_LAYOUT_WEIGHT_MAX, 4 * self._layout_weight)
            return
        if stuck and self._focus is None and self._layout is not None:
            # Still stuck: bring the ball farthest from its planned place there first, letting
            # the others be disturbed on the way (a detour the summed potential never takes).
            named = sorted(_named_balls(goal))
            dist = np.hypot(*(pos[named] - self._layout[named]).T)
            self._focus = named[int(np.argmax(dist))]
            return
        self._focus = None
        rng = np.random.default_rng(self._replans)
        layout = satisfying_layout(goal, rng, start=pos.reshape(-1))
        self._replans += 1
        if layout is not None:
            self._layout = np.asarray(layout, dtype=np.float64).reshape(NUM_BALLS, 2)

    def _search(self, goal: Mapping[str, Any], pos: np.ndarray) -> int:
        """Greedy one-push lookahead on the goal potential; a beam search when stuck."""
        stuck = self._no_progress >= self.stuck_patience
        self._update_layout(goal, pos, stuck)
        now = self._potential(goal, pos)
        if now < self._best_seen - _PROGRESS_EPS:
            self._best_seen = now
            self._no_progress = 0
        else:
            self._no_progress += 1
        fallback = self._heuristic(goal, pos)
        order = [fallback] + [a for a in range(NUM_ACTIONS) if a != fallback]
        with self._lookahead() as run:
            level: list[tuple[float, int, _Snapshot]] = []
            for a in order:
                p = run(self._root, a)
                if is_success(goal, p.reshape(-1)):
                    return a
                score = self._potential(goal, p) + self._revisit_penalty(p)
                level.append((score, a, self._snapshot()))
            best_score, best, _ = min(level, key=lambda n: n[0])
            progress = best_score < now - _PROGRESS_EPS
            if (progress and self._no_progress < self.stuck_patience) or self.beam_depth < 2:
                choice = best if progress else fallback
            else:
                choice = self._beam(goal, level, order, run)
        self._visited.append(pos.copy())
        return choice

    def _revisit_penalty(self, pos: np.ndarray) -> float:
        """Discourage returning to a layout seen earlier in the episode (breaks push cycles)."""
        for v in self._visited[-8:]:
            if float(np.max(np.abs(v - pos))) < 0.03:
                return 0.05
        return 0.0

    def _beam(
        self,
        goal: Mapping[str, Any],
        level: list[tuple[float, int, _Snapshot]],
        order: list[int],
        run: Callable[[_Snapshot, int], np.ndarray],
    ) -> int:
        """Beam search over push sequences (the `beam_width` best nodes of each depth, extended
        by all 40 pushes, up to `beam_depth` pushes): the first push of a sequence that succeeds,
        else of the sequence with the lowest potential found at any depth >= 2."""
        best_a, best_v = min(level, key=lambda n: n[0])[1], math.inf
        for _ in range(self.beam_depth - 1):
            frontier = sorted(level, key=lambda n: n[0])[: self.beam_width]
            level = []
            for score, first, snap in frontier:
                for a in order:
                    p = run(snap, a)
                    if is_success(goal, p.reshape(-1)):
                        return first
                    v = self._potential(goal, p) + 0.1 * score
                    level.append((v, first, self._snapshot()))
                    if v < best_v - 1e-12:
                        best_a, best_v = first, v
        return best_a


class ExpertAgent:
    """The scripted expert behind the Policy interface (it reads the live simulator)."""

    name = "expert"

    def __init__(self, lookahead: bool = True) -> None:
        self.lookahead = lookahead
        self._expert = None
        self._env: gym.Env | None = None
        self._goal: Mapping[str, Any] = {}

    def begin(self, env: gym.Env, goal: Mapping[str, Any], instruction: str) -> None:
        if self._expert is None or self._env is not env:
            self._expert = ExpertPolicy(env, lookahead=self.lookahead)
            self._env = env
        self._expert.reset()
        self._goal = goal

    def act(self, obs: np.ndarray) -> int:
        assert self._expert is not None, "begin() must be called before act()"
        return int(self._expert.act(self._goal))


__all__ = [
    "ExpertAgent",
    "ExpertPolicy",
    "circle_potential",
    "goal_potential",
    "line_layout",
    "line_potential",
    "relation_potential",
    "relation_target",
]
