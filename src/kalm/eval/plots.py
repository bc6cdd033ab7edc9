"""Plots for results and reports (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CURVES = ("rollout_state", "dynamics_state", "consequence_state", "rollout_action",
          "explanation_text")


def plot_grounding_curves(metrics_jsonl: str | Path, out_png: str | Path,
                          smooth: int = 20) -> Path:
    """Training (smoothed) and validation loss per objective against steps."""
    rows = [json.loads(x) for x in Path(metrics_jsonl).read_text().splitlines() if x]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for ax, key in zip(axes, CURVES, strict=True):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            xs, ys = zip(*pts, strict=True)
            k = max(1, min(smooth, len(ys)))
            sm = [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1])
                  for i in range(len(ys))]
            ax.plot(xs, sm, label="train (smoothed)", lw=1)
        vpts = [(r["step"], r[key]) for r in val if key in r]
        if vpts:
            xs, ys = zip(*vpts, strict=True)
            ax.plot(xs, ys, "o-", label="validation", ms=3)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
