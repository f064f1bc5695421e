"""Sequence data for supervised jobs: the two shapes a recurrent (or any) model reads.

- **List columns** (Parquet): each feature column holds one fixed-length list per row, a value
  per step (one channel), or one column holds lists of lists (steps x channels). Several list
  columns of one length are the channels of one sequence, in the order named. Rows are split
  at random by the seed, as a table's are.
- **Windows** of an ordered time series (Parquet or CSV): `data.order_by` and `data.window`;
  raymaas.supervised.windows cuts them, the last share in time held out for validation.

Either way an example is a float32 array of shape (length, channels), and the model's served
input a [n, length, channels] tensor. The file is read whole, with pyarrow: by the spec's check
before Ray starts (every error named there: a ragged list column, a non-numeric or missing
step, a window longer than the series), then by the driver and by each worker, which cut the
same split from it (the seed and the order decide it), as each builds a built-in set's.
Pure pyarrow, numpy and pandas: no Ray.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

LISTS, WINDOWS = "lists", "windows"


class SequenceError(ValueError):
    """The file does not hold the sequences the spec names; the message names the column and row."""


class SequenceSplit(NamedTuple):
    """Both splits of a sequence source: x [n, length, channels] float32; y the label column's
    values as the file holds them ([n]; regression: float32 [n] per target column, stacked
    [n, k]); naive_*: each window's last known label (windows only, else None)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    channels: list[str]  # each channel's name: a column, or column[i] for a list-of-lists column
    naive_train: np.ndarray | None = None
    naive_val: np.ndarray | None = None


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def list_columns(source: str, fmt: str) -> list[str]:
    """The columns of a Parquet/CSV file or folder whose type is a list, from its schema."""
    import pyarrow.dataset as pads

    schema = pads.dataset(source, format=fmt).schema
    return [name for name, t in zip(schema.names, schema.types) if _is_list(t)]


def layout(spec) -> str | None:
    """Which sequence shape a data spec (raymaas.supervised.data.DataSpec of a file) names:
    WINDOWS (data.window), LISTS (a list column among the features), or None (a table)."""
    if spec.window is not None:
        return WINDOWS
    lists = list_columns(spec.source, spec.format)
    if not lists:
        return None
    if spec.feature_columns is None or any(c in lists for c in spec.feature_columns):
        return LISTS
    return None


def feature_columns(spec) -> list[str]:
    """A list-column source's feature columns: those named, else every list column but the labels."""
    if spec.feature_columns is not None:
        return list(spec.feature_columns)
    return [c for c in list_columns(spec.source, spec.format) if c not in spec.label_columns]


def read_sequences(spec, task: str, seed: int) -> SequenceSplit:
    """The splits of a sequence source: SequenceError naming any problem of the file."""
    import pyarrow.dataset as pads

    labels = spec.label_columns
    if task == "classification" and len(labels) > 1:
        raise SequenceError(f"label_column: classification takes one label column, not {len(labels)}")
    if spec.impute != "none" or spec.categorical_columns:
        raise SequenceError("data.impute and data.categorical_columns are for tables, not sequences")
    dataset = pads.dataset(spec.source, format=spec.format)
    if spec.window is not None:
        if len(labels) > 1:
            raise SequenceError("data.window: forecast one label column, not a list")
        return _windows(dataset.to_table().to_pandas(), spec, task)
    features = feature_columns(spec)
    table = dataset.to_table(columns=[*features, *labels])
    x = sequence_array(table, features)
    y = _labels(table, labels, task)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * spec.validation_fraction)))
    if n_val >= len(x):
        raise SequenceError(f"{len(x)} rows: too few for a training and a validation split")
    val, train = order[:n_val], order[n_val:]
    return SequenceSplit(x[train], y[train], x[val], y[val], _channel_names(table, features))


def sequence_array(table, columns: list[str]) -> np.ndarray:
    """[n, length, channels] float32 of a table's list columns: each a channel of lists of
    numbers, or one column of lists of lists (steps x channels). SequenceError naming the
    column (and the row, counted from 0 in the file's order) of a value that is not a list, a
    missing sequence or step, a ragged length, or a step that is not a number."""
    if not columns:
        raise SequenceError("no list column among the feature columns: a sequence source's features are list columns")
    parts = [_column_array(table, c) for c in columns]
    if len(parts) > 1:
        nested = [c for c, p in zip(columns, parts) if p.shape[2] > 1]
        if nested:
            raise SequenceError(
                f"feature column {nested[0]!r} holds lists of lists (steps x channels): it is the only feature "
                "column of such a source"
            )
        lengths = {c: p.shape[1] for c, p in zip(columns, parts)}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{c!r} {n} steps" for c, n in lengths.items())
            raise SequenceError(f"the feature columns' sequences differ in length ({shown}): channels need one length")
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


def _column_array(table, column: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    array = table.column(column).combine_chunks()
    if not _is_list(array.type):
        raise SequenceError(
            f"feature column {column!r} holds {array.type}, not lists: a sequence source's feature columns are all "
            "list columns (name them with data.feature_columns)"
        )
    n = len(array)
    if n == 0:
        raise SequenceError(f"feature column {column!r} has no rows")
    _no_nulls(array, column, "sequence")
    length = _one_length(array, column, "steps", lambda i: f"row {i}")
    values = array.flatten()
    channels = 1
    if _is_list(values.type):  # steps x channels
        _no_nulls(values, column, "step", per=length)
        channels = _one_length(values, column, "channels", lambda i: f"row {i // length}, step {i % length}")
        values = values.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type)):
        raise SequenceError(f"feature column {column!r}: its steps hold {values.type}, not numbers")
    missing = pc.is_null(values, nan_is_null=True).to_numpy(zero_copy_only=False)
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        where = f"row {first // (length * channels)}, step {first // channels % length}"
        raise SequenceError(
            f"feature column {column!r}: {int(missing.sum())} missing step value(s) (null or NaN), the first at {where}"
        )
    if length == 0 or channels == 0:
        raise SequenceError(f"feature column {column!r}: its sequences are empty")
    out = values.to_numpy(zero_copy_only=False).astype(np.float32)
    return out.reshape(n, length, channels)


def _no_nulls(array, column: str, what: str, per: int | None = None) -> None:
    if array.null_count:
        import pyarrow.compute as pc

        first = int(np.flatnonzero(pc.is_null(array).to_numpy(zero_copy_only=False))[0])
        where = f"row {first}" if per is None else f"row {first // per}, step {first % per}"
        raise SequenceError(f"feature column {column!r}: {array.null_count} missing {what}(s), the first at {where}")


def _one_length(array, column: str, what: str, where) -> int:
    """The one length of a list array's lists; SequenceError naming the first that differs."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    first = int(lengths[0])
    other = np.flatnonzero(lengths != first)
    if other.size:
        i = int(other[0])
        raise SequenceError(
            f"feature column {column!r} is ragged: {where(0)} has {first} {what}, {where(i)} has {int(lengths[i])} {what} "
            f"({other.size} of {len(lengths)} differ from the first); every sequence needs the same length"
        )
    return first


def _channel_names(table, columns: list[str]) -> list[str]:
    if len(columns) == 1:
        array = table.column(columns[0]).combine_chunks()
        if _is_list(array.flatten().type):
            width = len(array.flatten()[0]) if len(array) else 0
            return [f"{columns[0]}[{i}]" for i in range(width)]
    return list(columns)


def _labels(table, labels: list[str], task: str) -> np.ndarray:
    import pyarrow as pa

    for label in labels:
        column = table.column(label)
        if column.null_count:
            raise SequenceError(f"label_column {label!r} has {column.null_count} missing value(s)")
        if task == "regression" and not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise SequenceError(f"label_column {label!r} holds {column.type}: a regression target is a number")
    if task == "regression":
        y = np.stack([table.column(c).to_numpy().astype(np.float32) for c in labels], axis=1)
        if np.isnan(y).any():
            raise SequenceError(f"label_column {labels}: NaN targets")
        return y
    return table.column(labels[0]).to_numpy(zero_copy_only=False)


def _windows(frame, spec, task: str) -> SequenceSplit:
    import pandas as pd

    from raymaas.supervised.windows import cut_windows

    label = spec.label_columns[0]
    try:
        w = cut_windows(frame, spec.order_by, spec.feature_columns, label, spec.window, spec.validation_fraction)
    except ValueError as err:
        raise SequenceError(str(err)) from None
    y_train, y_val = w.y_train, w.y_val
    if task == "regression":
        y_train, y_val = y_train.reshape(-1, 1), y_val.reshape(-1, 1)
    elif pd.api.types.is_integer_dtype(frame[label]):  # class labels as the file holds them
        y_train, y_val = y_train.astype(np.int64), y_val.astype(np.int64)
    return SequenceSplit(w.x_train, y_train, w.x_val, y_val, w.feature_columns, w.naive_train, w.naive_val)


def describe(spec, split: SequenceSplit) -> str:
    """One line on what the source became, for the run's tags and the job's output."""
    _, length, channels = split.x_train.shape
    text = (
        f"{len(split.x_train)} training and {len(split.x_val)} validation sequences of {length} steps x "
        f"{channels} channel(s) ({', '.join(split.channels)})"
    )
    if spec.window is not None:
        w = spec.window
        text += f", windows of the series by {spec.order_by}: horizon {w.horizon}, stride {w.stride}"
    return text
