"""The Ray Serve applications of raymaas: `serve run serve/config.yaml`, `raymaas serve`.

Serve validates each application's `args` against the annotated pydantic model (a typed
builder); every field and its meaning: `raymaas.serving.specs.ServeSpec`.
"""

from ray.serve import Application

from raymaas.serving import IndexSpec, ServeSpec, build_index_app, build_model_app


def build_app(args: ServeSpec) -> Application:
    """One model with replicas of its own, or several sharing replicas (multiplexed).
    Route it at /models/NAME (one model) or /models (several)."""
    return build_model_app(ServeSpec.model_validate(args) if isinstance(args, dict) else args)


def build_index(args: IndexSpec) -> Application:
    """GET /models (the published models), /health, /docs and /openapi.json. Route it at /."""
    return build_index_app(IndexSpec.model_validate(args) if isinstance(args, dict) else args)
