"""benchmarks/world_model.py on a tiny linear system where the answers are known: a perfect
model has zero open-loop error and its judge finds every real success; a fitted ensemble read
from files through `main` gives one table row per step and variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark_module import load_benchmark
from kalm.data.episodes import EpisodeData, write_episodes
from kalm.envs.base import EnvDefinition, EnvSpecInfo
from kalm.imagination.dynamics import DynamicsEnsemble
from test_dynamics import ACTS, OBS, SMALL, linear_data, linear_step


def _bench():
    return load_benchmark("world_model")


def _reached(goal, obs) -> bool:
    return bool(np.abs(np.asarray(obs) - np.asarray(goal["target"])).max() < 1e-5)


def _no_env(**_):
    raise NotImplementedError("the linear system has no simulator")


# goal: reach the state the episode ended in (so every episode is a real success at its end)
LINEAR = EnvDefinition(
    name="linear", spec=EnvSpecInfo("linear", OBS, "discrete", ACTS),
    state_low=(-50.0,) * OBS, state_high=(50.0,) * OBS, make=_no_env,
    validate_goal=dict, is_success=_reached, max_steps=lambda goal: 8,
    episode_rewards=lambda goal, obs: np.zeros(len(obs) - 1, np.float32))


def goal_data(n: int = 60) -> EpisodeData:
    d = linear_data(n=n)
    goals = [{"target": [float(v) for v in d.observations[i, d.lengths[i]]]} for i in range(n)]
    terminals = np.zeros_like(d.terminals)
    terminals[np.arange(n), d.lengths - 1] = True
    return EpisodeData(d.spec, d.observations, d.actions, d.rewards, terminals, d.lengths,
                       d.instructions, goals, source="real")


class Perfect:
    """The true dynamics, with three identical members."""

    def rollout(self, s0, actions):
        states = [np.asarray(s0, np.float32)]
        for k in range(actions.shape[1]):
            states.append(linear_step(states[-1], actions[:, k]))
        return np.stack(states, 1), np.zeros(actions.shape[:2], np.float32)

    def member_rollouts(self, s0, actions):
        return np.stack([self.rollout(s0, actions)[0]] * 3)


def test_perfect_model_has_no_error_and_full_recall():
    bench, data = _bench(), goal_data()
    res = bench.measure(Perfect(), LINEAR, data, (1, 2, 4))
    assert [r["step"] for r in res["steps"]] == [1, 2, 4]
    assert [r["episodes"] for r in res["steps"]] == [int((data.lengths >= k).sum())
                                                     for k in (1, 2, 4)]
    for r in res["steps"]:
        assert r["median"] == 0.0 and r["p90"] == 0.0
        assert r["static_median"] > 0  # "nothing moves" is wrong: the system moves
    j = res["judge"]
    assert j["successful_episodes"] == len(data)
    assert j["real_states_recall"] == j["mean_chain_recall"] == j["votes_recall"] == 1.0
    assert j["members"] == j["min_votes"] == 3 and j["mean_votes"] == 3.0


class TwoOfThree(Perfect):
    """The true mean chain, but one of three members drifts off: two votes on every episode."""

    def member_rollouts(self, s0, actions):
        true = self.rollout(s0, actions)[0]
        return np.stack([true, true, true + 7.0])


def mixed_data() -> EpisodeData:
    """20 real successes, 10 failures whose goal the actions do reach (the success signal was
    missed: a judge on states calls them successful) and 10 whose goal no state reaches."""
    d = goal_data(40)
    goals = list(d.goals)
    terminals = d.terminals.copy()
    terminals[20:] = False
    for i in range(30, 40):
        goals[i] = {"target": [40.0] * OBS}
    return EpisodeData(d.spec, d.observations, d.actions, d.rewards, terminals, d.lengths,
                       d.instructions, goals, source="real")


def test_votes_curve_trades_recall_for_false_positives():
    bench, data = _bench(), mixed_data()
    curve = bench.measure(TwoOfThree(), LINEAR, data, (1,))["judge"]["votes_curve"]
    assert [c["min_votes"] for c in curve] == [0, 1, 2, 3]
    assert {(c["successes"], c["failures"]) for c in curve} == {(20, 20)}
    assert [c["recall"] for c in curve] == [1.0, 1.0, 1.0, 0.0]  # two votes: K = 3 rejects all
    assert [c["false_positive"] for c in curve] == [0.5, 0.5, 0.5, 0.0]
    assert bench.votes_curve([(True, True, 2)], None) == []  # no members: no curve
    text = bench.render({"episodes": 40, "variants": {
        "projected": bench.measure(TwoOfThree(), LINEAR, data, (1,))}}, LINEAR)
    assert "| ensemble mean + project_state | >= 3 | 20 / 20 | 0.0% | 0.0% |" in text
    assert "| ensemble mean + project_state | mean chain only | 20 / 20 | 100.0% | 50.0% |" in text


def test_negatives_file_adds_false_positives_to_the_curve(tmp_path, capsys):
    bench, data = _bench(), goal_data()
    write_episodes(data, tmp_path / "real.h5")
    DynamicsEnsemble.fit(data, SMALL, progress=False).save(tmp_path / "dyn")
    mixed = mixed_data()
    write_episodes(mixed, tmp_path / "neg.h5")
    base = ["--data", str(tmp_path / "real.h5"), "--dynamics", str(tmp_path / "dyn"),
            "--env", f"{Path(__file__).resolve()}:LINEAR", "--steps", "1"]
    res = bench.main([*base, "--negatives", str(tmp_path / "neg.h5")])
    curve = res["variants"]["raw"]["judge"]["votes_curve"]
    assert [c["negatives"] for c in curve] == [20] * 4  # only the 20 failures of the file count
    assert all(0.0 <= c["negatives_false_positive"] <= 1.0 for c in curve)
    assert "| negatives file: failures | false positives |" in capsys.readouterr().out
    # the curve's own numbers on a model whose verdicts are known, through the same merge
    variants = {"raw": bench.measure(TwoOfThree(), LINEAR, goal_data(), (1,))}
    bench.add_negatives(variants, {"raw": bench.measure(TwoOfThree(), LINEAR, mixed, (1,))[
        "judge"]["votes_curve"]})
    fp = [c["negatives_false_positive"] for c in variants["raw"]["judge"]["votes_curve"]]
    assert fp == [0.5, 0.5, 0.5, 0.0]
    only_successes = EpisodeData(mixed.spec, mixed.observations[:20], mixed.actions[:20],
                                 mixed.rewards[:20], mixed.terminals[:20], mixed.lengths[:20],
                                 mixed.instructions[:20], mixed.goals[:20], source="real")
    write_episodes(only_successes, tmp_path / "pos.h5")
    with pytest.raises(SystemExit, match="no failed episode"):
        bench.main([*base, "--negatives", str(tmp_path / "pos.h5")])


def test_main_on_files(tmp_path, capsys):
    bench, data = _bench(), goal_data()
    write_episodes(data, tmp_path / "real.h5")
    DynamicsEnsemble.fit(data, SMALL, progress=False).save(tmp_path / "dyn")
    out = tmp_path / "wm.json"
    res = bench.main(["--data", str(tmp_path / "real.h5"), "--dynamics", str(tmp_path / "dyn"),
                      "--env", f"{Path(__file__).resolve()}:LINEAR", "--steps", "1", "3",
                      "--out", str(out)])
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ensemble mean |")]
    # steps 1, 3; then the judge; then its curve over min_votes 0..3
    assert [r.split(" | ")[1] for r in rows] == ["1", "3", "12", "mean chain only", ">= 1",
                                                 ">= 2", ">= 3"]
    assert res["episodes"] == 12  # SMALL holds out 20% of 60 episodes
    assert set(res["variants"]) == {"raw"}  # no project_state hook: no projected rows
    steps = res["variants"]["raw"]["steps"]
    assert 0 < steps[0]["median"] < steps[0]["static_median"]  # fitted: small, not zero
    assert json.loads(out.read_text())["variants"]["raw"]["judge"]["members"] == 3


def test_main_fits_a_variant_beside_the_first_on_the_same_held_out_episodes(tmp_path, capsys):
    bench, data = _bench(), goal_data()
    write_episodes(data, tmp_path / "real.h5")
    DynamicsEnsemble.fit(data, SMALL, progress=False).save(tmp_path / "dyn")
    argv = ["--data", str(tmp_path / "real.h5"), "--dynamics", str(tmp_path / "dyn"),
            "--env", f"{Path(__file__).resolve()}:LINEAR", "--steps", "1", "3",
            "--fit", "rollout_steps=3,epochs=3", "--fit-dir", str(tmp_path / "fits")]
    res = bench.main(argv)
    assert set(res["variants"]) == {"raw", "rollout_steps=3,epochs=3: raw"}
    assert res["fits"]["rollout_steps=3,epochs=3"]["config"]["rollout_steps"] == 3
    printed = capsys.readouterr().out
    assert "| ensemble mean (rollout_steps=3,epochs=3) | 3 | " in printed
    saved = tmp_path / "fits" / "rollout_steps=3_epochs=3"
    assert (saved / "dynamics.json").is_file()
    again = bench.main(argv)  # the kept fit is reused, and measures the same
    for k in res["variants"]:
        assert again["variants"][k]["steps"] == res["variants"][k]["steps"]
    with pytest.raises(SystemExit, match="held-out"):
        bench.main([*argv[:-4], "--fit", "seed=3"])
    with pytest.raises(ValueError, match="unknown field 'hiddenn'"):
        bench.main([*argv[:-4], "--fit", "hiddenn=3"])
