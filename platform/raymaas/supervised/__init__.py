"""Supervised jobs on Ray Train: the spec and driver (job.py), data sources (data.py), models
(models/, one module per model family), the per-worker loop (loop.py) and the controller's MLflow logger (logger.py)."""

from raymaas.supervised.job import SupervisedSpec, run_training

__all__ = ["SupervisedSpec", "run_training"]
