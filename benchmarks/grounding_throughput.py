"""Grounding training throughput of the default backbone, against this CPU's matmul peak.

For each mode (LoRA / full fine-tuning, fp32 / bf16 autocast) a fresh process builds the model,
runs warm-up steps, then times training steps on batches of 8 real CLEVR samples (the four
objectives mixed equally, expert episodes, so real sequence lengths). The peak is a large torch
matmul in the same dtype, measured in the same run. Peak memory is the process's max RSS.

    python benchmarks/grounding_throughput.py --steps 6 [--data real.h5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = [("lora", "fp32"), ("lora", "bf16"), ("full", "fp32"), ("full", "bf16")]
# extra precision "bf16w": bf16 autocast with the frozen backbone weights stored in bf16 (LoRA
# only), so autocast does not re-cast 135 M fp32 weights to bf16 on every forward


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 10) -> float:
    """Best-of GFLOP/s of an n x n x n matmul in the given dtype."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def run_mode(mode: str, precision: str, data: str, steps: int, warmup: int,
             batch: int = 8, attn: str = "sdpa") -> dict:
    import torch

    from kalm.llm.losses import grounding_losses
    from kalm.llm.saving import AdapterConfig
    from kalm.llm.train import GroundConfig, Grounder

    bf16 = precision in ("bf16", "bf16w")
    cfg = GroundConfig(data=data, out="", adapter=AdapterConfig(mode=mode), batch_size=batch,
                       bf16=bf16, paraphrase_suite="train")
    g = Grounder(cfg)
    g.backbone.model.set_attn_implementation(attn)  # transformers' attention kernel
    model = g.model.train()
    if precision == "bf16w":
        for p in model.body.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_body = sum(p.numel() for p in model.body.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    from kalm.llm.batching import GroundingSamples

    samples = GroundingSamples(len(g.train_data), batch, warmup + steps, cfg.objectives, 0)
    col = g.collator(g.train_data)
    batches = [col([samples[i * batch + j] for j in range(batch)])
               for i in range(warmup + steps)]
    times, tokens = [], []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = grounding_losses(model, b)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(int(b["attention_mask"].sum()))
    secs = sum(times)
    tok = sum(tokens)
    # FLOPs per token: forward 2N; backward 2N for activation grads (+2N weight grads if full)
    flops_per_token = (6 if mode == "full" else 4) * n_body
    achieved = flops_per_token * tok / secs / 1e9
    peak = matmul_peak("bf16" if bf16 else "fp32")
    return {"mode": mode, "precision": precision, "attn": attn, "steps_per_s": len(times) / secs,
            "s_per_step": secs / len(times), "tokens_per_s": tok / secs,
            "mean_seq_len": tok / (batch * len(times)), "batch": batch, "trainable_params": n_train,
            "achieved_gflops": achieved, "peak_gflops": peak, "fraction_of_peak": achieved / peak,
            "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def ensure_data(path: str | None, tmp: str) -> str:
    if path:
        return path
    from kalm.data.collect import CollectConfig, collect

    out = str(Path(tmp) / "real.h5")
    collect(CollectConfig(out=out, episodes=300, seed=123, workers=2), progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None, help="expert episode file (default: collect 300)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[8],
                    help="batch sizes (the issue's figure is batch 8)")
    ap.add_argument("--modes", nargs="+", default=[f"{m}-{p}" for m, p in MODES])
    ap.add_argument("--attn", nargs="+", default=["sdpa"],
                    help="attention implementations to compare (sdpa, eager)")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_mode(*args.one, args.data, args.steps, args.warmup,
                                  args.batch[0], args.attn[0])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_data(args.data, tmp)
        rows = []
        runs = [(b, n, a) for b in args.batch for n in args.modes for a in args.attn]
        for batch, name, attn in runs:  # one process per row: clean peak-memory figures
            mode, prec = name.split("-")
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, prec, "--data", data, "--steps",
                 str(args.steps), "--warmup", str(args.warmup), "--batch", str(batch),
                 "--attn", attn], check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print("| batch | mode | precision | attention | s/step | steps/s | tokens/s | mean seq len | "
          "trainable params | achieved GFLOP/s | matmul peak GFLOP/s | fraction of peak | "
          "peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['mode']} | {r['precision']} | {r['attn']} | "
              f"{r['s_per_step']:.2f} | "
              f"{r['steps_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['mean_seq_len']:.0f} | "
              f"{r['trainable_params'] / 1e6:.2f} M | {r['achieved_gflops']:.0f} | "
              f"{r['peak_gflops']:.0f} | {100 * r['fraction_of_peak']:.0f}% | "
              f"{r['max_rss_gb']:.1f} GB |")


if __name__ == "__main__":
    main()
