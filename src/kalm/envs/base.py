"""The environment interface every other layer builds on: `EnvDefinition`, the policy protocol.

Nothing here imports from the rest of kalm, so episodes, grounding, imagination, RL and evaluation
can all depend on it while it depends on none of them (data flows env -> episodes -> ... -> report).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class EnvSpecInfo:
    """What an episode file says about its environment."""

    env: str
    obs_dim: int
    action_type: str  # "discrete" | "continuous"
    action_dim: int  # number of actions (discrete) or action size (continuous)
    obs_type: str = "continuous"


class Policy(Protocol):
    """What a policy gives kalm: told the goal at the start, then one action per observation."""

    def begin(self, env: gym.Env, goal: Mapping[str, Any], instruction: str) -> None: ...

    def act(self, obs: np.ndarray) -> int | np.ndarray: ...


class BatchPolicy(Policy, Protocol):
    """A policy that can also act for many episodes at once (one forward pass per step)."""

    def act_batch(self, obs: np.ndarray, goals: Sequence[Mapping[str, Any]],
                  instructions: Sequence[str]) -> np.ndarray:
        """Actions (B,) or (B, A) for observations (B, obs_dim); row i pursues goals[i] given
        as instructions[i]. Row i must equal what `begin(env, goals[i], instructions[i])`
        followed by `act(obs[i])` would give."""
        ...


RESET_OPTIONS = ("goal", "instruction", "init")


def reset_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The reset options every kalm env understands, checked: collection and evaluation set
    the goal, its instruction and a start state through them, and a misspelt key would
    otherwise be ignored silently, giving a random goal or start."""
    options = dict(options or {})
    unknown = set(options) - set(RESET_OPTIONS)
    if unknown:
        raise ValueError(f"unknown reset option(s) {sorted(unknown)}; expected "
                         + ", ".join(repr(o) for o in RESET_OPTIONS))
    return options


def can_act_batch(policy: Policy) -> bool:
    return callable(getattr(policy, "act_batch", None))


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


class EnvError(ValueError):
    """An env string that does not lead to a usable EnvDefinition; the message names it."""


def _takes(fn: Callable[..., Any], n: int) -> bool:
    """Whether `fn` can be called with n positional arguments (hooks may take fewer)."""
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): assume the full form
        return True
    return True


@dataclass(frozen=True)
class EnvDefinition:
    """Everything kalm asks of an environment, as plain functions.

    - `spec`: obs_dim, action_type, action_dim of the episode files (`spec.env` is replaced by
      the env string the user passed);
    - `state_low` / `state_high`: per observation dimension, the box generated states are
      clamped to (also stored in the rollout model);
    - `reset_low` / `reset_high` (optional): the box states at reset lie in, where it is wider
      than `state_low`/`state_high` (CLEVR samples start positions inside its walls; the first
      push ejects them); `clamp_box()` joins both boxes: the box a model of the dynamics may
      clamp to without clipping any state the env can produce;
    - `make(**kwargs)`: a gymnasium env; `reset(seed=, options={"goal", "instruction", "init"})`
      returns `info["is_success"]`, `step` reports success in `info["is_success"]` (what
      collection and evaluation count; an env may also terminate on it, or never terminate,
      as Meta-World) and truncates at the goal's step limit;
    - `validate_goal(goal) -> goal`: checks and normalises a goal dict (ValueError naming the
      field); `is_success(goal, obs[, prev_obs, action])`; `max_steps(goal)`;
    - `episode_rewards(goal, observations[, actions])`: rewards of an episode (T,), used to label
      imagined rollouts exactly like the env labels real ones;
    - `episode_successes(goal, observations, actions) -> (T,) bool` (optional): success per step
      judged on the whole history, for goals whose judge is ordered (Meta-World's two-stage
      composites); `labels` uses it instead of `is_success` step by step when present;
    - `action_low` / `action_high` (continuous actions, optional): the bounds the env clips
      actions to; `clip_action` applies them (generated actions are clipped before storing);
    - `suites`: built-in goal suites, level -> JSONL path;
    - `policies`: built-in behaviour policies, name -> factory(seed) (`"random"` is added);
    - optional hooks (None when absent), so that generic stages never reach into one env:
      `explanation_correct(text, goal)` for the grounding metric and the explanation filter;
      `set_state(env, obs)` to put the simulator in an observed state, or `replay(env, goal, s0,
      actions) -> (states, success)` where the env replays more exactly itself, for the
      replay diagnostics of imagination; `realism_checks(observations, actions) -> {category:
      count}` of physically implausible transitions; `state_distance(a, b)` per row (default:
      Euclidean) in `state_units`; `draw_state(obs, size, caption) -> RGB array` for GIFs;
      `published_goal(record) -> goal | None` for importing data written by KALM's and
      ImagineBench's code (`kalm import`): `record` holds `"vector"` (an episode's goal vector,
      or None), `"task"` (its task name, or None) and `"level"` (the level the user says the
      file holds, or None); it returns the goal dict, None when they do not determine one, and
      raises ValueError naming what is wrong; `published_episode(observations, terminals,
      success)` puts an imported episode in kalm's layout and says so in file attrs;
    - planner hooks (optional, vectorised over candidates; `kalm.imagination.planner` falls back
      to the per-step functions above when absent, which is correct but slow):
      `batch_successes(goal, observations (N, T+1, obs), actions (N, T[, act])) -> (N, T) bool`,
      equal to `successes` row by row; `goal_distance(goal, observations (..., obs)) -> (...)`
      float >= 0, how far each state is from meeting the goal (0 where it is met): a dense
      search signal, finer than the rewards' count of satisfied parts on multi-part goals;
      `batch_plausible(observations (N, T+1, obs), actions (N, T[, act])) -> (N, T) bool`,
      whether each transition is physically possible (CLEVR: no interpenetrating balls, no ball
      moving that the push cannot reach, ...): a learned model lets balls pass through each
      other, and a planner finds exactly those states unless they are ruled out;
      `project_state(prev (..., obs), actions (...), state (..., obs)) -> state`, a predicted
      next state put back among the states the env can produce (CLEVR: overlapping balls
      moved apart as the contact would), applied after every step of a planner's model;
    - `dynamics_symmetry(observations (N, T+1, obs), actions (N, T[, act]), rng) -> (same)`
      (optional): each row under a random exact symmetry of the env's physics (CLEVR: the balls
      relabelled, the table mirrored), so that a model of the dynamics can learn from
      symmetric copies of the real transitions (`DynamicsConfig.symmetric_copies`); goals and
      rewards need not survive it;
    - `gym_id` (optional): the Gymnasium id the env is registered under, written into exported
      datasets (Minari) so that other tools can make the env from the data.
    """

    name: str
    spec: EnvSpecInfo
    state_low: Sequence[float]
    state_high: Sequence[float]
    make: Callable[..., gym.Env]
    validate_goal: Callable[[Any], dict[str, Any]]
    is_success: Callable[..., bool]
    max_steps: Callable[[Mapping[str, Any]], int]
    episode_rewards: Callable[..., Any]
    suites: Mapping[str, str | Path] = field(default_factory=dict)
    policies: Mapping[str, Callable[[int], Policy]] = field(default_factory=dict)
    explanation_correct: Callable[[str, Mapping[str, Any]], bool] | None = None
    set_state: Callable[[gym.Env, np.ndarray], None] | None = None
    replay: Callable[..., tuple[np.ndarray, bool]] | None = None
    realism_checks: Callable[[np.ndarray, np.ndarray], Mapping[str, int]] | None = None
    state_distance: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    state_units: str = ""
    draw_state: Callable[..., np.ndarray] | None = None
    episode_successes: Callable[..., Any] | None = None
    action_low: Sequence[float] | None = None
    action_high: Sequence[float] | None = None
    published_goal: Callable[[Mapping[str, Any]], dict[str, Any] | None] | None = None
    # (observations, terminals, published success flag or None) of one imported episode ->
    # (observations, terminals, file attrs) in kalm's layout, where the published code stored
    # states or endings differently (Meta-World: KALM's hand point, successes as timeouts)
    published_episode: Callable[..., tuple[np.ndarray, np.ndarray, dict[str, str]]] | None = None
    gym_id: str | None = None
    # raised whenever the env's physics or observations change, so that `kalm run` folders
    # collected with another version collect (and so ground, imagine, train) again instead of
    # mixing data of one simulator with evaluations in another
    version: int = 1
    reset_low: Sequence[float] | None = None
    reset_high: Sequence[float] | None = None
    batch_successes: Callable[..., np.ndarray] | None = None
    goal_distance: Callable[..., np.ndarray] | None = None
    batch_plausible: Callable[..., np.ndarray] | None = None
    project_state: Callable[..., np.ndarray] | None = None
    dynamics_symmetry: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        s = self.spec
        if not isinstance(s, EnvSpecInfo):
            raise TypeError(f"env {self.name!r}: spec must be a kalm.envs.base.EnvSpecInfo")
        if s.obs_dim < 1 or s.action_dim < 1:
            raise ValueError(f"env {self.name!r}: obs_dim and action_dim must be at least 1")
        if s.action_type not in ("discrete", "continuous"):
            raise ValueError(f"env {self.name!r}: action_type must be 'discrete' or "
                             f"'continuous', got {s.action_type!r}")
        self._set_bounds("state", self.state_low, self.state_high, "obs_dim", s.obs_dim)
        if (self.reset_low is None) != (self.reset_high is None):
            raise ValueError(f"env {self.name!r}: give both reset_low and reset_high")
        if self.reset_low is not None:
            self._set_bounds("reset", self.reset_low, self.reset_high, "obs_dim", s.obs_dim)
        self._check_action_bounds()
        for hook in ("make", "validate_goal", "is_success", "max_steps", "episode_rewards"):
            if not callable(getattr(self, hook)):
                raise TypeError(f"env {self.name!r}: {hook} must be callable")

    def _check_action_bounds(self) -> None:
        if self.action_low is None and self.action_high is None:
            return
        if self.spec.action_type != "continuous":
            raise ValueError(f"env {self.name!r}: action_low/action_high are for continuous "
                             "actions")
        if self.action_low is None or self.action_high is None:
            raise ValueError(f"env {self.name!r}: give both action_low and action_high")
        self._set_bounds("action", self.action_low, self.action_high, "action_dim",
                         self.spec.action_dim)

    def _set_bounds(self, kind: str, low_values: Sequence[float], high_values: Sequence[float],
                    dim_name: str, dim: int) -> None:
        """Store KIND_low / KIND_high as float tuples after checking their length and order."""
        low = tuple(float(v) for v in low_values)
        high = tuple(float(v) for v in high_values)
        for label, v in ((f"{kind}_low", low), (f"{kind}_high", high)):
            if len(v) != dim:
                raise ValueError(f"env {self.name!r}: {label} has {len(v)} values, "
                                 f"expected {dim_name}={dim}")
        if any(lo > hi for lo, hi in zip(low, high, strict=True)):
            raise ValueError(f"env {self.name!r}: {kind}_low exceeds {kind}_high somewhere")
        object.__setattr__(self, f"{kind}_low", low)
        object.__setattr__(self, f"{kind}_high", high)

    def clamp_box(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(low, high) per observation dimension covering both the state box and the reset box:
        every state the env can produce, at reset or after a step."""
        if self.reset_low is None:
            return tuple(self.state_low), tuple(self.state_high)
        low = tuple(min(a, b) for a, b in zip(self.state_low, self.reset_low, strict=True))
        high = tuple(max(a, b) for a, b in zip(self.state_high, self.reset_high, strict=True))
        return low, high

    def clip_action(self, action: Any) -> Any:
        """A continuous action clipped to the env's bounds (as is without bounds or for discrete
        actions)."""
        if self.action_low is None or self.spec.action_type != "continuous":
            return action
        return np.clip(np.asarray(action, dtype=np.float32), self.action_low,
                       self.action_high).astype(np.float32)

    # ------------------------------------------------------------------ specs
    def episode_spec(self, env: str | None = None) -> EnvSpecInfo:
        """The spec written to episode files, carrying the env string that finds this env."""
        return replace(self.spec, env=env or self.spec.env)

    # ------------------------------------------------------------------ uniform calls
    @cached_property
    def _success_takes_action(self) -> bool:
        return _takes(self.is_success, 4)

    @cached_property
    def _rewards_take_actions(self) -> bool:
        return _takes(self.episode_rewards, 3)

    def success(self, goal: Mapping[str, Any], obs: Any, prev: Any = None,
                action: Any = None) -> bool:
        """`is_success` with the (goal, obs, prev, action) signature the decoder uses."""
        if self._success_takes_action:
            return bool(self.is_success(goal, obs, prev, action))
        return bool(self.is_success(goal, obs))

    def labels(self, goal: Mapping[str, Any], observations: np.ndarray,
               actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rewards (from `episode_rewards`) and terminals (success per step) of an episode."""
        obs = np.asarray(observations, dtype=np.float64)
        acts = np.asarray(actions)
        out = (self.episode_rewards(goal, obs, acts) if self._rewards_take_actions
               else self.episode_rewards(goal, obs))
        if isinstance(out, tuple):  # (rewards, terminals) is accepted too; terminals recomputed
            out = out[0]
        rewards = np.asarray(out, dtype=np.float32).reshape(-1)
        if rewards.shape != (len(acts),):
            raise ValueError(f"env {self.name!r}: episode_rewards returned {rewards.shape[0]} "
                             f"rewards for {len(acts)} actions")
        return rewards, self.successes(goal, obs, acts)

    def successes(self, goal: Mapping[str, Any], observations: np.ndarray,
                  actions: np.ndarray) -> np.ndarray:
        """(T,) the env's success per step (step t judged on the move into observations[t+1]):
        `episode_successes` where the env has it (an ordered judge can hold where no single
        state shows the goal), else `is_success` per transition."""
        obs = np.asarray(observations, dtype=np.float64)
        acts = np.asarray(actions)
        if self.episode_successes is not None:
            out = np.asarray(self.episode_successes(goal, obs, acts), dtype=bool)
            if out.shape != (len(acts),):
                raise ValueError(f"env {self.name!r}: episode_successes returned shape "
                                 f"{out.shape} for {len(acts)} actions")
            return out
        return np.array([self.success(goal, obs[t + 1], obs[t], action_item(acts[t]))
                         for t in range(len(acts))], dtype=bool)

    def first_success(self, goal: Mapping[str, Any], observations: np.ndarray,
                      actions: np.ndarray) -> int | None:
        """The first step whose transition meets the goal by `successes`, or None."""
        hits = np.flatnonzero(self.successes(goal, observations, actions))
        return int(hits[0]) if len(hits) else None

    def success_grid(self, goal: Mapping[str, Any], observations: np.ndarray,
                     actions: np.ndarray) -> np.ndarray:
        """(N, T) success per candidate and step of N rollouts (N, T+1, obs): the env's
        `batch_successes` where it has one, else `successes` row by row."""
        obs = np.asarray(observations)
        acts = np.asarray(actions)
        if obs.ndim != 3 or len(obs) != len(acts) or obs.shape[1] != acts.shape[1] + 1:
            raise ValueError(f"success_grid takes observations (N, T+1, obs) and actions "
                             f"(N, T...), got {obs.shape} and {acts.shape}")
        if self.batch_successes is not None:
            out = np.asarray(self.batch_successes(goal, obs, acts), dtype=bool)
            if out.shape != acts.shape[:2]:
                raise ValueError(f"env {self.name!r}: batch_successes returned shape "
                                 f"{out.shape} for actions {acts.shape[:2]}")
            return out
        return np.stack([self.successes(goal, o, a) for o, a in zip(obs, acts, strict=True)])

    def plausible_grid(self, observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(N, T) whether each transition of N rollouts is physically possible: the env's
        `batch_plausible`, else all True (nothing is known to rule out)."""
        obs, acts = np.asarray(observations), np.asarray(actions)
        if self.batch_plausible is None:
            return np.ones(acts.shape[:2], dtype=bool)
        out = np.asarray(self.batch_plausible(obs, acts), dtype=bool)
        if out.shape != acts.shape[:2]:
            raise ValueError(f"env {self.name!r}: batch_plausible returned shape {out.shape} "
                             f"for actions {acts.shape[:2]}")
        return out

    def distance_grid(self, goal: Mapping[str, Any], observations: np.ndarray) -> np.ndarray:
        """(...) the env's `goal_distance` of states (..., obs), shape-checked."""
        if self.goal_distance is None:
            raise ValueError(f"env {self.name!r} has no goal_distance hook")
        obs = np.asarray(observations)
        out = np.asarray(self.goal_distance(goal, obs), dtype=np.float64)
        if out.shape != obs.shape[:-1]:
            raise ValueError(f"env {self.name!r}: goal_distance returned shape {out.shape} "
                             f"for states {obs.shape}")
        return out

    def step_judge(self, goal: Mapping[str, Any],
                   s0: np.ndarray) -> Callable[[np.ndarray, Any, np.ndarray], bool]:
        """A judge fed one transition (prev, action, state) at a time from s0 that answers as
        `successes` would on the episode so far, so a decoder stops where the labels will put
        the terminal. With `episode_successes` it re-judges the prefix each step (quadratic
        in the length: ~100-step episodes cost milliseconds)."""
        if self.episode_successes is None:
            return lambda prev, action, state: self.success(goal, state, prev, action)
        states = [np.asarray(s0, dtype=np.float64)]
        actions: list[Any] = []

        def judge(prev: np.ndarray, action: Any, state: np.ndarray) -> bool:
            del prev  # the prefix holds it
            states.append(np.asarray(state, dtype=np.float64))
            actions.append(action)
            return bool(self.successes(goal, np.asarray(states), np.asarray(actions))[-1])

        return judge

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-row distance between two state sequences (the env's hook, else Euclidean)."""
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if self.state_distance is not None:
            return np.asarray(self.state_distance(a, b), dtype=np.float64).reshape(len(a))
        return np.linalg.norm(a.reshape(len(a), -1) - b.reshape(len(b), -1), axis=-1)

    def frames(self, observations: np.ndarray, size: int = 256,
               captions: Sequence[str] | str = "") -> list[np.ndarray]:
        """One RGB image per state, drawn by the env's `draw_state` hook."""
        if self.draw_state is None:
            raise ValueError(f"env {self.name!r} has no draw_state hook, so its states cannot be "
                             "drawn (see docs/custom-env.md)")
        if isinstance(captions, str):
            captions = [captions] * len(observations)
        return [np.asarray(self.draw_state(o, size, c), dtype=np.uint8)
                for o, c in zip(observations, captions, strict=True)]

    def suite_path(self, level: str) -> Path | None:
        """The built-in suite file of `level`, or None when this env has no such suite."""
        p = self.suites.get(level)
        return Path(p) if p is not None else None

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(self.suites)

    @property
    def policy_names(self) -> tuple[str, ...]:
        """Built-in behaviour policies (always including "random")."""
        return tuple(sorted({*self.policies, "random"}))

    def policy(self, name: str, seed: int = 0) -> Policy:
        """A built-in behaviour policy by name (`"random"` for every env). `NAME:KEY=VALUE,...`
        passes options to the factory as keyword arguments (numbers as floats), e.g.
        `expert:noise=0.1`."""
        factories = dict(self.policies)
        if "random" not in factories:
            factories["random"] = RandomAgent
        base, options = parse_policy_name(name)
        if base not in factories:
            raise ValueError(f"env {self.name!r} has no built-in policy {base!r}; expected one "
                             f"of {', '.join(sorted(factories))}")
        if not options:
            return factories[base](seed)
        try:
            inspect.signature(factories[base]).bind(seed, **options)
        except TypeError:
            raise ValueError(f"policy {base!r} of env {self.name!r} does not take option(s) "
                             f"{', '.join(sorted(options))}") from None
        return factories[base](seed, **options)


def parse_policy_name(name: str) -> tuple[str, dict[str, Any]]:
    """`"expert:noise=0.1"` -> ("expert", {"noise": 0.1}); ValueError naming a bad option."""
    base, sep, rest = name.partition(":")
    options: dict[str, Any] = {}
    if not sep:
        return base, options
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"policy {name!r}: option {part!r} is not KEY=VALUE")
        try:
            options[key.strip()] = float(value)
        except ValueError:
            options[key.strip()] = value.strip()
    return base, options


def action_item(a: Any) -> Any:
    """A discrete action as a plain int (what success hooks compare), anything else as is."""
    a = np.asarray(a)
    return int(a) if a.ndim == 0 and a.dtype.kind in "iub" else a


