"""d3rlpy update rate per algorithm, including batch sampling, and the share spent sampling.

Side by side in one run: d3rlpy's own sampler (`ReplayBuffer.sample_transition_batch`, one
transition at a time in Python; a MixedReplayBuffer for the 1:1 mix) against kalm's vectorised
`TransitionSampler`, on the same real (+ imagined stand-in) data.

    python benchmarks/rl_speed.py --data data/real-20k.h5 --updates 200
"""

from __future__ import annotations

import argparse
import time

from kalm.data.episodes import read_episodes
from kalm.rl.algos import ALGOS, DEFAULT_BATCH, AlgoConfig, create_algo
from kalm.rl.datasets import TransitionSampler, to_d3rlpy, to_transitions
from kalm.rl.text_encoder import TextEncoder


def time_updates(algo, sample, batch_size: int, n: int) -> tuple[float, float]:
    for _ in range(5):
        algo.update(sample(batch_size))
    t_sample = t_update = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        b = sample(batch_size)
        t1 = time.perf_counter()
        algo.update(b)
        t2 = time.perf_counter()
        t_sample += t1 - t0
        t_update += t2 - t1
    return t_sample, t_update


def main() -> None:
    import d3rlpy

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--updates", type=int, default=200)
    args = ap.parse_args()
    data = read_episodes(args.data)
    half = len(data) // 2
    real, imagined = data.subset(range(half)), data.subset(range(half, len(data)))
    enc = TextEncoder()
    real_mdp, imag_mdp = to_d3rlpy(real, enc), to_d3rlpy(imagined, enc)
    mixed = d3rlpy.dataset.MixedReplayBuffer(real_mdp, imag_mdp, secondary_mix_ratio=0.5)
    fast = TransitionSampler(to_transitions(real, enc), to_transitions(imagined, enc), 0.5)
    print(f"{len(real_mdp.episodes)} + {len(imag_mdp.episodes)} episodes "
          f"({real.num_transitions} + {imagined.num_transitions} transitions), "
          f"obs dim {10 + enc.dim}, {args.updates} updates per row, 1:1 mix")
    print("| algo | batch | sampler | sample ms | update ms | steps/s | sampling share | "
          "speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ALGOS:
        algo = create_algo(AlgoConfig(algo=name), steps=args.updates)
        algo.build_with_dataset(real_mdp)
        bs = DEFAULT_BATCH[name]
        rows = {}
        for label, sample in (("d3rlpy MixedReplayBuffer", mixed.sample_transition_batch),
                              ("kalm TransitionSampler", fast.sample)):
            s, u = time_updates(algo, sample, bs, args.updates)
            rows[label] = (s, u)
        base = sum(rows["d3rlpy MixedReplayBuffer"])
        for label, (s, u) in rows.items():
            n = args.updates
            print(f"| {name} | {bs} | {label} | {1000 * s / n:.2f} | {1000 * u / n:.2f} | "
                  f"{n / (s + u):.0f} | {100 * s / (s + u):.0f}% | {base / (s + u):.2f}x |")



if __name__ == "__main__":
    main()
