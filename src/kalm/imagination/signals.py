"""Which simulator-free signal tells a right imagined rollout from a wrong one?

KALM may not ask the simulator whether an imagined rollout reaches its goal, so something else
has to decide which rollouts a learner sees. This module computes, per rollout, every signal
available without the simulator and measures each against the replay diagnostic that `kalm
imagine` stores (`replay_success`): precision, recall, AUROC and the share of rollouts kept.

Signals, each from the rollout's own actions and states:

- the LLM's own verdict on its predicted states (the paper's label);
- the dynamics ensemble: success on the members' mean rollout, the number of members whose own
  rollout reaches the goal (votes), and the mean disagreement;
- the grounded model read back on its rollout: the mean log-probability of the rollout's actions
  (teacher forced; discrete actions or a continuous bin head), the error of its dynamics
  objective re-predicting each imagined transition (a model that contradicts itself is
  unsure), and its explanation of the rollout naming the goal (cycle consistency; only where
  the env can judge explanation texts);
- physical plausibility: no transition flagged by the env's realism checks.

Scores get a verdict from real data, never from the simulator's replay of imagined actions: a
rollout passes when its score is at least as good as that of 90% of held-out real episodes
(`REAL_QUANTILE`), so the threshold means "as plausible as real data".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kalm.data.episodes import Episode
from kalm.envs.base import EnvDefinition
from kalm.imagination.relabel import Dynamics, JudgeQuality, judge_quality, relabel
from kalm.llm.batching import collate
from kalm.llm.device import model_device, to_device
from kalm.llm.model import RolloutModel
from kalm.llm.prompts import PromptBuilder

REAL_QUANTILE = 0.1  # a score passes when it beats the worst 10% of held-out real episodes
BATCH = 16


@torch.no_grad()
def action_logprob(model: RolloutModel, builder: PromptBuilder,
                   episodes: Sequence[Episode]) -> np.ndarray:
    """Mean log-probability of each episode's actions under the model, teacher forced on the
    episode's own states and instruction (a bin head: of each action's nearest bins; nan for a
    regression head, which has no likelihood)."""
    spec = model.spec
    out = np.full(len(episodes), np.nan)
    if spec.action_type != "discrete" and not model.bins:
        return out
    device = model_device(model)
    for lo in tqdm(range(0, len(episodes), BATCH), desc="action log-probability",
                   unit="batch", leave=False):
        chunk = episodes[lo : lo + BATCH]
        seqs = [builder.rollout(e.instruction, e.observations, e.actions) for e in chunk]
        b = to_device(collate(seqs, builder.pad_id, spec.obs_dim, spec.action_type,
                              spec.action_dim), device)
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        rows, pos = b["action_tgt_mask"].nonzero(as_tuple=True)
        logp = model.action_log_prob(h[rows, pos], b["action_tgt"][rows, pos])
        assert logp is not None
        picked = logp.float().cpu().numpy()
        rows = rows.cpu().numpy()
        for r in range(len(chunk)):
            out[lo + r] = float(picked[rows == r].mean()) if (rows == r).any() else np.nan
    return out


@torch.no_grad()
def dynamics_error(model: RolloutModel, builder: PromptBuilder,
                   episodes: Sequence[Episode]) -> np.ndarray:
    """Mean normalised squared error of the model's dynamics objective, (s_t, a_t) -> s_t+1,
    against each episode's own next states."""
    spec = model.spec
    device = model_device(model)
    owner = [i for i, e in enumerate(episodes) for _ in range(e.length)]
    seqs = [builder.dynamics(e.observations[t], e.actions[t], e.observations[t + 1])
            for e in episodes for t in range(e.length)]
    errors = np.zeros(len(seqs))
    for lo in tqdm(range(0, len(seqs), 4 * BATCH), desc="LLM dynamics", unit="batch",
                   leave=False):
        chunk = seqs[lo : lo + 4 * BATCH]
        b = to_device(collate(chunk, builder.pad_id, spec.obs_dim, spec.action_type,
                              spec.action_dim), device)
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        idx = b["state_tgt_mask"].nonzero(as_tuple=True)  # one target per sequence, row order
        z = model.predict_state(h[idx], b["state_base"][idx])
        err = ((z - model.normalize(b["state_tgt"][idx])) ** 2).mean(-1)
        errors[lo : lo + len(chunk)] = err.cpu().numpy()
    sums = np.bincount(owner, weights=errors, minlength=len(episodes))
    counts = np.bincount(owner, minlength=len(episodes))
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def explanation_consistent(model: RolloutModel, builder: PromptBuilder,
                           definition: EnvDefinition, episodes: Sequence[Episode]
                           ) -> np.ndarray | None:
    """Whether the model's greedy explanation of each rollout names its goal (None when the
    env cannot judge explanation texts)."""
    from kalm.llm.metrics import greedy_text

    judge = definition.explanation_correct
    if judge is None:
        return None
    out = np.zeros(len(episodes), dtype=bool)
    for lo in tqdm(range(0, len(episodes), BATCH), desc="explanations", unit="batch",
                   leave=False):
        chunk = episodes[lo : lo + BATCH]
        prompts = [builder.explanation_prompt(e.observations, e.actions) for e in chunk]
        for i, text in enumerate(greedy_text(model, builder, prompts)):
            out[lo + i] = bool(judge(text, chunk[i].goal))
    return out


def realistic(definition: EnvDefinition, episodes: Sequence[Episode]) -> np.ndarray | None:
    """No transition flagged by the env's realism checks (None when it has none)."""
    checks = definition.realism_checks
    if checks is None:
        return None
    return np.array([not any(int(v) for v in checks(e.observations, e.actions).values())
                     for e in episodes], dtype=bool)


@dataclass(frozen=True)
class Signal:
    """One row of the signal table: a verdict (kept or not) and the score it ranks by."""

    name: str
    kept: np.ndarray  # bool per rollout
    score: np.ndarray | None = None  # higher = more likely right; None: the verdict ranks
    rule: str = ""


def real_threshold(real_scores: np.ndarray) -> float:
    """The score that `1 - REAL_QUANTILE` of held-out real episodes reach."""
    finite = real_scores[np.isfinite(real_scores)]
    if not len(finite):
        raise ValueError("no finite score on the real episodes to set a threshold from")
    return float(np.quantile(finite, REAL_QUANTILE))


def model_thresholds(model: RolloutModel, builder: PromptBuilder, real: list[Episode]
                     ) -> dict[str, float]:
    """The pass marks of the model's scores, from held-out REAL episodes (computed once for
    every level): a rollout passes when it scores like all but the worst 10% of them."""
    if not real:
        raise ValueError("the model's signals need held-out real episodes for their thresholds")
    out = {"dynamics_error": -real_threshold(-dynamics_error(model, builder, real))}
    lp = action_logprob(model, builder, real)
    if np.isfinite(lp).any():
        out["action_logprob"] = real_threshold(lp)
    return out


def compute_signals(episodes: list[Episode], definition: EnvDefinition, dynamics: Dynamics,
                    model: RolloutModel | None = None, builder: PromptBuilder | None = None,
                    thresholds: dict[str, float] | None = None) -> list[Signal]:
    """Every signal above for the imagined EPISODES (with `self_success` in their extras); the
    model's scores (when MODEL is given) pass at THRESHOLDS (`model_thresholds`)."""
    from kalm.data.episodes import EpisodeData

    data = EpisodeData.from_episodes(episodes, definition.episode_spec(), source="imagined")
    labelled, _ = relabel(data, dynamics, definition)
    if len(labelled) != len(episodes):
        raise RuntimeError("relabelling without truncation dropped rollouts")
    members = (getattr(getattr(dynamics, "config", None), "members", None)
               or getattr(dynamics, "members", None))
    self_ok = np.array([bool(e.extras["self_success"]) for e in episodes])
    mean_ok = np.array([bool(e.extras["ensemble_success"]) for e in labelled])
    votes = np.array([int(e.extras.get("ensemble_votes", -1)) for e in labelled])
    unc = np.array([float(e.extras["ensemble_uncertainty_mean"]) for e in labelled])
    calm = 1.0 - unc / max(float(unc.max()), 1e-12)  # in [0, 1], 1 = no disagreement
    out = [Signal("the LLM's own label (paper)", self_ok, rule="success on its own states"),
           Signal("ensemble, mean rollout", mean_ok, mean_ok + 0.5 * calm,
                  "success on the members' mean; ties ranked by low disagreement")]
    quantile = getattr(dynamics, "uncertainty_quantile", None)
    if quantile is not None:
        limit = float(quantile(0.9))
        out.append(Signal("ensemble, mean rollout and low disagreement", mean_ok & (unc <= limit),
                          calm, f"mean disagreement <= {limit:.3f} (90% quantile on held-out "
                          "real transitions); ranked by disagreement alone"))
    if members and (votes >= 0).all():
        for m in sorted({members // 2 + 1, members}):
            out.append(Signal(f"ensemble, mean and >= {m} of {members} members", mean_ok &
                              (votes >= m), votes + mean_ok,
                              "each member's own rollout; ranked by votes"))
    plausible = realistic(definition, episodes)
    if plausible is not None:
        out.append(Signal("no implausible transition", plausible, rule="env realism checks"))
        out.append(Signal("the LLM's own label and no implausible transition",
                          self_ok & plausible))
    if model is not None and builder is not None:
        if thresholds is None:
            raise ValueError("the model's signals need thresholds (model_thresholds)")
        if "action_logprob" in thresholds:
            lp, thr = action_logprob(model, builder, episodes), thresholds["action_logprob"]
            out.append(Signal("mean action log-probability", lp >= thr, lp,
                              f">= {thr:.2f} (10% quantile on real episodes)"))
        de, thr = dynamics_error(model, builder, episodes), thresholds["dynamics_error"]
        out.append(Signal("the LLM's dynamics re-predicting its transitions", de <= thr, -de,
                          f"normalised error <= {thr:.3f} (90% quantile on real episodes)"))
        expl = explanation_consistent(model, builder, definition, episodes)
        if expl is not None:
            out.append(Signal("explanation names the goal (cycle consistency)", expl))
            out.append(Signal("the LLM's own label and its explanation", self_ok & expl))
    return out


def signal_table(episodes: list[Episode], signals: list[Signal]) -> list[dict[str, Any]]:
    """Per signal: `judge_quality` against the replay diagnostic, as JSON rows."""
    rows = []
    for s in signals:
        q: JudgeQuality = judge_quality(episodes, s.kept,
                                        None if s.score is None else s.score)
        rows.append({"signal": s.name, "rule": s.rule, **q.to_json()})
    return rows


def format_rows(level: str, rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: level | signal | kept | precision | recall | AUROC."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    return [f"| {level} | {r['signal']} | {r['kept']} of {r['n']} ({pct(r['kept_share'])}) | "
            f"{pct(r['precision'])} | {pct(r['recall'])} | "
            f"{'-' if r['auroc'] is None else format(r['auroc'], '.2f')} |" for r in rows]


__all__ = ["REAL_QUANTILE", "Signal", "action_logprob", "compute_signals", "dynamics_error",
           "explanation_consistent", "format_rows", "model_thresholds", "real_threshold",
           "realistic", "signal_table"]
