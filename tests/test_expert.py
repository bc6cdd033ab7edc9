"""Scripted CLEVR expert: solves fixed scenes, never disturbs the simulator it looks ahead on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kalm.envs.base import RandomAgent
from kalm.envs.clevr.constants import COLORS, GOAL_DIRECTIONS
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.expert import ExpertPolicy
from kalm.envs.clevr.goals import is_success, max_steps

# Corners far from the action, for the balls a scene does not use.
_FAR = [
    (-0.42, 0.52),
    (0.42, 0.52),
    (-0.42, -0.12),
    (0.42, -0.12),
    (0.0, -0.14),
    (0.0, 0.54),
    (-0.42, 0.2),
    (0.42, 0.2),
]


def _scene(**balls: tuple[float, float]) -> list[float]:
    """10 floats: the named balls where given, the others in free corners."""
    free = iter(
        p for p in _FAR if all(np.hypot(p[0] - x, p[1] - y) > 0.3 for x, y in balls.values())
    )
    out: list[float] = []
    for c in COLORS:
        out.extend(balls[c] if c in balls else next(free))
    return out


def _relation(obj: str, ref: str, direction: str) -> dict[str, Any]:
    return {"kind": "relation", "object": obj, "reference": ref, "direction": direction}


def _run(
    env: CLEVRRobotEnv,
    goal: dict[str, Any],
    init: list[float] | None = None,
    seed: int = 0,
    lookahead: bool = True,
    limit: int = 50,
) -> tuple[bool, int]:
    options: dict[str, Any] = {"goal": goal, "instruction": "test"}
    if init is not None:
        options["init"] = init
    env.reset(seed=seed, options=options)
    expert = ExpertPolicy(env, lookahead=lookahead)
    for t in range(1, limit + 1):
        _, _, done, _, info = env.step(expert.act(env.goal))
        if done:
            return bool(info["is_success"]), t
    return False, limit


@pytest.fixture(scope="module")
def env() -> CLEVRRobotEnv:
    return CLEVRRobotEnv()


FIXED_SCENES = [
    # The object must go round the reference (it starts on the opposite side).
    (_relation("red", "blue", "behind"), _scene(red=(0.0, -0.1), blue=(0.0, 0.25))),
    (_relation("green", "purple", "left"), _scene(green=(0.3, 0.2), purple=(-0.05, 0.2))),
    # A third ball sits between the object and its target.
    (
        _relation("cyan", "red", "right"),
        _scene(cyan=(-0.4, 0.2), blue=(-0.02, 0.2), red=(0.1, 0.5)),
    ),
    # Far apart, diagonal approach.
    (_relation("purple", "green", "front"), _scene(purple=(0.4, 0.5), green=(-0.3, 0.2))),
    # Already close: a single small correction, no overshoot.
    (_relation("blue", "cyan", "right"), _scene(blue=(0.15, 0.45), cyan=(-0.2, 0.2))),
]


@pytest.mark.parametrize(("goal", "init"), FIXED_SCENES)
def test_expert_solves_fixed_relation_scenes(env: CLEVRRobotEnv, goal: dict, init: list) -> None:
    ok, steps = _run(env, goal, init)
    assert ok, f"not solved in 50 steps: {goal}"
    assert steps <= 15


@pytest.mark.parametrize("direction", GOAL_DIRECTIONS)
def test_reference_against_a_wall(env: CLEVRRobotEnv, direction: str) -> None:
    """The target beyond the reference is off the table: the reference must be moved first."""
    wall = {
        "behind": (0.0, 0.566),
        "front": (0.0, -0.166),
        "left": (-0.466, 0.2),
        "right": (0.466, 0.2),
    }[direction]
    obj = (0.0, 0.1) if direction in ("behind", "front") else (0.1, 0.2)
    goal = _relation("red", "blue", direction)
    ok, _ = _run(env, goal, _scene(red=obj, blue=wall))
    assert ok


def test_reference_in_a_corner(env: CLEVRRobotEnv) -> None:
    goal = _relation("green", "blue", "left")
    ok, _ = _run(env, goal, _scene(blue=(-0.466, 0.566), green=(-0.1, 0.2)))
    assert ok


@pytest.mark.parametrize("seed", range(3))
def test_random_scene_from_the_paper_box(env: CLEVRRobotEnv, seed: int) -> None:
    """Default reset: balls may start inside a wall and get ejected on the first push."""
    env.reset(seed=seed, options={"instruction": "test"})
    ok, _ = _run(env, dict(env.goal), seed=seed)
    assert ok


def test_push_goal_is_solved_in_one_step(env: CLEVRRobotEnv) -> None:
    for i, colour in enumerate(COLORS):
        direction = GOAL_DIRECTIONS[i % 4]
        goal = {"kind": "push", "object": colour, "direction": direction}
        ok, steps = _run(env, goal, seed=i)
        assert ok and steps == 1


def test_heuristic_without_lookahead(env: CLEVRRobotEnv) -> None:
    goal = _relation("purple", "green", "front")
    ok, _ = _run(env, goal, _scene(purple=(0.4, 0.5), green=(-0.3, 0.2)), lookahead=False)
    assert ok


def test_lookahead_restores_the_simulator_state_exactly(env: CLEVRRobotEnv) -> None:
    """Balls are still rolling after a push; act() must leave qpos, qvel and the solver state
    bit-identical, so that the episode is the same as without the expert looking ahead."""
    goal = _relation("red", "blue", "behind")
    env.reset(
        seed=1,
        options={
            "goal": goal,
            "instruction": "test",
            "init": _scene(red=(0.0, -0.1), blue=(0.0, 0.25)),
        },
    )
    env.step(8)  # blue rolls right
    expert = ExpertPolicy(env, stuck_patience=0)  # also exercise the beam search
    for _ in range(3):
        before = (
            env.data.qpos.copy(),
            env.data.qvel.copy(),
            env.data.qacc_warmstart.copy(),
            env.data.ctrl.copy(),
            env.data.time,
        )
        assert np.abs(before[1]).max() > 0.1
        action = expert.act(goal)
        after = (
            env.data.qpos,
            env.data.qvel,
            env.data.qacc_warmstart,
            env.data.ctrl,
            env.data.time,
        )
        for x, y in zip(before, after, strict=True):
            np.testing.assert_array_equal(x, y)
        env.step(action)


def test_lookahead_prediction_matches_the_real_step(env: CLEVRRobotEnv) -> None:
    """When the expert returns a push that succeeds in lookahead, the real step succeeds."""
    goal = _relation("blue", "cyan", "right")
    env.reset(
        seed=0,
        options={
            "goal": goal,
            "instruction": "test",
            "init": _scene(blue=(0.15, 0.45), cyan=(-0.2, 0.2)),
        },
    )
    expert = ExpertPolicy(env)
    with expert._lookahead() as run:
        predicted = {a: run(expert._root, a).copy() for a in range(40)}
    for a in (0, 9, 17, 33):
        snapshot = env.get_sim_state()
        warm = env.data.qacc_warmstart.copy()
        env.apply_action(a)
        np.testing.assert_array_equal(env.ball_positions().reshape(5, 2), predicted[a])
        env.set_sim_state(snapshot)
        env.data.qacc_warmstart[:] = warm
    assert is_success(goal, predicted[expert.act(goal)].reshape(-1))


def test_expert_is_deterministic() -> None:
    runs = []
    for _ in range(2):
        e = CLEVRRobotEnv()
        e.reset(seed=5, options={"instruction": "test"})
        expert = ExpertPolicy(e)
        actions = []
        for _ in range(6):
            a = expert.act(e.goal)
            actions.append(a)
            if e.step(a)[2]:
                break
        runs.append(actions)
    assert runs[0] == runs[1]


def test_random_agent_is_reproducible(env: CLEVRRobotEnv) -> None:
    a, b, c = RandomAgent(seed=3), RandomAgent(seed=3), RandomAgent(seed=4)
    goal = _relation("red", "blue", "left")
    for agent in (a, b, c):
        agent.begin(env, goal, "test")
    obs = np.zeros(10, dtype=np.float32)
    xs = [a.act(obs) for _ in range(50)]
    assert xs == [b.act(obs) for _ in range(50)]
    assert xs != [c.act(obs) for _ in range(50)]
    assert all(0 <= x < 40 for x in xs) and len(set(xs)) > 10


@pytest.mark.parametrize(
    "goal",
    [
        {"kind": "line", "order": list(COLORS)},
        {"kind": "circle", "center": "green"},
        {
            "kind": "all",
            "goals": [_relation("red", "blue", "left"), _relation("green", "blue", "behind")],
        },
        {"kind": "all", "goals": [_relation("red", "cyan", "front"), {"kind": "circle"}]},
    ],
)
def test_composite_goals_run(env: CLEVRRobotEnv, goal: dict[str, Any]) -> None:
    """The expert solves every composite goal kind on a seeded scene within the step limit."""
    env.reset(seed=2, options={"goal": goal, "instruction": "test"})
    assert not is_success(env.goal, env.ball_positions())
    expert = ExpertPolicy(env)
    for _ in range(max_steps(env.goal)):
        terminated, truncated = env.step(expert.act(env.goal))[2:4]
        if terminated or truncated:
            break
    assert terminated and is_success(env.goal, env.ball_positions())
