"""Supervised training on Ray Train: the spec, the per-worker loop, and the driver.

One job is one MLflow run: the driver creates (or, for the same run name, continues) it;
the Train controller logs each epoch's metrics once the epoch's checkpoint is persisted;
the driver logs the plots and the model, registers it and sets the run's final status.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from pydantic import Field, field_validator

from raymaas.data import BUILTIN_DATASETS, DataSpec, load_builtin, shard_rows
from raymaas.lifecycle import call_interruptibly, final_status
from raymaas.models import BUILTIN_MODELS, ModelSpec, build_model
from raymaas.specs import JobSpec, SpecModel, flatten


class TrainLoopConfig(SpecModel):
    epochs: int = Field(10, ge=1, description="passes over the training data")
    batch_size: int = Field(64, ge=1, description="rows per step on each worker")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    seed: int = Field(0, description="seeds the model, the data split and the shuffling")


class ScalingSpec(SpecModel):
    num_workers: int = Field(2, ge=0, description="Ray Train workers (0 runs the loop in this process, for debugging)")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: GPUs (NCCL) if the cluster has any, else CPUs (gloo)")
    resources_per_worker: dict[str, float] = Field({"CPU": 1}, description="Ray resources each worker reserves")
    placement_timeout_s: float = Field(10, gt=0, description="seconds to wait for the cluster to offer the resources before failing")

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _gpu_choice(cls, value):
        if value in (True, False, "auto"):
            return value
        raise ValueError("must be true, false or auto")


class FailureSpec(SpecModel):
    max_failures: int = Field(3, ge=-1, description="worker-group restarts from the last checkpoint (-1: no limit)")


class CheckpointSpec(SpecModel):
    num_to_keep: int = Field(2, ge=1, description="newest checkpoints kept in storage")


class SupervisedSpec(JobSpec):
    kind: Literal["supervised"] = Field("supervised", description="job kind: picks the entrypoint `raymaas train` runs")
    data: DataSpec = Field(default_factory=DataSpec, description="where the rows come from")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the network")
    train_loop_config: TrainLoopConfig = Field(default_factory=TrainLoopConfig, description="passed to train_loop_per_worker")
    scaling_config: ScalingSpec = Field(default_factory=ScalingSpec, description="ray.train.ScalingConfig")
    failure_config: FailureSpec = Field(default_factory=FailureSpec, description="ray.train.FailureConfig")
    checkpoint_config: CheckpointSpec = Field(default_factory=CheckpointSpec, description="ray.train.CheckpointConfig")


GATE_METRIC = "val_accuracy"
_STATE_FILE = "state.pt"


# --------------------------------------------------------------------------- worker side


def train_loop_per_worker(config: dict) -> None:
    """Train with DDP on this worker's shard; resume from the last checkpoint if there is one."""
    import ray.train
    import ray.train.torch

    loop = TrainLoopConfig.model_validate(config["train_loop_config"])
    model_spec = ModelSpec.model_validate(config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(loop.seed)

    if config["data"] is not None:
        batches = _ArrayBatches(DataSpec.model_validate(config["data"]), loop, rank, world, device)
    else:
        batches = _ShardBatches(config["feature_columns"], config["label_column"], loop.batch_size, device)
    n_features, n_classes = config["n_features"], config["n_classes"]
    mean, std = batches.stats if batches.stats is not None else (config["mean"], config["std"])

    model = build_model(model_spec, n_features, n_classes, np.asarray(mean), np.asarray(std))
    model = ray.train.torch.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / _STATE_FILE, map_location=device, weights_only=False)
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1

    distributed = world > 1 and torch.distributed.is_initialized()
    for epoch in range(start_epoch, loop.epochs):
        model.train()
        started = time.perf_counter()
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # train loss, train n, val loss, correct, val n
        for x, y in batches.train(epoch):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            (loss / len(y)).backward()
            optimizer.step()
            sums[0] += loss.detach()
            sums[1] += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds = time.perf_counter() - started

        model.eval()
        confusion = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=device)
        with torch.no_grad():
            for x, y in batches.validation():
                logits = plain(x)
                sums[2] += loss_fn(logits, y)
                pred = logits.argmax(1)
                sums[3] += (pred == y).sum()
                sums[4] += len(y)
                confusion.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
        if distributed:
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(confusion)
        time_all = torch.tensor([epoch_seconds], device=device)
        if distributed:
            torch.distributed.all_reduce(time_all, op=torch.distributed.ReduceOp.MAX)
        train_loss, train_n, val_loss, correct, val_n = sums.tolist()
        seconds = float(time_all.item())
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss / max(train_n, 1),
            "val_loss": val_loss / max(val_n, 1),
            "val_accuracy": correct / max(val_n, 1),
            "epoch_seconds": seconds,
            "samples_per_second": train_n / max(seconds, 1e-9),
            "start_epoch": start_epoch,
        }
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(
                    {
                        "model": plain.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "confusion": confusion.cpu().numpy(),
                        "metrics": metrics,
                    },
                    Path(folder) / _STATE_FILE,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)  # a barrier: every rank reports


class _ArrayBatches:
    """A built-in data set held in memory; each rank takes an equal slice, reshuffled per epoch."""

    def __init__(self, spec: DataSpec, loop: TrainLoopConfig, rank: int, world: int, device):
        split = load_builtin(spec, loop.seed)
        self.stats = (split.x_train.mean(0), split.x_train.std(0))
        self._x = torch.from_numpy(split.x_train).to(device)
        self._y = torch.from_numpy(split.y_train).to(device)
        val_rows = np.arange(len(split.x_val))[rank::world]
        self._xv = torch.from_numpy(split.x_val[val_rows]).to(device)
        self._yv = torch.from_numpy(split.y_val[val_rows]).to(device)
        self._rank, self._world, self._loop = rank, world, loop

    def train(self, epoch: int):
        rows = torch.from_numpy(shard_rows(len(self._x), self._rank, self._world, self._loop.seed * 100_003 + epoch))
        rows = rows.to(self._x.device)
        bs = self._loop.batch_size
        for i in range(0, len(rows), bs):
            idx = rows[i : i + bs]
            yield self._x[idx], self._y[idx]

    def validation(self):
        for i in range(0, len(self._xv), 1024):
            yield self._xv[i : i + 1024], self._yv[i : i + 1024]


class _ShardBatches:
    """A file data set streamed by Ray Data: this worker's shard of `train` and `validation`."""

    stats = None

    def __init__(self, feature_columns: list[str], label_column: str, batch_size: int, device):
        import ray.train

        self._train = ray.train.get_dataset_shard("train")
        self._val = ray.train.get_dataset_shard("validation")
        self._features, self._label, self._bs, self._device = feature_columns, label_column, batch_size, device

    def _collate(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.stack([np.asarray(batch[c], dtype=np.float32) for c in self._features], axis=1)
        y = np.asarray(batch[self._label]).astype(np.int64)
        return torch.from_numpy(x).to(self._device), torch.from_numpy(y).to(self._device)

    def train(self, epoch: int):
        return self._train.iter_torch_batches(batch_size=self._bs, collate_fn=self._collate)

    def validation(self):
        return self._val.iter_torch_batches(batch_size=1024, collate_fn=self._collate)


# --------------------------------------------------------------------------- controller side


def _make_mlflow_callback(tracking_uri: str, run_id: str):
    from ray.train import UserCallback

    class MlflowEpochLogger(UserCallback):
        """Runs in the Train controller: logs each epoch once its checkpoint is persisted.

        Logging here rather than in a worker means an epoch that a worker died in the middle
        of is never logged twice, and a restarted worker group needs no MLflow state.
        """

        def __init__(self):
            self._client = None
            self._failures = 0
            self._resumed_at = 0
            self._ready = None

        def __getstate__(self):
            return {**self.__dict__, "_client": None, "_ready": None}

        def __setstate__(self, state):
            # Unpickled in the Train controller before the workers start: import MLflow and
            # open the store now, in the background. Done lazily in the first after_report,
            # its ~1.5 CPU-seconds ran beside the workers' second epoch and slowed it (seen
            # in bench/train_overhead.py on 2 cores).
            import threading

            self.__dict__.update(state)
            self._ready = threading.Thread(target=self._connect, name="raymaas-mlflow", daemon=True)
            self._ready.start()

        def _connect(self):
            from raymaas.tracking import get_client

            try:
                self._client = get_client(tracking_uri)
            except Exception as exc:  # after_report retries and reports it
                print(f"raymaas: MLflow store not reachable yet: {exc}", file=sys.stderr)

        def _mlflow(self):
            if self._ready is not None:
                self._ready.join()
            if self._client is None:
                self._connect()
            return self._client

        def after_report(self, run_context, metrics, checkpoint):
            from raymaas.tracking import log_metrics

            m = dict(metrics[0])
            epoch = int(m.pop("epoch"))
            start_epoch = int(m.pop("start_epoch", 0))
            try:
                if start_epoch and start_epoch != self._resumed_at:
                    self._resumed_at = start_epoch
                    self._mlflow().set_tag(run_id, "raymaas.resumed_from_epoch", str(start_epoch))
                log_metrics(self._mlflow(), run_id, m, step=epoch)
            except Exception as exc:  # tracking trouble must not kill training
                print(f"raymaas: could not log epoch {epoch} to MLflow: {exc}", file=sys.stderr)

        def after_exception(self, run_context, worker_exceptions):
            self._failures += 1
            try:
                self._mlflow().set_tag(run_id, "raymaas.worker_failures", str(self._failures))
            except Exception:
                pass

    return MlflowEpochLogger()


# --------------------------------------------------------------------------- driver side


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    run_name: str
    experiment_id: str
    tracking_uri: str
    model_name: str
    version: str
    val_accuracy: float
    promoted: bool
    promotion_reason: str
    epochs: int


def run_training(spec: SupervisedSpec, address: str | None = None) -> TrainOutcome:
    """Run the job on Ray Train, track it as one MLflow run, register and gate the model."""
    import ray
    import os

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from raymaas import cluster, tracking
    from raymaas.data import read_files

    tracking_uri = tracking.resolve_tracking_uri()
    opening = tracking.open_client_in_background(tracking_uri)  # while Ray starts
    scaling = spec.scaling_config
    needed_cpus = max(1, scaling.num_workers) * scaling.resources_per_worker.get("CPU", 1)
    user_code = [] if spec.model.name in BUILTIN_MODELS else [cluster.package_dir_of(spec.model.name.split(":")[0])]
    cluster.connect(
        address,
        # Logical CPUs for a local Ray: the workers' own, plus room for Ray Data's read
        # tasks, which would otherwise wait behind the workers for a free CPU.
        num_cpus=max(os.cpu_count() or 1, int(np.ceil(needed_cpus)) + 2),
        py_modules=[d for d in user_code if d],
    )
    client = opening.result()
    use_gpu = cluster.resolve_use_gpu(scaling.use_gpu)
    per_worker = dict(scaling.resources_per_worker)
    if use_gpu:
        per_worker.setdefault("GPU", 1)
    need = {k: v * max(1, scaling.num_workers) for k, v in per_worker.items()}
    storage_path = cluster.train_storage_path()
    # Several nodes: refuse a SQLite store or a node-local checkpoint folder before anything starts.
    cluster.check_multi_node_storage(tracking_uri, storage_path)
    cluster.wait_for_resources(need, scaling.placement_timeout_s, bundles=[per_worker] * max(1, scaling.num_workers))

    seed = spec.train_loop_config.seed
    loop_config: dict = {"train_loop_config": spec.train_loop_config.model_dump(), "model": spec.model.model_dump()}
    datasets = {}
    if spec.data.source in BUILTIN_DATASETS:
        split = load_builtin(spec.data, seed)
        feature_columns, example = None, split.x_val[:8]
        n_features, n_classes = split.x_train.shape[1], int(max(split.y_train.max(), split.y_val.max()) + 1)
        loop_config.update(data=spec.data.model_dump(), n_features=n_features, n_classes=n_classes)
    else:
        files = read_files(spec.data, seed)
        feature_columns, example = files.feature_columns, files.example
        n_features, n_classes = len(files.feature_columns), files.n_classes
        datasets = {"train": files.train, "validation": files.validation}
        loop_config.update(
            data=None, n_features=n_features, n_classes=n_classes, feature_columns=files.feature_columns,
            label_column=spec.data.label_column, mean=files.mean.tolist(), std=files.std.tolist(),
        )

    run_name = spec.mlflow.run_name or tracking.new_run_name(spec.name)
    job_run = tracking.start_job_run(
        client,
        spec.experiment_name,
        run_name,
        params=flatten(spec.model_dump(mode="json")),
        tags={
            "raymaas.job_kind": "supervised",
            "ray_version": ray.__version__,
            "num_workers": str(scaling.num_workers),
            "device": "cuda" if use_gpu else "cpu",
            "torch_backend": "nccl" if use_gpu else "gloo",
        },
    )
    print(f"raymaas: MLflow run {job_run.run_id} ({run_name}) in {tracking_uri}"
          + (" [continuing]" if job_run.resumed else ""), flush=True)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=spec.failure_config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.checkpoint_config.num_to_keep),
            callbacks=[_make_mlflow_callback(tracking_uri, job_run.run_id)],
        ),
        datasets=datasets,
    )

    with final_status(client, job_run.run_id) as status:
        result = call_interruptibly(trainer.fit)
        outcome = _publish(spec, client, job_run, result.checkpoint, example, feature_columns, n_features, n_classes)
        status.set("FINISHED")
    return outcome


def _publish(spec, client, job_run, checkpoint, example, feature_columns, n_features, n_classes) -> TrainOutcome:
    """Plots, the resolved spec and the model go to the run; the model into the registry."""
    import mlflow

    from raymaas import plots, registry
    from raymaas.pyfunc import log_classifier

    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / _STATE_FILE, map_location="cpu", weights_only=False)
    metrics = state["metrics"]
    module = build_model(spec.model, n_features, n_classes, np.zeros(n_features), np.ones(n_features))
    module.load_state_dict(state["model"])

    run_id = job_run.run_id
    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
    fig = plots.confusion_matrix_figure(state["confusion"], f"{spec.name}: validation, epoch {state['epoch']}")
    client.log_figure(run_id, fig, "plots/confusion_matrix.png")
    history = {k: client.get_metric_history(run_id, k) for k in ("train_loss", "val_loss")}
    fig = plots.curves_figure(
        {k: ([m.step for m in v], [m.value for m in v]) for k, v in history.items()},
        "epoch", "cross-entropy", f"{spec.name}: loss",
    )
    client.log_figure(run_id, fig, "plots/loss_curve.png")

    with mlflow.start_run(run_id=run_id):
        info = log_classifier(module, np.asarray(example, dtype=np.float32), feature_columns)
    accuracy = float(metrics[GATE_METRIC])
    name = spec.registered_model_name
    version = registry.register_model(client, info.model_uri, name, GATE_METRIC, accuracy)
    decision = registry.promote_if_better(client, name, version)
    return TrainOutcome(
        run_id=run_id, run_name=job_run.run_name, experiment_id=job_run.experiment_id,
        tracking_uri=job_run.tracking_uri, model_name=name, version=version, val_accuracy=accuracy,
        promoted=decision.promoted, promotion_reason=decision.reason, epochs=int(state["epoch"]) + 1,
    )
