"""Ranking metrics with the definitions DESIGN.md fixes for every part of fxrec."""

from fxrec.metrics.ranking import auc, calibration, evaluate, gauc, log_loss, ne, relative_ne_change

__all__ = ["auc", "calibration", "evaluate", "gauc", "log_loss", "ne", "relative_ne_change"]
