"""`kalm ground`: fine-tune a causal LM on the four grounding objectives.

Runs through Hugging Face accelerate (one CPU here; `accelerate launch kalm ground ...` for several
devices, DeepSpeed/FSDP through accelerate's own config). Checkpoints are written atomically every
`save_every` steps; `--resume` continues from the last one and gives the same result as an
uninterrupted run, because the data stream is a pure function of (seed, step).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kalm.data.episodes import EpisodeData, read_episodes
from kalm.io import write_json
from kalm.llm.backbone import Backbone, load_backbone
from kalm.llm.batching import Collator, GroundingSamples, Paraphrases
from kalm.llm.losses import GroundingObjective, LossWeights, grounding_losses
from kalm.llm.model import ModelConfig, RolloutModel, RolloutSpec
from kalm.llm.prompts import OBJECTIVES, PromptBuilder
from kalm.llm.saving import (
    AdapterConfig,
    build_rollout_model,
    check_backbone,
    check_spec,
    load_trainable_state,
    model_from_meta,
    model_meta,
    save_rollout_model,
    trainable_state,
)


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
    lr: float | None = None  # default: 5e-4 with LoRA, 1e-4 for full fine-tuning
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    bf16: bool = False
    # attention kernel: "auto" = eager for bf16 on CPU (1.6x faster than SDPA's CPU flash
    # kernel on short CLEVR sequences, see BENCHMARKS.md), the backbone's default otherwise
    attn_implementation: str = "auto"
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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-4 if self.adapter.mode == "lora" else 1e-4


def clevr_spec() -> RolloutSpec:
    from kalm.envs.registry import get_env

    return get_env("clevr").rollout_spec("clevr")


def spec_for(data: EpisodeData) -> RolloutSpec:
    """The rollout spec (with the env's state bounds) for the env the data names.

    Data from an env kalm cannot load (a plain unknown name) gets a spec without bounds.
    """
    from kalm.envs.registry import find_env

    definition = find_env(data.spec.env)
    if definition is None:
        return RolloutSpec(data.spec.env, data.spec.obs_dim, data.spec.action_type,
                           data.spec.action_dim)
    spec = definition.rollout_spec(data.spec.env)
    own = (spec.obs_dim, spec.action_type, spec.action_dim)
    found = (data.spec.obs_dim, data.spec.action_type, data.spec.action_dim)
    if own != found:
        raise ValueError(f"the data says env {data.spec.env!r} with (obs_dim, action_type, "
                         f"action_dim) = {found}, but that env defines {own}")
    return spec


def split_episodes(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation split by episode (10% by default), seeded."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    n_val = round(n * fraction) if n > 1 else 0
    n_val = min(max(n_val, 1 if fraction > 0 and n > 1 else 0), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def state_statistics(data: EpisodeData) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean/std over every valid state of the training episodes."""
    t = np.arange(data.observations.shape[1])[None, :]
    valid = t <= data.lengths[:, None]
    states = data.observations[valid]
    return states.mean(0), states.std(0) + 1e-3


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


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
                    meta: dict[str, Any], keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.pt"
    tmp = folder / f".{path.name}.tmp{os.getpid()}"
    torch.save({"step": step, "model": trainable_state(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "meta": meta}, tmp)
    tmp.replace(path)
    for old in _checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def training_attention(cfg: GroundConfig) -> str | None:
    """The attention implementation to train with (None: keep the backbone's)."""
    if cfg.attn_implementation == "auto":
        return "eager" if cfg.bf16 and not torch.cuda.is_available() else None
    if cfg.attn_implementation not in ("eager", "sdpa", "flash_attention_2"):
        raise ValueError(f"attn_implementation must be auto, eager, sdpa or flash_attention_2, "
                         f"got {cfg.attn_implementation!r}")
    return cfg.attn_implementation


class Grounder:
    """Holds the pieces of one grounding run (also used by metrics and tests)."""

    def __init__(self, cfg: GroundConfig, backbone: Backbone | None = None) -> None:
        self.cfg = cfg
        data = read_episodes(cfg.data)
        self.spec = spec_for(data)
        self.backbone = backbone or load_backbone(cfg.backbone)
        attn = training_attention(cfg)
        if attn is not None:
            self.backbone.model.set_attn_implementation(attn)
        self.train_idx, self.val_idx = split_episodes(len(data), cfg.val_fraction, cfg.seed)
        self.train_data = data.subset(self.train_idx)
        self.val_data = data.subset(self.val_idx) if len(self.val_idx) else None
        torch.manual_seed(cfg.seed)
        self.model = build_rollout_model(self.backbone, self.spec, cfg.model, cfg.adapter)
        mean, std = state_statistics(self.train_data)
        self.model.set_normalizer(torch.from_numpy(mean), torch.from_numpy(std))
        self.builder = PromptBuilder(self.backbone.tokenizer)
        self.paraphrases = self._paraphrases()
        steps_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        self.total_steps = cfg.steps if cfg.steps is not None else max(
            1, round(cfg.epochs * steps_per_epoch))
        self.meta = model_meta(self.model, self.backbone, cfg.adapter, {
            "train": {"data": str(cfg.data), "episodes": len(self.train_data),
                      "val_episodes": len(self.val_idx), "steps": self.total_steps,
                      "seed": cfg.seed}})

    def _paraphrases(self) -> Paraphrases:
        """Paraphrases from the env's built-in suite `paraphrase_suite`, when it has one."""
        from kalm.envs.registry import find_env

        definition = find_env(self.spec.env)
        level = self.cfg.paraphrase_suite
        if definition is None or not level or not definition.levels or (
                level == "train" and definition.suite_path(level) is None):  # default, absent
            return Paraphrases()
        from kalm.data.suites import load_builtin_suite

        return Paraphrases.from_suite(load_builtin_suite(level, self.spec.env))

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
                    weights: LossWeights, autocast) -> dict[str, float]:
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in batches:
        with autocast():
            out = grounding_losses(model, batch, weights)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    model.train()
    return {k: sums[k] / counts[k] for k in sums}


def ground(cfg: GroundConfig, resume: bool = False, backbone: Backbone | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Train, save the model to cfg.out, compute grounding metrics; returns the metrics."""
    from accelerate import Accelerator

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    g = Grounder(cfg, backbone)
    acc = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no")
    model = g.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=g.cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, g.total_steps, cfg.min_lr_ratio))
    ckpt_dir = out / "checkpoints"
    start = 0
    if resume and _checkpoints(ckpt_dir):
        last = _checkpoints(ckpt_dir)[-1]
        state = torch.load(last, map_location="cpu", weights_only=False)
        check_backbone(state["meta"], g.backbone, str(last))
        check_spec(state["meta"], g.spec, str(last))
        load_trainable_state(model, state["model"], str(last))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
    elif ckpt_dir.exists() and not resume:
        for old in _checkpoints(ckpt_dir):
            old.unlink()
        (out / "metrics.jsonl").unlink(missing_ok=True)

    samples = GroundingSamples(len(g.train_data), cfg.batch_size,
                               g.total_steps * acc.num_processes, cfg.objectives, cfg.seed)
    loader = torch.utils.data.DataLoader(samples, batch_size=cfg.batch_size, shuffle=False,
                                         collate_fn=g.collator(g.train_data), num_workers=0)
    objective, optimizer, loader, scheduler = acc.prepare(
        GroundingObjective(model, cfg.loss_weights), optimizer, loader, scheduler)
    if start:
        loader = acc.skip_first_batches(loader, start)
    log = _Log(out, start) if acc.is_main_process else None
    val_batches = g.validation_batches(cfg.eval_episodes)
    inner = acc.unwrap_model(objective).model
    (out / "ground_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))

    objective.train()
    t0 = time.time()
    step = start
    bar = tqdm(total=g.total_steps, initial=start, desc="ground", unit="step",
               disable=not (progress and acc.is_main_process))
    running: dict[str, float] = {}
    for batch in loader:
        if step >= g.total_steps:
            break
        with acc.autocast():
            losses = objective(batch)
        acc.backward(losses["loss"])
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        for k, v in values.items():
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        bar.update(1)
        bar.set_postfix({k.replace("_state", "_s"): f"{v:.3g}" for k, v in running.items()
                         if k != "rollout_action_acc"})
        if log is not None:
            log.write(step, "train", {**values, "lr": scheduler.get_last_lr()[0],
                                      "elapsed_s": time.time() - t0})
        timed_out = ((cfg.time_limit_minutes is not None
                      and time.time() - t0 > 60 * cfg.time_limit_minutes)
                     or (cfg.stop_at_step is not None and step >= cfg.stop_at_step))
        last = step >= g.total_steps or timed_out
        if val_batches and (step % cfg.eval_every == 0 or last) and log is not None:
            log.write(step, "val", evaluate_losses(inner, val_batches, cfg.loss_weights,
                                                   acc.autocast))
        if (step % cfg.save_every == 0 or last) and acc.is_main_process:
            save_checkpoint(ckpt_dir, step, inner, optimizer, scheduler, g.meta,
                            cfg.keep_checkpoints)
        acc.wait_for_everyone()
        if timed_out:
            break
    bar.close()
    if log is not None:
        log.close()
    result: dict[str, Any] = {"steps": step, "train_seconds": time.time() - t0}
    if acc.is_main_process:
        meta = {**g.meta, "train": {**g.meta["train"], "steps_done": step}}
        save_rollout_model(inner, out, meta)
        if g.val_data is not None and cfg.metrics_episodes > 0:
            from kalm.llm.metrics import grounding_metrics

            metrics = grounding_metrics(inner, g.builder, g.val_data, g.paraphrases,
                                        max_episodes=cfg.metrics_episodes,
                                        explain_episodes=cfg.explain_episodes)
            result.update(metrics)
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
