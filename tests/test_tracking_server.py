"""The tracking server as deployed: `mlflow server` on a real PostgreSQL, serving the artifacts.

cluster.yaml's head runs MLflow on PostgreSQL with `--serve-artifacts`: runs, metrics and the
registry live in the database, and every client (drivers, Train workers, endpoints) reads and
writes artifacts through the server over HTTP (`mlflow-artifacts:` URIs), so no node needs the
server's disk. Here the same: a throwaway PostgreSQL server (tests/postgres.py), the server as
`raymaas up` starts it (raymaas.runtime.localcluster), and 8 training jobs submitted at once
through Ray's job API, each finishing with every epoch's metrics and a registered model.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import DEBUG_SPEC, REPO, free_port, ray_status, wait_for
from postgres import postgres_server
from raymaas.runtime import localcluster
from raymaas.tracking import JOB_KEY_TAG

N_JOBS = 8  # submitted at once, one Train worker each: the head offers N_JOBS logical CPUs
EPOCHS = 3  # the debug spec's
PREFIX = "tracking-pg"  # experiments, registered models and run names of this module's jobs


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _tracking_client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def _assert_secret_kept(password: str, pid: int, *files: Path) -> None:
    """The database password is on no command line of the server's processes and in none of files."""
    server = psutil.Process(pid)
    for proc in (server, *server.children(recursive=True)):
        assert password not in " ".join(proc.cmdline()), proc.cmdline()
    for path in files:
        assert password not in path.read_text(errors="replace"), path


def _end(pid: int) -> None:
    """End the process pid and its children, by PID, if it still runs."""
    try:
        server = psutil.Process(pid)
        localcluster.end_processes([server, *server.children(recursive=True)])
    except psutil.NoSuchProcess:
        pass


# --------------------------------------------------------------------------- no Ray


def test_a_store_password_is_masked_wherever_it_is_shown():
    assert localcluster.masked("postgresql://mlflow:s3cr3t@db.internal:5432/mlflow") == (
        "postgresql://mlflow:***@db.internal:5432/mlflow"
    )
    assert localcluster.masked("postgresql+psycopg2://u:p%40ss@10.0.0.5/m?sslmode=require") == (
        "postgresql+psycopg2://u:***@10.0.0.5/m?sslmode=require"
    )
    for plain in ("postgresql://mlflow@db/mlflow", "sqlite:////srv/mlflow.db", "s3://bucket/artifacts", "/srv/art"):
        assert localcluster.masked(plain) == plain


def test_a_server_that_exits_fails_at_once_its_log_shown_without_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "from-the-env")
    log = tmp_path / "mlflow-server.log"
    log.write_text("could not connect to postgresql://u:p@ss@db/m (p%40ss) with from-the-env\n")
    exited = subprocess.Popen(["true"])
    exited.wait()
    started = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        localcluster._wait_for_http(
            f"http://{localcluster.HOST}:{free_port()}/health",
            time.monotonic() + 60,
            "the MLflow server",
            log,
            process=exited,
            secrets=localcluster._secrets_of("postgresql://u:p%40ss@db/m"),
        )
    assert time.monotonic() - started < 10  # not the deadline: the process had exited
    message = str(raised.value)
    assert "exited with 0" in message and "could not connect" in message, message
    for secret in ("p@ss", "p%40ss", "from-the-env"):
        assert secret not in message, message


def test_mlflow_server_on_postgres_takes_a_run_and_its_artifacts_over_http(postgres, tmp_path):
    served = tmp_path / "served-artifacts"  # the server's disk: clients never write here themselves
    log = tmp_path / "mlflow-server.log"
    url = f"http://{localcluster.HOST}:{free_port()}"
    started = time.monotonic()
    server = localcluster.start_mlflow_server(
        int(url.rsplit(":", 1)[1]), postgres.uri, str(served), log=log, cwd=tmp_path
    )
    try:
        wait_for(
            lambda: _health(url) or server.poll() is not None,
            120,
            "the MLflow server on PostgreSQL",
            seen=lambda: log.read_text()[-3000:],
        )
        assert server.poll() is None, log.read_text()[-3000:]
        print(f"\nmlflow server on PostgreSQL answered in {time.monotonic() - started:.1f} s", flush=True)
        client = _tracking_client(url)
        experiment_id = client.create_experiment(f"{PREFIX}-smoke")
        run = client.create_run(experiment_id, run_name="smoke")
        run_id = run.info.run_id
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        for step in range(3):
            client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
        client.log_param(run_id, "lr", "0.01")
        client.log_text(run_id, "hello through the server\n", "notes/hello.txt")
        client.set_terminated(run_id)

        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2]
        assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/hello.txt"]
        (written,) = served.rglob("hello.txt")  # the server wrote it to its destination
        assert written.read_text() == "hello through the server\n"
        # The rows are PostgreSQL's, read without MLflow.
        assert postgres.query("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)) == [("FINISHED",)]
        assert postgres.query("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'loss'", (run_id,)) == [(3,)]
        _assert_secret_kept(postgres.password, server.pid, log)
    finally:
        _end(server.pid)


# --------------------------------------------------------------------------- a Ray head, 8 jobs at once


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory):
    """A Ray head of N_JOBS logical CPUs and its MLflow server on PostgreSQL, serving the
    artifacts into a folder of its own, as `raymaas up --backend-store-uri ...` starts them."""
    base = tmp_path_factory.mktemp("tracking-server")
    home = base / "home"
    started = time.monotonic()
    try:
        cluster = localcluster.start(
            home,
            num_cpus=N_JOBS,
            port=free_port(),
            dashboard_port=free_port(),
            mlflow_port=free_port(),
            env={"RAY_TRAIN_V2_ENABLED": "1"},
            backend_store_uri=postgres.uri,
            artifacts_destination=base / "served-artifacts",
        )
        print(f"\nhead and MLflow server on PostgreSQL up in {time.monotonic() - started:.1f} s", flush=True)
        yield cluster
    finally:
        state = localcluster.read_state(home.resolve())
        localcluster.stop(home)  # the head, its jobs' processes, the MLflow server: by PID
        if state is not None:
            gcs_port = int(state.gcs_address.rsplit(":", 1)[1])
            assert not localcluster.head_processes(Path(state.temp_dir), gcs_port), "processes left behind"


def _job_client(dashboard_url: str):
    """Ray's job SDK with the saved token sent explicitly (this process's Ray auth mode stays as it is)."""
    from ray._raylet import AuthenticationTokenLoader
    from ray.job_submission import JobSubmissionClient

    from raymaas.runtime.cluster import ensure_auth_token

    ensure_auth_token()  # the head's (localcluster.start made sure of it)
    headers = AuthenticationTokenLoader.instance().get_token_for_http_header()  # {"authorization": "Bearer ..."}
    assert headers, "no Ray auth token to send"
    return JobSubmissionClient(dashboard_url, headers=dict(headers))


def _submit(client, **request) -> str:
    """submit_job, again while the head's job agent is not up yet (nothing is created then)."""

    def attempt():
        try:
            return client.submit_job(**request)
        except RuntimeError as err:
            if "No available agent" in str(err):
                return None
            raise

    return wait_for(attempt, 120, f"the job agent to take {request['submission_id']}", interval=2)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_eight_jobs_at_once_log_every_epoch_and_register_through_the_server(cluster, postgres):
    from raymaas.runtime.cluster import ray_job_env, raymaas_code_dir
    from raymaas.runtime.submit import JOB_EXCLUDES, job_args

    jobs = _job_client(cluster.dashboard_url)
    # What `raymaas train SPEC --address URL` sends (raymaas.runtime.submit), the store being the server.
    runtime_env = {
        "working_dir": str(REPO),
        "py_modules": [raymaas_code_dir()],
        "excludes": [*JOB_EXCLUDES, "mlruns"],
        "env_vars": {**ray_job_env(), "MLFLOW_TRACKING_URI": cluster.mlflow_url, "RAYMAAS_HOME": cluster.home},
    }
    names = [f"{PREFIX}-{i}" for i in range(N_JOBS)]
    started = time.monotonic()
    job_ids = {}
    for name in names:
        overrides = ["scaling_config.num_workers=1", f"name={name}", f"mlflow.run_name={name}-run"]
        entrypoint = shlex.join(["python", *job_args("jobs.supervised", str(DEBUG_SPEC.relative_to(REPO)), overrides)])
        job_ids[name] = _submit(
            jobs, submission_id=f"{name}-{os.urandom(3).hex()}", entrypoint=entrypoint, runtime_env=runtime_env
        )
    print(f"submitted {N_JOBS} jobs in {time.monotonic() - started:.1f} s", flush=True)

    def statuses() -> dict[str, str]:
        return {name: jobs.get_job_status(job_id).value for name, job_id in job_ids.items()}

    def seen() -> str:
        now = statuses()
        logs = "".join(
            f"\n--- {name} ({status}):\n{jobs.get_job_logs(job_ids[name])[-1500:]}"
            for name, status in now.items()
            if status not in ("SUCCEEDED",)
        )
        return f"{json.dumps(now)}{logs}\n`ray status`:\n{ray_status(cluster.gcs_address)}"

    terminal = {"SUCCEEDED", "FAILED", "STOPPED"}
    wait_for(lambda: set(statuses().values()) <= terminal, 900, f"{N_JOBS} jobs to end", interval=5, seen=seen)
    print(f"{N_JOBS} jobs ended {time.monotonic() - started:.1f} s after the first submission", flush=True)
    failed = {name: status for name, status in statuses().items() if status != "SUCCEEDED"}
    assert not failed, seen()

    client = _tracking_client(cluster.mlflow_url)
    for name in names:
        experiment = client.get_experiment_by_name(name)
        (run,) = client.search_runs([experiment.experiment_id])
        run_id = run.info.run_id
        assert run.info.status == "FINISHED", (name, run.info.status)
        assert run.data.tags[JOB_KEY_TAG] == f"{name}-run"
        for key in ("train_loss", "val_loss", "val_accuracy"):  # every epoch once
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == list(range(EPOCHS)), (name, key, steps)
        # Artifacts went through the server: the run's URI is the server's proxy, and the files
        # landed in the server's destination, not in the home every job shares.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        assert client.list_artifacts(run_id), name
        version = client.get_model_version(name, "1")
        assert version.run_id == run_id and version.status == "READY", version
        assert client.get_model_version_by_alias(name, "champion").version == version.version
    served = Path(cluster.artifacts_destination)
    assert len(list(served.rglob("MLmodel"))) >= N_JOBS, sorted(str(p) for p in served.rglob("*"))[:50]
    assert not (Path(cluster.home) / "mlartifacts").exists()

    # The store really is PostgreSQL: its own tables, read without MLflow.
    ours = tuple(names)
    assert postgres.query(
        "SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
        "WHERE e.name IN %s AND r.status = 'FINISHED'",
        (ours,),
    ) == [(N_JOBS,)]
    assert postgres.query(
        "SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
        "JOIN experiments e ON r.experiment_id = e.experiment_id WHERE e.name IN %s AND m.key = 'val_accuracy'",
        (ours,),
    ) == [(N_JOBS * EPOCHS,)]
    assert postgres.query("SELECT count(*) FROM registered_models WHERE name IN %s", (ours,)) == [(N_JOBS,)]
    assert postgres.query("SELECT count(*) FROM runs WHERE status = 'RUNNING'") == [(0,)]

    # The password stayed with the server: not on its command line, in `up`'s state file or its log.
    state = localcluster.state_path(Path(cluster.home))
    assert cluster.backend_store == localcluster.masked(postgres.uri) and ":***@" in cluster.backend_store
    _assert_secret_kept(
        postgres.password, cluster.mlflow_pid, state, Path(cluster.home) / ".raymaas" / "mlflow-server.log"
    )
