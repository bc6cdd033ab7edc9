"""Prompt layouts of the four grounding objectives, built as token ids plus numeric slots.

The same builder makes training samples, generation prompts and the LLM-as-policy prompt, so the
layout can never drift between them. Slots are single positions: one per state, one per action,
with no padding between the prompt and the trajectory (right padding only, at the end).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

ROLLOUT = "rollout"  # goal -> rollout
DYNAMICS = "dynamics"  # (s_t, a_t) -> s_{t+1}
CONSEQUENCE = "consequence"  # (s_0, goal) -> final state
EXPLANATION = "explanation"  # rollout -> goal text
OBJECTIVES = (ROLLOUT, DYNAMICS, CONSEQUENCE, EXPLANATION)

IGNORE = -100


def normalize_instruction(text: str) -> str:
    """One canonical form for training and generation: single spaces, final punctuation.

    The published code stripped a trailing "." at load time and crashed on some inputs (P14);
    here any text is accepted and ends with exactly one of . ! ?
    """
    t = re.sub(r"\s+", " ", str(text)).strip()
    if not t:
        raise ValueError("empty instruction")
    if t[-1] not in ".!?":
        t += "."
    return t


@dataclass
class Sequence:
    """One sample: token ids with numeric inputs at slots and the targets read off positions."""

    ids: list[int] = field(default_factory=list)
    state_in: dict[int, np.ndarray] = field(default_factory=dict)  # position -> raw state
    action_in: dict[int, int | np.ndarray] = field(default_factory=dict)
    state_tgt: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # (s, base)
    action_tgt: dict[int, int | np.ndarray] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)  # position -> next token id
    objective: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def last(self) -> int:
        return len(self.ids) - 1


class PromptBuilder:
    """Tokenises text pieces (cached) and lays out the objectives."""

    def __init__(self, tokenizer, pad_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.pad_id = int(pad_id if pad_id is not None else tokenizer.pad_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self._cache: dict[str, list[int]] = {}

    def tokens(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
            if len(self._cache) < 50000:
                self._cache[text] = ids
        return ids

    # ---------------------------------------------------------------- primitives
    def text(self, seq: Sequence, text: str, supervise: bool = False) -> None:
        for tok in self.tokens(text):
            if supervise and seq.ids:
                seq.labels[seq.last] = tok
            seq.ids.append(tok)

    def eos(self, seq: Sequence, supervise: bool = True) -> None:
        if supervise:
            seq.labels[seq.last] = self.eos_id
        seq.ids.append(self.eos_id)

    def state(self, seq: Sequence, s: np.ndarray) -> int:
        seq.ids.append(self.pad_id)
        seq.state_in[seq.last] = np.asarray(s, dtype=np.float32)
        return seq.last

    def action(self, seq: Sequence, a: int | np.ndarray) -> int:
        seq.ids.append(self.pad_id)
        seq.action_in[seq.last] = a
        return seq.last

    # ---------------------------------------------------------------- layouts
    def rollout_prompt(self, instruction: str) -> Sequence:
        """Goal -> rollout prompt; the trajectory follows: s_0, a_0, s_1, ..."""
        seq = Sequence(objective=ROLLOUT)
        self.text(seq, f"Goal: {normalize_instruction(instruction)}\nRollout:")
        return seq

    def rollout(self, instruction: str, observations: np.ndarray, actions: np.ndarray) -> Sequence:
        """Teacher-forced goal -> rollout: a_t is read at s_t's slot, s_{t+1} at a_t's slot.

        s_0 is given (it comes from the environment at imagination time), so it is not a target.
        """
        seq = self.rollout_prompt(instruction)
        prev = self.state(seq, observations[0])
        for t in range(len(actions)):
            seq.action_tgt[prev] = _action_value(actions[t])
            a_pos = self.action(seq, _action_value(actions[t]))
            seq.state_tgt[a_pos] = (observations[t + 1], observations[t])
            prev = self.state(seq, observations[t + 1])
        return seq

    def dynamics(self, s: np.ndarray, a: int | np.ndarray, s_next: np.ndarray) -> Sequence:
        seq = Sequence(objective=DYNAMICS)
        self.text(seq, "Dynamics.\nState:")
        self.state(seq, s)
        self.text(seq, " Action:")
        self.action(seq, _action_value(a))
        self.text(seq, " Next state:")
        seq.state_tgt[seq.last] = (s_next, s)
        return seq

    def consequence_prompt(self, instruction: str, s0: np.ndarray) -> Sequence:
        seq = Sequence(objective=CONSEQUENCE)
        self.text(seq, "Start state:")
        self.state(seq, s0)
        self.text(seq, f" Goal: {normalize_instruction(instruction)}\nFinal state:")
        return seq

    def consequence(self, instruction: str, s0: np.ndarray, s_final: np.ndarray) -> Sequence:
        seq = self.consequence_prompt(instruction, s0)
        seq.state_tgt[seq.last] = (s_final, s0)
        return seq

    def explanation_prompt(self, observations: np.ndarray, actions: np.ndarray) -> Sequence:
        seq = Sequence(objective=EXPLANATION)
        self.text(seq, "Rollout:")
        for t in range(len(actions)):
            self.state(seq, observations[t])
            self.action(seq, _action_value(actions[t]))
        self.state(seq, observations[len(actions)])
        self.text(seq, "\nGoal:")
        return seq

    def explanation(self, instruction: str, observations: np.ndarray,
                    actions: np.ndarray) -> Sequence:
        """Rollout -> goal text: next-token loss on the instruction and the end token only."""
        seq = self.explanation_prompt(observations, actions)
        self.text(seq, " " + normalize_instruction(instruction), supervise=True)
        self.eos(seq)
        return seq


def _action_value(a) -> int | np.ndarray:
    arr = np.asarray(a)
    return int(arr) if arr.ndim == 0 and np.issubdtype(arr.dtype, np.integer) else arr.astype(
        np.float32)
