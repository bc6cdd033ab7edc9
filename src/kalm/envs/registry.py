"""What kalm needs from an environment (`EnvDefinition`) and how an env string finds one.

Every stage names its environment by a string: `"clevr"` (built in), `"package.module:ATTR"` or
`"path/to/file.py:ATTR"` (a user's definition). The string given to `kalm collect` is stored in
the episode files and model metadata, so later stages find the same environment from the data.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kalm.data.episodes import EnvSpecInfo

if TYPE_CHECKING:
    import gymnasium as gym

    from kalm.data.rollout import Policy
    from kalm.llm.model import RolloutSpec

BUILTIN_ENVS = ("clevr",)
_FORMS = "'clevr', 'package.module:ATTR' or 'path/to/file.py:ATTR'"


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
    - `make(**kwargs)`: a gymnasium env; `reset(seed=, options={"goal", "instruction", "init"})`
      returns `info["is_success"]`, `step` terminates on success and truncates at the goal's
      step limit;
    - `validate_goal(goal) -> goal`: checks and normalises a goal dict (ValueError naming the
      field); `is_success(goal, obs[, prev_obs, action])`; `max_steps(goal)`;
    - `episode_rewards(goal, observations[, actions])`: rewards of an episode (T,), used to label
      imagined rollouts exactly like the env labels real ones;
    - `suites`: built-in goal suites, level -> JSONL path;
    - `policies`: built-in behaviour policies, name -> factory(seed) (`"random"` is added);
    - optional hooks (None when absent): `explanation_correct(text, goal)` for the grounding
      metric and the explanation filter; `set_state(env, obs)` to put the simulator in an
      observed state, for replaying imagined actions in imagination quality checks.
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

    def __post_init__(self) -> None:
        s = self.spec
        if not isinstance(s, EnvSpecInfo):
            raise TypeError(f"env {self.name!r}: spec must be a kalm.data.episodes.EnvSpecInfo")
        if s.obs_dim < 1 or s.action_dim < 1:
            raise ValueError(f"env {self.name!r}: obs_dim and action_dim must be at least 1")
        if s.action_type not in ("discrete", "continuous"):
            raise ValueError(f"env {self.name!r}: action_type must be 'discrete' or "
                             f"'continuous', got {s.action_type!r}")
        low = tuple(float(v) for v in self.state_low)
        high = tuple(float(v) for v in self.state_high)
        for label, v in (("state_low", low), ("state_high", high)):
            if len(v) != s.obs_dim:
                raise ValueError(f"env {self.name!r}: {label} has {len(v)} values, "
                                 f"expected obs_dim={s.obs_dim}")
        if any(lo > hi for lo, hi in zip(low, high, strict=True)):
            raise ValueError(f"env {self.name!r}: state_low exceeds state_high somewhere")
        object.__setattr__(self, "state_low", low)
        object.__setattr__(self, "state_high", high)
        for hook in ("make", "validate_goal", "is_success", "max_steps", "episode_rewards"):
            if not callable(getattr(self, hook)):
                raise TypeError(f"env {self.name!r}: {hook} must be callable")

    # ------------------------------------------------------------------ specs
    def episode_spec(self, env: str | None = None) -> EnvSpecInfo:
        """The spec written to episode files, carrying the env string that finds this env."""
        return replace(self.spec, env=env or self.spec.env)

    def rollout_spec(self, env: str | None = None) -> RolloutSpec:
        from kalm.llm.model import RolloutSpec

        s = self.episode_spec(env)
        return RolloutSpec(s.env, s.obs_dim, s.action_type, s.action_dim,
                           tuple(self.state_low), tuple(self.state_high))

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
        terminals = np.array([self.success(goal, obs[t + 1], obs[t], _item(acts[t]))
                              for t in range(len(acts))], dtype=bool)
        return rewards, terminals

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
        """A built-in behaviour policy by name (`"random"` for every env)."""
        factories = dict(self.policies)
        if "random" not in factories:
            from kalm.data.rollout import RandomAgent

            factories["random"] = RandomAgent
        if name not in factories:
            raise ValueError(f"env {self.name!r} has no built-in policy {name!r}; expected one "
                             f"of {', '.join(sorted(factories))}")
        return factories[name](seed)


def _item(a: Any) -> Any:
    a = np.asarray(a)
    return int(a) if a.ndim == 0 and a.dtype.kind in "iub" else a


# ---------------------------------------------------------------------- lookup
_CACHE: dict[tuple[str, str], EnvDefinition] = {}


def _load_module(target: str, name: str):
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise EnvError(f"env {name!r}: no such file {target!r} (relative paths are read "
                           f"from the current folder, {Path.cwd()})")
        mod_name = "kalm_user_env_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if mod_name in sys.modules:
            return sys.modules[mod_name], str(path)
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise EnvError(f"env {name!r}: importing {path} failed: "
                           f"{type(exc).__name__}: {exc}") from exc
        return module, str(path)
    try:
        return importlib.import_module(target), target
    except Exception as exc:
        raise EnvError(f"env {name!r}: cannot import module {target!r}: "
                       f"{type(exc).__name__}: {exc}") from exc


def get_env(name: str) -> EnvDefinition:
    """The EnvDefinition an env string names (built-in, module attribute or file attribute)."""
    if not isinstance(name, str) or not name:
        raise EnvError(f"env must be a non-empty string ({_FORMS}), got {name!r}")
    if name == "clevr":
        from kalm.envs.clevr.definition import CLEVR

        return CLEVR
    target, sep, attr = name.rpartition(":")
    if not sep or not target or not attr:
        raise EnvError(f"unknown env {name!r}; expected {_FORMS}")
    module, key = _load_module(target, name)
    if (key, attr) in _CACHE:
        return _CACHE[(key, attr)]
    if not hasattr(module, attr):
        found = sorted(k for k, v in vars(module).items() if isinstance(v, EnvDefinition))
        raise EnvError(f"env {name!r}: {target} has no attribute {attr!r}"
                       + (f" (EnvDefinition objects there: {', '.join(found)})" if found else ""))
    obj = getattr(module, attr)
    if not isinstance(obj, EnvDefinition):
        raise EnvError(f"env {name!r}: {target}:{attr} is a {type(obj).__name__}, expected a "
                       "kalm.envs.registry.EnvDefinition (see docs/custom-env.md)")
    _CACHE[(key, attr)] = obj
    return obj


def find_env(name: str) -> EnvDefinition | None:
    """Like get_env, but None for a plain name kalm does not know (data from elsewhere)."""
    if ":" not in name and name not in BUILTIN_ENVS:
        return None
    return get_env(name)


def env_kwargs(definition: EnvDefinition, init_region: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `make`: `init_region` only for envs whose `make` accepts it."""
    if init_region is None:
        return {}
    try:
        params = inspect.signature(definition.make).parameters
    except (TypeError, ValueError):
        params = {}
    if "init_region" in params:
        return {"init_region": init_region}
    if init_region != "paper":
        raise ValueError(f"env {definition.name!r} has no init_region option "
                         f"(got {init_region!r}); it is a CLEVR setting")
    return {}


def make_env(definition: EnvDefinition, init_region: str | None = None) -> gym.Env:
    """Build the env (see env_kwargs for `init_region`)."""
    return definition.make(**env_kwargs(definition, init_region))
