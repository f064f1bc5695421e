"""What can go wrong with a request to a model endpoint, as types; the HTTP answer of each is
made in one place (raymaas.serving.dataplane.error_response).

Every part of the data plane (reading the body, parsing it against the signature, picking
the version, the batcher, the model, an extension's action) raises one of these; none
returns an error as a value, except across a deployment handle (the Explainer's answers),
where `error_of_status` turns the value back into its type at the one place it is received.

    ServingError                   the base: a status, an MLflow error code, a message, extras
      BadRequest            400    a body that is not JSON, CSV or multipart as it says
      Unauthenticated       401    no valid API key
      NotFound              404    no such model or action
      MethodNotAllowed      405    an action with another method
      TooLarge              413    a body, an image or a row count over its limit
      UnsupportedMediaType  415    a content type the model does not take
      InvalidInput          422    input that does not match the signature, a bad param
      ModelFailure          500    the model (or its explainer) failed: not the client's to fix
      Unavailable           503    at capacity, or the model is not there yet: retry later

The error codes are the ones MLflow's scoring server answers with.
"""

from __future__ import annotations


class ServingError(Exception):
    """An answer other than a 200: its status, MLflow error code, message and extra fields
    (e.g. `expected`: the signature's inputs, on a 422)."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra

    @property
    def body(self) -> dict:
        """The JSON body of the answer: {"error_code", "message", ...extra}. (getattr: raised in
        a deployment, it reaches the caller as Ray's RayTaskError made an instance of this
        class, whose __init__ did not run.)"""
        return {"error_code": self.code, "message": getattr(self, "message", str(self)), **getattr(self, "extra", {})}

    def headers(self) -> dict[str, str]:
        """Headers the status asks for (a 401 names its scheme, a 503 when to retry)."""
        return {}


class BadRequest(ServingError):
    status = 400
    code = "MALFORMED_REQUEST"


class Unauthenticated(ServingError):
    status = 401
    code = "UNAUTHENTICATED"

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class NotFound(ServingError):
    status = 404
    code = "RESOURCE_DOES_NOT_EXIST"


class MethodNotAllowed(ServingError):
    status = 405
    code = "METHOD_NOT_ALLOWED"


class TooLarge(ServingError):
    status = 413
    code = "REQUEST_TOO_LARGE"


class UnsupportedMediaType(ServingError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class InvalidInput(ServingError):
    status = 422
    code = "INVALID_PARAMETER_VALUE"


class ModelFailure(ServingError):
    status = 500
    code = "INTERNAL_ERROR"


class Unavailable(ServingError):
    status = 503
    code = "TEMPORARILY_UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: int = 1, **extra):
        super().__init__(message, **extra)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(getattr(self, "retry_after_s", 1))}


_BY_STATUS = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthenticated,
        NotFound,
        MethodNotAllowed,
        TooLarge,
        UnsupportedMediaType,
        InvalidInput,
        ModelFailure,
        Unavailable,
    )
}


def error_of_status(status: int, message: str, **extra) -> ServingError:
    """The typed error of an HTTP status (what crossed a deployment handle as a value)."""
    return _BY_STATUS.get(status, ModelFailure)(message, **extra)
