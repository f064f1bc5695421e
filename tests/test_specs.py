"""Spec validation: bad input is rejected before anything starts, with the field named."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import DEBUG_SPEC, REPO
from raymaas.specs import SpecError, apply_overrides, describe_fields, flatten, load_spec, parse_range
from raymaas.supervised import SupervisedSpec


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_specs_are_valid():
    for name in ("digits_mlp", "digits_cnn", "digits_debug"):
        spec = load_spec(SupervisedSpec, REPO / "jobs" / "specs" / f"{name}.yaml")
        assert spec.scaling_config.num_workers == 2
    assert load_spec(SupervisedSpec, DEBUG_SPEC).train_loop_config.epochs <= 3


def test_defaults_follow_the_issue():
    spec = SupervisedSpec(name="x")
    assert spec.scaling_config.num_workers == 2
    assert spec.scaling_config.use_gpu == "auto"
    assert spec.experiment_name == "x" and spec.registered_model_name == "x"


@pytest.mark.parametrize(
    "override, field, words",
    [
        ("train_loop_config.epochz=3", "train_loop_config.epochz", "unknown field"),
        ("train_loop_config.epochs=three", "train_loop_config.epochs", "integer"),
        ("train_loop_config.epochs=0", "train_loop_config.epochs", "greater than or equal to 1"),
        ("scaling_config.use_gpu=maybe", "scaling_config.use_gpu", "auto"),
        ("data.source=imagenet", "data.source", "unknown dataset 'imagenet'"),
        ("data.source=/nowhere/train.parquet", "data.source", "does not exist"),
        ("model.name=resnet9000", "model.name", "unknown model 'resnet9000'"),
        ("model.name=no_such_pkg.mod:build", "model.name", "cannot import 'no_such_pkg.mod'"),
        ("model.name=raymaas.supervised.models:nothing_here", "model.name", "no callable 'nothing_here'"),
        ("data.validation_fraction=1.5", "data.validation_fraction", "less than 1"),
        ("name=has spaces", "name", "pattern"),
        ("scaling_config.num_workers=[0, 2]", "scaling_config.num_workers", "MIN must be at least 1"),
        ("scaling_config.num_workers=[3, 1]", "scaling_config.num_workers", "MIN 3 is more than MAX 1"),
        ("scaling_config.num_workers=[1, 2, 3]", "scaling_config.num_workers", "[MIN, MAX]"),
        ("scaling_config.num_workers=-1", "scaling_config.num_workers", "must be at least 0"),
        ("scaling_config.num_workers=many", "scaling_config.num_workers", "not a whole number"),
    ],
)
def test_bad_fields_are_named(override, field, words):
    with pytest.raises(SpecError) as err:
        load_spec(SupervisedSpec, DEBUG_SPEC, [override])
    message = str(err.value)
    line = next(text for text in message.splitlines() if text.strip().startswith(field + ":"))
    assert words in line, message


def test_elastic_workers_are_a_range():
    spec = load_spec(SupervisedSpec, DEBUG_SPEC, ["scaling_config.num_workers=[1, 4]"])
    scaling = spec.scaling_config
    assert scaling.num_workers == (1, 4) and scaling.elastic
    assert (scaling.min_workers, scaling.max_workers, scaling.describe_workers()) == (1, 4, "1-4")
    assert flatten(spec.model_dump(mode="json"))["scaling_config.num_workers"] == [1, 4]
    # [n, n] is a fixed group; 0 (local mode) still counts as one worker's resources
    assert load_spec(SupervisedSpec, DEBUG_SPEC, ["scaling_config.num_workers=[2, 2]"]).scaling_config.num_workers == 2
    assert load_spec(SupervisedSpec, DEBUG_SPEC, ["scaling_config.num_workers=0"]).scaling_config.min_workers == 1
    # MIN:MAX too, which YAML 1.1 would read as a base-60 number (1:4 = 64): specs read it as text
    assert load_spec(SupervisedSpec, DEBUG_SPEC, ["scaling_config.num_workers=1:4"]).scaling_config.num_workers == (
        1,
        4,
    )


@pytest.mark.parametrize(
    "value, least, expected",
    [
        (3, 1, 3),
        (0, 0, 0),
        ("3", 1, 3),
        ([1, 4], 1, (1, 4)),
        ((1, 4), 1, (1, 4)),
        ("1:4", 1, (1, 4)),
        (" 1 : 4 ", 1, (1, 4)),
        ([2, 2], 1, 2),
        ("2:2", 0, 2),
    ],
)
def test_parse_range_reads_a_count_or_a_range(value, least, expected):
    assert parse_range(value, least=least) == expected


@pytest.mark.parametrize(
    "value, least, words",
    [
        (0, 1, "must be at least 1"),
        (-1, 0, "must be at least 0"),
        ([0, 4], 0, "MIN must be at least 1"),  # least is N's floor; a range starts at 1
        ("0:4", 1, "MIN must be at least 1"),
        ([3, 1], 1, "MIN 3 is more than MAX 1"),
        ("3:1", 1, "MIN 3 is more than MAX 1"),
        ([1, 2, 3], 1, "a range is [MIN, MAX]"),
        ("1:2:3", 1, "a range is [MIN, MAX]"),
        ([1, True], 1, "a range is [MIN, MAX]"),
        ("many", 1, "not a whole number"),
        ("1:x", 1, "not a whole number"),
        (1.5, 1, "not a whole number"),
        (True, 1, "not a whole number"),
        (None, 1, "not a whole number"),
    ],
)
def test_parse_range_says_what_is_wrong(value, least, words):
    with pytest.raises(ValueError) as err:
        parse_range(value, least=least)
    assert words in str(err.value)


def test_missing_required_name(tmp_path):
    path = write_spec(tmp_path, "data: {source: digits}\n")
    with pytest.raises(SpecError, match=r"name: required field is missing"):
        load_spec(SupervisedSpec, path)


def test_missing_spec_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(SupervisedSpec, tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(SupervisedSpec, write_spec(tmp_path, "name: [unclosed\n"))
    with pytest.raises(SpecError, match="mapping"):
        load_spec(SupervisedSpec, write_spec(tmp_path, "- a\n- b\n"))


def test_overrides_parse_yaml_values_and_nest():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=true", "d.e=[1, 2]", "f=x"])
    assert data == {"a": {"b": 2, "c": True}, "d": {"e": [1, 2]}, "f": "x"}
    with pytest.raises(SpecError, match="KEY=VALUE"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(SpecError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_flatten_for_params():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": []}) == {"a.b": 1, "a.c.d": 2, "e": []}


def test_a_config_of_several_families_is_described_once():
    """RNNConfig is the config of both lstm and gru: `raymaas explain supervised` lists its
    fields once, under a section naming both tags, not once per tag."""
    from raymaas.supervised.models import FAMILIES

    names = [name for name, _, _ in describe_fields(SupervisedSpec)]
    assert len(names) == len(set(names))
    assert "model (lstm | gru)" in names and "model (lstm)" not in names and "model (gru)" not in names
    assert [n for n in names if n.endswith(".hidden_size")] == ["model (lstm | gru).hidden_size"]
    assert "model (lstm | gru).num_layers" in names and "model (mlp).hidden_sizes" in names
    # a section per config, each tag (the families and factory) named by exactly one of them
    sections = [
        n.removeprefix("model (").removesuffix(")") for n in names if n.startswith("model (") and n.endswith(")")
    ]
    assert sorted(tag for section in sections for tag in section.split(" | ")) == sorted([*FAMILIES, "factory"])
    assert len(sections) == len({family.config for family in FAMILIES.values()}) + 1


def test_file_source_label_column_checked_before_ray(tmp_path):
    # two rows of each class: a class needs one in each split (test_data_checks)
    frame = pd.DataFrame({"x1": [0.1, 0.2, 0.3, 0.4], "x2": [1.0, 2.0, 3.0, 4.0], "target": [0, 1, 0, 1]})
    frame.to_parquet(tmp_path / "rows.parquet")
    frame.to_csv(tmp_path / "rows.csv", index=False)
    for name in ("rows.parquet", "rows.csv"):
        source = str(tmp_path / name)
        spec = load_spec(SupervisedSpec, DEBUG_SPEC, [f"data.source={source}", "data.label_column=target"])
        assert spec.data.format == name.split(".")[1]
        with pytest.raises(SpecError, match="label_column 'label' is not a column"):
            load_spec(SupervisedSpec, DEBUG_SPEC, [f"data.source={source}"])
    with pytest.raises(SpecError, match=r"feature_columns \['x9'\]"):
        load_spec(
            SupervisedSpec,
            DEBUG_SPEC,
            [f"data.source={tmp_path / 'rows.csv'}", "data.label_column=target", "data.feature_columns=[x1, x9]"],
        )


def test_invalid_spec_exits_2_and_creates_no_run(tmp_path):
    """The job entrypoint: exit code 2, the field in the message, and no MLflow store touched."""
    env = {**os.environ, "RAYMAAS_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.supervised", str(DEBUG_SPEC), "--set", "model.name=transformer"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "model.name: unknown model 'transformer'" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "ray_results").exists()


def test_regression_specs_and_the_gate_direction():
    from raymaas.kinds import get_kind
    from raymaas.rl.job import RLSpec

    kind = get_kind("supervised")
    for name in ("diabetes_mlp", "diabetes_debug"):
        spec = load_spec(SupervisedSpec, REPO / "jobs" / "specs" / f"{name}.yaml")
        assert spec.task == "regression" and spec.train_loop_config.loss_name("regression") == "mse"
        gate = spec.gate(kind)
        assert (gate.metric, gate.higher_is_better) == ("val_rmse", False)
    gate = load_spec(SupervisedSpec, DEBUG_SPEC).gate(kind)
    assert (gate.metric, gate.higher_is_better) == ("val_accuracy", True)
    for metric, higher in [("val_log_loss", False), ("val_f1_macro", True), ("val_loss", False)]:
        assert (
            load_spec(SupervisedSpec, DEBUG_SPEC, [f"mlflow.gate_metric={metric}"]).gate(kind).higher_is_better
            is higher
        )
    spec = load_spec(SupervisedSpec, REPO / "jobs/specs/diabetes_debug.yaml", ["mlflow.gate_metric=val_r2"])
    assert spec.gate(kind).higher_is_better is True
    assert (
        load_spec(RLSpec, REPO / "jobs/specs/cartpole_ppo_debug.yaml").gate(get_kind("rl")).metric == "eval_return_mean"
    )


@pytest.mark.parametrize(
    "spec, override, words",
    [
        (DEBUG_SPEC, "task=regression", "'digits' is a data set for classification, not regression"),
        (REPO / "jobs/specs/diabetes_debug.yaml", "task=classification", "for regression, not classification"),
        (DEBUG_SPEC, "train_loop_config.loss=mse", "'mse' is not a classification loss"),
        (REPO / "jobs/specs/diabetes_debug.yaml", "train_loop_config.loss=cross_entropy", "not a regression loss"),
        (REPO / "jobs/specs/diabetes_debug.yaml", "train_loop_config.class_weight=balanced", "for classification"),
        (DEBUG_SPEC, "mlflow.gate_metric=val_rmse", "a classification job logs val_loss, val_accuracy"),
        (REPO / "jobs/specs/diabetes_debug.yaml", "mlflow.gate_metric=val_accuracy", "regression job logs"),
        (DEBUG_SPEC, "model.name=linea", "unknown model 'linea': use one of linear, mlp, cnn"),
    ],
)
def test_task_mismatches_are_named(spec, override, words):
    with pytest.raises(SpecError) as err:
        load_spec(SupervisedSpec, spec, [override])
    assert words in str(err.value), str(err.value)


def test_rl_gate_metric_is_its_evaluation():
    from raymaas.rl.job import RLSpec

    with pytest.raises(SpecError) as err:
        load_spec(RLSpec, REPO / "jobs/specs/cartpole_ppo_debug.yaml", ["mlflow.gate_metric=val_rmse"])
    assert "eval_return_mean" in str(err.value)


def test_label_list_is_for_regression(tmp_path):
    path = tmp_path / "rows.csv"
    pd.DataFrame({"a": [1.0, 2.0], "y1": [0.5, 0.1], "y2": [3.0, 4.0]}).to_csv(path, index=False)
    spec = load_spec(
        SupervisedSpec, DEBUG_SPEC, [f"data.source={path}", "data.label_column=[y1, y2]", "task=regression"]
    )
    assert spec.data.label_columns == ["y1", "y2"]
    with pytest.raises(SpecError) as err:
        load_spec(SupervisedSpec, DEBUG_SPEC, [f"data.source={path}", "data.label_column=[y1, y2]"])
    assert "classification takes one label column" in str(err.value)
    with pytest.raises(SpecError) as err:
        load_spec(SupervisedSpec, DEBUG_SPEC, [f"data.source={path}", "data.label_column=[y1, y3]", "task=regression"])
    assert "label_column 'y3' is not a column" in str(err.value)
