"""The driver every job kind runs: connect, one MLflow run, train, publish, end.

    run_job(spec, kind, address, prepare=..., train=...)
      JobDriver.connect(...)         open the MLflow store while Ray starts, connect (a local
                                     Ray, or the cluster at address / RAY_ADDRESS), refuse a
                                     store or checkpoint folder only one node reaches (exit 2)
      prepare(storage_path)          the kind's own checks and data, before any run exists
      driver.start_run               the job's one run: created, or continued by run name
      train(job)                     inside final_status: FINISHED, FAILED or KILLED, never RUNNING
      publish_model(...)             spec, plots, model, register, gate (raymaas.tracking.publish)

The skeleton (JobDriver.connect, start_run, final_status) is raymaas.runtime.lifecycle's,
shared with sweeps (raymaas.sweep.job) and batch scoring (raymaas.batch.job).

A kind supplies prepare and train and gets a JobOutcome back; see raymaas.supervised.job and
raymaas.rl.job. The kind's row in raymaas.kinds names its gate metric and direction; a spec
may name another (mlflow.gate_metric, JobSpec.gate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    from raymaas import tracking
    from raymaas.runtime.lifecycle import JobDriver, final_status
    from raymaas.tracking.publish import publish_model

    gate = spec.gate(kind)
    with JobDriver.connect(
        address,
        logs="workers, Train controller",
        warm_imports=warm_imports,
        num_cpus=num_cpus,
        py_modules=list(py_modules),
        prestart_workers=prestart_workers,
    ) as driver:
        prepared, tags = prepare(driver.storage_path)
        run_name = spec.mlflow.run_name or tracking.new_run_name(spec.name)
        job_run = driver.start_run(
            spec.experiment_name,
            run_name,
            params=spec.tracked_params(),
            tags={"raymaas.job_kind": kind.name, **tags},
        )
        job = Job(spec, kind, driver.client, job_run, driver.tracking_uri, driver.storage_path)
        with final_status(driver.client, job_run.run_id) as status:
            driver.warming.result()
            trained = train(job, prepared)
            published = publish_model(driver.client, job_run.run_id, spec, gate, trained)
            status.set("FINISHED")
        for fn in job.deferred:
            fn()
    return JobOutcome.of(job_run.run_id, run_name, job_run.experiment_id, driver.tracking_uri, published, gate, trained)
