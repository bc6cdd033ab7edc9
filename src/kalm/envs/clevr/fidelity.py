"""How closely kalm's CLEVR reproduces the KALM authors' published episodes.

The authors' release (`data/clevr_robot.npy`, converted to JSON: per episode `states` (T+1, 10)
ball x, y in colour order, `actions` (T,) in 0..39, `goal` in kalm's format) holds 80 expert
episodes, each ending at its first success. `measure` replays them in kalm's env:

- **replay**: reset to the authors' first state and apply their actions open loop; the goal is
  judged with kalm's success check on the final state (`replay_final`) and at any step
  (`replay_any`); `replay_exact` counts episodes whose replay stays within 1 mm of the authors'
  states at every step; `final_error` is the largest ball error at the final state.
- **one-step error**: before each step the simulator is put in the authors' state and one push is
  applied; the error is the largest distance (cm) between a ball's simulated and published
  position after the step. The authors' states hold positions only, while in their env balls
  keep rolling across actions (velocities are never zeroed), so the rest of the state has to be
  chosen, in one of two ways:
  - `rest`: the published x, y with the balls at rest (zero velocity, resting height, pusher at
    the origin), which is what `reset(options={"init": ...})` does;
  - `carried`: the published x, y written into the state kalm's simulator reached by pushing from
    the authors' previous state (itself treated the same way), so ball velocities, heights,
    orientations and the pusher are carried across the step as in the authors' env; the first
    step starts at rest, like every episode of theirs (they start from a reset).

Errors are in centimetres; `measure(match_reference=False)` measures the model with MuJoCo
3.3.0's own pusher contact weights (what kalm used before, see `scene.match_reference_contacts`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from kalm.envs.clevr import scene
from kalm.envs.clevr.constants import NUM_BALLS, OBS_DIM
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.goals import is_success, validate_goal

EXACT_TOLERANCE = 0.001  # m: a replay "exact" while every ball stays within 1 mm


@dataclass(frozen=True)
class FidelityReport:
    episodes: int
    transitions: int
    replay_final: int  # episodes whose open-loop replay meets the goal at the final state
    replay_any: int  # ... at some step
    replay_exact: int  # ... within 1 mm of the published states at every step
    final_error_median: float  # cm, largest ball error at the final state, median over episodes
    rest_median: float  # one-step error (cm), authors' positions at rest
    rest_p90: float
    rest_max: float
    carried_median: float  # one-step error (cm), authors' positions, the rest carried over
    carried_p90: float
    carried_max: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_episodes(path: str | Path) -> list[dict[str, Any]]:
    """The episodes of the authors' release, as written by the conversion (`episodes` list)."""
    raw = json.loads(Path(path).read_text())
    episodes = raw["episodes"] if isinstance(raw, Mapping) else raw
    for i, e in enumerate(episodes):
        states, actions = np.asarray(e["states"]), np.asarray(e["actions"])
        if states.ndim != 2 or states.shape[1] != OBS_DIM or len(states) != len(actions) + 1:
            raise ValueError(f"{path}: episode {i} needs states (T+1, {OBS_DIM}) and actions "
                             f"(T,), got {states.shape} and {actions.shape}")
    return list(episodes)


def make_env(match_reference: bool = True) -> CLEVRRobotEnv:
    """kalm's env; `match_reference=False` swaps in MuJoCo's own pusher contact weights."""
    env = CLEVRRobotEnv()
    if not match_reference:
        env.model = scene.build_model(match_reference=False)
        env.data = mujoco.MjData(env.model)
    return env


def _ball_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance (m) between the balls of two 10-d states."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(NUM_BALLS, 2)
    return float(np.linalg.norm(d, axis=1).max())


def _write_xy(env: CLEVRRobotEnv, xy: np.ndarray) -> None:
    """Overwrite only the balls' x, y; everything else (velocities, heights, pusher) stays."""
    for i in range(NUM_BALLS):
        base = scene.BALL_QPOS * i
        env.data.qpos[base: base + 2] = xy[2 * i: 2 * i + 2]
    mujoco.mj_forward(env.model, env.data)


def replay_episode(env: CLEVRRobotEnv, episode: Mapping[str, Any]
                   ) -> tuple[np.ndarray, bool, bool]:
    """Open-loop replay: (states (T+1, 10), goal met at the final state, goal met at any step)."""
    states = np.asarray(episode["states"], np.float64)
    actions = [int(a) for a in episode["actions"]]
    goal = validate_goal(episode["goal"])
    env.reset(options={"init": states[0].tolist(), "goal": goal, "instruction": "replay"})
    out, hit, prev = [env.ball_positions().copy()], False, states[0]
    for a in actions:
        env.apply_action(a)
        s = env.ball_positions().copy()
        hit = hit or is_success(goal, s, prev, a)
        out.append(s)
        prev = s
    final = is_success(goal, out[-1], out[-2], actions[-1]) if actions else False
    return np.asarray(out), bool(final), bool(hit)


def one_step_errors(env: CLEVRRobotEnv, episode: Mapping[str, Any]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-step errors (m) with the authors' state before each step: (rest, carried)."""
    states = np.asarray(episode["states"], np.float64)
    actions = [int(a) for a in episode["actions"]]
    rest, carried = [], []
    for t, a in enumerate(actions):
        env.set_ball_positions(states[t])
        env.apply_action(a)
        rest.append(_ball_error(env.ball_positions(), states[t + 1]))
    env.set_ball_positions(states[0])
    for t, a in enumerate(actions):
        _write_xy(env, states[t])
        env.apply_action(a)
        carried.append(_ball_error(env.ball_positions(), states[t + 1]))
    return np.asarray(rest), np.asarray(carried)


def measure(episodes: Sequence[Mapping[str, Any]], env: CLEVRRobotEnv | None = None,
            match_reference: bool = True) -> FidelityReport:
    """Replay and one-step figures of kalm's env on the authors' episodes (see the module)."""
    env = env or make_env(match_reference)
    final = hit = exact = 0
    final_err, rest, carried = [], [], []
    for e in episodes:
        states = np.asarray(e["states"], np.float64)
        replayed, ok_final, ok_any = replay_episode(env, e)
        final += ok_final
        hit += ok_any
        errors = [_ball_error(a, b) for a, b in zip(replayed, states, strict=True)]
        exact += max(errors) <= EXACT_TOLERANCE
        final_err.append(errors[-1])
        r, c = one_step_errors(env, e)
        rest.extend(r)
        carried.extend(c)
    cm = 100.0
    r, c = np.asarray(rest) * cm, np.asarray(carried) * cm
    return FidelityReport(
        episodes=len(episodes), transitions=len(r), replay_final=final, replay_any=hit,
        replay_exact=exact, final_error_median=float(np.median(final_err) * cm),
        rest_median=float(np.median(r)), rest_p90=float(np.percentile(r, 90)),
        rest_max=float(r.max()), carried_median=float(np.median(c)),
        carried_p90=float(np.percentile(c, 90)), carried_max=float(c.max()))


def table(rows: Mapping[str, FidelityReport]) -> str:
    """A Markdown table of reports, one row each."""
    head = ("| model | replay to goal: final / any step | replay exact (1 mm) | final-state "
            "error median | one-step, at rest: median / p90 / max | one-step, carried: median "
            "/ p90 / max |")
    lines = [head, "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r.replay_final}/{r.episodes} / {r.replay_any}/{r.episodes} | "
            f"{r.replay_exact}/{r.episodes} | {r.final_error_median:.2f} cm | "
            f"{r.rest_median:.2f} / {r.rest_p90:.2f} / {r.rest_max:.1f} cm | "
            f"{r.carried_median:.2f} / {r.carried_p90:.2f} / {r.carried_max:.1f} cm |")
    return "\n".join(lines)
