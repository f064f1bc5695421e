"""A job's end: the MLflow run's final status, blocking Ray calls that SIGTERM can interrupt,
and start-up work in the background.

Shared by every job kind's driver (`raymaas.runtime.driver`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

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
    """fn() in a helper thread, so that SIGTERM reaches this (main) thread at once.

    While the main thread sits inside Ray's blocking `ray.get`, Python signal handlers do not
    run: `ray job stop` would SIGKILL the driver 3 s later and the run would stay RUNNING.
    """
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # handed to the main thread below
            outcome["error"] = exc

    thread = threading.Thread(target=call, name="raymaas-call", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


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
        # waits on the blocked helper thread for about 10 s.
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
