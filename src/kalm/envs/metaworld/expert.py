"""The scripted expert: metaworld's own per-task policies, with Gaussian action noise.

The policies are deterministic, so the data's diversity comes from the random layouts and the
noise: `noise=0.1` adds N(0, 0.1^2) to every action component; `noise="mix"` draws sigma per
episode from {0, 0.1, 0.3} with probabilities (0.2, 0.6, 0.2) (measured to keep the training
tasks near their noiseless success rates); the default 0 is the ceiling evaluation reports.
On the command line: `--policy expert:noise=mix`. Actions are clipped to [-1, 1] (the policies
return up to 25x the bound), so what is stored is what the arm did. Composites chain two
policies, switching when stage 1 holds; locked-door-open lifts the hand above the handle first,
without which the door-open policy skips its approach and the door barely moves.

The expert reads the live simulator's 39-d observation (`env.unwrapped.native_obs()`), as the
CLEVR expert reads ball positions: it needs the real env, not a state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from kalm.envs.metaworld.constants import ENTITY_POS
from kalm.envs.metaworld.goals import stage_holds
from kalm.envs.metaworld.tasks import TASKS

NOISE_LEVELS = (0.0, 0.1, 0.3)
NOISE_PROBS = (0.2, 0.6, 0.2)
LIFT = 0.2  # locked-door-open: height above the handle before the door-open policy takes over
LIFT_TOLERANCE = 0.03


def _policy(name: str) -> Any:
    import metaworld.policies as policies

    return getattr(policies, name)()


class ScriptedAgent:
    """metaworld's scripted policy of the goal's task behind kalm's Policy protocol.

    `noise`: a fixed sigma, or "mix" for the per-episode draw. `rng` is replaced per episode by
    collection and evaluation (seeded by the episode), so the noise is reproducible.
    """

    name = "expert"

    def __init__(self, seed: int = 0, noise: float | str = 0.0) -> None:
        if noise != "mix" and not (isinstance(noise, (int, float)) and np.isfinite(noise)
                                   and noise >= 0):
            raise ValueError(f"noise must be a sigma >= 0 or 'mix', got {noise!r}")
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.sigma = 0.0
        self.episode_extras: dict[str, Any] = {}
        self._env: Any = None
        self._cache: dict[str, Any] = {}

    def begin(self, env: gym.Env, goal: Mapping[str, Any], instruction: str) -> None:
        del instruction
        self._env = env.unwrapped
        if not callable(getattr(self._env, "native_obs", None)):
            raise TypeError("the Meta-World expert needs kalm's MetaWorld env (native_obs)")
        self.task = str(goal["task"])
        spec = TASKS[self.task]
        self._policies = [self._cache.setdefault(n, _policy(n)) for n in spec.policies]
        self.sigma = (float(self.rng.choice(NOISE_LEVELS, p=NOISE_PROBS)) if self.noise == "mix"
                      else float(self.noise))
        self.stage = 0
        self.lifted = False
        self._lift_to: np.ndarray | None = None
        self.episode_extras = {"noise": self.sigma}

    def _scripted(self, native: np.ndarray, state: np.ndarray) -> np.ndarray:
        if len(self._policies) == 1:
            return self._policies[0].get_action(native.copy())
        if self.stage == 0 and stage_holds(self.task, 0, state):
            self.stage = 1
        if self.stage == 0:
            return self._policies[0].get_action(native.copy())
        second = native.copy()
        second[4:11] = native[11:18]  # the second policy reads its object from slot 1
        if self.task == "locked-door-open" and not self.lifted:
            if self._lift_to is None:  # back off and up from where the unlock ended
                handle = state[ENTITY_POS["handle"]]
                self._lift_to = np.array([native[0], native[1] - 0.05, handle[2] + LIFT])
            if np.linalg.norm(native[:3] - self._lift_to) > LIFT_TOLERANCE:
                return np.append(np.clip(25.0 * (self._lift_to - native[:3]), -1, 1), 1.0)
            self.lifted = True
        return self._policies[1].get_action(second)

    def act(self, obs: np.ndarray) -> np.ndarray:
        state = np.asarray(obs, dtype=np.float64)
        a = np.asarray(self._scripted(self._env.native_obs(), state), dtype=np.float64)
        if self.sigma > 0:
            a = a + self.rng.normal(0.0, self.sigma, size=a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)
