"""`kalm run`: collect -> (dynamics) -> ground -> imagine -> label (or plan) -> train -> evaluate
-> report.

Every stage owns one folder under the run folder and a record (`stage.json`) with its resolved
config, the hash of that config and of its inputs' records, its output files' checksums and its
wall time. A rerun skips a stage whose record hash and outputs match; a stage that was interrupted
resumes from its own checkpoints (collection chunks, grounding checkpoints, imagination chunks,
RL checkpoints, finished evaluations); a stage whose config or inputs changed is moved aside to
`<stage>.superseded-<old hash>` (never deleted) and run again, and so is everything downstream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kalm.config import ConfigError, dump_yaml, to_dict
from kalm.io import digest, file_sha256, superseded_name, write_json
from kalm.run_folder import (
    COLLECT,
    CONFIG_FILE,
    DYNAMICS,
    GROUND,
    LLM_POLICY,
    LLM_POLICY_STAGE,
    PAPER,
    PLANNERS,
    POLICY_REFERENCES,
    RECORD,
    REPORT,
    SHOOTING,
    SHOOTING_MATCHED,
    VERIFIED,
    RunConfig,
    compare_config,
    dev_split,
    evaluate_stage,
    first_proposals_data,
    imagine_stage,
    imagined_data,
    label_stage,
    load_run,
    load_run_config,
    needs_dynamics,
    paper_reads_first_proposals,
    plan_stage,
    real_data,
    reference_policy_stage,
    shoot_matched_stage,
    shoot_stage,
    stage_names,
    train_stage,
    variants,
    verify_stage,
)

# the config and layout used to live here; kept importable for scripts written against it
__all__ = ["RunConfig", "Runner", "Stage", "build_stages", "load_run", "load_run_config",
           "run_pipeline"]


# ----------------------------------------------------------------------------- stage records

@dataclass
class Stage:
    name: str
    config: dict[str, Any]
    inputs: list[str]  # names of the stages it reads from
    run: Callable[[Path], list[Path]]  # does the work in its folder; returns its output files
    # facts the stage settled while running (e.g. the dtype grounding chose), read from its
    # folder after it finished and kept in the record next to the config that allowed them
    resolved: Callable[[Path], dict[str, Any]] | None = None


def llm_cpu_seconds(root: Path, level: str) -> float:
    """The CPU-seconds the LLM's rollouts of LEVEL cost: its imagine and label stages'."""
    total = 0.0
    for name in (imagine_stage(level), label_stage(level)):
        record = read_record(root / name)
        if record is None or not record.get("done") or "cpu_s" not in record:
            raise RuntimeError(f"{root / name}: no finished record with cpu_s (CPU-seconds); "
                               f"run the stage with this version of kalm first")
        total += float(record["cpu_s"])
    return total


def cpu_seconds() -> float:
    """CPU-seconds of this process (all its threads) and of its child processes (collection and
    evaluation workers), finished or running: what a stage costs on a shared machine, where
    wall time also counts the other jobs."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.process_time() + children.ru_utime + children.ru_stime
            + live_children_cpu_seconds())


def live_children_cpu_seconds() -> float:
    """CPU-seconds of this process's child processes that have not been reaped yet, with their
    own reaped children (Linux's /proc; 0 elsewhere). The worker pools live across stages
    (`kalm.data.parallel`), and the kernel adds a child to RUSAGE_CHILDREN only once it is
    reaped: without this a stage's workers would count as other jobs on the machine."""
    me, total = os.getpid(), 0
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return 0.0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone meanwhile, or not readable
            continue
        fields = text.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
        if len(fields) > 14 and fields[1] == str(me):
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU-seconds every process on the machine has spent busy since boot (Linux's /proc/stat;
    None elsewhere). Less this process's `cpu_seconds`, what other jobs took beside a stage:
    on 2 cores one other torch job slows a stage several times over, and a time budget then
    buys fewer grounding steps, so a stage's record says how busy the machine was."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal (no guest)
    return busy / os.sysconf("SC_CLK_TCK")


# a stage is reported as sharing the machine when other processes kept this many cores busy
SHARED_MACHINE_CORES = 0.25


def read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / RECORD
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _outputs_match(folder: Path, outputs: dict[str, str]) -> bool:
    return bool(outputs) and all(
        (folder / rel).is_file() and file_sha256(folder / rel) == sha
        for rel, sha in outputs.items())


class Runner:
    """Runs stages in order, skipping finished ones and superseding changed ones."""

    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = root
        self.log = log
        self.hashes: dict[str, str] = {}

    def stage_hash(self, stage: Stage) -> str:
        return digest({"stage": stage.name, "config": stage.config,
                        "inputs": {n: self.hashes[n] for n in stage.inputs}})

    def state(self, stage: Stage) -> tuple[str, dict[str, Any] | None]:
        """What a run would do with the stage, and its record: `done` (outputs match, skip),
        `changed` (other hash: supersede), `interrupted` (resume) or `to run`."""
        record = read_record(self.root / stage.name)
        if record is None:
            return "to run", None
        if record.get("hash") != self.stage_hash(stage):
            return "changed", record
        if record.get("done") and _outputs_match(self.root / stage.name, record["outputs"]):
            return "done", record
        return "interrupted", record

    def run(self, stage: Stage) -> dict[str, Any]:
        folder = self.root / stage.name
        digest = self.stage_hash(stage)
        state, record = self.state(stage)
        if state == "changed":
            old = superseded_name(folder, record.get("hash", "x")[:8])
            folder.rename(old)
            self.log(f"[kalm run] {stage.name}: config or inputs changed; old outputs moved to "
                     f"{old.name}")
            record = None
        if state == "done":
            self.log(f"[kalm run] {stage.name}: up to date (hash {digest[:8]}), skipped")
            self.hashes[stage.name] = digest
            return record
        resumed = record is not None
        self.log(f"[kalm run] {stage.name}: {'resuming' if resumed else 'running'} "
                 f"(hash {digest[:8]})")
        folder.mkdir(parents=True, exist_ok=True)
        previous = float(record.get("wall_s", 0.0)) if record else 0.0
        previous_cpu = float(record.get("cpu_s", 0.0)) if record else 0.0
        previous_others = record.get("others_cpu_s") if record else None
        record = {"stage": stage.name, "hash": digest, "config": stage.config,
                  "inputs": {n: self.hashes[n] for n in stage.inputs}, "done": False,
                  "wall_s": previous, "cpu_s": previous_cpu,
                  "attempts": int(record.get("attempts", 0) + 1) if record else 1,
                  "outputs": {}}
        write_json(record, folder / RECORD)
        t0, c0, m0 = time.time(), cpu_seconds(), machine_busy_seconds()
        try:
            outputs = stage.run(folder)
        finally:
            wall, cpu, m1 = time.time() - t0, cpu_seconds() - c0, machine_busy_seconds()
            record["wall_s"] = previous + wall
            record["cpu_s"] = previous_cpu + cpu
            if m0 is not None and m1 is not None:
                # what other processes took beside the stage (tick rounding: never below 0)
                others = max(0.0, m1 - m0 - cpu)
                record["others_cpu_s"] = float(previous_others or 0.0) + others
                if wall > 0 and others / wall >= SHARED_MACHINE_CORES:
                    self.log(f"[kalm run] {stage.name}: other processes kept "
                             f"{others / wall:.1f} cores busy beside this stage; its wall time "
                             "(and a time budget's step count) are a shared machine's")
            write_json(record, folder / RECORD)
        record["outputs"] = {str(p.relative_to(folder)): file_sha256(p) for p in outputs}
        if stage.resolved is not None:
            record["resolved"] = stage.resolved(folder)
        record["done"] = True
        write_json(record, folder / RECORD)
        self.hashes[stage.name] = digest
        self.log(f"[kalm run] {stage.name}: done in {record['wall_s'] / 60:.1f} min "
                 f"(this attempt {(time.time() - t0) / 60:.1f} min)")
        return record


# ----------------------------------------------------------------------------- the stages

def write_level_suite(suite_file: str, level: str, out: Path, env: str) -> Path:
    """The entries of one level of a suite file, as a suite file of their own."""
    from kalm.data.suites import resolve_suite
    from kalm.io import write_text_atomic

    entries = resolve_suite(None, suite_file, env=env).by_level(level).entries
    if not entries:
        raise ConfigError(f"suite_file {suite_file} has no goals of level {level!r}")
    lines = []
    for e in entries:
        obj: dict[str, Any] = {"instruction": e.instruction, "level": e.level, "goal": e.goal}
        if e.init is not None:
            obj["init"] = list(e.init)
        lines.append(json.dumps(obj))
    return write_text_atomic(out, "\n".join(lines) + "\n")


# Fields added after run folders existed, hashed only when set to something else, so that
# adding an option does not make every finished stage look changed.
LATER_FIELDS: dict[str, Any] = {"attn_implementation": "auto", "budget_minutes": None,
                                "head_lr_scale": 1.0, "min_votes": None, "env_version": 1,
                                "rollout_steps": 1, "symmetric_copies": 0}
# the same for fields of the grounding's `model` section
LATER_MODEL_FIELDS: dict[str, Any] = {"action_head": "regression", "action_bins": 21,
                                      "mlp_layers": 0}
# Settings that change speed or placement, never results.
SPEED_ONLY = ("workers", "device", "length_groups")


def _hashed(d: dict[str, Any]) -> dict[str, Any]:
    """A stage config without the settings that change speed, not results."""
    out = {k: v for k, v in d.items()
           if k not in SPEED_ONLY and not (k in LATER_FIELDS and LATER_FIELDS[k] == v)}
    if isinstance(out.get("model"), dict):
        out["model"] = {k: v for k, v in out["model"].items()
                        if not (k in LATER_MODEL_FIELDS and LATER_MODEL_FIELDS[k] == v)}
    return out


def collect_config(cfg: RunConfig) -> dict[str, Any]:
    """What collecting reads: its settings and the env's version (`EnvDefinition.version`), so
    a folder collected in an older simulator is collected again, and everything after it."""
    from kalm.envs.registry import get_env

    return _hashed({**to_dict(cfg.collect), "env_version": get_env(cfg.env).version})


def imagine_settings(cfg: RunConfig, level: str, folder: Path, per_goal: int | None = None,
                     **paths: str):
    """The ImagineConfig of LEVEL's tasks as the imagine stage draws them (PER_GOAL: that many
    per goal instead of `imagine.levels`), for `imagine` (with PATHS: model, out) and for
    `task_starts` alike, so that a planner's fresh draw cannot drift from the imagine stage's
    goals, seeds and starts. A run with a suite file writes LEVEL's goals into FOLDER."""
    from kalm.imagination.stage import ImagineConfig

    im = cfg.imagine
    suite_file = None
    if cfg.suite_file:  # this level's goals only
        suite_file = str(write_level_suite(cfg.suite_file, level, folder / "suite.jsonl",
                                           cfg.env))
    return ImagineConfig(
        suite=level, suite_file=suite_file,
        per_goal=im.levels[level] if per_goal is None else per_goal,
        batch_size=im.batch_size, max_steps=im.max_steps, seed=im.seed,
        temperature=im.temperature, filter=im.filter, filter_explanation=im.filter_explanation,
        goals=im.goals, proposals=im.proposals, proposal_temperature=im.proposal_temperature,
        distinct_first=im.distinct_first, hold_zeros=im.hold_zeros, **paths)


def imagine_config(cfg: RunConfig, level: str) -> dict[str, Any]:
    """What imagining one level reads. The batch size is left out: each rollout draws from its
    own seeded stream, so batching changes speed only."""
    im = cfg.imagine
    return {"level": level, "per_goal": im.levels[level], "max_steps": im.max_steps,
            "temperature": im.temperature, "filter": im.filter,
            "filter_explanation": im.filter_explanation, "seed": im.seed,
            "suite_file": cfg.suite_file, **({"goals": im.goals} if im.goals is not None else {}),
            **({"proposals": im.proposals, "proposal_temperature": im.proposal_temperature}
               if im.proposals > 1 else {}),
            **({"hold_zeros": True} if im.hold_zeros else {}),
            **({"distinct_first": True} if im.distinct_first and im.proposals > 1 else {})}


def train_config(cfg: RunConfig, algo: str, seed: int, variant: str | None = None
                 ) -> dict[str, Any]:
    """What training one algorithm and seed reads: its own steps, not the other algorithms',
    and which labelled rollouts it learns from at which share (the paper variant: all of the
    LLM-labelled ones at 1:1)."""
    levels = list(cfg.imagine.levels)
    base = {"algo": algo, "seed": seed, "steps": cfg.rl.steps[algo], "levels": levels}
    if variant == PAPER:  # one greedy rollout per task of a best-of-N file
        return {**base, "variant": PAPER,
                **({"proposals": "first"} if paper_reads_first_proposals(cfg) else {})}
    return {**base, **({"variant": variant} if variant else {}), "keep": cfg.rl.keep_for(algo),
            "imagined_ratio": {lv: cfg.rl.ratio_for(lv, algo) for lv in levels},
            **({"min_kept_share": cfg.rl.min_kept_share} if cfg.rl.min_kept_share else {})}


def label_config(cfg: RunConfig, level: str) -> dict[str, Any]:
    return _hashed({"level": level, **to_dict(cfg.label)})


def evaluate_config(cfg: RunConfig, split: str | None = None) -> dict[str, Any]:
    """What evaluating reads: the split evaluated (the headline's unless SPLIT), not whether a
    dev evaluation runs beside it."""
    ev = {k: v for k, v in to_dict(cfg.evaluate).items()
          if k not in ("llm_policy_episodes", "dev")}
    return _hashed({**ev, "split": split or cfg.evaluate.split, "suite_file": cfg.suite_file})


def llm_policy_config(cfg: RunConfig) -> dict[str, Any]:
    ev = cfg.evaluate
    return {"levels": list(ev.levels), "episodes": ev.llm_policy_episodes, "seed": ev.seed,
            "suite_file": cfg.suite_file, **({"split": ev.split} if ev.split else {})}


def _ground_resolved(folder: Path) -> dict[str, Any]:
    """The precision and step count grounding settled on (`bf16: auto`, `budget_minutes`)."""
    path = folder / "grounding_metrics.json"
    if not path.exists():
        return {}
    metrics = json.loads(path.read_text())
    keys = ("dtype", "bf16_probe", "steps", "steps_planned", "step_seconds", "device")
    return {k: metrics[k] for k in keys if k in metrics}


def build_stages(cfg: RunConfig) -> list[Stage]:
    """The pipeline as a list of stages in execution order (named as `stage_names` says)."""
    root = cfg.run_dir
    stages: list[Stage] = []

    def run_collect(folder: Path) -> list[Path]:
        from kalm.data.collect import collect

        out = real_data(root)
        collect(dataclasses.replace(cfg.collect, out=str(out)))
        return [out]

    stages.append(Stage(COLLECT, collect_config(cfg), [], run_collect))

    if needs_dynamics(cfg):
        def run_dynamics(folder: Path) -> list[Path]:
            from kalm.data.episodes import read_episodes
            from kalm.envs.registry import get_env
            from kalm.imagination.dynamics import META, WEIGHTS, DynamicsEnsemble

            definition = get_env(cfg.env)
            ens = DynamicsEnsemble.fit(read_episodes(real_data(root)), cfg.dynamics,
                                       bounds=definition.clamp_box(),
                                       threads=None,
                                       symmetry=definition.dynamics_symmetry)
            ens.save(folder)
            return [folder / WEIGHTS, folder / META]

        stages.append(Stage(DYNAMICS, _hashed(to_dict(cfg.dynamics)), [COLLECT],
                            run_dynamics))

    def run_ground(folder: Path) -> list[Path]:
        from kalm.llm.train import ground

        ground(dataclasses.replace(cfg.ground, data=str(real_data(root)), out=str(folder)),
               resume=True)
        return [folder / "weights.safetensors", folder / "kalm_model.json",
                folder / "grounding_metrics.json"]

    stages.append(Stage(GROUND, _hashed(to_dict(cfg.ground)), [COLLECT], run_ground,
                        _ground_resolved))

    for level in cfg.imagine.levels:
        def run_imagine(folder: Path, level: str = level) -> list[Path]:
            from kalm.imagination.stage import imagine

            out = folder / "imagined.h5"
            imagine(imagine_settings(cfg, level, folder, model=str(root / GROUND),
                                     out=str(out)))
            return [out, out.with_suffix(".stats.json")]

        stages.append(Stage(imagine_stage(level), imagine_config(cfg, level), [GROUND],
                            run_imagine))

    def load_dynamics(imagined: Path):
        from kalm.data.episodes import read_episodes
        from kalm.imagination.dynamics import DynamicsEnsemble

        return DynamicsEnsemble.load(root / DYNAMICS, spec=read_episodes(imagined).spec)

    label_reads_dynamics = cfg.label.needs_dynamics
    for level in cfg.imagine.levels:
        def run_label(folder: Path, level: str = level) -> list[Path]:
            from kalm.envs.registry import get_env
            from kalm.imagination.labelling import STATS_FILE, label_level

            imagined = imagined_data(root, level)
            dynamics = load_dynamics(imagined) if label_reads_dynamics else None
            stats = label_level(imagined, folder, cfg.label, get_env(cfg.env), dynamics)
            return [folder / STATS_FILE, *(folder / f for f in stats["files"].values() if f)]

        stages.append(Stage(label_stage(level), label_config(cfg, level),
                            [imagine_stage(level), *([DYNAMICS] if label_reads_dynamics
                                                     else [])], run_label))

    # the LLM's rollouts are read for their goals and initial states only; the shot ones are
    # chosen and labelled by the label stage's judge, so the rows differ in proposer only
    judge = _hashed({"min_votes": cfg.label.min_votes})
    for row in (r for r in (SHOOTING, SHOOTING_MATCHED) if r in cfg.rl.reference_rows):
        matched = row == SHOOTING_MATCHED
        for level in cfg.imagine.levels:
            def run_shoot(folder: Path, level: str = level, matched: bool = matched
                          ) -> list[Path]:
                from kalm.envs.registry import get_env
                from kalm.imagination.labelling import STATS_FILE
                from kalm.imagination.relabel import RelabelConfig
                from kalm.imagination.shooting import shoot_level

                imagined = imagined_data(root, level)
                shooting = cfg.shooting
                if matched:  # the CPU-seconds the LLM's rollouts of the level cost
                    shooting = dataclasses.replace(shooting, cpu_seconds=llm_cpu_seconds(
                        root, level))
                stats = shoot_level(imagined, folder, load_dynamics(imagined),
                                    get_env(cfg.env), shooting,
                                    judge=RelabelConfig(min_votes=cfg.label.min_votes))
                return [folder / STATS_FILE,
                        *(folder / f for f in stats["files"].values() if f)]

            name = shoot_matched_stage(level) if matched else shoot_stage(level)
            inputs = [imagine_stage(level), DYNAMICS, *([label_stage(level)] if matched else [])]
            config = {"level": level, **to_dict(cfg.shooting), **judge,
                      **({"cpu_seconds": "imagine + label stages' cpu_s"} if matched else {})}
            stages.append(Stage(name, config, inputs, run_shoot))

    # the planner rows: the same goals and starts, searched for on the ensemble from a uniform
    # prior or the LLM's proposals, chosen and labelled by the label stage's judge; the uniform
    # row plans `planner.per_goal` fresh tasks per goal where set
    for row in (r for r in PLANNERS if r in cfg.rl.reference_rows):
        planner = cfg.planner.search(PLANNERS[row])
        for level in cfg.imagine.levels:
            per_goal = cfg.planner.tasks_per_goal(planner.prior, level)

            def run_plan(folder: Path, level: str = level, planner=planner,
                         per_goal=per_goal) -> list[Path]:
                from kalm.envs.registry import get_env
                from kalm.imagination.labelling import STATS_FILE
                from kalm.imagination.planner import plan_into, plan_level
                from kalm.imagination.relabel import RelabelConfig
                from kalm.imagination.stage import task_starts

                imagined = imagined_data(root, level)
                judged = RelabelConfig(min_votes=cfg.label.min_votes)
                if per_goal is None:
                    stats = plan_level(imagined, folder, load_dynamics(imagined),
                                       get_env(cfg.env), planner, judge=judged)
                else:
                    tasks = task_starts(imagine_settings(cfg, level, folder, per_goal), cfg.env)
                    stats = plan_into(tasks, folder, load_dynamics(imagined), get_env(cfg.env),
                                      planner, judge=judged,
                                      source=f"{level} suite, {per_goal} per goal",
                                      env=cfg.env)
                return [folder / STATS_FILE,
                        *(folder / f for f in stats["files"].values() if f)]

            # per_goal hashed only where set: older planner stages keep their hashes
            config = {"level": level, **to_dict(planner), **judge,
                      **({"per_goal": per_goal} if per_goal is not None else {})}
            stages.append(Stage(plan_stage(level, row), config,
                                [imagine_stage(level), DYNAMICS], run_plan))

    if VERIFIED in cfg.rl.reference_rows:
        for level in cfg.imagine.levels:
            def run_verify(folder: Path, level: str = level) -> list[Path]:
                from kalm.envs.registry import get_env
                from kalm.imagination.labelling import STATS_FILE, verify_level

                stats = verify_level(imagined_data(root, level), folder, get_env(cfg.env))
                return [folder / STATS_FILE,
                        *(folder / f for f in stats["files"].values() if f)]

            # a diagnostic: uses the simulator, which KALM may not
            stages.append(Stage(verify_stage(level), {"level": level, "diagnostic": True},
                                [imagine_stage(level)], run_verify))

    data_stages = {None: [label_stage(lv) for lv in cfg.imagine.levels],
                   PAPER: [imagine_stage(lv) for lv in cfg.imagine.levels],
                   SHOOTING: [shoot_stage(lv) for lv in cfg.imagine.levels],
                   SHOOTING_MATCHED: [shoot_matched_stage(lv) for lv in cfg.imagine.levels],
                   VERIFIED: [verify_stage(lv) for lv in cfg.imagine.levels],
                   **{row: [plan_stage(lv, row) for lv in cfg.imagine.levels]
                      for row in PLANNERS}}
    for algo in cfg.rl.algos:
        for seed in cfg.seeds:
            for variant in variants(cfg):
                def run_train(folder: Path, algo: str = algo, seed: int = seed,
                              variant: str | None = variant) -> list[Path]:
                    from kalm.eval.compare import train_seed
                    from kalm.imagination.relabel import write_first_proposals

                    if variant == PAPER and paper_reads_first_proposals(cfg):
                        for lv in cfg.imagine.levels:
                            write_first_proposals(imagined_data(root, lv),
                                                  first_proposals_data(root, lv))
                    return [p / "policy.d3" for p in
                            train_seed(compare_config(cfg, algo, root, variant), folder, seed)]

                train_name = train_stage(algo, seed, variant)
                stages.append(Stage(train_name, train_config(cfg, algo, seed, variant),
                                    [COLLECT, *data_stages[variant]], run_train))

                for split in ([None, "dev"] if dev_split(cfg) else [None]):
                    def run_eval(folder: Path, algo: str = algo, seed: int = seed,
                                 variant: str | None = variant, split: str | None = split
                                 ) -> list[Path]:
                        from kalm.eval.compare import evaluate_seed

                        cc = compare_config(cfg, algo, root, variant, split)
                        evaluate_seed(cc, root / train_stage(algo, seed, variant), folder, seed)
                        return sorted(folder.glob("*/eval-*.json"))

                    stages.append(Stage(evaluate_stage(algo, seed, variant, split),
                                        evaluate_config(cfg, split), [train_name], run_eval))

    if LLM_POLICY in cfg.rl.reference_rows:
        def run_llm_policy(folder: Path) -> list[Path]:
            from kalm.eval.llm_policy import evaluate_llm_policy

            return evaluate_llm_policy(root / GROUND, folder, list(cfg.evaluate.levels),
                                       cfg.evaluate.llm_policy_episodes, cfg.evaluate.seed,
                                       cfg.evaluate.workers, cfg.env, cfg.suite_file,
                                       cfg.evaluate.split)

        stages.append(Stage(LLM_POLICY_STAGE, llm_policy_config(cfg), [GROUND], run_llm_policy))

    for policy in (p for p in POLICY_REFERENCES if p in cfg.rl.reference_rows):
        def run_builtin(folder: Path, policy: str = policy) -> list[Path]:
            from kalm.eval.compare import evaluate_builtin_policy

            return evaluate_builtin_policy(compare_config(cfg, cfg.rl.algos[0], root), policy,
                                           folder)

        stages.append(Stage(reference_policy_stage(policy),
                            {**evaluate_config(cfg), "policy": policy}, [], run_builtin))

    def run_report(folder: Path) -> list[Path]:
        from kalm.eval.report import write_report

        md, html = write_report(root, folder)
        return [md, html]

    stages.append(Stage(REPORT, to_dict(cfg.report), [s.name for s in stages], run_report))
    assert [s.name for s in stages] == stage_names(cfg)
    return stages


LOCK_FILE = ".kalm-run.lock"


class RunFolderBusy(RuntimeError):
    """Another `kalm run` holds the run folder."""


@contextlib.contextmanager
def exclusive_run_folder(root: Path) -> Iterator[None]:
    """One `kalm run` per folder at a time: two would resume the same stage into the same
    checkpoints and parts. The lock is the kernel's (flock), so a killed run leaves none behind;
    where flock does not exist (Windows) the folder is not locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on this project's platforms
        yield
        return
    path = root / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunFolderBusy(f"{root} is in use by another `kalm run` (pid {holder}); wait "
                                "for it to finish or stop it, then run again") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_pipeline(cfg: RunConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) every stage; returns the report's markdown path."""
    cfg.check_algos()
    root = cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_run_folder(root):
        return _run_stages(cfg, root, log)


def _run_stages(cfg: RunConfig, root: Path, log: Callable[[str], None]) -> Path:
    dump_yaml(cfg, root / CONFIG_FILE)
    runner = Runner(root, log)
    t0 = time.time()
    for stage in build_stages(cfg):
        runner.run(stage)
    log(f"[kalm run] finished in {(time.time() - t0) / 60:.1f} min; report: "
        f"{root / REPORT / 'report.md'}")
    return root / REPORT / "report.md"
