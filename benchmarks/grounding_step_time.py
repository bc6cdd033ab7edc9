"""Why grounding steps get slower as a run goes on, and whether flushing denormals stops it.

On the 2-core Xeon a bf16 CLEVR grounding step takes ~1.3 s at the start of a run and ~2 s
after a few hundred steps, on batches of the same size (~360 real tokens). A time budget fits
its step count to the first steps' time, so the run overshoots its budget. One suspect is
subnormal floats (tiny gradients and Adam second moments late in training take the CPU's slow
path); another is the process itself (memory, caches) rather than the training state.

Each arm continues the same grounding from the same checkpoint for N steps in a fresh process
state (`kalm.llm.train.ground(resume=True)` on a copy of the folder, no validation, saving or
metrics) and reports the mean time per step; a fresh start times the first N steps. Arms run
one after another, alternating, so machine noise spreads over both:

    python benchmarks/grounding_step_time.py runs/q/run/ground --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from kalm.config import from_dict
from kalm.llm.train import GroundConfig, ground


def _config(folder: Path) -> GroundConfig:
    return from_dict(GroundConfig, json.loads((folder / "ground_config.json").read_text()))


def _step_seconds(out: Path, start: int) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    t = {r["step"]: r["elapsed_s"] for r in rows
         if r.get("split", "train") == "train" and "elapsed_s" in r and r["step"] > start}
    steps = sorted(t)
    return [t[b] - t[a] for a, b in itertools.pairwise(steps)]


def arm(cfg: GroundConfig, checkpoint: tuple[Path, int] | None, steps: int,
        flush: bool) -> float:
    """Mean seconds per step (the first step after the start left out) of STEPS steps, from
    the start or from CHECKPOINT (its file and step). CFG holds the original run's fixed step
    count (its schedule) and precision."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "g"
        (out / "checkpoints").mkdir(parents=True)
        start = 0
        if checkpoint is not None:
            path, start = checkpoint
            shutil.copy(path, out / "checkpoints" / path.name)
        run = dataclasses.replace(cfg, out=str(out), stop_at_step=start + steps,
                                  eval_every=10**9, save_every=10**9, metrics_episodes=0,
                                  explain_episodes=0)
        torch.set_flush_denormal(flush)
        try:
            ground(run, resume=checkpoint is not None, progress=False)
        finally:
            torch.set_flush_denormal(False)  # torch's default; it has no getter
        return float(np.mean(_step_seconds(out, start)[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ground", type=Path, help="a ground stage folder with checkpoints/")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = _config(args.ground)
    ckpts = sorted((args.ground / "checkpoints").glob("step-*.pt"))
    if not ckpts:
        raise SystemExit(f"{args.ground}/checkpoints: no step-*.pt checkpoint to resume from")
    late: tuple[Path, int] | None = None
    for ckpt in reversed(ckpts):  # the latest with STEPS steps of its schedule left to run
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["step"] + args.steps <= (state.get("total_steps") or 10**9):
            late = (ckpt, int(state["step"]))
            break
    if late is None:
        raise SystemExit(f"{args.ground}/checkpoints: no checkpoint with {args.steps} steps of "
                         "its schedule left")
    metrics = json.loads((args.ground / "grounding_metrics.json").read_text())
    # the run's own schedule and precision, as a fixed step count (no budget probe)
    cfg = dataclasses.replace(cfg, budget_minutes=None, steps=int(metrics["steps_planned"]),
                              bf16=metrics["dtype"] == "bfloat16")
    arms = {"fresh start, flush off": (None, False), "fresh start, flush on": (None, True),
            f"from {late[0].stem}, flush off": (late, False),
            f"from {late[0].stem}, flush on": (late, True)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, (ckpt, flush) in arms.items():
            times[name].append(arm(cfg, ckpt, args.steps, flush))
            print(f"{name}: {times[name][-1]:.3f} s/step", flush=True)
    base = float(np.mean(times["fresh start, flush off"]))
    print(f"\n| arm | s/step (mean of {args.repeats}) | runs | vs fresh, flush off |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {np.mean(ts):.3f} | {', '.join(f'{t:.3f}' for t in ts)} "
              f"| {np.mean(ts) / base:.2f}x |")


if __name__ == "__main__":
    main()
