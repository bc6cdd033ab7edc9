"""The numbers that define kalm's Meta-World setting (metaworld 3.1.1, v3 tasks).

The state is KALM's fixed 91-d entity layout: gripper (tcp xyz + opening), the target location,
then one 7-block (position + quaternion) per entity, in the same order for every task, with
exact zeros for the entities a task does not have. A fixed layout lets one model and one policy
read every task; the zeros tell them which entities exist. Measured values cite
`docs/metaworld.md` (and the spec it summarises).
"""

from __future__ import annotations

import numpy as np

OBS_DIM = 91
ACTION_DIM = 4
MAX_EPISODE_STEPS = 100  # KALM's horizon (metaworld's default is 500)
SUCCESS_REWARD = 10.0  # KALM's reward on the success step
POTENTIAL_SCALE = 10.0  # the shaping potential lies in [0, 10], as metaworld's dense reward

# entity -> first index of its block; the gripper is 4 wide, the target 3, entities 7
ENTITIES = ("target_object", "button", "lock", "handle", "window", "faucet", "wall", "coffee",
            "coffee_button", "hammer", "nail", "soccer")
GRIPPER = slice(0, 4)
# s[0:3] is the tcp (metaworld's `tcp_center`, midway between the finger pads), where KALM stores
# the hand body: the tcp is what metaworld's reach judge reads, and its offset from the hand moves
# by up to 6 mm with the fingers, which no state records (with the hand, the state-only reach
# judge agreed with the simulator on 98.7-98.9% of scripted steps; with the tcp it is exact).
HAND = slice(0, 3)
OPENING = 3
TARGET = slice(4, 7)
ENTITY_START = {name: 7 + 7 * i for i, name in enumerate(ENTITIES)}
ENTITY_SLICE = {name: slice(s, s + 7) for name, s in ENTITY_START.items()}
ENTITY_POS = {name: slice(s, s + 3) for name, s in ENTITY_START.items()}
ENTITY_QUAT = {name: slice(s + 3, s + 7) for name, s in ENTITY_START.items()}
assert 7 + 7 * len(ENTITIES) == OBS_DIM

# Quaternion convention per entity, as the source exposes it (KALM keeps them mixed): scipy's
# (x, y, z, w) for bodies whose quaternion metaworld computes from a rotation matrix, MuJoCo's
# (w, x, y, z) for body `xquat`s; "zero" for the window (metaworld reports no orientation).
QUAT_CONVENTION = {
    "target_object": "xyzw", "button": "wxyz", "lock": "wxyz", "handle": "xyzw",
    "window": "zero", "faucet": "wxyz", "wall": "wxyz", "coffee": "xyzw",
    "coffee_button": "wxyz", "hammer": "wxyz", "nail": "wxyz", "soccer": "xyzw",
}
# Entities with a free joint (they can fall, be lifted, be carried).
FREE_ENTITIES = ("target_object", "coffee", "soccer", "hammer")

# tcp - hand, measured over scripted episodes (deviation up to 6 mm in y): used only to place
# the hand when a state is set in the simulator, and for the bounds of s[0:3].
TCP_OFFSET = np.array([-0.0007, 0.0027, -0.0449])

# metaworld's clip of the hand position in observations (`_HAND_SPACE`), and the table top of
# `basic_scene.xml` (z = 0)
HAND_LOW = (-0.525, 0.348, -0.0525)
HAND_HIGH = (0.525, 1.025, 0.7)
TABLE_X = (-0.7, 0.7)
TABLE_Y = (0.2, 1.0)

# The constant wall block of the wall tasks (v3 does not expose the wall; read once from the
# model: body COM and xquat).
WALL_BLOCK = {
    "reach-wall": (0.1, 0.75, 0.06, 1.0, 0.0, 0.0, 0.0),
    "push-wall": (0.1, 0.75, 0.06, 1.0, 0.0, 0.0, 0.0),
    "pick-place-wall": (0.1, 0.75, 0.06, 1.0, 0.0, 0.0, 0.0),
    "button-press-wall": (0.1, 0.6, 0.0, 1.0, 0.0, 0.0, 0.0),
}


def _state_bounds() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The box generated states are clamped to: reachable values, and 0 for every entity block,
    because absent entities are exact zeros (a y-low of 0.2 would turn them into 0.2)."""
    low = np.zeros(OBS_DIM)
    high = np.zeros(OBS_DIM)
    low[HAND] = np.asarray(HAND_LOW) + TCP_OFFSET - 0.01
    high[HAND] = np.asarray(HAND_HIGH) + TCP_OFFSET + 0.01
    low[OPENING], high[OPENING] = 0.0, 1.0
    low[TARGET], high[TARGET] = (-0.45, 0.3, -0.01), (0.35, 1.0, 0.35)
    for name in ENTITIES:
        low[ENTITY_POS[name]], high[ENTITY_POS[name]] = (-0.7, 0.0, -0.05), (0.7, 1.05, 0.5)
        low[ENTITY_QUAT[name]], high[ENTITY_QUAT[name]] = -1.0, 1.0
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


STATE_LOW, STATE_HIGH = _state_bounds()
