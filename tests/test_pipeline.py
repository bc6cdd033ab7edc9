"""`kalm run`: stage records, skipping, superseding, kill-and-resume, the report, configs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from kalm.config import ConfigError
from kalm.io import file_sha256
from kalm.pipeline import RunConfig, Runner, Stage, load_run_config

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the Runner


def _stage(name, config, inputs, calls, content=None):
    def run(folder: Path) -> list[Path]:
        calls.append(name)
        p = folder / "out.txt"
        p.write_text(content or json.dumps(config))
        return [p]

    return Stage(name, config, inputs, run)


def test_runner_skips_finished_stages_and_chains_hashes(tmp_path):
    calls: list[str] = []
    log: list[str] = []
    r = Runner(tmp_path, log.append)
    r.run(_stage("a", {"x": 1}, [], calls))
    r.run(_stage("b", {"y": 1}, ["a"], calls))
    assert calls == ["a", "b"]
    rec = json.loads((tmp_path / "b" / "stage.json").read_text())
    assert rec["done"] and rec["inputs"] == {"a": r.hashes["a"]} and rec["wall_s"] >= 0
    assert rec["cpu_s"] >= 0 and rec["hash"] == r.hashes["b"] == r.stage_hash(
        _stage("b", {"y": 1}, ["a"], []))
    assert rec["outputs"] == {"out.txt": file_sha256(tmp_path / "b" / "out.txt")}
    assert rec["attempts"] == 1 and rec["stage"] == "b" and rec["config"] == {"y": 1}

    r2 = Runner(tmp_path, log.append)
    r2.run(_stage("a", {"x": 1}, [], calls))
    r2.run(_stage("b", {"y": 1}, ["a"], calls))
    assert calls == ["a", "b"]  # nothing re-ran
    assert sum("skipped" in m for m in log) == 2

    # an upstream config change reruns the stage and, through the hash chain, its consumer;
    # the old outputs are moved aside, not deleted
    r3 = Runner(tmp_path, log.append)
    r3.run(_stage("a", {"x": 2}, [], calls))
    r3.run(_stage("b", {"y": 1}, ["a"], calls))
    assert calls == ["a", "b", "a", "b"]
    moved = sorted(p.name for p in tmp_path.iterdir() if ".superseded-" in p.name)
    assert [m.split(".")[0] for m in moved] == ["a", "b"]
    assert json.loads((tmp_path / moved[0] / "out.txt").read_text()) == {"x": 1}


def test_runner_reruns_a_stage_whose_output_was_tampered_with(tmp_path):
    calls: list[str] = []
    Runner(tmp_path, lambda m: None).run(_stage("a", {"x": 1}, [], calls))
    (tmp_path / "a" / "out.txt").write_text("edited by hand")
    Runner(tmp_path, lambda m: None).run(_stage("a", {"x": 1}, [], calls))
    assert calls == ["a", "a"]
    rec = json.loads((tmp_path / "a" / "stage.json").read_text())
    assert rec["attempts"] == 2


def test_runner_records_wall_time_of_a_failed_attempt(tmp_path):
    def boom(folder: Path) -> list[Path]:
        time.sleep(0.05)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Runner(tmp_path, lambda m: None).run(Stage("a", {}, [], boom))
    rec = json.loads((tmp_path / "a" / "stage.json").read_text())
    assert not rec["done"] and rec["wall_s"] >= 0.05


def test_a_second_run_on_a_busy_folder_is_refused_before_touching_it(tmp_path):
    """Two `kalm run`s on one folder would resume the same stage into the same checkpoints."""
    from kalm.pipeline import exclusive_run_folder

    out = tmp_path / "run"
    out.mkdir()
    with exclusive_run_folder(out):
        busy = subprocess.run(
            [sys.executable, "-m", "kalm.cli", "run", "--config",
             str(ROOT / "configs" / "clevr-quick.yaml"), "--out", str(out)],
            capture_output=True, text=True, timeout=120)  # a run that started would not end
        assert busy.returncode != 0
        assert f"in use by another `kalm run` (pid {os.getpid()})" in busy.stderr
        assert sorted(p.name for p in out.iterdir()) == [".kalm-run.lock"]  # no stage started
    with exclusive_run_folder(out):  # released: the folder can be taken again
        pass


def test_superseded_folders_are_never_deleted(tmp_path):
    """A config changed back and forth keeps every earlier output folder."""
    calls: list[str] = []
    for x in (1, 2, 1, 2):
        Runner(tmp_path, lambda m: None).run(_stage("a", {"x": x}, [], calls))
    moved = sorted(p.name for p in tmp_path.iterdir() if ".superseded-" in p.name)
    assert len(moved) == 3 and len(set(moved)) == 3
    contents = sorted(json.loads((tmp_path / m / "out.txt").read_text())["x"] for m in moved)
    assert contents == [1, 1, 2]


def _fake_pipeline(cfg, calls: list[str]) -> list[Stage]:
    """The real stage list (names, configs, inputs) with work that only writes a file."""
    from kalm.pipeline import build_stages

    stages = build_stages(cfg)
    for s in stages:
        s.run = (lambda name: lambda folder: (calls.append(name),
                                              (folder / "o.txt").write_text(name),
                                              [folder / "o.txt"])[-1])(s.name)
        s.resolved = None
    return stages


def test_adding_an_algorithm_runs_only_its_stages(tmp_path):
    """Stage hashes cover what a stage reads: a new algorithm leaves trained policies alone."""
    cfg = load_run_config(ROOT / "configs" / "clevr-quick.yaml", out=str(tmp_path / "r"),
                          seeds=[0, 1])
    calls: list[str] = []
    runner = Runner(cfg.run_dir, lambda m: None)
    for s in _fake_pipeline(cfg, calls):
        runner.run(s)
    first = list(calls)
    assert "train-bc-seed0" in first and "report" in first

    bigger = dataclasses.replace(cfg, rl=dataclasses.replace(
        cfg.rl, algos=[*cfg.rl.algos, "bcq"], steps={**cfg.rl.steps, "bcq": 123}))
    calls.clear()
    runner = Runner(cfg.run_dir, lambda m: None)
    for s in _fake_pipeline(bigger, calls):
        runner.run(s)
    assert calls == ["train-bcq-seed0", "evaluate-bcq-seed0", "evaluate-dev-bcq-seed0",
                     "train-bcq-seed1", "evaluate-bcq-seed1", "evaluate-dev-bcq-seed1", "report"]

    # the imagination batch size changes speed only; the grounding device too
    faster = dataclasses.replace(
        bigger, imagine=dataclasses.replace(bigger.imagine, batch_size=7),
        evaluate=dataclasses.replace(bigger.evaluate, workers=1))
    calls.clear()
    runner = Runner(cfg.run_dir, lambda m: None)
    for s in _fake_pipeline(faster, calls):
        runner.run(s)
    assert calls == []


# ----------------------------------------------------------------------------- configs


def test_shipped_configs_load_and_name_bad_keys(tmp_path):
    for name in ("clevr-quick", "clevr-paper"):
        cfg = load_run_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.name == name and cfg.seeds == [0, 1, 2]
        assert set(cfg.rl.algos) == {"bc", "cql"}
    paper = load_run_config(ROOT / "configs" / "clevr-paper.yaml")
    assert paper.collect.episodes == 100_000 and paper.ground.epochs == 10
    assert paper.rl.steps == {"bc": 500_000, "cql": 500_000}

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nground:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"ground\.batch_sise"):
        load_run_config(bad)
    bad.write_text("name: x\nrl:\n  steps: {bc: many}\n")
    with pytest.raises(ConfigError, match=r"rl.steps.bc: expected an integer"):
        load_run_config(bad)
    bad.write_text("name: x\ncollect:\n  out: data/x.h5\n")
    with pytest.raises(ConfigError, match=r"collect\.out is chosen by `kalm run`"):
        load_run_config(bad)
    bad.write_text("name: x\nrl: {algos: [bc, sac], steps: {bc: 10}}\n")
    with pytest.raises(ConfigError, match="no entry for algo 'sac'"):
        load_run_config(bad)
    cfg = load_run_config(ROOT / "configs" / "clevr-quick.yaml", out=str(tmp_path / "r"),
                          seeds=[4, 5])
    assert cfg.seeds == [4, 5] and cfg.run_dir == tmp_path / "r"
    assert isinstance(cfg, RunConfig)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_backbone_dir(tmp_path_factory):
    from kalm.llm.backbone import tiny_backbone

    folder = tmp_path_factory.mktemp("tiny-backbone")
    bb = tiny_backbone(hidden=32, layers=1)
    bb.model.save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)
    return folder


def _tiny_config(path: Path, backbone: Path, ground_steps: int) -> Path:
    cfg = {
        "name": "tiny", "seeds": [0],
        "collect": {"episodes": 30, "workers": 1, "chunk_size": 10, "seed": 3},
        "ground": {"backbone": str(backbone), "steps": ground_steps, "batch_size": 4,
                   "save_every": 5, "eval_every": 20, "eval_episodes": 4, "bf16": False,
                   "metrics_episodes": 4, "explain_episodes": 2, "warmup_steps": 1},
        "imagine": {"levels": {"easy": 1, "rephrase": 1}, "max_steps": 4, "batch_size": 32},
        "rl": {"algos": ["bc"], "steps": {"bc": 30}},
        "evaluate": {"levels": ["easy", "rephrase"], "episodes": 3, "easy_episodes": 3,
                     "workers": 1},
        "report": {"gifs_per_level": 1},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _kalm_run(config: Path, out: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kalm.cli", "run", "--config", str(config), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


def _record(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "stage.json").read_text())


def _check_records(out: Path) -> dict[str, dict]:
    """Every current stage record of a finished run: done, with wall and CPU seconds, a
    SHA-256 hash, outputs whose recorded hashes are the files' own, and inputs that are the
    hashes of the upstream stages' records. Returns the records by stage name."""
    records = {p.name: _record(out, p.name) for p in out.iterdir()
               if (p / "stage.json").exists() and ".superseded-" not in p.name}
    assert records
    for name, rec in records.items():
        assert rec["stage"] == name and rec["done"], name
        assert rec["wall_s"] >= 0 and rec["cpu_s"] >= 0 and rec["attempts"] >= 1, name
        assert len(rec["hash"]) == 64 and int(rec["hash"], 16) >= 0, name
        assert rec["outputs"], name
        for rel, sha in rec["outputs"].items():
            assert file_sha256(out / name / rel) == sha, (name, rel)
        for upstream, sha in rec["inputs"].items():
            assert records[upstream]["hash"] == sha, (name, upstream)
    return records


def _check_data_stages(out: Path, records: dict[str, dict]) -> None:
    """The imagine and label stages' stats agree with the episode files they describe."""
    from kalm.data.episodes import read_episodes

    for name in records:
        if name.startswith("imagine-"):
            stats = json.loads((out / name / "imagined.stats.json").read_text())
            imagined = read_episodes(out / name / "imagined.h5")
            assert len(imagined) == stats["kept"] == stats["generated"] > 0, name
            assert sum(v["rollouts"] for v in stats["levels"].values()) == stats["generated"]
            assert sum(v["transitions"] for v in stats["levels"].values()) == int(
                imagined.lengths.sum()), name
        if name.startswith("label-"):
            stats = json.loads((out / name / "label_stats.json").read_text())
            labelled = read_episodes(out / name / stats["files"]["all"])
            source = read_episodes(out / name.replace("label-", "imagine-", 1) / "imagined.h5")
            assert len(labelled) == stats["kept"]["all"] == stats["generated"] == len(source)
            assert stats["transitions"]["all"] == int(labelled.lengths.sum()), name
            assert int(labelled.terminals.sum()) == stats["judged_successful"], name
            if stats["files"]["success"] is not None:
                success = read_episodes(out / name / stats["files"]["success"])
                assert len(success) == stats["kept"]["success"] == stats["judged_successful"]
                assert stats["transitions"]["success"] == int(success.lengths.sum()), name
            else:
                assert stats["kept"]["success"] == stats["judged_successful"] == 0, name


def _check_eval(path: Path, episodes: int) -> dict:
    ev = json.loads(path.read_text())
    assert ev["episodes"] == episodes, path
    assert 0 <= ev["successes"] <= episodes, path
    assert ev["success_rate"] == pytest.approx(ev["successes"] / episodes), path
    return ev


@pytest.mark.timeout(600)
def test_run_is_killed_mid_grounding_and_resumes(tmp_path, tiny_backbone_dir):
    config = _tiny_config(tmp_path / "tiny.yaml", tiny_backbone_dir, ground_steps=60)
    out = tmp_path / "run"
    proc = _kalm_run(config, out)
    ckpts = out / "ground" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(ckpts.glob("step-*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert _record(out, "collect")["done"]
    assert not _record(out, "ground")["done"]
    killed_at = len([x for x in (out / "ground" / "metrics.jsonl").read_text().splitlines()
                     if '"split": "train"' in x])
    assert 0 < killed_at < 60

    # second run: collect is skipped, grounding resumes from its checkpoint, the rest runs
    # (fewer steps this time keeps the test quick: the config change supersedes ground)
    text = subprocess.run(
        [sys.executable, "-m", "kalm.cli", "run", "--config", str(config), "--out", str(out)],
        capture_output=True, text=True, check=True).stdout
    assert "collect: up to date" in text
    assert "ground: resuming" in text
    ground = _record(out, "ground")
    assert ground["done"] and ground["attempts"] == 2
    metrics = json.loads((out / "ground" / "grounding_metrics.json").read_text())
    assert ground["resolved"]["dtype"] == metrics["dtype"] == "float32"  # bf16: false below
    assert ground["resolved"]["bf16_probe"]["reason"] == "forced"
    assert _record(out, "collect")["attempts"] == 1
    meta = json.loads((out / "ground" / "kalm_model.json").read_text())
    assert meta["train"]["steps_done"] == 60
    # the resumed log reads as an uninterrupted run's: every step once, in order
    log = [json.loads(x) for x in (out / "ground" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["split"] == "train"] == list(range(1, 61))
    assert [r["step"] for r in log if r["split"] == "val"] == [20, 40, 60]
    assert metrics["steps"] == metrics["steps_planned"] == 60
    assert metrics["val_episodes"] == 3  # 10% of the 30 collected episodes, under the cap of 4
    records = _check_records(out)
    from kalm.data.episodes import read_episodes

    real = read_episodes(out / "collect" / "real.h5")
    assert len(real) == 30 and real.spec.obs_dim == 10 and real.spec.action_dim == 40
    assert meta["train"]["episodes"] + meta["train"]["val_episodes"] == 30
    _check_data_stages(out, records)
    for row, level in (("baseline-seed0", "easy"), ("baseline-seed0", "rephrase"),
                       ("kalm-easy-seed0", "easy"), ("kalm-rephrase-seed0", "rephrase")):
        _check_eval(out / "evaluate-bc-seed0" / row / f"eval-{level}.json", 3)
    report = (out / "report" / "report.md").read_text()
    assert "| easy |" in report and "BC KALM" in report
    assert (out / "report" / "report.html").read_text().count("data:image/") >= 3
    assert list((out / "report").glob("easy-0.gif"))

    # third run: everything up to date, every record as it was
    text = subprocess.run(
        [sys.executable, "-m", "kalm.cli", "run", "--config", str(config), "--out", str(out)],
        capture_output=True, text=True, check=True).stdout
    assert "running" not in text and "resuming" not in text
    assert text.count("up to date") == len([p for p in out.iterdir()
                                            if (p / "stage.json").exists()])
    assert _check_records(out) == records

    # changing the RL steps reruns training, evaluation and the report only
    raw = yaml.safe_load(config.read_text())
    raw["rl"]["steps"]["bc"] = 20
    config.write_text(yaml.safe_dump(raw))
    text = subprocess.run(
        [sys.executable, "-m", "kalm.cli", "run", "--config", str(config), "--out", str(out)],
        capture_output=True, text=True, check=True).stdout
    for stage in ("collect", "ground", "imagine-easy", "imagine-rephrase"):
        assert f"{stage}: up to date" in text
    for stage in ("train-bc-seed0", "evaluate-bc-seed0", "report"):
        assert f"{stage}: config or inputs changed" in text
    after = _check_records(out)
    for stage in ("collect", "ground", "imagine-easy", "imagine-rephrase"):
        assert after[stage] == records[stage], stage
    assert after["train-bc-seed0"]["config"]["steps"] == 20
    assert after["train-bc-seed0"]["hash"] != records["train-bc-seed0"]["hash"]
    old = [p for p in out.iterdir() if p.name.startswith("train-bc-seed0.superseded-")]
    assert len(old) == 1 and _record(out, old[0].name) == records["train-bc-seed0"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_paper_config_runs_one_step_of_every_stage_on_a_slice(tmp_path):
    """The paper-scale config with the default backbone, each stage for a step or two."""
    out = tmp_path / "paper"
    text = subprocess.run(
        [sys.executable, "-m", "kalm.cli", "run", "--config",
         str(ROOT / "configs" / "clevr-paper.yaml"), "--out", str(out), "--smoke"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout  # a real backbone: both cores
    smoke = Path(f"{out}-smoke")
    stages = [p.name for p in smoke.iterdir() if (p / "stage.json").exists()]
    assert {"collect", "ground", "imagine-hard", "train-cql-seed0", "evaluate-bc-seed0",
            "report"} <= set(stages), text
    assert all(_record(smoke, s)["done"] for s in stages)
    meta = json.loads((smoke / "ground" / "kalm_model.json").read_text())
    assert meta["train"]["steps_done"] == 1
    from kalm.data.episodes import read_episodes

    # the first 4 goals, 2 proposals each (the config's best-of-8, capped at 2 in a smoke run)
    assert len(read_episodes(smoke / "imagine-hard" / "imagined.h5")) == 4 * 2
    assert meta["backbone"]["name"] == "smollm2-135m-instruct"
    assert (smoke / "report" / "report.md").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_metaworld_paper_config_runs_every_stage_on_a_slice(tmp_path):
    """Continuous actions through the whole chain: the Meta-World paper config with the default
    backbone, each stage for a step or two, with the expert and random reference rows."""
    out = tmp_path / "mw"
    text = subprocess.run(
        [sys.executable, "-m", "kalm.cli", "run", "--config",
         str(ROOT / "configs" / "metaworld-paper.yaml"), "--out", str(out), "--smoke",
         "--reference-rows", "expert,random"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout
    smoke = Path(f"{out}-smoke")
    stages = [p.name for p in smoke.iterdir() if (p / "stage.json").exists()]
    assert {"collect", "dynamics", "ground", "imagine-hard", "label-easy", "train-td3bc-seed0",
            "evaluate-iql-seed0", "evaluate-expert", "evaluate-random", "report"} <= set(stages)
    assert all(_record(smoke, s)["done"] for s in stages), text
    from kalm.data.episodes import read_episodes

    imagined = read_episodes(smoke / "imagine-easy" / "imagined.h5")
    assert imagined.spec.action_type == "continuous"
    assert np.abs(imagined.actions).max() <= 1.0  # clipped to the arm's bounds
    expert = json.loads((smoke / "evaluate-expert" / "eval-train.json").read_text())
    assert sum(t["episodes"] for t in expert["tasks"].values()) == expert["episodes"]
    report = (smoke / "report" / "report.md").read_text()
    assert "Success per task" in report and "scripted expert" in report


@pytest.mark.timeout(600)
def test_run_pipeline_on_the_toy_env(tmp_path, tiny_backbone_dir):
    """`kalm run` is not CLEVR-bound: the example grid world goes through every stage."""
    cfg = {
        "name": "toy", "env": "examples/toy_env/toy.py:TOY", "seeds": [0],
        "collect": {"episodes": 60, "workers": 1, "chunk_size": 30, "epsilon": 0.1},
        "ground": {"backbone": str(tiny_backbone_dir), "steps": 20, "batch_size": 8,
                   "eval_every": 10, "eval_episodes": 4, "metrics_episodes": 4,
                   "explain_episodes": 2, "warmup_steps": 1},
        "imagine": {"levels": {"unseen": 4}, "batch_size": 16},
        "rl": {"algos": ["bc"], "steps": {"bc": 30}, "keep": {"bc": "all"},
               "reference_rows": ["paper", "shooting", "planner_uniform", "planner_llm",
                                  "llm_policy", "verified", "expert", "random"]},
        "dynamics": {"epochs": 3, "hidden": 32},
        "shooting": {"candidates": 16, "horizon": 6},
        "planner": {"candidates": 16, "iterations": 2, "horizon": 6, "per_goal": {"unseen": 2}},
        "evaluate": {"levels": ["unseen"], "episodes": 4, "workers": 1,
                     "llm_policy_episodes": 3},
    }
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "toy-run"
    subprocess.run([sys.executable, "-m", "kalm.cli", "run", "--config", str(config),
                    "--out", str(out)], capture_output=True, text=True, check=True, cwd=ROOT)
    from kalm.data.episodes import read_episodes

    real = read_episodes(out / "collect" / "real.h5")
    assert (real.spec.obs_dim, real.spec.action_dim) == (2, 4)
    imagined = read_episodes(out / "imagine-unseen" / "imagined.h5")
    assert imagined.spec.env == cfg["env"] and len(imagined) == 4 * 4  # 4 unseen goals
    ev = json.loads((out / "evaluate-bc-seed0" / "kalm-unseen-seed0" / "eval-unseen.json")
                    .read_text())
    assert ev["episodes"] == 4
    report = (out / "report" / "report.md").read_text()
    assert "| unseen | 4 |" in report
    # the reference rows, each from its own stages
    for row in ("paper-unseen-seed0", "shooting-unseen-seed0", "verified-unseen-seed0",
                "planner_uniform-unseen-seed0", "planner_llm-unseen-seed0"):
        variant = row.split("-")[0]
        ev = json.loads((out / f"evaluate-bc-{variant}-seed0" / row / "eval-unseen.json")
                        .read_text())
        assert ev["episodes"] == 4
    shot = read_episodes(out / "shoot-unseen" / "labelled.h5")
    assert len(shot) == len(imagined) and shot.lengths.max() <= 6
    # the planner rows: one searched rollout per task, from a uniform prior or the LLM's
    # (the uniform row: 2 fresh tasks per goal, `planner.per_goal`; the LLM row: its 4)
    for prior, tasks in (("uniform", 4 * 2), ("llm", len(imagined))):
        planned = json.loads((out / f"plan-{prior}-unseen" / "label_stats.json").read_text())
        assert planned["tasks"] == tasks and planned["config"]["prior"] == prior
        assert planned["proposer"] == f"planner ({prior} prior)"
        assert planned["candidates_tried"] >= 16 * tasks
        assert len(read_episodes(out / f"plan-{prior}-unseen" / "labelled.h5")) == tasks
    assert planned["source"] == "imagined.h5"
    assert json.loads((out / "plan-uniform-unseen" / "label_stats.json").read_text())[
        "source"] == "unseen suite, 2 per goal"
    assert "planner, uniform prior (no LLM)" in report and "planner, LLM prior" in report
    llm = json.loads((out / "evaluate-llm-policy" / "eval-unseen.json").read_text())
    assert llm["episodes"] == 3
    assert "BC KALM, paper mode" in report and "BC no LLM (shooting)" in report
    assert "simulator-verified LLM rollouts (diagnostic)" in report
    verified = json.loads((out / "verify-unseen" / "label_stats.json").read_text())
    assert verified["uses_simulator"] and verified["generated"] == len(imagined)
    assert "The grounded LLM as the policy" in report and "| unseen | 3 |" in report
    # the env's own policies on the same scenes; the toy's goals name no task: no task table
    for policy in ("expert", "random"):
        ev = json.loads((out / f"evaluate-{policy}" / "eval-unseen.json").read_text())
        assert ev["episodes"] == 4 and "tasks" not in ev
    assert "scripted expert (ceiling)" in report and "Success per task" not in report
    label = json.loads((out / "label-unseen" / "label_stats.json").read_text())
    assert label["labeller"] == "ensemble" and label["generated"] == len(imagined)
    records = _check_records(out)
    assert len(real) == 60 and len(imagined) == 4 * 4
    _check_data_stages(out, records)
    assert verified["generated"] == len(read_episodes(out / "verify-unseen" / "labelled.h5"))
    evals = sorted(out.glob("evaluate-bc*-seed0/*/eval-unseen.json"))
    assert len(evals) == 7  # baseline, KALM, paper, shooting, 2 planners, verified
    for path in evals:
        _check_eval(path, 4)


def test_every_subcommand_is_documented():
    from click.testing import CliRunner

    from kalm.cli import main

    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, cmd in main.commands.items():
        assert name in top.output
        assert f"kalm {name}" in readme, f"{name} is missing from the README's command list"
        res = runner.invoke(main, [name, "--help"])
        assert res.exit_code == 0, name
        assert cmd.help and len(cmd.help.split()) >= 5, f"{name} has no real help text"


def test_run_help_names_every_reference_row():
    from kalm.cli import main
    from kalm.run_folder import REFERENCES

    option = next(p for p in main.commands["run"].params if p.name == "reference_rows")
    for row in REFERENCES:
        assert re.search(rf"\b{row}\b", option.help), f"--reference-rows help omits {row}"
