"""`raymaas up` / `raymaas down`: a Ray head and an MLflow tracking server on this machine.

For the `ray job submit` workflow on one machine: `up` starts `ray start --head` and
`mlflow server`, both on 127.0.0.1 only, writes what it started to
$RAYMAAS_HOME/.raymaas/cluster.json and prints the addresses and the `export` lines a shell
needs. `down` stops exactly those processes, by PID: the head's processes are the ones whose
command line names its own Ray temp dir (and their children), so any other Ray on the
machine is left alone.

The server's backend store is a SQLite file in RAYMAAS_HOME unless given (a `postgresql://`
URI, as cluster.yaml's head runs). It serves the artifacts itself (`--serve-artifacts`, into
a folder in RAYMAAS_HOME or the `s3://...` given), so clients log them over HTTP as
`mlflow-artifacts:` URIs and no node needs the server's disk. A password in the store's URI
reaches the server through its environment only: never a command line, the state file or
printed output (`masked`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

STATE_FILE = Path(".raymaas") / "cluster.json"
HOST = "127.0.0.1"
# `mlflow server --backend-store-uri`'s own environment variable.
BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"


@dataclass
class LocalCluster:
    home: str  # RAYMAAS_HOME: MLflow database, artifacts, Ray Train storage, logs
    gcs_address: str  # RAY_ADDRESS for drivers that join (python -m jobs.supervised)
    dashboard_url: str  # Ray dashboard and job API (ray job submit --address, raymaas train --address)
    mlflow_url: str  # MLFLOW_TRACKING_URI
    temp_dir: str  # Ray's temp dir of this head: it names every process of the head
    mlflow_pid: int
    started_at: float
    metrics_url: str = ""  # the head's Prometheus export (Ray's and the endpoints' metrics)
    backend_store: str = ""  # the MLflow server's backend store URI, its password masked
    artifacts_destination: str = ""  # where the MLflow server keeps the artifacts it serves

    def exports(self) -> list[str]:
        """The shell lines that point Ray's and MLflow's clients at this cluster."""
        return [
            f"export RAY_ADDRESS={self.gcs_address}",
            f"export RAY_API_SERVER_ADDRESS={self.dashboard_url}",
            "export RAY_AUTH_MODE=token",
            f"export MLFLOW_TRACKING_URI={self.mlflow_url}",
            f"export RAYMAAS_HOME={self.home}",
        ]


def masked(uri: str) -> str:
    """uri with the password of its user info, if any, as ***: what may be printed or saved."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def _secrets_of(uri: str) -> tuple[str, ...]:
    """What the server's log must not show: the password of uri as written (percent-encoded)
    and as the database driver reads it, and libpq's PGPASSWORD."""
    password = urlsplit(uri).password
    found = (password, unquote(password)) if password else ()
    return tuple(dict.fromkeys(s for s in (*found, os.environ.get("PGPASSWORD")) if s))


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def read_state(home: Path) -> LocalCluster | None:
    path = state_path(home)
    if not path.is_file():
        return None
    return LocalCluster(**json.loads(path.read_text()))


def free_port(preferred: int | None = None) -> int:
    """preferred if nothing listens there on 127.0.0.1, else a free port from outside the kernel's
    ephemeral range and Ray's worker ports, not one this process has handed out before. A port
    the kernel hands out for bind(0) can be taken, before its server binds it, as the local port
    of any outgoing connection on the machine (a head, a database and their clients make many):
    `ray start` then fails with `Address already in use`."""
    if preferred and _bindable(preferred):
        return preferred
    low, high = _ephemeral_range()
    # Above Ray's worker ports (10002-19999 by default), on either side of the ephemeral range;
    # drawn from the OS (the random module's sequence repeats in every process seeded alike)
    candidates = [r for r in (range(20000, low), range(max(high + 1, 20000), 65536)) if len(r)]
    for _ in range(200 if candidates else 0):
        span = _draw.choice(candidates)
        port = span[_draw.randrange(len(span))]
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # no room outside the ephemeral range: what the kernel gives
        s.bind((HOST, 0))
        return s.getsockname()[1]


_draw = random.SystemRandom()
_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (Linux; elsewhere IANA's 49152-65535)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def is_running(cluster: LocalCluster) -> bool:
    return bool(head_processes(Path(cluster.temp_dir))) or _pid_alive(cluster.mlflow_pid)


def start(
    home: Path,
    num_cpus: int | None = None,
    port: int | None = None,
    dashboard_port: int | None = None,
    mlflow_port: int | None = None,
    autoscaling_config: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 180,
    backend_store_uri: str | None = None,
    artifacts_destination: str | Path | None = None,
) -> LocalCluster:
    """Start an MLflow server and a Ray head; return where they listen. Ports given are used as
    they are; the others are Ray's and MLflow's usual ones (6379, 8265, 5000) when free, else
    any free port. autoscaling_config and env go to `ray start --head` (Ray's autoscaler, e.g.
    its fake multi-node provider with env RAY_FAKE_CLUSTER=1).

    backend_store_uri: the MLflow server's database, e.g. `postgresql://USER:PASSWORD@HOST:PORT/DB`
    (SQLAlchemy 2.1 reads it with psycopg 3, `postgresql+psycopg2://` with psycopg2; without a
    password in it, libpq's PGPASSWORD or ~/.pgpass from this environment); default:
    home/mlflow.db. artifacts_destination: a folder or an object store URI
    (`s3://bucket/path`, credentials from this environment) that the server writes the
    artifacts it serves to; default: home/mlartifacts."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    existing = read_state(home)
    if existing is not None and is_running(existing):
        return existing
    logs = home / ".raymaas"
    logs.mkdir(exist_ok=True)
    bin_dir = Path(sys.executable).parent
    port = port or free_port(6379)
    dashboard_port = dashboard_port or free_port(8265)
    mlflow_port = mlflow_port or free_port(5000)
    mlflow_url = f"http://{HOST}:{mlflow_port}"

    backend_store_uri = backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    artifacts_destination = str(artifacts_destination or home / "mlartifacts")
    mlflow_proc = start_mlflow_server(
        mlflow_port, backend_store_uri, artifacts_destination, log=logs / "mlflow-server.log", cwd=home
    )
    # Short: Ray's socket paths under it must fit in 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rmu", dir="/tmp"))
    metrics_port = free_port(8080)
    cluster = LocalCluster(
        home=str(home),
        gcs_address=f"{HOST}:{port}",
        dashboard_url=f"http://{HOST}:{dashboard_port}",
        mlflow_url=mlflow_url,
        temp_dir=str(temp_dir),
        mlflow_pid=mlflow_proc.pid,
        started_at=time.time(),
        metrics_url=f"http://{HOST}:{metrics_port}/metrics",
        backend_store=masked(backend_store_uri),
        artifacts_destination=masked(artifacts_destination),
    )
    state_path(home).write_text(json.dumps(asdict(cluster), indent=1) + "\n")
    try:
        head_env = {
            **os.environ,
            # A job driver runs `python` as the head finds it: this environment's.
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAYMAAS_HOME": str(home),
            "MLFLOW_TRACKING_URI": mlflow_url,
            **(env or {}),
        }
        # Jobs talk to the tracking server, never to its database: its URI and the password that
        # `raymaas up --backend-store-uri` takes from PGPASSWORD stay with the server (every job,
        # worker and replica the head starts would otherwise read them in its environment).
        for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_REGISTRY_URI", BACKEND_STORE_ENV, "PGPASSWORD"):
            head_env.pop(var, None)
        # The head's processes (and the nodes an autoscaler starts from it) name their own
        # cluster: Ray's State API, called inside workers without an address (Train V2's
        # PlacementGroupCleaner, which frees a stopped trial's workers), otherwise looks for Ray
        # on this machine, and with any other Ray here (or fake nodes, which list the head twice)
        # it finds several, fails, and the trial's placement group is never freed.
        head_env["RAY_ADDRESS"] = f"{HOST}:{port}"
        from raymaas.runtime.cluster import ensure_auth_token

        ensure_auth_token()  # a head with token auth, as exports() tells its clients
        cmd = [
            str(bin_dir / "ray"),
            "start",
            "--head",
            f"--temp-dir={temp_dir}",
            f"--port={port}",
            f"--node-ip-address={HOST}",
            f"--dashboard-host={HOST}",
            f"--dashboard-port={dashboard_port}",
            # Ray's fixed defaults for these collide with any other Ray on the machine.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={metrics_port}",
            f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
        ]
        if num_cpus is not None:
            cmd.append(f"--num-cpus={num_cpus}")
        if autoscaling_config is not None:
            cmd.append(f"--autoscaling-config={autoscaling_config}")
        started = subprocess.run(cmd, env=head_env, capture_output=True, text=True, cwd=str(home), timeout=timeout_s)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{(started.stdout + started.stderr)[-3000:]}")
        deadline = time.monotonic() + timeout_s
        _wait_for_http(
            f"{mlflow_url}/health",
            deadline,
            "the MLflow server",
            logs / "mlflow-server.log",
            process=mlflow_proc,
            secrets=_secrets_of(backend_store_uri),
        )
        _wait_for_http(f"{cluster.dashboard_url}/api/version", deadline, "the Ray dashboard")
    except BaseException:
        stop(home)
        raise
    return cluster


def start_mlflow_server(
    port: int, backend_store_uri: str, artifacts_destination: str, log: Path, cwd: Path
) -> subprocess.Popen:
    """`mlflow server` on HOST:port, in a session of its own (Ctrl-C in the shell that ran
    `raymaas up` must not stop it), output appended to log. It serves the artifacts (clients get
    mlflow-artifacts:/ URIs for new experiments and log them over HTTP) from
    artifacts_destination. The store's URI goes by the environment (the option's own variable):
    a password in it would be in every `ps` listing on a command line."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--host",
                HOST,
                "--port",
                str(port),
                "--workers",
                "1",
                "--serve-artifacts",
                "--artifacts-destination",
                artifacts_destination,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(cwd),
            # MLflow 3.17's server also starts a job runner (Huey consumers for its GenAI jobs,
            # several processes) unless told not to; the platform runs none of those jobs, and on
            # a small head they take CPU from the jobs and endpoints. A user who wants them sets
            # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true.
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, BACKEND_STORE_ENV: backend_store_uri},
            start_new_session=True,
        )


def stop(home: Path) -> list[int]:
    """Stop what `start` started for home, by PID; return the PIDs that were stopped."""
    import psutil

    home = home.resolve()
    cluster = read_state(home)
    if cluster is None:
        return []
    ours = head_processes(Path(cluster.temp_dir), int(cluster.gcs_address.rsplit(":", 1)[1]))
    try:
        mlflow = psutil.Process(cluster.mlflow_pid)
        # Only if it is still our server (the PID was not reused since).
        if "mlflow" in " ".join(mlflow.cmdline()) and mlflow.create_time() <= cluster.started_at + 5:
            ours += [mlflow, *mlflow.children(recursive=True)]
    except psutil.Error:
        pass
    ours = list({p.pid: p for p in ours if p.pid != os.getpid()}.values())
    end_processes(ours)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    state_path(home).unlink(missing_ok=True)
    return sorted(p.pid for p in ours)


def head_processes(temp_dir: Path, gcs_port: int | None = None) -> list:
    """The processes whose command line names temp_dir (the Ray head started with it, and
    the worker nodes that joined it and took its temp dir), with all of their children; with
    gcs_port, also the head's Ray client server, whose command line names the GCS address but
    not the temp dir (`ray start` leaves it to init, so it is no process's child either)."""
    import psutil

    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or ()
            client_server = (
                gcs_port is not None
                and "ray.util.client.server" in cmdline
                and any(part.startswith("--address=") and part.endswith(f":{gcs_port}") for part in cmdline)
            )
            if client_server or any(str(temp_dir) in part for part in cmdline):
                ours.append(proc)
                ours.extend(proc.children(recursive=True))
        except psutil.Error:
            continue
    return [p for p in {p.pid: p for p in ours}.values() if p.pid != os.getpid()]


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_for_http(
    url: str,
    deadline: float,
    what: str,
    log: Path | None = None,
    process: subprocess.Popen | None = None,
    secrets: tuple[str, ...] = (),
) -> None:
    """Until url answers; a RuntimeError with log's tail (secrets masked in it) at the deadline
    or as soon as process has exited (a server that cannot reach its database)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (Ray's dashboard says 401 without its token): it is up
        except OSError:
            exited = process is not None and process.poll() is not None
            if exited or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log and log.is_file() else ""
                for secret in secrets:
                    tail = tail.replace(secret, "***")
                status = f" (it exited with {process.returncode})" if exited else ""
                raise RuntimeError(f"{what} did not answer at {url}{status}\n{tail}") from None
            time.sleep(0.5)


def end_processes(procs: list) -> None:
    """SIGTERM these psutil processes, then SIGKILL those still alive after 10 s."""
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
