"""Collection (determinism, resume, rewards) and evaluation of built-in policies via the CLI."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import kalm.data.collect as collect_mod
from kalm.cli import main
from kalm.data.collect import CollectConfig, collect
from kalm.data.episodes import read_episodes
from kalm.data.suites import load_suite
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
    lo, hi = j["levels"]["train"]["ci95"]
    assert 0 <= lo <= j["levels"]["train"]["success_rate"] <= hi <= 1
    assert j["levels"]["easy"]["episodes"] == 10


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
