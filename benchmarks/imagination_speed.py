"""Imagination speed on the default backbone: KV cache vs re-encoding, and throughput.

All rows are measured side by side in one run. Rollouts are forced to full length (the success
check never fires) so every variant decodes the same number of positions.

    python benchmarks/imagination_speed.py [--model runs/x/grounded] [--steps 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from kalm.llm.generate import _Decoder, imagine_batch
from kalm.llm.prompts import PromptBuilder

GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
TEXTS = ["Put the red ball to the left of the blue ball.",
         "Could you arrange things so that the green sphere sits in front of the cyan one?",
         "Move purple right of red.", "I'd like the cyan ball behind the blue ball, please."]


def never(goal, state, prev, action):
    return False


def load(model_dir: str | None):
    from kalm.llm.backbone import load_backbone
    from kalm.llm.model import ModelConfig
    from kalm.llm.saving import AdapterConfig, build_rollout_model, load_rollout_model
    from kalm.llm.train import clevr_spec

    if model_dir:
        return load_rollout_model(model_dir)[0]
    torch.manual_seed(0)
    m = build_rollout_model(load_backbone(), clevr_spec(), ModelConfig(), AdapterConfig())
    m.set_normalizer(torch.zeros(10), torch.full((10,), 0.3))
    return m.eval()


def run(model, builder, batch: int, steps: int, use_cache: bool):
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    s0 = np.random.default_rng(0).uniform(-0.4, 0.4, (batch, 10)).astype(np.float32)
    t0 = time.perf_counter()
    rolls = imagine_batch(model, builder, texts, s0, [GOAL] * batch, [steps] * batch, never,
                          use_cache=use_cache)
    return time.perf_counter() - t0, rolls


@torch.no_grad()
def floor_per_position(model, builder, batch: int, context: int, reps: int = 20) -> float:
    """Time of one forward of a single position through the model at this batch size, with a
    KV cache of `context` positions (the floor an incremental decoder cannot beat)."""
    seq = builder.rollout_prompt(TEXTS[0])
    ids = torch.tensor([seq.ids] * batch)
    x = model.embed_tokens(ids)
    pad = x[:, -1:].expand(batch, max(0, context - x.shape[1]), -1)
    x = torch.cat([x, pad], dim=1)
    attn = torch.ones(batch, x.shape[1], dtype=torch.long)
    times = []
    for _ in range(reps):
        dec = _Decoder(model, x, attn, use_cache=True)
        step = model.embed_actions(torch.zeros(batch, dtype=torch.long))
        t0 = time.perf_counter()
        dec.model.hidden(step[:, None], attention_mask=torch.cat(
            [attn, torch.ones(batch, 1, dtype=torch.long)], 1),
            position_ids=torch.full((batch, 1), x.shape[1]), past_key_values=dec.cache,
            use_cache=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="grounded model folder (default: untrained)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = load(args.model)
    builder = PromptBuilder(model.tokenizer)
    run(model, builder, 2, 3, True)  # warm-up

    t_cache, cached = run(model, builder, 16, args.steps, True)
    t_full, full = run(model, builder, 16, args.steps, False)
    same = all(a.actions.tolist() == b.actions.tolist() for a, b in zip(cached, full, strict=True))
    diff = max(float(np.abs(a.observations - b.observations).max())
               for a, b in zip(cached, full, strict=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"{args.steps}-step rollouts")
    print("\n| batch 16 | wall time | speed-up |\n|---|---|---|")
    print(f"| KV cache | {t_cache:.1f} s | {t_full / t_cache:.1f}x |")
    print(f"| --no-cache (re-encode every step) | {t_full:.1f} s | 1.0x |")
    print(f"\nidentical actions: {same}; max state difference: {diff:.2e}")

    print("\n| batch | rollouts/s | transitions/s | ms per decode position | "
          "floor: one-position forward (ms) | ratio to floor |")
    print("|---|---|---|---|---|---|")
    for b in args.batches:
        t, _ = (t_cache, cached) if b == 16 else run(model, builder, b, args.steps, True)
        positions = 2 * args.steps  # one action and one state position per transition
        per_pos = t / positions
        context = len(builder.rollout_prompt(TEXTS[0])) + args.steps
        floor = floor_per_position(model, builder, b, context)
        print(f"| {b} | {b / t:.2f} | {b * args.steps / t:.1f} | {1000 * per_pos:.1f} | "
              f"{1000 * floor:.1f} | {per_pos / floor:.2f} |")


if __name__ == "__main__":
    main()
