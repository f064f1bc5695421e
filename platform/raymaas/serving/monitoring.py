"""Monitoring of every model endpoint (ServeSpec.monitoring, on by default): Prometheus metrics
through Ray's metrics API, input drift against the model's reference profile, and live
performance from labels sent later to /feedback.

Two parts in each model application (this module is the first; raymaas.serving.hub the
second, raymaas.monitoring.window the replica's windows):

    Monitoring   an EndpointExtension in every replica: counts and times every answer, keeps
                 the bins of its recent input rows (a ring of `window` rows; bins, never values)
                 and the predictions waiting for labels, and reports both to the hub every
                 push_interval_s; answers GET /models/NAME/monitor and POST .../feedback
    MonitorHub   one replica (no CPU) beside the endpoint: adds the replicas' bin counts up,
                 computes drift (raymaas.monitoring.drift) and live metrics over the whole
                 endpoint, sets the drift and live gauges, matches feedback to predictions, and
                 logs both to a monitoring run in MLflow (linked by tags to the model version)

Nothing on the request path but a few appends: the Prometheus counters and histograms are
recorded from in-memory tallies once per push interval (as Ray Serve records its own request
metrics), and binning, class counts and the reports run then too, off the request's way.

What leaves a replica: bin counts of its window, and its predictions (the model's outputs,
kept in the hub's memory until labelled or feedback_ttl_s old) with their request ids. Request
contents do not, unless payload logging is switched on (monitoring.payload_logging): then a
sampled share of requests and responses goes, every flush_interval_s, to Parquet files in the
artifacts (payloads/) of the version's monitoring run, mask_columns replaced by '***'.

Prometheus series (Ray adds the ray_ prefix and the deployment, replica and application tags):

    raymaas_requests_total{model,version,code,action}    every answer, 4xx and 5xx included
    raymaas_request_latency_ms{model,version,action}     histogram, in the replica
    raymaas_batch_size                                   histogram of the predict batches
    raymaas_predicted_class_total{model,version,label}   classifiers' answers, by label
    raymaas_prediction_bin_total{model,version,output,bin}   regression answers, in the profile's bins
    raymaas_drift_psi{model,version,feature}             gauges set by the hub
    raymaas_drift_ks_pvalue{model,version,feature}        (a categorical feature: raymaas_drift_chi2_pvalue)
    raymaas_drift_flagged_features{model,version}
    raymaas_window_rows{model,version}
    raymaas_live_score{model,version,metric}             accuracy, precision/recall/f1_macro, rmse, mae
    raymaas_feedback_total{model,outcome}                matched, unknown, expired, duplicate, mismatched
    raymaas_rollout_share{model,version}                 a rollout candidate's percent of requests (hub)
    raymaas_rollout_decisions_total{model,version,action}   advance, promote, hold, rollback (hub)
    raymaas_shadow_agreement{model,version}              a shadow candidate's answers equal to those returned

During a rollout (raymaas.serving.routing) two versions answer at once: each keeps its own window
and its own figures (GET /models/NAME/monitor's "versions"), and the hub judges the candidate
against the champion every rollout.interval_s (GET /models/NAME/rollout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter, defaultdict, deque

import numpy as np

from raymaas.monitoring.window import InputWindow, prediction_values, rows_of
from raymaas.serving.errors import BadRequest, InvalidInput, ModelFailure
from raymaas.serving.extension import EndpointExtension
from raymaas.serving.hub import TRAFFIC_KEPT
from raymaas.serving.index import SCORING_SCHEMA, error_doc
from raymaas.serving.protocol import VERSION_HEADER
from raymaas.serving.specs import MonitoringSpec

logger = logging.getLogger("ray.serve")

LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
WINDOWS_PER_MODEL = 3  # versions of a model whose windows a replica keeps (a rollout: 2 answer at once)


_LABEL = {
    "type": ["string", "number", "boolean", "array"],
    "minItems": 1,
    "items": {"type": ["string", "number", "boolean"]},
}
_OUTCOMES = ("matched", "unknown", "expired", "duplicate", "mismatched")

# /openapi.json's description of the routes (raymaas.serving.index)
ROUTE_DOCS = {
    ("GET", "monitor"): {
        "summary": "drift of the recent inputs against the reference profile, and live performance from feedback",
        "responses": {
            "200": {
                "description": "the endpoint's report, over all its replicas",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model", "version", "window", "drift", "live"],
                            "properties": {
                                "model": {"type": "string"},
                                "version": {"type": ["string", "null"]},
                                "other_versions": {"type": "array", "items": {"type": "string"}},
                                "replicas": {"type": "integer"},
                                "window": {"type": "object", "description": "rows, rows_per_replica, ages, dropped"},
                                "drift": {
                                    "type": "object",
                                    "description": "status, and per feature PSI and KS p-value, when available",
                                },
                                "live": {
                                    "type": "object",
                                    "description": "task, labelled_rows, metrics, feedback outcomes, awaiting_labels",
                                },
                                "versions": {
                                    "type": "object",
                                    "description": "each version served (a rollout's candidate too): role, requests, "
                                    "errors, error_rate, latency_p50_ms, latency_p99_ms, class_shares, drift, "
                                    "labelled_rows, metrics, and a shadow candidate's shadow_agreement",
                                    "additionalProperties": {"type": "object"},
                                },
                            },
                        }
                    }
                },
            }
        },
    },
    ("GET", "rollout"): {
        "summary": "the model's rollout (`raymaas rollout`): its state, each version's live figures, the last decision",
        "responses": {
            "200": {
                "description": "rollout is null where none was ever started",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model", "rollout"],
                            "properties": {
                                "model": {"type": "string"},
                                "rollout": {
                                    "type": ["object", "null"],
                                    "description": "version, champion, mode, status, share, step_index, steps, "
                                    "policy, reason, run_id, started_at, step_started_at; while active, this_step: "
                                    "each version's requests, errors and labels the next decision counts",
                                },
                                "versions": {"type": "object", "additionalProperties": {"type": "object"}},
                                "last_decision": {"type": ["object", "null"]},
                            },
                        }
                    }
                },
            }
        },
    },
    ("POST", "feedback"): {
        "summary": "labels for earlier predictions (by x-request-id), or rows with their labels",
        "description": '{"labels": {"REQUEST_ID": LABEL, ...}} for predictions answered before (a list of '
        'labels for a request of several rows), or a scoring body with "labels", one per row, scored now',
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {
                                "type": "object",
                                "required": ["labels"],
                                "properties": {
                                    "labels": {"type": "object", "minProperties": 1, "additionalProperties": _LABEL}
                                },
                                "additionalProperties": False,
                            },
                            {
                                SCORING_SCHEMA: {
                                    "properties": {"labels": {"type": "array", "minItems": 1, "items": _LABEL}},
                                    "required": ["labels"],
                                }
                            },
                        ]
                    },
                    "example": {"labels": {"REQUEST_ID": 3}},
                }
            },
        },
        "responses": {
            "200": {
                "description": "by request id: which were matched, unknown, expired, duplicate or mismatched "
                "(and why); for rows: rows_scored and the predictions",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["rows_scored"],
                            "properties": {
                                "rows_scored": {"type": "integer"},
                                **{k: {"type": "array", "items": {"type": "string"}} for k in _OUTCOMES},
                                "reasons": {"type": "object", "additionalProperties": {"type": "string"}},
                                "predictions": {"type": "array"},
                            },
                        }
                    }
                },
            },
            "400": error_doc("not JSON"),
            "413": error_doc("body too large"),
            "422": error_doc("no labels, labels of the wrong form or count, or rows that do not match the signature"),
        },
    },
}


class Monitoring(EndpointExtension):
    """The replica's part: metrics, the input window, predictions awaiting labels; /monitor
    and /feedback."""

    route_docs = ROUTE_DOCS

    def __init__(self, endpoint, settings: dict, hub):
        from ray import serve
        from ray.serve.metrics import Counter as PromCounter
        from ray.serve.metrics import Histogram

        super().__init__(endpoint, settings, hub)
        self.spec = MonitoringSpec.model_validate(settings)
        self.hub = hub  # the application's MonitorHub
        self.references = {name: m.reference for name, m in endpoint.by_name.items()}
        context = serve.get_replica_context()
        replica_id = getattr(context, "replica_id", None)
        self.replica = getattr(replica_id, "unique_id", None) or str(getattr(context, "replica_tag", id(self)))
        self.windows: dict[tuple[str, str], InputWindow] = {}  # (model, version) -> its window
        # (model, version) -> (status code, ms) of each answer since the last push, and a shadow
        # candidate's [rows agreeing with the answer returned, rows compared]
        self.traffic: dict[tuple[str, str], deque] = {}
        self.agreement: dict[tuple[str, str], list[int]] = {}
        self._task: asyncio.Task | None = None
        self._payload_task: asyncio.Task | None = None
        self._push_lock = asyncio.Lock()
        self.payloads: list = []  # sampled (model, version, input, output, request id, time): payload logging only
        self.payload_runs: dict[tuple[str, str], str] = {}  # (model, version) -> monitoring run id
        self.requests = PromCounter(
            "raymaas_requests",
            description="answers of the model endpoints",
            tag_keys=("model", "version", "code", "action"),
        )
        self.latency = Histogram(
            "raymaas_request_latency_ms",
            description="time to answer, in the replica (ms)",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("model", "version", "action"),
        )
        self.batch_size = Histogram(
            "raymaas_batch_size", description="requests per predict batch", boundaries=BATCH_BOUNDARIES
        )
        self.shadow_dropped = PromCounter(
            "raymaas_shadow_dropped",
            description="shadow copies dropped: the replica was too busy to predict them (rollout.max_shadow_queued)",
        )
        self._dropped_seen = 0
        # What the request path tallies for Prometheus until the next flush (_flush_forever):
        # (model, version, code, action) -> answers, (model, version, action) -> their ms, and
        # the predict batches' sizes. One Ray metric call per answer cost ~7% of a busy
        # replica's CPU (py-spy, tiny model at concurrency 32).
        self._counted: Counter = Counter()
        self._latencies: defaultdict = defaultdict(list)
        self._batch_sizes: list[int] = []
        self._flush_task: asyncio.Task | None = None
        self.predicted = PromCounter(
            "raymaas_predicted_class",
            description="classifiers' answers by label",
            tag_keys=("model", "version", "label"),
        )
        self.value_bins = PromCounter(
            "raymaas_prediction_bin",
            description="regression answers in the reference profile's bins",
            tag_keys=("model", "version", "output", "bin"),
        )
        endpoint.plane.batcher.batch_hooks.append(self._on_batch)
        if endpoint.dedicated is not None:  # its model is loaded: its window is ready before the first request
            self._window(endpoint.dedicated.current)

    def routes(self):
        return {("GET", "monitor"): self.monitor, ("POST", "feedback"): self.feedback, ("GET", "rollout"): self.rollout}

    def _window(self, loaded) -> InputWindow:
        """The window of a loaded version, made on its first prediction; a model's oldest window
        goes once WINDOWS_PER_MODEL versions have one (its figures are the hub's by then)."""
        key = (loaded.name, loaded.version)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = InputWindow(loaded, self.spec.window, self.references.get(loaded.name))
            mine = [k for k in self.windows if k[0] == loaded.name]
            for old in mine[: max(0, len(mine) - WINDOWS_PER_MODEL)]:
                del self.windows[old]
        return window

    # ------------------------------------------------------------------ the request path

    def on_response(self, name, action, response, seconds) -> None:
        version = response.headers.get(VERSION_HEADER, "") if hasattr(response, "headers") else ""
        status = getattr(response, "status_code", 200)
        model, act = name or "", action or ""
        self._counted[(model, version, str(status), act)] += 1
        self._latencies[(model, version, act)].append(seconds * 1000.0)
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_forever())
        if act == "invocations" and version:  # each version's answers, for a rollout's guards
            self._answered(model, version, status, seconds)

    def _answered(self, model: str, version: str, status: int, seconds: float) -> None:
        answers = self.traffic.get((model, version))
        if answers is None:
            answers = self.traffic[(model, version)] = deque(maxlen=TRAFFIC_KEPT)
        answers.append((int(status), round(seconds * 1000.0, 3)))

    def on_shadow(self, loaded, data, result, request_id, answer, seconds) -> None:
        """A shadow candidate's answer to a copy of a request: its window and figures, and
        whether it agrees with the answer returned."""
        if isinstance(result, Exception):
            self._answered(loaded.name, loaded.version, getattr(result, "status", 500), seconds)
            return
        self._answered(loaded.name, loaded.version, 200, seconds)
        self._window(loaded).add(data, result, request_id, rows_of(data), shadow=True)
        theirs, ours = prediction_values(answer), prediction_values(result)
        tally = self.agreement.setdefault((loaded.name, loaded.version), [0, 0])
        tally[0] += sum(1 for a, b in zip(theirs, ours) if str(a) == str(b))
        tally[1] += min(len(theirs), len(ours))

    def on_prediction(self, loaded, data, result, request_id) -> None:
        self._window(loaded).add(data, result, request_id, rows_of(data))
        payloads = self.spec.payload_logging
        if payloads.enabled and random.random() < payloads.sample_rate:
            self.payloads.append((loaded.name, loaded.version, data, result, request_id, time.time()))
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._push_forever())
            if payloads.enabled:
                self._payload_task = loop.create_task(self._write_payloads_forever())

    def _on_batch(self, size: int) -> None:
        self._batch_sizes.append(size)

    # ------------------------------------------------------------------ Prometheus

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.spec.push_interval_s)
            try:
                await asyncio.to_thread(self.record_metrics, *self._take_tallies())
            except asyncio.CancelledError:
                raise
            except Exception:  # a metric that cannot be recorded must not stop the others
                logger.exception("recording the endpoint's metrics failed")

    def _take_tallies(self) -> tuple:
        """The tallies since the last flush, swapped for empty ones (on the event loop, where
        the request path appends, so no answer is lost or counted twice)."""
        taken = (self._counted, self._latencies, self._batch_sizes)
        self._counted, self._latencies, self._batch_sizes = Counter(), defaultdict(list), []
        return taken

    def record_metrics(self, counted: Counter, latencies: dict, batch_sizes: list[int]) -> None:
        """Record tallied answers, latencies and batch sizes in Ray's metrics (thread-safe)."""
        for (model, version, code, act), n in counted.items():
            self.requests.inc(n, tags={"model": model, "version": version, "code": code, "action": act})
        for (model, version, act), values in latencies.items():
            tags = {"model": model, "version": version, "action": act}
            for ms in values:
                self.latency.observe(ms, tags=tags)
        for size in batch_sizes:
            self.batch_size.observe(size)
        dropped = self.endpoint.plane.shadow_batcher.dropped
        if dropped > self._dropped_seen:
            self.shadow_dropped.inc(dropped - self._dropped_seen)
            self._dropped_seen = dropped

    # ------------------------------------------------------------------ reports to the hub

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(self.spec.push_interval_s)
            try:
                await self.push()
            except asyncio.CancelledError:
                raise
            except Exception:  # the hub restarting must not stop the replica's monitoring
                logger.exception("reporting to the monitor hub failed")

    async def push(self, only: str | None = None) -> None:
        """Bin what came in and send each model version's window and predictions, and the
        answers' codes and times, to the hub."""
        async with self._push_lock:
            for (name, version), answers in list(self.traffic.items()):
                if only is not None and name != only:
                    continue
                agreement = self.agreement.pop((name, version), None)
                if answers or agreement:
                    sent = list(answers)
                    answers.clear()
                    await self.hub.answers.remote(name, version, sent, agreement)
            for (name, _), window in list(self.windows.items()):
                if only is not None and name != only:
                    continue
                waiting, classes, value_bins = await asyncio.to_thread(window.absorb)
                for label, n in classes.items():
                    self.predicted.inc(n, tags={"model": name, "version": window.version, "label": label})
                for (output, label), n in value_bins.items():
                    self.value_bins.inc(
                        n, tags={"model": name, "version": window.version, "output": output, "bin": label}
                    )
                snapshot = window.snapshot()
                if not window.profile_sent:
                    snapshot["profile"] = window.profile
                answer = await self.hub.push.remote(name, self.replica, snapshot, waiting)
                window.profile_sent = not answer.get("need_profile", False)
                if answer.get("need_profile"):
                    snapshot["profile"] = window.profile
                    await self.hub.push.remote(name, self.replica, snapshot, [])
                    window.profile_sent = True

    # ------------------------------------------------------------------ actions

    async def monitor(self, request, name: str):
        from starlette.responses import JSONResponse

        if any(model == name for model, _ in self.windows):
            await self.push(only=name)
        return JSONResponse(await self.hub.report.remote(name))

    async def rollout(self, request, name: str):
        """GET /models/NAME/rollout: the rollout's state in the registry, each version's live
        figures over it, and the hub's last decision."""
        from starlette.responses import JSONResponse

        if any(model == name for model, _ in self.windows) or any(model == name for model, _ in self.traffic):
            await self.push(only=name)
        return JSONResponse(await self.hub.rollout_report.remote(name))

    async def feedback(self, request, name: str):
        """POST /models/NAME/feedback: {"labels": {REQUEST_ID: LABEL, ...}} for earlier
        predictions (a list of labels for a request of several rows), or a scoring body of
        rows with their "labels" beside it."""
        from starlette.responses import JSONResponse

        body = await self.endpoint.plane.read(request)
        try:
            payload = body.json()
        except BadRequest:
            raise BadRequest("the feedback body is not JSON") from None
        if not isinstance(payload, dict) or "labels" not in payload:
            raise InvalidInput(
                'feedback needs "labels": {"REQUEST_ID": LABEL, ...} (ids from the x-request-id header of '
                'predictions), or a scoring body (e.g. "dataframe_split") with its rows\' "labels" list',
            )
        labels = payload.pop("labels")
        if payload:  # rows with their labels: predict them here, score against the labels
            return JSONResponse(await self._rows_feedback(name, body, payload, labels))
        if not isinstance(labels, dict) or not labels or not all(isinstance(k, str) for k in labels):
            raise InvalidInput('"labels" must map request ids (x-request-id of each prediction) to their labels')
        for rid, label in labels.items():
            if not _is_label(label):
                raise InvalidInput(f"the label of request {rid!r} is not a value or a list of values: {label!r}")
        if any(model == name for model, _ in self.windows):
            await self.push(only=name)  # this replica's own recent predictions first
        wait_s = 2 * self.spec.push_interval_s + 0.5  # the other replicas' arrive within a push interval
        return JSONResponse(await self.hub.feedback.remote(name, labels, wait_s))

    async def _rows_feedback(self, name: str, body, payload: dict, labels) -> dict:
        followed = await self.endpoint.get_model(name)
        loaded = followed.current
        data, _ = body.decode(loaded, payload)  # the body without its labels
        rows = rows_of(data)
        if not isinstance(labels, list) or len(labels) != rows or not all(_is_label(v) for v in labels):
            raise InvalidInput(f'"labels" must be a list of {rows} labels, one per row of the input')
        try:
            result = await self.endpoint.plane.infer(loaded, data, None)
        except ModelFailure as err:
            raise InvalidInput(f"the model could not score the rows: {err}") from None
        return await self.hub.score_rows.remote(name, loaded.version, prediction_values(result), labels)

    # ------------------------------------------------------------------ payload logging

    async def _write_payloads_forever(self) -> None:
        while True:
            await asyncio.sleep(self.spec.payload_logging.flush_interval_s)
            try:
                await self.write_payloads()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("writing sampled payloads failed")

    async def write_payloads(self) -> None:
        """The sampled requests and responses so far, one Parquet file per model version, to
        the version's monitoring run (artifacts payloads/), masked columns replaced."""
        batch, self.payloads = self.payloads, []
        for key in {(name, version) for name, version, *_ in batch}:
            if key not in self.payload_runs:
                self.payload_runs[key] = await self.hub.monitoring_run.remote(*key)
        await asyncio.to_thread(self._write_payloads, batch)

    def _write_payloads(self, batch: list) -> None:
        import tempfile
        from pathlib import Path

        from raymaas.tracking import get_client

        if not batch:
            return
        client = get_client(self.endpoint.tracking_uri)
        mask = self.spec.payload_logging.mask_columns
        for (name, version), run_id in self.payload_runs.items():
            rows = [b for b in batch if b[0] == name and b[1] == version]
            if not rows:
                continue
            frame = payload_frame(rows, mask)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"payloads-{self.replica}-{int(time.time() * 1000)}.parquet"
                frame.to_parquet(path, index=False)
                client.log_artifact(run_id, str(path), "payloads")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._flush_task is not None:
            self._flush_task.cancel()
        try:  # the answers since the last flush
            self.record_metrics(*self._take_tallies())
        except Exception:
            logger.exception("recording the endpoint's last metrics failed")
        if self._payload_task is not None:
            self._payload_task.cancel()
            try:  # what was sampled since the last file, where its run is known
                self._write_payloads([b for b in self.payloads if (b[0], b[1]) in self.payload_runs])
            except Exception:
                logger.exception("writing the last sampled payloads failed")


def payload_frame(rows: list, mask: list[str]):
    """One row per input row of the sampled requests: its columns (masked ones '***') or the
    tensor row as JSON, the prediction, the request id and time."""
    import pandas as pd

    parts = []
    for _, _, data, result, request_id, at in rows:
        values = prediction_values(result)
        if isinstance(data, pd.DataFrame):
            part = data.reset_index(drop=True).copy()
            for column in mask:
                if column in part.columns:
                    part[column] = "***"
        else:
            arr = np.asarray(data)
            part = pd.DataFrame({"input": [json.dumps(r) for r in arr.reshape(len(arr), -1).tolist()]})
        part["prediction"] = [json.dumps(v) if isinstance(v, list) else v for v in values]
        part["request_id"] = request_id
        part["time"] = pd.to_datetime(at, unit="s")
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _is_label(value) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_label(v) for v in value if not isinstance(v, list)) and len(value) > 0
    return isinstance(value, (str, int, float, bool))
