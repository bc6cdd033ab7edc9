"""CLEVR-Robot: the five-ball pushing environment of KALM."""

from kalm.envs.clevr.constants import COLORS, GOAL_DIRECTIONS, NUM_ACTIONS, OBS_DIM
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.goals import GoalError, is_success, validate_goal
from kalm.envs.clevr.rewards import episode_rewards, reward

__all__ = [
    "COLORS",
    "GOAL_DIRECTIONS",
    "NUM_ACTIONS",
    "OBS_DIM",
    "CLEVRRobotEnv",
    "GoalError",
    "episode_rewards",
    "is_success",
    "reward",
    "validate_goal",
]
