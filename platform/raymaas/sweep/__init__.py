"""Hyperparameter sweeps on Ray Tune: the spec sections and checks (space), the driver (job)."""
