"""Running one episode of a policy in the real simulator: shared by collection and evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from kalm.data.episodes import Episode
from kalm.envs.base import BatchPolicy, Policy, RandomAgent, can_act_batch, random_action

__all__ = ["BatchPolicy", "EpisodeTask", "Policy", "RandomAgent", "can_act_batch",
           "episode_seed", "random_action", "reset_unsolved", "run_episode", "run_episodes"]

MAX_RESETS = 100  # redraws of the scene when the goal already holds at the start


def episode_seed(seed: int, index: int) -> int:
    """A reset seed for episode `index` that does not depend on how work is split."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def reset_unsolved(
    env: gym.Env,
    goal: Mapping[str, Any],
    instruction: str,
    seed: int,
    init: Sequence[float] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Reset with the goal; redraw the scene while the goal already holds (random inits only)."""
    options = {"goal": dict(goal), "instruction": instruction}
    if init is not None:
        options["init"] = list(init)
    for k in range(MAX_RESETS):
        obs, info = env.reset(seed=seed + k, options=options)
        if init is not None or not info["is_success"]:
            return obs, info
    raise RuntimeError(f"could not draw a scene where goal {goal} does not already hold")


class _Recorder:
    """One running episode: what `run_episode` keeps, step by step."""

    def __init__(self, obs: np.ndarray, goal: dict[str, Any], instruction: str,
                 discrete: bool, extras: Mapping[str, Any] | None = None) -> None:
        self.goal, self.instruction, self.discrete = goal, instruction, discrete
        self.extras = dict(extras or {})
        self.obs = obs
        self.observations = [obs]
        self.actions: list[Any] = []
        self.rewards: list[float] = []
        self.terminals: list[bool] = []
        self.successes: list[bool] = []

    def step(self, env: gym.Env, action: Any) -> bool:
        """Take `action`; True when the episode ended (terminated or truncated)."""
        action = int(action) if self.discrete else np.asarray(action, dtype=np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        self.obs = obs
        self.observations.append(obs)
        self.actions.append(action)
        self.rewards.append(float(reward))
        self.terminals.append(bool(terminated))
        # the env's success signal; envs that do not report one succeed by terminating
        self.successes.append(bool(info.get("is_success", terminated)))
        return bool(terminated or truncated)

    def episode(self) -> Episode:
        return Episode(
            observations=np.asarray(self.observations, dtype=np.float32),
            actions=np.asarray(self.actions, dtype=np.int64 if self.discrete else np.float32),
            rewards=np.asarray(self.rewards, dtype=np.float32),
            terminals=np.asarray(self.terminals, dtype=bool),
            instruction=self.instruction,
            goal=self.goal,
            successes=np.asarray(self.successes, dtype=bool),
            extras=dict(self.extras),
        )


def _start(env: gym.Env, policy: Policy, goal: Mapping[str, Any], instruction: str, seed: int,
           init: Sequence[float] | None) -> _Recorder:
    obs, info = reset_unsolved(env, goal, instruction, seed, init)
    goal = dict(info.get("goal", goal))  # the env's normalised copy when it reports one
    policy.begin(env, goal, instruction)
    # what the env and the policy report about the episode (e.g. Meta-World's task, layout
    # seed and noise level), stored per episode
    extras = {**info.get("episode_extras", {}), **getattr(policy, "episode_extras", {})}
    return _Recorder(obs, goal, instruction, isinstance(env.action_space, gym.spaces.Discrete),
                     extras)


def run_episode(
    env: gym.Env,
    policy: Policy,
    goal: Mapping[str, Any],
    instruction: str,
    seed: int,
    init: Sequence[float] | None = None,
    epsilon: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Episode:
    """Run `policy` (with probability `epsilon` a random action instead) until the env
    terminates or truncates. Terminals are the env's `terminated`; successes its
    `info["is_success"]` per step."""
    rec = _start(env, policy, goal, instruction, seed, init)
    rng = rng if rng is not None else np.random.default_rng(seed)
    while True:
        action = policy.act(rec.obs)
        if epsilon > 0 and rng.random() < epsilon:
            action = (int(rng.integers(env.action_space.n)) if rec.discrete
                      else random_action(env.action_space, rng))
        if rec.step(env, action):
            return rec.episode()


@dataclass(frozen=True)
class EpisodeTask:
    """What `run_episode` is told about one episode (no exploration)."""

    goal: Mapping[str, Any]
    instruction: str
    seed: int
    init: Sequence[float] | None = None


def run_episodes(envs: Sequence[gym.Env], policy: BatchPolicy, tasks: Sequence[EpisodeTask]
                 ) -> list[Episode]:
    """Run `tasks` on the envs side by side: each step one `act_batch` over the running
    episodes; an env that finishes its episode starts the next task. Episode i is the one
    `run_episode(env, policy, **tasks[i])` gives (each env is reset with its task's seed)."""
    if not envs:
        raise ValueError("run_episodes needs at least one env")
    out: list[Episode | None] = [None] * len(tasks)
    queue = iter(enumerate(tasks))
    running: dict[int, tuple[int, _Recorder]] = {}

    def start(slot: int) -> None:
        item = next(queue, None)
        if item is None:
            running.pop(slot, None)
            return
        i, t = item
        running[slot] = (i, _start(envs[slot], policy, t.goal, t.instruction, t.seed, t.init))

    for slot in range(min(len(envs), len(tasks))):
        start(slot)
    while running:
        slots = list(running)
        recs = [running[s][1] for s in slots]
        actions = policy.act_batch(np.stack([np.asarray(r.obs) for r in recs]),
                                   [r.goal for r in recs], [r.instruction for r in recs])
        for slot, rec, action in zip(slots, recs, actions, strict=True):
            if rec.step(envs[slot], action):
                out[running[slot][0]] = rec.episode()
                start(slot)
    return out  # type: ignore[return-value]
