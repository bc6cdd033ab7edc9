"""Wall time of collecting expert episodes with `kalm collect` (both cores by default).

    python benchmarks/collect_speed.py --episodes 10000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from kalm.data.collect import CollectConfig, collect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epsilon", type=float, default=0.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "real.h5"
        t0 = time.perf_counter()
        data = collect(CollectConfig(out=str(out), episodes=args.episodes, seed=args.seed,
                                     epsilon=args.epsilon, workers=args.workers))
        wall = time.perf_counter() - t0
        size = os.path.getsize(out)
    lengths = data.lengths
    attempts = int(data.attrs["attempts"])
    print("| episodes kept | attempts | workers | transitions | median length | wall time | "
          "episodes/s | file size |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {len(data)} | {attempts} | {args.workers} | {data.num_transitions} | "
          f"{np.median(lengths):.0f} | {wall / 60:.1f} min | {len(data) / wall:.1f} | "
          f"{size / 1e6:.1f} MB |")


if __name__ == "__main__":
    main()
