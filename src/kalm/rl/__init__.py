"""Skill acquisition: goal-conditioned offline RL (d3rlpy) on real + imagined data."""
