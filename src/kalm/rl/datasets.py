"""Episode files -> goal-conditioned offline-RL data for d3rlpy, with 1:1 real/imagined mixing.

Policy input = state ++ embedding of the episode's instruction. A success step is a terminal;
an episode that ends at its step limit is a timeout: its last transition bootstraps from the
final state (kept as an extra row), it is never marked terminal. Intervals are 1, so gamma = 0.99
applies (defect P6 made the published code undiscounted).

d3rlpy's buffers sample one transition at a time in Python; `TransitionSampler` keeps every
transition in flat arrays and samples a whole batch with numpy indexing, drawing exactly
round(ratio x batch) transitions from the imagined data and the rest from the real data
(the paper's 1:1 mix; defect P7 sampled the concatenation uniformly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kalm.data.episodes import EpisodeData
from kalm.rl.text_encoder import TextEncoder


@dataclass
class Transitions:
    """Flat transition arrays (d3rlpy's BasicTransitionPicker semantics)."""

    observations: np.ndarray  # (N, D) float32
    actions: np.ndarray  # (N, 1) float32 for discrete, (N, A) continuous
    rewards: np.ndarray  # (N, 1)
    next_observations: np.ndarray  # (N, D); zeros after a terminal
    next_actions: np.ndarray  # (N, ...) zeros where there is none
    terminals: np.ndarray  # (N, 1)

    def __len__(self) -> int:
        return len(self.observations)

    @classmethod
    def concatenate(cls, parts: Sequence[Transitions]) -> Transitions:
        return cls(*[np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("observations", "actions", "rewards", "next_observations",
                      "next_actions", "terminals")])


def goal_observations(data: EpisodeData, encoder: TextEncoder | None) -> list[np.ndarray]:
    """Per episode: (len+1, obs_dim + text_dim) float32 observations (the states alone when
    `encoder` is None)."""
    emb = None if encoder is None else encoder.encode(list(data.instructions))
    out = []
    for i in range(len(data)):
        n = int(data.lengths[i])
        obs = data.observations[i, : n + 1]
        if emb is not None:
            obs = np.concatenate([obs, np.repeat(emb[i][None], n + 1, axis=0)], axis=1)
        out.append(obs.astype(np.float32))
    return out


def _actions_2d(actions: np.ndarray, discrete: bool) -> np.ndarray:
    a = np.asarray(actions)
    return a.reshape(-1, 1).astype(np.float32) if discrete else a.astype(np.float32)


def to_transitions(data: EpisodeData, encoder: TextEncoder) -> Transitions:
    discrete = data.spec.action_type == "discrete"
    parts = []
    for i, obs in enumerate(goal_observations(data, encoder)):
        n = int(data.lengths[i])
        acts = _actions_2d(data.actions[i, :n], discrete)
        term = data.terminals[i, :n].astype(np.float32).reshape(-1, 1)
        nxt = obs[1 : n + 1].copy()
        nxt_act = np.zeros_like(acts)
        nxt_act[:-1] = acts[1:]
        if term[-1, 0]:
            nxt[-1] = 0.0  # d3rlpy's convention: no next observation after a terminal
        parts.append(Transitions(obs[:n], acts, data.rewards[i, :n].reshape(-1, 1)
                                 .astype(np.float32), nxt, nxt_act, term))
    return Transitions.concatenate(parts)


def to_d3rlpy(data: EpisodeData, encoder: TextEncoder | None):
    """An MDPDataset equivalent to `to_transitions` (timeouts keep their final state: one more
    row, with a zero action and reward, that no transition starts from). `encoder` None: the
    observations are the states alone."""
    import d3rlpy

    discrete = data.spec.action_type == "discrete"
    obs_rows, act_rows, rew_rows, term_rows, tout_rows = [], [], [], [], []
    for i, obs in enumerate(goal_observations(data, encoder)):
        n = int(data.lengths[i])
        acts = _actions_2d(data.actions[i, :n], discrete)
        rews = data.rewards[i, :n].astype(np.float32)
        term = data.terminals[i, :n].astype(np.float32)
        if term[-1]:
            obs_rows.append(obs[:n])
            tout = np.zeros(n, np.float32)
        else:  # timeout: keep s_n as a final row so the last transition has its next state
            obs_rows.append(obs[: n + 1])
            acts = np.concatenate([acts, np.zeros_like(acts[:1])])
            rews = np.concatenate([rews, np.zeros(1, np.float32)])
            term = np.concatenate([term, np.zeros(1, np.float32)])
            tout = np.zeros(n + 1, np.float32)
            tout[-1] = 1.0
        act_rows.append(acts)
        rew_rows.append(rews)
        term_rows.append(term)
        tout_rows.append(tout)
    actions = np.concatenate(act_rows)
    if discrete:
        actions = actions.astype(np.int64)
        kwargs = {"action_space": d3rlpy.ActionSpace.DISCRETE,
                  "action_size": data.spec.action_dim}
    else:  # named, not detected: d3rlpy calls integer-valued actions (saturated at +-1) discrete
        kwargs = {"action_space": d3rlpy.ActionSpace.CONTINUOUS,
                  "action_size": data.spec.action_dim}
    return d3rlpy.dataset.MDPDataset(
        observations=np.concatenate(obs_rows), actions=actions,
        rewards=np.concatenate(rew_rows), terminals=np.concatenate(term_rows),
        timeouts=np.concatenate(tout_rows), **kwargs)


class TransitionSampler:
    """Vectorised batch sampling with an exact real/imagined split per batch."""

    def __init__(self, real: Transitions, imagined: Transitions | None = None,
                 imagined_ratio: float = 0.5, seed: int = 0) -> None:
        if imagined is not None and len(imagined) and not 0.0 < imagined_ratio < 1.0:
            raise ValueError(f"imagined_ratio must be in (0, 1), got {imagined_ratio}")
        if len(real) == 0:
            raise ValueError("no real transitions")
        self.real = real
        self.imagined = imagined if imagined is not None and len(imagined) else None
        self.ratio = imagined_ratio if self.imagined is not None else 0.0
        self.rng = np.random.default_rng(seed)

    def split(self, batch_size: int) -> tuple[int, int]:
        k = round(self.ratio * batch_size)
        return batch_size - k, k

    def sample(self, batch_size: int):
        from d3rlpy.dataset import TransitionMiniBatch

        n_real, n_imag = self.split(batch_size)
        parts = [(self.real, self.rng.integers(0, len(self.real), n_real))]
        if n_imag:
            parts.append((self.imagined, self.rng.integers(0, len(self.imagined), n_imag)))

        def take(field: str) -> np.ndarray:
            return np.concatenate([getattr(t, field)[idx] for t, idx in parts])

        return TransitionMiniBatch(
            observations=take("observations"), actions=take("actions"),
            rewards=take("rewards"), next_observations=take("next_observations"),
            next_actions=take("next_actions"), terminals=take("terminals"),
            intervals=np.ones((batch_size, 1), dtype=np.float32), transitions=[])
