"""The job lifecycle every driver shares (raymaas.runtime.lifecycle, runtime.entrypoint.report),
without Ray: a job's run and its line on a real SQLite store, and the exit codes of what a job
raises. The drivers' whole lifecycle on Ray is what test_supervised, test_sweep and test_batch run."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from raymaas.runtime.cluster import ResourceError
from raymaas.runtime.entrypoint import EXIT_NO_RESOURCES, report
from raymaas.runtime.lifecycle import JobDriver, final_status
from raymaas.specs import EXIT_INVALID_SPEC, SpecError
from raymaas.tracking import get_client


def test_start_run_creates_the_run_then_continues_it_and_says_so(tmp_path, capsys):
    import ray

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = JobDriver(uri, get_client(uri), None, Future())
    run = driver.start_run("exp", "job-1", params={"a": 1}, tags={"raymaas.job_kind": "predict"})
    assert driver.run is run and not run.resumed
    assert capsys.readouterr().out == f"raymaas: MLflow run {run.run_id} (job-1) in {uri}\n"
    stored = driver.client.get_run(run.run_id)
    assert stored.data.params == {"a": "1"}
    assert stored.data.tags["ray_version"] == ray.__version__ and stored.data.tags["raymaas.job_kind"] == "predict"
    with pytest.raises(RuntimeError, match="boom"), final_status(driver.client, run.run_id):
        raise RuntimeError("boom")
    assert driver.client.get_run(run.run_id).info.status == "FAILED"

    # the same run name again: the same run, continued; a caller's own line and what follows it
    again = JobDriver(uri, get_client(uri), None, Future()).start_run(
        "exp", "job-1", params={}, tags={}, line="sweep {run_name}: MLflow parent run {run_id}", then="; more"
    )
    assert again.run_id == run.run_id and again.resumed
    assert (
        capsys.readouterr().out == f"raymaas: sweep job-1: MLflow parent run {run.run_id} in {uri} [continuing]; more\n"
    )
    JobDriver(uri, get_client(uri), None, Future()).start_run("exp", "job-2", params={}, tags={}, line=None)
    assert capsys.readouterr().out == ""  # line=None: the job prints its own


class _Outcome:
    def lines(self) -> list[str]:
        return ["raymaas: done", "raymaas: run r in there"]


def _raise(error: BaseException):
    raise error


def test_report_gives_each_job_the_same_exit_codes(capsys):
    assert report(_Outcome) == 0
    assert capsys.readouterr().out == "raymaas: done\nraymaas: run r in there\n"
    assert report(lambda: _raise(SpecError("a store only this node reaches"))) == EXIT_INVALID_SPEC == 2
    assert capsys.readouterr().err == "error: a store only this node reaches\n"
    assert report(lambda: _raise(ResourceError("needs GPU 1, cluster has 0"))) == EXIT_NO_RESOURCES == 3
    assert capsys.readouterr().err == "error: needs GPU 1, cluster has 0\n"
    with pytest.raises(ValueError):  # a failed job: exit 1, with its traceback
        report(lambda: _raise(ValueError("bad")))


def test_blocking_calls_share_one_work_thread_and_a_given_up_call_does_not_block_the_next():
    """call_interruptibly runs every call on one long-lived thread (torch's OpenMP team is per
    thread: an RL job's training and evaluations on two threads competed for the cores), runs a
    call made from that thread at once, hands errors back, and gives a call its own thread while
    the work thread still runs a call the main thread gave up on."""
    import threading
    import time

    from raymaas.runtime import lifecycle
    from raymaas.runtime.lifecycle import call_interruptibly

    names = [call_interruptibly(lambda: threading.current_thread().name) for _ in range(3)]
    assert names == ["raymaas-work"] * 3
    assert call_interruptibly(lambda: call_interruptibly(lambda: 41) + 1) == 42  # nested: no deadlock
    with pytest.raises(ValueError, match="bad"):
        call_interruptibly(lambda: (_ for _ in ()).throw(ValueError("bad")))

    release = threading.Event()
    started = threading.Event()

    def stuck():
        started.set()
        release.wait(10)

    # as if the main thread had been interrupted while this ran: the work thread stays busy
    assert lifecycle._WorkThread.get().submit(stuck, threading.Event())
    started.wait(5)
    try:
        assert call_interruptibly(lambda: threading.current_thread().name) == "raymaas-call"
    finally:
        release.set()
    for _ in range(50):  # the work thread takes calls again once the given-up call ends
        if call_interruptibly(lambda: threading.current_thread().name) == "raymaas-work":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the work thread never took a call again")
