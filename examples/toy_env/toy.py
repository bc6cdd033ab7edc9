"""A 5x5 grid world for kalm: the worked example of docs/custom-env.md.

An agent stands on a cell of a 5x5 grid; the observation is its position (x, y), x growing to
the right and y upwards. Four actions move it one cell up, down, left or right (walls stop it).
A goal names a target cell, `{"target": "top-left"}`, given to the agent as text such as
"move to the top-left corner". The train suite holds the four corners and the centre; the unseen
suite the middles of the four edges, whose words the agent has only seen in other combinations.

Use it with every `kalm` command through the env string `examples/toy_env/toy.py:TOY`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kalm.envs.base import EnvDefinition, EnvSpecInfo, reset_options

SIZE = 5
TARGETS: dict[str, tuple[int, int]] = {
    "top-left": (0, 4), "top": (2, 4), "top-right": (4, 4),
    "left": (0, 2), "center": (2, 2), "right": (4, 2),
    "bottom-left": (0, 0), "bottom": (2, 0), "bottom-right": (4, 0),
}
MOVES = np.array([(0, 1), (0, -1), (-1, 0), (1, 0)])  # up, down, left, right
STEP_LIMIT = 12  # the farthest target is 8 moves away
SUCCESS_REWARD = 1.0
SHAPING = 0.1  # per cell of progress towards the target
SUITES = Path(__file__).resolve().parent / "suites"


# --------------------------------------------------------------------- goals, success, rewards
def validate_goal(goal: Any) -> dict[str, Any]:
    """A normalised copy of a goal dict; ValueError names the offending key."""
    if not isinstance(goal, Mapping):
        raise ValueError(f"a goal must be a JSON object, got {type(goal).__name__}")
    unknown = sorted(set(goal) - {"target"})
    if unknown:
        raise ValueError(f"unknown goal key(s) {', '.join(map(repr, unknown))}; "
                         "expected 'target'")
    if "target" not in goal:
        raise ValueError("goal is missing key 'target'")
    if goal["target"] not in TARGETS:
        raise ValueError(f"unknown 'target' {goal['target']!r}; expected one of "
                         f"{', '.join(TARGETS)}")
    return {"target": goal["target"]}


def distance(goal: Mapping[str, Any], obs: np.ndarray) -> float:
    """Manhattan distance to the target (continuous, so imagined states get one too)."""
    return float(np.abs(np.asarray(obs, dtype=np.float64)[:2] - TARGETS[goal["target"]]).sum())


def is_success(goal: Mapping[str, Any], obs: np.ndarray) -> bool:
    """On the target cell (imagined states count when they round to it)."""
    d = np.abs(np.asarray(obs, dtype=np.float64)[:2] - TARGETS[goal["target"]])
    return bool((d < 0.5).all())


def reward(goal: Mapping[str, Any], prev: np.ndarray, obs: np.ndarray) -> float:
    if is_success(goal, obs):
        return SUCCESS_REWARD
    return SHAPING * (distance(goal, prev) - distance(goal, obs))


def episode_rewards(goal: Mapping[str, Any], observations: np.ndarray) -> np.ndarray:
    """Rewards of an episode (observations has one row more than there are steps)."""
    return np.array([reward(goal, observations[t], observations[t + 1])
                     for t in range(len(observations) - 1)], dtype=np.float32)


def max_steps(goal: Mapping[str, Any]) -> int:
    return STEP_LIMIT


# --------------------------------------------------------------------- language
_CORNER = ("move to the {v}-{h} corner", "go to the {v} {h} corner",
           "head for the {v}-{h} corner of the grid", "reach the {v} {h} corner")
_EDGE = ("move to the middle of the {s} edge", "go to the {s} side",
         "head for the centre of the {s} edge")
_CENTER = ("move to the center", "go to the middle of the grid", "head for the centre")
_WORDS = {"top": "v", "upper": "v", "bottom": "v", "lower": "v", "left": "h", "right": "h"}
_CANON = {"upper": "top", "lower": "bottom"}


def describe(goal: Mapping[str, Any], rng: np.random.Generator) -> str:
    """One instruction for a goal, drawn from the templates."""
    target = goal["target"]
    if target == "center":
        templates, fill = _CENTER, {}
    elif "-" in target:
        v, h = target.split("-")
        templates, fill = _CORNER, {"v": v, "h": h}
    else:
        templates, fill = _EDGE, {"s": target}
    return templates[int(rng.integers(len(templates)))].format(**fill)


def parse_target(text: str) -> str | None:
    """The target a text names (None when it names none, or contradicts itself)."""
    found: dict[str, set[str]] = {"v": set(), "h": set()}
    words = re.findall(r"[a-z]+", text.lower())
    for w in words:
        if w in _WORDS:
            found[_WORDS[w]].add(_CANON.get(w, w))
    if len(found["v"]) > 1 or len(found["h"]) > 1:
        return None
    v, h = next(iter(found["v"]), None), next(iter(found["h"]), None)
    if v and h:
        return f"{v}-{h}"
    if v or h:
        return v or h
    return "center" if {"center", "centre", "middle"} & set(words) else None


def explanation_correct(text: str, goal: Mapping[str, Any]) -> bool:
    """The grounding metric's judge: does the generated goal text name the goal's target?"""
    return parse_target(text) == goal["target"]


# --------------------------------------------------------------------- the environment
class GridEnv(gym.Env):
    """The grid world behind kalm's env protocol (see docs/custom-env.md)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, SIZE - 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(MOVES))
        self.pos = np.zeros(2, dtype=np.int64)
        self.goal: dict[str, Any] = {}
        self.instruction = ""
        self._steps = 0

    def set_position(self, xy: Any) -> None:
        """Put the agent on a cell (kalm's replay hook rounds imagined states to cells)."""
        xy = np.rint(np.asarray(xy, dtype=np.float64).reshape(-1))
        if xy.shape != (2,) or not np.isfinite(xy).all():
            raise ValueError(f"a position is 2 finite numbers, got {xy.tolist()}")
        self.pos = np.clip(xy, 0, SIZE - 1).astype(np.int64)

    def _obs(self) -> np.ndarray:
        return self.pos.astype(np.float32)

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = reset_options(options)
        init = options.get("init")
        if init is None:
            self.pos = self.np_random.integers(0, SIZE, size=2)
        else:
            self.set_position(init)
        goal = options.get("goal")
        self.goal = (validate_goal(goal) if goal is not None
                     else {"target": str(self.np_random.choice(list(TARGETS)))})
        instruction = options.get("instruction")
        self.instruction = (describe(self.goal, self.np_random) if instruction is None
                            else str(instruction))
        self._steps = 0
        obs = self._obs()
        return obs, {"is_success": is_success(self.goal, obs), "goal": self.goal,
                     "instruction": self.instruction}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, {len(MOVES)}), got {action!r}")
        prev = self._obs()
        self.pos = np.clip(self.pos + MOVES[int(action)], 0, SIZE - 1)
        self._steps += 1
        obs = self._obs()
        success = is_success(self.goal, obs)
        truncated = not success and self._steps >= max_steps(self.goal)
        return obs, reward(self.goal, prev, obs), success, truncated, {"is_success": success}


# --------------------------------------------------------------------- the scripted expert
class GridExpert:
    """Moves along the axis with the larger remaining distance: a shortest path, always."""

    name = "expert"

    def __init__(self) -> None:
        self.target = np.zeros(2)

    def begin(self, env: gym.Env, goal: Mapping[str, Any], instruction: str) -> None:
        self.target = np.asarray(TARGETS[goal["target"]], dtype=np.float64)

    def act(self, obs: np.ndarray) -> int:
        dx, dy = self.target - np.asarray(obs, dtype=np.float64)[:2]
        if abs(dx) >= abs(dy) and dx != 0:
            return 3 if dx > 0 else 2
        if dy != 0:
            return 0 if dy > 0 else 1
        return 0  # already there (does not happen: episodes start off the target)


def _set_state(env: gym.Env, obs: np.ndarray) -> None:
    env.unwrapped.set_position(obs)


TOY = EnvDefinition(
    name="toy-grid",
    spec=EnvSpecInfo(env="toy-grid", obs_dim=2, action_type="discrete", action_dim=len(MOVES)),
    state_low=(0.0, 0.0),
    state_high=(SIZE - 1.0, SIZE - 1.0),
    make=GridEnv,
    validate_goal=validate_goal,
    is_success=is_success,
    max_steps=max_steps,
    episode_rewards=episode_rewards,
    suites={"train": SUITES / "train.jsonl", "unseen": SUITES / "unseen.jsonl"},
    policies={"expert": lambda seed: GridExpert()},
    explanation_correct=explanation_correct,
    set_state=_set_state,
)
