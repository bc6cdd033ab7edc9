"""Random shooting as a reference row on equal footing: one rollout per task however many
proposals the LLM made, the goal's own step limit, chunked re-simulation that changes nothing,
and a CPU-seconds budget that fits the candidate count."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kalm.data.episodes import Episode, EpisodeData, read_episodes, write_episodes
from kalm.envs.registry import get_env
from kalm.imagination.relabel import RelabelConfig
from kalm.imagination.shooting import (
    ShootingConfig,
    first_proposals,
    fitted_candidates,
    shoot,
    shoot_level,
)

CLEVR = get_env("clevr")
LEFT = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
PUSH = {"kind": "push", "object": "red", "direction": "right"}
DIRS = np.array([(1, 0), (0, 1), (-1, 0), (0, -1), (.8, .8), (-.8, .8), (.8, -.8), (-.8, -.8)],
                np.float32)


class GridDynamics:
    """A hand-made ensemble: action a moves ball a // 8 by 0.25 along direction a % 8, the same
    in every member (so every success is confirmed by all votes)."""

    spec = CLEVR.spec

    def __init__(self, members: int = 3) -> None:
        self.members = members

    def _step(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        out = s.copy()
        rows = np.arange(len(s))
        ball = a // 8
        out[rows, 2 * ball] += 0.25 * DIRS[a % 8, 0]
        out[rows, 2 * ball + 1] += 0.25 * DIRS[a % 8, 1]
        return out

    def member_rollouts(self, s0, actions):
        states = [np.asarray(s0, np.float32)]
        for t in range(actions.shape[1]):
            states.append(self._step(states[-1], np.asarray(actions[:, t])))
        one = np.stack(states, axis=1)
        return np.repeat(one[None], self.members, axis=0)

    def rollout(self, s0, actions):
        m = self.member_rollouts(np.asarray(s0), np.asarray(actions))
        return m.mean(0), np.zeros(actions.shape[:2], np.float32)


S0 = np.array([0.3, 0.2, -0.3, 0.2, 0.0, 0.5, -0.4, 0.5, 0.4, 0.5], np.float32)


def _task(goal, task: int, proposal: int) -> Episode:
    return Episode(np.stack([S0, S0]), np.zeros(1, np.int64), np.zeros(1, np.float32),
                   np.zeros(1, bool), "do it", dict(goal),
                   extras={"task_index": task, "proposal": proposal, "level": "easy"})


def _tasks(goals, proposals: int) -> EpisodeData:
    eps = [_task(g, i, j) for i, g in enumerate(goals) for j in range(proposals)]
    return EpisodeData.from_episodes(eps, CLEVR.episode_spec("clevr"), source="imagined")


def test_one_rollout_per_task_of_a_best_of_n_file(tmp_path):
    src = tmp_path / "imagined.h5"
    write_episodes(_tasks([LEFT, LEFT, LEFT], proposals=4), src)
    assert len(first_proposals(read_episodes(src))) == 3
    stats = shoot_level(src, tmp_path / "shot", GridDynamics(), CLEVR,
                        ShootingConfig(candidates=64, horizon=6, seed=0), progress=False,
                        judge=RelabelConfig(min_votes=3))
    assert stats["generated"] == 3 and stats["kept"]["all"] == 3
    assert stats["candidates_tried"] == 3 * 64 and stats["cpu_seconds"] > 0
    shot = read_episodes(tmp_path / "shot" / "labelled.h5")
    assert np.allclose(shot.observations[:, 0], S0) and list(shot.instructions) == ["do it"] * 3


def test_a_push_goal_gets_one_step():
    got = shoot(_tasks([PUSH], 1), GridDynamics(), CLEVR,
                ShootingConfig(candidates=200, horizon=20, seed=1), progress=False,
                replay=False, judge=RelabelConfig(min_votes=3))
    assert got[0].length == 1 and got[0].success
    assert int(got[0].actions[0]) // 8 == 0  # red was pushed, with a +x component
    assert DIRS[int(got[0].actions[0]) % 8, 0] > 0


def test_the_soonest_success_is_found_and_chunks_change_nothing():
    """Red starts 0.6 right of blue: no two pushes put red left of blue (checked over all 1,600
    pairs on the same dynamics), three do (e.g. red left twice and blue right once)."""
    cfg = ShootingConfig(candidates=3000, horizon=4, seed=2)
    whole = shoot(_tasks([LEFT], 1), GridDynamics(), CLEVR, cfg, progress=False, replay=False,
                  judge=RelabelConfig(min_votes=3))[0]
    chunked = shoot(_tasks([LEFT], 1), GridDynamics(), CLEVR, dataclasses.replace(cfg, chunk=7),
                    progress=False, replay=False, judge=RelabelConfig(min_votes=3))[0]
    pairs = np.stack(np.meshgrid(np.arange(40), np.arange(40)), -1).reshape(-1, 2)
    states = GridDynamics().rollout(np.repeat(S0[None], len(pairs), 0), pairs)[0]
    assert not any(CLEVR.first_success(LEFT, s, a) is not None
                   for s, a in zip(states, pairs, strict=True))
    assert whole.success and whole.length == 3
    assert np.array_equal(whole.actions, chunked.actions)
    assert CLEVR.success(LEFT, whole.observations[-1])


def test_fitted_candidates_share_the_budget_left():
    cfg = ShootingConfig(candidates=100, cpu_seconds=10.0)
    assert fitted_candidates(cfg, 0.0, 0, 0, 5) == 100  # nothing measured yet
    # 2 s for 100 candidates: 8 s left over 4 tasks = 2 s each = 100 candidates
    assert fitted_candidates(cfg, 2.0, 100, 1, 5) == 100
    # cheaper than thought: 1 s for 100 -> 9 s over 4 tasks at 0.01 s each = 225
    assert fitted_candidates(cfg, 1.0, 100, 1, 5) == 225
    assert fitted_candidates(cfg, 20.0, 100, 1, 5) == 1  # over budget: one each
    fixed = ShootingConfig(candidates=100)
    assert fitted_candidates(fixed, 1.0, 100, 1, 5) == 100


def test_a_cpu_budget_scales_the_candidates(tmp_path):
    src = tmp_path / "imagined.h5"
    write_episodes(_tasks([LEFT] * 6, 1), src)
    small = shoot_level(src, tmp_path / "a", GridDynamics(), CLEVR,
                        ShootingConfig(candidates=16, horizon=4, cpu_seconds=0.05),
                        progress=False, judge=RelabelConfig(min_votes=3))
    large = shoot_level(src, tmp_path / "b", GridDynamics(), CLEVR,
                        ShootingConfig(candidates=16, horizon=4, cpu_seconds=2.0),
                        progress=False, judge=RelabelConfig(min_votes=3))
    assert large["candidates_tried"] > 4 * small["candidates_tried"]
    assert large["cpu_seconds"] < 2.0 * 2  # the fitted count keeps near the budget


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="cpu_seconds"):
        ShootingConfig(cpu_seconds=0)
    with pytest.raises(ValueError, match="max_candidates"):
        ShootingConfig(candidates=10, max_candidates=5)
