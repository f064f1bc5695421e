"""Data sources for supervised jobs.

Built-in sets (`digits` and `synthetic` for classification, `diabetes` and `synthetic` for
regression) are small and generated deterministically, so each worker builds its own shard in
memory. Files (Parquet or CSV, a file or a folder) are read
with Ray Data and streamed to the workers as dataset shards; so are the images of an image
folder (one sub-folder per class, raymaas.supervised.images).

What the driver hands each worker about its data is one typed model per source
(`BuiltinData`, `SequenceData`, `FileShards`, `ImageData`), validated again in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Union

import numpy as np
from pydantic import Field, field_validator, model_validator

from raymaas.specs import SpecError, SpecModel
from raymaas.supervised.windows import WindowSpec

if TYPE_CHECKING:
    from raymaas.supervised.checks import TableFacts

BUILTIN_DATASETS = ("digits", "synthetic", "diabetes")
# The tasks each built-in set can train (synthetic makes classes or a continuous target).
BUILTIN_TASKS = {
    "digits": ("classification",),
    "synthetic": ("classification", "regression"),
    "diabetes": ("regression",),
}
TASKS = ("classification", "regression", "anomaly")
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
# data.augment's transforms of an image folder's training batches (raymaas.supervised.images)
Augmentation = Literal["flip", "crop"]


class DataSpec(SpecModel):
    source: str = Field(
        "digits",
        description="digits, synthetic, diabetes (regression), the path of a Parquet/CSV file or folder, or of an "
        "image folder (one sub-folder of PNG or JPEG files per class)",
    )
    format: Literal["auto", "parquet", "csv", "images"] = Field(
        "auto", description="file format; auto infers it from the file names (image files in sub-folders: images)"
    )
    label_column: str | list[str] | None = Field(
        "label",
        description="files: the target column (classification: any labels, e.g. strings; regression: "
        "numbers, or a list of columns for several outputs; anomaly: optional, null for none)",
    )
    normal_label: str | bool | int | float | None = Field(
        None,
        description="files, task anomaly: train on the rows whose label equals this value (the validation split "
        "keeps every row, and val_roc_auc scores the others as anomalies); without it, on all rows",
    )
    feature_columns: list[str] | None = Field(
        None, description="files: feature columns (default: every column but the label)"
    )
    impute: Literal["none", "mean", "median", "zero"] = Field(
        "none",
        description="files: fill missing numbers (null, NaN) in feature columns with the training split's mean or "
        "median, or 0, by a layer of the model (served and batch rows too); none refuses a file with missing "
        "numbers, naming each column and its count, and a served row with one gets a 422",
    )
    categorical_columns: list[str] = Field(
        [],
        description="files: integer feature columns to encode as categories (string and boolean feature columns "
        "always are): one-hot up to max_categories values, a learned embedding above; a null or a value unseen "
        "in training takes an unknown slot",
    )
    max_categories: int = Field(
        32, ge=1, description="files: a categorical column of up to this many values is one-hot encoded, else embedded"
    )
    order_by: str | None = Field(
        None,
        description="files: the column that orders a time series (with window): rows are sorted by it, and the "
        "validation split is the last share in time",
    )
    window: WindowSpec | None = Field(
        None,
        description="files, with order_by: examples are `length` consecutive rows of the feature columns (default: "
        "every numeric column but order_by, the label's past included), the target the label `horizon` rows later",
    )
    image_size: int | tuple[int, int] | None = Field(
        None,
        description="image folder (required): the size every image is resized to, an int (a square) or [height, width]",
    )
    image_mode: Literal["L", "RGB"] = Field(
        "RGB", description="image folder: L (grayscale, 1 channel) or RGB (3 channels); images are converted to it"
    )
    augment: list[Augmentation] = Field(
        [],
        description="image folder: random transforms of the training batches, on the workers (never of validation): "
        "flip (left-right, half of the images), crop (shifted by up to 1/8 of the side, edges repeated)",
    )
    validation_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of rows held out for validation (image folder: of each class's images)"
    )
    n_samples: int = Field(20_000, gt=10, description="synthetic: number of rows")
    n_features: int = Field(32, gt=0, description="synthetic: number of features")
    n_classes: int = Field(4, ge=2, description="synthetic: number of classes")

    @field_validator("label_column")
    @classmethod
    def _some_label(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("must be a column name or a non-empty list of distinct column names")
        return value

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value):
        if value is not None and min((value,) if isinstance(value, int) else value) < 1:
            raise ValueError("an int > 0 (a square), or [height, width] of ints > 0")
        return value

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        if source in BUILTIN_DATASETS:
            return source
        looks_like_path = "/" in source or Path(source).suffix in _FORMATS
        if not looks_like_path:
            raise ValueError(
                f"unknown dataset {source!r}: use {', '.join(BUILTIN_DATASETS)}, a Parquet/CSV path or an image "
                "folder's path"
            )
        path = Path(source).expanduser()
        if not path.exists():
            raise ValueError(f"data file or folder {source!r} does not exist")
        return str(path.resolve())

    @model_validator(mode="after")
    def _check_file_schema(self) -> DataSpec:
        if (self.order_by is None) != (self.window is None):
            raise ValueError("order_by and window go together: a time series is cut into windows by its order")
        if self.source in BUILTIN_DATASETS:
            if self.window is not None:
                raise ValueError(f"window is for a time series in a file, not the built-in set {self.source!r}")
            self._no_image_fields()
            return self
        self.format = infer_format(Path(self.source), self.format)
        if self.format == "images":
            return self._check_image_folder_fields()
        self._no_image_fields()
        try:
            columns = file_columns(self.source, self.format)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"cannot read {self.source} as {self.format}: {exc}") from None
        for label in self.label_columns:
            if label not in columns:
                raise ValueError(
                    f"label_column {label!r} is not a column of {self.source} (columns: {', '.join(columns)})"
                )
        missing = [c for c in (self.feature_columns or []) if c not in columns]
        if missing:
            raise ValueError(f"feature_columns {missing} are not columns of {self.source}")
        overlap = [c for c in (self.feature_columns or []) if c in self.label_columns]
        if overlap:
            raise ValueError(f"feature_columns {overlap} are also label columns")
        if self.order_by is not None:
            if self.order_by not in columns:
                raise ValueError(
                    f"order_by {self.order_by!r} is not a column of {self.source} (columns: {', '.join(columns)})"
                )
            if not isinstance(self.label_column, str):
                raise ValueError("label_column: a window forecasts one column, not a list")
        features = self.feature_columns or [c for c in columns if c not in self.label_columns]
        stray = [c for c in self.categorical_columns if c not in features]
        if stray:
            raise ValueError(f"categorical_columns {stray} are not feature columns of {self.source}")
        return self

    def _no_image_fields(self) -> None:
        used = [f"data.{f}" for f in ("image_size", "augment") if getattr(self, f)]
        if used:
            source = f"the built-in set {self.source!r}" if self.source in BUILTIN_DATASETS else f"{self.format} files"
            raise ValueError(f"{' and '.join(used)}: for an image folder (format images), not {source}")

    def _check_image_folder_fields(self) -> DataSpec:
        """An image folder's spec: its size given, and none of the fields of a table."""
        if not Path(self.source).is_dir():
            raise ValueError(f"format images: {self.source} is not a folder (one sub-folder of images per class)")
        if self.image_size is None:
            raise ValueError(
                "data.image_size: an image folder needs the size its images are resized to "
                "(an int for a square, or [height, width])"
            )
        if self.label_column != "label":
            raise ValueError("data.label_column: an image folder's labels are its sub-folder names, not a column")
        table_fields = {
            "feature_columns": self.feature_columns is not None,
            "order_by": self.order_by is not None,
            "window": self.window is not None,
            "normal_label": self.normal_label is not None,
            "impute": self.impute != "none",
            "categorical_columns": bool(self.categorical_columns),
        }
        used = [f"data.{f}" for f, is_set in table_fields.items() if is_set]
        if used:
            raise ValueError(f"{', '.join(used)}: for a table, not an image folder ({self.source})")
        return self

    @property
    def label_columns(self) -> list[str]:
        if self.label_column is None:
            return []
        return [self.label_column] if isinstance(self.label_column, str) else list(self.label_column)


def check_files(spec: DataSpec, task: str) -> TableFacts | None:
    """A file source's one cheap scan (raymaas.supervised.checks) before Ray starts: a
    ValueError naming each problem's file, column and count, else what the scan found. A
    sequence source (list columns, or a time series cut into windows) is read whole here, as
    the job will read it (None: no table facts)."""
    # Imported here: pyarrow.dataset, .csv and .parquet take about 1 s to import, and the
    # workers and the CLI that import this module never scan.
    from raymaas.supervised import images, sequences
    from raymaas.supervised.checks import scan_table

    if spec.format == "images":
        if task != "classification":
            raise ValueError(
                f"an image folder trains task classification (its sub-folders are the classes), not {task}"
            )
        try:
            images.scan_image_folder(spec.source, spec.image_size, spec.image_mode)
        except images.ImageFolderError as err:
            raise ValueError(f"the images in {spec.source} cannot train as they are: {err}") from None
        return None
    if sequences.layout(spec) is not None:
        try:
            sequences.read_sequences(spec, task, 0)
        except sequences.SequenceError as err:
            raise ValueError(f"the data in {spec.source} cannot train as it is: {err}") from None
        return None

    return scan_table(
        spec.source, spec.format, spec.label_columns, spec.feature_columns, task, spec.impute, spec.categorical_columns
    )


def infer_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    from raymaas.supervised.images import holds_images

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    found = {_FORMATS[p.suffix.lower()] for p in files if p.suffix.lower() in _FORMATS}
    if not found and path.is_dir() and holds_images(path):
        return "images"
    if len(found) != 1:
        raise ValueError(
            f"cannot infer the format of {path}: name files *.parquet or *.csv, put images (*.png, *.jpg, *.jpeg) "
            "in one sub-folder per class, or set data.format"
        )
    return found.pop()


def file_columns(source: str, fmt: str) -> list[str]:
    """Column names of a Parquet/CSV file or folder, read from its schema only."""
    import pyarrow.dataset as pads

    return list(pads.dataset(source, format=fmt).schema.names)


class Targets(SpecModel):
    """What the model predicts, fixed on the training split: the class list (classification;
    index i of the network's output is classes[i]) or the targets' statistics (regression)."""

    task: Literal["classification", "regression", "anomaly"]
    classes: list[str | bool | int | float] | None = None
    names: list[str] | None = None  # regression: the target columns (None for a built-in set)
    mean: list[float] | None = None
    std: list[float] | None = None
    # anomaly: the label column and the text of its normal value (None: no labels to score against)
    label: str | None = None
    normal: str | None = None

    @model_validator(mode="after")
    def _task_fields(self) -> Targets:
        if self.task == "anomaly":
            return self
        if self.task == "classification" and (self.classes is None or len(self.classes) < 2):
            raise ValueError("classification needs at least 2 classes in the training split")
        if self.task == "regression" and (self.mean is None or self.std is None or len(self.mean) != len(self.std)):
            raise ValueError("regression needs one mean and one std per target")
        return self

    @property
    def n_outputs(self) -> int:
        if self.task == "anomaly":
            return 1  # the score
        return len(self.classes) if self.task == "classification" else len(self.mean)

    @property
    def labelled(self) -> bool:
        """anomaly: whether validation rows carry labels that say which are anomalies."""
        return self.label is not None and self.normal is not None

    @property
    def named_classes(self) -> bool:
        """Whether the classes are anything but the ids 0..n-1 the network's outputs are."""
        return self.classes is not None and self.classes != list(range(len(self.classes)))


class BuiltinData(SpecModel):
    """A built-in set: each worker builds the same split from the spec and the seed."""

    source: Literal["builtin"] = "builtin"
    spec: DataSpec
    n_features: int = Field(..., gt=0)
    targets: Targets

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_features,)


class SequenceData(SpecModel):
    """A sequence source (raymaas.supervised.sequences): each worker reads the file and cuts
    the same split from it, by the seed (list columns) or by time (windows)."""

    source: Literal["sequences"] = "sequences"
    spec: DataSpec
    input_shape: tuple[int, int]  # (length, channels): one example's
    channels: list[str] = Field(..., min_length=1)
    targets: Targets
    # each channel's mean and standard deviation over the training split's steps
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _one_statistic_per_channel(self) -> SequenceData:
        if not len(self.channels) == len(self.mean) == len(self.std) == self.input_shape[1]:
            raise ValueError("channels, mean and std must have one entry per channel")
        return self

    @property
    def n_features(self) -> int:
        return self.input_shape[0] * self.input_shape[1]


class FileShards(SpecModel):
    """A file source: each worker reads its shards of Ray Data's `train` and `validation`."""

    source: Literal["files"] = "files"
    feature_columns: list[str] = Field(..., min_length=1)
    label_columns: list[str]  # none for an unlabelled anomaly job
    n_features: int = Field(..., gt=0)
    targets: Targets
    mean: list[float]
    std: list[float]
    # raymaas.modelcode.tabular.TabularEncoding.to_dict() when a column is categorical or imputed:
    # the workers then encode rows as the served model does and train behind its TabularInput
    encoding: dict | None = None

    @model_validator(mode="after")
    def _one_statistic_per_feature(self) -> FileShards:
        if not len(self.feature_columns) == len(self.mean) == len(self.std) == self.n_features:
            raise ValueError("feature_columns, mean and std must have n_features entries each")
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n_features,)


class ImageData(SpecModel):
    """An image folder (raymaas.supervised.images): each worker reads its shards of Ray Data's
    `train` and `validation` images (the class as the folder's name), as of a table."""

    source: Literal["images"] = "images"
    input_shape: tuple[int, int, int]  # (channels, height, width): one example's
    targets: Targets
    # each channel's mean and standard deviation over the training split's pixels (0-255)
    mean: list[float]
    std: list[float]
    augment: list[Augmentation] = []

    @model_validator(mode="after")
    def _one_statistic_per_channel(self) -> ImageData:
        if not len(self.mean) == len(self.std) == self.input_shape[0]:
            raise ValueError("mean and std must have one entry per channel")
        return self

    def scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and std as the model's Standardize layer holds them: shaped (channels, 1, 1),
        so that they broadcast over a [n, channels, height, width] batch's channel axis."""
        shape = (self.input_shape[0], 1, 1)
        return np.asarray(self.mean).reshape(shape), np.asarray(self.std).reshape(shape)


WorkerData = Annotated[Union[BuiltinData, SequenceData, FileShards, ImageData], Field(discriminator="source")]


class DataError(SpecError):
    """The data does not fit the spec (found once it is read): an invalid spec, exit code 2."""


@dataclass(frozen=True)
class ArraySplit:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_builtin(spec: DataSpec, seed: int, task: str = "classification") -> ArraySplit:
    """The built-in data set as float32 features and int64 class ids (classification) or
    float32 targets of shape [n, 1] (regression), split deterministically by seed."""
    if task not in BUILTIN_TASKS.get(spec.source, ()):
        raise ValueError(f"{spec.source!r} is not a built-in data set for {task}")
    if spec.source == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        bunch = load_digits()
        x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    elif spec.source == "diabetes":
        from sklearn.datasets import load_diabetes  # bundled with scikit-learn: no download

        bunch = load_diabetes()
        x, y = bunch.data.astype(np.float32), bunch.target.astype(np.float32).reshape(-1, 1)
    elif task == "regression":
        x, y = make_synthetic_regression(spec.n_samples, spec.n_features, seed)
    else:
        x, y = make_synthetic(spec.n_samples, spec.n_features, spec.n_classes, seed)
    return split_arrays(x, y, spec.validation_fraction, seed)


def array_split(data: BuiltinData | SequenceData, seed: int) -> ArraySplit:
    """The split of a source held in memory, as the network trains on it: float32 features,
    int64 class ids (a validation row whose label the training split lacks is left out) or
    float32 targets [n, k]."""
    if isinstance(data, BuiltinData):
        return load_builtin(data.spec, seed, data.targets.task)
    from raymaas.supervised.sequences import read_sequences

    split = read_sequences(data.spec, data.targets.task, seed)
    if data.targets.task == "regression":
        return ArraySplit(split.x_train, split.y_train, split.x_val, split.y_val)
    import pandas as pd

    index = pd.Index(data.targets.classes)
    y_train, y_val = index.get_indexer(split.y_train), index.get_indexer(split.y_val)
    known = y_val >= 0
    return ArraySplit(split.x_train, y_train.astype(np.int64), split.x_val[known], y_val[known].astype(np.int64))


def make_synthetic(n_samples: int, n_features: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random class centres: learnable, but not in one epoch."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(n_classes, n_features)).astype(np.float32)
    y = rng.integers(0, n_classes, size=n_samples).astype(np.int64)
    x = centres[y] + rng.normal(0.0, 1.5, size=(n_samples, n_features)).astype(np.float32)
    return x.astype(np.float32), y


def make_synthetic_regression(n_samples: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A target that is linear in the features plus a smooth nonlinear part and noise, in
    units far from 0 and 1 (so a model that forgot to unscale its answers is visibly wrong)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, size=(n_samples, n_features)).astype(np.float32)
    w = rng.normal(0.0, 1.0, size=n_features).astype(np.float32)
    y = 50.0 + 10.0 * (x @ w) / np.sqrt(n_features) + 5.0 * np.sin(x[:, 0]) + rng.normal(0.0, 1.0, n_samples)
    return x, y.astype(np.float32).reshape(-1, 1)


def make_loans(n_samples: int = 4000, seed: int = 0):
    """A table as real ones arrive (a DataFrame): loan applications with numbers that have holes
    (income, debt_ratio: about 5% null), an integer that is a category (term_months), text
    categories with a few nulls (region, 6 values) and many values (employer, 60: embedded by
    default), a boolean (homeowner), and the label `default` ("yes"/"no") drawn from all of them.
    What the mixed-table spec (jobs/specs/loans.yaml) and the tests train on; generated, never
    downloaded."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    regions = np.array(["north", "south", "east", "west", "centre", "islands"])
    region_effect = np.array([-0.8, 0.6, 0.0, -0.3, 0.2, 1.2])
    employers = np.array([f"employer-{i:02d}" for i in range(60)])
    employer_effect = rng.normal(0.0, 0.8, size=60)
    income = rng.lognormal(10.5, 0.5, n_samples)
    debt_ratio = np.clip(rng.beta(2.0, 5.0, n_samples), 0.0, 1.0)
    age = rng.integers(21, 70, n_samples)
    term = rng.choice([12, 24, 36, 60], n_samples)
    region = rng.integers(0, len(regions), n_samples)
    employer = rng.integers(0, len(employers), n_samples)
    homeowner = rng.random(n_samples) < 0.45
    logit = (
        -0.6
        - 1.2 * (np.log(income) - 10.5)
        + 4.0 * (debt_ratio - 0.3)
        + 0.02 * (term - 30)
        - 0.02 * (age - 45)
        + region_effect[region]
        + employer_effect[employer]
        - 0.9 * homeowner
    )
    default = rng.random(n_samples) < 1.0 / (1.0 + np.exp(-2.0 * logit))
    frame = pd.DataFrame(
        {
            "income": income.round(2),
            "debt_ratio": debt_ratio.round(4),
            "age": age,
            "term_months": term,
            "region": regions[region].astype(object),
            "employer": employers[employer].astype(object),
            "homeowner": homeowner,
            "default": np.where(default, "yes", "no"),
        }
    )
    for column, share in (("income", 0.05), ("debt_ratio", 0.05), ("region", 0.02)):
        frame.loc[rng.random(n_samples) < share, column] = None
    return frame


def make_load_series(n_rows: int = 20_000, seed: int = 0):
    """An hourly electricity load as such series arrive (a DataFrame, rows in no particular
    order): `timestamp`, the outside `temperature` (a daily and a yearly cycle, weather noise)
    and the `load` in MW, which follows the hour of day, the day of week, the temperature
    (heating below 15 degrees, cooling above 22) and a slowly wandering level. What the window
    spec (jobs/specs/load_lstm.yaml) forecasts; generated, never downloaded."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    hours = np.arange(n_rows)
    day, week, year = 2 * np.pi * hours / 24, 2 * np.pi * hours / 168, 2 * np.pi * hours / 8766
    weather = np.zeros(n_rows)
    level = np.zeros(n_rows)
    shocks, drift = rng.normal(0.0, 0.6, n_rows), rng.normal(0.0, 0.4, n_rows)
    for t in range(1, n_rows):  # weather fronts and the load's level persist for hours
        weather[t] = 0.97 * weather[t - 1] + shocks[t]
        level[t] = 0.995 * level[t - 1] + drift[t]
    temperature = 12.0 - 9.0 * np.cos(year) - 4.0 * np.cos(day - 0.6) + weather
    load = (
        500.0
        + 60.0 * np.sin(day - 2.0)
        + 25.0 * np.sin(2 * day - 1.0)
        - 40.0 * (np.cos(week) > 0.62)  # the weekend
        + 6.0 * np.maximum(15.0 - temperature, 0.0)
        + 9.0 * np.maximum(temperature - 22.0, 0.0)
        + 5.0 * level
        + rng.normal(0.0, 4.0, n_rows)
    )
    frame = pd.DataFrame(
        {
            "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(hours, unit="h"),
            "temperature": temperature.round(2),
            "load": load.round(1),
        }
    )
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def make_transactions(n_rows: int = 20_000, seed: int = 0, fraud_share: float = 0.03):
    """Card payments as such tables arrive (a DataFrame): the `amount`, the `hour` of day, the
    `distance_km` from the card holder's home, the payments of the last 24 hours
    (`payments_24h`), the `merchant` category (text, a few nulls) and whether the card was
    `present`; `fraud` ("yes"/"no") marks about fraud_share of them, which are larger, at night,
    far from home, in bursts, online and at other merchants. What the anomaly spec
    (jobs/specs/transactions_autoencoder.yaml) learns normal payments from; generated, never
    downloaded."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    fraud = rng.random(n_rows) < fraud_share
    merchants = np.array(["grocery", "fuel", "restaurant", "travel", "electronics", "online", "pharmacy"])
    normal_mix = np.array([0.34, 0.18, 0.2, 0.05, 0.05, 0.12, 0.06])
    fraud_mix = np.array([0.15, 0.1, 0.1, 0.15, 0.2, 0.25, 0.05])
    merchant = np.where(
        fraud, rng.choice(len(merchants), n_rows, p=fraud_mix), rng.choice(len(merchants), n_rows, p=normal_mix)
    )
    amount = np.where(fraud, rng.lognormal(4.2, 1.0, n_rows), rng.lognormal(3.4, 0.8, n_rows))
    hour = np.where(fraud, rng.choice(24, n_rows, p=_night(heavy=True)), rng.choice(24, n_rows, p=_night(heavy=False)))
    distance = np.where(fraud, rng.lognormal(2.6, 1.3, n_rows), rng.lognormal(1.5, 1.0, n_rows))
    burst = np.where(fraud, rng.poisson(3.0, n_rows), rng.poisson(1.5, n_rows))
    present = np.where(fraud, rng.random(n_rows) < 0.4, rng.random(n_rows) < 0.7)
    frame = pd.DataFrame(
        {
            "amount": amount.round(2),
            "hour": hour.astype(np.int64),
            "distance_km": distance.round(1),
            "payments_24h": burst.astype(np.int64),
            "merchant": merchants[merchant].astype(object),
            "present": present,
            "fraud": np.where(fraud, "yes", "no"),
        }
    )
    frame.loc[rng.random(n_rows) < 0.01, "merchant"] = None
    return frame


def _night(heavy: bool) -> np.ndarray:
    """Shares of the 24 hours: daytime-heavy payments, or night-heavy ones."""
    hours = np.arange(24)
    day = np.exp(-0.5 * ((hours - 14) / 4.0) ** 2)
    night = np.exp(-0.5 * ((np.minimum(hours, 24 - hours) - 2) / 2.0) ** 2)
    weights = (day + night) if heavy else (day + 0.05)
    return weights / weights.sum()


WAVEFORMS = ("sine", "square", "sawtooth", "chirp")


def make_waveforms(n_rows: int = 20_000, seed: int = 0, steps: int = 64):
    """A labelled set of waveforms (a DataFrame): `signal`, a list of `steps` float values (a
    sensor's trace), and `shape`, one of WAVEFORMS, each with its own random frequency, phase,
    amplitude, offset and noise. What the list-column spec (jobs/specs/waveforms_gru.yaml)
    classifies; generated, never downloaded."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    shape = rng.integers(0, len(WAVEFORMS), n_rows)
    t = np.linspace(0.0, 1.0, steps)[None, :]
    cycles = rng.uniform(1.5, 4.0, (n_rows, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n_rows, 1))
    angle = 2 * np.pi * cycles * t + phase
    chirp = 2 * np.pi * cycles * (t + 1.5 * t * t) + phase
    waves = np.stack(
        [np.sin(angle), np.sign(np.sin(angle)), 2.0 * ((angle / (2 * np.pi)) % 1.0) - 1.0, np.sin(chirp)], axis=0
    )
    signal = waves[shape, np.arange(n_rows)]
    signal = rng.uniform(0.5, 2.0, (n_rows, 1)) * signal + rng.normal(0.0, 0.5, (n_rows, 1))
    signal = signal + rng.normal(0.0, 0.25, signal.shape)
    return pd.DataFrame(
        {"signal": list(signal.astype(np.float32).round(4)), "shape": np.asarray(WAVEFORMS, dtype=object)[shape]}
    )


def split_arrays(x: np.ndarray, y: np.ndarray, validation_fraction: float, seed: int) -> ArraySplit:
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * validation_fraction)))
    val, train = order[:n_val], order[n_val:]
    return ArraySplit(x[train], y[train], x[val], y[val])


def shard_rows(n_rows: int, rank: int, world_size: int, epoch_seed: int | None) -> np.ndarray:
    """This rank's row indices; every rank gets the same count (DDP needs equal step counts)."""
    order = np.random.default_rng(epoch_seed).permutation(n_rows) if epoch_seed is not None else np.arange(n_rows)
    per_rank = n_rows // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


@dataclass(frozen=True)
class PreparedData:
    """What the driver learns of its data before training starts."""

    worker: BuiltinData | SequenceData | FileShards | ImageData  # what each worker gets
    datasets: dict  # Ray Data datasets for Ray Train ({} for a built-in set)
    example: np.ndarray  # a few validation rows: the model's input example
    feature_columns: list[str] | None  # files: the signature's columns; built-in: a tensor signature
    notes: dict[str, str] = field(default_factory=dict)  # facts found in the data, as run tags
    # files: each feature column's type in the signature (example_rows); built-in: None
    column_types: dict[str, str] | None = None
    # figures of the data logged with the run once, e.g. a forecast's naive baseline (val_rmse_naive)
    metrics: dict[str, float] = field(default_factory=dict)


def prepare_data(spec: DataSpec, seed: int, task: str = "classification") -> PreparedData:
    """The built-in split or the files read with Ray Data, as the workers will see them."""
    if spec.source in BUILTIN_DATASETS:
        split = load_builtin(spec, seed, task)
        worker = BuiltinData(spec=spec, n_features=split.x_train.shape[1], targets=builtin_targets(split, task))
        return PreparedData(worker, {}, split.x_val[:8], None)
    if spec.format == "images":
        return prepare_images(spec, seed, task)
    from raymaas.supervised.sequences import layout

    if layout(spec) is not None:
        return prepare_sequences(spec, seed, task)
    return read_files(spec, seed, task)


def prepare_images(spec: DataSpec, seed: int, task: str) -> PreparedData:
    """An image folder: the files the spec's check decoded, split by class, each split read with
    Ray Data's image reader (held in Ray's object store while the job runs); the per-channel
    pixel statistics fitted on the training split, and the example."""
    import logging

    import ray.data

    from raymaas.supervised import images

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if task != "classification":
        raise DataError(f"an image folder trains task classification, not {task}")
    try:  # the check's scan, cached in this process unless a file changed since
        facts = images.scan_image_folder(spec.source, spec.image_size, spec.image_mode)
        split = images.split_files(facts, spec.validation_fraction, seed)
    except images.ImageFolderError as err:
        raise DataError(str(err)) from None
    notes = {}
    if facts.undecodable:
        # left out, and said so before training starts: one bad file does not cost the job
        print(f"raymaas: {facts.undecodable_line()}", flush=True)
        n = len(facts.undecodable)
        listed = ", ".join(p for p, _ in facts.undecodable[:UNDECODABLE_TAGGED])
        if n > UNDECODABLE_TAGGED:
            listed += f" and {n - UNDECODABLE_TAGGED} more"
        notes["raymaas.undecodable_files"] = f"{n}: {listed}"
    shape = images.input_shape(spec.image_size, spec.image_mode)
    train = images.read_split(facts.root, split.train, spec.image_size, spec.image_mode).materialize()
    validation = images.read_split(facts.root, split.validation, spec.image_size, spec.image_mode).materialize()
    mean, std = images.channel_statistics(train, shape[0])
    notes["raymaas.images"] = images.describe(facts, split, shape, spec.image_mode)
    print(f"raymaas: {notes['raymaas.images']}", flush=True)
    worker = ImageData(
        input_shape=shape,
        targets=Targets(task=task, classes=list(facts.classes)),
        mean=mean,
        std=std,
        augment=list(spec.augment),
    )
    example, _ = images.dataset_rows(validation, EXAMPLE_ROWS)
    return PreparedData(worker, {"train": train, "validation": validation}, example, None, notes)


UNDECODABLE_TAGGED = 20  # undecodable files named in the run's tag


def prepare_sequences(spec: DataSpec, seed: int, task: str) -> PreparedData:
    """A sequence source read once in the driver: the targets and the per-channel statistics
    fitted on the training split, the example, and for a forecast the naive baseline's error."""
    from raymaas.supervised.sequences import SequenceError, describe, read_sequences

    try:
        split = read_sequences(spec, task, seed)
    except SequenceError as err:
        raise DataError(str(err)) from None
    notes = {"raymaas.sequences": describe(spec, split)}
    print(f"raymaas: {notes['raymaas.sequences']}", flush=True)
    if task == "classification":
        classes = sort_classes(np.unique(split.y_train))
        if len(classes) < 2:
            raise DataError(f"label_column {spec.label_columns[0]!r}: the training split holds {len(classes)} class")
        unseen = unseen_labels(split.y_val, classes)
        if unseen:
            notes["raymaas.unseen_validation_labels"] = ", ".join(f"{k!r}: {n} rows" for k, n in unseen.items())
        targets = Targets(task=task, classes=classes)
    else:
        std = split.y_train.std(0)
        targets = Targets(
            task=task,
            names=spec.label_columns,
            mean=split.y_train.mean(0).tolist(),
            std=np.where(std > 0, std, 1.0).tolist(),
        )
    _, length, channels = split.x_train.shape
    worker = SequenceData(
        spec=spec,
        input_shape=(length, channels),
        channels=split.channels,
        targets=targets,
        mean=split.x_train.mean(axis=(0, 1)).tolist(),
        std=split.x_train.std(axis=(0, 1)).tolist(),
    )
    metrics = {}
    if split.naive_val is not None and task == "regression":
        # the last known value as the forecast: the error a forecaster must beat
        metrics["val_rmse_naive"] = float(np.sqrt(np.mean((split.naive_val - split.y_val[:, 0]) ** 2)))
    return PreparedData(worker, {}, split.x_val[:8], None, notes, None, metrics)


def builtin_targets(split: ArraySplit, task: str) -> Targets:
    """The targets of a built-in split, as every worker computes them again from the split."""
    if task == "classification":
        n_classes = int(max(split.y_train.max(), split.y_val.max()) + 1)
        return Targets(task=task, classes=list(range(n_classes)))
    return Targets(task=task, mean=split.y_train.mean(0).tolist(), std=split.y_train.std(0).tolist())


# A training split up to this size has its statistics computed from one pandas frame in the
# driver: Ray Data's aggregate runs a hash shuffle, ~5 s on a 1,800-row CSV on 2 cores.
SMALL_SPLIT_BYTES = 64 * 2**20


def read_files(spec: DataSpec, seed: int, task: str = "classification") -> PreparedData:
    """Read a file source with Ray Data, split it by seed, and fit the feature statistics and
    the targets (the class list, or the targets' statistics) on the training split."""
    import functools
    import logging

    import ray.data
    from ray.data.aggregate import Mean, Std

    from raymaas.modelcode.tabular import fit_encoding

    # Ray Data's per-dataset progress reports are for Ray's logs, not the job's output.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    reader = ray.data.read_parquet if spec.format == "parquet" else ray.data.read_csv
    labels = spec.label_columns
    if task in ("classification", "anomaly") and len(labels) > 1:
        raise DataError(f"label_column: {task} takes one label column, not {len(labels)} ({labels})")
    # Columns from the files' own schema (no Ray task), then one read: the split and the
    # statistics work on the materialized blocks instead of reading the files again.
    features = spec.feature_columns or [c for c in file_columns(spec.source, spec.format) if c not in labels]
    ds = reader(spec.source).select_columns([*features, *labels]).materialize()
    categorical = categorical_features(ds.schema(), features, spec.categorical_columns)
    numeric = [c for c in features if c not in categorical]
    _check_numeric(ds.schema(), numeric, "feature column", "features are numbers, or strings and booleans")
    encoded = bool(categorical) or spec.impute != "none"
    if task == "regression":
        _check_numeric(ds.schema(), labels, "label_column", "a regression target is a number")
    train, validation = ds.train_test_split(test_size=spec.validation_fraction, shuffle=True, seed=seed)
    if task == "anomaly" and spec.normal_label is not None:
        # an autoencoder learns what normal rows look like: it trains on those alone
        keep = functools.partial(_normal_rows, label=labels[0], normal=label_text(spec.normal_label))
        train = train.map_batches(keep, batch_format="pandas")
    train = train.materialize()
    if task == "anomaly" and train.count() == 0:
        raise DataError(
            f"data.normal_label {spec.normal_label!r}: no training row has it in label_column {labels[0]!r}"
        )
    notes: dict[str, str] = {}
    moments = [*numeric, *labels] if task == "regression" else numeric
    encoding = None
    if train.size_bytes() <= SMALL_SPLIT_BYTES:
        frame = train.to_pandas()
        stats = {
            **{f"mean:{c}": frame[c].mean() for c in moments},
            **{f"std:{c}": frame[c].std() for c in moments},
        }
        if encoded:
            encoding = fit_encoding(frame, features, categorical, spec.impute, _max_categories(spec, task))
        example, column_types = example_rows(frame, features, encoding)
        train_labels = frame[labels[0]].unique().tolist() if task == "classification" else []
    else:
        stats = train.aggregate(
            *(Mean(c, alias_name=f"mean:{c}") for c in moments),
            *(Std(c, alias_name=f"std:{c}") for c in moments),
        )
        if encoded:
            # the categories and medians of a large split from its first rows (a value first seen
            # later takes the unknown slot), the means and deviations from all of it
            fit_frame = train.select_columns(features).limit(LARGE_FIT_ROWS).to_pandas()
            encoding = fit_encoding(fit_frame, features, categorical, spec.impute, _max_categories(spec, task))
            for column in encoding.columns:
                if column.kind == "numeric":
                    column.mean = float(stats[f"mean:{column.name}"] or 0.0)
                    column.std = float(stats[f"std:{column.name}"] or 1.0)
                    if spec.impute == "mean":
                        column.fill = column.mean
        example, column_types = example_rows(train.limit(EXAMPLE_ROWS).to_pandas(), features, encoding)
        train_labels = train.unique(labels[0]) if task == "classification" else []
    if task == "classification":
        classes = sort_classes(train_labels)
        if len(classes) < 2:
            raise DataError(f"label_column {labels[0]!r}: the training split holds {len(classes)} class(es); need 2+")
        unseen = unseen_labels(validation.select_columns([labels[0]]).to_pandas()[labels[0]], classes)
        if unseen:
            notes["raymaas.unseen_validation_labels"] = ", ".join(f"{k!r}: {n} rows" for k, n in unseen.items())
            print(
                f"raymaas: validation rows whose label is not in the training split are left out of the "
                f"validation metrics: {notes['raymaas.unseen_validation_labels']}",
                flush=True,
            )
        targets = Targets(task=task, classes=classes)
    elif task == "anomaly":
        normal = None if spec.normal_label is None else label_text(spec.normal_label)
        targets = Targets(task=task, label=labels[0] if labels else None, normal=normal if labels else None)
    else:
        targets = Targets(
            task=task,
            names=labels,
            mean=[float(stats[f"mean:{c}"]) for c in labels],
            std=[float(stats[f"std:{c}"] or 1.0) for c in labels],
        )
    worker = FileShards(
        feature_columns=features,
        label_columns=labels,
        n_features=len(features),
        targets=targets,
        mean=[float(stats[f"mean:{c}"]) if c in numeric else 0.0 for c in features],
        std=[float(stats[f"std:{c}"] or 1.0) if c in numeric else 1.0 for c in features],
        encoding=None if encoding is None else encoding.to_dict(),
    )
    if encoding is not None and categorical:
        notes["raymaas.categorical_columns"] = ", ".join(
            f"{c.name} ({len(c.categories)})" for c in encoding.columns if c.kind == "categorical"
        )
    return PreparedData(worker, {"train": train, "validation": validation}, example, features, notes, column_types)


def _max_categories(spec: DataSpec, task: str) -> int:
    """An anomaly model one-hot encodes every categorical column: an embedding learned together
    with the reconstruction it is judged by would shrink towards nothing to reconstruct."""
    return 2**31 - 1 if task == "anomaly" else spec.max_categories


def label_text(value) -> str:
    """A label as text, to compare a normal_label with a column's values whatever their types:
    1.0 as "1" (an integer column pandas made float), True as "True"."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def anomaly_flags(labels, normal: str) -> np.ndarray:
    """1 for each label that is not the normal one (an anomaly), else 0: int64."""
    import pandas as pd

    return (pd.Series(labels).map(label_text, na_action="ignore") != normal).to_numpy(dtype=np.int64)


def _normal_rows(frame, label: str, normal: str):
    """A Ray Data batch function: the rows whose label is the normal one."""
    return frame[anomaly_flags(frame[label], normal) == 0]


EXAMPLE_ROWS = 8  # training rows logged as the model's input example
LARGE_FIT_ROWS = 200_000  # rows of a large training split the categories and medians are fitted on


def categorical_features(schema, features: list[str], listed: list[str]) -> list[str]:
    """The feature columns encoded as categories: string and boolean columns (by the files'
    types), and the integer columns the spec lists."""
    import pyarrow as pa

    types = dict(zip(schema.names, schema.types))

    def textual(t) -> bool:
        return isinstance(t, pa.DataType) and (
            pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t)
        )

    return [c for c in features if c in listed or textual(types.get(c))]


def example_rows(frame, features: list[str], encoding=None) -> tuple[np.ndarray, dict[str, str]]:
    """The model's input example from frame (training rows as Ray Data reads the files), as
    float32, and the type the model's signature declares for each feature column, typed from
    those rows before they become float32 (raymaas.modelcode.pyfunc.feature_types): `long` for
    an integer column, `boolean` for a boolean one, `double` otherwise. The frame pandas reads
    of the same table (int64, bool, float64 columns) is then one the registered model takes:
    MLflow's enforcement refuses int64 for a `double` column."""
    from raymaas.modelcode.pyfunc import feature_types

    rows = frame[features].head(EXAMPLE_ROWS)
    if encoding is not None:  # categorical or imputed columns: the encoding typed them on the training split
        return encoding.encode(rows), {c.name: c.dtype for c in encoding.columns}
    return rows.to_numpy(dtype=np.float32), feature_types(rows)


def sort_classes(values) -> list:
    """The class list: plain Python values, sorted (by their text when types are mixed)."""
    plain = {v.item() if isinstance(v, np.generic) else v for v in values}
    bad = [v for v in plain if v is None or (isinstance(v, float) and np.isnan(v))]
    if bad:
        raise DataError("the label column has missing values in the training split")
    try:
        return sorted(plain)
    except TypeError:
        return sorted(plain, key=str)


def unseen_labels(validation_labels, classes: list) -> dict:
    """Each validation label that is not one of classes, with its row count."""
    import pandas as pd

    counts = pd.Series(validation_labels).value_counts()
    known = pd.Index(classes)
    return {(k.item() if isinstance(k, np.generic) else k): int(n) for k, n in counts.items() if k not in known}


def _check_numeric(schema, columns: list[str], what: str, rule: str) -> None:
    import pyarrow as pa

    types = dict(zip(schema.names, schema.types))
    for column in columns:
        t = types.get(column)
        if isinstance(t, pa.DataType) and not (
            pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        ):
            raise DataError(f"{what} {column!r} holds {t}: {rule}")
