"""What a module plugs into a model endpoint (raymaas.serving.endpoint's docstring says how):
actions under /models/NAME/, a look at every prediction, every answer and every shadow
candidate's answer. The bottom of serving/: the endpoint and its extensions (monitoring,
explaining) import this module, and it imports none of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from raymaas.serving.following import LoadedModel

# (request, model name) -> response
Handler = Callable[[Any, str], Awaitable[Any]]
# (the LoadedModel that answered, the parsed input, the model's output, the request id) -> None
PredictionHook = Callable[[LoadedModel, Any, Any, str], None]
# (model name or None, action or None, the response, seconds it took) -> None
ResponseHook = Callable[[str | None, str | None, Any, float], None]
# (the candidate's LoadedModel, the parsed input, its output or error, the request id, the
# answer the request got, seconds of the candidate's predict) -> None
ShadowHook = Callable[[LoadedModel, Any, Any, str, Any, float], None]


class Plugin(NamedTuple):
    """One extension of an endpoint as build_model_app assembles them: every replica's endpoint
    calls factory(endpoint, settings, handle). settings: the extension's own slice of the
    serve spec (a dict: it travels to the replicas), handle: its own deployment's, if any."""

    factory: Callable[..., Any]
    settings: dict | None = None
    handle: Any = None


class EndpointExtension:
    """What a module plugs into a model endpoint: actions under /models/NAME/ and a look at
    every successful prediction. Subclass it and override what you need."""

    on_prediction: PredictionHook | None = None  # define it as a method to observe predictions
    on_response: ResponseHook | None = None  # define it as a method to observe every answer
    on_shadow: ShadowHook | None = None  # define it as a method to observe a shadow candidate's answers

    # {(METHOD, ACTION): OpenAPI operation} of its routes, for /openapi.json
    route_docs: dict[tuple[str, str], dict] = {}

    def __init__(self, endpoint, settings: dict | None = None, handle: Any = None):
        self.endpoint = endpoint  # the replica's ModelEndpoint: get_model(name), plane, by_name, tracking_uri
        self.settings = settings  # its own slice of the serve spec, if build_model_app gave one
        self.handle = handle  # its own deployment's handle, if any

    def routes(self) -> dict[tuple[str, str], Handler]:
        """{(METHOD, ACTION): handler} this extension answers under /models/NAME/ACTION."""
        return {}

    def stop(self) -> None:
        """The endpoint goes away."""
