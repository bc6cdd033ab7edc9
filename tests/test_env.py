"""CLEVR-Robot env: Gymnasium compliance, seeding, initial states, push physics, rendering."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import kalm  # noqa: F401  (registers the env)
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.render import draw_state, episode_gif

GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
# Balls far apart so that a push moves one ball freely.
SPREAD = [0.0, 0.15, 0.4, 0.45, -0.4, 0.45, 0.4, -0.1, -0.4, -0.1]


def make(**kw):
    return CLEVRRobotEnv(**kw)


def test_registered_and_check_env():
    env = gym.make("kalm/CLEVRRobot-v0", render_mode="rgb_array")
    check_env(env.unwrapped)
    assert env.action_space.n == 40
    assert env.observation_space.shape == (10,)


def test_reset_is_reproducible_and_respects_spacing():
    env = make()
    a, _ = env.reset(seed=3, options={"goal": GOAL, "instruction": "x"})
    b, _ = env.reset(seed=3, options={"goal": GOAL, "instruction": "x"})
    c, _ = env.reset(seed=4, options={"goal": GOAL, "instruction": "x"})
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for seed in range(50):
        obs, _ = env.reset(seed=seed, options={"instruction": "x"})
        p = obs.reshape(5, 2).astype(np.float64)
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)[np.triu_indices(5, 1)]
        assert d.min() >= 0.36 - 1e-6
        assert (p[:, 0] >= -0.5).all() and (p[:, 0] <= 0.5).all()
        assert (p[:, 1] >= -0.3).all() and (p[:, 1] <= 0.5).all()


def test_table_init_region_stays_reachable():
    env = make(init_region="table")
    for seed in range(20):
        obs, _ = env.reset(seed=seed, options={"instruction": "x"})
        p = obs.reshape(5, 2)
        assert (np.abs(p[:, 0]) <= 0.47 + 1e-6).all()
        assert (p[:, 1] >= -0.17 - 1e-6).all() and (p[:, 1] <= 0.57 + 1e-6).all()


def test_init_option_sets_state_and_first_push_uses_it():
    env = make()
    env.reset(seed=0, options={"instruction": "x"})  # some random scene first
    obs, _ = env.reset(options={"init": SPREAD, "goal": GOAL, "instruction": "x"})
    np.testing.assert_allclose(obs, SPREAD, atol=1e-6)
    obs, *_ = env.step(1)  # red pushed +y, from the *new* position
    moved = obs - np.asarray(SPREAD, dtype=np.float32)
    assert 0.2 < moved[1] < 0.3, moved
    assert abs(moved[0]) < 1e-3
    np.testing.assert_allclose(moved[2:], 0.0, atol=1e-3)  # no other ball touched


@pytest.mark.parametrize(("action", "axis", "sign"), [(0, 0, 1), (1, 1, 1), (2, 0, -1), (3, 1, -1)])
def test_cardinal_push_moves_about_a_quarter(action, axis, sign):
    env = make()
    env.reset(options={"init": SPREAD, "goal": GOAL, "instruction": "x"})
    obs, *_ = env.step(action)
    delta = obs[:2] - np.asarray(SPREAD[:2], dtype=np.float32)
    assert 0.2 < sign * delta[axis] < 0.3
    assert abs(delta[1 - axis]) < 1e-3


def test_diagonal_push_and_other_balls():
    env = make()
    env.reset(options={"init": SPREAD, "goal": GOAL, "instruction": "x"})
    obs, *_ = env.step(8 * 3 + 5)  # purple, (-0.8, +0.8)
    delta = obs[6:8] - np.asarray(SPREAD[6:8], dtype=np.float32)
    assert delta[0] < -0.15 and delta[1] > 0.15


def test_walls_keep_balls_on_the_table():
    env = make()
    env.reset(options={"init": SPREAD, "goal": GOAL, "instruction": "x"})
    for _ in range(6):
        obs, *_ = env.step(3)  # red towards -y, into the wall
    assert obs[1] > -0.18


def test_success_terminates_with_reward_and_truncation_at_limit():
    env = make()
    init = [0.4, 0.15, 0.0, 0.15, -0.4, 0.45, 0.4, -0.1, -0.4, -0.1]  # red right of blue
    goal_right = {"kind": "relation", "object": "red", "reference": "blue", "direction": "right"}
    _, info = env.reset(options={"init": init, "goal": goal_right, "instruction": "x"})
    assert not info["is_success"]  # 0.4 apart: too far
    _, r, term, trunc, info = env.step(2)  # push red -x towards blue
    assert term and info["is_success"] and r == 100.0 and not trunc
    env.reset(options={"init": SPREAD, "goal": GOAL, "instruction": "x"})
    steps = 0
    trunc = term = False
    while not (term or trunc):
        _, _, term, trunc, _ = env.step(8 * 4)  # push cyan around: never red left of blue
        steps += 1
    assert trunc and steps == 50


def test_push_goal_is_one_step():
    env = make()
    goal = {"kind": "push", "object": "green", "direction": "front"}
    env.reset(options={"init": SPREAD, "goal": goal, "instruction": "x"})
    _, r, term, trunc, info = env.step(16 + 3)
    assert term and r == 100.0 and info["is_success"]
    env.reset(options={"init": SPREAD, "goal": goal, "instruction": "x"})
    _, r, term, trunc, info = env.step(0)
    assert trunc and not term and r == 0.0


def test_bad_options_and_actions():
    env = make()
    with pytest.raises(ValueError, match="init must have 10"):
        env.reset(options={"init": [0.0] * 9})
    with pytest.raises(ValueError, match="NaN"):
        env.reset(options={"init": [float("nan")] * 10})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"goals": GOAL})
    with pytest.raises(ValueError, match="unknown colour"):
        env.reset(options={"goal": {**GOAL, "object": "pink"}})
    env.reset(seed=0, options={"instruction": "x"})
    with pytest.raises(ValueError, match="action must be"):
        env.step(40)


def test_sim_state_round_trip():
    env = make()
    env.reset(seed=1, options={"instruction": "x"})
    env.step(5)
    saved = env.get_sim_state()
    a, *_ = env.step(12)
    env.set_sim_state(saved)
    b, *_ = env.step(12)
    np.testing.assert_array_equal(a, b)


def test_render_and_gif(tmp_path):
    env = make(render_mode="rgb_array", image_size=128)
    env.reset(options={"init": SPREAD, "goal": GOAL, "instruction": "red left of blue"})
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    # the red ball's centre pixel is red
    img = draw_state(SPREAD, size=200)
    h, w, _ = img.shape
    x = int((0.0 + 0.65) / 1.3 * w)
    y = int((0.75 - 0.15) / 1.1 * h)
    r, g, b = img[y, x]
    assert r > 200 and g < 60 and b < 60
    obs = np.stack([np.asarray(SPREAD, dtype=np.float32)] * 3)
    obs[1, 0] += 0.2  # distinct frames (identical ones are merged by the GIF writer)
    obs[2, 0] += 0.4
    path = episode_gif(obs, tmp_path / "ep.gif", caption="hello")
    from PIL import Image

    with Image.open(path) as im:
        assert im.n_frames == 3
