"""Submitting a job to a cluster's job API (raymaas.runtime.submit), where no cluster is needed:
the command a job runs, and the refusals before anything is submitted. tests/test_cli.py submits
real jobs to the session's head."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from raymaas.runtime.submit import SubmitError, job_args, submit_job

DEBUG_SPEC = REPO / "jobs" / "specs" / "digits_debug.yaml"


def test_a_job_runs_the_same_command_here_and_on_the_cluster():
    assert job_args("jobs.supervised", "jobs/specs/x.yaml", ["a=1", "b.c=2"]) == [
        "-m",
        "jobs.supervised",
        "jobs/specs/x.yaml",
        "--set",
        "a=1",
        "--set",
        "b.c=2",
    ]
    assert job_args("jobs.rl", "s.yaml", []) == ["-m", "jobs.rl", "s.yaml"]


def test_a_spec_outside_the_project_is_refused_before_the_job_api(tmp_path):
    spec = tmp_path / "outside.yaml"
    spec.write_text("name: outside\n")
    with pytest.raises(SubmitError, match="outside the project folder") as err:
        submit_job("http://127.0.0.1:1", REPO, "jobs.supervised", spec, [])
    assert err.value.exit_code == 2


def test_an_unreachable_job_api_exits_1_naming_it():
    # In a process of its own: submitting switches this process's Ray client to token auth.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    proc = subprocess.run(
        [sys.executable, "-m", "raymaas.cli", "train", str(DEBUG_SPEC), "--address", "http://127.0.0.1:1"],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: cannot reach the Ray job API at http://127.0.0.1:1" in proc.stderr
