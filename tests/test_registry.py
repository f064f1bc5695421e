"""The champion gate on a real MLflow registry (SQLite store, no Ray needed)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from raymaas.tracking import get_client, registry


@pytest.fixture()
def client(tmp_path):
    return get_client(f"sqlite:///{tmp_path / 'mlflow.db'}")


def add_version(client, name: str, value: float | None) -> str:
    try:
        client.create_registered_model(name)
    except Exception:
        pass
    tags = {} if value is None else {registry.GATE_METRIC_TAG: "val_accuracy", registry.GATE_VALUE_TAG: repr(value)}
    return str(client.create_model_version(name, source="file:///nowhere", tags=tags).version)


def test_gate_moves_champion_only_for_a_better_version(client):
    v1 = add_version(client, "m", 0.90)
    first = registry.promote_if_better(client, "m", v1)
    assert first.promoted and "first champion" in first.reason

    v2 = add_version(client, "m", 0.85)
    worse = registry.promote_if_better(client, "m", v2)
    assert not worse.promoted
    assert worse.reason == "val_accuracy 0.8500 does not beat champion v1's 0.9000"
    assert client.get_model_version_by_alias("m", "champion").version == int(v1)
    assert client.get_model_version("m", v2).tags[registry.DECISION_TAG] == "kept candidate"

    v3 = add_version(client, "m", 0.95)
    better = registry.promote_if_better(client, "m", v3)
    assert better.promoted and "beats champion v1's" in better.reason
    assert str(client.get_model_version_by_alias("m", "champion").version) == v3

    again = registry.promote_if_better(client, "m", v3)
    assert again.promoted and again.reason == "already champion"


def test_gate_lower_is_better_and_missing_metric(client):
    v1 = add_version(client, "loss-model", 0.5)
    registry.promote_if_better(client, "loss-model", v1, higher_is_better=False)
    v2 = add_version(client, "loss-model", 0.4)
    assert registry.promote_if_better(client, "loss-model", v2, higher_is_better=False).promoted
    v3 = add_version(client, "loss-model", None)
    decision = registry.promote_if_better(client, "loss-model", v3, higher_is_better=False)
    assert not decision.promoted and "no raymaas.gate_value" in decision.reason


def test_promote_by_hand_records_the_decision(client):
    v1 = add_version(client, "h", 0.9)
    v2 = add_version(client, "h", 0.1)
    registry.promote_if_better(client, "h", v1)
    registry.promote(client, "h", v2)
    assert str(client.get_model_version_by_alias("h", "champion").version) == v2
    assert client.get_model_version("h", v2).tags[registry.REASON_TAG] == "promoted by hand"
    with pytest.raises(MlflowException):
        registry.promote(client, "h", "99")
