"""Data that cannot train is refused with the spec, before Ray starts or an MLflow run exists:
the message names the file, the column and the count (raymaas.supervised.checks). No Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DEBUG_SPEC, REPO
from raymaas.specs import SpecError, load_spec
from raymaas.supervised import SupervisedSpec
from raymaas.supervised.checks import scan_table

REGRESSION_SPEC = REPO / "jobs/specs/diabetes_debug.yaml"


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "f0": rng.normal(size=n),
            "f1": rng.integers(0, 5, n),
            "flag": rng.random(n) < 0.5,
            "y": rng.integers(0, 3, n),
        }
    )


def _write(frame: pd.DataFrame, folder, fmt: str, name: str = "rows") -> str:
    path = folder / f"{name}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


def _load(path, *overrides, spec=DEBUG_SPEC, label="y") -> SupervisedSpec:
    return load_spec(SupervisedSpec, spec, [f"data.source={path}", f"data.label_column={label}", *overrides])


def _refused(path, *overrides, **kwargs) -> str:
    with pytest.raises(SpecError) as err:
        _load(path, *overrides, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_clean_table_passes(tmp_path, fmt):
    path = _write(_frame(), tmp_path, fmt)
    spec = _load(path)
    assert spec.data.format == fmt and spec.data.impute == "none"
    facts = scan_table(path, fmt, ["y"])
    assert facts.rows == 400 and set(facts.classes) == {0, 1, 2}
    assert {c: f.kind for c, f in facts.columns.items()} == {
        "f0": "number",
        "f1": "number",
        "flag": "boolean",
        "y": "number",
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_missing_feature_values_are_counted_per_column(tmp_path, fmt):
    frame = _frame().astype({"f1": "Int64"})
    frame.loc[[3, 7], "f0"] = np.nan
    frame.loc[5, "f1"] = None
    path = _write(frame, tmp_path, fmt)
    message = _refused(path)
    assert f"feature column 'f0' has 2 missing values (null or NaN) in {path}" in message, message
    assert f"feature column 'f1' has 1 missing value (null or NaN) in {path}" in message, message
    assert "data.impute" in message
    # the columns it names are the ones to leave out
    _load(path, "data.feature_columns=[flag]")


def test_impute_takes_missing_numbers(tmp_path):
    frame = _frame()
    frame.loc[[3, 4], "f0"] = np.nan
    path = _write(frame, tmp_path, "parquet")
    for value in ("mean", "median", "zero"):
        assert _load(path, f"data.impute={value}").data.impute == value
    assert "data.impute: Input should be 'none', 'mean', 'median' or 'zero'" in _refused(path, "data.impute=mode")
    assert "feature column 'f0' has 2 missing values" in _refused(path, "data.impute=none")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_missing_targets_are_refused(tmp_path, fmt):
    frame = _frame().astype({"y": "float64"})
    frame.loc[[9, 10, 11], "y"] = np.nan
    path = _write(frame, tmp_path, fmt)
    for spec in (DEBUG_SPEC, REGRESSION_SPEC):
        message = _refused(path, spec=spec)
        assert f"label_column 'y' has 3 missing values (null or NaN) in {path}" in message, message


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_empty_file_and_an_empty_column(tmp_path, fmt):
    path = _write(_frame().head(0), tmp_path, fmt, "empty")
    assert f"{path} has no rows" in _refused(path)
    frame = _frame().assign(f0=np.nan)
    path = _write(frame, tmp_path, fmt, "no-f0")
    message = _refused(path)
    assert f"feature column 'f0' of {path} is empty: all 400 values are null or NaN" in message, message


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_text_and_listed_columns_are_categories_whose_nulls_pass(tmp_path, fmt):
    frame = _frame().assign(city=lambda f: np.where(f.f1 > 2, "Oslo", "Lima"), shop=lambda f: f.f1.map(str) + "x")
    frame.loc[[1, 2], "city"] = None
    frame["f1"] = frame["f1"].astype("float64")
    frame.loc[[5], "f1"] = np.nan
    path = _write(frame, tmp_path, fmt)
    # a null in a text column takes the unknown slot; one in a number column is refused, unless
    # the column is listed as categorical
    message = _refused(path)
    assert "feature column 'f1' has 1 missing value" in message and "city" not in message, message
    assert _load(path, "data.categorical_columns=[f1]").data.categorical_columns == ["f1"]
    assert "categorical_columns ['nope'] are not feature columns" in _refused(path, "data.categorical_columns=[nope]")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_regression_target_is_a_number(tmp_path, fmt):
    frame = _frame().assign(y=lambda f: np.where(f.f1 > 2, "high", "low"))
    path = _write(frame, tmp_path, fmt)
    message = _refused(path, spec=REGRESSION_SPEC)
    assert f"label_column 'y' of {path} holds string: a regression target is a number" in message, message
    _load(path)  # the same labels are classes


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_each_class_needs_two_rows(tmp_path, fmt):
    frame = _frame().assign(y=lambda f: np.where(f.f1 > 2, "spam", "ham"))
    frame.loc[0, "y"] = "phish"
    path = _write(frame, tmp_path, fmt, "mail")
    message = _refused(path)
    assert (
        f"label_column 'y' of {path}: 1 of its 3 classes has fewer than 2 rows ('phish': 1 row), so it cannot be "
        "in both the training and the validation split"
    ) in message, message
    path = _write(frame.assign(y="ham"), tmp_path, fmt, "one-class")
    assert f"label_column 'y' of {path} holds 1 class ('ham'): classification needs 2 or more" in _refused(path)
    # a continuous target taken for classes: every value a class of one row
    path = _write(frame.assign(y=np.linspace(0, 1, len(frame))), tmp_path, fmt, "continuous")
    message = _refused(path)
    assert "400 of its 400 classes have fewer than 2 rows" in message and "set task: regression" in message
    _load(path, spec=REGRESSION_SPEC)


def test_a_csv_column_of_numbers_and_some_text(tmp_path):
    frame = _frame().astype({"f0": object})
    frame.loc[[10, 20, 30], "f0"] = ["oops", "n.a.", "oops"]
    path = _write(frame, tmp_path, "csv")
    message = _refused(path)
    assert (
        f"feature column 'f0' mixes numbers and text in {path}: 3 of 400 values are not a number (e.g. 'oops', 'n.a.')"
    ) in message, message
    # pyarrow's null spellings are missing values, not text
    frame.loc[[10, 20, 30], "f0"] = ["NA", "", "null"]
    path = _write(frame, tmp_path, "csv", "nulls")
    assert "feature column 'f0' has 3 missing values (null or NaN)" in _refused(path)


def test_a_csv_column_whose_first_rows_fix_its_type(tmp_path):
    """Ray Data's read_csv takes a column's type from a file's first 1 MiB and fails on a later
    value that does not fit it, used column or not: refused before Ray, with the row's value."""
    n = 120_000  # about 1.9 MB of CSV: the odd values are past the first block
    frame = pd.DataFrame({"f0": np.arange(n), "f1": np.arange(n), "y": np.arange(n) % 2}).astype({"f0": object})
    frame.loc[[100_000, 110_000], "f0"] = [1.5, 2.5]
    path = _write(frame, tmp_path, "csv")
    message = _refused(path)
    assert (
        f"feature column 'f0' of {path} reads as int64 in the file's first rows, but 2 later values are not "
        "int64 (e.g. '1.5', '2.5')"
    ) in message, message
    message = _refused(path, "data.feature_columns=[f1]")
    assert "column 'f0'" in message and "reads every column, used or not" in message, message


def test_a_parquet_folder_whose_files_disagree(tmp_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    frame = _frame()
    for i in range(3):
        part = frame.iloc[i * 100 : (i + 1) * 100]
        if i == 2:
            part = part.astype({"f1": str})
        part.to_parquet(folder / f"part-{i}.parquet", index=False)
    frame.iloc[300:].drop(columns="flag").to_parquet(folder / "part-3.parquet", index=False)
    message = _refused(folder)
    assert (
        f"feature column 'f1' has different types in the files of {folder}: number in part-0.parquet, "
        "part-1.parquet, part-3.parquet; string in part-2.parquet"
    ) in message, message
    assert f"feature column 'flag' is missing in 1 of the 4 files of {folder}: part-3.parquet" in message, message
    # counts name each file
    frame.loc[[5, 150, 151], "f0"] = np.nan
    for i in range(4):
        frame.iloc[i * 100 : (i + 1) * 100].to_parquet(folder / f"part-{i}.parquet", index=False)
    message = _refused(folder)
    assert (
        f"feature column 'f0' has 3 missing values (null or NaN) in 2 of the 4 files of {folder} "
        "(part-0.parquet: 1, part-1.parquet: 2)"
    ) in message, message


def test_a_missing_label_column_names_the_file(tmp_path):
    for fmt in ("csv", "parquet"):
        path = _write(_frame(), tmp_path, fmt)
        assert f"label_column 'label' is not a column of {path}" in _refused(path, label="label")
    empty = tmp_path / "nothing.csv"
    empty.write_text("")
    assert f"cannot read {empty} as csv" in _refused(empty)


def test_parquet_statistics_spare_the_reads(tmp_path):
    """Integer and boolean columns' nulls come from the row groups' statistics; floats (NaN)
    and a classification label (its classes) are read."""
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(_frame(), preserve_index=False), path, row_group_size=100)
    facts = scan_table(path, "parquet", ["y"])
    assert facts.read == ("f0", "y")
    assert scan_table(path, "parquet", ["y"], task="regression").read == ("f0",)
    assert scan_table(path, "parquet", ["y"]) is facts  # not scanned again while the file is unchanged


def test_the_job_exits_2_before_ray_and_mlflow(tmp_path):
    """The entrypoint: exit code 2 and the file, column and count in the message, with no MLflow
    store and no Ray session made (no wall-clock bound: under load a bound is a flake, and what
    it meant, nothing started, is checked by what exists afterwards)."""
    frame = _frame()
    frame.loc[[1, 2], "f0"] = np.nan
    path = _write(frame, tmp_path, "parquet")
    home = tmp_path / "home"
    env = {**os.environ, "RAYMAAS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.supervised", str(DEBUG_SPEC), "--set", f"data.source={path}"]
        + ["--set", "data.label_column=y"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"feature column 'f0' has 2 missing values (null or NaN) in {path}" in proc.stderr, proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (home / "mlflow.db").exists()
    assert not (home / "ray_results").exists()
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_the_suites_own_tables_pass(tmp_path):
    """The tables test_supervised and test_feature_types train on pass the checks as they are."""
    from raymaas.supervised.data import make_synthetic
    from test_feature_types import _table
    from test_supervised import _two_targets

    x, y = make_synthetic(3000, 16, 3, seed=1)  # test_parquet_folder_and_user_model_factory
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(16)]).assign(species=y)
    folder = tmp_path / "rows"
    folder.mkdir()
    for i in range(3):
        frame.iloc[i * 1000 : (i + 1) * 1000].to_parquet(folder / f"part-{i}.parquet")
    assert _load(folder, label="species").data.format == "parquet"

    x, y = make_synthetic(1200, 8, 2, seed=3)  # test_named_classes_from_a_csv
    keep = (y == 1) | (np.arange(len(y)) % 4 == 0)
    x, y = x[keep], y[keep]
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)]).assign(kind=np.where(y == 1, "spam", "ham"))
    frame.to_csv(tmp_path / "mail.csv", index=False)
    _load(tmp_path / "mail.csv", "train_loop_config.class_weight=balanced", label="kind")

    x, _, noisy = _two_targets(1200, seed=0)  # test_multi_output_regression_...
    x.join(noisy).to_parquet(tmp_path / "two-targets.parquet", index=False)
    _load(tmp_path / "two-targets.parquet", spec=REGRESSION_SPEC, label="[price_eur, temperature_c]")

    table = _table()  # float, integer and boolean features (test_feature_types)
    table.to_csv(tmp_path / "typed.csv", index=False)
    table.to_parquet(tmp_path / "typed.parquet", index=False)
    for name in ("typed.csv", "typed.parquet"):
        spec = _load(tmp_path / name, label="kind")
        assert spec.data.feature_columns is None


def test_the_shipped_loans_specs_take_the_sample_table(tmp_path, capsys):
    """`raymaas sample-data loans FILE` writes the table jobs/specs/loans*.yaml train on; the
    specs pass the checks on it: its holes are imputed, its text and boolean columns are
    categories, term_months is one by the spec."""
    from raymaas.cli.main import main

    path = tmp_path / "loans.parquet"
    assert main(["sample-data", "loans", str(path), "--rows", "2000"]) == 0
    assert f"wrote 2000 rows of loans to {path}" in capsys.readouterr().out
    frame = pd.read_parquet(path)
    assert frame["income"].isna().any() and frame["region"].isna().any()
    for name in ("loans.yaml", "loans_debug.yaml"):
        spec = load_spec(SupervisedSpec, REPO / "jobs/specs" / name, [f"data.source={path}"])
        assert spec.data.impute == "median" and spec.data.categorical_columns == ["term_months"]
    message = _refused(path, "data.impute=none", spec=REPO / "jobs/specs/loans_debug.yaml", label="default")
    assert "feature column 'income' has" in message and "'region'" not in message, message
    assert main(["sample-data", "loans", str(tmp_path / "loans.txt")]) == 2
