"""Putting the simulator into a given 91-d state, so imagined rollouts can be replayed.

Possible where the layout is a free object and a goal: metaworld draws both as one `rand_vec`
(object xyz + goal xyz), so freezing that vector and resetting rebuilds the scene exactly as
the env's own reset would (goal sites, the coffee machine behind the mug goal, the reward's
start values), with the hand driven to the state's tcp first. Articulated tasks (doors, window,
faucet, buttons) would need the inverse of site position -> joint angle, and hammer's nail
joint is not in the state: those raise `StateNotSettable`, which the replay diagnostics turn
into null numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kalm.envs.metaworld.constants import ENTITY_POS, HAND, TARGET, TCP_OFFSET
from kalm.envs.metaworld.goals import as_state

# task -> the entity whose position, with the target, makes the task's rand_vec
SETTABLE = {"reach": "target_object", "push": "target_object", "pick-place": "target_object",
            "reach-wall": "target_object", "push-wall": "target_object",
            "pick-place-wall": "target_object", "coffee-push": "coffee", "soccer": "soccer"}
HAND_PASSES = 2
MIN_OBJECT_GOAL_XY = 0.15  # the tasks' resets redraw closer layouts (they would loop forever)


class StateNotSettable(NotImplementedError):
    """This task's simulator state cannot be rebuilt from a 91-d state."""


def set_state(env: Any, state: np.ndarray) -> None:
    """Rebuild the current task's scene (env.goal's task, set by the last reset) at `state`;
    the episode restarts there (step count, success and reward bookkeeping)."""
    s = as_state(state)
    task = env.current_task
    if task not in SETTABLE:
        raise StateNotSettable(f"set_state is not available for task {task!r} (only "
                               f"{', '.join(SETTABLE)})")
    obj, goal = s[ENTITY_POS[SETTABLE[task]]], s[TARGET]
    if not np.any(obj):
        raise ValueError(f"state has no {SETTABLE[task]!r} block (zeros), so it is not a "
                         f"{task!r} state")
    if np.linalg.norm(obj[:2] - goal[:2]) < MIN_OBJECT_GOAL_XY:
        raise StateNotSettable(f"{task!r}: object and goal are closer than "
                               f"{MIN_OBJECT_GOAL_XY} m in xy, which the task's reset redraws")
    sub = env.sub_env(task)
    hand_init, frozen, seeded = sub.hand_init_pos, sub._freeze_rand_vec, sub.seeded_rand_vec
    try:
        hand = np.asarray(s[HAND] - TCP_OFFSET)
        sub._freeze_rand_vec = True
        sub._last_rand_vec = np.concatenate([obj, goal])
        for _ in range(HAND_PASSES):  # the tcp-hand offset varies with the fingers: correct it
            sub.hand_init_pos = hand
            sub.reset()
            hand = hand + (s[HAND] - sub.tcp_center)
    finally:
        sub.hand_init_pos, sub._freeze_rand_vec = hand_init, frozen
        sub.seeded_rand_vec = seeded
    env.restart_from_simulator()
