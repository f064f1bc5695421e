"""A sweep against the same configurations run one after another as single jobs.

    .venv/bin/python bench/sweep.py [--spec jobs/specs/digits_sweep.yaml] [--keep]

The spec's grid (digits_sweep.yaml: 4 learning rates x 2 layer sizes, 8 trials of 20 epochs on
one Ray Train worker each) runs twice, each contestant in a fresh RAYMAAS_HOME (its own SQLite
store, checkpoints and local Ray) and its own process session, timed from the first process
start to the last exit:

- sweep: `python -m jobs.sweep SPEC`, one local Ray, the trials as many at once as the CPUs
  hold, ASHA stopping the weak ones (the spec's tune_config);
- one after another: `python -m jobs.supervised SPEC --set tune_config=null --set
  param_space=null --set FIELD=VALUE ...` once per grid point, each a whole job (its own Ray
  start, 20 epochs, registration), the way the same search is run without a sweep.

Prints each contestant's wall time and best val_accuracy (the sweep's parent run's
best_val_accuracy; the best of the single jobs' final val_accuracy), the ratio of the walls and
the difference of the accuracies. Target: the sweep at most 0.5x the wall time with the same best
accuracy (within 0.01). A measurement, not a test: the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from processes import end_group  # noqa: E402

_SCRUBBED = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAYMAAS_HOME", "RAYMAAS_STORAGE_PATH")


def run(cmd: list[str], home: Path, log: Path, timeout_s: float = 1800) -> float:
    """cmd to its exit in a session of its own (its local Ray included); its wall seconds."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(RAYMAAS_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}", RAY_TMPDIR=str(home))
    started = time.monotonic()
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        finally:
            end_group(proc)
    wall = time.monotonic() - started
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[2:4])} exited {rc}: see {log}")
    return wall


def grid_points(spec) -> list[dict]:
    """Every configuration of a space of grid_search and choice fields (the benchmark's kind)."""
    fields = list(spec.param_space)
    for field, domain in spec.param_space.items():
        ((kind, values),) = domain.items()
        if kind not in ("grid_search", "choice"):
            raise SystemExit(f"{field}: {kind} has no finite list of points to run one after another")
    lists = [next(iter(spec.param_space[f].values())) for f in fields]
    return [dict(zip(fields, combo)) for combo in itertools.product(*lists)]


def best_accuracy(home: Path, parent_only: bool) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    if parent_only:
        (parent,) = [r for r in runs if r.data.tags.get("raymaas.sweep") == "parent"]
        return parent.data.metrics["best_val_accuracy"]
    return max(r.data.metrics["val_accuracy"] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(REPO / "jobs/specs/digits_sweep.yaml"))
    parser.add_argument("--keep", action="store_true", help="keep each contestant's folder (output, store)")
    args = parser.parse_args(argv)

    from raymaas.specs import load_spec
    from raymaas.supervised.job import SupervisedSpec

    spec = load_spec(SupervisedSpec, args.spec)
    points = grid_points(spec)
    # Short names: a local Ray's socket paths under RAY_TMPDIR must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="bsw", dir="/tmp"))
    print(f"{len(points)} configurations of {args.spec}; folders in {root}", flush=True)

    sweep_home = root / "s"
    sweep_home.mkdir()
    sweep_s = run([sys.executable, "-m", "jobs.sweep", args.spec], sweep_home, sweep_home / "output.log")
    sweep_best = best_accuracy(sweep_home, parent_only=True)
    print(f"sweep:              {sweep_s:7.1f} s  best val_accuracy {sweep_best:.4f}", flush=True)

    seq_home = root / "q"
    seq_home.mkdir()
    seq_s = 0.0
    for i, point in enumerate(points):
        sets = ["tune_config=null", "param_space=null", f"name={spec.name}-single"]
        sets += [f"{field}={json.dumps(value)}" for field, value in point.items()]
        cmd = [sys.executable, "-m", "jobs.supervised", args.spec, *itertools.chain(*(("--set", s) for s in sets))]
        wall = run(cmd, seq_home, seq_home / "output.log")
        seq_s += wall
        print(f"  single job {i + 1}/{len(points)} {point}: {wall:.1f} s", flush=True)
    seq_best = best_accuracy(seq_home, parent_only=False)
    print(f"one after another:  {seq_s:7.1f} s  best val_accuracy {seq_best:.4f}", flush=True)

    ratio = sweep_s / seq_s
    gap = sweep_best - seq_best
    print(
        f"sweep / one after another: {ratio:.2f}x wall (target <= 0.5: {'met' if ratio <= 0.5 else 'missed'}); "
        f"best val_accuracy {gap:+.4f} (target within 0.01: {'met' if abs(gap) <= 0.01 else 'missed'})",
        flush=True,
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
