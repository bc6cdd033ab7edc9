"""A `kalm run` folder: the config it was made with and where each stage keeps its files.

The pipeline writes run folders and the report reads them; both take the layout from here, so
neither needs the other.

```
runs/NAME/
  run_config.yaml
  collect/real.h5
  ground/                                   the grounded model
  imagine-LEVEL/imagined.h5
  train-ALGO-seedS/{baseline,kalm-LEVEL}-seedS/policy.d3
  evaluate-ALGO-seedS/<policy>/eval-LEVEL.json
  report/
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from kalm.config import ConfigError, from_dict, load_yaml, read_yaml_mapping
from kalm.data.collect import CollectConfig
from kalm.eval.compare import CompareConfig
from kalm.llm.train import GroundConfig

CONFIG_FILE = "run_config.yaml"
RECORD = "stage.json"
COLLECT = "collect"
GROUND = "ground"
REPORT = "report"


def imagine_stage(level: str) -> str:
    return f"imagine-{level}"


def train_stage(algo: str, seed: int) -> str:
    return f"train-{algo}-seed{seed}"


def evaluate_stage(algo: str, seed: int) -> str:
    return f"evaluate-{algo}-seed{seed}"


def real_data(root: Path) -> Path:
    return root / COLLECT / "real.h5"


def imagined_data(root: Path, level: str) -> Path:
    return root / imagine_stage(level) / "imagined.h5"


def stage_names(cfg: RunConfig) -> list[str]:
    """Every stage of a run in execution order (the pipeline builds exactly these)."""
    names = [COLLECT, GROUND, *(imagine_stage(lv) for lv in cfg.imagine.levels)]
    for algo in cfg.rl.algos:
        for seed in cfg.seeds:
            names += [train_stage(algo, seed), evaluate_stage(algo, seed)]
    return [*names, REPORT]


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
    goals: int | None = None  # imagine for each level's first N goals only (smoke runs)


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
                      max_steps=2, goals=4),
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



def compare_config(cfg: RunConfig, algo: str, root: Path) -> CompareConfig:
    return CompareConfig(
        real=str(real_data(root)), out="", algo=algo, seeds=list(cfg.seeds),
        steps=cfg.rl.steps[algo], episodes=cfg.evaluate.episodes,
        easy_episodes=cfg.evaluate.easy_episodes, levels=list(cfg.evaluate.levels),
        suite_file=cfg.suite_file, workers=cfg.evaluate.workers, eval_seed=cfg.evaluate.seed,
        imagined={lv: str(imagined_data(root, lv))
                  for lv in cfg.imagine.levels},
        imagined_ratio=cfg.rl.imagined_ratio, env=cfg.env)


def load_run(root: str | Path) -> RunConfig:
    """The resolved config a run folder was made with."""
    path = Path(root) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {root} a `kalm run` folder?")
    return load_yaml(RunConfig, path)
