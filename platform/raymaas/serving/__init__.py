"""Ray Serve: publish registered MLflow models as HTTP endpoints that follow the registry.

Every Serve application built here is one hop from the ingress (Ray's HAProxy by default, see
`haproxy_ingress_env`, or Serve's Python HTTP proxy): the deployment that holds the model
parses, validates and answers the request itself. A gateway deployment in
front (proxy -> gateway -> model) measured +8 ms p50 on a 2-core machine, more than the whole
budget, so each published model is its own application, routed by prefix:

    /models/NAME/invocations   POST, MLflow scoring formats, JSON or CSV (app of one model, or a shared app)
    /models/NAME/explain       POST, attributions of the answer           (the same app)
    /models/NAME/feedback      POST, true labels of earlier answers       (the same app)
    /models/NAME/monitor       GET, drift and live scores                 (the same app)
    /models/NAME/ping, /version  GET, as MLflow's scoring server: no key   (the same app)
    /models/NAME               GET, the model and its signature          (the same app)
    /models                    GET, the models that answer now           (the index app at "/")
    /health, /ping, /version, /docs, /openapi.json                       (the index app)

MLflow's own client (`ScoringServerClient(host, "PORT/models/NAME")`) works against a model's
path unchanged; /openapi.json describes each model's request bodies from its signature.

An application with several models serves them from shared replicas through Serve's model
multiplexing: for models with little traffic. More actions under /models/NAME/ (and a look
at every prediction) plug in as extensions of the endpoint: see `raymaas.serving.endpoint`.

The modules, one concern each:

    ingress     the HAProxy ingress environment, and its clean-up
    specs       the args of the applications (ServeSpec, IndexSpec)
    protocol    the HTTP side: scoring formats, client errors, headers, responses
    auth        API keys
    following   models that follow their registry alias
    batching    the dynamic batcher and batched predict calls
    endpoint    the ModelEndpoint deployment, its route table and extensions
    index       the index application: listing, health, OpenAPI, docs
    deploy      deploying a Serve config file, or registered models by reference

Importing this package imports neither Ray nor Serve: they are imported where used.
"""

from raymaas.serving.auth import (
    API_KEYS_ENV,
    API_KEYS_FILE_ENV,
    check_api_key,
    load_api_keys,
)
from raymaas.serving.batching import Batcher, PredictItem, predict_batch, predict_one
from raymaas.serving.dataplane import DataPlane
from raymaas.serving.deploy import DeployedApp, check_models, deploy_config, deploy_models, endpoint_spec
from raymaas.serving.endpoint import INVOCATIONS, EndpointExtension, build_model_app
from raymaas.serving.errors import ServingError
from raymaas.serving.extension import Plugin
from raymaas.serving.following import (
    FollowedModel,
    LoadedModel,
    load_serving_model,
    resolve_version,
)
from raymaas.serving.index import (
    ENDPOINT_DEPLOYMENT,
    build_index_app,
    list_published_models,
    openapi_document,
)
from raymaas.serving.ingress import (
    INGRESSES,
    haproxy_ingress_env,
    prepare_local_ingress,
)
from raymaas.serving.protocol import (
    ALIAS_HEADER,
    CSV_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    MODELS_PREFIX,
    NAME_HEADER,
    SCORING_FORMATS,
    VERSION_HEADER,
    parse_scoring_request,
)
from raymaas.serving.specs import (
    CHAMPION,
    AutoscalingSpec,
    BatchingSpec,
    IndexSpec,
    ModelEndpointSpec,
    ServeSpec,
)

__all__ = [
    "ALIAS_HEADER",
    "API_KEYS_ENV",
    "API_KEYS_FILE_ENV",
    "CHAMPION",
    "CSV_MEDIA_TYPE",
    "ENDPOINT_DEPLOYMENT",
    "INGRESSES",
    "INVOCATIONS",
    "JSON_MEDIA_TYPE",
    "MODELS_PREFIX",
    "NAME_HEADER",
    "SCORING_FORMATS",
    "VERSION_HEADER",
    "AutoscalingSpec",
    "Batcher",
    "BatchingSpec",
    "DataPlane",
    "DeployedApp",
    "EndpointExtension",
    "FollowedModel",
    "IndexSpec",
    "LoadedModel",
    "ModelEndpointSpec",
    "Plugin",
    "PredictItem",
    "ServeSpec",
    "ServingError",
    "build_index_app",
    "build_model_app",
    "check_api_key",
    "check_models",
    "deploy_config",
    "deploy_models",
    "endpoint_spec",
    "haproxy_ingress_env",
    "list_published_models",
    "load_api_keys",
    "load_serving_model",
    "openapi_document",
    "parse_scoring_request",
    "predict_batch",
    "predict_one",
    "prepare_local_ingress",
    "resolve_version",
]
