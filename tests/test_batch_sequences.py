"""Batch scoring of sequence models: list columns feeding a tensor [-1, length, channels].

In-process and fast: no Ray, no MLflow store. The signature is built as a sequence model logs
it, the input is a small Parquet file, the plan is made as `raymaas predict` makes it before Ray
starts, and `score_table` (what each model actor runs) is called with a plain Python model
that keeps what it was given.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from raymaas.batch.plan import PATH_COLUMN, plan_input
from raymaas.batch.scorer import ERROR_COLUMN, INPUT_COLUMN, score_table
from raymaas.specs import SpecError

LENGTH = 24


def signature(*shape: int) -> ModelSignature:
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]))


def write(tmp_path, table: pa.Table, name: str = "in.parquet"):
    path = tmp_path / name
    pq.write_table(table, path)
    return path


class Model:
    """A pyfunc stand-in: each row's sum, keeping every input it was given."""

    def __init__(self):
        self.inputs: list[np.ndarray] = []

    def __call__(self, x):
        self.inputs.append(x)
        return x.reshape(len(x), -1).sum(axis=1)


def score(plan, table: pa.Table, passthrough=("id",)):
    """The plan's single unit, scored as an actor scores a batch of it (with Ray Data's path column)."""
    [unit] = plan.units
    batch = table.append_column(PATH_COLUMN, pa.array([unit.path] * table.num_rows, pa.string()))
    model = Model()
    out = score_table(batch, model, plan.features, [unit.path], list(passthrough), "prediction")
    return out, model


def steps(rng, n: int, channels: int) -> np.ndarray:
    return rng.normal(size=(n, LENGTH, channels)).astype(np.float32)


def test_a_column_of_lists_of_lists_is_steps_by_channels(tmp_path):
    x = steps(np.random.default_rng(0), 6, 2)
    table = pa.table({"id": np.arange(6), "signal": x.tolist()})
    plan = plan_input(str(write(tmp_path, table)), "auto", signature(LENGTH, 2), ["id"], None, "prediction")

    features = plan.features
    assert (features.kind, features.columns, features.column_shape) == ("sequence", ("signal",), (LENGTH, 2))
    assert features.describe() == "tensor float32 [-1, 24, 2] from list column 'signal'"
    out, model = score(plan, pq.read_table(plan.units[0].path))

    [given] = model.inputs
    assert given.dtype == np.float32 and given.shape == (6, LENGTH, 2)
    np.testing.assert_array_equal(given, x)
    np.testing.assert_allclose(out.column("prediction").to_numpy(), x.sum(axis=(1, 2)), rtol=1e-5)
    assert out.column(ERROR_COLUMN).null_count == 6
    assert out.column("id").to_pylist() == list(range(6))


def test_list_columns_are_the_channels_in_the_order_named(tmp_path):
    rng = np.random.default_rng(1)
    a, b = steps(rng, 5, 1)[..., 0], steps(rng, 5, 1)[..., 0]
    # int64 steps feed a float32 tensor, as integer scalar columns do
    table = pa.table({"id": np.arange(5), "a": a.tolist(), "b": np.round(b * 10).astype(np.int64).tolist()})
    plan = plan_input(str(write(tmp_path, table)), "auto", signature(LENGTH, 2), ["id"], ["b", "a"], "prediction")

    assert (plan.features.columns, plan.features.column_shape) == (("b", "a"), (LENGTH,))
    assert plan.features.describe() == "tensor float32 [-1, 24, 2] from 2 list columns, one channel each"
    _, model = score(plan, table)

    [given] = model.inputs
    assert given.dtype == np.float32 and given.shape == (5, LENGTH, 2)
    np.testing.assert_array_equal(given[..., 0], np.round(b * 10))
    np.testing.assert_array_equal(given[..., 1], a)


@pytest.mark.parametrize("shape", [(64, 1), (64,)], ids=["64x1", "64"])
def test_one_list_column_of_numbers_is_one_channel(shape, tmp_path):
    x = np.random.default_rng(2).normal(size=(4, 64)).astype(np.float32)
    table = pa.table({"id": np.arange(4), "ecg": pa.array(x.tolist(), pa.large_list(pa.float32()))})
    plan = plan_input(str(write(tmp_path, table)), "auto", signature(*shape), ["id"], None, "prediction")

    assert (plan.features.kind, plan.features.column_shape) == ("sequence", (64,))
    _, model = score(plan, table)

    [given] = model.inputs
    assert given.dtype == np.float32 and given.shape == (4, *shape)
    np.testing.assert_array_equal(given.reshape(4, 64), x)


def test_bad_sequences_are_rejected_with_why_and_the_rest_scored(tmp_path):
    x = steps(np.random.default_rng(3), 10, 2)
    rows: list = x.tolist()
    rows[1] = rows[1][:-1]  # 23 steps
    rows[3][5][1] = None  # a null value
    rows[4][0][0] = float("nan")
    rows[6] = None  # no sequence
    rows[7][2] = [1.0, 2.0, 3.0]  # a step of three channels
    rows[8][9] = None  # a null step
    table = pa.table({"id": np.arange(10), "signal": pa.array(rows, pa.list_(pa.list_(pa.float64())))})
    plan = plan_input(str(write(tmp_path, table)), "auto", signature(LENGTH, 2), ["id"], None, "prediction")
    # Sliced and in two chunks, as Ray Data hands over parts of blocks: offsets must not matter.
    batch = pa.concat_tables([table.slice(0, 3), table.slice(3)])

    out, model = score(plan, batch)

    errors = out.column(ERROR_COLUMN).to_pylist()
    assert {i: e for i, e in enumerate(errors) if e} == {
        1: "column 'signal': 23 steps, the model takes 24",
        3: "column 'signal': step 5, channel 1 is null",
        4: "column 'signal': step 0, channel 0 is NaN",
        6: "null in column 'signal'",
        7: "column 'signal': step 2 has 3 channels, the model takes 2",
        8: "column 'signal': step 9 is null",
    }
    good = [0, 2, 5, 9]
    [given] = model.inputs
    assert given.dtype == np.float32 and given.shape == (len(good), LENGTH, 2)
    np.testing.assert_array_equal(given, x[good])
    prediction = out.column("prediction")
    assert prediction.null_count == 6
    np.testing.assert_allclose(
        np.asarray(prediction.to_pylist())[good].astype(float), x[good].sum(axis=(1, 2)), rtol=1e-5
    )
    assert json.loads(out.column(INPUT_COLUMN)[1].as_py())["signal"] == rows[1]


def test_bad_channel_rows_are_rejected_per_column(tmp_path):
    rng = np.random.default_rng(4)
    a, b = steps(rng, 4, 1)[..., 0].tolist(), steps(rng, 4, 1)[..., 0].tolist()
    b[0] = b[0][:-1]
    a[2][3] = None
    table = pa.table({"id": np.arange(4), "a": a, "b": b})
    plan = plan_input(str(write(tmp_path, table)), "auto", signature(LENGTH, 2), ["id"], None, "prediction")

    out, model = score(plan, table)

    assert out.column(ERROR_COLUMN).to_pylist() == [
        "column 'b': 23 steps, the model takes 24",
        None,
        "column 'a': step 3 is null",
        None,
    ]
    [given] = model.inputs
    assert given.shape == (2, LENGTH, 2)
    np.testing.assert_array_equal(given, np.stack([[a[1], a[3]], [b[1], b[3]]], axis=-1).astype(np.float32))


def sequences(n: int = 3, length: int = LENGTH) -> list:
    return np.zeros((n, length)).tolist()


@pytest.mark.parametrize(
    "columns, feature_columns, message",
    [
        (
            {"a": sequences(), "b": sequences(), "c": sequences()},
            None,
            r"\[-1, 24, 2\], built from one column of lists of lists \(24 steps x 2 channels\) or 2 list columns of "
            r"24 steps, one a channel; but .* gives 3 list columns \('a', 'b', 'c'\) as features",
        ),
        (
            {"a": sequences()},
            None,
            r"gives list column 'a' \(list<\w+: double>\) as features",
        ),
        (
            {"a": sequences(), "b": sequences(), "level": [1.0, 2.0, 3.0]},
            None,
            r"built from list columns or from scalar columns, not both: .* list column\(s\) 'a', 'b' and scalar "
            r"column\(s\) 'level' as features \(every column except the pass-through ones\)",
        ),
        (
            {"a": sequences(), "tag": [["x"] * LENGTH] * 3},
            ["a", "tag"],
            r"column 'tag' holds lists of string, not numbers the model takes as float32",
        ),
        (
            {"a": sequences(), "b": pa.array(sequences(length=23), pa.list_(pa.float64(), 23))},
            None,
            r"column 'b' is fixed_size_list<\w+: double>\[23\]: lists of exactly 23 values where the model takes 24",
        ),
    ],
    ids=["three-columns-two-channels", "one-channel-for-two", "mixed", "strings", "fixed-size-23"],
)
def test_list_columns_that_cannot_build_the_tensor_exit_2(columns, feature_columns, message, tmp_path):
    path = write(tmp_path, pa.table({"id": [1, 2, 3], **columns}))
    with pytest.raises(SpecError, match=message):
        plan_input(str(path), "auto", signature(LENGTH, 2), ["id"], feature_columns, "prediction")


def test_a_file_whose_sequence_column_is_not_lists_exits_2(tmp_path):
    write(tmp_path, pa.table({"id": [1], "a": sequences(1), "b": sequences(1)}), "1.parquet")
    write(tmp_path, pa.table({"id": [2], "a": sequences(1), "b": [0.5]}), "2.parquet")
    with pytest.raises(SpecError, match=r"2.parquet: column 'b' is double, where the model needs lists of numbers"):
        plan_input(str(tmp_path), "auto", signature(LENGTH, 2), ["id"], None, "prediction")


def test_scalar_columns_still_build_a_tensor_by_count(tmp_path):
    table = pa.table({"id": [1, 2], **{f"x{j}": [float(j), -float(j)] for j in range(4)}})
    path = write(tmp_path, table)
    plan = plan_input(str(path), "auto", signature(2, 2), ["id"], None, "prediction")
    assert (plan.features.kind, plan.features.column_shape) == ("tensor", None)
    _, model = score(plan, table)
    np.testing.assert_array_equal(model.inputs[0], [[[0, 1], [2, 3]], [[0, -1], [-2, -3]]])
    with pytest.raises(SpecError, match=r"48 values a row, but .* gives 4 feature columns"):
        plan_input(str(path), "auto", signature(LENGTH, 2), ["id"], None, "prediction")
