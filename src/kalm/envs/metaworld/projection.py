"""Put a learned model's predicted Meta-World state back among the states the arm can produce.

A dynamics ensemble fitted on scripted episodes is blind to structure every real transition
obeys, and a planner searching on it finds exactly those blind spots (issue 25: absent entities
drift away from their zeros, a button "pressed" with the hand 30 cm away). This is
`EnvDefinition.project_state` for Meta-World, applied after every predicted step
(`DynamicsEnsemble.with_projection`): what is fixed stays fixed, and an entity moves only when
something can be touching it. Each rule is one that real transitions satisfy (the hand-made cases
are in `tests/test_metaworld_projection.py`; `tests/test_metaworld_env.py` checks that scripted
episodes pass through unchanged):

- an absent entity (a block of exact zeros) stays zero, and so does the window's zero
  quaternion;
- the target location and the wall never move;
- a fixed part (button, faucet base, coffee button, wall, nail) keeps its orientation, and an
  articulated part moves only along its joint (button and nail in y, the window in x);
- an entity farther than its contact radius from the gripper, before and after the step, moves
  its position by at most its free step (FREE_MOTION: what real entities do untouched); the
  hammer counts as a toucher of the nail.
"""

from __future__ import annotations

import numpy as np

from kalm.envs.metaworld.constants import (
    ENTITIES,
    ENTITY_POS,
    ENTITY_QUAT,
    ENTITY_SLICE,
    HAND,
    TARGET,
)
from kalm.envs.metaworld.realism import FIXED_ORIENTATION, OFF_AXIS

# Per entity: (contact radius R in m, free step F in m). Farther than R from the tcp before and
# after a step, an entity's position moves by at most F: what it does in real episodes without
# contact (settling on the first steps, a mug wobbling, the door swinging on after a push). Read
# off scripted `expert:noise=mix` episodes with `free_motion` (docs/metaworld.md "What moves
# without contact"): F is twice the largest such step seen at that R, at least 2 mm.
FREE_MOTION = {
    "target_object": (0.15, 0.002), "button": (0.15, 0.002), "lock": (0.20, 0.002),
    "handle": (0.15, 0.065), "window": (0.15, 0.002), "faucet": (0.10, 0.002),
    "coffee": (0.15, 0.005), "coffee_button": (0.20, 0.002), "hammer": (0.15, 0.017),
    "nail": (0.25, 0.002), "soccer": (0.15, 0.005),
}
# what else can push an entity (the hammer drives the nail)
TOUCHERS = {"nail": ("hammer",)}
ZERO_QUAT = 1e-6


def _far(hand: np.ndarray, pos: np.ndarray, radius: float) -> np.ndarray:
    return np.linalg.norm(hand - pos, axis=-1) > radius


def hold_structure(prev: np.ndarray, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    """STATE (..., 91) after the rules above; PREV (..., 91) is the state the step started
    from (broadcast against STATE). The actions are not needed: contact is read off the
    states."""
    del actions
    p = np.asarray(prev, dtype=np.float32)
    s = np.array(state, dtype=np.float32, copy=True)
    p = np.broadcast_to(p, s.shape)
    s[..., TARGET] = p[..., TARGET]
    for e in ENTITIES:
        block = ENTITY_SLICE[e]
        hold = np.asarray(~np.any(p[..., block] != 0, axis=-1))
        if e == "wall":
            hold = np.ones_like(hold)
        s[..., block] = np.where(hold[..., None], p[..., block], s[..., block])
        if e in FREE_MOTION:
            radius, step = FREE_MOTION[e]
            pos = ENTITY_POS[e]
            far = (_far(p[..., HAND], p[..., pos], radius)
                   & _far(s[..., HAND], s[..., pos], radius))
            for other in TOUCHERS.get(e, ()):
                o = ENTITY_POS[other]
                present = np.any(p[..., ENTITY_SLICE[other]] != 0, axis=-1)
                far = far & ~(~_far(p[..., o], p[..., pos], radius) & present)
            delta = s[..., pos] - p[..., pos]
            norm = np.linalg.norm(delta, axis=-1, keepdims=True)
            scale = np.where(far[..., None] & (norm > step), step / np.maximum(norm, 1e-12), 1.0)
            s[..., pos] = p[..., pos] + delta * scale
        q = ENTITY_QUAT[e]
        if e in FIXED_ORIENTATION:
            s[..., q] = p[..., q]
        zero_quat = np.all(np.abs(p[..., q]) < ZERO_QUAT, axis=-1)
        s[..., q] = np.where(zero_quat[..., None], 0.0, s[..., q])
        if e in OFF_AXIS:
            start = ENTITY_SLICE[e].start
            for axis in OFF_AXIS[e]:
                s[..., start + axis] = p[..., start + axis]
    return s


def free_motion(observations: np.ndarray, lengths: np.ndarray, radius: float
                ) -> dict[str, dict]:
    """Per entity, over the real steps of episodes (N, T+1, 91) where the tcp is farther than
    `radius` from it before and after the step: how many such steps, and the largest and
    99th-percentile distance it moved in one. Where FREE_MOTION comes from."""
    obs = np.asarray(observations, dtype=np.float64)
    out: dict[str, dict] = {}
    for e in FREE_MOTION:
        pos = ENTITY_POS[e]
        steps: list[np.ndarray] = []
        for i, n in enumerate(np.asarray(lengths)):
            o = obs[i, : int(n) + 1]
            if not np.any(o[0, ENTITY_SLICE[e]] != 0):
                continue
            far = (_far(o[:-1, HAND], o[:-1, pos], radius)
                   & _far(o[1:, HAND], o[1:, pos], radius))
            steps.append(np.linalg.norm(o[1:, pos] - o[:-1, pos], axis=-1)[far])
        if steps and sum(map(len, steps)):
            d = np.concatenate(steps)
            out[e] = {"far_steps": len(d), "max": float(d.max()),
                      "p99": float(np.quantile(d, 0.99))}
    return out
