"""Training overhead of the platform against plain PyTorch, measured in the same run.

    .venv/bin/python bench/train_overhead.py [--rows 300000] [--repeats 2] ...

Trains the same model (raymaas.supervised.models.build_model, same model config and seed) on the same
synthetic data (raymaas.supervised.data.load_builtin, source synthetic, same seed and split) with the
same batch size, Adam learning rate, epochs and torch thread count:

- plain: a plain PyTorch loop in this process (shuffle, index, step), no Ray;
- platform: the real job, `python -m jobs.supervised` with 1 Ray Train worker, as a
  subprocess on a fresh local Ray, with RAYMAAS_HOME and the MLflow store in a temporary
  folder (the project's store is never touched). Its per-epoch `epoch_seconds` and
  `samples_per_second` come from its MLflow run.

The plain loop runs before the first platform job and after each one (P J P J P), and each
platform job is compared with the plain runs on either side of it, so that a load that comes
and goes on a shared machine hits both sides alike. It prints steady-state training samples/s
of each, their ratio, and the platform's startup seconds apart from them. Target: the
platform reaches at least 0.9 of plain PyTorch's steady-state samples/s. The exit code is 0
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
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from processes import Contestant

from raymaas.supervised.data import DataSpec, load_builtin
from raymaas.supervised.models import MLPConfig, build_model

REPO = Path(__file__).resolve().parent.parent
BASE_SPEC = REPO / "jobs" / "specs" / "digits_debug.yaml"
TARGET = 0.9
_RUN_LINE = re.compile(r"raymaas: (?:MLflow )?run ([0-9a-f]{32})")
# Ray Train's own log line, forwarded to the driver's stdout, when a worker reports epoch 1.
_FIRST_REPORT = "Reporting training result 1:"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000, help="synthetic rows (a 0.2 share is held out for validation)")
    p.add_argument("--features", type=int, default=64, help="synthetic feature columns")
    p.add_argument("--classes", type=int, default=4, help="synthetic classes")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="MLP hidden layer widths")
    p.add_argument("--epochs", type=int, default=5, help="epochs; the first is warm-up, the rest are steady state")
    p.add_argument("--batch-size", type=int, default=128, help="rows per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the split, the model and the shuffling")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on both sides: the plain loop calls torch.set_num_threads(N); the Ray worker "
        "reserves N CPUs, and Ray sets its OMP_NUM_THREADS to that",
    )
    p.add_argument("--repeats", type=int, default=2, help="platform jobs; the plain loop runs one more time than this")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed for one platform job")
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary folders (MLflow store, job log) and print where"
    )
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch is warm-up")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


@dataclass
class Epochs:
    """Training-only seconds and samples of each epoch, and the final validation accuracy."""

    seconds: list[float]
    samples: list[float]
    val_accuracy: float

    @property
    def steady_median(self) -> float:
        """Median over epochs 2.. of each epoch's samples/s: one disturbed epoch does not move it."""
        return statistics.median(n / s for n, s in zip(self.samples[1:], self.seconds[1:]))

    @property
    def steady_aggregate(self) -> float:
        """Samples over seconds of epochs 2.. together."""
        return sum(self.samples[1:]) / sum(self.seconds[1:])


@dataclass
class PlatformRun:
    epochs: Epochs
    wall_s: float  # launch -> job exit
    run_created_s: float  # launch -> the driver created the MLflow run (imports, Ray start, data)
    first_report_s: float  # launch -> the worker reported epoch 1
    first_report_source: str  # where first_report_s was read
    first_logged_s: float  # launch -> epoch 1's metrics written to MLflow by the controller
    last_logged_s: float  # launch -> the last epoch's metrics written to MLflow

    @property
    def startup_s(self) -> float:
        return self.first_report_s - self.epochs.seconds[0]


# --------------------------------------------------------------------------- plain PyTorch


def data_spec(args) -> DataSpec:
    return DataSpec(source="synthetic", n_samples=args.rows, n_features=args.features, n_classes=args.classes)


def run_plain(args) -> Epochs:
    """The same model, data and optimizer in a plain PyTorch loop; times training steps only."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    split = load_builtin(data_spec(args), args.seed)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    xv, yv = torch.from_numpy(split.x_val), torch.from_numpy(split.y_val)
    model = build_model(
        MLPConfig(hidden_sizes=args.hidden),
        x.shape[1],
        args.classes,
        split.x_train.mean(0),
        split.x_train.std(0),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(args.seed)

    seconds, samples, accuracy = [], [], 0.0
    for _ in range(args.epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(x), generator=shuffle)
        train_loss = torch.zeros(())
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            train_loss += loss.detach()
        seconds.append(time.perf_counter() - started)
        samples.append(float(len(order)))

        model.eval()
        with torch.no_grad():
            accuracy = float((model(xv).argmax(1) == yv).float().mean())
    return Epochs(seconds, samples, accuracy)


# --------------------------------------------------------------------------- the platform job


def platform_command(args) -> list[str]:
    overrides = {
        "name": "bench-train-overhead",
        "data.source": "synthetic",
        "data.n_samples": args.rows,
        "data.n_features": args.features,
        "data.n_classes": args.classes,
        "model.name": "mlp",
        "model.hidden_sizes": "[" + ", ".join(map(str, args.hidden)) + "]",
        "model.dropout": 0.0,
        "train_loop_config.epochs": args.epochs,
        "train_loop_config.batch_size": args.batch_size,
        "train_loop_config.lr": args.lr,
        "train_loop_config.weight_decay": 0.0,
        "train_loop_config.seed": args.seed,
        "scaling_config.num_workers": 1,
        "scaling_config.use_gpu": "false",
        "scaling_config.resources_per_worker": f"{{CPU: {args.threads}}}",
        "failure_config.max_failures": 0,
    }
    return job_command(BASE_SPEC, overrides)


def job_command(spec: Path, overrides: dict) -> list[str]:
    """`python -m jobs.supervised SPEC --set KEY=VALUE ...` in this interpreter."""
    cmd = [sys.executable, "-m", "jobs.supervised", str(spec)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def run_platform(args, home: Path, command: list[str] | None = None) -> PlatformRun:
    """Run the real job (platform_command(args), or command) in a subprocess on a fresh local
    Ray; read its epochs from MLflow. bench/image_train.py runs its image job through this."""
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    # RAY_TMPDIR: the local Ray's session folder (logs, sockets) goes with the rest when we clean up.
    env = dict(
        os.environ, RAYMAAS_HOME=str(home), MLFLOW_TRACKING_URI=tracking_uri, RAY_TMPDIR=str(home), PYTHONUNBUFFERED="1"
    )
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray, never a cluster someone left running
    first_report: list[float] = []
    with open(home / "job.log", "w") as log:

        def read(_since_s: float, line: str) -> None:
            if not first_report and _FIRST_REPORT in line:
                first_report.append(time.time())
            log.write(line)

        # Its own session, so that on a timeout we can stop exactly the processes it started.
        job = Contestant(command or platform_command(args), cwd=REPO, env=env, on_line=read)
        try:
            rc = job.wait(args.timeout)
            if rc is None:
                raise subprocess.TimeoutExpired(job.proc.args, args.timeout)
        except BaseException:
            job.end()
            raise
        job.join()
    finished = time.time()
    launched, lines = job.launched, [line for _, line in job.lines]
    if rc != 0:
        tail = "".join(lines[-40:])
        raise RuntimeError(f"platform job exited with {rc}; last lines of its output:\n{tail}")
    found = _RUN_LINE.findall("".join(lines))
    if not found:
        raise RuntimeError("platform job printed no 'raymaas: run <id>' line")
    return _read_run(tracking_uri, found[-1], launched, finished, first_report[0] if first_report else None)


def _read_run(
    tracking_uri: str, run_id: str, launched: float, finished: float, first_report: float | None
) -> PlatformRun:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)

    def history(key: str) -> list:
        return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)

    seconds, rates, accuracy = history("epoch_seconds"), history("samples_per_second"), history("val_accuracy")
    if len(seconds) < 2:
        raise RuntimeError(f"run {run_id} logged {len(seconds)} epochs; need at least 2")
    epochs = Epochs(
        seconds=[m.value for m in seconds],
        samples=[r.value * s.value for r, s in zip(rates, seconds)],
        val_accuracy=accuracy[-1].value,
    )
    # MLflow timestamps are the Train controller's wall clock when it logged an epoch: after
    # the worker's report, and late by whatever the controller was busy with.
    first_logged = seconds[0].timestamp / 1000
    if first_report is not None:
        report_at, source = first_report, "Ray Train's 'Reporting training result 1' line"
    else:
        report_at, source = first_logged, "epoch 1's MLflow timestamp (no Ray report line seen)"
    return PlatformRun(
        epochs=epochs,
        wall_s=finished - launched,
        run_created_s=client.get_run(run_id).info.start_time / 1000 - launched,
        first_report_s=report_at - launched,
        first_report_source=source,
        first_logged_s=first_logged - launched,
        last_logged_s=seconds[-1].timestamp / 1000 - launched,
    )


# --------------------------------------------------------------------------- report


def describe(args) -> None:
    n_train = args.rows - max(1, int(round(args.rows * 0.2)))
    print(
        f"train_overhead: synthetic {args.rows:,} rows ({n_train:,} train) x {args.features} features, "
        f"{args.classes} classes; MLP {args.hidden}; batch {args.batch_size}; Adam lr {args.lr}; "
        f"{args.epochs} epochs; seed {args.seed}; {args.repeats} platform job(s), {args.repeats + 1} plain runs"
    )
    print(
        f"threads: plain calls torch.set_num_threads({args.threads}); the platform's single Ray Train worker "
        f"reserves {args.threads} CPU(s), so Ray sets its OMP_NUM_THREADS={args.threads}"
    )
    print(
        f"steady-state samples/s: median over epochs 2..{args.epochs} of each epoch's training samples / "
        "training seconds (epoch 1 is warm-up; validation and checkpoints are excluded on both sides); "
        "'aggregate' = their samples / their seconds together"
    )
    print(
        "platform startup: launch of `python -m jobs.supervised` -> its worker reports epoch 1, minus epoch 1's "
        "training seconds (imports, Ray start, data, MLflow run, worker group, model; plus epoch 1's validation "
        "and checkpoint). 'tail': the last epoch in MLflow -> the job's exit (plots, log_model, registry).",
        flush=True,
    )


def print_pair(i: int, before: Epochs, job: PlatformRun, after: Epochs) -> None:
    print(f"\nplatform job {i + 1} (with the plain runs before and after it)")
    print(f"  {'':16} {'epoch s (1, 2, ...)':38} {'steady /s':>10} {'aggregate /s':>13} {'val acc':>8}")
    for name, e in (("plain before", before), ("platform", job.epochs), ("plain after", after)):
        times = ", ".join(f"{s:.2f}" for s in e.seconds)
        print(f"  {name:16} {times:38} {e.steady_median:10,.0f} {e.steady_aggregate:13,.0f} {e.val_accuracy:8.4f}")
    print(
        f"  platform: MLflow run created at {job.run_created_s:.1f} s, epoch 1 reported at {job.first_report_s:.1f} s "
        f"(logged to MLflow at {job.first_logged_s:.1f} s), startup {job.startup_s:.1f} s, "
        f"tail {job.wall_s - job.last_logged_s:.1f} s, total wall {job.wall_s:.1f} s"
    )
    plain = statistics.mean([before.steady_median, after.steady_median])
    print(f"  ratio platform/plain steady-state samples/s: {job.epochs.steady_median / plain:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    describe(args)
    plains: list[Epochs] = [run_plain(args)]
    jobs: list[PlatformRun] = []
    for i in range(args.repeats):
        home = Path(tempfile.mkdtemp(prefix="raymaas-bench-"))
        try:
            jobs.append(run_platform(args, home))
            if i == 0 and jobs[0].first_report_source.startswith("epoch"):
                print(f"  note: startup read from {jobs[0].first_report_source}")
        finally:
            if args.keep:
                print(f"  kept {home}")
            else:
                shutil.rmtree(home, ignore_errors=True)
        plains.append(run_plain(args))
        print_pair(i, plains[i], jobs[i], plains[i + 1])

    neighbours = [statistics.mean([plains[i].steady_median, plains[i + 1].steady_median]) for i in range(len(jobs))]
    ratios = [j.epochs.steady_median / n for j, n in zip(jobs, neighbours)]
    aggregate = [
        j.epochs.steady_aggregate / statistics.mean([plains[i].steady_aggregate, plains[i + 1].steady_aggregate])
        for i, j in enumerate(jobs)
    ]
    ratio = statistics.median(ratios)
    print(f"\nsummary ({len(jobs)} platform job(s), {len(plains)} plain runs; medians)")
    print(f"  plain    steady-state samples/s:  {statistics.median(p.steady_median for p in plains):10,.0f}")
    print(f"  platform steady-state samples/s:  {statistics.median(j.epochs.steady_median for j in jobs):10,.0f}")
    print(f"  platform startup seconds:         {statistics.median(j.startup_s for j in jobs):10.1f}")
    print(f"  platform total wall seconds:      {statistics.median(j.wall_s for j in jobs):10.1f}")
    print(
        f"  ratio per job (against the mean of the plain runs before and after it; the line below is their "
        f"median): {', '.join(f'{r:.3f}' for r in ratios)}; with aggregate samples/s instead: "
        f"{', '.join(f'{r:.3f}' for r in aggregate)}"
    )
    verdict = "PASS" if ratio >= TARGET else "BELOW TARGET"
    print(f"ratio platform/plain steady-state samples/s: {ratio:.2f} (target >= {TARGET}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
