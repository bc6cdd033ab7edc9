"""The rollout model: a causal-LM backbone plus numeric state/action embeddings and heads.

One class serves training, generation and the LLM-as-policy baseline (defect P1 of the published
code was a different class for each). Numbers enter the sequence at single positions: a state
embedding replaces the token embedding at a state slot, an action embedding at an action slot.
Heads read the backbone's final hidden states; the backbone's own LM head stays for text.

Continuous actions have two heads (`ModelConfig.action_head`): `regression`, the paper's MSE on
the action vector, and `bins`, a softmax per action dimension over evenly spaced values between
the action bounds. Scripted arm data is saturated at the bounds and its gripper channel is nearly
binary; a regression head averages such targets towards the middle, a bin head can put its mass
on the bound itself, and it gives a likelihood (for sampling and the log-probability signal).
Generated continuous actions are clipped to the spec's bounds, so what is fed back and stored is
an action the env would execute unchanged.
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
    # continuous actions: the env's bounds (generated actions are clipped to them; the bin head
    # spans them). Absent in models saved before they existed.
    action_low: tuple[float, ...] | None = None
    action_high: tuple[float, ...] | None = None

    @classmethod
    def for_env(cls, definition: EnvDefinition, env: str | None = None) -> RolloutSpec:
        """The spec of an env definition; `env` is the string that finds it again later."""
        s = definition.episode_spec(env)
        low, high = definition.action_low, definition.action_high
        return cls(s.env, s.obs_dim, s.action_type, s.action_dim, tuple(definition.state_low),
                   tuple(definition.state_high), None if low is None else tuple(low),
                   None if high is None else tuple(high))

    def __post_init__(self) -> None:
        if self.action_type not in ("discrete", "continuous"):
            raise ValueError(f"action_type must be discrete or continuous, not {self.action_type}")
        for name in ("state_low", "state_high"):
            v = getattr(self, name)
            if v is not None and len(v) != self.obs_dim:
                raise ValueError(f"{name} has {len(v)} values, expected obs_dim={self.obs_dim}")
        if (self.action_low is None) != (self.action_high is None):
            raise ValueError("give both action_low and action_high, or neither")
        if self.action_low is not None:
            if self.action_type != "continuous":
                raise ValueError("action_low/action_high are for continuous actions")
            for name in ("action_low", "action_high"):
                if len(getattr(self, name)) != self.action_dim:
                    raise ValueError(f"{name} has {len(getattr(self, name))} values, expected "
                                     f"action_dim={self.action_dim}")
            if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
                raise ValueError("action_low must be below action_high in every dimension")

    @property
    def action_bounds(self) -> bool:
        return self.action_low is not None


ACTION_HEADS = ("regression", "bins")
# training std below this counts as a constant dimension (e.g. an entity block that is always
# zero in the training tasks): it is normalised with std 1, not divided by ~0
DEGENERATE_STD = 1e-6
# a coordinate this close to zero counts as zero for `zero_held` (simulator zeros are exact)
ZERO_TOL = 1e-6
STATE_HEADS = ("absolute", "residual", "delta")


@dataclass
class ModelConfig:
    """How states are represented (compared in docs/experiments/02-imagined-rollouts.md)."""

    # "absolute": predict s'; "residual": predict s' - s in state-normalised units; "delta":
    # predict s' - s standardised by the training data's own per-coordinate change statistics
    # and fit it in those units (a push moves one ball a few cm: in state-normalised units the
    # change, and so the state loss, is tiny next to the action loss)
    state_head: str = "residual"
    clamp_states: bool = True  # clamp generated states to the spec's reachable box
    extra: dict[str, Any] = field(default_factory=dict)
    # continuous actions only (discrete ones always get a softmax over the actions):
    # "regression" = the paper's MSE head; "bins" = per-dimension cross-entropy over
    # `action_bins` values spanning [action_low, action_high] (needs the spec's bounds)
    action_head: str = "regression"
    action_bins: int = 21
    # hidden layers (width: the backbone's hidden size, GELU) in the state embedding and the
    # state and action heads; 0 = one linear layer each, as the paper. A push's right action
    # depends on where balls are relative to each other, which a linear embedding leaves to
    # the frozen transformer to work out (docs/experiments/20-grounding-64-minutes.md)
    mlp_layers: int = 0

    def __post_init__(self) -> None:
        if self.state_head not in STATE_HEADS:
            raise ValueError(f"state_head must be one of {', '.join(STATE_HEADS)}, "
                             f"not {self.state_head!r}")
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"action_head must be one of {', '.join(ACTION_HEADS)}, not "
                             f"{self.action_head!r}")
        if self.action_bins < 2:
            raise ValueError(f"action_bins must be at least 2, got {self.action_bins}")
        if not isinstance(self.mlp_layers, int) or self.mlp_layers < 0:
            raise ValueError(f"mlp_layers must be a whole number >= 0, got {self.mlp_layers!r}")


class RolloutModel(nn.Module):
    """Backbone + state/action embeddings + state/action heads (+ the backbone's LM head)."""

    def __init__(self, backbone: nn.Module, spec: RolloutSpec, config: ModelConfig | None = None):
        super().__init__()
        self.spec = spec
        self.config = config or ModelConfig()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        tok = backbone.get_input_embeddings()
        depth = self.config.mlp_layers
        self.state_embed = _mlp(spec.obs_dim, hidden, depth, hidden)
        if spec.action_type == "discrete":
            self.action_embed: nn.Module = nn.Embedding(spec.action_dim, hidden)
        else:
            self.action_embed = nn.Linear(spec.action_dim, hidden)
        self.state_head = _mlp(hidden, spec.obs_dim, depth, hidden)
        self.bins = spec.action_type == "continuous" and self.config.action_head == "bins"
        if self.bins and not spec.action_bounds:
            raise ValueError("the bin action head needs the spec's action_low/action_high")
        n_out = spec.action_dim * (self.config.action_bins if self.bins else 1)
        self.action_head = _mlp(hidden, n_out, depth, hidden)
        # start the new inputs at the scale of the token embeddings, the heads small
        scale = float(tok.weight.detach().float().std())
        with torch.no_grad():
            embed_out = _last_linear(self.state_embed)
            nn.init.normal_(embed_out.weight, std=scale / max(1.0, embed_out.in_features**0.5))
            nn.init.zeros_(embed_out.bias)
            if isinstance(self.action_embed, nn.Embedding):
                nn.init.normal_(self.action_embed.weight, std=scale)
            else:
                nn.init.normal_(self.action_embed.weight, std=scale)
                nn.init.zeros_(self.action_embed.bias)
            nn.init.normal_(_last_linear(self.state_head).weight, std=0.02 / hidden**0.5)
            nn.init.zeros_(_last_linear(self.state_head).bias)
            nn.init.normal_(_last_linear(self.action_head).weight, std=0.02)
            nn.init.zeros_(_last_linear(self.action_head).bias)
        self.register_buffer("state_mean", torch.zeros(spec.obs_dim))
        self.register_buffer("state_std", torch.ones(spec.obs_dim))
        self.register_buffer("delta_mean", torch.zeros(spec.obs_dim))  # used by "delta" only
        self.register_buffer("delta_std", torch.ones(spec.obs_dim))
        low = spec.state_low if spec.state_low is not None else [-float("inf")] * spec.obs_dim
        high = spec.state_high if spec.state_high is not None else [float("inf")] * spec.obs_dim
        # coordinates that stay zero in every training episode starting with them at zero
        # (set by grounding; all False in models saved before it was measured)
        self.register_buffer("zero_held", torch.zeros(spec.obs_dim, dtype=torch.bool))
        self.register_buffer("state_low", torch.tensor(low, dtype=torch.float32))
        self.register_buffer("state_high", torch.tensor(high, dtype=torch.float32))
        # from the spec (saved in the metadata), so not part of the saved weights
        a_low = spec.action_low if spec.action_bounds else [-float("inf")] * spec.action_dim
        a_high = spec.action_high if spec.action_bounds else [float("inf")] * spec.action_dim
        self.register_buffer("action_low", torch.tensor(a_low, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("action_high", torch.tensor(a_high, dtype=torch.float32),
                             persistent=False)
        if self.bins:
            steps = torch.linspace(0.0, 1.0, self.config.action_bins)
            centres = self.action_low[:, None] + steps[None] * (
                self.action_high - self.action_low)[:, None]
        else:
            centres = torch.zeros(0)
        self.register_buffer("bin_centres", centres, persistent=False)  # (action_dim, bins)

    # ------------------------------------------------------------------ pieces
    @property
    def body(self) -> nn.Module:
        """The transformer without its LM head (LoRA layers live inside it)."""
        return _unwrap(self.backbone).base_model

    @property
    def lm_head(self) -> nn.Module:
        return _unwrap(self.backbone).get_output_embeddings()

    def set_normalizer(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Constant dimensions get std 1: dividing by a clamped ~0 std would multiply whatever
        differs there from the training constant (an unseen task's entity block in s0, a
        residual head's base state) by up to 1e6 on its way into the embedding and the loss."""
        std = torch.as_tensor(std, dtype=torch.float32)
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.where(std < DEGENERATE_STD, torch.ones_like(std), std))

    def set_zero_held(self, mask: torch.Tensor) -> None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != self.zero_held.shape:
            raise ValueError(f"zero_held mask has shape {tuple(mask.shape)}, expected "
                             f"{tuple(self.zero_held.shape)}")
        self.zero_held.copy_(mask)

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
        """Logits (..., n) for discrete actions; for continuous ones the action vector
        (..., action_dim) of the regression head or the bin logits (..., action_dim, bins)."""
        out = self.action_head(h.float())
        if self.bins:
            return out.unflatten(-1, (self.spec.action_dim, self.config.action_bins))
        return out

    def action_bin(self, actions: torch.Tensor) -> torch.Tensor:
        """The nearest bin per dimension of continuous actions (..., action_dim), as indices."""
        k = self.config.action_bins
        unit = (actions.float() - self.action_low) / (self.action_high - self.action_low)
        return (unit * (k - 1)).round().clamp(0, k - 1).long()

    def bin_values(self, index: torch.Tensor) -> torch.Tensor:
        """Bin indices (..., action_dim) -> the action values at their centres."""
        centres = self.bin_centres.expand(*index.shape, -1)
        return centres.gather(-1, index[..., None])[..., 0]

    def clip_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Continuous actions inside the spec's bounds (a no-op without bounds)."""
        return torch.maximum(torch.minimum(actions, self.action_high), self.action_low)

    def greedy_action(self, h: torch.Tensor) -> torch.Tensor:
        """The most likely action: argmax index (discrete), the clipped vector (regression),
        the argmax bin's centre per dimension (bins)."""
        out = self.predict_action(h)
        if self.spec.action_type == "discrete":
            return out.argmax(-1)
        if self.bins:
            return self.bin_values(out.argmax(-1))
        return self.clip_actions(out)

    def action_log_prob(self, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor | None:
        """log p(action | h) per position; for bins the joint log-probability of the actions'
        nearest bins (dimensions are independent given h). None for the regression head: it
        has no likelihood."""
        if self.spec.action_type == "discrete":
            logp = torch.log_softmax(self.predict_action(h), -1)
            return logp.gather(-1, actions.long()[..., None])[..., 0]
        if not self.bins:
            return None
        logp = torch.log_softmax(self.predict_action(h), -1)
        return logp.gather(-1, self.action_bin(actions)[..., None])[..., 0].sum(-1)

    def clamp(self, states: torch.Tensor) -> torch.Tensor:
        if not self.config.clamp_states:
            return states
        return torch.maximum(torch.minimum(states, self.state_high), self.state_low)

    def hold_zeros(self, states: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Generated states (B, obs_dim) with the `zero_held` coordinates that are zero in
        their rollout's start state (B, obs_dim) put back to zero."""
        held = self.zero_held & (start.abs() <= ZERO_TOL)
        return torch.where(held, torch.zeros_like(states), states)

    def describe(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "model": asdict(self.config)}


def _mlp(d_in: int, d_out: int, hidden_layers: int, width: int) -> nn.Module:
    """One linear layer (hidden_layers 0, the keys models were always saved under) or an MLP."""
    if hidden_layers == 0:
        return nn.Linear(d_in, d_out)
    layers: list[nn.Module] = []
    for i in range(hidden_layers):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


def _last_linear(module: nn.Module) -> nn.Linear:
    return module if isinstance(module, nn.Linear) else module[-1]


def _unwrap(backbone: nn.Module) -> nn.Module:
    """The transformers model under an optional peft wrapper."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) else backbone
