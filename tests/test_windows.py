"""Windows cut from a time series (raymaas.supervised.windows): order, exact values, the split
by time, the naive forecast, and the errors. numpy and pandas only: no Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from raymaas.supervised.windows import WindowSpec, cut_windows


def series(n: int = 20) -> pd.DataFrame:
    """A series whose row i (in time) holds t=i, value=i and other=100+i: a value names its row."""
    t = np.arange(n)
    return pd.DataFrame({"t": t, "value": t.astype(float), "other": 100.0 + t})


def test_exact_windows_targets_and_split():
    w = cut_windows(series(20), "t", None, "value", WindowSpec(length=3, horizon=2, stride=2), 0.25)
    assert w.feature_columns == ["value", "other"]
    # 20 rows, 16 possible targets (rows 4..19): the last 4 (rows 16..19) are validation targets.
    # Training targets start at row 4 (window rows 0, 1, 2) and step by 2 while before row 16.
    assert w.y_train.tolist() == [4, 6, 8, 10, 12, 14]
    assert w.y_val.tolist() == [16, 18]
    assert w.x_train.shape == (6, 3, 2) and w.x_train.dtype == np.float32 and w.y_train.dtype == np.float32
    assert w.x_train[0].tolist() == [[0, 100], [1, 101], [2, 102]]
    assert w.x_train[-1][:, 0].tolist() == [10, 11, 12]
    # A validation window reads the rows before its target, across the boundary.
    assert w.x_val[:, :, 0].tolist() == [[12, 13, 14], [14, 15, 16]]
    assert w.naive_train.tolist() == [2, 4, 6, 8, 10, 12] and w.naive_val.tolist() == [14, 16]


def test_unsorted_rows_give_the_same_windows():
    frame = series(30)
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert not shuffled["t"].is_monotonic_increasing
    spec = WindowSpec(length=4, horizon=1, stride=3)
    a = cut_windows(frame, "t", ["value"], "value", spec, 0.3)
    b = cut_windows(shuffled, "t", ["value"], "value", spec, 0.3)
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x, y)


def test_ties_keep_the_files_order():
    frame = pd.DataFrame({"day": [2, 1, 1, 0, 2], "value": [40.0, 20.0, 30.0, 10.0, 50.0]})
    w = cut_windows(frame, "day", None, "value", WindowSpec(length=1), 0.25)
    assert w.x_train[:, 0, 0].tolist() + w.x_val[:, 0, 0].tolist() == [10, 20, 30, 40]
    assert w.y_train.tolist() + w.y_val.tolist() == [20, 30, 40, 50]


@pytest.mark.parametrize("length, horizon, stride, fraction", [(3, 2, 2, 0.25), (5, 1, 1, 0.2), (2, 4, 3, 0.5)])
def test_no_training_example_reaches_into_validation(length, horizon, stride, fraction):
    n = 40
    w = cut_windows(
        series(n), "t", ["value"], "value", WindowSpec(length=length, horizon=horizon, stride=stride), fraction
    )
    n_targets = n - length - horizon + 1
    boundary = n - max(1, round(fraction * n_targets))  # the first validation row
    assert w.x_train.max() < boundary and w.y_train.max() < boundary
    assert w.y_val.min() == boundary  # the validation targets are the last share in time
    assert w.y_val.max() > n - 1 - stride
    # every example's target lies horizon rows after its window's last row, which the naive forecast is
    for x, y, naive in ((w.x_train, w.y_train, w.naive_train), (w.x_val, w.y_val, w.naive_val)):
        np.testing.assert_array_equal(naive, x[:, -1, 0])
        np.testing.assert_array_equal(y, naive + horizon)
        np.testing.assert_array_equal(np.diff(y), stride)


def test_naive_forecast_is_the_label_at_the_windows_last_row():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"t": np.arange(50), "load": rng.normal(size=50), "temp": rng.normal(size=50)})
    w = cut_windows(frame, "t", ["temp", "load"], "load", WindowSpec(length=6, horizon=3), 0.2)
    np.testing.assert_array_equal(w.naive_train, w.x_train[:, -1, 1])
    np.testing.assert_array_equal(w.naive_val, w.x_val[:, -1, 1])
    assert len(w.y_train) + len(w.y_val) == 50 - 6 - 3 + 1 and len(w.y_val) == 8


def test_the_label_can_be_left_out_of_the_features():
    w = cut_windows(series(12), "t", ["other"], "value", WindowSpec(length=2), 0.25)
    assert w.feature_columns == ["other"] and w.x_train.shape[2] == 1
    np.testing.assert_array_equal(w.naive_train, w.x_train[:, -1, 0] - 100)


def _with(**columns) -> pd.DataFrame:
    frame = series(10)
    for name, values in columns.items():
        frame[name] = values
    return frame


@pytest.mark.parametrize(
    "frame, kwargs, words",
    [
        (series(10), {"window": WindowSpec(length=8, horizon=3)}, "has 10 rows; one window needs length + horizon"),
        (series(10), {"window": WindowSpec(length=8, horizon=2)}, "too few for a training and a validation example"),
        (_with(city=["a"] * 10), {"feature_columns": ["value", "city"]}, "feature column 'city' is not numeric"),
        (_with(value=["a"] * 10), {}, "label column 'value' is not numeric"),
        (_with(other=[1.0, None, None] + [1.0] * 7), {}, "feature column 'other' has 2 missing value(s)"),
        (_with(value=[None] + [1.0] * 9), {}, "label column 'value' has 1 missing value(s)"),
        (series(10), {"order_by": "time"}, "order_by column 'time' is not in the data"),
        (_with(t=[None] + list(range(9))), {}, "order_by column 't' has 1 missing value(s)"),
        (series(10), {"label_column": "price"}, "label column 'price' is not in the data"),
        (series(10), {"feature_columns": ["value", "rain"]}, "feature column(s) not in the data: 'rain'"),
        (series(10), {"validation_fraction": 0.0}, "validation_fraction must be between 0 and 1"),
    ],
)
def test_each_error_names_the_problem(frame, kwargs, words):
    arguments = {
        "order_by": "t",
        "feature_columns": None,
        "label_column": "value",
        "window": WindowSpec(length=3),
        "validation_fraction": 0.2,
    } | kwargs
    with pytest.raises(ValueError) as err:
        cut_windows(frame, **arguments)
    assert words in str(err.value)


def test_window_spec_bounds():
    assert WindowSpec(length=5).model_dump() == {"length": 5, "horizon": 1, "stride": 1}
    for bad in ({}, {"length": 0}, {"length": 2, "horizon": 0}, {"length": 2, "stride": 0}, {"length": 2, "lag": 1}):
        with pytest.raises(ValidationError):
            WindowSpec(**bad)
