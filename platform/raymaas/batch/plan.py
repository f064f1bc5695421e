"""What a batch-scoring job decides before Ray starts: which model version, which input files,
how their columns become the model's input, and what the output folder already holds.

Everything here reads file footers, CSV headers and the registry; nothing starts Ray or creates
an MLflow run, so a job that cannot work exits 2 before it costs anything (SpecError).

The rules (the README's batch section should say the same):

- **Units.** The input is a Parquet or CSV file, or a folder of them (searched recursively;
  names starting with `.` or `_` are skipped, as Spark's and Ray's readers skip them). Each
  file is one unit: its scored rows go to `OUTPUT/part-<name>.parquet`, written under a
  temporary name and renamed once complete, so a unit is done exactly when its part file
  exists. A unit is named after the file's path below the input folder, so the names do not
  shift when files are added. A big single file is one unit (its resumption restarts it):
  split the input into files for finer resumption, as Spark and Ray write tables anyway.
- **Row counts are known up front**: a Parquet footer holds them; a CSV file is counted once
  with the same pyarrow parser and options Ray Data reads it with. The driver commits a unit
  when it has seen that many rows of it, whatever order Ray Data delivers blocks in.
- **Signatures.** A model whose signature is named columns gets those columns by name (other
  input columns are ignored unless passed through). A model whose signature is one tensor
  `[-1, n]` (the digits MLP: float32 `[-1, 64]`) gets `feature_columns`, by default every
  input column except the pass-through ones, in file order; their number must be n (the
  product of the tensor's dimensions after the first). A sequence model's tensor
  `[-1, length, channels]` is built from Parquet list columns instead: one column of lists of
  lists (steps x channels), or `channels` columns of lists of numbers, one a channel in the
  order named; a row whose sequence is null, of another length, or missing a step is rejected.
- **Types.** Integer and float columns feed float inputs, integer columns integer inputs,
  booleans boolean, strings string; anything else exits 2 naming the column. A CSV feature
  column is read as text and converted per batch, so one bad value rejects its row, not the
  job; a CSV column in which no value of the first block is a number is the wrong column and
  exits 2. CSV pass-through columns keep the types pyarrow infers from the first block (an
  empty one is text), so that every block of every file has one schema.
- **Images.** A folder holding PNG or JPEG files (at any depth) and no table is an image
  folder: it feeds an image model, whose signature is a float tensor `[-1, C, H, W]` with C 1
  (mode L) or 3 (RGB), pixel values 0-255, as the supervised job logs one. A unit is a folder's
  own images (a class folder, or the input folder itself), `part-<folder>.parquet`, so a unit is
  not a file per image. Each output row names its image in `path`, relative to the input; an
  image folder has no columns to pass through. The files are decoded by the scorer, not here:
  one that does not decode is a rejected row naming it, not a refused job. An image folder
  for any other model, or a table for an image model, exits 2.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from raymaas.model_refs import ModelRef, ModelRefError
from raymaas.modelcode.images import MODES, image_shape
from raymaas.specs import SpecError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
IMAGES = "images"  # the format of a folder of PNG or JPEG files
# The column read_binary_files gives each image file's contents in.
BYTES_COLUMN = "bytes"
# The column Ray Data's include_paths adds: which file a row came from. An input column of the
# same name would be taken for it (Ray keeps or overwrites it), so such an input is refused.
PATH_COLUMN = "path"
# Written into OUTPUT when a job starts: the run, model and input the folder belongs to.
MARKER = "_raymaas_predict.json"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
# MLflow column types -> the numpy dtype a batch column is converted to.
COLUMN_DTYPES = {
    "float": "float32",
    "double": "float64",
    "integer": "int32",
    "long": "int64",
    "boolean": "bool",
    "string": "str",
}


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class PinnedModel:
    """A registered model version, pinned: every actor loads `uri`, even if the alias moves."""

    name: str
    version: str
    requested: str  # what the spec said: NAME, NAME@ALIAS, models:/... (raymaas.model_refs)
    run_id: str | None  # the run that produced the version
    experiment_id: str | None  # that run's experiment: where the scoring run goes
    signature: object  # mlflow.models.ModelSignature
    # Where the version's files are (MLflow's download URI): what the actors load, without a
    # registry look-up each (which imports MLflow's SQL store: seconds per actor on 2 cores).
    download_uri: str

    @property
    def uri(self) -> str:
        return ModelRef(self.name, version=self.version).uri


def resolve_model(client, requested: str) -> PinnedModel:
    """The registered version a reference (raymaas.model_refs: NAME is its champion) stands
    for now, with its signature; SpecError naming the reference and what is wrong with it: its
    form, a logged model (batch scoring pins a registered version), what the registry lacks."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from raymaas.tracking.registry import find_version

    try:
        ref = ModelRef.parse(requested).registered("batch scoring")
    except ModelRefError as err:
        raise SpecError(str(err)) from None
    try:
        mv = find_version(client, ref)
    except LookupError as err:
        raise SpecError(f"model {requested!r}: {err}") from None
    experiment_id = None
    if mv.run_id:
        try:
            experiment_id = client.get_run(mv.run_id).info.experiment_id
        except MlflowException:
            experiment_id = None  # the run was deleted; the version outlives it
    uri = ModelRef(ref.name, version=str(mv.version)).uri
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as err:
        raise SpecError(f"model {requested!r}: cannot read {uri}: {err}") from None
    if info.signature is None or info.signature.inputs is None:
        raise SpecError(
            f"model {requested!r} ({uri}) has no input signature: batch scoring checks the input against it "
            "before it starts; log the model with a signature"
        )
    download_uri = client.get_model_version_download_uri(ref.name, str(mv.version))
    return PinnedModel(
        ref.name, str(mv.version), requested, mv.run_id or None, experiment_id, info.signature, download_uri
    )


def check_probabilities(model: PinnedModel) -> None:
    """Probabilities come from models that declare a boolean `probabilities` parameter in their
    signature (MLflow's inference params): predict(x, params={"probabilities": True}) then
    returns them (TorchClassifier: the prediction and a probability_<class> column per class)."""
    params = model.signature.params
    names = {p.name: p for p in params.params} if params is not None else {}
    declared = names.get("probabilities")
    if declared is not None and getattr(declared.dtype, "name", "") == "boolean":
        return
    outputs = model.signature.outputs.to_dict() if model.signature.outputs is not None else "undeclared"
    raise SpecError(
        f"probabilities: {model.name} version {model.version} cannot return class probabilities: its output "
        f"is {json.dumps(outputs)} and its signature declares no boolean `probabilities` parameter"
    )


# --------------------------------------------------------------------------- the input


@dataclass(frozen=True)
class Features:
    """How a batch's columns become the model's input; each model actor gets one."""

    # "tensor" (one array of scalar columns), "sequence" (one array of list columns), "image"
    # (one array of decoded image files) or "columns" (a DataFrame of named columns)
    kind: str
    columns: tuple[str, ...]  # the input columns fed to the model, in the model's order
    dtypes: tuple[str, ...]  # the numpy dtype each is converted to ("str" for strings)
    # kinds "tensor", "sequence", "image": the signature's shape, -1 first
    tensor_shape: tuple[int, ...] | None = None
    # kind "sequence": the shape of one row's value of each column: the tensor's row shape for a
    # single column holding it all (lists of lists: steps x channels), the row shape without its
    # last dimension for columns that are one channel each
    column_shape: tuple[int, ...] | None = None

    @property
    def image_mode(self) -> str:
        """Kind "image": the Pillow mode each image is converted to, from the tensor's channels."""
        return MODES[self.tensor_shape[1]]

    def expected(self, dtype: str) -> str:
        """A dtype as the signature names it: MLflow's column types, numpy's for a tensor."""
        if self.kind in ("tensor", "sequence", "image"):
            return dtype
        return {v: k for k, v in COLUMN_DTYPES.items()}[dtype]

    def describe(self) -> str:
        if self.kind == "image":
            _, _, height, width = self.tensor_shape
            tensor = f"tensor {self.dtypes[0]} {list(self.tensor_shape)}"
            return f"{tensor} from image files, read as {self.image_mode} {height}x{width}"
        if self.kind == "tensor":
            return f"tensor {self.dtypes[0]} {list(self.tensor_shape)} from {len(self.columns)} columns"
        if self.kind == "sequence":
            tensor = f"tensor {self.dtypes[0]} {list(self.tensor_shape)}"
            if self.column_shape == self.tensor_shape[1:]:
                return f"{tensor} from list column {self.columns[0]!r}"
            s = "s" if len(self.columns) > 1 else ""
            return f"{tensor} from {len(self.columns)} list column{s}, one channel each"
        return f"{len(self.columns)} named columns"


@dataclass(frozen=True)
class Unit:
    """One input file: the unit that is scored, committed and skipped on resumption as a whole."""

    index: int
    path: str  # absolute, as Ray Data's `path` column gives it; images: their folder
    name: str  # OUTPUT/part-<name>.parquet
    num_rows: int
    files: tuple[str, ...] = ()  # images: the folder's image files (absolute), one row each

    @property
    def part_file(self) -> str:
        return f"{PART_PREFIX}{self.name}{PART_SUFFIX}"


@dataclass(frozen=True)
class InputPlan:
    """The input's files, their format, and how their columns are read and fed to the model."""

    root: str
    format: str  # "parquet", "csv" or "images"
    units: tuple[Unit, ...]
    features: Features
    passthrough: tuple[str, ...]
    # pyarrow type of each pass-through column (CSV: what they are read as, from the first block)
    passthrough_types: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return sum(u.num_rows for u in self.units)

    def csv_column_types(self) -> dict:
        """CSV: the pyarrow type each read column is given, so that every block of every file
        has the same schema (Ray Data infers types per block otherwise): features as text,
        converted per row by the scorer; pass-through columns as their first block has them."""
        import pyarrow as pa

        types = {c: pa.string() for c in self.features.columns}
        types.update({c: t for c, t in self.passthrough_types.items() if c not in types})
        return types


def list_input_files(path: Path, fmt: str = "auto") -> tuple[str, list[Path]]:
    """(format, files) of a file or folder; SpecError if there is nothing to read or the
    formats are mixed. A folder is an image folder when it holds images and no table, as the
    supervised job infers it (raymaas.supervised.data.infer_format)."""
    if path.is_file():
        if fmt in ("auto", IMAGES) and _image_files([path]):
            raise SpecError(
                f"input {path} is one image: give the folder of images to score ({path.parent}); each output row "
                "names its image by its path in that folder"
            )
        files = [path]
    elif path.is_dir():
        visible = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
        files = [
            p for p in visible if FORMATS.get(p.suffix.lower()) in ((fmt,) if fmt != "auto" else set(FORMATS.values()))
        ]
        if not files and fmt in ("auto", IMAGES):
            files = _image_files(visible)
            if files:
                return IMAGES, files
        if not files:
            raise SpecError(
                f"input {path}: no Parquet or CSV files (*.parquet, *.pq, *.csv) or images (*.png, *.jpg, *.jpeg) in it"
            )
    else:
        raise SpecError(f"input {path} does not exist")
    if fmt == IMAGES:
        raise SpecError(f"input {path} is not an image (*.png, *.jpg, *.jpeg) but format is {IMAGES}")
    found = {FORMATS.get(p.suffix.lower()) for p in files}
    if fmt != "auto":
        return fmt, files
    if len(found) != 1 or None in found:
        kinds = ", ".join(sorted(str(f) for f in found))
        raise SpecError(f"input {path}: cannot tell its format ({kinds}): one format a job; set format")
    return found.pop(), files


def unit_name(root: Path, file: Path) -> str:
    """The part file's name for an input file: its path below the input folder, made safe."""
    rel = file.name if root.is_file() else str(file.relative_to(root))
    return _safe_name(rel[: -len(file.suffix)] if file.suffix else rel)


def _safe_name(relative: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", relative.replace("/", "__"))


def plan_input(
    path: str,
    fmt: str,
    signature,
    passthrough: list[str],
    feature_columns: list[str] | None,
    prediction_column: str,
) -> InputPlan:
    """List the input's units and check every file's columns and types against the signature."""
    root = Path(path)
    fmt, files = list_input_files(root, fmt)
    if fmt == IMAGES:
        return _plan_images(root, files, signature, passthrough, feature_columns, prediction_column)
    schemas = [(f, _file_schema(f, fmt)) for f in files]
    first_file, first = schemas[0]
    features = _features(signature, first, passthrough, feature_columns, first_file)
    if prediction_column in passthrough:
        raise SpecError(f"prediction_column {prediction_column!r} is also a pass-through column: rename one")
    for file, schema in schemas:
        _check_file(file, schema, features, passthrough, fmt)
    names: dict[str, Path] = {}
    units = []
    for i, (file, _) in enumerate(schemas):
        name = unit_name(root, file)
        if name in names:
            raise SpecError(f"input files {names[name]} and {file} would both be written to {PART_PREFIX}{name}")
        names[name] = file
        units.append(Unit(i, str(file.resolve()), name, _num_rows(file, fmt)))
    return InputPlan(
        str(root.resolve()),
        fmt,
        tuple(units),
        features,
        tuple(passthrough),
        {c: _readable_type(first.types[c]) for c in passthrough},
    )


def _image_files(files: list[Path]) -> list[Path]:
    # Imported here, and only once a folder holds no table: raymaas.supervised.images imports
    # torch (seconds), and this module is imported by every model actor (raymaas.batch.scorer).
    from raymaas.supervised.images import is_image_file

    return [f for f in files if is_image_file(f)]


def _image_words(shape: tuple[int, ...]) -> str:
    _, channels, height, width = shape
    return f"{MODES[channels]} images of {height}x{width} pixels"


def _signature_words(signature) -> str:
    """What a model's signature takes, in words, for a refusal."""
    import numpy as np

    inputs = signature.inputs
    if inputs.is_tensor_spec():
        return ", ".join(f"a {np.dtype(t.type)} tensor {list(t.shape)}" for t in inputs.inputs)
    names = [t.name for t in inputs.inputs]
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"named columns ({shown})"


def _plan_images(
    root: Path, files: list[Path], signature, passthrough: list[str], feature_columns, prediction_column: str
) -> InputPlan:
    """An image folder's units, one a folder holding images; SpecError if the model takes no
    images or the options name columns an image folder lacks."""
    import numpy as np
    import pyarrow as pa

    image = image_shape(signature)
    if image is None:
        raise SpecError(
            f"input {root} is a folder of {len(files)} images (*.png, *.jpg, *.jpeg), but the model takes "
            f"{_signature_words(signature)}: images feed a model whose signature is a float32 tensor "
            "[-1, C, H, W] of pixels 0-255, C 1 (mode L) or 3 (RGB)"
        )
    if passthrough:
        raise SpecError(
            f"passthrough_columns {passthrough}: an image folder has no columns to pass through; each output row "
            f"names its image in {PATH_COLUMN!r}, relative to {root}"
        )
    if feature_columns:
        raise SpecError("feature_columns applies to tables; an image model takes each image whole")
    if prediction_column == PATH_COLUMN:
        raise SpecError(f"prediction_column {PATH_COLUMN!r} is the column naming each image: rename it")
    # The paths Ray Data is given and gives back in its `path` column: below the resolved input
    # folder, so that a file's folder (its unit) is found by name, and its path in the input
    # folder by cutting the folder off, even where a file is a link.
    base = root.resolve()
    folders: dict[Path, list[str]] = {}
    for file in files:
        relative = file.relative_to(root)
        folders.setdefault(relative.parent, []).append(str(base / relative))
    names: dict[str, Path] = {}
    units = []
    for i, (folder, paths) in enumerate(sorted(folders.items())):
        # the input folder's own images are named after it (photos/ -> part-photos.parquet)
        name = _safe_name(base.name or "images") if folder == Path(".") else _safe_name(str(folder))
        if name in names:
            raise SpecError(
                f"the images of {root / names[name]} and {root / folder} would both be written to "
                f"{PART_PREFIX}{name}{PART_SUFFIX}"
            )
        names[name] = folder
        units.append(Unit(i, str(base / folder), name, len(paths), tuple(paths)))
    dtype = str(np.dtype(signature.inputs.inputs[0].type))
    features = Features("image", (BYTES_COLUMN,), (dtype,), (-1, *image))
    # Each image's path is its row's one kept column, a string: part files without a scored row too.
    return InputPlan(str(base), IMAGES, tuple(units), features, (PATH_COLUMN,), {PATH_COLUMN: pa.string()})


def _readable_type(t):
    """A CSV column empty in its first block is inferred as null; it is read as text."""
    import pyarrow as pa

    return pa.string() if pa.types.is_null(t) else t


@dataclass(frozen=True)
class _Schema:
    names: list[str]
    types: dict  # name -> pyarrow type (CSV: inferred from the first block)
    sample: object = None  # CSV: the first block (pyarrow Table), for columns read as text


def _file_schema(file: Path, fmt: str) -> _Schema:
    import pyarrow as pa

    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(file)
            return _Schema(list(schema.names), {f.name: f.type for f in schema})
        reader = _open_csv(file)
        try:
            sample = reader.read_next_batch()
            table = pa.Table.from_batches([sample])
        except StopIteration:
            table = reader.schema.empty_table()
        return _Schema(list(reader.schema.names), {f.name: f.type for f in reader.schema}, table)
    except (OSError, pa.ArrowInvalid) as err:
        raise SpecError(f"input file {file}: cannot read it as {fmt}: {err}") from None


def csv_options():
    """The pyarrow CSV options of every read: the planning pass and Ray Data's read_csv."""
    import pyarrow.csv as pcsv

    return pcsv.ReadOptions(block_size=8 << 20), pcsv.ParseOptions()


def _open_csv(file: Path, convert_options=None):
    import pyarrow.csv as pcsv

    read_options, parse_options = csv_options()
    return pcsv.open_csv(file, read_options=read_options, parse_options=parse_options, convert_options=convert_options)


def _num_rows(file: Path, fmt: str) -> int:
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    import pyarrow.csv as pcsv

    # Ray Data's reader would count the same rows: same parser, same options (blank lines
    # skipped, no newlines inside values). One column converted, as text: the cheapest pass.
    first = _open_csv(file).schema.names[0]
    options = pcsv.ConvertOptions(include_columns=[first], column_types={first: pa.string()})
    try:
        return sum(batch.num_rows for batch in _open_csv(file, options))
    except pa.ArrowInvalid as err:
        raise SpecError(f"input file {file}: not valid CSV: {err}") from None


def _features(signature, schema: _Schema, passthrough: list[str], feature_columns, file: Path) -> Features:
    import numpy as np
    from mlflow.types import ColSpec, DataType

    inputs = signature.inputs
    if inputs.is_tensor_spec():
        if len(inputs.inputs) != 1:
            raise SpecError(
                f"the model takes {len(inputs.inputs)} named tensors; batch scoring feeds one tensor "
                "or named columns (its signature: " + json.dumps(inputs.to_dict()) + ")"
            )
        spec = inputs.inputs[0]
        dtype = np.dtype(spec.type)
        shape = tuple(spec.shape)
        if image_shape(signature) is not None:
            raise SpecError(
                f"the model takes a {dtype} tensor {list(shape)}, {_image_words(shape)}, but {file} is a table: "
                "give a folder of its images (*.png, *.jpg, *.jpeg)"
            )
        width = math.prod(shape[1:]) if len(shape) > 1 else 1
        if dtype.kind not in "biuf" or any(d < 0 for d in shape[1:]) or not shape or shape[0] != -1:
            raise SpecError(
                f"the model's tensor input {dtype} {list(shape)} cannot be built from table columns "
                "(batch scoring feeds a numeric tensor [-1, n] or named columns)"
            )
        columns = list(feature_columns) if feature_columns else [c for c in schema.names if c not in passthrough]
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise SpecError(f"feature_columns {missing} are not columns of {file}")
        if any(is_list_type(schema.types[c]) for c in columns):
            return _sequence_features(schema, columns, dtype, shape, bool(feature_columns), file)
        if len(columns) != width:
            rule = "feature_columns" if feature_columns else "every column except the pass-through ones"
            raise SpecError(
                f"the model takes a {dtype} tensor {list(shape)}: {width} values a row, but {file} gives "
                f"{len(columns)} feature columns ({rule}); set feature_columns or passthrough_columns"
            )
        return Features("tensor", tuple(columns), (str(dtype),) * len(columns), shape)
    if feature_columns:
        raise SpecError("feature_columns applies to tensor signatures; this model names its input columns")
    columns, dtypes = [], []
    for spec in inputs.inputs:
        if not isinstance(spec, ColSpec) or not isinstance(spec.type, DataType) or spec.type.name not in COLUMN_DTYPES:
            raise SpecError(
                f"the model's input {spec.to_dict()} is not a scalar column of "
                f"{', '.join(COLUMN_DTYPES)}: batch scoring cannot build it from a table"
            )
        if spec.name is None:
            raise SpecError("the model's signature has unnamed columns: batch scoring matches columns by name")
        if not spec.required and spec.name not in schema.names:
            continue  # an optional column the input lacks: the model does without it
        columns.append(spec.name)
        dtypes.append(COLUMN_DTYPES[spec.type.name])
    return Features("columns", tuple(columns), tuple(dtypes))


def is_list_type(t) -> bool:
    """A pyarrow list type: what a Parquet column of sequences is (CSV has none)."""
    import pyarrow.types as pat

    return pat.is_list(t) or pat.is_large_list(t) or pat.is_fixed_size_list(t)


def _sequence_features(schema: _Schema, columns: list[str], dtype, shape: tuple, named: bool, file: Path) -> Features:
    """A tensor built from list columns: one column whose rows hold the tensor's whole row
    (lists of lists for [-1, length, channels]), or one column per channel (the tensor's last
    dimension), each row a list of `length` numbers. SpecError naming the column otherwise."""
    tensor = f"the model takes a {dtype} tensor {list(shape)}"
    rule = "feature_columns" if named else "every column except the pass-through ones"
    lists = [c for c in columns if is_list_type(schema.types[c])]
    scalars = [c for c in columns if c not in lists]
    if scalars:
        raise SpecError(
            f"{tensor}, built from list columns or from scalar columns, not both: {file} gives list column(s) "
            f"{', '.join(map(repr, lists))} and scalar column(s) {', '.join(map(repr, scalars))} as features "
            f"({rule}); set feature_columns or passthrough_columns"
        )
    row = tuple(shape[1:])
    depths = {c: _list_depth(schema.types[c]) for c in lists}
    channel_depth = len(row) - 1  # the list levels of a column that is one channel of the tensor
    if len(lists) == 1 and depths[lists[0]] == len(row):
        column_shape = row
    elif channel_depth and len(lists) == row[-1] and all(d == channel_depth for d in depths.values()):
        column_shape = row[:-1]
    else:
        want = len(row) if len(lists) == 1 else channel_depth
        odd = [c for c in lists if depths[c] != want] if want else []
        if odd:
            gives = f"list column {odd[0]!r} ({schema.types[odd[0]]})"
        else:
            gives = f"{len(lists)} list columns ({', '.join(map(repr, lists))})"
        raise SpecError(
            f"{tensor}, built from {_sequence_forms(row)}; but {file} gives {gives} as features ({rule}): "
            "set feature_columns or passthrough_columns"
        )
    for c in lists:
        problem = _sequence_problem(schema.types[c], column_shape, str(dtype))
        if problem:
            raise SpecError(f"input file {file}: column {c!r} {problem} ({tensor})")
    return Features("sequence", tuple(lists), (str(dtype),) * len(lists), tuple(shape), column_shape)


def _sequence_forms(row: tuple[int, ...]) -> str:
    """The list columns a tensor of that row shape is built from, in words."""
    if len(row) == 1:
        return f"one list column of {row[0]} numbers a row"
    dims = " x ".join(map(str, row))
    if len(row) == 2:
        whole = f"one column of lists of lists ({row[0]} steps x {row[1]} channels)"
        return f"{whole} or {row[1]} list column{'s' if row[1] > 1 else ''} of {row[0]} steps, one a channel"
    inner = " x ".join(map(str, row[:-1]))
    return (
        f"one column of lists nested {len(row)} deep ({dims}) or {row[-1]} columns nested {len(row) - 1} deep ({inner})"
    )


def _list_depth(t) -> int:
    """How many list levels a type has: 0 for a scalar, 2 for lists of lists."""
    depth = 0
    while is_list_type(t):
        t, depth = t.value_type, depth + 1
    return depth


def _sequence_problem(t, column_shape: tuple[int, ...], dtype: str) -> str | None:
    """Why a column cannot feed a sequence tensor of numpy dtype, a row's value being of
    column_shape, or None. Lengths are checked per row by the scorer; a fixed-size list's here."""
    import pyarrow.types as pat

    if pat.is_null(t):
        return None  # no values (yet): its rows are rejected as null
    if _list_depth(t) != len(column_shape):
        levels = " of ".join(["lists"] * len(column_shape))
        return f"is {t}, where the model needs {levels} of numbers"
    leaf = t
    for size in column_shape:
        if pat.is_fixed_size_list(leaf) and leaf.list_size != size:
            return f"is {t}: lists of exactly {leaf.list_size} values where the model takes {size}"
        leaf = leaf.value_type
    if dtype == "bool":
        ok = pat.is_boolean(leaf)
    elif dtype.startswith(("int", "uint")):
        ok = pat.is_integer(leaf)
    else:  # booleans as 0 and 1, as the sequence trainer reads them
        ok = pat.is_integer(leaf) or pat.is_floating(leaf) or pat.is_boolean(leaf)
    return None if ok else f"holds lists of {leaf}, not numbers the model takes as {dtype}"


def _check_file(file: Path, schema: _Schema, features: Features, passthrough: list[str], fmt: str) -> None:
    if PATH_COLUMN in schema.names:
        raise SpecError(
            f"input file {file} has a column named {PATH_COLUMN!r}, the name Ray Data gives the column that says "
            "which file a row came from (raymaas resumes by file): rename that column"
        )
    missing = [c for c in (*features.columns, *passthrough) if c not in schema.names]
    if missing:
        s = "s" if len(missing) > 1 else ""
        expected = [c for c in missing if c in features.columns]
        what = "the model's input" if expected else "pass-through"
        raise SpecError(
            f"input file {file} lacks {what} column{s} {', '.join(map(repr, missing))} "
            f"(its columns: {', '.join(schema.names)})"
        )
    for name, dtype in zip(features.columns, features.dtypes):
        if features.kind == "sequence":
            problem = _sequence_problem(schema.types[name], features.column_shape, dtype)
        else:
            problem = _type_problem(schema, name, dtype, features.expected(dtype), fmt)
        if problem:
            raise SpecError(f"input file {file}: column {name!r} {problem}")


def _type_problem(schema: _Schema, name: str, dtype: str, want: str, fmt: str) -> str | None:
    """Why a column cannot feed an input of that numpy dtype (`want` as the signature says it), or None."""
    import pyarrow.types as pat

    t = schema.types[name]
    if pat.is_null(t):
        return None  # no values (yet): its rows are rejected as null
    if dtype == "str":
        ok = pat.is_string(t) or pat.is_large_string(t) or fmt == "csv"
    elif dtype == "bool":
        ok = pat.is_boolean(t) or (fmt == "csv" and pat.is_string(t))
    elif dtype.startswith("int"):
        ok = pat.is_integer(t)
    else:
        ok = pat.is_integer(t) or pat.is_floating(t)
    if ok:
        return None
    if fmt == "csv" and pat.is_string(t) and dtype != "str":
        # Read as text: a few bad values are rejected row by row; a column of words is the wrong one.
        values = [v for v in schema.sample.column(name).to_pylist() if v is not None]
        if any(_parses(v, dtype) for v in values):
            return None
        shown = ", ".join(repr(v) for v in values[:3])
        return f"holds text ({shown}, ...) where the model expects {want}"
    return f"is {t}, the model expects {want}" + (" (a Parquet column's type is its own)" if fmt == "parquet" else "")


def _parses(value: str, dtype: str) -> bool:
    try:
        (int if dtype.startswith("int") else float)(value)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- the output


@dataclass(frozen=True)
class OutputPlan:
    """The output and errors folders, and which units an earlier attempt of this run finished."""

    output: str
    errors: str
    done: frozenset[str]  # unit names whose part file exists
    resumed: bool  # an earlier attempt of the same run wrote this folder
    clear: bool  # --overwrite: empty both folders first


def errors_folder(output: Path) -> Path:
    """Rejected rows go beside the output, not inside it: a reader of OUTPUT as one table
    (pandas, Spark, Ray) would otherwise mix in files of another schema."""
    return output.with_name(output.name + "-errors")


def plan_output(output: str, run_name: str | None, model: PinnedModel, input_root: str, overwrite: bool) -> OutputPlan:
    """Refuse an output folder that holds anything but this run's own earlier work (unless
    overwrite), and say which units are done."""
    out = Path(output)
    errors = errors_folder(out)
    for folder in (out, errors):
        if folder.exists() and not folder.is_dir():
            raise SpecError(f"output {folder} exists and is not a folder")
    contents = _visible(out) + _visible(errors)
    marker = _read_marker(out)
    if overwrite:
        foreign = [p for p in contents if not _ours(p)]
        if foreign and marker is None:
            raise SpecError(
                f"output {out}: --overwrite would delete files raymaas did not write there (e.g. {foreign[0]}); "
                "choose another output folder"
            )
        return OutputPlan(str(out), str(errors), frozenset(), False, clear=True)
    if not contents:
        return OutputPlan(str(out), str(errors), frozenset(), False, clear=False)
    if marker is None or run_name is None or marker.get("run_name") != run_name:
        by = f" by run {marker['run_name']!r}" if marker and marker.get("run_name") else ""
        cont = f"; mlflow.run_name={marker['run_name']} (--run-name) continues that run" if by else ""
        raise SpecError(
            f"output {out} exists and is not empty ({len(contents)} files, written{by or ' by something else'}): "
            f"--overwrite (overwrite: true) replaces it{cont}"
        )
    if marker.get("model") != model.uri:
        raise SpecError(
            f"run {run_name!r} scored {out} with {marker.get('model')}, but {model.requested} is {model.uri} now: "
            f"give model {marker.get('model')} to finish it, or a new run name and another output"
        )
    if marker.get("input") != input_root:
        raise SpecError(f"run {run_name!r} scored {marker.get('input')} into {out}, not {input_root}")
    done = frozenset(
        p.name[len(PART_PREFIX) : -len(PART_SUFFIX)]
        for p in out.glob(f"{PART_PREFIX}*{PART_SUFFIX}")
        if not p.name.startswith(".")
    )
    return OutputPlan(str(out), str(errors), done, resumed=True, clear=False)


def marker_content(run_name: str, model: PinnedModel, input_root: str) -> dict:
    return {"run_name": run_name, "model": model.uri, "input": input_root}


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _visible(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _ours(path: Path) -> bool:
    """A file a batch job writes: a part file, a temporary one, the marker."""
    return path.name == MARKER or path.name.endswith(PART_SUFFIX) or path.name.endswith(".tmp")
