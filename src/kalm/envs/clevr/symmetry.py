"""The exact symmetries of CLEVR-Robot's physics, for a world model to learn from more data.

The five balls are physically identical (same radius, density and friction; only their colours
differ), and the walls form a rectangle centred on (0, 0.2). So relabelling the balls, and
mirroring the table left-right or front-back, maps every real transition to another transition
the simulator would produce: the pushed ball's index follows the relabelling and the push
direction its mirror image. A model of the dynamics fitted on 6,000 expert episodes sees each
ball pushed mostly the ways the expert pushes it; these copies show it every ball pushed every
way, for free, without a single extra simulator step.

The goals do not survive the relabelling (they name colours): the copies are for learning the
dynamics only, never for rewards or policies.
"""

from __future__ import annotations

import numpy as np

from kalm.envs.clevr.constants import NUM_BALLS, NUM_PUSH_DIRECTIONS, PUSH_VECTORS

# the wall planes (scene.py) lie at x = -0.6 / 0.6 and y = -0.3 / 0.7
MIRROR_X_AT = 0.0
MIRROR_Y_AT = 0.2


def _mirrored_direction(axis: int) -> np.ndarray:
    """Direction index -> the index of its mirror image across the given axis (0: x, 1: y)."""
    flipped = PUSH_VECTORS.copy()
    flipped[:, axis] *= -1
    match = np.all(np.isclose(flipped[:, None, :], PUSH_VECTORS[None, :, :]), axis=-1)
    if not np.all(match.sum(1) == 1):
        raise AssertionError("the push directions are not closed under mirroring")
    return match.argmax(1)


_FLIP_DIRECTION = (_mirrored_direction(0), _mirrored_direction(1))


def transform(observations: np.ndarray, actions: np.ndarray, perm: np.ndarray,
              flip_x: np.ndarray, flip_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of OBSERVATIONS (N, T+1, 10) and ACTIONS (N, T) under the symmetry given per row:
    PERM (N, 5), ball i of the result is ball PERM[i] of the input; FLIP_X / FLIP_Y (N,) bool.
    Actions outside [0, 40) (padding) are kept as they are."""
    obs = np.asarray(observations)
    n = obs.shape[0]
    balls = obs.reshape(n, obs.shape[1], NUM_BALLS, 2)
    out = np.take_along_axis(balls, perm[:, None, :, None], axis=2).copy()
    out[flip_x, :, :, 0] = 2 * MIRROR_X_AT - out[flip_x, :, :, 0]
    out[flip_y, :, :, 1] = 2 * MIRROR_Y_AT - out[flip_y, :, :, 1]
    acts = np.asarray(actions)
    valid = (acts >= 0) & (acts < NUM_BALLS * NUM_PUSH_DIRECTIONS)
    safe = np.where(valid, acts, 0)
    ball, direction = np.divmod(safe, NUM_PUSH_DIRECTIONS)
    inverse = np.argsort(perm, axis=1)  # input ball j is ball inverse[j] of the result
    ball = np.take_along_axis(inverse, ball, axis=1)
    direction = np.where(flip_x[:, None], _FLIP_DIRECTION[0][direction], direction)
    direction = np.where(flip_y[:, None], _FLIP_DIRECTION[1][direction], direction)
    new = ball * NUM_PUSH_DIRECTIONS + direction
    return (out.reshape(obs.shape).astype(obs.dtype),
            np.where(valid, new, acts).astype(acts.dtype))


def random_symmetry(observations: np.ndarray, actions: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each row under its own random relabelling of the balls and mirror image of the table
    (one of 5! x 4 symmetries): the env definition's `dynamics_symmetry` hook."""
    n = len(observations)
    perm = np.argsort(rng.random((n, NUM_BALLS)), axis=1)
    flips = rng.random((n, 2)) < 0.5
    return transform(observations, actions, perm, flips[:, 0], flips[:, 1])


__all__ = ["MIRROR_X_AT", "MIRROR_Y_AT", "random_symmetry", "transform"]
