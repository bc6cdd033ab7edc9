"""LLM-as-policy baseline (paper Fig. 5): the grounded model's action head acts directly.

a_t = argmax ActionHead(goal prompt, s_0, a_0, ..., s_t), with the real environment supplying
the states. The prompt is encoded once; each step extends the KV cache by the executed action
and the observed state. Works in any env the model was grounded on (continuous actions: the
regression head's vector or the bin head's argmax bins, clipped to the spec's bounds, as in
imagination). The model runs on `device` (auto = CUDA when present); the
observations are moved to it, the chosen action comes back to the host.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


class LLMPolicy:
    name = "llm"

    def __init__(self, model_dir: str | Path, model=None, device: str = "auto") -> None:
        from kalm.llm.device import resolve_device
        from kalm.llm.prompts import PromptBuilder
        from kalm.llm.saving import load_rollout_model

        self.model = model if model is not None else load_rollout_model(model_dir)[0]
        if model is None or device != "auto":  # a model handed in stays where it is
            self.model.to(resolve_device(device))
        self.model.eval()
        self.builder = PromptBuilder(self.model.tokenizer)
        self._decoder = None
        self._instruction = ""
        self._last_action: int | np.ndarray | None = None

    def begin(self, env, goal: Mapping[str, Any], instruction: str) -> None:
        shape = getattr(getattr(env, "observation_space", None), "shape", None)
        if shape and shape[0] != self.model.spec.obs_dim:
            raise ValueError(f"the grounded model expects {self.model.spec.obs_dim}-d "
                             f"observations (env {self.model.spec.env!r}); this env has "
                             f"{shape[0]}")
        self._instruction = instruction
        self._decoder = None
        self._last_action = None

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> int | np.ndarray:
        from kalm.llm.batching import collate
        from kalm.llm.device import model_device, to_device
        from kalm.llm.generate import _Decoder

        m = self.model
        device = model_device(m)
        host = np.asarray(obs, dtype=np.float32)
        state = torch.as_tensor(host)[None].to(device)
        if self._decoder is None:
            seq = self.builder.rollout_prompt(self._instruction)
            self.builder.state(seq, host)
            spec = m.spec
            b = to_device(collate([seq], self.builder.pad_id, spec.obs_dim, spec.action_type,
                                  spec.action_dim), device)
            x = m.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                        b["action_in"])
            self._decoder = _Decoder(m, x, b["attention_mask"], use_cache=True)
        else:
            self._decoder.feed(m.embed_actions(torch.as_tensor(
                np.asarray(self._last_action)[None]).to(device)))
            self._decoder.feed(m.embed_states(state))
        out = m.greedy_action(self._decoder.last)[0]
        action: int | np.ndarray
        if m.spec.action_type == "discrete":
            action = int(out)
        else:
            action = out.float().cpu().numpy().astype(np.float32)
        self._last_action = action
        return action


def evaluate_llm_policy(model_dir: str | Path, out: str | Path, levels: list[str],
                        episodes: int, seed: int, workers: int, env: str,
                        suite_file: str | None = None, split: str | None = None) -> list[Path]:
    """The grounded model acting in the real env on each level: OUT/eval-LEVEL.json per level
    (a level already evaluated is kept: resuming). On the CPU: the model decodes one episode
    at a time, so this is the slow row of a report. SPLIT: that half of each built-in suite,
    on its own scenes (`compare.scene_seed`)."""
    from kalm.data.suites import load_builtin_suite, resolve_suite
    from kalm.eval.compare import scene_seed
    from kalm.eval.evaluate import evaluate_policy
    from kalm.io import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for level in levels:
        path = out / f"eval-{level}.json"
        if not path.exists():
            suite = (resolve_suite(None, suite_file, env=env).by_level(level) if suite_file
                     else load_builtin_suite(level, env=env, split=split))
            res = evaluate_policy(functools.partial(LLMPolicy, str(model_dir), device="cpu"),
                                  suite, episodes,
                                  seed=scene_seed(seed, None if suite_file else split),
                                  workers=workers,
                                  name=f"LLM as policy ({model_dir})", env=env)
            write_json(res.to_json()["levels"][level], path)
        json.loads(path.read_text())  # a readable result, or fail here rather than in the report
        paths.append(path)
    return paths
