"""A supervised job trained on a table declares each feature column as the table holds it: the
types read_files takes from the training rows (data.example_rows) are `double`, `long` and
`boolean` for float, integer and boolean columns, so the frame pandas reads of the same table
is one the logged signature takes (the job end to end: test_supervised). No Ray: the
rows are read with pyarrow, whose readers Ray Data's read_csv and read_parquet use, and turned
into pandas as Ray Data's to_pandas does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models.utils import _enforce_schema

from raymaas.modelcode.pyfunc import classifier_signature
from raymaas.supervised.data import DataSpec, example_rows, prepare_data


def _table(n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame(
        {
            "score": rng.normal(0.0, 2.0, n),
            "visits": rng.integers(0, 7, n),
            "member": rng.random(n) < 0.5,
            "kind": np.where(rng.random(n) < 0.5, "spam", "ham"),
        }
    )


def test_a_csvs_float_integer_and_boolean_columns_are_double_long_and_boolean(tmp_path):
    table = _table()
    path = tmp_path / "rows.csv"
    table.to_csv(path, index=False)
    features = ["score", "visits", "member"]

    rows = pcsv.read_csv(path).to_pandas()  # a block of Ray Data's read_csv, as to_pandas gives it
    example, types = example_rows(rows, features)
    assert types == {"score": "double", "visits": "long", "member": "boolean"}
    assert example.dtype == np.float32 and example.shape == (8, 3)
    np.testing.assert_array_equal(example, table[features].head(8).to_numpy(dtype=np.float32))

    # the frame pandas reads of the table is one the signature of those types takes, as it is
    signature = classifier_signature(len(features), features, column_types=types)
    read = pd.read_csv(path)[features]
    taken = _enforce_schema(read, signature.inputs)
    assert [str(t) for t in taken.dtypes] == ["float64", "int64", "bool"]
    # without them every column is double, which takes no int64 column
    with pytest.raises(MlflowException, match="visits"):
        _enforce_schema(read, classifier_signature(len(features), features).inputs)


def test_a_parquet_files_own_types(tmp_path):
    """float32 and int32 columns of a Parquet file (what pandas reads back of it) are double and long."""
    n = 20
    path = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table(
            {
                "f32": pa.array(np.linspace(0, 1, n), pa.float32()),
                "i32": pa.array(np.arange(n), pa.int32()),
                "i64": pa.array(np.arange(n), pa.int64()),
                "flag": pa.array(np.arange(n) % 2 == 0),
                "label": pa.array(np.arange(n) % 3),
            }
        ),
        path,
    )
    features = ["f32", "i32", "i64", "flag"]
    _, types = example_rows(pq.read_table(path).to_pandas(), features)
    assert types == {"f32": "double", "i32": "long", "i64": "long", "flag": "boolean"}
    signature = classifier_signature(len(features), features, column_types=types)
    _enforce_schema(pd.read_parquet(path)[features], signature.inputs)


def test_a_builtin_set_has_no_column_types():
    prepared = prepare_data(DataSpec(source="digits"), seed=0)
    assert prepared.feature_columns is None and prepared.column_types is None
