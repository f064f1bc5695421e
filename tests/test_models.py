"""Model families (raymaas.supervised.models): each family's config and builder, the `model`
section picking the family from its name, a user factory's arguments, and `raymaas explain`.
Torch and pydantic only: no Ray, no MLflow."""

from __future__ import annotations

import importlib
import json
import re
import textwrap

import numpy as np
import pytest
import torch
from torch.export import Dim

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
    RNNConfig,
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
        (RNNConfig(name="lstm", hidden_size=8), (6, 3)),
        (RNNConfig(name="gru", hidden_size=8, num_layers=2, bidirectional=True), (6,)),
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
    # lstm and gru share RNNConfig: its name keeps the cell
    assert parse_model_spec({"name": "gru", "hidden_size": 8}) == RNNConfig(name="gru", hidden_size=8)
    assert isinstance(build_network(parse_model_spec({"name": "gru"}), (4,), 1).rnn, torch.nn.GRU)
    assert isinstance(build_network(parse_model_spec({"name": "lstm"}), (4,), 1).rnn, torch.nn.LSTM)
    factory = parse_model_spec({"name": "raymaas.supervised.models:build_network", "options": {"a": 1}})
    assert type(factory) is FactoryConfig and factory.options == {"a": 1}
    assert type(SupervisedSpec(name="x").model) is MLPConfig


@pytest.mark.parametrize(
    "model, field, words",
    [
        ({"name": "linear", "hidden_sizes": [8]}, "model.hidden_sizes", "not a field of model (linear)"),
        ({"name": "cnn", "hidden_sizes": [8]}, "model.hidden_sizes", "not a field of model (cnn)"),
        ({"name": "mlp", "channels": [8]}, "model.channels", "not a field of model (mlp)"),
        ({"name": "gru", "hidden_sizes": [8]}, "model.hidden_sizes", "not a field of model (gru)"),
        ({"name": "lstm", "dropout": 1.0}, "model.dropout", "less than 1"),
        ({"name": "lstm", "num_layers": 0}, "model.num_layers", "greater than or equal to 1"),
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
        {"name": "lstm", "hidden_size": 8, "num_layers": 2, "dropout": 0.1},
        {"name": "gru", "bidirectional": True},
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
    # lstm and gru share one config (RNNConfig): its fields are listed once, naming both
    assert rows["model (lstm | gru).hidden_size"][0] == "64" and rows["model (lstm | gru).num_layers"][0] == "1"
    assert rows["model (lstm | gru).bidirectional"][0] == "False"
    assert "num_layers > 1" in rows["model (lstm | gru).dropout"][1] and "model (lstm)" not in rows
    assert not any("unknown" in field for field in rows)


RECURRENT = [
    RNNConfig(name="lstm", hidden_size=8),
    RNNConfig(name="gru", hidden_size=8, num_layers=2, bidirectional=True, dropout=0.2),
    RNNConfig(name="lstm", hidden_size=8, num_layers=2, bidirectional=True, dropout=0.2),
]


@pytest.mark.parametrize("config", RECURRENT)
def test_a_recurrent_model_takes_a_sequence_in_each_layout(config):
    net = build_network(config, (5, 3), 2).eval()
    x = torch.randn(4, 5, 3)
    with torch.inference_mode():
        out = net(x)
        assert out.shape == (4, 2)
        torch.testing.assert_close(net(x.flatten(1)), out)  # flat rows, step after step
    one_channel = build_network(config, (5,), 2).eval()
    with torch.inference_mode():
        torch.testing.assert_close(one_channel(x[..., 0]), one_channel(x[..., :1]))


def test_a_bidirectional_head_reads_both_final_states():
    net = build_network(RNNConfig(name="gru", hidden_size=4, num_layers=2, bidirectional=True), (6, 2), 1).eval()
    x = torch.randn(3, 6, 2)
    with torch.no_grad():
        output, h_n = net.rnn(x)
        # the backward direction's final state is its output at the first step, not the last
        torch.testing.assert_close(h_n[-1], output[:, 0, 4:])
        torch.testing.assert_close(net(x), net.head(torch.cat([h_n[-2], h_n[-1]], dim=1)))


# torch warns that the RNN's _flat_weights are reassigned while exporting; export restores them
# (https://github.com/pytorch/pytorch/pull/163809 made the old error this warning).
@pytest.mark.filterwarnings("ignore:The tensor attributes self.rnn._flat_weights")
@pytest.mark.parametrize("config", RECURRENT[:2])
def test_a_recurrent_model_exports_with_a_dynamic_batch(config, tmp_path, one_torch_thread):
    net = build_network(config, (5, 3), 2).eval()
    program = torch.export.export(net, (torch.randn(4, 5, 3),), dynamic_shapes=({0: Dim.DYNAMIC},))
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    for n in (1, 7):
        x = torch.randn(n, 5, 3)
        with torch.inference_mode():
            torch.testing.assert_close(loaded(x), net(x))


@pytest.fixture
def one_torch_thread():
    """Batches this small gain nothing from a second intra-op thread, and on a busy 2-core machine
    its spin-waits made the GRU's 30 steps take 87 s instead of 3 s (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("config", RECURRENT[:2])
def test_a_recurrent_model_learns_the_next_value_of_a_sine_wave(config, one_torch_thread):
    """Correctness, not speed: 30 Adam steps lower the loss of a next-value forecast."""
    torch.manual_seed(0)
    t = np.arange(400) * 0.2
    wave = np.sin(t) + 0.5 * np.sin(0.3 * t)
    starts = np.arange(0, 380, 3)
    x = torch.tensor(wave[starts[:, None] + np.arange(12)], dtype=torch.float32)  # [n, 12]: one channel
    y = torch.tensor(wave[starts + 12], dtype=torch.float32)[:, None]
    net = build_network(config, (12,), 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
