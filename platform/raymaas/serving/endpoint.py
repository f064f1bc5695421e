"""The model applications: a Serve deployment, ModelEndpoint, that holds the models of one
application and parses, validates, batches and answers each request in the replica the
ingress picked (one hop). One model gets replicas of its own (route prefix /models/NAME);
several share replicas through Serve's model multiplexing (route prefix /models).

A model's routes are a small table, {(METHOD, ACTION): handler}, under /models/NAME:

    GET   /models/NAME                the model: version, alias, route, signature, actions
                                      (no API key)
    POST  /models/NAME/invocations    predict, MLflow scoring formats (the built-in action;
                                      POST /models/NAME predicts too)
    GET   /models/NAME/ping           200 {"status": "ok"} while the endpoint answers; /health
                                      the same (no API key)
    GET   /models/NAME/version        the MLflow version serving it, as text (no API key)
    GET   /models                     the published models (a shared app owns that prefix)

ping, health and version are there so that MLflow's own clients work unchanged against
/models/NAME as against `mlflow models serve`: ScoringServerClient(host, "PORT/models/NAME")
waits on /ping, then posts to /invocations. /ping answers 200 as MLflow's does while the model
is loaded, which a replica's is from before it answers anything (a shared app's models load on
their first request, as multiplexing intends: a probe must not load a model nor evict another);
its body is the index's /ping JSON, not MLflow's "\n", which is not JSON. /version answers
what MLflow's does, the MLflow version (mlflow.version.VERSION) as the whole body, since a
client asking it compares MLflow versions; as text/plain where MLflow says application/json of
a body that is not JSON (its client reads the text either way); the model's version is in
GET /models/NAME and every prediction's x-model-version. None of the three needs an API key:
health checks and MLflow's client send none, and they say nothing a key guards.

A prediction's steps (read, decode, pick the version, infer, encode) are the data plane's
(raymaas.serving.dataplane); every step, and every action, raises a typed error
(raymaas.serving.errors) that `_answer` turns into the response, the one place errors become
HTTP; anything else raised is logged and answered 500 in the same JSON.

Extensions add actions and observe predictions without editing the protocol or the batching
code. The endpoint's extensions are assembled in one list, `build_model_app`'s: the platform's
own (monitoring when spec.monitoring.enabled, with its MonitorHub deployment; /explain when
spec.explain.enabled, with its Explainer deployment) and those given to it. Each is a
`Plugin(factory, settings, handle)`: every replica's endpoint calls factory(endpoint,
settings, handle) in its __init__, after its model is loaded, so an extension gets only its
own slice of the spec and its own deployment's handle. `build_model_app(spec,
extensions=[...])` also takes bare factories (a callable taking the endpoint, settings and
handle, e.g. a subclass of `EndpointExtension`), given no settings nor handle:

    class MyExtension(EndpointExtension):
        def routes(self):
            return {("GET", "monitor"): self.monitor, ("POST", "feedback"): self.feedback}

        async def monitor(self, request, name):   # -> a starlette Response
            followed = await self.endpoint.get_model(name)
            return JSONResponse({"version": followed.current.version, ...})

        async def feedback(self, request, name):
            body = await self.endpoint.plane.read(request)
            ...                                    # raise InvalidInput(...) for a bad one

        def on_prediction(self, loaded, data, result, request_id):
            ...                                    # quick: queue, count, sample

    build_model_app(spec, extensions=[MyExtension])

- routes(): the endpoint answers METHOD /models/NAME/ACTION with `await handler(request, name)`
  once the API key checks out (an action needs a key as invocations does). A ServingError
  raised there is its answer. An action taken twice is an error when the replica starts.
  An unknown action answers 404 (`no published model at ...; GET /models lists them`), a
  known one with another method 405.
- route_docs (a class attribute): {(METHOD, ACTION): an OpenAPI operation object} of its
  routes, for /openapi.json (raymaas.serving.index: a schema {SCORING_SCHEMA: {...}} stands
  for the model's scoring body, built from its signature); a route without one is documented
  as "an extension's action".
- on_prediction(loaded, data, result, request_id): called in the replica's event loop after
  each successful prediction (a 200), with the LoadedModel that answered, the parsed input,
  the model's output and the request's id (Serve's, which the response carries as
  x-request-id); it must return quickly; what it raises is logged, not answered.
  `endpoint.prediction_hooks` is the list it goes to.
- on_shadow(loaded, data, result, request_id, answered, seconds): during a shadow rollout,
  called after the candidate (loaded) predicted its copy of a request the followed version
  answered (answered: that answer); result is the candidate's output, or the exception or
  ServingError it failed with; seconds its predict's (the batch's predict calls, not its wait
  for an idle model). Called off the request's way, only
  for the copies that ran (not those dropped under load).
- on_response(name, action, response, seconds): called after every answer of the app
  (errors too; name and action None where the path named no model), for metrics.
- stop(): when the endpoint goes away.
The factories travel to the replicas as deployment args (cloudpickle, by reference): give
module-level classes or functions of raymaas (its code ships with the driver).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from raymaas.serving.auth import check_api_key, load_api_keys
from raymaas.serving.dataplane import DataPlane, encode
from raymaas.serving.errors import MethodNotAllowed, ModelFailure, NotFound, ServingError, Unavailable
from raymaas.serving.explaining import Explanations, build_explainer
from raymaas.serving.extension import (
    EndpointExtension,
    Handler,
    Plugin,
    PredictionHook,
    ResponseHook,
    ShadowHook,
)
from raymaas.serving.following import FollowedModel, LoadedModel, resolve_version
from raymaas.serving.hub import build_monitor_hub
from raymaas.serving.index import (
    ENDPOINT_DEPLOYMENT,
    IMAGES_ONLY,
    SCORING_SCHEMA,
    error_doc,
    list_published_models,
)
from raymaas.serving.monitoring import Monitoring
from raymaas.serving.protocol import MODELS_PREFIX, error_response, relative_path
from raymaas.serving.specs import ModelEndpointSpec, ServeSpec

logger = logging.getLogger("ray.serve")

INVOCATIONS = "invocations"
PING = "ping"
HEALTH = "health"
VERSION = "version"
# routes answered without an API key: what health checks and MLflow's client call
PUBLIC_ROUTES = frozenset({("GET", PING), ("GET", HEALTH), ("GET", VERSION)})

_PING_DOC = {
    "summary": "health check, as MLflow's scoring server's /ping: 200 while the endpoint answers",
    "security": [],
    "responses": {
        "200": {
            "description": "the endpoint answers",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
                }
            },
        }
    },
}

# The OpenAPI operations of the built-in routes (ACTION "" is GET /models/NAME itself).
ROUTE_DOCS: dict[tuple[str, str], dict] = {
    ("GET", ""): {
        "summary": "the model: version, alias, route, signature and the actions it answers",
        "security": [],
        "responses": {
            "200": {
                "description": "the model",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["name", "version", "route", "signature", "actions"],
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "alias": {"type": ["string", "null"]},
                                "route": {"type": "string"},
                                "signature": {"type": "object"},
                                "actions": {
                                    "type": "object",
                                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        }
                    }
                },
            }
        },
    },
    ("POST", INVOCATIONS): {
        "summary": "predict (MLflow scoring formats, as `mlflow models serve`)",
        "description": "application/json with exactly one of the scoring formats the signature takes (and the "
        "params it declares), or text/csv: a header row, then rows; a model of images (a float32 [-1, C, H, W] "
        "signature) also takes one PNG or JPEG body, or several image files in a multipart form, resized and "
        "converted as its training read them",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {SCORING_SCHEMA: {}}},
                "text/csv": {"schema": {"type": "string", "description": "a header row, then one row per input"}},
                "image/png": {
                    "schema": {"type": "string", "format": "binary", "description": "one image"},
                    IMAGES_ONLY: True,
                },
                "image/jpeg": {
                    "schema": {"type": "string", "format": "binary", "description": "one image"},
                    IMAGES_ONLY: True,
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "description": "image files, answered in the order sent",
                        "additionalProperties": {"type": "string", "format": "binary"},
                    },
                    IMAGES_ONLY: True,
                },
            },
        },
        "responses": {
            "200": {
                "description": "predictions; header x-model-version names the version that answered, x-request-id "
                "the id /feedback takes",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "required": ["predictions"], "properties": {"predictions": {}}}
                    }
                },
            },
            "400": error_doc("malformed JSON, CSV or multipart body"),
            "413": error_doc("body too large, or an image of too many pixels"),
            "415": error_doc("a content type this model does not take"),
            "422": error_doc("input does not match the signature, or an image that does not decode"),
            "500": error_doc("the model failed"),
        },
    },
    ("GET", PING): _PING_DOC,
    ("GET", HEALTH): {**_PING_DOC, "summary": "the same as ping (MLflow's scoring server has both)"},
    ("GET", VERSION): {
        "summary": "the MLflow version serving the model, as MLflow's scoring server's /version",
        "security": [],
        "responses": {
            "200": {
                "description": "the version, the whole body",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
}


def _endpoint_class(max_models_per_replica: int):
    # Built on first use: raymaas must import without Ray Serve (no side effects at import).
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    class ModelEndpoint:
        """Serves the models of one application: one model per replica set, or several
        multiplexed. Parses, validates, batches and answers in the replica the proxy picked."""

        def __init__(self, spec: dict, plugins: Sequence[Plugin] = ()):
            from raymaas import paths

            self.spec = ServeSpec.model_validate(spec)
            self.tracking_uri = self.spec.tracking_uri or paths.tracking_uri()
            self.api_keys = load_api_keys()
            self.by_name = {m.name: m for m in self.spec.models}
            self.shared = len(self.spec.models) > 1
            self.plane = DataPlane(
                self.spec.max_request_bytes,
                self.spec.batching.max_batch_size,
                self.spec.batching.batch_wait_timeout_s,
                self.spec.rollout.max_shadow_queued,
            )
            self.dedicated: FollowedModel | None = None
            if not self.shared:
                # Loaded before the replica reports ready: a replica never answers without a model.
                self.dedicated = FollowedModel(
                    self.spec.models[0], self.tracking_uri, self.spec.poll_interval_s, self.spec.rollout.enabled
                )
            self.routes: dict[tuple[str, str], Handler] = {
                ("POST", INVOCATIONS): self.invocations,
                ("GET", PING): self.ping,
                ("GET", HEALTH): self.ping,
                ("GET", VERSION): self.version,
            }
            self.prediction_hooks: list[PredictionHook] = []
            self.response_hooks: list[ResponseHook] = []
            self.shadow_hooks: list[ShadowHook] = []
            self._shadows: set[asyncio.Task] = set()  # shadow predictions in flight (held: the loop keeps weak refs)
            self.extensions = [plugin.factory(self, plugin.settings, plugin.handle) for plugin in plugins]
            for ext in self.extensions:
                for (method, action), handler in ext.routes().items():
                    key = (method.upper(), action)
                    if key in self.routes:
                        raise ValueError(f"{type(ext).__name__}: {key[0]} {MODELS_PREFIX}/NAME/{action} is taken")
                    self.routes[key] = handler
                if ext.on_prediction is not None:
                    self.prediction_hooks.append(ext.on_prediction)
                if ext.on_response is not None:
                    self.response_hooks.append(ext.on_response)
                if ext.on_shadow is not None:
                    self.shadow_hooks.append(ext.on_shadow)
            self.actions = {action for _, action in self.routes}
            self.route_docs = route_docs(self.extensions)

        async def get_model(self, name: str) -> FollowedModel:
            if self.dedicated is not None:
                self.dedicated.start_following()
                return self.dedicated
            return await self._load_shared(name)

        @serve.multiplexed(max_num_models_per_replica=max_models_per_replica)
        async def _load_shared(self, name: str) -> FollowedModel:
            followed = await asyncio.to_thread(
                FollowedModel,
                self.by_name[name],
                self.tracking_uri,
                self.spec.poll_interval_s,
                self.spec.rollout.enabled,
            )
            followed.start_following()
            return _Evictable(followed)

        async def describe(self, docs: bool = False) -> list[dict]:
            """Name, version, alias, route, signature (its params too) and actions of each model
            of this application; with docs, the OpenAPI operations of its routes too."""
            return [await self.describe_model(name, docs) for name in self.by_name]

        async def describe_model(self, name: str, docs: bool = False) -> dict:
            rollout = None
            if self.dedicated is not None:
                self.dedicated.start_following()  # a client may ask what is served before predicting
                loaded, rollout = self.dedicated.current, self.dedicated.rollout
            else:  # the version the alias names now, without loading a model the replica may not hold
                loaded = await asyncio.to_thread(_loaded_from_registry, self.by_name[name], self.tracking_uri)
            described = model_description(loaded, self.routes, self.route_docs if docs else None)
            if rollout is not None:
                described["rollout"] = {
                    "version": rollout.candidate.version,
                    "share": rollout.share,
                    "mode": rollout.mode,
                }
            return described

        async def __call__(self, request: Request) -> Response:
            if not self.response_hooks:
                return await self._answer(request, [None, None])
            started = time.perf_counter()
            seen: list[str | None] = [None, None]  # the model and action the path named
            response = await self._answer(request, seen)
            seconds = time.perf_counter() - started
            for hook in self.response_hooks:
                try:
                    hook(seen[0], seen[1], response, seconds)
                except Exception:
                    logger.exception("response hook %r failed", hook)
            return response

        async def _answer(self, request: Request, seen: list) -> Response:
            try:
                parts = relative_path(request)
                if self.shared and not parts and request.method == "GET":
                    # a shared app owns the /models prefix, so it answers the listing too
                    return JSONResponse({"models": await list_published_models()})
                name, action = self._route(parts)
                seen[0] = name
                if action is None:
                    if request.method == "GET":
                        return JSONResponse(await self.describe_model(name))
                    action = INVOCATIONS
                seen[1] = action
                handler = self.routes.get((request.method, action))
                if handler is None:
                    if action == INVOCATIONS:
                        raise MethodNotAllowed(f"predict with POST {MODELS_PREFIX}/{name}/{INVOCATIONS}")
                    methods = sorted(m for m, a in self.routes if a == action)
                    raise MethodNotAllowed(f"use {' or '.join(methods)} {MODELS_PREFIX}/{name}/{action}")
                if (request.method, action) not in PUBLIC_ROUTES:
                    check_api_key(request.headers, self.api_keys)
                return await handler(request, name)
            except ServingError as err:
                return self._error(request, err)
            except Exception as err:  # a bug, not the client's: still an answer in the protocol's JSON
                logger.exception("answering %s %s failed", request.method, request.url.path)
                return self._error(request, ModelFailure(f"the endpoint failed: {type(err).__name__}: {err}"))

        @staticmethod
        def _error(request: Request, err: ServingError) -> Response:
            """The answer of an error: the version picked for the request, if one was, named in its headers."""
            loaded = getattr(request.state, "loaded", None)
            return error_response(err, loaded.headers() if loaded is not None else None)

        async def invocations(self, request: Request, name: str) -> Response:
            """POST /models/NAME/invocations: the data plane's read, pick, decode, infer, encode
            (the version by raymaas.serving.routing); then the prediction hooks, and the
            shadow copy if the route gave one."""
            body = await self.plane.read(request)
            chosen = self.plane.pick(await self.get_model(name), request)
            loaded = chosen.answer
            data, params = body.decode(loaded)
            result = await self.plane.infer(loaded, data, params)
            answer = encode(result, loaded)
            request_id = _request_id() if self.prediction_hooks or chosen.shadow is not None else ""
            for hook in self.prediction_hooks:
                try:
                    hook(loaded, data, result, request_id)
                except Exception:  # an observer's failure is not the client's
                    logger.exception("prediction hook %r failed", hook)
            if chosen.shadow is not None and self.plane.shadow_room():
                shadow = (chosen.shadow, body, loaded, data, params, result, request_id)
                task = asyncio.get_running_loop().create_task(self._shadow(*shadow))
                self._shadows.add(task)
                task.add_done_callback(self._shadows.discard)
            return answer

        async def _shadow(self, candidate, body, answered_by, data, params, answer, request_id):
            """A shadow rollout's copy of a request: the candidate predicts it when the model is
            idle (the data plane's shadow batcher), and the shadow hooks see its answer (or
            failure) beside the one returned. A copy dropped under load is not seen."""
            try:
                if candidate.signature != answered_by.signature:  # parsed for the other version's signature
                    data, params = body.decode(candidate)
                result, seconds = await self.plane.infer_shadow(candidate, data, params)
            except Unavailable:
                return  # too many copies wait for an idle model: dropped (counted in plane.shadow_batcher.dropped)
            except ServingError as err:
                result, seconds = err, getattr(err, "seconds", 0.0)
            for hook in self.shadow_hooks:
                try:
                    hook(candidate, data, result, request_id, answer, seconds)
                except Exception:
                    logger.exception("shadow hook %r failed", hook)

        async def ping(self, request: Request, name: str) -> Response:
            """GET /models/NAME/ping (and /health): the replica answers, so the model does."""
            return JSONResponse({"status": "ok"})

        async def version(self, request: Request, name: str) -> Response:
            """GET /models/NAME/version: what MLflow's scoring server answers there."""
            from mlflow.version import VERSION as MLFLOW_VERSION

            return Response(MLFLOW_VERSION, media_type="text/plain")

        def _route(self, parts: list[str]) -> tuple[str, str | None]:
            # dedicated app at /models/NAME: [] or [ACTION]; shared app at /models: [NAME] or [NAME, ACTION]
            rest = None
            if self.dedicated is not None and len(parts) <= 1:
                name, rest = self.spec.models[0].name, parts
            elif self.shared and 1 <= len(parts) <= 2 and parts[0] in self.by_name:
                name, rest = parts[0], parts[1:]
            if rest is not None and (not rest or rest[0] in self.actions):
                return name, rest[0] if rest else None
            raise NotFound(f"no published model at {'/'.join(parts) or '/'}; GET /models lists them")

        def __del__(self):
            if hasattr(self, "plane"):
                self.plane.stop()
            if getattr(self, "dedicated", None) is not None:
                self.dedicated.stop()
            for ext in getattr(self, "extensions", ()):
                try:
                    ext.stop()
                except Exception:
                    logger.exception("stopping %s failed", type(ext).__name__)

    ModelEndpoint.__name__ = ModelEndpoint.__qualname__ = ENDPOINT_DEPLOYMENT
    return ModelEndpoint


def _request_id() -> str:
    """Serve's id of the request being answered: the x-request-id header Serve adds to it."""
    from ray import serve

    return serve.context._get_serve_request_context().request_id


class _Evictable:
    """What the multiplexer caches: stops following the alias once evicted (LRU)."""

    def __init__(self, followed: FollowedModel):
        self.followed = followed

    @property
    def current(self) -> LoadedModel:
        return self.followed.current

    @property
    def rollout(self):
        return self.followed.rollout

    def route(self, key: str | None = None):
        return self.followed.route(key)

    def start_following(self) -> None:
        pass

    def __del__(self):
        self.followed.stop()


def _loaded_from_registry(spec: ModelEndpointSpec, tracking_uri: str) -> LoadedModel:
    """The version spec names now, with its signature, and no model loaded."""
    import mlflow

    from raymaas.tracking import get_client

    client = get_client(tracking_uri)
    version = resolve_version(client, spec)
    info = mlflow.models.get_model_info(f"models:/{spec.name}/{version}")
    return LoadedModel(spec.name, version, spec.alias, None, info.signature)


def model_description(
    loaded: LoadedModel, routes: Iterable[tuple[str, str]], operations: dict[str, dict] | None = None
) -> dict:
    """What GET /models/NAME answers of a model: name, version, alias, route, signature (its
    params too) and actions ({ACTION: [METHOD, ...]} of the routes); with operations (what
    route_docs gives), those too, which /openapi.json is built from."""
    described = loaded.describe(f"{MODELS_PREFIX}/{loaded.name}/{INVOCATIONS}")
    signature = loaded.signature
    described["signature"]["params"] = signature.params.to_dict() if signature and signature.params else None
    actions: dict[str, list[str]] = {}
    for method, action in sorted(routes):
        actions.setdefault(action, []).append(method)
    described["actions"] = actions
    if operations is not None:
        described["operations"] = operations
    return described


def route_docs(extensions: Sequence[EndpointExtension] = ()) -> dict[str, dict]:
    """{"METHOD ACTION": OpenAPI operation} of the built-in routes and the extensions' (what
    describe(docs=True) hands the index for /openapi.json)."""
    docs = dict(ROUTE_DOCS)
    for ext in extensions:
        docs.update(ext.route_docs)
    return {f"{method} {action}": doc for (method, action), doc in docs.items()}


def build_model_app(spec: ServeSpec, extensions: Sequence[Plugin | Callable[..., EndpointExtension]] = ()):
    """The Serve application of spec's models (route it at spec.route_prefix). Its extensions,
    assembled here in one list: the platform's monitoring and /explain where the spec turns
    them on, each with its spec slice and its deployment, then those given (Plugins, or bare
    factories: no settings, no handle; see this module's docstring)."""
    from ray import serve

    cls = _endpoint_class(spec.max_models_per_replica)
    plugins: list[Plugin] = []
    if spec.monitoring.enabled:
        plugins.append(Plugin(Monitoring, spec.monitoring.model_dump(), build_monitor_hub(spec)))
    if spec.explain.enabled:
        plugins.append(Plugin(Explanations, spec.explain.model_dump(), build_explainer(spec)))
    plugins += [e if isinstance(e, Plugin) else Plugin(e) for e in extensions]
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
    return deployment.bind(spec.model_dump(), plugins)
