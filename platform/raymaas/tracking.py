"""MLflow tracking: where the store lives, and exactly one run per job.

Ray-free on purpose: the driver, the Train controller and the CLI all use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

# Tag that identifies a job across retries and resubmissions: a run with the same job key is
# continued, never duplicated.
JOB_KEY_TAG = "raymaas.job_key"
# Ray sets this in the environment of every `ray job submit` driver.
_RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# MLflow caps a param value at 6000 characters.
_MAX_PARAM_CHARS = 6000


def raymaas_home() -> Path:
    """The folder of the embedded default: MLflow store, artifacts and Ray Train storage.

    RAYMAAS_HOME wins. Otherwise the project directory (the nearest folder above the current
    one holding pyproject.toml). Inside a `ray job submit` driver the current folder is the
    job's unpacked copy, which Ray deletes, so there it is ~/.raymaas unless the head node
    was started with RAYMAAS_HOME (as `raymaas up` does).
    """
    env = os.environ.get("RAYMAAS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    if _RAY_JOB_ENV in os.environ:
        return Path.home() / ".raymaas"
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return cwd


def resolve_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite URI in raymaas_home()."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return _absolute_sqlite_uri(uri)
    return f"sqlite:///{raymaas_home() / 'mlflow.db'}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite store, as an absolute path; a server decides its own."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").as_uri()
    return None


def _absolute_sqlite_uri(uri: str) -> str:
    # A relative sqlite path resolves inside each process's cwd, which for Ray workers is a
    # temporary folder: the runs would vanish with it.
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri.removeprefix("sqlite:///")
        return f"sqlite:///{Path(rel).resolve()}"
    return uri


def get_client(tracking_uri: str | None = None) -> MlflowClient:
    uri = tracking_uri or resolve_tracking_uri()
    if uri.startswith("sqlite:////") and "?" not in uri:
        _seed_new_sqlite_store(Path(uri.removeprefix("sqlite:///")))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _seed_new_sqlite_store(db: Path) -> None:
    """A SQLite store that does not exist yet starts as a copy of an empty one that this
    MLflow version created once on this machine (~/.cache/raymaas): MLflow builds a new store
    by running its whole chain of schema migrations, 1.5 CPU-seconds here, in every new
    project, test or benchmark folder; the copy takes milliseconds. The copy has no Default
    experiment, so MLflow creates it on first use with the artifact root it would have had."""
    if db.exists():
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raymaas"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        if not template.is_file():
            _make_empty_store(template)
        db.parent.mkdir(parents=True, exist_ok=True)
        staged = db.with_name(f".{db.name}.{os.getpid()}.{secrets.token_hex(4)}")
        shutil.copyfile(template, staged)
        try:
            os.link(staged, db)  # never over a store another process created meanwhile
        except FileExistsError:
            pass
        finally:
            staged.unlink()
    except OSError:
        pass  # no cache folder (read-only home...): MLflow builds the store itself, as usual


def _make_empty_store(template: Path) -> None:
    import sqlite3

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    template.parent.mkdir(parents=True, exist_ok=True)
    staged = template.with_name(f".{template.name}.{os.getpid()}.{secrets.token_hex(4)}")
    store = SqlAlchemyStore(f"sqlite:///{staged}", str(template.parent / "unused-artifacts"))
    store.engine.dispose()
    with contextlib.closing(sqlite3.connect(staged)) as con, con:
        con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        con.execute("DELETE FROM experiments WHERE experiment_id = 0")
    os.replace(staged, template)


def open_client_in_background(tracking_uri: str):
    """get_client in a thread, as a Future: opening the store (for a new SQLite file, its
    schema migrations) takes 2-3 s that overlap with starting Ray in the caller's thread."""
    from raymaas.lifecycle import in_background

    return in_background(get_client, tracking_uri, name="raymaas-mlflow")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (artifacts at an absolute location) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        location = default_artifact_location(client.tracking_uri)
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another process created it between our look-up and create.
        return client.get_experiment_by_name(name).experiment_id


def new_run_name(prefix: str) -> str:
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
    existing = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{JOB_KEY_TAG}` = '{run_name}'",
        max_results=1,
    )
    if existing:
        run = existing[0]
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


def end_job_run(client: MlflowClient, run_id: str, status: str, error: str | None = None) -> None:
    """Set the run's final status (FINISHED, FAILED or KILLED), with the error if any."""
    assert status in ("FINISHED", "FAILED", "KILLED"), status
    if error:
        client.set_tag(run_id, "raymaas.error", error[:5000])
    client.set_terminated(run_id, status=status)


def run_status(client: MlflowClient, run_id: str) -> str:
    return RunStatus.to_string(RunStatus.from_string(client.get_run(run_id).info.status))
