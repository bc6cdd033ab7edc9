"""The metaworld side: building one v3 (or composite) env per task and reading KALM's 91-d state.

Only imported where metaworld is installed (env.py imports it lazily). What this fixes about
v3 (docs/metaworld.md, "v3 pitfalls"): `reset(seed)` is ignored, so layouts are drawn from the
env's own generator after `seed()`; the reset observation can be stale (window, faucet,
make-coffee), so s0 is read after `mj_forward`; the default 500-step limit raises past it.
"""

from __future__ import annotations

import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.sawyer_xyz_env import SawyerXYZEnv

from kalm.envs.metaworld.composite import LockedDoorOpenEnv, MakeCoffeeEnv
from kalm.envs.metaworld.constants import (
    ENTITY_SLICE,
    MAX_EPISODE_STEPS,
    OBS_DIM,
    WALL_BLOCK,
)
from kalm.envs.metaworld.tasks import TASKS

_COMPOSITES = {"make-coffee": MakeCoffeeEnv, "locked-door-open": LockedDoorOpenEnv}


def build(task: str, max_path_length: int = MAX_EPISODE_STEPS,
          render_mode: str | None = None) -> SawyerXYZEnv:
    """A goal-observable env of `task` whose every reset draws a fresh layout from its own
    generator (seed it with `sub.seed(s)` before `reset()`)."""
    spec = TASKS[task]
    cls = _COMPOSITES[task] if spec.composite else ALL_V3_ENVIRONMENTS[spec.env_name]
    sub = cls(render_mode=render_mode)
    sub._partially_observable = False  # the goal enters the observation
    sub.__dict__.pop("sawyer_observation_space", None)  # cached with the goal hidden
    sub._set_task_called = True
    sub._freeze_rand_vec = False
    sub.seeded_rand_vec = True
    sub.max_path_length = max_path_length
    sub.seed(0)
    return sub


def fresh_native_obs(sub: SawyerXYZEnv) -> np.ndarray:
    """The 39-d observation of the current simulator state, recomputed after `mj_forward` and
    clipped as `step` clips (the previous-frame half repeats the current frame)."""
    mujoco.mj_forward(sub.model, sub.data)
    cur = sub._get_curr_obs_combined_no_goal()
    obs = np.hstack((cur, cur, sub._get_pos_goal()))
    space = sub.sawyer_observation_space
    return np.clip(obs, space.low, space.high)


def native_to_state(task: str, obs: np.ndarray, tcp: np.ndarray) -> np.ndarray:
    """KALM's 91-d float32 state from a 39-d observation and the tcp: gripper (tcp, opening),
    target, then the task's slots written into their entity blocks; every other block stays
    exactly zero."""
    s = np.zeros(OBS_DIM, dtype=np.float32)
    s[0:3] = tcp
    s[3] = obs[3]
    s[4:7] = obs[36:39]
    for dst, src in _SLOT_COPIES[task]:
        s[dst] = obs[src]
    if task in WALL_BLOCK:
        s[ENTITY_SLICE["wall"]] = WALL_BLOCK[task]
    return s


# per task: (state block, observation slot) pairs, computed once
_SLOT_COPIES = {name: [(ENTITY_SLICE[e], slice(4 + 7 * k, 11 + 7 * k))
                       for k, e in enumerate(spec.slots)] for name, spec in TASKS.items()}


def tcp(sub: SawyerXYZEnv) -> np.ndarray:
    """metaworld's `tcp_center` (midpoint of the finger-pad sites), from cached site ids: the
    env reads it every step."""
    ids = sub.__dict__.get("_kalm_pad_sites")
    if ids is None:
        ids = (sub.model.site("rightEndEffector").id, sub.model.site("leftEndEffector").id)
        sub.__dict__["_kalm_pad_sites"] = ids
    xpos = sub.data.site_xpos
    return (xpos[ids[0]] + xpos[ids[1]]) / 2.0


def state_of(task: str, sub: SawyerXYZEnv, obs: np.ndarray | None = None) -> np.ndarray:
    """The 91-d state of the sub-env now (`obs`: the observation `step` just returned)."""
    native = fresh_native_obs(sub) if obs is None else obs
    return native_to_state(task, native, tcp(sub))


def read_wall(sub: SawyerXYZEnv) -> np.ndarray:
    """The wall block of a wall task read from the model (what WALL_BLOCK holds)."""
    return np.hstack((sub.get_body_com("wall"), sub.data.body("wall").xquat))
