"""The Train controller's side of a supervised job: each epoch's metrics to the job's MLflow run.

Logging in the controller rather than in a worker means an epoch that a worker died in the
middle of is never logged twice, and a restarted worker group needs no MLflow state.
"""

from __future__ import annotations

import sys


def epoch_of(metrics: dict) -> tuple[int, int, dict]:
    """A reported epoch's number, the epoch its attempt started at, and what is logged of it."""
    m = dict(metrics)
    return int(m.pop("epoch")), int(m.pop("start_epoch", 0)), m


def log_unlogged_epochs(client, run_id: str, result) -> list[int]:
    """The kept checkpoints' epochs that never reached run_id, logged from what each reported.

    The controller logs an epoch after its checkpoint is persisted; a driver stopped between
    the two leaves the epoch in storage but not in MLflow, and the resumed run starts after it
    (it may have been the last: then nothing trains again). Which epochs are logged is read
    from train_loss, which every epoch reports."""
    from raymaas.tracking.runs import FROM_CHECKPOINTS_TAG, log_metrics

    reported = [m for _, m in (result.best_checkpoints or [])] + [result.metrics or {}]
    logged = {m.step for m in client.get_metric_history(run_id, "train_loss")}
    filled = []
    for metrics in reported:
        if "epoch" not in metrics or "train_loss" not in metrics:
            continue
        epoch, _, values = epoch_of(metrics)
        if epoch in logged:
            continue
        values = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        log_metrics(client, run_id, values, step=epoch)
        logged.add(epoch)
        filled.append(epoch)
    if filled:  # the run says which epochs came from storage, across attempts
        earlier = client.get_run(run_id).data.tags.get(FROM_CHECKPOINTS_TAG, "")
        epochs = sorted({int(e) for e in earlier.split(",") if e} | set(filled))
        client.set_tag(run_id, FROM_CHECKPOINTS_TAG, ",".join(map(str, epochs)))
    return sorted(filled)


def make_mlflow_callback(tracking_uri: str, run_id: str):
    """A Ray Train UserCallback that logs each reported epoch to run_id."""
    from ray.train import UserCallback

    class MlflowEpochLogger(UserCallback):
        """Runs in the Train controller: logs each epoch once its checkpoint is persisted."""

        def __init__(self):
            self._client = None
            self._failures = 0
            self._resumed_at = 0
            self._ready = None

        def __getstate__(self):
            return {**self.__dict__, "_client": None, "_ready": None}

        def __setstate__(self, state):
            # Unpickled in the Train controller before the workers start: import MLflow and
            # open the store now, in the background. Done lazily in the first after_report,
            # its ~1.5 CPU-seconds ran beside the workers' second epoch and slowed it (seen
            # in bench/train_overhead.py on 2 cores).
            import threading

            self.__dict__.update(state)
            self._ready = threading.Thread(target=self._connect, name="raymaas-mlflow", daemon=True)
            self._ready.start()

        def _connect(self):
            from raymaas.tracking.store import get_client

            try:
                self._client = get_client(tracking_uri)
            except Exception as exc:  # after_report retries and reports it
                print(f"raymaas: MLflow store not reachable yet: {exc}", file=sys.stderr)

        def _mlflow(self):
            if self._ready is not None:
                self._ready.join()
            if self._client is None:
                self._connect()
            return self._client

        def after_report(self, run_context, metrics, checkpoint):
            from raymaas.tracking.runs import log_metrics

            epoch, start_epoch, m = epoch_of(metrics[0])
            try:
                if start_epoch and start_epoch != self._resumed_at:
                    self._resumed_at = start_epoch
                    self._mlflow().set_tag(run_id, "raymaas.resumed_from_epoch", str(start_epoch))
                log_metrics(self._mlflow(), run_id, m, step=epoch)
            except Exception as exc:  # tracking trouble must not kill training
                print(f"raymaas: could not log epoch {epoch} to MLflow: {exc}", file=sys.stderr)

        def after_exception(self, run_context, worker_exceptions):
            self._failures += 1
            try:
                self._mlflow().set_tag(run_id, "raymaas.worker_failures", str(self._failures))
            except Exception:
                pass

    return MlflowEpochLogger()
