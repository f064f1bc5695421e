"""A peer of the platform's digits job: Ray Train by hand, as a Ray user writes it without the platform.

    MLFLOW_TRACKING_URI=sqlite:////tmp/x/mlflow.db .venv/bin/python bench/peers/ray_train_by_hand.py \
        [SPEC] [--epochs N] [--storage-path DIR]

`ray.init()` (a local Ray: run it with RAY_ADDRESS unset), a `TorchTrainer` with 2 CPU workers
(`ScalingConfig(num_workers=2)`), `FailureConfig(max_failures=3)`, `RunConfig(storage_path=...,
name=...)`. Each worker builds the same data and split as the platform's digits job
(raymaas.supervised.data.load_builtin with the spec's seed) and the same network
(raymaas.supervised.models.build_model), wraps it with `ray.train.torch.prepare_model` and its
DataLoader with `prepare_data_loader`, trains with Adam at the spec's learning rate, batch size
(per worker, as the platform's) and epochs, and every epoch every rank calls `ray.train.report`
with its metrics, rank 0 with a checkpoint; a restarted worker group resumes from the last one.

After `fit()` the driver logs each epoch's metrics (from `result.metrics_dataframe`) to one
MLflow run, logs the final checkpoint's model with the platform's pyfunc
(raymaas.modelcode.pyfunc.log_classifier) and registers it with mlflow.register_model.
The store is MLFLOW_TRACKING_URI (required); a SQLite store's artifacts go to mlartifacts beside it.

Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s);
bench/time_to_model.py runs this script with the default and with 0.2. The last line is
`PEER_DONE <seconds since this process started>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO / "jobs" / "specs" / "digits_mlp.yaml"
METRICS = ("train_loss", "val_loss", "val_accuracy", "epoch_seconds")


def use_experiment(name: str) -> None:
    """mlflow.set_experiment(name), creating it with its artifacts beside a SQLite store
    (MLflow's default would be ./mlruns in the current folder)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if mlflow.get_experiment_by_name(name) is None and uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve().parent / "mlartifacts"
        mlflow.create_experiment(name, artifact_location=folder.as_uri())
    mlflow.set_experiment(name)


def since_start() -> float:
    """Seconds since this process was started (by the kernel's clock, imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from raymaas.supervised.data import DataSpec, load_builtin
    from raymaas.supervised.models import build_model, parse_model_spec

    seed, epochs = config["seed"], config["epochs"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(seed)

    split = load_builtin(DataSpec(**config["data"]), seed)
    n_classes = int(max(split.y_train.max(), split.y_val.max()) + 1)
    train = TensorDataset(torch.from_numpy(split.x_train), torch.from_numpy(split.y_train))
    loader = DataLoader(train, batch_size=config["batch_size"], shuffle=True)
    loader = ray.train.torch.prepare_data_loader(loader)  # a DistributedSampler: this rank's share
    xv, yv = torch.from_numpy(split.x_val), torch.from_numpy(split.y_val)

    model = build_model(
        parse_model_spec(config["model"]),
        split.x_train.shape[1],
        n_classes,
        split.x_train.mean(0),
        split.x_train.std(0),
    )
    model = ray.train.torch.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss()

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=False)
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1

    for epoch in range(start_epoch, epochs):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        model.train()
        started = time.perf_counter()
        total, n = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(yb)
            n += len(yb)
        epoch_seconds = time.perf_counter() - started

        model.eval()
        with torch.no_grad():
            logits = plain(xv)
            metrics = {
                "epoch": epoch,
                "train_loss": total / max(n, 1),
                "val_loss": float(loss_fn(logits, yv)),
                "val_accuracy": float((logits.argmax(1) == yv).float().mean()),
                "epoch_seconds": epoch_seconds,
            }
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(
                    {"model": plain.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                    Path(folder) / "state.pt",
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", default=str(DEFAULT_SPEC), help="a supervised job spec (model, epochs, ...)")
    p.add_argument("--epochs", type=int, help="override the spec's train_loop_config.epochs")
    p.add_argument("--storage-path", help="Ray Train storage (default: a new temporary folder)")
    args = p.parse_args(argv)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        p.error("set MLFLOW_TRACKING_URI (e.g. sqlite:////tmp/somewhere/mlflow.db)")

    import mlflow
    import numpy as np
    import ray
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.specs import flatten, load_spec
    from raymaas.supervised.data import load_builtin
    from raymaas.supervised.job import SupervisedSpec
    from raymaas.supervised.models import build_model

    overrides = [f"train_loop_config.epochs={args.epochs}"] if args.epochs else []
    spec = load_spec(SupervisedSpec, args.spec, overrides)
    loop = spec.train_loop_config
    config = {**loop.model_dump(), "model": spec.model.model_dump(), "data": spec.data.model_dump()}

    ray.init()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(
            storage_path=args.storage_path or tempfile.mkdtemp(prefix="ray-train-by-hand-"),
            name=f"{spec.name}-by-hand",
            failure_config=ray.train.FailureConfig(max_failures=3),
        ),
    )
    result = trainer.fit()

    split = load_builtin(spec.data, loop.seed)
    n_features = split.x_train.shape[1]
    n_classes = int(max(split.y_train.max(), split.y_val.max()) + 1)
    module = build_model(spec.model, n_features, n_classes, np.zeros(n_features), np.ones(n_features))
    with result.checkpoint.as_directory() as folder:
        module.load_state_dict(torch.load(Path(folder) / "state.pt", weights_only=False)["model"])

    history = result.metrics_dataframe.sort_values("epoch")
    use_experiment(spec.experiment_name)
    with mlflow.start_run() as run:
        print(f"ray_train_by_hand: MLflow run {run.info.run_id} in {mlflow.get_tracking_uri()}", flush=True)
        mlflow.log_params(flatten(spec.model_dump(mode="json")))
        for row in history.itertuples():
            mlflow.log_metrics({k: float(getattr(row, k)) for k in METRICS}, step=int(row.epoch))
        info = log_classifier(module, split.x_val[:8])
    version = mlflow.register_model(info.model_uri, spec.registered_model_name)
    print(
        f"ray_train_by_hand: {version.name} version {version.version}: val_accuracy "
        f"{history['val_accuracy'].iloc[-1]:.4f} after {len(history)} epochs",
        flush=True,
    )
    print(f"PEER_DONE {since_start():.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
