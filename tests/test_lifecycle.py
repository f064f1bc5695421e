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
