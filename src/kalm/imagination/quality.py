"""How realistic imagined CLEVR rollouts are, judged against the real simulator.

- self-judged match: the imagined final state satisfies the goal;
- replayed match (the headline): the imagined actions replayed in the real env from the same s_0
  leave the goal satisfied at the step where the imagined rollout ended;
- a random policy's replay rate (same lengths) as the floor;
- unrealistic transitions: a ball out of the reachable table, a ball moving further in one step
  than any real push, two balls interpenetrating, a ball moving that the push could not reach;
- state error per step between the imagined and the replayed states.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kalm.envs.clevr.constants import BALL_RADIUS, NUM_BALLS, TABLE_HIGH, TABLE_LOW
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.goals import is_success

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

    def add(self, self_ok: bool, replay_ok: bool, random_ok: bool, check: RolloutCheck,
            errors: np.ndarray) -> None:
        self.rollouts += 1
        self.self_success += int(self_ok)
        self.replay_success += int(replay_ok)
        self.random_replay_success += int(random_ok)
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
        n, m = max(self.rollouts, 1), max(self.transitions, 1)
        return {
            "rollouts": self.rollouts,
            "self_judged_match": self.self_success / n,
            "replayed_match": self.replay_success / n,
            "random_replay_match": self.random_replay_success / n,
            "transitions": self.transitions,
            "out_of_table_pct": 100 * self.out_of_table / m,
            "exceed_dynamics_pct": 100 * self.exceed_dynamics / m,
            "interpenetration_pct": 100 * self.interpenetration / m,
            "untouched_moved_pct": 100 * self.untouched_moved / m,
            "unrealistic_rollouts_pct": 100 * self.unrealistic_rollouts / n,
            "state_error_by_step_m": [float(np.mean(e)) for e in self.step_errors[:50]],
            "state_error_mean_m": float(np.mean([x for e in self.step_errors for x in e]))
            if self.step_errors else 0.0,
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
