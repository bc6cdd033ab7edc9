"""Grounding recipes side by side: held-out metrics, and what their imagined rollouts are worth.

Reads, per recipe, a grounded model folder (`kalm ground`), its N=1 imagined files for rephrase
and easy (`kalm imagine`, which records each rollout's replay in the simulator: a diagnostic)
and their relabelled files (`kalm relabel --min-votes 5 --keep all`), and prints one table:
steps, held-out teacher-forced action accuracy, one-step and rollout state errors, explanation
accuracy, replayed match of the imagined rollouts, and how many the ensemble with all-member
votes keeps and how many of those are right. The reference row is the action accuracy of the
run's BC policy (an MLP on the same data and goal embeddings) on the same held-out episodes.

    python benchmarks/grounding_recipes.py --real runs/clevr-quick/collect/real.h5 \\
        --bc runs/clevr-quick/train-bc-seed0/baseline-seed0 \\
        --recipe "one LR=runs/clevr-quick/ground:runs/bestofn/imagine-N1-{level}.h5:\\
runs/bestofn/label-N1-{level}-votes5/labelled.h5" --recipe ...

Each --recipe is NAME=MODEL_DIR:IMAGINED_PATTERN:LABELLED_PATTERN with `{level}` in the
patterns (rephrase, easy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kalm.data.episodes import read_episodes
from kalm.eval.held_out import policy_action_accuracy

LEVELS = ("rephrase", "easy")


def rollouts(imagined: str, labelled: str) -> dict[str, float]:
    im = read_episodes(imagined)
    lab = read_episodes(labelled)
    replay = np.asarray(im.extras["replay_success"], dtype=bool)
    judged = np.asarray(lab.extras["ensemble_success"], dtype=bool)
    right = np.asarray(lab.extras["replay_success"], dtype=bool)
    return {"n": len(im), "replayed": float(replay.mean()), "kept": int(judged.sum()),
            "kept_right": int((judged & right).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real", required=True)
    ap.add_argument("--bc", help="a BC policy folder trained on --real (reference row)")
    ap.add_argument("--recipe", action="append", required=True)
    ap.add_argument("--episodes", type=int, default=100)
    args = ap.parse_args()

    head = ("| recipe | steps | action accuracy | rollout next-state RMSE (m) | one-step RMSE (m) "
            "| explanation accuracy | " + " | ".join(
                f"{lv}: replayed match (diag.) | {lv}: kept by votes, right (diag.)"
                for lv in LEVELS) + " |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for spec in args.recipe:
        name, rest = spec.split("=", 1)
        model, imagined, labelled = rest.split(":")
        m = json.loads((Path(model) / "grounding_metrics.json").read_text())
        tf = m["rollout_teacher_forced"]
        cells = [name, str(m["steps"]), f"{100 * tf['action_accuracy']:.1f}%",
                 f"{tf['rmse_m']:.3f}", f"{m['dynamics']['rmse_m']:.3f}",
                 f"{100 * m['explanation']['accuracy']:.1f}%"]
        for lv in LEVELS:
            r = rollouts(imagined.format(level=lv), labelled.format(level=lv))
            cells += [f"{100 * r['replayed']:.1f}% of {r['n']}",
                      f"{r['kept']}, {r['kept_right']}"]
        print("| " + " | ".join(cells) + " |")
    if args.bc:
        acc = policy_action_accuracy(args.real, args.bc, args.episodes)
        print(f"| reference: the BC policy (MLP, same data and goal embeddings) | - | "
              f"{100 * acc:.1f}% | - | - | - |" + " - |" * (2 * len(LEVELS)))


if __name__ == "__main__":
    main()
