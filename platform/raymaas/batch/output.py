"""The output and errors folders of a batch job, written by its driver one unit at a time.

The model actors send back only what the output holds: the pass-through columns (an image's
path) and the predictions (plus, for rejected rows, the reason and the row, an image's
only by its path). That is a few bytes a row, so the driver writes it: features never reach
the driver, and the output folder needs to be reachable from the driver only, not from every
node.

Each input file (a unit, raymaas.batch.plan) is written to `.part-<name>.parquet.tmp` and renamed
to `part-<name>.parquet` once all of its rows have come back; its rejected rows go to the same
name in the errors folder, renamed first. The rename is atomic, so a part file is complete or
absent: a unit is done exactly when its part file exists, which is what a resumed run checks.
Names starting with `.` or `_` (temporary files, the marker) are skipped by pyarrow, pandas,
Spark and Ray when they read the folder as one table.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from raymaas.batch.plan import MARKER, PART_PREFIX, PART_SUFFIX, OutputPlan, Unit
from raymaas.batch.scorer import ERROR_COLUMN, INPUT_COLUMN, UNIT_COLUMN

# What a rejected row's line in the errors folder holds, besides its pass-through columns.
ERROR_NAME = "error"
INPUT_NAME = "input"


@dataclass
class UnitProgress:
    unit: Unit
    seen: int = 0
    scored: int = 0
    rejected: int = 0
    writer: object = None  # pyarrow.parquet.ParquetWriter of the output's temporary file
    errors_writer: object = None


def prepare_folders(plan: OutputPlan, marker: dict) -> None:
    """Create (or, with overwrite, empty) the output and errors folders; drop temporary files
    an interrupted attempt left; write the marker that says which run the folder belongs to."""
    out, errors = Path(plan.output), Path(plan.errors)
    if plan.clear:
        for folder in (out, errors):
            if folder.is_dir():
                shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, errors):
        if folder.is_dir():
            for stale in folder.glob(".*.tmp"):
                stale.unlink()
    if errors.is_dir():  # rejected rows of a unit stopped between its two renames: scored again
        for orphan in errors.glob(f"{PART_PREFIX}*{PART_SUFFIX}"):
            if not (out / orphan.name).exists():
                orphan.unlink()
    _atomic_write_text(out / MARKER, json.dumps(marker, indent=2) + "\n")


def finished_counts(plan: OutputPlan, unit: Unit) -> tuple[int, int]:
    """(rows scored, rows rejected) of a unit an earlier attempt committed, from its footers."""
    import pyarrow.parquet as pq

    scored = pq.ParquetFile(Path(plan.output) / unit.part_file).metadata.num_rows
    errors = Path(plan.errors) / unit.part_file
    rejected = pq.ParquetFile(errors).metadata.num_rows if errors.exists() else 0
    return scored, rejected


class OutputWriter:
    """Takes the actors' output blocks in any order; commits each unit once it is complete."""

    def __init__(self, plan: OutputPlan, units: list[Unit], passthrough: list[str], empty_schema):
        self.passthrough = list(passthrough)
        self.out, self.errors = Path(plan.output), Path(plan.errors)
        self.units = {u.index: UnitProgress(u) for u in units}
        self.empty_schema = empty_schema  # of a unit with no scored rows, until one is written
        self.committed: list[UnitProgress] = []

    def commit_empty(self) -> list[UnitProgress]:
        """Units without rows are complete before anything is read."""
        return [self._commit(p) for p in list(self.units.values()) if p.unit.num_rows == 0]

    def add(self, table) -> list[UnitProgress]:
        """One block of actor output; returns the units it completed."""
        import numpy as np
        import pyarrow.compute as pc

        ids = table.column(UNIT_COLUMN).to_numpy()
        present = np.unique(ids)
        done = []
        for index in present:
            part = table if len(present) == 1 else table.filter(pc.equal(table.column(UNIT_COLUMN), int(index)))
            progress = self.units.get(int(index))
            if progress is None:
                raise RuntimeError(f"rows of input unit {index}, which this job is not scoring (or has committed)")
            self._write(progress, part)
            if progress.seen > progress.unit.num_rows:
                raise RuntimeError(
                    f"{progress.unit.path}: {progress.seen} rows came back, the file has {progress.unit.num_rows}"
                )
            if progress.seen == progress.unit.num_rows:
                done.append(self._commit(progress))
        return done

    def check_complete(self) -> None:
        """After the last block: every unit was committed (else a row count disagreed)."""
        left = list(self.units.values())
        if left:
            p = left[0]
            raise RuntimeError(
                f"{len(left)} input files incomplete after the last block, e.g. {p.unit.path}: "
                f"{p.seen} of {p.unit.num_rows} rows came back"
            )

    def abort(self) -> None:
        """Close what is open (the temporary files stay, for the next attempt to drop)."""
        for progress in self.units.values():
            for writer in (progress.writer, progress.errors_writer):
                if writer is not None:
                    writer.close()

    def _write(self, progress: UnitProgress, part) -> None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        progress.seen += part.num_rows
        errors = part.column(ERROR_COLUMN)
        if errors.null_count < part.num_rows:  # some rows were rejected
            rejected = part.filter(pc.is_valid(errors))
            progress.rejected += rejected.num_rows
            rows = rejected.select(self.passthrough).append_column(ERROR_NAME, rejected.column(ERROR_COLUMN))
            if INPUT_COLUMN in rejected.column_names:  # an image's is its file, named by its path
                rows = rows.append_column(INPUT_NAME, rejected.column(INPUT_COLUMN))
            if progress.errors_writer is None:
                self.errors.mkdir(parents=True, exist_ok=True)
                progress.errors_writer = pq.ParquetWriter(_temporary(self.errors, progress.unit), rows.schema)
            progress.errors_writer.write_table(rows.cast(progress.errors_writer.schema))
            part = part.filter(pc.is_null(errors))
        if part.num_rows == 0:
            return
        scored = part.drop_columns([c for c in (UNIT_COLUMN, ERROR_COLUMN, INPUT_COLUMN) if c in part.column_names])
        progress.scored += scored.num_rows
        if progress.writer is None:
            progress.writer = pq.ParquetWriter(_temporary(self.out, progress.unit), scored.schema)
            self.empty_schema = scored.schema
        progress.writer.write_table(scored.cast(progress.writer.schema))

    def _commit(self, progress: UnitProgress) -> UnitProgress:
        import pyarrow.parquet as pq

        unit = progress.unit
        if progress.writer is None:  # no row scored: an empty part file still marks the unit done
            progress.writer = pq.ParquetWriter(_temporary(self.out, unit), self.empty_schema)
        for writer, folder in ((progress.errors_writer, self.errors), (progress.writer, self.out)):
            if writer is None:
                continue
            writer.close()
            # errors first: the output's part file is what says the unit is done
            _fsync_rename(_temporary(folder, unit), folder / unit.part_file)
        progress.writer = progress.errors_writer = None
        del self.units[unit.index]
        self.committed.append(progress)
        return progress


def _temporary(folder: Path, unit: Unit) -> Path:
    return folder / f".{PART_PREFIX}{unit.name}{PART_SUFFIX}.tmp"


def _fsync_rename(source: Path, target: Path) -> None:
    # The data on disk before the name that says it is complete (a crash must not leave a part
    # file that the next attempt trusts with half its rows).
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)


def _atomic_write_text(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    os.replace(staged, path)
