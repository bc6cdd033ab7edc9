"""`kalm ground`: fine-tune a causal LM on the four grounding objectives.

Runs through Hugging Face accelerate (one device, `device: auto` = CUDA when present; `accelerate
launch kalm ground ...` for several, DeepSpeed/FSDP through accelerate's own config). Checkpoints
are written atomically every `save_every` steps; `--resume` continues from the last one and gives
the same result as an uninterrupted run, because the data stream is a pure function of (seed,
step) and the checkpoint carries the length of the schedule (also when a time budget chose it).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from kalm.data.episodes import EpisodeData, read_episodes
from kalm.io import write_json
from kalm.llm.backbone import Backbone, load_backbone
from kalm.llm.batching import Collator, GroundingSamples, Paraphrases, padded_positions
from kalm.llm.device import model_device, resolve_bf16, resolve_device, to_device
from kalm.llm.losses import (
    GroundingObjective,
    LossWeights,
    computed_positions,
    grounding_losses,
)
from kalm.llm.model import DEGENERATE_STD, ZERO_TOL, ModelConfig, RolloutModel, RolloutSpec
from kalm.llm.prompts import OBJECTIVES, PromptBuilder
from kalm.llm.saving import (
    AdapterConfig,
    build_rollout_model,
    check_backbone,
    check_model,
    check_spec,
    load_trainable_state,
    model_from_meta,
    model_meta,
    save_rollout_model,
    trainable_state,
)

if TYPE_CHECKING:
    from kalm.envs.base import EnvDefinition


@dataclass
class GroundConfig:
    data: str = ""
    out: str = ""
    backbone: str | None = None  # local folder; None = the packaged default
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int | None = None  # optimizer steps; wins over epochs
    epochs: float = 1.0
    batch_size: int = 8
    # backbone passes per batch over rows of similar length: the objectives' prompts differ
    # ~10x in length, so one padded pass computes mostly padding; same losses, less work
    # (BENCHMARKS.md "Grounding in length groups": Meta-World steps 0.51x the time of one pass)
    length_groups: int = 3
    lr: float | None = None  # default: 5e-4 with LoRA, 1e-4 for full fine-tuning
    # learning rate of the new layers (state/action embeddings and heads) as a multiple of `lr`:
    # they start from scratch while the adapter nudges a pretrained network
    head_lr_scale: float = 1.0
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # bf16 autocast: true/false force it; "auto" measures fp32 vs bf16 matmuls on the device at
    # start-up (a CPU without native bf16 runs bf16 ~15-30x slower; CUDA with bf16 support: on)
    bf16: bool | str = "auto"
    # attention kernel: "auto" = eager when bf16 (as resolved) runs on a CPU (1.6x faster than
    # SDPA's CPU flash kernel on short CLEVR sequences, see BENCHMARKS.md), else the backbone's
    attn_implementation: str = "auto"
    device: str = "auto"  # auto = cuda when present, else cpu; or cpu, cuda, cuda:N
    seed: int = 0
    objectives: dict[str, float] = field(
        default_factory=lambda: {o: 1.0 for o in OBJECTIVES})
    loss_weights: LossWeights = field(default_factory=LossWeights)
    paraphrase_suite: str = "train"  # the env's built-in suite instructions draw paraphrases from
    val_fraction: float = 0.1
    eval_every: int = 100
    eval_episodes: int = 64
    save_every: int = 100
    keep_checkpoints: int = 2
    metrics_episodes: int = 200  # validation episodes for the final grounding metrics
    explain_episodes: int = 100
    time_limit_minutes: float | None = None  # stop (and save) after this long
    stop_at_step: int | None = None  # stop early at this step, keeping the schedule of `steps`
    # fit the number of steps (and so the whole warmup + cosine schedule) to this wall time,
    # measured from the start of the run, validation, metrics and saving included; `steps`, when
    # set, is then an upper bound and `epochs` is ignored
    budget_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.length_groups < 1:
            raise ValueError(f"length_groups must be at least 1, got {self.length_groups}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if not (isinstance(self.bf16, bool) or self.bf16 == "auto"):
            raise ValueError(f"bf16 must be true, false or auto, not {self.bf16!r}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ValueError("budget_minutes must be positive")
        if self.head_lr_scale <= 0:
            raise ValueError(f"head_lr_scale must be positive, got {self.head_lr_scale}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-4 if self.adapter.mode == "lora" else 1e-4


def param_groups(model: torch.nn.Module, lr: float, head_lr_scale: float = 1.0
                 ) -> list[dict[str, Any]]:
    """The trainable parameters in two optimizer groups: the backbone's (the adapter, or every
    weight under full fine-tuning) at `lr`, the new embeddings and heads at `lr *
    head_lr_scale`. The scheduler scales both alike."""
    backbone, new = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (backbone if name.startswith("backbone.") else new).append(p)
    groups = [{"params": backbone, "lr": lr, "name": "backbone"},
              {"params": new, "lr": lr * head_lr_scale, "name": "new layers"}]
    return [g for g in groups if g["params"]]


def clevr_spec() -> RolloutSpec:
    from kalm.envs.registry import get_env

    return RolloutSpec.for_env(get_env("clevr"), "clevr")


def spec_for(data: EpisodeData) -> RolloutSpec:
    """The rollout spec (with the env's state bounds) for the env the data names.

    Data from an env kalm cannot load (a plain unknown name) gets a spec without bounds.
    """
    from kalm.envs.registry import find_env

    definition = find_env(data.spec.env)
    if definition is None:
        return RolloutSpec(data.spec.env, data.spec.obs_dim, data.spec.action_type,
                           data.spec.action_dim)
    spec = RolloutSpec.for_env(definition, data.spec.env)
    own = (spec.obs_dim, spec.action_type, spec.action_dim)
    found = (data.spec.obs_dim, data.spec.action_type, data.spec.action_dim)
    if own != found:
        raise ValueError(f"the data says env {data.spec.env!r} with (obs_dim, action_type, "
                         f"action_dim) = {found}, but that env defines {own}")
    return spec


def env_paraphrases(env: str, level: str, definition: EnvDefinition | None = None
                    ) -> Paraphrases:
    """Paraphrases from the env's built-in suite `level`, when it has one (`definition`: the
    env already looked up, else found from the string)."""
    from kalm.envs.registry import find_env

    definition = definition if definition is not None else find_env(env)
    if definition is None or not level or not definition.levels or (
            level == "train" and definition.suite_path(level) is None):  # default, absent
        return Paraphrases()
    from kalm.data.suites import load_builtin_suite

    return Paraphrases.from_suite(load_builtin_suite(level, definition))


def split_episodes(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation split by episode (10% by default), seeded."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    n_val = round(n * fraction) if n > 1 else 0
    n_val = min(max(n_val, 1 if fraction > 0 and n > 1 else 0), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def state_statistics(data: EpisodeData) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean/std over every valid state of the training episodes.

    A coordinate that never varies (an entity block unused by every training task is exactly
    zero) gets std 1: with the 1e-3 floor the others get, a value there that the training data
    never showed (an easy task's entity in s0) would enter the state embedding, and the residual
    head's base, amplified 1000x."""
    t = np.arange(data.observations.shape[1])[None, :]
    valid = t <= data.lengths[:, None]
    states = data.observations[valid]
    std = states.std(0)
    return states.mean(0), np.where(std < DEGENERATE_STD, np.ones_like(std), std + 1e-3)


def zero_held_statistics(data: EpisodeData, tol: float = ZERO_TOL) -> np.ndarray:
    """(obs_dim,) bool: coordinates that stay zero through every training episode that starts
    with them at zero (e.g. the block of an entity a task does not have), and start at zero in
    at least one. Imagination holds them at zero where its start state has them at zero: a
    model that must re-predict an absent entity's zeros drifts there, and on Meta-World those
    blocks carry most of the closed-loop state error
    (docs/experiments/12-metaworld-absent-entities.md)."""
    t = np.arange(data.observations.shape[1])[None, :]
    valid = (t <= data.lengths[:, None])[..., None]
    obs = data.observations
    starts_zero = np.abs(obs[:, 0]) <= tol  # (N, obs_dim)
    leaves_zero = ((np.abs(obs) > tol) & valid).any(1)
    return starts_zero.any(0) & ~(starts_zero & leaves_zero).any(0)


def delta_statistics(data: EpisodeData) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean/std of the one-step state changes of the training episodes (a
    coordinate that never changes gets std 1, as in `state_statistics`)."""
    t = np.arange(data.observations.shape[1] - 1)[None, :]
    valid = t < data.lengths[:, None]
    deltas = (data.observations[:, 1:] - data.observations[:, :-1])[valid]
    std = deltas.std(0)
    return deltas.mean(0), np.where(std < DEGENERATE_STD, np.ones_like(std), std + 1e-3)


class WarmupCosine:
    """Linear warmup, then cosine decay to `min_ratio` at step `total`.

    An object rather than a closure so a time budget can set `total` once it is known (the
    schedule does not depend on `total` during warmup, so the steps run before are unaffected).
    """

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, progress)))


def lr_lambda(warmup: int, total: int, min_ratio: float) -> WarmupCosine:
    return WarmupCosine(warmup, total, min_ratio)


class _Log:
    """Metrics as JSON lines (and TensorBoard when installed)."""

    def __init__(self, folder: Path, resume_step: int) -> None:
        self.path = folder / "metrics.jsonl"
        if self.path.exists():  # drop lines written after the checkpoint we resume from
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep))
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder / "tb"), purge_step=resume_step + 1)
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        rec = {"step": step, "split": split, **values}
        with self.path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def save_checkpoint(folder: Path, step: int, model: RolloutModel, optimizer, scheduler,
                    meta: dict[str, Any], keep: int, total_steps: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.pt"
    tmp = folder / f".{path.name}.tmp{os.getpid()}"
    torch.save({"step": step, "model": trainable_state(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "meta": meta,
                "total_steps": total_steps}, tmp)
    tmp.replace(path)
    for old in _checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def training_attention(cfg: GroundConfig, use_bf16: bool | None = None,
                       device: torch.device | None = None) -> str | None:
    """The attention implementation to train with (None: keep the backbone's).

    `use_bf16`/`device` are the resolved precision and device (resolved from cfg when None)."""
    if cfg.attn_implementation == "auto":
        device = device if device is not None else resolve_device(cfg.device)
        if use_bf16 is None:
            use_bf16, _ = resolve_bf16(cfg.bf16, device)
        return "eager" if use_bf16 and device.type == "cpu" else None
    if cfg.attn_implementation not in ("eager", "sdpa", "flash_attention_2"):
        raise ValueError(f"attn_implementation must be auto, eager, sdpa or flash_attention_2, "
                         f"got {cfg.attn_implementation!r}")
    return cfg.attn_implementation


class Grounder:
    """Holds the pieces of one grounding run (also used by metrics and tests).

    `spec` and `paraphrases` stand in for what is otherwise read from the env definition, so a
    machine without the simulator (a GPU box without mujoco) can ground on prepared inputs."""

    def __init__(self, cfg: GroundConfig, backbone: Backbone | None = None,
                 use_bf16: bool | None = None, device: torch.device | None = None,
                 spec: RolloutSpec | None = None, paraphrases: Paraphrases | None = None
                 ) -> None:
        self.cfg = cfg
        data = read_episodes(cfg.data)
        self.spec = spec if spec is not None else spec_for(data)
        self.backbone = backbone or load_backbone(cfg.backbone)
        attn = training_attention(cfg, use_bf16, device)
        if attn is not None:
            self.backbone.model.set_attn_implementation(attn)
        self.train_idx, self.val_idx = split_episodes(len(data), cfg.val_fraction, cfg.seed)
        self.train_data = data.subset(self.train_idx)
        self.val_data = data.subset(self.val_idx) if len(self.val_idx) else None
        torch.manual_seed(cfg.seed)
        self.model = build_rollout_model(self.backbone, self.spec, cfg.model, cfg.adapter)
        mean, std = state_statistics(self.train_data)
        self.model.set_normalizer(torch.from_numpy(mean), torch.from_numpy(std))
        self.model.set_zero_held(torch.from_numpy(zero_held_statistics(self.train_data)))
        if cfg.model.state_head == "delta":
            d_mean, d_std = delta_statistics(self.train_data)
            self.model.set_delta_normalizer(torch.from_numpy(d_mean), torch.from_numpy(d_std))
        self.builder = PromptBuilder(self.backbone.tokenizer)
        self.paraphrases = paraphrases if paraphrases is not None else self._paraphrases()
        steps_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        # None under a time budget without a `steps` cap: fitted once the step time is measured
        self.total_steps: int | None
        if cfg.budget_minutes is not None:
            self.total_steps = cfg.steps
        else:
            self.total_steps = cfg.steps if cfg.steps is not None else max(
                1, round(cfg.epochs * steps_per_epoch))
        self.meta = model_meta(self.model, self.backbone, cfg.adapter, {
            "train": {"data": str(cfg.data), "episodes": len(self.train_data),
                      "val_episodes": len(self.val_idx), "steps": self.total_steps,
                      "seed": cfg.seed}})

    def _paraphrases(self) -> Paraphrases:
        return env_paraphrases(self.spec.env, self.cfg.paraphrase_suite)

    def collator(self, data: EpisodeData) -> Collator:
        return Collator(data, self.builder, self.paraphrases, self.spec.action_type,
                        self.spec.action_dim)

    def validation_batches(self, n_episodes: int) -> list[dict[str, torch.Tensor]]:
        """Fixed batches: every objective on the first n validation episodes."""
        if self.val_data is None:
            return []
        from kalm.llm.batching import SampleSpec

        n = min(n_episodes, len(self.val_data))
        specs = [SampleSpec(i, o, 1000 + i) for o in OBJECTIVES
                 if self.cfg.objectives.get(o, 0) > 0 for i in range(n)]
        col = self.collator(self.val_data)
        bs = self.cfg.batch_size
        return [col(specs[i : i + bs]) for i in range(0, len(specs), bs)]


@torch.no_grad()
def evaluate_losses(model: RolloutModel, batches: list[dict[str, torch.Tensor]],
                    weights: LossWeights, autocast, length_groups: int = 1) -> dict[str, float]:
    model.eval()
    device = model_device(model)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in batches:
        with autocast():
            out = grounding_losses(model, to_device(batch, device), weights, length_groups)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    model.train()
    return {k: sums[k] / counts[k] for k in sums}


BUDGET_PROBE_STEPS = 8  # steps timed before a time budget fixes the schedule's length
BUDGET_MARGIN = 0.05  # share of the budget kept free for what the estimate misses
_UNBOUNDED_STEPS = 10_000_000  # data stream length while a budget has not fixed the total


@torch.no_grad()
def padded_tokens(lengths: list[int], batch_size: int) -> int:
    """Positions the metrics' passes over sequences of these lengths compute (`length_batches`,
    each pass padded to its longest)."""
    from kalm.llm.metrics import length_batches

    return padded_positions(lengths, length_batches(lengths, batch_size))


def estimate_metrics_seconds(g: Grounder, model: RolloutModel, eval_s: float,
                             val_tokens: int) -> float:
    """What the final `grounding_metrics` will cost: the teacher-forced passes scaled by padded
    positions from the validation pass just timed (not by sequences: the metrics are mostly
    one-step dynamics prompts, a few positions each, while the validation batches mix in whole
    rollouts; a 100-step Meta-World rollout is ~70x a dynamics prompt), the greedy explanations
    from a short timed decode (their per-token cost is unlike a teacher-forced pass's)."""
    from kalm.llm.metrics import EXPLAIN_BATCH, EXPLAIN_TOKENS, METRICS_BATCH, greedy_text

    cfg = g.cfg
    if g.val_data is None or cfg.metrics_episodes <= 0:
        return 0.0
    n = min(cfg.metrics_episodes, len(g.val_data))
    eps = [g.val_data.episode(i) for i in range(n)]
    b = g.builder
    rollouts = [len(b.rollout(e.instruction, e.observations, e.actions)) for e in eps]
    finals = [len(b.consequence(e.instruction, e.observations[0], e.observations[e.length]))
              for e in eps]
    # a dynamics prompt holds no text: every one has the first one's length
    first = next((e for e in eps if e.length), None)
    step = 0 if first is None else len(b.dynamics(first.observations[0], first.actions[0],
                                                  first.observations[1]))
    tokens = step * sum(e.length for e in eps) + sum(
        padded_tokens(x, METRICS_BATCH) for x in (rollouts, finals) if x)
    seconds = eval_s / val_tokens * tokens if val_tokens else 0.0
    m = min(cfg.explain_episodes, n)
    if m:
        eps = [g.val_data.episode(i) for i in range(min(m, EXPLAIN_BATCH))]
        prompts = [g.builder.explanation_prompt(e.observations, e.actions) for e in eps]
        was_training = model.training
        model.eval()
        t = time.perf_counter()
        greedy_text(model, g.builder, prompts, max_new_tokens=1)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        greedy_text(model, g.builder, prompts, max_new_tokens=3)
        per_token = max(0.0, (time.perf_counter() - t - t1) / 2)
        model.train(was_training)
        seconds += math.ceil(m / EXPLAIN_BATCH) * (t1 + EXPLAIN_TOKENS * per_token)
    return seconds


def fit_budget(cfg: GroundConfig, step: int, elapsed_s: float, step_s: float, eval_s: float,
               save_s: float, metrics_s: float) -> tuple[int, dict[str, Any]]:
    """The total number of steps that ends the run (validation every `eval_every`, checkpoints
    every `save_every`, the final save and metrics) inside `budget_minutes`, given the measured
    costs so far; never fewer than the steps already done."""
    assert cfg.budget_minutes is not None
    budget_s = 60.0 * cfg.budget_minutes
    per_step = step_s + eval_s / max(1, cfg.eval_every) + save_s / max(1, cfg.save_every)
    final = eval_s + 2 * save_s + metrics_s  # last validation, checkpoint + model, metrics
    free = budget_s * (1 - BUDGET_MARGIN) - elapsed_s - final
    total = step + max(0, math.floor(free / per_step))
    if cfg.steps is not None:
        total = min(total, max(cfg.steps, step))
    plan = {"budget_minutes": cfg.budget_minutes, "fitted_at_step": step,
            "elapsed_s": round(elapsed_s, 3), "step_s": round(step_s, 4),
            "eval_s": round(eval_s, 3), "save_s": round(save_s, 3),
            "metrics_s_estimate": round(metrics_s, 3), "steps": total,
            "predicted_total_s": round(elapsed_s + (total - step) * per_step + final, 3)}
    return total, plan


def refit_budget(plan: dict[str, Any], refit: tuple[int, dict[str, Any]]
                 ) -> tuple[int, dict[str, Any]]:
    """A later fit of the same budget: the first plan's numbers stay (what the probe saw), the
    new length and the step time it used are appended to `refits`."""
    total, new = refit
    refits = [*plan.get("refits", []), {"at_step": new["fitted_at_step"],
                                         "step_s": new["step_s"], "steps": total}]
    return total, {**plan, "steps": total, "refits": refits,
                   "predicted_total_s": new["predicted_total_s"]}


def throughput(step_times: list[float], token_counts: list[tuple[int, int]]
               ) -> dict[str, float | None]:
    """Tokens per step and per second of this process (the first step warms up and is left
    out, as in `step_seconds`), and the share of padding in the batches: long prompts (a
    100-step Meta-World rollout is ~10x a CLEVR one) make the step time, and padding shows
    what packing could win back."""
    n = min(len(step_times), len(token_counts))
    pairs = list(zip(step_times[:n], token_counts[:n], strict=True))
    timed = pairs[1:] if len(pairs) > 1 else pairs
    if not timed:
        return {"tokens_per_step": None, "tokens_per_second": None, "padding_share": None}
    seconds = sum(t for t, _ in timed)
    real = sum(c[0] for _, c in timed)
    padded = sum(c[1] for _, c in timed)
    return {"tokens_per_step": real / len(timed),
            "tokens_per_second": real / seconds if seconds > 0 else None,
            "padding_share": 1 - real / padded if padded else None}


def _accelerator(cpu: bool, mixed_precision: str):
    """accelerate keeps one process-wide state and refuses a second Accelerator with another
    precision, but one process may ground twice (a bf16 model, then an fp32 one: the tests do,
    and so does any notebook comparing the two); a single-process state holds nothing else worth
    keeping, so it is reset. A distributed launch keeps its state (one precision per launch)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    shared = AcceleratorState._shared_state
    if (shared and shared.get("_mixed_precision") != mixed_precision
            and shared.get("distributed_type") == DistributedType.NO):
        AcceleratorState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def ground(cfg: GroundConfig, resume: bool = False, backbone: Backbone | None = None,
           progress: bool = True, spec: RolloutSpec | None = None,
           paraphrases: Paraphrases | None = None) -> dict[str, Any]:
    """Train, save the model to cfg.out, compute grounding metrics; returns the metrics."""
    from accelerate.utils import broadcast_object_list

    t_start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate places a single process on the current GPU
    use_bf16, probe = resolve_bf16(cfg.bf16, device)
    acc = _accelerator(device.type == "cpu", "bf16" if use_bf16 else "no")
    if acc.device.type != device.type:
        raise ValueError(f"device {cfg.device!r} resolves to {device}, but accelerate runs this "
                         f"process on {acc.device}")
    g = Grounder(cfg, backbone, use_bf16=use_bf16, device=acc.device, spec=spec,
                 paraphrases=paraphrases)
    precision = {"dtype": "bfloat16" if use_bf16 else "float32", "bf16_probe": probe,
                 "device": str(acc.device)}
    g.meta["train"].update(precision)
    model = g.model
    groups = param_groups(model, g.cfg.learning_rate, cfg.head_lr_scale)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    total: int | None = g.total_steps
    schedule = WarmupCosine(cfg.warmup_steps, total or _UNBOUNDED_STEPS, cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ckpt_dir = out / "checkpoints"
    start = 0
    plan: dict[str, Any] | None = None
    if resume and _checkpoints(ckpt_dir):
        last = _checkpoints(ckpt_dir)[-1]
        state = torch.load(last, map_location="cpu", weights_only=False)
        check_backbone(state["meta"], g.backbone, str(last))
        check_spec(state["meta"], g.spec, str(last))
        check_model(state["meta"], cfg.model, str(last))
        load_trainable_state(model, state["model"], str(last))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        if cfg.budget_minutes is not None and state.get("total_steps") is not None:
            total = int(state["total_steps"])  # the schedule the interrupted run fitted
            plan = state["meta"]["train"].get("budget")
    elif ckpt_dir.exists() and not resume:
        for old in _checkpoints(ckpt_dir):
            old.unlink()
        (out / "metrics.jsonl").unlink(missing_ok=True)
    if total is not None:
        schedule.total = total

    def set_total(n: int) -> None:
        schedule.total = n
        g.total_steps = n
        g.meta["train"]["steps"] = n
        if plan is not None:
            g.meta["train"]["budget"] = plan

    if total is not None:
        set_total(total)
    # the budget's measured costs (validation, checkpoint, metrics) in the process that fitted
    # it; a resumed run keeps the schedule its checkpoint stored and does not refit
    costs: tuple[float, float, float] | None = None
    refit_from = 0

    def follow_plan(fitted: tuple[int, dict[str, Any]],
                    current: tuple[int, dict[str, Any]] | None = None
                    ) -> tuple[int, dict[str, Any]]:
        """Adopt the main process's fit on every process; with CURRENT (a refit), only a
        shorter run is adopted."""
        box = list(fitted)
        broadcast_object_list(box)  # every process follows the main one's plan
        n, new_plan = int(box[0]), box[1]
        if current is not None:
            if n >= current[0]:
                return current
            n, new_plan = refit_budget(current[1], (n, new_plan))
        set_total(n)
        g.meta["train"]["budget"] = new_plan
        bar.total = n
        bar.refresh()
        return n, new_plan

    stream = (total if total is not None else _UNBOUNDED_STEPS) * acc.num_processes
    samples = GroundingSamples(len(g.train_data), cfg.batch_size, stream, cfg.objectives,
                               cfg.seed)
    loader = torch.utils.data.DataLoader(samples, batch_size=cfg.batch_size, shuffle=False,
                                         collate_fn=g.collator(g.train_data), num_workers=0)
    # the scheduler is stepped here once per optimizer step (accelerate's wrapper would step it
    # once per process)
    objective, optimizer, loader = acc.prepare(
        GroundingObjective(model, cfg.loss_weights, cfg.length_groups), optimizer, loader)
    if start:
        loader = acc.skip_first_batches(loader, start)
    log = _Log(out, start) if acc.is_main_process else None
    inner = acc.unwrap_model(objective).model
    val_batches = [to_device(b, model_device(inner))
                   for b in g.validation_batches(cfg.eval_episodes)]
    (out / "ground_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))

    def validate(at: int) -> float:
        t = time.perf_counter()
        if val_batches and log is not None:
            log.write(at, "val", evaluate_losses(inner, val_batches, cfg.loss_weights,
                                                 acc.autocast, cfg.length_groups))
        return time.perf_counter() - t

    def checkpoint(at: int) -> float:
        t = time.perf_counter()
        if acc.is_main_process:
            save_checkpoint(ckpt_dir, at, inner, optimizer, scheduler, g.meta,
                            cfg.keep_checkpoints, total_steps=total)
        return time.perf_counter() - t

    objective.train()
    t0 = time.time()
    step = start
    probe_steps = max(1, min(BUDGET_PROBE_STEPS, cfg.warmup_steps + 1))
    step_times: list[float] = []
    token_counts: list[tuple[int, int]] = []
    bar = tqdm(total=total, initial=start, desc="ground", unit="step",
               disable=not (progress and acc.is_main_process))
    running: dict[str, float] = {}
    mark = time.perf_counter()  # step times include loading the batch and logging
    for batch in loader:
        if total is not None and step >= total:
            break
        attn = batch["attention_mask"]
        # (real tokens, positions the backbone computes in this batch's length groups)
        token_counts.append((int(attn.sum()), computed_positions(attn.sum(1).tolist(),
                                                                 cfg.length_groups)))
        with acc.autocast():
            losses = objective(batch)
        acc.backward(losses["loss"])
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        values = {k: float(v.detach()) for k, v in losses.items()}  # also waits for the device
        for k, v in values.items():
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        bar.update(1)
        bar.set_postfix({k.replace("_state", "_s"): f"{v:.3g}" for k, v in running.items()
                         if k != "rollout_action_acc"})
        if log is not None:
            log.write(step, "train", {**values, "lr": scheduler.get_last_lr()[0],
                                      "elapsed_s": time.time() - t0,
                                      "tokens": token_counts[-1][0]})
        step_times.append(time.perf_counter() - mark)
        fitted_now = total is None and step >= probe_steps
        if fitted_now:
            # the schedule has not depended on its length yet (still in warmup): fix it now
            eval_s = validate(step)
            save_s = checkpoint(step)  # timed here, rewritten below with the fitted length
            metrics_s = estimate_metrics_seconds(g, inner, eval_s, sum(
                computed_positions(b["attention_mask"].sum(1).tolist(), cfg.length_groups)
                for b in val_batches)) if acc.is_main_process else 0.0
            timed = step_times[1:] if len(step_times) > 2 else step_times
            costs = (eval_s, save_s, metrics_s)
            refit_from = len(step_times)
            total, plan = follow_plan(fit_budget(cfg, step, time.time() - t_start,
                                                 float(np.mean(timed)), *costs))
            checkpoint(step)
        timed_out = ((cfg.time_limit_minutes is not None
                      and time.time() - t0 > 60 * cfg.time_limit_minutes)
                     or (cfg.stop_at_step is not None and step >= cfg.stop_at_step))
        if (not fitted_now and costs is not None and plan is not None
                and step % cfg.eval_every == 0 and step < total):
            # steps slow down as a CPU run goes on (1.2 s when probed, ~2 s after 300 steps
            # of CLEVR in bf16): refit the length to the recent step time so the run ends
            # inside its budget; only ever shorter, so the learning rate never rises again
            recent = float(np.mean(step_times[refit_from:]))
            refit_from = len(step_times)
            total, plan = follow_plan(
                fit_budget(cfg, step, time.time() - t_start, recent, *costs), (total, plan))
        last = (total is not None and step >= total) or timed_out
        if not fitted_now:
            if val_batches and (step % cfg.eval_every == 0 or last):
                validate(step)
            if step % cfg.save_every == 0 or last:
                checkpoint(step)
        acc.wait_for_everyone()
        if timed_out:
            break
        mark = time.perf_counter()
    bar.close()
    if log is not None:
        log.close()
    timed = step_times[1:] if len(step_times) > 1 else step_times  # the first one warms up
    result: dict[str, Any] = {"steps": step, "steps_planned": total,
                              "train_seconds": time.time() - t0,
                              "step_seconds": float(np.mean(timed)) if timed else None,
                              **throughput(step_times, token_counts), **precision}
    if plan is not None:
        result["budget"] = plan
    if acc.is_main_process:
        meta = {**g.meta, "train": {**g.meta["train"], "steps_done": step}}
        save_rollout_model(inner, out, meta)
        if g.val_data is not None and cfg.metrics_episodes > 0:
            from kalm.llm.metrics import grounding_metrics

            metrics = grounding_metrics(inner, g.builder, g.val_data, g.paraphrases,
                                        max_episodes=cfg.metrics_episodes,
                                        explain_episodes=cfg.explain_episodes)
            result.update(metrics)
        result["wall_seconds"] = time.time() - t_start
        write_json(result, out / "grounding_metrics.json")
    return result


def export_checkpoint(run_dir: str | Path, step: int, out: str | Path,
                      backbone: Backbone | None = None) -> Path:
    """Turn checkpoint `step` of a grounding run into a loadable model folder."""
    ckpt = Path(run_dir) / "checkpoints" / f"step-{step:07d}.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    meta = state["meta"]
    model = model_from_meta(meta, backbone, str(ckpt))
    load_trainable_state(model, state["model"], str(ckpt))
    return save_rollout_model(model, out, {**meta, "train": {**meta["train"],
                                                             "steps_done": step}})
