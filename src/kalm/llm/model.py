"""The rollout model: a causal-LM backbone plus numeric state/action embeddings and heads.

One class serves training, generation and the LLM-as-policy baseline (defect P1 of the published
code was a different class for each). Numbers enter the sequence at single positions: a state
embedding replaces the token embedding at a state slot, an action embedding at an action slot.
Heads read the backbone's final hidden states; the backbone's own LM head stays for text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import kalm.llm  # noqa: F401  (offline hub)

if TYPE_CHECKING:
    from kalm.envs.base import EnvDefinition


@dataclass(frozen=True)
class RolloutSpec:
    """Sizes and bounds of an environment, as the rollout model needs them."""

    env: str
    obs_dim: int
    action_type: str  # "discrete" | "continuous"
    action_dim: int
    state_low: tuple[float, ...] | None = None  # reachable box, for clamping predictions
    state_high: tuple[float, ...] | None = None

    @classmethod
    def for_env(cls, definition: EnvDefinition, env: str | None = None) -> RolloutSpec:
        """The spec of an env definition; `env` is the string that finds it again later."""
        s = definition.episode_spec(env)
        return cls(s.env, s.obs_dim, s.action_type, s.action_dim, tuple(definition.state_low),
                   tuple(definition.state_high))

    def __post_init__(self) -> None:
        if self.action_type not in ("discrete", "continuous"):
            raise ValueError(f"action_type must be discrete or continuous, not {self.action_type}")
        for name in ("state_low", "state_high"):
            v = getattr(self, name)
            if v is not None and len(v) != self.obs_dim:
                raise ValueError(f"{name} has {len(v)} values, expected obs_dim={self.obs_dim}")


STATE_HEADS = ("absolute", "residual", "delta")


@dataclass
class ModelConfig:
    """How states are represented (compared in docs/results.md)."""

    # "absolute": predict s'; "residual": predict s' - s in state-normalised units; "delta":
    # predict s' - s standardised by the training data's own per-coordinate change statistics
    # and fit it in those units (a push moves one ball a few cm: in state-normalised units the
    # change, and so the state loss, is tiny next to the action loss)
    state_head: str = "residual"
    clamp_states: bool = True  # clamp generated states to the spec's reachable box
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state_head not in STATE_HEADS:
            raise ValueError(f"state_head must be one of {', '.join(STATE_HEADS)}, "
                             f"not {self.state_head!r}")


class RolloutModel(nn.Module):
    """Backbone + state/action embeddings + state/action heads (+ the backbone's LM head)."""

    def __init__(self, backbone: nn.Module, spec: RolloutSpec, config: ModelConfig | None = None):
        super().__init__()
        self.spec = spec
        self.config = config or ModelConfig()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        tok = backbone.get_input_embeddings()
        self.state_embed = nn.Linear(spec.obs_dim, hidden)
        if spec.action_type == "discrete":
            self.action_embed: nn.Module = nn.Embedding(spec.action_dim, hidden)
        else:
            self.action_embed = nn.Linear(spec.action_dim, hidden)
        self.state_head = nn.Linear(hidden, spec.obs_dim)
        n_out = spec.action_dim
        self.action_head = nn.Linear(hidden, n_out)
        # start the new inputs at the scale of the token embeddings, the heads small
        scale = float(tok.weight.detach().float().std())
        with torch.no_grad():
            nn.init.normal_(self.state_embed.weight, std=scale / max(1.0, spec.obs_dim**0.5))
            nn.init.zeros_(self.state_embed.bias)
            if isinstance(self.action_embed, nn.Embedding):
                nn.init.normal_(self.action_embed.weight, std=scale)
            else:
                nn.init.normal_(self.action_embed.weight, std=scale)
                nn.init.zeros_(self.action_embed.bias)
            nn.init.normal_(self.state_head.weight, std=0.02 / hidden**0.5)
            nn.init.zeros_(self.state_head.bias)
            nn.init.normal_(self.action_head.weight, std=0.02)
            nn.init.zeros_(self.action_head.bias)
        self.register_buffer("state_mean", torch.zeros(spec.obs_dim))
        self.register_buffer("state_std", torch.ones(spec.obs_dim))
        self.register_buffer("delta_mean", torch.zeros(spec.obs_dim))  # used by "delta" only
        self.register_buffer("delta_std", torch.ones(spec.obs_dim))
        low = spec.state_low if spec.state_low is not None else [-float("inf")] * spec.obs_dim
        high = spec.state_high if spec.state_high is not None else [float("inf")] * spec.obs_dim
        self.register_buffer("state_low", torch.tensor(low, dtype=torch.float32))
        self.register_buffer("state_high", torch.tensor(high, dtype=torch.float32))

    # ------------------------------------------------------------------ pieces
    @property
    def body(self) -> nn.Module:
        """The transformer without its LM head (LoRA layers live inside it)."""
        return _unwrap(self.backbone).base_model

    @property
    def lm_head(self) -> nn.Module:
        return _unwrap(self.backbone).get_output_embeddings()

    def set_normalizer(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def set_delta_normalizer(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.delta_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.delta_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def normalize(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.state_mean) / self.state_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.state_std + self.state_mean

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return _unwrap(self.backbone).get_input_embeddings()(ids)

    def embed_states(self, states: torch.Tensor) -> torch.Tensor:
        """Raw states (..., obs_dim) -> (..., hidden)."""
        return self.state_embed(self.normalize(states.float()))

    def embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        if self.spec.action_type == "discrete":
            return self.action_embed(actions.long())
        return self.action_embed(actions.float())

    def embed(
        self,
        input_ids: torch.Tensor,
        state_in_mask: torch.Tensor,
        state_in: torch.Tensor,
        action_in_mask: torch.Tensor,
        action_in: torch.Tensor,
    ) -> torch.Tensor:
        """Token embeddings with numbers placed at their slots, (B, L, hidden)."""
        x = self.embed_tokens(input_ids)
        s = self.embed_states(state_in).to(x.dtype)
        a = self.embed_actions(action_in).to(x.dtype)
        x = torch.where(state_in_mask[..., None], s, x)
        return torch.where(action_in_mask[..., None], a, x)

    def hidden(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Final hidden states (B, L, hidden) and the updated KV cache."""
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                        position_ids=position_ids, past_key_values=past_key_values,
                        use_cache=use_cache)
        return out.last_hidden_state, (out.past_key_values if use_cache else None)

    def predict_state(self, h: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """Normalised next-state prediction; `base` (raw) is the state it starts from."""
        z = self.state_head(h.float())
        if self.config.state_head == "absolute":
            return z
        if base is None:
            raise ValueError(f"a {self.config.state_head} state head needs the base state")
        if self.config.state_head == "delta":
            z = (self.delta_mean + z * self.delta_std) / self.state_std
        return z + self.normalize(base.float())

    def state_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-position squared error of normalised predictions against raw targets, in the
        units the state head is fitted in (the change's own scale for "delta")."""
        diff = pred - self.normalize(target.float())
        if self.config.state_head == "delta":
            diff = diff * (self.state_std / self.delta_std)
        return (diff ** 2).mean(-1)

    def predict_action(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (discrete) or an action vector (continuous)."""
        return self.action_head(h.float())

    def clamp(self, states: torch.Tensor) -> torch.Tensor:
        if not self.config.clamp_states:
            return states
        return torch.maximum(torch.minimum(states, self.state_high), self.state_low)

    def describe(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "model": asdict(self.config)}


def _unwrap(backbone: nn.Module) -> nn.Module:
    """The transformers model under an optional peft wrapper."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) else backbone
