"""Grounding steps in length groups vs one padded pass, side by side on the same batches.

A grounding batch mixes the four objectives, whose prompts differ up to ~10x in length (a
100-step Meta-World rollout against one (s, a) -> s' step), so one right-padded pass computes
mostly padding. `GroundConfig.length_groups` runs the backbone over rows of similar length
separately. This script builds real batches from an episode file with the default backbone
(LoRA, fp32 or bf16 autocast with the attention kernel training would pick) and times forward +
backward of every batch under each setting in turn (interleaved, so load on a shared machine
hits all alike), then the final metrics' teacher-forced passes over one-step prompts, 16 per
pass (the old way) against passes sorted by length and filled to a position budget.

    python benchmarks/grounding_length_groups.py --data runs/mw/collect/real.h5 --steps 6
"""

from __future__ import annotations

import argparse
import time

from grounding_throughput import ensure_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None, help="episode file (default: collect 300 CLEVR)")
    ap.add_argument("--steps", type=int, default=6, help="timed batches per setting")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--metrics-prompts", type=int, default=400,
                    help="one-step prompts for the metrics comparison (0: skip)")
    args = ap.parse_args()

    import tempfile

    import torch

    from kalm.llm.batching import GroundingSamples
    from kalm.llm.losses import computed_positions, grounding_losses
    from kalm.llm.train import GroundConfig, Grounder

    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_data(args.data, tmp)
        use_bf16 = args.precision == "bf16"
        cfg = GroundConfig(data=data, out="", batch_size=args.batch, bf16=use_bf16,
                           paraphrase_suite="train")
        g = Grounder(cfg, use_bf16=use_bf16)
    model = g.model.train()
    n = args.warmup + args.steps
    samples = GroundingSamples(len(g.train_data), args.batch, n, cfg.objectives, 0)
    col = g.collator(g.train_data)
    batches = [col([samples[i * args.batch + j] for j in range(args.batch)]) for i in range(n)]
    times = {k: [] for k in args.groups}
    positions = {k: 0 for k in args.groups}
    tokens = 0
    for i, b in enumerate(batches):
        lengths = b["attention_mask"].sum(1).tolist()
        if i >= args.warmup:
            tokens += sum(lengths)
        for k in args.groups:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = grounding_losses(model, b, length_groups=k)["loss"]
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t0)
                positions[k] += computed_positions(lengths, k)
    print(f"data {data}, batch {args.batch}, {args.steps} timed batches after {args.warmup} "
          f"warm-up, bf16 {use_bf16}, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads")
    print(f"real tokens per batch {tokens / args.steps:.0f}")
    print("| length groups | s/step (forward + backward) | padded positions per batch | "
          "padding share | real tokens/s | time vs one pass |")
    print("|---|---|---|---|---|---|")
    base = sum(times[args.groups[0]])
    for k in args.groups:
        s = sum(times[k])
        print(f"| {k} | {s / args.steps:.2f} | {positions[k] / args.steps:.0f} | "
              f"{1 - tokens / positions[k]:.0%} | {tokens / s:.0f} | {s / base:.2f} |")

    if args.metrics_prompts:
        from kalm.llm import metrics

        eps = [g.train_data.episode(i) for i in range(min(len(g.train_data), 50))]
        dyn = [g.builder.dynamics(ep.observations[t], ep.actions[t], ep.observations[t + 1])
               for ep in eps for t in range(ep.length)][: args.metrics_prompts]
        model.eval()
        def sixteen_in_order(lengths, size):
            return [list(range(i, min(i + size, len(lengths))))
                    for i in range(0, len(lengths), size)]

        ways = {"16 per pass, in order (before)": sixteen_in_order,
                "sorted, position budget": metrics.length_batches}
        result = {}
        original = metrics.length_batches
        try:
            for name, way in ways.items():
                metrics.length_batches = way
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    sq, _, _ = metrics._state_errors(model, g.builder, dyn)
                result[name] = (time.perf_counter() - t0, float(sq.mean()))
        finally:
            metrics.length_batches = original
        print(f"\nfinal metrics, {len(dyn)} one-step dynamics prompts")
        print("| passes | seconds | mean normalised squared error |")
        print("|---|---|---|")
        for name, (secs, err) in result.items():
            print(f"| {name} | {secs:.1f} | {err:.6f} |")


if __name__ == "__main__":
    main()
