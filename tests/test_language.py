"""Instruction language, built-in goal suites and witness layouts."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kalm.envs.clevr import language as lang
from kalm.envs.clevr.build_suites import SUITE_DIR, relation_goals
from kalm.envs.clevr.constants import COLORS, GOAL_DIRECTIONS
from kalm.envs.clevr.goals import is_success, validate_goal
from kalm.envs.clevr.witness import (
    HIGH,
    LINE_HIGH,
    LINE_LOW,
    LINE_MIN_SEP,
    LOW,
    MIN_SEP,
    layout_ok,
    min_pair_distance,
    satisfying_layout,
)


def _load(level: str) -> list[dict[str, Any]]:
    path = Path(SUITE_DIR) / f"{level}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def suites() -> dict[str, list[dict[str, Any]]]:
    return {level: _load(level) for level in ("train", "rephrase", "easy", "hard")}


def _config(goal: dict[str, Any]) -> tuple[str, ...]:
    return tuple(goal[k] for k in ("object", "reference", "direction") if k in goal)


# ------------------------------------------------------------------------ suites


def test_records_are_well_formed(suites):
    for level, records in suites.items():
        for rec in records:
            assert set(rec) == {"instruction", "level", "goal"}
            assert rec["level"] == level
            assert rec["instruction"].endswith(".")
            assert validate_goal(rec["goal"])["kind"] == rec["goal"]["kind"]


def test_train_covers_every_configuration_template_and_phrase(suites):
    per_config = defaultdict(set)
    for rec in suites["train"]:
        assert rec["goal"]["kind"] == "relation"
        per_config[_config(rec["goal"])].add(rec["instruction"])
    assert len(per_config) == 80
    n_templates = len(lang.TRAIN_RELATION_TEMPLATES)
    assert n_templates >= 16
    for (_obj, ref, direction), texts in per_config.items():
        phrases = lang.TRAIN_DIRECTION_PHRASES[direction]
        assert len(phrases) >= 3
        assert len(texts) == n_templates * len(phrases)
        for phrase in phrases:
            assert any(f" {phrase} the {ref} ball" in t for t in texts)


def test_rephrase_is_disjoint_from_train(suites):
    assert not set(lang.TRAIN_RELATION_TEMPLATES) & set(lang.REPHRASE_RELATION_TEMPLATES)
    for d in GOAL_DIRECTIONS:
        assert not set(lang.TRAIN_DIRECTION_PHRASES[d]) & set(lang.REPHRASE_DIRECTION_PHRASES[d])
    assert len(lang.REPHRASE_RELATION_TEMPLATES) >= 8
    train = {r["instruction"] for r in suites["train"]}
    assert not train & {r["instruction"] for r in suites["rephrase"]}
    per_config = defaultdict(set)
    for rec in suites["rephrase"]:
        per_config[_config(rec["goal"])].add(rec["instruction"])
    assert len(per_config) == 80
    assert min(len(t) for t in per_config.values()) >= 5


def test_easy_suite(suites):
    counts = Counter(_config(r["goal"]) for r in suites["easy"])
    assert {r["goal"]["kind"] for r in suites["easy"]} == {"push"}
    assert len(counts) == 20
    assert min(counts.values()) >= 10
    for d in GOAL_DIRECTIONS:
        assert len(set(lang.EASY_PUSH_TEMPLATES[d])) >= 10


def test_hard_suite(suites):
    wordings = defaultdict(set)
    for rec in suites["hard"]:
        wordings[json.dumps(rec["goal"], sort_keys=True)].add(rec["instruction"])
    goals = [json.loads(k) for k in wordings]
    sizes = Counter(len(g["goals"]) for g in goals if g["kind"] == "all")
    assert sizes[2] >= 40 and sizes[3] >= 40
    for key, texts in wordings.items():
        goal = json.loads(key)
        assert len(texts) >= (10 if goal["kind"] in ("line", "circle") else 3)
    assert {"kind": "line"} in goals and {"kind": "circle", "center": "green"} in goals
    for g in goals:
        if g["kind"] == "all":  # never the same two balls twice (redundant or contradictory)
            pairs = {frozenset((s["object"], s["reference"])) for s in g["goals"]}
            assert len(pairs) == len(g["goals"])


def test_no_paper_templates(suites):
    banned = re.compile(
        r"^(push the \w+ ball (behind|in front|to the|left|right)|can you|is the|is there|"
        r"move the|keep the|the \w+ ball (moves|is being|is pushed|was))"
        r"|to the behind of|in behind of|in left of|in right of",
        re.IGNORECASE,
    )
    for records in suites.values():
        for rec in records:
            assert not banned.search(rec["instruction"]), rec["instruction"]


# ------------------------------------------------------------------------ parsing


def test_parse_relation_recovers_train_and_rephrase(suites):
    for rec in suites["train"] + suites["rephrase"]:
        assert lang.parse_relation(rec["instruction"]) == _config(rec["goal"]), rec["instruction"]


def test_parse_push_recovers_easy(suites):
    for rec in suites["easy"]:
        assert lang.parse_push(rec["instruction"]) == _config(rec["goal"]), rec["instruction"]


def test_parse_relations_recovers_hard(suites):
    for rec in suites["hard"]:
        if rec["goal"]["kind"] == "all":
            want = [_config(g) for g in rec["goal"]["goals"]]
            assert lang.parse_relations(rec["instruction"]) == want, rec["instruction"]


def test_parse_free_form_and_failures():
    assert lang.parse_relation("The red ball now sits left of the blue one.") == (
        "red",
        "blue",
        "left",
    )
    assert lang.parse_relation("Cyan went further forward than purple.") == (
        "cyan",
        "purple",
        "front",
    )
    assert lang.parse_relation("The red ball rolled away.") is None
    assert lang.parse_relation("Put the red ball near the blue ball.") is None
    assert lang.parse_push("The green ball was shoved backwards.") == ("green", "behind")
    assert lang.parse_push("Nothing happened.") is None


# ------------------------------------------------------------------------ describe


@pytest.mark.parametrize("style", lang.STYLES)
def test_describe_is_deterministic_and_parsable(style):
    goals: list[dict[str, Any]] = [
        {"kind": "relation", "object": "red", "reference": "cyan", "direction": "front"},
        {"kind": "push", "object": "blue", "direction": "right"},
        {"kind": "all", "goals": [relation_goals()[0], relation_goals()[5]]},
        {"kind": "line"},
        {"kind": "circle", "center": "green"},
    ]
    for goal in goals:
        a = [lang.describe(goal, np.random.default_rng(7), style) for _ in range(3)]
        assert len(set(a)) == 1 and a[0].endswith(".")
        seq1 = [lang.describe(goal, rng, style) for rng in [np.random.default_rng(3)] * 5]
        seq2 = [lang.describe(goal, rng, style) for rng in [np.random.default_rng(3)] * 5]
        assert seq1 == seq2
    combined = goals[2]
    for seed in range(20):
        text = lang.describe(combined, np.random.default_rng(seed), style)
        assert lang.parse_relations(text) == [_config(g) for g in combined["goals"]], text
    rel = goals[0]
    texts = {lang.describe(rel, np.random.default_rng(s), style) for s in range(60)}
    assert len(texts) >= 5
    assert all(lang.parse_relation(t) == _config(rel) for t in texts)
    with pytest.raises(ValueError):
        lang.describe(rel, np.random.default_rng(0), "poetry")


def test_line_and_circle_wordings():
    assert len(set(lang.LINE_TEMPLATES)) >= 10 and len(set(lang.CIRCLE_TEMPLATES)) >= 10
    assert all("{order}" in t for t in lang.LINE_TEMPLATES)
    assert all("{center}" in t for t in lang.CIRCLE_TEMPLATES)
    assert len(lang.CLAUSE_TEMPLATES) >= 6


# ------------------------------------------------------------------------ witness layouts


def _check_layout(goal, layout, min_sep=MIN_SEP, low=LOW, high=HIGH):
    assert layout is not None, goal
    assert layout.shape == (10,)
    assert is_success(goal, layout), goal
    assert layout_ok(layout, min_sep, low, high), (goal, layout, min_pair_distance(layout))


def test_witness_for_every_relation():
    for i, goal in enumerate(relation_goals()):
        _check_layout(goal, satisfying_layout(goal, np.random.default_rng(i)))


def test_witness_for_every_hard_goal(suites):
    seen = set()
    for rec in suites["hard"]:
        key = json.dumps(rec["goal"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        goal = rec["goal"]
        layout = satisfying_layout(goal, np.random.default_rng(len(seen)))
        if goal["kind"] == "line":
            _check_layout(goal, layout, LINE_MIN_SEP, LINE_LOW, LINE_HIGH)
        else:
            _check_layout(goal, layout)


def test_witness_line_and_circle_for_other_orders():
    for center in COLORS:
        goal = {"kind": "circle", "center": center}
        _check_layout(goal, satisfying_layout(goal, np.random.default_rng(1)))
    goal = {"kind": "line", "order": ["cyan", "green", "red", "blue", "purple"]}
    _check_layout(
        goal, satisfying_layout(goal, np.random.default_rng(2)), LINE_MIN_SEP, LINE_LOW, LINE_HIGH
    )


def test_witness_crowded_sector_relaxes_spacing():
    # Three balls to the right of red cannot be 0.30 apart inside the 0.39 sector.
    goal = {
        "kind": "all",
        "goals": [
            {"kind": "relation", "object": c, "reference": "red", "direction": "right"}
            for c in ("blue", "green", "cyan")
        ],
    }
    layout = satisfying_layout(goal, np.random.default_rng(0))
    _check_layout(goal, layout, min_sep=0.262)


def test_witness_rejects_contradictions_and_push():
    left = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
    right = dict(left, direction="right")
    assert (
        satisfying_layout(
            {"kind": "all", "goals": [left, right]}, np.random.default_rng(0), tries=20
        )
        is None
    )
    with pytest.raises(ValueError):
        satisfying_layout(
            {"kind": "push", "object": "red", "direction": "left"}, np.random.default_rng(0)
        )


def _start(rng: np.random.Generator) -> np.ndarray:
    while True:
        s = rng.uniform(np.tile(LOW, 5), np.tile(HIGH, 5))
        if layout_ok(s, 0.36):
            return s


def test_witness_from_start_moves_few_balls():
    rng = np.random.default_rng(11)
    goal = {"kind": "relation", "object": "green", "reference": "purple", "direction": "behind"}
    single_moves = 0
    for k in range(10):
        start = _start(rng)
        layout = satisfying_layout(goal, np.random.default_rng(k), start=start)
        _check_layout(goal, layout)
        moved = np.hypot(*(layout - start).reshape(5, 2).T) > 1e-9
        single_moves += int(moved.sum() == 1)
        if is_success(goal, start):
            assert not moved.any()
    assert single_moves >= 6
    # A start that already satisfies the goal is returned unchanged.
    start = _start(rng)
    done = satisfying_layout(goal, np.random.default_rng(0), start=start)
    assert np.allclose(satisfying_layout(goal, np.random.default_rng(1), start=done), done)


def test_witness_is_deterministic():
    goal = {"kind": "all", "goals": relation_goals()[5:15:4]}  # crowded: reaches the optimiser
    a = satisfying_layout(goal, np.random.default_rng(4))
    b = satisfying_layout(goal, np.random.default_rng(4))
    assert a is not None and np.array_equal(a, b)


def test_every_two_relation_combination_of_three_balls_is_solved():
    # All two-relation goals over red/blue/green that relate different pairs are satisfiable.
    rels = [
        g for g in relation_goals() if {g["object"], g["reference"]} <= {"red", "blue", "green"}
    ]
    for a, b in itertools.combinations(rels, 2):
        if {a["object"], a["reference"]} == {b["object"], b["reference"]}:
            continue
        goal = {"kind": "all", "goals": [a, b]}
        _check_layout(goal, satisfying_layout(goal, np.random.default_rng(0)))
