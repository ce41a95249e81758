"""Metrics beyond a task's own loss: FID, the lm-eval bridge."""
