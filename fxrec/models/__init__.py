"""Ranking models: features -> tokens -> interaction stack -> multi-task heads."""
