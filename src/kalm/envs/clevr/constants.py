"""Numbers that define CLEVR-Robot as KALM used it (see docs/clevr.md for their sources)."""

from __future__ import annotations

import numpy as np

COLORS: tuple[str, ...] = ("red", "blue", "green", "purple", "cyan")
COLOR_INDEX: dict[str, int] = {c: i for i, c in enumerate(COLORS)}
RGBA: dict[str, tuple[float, float, float, float]] = {
    "red": (1.0, 0.1, 0.1, 1.0),
    "blue": (0.2, 0.5, 1.0, 1.0),
    "green": (0.2, 1.0, 0.0, 1.0),
    "purple": (0.8, 0.2, 1.0, 1.0),
    "cyan": (0.2, 1.0, 1.0, 1.0),
}
NUM_BALLS = len(COLORS)
OBS_DIM = 2 * NUM_BALLS

# Push directions, indexed by action % 8; the control vector is used unnormalised.
PUSH_VECTORS = np.array(
    [(1, 0), (0, 1), (-1, 0), (0, -1), (0.8, 0.8), (-0.8, 0.8), (0.8, -0.8), (-0.8, -0.8)],
    dtype=np.float64,
)
NUM_PUSH_DIRECTIONS = len(PUSH_VECTORS)
NUM_ACTIONS = NUM_BALLS * NUM_PUSH_DIRECTIONS

# Goal directions (KALM's convention: behind = +y, front = -y).
GOAL_DIRECTIONS: tuple[str, ...] = ("behind", "left", "front", "right")
DIRECTION_VECTORS: dict[str, np.ndarray] = {
    "behind": np.array([0.0, 1.0]),
    "left": np.array([-1.0, 0.0]),
    "front": np.array([0.0, -1.0]),
    "right": np.array([1.0, 0.0]),
}
# Angular sectors (degrees, half-open [low, high)) of the relation check.
DIRECTION_SECTORS: dict[str, tuple[tuple[float, float], ...]] = {
    "behind": ((45.0, 135.0),),
    "left": ((135.0, 225.0),),
    "front": ((225.0, 315.0),),
    "right": ((315.0, 360.0), (0.0, 45.0)),
}
# Push directions (action % 8) with a positive component along each goal direction.
PUSHES_ALONG: dict[str, frozenset[int]] = {
    "behind": frozenset({1, 4, 5}),
    "left": frozenset({2, 5, 7}),
    "front": frozenset({3, 6, 7}),
    "right": frozenset({0, 4, 6}),
}

BALL_RADIUS = 0.13
MIN_INIT_CENTRE_DIST = 0.36  # 0.1 gap + two radii
RELATION_DIST = 0.39  # 3 radii
RELATION_EPS = 1e-3  # components smaller than this count as zero in the angle test
REWARD_TARGET_OFFSET = 0.195  # shaping target lies this far beyond the reference ball
LINE_MAX_ANGLE_DEG = 30.0
CIRCLE_RADIUS = 0.325  # 2.5 radii
SUCCESS_REWARD = 100.0
SHAPING_SCALE = 10.0

MAX_EPISODE_STEPS = 50
PUSH_EPISODE_STEPS = 1

# Where ball centres can be once the walls have acted (measured limits, rounded).
TABLE_LOW = np.array([-0.47, -0.17])
TABLE_HIGH = np.array([0.47, 0.57])
# Initial positions are sampled from this larger box, as in the original env.
INIT_LOW = np.array([-0.5, -0.3])
INIT_HIGH = np.array([0.5, 0.5])
