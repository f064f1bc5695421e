"""A throwaway PostgreSQL server for a test module: MLflow's tracking store as deployed.

`postgres_server()` runs Debian's PostgreSQL binaries (`make test` installs the package when
they are missing) on a data folder of its own under /tmp: `initdb`, then the `postgres`
process itself, listening on 127.0.0.1 at a free port and on a unix socket in its own folder,
nothing else. It creates a role and a database for MLflow with a password made for this run
and yields where they are; on exit it stops that one server by its PID and removes the
folder. The machine's own clusters (Debian's `main` on 5432, its /var/run/postgresql socket)
are never read, started or stopped.

PostgreSQL refuses to run as root: as root (CI) the server runs as the `postgres` system user
that Debian's package creates, and its folder belongs to that user.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port

HOST = "127.0.0.1"
SERVER_USER = "postgres"  # the system user Debian's package creates


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str  # MLflow's role: owns database, no superuser
    password: str  # made for this run, never written to a file
    database: str
    socket_dir: str  # the unix socket's folder (the superuser's way in, for the test's checks)
    pid: int  # the postmaster's

    @property
    def uri(self) -> str:
        """SQLAlchemy's URI of MLflow's database, password included: give it to `mlflow server`
        through its environment (MLFLOW_BACKEND_STORE_URI), not on a command line."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def connect(self):
        """A psycopg2 connection as MLflow's role, over TCP with its password (autocommit)."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.database
        )
        conn.autocommit = True
        return conn

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()


def server_binaries() -> Path:
    """The folder of initdb and postgres: Debian's newest /usr/lib/postgresql/<ver>/bin, else PATH's."""

    def version(folder: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", folder.parent.name))

    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (p.parent / "postgres").is_file()]
    if found:
        return max(found, key=version)
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).parent / "postgres").exists():
        return Path(on_path).parent
    raise RuntimeError(
        "PostgreSQL's server binaries (initdb, postgres) are not installed: `make postgres` installs "
        "Debian's postgresql package (as root)"
    )


@contextmanager
def postgres_server(database: str = "mlflow", user: str = "mlflow", timeout_s: float = 60) -> Iterator[Postgres]:
    """Start a PostgreSQL server of its own, yield its Postgres, stop it by PID and delete its data."""
    binaries = server_binaries()
    as_root = os.geteuid() == 0
    run_as = {}
    if as_root:
        account = pwd.getpwnam(SERVER_USER)  # KeyError: no postgres user, the package is missing
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    # Short: the unix socket's path (folder + "/.s.PGSQL.<port>") must fit in 107 characters.
    # mkdtemp's folder is 0700: only its owner (and root) reach the socket and the data.
    base = Path(tempfile.mkdtemp(prefix="rmpg", dir="/tmp"))
    proc = None
    try:
        data = base / "data"
        log = base / "postgres.log"
        if as_root:
            os.chown(base, account.pw_uid, account.pw_gid)
        initdb = subprocess.run(
            [
                str(binaries / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                SERVER_USER,
                "--encoding",
                "UTF8",
                "--no-locale",
                # the superuser only through the socket in base (0700); every TCP login by password
                "--auth-local",
                "trust",
                "--auth-host",
                "scram-sha-256",
            ],
            cwd=base,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            **run_as,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{(initdb.stdout + initdb.stderr)[-3000:]}")
        port = free_port()
        with open(log, "ab") as out:
            if as_root:
                os.chown(log, account.pw_uid, account.pw_gid)
            proc = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    f"listen_addresses={HOST}",
                    "-c",
                    f"unix_socket_directories={base}",
                    # a throwaway store: durability across a crash of the machine buys nothing
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                cwd=base,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its backends are its children, in a group of their own
                **run_as,
            )
        password = secrets.token_urlsafe(24)  # URL-safe: goes into the URI as it is
        _create_role_and_database(proc, str(base), port, user, password, database, log, timeout_s)
        yield Postgres(HOST, port, user, password, database, str(base), proc.pid)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


def _create_role_and_database(proc, socket_dir, port, user, password, database, log, timeout_s) -> None:
    """Wait until the server takes the superuser on its socket, then create MLflow's role and database."""
    import psycopg2
    from psycopg2 import sql

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{_tail(log)}")
        try:
            conn = psycopg2.connect(host=socket_dir, port=port, user=SERVER_USER, dbname="postgres", connect_timeout=2)
            break
        except psycopg2.OperationalError as err:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres did not accept connections in {timeout_s} s: {err}\n{_tail(log)}"
                ) from None
            time.sleep(0.2)
    try:
        conn.autocommit = True  # CREATE DATABASE runs outside a transaction
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)),
                (password,),
            )
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user)))
    finally:
        conn.close()


def _stop(proc: subprocess.Popen) -> None:
    """PostgreSQL's fast shutdown (SIGINT to the postmaster), then immediate (SIGQUIT), then
    SIGKILL to its process group: only the server this module started."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGQUIT, 10)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.is_file() else ""
