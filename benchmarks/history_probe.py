"""Is the env's observation enough to predict the next one, or does the last step help?

CLEVR's observation holds ball positions only, but ball velocities carry over between actions
(docs/environment.md: the one-step error of the simulator itself, reset at rest to a published
state, is 1.6 cm median), so a dynamics model on (s_t, a_t) alone has a floor that no fit,
one-step or open-loop, can pass. This fits the same MLP on (s_t, a_t) and on (s_t, s_t - s_t-1,
a_t) (the last step's motion, zero at the start, where every episode is at rest), on the same
training episodes, and prints the held-out one-step error of each: if the second is much lower,
the world model the planner needs should see the last step too. `--shares` repeats the
(s_t, a_t) fit on a share of the training episodes: whether more real data would lower the floor.

    python benchmarks/history_probe.py runs/q/run/collect/real.h5 --shares 0.25 0.5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from kalm.data.episodes import read_episodes
from kalm.envs.registry import get_env
from kalm.imagination.dynamics import encode_actions, split_episodes, transitions


def pairs(data, episodes: np.ndarray, history: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, targets (s_t+1 - s_t) and states s_t of every transition of EPISODES."""
    tr = transitions(data, episodes)
    at = data.observations[tr.episodes, np.maximum(tr.steps - 1, 0)].astype(np.float32)
    a = encode_actions(data.spec, tr.actions, len(tr))
    parts = [tr.states, tr.states - at, a] if history else [tr.states, a]
    return np.concatenate(parts, 1), tr.next_states - tr.states, tr.states


def fit_and_score(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray,
                  epochs: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    mx, sx = x.mean(0), x.std(0) + 1e-6
    my, sy = y.mean(0), y.std(0) + 1e-6
    xt, yt = torch.from_numpy((x - mx) / sx), torch.from_numpy((y - my) / sy)
    net = nn.Sequential(nn.Linear(x.shape[1], 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(),
                        nn.Linear(256, y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(256):
            loss = ((net(xt[idx]) - yt[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = net(torch.from_numpy((xv - mx) / sx)).numpy() * sy + my
    return pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shares", type=float, nargs="*", default=[],
                    help="also fit (s_t, a_t) on these shares of the training episodes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = read_episodes(args.data)
    definition = get_env(data.spec.env)
    train, val = split_episodes(len(data), 0.1, 0)
    print(f"{args.data}: {len(train)} training, {len(val)} held-out episodes; "
          f"{args.epochs} epochs, one MLP 256x2 per input")
    print("| input | held-out one-step error median | p90 | largest per-entity median | "
          "fit s |")
    print("|---|---|---|---|---|")
    settings = [(False, 1.0), (True, 1.0)] + [(False, f) for f in args.shares]
    for history, share in settings:
        used = train[: max(1, round(share * len(train)))]
        x, y, _ = pairs(data, used, history)
        xv, yv, sv = pairs(data, val, history)
        t0 = time.perf_counter()
        pred = fit_and_score(x, y, xv, yv, args.epochs, args.seed)
        wall = time.perf_counter() - t0
        d = definition.distance(sv + pred, sv + yv)
        per = np.abs((sv + pred) - (sv + yv))
        if data.spec.env == "clevr":  # x, y per ball: the largest ball error
            per = np.sqrt((per.reshape(len(per), -1, 2) ** 2).sum(-1))
        name = "(s_t, s_t - s_t-1, a_t)" if history else "(s_t, a_t)"
        if share != 1.0:
            name += f", {len(used)} training episodes"
        print(f"| {name} | {np.median(d):.4f} | {np.quantile(d, 0.9):.4f} | "
              f"{np.median(per.max(1)):.4f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
