"""Imagining rollouts: decode state, action, state, ... from a grounded model.

The prompt (goal -> rollout layout of grounding, ending with the given s_0) is encoded once;
after that every decoding step extends the KV cache by exactly one position: an action is read
at a state's position (greedy, or sampled with a temperature), the next state at the action's
position. Prompts of different lengths are left-padded with explicit position ids, so a rollout
does not depend on what else is in its batch; sampled actions come from one random stream per
rollout (`seeds`), so neither does its randomness. `use_cache=False` re-encodes everything each
step (what the published generator did); it exists for equivalence tests and benchmarks.
Prompts are built on the CPU and moved to the model's device; only the chosen actions and the
generated states come back.

Continuous actions are clipped to the spec's bounds before they are fed back and stored. A
regression head has no distribution to sample from, so its rollouts are greedy at any
temperature; a bin head samples one bin per dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kalm.llm.batching import collate
from kalm.llm.device import model_device, to_device
from kalm.llm.model import RolloutModel
from kalm.llm.prompts import PromptBuilder

SuccessFn = Callable[[Mapping[str, Any], np.ndarray, np.ndarray, Any], bool]


@dataclass
class Rollout:
    observations: np.ndarray  # (T+1, obs_dim), s_0 given
    actions: np.ndarray  # (T,) or (T, act_dim)
    success: bool  # the goal held on the last generated state (self-judged)


def _left_pad(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move right padding to the left so every prompt ends at the last column."""
    lengths = batch["attention_mask"].sum(1)
    width = batch["input_ids"].shape[1]
    out = {}
    for k in ("input_ids", "attention_mask", "state_in_mask", "state_in", "action_in_mask",
              "action_in"):
        t = batch[k]
        out[k] = torch.stack([torch.roll(t[i], int(width - lengths[i]), dims=0)
                              for i in range(t.shape[0])])
    return out


class _Decoder:
    """Holds the growing sequence and feeds the model one position at a time."""

    def __init__(self, model: RolloutModel, prompt_embeds: torch.Tensor, attn: torch.Tensor,
                 use_cache: bool) -> None:
        self.model = model
        self.use_cache = use_cache
        self.attn = attn
        self.pos = (attn.cumsum(1) - 1).clamp_min(0)
        self.embeds = prompt_embeds
        h, self.cache = model.hidden(prompt_embeds, attention_mask=attn, position_ids=self.pos,
                                     use_cache=use_cache)
        self.last = h[:, -1]

    def feed(self, x: torch.Tensor) -> torch.Tensor:
        """Append one embedding per row (B, hidden); returns the new last hidden state."""
        n = x.shape[0]
        self.attn = torch.cat([self.attn, self.attn.new_ones(n, 1)], dim=1)
        new_pos = self.pos[:, -1:] + 1
        self.pos = torch.cat([self.pos, new_pos], dim=1)
        if self.use_cache:
            h, self.cache = self.model.hidden(x[:, None].to(self.embeds.dtype),
                                              attention_mask=self.attn, position_ids=new_pos,
                                              past_key_values=self.cache, use_cache=True)
        else:
            self.embeds = torch.cat([self.embeds, x[:, None].to(self.embeds.dtype)], dim=1)
            h, _ = self.model.hidden(self.embeds, attention_mask=self.attn,
                                     position_ids=self.pos)
        self.last = h[:, -1]
        return self.last


def row_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU random stream per rollout: a row's samples depend on its own seed only, not on
    the batch it shares or the device the model runs on."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _choose_action(model: RolloutModel, h: torch.Tensor, temperature: float,
                   generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """Greedy, or sampled from row i's own stream: (B,) indices or (B, action_dim) values."""
    sampled = temperature > 0 and generators is not None
    if not sampled or (model.spec.action_type == "continuous" and not model.bins):
        return model.greedy_action(h)
    out = model.predict_action(h)
    probs = torch.softmax(out.float() / temperature, dim=-1).cpu()
    # discrete: (B, n) -> one pick per row; bins: (B, action_dim, bins) -> one per dimension
    picks = torch.stack([torch.multinomial(probs[i], 1, generator=g)[..., 0]
                         for i, g in enumerate(generators)]).to(out.device)
    return model.bin_values(picks) if model.bins else picks


def _prompt_decoder(model: RolloutModel, builder: PromptBuilder, instructions: Sequence[str],
                    initial_states: np.ndarray, use_cache: bool) -> _Decoder:
    """The rollout prompts (goal, then the start state), left-padded and run through the
    model: its last hidden state is where the first action is chosen."""
    prompts = []
    for text, s0 in zip(instructions, initial_states, strict=True):
        seq = builder.rollout_prompt(text)
        builder.state(seq, s0)
        prompts.append(seq)
    spec = model.spec
    b = to_device(_left_pad(collate(prompts, builder.pad_id, spec.obs_dim, spec.action_type,
                                    spec.action_dim)), model_device(model))
    x = model.embed(b["input_ids"], b["state_in_mask"], b["state_in"], b["action_in_mask"],
                    b["action_in"])
    return _Decoder(model, x, b["attention_mask"], use_cache)


@torch.no_grad()
def first_action_logits(model: RolloutModel, builder: PromptBuilder,
                        instructions: Sequence[str], initial_states: np.ndarray) -> np.ndarray:
    """The model's logits over the first action of each prompt's rollout, (n, actions)
    (discrete actions only)."""
    if model.spec.action_type != "discrete":
        raise ValueError("first_action_logits: discrete actions only")
    model.eval()
    dec = _prompt_decoder(model, builder, instructions, initial_states, use_cache=False)
    return model.predict_action(dec.last).float().cpu().numpy()


@torch.no_grad()
def imagine_batch(
    model: RolloutModel,
    builder: PromptBuilder,
    instructions: Sequence[str],
    initial_states: np.ndarray,
    goals: Sequence[Mapping[str, Any]],
    max_steps: Sequence[int],
    is_success: SuccessFn,
    temperature: float = 0.0,
    seed: int = 0,
    use_cache: bool = True,
    seeds: Sequence[int] | None = None,
    judges: Sequence[Callable[[np.ndarray, Any, np.ndarray], bool]] | None = None,
    hold_zeros: bool = False,
    first_actions: Sequence[int] | None = None,
) -> list[Rollout]:
    """Decode one rollout per prompt; each stops when its goal's check first holds.

    `first_actions` (discrete actions, one per row) fix each rollout's first action instead of
    choosing it; the rest is decoded as usual (`first_action_logits` gives what to choose from).

    `judges` (one per row, fed (prev, action, state) each step; see
    `EnvDefinition.step_judge`) replace `is_success` where success depends on the episode so
    far, not on one transition: an ordered composite goal can be met before any single state
    shows both stages, and the rollout must end there for its labels to agree.

    `hold_zeros` keeps the model's `zero_held` coordinates at zero wherever a row's start
    state has them at zero (an absent entity stays absent; see `RolloutModel.hold_zeros`).

    With a temperature, row i samples from its own stream seeded by `seeds[i]` (default: derived
    from (seed, i), which ties a row to its position; callers that batch work give each rollout
    a seed of its own)."""
    model.eval()
    n = len(instructions)
    spec = model.spec
    device = model_device(model)
    if first_actions is not None and (spec.action_type != "discrete"
                                      or len(first_actions) != n):
        raise ValueError(f"first_actions: one discrete action per rollout ({n}), got "
                         f"{len(first_actions)} for {spec.action_type} actions")
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} rollouts")
    if judges is not None and len(judges) != n:
        raise ValueError(f"{len(judges)} judges for {n} rollouts")
    dec = _prompt_decoder(model, builder, instructions, initial_states, use_cache)
    gens = None
    if temperature > 0:
        gens = row_generators(seeds if seeds is not None else
                              [int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
                               for i in range(n)])
    host_states = np.asarray(initial_states, dtype=np.float32)
    states = torch.as_tensor(host_states).to(device)
    start = states
    obs: list[list[np.ndarray]] = [[host_states[i].copy()] for i in range(n)]
    acts: list[list[Any]] = [[] for _ in range(n)]
    done = np.zeros(n, dtype=bool)
    success = np.zeros(n, dtype=bool)
    limit = np.asarray(max_steps)
    for t in range(int(limit.max())):
        if t == 0 and first_actions is not None:
            action = torch.as_tensor(np.asarray(first_actions, dtype=np.int64), device=device)
        else:
            action = _choose_action(model, dec.last, temperature, gens)
        h = dec.feed(model.embed_actions(action))
        z = model.predict_state(h, states)
        new_states = model.clamp(model.denormalize(z))
        if hold_zeros:
            new_states = model.hold_zeros(new_states, start)
        host_actions = action.cpu().numpy()  # one transfer per step, not one per row
        host_new = new_states.float().cpu().numpy()
        for i in range(n):
            if done[i]:
                continue
            a = int(host_actions[i]) if spec.action_type == "discrete" else \
                host_actions[i].astype(np.float32).copy()
            s_new = host_new[i].copy()
            acts[i].append(a)
            obs[i].append(s_new)
            hit = (judges[i](obs[i][-2], a, s_new) if judges is not None
                   else is_success(goals[i], s_new, obs[i][-2], a))
            if hit:
                done[i] = success[i] = True
            elif t + 1 >= limit[i]:
                done[i] = True
        if done.all():
            break
        states = new_states
        dec.feed(model.embed_states(states))
    rollouts = []
    for i in range(n):
        a_dtype = np.int64 if spec.action_type == "discrete" else np.float32
        rollouts.append(Rollout(np.asarray(obs[i], dtype=np.float32),
                                np.asarray(acts[i], dtype=a_dtype), bool(success[i])))
    return rollouts
