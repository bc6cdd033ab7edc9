"""The ensemble's open-loop fit (`DynamicsConfig.rollout_steps`): each member trained on its own
multi-step predictions from real states, with early stopping on the held-out multi-step error."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from kalm.imagination.dynamics import (
    DynamicsConfig,
    DynamicsEnsemble,
    split_episodes,
    transitions,
)
from kalm.pipeline import _hashed
from test_dynamics import OBS, SMALL, continuous_data, linear_data


def _brief(cfg: DynamicsConfig) -> DynamicsConfig:
    return replace(cfg, epochs=1)


def test_windows_follow_each_episode_and_mask_past_its_end():
    data = linear_data(n=12, t=6, seed=3)
    ens = DynamicsEnsemble.fit(data, _brief(replace(SMALL, rollout_steps=3)), progress=False)
    episodes = np.arange(len(data))
    w = ens._windows(data, transitions(data, episodes))
    assert len(w) == int(data.lengths.sum())  # one window per real step
    n = ens.normaliser
    row = 0
    for e in episodes:
        length = int(data.lengths[e])
        for t in range(length):
            want_s0 = (data.observations[e, t] - n.state_mean) / n.state_std
            assert np.allclose(w.s0[row].numpy(), want_s0, atol=1e-6)
            for j in range(3):
                inside = t + j < length
                assert bool(w.mask[row, j]) == inside
                if inside:
                    want = (data.observations[e, t + j + 1] - n.state_mean) / n.state_std
                    assert np.allclose(w.next_states[row, j].numpy(), want, atol=1e-6)
                    assert int(w.actions[row, j].argmax()) == int(data.actions[e, t + j])
                    assert float(w.actions[row, j].sum()) == 1.0
            row += 1


def test_continuous_windows_carry_the_raw_actions():
    data = continuous_data(n=6, t=5)
    ens = DynamicsEnsemble.fit(data, _brief(replace(SMALL, rollout_steps=2, val_fraction=0.0)),
                               progress=False)
    w = ens._windows(data, transitions(data, np.arange(6)))
    assert w.actions.shape == (30, 2, 2)
    assert np.allclose(w.actions[0, 1].numpy(), data.actions[0, 1])
    assert not bool(w.mask[4, 1]) and bool(w.mask[3, 1])  # episode 0 ends after step 4


def test_the_first_step_of_the_open_loop_loss_is_the_one_step_loss():
    data = linear_data(n=40, seed=5)
    ens = DynamicsEnsemble.fit(data, _brief(SMALL), progress=False)
    one = replace(ens, config=replace(ens.config, rollout_steps=1))
    w = one._windows(data, transitions(data))
    rows = torch.stack([torch.arange(50), torch.arange(50, 100), torch.arange(100, 150)])
    tr = transitions(data)
    x, y = one._inputs(tr.states, tr.actions), one._targets(tr.states, tr.next_states)
    with torch.no_grad():
        want = ((one.net(x[rows]) - y[rows]) ** 2).mean(dim=(1, 2))
        got = one._open_loop_loss(w, rows)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_an_open_loop_fit_learns_the_system_and_stops_on_the_held_out_chain(tmp_path):
    data = linear_data(n=200, seed=0)
    cfg = replace(SMALL, rollout_steps=4, epochs=25)
    ens = DynamicsEnsemble.fit(data, cfg, progress=False)
    hist = ens.training["history"]
    assert np.mean(hist[-1]["val_mse"]) < 0.1 * np.mean(hist[0]["val_mse"])
    assert ens.training["best_val_mse"] is not None
    # held-out episodes, open loop over the whole episode through the members' mean
    _, val = split_episodes(len(data), cfg.val_fraction, cfg.seed)
    errs = []
    for e in val[:20]:
        ep = data.episode(int(e))
        states, _ = ens.rollout(ep.observations[0], ep.actions)
        errs.append(np.abs(states - ep.observations).max())
    assert np.median(errs) < 0.1
    # the setting survives a save and load, and the loaded model predicts the same
    ens.save(tmp_path / "dyn")
    back = DynamicsEnsemble.load(tmp_path / "dyn")
    assert back.config.rollout_steps == 4
    s = data.observations[:5, 0]
    a = data.actions[:5, 0]
    assert np.array_equal(back.predict(s, a)[0], ens.predict(s, a)[0])


def test_rollout_steps_below_one_is_refused_by_name():
    with pytest.raises(ValueError, match="rollout_steps"):
        DynamicsEnsemble.fit(linear_data(n=10), replace(SMALL, rollout_steps=0), progress=False)


def test_the_one_step_default_keeps_finished_dynamics_stages_valid():
    base = {"members": 5, "hidden": 256}
    assert _hashed({**base, "rollout_steps": 1}) == base  # folders from before the option
    assert _hashed({**base, "rollout_steps": 4}) == {**base, "rollout_steps": 4}
    assert OBS == 3
