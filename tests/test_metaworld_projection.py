"""Meta-World's project_state (`hold_structure`) on hand-made states: what is fixed stays fixed,
an entity moves only within reach of the gripper (or of the hammer, for the nail), and
predictions that obey the rules pass unchanged. Real scripted episodes passing through
unchanged is checked in test_metaworld_env.py (it needs the simulator)."""

from __future__ import annotations

import numpy as np

from kalm.envs.metaworld.constants import (
    ENTITY_POS,
    ENTITY_QUAT,
    ENTITY_SLICE,
    HAND,
    OBS_DIM,
    TARGET,
)
from kalm.envs.metaworld.projection import FREE_MOTION, free_motion, hold_structure
from kalm.envs.registry import get_env


def scene(**entities) -> np.ndarray:
    """A state with the tcp at (0, 0.6, 0.2), a target, and the named entities at positions."""
    s = np.zeros(OBS_DIM, np.float32)
    s[HAND] = (0.0, 0.6, 0.2)
    s[3] = 0.5
    s[TARGET] = (0.1, 0.8, 0.1)
    for name, pos in entities.items():
        s[ENTITY_POS[name]] = pos
        s[ENTITY_QUAT[name]] = (1.0, 0.0, 0.0, 0.0)
    return s


def test_absent_entities_target_and_wall_are_held():
    prev = scene(target_object=(0.0, 0.6, 0.02), wall=(0.1, 0.75, 0.06))
    pred = prev.copy()
    pred[ENTITY_SLICE["soccer"]] = 0.3          # an absent entity drifting
    pred[TARGET] += 0.05                        # the target moving
    pred[ENTITY_POS["wall"]] += 0.02            # the wall moving
    out = hold_structure(prev, np.zeros(4), pred)
    assert np.all(out[ENTITY_SLICE["soccer"]] == 0)
    np.testing.assert_array_equal(out[TARGET], prev[TARGET])
    np.testing.assert_array_equal(out[ENTITY_SLICE["wall"]], prev[ENTITY_SLICE["wall"]])


def test_an_entity_moves_only_within_reach_of_the_gripper():
    near = scene(target_object=(0.0, 0.62, 0.2))      # 2 cm from the tcp
    far = scene(target_object=(0.3, 0.9, 0.02))       # ~45 cm away
    for prev, should_move in ((near, True), (far, False)):
        pred = prev.copy()
        pred[HAND] += (0.01, 0.0, 0.0)
        pred[ENTITY_POS["target_object"]] += (0.01, 0.0, 0.0)
        out = hold_structure(prev, np.zeros(4), pred)
        step = np.linalg.norm(out[ENTITY_POS["target_object"]]
                              - prev[ENTITY_POS["target_object"]])
        free = FREE_MOTION["target_object"][1]
        # within reach the predicted 1 cm stands; out of reach it is cut to the free step
        np.testing.assert_allclose(step, 0.01 if should_move else free, rtol=1e-4)
        np.testing.assert_allclose(out[HAND], pred[HAND])  # the arm itself is never held


def test_the_hammer_can_drive_the_nail_with_the_hand_away():
    r, free = FREE_MOTION["nail"]
    nail = (0.3, 0.7, 0.1)
    hand_far = np.add(nail, (0.0, -(r + 0.1), 0.0))
    with_hammer = scene(nail=nail, hammer=np.add(nail, (0.0, -0.02, 0.0)))
    without = scene(nail=nail)
    for prev, should_move in ((with_hammer, True), (without, False)):
        prev[HAND] = hand_far
        pred = prev.copy()
        pred[ENTITY_POS["nail"]] += (0.0, 0.01, 0.0)   # driven in along y, its joint
        out = hold_structure(prev, np.zeros(4), pred)
        step = out[ENTITY_POS["nail"]][1] - prev[ENTITY_POS["nail"]][1]
        np.testing.assert_allclose(step, 0.01 if should_move else free, rtol=1e-3)


def test_fixed_parts_keep_orientation_and_joints_their_axis():
    prev = scene(button=(0.0, 0.65, 0.2), window=(0.05, 0.6, 0.2))
    prev[ENTITY_QUAT["window"]] = 0.0                  # metaworld reports none
    pred = prev.copy()
    pred[ENTITY_QUAT["button"]] = (0.9, 0.1, 0.0, 0.0)
    pred[ENTITY_POS["button"]] += (0.02, 0.01, 0.02)   # only y is the button's axis
    pred[ENTITY_POS["window"]] += (0.01, 0.02, 0.0)    # only x is the window's
    pred[ENTITY_QUAT["window"]] = 0.3
    out = hold_structure(prev, np.zeros(4), pred)
    np.testing.assert_array_equal(out[ENTITY_QUAT["button"]], prev[ENTITY_QUAT["button"]])
    b0, b = prev[ENTITY_POS["button"]], out[ENTITY_POS["button"]]
    assert b[1] == b0[1] + np.float32(0.01) and b[0] == b0[0] and b[2] == b0[2]
    w0, w = prev[ENTITY_POS["window"]], out[ENTITY_POS["window"]]
    assert w[0] != w0[0] and w[1] == w0[1]
    assert np.all(out[ENTITY_QUAT["window"]] == 0)


def test_batched_states_and_a_broadcast_prev():
    prev = scene(target_object=(0.0, 0.62, 0.2))
    pred = np.repeat(prev[None], 5, axis=0)
    pred[:, ENTITY_SLICE["hammer"]] = np.linspace(0.1, 0.5, 5)[:, None]
    out = hold_structure(prev, np.zeros((5, 4)), pred)
    assert out.shape == (5, OBS_DIM)
    assert np.all(out[:, ENTITY_SLICE["hammer"]] == 0)
    # one row at a time gives the same answer
    for i in range(5):
        np.testing.assert_array_equal(out[i], hold_structure(prev, np.zeros(4), pred[i]))


def test_the_env_definition_uses_it():
    assert get_env("metaworld").project_state is hold_structure


def test_free_motion_on_a_hand_made_episode():
    s0 = scene(target_object=(0.0, 0.85, 0.2))        # 25 cm from the tcp
    s1 = s0.copy()
    s1[ENTITY_POS["target_object"]] += (0.0, 0.01, 0.0)  # moved 1 cm untouched
    s2 = s1.copy()
    s2[HAND] = s2[ENTITY_POS["target_object"]]         # the tcp reaches it: a near step
    s3 = s2.copy()
    s3[ENTITY_POS["target_object"]] += (0.0, 0.05, 0.0)
    obs = np.stack([s0, s1, s2, s3])[None]
    out = free_motion(obs, np.array([3]), radius=0.15)
    assert set(out) == {"target_object"}               # the only entity present
    assert out["target_object"]["far_steps"] == 1      # the near steps do not count
    np.testing.assert_allclose(out["target_object"]["max"], 0.01, rtol=1e-5)
