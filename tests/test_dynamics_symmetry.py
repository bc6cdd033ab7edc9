"""Symmetric copies of the real transitions (`DynamicsConfig.symmetric_copies`): an env's exact
symmetries (`EnvDefinition.dynamics_symmetry`) let the dynamics ensemble learn pushes the data
never shows; CLEVR's relabelled balls and mirrored table are exact in the simulator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kalm.config import to_dict
from kalm.data.episodes import EpisodeData
from kalm.envs.base import EnvSpecInfo
from kalm.envs.clevr.constants import NUM_ACTIONS
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.symmetry import random_symmetry, transform
from kalm.envs.registry import get_env
from kalm.imagination.dynamics import (
    DynamicsConfig,
    DynamicsEnsemble,
    transitions,
    with_symmetric_copies,
)
from kalm.pipeline import _hashed

# a point on a plane: action 0/1 moves it +x/-x, 2/3 moves it +y/-y
MOVES = np.array([[0.3, 0.0], [-0.3, 0.0], [0.0, 0.3], [0.0, -0.3]], np.float32)
SPEC = EnvSpecInfo("plane", 2, "discrete", 4)


def plane_data(n: int = 300, t: int = 6, seed: int = 0) -> EpisodeData:
    """Episodes that never take action 1 (-x)."""
    rng = np.random.default_rng(seed)
    obs = np.zeros((n, t + 1, 2), np.float32)
    obs[:, 0] = rng.uniform(-1, 1, (n, 2))
    act = rng.choice([0, 2, 3], size=(n, t)).astype(np.int64)
    for k in range(t):
        obs[:, k + 1] = obs[:, k] + MOVES[act[:, k]]
    return EpisodeData(SPEC, obs, act, np.zeros((n, t), np.float32), np.zeros((n, t), bool),
                       np.full(n, t, np.int32), ["go"] * n, [{}] * n, source="real")


def mirror_x(observations, actions, rng):
    """The plane mirrored left-right in every row (x -> -x, action 0 <-> 1)."""
    o = np.asarray(observations).copy()
    o[..., 0] *= -1
    a = np.asarray(actions).copy()
    swap = {0: 1, 1: 0, 2: 2, 3: 3}
    return o, np.vectorize(swap.get)(a)


CFG = DynamicsConfig(members=2, hidden=64, layers=2, epochs=30, batch_size=64,
                     weight_decay=0.0, val_fraction=0.2, seed=0, patience=None)


def test_copies_teach_the_model_an_action_the_data_never_takes():
    data = plane_data()
    states = np.random.default_rng(5).uniform(-0.8, 0.8, (200, 2)).astype(np.float32)
    left = np.ones(len(states), np.int64)
    truth = states + MOVES[1]
    plain = DynamicsEnsemble.fit(data, CFG, progress=False)
    copied = DynamicsEnsemble.fit(data, replace(CFG, symmetric_copies=1), progress=False,
                                  symmetry=mirror_x)
    err_plain = np.abs(plain.predict(states, left)[0] - truth).mean()
    err_copied = np.abs(copied.predict(states, left)[0] - truth).mean()
    assert err_copied < 0.03 < err_plain
    # the copies are training data only: both fits hold out the same real episodes
    assert copied.training["val_transitions"] == plain.training["val_transitions"]
    assert copied.training["train_transitions"] == 2 * plain.training["train_transitions"]
    assert copied.training["symmetric_copies"] == 1


def test_copies_need_the_hook_and_a_count_of_at_least_zero():
    with pytest.raises(ValueError, match="dynamics_symmetry"):
        DynamicsEnsemble.fit(plane_data(n=20), replace(CFG, symmetric_copies=2), progress=False)
    with pytest.raises(ValueError, match="symmetric_copies must be >= 0"):
        DynamicsEnsemble.fit(plane_data(n=20), replace(CFG, symmetric_copies=-1),
                             progress=False, symmetry=mirror_x)


def test_with_symmetric_copies_keeps_the_data_first_and_checks_shapes():
    data = plane_data(n=10)
    both = with_symmetric_copies(data, 2, mirror_x, np.random.default_rng(0))
    assert len(both) == 30 and both.num_transitions == 3 * data.num_transitions
    assert np.array_equal(both.observations[:10], data.observations)
    assert np.allclose(both.observations[10:20, :, 0], -data.observations[:, :, 0])
    assert len(transitions(both)) == 3 * len(transitions(data))
    with pytest.raises(ValueError, match="dynamics_symmetry returned shapes"):
        with_symmetric_copies(data, 1, lambda o, a, rng: (o[:, :2], a), np.random.default_rng(0))


def test_zero_copies_hash_as_before_so_old_run_folders_keep_their_ensemble():
    cfg = DynamicsConfig()
    assert "symmetric_copies" not in _hashed(to_dict(cfg))
    assert _hashed(to_dict(replace(cfg, symmetric_copies=4)))["symmetric_copies"] == 4


# ---------------------------------------------------------------------------- CLEVR
def _pushed(env: CLEVRRobotEnv, xy: np.ndarray, action: int) -> np.ndarray:
    env.set_ball_positions(xy)
    env.apply_action(action)
    return env.ball_positions().astype(np.float32).copy()


def test_clevr_symmetries_are_exact_in_the_simulator():
    env = CLEVRRobotEnv()
    rng = np.random.default_rng(3)
    moved = 0.0
    for _ in range(12):
        s0 = env.sample_initial_positions(rng).astype(np.float32)
        a = int(rng.integers(NUM_ACTIONS))
        s1 = _pushed(env, s0, a)
        moved = max(moved, float(np.abs(s1 - s0).max()))
        perm = rng.permutation(5)[None]
        flips = rng.random(2) < 0.5
        obs, acts = transform(np.stack([s0, s1])[None], np.array([[a]]), perm,
                              flips[:1], flips[1:])
        np.testing.assert_allclose(_pushed(env, obs[0, 0], int(acts[0, 0])), obs[0, 1],
                                   atol=1e-4)
    assert moved > 0.1  # the pushes moved balls: the comparison is not of still scenes


def test_clevr_transform_relabels_balls_and_mirrors_directions():
    s = np.arange(10, dtype=np.float32)[None, None] / 10  # ball i at (0.2 i, 0.2 i + 0.1)
    perm = np.array([[1, 0, 2, 3, 4]])
    no = np.array([False])
    obs, acts = transform(s, np.array([[0 * 8 + 1]]), perm, no, no)  # push ball 0 "+y"
    assert np.allclose(obs[0, 0, :4], [0.2, 0.3, 0.0, 0.1])  # balls 0 and 1 swapped
    assert int(acts[0, 0]) == 1 * 8 + 1  # the same ball, now called ball 1, same direction
    obs, acts = transform(s, np.array([[2 * 8 + 0]]), np.arange(5)[None], np.array([True]), no)
    assert np.allclose(obs[0, 0, 0::2], -s[0, 0, 0::2]) and int(acts[0, 0]) == 2 * 8 + 2
    obs, acts = transform(s, np.array([[4 * 8 + 4]]), np.arange(5)[None], no, np.array([True]))
    assert np.allclose(obs[0, 0, 1::2], 0.4 - s[0, 0, 1::2]) and int(acts[0, 0]) == 4 * 8 + 6
    # padding actions (outside the action range) pass through untouched
    _, acts = transform(s[:, [0, 0]], np.array([[-1]]), perm, no, no)
    assert int(acts[0, 0]) == -1


def test_clevr_symmetries_undo_by_their_inverse_and_random_ones_vary():
    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.4, 0.5, (64, 3, 10)).astype(np.float32)
    acts = rng.integers(NUM_ACTIONS, size=(64, 2))
    perm = np.argsort(rng.random((64, 5)), axis=1)
    fx, fy = rng.random(64) < 0.5, rng.random(64) < 0.5
    out, out_a = transform(obs, acts, perm, fx, fy)
    back, back_a = transform(out, out_a, np.argsort(perm, axis=1), fx, fy)
    np.testing.assert_allclose(back, obs, atol=1e-6)
    assert np.array_equal(back_a, acts)
    moved, moved_a = random_symmetry(obs, acts, np.random.default_rng(1))
    assert moved.shape == obs.shape and moved_a.shape == acts.shape
    assert (moved_a // 8 != acts // 8).mean() > 0.5  # most pushed balls were relabelled
    assert get_env("clevr").dynamics_symmetry is random_symmetry
