"""`kalm export --format d3rlpy`: an episode file as a d3rlpy dataset file, loadable without kalm.

The file is what `ReplayBuffer.dump` writes (d3rlpy's HDF5 episodes): a success step ends an
episode as terminated; a timeout is an episode that is not terminated and keeps its final
state as one more row (zero action and reward) that no transition starts from, so every one
of its transitions has its next state. Observations are the states, or, with the instruction
embedding, what kalm's policies see: the state followed by the embedding of the episode's
instruction (the text encoder `kalm train` uses), so a policy trained on it with plain d3rlpy
is evaluated by `kalm evaluate` (docs/datasets.md).

Beside the file, `FILE.json` says what it holds: env, sizes, text encoder, action bounds,
counts. Its keys are those `kalm evaluate` reads from a policy folder's `train_config.json`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import kalm
from kalm.data.episodes import EpisodeData
from kalm.io import write_json
from kalm.rl.datasets import to_d3rlpy
from kalm.rl.text_encoder import TextEncoder

D3RLPY_LAYOUT = "kalm-d3rlpy-1"


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_d3rlpy(data: EpisodeData, path: str | Path, *,
                  with_instruction_embedding: bool = False,
                  text_encoder: str | None = None) -> dict[str, Any]:
    """Write `data` as a d3rlpy dataset file (atomically) and its `.json` description;
    returns the description."""
    from kalm.envs.registry import EnvError, find_env

    path = Path(path)
    if not len(data):
        raise ValueError("no episodes to export")
    encoder = TextEncoder.shared(text_encoder) if with_instruction_embedding else None
    mdp = to_d3rlpy(data, encoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w+b") as f:
            mdp.dump(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    spec = data.spec
    ends = data.terminals[np.arange(len(data)), data.lengths - 1] if len(data) else np.zeros(0)
    info: dict[str, Any] = {
        "layout": D3RLPY_LAYOUT, "kalm_version": kalm.__version__,
        "env": spec.env, "env_obs_dim": spec.obs_dim, "action_type": spec.action_type,
        "action_dim": spec.action_dim,
        "obs_dim": spec.obs_dim + (encoder.dim if encoder is not None else 0),
        "with_instruction_embedding": encoder is not None,
        "text_encoder": text_encoder if encoder is not None else None,
        "text_encoder_name": encoder.name if encoder is not None else None,
        "source": data.source, "episodes": len(data),
        "transitions": data.num_transitions,
        "terminated_episodes": int(np.count_nonzero(ends)),
        "timeout_episodes": int(len(data) - np.count_nonzero(ends)),
    }
    if spec.action_type == "continuous":
        try:
            definition = find_env(spec.env)
        except EnvError:
            definition = None
        if definition is not None and definition.action_low is not None:
            info["action_low"] = [float(v) for v in definition.action_low]
            info["action_high"] = [float(v) for v in definition.action_high]
    write_json(info, sidecar_path(path))
    return info
