"""MLflow tracking: the store, one run per job, the registry and its gate, the publish tail.

Ray-free: the driver, the Train controller, the Serve replicas and the CLI all use it.
"""

from raymaas.tracking.runs import (
    JOB_KEY_TAG,
    JobRun,
    end_job_run,
    log_metrics,
    log_params,
    new_run_name,
    start_job_run,
)
from raymaas.tracking.store import ensure_experiment, get_client

__all__ = [
    "JOB_KEY_TAG",
    "JobRun",
    "end_job_run",
    "ensure_experiment",
    "get_client",
    "log_metrics",
    "log_params",
    "new_run_name",
    "start_job_run",
]
