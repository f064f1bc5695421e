"""The args of the Serve applications (`serve/config.yaml`'s `args`): a model application's
models, autoscaling, batching and limits, and the index application's."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from raymaas.model_refs import CHAMPION, ModelRef, ModelRefError
from raymaas.monitoring.rollout import RolloutPolicy
from raymaas.serving.protocol import MODELS_PREFIX
from raymaas.specs import SpecModel


class AutoscalingSpec(SpecModel):
    min_replicas: int = Field(1, ge=0, description="replicas kept when idle")
    max_replicas: int = Field(2, ge=1, description="replicas at most, under load")
    target_ongoing_requests: float = Field(
        8, gt=0, description="requests in flight per replica that Serve aims for (batching wants a queue)"
    )
    upscale_delay_s: float = Field(3, ge=0, description="seconds of load above target before adding a replica")
    downscale_delay_s: float = Field(60, ge=0, description="seconds of load below target before removing a replica")


class BatchingSpec(SpecModel):
    max_batch_size: int = Field(32, ge=1, description="requests run as one predict call at most")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="seconds the first request of a batch waits for others (0: batch what is queued when the model is free)",
    )


class DriftSpec(SpecModel):
    psi_threshold: float = Field(0.2, gt=0, description="population stability index at which a feature may be flagged")
    ks_pvalue: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Kolmogorov-Smirnov p-value below which a feature may be flagged (both must agree)",
    )
    min_rows: int = Field(100, ge=1, description="rows the window needs before anything is flagged")


class PayloadLoggingSpec(SpecModel):
    enabled: bool = Field(False, description="write a sample of requests and responses to Parquet (off: none kept)")
    sample_rate: float = Field(0.1, gt=0, le=1, description="share of predictions written")
    mask_columns: list[str] = Field([], description="input columns replaced by '***' before writing")
    flush_interval_s: float = Field(30.0, gt=0, description="seconds between Parquet files of a replica")


class MonitoringSpec(SpecModel):
    enabled: bool = Field(True, description="Prometheus metrics, drift and live performance (GET /models/NAME/monitor)")
    window: int = Field(1000, ge=10, description="recent input rows each replica keeps (as bins, not values) for drift")
    drift: DriftSpec = Field(default_factory=DriftSpec, description="when a feature counts as drifted")
    feedback_window: int = Field(1000, ge=1, description="labelled predictions the live metrics are computed over")
    feedback_ttl_s: float = Field(
        3600.0, gt=0, description="seconds a prediction waits for its label; later feedback is 'expired'"
    )
    max_pending_predictions: int = Field(100_000, ge=1, description="predictions kept waiting for labels at most")
    push_interval_s: float = Field(1.0, gt=0, description="seconds between a replica's reports to the monitor")
    log_interval_s: float = Field(60.0, gt=0, description="seconds between logs to the MLflow monitoring run")
    payload_logging: PayloadLoggingSpec = Field(default_factory=PayloadLoggingSpec, description="sampled payloads")


class ExplainSpec(SpecModel):
    """POST /models/NAME/explain: attributions of each row's answer, computed by an Explainer
    deployment of the application's own, so that explanations never take a prediction's queue,
    and give way to predictions for the CPU: the explainer's process runs at `niceness` on at
    most the threads it reserves (raymaas.serving.explaining)."""

    enabled: bool = Field(True, description="answer POST /models/NAME/explain")
    max_ongoing_requests: int = Field(
        8, ge=1, description="explain requests an explainer replica holds at once (computed a batch at a time)"
    )
    max_queued_requests: int = Field(
        16, ge=1, description="explain requests an endpoint replica lets wait beyond those; more get 503 at once"
    )
    max_rows: int = Field(64, ge=1, description="rows one explain request may ask for; more get 413")
    n_steps: int = Field(50, ge=2, le=1000, description="Integrated Gradients steps (the platform's torch models)")
    nsamples: int = Field(200, ge=10, le=10_000, description="Kernel SHAP model evaluations per row (other models)")
    background_rows: int = Field(32, ge=1, le=1000, description="Kernel SHAP background rows")
    max_batch_size: int = Field(8, ge=1, description="explain requests of one model version computed together")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="seconds a batch waits to fill (0: the next batch is what queued meanwhile)"
    )
    min_replicas: int = Field(
        0, ge=0, description="explainer replicas kept when idle (0: started by the first request)"
    )
    max_replicas: int = Field(1, ge=1, description="explainer replicas at most")
    num_cpus: float = Field(0.25, ge=0, description="Ray CPUs of an explainer replica")
    torch_threads: int = Field(
        1,
        ge=1,
        description="intra-op threads of an explainer replica: torch's and the BLAS/OpenMP pools' (numpy, "
        "scikit-learn); at most the CPUs it reserves, num_cpus rounded down (1 below 1)",
    )
    niceness: int = Field(
        19,
        ge=0,
        le=19,
        description="the nice value of an explainer replica's process (19: the lowest CPU priority), so that "
        "predictions on the same machine get the CPU first; 0 leaves it as Ray started it",
    )

    @model_validator(mode="after")
    def _threads_within_reserved(self):
        # Threads beyond the reserved CPUs take CPU that Ray promised to whatever shares the node:
        # the prediction replicas, the proxy (issue 32: /invocations slowed while /explain ran).
        if self.torch_threads > self.reserved_threads:
            raise ValueError(
                f"explain.torch_threads {self.torch_threads} is more than an explainer replica reserves: "
                f"explain.num_cpus {self.num_cpus:g} allows {self.reserved_threads}; raise num_cpus or lower torch_threads"
            )
        return self

    @property
    def reserved_threads(self) -> int:
        """The threads num_cpus pays for: its whole CPUs, at least 1 (as Ray sets OMP_NUM_THREADS)."""
        return max(1, math.floor(self.num_cpus))


class RolloutSpec(SpecModel):
    """Rollouts started with `raymaas rollout NAME` (their state and policy are in the registry:
    raymaas.tracking.rollout): each replica loads the candidate beside the champion and splits
    the requests (raymaas.serving.routing); the monitor hub judges the two versions' live
    figures and advances, promotes or rolls back (raymaas.monitoring.rollout)."""

    enabled: bool = Field(True, description="follow rollouts of the champion started in the registry")
    interval_s: float = Field(10.0, gt=0, description="seconds between the monitor hub's decisions on a rollout")
    max_shadow_queued: int = Field(
        16,
        ge=1,
        description="shadow copies a replica holds waiting for its model to be idle (copies run only then, so "
        "they never delay a request); more are dropped and counted",
    )
    policy: RolloutPolicy | None = Field(
        None,
        description="the evidence and guards this application judges every rollout by, instead of those "
        "`raymaas rollout` stored with it (its steps stay the rollout's)",
    )


class ModelEndpointSpec(SpecModel):
    name: str = Field(..., description="registered model name in the MLflow Model Registry")
    alias: str | None = Field(None, description="registry alias to follow (default: champion unless version is set)")
    version: str | None = Field(None, description="a fixed model version instead of an alias")
    reference: str | None = Field(
        None,
        description="drift reference for a model logged without a profile: a profile (.json) or reference rows (.parquet, .csv)",
    )
    background: str | None = Field(
        None,
        description="Kernel SHAP background for a model that is not the platform's: rows (.parquet, .csv) or a profile "
        "(.json); default: the model's reference profile, else the reference file",
    )

    @model_validator(mode="before")
    @classmethod
    def _version_as_text(cls, data):
        if isinstance(data, dict) and isinstance(data.get("version"), int):
            data = {**data, "version": str(data["version"])}
        return data

    @model_validator(mode="after")
    def _alias_or_version(self):
        if self.alias and self.version:
            raise ValueError("give an alias or a version, not both")
        if not self.version and not self.alias:
            self.alias = CHAMPION
        try:  # the rules of a reference on the command line (raymaas.model_refs)
            ModelRef(self.name, alias=self.alias, version=self.version)
        except ModelRefError as err:
            raise ValueError(_refusal(self.name, err)) from None
        return self

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, alias=self.alias, version=self.version)

    @property
    def model_uri(self) -> str:
        return self.ref.uri


def _refusal(name: str, err: ModelRefError) -> str:
    """Why a model's fields are refused; a reference given as its name (`name: digits@champion`)
    is answered with the fields it stands for."""
    try:
        meant = ModelRef.parse(name)
    except ModelRefError:
        meant = None
    if meant is not None and meant.model_id is None and meant.name != name:
        pick = f"alias: {meant.alias}" if meant.alias else f"version: {meant.version}"
        return f"name {name!r} is a model reference, not a registered model's name: give name: {meant.name} and {pick}"
    return f"model {name!r}: {err}"


class ServeSpec(SpecModel):
    """The args of one application: its models and how its deployment runs them."""

    models: list[ModelEndpointSpec] = Field(
        ..., min_length=1, description="one model gets replicas of its own; several share replicas (multiplexing)"
    )
    autoscaling_config: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="Serve autoscaling of this application's replicas"
    )
    batching: BatchingSpec = Field(
        default_factory=BatchingSpec, description="dynamic batching of the predict path (raymaas.serving.Batcher)"
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests a replica accepts at once (Serve's default of 5 starves batching)"
    )
    ray_actor_options: dict[str, Any] = Field(
        {"num_cpus": 0.5}, description="Ray resources of each replica (num_cpus, num_gpus, memory, runtime_env)"
    )
    max_request_bytes: int = Field(1_000_000, ge=1, description="larger request bodies get 413")
    poll_interval_s: float = Field(3.0, gt=0, description="seconds between checks of the alias in the registry")
    max_models_per_replica: int = Field(4, ge=1, description="multiplexed models a replica keeps loaded (LRU)")
    tracking_uri: str | None = Field(
        None, description="MLflow store (default: MLFLOW_TRACKING_URI, else the embedded store)"
    )
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="metrics, drift, live performance")
    explain: ExplainSpec = Field(default_factory=ExplainSpec, description="attributions (POST /models/NAME/explain)")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec, description="canary and shadow rollouts of a candidate (`raymaas rollout`)"
    )

    @model_validator(mode="after")
    def _unique_names(self):
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"a model may appear once per application: {names}")
        return self

    @property
    def route_prefix(self) -> str:
        """Where the proxy sends this application's requests."""
        return f"{MODELS_PREFIX}/{self.models[0].name}" if len(self.models) == 1 else MODELS_PREFIX


class IndexSpec(SpecModel):
    """The args of the index application (listing, health, docs)."""

    title: str = Field("raymaas models", description="title of the OpenAPI document")
