"""Collecting real datasets with the scripted expert: parallel, resumable, written atomically.

Attempts are grouped in fixed chunks whose episodes depend only on (seed, attempt index), so the
result is the same for any number of workers, and a crashed run resumes from its finished chunks
(kept in `<out>.parts/`).
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kalm.data.episodes import Episode, EpisodeData, read_episodes, write_episodes
from kalm.data.parallel import imap_ordered
from kalm.data.rollout import episode_seed, run_episode
from kalm.data.suites import GoalSuite, resolve_suite
from kalm.envs.registry import env_kwargs, get_env, make_env
from kalm.io import claim_folder


@dataclass(frozen=True)
class CollectConfig:
    out: str = ""  # the .h5 file to write
    env: str = "clevr"  # "clevr", "package.module:ATTR" or "path/to/file.py:ATTR"
    suite: str = "train"
    suite_file: str | None = None
    episodes: int = 1000
    seed: int = 0
    epsilon: float = 0.0
    keep_failures: bool = False
    policy: str = "expert"
    init_region: str = "paper"
    chunk_size: int = 200
    workers: int = 2

    def identity(self) -> dict[str, Any]:
        """Fields that decide the content of every chunk (not how it is computed)."""
        d = asdict(self)
        for k in ("out", "episodes", "workers"):
            d.pop(k)
        return d


_WORKER: dict[str, Any] = {}


def _worker_state(cfg: CollectConfig) -> tuple[Any, Any, GoalSuite]:
    key = json.dumps(cfg.identity(), sort_keys=True)
    if _WORKER.get("key") != key:
        definition = get_env(cfg.env)  # workers look the env up again from its string
        _WORKER.update(key=key, env=make_env(definition, cfg.init_region),
                       policy=definition.policy(cfg.policy, cfg.seed),
                       suite=resolve_suite(cfg.suite, cfg.suite_file, cfg.env))
    return _WORKER["env"], _WORKER["policy"], _WORKER["suite"]


def collect_chunk(args: tuple[CollectConfig, int]) -> list[Episode]:
    """Run the attempts of one chunk; returns every episode (filtering happens later)."""
    cfg, chunk = args
    env, policy, suite = _worker_state(cfg)
    groups = suite.groups()
    out = []
    for attempt in range(chunk * cfg.chunk_size, (chunk + 1) * cfg.chunk_size):
        s = episode_seed(cfg.seed, attempt)
        rng = np.random.default_rng(s)
        group = groups[int(rng.integers(len(groups)))]
        entry = group[int(rng.integers(len(group)))]
        if hasattr(policy, "rng"):
            policy.rng = np.random.default_rng(s + 1)
        ep = run_episode(env, policy, entry.goal, entry.instruction, seed=s, init=entry.init,
                         epsilon=cfg.epsilon, rng=rng)
        ep.extras["attempt"] = attempt
        out.append(ep)
    return out


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def collect(cfg: CollectConfig, progress: bool = True) -> EpisodeData:
    """Collect `cfg.episodes` episodes into `cfg.out` (resuming finished chunks)."""
    definition = get_env(cfg.env)
    spec = definition.episode_spec(cfg.env)  # the string the user passed finds the env later
    definition.policy(cfg.policy, cfg.seed)  # fail early on an unknown policy
    env_kwargs(definition, cfg.init_region)  # ... and on options the env does not take
    if not 0.0 <= cfg.epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {cfg.epsilon}")
    if cfg.episodes < 1:
        raise ValueError("episodes must be at least 1")
    resolve_suite(cfg.suite, cfg.suite_file, cfg.env)  # fail early on a bad suite
    out = Path(cfg.out)
    parts = _parts_dir(out)
    claim_folder(parts, cfg.identity())  # leftovers of a different collection: start afresh

    kept: list[Episode] = []
    attempts = 0
    bar = tqdm(total=cfg.episodes, desc="collect", unit="ep", disable=not progress)

    def accept(eps: list[Episode]) -> bool:
        nonlocal attempts
        attempts += len(eps)
        for ep in eps:
            if ep.success or cfg.keep_failures:
                kept.append(ep)
                bar.update(1)
                if len(kept) >= cfg.episodes:
                    return True
        return False

    # finished chunks first (resume), then new ones in parallel
    k = 0
    finished = False
    while (parts / f"chunk-{k:05d}.h5").exists():
        if accept(read_episodes(parts / f"chunk-{k:05d}.h5").episodes()):
            finished = True
            break
        k += 1
    if not finished:
        first_new = k
        todo = ((cfg, c) for c in itertools.count(first_new))
        for c, eps in enumerate(imap_ordered(collect_chunk, todo, cfg.workers), start=first_new):
            write_episodes(EpisodeData.from_episodes(eps, spec), parts / f"chunk-{c:05d}.h5")
            if accept(eps):
                break
            if c > first_new + 50 and not kept:
                raise RuntimeError("no successful episode in 50 chunks; is the suite solvable?")
    bar.close()
    attrs = {"policy": cfg.policy, "suite": cfg.suite_file or cfg.suite, "seed": cfg.seed,
             "epsilon": cfg.epsilon, "attempts": attempts, "init_region": cfg.init_region}
    data = EpisodeData.from_episodes(kept[: cfg.episodes], spec, source="real", attrs=attrs)
    write_episodes(data, out)
    shutil.rmtree(parts, ignore_errors=True)
    return data
