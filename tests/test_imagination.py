"""Imagination: cache equivalence, batch independence, stopping, labels, output, quality checks."""

import json

import numpy as np
import pytest
import torch

from kalm.data.episodes import Episode, read_episodes
from kalm.data.suites import SuiteError
from kalm.envs.clevr.env import CLEVRRobotEnv
from kalm.envs.clevr.goals import is_success
from kalm.envs.clevr.realism import check_transitions, replay
from kalm.envs.clevr.rewards import episode_rewards
from kalm.imagination.stage import UNREALISTIC, ImagineConfig, imagine, summarize, task_starts
from kalm.llm.backbone import tiny_backbone
from kalm.llm.generate import imagine_batch
from kalm.llm.model import ModelConfig
from kalm.llm.prompts import PromptBuilder
from kalm.llm.saving import AdapterConfig, build_rollout_model
from kalm.llm.train import clevr_spec

GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
INSTRUCTIONS = ["Put red left of blue", "A much longer instruction: put the green ball in "
                "front of the cyan ball, please, and take your time about it", "Go"]



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    bb = tiny_backbone()
    m = build_rollout_model(bb, clevr_spec(), ModelConfig(), AdapterConfig(mode="full"))
    m.set_normalizer(torch.zeros(10), torch.full((10,), 0.3))
    return m


@pytest.fixture(scope="module")
def builder(model):
    return PromptBuilder(model.tokenizer)


def s0(n, seed=0):
    return np.random.default_rng(seed).uniform(-0.4, 0.4, (n, 10)).astype(np.float32)


def never(goal, state, prev, action):
    return False


def test_cache_and_no_cache_give_identical_rollouts(model, builder):
    kw = {"goals": [GOAL] * 3, "max_steps": [12, 12, 12], "is_success": never}
    cached = imagine_batch(model, builder, INSTRUCTIONS, s0(3), use_cache=True, **kw)
    full = imagine_batch(model, builder, INSTRUCTIONS, s0(3), use_cache=False, **kw)
    for a, b in zip(cached, full, strict=True):
        assert a.actions.tolist() == b.actions.tolist()
        np.testing.assert_allclose(a.observations, b.observations, atol=1e-4)
        assert len(a.actions) == 12


def test_batch_composition_does_not_change_a_rollout(model, builder):
    kw = {"is_success": never}
    batch = imagine_batch(model, builder, INSTRUCTIONS, s0(3), [GOAL] * 3, [8] * 3, **kw)
    for i in range(3):
        alone = imagine_batch(model, builder, INSTRUCTIONS[i : i + 1], s0(3)[i : i + 1],
                              [GOAL], [8], **kw)[0]
        assert alone.actions.tolist() == batch[i].actions.tolist()
        np.testing.assert_allclose(alone.observations, batch[i].observations, atol=1e-4)


def test_rollout_stops_when_success_first_holds(model, builder):
    calls = {0: 0, 1: 0}

    def stop_at(goal, state, prev, action):
        calls[goal["id"]] += 1
        return calls[goal["id"]] == goal["stop"]

    goals = [{"id": 0, "stop": 3}, {"id": 1, "stop": 99}]
    rolls = imagine_batch(model, builder, INSTRUCTIONS[:2], s0(2), goals, [10, 6], stop_at)
    assert len(rolls[0].actions) == 3 and rolls[0].success
    assert len(rolls[0].observations) == 4
    assert len(rolls[1].actions) == 6 and not rolls[1].success


def test_row_judges_replace_the_per_transition_check(model, builder):
    seen = {0: [], 1: []}

    def judge(row, stop):
        def j(prev, action, state):
            seen[row].append((prev.copy(), state.copy()))
            return len(seen[row]) == stop
        return j

    rolls = imagine_batch(model, builder, INSTRUCTIONS[:2], s0(2), [GOAL] * 2, [10, 10],
                          lambda *a: True, judges=[judge(0, 4), judge(1, 99)])
    assert len(rolls[0].actions) == 4 and rolls[0].success
    assert len(rolls[1].actions) == 10 and not rolls[1].success
    # each judge saw its own row's transitions in order
    for row, r in enumerate(rolls):
        for t, (prev, state) in enumerate(seen[row]):
            np.testing.assert_array_equal(prev, r.observations[t])
            np.testing.assert_array_equal(state, r.observations[t + 1])
    with pytest.raises(ValueError, match="1 judges for 2 rollouts"):
        imagine_batch(model, builder, INSTRUCTIONS[:2], s0(2), [GOAL] * 2, [3, 3], never,
                      judges=[judge(0, 1)])


def test_generated_states_are_clamped_to_the_table(model, builder):
    rolls = imagine_batch(model, builder, INSTRUCTIONS, s0(3), [GOAL] * 3, [10] * 3, never)
    for r in rolls:
        xy = r.observations[1:].reshape(-1, 5, 2)
        assert (xy[..., 0] >= -0.47 - 1e-6).all() and (xy[..., 0] <= 0.47 + 1e-6).all()
        assert (xy[..., 1] >= -0.17 - 1e-6).all() and (xy[..., 1] <= 0.57 + 1e-6).all()


def test_imagine_stage_output_round_trips_with_env_labels(model, tmp_path):
    suite = tmp_path / "s.jsonl"
    lines = [{"instruction": "Red left of blue.", "level": "rephrase", "goal": GOAL},
             {"instruction": "Shove green forward.", "level": "easy",
              "goal": {"kind": "push", "object": "green", "direction": "front"}},
             {"instruction": "", "level": "rephrase",
              "goal": {**GOAL, "direction": "right"}}]
    suite.write_text("".join(json.dumps(x) + "\n" for x in lines))
    stats = imagine(ImagineConfig(out=str(tmp_path / "im.h5"), suite_file=str(suite),
                                  per_goal=2, max_steps=6), model=model, progress=False)
    data = read_episodes(tmp_path / "im.h5")
    assert data.source == "imagined" and len(data) == 4
    assert len(stats["skipped"]) == 2 and stats["skipped"][0]["reason"] == "empty instruction"
    for i in range(len(data)):
        ep = data.episode(i)
        r, term = episode_rewards(ep.goal, ep.observations.astype(np.float64), ep.actions)
        np.testing.assert_allclose(ep.rewards, r, rtol=1e-5, atol=1e-4)
        assert term.tolist() == ep.terminals.tolist()
        assert ep.length <= (1 if ep.goal["kind"] == "push" else 6)
        assert bool(ep.extras["self_success"]) == bool(ep.terminals[-1])
    assert set(stats["levels"]) == {"rephrase", "easy"}
    env = CLEVRRobotEnv()
    for level in ("rephrase", "easy"):
        eps = [data.episode(i) for i in range(len(data)) if data.extras["level"][i] == level]
        # the stored per-rollout verdicts are the simulator's, and the rates are their means
        replays = [replay(env, e.goal, e.observations[0], e.actions)[1] for e in eps]
        assert [bool(e.extras["replay_success"]) for e in eps] == replays
        rates = stats["levels"][level]
        assert rates["rollouts"] == len(eps) == 2
        assert rates["replayed_match"] == pytest.approx(np.mean(replays))
        assert rates["self_judged_match"] == pytest.approx(
            np.mean([bool(e.terminals[-1]) for e in eps]))
        assert rates["random_replay_match"] == pytest.approx(
            np.mean([bool(e.extras["random_replay_success"]) for e in eps]))
    assert not (tmp_path / "im.h5.parts").exists()


def _extras(level, self_ok, replay_ok, random_ok, errors, out_of_table=0, judged=None):
    """The per-rollout record `kalm imagine` stores, written by hand."""
    return {"level": level, "self_success": self_ok, "replay_success": replay_ok,
            "random_replay_success": random_ok, "replayed": True, "realism_checked": True,
            "realistic": out_of_table == 0, f"{UNREALISTIC}out_of_table": out_of_table,
            f"{UNREALISTIC}exceed_dynamics": 0,
            "state_errors": np.array([*errors, *[np.nan] * (50 - len(errors))]),
            "explanation_checked": judged is not None, "explanation_consistent": bool(judged)}


def _episode(length, extras):
    obs = np.zeros((length + 1, 10), np.float32)
    return Episode(obs, np.zeros(length, np.int64), np.zeros(length, np.float32),
                   np.zeros(length, bool), "x", GOAL, extras=extras)


def test_summary_rates_on_a_hand_made_case():
    eps = [_episode(2, _extras("easy", True, True, False, [0.1, 0.3], judged=True)),
           _episode(1, _extras("easy", False, False, False, [0.2], out_of_table=1,
                               judged=False)),
           _episode(1, _extras("easy", True, False, True, [0.4])),
           _episode(4, _extras("easy", False, False, False, [0.0, 0.1, 0.2, 0.3]))]
    cfg = ImagineConfig(filter=True, filter_explanation=True)
    stats = summarize(eps, [], cfg)
    easy = stats["levels"]["easy"]
    assert easy["rollouts"] == 4 and easy["transitions"] == 8
    assert easy["self_judged_match"] == 0.5
    assert easy["replayed_match"] == 0.25
    assert easy["random_replay_match"] == 0.25
    assert easy["out_of_table_pct"] == pytest.approx(100 / 8)
    assert easy["unrealistic_rollouts_pct"] == 25.0
    assert easy["state_error_by_step"] == pytest.approx([0.175, 0.2, 0.2, 0.3])
    assert easy["state_error_mean"] == pytest.approx(1.6 / 8)
    assert stats["filter"]["unrealistic"]["would_drop"] == 1
    # judged: consistent, inconsistent; the other two were never judged
    assert stats["filter"]["explanation"] == {"enabled": True, "checked": 2, "consistent": 1,
                                              "would_drop": 1}
    assert stats["kept"] == 1  # the one judged consistent (and realistic)
    unfiltered = summarize(eps, [], ImagineConfig())
    assert unfiltered["kept"] == 4


def test_unjudged_explanations_are_stored_as_unchecked(model, tmp_path, monkeypatch):
    """Without --filter-explanation nothing judged the explanations: the file says so instead
    of claiming they were consistent; with it every rollout carries its verdict."""
    import kalm.llm.metrics as metrics_mod
    from kalm.imagination.stage import explanation_verdict

    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"instruction": "Red left of blue.", "level": "rephrase",
                                 "goal": GOAL}) + "\n")
    kw = {"suite_file": str(suite), "per_goal": 4, "max_steps": 2}
    stats = imagine(ImagineConfig(out=str(tmp_path / "a.h5"), **kw), model=model,
                    progress=False)
    data = read_episodes(tmp_path / "a.h5")
    assert not data.extras["explanation_checked"].any()
    assert all(explanation_verdict(data.episode(i).extras) is None for i in range(len(data)))
    assert stats["filter"]["explanation"] == {"enabled": False, "checked": 0,
                                              "consistent": None, "would_drop": None}
    texts = iter(["Put the red ball to the left of the blue ball.", "Something else entirely.",
                  "Move the red ball left of the blue one.", "Push green forward."])
    monkeypatch.setattr(metrics_mod, "greedy_text",
                        lambda m, b, prompts, **k: [next(texts) for _ in prompts])
    stats = imagine(ImagineConfig(out=str(tmp_path / "b.h5"), filter_explanation=True, **kw),
                    model=model, progress=False)
    data = read_episodes(tmp_path / "b.h5")
    assert stats["filter"]["explanation"] == {"enabled": True, "checked": 4, "consistent": 2,
                                              "would_drop": 2}
    assert len(data) == stats["kept"] == 2
    assert data.extras["explanation_checked"].all() and data.extras["explanation_consistent"].all()


def _sampled(model, tmp_path, name, batch_size, **kw):
    suite = tmp_path / "s.jsonl"
    suite.write_text("".join(json.dumps(x) + "\n" for x in [
        {"instruction": "Red left of blue.", "level": "rephrase", "goal": GOAL},
        {"instruction": "Green in front of cyan.", "level": "rephrase",
         "goal": {"kind": "relation", "object": "green", "reference": "cyan",
                  "direction": "front"}}]))
    imagine(ImagineConfig(out=str(tmp_path / name), suite_file=str(suite), per_goal=10,
                          max_steps=4, temperature=1.0, batch_size=batch_size, chunk_size=16,
                          seed=3, **kw), model=model, progress=False)
    data = read_episodes(tmp_path / name)
    return {int(data.extras["task_index"][i]): data.episode(i) for i in range(len(data))}


def test_sampled_rollouts_do_not_depend_on_batch_size_or_resume(model, tmp_path, monkeypatch):
    """At temperature > 0 a rollout draws from its own stream, seeded by (seed, task index)."""
    import kalm.imagination.stage as stage_mod

    small = _sampled(model, tmp_path, "b4.h5", 4)
    large = _sampled(model, tmp_path, "b16.h5", 16)
    assert sorted(small) == sorted(large) == list(range(20))  # two chunks of 16 and 4 tasks
    for i in small:
        assert small[i].actions.tolist() == large[i].actions.tolist(), i
        np.testing.assert_allclose(small[i].observations, large[i].observations, atol=1e-5)
    assert len({tuple(e.actions.tolist()) for e in small.values()}) > 10  # really sampled

    run_chunk = stage_mod._run_chunk
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while imagining the second chunk
        return run_chunk(*args)

    monkeypatch.setattr(stage_mod, "_run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _sampled(model, tmp_path, "resumed.h5", 16)
    assert (tmp_path / "resumed.h5.parts" / "chunk-00000.h5").exists()
    monkeypatch.setattr(stage_mod, "_run_chunk", run_chunk)
    resumed = _sampled(model, tmp_path, "resumed.h5", 8)  # another batch size on resume
    for i in small:
        assert resumed[i].actions.tolist() == small[i].actions.tolist(), i


def test_imagine_reports_bad_suite_line(model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "goal": {"kind": "push", "object": "red"}}\n')
    with pytest.raises(SuiteError, match=f"{bad}:1:.*missing key"):
        imagine(ImagineConfig(out=str(tmp_path / "o.h5"), suite_file=str(bad)), model=model,
                progress=False)


def test_replay_and_realism_checks():
    env = CLEVRRobotEnv()
    start = np.array([0.0, 0.15, 0.4, 0.45, -0.4, 0.45, 0.4, -0.1, -0.4, -0.1])
    states, ok = replay(env, {"kind": "push", "object": "red", "direction": "behind"}, start,
                        np.array([1]))
    assert ok and states[1][1] > start[1] + 0.2
    real = check_transitions(states, np.array([1]))
    assert not any(real.values())
    teleport = states.copy()
    teleport[1, 0] = 0.9  # red jumps off the table
    c = check_transitions(teleport, np.array([1]))
    assert c == {"out_of_table": 1, "exceed_dynamics": 1, "interpenetration": 0,
                 "untouched_moved": 0}
    far = np.array([[-0.45, -0.15, 0.42, 0.55, 0.42, -0.15, -0.35, 0.55, 0.1, 0.55]] * 2)
    far[1, 1] += 0.25  # red pushed +y (action 1)
    assert not any(check_transitions(far, np.array([1])).values())
    far[1, 8] -= 0.3  # cyan moves although no chain of balls connects it to red
    assert check_transitions(far, np.array([1]))["untouched_moved"] == 1
    overlap = states.copy()
    overlap[1, 2:4] = overlap[1, 0:2] + [0.1, 0.0]
    assert check_transitions(overlap, np.array([1]))["interpenetration"] == 1
    assert is_success({"kind": "push", "object": "red", "direction": "behind"}, states[1],
                      states[0], 1)


def test_llm_as_policy_matches_teacher_forced_argmax(model, builder):
    """The KV-cached policy picks the action head's argmax over the real history."""
    from kalm.data.rollout import run_episode
    from kalm.eval.llm_policy import LLMPolicy
    from kalm.llm.batching import collate

    policy = LLMPolicy("unused", model=model)
    env = CLEVRRobotEnv()
    ep = run_episode(env, policy, GOAL, "Put red left of blue.", seed=3)
    seq = builder.rollout("Put red left of blue.", ep.observations, ep.actions)
    b = collate([seq], builder.pad_id, 10, "discrete", 40)
    with torch.no_grad():
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        idx = b["action_tgt_mask"][0].nonzero()[:, 0]
        chosen = model.predict_action(h[0, idx]).argmax(-1).tolist()
    assert chosen == ep.actions.tolist()
    assert ep.length >= 1


def test_best_of_n_proposals_share_the_start_state_and_proposal_zero_is_the_plain_run(
        model, tmp_path):
    suite = tmp_path / "s.jsonl"
    suite.write_text("".join(json.dumps(x) + "\n" for x in [
        {"instruction": "Red left of blue.", "level": "rephrase", "goal": GOAL},
        {"instruction": "Blue right of red.", "level": "rephrase",
         "goal": {**GOAL, "object": "blue", "reference": "red", "direction": "right"}}]))
    plain = dict(suite_file=str(suite), per_goal=1, max_steps=4, seed=5)
    imagine(ImagineConfig(out=str(tmp_path / "one.h5"), **plain), model=model, progress=False)
    imagine(ImagineConfig(out=str(tmp_path / "three.h5"), proposals=3, proposal_temperature=2.0,
                          batch_size=4, **plain), model=model, progress=False)
    one, three = read_episodes(tmp_path / "one.h5"), read_episodes(tmp_path / "three.h5")
    assert len(one) == 2 and len(three) == 6
    assert list(three.extras["proposal"]) == [0, 1, 2, 0, 1, 2]
    assert list(three.extras["task_index"]) == [0, 0, 0, 1, 1, 1]
    for task in range(2):
        rows = three.observations[3 * task : 3 * task + 3, 0]
        assert np.allclose(rows, one.observations[task, 0])  # one start state per task
        greedy = three.episode(3 * task)
        assert np.array_equal(greedy.actions, one.episode(task).actions)
    # sampled proposals differ from the greedy one somewhere (temperature 2 over 40 actions)
    sampled = [three.episode(i).actions.tolist() for i in (1, 2, 4, 5)]
    greedy = [three.episode(i).actions.tolist() for i in (0, 3)]
    assert any(s not in greedy for s in sampled)
    # the label stage keeps one rollout per task: a self-judged success where there is one
    from kalm.envs.registry import get_env
    from kalm.imagination.labelling import LabelConfig, label_level

    stats = label_level(tmp_path / "three.h5", tmp_path / "labels", LabelConfig("llm"),
                        get_env("clevr"))
    assert stats["generated"] == 6 and stats["proposals_per_task"] == 3
    kept = read_episodes(tmp_path / "labels" / "labelled.h5")
    assert list(kept.extras["task_index"]) == [0, 1]
    for task in range(2):
        ok = [bool(three.extras["self_success"][i]) for i in range(3 * task, 3 * task + 3)]
        chosen = int(kept.extras["proposal"][task])
        assert chosen == (ok.index(True) if any(ok) else 0)
    with pytest.raises(ValueError, match="proposals"):
        imagine(ImagineConfig(out=str(tmp_path / "x.h5"), proposals=0, **plain), model=model)


def test_distinct_first_actions_hand_made():
    """Greedy first, then without replacement; in order of the logits at temperature 0; past
    the number of actions, repeats; a peaked distribution still gives distinct picks."""
    from kalm.imagination.stage import distinct_first_actions

    logits = np.array([0.0, 3.0, 1.0, 2.0])
    rng = np.random.default_rng(0)
    assert distinct_first_actions(logits, 4, 0.0, 0.0, rng) == [1, 3, 2, 0]
    peaked = np.array([0.0, 50.0, 0.0, 0.0, 0.0])
    for seed in range(5):
        picks = distinct_first_actions(peaked, 5, 0.0, 1.0, np.random.default_rng(seed))
        assert picks[0] == 1 and sorted(picks) == [0, 1, 2, 3, 4]
    six = distinct_first_actions(logits, 6, 0.0, 1.0, np.random.default_rng(1))
    assert sorted(six[:4]) == [0, 1, 2, 3] and len(six) == 6
    a = distinct_first_actions(logits, 3, 1.0, 1.0, np.random.default_rng(7))
    assert a == distinct_first_actions(logits, 3, 1.0, 1.0, np.random.default_rng(7))


def test_distinct_first_proposals_start_apart_and_decode_on_from_there(model, tmp_path):
    """`distinct_first`: each task's proposals start with different actions, the first one the
    greedy choice (so proposal 0 is the plain run's rollout), the rest decoded as usual; the
    forced first action of `imagine_batch` is what the rollout took."""
    from kalm.llm.generate import first_action_logits, imagine_batch
    from kalm.llm.prompts import PromptBuilder

    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"instruction": "Red left of blue.", "level": "rephrase",
                                 "goal": GOAL}) + "\n")
    plain = dict(suite_file=str(suite), per_goal=2, max_steps=3, seed=5)
    imagine(ImagineConfig(out=str(tmp_path / "one.h5"), **plain), model=model, progress=False)
    imagine(ImagineConfig(out=str(tmp_path / "six.h5"), proposals=6, distinct_first=True,
                          batch_size=4, **plain), model=model, progress=False)
    one, six = read_episodes(tmp_path / "one.h5"), read_episodes(tmp_path / "six.h5")
    assert len(six) == 12
    for task in range(2):
        firsts = [int(six.episode(6 * task + j).actions[0]) for j in range(6)]
        assert len(set(firsts)) == 6
        assert np.array_equal(six.episode(6 * task).actions, one.episode(task).actions)
    builder = PromptBuilder(model.tokenizer)
    s0 = six.observations[0, 0][None]
    logits = first_action_logits(model, builder, ["Red left of blue."], s0)
    assert logits.shape == (1, 40)
    assert int(six.episode(0).actions[0]) == int(logits[0].argmax())
    forced = imagine_batch(model, builder, ["Red left of blue."] * 2, np.repeat(s0, 2, 0),
                           [GOAL] * 2, [3, 3], lambda *a: False, first_actions=[7, 11])
    assert [int(r.actions[0]) for r in forced] == [7, 11]
    with pytest.raises(ValueError, match="first_actions"):
        imagine_batch(model, builder, ["Red left of blue."], s0, [GOAL], [3],
                      lambda *a: False, first_actions=[1, 2])


def test_task_starts_are_the_goals_and_starts_imagine_decodes_from(model, tmp_path):
    suite = tmp_path / "s.jsonl"
    lines = [{"instruction": "Red left of blue.", "level": "rephrase", "goal": GOAL},
             {"instruction": "Shove green forward.", "level": "easy",
              "goal": {"kind": "push", "object": "green", "direction": "front"}}]
    suite.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = ImagineConfig(out=str(tmp_path / "im.h5"), suite_file=str(suite), per_goal=3,
                        max_steps=4, seed=7)
    imagine(cfg, model=model, progress=False)
    decoded = read_episodes(tmp_path / "im.h5")
    tasks = task_starts(cfg, "clevr")
    assert len(tasks) == len(decoded) == 6 and all(t.length == 0 for t in tasks)
    for i, t in enumerate(tasks):
        d = decoded.episode(i)
        assert t.goal == d.goal and t.instruction == d.instruction
        np.testing.assert_array_equal(t.observations[0], d.observations[0])
        assert str(t.extras["level"]) == str(d.extras["level"])
    assert [int(t.extras["task_index"]) for t in tasks] == list(range(6))
    # a different seed draws other start states
    other = task_starts(ImagineConfig(suite_file=str(suite), per_goal=3, seed=8), "clevr")
    assert not np.array_equal(other[0].observations, tasks[0].observations)
