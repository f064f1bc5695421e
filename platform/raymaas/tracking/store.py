"""The MLflow store: a client for it (a new SQLite store from an empty template), experiments.

Ray-free on purpose: the driver, the Train controller, the Serve replicas and the CLI use it.
Where the store is: `raymaas.paths.tracking_uri()`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from raymaas import paths


def get_client(tracking_uri: str | None = None) -> MlflowClient:
    """A client of the store (default: paths.tracking_uri()), also set as MLflow's current one."""
    uri = tracking_uri or paths.tracking_uri()
    db = paths.sqlite_path(uri)
    if db is not None:
        _seed_new_sqlite_store(db)
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


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (artifacts at an absolute location) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        location = paths.artifact_location(client.tracking_uri)
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another process created it between our look-up and create.
        return client.get_experiment_by_name(name).experiment_id
