"""benchmarks/history_probe.py builds its inputs from hand-made episodes as documented."""

from __future__ import annotations

import numpy as np

from benchmark_module import load_benchmark
from test_dynamics import linear_data


def _bench():
    return load_benchmark("history_probe")


def test_inputs_hold_the_state_the_last_motion_and_the_action():
    bench, data = _bench(), linear_data(n=5, t=6, seed=2)
    eps = np.arange(5)
    x, y, s = bench.pairs(data, eps, history=True)
    assert len(x) == int(data.lengths.sum())
    obs = data.observations
    # the first row is episode 0 at t=0: at rest, so the motion is zero
    assert np.allclose(x[0, :3], obs[0, 0]) and np.allclose(x[0, 3:6], 0.0)
    assert np.allclose(y[0], obs[0, 1] - obs[0, 0])
    # the second row is t=1: the motion is s_1 - s_0, the action one-hot
    assert np.allclose(x[1, 3:6], obs[0, 1] - obs[0, 0])
    assert x[1, 6:].argmax() == data.actions[0, 1] and x[1, 6:].sum() == 1.0
    plain, _, _ = bench.pairs(data, eps, history=False)
    assert plain.shape[1] == x.shape[1] - 3
    assert np.array_equal(plain[:, :3], s)


def test_a_fit_predicts_a_linear_system_better_than_no_motion():
    bench, data = _bench(), linear_data(n=120, seed=4)
    x, y, _ = bench.pairs(data, np.arange(100), history=False)
    xv, yv, _ = bench.pairs(data, np.arange(100, 120), history=False)
    pred = bench.fit_and_score(x, y, xv, yv, epochs=20, seed=0)
    assert np.abs(pred - yv).mean() < 0.2 * np.abs(yv).mean()
