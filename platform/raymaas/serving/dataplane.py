"""The data plane of a model endpoint: a prediction's four steps, written once.

    read    the body, size-limited (413), once: `Body`
    decode  the body against the signature of the version that answers (400, 415, 422):
            `Body.decode`; a JSON body is parsed once, and an action that reads fields of
            its own from it first (/explain's params, /feedback's labels) takes them from
            `Body.json()` and decodes the rest without parsing again
    pick    the version that answers, and the one that gets a shadow copy:
            raymaas.serving.routing.route (via FollowedModel.route), the one function where a
            rollout's split lives
    infer   the batcher and the model (422 for an input the model rejects, 500 for a model
            that fails): `DataPlane.infer` returns the output or raises
    encode  the 200: `encode`

Each step raises a raymaas.serving.errors.ServingError; the endpoint turns it into its
answer in one place (raymaas.serving.protocol.error_response, with the headers of the
version that was picked, if one was: `request.state.loaded`).

A shadow copy goes through a batcher of its own that yields to the requests' batcher (it
runs only while that one has nothing queued nor running) and drops copies beyond
rollout.max_shadow_queued: under load, shadow traffic thins out instead of slowing answers.
"""

from __future__ import annotations

import logging
from typing import Any

from raymaas.serving.batching import Batcher, PredictItem, predict_batch
from raymaas.serving.errors import ServingError
from raymaas.serving.following import LoadedModel
from raymaas.serving.protocol import (
    JSON_MEDIA_TYPE,
    parse_json,
    parse_scoring_payload,
    parse_scoring_request,
    predictions_json,
    read_body,
)
from raymaas.serving.routing import STICKY_HEADER, Route

logger = logging.getLogger("ray.serve")

_UNREAD = object()


class Body:
    """A request's body, read once; its JSON parsed at most once."""

    def __init__(self, raw: bytes, content_type: str):
        self.raw = raw
        self.content_type = content_type
        self.mime = (content_type or JSON_MEDIA_TYPE).split(";")[0].strip().lower()
        self._json: Any = _UNREAD

    @property
    def is_json(self) -> bool:
        return self.mime in (JSON_MEDIA_TYPE, "")

    def json(self) -> Any:
        """The parsed JSON body (a 400 if it is not JSON); the same object on every call, so an
        action may take its own fields out of it before decode."""
        if self._json is _UNREAD:
            self._json = parse_json(self.raw)
        return self._json

    def decode(
        self, loaded: LoadedModel, payload: Any = _UNREAD, objects: bool | None = None
    ) -> tuple[Any, dict | None]:
        """(the model input checked against loaded's signature, params). payload: the JSON to
        decode instead of the body's (e.g. a part of it). objects: string columns as numpy
        objects (default: as loaded's predict takes them; see parse_scoring_request)."""
        objects = loaded.strings_as_objects if objects is None else objects
        if payload is not _UNREAD:
            return parse_scoring_payload(payload, loaded.signature, objects)
        if self.is_json:
            return parse_scoring_payload(self.json(), loaded.signature, objects)
        return parse_scoring_request(self.raw, self.content_type, loaded.signature, objects)


def encode(result: Any, loaded: LoadedModel):
    """The 200 of a prediction: {"predictions": ...}, with the headers of the version that answered."""
    from starlette.responses import Response

    return Response(predictions_json(result), media_type="application/json", headers=loaded.headers())


class DataPlane:
    """A replica's predict path: its batcher, the shadow copies' batcher, the body limit."""

    def __init__(self, max_request_bytes: int, max_batch_size: int, batch_wait_s: float, max_shadow_queued: int):
        self.max_request_bytes = max_request_bytes
        self.batcher = Batcher(predict_batch, max_batch_size, batch_wait_s)
        self.shadow_batcher = Batcher(
            predict_batch, max_batch_size, yield_to=self.batcher, max_queued=max_shadow_queued
        )

    async def read(self, request) -> Body:
        """The request's body (413 over max_request_bytes)."""
        raw = await read_body(request, self.max_request_bytes)
        return Body(raw, request.headers.get("content-type", ""))

    @staticmethod
    def pick(followed, request) -> Route:
        """The version that answers the request, and the one that gets its shadow copy, if any;
        the request remembers the version (request.state.loaded: its errors carry its headers)."""
        chosen = followed.route(request.headers.get(STICKY_HEADER))
        request.state.loaded = chosen.answer
        return chosen

    async def infer(self, loaded: LoadedModel, data: Any, params: dict | None, checked: bool = True) -> Any:
        """The model's output for data, batched with the other requests; raises what it failed with."""
        return await self.batcher.submit(PredictItem(loaded, data, params, checked))

    def shadow_room(self) -> bool:
        """Whether a shadow copy would be queued now; if not, it is dropped (and counted) here,
        before any work is spent on it."""
        return self.shadow_batcher.admits()

    async def infer_shadow(self, loaded: LoadedModel, data: Any, params: dict | None) -> tuple[Any, float]:
        """A shadow copy's output and the seconds its predict took (not its wait for an idle
        model: the candidate's latency, as its guard compares it), predicted when the model is
        idle; Unavailable if too many copies wait. A failure is raised, its seconds on it."""
        item = PredictItem(loaded, data, params)
        try:
            return await self.shadow_batcher.submit(item), item.seconds
        except ServingError as err:
            err.seconds = item.seconds
            raise

    def stop(self) -> None:
        self.batcher.stop()
        self.shadow_batcher.stop()
