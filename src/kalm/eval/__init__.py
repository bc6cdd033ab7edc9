"""Evaluation in the real simulator and reporting."""
