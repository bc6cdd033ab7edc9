"""How realistic imagined rollouts are, judged against the real simulator.

- self-judged match: the imagined final state satisfies the goal;
- replayed match (the headline): the imagined actions replayed in the real env from the same s_0
  leave the goal satisfied at the step where the imagined rollout ended;
- a random policy's replay rate (same lengths) as the floor;
- unrealistic transitions: a ball out of the reachable table, a ball moving further in one step
  than any real push, two balls interpenetrating, a ball moving that the push could not reach;
- state error per step between the imagined and the replayed states.

Every check runs for CLEVR. Another env gets the replay-based numbers only when its definition
has a `set_state` hook (else they are null), and the CLEVR-specific realism checks not at all
(null; such rollouts count as realistic for `--filter`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kalm.envs.clevr.constants import BALL_RADIUS, NUM_BALLS, TABLE_HIGH, TABLE_LOW
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.goals import is_success

if TYPE_CHECKING:
    import gymnasium as gym

    from kalm.envs.registry import EnvDefinition

TABLE_TOL = 0.03  # centres may sit this far outside the measured limits
MAX_STEP_MOVE = 0.45  # no real push moves a ball further (one push ~0.25-0.33 plus momentum)
PENETRATION = 2 * BALL_RADIUS - 0.04  # centres closer than this overlap by > 4 cm
MOVED = 0.08  # displacement that counts as "moved" (rolling momentum stays below)
PUSH_REACH = 0.35  # how far a pushed ball travels in one step, at most (measured ~0.25-0.33)
REACH = 2 * BALL_RADIUS + PUSH_REACH  # a ball further than this from every moved-ball chain


@dataclass
class RolloutCheck:
    out_of_table: int = 0
    exceed_dynamics: int = 0
    interpenetration: int = 0
    untouched_moved: int = 0
    transitions: int = 0

    @property
    def realistic(self) -> bool:
        return not (self.out_of_table or self.exceed_dynamics or self.interpenetration
                    or self.untouched_moved)


def check_transitions(observations: np.ndarray, actions: np.ndarray) -> RolloutCheck:
    """Count unrealistic transitions of one imagined CLEVR rollout."""
    c = RolloutCheck()
    obs = np.asarray(observations, dtype=np.float64).reshape(len(observations), NUM_BALLS, 2)
    low, high = TABLE_LOW - TABLE_TOL, TABLE_HIGH + TABLE_TOL
    for t, a in enumerate(np.asarray(actions).reshape(-1)):
        prev, cur = obs[t], obs[t + 1]
        c.transitions += 1
        c.out_of_table += int(((cur < low) | (cur > high)).any())
        move = np.linalg.norm(cur - prev, axis=1)
        c.exceed_dynamics += int(move.max() > MAX_STEP_MOVE)
        d = np.linalg.norm(cur[:, None] - cur[None], axis=-1)[np.triu_indices(NUM_BALLS, 1)]
        c.interpenetration += int(d.min() < PENETRATION)
        # balls the push can reach: the pushed ball, then anything within reach of a reached ball
        reached = {int(a) // 8}
        frontier = list(reached)
        while frontier:
            i = frontier.pop()
            for j in range(NUM_BALLS):
                if j not in reached and np.linalg.norm(prev[j] - prev[i]) < REACH:
                    reached.add(j)
                    frontier.append(j)
        c.untouched_moved += int(any(move[j] > MOVED for j in range(NUM_BALLS)
                                     if j not in reached))
    return c


def replay(env: CLEVRRobotEnv, goal: Mapping[str, Any], s0: np.ndarray,
           actions: np.ndarray) -> tuple[np.ndarray, bool]:
    """Real states after replaying `actions` from s0, and whether the goal holds at the end."""
    env.reset(options={"init": np.asarray(s0, dtype=np.float64).tolist(), "goal": dict(goal),
                       "instruction": "replay"})
    states = [env.ball_positions().copy()]
    for a in np.asarray(actions).reshape(-1):
        env.apply_action(int(a))
        states.append(env.ball_positions().copy())
    arr = np.asarray(states)
    ok = len(arr) > 1 and is_success(goal, arr[-1], arr[-2], int(np.asarray(actions)[-1]))
    return arr, bool(ok)


@dataclass
class QualityReport:
    rollouts: int = 0
    self_success: int = 0
    replay_success: int = 0
    random_replay_success: int = 0
    transitions: int = 0
    out_of_table: int = 0
    exceed_dynamics: int = 0
    interpenetration: int = 0
    untouched_moved: int = 0
    unrealistic_rollouts: int = 0
    step_errors: list[list[float]] = field(default_factory=list)  # per step: ball-distance errors
    replayed: int = 0  # rollouts replayed in the simulator (all for CLEVR)
    checked: int = 0  # rollouts the realism checks ran on (all for CLEVR, none elsewhere)

    def add(self, self_ok: bool, replay_ok: bool, random_ok: bool, check: RolloutCheck,
            errors: np.ndarray, replayed: bool = True, checked: bool = True) -> None:
        self.rollouts += 1
        self.self_success += int(self_ok)
        self.replay_success += int(replay_ok)
        self.random_replay_success += int(random_ok)
        self.replayed += int(replayed)
        self.checked += int(checked)
        self.transitions += check.transitions
        self.out_of_table += check.out_of_table
        self.exceed_dynamics += check.exceed_dynamics
        self.interpenetration += check.interpenetration
        self.untouched_moved += check.untouched_moved
        self.unrealistic_rollouts += int(not check.realistic)
        for t, e in enumerate(errors):
            while len(self.step_errors) <= t:
                self.step_errors.append([])
            self.step_errors[t].append(float(e))

    def to_json(self) -> dict[str, Any]:
        """Rates per level; numbers a check did not produce (no replay hook, no realism
        checks for this env) are None."""
        n, m = max(self.rollouts, 1), max(self.transitions, 1)
        r = max(self.replayed, 1)

        def checked(v: float) -> float | None:
            return v if self.checked else None

        def replayed(v: float) -> float | None:
            return v if self.replayed else None

        return {
            "rollouts": self.rollouts,
            "self_judged_match": self.self_success / n,
            "replayed_match": replayed(self.replay_success / r),
            "random_replay_match": replayed(self.random_replay_success / r),
            "transitions": self.transitions,
            "out_of_table_pct": checked(100 * self.out_of_table / m),
            "exceed_dynamics_pct": checked(100 * self.exceed_dynamics / m),
            "interpenetration_pct": checked(100 * self.interpenetration / m),
            "untouched_moved_pct": checked(100 * self.untouched_moved / m),
            "unrealistic_rollouts_pct": checked(100 * self.unrealistic_rollouts / n),
            "state_error_by_step_m": [float(np.mean(e)) for e in self.step_errors[:50]],
            "state_error_mean_m": float(np.mean([x for e in self.step_errors for x in e]))
            if self.step_errors else replayed(0.0),
        }


def assess(env: CLEVRRobotEnv, goal: Mapping[str, Any], observations: np.ndarray,
           actions: np.ndarray, self_ok: bool, rng: np.random.Generator
           ) -> tuple[bool, bool, RolloutCheck, np.ndarray]:
    """Replay, random floor, realism checks and per-step error for one rollout."""
    real, replay_ok = replay(env, goal, observations[0], actions)
    rand_actions = rng.integers(0, env.action_space.n, len(actions))
    _, random_ok = replay(env, goal, observations[0], rand_actions)
    check = check_transitions(observations, actions)
    imagined = np.asarray(observations, dtype=np.float64).reshape(len(observations), -1, 2)
    errors = np.linalg.norm(imagined[1:] - real[1:].reshape(len(real) - 1, -1, 2),
                            axis=-1).mean(-1)
    return replay_ok, random_ok, check, errors


@dataclass
class Assessment:
    """One rollout's checks; None where this env cannot produce the number."""

    replay_ok: bool | None
    random_ok: bool | None
    check: RolloutCheck | None
    errors: np.ndarray  # per step, empty without a replay


def replay_with_hook(definition: EnvDefinition, env: gym.Env, goal: Mapping[str, Any],
                     s0: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, bool]:
    """Replay through the env's `set_state` hook and `step` (for envs other than CLEVR)."""
    env.reset(seed=0, options={"goal": dict(goal), "instruction": "replay"})
    definition.set_state(env, np.asarray(s0, dtype=np.float32))
    states = [np.asarray(s0, dtype=np.float64)]
    for a in actions:
        obs, *_ = env.step(a)
        states.append(np.asarray(obs, dtype=np.float64))
    arr = np.asarray(states)
    ok = len(arr) > 1 and definition.success(goal, arr[-1], arr[-2], actions[-1])
    return arr, bool(ok)


def assess_rollout(definition: EnvDefinition, env: gym.Env, goal: Mapping[str, Any],
                   observations: np.ndarray, actions: np.ndarray, self_ok: bool,
                   rng: np.random.Generator) -> Assessment:
    """CLEVR: every check (`assess`). Other envs: replay-based numbers if the env can be set
    to a state, no realism checks."""
    if definition.name == "clevr":
        return Assessment(*assess(env, goal, observations, actions, self_ok, rng))
    if definition.set_state is None or len(actions) == 0:
        return Assessment(None, None, None, np.zeros(0))
    from kalm.data.rollout import random_action

    acts = [_action(a) for a in actions]
    real, replay_ok = replay_with_hook(definition, env, goal, observations[0], acts)
    rand = [random_action(env.action_space, rng) for _ in acts]
    _, random_ok = replay_with_hook(definition, env, goal, observations[0], rand)
    diff = np.asarray(observations, dtype=np.float64)[1:] - real[1:]
    return Assessment(replay_ok, random_ok, None, np.linalg.norm(diff, axis=-1))


def _action(a: Any) -> Any:
    a = np.asarray(a)
    return int(a) if a.ndim == 0 else a.astype(np.float32)
