"""Save a screenshot of an experiment's runs page in the MLflow UI: `make screenshot`.

Starts `mlflow server` on the project's store (127.0.0.1, a free port), opens the page in a
headless Chromium (Debian's `chromium` package: `apt-get install chromium`), writes the PNG,
and stops the server it started. Run it after `make demo`.

    .venv/bin/python docs/screenshot.py [--experiment digits-mlp] [--out docs/mlflow-runs.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from raymaas.tracking import resolve_tracking_uri

DOCS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"mlflow server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer in {timeout_s:.0f}s")
            time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="digits-mlp", help="experiment whose runs page to show")
    parser.add_argument("--out", default=str(DOCS / "mlflow-runs.png"), help="PNG to write")
    parser.add_argument("--size", default="1600,1000", help="window width,height in pixels")
    parser.add_argument("--wait-ms", type=int, default=20000, help="time the page gets to render (virtual)")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("no chromium on PATH: apt-get install chromium")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", resolve_tracking_uri(), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for(f"{url}/health", 120, server)
        query = urllib.parse.urlencode({"experiment_name": args.experiment})
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{query}") as response:
            experiment_id = json.loads(response.read())["experiment"]["experiment_id"]
        page = f"{url}/#/experiments/{experiment_id}/runs"
        with tempfile.TemporaryDirectory() as profile:
            # The flags keep Chromium off the network: this machine's is closed.
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={args.size}",
                 f"--virtual-time-budget={args.wait_ms}", f"--screenshot={os.path.abspath(args.out)}", page],
                check=True, capture_output=True, timeout=180,
            )
        print(f"saved {args.out} ({page})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the group it leads
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
