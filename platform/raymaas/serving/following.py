"""Models that follow the registry: the version an alias points at, loaded, and swapped
whole for the next one when the alias moves (a request sees one version throughout); and,
while a rollout of the followed `champion` is active (raymaas.tracking.rollout, read from the
registry on the same poll), its candidate version loaded beside it with its share, which
raymaas.serving.routing splits the requests by."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from raymaas.serving.protocol import (
    ALIAS_HEADER,
    NAME_HEADER,
    VERSION_HEADER,
    schema_json,
)
from raymaas.serving.routing import Rollout, Route, route
from raymaas.serving.specs import CHAMPION, ModelEndpointSpec

logger = logging.getLogger("ray.serve")


@dataclass
class LoadedModel:
    """One loaded model version; swapped whole, so a request sees one version throughout."""

    name: str
    version: str
    alias: str | None
    model: Any  # mlflow.pyfunc.PyFuncModel
    signature: Any
    loaded_at: float = field(default_factory=time.time)
    # the model minus its input check, for inputs parse_scoring_request checked (see predict)
    checked_model: Any = None
    # string columns parsed as numpy objects (parse_scoring_request): a model of this platform,
    # which reads them so
    strings_as_objects: bool = False
    # "followed": the version the alias names (or the fixed one); "candidate": a rollout's
    role: str = "followed"

    def describe(self, route: str) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "route": route,
            "signature": {
                "inputs": schema_json(self.signature),
                "outputs": self.signature.outputs.to_dict() if self.signature and self.signature.outputs else None,
            },
        }

    def predict(self, data, params: dict | None = None, checked: bool = True):
        """The model's prediction. `checked`: data is what parse_scoring_request returned,
        already checked against the signature (and cast) as MLflow checks it, or several such
        concatenated; then MLflow's PyFuncModel.predict does not check it again (~0.05 ms a
        column of a column signature, the most of a small model's predict call)."""
        if params is not None:
            return self.model.predict(data, params=params)
        if checked and self.checked_model is not None:
            return self.checked_model.predict(data)
        return self.model.predict(data)

    def headers(self) -> dict[str, str]:
        h = {VERSION_HEADER: self.version, NAME_HEADER: self.name}
        if self.alias:
            h[ALIAS_HEADER] = self.alias
        return h


def resolve_version(client, spec: ModelEndpointSpec, model=None) -> str:
    """The version spec names now: its fixed version, else the one its alias points at.
    `model`, the RegisteredModel already fetched (its aliases), saves the registry call; an
    alias it lacks is still asked of the registry, which resolves MLflow's `latest` and
    otherwise refuses with its own message (the alias, or the model, not found)."""
    if spec.version:
        return spec.version
    if model is not None:
        version = model.aliases.get(spec.alias)
        if version is not None:
            return str(version)  # the SQLite store returns ints
    return str(client.get_model_version_by_alias(spec.name, spec.alias).version)


def load_serving_model(client, spec: ModelEndpointSpec, version: str, role: str = "followed") -> LoadedModel:
    """Load one exact version (not the alias, which may move while it loads); a rollout's
    candidate (role "candidate") answers under no alias."""
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{spec.name}/{version}")
    return LoadedModel(
        spec.name,
        version,
        spec.alias if role == "followed" else None,
        model,
        model.metadata.signature,
        checked_model=without_input_check(model),
        strings_as_objects=reads_strings_as_objects(model),
        role=role,
    )


def reads_strings_as_objects(model) -> bool:
    """Whether a loaded pyfunc model is one of this platform's (raymaas.modelcode.pyfunc),
    whose tabular encoding reads string columns as Python objects whatever their dtype."""
    from raymaas.modelcode.pyfunc import TorchAnomalyScorer, TorchClassifier, TorchRegressor

    try:
        return isinstance(model.unwrap_python_model(), (TorchClassifier, TorchRegressor, TorchAnomalyScorer))
    except Exception:  # not a python_function model of a PythonModel (e.g. scikit-learn's flavour)
        return False


def without_input_check(model):
    """The same model (same implementation, same prediction context) without the input schema
    check of PyFuncModel.predict, for inputs already checked against it; None where skipping
    that check could change what the model gets: no input schema (nothing to skip), a signature
    from type hints (the model converts its input itself) or an input example's format. A
    params schema stays: MLflow still fills in the params' defaults."""
    import copy

    from mlflow.models import ModelSignature

    meta = model.metadata
    signature = meta.signature
    if signature is None or signature.inputs is None:
        return None
    if meta._is_signature_from_type_hint() or meta._is_type_hint_from_example():
        return None
    twin_meta = copy.copy(meta)
    # PyFuncModel._predict: no input schema to enforce; the params schema as it was
    twin_meta.signature = (
        ModelSignature(inputs=None, outputs=signature.outputs, params=signature.params)
        if signature.params is not None
        else None
    )
    twin = copy.copy(model)
    twin._model_meta = twin_meta
    return twin


class FollowedModel:
    """A model that follows its registry alias: polls, loads a new version aside, swaps; and,
    when it follows `champion`, a rollout's candidate beside it (see the module docstring)."""

    def __init__(
        self, spec: ModelEndpointSpec, tracking_uri: str, poll_interval_s: float, follow_rollouts: bool = True
    ):
        from raymaas.tracking import get_client

        self.spec = spec
        self.client = get_client(tracking_uri)
        self.poll_interval_s = poll_interval_s
        # a rollout moves `champion`: an endpoint of another alias or a fixed version has none
        self.follow_rollouts = follow_rollouts and spec.alias == CHAMPION
        version, model = self._look()
        self.current = load_serving_model(self.client, spec, version)
        self.rollout: Rollout | None = None
        if self.follow_rollouts:
            try:
                self.rollout = self._read_rollout(model)
            except Exception:  # the champion serves alone until a poll gets the candidate
                logger.exception("reading %s's rollout from the registry failed", spec.name)
        self._task: asyncio.Task | None = None

    def route(self, key: str | None = None) -> Route:
        """The version that answers a request (and the one that sees a copy of it)."""
        return route(self.current, self.rollout, key)

    def start_following(self) -> None:
        if self.spec.alias and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _look(self) -> tuple[str, Any]:
        """One look at the registry: the version the spec names now and, for an alias, the
        RegisteredModel it was read from, whose tags also hold the rollout (so a poll makes one
        get_registered_model call, and one get_model_version more while a rollout is active)."""
        if self.spec.version:
            return self.spec.version, None
        model = self.client.get_registered_model(self.spec.name)
        return resolve_version(self.client, self.spec, model), model

    def _read_rollout(self, model=None) -> Rollout | None:
        """The active rollout of this model in the registry, its candidate loaded (once);
        `model`: the RegisteredModel _look fetched (else it is fetched here)."""
        from raymaas.tracking.rollout import read_rollout

        state = read_rollout(self.client, self.spec.name, model)
        if state is None or not state.active or state.version == self.current.version:
            return None
        held = self.rollout
        if held is not None and held.candidate.version == state.version:
            candidate = held.candidate
        else:
            logger.info(
                "%s: rollout of version %s; loading it beside %s", self.spec.name, state.version, self.current.version
            )
            candidate = load_serving_model(self.client, self.spec, state.version, role="candidate")
        return Rollout(candidate, state.share, state.mode)

    async def poll(self) -> None:
        """One look at the registry: swap to the version the alias names now (loaded aside),
        and take up the rollout's state, on one get_registered_model call (see _look)."""
        version, model = await asyncio.to_thread(self._look)
        if version != self.current.version:
            logger.info("%s@%s moved to version %s; loading it", self.spec.name, self.spec.alias, version)
            held = self.rollout
            if held is not None and held.candidate.version == version:  # promoted: already loaded
                loaded = dataclasses.replace(held.candidate, alias=self.spec.alias, role="followed")
            else:
                loaded = await asyncio.to_thread(load_serving_model, self.client, self.spec, version)
            old, self.current = self.current.version, loaded  # requests in flight keep the old one
            logger.info("%s: now serving version %s (was %s)", self.spec.name, version, old)
        if self.follow_rollouts:
            self.rollout = await asyncio.to_thread(self._read_rollout, model)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a registry hiccup must not stop the replica serving the current version
                logger.exception(
                    "checking %s@%s in the registry failed; keeping version %s",
                    self.spec.name,
                    self.spec.alias,
                    self.current.version,
                )
