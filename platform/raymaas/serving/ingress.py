"""The ingress in front of Serve: Ray's HAProxy (the platform's default) or Serve's Python
HTTP proxy, chosen through the environment of Ray's own processes; and the clean-up of what
the HAProxy ingress leaves on disk and running."""

from __future__ import annotations

import os

INGRESSES = ("proxy", "haproxy")


def haproxy_ingress_env(state_dir) -> dict[str, str]:
    """The environment that makes a Ray instance's Serve take requests through Ray's HAProxy
    ingress instead of its Python HTTP proxy: the HAProxy that ships with ray[serve] 2.60
    forwards each request straight to an HTTP server in a replica. Measured on 2 cores
    (bench/serve_load.py): a tiny model's p50 2.0 ms instead of 10.2 ms, a heavy model's
    throughput at concurrency 32 193 instead of 110 requests/s, because the Python proxy's
    hop (and the replica's call back to it for the request body) is gone.

    It must be in the environment of Ray's own processes (set before a local Ray starts, or
    on `ray start`): Serve reads it when its controller starts. Ray keeps HAProxy's config,
    admin socket and server state in fixed /tmp paths and its stats and metrics listeners on
    fixed ports, so two Serve instances on one machine would share them; here they go to
    state_dir (made private) and free ports. Those two listeners bind all interfaces (Ray's
    template has no host for them); the request listener uses Serve's http_options host.
    """
    from pathlib import Path

    from raymaas.runtime.localcluster import free_port

    state = Path(state_dir).resolve()
    # HAProxy takes socket paths of at most 97 bytes, and Ray adds a 56-character node id
    # folder: /tmp/NAME is short enough, a pytest tmp_path is not.
    longest = len(str(state / ("n" * 56) / "metrics.sock"))
    if longest > 97:
        raise ValueError(
            f"HAProxy state folder {state} is too long for HAProxy's socket paths "
            f"({longest} > 97 bytes with Ray's node folder); take a short one under /tmp"
        )
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)  # the admin socket accepts commands from whoever can reach it
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # A stopping replica keeps answering this long so that load balancers can drop it
        # (Ray's default: 30 s, sized for remote balancers); the local HAProxy reloads its
        # config within a second, and retries a refused connection on another replica.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
        # the Serve proxy HAProxy falls back on while a route has no replica yet
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


def prepare_local_ingress(ingress: str):
    """Before this process starts a local Ray: make its Serve use `ingress` ("haproxy", the
    platform's default, or "proxy", Serve's Python HTTP proxy). Returns a function that
    removes what the HAProxy ingress kept on disk; call it after ray.shutdown()."""
    import shutil
    import tempfile

    if ingress not in INGRESSES:
        raise ValueError(f"unknown ingress {ingress!r}: pick one of {', '.join(INGRESSES)}")
    if ingress == "proxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
        return lambda: None
    state = tempfile.mkdtemp(prefix="raymaas-hap-", dir="/tmp")
    os.environ.update(haproxy_ingress_env(state))

    def cleanup() -> None:
        # HAProxy can outlive ray.shutdown() for a moment and keep the HTTP port bound (seen:
        # the next demo on the same port failed "Address already in use"). Its command line
        # names this folder, so these are the HAProxy processes this call started.
        import psutil

        from raymaas.runtime.localcluster import end_processes

        ours = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(state in part for part in proc.info["cmdline"] or ()):
                ours.append(proc)
        end_processes(ours)
        shutil.rmtree(state, ignore_errors=True)

    return cleanup
