"""`kalm imagine`: imaginary rollouts for a goal suite, labelled and checked.

The environment is the one the model was grounded on (`spec.env` of its metadata, the env string
given to `kalm collect`). Each rollout starts from the goal's `init` or a seeded reset of the real
env (redrawn while the goal already holds, as for real data), is decoded by the grounded model,
labelled with the env's own success and reward functions, as real data is, and checked against
the simulator. Work is done in
chunks written to `<out>.parts/`, so an interrupted run resumes; the output is written atomically.

A rollout depends on its task only: with a sampling temperature each one draws from its own
stream seeded by (seed, task index), so batch size, chunking and resuming do not change it (the
batch size is therefore not part of the resume identity). The explanation check runs only under
`filter_explanation`; rollouts it did not judge are stored as unchecked, never as consistent.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from kalm.data.episodes import Episode, EpisodeData, read_episodes, write_episodes
from kalm.data.rollout import episode_seed, reset_unsolved
from kalm.data.suites import resolve_suite
from kalm.envs.registry import EnvDefinition, EnvLike, get_env, make_env
from kalm.imagination.quality import QualityReport, RolloutCheck, assess_rollout
from kalm.io import write_json
from kalm.llm.device import resolve_device
from kalm.llm.generate import first_action_logits, imagine_batch
from kalm.llm.model import RolloutSpec
from kalm.llm.prompts import PromptBuilder, normalize_instruction

UNREALISTIC = "unrealistic_"  # extras key prefix: unrealistic transitions of one category


@dataclass
class ImagineConfig:
    model: str = ""
    out: str = ""
    suite: str = "rephrase"
    suite_file: str | None = None
    per_goal: int = 10
    batch_size: int = 16
    max_steps: int | None = None  # cap on the goal's own limit (50; 1 for push goals)
    seed: int = 0
    temperature: float = 0.0
    use_cache: bool = True
    filter: bool = False  # drop rollouts with unrealistic transitions
    filter_explanation: bool = False  # drop rollouts whose own explanation names another goal
    init_region: str = "paper"
    chunk_size: int = 128
    backbone: str | None = None  # load the model onto this local backbone folder instead
    clamp: bool | None = None  # override the model's clamping of generated states
    # keep the coordinates the grounding data never moved off zero at zero where the start
    # state has them at zero (an absent entity stays absent; RolloutModel.hold_zeros)
    hold_zeros: bool = False
    device: str = "auto"  # where the model runs: auto = cuda when present, else cpu
    goals: int | None = None  # the suite's first N goals only (smoke runs, quick looks)
    # best-of-N: proposals per task from the same start state, the first at `temperature`
    # (greedy by default), the others sampled at `proposal_temperature`; the label stage keeps
    # one per task, a verified one where there is one
    proposals: int = 1
    proposal_temperature: float = 1.0
    # discrete actions: a task's proposals start with distinct first actions, drawn without
    # replacement from the model's first-step distribution (the first proposal's as above, the
    # others at `proposal_temperature`; the rest of each rollout decoded as usual). Best-of-N
    # needs the N to cover different answers, and a sharper model repeats its choice
    # (docs/experiments/20-grounding-64-minutes.md)
    distinct_first: bool = False


@dataclass(frozen=True)
class Task:
    index: int
    level: str
    instruction: str
    goal: dict[str, Any]
    init: tuple[float, ...] | None


def plan_tasks(cfg: ImagineConfig, env: EnvLike = "clevr") -> list[Task]:
    suite = resolve_suite(cfg.suite, cfg.suite_file, env)
    tasks = []
    groups = suite.groups()
    for group in groups[: cfg.goals] if cfg.goals is not None else groups:
        for _ in range(cfg.per_goal):
            i = len(tasks)
            rng = np.random.default_rng(episode_seed(cfg.seed, i))
            e = group[int(rng.integers(len(group)))]
            tasks.append(Task(i, e.level, e.instruction, e.goal, e.init))
    return tasks


def task_start(env: gym.Env, cfg: ImagineConfig, task: Task) -> tuple[np.ndarray, int]:
    """(start state, reset seed) of TASK: one place, so that `imagine` and `task_starts` (and
    so the planner's tasks) start every task from the same state."""
    seed = episode_seed(cfg.seed, task.index)
    s0, _ = reset_unsolved(env, task.goal, task.instruction, seed, task.init)
    return np.asarray(s0, np.float32), seed


def task_starts(cfg: ImagineConfig, env: EnvLike = "clevr") -> list[Episode]:
    """The tasks `imagine` would decode for CFG, without a model: one zero-step episode per
    task holding its goal, instruction and the very start state `imagine` resets to (the same
    seeds), with `level` and `task_index` extras. What a search that needs no LLM (the
    planner's uniform prior) plans from where no imagine stage has run. (A list: an episode
    file holds no zero-step episodes.)"""
    definition = get_env(env)
    tasks = plan_tasks(cfg, definition)
    sim = make_env(definition, cfg.init_region)
    try:
        episodes = []
        for t in tasks:
            s0, _ = task_start(sim, cfg, t)
            empty = np.zeros((0, *sim.action_space.shape), np.int64 if
                             definition.spec.action_type == "discrete" else np.float32)
            episodes.append(Episode(s0[None], empty,
                                    np.zeros(0, np.float32), np.zeros(0, bool), t.instruction,
                                    t.goal, extras={"level": str(t.level),
                                                    "task_index": t.index}))
    finally:
        sim.close()
    return episodes


def sampling_seed(seed: int, index: int) -> int:
    """The seed of task `index`'s action sampling: its own stream, apart from the reset seed
    `episode_seed(seed, index)` of the same task."""
    return int(np.random.SeedSequence([seed, index], spawn_key=(1,)).generate_state(1)[0])


def proposal_seed(seed: int, index: int, proposal: int) -> int:
    """Proposal `proposal` of task `index` samples from its own stream; proposal 0 from the
    task's own (`sampling_seed`), so one proposal per task is exactly the plain run."""
    if proposal == 0:
        return sampling_seed(seed, index)
    return int(np.random.SeedSequence([seed, index, proposal], spawn_key=(1,))
               .generate_state(1)[0])


def explanation_verdict(extras: dict[str, Any]) -> bool | None:
    """True/False when the rollout's explanation was judged, None when it was not (files
    written before the `explanation_checked` flag stored an unjudged True: not checked)."""
    if not bool(extras.get("explanation_checked", False)):
        return None
    return bool(extras["explanation_consistent"])


def _context_ok(builder: PromptBuilder, model, text: str, steps: int) -> str | None:
    """Why a prompt cannot be used, or None."""
    try:
        norm = normalize_instruction(text)
    except ValueError:
        return "empty instruction"
    limit = getattr(model.backbone.config, "max_position_embeddings", None)
    need = len(builder.tokens(f"Goal: {norm}\nRollout:")) + 2 * steps + 2
    if limit is not None and need > limit:
        return f"prompt needs {need} positions, the backbone has {limit}"
    return None


def distinct_first_actions(logits: np.ndarray, proposals: int, temperature: float,
                           proposal_temperature: float, rng: np.random.Generator) -> list[int]:
    """First actions for a task's proposals, distinct while there are actions left: the first
    greedy (temperature 0) or sampled, the others drawn without replacement (one at a time from
    the renormalised remainder, the law of Gumbel top-k) at `proposal_temperature` (0: in order
    of the logits); past the number of actions, sampled."""
    logits = np.asarray(logits, dtype=np.float64)
    n = len(logits)

    def sample(temp: float, allowed: np.ndarray) -> int:
        if temp <= 0:
            return int(np.flatnonzero(allowed)[np.argmax(logits[allowed])])
        z = np.where(allowed, logits / temp, -np.inf)
        p = np.exp(z - z.max())
        return int(rng.choice(n, p=p / p.sum()))

    everything = np.ones(n, dtype=bool)
    out = [sample(temperature, everything)]
    left = everything.copy()
    left[out[0]] = False
    while len(out) < proposals:
        out.append(sample(proposal_temperature, left if left.any() else everything))
        left[out[-1]] = False
    return out


def _first_actions(cfg: ImagineConfig, model, builder: PromptBuilder,
                   ready: list[tuple[Task, int, np.ndarray, int]]) -> dict[int, list[int]]:
    """Task index -> its proposals' distinct first actions (`distinct_first`), from one pass
    over the prompts; each task's draw is seeded by the task alone."""
    out: dict[int, list[int]] = {}
    for i in range(0, len(ready), cfg.batch_size):
        batch = ready[i : i + cfg.batch_size]
        logits = first_action_logits(model, builder, [b[0].instruction for b in batch],
                                     np.stack([b[2] for b in batch]))
        for (t, *_), row in zip(batch, logits, strict=True):
            rng = np.random.default_rng(proposal_seed(cfg.seed, t.index, 0))
            out[t.index] = distinct_first_actions(row, cfg.proposals, cfg.temperature,
                                                  cfg.proposal_temperature, rng)
    return out


def _task_steps(cfg: ImagineConfig, definition: EnvDefinition, task: Task) -> int:
    limit = int(definition.max_steps(task.goal))
    return limit if cfg.max_steps is None else min(cfg.max_steps, limit)


def _run_chunk(cfg: ImagineConfig, model, builder: PromptBuilder, definition: EnvDefinition,
               env: gym.Env, tasks: list[Task], bar, error_width: int = 50
               ) -> tuple[list[Episode], list[dict[str, Any]]]:
    episodes, skipped = [], []
    ready = []
    for t in tasks:
        steps = _task_steps(cfg, definition, t)
        why = _context_ok(builder, model, t.instruction, steps)
        if why:
            skipped.append({"index": t.index, "instruction": t.instruction, "reason": why})
            bar.update(1)
            continue
        s0, s = task_start(env, cfg, t)
        ready.append((t, steps, s0, s))
    # every proposal of a task starts from the task's start state; rows sampled at one
    # temperature are decoded together
    first = (_first_actions(cfg, model, builder, ready)
             if cfg.distinct_first and cfg.proposals > 1 else None)
    rows = [(t, steps, s0, s, j) for t, steps, s0, s in ready for j in range(cfg.proposals)]
    by_temperature: dict[float, list[tuple[Task, int, np.ndarray, int, int]]] = {}
    for row in rows:
        temp = cfg.temperature if row[4] == 0 else cfg.proposal_temperature
        by_temperature.setdefault(temp, []).append(row)
    decoded = []
    for temp, group in by_temperature.items():
        for i in range(0, len(group), cfg.batch_size):
            batch = group[i : i + cfg.batch_size]
            rolls = imagine_batch(model, builder, [b[0].instruction for b in batch],
                                  np.stack([b[2] for b in batch]), [b[0].goal for b in batch],
                                  [b[1] for b in batch], definition.success, temperature=temp,
                                  use_cache=cfg.use_cache,
                                  seeds=[proposal_seed(cfg.seed, b[0].index, b[4])
                                         for b in batch],
                                  judges=[definition.step_judge(b[0].goal, b[2])
                                          for b in batch], hold_zeros=cfg.hold_zeros,
                                  first_actions=None if first is None else
                                  [first[b[0].index][b[4]] for b in batch])
            decoded += list(zip(batch, rolls, strict=True))
            bar.update(len(batch) / cfg.proposals)
    decoded.sort(key=lambda d: (d[0][0].index, d[0][4]))  # task order, then proposal order
    for (t, _, _, s, j), r in decoded:
        rewards, terminals = definition.labels(t.goal, r.observations, r.actions)
        rng = np.random.default_rng(s + 17 + 1000003 * j)
        a = assess_rollout(definition, env, t.goal, r.observations, r.actions, r.success, rng)
        check = a.check or RolloutCheck(transitions=len(r.actions))
        errors = a.errors
        ep = Episode(r.observations, r.actions, rewards, terminals, t.instruction, t.goal,
                     extras={"task_index": t.index, "proposal": j,
                             "self_success": r.success,
                             "replay_success": bool(a.replay_ok),
                             "random_replay_success": bool(a.random_ok),
                             "replayed": a.replay_ok is not None,
                             "realism_checked": a.check is not None,
                             "realistic": check.realistic,
                             **{UNREALISTIC + k: v for k, v in check.counts.items()},
                             "mean_state_error": float(np.mean(errors)) if len(errors)
                             else float("nan"),
                             "state_errors": _pad(errors, error_width),
                             "explanation_checked": False,
                             "explanation_consistent": False})
        ep.extras["level"] = t.level
        episodes.append(ep)
    return episodes, skipped


def _pad(errors: np.ndarray, width: int = 50) -> np.ndarray:
    """Per-step errors at one width for the whole file (the longest rollout planned, at least
    50: CLEVR's limit; Meta-World's episodes are 100 steps)."""
    out = np.full(width, np.nan, dtype=np.float32)
    out[: min(width, len(errors))] = errors[:width]
    return out


def _explanations(model, builder: PromptBuilder, definition: EnvDefinition,
                  episodes: list[Episode]) -> None:
    from kalm.llm.metrics import greedy_text

    judge = definition.explanation_correct
    for i in range(0, len(episodes), 16):
        chunk = episodes[i : i + 16]
        prompts = [builder.explanation_prompt(e.observations, e.actions) for e in chunk]
        for e, text in zip(chunk, greedy_text(model, builder, prompts), strict=True):
            e.extras["explanation_consistent"] = bool(judge(text, e.goal))
            e.extras["explanation_checked"] = True


def imagine(cfg: ImagineConfig, model=None, progress: bool = True) -> dict[str, Any]:
    """Generate, label, check (and optionally filter) imagined rollouts; returns statistics."""
    from kalm.llm.saving import load_rollout_model, read_meta

    if cfg.per_goal < 1:
        raise ValueError("per_goal must be at least 1")
    if cfg.proposals < 1:
        raise ValueError("proposals must be at least 1")
    env_name = model.spec.env if model is not None else read_meta(cfg.model)["spec"]["env"]
    definition = get_env(env_name)
    if cfg.filter_explanation and definition.explanation_correct is None:
        raise ValueError(f"--filter-explanation needs env {definition.name!r} to define "
                         "explanation_correct")
    spec = RolloutSpec.for_env(definition, env_name)
    if cfg.distinct_first and spec.action_type != "discrete":
        raise ValueError(f"distinct_first: distinct first actions need discrete actions; "
                         f"env {env_name!r} has {spec.action_type} ones")
    tasks = plan_tasks(cfg, definition)
    if model is None:
        backbone = None
        if cfg.backbone:
            from kalm.llm.backbone import load_backbone

            backbone = load_backbone(cfg.backbone)
        model, _ = load_rollout_model(cfg.model, backbone=backbone, spec=spec)
        model.to(resolve_device(cfg.device))
    else:
        from kalm.llm.saving import check_spec

        check_spec({"spec": asdict(model.spec)}, spec, "the model")
        if cfg.device != "auto":  # a model handed in stays where it is unless told otherwise
            model.to(resolve_device(cfg.device))
    if cfg.clamp is not None:
        model.config.clamp_states = cfg.clamp
    builder = PromptBuilder(model.tokenizer)
    env = make_env(definition, cfg.init_region)
    episode_spec = definition.episode_spec(env_name)
    out = Path(cfg.out)
    parts = out.with_name(out.name + ".parts")
    # what the rollouts depend on: not the batch size, nor the device (speed only)
    identity = {k: v for k, v in asdict(cfg).items() if k not in ("out", "batch_size", "device")}
    if not cfg.distinct_first:  # parts written before the option existed stay resumable
        del identity["distinct_first"]
    manifest = parts / "manifest.json"
    if parts.exists() and (not manifest.exists()
                           or json.loads(manifest.read_text()) != identity):
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(identity, sort_keys=True))
    error_width = max([50, *(_task_steps(cfg, definition, t) for t in tasks)])
    episodes: list[Episode] = []
    skipped: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), desc="imagine", unit="rollout", disable=not progress)
    for c in range(0, len(tasks), cfg.chunk_size):
        path = parts / f"chunk-{c // cfg.chunk_size:05d}.h5"
        skip_path = path.with_suffix(".skipped.json")
        if path.exists() or skip_path.exists():
            if path.exists():
                episodes.extend(read_episodes(path).episodes())
            if skip_path.exists():
                skipped.extend(json.loads(skip_path.read_text()))
            bar.update(min(cfg.chunk_size, len(tasks) - c))
            continue
        eps, skp = _run_chunk(cfg, model, builder, definition, env,
                              tasks[c : c + cfg.chunk_size], bar, error_width)
        if eps:
            write_episodes(EpisodeData.from_episodes(eps, episode_spec, source="imagined"), path)
        skip_path.write_text(json.dumps(skp))
        episodes.extend(eps)
        skipped.extend(skp)
    bar.close()
    if cfg.filter_explanation:
        _explanations(model, builder, definition, episodes)
    stats = summarize(episodes, skipped, cfg, definition.state_units)
    kept = [e for e in episodes if _keep(e, cfg)]
    if not kept:
        raise RuntimeError("every imagined rollout was filtered out or skipped")
    for e in kept:
        e.extras["level"] = str(e.extras["level"])
    data = EpisodeData.from_episodes(kept, episode_spec, source="imagined",
                                     attrs={"model": cfg.model, "suite": cfg.suite_file or
                                            cfg.suite, "seed": cfg.seed,
                                            "per_goal": cfg.per_goal})
    write_episodes(data, out)
    write_json(stats, out.with_suffix(".stats.json"))
    shutil.rmtree(parts, ignore_errors=True)
    return stats


def _keep(e: Episode, cfg: ImagineConfig) -> bool:
    """Whether the enabled filters let a rollout through. The explanation filter passes only
    rollouts judged consistent: one it never judged has earned nothing."""
    return ((not cfg.filter or bool(e.extras["realistic"]))
            and (not cfg.filter_explanation or explanation_verdict(e.extras) is True))


def summarize(episodes: list[Episode], skipped: list[dict[str, Any]],
              cfg: ImagineConfig, units: str = "") -> dict[str, Any]:
    by_level: dict[str, QualityReport] = {}
    for e in episodes:
        r = by_level.setdefault(str(e.extras["level"]), QualityReport(units=units))
        check = RolloutCheck({k[len(UNREALISTIC):]: int(v) for k, v in e.extras.items()
                              if k.startswith(UNREALISTIC)}, e.length)
        errors = np.asarray(e.extras["state_errors"], dtype=np.float64)
        r.add(bool(e.extras["self_success"]), bool(e.extras["replay_success"]),
              bool(e.extras["random_replay_success"]), check, errors[~np.isnan(errors)],
              replayed=bool(e.extras.get("replayed", True)),
              checked=bool(e.extras.get("realism_checked", True)))
    unrealistic = sum(not bool(e.extras["realistic"]) for e in episodes)
    verdicts = [explanation_verdict(e.extras) for e in episodes]
    checked = sum(v is not None for v in verdicts)
    consistent = sum(v is True for v in verdicts)
    return {"levels": {k: v.to_json() for k, v in by_level.items()},
            "generated": len(episodes), "skipped": skipped,
            "filter": {"unrealistic": {"enabled": cfg.filter, "would_drop": unrealistic},
                       "explanation": {"enabled": cfg.filter_explanation,
                                       "checked": checked,
                                       "consistent": consistent if checked else None,
                                       "would_drop": checked - consistent if checked
                                       else None}},
            "kept": sum(_keep(e, cfg) for e in episodes)}


