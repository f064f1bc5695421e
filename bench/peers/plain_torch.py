"""A peer of the platform's digits job: plain PyTorch in one process, no Ray.

    MLFLOW_TRACKING_URI=sqlite:////tmp/x/mlflow.db .venv/bin/python bench/peers/plain_torch.py [SPEC] [--epochs N]

What someone without the platform would write to get the same model registered: the same
data and split (raymaas.supervised.data.load_builtin with the spec's seed), the same network
(raymaas.supervised.models.build_model from the spec's model section), Adam with the spec's
learning rate and weight decay, the spec's batch size and epochs; one MLflow run with each
epoch's train_loss, val_loss, val_accuracy and epoch_seconds (training steps only), then the
model logged as the same pyfunc the platform registers (raymaas.modelcode.pyfunc.log_classifier)
and registered under the spec's registered model name with mlflow.register_model.

The store is MLFLOW_TRACKING_URI (required: this script never writes to a default store); a
SQLite store's artifacts go to the mlartifacts folder beside it.
The last line is `PEER_DONE <seconds since this process started>`. bench/time_to_model.py
runs it as a contestant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO / "jobs" / "specs" / "digits_mlp.yaml"


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", default=str(DEFAULT_SPEC), help="a supervised job spec (model, epochs, ...)")
    p.add_argument("--epochs", type=int, help="override the spec's train_loop_config.epochs")
    args = p.parse_args(argv)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        p.error("set MLFLOW_TRACKING_URI (e.g. sqlite:////tmp/somewhere/mlflow.db)")

    import mlflow
    import torch

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.specs import flatten, load_spec
    from raymaas.supervised.data import load_builtin
    from raymaas.supervised.job import SupervisedSpec
    from raymaas.supervised.models import build_model

    overrides = [f"train_loop_config.epochs={args.epochs}"] if args.epochs else []
    spec = load_spec(SupervisedSpec, args.spec, overrides)
    loop = spec.train_loop_config

    torch.manual_seed(loop.seed)
    split = load_builtin(spec.data, loop.seed)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    xv, yv = torch.from_numpy(split.x_val), torch.from_numpy(split.y_val)
    n_classes = int(max(split.y_train.max(), split.y_val.max()) + 1)
    model = build_model(spec.model, x.shape[1], n_classes, split.x_train.mean(0), split.x_train.std(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(loop.seed)

    use_experiment(spec.experiment_name)
    with mlflow.start_run() as run:
        print(f"plain_torch: MLflow run {run.info.run_id} in {mlflow.get_tracking_uri()}", flush=True)
        mlflow.log_params(flatten(spec.model_dump(mode="json")))
        for epoch in range(loop.epochs):
            model.train()
            started = time.perf_counter()
            order = torch.randperm(len(x), generator=shuffle)
            total = torch.zeros((), dtype=torch.float64)
            for i in range(0, len(order), loop.batch_size):
                idx = order[i : i + loop.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(idx)
            epoch_seconds = time.perf_counter() - started

            model.eval()
            with torch.no_grad():
                logits = model(xv)
                val_loss = float(loss_fn(logits, yv))
                val_accuracy = float((logits.argmax(1) == yv).float().mean())
            mlflow.log_metrics(
                {
                    "train_loss": float(total) / len(order),
                    "val_loss": val_loss,
                    "val_accuracy": val_accuracy,
                    "epoch_seconds": epoch_seconds,
                },
                step=epoch,
            )
        info = log_classifier(model, split.x_val[:8])
    version = mlflow.register_model(info.model_uri, spec.registered_model_name)
    print(
        f"plain_torch: {version.name} version {version.version}: val_accuracy {val_accuracy:.4f} "
        f"after {loop.epochs} epochs",
        flush=True,
    )
    print(f"PEER_DONE {since_start():.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
