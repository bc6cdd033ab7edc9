"""Grounding metrics on held-out episodes, saved with the model.

- rollout objective, teacher-forced: action accuracy (discrete) or, for continuous actions, the
  greedy action's absolute error and sign agreement per dimension (generic: which dimension is
  a gripper is the env's business; Meta-World's is the last), and next-state error;
- dynamics objective: next-state MSE (normalised) and error in metres;
- consequence objective: final-state error in metres;
- explanation: greedy-decoded goal text judged by the env's `explanation_correct` hook (CLEVR:
  it names the right colours and direction, read back with the language parser); absent when
  the env has no such hook.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kalm.data.episodes import EpisodeData
from kalm.llm.batching import Paraphrases, collate
from kalm.llm.device import model_device, to_device
from kalm.llm.model import RolloutModel
from kalm.llm.prompts import PromptBuilder

EXPLAIN_TOKENS = 40  # greedy explanation length limit
EXPLAIN_BATCH = 16
METRICS_BATCH = 16  # sequences per teacher-forced pass of the metrics, at most
# padded positions per teacher-forced pass, at most: short one-step prompts (Meta-World's
# 100-step episodes give thousands of them) go many to a pass instead of 16
METRICS_POSITIONS = 4096


def _batches(seqs, size):
    for i in range(0, len(seqs), size):
        yield seqs[i : i + size]


def length_batches(lengths: list[int], size: int, positions: int = METRICS_POSITIONS
                   ) -> list[list[int]]:
    """Indices of sequences of these lengths, sorted by length, in passes of up to `size` rows
    (or, when the longest in a pass is short, up to `positions` / longest), a pass's longest
    at most twice its shortest: little padding, few passes. Order does not matter to the
    metrics, which are means."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    chunk: list[int] = []
    for i in order:
        if chunk and (len(chunk) + 1 > max(size, positions // max(lengths[i], 1))
                      or lengths[i] > 2 * lengths[chunk[0]]):
            chunks.append(chunk)
            chunk = []
        chunk.append(i)
    if chunk:
        chunks.append(chunk)
    return chunks


@torch.no_grad()
def _state_errors(model: RolloutModel, builder: PromptBuilder, seqs,
                  batch_size: int = METRICS_BATCH,
                  actions: list | None = None):
    """Per-target (normalised squared error, metres error per ball) and action hits; with a
    list in `actions`, (greedy, target) pairs of continuous actions are appended to it."""
    spec = model.spec
    device = model_device(model)
    norm_sq, metres, hits = [], [], []
    for rows in length_batches([len(q) for q in seqs], batch_size):
        chunk = [seqs[i] for i in rows]
        b = to_device(collate(chunk, builder.pad_id, spec.obs_dim, spec.action_type,
                              spec.action_dim), device)
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        idx = b["state_tgt_mask"].nonzero(as_tuple=True)
        if idx[0].numel():
            z = model.predict_state(h[idx], b["state_base"][idx])
            tgt = b["state_tgt"][idx]
            norm_sq.append(((z - model.normalize(tgt)) ** 2).mean(-1).cpu())
            pred = model.clamp(model.denormalize(z))
            metres.append((pred - tgt).abs().cpu())
        idx = b["action_tgt_mask"].nonzero(as_tuple=True)
        if idx[0].numel() and spec.action_type == "discrete":
            hit = model.predict_action(h[idx]).argmax(-1) == b["action_tgt"][idx]
            hits.append(hit.float().cpu())
        elif idx[0].numel() and actions is not None:
            actions.append((model.greedy_action(h[idx]).float().cpu(),
                            b["action_tgt"][idx].float().cpu()))
    def cat(xs):
        return (torch.cat(xs) if xs else torch.zeros(0))
    return cat(norm_sq), cat(metres), cat(hits)


def action_summary(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Continuous actions, greedy vs. the data: mean absolute error (overall and per
    dimension) and, per dimension, the share of steps whose sign agrees (targets at exactly 0
    are left out; None where every target is 0). On a near-binary channel such as a gripper
    the sign is the decision that matters, which the MAE blurs."""
    if not pairs:
        return {}
    pred = torch.cat([p for p, _ in pairs])
    tgt = torch.cat([t for _, t in pairs])
    err = (pred - tgt).abs()
    signed = tgt != 0
    agree = (torch.sign(pred) == torch.sign(tgt)) & signed
    counts = signed.sum(0)
    return {"action_mae": float(err.mean()),
            "action_mae_per_dim": [float(v) for v in err.mean(0)],
            "action_sign_accuracy_per_dim": [
                float(a) / int(n) if int(n) else None
                for a, n in zip(agree.sum(0), counts, strict=True)],
            "action_steps": len(tgt)}


def _summary(norm_sq: torch.Tensor, abs_err: torch.Tensor) -> dict[str, float]:
    if norm_sq.numel() == 0:
        return {}
    out = {"mse_normalised": float(norm_sq.mean()),
           "rmse_m": float(abs_err.pow(2).mean().sqrt()),
           "mae_m": float(abs_err.mean())}
    if abs_err.shape[-1] % 2 == 0:  # xy pairs: per-object distance
        d = abs_err.reshape(abs_err.shape[0], -1, 2).pow(2).sum(-1).sqrt()
        out["mean_object_error_m"] = float(d.mean())
    return out


@torch.no_grad()
def greedy_text(model: RolloutModel, builder: PromptBuilder, prompts,
                max_new_tokens: int = EXPLAIN_TOKENS) -> list[str]:
    """Greedy decoding through the LM head, with the same left-padded KV-cache decoder as
    imagination."""
    from kalm.llm.generate import _Decoder, _left_pad

    spec = model.spec
    b = to_device(_left_pad(collate(prompts, builder.pad_id, spec.obs_dim, spec.action_type,
                                    spec.action_dim)), model_device(model))
    x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                    b["action_in"])
    dec = _Decoder(model, x, b["attention_mask"], use_cache=True)
    n = x.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new_tokens):
        tok = model.lm_head(dec.last).argmax(-1)
        ids = tok.tolist()  # one transfer per step, not one per row
        for i in range(n):
            if not done[i]:
                if ids[i] == builder.eos_id:
                    done[i] = True
                else:
                    out[i].append(ids[i])
        if all(done):
            break
        dec.feed(model.embed_tokens(tok))
    return [builder.tokenizer.decode(t, skip_special_tokens=True).strip() for t in out]


@torch.no_grad()
def grounding_metrics(model: RolloutModel, builder: PromptBuilder, data: EpisodeData,
                      paraphrases: Paraphrases, max_episodes: int = 200,
                      explain_episodes: int = 100, seed: int = 0,
                      teacher_forced: bool = True) -> dict[str, Any]:
    """The metrics above. `teacher_forced=False` computes the explanation accuracy only (added
    on the CPU to metrics from a machine that cannot load the env's judge)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    n = min(max_episodes, len(data))
    eps = [data.episode(i) for i in range(n)]
    result: dict[str, Any] = {"val_episodes": n}
    if teacher_forced:
        texts = []
        for ep in eps:
            choices = paraphrases.choices(ep.goal, ep.instruction)
            texts.append(choices[int(rng.integers(len(choices)))])
        rollout = [builder.rollout(t, ep.observations, ep.actions)
                   for t, ep in zip(texts, eps, strict=True)]
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        sq, ab, hits = _state_errors(model, builder, rollout, actions=pairs)
        dyn = [builder.dynamics(ep.observations[t], ep.actions[t], ep.observations[t + 1])
               for ep in eps for t in range(ep.length)]
        dsq, dab, _ = _state_errors(model, builder, dyn)
        cons = [builder.consequence(t, ep.observations[0], ep.observations[ep.length])
                for t, ep in zip(texts, eps, strict=True)]
        csq, cab, _ = _state_errors(model, builder, cons)
        result.update({
            "rollout_teacher_forced": {**_summary(sq, ab),
                                       "action_accuracy": float(hits.mean()) if hits.numel()
                                       else None, **action_summary(pairs)},
            "dynamics": _summary(dsq, dab),
            "consequence": _summary(csq, cab),
        })
    m = min(explain_episodes, n)
    try:
        from kalm.envs.registry import find_env

        definition = find_env(data.spec.env)
    except (ImportError, ValueError) as exc:  # e.g. a GPU box without the simulator
        definition = None
        if m:
            result["explanation"] = {"skipped": f"env {data.spec.env!r} cannot be loaded "
                                                f"here ({exc})"}
    judge = definition.explanation_correct if definition is not None else None
    if m and judge is not None:
        correct = 0
        samples = []
        for chunk in _batches(list(range(m)), EXPLAIN_BATCH):
            prompts = [builder.explanation_prompt(eps[i].observations, eps[i].actions)
                       for i in chunk]
            for i, text in zip(chunk, greedy_text(model, builder, prompts), strict=True):
                ok = bool(judge(text, eps[i].goal))
                correct += ok
                if len(samples) < 10:
                    samples.append({"goal": eps[i].goal, "generated": text, "correct": ok})
        result["explanation"] = {"accuracy": correct / m, "episodes": m, "samples": samples}
    if was_training:
        model.train()
    return result
