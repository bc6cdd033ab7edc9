"""kalm: knowledgeable agents by offline RL from LLM-imagined rollouts."""

__version__ = "0.1.0"

from kalm import envs as envs
