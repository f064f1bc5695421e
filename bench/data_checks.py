"""What the data checks before Ray cost: `scan_table` (raymaas.supervised.checks) on a ~1 GB
Parquet file and a ~200 MB CSV, against pyarrow reading the same table in the same run.

    .venv/bin/python bench/data_checks.py [--parquet-mb 1000] [--csv-mb 200] [--dir /tmp]

The files are generated in a temporary folder under --dir and deleted after: the Parquet file
holds 30 float64 features, an int64 feature and an int64 label (10 classes), in row groups of
256Ki rows (random values: about as large on disk as in memory); the CSV 16 float features
(6 decimals) and a label. Each scan runs three ways:
- Parquet, classification: the footers, then the 30 float columns (NaN) and the label (its
  classes) read; the int64 feature's nulls from the row groups' statistics;
- Parquet, regression: the same but the label's nulls from statistics;
- CSV, classification: every column parsed, as Ray Data's read_csv parses it.
The peer is pyarrow reading the whole table (`pq.read_table`, `pyarrow.csv.read_csv`, both
multi-threaded), which a scan cannot beat by much for the columns it must read: the ratio
(scan / read) says what the checks add to a plain read. The files are freshly written, so
they are in the page cache: a cold read adds the disk's time to both sides.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "platform"))

from raymaas.supervised import checks  # noqa: E402

FEATURES = [f"f{i}" for i in range(30)]
GROUP = 1 << 18


def write_parquet(path: Path, megabytes: int) -> None:
    rng = np.random.default_rng(0)
    schema = pa.schema([*(pa.field(c, pa.float64()) for c in FEATURES), ("n", pa.int64()), ("y", pa.int64())])
    groups = max(1, round(megabytes * 1e6 / (GROUP * 8 * 32)))
    with pq.ParquetWriter(path, schema) as writer:
        for _ in range(groups):
            columns = {c: rng.normal(size=GROUP) for c in FEATURES}
            table = pa.table({**columns, "n": rng.integers(0, 100, GROUP), "y": rng.integers(0, 10, GROUP)})
            writer.write_table(table, row_group_size=GROUP)


def write_csv(path: Path, megabytes: int) -> None:
    rng = np.random.default_rng(1)
    rows = int(megabytes * 1e6 / 165)  # 16 values of about 10 characters, and a label
    columns = {c: np.round(rng.normal(size=rows), 6) for c in FEATURES[:16]}
    pcsv.write_csv(pa.table({**columns, "y": rng.integers(0, 10, rows)}), path)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parquet-mb", type=int, default=1000)
    parser.add_argument("--csv-mb", type=int, default=200)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="raymaas-bench-checks-", dir=args.dir))
    try:
        parquet, csv = folder / "rows.parquet", folder / "rows.csv"
        write_parquet(parquet, args.parquet_mb)
        write_csv(csv, args.csv_mb)
        cases = [
            ("parquet, classification", parquet, "parquet", "classification", pq.read_table),
            ("parquet, regression", parquet, "parquet", "regression", pq.read_table),
            ("csv, classification", csv, "csv", "classification", pcsv.read_csv),
        ]
        print(f"{'case':<26}{'MB':>7}{'rows':>11}{'read cols':>11}{'scan s':>9}{'pyarrow s':>11}{'ratio':>7}")
        for name, path, fmt, task, peer in cases:
            checks._CACHE.clear()
            scan_s, facts = timed(checks.scan_table, path, fmt, ["y"], task=task)
            read_s, _ = timed(peer, path)
            size = path.stat().st_size / 1e6
            read = f"{len(facts.read)}/{len(facts.columns)}"
            print(
                f"{name:<26}{size:>7.0f}{facts.rows:>11,}{read:>11}{scan_s:>9.2f}{read_s:>11.2f}{scan_s / read_s:>7.2f}"
            )
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
