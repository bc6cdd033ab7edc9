"""Reference rows on equal footing with KALM: the paper row learns from one greedy rollout per
task (not all N proposals of a best-of-N file), the equal-compute shooting row gets the
CPU-seconds the LLM's rollouts of the level cost, and every stage records its CPU-seconds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kalm.data.episodes import read_episodes, write_episodes
from kalm.imagination.relabel import first_proposals, write_first_proposals
from kalm.pipeline import Runner, Stage, llm_cpu_seconds, machine_busy_seconds, train_config
from kalm.run_folder import (
    PAPER,
    SHOOTING_MATCHED,
    first_proposals_data,
    imagined_data,
    kalm_data,
    load_run_config,
    stage_names,
)
from test_pipeline import _fake_pipeline
from test_shooting import _tasks

ROOT = Path(__file__).resolve().parents[1]
LEFT = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}


def _quick(tmp_path: Path, rows: list[str]):
    return load_run_config(ROOT / "configs" / "clevr-quick.yaml", out=str(tmp_path / "r"),
                           seeds=[0], reference_rows=rows)


def test_first_proposals_keep_the_greedy_one_per_task(tmp_path):
    data = _tasks([LEFT, LEFT, LEFT], proposals=4)
    data.observations[:, 0, 0] = np.arange(len(data)) / 100  # tell the rows apart
    src = tmp_path / "imagined.h5"
    write_episodes(data, src)
    out = write_first_proposals(src, tmp_path / "first.h5")
    first = read_episodes(out)
    assert len(first) == 3 and set(first.extras["proposal"]) == {0}
    assert np.allclose(first.observations[:, 0, 0], [0.0, 0.04, 0.08])
    assert len(first_proposals(first)) == 3  # a file of single proposals stays as it is
    mtime = out.stat().st_mtime_ns
    assert write_first_proposals(src, out).stat().st_mtime_ns == mtime  # up to date: kept


def test_the_paper_row_reads_the_greedy_proposals(tmp_path):
    cfg = _quick(tmp_path, ["paper"])
    assert cfg.imagine.proposals == 8
    root = cfg.run_dir
    paths = kalm_data(cfg, root, "bc", PAPER)
    assert paths == {lv: str(first_proposals_data(root, lv)) for lv in cfg.imagine.levels}
    assert train_config(cfg, "bc", 0, PAPER)["proposals"] == "first"
    single = dataclasses.replace(cfg, imagine=dataclasses.replace(cfg.imagine, proposals=1))
    assert kalm_data(single, root, "bc", PAPER)["easy"] == str(imagined_data(root, "easy"))
    assert "proposals" not in train_config(single, "bc", 0, PAPER)


def test_the_matched_shooting_row_waits_for_the_llm_stages(tmp_path):
    cfg = _quick(tmp_path, ["shooting", SHOOTING_MATCHED])
    names = stage_names(cfg)
    assert names.index("shoot-matched-hard") > names.index("label-hard")
    stages = {s.name: s for s in _fake_pipeline(cfg, [])}
    assert stages["shoot-matched-easy"].inputs == ["imagine-easy", "dynamics", "label-easy"]
    assert stages["train-cql-shooting_matched-seed0"].inputs[1:] == [
        "shoot-matched-rephrase", "shoot-matched-easy", "shoot-matched-hard"]
    with pytest.raises(RuntimeError, match="no finished record with cpu_s"):
        llm_cpu_seconds(cfg.run_dir, "easy")


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_stage_records_carry_cpu_seconds_and_sum_for_the_matched_row(tmp_path):
    root = tmp_path / "r"
    runner = Runner(root, lambda m: None)

    def work(seconds: float):
        def run(folder: Path) -> list[Path]:
            _burn(seconds)
            (folder / "o.txt").write_text("x")
            return [folder / "o.txt"]
        return run

    imagine = runner.run(Stage("imagine-easy", {}, [], work(0.3)))
    label = runner.run(Stage("label-easy", {}, ["imagine-easy"], work(0.1)))
    assert imagine["cpu_s"] >= 0.29 and 0.09 <= label["cpu_s"] < imagine["cpu_s"]
    assert llm_cpu_seconds(root, "easy") == pytest.approx(imagine["cpu_s"] + label["cpu_s"])


def _burner(seconds: float) -> subprocess.Popen:
    code = (f"import time\nend = time.process_time() + {seconds}\n"
            "while time.process_time() < end: pass")
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_stage_record_says_what_other_processes_took_beside_it(tmp_path, monkeypatch):
    """Hand-made machine readings: the stage's own CPU is not counted as the others'."""
    import kalm.pipeline as pipeline

    logs: list[str] = []
    runner = Runner(tmp_path / "r", logs.append)

    def work(folder: Path) -> list[Path]:
        _burn(0.2)
        (folder / "o.txt").write_text("x")
        return [folder / "o.txt"]

    readings = iter([100.0, 103.0])
    monkeypatch.setattr(pipeline, "machine_busy_seconds", lambda: next(readings))
    busy = runner.run(Stage("busy", {}, [], work))
    assert busy["others_cpu_s"] == pytest.approx(3.0 - busy["cpu_s"])
    assert any("busy: other processes kept" in line and "shared machine" in line
               for line in logs)
    logs.clear()
    readings = iter([50.0, 50.0])  # nothing at all: the stage's own ticks not yet counted
    monkeypatch.setattr(pipeline, "machine_busy_seconds", lambda: next(readings))
    idle = runner.run(Stage("idle", {}, [], work))
    assert idle["others_cpu_s"] == 0.0 and not any("other processes" in x for x in logs)
    monkeypatch.setattr(pipeline, "machine_busy_seconds", lambda: None)  # no /proc/stat
    assert "others_cpu_s" not in runner.run(Stage("elsewhere", {}, [], work))


def _foreign_burner(tmp_path: Path, seconds: float) -> int:
    """A burner that is not this process's child (started through a shell that exits at once,
    so it is reparented): someone else's job on the machine. Returns its pid."""
    script = tmp_path / "burn.py"
    script.write_text(f"import time\nend = time.process_time() + {seconds}\n"
                      "while time.process_time() < end: pass\n")
    out = subprocess.run(["sh", "-c", f'"{sys.executable}" "{script}" >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while Path(f"/proc/{pid}").exists() and time.time() < end:
        time.sleep(0.05)


@pytest.mark.skipif(machine_busy_seconds() is None, reason="no /proc/stat here")
def test_a_process_burning_beside_a_stage_is_counted(tmp_path):
    runner = Runner(tmp_path / "r", lambda m: None)

    def wait(folder: Path) -> list[Path]:
        time.sleep(1.5)  # no CPU of its own
        (folder / "o.txt").write_text("x")
        return [folder / "o.txt"]

    pid = _foreign_burner(tmp_path, 0.6)
    try:
        record = runner.run(Stage("waiting", {}, [], wait))
    finally:
        _wait_gone(pid)
    assert record["cpu_s"] < 0.3
    assert record["others_cpu_s"] >= 0.3


@pytest.mark.skipif(machine_busy_seconds() is None, reason="no /proc/stat here")
def test_a_stage_s_own_workers_count_as_its_cpu_while_they_live(tmp_path):
    """A worker pool outlives the stage that used it (kalm.data.parallel keeps it for the
    next): a child process burning during the stage, not reaped when the stage ends, is the
    stage's CPU (before, it was missing from cpu_s and counted as another job's)."""
    runner = Runner(tmp_path / "r", lambda m: None)
    workers: list[subprocess.Popen] = []

    def work_in_a_child(folder: Path) -> list[Path]:
        workers.append(_burner(0.6))
        time.sleep(1.5)  # the child burns and exits; nobody waits for it during the stage
        (folder / "o.txt").write_text("x")
        return [folder / "o.txt"]

    try:
        record = runner.run(Stage("pooled", {}, [], work_in_a_child))
    finally:
        for w in workers:
            w.wait()
    # the child's 0.6 s (and its start-up) once: not missing, not counted twice (reaped and
    # live); others_cpu_s is not checked, the test suite's other workers share the machine
    assert 0.5 <= record["cpu_s"] < 1.0


def test_a_new_env_version_collects_again(tmp_path):
    """CLEVR's physics changed (version 2): a run folder collected before must not be reused;
    an env still at version 1 keeps its old stage hashes."""
    from kalm.pipeline import collect_config

    cfg = _quick(tmp_path, [])
    assert collect_config(cfg)["env_version"] == 2
    mw = load_run_config(ROOT / "configs" / "metaworld-quick.yaml", out=str(tmp_path / "m"))
    assert "env_version" not in collect_config(mw)


def test_the_planner_rows_read_the_llm_proposals_and_the_ensemble(tmp_path):
    cfg = _quick(tmp_path, ["planner_uniform", "planner_llm"])
    names = stage_names(cfg)
    assert "dynamics" in names and names.index("plan-llm-hard") > names.index("imagine-hard")
    stages = {s.name: s for s in _fake_pipeline(cfg, [])}
    assert stages["plan-uniform-easy"].inputs == ["imagine-easy", "dynamics"]
    assert stages["plan-llm-easy"].config["prior"] == "llm"
    assert stages["plan-uniform-easy"].config["prior"] == "uniform"
    assert stages["plan-uniform-easy"].config["min_votes"] == cfg.label.min_votes
    assert stages["train-bc-planner_llm-seed0"].inputs[1:] == [
        "plan-llm-rephrase", "plan-llm-easy", "plan-llm-hard"]
    root = cfg.run_dir
    assert kalm_data(cfg, root, "bc", "planner_uniform") == {}  # nothing planned yet


def test_the_uniform_planner_row_draws_more_tasks_per_goal_where_asked(tmp_path):
    from kalm.config import ConfigError
    from kalm.imagination.planner import PlannerConfig

    cfg = _quick(tmp_path, ["planner_uniform", "planner_llm"])
    before = {s.name: s.config for s in _fake_pipeline(cfg, [])}
    more = dataclasses.replace(cfg, planner=dataclasses.replace(cfg.planner, per_goal={"hard": 6}))
    after = {s.name: s.config for s in _fake_pipeline(more, [])}
    assert after["plan-uniform-hard"]["per_goal"] == 6
    # the LLM imagined 2 per hard goal: its row plans those, whatever per_goal says
    assert after["plan-llm-hard"] == before["plan-llm-hard"]
    assert after["plan-uniform-easy"] == before["plan-uniform-easy"]
    # unset, nothing new is hashed: planner stages of older run folders stay done
    fields = {f.name for f in dataclasses.fields(PlannerConfig)}
    assert set(before["plan-uniform-hard"]) == {"level", "min_votes", *fields}
    search = more.planner.search("uniform")
    assert type(search) is PlannerConfig and search.prior == "uniform"
    assert more.planner.tasks_per_goal("uniform", "hard") == 6
    assert more.planner.tasks_per_goal("llm", "hard") is None
    assert more.planner.tasks_per_goal("uniform", "easy") is None
    with pytest.raises(ConfigError, match=r"planner.per_goal.unseen: .*imagine stage's levels"):
        dataclasses.replace(cfg, planner=dataclasses.replace(cfg.planner, per_goal={"unseen": 2}))
    with pytest.raises(ConfigError, match=r"planner.per_goal.hard: .*>= 1, got 0"):
        dataclasses.replace(cfg, planner=dataclasses.replace(cfg.planner, per_goal={"hard": 0}))
    assert more.smoke().planner.per_goal == {"hard": 1}


def test_the_planner_config_is_the_quick_config_with_the_measured_planner(tmp_path):
    """configs/clevr-planner.yaml: the quick run plus the symmetric ensemble and a uniform
    planner row with 10 tasks per hard goal; nothing else differs from the quick config."""
    from kalm.run_folder import load_run_config

    root = Path(__file__).resolve().parents[1] / "configs"
    quick = load_run_config(root / "clevr-quick.yaml", out=str(tmp_path / "q"))
    cfg = load_run_config(root / "clevr-planner.yaml", out=str(tmp_path / "q"))
    assert cfg.dynamics.symmetric_copies == 16 and cfg.rl.reference_rows == ["planner_uniform"]
    assert cfg.planner.tasks_per_goal("uniform", "hard") == 10
    stages = {s.name: s.config for s in _fake_pipeline(cfg, [])}
    assert stages["plan-uniform-hard"]["per_goal"] == 10
    same = dataclasses.replace(cfg, name=quick.name, dynamics=quick.dynamics, rl=quick.rl,
                               planner=quick.planner)
    assert same == quick
