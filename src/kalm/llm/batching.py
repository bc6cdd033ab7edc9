"""From episodes to training batches: an explicit objective mix and padded tensors.

Every batch holds a fixed number of samples of each objective (from the configured weights), so
the mix is exactly what the config says; no sample is silently overwritten (defect P13 of the
published collator). Episode order is a seeded permutation per epoch, and every random choice of
a sample (paraphrase, dynamics step) is seeded by (seed, step, slot), so a resumed run sees the
same data as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kalm.data.episodes import EpisodeData
from kalm.llm.prompts import (
    CONSEQUENCE,
    DYNAMICS,
    EXPLANATION,
    IGNORE,
    OBJECTIVES,
    ROLLOUT,
    PromptBuilder,
)
from kalm.llm.prompts import Sequence as Seq


def objective_counts(weights: Mapping[str, float], batch_size: int) -> dict[str, int]:
    """Samples per objective in a batch: largest remainder of weights x batch size."""
    unknown = set(weights) - set(OBJECTIVES)
    if unknown:
        raise ValueError(f"unknown objective(s) {sorted(unknown)}; expected {OBJECTIVES}")
    w = {k: float(v) for k, v in weights.items() if float(v) > 0}
    if not w:
        raise ValueError("at least one objective needs a positive weight")
    total = sum(w.values())
    exact = {k: batch_size * v / total for k, v in w.items()}
    counts = {k: int(np.floor(x)) for k, x in exact.items()}
    rest = batch_size - sum(counts.values())
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], OBJECTIVES.index(k)))[:rest]:
        counts[k] += 1
    return {k: counts.get(k, 0) for k in OBJECTIVES}


def padded_positions(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> int:
    """Positions computed when each group of rows runs as one pass padded to its longest."""
    return sum(len(rows) * max(lengths[r] for r in rows) for rows in groups)


def split_by_length(lengths: Sequence[int], max_groups: int, overhead: int = 0
                  ) -> list[list[int]]:
    """Rows of a right-padded batch split into at most `max_groups` groups of similar length,
    each to run through the backbone padded only to its own longest row.

    A grounding batch mixes objectives whose prompts differ ~10x in length (a 100-step
    Meta-World rollout vs one (s, a) -> s' step), so one padded tensor spends half its
    positions on padding. The split minimises the padded positions computed, sum(rows x
    longest), plus `overhead` positions per extra pass (a pass's fixed cost): sorted lengths,
    an exact dynamic programme over contiguous splits."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    if n == 0:
        return []
    srt = [int(lengths[i]) for i in order]
    inf = float("inf")
    # best[g][j]: least cost of the first j sorted rows in g groups; cut[g][j]: last group start
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(j):
                c = best[g - 1][i] + (j - i) * srt[j - 1] + (overhead if g > 1 else 0)
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, max_groups + 1), key=lambda k: (best[k][n], k))
    groups, j = [], n
    while g > 0:
        i = cut[g][j]
        groups.append(order[i:j])
        j, g = i, g - 1
    return groups[::-1]


@dataclass(frozen=True)
class SampleSpec:
    episode: int
    objective: str
    seed: int


class GroundingSamples(torch.utils.data.Dataset):
    """Map-style dataset of the whole run's samples, in training order (batch b = items
    b*B .. b*B+B-1), so accelerate can shard and skip batches on resume."""

    def __init__(self, episodes: int, batch_size: int, steps: int,
                 weights: Mapping[str, float], seed: int) -> None:
        if episodes < 1:
            raise ValueError("no episodes to train on")
        self.batch_size = batch_size
        self.steps = steps
        self.counts = objective_counts(weights, batch_size)
        self.n_episodes = episodes
        self.seed = seed
        self._layout = [o for o in OBJECTIVES for _ in range(self.counts[o])]
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(
                self.n_episodes)
        return self._perms[epoch]

    def __getitem__(self, i: int) -> SampleSpec:
        if not 0 <= i < len(self):
            raise IndexError(i)
        epoch, pos = divmod(i, self.n_episodes)
        step, slot = divmod(i, self.batch_size)
        episode = int(self._perm(epoch)[pos])
        seed = int(np.random.SeedSequence([self.seed, step, slot]).generate_state(1)[0])
        return SampleSpec(episode, self._layout[slot], seed)


class Paraphrases:
    """Instruction paraphrases per goal (from the train suite), plus each episode's own text."""

    def __init__(self, table: Mapping[str, Sequence[str]] | None = None) -> None:
        self.table = {k: list(v) for k, v in (table or {}).items()}

    @classmethod
    def from_suite(cls, suite) -> Paraphrases:
        table: dict[str, list[str]] = {}
        for e in suite.entries:
            table.setdefault(e.goal_key, []).append(e.instruction)
        return cls(table)

    def choices(self, goal: Mapping, own: str) -> list[str]:
        found = self.table.get(json.dumps(goal, sort_keys=True))
        return found if found else [own]


def build_sample(data: EpisodeData, spec: SampleSpec, builder: PromptBuilder,
                 paraphrases: Paraphrases) -> Seq:
    ep = data.episode(spec.episode)
    rng = np.random.default_rng(spec.seed)
    texts = paraphrases.choices(ep.goal, ep.instruction)
    instruction = texts[int(rng.integers(len(texts)))]
    if spec.objective == ROLLOUT:
        return builder.rollout(instruction, ep.observations, ep.actions)
    if spec.objective == DYNAMICS:
        t = int(rng.integers(ep.length))
        return builder.dynamics(ep.observations[t], ep.actions[t], ep.observations[t + 1])
    if spec.objective == CONSEQUENCE:
        return builder.consequence(instruction, ep.observations[0], ep.observations[ep.length])
    if spec.objective == EXPLANATION:
        return builder.explanation(instruction, ep.observations, ep.actions)
    raise ValueError(f"unknown objective {spec.objective!r}")


def collate(seqs: Sequence[Seq], pad_id: int, obs_dim: int, action_type: str,
            action_dim: int) -> dict[str, torch.Tensor]:
    """Right-pad sequences into the tensors RolloutModel and the losses read."""
    b = len(seqs)
    length = max(len(s) for s in seqs)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    attn = torch.zeros((b, length), dtype=torch.long)
    s_in_mask = torch.zeros((b, length), dtype=torch.bool)
    s_in = torch.zeros((b, length, obs_dim))
    a_in_mask = torch.zeros((b, length), dtype=torch.bool)
    s_tgt_mask = torch.zeros((b, length), dtype=torch.bool)
    s_tgt = torch.zeros((b, length, obs_dim))
    s_base = torch.zeros((b, length, obs_dim))
    a_tgt_mask = torch.zeros((b, length), dtype=torch.bool)
    if action_type == "discrete":
        a_in = torch.zeros((b, length), dtype=torch.long)
        a_tgt = torch.zeros((b, length), dtype=torch.long)
    else:
        a_in = torch.zeros((b, length, action_dim))
        a_tgt = torch.zeros((b, length, action_dim))
    labels = torch.full((b, length), IGNORE, dtype=torch.long)
    objective = torch.zeros(b, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        ids[i, :n] = torch.tensor(s.ids)
        attn[i, :n] = 1
        objective[i] = OBJECTIVES.index(s.objective)
        for p, v in s.state_in.items():
            s_in_mask[i, p] = True
            s_in[i, p] = torch.from_numpy(np.asarray(v, dtype=np.float32))
        for p, v in s.action_in.items():
            a_in_mask[i, p] = True
            a_in[i, p] = torch.as_tensor(v)
        for p, (v, base) in s.state_tgt.items():
            s_tgt_mask[i, p] = True
            s_tgt[i, p] = torch.from_numpy(np.asarray(v, dtype=np.float32))
            s_base[i, p] = torch.from_numpy(np.asarray(base, dtype=np.float32))
        for p, v in s.action_tgt.items():
            a_tgt_mask[i, p] = True
            a_tgt[i, p] = torch.as_tensor(v)
        for p, tok in s.labels.items():
            labels[i, p] = tok
    return {"input_ids": ids, "attention_mask": attn, "state_in_mask": s_in_mask,
            "state_in": s_in, "action_in_mask": a_in_mask, "action_in": a_in,
            "state_tgt_mask": s_tgt_mask, "state_tgt": s_tgt, "state_base": s_base,
            "action_tgt_mask": a_tgt_mask, "action_tgt": a_tgt, "labels": labels,
            "objective": objective}


class Collator:
    """Picklable collate_fn: sample specs -> tensors."""

    def __init__(self, data: EpisodeData, builder: PromptBuilder, paraphrases: Paraphrases,
                 action_type: str, action_dim: int) -> None:
        self.data = data
        self.builder = builder
        self.paraphrases = paraphrases
        self.action_type = action_type
        self.action_dim = action_dim

    def __call__(self, specs: Sequence[SampleSpec]) -> dict[str, torch.Tensor]:
        seqs = [build_sample(self.data, s, self.builder, self.paraphrases) for s in specs]
        return collate(seqs, self.builder.pad_id, self.data.spec.obs_dim, self.action_type,
                       self.action_dim)
