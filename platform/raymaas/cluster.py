"""Connecting to Ray, shipping the platform's code, and checking what a job asks for."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray


class ResourceError(RuntimeError):
    """The cluster cannot give a job what its spec asks for."""


def raymaas_code_dir() -> str:
    import raymaas

    return str(Path(raymaas.__file__).parent)


def connect(address: str | None = None, num_cpus: int | None = None, py_modules: list[str] = ()) -> None:
    """Join the cluster at address (or RAY_ADDRESS), or start a local Ray in this process.

    On an existing cluster the platform's code (and py_modules, a user's own packages)
    travels with the job, so nodes need only the third-party packages.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "RAYMAAS_HOME") if k in os.environ}
    runtime_env = _without_job_fields({"py_modules": [raymaas_code_dir(), *py_modules], "env_vars": env_vars})
    if address:
        _use_token_auth_if_available()
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # "local": a fresh Ray in this process even if `ray start` left a cluster address
        # behind (ray.init() would join that one). No dashboard: seconds and ~300 MB saved.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars})


def package_dir_of(module_name: str) -> str | None:
    """The folder of the top-level package holding module_name, unless it is installed
    (site-packages) or a lone module file, which Ray cannot ship as a package."""
    import importlib.util

    top = module_name.split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations))).resolve()
    if "site-packages" in folder.parts or folder == Path(raymaas_code_dir()).resolve():
        return None
    return str(folder)


def _use_token_auth_if_available() -> None:
    # Ray 2.60 turns token auth on for clusters it starts, but a driver joining one by
    # explicit address only sends the saved token (~/.ray/auth_token) in token mode; without
    # it the GCS answers "InvalidAuthToken" and ray.init fails with a bare ConnectionError.
    # Ray's own helper flips the mode and refreshes its cached config, which an environment
    # variable set after `import ray` would not.
    if "RAY_AUTH_MODE" in os.environ:
        return
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _without_job_fields(runtime_env: dict) -> dict:
    """Drop the fields a `ray job submit` job already sets: Ray refuses to merge a driver's
    runtime env with the job's when both set the same field ("Failed to merge the Job's
    runtime env"), and the job's own copy is what its workers get anyway."""
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job_config:
        return runtime_env
    job_fields = json.loads(job_config).get("runtime_env") or {}
    return {k: v for k, v in runtime_env.items() if k not in job_fields}


def resolve_use_gpu(use_gpu: bool | str) -> bool:
    """`auto` means GPUs if the cluster has any."""
    if use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(use_gpu)


def wait_for_resources(needed: dict[str, float], timeout_s: float) -> None:
    """Return once the cluster's total resources cover needed; else raise ResourceError.

    Ray's default for an impossible request is a silent retry loop, so a job asking for GPUs
    a cluster will never have would look like a hang. An autoscaling cluster may still be
    adding nodes: raise placement_timeout_s there, and the request is passed on to the
    autoscaler meanwhile.
    """
    from ray.autoscaler.sdk import request_resources

    deadline = time.monotonic() + timeout_s
    requested = False
    while True:
        total = ray.cluster_resources()
        short = {k: (v, total.get(k, 0)) for k, v in needed.items() if total.get(k, 0) < v}
        if not short:
            if requested:  # the job's own pending demand keeps the autoscaler informed now
                request_resources(bundles=[])
            return
        if not requested:
            request_resources(bundles=[{k: v for k, v in needed.items() if v}])
            requested = True
        if time.monotonic() >= deadline:
            request_resources(bundles=[])
            parts = ", ".join(f"{k}: needs {want:g}, cluster has {have:g}" for k, (want, have) in short.items())
            hint = " Set scaling_config.use_gpu: false (or auto)." if "GPU" in short else ""
            raise ResourceError(
                f"the cluster cannot provide what the job asks for within {timeout_s:g}s ({parts}).{hint}"
                " For an autoscaling cluster that adds nodes on demand, raise scaling_config.placement_timeout_s."
            )
        time.sleep(0.5)
