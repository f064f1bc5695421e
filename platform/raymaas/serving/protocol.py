"""The HTTP protocol of a published model: MLflow scoring formats in, predictions out.

What a request to a model endpoint may carry and what it is answered, independent of how the
model is loaded or run: the routes' prefix and the response headers, the client errors and
their MLflow error codes, the request body (size-limited), the scoring request parsed and
checked against the model's signature, the predictions and errors as JSON responses.

A request body is JSON in one of MLflow's scoring formats or CSV (a header row, then rows),
as `mlflow models serve` takes them; a model of images also takes a PNG or JPEG body, or a
multipart/form-data body of them (see "images" below). Parsing and checking a request against a signature of
named columns, or of one tensor, is done here, without MLflow's parser (which builds and casts
a DataFrame column by column: milliseconds for a wide row); anything less common is left to
MLflow's parser and schema enforcement, so that the model gets what MLflow would give it.
"""

from __future__ import annotations

import email.errors
import email.policy
import io
import json
from email.parser import BytesParser
from typing import Any

from raymaas.modelcode.images import image_shape
from raymaas.serving.errors import (
    BadRequest,
    InvalidInput,
    ServingError,
    TooLarge,
    UnsupportedMediaType,
)

MODELS_PREFIX = "/models"
VERSION_HEADER = "x-model-version"
NAME_HEADER = "x-model-name"
ALIAS_HEADER = "x-model-alias"
SCORING_FORMATS = ("inputs", "instances", "dataframe_split", "dataframe_records")
JSON_MEDIA_TYPE = "application/json"
CSV_MEDIA_TYPE = "text/csv"
# image/jpg is no registered type, but browsers' and clients' guesses from a .jpg name send it
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/jpg")
MULTIPART_MEDIA_TYPE = "multipart/form-data"


async def read_body(request, limit: int) -> bytes:
    """The request body, or 413 once it is over limit bytes (Content-Length or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise TooLarge(f"request body of {declared} bytes is over the limit of {limit}")
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_scoring_request(
    body: bytes, content_type: str, signature, strings_as_objects: bool = False
) -> tuple[Any, dict | None]:
    """Body in an MLflow scoring format -> (model input checked against the signature, params).

    application/json: an object with exactly one of SCORING_FORMATS (and optional params);
    text/csv: a header row, then rows; image/png, image/jpeg, multipart/form-data: images, for
    a model of images (`parse_image_body`; no params). What comes back is what MLflow's parsing and schema
    enforcement make of the body (`infer_and_parse_data`, then `_enforce_schema`); the common
    cases are built here without them: one numeric tensor (`_as_tensor`), and named scalar
    columns (`_as_columns`, `_csv_columns`), each checked against the signature here. Values
    that MLflow would silently turn into others are refused instead (`_altered_by_mlflow`).

    strings_as_objects: string columns come as numpy objects rather than pandas' Arrow-backed
    `str` that MLflow's parsing gives, for a model that reads them as objects anyway (the
    platform's own: raymaas.modelcode.tabular); building the `str` columns is most of a
    one-row request's parsing in a table of mixed types."""
    mime = (content_type or JSON_MEDIA_TYPE).split(";")[0].strip().lower()
    if mime == CSV_MEDIA_TYPE:
        return parse_csv_body(body, signature), None
    if mime in IMAGE_MEDIA_TYPES or mime == MULTIPART_MEDIA_TYPE:
        return parse_image_body(body, content_type, signature), None
    if mime not in (JSON_MEDIA_TYPE, ""):
        images = " or images (image/png, image/jpeg, multipart/form-data)" if image_shape(signature) else ""
        raise UnsupportedMediaType(
            f"send application/json in one of the MLflow scoring formats {list(SCORING_FORMATS)}, "
            f"or text/csv (a header row, then rows){images}; got {mime!r}",
        )
    return parse_scoring_payload(parse_json(body), signature, strings_as_objects)


def parse_json(body: bytes) -> Any:
    """A JSON body, or the 400 that says why it is not one."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(f"the body is not valid JSON: {err}") from None


def parse_scoring_payload(payload: Any, signature, strings_as_objects: bool = False) -> tuple[Any, dict | None]:
    """A JSON body already parsed (json.loads) -> (model input checked against the signature,
    params), as parse_scoring_request answers for it: for a caller that read the body's own
    fields first (explain's params, feedback's labels), so the body is parsed once."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    if not isinstance(payload, dict):
        raise InvalidInput(
            f"the body must be a JSON object with exactly one of {list(SCORING_FORMATS)}, got a {type(payload).__name__}",
        )
    formats = [k for k in SCORING_FORMATS if k in payload]
    if len(formats) != 1:
        raise InvalidInput(
            f"the body must have exactly one of {list(SCORING_FORMATS)}, got keys {sorted(payload)}",
            expected=schema_json(signature),
        )
    params = payload.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput("params must be a JSON object")
    if params is not None:
        params = check_params(params, signature)
    fmt = formats[0]
    value = payload[fmt]
    input_schema = signature.inputs if signature is not None else None
    hint = None
    try:
        data = _as_tensor(value, input_schema) if fmt in ("inputs", "instances") else None
        if data is None:
            columns = _column_specs(input_schema)
            if columns is not None:
                data, hint = _as_columns(fmt, value, columns, signature, strings_as_objects)
                if data is not None:
                    return data, params  # checked here: what _enforce_schema would make of it
            data = infer_and_parse_data({fmt: value}, input_schema)
    except ServingError:
        raise
    except MlflowException as err:
        raise _unreadable(f"cannot read {fmt!r}", err.message, hint, signature) from None
    except Exception as err:  # pandas/numpy refuse ragged or odd shapes in many ways
        raise _unreadable(f"cannot read {fmt!r}", str(err), hint, signature) from None
    return _enforce(data, input_schema, signature, hint), params


def _enforce(data, input_schema, signature, hint: str | None):
    """MLflow's own check of a parsed input against the signature (and its casts)."""
    if input_schema is None:
        return data
    from mlflow.exceptions import MlflowException
    from mlflow.models.utils import _enforce_schema

    try:
        return _enforce_schema(data, input_schema)
    except Exception as err:
        message = err.message if isinstance(err, MlflowException) else str(err)
        raise _unreadable("input does not match the model's signature", message, hint, signature) from None


def _unreadable(what: str, message: str, hint: str | None, signature) -> InvalidInput:
    """The 422 of an input MLflow refused; led by what the column check found, if anything."""
    if hint:
        return InvalidInput(
            f"input does not match the model's signature: {hint} ({shorten(message, 300)})",
            expected=schema_json(signature),
        )
    return InvalidInput(f"{what}: {shorten(message)}", expected=schema_json(signature))


def _as_tensor(value, input_schema):
    """A JSON list for a model with one numeric tensor input, as the array of the signature's
    dtype: what MLflow's parser builds, without its deep copy of the list (most of the parsing
    time for a wide row). None for anything else, which MLflow's parser reads."""
    import numpy as np

    if input_schema is None or not input_schema.is_tensor_spec() or len(input_schema.inputs) != 1:
        return None
    dtype = input_schema.inputs[0].type
    if not isinstance(value, list) or dtype.kind not in "biuf":
        return None
    return np.asarray(value, dtype=dtype)


# --------------------------------------------------------------------------- named columns
#
# MLflow reads a column-signature request by building a pandas DataFrame of the JSON, casting
# each column (`cast_df_types_according_to_schema`), then checking and casting each column
# again (`_enforce_schema`), and PyFuncModel.predict checks it a third time: ~0.1 ms a column.
# For a signature of required, named, scalar columns, the request is checked and built here
# in one pass: the signature's columns in its order, each of its dtype (extra columns are
# dropped, as MLflow drops them), the same DataFrame MLflow would build. Only values whose
# JSON type is the column's own are taken here (numbers for double/float, integers for
# long/integer, true/false for boolean, strings for string); anything else (null, a string
# in a number column, an index, optional columns, arrays, objects, binary, datetime, ...)
# goes to MLflow's parser, which decides as `mlflow models serve` would, and its 422 is led
# by the column and the type this check found wrong. Two kinds of value MLflow would take
# by changing them are refused here instead (see _altered_by_mlflow).

# MLflow DataType name -> (the JSON values a column of it takes here, its numpy dtype)
_COLUMN_TYPES: dict[str, tuple[frozenset, str | None]] = {
    "double": (frozenset({float, int}), "float64"),
    "float": (frozenset({float, int}), "float32"),
    "long": (frozenset({int}), "int64"),
    "integer": (frozenset({int}), "int32"),
    "boolean": (frozenset({bool}), "bool"),
    "string": (frozenset({str}), None),
}
_JSON_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array"}


class _Columns:
    """What the fast path needs of a signature of required, named, scalar columns."""

    def __init__(self, specs):
        import pandas as pd

        self.names = [s.name for s in specs]
        self.kinds = [s.type.name for s in specs]
        self.index = pd.Index(self.names)  # shared by every DataFrame built (an Index is immutable)
        # one numpy dtype for every column: the DataFrame is one 2-D block
        kind = self.kinds[0]
        self.uniform = kind if len(set(self.kinds)) == 1 and kind != "string" else None

    def describe(self, names) -> str:
        kinds = dict(zip(self.names, self.kinds, strict=True))
        return ", ".join(f"{n!r} ({kinds[n]})" for n in names)


_COLUMN_CACHE: dict[int, tuple[Any, _Columns | None]] = {}


def _column_specs(input_schema) -> _Columns | None:
    """The signature's columns if all are required, named and scalar (see above); else None."""
    if input_schema is None:
        return None
    cached = _COLUMN_CACHE.get(id(input_schema))
    if cached is not None and cached[0] is input_schema:
        return cached[1]
    from mlflow.types import ColSpec, DataType

    specs = input_schema.inputs
    ok = (
        bool(specs)
        and not input_schema.is_tensor_spec()
        and input_schema.has_input_names()
        and all(
            isinstance(s, ColSpec)
            and isinstance(s.type, DataType)
            and s.type.name in _COLUMN_TYPES
            and s.required
            and isinstance(s.name, str)
            for s in specs
        )
        and len({s.name for s in specs}) == len(specs)
    )
    columns = _Columns(specs) if ok else None
    if len(_COLUMN_CACHE) > 256:  # a replica loads few signatures; keep it bounded anyway
        _COLUMN_CACHE.clear()
    _COLUMN_CACHE[id(input_schema)] = (input_schema, columns)  # holding the schema keeps its id unique
    return columns


def _missing(columns: _Columns, missing: list[str], signature) -> InvalidInput:
    s = "s" if len(missing) > 1 else ""
    return InvalidInput(
        f"input does not match the model's signature: missing input column{s} {columns.describe(missing)}",
        expected=schema_json(signature),
    )


def _as_columns(fmt: str, value, columns: _Columns, signature, objects: bool = False):
    """(DataFrame, None) for a request the column check takes; (None, what is wrong or None)
    for one MLflow's parser reads. A missing column raises its 422 here."""
    if fmt == "dataframe_split":
        found = _split_columns(value, columns, signature)
    elif fmt == "dataframe_records":
        found = _records_columns(value, columns, signature)
    elif fmt == "inputs":
        found = _inputs_columns(value, columns, signature)
    else:  # instances
        found = None
    if found is None:
        return None, None
    if isinstance(found, list):  # rows with the signature's columns in its order, nothing else
        return _frame_from_rows(found, columns, signature, objects)
    return _frame_from_columns(found, columns, signature, objects)


def _split_columns(value, columns: _Columns, signature):
    if not isinstance(value, dict) or value.keys() - {"columns", "data"}:
        return None  # an index, or not the split format: MLflow's parser
    header, rows = value.get("columns"), value.get("data")
    if type(header) is not list or type(rows) is not list or not rows:
        return None
    width = len(header)
    if not all(type(row) is list and len(row) == width for row in rows):
        return None
    if header == columns.names:
        return rows
    if len(set(map(type, header)) - {str}) or len(set(header)) != width:
        return None  # duplicated or odd column names
    position = {name: i for i, name in enumerate(header)}
    missing = [n for n in columns.names if n not in position]
    if missing:
        raise _missing(columns, missing, signature)
    by_column = list(zip(*rows, strict=True))
    return {n: by_column[position[n]] for n in columns.names}


def _records_columns(value, columns: _Columns, signature):
    if type(value) is not list or not value or not all(type(r) is dict for r in value):
        return None
    found, missing = {}, []
    for name in columns.names:
        try:
            found[name] = [record[name] for record in value]
        except KeyError:
            if any(name in record for record in value):
                return None  # in some records only: MLflow fills in NaN
            missing.append(name)
    if missing:
        raise _missing(columns, missing, signature)
    return found


def _inputs_columns(value, columns: _Columns, signature):
    if type(value) is not dict or not value:
        return None
    values = list(value.values())
    if all(type(v) is list for v in values):
        lengths = {len(v) for v in values}
        if len(lengths) != 1 or 0 in lengths:
            return None  # ragged or empty: MLflow's parser says what it makes of it
        lists = value
    elif all(type(v) in (float, int, str, bool) for v in values):
        lists = {k: [v] for k, v in value.items()}  # one row
    else:
        return None
    missing = [n for n in columns.names if n not in lists]
    if missing:
        raise _missing(columns, missing, signature)
    return {n: lists[n] for n in columns.names}


def _altered_by_mlflow(kind: str, v) -> bool:
    """A value MLflow's parser would cast into another rather than refuse (pandas' astype runs
    before its check): anything but true/false in a boolean column ("no" is True), a fraction
    in an integer column (1.5 is 1). MLflow's check means to refuse such conversions ("they
    alter the values significantly"); here they are refused."""
    if kind == "boolean":
        return type(v) is not bool and v is not None
    if kind in ("long", "integer"):
        return type(v) is float and not v.is_integer()
    return False


def _wrong_value(name: str, kind: str, v) -> str:
    got = "null" if v is None else _JSON_NAMES.get(type(v), f"a {type(v).__name__}")
    return f"column {name!r} expects {kind}, got {got} {shorten(json.dumps(v, default=str), 60)}"


def _frame_from_rows(rows: list, columns: _Columns, signature, objects: bool = False):
    import itertools

    import numpy as np
    import pandas as pd

    kind = columns.uniform
    if kind is not None and set(map(type, itertools.chain.from_iterable(rows))) <= _COLUMN_TYPES[kind][0]:
        try:
            block = np.array(rows, dtype=_COLUMN_TYPES[kind][1])
        except (OverflowError, ValueError, TypeError):
            return None, None  # e.g. an integer out of the column's range
        return pd.DataFrame(block, columns=columns.index, copy=False), None
    by_column = dict(zip(columns.names, zip(*rows, strict=True), strict=True))
    return _frame_from_columns(by_column, columns, signature, objects)


def _frame_from_columns(found: dict, columns: _Columns, signature, objects: bool = False):
    import numpy as np
    import pandas as pd

    for name, kind in zip(columns.names, columns.kinds, strict=True):
        accepted = _COLUMN_TYPES[kind][0]
        if not set(map(type, found[name])) <= accepted:
            altered = [v for v in found[name] if _altered_by_mlflow(kind, v)]
            if altered:
                raise InvalidInput(
                    f"input does not match the model's signature: {_wrong_value(name, kind, altered[0])}",
                    expected=schema_json(signature),
                )
            return None, _wrong_value(name, kind, next(v for v in found[name] if type(v) not in accepted))
    try:
        if columns.uniform is not None:
            block = np.array([found[n] for n in columns.names], dtype=_COLUMN_TYPES[columns.uniform][1])
            return pd.DataFrame(block.T, columns=columns.index, copy=False), None
        # A string column (dtype None) is a numpy array of objects when the model reads them as
        # objects (strings_as_objects), else a list that pandas' constructor makes its `str` of.
        built = []
        for name, kind in zip(columns.names, columns.kinds, strict=True):
            dtype = _COLUMN_TYPES[kind][1]
            if dtype is None and not objects:
                built.append(list(found[name]))
            else:
                built.append(np.array(found[name], dtype=dtype or object))
        if objects:
            return frame_of_arrays(built, columns.index), None
    except (OverflowError, ValueError, TypeError):
        return None, None
    return pd.DataFrame(dict(zip(columns.names, built, strict=True))), None


def frame_of_arrays(arrays: list, index):
    """A DataFrame of one checked 1-D array per column, strings as objects. pandas' constructor
    checks and converts each column again, about 0.1 ms a column (a list of strings becomes
    Arrow-backed `str`): most of a one-row request's parsing in a table of mixed types
    (bench/serve_load.py's mixed contestant). These arrays are what the frame holds, so they
    go in as they are."""
    import pandas as pd

    rows = pd.RangeIndex(len(arrays[0]))
    build = getattr(pd.DataFrame, "_from_arrays", None)
    if build is None:  # a pandas without it: the checked constructor
        return pd.DataFrame(dict(zip(index, arrays, strict=True)), index=rows, copy=False)
    return build(arrays, columns=index, index=rows, verify_integrity=False)


# --------------------------------------------------------------------------- text/csv

# what pandas.read_csv reads as a missing value (its default na_values)
_CSV_NA = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)


def parse_csv_body(body: bytes, signature):
    """A text/csv body (a header row, then rows) -> the model input, checked against the
    signature as the JSON formats are: what `mlflow models serve` reads of it (pandas.read_csv
    with the signature's column types, then MLflow's schema enforcement), built here without
    pandas' parser for clean rows of a column signature."""
    try:
        text = body.decode("utf-8-sig")  # a byte-order mark is not part of the first column's name
    except UnicodeDecodeError as err:
        raise BadRequest(f"the text/csv body is not UTF-8: {err}") from None
    if not text.strip():
        raise BadRequest("the text/csv body is empty: send a header row, then one row per input")
    input_schema = signature.inputs if signature is not None else None
    hint = None
    rows = _csv_rows(text)
    if rows is not None:
        columns = _column_specs(input_schema)
        if columns is not None:
            data, hint = _csv_columns(rows[0], rows[1:], columns, signature)
            if data is not None:
                return data
    return _enforce(_read_csv(text, input_schema, hint, signature), input_schema, signature, hint)


def _csv_no_rows() -> InvalidInput:
    return InvalidInput("the text/csv body has a header row but no rows to predict")


def _csv_rows(text: str) -> list[list[str]] | None:
    """The header and the rows (blank lines skipped, as pandas skips them); None where the csv
    module refuses the text (pandas' parser then names the problem). A row longer than the
    header is a 400 (pandas would take its first field for an index)."""
    import csv
    import io

    reader = csv.reader(io.StringIO(text), strict=True)
    rows = []
    try:
        for row in reader:
            if not row:
                continue
            if rows and len(row) > len(rows[0]):
                raise BadRequest(
                    f"the body is not valid CSV: line {reader.line_num} has {len(row)} fields, "
                    f"the header {len(rows[0])}",
                )
            rows.append(row)
    except csv.Error:
        return None
    if len(rows) < 2:
        raise _csv_no_rows()
    return rows


def _csv_columns(header: list[str], rows: list[list[str]], columns: _Columns, signature):
    """(DataFrame, None) for clean CSV rows of the signature's columns; (None, what is wrong or
    None) for pandas' parser and MLflow's check to read. A missing column raises its 422."""
    import pandas as pd

    width = len(header)
    if len(set(header)) != width or not all(len(row) == width for row in rows):
        return None, None  # duplicated names (pandas renames them), short rows (pandas fills in NaN)
    position = {name: i for i, name in enumerate(header)}
    missing = [n for n in columns.names if n not in position]
    if missing:
        raise _missing(columns, missing, signature)
    by_column = list(zip(*rows, strict=True))
    built = {}
    for name, kind in zip(columns.names, columns.kinds, strict=True):
        values = by_column[position[name]]
        column = _csv_column(values, kind)
        if column is None:
            return None, _csv_wrong_value(name, kind, values)
        built[name] = column
    if columns.uniform is not None:
        import numpy as np

        block = np.stack([built[n] for n in columns.names])
        return pd.DataFrame(block.T, columns=columns.index, copy=False), None
    return pd.DataFrame(built), None


def _csv_column(values: tuple[str, ...], kind: str):
    """One CSV column as the signature's dtype, or None where pandas decides (missing values,
    padded or unusual numbers, booleans)."""
    import numpy as np
    import pandas as pd

    dtype = _COLUMN_TYPES[kind][1]
    if kind == "boolean":
        return None
    if dtype is None:  # string
        if any(v in _CSV_NA for v in values):
            return None
        return pd.Series(values, dtype=object)  # read_csv's str columns are object columns
    if any("_" in v or v != v.strip() for v in values):
        return None  # Python's float() and int() take "1_000" and padding; pandas' parser need not
    try:
        column = np.array(values, dtype=dtype)
    except (ValueError, OverflowError):
        return None
    if column.dtype.kind == "f" and not np.isfinite(column).all():
        return None  # nan, inf: pandas' spelling of them decides
    return column


def _csv_wrong_value(name: str, kind: str, values) -> str | None:
    """What the check says of a CSV column with a value that is not of its type (missing
    values are pandas' to read: None)."""
    convert = {"double": float, "float": float, "long": int, "integer": int}.get(kind)
    if convert is None:
        return None
    for row, v in enumerate(values, start=1):
        if v in _CSV_NA:
            continue
        try:
            convert(v)
        except ValueError:
            return f"column {name!r} expects {kind}, got {shorten(repr(v), 60)} in row {row}"
    return None


def _read_csv(text: str, input_schema, hint: str | None, signature):
    """pandas.read_csv of the body, with the column types of the signature as `mlflow models
    serve` reads it: 400 for a malformed CSV, 422 for values the types refuse."""
    import io

    import pandas as pd

    dtype = None
    if input_schema is not None and input_schema.has_input_names() and not input_schema.is_tensor_spec():
        try:
            dtype = dict(zip(input_schema.input_names(), input_schema.pandas_types(), strict=True))
        except Exception:  # arrays, objects: no pandas type; MLflow's check reads what pandas infers
            dtype = None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=dtype)
    except pd.errors.EmptyDataError as err:
        raise BadRequest(f"the body is not valid CSV: {err}") from None
    except pd.errors.ParserError as err:
        raise BadRequest(f"the body is not valid CSV: {shorten(str(err).strip())}") from None
    except (ValueError, TypeError, OverflowError) as err:  # a value its column's type refuses
        raise _unreadable("cannot read the CSV with the signature's column types", str(err), hint, signature) from None
    if frame.empty:
        raise _csv_no_rows()
    return frame


# --------------------------------------------------------------------------- images
#
# A model of images (raymaas.modelcode.images: one float32 tensor [-1, C, H, W] of pixels
# 0-255) takes, besides that tensor in JSON, the images themselves: one as the body
# (image/png, image/jpeg), or several as the files of a multipart/form-data body, stacked in
# the order sent, each read as its training read its folder.

IMAGE_FORMATS = ("PNG", "JPEG")  # the Pillow decoders tried: an image folder's files (IMAGE_SUFFIXES)
# Pixels an image may declare. A PNG of 50 million blank RGB pixels is about 150 kB (deflate
# packs up to 1032:1) that decodes to 150 MB: max_request_bytes bounds the body, not what it
# decodes to; and a header alone declares its size, read before any pixel. Pillow's own guard
# (Image.MAX_IMAGE_PIXELS, about 89 million: a warning, then DecompressionBombError at twice
# that) is caught as well.
MAX_IMAGE_PIXELS = 50_000_000


def parse_image_body(body: bytes, content_type: str, signature):
    """An image body (image/png, image/jpeg: one image) or a multipart/form-data body of image
    files -> float32 [n, C, H, W] of pixel values 0-255, each image read as training read it.
    415 for a model that takes no images; 422 naming the image that does not decode, and why."""
    import numpy as np

    shape = image_shape(signature)
    if shape is None:
        raise UnsupportedMediaType(
            "this model takes no images (image bodies are for a model whose input is one float32 tensor "
            "[-1, C, H, W], C 1 or 3): send application/json in one of the MLflow scoring formats "
            f"{list(SCORING_FORMATS)}, or text/csv (a header row, then rows)",
            expected=schema_json(signature),
        )
    mime = content_type.split(";")[0].strip().lower()
    if mime == MULTIPART_MEDIA_TYPE:
        images = [read_image(data, shape, label) for label, data in form_files(body, content_type)]
    else:
        images = [read_image(body, shape, "the image")]
    return np.stack(images)


def read_image(data: bytes, shape: tuple[int, int, int], label: str):
    """One encoded image -> float32 [C, H, W], as training read its folder
    (raymaas.modelcode.images); label names it in a 413 or 422."""
    # Imported here: PIL.Image takes about 0.1 s to import, paid only by a replica sent an image.
    from PIL import Image

    from raymaas.modelcode.images import pixels

    _, height, width = shape
    if not data:
        raise InvalidInput(f"{label} is empty: send a PNG or JPEG file")
    stream = io.BytesIO(data)
    try:
        with Image.open(stream, formats=IMAGE_FORMATS) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise TooLarge(
                    f"{label} is {image.width}x{image.height} pixels, over the limit of {MAX_IMAGE_PIXELS:,}: "
                    f"the model reads {width}x{height}, so send it smaller",
                )
            return pixels(image, shape)
    except ServingError:
        raise
    except Image.DecompressionBombError as err:
        raise TooLarge(f"{label} is too large to decode: {err}") from None
    except Exception as err:  # UnidentifiedImageError, OSError (truncated), SyntaxError (a bad PNG chunk), ...
        reason = f"{type(err).__name__}: {err}".replace(f" {stream!r}", "")  # Pillow names the stream
        raise InvalidInput(f"{label} does not decode as a PNG or JPEG image ({shorten(reason, 300)})") from None


def form_files(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """The files of a multipart/form-data body, in order: (a label naming the part, its bytes).
    A part is a file if its Content-Type is image/*, or it has a filename and no type or
    application/octet-stream; any other part (a text field, a text/plain file) is a 422."""
    if "\r" in content_type or "\n" in content_type:
        raise BadRequest("the Content-Type header holds a line break")
    # The standard library's MIME parser reads the body once the header is put before it: it
    # takes the boundary from the header and keeps each part's bytes as sent (8bit, binary).
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    boundary = message.get_boundary()
    if not boundary:
        raise BadRequest("multipart/form-data needs a boundary: Content-Type: multipart/form-data; boundary=...")
    parts = message.get_payload()
    if not message.is_multipart() or not parts:
        raise InvalidInput(
            f"the multipart/form-data body has no parts (none starts with --{boundary}): send image files"
        )
    if any(isinstance(d, email.errors.CloseBoundaryNotFoundDefect) for d in message.defects):
        raise BadRequest(f"the multipart/form-data body ends before its closing boundary --{boundary}--")
    files = []
    for i, part in enumerate(parts, start=1):
        filename = part.get_filename()
        field = part.get_param("name", header="content-disposition")
        label = f"part {i}" + (f" ({filename!r})" if filename else f" (field {field!r})" if field else "")
        declared = part.get_content_type() if "content-type" in part else None  # get_content_type's default: text/plain
        if part.is_multipart():
            raise InvalidInput(f"{label} is {declared}, not an image: send each image as a part of its own")
        if not ((declared or "").startswith("image/") or (filename and declared in (None, "application/octet-stream"))):
            raise InvalidInput(
                f"{label} is {declared or 'a form field'}, not an image: each part of the body is a PNG or JPEG "
                "file (Content-Type image/png or image/jpeg, or a filename); form fields are not read "
                "(to /explain, give target in the URL: ?target=...)",
            )
        files.append((label, part.get_payload(decode=True) or b""))
    return files


def schema_json(signature) -> list | None:
    """The signature's inputs as JSON (what a 422 says is expected), or None."""
    return signature.inputs.to_dict() if signature is not None and signature.inputs is not None else None


def shorten(text: str, limit: int = 600) -> str:
    """MLflow's messages repeat the whole input; keep what says what is wrong."""
    return text if len(text) <= limit else text[:limit] + " ..."


def check_params(params: dict, signature) -> dict:
    """params against the signature's params schema, as MLflow's predict would check them, but
    as a 422 naming the parameter (in predict, a bad value is the model's error: a 500)."""
    declared = {p.name: p for p in signature.params.params} if signature is not None and signature.params else {}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        known = ", ".join(f"{p.name} ({p.dtype})" for p in declared.values()) or "none"
        raise InvalidInput(f"unknown params {unknown}: this model takes {known}")
    from mlflow.exceptions import MlflowException
    from mlflow.models.utils import _enforce_params_schema

    try:
        return _enforce_params_schema(params, signature.params)
    except MlflowException as err:
        raise InvalidInput(f"params: {err.message}") from None


def predictions_json(result) -> bytes:
    """The body of a 200: {"predictions": ...} in MLflow's scoring server's JSON."""
    from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

    return json.dumps({"predictions": _get_jsonable_obj(result, pandas_orient="records")}, cls=NumpyEncoder).encode()


def error_response(err: ServingError, headers: dict | None = None):
    """The HTTP answer of a ServingError: its status, its JSON body, the headers its status
    asks for (a 401's scheme, a 503's Retry-After) over the headers given (e.g. the version's).
    The one place an error becomes a response."""
    from starlette.responses import Response

    return Response(
        json.dumps(err.body).encode(),
        status_code=err.status,
        media_type="application/json",
        headers={**(headers or {}), **err.headers()},
    )


def relative_path(request) -> list[str]:
    """The request's path below its application's route prefix, as segments."""
    path = request.scope.get("path", "/")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return [p for p in path.split("/") if p]
