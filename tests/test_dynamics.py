"""The dynamics ensemble and the relabelling of imagined rollouts on it (no simulator labels)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from kalm.data.episodes import Episode, EpisodeData, read_episodes, write_episodes
from kalm.envs.base import EnvSpecInfo
from kalm.envs.registry import get_env, make_env
from kalm.imagination.dynamics import (
    META,
    DynamicsConfig,
    DynamicsEnsemble,
    DynamicsFileError,
    split_episodes,
    transitions,
)
from kalm.imagination.relabel import (
    RelabelConfig,
    auroc,
    judge_quality,
    relabel,
    relabel_episode,
    relabel_file,
)

OBS, ACTS = 3, 4
OFFSETS = np.array([[0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, -0.3], [-0.2, 0.1, 0.1]],
                   dtype=np.float32)
MIX = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.95]], dtype=np.float32)


def linear_step(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """A deterministic linear system: s' = s M + offset[a]."""
    return (s @ MIX + OFFSETS[a]).astype(np.float32)


def linear_data(n: int = 200, t: int = 8, seed: int = 0) -> EpisodeData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, size=n).astype(np.int32)
    obs = np.zeros((n, t + 1, OBS), np.float32)
    act = np.zeros((n, t), np.int64)
    obs[:, 0] = rng.uniform(-1, 1, size=(n, OBS))
    for k in range(t):
        act[:, k] = rng.integers(ACTS, size=n)
        obs[:, k + 1] = linear_step(obs[:, k], act[:, k])
    valid = np.arange(t + 1)[None, :] <= lengths[:, None]
    obs[~valid] = 0
    act[~valid[:, 1:]] = 0
    spec = EnvSpecInfo("linear", OBS, "discrete", ACTS)
    return EpisodeData(spec, obs, act, np.zeros((n, t), np.float32), np.zeros((n, t), bool),
                       lengths, ["go"] * n, [{}] * n, source="real")


def continuous_data(n: int = 20, t: int = 5) -> EpisodeData:
    rng = np.random.default_rng(1)
    obs = np.zeros((n, t + 1, OBS), np.float32)
    act = rng.uniform(-1, 1, size=(n, t, 2)).astype(np.float32)
    obs[:, 0] = rng.uniform(-1, 1, size=(n, OBS))
    for k in range(t):
        obs[:, k + 1] = obs[:, k] + 0.1 * np.pad(act[:, k], ((0, 0), (0, 1)))
    spec = EnvSpecInfo("cont", OBS, "continuous", 2)
    return EpisodeData(spec, obs, act, np.zeros((n, t), np.float32), np.zeros((n, t), bool),
                       np.full(n, t, np.int32), ["go"] * n, [{}] * n, source="real")


SMALL = DynamicsConfig(members=3, hidden=64, layers=2, epochs=40, batch_size=64, lr=3e-3,
                       weight_decay=0.0, val_fraction=0.2, seed=0, patience=None)


@pytest.fixture(scope="module")
def linear_ensemble() -> DynamicsEnsemble:
    return DynamicsEnsemble.fit(linear_data(), SMALL, progress=False)


# ---------------------------------------------------------------------------- the ensemble
def test_training_reduces_the_loss_and_learns_a_linear_system(linear_ensemble):
    hist = linear_ensemble.training["history"]
    assert hist[-1]["train_mse"] < 0.05 * hist[0]["train_mse"]
    assert np.mean(hist[-1]["val_mse"]) < 0.05 * np.mean(hist[0]["val_mse"])
    data = linear_data(n=30, seed=7)  # fresh episodes of the same system
    tr = transitions(data)
    mean, members = linear_ensemble.predict(tr.states, tr.actions)
    assert mean.shape == (len(tr), OBS) and members.shape == (3, len(tr), OBS)
    assert np.abs(mean - tr.next_states).mean() < 0.03
    # open loop over a whole episode stays close to the true states
    ep = data.episode(0)
    states, u = linear_ensemble.rollout(ep.observations[0], ep.actions)
    assert states.shape == ep.observations.shape and u.shape == (ep.length,)
    assert np.abs(states - ep.observations).max() < 0.1


def test_member_rollouts_follow_each_member_on_its_own(linear_ensemble):
    data = linear_data(n=6, seed=11)
    s0, acts = data.observations[:, 0], data.actions[:, :5]
    members = linear_ensemble.member_rollouts(s0, acts)
    assert members.shape == (3, 6, 6, OBS)
    assert np.array_equal(members[:, :, 0], np.repeat(s0[None], 3, axis=0))
    # step by step with predict(): member k's next state from member k's own current state
    for k in range(3):
        s = s0.copy()
        for t in range(5):
            _, per_member = linear_ensemble.predict(s, acts[:, t])
            s = per_member[k]
            assert np.allclose(members[k, :, t + 1], s, atol=1e-5)
    # one step ahead, the members' mean is the mean rollout's first state
    mean_states, _ = linear_ensemble.rollout(s0, acts)
    assert np.allclose(members[:, :, 1].mean(0), mean_states[:, 1], atol=1e-5)
    with pytest.raises(ValueError, match="member_rollouts takes"):
        linear_ensemble.member_rollouts(s0[0], acts[0])


def test_validation_split_is_by_episode_and_seeded():
    tr, va = split_episodes(50, 0.2, seed=3)
    assert len(va) == 10 and len(tr) == 40 and not set(tr) & set(va)
    assert np.array_equal(va, split_episodes(50, 0.2, seed=3)[1])
    data = linear_data(n=20)
    t = transitions(data, va[va < 20])
    assert set(t.episodes) <= set(va)


def test_shapes_for_continuous_actions_and_batched_rollouts():
    data = continuous_data()
    ens = DynamicsEnsemble.fit(data, replace(SMALL, epochs=2), progress=False)
    s = data.observations[:4, 0]
    mean, members = ens.predict(s, data.actions[:4, 0])
    assert mean.shape == (4, OBS) and members.shape == (3, 4, OBS)
    assert ens.disagreement(s, data.actions[:4, 0]).shape == (4,)
    states, u = ens.rollout(s, data.actions[:4])
    assert states.shape == (4, 6, OBS) and u.shape == (4, 5)
    with pytest.raises(ValueError, match="2 values"):
        ens.predict(s, np.zeros((4, 3), np.float32))


def test_fit_is_deterministic_and_save_load_predicts_identically(tmp_path):
    data = linear_data(n=40)
    cfg = replace(SMALL, epochs=3)
    a = DynamicsEnsemble.fit(data, cfg, progress=False)
    b = DynamicsEnsemble.fit(data, cfg, progress=False)
    tr = transitions(data)
    assert np.array_equal(a.predict(tr.states, tr.actions)[1], b.predict(tr.states, tr.actions)[1])
    a.save(tmp_path / "dyn")
    c = DynamicsEnsemble.load(tmp_path / "dyn", spec=data.spec)
    assert c.config == a.config
    assert np.array_equal(a.predict(tr.states, tr.actions)[1], c.predict(tr.states, tr.actions)[1])
    assert np.array_equal(a.disagreement(tr.states, tr.actions),
                          c.disagreement(tr.states, tr.actions))


def test_loading_for_another_spec_names_the_file_and_field(tmp_path):
    data = linear_data(n=20)
    DynamicsEnsemble.fit(data, replace(SMALL, epochs=1), progress=False).save(tmp_path / "d")
    meta = str(tmp_path / "d" / META)
    other = EnvSpecInfo("linear", OBS + 1, "discrete", ACTS)
    with pytest.raises(DynamicsFileError, match=r"spec\.obs_dim") as err:
        DynamicsEnsemble.load(tmp_path / "d", spec=other)
    assert meta in str(err.value)
    with pytest.raises(DynamicsFileError, match=r"spec\.action_type"):
        DynamicsEnsemble.load(tmp_path / "d", spec=EnvSpecInfo("linear", OBS, "continuous",
                                                                 ACTS))
    with pytest.raises(DynamicsFileError, match=r"spec\.env"):
        DynamicsEnsemble.load(tmp_path / "d", spec=EnvSpecInfo("clevr", OBS, "discrete", ACTS))
    broken = json.loads((tmp_path / "d" / META).read_text())
    broken["normalisation"]["state_std"] = [1.0]
    (tmp_path / "d" / META).write_text(json.dumps(broken))
    with pytest.raises(DynamicsFileError, match=r"normalisation\.state_std"):
        DynamicsEnsemble.load(tmp_path / "d")
    with pytest.raises(DynamicsFileError, match="no such file"):
        DynamicsEnsemble.load(tmp_path / "missing")


def test_disagreement_is_higher_off_distribution(linear_ensemble):
    tr = transitions(linear_data(n=30, seed=5))
    on = linear_ensemble.disagreement(tr.states, tr.actions)
    off = linear_ensemble.disagreement(tr.states + 8.0, tr.actions)
    assert off.mean() > 5 * on.mean()


def test_held_out_uncertainty_quantiles_are_stored(linear_ensemble, tmp_path):
    q99 = linear_ensemble.uncertainty_quantile(0.99)
    assert 0 < linear_ensemble.uncertainty_quantile(0.5) <= q99
    assert q99 <= linear_ensemble.uncertainty_quantile(1.0)
    linear_ensemble.save(tmp_path / "d")
    assert DynamicsEnsemble.load(tmp_path / "d").uncertainty_quantile(0.99) == q99
    with pytest.raises(ValueError, match=r"quantile 0\.42"):
        linear_ensemble.uncertainty_quantile(0.42)


def test_refuses_imagined_data():
    data = linear_data(n=10)
    data.source = "imagined"
    with pytest.raises(ValueError, match="real episodes only"):
        DynamicsEnsemble.fit(data, SMALL, progress=False)


# ---------------------------------------------------------------------------- relabelling
CLEVR = get_env("clevr")
GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}


class SimulatorDynamics:
    """Stands in for a perfect ensemble: the simulator's own next states, a given uncertainty."""

    spec = CLEVR.spec

    def __init__(self, goal: dict, uncertainty: np.ndarray | None = None) -> None:
        self.env = make_env(CLEVR, "paper")
        self.goal = goal
        self.uncertainty = uncertainty

    def rollout(self, s0: np.ndarray, actions: np.ndarray):
        if np.ndim(s0) == 2:
            out = [self.rollout(s, a) for s, a in zip(s0, actions, strict=True)]
            return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
        states, _ = CLEVR.replay(self.env, self.goal, s0, np.asarray(actions))
        u = (np.full(len(actions), 0.1, np.float32) if self.uncertainty is None
             else self.uncertainty[: len(actions)])
        return states.astype(np.float32), u


def imagined(real: Episode, observations: np.ndarray, actions: np.ndarray) -> Episode:
    """An imagined episode labelled as kalm imagine labels one: on its own (LLM) states."""
    rewards, terminals = CLEVR.labels(GOAL, observations, actions)
    return Episode(observations.astype(np.float32), np.asarray(actions, np.int64), rewards,
                   terminals, real.instruction, GOAL,
                   extras={"self_success": bool(terminals[-1]), "replay_success": False})


def test_a_wrongly_self_judged_success_is_relabelled_a_failure(expert_episode):
    s0 = expert_episode.observations[0]
    actions = np.array([8 * 2 + 0])  # push the green ball right: does nothing for red/blue
    dyn = SimulatorDynamics(GOAL)
    true_states, _ = dyn.rollout(s0, actions)
    assert not CLEVR.success(GOAL, true_states[-1], true_states[0], int(actions[0]))
    fake = s0.copy()
    fake[0:2] = s0[2:4] + np.array([-0.3, 0.0])  # the LLM "moves" red next to blue, on its left
    ep = imagined(expert_episode, np.stack([s0, fake]), actions)
    assert ep.terminals[-1] and ep.extras["self_success"]  # what the LLM's labels say
    out = relabel_episode(ep, dyn, CLEVR)
    assert not out.extras["ensemble_success"] and not out.terminals.any()
    assert out.length == 1 and not out.success
    assert np.allclose(out.observations, true_states)
    assert out.rewards[0] != 100.0


def test_a_wrongly_self_judged_failure_is_relabelled_a_success(expert_episode):
    real = expert_episode
    n = real.length
    # the LLM predicts that nothing moves (no success), then keeps pushing for two more steps
    actions = np.concatenate([real.actions, [0, 0]])
    frozen = np.repeat(real.observations[:1], n + 3, axis=0)
    ep = imagined(real, frozen, actions)
    assert not ep.terminals.any()
    out = relabel_episode(ep, SimulatorDynamics(GOAL), CLEVR)
    first = next(t for t in range(n) if real.success_steps[t])
    assert out.extras["ensemble_success"] and out.length == first + 1
    assert out.terminals[-1] and not out.terminals[:-1].any() and out.rewards[-1] == 100.0
    assert np.allclose(out.observations, real.observations[: first + 2], atol=1e-5)
    assert out.extras["ensemble_steps"] == first + 1 and not out.extras["ensemble_truncated"]


def test_the_penalty_subtracts_lam_times_the_uncertainty(expert_episode):
    real = expert_episode
    u = np.linspace(0.1, 0.9, 20).astype(np.float32)
    ep = imagined(real, np.repeat(real.observations[:1], real.length + 1, axis=0), real.actions)
    dyn = SimulatorDynamics(GOAL, u)
    plain = relabel_episode(ep, dyn, CLEVR)
    lam = 0.7
    pen = relabel_episode(ep, dyn, CLEVR, RelabelConfig(penalty=lam))
    assert np.array_equal(pen.rewards, (plain.rewards - np.float32(lam) * u[: plain.length])
                          .astype(np.float32))
    assert np.array_equal(pen.terminals, plain.terminals)
    assert pen.extras["ensemble_uncertainty_max"] == pytest.approx(u[: plain.length].max())


def test_truncation_ends_before_the_first_untrusted_step_without_a_terminal(expert_episode):
    real = expert_episode
    n = real.length
    ep = imagined(real, np.repeat(real.observations[:1], n + 1, axis=0), real.actions)
    u = np.full(n, 0.1, np.float32)
    u[n - 1] = 5.0  # the success step itself is untrusted
    out = relabel_episode(ep, SimulatorDynamics(GOAL, u), CLEVR,
                          RelabelConfig(max_uncertainty=1.0))
    assert out.length == n - 1 and not out.terminals.any()
    assert out.extras["ensemble_truncated"] and not out.extras["ensemble_success"]
    u[0] = 5.0  # nothing trusted: relabel() drops the episode
    data = EpisodeData.from_episodes([ep, ep], CLEVR.episode_spec(), source="imagined")
    kept, stats = relabel(data, SimulatorDynamics(GOAL, u), CLEVR,
                          RelabelConfig(max_uncertainty=1.0))
    assert kept == [] and stats.dropped_untrusted == 2
    kept, stats = relabel(data, SimulatorDynamics(GOAL), CLEVR)
    assert len(kept) == 2 and stats.ensemble_success == 2 and stats.self_success == 0
    assert EpisodeData.from_episodes(kept, CLEVR.episode_spec(), source="imagined")


class VotingDynamics(SimulatorDynamics):
    """The simulator as the members' mean, and members of which only `agree` reach the goal
    (the others predict that nothing moves)."""

    def __init__(self, goal: dict, members: int, agree: int) -> None:
        super().__init__(goal)
        self.members, self.agree = members, agree

    def member_rollouts(self, s0: np.ndarray, actions: np.ndarray) -> np.ndarray:
        true, _ = self.rollout(s0, actions)
        frozen = np.repeat(np.asarray(s0, np.float32)[:, None], true.shape[1], axis=1)
        return np.stack([true if k < self.agree else frozen for k in range(self.members)])


def test_too_few_member_votes_make_the_success_step_untrusted(expert_episode):
    real = expert_episode
    n = real.length
    ep = imagined(real, np.repeat(real.observations[:1], n + 1, axis=0), real.actions)
    data = EpisodeData.from_episodes([ep], CLEVR.episode_spec(), source="imagined")
    # no vote requirement: the mean rollout (the simulator here) decides, votes are stored
    plain, _ = relabel(data, VotingDynamics(GOAL, 5, 3), CLEVR)
    assert plain[0].extras["ensemble_success"] and plain[0].extras["ensemble_votes"] == 3
    assert plain[0].terminals[-1] and plain[0].length == n
    # 3 of 5 members reach the goal: enough for min_votes 3, not for 4
    ok, _ = relabel(data, VotingDynamics(GOAL, 5, 3), CLEVR, RelabelConfig(min_votes=3))
    assert ok[0].extras["ensemble_success"] and ok[0].terminals[-1]
    out, stats = relabel(data, VotingDynamics(GOAL, 5, 3), CLEVR, RelabelConfig(min_votes=4))
    assert not out[0].extras["ensemble_success"] and stats.ensemble_success == 0
    # the success transition is not trusted: the episode ends before it, as a timeout
    assert out[0].length == n - 1 and not out[0].terminals.any()
    assert out[0].extras["ensemble_truncated"] and stats.truncated == 1
    # a model without members has no votes to give
    with pytest.raises(ValueError, match="min_votes needs"):
        relabel(data, SimulatorDynamics(GOAL), CLEVR, RelabelConfig(min_votes=1))
    with pytest.raises(ValueError, match="min_votes must be"):
        RelabelConfig(min_votes=0)


def test_relabel_file_writes_a_valid_imagined_file(expert_episode, tmp_path):
    real = expert_episode
    ep = imagined(real, np.repeat(real.observations[:1], real.length + 1, axis=0), real.actions)
    ep.extras["level"] = "rephrase"
    data = EpisodeData.from_episodes([ep, ep], CLEVR.episode_spec("clevr"), source="imagined")
    write_episodes(data, tmp_path / "im.h5")
    stats, _ = relabel_file(tmp_path / "im.h5", SimulatorDynamics(GOAL), tmp_path / "re.h5",
                            RelabelConfig(penalty=0.5))
    out = read_episodes(tmp_path / "re.h5")
    assert len(out) == 2 and stats.ensemble_success == 2 and out.attrs["relabel_penalty"] == 0.5
    assert out.extras["ensemble_success"].all() and out.terminals[np.arange(2),
                                                                   out.lengths - 1].all()
    assert list(out.extras["level"]) == ["rephrase", "rephrase"]


def test_relabelling_refuses_a_model_for_another_env(linear_ensemble, expert_episode):
    with pytest.raises(ValueError, match="obs_dim"):
        relabel_episode(expert_episode, linear_ensemble, CLEVR)


# ---------------------------------------------------------------------------- judging
def _eps(truth, replayed=None):
    replayed = replayed or [True] * len(truth)
    return [Episode(np.zeros((2, 1), np.float32), np.zeros(1, np.int64), np.zeros(1, np.float32),
                    np.zeros(1, bool), "", {}, extras={"replay_success": t, "replayed": r})
            for t, r in zip(truth, replayed, strict=True)]


def test_precision_recall_auroc_on_a_hand_made_case():
    truth = [True, True, False, False, True, False]
    judged = [True, False, True, False, True, False]
    q = judge_quality(_eps(truth), judged)
    assert (q.n, q.positives, q.kept, q.true_positives) == (6, 3, 3, 2)
    assert q.precision == pytest.approx(2 / 3) and q.recall == pytest.approx(2 / 3)
    assert q.kept_share == pytest.approx(0.5) and q.false_positive_rate == pytest.approx(1 / 3)
    assert q.auroc == pytest.approx(6 / 9)  # a verdict ranks with ties: balanced accuracy
    score = [0.9, 0.4, 0.6, 0.1, 0.8, 0.3]
    assert judge_quality(_eps(truth), judged, score=score).auroc == pytest.approx(8 / 9)
    # rollouts kalm imagine could not replay are left out
    q = judge_quality(_eps([*truth, True], [True] * 6 + [False]), [*judged, False])
    assert q.n == 6 and q.recall == pytest.approx(2 / 3)
    assert judge_quality(_eps([False, False]), [True, False]).recall is None
    assert judge_quality(_eps([True, False]), [False, False]).precision is None


def test_auroc_matches_the_rank_definition():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200) + 0.5 * y, 1)  # ties on purpose
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert auroc(s, y) == pytest.approx(pairs)
    assert auroc(s, np.ones(200, bool)) is None


def test_cli_fits_an_ensemble_and_relabels_keeping_only_successes(expert_episode, tmp_path):
    from click.testing import CliRunner

    from kalm.cli import main

    real = expert_episode
    spec = CLEVR.episode_spec("clevr")
    write_episodes(EpisodeData.from_episodes([real] * 4, spec, source="real"), tmp_path / "r.h5")
    run = CliRunner().invoke
    r = run(main, ["dynamics", "--real", str(tmp_path / "r.h5"), "--out", str(tmp_path / "dyn"),
                   "--members", "2", "--hidden", "16", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "dyn" / META).is_file()
    fitted = DynamicsEnsemble.load(tmp_path / "dyn", spec=spec)
    np.testing.assert_allclose(fitted.bounds[0], CLEVR.clamp_box()[0])  # the reset box too

    # one rollout that stays put (judged successful on its own states by construction below)
    # and one with the real actions; only the ensemble's judgement decides what is kept
    still = imagined(real, np.repeat(real.observations[:1], real.length + 1, axis=0),
                     real.actions)
    moving = imagined(real, real.observations, real.actions)
    write_episodes(EpisodeData.from_episodes([still, moving], spec, source="imagined"),
                   tmp_path / "im.h5")
    r = run(main, ["relabel", str(tmp_path / "im.h5"), "--dynamics", str(tmp_path / "dyn"),
                   "--out", str(tmp_path / "all.h5")])
    assert r.exit_code == 0, r.output
    every = read_episodes(tmp_path / "all.h5")
    assert len(every) == 2 and "ensemble_success" in r.output
    ok = every.extras["ensemble_success"].astype(bool)
    r = run(main, ["relabel", str(tmp_path / "im.h5"), "--dynamics", str(tmp_path / "dyn"),
                   "--out", str(tmp_path / "ok.h5"), "--keep", "success"])
    if ok.any():
        assert r.exit_code == 0, r.output
        kept = read_episodes(tmp_path / "ok.h5")
        assert len(kept) == int(ok.sum()) and kept.extras["ensemble_success"].all()
    else:
        assert r.exit_code != 0 and "no relabelled rollout is left" in r.output

    r = run(main, ["relabel", str(tmp_path / "r.h5"), "--dynamics", str(tmp_path / "dyn"),
                   "--out", str(tmp_path / "x.h5")])
    assert r.exit_code != 0 and "imagined episodes" in r.output


def test_the_clamp_box_covers_every_clevr_start_state(tmp_path):
    """CLEVR's start positions are sampled from x ~ U(-0.5, 0.5), y ~ U(-0.3, 0.5), wider than the
    table box states after a step lie in; the ensemble's clamp (the definition's clamp_box(), as
    `kalm run` and `kalm dynamics` pass it) must not clip a start state."""
    definition = get_env("clevr")
    env = make_env(definition, init_region="paper")
    starts = np.stack([env.reset(seed=seed)[0] for seed in range(300)])
    low, high = definition.clamp_box()
    np.testing.assert_array_equal(np.clip(starts, low, high), starts)
    assert (np.clip(starts, definition.state_low, definition.state_high) != starts).any()
    xy = np.asarray(low).reshape(-1, 2), np.asarray(high).reshape(-1, 2)
    np.testing.assert_allclose(xy[0], [[-0.5, -0.3]] * 5)  # the reset box's lower corner
    np.testing.assert_allclose(xy[1], [[0.5, 0.57]] * 5)  # x of the reset box, y of the table
    # an env without a reset box clamps to its state box
    mw = get_env("metaworld")
    assert mw.clamp_box() == (tuple(mw.state_low), tuple(mw.state_high))


def test_a_projection_applies_to_every_predicted_state(linear_ensemble):
    """`with_projection` (a planner's env structure, e.g. CLEVR's non-overlapping balls) acts
    after every step of the mean and of each member's own rollout, and leaves the original
    ensemble as it was."""
    calls = []

    def floor_at_zero(prev, actions, state):
        calls.append(np.shape(state))
        return np.maximum(state, 0.0)

    projected = linear_ensemble.with_projection(floor_at_zero)
    rng = np.random.default_rng(0)
    s0 = rng.uniform(-1, 1, size=(6, OBS)).astype(np.float32)
    acts = rng.integers(ACTS, size=(6, 5))
    states, _ = projected.rollout(s0, acts)
    members = projected.member_rollouts(s0, acts)
    assert (states[:, 1:] >= 0).all() and (members[:, :, 1:] >= 0).all()
    assert (states[:, 0] < 0).any()  # the start is never projected
    plain, _ = linear_ensemble.rollout(s0, acts)
    assert (plain[:, 1:] < 0).any() and linear_ensemble.project is None
    assert calls and projected.net is linear_ensemble.net
