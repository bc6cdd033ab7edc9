"""Build the built-in goal suites (JSONL) from the templates in language.py.

Run `python -m kalm.envs.clevr.build_suites [OUT_DIR]`; the output is deterministic, so the
committed files can be regenerated and diffed. Levels:

- train: every relation configuration x every train template x every train direction phrase.
- rephrase: the same configurations in the rephrase vocabulary (disjoint from train), every
  rephrase template once per configuration with the direction phrasings rotated.
- easy: every (ball, direction) push x every push wording.
- hard: two- and three-relation `all` goals (checked satisfiable with clear spacing), each in
  several combined wordings, plus the line and the circle goals in every wording.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import COLORS, GOAL_DIRECTIONS
from kalm.envs.clevr.goals import is_success, validate_goal
from kalm.envs.clevr.language import (
    CIRCLE_TEMPLATES,
    EASY_PUSH_TEMPLATES,
    LINE_TEMPLATES,
    REPHRASE_DIRECTION_PHRASES,
    REPHRASE_RELATION_TEMPLATES,
    TRAIN_DIRECTION_PHRASES,
    TRAIN_RELATION_TEMPLATES,
    describe,
    render_order,
    render_relation,
)
from kalm.envs.clevr.witness import MIN_SEP, min_pair_distance, satisfying_layout

SUITE_DIR = Path(__file__).resolve().parent / "suites"
LEVELS = ("train", "rephrase", "easy", "hard")
SEED = 20240531
HARD_COUNTS = {2: 40, 3: 40}  # relations per combined goal -> number of goals
HARD_WORDINGS = 3
_CANDIDATES = 24  # random combinations scored per pick, for colour/direction balance
_WITNESS_SEEDS = 5

Record = dict[str, Any]


def relation_goal(obj: str, ref: str, direction: str) -> dict[str, str]:
    return {"kind": "relation", "object": obj, "reference": ref, "direction": direction}


def relation_goals() -> list[dict[str, str]]:
    """The 80 relation configurations: ordered colour pairs x directions, in a fixed order."""
    return [
        relation_goal(obj, ref, d)
        for obj in COLORS
        for ref in COLORS
        if obj != ref
        for d in GOAL_DIRECTIONS
    ]


def _record(instruction: str, level: str, goal: dict[str, Any]) -> Record:
    return {"instruction": instruction, "level": level, "goal": goal}


def train_records() -> Iterator[Record]:
    for g in relation_goals():
        for template in TRAIN_RELATION_TEMPLATES:
            for phrase in TRAIN_DIRECTION_PHRASES[g["direction"]]:
                text = render_relation(template, g["object"], g["reference"], phrase)
                yield _record(text, "train", g)


def rephrase_records() -> Iterator[Record]:
    for k, g in enumerate(relation_goals()):
        phrases = REPHRASE_DIRECTION_PHRASES[g["direction"]]
        for i, template in enumerate(REPHRASE_RELATION_TEMPLATES):
            phrase = phrases[(i + k) % len(phrases)]
            text = render_relation(template, g["object"], g["reference"], phrase)
            yield _record(text, "rephrase", g)


def easy_records() -> Iterator[Record]:
    for colour in COLORS:
        for direction in GOAL_DIRECTIONS:
            goal = {"kind": "push", "object": colour, "direction": direction}
            for template in EASY_PUSH_TEMPLATES[direction]:
                yield _record(template.format(obj=colour), "easy", goal)


def _key(goal: dict[str, str]) -> tuple[str, str, str]:
    return goal["object"], goal["reference"], goal["direction"]


def _clearly_satisfiable(goal: dict[str, Any], seed: int) -> bool:
    """Witness layouts with every pair of balls clear of contact (>= MIN_SEP) for several seeds.

    Several seeds keep out goals that are satisfiable only in a sliver of the table (such as a
    chain of four balls spanning its whole depth), which a scripted expert would rarely reach.
    """
    for k in range(_WITNESS_SEEDS):
        layout = satisfying_layout(goal, np.random.default_rng(seed + 1000 * k))
        if layout is None or min_pair_distance(layout) < MIN_SEP:
            return False
    return True


def hard_goals(rng: np.random.Generator) -> list[dict[str, Any]]:
    """Combined relation goals, balanced over colours and directions, each satisfiable.

    A combination never relates the same two balls twice (that is either redundant or
    contradictory), and is kept only if `satisfying_layout` finds a layout with clear spacing.
    """
    rels = relation_goals()
    usage: Counter[str] = Counter()
    chosen: list[dict[str, Any]] = []
    seen: set[frozenset[tuple[str, str, str]]] = set()
    for n_rel, count in HARD_COUNTS.items():
        picked = 0
        for _ in range(200 * count):
            if picked == count:
                break
            best, best_score = None, None
            for _ in range(_CANDIDATES):
                combo = [rels[int(i)] for i in rng.choice(len(rels), n_rel, replace=False)]
                pairs = {frozenset((g["object"], g["reference"])) for g in combo}
                key = frozenset(_key(g) for g in combo)
                if len(pairs) < n_rel or key in seen:
                    continue
                score = sum(
                    usage[g["object"]] + usage[g["reference"]] + 2 * usage[g["direction"]]
                    for g in combo
                )
                if best_score is None or score < best_score:
                    best, best_score = combo, score
            if best is None:
                continue
            goal = {"kind": "all", "goals": best}
            seen.add(frozenset(_key(g) for g in best))
            if not _clearly_satisfiable(goal, seed=len(chosen)):
                continue
            for g in best:
                usage.update((g["object"], g["reference"], g["direction"]))
            chosen.append(goal)
            picked += 1
        assert picked == count, f"found only {picked} satisfiable {n_rel}-relation goals"
    return chosen


def hard_records(rng: np.random.Generator) -> Iterator[Record]:
    for goal in hard_goals(rng):
        layout = satisfying_layout(goal, np.random.default_rng(0))
        assert layout is not None and is_success(goal, layout), f"unsatisfiable: {goal}"
        wordings: list[str] = []
        while len(wordings) < HARD_WORDINGS:
            text = describe(goal, rng, "train")
            if text not in wordings:
                wordings.append(text)
        for text in wordings:
            yield _record(text, "hard", goal)
    line = {"kind": "line"}
    for template in LINE_TEMPLATES:
        yield _record(template.format(order=render_order(COLORS)), "hard", line)
    circle = {"kind": "circle", "center": "green"}
    for template in CIRCLE_TEMPLATES:
        yield _record(template.format(center="green"), "hard", circle)


def build_records() -> dict[str, list[Record]]:
    """All suites, level -> records; every goal validated and every instruction a sentence."""
    rng = np.random.default_rng(SEED)
    suites = {
        "train": list(train_records()),
        "rephrase": list(rephrase_records()),
        "easy": list(easy_records()),
        "hard": list(hard_records(rng)),
    }
    for records in suites.values():
        for rec in records:
            validate_goal(rec["goal"])
            assert rec["instruction"].endswith("."), rec["instruction"]
    train_texts = {r["instruction"] for r in suites["train"]}
    assert not train_texts & {r["instruction"] for r in suites["rephrase"]}
    return suites


def write_suites(out_dir: Path = SUITE_DIR) -> dict[str, int]:
    """Write `<level>.jsonl` for every level into out_dir; returns the line counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for level, records in build_records().items():
        path = out_dir / f"{level}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        counts[level] = len(records)
    return counts


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else SUITE_DIR
    for level, n in write_suites(out_dir).items():
        print(f"{level}: {n} lines -> {out_dir / (level + '.jsonl')}")


if __name__ == "__main__":
    main()
