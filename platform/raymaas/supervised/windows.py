"""Training examples cut from an ordered time series: windows of consecutive rows and the label
some rows after each, split by time. Pure numpy and pandas, no Ray: what a job calls once the
series is read."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from pydantic import Field

from raymaas.specs import SpecModel


class WindowSpec(SpecModel):
    """How a series becomes examples: `length` rows of history, the label `horizon` rows later."""

    length: int = Field(..., ge=1, description="rows of history in one example (the window)")
    horizon: int = Field(
        1, ge=1, description="rows between a window's last row and its target row (1: the next row's label)"
    )
    stride: int = Field(1, ge=1, description="rows between the starts of consecutive windows, within each split")


class Windows(NamedTuple):
    """Examples of both splits: x [n, length, channels] float32 and y [n] float32; naive_* is
    each example's naive forecast (the label at the window's last row), for val_rmse_naive."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    feature_columns: list[str]
    naive_train: np.ndarray
    naive_val: np.ndarray


def cut_windows(
    frame,
    order_by: str,
    feature_columns: list[str] | None,
    label_column: str,
    window: WindowSpec,
    validation_fraction: float,
) -> Windows:
    """Windows of `frame`'s rows in `order_by` order, the last share in time held out for validation.

    Rows are sorted by order_by with a stable sort (ties keep the frame's order). An example is
    `window.length` consecutive rows of the feature columns (default: every numeric column but
    order_by, the label's own past included) and its target the label `window.horizon` rows
    after the window's last row. Of the T possible targets, the last
    max(1, round(validation_fraction * T)) are validation targets; the first of their rows is
    the split boundary. The split is by target row: a training example's target, and so its
    whole window, lies before the boundary; a validation example's target lies at or after it,
    and its window may read rows before the boundary, as a forecaster in use reads the latest
    history. So a window that straddles the boundary is a validation example, none is dropped,
    and no validation label is ever a training input or target. Within each split, windows start
    at the split's first example and step by `window.stride` rows.

    Raises ValueError naming the problem: a missing column, a non-numeric or null feature or
    label column, a null order_by, or a series too short for one example in each split.
    """
    import pandas as pd

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), not {validation_fraction}")
    if order_by not in frame.columns:
        raise ValueError(
            f"order_by column {order_by!r} is not in the data (columns: {', '.join(map(str, frame.columns))})"
        )
    if label_column not in frame.columns:
        raise ValueError(f"label column {label_column!r} is not in the data")
    if feature_columns is None:
        feature_columns = [c for c in frame.columns if c != order_by and pd.api.types.is_numeric_dtype(frame[c])]
        if not feature_columns:
            raise ValueError(f"no numeric column besides order_by {order_by!r} to use as a feature")
    else:
        feature_columns = list(feature_columns)
        if not feature_columns:
            raise ValueError("feature_columns is empty: name at least one, or leave it unset for every numeric column")
        missing = [c for c in feature_columns if c not in frame.columns]
        if missing:
            raise ValueError(f"feature column(s) not in the data: {', '.join(map(repr, missing))}")
    for column in dict.fromkeys([*feature_columns, label_column]):
        role = "label" if column == label_column else "feature"
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise ValueError(f"{role} column {column!r} is not numeric (dtype {frame[column].dtype})")
        nulls = int(frame[column].isna().sum())
        if nulls:
            raise ValueError(f"{role} column {column!r} has {nulls} missing value(s)")
    nulls = int(frame[order_by].isna().sum())
    if nulls:
        raise ValueError(f"order_by column {order_by!r} has {nulls} missing value(s): rows without a place in time")

    n_rows = len(frame)
    length, horizon = window.length, window.horizon
    if n_rows < length + horizon:
        raise ValueError(
            f"the series has {n_rows} rows; one window needs length + horizon = {length} + {horizon} = "
            f"{length + horizon} rows"
        )
    n_targets = n_rows - length - horizon + 1
    n_val = max(1, round(validation_fraction * n_targets))
    if n_val >= n_targets:
        raise ValueError(
            f"the series has {n_rows} rows, {n_targets} target(s) for windows of length {length} and horizon "
            f"{horizon}: too few for a training and a validation example (at least {length + horizon + 1} rows)"
        )

    ordered = frame.sort_values(order_by, kind="stable")
    features = ordered[feature_columns].to_numpy(dtype=np.float32)
    label = ordered[label_column].to_numpy(dtype=np.float32)

    # Target rows: the first possible one, the boundary (first validation target), the end.
    first_target = length - 1 + horizon
    boundary = n_rows - n_val
    train_targets = np.arange(first_target, boundary, window.stride)
    val_targets = np.arange(boundary, n_rows, window.stride)

    def examples(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        last = targets - horizon
        rows = last[:, None] + np.arange(1 - length, 1)  # [n, length]: each window's rows in order
        return features[rows], label[targets], label[last]

    x_train, y_train, naive_train = examples(train_targets)
    x_val, y_val, naive_val = examples(val_targets)
    return Windows(x_train, y_train, x_val, y_val, feature_columns, naive_train, naive_val)
