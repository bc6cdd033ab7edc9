"""Meta-World goals, judges, rewards, realism and suites: everything that needs no simulator
(these run on the CLEVR-only install too)."""

from __future__ import annotations

import numpy as np
import pytest

from kalm.data.suites import load_builtin_suite
from kalm.envs.base import EnvDefinition, EnvSpecInfo
from kalm.envs.metaworld.constants import ENTITY_POS, ENTITY_QUAT, ENTITY_SLICE, TARGET
from kalm.envs.metaworld.goals import (
    GoalError,
    episode_successes,
    is_success,
    validate_goal,
)
from kalm.envs.metaworld.realism import check_transitions
from kalm.envs.metaworld.rewards import episode_rewards
from kalm.envs.metaworld.tasks import LEVEL_TASKS, TASKS
from kalm.envs.registry import get_env

MAKE_COFFEE = {"kind": "sequence", "task": "make-coffee", "stages": ["coffee-push",
                                                                     "coffee-button"]}


def _pick_place_state() -> np.ndarray:
    s = np.zeros(91)
    s[0:4] = (0.0, 0.6, 0.2, 1.0)
    s[TARGET] = (0.05, 0.85, 0.1)
    s[ENTITY_SLICE["target_object"]] = (0.0, 0.65, 0.02, 0.0, 0.0, 0.0, 1.0)
    return s


def _coffee_state(mug_to_goal: float, button_dy: float) -> np.ndarray:
    s = np.zeros(91)
    s[0:4] = (0.0, 0.6, 0.2, 1.0)
    t = np.array([0.0, 0.72, 0.0])
    s[TARGET] = t
    s[ENTITY_POS["coffee"]] = t + np.array([0.0, -mug_to_goal, 0.0])
    s[ENTITY_QUAT["coffee"]] = (0.0, 0.0, 0.0, 1.0)
    s[ENTITY_POS["coffee_button"]] = t + np.array([0.0, button_dy, 0.3])
    s[ENTITY_QUAT["coffee_button"]] = (1.0, 0.0, 0.0, 0.0)
    return s


# ------------------------------------------------------------------ goal dicts
def test_goal_dicts_of_the_spec_validate():
    assert validate_goal({"kind": "task", "task": "door-open"}) == {"kind": "task",
                                                                    "task": "door-open"}
    assert validate_goal(MAKE_COFFEE) == MAKE_COFFEE
    for task, spec in TASKS.items():
        goal = ({"kind": "sequence", "task": task, "stages": list(spec.stages)}
                if spec.composite else {"kind": "task", "task": task})
        assert validate_goal(goal)["task"] == task


@pytest.mark.parametrize(("goal", "words"), [
    ({"kind": "task", "task": "door-open-v3"}, ["'door-open'", "version suffix"]),
    ({"kind": "task", "task": "fly"}, ["unknown task 'fly'", "reach"]),
    ({"kind": "task", "task": "make-coffee"}, ["composite", "sequence"]),
    ({"kind": "sequence", "task": "make-coffee", "stages": ["coffee-button", "coffee-push"]},
     ["'stages'", "['coffee-push', 'coffee-button']"]),
    ({"kind": "sequence", "task": "reach", "stages": []}, ["unknown task 'reach'"]),
    ({"kind": "task"}, ["missing", "'task'"]),
    ({"kind": "task", "task": "reach", "colour": "red"}, ["unknown key", "'colour'"]),
    ({"kind": "relation"}, ["unknown goal kind"]),
    (["reach"], ["JSON object"]),
])
def test_bad_goal_dicts_name_the_field(goal, words):
    with pytest.raises(GoalError) as err:
        validate_goal(goal)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(("state", "words"), [
    (np.zeros(90), ["(91,)", "(90,)"]),
    (np.full(91, np.nan), ["NaN", "index 0"]),
])
def test_bad_states_are_refused(state, words):
    with pytest.raises(ValueError) as err:
        is_success({"kind": "task", "task": "reach"}, state)
    for w in words:
        assert w in str(err.value)


# ------------------------------------------------------------------ judges and rewards
def test_thresholds_are_metaworlds():
    s = _pick_place_state()
    goal = {"kind": "task", "task": "pick-place"}
    s[ENTITY_POS["target_object"]] = s[TARGET] + (0.069, 0.0, 0.0)
    assert is_success(goal, s)
    s[ENTITY_POS["target_object"]] = s[TARGET] + (0.071, 0.0, 0.0)
    assert not is_success(goal, s)
    assert not is_success({"kind": "task", "task": "push"}, s)  # push needs 0.05


def test_composite_judge_is_ordered():
    # button pressed before the mug arrives, then overshoots: no success; then both hold
    states = [_coffee_state(0.15, 0.0), _coffee_state(0.15, 0.03), _coffee_state(0.0, 0.062),
              _coffee_state(0.0, 0.03), _coffee_state(0.0, 0.03)]
    assert episode_successes(MAKE_COFFEE, np.array(states)).tolist() == [False, False, True,
                                                                         True]
    # stage 1 first, then the press: success at the press
    states = [_coffee_state(0.15, 0.0), _coffee_state(0.0, 0.0), _coffee_state(0.0, 0.03)]
    assert episode_successes(MAKE_COFFEE, np.array(states)).tolist() == [False, True]
    # the per-state form needs both at once
    assert not is_success(MAKE_COFFEE, _coffee_state(0.15, 0.03))
    assert is_success(MAKE_COFFEE, _coffee_state(0.0, 0.03))


def test_decoder_judge_and_labels_agree_on_an_ordered_goal():
    """The mug arrives first, then the button overshoots and comes back: the ordered judge is met
    at step 2 although no state there shows both stages; the decoder's step judge must stop
    there too, or an imagined rollout carries a terminal before its last step."""
    d = get_env("metaworld")
    states = np.array([_coffee_state(0.15, 0.0), _coffee_state(0.0, 0.0),
                       _coffee_state(0.0, 0.062), _coffee_state(0.0, 0.03),
                       _coffee_state(0.0, 0.03)])
    actions = np.zeros((4, 4), np.float32)
    labels = d.successes(MAKE_COFFEE, states, actions)
    per_state = [is_success(MAKE_COFFEE, s) for s in states[1:]]
    assert labels.tolist() != per_state  # the case this guards: the two judges differ
    judge = d.step_judge(MAKE_COFFEE, states[0])
    stepped = [judge(states[t], actions[t], states[t + 1]) for t in range(4)]
    assert stepped == labels.tolist()
    assert d.first_success(MAKE_COFFEE, states, actions) == int(np.argmax(labels))


def test_rewards_telescope_and_pay_the_success_step():
    goal = {"kind": "task", "task": "pick-place"}
    states = [_pick_place_state()]
    for k in range(1, 9):  # the tcp carries the cube to the target
        s = _pick_place_state()
        frac = k / 8
        s[ENTITY_POS["target_object"]] = ((1 - frac) * states[0][ENTITY_POS["target_object"]]
                                          + frac * s[TARGET])
        s[0:3] = s[ENTITY_POS["target_object"]]
        states.append(s)
    obs = np.array(states)
    r = episode_rewards(goal, obs)
    ok = episode_successes(goal, obs)
    first = int(np.argmax(ok))
    assert ok[first] and r[first] == 10.0
    assert np.all(r[:first] > 0)  # progress is rewarded
    # shaping telescopes: the rewards before success sum to phi(s_first) - phi(s0), in (0, 10]
    assert 0.0 < r[:first].sum() <= 10.0
    assert np.allclose(episode_rewards(goal, obs[: first + 2]), r[: first + 1])


def test_labels_use_the_ordered_judge():
    mw = get_env("metaworld")
    states = np.array([_coffee_state(0.15, 0.0), _coffee_state(0.0, 0.0),
                       _coffee_state(0.0, 0.03)])
    rewards, terminals = mw.labels(MAKE_COFFEE, states, np.zeros((2, 4), np.float32))
    assert terminals.tolist() == [False, True] and rewards[1] == 10.0


# ------------------------------------------------------------------ realism
def test_realism_flags_hand_made_unrealistic_transitions():
    s0 = _pick_place_state()

    def moved(**changes) -> np.ndarray:
        s = s0.copy()
        for key, value in changes.items():
            s[ENTITY_POS[key] if key in ENTITY_POS else slice(0, 3)] = value
        return s

    cases = {
        "exceeding_dynamics": moved(target_object=(0.1, 0.65, 0.02)),  # 10 cm in one step
        "floating_in_air": moved(target_object=(0.0, 0.65, 0.07)),  # up 5 cm, gripper far
        "out_of_workbench": moved(target_object=(0.0, 1.2, 0.02)),
    }
    cases["floating_in_air"][0:3] = (0.3, 0.6, 0.3)
    quat = s0.copy()
    quat[ENTITY_QUAT["target_object"]] = (0.0, 0.0, 0.0, 2.0)
    cases["implausible_pose"] = quat
    absent = s0.copy()
    absent[ENTITY_SLICE["hammer"]] = (0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0)
    cases["implausible_pose (absent entity appears)"] = absent
    for name, s in cases.items():
        counts = check_transitions(np.array([s0, s]), np.zeros((1, 4)))
        assert counts[name.split(" ")[0]] == 1, (name, counts)
    s = s0.copy()
    s[0:3] += (0.005, 0.005, -0.005)  # a small real move: nothing flagged
    assert not any(check_transitions(np.array([s0, s]), np.zeros((1, 4))).values())


# ------------------------------------------------------------------ suites
def test_builtin_suites_cover_every_task_and_level():
    mw = get_env("metaworld")
    texts: dict[str, set[str]] = {}
    for level in mw.levels:
        suite = load_builtin_suite(level, mw)
        by_task: dict[str, list[str]] = {}
        for e in suite.entries:
            assert e.level == level
            by_task.setdefault(e.goal["task"], []).append(e.instruction)
        assert set(by_task) == set(LEVEL_TASKS[level])
        for task, lines in by_task.items():
            assert len(set(lines)) >= 20, (level, task)
            if task.endswith("-wall"):
                assert all("wall" in t for t in lines)
            if task == "make-coffee":
                assert all("button" in t for t in lines)
        texts[level] = {e.instruction for e in suite.entries}
    assert not texts["train"] & texts["rephrase"]


def test_check_suite_cli_accepts_the_builtin_files():
    from click.testing import CliRunner

    from kalm.cli import main

    mw = get_env("metaworld")
    for level in mw.levels:
        out = CliRunner().invoke(main, ["check-suite", "--env", "metaworld",
                                        str(mw.suite_path(level))])
        assert out.exit_code == 0, out.output
        assert f"{level}: " in out.output


# ------------------------------------------------------------------ definition
def test_action_bounds_and_policy_options():
    mw = get_env("metaworld")
    assert mw.action_low == (-1.0,) * 4 and mw.action_high == (1.0,) * 4
    assert mw.clip_action([2.0, -3.0, 0.5, 1.0]).tolist() == [1.0, -1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="does not take option"):
        mw.policy("random:noise=0.1")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        mw.policy("expert:noise")
    with pytest.raises(ValueError, match="sigma >= 0 or 'mix'"):
        mw.policy("expert:noise=-1")
    assert mw.policy("expert:noise=mix").noise == "mix"
    with pytest.raises(ValueError, match="action_low has 3 values"):
        EnvDefinition(name="x", spec=EnvSpecInfo("x", 1, "continuous", 4), state_low=[0],
                      state_high=[1], make=dict, validate_goal=dict, is_success=bool,
                      max_steps=len, episode_rewards=len, action_low=[0, 0, 0],
                      action_high=[1, 1, 1])


# the spec's success table (docs/metaworld.md), written out here, independent of goals.CHECKS:
# task -> (entity (None: the tcp), checked axes, threshold, offset added to the entity)
SPEC_TABLE = {
    "reach": (None, "xyz", 0.05, (0, 0, 0)), "reach-wall": (None, "xyz", 0.05, (0, 0, 0)),
    "push": ("target_object", "xyz", 0.05, (0, 0, 0)),
    "pick-place": ("target_object", "xyz", 0.07, (0, 0, 0)),
    "push-wall": ("target_object", "xyz", 0.07, (0, 0, 0)),
    "pick-place-wall": ("target_object", "xyz", 0.07, (0, 0, 0)),
    "button-press": ("button", "y", 0.02, (0, 0, 0)),
    "button-press-wall": ("button", "y", 0.03, (0, 0, 0)),
    "door-unlock": ("lock", "x", 0.02, (0, 0, 0)), "door-lock": ("lock", "z", 0.02, (0, 0, 0)),
    "door-open": ("handle", "x", 0.08, (0, 0, 0)),
    "door-close": ("handle", "xyz", 0.08, (0, 0, 0)),
    "window-open": ("window", "x", 0.05, (0, 0, 0)),
    "window-close": ("window", "x", 0.05, (0, 0, 0)),
    "faucet-open": ("faucet", "xyz", 0.07, (-0.04, 0.0, 0.03)),
    "faucet-close": ("faucet", "xyz", 0.07, (0, 0, 0)),
    "coffee-push": ("coffee", "xyz", 0.07, (0, 0, 0)),
    "coffee-button": ("coffee_button", "y", 0.02, (0, 0, 0)),
    "soccer": ("soccer", "xyz", 0.07, (0, 0, 0)),
}


@pytest.mark.parametrize("task", sorted(SPEC_TABLE))
def test_every_native_threshold_is_the_specs(task):
    entity, axes, thr, offset = SPEC_TABLE[task]
    goal = {"kind": "task", "task": task}
    t = np.array([0.05, 0.7, 0.15])
    direction = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1],
                 "xyz": np.array([2.0, -1.0, 2.0]) / 3.0}[axes]
    where = slice(0, 3) if entity is None else ENTITY_POS[entity]

    def state(distance, elsewhere=0.0):
        s = np.zeros(91)
        s[0:4] = (0.0, 0.6, 0.2, 1.0)
        s[TARGET] = t
        if entity is not None:
            s[ENTITY_QUAT[entity]] = (1.0, 0.0, 0.0, 0.0)
        s[where] = t - np.asarray(offset) + distance * np.asarray(direction, float)
        if axes != "xyz":  # the unchecked axes do not matter
            s[where] += elsewhere * (1 - np.asarray(direction, float))
        return s

    assert is_success(goal, state(0.0))
    assert is_success(goal, state(thr - 0.002)) and is_success(goal, state(-(thr - 0.002)))
    assert not is_success(goal, state(thr + 0.002))
    assert not is_success(goal, state(-(thr + 0.002)))
    if axes != "xyz":
        assert is_success(goal, state(thr - 0.002, elsewhere=0.3))


def test_hammer_needs_the_nail_driven_past_its_travel():
    goal = {"kind": "task", "task": "hammer"}
    s = np.zeros(91)
    s[ENTITY_POS["nail"]] = (0.1, 0.64, 0.1)  # the nail's start
    assert not is_success(goal, s)
    s[ENTITY_POS["nail"].start + 1] = 0.73  # exactly 0.09 in: metaworld's test is strict
    assert not is_success(goal, s)
    s[ENTITY_POS["nail"].start + 1] = 0.7301
    assert is_success(goal, s)


LOCKED_DOOR = {"kind": "sequence", "task": "locked-door-open",
               "stages": ["door-unlock", "door-open"]}


def _door_state(lock_dx: float, angle: float, handle_dx: float | None = None,
                lock_to_handle: float = 0.208) -> np.ndarray:
    """T = the open target; the lock `lock_dx` from the unlock target T + (0.4, ...) in x; the
    door `angle` rad about its hinge (the lock block's quaternion, wxyz); the handle
    `lock_to_handle` from the lock (0.208 locked, 0.14 unlocked), or `handle_dx` from T in x."""
    s = np.zeros(91)
    s[0:4] = (0.0, 0.6, 0.2, 1.0)
    t = np.array([-0.25, 0.35, 0.15])
    s[TARGET] = t
    lock = t + np.array([0.4 + lock_dx, 0.292, 0.061])
    s[ENTITY_POS["lock"]] = lock
    s[ENTITY_QUAT["lock"]] = (np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2))
    handle = lock + np.array([0.0, 0.0, -lock_to_handle])
    if handle_dx is not None:
        handle[0] = t[0] + handle_dx
    s[ENTITY_POS["handle"]] = handle
    s[ENTITY_QUAT["handle"]] = (0.69, -0.15, 0.69, 0.15)
    return s


def test_locked_door_stage_one_needs_the_unlock_target_with_the_door_closed():
    """The spec's stage 1: |T_x + 0.4 - lock_x| <= 0.02 with the door closed. The lock's x on
    an opened door says nothing about the lock (it rides on the door); the door angle is read
    from the lock block's quaternion, the door's orientation."""
    from kalm.envs.metaworld.goals import door_angle, stage_holds

    assert door_angle(_door_state(0.0, -0.5)) == pytest.approx(-0.5)
    flipped = _door_state(0.0, -0.5)
    flipped[ENTITY_QUAT["lock"]] *= -1  # the same rotation
    assert door_angle(flipped) == pytest.approx(-0.5)
    # at the unlock target, door closed (whatever the lock-handle distance says)
    assert stage_holds("locked-door-open", 0, _door_state(0.015, 0.0))
    assert stage_holds("locked-door-open", 0, _door_state(-0.015, 0.004, lock_to_handle=0.14))
    assert not stage_holds("locked-door-open", 0, _door_state(0.025, 0.0))  # not there yet
    # the x test met on a door swung open: not stage 1, even with the lock turned
    assert not stage_holds("locked-door-open", 0, _door_state(0.0, -0.5, lock_to_handle=0.14))
    assert not stage_holds("locked-door-open", 0, _door_state(0.0, 0.2))


def test_locked_door_open_is_ordered_on_a_closed_door_unlock():
    locked = _door_state(-0.1, 0.0)  # reset: 0.1 m short of the unlock target, door closed
    unlocked = _door_state(0.0, 0.0, lock_to_handle=0.14)
    swung = _door_state(0.0, -0.6, lock_to_handle=0.2)  # x test met only by swinging the door
    opened = _door_state(-0.37, -1.4, handle_dx=0.03, lock_to_handle=0.15)
    ok = episode_successes(LOCKED_DOOR, np.array([locked, unlocked, opened]))
    assert ok.tolist() == [False, True]
    ok = episode_successes(LOCKED_DOOR, np.array([locked, swung, opened]))
    assert ok.tolist() == [False, False]
    # the per-state form: unlocked (lock near the handle) and the handle at the target
    assert is_success(LOCKED_DOOR, opened)
    assert not is_success(LOCKED_DOOR, _door_state(-0.37, -1.4, handle_dx=0.03))  # locked
    assert not is_success(LOCKED_DOOR, unlocked)  # the handle far from T
