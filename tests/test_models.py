"""Model families (raymaas.supervised.models): each family's config and builder, the `model`
section picking the family from its name, a user factory's arguments, and `raymaas explain`.
Torch and pydantic only: no Ray, no MLflow."""

from __future__ import annotations

import importlib
import json
import re
import textwrap

import pytest
import torch

from raymaas.cli.main import main as raymaas_main
from raymaas.specs import SpecError, validate_spec
from raymaas.supervised import SupervisedSpec
from raymaas.supervised.data import BuiltinData, Targets
from raymaas.supervised.loop import Selection, WorkerConfig
from raymaas.supervised.models import (
    FAMILIES,
    CNNConfig,
    FactoryConfig,
    LinearConfig,
    MLPConfig,
    build_model,
    build_network,
    parse_model_spec,
)


@pytest.mark.parametrize(
    "config, input_shape",
    [
        (LinearConfig(), (12,)),
        (LinearConfig(), (3, 4)),
        (MLPConfig(hidden_sizes=[8, 4], dropout=0.1), (12,)),
        (MLPConfig(), (2, 3, 4)),
        (CNNConfig(channels=[4]), (16,)),
        (CNNConfig(channels=[4, 8]), (3, 6, 6)),
    ],
)
def test_each_family_builds_for_an_input_shape(config, input_shape):
    net = build_network(config, input_shape, n_outputs=5)
    out = net(torch.randn(7, *input_shape))
    assert out.shape == (7, 5)


def test_build_model_wraps_the_family_for_flat_features():
    net = build_model(MLPConfig(hidden_sizes=[8]), 4, 3, torch.zeros(4), torch.ones(4), [1.0, 2.0, 3.0], [2.0] * 3)
    assert net(torch.randn(6, 4)).shape == (6, 3)
    with pytest.raises(ValueError, match="needs square images: 5 features"):
        build_model(CNNConfig(), 5, 3, torch.zeros(5), torch.ones(5))


def test_the_name_picks_the_family():
    assert type(parse_model_spec({})) is MLPConfig
    assert parse_model_spec({}).hidden_sizes == [128, 64]
    for name, family in FAMILIES.items():
        assert type(parse_model_spec({"name": name})) is family.config
    assert parse_model_spec({"name": "cnn", "channels": [4]}).channels == [4]
    factory = parse_model_spec({"name": "raymaas.supervised.models:build_network", "options": {"a": 1}})
    assert type(factory) is FactoryConfig and factory.options == {"a": 1}
    assert type(SupervisedSpec(name="x").model) is MLPConfig


@pytest.mark.parametrize(
    "model, field, words",
    [
        ({"name": "linear", "hidden_sizes": [8]}, "model.hidden_sizes", "not a field of model (linear)"),
        ({"name": "cnn", "hidden_sizes": [8]}, "model.hidden_sizes", "not a field of model (cnn)"),
        ({"name": "mlp", "channels": [8]}, "model.channels", "not a field of model (mlp)"),
        ({"name": "linea"}, "model.name", "unknown model 'linea': use one of linear, mlp, cnn"),
        ({"name": "mlp", "hidden_sizes": []}, "model.hidden_sizes", "at least 1 item"),
        ("mlp", "model", "a model section is a mapping with a name"),
    ],
)
def test_a_field_of_another_family_is_named(model, field, words):
    with pytest.raises(SpecError) as err:
        validate_spec(SupervisedSpec, {"name": "x", "model": model})
    lines = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert len(lines) == 1 and lines[0].startswith(f"{field}: ") and words in lines[0], str(err.value)


FACTORIES = """
import torch


def shaped(input_shape, n_outputs, width=4):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0] * input_shape[1], n_outputs))


SEEN = {}


def recorded(**given):
    SEEN.update(given)
    return torch.nn.Identity()


def old_style(n_features, n_classes, width=16):
    return torch.nn.Sequential(torch.nn.Linear(n_features, width), torch.nn.ReLU(), torch.nn.Linear(width, n_classes))


def not_a_module(input_shape, n_outputs):
    return "a string"
"""


@pytest.fixture
def user_factories(tmp_path, monkeypatch):
    (tmp_path / "acme_factories.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "acme_factories"


def test_a_factory_gets_input_shape_and_n_outputs(user_factories):
    net = build_network(FactoryConfig(name=f"{user_factories}:shaped", options={"width": 8}), (3, 4), 2)
    assert net(torch.randn(5, 3, 4)).shape == (5, 2)

    build_network(FactoryConfig(name=f"{user_factories}:recorded", options={"width": 8}), [6], 3)
    assert importlib.import_module(user_factories).SEEN == {"input_shape": (6,), "n_outputs": 3, "width": 8}

    with pytest.raises(TypeError, match="returned str, not a torch.nn.Module"):
        build_network(FactoryConfig(name=f"{user_factories}:not_a_module"), (6,), 3)


def test_an_old_style_factory_still_gets_n_features_and_n_classes(user_factories):
    spec = parse_model_spec({"name": f"{user_factories}:old_style", "options": {"width": 8}})
    net = build_model(spec, 6, 3, torch.zeros(6), torch.ones(6))
    assert net(torch.randn(4, 6)).shape == (4, 3)


@pytest.mark.parametrize(
    "model",
    [
        {"name": "linear"},
        {"name": "mlp", "hidden_sizes": [16], "dropout": 0.2},
        {"name": "cnn", "channels": [4, 8], "dropout": 0.1},
        {"name": "raymaas.supervised.models:build_network", "options": {"width": 3}},
    ],
)
def test_a_worker_config_round_trips_each_family(model):
    """The driver hands each worker its WorkerConfig as JSON; the worker validates it again."""
    spec = validate_spec(SupervisedSpec, {"name": "x", "model": model})
    config = WorkerConfig(
        train_loop_config=spec.train_loop_config,
        model=spec.model,
        data=BuiltinData(spec=spec.data, n_features=64, targets=Targets(task="classification", classes=[0, 1])),
        selection=Selection(metric="val_accuracy", higher_is_better=True),
    )
    again = WorkerConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json"))))
    assert type(again.model) is type(spec.model) and again.model == spec.model
    assert again.model.model_dump(include=set(model)) == model


def test_explain_lists_each_familys_fields(capsys):
    assert raymaas_main(["explain", "supervised"]) == 0
    # columns: field, default, description (the field may hold single spaces: "model (mlp).dropout")
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("model"):
            field, *rest = re.split(r"\s{2,}", line)
            rows[field] = rest
    assert rows["model (mlp).hidden_sizes"][0] == "[128, 64]"
    assert rows["model (cnn).channels"][0] == "[16, 32]"
    assert rows["model (cnn).dropout"][0] == "0.0" and rows["model (factory).options"][0] == "{}"
    assert rows["model.name"][0] == "'mlp'"
    assert "model (linear)" in rows and "model.hidden_sizes" not in rows
    assert not any("unknown" in field for field in rows)
