"""kalm episode files <-> Minari datasets (minari 0.5.x, its HDF5 storage), without loss.

One kalm episode is one Minari episode:

- `observations` (n+1, obs_dim) float32, `actions` (n,) int64 or (n, A) float32, `rewards` (n,)
  float32;
- `terminations` are kalm's terminals; `truncations` is True only at the last step of an episode
  that ended without a terminal (kalm's timeouts), so the two stay apart as in the file;
- `infos["is_success"]` (n+1,) bool when the file records the env's success per step (entry 0
  stands for the reset, where kalm records nothing, and is False);
- the episode metadata holds `instruction`, `goal` (the goal dict as JSON text), `success` (for
  Minari's `filter_episodes`) and every per-episode extra (e.g. imagination's quality flags) as
  `kalm_extras/NAME`.

The dataset metadata holds `kalm`: this layout's name, the env string and spec, the source
(`real` / `imagined`), the file's attributes, its padded width and the extras' dtypes, which is
what the import needs to give back the same file. The dataset also names the env's Gymnasium id
(`EnvDefinition.gym_id`), so `minari.load_dataset(ID).recover_environment()` makes the env
(with kalm installed); envs without one get observation and action spaces from their spec.

Datasets live where Minari keeps them: `MINARI_DATASETS_PATH`, else `~/.minari/datasets`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import kalm
from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData, EpisodeFileError

MINARI_LAYOUT = "kalm-minari-1"
_EXTRAS = "kalm_extras"


def _minari():
    try:
        import minari
    except ImportError:
        raise ImportError("the Minari format needs the package minari 0.5 "
                          "(pip install 'kalm[minari]'; `make setup` installs it)") from None
    return minari


def _spaces(spec: EnvSpecInfo):
    """(gym id or None, observation space, action space) for the data's env."""
    import gymnasium as gym

    from kalm.envs.registry import EnvError, find_env

    try:
        definition = find_env(spec.env)
    except EnvError:
        definition = None
    if definition is not None and definition.gym_id:
        env = gym.make(definition.gym_id)
        try:
            obs_space, act_space = env.observation_space, env.action_space
        finally:
            env.close()
        fits = tuple(obs_space.shape or ()) == (spec.obs_dim,) and (
            isinstance(act_space, gym.spaces.Discrete) and int(act_space.n) == spec.action_dim
            if spec.action_type == "discrete"
            else isinstance(act_space, gym.spaces.Box)
            and tuple(act_space.shape) == (spec.action_dim,))
        if not fits:
            raise EpisodeFileError(
                f"the data's spec {spec} does not match the spaces of {definition.gym_id} "
                f"({obs_space}, {act_space})")
        return definition.gym_id, obs_space, act_space
    inf = np.full(spec.obs_dim, np.inf, np.float32)
    low, high = -inf, inf
    if definition is not None:
        low = np.asarray(definition.state_low, np.float32)
        high = np.asarray(definition.state_high, np.float32)
    obs_space = gym.spaces.Box(low, high, dtype=np.float32)
    if spec.action_type == "discrete":
        return None, obs_space, gym.spaces.Discrete(spec.action_dim)
    a_low = np.full(spec.action_dim, -np.inf, np.float32)
    a_high = -a_low
    if definition is not None and definition.action_low is not None:
        a_low = np.asarray(definition.action_low, np.float32)
        a_high = np.asarray(definition.action_high, np.float32)
    return None, obs_space, gym.spaces.Box(a_low, a_high, dtype=np.float32)


def _plain(value: Any) -> Any:
    """A file attribute as a JSON value (None when it has no JSON form)."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, bytes):
        value = value.decode()
    return value if isinstance(value, (str, int, float, bool)) else None


def export_minari(data: EpisodeData, dataset_id: str, *, overwrite: bool = False,
                  description: str | None = None, author: str | None = None):
    """Write `data` as the Minari dataset `dataset_id` (e.g. `kalm/clevr-real-v0`); returns
    the MinariDataset. An existing dataset of that id is replaced only with `overwrite`."""
    minari = _minari()
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError):
        raise EpisodeFileError(f"Minari id {dataset_id!r} is not (NAMESPACE/)NAME-vVERSION, "
                               "e.g. kalm/clevr-real-v0") from None
    data.validate("<export>")
    if get_dataset_path(dataset_id).exists():
        if not overwrite:
            raise EpisodeFileError(f"Minari dataset {dataset_id!r} exists at "
                                   f"{get_dataset_path(dataset_id)}; pass overwrite to replace it")
        shutil.rmtree(get_dataset_path(dataset_id))
    spec = data.spec
    gym_id, obs_space, act_space = _spaces(spec)
    buffers = []
    for i in range(len(data)):
        ep = data.episode(i)
        n = ep.length
        truncations = np.zeros(n, dtype=bool)
        truncations[-1] = not bool(ep.terminals[-1])
        infos: dict[str, np.ndarray] = {}  # Minari's readers expect a dict, empty or not
        if data.successes is not None:
            infos = {"is_success": np.concatenate([[False], ep.success_steps]).astype(bool)}
        buffers.append(EpisodeBuffer(
            id=i, observations=np.asarray(ep.observations, np.float32),
            actions=np.asarray(ep.actions), rewards=np.asarray(ep.rewards, np.float32),
            terminations=np.asarray(ep.terminals, bool), truncations=truncations,
            infos=infos))
    extras = {k: {"dtype": v.dtype.str if v.dtype.kind not in "UO" else "str",
                  "shape": list(v.shape[1:])} for k, v in data.extras.items()}
    layout = {
        "layout": MINARI_LAYOUT, "kalm_version": kalm.__version__,
        "env": spec.env, "obs_type": spec.obs_type, "obs_dim": spec.obs_dim,
        "action_type": spec.action_type, "action_dim": spec.action_dim,
        "source": data.source, "padded_steps": int(data.actions.shape[1]),
        "successes": data.successes is not None, "extras": extras,
        "attrs": {k: v for k, v in ((k, _plain(v)) for k, v in data.attrs.items())
                  if v is not None},
    }
    algorithm = data.attrs.get("policy") or ("kalm imagine" if data.source == "imagined"
                                             else "kalm collect")
    text = description or (f"kalm {data.source} episodes of env {spec.env!r}: {len(data)} "
                           f"episodes, {data.num_transitions} steps")
    metas = []
    for i in range(len(data)):
        meta: dict[str, Any] = {"instruction": data.instructions[i],
                                "goal": json.dumps(data.goals[i], sort_keys=True),
                                "success": bool(data.episode(i).success)}
        for key, arr in data.extras.items():
            meta[f"{_EXTRAS}/{key}"] = str(arr[i]) if arr.dtype.kind in "UO" else arr[i]
        metas.append(meta)
    try:
        with warnings.catch_warnings():
            # Minari's reminders of fields kalm leaves empty (permalink, email, eval env, ...)
            warnings.filterwarnings("ignore", message=r".*(is set to None|env_spec is None)")
            dataset = minari.create_dataset_from_buffers(
                dataset_id, buffers, env=gym_id,
                observation_space=obs_space, action_space=act_space,
                algorithm_name=str(algorithm), author=author, description=text,
                requirements=[f"kalm>={kalm.__version__}"], data_format="hdf5")
        if metas:
            dataset.storage.update_episode_metadata(metas, range(len(data)))
        dataset.storage.update_metadata({"kalm": layout})
    except BaseException:  # no half-written dataset under that id
        shutil.rmtree(get_dataset_path(dataset_id), ignore_errors=True)
        raise
    return dataset


def _open(source: str | Path):
    """A MinariDataset from a local id or a dataset folder (never downloads)."""
    minari = _minari()
    path = Path(source)
    if path.is_dir():
        data_dir = path / "data" if (path / "data").is_dir() else path
        try:
            return minari.MinariDataset(data_dir)
        except (ValueError, OSError, KeyError) as exc:
            raise EpisodeFileError(f"{path}: not a Minari dataset folder ({exc})") from None
    try:
        return minari.load_dataset(str(source), download=False)
    except FileNotFoundError:
        raise EpisodeFileError(f"no local Minari dataset {str(source)!r} (under "
                               f"MINARI_DATASETS_PATH or ~/.minari/datasets)") from None
    except ValueError as exc:
        raise EpisodeFileError(f"Minari dataset {str(source)!r}: {exc}") from None


def import_minari(source: str | Path, env: str | None = None) -> EpisodeData:
    """kalm episodes from a Minari dataset (a local id or folder). Datasets kalm exported come
    back as they were; others need `env` (an env string) for the spec, and take the episode
    metadata's `instruction` / `goal` when present."""
    ds = _open(source)
    meta = ds.storage.metadata
    layout = meta.get("kalm")
    where = f"Minari dataset {ds.id!r}"
    if layout is not None:
        if layout.get("layout") != MINARI_LAYOUT:
            raise EpisodeFileError(f"{where}: metadata 'kalm' has layout "
                                   f"{layout.get('layout')!r}, not {MINARI_LAYOUT!r}")
        spec = EnvSpecInfo(env=env or layout["env"], obs_dim=int(layout["obs_dim"]),
                           action_type=layout["action_type"],
                           action_dim=int(layout["action_dim"]),
                           obs_type=layout.get("obs_type", "continuous"))
        source_kind = layout.get("source", "real")
        attrs = dict(layout.get("attrs", {}))
    else:
        if env is None:
            raise EpisodeFileError(f"{where} was not written by kalm (no 'kalm' entry in its "
                                   "metadata): name its env (--env)")
        from kalm.envs.registry import get_env

        spec = get_env(env).episode_spec(env)
        source_kind, attrs = "real", {"minari_dataset": ds.id}
    discrete = spec.action_type == "discrete"
    indices = [int(i) for i in ds.episode_indices]
    episode_meta = list(ds.storage.get_episode_metadata(indices))
    episodes = []
    for ep, em in zip(ds.iterate_episodes(indices), episode_meta, strict=True):
        name = f"{where} episode {ep.id}"
        obs = np.asarray(ep.observations)
        n = len(ep.rewards)
        if obs.shape != (n + 1, spec.obs_dim):
            raise EpisodeFileError(f"{name}: 'observations' has shape {obs.shape}, expected "
                                   f"{(n + 1, spec.obs_dim)}")
        acts = np.asarray(ep.actions)
        acts = acts.reshape(n).astype(np.int64) if discrete else acts.astype(np.float32)
        term = np.asarray(ep.terminations, bool).reshape(n)
        trunc = np.asarray(ep.truncations, bool).reshape(n)
        for field, flags in (("terminations", term), ("truncations", trunc)):
            if flags[:-1].any():
                raise EpisodeFileError(f"{name}: '{field}' set before the last step (kalm "
                                       "episodes end at a terminal or a timeout)")
        successes = None
        infos = ep.infos or {}
        if "is_success" in infos and len(infos["is_success"]) == n + 1:
            successes = np.asarray(infos["is_success"], bool)[1:]
        goal = em.get("goal")
        try:
            goal = json.loads(goal) if isinstance(goal, str) else {}
        except json.JSONDecodeError:
            raise EpisodeFileError(f"{name}: metadata 'goal' is not JSON: {goal[:60]!r}") from None
        episodes.append(Episode(
            observations=obs.astype(np.float32), actions=acts,
            rewards=np.asarray(ep.rewards, np.float32).reshape(n), terminals=term,
            instruction=str(em.get("instruction", "")), goal=goal,
            extras=dict(em.get(_EXTRAS, {})), successes=successes))
    data = EpisodeData.from_episodes(episodes, spec, source=source_kind, attrs=attrs)
    if layout is not None:
        data = _restore(data, layout, where)
    data.validate(where)
    return data


def _restore(data: EpisodeData, layout: dict[str, Any], where: str) -> EpisodeData:
    """The exported file's padded width, extras dtypes and successes flag."""
    for key, info in layout.get("extras", {}).items():
        if key not in data.extras:
            if len(data):
                raise EpisodeFileError(f"{where}: episode metadata lacks '{_EXTRAS}/{key}'")
            data.extras[key] = np.zeros((0, *info["shape"]),
                                        dtype=str if info["dtype"] == "str" else info["dtype"])
            continue
        arr = data.extras[key]
        data.extras[key] = (np.asarray([str(v) for v in arr], dtype=str) if info["dtype"] == "str"
                            else np.asarray(arr).astype(np.dtype(info["dtype"])))
    if not layout.get("successes", False):
        data.successes = None
    width = int(layout.get("padded_steps", data.actions.shape[1]))
    extra = width - data.actions.shape[1]
    if extra > 0:
        def pad(a: np.ndarray) -> np.ndarray:
            return np.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2))

        data.observations = pad(data.observations)
        data.actions, data.rewards = pad(data.actions), pad(data.rewards)
        data.terminals = pad(data.terminals)
        if data.successes is not None:
            data.successes = pad(data.successes)
    return data
