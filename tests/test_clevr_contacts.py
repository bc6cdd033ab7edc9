"""CLEVR structure a planner's model may not ignore: balls do not overlap (`separate_balls`,
applied after each predicted step), and the realism categories in numpy (`batch_plausible`)
equal the per-rollout `check_transitions`."""

from __future__ import annotations

import numpy as np
import pytest

from kalm.envs.clevr.constants import BALL_RADIUS
from kalm.envs.clevr.contacts import CONTACT, separate_balls
from kalm.envs.clevr.realism import batch_plausible, check_transitions
from kalm.envs.registry import get_env, make_env

CLEVR = get_env("clevr")
APART = np.array([-0.4, 0.0, -0.1, 0.0, 0.35, 0.2, -0.35, 0.5, 0.0, 0.5], np.float32)


def _pair_distances(state: np.ndarray) -> np.ndarray:
    b = np.asarray(state).reshape(-1, 5, 2)
    i, j = np.triu_indices(5, 1)
    return np.linalg.norm(b[:, i] - b[:, j], axis=-1)


def test_the_struck_ball_moves_out_along_the_line_of_centres():
    state = APART.copy()
    state[0:2] = [-0.2, 0.0]  # red pushed right (action 0) into blue, 0.1 apart
    out = separate_balls(APART, np.array(0), state)
    assert np.allclose(out[0:2], [-0.2, 0.0])  # the pushed ball stays where it went
    assert np.allclose(out[2:4], [-0.2 + CONTACT, 0.0], atol=1e-6)  # blue moved out, touching
    assert np.allclose(out[4:], state[4:])  # the others untouched
    # a pair the push did not touch shares the correction
    state = APART.copy()
    state[2:4] = [0.25, 0.2]  # blue 0.1 from green; red (pushed) far away
    out = separate_balls(APART, np.array(0), state)
    assert np.allclose(out[2:4], [0.3 - CONTACT / 2, 0.2], atol=1e-6)
    assert np.allclose(out[4:6], [0.3 + CONTACT / 2, 0.2], atol=1e-6)


def test_separation_keeps_balls_apart_and_on_the_table_in_batches():
    rng = np.random.default_rng(0)
    states = rng.uniform([-0.45, -0.15] * 5, [0.45, 0.55] * 5, size=(7, 300, 10))
    out = separate_balls(None, rng.integers(40, size=(7, 300)), states.astype(np.float32))
    assert out.shape == states.shape and out.dtype == np.float32
    assert (_pair_distances(out) > 2 * BALL_RADIUS - 0.03).mean() > 0.99
    assert (_pair_distances(states) < 2 * BALL_RADIUS - 0.03).any(-1).mean() > 0.5  # work
    untouched = (_pair_distances(states) >= CONTACT).all(-1)
    assert np.allclose(out.reshape(-1, 10)[untouched.reshape(-1)],
                       states.reshape(-1, 10)[untouched.reshape(-1)], atol=1e-6)


def _rollouts(n: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    env, rng = make_env(CLEVR), np.random.default_rng(seed)
    obs_all, acts_all = [], []
    for i in range(n):
        obs, _ = env.reset(seed=seed * 100 + i)
        states, acts = [obs], []
        for _ in range(steps):
            a = int(rng.integers(40))
            obs, *_ = env.step(a)
            states.append(obs)
            acts.append(a)
        obs_all.append(states)
        acts_all.append(acts)
    env.close()
    return np.asarray(obs_all, np.float32), np.asarray(acts_all)


def test_batch_plausible_equals_check_transitions():
    real, acts = _rollouts(6, 5, seed=3)
    rng = np.random.default_rng(1)
    noisy = real + rng.normal(0, 0.08, real.shape).astype(np.float32)  # every category
    jumped = real.copy()
    jumped[:, 2:, 8] += 0.5  # cyan leaves the table / moves too far
    for obs in (real, noisy, jumped):
        grid = batch_plausible(obs, acts)
        expected = np.array([[not any(check_transitions(o[t : t + 2], a[t : t + 1]).values())
                              for t in range(len(a))] for o, a in zip(obs, acts, strict=True)])
        assert np.array_equal(grid, expected)
    assert batch_plausible(real, acts).mean() > 0.9
    assert not batch_plausible(noisy, acts).all() and not batch_plausible(jumped, acts).all()
    assert np.array_equal(CLEVR.plausible_grid(noisy, acts), batch_plausible(noisy, acts))
    with pytest.raises(ValueError, match=r"\(N, T\+1, 10\)"):
        batch_plausible(real[..., :8], acts)
