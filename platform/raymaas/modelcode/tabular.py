"""Tabular features as a network takes them: categorical columns and missing numbers.

A registered network is exported with torch.export and takes one float32 tensor [n, k], so a
frame's columns reach it in two steps. `TabularEncoding.encode` (numpy and pandas, outside the
network) turns each column into one float32 column: a number as itself (null -> NaN), a
category as its code, 1 + its position in the training split's categories, 0 for a null or a
value training never saw. `TabularInput` (the network's first layer, so it is exported with
it) fills NaN with the column's imputed value, standardises numbers with the training split's
statistics, and widens each code into a one-hot block or an embedding. The fitted statistics
and categories travel with the model as `TabularEncoding.to_dict()`, plain JSON.

Categories are looked up as the column holds them, never as text: an integer category 1 is
not the string "1" nor the boolean True (which Python's own `True == 1` would make it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

# the pandas type of a decoded column, by its signature type
_PANDAS_TYPES = {"string": object, "boolean": object, "long": "int64", "double": "float64"}
SMALL_FRAME = 64  # rows up to which encode reads a frame as one object block
NUMERIC = "numeric"
CATEGORICAL = "categorical"
IMPUTE = ("none", "mean", "median", "zero")


@dataclass
class ColumnEncoding:
    """One feature column: how it is coded and the training split's statistics behind it."""

    name: str
    kind: str  # NUMERIC or CATEGORICAL
    # The MLflow signature type the column is declared with: numeric "double" or "long";
    # categorical "string", "boolean", "long", or "double" for integer categories whose training
    # column held nulls (pandas read it as float64: MLflow's `long` refuses the NaN a served
    # null is, `double` takes it; the codes are looked up as integers either way).
    dtype: str
    fill: float | None = None  # numeric: the value a null takes; None: nulls are refused, not imputed
    mean: float = 0.0  # numeric: over the training split's non-null values
    std: float = 1.0
    # categorical: the training split's distinct non-null values, most frequent first (ties by
    # str), as plain Python str, bool or int; code i + 1 is categories[i], code 0 is unknown.
    categories: list | None = None


@dataclass
class TabularEncoding:
    """The feature columns in the order the network takes them."""

    columns: list[ColumnEncoding] = field(default_factory=list)
    max_categories: int = 32  # a categorical column of more categories is embedded, not one-hot

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def categorical(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == CATEGORICAL]

    @property
    def has_categorical(self) -> bool:
        return any(c.kind == CATEGORICAL for c in self.columns)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """The frame's feature columns as float32 [n, k]: numbers (null -> NaN) and category codes."""
        missing = [name for name in self.names if name not in frame.columns]
        if missing:
            raise ValueError(f"the frame lacks the feature columns {missing}")
        out = np.empty((len(frame), len(self.columns)), dtype=np.float32)
        if len(frame) <= SMALL_FRAME:
            # a served request: one object block (taking 8 columns one by one from a DataFrame
            # costs more than the network's forward pass)
            names = self.names
            block = (frame if frame.columns.tolist() == names else frame[names]).to_numpy(dtype=object)
            for j, column in enumerate(self.columns):
                if column.kind == CATEGORICAL:
                    out[:, j] = _codes_of(block[:, j], column)
                else:
                    out[:, j] = _small_numbers(block[:, j], column.name)
            return out
        for j, column in enumerate(self.columns):
            series = frame[column.name]
            if column.kind == CATEGORICAL:
                out[:, j] = _codes(series, column)
            else:
                out[:, j] = _numbers(series, column.name)
        return out

    def decode(self, rows: np.ndarray) -> pd.DataFrame:
        """Encoded rows back to the frame they encode, each column of its signature type (a
        code 0 as None): the model's input example, logged as a client would send it."""
        rows = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(self.columns))
        frame = {}
        for j, column in enumerate(self.columns):
            values = rows[:, j]
            if column.kind == CATEGORICAL:
                categories = column.categories or []
                decoded = [categories[int(v) - 1] if 1 <= v <= len(categories) else None for v in values]
                if column.dtype == "double":
                    decoded = [math.nan if v is None else float(v) for v in decoded]
                frame[column.name] = pd.Series(decoded, dtype=_PANDAS_TYPES[column.dtype])
            elif column.dtype == "long":
                frame[column.name] = np.rint(np.nan_to_num(values, nan=column.fill or column.mean)).astype(np.int64)
            else:
                frame[column.name] = values.astype(np.float64)
        return pd.DataFrame(frame)

    def filled(self, rows: np.ndarray) -> np.ndarray:
        """Encoded rows with each missing number replaced by what TabularInput puts there (the
        column's fill, else its mean): a copy where one is missing. What a gradient path needs
        (none runs through NaN)."""
        if not np.isnan(rows).any():
            return rows
        rows = rows.copy()
        for j, column in enumerate(self.columns):
            if column.kind == NUMERIC:
                rows[np.isnan(rows[:, j]), j] = column.mean if column.fill is None else column.fill
        return rows

    def nulls(self, frame: pd.DataFrame) -> dict[str, int]:
        """The numeric columns without imputation that hold nulls in frame, with their counts:
        what a request is refused for, since such a null has no value to stand for it."""
        counts = {}
        for column in self.columns:
            if column.kind == NUMERIC and column.fill is None and column.name in frame.columns:
                n = int(frame[column.name].isna().sum())
                if n:
                    counts[column.name] = n
        return counts

    def to_dict(self) -> dict:
        """A JSON-able form (json.dumps keeps str, bool and int categories as they are)."""
        return {"columns": [asdict(c) for c in self.columns], "max_categories": self.max_categories}

    @classmethod
    def from_dict(cls, d: dict) -> TabularEncoding:
        return cls(
            columns=[ColumnEncoding(**c) for c in d["columns"]],
            max_categories=int(d.get("max_categories", 32)),
        )


def fit_encoding(
    frame: pd.DataFrame,
    features: list[str],
    categorical: list[str] = (),
    impute: str = "none",
    max_categories: int = 32,
) -> TabularEncoding:
    """The encoding of `features` fitted on training rows: a column is categorical when it is
    listed in `categorical` or holds booleans, text or pandas categories; else numeric, with its
    nulls filled by `impute` (mean, median, zero, or none: left to be refused)."""
    if impute not in IMPUTE:
        raise ValueError(f"impute {impute!r}: one of {list(IMPUTE)}")
    unknown = sorted(set(categorical) - set(features))
    if unknown:
        raise ValueError(f"categorical names {unknown}, which are not feature columns")
    columns = []
    for name in features:
        series = frame[name]
        if name in categorical or _is_categorical_dtype(series.dtype):
            columns.append(_fit_categorical(series, name))
        else:
            columns.append(_fit_numeric(series, name, impute))
    return TabularEncoding(columns=columns, max_categories=max_categories)


def embedding_dim(n_slots: int) -> int:
    """The width of an embedded categorical column of n_slots codes (categories + unknown):
    fast.ai's rule of thumb, 1.6 * n ** 0.56, kept between 2 and 16."""
    return min(16, max(2, round(1.6 * n_slots**0.56)))


class TabularInput(nn.Module):
    """Encoded columns (TabularEncoding.encode) to the network's input: numbers imputed and
    standardised, codes one-hot or embedded, concatenated in column order; `width` wide.

    No branch depends on the data, so torch.export keeps the batch dimension dynamic."""

    def __init__(self, encoding: TabularEncoding):
        super().__init__()
        numeric = [j for j, c in enumerate(encoding.columns) if c.kind == NUMERIC]
        fills, means, stds = [], [], []
        for j in numeric:
            c = encoding.columns[j]
            fills.append(c.mean if c.fill is None else c.fill)
            means.append(c.mean)
            stds.append(c.std if c.std > 1e-6 else 1.0)
        self.register_buffer("numeric_index", torch.tensor(numeric, dtype=torch.long))
        self.register_buffer("fill", torch.tensor(fills, dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(means, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(stds, dtype=torch.float32))
        # The one-hot columns in one block: each column's code, the upper bound of its codes,
        # and for each of the block's slots the column it belongs to and its code. A
        # categorical column of more than max_categories is embedded (one module each).
        onehot, limits, slot_owner, slot_code = [], [], [], []
        self.encoders = nn.ModuleList()
        self._embedded: list[tuple[int, int, int]] = []  # (column j, encoder index, n_slots)
        embedded_width = []
        for j, c in enumerate(encoding.columns):
            if c.kind == NUMERIC:
                continue
            n_slots = len(c.categories or []) + 1  # code 0, unknown, has a slot of its own
            if n_slots - 1 <= encoding.max_categories:
                slot_owner += [len(onehot)] * n_slots
                slot_code += range(n_slots)
                onehot.append(j)
                limits.append(n_slots - 0.5)
            else:
                dim = embedding_dim(n_slots)
                self._embedded.append((j, len(self.encoders), n_slots))
                self.encoders.append(Embedding(n_slots, dim))
                embedded_width.append(dim)
        self.register_buffer("onehot_index", torch.tensor(onehot, dtype=torch.long))
        self.register_buffer("onehot_limit", torch.tensor(limits, dtype=torch.float32))
        self.register_buffer("slot_owner", torch.tensor(slot_owner, dtype=torch.long))
        self.register_buffer("slot_code", torch.tensor(slot_code, dtype=torch.float32))

        # The forward pass computes [numbers | one-hot block | embeddings]; the output is that
        # in column order (each column's width where the column stands), one index_select.
        starts, at = {}, 0
        for j in numeric:
            starts[j], at = (at, 1), at + 1
        for k, j in enumerate(onehot):
            n_slots = slot_owner.count(k)
            starts[j], at = (at, n_slots), at + n_slots
        for (j, _, _), dim in zip(self._embedded, embedded_width, strict=True):
            starts[j], at = (at, dim), at + dim
        order = [i for j in range(len(encoding.columns)) for i in range(starts[j][0], starts[j][0] + starts[j][1])]
        self.width = at
        self._reorder = order != list(range(at))
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = []
        if len(self.numeric_index):
            numbers = x.index_select(1, self.numeric_index)
            numbers = torch.where(torch.isnan(numbers), self.fill, numbers)
            pieces.append((numbers - self.mean) / self.std)
        if len(self.onehot_index):
            codes = _known_codes(x.index_select(1, self.onehot_index), self.onehot_limit)
            slots = codes.index_select(1, self.slot_owner)
            pieces.append(torch.clamp(1.0 - (slots - self.slot_code).abs(), min=0.0))
        for j, b, n_slots in self._embedded:
            pieces.append(self.encoders[b](_known_codes(x[:, j], n_slots - 0.5)))
        out = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
        return out.index_select(1, self.order) if self._reorder else out


def _known_codes(codes: torch.Tensor, limit: torch.Tensor | float) -> torch.Tensor:
    """codes with any code outside [0, n_slots) made 0, unknown, like a new value: the guard of
    both the one-hot block and an embedded column. limit is n_slots - 0.5, one float for a
    column's codes [n], or a tensor of one per column for the block's codes [n, k]; NaN
    compares false, so it is unknown too. The codes stay floats (encode gives whole numbers)
    so that gradients reach them (OneHot); a torch.where, no branch on the data, so
    torch.export keeps the batch dimension dynamic."""
    return torch.where((codes > -0.5) & (codes < limit), codes, torch.zeros_like(codes))


class OneHot(nn.Module):
    """Codes [n] (floats) to one-hot rows [n, n_slots]: slot k holds max(0, 1 - |code - k|),
    exactly one-hot at a whole code, and between two codes a blend of their slots. The blend
    gives a categorical column a gradient, so Integrated Gradients, walking from the baseline
    row to the input, attributes to the column what changing its category changed (an
    equality test would give 0 and leave the attribution incomplete). A fixed range of slots:
    no data-dependent shape, so torch.export keeps the batch dynamic."""

    def __init__(self, n_slots: int):
        super().__init__()
        self.n_slots = n_slots
        self.register_buffer("slots", torch.arange(n_slots, dtype=torch.float32))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.clamp(1.0 - (code.unsqueeze(1) - self.slots).abs(), min=0.0)


class Embedding(nn.Module):
    """A learned vector per code (torch.nn.Embedding's lookup), as OneHot's rows times the
    table, so a categorical column with many categories has a gradient too (see OneHot)."""

    def __init__(self, n_slots: int, dim: int):
        super().__init__()
        self.one_hot = OneHot(n_slots)
        self.weight = nn.Parameter(torch.randn(n_slots, dim))  # nn.Embedding's initialisation

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.one_hot(code) @ self.weight


# -- fitting ---------------------------------------------------------------------------------


def _is_categorical_dtype(dtype) -> bool:
    return (
        pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
        or isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype))
    )


def _fit_numeric(series: pd.Series, name: str, impute: str) -> ColumnEncoding:
    if not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        raise ValueError(f"column {name!r} ({series.dtype}) is neither numeric nor categorical")
    values = series.astype("float64").dropna()
    if values.empty:  # nothing to measure: the column passes through as its fill
        mean, std, median = 0.0, 1.0, 0.0
    else:
        mean, std, median = float(values.mean()), float(values.std()), float(values.median())
        if not math.isfinite(std) or std == 0.0:  # one row, or one value
            std = 1.0
    fill = {"none": None, "mean": mean, "median": median, "zero": 0.0}[impute]
    dtype = "long" if pd.api.types.is_integer_dtype(series.dtype) else "double"
    return ColumnEncoding(name=name, kind=NUMERIC, dtype=dtype, fill=fill, mean=mean, std=std)


def _fit_categorical(series: pd.Series, name: str) -> ColumnEncoding:
    counts = series.value_counts(dropna=True)
    counts = counts[counts > 0]  # a pandas category column counts its unused categories too
    values = [v.item() if isinstance(v, np.generic) else v for v in counts.index]
    dtype = _category_type(values, series.dtype, name)
    convert = {"string": str, "boolean": bool, "long": int}[dtype]
    if dtype == "long" and pd.api.types.is_float_dtype(series.dtype):
        dtype = "double"  # integer categories with nulls: declared as pandas holds them (see ColumnEncoding)
    ranked = sorted(zip(values, counts.to_numpy()), key=lambda vc: (-vc[1], str(vc[0])))
    categories = [convert(v) for v, _ in ranked]
    return ColumnEncoding(name=name, kind=CATEGORICAL, dtype=dtype, categories=categories)


def _category_type(values: list, dtype, name: str) -> str:
    """The signature type of a categorical column from its non-null values: "string",
    "boolean" or "long" (integral floats too: pandas reads an integer column with a null as
    float64)."""
    inferred = pd.api.types.infer_dtype(np.array(values, dtype=object), skipna=True)
    if inferred == "string":
        return "string"
    if inferred == "boolean":
        return "boolean"
    if inferred == "integer":
        return "long"
    if inferred in ("floating", "mixed-integer-float") and all(float(v).is_integer() for v in values):
        return "long"
    if inferred == "empty":  # all null: the column's own type says what it would hold
        if pd.api.types.is_bool_dtype(dtype):
            return "boolean"
        return "long" if pd.api.types.is_numeric_dtype(dtype) else "string"
    raise ValueError(
        f"categorical column {name!r} holds {inferred} values; categories are strings, booleans or integers"
    )


# -- encoding --------------------------------------------------------------------------------


def _small_numbers(values: np.ndarray, name: str) -> np.ndarray:
    """A numeric column of a small frame's object block (None -> NaN), refusing what _numbers
    refuses: booleans and text."""
    if any(isinstance(v, (bool, np.bool_, str, bytes)) for v in values):
        kind = "booleans" if any(isinstance(v, (bool, np.bool_)) for v in values) else "text"
        raise ValueError(f"column {name!r} is numeric; it holds {kind}")
    try:
        return values.astype(np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"column {name!r} is numeric; it holds a value that is no number ({err})") from None


def _numbers(series: pd.Series, name: str) -> np.ndarray:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise ValueError(f"column {name!r} is numeric; it holds booleans")
    if pd.api.types.is_numeric_dtype(dtype):
        return series.to_numpy(dtype=np.float32, na_value=np.nan)
    # an object column of numbers and None (a JSON request's nulls)
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    if inferred not in ("integer", "floating", "mixed-integer-float", "empty"):
        raise ValueError(f"column {name!r} is numeric; it holds {inferred} values")
    return pd.to_numeric(series).to_numpy(dtype=np.float32, na_value=np.nan)


def _codes(series: pd.Series, column: ColumnEncoding) -> np.ndarray:
    """1 + each value's position in the column's categories; 0 for a null or a new value.

    A dict lookup per value: a served request is a row or a few, where building a pandas Index
    per call cost ~10x the network's forward pass; a training batch of a thousand rows takes
    well under a millisecond a column either way."""
    return _codes_of(series.to_numpy(dtype=object), column)


def _codes_of(values: np.ndarray, column: ColumnEncoding) -> np.ndarray:
    lookup, accepts = _lookup(column)
    get = lookup.get
    return np.fromiter((get(v, 0) if accepts(v) else 0 for v in values), dtype=np.float32, count=len(values))


def _lookup(column: ColumnEncoding):
    """(value -> code, which values may be looked up), built once per column. A value of
    another type is unknown, never converted: hashing makes True equal 1 and 12.0 equal 12, so
    booleans are kept out of an integer column and numbers out of a boolean one, while 12.0
    (an integer column pandas made float for a null) finds 12."""
    cached = column.__dict__.get("_lookup")
    if cached is None:
        lookup = {v: float(i + 1) for i, v in enumerate(column.categories or [])}
        if column.dtype == "string":
            accepts = _is_text
        elif column.dtype == "boolean":
            accepts = _is_bool
        else:  # long, double: integer categories
            accepts = _is_number
        cached = column.__dict__["_lookup"] = (lookup, accepts)
    return cached


def _is_text(value) -> bool:
    return isinstance(value, str)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
