"""The index application at "/": GET /models (the published models), /health, /ping,
/version, /openapi.json and /docs; and list_published_models, the one function that says
which models are published, which GET /models (here, or in a shared app that owns /models)
and /openapi.json both come from.

A model is listed exactly while its endpoint answers: while its application's ModelEndpoint
has a running replica (and the application is not being deleted), as that replica describes
it. Not by the application's status, as it was: RUNNING needs every deployment of the
application (its MonitorHub and Explainer too) healthy and at its target, so a model that
answered was left out while its monitor hub started, after one of two replicas died
(UNHEALTHY), or while a new version deployed (DEPLOYING), and a client that had seen it in
GET /models could read an /openapi.json without it a moment later. Serve routes an
application's prefix from its deployment on (to its fallback proxy, which holds requests until
a replica runs), so a running replica is what makes the endpoint answer.

The OpenAPI document is 3.1 (JSON Schema 2020-12): a dataframe_split row needs each column's
type at its position (prefixItems) and the column names in their order (const), which 3.0
cannot say. Each model's request bodies come from its signature (scoring_body): named columns
as dataframe_split and dataframe_records, tensors as inputs and instances (nested arrays of
the tensor's shape, numbers within its dtype's range), and the params it declares, each
format a closed object; so a client generated from the document, or a fuzzer (schemathesis),
sends bodies the model accepts. Every route of a model is documented from what its replica
says it answers (its "actions") and the operations its route table documents
(raymaas.serving.endpoint: ROUTE_DOCS, and each extension's route_docs).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re

from raymaas.modelcode.images import image_shape
from raymaas.serving.errors import NotFound
from raymaas.serving.protocol import MODELS_PREFIX, error_response, relative_path
from raymaas.serving.specs import IndexSpec

logger = logging.getLogger("ray.serve")

# The deployment name the index looks for in Serve's status to find the published models
# (every model application's deployment has it).
ENDPOINT_DEPLOYMENT = "ModelEndpoint"
# In a route doc's schema, {SCORING_SCHEMA: {...}} stands for the model's scoring body (see
# scoring_body: "properties" and "required" are added to each format's object, "params" to
# the params the signature declares).
SCORING_SCHEMA = "x-raymaas-scoring"
# A route doc's part marked {IMAGES_ONLY: True} (an image body, the image param of /explain)
# is documented for a model of images (a float32 [-1, C, H, W] signature) and left out for any
# other, which refuses it: a generated client sends nothing the model cannot take.
IMAGES_ONLY = "x-raymaas-images-only"
# How long the listing waits for an application's replica to describe its models (a replica
# at its max_ongoing_requests queues the call behind predictions).
DESCRIBE_TIMEOUT_S = 10.0
KEY_SECURITY = [{"bearer": []}, {"apiKey": []}]


def _index_class():
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response

    class ModelIndex:
        """GET /health, /ping, /version, /models (the published models), /openapi.json, /docs."""

        def __init__(self, spec: dict):
            self.spec = IndexSpec.model_validate(spec)

        async def __call__(self, request: Request) -> Response:
            parts = relative_path(request)
            if request.method != "GET":
                if parts[:1] == ["models"]:
                    return error_response(
                        NotFound(
                            f"no published model named {parts[1] if len(parts) > 1 else ''!r}; GET /models lists them",
                        )
                    )
                return error_response(NotFound(f"nothing at /{'/'.join(parts)}"))
            if parts in (["health"], ["-", "healthz"], ["ping"]):
                return JSONResponse({"status": "ok"})
            if parts == ["version"]:  # as MLflow's scoring server (see raymaas.serving.endpoint)
                from mlflow.version import VERSION as MLFLOW_VERSION

                return Response(MLFLOW_VERSION, media_type="text/plain")
            if parts == ["models"]:
                return JSONResponse({"models": await list_published_models()})
            if parts == ["openapi.json"]:
                return JSONResponse(openapi_document(self.spec.title, await list_published_models(docs=True)))
            if parts == ["docs"]:
                from fastapi.openapi.docs import get_swagger_ui_html

                return HTMLResponse(get_swagger_ui_html(openapi_url="/openapi.json", title=self.spec.title).body)
            if parts[:1] == ["models"] and len(parts) >= 2:
                return error_response(NotFound(f"no published model named {parts[1]!r}; GET /models lists them"))
            return error_response(NotFound(f"nothing at /{'/'.join(parts)}; see /docs"))

    return ModelIndex


async def list_published_models(docs: bool = False) -> list[dict]:
    """Every model whose endpoint answers now, as its replica describes it (with docs, with
    the OpenAPI operations of its routes too), sorted by name: see the module's docstring."""
    from ray import serve

    status = await asyncio.to_thread(serve.status)
    apps = [name for name, app in status.applications.items() if _answers(app)]
    found = await asyncio.gather(*(_describe_app(a, docs) for a in apps))
    return sorted((m for models in found for m in models), key=lambda m: m["name"])


def _answers(app) -> bool:
    """Whether an application (its entry in Serve's status) is a model endpoint with a replica
    running."""
    endpoint = app.deployments.get(ENDPOINT_DEPLOYMENT)
    if endpoint is None or app.status == "DELETING":  # a deleted application's route goes first
        return False
    return any(state == "RUNNING" and n > 0 for state, n in endpoint.replica_states.items())


# What each application's replica said last, by (application, docs): a replica that runs but
# is too busy to describe its models within the timeout still answers, so it stays listed.
_last_described: dict[tuple[str, bool], list[dict]] = {}


async def _describe_app(app: str, docs: bool) -> list[dict]:
    from ray import serve

    # by deployment name: serve.get_app_handle would block the event loop on the controller
    handle = serve.get_deployment_handle(
        ENDPOINT_DEPLOYMENT, app_name=app, _check_exists=False, _record_telemetry=False
    )

    async def described():
        return await handle.describe.remote(docs)

    try:
        models = [{**m, "application": app} for m in await asyncio.wait_for(described(), DESCRIBE_TIMEOUT_S)]
    except Exception as err:
        last = _last_described.get((app, docs), [])
        logger.warning(
            "application %s did not describe its models (%s); %s",
            app,
            repr(err),
            "listing what it said last" if last else "not listed",
        )
        return last
    _last_described[(app, docs)] = models
    return models


def build_index_app(spec: IndexSpec):
    """The index application (route it at "/")."""
    from ray import serve

    deployment = serve.deployment(
        _index_class(), name="ModelIndex", num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32
    )
    return deployment.bind(spec.model_dump())


# --------------------------------------------------------------------------- OpenAPI


def error_doc(description: str) -> dict:
    """The OpenAPI response of a client error: the platform's JSON error body."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_STATUS = {
    "description": "ok",
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
        }
    },
}


def openapi_document(title: str, models: list[dict]) -> dict:
    """An OpenAPI 3.1 document of the index's routes and of each model's (models as
    list_published_models(docs=True) gives them)."""
    paths: dict = {
        "/health": {
            "get": {"operationId": "health", "summary": "liveness", "security": [], "responses": {"200": _STATUS}}
        },
        "/ping": {
            "get": {
                "operationId": "ping",
                "summary": "the same as /health",
                "security": [],
                "responses": {"200": _STATUS},
            }
        },
        "/version": {
            "get": {
                "operationId": "version",
                "summary": "the MLflow version serving the models, as MLflow's scoring server's /version",
                "security": [],
                "responses": {
                    "200": {"description": "the version", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/models": {
            "get": {
                "operationId": "list_models",
                "summary": "the published models (those that answer): name, version, alias, route, signature, actions",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the models, by name",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["models"],
                                    "properties": {"models": {"type": "array", "items": {"type": "object"}}},
                                }
                            }
                        },
                    }
                },
            }
        },
    }
    for model in models:
        paths.update(model_paths(model))
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error_code", "message"],
                    "properties": {
                        "error_code": {"type": "string"},
                        "message": {"type": "string"},
                        "expected": {"description": "the signature's inputs, where the input did not match them"},
                    },
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


def model_paths(model: dict) -> dict:
    """The OpenAPI path items of one model: GET /models/NAME and every action it answers."""
    base = f"{MODELS_PREFIX}/{model['name']}"
    docs = model.get("operations")
    if docs is None:  # a description without them: the built-in routes' (the endpoint imports this module)
        from raymaas.serving.endpoint import route_docs

        docs = route_docs()
    routes = [("GET", "")]
    for action, methods in sorted((model.get("actions") or {"invocations": ["POST"]}).items()):
        routes.extend((method, action) for method in methods)
    paths: dict = {}
    for method, action in routes:
        doc = docs.get(f"{method} {action}") or _extension_doc(action)
        paths.setdefault(f"{base}/{action}" if action else base, {})[method.lower()] = _operation(
            doc, model, method, action
        )
    return paths


def _extension_doc(action: str) -> dict:
    return {
        "summary": f"{action or 'the model'}: an extension's action",
        "responses": {"200": {"description": "its answer"}},
    }


def _operation(doc: dict, model: dict, method: str, action: str) -> dict:
    name = model["name"]
    signature = model.get("signature") or {}
    op = _expand(copy.deepcopy(doc), signature, _takes_images(signature))
    serves = (
        f"@{model['alias']}, version {model['version']} now" if model.get("alias") else f"version {model['version']}"
    )
    op["summary"] = f"{name} ({serves}): {op.get('summary', action)}"
    op["operationId"] = re.sub(r"\W+", "_", f"{method.lower()}_{name}_{action or 'model'}")
    op["tags"] = [name]
    op.setdefault("security", KEY_SECURITY)
    responses = op.setdefault("responses", {"200": {"description": "ok"}})
    if op["security"]:
        responses.setdefault("401", error_doc("missing or wrong API key (where the application has keys)"))
    for media, content in op.get("requestBody", {}).get("content", {}).items():
        if "example" in content:
            continue
        if media == "application/json":
            content["example"] = example_of(content.get("schema", {}))
        elif media == "text/csv":
            csv = _csv_example(signature.get("inputs"))
            if csv:
                content["example"] = csv
    return op


def _expand(node, signature: dict, images: bool):
    """node with each {SCORING_SCHEMA: {...}} replaced by the model's scoring body, and the
    parts marked IMAGES_ONLY kept (unmarked) for a model of images, left out for another."""
    if isinstance(node, dict):
        if SCORING_SCHEMA in node:
            rest = {k: _expand(v, signature, images) for k, v in node.items() if k != SCORING_SCHEMA}
            return {**scoring_body(signature, **_expand(node[SCORING_SCHEMA] or {}, signature, images)), **rest}
        return {
            k: _expand(v, signature, images)
            for k, v in node.items()
            if k != IMAGES_ONLY and (images or not _images_only(v))
        }
    if isinstance(node, list):
        return [_expand(v, signature, images) for v in node if images or not _images_only(v)]
    return node


def _images_only(node) -> bool:
    return isinstance(node, dict) and node.get(IMAGES_ONLY) is True


def _takes_images(signature: dict) -> bool:
    """Whether a model (its signature as GET /models/NAME gives it) is a model of images."""
    inputs = signature.get("inputs")
    if not inputs:
        return False
    # here, not at the top: the CLI imports this module, and mlflow's import costs seconds
    from mlflow.models import ModelSignature
    from mlflow.types import Schema

    return image_shape(ModelSignature(inputs=Schema.from_json(json.dumps(inputs)))) is not None


def scoring_body(
    signature: dict, properties: dict | None = None, required: list | None = None, params: dict | None = None
) -> dict:
    """The JSON schema of a scoring request body for a signature (as GET /models/NAME gives
    it): one closed object per scoring format the signature takes, with the params it
    declares; properties and required added to each, params to its params."""
    declared = params_schema(signature.get("params"))
    if params:
        declared = declared or {"type": "object", "properties": {}, "additionalProperties": False}
        declared = {**declared, "properties": {**declared["properties"], **params}}
    variants = []
    for fmt, value in scoring_formats(signature.get("inputs")).items():
        props = {fmt: value, **(properties or {})}
        if declared is not None:
            props["params"] = declared
        variants.append(
            {"type": "object", "required": [fmt, *(required or [])], "properties": props, "additionalProperties": False}
        )
    return variants[0] if len(variants) == 1 else {"oneOf": variants}


# Any shape of each format, for a signature the schemas below do not cover (or none).
_ANY_FORMATS = {
    "inputs": {"description": "tensor input: a (nested) list, or a mapping of named tensors"},
    "instances": {"description": "TF-serving style rows"},
    "dataframe_split": {
        "type": "object",
        "required": ["columns", "data"],
        "properties": {"columns": {"type": "array", "items": {"type": "string"}}, "data": {"type": "array"}},
    },
    "dataframe_records": {"type": "array", "items": {"type": "object"}},
}


def scoring_formats(inputs: list | None) -> dict[str, dict]:
    """{scoring format: the JSON schema of its value} for a signature's inputs (as JSON): named
    columns -> dataframe_split and dataframe_records; one tensor -> inputs and instances (nested
    arrays); named tensors -> inputs (an object of them) and instances (an object a row)."""
    if not inputs:
        return dict(_ANY_FORMATS)
    if all(s.get("type") == "tensor" for s in inputs):
        specs = [(s.get("name"), s["tensor-spec"]["dtype"], list(s["tensor-spec"]["shape"])) for s in inputs]
        if len(specs) == 1:
            tensor = _tensor_schema(specs[0][1], specs[0][2])
            return {"inputs": tensor, "instances": tensor}
        if not all(name for name, _, _ in specs):
            return dict(_ANY_FORMATS)
        names = [name for name, _, _ in specs]
        formats = {
            "inputs": {
                "type": "object",
                "properties": {name: _tensor_schema(dtype, shape) for name, dtype, shape in specs},
                "required": names,
                "additionalProperties": False,
            }
        }
        if all(shape and (shape[0] is None or shape[0] < 0) for _, _, shape in specs):
            row = {
                "type": "object",
                "properties": {name: _tensor_schema(dtype, shape[1:]) for name, dtype, shape in specs},
                "required": names,
                "additionalProperties": False,
            }
            formats["instances"] = {"type": "array", "minItems": 1, "items": row}
        return formats
    if any(s.get("type") == "tensor" or not isinstance(s.get("name"), str) for s in inputs):
        return dict(_ANY_FORMATS)
    names = [s["name"] for s in inputs]
    columns = [column_schema(s) for s in inputs]
    required = [s["name"] for s in inputs if s.get("required", True)]
    split = {
        "type": "object",
        "required": ["columns", "data"],
        "additionalProperties": False,
        "properties": {
            "columns": {"type": "array", "items": {"type": "string"}, "const": names},
            "data": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "array", "prefixItems": columns, "minItems": len(names), "maxItems": len(names)},
            },
        },
    }
    records = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": dict(zip(names, columns, strict=True)),
            "required": required,
            "additionalProperties": False,
        },
    }
    return {"dataframe_split": split, "dataframe_records": records}


def _int_range(bits: int, signed: bool = True) -> dict:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return {"type": "integer", "minimum": low, "maximum": high}


def _number_range(largest: float) -> dict:
    return {"type": "number", "minimum": -largest, "maximum": largest}


# JSON schema of one value, by MLflow DataType name (columns, params) and numpy dtype name
# (tensors); the ranges are the dtype's, which a value must fit to be read as it.
_SCALARS: dict[str, dict] = {
    "double": _number_range(1.7976931348623157e308),
    "float64": _number_range(1.7976931348623157e308),
    "float": _number_range(3.4028234663852886e38),
    "float32": _number_range(3.4028234663852886e38),
    "float16": _number_range(65504.0),
    "long": _int_range(64),
    "int64": _int_range(64),
    "integer": _int_range(32),
    "int32": _int_range(32),
    "int16": _int_range(16),
    "int8": _int_range(8),
    "uint64": _int_range(64, signed=False),
    "uint32": _int_range(32, signed=False),
    "uint16": _int_range(16, signed=False),
    "uint8": _int_range(8, signed=False),
    "boolean": {"type": "boolean"},
    "bool": {"type": "boolean"},
    "string": {"type": "string"},
    "str": {"type": "string"},
    "datetime": {"type": "string", "format": "date-time"},
    "binary": {"type": "string", "description": "bytes"},
    "bytes": {"type": "string", "description": "bytes"},
}


def column_schema(spec: dict) -> dict:
    """The JSON schema of a column's (or a param's, an object property's) values, from its
    MLflow JSON (`{"type": "double", ...}`, arrays, objects, maps; anything else: any value)."""
    kind = spec.get("type")
    if kind == "array":
        return {"type": "array", "items": column_schema(spec.get("items") or {})}
    if kind == "object":
        props = spec.get("properties") or {}
        return {
            "type": "object",
            "properties": {k: column_schema(v) for k, v in props.items()},
            "required": [k for k, v in props.items() if v.get("required", True)],
            "additionalProperties": False,
        }
    if kind == "map":
        return {"type": "object", "additionalProperties": column_schema(spec.get("values") or {})}
    return dict(_SCALARS.get(kind, {})) if isinstance(kind, str) else {}


def _tensor_schema(dtype: str, shape: list) -> dict:
    """Nested arrays of a tensor's shape: a fixed dimension fixes the length, a variable one
    (-1) takes one item or more (an empty one is no row at all)."""
    if not shape:
        return dict(_SCALARS.get(dtype, {}))
    schema = {"type": "array", "items": _tensor_schema(dtype, shape[1:])}
    if shape[0] is None or shape[0] < 0:
        schema["minItems"] = 1
    else:
        schema["minItems"] = schema["maxItems"] = shape[0]
    return schema


def params_schema(params: list | None) -> dict | None:
    """The JSON schema of the params a signature declares (None: it takes none)."""
    if not params:
        return None
    props = {}
    for p in params:
        schema = column_schema({"type": p.get("type")})
        if p.get("shape"):
            schema = {"type": "array", "items": schema}
        if p.get("default") is not None:
            schema["default"] = p["default"]
        props[p["name"]] = schema
    return {"type": "object", "properties": props, "additionalProperties": False}


def example_of(schema: dict):
    """A value the schema takes (its first choice, its required properties only), for the
    document's examples."""
    if "const" in schema:
        return schema["const"]
    for key in ("oneOf", "anyOf"):
        if schema.get(key):
            return example_of(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_of(props.get(k, {})) for k in schema.get("required", [])}
    if kind == "array":
        if "prefixItems" in schema:
            return [example_of(s) for s in schema["prefixItems"]]
        count = max(schema.get("minItems", 1), 1 if schema.get("maxItems", 1) else 0)
        return [example_of(schema.get("items", {})) for _ in range(count)]
    if kind in ("number", "integer"):
        within = max(0.5 if kind == "number" else 0, schema.get("minimum", float("-inf")))
        return min(within, schema.get("maximum", float("inf")))
    if kind == "boolean":
        return False
    if kind == "string":
        return "2024-01-01T00:00:00Z" if schema.get("format") == "date-time" else "a"
    return None


def _csv_example(inputs: list | None) -> str | None:
    """A header row and one row, for a signature of named scalar columns."""
    if not inputs or any(s.get("type") in ("tensor", "array", "object", "map") or "name" not in s for s in inputs):
        return None
    row = [example_of(column_schema(s)) for s in inputs]
    text = ["true" if v is True else "false" if v is False else str(v) for v in row]
    return ",".join(s["name"] for s in inputs) + "\n" + ",".join(text) + "\n"
