"""Building a rollout model (LoRA or full fine-tuning) and saving/loading it.

A saved model is a folder with `kalm_model.json` (backbone identity, env spec, representation
including the action head kind, adapter) and `weights.safetensors` (every trained parameter:
LoRA and the new layers, or the whole model for full fine-tuning, plus the state normaliser).
The JSON is written last, so a folder without it is incomplete.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import kalm
from kalm.llm.backbone import Backbone, load_backbone
from kalm.llm.model import ModelConfig, RolloutModel, RolloutSpec

FORMAT = "kalm-rollout-model-1"
META = "kalm_model.json"
WEIGHTS = "weights.safetensors"
_BUFFERS = ("state_mean", "state_std", "state_low", "state_high")
_DELTA_BUFFERS = ("delta_mean", "delta_std")  # saved by "delta" state heads only
# saved always, optional on load: models saved before it was measured hold nothing
_OPTIONAL_BUFFERS = ("zero_held",)


def _buffers(model: RolloutModel) -> tuple[str, ...]:
    return _BUFFERS + (_DELTA_BUFFERS if model.config.state_head == "delta" else ())


class CheckpointMismatch(ValueError):
    """A saved model or checkpoint made for another backbone or environment."""


@dataclass
class AdapterConfig:
    mode: str = "lora"  # "lora" | "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        if self.mode not in ("lora", "full"):
            raise ValueError(f"mode must be 'lora' or 'full', not {self.mode!r}")
        if self.mode == "lora" and self.lora_r < 1:
            raise ValueError("lora_r must be at least 1")


def build_rollout_model(backbone: Backbone, spec: RolloutSpec, model_cfg: ModelConfig,
                        adapter: AdapterConfig) -> RolloutModel:
    """Wrap the backbone (LoRA through peft, or all weights trainable) and add the new layers."""
    lm = backbone.model
    if hasattr(lm, "peft_config") or getattr(backbone, "_used", False):
        raise ValueError("this backbone object already carries a rollout model; load a fresh "
                         "one for each model (LoRA layers are injected in place)")
    backbone._used = True
    if adapter.mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = _existing_targets(lm, adapter.lora_targets)
        lm = get_peft_model(lm, LoraConfig(r=adapter.lora_r, lora_alpha=adapter.lora_alpha,
                                           lora_dropout=0.0, bias="none",
                                           target_modules=targets))
    else:
        for p in lm.parameters():
            p.requires_grad_(True)
    model = RolloutModel(lm, spec, model_cfg)
    model.tokenizer = backbone.tokenizer  # travels with the model: prompts need it
    for name in ("state_embed", "action_embed", "state_head", "action_head"):
        for p in getattr(model, name).parameters():
            p.requires_grad_(True)
    return model


def _existing_targets(lm: torch.nn.Module, targets: list[str]) -> list[str]:
    """LoRA target names present in this architecture (GPT-2 calls them c_attn, ...)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    found = [t for t in targets if t in names]
    if not found:
        fallback = [t for t in ("c_attn", "c_proj", "query_key_value", "qkv_proj") if t in names]
        if not fallback:
            raise ValueError(f"none of the LoRA targets {targets} exist in this backbone; "
                             "set lora_targets to its attention projection names")
        return fallback
    return found


def trainable_state(model: RolloutModel) -> dict[str, torch.Tensor]:
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
             if p.requires_grad}
    for b in _buffers(model) + _OPTIONAL_BUFFERS:
        state[b] = getattr(model, b).detach().cpu().contiguous()
    return state


def load_trainable_state(model: RolloutModel, state: dict[str, torch.Tensor],
                         where: str) -> None:
    buffers = set(_buffers(model))
    expected = {n for n, p in model.named_parameters() if p.requires_grad} | buffers
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - {n for n, _ in model.named_parameters()} - buffers
                        - set(_OPTIONAL_BUFFERS))
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{where}: weights do not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); was it saved with another adapter or backbone?")
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            target = own[name] if name in own else getattr(model, name)
            if target.shape != value.shape:
                raise CheckpointMismatch(f"{where}: '{name}' has shape {tuple(value.shape)}, "
                                         f"this model has {tuple(target.shape)}")
            target.copy_(value.to(target.dtype))


def model_meta(model: RolloutModel, backbone: Backbone, adapter: AdapterConfig,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"format": FORMAT, "kalm_version": kalm.__version__,
            "backbone": {"name": backbone.name, "identity": backbone.identity},
            "adapter": asdict(adapter), **model.describe(), **(extra or {})}


def save_rollout_model(model: RolloutModel, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write weights then metadata, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)  # incomplete until the JSON is back
    tmp = folder / f".{WEIGHTS}.tmp{os.getpid()}"
    state = trainable_state(model)
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    tmp_meta = folder / f".{META}.tmp{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp_meta.replace(folder / META)
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / META
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {META}; not a saved kalm model (or incomplete)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointMismatch(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def check_backbone(meta: dict[str, Any], backbone: Backbone, where: str) -> None:
    saved = meta["backbone"]["identity"]
    if saved.get("digest") != backbone.identity.get("digest"):
        raise CheckpointMismatch(
            f"{where} was made for backbone {meta['backbone']['name']!r} ({_fmt(saved)}), "
            f"but the backbone given is {backbone.name!r} ({_fmt(backbone.identity)})")


def check_spec(meta: dict[str, Any], spec: RolloutSpec, where: str) -> None:
    saved = meta["spec"]
    keys = ("env", "obs_dim", "action_type", "action_dim")
    if any(saved[k] != getattr(spec, k) for k in keys):
        raise CheckpointMismatch(
            f"{where} was made for env spec {({k: saved[k] for k in keys})}, not "
            f"{({k: getattr(spec, k) for k in keys})}")


# representation choices that change what the trained weights mean (models saved before a field
# existed have its default)
_REPRESENTATION = {"state_head": "residual", "action_head": "regression", "action_bins": 21,
                   "mlp_layers": 0}


def _representation(model: dict[str, Any], action_type: str) -> dict[str, Any]:
    rep = {k: model.get(k, default) for k, default in _REPRESENTATION.items()}
    if action_type != "continuous":  # discrete actions have one head whatever the setting
        del rep["action_head"], rep["action_bins"]
    elif rep["action_head"] != "bins":
        del rep["action_bins"]
    return rep


def check_model(meta: dict[str, Any], config: ModelConfig, where: str) -> None:
    """Refuse weights trained for another representation (e.g. a bin action head loaded as a
    regression head), naming both."""
    action_type = meta["spec"]["action_type"]
    saved = _representation(meta.get("model", {}), action_type)
    wanted = _representation(asdict(config), action_type)
    if saved != wanted:
        raise CheckpointMismatch(f"{where} was trained with {saved}, not {wanted}")


def _fmt(ident: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in ident.items() if k != "digest")


def model_from_meta(meta: dict[str, Any], backbone: Backbone | None, where: str
                    ) -> RolloutModel:
    """An untrained model of the saved architecture, on the stored backbone unless given."""
    if backbone is None:
        backbone = load_backbone(meta["backbone"]["name"])
    check_backbone(meta, backbone, where)
    spec = RolloutSpec(**{k: (tuple(v) if isinstance(v, list) else v)
                          for k, v in meta["spec"].items()})
    return build_rollout_model(backbone, spec, ModelConfig(**meta["model"]),
                               AdapterConfig(**meta["adapter"]))


def load_rollout_model(folder: str | Path, backbone: Backbone | None = None,
                       spec: RolloutSpec | None = None, config: ModelConfig | None = None
                       ) -> tuple[RolloutModel, dict[str, Any]]:
    """Rebuild a saved model on its backbone (loaded from the stored name unless given).

    `spec` / `config`: what the caller expects (CheckpointMismatch when the model was made for
    another env or representation). A model saved before specs carried action bounds takes
    them from `spec`, so its generated actions are clipped too."""
    folder = Path(folder)
    meta = read_meta(folder)
    if spec is not None:
        check_spec(meta, spec, str(folder))
        if meta["spec"].get("action_low") is None and spec.action_bounds:
            meta = {**meta, "spec": {**meta["spec"], "action_low": list(spec.action_low),
                                     "action_high": list(spec.action_high)}}
    if config is not None:
        check_model(meta, config, str(folder))
    model = model_from_meta(meta, backbone, str(folder))
    load_trainable_state(model, load_file(str(folder / WEIGHTS)), str(folder / WEIGHTS))
    model.eval()
    return model, meta
