"""Meta-World (metaworld 3.1.1, v3 tasks) in KALM's setting: 22 tasks over four levels, the 91-d
entity state, state-only success and rewards. metaworld itself is imported only when an env is
made (`pip install kalm[metaworld]`)."""

from kalm.envs.metaworld.constants import ACTION_DIM, ENTITIES, OBS_DIM
from kalm.envs.metaworld.goals import GoalError, episode_successes, is_success, validate_goal
from kalm.envs.metaworld.rewards import episode_rewards
from kalm.envs.metaworld.tasks import LEVEL_TASKS, TASKS

__all__ = ["ACTION_DIM", "ENTITIES", "LEVEL_TASKS", "OBS_DIM", "TASKS", "GoalError",
           "episode_rewards", "episode_successes", "is_success", "validate_goal"]
