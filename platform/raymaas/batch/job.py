"""Batch scoring with a registered model on Ray Data: the spec, and the driver.

    raymaas predict MODEL INPUT OUTPUT [options]       (raymaas.cli.predict builds the spec)
    python -m jobs.predict SPEC [--set key=value ...]  (the same job, for `ray job submit`)

    plan (no Ray, no run)   the model version, the input files checked against its signature,
                            the output folder: what cannot work exits 2 here (raymaas.batch.plan)
    connect                 a local Ray, or the cluster at address / RAY_ADDRESS
    one MLflow run          in the model's experiment; continued by mlflow.run_name
    Ray Data                read_parquet / read_csv / read_binary_files (images)
                            -> map_batches(BatchScorer, a pool of N actors, or one that
                               Ray Data grows from MIN to MAX as work waits)
                            -> the driver writes each file's part once all its rows are back
    final status            FINISHED, FAILED or KILLED (raymaas.runtime.lifecycle)

Spec fields are named after the Ray Data arguments they become (`batch_size`, `num_cpus`,
`num_gpus` of `map_batches`; `object_store_memory` of `ray.init`), but for `actors`, the model
actors' pool: N, `ActorPoolStrategy(size=N)`, or [MIN, MAX], `ActorPoolStrategy(min_size=MIN,
max_size=MAX)`, an autoscaling pool. The job starts once MIN actors fit; on an autoscaling
cluster, while the cluster is busy (over half its CPUs, say), Ray Data's own cluster autoscaler
asks Ray's for bundles of the actors' resources up to MAX (at most every 10 s, through the
AutoscalingCoordinator), and the pool grows onto the nodes that join. `concurrency`, the field's old name (map_batches' own before Ray 2.51), still reads
as a fixed pool and warns: one field holds the pool, so no rule has to say which of two wins.

Resumption is raymaas's own, by input file (raymaas.batch.plan), not Ray Data's checkpointing
(`DataContext.checkpoint_config`, 2.60): that one needs a unique id column in every input,
holds every finished id in memory, reads every file again to filter its rows out, and writes
through the dataset's one sink, where rejected rows need a second folder.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from raymaas.specs import JobSpec, MlflowSpec, SpecError, parse_range

# An image model's default batch: as many images as decode to this many bytes (at most
# batch_size's default). 4096 RGB images of 224x224 would be 2.4 GB of float32 in each actor.
IMAGE_BATCH_BYTES = 64 << 20
# Ray's own floor (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES).
MIN_OBJECT_STORE_BYTES = 75 * 1024 * 1024
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20}
_SIZE_UNITS |= {"g": 2**30, "gb": 10**9, "gib": 2**30}


class PredictMlflowSpec(MlflowSpec):
    experiment_name: str | None = Field(
        None, description="MLflow experiment (default: that of the run that produced the model version)"
    )
    run_name: str | None = Field(
        None, description="the name of a stopped run continues it, skipping the files it finished (default: a new name)"
    )
    registered_model_name: str | None = Field(None, description="not for predict jobs, which register nothing")


class PredictSpec(JobSpec):
    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="job name: the default run name's prefix"
    )
    mlflow: PredictMlflowSpec = Field(default_factory=PredictMlflowSpec, description="MLflow experiment and run names")
    kind: Literal["predict"] = Field("predict", description="job kind: batch scoring with a registered model")
    model: str = Field(
        ...,
        description="registered model: NAME (its champion), NAME@ALIAS, NAME/VERSION, or a models:/ URI of those",
    )
    input: str = Field(
        ...,
        description="a Parquet or CSV file, or a folder of them (each file is resumed as a whole), or a folder of "
        "PNG/JPEG images for an image model (each folder's images resumed as a whole)",
    )
    output: str = Field(..., description="Parquet folder of part files; rejected rows go to OUTPUT-errors beside it")
    format: Literal["auto", "parquet", "csv", "images"] = Field(
        "auto", description="input format; auto: from the file names (images: a folder of them and no table)"
    )
    passthrough_columns: list[str] = Field([], description="input columns copied to the output as they are (an id)")
    feature_columns: list[str] | None = Field(
        None,
        description="tensor-signature models: the input columns that form the tensor, in order "
        "(default: every column but the pass-through ones); models with named columns take theirs",
    )
    prediction_column: str = Field("prediction", description="name of the output's prediction column")
    probabilities: bool = Field(
        False, description="also class probabilities: only models whose signature declares a `probabilities` param"
    )
    overwrite: bool = Field(False, description="replace an output folder that exists and is not empty")
    batch_size: int = Field(
        4096,
        ge=1,
        description="rows per model call (map_batches batch_size); unset, an image model's is as many images as "
        "decode to 64 MiB, up to 4096",
    )
    actors: int | tuple[int, int] = Field(
        2,
        description="model actors, each loading the model once: N, a pool of N; or [MIN, MAX], a pool that Ray Data "
        "grows from MIN to MAX while rows wait (ActorPoolStrategy min_size, max_size): the job starts once MIN fit, "
        "an autoscaling cluster adds nodes for the rest. "
        "`concurrency: N`, its old name, is actors: N",
    )
    num_cpus: float = Field(1, ge=0, description="CPUs each model actor reserves (map_batches num_cpus)")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs each model actor reserves (default: 1 if use_gpu resolves to GPUs, else 0)"
    )
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: GPUs for the actors if the cluster has any")
    placement_timeout_s: float = Field(
        10, gt=0, description="seconds to wait for the cluster to offer the actors' resources before failing"
    )
    object_store_memory: int | None = Field(
        None,
        description="bytes (or 100MB, 1GiB) of object store for the local Ray this job starts; a cluster's is its own",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_concurrency(cls, data):
        """`concurrency: N` (specs before `actors`, `--concurrency N`) is `actors: N`."""
        if not isinstance(data, dict) or "concurrency" not in data:
            return data
        if "actors" in data:
            raise ValueError("concurrency is the old name of actors: give actors only")
        value = data["concurrency"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"concurrency (the old name of actors) must be a whole number of at least 1, got {value!r}"
            )
        print(f"warning: concurrency is deprecated: write actors: {value} (the same fixed pool)", file=sys.stderr)
        return {("actors" if k == "concurrency" else k): v for k, v in data.items()}

    @field_validator("actors", mode="before")
    @classmethod
    def _pool(cls, value):
        return parse_range(value)

    @property
    def actor_range(self) -> tuple[int, int]:
        """(MIN, MAX) of the model actors' pool; equal for a fixed one."""
        return (self.actors, self.actors) if isinstance(self.actors, int) else self.actors

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _gpu_choice(cls, value):
        if value in (True, False, "auto"):
            return value
        raise ValueError("must be true, false or auto")

    @field_validator("input", "output")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Relative to where the job starts; a `ray job submit` job starts in a temporary copy of
        # its working dir, which Ray deletes: give it absolute (shared) paths. The input's files
        # are checked when the job plans, before Ray starts (raymaas.batch.plan).
        return str(Path(value).expanduser().resolve())

    @field_validator("object_store_memory", mode="before")
    @classmethod
    def _size(cls, value):
        if value is None or isinstance(value, int):
            size = value
        else:
            text = str(value).strip().lower().replace(" ", "")
            number = text.rstrip("kmgib")
            try:
                size = int(float(number) * _SIZE_UNITS[text[len(number) :]])
            except (ValueError, KeyError):
                raise ValueError("a number of bytes, or with a unit: 80MB, 100MiB, 1GB") from None
        if size is not None and size < MIN_OBJECT_STORE_BYTES:
            raise ValueError(f"Ray's object store takes at least {MIN_OBJECT_STORE_BYTES} bytes (75 MiB)")
        return size

    @model_validator(mode="after")
    def _consistent(self) -> PredictSpec:
        if self.mlflow.registered_model_name:
            raise ValueError("mlflow.registered_model_name: a predict job registers no model; name it in `model`")
        if Path(self.output) == Path(self.input) or Path(self.input) in Path(self.output).parents:
            raise ValueError(f"output {self.output} is inside the input {self.input}")
        twice = sorted({c for c in self.passthrough_columns if self.passthrough_columns.count(c) > 1})
        if twice:
            raise ValueError(f"passthrough_columns names {twice} twice")
        return self


def describe_actors(actor_range: tuple[int, int]) -> str:
    """What the job's lines say of the pool: "2 actors", "1 to 4 actors"."""
    low, high = actor_range
    return _count(low, "actor") if low == high else f"{low:,} to {high:,} actors"


@dataclass(frozen=True)
class PredictOutcome:
    """The end of a batch job: what it scored, where it wrote it, its MLflow run."""

    run_id: str
    run_name: str
    experiment_id: str
    tracking_uri: str
    model_uri: str
    output: str
    errors: str
    rows_scored: int
    rows_rejected: int
    rows_skipped: int  # rows of units an earlier attempt of this run had committed
    units_scored: int
    units_skipped: int
    seconds: float
    rows_per_second: float
    unit_noun: str = "file"  # what a unit is: an input file, or a folder of images

    def lines(self) -> list[str]:
        """What the job prints at its end."""
        skipped = (
            f"; {_count(self.units_skipped, self.unit_noun)} ({self.rows_skipped:,} rows) done by an earlier attempt, "
            "skipped"
            if self.units_skipped
            else ""
        )
        rejected = f"; {self.rows_rejected:,} rejected, in {self.errors}" if self.rows_rejected else "; none rejected"
        return [
            f"raymaas: {self.model_uri} scored {self.rows_scored:,} rows into {self.output}{rejected}{skipped}",
            f"raymaas: {_count(self.units_scored, self.unit_noun)} in {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s)",
            f"raymaas: run {self.run_id} in {self.tracking_uri}",
        ]


@dataclass(frozen=True)
class _Plan:
    model: object  # plan.ModelRef
    input: object  # plan.InputPlan
    output: object  # plan.OutputPlan
    experiment_name: str
    run_name: str
    batch_size: int  # rows per model call: the spec's, or an image model's default


def batch_rows(spec: PredictSpec, features) -> int:
    """spec.batch_size, or for an image model that was not given one, as many images as decode
    to IMAGE_BATCH_BYTES (at most the default)."""
    import numpy as np

    if features.kind != "image" or "batch_size" in spec.model_fields_set:
        return spec.batch_size
    row = math.prod(features.tensor_shape[1:]) * np.dtype(features.dtypes[0]).itemsize
    return max(1, min(spec.batch_size, IMAGE_BATCH_BYTES // row))


def run_and_report(spec: PredictSpec, address: str | None = None) -> int:
    """run_predict, its outcome printed; the exit code (`raymaas predict`, `python -m jobs.predict`)."""
    from raymaas.runtime.entrypoint import report

    return report(lambda: run_predict(spec, address=address))


def plan_job(spec: PredictSpec, client) -> _Plan:
    """Every check that needs no Ray: SpecError (exit 2) before anything starts."""
    from raymaas import tracking
    from raymaas.batch import plan

    model = plan.resolve_model(client, spec.model)
    if spec.probabilities:
        plan.check_probabilities(model)
    inputs = plan.plan_input(
        spec.input, spec.format, model.signature, spec.passthrough_columns, spec.feature_columns, spec.prediction_column
    )
    experiment_name = spec.mlflow.experiment_name or _experiment_name(client, model)
    if spec.mlflow.run_name:
        _check_run_unfinished(client, experiment_name, spec.mlflow.run_name, spec.output)
    output = plan.plan_output(spec.output, spec.mlflow.run_name, model, inputs.root, spec.overwrite)
    run_name = spec.mlflow.run_name or tracking.new_run_name(spec.name)
    return _Plan(model, inputs, output, experiment_name, run_name, batch_rows(spec, inputs.features))


def run_predict(spec: PredictSpec, address: str | None = None) -> PredictOutcome:
    """Score spec.input with the model into spec.output on Ray Data, as one MLflow run."""
    from raymaas import paths, tracking
    from raymaas.runtime import cluster
    from raymaas.runtime.lifecycle import JobDriver, call_interruptibly, final_status
    from raymaas.specs import flatten

    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise SpecError(
            f"--address {address}: a predict job joins a cluster by its Ray address (HOST:6379); to run it on "
            "the cluster, submit it: ray job submit --working-dir . -- python -m jobs.predict SPEC"
        )
    if address and spec.object_store_memory:
        raise SpecError("object_store_memory sizes the local Ray a job starts; a cluster's object store is its own")
    tracking_uri = paths.tracking_uri()
    client = tracking.get_client(tracking_uri)
    job = plan_job(spec, client)

    with JobDriver.connect(
        address,
        logs="model actors, Ray Data",
        client=client,
        checkpoints=False,
        num_cpus=_local_cpus(spec),
        object_store_memory=None if address else spec.object_store_memory,
    ) as driver:
        _configure_data()
        _check_reachable(job)
        use_gpu = cluster.resolve_use_gpu(spec.use_gpu)
        per_actor = {"CPU": spec.num_cpus, "GPU": spec.num_gpus if spec.num_gpus is not None else float(use_gpu)}
        # MIN actors must fit before anything starts; on an autoscaling cluster the rest come as
        # nodes join (Ray Data asks the autoscaler for them once the pool is busy)
        _wait_for_actors(per_actor, spec.actor_range[0], spec.placement_timeout_s)
        model, inputs, output = job.model, job.input, job.output
        job_run = driver.start_run(
            job.experiment_name,
            job.run_name,
            params={**flatten(spec.model_dump(mode="json")), "batch_size": job.batch_size},
            tags={
                "raymaas.job_kind": "predict",
                "raymaas.model_name": model.name,
                "raymaas.model_version": model.version,
                "raymaas.model_uri": model.uri,
                "raymaas.input": inputs.root,
                "raymaas.output": output.output,
                "raymaas.errors_output": output.errors,
                "raymaas.features": inputs.features.describe(),
                "raymaas.actors": ":".join(map(str, dict.fromkeys(spec.actor_range))),
                "device": "cuda" if per_actor["GPU"] else "cpu",
            },
        )
        with final_status(client, job_run.run_id) as status:
            _log_spec(client, job_run.run_id, spec)
            tally = call_interruptibly(
                lambda: score(spec, job, per_actor, tracking_uri, client=client, run_id=job_run.run_id)
            )
            status.set("FINISHED")
    return PredictOutcome(
        run_id=job_run.run_id,
        run_name=job.run_name,
        experiment_id=job_run.experiment_id,
        tracking_uri=tracking_uri,
        model_uri=job.model.uri,
        output=job.output.output,
        errors=job.output.errors,
        unit_noun=_unit_noun(job.input),
        **tally,
    )


def score(spec: PredictSpec, job: _Plan, per_actor: dict, tracking_uri: str, client, run_id: str) -> dict:
    """Ray Data reads the pending files, the actor pool scores them, this driver commits each
    file's part; metrics go to the run as files complete. Returns the outcome's counts."""

    import ray.data

    from raymaas.batch.output import OutputWriter, finished_counts, prepare_folders
    from raymaas.batch.plan import marker_content
    from raymaas.batch.scorer import BatchScorer
    from raymaas.runtime import cluster
    from raymaas.tracking import log_metrics

    inputs, output = job.input, job.output
    prepare_folders(output, marker_content(job.run_name, job.model, inputs.root))
    pending = [u for u in inputs.units if u.name not in output.done]
    skipped = [u for u in inputs.units if u.name in output.done]
    before = [finished_counts(output, u) for u in skipped]
    prior_scored, prior_rejected = sum(s for s, _ in before), sum(r for _, r in before)
    if skipped:
        print(
            f"raymaas: {len(skipped)} of {_count(len(inputs.units), _unit_noun(inputs))} scored by an earlier attempt",
            flush=True,
        )
    writer = OutputWriter(output, pending, list(inputs.passthrough), _empty_schema(job, spec.prediction_column))
    meter = _Meter(client, run_id, log_metrics, sum(u.num_rows for u in pending), prior_scored, prior_rejected)
    spilled_before = store_stats()
    try:
        writer.commit_empty()
        todo = [u for u in pending if u.num_rows]
        if todo:
            ds = _read(inputs, todo, spec)
            ds = ds.map_batches(
                BatchScorer,
                fn_constructor_kwargs={
                    "model_uri": job.model.download_uri,
                    "tracking_uri": tracking_uri,
                    "features": inputs.features,
                    "unit_paths": [u.path for u in inputs.units],
                    "passthrough": list(inputs.passthrough),
                    "prediction_column": spec.prediction_column,
                    "probabilities": spec.probabilities,
                    "input_root": inputs.root,
                },
                batch_size=job.batch_size,
                batch_format="pyarrow",
                # `concurrency=N` or `(MIN, MAX)` before Ray 2.51
                compute=ray.data.ActorPoolStrategy(min_size=spec.actor_range[0], max_size=spec.actor_range[1]),
                num_cpus=per_actor["CPU"],
                num_gpus=per_actor["GPU"],
            )
            print(
                f"raymaas: scoring {_count(len(todo), _unit_noun(inputs))} ({sum(u.num_rows for u in todo):,} rows) "
                f"with {job.model.uri} on {describe_actors(spec.actor_range)}, batches of {job.batch_size}",
                flush=True,
            )
            # A pool that may grow asks the autoscaler for its MAX (and a read task) while it
            # scores: Ray Data adds actors only where the cluster has room now, so without the
            # nodes asked for here the pool stayed at MIN on a cluster that could have grown.
            low, high = spec.actor_range
            with cluster.holding_request([per_actor] * high + [{"CPU": 1}] if high > low else []):
                for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    meter.block(block.num_rows)
                    for done in writer.add(block):
                        meter.unit(done)
        writer.check_complete()
    except BaseException:
        writer.abort()
        raise
    spilled_after = store_stats()
    if spilled_before is not None and spilled_after is not None:
        meter.extra["spilled_bytes"] = spilled_after[0] - spilled_before[0]
        meter.extra["fallback_bytes_max"] = meter.fallback_max
    return meter.finish(len(skipped), sum(u.num_rows for u in skipped))


def store_stats() -> tuple[int, int] | None:
    """(bytes spilled to disk so far, bytes held outside the store's memory now) of the
    cluster's object stores, as Ray Data's own stats read them; None where Ray does not say.
    The job logs the spill over its run and the most it saw held outside (sampled as blocks
    come back, every second at most): both 0 mean the input streamed through the object store. On a shared cluster
    other jobs count too."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    try:
        stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
        return int(stats.spilled_bytes_total), int(stats.object_store_bytes_fallback)
    except Exception:  # an internal API: its absence costs two metrics, not the job
        return None


class _Meter:
    """Progress lines and the run's metrics, logged as files complete (at most every few
    seconds; step = rows done). Row counts add up over the run's attempts; times and rates are
    this attempt's: `startup_seconds` until the first scored block came back (actors started,
    model loaded, first block read), `steady_rows_per_second` the rate after it."""

    def __init__(self, client, run_id: str, log, rows_pending: int, prior_scored: int, prior_rejected: int):
        self.client, self.run_id, self.log = client, run_id, log
        self.rows_pending = rows_pending
        self.prior_scored, self.prior_rejected = prior_scored, prior_rejected
        self.scored = self.rejected = self.units = self.rows_back = 0
        self.started = self.last_print = time.monotonic()
        self.last_log = 0.0
        self.first_block: tuple[float, int] | None = None  # (when, rows) of the first block back
        self.extra: dict[str, float] = {}  # logged with the final metrics
        self.fallback_max = 0
        self.last_sample = 0.0

    def block(self, rows: int) -> None:
        now = time.monotonic()
        if self.first_block is None:
            self.first_block = (now, rows)
        self.rows_back += rows
        if now - self.last_sample >= 1:  # 7 ms a sample here
            stats = store_stats()
            self.fallback_max = max(self.fallback_max, stats[1] if stats else 0)
            self.last_sample = now
        if now - self.last_print >= 5:
            share = self.rows_back / max(self.rows_pending, 1)
            print(
                f"raymaas: {self.rows_back:,} of {self.rows_pending:,} rows ({share:.0%}), "
                f"{self.rows_back / (now - self.started):,.0f} rows/s",
                flush=True,
            )
            self.last_print = now

    def unit(self, progress) -> None:
        self.scored += progress.scored
        self.rejected += progress.rejected
        self.units += 1
        if time.monotonic() - self.last_log >= 3:  # a SQLite store takes a write every few seconds well
            self._log()

    def finish(self, units_skipped: int, rows_skipped: int) -> dict:
        metrics = self._log(self.extra)
        return {
            "rows_scored": int(metrics["rows_scored"]),
            "rows_rejected": int(metrics["rows_rejected"]),
            "rows_skipped": rows_skipped,
            "units_scored": self.units,
            "units_skipped": units_skipped,
            "seconds": metrics["seconds"],
            "rows_per_second": metrics["rows_per_second"],
        }

    def _log(self, extra: dict | None = None) -> dict:
        now = self.last_log = time.monotonic()
        seconds = now - self.started
        rows = self.scored + self.rejected
        metrics = {
            "rows_scored": self.prior_scored + self.scored,
            "rows_rejected": self.prior_rejected + self.rejected,
            "rows_per_second": rows / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
            "files_scored": self.units,
        }
        if self.first_block is not None:
            first_at, first_rows = self.first_block
            metrics["startup_seconds"] = first_at - self.started
            if now > first_at and rows > first_rows:
                metrics["steady_rows_per_second"] = (rows - first_rows) / (now - first_at)
        metrics.update(extra or {})
        self.log(self.client, self.run_id, metrics, step=self.prior_scored + self.prior_rejected + rows)
        return metrics


def _read(inputs, units, spec: PredictSpec):
    """Ray Data's reader over the pending files, with each row's file in `path` (the unit it
    belongs to). Hive-style folder names are not turned into columns (partitioning=None): the
    columns are the files' own, as checked."""
    import ray.data

    from raymaas.batch.plan import IMAGES, csv_options

    if inputs.format == IMAGES:
        # The files' bytes, decoded by the actors (BatchScorer): read_images would fail the
        # whole read on one file that does not decode. About 64 files a read task, as the
        # supervised job reads images (not measured here).
        files = [f for u in units for f in u.files]
        return ray.data.read_binary_files(
            files,
            include_paths=True,
            partitioning=None,
            override_num_blocks=max(1, min(200, math.ceil(len(files) / 64))),
        )
    paths = [u.path for u in units]
    columns = list(dict.fromkeys([*inputs.features.columns, *inputs.passthrough]))
    if inputs.format == "parquet":
        return ray.data.read_parquet(paths, columns=columns, include_paths=True, partitioning=None)
    import pyarrow.csv as pcsv

    read_options, parse_options = csv_options()
    convert_options = pcsv.ConvertOptions(
        include_columns=columns, column_types=inputs.csv_column_types(), strings_can_be_null=True
    )
    return ray.data.read_csv(
        paths,
        include_paths=True,
        partitioning=None,
        read_options=read_options,
        parse_options=parse_options,
        convert_options=convert_options,
    )


def _empty_schema(job: _Plan, prediction_column: str):
    """The schema of a part file with no scored rows: the pass-through columns, and the
    prediction typed from the signature's output where it says (TorchClassifier: int64)."""
    import numpy as np
    import pyarrow as pa

    fields = [pa.field(c, t) for c, t in job.input.passthrough_types.items()]
    outputs = job.model.signature.outputs
    prediction = pa.null()
    if outputs is not None and outputs.is_tensor_spec() and len(outputs.inputs) == 1:
        spec = outputs.inputs[0]
        if len(spec.shape) == 1:
            prediction = pa.from_numpy_dtype(np.dtype(spec.type))
    elif outputs is not None and len(outputs.inputs) == 1 and getattr(outputs.inputs[0].type, "name", "") == "string":
        prediction = pa.string()  # a classifier's labels as text (an image folder's class names)
    return pa.schema([*fields, pa.field(prediction_column, prediction)])


def _local_cpus(spec: PredictSpec) -> int:
    """The CPUs of a local Ray: room for the most actors the pool may grow to and one read task
    at a time besides them (Ray Data's read tasks take a CPU each: with every CPU held by an
    actor, nothing would be read)."""
    actors_cpus = math.ceil(spec.actor_range[1] * spec.num_cpus)
    return max(os.cpu_count() or 1, actors_cpus + 1)


def _configure_data() -> None:
    """Ray Data's settings for this job, once Ray is up."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job prints its own progress, one line every few seconds
    # Ray 2.60 reads Parquet through its DataSourceV2 by default: a task lists the files and a
    # pool of FooterReader actors reads their footers. raymaas has listed them and read the
    # footers already; on 2 loaded cores those extra processes made a 3-file job take 42 s
    # instead of 25 s (the V1 reader reads what it is given).
    context.use_datasource_v2 = False
    store = ray.cluster_resources().get("object_store_memory", 0)
    block = int(os.environ.get("RAYMAAS_BLOCK_BYTES", 16 << 20))
    context.target_max_block_size = int(min(block, store / 16)) if store else block


def _wait_for_actors(per_actor: dict, actors: int, timeout_s: float) -> None:
    """Until the cluster holds `actors` actors (an autoscaling pool's MIN) and a read task."""
    from raymaas.runtime.cluster import ResourceError, wait_for_resources

    needed = {k: v * actors for k, v in per_actor.items() if v}
    needed["CPU"] = needed.get("CPU", 0) + 1  # a read task beside the actors
    # what the autoscaler is asked for: the read task's CPU too, or a cluster of no worker nodes
    # and 1-CPU node types would be grown to hold the actors only, and wait for the rest
    bundles = [{k: v for k, v in per_actor.items() if v}] * actors + [{"CPU": 1}]
    try:
        wait_for_resources(needed, timeout_s, bundles=bundles)
    except ResourceError as err:  # its hints name the supervised spec's fields
        raise ResourceError(
            str(err)
            .replace("scaling_config.", "")
            .replace("use_gpu: false (or auto)", "use_gpu: false, or fewer actors")
        ) from None


def _check_reachable(job: _Plan) -> None:
    """On a cluster of several nodes, the model actors and Ray Data's read tasks may run on any
    node: the input files and the model's files must be where every node reaches them (the
    output is written by this driver alone)."""
    from raymaas.runtime.cluster import NodeLocalStorageError, is_multi_node, node_local_storage

    if not is_multi_node():
        return
    problems = []
    for what, where in (("the input", job.input.root), ("the model's files", job.model.download_uri)):
        why = node_local_storage(where)
        if why:
            problems.append(f"{what} ({where}) is {why}")
    if problems:
        raise NodeLocalStorageError(
            "this job's actors and reads may run on any node of the cluster, but "
            + "; ".join(problems)
            + ": put them on storage every node reaches (s3://, gs://, NFS; MLFLOW_TRACKING_URI a tracking server "
            "with such an artifact store)"
        )


def _experiment_name(client, model) -> str:
    """The experiment of the run that produced the model version; the model's name if none."""
    if model.experiment_id is not None:
        return client.get_experiment(model.experiment_id).name
    return model.name


def _check_run_unfinished(client, experiment_name: str, run_name: str, output: str) -> None:
    from raymaas.tracking import JOB_KEY_TAG

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{JOB_KEY_TAG}` = '{run_name}'", max_results=1
    )
    if runs and runs[0].info.status == "FINISHED":
        raise SpecError(
            f"run {run_name!r} already finished (MLflow run {runs[0].info.run_id}); its output is {output}: "
            "give a new run name to score again (with overwrite, or another output)"
        )


def _unit_noun(inputs) -> str:
    """What a unit of the input is, in the job's lines: a file, or a folder of images."""
    from raymaas.batch.plan import IMAGES

    return "folder" if inputs.format == IMAGES else "file"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _log_spec(client, run_id: str, spec: PredictSpec) -> None:
    import yaml

    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
