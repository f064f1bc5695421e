"""Shared fixtures: one real Ray head and one real MLflow store for the whole test session.

The head runs on a "bare" Python: the project's third-party packages, but not raymaas. Every
job the tests run therefore proves that the platform's code travels with the job, as it
must on a cluster whose nodes have only the third-party packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from raymaas.runtime.localcluster import free_port

REPO = Path(__file__).resolve().parent.parent
DEBUG_SPEC = REPO / "jobs" / "specs" / "digits_debug.yaml"


def make_bare_python(folder: Path) -> Path:
    """A venv that sees this venv's site-packages but none of its .pth files (so no raymaas)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(folder), "platbase": str(folder)})["purelib"])
    # A path line in a .pth file adds that folder to sys.path without reading its own .pth
    # files, which is where the editable install of raymaas lives.
    (site / "_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = folder / "bin" / "python"
    ray_cli = folder / "bin" / "ray"
    ray_cli.write_text(f"#!{python}\nfrom ray.scripts.scripts import main\nmain()\n")
    ray_cli.chmod(0o755)
    check = subprocess.run([str(python), "-c", "import raymaas"], capture_output=True)
    assert check.returncode != 0, "the bare Python must not see raymaas"
    return python


@dataclass
class RayHead:
    address: str  # GCS address for ray.init / RAY_ADDRESS
    dashboard_url: str  # for `ray job submit --address`
    home: Path  # RAYMAAS_HOME of the head and of the tests
    tracking_uri: str
    env: dict  # environment for drivers that join this head
    temp_dir: Path  # Ray's temp dir for this head: it names all of its processes

    def job_env(self, **extra) -> dict:
        env = dict(self.env)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> RayHead:
    base = tmp_path_factory.mktemp("raymaas")
    home = base / "home"
    home.mkdir()
    python = make_bare_python(base / "bare-venv")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    port, dash = free_port(), free_port()
    head_env = {
        **os.environ,
        "PATH": f"{python.parent}:{os.environ['PATH']}",
        "RAYMAAS_HOME": str(home),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "RAY_TRAIN_V2_ENABLED": "1",
    }
    head_env.pop("RAY_ADDRESS", None)
    head_env.pop("PYTHONPATH", None)
    # Jobs and tests together: 2 train workers + a job driver + a spare, on 2 real cores.
    # A temp dir of our own (short: Ray's socket paths must fit in 107 characters) marks
    # every process of this head, so teardown ends exactly those and no other Ray.
    temp_dir = Path(tempfile.mkdtemp(prefix="rmt", dir="/tmp"))
    from raymaas.runtime.cluster import ensure_auth_token

    ensure_auth_token()  # the head runs with token auth even on a machine that never ran Ray
    subprocess.run(
        [
            str(python.parent / "ray"),
            "start",
            "--head",
            f"--temp-dir={temp_dir}",
            f"--port={port}",
            "--num-cpus=4",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # Ray's fixed default ports for these would collide with any other Ray on the
            # machine: the second head's job agent then never comes up ("No available agent").
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
        ],
        env=head_env,
        check=True,
        capture_output=True,
        cwd=str(base),
    )
    address = f"127.0.0.1:{port}"
    # Ray 2.60 starts clusters with token auth; clients (ray job submit, the job SDK, drivers
    # joining by address) send the token from ~/.ray only in token mode.
    driver_env = {
        **os.environ,
        "RAY_ADDRESS": address,
        "RAYMAAS_HOME": str(home),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "RAY_AUTH_MODE": "token",
    }
    head = RayHead(address, f"http://127.0.0.1:{dash}", home, tracking_uri, driver_env, temp_dir)
    try:
        _wait_for_dashboard(head.dashboard_url)
        _wait_for_job_agent(head)
        yield head
    finally:  # also when the head never became ready: no Ray left behind
        stop_ray_head(temp_dir, port)
        shutil.rmtree(base / "bare-venv", ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


def head_processes(temp_dir: Path, gcs_port: int | None = None) -> list:
    """The processes of the Ray head started with temp_dir (and, given its GCS port, its Ray
    client server), with all of their children."""
    from raymaas.runtime.localcluster import head_processes as processes_of

    return processes_of(temp_dir, gcs_port)


def stop_ray_head(temp_dir: Path, gcs_port: int | None = None) -> None:
    """End the processes of the Ray head started with temp_dir (and GCS port) by PID."""
    from raymaas.runtime.localcluster import end_processes

    end_processes(head_processes(temp_dir, gcs_port))


def _wait_for_job_agent(head: RayHead, timeout_s: float = 300) -> None:
    """Submit a no-op job until the head accepts it: its job agent starts after the dashboard
    and until then submissions fail with "No available agent to submit job"."""
    ray_cli = Path(sys.executable).parent / "ray"
    deadline = time.monotonic() + timeout_s
    while True:
        proc = subprocess.run(
            [str(ray_cli), "job", "submit", "--address", head.dashboard_url, "--", "python", "-c", "pass"],
            env=head.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the head's job agent did not accept a job: {proc.stderr[-2000:]}")
        time.sleep(1)


def _wait_for_dashboard(url: str, timeout_s: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (401 without Ray's auth token): it is up
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard at {url} did not come up in {timeout_s}s")


@pytest.fixture(autouse=True)
def _mlflow_uris_point_at_the_test_store(request):
    """MLflow's tracking and registry URIs are process-wide, and MLflow copies them into the
    environment that subprocesses inherit: a test that points them at another store (its own
    head's, a temporary one) must not leak into the next test. Tests on a head get its store."""
    if "ray_head" in request.fixturenames:
        import mlflow

        uri = request.getfixturevalue("ray_head").tracking_uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.environ["MLFLOW_REGISTRY_URI"] = uri
    yield


@pytest.fixture(scope="session")
def mlflow_client(ray_head):
    from raymaas.tracking import get_client

    return get_client(ray_head.tracking_uri)


def wait_for(predicate, timeout_s: float, what: str, interval: float = 0.5, seen=None):
    """predicate()'s first truthy value, polled every interval; after timeout_s a TimeoutError
    that says what the wait saw: predicate's last value and seen() (a callable giving the
    driver's output, `ray status`, the last HTTP answer...), so a wait that fails under load
    tells why."""
    deadline = time.monotonic() + timeout_s
    value = None
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    saw = f"; last value: {value!r}"
    if seen is not None:
        try:
            saw += f"\nwhat it saw:\n{seen()}"
        except Exception as exc:  # the report must not hide the timeout
            saw += f"\n(describing what it saw failed: {exc!r})"
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}{saw}")


def ray_status(address: str) -> str:
    """`ray status` of the cluster at address (nodes, resources, pending demands), for a wait's
    timeout message."""
    ray_cli = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    try:
        proc = subprocess.run(
            [str(ray_cli), "status", "--address", address], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "`ray status` did not answer in 60 s"
    return (proc.stdout + proc.stderr)[-4000:]


def run_job(args: list[str], env: dict, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m jobs.supervised ...` (or another module) to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


_exit_status: int | None = None
_module_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    module = report.nodeid.split("::", 1)[0]
    _module_seconds[module] = _module_seconds.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Each module's seconds (setup, calls and teardown), so every log says where the time went
    module by module as well as in the slowest tests."""
    if not _module_seconds:
        return
    terminalreporter.section("seconds per module")
    for module, seconds in sorted(_module_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}s {module}")
    terminalreporter.write_line(f"{sum(_module_seconds.values()):8.1f}s in all")


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without finalizing the interpreter once every result is reported.

    This process joins and leaves several Ray clusters (the fake multi-node cluster, the
    Serve head); Ray's driver can then crash in native code while Python finalizes: seen once
    as SIGSEGV after "97 passed", which turned a green run into a failed `make test`. By now
    every fixture is torn down (each cluster stopped by PID) and the report is written."""
    if _exit_status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
