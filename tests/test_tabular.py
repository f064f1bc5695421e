"""Categorical columns and missing numbers (raymaas.modelcode.tabular): the encoding fitted on
training rows, the codes a served frame gets, and the exported first layer that widens them.
Pure numpy, pandas and torch: no Ray, no MLflow."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from raymaas.modelcode.tabular import (
    ColumnEncoding,
    TabularEncoding,
    TabularInput,
    embedding_dim,
    fit_encoding,
)

FEATURES = ["color", "price", "floors", "member", "rooms", "city"]


def _training() -> pd.DataFrame:
    price = np.arange(40, dtype=np.float64) ** 2
    price[:4] = np.nan
    return pd.DataFrame(
        {
            "color": ["red"] * 15 + ["green"] * 12 + ["blue"] * 12 + [None],  # blue, green tie
            "price": price,  # mean 560.5 > median 462.5
            "floors": np.arange(40, dtype=np.int64) % 4,
            "member": [True] * 25 + [False] * 15,
            "rooms": [3] * 20 + [2] * 10 + [1] * 10,  # integers, listed as categorical
            "city": [f"c{i:02d}" for i in range(40)],  # 40 > max_categories: embedded
        }
    )


def _fit(impute: str = "mean") -> TabularEncoding:
    return fit_encoding(_training(), FEATURES, categorical=["rooms"], impute=impute)


def test_each_column_is_numeric_or_categorical_with_its_signature_type_and_categories():
    enc = _fit()
    assert enc.names == FEATURES
    assert enc.categorical == ["color", "member", "rooms", "city"]
    assert enc.has_categorical
    by_name = {c.name: c for c in enc.columns}
    assert [by_name[n].dtype for n in FEATURES] == ["string", "double", "long", "boolean", "long", "string"]
    assert by_name["color"].categories == ["red", "blue", "green"]  # by count, ties by str; no null
    assert by_name["member"].categories == [True, False]
    assert by_name["rooms"].categories == [3, 1, 2]
    assert [type(v) for v in by_name["member"].categories + by_name["rooms"].categories] == [bool] * 2 + [int] * 3
    assert by_name["city"].categories == [f"c{i:02d}" for i in range(40)]
    price = _training()["price"]
    assert by_name["price"].mean == pytest.approx(price.mean())
    assert by_name["price"].std == pytest.approx(price.std())
    assert by_name["floors"].std == pytest.approx(_training()["floors"].std())


@pytest.mark.parametrize("impute", ["mean", "median", "zero", "none"])
def test_a_numeric_columns_fill_is_its_imputed_value_and_without_one_its_nulls_are_reported(impute):
    enc = _fit(impute)
    price = _training()["price"]
    expected = {"mean": price.mean(), "median": price.median(), "zero": 0.0, "none": None}[impute]
    fill = {c.name: c.fill for c in enc.columns}["price"]
    assert fill == (None if expected is None else pytest.approx(expected))
    served = pd.DataFrame({n: _training()[n].iloc[:6] for n in FEATURES})
    assert enc.nulls(served) == ({"price": 4} if impute == "none" else {})


def test_a_constant_or_all_null_numeric_column_has_std_1():
    frame = pd.DataFrame({"same": [2.0, 2.0, 2.0], "empty": [np.nan] * 3})
    enc = fit_encoding(frame, ["same", "empty"], impute="median")
    same, empty = enc.columns
    assert (same.mean, same.std, same.fill) == (2.0, 1.0, 2.0)
    assert (empty.mean, empty.std, empty.fill) == (0.0, 1.0, 0.0)


def test_encode_gives_numbers_and_codes_with_0_for_a_null_or_a_new_value():
    enc = _fit()
    served = pd.DataFrame(
        {
            "color": ["blue", "purple", None, "red", 1],
            "price": [4.0, np.nan, None, 9.0, 1.5],
            "floors": [0, 1, 2, 3, 4],
            # as a JSON request's nulls make a boolean column: Python and numpy bools, None
            "member": np.array([np.True_, False, None, True, np.False_], dtype=object),
            "rooms": [3.0, np.nan, 1.0, 2.0, 7.0],  # float: pandas' type for integers with a null
            "city": ["c05", "c39", "nowhere", None, "c00"],
        }
    )
    x = enc.encode(served)
    assert x.dtype == np.float32 and x.shape == (5, 6) and x.flags.c_contiguous
    np.testing.assert_array_equal(x[:, 0], [2, 0, 0, 1, 0])  # an integer is not a string
    np.testing.assert_array_equal(x[:, 1], [4.0, np.nan, np.nan, 9.0, 1.5])
    np.testing.assert_array_equal(x[:, 2], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(x[:, 3], [1, 2, 0, 1, 2])
    np.testing.assert_array_equal(x[:, 4], [1, 0, 2, 3, 0])
    np.testing.assert_array_equal(x[:, 5], [6, 40, 0, 0, 1])


def test_values_are_looked_up_as_the_column_holds_them():
    """True == 1 in Python: an integer category must not take a boolean, nor a string "1"."""
    frame = pd.DataFrame({"n": [1, 1, 0], "b": [True, True, False], "s": ["1", "1", "True"]})
    enc = fit_encoding(frame, ["n", "b", "s"], categorical=["n"])
    served = pd.DataFrame(
        {
            "n": np.array([True, "1", 1, np.int64(0), None], dtype=object),
            "b": np.array([1, "True", True, np.False_, None], dtype=object),
            "s": np.array([1, True, "1", "True", None], dtype=object),
        }
    )
    x = enc.encode(served)
    np.testing.assert_array_equal(x[:, 0], [0, 0, 1, 2, 0])
    np.testing.assert_array_equal(x[:, 1], [0, 0, 1, 2, 0])
    np.testing.assert_array_equal(x[:, 2], [0, 0, 1, 2, 0])
    # a served integer column (not object) and a nullable one
    assert enc.encode(served.assign(n=[0, 1, 1, 0, 5])).tolist()[0][0] == 2
    assert enc.encode(served.assign(n=pd.array([1, None, 0, 0, 0], dtype="Int64")))[:2, 0].tolist() == [1, 0]


def test_a_numeric_column_refuses_booleans_and_a_fractional_column_cannot_be_categorical():
    enc = _fit()
    served = _training().assign(price=True)
    with pytest.raises(ValueError, match="price"):
        enc.encode(served)
    with pytest.raises(ValueError, match="price"):
        fit_encoding(_training().assign(price=lambda f: f.price + 0.5), FEATURES, categorical=["price"])
    with pytest.raises(ValueError, match="missing"):
        fit_encoding(_training(), FEATURES, categorical=["missing"])


def test_the_encoding_survives_a_json_round_trip():
    enc = _fit()
    again = TabularEncoding.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert again == enc
    by_name = {c.name: c for c in again.columns}
    assert [type(v) for v in by_name["member"].categories] == [bool, bool]
    assert [type(v) for v in by_name["rooms"].categories] == [int] * 3
    served = _training()
    np.testing.assert_array_equal(again.encode(served), enc.encode(served))


def test_the_layer_fills_standardises_and_widens_each_column_in_order():
    enc = _fit("median")
    layer = TabularInput(enc)
    dim = embedding_dim(41)
    assert dim == 13
    assert layer.width == 4 + 1 + 1 + 3 + 4 + dim
    by_name = {c.name: c for c in enc.columns}
    served = pd.DataFrame(
        {
            "color": ["green", None],
            "price": [100.0, np.nan],
            "floors": [3, 0],
            "member": [False, True],
            "rooms": [2, 1],
            "city": ["c01", "unknown"],
        }
    )
    x = torch.from_numpy(enc.encode(served))
    x[1, 4] = 17.0  # a code out of range is unknown
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (2, layer.width) and out.dtype == torch.float32
    price, floors = by_name["price"], by_name["floors"]
    expected = [
        [0, 0, 0, 1],
        [(100.0 - price.mean) / price.std],
        [(3 - floors.mean) / floors.std],
        [0, 0, 1],
        [0, 0, 0, 1],
    ]
    torch.testing.assert_close(out[0, :13], torch.tensor(sum(expected, []), dtype=torch.float32))
    expected = [
        [1, 0, 0, 0],
        [(price.fill - price.mean) / price.std],
        [-floors.mean / floors.std],
        [0, 1, 0],
        [1, 0, 0, 0],
    ]
    torch.testing.assert_close(out[1, :13], torch.tensor(sum(expected, []), dtype=torch.float32))
    embedding = layer.encoders[-1]
    torch.testing.assert_close(out[:, 13:], embedding.weight[[2, 0]].detach())


def test_the_layer_exports_with_a_dynamic_batch_and_loads_to_the_same_outputs(tmp_path):
    enc = _fit()
    torch.manual_seed(0)
    net = nn.Sequential(TabularInput(enc), nn.Linear(TabularInput(enc).width, 3)).eval()
    frame = _training()
    x = torch.from_numpy(enc.encode(frame))
    program = torch.export.export(net, (x[:5],), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    path = tmp_path / "program.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x[:7]), net(x[:7]))
        torch.testing.assert_close(loaded(x), net(x))
    assert torch.isfinite(loaded(x)).all()  # the NaN prices were filled


def test_a_column_encoding_is_a_plain_dataclass():
    column = ColumnEncoding(name="n", kind="numeric", dtype="double")
    assert (column.fill, column.mean, column.std, column.categories) == (None, 0.0, 1.0, None)


def test_integer_categories_with_nulls_are_declared_double_and_decode_back():
    frame = _training()
    frame["rooms"] = frame["rooms"].astype("float64")
    frame.loc[0, "rooms"] = np.nan  # pandas reads an integer column with a null as float64
    enc = fit_encoding(frame, FEATURES, categorical=["rooms"], impute="median")
    rooms = enc.columns[FEATURES.index("rooms")]
    assert rooms.dtype == "double" and rooms.categories == [3, 1, 2]
    rows = enc.encode(frame.head(6))
    back = enc.decode(rows)
    assert list(back.columns) == FEATURES
    assert back["color"].tolist() == ["red"] * 6 and back["member"].tolist() == [True] * 6
    assert np.isnan(back["rooms"][0]) and back["rooms"][1:].tolist() == [3.0] * 5
    np.testing.assert_array_equal(enc.encode(back), rows)  # the same codes, and NaN where price had one


def test_integrated_gradients_attribute_a_category_change_to_its_column():
    """The one-hot blend gives each categorical column a gradient: Captum's attributions sum
    to the change of the output (completeness), the categorical columns' shares included. The
    path is linear between whole codes, so the midpoint rule with every code interval split
    evenly (here codes move by 1, 2, 20 and 30: 60 steps) integrates it exactly."""
    from captum.attr import IntegratedGradients

    enc = _fit()
    torch.manual_seed(0)
    model = nn.Sequential(TabularInput(enc), nn.Linear(TabularInput(enc).width, 1)).eval()
    x = torch.from_numpy(enc.encode(_training().iloc[[20, 30]].fillna({"price": 9.0})))
    base = torch.tensor([[1.0 if c.kind == "categorical" else c.mean for c in enc.columns]])
    attr, delta = IntegratedGradients(model).attribute(
        x, baselines=base.expand_as(x), n_steps=60, method="riemann_middle", return_convergence_delta=True
    )
    assert delta.abs().max() < 1e-3
    color = FEATURES.index("color")
    assert x[0, color] != base[0, color] and attr[0, color].abs() > 0  # green (or blue) vs red: credited
