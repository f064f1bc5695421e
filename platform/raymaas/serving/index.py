"""The index application at "/": GET /models (every published model, found through Serve's
status), /health, /openapi.json and /docs."""

from __future__ import annotations

import asyncio
import json
import logging

from raymaas.serving.protocol import (
    VERSION_HEADER,
    ClientError,
    error_response,
    relative_path,
)
from raymaas.serving.specs import IndexSpec

logger = logging.getLogger("ray.serve")

# The deployment name the index looks for in Serve's status to find the published models
# (every model application's deployment has it).
ENDPOINT_DEPLOYMENT = "ModelEndpoint"


def _index_class():
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response

    class ModelIndex:
        """GET /health, GET /models (the published models), /openapi.json and /docs."""

        def __init__(self, spec: dict):
            self.spec = IndexSpec.model_validate(spec)

        async def __call__(self, request: Request) -> Response:
            parts = relative_path(request)
            if request.method != "GET":
                if parts[:1] == ["models"]:
                    return error_response(
                        ClientError(
                            404,
                            f"no published model named {parts[1] if len(parts) > 1 else ''!r}; GET /models lists them",
                        )
                    )
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
                return error_response(
                    ClientError(404, f"no published model named {parts[1]!r}; GET /models lists them")
                )
            return error_response(ClientError(404, f"nothing at /{'/'.join(parts)}; see /docs"))

    return ModelIndex


async def list_published_models() -> list[dict]:
    """Every model this platform publishes on the Serve instance, found through Serve's status."""
    from ray import serve

    status = await asyncio.to_thread(serve.status)
    apps = [
        name
        for name, app in status.applications.items()
        if ENDPOINT_DEPLOYMENT in app.deployments and app.status == "RUNNING"
    ]
    found = await asyncio.gather(*(serve.get_app_handle(a).describe.remote() for a in apps), return_exceptions=True)
    models = []
    for app, result in zip(apps, found, strict=True):
        if isinstance(result, BaseException):
            logger.warning("application %s did not describe its models: %s", app, result)
            continue
        models.extend({**m, "application": app} for m in result)
    return sorted(models, key=lambda m: m["name"])


def build_index_app(spec: IndexSpec):
    """The index application (route it at "/")."""
    from ray import serve

    deployment = serve.deployment(
        _index_class(), name="ModelIndex", num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32
    )
    return deployment.bind(spec.model_dump())


def openapi_document(title: str, models: list[dict]) -> dict:
    """An OpenAPI 3 document of the routes, one prediction path per published model."""
    scoring = {
        "type": "object",
        "description": "exactly one of the MLflow scoring formats",
        "properties": {
            "inputs": {"description": "tensor input: a (nested) list, or a mapping of named tensors"},
            "instances": {"description": "TF-serving style rows"},
            "dataframe_split": {
                "type": "object",
                "properties": {"columns": {"type": "array"}, "data": {"type": "array"}},
            },
            "dataframe_records": {"type": "array", "items": {"type": "object"}},
            "params": {"type": "object"},
        },
    }
    error = {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}, "expected": {}},
                }
            }
        }
    }
    paths: dict = {
        "/health": {"get": {"summary": "liveness", "responses": {"200": {"description": "ok"}}}},
        "/models": {
            "get": {
                "summary": "published models: name, version, alias, signature",
                "responses": {"200": {"description": "the models"}},
            }
        },
    }
    for m in models:
        paths[m["route"]] = {
            "post": {
                "summary": f"predict with {m['name']} ({'@' + m['alias'] if m['alias'] else 'version ' + m['version']})",
                "description": f"input signature: {json.dumps(m['signature']['inputs'])}",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": scoring},
                        "text/csv": {"schema": {"type": "string", "description": "a header row, then rows"}},
                    },
                },
                "responses": {
                    "200": {
                        "description": f"predictions; header {VERSION_HEADER} names the version that answered",
                        "content": {
                            "application/json": {"schema": {"type": "object", "properties": {"predictions": {}}}}
                        },
                    },
                    "400": {"description": "malformed JSON or CSV", **error},
                    "401": {"description": "missing or wrong API key", **error},
                    "413": {"description": "body too large", **error},
                    "422": {"description": "input does not match the signature", **error},
                },
            }
        }
        if m["route"].endswith("/invocations"):
            paths[m["route"].removesuffix("invocations") + "explain"] = {
                "post": {
                    "summary": f"explain {m['name']}'s answers: one attribution per input feature of each row",
                    "description": "the bodies invocations takes; params.target: the class or output to explain "
                    "(default: the predicted class, output 0)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": scoring}}},
                    "responses": {
                        "200": {
                            "description": "method, baseline, and per row: prediction, target, score, "
                            "baseline_score, attributions"
                        },
                        "413": {"description": "more rows than explain.max_rows", **error},
                        "422": {"description": "input does not match the signature, or no background data", **error},
                        "503": {"description": "the explainer is at capacity; retry", **error},
                    },
                }
            }
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            }
        },
    }
