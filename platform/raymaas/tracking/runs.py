"""Exactly one MLflow run per job: found again by its job key across retries and resubmissions.

Ray-free: the driver and the Train controller use it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from raymaas.tracking.store import ensure_experiment

# Tag that identifies a job across retries and resubmissions: a run with the same job key is
# continued, never duplicated.
JOB_KEY_TAG = "raymaas.job_key"
# MLflow caps a param value at 6000 characters.
_MAX_PARAM_CHARS = 6000


def new_run_name(prefix: str) -> str:
    """prefix-YYYYmmdd-HHMMSS-xxxx: unique enough for a job started by hand."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class JobRun:
    """The one MLflow run of a job."""

    run_id: str
    experiment_id: str
    run_name: str
    tracking_uri: str
    resumed: bool


def start_job_run(
    client: MlflowClient,
    experiment_name: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
) -> JobRun:
    """Continue the run of this job if one exists (same run name), otherwise create it."""
    experiment_id = ensure_experiment(client, experiment_name)
    run = find_job_run(client, experiment_id, run_name)
    if run is not None:
        if run.info.status == "FINISHED":
            raise RuntimeError(
                f"run {run_name!r} already finished (MLflow run {run.info.run_id}); "
                "give the job a new mlflow.run_name to train again"
            )
        client.update_run(run.info.run_id, status="RUNNING")
        client.set_tag(run.info.run_id, "raymaas.resumed", "true")
        return JobRun(run.info.run_id, experiment_id, run_name, client.tracking_uri, resumed=True)
    run = client.create_run(experiment_id, run_name=run_name, tags={JOB_KEY_TAG: run_name, **tags})
    log_params(client, run.info.run_id, params)
    return JobRun(run.info.run_id, experiment_id, run_name, client.tracking_uri, resumed=False)


def find_job_run(client: MlflowClient, experiment_id: str, run_name: str):
    """The MLflow run of the job called run_name in the experiment, or None."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{JOB_KEY_TAG}` = '{run_name}'", max_results=1)
    return found[0] if found else None


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    client.log_batch(run_id, metrics=batch)


FROM_CHECKPOINTS_TAG = "raymaas.epochs_logged_from_checkpoints"


def epochs_from_checkpoints(run) -> int:
    """How many of run's epochs were logged from their persisted checkpoints (the driver stopped
    between persisting an epoch and logging it) rather than as Train reported them."""
    return len([e for e in run.data.tags.get(FROM_CHECKPOINTS_TAG, "").split(",") if e])


def end_job_run(client: MlflowClient, run_id: str, status: str, error: str | None = None) -> None:
    """Set the run's final status (FINISHED, FAILED or KILLED), with the error if any."""
    assert status in ("FINISHED", "FAILED", "KILLED"), status
    if error:
        client.set_tag(run_id, "raymaas.error", error[:5000])
    client.set_terminated(run_id, status=status)
