"""A replica's model following the registry, without Ray: the version its alias names, and a
rollout's candidate loaded beside it, routed, promoted without a second load (real MLflow
models in a SQLite store; tests/test_rollout.py runs the same on Serve)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import mlflow
import numpy as np
import pytest
import torch

from raymaas.modelcode.pyfunc import log_classifier
from raymaas.monitoring.rollout import RolloutPolicy
from raymaas.serving.following import FollowedModel, resolve_version
from raymaas.serving.protocol import ALIAS_HEADER, VERSION_HEADER
from raymaas.serving.specs import ModelEndpointSpec
from raymaas.tracking import get_client
from raymaas.tracking.registry import CHAMPION
from raymaas.tracking.rollout import end_rollout, read_rollout, start_rollout


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = get_client(uri)
    mlflow.set_experiment("following")
    for seed in (1, 2):
        torch.manual_seed(seed)
        module = torch.nn.Sequential(torch.nn.Linear(4, 3))
        with mlflow.start_run():
            info = log_classifier(module, np.random.default_rng(seed).random((4, 4), dtype=np.float32))
        mlflow.register_model(info.model_uri, "m")
    client.set_registered_model_alias("m", CHAMPION, "1")
    return uri, client


def test_a_rollout_s_candidate_is_loaded_beside_the_champion_and_promoted_without_a_second_load(store):
    uri, client = store
    followed = FollowedModel(ModelEndpointSpec(name="m"), uri, poll_interval_s=0.05)
    assert followed.rollout is None and followed.route("anyone").answer.version == "1"

    start_rollout(client, "m", RolloutPolicy(steps=[100]), version="2")
    followed.rollout = followed._read_rollout()
    chosen = followed.route("anyone")
    assert chosen.answer.version == "2" and chosen.answer.role == "candidate" and chosen.shadow is None
    headers = chosen.answer.headers()
    assert headers[VERSION_HEADER] == "2" and ALIAS_HEADER not in headers  # a candidate answers under no alias
    loaded_candidate = chosen.answer.model
    assert followed._read_rollout().candidate.model is loaded_candidate  # held, not loaded again

    async def follow_the_promotion():
        followed.start_following()
        try:
            end_rollout(client, "m", "promote")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (followed.current.version != "2" or followed.rollout is not None):
                await asyncio.sleep(0.05)
        finally:
            followed.stop()

    asyncio.run(follow_the_promotion())
    now = followed.current
    assert (now.version, now.alias, now.role) == ("2", CHAMPION, "followed")
    assert now.model is loaded_candidate and followed.rollout is None
    assert followed.route("anyone").answer is now


def test_an_endpoint_of_a_fixed_version_or_another_alias_has_no_rollout(store):
    uri, client = store
    start_rollout(client, "m", RolloutPolicy(steps=[100]), version="2", shadow=True)
    assert FollowedModel(ModelEndpointSpec(name="m"), uri, 1.0).rollout.mode == "shadow"
    for spec in (ModelEndpointSpec(name="m", version="1"), ModelEndpointSpec(name="m", alias="candidate")):
        client.set_registered_model_alias("m", "candidate", "1")
        followed = FollowedModel(spec, uri, 1.0)
        assert followed.rollout is None and followed.route("k").answer.version == "1"
    assert FollowedModel(ModelEndpointSpec(name="m"), uri, 1.0, follow_rollouts=False).rollout is None


class CountingClient:
    """A real MlflowClient whose method calls are counted by name."""

    def __init__(self, client):
        self.client = client
        self.calls: Counter = Counter()

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def test_one_poll_reads_the_alias_and_the_rollout_with_one_get_registered_model(store):
    uri, client = store
    followed = FollowedModel(ModelEndpointSpec(name="m"), uri, 1.0)
    counting = followed.client = CountingClient(followed.client)

    asyncio.run(followed.poll())  # no rollout: the aliases only
    assert counting.calls == {"get_registered_model": 1}
    assert followed.current.version == "1" and followed.rollout is None

    start_rollout(client, "m", RolloutPolicy(steps=[30, 100]), version="2")
    counting.calls.clear()
    asyncio.run(followed.poll())  # a rollout: its version's tags, one get_model_version more
    assert counting.calls == {"get_registered_model": 1, "get_model_version": 1}
    # what the three calls of before read: the alias by itself, the rollout by itself
    assert followed.current.version == str(client.get_model_version_by_alias("m", CHAMPION).version) == "1"
    state = read_rollout(client, "m")
    rollout = followed.rollout
    assert (rollout.candidate.version, rollout.share, rollout.mode) == (state.version, state.share, state.mode)
    assert (rollout.candidate.version, rollout.share, rollout.mode) == ("2", 30, "canary")

    end_rollout(client, "m", "promote")
    counting.calls.clear()
    asyncio.run(followed.poll())  # the alias moved to the candidate: no rollout, no load
    assert counting.calls == {"get_registered_model": 1}
    assert (followed.current.version, followed.current.role, followed.rollout) == ("2", "followed", None)


def test_an_alias_the_model_lacks_is_refused_with_mlflow_s_message(store):
    _, client = store
    model = client.get_registered_model("m")
    for spec in (ModelEndpointSpec(name="m", alias="nope"), ModelEndpointSpec(name="m", alias="candidate")):
        with pytest.raises(mlflow.exceptions.MlflowException, match=f"Registered model alias {spec.alias} not found"):
            resolve_version(client, spec, model)
        with pytest.raises(mlflow.exceptions.MlflowException, match=f"Registered model alias {spec.alias} not found"):
            resolve_version(client, spec)
    assert resolve_version(client, ModelEndpointSpec(name="m", alias=CHAMPION), model) == "1"
    assert resolve_version(client, ModelEndpointSpec(name="m", alias="latest"), model) == "2"  # MLflow's own
    assert resolve_version(client, ModelEndpointSpec(name="m", version="2"), model) == "2"
