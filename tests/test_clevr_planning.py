"""CLEVR's vectorised planner hooks against the scalar judge: `batch_successes` must equal
`successes` row by row (boundaries included) and `goal_distance` must be 0 exactly where
`is_success` holds."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from kalm.envs.clevr import expert
from kalm.envs.clevr.constants import (
    CIRCLE_RADIUS,
    COLOR_INDEX,
    COLORS,
    INIT_HIGH,
    INIT_LOW,
    LINE_MAX_ANGLE_DEG,
    NUM_ACTIONS,
    NUM_BALLS,
    OBS_DIM,
    RELATION_DIST,
    RELATION_EPS,
)
from kalm.envs.clevr.definition import CLEVR
from kalm.envs.clevr.goals import is_success, line_pairs, relation_angle, validate_goal
from kalm.envs.clevr.planning import batch_successes, goal_distance


def _suite_goals(level: str, per_signature: int) -> list[dict]:
    """Up to `per_signature` goals of each kind (and sub-goal count) of a built-in suite, spread
    over the file."""
    lines = CLEVR.suite_path(level).read_text().splitlines()
    by_sig: dict[str, list[dict]] = {}
    for line in lines:
        goal = json.loads(line)["goal"]
        sig = goal["kind"] + str(len(goal.get("goals", [])))
        by_sig.setdefault(sig, []).append(goal)
    out = []
    for goals in by_sig.values():
        unique = list({json.dumps(g, sort_keys=True): g for g in goals}.values())
        step = max(1, len(unique) // per_signature)
        out += unique[::step][:per_signature]
    return out


GOALS = (_suite_goals("train", 6) + _suite_goals("rephrase", 3) + _suite_goals("easy", 3)
         + _suite_goals("hard", 2))
RELATION_GOALS = [g for g in GOALS if g["kind"] == "relation"]
STATE_GOALS = [g for g in GOALS if g["kind"] != "push"]


def _gid(goal: dict) -> str:
    if goal["kind"] == "relation":
        return f"relation-{goal['object']}-{goal['reference']}-{goal['direction']}"
    if goal["kind"] == "all":
        return "all-" + "-".join(f"{g['object']}{g['direction']}" for g in goal["goals"])
    return "-".join(str(v) for v in goal.values())


def _random_states(rng: np.random.Generator, *shape: int) -> np.ndarray:
    low, high = np.tile(INIT_LOW, NUM_BALLS), np.tile(INIT_HIGH, NUM_BALLS)
    return rng.uniform(low, high, size=(*shape, OBS_DIM))


def _place(rng: np.random.Generator, **xy: tuple[float, float]) -> np.ndarray:
    s = _random_states(rng)
    for colour, (x, y) in xy.items():
        i = COLOR_INDEX[colour]
        s[2 * i: 2 * i + 2] = x, y
    return s


def _flip(build, judge, lo: float, hi: float) -> list[np.ndarray]:
    """Two states build(a), build(b) with a, b adjacent floats where judge flips."""
    want = judge(build(lo))
    assert judge(build(hi)) != want, "no flip in the bracket"
    while np.nextafter(lo, hi) != hi:
        mid = lo + (hi - lo) / 2
        if mid in (lo, hi):
            break
        if judge(build(mid)) == want:
            lo = mid
        else:
            hi = mid
    a, b = build(lo), build(hi)
    assert judge(a) != judge(b)
    return [a, b]


def _relation_boundaries(rng: np.random.Generator, obj: str, ref: str) -> list[np.ndarray]:
    """The reference at the origin (so deltas are exact) and the object on every edge."""
    def at(x: float, y: float) -> np.ndarray:
        return _place(rng, **{obj: (x, y), ref: (0.0, 0.0)})

    out = [at(x, y) for x, y in [
        (0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2),  # exactly on the diagonals
        (5e-4, 0.3), (-5e-4, -0.3), (0.3, 5e-4), (0.3, -5e-4), (-0.3, 9.99e-4),  # within EPS
        (RELATION_EPS, 0.3), (0.3, -RELATION_EPS), (-RELATION_EPS, -RELATION_EPS),
        (RELATION_EPS, 5e-4), (5e-4, -RELATION_EPS),  # only an exact EPS test gets these right
        (RELATION_DIST, 0.0), (0.0, RELATION_DIST), (-RELATION_DIST, 0.0), (0.0, -RELATION_DIST),
        (np.nextafter(RELATION_DIST, 0), 0.0), (0.0, 0.0), (1e-4, -1e-4),  # coincident
        (0.3, -1e-9), (0.3, 0.0),  # angle 0 / 360 edge
    ]]
    out += _relation_flips(rng, obj, ref, 0.2)
    c, s = math.cos(math.radians(60.0)), math.sin(math.radians(60.0))
    out += _flip(lambda r: at(r * c, r * s),
                 lambda st: float(np.hypot(*_delta(st, obj, ref))) >= RELATION_DIST, 0.38, 0.40)
    return out


def _relation_flips(rng: np.random.Generator, obj: str, ref: str, dx: float) -> list[np.ndarray]:
    """Pairs of states, |delta x| = dx, across the 45, 135, 225 and 315 degree edges."""
    out = []
    for edge, sx, sy in ((45.0, 1, 1), (135.0, -1, 1), (225.0, -1, -1), (315.0, 1, -1)):
        out += _flip(lambda v, x=sx * dx: _place(rng, **{obj: (x, v), ref: (0.0, 0.0)}),
                     lambda s, edge=edge: relation_angle(_delta(s, obj, ref)) >= edge,
                     sy * 0.8 * dx, sy * 1.25 * dx)
    return out


def _delta(s: np.ndarray, obj: str, ref: str) -> np.ndarray:
    i, j = COLOR_INDEX[obj], COLOR_INDEX[ref]
    return s[2 * i: 2 * i + 2] - s[2 * j: 2 * j + 2]


def _line_states(rng: np.random.Generator, order: list[str]) -> list[np.ndarray]:
    """Lines that hold (flat, zig-zag), a step exactly at the 30-degree flip, coincident balls."""
    flat = _place(rng, **{c: (-0.4 + 0.2 * k, 0.1) for k, c in enumerate(order)})
    zigzag = _place(rng, **{c: (-0.4 + 0.2 * k, 0.1 * (k % 2)) for k, c in enumerate(order)})
    together = _place(rng, **{c: (0.0, 0.1) for c in order})
    goal = {"kind": "line", "order": order}
    k = 1  # the step from order[1] to order[2] sits on the edge

    def build(dy: float) -> np.ndarray:
        xy = {c: (-0.2 * (k - j), 0.0) for j, c in enumerate(order[:k + 1])}
        xy[order[k + 1]] = (0.2, dy)
        xy.update({c: (0.2 + 0.2 * j, dy) for j, c in enumerate(order[k + 2:], start=1)})
        return _place(rng, **xy)

    tan = math.tan(math.radians(LINE_MAX_ANGLE_DEG))
    edge = _flip(build, lambda s: line_pairs(goal, s)[k], 0.19 * tan, 0.21 * tan)
    return [flat, zigzag, together, *edge]


def _circle_states(rng: np.random.Generator, centre: str) -> list[np.ndarray]:
    others = [c for c in COLORS if c != centre]
    ring = _place(rng, **{centre: (0.0, 0.2)}, **{
        c: (0.3 * math.cos(k * 1.5), 0.2 + 0.3 * math.sin(k * 1.5)) for k, c in enumerate(others)})
    stacked = _place(rng, **{c: (0.1, 0.1) for c in COLORS})
    on_edge = _place(rng, **{centre: (0.0, 0.0)}, **{
        c: (CIRCLE_RADIUS * (1 - 1e-3 * k), 0.0) for k, c in enumerate(others)})
    c40, s40 = math.cos(math.radians(40)), math.sin(math.radians(40))

    def build(r: float) -> np.ndarray:
        return _place(rng, **{centre: (0.0, 0.0), others[0]: (r * c40, r * s40)},
                      **{c: (0.1, 0.05) for c in others[1:]})

    def member(s: np.ndarray) -> bool:
        i = COLOR_INDEX[others[0]]
        return float(np.hypot(*s[2 * i: 2 * i + 2])) < CIRCLE_RADIUS

    return [ring, stacked, on_edge, *_flip(build, member, 0.32, 0.33)]


def _special_states(goal: dict, rng: np.random.Generator) -> np.ndarray:
    kind = goal["kind"]
    if kind == "relation":
        states = _relation_boundaries(rng, goal["object"], goal["reference"])
    elif kind == "all":
        states = [s for g in goal["goals"] for s in _relation_boundaries(rng, g["object"],
                                                                         g["reference"])]
    elif kind == "line":
        states = _line_states(rng, list(goal.get("order", COLORS)))
    elif kind == "circle":
        states = _circle_states(rng, goal.get("center", "green"))
    else:
        states = []
    return np.array(states).reshape(-1, OBS_DIM)


_STEPPED: list[np.ndarray] = []


def _stepped_episodes() -> np.ndarray:
    """(20, 9, 10) float32 states of real env episodes with random pushes."""
    if not _STEPPED:
        env = CLEVR.make()
        rng = np.random.default_rng(7)
        episodes = []
        for seed in range(20):
            obs, _ = env.reset(seed=seed, options={"goal": {"kind": "line"}})
            states = [obs]
            for _ in range(8):
                obs, *_ = env.step(int(rng.integers(NUM_ACTIONS)))
                states.append(obs)
            episodes.append(np.stack(states))
        env.close()
        _STEPPED.append(np.stack(episodes).astype(np.float32))
    return _STEPPED[0]


def _rollouts(goal: dict, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(observations (N, T+1, 10), actions (N, T)) batches: random, boundary, stepped."""
    rng = np.random.default_rng(seed)
    out = [(_random_states(rng, 60, 6), rng.integers(0, NUM_ACTIONS, (60, 5)))]
    special = _special_states(goal, rng)
    if len(special):
        obs = np.stack([_random_states(rng, len(special)), special], axis=1)
        out.append((obs, rng.integers(0, NUM_ACTIONS, (len(special), 1))))
    stepped = _stepped_episodes()
    out.append((stepped, rng.integers(0, NUM_ACTIONS, stepped.shape[:2])[:, 1:]))
    return out


def _scalar_grid(goal: dict, obs: np.ndarray, acts: np.ndarray) -> np.ndarray:
    return np.stack([CLEVR.successes(goal, o, a) for o, a in zip(obs, acts, strict=True)])


# ----------------------------------------------------------------------------- successes
def test_suite_goals_cover_every_kind():
    kinds = {g["kind"] for g in GOALS}
    assert kinds == {"relation", "push", "all", "line", "circle"}
    assert {len(g["goals"]) for g in GOALS if g["kind"] == "all"} == {2, 3}


@pytest.mark.parametrize("goal", GOALS, ids=_gid)
def test_batch_successes_equal_the_scalar_judge(goal):
    for obs, acts in _rollouts(goal, seed=len(json.dumps(goal))):
        fast = CLEVR.batch_successes(goal, obs, acts)
        assert fast.dtype == bool and fast.shape == acts.shape
        np.testing.assert_array_equal(fast, _scalar_grid(goal, obs, acts))
    checked = validate_goal(goal)
    np.testing.assert_array_equal(batch_successes(checked, obs, acts), fast)


@pytest.mark.parametrize("goal", RELATION_GOALS[:4], ids=_gid)
def test_relation_test_data_hold_and_fail(goal):
    """The parity data must hold somewhere for a wrong vectorisation to show, boundaries too."""
    for obs, acts in _rollouts(goal, seed=1):
        truth = _scalar_grid(goal, obs, acts)
        assert truth.any() and not truth.all()


def test_boundary_states_split_at_the_edges():
    goal = {"kind": "relation", "object": "red", "reference": "blue", "direction": "behind"}
    states = _relation_boundaries(np.random.default_rng(0), "red", "blue")
    truth = [is_success(goal, s) for s in states]
    np.testing.assert_array_equal(goal_distance(goal, np.array(states)) == 0, truth)
    # the flips at 45 and 135 degrees enter "behind"; the radial flip (at 60 degrees) leaves it
    assert truth[-10:-6] == [False, True, False, True]
    assert truth[-2:] == [True, False]


def test_angle_edges_match_to_the_last_bit():
    """numpy's arccos and hypot may differ from math's in the last bit: on states whose angle
    flips sector between adjacent floats, about 2% of them on an AVX-512 machine, the fast path
    alone would disagree with the scalar judge."""
    rng = np.random.default_rng(4)
    goals = [{"kind": "relation", "object": "cyan", "reference": "purple", "direction": d}
             for d in ("behind", "left", "front", "right")]
    states = []
    for dx in rng.uniform(0.05, 0.3, 60):
        states += _relation_flips(rng, "cyan", "purple", dx)
    obs = np.stack([_random_states(rng, len(states)), np.array(states)], axis=1)
    acts = np.zeros((len(states), 1), dtype=int)
    for goal in goals:
        truth = _scalar_grid(goal, obs, acts)
        assert 0 < truth.sum() < len(truth)
        np.testing.assert_array_equal(batch_successes(goal, obs, acts), truth)


def test_non_finite_states_follow_the_scalar_judge():
    rng = np.random.default_rng(3)
    obs = _random_states(rng, 4, 2)
    obs[0, 1, 0] = np.nan
    obs[1, 1, :] = np.nan
    obs[2, 1, 2] = np.inf
    acts = rng.integers(0, NUM_ACTIONS, (4, 1))
    for goal in GOALS:
        np.testing.assert_array_equal(batch_successes(goal, obs, acts),
                                      _scalar_grid(goal, obs, acts))


def test_push_goals_are_judged_on_the_action():
    goal = {"kind": "push", "object": "green", "direction": "left"}
    obs = np.zeros((NUM_ACTIONS, 2, OBS_DIM))
    acts = np.arange(NUM_ACTIONS)[:, None]
    hits = np.flatnonzero(batch_successes(goal, obs, acts)[:, 0])
    assert hits.tolist() == [2 * 8 + 2, 2 * 8 + 5, 2 * 8 + 7]
    np.testing.assert_array_equal(batch_successes(goal, obs, acts[:, :, None]),
                                  batch_successes(goal, obs, acts))
    with pytest.raises(ValueError, match="out of range"):
        batch_successes(goal, obs[:1], np.array([[NUM_ACTIONS]]))


def test_wrong_shapes_raise():
    goal = RELATION_GOALS[0]
    with pytest.raises(ValueError, match="10 coordinates"):
        batch_successes(goal, np.zeros((2, 3, 9)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="10 coordinates"):
        goal_distance(goal, np.zeros((4, 12)))
    with pytest.raises(ValueError, match="actions"):
        batch_successes(goal, np.zeros((2, 3, 10)), np.zeros((2, 3), int))


# ----------------------------------------------------------------------------- distances
@pytest.mark.parametrize("goal", STATE_GOALS, ids=_gid)
def test_distance_is_zero_exactly_where_the_goal_holds(goal):
    rng = np.random.default_rng(11)
    states = np.concatenate([_random_states(rng, 300), _special_states(goal, rng),
                             _stepped_episodes().reshape(-1, OBS_DIM)])
    d = goal_distance(goal, states)
    truth = np.array([is_success(goal, s) for s in states])
    assert d.dtype == np.float64 and d.shape == (len(states),)
    assert np.isfinite(d).all() and (d >= 0).all()
    np.testing.assert_array_equal(d == 0, truth)
    if goal["kind"] in ("line", "circle"):
        assert truth.any()  # the hand-made states hold
        potential = expert.line_potential if goal["kind"] == "line" else expert.circle_potential
        want = [potential(goal, s.reshape(NUM_BALLS, 2)) + 0.01 for s in states[~truth]]
        np.testing.assert_allclose(d[~truth], want, rtol=1e-12, atol=1e-12)


def test_push_distance_is_constant():
    goal = {"kind": "push", "object": "red", "direction": "front"}
    d = goal_distance(goal, np.zeros((3, 4, OBS_DIM)))
    np.testing.assert_array_equal(d, np.ones((3, 4)))


def test_relation_distance_falls_towards_the_target():
    goal = {"kind": "relation", "object": "red", "reference": "blue", "direction": "behind"}
    rng = np.random.default_rng(5)
    start, target = np.array([0.4, -0.1]), np.array([0.0, 0.1 + expert.RELATION_RADIUS])
    path = [_place(rng, red=tuple(start + f * (target - start)), blue=(0.0, 0.1))
            for f in np.linspace(0.0, 1.0, 21)]
    d = goal_distance(goal, np.array(path))
    assert d[0] > 0.3 and d[-1] == 0.0
    moving = d[d > 0]
    assert (np.diff(moving) < 0).all() and (np.diff(d) <= 0).all()
    # a reference against the back wall: the target is off the table, moving it away helps
    walled = _place(rng, red=(0.4, -0.1), blue=(0.0, 0.55))
    freed = _place(rng, red=(0.4, -0.1), blue=(0.0, 0.2))
    assert goal_distance(goal, walled) > goal_distance(goal, freed) + 0.4


def test_all_distance_adds_the_unmet_sub_goals():
    subs = [{"kind": "relation", "object": "red", "reference": "blue", "direction": "behind"},
            {"kind": "relation", "object": "green", "reference": "blue", "direction": "left"}]
    goal = {"kind": "all", "goals": subs}
    rng = np.random.default_rng(2)
    states = _random_states(rng, 500)
    d = goal_distance(goal, states)
    parts = [goal_distance(g, states) for g in subs]
    want = sum(np.where(p > 0, p + 0.05, 0.0) for p in parts)
    np.testing.assert_allclose(d, want, rtol=1e-12)
    with_push = {"kind": "all", "goals": [*subs, {"kind": "push", "object": "red",
                                                  "direction": "left"}]}
    np.testing.assert_allclose(goal_distance(with_push, states), want + 1.0, rtol=1e-12)


def test_distance_keeps_shapes_and_takes_float32():
    goal = next(g for g in GOALS if g["kind"] == "all")
    obs = _stepped_episodes()  # float32
    d = CLEVR.goal_distance(goal, obs)
    assert d.shape == obs.shape[:2]
    np.testing.assert_array_equal(d, goal_distance(goal, obs.astype(np.float64)))
    one = goal_distance(goal, obs[0, 0])
    assert one.shape == () and float(one) == d[0, 0]
    assert goal_distance(goal, list(map(float, obs[0, 0]))).shape == ()


def test_thousands_of_candidates_are_fast():
    goal = next(g for g in GOALS if g["kind"] == "all" and len(g["goals"]) == 3)
    rng = np.random.default_rng(0)
    obs = _random_states(rng, 1000, 21)  # 21,000 states
    acts = rng.integers(0, NUM_ACTIONS, (1000, 20))
    start = time.perf_counter()
    d = goal_distance(goal, obs)
    ok = batch_successes(goal, obs, acts)
    elapsed = time.perf_counter() - start
    assert d.shape == (1000, 21) and ok.shape == (1000, 20)
    assert elapsed < 2.0, f"{elapsed:.2f} s for 21,000 states"
