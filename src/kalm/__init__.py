"""kalm: knowledgeable agents by offline RL from LLM-imagined rollouts."""

__version__ = "0.1.0"

from kalm import envs as envs  # noqa: E402  (registers kalm/CLEVRRobot-v0 with Gymnasium)
