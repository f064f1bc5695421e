"""/openapi.json without Ray: openapi_document is pure. Each model's request bodies come from
its signature, so what validates against the document is what the protocol accepts (the
bodies here go through parse_scoring_request, the parser of the real endpoint), and what the
protocol refuses for its shape the document refuses too. And the rule that says which models
are listed, on Serve's own status types."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from raymaas.serving.endpoint import PUBLIC_ROUTES, ROUTE_DOCS, model_description, route_docs
from raymaas.serving.errors import ServingError
from raymaas.serving.explaining import Explanations
from raymaas.serving.following import LoadedModel
from raymaas.serving.index import openapi_document
from raymaas.serving.monitoring import Monitoring
from raymaas.serving.protocol import parse_scoring_request

COLUMNS = ModelSignature(
    inputs=Schema(
        [
            ColSpec("double", "d"),
            ColSpec("float", "f"),
            ColSpec("long", "l"),
            ColSpec("integer", "i"),
            ColSpec("boolean", "b"),
            ColSpec("string", "s"),
            ColSpec("double", "maybe", required=False),
        ]
    )
)
TENSOR = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 8))]),
    params=ParamSchema([ParamSpec("probabilities", "boolean", False), ParamSpec("top", "long", [1, 2], (-1,))]),
)
NAMED = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("int64"), (-1, 3), "ids"), TensorSpec(np.dtype("float64"), (-1, 2, 2), "grid")])
)
IMAGES = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1, 4, 4))]))  # a model of images
SIGNATURES = {"columns": COLUMNS, "tensor": TENSOR, "named": NAMED, "images": IMAGES}
EXTENSIONS = (Monitoring, Explanations)
ROUTES = [k for k in ROUTE_DOCS if k[1]] + [k for ext in EXTENSIONS for k in ext.route_docs]


def _description(name: str, signature, alias: str | None = "champion") -> dict:
    """What an endpoint's replica hands the index for /openapi.json (describe(docs=True))."""
    loaded = LoadedModel(name, "3", alias, None, signature)
    return {**model_description(loaded, ROUTES, route_docs(EXTENSIONS)), "application": name}


@pytest.fixture(scope="module")
def doc():
    return openapi_document("test", [_description(n, s) for n, s in SIGNATURES.items()])


def _body_schema(doc, name: str, action: str = "invocations") -> dict:
    return doc["paths"][f"/models/{name}/{action}"]["post"]["requestBody"]["content"]["application/json"]["schema"]


def _variants(schema: dict) -> dict[str, dict]:
    """{scoring format: its closed object} of a scoring body schema."""
    return {v["required"][0]: v for v in schema.get("oneOf", [schema])}


# --------------------------------------------------------------------------- a tiny fuzzer


def generate(schema: dict, rng: random.Random):
    """A random value the schema takes (the keywords the document uses), edges included."""
    if "const" in schema:
        return schema["const"]
    if "oneOf" in schema:
        return generate(rng.choice(schema["oneOf"]), rng)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = rng.choice(kind)
    if kind == "object":
        props = schema.get("properties", {})
        keys = [k for k in props if k in schema.get("required", []) or rng.random() < 0.5]
        value = {k: generate(props[k], rng) for k in keys}
        if isinstance(schema.get("additionalProperties"), dict):
            for _ in range(max(schema.get("minProperties", 0), rng.randint(0, 2))):
                value["".join(rng.choices(string.ascii_letters, k=6))] = generate(schema["additionalProperties"], rng)
        return value
    if kind == "array":
        if "prefixItems" in schema:
            return [generate(s, rng) for s in schema["prefixItems"]]
        low = schema.get("minItems", 0)
        count = rng.randint(low, schema.get("maxItems", low + 3))
        return [generate(schema.get("items", {}), rng) for _ in range(count)]
    if kind in ("number", "integer"):
        low, high = schema.get("minimum", -1e9), schema.get("maximum", 1e9)
        if kind == "integer":
            return rng.choice([low, high, 0, rng.randint(-1000, 1000)])
        return rng.choice([low, high, 0.0, rng.uniform(-1e6, 1e6), rng.randint(-5, 5)])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        return "".join(rng.choices(string.printable + "éß漢", k=rng.randint(0, 8)))
    return None


# --------------------------------------------------------------------------- the document


def test_every_route_of_every_model_is_documented(doc):
    Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})
    assert doc["openapi"].startswith("3.1")
    assert {"/health", "/ping", "/version", "/models"} <= set(doc["paths"])
    ids = []
    for name in SIGNATURES:
        base = f"/models/{name}"
        expected = {
            base: {"get"},
            f"{base}/invocations": {"post"},
            f"{base}/explain": {"post"},
            f"{base}/feedback": {"post"},
            f"{base}/monitor": {"get"},
            f"{base}/rollout": {"get"},
            f"{base}/ping": {"get"},
            f"{base}/health": {"get"},
            f"{base}/version": {"get"},
        }
        assert {p: set(ops) for p, ops in doc["paths"].items() if p == base or p.startswith(base + "/")} == expected
        for path, methods in expected.items():
            for method in methods:
                op = doc["paths"][path][method]
                ids.append(op["operationId"])
                action = path.removeprefix(base).lstrip("/")
                public = (method.upper(), action) in PUBLIC_ROUTES or not action
                assert (op["security"] == []) == public, (path, op["security"])
                assert ("401" in op["responses"]) == (not public)
                assert op["summary"].startswith(f"{name} (@champion, version 3 now): ")
                for content in op.get("requestBody", {}).get("content", {}).values():
                    Draft202012Validator.check_schema(content["schema"])
                for response in op["responses"].values():
                    for content in response.get("content", {}).values():
                        if "$ref" not in content["schema"]:
                            Draft202012Validator.check_schema(content["schema"])
    assert len(ids) == len(set(ids))  # a generated client gets one method per operation
    assert doc["paths"]["/models/columns/version"]["get"]["responses"]["200"]["content"] == {
        "text/plain": {"schema": {"type": "string"}}
    }


def test_column_signature_gives_split_and_records_with_the_columns_and_their_types(doc):
    variants = _variants(_body_schema(doc, "columns"))
    assert set(variants) == {"dataframe_split", "dataframe_records"}
    assert all(v["additionalProperties"] is False and "params" not in v["properties"] for v in variants.values())
    split = variants["dataframe_split"]["properties"]["dataframe_split"]
    names = ["d", "f", "l", "i", "b", "s", "maybe"]
    assert split["properties"]["columns"]["const"] == names
    row = split["properties"]["data"]["items"]
    assert [c["type"] for c in row["prefixItems"]] == [
        "number",
        "number",
        "integer",
        "integer",
        "boolean",
        "string",
        "number",
    ]
    assert row["minItems"] == row["maxItems"] == 7
    assert row["prefixItems"][1]["maximum"] == float(np.finfo(np.float32).max)  # float: float32's range
    assert row["prefixItems"][3]["minimum"] == -(2**31)  # integer: int32's
    records = variants["dataframe_records"]["properties"]["dataframe_records"]["items"]
    assert records["required"] == names[:-1]  # the optional column may be left out
    assert {k: v["type"] for k, v in records["properties"].items()} == dict(
        zip(names, [c["type"] for c in row["prefixItems"]], strict=True)
    )
    csv = doc["paths"]["/models/columns/invocations"]["post"]["requestBody"]["content"]["text/csv"]["example"]
    assert parse_scoring_request(csv.encode(), "text/csv", COLUMNS)[0].shape == (1, 7)


def test_tensor_signature_gives_nested_arrays_of_its_shape_and_its_params(doc):
    variants = _variants(_body_schema(doc, "tensor"))
    assert set(variants) == {"inputs", "instances"}
    tensor = variants["inputs"]["properties"]["inputs"]
    assert tensor["type"] == "array" and tensor["minItems"] == 1 and "maxItems" not in tensor
    assert tensor["items"]["minItems"] == tensor["items"]["maxItems"] == 8
    assert tensor["items"]["items"]["type"] == "number"
    assert variants["instances"]["properties"]["instances"] == tensor
    params = variants["inputs"]["properties"]["params"]
    assert params["additionalProperties"] is False
    assert params["properties"]["probabilities"] == {"type": "boolean", "default": False}
    assert params["properties"]["top"]["type"] == "array" and params["properties"]["top"]["items"]["type"] == "integer"
    # explain's own param beside the model's
    explain = _variants(_body_schema(doc, "tensor", "explain"))["inputs"]["properties"]["params"]["properties"]
    assert set(explain) == {"probabilities", "top", "target"}  # no image: it is for a model of images
    named = _variants(_body_schema(doc, "named"))
    grid = named["inputs"]["properties"]["inputs"]["properties"]["grid"]
    assert grid["items"]["minItems"] == 2 and grid["items"]["items"]["maxItems"] == 2
    row = named["instances"]["properties"]["instances"]["items"]["properties"]
    assert row["ids"] == {"type": "array", "items": row["ids"]["items"], "minItems": 3, "maxItems": 3}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_bodies_generated_from_the_document_are_accepted(doc, name):
    signature = SIGNATURES[name]
    schema = _body_schema(doc, name)
    validator = Draft202012Validator(schema)
    example = doc["paths"][f"/models/{name}/invocations"]["post"]["requestBody"]["content"]["application/json"]
    bodies = [example["example"]] + [generate(schema, random.Random(seed)) for seed in range(60)]
    seen = set()
    for body in bodies:
        validator.validate(body)
        seen.update(k for k in body if k != "params")
        try:
            parse_scoring_request(json.dumps(body).encode(), "application/json", signature)
        except ServingError as err:
            pytest.fail(f"{json.dumps(body)[:300]} refused: {err.body['message']}")
    assert seen == set(_variants(schema))  # every format was tried


def test_bodies_the_protocol_refuses_for_their_shape_the_document_refuses(doc):
    broken = {
        "columns": {"dataframe_records": [{"d": 1.0, "f": 1.0, "l": 1, "i": 1, "b": True}]},  # no "s"
        "tensor": {"inputs": [[0.5] * 7]},  # 7 of 8
        "named": {"inputs": {"ids": [[1, 2, 3]]}},  # no "grid"
    }
    for name, body in broken.items():
        assert not Draft202012Validator(_body_schema(doc, name)).is_valid(body), name
        with pytest.raises(ServingError) as err:
            parse_scoring_request(json.dumps(body).encode(), "application/json", SIGNATURES[name])
        assert err.value.status == 422


def test_feedback_and_explain_take_the_model_s_rows(doc):
    feedback = Draft202012Validator(_body_schema(doc, "columns", "feedback"))
    row = {"d": 1.0, "f": 1.0, "l": 1, "i": 1, "b": True, "s": "x"}
    assert feedback.is_valid({"labels": {"a-request-id": 2}})
    assert feedback.is_valid({"dataframe_records": [row], "labels": [2]})
    assert not feedback.is_valid({"dataframe_records": [row]})  # rows need their labels
    assert not feedback.is_valid({"labels": {}})
    explain = Draft202012Validator(_body_schema(doc, "tensor", "explain"))
    assert explain.is_valid({"inputs": [[0.5] * 8], "params": {"target": 3}})
    assert not explain.is_valid({"inputs": [[0.5] * 8], "params": {"temperature": 3}})


def test_image_bodies_and_the_image_param_are_documented_for_a_model_of_images_only(doc):
    image_media = {"image/png", "image/jpeg", "multipart/form-data"}
    for name in SIGNATURES:
        images = name == "images"
        for action in ("invocations", "explain"):
            media = set(doc["paths"][f"/models/{name}/{action}"]["post"]["requestBody"]["content"])
            assert (image_media <= media) == images and (not image_media & media) == (not images), (name, action)
        explain = doc["paths"][f"/models/{name}/explain"]["post"]
        assert ("image" in {p["name"] for p in explain["parameters"]}) == images, name
        params = [
            v["properties"]["params"]["properties"] for v in _variants(_body_schema(doc, name, "explain")).values()
        ]
        assert all(("image" in p) == images for p in params), name
    assert "x-raymaas-images-only" not in json.dumps(doc)  # the marker is the document's builder's, not a client's


def test_a_model_without_a_signature_or_an_extension_s_docs_is_still_documented():
    bare = {"name": "bare", "version": "1", "alias": None, "route": "/models/bare/invocations", "signature": {}}
    doc = openapi_document("t", [{**bare, "actions": {"invocations": ["POST"], "custom": ["GET"]}}])
    assert doc["paths"]["/models/bare/custom"]["get"]["summary"] == "bare (version 1): custom: an extension's action"
    assert set(
        _variants(
            doc["paths"]["/models/bare/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        )
    ) == {
        "inputs",
        "instances",
        "dataframe_split",
        "dataframe_records",
    }


# --------------------------------------------------------------------------- which models are listed


def test_a_model_is_listed_while_a_replica_of_its_endpoint_runs_whatever_the_app_status():
    from ray.serve._private.common import DeploymentStatus, DeploymentStatusTrigger, ReplicaState
    from ray.serve.schema import ApplicationStatus, ApplicationStatusOverview, DeploymentStatusOverview

    from raymaas.serving.index import _answers

    def app(status, running: int, deployment: str = "ModelEndpoint", starting: int = 0):
        replicas = {ReplicaState.RUNNING: running, ReplicaState.STARTING: starting}
        overview = DeploymentStatusOverview(
            DeploymentStatus.HEALTHY, DeploymentStatusTrigger.UNSPECIFIED, {k: v for k, v in replicas.items() if v}, ""
        )
        hub = DeploymentStatusOverview(DeploymentStatus.UPDATING, DeploymentStatusTrigger.UNSPECIFIED, {}, "")
        return ApplicationStatusOverview(status, "", 0.0, {deployment: overview, "MonitorHub": hub})

    # answers while its monitor hub starts, or after one of two replicas died
    assert _answers(app(ApplicationStatus.DEPLOYING, 1))
    assert _answers(app(ApplicationStatus.UNHEALTHY, 1))
    assert _answers(app(ApplicationStatus.RUNNING, 2))
    assert not _answers(app(ApplicationStatus.DEPLOYING, 0, starting=1))  # nothing answers yet
    assert not _answers(app(ApplicationStatus.DELETING, 1))  # its route goes first
    assert not _answers(app(ApplicationStatus.RUNNING, 1, deployment="ModelIndex"))  # not a model endpoint
