"""The one driver skeleton every job kind runs: connect, one MLflow run, train, publish, end.

    run_job(spec, kind, address, prepare=..., train=...)
      open the MLflow store          (in a thread, while Ray starts)
      cluster.connect(...)           a local Ray, or the cluster at address / RAY_ADDRESS
      check_multi_node_storage       a store or checkpoint folder only one node reaches: exit 2
      prepare(storage_path)          the kind's own checks and data, before any run exists
      start_job_run                  the job's one run: created, or continued by run name
      train(job)                     inside final_status: FINISHED, FAILED or KILLED, never RUNNING
      publish_model(...)             spec, plots, model, register, gate (raymaas.tracking.publish)

A kind supplies prepare and train and gets a JobOutcome back; see raymaas.supervised.job and
raymaas.rl.job. The kind's row in raymaas.kinds names its gate metric and direction; a spec
may name another (mlflow.gate_metric, JobSpec.gate).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raymaas import paths
from raymaas.kinds import JobKind
from raymaas.specs import JobSpec


@dataclass(frozen=True)
class Job:
    """What a kind's train callback gets: its spec, its run, where to keep checkpoints."""

    spec: Any  # the kind's JobSpec subclass
    kind: JobKind
    client: Any  # mlflow.tracking.MlflowClient
    run: Any  # raymaas.tracking.JobRun
    tracking_uri: str
    storage_path: str
    deferred: list[Callable[[], None]] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def after_publish(self, fn: Callable[[], None]) -> None:
        """Call fn once the model is registered (e.g. stopping an RLlib algorithm it needed)."""
        self.deferred.append(fn)


@dataclass
class TrainedModel:
    """What a kind's training hands to the publish tail."""

    module: Any  # torch.nn.Module: its forward maps a float32 batch to class scores (or regression outputs)
    example: Any  # np.ndarray: a few input rows (the signature and MLflow's input example)
    gate_value: float  # the kind's gate metric for this model
    summary: str  # what the job's last lines say of it, e.g. "val_accuracy 0.97 after 20 epochs"
    feature_columns: list[str] | None = None  # a column signature instead of a tensor one
    figures: dict[str, Any] = field(default_factory=dict)  # artifact path -> matplotlib figure
    dicts: dict[str, dict] = field(default_factory=dict)  # artifact path -> JSON content
    artifact_dirs: dict[str, str] = field(default_factory=dict)  # artifact folder -> local folder
    check: Callable[[str], None] | None = None  # raises to refuse a logged model URI before registration
    targets: Any = None  # raymaas.supervised.data.Targets: the class labels or regression outputs (None: class ids)
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific facts for the outcome
    profile: dict | None = None  # the reference profile logged with the model (raymaas.monitoring.profile)
    baseline: Any = None  # np.ndarray, one input row: what explanations measure against (the training mean)
    explain_rows: Any = None  # np.ndarray of validation rows: the logged feature importance is averaged over them
    # a model of named columns: each one's signature type as the training table holds it
    # (raymaas.supervised.data.example_rows); None: `double` for every column, or a tensor signature
    column_types: dict[str, str] | None = None
    # categorical columns' vocabularies and imputed columns (raymaas.modelcode.tabular, to_dict())
    encoding: dict | None = None
    # logs this model to the active MLflow run, returning MLflow's ModelInfo: the kind picks its
    # pyfunc class and signature (raymaas.tracking.publish.log_as_classifier, log_as_regressor)
    log_model: Callable[[TrainedModel], Any] | None = None
    classifier: bool = True  # its outputs are class scores (explanations follow the predicted class), else values


@dataclass(frozen=True)
class JobOutcome:
    """The end of a job that registered a model."""

    run_id: str
    run_name: str
    experiment_id: str
    tracking_uri: str
    model_name: str
    version: str
    gate_metric: str
    gate_value: float
    promoted: bool
    promotion_reason: str
    summary: str
    details: dict[str, Any]

    @classmethod
    def of(
        cls, run_id: str, run_name: str, experiment_id: str, tracking_uri: str, published, gate, trained
    ) -> JobOutcome:
        """The outcome of trained (a TrainedModel) published (tracking.publish.Publication) under gate."""
        return cls(
            run_id=run_id,
            run_name=run_name,
            experiment_id=experiment_id,
            tracking_uri=tracking_uri,
            model_name=published.model_name,
            version=published.version,
            gate_metric=gate.metric,
            gate_value=trained.gate_value,
            promoted=published.promoted,
            promotion_reason=published.reason,
            summary=trained.summary,
            details=trained.details,
        )

    @property
    def run_url(self) -> str | None:
        """The run's page on a tracking server; None for a local store."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return None

    def lines(self) -> list[str]:
        """What the job prints at its end: the model, the run, and where to look at it."""
        verdict = "champion" if self.promoted else "candidate"
        out = [
            f"raymaas: {self.model_name} version {self.version}: {self.summary}; {verdict} ({self.promotion_reason})",
            f"raymaas: run {self.run_id} in {self.tracking_uri}",
        ]
        url = self.run_url
        out.append(
            f"raymaas: see it at {url}"
            if url
            else f"raymaas: see it with  mlflow ui --backend-store-uri {self.tracking_uri}"
        )
        return out


def run_job(
    spec: JobSpec,
    kind: JobKind,
    address: str | None,
    *,
    train: Callable[[Job, Any], TrainedModel],
    prepare: Callable[[str], tuple[Any, dict[str, str]]] = lambda storage_path: (None, {}),
    num_cpus: int | None = None,
    py_modules: Sequence[str] = (),
    prestart_workers: bool = True,
    warm_imports: Sequence[str] = (),
) -> JobOutcome:
    """Run one job of kind: train(job, prepared) inside its one MLflow run, then publish.

    prepare(storage_path) runs once Ray is up and before the run exists (resource waits, data
    reading: what fails there leaves no run behind); it returns the state train gets and the
    run's tags. num_cpus, py_modules and prestart_workers go to cluster.connect; warm_imports
    are imported in a thread while Ray starts.
    """
    import ray

    from raymaas import tracking
    from raymaas.runtime import cluster
    from raymaas.runtime.lifecycle import final_status, in_background
    from raymaas.tracking.publish import publish_model

    gate = spec.gate(kind)
    tracking_uri = paths.tracking_uri()
    # While Ray starts (seconds, mostly waiting on its processes): open the store (a new
    # SQLite store runs MLflow's migrations) and import what the kind will import anyway.
    opening = in_background(tracking.get_client, tracking_uri, name="raymaas-mlflow")
    # One thread, in order; waited for before train: torch's packages import each other in
    # circles, and the same package imported by two threads at once can come back half
    # initialised ("cannot import name 'IndentedBuffer' from partially initialized module
    # 'torch._inductor.utils'", seen once in an RL job).
    warming = in_background(lambda: [importlib.import_module(m) for m in warm_imports], name="raymaas-imports")
    # The job prints its own progress; what Ray's processes print stays in Ray's log folder.
    cluster.connect(
        address, num_cpus=num_cpus, py_modules=list(py_modules), prestart_workers=prestart_workers, log_to_driver=False
    )
    print(f"raymaas: Ray's logs (workers, Train controller) in {cluster.ray_logs_dir()}", flush=True)
    client = opening.result()
    storage_path = paths.checkpoint_storage()
    # Several nodes: refuse a SQLite store or a node-local checkpoint folder before anything starts.
    cluster.check_multi_node_storage(tracking_uri, storage_path)
    prepared, tags = prepare(storage_path)

    run_name = spec.mlflow.run_name or tracking.new_run_name(spec.name)
    job_run = tracking.start_job_run(
        client,
        spec.experiment_name,
        run_name,
        params=spec.tracked_params(),
        tags={"raymaas.job_kind": kind.name, "ray_version": ray.__version__, **tags},
    )
    print(
        f"raymaas: MLflow run {job_run.run_id} ({run_name}) in {tracking_uri}"
        + (" [continuing]" if job_run.resumed else ""),
        flush=True,
    )
    job = Job(spec, kind, client, job_run, tracking_uri, storage_path)
    try:
        with final_status(client, job_run.run_id) as status:
            warming.result()
            trained = train(job, prepared)
            published = publish_model(client, job_run.run_id, spec, gate, trained)
            status.set("FINISHED")
        for fn in job.deferred:
            fn()
    finally:
        # Now, not at interpreter exit: there Ray's teardown took 10 s after a Train job (1.5 s here).
        ray.shutdown()
    return JobOutcome.of(job_run.run_id, run_name, job_run.experiment_id, tracking_uri, published, gate, trained)
