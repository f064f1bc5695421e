"""raymaas: train on a Ray cluster, track in MLflow, serve with Ray Serve.

Nothing is imported here on purpose: registered models ship this package as their code, and
they must load in a process that has torch and MLflow but not Ray.
"""

__version__ = "0.1.0"
