"""Meta-World as an EnvDefinition (`--env metaworld`).

Importing this needs no metaworld: the simulator, its policies and the MuJoCo scenes are loaded
when an env is made, so the CLEVR-only install can list and validate Meta-World suites.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kalm.envs import METAWORLD_ID
from kalm.envs.base import EnvDefinition, EnvSpecInfo, RandomAgent
from kalm.envs.metaworld.constants import ACTION_DIM, OBS_DIM, STATE_HIGH, STATE_LOW
from kalm.envs.metaworld.goals import episode_successes, is_success, max_steps, validate_goal
from kalm.envs.metaworld.projection import hold_structure
from kalm.envs.metaworld.published import published_episode, published_goal
from kalm.envs.metaworld.rewards import episode_rewards
from kalm.envs.metaworld.tasks import LEVELS


def _suite(level: str) -> Path:
    return Path(str(resources.files("kalm.envs.metaworld") / "suites" / f"{level}.jsonl"))


def make(**kwargs: Any):
    """The env (metaworld is imported on first reset)."""
    from kalm.envs.metaworld.env import MetaWorldKALMEnv

    return MetaWorldKALMEnv(**kwargs)


def _expert(seed: int, noise: float | str = 0.0):
    from kalm.envs.metaworld.expert import ScriptedAgent

    return ScriptedAgent(seed, noise=noise)


def _realism(observations: np.ndarray, actions: np.ndarray) -> dict[str, int]:
    from kalm.envs.metaworld.realism import check_transitions

    return check_transitions(observations, actions)


def _set_state(env: Any, obs: np.ndarray) -> None:
    from kalm.envs.metaworld.replay import set_state

    set_state(env.unwrapped, np.asarray(obs, dtype=np.float64))


def _draw_state(obs: np.ndarray, size: int = 256, caption: str = "") -> np.ndarray:
    from kalm.envs.metaworld.render import draw_state

    return draw_state(obs, size=size, caption=caption)


METAWORLD = EnvDefinition(
    name="metaworld",
    spec=EnvSpecInfo(env="metaworld", obs_dim=OBS_DIM, action_type="continuous",
                     action_dim=ACTION_DIM),
    state_low=STATE_LOW,
    state_high=STATE_HIGH,
    action_low=(-1.0,) * ACTION_DIM,
    action_high=(1.0,) * ACTION_DIM,
    make=make,
    validate_goal=validate_goal,
    is_success=is_success,
    max_steps=max_steps,
    episode_rewards=episode_rewards,
    episode_successes=episode_successes,
    suites={level: _suite(level) for level in LEVELS},
    policies={"expert": _expert, "random": RandomAgent},
    set_state=_set_state,
    realism_checks=_realism,
    state_units="",
    draw_state=_draw_state,
    published_goal=published_goal,
    published_episode=published_episode,
    project_state=hold_structure,
    gym_id=METAWORLD_ID,
)
