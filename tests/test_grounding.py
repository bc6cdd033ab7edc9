"""Grounding: prompt layouts, masks, losses, save/load, resume, LoRA/full, learning on tiny data."""

import itertools
import json

import numpy as np
import pytest
import torch

from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData, write_episodes
from kalm.llm.backbone import BackboneError, load_backbone, resolve_backbone_path, tiny_backbone
from kalm.llm.batching import (
    Collator,
    GroundingSamples,
    Paraphrases,
    collate,
    objective_counts,
)
from kalm.llm.losses import grounding_losses
from kalm.llm.model import ModelConfig, RolloutSpec
from kalm.llm.prompts import IGNORE, PromptBuilder, normalize_instruction
from kalm.llm.saving import (
    AdapterConfig,
    CheckpointMismatch,
    build_rollout_model,
    load_rollout_model,
    model_meta,
    save_rollout_model,
)
from kalm.llm.train import GroundConfig, ground

SPEC = RolloutSpec("clevr", 10, "discrete", 40)
GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}



@pytest.fixture(scope="module")
def tokenizer():
    return tiny_backbone().tokenizer


@pytest.fixture
def tiny(tokenizer):
    """A fresh tiny backbone per use: LoRA layers are injected in place."""
    return tiny_backbone(tokenizer=tokenizer)


def fresh(tokenizer, **kw):
    return tiny_backbone(tokenizer=tokenizer, **kw)


@pytest.fixture(scope="module")
def builder(tokenizer):
    return PromptBuilder(tokenizer)


def episodes(n=12, seed=0, max_len=4):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, max_len + 1))
        obs = np.zeros((k + 1, 10), np.float32)
        obs[0] = rng.uniform(-0.4, 0.4, 10)
        acts = rng.integers(0, 40, k)
        for t in range(k):  # simple learnable dynamics: the pushed ball moves by its direction
            obs[t + 1] = obs[t]
            ball, d = divmod(int(acts[t]), 8)
            obs[t + 1, 2 * ball] += 0.2 * [1, 0, -1, 0, 0.7, -0.7, 0.7, -0.7][d]
            obs[t + 1, 2 * ball + 1] += 0.2 * [0, 1, 0, -1, 0.7, 0.7, -0.7, -0.7][d]
        term = np.zeros(k, bool)
        term[-1] = True
        out.append(Episode(obs, acts, np.zeros(k, np.float32), term, "Push red left of blue",
                           GOAL))
    return EpisodeData.from_episodes(out, EnvSpecInfo("clevr", 10, "discrete", 40))


# ---------------------------------------------------------------- layouts and masks
def test_rollout_layout(builder):
    obs = np.arange(30, dtype=np.float32).reshape(3, 10)
    seq = builder.rollout("Push red left of blue", obs, np.array([5, 9]))
    p = len(builder.tokens("Goal: Push red left of blue.\nRollout:"))
    assert sorted(seq.state_in) == [p, p + 2, p + 4]
    assert sorted(seq.action_in) == [p + 1, p + 3]
    assert seq.action_tgt == {p: 5, p + 2: 9}  # a_t read at s_t's slot
    assert sorted(seq.state_tgt) == [p + 1, p + 3]  # s_{t+1} read at a_t's slot
    target, base = seq.state_tgt[p + 1]
    np.testing.assert_array_equal(target, obs[1])
    np.testing.assert_array_equal(base, obs[0])
    assert len(seq) == p + 5  # no padding between prompt and trajectory
    assert not seq.labels


def test_dynamics_and_consequence_layout(builder):
    s, s2 = np.zeros(10, np.float32), np.ones(10, np.float32)
    seq = builder.dynamics(s, 7, s2)
    k = len(builder.tokens("Dynamics.\nState:"))
    m = len(builder.tokens(" Action:"))
    n = len(builder.tokens(" Next state:"))
    assert list(seq.state_in) == [k] and list(seq.action_in) == [k + 1 + m]
    assert list(seq.state_tgt) == [k + 1 + m + n] == [seq.last]
    seq = builder.consequence("Go", s, s2)
    assert list(seq.state_in) == [len(builder.tokens("Start state:"))]
    assert list(seq.state_tgt) == [seq.last]


def test_explanation_supervises_only_the_instruction(builder):
    obs = np.zeros((3, 10), np.float32)
    seq = builder.explanation("Push red left of blue", obs, np.array([1, 2]))
    instr = builder.tokens(" Push red left of blue.")
    assert len(seq.labels) == len(instr) + 1  # instruction tokens + end token
    first = min(seq.labels)
    assert seq.labels[first] == instr[0]
    assert seq.labels[seq.last - 1] == builder.eos_id
    assert max(seq.state_in) < first  # nothing in the trajectory is a text target


def test_normalize_instruction():
    assert normalize_instruction("  push  red ") == "push red."
    assert normalize_instruction("Push red.") == "Push red."
    assert normalize_instruction("Is it there?") == "Is it there?"
    with pytest.raises(ValueError):
        normalize_instruction("   ")


def test_objective_counts_explicit():
    assert objective_counts({"rollout": 1, "dynamics": 1, "consequence": 1,
                             "explanation": 1}, 8) == {
        "rollout": 2, "dynamics": 2, "consequence": 2, "explanation": 2}
    c = objective_counts({"rollout": 2, "explanation": 1}, 6)
    assert c == {"rollout": 4, "dynamics": 0, "consequence": 0, "explanation": 2}
    assert sum(objective_counts({"rollout": 1, "dynamics": 1, "consequence": 1}, 8).values()) == 8
    with pytest.raises(ValueError, match="unknown objective"):
        objective_counts({"imagine": 1}, 4)


def test_batches_follow_the_mix_and_cover_episodes():
    ds = GroundingSamples(episodes=10, batch_size=4, steps=5,
                          weights={"rollout": 1, "explanation": 1}, seed=0)
    batch = [ds[i] for i in range(4)]
    assert [s.objective for s in batch] == ["rollout", "rollout", "explanation", "explanation"]
    first_epoch = {ds[i].episode for i in range(10)}
    assert first_epoch == set(range(10))
    assert [ds[i] for i in range(8)] == [ds[i] for i in range(8)]  # deterministic


def test_collate_masks_and_padding(builder):
    obs = np.zeros((3, 10), np.float32)
    a = builder.rollout("Short", obs[:2], np.array([3]))
    b = builder.explanation("A much longer instruction than the other one", obs,
                            np.array([1, 2]))
    t = collate([a, b], builder.pad_id, 10, "discrete", 40)
    assert t["attention_mask"][0].sum() == len(a) and t["attention_mask"][1].sum() == len(b)
    assert not t["state_in_mask"][0, len(a):].any()
    assert (t["labels"][0] == IGNORE).all()
    assert t["action_tgt_mask"][0].sum() == 1 and t["state_tgt_mask"][0].sum() == 1
    assert (t["labels"][1] != IGNORE).sum() == len(b.labels)


def test_losses_ignore_padding(tiny, builder):
    torch.manual_seed(0)
    model = build_rollout_model(tiny, SPEC, ModelConfig(), AdapterConfig(mode="full")).eval()
    data = episodes(3)
    col = Collator(data, builder, Paraphrases(), "discrete", 40)
    ds = GroundingSamples(3, 1, 8, {"rollout": 1}, 0)
    spec = ds[0]
    alone = grounding_losses(model, col([spec]))
    long_spec = type(spec)(episode=(spec.episode + 1) % 3, objective="explanation", seed=1)
    padded = col([spec, long_spec])  # the first row now carries right padding
    with torch.no_grad():
        both = grounding_losses(model, padded)
    assert float(both["rollout_state"]) == pytest.approx(float(alone["rollout_state"]), rel=1e-4)
    assert float(both["rollout_action"]) == pytest.approx(float(alone["rollout_action"]),
                                                          rel=1e-4)


def test_split_by_length_hand_made():
    from kalm.llm.batching import split_by_length

    # two long rollouts, two short dynamics prompts: one pass each, whatever the order
    assert split_by_length([200, 10, 200, 12], 2) == [[1, 3], [0, 2]]
    assert split_by_length([200, 10, 200, 12], 1) == [[1, 3, 0, 2]]
    # a pass costs more than the padding it saves: one pass
    assert split_by_length([200, 10, 200, 12], 2, overhead=1000) == [[1, 3, 0, 2]]
    # three lengths, three passes allowed, no overhead: one per length
    assert split_by_length([5, 50, 500, 5], 3) == [[0, 3], [1], [2]]
    assert split_by_length([], 2) == []
    with pytest.raises(ValueError, match="max_groups"):
        split_by_length([3], 0)


def test_length_groups_give_the_same_losses_and_gradients(tiny, builder):
    """Rows of very different length through the backbone in separate passes: the same losses
    and gradients as one padded pass."""
    torch.manual_seed(0)
    model = build_rollout_model(tiny, SPEC, ModelConfig(), AdapterConfig(mode="full"))
    data = episodes(8, max_len=6)
    col = Collator(data, builder, Paraphrases(), "discrete", 40)
    ds = GroundingSamples(8, 8, 1, {o: 1.0 for o in
                                    ("rollout", "dynamics", "consequence", "explanation")}, 0)
    batch = col([ds[i] for i in range(8)])
    lengths = batch["attention_mask"].sum(1)
    assert int(lengths.max()) > 2 * int(lengths.min())  # the case the split is for

    def run(groups):
        model.zero_grad()
        out = grounding_losses(model, batch, length_groups=groups)
        out["loss"].backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()
                     if p.grad is not None}

    one, g1 = run(1)
    three, g3 = run(3)
    for k in one:
        assert float(three[k].detach()) == pytest.approx(float(one[k].detach()), rel=1e-5,
                                                     abs=1e-6), k
    assert g1.keys() == g3.keys()
    for n in g1:
        torch.testing.assert_close(g3[n], g1[n], rtol=1e-4, atol=1e-6, msg=n)


def test_length_groups_must_be_positive():
    with pytest.raises(ValueError, match="length_groups"):
        GroundConfig(length_groups=0)


def test_metrics_passes_cover_every_sequence_once(builder):
    from kalm.llm.metrics import length_batches

    lengths = [200] * 5 + [9] * 40 + [201]
    chunks = length_batches(lengths, 4, positions=90)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    assert [len(c) for c in chunks] == [10, 10, 10, 10, 4, 2]  # short ones 10 to a pass
    assert chunks[-1] == [4, 45]  # sorted: the longest last


# ---------------------------------------------------------------- saving and training
def _train(tmp_path, tokenizer, name, steps, resume=False, mode="lora", **kw):
    data_path = tmp_path / "real.h5"
    if not data_path.exists():
        write_episodes(episodes(12), data_path)
    settings = {"batch_size": 4, "paraphrase_suite": "", "save_every": 3, "eval_every": 3,
                "metrics_episodes": 2, "explain_episodes": 1, **kw}
    cfg = GroundConfig(data=str(data_path), out=str(tmp_path / name), steps=steps,
                       adapter=AdapterConfig(mode=mode, lora_r=4), **settings)
    return ground(cfg, resume=resume, backbone=fresh(tokenizer), progress=False)


def test_save_load_identical_outputs(tmp_path, tokenizer, builder, monkeypatch):
    """The reloaded model computes what the trained model in memory computed."""
    import kalm.llm.train as train_mod

    trained = []
    save = train_mod.save_rollout_model

    def keep(model, folder, meta):
        trained.append(model)
        return save(model, folder, meta)

    monkeypatch.setattr(train_mod, "save_rollout_model", keep)
    _train(tmp_path, tokenizer, "g", steps=3, lr=5e-2)
    model, meta = load_rollout_model(tmp_path / "g", backbone=fresh(tokenizer))
    assert meta["adapter"]["mode"] == "lora"
    data = episodes(2, seed=5)
    col = Collator(data, builder, Paraphrases(), "discrete", 40)
    batch = col(list(GroundingSamples(2, 4, 1, {o: 1 for o in (
        "rollout", "dynamics", "consequence", "explanation")}, 0)))
    (memory,) = trained
    memory.eval()
    untrained = build_rollout_model(fresh(tokenizer), SPEC, ModelConfig(),
                                    AdapterConfig(lora_r=4)).eval()
    untrained.set_normalizer(memory.state_mean, memory.state_std)
    with torch.no_grad():
        a = grounding_losses(memory, batch)
        b = grounding_losses(model, batch)
        c = grounding_losses(untrained, batch)
    for k in a:
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6, abs=1e-7), k
    assert float(a["loss"]) != pytest.approx(float(c["loss"]), rel=1e-3)  # training did something
    assert json.loads((tmp_path / "g" / "kalm_model.json").read_text())["spec"]["obs_dim"] == 10


def test_resume_matches_uninterrupted_run(tmp_path, tokenizer):
    _train(tmp_path, tokenizer, "straight", steps=6)
    _train(tmp_path, tokenizer, "split", steps=6, time_limit_minutes=0.0)  # stops after 1 step
    (tmp_path / "split" / "kalm_model.json").unlink()
    _train(tmp_path, tokenizer, "split", steps=6, resume=True)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    b = load_file(str(tmp_path / "split" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    steps = [json.loads(ln)["step"] for ln in
             (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
             if json.loads(ln)["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_lora_and_full_modes_train_the_right_parameters(tmp_path, tokenizer):
    lora = build_rollout_model(fresh(tokenizer), SPEC, ModelConfig(), AdapterConfig(lora_r=4))
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names)
    assert {"state_embed.weight", "action_embed.weight", "state_head.weight",
            "action_head.weight"} <= set(names)
    assert not any("embed_tokens" in n for n in names)
    full = build_rollout_model(fresh(tokenizer), SPEC, ModelConfig(), AdapterConfig(mode="full"))
    assert all(p.requires_grad for p in full.parameters())
    _train(tmp_path, tokenizer, "full", steps=2, mode="full")
    model, _ = load_rollout_model(tmp_path / "full", backbone=fresh(tokenizer))
    assert model.spec.action_dim == 40


def test_checkpoint_for_another_backbone_is_refused(tmp_path, tiny):
    model = build_rollout_model(tiny, SPEC, ModelConfig(), AdapterConfig(lora_r=4))
    save_rollout_model(model, tmp_path / "m", model_meta(model, tiny, AdapterConfig(lora_r=4)))
    other = tiny_backbone(tokenizer=tiny.tokenizer, hidden=32, layers=1)
    with pytest.raises(CheckpointMismatch, match="made for backbone"):
        load_rollout_model(tmp_path / "m", backbone=other)
    with pytest.raises(CheckpointMismatch, match="env spec"):
        load_rollout_model(tmp_path / "m", backbone=fresh(tiny.tokenizer),
                           spec=RolloutSpec("toy", 4, "continuous", 2))


def test_backbone_name_must_be_a_local_folder(tmp_path):
    with pytest.raises(BackboneError, match="never downloads"):
        resolve_backbone_path("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(BackboneError, match=r"config\.json"):
        resolve_backbone_path(tmp_path)


def test_tiny_model_overfits_a_handful_of_episodes(tmp_path, tokenizer, builder):
    """The whole path learns: teacher-forced next-state error falls by 10x."""
    from kalm.llm.metrics import _state_errors

    torch.manual_seed(0)
    data = episodes(4, seed=3, max_len=3)
    model = build_rollout_model(fresh(tokenizer, seed=1), SPEC, ModelConfig(state_head="absolute"),
                                AdapterConfig(mode="full"))
    from kalm.llm.train import state_statistics

    mean, std = state_statistics(data)
    model.set_normalizer(torch.from_numpy(mean), torch.from_numpy(std))
    seqs = [builder.dynamics(data.episode(i).observations[t], data.episode(i).actions[t],
                             data.episode(i).observations[t + 1])
            for i in range(len(data)) for t in range(data.episode(i).length)]
    before = float(_state_errors(model, builder, seqs)[0].mean())
    batch = collate(seqs, builder.pad_id, 10, "discrete", 40)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(150):
        loss = grounding_losses(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(_state_errors(model, builder, seqs)[0].mean())
    assert after < before / 10, (before, after)


@pytest.mark.slow
def test_default_backbone_loads_and_trains_one_step(tmp_path):
    backbone = load_backbone()
    assert backbone.identity["hidden_size"] == 576
    write_episodes(episodes(6), tmp_path / "real.h5")
    cfg = GroundConfig(data=str(tmp_path / "real.h5"), out=str(tmp_path / "g"), steps=1,
                       batch_size=2, paraphrase_suite="", metrics_episodes=1,
                       explain_episodes=1)
    result = ground(cfg, backbone=backbone, progress=False)
    assert result["steps"] == 1
    assert (tmp_path / "g" / "weights.safetensors").exists()


def test_export_checkpoint_and_stop_at_step(tmp_path, tokenizer):
    from kalm.llm.train import export_checkpoint

    result = _train(tmp_path, tokenizer, "g", steps=6, stop_at_step=3)
    assert result["steps"] == 3
    out = export_checkpoint(tmp_path / "g", 3, tmp_path / "exported", backbone=fresh(tokenizer))
    from safetensors.torch import load_file

    a = load_file(str(out / "weights.safetensors"))
    b = load_file(str(tmp_path / "g" / "weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        export_checkpoint(tmp_path / "g", 99, tmp_path / "x", backbone=fresh(tokenizer))


def test_eager_and_sdpa_attention_give_the_same_losses(tmp_path, tokenizer, builder):
    """bf16 training on CPU switches to eager attention: it must compute the same thing."""
    from kalm.llm.saving import AdapterConfig, build_rollout_model
    from kalm.llm.train import training_attention

    assert training_attention(GroundConfig(bf16=True)) == "eager"
    assert training_attention(GroundConfig(bf16=False)) is None
    assert training_attention(GroundConfig(attn_implementation="sdpa")) == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation"):
        training_attention(GroundConfig(attn_implementation="fast"))

    data = episodes(3, seed=2)
    col = Collator(data, builder, Paraphrases(), "discrete", 40)
    batch = col(list(GroundingSamples(3, 6, 1, {o: 1 for o in
                                                ("rollout", "dynamics", "consequence")}, 0)))
    assert int(batch["attention_mask"].eq(0).sum()) > 0  # padding is present
    bb = fresh(tokenizer)
    torch.manual_seed(0)
    model = build_rollout_model(bb, SPEC, ModelConfig(), AdapterConfig(mode="full"))
    losses = {}
    for impl in ("sdpa", "eager"):
        bb.model.set_attn_implementation(impl)
        with torch.no_grad():
            losses[impl] = {k: float(v) for k, v in grounding_losses(model, batch).items()}
    for k, v in losses["sdpa"].items():
        assert losses["eager"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k


# ---------------------------------------------------------------- precision and time budget
def test_bf16_auto_follows_the_probe(tmp_path, tokenizer, monkeypatch):
    """Where the probe measures bf16 slower than fp32 (an AVX2-only CPU), auto trains in fp32 with
    the backbone's attention, and says so in the model and the metrics."""
    import kalm.llm.device as device_mod
    from kalm.llm.train import training_attention

    speeds = {False: 100.0, True: 5.0}  # GFLOP/s: fp32, bf16
    monkeypatch.setattr(device_mod, "_PROBE_CACHE", {})
    monkeypatch.setattr(device_mod, "matmul_gflops", lambda device, bf16, **kw: speeds[bf16])
    assert GroundConfig().bf16 == "auto"
    cpu = torch.device("cpu")
    assert device_mod.resolve_bf16("auto", cpu)[0] is False
    assert training_attention(GroundConfig(), device=cpu) is None
    assert device_mod.resolve_bf16(True, cpu)[0] is True  # forced stays forced
    result = _train(tmp_path, tokenizer, "g", steps=2, device="cpu")
    meta = json.loads((tmp_path / "g" / "kalm_model.json").read_text())["train"]
    written = json.loads((tmp_path / "g" / "grounding_metrics.json").read_text())
    for record in (meta, written, result):
        assert record["dtype"] == "float32"
        assert record["bf16_probe"]["fp32_gflops"] == 100.0
        assert record["bf16_probe"]["bf16_gflops"] == 5.0
        assert record["bf16_probe"]["use_bf16"] is False
    monkeypatch.setattr(device_mod, "_PROBE_CACHE", {})
    speeds[True] = 400.0  # an AMX/AVX-512-BF16 CPU: bf16 autocast is chosen, eager attention
    assert device_mod.resolve_bf16("auto", cpu)[0] is True
    assert training_attention(GroundConfig(), device=cpu) == "eager"
    # the same process grounds again, now in bf16: accelerate's process-wide state, set to fp32
    # by the first run, must not refuse it
    _train(tmp_path, tokenizer, "g-bf16", steps=2, device="cpu")
    meta = json.loads((tmp_path / "g-bf16" / "kalm_model.json").read_text())["train"]
    assert meta["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="bf16 must be"):
        GroundConfig(bf16="sometimes")


def test_fit_budget_arithmetic():
    from kalm.llm.train import BUDGET_MARGIN, fit_budget

    cfg = GroundConfig(budget_minutes=1.0, eval_every=10, save_every=20)
    # 60 s: margin, 10 s elapsed, final eval 2 + 2 saves 1 + metrics 5 = 8 s -> per step
    # 0.5 + 2/10 + 0.5/20 = 0.725 s
    free = 60 * (1 - BUDGET_MARGIN) - 10 - 8
    total, plan = fit_budget(cfg, 4, 10.0, 0.5, 2.0, 0.5, 5.0)
    assert total == 4 + int(free // 0.725) and plan["steps"] == total
    assert plan["predicted_total_s"] <= 60
    capped, _ = fit_budget(GroundConfig(budget_minutes=1.0, steps=20), 4, 10.0, 0.5, 2.0, 0.5, 5)
    assert capped == 20  # `steps` bounds a budgeted run
    late, _ = fit_budget(cfg, 4, 70.0, 0.5, 2.0, 0.5, 5.0)
    assert late == 4  # over budget already: the schedule ends where it is


def _lrs(folder):
    return [json.loads(ln)["lr"] for ln in (folder / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["split"] == "train"]


def test_time_budget_fits_a_complete_schedule_inside_the_budget(tmp_path, tokenizer):
    import time

    budget = 0.1  # minutes, from the start of `ground`
    backbone = fresh(tokenizer)
    write_episodes(episodes(12), tmp_path / "real.h5")
    cfg = GroundConfig(data=str(tmp_path / "real.h5"), out=str(tmp_path / "g"), batch_size=4,
                       paraphrase_suite="", metrics_episodes=2, explain_episodes=1,
                       adapter=AdapterConfig(lora_r=4), budget_minutes=budget, bf16=False,
                       warmup_steps=7, eval_every=20, save_every=20, lr=1e-3, min_lr_ratio=0.1)
    t = time.time()
    result = ground(cfg, backbone=backbone, progress=False)
    wall = time.time() - t
    meta = json.loads((tmp_path / "g" / "kalm_model.json").read_text())["train"]
    # half the budget again of slack: the suite runs two workers on two cores, so a step can
    # take longer than the probe measured; a run that ignored its budget would take minutes
    assert wall <= 60 * budget * 1.5, (wall, result["budget"])
    assert result["steps"] == meta["steps_done"] == meta["steps"] == result["budget"]["steps"]
    assert meta["steps"] > 3  # the probe steps, then what the budget buys
    lrs = _lrs(tmp_path / "g")
    assert len(lrs) == meta["steps"]
    assert lrs[-1] == pytest.approx(0.1 * 1e-3, rel=1e-9)  # decayed to min_lr: complete
    assert lrs[6] == pytest.approx(1e-3)  # the peak, after 7 warmup steps
    assert all(a >= b for a, b in itertools.pairwise(lrs[6:]))  # then cosine decay


def test_time_budget_schedule_survives_a_resume(tmp_path, tokenizer, monkeypatch):
    """The fitted length is stored in the checkpoint: a resumed run keeps it (no refit) and ends
    where an uninterrupted run with that length ends."""
    import kalm.llm.train as train_mod

    real_fit = train_mod.fit_budget

    def fit_ten(cfg, step, *args):
        return 10, {**real_fit(cfg, step, *args)[1], "steps": 10}

    monkeypatch.setattr(train_mod, "fit_budget", fit_ten)
    kw = {"steps": None, "budget_minutes": 5.0, "bf16": False, "warmup_steps": 3,
          "save_every": 2, "eval_every": 50, "lr": 1e-2}
    _train(tmp_path, tokenizer, "straight", **kw)
    _train(tmp_path, tokenizer, "split", stop_at_step=5, **kw)
    (tmp_path / "split" / "kalm_model.json").unlink()

    def no_refit(*args):
        raise AssertionError("a resumed run fitted its schedule again")

    monkeypatch.setattr(train_mod, "fit_budget", no_refit)
    result = _train(tmp_path, tokenizer, "split", resume=True, **kw)
    assert result["steps"] == 10
    meta = json.loads((tmp_path / "split" / "kalm_model.json").read_text())["train"]
    assert meta["steps"] == meta["steps_done"] == 10 and meta["budget"]["steps"] == 10
    assert _lrs(tmp_path / "split") == pytest.approx(_lrs(tmp_path / "straight"), rel=1e-12)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    b = load_file(str(tmp_path / "split" / "weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_a_budget_is_refitted_shorter_as_steps_slow_down(tmp_path, tokenizer, monkeypatch):
    """Steps get slower as a CPU run goes on, so the probe's fit overshoots: every validation
    refits the length to the recent step time. A shorter refit is adopted (the schedule then
    ends at the new length, at min_lr), a longer one is not (the learning rate never rises)."""
    import kalm.llm.train as train_mod

    real_fit = train_mod.fit_budget
    lengths = iter([30, 40, 25, 9])  # probe, then refits at steps 10 (longer), 20 (shorter)
    seen = []

    def fit(cfg, step, elapsed, step_s, *costs):
        n = next(lengths)
        seen.append((step, n))
        return n, {**real_fit(cfg, step, elapsed, step_s, *costs)[1], "steps": n}

    monkeypatch.setattr(train_mod, "fit_budget", fit)
    result = _train(tmp_path, tokenizer, "g", steps=None, budget_minutes=5.0, bf16=False,
                    warmup_steps=3, eval_every=10, save_every=50, lr=1e-2, min_lr_ratio=0.1)
    assert seen == [(4, 30), (10, 40), (20, 25)]  # none at the last step (25)
    assert result["steps"] == 25 and result["budget"]["steps"] == 25
    assert [(r["at_step"], r["steps"]) for r in result["budget"]["refits"]] == [(20, 25)]
    assert result["budget"]["fitted_at_step"] == 4  # the probe's numbers are kept
    meta = json.loads((tmp_path / "g" / "kalm_model.json").read_text())["train"]
    assert meta["steps"] == meta["steps_done"] == 25 and meta["budget"]["steps"] == 25
    lrs = _lrs(tmp_path / "g")
    assert len(lrs) == 25 and all(a >= b for a, b in itertools.pairwise(lrs[2:]))
    assert lrs[-1] == pytest.approx(1e-3, rel=1e-9)  # the shorter schedule completes


def test_new_layers_learn_at_head_lr_scale_times_the_adapter_rate(tmp_path, tokenizer):
    """Two optimizer groups: the LoRA adapter at lr, the new embeddings and heads at
    lr * head_lr_scale, both scaled by the same schedule."""
    import torch

    from kalm.llm.train import param_groups

    write_episodes(episodes(12), tmp_path / "real.h5")
    cfg = GroundConfig(data=str(tmp_path / "real.h5"), out=str(tmp_path / "g"), batch_size=4,
                       paraphrase_suite="", metrics_episodes=2, explain_episodes=1,
                       adapter=AdapterConfig(lora_r=4), steps=4, bf16=False, warmup_steps=2,
                       eval_every=10, save_every=4, lr=1e-3, head_lr_scale=10.0)
    ground(cfg, backbone=fresh(tokenizer), progress=False)
    ckpt = sorted((tmp_path / "g" / "checkpoints").glob("step-*"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert set(groups) == {"backbone", "new layers"}
    assert groups["new layers"]["lr"] == pytest.approx(10 * groups["backbone"]["lr"])
    assert groups["backbone"]["initial_lr"] == pytest.approx(1e-3)

    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 1)})
    model["backbone"].weight.requires_grad_(False)
    split = param_groups(model, 0.1, 3.0)
    assert [len(g["params"]) for g in split] == [1, 2] and split[1]["lr"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="head_lr_scale"):
        GroundConfig(head_lr_scale=0.0)


def test_delta_state_head_predicts_and_scores_in_the_change_s_own_units(tokenizer):
    """A zero head output means 'the average change'; the error of a prediction is measured in
    units of the change's own spread, not of the state's."""
    model = build_rollout_model(fresh(tokenizer), SPEC, ModelConfig(state_head="delta"),
                                AdapterConfig(lora_r=4))
    model.set_normalizer(torch.full((10,), 1.0), torch.full((10,), 2.0))
    model.set_delta_normalizer(torch.full((10,), 0.1), torch.full((10,), 0.5))
    with torch.no_grad():
        model.state_head.weight.zero_()
        model.state_head.bias.zero_()
    h = torch.zeros(1, model.backbone.config.hidden_size)
    base = torch.full((1, 10), 3.0)
    z = model.predict_state(h, base)
    torch.testing.assert_close(model.denormalize(z), torch.full((1, 10), 3.1))
    # off by 0.5 m in every coordinate: one delta-std (0.5), i.e. squared error 1.0; the
    # residual head scores the same miss in state-std units (2.0): 0.0625
    target = torch.full((1, 10), 3.6)
    torch.testing.assert_close(model.state_error(z, target), torch.tensor([1.0]))
    residual = build_rollout_model(fresh(tokenizer), SPEC, ModelConfig(), AdapterConfig(lora_r=4))
    residual.set_normalizer(torch.full((10,), 1.0), torch.full((10,), 2.0))
    z_res = residual.normalize(torch.full((1, 10), 3.1))
    torch.testing.assert_close(residual.state_error(z_res, target), torch.tensor([0.0625]))


def test_delta_state_head_saves_its_statistics(tmp_path, tokenizer):
    """The change statistics of the training split travel with the saved model."""
    from kalm.llm.train import delta_statistics, split_episodes

    _train(tmp_path, tokenizer, "d", steps=2, model=ModelConfig(state_head="delta"))
    model, _ = load_rollout_model(tmp_path / "d", backbone=fresh(tokenizer))
    assert model.config.state_head == "delta"
    data = episodes(12)
    train_idx, _ = split_episodes(len(data), GroundConfig().val_fraction, 0)
    mean, std = delta_statistics(data.subset(train_idx))
    torch.testing.assert_close(model.delta_mean, torch.from_numpy(mean).float())
    torch.testing.assert_close(model.delta_std, torch.from_numpy(std).float())


def test_mlp_layers_make_the_new_layers_nonlinear_and_survive_save_load(tmp_path, tokenizer):
    """`mlp_layers: 1` puts a hidden GELU layer in the state embedding and both heads: the
    embedding of a sum of states is no longer the sum of their embeddings (it is for the linear
    layer), the extra weights learn in the new layers' group, and the model reloads as such."""
    from kalm.llm.train import param_groups

    s1, s2 = torch.rand(3, 10), torch.rand(3, 10)
    for depth, linear in ((0, True), (1, False)):
        model = build_rollout_model(fresh(tokenizer), SPEC, ModelConfig(mlp_layers=depth),
                                    AdapterConfig(lora_r=4))
        with torch.no_grad():
            e = model.embed_states
            gap = float((e(s1 + s2) - e(s1) - e(s2) + e(torch.zeros(3, 10))).abs().max())
            scale = float(e(s1).abs().max())
        assert (gap < 1e-4 * scale) == linear, (depth, gap, scale)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"state_embed.0.weight", "state_embed.2.weight", "state_head.2.weight",
            "action_head.0.weight"} <= names
    new = next(g for g in param_groups(model, 1e-3, 10.0) if g["name"] == "new layers")
    assert sum(p.numel() for p in new["params"]) == sum(
        p.numel() for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("backbone."))

    _train(tmp_path, tokenizer, "mlp", steps=2, lr=5e-2, model=ModelConfig(mlp_layers=1))
    a, meta = load_rollout_model(tmp_path / "mlp", backbone=fresh(tokenizer))
    b, _ = load_rollout_model(tmp_path / "mlp", backbone=fresh(tokenizer),
                              config=ModelConfig(mlp_layers=1))
    assert meta["model"]["mlp_layers"] == 1
    untrained = build_rollout_model(fresh(tokenizer), SPEC, ModelConfig(mlp_layers=1),
                                    AdapterConfig(lora_r=4))
    untrained.set_normalizer(a.state_mean, a.state_std)
    with torch.no_grad():
        torch.testing.assert_close(a.embed_states(s1), b.embed_states(s1))
        assert not torch.allclose(a.embed_states(s1), untrained.embed_states(s1))
    with pytest.raises(CheckpointMismatch, match="mlp_layers"):
        load_rollout_model(tmp_path / "mlp", backbone=fresh(tokenizer), config=ModelConfig())
    with pytest.raises(ValueError, match="mlp_layers"):
        ModelConfig(mlp_layers=-1)


def test_metrics_cost_is_counted_in_padded_positions():
    """Passes sorted by length, each padded to its longest: what the metrics' passes compute."""
    from kalm.llm.train import padded_tokens

    assert padded_tokens([3] * 16, 16) == 48
    assert padded_tokens([3] * 15 + [200], 16) == 45 + 200  # a long rollout: its own pass
    # 2,000 one-step prompts: many to a pass (4096 positions), no padding
    assert padded_tokens([3] * 2000, 16) == 6000
    assert padded_tokens([200, 3] * 16, 16) == 16 * 200 + 16 * 3  # sorted: no padding
    assert padded_tokens([5, 7], 1) == 14  # one pass: short rows go many to a pass
