"""A `kalm run` folder: the config it was made with and where each stage keeps its files.

The pipeline writes run folders and the report reads them; both take the layout from here, so
neither needs the other.

```
runs/NAME/
  run_config.yaml
  collect/real.h5
  ground/                                   the grounded model
  dynamics/                                 the dynamics ensemble (labeller: ensemble)
  imagine-LEVEL/imagined.h5                 rollouts as the LLM imagined and labelled them
  label-LEVEL/labelled{,-success}.h5        relabelled: every rollout / the judged successes
  train-ALGO-seedS/{baseline,kalm-LEVEL}-seedS/policy.d3
  evaluate-ALGO-seedS/<policy>/eval-LEVEL.json
  shoot-LEVEL/labelled{,-success}.h5        reference rows: rollouts without the LLM
  shoot-matched-LEVEL/...                   the same at the LLM's CPU-seconds for the level
  plan-{uniform,llm}-LEVEL/...              rollouts searched on the ensemble (CEM), from a
                                            uniform prior or the LLM's proposals
  verify-LEVEL/labelled{,-success}.h5       diagnostic row: LLM rollouts checked in the simulator
  evaluate-llm-policy/eval-LEVEL.json       reference row: the grounded LLM acting itself
  evaluate-{expert,random}/eval-LEVEL.json  reference rows: the env's expert and random actions
  train-ALGO-VARIANT-seedS/VARIANT-LEVEL-seedS/   reference rows (rl.reference_rows):
  evaluate-ALGO-VARIANT-seedS/                    `paper`, `shooting`, `shooting_matched`,
                                                  `verified`
  report/
```
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kalm.config import ConfigError, from_dict, load_yaml, read_yaml_mapping
from kalm.data.collect import CollectConfig
from kalm.eval.compare import CompareConfig
from kalm.imagination.dynamics import DynamicsConfig
from kalm.imagination.labelling import STATS_FILE, LabelConfig, labelled_file
from kalm.imagination.planner import PlannerConfig
from kalm.imagination.shooting import ShootingConfig
from kalm.llm.train import GroundConfig
from kalm.rl.algos import ALGOS, check_algo

CONFIG_FILE = "run_config.yaml"
RECORD = "stage.json"
COLLECT = "collect"
GROUND = "ground"
DYNAMICS = "dynamics"
REPORT = "report"
# reference rows, each a variant of the RL stages: KALM as the paper trains it (the LLM's own
# labels, every rollout, 1:1), and rollouts proposed without the LLM (random shooting on the
# dynamics ensemble) labelled and used as KALM's are
PAPER = "paper"
SHOOTING = "shooting"
# the same shooting at the CPU-seconds the LLM's imagination and labelling of the level took
# (the candidate count fitted to that budget): the equal-compute reference
SHOOTING_MATCHED = "shooting_matched"
# rollouts searched for on the ensemble by the cross-entropy method (kalm.imagination.planner),
# its search started from a uniform distribution (no LLM) or from the LLM's proposals
PLANNER_UNIFORM = "planner_uniform"
PLANNER_LLM = "planner_llm"
PLANNERS = {PLANNER_UNIFORM: "uniform", PLANNER_LLM: "llm"}  # row -> the planner's prior
# a DIAGNOSTIC that uses the simulator, which KALM may not: the LLM's rollouts whose actions
# really reach the goal when replayed, labelled on the simulator's states (an upper bound on
# what better labels could give)
VERIFIED = "verified"
RL_REFERENCES = (PAPER, SHOOTING, SHOOTING_MATCHED, PLANNER_UNIFORM, PLANNER_LLM, VERIFIED)
# the rows whose rollouts another proposer than the LLM's sampling made, on the ensemble
PROPOSER_ROWS = (SHOOTING, SHOOTING_MATCHED, PLANNER_UNIFORM, PLANNER_LLM)
# and the grounded LLM acting in the real env itself (the paper's Fig. 5): an evaluation only
LLM_POLICY = "llm_policy"
LLM_POLICY_STAGE = "evaluate-llm-policy"
# and the env's own built-in policies on the same levels, scenes and episode counts: its
# scripted expert (the ceiling the data's demonstrator reaches) and random actions (the floor)
EXPERT = "expert"
RANDOM = "random"
POLICY_REFERENCES = (EXPERT, RANDOM)
REFERENCES = (*RL_REFERENCES, LLM_POLICY, *POLICY_REFERENCES)


def reference_policy_stage(policy: str) -> str:
    return f"evaluate-{policy}"


def imagine_stage(level: str) -> str:
    return f"imagine-{level}"


def label_stage(level: str) -> str:
    return f"label-{level}"


def shoot_stage(level: str) -> str:
    return f"shoot-{level}"


def shoot_matched_stage(level: str) -> str:
    return f"shoot-matched-{level}"


def plan_stage(level: str, row: str) -> str:
    """The planner stage of a planner row (`plan-uniform-LEVEL`, `plan-llm-LEVEL`)."""
    return f"plan-{PLANNERS[row]}-{level}"


def verify_stage(level: str) -> str:
    return f"verify-{level}"


def _variant(variant: str | None) -> str:
    if variant is not None and variant not in RL_REFERENCES:
        raise ValueError(f"unknown RL variant {variant!r}")
    return f"{variant}-" if variant else ""


def train_stage(algo: str, seed: int, variant: str | None = None) -> str:
    return f"train-{algo}-{_variant(variant)}seed{seed}"


def evaluate_stage(algo: str, seed: int, variant: str | None = None,
                   split: str | None = None) -> str:
    """The evaluation of a train stage's policies: on the headline split (`evaluate.split`), or
    `evaluate-dev-...` on the dev half where defaults are chosen."""
    where = "dev-" if split == "dev" else ""
    return f"evaluate-{where}{algo}-{_variant(variant)}seed{seed}"


def dev_split(cfg: RunConfig) -> bool:
    """Whether the run evaluates its policies on the dev half too (built-in suites only)."""
    return cfg.evaluate.dev and cfg.evaluate.split == "test" and not cfg.suite_file


def real_data(root: Path) -> Path:
    return root / COLLECT / "real.h5"


def imagined_data(root: Path, level: str) -> Path:
    return root / imagine_stage(level) / "imagined.h5"


def first_proposals_data(root: Path, level: str) -> Path:
    """The first (greedy) proposal of each task of a best-of-N imagine stage, with the LLM's own
    labels: what the paper variant learns from (the paper decodes one rollout per prompt)."""
    return root / imagine_stage(level) / "imagined-first.h5"


def paper_reads_first_proposals(cfg: RunConfig) -> bool:
    """Whether the paper variant learns from `first_proposals_data` (a best-of-N imagine
    stage) rather than the imagine stage's own file."""
    return cfg.imagine.proposals > 1


def label_folder(root: Path, level: str) -> Path:
    return root / label_stage(level)


def shoot_folder(root: Path, level: str) -> Path:
    return root / shoot_stage(level)


def verify_folder(root: Path, level: str) -> Path:
    return root / verify_stage(level)


def reference_label_folder(root: Path, level: str, variant: str | None) -> Path:
    """The label-layout folder a KALM variant reads (the label stage's for the default)."""
    if variant == SHOOTING:
        return shoot_folder(root, level)
    if variant == SHOOTING_MATCHED:
        return root / shoot_matched_stage(level)
    if variant in PLANNERS:
        return root / plan_stage(level, variant)
    if variant == VERIFIED:
        return verify_folder(root, level)
    return label_folder(root, level)


def label_stats(root: Path, level: str, variant: str | None = None) -> dict[str, Any] | None:
    """The `label_stats.json` of the folder a KALM variant reads for LEVEL, or None before it
    is labelled."""
    path = reference_label_folder(root, level, variant) / STATS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def variants(cfg: RunConfig) -> list[str | None]:
    """The RL stage variants of a run: the default, then the RL reference rows asked for."""
    return [None, *(r for r in cfg.rl.reference_rows if r in RL_REFERENCES)]


def needs_dynamics(cfg: RunConfig) -> bool:
    return cfg.label.needs_dynamics or any(r in PROPOSER_ROWS for r in cfg.rl.reference_rows)


def stage_names(cfg: RunConfig) -> list[str]:
    """Every stage of a run in execution order (the pipeline builds exactly these)."""
    names = [COLLECT]
    if needs_dynamics(cfg):
        names.append(DYNAMICS)
    names += [GROUND, *(imagine_stage(lv) for lv in cfg.imagine.levels),
              *(label_stage(lv) for lv in cfg.imagine.levels)]
    if SHOOTING in cfg.rl.reference_rows:
        names += [shoot_stage(lv) for lv in cfg.imagine.levels]
    if SHOOTING_MATCHED in cfg.rl.reference_rows:
        names += [shoot_matched_stage(lv) for lv in cfg.imagine.levels]
    for row in (r for r in PLANNERS if r in cfg.rl.reference_rows):
        names += [plan_stage(lv, row) for lv in cfg.imagine.levels]
    if VERIFIED in cfg.rl.reference_rows:
        names += [verify_stage(lv) for lv in cfg.imagine.levels]
    for algo in cfg.rl.algos:
        for seed in cfg.seeds:
            for variant in variants(cfg):
                names += [train_stage(algo, seed, variant), evaluate_stage(algo, seed, variant)]
                if dev_split(cfg):
                    names.append(evaluate_stage(algo, seed, variant, "dev"))
    if LLM_POLICY in cfg.rl.reference_rows:
        names.append(LLM_POLICY_STAGE)
    names += [reference_policy_stage(p) for p in POLICY_REFERENCES
              if p in cfg.rl.reference_rows]
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
    # best-of-N: proposals per rollout from the same start state (the first at `temperature`,
    # the others at `proposal_temperature`); the label stage keeps one, a verified one where
    # there is one
    proposals: int = 1
    proposal_temperature: float = 1.0
    # discrete actions: a task's proposals start with distinct first actions
    # (kalm.imagination.stage.ImagineConfig.distinct_first)
    distinct_first: bool = False
    # keep coordinates the real data never moved off zero at zero (RolloutModel.hold_zeros)
    hold_zeros: bool = False


@dataclass
class PlannerStage(PlannerConfig):
    """The planner rows' search settings, and which tasks the uniform row plans."""

    # level -> tasks per goal the `planner_uniform` row plans, drawn as the imagine stage would
    # draw that many (same goals, seeds and starts for a count; experiment 19: 6 per hard goal
    # beat the imagine stage's 2 on dev, 10 beat 6). A search from no LLM is not bound to the
    # tasks the LLM imagined; the `planner_llm` row is (its prior is the LLM's proposals for
    # them), so it always plans the imagine stage's tasks. Unset levels: the imagine stage's.
    per_goal: dict[str, int] = field(default_factory=dict)

    def search(self, prior: str) -> PlannerConfig:
        """The search's own settings for a row's PRIOR (what the planner module reads)."""
        names = {f.name for f in dataclasses.fields(PlannerConfig)}
        return PlannerConfig(**{**{n: getattr(self, n) for n in names}, "prior": prior})

    def tasks_per_goal(self, prior: str, level: str) -> int | None:
        """Tasks per goal of LEVEL's fresh draw for a row of PRIOR; None: the imagine stage's."""
        return self.per_goal.get(level) if prior == "uniform" else None


@dataclass
class RLStage:
    """Offline RL: one baseline (real only) and one KALM policy per imagined level, per seed."""

    algos: list[str] = field(default_factory=lambda: ["bc", "cql"])
    steps: dict[str, int] = field(default_factory=lambda: {"bc": 10_000, "cql": 10_000})
    imagined_ratio: float = 0.5  # share of each KALM batch drawn from the imagined data
    # per algorithm, overriding imagined_ratio; a level's own share (level_ratios) wins over
    # both
    algo_ratios: dict[str, float] = field(default_factory=dict)
    level_ratios: dict[str, float] = field(default_factory=dict)  # per level, overrides it
    # a level whose kept rollouts cover fewer than this share of its tasks gets no KALM policy
    # (the report's cell says "no KALM policy" and why): one kept rollout of 164 at half of
    # every batch took CQL on the hard level from 3.2% to 0.1%
    # (docs/experiments/10-clevr-quick-best-of-8.md, 10.2); 0 = off
    min_kept_share: float = 0.0
    # which labelled rollouts each algorithm learns from: `success` (those the labeller judged
    # successful) or `all`; default `success` for every algorithm: BC copies every action it
    # sees, and CQL on every rollout was measured worse than on the successes on every level
    # (docs/experiments/06-ensemble-labels-in-pipeline.md)
    keep: dict[str, str] = field(default_factory=dict)
    # reference rows beside KALM, each trained in stages of its own (adding one later runs only
    # its stages): `paper` (KALM as the paper trains it: the LLM's own labels, one greedy
    # rollout per task, 1:1), `shooting` (no LLM: random shooting on the dynamics ensemble,
    # labelled and used as KALM's rollouts are), `shooting_matched` (the same, its candidates
    # fitted to the CPU-seconds of the LLM's imagine and label stages), `planner_uniform` and
    # `planner_llm` (rollouts searched for on the ensemble by the cross-entropy method, the
    # `planner` section's settings, from a uniform prior or the LLM's proposals: what search
    # adds, and what the LLM adds to search), `llm_policy` (the
    # grounded LLM acting in the real env itself, evaluate.llm_policy_episodes per level),
    # `expert` and `random` (the env's scripted expert and random actions on the same levels
    # and scenes: ceiling and floor), and the diagnostic `verified` (uses the simulator, which
    # KALM may not: the LLM's rollouts that really reach the goal on replay, labelled on the
    # simulator's states; how much better labels could give)
    reference_rows: list[str] = field(default_factory=list)

    def keep_for(self, algo: str) -> str:
        return self.keep.get(algo, "success")

    def algo_ratio(self, algo: str | None) -> float:
        return self.algo_ratios.get(algo, self.imagined_ratio)

    def ratio_for(self, level: str, algo: str | None = None) -> float:
        return self.level_ratios.get(level, self.algo_ratio(algo))


@dataclass
class EvaluateStage:
    levels: list[str] = field(default_factory=lambda: ["rephrase", "easy", "hard"])
    episodes: int = 100  # per level and seed
    easy_episodes: int = 200
    # per level, for the llm_policy reference row (one seed); the model decodes one episode at a
    # time, up to 50 steps each: on a 2-core CPU 100 rephrase episodes took over 6 minutes
    llm_policy_episodes: int = 30
    seed: int = 1000
    workers: int = 2
    # the half of each built-in suite (by goal) the headline is evaluated on: `test`, `dev`,
    # or None (whole suites, as before the split); `dev: true` evaluates every policy on the
    # dev half too, in stages of its own (evaluate-dev-...), with other scenes: defaults are
    # chosen there, never on the headline's goals and scenes
    split: str | None = "test"
    dev: bool = True
    # each RL seed's policies on scenes of their own, so the spread includes scene variance
    scenes_per_seed: bool = True

    def __post_init__(self) -> None:
        from kalm.data.suites import SPLITS

        if self.split is not None and self.split not in SPLITS:
            raise ConfigError(f"evaluate.split: expected one of {', '.join(SPLITS)} or null, "
                              f"got {self.split!r}")


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
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    shooting: ShootingConfig = field(default_factory=ShootingConfig)
    # the planner rows' search (its `prior` is set per row: planner_uniform / planner_llm)
    planner: PlannerStage = field(default_factory=PlannerStage)
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
            if algo not in ALGOS:
                raise ConfigError(f"rl.algos: unknown algo {algo!r}; expected one of "
                                  f"{', '.join(ALGOS)}")
            if algo not in self.rl.steps:
                raise ConfigError(f"rl.steps has no entry for algo {algo!r}")
        votes = self.label.min_votes
        if votes is not None and votes > self.dynamics.members:
            raise ConfigError(f"label.min_votes ({votes}) exceeds dynamics.members "
                              f"({self.dynamics.members})")
        for row in self.rl.reference_rows:
            if row not in REFERENCES:
                raise ConfigError(f"rl.reference_rows: unknown row {row!r}; known: "
                                  f"{', '.join(REFERENCES)}")
        if len(set(self.rl.reference_rows)) != len(self.rl.reference_rows):
            raise ConfigError(f"rl.reference_rows: {self.rl.reference_rows} names a row twice")
        for level, n in self.planner.per_goal.items():
            if level not in self.imagine.levels:
                raise ConfigError(f"planner.per_goal.{level}: the planner draws its tasks from "
                                  f"the imagine stage's levels ({', '.join(self.imagine.levels)})"
                                  f"; {level!r} is not one")
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"planner.per_goal.{level}: expected a whole number of tasks "
                                  f">= 1, got {n!r}")
        for algo, keep in self.rl.keep.items():
            if keep not in ("all", "success"):
                raise ConfigError(f"rl.keep.{algo}: expected all or success, got {keep!r}")
        shares = {"rl.imagined_ratio": self.rl.imagined_ratio,
                  **{f"rl.algo_ratios.{a}": r for a, r in self.rl.algo_ratios.items()},
                  **{f"rl.level_ratios.{lv}": r for lv, r in self.rl.level_ratios.items()}}
        for key, ratio in shares.items():
            if not 0.0 < ratio < 1.0:
                raise ConfigError(f"{key}: expected a share in (0, 1), got {ratio}")
        if not 0.0 <= self.rl.min_kept_share < 1.0:
            raise ConfigError("rl.min_kept_share: expected a share in [0, 1), got "
                              f"{self.rl.min_kept_share}")
        stray = sorted(set(self.rl.algo_ratios) - set(self.rl.algos))
        if stray:
            raise ConfigError(f"rl.algo_ratios: {stray} not among rl.algos {self.rl.algos}")
        unknown = set(self.rl.level_ratios) - set(self.imagine.levels)
        if unknown:
            raise ConfigError(f"rl.level_ratios: levels {sorted(unknown)} are not imagined "
                              f"(imagine.levels: {list(self.imagine.levels)})")

    def check_algos(self) -> None:
        """Refuse algorithms that cannot act in the env's action space (td3bc on CLEVR, bcq on
        Meta-World) before any stage runs, not at the train stage an hour later."""
        from kalm.envs.registry import EnvError, get_env

        try:
            action_type = get_env(self.env).spec.action_type
        except EnvError as exc:
            raise ConfigError(f"env: {exc}") from None
        for algo in self.rl.algos:
            try:
                check_algo(algo, action_type, self.env)
            except ValueError as exc:
                raise ConfigError(f"rl.algos: {exc}") from None

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}")

    def smoke(self) -> RunConfig:
        """The same config on a small slice: every stage starts and runs a step or two.

        Grounding keeps the full schedule and stops after one optimizer step, so a paper-scale
        config is exercised as configured, only shorter; its batch is capped at 4 sequences (a
        smoke run checks the wiring, not memory: one batch of 32 100-step Meta-World episodes
        took 40 s on a 2-core CPU)."""
        r = dataclasses.replace
        return r(
            self, name=f"{self.name}-smoke",
            out=f"{self.out}-smoke" if self.out else None, seeds=self.seeds[:1],
            collect=r(self.collect, episodes=min(self.collect.episodes, 40),
                      workers=min(self.collect.workers, 2), chunk_size=20),
            ground=r(self.ground, stop_at_step=1, batch_size=min(self.ground.batch_size, 4),
                     eval_every=1, save_every=1, eval_episodes=2,
                     metrics_episodes=2, explain_episodes=1),
            imagine=r(self.imagine, levels={lv: 1 for lv in self.imagine.levels},
                      max_steps=2, goals=4, proposals=min(self.imagine.proposals, 2)),
            dynamics=r(self.dynamics, epochs=1, members=2, hidden=32),
            label=r(self.label, min_votes=None if self.label.min_votes is None
                    else min(self.label.min_votes, 2)),
            shooting=r(self.shooting, candidates=4, horizon=2),
            planner=r(self.planner, candidates=8, iterations=1, horizon=2,
                      per_goal={lv: 1 for lv in self.planner.per_goal}),
            rl=r(self.rl, steps={a: 2 for a in self.rl.steps}),
            evaluate=r(self.evaluate, episodes=2, easy_episodes=2,
                       workers=min(self.evaluate.workers, 2)),
            report=r(self.report, gifs_per_level=1))


def load_run_config(path: str | Path, out: str | None = None,
                    seeds: list[int] | None = None,
                    reference_rows: list[str] | None = None) -> RunConfig:
    """The YAML config with the command line's --out/--seeds/--reference-rows applied; errors
    name the key."""
    raw = read_yaml_mapping(path)
    env = raw.get("env", "clevr")
    if isinstance(raw.get("collect", {}), dict):
        raw["collect"] = {"env": env, **(raw.get("collect") or {})}
    if out is not None:
        raw["out"] = out
    if seeds:
        raw["seeds"] = list(seeds)
    if reference_rows is not None:
        rl = raw.get("rl") or {}
        if not isinstance(rl, dict):
            raise ConfigError(f"{path}: rl: expected a mapping")
        raw["rl"] = {**rl, "reference_rows": list(reference_rows)}
    try:
        return from_dict(RunConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None



def kalm_data(cfg: RunConfig, root: Path, algo: str, variant: str | None = None
              ) -> dict[str, str]:
    """Level -> the imagined file a KALM policy of ALGO learns from: the labelled rollouts its
    `rl.keep` asks for (a level whose labeller kept none has no entry, and no KALM policy), for
    the paper variant the LLM's own rollouts with its own labels, one per task (the greedy
    proposal of a best-of-N file, `first_proposals_data`, which the paper train stage writes),
    for the shooting variant the shot rollouts `rl.keep` asks for."""
    if variant == PAPER:
        pick = first_proposals_data if paper_reads_first_proposals(cfg) else imagined_data
        return {lv: str(pick(root, lv)) for lv in cfg.imagine.levels}
    out = {}
    for lv in cfg.imagine.levels:
        keep = cfg.rl.keep_for(algo)
        path = labelled_file(reference_label_folder(root, lv, variant), keep)
        if path is not None and not too_few_kept(label_stats(root, lv, variant), keep,
                                                 cfg.rl.min_kept_share):
            out[lv] = str(path)
    return out


def too_few_kept(label_stats: dict[str, Any] | None, keep: str, min_share: float) -> bool:
    """Whether a label folder's rollouts kept for a learner (`label_stats.json`; one labelled
    rollout per task) cover fewer than MIN_SHARE of its tasks."""
    if not min_share or label_stats is None:
        return False
    kept = label_stats["kept"]
    return int(kept[keep]) < min_share * int(kept["all"])


def compare_config(cfg: RunConfig, algo: str, root: Path, variant: str | None = None,
                   split: str | None = None) -> CompareConfig:
    """The policies of one algorithm's RL stages: the default variant trains the baseline and
    KALM on the labelled data; a reference variant trains only its own policies (the baseline
    is the default variant's): the paper's at 1:1, the shooting rows at KALM's shares.
    Evaluated on SPLIT, by default the headline's (`evaluate.split`)."""
    paper = variant == PAPER
    return CompareConfig(
        real=str(real_data(root)), out="", algo=algo, seeds=list(cfg.seeds),
        steps=cfg.rl.steps[algo], episodes=cfg.evaluate.episodes,
        easy_episodes=cfg.evaluate.easy_episodes, levels=list(cfg.evaluate.levels),
        suite_file=cfg.suite_file, workers=cfg.evaluate.workers, eval_seed=cfg.evaluate.seed,
        split=split or cfg.evaluate.split, scenes_per_seed=cfg.evaluate.scenes_per_seed,
        imagined=kalm_data(cfg, root, algo, variant),
        imagined_ratio=0.5 if paper else cfg.rl.algo_ratio(algo),
        level_ratios={} if paper else dict(cfg.rl.level_ratios),
        method=variant or "kalm", baseline=variant is None, env=cfg.env)


def load_run(root: str | Path) -> RunConfig:
    """The resolved config a run folder was made with."""
    path = Path(root) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {root} a `kalm run` folder?")
    return load_yaml(RunConfig, path)
