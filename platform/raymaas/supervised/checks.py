"""The data checks a file source passes before Ray starts: one cheap scan of the table.

Every error that the files' schemas or one pass over them can show (a column of the wrong or of
mixed types, missing values, an empty file or column, a class too small for both splits) is
raised here as one ValueError naming the file, the column and the count, so a spec with such
data exits 2 before Ray starts or an MLflow run exists (DataSpec's validator calls scan_table).

The scan reads what it must and no more: each Parquet file's footer (its schema, row count and
each row group's null_count), then only the columns its statistics cannot answer for (floats,
whose NaNs no statistic counts; a classification label, whose classes are counted), streamed in
record batches. A CSV has no statistics: each file is parsed once, as Ray Data's read_csv parses
it (pyarrow's streaming reader, each column's type fixed by the file's first block), so a value
that would stop Ray Data's reader half way through a file stops the scan first. Pure pyarrow
and numpy: no Ray, no MLflow.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

IMPUTE = ("none", "mean", "median", "zero")

# A CSV value that reads as a number (RE2 syntax), as an integer, as a boolean (pyarrow's spellings).
_NUMBER = r"(?i)^\s*[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|inf|infinity|nan)\s*$"
_INTEGER = r"^\s*[+-]?\d+\s*$"
_BOOLEAN = r"^(1|0|true|false|True|False|TRUE|FALSE)$"
# pyarrow's (so Ray Data's) CSV null spellings: a number column reads them as null.
_NULLS = pa.array(pcsv.ConvertOptions().null_values, pa.string())
# pyarrow's default block_size, which Ray Data's read_csv keeps: each column's type comes from it.
_CSV_BLOCK = 1 << 20
_CONVERSION = re.compile(r"CSV column #(\d+).*CSV conversion error to ([^:]+): invalid value", re.S)
_EXAMPLES = 3  # offending values quoted in a message
# What to do about missing numbers in feature columns (a categorical column's null is a category
# of its own, the unknown slot, and needs nothing).
MISSING_FEATURE_ADVICE = (
    "missing numbers in feature columns: set data.impute: mean | median | zero to have the model fill them "
    "in (fitted on the training split), drop those rows, or leave the columns out with data.feature_columns"
)
_SHOWN = 4  # files or classes named in a message before "and N more"


class DataCheckError(ValueError):
    """The table does not fit the spec; the message has one line per problem."""

    def __init__(self, source: str, problems: list[str], advice: list[str] = ()):
        self.problems = list(problems)
        lines = [f"    - {p}" for p in self.problems] + [f"    {a}" for a in advice]
        super().__init__(f"the data in {source} cannot train as it is:\n" + "\n".join(lines))


@dataclass(frozen=True)
class ColumnFacts:
    """One column as the scan found it: its kind (number, boolean, string, null, or the arrow
    type's name) and its missing values (null, or NaN in a float column)."""

    name: str
    kind: str
    missing: int


@dataclass(frozen=True)
class TableFacts:
    """What the scan learned of a table. `read`: the columns whose values it read (the others'
    counts came from Parquet statistics)."""

    source: str
    files: tuple[str, ...]
    rows: int
    columns: dict[str, ColumnFacts]
    classes: dict | None  # classification: each label's row count
    read: tuple[str, ...]
    seconds: float


def scan_table(
    source: str | Path,
    fmt: str,
    label_columns: list[str],
    feature_columns: list[str] | None = None,
    task: str = "classification",
    impute: str = "none",
    categorical_columns: list[str] = (),
) -> TableFacts:
    """Check a Parquet/CSV file or folder for training (feature_columns None: every column but
    the labels; string and boolean features, and those in categorical_columns, are categories):
    DataCheckError (a ValueError) listing every problem, else the facts found."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format {fmt!r}: parquet or csv")
    if impute not in IMPUTE:
        raise ValueError(f"impute {impute!r}: one of {', '.join(IMPUTE)}")
    source = str(source)
    files = _files(source, fmt)
    key = (source, fmt, tuple(label_columns), tuple(feature_columns or ()), task, impute, tuple(categorical_columns))
    stamp = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    if key in _CACHE and _CACHE[key][0] == stamp:
        return _CACHE[key][1]
    facts = _Scan(source, fmt, files, list(label_columns), feature_columns, task, impute, categorical_columns).run()
    _CACHE[key] = (stamp, facts)
    return facts


# A spec is validated more than once in a process (a sweep probes each value its space can
# draw): the files are scanned again only when one of them changed.
_CACHE: dict[tuple, tuple[tuple, TableFacts]] = {}


def _files(source: str, fmt: str) -> list[str]:
    """The files Ray Data reads of source (pyarrow's discovery leaves out hidden and _ files)."""
    files = sorted(pads.dataset(source, format=fmt).files) if Path(source).is_dir() else [source]
    if not files:
        raise DataCheckError(source, [f"{source} holds no {fmt} files"])
    return files


@dataclass
class _Counts:
    """One column of one file."""

    type: pa.DataType
    missing: int = 0  # null, or NaN in a float column
    read: bool = False  # whether its values were read (else its nulls came from statistics)
    # CSV, a column read as text: values that read as numbers, values that are neither numbers
    # nor null spellings, and some of those
    numbers: int = 0
    others: int = 0
    others_eg: list = field(default_factory=list)
    # CSV, a column whose type the first block fixed and a later value broke: that type, and the
    # values that are not of it
    frozen: str | None = None
    bad: int = 0
    bad_eg: list = field(default_factory=list)


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_null(t):
        return "null"
    return str(t)


class _Scan:
    def __init__(self, source, fmt, files, labels, features, task, impute, categorical=()):
        self.source, self.fmt, self.files = source, fmt, files
        self.labels, self.features, self.task, self.impute = labels, features, task, impute
        self.categorical = set(categorical)
        self.rows: dict[str, int] = {}
        self.found: dict[str, dict[str, _Counts]] = {}  # column -> file -> counts
        self.absent: dict[str, list[str]] = {}  # column -> files without it
        self.unused_frozen: dict[str, dict[str, _Counts]] = {}  # CSV: columns the job leaves out
        self.classes: Counter = Counter()
        self.problems: list[str] = []
        self.advice: list[str] = []  # said once after the problems

    def run(self) -> TableFacts:
        start = time.perf_counter()
        if self.features is None:
            self.features = [c for c in _names(self.files[0], self.fmt) if c not in self.labels]
        self.needed = [*self.features, *(c for c in self.labels if c not in self.features)]
        self.found = {c: {} for c in self.needed}
        self.absent = {c: [] for c in self.needed}
        for path in self.files:
            if self.fmt == "parquet":
                self._parquet(path)
            else:
                self._csv(path)
        self._judge()
        if self.problems:
            raise DataCheckError(self.source, self.problems, self.advice)
        columns = {}
        for c, by_file in self.found.items():
            kinds = {_kind(n.type) for n in by_file.values()} - {"null"}
            kind = kinds.pop() if len(kinds) == 1 else "null"
            columns[c] = ColumnFacts(c, kind, sum(n.missing for n in by_file.values()))
        read = tuple(c for c, by_file in self.found.items() if any(n.read for n in by_file.values()))
        classes = dict(self.classes) if self.task == "classification" else None
        return TableFacts(
            self.source, tuple(self.files), sum(self.rows.values()), columns, classes, read, time.perf_counter() - start
        )

    def _counted(self, name: str) -> bool:
        return self.task == "classification" and name in self.labels

    # -- reading ---------------------------------------------------------------------------

    def _parquet(self, path: str) -> None:
        """Nulls from the footer's statistics where every row group has them; floats (NaN) and a
        classification label (its classes) from their values."""
        reader = pq.ParquetFile(path)
        meta = reader.metadata
        schema = reader.schema_arrow
        self.rows[path] = meta.num_rows
        leaf = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
        to_read = []
        for name in self.needed:
            if name not in schema.names:
                self.absent[name].append(path)
                continue
            counts = self.found[name][path] = _Counts(schema.field(name).type)
            if pa.types.is_null(counts.type):  # no value in this file
                counts.missing = meta.num_rows
                continue
            if name in self.features and _kind(counts.type) not in ("number", "boolean"):
                continue  # refused whatever its values are
            nulls = _statistics_nulls(meta, leaf.get(name))
            if nulls is None or pa.types.is_floating(counts.type) or self._counted(name):
                to_read.append(name)
            else:
                counts.missing = nulls
        if not to_read:
            return
        # One row group at a time, its columns decoded in parallel: 3 to 4 times faster here than
        # pyarrow.dataset's batches of a file, and no more memory than the file's largest group.
        for group in range(meta.num_row_groups):
            table = reader.read_row_group(group, columns=to_read, use_threads=True)
            for name, array in zip(table.column_names, table.columns):
                self._values(self.found[name][path], name, array)

    def _csv(self, path: str) -> None:
        """Parse the file as Ray Data does. A value that breaks the type its column took from the
        first block stops pyarrow's reader (and Ray Data's): that column is parsed again as
        text, to count the values that break it."""
        try:
            names = _names(path, "csv")
        except pa.ArrowInvalid as exc:
            self.problems.append(f"{path} is not a CSV file pyarrow reads: {exc}")
            return
        for name in self.needed:
            if name not in names:
                self.absent[name].append(path)
        frozen: dict[str, str] = {}  # column -> the type a later value broke
        while True:
            try:
                found, rows = self._csv_pass(path, names, frozen)
                break
            except pa.ArrowInvalid as exc:
                match = _CONVERSION.search(str(exc))
                column = names[int(match.group(1))] if match and int(match.group(1)) < len(names) else None
                if column is None or column in frozen:
                    self.problems.append(f"{path} is not a CSV file pyarrow reads: {exc}")
                    return
                frozen[column] = match.group(2)
        self.rows[path] = rows
        for name, counts in found.items():
            if name in self.found:
                self.found[name][path] = counts
            else:
                self.unused_frozen.setdefault(name, {})[path] = counts

    def _csv_pass(self, path: str, names: list[str], frozen: dict[str, str]) -> tuple[dict, int]:
        """One file's counts (needed columns, and every column in frozen), and its rows."""
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in frozen}),
        )
        columns = [c for c in names if c in self.found or c in frozen]
        found = {c: _Counts(reader.schema.field(c).type, frozen=frozen.get(c)) for c in columns}
        classes, rows = Counter(), 0
        for batch in reader:
            rows += batch.num_rows
            for name in columns:
                self._values(found[name], name, batch.column(name), classes)
        self.classes.update(classes)
        return found, rows

    def _values(self, counts: _Counts, name: str, array, classes: Counter | None = None) -> None:
        counts.read = True
        if self._counted(name):
            _count_classes(array, self.classes if classes is None else classes)
        if self.fmt == "csv" and pa.types.is_string(array.type):
            self._text(counts, array)
            return
        counts.missing += array.null_count
        if pa.types.is_floating(array.type):
            counts.missing += _nan_count(array)

    @staticmethod
    def _text(counts: _Counts, array: pa.Array) -> None:
        """A CSV column read as text: which values read as numbers, which do not, which are null
        spellings (missing), and, for a column whose first block fixed another type, which values
        are not of that type."""
        empty = pc.fill_null(pc.is_in(array, value_set=_NULLS), True)
        present = pc.invert(empty)
        numeric = pc.and_(present, pc.fill_null(pc.match_substring_regex(array, _NUMBER), False))
        others = pc.and_(present, pc.invert(numeric))
        counts.missing += _true(empty)
        counts.numbers += _true(numeric)
        counts.others += _true(others)
        counts.others_eg = _examples(counts.others_eg, array, others)
        if counts.frozen is not None:
            pattern = _INTEGER if "int" in counts.frozen else _BOOLEAN if counts.frozen == "bool" else _NUMBER
            fits = pc.fill_null(pc.match_substring_regex(array, pattern), False)
            bad = present if counts.frozen == "null" else pc.and_(present, pc.invert(fits))
            counts.bad += _true(bad)
            counts.bad_eg = _examples(counts.bad_eg, array, bad)

    # -- judging -----------------------------------------------------------------------------

    def _judge(self) -> None:
        for name, by_file in self.unused_frozen.items():
            for path, counts in by_file.items():
                self.problems.append(self._frozen(f"column {name!r}", path, counts, unused=True))
        total = sum(self.rows.values())
        if not total and not self.problems:
            some = "" if len(self.files) == 1 else f" (none of its {len(self.files)} files has a row)"
            self.problems.append(f"{self.source} has no rows{some}")
            return
        for name in self.needed:
            what = f"label_column {name!r}" if name in self.labels else f"feature column {name!r}"
            by_file = self.found[name]
            if self.absent[name]:
                self.problems.append(f"{what} is missing in {self._files(self.absent[name])}")
                continue
            broken = {p: n for p, n in by_file.items() if n.frozen is not None}
            if broken:
                self.problems.extend(self._frozen(what, p, n) for p, n in broken.items())
                continue
            mixed = {p: n for p, n in by_file.items() if n.others and n.numbers > n.others}
            if mixed and not self._counted(name):
                for path, n in mixed.items():
                    self.problems.append(
                        f"{what} mixes numbers and text in {path}: {n.others} of {n.numbers + n.others} values "
                        f"{'is' if n.others == 1 else 'are'} not a number (e.g. {_quote(n.others_eg)})"
                    )
                continue
            kinds: dict[str, list[str]] = {}
            for path, n in by_file.items():
                if _kind(n.type) != "null":
                    kinds.setdefault(_kind(n.type), []).append(path)
            if len(kinds) > 1:
                seen = "; ".join(f"{k} in {self._files(files, count=False)}" for k, files in sorted(kinds.items()))
                self.problems.append(f"{what} has different types in the files of {self.source}: {seen}")
                continue
            kind = next(iter(kinds), "null")
            categorical = name in self.features and (kind in ("string", "boolean") or name in self.categorical)
            if name in self.features and kind not in ("number", "boolean", "string", "null"):
                self.problems.append(
                    f"{what} of {self.source} holds {kind}: features are numbers, or strings and booleans (categories)"
                )
                continue
            if name in self.labels and self.task == "regression" and kind not in ("number", "boolean", "null"):
                self.problems.append(f"{what} of {self.source} holds {kind}: a regression target is a number")
                continue
            missing = Counter({p: n.missing for p, n in by_file.items() if n.missing})
            if sum(missing.values()) == total:
                self.problems.append(f"{what} of {self.source} is empty: all {total} values are null or NaN")
            elif missing and name in self.labels:
                self.problems.append(
                    f"{what} has {self._counts(missing, 'missing value', ' (null or NaN)')}: a row without a "
                    "target cannot train; drop those rows"
                )
            elif missing and self.impute == "none" and not categorical:
                self.problems.append(f"{what} has {self._counts(missing, 'missing value', ' (null or NaN)')}")
                self.advice = [MISSING_FEATURE_ADVICE]
        if self.task == "classification" and not self.problems:
            self._judge_classes()

    def _judge_classes(self) -> None:
        label, classes = self.labels[0], self.classes
        if len(classes) < 2:
            only = f" ({next(iter(classes))!r})" if classes else ""
            self.problems.append(
                f"label_column {label!r} of {self.source} holds {len(classes)} class{only}: classification "
                "needs 2 or more"
            )
            return
        small = sorted((k for k, n in classes.items() if n < 2), key=str)
        if small:
            shown = ", ".join(f"{k!r}: {_n(classes[k], 'row')}" for k in small[:_SHOWN])
            more = f" and {len(small) - _SHOWN} more" if len(small) > _SHOWN else ""
            hint = (
                "is it a number to predict? set task: regression"
                if len(small) > len(classes) / 2
                else "drop those rows, or merge the class into another"
            )
            self.problems.append(
                f"label_column {label!r} of {self.source}: {len(small)} of its {len(classes)} classes "
                f"{'has' if len(small) == 1 else 'have'} fewer than 2 rows ({shown}{more}), so "
                f"{'it' if len(small) == 1 else 'they'} cannot be in both the training and the validation "
                f"split; {hint}"
            )

    def _frozen(self, what: str, path: str, n: _Counts, unused: bool = False) -> str:
        why = " (Ray Data's read_csv reads every column, used or not)" if unused else ""
        return (
            f"{what} of {path} reads as {n.frozen} in the file's first rows, but {_n(n.bad, 'later value')} "
            f"{'is' if n.bad == 1 else 'are'} not {n.frozen} (e.g. {_quote(n.bad_eg)}){why}: Ray Data's CSV reader takes each column's type "
            f"from the first {_CSV_BLOCK >> 20} MiB of a file; write one form throughout (1.0, not 1; no "
            "text in a number column), or use Parquet"
        )

    def _counts(self, by_file: Counter, what: str, note: str = "") -> str:
        """'12 WHATs in FILE', or '12 WHATs in 2 of the 3 files of FOLDER (a.parquet: 10, b.parquet: 2)'."""
        total = sum(by_file.values())
        if len(self.files) == 1:
            return f"{_n(total, what)}{note} in {self.files[0]}"
        found = list(by_file.items())
        shown = ", ".join(f"{self._rel(p)}: {n}" for p, n in found[:_SHOWN])
        more = f", and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        return (
            f"{_n(total, what)}{note} in {len(found)} of the {len(self.files)} files of {self.source} ({shown}{more})"
        )

    def _files(self, files: list[str], count: bool = True) -> str:
        if len(self.files) == 1:
            return files[0]
        shown = ", ".join(self._rel(p) for p in files[:_SHOWN])
        more = f" and {len(files) - _SHOWN} more" if len(files) > _SHOWN else ""
        lead = f"{len(files)} of the {len(self.files)} files of {self.source}: " if count else ""
        return f"{lead}{shown}{more}"

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.source)


def _names(path: str, fmt: str) -> list[str]:
    """A file's column names, from its footer (Parquet) or its first block (CSV)."""
    if fmt == "parquet":
        return list(pq.read_schema(path).names)
    return list(pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK)).schema.names)


def _statistics_nulls(meta, leaf: int | None) -> int | None:
    """A column's nulls from its row groups' statistics; None where a row group has none."""
    if leaf is None:
        return None
    total = 0
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(leaf).statistics
        if stats is None or not stats.has_null_count:
            return None
        total += stats.null_count
    return total


def _nan_count(array: pa.Array | pa.ChunkedArray) -> int:
    return _true(pc.is_nan(array))


def _count_classes(array: pa.Array, classes: Counter) -> None:
    for item in pc.value_counts(array).to_pylist():
        value = item["values"]
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            classes[value] += item["counts"]


def _true(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _examples(have: list, array: pa.Array, mask: pa.Array) -> list:
    """Up to _EXAMPLES distinct values of array where mask, after those already found."""
    if len(have) >= _EXAMPLES:
        return have
    found = pc.unique(array.filter(mask).slice(0, 1000)).to_pylist()
    return have + [v for v in found if v not in have][: _EXAMPLES - len(have)]


def _n(count: int, noun: str) -> str:
    """'1 row', '2 rows'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _quote(values: list) -> str:
    return ", ".join(repr(v) for v in values)
