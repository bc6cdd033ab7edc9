"""Grounding losses: state MSE (normalised), action CE, explanation token CE.

Actions: cross-entropy over the actions (discrete); for continuous ones MSE on the vector
(`regression` head) or, per dimension, cross-entropy against the nearest bin (`bins` head), the
mean over dimensions, so the loss scale does not grow with the action size.

Each term is averaged per sample first, then over the samples that have it, so long episodes do
not outweigh short ones and padding never counts. The LM head runs only on supervised text
positions (the 49k-way softmax over every position would dominate the step time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kalm.llm.batching import padded_positions, split_by_length
from kalm.llm.model import RolloutModel
from kalm.llm.prompts import CONSEQUENCE, DYNAMICS, EXPLANATION, IGNORE, OBJECTIVES, ROLLOUT

# a backbone pass's fixed cost in padded positions, for splitting a batch by length (measured
# on a 2-core CPU with the default backbone, BENCHMARKS.md "Grounding in length groups")
PASS_OVERHEAD_POSITIONS = 32


@dataclass
class LossWeights:
    state: float = 1.0
    action: float = 1.0
    text: float = 1.0


def _per_sample_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values (B, L), mask (B, L) -> per-sample mean (B,) and which samples have any."""
    m = mask.float()
    count = m.sum(1)
    return (values * m).sum(1) / count.clamp_min(1.0), count > 0


def computed_positions(lengths: list[int], max_groups: int) -> int:
    """Positions the backbone computes for a batch of these lengths in `hidden_by_length`."""
    return padded_positions(lengths,
                            split_by_length(lengths, max_groups, PASS_OVERHEAD_POSITIONS))


def hidden_by_length(model: RolloutModel, x: torch.Tensor, attention_mask: torch.Tensor,
                     max_groups: int = 1) -> torch.Tensor:
    """The backbone's hidden states (B, L, hidden) of a right-padded batch, computed in up to
    `max_groups` passes over rows of similar length (`split_by_length`). Right padding and a
    causal mask make every real position's state independent of how far its row is padded,
    so the result equals one pass over the whole batch (to float rounding), at fewer
    positions."""
    lengths = attention_mask.sum(1).tolist()
    groups = split_by_length(lengths, max_groups, PASS_OVERHEAD_POSITIONS)
    if len(groups) <= 1:
        return model.hidden(x, attention_mask=attention_mask)[0]
    width = x.shape[1]
    parts, order = [], []
    for rows in groups:
        n = max(lengths[r] for r in rows)
        idx = torch.tensor(rows, device=x.device)
        h, _ = model.hidden(x[idx, :n], attention_mask=attention_mask[idx, :n])
        parts.append(F.pad(h, (0, 0, 0, width - n)))
        order.extend(rows)
    inverse = torch.empty(len(order), dtype=torch.long, device=x.device)
    inverse[torch.tensor(order, device=x.device)] = torch.arange(len(order), device=x.device)
    return torch.cat(parts)[inverse]


def grounding_losses(model: RolloutModel, batch: dict[str, torch.Tensor],
                     weights: LossWeights | None = None, length_groups: int = 1
                     ) -> dict[str, torch.Tensor]:
    """Total loss plus detached per-objective terms for logging. `length_groups` > 1 runs the
    backbone over rows of similar length separately (`hidden_by_length`): same losses, less
    padding."""
    weights = weights or LossWeights()
    x = model.embed(batch["input_ids"], batch["state_in_mask"], batch["state_in"],
                    batch["action_in_mask"], batch["action_in"])
    h = hidden_by_length(model, x, batch["attention_mask"], length_groups)
    objective = batch["objective"]
    zero = h.new_zeros((), dtype=torch.float32)
    out: dict[str, torch.Tensor] = {}

    # states: MSE in the state head's units at the target positions
    s_mask = batch["state_tgt_mask"]
    if s_mask.any():
        idx = s_mask.nonzero(as_tuple=True)
        pred = model.predict_state(h[idx], batch["state_base"][idx])
        err = model.state_error(pred, batch["state_tgt"][idx])
        full = torch.zeros(s_mask.shape, dtype=err.dtype, device=err.device)
        full[idx] = err
        per, has = _per_sample_mean(full, s_mask)
        state_loss = per[has].mean()
        for name in (ROLLOUT, DYNAMICS, CONSEQUENCE):
            sel = has & (objective == OBJECTIVES.index(name))
            if sel.any():
                out[f"{name}_state"] = per[sel].mean().detach()
    else:
        state_loss = zero

    # actions: at the state slots of the rollout objective
    a_mask = batch["action_tgt_mask"]
    if a_mask.any():
        idx = a_mask.nonzero(as_tuple=True)
        pred = model.predict_action(h[idx])
        tgt = batch["action_tgt"][idx]
        if model.spec.action_type == "discrete":
            err = F.cross_entropy(pred, tgt, reduction="none")
            acc = (pred.argmax(-1) == tgt).float().mean()
            out["rollout_action_acc"] = acc.detach()
        elif model.bins:
            err = action_bin_loss(model, pred, tgt)
        else:
            err = ((pred - tgt.float()) ** 2).mean(-1)
        if model.spec.action_type == "continuous":
            with torch.no_grad():  # comparable across heads: mean absolute error, action units
                greedy = (model.bin_values(pred.argmax(-1)) if model.bins
                          else model.clip_actions(pred))
                out["rollout_action_mae"] = (greedy - tgt.float()).abs().mean().detach()
        full = torch.zeros(a_mask.shape, dtype=err.dtype, device=err.device)
        full[idx] = err
        per, has = _per_sample_mean(full, a_mask)
        action_loss = per[has].mean()
        out["rollout_action"] = action_loss.detach()
    else:
        action_loss = zero

    # text: next-token CE on the explanation's instruction tokens
    labels = batch["labels"]
    t_mask = labels != IGNORE
    if t_mask.any():
        idx = t_mask.nonzero(as_tuple=True)
        logits = model.lm_head(h[idx]).float()
        err = F.cross_entropy(logits, labels[idx], reduction="none")
        full = torch.zeros(t_mask.shape, dtype=err.dtype, device=err.device)
        full[idx] = err
        per, has = _per_sample_mean(full, t_mask)
        text_loss = per[has].mean()
        out[f"{EXPLANATION}_text"] = text_loss.detach()
    else:
        text_loss = zero

    out["loss"] = weights.state * state_loss + weights.action * action_loss + \
        weights.text * text_loss
    return out


def action_bin_loss(model: RolloutModel, logits: torch.Tensor, actions: torch.Tensor
                    ) -> torch.Tensor:
    """Per position: the mean over action dimensions of the cross-entropy of the bin logits
    (N, action_dim, bins) against each dimension's nearest bin."""
    target = model.action_bin(actions)
    ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
    return ce.view(target.shape).mean(-1)


class GroundingObjective(torch.nn.Module):
    """The losses as a module's forward, so DDP/DeepSpeed (through accelerate) see the graph."""

    def __init__(self, model: RolloutModel, weights: LossWeights | None = None,
                 length_groups: int = 1) -> None:
        super().__init__()
        self.model = model
        self.weights = weights or LossWeights()
        self.length_groups = length_groups

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return grounding_losses(self.model, batch, self.weights, self.length_groups)
