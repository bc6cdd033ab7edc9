"""A learned dynamics ensemble: a second opinion on imagined rollouts that never asks the simulator.

The grounded LLM judges its own rollouts on the states it predicted itself, so a rollout whose
states drift into the goal is labelled successful although its actions would not get there.
KALM may not use the simulator to label imagined data, but it may learn from the real data it
already has: K small MLPs fitted on the real transitions, each on its own bootstrap, predict
s' - s. Re-simulating an imagined action sequence through them gives states to judge the goal
on, and where the members disagree the data did not pin the dynamics down (the uncertainty that
MOPO-style penalties and truncation use).

The members are stacked into one batched network (weights (K, in, out), one `baddbmm` per layer),
so a training step of all K members costs about one matrix product per layer. Inputs are the
standardised state and the action (one-hot when discrete, raw when continuous); outputs the
standardised delta. Disagreement is measured in those standardised delta units, so one threshold
means the same for every state dimension and every environment.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from kalm.data.episodes import EpisodeData
from kalm.envs.base import EnvSpecInfo
from kalm.io import write_json
from kalm.llm.train import split_episodes  # the grounding split: same held-out episodes

__all__ = ["DynamicsConfig", "DynamicsEnsemble", "DynamicsFileError", "Normaliser",
           "Transitions", "check_spec", "encode_actions", "split_episodes", "torch_threads",
           "transitions", "with_symmetric_copies"]

FORMAT = "kalm-dynamics-1"
WEIGHTS = "dynamics.safetensors"
META = "dynamics.json"
SPEC_FIELDS = ("env", "obs_dim", "action_type", "action_dim")
UNCERTAINTY_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
_MIN_STD = 1e-6  # dimensions that never vary are left unscaled instead of divided by ~0


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op threads, then restore. These networks are too small to gain from
    more than one, and on a busy 2-core machine extra threads spin against other processes
    (measured: 6 s with one thread, 111 s with two for the same fit)."""
    prev = torch.get_num_threads()
    if n is not None and n != prev:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != prev:
            torch.set_num_threads(prev)


class DynamicsFileError(ValueError):
    """A saved ensemble that cannot be used here; the message names the file and the field."""


@dataclass
class DynamicsConfig:
    members: int = 5
    hidden: int = 256
    layers: int = 2  # hidden layers
    epochs: int = 100  # at most; early stopping on the held-out episodes usually ends sooner
    batch_size: int = 256  # per member
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1  # of the episodes, held out for early stopping and diagnostics
    seed: int = 0
    patience: int | None = 5  # epochs without improvement of any member; None: fixed epochs
    # steps each member is trained to predict open loop from a real state, on its own
    # predictions (backpropagated through the chain); early stopping then watches the held-out
    # error over the same number of steps. 1: the one-step fit. The planner trusts many-step
    # predictions, which a one-step fit never sees (its errors compound off the data)
    rollout_steps: int = 1
    # extra copies of every training episode, each under a random exact symmetry of the env's
    # physics (its definition's `dynamics_symmetry`: CLEVR's relabelled balls and mirrored
    # table); the held-out episodes stay as they are, so early stopping and every diagnostic
    # still measure real transitions. 0: the real episodes only
    symmetric_copies: int = 0


@dataclass(frozen=True)
class Transitions:
    """Every valid (s_t, a_t, s_t+1) of some episodes, flattened, with its episode index."""

    states: np.ndarray  # (M, obs) float32
    actions: np.ndarray  # (M,) int64 | (M, act) float32
    next_states: np.ndarray  # (M, obs) float32
    episodes: np.ndarray  # (M,) int64, index into the EpisodeData
    steps: np.ndarray  # (M,) int64, the time step t within its episode

    def __len__(self) -> int:
        return len(self.states)


def transitions(data: EpisodeData, episodes: Sequence[int] | np.ndarray | None = None
                ) -> Transitions:
    """The transitions of `episodes` (default: all) in episode-major, time order."""
    idx = np.arange(len(data)) if episodes is None else np.asarray(episodes, dtype=np.int64)
    t_max = data.actions.shape[1]
    valid = np.arange(t_max)[None, :] < data.lengths[idx, None]
    rows, steps = np.nonzero(valid)
    eps = idx[rows]
    return Transitions(data.observations[eps, steps].astype(np.float32),
                       data.actions[eps, steps],
                       data.observations[eps, steps + 1].astype(np.float32),
                       eps.astype(np.int64), steps.astype(np.int64))


def with_symmetric_copies(data: EpisodeData, copies: int,
                          symmetry: Callable[..., tuple[np.ndarray, np.ndarray]],
                          rng: np.random.Generator) -> EpisodeData:
    """DATA followed by COPIES copies of it, each episode of each copy under its own random
    symmetry (an env's `dynamics_symmetry`). Only observations and actions change: the copies
    are transitions for a dynamics model, their goals and rewards are the originals'."""
    obs, acts = [data.observations], [data.actions]
    for _ in range(copies):
        o, a = symmetry(data.observations, data.actions, rng)
        o, a = np.asarray(o), np.asarray(a)
        if o.shape != data.observations.shape or a.shape != data.actions.shape:
            raise ValueError(f"env {data.spec.env!r}: dynamics_symmetry returned shapes "
                             f"{o.shape} / {a.shape}, expected {data.observations.shape} / "
                             f"{data.actions.shape}")
        obs.append(o.astype(data.observations.dtype))
        acts.append(a.astype(data.actions.dtype))
    n = copies + 1

    def tiled(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x] * n)

    return EpisodeData(data.spec, np.concatenate(obs), np.concatenate(acts),
                       tiled(data.rewards), tiled(data.terminals), tiled(data.lengths),
                       data.instructions * n, data.goals * n, source=data.source,
                       attrs=dict(data.attrs),
                       successes=None if data.successes is None else tiled(data.successes))


def encode_actions(spec: EnvSpecInfo, actions: np.ndarray, rows: int) -> np.ndarray:
    """(rows, action_dim) float32 model inputs: one-hot for discrete actions, raw for
    continuous ones."""
    a = np.asarray(actions)
    if spec.action_type == "discrete":
        a = a.reshape(-1)
        if len(a) != rows:
            raise ValueError(f"{len(a)} actions for {rows} states")
        if a.size and (a.min() < 0 or a.max() >= spec.action_dim):
            raise ValueError(f"discrete actions must lie in [0, {spec.action_dim})")
        enc = np.zeros((len(a), spec.action_dim), dtype=np.float32)
        enc[np.arange(len(a)), a.astype(np.int64)] = 1.0
        return enc
    if rows == 0:
        return np.zeros((0, spec.action_dim), np.float32)
    enc = a.astype(np.float32).reshape(rows, -1)
    if enc.shape[1] != spec.action_dim:
        raise ValueError(f"continuous actions must have {spec.action_dim} values, "
                         f"got {enc.shape[1]}")
    return enc


@dataclass(frozen=True)
class _Windows:
    """Real windows for the open-loop loss, standardised: a start state, the actions taken
    from it and the real states they led to, with a mask past each episode's end."""

    s0: torch.Tensor  # (M, obs)
    actions: torch.Tensor  # (M, H, action_dim) encoded
    next_states: torch.Tensor  # (M, H, obs)
    mask: torch.Tensor  # (M, H) bool

    def __len__(self) -> int:
        return len(self.s0)


class _BatchedMLP(nn.Module):
    """K independent MLPs evaluated as one: input (K, B, in), output (K, B, out)."""

    def __init__(self, members: int, sizes: Sequence[int], generator: torch.Generator | None
                 ) -> None:
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            w = (torch.rand(members, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(members, 1, fan_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = nn.functional.silu(x)
        return x


@dataclass
class Normaliser:
    """Input and output scaling, fitted on the training transitions."""

    state_mean: np.ndarray
    state_std: np.ndarray
    delta_mean: np.ndarray
    delta_std: np.ndarray

    @classmethod
    def fit(cls, states: np.ndarray, next_states: np.ndarray) -> Normaliser:
        delta = (next_states - states).astype(np.float64)
        s = states.astype(np.float64)

        def std(x: np.ndarray) -> np.ndarray:
            v = x.std(axis=0)
            return np.where(v < _MIN_STD, 1.0, v).astype(np.float32)

        return cls(s.mean(0).astype(np.float32), std(s), delta.mean(0).astype(np.float32),
                   std(delta))

    def to_json(self) -> dict[str, list[float]]:
        # float32 -> Python float is exact, so a saved ensemble predicts bit for bit the same
        return {f.name: [float(v) for v in getattr(self, f.name)] for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any], obs_dim: int, where: str) -> Normaliser:
        values = {}
        for f in fields(cls):
            v = d.get(f.name)
            if not isinstance(v, list) or len(v) != obs_dim:
                raise DynamicsFileError(f"{where}: field 'normalisation.{f.name}' must be a list "
                                        f"of obs_dim={obs_dim} numbers")
            values[f.name] = np.asarray(v, dtype=np.float32)
        return cls(**values)


@dataclass
class DynamicsEnsemble:
    """K MLPs predicting s' - s from (s, a), trained on bootstraps of the real transitions."""

    spec: EnvSpecInfo
    config: DynamicsConfig
    normaliser: Normaliser
    net: _BatchedMLP
    bounds: tuple[np.ndarray, np.ndarray] | None = None  # states are clamped to this box
    training: dict[str, Any] = field(default_factory=dict)  # summary of the fit
    threads: int | None = 1  # torch threads for prediction (speed only, not saved)
    # applied to every predicted next state (prev, action, next) -> next, e.g. the env's
    # `project_state` (CLEVR: balls do not overlap); not saved: `with_projection` sets it
    project: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, data: EpisodeData, cfg: DynamicsConfig | None = None,
            bounds: tuple[Sequence[float], Sequence[float]] | None = None,
            progress: bool = True, threads: int | None = 1,
            symmetry: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
            ) -> DynamicsEnsemble:
        """Fit on the real episodes of `data`; `cfg.val_fraction` of the episodes are held out
        for early stopping: `split_episodes(len(data), val_fraction, seed)`, the split `kalm
        ground` makes, so with the same seed and fraction both hold out the same episodes.
        `bounds` (low, high) is the box predicted states are clamped to (kalm's commands pass
        the env definition's `clamp_box()`: its state box joined with its reset box, so no
        start state is moved); `threads` (speed only) the torch threads to train with, None
        for torch's setting; `symmetry` the env definition's `dynamics_symmetry`, which
        `cfg.symmetric_copies` needs."""
        cfg = cfg or DynamicsConfig()
        if cfg.members < 1 or cfg.layers < 0 or cfg.hidden < 1 or cfg.batch_size < 1:
            raise ValueError(f"invalid DynamicsConfig {cfg}")
        if cfg.rollout_steps < 1:
            raise ValueError(f"dynamics rollout_steps must be >= 1, got {cfg.rollout_steps}")
        if cfg.symmetric_copies < 0:
            raise ValueError(f"dynamics symmetric_copies must be >= 0, got "
                             f"{cfg.symmetric_copies}")
        if cfg.symmetric_copies and symmetry is None:
            raise ValueError(f"dynamics symmetric_copies={cfg.symmetric_copies} needs the env's "
                             f"`dynamics_symmetry` hook; env {data.spec.env!r} has none (set "
                             f"symmetric_copies: 0)")
        if data.source != "real":
            raise ValueError(f"the dynamics ensemble learns from real episodes only, got "
                             f"{data.source!r} data")
        train_eps, val_eps = split_episodes(len(data), cfg.val_fraction, cfg.seed)
        train = data.subset(train_eps)
        if cfg.symmetric_copies:
            assert symmetry is not None
            train = with_symmetric_copies(train, cfg.symmetric_copies, symmetry,
                                          np.random.default_rng(cfg.seed))
        tr = transitions(train)
        if len(tr) == 0:
            raise ValueError("no training transitions")
        va = transitions(data, val_eps)
        spec = data.spec
        gen = torch.Generator().manual_seed(cfg.seed)
        normaliser = Normaliser.fit(tr.states, tr.next_states)
        box = None if bounds is None else (np.asarray(bounds[0], np.float32),
                                           np.asarray(bounds[1], np.float32))
        in_dim = spec.obs_dim + spec.action_dim
        sizes = [in_dim] + [cfg.hidden] * cfg.layers + [spec.obs_dim]
        ens = cls(spec, cfg, normaliser, _BatchedMLP(cfg.members, sizes, gen), box,
                  threads=threads)
        with torch_threads(threads):
            if cfg.rollout_steps == 1:
                x_tr = ens._inputs(tr.states, tr.actions)
                y_tr = ens._targets(tr.states, tr.next_states)
                x_va = ens._inputs(va.states, va.actions)
                y_va = ens._targets(va.states, va.next_states)
                ens.training = ens._train(x_tr, y_tr, x_va, y_va, gen, progress)
            else:
                ens.training = ens._train(ens._windows(train, tr), None,
                                          ens._windows(data, va), None, gen, progress)
        ens.training.update(train_episodes=len(train_eps), val_episodes=len(val_eps),
                            symmetric_copies=cfg.symmetric_copies,
                            train_transitions=len(tr), val_transitions=len(va))
        if len(va):  # what "in distribution" means, for choosing a truncation threshold
            u = ens.disagreement(va.states, va.actions)
            ens.training["val_uncertainty_quantiles"] = {
                str(q): float(np.quantile(u, q)) for q in UNCERTAINTY_QUANTILES}
        return ens

    def _train(self, x: torch.Tensor | _Windows, y: torch.Tensor | None,
               x_val: torch.Tensor | _Windows, y_val: torch.Tensor | None,
               gen: torch.Generator, progress: bool) -> dict[str, Any]:
        """One-step pairs (x, y), or windows of real steps (y None) for the open-loop loss."""
        cfg, k, n = self.config, self.config.members, len(x)
        boot = torch.randint(n, (k, n), generator=gen)  # each member's own resample
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        has_val = len(x_val) > 0
        best = torch.full((k,), math.inf)
        best_epoch = torch.zeros(k, dtype=torch.long)
        best_params = [p.detach().clone() for p in self.net.parameters()]
        history: list[dict[str, Any]] = []
        stale = 0
        bar = tqdm(range(cfg.epochs), desc="dynamics", unit="epoch", disable=not progress)
        self.net.train()
        for epoch in bar:
            order = torch.argsort(torch.rand(k, n, generator=gen), dim=1)
            total, steps = 0.0, 0
            for i in range(0, n, cfg.batch_size):
                rows = boot.gather(1, order[:, i : i + cfg.batch_size])  # (K, b)
                if isinstance(x, _Windows):
                    loss = self._open_loop_loss(x, rows).sum()
                else:
                    loss = ((self.net(x[rows]) - y[rows]) ** 2).mean(dim=(1, 2)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) / k
                steps += 1
            record: dict[str, Any] = {"epoch": epoch + 1, "train_mse": total / max(steps, 1)}
            if has_val:
                val = self._val_mse(x_val, y_val)
                record["val_mse"] = [float(v) for v in val]
                improved = val < best - 1e-7
                stale = 0 if bool(improved.any()) else stale + 1
                with torch.no_grad():
                    for p, b in zip(self.net.parameters(), best_params, strict=True):
                        b[improved] = p.detach()[improved]
                best = torch.where(improved, val, best)
                best_epoch = torch.where(improved, torch.tensor(epoch + 1), best_epoch)
                bar.set_postfix(train=f"{record['train_mse']:.4f}", val=f"{float(val.mean()):.4f}")
            else:
                bar.set_postfix(train=f"{record['train_mse']:.4f}")
            history.append(record)
            if has_val and cfg.patience is not None and stale >= cfg.patience:
                break
        bar.close()
        if has_val:  # each member as it was at its best validation epoch
            with torch.no_grad():
                for p, b in zip(self.net.parameters(), best_params, strict=True):
                    p.copy_(b)
        self.net.eval()
        return {"epochs": len(history), "history": history,
                "best_val_mse": [float(v) for v in best] if has_val else None,
                "best_epoch": [int(v) for v in best_epoch] if has_val else None}

    @torch.no_grad()
    def _val_mse(self, x: torch.Tensor | _Windows, y: torch.Tensor | None, chunk: int = 8192
                 ) -> torch.Tensor:
        k = self.config.members
        if isinstance(x, _Windows):  # every member on every held-out window
            sums, weight = torch.zeros(k), 0.0
            for i in range(0, len(x), chunk):
                rows = torch.arange(i, min(i + chunk, len(x))).expand(k, -1)
                part = x.mask[i : i + chunk].sum()
                sums += self._open_loop_loss(x, rows) * float(part)
                weight += float(part)
            return sums / max(weight, 1.0)
        sums = torch.zeros(k)
        for i in range(0, len(x), chunk):
            xb = x[i : i + chunk].unsqueeze(0).expand(k, -1, -1)
            sums += ((self.net(xb) - y[i : i + chunk]) ** 2).mean(-1).sum(-1)
        return sums / max(len(x), 1)

    def _windows(self, data: EpisodeData, tr: Transitions) -> _Windows:
        """Every real transition of TR (from `transitions`) as the start of a window of
        `rollout_steps` steps (shorter where the episode ends: those steps are masked),
        standardised."""
        h = self.config.rollout_steps
        t_max = data.actions.shape[1]
        eps, starts = tr.episodes, tr.steps
        offs = np.arange(h)[None, :]
        mask = (starts[:, None] + offs) < data.lengths[eps, None]  # (M, H)
        at = np.minimum(starts[:, None] + offs, t_max - 1)  # clipped: masked anyway
        n = self.normaliser
        s0 = (tr.states - n.state_mean) / n.state_std
        nxt = data.observations[eps[:, None], at + 1]
        nxt = (nxt.astype(np.float32) - n.state_mean) / n.state_std
        acts = data.actions[eps[:, None], at]
        enc = encode_actions(self.spec, acts.reshape(len(eps) * h, *acts.shape[2:]),
                             len(eps) * h)
        return _Windows(torch.from_numpy(s0.astype(np.float32)),
                        torch.from_numpy(enc.reshape(len(eps), h, self.spec.action_dim)),
                        torch.from_numpy(nxt.astype(np.float32)),
                        torch.from_numpy(mask))

    def _open_loop_loss(self, w: _Windows, rows: torch.Tensor) -> torch.Tensor:
        """(K,) each member's mean squared error over its own open-loop chain of the windows
        ROWS (K, b), in standardised-delta units (its first step is the one-step loss)."""
        n = self.normaliser
        s_std, d_std = torch.from_numpy(n.state_std), torch.from_numpy(n.delta_std)
        d_mean = torch.from_numpy(n.delta_mean)
        to_delta = s_std / d_std  # a standardised-state difference in delta units
        state = w.s0[rows]  # (K, b, obs) standardised
        mask = w.mask[rows].float()  # (K, b, H)
        total = torch.zeros(rows.shape[0])
        for j in range(w.actions.shape[1]):
            z = self.net(torch.cat([state, w.actions[rows, j]], dim=-1))
            state = state + (z * d_std + d_mean) / s_std
            err = (((state - w.next_states[rows, j]) * to_delta) ** 2).mean(-1)  # (K, b)
            total = total + (err * mask[..., j]).sum(-1)
        return total / mask.sum(dim=(1, 2)).clamp_min(1.0)

    # ------------------------------------------------------------------ encoding
    def _inputs(self, states: np.ndarray, actions: np.ndarray) -> torch.Tensor:
        s = np.asarray(states, dtype=np.float32)
        if s.ndim != 2 or s.shape[1] != self.spec.obs_dim:
            raise ValueError(f"states must have shape (B, {self.spec.obs_dim}), got {s.shape}")
        n = self.normaliser
        s = (s - n.state_mean) / n.state_std
        enc = encode_actions(self.spec, actions, len(s))
        return torch.from_numpy(np.concatenate([s, enc], axis=1))

    def _targets(self, states: np.ndarray, next_states: np.ndarray) -> torch.Tensor:
        n = self.normaliser
        d = (np.asarray(next_states, np.float32) - np.asarray(states, np.float32))
        return torch.from_numpy(((d - n.delta_mean) / n.delta_std).astype(np.float32))

    @torch.no_grad()
    def _members(self, states: np.ndarray, actions: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Per-member next states (K, B, obs), clamped, and standardised deltas (K, B, obs)."""
        x = self._inputs(states, actions)
        with torch_threads(self.threads):
            z = self.net(x.unsqueeze(0).expand(self.config.members, -1, -1)).numpy()
        n = self.normaliser
        nxt = np.asarray(states, np.float32)[None] + z * n.delta_std + n.delta_mean
        return self._projected(states, actions, self._clamp(nxt)), z

    def _projected(self, prev: np.ndarray, actions: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if self.project is None:
            return nxt
        return np.asarray(self.project(prev, actions, nxt), dtype=np.float32)

    def with_projection(self, project: Callable[[np.ndarray, np.ndarray, np.ndarray],
                                                np.ndarray] | None) -> DynamicsEnsemble:
        """The same ensemble with PROJECT applied to every predicted state (shares the net)."""
        return dataclasses.replace(self, project=project)

    def _clamp(self, s: np.ndarray) -> np.ndarray:
        return s if self.bounds is None else np.clip(s, self.bounds[0], self.bounds[1])

    @staticmethod
    def _spread(z: np.ndarray) -> np.ndarray:
        """Max over members of the RMS distance to the members' mean (standardised units)."""
        return np.sqrt(((z - z.mean(0, keepdims=True)) ** 2).mean(-1)).max(0)

    # ------------------------------------------------------------------ prediction
    def predict(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean next state (B, obs), per-member next states (K, B, obs))."""
        members, _ = self._members(states, actions)
        return self._clamp(members.mean(0)), members

    def uncertainty_quantile(self, q: float) -> float:
        """The q-quantile of the disagreement on the held-out real transitions of the fit (q in
        UNCERTAINTY_QUANTILES): a threshold in terms of what the real data looks like."""
        table = self.training.get("val_uncertainty_quantiles") or {}
        if str(float(q)) not in table:
            raise ValueError(f"no held-out uncertainty quantile {q} stored (have "
                             f"{', '.join(table) or 'none: fitted without validation episodes'})")
        return float(table[str(float(q))])

    def disagreement(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(B,) uncertainty of each transition: how far the most deviant member is from the
        members' mean, RMS over state dimensions, in units of the delta's standard deviation."""
        _, z = self._members(states, actions)
        return self._spread(z)

    def rollout(self, s0: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Open loop through the members' mean: s0 (obs,) with actions (T,) / (T, act) give
        states (T+1, obs) and per-step uncertainty (T,); with a leading batch dimension B on
        both, (B, T+1, obs) and (B, T). Padding steps past an episode's end are harmless."""
        s0 = np.asarray(s0, dtype=np.float32)
        acts = np.asarray(actions)
        single = s0.ndim == 1
        if single:
            s0, acts = s0[None], acts[None]
        b, t = acts.shape[:2]
        if len(s0) != b:
            raise ValueError(f"{len(s0)} start states for {b} action sequences")
        states = np.zeros((b, t + 1, self.spec.obs_dim), dtype=np.float32)
        unc = np.zeros((b, t), dtype=np.float32)
        states[:, 0] = s0
        for step in range(t):
            members, z = self._members(states[:, step], acts[:, step])
            states[:, step + 1] = self._projected(states[:, step], acts[:, step],
                                                  self._clamp(members.mean(0)))
            unc[:, step] = self._spread(z)
        return (states[0], unc[0]) if single else (states, unc)

    def member_rollouts(self, s0: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Open loop through each member on its own: s0 (B, obs) with actions (B, T[, act])
        give states (K, B, T+1, obs). The mean rollout can reach a goal that no single member's
        dynamics reaches (averaging K wrong futures); counting the members whose own future
        reaches it is a stricter, still simulator-free verdict (`relabel`'s votes)."""
        s0 = np.asarray(s0, dtype=np.float32)
        acts = np.asarray(actions)
        if s0.ndim != 2 or len(s0) != len(acts):
            raise ValueError(f"member_rollouts takes s0 (B, obs) and actions (B, T...), got "
                             f"{s0.shape} and {acts.shape}")
        k, (b, t) = self.config.members, acts.shape[:2]
        states = np.zeros((k, b, t + 1, self.spec.obs_dim), dtype=np.float32)
        states[:, :, 0] = s0[None]
        n = self.normaliser
        for step in range(t):
            x = self._inputs(states[:, :, step].reshape(k * b, -1),
                             np.concatenate([acts[:, step]] * k)).reshape(k, b, -1)
            with torch.no_grad(), torch_threads(self.threads):
                z = self.net(x).numpy()
            states[:, :, step + 1] = self._projected(
                states[:, :, step], acts[None, :, step],
                self._clamp(states[:, :, step] + z * n.delta_std + n.delta_mean))
        return states

    # ------------------------------------------------------------------ files
    def describe(self) -> dict[str, Any]:
        return {"format": FORMAT,
                "config": asdict(self.config),
                "spec": {k: getattr(self.spec, k) for k in SPEC_FIELDS},
                "normalisation": self.normaliser.to_json(),
                "bounds": None if self.bounds is None else
                {"low": [float(v) for v in self.bounds[0]],
                 "high": [float(v) for v in self.bounds[1]]},
                "training": self.training}

    def save(self, folder: str | Path) -> Path:
        """Weights (safetensors) then the JSON of config and normalisation, each atomically;
        the JSON is written last, so a folder without it is an interrupted save."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).unlink(missing_ok=True)
        tmp = folder / f".{WEIGHTS}.tmp{os.getpid()}"
        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()},
                  str(tmp), metadata={"format": FORMAT})
        tmp.replace(folder / WEIGHTS)
        write_json(self.describe(), folder / META)
        return folder

    @classmethod
    def load(cls, folder: str | Path, spec: EnvSpecInfo | None = None,
             threads: int | None = 1) -> DynamicsEnsemble:
        """A saved ensemble; with `spec`, refuse one fitted for another env or action space."""
        folder = Path(folder)
        meta_path, weights_path = folder / META, folder / WEIGHTS
        where = str(meta_path)
        if not meta_path.is_file():
            raise DynamicsFileError(f"{meta_path}: no such file; not a saved dynamics ensemble "
                                    "(or an interrupted save)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DynamicsFileError(f"{where}: not JSON ({exc})") from None
        if meta.get("format") != FORMAT:
            raise DynamicsFileError(f"{where}: field 'format' is {meta.get('format')!r}, "
                                    f"expected {FORMAT!r}")
        for key in ("config", "spec", "normalisation"):
            if not isinstance(meta.get(key), dict):
                raise DynamicsFileError(f"{where}: missing field '{key}'")
        try:
            saved = EnvSpecInfo(**{k: meta["spec"][k] for k in SPEC_FIELDS})
        except KeyError as exc:
            raise DynamicsFileError(f"{where}: missing field 'spec.{exc.args[0]}'") from None
        if spec is not None:
            check_spec(saved, spec, where)
        known = {f.name for f in fields(DynamicsConfig)}
        unknown = sorted(set(meta["config"]) - known)
        if unknown:
            raise DynamicsFileError(f"{where}: unknown field 'config.{unknown[0]}'")
        cfg = DynamicsConfig(**meta["config"])
        normaliser = Normaliser.from_json(meta["normalisation"], saved.obs_dim, where)
        box = None
        if meta.get("bounds") is not None:
            box = (np.asarray(meta["bounds"]["low"], np.float32),
                   np.asarray(meta["bounds"]["high"], np.float32))
        sizes = [saved.obs_dim + saved.action_dim] + [cfg.hidden] * cfg.layers + [saved.obs_dim]
        net = _BatchedMLP(cfg.members, sizes, None)
        if not weights_path.is_file():
            raise DynamicsFileError(f"{weights_path}: no such file (the weights of {where})")
        state = load_file(str(weights_path))
        own = net.state_dict()
        if set(state) != set(own):
            raise DynamicsFileError(f"{weights_path}: tensors {sorted(state)} do not match the "
                                    f"architecture in {where}")
        for name, value in state.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise DynamicsFileError(f"{weights_path}: '{name}' has shape "
                                        f"{tuple(value.shape)}, {where} implies "
                                        f"{tuple(own[name].shape)}")
        net.load_state_dict(state)
        net.eval()
        return cls(saved, cfg, normaliser, net, box, dict(meta.get("training") or {}), threads)


def check_spec(saved: EnvSpecInfo, expected: EnvSpecInfo, where: str,
               keys: Sequence[str] = SPEC_FIELDS) -> None:
    """Refuse an ensemble made for other states or actions, naming the first differing field."""
    for k in keys:
        if getattr(saved, k) != getattr(expected, k):
            raise DynamicsFileError(
                f"{where}: field 'spec.{k}' is {getattr(saved, k)!r}, but the data or env here "
                f"has {k}={getattr(expected, k)!r}; this ensemble was fitted for "
                f"{({f: getattr(saved, f) for f in SPEC_FIELDS})}")
