"""kalm's CLEVR physics against the KALM authors' own 80 published episodes (docs/environment.md,
"Fidelity against the authors' episodes"). With MuJoCo 3.3.0's own pusher contact weights the
replays reached their goal 43 times of 80 and none stayed within 1 mm; these thresholds fail
that model by a wide margin."""

from __future__ import annotations

from pathlib import Path

import pytest

from kalm.envs.clevr import scene
from kalm.envs.clevr.fidelity import load_episodes, measure

EPISODES = (Path(__file__).resolve().parents[2]
            / "shared/reference/published/clevr-authors-episodes.json")


@pytest.fixture(scope="module")
def report():
    if not EPISODES.exists():
        pytest.skip(f"the authors' published CLEVR episodes are not available at {EPISODES}")
    episodes = load_episodes(EPISODES)
    assert len(episodes) == 80
    return measure(episodes)


def test_the_published_episodes_replay_to_their_goal(report):
    assert report.replay_final >= 76  # measured 78 of 80
    assert report.replay_any >= 77  # measured 79
    assert report.replay_exact >= 70  # measured 74 replays within 1 mm at every step
    assert report.final_error_median < 0.1  # cm, measured 0.00


def test_one_step_errors_with_the_rest_of_the_state_carried(report):
    # the authors' positions written into the state kalm reached from their previous state
    assert report.carried_median < 0.1  # cm, measured 0.00
    assert report.carried_p90 < 0.5  # measured 0.00
    assert report.carried_max < 5.0  # measured 1.4


def test_one_step_errors_from_rest(report):
    # positions only (zero velocity): the authors' balls were still rolling, so this stays large
    assert report.rest_median < 1.9  # cm, measured 1.60 (2.05 before)
    assert report.rest_p90 < 5.5  # measured 4.54 (6.42 before)


def test_the_pusher_gets_armature_inclusive_contact_weights():
    model = scene.build_model()
    pm = model.body("point_mass").id
    weight = 1.0 / (model.body_mass[pm] + 0.04)
    assert model.dof_invweight0[-2:] == pytest.approx([weight, weight])  # 24.84
    assert model.body_invweight0[pm] == pytest.approx([2 * weight / 3, 0.0])
