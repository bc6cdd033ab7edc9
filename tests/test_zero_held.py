"""Holding coordinates at zero that the grounding data never moved off zero (an absent entity's
block): the statistic by hand, the decoder with and without it, saving, and old models."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData
from kalm.llm.backbone import tiny_backbone
from kalm.llm.generate import imagine_batch
from kalm.llm.model import ModelConfig, RolloutSpec
from kalm.llm.prompts import PromptBuilder
from kalm.llm.saving import (
    AdapterConfig,
    build_rollout_model,
    load_rollout_model,
    model_meta,
    save_rollout_model,
)
from kalm.llm.train import zero_held_statistics

OBS, ACT = 5, 2
SPEC = RolloutSpec("toy", OBS, "continuous", ACT, action_low=(-1.0,) * ACT,
                   action_high=(1.0,) * ACT)
GOAL = {"kind": "reach"}


def _episode(rows):
    obs = np.asarray(rows, np.float32)
    k = len(obs) - 1
    return Episode(obs, np.zeros((k, ACT), np.float32), np.zeros(k, np.float32),
                   np.zeros(k, bool), "go", GOAL)


def test_zero_held_by_hand():
    # dim 0 never starts at zero (no evidence); dim 1 starts at zero and stays there in both
    # episodes; dim 2 starts at zero in the first and leaves it; dim 3 starts at zero only in
    # the second and stays; dim 4 is zero at the start of the first, non-zero in the second
    # episode's start and moves there (moving when present says nothing about when absent)
    a = _episode([[1, 0, 0, 5, 0], [1, 0, 0.5, 5, 0], [1, 0, 0.5, 5, 0]])
    b = _episode([[2, 0, 3, 0, 1], [2, 0, 3, 0, 2]])
    data = EpisodeData.from_episodes([a, b], EnvSpecInfo("toy", OBS, "continuous", ACT))
    assert zero_held_statistics(data).tolist() == [False, True, False, True, True]
    # the padding after a short episode is not a step of it
    assert zero_held_statistics(data.subset([1])).tolist() == [False, True, False, True,
                                                               False]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_backbone().tokenizer


def _model(tokenizer):
    torch.manual_seed(0)
    m = build_rollout_model(tiny_backbone(tokenizer=tokenizer), SPEC, ModelConfig(),
                            AdapterConfig(mode="full"))
    m.set_normalizer(torch.zeros(OBS), torch.full((OBS,), 0.3))
    with torch.no_grad():
        m.state_head.bias.normal_(std=3.0)  # moves every coordinate, zeros included
    return m.eval()


def _imagine(model, hold):
    s0 = np.array([[0.1, 0.2, 0.0, 0.0, 0.3], [0.1, 0.2, 0.0, 0.4, 0.0]], np.float32)
    return imagine_batch(model, PromptBuilder(model.tokenizer), ["go", "go too"], s0,
                         [GOAL] * 2, [5, 5], lambda *a: False, hold_zeros=hold)


def test_imagination_holds_zeros_only_where_the_start_has_them(tokenizer):
    model = _model(tokenizer)
    model.set_zero_held(torch.tensor([False, False, True, True, True]))
    free, held = _imagine(model, False), _imagine(model, True)
    assert all(np.abs(r.observations[1:, 2:]).min() > 0 for r in free)  # the case guarded
    first, second = held
    # row 0 starts with dims 2, 3 at zero: held; dim 4 starts at 0.3: free
    assert np.all(first.observations[1:, 2:4] == 0) and np.all(first.observations[1:, 4] != 0)
    # row 1 starts with dims 2, 4 at zero: held; dim 3 starts at 0.4: free
    assert np.all(second.observations[1:, [2, 4]] == 0)
    assert np.all(second.observations[1:, 3] != 0)
    # coordinates outside the mask are never touched
    model.set_zero_held(torch.zeros(OBS, dtype=torch.bool))
    for x, y in zip(free, _imagine(model, True), strict=True):
        assert x.observations.tolist() == y.observations.tolist()
    with pytest.raises(ValueError, match="zero_held mask has shape"):
        model.set_zero_held(torch.zeros(OBS + 1, dtype=torch.bool))


def test_zero_held_survives_saving_and_old_models_hold_nothing(tmp_path, tokenizer):
    model = _model(tokenizer)
    mask = torch.tensor([False, True, False, True, True])
    model.set_zero_held(mask)
    meta = model_meta(model, tiny_backbone(tokenizer=tokenizer), AdapterConfig(mode="full"))
    save_rollout_model(model, tmp_path / "m", meta)
    back, _ = load_rollout_model(tmp_path / "m", backbone=tiny_backbone(tokenizer=tokenizer))
    assert back.zero_held.tolist() == mask.tolist()
    # a model saved before the mask existed: its weights file has no such key
    weights = tmp_path / "m" / "weights.safetensors"
    state = load_file(str(weights))
    del state["zero_held"]
    save_file(state, str(weights))
    old, _ = load_rollout_model(tmp_path / "m", backbone=tiny_backbone(tokenizer=tokenizer))
    assert not old.zero_held.any()
