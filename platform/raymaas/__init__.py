"""raymaas: train on a Ray cluster, track in MLflow, serve with Ray Serve.

Nothing is imported here on purpose: every registered model carries this file and
raymaas/modelcode/ as its code, and must load in a process that has torch and MLflow but
not Ray.
"""

__version__ = "0.2.0"
