"""The reference profile of a model: what its inputs and outputs looked like in training.

Logged with every platform-trained model (`reference_profile.json` beside the exported
program), or built at serving time from a reference file named in the serve config. It holds,
per drift feature, the bin edges cut from the training split's deciles (plus the training
range, so values outside it fall in bins of their own), the training fractions in each bin
and summary statistics; and the model's predictions on the validation split (class fractions,
or binned values per regression output). A few tens of KB for the digits model; at most
MAX_BYTES: edges are kept to 7 significant digits, and a wide input gets no per-feature
quantiles, then fewer bins, and at last none (drift unavailable, statistics kept).

Drift features: a column model's columns, a [n, k] tensor's k entries, and for a larger
tensor each channel's per-row mean and standard deviation (channel axis 1 for [n, c, h, w]
images, the last axis for [n, length, channels] sequences).

Binning is the same function at training and serving time (`bin_index`): a value v falls in
bin searchsorted(edges, v, "right"), so bin 0 is below the training minimum, the last bin
above its maximum, and a missing value (NaN) in one more bin after that.

A categorical column (`kind: categorical`, its `categories` the training split's most frequent
values, up to MAX_CATEGORIES) is binned by category: value i of the list is code i, any other
value code len(categories) (unseen: the bin "above the range"), a null NaN (the missing bin),
with edges i + 0.5 so that the same bin_index puts each code in its own bin. Its reference is
each category's share of the training split; drift compares shares (PSI, chi-squared).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

FORMAT = "raymaas-profile/1"
MAX_BYTES = 100_000
DEFAULT_BINS = 10
MAX_CATEGORIES = 100  # a categorical column's bins: its most frequent categories, then "unseen"


def drift_features(
    x, columns: list[str] | None = None, categorical: dict[str, list] | None = None
) -> tuple[np.ndarray, list[str], str]:
    """(a float64 [n, features] matrix, the features' names, the input's kind) of a batch:
    a DataFrame's columns, a [n, k] array's entries, a larger tensor's per-channel means and
    standard deviations. categorical: column -> its categories; a DataFrame's such column is
    coded by category_codes (an array's is taken as coded already)."""
    import pandas as pd

    if isinstance(x, pd.DataFrame):
        names = list(columns or x.columns)
        categorical = categorical or {}
        matrix = _as_float(x[[n for n in names]].drop(columns=[n for n in names if n in categorical]))
        if categorical:
            full = np.empty((len(x), len(names)), dtype=np.float64)
            plain = [i for i, n in enumerate(names) if n not in categorical]
            full[:, plain] = matrix
            for i, n in enumerate(names):
                if n in categorical:
                    full[:, i] = category_codes(x[n], categorical[n])
            matrix = full
        return matrix, [str(c) for c in names], "columns"
    if isinstance(x, dict) and len(x) == 1:
        (x,) = x.values()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim == 2:
        names = [str(c) for c in columns] if columns else [str(i) for i in range(arr.shape[1])]
        return _as_float(arr), names, "columns" if columns else "tensor"
    axis = 1 if arr.ndim == 4 else arr.ndim - 1
    moved = np.moveaxis(arr.astype(np.float64, copy=False), axis, 1).reshape(arr.shape[0], arr.shape[axis], -1)
    means, stds = moved.mean(axis=2), moved.std(axis=2)
    channels = arr.shape[axis]
    names = [f"mean[{c}]" for c in range(channels)] + [f"std[{c}]" for c in range(channels)]
    return np.concatenate([means, stds], axis=1), names, "tensor"


def category_codes(values, categories: list) -> np.ndarray:
    """Drift codes of a categorical column's values: i for categories[i], len(categories) for
    any other value (unseen), NaN for a null. Values are compared as text, as JSON and CSV
    clients send them (True and "True" are one category; the profile's categories are text)."""
    import pandas as pd

    series = pd.Series(values)
    missing = series.isna().to_numpy()
    index = pd.Index([_category_text(c) for c in categories])
    codes = index.get_indexer(series.map(_category_text, na_action="ignore").to_numpy(dtype=object))
    codes = codes.astype(np.float64)
    codes[codes < 0] = len(categories)
    codes[missing] = np.nan
    return codes


def _category_text(value) -> str:
    """A category as the profile writes it: 36.0 (an integer column pandas made float for a
    null) as "36", like the integer it is."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _categorical_feature(name: str, codes: np.ndarray, categories: list) -> dict[str, Any]:
    """A categorical column's profile entry from its drift codes (category_codes)."""
    edges = np.arange(len(categories), dtype=np.float64) + 0.5
    return {
        "name": name,
        "kind": "categorical",
        "categories": [_category_text(c) for c in categories],
        "edges": edges.tolist(),
        "reference": _round(bin_fractions(codes, edges)),
        "missing": int(np.isnan(codes).sum()),
    }


def _as_float(values) -> np.ndarray:
    import pandas as pd

    if isinstance(values, pd.DataFrame):
        out = np.empty(values.shape, dtype=np.float64)
        for i, col in enumerate(values.columns):
            out[:, i] = pd.to_numeric(values[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return out
    return np.asarray(values, dtype=np.float64)


def bin_edges(values: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Interior cuts at the deciles (n_bins quantiles) of values, and the training range."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return np.array([0.0])
    lo, hi = float(v.min()), float(v.max())
    cuts = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]) if n_bins > 1 else np.array([])
    # 7 significant digits keep the profile small; the outer edges are rounded outwards so the
    # training range stays inside them (the reference fractions are binned by the rounded edges)
    first = _short(lo)
    while first > lo:
        first = _short(first - max(abs(first), 1e-30) * 1e-6)
    last = _short(hi)
    while last <= hi:
        last = _short(last + max(abs(last), 1e-30) * 1e-6)
    inner = [_short(c) for c in cuts if lo < _short(c) <= hi]
    return np.unique(np.asarray([first, *inner, last], dtype=np.float64))


def _short(value: float) -> float:
    return float(f"{value:.7g}")


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value: 0 below the training range, len(edges) above it, len(edges)+1 missing."""
    idx = np.searchsorted(edges, values, side="right")
    idx[~np.isfinite(values)] = len(edges) + 1
    return idx


def bin_fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(bin_index(values, edges), minlength=len(edges) + 2)
    return counts / max(1, len(values))


def _round(values, digits: int = 6) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).tolist()]


def _feature(name: str, values: np.ndarray, n_bins: int, quantiles: bool) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    stat = (lambda f: _round([f(finite)])[0]) if len(finite) else (lambda f: None)  # noqa: E731
    out: dict[str, Any] = {"name": name}
    if n_bins:
        edges = bin_edges(values, n_bins)
        out["edges"] = edges.tolist()  # the serving side bins by the very same cuts
        out["reference"] = _round(bin_fractions(values, edges))
    out.update(mean=stat(np.mean), std=stat(np.std), min=stat(np.min), max=stat(np.max))
    out["missing"] = int(len(values) - len(finite))
    if quantiles and len(finite):
        out["quantiles"] = dict(
            zip(
                ("p05", "p25", "p50", "p75", "p95"),
                _round(np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95])),
                strict=True,
            )
        )
    return out


def build_profile(
    x,
    columns: list[str] | None = None,
    predictions=None,
    task: str | None = None,
    classes: list | None = None,
    output_names: list[str] | None = None,
    n_bins: int = DEFAULT_BINS,
    categorical: dict[str, list] | None = None,
) -> dict[str, Any]:
    """The reference profile of training inputs x (a DataFrame, or an array of rows) and of
    the model's predictions on the validation split (class labels for task "classification",
    values for "regression"; None to leave them out). categorical: column -> its categories,
    most frequent first (the first MAX_CATEGORIES are profiled); in an array, such a column
    holds the codes category_codes gives."""
    import pandas as pd

    categorical = {k: list(v)[:MAX_CATEGORIES] for k, v in (categorical or {}).items()}
    matrix, names, kind = drift_features(x, columns, categorical)
    arr = None if isinstance(x, (pd.DataFrame, dict)) else np.asarray(x)
    # smaller until it fits: no quantiles, fewer bins, and at last no bins (drift unavailable)
    for bins, quantiles in ((n_bins, True), (n_bins, False), (5, False), (3, False), (0, False), (None, False)):
        profile: dict[str, Any] = {
            "format": FORMAT,
            "rows": int(matrix.shape[0]),
            "input": {"kind": kind, "shape": list(arr.shape[1:]) if arr is not None else [len(names)]},
            "features": [
                _categorical_feature(n, matrix[:, i], categorical[n])
                if n in categorical and bins
                else _feature(n, matrix[:, i], bins, quantiles)
                if bins is not None
                else {"name": n}
                for i, n in enumerate(names)
            ],
        }
        if not bins:
            profile["binned"] = False  # too wide for MAX_BYTES with bins: summary statistics only
        if arr is not None and arr.ndim > 2:
            flat = arr.astype(np.float64).ravel()
            profile["input"]["summary"] = {
                "mean": float(flat.mean()),
                "std": float(flat.std()),
                "min": float(flat.min()),
                "max": float(flat.max()),
            }
        if predictions is not None:
            profile["predictions"] = prediction_profile(predictions, task, classes, output_names, bins or 3)
        if len(dumps(profile)) <= MAX_BYTES:
            return profile
    raise ValueError(f"a reference profile of {len(names)} drift features does not fit in {MAX_BYTES} bytes")


def prediction_profile(
    predictions, task: str | None, classes: list | None, names: list[str] | None, n_bins: int
) -> dict:
    if task == "regression":
        values = np.asarray(predictions, dtype=np.float64)
        values = values.reshape(len(values), -1)
        names = names or [str(i) for i in range(values.shape[1])]
        return {"kind": "values", "outputs": [_feature(n, values[:, i], n_bins, False) for i, n in enumerate(names)]}
    labels = [str(c) for c in (classes if classes is not None else sorted(set(np.asarray(predictions).tolist())))]
    seen = [str(p) for p in np.asarray(predictions).tolist()]
    total = max(1, len(seen))
    return {"kind": "classes", "labels": labels, "reference": _round([seen.count(c) / total for c in labels])}


def dumps(profile: dict) -> str:
    return json.dumps(profile, separators=(",", ":"), allow_nan=False)


def check_profile(profile: Any, where: str) -> dict:
    """profile if it is a reference profile; ValueError naming where it came from if not."""
    if (
        not isinstance(profile, dict)
        or profile.get("format") != FORMAT
        or not isinstance(profile.get("features"), list)
    ):
        raise ValueError(f"{where} is not a raymaas reference profile (format {FORMAT})")
    return profile


def load_profile(path) -> dict:
    """A profile JSON file, or a Parquet/CSV file of reference rows to build one from."""
    from pathlib import Path

    import pandas as pd

    path = Path(path)
    if path.suffix == ".json":
        return check_profile(json.loads(path.read_text()), str(path))
    if path.suffix == ".parquet":
        return build_profile(pd.read_parquet(path))
    if path.suffix == ".csv":
        return build_profile(pd.read_csv(path))
    raise ValueError(f"reference file {path}: give a profile (.json) or reference rows (.parquet, .csv)")
