"""Save screenshots of a trained model in the MLflow UI: `make screenshot`, after `make demo`.

Starts `mlflow server` on the project's store (127.0.0.1, a free port) and a headless Chromium
(Debian's `chromium` package: `apt-get install chromium`), drives it over the DevTools protocol
(aiohttp's websocket client) and writes two PNGs:

    docs/mlflow-run.png    the champion's run, "Model metrics" tab: its metric charts
    docs/mlflow-model.png  the registered model's page: its versions, @champion and @candidate

The UI is put in its "Model training" (machine learning) mode, not the GenAI one, and its
assistant panel closed, through the localStorage keys the UI reads at start. Both processes
are stopped at the end.

    .venv/bin/python docs/screenshot.py [--experiment digits-mlp] [--model digits-mlp]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from raymaas.paths import tracking_uri
from raymaas.runtime.localcluster import free_port

DOCS = Path(__file__).resolve().parent

# What the MLflow 3 UI keeps in localStorage (`<key>_v<version>`, JSON values).
UI_SETTINGS = {
    "mlflow.workflowType_v1": "machine_learning",  # "Model training", not "GenAI"
    "mlflow.assistant.panelOpen_v1": False,
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,  # else a local server opens the panel once
}
SET_UI = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(json.dumps(v))});" for k, v in UI_SETTINGS.items())

# Headless Chromium shows every chart's hover toolbar; the assistant's round button is no help here.
HIDE = (
    "document.head.insertAdjacentHTML('beforeend', '<style>.js-plotly-plot .modebar,"
    " button[data-assistant-ui] { display: none !important; }</style>')"
)

# The flags keep Chromium off the network: this machine's is closed.
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    " --disable-component-update --disable-sync --hide-scrollbars"
).split()


def wait_for(url: str, timeout_s: float, proc: subprocess.Popen) -> bytes:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer in {timeout_s:.0f}s") from None
            time.sleep(1)


class Page:
    """The few DevTools protocol calls this script needs, on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        async for message in self.ws:  # events in between are skipped
            reply = json.loads(message.data)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise RuntimeError("Chromium closed the DevTools connection")

    async def js(self, expression: str):
        return (await self.call("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")

    async def shoot(self, url: str, ready: str, out: Path, timeout_s: float = 60, settle_s: float = 3) -> None:
        """Open url, wait until the JS expression ready is true, let charts settle, save a PNG."""
        await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while not await self.js(ready):
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not show what was expected in {timeout_s:.0f}s")
            await asyncio.sleep(0.5)
        await self.js(HIDE)
        await asyncio.sleep(settle_s)
        out.write_bytes(base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"]))
        print(f"saved {out} ({url})")


def has_text(*texts: str) -> str:
    return " && ".join(f"document.body.innerText.includes({json.dumps(t)})" for t in texts)


async def take(devtools: str, url: str, experiment_id: str, run_id: str, model: str, size: str) -> None:
    width, height = (int(n) for n in size.split(","))
    targets = json.loads(urllib.request.urlopen(f"{devtools}/json/list").read())
    target = next(t for t in targets if t["type"] == "page")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws,
    ):
        page = Page(ws)
        await page.call("Page.enable")
        await page.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )
        await page.call("Page.addScriptToEvaluateOnNewDocument", source=SET_UI)
        charts = "document.querySelectorAll('.js-plotly-plot').length >= 3"
        await page.shoot(
            f"{url}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics",
            f"{has_text('val_accuracy', 'train_loss', 'val_loss')} && {charts}",
            DOCS / "mlflow-run.png",
        )
        await page.shoot(
            f"{url}/#/models/{model}", has_text("Aliases", "champion", "candidate"), DOCS / "mlflow-model.png"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="digits-mlp", help="experiment of the run to show")
    parser.add_argument("--model", default="digits-mlp", help="registered model: its champion's run and its page")
    parser.add_argument("--size", default="1600,1000", help="window width,height in pixels")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("no chromium on PATH: apt-get install chromium")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {tracking_uri()}: run `make demo` first")
    try:
        run_id = client.get_model_version_by_alias(args.model, "champion").run_id
    except MlflowException as error:
        raise SystemExit(f"no {args.model}@champion in {tracking_uri()}: run `make demo` first ({error})") from None

    port, debug_port = free_port(), free_port()
    url, devtools = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{debug_port}"
    profile = tempfile.mkdtemp(prefix="screenshot-chromium-")
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    server = [mlflow, "server", "--backend-store-uri", tracking_uri(), "--host", "127.0.0.1", "--port", str(port)]
    browser = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}"]
    browser += [f"--remote-debugging-port={debug_port}", "about:blank"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    procs = [subprocess.Popen(server + ["--workers", "1"], **quiet), subprocess.Popen(browser, **quiet)]
    try:
        wait_for(f"{url}/health", 120, procs[0])
        wait_for(f"{devtools}/json/version", 60, procs[1])
        asyncio.run(take(devtools, url, experiment.experiment_id, run_id, args.model, args.size))
    finally:
        for proc in procs:  # each leads its own process group: it and its children
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
