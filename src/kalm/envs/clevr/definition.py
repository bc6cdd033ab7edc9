"""CLEVR-Robot as an EnvDefinition: thin wrappers around the existing CLEVR functions."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kalm.envs import CLEVR_ID
from kalm.envs.base import EnvDefinition, EnvSpecInfo, RandomAgent
from kalm.envs.clevr.constants import (
    INIT_HIGH,
    INIT_LOW,
    NUM_ACTIONS,
    NUM_BALLS,
    OBS_DIM,
    TABLE_HIGH,
    TABLE_LOW,
)
from kalm.envs.clevr.contacts import separate_balls
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.goals import is_success, max_steps, validate_goal
from kalm.envs.clevr.planning import batch_successes, goal_distance
from kalm.envs.clevr.published import published_goal
from kalm.envs.clevr.realism import batch_plausible
from kalm.envs.clevr.rewards import episode_rewards
from kalm.envs.clevr.symmetry import random_symmetry

LEVELS = ("train", "rephrase", "easy", "hard")


def _suite(level: str) -> Path:
    return Path(str(resources.files("kalm.envs.clevr") / "suites" / f"{level}.jsonl"))


def _expert(seed: int):
    from kalm.envs.clevr.expert import ExpertAgent

    return ExpertAgent()


def explanation_correct(text: str, goal: Mapping[str, Any]) -> bool:
    """Does the text name the goal's colours and direction? (relation and push goals)"""
    from kalm.envs.clevr.language import parse_push, parse_relation

    if goal["kind"] == "relation":
        return parse_relation(text) == (goal["object"], goal["reference"], goal["direction"])
    if goal["kind"] == "push":
        return parse_push(text) == (goal["object"], goal["direction"])
    return False


def _draw_state(obs: np.ndarray, size: int = 220, caption: str = "") -> np.ndarray:
    from kalm.envs.clevr.render import draw_state

    return draw_state(obs, size=size, caption=caption)


def _realism(observations: np.ndarray, actions: np.ndarray) -> dict[str, int]:
    from kalm.envs.clevr.realism import check_transitions

    return check_transitions(observations, actions)


def _replay(env: CLEVRRobotEnv, goal: Mapping[str, Any], s0: np.ndarray, actions):
    from kalm.envs.clevr.realism import replay

    return replay(env, goal, s0, actions)


def _ball_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from kalm.envs.clevr.realism import ball_distance

    return ball_distance(a, b)


def _set_state(env: CLEVRRobotEnv, obs: np.ndarray) -> None:
    env.unwrapped.set_ball_positions(np.asarray(obs, dtype=np.float64))


CLEVR = EnvDefinition(
    name="clevr",
    spec=EnvSpecInfo(env="clevr", obs_dim=OBS_DIM, action_type="discrete",
                     action_dim=NUM_ACTIONS),
    # after a step ball centres lie on the reachable table; at reset they are sampled from the
    # original's larger box (x ~ U(-0.5, 0.5), y ~ U(-0.3, 0.5)), partly inside the walls
    state_low=tuple(float(v) for _ in range(NUM_BALLS) for v in TABLE_LOW),
    state_high=tuple(float(v) for _ in range(NUM_BALLS) for v in TABLE_HIGH),
    reset_low=tuple(float(v) for _ in range(NUM_BALLS) for v in INIT_LOW),
    reset_high=tuple(float(v) for _ in range(NUM_BALLS) for v in INIT_HIGH),
    make=CLEVRRobotEnv,
    validate_goal=validate_goal,
    is_success=is_success,
    max_steps=max_steps,
    episode_rewards=episode_rewards,
    suites={level: _suite(level) for level in LEVELS},
    policies={"expert": _expert, "random": RandomAgent},
    explanation_correct=explanation_correct,
    set_state=_set_state,
    replay=_replay,
    realism_checks=_realism,
    state_distance=_ball_distance,
    state_units="m",
    draw_state=_draw_state,
    published_goal=published_goal,
    gym_id=CLEVR_ID,
    batch_successes=batch_successes,
    goal_distance=goal_distance,
    batch_plausible=batch_plausible,
    project_state=separate_balls,
    dynamics_symmetry=random_symmetry,
    # 2: the pusher's contact weights of the reference simulator (scene.match_reference_contacts)
    version=2,
)
