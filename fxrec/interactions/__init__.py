"""Feature-interaction modules: each maps tokens (B, n, d) to tokens (B, l, d).

Add a module by writing one file here and one line in `registry.py`.
"""
