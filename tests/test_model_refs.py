"""Model references, parsed in one place (raymaas.model_refs), and what each consumer takes:
batch scoring pins a registered version, `raymaas serve` and a Serve config publish a registered
model by alias or version. No Ray: the look-ups run on a real SQLite registry."""

from __future__ import annotations

import numpy as np
import pytest

from raymaas.model_refs import FORMS, ModelRef, ModelRefError

# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    "text, ref",
    [
        ("digits", ModelRef("digits", alias="champion")),
        ("digits@candidate", ModelRef("digits", alias="candidate")),
        ("digits/3", ModelRef("digits", version="3")),
        ("models:/digits@champion", ModelRef("digits", alias="champion")),
        ("models:/digits/12", ModelRef("digits", version="12")),
        ("models:/m-0123abcd", ModelRef(model_id="m-0123abcd")),
        ("models:/digits", ModelRef(model_id="digits")),  # MLflow 3's reading: a logged model's id
        ("m-0123abcd", ModelRef("m-0123abcd", alias="champion")),  # no scheme: a registered name
        ("my_model-2@v_2-b", ModelRef("my_model-2", alias="v_2-b")),
        (" digits ", ModelRef("digits", alias="champion")),
    ],
)
def test_every_form_parses_and_writes_back_as_mlflow_loads_it(text, ref):
    parsed = ModelRef.parse(text)
    assert parsed == ref
    assert ModelRef.parse(parsed.uri) == parsed  # the URI means the same to us as to MLflow
    if parsed.name is not None:
        assert ModelRef.parse(str(parsed)) == parsed
    assert parsed.uri == {
        "digits": "models:/digits@champion",
        "digits/3": "models:/digits/3",
        "models:/m-0123abcd": "models:/m-0123abcd",
    }.get(text, parsed.uri)


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "it names no model"),
        ("models:/", "it names no model"),
        ("@champion", "it names no model"),
        ("digits@", "an alias is letters, digits, `_` and `-`, not ''"),
        ("digits@champ ion", "an alias is letters, digits, `_` and `-`, not 'champ ion'"),
        ("digits/", "no version after the `/`"),
        ("digits/Production", "a version is a number, not 'Production'; MLflow's stages are deprecated"),
        ("models:/digits/latest", "NAME@latest is the newest version"),
        ("digits/3/x", "NAME/VERSION has one `/`"),
        ("digits@champion/3", "an alias or a version, not both"),
        ("a@b@c", "a registered model's name has no `/`, `:` or `@`"),
        ("runs:/0a1b/model", "a runs: URI is not a registered model"),
    ],
)
def test_a_bad_reference_is_named_with_the_reason_and_the_accepted_forms(text, why):
    with pytest.raises(ModelRefError) as err:
        ModelRef.parse(text)
    message = str(err.value)
    assert message.startswith(f"model {text!r} is not a model reference ("), message
    assert why in message and message.endswith(f"give {FORMS}"), message


def test_a_ref_holds_exactly_one_of_alias_version_and_logged_model():
    for kwargs in (
        {"name": "d"},
        {"name": "d", "alias": "a", "version": "1"},
        {"name": "d", "model_id": "m-1"},
        {"alias": "a"},
    ):
        with pytest.raises(ModelRefError):
            ModelRef(**kwargs)
    assert isinstance(ModelRefError("x"), ValueError)  # argparse and pydantic callers catch ValueError


def test_a_logged_model_is_refused_by_a_consumer_of_registered_models_in_its_words():
    ref = ModelRef.parse("models:/m-0123abcd")
    with pytest.raises(ModelRefError, match="is a logged model") as err:
        ref.registered("batch scoring")
    assert "batch scoring takes a registered model: register it (mlflow.register_model)" in str(err.value)
    assert "m-0123abcd (its champion), m-0123abcd@ALIAS or m-0123abcd/VERSION" in str(err.value)
    assert ModelRef.parse("digits/3").registered("batch scoring") == ModelRef("digits", version="3")


# --------------------------------------------------------------------------- serving


def test_serve_publishes_every_registered_form_and_refuses_a_logged_model():
    from raymaas.serving.deploy import endpoint_spec, serve_targets

    _, models = serve_targets(["a", "b@candidate", "c/3", "models:/d@shadow", "models:/e/2"])
    assert [(m.name, m.alias, m.version) for m in models] == [
        ("a", "champion", None),
        ("b", "candidate", None),
        ("c", None, "3"),  # pinned, as `mlflow models serve -m models:/c/3` is: no alias to follow
        ("d", "shadow", None),
        ("e", None, "2"),
    ]
    assert [m.model_uri for m in models] == [
        "models:/a@champion",
        "models:/b@candidate",
        "models:/c/3",
        "models:/d@shadow",
        "models:/e/2",
    ]
    with pytest.raises(ValueError, match="`raymaas serve` takes a registered model"):
        endpoint_spec("models:/m-0123abcd")
    with pytest.raises(ValueError, match=r"is not a model reference \(a version is a number"):
        serve_targets(["digits/Staging"])
    with pytest.raises(ValueError, match="given twice"):
        serve_targets(["digits", "models:/digits/1"])


def test_serve_refuses_a_logged_model_before_anything_starts(capsys):
    import ray

    from raymaas.cli.main import main

    assert main(["serve", "models:/m-0123abcd"]) == 2
    assert "is a logged model" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_a_serve_config_s_model_takes_the_same_rules_and_says_what_a_reference_as_name_means():
    from pydantic import ValidationError

    from raymaas.serving.specs import ModelEndpointSpec

    assert ModelEndpointSpec(name="d", version=3).model_uri == "models:/d/3"
    assert ModelEndpointSpec(name="d").model_uri == "models:/d@champion"
    refusals = {
        "name: d@candidate": ({"name": "d@candidate"}, "give name: d and alias: candidate"),
        "name: models:/d/3": ({"name": "models:/d/3"}, "give name: d and version: 3"),
        "bad alias": ({"name": "d", "alias": "x y"}, "model 'd': an alias is letters, digits"),
        "bad version": ({"name": "d", "version": "Production"}, "model 'd': a version is a number"),
        "both": ({"name": "d", "alias": "x", "version": "1"}, "give an alias or a version, not both"),
    }
    for case, (fields, message) in refusals.items():
        with pytest.raises(ValidationError) as err:
            ModelEndpointSpec(**fields)
        assert message in str(err.value), case


# --------------------------------------------------------------------------- the registry


@pytest.fixture()
def client(tmp_path):
    from raymaas.tracking import get_client

    return get_client(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_find_version_says_what_the_registry_lacks(client):
    from raymaas.tracking.registry import find_version

    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source="file:///nowhere")
    client.set_registered_model_alias("m", "champion", "1")

    assert str(find_version(client, ModelRef.parse("m")).version) == "1"
    assert str(find_version(client, ModelRef.parse("models:/m/2")).version) == "2"
    assert str(find_version(client, ModelRef.parse("m@latest")).version) == "2"  # MLflow's own
    for text, message in (
        ("nope", f"no registered model named 'nope' in {client.tracking_uri} (`raymaas models` lists them)"),
        ("m/9", "registered model 'm' has no version 9"),
        ("m@candidate", "registered model 'm' has no alias 'candidate' (its aliases: champion;"),
    ):
        with pytest.raises(LookupError) as err:
            find_version(client, ModelRef.parse(text))
        assert message in str(err.value), text


def test_serve_s_check_and_batch_scoring_refuse_the_same_reference_alike(client):
    from raymaas.batch.plan import resolve_model
    from raymaas.serving.deploy import check_models, endpoint_spec
    from raymaas.specs import SpecError

    client.create_registered_model("m")
    client.create_model_version("m", source="file:///nowhere")
    for text, message in (
        ("m", "registered model 'm' has no alias 'champion' (it has no aliases; NAME/VERSION names a version)"),
        ("models:/m/4", "registered model 'm' has no version 4"),
    ):
        with pytest.raises(LookupError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_models([endpoint_spec(text)], client.tracking_uri)
        with pytest.raises(SpecError) as err:
            resolve_model(client, text)
        assert str(err.value) == f"model {text!r}: {message}"
    with pytest.raises(SpecError, match="batch scoring takes a registered model: register it"):
        resolve_model(client, "models:/m-0123abcd")
    with pytest.raises(SpecError, match=r"model 'm/x' is not a model reference \(a version is a number"):
        resolve_model(client, "m/x")


def test_batch_scoring_pins_the_version_an_alias_names(client, tmp_path):
    import mlflow
    import torch

    from raymaas.batch.plan import resolve_model
    from raymaas.modelcode.pyfunc import log_classifier

    mlflow.set_experiment("refs")
    with mlflow.start_run():
        info = log_classifier(torch.nn.Linear(4, 3), np.zeros((2, 4), dtype=np.float32))
    version = str(mlflow.register_model(info.model_uri, "m").version)
    client.set_registered_model_alias("m", "champion", version)

    for text in ("m", "m@champion", "models:/m@champion", f"m/{version}", f"models:/m/{version}"):
        pinned = resolve_model(client, text)
        assert (pinned.name, pinned.version, pinned.requested) == ("m", version, text)
        assert pinned.uri == f"models:/m/{version}"
        assert pinned.signature.inputs is not None
