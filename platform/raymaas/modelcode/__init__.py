"""What a registered model carries and runs: torch, numpy, MLflow (and gymnasium for
rollouts), never Ray. A model's code folder holds raymaas/__init__.py and this package only.
"""
