"""Supervised training on Ray Train: the spec, and the driver.

One job is one MLflow run (raymaas.runtime.driver): the Train controller logs each epoch's
metrics once the epoch's checkpoint is persisted (raymaas.supervised.logger); after `fit` the
driver draws the plots and hands the model to the shared publish tail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from raymaas.runtime.driver import TrainedModel
from raymaas.specs import SpecModel, TrainingJobSpec, parse_range
from raymaas.supervised.data import BUILTIN_TASKS, DataSpec, ImageData, check_files
from raymaas.supervised.loop import Selection, TrainLoopConfig
from raymaas.supervised.metrics import task_metric_names
from raymaas.supervised.models import BUILTIN_MODELS, MLPConfig, ModelSpec
from raymaas.supervised.trial import fit_in_trial, trains_in_trial
from raymaas.sweep.job import Trials


class ScalingSpec(SpecModel):
    num_workers: int | tuple[int, int] = Field(
        2,
        description="Ray Train workers (0 runs the loop in this process, for debugging), or [MIN, MAX] (or MIN:MAX): "
        "elastic, the job starts once MIN workers fit and grows to MAX as nodes join; a lost node shrinks "
        "the group and training goes on from the last checkpoint",
    )
    use_gpu: bool | Literal["auto"] = Field(
        "auto", description="auto: GPUs (NCCL) if the cluster has any, else CPUs (gloo)"
    )
    resources_per_worker: dict[str, float] = Field({"CPU": 1}, description="Ray resources each worker reserves")
    placement_timeout_s: float = Field(
        10, gt=0, description="seconds to wait for the cluster to offer the resources before failing"
    )
    resize_interval_s: float = Field(
        60,
        gt=0,
        description="elastic num_workers: how often a running group looks for room to grow (a restart from "
        "the last checkpoint with more workers)",
    )

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _gpu_choice(cls, value):
        if value in (True, False, "auto"):
            return value
        raise ValueError("must be true, false or auto")

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value):
        if isinstance(value, float) and value.is_integer():  # 2.0, as a sweep's uniform draws it
            value = int(value)
        return parse_range(value, least=0)  # 0: the loop in this process

    @property
    def min_workers(self) -> int:
        """Workers the job needs to start: all of them, or an elastic group's min (1 in local mode)."""
        return max(1, self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers)

    @property
    def max_workers(self) -> int:
        return max(1, self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers)

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    def describe_workers(self) -> str:
        return f"{self.num_workers[0]}-{self.num_workers[1]}" if self.elastic else str(self.num_workers)


class FailureSpec(SpecModel):
    max_failures: int = Field(3, ge=-1, description="worker-group restarts from the last checkpoint (-1: no limit)")


class TrainCheckpointSpec(SpecModel):
    num_to_keep: int = Field(
        2, ge=1, description="best checkpoints (by the gate metric) kept in storage, besides the newest"
    )


class SupervisedSpec(TrainingJobSpec):
    kind: Literal["supervised"] = Field("supervised", description="job kind: picks the entrypoint `raymaas train` runs")
    task: Literal["classification", "regression", "anomaly"] = Field(
        "classification",
        description="classification (a label per row), regression (one or more numbers per row) or anomaly "
        "(an autoencoder scores how unlike the training rows a row is)",
    )
    data: DataSpec = Field(default_factory=DataSpec, description="where the rows come from")
    model: ModelSpec = Field(
        default_factory=MLPConfig, description="the network: model.name picks its family, each with its own fields"
    )
    train_loop_config: TrainLoopConfig = Field(
        default_factory=TrainLoopConfig, description="passed to train_loop_per_worker"
    )
    scaling_config: ScalingSpec = Field(default_factory=ScalingSpec, description="ray.train.ScalingConfig")
    failure_config: FailureSpec = Field(default_factory=FailureSpec, description="ray.train.FailureConfig")
    checkpoint_config: TrainCheckpointSpec = Field(
        default_factory=TrainCheckpointSpec, description="ray.train.CheckpointConfig"
    )

    @model_validator(mode="after")
    def _fits_the_task(self) -> SupervisedSpec:
        task, data, loop = self.task, self.data, self.train_loop_config
        tasks = BUILTIN_TASKS.get(data.source)
        if tasks is not None and task not in tasks:
            raise ValueError(f"data.source {data.source!r} is a data set for {' or '.join(tasks)}, not {task}")
        if task == "classification" and isinstance(data.label_column, list) and len(data.label_column) > 1:
            raise ValueError("data.label_column: classification takes one label column (a list is for regression)")
        if (task == "anomaly") != (self.model.name == "autoencoder") and self.model.name in BUILTIN_MODELS:
            raise ValueError(
                "task anomaly trains model autoencoder (or a factory of yours answering a score per row)"
                if task == "anomaly"
                else f"model autoencoder is for task anomaly, not {task}"
            )
        if data.label_column is None and task != "anomaly":
            raise ValueError(f"data.label_column: a {task} job needs a label column")
        if data.normal_label is not None and (task != "anomaly" or data.label_column is None):
            raise ValueError("data.normal_label is for task anomaly, with the label_column it is a value of")
        if task == "anomaly" and data.window is not None:
            raise ValueError("task anomaly scores table rows, not windows of a series")
        if data.format == "images" and self.model.name in ("lstm", "gru"):
            raise ValueError(
                f"model {self.model.name} reads sequences, not images: an image folder trains cnn, mlp, linear or a "
                "factory of yours (given input_shape (channels, height, width))"
            )
        loss = loop.loss_name(task)
        if task == "anomaly" and loop.loss not in ("auto", "mse"):
            raise ValueError("train_loop_config.loss: task anomaly minimises the reconstruction error (mse)")
        if task != "anomaly" and (task == "classification") != (loss == "cross_entropy"):
            raise ValueError(f"train_loop_config.loss {loss!r} is not a {task} loss")
        if task != "classification" and loop.class_weight != "none":
            raise ValueError("train_loop_config.class_weight is for classification")
        logged = task_metric_names(task)
        for where, metric in (
            ("mlflow.gate_metric", self.mlflow.gate_metric),
            ("tune_config.metric", self.tune_config.metric if self.tune_config else None),
        ):
            if metric is not None and metric not in logged:
                raise ValueError(f"{where} {metric!r}: a {task} job logs {', '.join(logged)}")
        if tasks is None:  # a file source: its data checked here, where the task is known, before Ray
            check_files(data, task)
        return self

    def default_gate_metric(self, kind) -> str:
        if self.task == "anomaly":  # with labels, how well the score separates them; else how well it reconstructs
            labelled = self.data.normal_label is not None and self.data.label_column is not None
            return "val_roc_auc" if labelled else "val_reconstruction_error"
        return "val_rmse" if self.task == "regression" else kind.gate_metric


def run_training(spec: SupervisedSpec, address: str | None = None):
    """Run the job on Ray Train, track it as one MLflow run, register and gate the model;
    a raymaas.runtime.driver.JobOutcome."""
    from raymaas.kinds import get_kind
    from raymaas.runtime.driver import run_job

    return run_job(
        spec,
        get_kind("supervised"),
        address,
        prepare=lambda storage_path: _prepare(spec, storage_path),
        train=_fit,
        **_connect_options(spec),
    )


def _worker_resources(spec: SupervisedSpec) -> tuple[bool, dict[str, float], int]:
    """Whether the workers use GPUs, what each reserves, and how many there are."""
    from raymaas.runtime import cluster

    scaling = spec.scaling_config
    use_gpu = cluster.resolve_use_gpu(scaling.use_gpu)
    per_worker = dict(scaling.resources_per_worker)
    if use_gpu:
        per_worker.setdefault("GPU", 1)
    return use_gpu, per_worker, scaling.min_workers


def _run_resources(spec: SupervisedSpec) -> dict[str, float]:
    """What one run of spec reserves on the cluster: its workers' resources, all together; for a
    sweep trial that trains in its own process, that process's. Before Ray is up, use_gpu auto
    counts as CPUs only."""
    import ray

    if ray.is_initialized():
        _, per_worker, workers = _worker_resources(spec)
    else:
        scaling = spec.scaling_config
        per_worker, workers = dict(scaling.resources_per_worker), scaling.min_workers
        if scaling.use_gpu is True:
            per_worker.setdefault("GPU", 1)
    return {k: v * workers for k, v in per_worker.items()}


def _connect_options(spec: SupervisedSpec, concurrent: int = 1) -> dict:
    """cluster.connect's options for concurrent runs of spec at once."""
    import os

    from raymaas.runtime import cluster

    scaling = spec.scaling_config
    needed_cpus = concurrent * scaling.max_workers * scaling.resources_per_worker.get("CPU", 1)
    user_code = [] if spec.model.name in BUILTIN_MODELS else [cluster.package_dir_of(spec.model.name.split(":")[0])]
    return {
        # Logical CPUs for a local Ray: the workers' own, plus room for Ray Data's read
        # tasks, which would otherwise wait behind the workers for a free CPU.
        "num_cpus": max(os.cpu_count() or 1, int(np.ceil(needed_cpus)) + 2),
        "py_modules": [d for d in user_code if d],
        # torch.export (the registered model) and matplotlib (the plots): imported while Ray
        # starts and the workers train, not after.
        "warm_imports": ("torch.export", "matplotlib.pyplot"),
    }


def _prepare(spec: SupervisedSpec, storage_path: str):
    """Once Ray is up and before the run exists: the resources are there, the data is read."""
    from raymaas.runtime import cluster
    from raymaas.supervised.data import prepare_data

    scaling = spec.scaling_config
    use_gpu, per_worker, workers = _worker_resources(spec)
    need = {k: v * workers for k, v in per_worker.items()}
    # An elastic group asks the autoscaler for its max itself, from the moment it starts.
    cluster.wait_for_resources(
        need, scaling.placement_timeout_s, bundles=[per_worker] * workers, hold=not scaling.elastic
    )
    data = prepare_data(spec.data, spec.train_loop_config.seed, spec.task)
    tags = {
        "task": spec.task,
        **data.notes,
        "num_workers": scaling.describe_workers(),
        "device": "cuda" if use_gpu else "cpu",
        "torch_backend": "nccl" if use_gpu else "gloo",
    }
    return (data, use_gpu, per_worker), tags


def _fit(job, prepared):
    """TorchTrainer.fit, then the model of its best epoch's checkpoint, with its plots."""
    return _model_of(job, prepared, _run_trainer(job, prepared))


def _selection(job) -> Selection:
    """What the best epoch is chosen by: the job's gate metric, in its direction."""
    gate = job.spec.gate(job.kind)
    return Selection(metric=gate.metric, higher_is_better=gate.higher_is_better)


def _stored_result(job):
    """What Ray Train stored of this run's earlier attempts (its checkpoints and their reported
    metrics), or None for a first attempt."""
    import ray.train

    try:
        return ray.train.Result.from_path(f"{str(job.storage_path).rstrip('/')}/{job.run.run_name}")
    except (RuntimeError, OSError, ValueError):  # no folder, or no checkpoint snapshot in it yet
        return None


def _worker_config(job, prepared) -> dict:
    """The train_loop_config every worker gets (loop.WorkerConfig, as JSON)."""
    from raymaas.supervised.loop import WorkerConfig

    spec: SupervisedSpec = job.spec
    return WorkerConfig(
        train_loop_config=spec.train_loop_config, model=spec.model, data=prepared[0].worker, selection=_selection(job)
    ).model_dump(mode="json")


def _run_trainer(job, prepared, in_tune: bool = False):
    """TorchTrainer.fit; the checkpoint of its best epoch by the gate metric (Ray Train keeps
    the best checkpoints by it, and the newest for resuming). in_tune: inside a sweep's trial,
    each epoch's metrics also go to Tune (its scheduler compares trials on them)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from raymaas.runtime.lifecycle import call_interruptibly
    from raymaas.supervised.logger import log_unlogged_epochs, make_mlflow_callback
    from raymaas.supervised.loop import train_loop_per_worker

    spec: SupervisedSpec = job.spec
    data, use_gpu, per_worker = prepared
    selection = _selection(job)
    config = _worker_config(job, prepared)
    callbacks = [make_mlflow_callback(job.tracking_uri, job.run_id)]
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.scaling_config.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=per_worker,
            elastic_resize_monitor_interval_s=spec.scaling_config.resize_interval_s,
        ),
        run_config=ray.train.RunConfig(
            name=job.run.run_name,
            storage_path=job.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=spec.failure_config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.checkpoint_config.num_to_keep,
                checkpoint_score_attribute=selection.metric,
                checkpoint_score_order="max" if selection.higher_is_better else "min",
            ),
            callbacks=callbacks,
        ),
        datasets=data.datasets,
    )
    # A resumed run: an epoch persisted but never logged before the stop (the controller logs
    # after persisting) is logged now, from the stored checkpoints, before this attempt's next
    # epoch can evict its checkpoint (num_to_keep) and its metrics with it.
    stored = _stored_result(job)
    if stored is not None:
        log_unlogged_epochs(job.client, job.run_id, stored)
    if in_tune:  # a trial's progress is the sweep driver's to print
        result = trainer.fit()
    else:
        with _EpochPrinter(job.client, job.run_id, spec.train_loop_config.epochs, elastic=spec.scaling_config.elastic):
            result = call_interruptibly(trainer.fit)
    log_unlogged_epochs(job.client, job.run_id, result)
    last = result.metrics or {}
    stopping = spec.train_loop_config.early_stopping
    if (
        not in_tune
        and stopping is not None
        and "epoch" in last
        and int(last["epoch"]) + 1 < spec.train_loop_config.epochs
    ):
        job.client.set_tag(job.run_id, "raymaas.stopped_early", f"after epoch {int(last['epoch']) + 1}")
        print(
            f"raymaas: stopped early after epoch {int(last['epoch']) + 1} of {spec.train_loop_config.epochs}: "
            f"{selection.metric} improved by no more than {stopping.min_delta:g} in {stopping.patience} epochs",
            flush=True,
        )
    return _best_checkpoint(result, selection)


def _best_checkpoint(result, selection: Selection):
    """The kept checkpoint with the best finite value of the selection metric (the newest when
    no checkpoint has one)."""
    import math

    scored = [
        (checkpoint, float(metrics[selection.metric]))
        for checkpoint, metrics in (result.best_checkpoints or [])
        if isinstance(metrics.get(selection.metric), (int, float)) and math.isfinite(metrics[selection.metric])
    ]
    if not scored:
        return result.checkpoint
    pick = max if selection.higher_is_better else min
    return pick(scored, key=lambda pair: pair[1])[0]


def _model_of(job, prepared, checkpoint):
    """The trained model of a checkpoint of job, with its plots and tables."""
    import torch

    from raymaas.supervised.loop import STATE_FILE
    from raymaas.supervised.models import build_model
    from raymaas.tracking import plots
    from raymaas.tracking.publish import log_as_anomaly_scorer, log_as_classifier, log_as_regressor

    spec: SupervisedSpec = job.spec
    data = prepared[0]
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    worker = data.worker
    targets = worker.targets
    # the Standardize layer's shape: one per feature, or per channel (a sequence's last axis; an
    # image's first, held as (channels, 1, 1))
    statistics = (worker.input_shape[0], 1, 1) if isinstance(worker, ImageData) else worker.input_shape[-1]
    regression = targets.task == "regression"
    encoding = getattr(worker, "encoding", None)
    module = build_model(
        spec.model,
        worker.input_shape,
        targets.n_outputs,
        np.zeros(statistics),
        np.ones(statistics),
        np.zeros(targets.n_outputs) if regression else None,
        np.ones(targets.n_outputs) if regression else None,
        encoding=encoding,
    )
    module.load_state_dict(state["model"])

    loss_name = spec.train_loop_config.loss_name(spec.task).replace("_", "-")
    history = {k: job.client.get_metric_history(job.run_id, k) for k in ("train_loss", "val_loss")}
    title = f"{spec.name}: validation, epoch {state['epoch']}"
    figures = {
        "plots/loss_curve.png": plots.curves_figure(
            {k: ([m.step for m in v], [m.value for m in v]) for k, v in history.items()},
            "epoch",
            loss_name,
            f"{spec.name}: loss",
        ),
    }
    tables = {}
    anomaly = targets.task == "anomaly"
    if anomaly:
        pass  # the scores' threshold and distribution below, once the training rows are read
    elif regression:
        actual, predicted = _validation_predictions(module, data, spec)
        names = targets.names or ["target"]
        figures["plots/predicted_vs_actual.png"] = plots.predicted_vs_actual_figure(actual, predicted, names, title)
        figures["plots/residuals.png"] = plots.residuals_figure(actual, predicted, names, title)
    else:
        labels = [str(c) for c in targets.classes]
        figures["plots/confusion_matrix.png"] = plots.confusion_matrix_figure(state["confusion"], title, labels)
        tables["per_class_metrics.json"] = per_class_table(state["confusion"], labels)
    x_train, _ = _split_rows(data, spec, "train", PROFILE_ROWS)
    x_val, y_val = _split_rows(data, spec, "validation", PROFILE_ROWS)
    threshold = None
    if anomaly:
        # is_anomaly: a score above the training split's (normal rows') anomaly_quantile
        threshold = float(np.quantile(_forward(module, x_train).reshape(-1), spec.model.anomaly_quantile))
        figures["plots/anomaly_scores.png"] = _score_figure(module, x_val, y_val, targets, threshold, title)
    # the profile keeps the missing numbers (their share is part of what served rows drift from)
    try:
        profile = reference_profile(module, data, x_train, x_val)
    except ValueError as err:  # too wide to profile: the model is served without drift
        print(f"no reference profile: {err}", flush=True)
        profile = None
    gate = spec.gate(job.kind)
    if gate.metric not in state["metrics"]:
        raise ValueError(
            f"mlflow.gate_metric {gate.metric!r} was not logged by this job "
            f"(it logged {', '.join(k for k in state['metrics'] if k.startswith('val_'))})"
        )
    value = float(state["metrics"][gate.metric])
    epochs = int(state["epoch"]) + 1  # the registered epoch, counted from 1 as the progress lines count
    trained_epochs = max([epochs, *(m.step + 1 for m in history["val_loss"])])
    # the epoch registered: its validation metrics, as best_<metric>, beside each epoch's
    from raymaas.tracking.runs import log_metrics

    best = {f"best_{k}": float(v) for k, v in state["metrics"].items() if k.startswith("val_")}
    extra = {"anomaly_threshold": threshold} if anomaly else {}
    log_metrics(job.client, job.run_id, {"best_epoch": epochs, **best, **data.metrics, **extra}, step=0)
    summary = f"{gate.metric} {value:.4f} after {epochs} epochs"
    if epochs < trained_epochs:
        summary = f"{gate.metric} {value:.4f} at epoch {epochs}, the best of {trained_epochs}"
    if anomaly:
        summary += f"; is_anomaly above {threshold:.4g} (the training scores' {spec.model.anomaly_quantile:g} quantile)"
    if "val_rmse_naive" in data.metrics:  # a forecast: the baseline it must beat
        summary += f" (the naive forecast's val_rmse: {data.metrics['val_rmse_naive']:.4f})"
    return TrainedModel(
        module=module,
        example=np.asarray(data.example, dtype=np.float32),
        gate_value=value,
        summary=summary,
        feature_columns=data.feature_columns,
        figures=figures,
        dicts=tables,
        targets=targets,
        profile=profile,
        baseline=explain_baseline(x_train, encoding),  # what explanations measure against
        explain_rows=_filled(x_val[:IMPORTANCE_ROWS], encoding),
        details={"epochs": trained_epochs, "best_epoch": epochs},
        column_types=data.column_types,
        encoding=encoding,
        log_model=(
            log_as_anomaly_scorer(threshold)
            if anomaly
            else log_as_regressor(targets.n_outputs)
            if regression
            else log_as_classifier(targets.classes)
        ),
        classifier=not (regression or anomaly),
    )


def explain_baseline(x_train: np.ndarray, encoding: dict | None) -> np.ndarray:
    """The input explanations measure against: the training split's mean row; with an
    encoding, each numeric column's mean over its known values and each categorical column's
    most frequent category (code 1: a mean of codes is no category)."""
    if encoding is None:
        return x_train.mean(axis=0)
    from raymaas.modelcode.tabular import TabularEncoding

    columns = TabularEncoding.from_dict(encoding).columns
    return np.asarray(
        [1.0 if c.kind == "categorical" else c.mean for c in columns],
        dtype=np.float32,
    )


def _filled(x: np.ndarray, encoding: dict | None) -> np.ndarray:
    """Encoded rows with each missing number replaced by what the model fills in (its fill,
    else the training mean): what the logged importance measures (a path through NaN has no
    gradient)."""
    if encoding is None:
        return x
    from raymaas.modelcode.tabular import TabularEncoding

    return TabularEncoding.from_dict(encoding).filled(x)


PROFILE_ROWS = 20_000  # training and validation rows the reference profile is built from, at most
PROFILE_IMAGE_BYTES = 64 * 2**20  # an image folder's: as many images as this many bytes of pixels, at most
IMPORTANCE_ROWS = 256  # validation rows the logged feature importance is averaged over


def per_class_table(confusion, labels: list[str]) -> dict:
    """Precision, recall, F1 and support of each class, in MLflow's table layout (columns + data)."""
    from raymaas.supervised.metrics import per_class_scores

    scores = per_class_scores(np.asarray(confusion))
    rows = [
        [
            label,
            float(scores["precision"][i]),
            float(scores["recall"][i]),
            float(scores["f1"][i]),
            int(scores["support"][i]),
        ]
        for i, label in enumerate(labels)
    ]
    return {"columns": ["class", "precision", "recall", "f1", "support"], "data": rows}


def _split_rows(data, spec, split: str, limit: int):
    """Up to limit rows of a split ("train" or "validation"): (features as float32, targets as
    they are: class labels of any type, or values)."""
    from raymaas.supervised.data import SequenceData, load_builtin

    worker = data.worker
    if isinstance(worker, ImageData):
        from raymaas.supervised.images import dataset_rows

        # images are wide rows: as many as PROFILE_IMAGE_BYTES of float32 pixels hold
        per_image = 4 * int(np.prod(worker.input_shape))
        return dataset_rows(data.datasets[split], max(1, min(limit, PROFILE_IMAGE_BYTES // per_image)))
    if split in data.datasets:
        frame = data.datasets[split].limit(limit).to_pandas()
        encoding = getattr(worker, "encoding", None)
        if encoding is not None:
            from raymaas.modelcode.tabular import TabularEncoding

            x = TabularEncoding.from_dict(encoding).encode(frame[worker.feature_columns])
        else:
            x = frame[worker.feature_columns].to_numpy(dtype=np.float32)
        y = frame[worker.label_columns].to_numpy()
        return x, y
    if isinstance(worker, SequenceData):
        from raymaas.supervised.sequences import read_sequences

        rows = read_sequences(spec.data, spec.task, spec.train_loop_config.seed)
    else:
        rows = load_builtin(spec.data, spec.train_loop_config.seed, spec.task)
    if split == "train":
        return rows.x_train[:limit], rows.y_train[:limit]
    return rows.x_val[:limit], rows.y_val[:limit]


def _forward(module, x):
    import torch

    with torch.inference_mode():
        return module.eval()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _validation_predictions(module, data, spec, limit: int = 5000):
    """Up to limit validation rows' targets and the trained model's predictions, for the plots."""
    x, y = _split_rows(data, spec, "validation", limit)
    predicted = _forward(module, x)
    return y.astype(np.float32).reshape(len(y), -1), predicted.reshape(len(predicted), -1)


def reference_profile(module, data, x_train, x_val) -> dict:
    """The reference profile logged with the model (raymaas.monitoring.profile): the training
    split's inputs and the model's predictions on the validation split's, as the served model
    answers them (class labels, or values in the targets' units)."""
    from raymaas.monitoring.profile import build_profile

    targets = data.worker.targets
    out = _forward(module, x_val)
    rows, categorical = _drift_rows(x_train, getattr(data.worker, "encoding", None))
    if targets.task == "anomaly":  # the scores' distribution, as served answers are watched
        return build_profile(
            rows, data.feature_columns, out, "regression", output_names=["anomaly_score"], categorical=categorical
        )
    if targets.task == "regression":
        return build_profile(
            rows, data.feature_columns, out, "regression", output_names=targets.names or None, categorical=categorical
        )
    classes = targets.classes
    labels = [classes[i] for i in out.argmax(axis=1)]
    return build_profile(rows, data.feature_columns, labels, "classification", classes=classes, categorical=categorical)


def _score_figure(module, x_val, y_val, targets, threshold: float, title: str):
    """The validation rows' anomaly scores as histograms (normal and anomalous rows apart when
    labelled), with the threshold."""
    import matplotlib.pyplot as plt

    scores = _forward(module, x_val).reshape(-1)
    figure, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0.0, float(np.quantile(scores, 0.995)) * 1.1 + 1e-9, 50)
    if targets.labelled:
        from raymaas.supervised.data import anomaly_flags

        flags = anomaly_flags(y_val[:, 0], targets.normal)
        ax.hist(scores[flags == 0], bins=bins, alpha=0.6, label=f"{targets.label} = {targets.normal}")
        ax.hist(scores[flags == 1], bins=bins, alpha=0.6, label="other labels")
        ax.legend()
    else:
        ax.hist(scores, bins=bins)
    ax.axvline(threshold, color="black", linestyle="--")
    ax.set_xlabel("anomaly score (reconstruction error)")
    ax.set_ylabel("rows")
    ax.set_title(title)
    figure.tight_layout()
    return figure


def _drift_rows(x: np.ndarray, encoding: dict | None) -> tuple[np.ndarray, dict | None]:
    """Encoded training rows as the reference profile bins them: a categorical column's code
    k (1 + its category's rank) as drift code k - 1, one past the profiled categories as
    unseen, 0 (a null) as missing; and each categorical column's categories."""
    if encoding is None:
        return x, None
    from raymaas.modelcode.tabular import TabularEncoding
    from raymaas.monitoring.profile import MAX_CATEGORIES

    columns = TabularEncoding.from_dict(encoding).columns
    rows = np.asarray(x, dtype=np.float64).copy()
    categorical = {}
    for j, c in enumerate(columns):
        if c.kind == "categorical":
            kept = (c.categories or [])[:MAX_CATEGORIES]
            codes = rows[:, j] - 1
            codes[codes >= len(kept)] = len(kept)
            codes[codes < 0] = np.nan
            rows[:, j] = codes
            categorical[c.name] = kept
    return rows, categorical


class _EpochPrinter:
    """Prints each epoch as the Train controller logs it to MLflow: the job's progress lines,
    in the job's own output (Ray's processes print to Ray's log folder)."""

    KEYS = (
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_rmse",
        "val_r2",
        "val_reconstruction_error",
        "val_roc_auc",
        "workers",
        "epoch_seconds",
    )

    def __init__(self, client, run_id: str, epochs: int, interval_s: float = 1.0, elastic: bool = False):
        import threading

        self.client, self.run_id, self.epochs, self.interval_s = client, run_id, epochs, interval_s
        self.elastic = elastic  # the group's size changes: each epoch says it
        self.printed = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="raymaas-epochs", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._print_new()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._print_new()
            except Exception:  # a busy store: the next poll catches up
                pass

    def _print_new(self) -> None:
        # One store call a poll; the other metrics only once an epoch is there (the logger
        # writes an epoch's metrics in one batch).
        done = {m.step: m.value for m in self.client.get_metric_history(self.run_id, "val_loss")}
        new = sorted(e for e in done if e > self.printed)
        if not new:
            return
        history = {"val_loss": done}
        for k in self.KEYS:
            if k != "val_loss":
                history[k] = {m.step: m.value for m in self.client.get_metric_history(self.run_id, k)}
        for epoch in new:
            values = {k: history[k].get(epoch) for k in self.KEYS}
            shown = "  ".join(
                f"{k} {v:.4g}" for k, v in values.items() if v is not None and k not in ("epoch_seconds", "workers")
            )
            if values["workers"] is not None and self.elastic:
                shown += f"  on {values['workers']:.0f} worker" + ("s" if values["workers"] != 1 else "")
            seconds = values["epoch_seconds"]
            print(
                f"raymaas: epoch {epoch + 1}/{self.epochs}  {shown}" + (f"  ({seconds:.2f}s)" if seconds else ""),
                flush=True,
            )
            self.printed = epoch


def _budget(spec: SupervisedSpec) -> int:
    return spec.train_loop_config.epochs


def _trial_fit(job, prepared) -> str | None:
    # One fixed worker: the loop runs in the trial's own process, for which the sweep reserved
    # the worker's resources (by the trial's own spec: raymaas.sweep.job.trial_resources).
    if trains_in_trial(job.spec):
        return fit_in_trial(job, prepared, _selection(job), _worker_config(job, prepared))
    checkpoint = _run_trainer(job, prepared, in_tune=True)
    return checkpoint.path if checkpoint is not None else None


def _trial_model(job, prepared, path: str):
    """The model of a sweep's best trial, from its checkpoint at path in the job's storage."""
    import pyarrow.fs
    from ray.train import Checkpoint

    filesystem = None
    if "://" in job.storage_path:
        filesystem, _ = pyarrow.fs.FileSystem.from_uri(job.storage_path)
    return _model_of(job, prepared, Checkpoint(path, filesystem=filesystem))


# What a sweep of supervised specs runs per trial (raymaas.sweep.job); named in raymaas.kinds.
TRIALS = Trials(
    connect_options=_connect_options,
    training=_run_resources,
    budget=_budget,
    prepare=_prepare,
    fit=_trial_fit,
    model_of=_trial_model,
    in_process=trains_in_trial,  # else a Train run of the trial's own
    max_failures=lambda spec: spec.failure_config.max_failures,  # where the trial's process trains
)
