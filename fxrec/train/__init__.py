"""Streaming training with progressive evaluation, checkpoints and resume."""
