"""Evaluation speed of a trained policy: one episode at a time vs batched across environments.

Side by side in one run, on the same trained policy, the same scenes (episode i reset with
episode_seed(seed, i)) and the same worker count, interleaved:
- `before`: the policy as kalm evaluated it before batching: one `predict` per env step, each
  instruction embedded on its own when its episode starts (the policy without its `prepare` and
  `act_batch` methods);
- `unbatched`: `evaluate_policy(..., vector_envs=1)`: one `predict` per env step, instructions
  embedded up front in batches (`prepare`);
- `batched`: `vector_envs=K`: K envs per worker, one `predict` per step across them.
All must give the same episodes; the script checks it. The worker pool is warm for every row
(one warm-up call first); the cost of starting it, which evaluation used to pay per call and
now pays once per process, is printed separately.

`--budget N M` adds the end-to-end question: one policy evaluated level by level the way
`kalm compare` / `kalm run` call it, N episodes per level the old way (`before`, a fresh worker
pool per call) against M episodes per level batched (one pool for all calls), start-up
included.

Without --policy it makes its own: collects --collect expert episodes (epsilon 0.1) and trains
BC for --train-steps steps in --workdir.

    python benchmarks/eval_speed.py --episodes 100 --levels train rephrase easy hard
"""

from __future__ import annotations

import argparse
import copy
import functools
import tempfile
import time
from pathlib import Path

import numpy as np

from kalm.rl.train import TrainedPolicy


class UnbatchedPolicy(TrainedPolicy):
    """The trained policy as evaluation used it before: no batched methods, and an empty
    embedding cache for every evaluation (the encoder's weights are shared, as loading them
    counts as start-up)."""

    prepare = None
    act_batch = None

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.encoder = copy.copy(self.encoder)
        self.encoder._cache = {}


def make_policy(workdir: Path, episodes: int, steps: int) -> Path:
    from kalm.data.collect import CollectConfig, collect
    from kalm.rl.algos import AlgoConfig
    from kalm.rl.train import TrainConfig, train_policy

    real = workdir / "real.h5"
    if not real.exists():
        collect(CollectConfig(out=str(real), episodes=episodes, seed=1, epsilon=0.1,
                              workers=2), progress=False)
    pol = workdir / "bc"
    if not (pol / "policy.d3").exists():
        train_policy(TrainConfig(real=str(real), out=str(pol), algo=AlgoConfig(algo="bc"),
                                 steps=steps, save_every=steps, log_every=steps),
                     progress=False)
    return pol


def same_episodes(a, b) -> bool:
    return len(a) == len(b) and all(
        x.length == y.length and np.array_equal(x.actions, y.actions)
        and np.array_equal(x.observations, y.observations) and x.success == y.success
        for x, y in zip(a, b, strict=True))


def main() -> None:
    from kalm.data.parallel import shutdown_pools
    from kalm.data.suites import GoalSuite, load_builtin_suite
    from kalm.eval.evaluate import evaluate_policy

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=None, help="a trained policy folder (default: train one)")
    ap.add_argument("--workdir", default=None, help="where to collect and train (default: tmp)")
    ap.add_argument("--collect", type=int, default=300, help="expert episodes to train on")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--levels", nargs="+", default=["train", "rephrase", "easy", "hard"])
    ap.add_argument("--episodes", type=int, default=100, help="episodes per level")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vector-envs", type=int, nargs="+", default=[16])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--budget", type=int, nargs=2, default=None, metavar=("N_BEFORE", "M_AFTER"),
                    help="also time per-level calls: N episodes/level before vs M batched")
    args = ap.parse_args()

    if args.policy:
        pol = Path(args.policy)
    else:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kalm-eval-speed-"))
        workdir.mkdir(parents=True, exist_ok=True)
        pol = make_policy(workdir, args.collect, args.train_steps)
    entries = [e for lv in args.levels for e in load_builtin_suite(lv).entries]
    suite = GoalSuite(entries, name="+".join(args.levels))
    factory = functools.partial(TrainedPolicy, str(pol))
    rows = [("before (one predict per step, one embedding per episode)",
             functools.partial(UnbatchedPolicy, str(pol)), 1),
            ("unbatched (vector_envs=1)", factory, 1),
            *[(f"batched (vector_envs={k})", factory, k) for k in args.vector_envs if k > 1]]

    def run(policy, k: int, episodes: int):
        return evaluate_policy(policy, suite, episodes, seed=args.seed, workers=args.workers,
                               progress=False, vector_envs=k)

    shutdown_pools()
    t0 = time.perf_counter()
    run(factory, 1, 1)  # starts the pool: spawn, imports, policy and encoder loading
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(factory, 1, 1)
    warm = time.perf_counter() - t0
    times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    results = {}
    for _ in range(args.repeats):
        for label, policy, k in rows:  # interleaved, so machine noise hits every row alike
            t0 = time.perf_counter()
            results[label] = run(policy, k, args.episodes)
            times[label].append(time.perf_counter() - t0)
    base_label = rows[0][0]
    base = results[base_label]
    n = len(base.episodes)
    steps = sum(e.length for e in base.episodes)
    print(f"policy {pol}; {n} episodes ({args.episodes} per level x {len(args.levels)} levels: "
          f"{', '.join(args.levels)}), {steps} env steps, seed {args.seed}, "
          f"{args.workers} workers; median of {args.repeats}")
    print("| path | wall s | episodes/s | env steps/s | speed-up | same episodes |")
    print("|---|---|---|---|---|---|")
    t_base = float(np.median(times[base_label]))
    for label, _, _ in rows:
        t = float(np.median(times[label]))
        same = same_episodes(base.episodes, results[label].episodes)
        print(f"| {label} | {t:.1f} | {n / t:.1f} | {steps / t:.0f} | {t_base / t:.2f}x | "
              f"{'yes' if same else 'NO'} |")
    print(f"starting the worker pool (spawn, imports, loading the policy and the encoder): "
          f"{cold - warm:.1f} s (a 1-episode call: {cold:.1f} s cold, {warm:.1f} s warm)")
    print("success per level:", {lv: f"{100 * r.success_rate:.1f}%"
                                 for lv, r in base.levels.items()})
    if args.budget:
        n_before, m_after = args.budget
        k = max(args.vector_envs)
        suites = {lv: load_builtin_suite(lv) for lv in args.levels}
        t0 = time.perf_counter()
        for lv in args.levels:  # as before: every call started its own workers
            shutdown_pools()
            evaluate_policy(functools.partial(UnbatchedPolicy, str(pol)), suites[lv], n_before,
                            seed=args.seed, workers=args.workers, progress=False,
                            vector_envs=1)
        t_before = time.perf_counter() - t0
        shutdown_pools()
        t0 = time.perf_counter()
        for lv in args.levels:
            evaluate_policy(factory, suites[lv], m_after, seed=args.seed, workers=args.workers,
                            progress=False, vector_envs=k)
        t_after = time.perf_counter() - t0
        print(f"\nper-level calls ({', '.join(args.levels)}), start-up included:")
        print("| path | episodes per level | wall s |")
        print("|---|---|---|")
        print(f"| before (a worker pool per call, unbatched) | {n_before} | {t_before:.1f} |")
        print(f"| batched (vector_envs={k}, one pool) | {m_after} | {t_after:.1f} |")


if __name__ == "__main__":
    main()
