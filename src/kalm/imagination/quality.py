"""How realistic imagined rollouts are, judged against the real simulator (a diagnostic).

- self-judged match: the imagined final state satisfies the goal (what KALM can know);
- replayed match: the imagined actions replayed in the real env from the same s_0 leave the goal
  satisfied at the step where the imagined rollout ended (uses the simulator, which KALM may not:
  a diagnostic, never a label);
- a random policy's replay rate (same lengths) as the floor;
- unrealistic transitions per category, as the env's `realism_checks` hook defines them;
- state error per step between the imagined and the replayed states (the env's
  `state_distance` hook, in its `state_units`).

Replay uses the env's `replay` hook, else its `set_state` hook; an env with neither (or whose
`set_state` raises NotImplementedError for a state) gets null replay numbers, and an env
without realism checks gets null realism rates (its rollouts count as
realistic for `--filter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kalm.envs.base import random_action

if TYPE_CHECKING:
    import gymnasium as gym

    from kalm.envs.base import EnvDefinition


@dataclass
class RolloutCheck:
    """Unrealistic transitions of one rollout, per category of the env's realism checks."""

    counts: dict[str, int] = field(default_factory=dict)
    transitions: int = 0

    @property
    def realistic(self) -> bool:
        return not any(self.counts.values())


def check_rollout(definition: EnvDefinition, observations: np.ndarray,
                  actions: np.ndarray) -> RolloutCheck | None:
    """The env's realism checks on one rollout, or None when the env defines none."""
    if definition.realism_checks is None:
        return None
    counts = definition.realism_checks(np.asarray(observations), np.asarray(actions))
    return RolloutCheck({str(k): int(v) for k, v in counts.items()}, len(actions))


def replay_actions(definition: EnvDefinition, env: gym.Env, goal: Mapping[str, Any],
                   s0: np.ndarray, actions: Sequence[Any]) -> tuple[np.ndarray, bool] | None:
    """Real states after replaying `actions` from s0 and whether the goal holds at the end;
    None when the env can be put in neither a given state nor replayed."""
    actions = [_action(a) for a in actions]
    if definition.replay is not None:
        states, ok = definition.replay(env, goal, s0, actions)
        return np.asarray(states, dtype=np.float64).reshape(len(actions) + 1, -1), bool(ok)
    if definition.set_state is None:
        return None
    env.reset(seed=0, options={"goal": dict(goal), "instruction": "replay"})
    try:
        definition.set_state(env, np.asarray(s0, dtype=np.float32))
    except NotImplementedError:  # the env cannot set this state (e.g. an articulated task)
        return None
    states = [np.asarray(s0, dtype=np.float64)]
    for a in actions:
        obs, *_ = env.step(a)
        states.append(np.asarray(obs, dtype=np.float64))
    arr = np.asarray(states)
    ok = len(arr) > 1 and definition.successes(goal, arr, np.asarray(actions))[-1]
    return arr, bool(ok)


def record_replay(definition: EnvDefinition, env: gym.Env, episode: Any, s0: np.ndarray
                  ) -> None:
    """Store on EPISODE (an `Episode` proposed from s0) whether its actions, replayed in the
    simulator, reach its goal: `replayed` (False where the env cannot replay) and
    `replay_success`. A diagnostic for the report; nothing chooses by it."""
    replayed = replay_actions(definition, env, episode.goal, s0, episode.actions)
    episode.extras["replayed"] = replayed is not None
    episode.extras["replay_success"] = bool(replayed[1]) if replayed else False


@dataclass
class Assessment:
    """One rollout's checks; None where this env cannot produce the number."""

    replay_ok: bool | None
    random_ok: bool | None
    check: RolloutCheck | None
    errors: np.ndarray  # per step, empty without a replay


def assess_rollout(definition: EnvDefinition, env: gym.Env, goal: Mapping[str, Any],
                   observations: np.ndarray, actions: np.ndarray, self_ok: bool,
                   rng: np.random.Generator) -> Assessment:
    """Replay, random floor, realism checks and per-step state error of one rollout."""
    check = check_rollout(definition, observations, actions)
    if len(actions) == 0:
        return Assessment(None, None, check, np.zeros(0))
    acts = [_action(a) for a in actions]
    replayed = replay_actions(definition, env, goal, observations[0], acts)
    if replayed is None:
        return Assessment(None, None, check, np.zeros(0))
    real, replay_ok = replayed
    rand = [random_action(env.action_space, rng) for _ in acts]
    _, random_ok = replay_actions(definition, env, goal, observations[0], rand)
    imagined = np.asarray(observations, dtype=np.float64)
    errors = definition.distance(imagined[1:], real[1:])
    return Assessment(replay_ok, random_ok, check, errors)


@dataclass
class QualityReport:
    """Sums over the rollouts of one level; `to_json` turns them into rates."""

    rollouts: int = 0
    self_success: int = 0
    replay_success: int = 0
    random_replay_success: int = 0
    transitions: int = 0
    unrealistic: dict[str, int] = field(default_factory=dict)  # transitions per category
    unrealistic_rollouts: int = 0
    step_errors: list[list[float]] = field(default_factory=list)  # per step
    replayed: int = 0  # rollouts replayed in the simulator
    checked: int = 0  # rollouts the realism checks ran on
    units: str = ""  # of the state errors

    def add(self, self_ok: bool, replay_ok: bool, random_ok: bool, check: RolloutCheck,
            errors: np.ndarray, replayed: bool = True, checked: bool = True) -> None:
        self.rollouts += 1
        self.self_success += int(self_ok)
        self.replay_success += int(replay_ok)
        self.random_replay_success += int(random_ok)
        self.replayed += int(replayed)
        self.checked += int(checked)
        self.transitions += check.transitions
        for k, v in check.counts.items():
            self.unrealistic[k] = self.unrealistic.get(k, 0) + int(v)
        self.unrealistic_rollouts += int(not check.realistic)
        for t, e in enumerate(errors):
            while len(self.step_errors) <= t:
                self.step_errors.append([])
            self.step_errors[t].append(float(e))

    def to_json(self) -> dict[str, Any]:
        """Rates per level; numbers a check did not produce (no replay, no realism checks for
        this env) are None."""
        n, m = max(self.rollouts, 1), max(self.transitions, 1)
        r = max(self.replayed, 1)

        def checked(v: float) -> float | None:
            return v if self.checked else None

        def replayed(v: float) -> float | None:
            return v if self.replayed else None

        out: dict[str, Any] = {
            "rollouts": self.rollouts,
            "self_judged_match": self.self_success / n,
            "replayed_match": replayed(self.replay_success / r),
            "random_replay_match": replayed(self.random_replay_success / r),
            "transitions": self.transitions,
        }
        out.update({f"{k}_pct": checked(100 * v / m) for k, v in self.unrealistic.items()})
        out["unrealistic_rollouts_pct"] = checked(100 * self.unrealistic_rollouts / n)
        out["state_error_by_step"] = [float(np.mean(e)) for e in self.step_errors]
        out["state_error_mean"] = (
            float(np.mean([x for e in self.step_errors for x in e])) if self.step_errors
            else replayed(0.0))
        out["state_error_units"] = self.units
        return out


def _action(a: Any) -> Any:
    a = np.asarray(a)
    return int(a) if a.ndim == 0 else a.astype(np.float32)
