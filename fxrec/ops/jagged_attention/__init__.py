"""Jagged self-attention and jagged-dense attention: reference, cpu and triton backends."""
