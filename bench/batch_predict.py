"""Batch scoring throughput: `raymaas predict` (Ray Data, 1 and 2 model actors) against one
process that reads the same Parquet file with pandas and calls the same pyfunc chunk by chunk.

    .venv/bin/python bench/batch_predict.py [--rows 1000000] [--batch-size 4096] [--timeout-s 600]

The model is the digits MLP's shape (64 -> 128 -> 64 -> 10, a TorchClassifier with a float32
tensor [-1, 64] signature, random weights), registered in a temporary MLflow store; the input
is one Parquet file of ROWS rows (an id and 64 float32 features, row groups of 64Ki rows).

Both sides write the same output (id, prediction) to Parquet. Each runs in a fresh process:
- peer: imports, `mlflow.pyfunc.load_model`, `pandas.read_parquet`, then `predict` on each
  chunk of BATCH rows, the output written. Its rows/s: rows / (read + predict + write).
- ours: `raymaas predict` on a local Ray (started by the job) with
  `--actors 1` and `2`. Its rows/s from the run's metrics: `rows_per_second` over the
  job's scoring (actors started and models loaded included), and `steady_rows_per_second`
  once the first block is back (actors up, as the peer's rate is with its model loaded).
The target (>= 1.5x the peer on this 2-core machine) is judged on the steady rate with 2
actors; the job rate and the wall times, start-ups included, are printed beside it. Each
process is bounded by --timeout-s. Only ratios from one run compare: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = "bench-batch-mlp"
TARGET = 1.5

PEER = textwrap.dedent(
    """
    import json, sys, time
    started = time.perf_counter()
    import mlflow, numpy as np, pandas as pd
    uri, source, target, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    imported = time.perf_counter()
    model = mlflow.pyfunc.load_model(uri)
    loaded = time.perf_counter()
    frame = pd.read_parquet(source)
    read = time.perf_counter()
    features = frame.drop(columns="id")
    predictions = np.concatenate(
        [model.predict(features.iloc[i : i + batch].to_numpy(np.float32)) for i in range(0, len(frame), batch)]
    )
    predicted = time.perf_counter()
    pd.DataFrame({"id": frame["id"], "prediction": predictions}).to_parquet(target)
    written = time.perf_counter()
    print(json.dumps({
        "rows": len(frame), "imports": imported - started, "load": loaded - imported, "read": read - loaded,
        "predict": predicted - read, "write": written - predicted, "wall": written - started,
    }))
    """
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the input file (default: 1,000,000)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per model call, both sides (default: 4096)")
    parser.add_argument("--timeout-s", type=float, default=600, help="limit for each process (default: 600)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="raymaas-bench-batch-") as tmp:
        folder = Path(tmp)
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")},
            "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
            "RAYMAAS_HOME": str(folder),
        }
        os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_URI", "RAYMAAS_HOME")})
        os.environ.pop("RAY_ADDRESS", None)
        started = time.perf_counter()
        uri = register_model()
        source = write_input(folder / "input.parquet", args.rows)
        print(
            f"batch_predict: {args.rows:,} rows x 64 float32 ({source.stat().st_size / 2**20:,.0f} MiB Parquet), "
            f"{uri}, batches of {args.batch_size}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
            f"setup {time.perf_counter() - started:.0f} s",
            flush=True,
        )

        peer = json.loads(
            subprocess.run(
                [sys.executable, "-c", PEER, uri, str(source), str(folder / "peer.parquet"), str(args.batch_size)],
                env=env,
                capture_output=True,
                text=True,
                timeout=args.timeout_s,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        peer_rate = peer["rows"] / (peer["read"] + peer["predict"] + peer["write"])
        print(
            f"peer  (pandas + pyfunc, 1 process): {peer_rate:>10,.0f} rows/s   read {peer['read']:.1f} s, "
            f"predict {peer['predict']:.1f} s, write {peer['write']:.1f} s; wall {peer['wall']:.1f} s "
            f"(imports {peer['imports']:.1f}, model load {peer['load']:.1f})",
            flush=True,
        )

        ours = {}
        for actors in (1, 2):
            ours[actors] = run_ours(uri, source, folder / f"ours-{actors}", actors, args, env)
            m = ours[actors]
            print(
                f"ours  ({actors} actor{'s' if actors > 1 else ' '}, Ray Data):   {m['steady_rows_per_second']:>10,.0f} "
                f"rows/s steady ({m['steady_rows_per_second'] / peer_rate:.2f}x); job {m['rows_per_second']:,.0f} "
                f"rows/s ({m['rows_per_second'] / peer_rate:.2f}x) in {m['seconds']:.1f} s, "
                f"{m['startup_seconds']:.1f} s of it to the first block; wall {m['wall']:.1f} s",
                flush=True,
            )
        check_same_predictions(folder)

    steady = ours[2]["steady_rows_per_second"] / peer_rate
    verdict = "met" if steady >= TARGET else "missed"
    print(
        f"batch_predict: 2 actors / peer = {steady:.2f}x steady, {ours[2]['rows_per_second'] / peer_rate:.2f}x over "
        f"the job (start-up included); 2 actors / 1 actor = "
        f"{ours[2]['steady_rows_per_second'] / ours[1]['steady_rows_per_second']:.2f}x steady; "
        f"target >= {TARGET}x (steady): {verdict}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return 0


def register_model() -> str:
    """A digits-shaped MLP with random weights, logged as a TorchClassifier and registered."""
    import mlflow
    import numpy as np
    import torch

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.tracking import ensure_experiment, get_client

    client = get_client()
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    example = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    with mlflow.start_run(experiment_id=ensure_experiment(client, "bench-batch")):
        info = log_classifier(module, example)
    version = mlflow.register_model(info.model_uri, MODEL).version
    return f"models:/{MODEL}/{version}"


def write_input(path: Path, rows: int) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    with pq.ParquetWriter(path, _schema(), use_dictionary=False) as writer:
        for start in range(0, rows, 1 << 16):
            n = min(1 << 16, rows - start)
            x = rng.normal(size=(n, 64)).astype(np.float32)
            columns = {"id": pa.array(np.arange(start, start + n)), **{f"x{i}": pa.array(x[:, i]) for i in range(64)}}
            writer.write_table(pa.table(columns, schema=_schema()))
    return path


def _schema():
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.int64()), *(pa.field(f"x{i}", pa.float32()) for i in range(64))])


def run_ours(uri: str, source: Path, out: Path, actors: int, args, env: dict) -> dict:
    """`raymaas predict` in a fresh process; the run's metrics and the process's wall time."""
    from raymaas.tracking import get_client

    run_name = f"bench-{actors}-{int(time.time())}"
    command = [
        sys.executable,
        "-c",
        "import sys; from raymaas.cli.predict import main; sys.exit(main(sys.argv[1:]))",  # `raymaas predict`
        uri,
        str(source),
        str(out),
        "--passthrough",
        "id",
        "--actors",
        str(actors),
        "--batch-size",
        str(args.batch_size),
        "--run-name",
        run_name,
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=args.timeout_s)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"raymaas predict failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    client = get_client()
    line = next(x for x in proc.stdout.splitlines() if x.startswith("raymaas: run "))
    metrics = client.get_run(line.split()[2]).data.metrics
    if int(metrics["rows_scored"]) != args.rows:
        raise RuntimeError(f"scored {metrics['rows_scored']} rows of {args.rows}")
    return {**metrics, "wall": wall}


def check_same_predictions(folder: Path) -> None:
    """Every side scored every row, the same way."""
    import pandas as pd

    peer = pd.read_parquet(folder / "peer.parquet").sort_values("id", ignore_index=True)
    for actors in (1, 2):
        ours = pd.read_parquet(folder / f"ours-{actors}").sort_values("id", ignore_index=True)
        if not (
            ours["id"].equals(peer["id"]) and (ours["prediction"].to_numpy() == peer["prediction"].to_numpy()).all()
        ):
            raise RuntimeError(f"{actors} actors: predictions differ from the peer's")


if __name__ == "__main__":
    sys.exit(main())
