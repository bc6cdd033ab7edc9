"""The one on-disk episode format (HDF5), shared by real and imagined data and every stage.

Layout (N episodes, T = longest episode):
  observations float32 (N, T+1, obs_dim)   s_0 .. s_len, zero after the episode
  actions      int64 (N, T) | float32 (N, T, act_dim)
  rewards      float32 (N, T)
  terminals    bool (N, T)                 what the env's `terminated` said (for RL); a step-limit
                                           end is never terminal
  successes    bool (N, T)                 the env's success signal per step (`info["is_success"]`);
                                           optional (format 2): without it, successes = terminals
  lengths      int32 (N,)
  instructions (N,) utf-8;  goals (N,) JSON strings
  extras/      optional per-episode arrays (N, ...), e.g. imagination quality flags
Attributes: env, obs_type, obs_dim, action_type, action_dim, source, kalm_version, format
("kalm-episodes-<version>"; a reader refuses files of a newer version than it knows).

An episode succeeded when the env reported success at any of its steps. For envs that terminate
on success (CLEVR, the toy grid) that is the last terminal; envs that never terminate (Meta-World
style, success only in `info`) are judged by `successes`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import kalm
from kalm.envs.base import EnvSpecInfo

__all__ = ["EnvSpecInfo", "Episode", "EpisodeData", "EpisodeFileError", "read_episodes",
           "write_episodes"]

SOURCES = ("real", "imagined")
FORMAT_PREFIX = "kalm-episodes-"
FORMAT_VERSION = 2  # 2: the optional `successes` dataset
_STR = h5py.string_dtype(encoding="utf-8")


class EpisodeFileError(ValueError):
    """An episode file (or array set) that breaks the format; the message names file and field."""


@dataclass
class Episode:
    """One episode in memory: observations has one more row than actions."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    instruction: str
    goal: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    successes: np.ndarray | None = None  # (T,) bool, the env's success per step; None: terminals

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def success_steps(self) -> np.ndarray:
        """(T,) bool: the env's success signal per step (the terminals when none was recorded)."""
        return np.asarray(self.terminals if self.successes is None else self.successes, bool)

    @property
    def success(self) -> bool:
        """Whether the env reported success at some step of the episode."""
        return bool(self.length > 0 and self.success_steps.any())


@dataclass
class EpisodeData:
    """A batch of episodes in the padded layout of the file."""

    spec: EnvSpecInfo
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    lengths: np.ndarray
    instructions: list[str]
    goals: list[dict[str, Any]]
    source: str = "real"
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    successes: np.ndarray | None = None  # (N, T) bool; None: the terminals are the successes

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_transitions(self) -> int:
        return int(self.lengths.sum())

    def episode(self, i: int) -> Episode:
        n = int(self.lengths[i])
        return Episode(
            observations=self.observations[i, : n + 1],
            actions=self.actions[i, :n],
            rewards=self.rewards[i, :n],
            terminals=self.terminals[i, :n],
            instruction=self.instructions[i],
            goal=self.goals[i],
            extras={k: v[i] for k, v in self.extras.items()},
            successes=None if self.successes is None else self.successes[i, :n],
        )

    def episodes(self) -> list[Episode]:
        return [self.episode(i) for i in range(len(self))]

    def subset(self, index: Sequence[int] | np.ndarray) -> EpisodeData:
        idx = np.asarray(index, dtype=np.int64)
        return EpisodeData(
            spec=self.spec,
            observations=self.observations[idx],
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            terminals=self.terminals[idx],
            lengths=self.lengths[idx],
            instructions=[self.instructions[i] for i in idx],
            goals=[self.goals[i] for i in idx],
            source=self.source,
            extras={k: v[idx] for k, v in self.extras.items()},
            attrs=dict(self.attrs),
            successes=None if self.successes is None else self.successes[idx],
        )

    @classmethod
    def from_episodes(
        cls,
        episodes: Sequence[Episode],
        spec: EnvSpecInfo,
        source: str = "real",
        attrs: Mapping[str, Any] | None = None,
    ) -> EpisodeData:
        """Pad a list of episodes into the file layout."""
        n = len(episodes)
        t_max = max((e.length for e in episodes), default=0)
        obs = np.zeros((n, t_max + 1, spec.obs_dim), dtype=np.float32)
        if spec.action_type == "discrete":
            act = np.zeros((n, t_max), dtype=np.int64)
        else:
            act = np.zeros((n, t_max, spec.action_dim), dtype=np.float32)
        rew = np.zeros((n, t_max), dtype=np.float32)
        term = np.zeros((n, t_max), dtype=bool)
        succ = np.zeros((n, t_max), dtype=bool)
        lengths = np.zeros(n, dtype=np.int32)
        extras: dict[str, list[Any]] = {}
        for i, e in enumerate(episodes):
            k = e.length
            lengths[i] = k
            obs[i, : k + 1] = e.observations
            act[i, :k] = e.actions
            rew[i, :k] = e.rewards
            term[i, :k] = e.terminals
            succ[i, :k] = e.success_steps
            for key, value in e.extras.items():
                extras.setdefault(key, []).append(value)
        extra_arrays = {}
        for key, values in extras.items():
            if len(values) != n:
                raise EpisodeFileError(f"extras[{key!r}] is missing for some episodes")
            extra_arrays[key] = np.asarray(values)
        recorded = any(e.successes is not None for e in episodes)
        data = cls(spec, obs, act, rew, term, lengths,
                   [e.instruction for e in episodes], [dict(e.goal) for e in episodes],
                   source=source, extras=extra_arrays, attrs=dict(attrs or {}),
                   successes=succ if recorded else None)
        data.validate("<in memory>")
        return data

    @classmethod
    def concatenate(cls, parts: Sequence[EpisodeData]) -> EpisodeData:
        if not parts:
            raise EpisodeFileError("nothing to concatenate")
        spec, source = parts[0].spec, parts[0].source
        for p in parts[1:]:
            if p.spec != spec:
                raise EpisodeFileError(f"cannot join episode files for {p.spec} and {spec}")
        eps = [e for p in parts for e in p.episodes()]
        return cls.from_episodes(eps, spec, source=source, attrs=parts[0].attrs)

    # --------------------------------------------------------------- validation
    def validate(self, where: str) -> None:
        """Check shapes, dtypes, lengths, action range and finiteness; name what is wrong."""
        n = len(self)
        spec = self.spec

        def fail(name: str, msg: str) -> None:
            raise EpisodeFileError(f"{where}: '{name}' {msg}")

        if self.lengths.ndim != 1:
            fail("lengths", f"must be 1-D, got shape {self.lengths.shape}")
        if self.source not in SOURCES:
            fail("source", f"must be one of {SOURCES}, got {self.source!r}")
        t = self.actions.shape[1] if self.actions.ndim >= 2 else -1
        obs_shape = (n, t + 1, spec.obs_dim)
        if self.observations.shape != obs_shape:
            fail("observations", f"has shape {self.observations.shape}, expected {obs_shape}")
        act_shape = (n, t) if spec.action_type == "discrete" else (n, t, spec.action_dim)
        if self.actions.shape != act_shape:
            fail("actions", f"has shape {self.actions.shape}, expected {act_shape}")
        per_step = [("rewards", self.rewards), ("terminals", self.terminals)]
        if self.successes is not None:
            per_step.append(("successes", self.successes))
        for name, arr in per_step:
            if arr.shape != (n, t):
                fail(name, f"has shape {arr.shape}, expected {(n, t)}")
        expected = {"observations": np.float32, "rewards": np.float32, "terminals": np.bool_,
                    "lengths": np.int32,
                    "actions": np.int64 if spec.action_type == "discrete" else np.float32}
        if self.successes is not None:
            expected["successes"] = np.bool_
        for name, dtype in expected.items():
            if getattr(self, name).dtype != dtype:
                fail(name, f"has dtype {getattr(self, name).dtype}, expected {np.dtype(dtype)}")
        if n and (self.lengths.min() < 1 or self.lengths.max() > t):
            bad = int(np.flatnonzero((self.lengths < 1) | (self.lengths > t))[0])
            fail("lengths", f"[{bad}] = {self.lengths[bad]} is outside [1, {t}]")
        for name in ("observations", "rewards") + (
            ("actions",) if spec.action_type == "continuous" else ()
        ):
            arr = getattr(self, name)
            if not np.all(np.isfinite(arr)):
                bad = int(np.flatnonzero(~np.isfinite(arr).reshape(n, -1).all(axis=1))[0])
                fail(name, f"contains NaN or inf (episode {bad})")
        steps = np.arange(t)[None, :]
        valid = steps < self.lengths[:, None]
        if spec.action_type == "discrete" and n and t:
            a = self.actions[valid]
            if a.size and (a.min() < 0 or a.max() >= spec.action_dim):
                fail("actions", f"values must lie in [0, {spec.action_dim}), "
                     f"found {int(a.min())}..{int(a.max())}")
        early = self.terminals & (steps < (self.lengths[:, None] - 1))
        if early.any():
            bad = int(np.flatnonzero(early.any(axis=1))[0])
            fail("terminals", f"set before the last step in episode {bad}")
        if (self.terminals & ~valid).any():
            fail("terminals", "set after the end of an episode")
        if self.successes is not None and (self.successes & ~valid).any():
            fail("successes", "set after the end of an episode")
        for name, values in (("instructions", self.instructions), ("goals", self.goals)):
            if len(values) != n:
                fail(name, f"has {len(values)} entries, expected {n}")
        for key, arr in self.extras.items():
            if len(arr) != n:
                fail(f"extras/{key}", f"has {len(arr)} entries, expected {n}")


def write_episodes(data: EpisodeData, path: str | Path) -> Path:
    """Validate and write atomically: a temporary file renamed at the end."""
    path = Path(path)
    data.validate(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("observations", data=data.observations, compression="gzip",
                             compression_opts=4)
            f.create_dataset("actions", data=data.actions)
            f.create_dataset("rewards", data=data.rewards)
            f.create_dataset("terminals", data=data.terminals)
            if data.successes is not None:
                f.create_dataset("successes", data=data.successes)
            f.create_dataset("lengths", data=data.lengths)
            f.create_dataset("instructions", data=np.array(data.instructions, dtype=object),
                             dtype=_STR)
            f.create_dataset("goals", data=np.array(
                [json.dumps(g, sort_keys=True) for g in data.goals], dtype=object), dtype=_STR)
            if data.extras:
                grp = f.create_group("extras")
                for key, arr in data.extras.items():
                    if arr.dtype.kind in "UO":
                        grp.create_dataset(key, data=np.array([str(v) for v in arr],
                                                              dtype=object), dtype=_STR)
                    else:
                        grp.create_dataset(key, data=arr)
            attrs = {
                **{k: v for k, v in data.attrs.items() if isinstance(v, (str, int, float, bool))},
                "env": data.spec.env,
                "obs_type": data.spec.obs_type,
                "obs_dim": data.spec.obs_dim,
                "action_type": data.spec.action_type,
                "action_dim": data.spec.action_dim,
                "source": data.source,
                "kalm_version": kalm.__version__,
                "format": f"{FORMAT_PREFIX}{FORMAT_VERSION}",
            }
            for k, v in attrs.items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_REQUIRED = ("observations", "actions", "rewards", "terminals", "lengths", "instructions", "goals")
_REQUIRED_ATTRS = ("env", "obs_dim", "action_type", "action_dim", "source")


def format_version(path: Path, attrs: Mapping[str, Any]) -> int:
    """The version in a file's `format` attribute (1 for files written before it existed);
    EpisodeFileError naming the file and the attribute when this kalm cannot read it."""
    value = attrs.get("format")
    if value is None:
        return 1
    text = value.decode() if isinstance(value, bytes) else str(value)
    version = text[len(FORMAT_PREFIX):] if text.startswith(FORMAT_PREFIX) else ""
    if not version.isdigit():
        raise EpisodeFileError(f"{path}: attribute 'format' is {text!r}, not a kalm episode "
                               f"format ({FORMAT_PREFIX}<version>)")
    if int(version) > FORMAT_VERSION:
        writer = attrs.get("kalm_version", "a newer kalm")
        raise EpisodeFileError(
            f"{path}: attribute 'format' is {text!r} (written by kalm {writer}), newer than "
            f"this kalm {kalm.__version__} reads (up to {FORMAT_PREFIX}{FORMAT_VERSION}); "
            "upgrade kalm to read it")
    return int(version)


def read_episodes(path: str | Path) -> EpisodeData:
    """Read and validate an episode file; every problem names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeFileError(f"{path}: no such episode file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise EpisodeFileError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        format_version(path, f.attrs)  # before anything else: a newer layout may differ
        for key in _REQUIRED:
            if key not in f:
                raise EpisodeFileError(f"{path}: missing dataset '{key}'")
        for key in _REQUIRED_ATTRS:
            if key not in f.attrs:
                raise EpisodeFileError(f"{path}: missing attribute '{key}'")
        spec = EnvSpecInfo(
            env=str(f.attrs["env"]),
            obs_dim=int(f.attrs["obs_dim"]),
            action_type=str(f.attrs["action_type"]),
            action_dim=int(f.attrs["action_dim"]),
            obs_type=str(f.attrs.get("obs_type", "continuous")),
        )
        if spec.action_type not in ("discrete", "continuous"):
            raise EpisodeFileError(f"{path}: attribute 'action_type' must be 'discrete' or "
                                   f"'continuous', got {spec.action_type!r}")
        goals = []
        for i, g in enumerate(f["goals"].asstr()[()]):
            try:
                goals.append(json.loads(g))
            except json.JSONDecodeError:
                raise EpisodeFileError(f"{path}: 'goals'[{i}] is not JSON: {g[:60]!r}") from None
        extras = {}
        for k in f.get("extras", {}):
            ds = f["extras"][k]
            extras[k] = (np.array(ds.asstr()[()], dtype=str) if h5py.check_string_dtype(ds.dtype)
                         else ds[()])
        data = EpisodeData(
            spec=spec,
            observations=f["observations"][()],
            actions=f["actions"][()],
            rewards=f["rewards"][()],
            terminals=f["terminals"][()],
            lengths=f["lengths"][()],
            instructions=list(f["instructions"].asstr()[()]),
            goals=goals,
            source=str(f.attrs["source"]),
            extras=extras,
            attrs={k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()},
            successes=f["successes"][()] if "successes" in f else None,
        )
    data.validate(str(path))
    return data
