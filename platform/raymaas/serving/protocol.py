"""The HTTP protocol of a published model: MLflow scoring formats in, predictions out.

What a request to a model endpoint may carry and what it is answered, independent of how the
model is loaded or run: the routes' prefix and the response headers, the client errors and
their MLflow error codes, the request body (size-limited), the scoring request parsed and
checked against the model's signature, the predictions and errors as JSON responses.
"""

from __future__ import annotations

import json
from typing import Any

MODELS_PREFIX = "/models"
VERSION_HEADER = "x-model-version"
NAME_HEADER = "x-model-name"
ALIAS_HEADER = "x-model-alias"
SCORING_FORMATS = ("inputs", "instances", "dataframe_split", "dataframe_records")

ERROR_CODES = {
    400: "MALFORMED_REQUEST",
    401: "UNAUTHENTICATED",
    404: "RESOURCE_DOES_NOT_EXIST",
    405: "METHOD_NOT_ALLOWED",
    413: "REQUEST_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_PARAMETER_VALUE",
}


class ClientError(Exception):
    """A request the client must fix; carries its HTTP status."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.body = {"error_code": ERROR_CODES.get(status, "BAD_REQUEST"), "message": message, **extra}


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
        raise ClientError(
            415, f"send application/json in one of the MLflow scoring formats {list(SCORING_FORMATS)}, got {mime!r}"
        )
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ClientError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise ClientError(
            422,
            f"the body must be a JSON object with exactly one of {list(SCORING_FORMATS)}, got a {type(payload).__name__}",
        )
    formats = [k for k in SCORING_FORMATS if k in payload]
    if len(formats) != 1:
        raise ClientError(
            422,
            f"the body must have exactly one of {list(SCORING_FORMATS)}, got keys {sorted(payload)}",
            expected=schema_json(signature),
        )
    params = payload.get("params")
    if params is not None and not isinstance(params, dict):
        raise ClientError(422, "params must be a JSON object")
    input_schema = signature.inputs if signature is not None else None
    try:
        data = _as_tensor(payload[formats[0]], input_schema) if formats[0] in ("inputs", "instances") else None
        if data is None:
            data = infer_and_parse_data({formats[0]: payload[formats[0]]}, input_schema)
    except MlflowException as err:
        raise ClientError(
            422, f"cannot read {formats[0]!r}: {shorten(err.message)}", expected=schema_json(signature)
        ) from None
    except Exception as err:  # pandas/numpy refuse ragged or odd shapes in many ways
        raise ClientError(
            422, f"cannot read {formats[0]!r}: {shorten(str(err))}", expected=schema_json(signature)
        ) from None
    if input_schema is None:
        return data, params
    from mlflow.models.utils import _enforce_schema

    try:
        return _enforce_schema(data, input_schema), params
    except Exception as err:
        message = err.message if isinstance(err, MlflowException) else str(err)
        raise ClientError(
            422, f"input does not match the model's signature: {shorten(message)}", expected=schema_json(signature)
        ) from None


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


def schema_json(signature) -> list | None:
    """The signature's inputs as JSON (what a 422 says is expected), or None."""
    return signature.inputs.to_dict() if signature is not None and signature.inputs is not None else None


def shorten(text: str, limit: int = 600) -> str:
    """MLflow's messages repeat the whole input; keep what says what is wrong."""
    return text if len(text) <= limit else text[:limit] + " ..."


def predictions_json(result) -> bytes:
    """The body of a 200: {"predictions": ...} in MLflow's scoring server's JSON."""
    from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

    return json.dumps({"predictions": _get_jsonable_obj(result, pandas_orient="records")}, cls=NumpyEncoder).encode()


def error_response(err: ClientError, headers: dict | None = None):
    """The JSON response of a client error (a 401 says which scheme to use)."""
    from starlette.responses import Response

    extra = dict(headers or {})
    if err.status == 401:
        extra["www-authenticate"] = "Bearer"
    return Response(json.dumps(err.body).encode(), status_code=err.status, media_type="application/json", headers=extra)


def relative_path(request) -> list[str]:
    """The request's path below its application's route prefix, as segments."""
    path = request.scope.get("path", "/")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return [p for p in path.split("/") if p]
