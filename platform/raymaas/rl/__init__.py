"""RL jobs on RLlib: the spec and driver (job.py), and the policy's Ray-free export (export.py)."""

from raymaas.rl.export import PolicyExportError, check_parity
from raymaas.rl.job import RLSpec, run_rl

__all__ = ["PolicyExportError", "RLSpec", "check_parity", "run_rl"]
