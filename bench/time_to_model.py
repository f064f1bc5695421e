"""Time to a registered model: the platform's digits job against a plain PyTorch script and Ray Train by hand.

    .venv/bin/python bench/time_to_model.py [--runs 3] [--epochs N] [--only NAME ...] [--keep]

Each contestant gets the same job, jobs/specs/digits_mlp.yaml (scikit-learn's digits, its
split, MLP, batch size, Adam learning rate, seed and epochs), and is timed from the moment its
process is started until it exits, right after a new version of the spec's registered model
exists; the version is then looked up in the contestant's store (a run without one counts as
failed). Contestants, each a fresh process in its own session on the embedded default, a new
temporary RAYMAAS_HOME holding the SQLite store (MLFLOW_TRACKING_URI=sqlite:////tmp/.../mlflow.db),
Ray's session folder (RAY_TMPDIR) and checkpoints; RAY_ADDRESS unset (a fresh local Ray):

- ours: `python -m jobs.supervised jobs/specs/digits_mlp.yaml` (2 Ray Train workers);
- ray-train-by-hand: bench/peers/ray_train_by_hand.py, what a Ray user writes without the
  platform (`ray.init()`, TorchTrainer with 2 CPU workers, a checkpoint every epoch, MLflow and
  the registry after fit);
- ray-train-by-hand-hc0.2: the same with RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2 (default 2);
- plain-torch: bench/peers/plain_torch.py, one process, no Ray, per-epoch metrics to MLflow.

Both peers log the model with the platform's own pyfunc (raymaas.modelcode.pyfunc.log_classifier).
Runs are interleaved (A B C D A B C D ...), so that a load that comes and goes on a shared machine
hits all alike, and the next starts only once the whole process group of the last is gone.
Prints each run's seconds, the median, and each median over plain-torch's; then, read from the
job's output (timestamped by this script as each line arrives) and its MLflow run's per-epoch
metric timestamps, where the time of ours (and, beside it, of plain-torch) goes (the components
add up to the wall time):

- setup: process start -> the "MLflow run <id>" line (imports, Ray start, store, data);
- worker start: that line -> epoch 1's metrics in MLflow, less epoch 1's `epoch_seconds`
  (ours: the Train worker group, model, epoch 1's validation and checkpoint);
- per epoch over compute: (last epoch's timestamp - epoch 1's) / (epochs - 1), less the mean
  `epoch_seconds` of epochs 2..N (reports, checkpoints, logging, Ray Train's polling);
- publish: the last epoch's timestamp -> process exit (plots, log_model, registration, the
  exit itself); the version's creation time in the registry splits it.

Where the target is missed, a last line gives ours minus plain-torch in each of these parts.

For each Ray Train contestant it also prints the timeline in Ray Train's own logs in the run's
Ray session folder (logs/train/ray-train-*.log, JSON lines with timestamps): the controller's
start, its "[Worker Group Initialization]" steps (worker actors created, Train context
initialized, callbacks, train function launched), rank 0's first and last "Reporting training
result", and the worker group's shutdown. Ours' epochs reach MLflow from the Train controller,
after the workers report them, so the two show how far the workers ran ahead of the controller.
--keep keeps each run's folder: its output with each line's arrival second, its store and its
Ray session logs (ray/session_*/logs).

Target: ours at most 1.0x plain-torch's median wall time. Machines of this kind differ 2-5x in
speed (RAY-NOTES.md): only the ratios within one run of this script compare. The exit code is 0
either way: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from processes import end_group

from raymaas.specs import load_spec
from raymaas.supervised.job import SupervisedSpec

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "jobs" / "specs" / "digits_mlp.yaml"
PEERS = REPO / "bench" / "peers"
CONTESTANTS = ("ours", "ray-train-by-hand", "ray-train-by-hand-hc0.2", "plain-torch")
BASELINE = "plain-torch"
TARGET_RATIO = 1.0
# Ours prints "raymaas: MLflow run <id> (...)", the peers "<name>: MLflow run <id> in ...".
_RUN_LINE = re.compile(r"MLflow run ([0-9a-f]{32})")
# Ray Train's structured logs (JSON lines) in the session folder: logs/train/ray-train-*.log.
_PHASE = re.compile(r"^\[Worker Group Initialization\] (.+?) (?:completed )?in ([\d.]+)s\b")
_REPORT = re.compile(r"^Reporting training result (\d+):.* from rank 0\s*$")
# Contestants whose MLflow runs get their epochs as they happen (the by-hand peer logs after fit).
LIVE_METRICS = ("ours", "plain-torch")
# Variables that would send a contestant elsewhere or change what it measures.
_SCRUBBED = (
    "RAY_ADDRESS",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "RAYMAAS_HOME",
    "RAYMAAS_STORAGE_PATH",
    "RAY_TMPDIR",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
)


@dataclass
class Breakdown:
    """Seconds from process start, read from the output and the MLflow run (None: not seen)."""

    setup_s: float  # -> the "MLflow run" line
    worker_start_s: float  # that line -> epoch 1 logged, less epoch 1's compute
    first_epoch_s: float  # epoch 1's epoch_seconds
    per_epoch_over_s: float | None  # per epoch 2..N, over compute (None with 1 epoch)
    compute_s: float  # epoch 2..N's epoch_seconds together
    between_s: float  # epoch 1 logged -> last epoch logged
    publish_s: float  # last epoch logged -> exit
    to_registered_s: float | None  # last epoch logged -> the version's creation time
    logged_s: tuple[float, float]  # process start -> epoch 1 / the last epoch logged to MLflow


@dataclass
class TrainTimeline:
    """Seconds from process start, read from Ray Train's own logs in the run's Ray session folder."""

    controller_s: float  # the Train controller's first line
    group_started_s: float | None  # "Worker group startup completed"
    phases: list[tuple[str, float]]  # Ray Train's "[Worker Group Initialization] ... in Xs" steps
    first_report_s: float | None  # rank 0's "Reporting training result 1"
    last_report_s: float | None  # rank 0's last report
    reports: int
    shutdown_s: float | None  # "Worker group shutdown successful"


@dataclass
class Run:
    who: str
    wall_s: float | None  # None: failed (exit code, timeout, or no registered version)
    registered_s: float | None = None  # process start -> the version's creation time in the registry
    peer_done_s: float | None = None  # what a peer printed as PEER_DONE
    breakdown: Breakdown | None = None
    train: TrainTimeline | None = None
    note: str = ""
    tail: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs of each contestant; medians are over these")
    p.add_argument("--epochs", type=int, help="epochs for every contestant (default: the spec's)")
    p.add_argument(
        "--only",
        action="append",
        choices=CONTESTANTS,
        metavar="NAME",
        help=f"run only this contestant (repeatable): {', '.join(CONTESTANTS)}",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed for one run")
    p.add_argument(
        "--keep", action="store_true", help="keep each run's folder (store, Ray session logs, output) and print where"
    )
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    return args


def command(who: str, epochs: int, home: Path) -> tuple[list[str], dict[str, str]]:
    """The contestant's command line and the environment variables of its own."""
    if who == "ours":
        return [sys.executable, "-m", "jobs.supervised", str(SPEC), "--set", f"train_loop_config.epochs={epochs}"], {}
    if who == "plain-torch":
        return [sys.executable, str(PEERS / "plain_torch.py"), str(SPEC), "--epochs", str(epochs)], {}
    cmd = [
        sys.executable,
        str(PEERS / "ray_train_by_hand.py"),
        str(SPEC),
        "--epochs",
        str(epochs),
        "--storage-path",
        str(home / "ray_results"),
    ]
    return cmd, ({"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"} if who.endswith("-hc0.2") else {})


def run_once(who: str, epochs: int, home: Path, model_name: str, timeout_s: float) -> Run:
    """One contestant, launch to exit, in a fresh process group; then its version in its store."""
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    # RAY_TMPDIR: each local Ray's session folder (its logs) lies in the run's folder and goes with it.
    env.update(RAYMAAS_HOME=str(home), MLFLOW_TRACKING_URI=tracking_uri, RAY_TMPDIR=str(home), PYTHONUNBUFFERED="1")
    cmd, extra = command(who, epochs, home)
    env.update(extra)
    lines: list[tuple[float, str]] = []

    def read(stream, log) -> None:
        for line in stream:
            now = time.time()
            lines.append((now, line))
            log.write(f"{now - launched:8.3f} {line}")  # seconds since launch, as the line arrived

    launched = time.time()
    with open(home / "output.log", "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # the contestant, its local Ray and Ray's workers: one process group
        )
        reader = threading.Thread(target=read, args=(proc.stdout, log), daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
            exited = time.time()
        except subprocess.TimeoutExpired:
            rc, exited = None, time.time()
        finally:
            # Whatever of its group outlives it (Ray processes on their way out) goes too, and
            # the next contestant starts only once it is gone: it would take CPU from its start.
            end_group(proc)
        reader.join(timeout=30)
    tail = [line for _, line in lines[-15:]]
    if rc is None:
        return Run(who, None, note=f"did not finish within {timeout_s:g} s", tail=tail)
    if rc != 0:
        return Run(who, None, note=f"exited with {rc}", tail=tail)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = client.search_model_versions(f"name='{model_name}'")
    if not versions:
        return Run(who, None, note=f"exited 0 but registered no version of {model_name!r}", tail=tail)
    registered = max(v.creation_timestamp for v in versions) / 1000
    done = [float(line.split()[1]) for _, line in lines if line.startswith("PEER_DONE ")]
    result = Run(
        who, exited - launched, registered_s=registered - launched, peer_done_s=done[-1] if done else None, tail=tail
    )
    # What the run's logs and store say of where its time went: the measurement stands without it.
    if who != BASELINE:
        try:
            result.train = train_timeline(home, launched)
        except Exception as exc:  # Ray's log format is Ray's
            result.note = f"Ray Train's logs not read: {exc!r}"
    if who in LIVE_METRICS:
        try:
            result.breakdown = breakdown(client, lines, launched, exited, registered)
        except Exception as exc:
            result.note = f"no breakdown: {exc}"
    return result


def breakdown(client, lines: list[tuple[float, str]], launched: float, exited: float, registered: float) -> Breakdown:
    """Where a run's time went, from its "MLflow run" line and its per-epoch metric timestamps."""
    found = [(t, m.group(1)) for t, line in lines if (m := _RUN_LINE.search(line))]
    if not found:
        raise LookupError("no 'MLflow run <id>' line in the output")
    line_at, run_id = found[0]

    def history(key: str) -> list:
        return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)

    stamps = [m.timestamp / 1000 for m in history("val_accuracy")]
    compute = [m.value for m in history("epoch_seconds")]
    if not stamps or len(compute) != len(stamps):
        raise LookupError(f"run {run_id} has {len(stamps)} val_accuracy and {len(compute)} epoch_seconds entries")
    between = stamps[-1] - stamps[0]
    per_epoch = between / (len(stamps) - 1) - statistics.mean(compute[1:]) if len(stamps) > 1 else None
    return Breakdown(
        setup_s=line_at - launched,
        worker_start_s=stamps[0] - line_at - compute[0],
        first_epoch_s=compute[0],
        per_epoch_over_s=per_epoch,
        compute_s=sum(compute[1:]),
        between_s=between,
        publish_s=exited - stamps[-1],
        to_registered_s=registered - stamps[-1],
        logged_s=(stamps[0] - launched, stamps[-1] - launched),
    )


def train_timeline(home: Path, launched: float) -> TrainTimeline | None:
    """Ray Train's controller and rank 0 worker logs of the run's (only) Ray session; None if absent."""
    import json
    from datetime import datetime

    def entries(pattern: str) -> list[tuple[float, str]]:
        found = []
        sessions = [p for p in home.glob("ray/session_*") if not p.is_symlink()]  # not session_latest
        for path in sorted(f for p in sessions for f in p.glob(f"logs/train/{pattern}")):
            for raw in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(raw)
                    at = datetime.strptime(entry["asctime"], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time
                except (ValueError, KeyError, TypeError):
                    continue
                found.append((at - launched, str(entry.get("message", ""))))
        return sorted(found)

    controller = entries("ray-train-sys-controller-*.log")
    if not controller:
        return None
    phases, started, shutdown = [], None, None
    for at, message in controller:
        if m := _PHASE.match(message):
            if m.group(1).startswith("Worker group startup"):
                started = started if started is not None else at
            elif started is None:  # the first worker group's start; a restarted group's are not shown
                phases.append((m.group(1), float(m.group(2))))
        elif message.startswith("Worker group shutdown successful"):
            shutdown = at
    reports = {}
    for at, message in entries("ray-train-app-worker-*.log"):
        if m := _REPORT.match(message):
            reports.setdefault(int(m.group(1)), at)
    return TrainTimeline(
        controller_s=controller[0][0],
        group_started_s=started,
        phases=phases,
        first_report_s=reports[min(reports)] if reports else None,
        last_report_s=reports[max(reports)] if reports else None,
        reports=len(reports),
        shutdown_s=shutdown,
    )


# --------------------------------------------------------------------------- report


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, width: int = 7) -> str:
    return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"


def print_table(results: dict[str, list[Run]], runs: int, epochs: int) -> dict[str, float | None]:
    print(
        f"\ntime to a registered model version, {SPEC.relative_to(REPO)} with {epochs} epochs: process start -> "
        f"exit (median of {runs}; {os.cpu_count()} CPUs)"
    )
    heads = "".join(f"{'run ' + str(i + 1):>8s}" for i in range(runs))
    print(f"{'contestant':25s}{heads}{'median':>8s}{'x ' + BASELINE:>15s}{'  registered at':>16s}")
    medians = {who: _median(r.wall_s for r in rs) for who, rs in results.items()}
    base = medians.get(BASELINE)
    for who, rs in results.items():
        cells = "".join(f"{r.wall_s:8.1f}" if r.wall_s is not None else f"{'failed':>8s}" for r in rs)
        ratio = f"{medians[who] / base:15.2f}" if medians[who] is not None and base else f"{'-':>15s}"
        print(f"{who:25s}{cells}{_fmt(medians[who], 8)}{ratio}{_fmt(_median(r.registered_s for r in rs), 16)}")
    print("('registered at': process start -> the version's creation time in the registry, median)")
    return medians


def print_where(results: dict[str, list[Run]], epochs: int) -> None:
    for who in ("ours", BASELINE):
        parts = [r.breakdown for r in results.get(who, []) if r.breakdown is not None]
        if not parts:
            continue

        def med(attr: str, index: int | None = None, parts=parts) -> float | None:
            return _median(getattr(b, attr) if index is None else getattr(b, attr)[index] for b in parts)

        per_epoch = med("per_epoch_over_s")
        per_epoch_text = (
            f"per epoch {per_epoch:.2f} s over compute" if per_epoch is not None else "per epoch: n/a (1 epoch)"
        )
        setup = "ray start + setup" if who == "ours" else "imports + setup"
        print(
            f"where {who} goes: {setup} {med('setup_s'):.1f} s, worker start {med('worker_start_s'):.1f} s, "
            f"{per_epoch_text}, publish {med('publish_s'):.1f} s"
        )
        reg = med("to_registered_s")
        print(
            f"    (medians of {len(parts)}: epoch 1 compute {med('first_epoch_s'):.2f} s; epochs 2..{epochs} "
            f"{med('between_s'):.1f} s from epoch 1's log to the last's, of which compute {med('compute_s'):.1f} s; "
            f"publish: last epoch -> version registered {_fmt(reg, 0).strip()} s -> exit "
            f"{_fmt(med('publish_s') - reg if reg is not None else None, 0).strip()} s)"
        )
        print(
            f"    (epoch 1 and epoch {epochs} reached MLflow at {med('logged_s', 0):.1f} s and "
            f"{med('logged_s', 1):.1f} s from process start)"
        )


def print_rest(results: dict[str, list[Run]], over_s: float) -> None:
    """Where ours spends more than plain-torch, component by component (medians)."""
    sides = [[r.breakdown for r in results.get(w, []) if r.breakdown is not None] for w in ("ours", BASELINE)]
    if not all(sides):
        return
    parts = {
        "setup": lambda b: b.setup_s,
        "worker start and epoch 1": lambda b: b.worker_start_s + b.first_epoch_s,
        "epochs 2..N": lambda b: b.between_s,
        "publish": lambda b: b.publish_s,
    }
    diffs = ", ".join(
        f"{name} {_median(map(get, sides[0])) - _median(map(get, sides[1])):+.1f} s" for name, get in parts.items()
    )
    print(f"the rest ({over_s:.1f} s over the target), ours - {BASELINE}: {diffs}")


def print_train(results: dict[str, list[Run]], epochs: int) -> None:
    """Each Ray Train contestant's timeline from Ray Train's own logs (medians over its runs)."""
    for who, runs in results.items():
        timelines = [r.train for r in runs if r.train is not None]
        if not timelines:
            continue

        def med(attr: str, timelines=timelines) -> str:
            value = _median(getattr(t, attr) for t in timelines)
            return f"{value:.1f} s" if value is not None else "-"

        names = list(dict.fromkeys(name for t in timelines for name, _ in t.phases))
        phases = ", ".join(
            f"{name} {_median(sec for t in timelines for n, sec in t.phases if n == name):.1f} s" for name in names
        )
        print(
            f"{who} in Ray Train's logs (from process start, median of {len(timelines)}): controller up at "
            f"{med('controller_s')}, worker group started at {med('group_started_s')} ({phases}); rank 0 reported "
            f"epoch 1 at {med('first_report_s')} and epoch {epochs} at {med('last_report_s')}; workers shut down at "
            f"{med('shutdown_s')}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_spec(SupervisedSpec, SPEC)
    epochs = args.epochs or spec.train_loop_config.epochs
    who_runs = [c for c in CONTESTANTS if not args.only or c in args.only]
    print(
        f"time_to_model: {', '.join(who_runs)}; {args.runs} run(s) each, interleaved; {epochs} epochs; "
        f"registered model {spec.registered_model_name!r}",
        flush=True,
    )
    results: dict[str, list[Run]] = {who: [] for who in who_runs}
    tmp = Path(tempfile.mkdtemp(prefix="ttm-"))  # short: Ray's socket paths lie below it
    try:
        for i in range(args.runs):
            for j, who in enumerate(who_runs):
                home = tmp / f"{i + 1}-{j}"
                home.mkdir()
                run = run_once(who, epochs, home, spec.registered_model_name, args.timeout)
                results[who].append(run)
                if run.wall_s is None:
                    print(
                        f"  run {i + 1} {who:25s} FAILED: {run.note}; last output:\n" + "".join(run.tail[-8:]),
                        flush=True,
                    )
                else:
                    done = f", PEER_DONE {run.peer_done_s:.1f} s" if run.peer_done_s is not None else ""
                    note = f" ({run.note})" if run.note else ""
                    print(
                        f"  run {i + 1} {who:25s} {run.wall_s:6.1f} s (version registered at "
                        f"{run.registered_s:.1f} s{done}){note}",
                        flush=True,
                    )
                if args.keep:
                    print(f"    kept {home}")
                else:
                    shutil.rmtree(home, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    medians = print_table(results, args.runs, epochs)
    print()
    print_where(results, epochs)
    print_train(results, epochs)
    ours, base = medians.get("ours"), medians.get(BASELINE)
    if ours is None or base is None:
        missing = " and ".join(w for w, m in (("ours", ours), (BASELINE, base)) if m is None)
        print(f"target: ours <= {TARGET_RATIO:.1f}x {BASELINE}: not measured ({missing} not run or failed)")
    else:
        ratio = ours / base
        verdict = "met" if ratio <= TARGET_RATIO else "missed"
        print(f"target: ours <= {TARGET_RATIO:.1f}x {BASELINE}: {verdict} (ratio {ratio:.2f})")
        if verdict == "missed":
            print_rest(results, ours - base * TARGET_RATIO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
