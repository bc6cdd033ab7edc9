"""The simulator must not leak into the training data: only the dynamics ensemble labels.

The other labelling tests use the simulator itself as the "ensemble", so its verdict always
equals the replay, and code that read the replay (`replay_success`) instead of the ensemble
would pass them. Here the ensemble is `InvertedDynamics`: on every action sequence it predicts
the OPPOSITE of what the simulator does (a sequence that really reaches the goal: nothing
moves; one that does not: red lands left of blue after the first push). Every rollout below is
therefore judged one way by the ensemble and the other way by the replay, and each assertion
on the training files, the best-of-N choice, the kept share and shooting names the ensemble's
answer, which the replay's is not: an implementation that used the replay fails every one of
them (each test checks this precondition, `ensemble != replay`, on its own rollouts)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kalm.data.episodes import EpisodeData, read_episodes, write_episodes
from kalm.imagination.labelling import LabelConfig, label_level
from kalm.run_folder import RunConfig, imagined_data, kalm_data, label_folder, too_few_kept
from test_dynamics import CLEVR, GOAL, SimulatorDynamics, imagined

TRAINING = ("observations", "actions", "rewards", "terminals", "lengths")


def fake_success(s0: np.ndarray) -> np.ndarray:
    """s0 with red moved just left of blue: the goal holds."""
    s = np.asarray(s0, np.float32).copy()
    s[0:2] = s[2:4] + np.array([-0.3, 0.0], np.float32)
    return s


class InvertedDynamics:
    """An ensemble that is wrong exactly where the replay is right: on the simulator's own
    states it finds the goal met => it predicts that nothing moves (never a success); it finds
    the goal never met => it predicts the goal met after the first action. Uncertainty 0.1."""

    spec = CLEVR.spec

    def __init__(self) -> None:
        self.sim = SimulatorDynamics(GOAL)
        self.calls = 0

    def rollout(self, s0: np.ndarray, actions: np.ndarray):
        if np.ndim(s0) == 2:
            out = [self.rollout(s, a) for s, a in zip(s0, actions, strict=True)]
            return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
        self.calls += 1
        actions = np.asarray(actions)
        true, u = self.sim.rollout(s0, actions)
        s0 = np.asarray(s0, np.float32)
        if CLEVR.first_success(GOAL, true, actions) is not None:
            states = np.repeat(s0[None], len(actions) + 1, axis=0)
        else:
            states = np.stack([s0, *[fake_success(s0)] * len(actions)])
        return states.astype(np.float32), u


def _rollouts(real):
    """Four imagined rollouts from the expert episode's s0, every (LLM, replay) combination;
    the inverted ensemble's verdict is the opposite of the replay's on each:
    `right` / `right_self`: the expert's pushes (replay: success; ensemble: failure), the LLM
    predicting nothing moves / the goal met; `wrong` / `wrong_self`: a push of the green ball
    that leaves red and blue alone (replay: failure; ensemble: success), the LLM predicting the
    goal met / nothing moves."""
    s0 = real.observations[0]
    frozen = np.repeat(real.observations[:1], real.length + 1, axis=0)
    told = frozen.copy()
    told[-1] = fake_success(s0)  # the LLM's goal is met at its last step only
    push_green = np.array([8 * 2 + 0])
    out = {"right": imagined(real, frozen, real.actions),
           "right_self": imagined(real, told, real.actions),
           "wrong": imagined(real, np.stack([s0, fake_success(s0)]), push_green),
           "wrong_self": imagined(real, np.repeat(s0[None], 2, axis=0), push_green)}
    for name, e in out.items():
        e.extras.update(replay_success=name.startswith("right"), replayed=True,
                        task_index=0, proposal=0, level="rephrase")
    assert out["right_self"].extras["self_success"] and out["wrong"].extras["self_success"]
    assert not out["right"].extras["self_success"]
    assert not out["wrong_self"].extras["self_success"]
    return out


def _write(episodes, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_episodes(EpisodeData.from_episodes(episodes, CLEVR.episode_spec("clevr"),
                                             source="imagined"), path)
    return path


def _copy(e, **extras):
    return dataclasses.replace(e, extras={**e.extras, **extras})


@pytest.fixture(scope="module")
def rollouts(expert_episode):
    return _rollouts(expert_episode)


def test_the_training_files_follow_the_ensemble_not_the_replay(rollouts, tmp_path):
    order = ["right", "wrong", "right_self", "wrong_self"]
    src = _write([rollouts[k] for k in order], tmp_path / "imagined.h5")
    stats = label_level(src, tmp_path / "out", LabelConfig("ensemble"), CLEVR,
                        InvertedDynamics())
    every = read_episodes(tmp_path / "out" / "labelled.h5")
    ens = [bool(v) for v in every.extras["ensemble_success"]]
    replay = [bool(v) for v in every.extras["replay_success"]]
    assert ens == [False, True, False, True]
    assert all(a != b for a, b in zip(ens, replay, strict=True))  # the test discriminates
    # labelled-success.h5 holds the ensemble's successes: the green pushes, never the expert's
    success = read_episodes(tmp_path / "out" / "labelled-success.h5")
    assert len(success) == 2 and (success.actions[:, 0] == 16).all()
    assert success.lengths.tolist() == [1, 1] and success.terminals[:, 0].all()
    assert not success.extras["replay_success"].any()
    # states, rewards and terminals are the ensemble's: the expert rollouts keep the frozen
    # states (the simulator's would show the balls moving) and carry no terminal
    s0 = rollouts["right"].observations[0]
    n = rollouts["right"].length
    for i in (0, 2):
        assert every.lengths[i] == n and not every.terminals[i].any()
        assert np.allclose(every.observations[i, : n + 1], s0)
        r, t = CLEVR.labels(GOAL, every.observations[i, : n + 1], every.actions[i, :n])
        assert np.array_equal(every.rewards[i, :n], r) and not t.any()
    assert np.allclose(success.observations[:, 1], fake_success(s0))
    assert stats["kept"] == {"all": 4, "success": 2} and stats["judged_successful"] == 2
    # the replay is reported, as what it is: 2 real successes, none of them kept
    d = stats["diagnostic"]
    assert d["replayed_successful"] == 2 and d["replayed_successful_of_kept"] == 0
    assert d["labeller"]["precision"] == 0.0 and d["labeller"]["recall"] == 0.0


def test_best_of_n_keeps_the_proposal_the_ensemble_likes(rollouts, tmp_path):
    """Task 0: proposal 0 reaches the goal in the simulator, proposal 1 does not; task 1 the
    other way round. The ensemble (inverted) likes proposal 1 of task 0 and 0 of task 1: a
    choice by the replay would keep the other two."""
    eps = [_copy(rollouts["right"], task_index=0, proposal=0),
           _copy(rollouts["wrong"], task_index=0, proposal=1),
           _copy(rollouts["wrong_self"], task_index=1, proposal=0),
           _copy(rollouts["right_self"], task_index=1, proposal=1)]
    src = _write(eps, tmp_path / "imagined.h5")
    stats = label_level(src, tmp_path / "out", LabelConfig("ensemble"), CLEVR,
                        InvertedDynamics())
    kept = read_episodes(tmp_path / "out" / "labelled.h5")
    assert [(int(t), int(p)) for t, p in zip(kept.extras["task_index"], kept.extras["proposal"],
                                             strict=True)] == [(0, 1), (1, 0)]
    assert kept.extras["ensemble_success"].all() and not kept.extras["replay_success"].any()
    assert stats["generated"] == 4 and stats["proposals_per_task"] == 2
    assert stats["kept"] == {"all": 2, "success": 2}
    # relabel_file (the standalone relabel command) chooses the same way
    from kalm.imagination.relabel import relabel_file

    _, relabelled = relabel_file(src, InvertedDynamics(), tmp_path / "r.h5", definition=CLEVR,
                                 keep="success")
    assert [(e.extras["task_index"], e.extras["proposal"]) for e in relabelled] == [(0, 1),
                                                                                   (1, 0)]
    assert (read_episodes(tmp_path / "r.h5").actions[:, 0] == 16).all()


@pytest.mark.parametrize(("names", "ensemble_kept", "replay_kept", "short"), [
    (["right", "right_self", "wrong"], 1, 2, True),  # the replay would say 2 of 3: enough
    (["wrong", "wrong_self", "right"], 2, 1, False),  # the replay would say 1 of 3: too few
])
def test_the_kept_share_counts_ensemble_successes(rollouts, tmp_path, names, ensemble_kept,
                                                  replay_kept, short):
    root = tmp_path / "run"
    eps = [_copy(rollouts[k], task_index=i) for i, k in enumerate(names)]
    src = _write(eps, imagined_data(root, "rephrase"))
    stats = label_level(src, label_folder(root, "rephrase"), LabelConfig(), CLEVR,
                        InvertedDynamics())
    assert stats["kept"] == {"all": 3, "success": ensemble_kept}
    assert stats["diagnostic"]["replayed_successful"] == replay_kept
    assert too_few_kept(stats, "success", 0.5) is short
    assert too_few_kept(stats, "all", 0.5) is False
    cfg = RunConfig(out=str(root), imagine=dataclasses.replace(
        RunConfig().imagine, levels={"rephrase": 3}), rl=dataclasses.replace(
        RunConfig().rl, min_kept_share=0.5))
    assert cfg.rl.keep_for("bc") == "success"
    data = kalm_data(cfg, root, "bc")
    assert ("rephrase" in data) is (not short)
    if not short:
        assert len(read_episodes(data["rephrase"])) == ensemble_kept


def test_the_replay_changes_nothing_in_the_training_data(rollouts, tmp_path, monkeypatch):
    """The same rollouts labelled twice: once with the true replay, once with every replay
    verdict (stored and recomputed) inverted. The training files are identical; only the
    recorded replay and the stats' diagnostic differ."""
    import kalm.imagination.labelling as labelling

    order = ["right", "wrong", "right_self", "wrong_self"]
    _write([rollouts[k] for k in order], tmp_path / "a" / "imagined.h5")
    truth = label_level(tmp_path / "a" / "imagined.h5", tmp_path / "a" / "out", LabelConfig(),
                        CLEVR, InvertedDynamics())
    real_replay = labelling.replay_actions
    calls = []

    def lying_replay(*args, **kwargs):
        states, ok = real_replay(*args, **kwargs)
        calls.append(ok)
        return states, not ok

    monkeypatch.setattr(labelling, "replay_actions", lying_replay)
    flipped = [_copy(rollouts[k], replay_success=not rollouts[k].extras["replay_success"])
               for k in order]
    _write(flipped, tmp_path / "b" / "imagined.h5")
    lied = label_level(tmp_path / "b" / "imagined.h5", tmp_path / "b" / "out", LabelConfig(),
                       CLEVR, InvertedDynamics())
    assert len(calls) == 4  # the kept actions were replayed (and recorded), nothing more
    for name in ("labelled.h5", "labelled-success.h5"):
        a, b = read_episodes(tmp_path / "a" / "out" / name), read_episodes(tmp_path / "b" /
                                                                           "out" / name)
        for field in TRAINING:
            assert np.array_equal(getattr(a, field), getattr(b, field)), (name, field)
        assert list(a.instructions) == list(b.instructions) and a.goals == b.goals
        assert set(a.extras) == set(b.extras)
        for key in a.extras:
            same = np.array_equal(np.asarray(a.extras[key]), np.asarray(b.extras[key]))
            assert same is (not key.startswith("replay_success")), (name, key)
    assert {k: v for k, v in truth.items() if k != "diagnostic"} == \
        {k: v for k, v in lied.items() if k != "diagnostic"}
    assert truth["diagnostic"]["replayed_successful"] == 2
    assert lied["diagnostic"]["replayed_successful"] == 2  # flipped twice: stored and replayed
    assert truth["diagnostic"]["replayed_successful_of_kept"] == 0
    assert lied["diagnostic"]["replayed_successful_of_kept"] == 2
    assert json.loads((tmp_path / "b" / "out" / "label_stats.json").read_text()) == lied


# ------------------------------------------------------------------ shooting
def test_shooting_keeps_and_labels_by_the_ensemble(expert_episode, rollouts, tmp_path):
    """Random pushes hardly ever reach the goal in the simulator; the inverted ensemble calls
    every one that does not a success at its first push. Shot rollouts are therefore ensemble
    successes of one push whose replay fails, in the files and in the stats."""
    from kalm.imagination.shooting import ShootingConfig, shoot_level

    src = _write([_copy(rollouts["right"], task_index=0), _copy(rollouts["wrong"],
                                                                task_index=1)],
                 tmp_path / "imagined.h5")
    dyn = InvertedDynamics()
    stats = shoot_level(src, tmp_path / "shot", dyn, CLEVR,
                        ShootingConfig(candidates=6, horizon=3, seed=1), progress=False)
    assert dyn.calls > 0
    shot = read_episodes(tmp_path / "shot" / "labelled.h5")
    assert len(shot) >= 1 and stats["generated"] == len(shot)
    assert shot.extras["ensemble_success"].all() and not shot.extras["replay_success"].any()
    assert (shot.lengths == 1).all() and shot.terminals[:, 0].all()
    s0 = expert_episode.observations[0]
    assert np.allclose(shot.observations[:, 1], fake_success(s0))  # the ensemble's state
    assert len(read_episodes(tmp_path / "shot" / "labelled-success.h5")) == len(shot)
    assert stats["judged_successful"] == len(shot)
    assert stats["diagnostic"]["replayed_successful"] == 0


def test_shooting_rejects_what_only_the_replay_accepts(expert_episode, rollouts, monkeypatch):
    """Every candidate is the expert's action sequence, which reaches the goal in the
    simulator; the inverted ensemble says it never does. The shot rollout is a failure (no
    terminal, the ensemble's states), however the replay records it."""
    import kalm.imagination.shooting as shooting
    from kalm.imagination.relabel import RelabelConfig

    expert = np.asarray(expert_episode.actions)
    n = len(expert)

    def experts_only(space, count, horizon, rng):
        assert horizon >= n, "the test needs a horizon that fits the expert's pushes"
        # the expert's pushes, then pushes of the green ball (red and blue stay put)
        seq = np.concatenate([expert, np.full(horizon - n, 16)])
        return np.tile(seq, (count, 1)).astype(np.int64)

    monkeypatch.setattr(shooting, "random_sequences", experts_only)
    tasks = EpisodeData.from_episodes([_copy(rollouts["right"], task_index=0)],
                                      CLEVR.episode_spec("clevr"), source="imagined")
    out = shooting.shoot(tasks, InvertedDynamics(), CLEVR,
                         shooting.ShootingConfig(candidates=2, horizon=n, seed=0),
                         progress=False, replay=True, judge=RelabelConfig())
    assert len(out) >= 1
    for e in out:
        assert e.extras["replay_success"] and not e.extras["ensemble_success"]
        assert not e.terminals.any() and not e.success
        assert np.allclose(e.observations, e.observations[0])  # the ensemble's frozen states
        assert np.array_equal(e.actions[:n], expert)
