"""Simulator-free signals for judging imagined rollouts, on the tiny model and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kalm.data.episodes import Episode
from kalm.envs.registry import get_env
from kalm.imagination.signals import (
    action_logprob,
    compute_signals,
    dynamics_error,
    format_rows,
    real_threshold,
    signal_table,
)
from kalm.llm.backbone import tiny_backbone
from kalm.llm.batching import collate
from kalm.llm.model import ModelConfig
from kalm.llm.prompts import PromptBuilder
from kalm.llm.saving import AdapterConfig, build_rollout_model
from kalm.llm.train import clevr_spec
from test_dynamics import GOAL, VotingDynamics

CLEVR = get_env("clevr")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_rollout_model(tiny_backbone(), clevr_spec(), ModelConfig(),
                            AdapterConfig(mode="full"))
    m.set_normalizer(torch.zeros(10), torch.full((10,), 0.3))
    return m


@pytest.fixture(scope="module")
def builder(model):
    return PromptBuilder(model.tokenizer)


def _episode(s0: np.ndarray, actions, states=None, **extras) -> Episode:
    actions = np.asarray(actions, np.int64)
    obs = (np.repeat(s0[None], len(actions) + 1, axis=0) if states is None
           else np.asarray(states, np.float32))
    n = len(actions)
    return Episode(obs.astype(np.float32), actions, np.zeros(n, np.float32), np.zeros(n, bool),
                   "Put red left of blue.", dict(GOAL), extras=dict(extras))


def _first_action_logits(model, builder, s0):
    seq = builder.rollout("Put red left of blue.", np.stack([s0, s0]), np.array([0]))
    b = collate([seq], builder.pad_id, 10, "discrete", 40)
    with torch.no_grad():
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        pos = b["action_tgt_mask"][0].nonzero()[0, 0]
        return torch.log_softmax(model.predict_action(h[0, pos]), -1).numpy()


def test_action_logprob_is_the_teacher_forced_likelihood_and_batch_independent(model, builder):
    rng = np.random.default_rng(0)
    s0 = rng.uniform(-0.4, 0.4, 10).astype(np.float32)
    logp = _first_action_logits(model, builder, s0)
    best, worst = int(logp.argmax()), int(logp.argmin())
    one_step = [_episode(s0, [best]), _episode(s0, [worst])]
    got = action_logprob(model, builder, one_step)
    assert got == pytest.approx([logp[best], logp[worst]], abs=1e-4)
    assert got[0] > got[1]
    # longer episodes of different lengths: batched equals one at a time
    eps = [_episode(rng.uniform(-0.4, 0.4, 10).astype(np.float32),
                    rng.integers(40, size=int(n))) for n in (1, 4, 7, 2)] * 5
    batched = action_logprob(model, builder, eps)
    single = np.concatenate([action_logprob(model, builder, [e]) for e in eps[:4]])
    assert batched[:4] == pytest.approx(single, abs=1e-4)
    assert batched[4:8] == pytest.approx(single, abs=1e-4)


def test_dynamics_error_is_zero_where_the_model_agrees_with_itself(model, builder):
    s0 = np.random.default_rng(1).uniform(-0.4, 0.4, 10).astype(np.float32)
    seq = builder.dynamics(s0, 3, s0)
    b = collate([seq], builder.pad_id, 10, "discrete", 40)
    with torch.no_grad():
        x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
        h, _ = model.hidden(x, attention_mask=b["attention_mask"])
        idx = b["state_tgt_mask"].nonzero(as_tuple=True)
        own = model.denormalize(model.predict_state(h[idx], b["state_base"][idx]))[0].numpy()
    agrees = _episode(s0, [3], np.stack([s0, own]))
    contradicts = _episode(s0, [3], np.stack([s0, own + 0.2]))
    err = dynamics_error(model, builder, [agrees, contradicts])
    assert err[0] == pytest.approx(0.0, abs=1e-6) and err[1] > 0.1


def test_signal_table_counts_against_the_replay_on_hand_made_rollouts(expert_episode):
    real = expert_episode
    s0 = real.observations[0]
    # the expert's actions reach the goal; staying put ([0] pushes another ball) does not
    right = dict(self_success=True, replay_success=True)
    wrong = dict(self_success=True, replay_success=False)
    missed = dict(self_success=False, replay_success=True)
    eps = [_episode(s0, real.actions, **right), _episode(s0, [8 * 2 + 0], **wrong),
           _episode(s0, real.actions, **missed), _episode(s0, [8 * 2 + 0], **wrong)]
    signals = compute_signals(eps, CLEVR, VotingDynamics(GOAL, members=5, agree=2))
    rows = {r["signal"]: r for r in signal_table(eps, signals)}
    paper = rows["the LLM's own label (paper)"]
    assert (paper["kept"], paper["true_positives"], paper["positives"]) == (3, 1, 2)
    assert paper["precision"] == pytest.approx(1 / 3) and paper["recall"] == pytest.approx(0.5)
    mean = rows["ensemble, mean rollout"]  # the simulator as the mean: exactly the replay
    assert (mean["kept"], mean["precision"], mean["recall"]) == (2, 1.0, 1.0)
    # only 2 of 5 members reach the goal: the majority and unanimity verdicts keep nothing
    assert rows["ensemble, mean and >= 3 of 5 members"]["kept"] == 0
    assert rows["ensemble, mean and >= 5 of 5 members"]["kept"] == 0
    assert "no implausible transition" in rows
    lines = format_rows("rephrase", list(rows.values()))
    assert lines[0].startswith("| rephrase | the LLM's own label (paper) | 3 of 4 (75.0%) | 33.3%")


def test_real_threshold_needs_finite_scores():
    assert real_threshold(np.arange(11.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no finite score"):
        real_threshold(np.array([np.nan]))
