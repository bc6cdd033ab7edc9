"""Other causal-LM families work through the same code: tiny GPT-2 and Qwen2 built in code."""

import numpy as np
import pytest
import torch

from kalm.llm.backbone import Backbone, backbone_identity, tiny_backbone
from kalm.llm.batching import collate
from kalm.llm.generate import imagine_batch
from kalm.llm.losses import grounding_losses
from kalm.llm.model import ModelConfig
from kalm.llm.prompts import PromptBuilder
from kalm.llm.saving import AdapterConfig, build_rollout_model
from kalm.llm.train import clevr_spec

GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}



@pytest.fixture(scope="module")
def tokenizer():
    return tiny_backbone().tokenizer


def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=512,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(cfg)


def _qwen2(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)
    return Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("make", [_gpt2, _qwen2], ids=["gpt2", "qwen2"])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_family_trains_and_decodes_with_cache(tokenizer, make, mode):
    torch.manual_seed(0)
    lm = make(tokenizer)
    backbone = Backbone(lm, tokenizer, lm.config.model_type, backbone_identity(lm.config))
    model = build_rollout_model(backbone, clevr_spec(), ModelConfig(), AdapterConfig(
        mode=mode, lora_r=4))
    lora = [n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert bool(lora) == (mode == "lora")
    builder = PromptBuilder(tokenizer)
    obs = np.random.default_rng(0).uniform(-0.4, 0.4, (3, 10)).astype(np.float32)
    seqs = [builder.rollout("Put red left of blue", obs, np.array([2, 5])),
            builder.explanation("Put red left of blue", obs, np.array([2, 5]))]
    batch = collate(seqs, builder.pad_id, 10, "discrete", 40)
    loss = grounding_losses(model, batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    texts = ["Put red left of blue", "A longer instruction about the green and cyan balls"]
    kw = {"goals": [GOAL] * 2, "max_steps": [6, 6],
          "is_success": lambda g, s, p, a: False}
    a = imagine_batch(model, builder, texts, obs[:2], use_cache=True, **kw)
    b = imagine_batch(model, builder, texts, obs[:2], use_cache=False, **kw)
    for x, y in zip(a, b, strict=True):
        assert x.actions.tolist() == y.actions.tolist()
        np.testing.assert_allclose(x.observations, y.observations, atol=1e-4)
