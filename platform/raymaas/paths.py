"""Where things live: the project folder, the MLflow store, artifacts, checkpoints and logs.

The one place that decides; every other module asks here. Imports nothing heavy: the CLI,
the tracking store, the drivers and the Serve replicas all use it.

    project_root()        the folder holding the `jobs` package (code: entrypoints, specs, serve/)
    raymaas_home()        the folder of the embedded default (data: store, artifacts, checkpoints)
    tracking_uri()        MLFLOW_TRACKING_URI, else HOME/mlflow.db (always absolute)
    artifact_location()   HOME/mlartifacts beside a SQLite store
    checkpoint_storage()  RAYMAAS_STORAGE_PATH, else HOME/ray_results (every job kind)
    log_dir()             HOME/.raymaas/logs
"""

from __future__ import annotations

import os
from pathlib import Path

# Where jobs keep checkpoints: a URI (s3://, gs://, ...) or a folder.
STORAGE_PATH_ENV = "RAYMAAS_STORAGE_PATH"
# "1" declares that a local folder used as storage is shared by every node in a way the
# driver cannot see (the same machine, a mount of a kind raymaas does not recognise).
SHARED_STORAGE_ENV = "RAYMAAS_SHARED_STORAGE"
HOME_ENV = "RAYMAAS_HOME"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# What a job's driver hands on to its workers, its Train controller and, through
# `raymaas train --address`, to a driver on a cluster: where to track and where to keep
# checkpoints. A variable left out here sends a job's checkpoints or runs somewhere else.
FORWARDED_ENV = (TRACKING_URI_ENV, HOME_ENV, STORAGE_PATH_ENV, SHARED_STORAGE_ENV)
# Ray sets this in the environment of every `ray job submit` driver.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Files of raymaas's own inside a project folder (local cluster state, demo logs).
STATE_DIR = ".raymaas"


class ProjectNotFound(LookupError):
    """No folder holding the `jobs` package was found."""


def project_root(start: str | Path | None = None) -> Path:
    """The project folder: the nearest one holding the `jobs` package, looked for above start
    (a spec or config file), then above the current folder, then above the source checkout
    raymaas itself is installed from (an editable install run from anywhere)."""
    import raymaas

    cwd = Path.cwd().resolve()
    candidates = [
        *(_ancestors(Path(start)) if start is not None else ()),
        cwd,
        *cwd.parents,
        *Path(raymaas.__file__).resolve().parents,
    ]
    for folder in candidates:
        if (folder / "jobs" / "__init__.py").is_file():
            return folder
    where = f"{start} or {cwd}" if start is not None else str(cwd)
    raise ProjectNotFound(f"cannot find the project folder (the one holding jobs/) above {where}")


def _ancestors(path: Path) -> list[Path]:
    path = path.expanduser().resolve()
    return [path, *path.parents] if path.is_dir() else list(path.parents)


def raymaas_home() -> Path:
    """The folder of the embedded default: MLflow store, artifacts, checkpoints, logs.

    RAYMAAS_HOME wins. Inside a `ray job submit` driver the current folder is the job's
    unpacked copy, which Ray deletes, so there it is ~/.raymaas unless the head was started
    with RAYMAAS_HOME (as `raymaas up` does). Otherwise the project folder, else the cwd.
    """
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    if RAY_JOB_ENV in os.environ:
        return Path.home() / ".raymaas"
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "jobs" / "__init__.py").is_file() or (folder / "pyproject.toml").is_file():
            return folder
    return cwd


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute SQLite URI in raymaas_home()."""
    uri = os.environ.get(TRACKING_URI_ENV)
    if uri:
        return absolute_sqlite_uri(uri)
    return f"sqlite:///{raymaas_home() / 'mlflow.db'}"


def absolute_sqlite_uri(uri: str) -> str:
    """A relative sqlite:/// path made absolute: relative, it would resolve in each process's
    cwd, which for Ray workers is a temporary folder, and the runs would vanish with it."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute SQLite URI (without query), else None."""
    if uri.startswith("sqlite:////") and "?" not in uri:
        return Path(uri.removeprefix("sqlite:///"))
    return None


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store (its folder's mlartifacts), as a file URI; a tracking
    server decides its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def checkpoint_storage() -> str:
    """Where jobs keep checkpoints: RAYMAAS_STORAGE_PATH (a URI, or a folder made absolute
    as Ray Train needs it), else $RAYMAAS_HOME/ray_results, which is node-local."""
    value = os.environ.get(STORAGE_PATH_ENV)
    if not value:
        return str(raymaas_home() / "ray_results")
    if "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def log_dir() -> Path:
    """Where raymaas keeps the logs of what it runs for you (the demo's jobs)."""
    return raymaas_home() / STATE_DIR / "logs"


def forwarded_env() -> dict[str, str]:
    """FORWARDED_ENV as this process has it."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
