"""The planner (CEM on the dynamics ensemble) on hand-made dynamics whose optimum is known:
it finds the answer where random draws do not, a prior concentrated on the answer finds it at
once, continuous and discrete actions, the members' votes, early exit, a one-step goal, and
the label-folder output of a level."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

from kalm.data.episodes import Episode, EpisodeData, read_episodes, write_episodes
from kalm.envs.base import EnvDefinition, EnvSpecInfo
from kalm.envs.registry import get_env
from kalm.imagination.planner import (
    Categorical,
    PlannerConfig,
    llm_prior,
    plan,
    plan_into,
    plan_level,
    plan_task,
    proposals_by_task,
)
from kalm.imagination.relabel import RelabelConfig

# ----------------------------------------------------------------------------- a 1-d chain
# state x; actions 0: +1, 1: -1, 2 and 3: stay. Goal: reach x >= target; the soonest success
# takes `target` steps of action 0, which uniform draws over 4 actions almost never make.

TARGET, LIMIT = 7, 8


class ChainEnv(gym.Env):
    def __init__(self, **_: object) -> None:
        self.observation_space = gym.spaces.Box(-50, 50, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.x = 0.0
        self.goal: dict = {}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.goal = dict((options or {}).get("goal") or {"target": TARGET})
        self.x = 0.0
        return np.array([self.x], np.float32), {"is_success": False}

    def step(self, action):
        self.x += {0: 1.0, 1: -1.0}.get(int(action), 0.0)
        ok = self.x >= self.goal["target"]
        return np.array([self.x], np.float32), 0.0, ok, False, {"is_success": ok}


def _chain_replay(env, goal, s0, actions):
    x, states = float(s0[0]), [float(s0[0])]
    for a in actions:
        x += {0: 1.0, 1: -1.0}.get(int(a), 0.0)
        states.append(x)
    return np.asarray(states)[:, None], x >= goal["target"]


def _chain_rewards(goal, obs, actions):
    return np.asarray(obs[1:, 0] >= goal["target"], np.float32) * 100.0


CHAIN = EnvDefinition(
    name="chain", spec=EnvSpecInfo("chain", 1, "discrete", 4), state_low=(-50.0,),
    state_high=(50.0,), make=ChainEnv, validate_goal=dict,
    is_success=lambda goal, obs: float(np.asarray(obs).reshape(-1)[0]) >= goal["target"],
    max_steps=lambda goal: LIMIT, episode_rewards=_chain_rewards, replay=_chain_replay,
    goal_distance=lambda goal, obs: np.maximum(goal["target"] - np.asarray(obs)[..., 0], 0.0))


class ChainDynamics:
    """Exact chain dynamics in every member, except that `liars` members never move."""

    spec = CHAIN.spec

    def __init__(self, members: int = 3, liars: int = 0) -> None:
        self.members, self.liars = members, liars

    def member_rollouts(self, s0, actions):
        s0, actions = np.asarray(s0, np.float32), np.asarray(actions)
        moves = np.select([actions == 0, actions == 1], [1.0, -1.0], 0.0)
        honest = np.concatenate([s0[:, None, 0], s0[:, None, 0] + np.cumsum(moves, 1)], 1)
        out = np.repeat(honest[None, :, :, None], self.members, axis=0).astype(np.float32)
        out[: self.liars] = s0[None, :, None, :]
        return out

    def rollout(self, s0, actions):
        single = np.asarray(s0).ndim == 1
        s0b = np.asarray(s0, np.float32).reshape(-1, 1)
        acts = np.asarray(actions).reshape(len(s0b), -1)
        m = self.member_rollouts(s0b, acts)
        states, u = m.mean(0), m.std(0).max(-1)[:, 1:]
        return (states[0], u[0]) if single else (states, u)


GOAL = {"target": TARGET}
SPACE = gym.spaces.Discrete(4)
ALL_VOTES = RelabelConfig(min_votes=3)
ANSWER = np.zeros(TARGET, np.int64)


def _plan(cfg, dynamics=None, proposals=(), judge=ALL_VOTES, seed=0):
    return plan_task(CHAIN, GOAL, np.zeros(1, np.float32), dynamics or ChainDynamics(), SPACE,
                     cfg, judge, np.random.default_rng(seed), proposals)


def test_search_finds_the_soonest_success_that_random_draws_miss():
    cfg = PlannerConfig(candidates=200, iterations=12, seed=0, disagreement=0.0, polish=4)
    result = _plan(cfg)
    assert result.confirmed
    assert len(result.actions) == LIMIT  # the goal's step limit is the horizon
    assert result.states[TARGET, 0] >= TARGET
    # the success is the soonest possible: TARGET steps, all of them +1
    first = CHAIN.first_success(GOAL, result.states, result.actions)
    assert first == TARGET - 1 and np.all(result.actions[:TARGET] == 0)
    # one iteration of the same population (random draws only) finds none
    once = _plan(dataclasses.replace(cfg, iterations=1))
    assert not once.confirmed and once.iterations == 1


def test_a_prior_concentrated_on_the_answer_beats_uniform_at_equal_candidates():
    cfg = PlannerConfig(candidates=50, iterations=1, seed=0)
    uniform = _plan(cfg, proposals=[ANSWER])  # the uniform prior ignores proposals
    assert not uniform.confirmed
    llm = _plan(dataclasses.replace(cfg, prior="llm"), proposals=[ANSWER])
    assert llm.confirmed and np.all(llm.actions[:TARGET] == 0)
    # the proposal does not even need to be injected: the prior's mass alone finds it
    prior = llm_prior(SPACE, LIMIT, [ANSWER], dataclasses.replace(cfg, llm_weight=1.0))
    assert isinstance(prior, Categorical)
    assert np.allclose(prior.probs[:TARGET, 0], 1.0) and np.allclose(prior.probs[TARGET:], 0.25)


def test_a_wrong_prior_cannot_stop_the_search():
    wrong = np.ones(LIMIT, np.int64)  # walks away from the goal
    result = _plan(PlannerConfig(prior="llm", candidates=200, iterations=12, seed=0),
                   proposals=[wrong])
    assert result.confirmed


def test_votes_decide_and_search_exits_early_at_a_confirmed_success():
    easy = {"target": 1}
    cfg = PlannerConfig(candidates=64, iterations=6, seed=0, polish=0)
    rng = np.random.default_rng(0)
    # every member agrees: the first population already holds a success, so one iteration
    r = plan_task(CHAIN, easy, np.zeros(1, np.float32), ChainDynamics(), SPACE, cfg,
                  ALL_VOTES, rng)
    assert r.confirmed and r.iterations == 1 and r.candidates == 64
    # one member of three never moves: all votes are never given, however long the search
    liar = ChainDynamics(members=3, liars=1)
    r = plan_task(CHAIN, easy, np.zeros(1, np.float32), liar, SPACE, cfg, ALL_VOTES, rng)
    assert not r.confirmed and r.iterations == cfg.iterations
    # two of three suffice when the label stage asks for two (the members' mean, which the
    # label reads, then needs a second +1 step: (0 + 2 + 2) / 3 >= 1)
    r = plan_task(CHAIN, easy, np.zeros(1, np.float32), liar, SPACE, cfg,
                  RelabelConfig(min_votes=2), rng)
    assert r.confirmed
    assert CHAIN.first_success(easy, r.states, r.actions) is not None


# ----------------------------------------------------------------------------- continuous

class PointDynamics:
    """s' = s + a in every member, a in [-1, 1]^2."""

    def member_rollouts(self, s0, actions):
        s0, a = np.asarray(s0, np.float32), np.asarray(actions, np.float32)
        one = np.concatenate([s0[:, None], s0[:, None] + np.cumsum(a, 1)], 1)
        return np.repeat(one[None], 2, axis=0)

    def rollout(self, s0, actions):
        single = np.asarray(s0).ndim == 1
        s0b = np.asarray(s0, np.float32).reshape(-1, 2)
        a = np.asarray(actions, np.float32).reshape(len(s0b), -1, 2)
        states = self.member_rollouts(s0b, a)[0]
        u = np.zeros(a.shape[:2], np.float32)
        return (states[0], u[0]) if single else (states, u)


POINT_GOAL = {"x": 3.0, "y": -2.0}


def _near(goal, obs):
    return np.hypot(np.asarray(obs)[..., 0] - goal["x"], np.asarray(obs)[..., 1] - goal["y"])


POINT = EnvDefinition(
    name="point", spec=EnvSpecInfo("point", 2, "continuous", 2), state_low=(-9.0, -9.0),
    state_high=(9.0, 9.0), make=lambda **_: None, validate_goal=dict,
    is_success=lambda goal, obs: bool(_near(goal, obs) < 0.3), max_steps=lambda goal: 6,
    episode_rewards=lambda goal, obs: -_near(goal, obs[1:]), action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0))


@pytest.mark.parametrize("hook", [True, False])
def test_continuous_actions_reach_the_goal_in_the_fewest_steps(hook):
    # without goal_distance the planner climbs the env's own return: slower, still right
    definition = POINT if hook else dataclasses.replace(POINT, goal_distance=None)
    if hook:
        definition = dataclasses.replace(POINT, goal_distance=lambda g, o: np.maximum(
            _near(g, o) - 0.29, 0.0))
    cfg = PlannerConfig(candidates=300, iterations=10, seed=1, disagreement=0.0)
    r = plan_task(definition, POINT_GOAL, np.zeros(2, np.float32), PointDynamics(),
                  gym.spaces.Box(-1, 1, (2,), np.float32), cfg, RelabelConfig(min_votes=2),
                  np.random.default_rng(1))
    assert r.confirmed
    assert r.actions.shape == (6, 2) and r.actions.dtype == np.float32
    assert np.all(np.abs(r.actions) <= 1.0)
    # x needs 3 unit steps at least: the soonest success is step 3 (index 2), or 4 at worst
    assert definition.first_success(POINT_GOAL, r.states, r.actions) in (2, 3)


# ----------------------------------------------------------------------------- CLEVR

def test_a_one_step_push_goal_is_planned_over_one_action():
    from test_shooting import S0, GridDynamics

    clevr = get_env("clevr")
    # blue pushed left: of the three pushes along "left", the hand-made dynamics puts blue
    # off the table (2) or into purple (5); only 7 is physically possible (batch_plausible)
    push = {"kind": "push", "object": "blue", "direction": "left"}
    r = plan_task(clevr, push, S0, GridDynamics(), gym.spaces.Discrete(40),
                  PlannerConfig(candidates=40, iterations=3, seed=0), ALL_VOTES,
                  np.random.default_rng(0))
    assert len(r.actions) == 1 and r.confirmed
    assert divmod(int(r.actions[0]), 8) == (1, 7)
    # where no push along the goal is possible, none is kept
    cyan = {"kind": "push", "object": "cyan", "direction": "front"}
    r = plan_task(clevr, cyan, S0, GridDynamics(), gym.spaces.Discrete(40),
                  PlannerConfig(candidates=40, iterations=2, seed=0), ALL_VOTES,
                  np.random.default_rng(0))
    assert not r.confirmed


# ----------------------------------------------------------------------------- a level

def _chain_tasks(proposals: int) -> EpisodeData:
    eps = []
    for task, target in enumerate((2, TARGET, 3)):
        for j in range(proposals):
            acts = np.zeros(target, np.int64) if j == 0 else np.full(3, 2, np.int64)
            obs = np.zeros((len(acts) + 1, 1), np.float32)
            eps.append(Episode(obs, acts, np.zeros(len(acts), np.float32),
                               np.zeros(len(acts), bool), f"reach {target}",
                               {"target": target},
                               extras={"task_index": task, "proposal": j, "level": "hard"}))
    return EpisodeData.from_episodes(eps, CHAIN.episode_spec("chain"), source="imagined")


def test_plan_level_writes_the_label_layout_with_its_compute(tmp_path):
    src = tmp_path / "imagined.h5"
    write_episodes(_chain_tasks(proposals=3), src)
    assert [len(v) for v in proposals_by_task(read_episodes(src)).values()] == [3, 3, 3]
    cfg = PlannerConfig(prior="llm", candidates=40, iterations=2, seed=0)
    stats = plan_level(src, tmp_path / "llm", ChainDynamics(), CHAIN, cfg, progress=False,
                       judge=ALL_VOTES)
    assert stats["generated"] == 3 and stats["tasks"] == 3
    assert stats["kept"]["success"] == 3  # the greedy proposals reach every target
    assert stats["cpu_seconds"] > 0 and stats["cpu_seconds_per_kept"] > 0
    assert stats["diagnostic"]["replayed_successful"] == 3  # recorded, never used
    kept = read_episodes(tmp_path / "llm" / "labelled-success.h5")
    assert [int(t) for t in kept.extras["task_index"]] == [0, 1, 2]
    assert all(bool(x) for x in kept.extras["ensemble_success"])
    # the same seed plans the same rollouts
    again = plan_level(src, tmp_path / "again", ChainDynamics(), CHAIN, cfg, progress=False,
                       judge=ALL_VOTES)
    assert again["kept"] == stats["kept"]
    a = read_episodes(tmp_path / "again" / "labelled.h5")
    b = read_episodes(tmp_path / "llm" / "labelled.h5")
    assert np.array_equal(a.actions, b.actions)


def test_zero_step_tasks_plan_like_the_imagine_files_first_proposals(tmp_path):
    # `stage.task_starts` hands the planner tasks with a start state and no steps; the uniform
    # prior plans them exactly as it plans the same tasks read from an imagine file
    src = tmp_path / "imagined.h5"
    write_episodes(_chain_tasks(proposals=1), src)
    starts = [Episode(e.observations[:1], np.zeros(0, np.int64), np.zeros(0, np.float32),
                      np.zeros(0, bool), e.instruction, e.goal,
                      extras={"task_index": int(e.extras["task_index"]), "level": "hard"})
              for e in read_episodes(src).episodes()]
    cfg = PlannerConfig(candidates=40, iterations=3, seed=0)
    from_file = plan_level(src, tmp_path / "file", ChainDynamics(), CHAIN, cfg, progress=False,
                           judge=ALL_VOTES)
    from_starts = plan_into(starts, tmp_path / "starts", ChainDynamics(), CHAIN, cfg,
                            progress=False, judge=ALL_VOTES, source="task starts")
    assert from_starts["kept"] == from_file["kept"] and from_starts["tasks"] == 3
    a = read_episodes(tmp_path / "file" / "labelled.h5")
    b = read_episodes(tmp_path / "starts" / "labelled.h5")
    assert np.array_equal(a.actions, b.actions) and a.spec == b.spec
    assert [int(t) for t in b.extras["task_index"]] == [0, 1, 2]


def test_the_llm_prior_needs_proposals_and_bad_settings_are_refused():
    tasks = _chain_tasks(proposals=1)
    with pytest.raises(ValueError, match="proposals"):
        plan(tasks, ChainDynamics(), CHAIN, PlannerConfig(prior="llm"), proposals=None,
             progress=False)
    with pytest.raises(ValueError, match="prior"):
        PlannerConfig(prior="oracle")
    with pytest.raises(ValueError, match="candidates"):
        PlannerConfig(candidates=0)
    with pytest.raises(ValueError, match="elite_frac"):
        PlannerConfig(elite_frac=1.5)


def test_a_rollout_outvoted_at_its_first_step_is_dropped_not_written(tmp_path):
    # one step allowed; +1 brings the members' mean (0 + 1 + 1) / 3 to the goal, 0.5, but one
    # member of three never moves: the label rule cuts the rollout before that step, leaving
    # no transition
    obs = np.zeros((2, 1), np.float32)
    ep = Episode(obs, np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros(1, bool),
                 "reach half", {"target": 0.5}, extras={"task_index": 0, "level": "hard"})
    src = tmp_path / "imagined.h5"
    write_episodes(EpisodeData.from_episodes([ep], CHAIN.episode_spec("chain"),
                                             source="imagined"), src)
    one_step = dataclasses.replace(CHAIN, max_steps=lambda goal: 1)
    stats = plan_level(src, tmp_path / "out", ChainDynamics(members=3, liars=1), one_step,
                       PlannerConfig(candidates=16, iterations=2, seed=0), progress=False,
                       judge=ALL_VOTES)
    assert stats["generated"] == 1 and stats["kept"] == {"all": 0, "success": 0}
    assert not (tmp_path / "out" / "labelled.h5").exists()
