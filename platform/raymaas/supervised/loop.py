"""The per-worker training loop of a supervised job (`train_loop_per_worker`), and what the
driver hands it: a WorkerConfig, validated again in each worker."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from raymaas.specs import SpecModel
from raymaas.supervised import metrics as task_metrics
from raymaas.supervised.data import (
    ArraySplit,
    BuiltinData,
    FileShards,
    ImageData,
    Targets,
    WorkerData,
    array_split,
    shard_rows,
)
from raymaas.supervised.images import CLASS_COLUMN, augment_batch, channels_first
from raymaas.supervised.models import ModelSpec, build_model

STATE_FILE = "state.pt"


class EarlyStopping(SpecModel):
    patience: int = Field(
        ge=1, description="epochs in a row without an improvement of the gate metric after which the job ends"
    )
    min_delta: float = Field(
        0.0, ge=0, description="the least change of the gate metric (in its direction) that counts as an improvement"
    )


class TrainLoopConfig(SpecModel):
    epochs: int = Field(10, ge=1, description="passes over the training data")
    batch_size: int = Field(64, ge=1, description="rows per step on each worker")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    seed: int = Field(0, description="seeds the model, the data split and the shuffling")
    loss: Literal["auto", "cross_entropy", "mse", "huber", "l1"] = Field(
        "auto", description="auto: cross_entropy for classification, mse for regression (on standardised targets)"
    )
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="classification: balanced weighs each class by n_rows / (n_classes * its rows)"
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="end the job once the gate metric (mlflow.gate_metric) stopped improving; "
        "the model registered is the best epoch's either way",
    )

    def loss_name(self, task: str) -> str:
        if self.loss == "auto":
            return "cross_entropy" if task == "classification" else "mse"
        return self.loss


class Selection(SpecModel):
    """The metric the best epoch is chosen by (the job's gate metric) and its direction."""

    metric: str
    higher_is_better: bool

    def improves(self, value: float, best: float | None, min_delta: float = 0.0) -> bool:
        """Whether value beats best by more than min_delta (a NaN never does)."""
        if not np.isfinite(value):
            return False
        if best is None:
            return True
        return value > best + min_delta if self.higher_is_better else value < best - min_delta


class WorkerConfig(SpecModel):
    """The train_loop_config of every worker: the loop's, the model's and the data's part."""

    train_loop_config: TrainLoopConfig
    model: ModelSpec
    data: WorkerData
    selection: Selection


class TrainSession:
    """What the loop asks of the run it trains in: here a worker of a Ray Train run (the
    default); a sweep's one-worker trial trains in its own process instead
    (raymaas.supervised.trial.TrialSession, the same methods)."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP across the group, on its device

    def latest_checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict, folder: str | None) -> None:
        """An epoch's metrics; rank 0 hands the folder of its checkpoint."""
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    def dataset_shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)


def train_loop_per_worker(config: dict, session=None) -> None:
    """Train with DDP on this worker's shard; resume from the last checkpoint if there is one."""
    cfg = WorkerConfig.model_validate(config)
    loop, data = cfg.train_loop_config, cfg.data
    session = session or TrainSession()
    rank, world, device = session.rank, session.world, session.device
    torch.manual_seed(loop.seed)

    if isinstance(data, FileShards):
        batches = _ShardBatches(data, loop, device, session)
    elif isinstance(data, ImageData):
        batches = _ImageBatches(data, loop, rank, device, session)
    else:  # a built-in set or a sequence file: held in memory
        batches = _ArrayBatches(array_split(data, loop.seed), loop, rank, world, device)
    if isinstance(data, BuiltinData):
        mean, std = batches.stats
    elif isinstance(data, ImageData):
        mean, std = data.scaling()  # per channel
    else:
        mean, std = data.mean, data.std
    targets = data.targets
    regression = targets.task == "regression"

    model = build_model(
        cfg.model,
        data.input_shape,
        targets.n_outputs,
        np.asarray(mean),
        np.asarray(std),
        np.asarray(targets.mean) if regression else None,
        np.asarray(targets.std) if regression else None,
        encoding=getattr(data, "encoding", None),
    )
    model = session.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    loss_fn = _loss(loop, targets, batches, device)

    start_epoch = 0
    # early stopping's count: the best value of the gate metric so far, and epochs since it
    progress = {"best": None, "best_epoch": None, "waited": 0}
    checkpoint = session.latest_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=False)
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        progress = state.get("progress", progress)
        if state.get("stopped_early"):  # it had ended: nothing more to train
            start_epoch = loop.epochs

    distributed = world > 1 and torch.distributed.is_initialized()
    for epoch in range(start_epoch, loop.epochs):
        model.train()
        started = time.perf_counter()
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # train loss, train rows
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
        tally = task_metrics.Tally(targets, device)
        with torch.no_grad():
            for x, y in batches.validation():
                out = plain(x)
                tally.add(out, y, loss_fn(out, y))
        time_all = torch.tensor([epoch_seconds], device=device)
        if distributed:
            torch.distributed.all_reduce(sums)
            tally.all_reduce()
            torch.distributed.all_reduce(time_all, op=torch.distributed.ReduceOp.MAX)
        train_loss, train_n = sums.tolist()
        seconds = float(time_all.item())
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss / max(train_n, 1),
            **tally.metrics(),
            "epoch_seconds": seconds,
            "samples_per_second": train_n / max(seconds, 1e-9),
            "start_epoch": start_epoch,
            # the group's size for this epoch: an elastic job's grows and shrinks with the cluster
            "workers": world,
        }
        # every rank holds the same all-reduced metrics, so every rank takes the same decision
        stopping = loop.early_stopping
        if cfg.selection.improves(
            metrics[cfg.selection.metric], progress["best"], stopping.min_delta if stopping else 0
        ):
            progress = {"best": float(metrics[cfg.selection.metric]), "best_epoch": epoch, "waited": 0}
        else:
            progress["waited"] += 1
        stop = stopping is not None and progress["waited"] >= stopping.patience and epoch + 1 < loop.epochs
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(
                    {
                        "model": plain.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "confusion": tally.confusion_matrix(),
                        "metrics": metrics,
                        "progress": progress,
                        "stopped_early": stop,
                    },
                    Path(folder) / STATE_FILE,
                )
                session.report(metrics, folder)
        else:
            session.report(metrics, None)  # a barrier: every rank reports
        if stop:
            break


def _loss(loop: TrainLoopConfig, targets: Targets, batches, device):
    """The summed loss of a batch. Regression losses compare standardised values: the model
    answers in the targets' units, and mse on prices in the thousands would swamp Adam's steps."""
    name = loop.loss_name(targets.task)
    if targets.task == "anomaly":  # the network answers each row's reconstruction error: the loss itself

        def reconstruction_loss(out, y):
            return out.sum()

        return reconstruction_loss
    if targets.task == "classification":
        weight = None
        if loop.class_weight == "balanced":
            counts = batches.class_counts(len(targets.classes)).astype(np.float64)
            weight = torch.as_tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
            weight = weight.to(device)
        ce = torch.nn.CrossEntropyLoss(weight=weight, reduction="sum")
        return ce
    scale = torch.as_tensor(np.asarray(targets.std, dtype=np.float32), device=device)
    scale = torch.where(scale > 1e-6, scale, torch.ones_like(scale))
    base = {
        "mse": torch.nn.MSELoss(reduction="sum"),
        "huber": torch.nn.HuberLoss(reduction="sum"),
        "l1": torch.nn.L1Loss(reduction="sum"),
    }[name]

    def regression_loss(out, y):
        # summed over outputs: per row, as cross-entropy is
        return base(out / scale, y / scale)

    return regression_loss


class _ArrayBatches:
    """A data set held in memory (a built-in set, a sequence file); each rank takes an equal
    slice, reshuffled per epoch."""

    def __init__(self, split: ArraySplit, loop: TrainLoopConfig, rank: int, world: int, device):
        self.stats = (split.x_train.mean(0), split.x_train.std(0))
        self._x = torch.from_numpy(split.x_train).to(device)
        self._y = torch.from_numpy(split.y_train).to(device)
        val_rows = np.arange(len(split.x_val))[rank::world]
        self._xv = torch.from_numpy(split.x_val[val_rows]).to(device)
        self._yv = torch.from_numpy(split.y_val[val_rows]).to(device)
        self._rank, self._world, self._loop = rank, world, loop

    def class_counts(self, n_classes: int) -> np.ndarray:
        """Rows of each class in the whole training split (every rank sees the same)."""
        return np.bincount(self._y.cpu().numpy(), minlength=n_classes)

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


class _StreamedBatches:
    """A data set read by Ray Data: this worker's shard of `train` and `validation`, each
    batch made tensors by the subclass's `_collate`.

    The first epoch streams the shards; when they are small (at most CACHE_BYTES on this
    worker) their rows are kept, and later epochs reshuffle the kept rows instead of running
    Ray Data's streaming executor again, which cost seconds an epoch on a tiny file. Every
    rank's shard holds the same number of rows (Ray Train splits with equal=True), so the
    ranks take the same number of steps either way.
    """

    CACHE_BYTES = 256 * 2**20

    def __init__(self, loop: TrainLoopConfig, device, session):
        self._shards = {"train": session.dataset_shard("train"), "validation": session.dataset_shard("validation")}
        self._kept: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._loop, self._device = loop, device

    def _collate(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def class_counts(self, n_classes: int) -> np.ndarray:
        """Rows of each class in the training split, summed over the workers' shards."""
        counts = torch.zeros(n_classes, dtype=torch.float64, device=self._device)
        for _, y in self._batches("train", self._loop.batch_size, None):
            counts += torch.bincount(y, minlength=n_classes).to(counts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        return counts.cpu().numpy()

    def train(self, epoch: int):
        return self._batches("train", self._loop.batch_size, self._loop.seed * 100_003 + epoch)

    def validation(self):
        return self._batches("validation", 1024, None)

    def _batches(self, name: str, batch_size: int, order_seed: int | None):
        kept = self._kept.get(name)
        if kept is not None:
            x, y = kept
            rows = torch.arange(len(x), device=x.device)
            if order_seed is not None:
                rows = torch.from_numpy(np.random.default_rng(order_seed).permutation(len(x))).to(x.device)
            for i in range(0, len(rows), batch_size):
                idx = rows[i : i + batch_size]
                yield x[idx], y[idx]
            return
        xs, ys, size = [], [], 0
        for x, y in self._shards[name].iter_torch_batches(batch_size=batch_size, collate_fn=self._collate):
            if xs is not None:
                size += x.element_size() * x.nelement() + y.element_size() * y.nelement()
                if size <= self.CACHE_BYTES:
                    xs.append(x)
                    ys.append(y)
                else:
                    xs = ys = None
            yield x, y
        if xs:
            self._kept[name] = (torch.cat(xs), torch.cat(ys))


class _ShardBatches(_StreamedBatches):
    """A file data set read by Ray Data: rows of feature and label columns."""

    def __init__(self, data: FileShards, loop: TrainLoopConfig, device, session):
        import pandas as pd

        super().__init__(loop, device, session)
        self._features, self._labels = data.feature_columns, data.label_columns
        # classification: label -> index in the class list (-1 for a label the training split lacks)
        self._classes = pd.Index(data.targets.classes) if data.targets.task == "classification" else None
        # anomaly: which label is normal (None: no labels; every row counts as normal)
        self._normal = data.targets.normal if data.targets.task == "anomaly" else None
        self._anomaly = data.targets.task == "anomaly"
        self._encoding = None
        if data.encoding is not None:  # categorical or imputed columns: encoded as the served model does
            from raymaas.modelcode.tabular import TabularEncoding

            self._encoding = TabularEncoding.from_dict(data.encoding)

    def _collate(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self._encoding is not None:
            import pandas as pd

            x = self._encoding.encode(pd.DataFrame({c: batch[c] for c in self._features}))
        else:
            x = np.stack([np.asarray(batch[c], dtype=np.float32) for c in self._features], axis=1)
        if self._anomaly:
            from raymaas.supervised.data import anomaly_flags

            if self._normal is None:
                y = np.zeros(len(x), dtype=np.int64)
            else:
                y = anomaly_flags(batch[self._labels[0]], self._normal)
        elif self._classes is not None:
            y = self._classes.get_indexer(np.asarray(batch[self._labels[0]])).astype(np.int64)
            known = y >= 0  # validation rows of an unseen label: reported by the driver, left out here
            if not known.all():
                x, y = x[known], y[known]
        else:
            y = np.stack([np.asarray(batch[c], dtype=np.float32) for c in self._labels], axis=1)
        return torch.from_numpy(x).to(self._device), torch.from_numpy(y).to(self._device)


class _ImageBatches(_StreamedBatches):
    """An image folder read by Ray Data: float32 [n, channels, height, width] pixels (0-255)
    and class ids. data.augment transforms the training batches, afresh each epoch (the kept
    rows stay as read); validation batches never."""

    def __init__(self, data: ImageData, loop: TrainLoopConfig, rank: int, device, session):
        import pandas as pd

        super().__init__(loop, device, session)
        self._classes = pd.Index(data.targets.classes)
        self._augment, self._rank = list(data.augment), rank

    def _collate(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x = channels_first(batch["image"])
        y = self._classes.get_indexer(np.asarray(batch[CLASS_COLUMN])).astype(np.int64)
        return torch.from_numpy(x).to(self._device), torch.from_numpy(y).to(self._device)

    def train(self, epoch: int):
        if not self._augment:
            yield from super().train(epoch)
            return
        # the same draws after a restart from a checkpoint; another stream on each rank
        generator = torch.Generator(device=self._device)
        generator.manual_seed((self._loop.seed * 100_003 + epoch) * 1_009 + self._rank)
        for x, y in super().train(epoch):
            yield augment_batch(x, self._augment, generator), y
