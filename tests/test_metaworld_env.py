"""kalm/MetaWorld-v0 in the simulator: construction, seeding, judge parity, shared rewards,
composites, set_state, realism on real data, collection and evaluation. Each task's env is
built once per session and one scripted episode per task is shared by several tests, to keep
the file within seconds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("metaworld")

from kalm.envs.metaworld.constants import ENTITY_SLICE
from kalm.envs.metaworld.env import MetaWorldKALMEnv, goal_for
from kalm.envs.metaworld.tasks import TASKS
from kalm.envs.registry import get_env

MW = get_env("metaworld")


@pytest.fixture(scope="module")
def env() -> MetaWorldKALMEnv:
    return MetaWorldKALMEnv()


def run_expert(env, task: str, seed: int, noise: float | str = 0.1, episode: int = 0):
    agent = MW.policy(f"expert:noise={noise}")
    agent.rng = np.random.default_rng(episode)
    s, _ = env.reset(seed=seed, options={"goal": goal_for(task)})
    agent.begin(env, env.goal, "")
    obs, acts, rewards, succ, sim = [s], [], [], [], []
    while True:
        a = agent.act(s)
        s, r, term, trunc, info = env.step(a)
        obs.append(s)
        acts.append(a)
        rewards.append(r)
        succ.append(info["is_success"])
        sim.append(info["sim_success"])
        if term or trunc:
            break
    return (np.array(obs), np.array(acts), np.array(rewards, np.float32), np.array(succ),
            np.array(sim))


@pytest.fixture(scope="module")
def episodes(env):
    """One noisy scripted episode per task (seed 1000)."""
    return {task: run_expert(env, task, 1000) for task in TASKS}


# ------------------------------------------------------------------ construction and layout
@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_passes_check_env(task):
    from gymnasium.utils.env_checker import check_env

    e = MetaWorldKALMEnv(task=task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(e, skip_render_check=True)
    # the one expected warning: envs made without gym.make have no spec
    assert all("spec" in str(w.message) for w in caught), [str(w.message) for w in caught]
    s, _ = e.reset(seed=3)
    assert s.dtype == np.float32 and s.shape == (91,)
    spec = TASKS[task]
    present = {name for name, sl in ENTITY_SLICE.items() if np.any(s[sl])}
    assert present == set(spec.slots) | ({"wall"} if spec.wall else set())
    e.close()


def test_reset_state_is_fresh_not_stale(env):
    from kalm.envs.metaworld.sim import state_of

    for task in ("window-open", "window-close", "faucet-open", "make-coffee"):
        s, _ = env.reset(seed=5, options={"goal": goal_for(task)})
        assert np.array_equal(s, state_of(task, env.sub_env(task)))  # after an mj_forward


def test_seeded_resets_are_reproducible(env):
    a, info = env.reset(seed=42, options={"goal": goal_for("push")})
    b, _ = env.reset(seed=43, options={"goal": goal_for("push")})
    c, _ = env.reset(seed=42, options={"goal": goal_for("push")})
    assert info["layout_seed"] == 42 and info["episode_extras"]["task"] == "push"
    assert np.array_equal(a, c) and not np.array_equal(a, b)
    # unseeded resets continue from the wrapper's generator: reproducible after one seeded one
    first = [env.reset(seed=7)[0]] + [env.reset()[0] for _ in range(3)]
    second = [env.reset(seed=7)[0]] + [env.reset()[0] for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    assert len({x.tobytes() for x in first}) == 4


def test_scripted_episodes_are_reproducible(env, episodes):
    again = run_expert(env, "pick-place", 1000)
    for x, y in zip(episodes["pick-place"], again, strict=True):
        assert np.array_equal(x, y)


def test_actions_are_clipped_and_bad_ones_refused(env):
    env.reset(seed=0, options={"goal": goal_for("reach")})
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0, np.nan, 0, 0]))
    with pytest.raises(ValueError, match="unknown task"):
        MetaWorldKALMEnv(task="fly")
    big, *_ = env.step(np.array([50.0, 0, 0, 0]))
    env.reset(seed=0, options={"goal": goal_for("reach")})
    one, *_ = env.step(np.array([1.0, 0, 0, 0]))
    assert np.array_equal(big, one)


# ------------------------------------------------------------------ judge, rewards
def test_state_judge_agrees_with_the_simulator(env, episodes):
    """kalm's state judge against metaworld's own `info["success"]` (`sim_success`) on every
    step of two noisy scripted episodes per native task (the shared one and another seed);
    the composites' `info["success"]` is kalm's own ordered judge, checked against the
    simulator's joints in `test_composite_stages_match_the_simulators_joints` instead."""
    checked = 0
    for task in TASKS:
        if TASKS[task].composite:
            continue
        for _, _, _, succ, sim in (episodes[task], run_expert(env, task, 1001, episode=1)):
            assert np.mean(succ == sim) >= 0.99, (task, succ, sim)
            checked += sim.any()
    assert checked >= 20  # the comparison covers successes, not only failures


def test_env_rewards_equal_the_shared_reward_function(episodes):
    for task, (obs, acts, rewards, succ, _) in episodes.items():
        labelled, terminals = MW.labels(goal_for(task), obs, acts)
        assert np.array_equal(labelled, rewards), task
        assert np.array_equal(terminals, succ), task
        if succ.any():
            assert rewards[int(np.argmax(succ))] == 10.0


def test_expert_solves_the_tasks_it_can(episodes):
    solved = {task for task, ep in episodes.items() if ep[3].any()}
    # below 100% with sigma 0.1 (docs/metaworld.md): door-lock, pick-place-wall and soccer;
    # locked-door-open needs ~175 steps. Every other task is solved in this seeded episode.
    weaker = {"door-lock", "pick-place-wall", "soccer", "locked-door-open"}
    assert solved >= set(TASKS) - weaker, set(TASKS) - solved


def test_composite_stages_match_the_simulators_joints():
    """locked-door-open's stages, judged by kalm on the 91-d state, against conditions read
    from the simulator itself at every step of a scripted episode: the door hinge's angle
    (stage 1 needs the door closed; kalm reads it from the lock block's quaternion), the lock
    joint's angle (turned from its locked 1.5708) and the handle geom against the open target
    (stage 2)."""
    from kalm.envs.metaworld.goals import door_angle, episode_successes, stage_holds

    e = MetaWorldKALMEnv(max_episode_steps=200)
    sub = e.sub_env("locked-door-open")
    door = sub.model.joint("doorjoint").qposadr[0]
    lock = sub.model.joint("lockjoint").qposadr[0]
    agent = MW.policy("expert:noise=0.0")
    agent.rng = np.random.default_rng(0)
    s, _ = e.reset(seed=1001, options={"goal": goal_for("locked-door-open")})
    agent.begin(e, e.goal, "")
    assert sub.data.qpos[lock] == pytest.approx(1.5708) and sub.data.qpos[door] == 0.0
    states, succ, first_sim_stage1 = [s], [], None
    while True:
        s, _, term, trunc, info = e.step(agent.act(s))
        states.append(s)
        succ.append(info["is_success"])
        door_q, lock_q = float(sub.data.qpos[door]), float(sub.data.qpos[lock])
        assert door_angle(s) == pytest.approx(door_q, abs=2e-3)
        handle_x = float(sub.data.geom("handle").xpos[0])
        assert stage_holds("locked-door-open", 1, s) == (
            abs(handle_x - float(sub._target_pos[0])) <= 0.08)
        if stage_holds("locked-door-open", 0, s):
            assert abs(door_q) <= 0.1 and lock_q < 1.5708 - 0.3  # closed, the lock turned
            first_sim_stage1 = first_sim_stage1 or len(states) - 1
        if term or trunc:
            break
    assert first_sim_stage1 is not None and succ[-1]
    ok = episode_successes(goal_for("locked-door-open"), np.array(states))
    assert ok.tolist() == succ and int(np.argmax(ok)) + 1 > first_sim_stage1
    assert int(np.argmax(ok)) + 1 > 100  # beyond KALM's 100-step horizon
    assert (door, lock) == (9, 10) and sub.data.qpos[door] < -0.5  # the door swung open
    e.reset(seed=3, options={"goal": goal_for("locked-door-open")})
    assert sub.data.qpos[lock] == pytest.approx(1.5708) and sub.data.qpos[door] == 0.0


# ------------------------------------------------------------------ set_state, realism
def test_set_state_rebuilds_free_object_scenes(env):
    from kalm.envs.metaworld.replay import SETTABLE, StateNotSettable, set_state

    for task in SETTABLE:
        s0, _ = env.reset(seed=11, options={"goal": goal_for(task)})
        env.reset(seed=12, options={"goal": goal_for(task)})
        set_state(env, s0)
        assert np.abs(env.state() - s0).max() < 1e-3, task
    env.reset(seed=1, options={"goal": goal_for("door-open")})
    with pytest.raises(StateNotSettable, match="door-open"):
        set_state(env, env.state())


def test_replay_diagnostics_are_null_where_no_state_can_be_set(env, episodes):
    from kalm.imagination.quality import replay_actions

    obs, acts, *_ = episodes["push"]
    states, ok = replay_actions(MW, env, goal_for("push"), obs[0], list(acts))
    assert np.abs(states - obs).max() < 0.01 and ok
    obs, acts, *_ = episodes["door-open"]
    assert replay_actions(MW, env, goal_for("door-open"), obs[0], list(acts)) is None


def test_real_episodes_pass_the_realism_checks(episodes):
    for task, (obs, acts, *_) in episodes.items():
        counts = MW.realism_checks(obs, acts)
        assert not any(counts.values()), (task, counts)


# ------------------------------------------------------------------ collect, evaluate, CLI
def test_collect_and_evaluate(tmp_path):
    from click.testing import CliRunner

    from kalm.cli import main
    from kalm.data.collect import CollectConfig, collect
    from kalm.data.episodes import read_episodes
    from kalm.data.suites import load_builtin_suite
    from kalm.eval.evaluate import evaluate_policy

    suite_file = tmp_path / "two.jsonl"
    suite_file.write_text("\n".join(
        line for line in MW.suite_path("train").read_text().splitlines()
        if '"reach"' in line or '"button-press"' in line) + "\n")
    cfg = CollectConfig(out=str(tmp_path / "real.h5"), env="metaworld", suite_file=str(suite_file),
                        episodes=4, chunk_size=2, workers=1, policy="expert:noise=mix")
    data = collect(cfg, progress=False)
    back = read_episodes(cfg.out)
    assert len(back) == 4 and back.spec.action_type == "continuous"
    assert set(back.extras) >= {"task", "layout_seed", "noise", "attempt"}
    assert {str(t) for t in back.extras["task"]} <= {"reach", "button-press"}
    assert np.abs(back.actions).max() <= 1.0
    for ep in data.episodes():
        assert ep.success and ep.success_steps[-1]
    result = evaluate_policy("random", load_builtin_suite("train", MW).by_level("train"), 2,
                             workers=1, progress=False, env="metaworld")
    assert result.levels["train"].episodes == 2
    out = CliRunner().invoke(main, ["render", cfg.out, "--out", str(tmp_path / "ep.gif")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "ep.gif").stat().st_size > 0


def test_locked_door_open_simulator_judge_agrees_with_the_state_judge():
    """composite.py's judge (the door closed read from the hinge joint) and goals.py's (read
    from the lock block's quaternion) give the same stage 1 and success at every step of
    scripted locked-door-open episodes, and on hand-made states where the lock turns to its
    unlock target with the door ajar: stage 1 must not count then, in either judge."""
    from kalm.envs.metaworld.goals import (
        DOOR_CLOSED_ANGLE,
        StageTracker,
        door_angle,
        door_unlocked,
        episode_successes,
        stage_holds,
    )
    from kalm.envs.metaworld.sim import fresh_native_obs, state_of

    goal = goal_for("locked-door-open")
    e = MetaWorldKALMEnv(max_episode_steps=200)
    sub = e.sub_env("locked-door-open")
    for noise, seed in ((0.0, 1001), (0.1, 1002)):
        agent = MW.policy(f"expert:noise={noise}")
        agent.rng = np.random.default_rng(seed)
        s, _ = e.reset(seed=seed, options={"goal": goal})
        agent.begin(e, e.goal, "")
        tracker = StageTracker(goal, s.astype(np.float64))
        states, sim, ours, stage1 = [s], [], [], []
        while True:
            s, _, term, trunc, info = e.step(agent.act(s))
            states.append(s)
            sim.append(info["sim_success"])
            ours.append(info["is_success"])
            assert tracker.update(s.astype(np.float64)) == info["is_success"]
            assert sub._stage1 == tracker.stage1, (seed, len(states) - 1)
            assert sub.door_angle() == pytest.approx(door_angle(s), abs=2e-3)
            stage1.append(tracker.stage1)
            if term or trunc:
                break
        assert sim == ours and any(stage1), seed
        assert episode_successes(goal, np.array(states)).tolist() == sim
    assert sim[-1]  # the noiseless and the noisy episode: the last one succeeds, both judge so

    # hand-made: the lock at its unlock target, unlocked, with the door 0.12 rad open
    e.reset(seed=1001, options={"goal": goal})
    door = sub.model.joint("doorjoint").qposadr[0]
    lock = sub.model.joint("lockjoint").qposadr[0]

    def put(door_q: float, lock_q: float) -> tuple[np.ndarray, bool, bool]:
        qpos, qvel = sub.data.qpos.copy(), np.zeros_like(sub.data.qvel)
        qpos[door], qpos[lock] = door_q, lock_q
        sub.set_state(qpos, qvel)
        obs = fresh_native_obs(sub)
        _, info = sub.evaluate_state(obs, np.zeros(4))
        return state_of("locked-door-open", sub, obs), bool(info["stage1"]), bool(
            info["success"])

    s0 = e.state()
    ajar, sim_stage1, sim_ok = put(-0.12, 0.0)
    a = ajar.astype(np.float64)
    # what the old simulator judge counted: the lock at the unlock target and turned
    assert abs(sub._unlock_target[0] - a[21]) <= 0.02 and door_unlocked(a)
    assert abs(door_angle(a)) > DOOR_CLOSED_ANGLE
    assert not sim_stage1 and not stage_holds("locked-door-open", 0, a) and not sim_ok
    wide, sim_stage1, sim_ok = put(-1.4, 0.0)  # swung open: stage 2 holds, stage 1 never did
    assert stage_holds("locked-door-open", 1, wide.astype(np.float64))
    assert not sim_stage1 and not sim_ok
    closed, sim_stage1, sim_ok = put(0.0, 0.0)  # closed and unlocked: stage 1 now counts
    assert sim_stage1 and stage_holds("locked-door-open", 0, closed.astype(np.float64))
    assert not sim_ok
    reopened, sim_stage1, sim_ok = put(-1.4, 0.0)
    assert sim_stage1 and sim_ok
    ok = episode_successes(goal, np.array([s0, ajar, wide, closed, reopened]))
    assert ok.tolist() == [False, False, False, True]


def test_real_episodes_pass_through_the_projection_unchanged(episodes):
    """Every rule of `hold_structure` holds on real transitions: the model's structure never
    blocks what the simulator does."""
    for task, (obs, acts, *_) in episodes.items():
        out = MW.project_state(obs[:-1], acts, obs[1:])
        err = np.abs(out - obs[1:].astype(np.float32)).max()
        assert err < 1e-5, (task, err)
