"""`kalm run`: collect -> ground -> imagine -> train -> evaluate -> report, resumable.

Every stage owns one folder under the run folder and a record (`stage.json`) with its resolved
config, the hash of that config and of its inputs' records, its output files' checksums and its
wall time. A rerun skips a stage whose record hash and outputs match; a stage that was interrupted
resumes from its own checkpoints (collection chunks, grounding checkpoints, imagination chunks,
RL checkpoints, finished evaluations); a stage whose config or inputs changed is moved aside to
`<stage>.superseded-<old hash>` (never deleted) and run again, and so is everything downstream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kalm.config import ConfigError, dump_yaml, from_dict, load_yaml, read_yaml_mapping, to_dict
from kalm.data.collect import CollectConfig
from kalm.eval.compare import CompareConfig
from kalm.io import write_json
from kalm.llm.train import GroundConfig

RECORD = "stage.json"


@dataclass
class ImagineStage:
    """Imagined rollouts per level: `levels` maps a suite level to rollouts per goal."""

    levels: dict[str, int] = field(
        default_factory=lambda: {"rephrase": 3, "easy": 10, "hard": 2})
    batch_size: int = 32
    max_steps: int | None = None
    temperature: float = 0.0
    filter: bool = False
    filter_explanation: bool = False
    seed: int = 0


@dataclass
class RLStage:
    """Offline RL: one baseline (real only) and one KALM policy per imagined level, per seed."""

    algos: list[str] = field(default_factory=lambda: ["bc", "cql"])
    steps: dict[str, int] = field(default_factory=lambda: {"bc": 10_000, "cql": 10_000})
    imagined_ratio: float = 0.5


@dataclass
class EvaluateStage:
    levels: list[str] = field(default_factory=lambda: ["rephrase", "easy", "hard"])
    episodes: int = 100  # per level and seed
    easy_episodes: int = 200
    seed: int = 1000
    workers: int = 2


@dataclass
class ReportStage:
    gifs_per_level: int = 2


@dataclass
class RunConfig:
    name: str = "clevr-quick"
    out: str | None = None  # default: runs/<name>
    env: str = "clevr"
    suite_file: str | None = None  # imagine and evaluate on this suite's levels instead
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    collect: CollectConfig = field(default_factory=CollectConfig)
    ground: GroundConfig = field(default_factory=GroundConfig)
    imagine: ImagineStage = field(default_factory=ImagineStage)
    rl: RLStage = field(default_factory=RLStage)
    evaluate: EvaluateStage = field(default_factory=EvaluateStage)
    report: ReportStage = field(default_factory=ReportStage)

    def __post_init__(self) -> None:
        for key, value in (("collect.out", self.collect.out), ("ground.data", self.ground.data),
                           ("ground.out", self.ground.out)):
            if value:
                raise ConfigError(f"{key} is chosen by `kalm run` (inside the run folder); "
                                  "remove it from the config")
        if self.collect.env != self.env:
            raise ConfigError(f"collect.env ({self.collect.env!r}) differs from env "
                              f"({self.env!r}); set only the top-level env")
        if not self.seeds:
            raise ConfigError("seeds: at least one seed is needed")
        for algo in self.rl.algos:
            if algo not in self.rl.steps:
                raise ConfigError(f"rl.steps has no entry for algo {algo!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}")

    def smoke(self) -> RunConfig:
        """The same config on a small slice: every stage starts and runs a step or two.

        Grounding keeps the full schedule and stops after one optimizer step, so a paper-scale
        config is exercised as configured, only shorter."""
        r = dataclasses.replace
        return r(
            self, name=f"{self.name}-smoke",
            out=f"{self.out}-smoke" if self.out else None, seeds=self.seeds[:1],
            collect=r(self.collect, episodes=min(self.collect.episodes, 40),
                      workers=min(self.collect.workers, 2), chunk_size=20),
            ground=r(self.ground, stop_at_step=1, eval_every=1, save_every=1, eval_episodes=2,
                     metrics_episodes=2, explain_episodes=1),
            imagine=r(self.imagine, levels={lv: 1 for lv in self.imagine.levels},
                      max_steps=2),
            rl=r(self.rl, steps={a: 2 for a in self.rl.steps}),
            evaluate=r(self.evaluate, episodes=2, easy_episodes=2,
                       workers=min(self.evaluate.workers, 2)),
            report=r(self.report, gifs_per_level=1))


def load_run_config(path: str | Path, out: str | None = None,
                    seeds: list[int] | None = None) -> RunConfig:
    """The YAML config with the command line's --out/--seeds applied; errors name the key."""
    raw = read_yaml_mapping(path)
    env = raw.get("env", "clevr")
    if isinstance(raw.get("collect", {}), dict):
        raw["collect"] = {"env": env, **(raw.get("collect") or {})}
    if out is not None:
        raw["out"] = out
    if seeds:
        raw["seeds"] = list(seeds)
    try:
        return from_dict(RunConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------- stage records

def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Stage:
    name: str
    config: dict[str, Any]
    inputs: list[str]  # names of the stages it reads from
    run: Callable[[Path], list[Path]]  # does the work in its folder; returns its output files


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
        return _digest({"stage": stage.name, "config": stage.config,
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
            old = folder.with_name(f"{folder.name}.superseded-{record.get('hash', 'x')[:8]}")
            shutil.rmtree(old, ignore_errors=True)
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
        record = {"stage": stage.name, "hash": digest, "config": stage.config,
                  "inputs": {n: self.hashes[n] for n in stage.inputs}, "done": False,
                  "wall_s": previous, "attempts": int(record.get("attempts", 0) + 1)
                  if record else 1, "outputs": {}}
        write_json(record, folder / RECORD)
        t0 = time.time()
        try:
            outputs = stage.run(folder)
        finally:
            record["wall_s"] = previous + time.time() - t0
            write_json(record, folder / RECORD)
        record["outputs"] = {str(p.relative_to(folder)): file_sha256(p) for p in outputs}
        record["done"] = True
        write_json(record, folder / RECORD)
        self.hashes[stage.name] = digest
        self.log(f"[kalm run] {stage.name}: done in {record['wall_s'] / 60:.1f} min "
                 f"(this attempt {(time.time() - t0) / 60:.1f} min)")
        return record


# ----------------------------------------------------------------------------- the stages

def compare_config(cfg: RunConfig, algo: str, root: Path) -> CompareConfig:
    return CompareConfig(
        real=str(root / "collect" / "real.h5"), out="", algo=algo, seeds=list(cfg.seeds),
        steps=cfg.rl.steps[algo], episodes=cfg.evaluate.episodes,
        easy_episodes=cfg.evaluate.easy_episodes, levels=list(cfg.evaluate.levels),
        suite_file=cfg.suite_file, workers=cfg.evaluate.workers, eval_seed=cfg.evaluate.seed,
        imagined={lv: str(root / f"imagine-{lv}" / "imagined.h5")
                  for lv in cfg.imagine.levels},
        imagined_ratio=cfg.rl.imagined_ratio, env=cfg.env)


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
LATER_FIELDS = {"attn_implementation": "auto"}


def _hashed(d: dict[str, Any]) -> dict[str, Any]:
    """A stage config without the settings that change speed, not results."""
    return {k: v for k, v in d.items()
            if k not in ("workers",) and not (k in LATER_FIELDS and LATER_FIELDS[k] == v)}


def build_stages(cfg: RunConfig) -> list[Stage]:
    """The pipeline as a list of stages in execution order."""
    root = cfg.run_dir
    stages: list[Stage] = []
    collect_cfg = to_dict(cfg.collect)

    def run_collect(folder: Path) -> list[Path]:
        from kalm.data.collect import collect

        out = folder / "real.h5"
        collect(dataclasses.replace(cfg.collect, out=str(out)))
        return [out]

    stages.append(Stage("collect", _hashed(collect_cfg), [], run_collect))

    def run_ground(folder: Path) -> list[Path]:
        from kalm.llm.train import ground

        ground(dataclasses.replace(cfg.ground, data=str(root / "collect" / "real.h5"),
                                   out=str(folder)), resume=True)
        return [folder / "weights.safetensors", folder / "kalm_model.json",
                folder / "grounding_metrics.json"]

    stages.append(Stage("ground", _hashed(to_dict(cfg.ground)), ["collect"], run_ground))

    for level, per_goal in cfg.imagine.levels.items():
        def run_imagine(folder: Path, level: str = level, per_goal: int = per_goal
                        ) -> list[Path]:
            from kalm.imagination.stage import ImagineConfig, imagine

            out = folder / "imagined.h5"
            im = cfg.imagine
            suite_file = None
            if cfg.suite_file:  # this level's goals only
                suite_file = str(write_level_suite(cfg.suite_file, level, folder / "suite.jsonl",
                                                   cfg.env))
            imagine(ImagineConfig(
                model=str(root / "ground"), out=str(out), suite=level, suite_file=suite_file,
                per_goal=per_goal, batch_size=im.batch_size,
                max_steps=im.max_steps, seed=im.seed, temperature=im.temperature,
                filter=im.filter, filter_explanation=im.filter_explanation))
            return [out, out.with_suffix(".stats.json")]

        stages.append(Stage(f"imagine-{level}",
                            {**to_dict(cfg.imagine), "levels": {level: per_goal},
                             "suite_file": cfg.suite_file},
                            ["ground"], run_imagine))

    imagine_stages = [f"imagine-{lv}" for lv in cfg.imagine.levels]
    for algo in cfg.rl.algos:
        for seed in cfg.seeds:
            def run_train(folder: Path, algo: str = algo, seed: int = seed) -> list[Path]:
                from kalm.eval.compare import train_seed

                return [p / "policy.d3" for p in
                        train_seed(compare_config(cfg, algo, root), folder, seed)]

            stages.append(Stage(f"train-{algo}-seed{seed}",
                                {"algo": algo, "seed": seed, **to_dict(cfg.rl),
                                 "steps": cfg.rl.steps[algo]},
                                ["collect", *imagine_stages], run_train))

            def run_eval(folder: Path, algo: str = algo, seed: int = seed) -> list[Path]:
                from kalm.eval.compare import evaluate_seed

                cc = compare_config(cfg, algo, root)
                evaluate_seed(cc, root / f"train-{algo}-seed{seed}", folder, seed)
                return sorted(folder.glob("*/eval-*.json"))

            stages.append(Stage(f"evaluate-{algo}-seed{seed}",
                                _hashed({**to_dict(cfg.evaluate),
                                         "suite_file": cfg.suite_file}),
                                [f"train-{algo}-seed{seed}"], run_eval))

    def run_report(folder: Path) -> list[Path]:
        from kalm.eval.report import write_report

        md, html = write_report(root, folder)
        return [md, html]

    stages.append(Stage("report", to_dict(cfg.report),
                        [s.name for s in stages], run_report))
    return stages


def run_pipeline(cfg: RunConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) every stage; returns the report's markdown path."""
    root = cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, root / "run_config.yaml")
    runner = Runner(root, log)
    t0 = time.time()
    for stage in build_stages(cfg):
        runner.run(stage)
    log(f"[kalm run] finished in {(time.time() - t0) / 60:.1f} min; report: "
        f"{root / 'report' / 'report.md'}")
    return root / "report" / "report.md"


def load_run(root: str | Path) -> RunConfig:
    """The resolved config a run folder was made with."""
    path = Path(root) / "run_config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {root} a `kalm run` folder?")
    return load_yaml(RunConfig, path)
