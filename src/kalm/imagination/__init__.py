"""Imagination: rollouts for new goals from a grounded model, with quality checks."""
