"""Balls do not overlap: a predicted CLEVR state put back among the states the env can produce.

A dynamics model fitted on CLEVR's data moves the pushed ball well and the balls it strikes
badly: a quarter of its next-state predictions on real transitions leave two balls more than
4 cm inside each other, where real states never do (after almost every real push two balls
touch). `separate_balls` resolves each overlap as the contact would: the struck ball is moved
out along the line of centres (a pair the push did not touch shares the correction), within
the table. It is the `project_state` hook of the CLEVR definition; the dynamics ensemble applies
it after every predicted step when a planner asks it to.
"""

from __future__ import annotations

import numpy as np

from kalm.envs.clevr.constants import (
    BALL_RADIUS,
    NUM_BALLS,
    NUM_PUSH_DIRECTIONS,
    TABLE_HIGH,
    TABLE_LOW,
)

CONTACT = 2 * BALL_RADIUS  # centre distance of two touching balls
ROUNDS = 3  # passes over the pairs (a correction can push a ball into a third one)


def separate_balls(prev: np.ndarray, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    """STATE (..., 10) with overlapping balls moved apart; PREV (..., 10) and ACTIONS (...)
    (the step that led to it; broadcast against STATE) say which ball was pushed."""
    del prev  # the push, not the previous positions, says who strikes whom
    s = np.array(state, dtype=np.float32, copy=True)
    balls = s.reshape(*s.shape[:-1], NUM_BALLS, 2)
    pushed = np.broadcast_to(np.asarray(actions).astype(np.int64) // NUM_PUSH_DIRECTIONS,
                             s.shape[:-1])
    pairs = [(i, j) for i in range(NUM_BALLS) for j in range(i + 1, NUM_BALLS)]
    for _ in range(ROUNDS):
        for i, j in pairs:
            d = balls[..., j, :] - balls[..., i, :]
            dist = np.linalg.norm(d, axis=-1)
            overlap = np.clip(CONTACT - dist, 0.0, None)
            if not overlap.any():
                continue
            unit = np.where(dist[..., None] > 1e-6, d / np.maximum(dist, 1e-6)[..., None],
                            np.array([1.0, 0.0], np.float32))
            # the share of the correction ball i takes: none when it was pushed (it strikes j)
            share_i = np.where(pushed == i, 0.0, np.where(pushed == j, 1.0, 0.5))
            balls[..., i, :] -= (share_i * overlap)[..., None] * unit
            balls[..., j, :] += ((1.0 - share_i) * overlap)[..., None] * unit
        np.clip(balls, TABLE_LOW, TABLE_HIGH, out=balls)
    return s
