"""Monitoring of every model endpoint (ServeSpec.monitoring, on by default): Prometheus metrics
through Ray's metrics API, input drift against the model's reference profile, and live
performance from labels sent later to /feedback.

Two parts in each model application:

    Monitoring   an EndpointExtension in every replica: counts and times every answer, keeps
                 the bins of its recent input rows (a ring of `window` rows; bins, never values)
                 and the predictions waiting for labels, and reports both to the hub every
                 push_interval_s; answers GET /models/NAME/monitor and POST .../feedback
    MonitorHub   one replica (no CPU) beside the endpoint: adds the replicas' bin counts up,
                 computes drift (raymaas.monitoring.drift) and live metrics over the whole
                 endpoint, sets the drift and live gauges, matches feedback to predictions, and
                 logs both to a monitoring run in MLflow (linked by tags to the model version)

Nothing on the request path but a counter, a histogram and an append: binning, class counts
and the reports run once per push interval, off the request's way.

What leaves a replica: bin counts of its window, and its predictions (the model's outputs,
kept in the hub's memory until labelled or feedback_ttl_s old) with their request ids. Request
contents do not, unless payload logging is switched on (monitoring.payload_logging): then a
sampled share of requests and responses goes, every flush_interval_s, to Parquet files in the
artifacts (payloads/) of the version's monitoring run, mask_columns replaced by '***'.

Prometheus series (Ray adds the ray_ prefix and the deployment, replica and application tags):

    raymaas_requests_total{model,version,code,action}    every answer, 4xx and 5xx included
    raymaas_request_latency_ms{model,action}             histogram, in the replica
    raymaas_batch_size                                   histogram of the predict batches
    raymaas_predicted_class_total{model,version,label}   classifiers' answers, by label
    raymaas_prediction_bin_total{model,version,output,bin}   regression answers, in the profile's bins
    raymaas_drift_psi{model,version,feature}             gauges set by the hub
    raymaas_drift_ks_pvalue{model,version,feature}        (a categorical feature: raymaas_drift_chi2_pvalue)
    raymaas_drift_flagged_features{model,version}
    raymaas_window_rows{model,version}
    raymaas_live_score{model,version,metric}             accuracy, precision/recall/f1_macro, rmse, mae
    raymaas_feedback_total{model,outcome}                matched, unknown, expired, duplicate, mismatched
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections import Counter, OrderedDict, deque
from typing import Any

import numpy as np

from raymaas.serving.endpoint import EndpointExtension
from raymaas.serving.index import SCORING_SCHEMA, error_doc
from raymaas.serving.protocol import VERSION_HEADER, ClientError, parse_scoring_request, read_body

logger = logging.getLogger("ray.serve")

HUB_DEPLOYMENT = "MonitorHub"
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
GAUGE_INTERVAL_S = 5.0
MAX_PENDING_ROWS_FACTOR = 4  # rows waiting to be binned, at most this many windows


def profile_of(loaded, reference: str | None) -> tuple[dict | None, str | None]:
    """(the reference profile of a loaded model, why there is none): the profile logged with
    the model, else the serve config's reference file, else none."""
    from raymaas.monitoring.profile import check_profile, load_profile

    try:
        python_model = loaded.model.unwrap_python_model()
    except Exception:  # not a python_function model of raymaas (scikit-learn by hand, say)
        python_model = None
    profile = getattr(python_model, "reference_profile", None)
    if profile is not None:
        return check_profile(profile, f"{loaded.name} version {loaded.version}'s profile"), None
    if reference:
        try:
            return load_profile(reference), None
        except (OSError, ValueError) as err:
            return None, f"the reference file could not be read: {err}"
    return None, "the model was logged without a reference profile and the serve config names no reference file"


def prediction_values(result) -> list:
    """One JSON-able value per row of a model's output (a list for several outputs): of a
    frame, its `prediction` column (a classifier asked for probabilities) or its
    `anomaly_score` (an anomaly scorer: the score's distribution is what drifts, not the
    verdict at one threshold)."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        if "prediction" in result.columns:
            return result["prediction"].tolist()
        if "anomaly_score" in result.columns:
            return result["anomaly_score"].tolist()
        return result.to_numpy().tolist()
    if isinstance(result, pd.Series):
        return result.tolist()
    arr = np.asarray(result)
    return arr.tolist() if arr.ndim >= 1 else [arr.item()]


class _Window:
    """One model version's recent inputs in one replica, as the bins of its drift features."""

    def __init__(self, loaded, size: int, reference: str | None):
        self.version = loaded.version
        self.profile, self.unavailable = profile_of(loaded, reference)
        if self.profile is not None and self.profile.get("binned") is False:
            n = len(self.profile["features"])
            self.profile, self.unavailable = None, f"the reference profile has no bins ({n} features are too many)"
        self.size = size
        features = self.profile["features"] if self.profile else []
        self.names = [f["name"] for f in features]
        self.edges = [np.asarray(f["edges"], dtype=np.float64) for f in features]
        self.columns = self.names if self.profile and self.profile["input"]["kind"] == "columns" else None
        # categorical columns, binned by category (raymaas.monitoring.profile.category_codes)
        self.categorical = {f["name"]: f["categories"] for f in features if f.get("kind") == "categorical"}
        predictions = (self.profile or {}).get("predictions") or {}
        self.task = {"classes": "classification", "values": "regression"}.get(predictions.get("kind"))
        self.output_edges = [np.asarray(o["edges"]) for o in predictions.get("outputs", [])]
        self.bins = np.zeros((size, len(features)), dtype=np.int16)
        self.times = np.zeros(size)
        self.filled = 0
        self.next = 0
        self.pending: deque = deque()  # (data, result, request_id, time): binned at the next push
        self.pending_rows = 0
        self.dropped_rows = 0
        self.profile_sent = False

    def add(self, data, result, request_id: str, rows: int) -> None:
        self.pending.append((data, result, request_id, time.time()))
        self.pending_rows += rows
        while self.pending_rows > MAX_PENDING_ROWS_FACTOR * self.size and len(self.pending) > 1:
            old = self.pending.popleft()  # a replica that cannot keep up drops the oldest, not the request
            n = _rows(old[0])
            self.pending_rows -= n
            self.dropped_rows += n

    def absorb(self) -> tuple[list, Counter, Counter]:
        """Bin what came since the last push; (predictions awaiting labels, class counts,
        regression bin counts)."""
        from raymaas.monitoring.profile import bin_index, drift_features
        from raymaas.serving.batching import _concat

        waiting, classes, value_bins = [], Counter(), Counter()
        taken = []
        while self.pending:
            data, result, request_id, at = self.pending.popleft()
            self.pending_rows -= _rows(data)
            values = prediction_values(result)
            waiting.append((request_id, at, values))
            if self.task == "regression" and self.output_edges:
                out = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
                for k, edges in enumerate(self.output_edges[: out.shape[1]]):
                    for b, n in Counter(bin_index(out[:, k], edges).tolist()).items():
                        value_bins[(str(k), _bin_label(edges, b))] += n
            elif self.task != "regression":
                classes.update(str(v) for v in values)
            taken.append((data, at))
        if self.profile is None or self.unavailable or not taken:
            return waiting, classes, value_bins
        # the requests' rows together: one binning per feature for the whole interval
        datas = [d for d, _ in taken]
        merged = _concat(datas) if len(datas) > 1 else datas[0]
        groups = [(merged, [at for _, at in taken], [_rows(d) for d in datas])] if merged is not None else []
        if merged is None:  # inputs of different shapes or types: each on its own
            groups = [(d, [at], [_rows(d)]) for d, at in taken]
        for data, times, counts in groups:
            try:
                matrix, names, _ = drift_features(data, self.columns, self.categorical)
            except (KeyError, ValueError, TypeError) as err:
                self.unavailable = f"the inputs do not match the reference profile: {err}"
                break
            if len(names) != len(self.names):
                self.unavailable = (
                    f"the inputs have {len(names)} drift features, the reference profile {len(self.names)}"
                )
                break
            bins = np.stack([bin_index(matrix[:, i], e) for i, e in enumerate(self.edges)], axis=1)
            self._store(bins, np.repeat(times, counts))
        return waiting, classes, value_bins

    def _store(self, bins: np.ndarray, times: np.ndarray) -> None:
        """Rows of bins into the ring, the oldest overwritten."""
        if len(bins) > self.size:
            bins, times = bins[-self.size :], times[-self.size :]
        n = len(bins)
        idx = (self.next + np.arange(n)) % self.size
        self.bins[idx] = bins
        self.times[idx] = times
        self.next = int((self.next + n) % self.size)
        self.filled = min(self.size, self.filled + n)

    def snapshot(self) -> dict:
        from raymaas.monitoring.drift import window_counts

        held = self.times[: self.filled] if self.filled < self.size else self.times
        out = {
            "version": self.version,
            "rows": int(self.filled),
            "oldest": float(held.min()) if self.filled else None,
            "newest": float(held.max()) if self.filled else None,
            "dropped_rows": self.dropped_rows,
            "unavailable": self.unavailable,
            "task": self.task,
            "counts": None,
        }
        if self.profile is not None and not self.unavailable and self.filled:
            out["counts"] = [c.tolist() for c in window_counts(self.bins[: self.filled].astype(np.int64), self.profile)]
        return out


def _rows(data) -> int:
    try:
        return len(data)
    except TypeError:
        return 1


def _bin_label(edges: np.ndarray, b: int) -> str:
    if b == 0:
        return f"<{edges[0]:.4g}"
    if b >= len(edges) + 1:
        return "missing"
    if b == len(edges):
        return f">{edges[-1]:.4g}"
    return f"[{edges[b - 1]:.4g},{edges[b]:.4g})"


# A label: a value, or a list of values (a prediction of several outputs)
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

    def __init__(self, endpoint):
        from ray import serve
        from ray.serve.metrics import Counter as PromCounter
        from ray.serve.metrics import Histogram

        super().__init__(endpoint)
        self.spec = endpoint.spec.monitoring
        self.hub = endpoint.monitor_hub
        self.references = {m.name: m.reference for m in endpoint.spec.models}
        context = serve.get_replica_context()
        replica_id = getattr(context, "replica_id", None)
        self.replica = getattr(replica_id, "unique_id", None) or str(getattr(context, "replica_tag", id(self)))
        self.windows: dict[str, _Window] = {}
        self.waiting: dict[str, list] = {}  # model -> predictions to send with the next push
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
            tag_keys=("model", "action"),
        )
        self.batch_size = Histogram(
            "raymaas_batch_size", description="requests per predict batch", boundaries=BATCH_BOUNDARIES
        )
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
        endpoint.batcher.batch_hooks.append(self._on_batch)
        if endpoint.dedicated is not None:  # its model is loaded: its window is ready before the first request
            loaded = endpoint.dedicated.current
            self.windows[loaded.name] = _Window(loaded, self.spec.window, self.references.get(loaded.name))

    def routes(self):
        return {("GET", "monitor"): self.monitor, ("POST", "feedback"): self.feedback}

    # ------------------------------------------------------------------ the request path

    def on_response(self, name, action, response, seconds) -> None:
        version = response.headers.get(VERSION_HEADER, "") if hasattr(response, "headers") else ""
        code = str(getattr(response, "status_code", 200))
        model, act = name or "", action or ""
        self.requests.inc(1, tags={"model": model, "version": version, "code": code, "action": act})
        self.latency.observe(seconds * 1000.0, tags={"model": model, "action": act})

    def on_prediction(self, loaded, data, result, request_id) -> None:
        window = self.windows.get(loaded.name)
        if window is None or window.version != loaded.version:
            window = self.windows[loaded.name] = _Window(loaded, self.spec.window, self.references.get(loaded.name))
        window.add(data, result, request_id, _rows(data))
        payloads = self.spec.payload_logging
        if payloads.enabled and random.random() < payloads.sample_rate:
            self.payloads.append((loaded.name, loaded.version, data, result, request_id, time.time()))
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._push_forever())
            if payloads.enabled:
                self._payload_task = loop.create_task(self._write_payloads_forever())

    def _on_batch(self, size: int) -> None:
        self.batch_size.observe(size)

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
        """Bin what came in and send each model's window and predictions to the hub."""
        async with self._push_lock:
            for name, window in list(self.windows.items()):
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

        if name in self.windows:
            await self.push(only=name)
        return JSONResponse(await self.hub.report.remote(name))

    async def feedback(self, request, name: str):
        """POST /models/NAME/feedback: {"labels": {REQUEST_ID: LABEL, ...}} for earlier
        predictions (a list of labels for a request of several rows), or a scoring body of
        rows with their "labels" beside it."""
        from starlette.responses import JSONResponse

        body = await read_body(request, self.endpoint.spec.max_request_bytes)
        try:
            payload = json.loads(body)
        except ValueError:
            raise ClientError(400, "the feedback body is not JSON") from None
        if not isinstance(payload, dict) or "labels" not in payload:
            raise ClientError(
                422,
                'feedback needs "labels": {"REQUEST_ID": LABEL, ...} (ids from the x-request-id header of '
                'predictions), or a scoring body (e.g. "dataframe_split") with its rows\' "labels" list',
            )
        labels = payload.pop("labels")
        if payload:  # rows with their labels: predict them here, score against the labels
            return JSONResponse(await self._rows_feedback(name, payload, labels))
        if not isinstance(labels, dict) or not labels or not all(isinstance(k, str) for k in labels):
            raise ClientError(422, '"labels" must map request ids (x-request-id of each prediction) to their labels')
        for rid, label in labels.items():
            if not _is_label(label):
                raise ClientError(422, f"the label of request {rid!r} is not a value or a list of values: {label!r}")
        if name in self.windows:
            await self.push(only=name)  # this replica's own recent predictions first
        wait_s = 2 * self.spec.push_interval_s + 0.5  # the other replicas' arrive within a push interval
        return JSONResponse(await self.hub.feedback.remote(name, labels, wait_s))

    async def _rows_feedback(self, name: str, payload: dict, labels) -> dict:
        from raymaas.serving.batching import PredictItem

        followed = await self.endpoint.get_model(name)
        loaded = followed.current
        data, params = parse_scoring_request(json.dumps(payload).encode(), "application/json", loaded.signature)
        rows = _rows(data)
        if not isinstance(labels, list) or len(labels) != rows or not all(_is_label(v) for v in labels):
            raise ClientError(422, f'"labels" must be a list of {rows} labels, one per row of the input')
        result = await self.endpoint.batcher.submit(PredictItem(loaded, data, None))
        if isinstance(result, ClientError):
            raise result
        if isinstance(result, Exception):
            raise ClientError(422, f"the model could not score the rows: {result}")
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


# --------------------------------------------------------------------------- the hub


class _ModelState:
    def __init__(self, spec):
        self.replicas: dict[str, tuple[float, dict]] = {}  # replica -> (when heard, snapshot)
        self.profiles: dict[str, dict | None] = {}  # version -> profile
        self.pending: OrderedDict = OrderedDict()  # request id -> (time, version, predictions)
        self.expired: OrderedDict = OrderedDict()  # request ids that waited too long
        self.labelled: OrderedDict = OrderedDict()  # request ids already given their labels
        self.live: deque = deque(maxlen=spec.feedback_window)  # (version, predicted, actual)
        self.outcomes: Counter = Counter()
        self.predictions = 0
        self.task: str | None = None


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def _hub_class():
    from ray.serve.metrics import Counter as PromCounter
    from ray.serve.metrics import Gauge

    from raymaas.serving.specs import ServeSpec

    class MonitorHub:
        """The endpoint-wide view of one application's models (one replica)."""

        def __init__(self, spec: dict):
            from raymaas import paths

            self.spec = ServeSpec.model_validate(spec)
            self.mon = self.spec.monitoring
            self.tracking_uri = self.spec.tracking_uri or paths.tracking_uri()
            self.models: dict[str, _ModelState] = {m.name: _ModelState(self.mon) for m in self.spec.models}
            self.runs: dict[tuple[str, str], str] = {}  # (model, version) -> monitoring run id
            self.logged_steps: Counter = Counter()
            self._tasks: list[asyncio.Task] = []
            tags = ("model", "version")
            self.g_psi = Gauge(
                "raymaas_drift_psi", description="PSI of a feature's window", tag_keys=(*tags, "feature")
            )
            self.g_ks = Gauge(
                "raymaas_drift_ks_pvalue", description="KS p-value of a feature's window", tag_keys=(*tags, "feature")
            )
            self.g_chi2 = Gauge(
                "raymaas_drift_chi2_pvalue",
                description="chi-squared p-value of a categorical feature's window",
                tag_keys=(*tags, "feature"),
            )
            self.g_flagged = Gauge("raymaas_drift_flagged_features", description="features flagged", tag_keys=tags)
            self.g_rows = Gauge("raymaas_window_rows", description="input rows in the drift window", tag_keys=tags)
            self.g_live = Gauge("raymaas_live_score", description="live performance", tag_keys=(*tags, "metric"))
            self.c_feedback = PromCounter(
                "raymaas_feedback", description="feedback by outcome", tag_keys=("model", "outcome")
            )

        def _start(self) -> None:
            if not self._tasks:
                loop = asyncio.get_running_loop()
                self._tasks = [loop.create_task(self._gauges_forever()), loop.create_task(self._log_forever())]

        def _state(self, model: str) -> _ModelState:
            if model not in self.models:
                raise ClientError(404, f"no published model {model!r} in this application")
            return self.models[model]

        # -------------------------------------------------------------- from the replicas

        async def push(self, model: str, replica: str, snapshot: dict, waiting: list) -> dict:
            self._start()
            state = self._state(model)
            version = snapshot["version"]
            if "profile" in snapshot:
                state.profiles[version] = snapshot.pop("profile")
            state.replicas[replica] = (time.time(), snapshot)
            state.task = snapshot.get("task") or state.task
            for request_id, at, values in waiting:
                state.pending[request_id] = (at, version, values)
                state.predictions += len(values)
            self._expire(state)
            return {"need_profile": version not in state.profiles}

        def _expire(self, state: _ModelState) -> None:
            cutoff = time.time() - self.mon.feedback_ttl_s
            while state.pending and (
                len(state.pending) > self.mon.max_pending_predictions or next(iter(state.pending.values()))[0] < cutoff
            ):
                rid, _ = state.pending.popitem(last=False)
                state.expired[rid] = None
            for kept in (state.expired, state.labelled):
                while len(kept) > self.mon.max_pending_predictions:
                    kept.popitem(last=False)

        # -------------------------------------------------------------- feedback

        async def feedback(self, model: str, labels: dict[str, Any], wait_s: float) -> dict:
            state = self._state(model)
            deadline = time.monotonic() + wait_s
            todo = dict(labels)
            result: dict[str, list] = {k: [] for k in ("matched", "unknown", "expired", "duplicate", "mismatched")}
            reasons: dict[str, str] = {}
            rows = 0
            while True:
                self._expire(state)
                for rid in list(todo):
                    label = todo[rid]
                    if rid in state.pending:
                        _, version, values = state.pending[rid]
                        actual = label if isinstance(label, list) and len(values) != 1 else [label]
                        if len(actual) != len(values):
                            result["mismatched"].append(rid)
                            reasons[rid] = f"{len(actual)} labels for a prediction of {len(values)} rows"
                        else:
                            state.pending.pop(rid)
                            state.labelled[rid] = None
                            state.live.extend((version, p, a) for p, a in zip(values, actual, strict=True))
                            result["matched"].append(rid)
                            rows += len(values)
                        del todo[rid]
                    elif rid in state.labelled:
                        result["duplicate"].append(rid)
                        del todo[rid]
                    elif rid in state.expired:
                        result["expired"].append(rid)
                        del todo[rid]
                if not todo or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.1)  # a prediction another replica has not reported yet
            result["unknown"] = list(todo)
            for outcome, ids in result.items():
                state.outcomes[outcome] += len(ids)
                if ids:
                    self.c_feedback.inc(len(ids), tags={"model": model, "outcome": outcome})
            answer = {"rows_scored": rows, **{k: v for k, v in result.items()}}
            if reasons:
                answer["reasons"] = reasons
            return answer

        async def score_rows(self, model: str, version: str, predicted: list, actual: list) -> dict:
            state = self._state(model)
            state.live.extend((version, p, a) for p, a in zip(predicted, actual, strict=True))
            state.outcomes["rows"] += len(predicted)
            self.c_feedback.inc(len(predicted), tags={"model": model, "outcome": "rows"})
            return {"rows_scored": len(predicted), "predictions": predicted}

        # -------------------------------------------------------------- the report

        async def report(self, model: str) -> dict:
            self._state(model)
            return await asyncio.to_thread(self._report, model)

        def _report(self, model: str) -> dict:
            from raymaas.monitoring.drift import DriftThresholds, drift_report
            from raymaas.monitoring.live import classification_scores, regression_scores

            state = self.models[model]
            now = time.time()
            stale = 3 * self.mon.push_interval_s + 5
            live = {r: s for r, (at, s) in state.replicas.items() if now - at <= stale}
            versions = sorted({s["version"] for s in live.values()}, key=_version_key)
            version = versions[-1] if versions else None
            current = [s for s in live.values() if s["version"] == version]
            rows = sum(s["rows"] for s in current)
            oldest = [s["oldest"] for s in current if s["oldest"] is not None]
            newest = [s["newest"] for s in current if s["newest"] is not None]
            profile = state.profiles.get(version)
            unavailable = next((s["unavailable"] for s in current if s["unavailable"]), None)
            if version is None:
                drift = {"status": "unavailable", "reason": "no predictions yet"}
            elif profile is None or unavailable:
                drift = {"status": "unavailable", "reason": unavailable or "no reference profile for this version"}
            elif rows == 0:
                drift = {"status": "unavailable", "reason": "no input rows in the window yet"}
            else:
                counts = [
                    np.sum([np.asarray(s["counts"][i]) for s in current if s["counts"] is not None], axis=0)
                    for i in range(len(profile["features"]))
                ]
                d = self.mon.drift
                drift = drift_report(profile, counts, rows, DriftThresholds(d.psi_threshold, d.ks_pvalue, d.min_rows))
            labelled = [(p, a) for v, p, a in state.live]
            task = state.task or _guess_task([p for p, _ in labelled])
            if not labelled:
                scores = {}
            elif task == "regression":
                scores = regression_scores([p for p, _ in labelled], [a for _, a in labelled])
            else:
                scores = classification_scores([p for p, _ in labelled], [a for _, a in labelled])
            return {
                "model": model,
                "version": version,
                "other_versions": versions[:-1],
                "replicas": len(current),
                "window": {
                    "rows": rows,
                    "rows_per_replica": self.mon.window,
                    "oldest_age_s": round(now - min(oldest), 3) if oldest else None,
                    "newest_age_s": round(now - max(newest), 3) if newest else None,
                    "dropped_rows": sum(s.get("dropped_rows", 0) for s in current),
                },
                "drift": drift,
                "live": {
                    "task": task,
                    "labelled_rows": len(labelled),
                    "window": self.mon.feedback_window,
                    "metrics": {k: round(v, 6) for k, v in scores.items()},
                    "feedback": {
                        k: int(state.outcomes[k])
                        for k in ("matched", "unknown", "expired", "duplicate", "mismatched", "rows")
                    },
                    "awaiting_labels": len(state.pending),
                    "predictions_seen": state.predictions,
                },
            }

        async def monitoring_run(self, model: str, version: str) -> str:
            """The id of the version's monitoring run (made on first use)."""
            from raymaas.tracking import get_client

            if (model, version) not in self.runs:
                client = get_client(self.tracking_uri)
                self.runs[(model, version)] = await asyncio.to_thread(monitoring_run, client, model, version)
            return self.runs[(model, version)]

        # -------------------------------------------------------------- gauges and MLflow

        async def _gauges_forever(self) -> None:
            while True:
                await asyncio.sleep(GAUGE_INTERVAL_S)
                for model in self.models:
                    try:
                        self._set_gauges(await asyncio.to_thread(self._report, model))
                    except Exception:
                        logger.exception("monitor gauges of %s failed", model)

        def _set_gauges(self, report: dict) -> None:
            if report["version"] is None:
                return
            tags = {"model": report["model"], "version": report["version"]}
            self.g_rows.set(report["window"]["rows"], tags=tags)
            drift = report["drift"]
            if drift.get("features"):
                self.g_flagged.set(len(drift["flagged"]), tags=tags)
                for feature, f in drift["features"].items():
                    self.g_psi.set(f["psi"], tags={**tags, "feature": feature})
                    if "chi2_pvalue" in f:
                        self.g_chi2.set(f["chi2_pvalue"], tags={**tags, "feature": feature})
                    else:
                        self.g_ks.set(f["ks_pvalue"], tags={**tags, "feature": feature})
            for metric, value in report["live"]["metrics"].items():
                self.g_live.set(value, tags={**tags, "metric": metric})

        async def _log_forever(self) -> None:
            while True:
                await asyncio.sleep(self.mon.log_interval_s)
                await asyncio.to_thread(self.log_to_mlflow)

        def log_to_mlflow(self) -> list[str]:
            """Log each model's report to its version's monitoring run; the run ids logged to."""
            logged = []
            for model in self.models:
                try:
                    report = self._report(model)
                    if report["version"] is None:
                        continue
                    logged.append(self._log_report(report))
                except Exception:
                    logger.exception("logging %s's monitor report to MLflow failed", model)
            return logged

        def _log_report(self, report: dict) -> str:
            from mlflow.entities import Metric

            from raymaas.tracking import get_client

            client = get_client(self.tracking_uri)
            key = (report["model"], report["version"])
            if key not in self.runs:
                self.runs[key] = monitoring_run(client, *key)
            run_id = self.runs[key]
            now = int(time.time() * 1000)
            step = self.logged_steps[key]
            self.logged_steps[key] += 1
            values = {"window_rows": report["window"]["rows"], "predictions_seen": report["live"]["predictions_seen"]}
            values.update({f"live_{k}": v for k, v in report["live"]["metrics"].items()})
            values.update({f"feedback_{k}": v for k, v in report["live"]["feedback"].items()})
            drift = report["drift"]
            if drift.get("features"):
                values["drift_flagged_features"] = len(drift["flagged"])
                values["drift_psi_max"] = max(f["psi"] for f in drift["features"].values())
                for feature, f in drift["features"].items():
                    values[_metric_key(f"drift_psi/{feature}")] = f["psi"]
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])
            client.log_dict(run_id, report, "monitor_report.json")
            return run_id

        def __del__(self):
            for task in self._tasks:
                task.cancel()
            if self._tasks:  # something was served: its last report goes to MLflow
                self.log_to_mlflow()

    MonitorHub.__name__ = MonitorHub.__qualname__ = HUB_DEPLOYMENT
    return MonitorHub


def _version_key(version: str):
    return (0, int(version)) if str(version).isdigit() else (1, str(version))


def _guess_task(predicted: list) -> str:
    if predicted and all(
        isinstance(p, float) or (isinstance(p, list) and p and isinstance(p[0], float)) for p in predicted
    ):
        return "regression"
    return "classification"


def monitoring_run(client, model: str, version: str) -> str:
    """The MLflow run that holds a served model version's monitoring (made on first use), in
    the experiment of the run that trained it, linked by tags both ways."""
    from raymaas.tracking import ensure_experiment

    mv = client.get_model_version(model, version)
    experiment_id = None
    if mv.run_id:
        try:
            experiment_id = client.get_run(mv.run_id).info.experiment_id
        except Exception:
            experiment_id = None
    if experiment_id is None:
        experiment_id = ensure_experiment(client, "monitoring")
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`raymaas.monitoring.model` = '{model}' and tags.`raymaas.monitoring.version` = '{version}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"monitor-{model}-v{version}",
        tags={
            "raymaas.job_kind": "monitor",  # not a training run: `raymaas runs` shows it as such
            "raymaas.monitoring.model": model,
            "raymaas.monitoring.version": str(version),
            "raymaas.monitoring.training_run_id": mv.run_id or "",
            "mlflow.note.content": f"Served performance and input drift of {model} version {version}.",
        },
    )
    client.set_model_version_tag(model, version, "raymaas.monitoring_run_id", run.info.run_id)
    return run.info.run_id


def build_monitor_hub(spec):
    """The MonitorHub deployment of an application (one replica, no CPU), bound to its spec."""
    from ray import serve

    options: dict[str, Any] = {"num_cpus": 0}
    if "runtime_env" in spec.ray_actor_options:
        options["runtime_env"] = spec.ray_actor_options["runtime_env"]
    return serve.deployment(
        _hub_class(),
        name=HUB_DEPLOYMENT,
        num_replicas=1,
        max_ongoing_requests=1000,
        ray_actor_options=options,
        graceful_shutdown_timeout_s=10,
    ).bind(spec.model_dump())
