"""Rollouts without the LLM: random shooting on the dynamics ensemble, a reference for KALM.

What does the grounded LLM add? For the same goals and initial states the LLM imagined rollouts
for (read from an imagine stage's file, one rollout per LLM rollout), draw `candidates` uniformly
random action sequences, re-simulate each through the ensemble fitted on the real data, and keep,
per task, the candidate the env's own success function judges successful soonest on the
ensemble's states (the least uncertain among equals); when none succeeds, the first candidate,
labelled a failure. The rollout is then labelled exactly as the ensemble labeller labels an
LLM rollout (`relabel.label_resimulated`), so the two differ only in who proposed the actions.
The text of the instruction is never read: the goal's structured form is what the success
function checks, which KALM's labels use too.

The same simulator replay diagnostic as for imagined rollouts is stored (`replay_success`),
to report how often the judged successes really succeed; it never selects anything.
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
from kalm.imagination.quality import replay_actions
from kalm.imagination.relabel import (
    Dynamics,
    RelabelConfig,
    count_votes,
    label_resimulated,
    member_rollouts,
)


@dataclass
class ShootingConfig:
    candidates: int = 256  # random action sequences tried per rollout
    horizon: int = 20  # actions per candidate (the cap imagined rollouts have)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.horizon < 1:
            raise ValueError(f"candidates and horizon must be >= 1, got {self}")


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
          replay: bool = True, judge: RelabelConfig | None = None) -> list[Episode]:
    """One shot rollout per episode of TASKS (its goal, instruction and initial state), chosen
    and labelled with JUDGE (the label stage's ensemble settings)."""
    cfg = cfg or ShootingConfig()
    judge = judge or RelabelConfig()
    rng = np.random.default_rng(cfg.seed)
    env = make_env(definition)
    out = []
    try:
        for i in tqdm(range(len(tasks)), desc="shoot", unit="rollout", disable=not progress):
            template = tasks.episode(i)
            goal, s0 = dict(template.goal), np.asarray(template.observations[0], np.float32)
            acts = random_sequences(env.action_space, cfg.candidates, cfg.horizon, rng)
            starts = np.repeat(s0[None], cfg.candidates, axis=0)
            states, u = dynamics.rollout(starts, acts)
            members = (member_rollouts(dynamics, starts, acts)
                       if judge.min_votes is not None else None)
            k, _ = choose(definition, goal, states, u, acts, members, judge.min_votes)
            if members is None:
                members = member_rollouts(dynamics, starts[:1], acts[k : k + 1])
            else:
                members = members[:, k : k + 1]
            proposal = Episode(states[k], acts[k], np.zeros(cfg.horizon, np.float32),
                               np.zeros(cfg.horizon, bool), template.instruction, goal,
                               extras={"level": str(template.extras.get("level", "")),
                                       "proposer": "random shooting"})
            ep = label_resimulated(proposal, states[k], u[k], definition, judge,
                                   None if members is None else members[:, 0])
            if replay:
                replayed = replay_actions(definition, env, goal, s0, ep.actions)
                ep.extras["replayed"] = replayed is not None
                ep.extras["replay_success"] = bool(replayed[1]) if replayed else False
            out.append(ep)
    finally:
        env.close()
    return out


def shoot_level(imagined: str | Path, out_dir: str | Path, dynamics: Dynamics,
                definition: EnvDefinition, cfg: ShootingConfig | None = None,
                progress: bool = True, judge: RelabelConfig | None = None) -> dict[str, Any]:
    """Shoot one rollout for each of IMAGINED's rollouts into OUT_DIR, in the label stage's
    layout (`labelled.h5`, `labelled-success.h5`, `label_stats.json`), so a learner reads
    either the same way."""
    cfg = cfg or ShootingConfig()
    imagined, out_dir = Path(imagined), Path(out_dir)
    tasks = read_episodes(imagined)
    t0 = time.perf_counter()
    judge = judge or RelabelConfig()
    episodes = shoot(tasks, dynamics, definition, cfg, progress, judge=judge)
    seconds = time.perf_counter() - t0
    attrs = {"proposer": "random shooting", **{f"shooting_{k}": v
                                               for k, v in asdict(cfg).items()}}
    return write_label_folder(out_dir, tasks.spec, episodes, episodes, "ensemble_success", attrs,
                              {"labeller": "ensemble", "proposer": "random shooting (no LLM)",
                               "config": asdict(cfg), "judge": asdict(judge),
                               "source": imagined.name,
                               "seconds": seconds})


__all__ = ["ALL_FILE", "SUCCESS_FILE", "ShootingConfig", "choose", "random_sequences", "shoot",
           "shoot_level"]
