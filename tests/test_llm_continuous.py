"""Continuous actions through grounding and imagination: the regression and bin heads, clipping
to the action bounds, the normaliser on constant state dimensions, save/load, and (with
metaworld installed) a few steps on real Meta-World episodes."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData, write_episodes
from kalm.llm.backbone import tiny_backbone
from kalm.llm.batching import Collator, GroundingSamples, Paraphrases, collate
from kalm.llm.generate import imagine_batch
from kalm.llm.losses import action_bin_loss, grounding_losses
from kalm.llm.model import ModelConfig, RolloutSpec
from kalm.llm.prompts import PromptBuilder
from kalm.llm.saving import (
    AdapterConfig,
    CheckpointMismatch,
    build_rollout_model,
    load_rollout_model,
    model_meta,
    save_rollout_model,
)
from kalm.llm.train import GroundConfig, ground, state_statistics

OBS, ACT = 6, 4  # state dims 4 and 5 are always zero in the data
SPEC = RolloutSpec("toy", OBS, "continuous", ACT, action_low=(-1.0,) * ACT,
                   action_high=(1.0,) * ACT)
GOAL = {"kind": "reach"}
HEADS = ("regression", "bins")
INSTRUCTIONS = ["Reach the target", "A longer instruction: move the arm over to the target "
                "and close the gripper", "Go"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_backbone().tokenizer


@pytest.fixture(scope="module")
def builder(tokenizer):
    return PromptBuilder(tokenizer)


def make_model(tokenizer, head, bins=5, seed=0, spec=SPEC):
    torch.manual_seed(seed)
    m = build_rollout_model(tiny_backbone(tokenizer=tokenizer), spec,
                            ModelConfig(action_head=head, action_bins=bins),
                            AdapterConfig(mode="full"))
    m.set_normalizer(torch.zeros(spec.obs_dim), torch.full((spec.obs_dim,), 0.3))
    return m.eval()


def continuous_episodes(n=8, seed=0, max_len=5):
    """Arm-like data: xyz moves with the action, the gripper opening follows a saturated +-1
    channel, two state dims stay zero."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(2, max_len + 1))
        obs = np.zeros((k + 1, OBS), np.float32)
        obs[0, :3] = rng.uniform(-0.3, 0.3, 3)
        acts = rng.uniform(-1, 1, (k, ACT)).astype(np.float32)
        acts[:, 3] = rng.choice([-1.0, 1.0], k)
        acts[rng.random((k, ACT)) < 0.3] = 1.0  # saturated at the bound
        for t in range(k):
            obs[t + 1, :3] = obs[t, :3] + 0.05 * acts[t, :3]
            obs[t + 1, 3] = (acts[t, 3] + 1) / 2
        term = np.zeros(k, bool)
        term[-1] = True
        out.append(Episode(obs, acts, np.zeros(k, np.float32), term, "Reach the target", GOAL))
    return EpisodeData.from_episodes(out, EnvSpecInfo("toy", OBS, "continuous", ACT))


def never(goal, state, prev, action):
    return False


def s0(n, seed=0):
    out = np.zeros((n, OBS), np.float32)
    out[:, :4] = np.random.default_rng(seed).uniform(-0.3, 0.3, (n, 4))
    return out


def rollout_batch(builder, data):
    seqs = [builder.rollout(e.instruction, e.observations, e.actions)
            for e in (data.episode(i) for i in range(len(data)))]
    return collate(seqs, builder.pad_id, OBS, "continuous", ACT)


# ---------------------------------------------------------------- heads and losses
def test_config_and_spec_validation():
    with pytest.raises(ValueError, match="action_head"):
        ModelConfig(action_head="gaussian")
    with pytest.raises(ValueError, match="action_bins"):
        ModelConfig(action_bins=1)
    with pytest.raises(ValueError, match="both"):
        RolloutSpec("toy", OBS, "continuous", ACT, action_low=(-1.0,) * ACT)
    with pytest.raises(ValueError, match="action_high has 3"):
        RolloutSpec("toy", OBS, "continuous", ACT, action_low=(-1.0,) * ACT,
                    action_high=(1.0,) * 3)
    with pytest.raises(ValueError, match="continuous"):
        RolloutSpec("toy", OBS, "discrete", 2, action_low=(0.0, 0.0), action_high=(1.0, 1.0))


def test_bin_head_needs_bounds(tokenizer):
    with pytest.raises(ValueError, match="action_low"):
        make_model(tokenizer, "bins", spec=RolloutSpec("toy", OBS, "continuous", ACT))
    make_model(tokenizer, "regression", spec=RolloutSpec("toy", OBS, "continuous", ACT))


def test_head_shapes(tokenizer):
    h = torch.randn(3, 64)
    reg = make_model(tokenizer, "regression")
    assert reg.action_head.out_features == ACT
    assert reg.predict_action(h).shape == (3, ACT)
    assert reg.action_log_prob(h, torch.zeros(3, ACT)) is None
    bins = make_model(tokenizer, "bins", bins=7)
    assert bins.action_head.out_features == ACT * 7
    assert bins.predict_action(h).shape == (3, ACT, 7)
    assert bins.greedy_action(h).shape == (3, ACT)
    assert bins.action_log_prob(h, torch.zeros(3, ACT)).shape == (3,)
    torch.testing.assert_close(bins.bin_centres[0], torch.linspace(-1, 1, 7))


def test_nearest_bin_and_bin_loss_by_hand(tokenizer):
    model = make_model(tokenizer, "bins", bins=5)  # centres -1, -0.5, 0, 0.5, 1
    actions = torch.tensor([[-1.0, -0.3, 0.26, 0.9], [3.0, -7.0, 0.0, 0.6]])
    nearest = [[0, 1, 3, 4], [4, 0, 2, 3]]  # out-of-bound values go to the end bins
    assert model.action_bin(actions).tolist() == nearest
    logits = torch.randn(2, ACT, 5)
    expected = torch.tensor([
        np.mean([-float(torch.log_softmax(logits[i, d], -1)[nearest[i][d]]) for d in range(ACT)])
        for i in range(2)], dtype=torch.float32)
    torch.testing.assert_close(action_bin_loss(model, logits, actions), expected)
    sure = torch.full((1, ACT, 5), -30.0)
    sure[0, torch.arange(ACT), torch.tensor(nearest[0])] = 30.0
    assert float(action_bin_loss(model, sure, actions[:1])) < 1e-6


@pytest.mark.parametrize("head", HEADS)
def test_grounding_action_loss_matches_its_definition(tokenizer, builder, head):
    """The rollout action term: per-episode mean over its steps of the MSE (regression) or of
    the per-dimension cross-entropy against the nearest bin (bins), then the mean over
    episodes."""
    model = make_model(tokenizer, head)
    data = continuous_episodes(3)
    b = rollout_batch(builder, data)
    per_episode = []
    with torch.no_grad():
        losses = grounding_losses(model, b)
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        for i in range(len(data)):
            pos = b["action_tgt_mask"][i].nonzero()[:, 0]
            pred = model.predict_action(h[i, pos])
            tgt = torch.from_numpy(data.episode(i).actions)
            if head == "regression":
                per_episode.append(float(((pred - tgt) ** 2).mean()))
            else:
                idx = model.action_bin(tgt)
                per_episode.append(float(F.cross_entropy(pred.flatten(0, 1), idx.flatten())))
    assert float(losses["rollout_action"]) == pytest.approx(np.mean(per_episode), rel=1e-5)
    assert 0 <= float(losses["rollout_action_mae"]) <= 2


# ---------------------------------------------------------------- decoding
def _kw(n=3, steps=6):
    return {"goals": [GOAL] * n, "max_steps": [steps] * n, "is_success": never}


@pytest.mark.parametrize("head", HEADS)
def test_cache_and_no_cache_give_identical_rollouts(tokenizer, builder, head):
    model = make_model(tokenizer, head)
    for temperature in (0.0, 1.0):
        runs = [imagine_batch(model, builder, INSTRUCTIONS, s0(3), use_cache=cache,
                              temperature=temperature, seeds=[11, 12, 13], **_kw())
                for cache in (True, False)]
        for a, b in zip(*runs, strict=True):
            assert a.actions.shape == (6, ACT) and a.actions.dtype == np.float32
            if head == "bins":
                assert a.actions.tolist() == b.actions.tolist()
            else:
                np.testing.assert_allclose(a.actions, b.actions, atol=1e-5)
            np.testing.assert_allclose(a.observations, b.observations, atol=1e-4)
    greedy = imagine_batch(model, builder, INSTRUCTIONS, s0(3), **_kw())
    sampled = imagine_batch(model, builder, INSTRUCTIONS, s0(3), temperature=1.0,
                            seeds=[11, 12, 13], **_kw())
    same = [np.array_equal(g.actions, s.actions) for g, s in zip(greedy, sampled, strict=True)]
    if head == "regression":  # no distribution: greedy at any temperature
        assert all(same)
    else:
        assert not all(same)
        assert set(np.concatenate([s.actions for s in sampled]).ravel().tolist()) <= set(
            model.bin_centres[0].tolist())


@pytest.mark.parametrize("head", HEADS)
def test_out_of_bound_predictions_are_clipped_before_feedback_and_storage(tokenizer, builder,
                                                                          head):
    model = make_model(tokenizer, head)
    with torch.no_grad():
        model.action_head.weight.zero_()
        if head == "regression":  # push the head far outside [-1, 1]
            model.action_head.bias.copy_(torch.tensor([5.0, -5.0, 0.5, 9.0]))
        else:
            model.action_head.bias.zero_()
            model.action_head.bias.view(ACT, 5)[:, 4] = 10.0  # all mass on the top bin
    rolls = imagine_batch(model, builder, INSTRUCTIONS, s0(3), **_kw())
    want = [1.0, -1.0, 0.5, 1.0] if head == "regression" else [1.0] * ACT
    for r in rolls:
        assert np.abs(r.actions).max() <= 1.0
        np.testing.assert_allclose(r.actions, np.tile(want, (6, 1)), atol=1e-6)
    # what was fed back is the stored (clipped) action: re-encoding the stored rollout
    # teacher-forced predicts the same next states
    seq = builder.rollout(INSTRUCTIONS[0], rolls[0].observations, rolls[0].actions)
    b = collate([seq], builder.pad_id, OBS, "continuous", ACT)
    with torch.no_grad():
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        idx = b["state_tgt_mask"].nonzero(as_tuple=True)
        z = model.predict_state(h[idx], b["state_base"][idx])
        states = model.clamp(model.denormalize(z)).numpy()
    np.testing.assert_allclose(states, rolls[0].observations[1:], atol=1e-4)


# ---------------------------------------------------------------- normaliser
def test_constant_state_dims_are_normalised_with_std_one(tokenizer):
    data = continuous_episodes(6)
    assert not data.observations[..., 4:].any()
    mean, std = state_statistics(data)
    assert std[4:].tolist() == [1.0, 1.0] and (std[:4] < 1).all()
    raw = data.observations[data.lengths[:, None] >= np.arange(data.observations.shape[1])]
    np.testing.assert_allclose(std[:4], raw[:, :4].std(0) + 1e-3, rtol=1e-6)  # others as before
    model = make_model(tokenizer, "regression")
    model.set_normalizer(torch.from_numpy(mean), torch.zeros(OBS))  # a raw std of exactly 0
    assert model.state_std.tolist() == [1.0] * OBS
    model.set_normalizer(torch.from_numpy(mean), torch.from_numpy(std))
    # an unseen value in a constant dim (an easy task's entity block) enters unamplified, and
    # a small prediction there stays small on the way back
    s = torch.zeros(OBS)
    s[4] = 0.5
    assert float(model.normalize(s)[4]) == pytest.approx(0.5)
    z = torch.zeros(OBS)
    z[4:] = 0.01
    assert model.denormalize(z)[4:].abs().max() <= 0.01 + 1e-7


def test_clevr_statistics_have_no_constant_dims():
    """CLEVR's states (random layouts) never hit the std-1 case, so its normaliser is what it
    was."""
    from kalm.data.rollout import run_episode
    from kalm.envs.registry import get_env, make_env

    clevr = get_env("clevr")
    env = make_env(clevr, "paper")
    goal = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
    eps = [run_episode(env, clevr.policy("random", seed), goal, "Put red left of blue.", seed)
           for seed in range(4)]
    data = EpisodeData.from_episodes(eps, clevr.episode_spec())
    _, std = state_statistics(data)
    raw = data.observations[data.lengths[:, None] >= np.arange(data.observations.shape[1])]
    assert (raw.std(0) > 1e-3).all()
    np.testing.assert_allclose(std, raw.std(0) + 1e-3, rtol=1e-6)


# ---------------------------------------------------------------- saving
@pytest.mark.parametrize("head", HEADS)
def test_save_load_round_trip_gives_identical_predictions(tmp_path, tokenizer, builder, head):
    model = make_model(tokenizer, head, seed=3)
    with torch.no_grad():
        model.action_head.bias.normal_()  # not the initial values
    adapter = AdapterConfig(mode="full")
    save_rollout_model(model, tmp_path / "m", model_meta(model, tiny_backbone(
        tokenizer=tokenizer), adapter))
    meta = json.loads((tmp_path / "m" / "kalm_model.json").read_text())
    assert meta["model"]["action_head"] == head
    assert meta["spec"]["action_low"] == [-1.0] * ACT
    back, _ = load_rollout_model(tmp_path / "m", backbone=tiny_backbone(tokenizer=tokenizer),
                                 spec=SPEC, config=ModelConfig(action_head=head, action_bins=5))
    assert back.spec == SPEC and back.bins == (head == "bins")
    b = rollout_batch(builder, continuous_episodes(3))
    with torch.no_grad():
        a, c = grounding_losses(model, b), grounding_losses(back, b)
    for k in a:
        assert float(a[k]) == float(c[k]), k
    for x, y in zip(imagine_batch(model, builder, INSTRUCTIONS, s0(3), temperature=1.0,
                                  seeds=[1, 2, 3], **_kw()),
                    imagine_batch(back, builder, INSTRUCTIONS, s0(3), temperature=1.0,
                                  seeds=[1, 2, 3], **_kw()), strict=True):
        assert x.actions.tolist() == y.actions.tolist()
        assert x.observations.tolist() == y.observations.tolist()


def test_loading_another_head_kind_fails_clearly(tmp_path, tokenizer):
    model = make_model(tokenizer, "bins")
    save_rollout_model(model, tmp_path / "m", model_meta(model, tiny_backbone(
        tokenizer=tokenizer), AdapterConfig(mode="full")))
    with pytest.raises(CheckpointMismatch, match=r"'action_head': 'bins'.*'regression'"):
        load_rollout_model(tmp_path / "m", backbone=tiny_backbone(tokenizer=tokenizer),
                           config=ModelConfig(action_head="regression"))
    with pytest.raises(CheckpointMismatch, match="action_bins"):
        load_rollout_model(tmp_path / "m", backbone=tiny_backbone(tokenizer=tokenizer),
                           config=ModelConfig(action_head="bins", action_bins=21))


def test_models_saved_before_action_bounds_and_heads_still_load(tmp_path, tokenizer):
    model = make_model(tokenizer, "regression", spec=RolloutSpec("toy", OBS, "continuous", ACT))
    save_rollout_model(model, tmp_path / "m", model_meta(model, tiny_backbone(
        tokenizer=tokenizer), AdapterConfig(mode="full")))
    path = tmp_path / "m" / "kalm_model.json"
    meta = json.loads(path.read_text())
    for k in ("action_low", "action_high"):
        del meta["spec"][k]
    for k in ("action_head", "action_bins"):
        del meta["model"][k]
    path.write_text(json.dumps(meta))
    alone, _ = load_rollout_model(tmp_path / "m", backbone=tiny_backbone(tokenizer=tokenizer))
    assert alone.spec.action_low is None and alone.config.action_head == "regression"
    # given the env's spec, the old model takes its bounds and clips
    back, _ = load_rollout_model(tmp_path / "m", backbone=tiny_backbone(tokenizer=tokenizer),
                                 spec=SPEC, config=ModelConfig())
    assert back.spec.action_high == (1.0,) * ACT
    assert float(back.clip_actions(torch.full((ACT,), 3.0)).max()) == 1.0


# ---------------------------------------------------------------- grounding
def _ground(tmp_path, tokenizer, name, head, steps=3, resume=False, **kw):
    data_path = tmp_path / "real.h5"
    if not data_path.exists():
        write_episodes(continuous_episodes(10), data_path)
    cfg = GroundConfig(data=str(data_path), out=str(tmp_path / name), steps=steps,
                       batch_size=4, paraphrase_suite="", save_every=2, eval_every=2,
                       metrics_episodes=2, explain_episodes=0, bf16=False,
                       adapter=AdapterConfig(mode="lora", lora_r=4),
                       model=ModelConfig(action_head=head, action_bins=5), **kw)
    return ground(cfg, resume=resume, backbone=tiny_backbone(tokenizer=tokenizer),
                  progress=False, spec=SPEC, paraphrases=Paraphrases())


@pytest.mark.parametrize("head", HEADS)
def test_grounding_a_few_steps_on_continuous_episodes(tmp_path, tokenizer, builder, head):
    result = _ground(tmp_path, tokenizer, "g", head)
    assert result["steps"] == 3
    tf = result["rollout_teacher_forced"]
    assert 0 <= tf["action_mae"] <= 2 and len(tf["action_mae_per_dim"]) == ACT
    signs = tf["action_sign_accuracy_per_dim"]
    assert len(signs) == ACT and all(v is None or 0 <= v <= 1 for v in signs)
    assert tf["action_accuracy"] is None
    assert result["step_seconds"] > 0 and result["tokens_per_second"] > 0
    assert result["tokens_per_step"] > 0 and 0 <= result["padding_share"] < 1
    lines = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert all(x["tokens"] > 0 and "rollout_action_mae" in x for x in train)
    model, meta = load_rollout_model(tmp_path / "g", backbone=tiny_backbone(tokenizer=tokenizer))
    assert meta["model"]["action_head"] == head
    assert model.state_std[4:].tolist() == [1.0, 1.0]
    # dims 4-5 never leave zero; the gripper (3) starts at zero and opens; 0-2 never start at 0
    assert model.zero_held.tolist() == [False, False, False, False, True, True]
    rolls = imagine_batch(model, builder, INSTRUCTIONS[:1], s0(1), **_kw(1, 4))
    assert np.abs(rolls[0].actions).max() <= 1.0


def test_resuming_with_another_head_kind_is_refused(tmp_path, tokenizer):
    _ground(tmp_path, tokenizer, "g", "bins", steps=4, stop_at_step=2)
    with pytest.raises(CheckpointMismatch, match="action_head"):
        _ground(tmp_path, tokenizer, "g", "regression", steps=4, resume=True)


def test_bin_head_gives_an_action_log_probability_signal(tokenizer, builder):
    from kalm.imagination.signals import action_logprob

    eps = [continuous_episodes(3).episode(i) for i in range(3)]
    assert np.isnan(action_logprob(make_model(tokenizer, "regression"), builder, eps)).all()
    model = make_model(tokenizer, "bins")
    lp = action_logprob(model, builder, eps)
    assert np.isfinite(lp).all() and (lp < 0).all()
    # by hand for the first episode: the mean over steps of the joint log-probability
    b = rollout_batch(builder, EpisodeData.from_episodes(
        eps[:1], EnvSpecInfo("toy", OBS, "continuous", ACT)))
    with torch.no_grad():
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        pos = b["action_tgt_mask"][0].nonzero()[:, 0]
        logp = torch.log_softmax(model.predict_action(h[0, pos]), -1)
        idx = model.action_bin(torch.from_numpy(eps[0].actions))
        want = logp.gather(-1, idx[..., None])[..., 0].sum(-1).mean()
    assert lp[0] == pytest.approx(float(want), rel=1e-5)


def test_collator_keeps_continuous_targets(builder):
    data = continuous_episodes(2)
    col = Collator(data, builder, Paraphrases(), "continuous", ACT)
    batch = col([GroundingSamples(2, 2, 1, {"rollout": 1}, 0)[i] for i in range(2)])
    assert batch["action_tgt"].dtype == torch.float32 and batch["action_tgt"].shape[-1] == ACT


# ---------------------------------------------------------------- Meta-World, end to end
@pytest.fixture(scope="module")
def metaworld_data(tmp_path_factory):
    pytest.importorskip("metaworld")
    from kalm.data.collect import CollectConfig, collect
    from kalm.envs.registry import get_env

    tmp = tmp_path_factory.mktemp("mw")
    suite = tmp / "two.jsonl"
    suite.write_text("\n".join(
        line for line in get_env("metaworld").suite_path("train").read_text().splitlines()
        if '"reach"' in line or '"door-open"' in line) + "\n")
    cfg = CollectConfig(out=str(tmp / "real.h5"), env="metaworld", suite_file=str(suite),
                        episodes=4, chunk_size=4, workers=1, policy="expert:noise=mix")
    collect(cfg, progress=False)
    return tmp, suite


def test_metaworld_ground_and_imagine(metaworld_data, tokenizer):
    """A few grounding steps on real scripted episodes (100-step prompts, 91-d states with
    constant entity blocks), then `kalm imagine` on the result: cached and uncached decoding
    agree, actions stay in the env's bounds, and the stats carry the env's realism rates."""
    from kalm.data.episodes import read_episodes
    from kalm.imagination.stage import ImagineConfig, imagine

    tmp, suite = metaworld_data
    cfg = GroundConfig(data=str(tmp / "real.h5"), out=str(tmp / "g"), steps=2, batch_size=2,
                       paraphrase_suite="", metrics_episodes=1, explain_episodes=0, bf16=False,
                       eval_every=10, save_every=10, adapter=AdapterConfig(lora_r=4),
                       model=ModelConfig(action_head="bins", action_bins=11))
    result = ground(cfg, backbone=tiny_backbone(tokenizer=tokenizer), progress=False)
    assert result["tokens_per_step"] > 100 and result["tokens_per_second"] > 0
    model, meta = load_rollout_model(tmp / "g", backbone=tiny_backbone(tokenizer=tokenizer))
    assert meta["spec"]["action_low"] == [-1.0] * 4
    std = model.state_std.numpy()
    assert (std[49:56] == 1.0).all()  # the wall block: zero in reach and door-open
    runs = {}
    for cache in (True, False):
        out = tmp / f"im-{cache}.h5"
        stats = imagine(ImagineConfig(out=str(out), suite_file=str(suite), per_goal=1, goals=2,
                                      max_steps=3, use_cache=cache, temperature=1.0),
                        model=model, progress=False)
        runs[cache] = read_episodes(out)
    a, b = runs[True], runs[False]
    assert len(a) == 2 and a.spec.action_type == "continuous"
    for i in range(len(a)):
        assert a.episode(i).actions.tolist() == b.episode(i).actions.tolist()
        np.testing.assert_allclose(a.episode(i).observations, b.episode(i).observations,
                                   atol=1e-4)
        assert np.abs(a.episode(i).actions).max() <= 1.0
    (level,) = stats["levels"].values()
    # the rates are the env's own realism checks, recomputed here on the stored rollouts
    from kalm.envs.registry import get_env as _env

    checks = [_env("metaworld").realism_checks(b.episode(i).observations, b.episode(i).actions)
              for i in range(len(b))]
    transitions = sum(b.episode(i).length for i in range(len(b)))
    assert level["transitions"] == transitions and level["rollouts"] == len(b)
    for category in ("floating_in_air", "out_of_workbench", "implausible_pose",
                     "exceeding_dynamics"):
        counts = [int(c[category]) for c in checks]
        assert [int(v) for v in b.extras[f"unrealistic_{category}"]] == counts
        assert level[f"{category}_pct"] == pytest.approx(100 * sum(counts) / transitions)
    bad = sum(any(int(v) for v in c.values()) for c in checks)
    assert level["unrealistic_rollouts_pct"] == pytest.approx(100 * bad / len(b))
    assert [not bool(v) for v in b.extras["realistic"]] == [any(int(v) for v in c.values())
                                                          for c in checks]
    # the LLM-as-policy baseline decodes the bin head the same way, inside the bounds
    from kalm.envs.registry import get_env, make_env
    from kalm.eval.llm_policy import LLMPolicy

    mw = get_env("metaworld")
    env = make_env(mw)
    goal = {"kind": "task", "task": "reach"}
    obs, _ = env.reset(seed=0, options={"goal": goal, "instruction": "Reach the goal."})
    policy = LLMPolicy("unused", model=model)
    policy.begin(env, goal, "Reach the goal.")
    for _ in range(2):
        action = policy.act(obs)
        assert action.shape == (4,) and np.abs(action).max() <= 1.0
        assert set(action.tolist()) <= set(model.bin_centres[0].tolist())
        obs, *_ = env.step(action)


def test_cli_and_pipeline_carry_the_head_without_changing_old_run_hashes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import kalm.llm.train as train_mod
    from kalm.cli import main
    from kalm.config import to_dict
    from kalm.pipeline import _hashed

    seen = []
    monkeypatch.setattr(train_mod, "ground", lambda cfg, resume=False: seen.append(cfg) or {})
    out = CliRunner().invoke(main, ["ground", "--data", "x.h5", "--out", str(tmp_path / "g"),
                                    "--action-head", "bins", "--action-bins", "11"])
    assert out.exit_code == 0, out.output
    assert (seen[0].model.action_head, seen[0].model.action_bins) == ("bins", 11)
    # a run folder grounded before the option existed keeps its hash; choosing bins changes it
    assert _hashed(to_dict(GroundConfig()))["model"] == {"state_head": "residual",
                                                         "clamp_states": True, "extra": {}}
    assert _hashed(to_dict(GroundConfig(model=ModelConfig(action_head="bins"))))["model"][
        "action_head"] == "bins"
