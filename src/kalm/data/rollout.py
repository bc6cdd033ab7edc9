"""Running one episode of a policy in the real simulator: shared by collection and evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from kalm.data.episodes import Episode

MAX_RESETS = 100  # redraws of the scene when the goal already holds at the start


class Policy(Protocol):
    """What a policy gives kalm: told the goal at the start, then one action per observation."""

    def begin(self, env: gym.Env, goal: Mapping[str, Any], instruction: str) -> None: ...

    def act(self, obs: np.ndarray) -> int | np.ndarray: ...


class ExpertAgent:
    """The scripted expert behind the Policy interface (it reads the live simulator)."""

    name = "expert"

    def __init__(self, lookahead: bool = True) -> None:
        self.lookahead = lookahead
        self._expert = None
        self._env: gym.Env | None = None
        self._goal: Mapping[str, Any] = {}

    def begin(self, env: gym.Env, goal: Mapping[str, Any], instruction: str) -> None:
        from kalm.envs.clevr.expert import ExpertPolicy

        if self._expert is None or self._env is not env:
            self._expert = ExpertPolicy(env, lookahead=self.lookahead)
            self._env = env
        self._expert.reset()
        self._goal = goal

    def act(self, obs: np.ndarray) -> int:
        assert self._expert is not None, "begin() must be called before act()"
        return int(self._expert.act(self._goal))


class RandomAgent:
    """Uniformly random actions: the floor every success rate is read against."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self._space: gym.Space | None = None

    def begin(self, env: gym.Env, goal: Mapping[str, Any], instruction: str) -> None:
        self._space = env.action_space

    def act(self, obs: np.ndarray) -> int | np.ndarray:
        if self._space is None:
            raise RuntimeError("begin() must be called before act()")
        return random_action(self._space, self.rng)


def random_action(space: gym.Space, rng: np.random.Generator) -> int | np.ndarray:
    """A uniform action from `rng` (Discrete: an int; Box: a float32 vector)."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start) + int(rng.integers(int(space.n)))
    if isinstance(space, gym.spaces.Box):
        return rng.uniform(space.low, space.high).astype(np.float32)
    raise TypeError(f"no random actions for {type(space).__name__} action spaces")


def make_builtin_policy(name: str, seed: int = 0, env: str = "clevr") -> Policy:
    """A built-in behaviour policy of `env` by name (`random` for every env)."""
    from kalm.envs.registry import get_env

    return get_env(env).policy(name, seed)


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
    """Run `policy` (with probability `epsilon` a random action instead) until success or limit."""
    obs, info = reset_unsolved(env, goal, instruction, seed, init)
    goal = dict(info.get("goal", goal))  # the env's normalised copy when it reports one
    policy.begin(env, goal, instruction)
    rng = rng if rng is not None else np.random.default_rng(seed)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    observations = [obs]
    actions: list[Any] = []
    rewards: list[float] = []
    terminals: list[bool] = []
    while True:
        action = policy.act(obs)
        if epsilon > 0 and rng.random() < epsilon:
            action = (int(rng.integers(env.action_space.n)) if discrete
                      else random_action(env.action_space, rng))
        action = int(action) if discrete else np.asarray(action, dtype=np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        terminals.append(bool(terminated))
        if terminated or truncated:
            break
    return Episode(
        observations=np.asarray(observations, dtype=np.float32),
        actions=np.asarray(actions, dtype=np.int64 if discrete else np.float32),
        rewards=np.asarray(rewards, dtype=np.float32),
        terminals=np.asarray(terminals, dtype=bool),
        instruction=instruction,
        goal=goal,
    )
