"""CLEVR-Robot as a Gymnasium environment on the official `mujoco` bindings.

One action teleports the pusher 0.15 x d behind the chosen ball (read live from the simulator, so
the first push after setting a state starts from the new positions) and pushes with force d for 40
physics steps. Ball velocities carry over between actions, as in the original.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from kalm.envs.base import reset_options
from kalm.envs.clevr import scene
from kalm.envs.clevr.constants import (
    COLORS,
    GOAL_DIRECTIONS,
    INIT_HIGH,
    INIT_LOW,
    MIN_INIT_CENTRE_DIST,
    NUM_ACTIONS,
    NUM_BALLS,
    NUM_PUSH_DIRECTIONS,
    OBS_DIM,
    PUSH_VECTORS,
    TABLE_HIGH,
    TABLE_LOW,
)
from kalm.envs.clevr.goals import is_success, max_steps, validate_goal
from kalm.envs.clevr.rewards import reward as goal_reward

PUSH_OFFSET = 0.15
_OBS_QPOS = np.array([scene.BALL_QPOS * i + k for i in range(NUM_BALLS) for k in (0, 1)])
PHYSICS_STEPS_PER_ACTION = 40
INIT_MARGIN = 0.01  # the original's "min_margin" rule along the cardinal axes
INIT_REGIONS = ("paper", "table")


class CLEVRRobotEnv(gym.Env):
    """Five balls, a point-mass pusher, Discrete(40) push actions, 10-d ball-position observations.

    `reset(options=...)` accepts `goal` (a goal dict), `instruction` (free text) and `init`
    (10 floats: ball x, y in colour order) to start from an exact state. Without a goal a random
    relation goal is drawn. `init_region="paper"` samples initial positions from the original's
    box (balls may start inside a wall and are ejected by the first action); `"table"` samples
    only where ball centres can rest.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        init_region: str = "paper",
        image_size: int = 256,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        if init_region not in INIT_REGIONS:
            raise ValueError(f"init_region must be one of {INIT_REGIONS}, got {init_region!r}")
        self.render_mode = render_mode
        self.init_region = init_region
        self.image_size = image_size
        self._max_steps_override = max_episode_steps
        self.model = scene.build_model()
        self.data = mujoco.MjData(self.model)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        self.goal: dict[str, Any] = {}
        self.instruction = ""
        self._steps = 0
        self._limit = 0
        self._last_action: int | None = None

    # ----------------------------------------------------------------------- state access
    def ball_positions(self) -> np.ndarray:
        """The 10 ball coordinates as float64, read live from qpos."""
        return self.data.qpos[_OBS_QPOS]

    def _obs(self) -> np.ndarray:
        return self.ball_positions().astype(np.float32)

    def set_ball_positions(self, xy: Sequence[float] | np.ndarray) -> None:
        """Place the balls at rest at `xy` (10 floats); the pusher returns to the origin."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1)
        if xy.shape != (OBS_DIM,):
            raise ValueError(f"init must have {OBS_DIM} values (x, y per ball), got {xy.size}")
        if not np.all(np.isfinite(xy)):
            raise ValueError(f"init contains NaN or inf: {xy.tolist()}")
        mujoco.mj_resetData(self.model, self.data)
        for i in range(NUM_BALLS):
            base = scene.BALL_QPOS * i
            self.data.qpos[base : base + 7] = (xy[2 * i], xy[2 * i + 1], scene.BALL_Z, 1, 0, 0, 0)
        mujoco.mj_forward(self.model, self.data)

    def get_sim_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Full simulator state (qpos, qvel), for lookahead on a copy."""
        return self.data.qpos.copy(), self.data.qvel.copy()

    def set_sim_state(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        qpos, qvel = state
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        self.data.ctrl[:] = 0
        mujoco.mj_forward(self.model, self.data)

    # ----------------------------------------------------------------------- dynamics
    def apply_action(self, action: int) -> None:
        """Simulate one push (no reward, no bookkeeping): used by step() and lookahead."""
        ball, direction = divmod(int(action), NUM_PUSH_DIRECTIONS)
        d = PUSH_VECTORS[direction]
        base = scene.BALL_QPOS * ball
        start = self.data.qpos[base : base + 2] - PUSH_OFFSET * d
        self.data.qpos[scene.PUSHER_QPOS] = start
        self.data.qvel[scene.PUSHER_QVEL] = 0.0
        self.data.ctrl[:] = d
        mujoco.mj_step(self.model, self.data, nstep=PHYSICS_STEPS_PER_ACTION)

    def sample_initial_positions(self, rng: np.random.Generator) -> np.ndarray:
        """Rejection-sample ball centres at least 0.36 apart (10 tries per ball, then restart)."""
        paper = self.init_region == "paper"
        low, high = (INIT_LOW, INIT_HIGH) if paper else (TABLE_LOW, TABLE_HIGH)
        while True:
            placed: list[np.ndarray] = []
            for _ in range(NUM_BALLS):
                for _ in range(10):
                    p = rng.uniform(low, high)
                    if all(_init_ok(p, q) for q in placed):
                        placed.append(p)
                        break
                else:
                    break
            if len(placed) == NUM_BALLS:
                return np.concatenate(placed)

    def sample_goal(self, rng: np.random.Generator) -> dict[str, Any]:
        a, b = rng.choice(NUM_BALLS, size=2, replace=False)
        direction = GOAL_DIRECTIONS[int(rng.integers(len(GOAL_DIRECTIONS)))]
        return {"kind": "relation", "object": COLORS[a], "reference": COLORS[b],
                "direction": direction}

    # ----------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = reset_options(options)
        init = options.get("init")
        xy = self.sample_initial_positions(self.np_random) if init is None else init
        self.set_ball_positions(xy)
        goal = options.get("goal")
        self.goal = validate_goal(goal) if goal is not None else self.sample_goal(self.np_random)
        instruction = options.get("instruction")
        if instruction is None:
            from kalm.envs.clevr.language import describe

            instruction = describe(self.goal, self.np_random)
        self.instruction = str(instruction)
        self._steps = 0
        self._last_action = None
        self._limit = self._max_steps_override or max_steps(self.goal)
        obs = self._obs()
        return obs, {"is_success": is_success(self.goal, obs), "goal": self.goal,
                     "instruction": self.instruction}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action) and not (
            isinstance(action, (int, np.integer)) and 0 <= int(action) < NUM_ACTIONS
        ):
            raise ValueError(f"action must be an integer in [0, {NUM_ACTIONS}), got {action!r}")
        prev = self.ball_positions()
        self.apply_action(int(action))
        state = self.ball_positions()
        self._steps += 1
        self._last_action = int(action)
        success = is_success(self.goal, state, prev, int(action))
        r = goal_reward(self.goal, prev, state, int(action), success)
        truncated = not success and self._steps >= self._limit
        return state.astype(np.float32), r, success, truncated, {"is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from kalm.envs.clevr.render import draw_state

        pusher = self.data.qpos[scene.PUSHER_QPOS] if self._last_action is not None else None
        return draw_state(self.ball_positions(), size=self.image_size, pusher=pusher,
                          caption=self.instruction)


def _init_ok(p: np.ndarray, q: np.ndarray) -> bool:
    d = np.abs(p - q)
    if float(np.hypot(*d)) < MIN_INIT_CENTRE_DIST:
        return False
    return not any(0 < v < INIT_MARGIN for v in d)
