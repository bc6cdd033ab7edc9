"""benchmarks/planner_env.py on CLEVR: tasks come from the level's dev half with unsolved,
reproducible starts; the replay diagnostic re-runs actions from the same seeded reset (the
expert's actions reach the goal, no actions do not); `main` plans with a small fitted ensemble
and reports counts that add up."""

from __future__ import annotations

import json

import numpy as np

from benchmark_module import load_benchmark
from kalm.data.collect import CollectConfig, collect
from kalm.data.suites import load_builtin_suite
from kalm.envs.registry import get_env, make_env
from kalm.imagination.dynamics import DynamicsEnsemble
from test_dynamics import SMALL

CLEVR = get_env("clevr")


def _bench():
    return load_benchmark("planner_env")


def test_tasks_come_from_the_dev_half_with_unsolved_reproducible_starts():
    bench = _bench()
    tasks, resets = bench.env_tasks(CLEVR, "easy", "dev", 4, seed=5)
    again, _ = bench.env_tasks(CLEVR, "easy", "dev", 4, seed=5)
    other, _ = bench.env_tasks(CLEVR, "easy", "dev", 4, seed=6)
    assert len(tasks) == len(resets) == 4 and tasks.lengths.tolist() == [1] * 4
    np.testing.assert_array_equal(tasks.observations, again.observations)
    assert not np.allclose(tasks.observations, other.observations)
    dev = {json.dumps(g, sort_keys=True) for g in load_builtin_suite("easy", "clevr", "dev").goals}
    test = {json.dumps(g, sort_keys=True)
            for g in load_builtin_suite("easy", "clevr", "test").goals}
    for i in range(len(tasks)):
        ep = tasks.episode(i)
        key = json.dumps(ep.goal, sort_keys=True)
        assert key in dev and key not in test
        assert not CLEVR.is_success(ep.goal, ep.observations[0])


def test_replay_from_the_same_reset_reproduces_the_expert_and_refuses_a_changed_start():
    bench = _bench()
    tasks, resets = bench.env_tasks(CLEVR, "hard", "dev", 2, seed=3)
    env = make_env(CLEVR)
    try:
        ep = tasks.episode(0)
        agent = CLEVR.policy("expert")
        s, _ = bench.reset_unsolved(env, ep.goal, ep.instruction, *resets[0])
        agent.begin(env, ep.goal, ep.instruction)
        actions = []
        for _ in range(CLEVR.max_steps(ep.goal)):
            a = agent.act(s)
            actions.append(a)
            s, _, term, trunc, info = env.step(a)
            if info["is_success"] or term or trunc:
                break
        assert info["is_success"]
        solved = ep.__class__(ep.observations, np.asarray(actions), ep.rewards, ep.terminals,
                              ep.instruction, ep.goal)
        assert bench.replay_from_reset(env, solved, resets[0])
        # the first of the expert's actions alone does not reach a hard goal (several pushes)
        first = ep.__class__(ep.observations, np.asarray(actions[:1]), ep.rewards,
                             ep.terminals, ep.instruction, ep.goal)
        assert len(actions) > 1 and not bench.replay_from_reset(env, first, resets[0])
        try:
            bench.replay_from_reset(env, solved, resets[1])
        except RuntimeError as exc:
            assert "start state" in str(exc)
        else:
            raise AssertionError("a reset that gives another start state must be refused")
    finally:
        env.close()


def test_main_plans_fresh_tasks_with_a_fitted_ensemble(tmp_path, capsys):
    bench = _bench()
    data = collect(CollectConfig(out=str(tmp_path / "real.h5"), env="clevr", episodes=60,
                                 seed=1, workers=1), progress=False)
    DynamicsEnsemble.fit(data, SMALL, bounds=CLEVR.clamp_box(), progress=False).save(
        tmp_path / "dynamics")
    out = tmp_path / "rows.jsonl"
    rows = bench.main(["--workdir", str(tmp_path), "--level", "easy", "--goals", "3",
                       "--set", "candidates=40,iterations=2,horizon=2",
                       "--set", "candidates=40,iterations=2,horizon=2,project=0",
                       "--out", str(out)])
    table = capsys.readouterr().out
    assert table.count("| candidates=40") == 2
    assert [json.loads(line)["setting"] for line in out.read_text().splitlines()] == [
        "candidates=40,iterations=2,horizon=2", "candidates=40,iterations=2,horizon=2,project=0"]
    for r in rows:
        assert r["tasks"] == 3 and 0 <= r["kept_right"] <= r["kept"] <= 3
        assert 0 <= r["planned_right"] <= 3 and r["cpu_seconds"] > 0
        assert r["candidates"] >= 3 * 40
    assert rows[1]["config"]["project"] is False and rows[0]["config"]["project"] is True
