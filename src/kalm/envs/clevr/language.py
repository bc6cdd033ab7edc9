"""Instruction language for the CLEVR-Robot goals: templates, `describe` and parsers.

All sentences here were written for this project. Two disjoint relation vocabularies exist so
that the "rephrase" level tests generalisation to unseen wordings: a train set (templates and
direction phrases) and a rephrase set that shares no template and no direction phrase with it.

Direction words follow KALM's convention (see constants.py): behind = +y is "back / backward /
rear", front = -y is "front / forward / ahead", left = -x, right = +x.

The parsers (`parse_relation`, `parse_push`, `parse_relations`) read colours and direction
keywords rather than whole templates, so they also judge free-form model explanations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import COLORS, GOAL_DIRECTIONS

# --------------------------------------------------------------------------------------------
# Relation goals: {obj} is the moved ball, {ref} the reference ball, {rel} a direction phrase
# that reads "<obj> is {rel} <ref>".
# --------------------------------------------------------------------------------------------

TRAIN_DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "behind": ("behind", "in back of", "at the back of"),
    "left": ("to the left of", "left of", "on the left side of"),
    "front": ("in front of", "to the front of", "on the front side of"),
    "right": ("to the right of", "right of", "on the right side of"),
}

TRAIN_RELATION_TEMPLATES: tuple[str, ...] = (
    "Put the {obj} ball {rel} the {ref} ball.",
    "Place the {obj} ball {rel} the {ref} ball.",
    "Slide the {obj} ball {rel} the {ref} ball.",
    "Roll the {obj} ball over so it rests {rel} the {ref} ball.",
    "Get the {obj} ball {rel} the {ref} ball.",
    "Bring the {obj} ball {rel} the {ref} ball.",
    "Shove the {obj} ball until it is {rel} the {ref} ball.",
    "Nudge the {obj} ball so that it ends up {rel} the {ref} ball.",
    "Position the {obj} ball {rel} the {ref} ball.",
    "Relocate the {obj} ball {rel} the {ref} ball.",
    "Make sure the {obj} ball is {rel} the {ref} ball.",
    "Ensure that the {obj} ball sits {rel} the {ref} ball.",
    "Steer the {obj} ball to a spot {rel} the {ref} ball.",
    "Reposition the {obj} ball {rel} the {ref} ball.",
    "Guide the {obj} ball {rel} the {ref} ball.",
    "Arrange the table so the {obj} ball lies {rel} the {ref} ball.",
)

REPHRASE_DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "behind": ("to the rear of", "further back than", "at the rear of"),
    "left": ("on the left-hand side of", "further left than", "leftward of"),
    "front": ("ahead of", "further forward than", "forward of"),
    "right": ("on the right-hand side of", "further right than", "rightward of"),
}

# Different sentence structures from train: wishes, indirect requests, goal descriptions,
# "sphere"/"one" for "ball", and three reference-first forms ("... {rel} it").
REPHRASE_RELATION_TEMPLATES: tuple[str, ...] = (
    "I would like the {obj} sphere to end up {rel} the {ref} sphere.",
    "I wonder whether you could get the {obj} one {rel} the {ref} one.",
    "The goal is a scene where the {obj} sphere lies {rel} the {ref} sphere.",
    "Using the {ref} ball as the anchor, bring the {obj} ball to a spot {rel} it.",
    "Taking the {ref} sphere as reference, the {obj} sphere should finish {rel} it.",
    "What I need is the {obj} one sitting {rel} the {ref} one.",
    "Let the {ref} ball have the {obj} ball {rel} it.",
    "It would help to have the {obj} sphere resting {rel} the {ref} sphere.",
    "Please see to it that the {obj} one winds up {rel} the {ref} one.",
    "Aim for a layout with the {obj} ball {rel} the {ref} ball.",
    "Bump the {obj} sphere along until it settles {rel} the {ref} sphere.",
)

# --------------------------------------------------------------------------------------------
# Easy level: one push of one ball in a direction.
# --------------------------------------------------------------------------------------------

_PUSH_FRAMES: tuple[str, ...] = (
    "Nudge the {obj} ball {adv}.",
    "Give the {obj} ball a shove {adv}.",
    "Tap the {obj} ball {adv}.",
    "Send the {obj} ball rolling {adv}.",
    "Bump the {obj} ball {adv} once.",
)
_PUSH_ADVERBS: dict[str, tuple[str, ...]] = {
    "behind": ("backward", "toward the back", "rearward"),
    "left": ("to the left", "leftward", "toward the left"),
    "front": ("forward", "toward the front", "ahead"),
    "right": ("to the right", "rightward", "toward the right"),
}
EASY_PUSH_TEMPLATES: dict[str, tuple[str, ...]] = {
    d: tuple(f.replace("{adv}", a) for a in advs for f in _PUSH_FRAMES)
    for d, advs in _PUSH_ADVERBS.items()
}

# --------------------------------------------------------------------------------------------
# Hard level: several relations at once, a line and a circle.
# Clause templates contain no joiner word ("and", "then", "also", ";") so clauses can be split.
# --------------------------------------------------------------------------------------------

CLAUSE_TEMPLATES: tuple[str, ...] = (
    "put the {obj} ball {rel} the {ref} ball",
    "the {obj} ball should sit {rel} the {ref} ball",
    "get the {obj} ball {rel} the {ref} ball",
    "slide the {obj} ball {rel} the {ref} ball",
    "place the {obj} ball {rel} the {ref} ball",
    "make sure the {obj} ball ends up {rel} the {ref} ball",
    "roll the {obj} ball over to a spot {rel} the {ref} ball",
)
CLAUSE_JOINERS: tuple[str, ...] = (
    ", and ",
    "; also ",
    ", and then ",
    "; then ",
    "; in addition, ",
    "; after that, ",
)

LINE_TEMPLATES: tuple[str, ...] = (
    "Line the balls up from left to right in the order {order}.",
    "Arrange all five balls in a row running left to right: {order}.",
    "Form a left-to-right row of balls ordered {order}.",
    "Set the balls out in a line going {order} from left to right.",
    "Make a row with {order} from the left side to the right side.",
    "Order the balls left to right as {order}.",
    "Put the balls in sequence from left to right: {order}.",
    "Build a line of balls that reads {order} from left to right.",
    "From left to right, the balls should go {order}.",
    "Place every ball in one left-to-right row: {order}.",
    "Slide the balls into a row so that, left to right, they read {order}.",
    "Organise the balls into a line whose left-to-right order is {order}.",
)
CIRCLE_TEMPLATES: tuple[str, ...] = (
    "Gather the other balls around the {center} ball.",
    "Bring every other ball close to the {center} ball.",
    "Cluster the remaining balls around the {center} ball.",
    "Make a ring of balls around the {center} ball.",
    "Surround the {center} ball with the other four balls.",
    "Pull all the other balls in tight around the {center} ball.",
    "Group the rest of the balls around the {center} ball.",
    "Collect the other balls into a circle centred on the {center} ball.",
    "Put all the remaining balls near the {center} ball, encircling it.",
    "Arrange the other balls in a circle around the {center} ball.",
    "Herd the other balls together around the {center} ball.",
    "Have the other four balls huddle around the {center} ball.",
)

STYLES = ("train", "rephrase")


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def relation_vocabulary(style: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """(templates, direction phrases) of a style; the two styles never share either."""
    if style == "train":
        return TRAIN_RELATION_TEMPLATES, TRAIN_DIRECTION_PHRASES
    if style == "rephrase":
        return REPHRASE_RELATION_TEMPLATES, REPHRASE_DIRECTION_PHRASES
    raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")


def render_relation(template: str, obj: str, ref: str, phrase: str) -> str:
    """Fill a relation (or clause) template; kept separate so suites can enumerate wordings."""
    return template.format(obj=obj, ref=ref, rel=phrase)


def render_order(order: Sequence[str]) -> str:
    """The colour sequence of a line goal as written in instructions."""
    return ", ".join(order)


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def describe_all(goals: Sequence[Mapping[str, Any]], rng: np.random.Generator, style: str) -> str:
    """One sentence of joined clauses, one clause per relation goal (distinct templates)."""
    _, phrases = relation_vocabulary(style)
    order = rng.permutation(len(CLAUSE_TEMPLATES))
    parts = []
    for i, sub in enumerate(goals):
        if sub["kind"] != "relation":
            parts.append(_lower_first(describe(sub, rng, style).rstrip(".")))
            continue
        template = CLAUSE_TEMPLATES[int(order[i % len(order)])]
        phrase = _pick(rng, phrases[sub["direction"]])
        parts.append(render_relation(template, sub["object"], sub["reference"], phrase))
    text = parts[0]
    for part in parts[1:]:
        text += _pick(rng, CLAUSE_JOINERS) + part
    return _capitalise(text) + "."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def describe(goal: Mapping[str, Any], rng: np.random.Generator, style: str = "train") -> str:
    """A random instruction for `goal`; deterministic given the state of `rng`.

    `style` picks the relation vocabulary ("train" or "rephrase"); push, line and circle goals
    have a single vocabulary of their own.
    """
    kind = goal["kind"]
    if kind == "relation":
        templates, phrases = relation_vocabulary(style)
        template = _pick(rng, templates)
        phrase = _pick(rng, phrases[goal["direction"]])
        return render_relation(template, goal["object"], goal["reference"], phrase)
    relation_vocabulary(style)  # validates the style for every kind
    if kind == "push":
        return _pick(rng, EASY_PUSH_TEMPLATES[goal["direction"]]).format(obj=goal["object"])
    if kind == "all":
        return describe_all(goal["goals"], rng, style)
    if kind == "line":
        order = goal.get("order", list(COLORS))
        return _pick(rng, LINE_TEMPLATES).format(order=render_order(order))
    if kind == "circle":
        return _pick(rng, CIRCLE_TEMPLATES).format(center=goal.get("center", "green"))
    raise ValueError(f"unknown goal kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

DIRECTION_WORDS: dict[str, str] = {
    **dict.fromkeys(
        ("behind", "back", "backward", "backwards", "rear", "rearward", "rearwards"), "behind"
    ),
    **dict.fromkeys(("front", "forward", "forwards", "ahead", "frontward", "frontwards"), "front"),
    **dict.fromkeys(("left", "leftward", "leftwards"), "left"),
    **dict.fromkeys(("right", "rightward", "rightwards"), "right"),
}
assert set(DIRECTION_WORDS.values()) == set(GOAL_DIRECTIONS)

_WORD = re.compile(r"[a-z]+")
# Where a combined instruction (or explanation) is cut into one clause per relation.
_CLAUSE_SPLIT = re.compile(r";|\.(?:\s|$)|\band\b|\bthen\b|\balso\b|\bplus\b|\bwhile\b")


def _tokens(text: str) -> list[tuple[str, str | None, str | None]]:
    """(word, colour or None, direction or None) for each word of `text`."""
    out = []
    for word in _WORD.findall(text.lower()):
        colour = word if word in COLORS else None
        out.append((word, colour, DIRECTION_WORDS.get(word)))
    return out


def parse_relation(text: str) -> tuple[str, str, str] | None:
    """(object, reference, direction) named by a relation instruction, or None.

    The reference is the first colour after the direction phrase ("... left of the blue
    ball"); when no colour follows it ("... to the rear of it"), the sentence names the
    reference first, so the first colour is the reference and the next one the object.
    When several directions are mentioned, the first one followed by a colour decides.
    """
    toks = _tokens(text)
    colours = [(i, c) for i, (_, c, _) in enumerate(toks) if c]
    mentions = [(i, d) for i, (_, _, d) in enumerate(toks) if d]
    if not mentions or len({c for _, c in colours}) < 2:
        return None
    for idx, direction in mentions:
        after = [c for i, c in colours if i > idx]
        if after:
            ref = after[0]
            obj = next((c for _, c in colours if c != ref), None)
            return (obj, ref, direction) if obj else None
    # No colour after any direction: reference-first phrasing; use the last direction said.
    distinct = list(dict.fromkeys(c for _, c in colours))
    return distinct[1], distinct[0], mentions[-1][1]


def parse_relations(text: str) -> list[tuple[str, str, str]]:
    """Every relation named by a (possibly combined) instruction, clause by clause, in order."""
    out = []
    for chunk in _CLAUSE_SPLIT.split(text):
        parsed = parse_relation(chunk)
        if parsed is not None:
            out.append(parsed)
    return out


def parse_push(text: str) -> tuple[str, str] | None:
    """(colour, direction) of a one-push instruction: the first colour and first direction."""
    toks = _tokens(text)
    colour = next((c for _, c, _ in toks if c), None)
    direction = next((d for _, _, d in toks if d), None)
    if colour is None or direction is None:
        return None
    return colour, direction
