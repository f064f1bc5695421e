"""Time to a registered model: the platform's digits job against a plain PyTorch script and Ray Train by hand.

    .venv/bin/python bench/time_to_model.py [--runs 3] [--epochs N] [--only NAME ...] [--keep]

Each contestant gets the same job, jobs/specs/digits_mlp.yaml (scikit-learn's digits, its
split, MLP, batch size, Adam learning rate, seed and epochs), and is timed from the moment its
process is started until it exits, right after a new version of the spec's registered model
exists; the version is then looked up in the contestant's store (a run without one counts as
failed). Each contestant is a fresh process in its own session with a new temporary
RAYMAAS_HOME. All but ours-address run on the embedded default: RAYMAAS_HOME holds the SQLite
store (MLFLOW_TRACKING_URI=sqlite:////tmp/.../mlflow.db), Ray's session folder (RAY_TMPDIR)
and checkpoints; RAY_ADDRESS unset (a fresh local Ray):

- ours: `python -m jobs.supervised jobs/specs/digits_mlp.yaml` (2 Ray Train workers);
- ours-address: `raymaas train jobs/specs/digits_mlp.yaml --address DASHBOARD_URL`, the same
  job submitted through Ray's job API to a head that is already up, as after `raymaas up`
  (the CLI submits, then streams the driver's output until the job ends). Before each of its
  runs, untimed, the head is started in the run's folder
  (raymaas.runtime.localcluster.start, num_cpus=2: a Ray head and an MLflow tracking server),
  and the timed process is launched only once the head is idle: 5 s after `start` returns
  (HEAD_SETTLE_S: Ray's agents and dashboard are still starting), then until the head's
  processes (Ray's and the MLflow server's) together use under 0.2 of one CPU over a second
  (HEAD_IDLE_CPU; for at most 30 s more, HEAD_IDLE_TIMEOUT_S; the wait and the last reading
  are printed with the run). The process's environment: MLFLOW_TRACKING_URI the head's MLflow
  server (the client tracks through it, and the version is looked up there), RAY_ADDRESS
  unset (--address sends the job), RAYMAAS_HOME the run's folder. The head is stopped after
  the run, so it does not load the machine while the others run. Each head is new, so each
  run pays a head's first job: the project's code uploaded, the job's first worker processes;
- ray-train-by-hand: bench/peers/ray_train_by_hand.py, what a Ray user writes without the
  platform (`ray.init()`, TorchTrainer with 2 CPU workers, a checkpoint every epoch, MLflow and
  the registry after fit);
- ray-train-by-hand-hc0.2: the same with RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2 (default 2);
- plain-torch: bench/peers/plain_torch.py, one process, no Ray, per-epoch metrics to MLflow.

Both peers log the model with the platform's own pyfunc (raymaas.modelcode.pyfunc.log_classifier).
Runs are interleaved (A B C D E A B C D E ...), so that a load that comes and goes on a shared
machine hits all alike, and the next starts only once the whole process group of the last (and
ours-address's head) is gone.
Prints each run's seconds, the median, and each median over plain-torch's; then, read from the
job's output (timestamped by this script as each line arrives; for ours-address the driver's
output as the CLI streams it) and its MLflow run's per-epoch metric timestamps, where the time
of ours, of ours-address and, beside them, of plain-torch goes (the components add up to the
wall time; a part that cannot be read prints as n/a):

- setup: process start -> the "MLflow run <id>" line (imports, Ray start, store, data;
  ours-address: the submission, the code's upload, the driver's start on the head);
- worker start: that line -> epoch 1's metrics in MLflow, less epoch 1's `epoch_seconds`
  (ours: the Train worker group, model, epoch 1's validation and checkpoint);
- per epoch over compute: (last epoch's timestamp - epoch 1's) / (epochs - 1), less the mean
  `epoch_seconds` of epochs 2..N (reports, checkpoints, logging, Ray Train's polling);
- publish: the last epoch's timestamp -> process exit (plots, log_model, registration, the
  exit itself; ours-address: also the job's end reaching the CLI); the version's creation
  time in the registry splits it.

Where a target is missed, a line gives that contestant minus plain-torch in each of these parts.

For each Ray Train contestant it also prints the timeline in Ray Train's own logs in the run's
Ray session folder (logs/train/ray-train-*.log, JSON lines with timestamps; ours-address: the
head's): the controller's start, its "[Worker Group Initialization]" steps (worker actors
created, Train context initialized, callbacks, train function launched), rank 0's first and
last "Reporting training result", and the worker group's shutdown. Ours' epochs reach MLflow
from the Train controller, after the workers report them, so the two show how far the workers
ran ahead of the controller.
--keep keeps each run's folder: its output with each line's arrival second, its store and its
Ray session logs (ray/session_*/logs; ours-address: the head's, copied there before it stops).

Targets (issue 32), each contestant's median wall time over plain-torch's: ours at most 1.5x,
ours-address at most 1.0x. Machines of this kind differ 2-5x in speed (RAY-NOTES.md): only the
ratios within one run of this script compare. The exit code is 0 either way: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from processes import Contestant

from raymaas.runtime import localcluster
from raymaas.specs import load_spec
from raymaas.supervised.job import SupervisedSpec

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "jobs" / "specs" / "digits_mlp.yaml"
PEERS = REPO / "bench" / "peers"
CONTESTANTS = ("ours", "ours-address", "ray-train-by-hand", "ray-train-by-hand-hc0.2", "plain-torch")
BASELINE = "plain-torch"
# Issue 32: each contestant's median wall time over the baseline's, at most.
TARGETS = {"ours": 1.5, "ours-address": 1.0}
# The contestant that submits to a head started (untimed) before each of its runs.
ADDRESS = "ours-address"
HEAD_CPUS = 2
# Before ours-address's process starts: this long after the head's start at least, then until
# the head's processes use under HEAD_IDLE_CPU of one CPU over a second, for at most
# HEAD_IDLE_TIMEOUT_S more (a head just started is still starting its agents and dashboard).
HEAD_SETTLE_S = 5.0
HEAD_IDLE_CPU = 0.2
HEAD_IDLE_TIMEOUT_S = 30.0
# Ours prints "raymaas: MLflow run <id> (...)", the peers "<name>: MLflow run <id> in ...".
_RUN_LINE = re.compile(r"MLflow run ([0-9a-f]{32})")
# Ray Train's structured logs (JSON lines) in the session folder: logs/train/ray-train-*.log.
_PHASE = re.compile(r"^\[Worker Group Initialization\] (.+?) (?:completed )?in ([\d.]+)s\b")
_REPORT = re.compile(r"^Reporting training result (\d+):.* from rank 0\s*$")
# Contestants whose MLflow runs get their epochs as they happen (the by-hand peer logs after fit).
LIVE_METRICS = ("ours", "ours-address", "plain-torch")
# What the first part of each one's breakdown holds (process start -> its "MLflow run" line).
SETUP_PARTS = {
    "ours": "ray start + setup",
    "ours-address": "submit + driver start + setup",
    "plain-torch": "imports + setup",
}
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

    setup_s: float | None  # -> the "MLflow run" line (None: not in the output; the run found by its version)
    worker_start_s: float | None  # that line -> epoch 1 logged, less epoch 1's compute
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
    head: str = ""  # ours-address: how idle its head was when the process started
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


def command(
    who: str, epochs: int, home: Path, head: localcluster.LocalCluster | None = None
) -> tuple[list[str], dict[str, str]]:
    """The contestant's command line and the environment variables of its own."""
    epochs_set = ["--set", f"train_loop_config.epochs={epochs}"]
    if who == "ours":
        return [sys.executable, "-m", "jobs.supervised", str(SPEC), *epochs_set], {}
    if who == ADDRESS:
        assert head is not None
        # The console script a user types, `raymaas` beside this Python (`python -m raymaas.cli` else).
        script = Path(sys.executable).with_name("raymaas")
        raymaas = [str(script)] if script.is_file() else [sys.executable, "-m", "raymaas.cli"]
        return [*raymaas, "train", str(SPEC), "--address", head.dashboard_url, *epochs_set], {}
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


def run_once(
    who: str, epochs: int, home: Path, model_name: str, timeout_s: float, head: localcluster.LocalCluster | None = None
) -> Run:
    """One contestant, launch to exit, in a fresh process group; then its version in its store
    (head: ours-address's, already up; its MLflow server is the store)."""
    tracking_uri = head.mlflow_url if head else f"sqlite:///{home / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(RAYMAAS_HOME=str(home), MLFLOW_TRACKING_URI=tracking_uri, PYTHONUNBUFFERED="1")
    if head is None:
        # Each local Ray's session folder (its logs) lies in the run's folder and goes with it.
        env["RAY_TMPDIR"] = str(home)
    cmd, extra = command(who, epochs, home, head)
    env.update(extra)
    with open(home / "output.log", "w") as log:

        def stamp(since_s: float, line: str) -> None:
            log.write(f"{since_s:8.3f} {line}")  # seconds since launch, as the line arrived

        # The contestant, its local Ray and Ray's workers: one process group (ours-address's job
        # runs in the head's processes, which stop with the head). Whatever of its group outlives
        # it (Ray processes on their way out) goes too, and the next contestant starts only once
        # it is gone: it would take CPU from its start.
        contestant = Contestant(cmd, cwd=REPO, env=env, on_line=stamp)
        rc = contestant.finish(timeout_s)
    launched, exited, lines = contestant.launched, contestant.exited, contestant.lines
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
    newest = max(versions, key=lambda v: v.creation_timestamp)
    registered = newest.creation_timestamp / 1000
    done = [float(line.split()[1]) for _, line in lines if line.startswith("PEER_DONE ")]
    result = Run(
        who, exited - launched, registered_s=registered - launched, peer_done_s=done[-1] if done else None, tail=tail
    )
    # What the run's logs and store say of where its time went: the measurement stands without it.
    if who != BASELINE:
        try:
            result.train = train_timeline(Path(head.temp_dir) if head else home / "ray", launched)
        except Exception as exc:  # Ray's log format is Ray's
            result.note = f"Ray Train's logs not read: {exc!r}"
    if who in LIVE_METRICS:
        try:
            result.breakdown = breakdown(client, lines, launched, exited, registered, newest.run_id)
        except Exception as exc:
            result.note = f"no breakdown: {exc}"
    return result


def start_head(home: Path) -> tuple[localcluster.LocalCluster, str]:
    """ours-address's head (a Ray head and an MLflow server) started in home and waited for
    until idle (HEAD_SETTLE_S, then HEAD_IDLE_CPU); the head, and a line on how idle it got."""
    started = time.monotonic()
    head = localcluster.start(home, num_cpus=HEAD_CPUS)
    up_s = time.monotonic() - started
    time.sleep(HEAD_SETTLE_S)
    deadline = time.monotonic() + HEAD_IDLE_TIMEOUT_S
    while (cpu := head_cpu(head)) >= HEAD_IDLE_CPU and time.monotonic() < deadline:
        pass
    waited = time.monotonic() - started - up_s
    state = "idle" if cpu < HEAD_IDLE_CPU else "still not idle"
    return head, f"head up in {up_s:.1f} s, then {waited:.1f} s until {state}: {cpu:.2f} CPU"


def head_cpu(head: localcluster.LocalCluster) -> float:
    """CPUs the head's processes (Ray's and the MLflow server's) use together, over one second."""
    procs = localcluster.head_processes(Path(head.temp_dir), int(head.gcs_address.rsplit(":", 1)[1]))
    try:
        server = psutil.Process(head.mlflow_pid)
        procs += [server, *server.children(recursive=True)]
    except psutil.Error:
        pass

    def percent(proc: psutil.Process) -> float:
        try:
            return proc.cpu_percent(None)  # since this object's last call (the first: 0)
        except psutil.Error:
            return 0.0

    for proc in procs:
        percent(proc)
    time.sleep(1)
    return sum(percent(proc) for proc in procs) / 100


def keep_head_logs(head: localcluster.LocalCluster, home: Path) -> None:
    """Copy the head's Ray session logs into home/ray (its --temp-dir goes when it stops)."""
    for session in Path(head.temp_dir).glob("session_*"):
        if session.is_symlink() or not (session / "logs").is_dir():
            continue
        try:
            shutil.copytree(session / "logs", home / "ray" / session.name / "logs", dirs_exist_ok=True)
        except (OSError, shutil.Error) as exc:  # a log rotated away while copied
            print(f"    some of the head's logs were not kept: {exc}")


def run_with_head(who: str, epochs: int, home: Path, model_name: str, timeout_s: float, keep: bool) -> Run:
    """ours-address's run: its head started and idle first (untimed), stopped after."""
    try:
        head, idle = start_head(home)
    except Exception as exc:
        localcluster.stop(home)
        return Run(who, None, note=f"the head did not start: {exc}")
    try:
        run = run_once(who, epochs, home, model_name, timeout_s, head)
        run.head = idle
        if keep:
            keep_head_logs(head, home)
        return run
    finally:
        localcluster.stop(home)


def breakdown(
    client, lines: list[tuple[float, str]], launched: float, exited: float, registered: float, version_run_id: str
) -> Breakdown:
    """Where a run's time went, from its "MLflow run" line and its per-epoch metric timestamps;
    without the line (output the CLI did not pass on), the version's run and no setup."""
    found = [(t, m.group(1)) for t, line in lines if (m := _RUN_LINE.search(line))]
    line_at, run_id = found[0] if found else (None, version_run_id)

    def history(key: str) -> list:
        return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)

    stamps = [m.timestamp / 1000 for m in history("val_accuracy")]
    compute = [m.value for m in history("epoch_seconds")]
    if not stamps or len(compute) != len(stamps):
        raise LookupError(f"run {run_id} has {len(stamps)} val_accuracy and {len(compute)} epoch_seconds entries")
    between = stamps[-1] - stamps[0]
    per_epoch = between / (len(stamps) - 1) - statistics.mean(compute[1:]) if len(stamps) > 1 else None
    return Breakdown(
        setup_s=line_at - launched if line_at is not None else None,
        worker_start_s=stamps[0] - line_at - compute[0] if line_at is not None else None,
        first_epoch_s=compute[0],
        per_epoch_over_s=per_epoch,
        compute_s=sum(compute[1:]),
        between_s=between,
        publish_s=exited - stamps[-1],
        to_registered_s=registered - stamps[-1],
        logged_s=(stamps[0] - launched, stamps[-1] - launched),
    )


def train_timeline(ray_dir: Path, launched: float) -> TrainTimeline | None:
    """Ray Train's controller and rank 0 worker logs of the run's (only) Ray session in ray_dir
    (RAY_TMPDIR/ray, or a head's --temp-dir); None if absent."""
    import json
    from datetime import datetime

    def entries(pattern: str) -> list[tuple[float, str]]:
        found = []
        sessions = [p for p in ray_dir.glob("session_*") if not p.is_symlink()]  # not session_latest
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


def _secs(value: float | None, digits: int = 1) -> str:
    return f"{value:.{digits}f} s" if value is not None else "n/a"


def print_where(results: dict[str, list[Run]], epochs: int) -> None:
    for who in LIVE_METRICS:
        finished = [r for r in results.get(who, []) if r.wall_s is not None]
        parts = [r.breakdown for r in finished if r.breakdown is not None]
        if not finished:
            continue
        if not parts:
            why = next((r.note for r in finished if r.note), "")
            print(f"where {who} goes: n/a{f' ({why})' if why else ''}")
            continue

        def med(attr: str, index: int | None = None, parts=parts) -> float | None:
            return _median(getattr(b, attr) if index is None else getattr(b, attr)[index] for b in parts)

        per_epoch = med("per_epoch_over_s")
        per_epoch_text = f"per epoch {per_epoch:.2f} s over compute" if per_epoch is not None else "per epoch: n/a"
        print(
            f"where {who} goes: {SETUP_PARTS[who]} {_secs(med('setup_s'))}, worker start "
            f"{_secs(med('worker_start_s'))}, {per_epoch_text}, publish {_secs(med('publish_s'))}"
        )
        reg = med("to_registered_s")
        print(
            f"    (medians of {len(parts)}: epoch 1 compute {_secs(med('first_epoch_s'), 2)}; epochs 2..{epochs} "
            f"{_secs(med('between_s'))} from epoch 1's log to the last's, of which compute {_secs(med('compute_s'))}; "
            f"publish: last epoch -> version registered {_secs(reg)} -> exit "
            f"{_secs(med('publish_s') - reg if reg is not None else None)})"
        )
        print(
            f"    (epoch 1 and epoch {epochs} reached MLflow at {_secs(med('logged_s', 0))} and "
            f"{_secs(med('logged_s', 1))} from process start)"
        )


def print_rest(results: dict[str, list[Run]], who: str, over_s: float) -> None:
    """Where who spends more than plain-torch, component by component (medians; n/a: not read)."""
    sides = [[r.breakdown for r in results.get(w, []) if r.breakdown is not None] for w in (who, BASELINE)]
    if not all(sides):
        print(f"the rest ({over_s:.1f} s over the target), {who} - {BASELINE}: n/a (no breakdown)")
        return

    def worker_and_epoch_1(b: Breakdown) -> float | None:
        return b.worker_start_s + b.first_epoch_s if b.worker_start_s is not None else None

    parts = {
        "setup": lambda b: b.setup_s,
        "worker start and epoch 1": worker_and_epoch_1,
        "epochs 2..N": lambda b: b.between_s,
        "publish": lambda b: b.publish_s,
    }
    diffs = []
    for name, get in parts.items():
        mine, base = _median(map(get, sides[0])), _median(map(get, sides[1]))
        diffs.append(f"{name} {mine - base:+.1f} s" if mine is not None and base is not None else f"{name} n/a")
    print(f"the rest ({over_s:.1f} s over the target), {who} - {BASELINE}: {', '.join(diffs)}")


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
    # ours-address's head starts with this process's environment (localcluster.start): it
    # loses what the contestants' environments lose.
    for var in _SCRUBBED:
        os.environ.pop(var, None)
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
                if who == ADDRESS:
                    run = run_with_head(who, epochs, home, spec.registered_model_name, args.timeout, args.keep)
                else:
                    run = run_once(who, epochs, home, spec.registered_model_name, args.timeout)
                results[who].append(run)
                if run.wall_s is None:
                    print(
                        f"  run {i + 1} {who:25s} FAILED: {run.note}{f' ({run.head})' if run.head else ''}; "
                        "last output:\n" + "".join(run.tail[-8:]),
                        flush=True,
                    )
                else:
                    done = f", PEER_DONE {run.peer_done_s:.1f} s" if run.peer_done_s is not None else ""
                    note = "".join(f" ({x})" for x in (run.head, run.note) if x)
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
    base = medians.get(BASELINE)
    for who, target in TARGETS.items():
        if who not in results:
            continue
        mine = medians[who]
        if mine is None or base is None:
            missing = " and ".join(w for w, m in ((who, mine), (BASELINE, base)) if m is None)
            print(f"target: {who} <= {target:.1f}x {BASELINE}: not measured ({missing} not run or failed)")
            continue
        ratio = mine / base
        verdict = "met" if ratio <= target else "missed"
        print(f"target: {who} <= {target:.1f}x {BASELINE}: {verdict} (ratio {ratio:.2f})")
        if verdict == "missed":
            print_rest(results, who, mine - base * target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
