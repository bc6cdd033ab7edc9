"""Success checks and rewards against hand-computed states on both sides of every boundary."""

import math

import numpy as np
import pytest

from kalm.envs.clevr.goals import GoalError, is_success, validate_goal
from kalm.envs.clevr.rewards import episode_rewards, reward

FAR = {  # parking spots for balls a test does not care about
    "green": (-0.4, 0.5), "purple": (0.4, 0.5), "cyan": (0.0, 0.55),
    "red": (-0.4, -0.1), "blue": (0.4, -0.1),
}
ORDER = ("red", "blue", "green", "purple", "cyan")


def state(**pos):
    full = {**FAR, **pos}
    return np.array([c for name in ORDER for c in full[name]], dtype=np.float64)


def rel(obj, ref, direction):
    return {"kind": "relation", "object": obj, "reference": ref, "direction": direction}


def polar(deg, r=0.33, centre=(0.0, 0.1)):
    t = math.radians(deg)
    return (centre[0] + r * math.cos(t), centre[1] + r * math.sin(t))


@pytest.mark.parametrize(
    ("deg", "expected"),
    [(44.5, "right"), (45.5, "behind"), (134.5, "behind"), (135.5, "left"),
     (224.5, "left"), (225.5, "front"), (314.5, "front"), (315.5, "right"),
     (0.0, "right"), (90.0, "behind"), (180.0, "left"), (270.0, "front")],
)
def test_relation_sectors(deg, expected):
    s = state(red=polar(deg), blue=(0.0, 0.1))
    for direction in ("behind", "left", "front", "right"):
        assert is_success(rel("red", "blue", direction), s) == (direction == expected), direction


@pytest.mark.parametrize(("dist", "ok"), [(0.389, True), (0.391, False), (0.30, True),
                                          (0.45, False)])
def test_relation_distance(dist, ok):
    s = state(red=polar(90, r=dist), blue=(0.0, 0.1))
    assert is_success(rel("red", "blue", "behind"), s) is ok


def test_relation_tiny_components_count_as_zero():
    # dx = 5e-4 is below the judge's 1e-3 cut-off: the angle is exactly 90 degrees (behind)
    s = state(red=(0.0005, 0.4), blue=(0.0, 0.1))
    assert is_success(rel("red", "blue", "behind"), s)


def test_push_judged_on_action():
    g = {"kind": "push", "object": "red", "direction": "right"}
    s = state()
    assert is_success(g, s, action=0)  # red, +x
    assert is_success(g, s, action=4)  # red, +x+y
    assert is_success(g, s, action=6)  # red, +x-y
    assert not is_success(g, s, action=2)  # red, -x
    assert not is_success(g, s, action=1)  # red, +y: no +x component
    assert not is_success(g, s, action=8)  # blue, +x
    assert not is_success(g, s)  # no push yet
    behind = {"kind": "push", "object": "cyan", "direction": "behind"}
    assert {a for a in range(40) if is_success(behind, s, action=a)} == {33, 36, 37}


def line_state(angle_deg, step=0.27):
    t = math.radians(angle_deg)
    pts = {}
    for i, name in enumerate(ORDER):
        sign = 1 if i % 2 else 0  # zig-zag: up, down, up, down
        pts[name] = (-0.5 + i * step * math.cos(t), 0.1 + sign * step * math.sin(t))
    return state(**pts)


@pytest.mark.parametrize(("deg", "ok"), [(29.0, True), (31.0, False), (0.0, True)])
def test_line(deg, ok):
    assert is_success({"kind": "line"}, line_state(deg)) is ok


def test_line_order_matters():
    s = line_state(10.0)
    reversed_order = {"kind": "line", "order": list(reversed(ORDER))}
    assert not is_success(validate_goal(reversed_order), s)


@pytest.mark.parametrize(("r", "ok"), [(0.32, True), (0.33, False)])
def test_circle(r, ok):
    centre = (0.0, 0.2)
    pos = {"green": centre}
    for k, name in enumerate(["red", "blue", "purple", "cyan"]):
        pos[name] = polar(45 + 90 * k, r=0.30, centre=centre)
    pos["cyan"] = polar(315, r=r, centre=centre)
    assert is_success({"kind": "circle", "center": "green"}, state(**pos)) is ok


def test_all_needs_every_subgoal():
    g = {"kind": "all", "goals": [rel("red", "blue", "left"), rel("green", "purple", "front")]}
    s_both = state(red=(-0.3, 0.1), blue=(0.0, 0.1), green=(0.3, -0.1), purple=(0.3, 0.2))
    s_one = state(red=(-0.3, 0.1), blue=(0.0, 0.1), green=(0.3, 0.5), purple=(0.3, 0.2))
    assert is_success(g, s_both)
    assert not is_success(g, s_one)


@pytest.mark.parametrize(
    ("goal", "message"),
    [
        ({"kind": "relation", "object": "pink", "reference": "blue", "direction": "left"},
         "unknown colour 'pink'"),
        ({"kind": "relation", "object": "red", "reference": "blue", "direction": "up"},
         "unknown direction 'up'"),
        ({"kind": "relation", "object": "red", "direction": "left"}, "missing key(s) 'reference'"),
        ({"kind": "relation", "object": "red", "reference": "red", "direction": "left"},
         "object == reference"),
        ({"kind": "spin"}, "unknown goal kind"),
        ({"kind": "push", "object": "red", "direction": "left", "speed": 2}, "unknown key(s)"),
        ({"kind": "all", "goals": []}, "non-empty list"),
        ({"kind": "all", "goals": [{"kind": "push", "object": "red", "direction": "left"}]},
         "goals[0]"),
    ],
)
def test_validate_goal_errors(goal, message):
    with pytest.raises(GoalError) as err:
        validate_goal(goal)
    assert message in str(err.value)


def test_relation_reward_hand_computed():
    g = rel("red", "blue", "left")
    before = state(red=(0.5, 0.0), blue=(0.0, 0.0))
    after = state(red=(0.25, 0.0), blue=(0.0, 0.0))
    # target = blue + 0.195 * (-1, 0) = (-0.195, 0): distance 0.695 -> 0.445
    assert reward(g, before, after, action=2) == pytest.approx(2.5)
    done = state(red=(-0.3, 0.0), blue=(0.0, 0.0))
    assert reward(g, after, done, action=2) == 100.0


def test_count_rewards_for_circle_and_push():
    centre = (0.0, 0.2)
    inside = {name: polar(45 + 90 * k, r=0.30, centre=centre)
              for k, name in enumerate(["red", "blue", "purple", "cyan"])}
    s0 = state(green=centre, **{**inside, "cyan": (0.45, 0.55)})  # three of four inside
    s1 = state(green=centre, **{**inside, "cyan": (0.45, 0.55), "red": (-0.45, -0.15)})  # two
    circle = {"kind": "circle", "center": "green"}
    assert reward(circle, s0, s1) == pytest.approx(-10.0)
    assert reward(circle, s1, s0) == pytest.approx(10.0)
    push = {"kind": "push", "object": "red", "direction": "left"}
    assert reward(push, s0, s1, action=2) == 100.0
    assert reward(push, s0, s1, action=0) == 0.0


def test_episode_rewards_match_step_rewards():
    g = rel("red", "blue", "left")
    obs = np.stack([state(red=(0.5, 0.0), blue=(0.0, 0.0)),
                    state(red=(0.25, 0.0), blue=(0.0, 0.0)),
                    state(red=(-0.3, 0.0), blue=(0.0, 0.0))])
    r, term = episode_rewards(g, obs, np.array([2, 2]))
    assert r.tolist() == pytest.approx([2.5, 100.0])
    assert term.tolist() == [False, True]
