"""Submitting a job to a cluster's Ray job API (`raymaas train SPEC --address URL`): the
project folder as the job's working_dir, raymaas as a py_module, the store and Ray settings a
local job would get; then its logs followed here, and the driver's verdict as the exit code.

The same command runs the job either way: `python -m MODULE SPEC --set ...` (`job_args`), here
as a process of this Python, or there as the job's entrypoint.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from raymaas import paths
from raymaas.runtime.entrypoint import EXIT_NO_RESOURCES
from raymaas.specs import EXIT_INVALID_SPEC

# What never travels with a job: the environment, the local MLflow store, Train storage.
JOB_EXCLUDES = [
    ".venv",
    ".git",
    "mlartifacts",
    "mlflow.db",
    "ray_results",
    ".raymaas",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
]


class SubmitError(Exception):
    """A job that could not be submitted or followed; exit_code is what the command exits with
    (2: the spec cannot travel with the job, 1: the job API failed)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def job_args(module: str, spec: str, overrides: Iterable[str]) -> list[str]:
    """`-m MODULE SPEC --set ...`: a job's command after its Python."""
    return ["-m", module, spec, *[arg for item in overrides for arg in ("--set", item)]]


def submit_job(address: str, root: Path, module: str, spec_path: Path, overrides: Sequence[str]) -> int:
    """Submit the job to the cluster's job API with the project's code, follow its logs; the
    exit code: 0 succeeded, the driver's own 2 (invalid spec) or 3 (no resources) when it
    exited with those, 1 any other failure, 130 when Ctrl-C stopped following (the job keeps
    running). SubmitError if it cannot be submitted."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from raymaas.runtime.cluster import _use_token_auth_if_available, job_env, raymaas_code_dir

    try:
        rel_spec = spec_path.resolve().relative_to(root)
    except ValueError:
        raise SubmitError(
            f"spec {spec_path} is outside the project folder {root}, so it would not travel with the job",
            EXIT_INVALID_SPEC,
        ) from None
    # Where the job tracks and keeps checkpoints, as for a local job (raymaas.paths.FORWARDED_ENV),
    # and the Ray settings a local job's processes get (cluster.JOB_RAY_ENV).
    env_vars = {**job_env(), "MLFLOW_TRACKING_URI": paths.tracking_uri()}
    runtime_env = {
        "working_dir": str(root),
        "py_modules": [raymaas_code_dir()],
        "env_vars": env_vars,
        "excludes": JOB_EXCLUDES,
    }
    entrypoint = shlex.join(["python", *job_args(module, rel_spec.as_posix(), overrides)])

    # An explicit --address must win: Ray's client otherwise takes RAY_ADDRESS (often the
    # GCS address of the same cluster, which it cannot use without joining it).
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        os.environ.pop(var, None)
    # The dashboard of a Ray 2.60 cluster answers 401 unless the saved token is sent, which
    # the client does only in token mode.
    _use_token_auth_if_available()
    try:
        client = JobSubmissionClient(address)
    except ConnectionError as err:
        raise SubmitError(f"cannot reach the Ray job API at {address}: {err}") from None
    job_id = _submit_with_retry(
        client,
        submission_id=f"raymaas-{spec_path.stem}-{secrets.token_hex(4)}",
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        metadata={"raymaas.spec": str(rel_spec)},
    )
    print(
        f"raymaas: submitted {job_id} to {address}: {entrypoint}\n"
        f"raymaas: MLflow store {env_vars['MLFLOW_TRACKING_URI']}\n"
        f"raymaas: following its logs (Ctrl-C stops following, not the job: `ray job stop --address {address} {job_id}`)",
        flush=True,
    )
    try:
        asyncio.run(_print_job_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"\nraymaas: stopped following {job_id}; it keeps running", file=sys.stderr)
        return 130
    except RuntimeError as err:  # the log stream broke; the job itself may be fine
        print(f"raymaas: lost the log stream of {job_id}: {err}", file=sys.stderr)
    info = _wait_for_job_end(client, job_id)
    exit_code = "" if info.driver_exit_code is None else f", driver exit code {info.driver_exit_code}"
    # On failure Ray's message repeats the last 20,000 characters of the logs just printed.
    message = (info.message or "").partition("\n")[0]
    print(f"raymaas: job {job_id} {info.status}{exit_code}: {message}", flush=True)
    if info.status == JobStatus.SUCCEEDED:
        return 0
    # The driver's own verdicts, found on the cluster: 2 the spec cannot run there (e.g. a
    # node-local MLflow store on a multi-node cluster), 3 the cluster lacks the resources.
    return info.driver_exit_code if info.driver_exit_code in (EXIT_INVALID_SPEC, EXIT_NO_RESOURCES) else 1


def _submit_with_retry(client, timeout_s: float = 120, **request) -> str:
    # A head that has just started (or is busy) may not have its job agent up yet: the job API
    # then answers 500 "No available agent to submit job, please try again later" before it
    # creates anything, so trying again is safe.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**request)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() >= deadline:
                raise SubmitError(f"the Ray job API refused the job: {err}") from None
            print("raymaas: the cluster's job agent is not ready yet; trying again", file=sys.stderr, flush=True)
            time.sleep(2)


async def _print_job_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def _wait_for_job_end(client, job_id: str, timeout_s: float = 60):
    # The log stream closes when the driver exits; the status may lag it by a moment.
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal() or time.monotonic() >= deadline:
            return info
        time.sleep(0.2)  # what `raymaas train --address` waits after the driver's last line
