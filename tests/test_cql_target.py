"""CQL's target network must follow the run: at d3rlpy's (and the paper's) interval of 8,000 a
CQL run of the quick config's 8,000 steps synced its target once, after the first step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from kalm.data.episodes import write_episodes
from kalm.eval.compare import policy_train_config
from kalm.rl.algos import AlgoConfig, check_target_interval, target_interval
from kalm.rl.train import TrainConfig, train_policy
from kalm.run_folder import compare_config, load_run_config
from test_rl import _trivial_data

QUICK = Path(__file__).resolve().parents[1] / "configs" / "clevr-quick.yaml"


def _target_weights(policy_file: Path) -> list[torch.Tensor]:
    import d3rlpy

    algo = d3rlpy.load_learnable(str(policy_file), device="cpu:0")
    return [p.detach().clone() for p in algo.impl.modules.targ_q_funcs.parameters()]


def _quick_cql(tmp_path: Path, steps: int | None = None) -> TrainConfig:
    """The train config the quick run gives its real-only CQL policy (smaller net, same
    algorithm settings), on a small data set."""
    run = load_run_config(QUICK, out=str(tmp_path / "run"))
    write_episodes(_trivial_data(40), tmp_path / "real.h5")
    cmp = dataclasses.replace(compare_config(run, "cql", tmp_path / "run"),
                              real=str(tmp_path / "real.h5"))
    tc = policy_train_config(cmp, 0, None, tmp_path / f"pol-{steps}")
    algo = dataclasses.replace(tc.algo, hidden_units=[16, 16])
    return dataclasses.replace(tc, algo=algo, steps=steps or tc.steps, save_every=10**9,
                               log_every=10**9)


def test_target_network_moves_over_a_quick_run(tmp_path):
    full = _quick_cql(tmp_path)
    assert full.steps == 8000  # the quick config's CQL length; the test is about that run
    short = dataclasses.replace(full, steps=2, out=str(tmp_path / "pol-2"))
    train_policy(short, progress=False)
    train_policy(full, progress=False)
    before = _target_weights(Path(short.out) / "policy.d3")
    after = _target_weights(Path(full.out) / "policy.d3")
    moved = max(float((a - b).abs().max()) for a, b in zip(after, before, strict=True))
    assert moved > 1e-3, "the target network after 8,000 steps equals the one after 2"


def test_default_interval_gives_many_syncs():
    cfg = AlgoConfig(algo="cql")
    assert target_interval(cfg, 8000) == 1000  # 8 syncs, chosen on the dev half
    assert target_interval(cfg, 2) == 1


@pytest.mark.parametrize("algo", ["cql", "bcq", "sac"])
def test_interval_near_the_step_count_is_refused(algo):
    with pytest.raises(ValueError, match="target_update_interval 8000 syncs"):
        check_target_interval(AlgoConfig(algo=algo, target_update_interval=8000), 8000)
    check_target_interval(AlgoConfig(algo=algo, target_update_interval=200), 8000)
    # continuous algorithms use soft target updates: nothing to check
    check_target_interval(AlgoConfig(algo="cql", target_update_interval=8000), 8000,
                          "continuous")


def test_train_refuses_before_training(tmp_path):
    tc = _quick_cql(tmp_path, steps=100)
    tc = dataclasses.replace(tc, algo=dataclasses.replace(tc.algo, target_update_interval=90))
    with pytest.raises(ValueError, match="at most 25"):
        train_policy(tc, progress=False)
    assert not (Path(tc.out) / "checkpoints").exists()


def test_resolved_interval_is_recorded(tmp_path):
    import json

    tc = _quick_cql(tmp_path, steps=80)
    train_policy(tc, progress=False)
    record = json.loads((Path(tc.out) / "train_config.json").read_text())
    assert record["target_sync_interval"] == 10 and record["algo"]["target_update_interval"] is None
    assert np.isfinite(record["real_transitions"])


def test_cql_alpha_reaches_the_policy_only_where_set(tmp_path):
    """`CompareConfig.cql_alpha` (dev_ablation --cql-alpha) sets CQL's conservative weight;
    unset, the policy's settings and identity are what they were before it existed."""
    from kalm.eval.compare import train_identity

    run = load_run_config(QUICK, out=str(tmp_path / "run"))
    cmp = compare_config(run, "cql", tmp_path / "run")
    assert cmp.cql_alpha is None
    plain = policy_train_config(cmp, 0, None, tmp_path / "p")
    weak = policy_train_config(dataclasses.replace(cmp, cql_alpha=1.0), 0, None, tmp_path / "p")
    assert plain.algo.cql_alpha == AlgoConfig().cql_alpha == 10.0 and weak.algo.cql_alpha == 1.0
    assert "cql_alpha" in plain.algo.identity()
    write_episodes(_trivial_data(4), tmp_path / "run" / "collect" / "real.h5")
    assert train_identity(plain) != train_identity(weak)
