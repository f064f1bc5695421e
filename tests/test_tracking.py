"""New SQLite stores start from an empty store kept per MLflow version (no Ray needed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow

from raymaas.tracking import ensure_experiment, get_client


def experiments_in(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()


def test_new_stores_are_copies_of_one_empty_store_and_stay_separate(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = tmp_path / "cache" / "raymaas" / f"mlflow-{mlflow.__version__}-empty.db"
    a_db, b_db = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"

    a = get_client(f"sqlite:///{a_db}")
    assert template.is_file(), "the first new store leaves the empty store behind"
    assert experiments_in(template) == [], "the empty store has no Default experiment to carry a foreign path"
    b = get_client(f"sqlite:///{b_db}")

    for client, db in ((a, a_db), (b, b_db)):
        default = client.get_experiment("0")
        assert default.name == "Default"
        assert "cache" not in default.artifact_location
        experiment_id = ensure_experiment(client, "jobs")
        assert client.get_experiment(experiment_id).artifact_location == (db.parent / "mlartifacts").as_uri()

    run = a.create_run(ensure_experiment(a, "jobs"))
    a.log_metric(run.info.run_id, "val_accuracy", 0.9, step=1)
    a.create_registered_model("only-in-a")
    assert [m.name for m in a.search_registered_models()] == ["only-in-a"]
    assert b.search_registered_models() == []
    assert b.search_runs([ensure_experiment(b, "jobs")]) == []
    assert a.get_run(run.info.run_id).data.metrics == {"val_accuracy": 0.9}


def test_an_existing_store_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    client = get_client(f"sqlite:///{db}")
    client.create_registered_model("kept")
    again = get_client(f"sqlite:///{db}")
    assert [m.name for m in again.search_registered_models()] == ["kept"]


def test_an_epoch_persisted_but_never_logged_is_logged_from_its_checkpoint(tmp_path, monkeypatch):
    """A driver stopped between Train persisting an epoch's checkpoint and the controller logging
    it: the resumed job's result still holds the epoch, and it reaches the run once, at its step."""
    from ray.train import Checkpoint, Result

    from raymaas.supervised.logger import log_unlogged_epochs
    from raymaas.tracking.runs import epochs_from_checkpoints, log_metrics

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    client = get_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(ensure_experiment(client, "jobs")).info.run_id
    reported = [
        {"epoch": e, "start_epoch": 0, "train_loss": 1.0 / (e + 1), "val_accuracy": 0.5 + e / 10} for e in range(3)
    ]
    for metrics in reported[:2]:  # epochs 0 and 1 logged; epoch 2's log lost with the driver
        log_metrics(client, run_id, {k: v for k, v in metrics.items() if "epoch" not in k}, step=metrics["epoch"])
    folders = [tmp_path / f"checkpoint_{e}" for e in range(3)]
    for folder in folders:
        folder.mkdir()
    result = Result(
        metrics=reported[2],
        checkpoint=Checkpoint.from_directory(folders[2]),
        error=None,
        path=str(tmp_path),
        best_checkpoints=[(Checkpoint.from_directory(f), m) for f, m in zip(folders, reported)],
    )

    assert log_unlogged_epochs(client, run_id, result) == [2]
    assert log_unlogged_epochs(client, run_id, result) == []  # once only
    history = client.get_metric_history(run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert "start_epoch" not in client.get_run(run_id).data.metrics
    assert epochs_from_checkpoints(client.get_run(run_id)) == 1
