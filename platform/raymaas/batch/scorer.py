"""The model actor of a batch job: Ray Data's `map_batches` pattern, holding one MLflow pyfunc.

    ds.map_batches(BatchScorer, fn_constructor_kwargs=..., compute=ActorPoolStrategy(size=N),
                   batch_size=B, batch_format="pyarrow")

Each actor loads the pinned model version once (the files of `models:/NAME/VERSION`, so a
moved alias does not change the model half way) and turns a batch of input rows into a batch
of output rows, one for one: the unit the row came from, its pass-through columns, its
prediction, and for a rejected row why, with the row itself as JSON. The driver
(raymaas.batch.job) splits them into the output and errors folders.

A row is rejected, not the batch, when
- a feature is missing (null), unless the model fills it in itself (a categorical column's
  unknown slot, an imputed number: `nullable_columns`), or, read from CSV text, not a number of
  the input's type;
- a sequence (a list column feeding a tensor [-1, length, channels]) is null, has another number
  of steps or channels than the tensor, or misses a step (null or NaN);
- an image file (a row of read_binary_files) does not decode: Pillow's reason, naming the file.
  Images are decoded here, not by Ray Data's read_images, which fails the whole read on one bad
  file; `decode_image` makes the calls read_images makes, so the pixels are the training's;
- the model raises on it: a batch that fails is split in halves until the rows that fail on
  their own are found (a few extra calls per bad row; models score rows independently). Only
  when the model fails on every row of an actor's first batch does the job fail instead: that
  is a model that cannot score this input at all, and scoring it row by row would take hours.

`score_table` is the whole transformation, without Ray: the tests call it in-process.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable

import numpy as np

from raymaas.batch.plan import PATH_COLUMN, Features
from raymaas.modelcode.images import pixels

UNIT_COLUMN = "__raymaas_unit"
ERROR_COLUMN = "__raymaas_error"
INPUT_COLUMN = "__raymaas_input"


class ModelFailed(RuntimeError):
    """The model rejects every row it is given: the job fails rather than reject them all."""


class BatchScorer:
    """A Ray Data actor: one model, loaded once; each call scores one batch (a pyarrow Table)."""

    def __init__(
        self,
        model_uri: str,  # the pinned version's files (plan.PinnedModel.download_uri)
        tracking_uri: str,
        features: Features,
        unit_paths: list[str],
        passthrough: list[str],
        prediction_column: str,
        probabilities: bool = False,
        input_root: str | None = None,  # images: the input folder, which each row's `path` is made relative to
    ):
        import mlflow

        # The actor's cwd is Ray's, not the project: the driver's store, explicitly (artifact
        # URIs served by a tracking server, mlflow-artifacts:/, need it).
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        # TorchClassifier runs its torch.export program on the CPU; on an actor given a GPU,
        # a model that uses CUDA finds it through CUDA_VISIBLE_DEVICES, set by Ray.
        self._model = mlflow.pyfunc.load_model(model_uri)
        self._params = {"probabilities": True} if probabilities else None
        self._features = features
        self._unit_paths = unit_paths
        self._passthrough = passthrough
        self._prediction_column = prediction_column
        self._input_root = input_root
        self._scored_any = False
        self._nullable = nullable_columns(self._model)

    def _predict(self, x):
        if self._params is None:
            return self._model.predict(x)
        return self._model.predict(x, params=self._params)

    def __call__(self, batch):
        out = score_table(
            batch,
            self._predict,
            self._features,
            self._unit_paths,
            self._passthrough,
            self._prediction_column,
            first_batch=not self._scored_any,
            nullable=self._nullable,
            input_root=self._input_root,
        )
        self._scored_any = True
        return out


def score_table(
    batch,
    predict: Callable,
    features: Features,
    unit_paths: list[str],
    passthrough: list[str],
    prediction_column: str,
    first_batch: bool = False,
    nullable: frozenset[str] = frozenset(),
    input_root: str | None = None,
):
    """Input rows (a pyarrow Table with Ray Data's `path` column) -> one output row each.
    nullable: feature columns whose nulls the model takes (nullable_columns). Images: a row is
    a file, its unit the folder it lies in, and its `path` is written relative to input_root."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    paths = batch.column(PATH_COLUMN)
    if features.kind == "image":
        files = paths.to_pylist()
        paths = pa.array([os.path.dirname(p) for p in files], pa.string())
        relative = [os.path.relpath(p, input_root) for p in files]
        batch = batch.set_column(
            batch.schema.get_field_index(PATH_COLUMN), PATH_COLUMN, pa.array(relative, pa.string())
        )
    units = pc.index_in(paths, value_set=pa.array(unit_paths, pa.string()))
    if units.null_count:
        unknown = batch.column(PATH_COLUMN).filter(pc.is_null(units))[0].as_py()
        raise RuntimeError(f"a row from {unknown!r}, which is not one of the job's input files")
    reasons: list[str | None] = [None] * n
    columns = []
    for name, dtype in zip(features.columns, features.dtypes):
        if features.kind == "image":
            values, problems = decode_images(
                batch.column(name), batch.column(PATH_COLUMN).to_pylist(), features.tensor_shape[1:], dtype
            )
        elif features.kind == "sequence":
            values, problems = convert_sequence(batch.column(name), dtype, name, features.column_shape)
        else:
            values, problems = convert_column(batch.column(name), dtype, name, name in nullable)
        columns.append(values)
        for i, why in problems:
            if reasons[i] is None:
                reasons[i] = why
    good = np.array([r is None for r in reasons], dtype=bool)
    rows = np.flatnonzero(good)
    pieces = []
    if len(rows):
        x = model_input(features, columns, rows)
        pieces, failures = predict_rows(predict, x, rows)
        if failures and len(failures) == len(rows) and first_batch and len(rows) > 1:
            raise ModelFailed(
                f"the model failed on every one of the {len(rows)} rows of its first batch "
                f"(e.g. {failures[0][1]}); rows are rejected one by one only when others score"
            )
        for i, why in failures:
            reasons[i] = f"the model raised {why}"
    # A rejected image's input is its file, which its path names: no copy of its bytes as JSON.
    with_input = features.kind != "image"
    return _assemble(batch, units, reasons, pieces, passthrough, prediction_column, with_input)


def nullable_columns(model) -> frozenset[str]:
    """The feature columns whose nulls a pyfunc model takes: a raymaas model's categorical
    columns (a null is the unknown category) and imputed numbers (raymaas.modelcode.tabular)."""
    try:
        encoding = getattr(model.unwrap_python_model(), "encoding", None)
    except Exception:  # not a PythonModel flavor (scikit-learn, ...)
        return frozenset()
    if not encoding:
        return frozenset()
    return frozenset(c["name"] for c in encoding["columns"] if c["kind"] == "categorical" or c.get("fill") is not None)


def convert_column(column, dtype: str, name: str, nullable: bool = False) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A batch column as a numpy array of dtype (placeholders where a row is bad), and the bad
    rows with why. nullable: a null is a value the model takes (None, or NaN in a number
    column, which is then float64), not a bad row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if nullable and array.null_count:
        if dtype in ("str", "bool"):
            values = array.to_pylist() if dtype == "bool" else pc.cast(array, pa.string()).to_pylist()
            return np.asarray(values, dtype=object), []
        try:
            return pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False), []
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # text in a number column: value by value below, its nulls kept as bad rows
    problems = []
    if array.null_count:
        problems = [(int(i), f"null in column {name!r}") for i in np.flatnonzero(array.is_null().to_numpy(False))]
    if dtype == "str":
        return np.asarray(pc.cast(array, pa.string()).to_pylist(), dtype=object), problems
    target = pa.from_numpy_dtype(np.dtype(dtype))
    try:
        # Unsafe into floats (an int64 feeding float32 is a model input, not a value to keep
        # exactly); safe into integers, whose range a value may exceed.
        cast = pc.cast(array, target, safe=not pa.types.is_floating(target))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Text that does not parse, an integer out of range: value by value, for this batch only.
        return _convert_values(array.to_pylist(), dtype, name, problems)
    filled = cast.fill_null(False if dtype == "bool" else 0) if cast.null_count else cast
    return filled.to_numpy(zero_copy_only=False), problems


def convert_sequence(column, dtype: str, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A batch's list column as a numpy array [n, *shape] of dtype (zeros where a row is bad),
    and the bad rows with why: a null sequence or step, a list of another length than the
    shape's, a value that is null or NaN (or, for an integer tensor, not one of its integers).

    Level by level with pyarrow (list lengths, flatten), not row by row: each level's elements
    keep the row they belong to, and where in it, for the reasons. The rows whose every list
    has its length then own exactly prod(shape) values each, in order, and are gathered at once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if pa.types.is_null(array.type):  # a column with no values at all
        return np.zeros((n, *shape), dtype=dtype), [(i, f"null in column {name!r}") for i in range(n)]
    reasons: dict[int, str] = {}
    level, owner = array, np.arange(n)  # the elements of one list level, and the row of each
    trail: list[tuple[np.ndarray, np.ndarray]] = []  # per level below the rows: each element's parent and place in it
    for depth, size in enumerate(shape):
        nulls = level.is_null().to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(level).fill_null(0).to_numpy(zero_copy_only=False)
        wrong = ~nulls & (lengths != size)
        for e in _first_per_row(np.flatnonzero(nulls | wrong), owner, reasons):
            counted = f"{lengths[e]} {_count_word(depth, shape)}, the model takes {size}"
            if depth == 0:
                why = f"null in column {name!r}" if nulls[e] else f"column {name!r}: {counted}"
            else:
                place = f"column {name!r}: {_place(trail, e, shape)}"
                why = f"{place} is null" if nulls[e] else f"{place} has {counted}"
            reasons[int(owner[e])] = why
        starts = np.cumsum(lengths) - lengths
        parent = np.repeat(np.arange(len(level)), lengths)
        trail.append((parent, np.arange(len(parent)) - starts[parent]))
        owner = owner[parent]
        level = level.flatten()  # the values of the non-null lists: as many as their lengths add up to
    nulls = level.is_null().to_numpy(zero_copy_only=False)
    missing = pc.is_null(level, nan_is_null=True).to_numpy(zero_copy_only=False)
    if level.null_count:
        level = level.fill_null(False if pa.types.is_boolean(level.type) else 0)
    flat = level.to_numpy(zero_copy_only=False)
    values = flat.astype(dtype)
    # An integer tensor takes the values its dtype holds exactly (the plan has checked the type).
    lost = (values.astype(flat.dtype) != flat) & ~missing if values.dtype.kind in "biu" else np.zeros(len(flat), bool)
    for e in _first_per_row(np.flatnonzero(missing | lost), owner, reasons):
        place = f"column {name!r}: {_place(trail, e, shape)}"
        if missing[e]:
            reasons[int(owner[e])] = f"{place} is {'null' if nulls[e] else 'NaN'}"
        else:
            reasons[int(owner[e])] = f"{place} is {flat[e].item()!r}, not {_kind_name(dtype)}"
    if not reasons:  # every row has its prod(shape) values, in order
        return values.reshape(n, *shape), []
    out = np.zeros((n, *shape), dtype=dtype)
    rows = np.setdiff1d(np.arange(n), np.fromiter(reasons, int, len(reasons)))
    if len(rows):
        counts = np.bincount(owner, minlength=n)  # values per row: prod(shape) for the good ones
        first = np.cumsum(counts) - counts
        out[rows] = values[first[rows, None] + np.arange(math.prod(shape))].reshape(len(rows), *shape)
    return out, sorted(reasons.items())


def decode_image(data: bytes, shape: tuple[int, int, int], dtype: str = "float32") -> np.ndarray:
    """An image file's bytes as the model's input row, [channels, height, width] pixels 0-255,
    read as its training read its folder (raymaas.modelcode.images). Raises what Pillow raises
    on a file that does not decode."""
    # Imported here: only image jobs need Pillow, which a cluster that scores tables may lack.
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return pixels(image, shape, dtype)


def decode_images(
    column, paths: list[str], shape: tuple[int, int, int], dtype: str
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A batch's file contents as an array [n, *shape] of dtype (zeros where a file does not
    decode), and the files that do not, with Pillow's reason naming the file (its path)."""
    out = np.zeros((len(paths), *shape), dtype=dtype)
    problems = []
    for i, (data, path) in enumerate(zip(column.to_pylist(), paths)):
        try:
            out[i] = decode_image(data, shape, dtype)
        except Exception as err:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError, ...
            # Pillow names a file it was given as bytes by the buffer's repr (an address): the
            # reason names it by its path instead
            why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(err))
            problems.append((i, f"{path!r} does not decode: {type(err).__name__}: {why}"))
    return out, problems


def _first_per_row(elements: np.ndarray, owner: np.ndarray, reasons: dict):
    """The first of the (ascending) elements in each row not yet rejected: one reason a row."""
    if not len(elements):
        return []
    _, first = np.unique(owner[elements], return_index=True)
    return [int(e) for e in elements[first] if int(owner[e]) not in reasons]


def _place(trail: list, element: int, shape: tuple[int, ...]) -> str:
    """Where an element of the level below `trail` is in its row: `step 5`, `step 5, channel 1`,
    or for tensors of more dimensions `value [5, 1, 0]`."""
    index = []
    for parent, place in reversed(trail):
        index.append(int(place[element]))
        element = parent[element]
    index.reverse()
    if len(shape) <= 2:
        return ", ".join(f"{word} {i}" for word, i in zip(("step", "channel"), index))
    return f"value {index}"


def _count_word(depth: int, shape: tuple[int, ...]) -> str:
    """What the lists of a level hold, in words."""
    if len(shape) > 2:
        return "values"
    return "steps" if depth == 0 else "channels"


def _convert_values(values: list, dtype: str, name: str, problems: list) -> tuple[np.ndarray, list]:
    out = np.zeros(len(values), dtype=dtype)
    bad = dict(problems)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            out[i] = _convert_value(v, dtype)
        except (ValueError, OverflowError):
            bad[i] = f"column {name!r}: {_short(repr(v), 40)} is not {_kind_name(dtype)}"
    return out, sorted(bad.items())


def _convert_value(v, dtype: str):
    if dtype == "bool":
        lowered = str(v).strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(v)
    if dtype.startswith("int"):
        number = int(v) if not isinstance(v, float) or v.is_integer() else None
        info = np.iinfo(dtype)
        if number is None or not info.min <= number <= info.max:
            raise ValueError(v)
        return number
    return float(v)


def _kind_name(dtype: str) -> str:
    if dtype == "bool":
        return "true or false"
    return f"an integer of {dtype}" if dtype.startswith("int") else "a number"


def model_input(features: Features, columns: list[np.ndarray], rows: np.ndarray):
    """The model's input for the good rows: one tensor, or a DataFrame of named columns."""
    if features.kind == "image":
        return columns[0] if len(rows) == len(columns[0]) else columns[0][rows]
    if features.kind == "sequence":
        whole = len(rows) == len(columns[0])
        parts = [values if whole else values[rows] for values in columns]
        if features.column_shape == features.tensor_shape[1:]:
            return parts[0]  # one column holds the whole row: lists of lists
        return np.stack(parts, axis=-1).astype(features.dtypes[0], copy=False)  # one column a channel
    if features.kind == "tensor":
        x = np.empty((len(rows), len(columns)), dtype=features.dtypes[0])
        whole = len(rows) == len(columns[0])
        for j, values in enumerate(columns):
            x[:, j] = values if whole else values[rows]
        return x.reshape((len(rows), *features.tensor_shape[1:])) if len(features.tensor_shape) > 2 else x
    import pandas as pd

    return pd.DataFrame({name: values[rows] for name, values in zip(features.columns, columns)})


def predict_rows(predict: Callable, x, rows: np.ndarray) -> tuple[list, list[tuple[int, str]]]:
    """predict(x) over rows; where it raises, the halves, down to single rows. Returns the
    pieces that scored, as (their rows, output columns), and the rows that failed, with why."""
    try:
        return [(rows, as_columns(predict(x), len(rows)))], []
    except Exception as err:
        if len(rows) == 1:
            return [], [(int(rows[0]), _short(f"{type(err).__name__}: {err}", 500))]
    half = len(rows) // 2
    first, first_failed = predict_rows(predict, _take(x, slice(0, half)), rows[:half])
    second, second_failed = predict_rows(predict, _take(x, slice(half, None)), rows[half:])
    return first + second, first_failed + second_failed


def _take(x, part: slice):
    return x.iloc[part] if hasattr(x, "iloc") else x[part]


def as_columns(result, n: int) -> dict[str, np.ndarray]:
    """A pyfunc's output as named columns: a 1-D array is `prediction`, a 2-D one
    `prediction_0..k-1`, a DataFrame or dict keeps its names."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        cols = {str(c): result[c].to_numpy() for c in result.columns}
    elif isinstance(result, dict):
        cols = {str(k): np.asarray(v) for k, v in result.items()}
    else:
        array = np.asarray(result.to_numpy() if isinstance(result, pd.Series) else result)
        if array.ndim == 1:
            cols = {"": array}
        elif array.ndim == 2:
            cols = {f"_{j}": array[:, j] for j in range(array.shape[1])}
        else:
            raise TypeError(f"the model returned an array of shape {array.shape}; batch scoring writes columns")
    for name, values in cols.items():
        if len(values) != n:
            raise RuntimeError(f"the model returned {len(values)} values for {n} rows (output {name!r})")
    return cols


def _assemble(
    batch, units, reasons, pieces: list, passthrough: list[str], prediction_column: str, with_input: bool = True
):
    import pyarrow as pa

    n = batch.num_rows
    bad = np.array([r is not None for r in reasons], dtype=bool)
    arrays = {UNIT_COLUMN: units.cast(pa.int32())}
    for name in passthrough:
        arrays[name] = batch.column(name)
    for key in pieces[0][1] if pieces else ():
        name = prediction_column + key if key == "" or key.startswith("_") else key
        if name in arrays:
            raise RuntimeError(f"the model's output {name!r} has the name of a pass-through column")
        if len(pieces) == 1 and not bad.any():
            arrays[name] = pa.array(pieces[0][1][key])
            continue
        dtype = pieces[0][1][key].dtype
        full = np.full(n, None, dtype=object) if dtype.kind == "O" else np.zeros(n, dtype=dtype)
        for rows, cols in pieces:
            full[rows] = cols[key]
        arrays[name] = pa.array(full, mask=bad)
    arrays[ERROR_COLUMN] = pa.array(reasons, pa.string())
    if not with_input:
        return pa.table(arrays)
    inputs: list[str | None] = [None] * n
    if bad.any():
        keep = [c for c in batch.column_names if c != PATH_COLUMN]
        rejected = batch.select(keep).take(pa.array(np.flatnonzero(bad)))
        for i, row in zip(np.flatnonzero(bad), rejected.to_pylist()):
            inputs[i] = json.dumps(row, default=str)
    arrays[INPUT_COLUMN] = pa.array(inputs, pa.string())
    return pa.table(arrays)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
