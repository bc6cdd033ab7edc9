"""Collection (determinism, resume, rewards) and evaluation of built-in policies via the CLI."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner

import kalm.data.collect as collect_mod
from kalm.cli import main
from kalm.data.collect import CollectConfig, collect
from kalm.data.episodes import read_episodes
from kalm.data.suites import GoalSuite, SuiteEntry, load_suite
from kalm.envs.base import EnvDefinition, EnvSpecInfo
from kalm.envs.clevr.rewards import episode_rewards
from kalm.eval.evaluate import evaluate_policy

SMALL = [
    {"instruction": "Put the red ball left of the blue ball.", "level": "train",
     "goal": {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}},
    {"instruction": "Green in front of cyan.", "level": "train",
     "goal": {"kind": "relation", "object": "green", "reference": "cyan", "direction": "front"}},
    {"instruction": "Nudge the purple ball to the right.", "level": "easy",
     "goal": {"kind": "push", "object": "purple", "direction": "right"}},
]


@pytest.fixture
def suite_file(tmp_path):
    p = tmp_path / "small.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in SMALL))
    return p


def cfg(tmp_path, name, **kw):
    base = {"out": str(tmp_path / name), "episodes": 6, "seed": 3, "chunk_size": 4,
            "workers": 1}
    return CollectConfig(**{**base, **kw})


def test_collect_writes_valid_successful_episodes(tmp_path, suite_file):
    data = collect(cfg(tmp_path, "a.h5", suite_file=str(suite_file)), progress=False)
    back = read_episodes(tmp_path / "a.h5")
    assert len(back) == 6 and back.source == "real"
    assert all(back.episode(i).success for i in range(6))
    for i in range(6):  # stored rewards/terminals are the env's reward function on the states
        ep = back.episode(i)
        r, term = episode_rewards(ep.goal, ep.observations.astype(np.float64), ep.actions)
        np.testing.assert_allclose(ep.rewards, r, rtol=1e-5, atol=1e-4)
        assert term.tolist() == ep.terminals.tolist()
        assert ep.instruction in {x["instruction"] for x in SMALL}
    assert back.attrs["policy"] == "expert" and int(back.attrs["attempts"]) >= 6
    assert not (tmp_path / "a.h5.parts").exists()
    np.testing.assert_array_equal(data.observations, back.observations)


def test_collect_is_independent_of_worker_count(tmp_path, suite_file):
    one = collect(cfg(tmp_path, "one.h5", suite_file=str(suite_file)), progress=False)
    two = collect(cfg(tmp_path, "two.h5", suite_file=str(suite_file), workers=2),
                  progress=False)
    np.testing.assert_array_equal(one.observations, two.observations)
    np.testing.assert_array_equal(one.actions, two.actions)


def test_collect_resumes_after_a_crash(tmp_path, suite_file, monkeypatch):
    clean = collect(cfg(tmp_path, "clean.h5", suite_file=str(suite_file)), progress=False)
    real_write = collect_mod.write_episodes
    calls = {"n": 0}

    def crash_on_second_chunk(data, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_write(data, path)

    monkeypatch.setattr(collect_mod, "write_episodes", crash_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg(tmp_path, "resumed.h5", suite_file=str(suite_file)), progress=False)
    monkeypatch.setattr(collect_mod, "write_episodes", real_write)
    assert (tmp_path / "resumed.h5.parts" / "chunk-00000.h5").exists()
    assert not (tmp_path / "resumed.h5").exists()  # nothing half-written
    resumed = collect(cfg(tmp_path, "resumed.h5", suite_file=str(suite_file)), progress=False)
    np.testing.assert_array_equal(clean.observations, resumed.observations)


def test_keep_failures_with_random_policy(tmp_path, suite_file):
    data = collect(cfg(tmp_path, "r.h5", suite_file=str(suite_file), policy="random",
                       keep_failures=True, episodes=8), progress=False)
    assert len(data) == 8
    assert not all(data.episode(i).success for i in range(8))
    timeouts = [data.episode(i) for i in range(8) if not data.episode(i).success]
    assert all(not ep.terminals.any() for ep in timeouts)  # a step-limit end is not terminal


def test_expert_beats_random_on_a_small_suite(suite_file):
    suite = load_suite(suite_file)
    expert = evaluate_policy("expert", suite, episodes=10, seed=0, progress=False)
    rand = evaluate_policy("random", suite, episodes=10, seed=0, progress=False)
    assert expert.levels["train"].success_rate >= 0.9
    assert expert.levels["easy"].success_rate == 1.0
    assert rand.levels["train"].success_rate < expert.levels["train"].success_rate
    j = expert.to_json()
    assert set(j["levels"]) == {"train", "easy"}
    easy = j["levels"]["easy"]  # 10 of 10: Wilson's 95% interval by hand is [0.7225, 1]
    assert (easy["successes"], easy["episodes"]) == (10, 10)
    assert easy["ci95"] == pytest.approx([0.72246, 1.0], abs=1e-5)


def test_cli_collect_evaluate_render(tmp_path, suite_file):
    runner = CliRunner()
    out = tmp_path / "real.h5"
    r = runner.invoke(main, ["collect", "--suite-file", str(suite_file), "--episodes", "3",
                             "--workers", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["evaluate", "--policy", "expert", "--suite-file", str(suite_file),
                             "--episodes", "4", "--workers", "1", "--json",
                             str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["policy"] == "expert" and result["levels"]["train"]["episodes"] == 4
    r = runner.invoke(main, ["render", str(out), "--index", "0", "--out", str(tmp_path / "a.gif")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.gif").stat().st_size > 0


def test_cli_reports_bad_suite_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(SMALL[0]) + "\n" + json.dumps(
        {**SMALL[0], "goal": {**SMALL[0]["goal"], "object": "pink"}}) + "\n")
    r = CliRunner().invoke(main, ["evaluate", "--policy", "random", "--suite-file", str(bad)])
    assert r.exit_code == 2
    assert f"{bad}:2:" in r.output and "pink" in r.output
    r = CliRunner().invoke(main, ["check-suite", str(bad)])
    assert r.exit_code == 2 and "unknown colour" in r.output


def test_builtin_suites_load():
    from kalm.data.suites import builtin_suite_path

    r = CliRunner().invoke(main, ["check-suite", str(builtin_suite_path("hard"))])
    assert r.exit_code == 0 and "hard:" in r.output


# ------------------------------------------------------------------ the env's success signal
class SignalEnv(gym.Env):
    """obs = [steps taken]; goal {"k", "mode"}. mode "info": success is reported in
    info["is_success"] at step k only, and the episode never terminates (Meta-World style);
    mode "fail": the episode terminates at step k without success. Truncates after 6 steps."""

    LIMIT = 6

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0.0, 10.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.goal: dict = {}
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.goal, self.t = dict(options["goal"]), 0
        return np.zeros(1, np.float32), {"is_success": False, "goal": self.goal}

    def step(self, action):
        self.t += 1
        success = self.goal["mode"] == "info" and self.t == self.goal["k"]
        terminated = self.goal["mode"] == "fail" and self.t == self.goal["k"]
        truncated = not terminated and self.t >= self.LIMIT
        return (np.full(1, self.t, np.float32), 0.0, terminated, truncated,
                {"is_success": success})


class Constant:
    """Action 0 always; with a batched form, so both evaluation paths run."""

    def begin(self, env, goal, instruction):
        pass

    def act(self, obs):
        return 0

    def act_batch(self, obs, goals, instructions):
        return np.zeros(len(obs), np.int64)


SIGNAL = EnvDefinition(
    name="signal", spec=EnvSpecInfo("signal", 1, "discrete", 2), state_low=[0.0],
    state_high=[10.0], make=SignalEnv, validate_goal=dict,
    is_success=lambda goal, obs: goal["mode"] == "info" and int(obs[0]) == goal["k"],
    max_steps=lambda goal: SignalEnv.LIMIT,
    episode_rewards=lambda goal, obs: np.zeros(len(obs) - 1, np.float32),
    policies={"constant": lambda seed: Constant()})


def test_success_is_the_envs_signal_not_termination(tmp_path):
    from kalm.data.episodes import EnvSpecInfo as Spec
    from kalm.data.episodes import EpisodeData, write_episodes
    from kalm.data.rollout import run_episode

    env = SignalEnv()
    late = run_episode(env, Constant(), {"k": 2, "mode": "info"}, "go", seed=0)
    assert late.length == 6 and not late.terminals.any()  # never terminates: a timeout for RL
    assert late.successes.tolist() == [False, True, False, False, False, False]
    assert late.success
    failed = run_episode(env, Constant(), {"k": 3, "mode": "fail"}, "go", seed=0)
    assert failed.terminals.tolist() == [False, False, True] and not failed.successes.any()
    assert not failed.success
    back = read_episodes(write_episodes(
        EpisodeData.from_episodes([late, failed], Spec("signal", 1, "discrete", 2)),
        tmp_path / "s.h5"))
    assert [e.success for e in back.episodes()] == [True, False]

    entries = [SuiteEntry("info at 2", "late", {"k": 2, "mode": "info"}),
               SuiteEntry("info at 9", "late", {"k": 9, "mode": "info"}),  # after the limit
               SuiteEntry("fail at 3", "ends", {"k": 3, "mode": "fail"})]
    suite = GoalSuite(entries)
    for k in (1, 3):  # one episode at a time, and batched across envs
        res = evaluate_policy("constant", suite, episodes=4, progress=False,
                              env=f"{Path(__file__)}:SIGNAL", vector_envs=k).to_json()
        late_level, ends = res["levels"]["late"], res["levels"]["ends"]
        assert (late_level["successes"], late_level["episodes"]) == (2, 4)
        assert late_level["ci95"] == pytest.approx([0.15004, 0.84996], abs=1e-5)  # by hand
        assert late_level["mean_length"] == 6.0
        assert (ends["successes"], ends["episodes"], ends["mean_length"]) == (0, 4, 3.0)


def test_claim_folder_reuses_matching_work_and_clears_or_moves_the_rest(tmp_path):
    from kalm.io import claim_folder, read_manifest

    folder = tmp_path / "work"
    assert claim_folder(folder, {"steps": 10}) is False  # new: made, with its manifest
    (folder / "result.txt").write_text("10 steps")
    assert claim_folder(folder, {"steps": 10}) is True  # same identity: reuse / resume
    assert (folder / "result.txt").read_text() == "10 steps"
    assert claim_folder(folder, {"steps": 20}) is False  # another identity: removed
    assert read_manifest(folder) == {"steps": 20} and not (folder / "result.txt").exists()
    (folder / "result.txt").write_text("20 steps")
    assert claim_folder(folder, {"steps": 30}, stale="move") is False  # ... or moved aside
    moved = list(tmp_path.glob("work.superseded-*"))
    assert len(moved) == 1 and (moved[0] / "result.txt").read_text() == "20 steps"
    assert read_manifest(moved[0]) == {"steps": 20}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["work", moved[0].name])
