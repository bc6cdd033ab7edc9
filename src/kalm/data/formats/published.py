"""The padded layouts of KALM's and ImagineBench's released data -> kalm episodes (`kalm import`).

Both layouts pad N episodes to T steps and mark the valid steps with a mask (docs/datasets.md):

`kalm-npy`, the dict KALM's code saves with `np.save` (a pickled `.npy`; the same keys in an
`.npz` or an HDF5 file need no pickle):
  observations (N, T, obs_dim) s_t | next_observations (N, T, obs_dim) s_t+1 (optional)
  actions (N, T[, 1]) ints or (N, T, A) | rewards (N, T[, 1]) | terminals (N, T[, 1]) (optional)
  masks (N, T[, 1]) 1 on valid steps, or action_masks + observation_masks (imagined rollouts,
  whose observations run one step longer) | instructions (N,) or (N, K) paraphrases
  goals (N, G) or (N, T, G) goal vectors (CLEVR) or target positions (Meta-World)
  env_names (N,) task names (Meta-World) | is_successes / successes / success (optional)
  observation_dim, action_dim, action_type (optional scalars, checked against the env)

`imaginebench`, ImagineBench's HDF5 files (`get_dataset()`'s dicts):
  observations (N, T, obs_dim + E): the state followed by an E-dim instruction encoding
  actions, rewards (N, T, 1), masks (N, T, 1); instructions / goals / env_names only in a
  companion file (`meta`, e.g. the `.npy` beside `ball_real.h5`)

What cannot be read from a layout is said in the data: without `next_observations` the state
after the last action is not stored, so the last state is repeated and the episode carries
`extras["final_state_missing"]`; without `terminals` every episode ends at a terminal, as both
projects' trainers read these files. Goals become kalm goal dicts through the env's
`published_goal` hook (CLEVR goal vectors, Meta-World task names); the raw vector and task name
stay in extras (`published_goal`, `published_task`), other paraphrases in `paraphrases` (JSON),
ImagineBench's encodings in `instruction_encoding`.

Meta-World files are KALM's: s[0:3] is its hand body, kalm's is the tcp, so `TCP_OFFSET` is
added (attrs `hand_to_tcp`); an episode flagged successful (`is_successes`) ends at a terminal,
where KALM's files store it as a timeout; the rewards stay KALM's (its shaped dense-v2 reward,
on a similar 0-10 scale but not kalm's `episode_rewards`: attrs `rewards` says so).

Pickled arrays are read only with `allow_pickle=True`: unpickling can run arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kalm.data.episodes import Episode, EpisodeData, EpisodeFileError

LAYOUTS = ("kalm-npy", "imaginebench")
_SUCCESS_KEYS = ("is_successes", "successes", "success")
_TASK_KEYS = ("env_names", "tasks", "task_names")


class PickleRefused(EpisodeFileError):
    """A file that holds pickled Python objects, read without allow_pickle."""


def _refuse(path: Path) -> PickleRefused:
    return PickleRefused(f"{path}: holds pickled Python objects, and unpickling can run "
                         "arbitrary code; read it only if you trust where it came from "
                         "(kalm import --allow-pickle)")


def load_fields(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """The named arrays of an HDF5 (`.h5`/`.hdf5`), `.npz` or `.npy` (a saved dict) file."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".he5"):
        import h5py

        out: dict[str, Any] = {}
        try:
            with h5py.File(path, "r") as f:
                def visit(name: str, item: Any) -> None:
                    if isinstance(item, h5py.Dataset):
                        out[name] = (item.asstr()[()] if h5py.check_string_dtype(item.dtype)
                                     else item[()])

                f.visititems(visit)
        except OSError as exc:
            raise EpisodeFileError(f"{path}: not a readable HDF5 file ({exc})") from None
        return out
    if suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=allow_pickle)
        except (OSError, ValueError) as exc:
            raise EpisodeFileError(f"{path}: not a readable .npz file ({exc})") from None
        with archive:
            try:
                return {k: archive[k] for k in archive.files}
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise _refuse(path) from None
                raise EpisodeFileError(f"{path}: {exc}") from None
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=allow_pickle)
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise _refuse(path) from None
            raise EpisodeFileError(f"{path}: not a readable .npy file ({exc})") from None
        except OSError as exc:
            raise EpisodeFileError(f"{path}: not a readable .npy file ({exc})") from None
        value = arr.item() if arr.dtype == object and arr.shape == () else None
        if not isinstance(value, Mapping):
            raise EpisodeFileError(f"{path}: holds one {arr.dtype} array of shape {arr.shape}, "
                                   "not a dict of named fields")
        return dict(value)
    raise EpisodeFileError(f"{path}: unknown file type {suffix!r} (.h5, .hdf5, .npz or .npy)")


# ------------------------------------------------------------------ field checks
def _fail(where: str, key: str, msg: str) -> EpisodeFileError:
    return EpisodeFileError(f"{where}: '{key}' {msg}")


def _steps(fields: Mapping[str, Any], key: str, where: str, n: int, t: int) -> np.ndarray:
    """A per-step array (N, T) or (N, T, 1) as (N, T)."""
    a = np.asarray(fields[key])
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.shape != (n, t):
        raise _fail(where, key, f"has shape {a.shape}, expected ({n}, {t}) or ({n}, {t}, 1)")
    return a


def _lengths(fields: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    m = np.asarray(fields[key])
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2:
        raise _fail(where, key, f"has shape {m.shape}, expected (N, T) or (N, T, 1)")
    if m.size and not np.isin(m, (0, 1)).all():
        raise _fail(where, key, "holds values other than 0 and 1")
    m = m.astype(bool)
    gaps = m[:, 1:] & ~m[:, :-1]
    if gaps.any():
        raise _fail(where, key, f"row {int(np.flatnonzero(gaps.any(axis=1))[0])} is not a run "
                    "of valid steps followed by padding")
    lengths = m.sum(axis=1)
    if len(lengths) and lengths.min() < 1:
        raise _fail(where, key, f"row {int(np.argmin(lengths))} has no valid step")
    return lengths.astype(np.int64)


def _texts(value: Any) -> list[str]:
    items = value.tolist() if isinstance(value, np.ndarray) else value
    if isinstance(items, (str, bytes)):
        items = [items]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in items]


def _instructions(fields: Mapping[str, Any], where: str, n: int) -> list[list[str]]:
    raw = fields["instructions"]
    rows = list(raw) if not isinstance(raw, np.ndarray) or raw.ndim else [raw.item()]
    if len(rows) != n:
        raise _fail(where, "instructions", f"has {len(rows)} entries for {n} episodes")
    out = []
    for i, row in enumerate(rows):
        texts = _texts(row)
        if not texts:
            raise _fail(where, "instructions", f"[{i}] is empty")
        out.append(texts)
    return out


def _per_episode(fields: Mapping[str, Any], key: str, where: str, n: int) -> list[Any]:
    value = fields[key]
    rows = list(value) if not isinstance(value, np.ndarray) or value.ndim else [value.item()]
    if len(rows) != n:
        raise _fail(where, key, f"has {len(rows)} entries for {n} episodes")
    return rows


def _check_scalars(fields: Mapping[str, Any], where: str, spec, state_only: bool) -> None:
    expected = {"action_dim": spec.action_dim, "action_type": spec.action_type}
    if state_only:
        expected.update(observation_dim=spec.obs_dim, obs_dim=spec.obs_dim)
    for key, want in expected.items():
        if key not in fields:
            continue
        value = np.asarray(fields[key])
        got = value.item() if value.size == 1 else value.tolist()
        got = got.decode() if isinstance(got, bytes) else got
        if str(got) != str(want):
            raise _fail(where, key, f"is {got!r}, but env {spec.env!r} has {want!r}")


# ------------------------------------------------------------------ import
def import_published(path: str | Path, layout: str, env: str = "clevr", *,
                     level: str | None = None, source: str = "real",
                     meta: str | Path | None = None, allow_pickle: bool = False,
                     require_instructions: bool = True) -> EpisodeData:
    """kalm episodes from a file in one of LAYOUTS for the env string `env`. `level` helps the
    env read goal vectors (CLEVR); `meta` is a companion file with the fields the main file
    lacks (instructions, goals, task names); every mismatch names the file and the field."""
    from kalm.envs.registry import get_env

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    path = Path(path)
    where = str(path)
    fields = load_fields(path, allow_pickle)
    if meta is not None:
        for key, value in load_fields(meta, allow_pickle).items():
            fields.setdefault(key, value)
        where = f"{path} (+ {meta})"
    definition = get_env(env)
    spec = definition.episode_spec(env)
    state_only = layout == "kalm-npy"
    mask_key = "masks" if "masks" in fields or "action_masks" not in fields else "action_masks"
    required = ["observations", "actions", "rewards", mask_key]
    if require_instructions:
        required.append("instructions")
    for key in required:
        if key not in fields:
            hint = (" (ImagineBench keeps them in a separate file: pass it as --meta, or "
                    "import without instructions)" if key == "instructions"
                    and layout == "imaginebench" else "")
            raise EpisodeFileError(f"{where}: missing field '{key}' of the {layout} layout"
                                   f"{hint}; found {', '.join(sorted(fields)) or 'none'}")
    _check_scalars(fields, where, spec, state_only)

    lengths = _lengths(fields, mask_key, where)
    obs = np.asarray(fields["observations"])
    n_eps = len(lengths)
    if obs.ndim != 3 or obs.shape[0] != n_eps:
        raise _fail(where, "observations", f"has shape {obs.shape}, expected ({n_eps}, T, D)")
    t = np.asarray(fields[mask_key]).shape[1]
    longer = mask_key == "action_masks"  # imagined rollouts: s_0 .. s_n in observations
    need = int(lengths.max()) + 1 if longer and n_eps else t
    if obs.shape[1] < need:
        raise _fail(where, "observations", f"has {obs.shape[1]} steps, the masks need {need}")
    width = obs.shape[2]
    if width < spec.obs_dim or (state_only and width != spec.obs_dim):
        expect = (f"{spec.obs_dim}" if state_only
                  else f"at least {spec.obs_dim} (the state, then an instruction encoding)")
        raise _fail(where, "observations", f"has {width} values per step; env {spec.env!r} "
                    f"states have {spec.obs_dim}, so expected {expect}")
    nxt = None
    if "next_observations" in fields:
        nxt = np.asarray(fields["next_observations"])
        if nxt.shape[:2] != (n_eps, t) or nxt.shape[2] < spec.obs_dim:
            raise _fail(where, "next_observations", f"has shape {nxt.shape}, expected "
                        f"({n_eps}, {t}, {width})")

    discrete = spec.action_type == "discrete"
    acts = np.asarray(fields["actions"])
    if discrete:
        acts = _steps(fields, "actions", where, n_eps, t)
    elif acts.shape != (n_eps, t, spec.action_dim):
        raise _fail(where, "actions", f"has shape {acts.shape}, expected "
                    f"({n_eps}, {t}, {spec.action_dim})")
    rewards = _steps(fields, "rewards", where, n_eps, t).astype(np.float32)
    terminals = (_steps(fields, "terminals", where, n_eps, t).astype(bool)
                 if "terminals" in fields else None)
    instructions = (_instructions(fields, where, n_eps) if "instructions" in fields
                    else [[""] for _ in range(n_eps)])
    vectors = _per_episode(fields, "goals", where, n_eps) if "goals" in fields else None
    task_key = next((k for k in _TASK_KEYS if k in fields), None)
    tasks = _per_episode(fields, task_key, where, n_eps) if task_key else None
    success_key = next((k for k in _SUCCESS_KEYS if k in fields), None)
    flags = _per_episode(fields, success_key, where, n_eps) if success_key else None
    paraphrased = any(len(texts) > 1 for texts in instructions)

    episodes = []
    for i, n in enumerate(lengths):
        n = int(n)
        states = obs[i, : n + 1 if longer else n]
        extras: dict[str, Any] = {}
        if not np.all(np.isfinite(states.astype(np.float64))):
            raise _fail(where, "observations", f"holds NaN or inf in episode {i}")
        if longer:
            observations = states[:, : spec.obs_dim]
        else:
            last = (nxt[i, n - 1, : spec.obs_dim] if nxt is not None
                    else states[n - 1, : spec.obs_dim])
            observations = np.concatenate([states[:, : spec.obs_dim], last[None]])
            if nxt is None:
                extras["final_state_missing"] = True
        if width > spec.obs_dim:
            extras["instruction_encoding"] = states[0, spec.obs_dim:].astype(np.float32)
        a = acts[i, :n]
        if discrete:
            a = a.astype(np.float64)
            if not np.all(a == np.round(a)) or a.min() < 0 or a.max() >= spec.action_dim:
                raise _fail(where, "actions", f"episode {i} holds values outside the whole "
                            f"numbers 0..{spec.action_dim - 1}")
            a = a.astype(np.int64)
        else:
            a = a.astype(np.float32)
            if not np.all(np.isfinite(a)):
                raise _fail(where, "actions", f"holds NaN or inf in episode {i}")
        term = np.zeros(n, bool)
        if terminals is None:
            term[-1] = True
        else:
            term = terminals[i, :n].copy()
            if term[:-1].any():
                raise _fail(where, "terminals", f"set before the last valid step in episode {i}")
        texts = instructions[i]
        if paraphrased:
            extras["paraphrases"] = json.dumps(texts, ensure_ascii=False)
        record: dict[str, Any] = {"vector": None, "task": None, "level": level}
        if vectors is not None:
            vec = np.asarray(vectors[i], dtype=np.float64)
            vec = vec[0] if vec.ndim == 2 else vec  # (T, G): the goal repeated per step
            record["vector"] = vec.reshape(-1)
            extras["published_goal"] = json.dumps(vec.reshape(-1).tolist())
        if tasks is not None:
            record["task"] = _texts(tasks[i])[0]
            extras["published_task"] = record["task"]
        if flags is not None:
            f = np.asarray(flags[i]).reshape(-1)
            extras["published_success"] = bool(f[:n].any() if f.size > 1 else f[0])
        goal = _goal(definition, record, where, vectors is not None, i)
        if definition.published_episode is not None:
            observations, term, converted = definition.published_episode(
                observations, term, extras.get("published_success"))
        episodes.append(Episode(observations.astype(np.float32), a, rewards[i, :n], term,
                                texts[0], goal, extras=extras))
    attrs = {"imported_from": path.name, "import_layout": layout,
             **(converted if definition.published_episode is not None and episodes else {})}
    if level:
        attrs["level"] = level
    data = EpisodeData.from_episodes(episodes, spec, source=source, attrs=attrs)
    data.validate(where)
    return data


def _goal(definition, record: dict[str, Any], where: str, from_vector: bool,
          i: int) -> dict[str, Any]:
    """The env's goal dict for one episode ({} where the layout does not determine one)."""
    if definition.published_goal is None or (record["vector"] is None and record["task"] is None):
        return {}
    key = "goals" if from_vector and record["task"] is None else "env_names"
    try:
        goal = definition.published_goal(record)
        return {} if goal is None else definition.validate_goal(goal)
    except ValueError as exc:
        raise _fail(where, key, f"[{i}]: {exc}") from None
