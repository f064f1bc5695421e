"""`raymaas up` / `raymaas down` for real, and the rules that tell node-local storage apart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import DEBUG_SPEC, REPO, free_port
from raymaas.paths import checkpoint_storage as train_storage_path
from raymaas.runtime import localcluster
from raymaas.runtime.cluster import node_local_storage, node_local_tracking_uri


@pytest.mark.parametrize(
    "uri, local",
    [
        ("sqlite:////srv/raymaas/mlflow.db", True),
        ("file:///srv/mlruns", True),
        ("/srv/mlruns", True),
        ("http://10.0.0.5:5000", False),
        ("https://mlflow.example.com", False),
        ("databricks", False),
        ("mlruns", True),  # no scheme: a folder
    ],
)
def test_tracking_uris_that_only_one_node_reaches(uri, local):
    assert bool(node_local_tracking_uri(uri)) is local


def test_storage_that_only_one_node_reaches(monkeypatch, tmp_path):
    monkeypatch.delenv("RAYMAAS_SHARED_STORAGE", raising=False)
    for uri in ("s3://bucket/ray_results", "gs://bucket/x", "abfs://container@account/x"):
        assert node_local_storage(uri) is None
    assert node_local_storage(str(tmp_path)) == "a folder on this node's own disk"
    assert node_local_storage(f"file://{tmp_path}") is not None
    monkeypatch.setenv("RAYMAAS_SHARED_STORAGE", "1")  # the user vouches for it (an NFS mount, one machine)
    assert node_local_storage(str(tmp_path)) is None


def test_checkpoint_storage_path(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYMAAS_HOME", str(tmp_path))
    monkeypatch.delenv("RAYMAAS_STORAGE_PATH", raising=False)
    assert train_storage_path() == str(tmp_path.resolve() / "ray_results")
    monkeypatch.setenv("RAYMAAS_STORAGE_PATH", "s3://bucket/ray_results")
    assert train_storage_path() == "s3://bucket/ray_results"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYMAAS_STORAGE_PATH", "shared/ckpt")  # Ray Train wants it absolute
    assert train_storage_path() == str(tmp_path.resolve() / "shared" / "ckpt")


def _raymaas(*args, env, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "raymaas.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_free_ports_stay_out_of_the_kernels_ephemeral_range():
    """A port from bind(0) can be taken as the local port of any outgoing connection before its
    server binds it (CI once lost test_multinode's cluster so: `ray start` found its GCS port in
    use); the ports handed out come from outside that range, each once, and a preferred port is
    given only while nothing listens there. Drawn from the OS: processes that seed Python's
    random module alike (RLlib seeds it) do not draw the same ports."""
    import random
    import socket

    low, high = localcluster._ephemeral_range()
    random.seed(0)
    ports = [free_port() for _ in range(40)]
    random.seed(0)
    again = [free_port() for _ in range(40)]
    assert len(set(ports + again)) == 80
    assert not any(low <= p <= high for p in ports), ports
    assert all(p >= 20000 for p in ports), ports  # above Ray's worker ports
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[0]))
        taken.listen()
        assert localcluster.free_port(ports[0]) != ports[0]
    assert localcluster.free_port(ports[0]) == ports[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_up_submit_a_job_see_it_in_the_mlflow_server_down(tmp_path):
    home = tmp_path / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAYMAAS_HOME")
    }
    ports = [free_port() for _ in range(3)]
    up = _raymaas(
        "up",
        "--home",
        str(home),
        "--num-cpus",
        "3",
        "--port",
        str(ports[0]),
        "--dashboard-port",
        str(ports[1]),
        "--mlflow-port",
        str(ports[2]),
        env=env,
    )
    state = localcluster.read_state(home.resolve())
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert state is not None
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in up.stdout.splitlines()
            if line.strip().startswith("export ")
        )
        assert exports["RAY_ADDRESS"] == f"127.0.0.1:{ports[0]}"
        assert exports["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{ports[1]}"
        assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports[2]}"
        assert exports["RAY_AUTH_MODE"] == "token"
        # The dashboard / job API and MLflow listen on 127.0.0.1 only. (Ray's GCS port listens on
        # every interface whatever --node-ip-address says; Ray's token auth guards it.)
        listening = {c.laddr for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        for port in ports[1:]:
            assert {a.ip for a in listening if a.port == port} == {"127.0.0.1"}, port

        # The README's workflow, with the lines `up` printed.
        job_env = {**env, **exports}
        submitted = subprocess.run(
            [
                str(Path(sys.executable).parent / "ray"),
                "job",
                "submit",
                "--working-dir",
                ".",
                "--",
                "python",
                "-m",
                "jobs.supervised",
                str(DEBUG_SPEC.relative_to(REPO)),
                "--set",
                "name=up-job",
            ],
            cwd=REPO,
            env=job_env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-4000:]

        # The run is in the tracking server, seen through MLflow's REST API.
        request = urllib.request.Request(
            f"{exports['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=up-job"
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            experiment_id = json.loads(resp.read())["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{exports['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/search",
            method="POST",
            data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            (run,) = json.loads(resp.read())["runs"]
        assert run["info"]["status"] == "FINISHED"
        assert {m["key"] for m in run["data"]["metrics"]} >= {"val_accuracy", "train_loss"}

        # The job's readable output, as `ray job submit` streamed it: its run, each epoch once,
        # its outcome, the run's page in the server's UI; none of Ray's own warnings.
        out, run_id = submitted.stdout, run["info"]["run_id"]
        assert f"raymaas: MLflow run {run_id} (" in out and f" in {exports['MLFLOW_TRACKING_URI']}" in out, out[-4000:]
        epochs = re.findall(r"raymaas: epoch (\d+)/3  train_loss \S+  val_loss \S+  val_accuracy", out)
        assert epochs == ["1", "2", "3"], out[-4000:]
        assert re.search(r"raymaas: up-job version 1: val_accuracy [\d.]+ after 3 epochs; champion", out), out[-4000:]
        run_url = f"{exports['MLFLOW_TRACKING_URI']}/#/experiments/{experiment_id}/runs/{run_id}"
        assert f"raymaas: see it at {run_url}" in out.splitlines(), out[-4000:]
        with urllib.request.urlopen(run_url, timeout=30) as resp:  # the UI's page (the run is its #fragment)
            assert resp.status == 200 and b"<html" in resp.read(4096).lower()
        assert "Failed to query Ray Train Controller actor state" not in out + submitted.stderr, out[-4000:]
        assert (home / "mlflow.db").is_file() and (home / "mlartifacts").is_dir()

        # `up` again while it runs: the same cluster, nothing new started.
        again = _raymaas("up", "--home", str(home), env=env)
        assert again.returncode == 0 and f"127.0.0.1:{ports[0]}" in again.stdout
        ours = localcluster.head_processes(Path(state.temp_dir))
        assert ours and psutil.pid_exists(state.mlflow_pid)
    finally:
        down = _raymaas("down", "--home", str(home), env=env)
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    assert not localcluster.head_processes(Path(state.temp_dir))
    assert not psutil.pid_exists(state.mlflow_pid) or psutil.Process(state.mlflow_pid).status() == psutil.STATUS_ZOMBIE
    assert localcluster.read_state(home.resolve()) is None
    nothing = _raymaas("down", "--home", str(home), env=env)
    assert nothing.returncode == 0 and "nothing to stop" in nothing.stdout
