"""How often an offline-RL policy picks the expert's action on the grounding run's held-out
episodes: the yardstick for the LLM's teacher-forced action accuracy (issue 26's horizontal
line), measured on the same episodes the grounding metrics use, so the two numbers compare."""

from __future__ import annotations

from pathlib import Path

from kalm.data.episodes import read_episodes
from kalm.llm.train import split_episodes


def policy_action_accuracy(real: str | Path, policy: str | Path, episodes: int,
                           val_fraction: float = 0.1, seed: int = 0) -> float:
    """Share of the expert's actions, every step of the first EPISODES held-out episodes
    (`split_episodes` with the grounding's VAL_FRACTION and SEED), that POLICY picks itself."""
    from kalm.rl.train import TrainedPolicy

    data = read_episodes(str(real))
    _, val_idx = split_episodes(len(data), val_fraction, seed)
    val = data.subset(val_idx)
    pol = TrainedPolicy(str(policy))
    hits = total = 0
    for i in range(min(episodes, len(val))):
        ep = val.episode(i)
        obs = ep.observations[: ep.length]
        pred = pol.act_batch(obs, [ep.goal] * ep.length, [ep.instruction] * ep.length)
        hits += int((pred == ep.actions[: ep.length]).sum())
        total += ep.length
    return hits / max(total, 1)
