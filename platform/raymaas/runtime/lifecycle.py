"""A job's lifecycle in its driver, the same for single jobs, sweeps and batch scoring:

    with JobDriver.connect(address, logs=...) as driver:
                                open the MLflow store while Ray starts (in_background), connect,
                                say where Ray's logs are, check multi-node storage; Ray shut
                                down when the block ends, however it ends
        ...                     the job's own checks: no run yet
        run = driver.start_run(experiment, run_name, params=..., tags=...)
                                the job's one MLflow run, created or continued by name, and
                                the line that names it
        with final_status(driver.client, run.run_id) as status:
            ...                 the work: the run ends FINISHED, FAILED or KILLED, never RUNNING
            status.set("FINISHED")

and blocking calls on one long-lived work thread, while the main thread stays free for SIGTERM
(call_interruptibly). The exit codes of what such a job raises are raymaas.runtime.entrypoint's
(report). Used by raymaas.runtime.driver (run_job), raymaas.sweep.job (run_sweep) and
raymaas.batch.job (run_predict).
"""

from __future__ import annotations

import contextlib
import importlib
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class Killed(BaseException):
    """SIGTERM (what `ray job stop` sends) or Ctrl-C reached the driver."""


def in_background(fn: Callable[..., T], *args, name: str = "raymaas-background") -> Future[T]:
    """fn(*args) in a thread of its own, as a Future: for start-up work (opening a store,
    importing a heavy module) that can overlap with starting Ray in the caller's thread."""
    pool = ThreadPoolExecutor(1, thread_name_prefix=name)
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)


def call_interruptibly(fn: Callable[[], T]) -> T:
    """fn() on the job's work thread, so that SIGTERM reaches this (main) thread at once.

    While the main thread sits inside Ray's blocking `ray.get`, Python signal handlers do not
    run: `ray job stop` would SIGKILL the driver 3 s later and the run would stay RUNNING.

    Every call runs on one long-lived thread, not a thread per call: torch gives each thread
    that computes its own OpenMP team, and on a small machine two teams (an RL job's training and
    its evaluations, once on a thread each) compete for the same cores, which made every
    training iteration after the first evaluation nearly twice as slow. A call made on the work
    thread itself runs at once; one made while the thread still runs a call the main thread gave
    up on (interrupted) gets a thread of its own.
    """
    work = _WorkThread.get()
    if threading.current_thread() is work.thread:
        return fn()
    done = threading.Event()
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    if not work.submit(call, done):
        threading.Thread(target=lambda: (call(), done.set()), name="raymaas-call", daemon=True).start()
    while not done.wait(0.2):
        pass
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class _WorkThread:
    """The driver's one thread for blocking work (a daemon: a driver that is told to stop does
    not wait for the work it gave up on)."""

    _instance: _WorkThread | None = None
    _lock = threading.Lock()

    def __init__(self):
        self._tasks: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._busy = False
        self.thread = threading.Thread(target=self._run, name="raymaas-work", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _WorkThread:
        with cls._lock:
            # a new one in a forked child, whose copy of the thread does not run
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def submit(self, task: Callable[[], None], done: threading.Event) -> bool:
        """Queue task (done set once it has run and the thread is free again) unless the
        thread is still busy, with a call its caller gave up on."""
        with self._lock:
            if self._busy:
                return False
            self._busy = True
            self._tasks.put((task, done))
        return True

    def _run(self) -> None:
        while True:
            task, done = self._tasks.get()
            try:
                task()
            finally:
                # free before the caller hears: its next call finds the thread free
                with self._lock:
                    self._busy = False
                done.set()


class FinalStatus:
    """What the run's status will be if the block ends without an exception."""

    def __init__(self):
        self.value: str | None = None

    def set(self, value: str) -> None:
        self.value = value


@contextlib.contextmanager
def final_status(client, run_id: str):
    """Leave the run FINISHED, FAILED (with the error) or KILLED; never RUNNING."""
    from raymaas.tracking.runs import end_job_run

    def on_signal(signum, frame):
        raise Killed(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    status = FinalStatus()
    try:
        yield status
    except Killed as exc:
        # `ray job stop` sends SIGTERM and SIGKILLs 3 s later: mark the run first.
        end_job_run(client, run_id, "KILLED", error=f"stopped by {exc}")
        import ray

        # Ends this job's actors and workers now; left to interpreter exit, the teardown
        # waits on the blocked work thread for about 10 s.
        ray.shutdown()
        raise SystemExit(128 + (signal.SIGTERM if str(exc) == "SIGTERM" else signal.SIGINT)) from None
    except BaseException as exc:
        end_job_run(client, run_id, "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    else:
        end_job_run(client, run_id, status.value or "FINISHED")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class JobDriver:
    """A job's driver once Ray is up: its tracking store, checkpoint folder and MLflow run.
    As a context manager (`with JobDriver.connect(...) as driver:`), Ray is shut down when the
    block ends, however it ends: now, not at interpreter exit, where Ray's teardown took 10 s
    after a Train job (1.5 s here) and waits on the threads of a batch job."""

    tracking_uri: str
    client: Any  # mlflow.tracking.MlflowClient
    storage_path: str | None  # where checkpoints go (None: a job that keeps none)
    warming: Future  # warm_imports; wait for it before the work imports them too
    run: Any = None  # raymaas.tracking.JobRun, once start_run made it

    @classmethod
    def connect(
        cls,
        address: str | None,
        *,
        logs: str,
        client=None,
        checkpoints: bool = True,
        warm_imports: Sequence[str] = (),
        **connect_options,
    ) -> JobDriver:
        """Connect to Ray for one job (cluster.connect: address, else RAY_ADDRESS, else a local
        Ray with connect_options), opening the MLflow store meanwhile unless the job has (client).

        logs says what writes to Ray's log folder, in the line that names it. checkpoints: the
        checkpoint folder (paths.checkpoint_storage) is the job's, and a store or folder that
        only one node of several reaches is refused (SpecError, exit 2). warm_imports are
        imported in a thread while Ray starts (driver.warming)."""
        import ray

        from raymaas import paths
        from raymaas.runtime import cluster
        from raymaas.tracking import get_client

        tracking_uri = paths.tracking_uri()
        # While Ray starts (seconds, mostly waiting on its processes): open the store (a new
        # SQLite store runs MLflow's migrations) and import what the job will import anyway.
        opening = None if client is not None else in_background(get_client, tracking_uri, name="raymaas-mlflow")
        # One thread, in order; waited for before the work: torch's packages import each other
        # in circles, and the same package imported by two threads at once can come back half
        # initialised ("cannot import name 'IndentedBuffer' from partially initialized module
        # 'torch._inductor.utils'", seen once in an RL job).
        warming = in_background(lambda: [importlib.import_module(m) for m in warm_imports], name="raymaas-imports")
        # The job prints its own progress; what Ray's processes print stays in Ray's log folder.
        cluster.connect(address, log_to_driver=False, **connect_options)
        print(f"raymaas: Ray's logs ({logs}) in {cluster.ray_logs_dir()}", flush=True)
        try:
            client = opening.result() if opening is not None else client
            storage_path = None
            if checkpoints:
                storage_path = paths.checkpoint_storage()
                # Several nodes: refuse a SQLite store or a node-local checkpoint folder before anything starts.
                cluster.check_multi_node_storage(tracking_uri, storage_path)
        except BaseException:
            ray.shutdown()
            raise
        return cls(tracking_uri, client, storage_path, warming)

    def __enter__(self) -> JobDriver:
        return self

    def __exit__(self, *exc_info) -> None:
        import ray

        ray.shutdown()

    def start_run(
        self,
        experiment: str,
        run_name: str,
        *,
        params: dict[str, Any],
        tags: dict[str, str],
        line: str | None = "MLflow run {run_id} ({run_name})",
        then: str = "",
    ):
        """The job's one MLflow run: continued if one of run_name exists, else created (with
        params, tags and ray_version). Prints `raymaas: LINE in TRACKING_URI [continuing]THEN`,
        line formatted with the run's run_id and run_name; None: the job prints its own."""
        import ray

        from raymaas.tracking import start_job_run

        self.run = start_job_run(
            self.client, experiment, run_name, params=params, tags={"ray_version": ray.__version__, **tags}
        )
        if line is not None:
            print(
                f"raymaas: {line.format(run_id=self.run.run_id, run_name=run_name)} in {self.tracking_uri}"
                + (" [continuing]" if self.run.resumed else "")
                + then,
                flush=True,
            )
        return self.run
