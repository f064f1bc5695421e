"""Ray Serve: publish registered MLflow models as HTTP endpoints that follow the registry.

Every Serve application built here is one hop from the ingress (Ray's HAProxy by default, see
`haproxy_ingress_env`, or Serve's Python HTTP proxy): the deployment that holds the model
parses, validates and answers the request itself. A gateway deployment in
front (proxy -> gateway -> model) measured +8 ms p50 on a 2-core machine, more than the whole
budget, so each published model is its own application, routed by prefix:

    /models/NAME/invocations   POST, MLflow scoring formats    (app of one model, or a shared app)
    /models                    GET, the published models        (the index app at "/")
    /health, /docs, /openapi.json                               (the index app)

An application with several models serves them from shared replicas through Serve's model
multiplexing: for models with little traffic.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, model_validator

from raymaas.specs import SpecModel

logger = logging.getLogger("ray.serve")

CHAMPION = "champion"
# Where replicas read API keys: never the committed YAML, never MLflow params.
API_KEYS_ENV = "RAYMAAS_API_KEYS"  # comma-separated
API_KEYS_FILE_ENV = "RAYMAAS_API_KEYS_FILE"  # one key per line
VERSION_HEADER = "x-model-version"
NAME_HEADER = "x-model-name"
ALIAS_HEADER = "x-model-alias"
MODELS_PREFIX = "/models"
# The names the index looks for in Serve's status to find the published models.
ENDPOINT_DEPLOYMENT = "ModelEndpoint"
SCORING_FORMATS = ("inputs", "instances", "dataframe_split", "dataframe_records")


# --------------------------------------------------------------------------- ingress

INGRESSES = ("proxy", "haproxy")


def haproxy_ingress_env(state_dir) -> dict[str, str]:
    """The environment that makes a Ray instance's Serve take requests through Ray's HAProxy
    ingress instead of its Python HTTP proxy: the HAProxy that ships with ray[serve] 2.60
    forwards each request straight to an HTTP server in a replica. Measured on 2 cores
    (bench/serve_load.py): a tiny model's p50 2.0 ms instead of 10.2 ms, a heavy model's
    throughput at concurrency 32 193 instead of 110 requests/s, because the Python proxy's
    hop (and the replica's call back to it for the request body) is gone.

    It must be in the environment of Ray's own processes (set before a local Ray starts, or
    on `ray start`): Serve reads it when its controller starts. Ray keeps HAProxy's config,
    admin socket and server state in fixed /tmp paths and its stats and metrics listeners on
    fixed ports, so two Serve instances on one machine would share them; here they go to
    state_dir (made private) and free ports. Those two listeners bind all interfaces (Ray's
    template has no host for them); the request listener uses Serve's http_options host.
    """
    from pathlib import Path

    from raymaas.localcluster import free_port

    state = Path(state_dir).resolve()
    # HAProxy takes socket paths of at most 97 bytes, and Ray adds a 56-character node id
    # folder: /tmp/NAME is short enough, a pytest tmp_path is not.
    longest = len(str(state / ("n" * 56) / "metrics.sock"))
    if longest > 97:
        raise ValueError(f"HAProxy state folder {state} is too long for HAProxy's socket paths "
                         f"({longest} > 97 bytes with Ray's node folder); take a short one under /tmp")
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)  # the admin socket accepts commands from whoever can reach it
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # A stopping replica keeps answering this long so that load balancers can drop it
        # (Ray's default: 30 s, sized for remote balancers); the local HAProxy reloads its
        # config within a second, and retries a refused connection on another replica.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
        # the Serve proxy HAProxy falls back on while a route has no replica yet
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


def prepare_local_ingress(ingress: str):
    """Before this process starts a local Ray: make its Serve use `ingress` ("haproxy", the
    platform's default, or "proxy", Serve's Python HTTP proxy). Returns a function that
    removes what the HAProxy ingress kept on disk; call it after ray.shutdown()."""
    import shutil
    import tempfile

    if ingress not in INGRESSES:
        raise ValueError(f"unknown ingress {ingress!r}: pick one of {', '.join(INGRESSES)}")
    if ingress == "proxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
        return lambda: None
    state = tempfile.mkdtemp(prefix="raymaas-hap-", dir="/tmp")
    os.environ.update(haproxy_ingress_env(state))

    def cleanup() -> None:
        # HAProxy can outlive ray.shutdown() for a moment and keep the HTTP port bound (seen:
        # the next demo on the same port failed "Address already in use"). Its command line
        # names this folder, so these are the HAProxy processes this call started.
        import psutil

        from raymaas.localcluster import end_processes

        ours = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(state in part for part in proc.info["cmdline"] or ()):
                ours.append(proc)
        end_processes(ours)
        shutil.rmtree(state, ignore_errors=True)

    return cleanup


# --------------------------------------------------------------------------- the args of build_app


class AutoscalingSpec(SpecModel):
    min_replicas: int = Field(1, ge=0, description="replicas kept when idle")
    max_replicas: int = Field(2, ge=1, description="replicas at most, under load")
    target_ongoing_requests: float = Field(8, gt=0, description="requests in flight per replica that Serve aims for (batching wants a queue)")
    upscale_delay_s: float = Field(3, ge=0, description="seconds of load above target before adding a replica")
    downscale_delay_s: float = Field(60, ge=0, description="seconds of load below target before removing a replica")


class BatchingSpec(SpecModel):
    max_batch_size: int = Field(32, ge=1, description="requests run as one predict call at most")
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="seconds the first request of a batch waits for others (0: batch what is queued when the model is free)")


class ModelEndpointSpec(SpecModel):
    name: str = Field(..., description="registered model name in the MLflow Model Registry")
    alias: str | None = Field(None, description="registry alias to follow (default: champion unless version is set)")
    version: str | None = Field(None, description="a fixed model version instead of an alias")

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
        return self

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


class ServeSpec(SpecModel):
    """The args of one application: its models and how its deployment runs them."""

    models: list[ModelEndpointSpec] = Field(..., min_length=1, description="one model gets replicas of its own; several share replicas (multiplexing)")
    autoscaling_config: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Serve autoscaling of this application's replicas")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="dynamic batching of the predict path (raymaas.serving.Batcher)")
    max_ongoing_requests: int = Field(64, ge=1, description="requests a replica accepts at once (Serve's default of 5 starves batching)")
    ray_actor_options: dict[str, Any] = Field({"num_cpus": 0.5}, description="Ray resources of each replica (num_cpus, num_gpus, memory, runtime_env)")
    max_request_bytes: int = Field(1_000_000, ge=1, description="larger request bodies get 413")
    poll_interval_s: float = Field(3.0, gt=0, description="seconds between checks of the alias in the registry")
    max_models_per_replica: int = Field(4, ge=1, description="multiplexed models a replica keeps loaded (LRU)")
    tracking_uri: str | None = Field(None, description="MLflow store (default: MLFLOW_TRACKING_URI, else the embedded store)")

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


# --------------------------------------------------------------------------- requests


class ClientError(Exception):
    """A request the client must fix; carries its HTTP status."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.body = {"error_code": _ERROR_CODES.get(status, "BAD_REQUEST"), "message": message, **extra}


_ERROR_CODES = {400: "MALFORMED_REQUEST", 401: "UNAUTHENTICATED", 404: "RESOURCE_DOES_NOT_EXIST",
                405: "METHOD_NOT_ALLOWED", 413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
                422: "INVALID_PARAMETER_VALUE"}


def load_api_keys() -> frozenset[str]:
    """Keys from RAYMAAS_API_KEYS (comma-separated) and the file RAYMAAS_API_KEYS_FILE names."""
    keys = {k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",")}
    path = os.environ.get(API_KEYS_FILE_ENV)
    if path:
        with open(path) as f:
            keys.update(line.strip() for line in f)
    return frozenset(k for k in keys if k and not k.startswith("#"))


def check_api_key(headers, keys: frozenset[str]) -> None:
    """Raise 401 unless keys are off or the request carries one (Bearer or x-api-key)."""
    if not keys:
        return
    given = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given:
        given_b = given.encode()
        # compare against every key, so the time taken does not say which one nearly matched
        if sum(hmac.compare_digest(given_b, k.encode()) for k in keys):
            return
    raise ClientError(401, "a valid API key is required: send `Authorization: Bearer KEY` or `x-api-key: KEY`")


async def read_body(request, limit: int) -> bytes:
    """The request body, or 413 once it is over limit bytes (Content-Length or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ClientError(413, f"request body of {declared} bytes is over the limit of {limit}")
        except ValueError:
            raise ClientError(400, "Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_scoring_request(body: bytes, content_type: str, signature) -> tuple[Any, dict | None]:
    """Body in an MLflow scoring format -> (model input checked against the signature, params)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    mime = (content_type or "application/json").split(";")[0].strip().lower()
    if mime not in ("application/json", ""):
        raise ClientError(415, f"send application/json in one of the MLflow scoring formats {list(SCORING_FORMATS)}, got {mime!r}")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ClientError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise ClientError(422, f"the body must be a JSON object with exactly one of {list(SCORING_FORMATS)}, got a {type(payload).__name__}")
    formats = [k for k in SCORING_FORMATS if k in payload]
    if len(formats) != 1:
        raise ClientError(422, f"the body must have exactly one of {list(SCORING_FORMATS)}, got keys {sorted(payload)}",
                          expected=_schema_json(signature))
    params = payload.get("params")
    if params is not None and not isinstance(params, dict):
        raise ClientError(422, "params must be a JSON object")
    input_schema = signature.inputs if signature is not None else None
    try:
        data = _as_tensor(payload[formats[0]], input_schema) if formats[0] in ("inputs", "instances") else None
        if data is None:
            data = infer_and_parse_data({formats[0]: payload[formats[0]]}, input_schema)
    except MlflowException as err:
        raise ClientError(422, f"cannot read {formats[0]!r}: {_short(err.message)}", expected=_schema_json(signature)) from None
    except Exception as err:  # pandas/numpy refuse ragged or odd shapes in many ways
        raise ClientError(422, f"cannot read {formats[0]!r}: {_short(str(err))}", expected=_schema_json(signature)) from None
    if input_schema is None:
        return data, params
    from mlflow.models.utils import _enforce_schema

    try:
        return _enforce_schema(data, input_schema), params
    except Exception as err:
        message = err.message if isinstance(err, MlflowException) else str(err)
        raise ClientError(422, f"input does not match the model's signature: {_short(message)}",
                          expected=_schema_json(signature)) from None


def _as_tensor(value, input_schema):
    """A JSON list for a model with one numeric tensor input, as the array of the signature's
    dtype: what MLflow's parser builds, without its deep copy of the list (most of the parsing
    time for a wide row). None for anything else, which MLflow's parser reads."""
    import numpy as np

    if input_schema is None or not input_schema.is_tensor_spec() or len(input_schema.inputs) != 1:
        return None
    dtype = input_schema.inputs[0].type
    if not isinstance(value, list) or dtype.kind not in "biuf":
        return None
    return np.asarray(value, dtype=dtype)


def _schema_json(signature) -> list | None:
    return signature.inputs.to_dict() if signature is not None and signature.inputs is not None else None


def _short(text: str, limit: int = 600) -> str:
    # MLflow's messages repeat the whole input; keep what says what is wrong.
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------- models that follow the registry


@dataclass
class LoadedModel:
    """One loaded model version; swapped whole, so a request sees one version throughout."""

    name: str
    version: str
    alias: str | None
    model: Any  # mlflow.pyfunc.PyFuncModel
    signature: Any
    loaded_at: float = field(default_factory=time.time)

    def describe(self, route: str) -> dict:
        return {"name": self.name, "version": self.version, "alias": self.alias, "route": route,
                "signature": {"inputs": _schema_json(self.signature),
                              "outputs": self.signature.outputs.to_dict() if self.signature and self.signature.outputs else None}}

    def headers(self) -> dict[str, str]:
        h = {VERSION_HEADER: self.version, NAME_HEADER: self.name}
        if self.alias:
            h[ALIAS_HEADER] = self.alias
        return h


def resolve_version(client, spec: ModelEndpointSpec) -> str:
    if spec.version:
        return spec.version
    return str(client.get_model_version_by_alias(spec.name, spec.alias).version)


def load_serving_model(client, spec: ModelEndpointSpec, version: str) -> LoadedModel:
    """Load one exact version (not the alias, which may move while it loads)."""
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{spec.name}/{version}")
    return LoadedModel(spec.name, version, spec.alias, model, model.metadata.signature)


class FollowedModel:
    """A model that follows its registry alias: polls, loads a new version aside, swaps."""

    def __init__(self, spec: ModelEndpointSpec, tracking_uri: str, poll_interval_s: float):
        from raymaas.tracking import get_client

        self.spec = spec
        self.client = get_client(tracking_uri)
        self.poll_interval_s = poll_interval_s
        self.current = load_serving_model(self.client, spec, resolve_version(self.client, spec))
        self._task: asyncio.Task | None = None

    def start_following(self) -> None:
        if self.spec.alias and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                version = await asyncio.to_thread(resolve_version, self.client, self.spec)
                if version != self.current.version:
                    logger.info("%s@%s moved to version %s; loading it", self.spec.name, self.spec.alias, version)
                    loaded = await asyncio.to_thread(load_serving_model, self.client, self.spec, version)
                    old, self.current = self.current.version, loaded  # requests in flight keep the old one
                    logger.info("%s: now serving version %s (was %s)", self.spec.name, version, old)
            except asyncio.CancelledError:
                raise
            except Exception:  # a registry hiccup must not stop the replica serving the current version
                logger.exception("checking %s@%s in the registry failed; keeping version %s",
                                 self.spec.name, self.spec.alias, self.current.version)


# --------------------------------------------------------------------------- batched prediction


@dataclass
class _Item:
    loaded: LoadedModel
    data: Any
    params: dict | None


def _rows(data) -> int | None:
    import numpy as np
    import pandas as pd

    if isinstance(data, (np.ndarray, pd.DataFrame)) and data.ndim >= 1:
        return len(data)
    return None


def _concat(datas: list):
    import numpy as np
    import pandas as pd

    if all(isinstance(d, np.ndarray) for d in datas) and len({d.shape[1:] for d in datas}) == 1 and len({d.dtype for d in datas}) == 1:
        return np.concatenate(datas)
    if all(isinstance(d, pd.DataFrame) for d in datas) and len({tuple(d.columns) for d in datas}) == 1:
        return pd.concat(datas, ignore_index=True)
    return None


def _split(result, counts: list[int]) -> list | None:
    import numpy as np
    import pandas as pd

    total = sum(counts)
    if isinstance(result, (np.ndarray, list)) and len(result) == total:
        pieces, start = [], 0
        for n in counts:
            pieces.append(result[start:start + n])
            start += n
        return pieces
    if isinstance(result, (pd.DataFrame, pd.Series)) and len(result) == total:
        pieces, start = [], 0
        for n in counts:
            pieces.append(result.iloc[start:start + n].reset_index(drop=True))
            start += n
        return pieces
    return None


def predict_one(item: _Item):
    """Predict one request; a model that rejects a checked input is the client's 422."""
    from mlflow.exceptions import MlflowException

    try:
        if item.params is not None:
            return item.loaded.model.predict(item.data, params=item.params)
        return item.loaded.model.predict(item.data)
    except MlflowException as err:
        return ClientError(422, f"the model rejected the input: {_short(err.message)}", expected=_schema_json(item.loaded.signature))
    except (ValueError, TypeError, KeyError, IndexError) as err:
        return ClientError(422, f"the model rejected the input: {_short(str(err))}", expected=_schema_json(item.loaded.signature))
    except Exception as err:
        logger.exception("prediction failed")
        return err


def predict_batch(items: list[_Item]) -> list:
    """Run a batch as few predict calls as possible: one per model version whose inputs
    concatenate (the forward pass runs once on all rows); results split back per request."""
    results: list = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        key = (id(item.loaded), item.params is None, _rows(item.data) is not None)
        groups.setdefault(key, []).append(i)
    for (_, no_params, has_rows), idx in groups.items():
        if len(idx) > 1 and no_params and has_rows:
            datas = [items[i].data for i in idx]
            merged = _concat(datas)
            if merged is not None:
                try:
                    pieces = _split(items[idx[0]].loaded.model.predict(merged), [len(d) for d in datas])
                except Exception:
                    pieces = None  # one bad request must not fail the others: predict one by one
                if pieces is not None:
                    for i, piece in zip(idx, pieces):
                        results[i] = piece
                    continue
        for i in idx:
            results[i] = predict_one(items[i])
    return results


class Batcher:
    """Dynamic batching that forms a batch when the model is free, not when a request comes.

    Requests queue while a batch runs; the next batch takes everything queued, up to
    max_batch_size, the moment the previous one returns. An idle model answers a lone
    request at once; a busy one sees batches as large as the load. Ray 2.60's @serve.batch
    forms each batch as soon as the previous one has been *formed* and lets it wait for its
    turn: under a steady closed-loop load its batches stay at 1 (measured: 32 requests in
    the replica, batches of 1, 80 requests/s where a 15 ms batch allows 2,000).
    """

    def __init__(self, fn, max_batch_size: int, wait_s: float = 0.0):
        from collections import deque

        self.fn = fn  # list of items -> list of results, run in a thread (torch releases the GIL)
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._queue: deque = deque()
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batch_sizes: deque = deque(maxlen=1000)  # the last 1,000, for whoever wants to look

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = loop.create_task(self._run())
        future = loop.create_future()
        self._queue.append((item, future))
        self._ready.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            if self.wait_s and len(self._queue) < self.max_batch_size:
                await asyncio.sleep(self.wait_s)
            batch = []
            while self._queue and len(batch) < self.max_batch_size:
                item, future = self._queue.popleft()
                if not future.done():  # a client that went away has its future cancelled
                    batch.append((item, future))
            if not self._queue:
                self._ready.clear()
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            except Exception as err:  # noqa: BLE001 - every waiting request gets the failure
                results = [err] * len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def predictions_json(result) -> bytes:
    from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

    return json.dumps({"predictions": _get_jsonable_obj(result, pandas_orient="records")}, cls=NumpyEncoder).encode()


def error_response(err: ClientError, headers: dict | None = None):
    from starlette.responses import Response

    extra = dict(headers or {})
    if err.status == 401:
        extra["www-authenticate"] = "Bearer"
    return Response(json.dumps(err.body).encode(), status_code=err.status, media_type="application/json", headers=extra)


def _relative_path(request) -> list[str]:
    path = request.scope.get("path", "/")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return [p for p in path.split("/") if p]


# --------------------------------------------------------------------------- the deployment


def _endpoint_class(max_models_per_replica: int):
    # Built on first use: raymaas must import without Ray Serve (no side effects at import).
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    class ModelEndpoint:
        """Serves the models of one application: one model per replica set, or several
        multiplexed. Parses, validates, batches and answers in the replica the proxy picked."""

        def __init__(self, spec: dict):
            from raymaas.tracking import resolve_tracking_uri

            self.spec = ServeSpec.model_validate(spec)
            self.tracking_uri = self.spec.tracking_uri or resolve_tracking_uri()
            self.api_keys = load_api_keys()
            self.by_name = {m.name: m for m in self.spec.models}
            self.shared = len(self.spec.models) > 1
            self.batcher = Batcher(predict_batch, self.spec.batching.max_batch_size, self.spec.batching.batch_wait_timeout_s)
            self.dedicated: FollowedModel | None = None
            if not self.shared:
                # Loaded before the replica reports ready: a replica never answers without a model.
                self.dedicated = FollowedModel(self.spec.models[0], self.tracking_uri, self.spec.poll_interval_s)

        async def get_model(self, name: str) -> FollowedModel:
            if self.dedicated is not None:
                self.dedicated.start_following()
                return self.dedicated
            return await self._load_shared(name)

        @serve.multiplexed(max_num_models_per_replica=max_models_per_replica)
        async def _load_shared(self, name: str) -> FollowedModel:
            followed = await asyncio.to_thread(FollowedModel, self.by_name[name], self.tracking_uri, self.spec.poll_interval_s)
            followed.start_following()
            return _Evictable(followed)

        async def describe(self) -> list[dict]:
            """Name, version, alias, route and signature of each model of this application."""
            out = []
            for name, spec in self.by_name.items():
                route = f"{MODELS_PREFIX}/{name}/invocations"
                if self.dedicated is not None:
                    out.append(self.dedicated.current.describe(route))
                    continue
                out.append(await asyncio.to_thread(_describe_from_registry, spec, self.tracking_uri, route))
            return out

        async def __call__(self, request: Request) -> Response:
            loaded = None
            try:
                parts = _relative_path(request)
                if self.shared and not parts and request.method == "GET":
                    # a shared app owns the /models prefix, so it answers the listing too
                    return JSONResponse({"models": await list_published_models()})
                name = self._model_name(parts)
                if request.method == "GET" and parts[-1:] != ["invocations"]:
                    return JSONResponse((await self.describe())[list(self.by_name).index(name)] if self.shared
                                        else self.dedicated.current.describe(f"{MODELS_PREFIX}/{name}/invocations"))
                if request.method != "POST":
                    raise ClientError(405, f"predict with POST {MODELS_PREFIX}/{name}/invocations")
                check_api_key(request.headers, self.api_keys)
                body = await read_body(request, self.spec.max_request_bytes)
                followed = await self.get_model(name)
                loaded = followed.current
                data, params = parse_scoring_request(body, request.headers.get("content-type", ""), loaded.signature)
                result = await self.batcher.submit(_Item(loaded, data, params))
                if isinstance(result, ClientError):
                    raise result
                if isinstance(result, Exception):
                    return JSONResponse({"error_code": "INTERNAL_ERROR", "message": f"the model failed: {result}"},
                                        status_code=500, headers=loaded.headers())
                return Response(predictions_json(result), media_type="application/json", headers=loaded.headers())
            except ClientError as err:
                return error_response(err, loaded.headers() if loaded else None)

        def _model_name(self, parts: list[str]) -> str:
            # dedicated app at /models/NAME: [] or ["invocations"]; shared app at /models: [NAME, ...]
            if self.dedicated is not None and parts in ([], ["invocations"]):
                return self.spec.models[0].name
            if self.shared and 1 <= len(parts) <= 2 and parts[0] in self.by_name and parts[1:] in ([], ["invocations"]):
                return parts[0]
            raise ClientError(404, f"no published model at {'/'.join(parts) or '/'}; GET /models lists them")

        def __del__(self):
            if hasattr(self, "batcher"):
                self.batcher.stop()
            if self.dedicated is not None:
                self.dedicated.stop()

    ModelEndpoint.__name__ = ModelEndpoint.__qualname__ = ENDPOINT_DEPLOYMENT
    return ModelEndpoint


class _Evictable:
    """What the multiplexer caches: stops following the alias once evicted (LRU)."""

    def __init__(self, followed: FollowedModel):
        self.followed = followed

    @property
    def current(self) -> LoadedModel:
        return self.followed.current

    def start_following(self) -> None:
        pass

    def __del__(self):
        self.followed.stop()


def _describe_from_registry(spec: ModelEndpointSpec, tracking_uri: str, route: str) -> dict:
    import mlflow

    from raymaas.tracking import get_client

    client = get_client(tracking_uri)
    version = resolve_version(client, spec)
    info = mlflow.models.get_model_info(f"models:/{spec.name}/{version}")
    return LoadedModel(spec.name, version, spec.alias, None, info.signature).describe(route)


def build_model_app(spec: ServeSpec):
    """The Serve application of spec's models (route it at spec.route_prefix)."""
    from ray import serve

    cls = _endpoint_class(spec.max_models_per_replica)
    deployment = serve.deployment(
        cls,
        name=ENDPOINT_DEPLOYMENT,
        autoscaling_config=spec.autoscaling_config.model_dump(),
        max_ongoing_requests=spec.max_ongoing_requests,
        ray_actor_options=spec.ray_actor_options,
        # a replica loads its model in __init__; a big one takes a while on a busy node
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=10,
    )
    return deployment.bind(spec.model_dump())


# --------------------------------------------------------------------------- the index: listing, health, docs


def _index_class():
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response

    class ModelIndex:
        """GET /health, GET /models (the published models), /openapi.json and /docs."""

        def __init__(self, spec: dict):
            self.spec = IndexSpec.model_validate(spec)

        async def __call__(self, request: Request) -> Response:
            parts = _relative_path(request)
            if request.method != "GET":
                if parts[:1] == ["models"]:
                    return error_response(ClientError(404, f"no published model named {parts[1] if len(parts) > 1 else ''!r}; GET /models lists them"))
                return error_response(ClientError(404, f"nothing at /{'/'.join(parts)}"))
            if parts in (["health"], ["-", "healthz"], ["ping"]):
                return JSONResponse({"status": "ok"})
            if parts == ["models"]:
                return JSONResponse({"models": await list_published_models()})
            if parts == ["openapi.json"]:
                return JSONResponse(openapi_document(self.spec.title, await list_published_models()))
            if parts == ["docs"]:
                from fastapi.openapi.docs import get_swagger_ui_html

                return HTMLResponse(get_swagger_ui_html(openapi_url="/openapi.json", title=self.spec.title).body)
            if parts[:1] == ["models"] and len(parts) >= 2:
                return error_response(ClientError(404, f"no published model named {parts[1]!r}; GET /models lists them"))
            return error_response(ClientError(404, f"nothing at /{'/'.join(parts)}; see /docs"))

    return ModelIndex


async def list_published_models() -> list[dict]:
    """Every model this platform publishes on the Serve instance, found through Serve's status."""
    from ray import serve

    status = await asyncio.to_thread(serve.status)
    apps = [name for name, app in status.applications.items()
            if ENDPOINT_DEPLOYMENT in app.deployments and app.status == "RUNNING"]
    found = await asyncio.gather(*(serve.get_app_handle(a).describe.remote() for a in apps), return_exceptions=True)
    models = []
    for app, result in zip(apps, found):
        if isinstance(result, BaseException):
            logger.warning("application %s did not describe its models: %s", app, result)
            continue
        models.extend({**m, "application": app} for m in result)
    return sorted(models, key=lambda m: m["name"])


def build_index_app(spec: IndexSpec):
    """The index application (route it at "/")."""
    from ray import serve

    deployment = serve.deployment(_index_class(), name="ModelIndex", num_replicas=1,
                                  ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32)
    return deployment.bind(spec.model_dump())


def openapi_document(title: str, models: list[dict]) -> dict:
    """An OpenAPI 3 document of the routes, one prediction path per published model."""
    scoring = {
        "type": "object",
        "description": "exactly one of the MLflow scoring formats",
        "properties": {
            "inputs": {"description": "tensor input: a (nested) list, or a mapping of named tensors"},
            "instances": {"description": "TF-serving style rows"},
            "dataframe_split": {"type": "object", "properties": {"columns": {"type": "array"}, "data": {"type": "array"}}},
            "dataframe_records": {"type": "array", "items": {"type": "object"}},
            "params": {"type": "object"},
        },
    }
    error = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "error_code": {"type": "string"}, "message": {"type": "string"}, "expected": {}}}}}}
    paths: dict = {
        "/health": {"get": {"summary": "liveness", "responses": {"200": {"description": "ok"}}}},
        "/models": {"get": {"summary": "published models: name, version, alias, signature",
                            "responses": {"200": {"description": "the models"}}}},
    }
    for m in models:
        paths[m["route"]] = {"post": {
            "summary": f"predict with {m['name']} ({'@' + m['alias'] if m['alias'] else 'version ' + m['version']})",
            "description": f"input signature: {json.dumps(m['signature']['inputs'])}",
            "requestBody": {"required": True, "content": {"application/json": {"schema": scoring}}},
            "responses": {
                "200": {"description": f"predictions; header {VERSION_HEADER} names the version that answered",
                        "content": {"application/json": {"schema": {"type": "object", "properties": {"predictions": {}}}}}},
                "400": {"description": "malformed JSON", **error},
                "401": {"description": "missing or wrong API key", **error},
                "413": {"description": "body too large", **error},
                "422": {"description": "input does not match the signature", **error},
            },
        }}
    return {"openapi": "3.0.3", "info": {"title": title, "version": "1"}, "paths": paths,
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                               "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}}}


# --------------------------------------------------------------------------- deploying a config file


@dataclass(frozen=True)
class DeployedApp:
    name: str
    route_prefix: str
    base_url: str

    @property
    def url(self) -> str:
        return self.base_url + self.route_prefix.rstrip("/")


def deploy_config(config_path: str, http_host: str | None = None, http_port: int | None = None) -> list[DeployedApp]:
    """Deploy every application of a Serve config file from this driver (its code ships
    with the driver's runtime env); return where each answers."""
    import yaml
    from ray import serve
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    with open(config_path) as f:
        config = ServeDeploySchema.model_validate(yaml.safe_load(f))
    http = config.http_options
    host = http_host or http.host or "127.0.0.1"
    port = http_port or http.port or 8000
    serve.start(http_options={"host": host, "port": port})
    deployed = []
    for app in config.applications:
        builder = import_attr(app.import_path)
        built = call_user_app_builder_with_args_if_necessary(builder, app.args or {})
        serve.run(built, name=app.name, route_prefix=app.route_prefix, blocking=False)
        deployed.append(DeployedApp(app.name, app.route_prefix, f"http://{host}:{port}"))
    return deployed
