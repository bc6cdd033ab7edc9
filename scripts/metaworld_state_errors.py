"""Where imagined Meta-World states go wrong: each level's imagined rollouts replayed in the
simulator from their start state (a DIAGNOSTIC: it uses the simulator, and only the free-object
tasks can be put in a given start state), the squared error against the replayed states split
by block (hand and gripper, the goal marker, the entities present at the start, the absent
ones), mean over rollouts at given steps. docs/experiments/12-metaworld-absent-entities.md.

  python scripts/metaworld_state_errors.py NAME=FOLDER [NAME=FOLDER ...] [--steps 10 50]

FOLDER holds imagine-LEVEL/imagined.h5 (a run folder, or an OUT/off of diagnose_run.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from kalm.data.episodes import read_episodes
from kalm.envs.metaworld.constants import ENTITIES, ENTITY_SLICE, HAND, OPENING, TARGET
from kalm.envs.metaworld.realism import present_entities
from kalm.envs.registry import get_env
from kalm.imagination.quality import replay_actions

GROUPS = ("hand+gripper", "target", "present", "absent")


def _indices(s0: np.ndarray) -> dict[str, list[int]]:
    present = present_entities(s0)
    block = {e: list(range(ENTITY_SLICE[e].start, ENTITY_SLICE[e].stop)) for e in ENTITIES}
    return {"hand+gripper": [*range(HAND.start, HAND.stop), OPENING],
            "target": list(range(TARGET.start, TARGET.stop)),
            "present": [i for e in present for i in block[e]],
            "absent": [i for e in ENTITIES if e not in present for i in block[e]]}


def level_errors(path: Path, steps: list[int]) -> tuple[int, dict[tuple[int, str], float]]:
    definition = get_env("metaworld")
    env = definition.make()
    sums: dict[tuple[int, str], list[float]] = {}
    replayed = 0
    for e in read_episodes(path).episodes():
        obs = np.asarray(e.observations, np.float64)
        result = replay_actions(definition, env, e.goal, obs[0], list(e.actions))
        if result is None:
            continue
        real, _ = result
        replayed += 1
        for group, idx in _indices(obs[0]).items():
            for t in steps:
                if t < len(obs):
                    sums.setdefault((t, group), []).append(
                        float(np.sum((obs[t, idx] - real[t, idx]) ** 2)))
    env.close()
    return replayed, {k: float(np.mean(v)) for k, v in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", metavar="NAME=FOLDER")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    args = ap.parse_args()
    head = " | ".join(f"{g} @{t}" for t in args.steps for g in GROUPS)
    print(f"| run | level | replayed (diagnostic) | {head} |")
    print("|---|---|---|" + "---|" * (len(GROUPS) * len(args.steps)))
    for item in args.folders:
        name, sep, folder = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: expected NAME=FOLDER")
        for path in sorted(Path(folder).glob("imagine-*/imagined.h5")):
            level = path.parent.name.removeprefix("imagine-")
            n, err = level_errors(path, args.steps)
            cells = " | ".join(f"{err[(t, g)]:.3f}" if (t, g) in err else "-"
                               for t in args.steps for g in GROUPS)
            print(f"| {name} | {level} | {n} | {cells} |")


if __name__ == "__main__":
    main()
