"""Rollouts without the LLM: random shooting on the dynamics ensemble, a reference for KALM.

What does the grounded LLM add? For the same goals and initial states the LLM imagined rollouts
for (read from an imagine stage's file: one shot rollout per task, however many proposals the LLM
made for it, as KALM keeps one rollout per task), draw `candidates` uniformly random action
sequences of at most the goal's step limit (a CLEVR push goal allows one step), re-simulate
each through the ensemble fitted on the real data, and keep,
per task, the candidate the env's own success function judges successful soonest on the
ensemble's states (the least uncertain among equals); when none succeeds, the first candidate,
labelled a failure. The rollout is then labelled exactly as the ensemble labeller labels an
LLM rollout (`relabel.label_resimulated`), so the two differ only in who proposed the actions.
The text of the instruction is never read: the goal's structured form is what the success
function checks, which KALM's labels use too.

The same simulator replay diagnostic as for imagined rollouts is stored (`replay_success`),
to report how often the judged successes really succeed; it never selects anything.

Compute is part of the comparison: the stats record the CPU-seconds spent (this process, all
threads). With `cpu_seconds` set, the candidate count is not fixed but fitted as the level goes
so that the whole level costs about that many CPU-seconds: the equal-compute row, given the
LLM's imagination budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from kalm.data.episodes import Episode, EpisodeData, read_episodes
from kalm.envs.base import EnvDefinition
from kalm.envs.registry import make_env
from kalm.imagination.labelling import ALL_FILE, SUCCESS_FILE, write_label_folder
from kalm.imagination.quality import record_replay
from kalm.imagination.relabel import (
    Dynamics,
    RelabelConfig,
    count_votes,
    first_proposals,
    label_resimulated,
    member_rollouts,
)


@dataclass
class ShootingConfig:
    candidates: int = 256  # random action sequences tried per task (the first task's, when
    # cpu_seconds is set)
    horizon: int = 20  # actions per candidate at most (the cap imagined rollouts have); a
    # goal's own step limit caps it further
    seed: int = 0
    # a CPU-seconds budget for the whole level: the candidate count per task is refitted after
    # every task from the measured cost per candidate (None: `candidates` for every task)
    cpu_seconds: float | None = None
    max_candidates: int = 1 << 16  # the most a fitted count may reach
    chunk: int = 4096  # candidates re-simulated per ensemble call (memory)

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.horizon < 1 or self.chunk < 1:
            raise ValueError(f"candidates, horizon and chunk must be >= 1, got {self}")
        if self.cpu_seconds is not None and self.cpu_seconds <= 0:
            raise ValueError(f"cpu_seconds must be > 0, got {self.cpu_seconds}")
        if self.max_candidates < self.candidates:
            raise ValueError(f"max_candidates ({self.max_candidates}) is below candidates "
                             f"({self.candidates})")


def fitted_candidates(cfg: ShootingConfig, spent: float, tried: int, done: int, total: int
                      ) -> int:
    """Candidates for the next task so that the level ends near `cfg.cpu_seconds`: the budget
    left, shared by the tasks left, at the CPU-seconds per candidate measured so far."""
    if cfg.cpu_seconds is None or tried == 0:
        return cfg.candidates
    per_candidate = spent / tried
    share = max(cfg.cpu_seconds - spent, 0.0) / max(total - done, 1)
    return int(np.clip(share / max(per_candidate, 1e-9), 1, cfg.max_candidates))


def random_sequences(space: gym.Space, n: int, horizon: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """(n, horizon) ints for a Discrete space, (n, horizon, A) float32 for a Box."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start) + rng.integers(int(space.n), size=(n, horizon))
    if isinstance(space, gym.spaces.Box):
        return rng.uniform(space.low, space.high, size=(n, horizon, *space.shape)
                           ).astype(np.float32)
    raise TypeError(f"no random shooting for {type(space).__name__} action spaces")


def choose(definition: EnvDefinition, goal: dict[str, Any], states: np.ndarray,
           uncertainty: np.ndarray, actions: np.ndarray, member_states: np.ndarray | None = None,
           min_votes: int | None = None) -> tuple[int, int | None]:
    """(candidate index, its success step or None): the soonest success, ties broken by the
    lower mean disagreement up to it; candidate 0 when none succeeds. With MIN_VOTES, a success
    counts only when that many members' own rollouts (MEMBER_STATES (K, n, T+1, obs)) reach the
    goal within its steps, the label stage's rule."""
    if min_votes is not None and member_states is None:
        raise ValueError("min_votes needs each member's own rollout (a DynamicsEnsemble)")
    best: tuple[int, float, int] | None = None  # (step, uncertainty, index)
    for i in range(len(actions)):
        limit = len(actions[i]) if best is None else best[0] + 1
        t = definition.first_success(goal, states[i][: limit + 1], actions[i][:limit])
        if t is None:
            continue
        if min_votes is not None and count_votes(
                definition, goal, member_states[:, i, : t + 2], actions[i][: t + 1]) < min_votes:
            continue
        key = (t, float(uncertainty[i, : t + 1].mean()), i)
        if best is None or key < best:
            best = key
    return (0, None) if best is None else (best[2], best[0])


def shoot(tasks: EpisodeData, dynamics: Dynamics, definition: EnvDefinition,
          cfg: ShootingConfig | None = None, progress: bool = True,
          replay: bool = True, judge: RelabelConfig | None = None,
          usage: dict[str, float] | None = None) -> list[Episode]:
    """One shot rollout per episode of TASKS (its goal, instruction and initial state), chosen
    and labelled with JUDGE (the label stage's ensemble settings). USAGE, when given, receives
    the CPU-seconds the shooting took (the replay diagnostic not counted) and the candidates
    tried."""
    cfg = cfg or ShootingConfig()
    judge = judge or RelabelConfig()
    rng = np.random.default_rng(cfg.seed)
    env = make_env(definition)
    out = []
    spent, tried = 0.0, 0
    try:
        for i in tqdm(range(len(tasks)), desc="shoot", unit="task", disable=not progress):
            t0 = time.process_time()
            template = tasks.episode(i)
            goal, s0 = dict(template.goal), np.asarray(template.observations[0], np.float32)
            n = fitted_candidates(cfg, spent, tried, i, len(tasks))
            horizon = max(1, min(cfg.horizon, int(definition.max_steps(goal))))
            acts = random_sequences(env.action_space, n, horizon, rng)
            starts = np.repeat(s0[None], n, axis=0)
            k, states, u, members = _best_candidate(definition, goal, dynamics, starts, acts,
                                                    judge, cfg.chunk)
            proposal = Episode(states, acts[k], np.zeros(horizon, np.float32),
                               np.zeros(horizon, bool), template.instruction, goal,
                               extras={"level": str(template.extras.get("level", "")),
                                       "proposer": "random shooting", "candidates": n})
            ep = label_resimulated(proposal, states, u, definition, judge, members)
            spent += time.process_time() - t0
            tried += n
            if replay:  # a diagnostic, outside the compute the row is charged
                record_replay(definition, env, ep, s0)
            out.append(ep)
    finally:
        env.close()
    if usage is not None:
        usage.update(cpu_seconds=spent, candidates=tried)
    return out


def _best_candidate(definition: EnvDefinition, goal: dict[str, Any], dynamics: Dynamics,
                    starts: np.ndarray, acts: np.ndarray, judge: RelabelConfig, chunk: int
                    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
    """(index, its mean states (T+1, obs), uncertainty (T,), member states (K, T+1, obs) or
    None) of the best of ACTS, re-simulated CHUNK candidates per ensemble call: the soonest
    vote-confirmed success of all chunks (ties: lower disagreement, then lower index)."""
    best: tuple[int, float, int] | None = None  # (step, uncertainty, index)
    keep: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
    for lo in range(0, len(acts), chunk):
        a, s = acts[lo : lo + chunk], starts[lo : lo + chunk]
        states, u = dynamics.rollout(s, a)
        members = member_rollouts(dynamics, s, a) if judge.min_votes is not None else None
        k, t = choose(definition, goal, states, u, a, members, judge.min_votes)
        if lo == 0 or t is not None:
            key = (len(a[0]) + 1 if t is None else t, float(u[k, : (t or 0) + 1].mean()),
                   lo + k)
            if best is None or key < best:
                best = key
                keep = (states[k], u[k], None if members is None else members[:, k])
    assert best is not None and keep is not None
    states, u, members = keep
    if members is None:
        # no votes were asked for: the members' own rollouts of the chosen one, recorded
        members = member_rollouts(dynamics, starts[:1], acts[best[2] : best[2] + 1])
        members = None if members is None else members[:, 0]
    return best[2], states, u, members


def shoot_level(imagined: str | Path, out_dir: str | Path, dynamics: Dynamics,
                definition: EnvDefinition, cfg: ShootingConfig | None = None,
                progress: bool = True, judge: RelabelConfig | None = None) -> dict[str, Any]:
    """Shoot one rollout for each task of IMAGINED (its first proposal's goal and start) into
    OUT_DIR, in the label stage's layout (`labelled.h5`, `labelled-success.h5`,
    `label_stats.json`), so a learner reads either the same way."""
    cfg = cfg or ShootingConfig()
    imagined, out_dir = Path(imagined), Path(out_dir)
    tasks = first_proposals(read_episodes(imagined))
    t0 = time.perf_counter()
    judge = judge or RelabelConfig()
    usage: dict[str, float] = {}
    episodes = shoot(tasks, dynamics, definition, cfg, progress, judge=judge, usage=usage)
    seconds = time.perf_counter() - t0
    attrs = {"proposer": "random shooting", **{f"shooting_{k}": v
                                               for k, v in asdict(cfg).items()}}
    return write_label_folder(out_dir, tasks.spec, episodes, episodes, "ensemble_success", attrs,
                              {"labeller": "ensemble", "proposer": "random shooting (no LLM)",
                               "config": asdict(cfg), "judge": asdict(judge),
                               "source": imagined.name, "tasks": len(tasks),
                               "seconds": seconds, "cpu_seconds": usage["cpu_seconds"],
                               "candidates_tried": int(usage["candidates"])})


__all__ = ["ALL_FILE", "SUCCESS_FILE", "ShootingConfig", "choose", "fitted_candidates",
           "random_sequences", "shoot", "shoot_level"]
