"""KALM's two hard composites, rebuilt on metaworld v3 (which has neither).

- make-coffee: the coffee-push scene (it already holds the machine and its button); slot 1 is the
  mug, slot 2 the machine's button (site `buttonStart`). The target stays the mug goal T; the
  button target is T + (0, 0.03, 0.3) (goals.BUTTON_FROM_MUG_GOAL).
- locked-door-open: the door-lock scene with a hinge added to the door (v3's door-lock model has
  none), built programmatically with MjSpec (no XML copied). Slot 1 is the lock, slot 2 the
  handle; the target is the door-open target T, the unlock target T + (0.4, 0.292, 0.061).

Success in `info["success"]` is the ordered two-stage judge on the simulator's observation (and,
for locked-door-open's stage 1, the door hinge joint), with the state judge's conditions
(goals.stage_holds). Only imported where metaworld is installed.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium.spaces import Box
from metaworld.envs.sawyer_coffee_push_v3 import SawyerCoffeePushEnvV3
from metaworld.envs.sawyer_door_unlock_v3 import SawyerDoorUnlockEnvV3
from scipy.spatial.transform import Rotation

from kalm.envs.metaworld.goals import DOOR_CLOSED_ANGLE

DOOR_OPEN_OFFSET = np.array([-0.3, -0.45, 0.0])  # door-open v3's target relative to the door


class _Staged:
    """The ordered judge inside the simulator: `_stage1` latches once stage 1 holds."""

    _stage1: bool = False

    def _stage_checks(self, obs: np.ndarray) -> tuple[bool, bool]:
        raise NotImplementedError

    def evaluate_state(self, obs: np.ndarray, action: Any) -> tuple[float, dict[str, Any]]:
        first, second = self._stage_checks(obs)
        self._stage1 = self._stage1 or first
        success = float(self._stage1 and second)
        # metaworld's dense reward is not used by kalm (rewards.py); report the stages instead
        return success, {"success": success, "stage1": float(self._stage1),
                         "near_object": 0.0, "grasp_success": 0.0, "grasp_reward": 0.0,
                         "in_place_reward": 0.0, "obj_to_target": 0.0, "unscaled_reward": 0.0}


class MakeCoffeeEnv(_Staged, SawyerCoffeePushEnvV3):
    """Push the mug under the nozzle, then press the machine's button."""

    def _get_pos_objects(self) -> np.ndarray:
        return np.hstack((self.get_body_com("obj"), self._get_site_pos("buttonStart")))

    def _get_quat_objects(self) -> np.ndarray:
        mug = Rotation.from_matrix(self.data.geom("mug").xmat.reshape(3, 3)).as_quat()
        return np.hstack((mug, (1.0, 0.0, 0.0, 0.0)))

    def reset_model(self) -> np.ndarray:
        super().reset_model()
        mujoco.mj_forward(self.model, self.data)  # the machine moved after the last set_state
        self._stage1 = False
        return self._get_obs()

    def _stage_checks(self, obs: np.ndarray) -> tuple[bool, bool]:
        t = self._target_pos
        mug, button = obs[4:7], obs[11:14]
        return (bool(np.linalg.norm(mug - t) <= 0.07),
                bool(abs(t[1] + 0.03 - button[1]) <= 0.02))


class LockedDoorOpenEnv(_Staged, SawyerDoorUnlockEnvV3):
    """Unlock the door, then pull it open."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # observations clip the goal to `goal_space`: door-unlock's covers the unlock target,
        # ours is the open target
        space = self._random_reset_space
        self.goal_space = Box(space.low + DOOR_OPEN_OFFSET, space.high + DOOR_OPEN_OFFSET,
                              dtype=np.float64)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        spec = mujoco.MjSpec.from_file(self.fullpath)
        door = spec.body("door_link")
        door.add_joint(name="doorjoint", type=mujoco.mjtJoint.mjJNT_HINGE, axis=[0, 0, 1],
                       range=[-2.0, 0.0], limited=True, damping=2.0, armature=0.001)
        # the hinge takes qpos[9] (the door body comes first in the tree), the lock moves to
        # qpos[10]: name the lock's joint so it is addressed by name, never by index
        spec.body("lock_link").joints[0].name = "lockjoint"
        for geom in door.geoms:
            if geom.meshname == "door_handle":
                geom.name = "handle"
        model = spec.compile()
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def _set_obj_xyz(self, pos: Any) -> None:
        """The lock angle, addressed by name (the added door hinge shifted its qpos index)."""
        qpos, qvel = self.data.qpos.flat.copy(), self.data.qvel.flat.copy()
        qpos[self.model.joint("lockjoint").qposadr[0]] = pos
        qvel[self.model.joint("lockjoint").dofadr[0]] = 0
        qpos[self.model.joint("doorjoint").qposadr[0]] = 0.0
        qvel[self.model.joint("doorjoint").dofadr[0]] = 0
        self.set_state(qpos, qvel)

    def _get_pos_objects(self) -> np.ndarray:
        return np.hstack((self._get_site_pos("lockStartUnlock"),
                          self.data.geom("handle").xpos.copy()))

    def _get_quat_objects(self) -> np.ndarray:
        handle = Rotation.from_matrix(self.data.geom("handle").xmat.reshape(3, 3)).as_quat()
        return np.hstack((self.data.body("door_link").xquat, handle))

    def reset_model(self) -> np.ndarray:
        super().reset_model()
        mujoco.mj_forward(self.model, self.data)
        self._unlock_target = self._target_pos.copy()
        self._target_pos = self.model.body("door").pos.copy() + DOOR_OPEN_OFFSET
        self._stage1 = False
        return self._get_obs()

    def door_angle(self) -> float:
        """The door hinge's angle (rad; 0 closed, negative opening), read from its joint."""
        return float(self.data.qpos[self.model.joint("doorjoint").qposadr[0]])

    def _stage_checks(self, obs: np.ndarray) -> tuple[bool, bool]:
        # stage 1, the spec's: the lock at its unlock target with the door closed (the state
        # judge reads the angle from the lock block's quaternion, this one from the hinge)
        lock, handle = obs[4:7], obs[11:14]
        closed = abs(self.door_angle()) <= DOOR_CLOSED_ANGLE
        first = bool(abs(self._unlock_target[0] - lock[0]) <= 0.02 and closed)
        return first, bool(abs(handle[0] - self._target_pos[0]) <= 0.08)
