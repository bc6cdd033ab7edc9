"""`kalm train`: goal-conditioned offline RL on real (+ imagined) episodes with d3rlpy.

The policy folder holds `policy.d3` (d3rlpy's config + weights), `train_config.json` (resolved),
d3rlpy's logs under `logs/`, and checkpoints under `checkpoints/` written atomically every
`save_every` steps; `--resume` continues from the last one exactly: a checkpoint is the d3rlpy
file (weights, target networks, optimiser states) plus `step-N.state.pt` with what d3rlpy does
not save: its gradient-step counter (target-network syncs are timed by it), the torch, numpy and
Python RNG states and kalm's batch sampler state. An interrupted and resumed run ends with the
same weights as an uninterrupted one.

Continuous actions (Meta-World): the policy learns in d3rlpy's [-1, 1] through a min-max action
scaler built from the env definition's action bounds (stored in the d3rlpy file, so a loaded
policy scales the same way), which keeps every prediction inside the bounds; training actions
are clipped to the bounds first, as the env clips what it executes.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kalm.data.episodes import EpisodeData, read_episodes
from kalm.rl.algos import (
    AlgoConfig,
    check_algo,
    check_target_interval,
    create_algo,
    target_interval,
)
from kalm.rl.datasets import Transitions, TransitionSampler, to_d3rlpy, to_transitions
from kalm.rl.text_encoder import TextEncoder


@dataclass
class TrainConfig:
    real: str = ""
    out: str = ""
    imagined: list[str] = field(default_factory=list)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    steps: int = 100_000
    seed: int = 0
    imagined_ratio: float = 0.5  # share of each batch drawn from imagined data
    save_every: int = 10_000
    log_every: int = 500
    text_encoder: str | None = None  # local sentence-transformer folder; None = MiniLM


POLICY_FILE = "policy.d3"


def _atomic_save(algo, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    algo.save(str(tmp))
    tmp.replace(path)


def _state_file(ckpt: Path) -> Path:
    return ckpt.with_name(f"{ckpt.stem}.state.pt")


def _checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (the d3rlpy file and its state file), oldest first."""
    found = [p for p in folder.glob("step-*.d3") if _state_file(p).is_file()]
    return sorted(found, key=lambda p: int(p.stem.split("-")[1]))


def _rng_states() -> dict[str, Any]:
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(algo, sampler: TransitionSampler, step: int, running: dict[str, float],
                    folder: Path) -> Path:
    """`step-N.d3` and `step-N.state.pt`, each written atomically (the state file first: a
    d3rlpy file without its state file is never used)."""
    import torch

    ckpt = folder / f"step-{step:08d}.d3"
    state = {"step": step, "grad_step": int(algo.grad_step), "rng": _rng_states(),
             "sampler": sampler.rng.bit_generator.state, "running": dict(running)}
    tmp = folder / f".{_state_file(ckpt).name}.tmp{os.getpid()}"
    torch.save(state, tmp)
    tmp.replace(_state_file(ckpt))
    _atomic_save(algo, ckpt)
    return ckpt


def load_checkpoint(ckpt: Path, sampler: TransitionSampler, device: str):
    """(algo, step, running losses) from a checkpoint, with every RNG and counter restored."""
    import d3rlpy
    import torch

    state = torch.load(_state_file(ckpt), weights_only=False)
    algo = d3rlpy.load_learnable(str(ckpt), device=device)
    algo.set_grad_step(int(state["grad_step"]))
    sampler.rng.bit_generator.state = state["sampler"]
    _set_rng_states(state["rng"])
    return algo, int(state["step"]), dict(state["running"])


def load_data(paths: list[str]) -> EpisodeData | None:
    if not paths:
        return None
    parts = [read_episodes(p) for p in paths]
    return parts[0] if len(parts) == 1 else EpisodeData.concatenate(parts)


def action_bounds(spec, parts: Sequence[Transitions]) -> tuple[np.ndarray, np.ndarray, str]:
    """(low, high, where from) of continuous actions: the env definition's `action_low` /
    `action_high` (what the env clips to), found from the data's env string; for an env kalm
    cannot look up, or one without bounds, the range of the training actions."""
    from kalm.envs.registry import find_env

    definition = find_env(spec.env)
    if definition is not None and definition.action_low is not None:
        low = np.asarray(definition.action_low, np.float32)
        high = np.asarray(definition.action_high, np.float32)
        if low.shape != (spec.action_dim,):
            raise ValueError(f"env {spec.env!r} has {low.shape[0]} action bounds, the data "
                             f"{spec.action_dim}-d actions")
        return low, high, f"env {spec.env}"
    acts = np.concatenate([t.actions for t in parts])
    return acts.min(axis=0).astype(np.float32), acts.max(axis=0).astype(np.float32), "data"


def _action_scaler(low: np.ndarray, high: np.ndarray):
    """d3rlpy's min-max scaler on the bounds (a dimension without range is widened to
    [low - 1, high + 1]: the scaler divides by high - low)."""
    from d3rlpy.preprocessing import MinMaxActionScaler

    flat = high <= low
    return MinMaxActionScaler(minimum=np.where(flat, low - 1.0, low).astype(np.float64),
                              maximum=np.where(flat, high + 1.0, high).astype(np.float64))


def _clip_actions(t: Transitions, low: np.ndarray, high: np.ndarray) -> None:
    """What the env executed: it clips every action to its bounds, so a stored action outside
    them (noisy expert, generated) is learnt as the clipped one."""
    t.actions = np.clip(t.actions, low, high).astype(np.float32)
    t.next_actions = np.clip(t.next_actions, low, high).astype(np.float32)


def train_policy(cfg: TrainConfig, resume: bool = False, progress: bool = True
                 ) -> dict[str, Any]:
    """Train and save; returns a summary (steps, timings, dataset sizes)."""
    import d3rlpy
    import torch

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    real = read_episodes(cfg.real)
    action_type = real.spec.action_type
    check_algo(cfg.algo.algo, action_type, real.spec.env)
    check_target_interval(cfg.algo, cfg.steps, action_type)
    imagined = load_data(cfg.imagined)
    if imagined is not None and imagined.spec != real.spec:
        raise ValueError(f"imagined data is for {imagined.spec}, real data for {real.spec}")
    encoder = TextEncoder.shared(cfg.text_encoder)
    real_t = to_transitions(real, encoder)
    imag_t = to_transitions(imagined, encoder) if imagined is not None else None
    scaler, bounds = None, {}
    if action_type == "continuous":
        low, high, source = action_bounds(real.spec, [t for t in (real_t, imag_t) if t])
        for t in (real_t, imag_t):
            if t is not None:
                _clip_actions(t, low, high)
        scaler = _action_scaler(low, high)
        bounds = {"action_low": low.tolist(), "action_high": high.tolist(),
                  "action_bounds": source}
    sampler = TransitionSampler(real_t, imag_t, cfg.imagined_ratio, seed=cfg.seed)
    d3rlpy.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    algo = create_algo(cfg.algo, action_type, scaler, steps=cfg.steps)
    algo.build_with_dataset(to_d3rlpy(real, encoder))
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    start = 0
    running: dict[str, float] = {}
    if resume and _checkpoints(ckpt_dir):
        algo, start, running = load_checkpoint(_checkpoints(ckpt_dir)[-1], sampler,
                                               cfg.algo.device)
    (out / "train_config.json").write_text(json.dumps(
        {**asdict(cfg), "text_encoder_name": encoder.name, "obs_dim": real_t.observations.shape[1],
         "env": real.spec.env, "env_obs_dim": real.spec.obs_dim,
         "action_type": action_type, "action_dim": real.spec.action_dim, **bounds,
         "target_sync_interval": target_interval(cfg.algo, cfg.steps),
         "real_transitions": len(real_t),
         "imagined_transitions": 0 if imag_t is None else len(imag_t)}, indent=2))
    log_path = out / "logs" / "train.jsonl"
    log_path.parent.mkdir(exist_ok=True)
    batch_size = algo.config.batch_size
    sample_s = update_s = 0.0
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.algo.algo}", unit="step",
               disable=not progress)
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        batch = sampler.sample(batch_size)
        t1 = time.perf_counter()
        losses = algo.update(batch)
        t2 = time.perf_counter()
        sample_s += t1 - t0
        update_s += t2 - t1
        for k, v in losses.items():
            running[k] = 0.98 * running.get(k, float(v)) + 0.02 * float(v)
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            bar.set_postfix({k: f"{v:.3g}" for k, v in running.items()})
            with log_path.open("a") as fh:
                fh.write(json.dumps({"step": step, **running}) + "\n")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(algo, sampler, step, running, ckpt_dir)
            for old in _checkpoints(ckpt_dir)[:-2]:
                _state_file(old).unlink(missing_ok=True)
                old.unlink(missing_ok=True)
    bar.close()
    _atomic_save(algo, out / POLICY_FILE)
    done = cfg.steps - start
    summary = {"steps": cfg.steps, "steps_this_run": done,
               "sample_seconds": sample_s, "update_seconds": update_s,
               "steps_per_second": done / max(sample_s + update_s, 1e-9),
               "sampling_share": sample_s / max(sample_s + update_s, 1e-9),
               "real_transitions": len(real_t),
               "imagined_transitions": 0 if imag_t is None else len(imag_t)}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def policy_env(path: str | Path) -> str | None:
    """The env string a saved policy was trained for (None for policies saved before it was
    recorded)."""
    p = Path(path)
    cfg_file = (p if p.is_dir() else p.parent) / "train_config.json"
    if not cfg_file.is_file():
        return None
    return json.loads(cfg_file.read_text()).get("env")


class TrainedPolicy:
    """A saved d3rlpy policy behind kalm's Policy interface (state ++ goal-text embedding).

    Acts in any env whose action space is the one it was trained for (discrete with as many
    actions, or continuous with as many dimensions) and whose observation size matches the
    training data. Continuous actions are clipped to the training bounds once more: the
    scaler already keeps them inside, the clip guards against rounding at the edges.
    """

    name = "trained"

    def __init__(self, path: str | Path, text_encoder: str | None = None) -> None:
        self.path = Path(path)
        file = self.path / POLICY_FILE if self.path.is_dir() else self.path
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no trained policy (expected {POLICY_FILE})")
        cfg_file = file.parent / "train_config.json"
        saved = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        if text_encoder is None:
            text_encoder = saved.get("text_encoder")
        self.env: str | None = saved.get("env")
        self.obs_dim: int | None = saved.get("env_obs_dim")
        import d3rlpy

        self.algo = d3rlpy.load_learnable(str(file), device="cpu:0")
        # from the d3rlpy file itself, so policies saved before kalm recorded it are checked
        self.discrete = self.algo.get_action_type() == d3rlpy.ActionSpace.DISCRETE
        self.action_size = int(self.algo.action_size)
        self._low = self._high = None
        if not self.discrete:
            scaler = self.algo.config.action_scaler
            low, high = saved.get("action_low"), saved.get("action_high")
            if low is None and scaler is not None:
                low, high = scaler.minimum, scaler.maximum
            if low is not None:
                self._low = np.asarray(low, np.float32)
                self._high = np.asarray(high, np.float32)
        self.encoder = TextEncoder.shared(text_encoder)
        self._emb = np.zeros(self.encoder.dim, dtype=np.float32)

    def trained_for(self) -> str:
        kind = (f"discrete actions ({self.action_size})" if self.discrete
                else f"continuous {self.action_size}-d actions")
        return f"{kind} in env {self.env!r}" if self.env else kind

    def begin(self, env, goal, instruction: str) -> None:
        if env is not None:
            import gymnasium as gym

            space = env.action_space
            if self.discrete:
                fits = isinstance(space, gym.spaces.Discrete) and int(space.n) == self.action_size
            else:
                fits = (isinstance(space, gym.spaces.Box)
                        and tuple(space.shape) == (self.action_size,))
            if not fits:
                raise ValueError(f"{self.path} was trained for {self.trained_for()}; this env's "
                                 f"action space is {space}")
            shape = env.observation_space.shape
            if self.obs_dim is not None and shape and shape[0] != self.obs_dim:
                raise ValueError(f"{self.path} was trained on {self.obs_dim}-d observations "
                                 f"(env {self.env!r}); this env has {shape[0]}")
        self._emb = self.encoder.encode([instruction])[0]

    def prepare(self, instructions: Sequence[str]) -> None:
        """Embed every instruction an evaluation will use, in batches, ahead of time."""
        self.encoder.encode(list(instructions))

    def _continuous(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float32)
        if self._low is not None:
            a = np.clip(a, self._low, self._high).astype(np.float32)
        return a

    def act(self, obs: np.ndarray) -> int | np.ndarray:
        x = np.concatenate([np.asarray(obs, dtype=np.float32), self._emb])[None]
        if self.discrete:
            return int(self.algo.predict(x)[0])
        return self._continuous(self.algo.predict(x)[0])

    def act_batch(self, obs: np.ndarray, goals: Sequence[Mapping[str, Any]],
                  instructions: Sequence[str]) -> np.ndarray:
        """One `predict` for a batch of episodes: row i is obs[i] ++ the embedding of
        instructions[i] (each instruction encoded on its own, as `begin` does, so row i is
        what `act` gives; continuous rows up to the last float bit, as a batch of one
        multiplies in another order). (B,) int64 actions, or (B, A) float32 continuous ones."""
        emb = np.stack([self.encoder.encode([t])[0] for t in instructions])
        x = np.concatenate([np.asarray(obs, dtype=np.float32), emb], axis=1)
        if self.discrete:
            return np.asarray(self.algo.predict(x), dtype=np.int64)
        return self._continuous(self.algo.predict(x))


__all__ = ["TrainConfig", "TrainedPolicy", "Transitions", "policy_env", "train_policy"]
