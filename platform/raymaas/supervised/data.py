"""Data sources for supervised jobs.

Built-in sets (`digits`, `synthetic`) are small and generated deterministically, so each
worker builds its own shard in memory. Files (Parquet or CSV, a file or a folder) are read
with Ray Data and streamed to the workers as dataset shards.

What the driver hands each worker about its data is one typed model per source
(`BuiltinData`, `FileShards`), validated again in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import Field, field_validator, model_validator

from raymaas.specs import SpecError, SpecModel

BUILTIN_DATASETS = ("digits", "synthetic")
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class DataSpec(SpecModel):
    source: str = Field("digits", description="digits, synthetic, or the path of a Parquet/CSV file or folder")
    format: Literal["auto", "parquet", "csv"] = Field(
        "auto", description="file format; auto infers it from the file names"
    )
    label_column: str = Field("label", description="files: the column holding integer class ids 0..n-1")
    feature_columns: list[str] | None = Field(
        None, description="files: feature columns (default: every column but the label)"
    )
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of rows held out for validation")
    n_samples: int = Field(20_000, gt=10, description="synthetic: number of rows")
    n_features: int = Field(32, gt=0, description="synthetic: number of features")
    n_classes: int = Field(4, ge=2, description="synthetic: number of classes")

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        if source in BUILTIN_DATASETS:
            return source
        looks_like_path = "/" in source or Path(source).suffix in _FORMATS
        if not looks_like_path:
            raise ValueError(f"unknown dataset {source!r}: use {', '.join(BUILTIN_DATASETS)} or a Parquet/CSV path")
        path = Path(source).expanduser()
        if not path.exists():
            raise ValueError(f"data file or folder {source!r} does not exist")
        return str(path.resolve())

    @model_validator(mode="after")
    def _check_file_schema(self) -> DataSpec:
        if self.source in BUILTIN_DATASETS:
            return self
        self.format = infer_format(Path(self.source), self.format)
        columns = file_columns(self.source, self.format)
        if self.label_column not in columns:
            raise ValueError(
                f"label_column {self.label_column!r} is not a column of {self.source} (columns: {', '.join(columns)})"
            )
        missing = [c for c in (self.feature_columns or []) if c not in columns]
        if missing:
            raise ValueError(f"feature_columns {missing} are not columns of {self.source}")
        return self


def infer_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    found = {_FORMATS[p.suffix.lower()] for p in files if p.suffix.lower() in _FORMATS}
    if len(found) != 1:
        raise ValueError(f"cannot infer the format of {path}: name files *.parquet or *.csv, or set data.format")
    return found.pop()


def file_columns(source: str, fmt: str) -> list[str]:
    """Column names of a Parquet/CSV file or folder, read from its schema only."""
    import pyarrow.dataset as pads

    return list(pads.dataset(source, format=fmt).schema.names)


class BuiltinData(SpecModel):
    """A built-in set: each worker builds the same split from the spec and the seed."""

    source: Literal["builtin"] = "builtin"
    spec: DataSpec
    n_features: int = Field(..., gt=0)
    n_classes: int = Field(..., ge=2)


class FileShards(SpecModel):
    """A file source: each worker reads its shards of Ray Data's `train` and `validation`."""

    source: Literal["files"] = "files"
    feature_columns: list[str] = Field(..., min_length=1)
    label_column: str
    n_features: int = Field(..., gt=0)
    n_classes: int = Field(..., ge=2)
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _one_statistic_per_feature(self) -> FileShards:
        if not len(self.feature_columns) == len(self.mean) == len(self.std) == self.n_features:
            raise ValueError("feature_columns, mean and std must have n_features entries each")
        return self


WorkerData = Annotated[Union[BuiltinData, FileShards], Field(discriminator="source")]


class DataError(SpecError):
    """The data does not fit the spec (found once it is read): an invalid spec, exit code 2."""


@dataclass(frozen=True)
class ArraySplit:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_builtin(spec: DataSpec, seed: int) -> ArraySplit:
    """The built-in data set as float32 features / int64 labels, split deterministically by seed."""
    if spec.source == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        bunch = load_digits()
        x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    elif spec.source == "synthetic":
        x, y = make_synthetic(spec.n_samples, spec.n_features, spec.n_classes, seed)
    else:
        raise ValueError(f"{spec.source!r} is not a built-in data set")
    return split_arrays(x, y, spec.validation_fraction, seed)


def make_synthetic(n_samples: int, n_features: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random class centres: learnable, but not in one epoch."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(n_classes, n_features)).astype(np.float32)
    y = rng.integers(0, n_classes, size=n_samples).astype(np.int64)
    x = centres[y] + rng.normal(0.0, 1.5, size=(n_samples, n_features)).astype(np.float32)
    return x.astype(np.float32), y


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

    worker: BuiltinData | FileShards  # what each worker gets
    datasets: dict  # Ray Data datasets for Ray Train ({} for a built-in set)
    example: np.ndarray  # a few validation rows: the model's input example
    feature_columns: list[str] | None  # files: the signature's columns; built-in: a tensor signature


def prepare_data(spec: DataSpec, seed: int) -> PreparedData:
    """The built-in split or the files read with Ray Data, as the workers will see them."""
    if spec.source in BUILTIN_DATASETS:
        split = load_builtin(spec, seed)
        n_classes = int(max(split.y_train.max(), split.y_val.max()) + 1)
        worker = BuiltinData(spec=spec, n_features=split.x_train.shape[1], n_classes=n_classes)
        return PreparedData(worker, {}, split.x_val[:8], None)
    return read_files(spec, seed)


# A training split up to this size has its statistics computed from one pandas frame in the
# driver: Ray Data's aggregate runs a hash shuffle, ~5 s on a 1,800-row CSV on 2 cores.
SMALL_SPLIT_BYTES = 64 * 2**20


def read_files(spec: DataSpec, seed: int) -> PreparedData:
    """Read a file source with Ray Data, split it by seed, and fit the feature statistics."""
    import logging

    import ray.data
    from ray.data.aggregate import Max, Mean, Min, Std

    # Ray Data's per-dataset progress reports are for Ray's logs, not the job's output.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    reader = ray.data.read_parquet if spec.format == "parquet" else ray.data.read_csv
    # Columns from the files' own schema (no Ray task), then one read: the split and the
    # statistics work on the materialized blocks instead of reading the files again.
    features = spec.feature_columns or [c for c in file_columns(spec.source, spec.format) if c != spec.label_column]
    ds = reader(spec.source).select_columns([*features, spec.label_column]).materialize()
    train, validation = ds.train_test_split(test_size=spec.validation_fraction, shuffle=True, seed=seed)
    train = train.materialize()
    if train.size_bytes() <= SMALL_SPLIT_BYTES:
        frame = train.to_pandas()
        labels = frame[spec.label_column]
        stats = {
            **{f"mean:{c}": frame[c].mean() for c in features},
            **{f"std:{c}": frame[c].std() for c in features},
            "label_min": labels.min(),
            "label_max": labels.max(),
        }
        example = frame[features].head(8).to_numpy(dtype=np.float32)
    else:
        stats = train.aggregate(
            *(Mean(c, alias_name=f"mean:{c}") for c in features),
            *(Std(c, alias_name=f"std:{c}") for c in features),
            Min(spec.label_column, alias_name="label_min"),
            Max(spec.label_column, alias_name="label_max"),
        )
        example = train.limit(8).to_pandas()[features].to_numpy(dtype=np.float32)
    if stats["label_min"] < 0 or float(stats["label_max"]) != int(stats["label_max"]):
        raise DataError(f"label_column {spec.label_column!r} must hold integer class ids 0..n-1")
    worker = FileShards(
        feature_columns=features,
        label_column=spec.label_column,
        n_features=len(features),
        n_classes=int(stats["label_max"]) + 1,
        mean=[float(stats[f"mean:{c}"]) for c in features],
        std=[float(stats[f"std:{c}"] or 1.0) for c in features],
    )
    return PreparedData(worker, {"train": train, "validation": validation}, example, features)
