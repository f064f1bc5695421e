"""A sweep trial of one worker trains in the trial's own process.

A Ray Train run per trial costs a Train controller and a worker group: two more processes,
each importing torch, and a process group to set up, before a trial's first epoch (about 13 s
of a digits trial's 26 s on 2 cores; bench/time_to_model.py prints the parts). A trial of one
fixed worker gains nothing from them, so it runs the same loop (raymaas.supervised.loop) in the
Tune trial's process, which reserves what the worker would have (raymaas.sweep.job.Trials; by
the trial's own spec, so a trial drawn to one worker in a sweep that searches num_workers
trains there too):

    TrialSession   what the loop asks of its run: rank 0 of 1, the device, the last checkpoint
                   to resume from, and each epoch's report: the checkpoint copied to the job's
                   storage (<storage>/<run name>/checkpoint_<epoch>, as Ray Train lays them out),
                   then the epoch logged to the trial's MLflow run, then the metrics to Tune
                   (its scheduler compares trials on them)

What a Train run gave the trial, it keeps: the best checkpoints by the gate metric and the
newest (checkpoint_config.num_to_keep), a restart from the newest when its process dies
(failure_config.max_failures, through Tune's FailureConfig, in a sweep none of whose trials may
run a Train run: raymaas.sweep.job.run_sweep) or the sweep is resubmitted, each epoch logged once
(an epoch stored but not logged before a stop is logged from its stored metrics on the restart).
A trial of several workers, or an elastic one, still runs a Train run.
"""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

# What a stored checkpoint's folder holds besides the loop's state: the metrics its epoch
# reported, written last, so that a folder without it was cut short and is not a checkpoint.
METRICS_FILE = "metrics.json"
PREFIX = "checkpoint_"


def trains_in_trial(spec) -> bool:
    """Whether a sweep's trial of spec trains in its own process (one worker, not elastic): the
    supervised kind's Trials.in_process, from which the sweep reserves each trial by its own
    spec."""
    scaling = spec.scaling_config
    return not scaling.elastic and scaling.max_workers == 1


class TrialSession:
    """raymaas.supervised.loop.TrainSession's methods for a loop in a Tune trial's process."""

    rank, world = 0, 1

    def __init__(self, job, selection, num_to_keep: int | None, device, datasets: dict | None):
        import pyarrow.fs

        self.device, self.datasets = device, datasets or {}
        self.client, self.run_id, self.selection, self.num_to_keep = job.client, job.run_id, selection, num_to_keep
        folder = f"{str(job.storage_path).rstrip('/')}/{job.run.run_name}"
        if "://" in folder:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(folder)
        else:
            self.fs, self.root = pyarrow.fs.LocalFileSystem(), folder
        self.fs.create_dir(self.root, recursive=True)
        self.kept = self._stored()  # [(epoch, its reported metrics, path)], oldest first
        self._resumed_at = 0

    def _stored(self) -> list[tuple[int, dict, str]]:
        from pyarrow.fs import FileSelector, FileType

        kept = []
        for info in self.fs.get_file_info(FileSelector(self.root, allow_not_found=True)):
            if info.type != FileType.Directory or not info.base_name.startswith(PREFIX):
                continue
            try:
                with self.fs.open_input_stream(f"{info.path}/{METRICS_FILE}") as stream:
                    metrics = json.loads(stream.read())
            except (OSError, ValueError):  # a copy cut short: not a checkpoint
                continue
            kept.append((int(metrics["epoch"]), metrics, info.path))
        return sorted(kept, key=lambda k: k[0])

    # ------------------------------------------------------------------ the loop's calls

    def prepare_model(self, model):
        return model.to(self.device)

    def latest_checkpoint(self):
        """The newest stored checkpoint (None on a first attempt); the epochs stored but never
        logged to the run are logged first."""
        from ray.train import Checkpoint

        from raymaas.supervised.logger import log_unlogged_epochs

        if not self.kept:
            return None
        stored = SimpleNamespace(best_checkpoints=[(None, m) for _, m, _ in self.kept], metrics=None)
        log_unlogged_epochs(self.client, self.run_id, stored)
        return Checkpoint(self.kept[-1][2], filesystem=self.fs)

    def report(self, metrics: dict, folder: str | None) -> None:
        import pyarrow.fs
        from ray import tune

        from raymaas.supervised.logger import epoch_of
        from raymaas.tracking.runs import log_metrics

        epoch, start_epoch, values = epoch_of(metrics)
        if folder is not None:
            path = f"{self.root}/{PREFIX}{epoch:06d}"
            self.fs.create_dir(path, recursive=True)
            pyarrow.fs.copy_files(
                folder, path, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=self.fs
            )
            with self.fs.open_output_stream(f"{path}/{METRICS_FILE}") as stream:
                stream.write(json.dumps(metrics).encode())
            self.kept = [k for k in self.kept if k[0] != epoch] + [(epoch, metrics, path)]
            self._evict()
        try:  # tracking trouble must not end the training (as in a Train run's logger)
            if start_epoch and start_epoch != self._resumed_at:
                self._resumed_at = start_epoch
                self.client.set_tag(self.run_id, "raymaas.resumed_from_epoch", str(start_epoch))
            log_metrics(self.client, self.run_id, values, step=epoch)
        except Exception as exc:
            print(f"raymaas: could not log epoch {epoch} to MLflow: {exc}", file=sys.stderr)
        tune.report({**metrics, "checkpoint_path": self.best_path()})

    def dataset_shard(self, name: str):
        return self.datasets[name].iterator()

    # ------------------------------------------------------------------ what is kept

    def _score(self, metrics: dict) -> float | None:
        value = metrics.get(self.selection.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value) if self.selection.higher_is_better else -float(value)
        return None

    def _evict(self) -> None:
        """Keep the num_to_keep best checkpoints by the gate metric, and the newest."""
        if self.num_to_keep is None:
            return
        scored = sorted((k for k in self.kept if self._score(k[1]) is not None), key=lambda k: -self._score(k[1]))
        keep = {k[0] for k in scored[: self.num_to_keep]} | {self.kept[-1][0]}
        for epoch, _, path in self.kept:
            if epoch not in keep:
                self.fs.delete_dir(path)
        self.kept = [k for k in self.kept if k[0] in keep]

    def best_path(self) -> str | None:
        """The kept checkpoint of the best finite gate metric (the newest when none has one)."""
        if not self.kept:
            return None
        scored = [k for k in self.kept if self._score(k[1]) is not None]
        return (max(scored, key=lambda k: self._score(k[1])) if scored else self.kept[-1])[2]


def fit_in_trial(job, prepared, selection, config: dict) -> str | None:
    """The loop in this process; the path of its best checkpoint in the job's storage."""
    import torch

    from raymaas.supervised.loop import train_loop_per_worker

    data, use_gpu, _ = prepared
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    session = TrialSession(job, selection, job.spec.checkpoint_config.num_to_keep, device, data.datasets)
    train_loop_per_worker(config, session)
    return session.best_path()
