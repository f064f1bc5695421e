"""Jobs survive worker loss, `ray job stop` leaves a true run status, and a resubmitted job
continues its own run: all on a real Ray head through the real job API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import DEBUG_SPEC, REPO, head_processes, ray_status, wait_for
from raymaas.tracking import JOB_KEY_TAG
from raymaas.tracking.runs import epochs_from_checkpoints

pytestmark = pytest.mark.slow

# Epochs of a few seconds each on 2 workers: long enough to act in the middle of a run.
SLOW_EPOCHS = [
    "--set",
    "data.source=synthetic",
    "--set",
    "data.n_samples=30000",
    "--set",
    "data.n_features=32",
    "--set",
    "model.hidden_sizes=[256, 256]",
    "--set",
    "train_loop_config.batch_size=32",
]


def runs_named(client, run_name: str):
    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{JOB_KEY_TAG}` = '{run_name}'",
    )


def epochs_logged(client, run_name: str) -> list[int]:
    runs = runs_named(client, run_name)
    if not runs:
        return []
    return sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val_accuracy"))


def train_workers(ray_head) -> list[psutil.Process]:
    found = []
    for proc in head_processes(ray_head.temp_dir):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def test_killed_worker_resumes_from_checkpoint_in_one_run(ray_head, mlflow_client, tmp_path):
    run_name = "ft-kill-worker"
    log = tmp_path / "driver.log"  # a file, not a pipe: a wait that times out reads it
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.supervised",
            str(DEBUG_SPEC),
            *SLOW_EPOCHS,
            "--set",
            "name=ft-kill",
            "--set",
            f"mlflow.run_name={run_name}",
            "--set",
            "train_loop_config.epochs=5",
            "--set",
            "failure_config.max_failures=2",
        ],
        cwd=REPO,
        env=ray_head.env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = lambda: f"driver output:\n{log.read_text()[-3000:]}\n`ray status`:\n{ray_status(ray_head.address)}"
    try:
        wait_for(
            lambda: len(epochs_logged(mlflow_client, run_name)) >= 2 or driver.poll() is not None,
            300,
            "two epochs",
            seen=seen,
        )
        assert driver.poll() is None, f"the driver ended early (exit {driver.returncode}):\n{log.read_text()[-4000:]}"
        workers = wait_for(lambda: train_workers(ray_head), 30, "a Ray Train worker process", seen=seen)
        victim = workers[-1]
        killed_after = epochs_logged(mlflow_client, run_name)[-1]
        victim.send_signal(signal.SIGKILL)
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log.read_text()
    assert driver.returncode == 0, output[-4000:]
    (run,) = runs_named(mlflow_client, run_name)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["raymaas.worker_failures"]) >= 1
    resumed_from = int(run.data.tags["raymaas.resumed_from_epoch"])
    assert 1 <= resumed_from <= killed_after + 2  # the epoch after the last checkpoint, never 0
    # Each epoch logged once: the restarted workers did not begin again at epoch 0.
    assert epochs_logged(mlflow_client, run_name) == list(range(5))
    _assert_best_epoch_registered(mlflow_client, run, "ft-kill")


def _assert_best_epoch_registered(client, run, model_name: str) -> None:
    """The version registered is the best epoch's over the whole run, the epochs before the
    restart included: a resumed job keeps the best it had."""
    values = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)]
    metrics = client.get_run(run.info.run_id).data.metrics
    assert values[int(metrics["best_epoch"]) - 1] == max(values), (metrics, values)
    assert metrics["best_val_accuracy"] == pytest.approx(max(values))
    (version,) = client.search_model_versions(f"name='{model_name}' and run_id='{run.info.run_id}'")
    assert float(version.tags["raymaas.gate_value"]) == pytest.approx(max(values))


def _ray_cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    return subprocess.run([ray, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_stop_and_resubmit(ray_head, mlflow_client):
    """The README's `ray job submit`; `ray job stop` leaves the run KILLED; submitting the same
    run name again continues that run from its checkpoint and finishes it."""
    env = {k: v for k, v in ray_head.env.items() if k != "RAY_ADDRESS"}
    run_name = "ft-submit"
    args = [
        str(DEBUG_SPEC.relative_to(REPO)),
        *SLOW_EPOCHS,
        "--set",
        "name=ft-submit",
        "--set",
        f"mlflow.run_name={run_name}",
        "--set",
        "train_loop_config.epochs=6",
    ]
    job_id = f"ft-submit-{os.getpid()}"
    submitted = _ray_cli(
        "job",
        "submit",
        "--address",
        ray_head.dashboard_url,
        "--working-dir",
        ".",
        "--no-wait",
        "--submission-id",
        job_id,
        "--",
        "python",
        "-m",
        "jobs.supervised",
        *args,
        env=env,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_seen = lambda: _ray_cli("job", "logs", "--address", ray_head.dashboard_url, job_id, env=env, timeout=60).stdout[
        -3000:
    ]
    wait_for(
        lambda: len(epochs_logged(mlflow_client, run_name)) >= 1,
        300,
        "the first epoch of the submitted job",
        seen=job_seen,
    )
    stopped = _ray_cli("job", "stop", "--address", ray_head.dashboard_url, job_id, env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    (run,) = wait_for(
        lambda: [r for r in runs_named(mlflow_client, run_name) if r.info.status != "RUNNING"],
        60,
        "a final status",
        seen=job_seen,
    )
    assert run.info.status == "KILLED"
    done_before = epochs_logged(mlflow_client, run_name)
    assert 1 <= len(done_before) < 6

    again = _ray_cli(
        "job",
        "submit",
        "--address",
        ray_head.dashboard_url,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "jobs.supervised",
        *args,
        env=env,
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "[continuing]" in again.stdout
    (run,) = runs_named(mlflow_client, run_name)
    assert run.info.status == "FINISHED"
    assert epochs_logged(mlflow_client, run_name) == list(range(6))
    # the epoch after the last one logged before the stop, or after the one whose checkpoint was
    # persisted as the stop came (logged from that checkpoint when the job ended)
    from_checkpoints = epochs_from_checkpoints(run)
    assert int(run.data.tags["raymaas.resumed_from_epoch"]) == done_before[-1] + 1 + from_checkpoints
    version = mlflow_client.search_model_versions("name='ft-submit'")
    assert len(version) == 1 and version[0].run_id == run.info.run_id
    _assert_best_epoch_registered(mlflow_client, run, "ft-submit")


def test_gpus_the_cluster_cannot_provide_fail_fast(ray_head):
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.supervised",
            str(DEBUG_SPEC),
            "--set",
            "name=ft-gpu",
            "--set",
            "scaling_config.use_gpu=true",
            "--set",
            "scaling_config.placement_timeout_s=3",
        ],
        cwd=REPO,
        env=ray_head.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "GPU: needs 2, cluster has 0" in proc.stderr
    assert elapsed < 60  # 3 s of waiting plus joining the cluster; Ray alone would retry forever
