"""The `raymaas` command, run as a subprocess against the session's real Ray head and MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import DEBUG_SPEC, REPO, free_port, wait_for
from raymaas.cli.main import format_table, job_kind
from raymaas.paths import project_root


def raymaas(*args: str, env: dict | None = None, timeout: float = 300, cwd=REPO) -> subprocess.CompletedProcess:
    """Run `python -m raymaas.cli ARGS` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "raymaas.cli", *args],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def user_env(ray_head) -> dict:
    """A user's shell pointed at the head: no RAY_AUTH_MODE, so the CLI must send Ray's token itself."""
    return {k: v for k, v in ray_head.env.items() if k != "RAY_AUTH_MODE"}


def parse_table(stdout: str) -> list[dict[str, str]]:
    """Rows of a table printed by the CLI, as dicts keyed by header; columns cut at the rule."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("-") and set(line) <= {"-", " "})
    header, rule = lines[at - 1], lines[at]
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    bounds = list(zip(starts, [*starts[1:], None]))
    names = [header[a:b].strip() for a, b in bounds]
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds)} for line in lines[at + 1 :] if line.strip()]


def all_run_ids(client) -> set[str]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(experiments)} if experiments else set()


def submitted_jobs(ray_head) -> list[str]:
    """Ids of the jobs submitted to the head's job API (asked from a separate process)."""
    script = textwrap.dedent(
        f"""
        import json
        from raymaas.runtime.cluster import _use_token_auth_if_available
        from ray.job_submission import JobSubmissionClient
        _use_token_auth_if_available()
        jobs = JobSubmissionClient({ray_head.dashboard_url!r}).list_jobs()
        print(json.dumps([j.submission_id for j in jobs if j.submission_id]))
        """
    )
    env = {k: v for k, v in user_env(ray_head).items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- no cluster needed


def test_help_lists_every_command():
    proc = raymaas("--help")
    assert proc.returncode == 0
    for command in ("train", "runs", "models", "promote", "explain", "sample-data"):
        assert command in proc.stdout
    proc = raymaas("train", "--help")
    assert proc.returncode == 0 and "--address" in proc.stdout and "--set" in proc.stdout


def test_explain_lists_fields_with_defaults_and_descriptions():
    proc = raymaas("explain")
    assert proc.returncode == 0, proc.stderr
    rows = {row["field"]: row for row in parse_table(proc.stdout)}
    assert rows["scaling_config.num_workers"]["default"] == "2"
    assert "Ray Train workers" in rows["scaling_config.num_workers"]["description"]
    assert rows["name"]["default"] == "(required)"
    assert "train_loop_config.epochs" in rows and "mlflow.registered_model_name" in rows
    assert rows["task"]["default"] == "'classification'" and "mlflow.gate_metric" in rows
    # tabular data as it arrives: categories and missing numbers
    assert rows["data.max_categories"]["default"] == "32" and rows["data.categorical_columns"]["default"] == "[]"
    assert "embedding" in rows["data.max_categories"]["description"] + rows["data.categorical_columns"]["description"]
    assert "median" in rows["data.impute"]["description"]
    proc = raymaas("explain", "predict")  # batch scoring's spec too
    assert proc.returncode == 0, proc.stderr
    rows = {row["field"]: row for row in parse_table(proc.stdout)}
    assert "probabilities" in rows and "passthrough_columns" in rows, sorted(rows)


def test_predict_takes_an_actor_range_and_refuses_a_bad_one_before_ray(tmp_path):
    proc = raymaas("predict", "--help")
    assert proc.returncode == 0 and "--actors N|MIN:MAX" in proc.stdout and "deprecated: --actors N" in proc.stdout
    out = str(tmp_path / "out")
    proc = raymaas("predict", "m", str(tmp_path), out, "--actors", "4:1")
    assert proc.returncode == 2 and "argument --actors: MIN 4 is more than MAX 1" in proc.stderr, proc.stderr
    proc = raymaas("predict", "m", str(tmp_path), out, "--actors", "0")
    assert proc.returncode == 2 and "argument --actors: must be at least 1" in proc.stderr, proc.stderr
    proc = raymaas("explain", "predict")
    rows = {row["field"]: row for row in parse_table(proc.stdout)}
    assert rows["actors"]["default"] == "2" and "[MIN, MAX]" in rows["actors"]["description"]
    assert "concurrency" not in rows  # the old name is read, not listed


def test_job_kind_from_the_spec(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nalgo: PPO\n")
    assert job_kind(spec) == "rl"
    assert job_kind(spec, ["kind=supervised"]) == "supervised"
    assert job_kind(DEBUG_SPEC) == "supervised"
    assert project_root(DEBUG_SPEC) == REPO


def test_format_table_aligns_columns():
    text = format_table(["a", "bb"], [["xxx", 1], ["y", ""]])
    assert text.splitlines() == ["a    bb", "---  --", "xxx  1", "y"]


def test_unknown_kind_and_spec_outside_the_project_exit_2(tmp_path):
    spec = tmp_path / "odd.yaml"
    spec.write_text("kind: nosuch\nname: x\n")
    proc = raymaas("train", str(spec))
    assert proc.returncode == 2 and "unknown job kind 'nosuch'" in proc.stderr
    spec.write_text("name: outside\n")
    proc = raymaas("train", str(spec), "--address", "http://127.0.0.1:1")
    assert proc.returncode == 2 and "outside the project folder" in proc.stderr


def test_serve_ingress_is_for_a_local_ray_only():
    # a cluster's Serve takes its ingress from how its nodes were started; refused before connecting
    proc = raymaas("serve", "serve/config.yaml", "--address", "127.0.0.1:1", "--ingress", "proxy", timeout=120)
    assert proc.returncode == 2 and "--ingress applies to the local Ray" in proc.stderr


# --------------------------------------------------------------------------- real store and head


def test_invalid_spec_reaches_neither_mlflow_nor_the_cluster(ray_head, mlflow_client):
    runs_before, jobs_before = all_run_ids(mlflow_client), submitted_jobs(ray_head)
    for address in (["--address", ray_head.dashboard_url], []):
        proc = raymaas(
            "train", str(DEBUG_SPEC), "--set", "train_loop_config.epochz=3", *address, env=user_env(ray_head)
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "train_loop_config.epochz: unknown field" in proc.stderr
        assert "submitted" not in proc.stdout
    assert all_run_ids(mlflow_client) == runs_before
    assert submitted_jobs(ray_head) == jobs_before


def test_local_train_passes_the_job_exit_code_through(ray_head, mlflow_client):
    """A valid spec the cluster cannot serve: the local driver's own exit code (3) comes back."""
    runs_before = all_run_ids(mlflow_client)
    proc = raymaas(
        "train",
        str(DEBUG_SPEC),
        "--set",
        "name=cli-no-gpu",
        "--set",
        "scaling_config.use_gpu=true",
        "--set",
        "scaling_config.placement_timeout_s=1",
        env=user_env(ray_head),
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert "cannot provide what the job asks for" in proc.stderr
    assert all_run_ids(mlflow_client) == runs_before


def test_failed_job_passes_the_drivers_verdict_through(ray_head, mlflow_client):
    """Submitted through the job API, the same unservable spec: its logs stream back, then
    FAILED, and the driver's exit code 3 (the cluster lacks the resources) comes back."""
    proc = raymaas(
        "train",
        str(DEBUG_SPEC),
        "--address",
        ray_head.dashboard_url,
        "--set",
        "name=cli-no-gpu",
        "--set",
        "scaling_config.use_gpu=true",
        "--set",
        "scaling_config.placement_timeout_s=1",
        env=user_env(ray_head),
    )
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cannot provide what the job asks for" in proc.stdout  # the driver's own stderr, streamed
    last = proc.stdout.splitlines()[-1]
    assert "FAILED, driver exit code 3" in last and len(last) < 300


def test_runs_rejects_an_unknown_experiment(ray_head):
    proc = raymaas("runs", "--experiment", "no-such-experiment", env=user_env(ray_head))
    assert proc.returncode == 1 and "no experiment named 'no-such-experiment'" in proc.stderr


def test_promote_moves_champion_and_rejects_what_does_not_exist(ray_head, mlflow_client, tmp_path):
    # Two versions registered straight in the store: promotion needs no training.
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    name = "cli-promote"
    mlflow_client.create_registered_model(name)
    for value in ("0.5", "0.6"):
        mlflow_client.create_model_version(
            name, source=str(tmp_path), tags={"raymaas.gate_metric": "val_accuracy", "raymaas.gate_value": value}
        )
    mlflow_client.set_registered_model_alias(name, "champion", "1")

    proc = raymaas("promote", name, "2", env=user_env(ray_head))
    assert proc.returncode == 0, proc.stderr
    assert "now version 2 (was version 1)" in proc.stdout
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == "2"
    assert mlflow_client.get_model_version(name, "2").tags["raymaas.promotion_reason"] == "promoted by hand"

    rows = [r for r in parse_table(raymaas("models", env=user_env(ray_head)).stdout) if r["model"] == name]
    assert [(r["version"], r["aliases"], r["gate"]) for r in rows] == [
        ("2", "champion", "val_accuracy=0.6000"),
        ("1", "", "val_accuracy=0.5000"),
    ]

    proc = raymaas("promote", name, "7", env=user_env(ray_head))
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = raymaas("promote", "no-such-model", "1", env=user_env(ray_head))
    assert proc.returncode == 1 and "no registered model named 'no-such-model'" in proc.stderr
    assert str(mlflow_client.get_model_version_by_alias(name, "champion").version) == "2"


@pytest.fixture(scope="module")
def trained_via_job_api(ray_head, tmp_path_factory):
    """The debug spec submitted through the head's job API by `raymaas train --address`, from a
    shell that names its own checkpoint storage."""
    storage = tmp_path_factory.mktemp("job-api-storage")
    env = {**user_env(ray_head), "RAYMAAS_STORAGE_PATH": str(storage), "RAYMAAS_SHARED_STORAGE": "1"}
    proc = raymaas(
        "train",
        "jobs/specs/digits_debug.yaml",
        "--address",
        ray_head.dashboard_url,
        "--set",
        "name=cli-debug",
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # the job's own output, streamed back: its outcome line names the run
    run_id = next(line for line in proc.stdout.splitlines() if line.startswith("raymaas: run ")).split()[2]
    return run_id, proc, storage


@pytest.mark.slow
def test_train_through_the_job_api(trained_via_job_api, ray_head, mlflow_client):
    run_id, proc, _ = trained_via_job_api
    assert "SUCCEEDED" in proc.stdout.splitlines()[-1]
    (job_id,) = [j for j in submitted_jobs(ray_head) if j in proc.stdout]
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raymaas.job_kind"] == "supervised"
    assert run.data.params["name"] == "cli-debug"


@pytest.mark.slow
def test_runs_and_models_show_the_trained_job(trained_via_job_api, ray_head, mlflow_client):
    run_id, _, _ = trained_via_job_api
    proc = raymaas("runs", env=user_env(ray_head))
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in parse_table(proc.stdout) if r["run id"] == run_id]
    assert row["experiment"] == "cli-debug" and row["status"] == "FINISHED"
    assert row["run"].startswith("cli-debug-")
    accuracy = mlflow_client.get_run(run_id).data.metrics["val_accuracy"]
    assert row["metric"] == f"val_accuracy={accuracy:.4g}"

    proc = raymaas("runs", "--experiment", "cli-debug", "--limit", "1", env=user_env(ray_head))
    assert [r["run id"] for r in parse_table(proc.stdout)] == [run_id]

    proc = raymaas("models", env=user_env(ray_head))
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in parse_table(proc.stdout) if r["model"] == "cli-debug"]
    assert row["version"] == "1"
    assert row["aliases"] == "candidate,champion"
    best = mlflow_client.get_run(run_id).data.metrics["best_val_accuracy"]  # the version is the best epoch's
    assert row["gate"] == f"val_accuracy={best:.4f}"
    assert row["decision"] == "champion"


@pytest.mark.slow
def test_job_api_job_keeps_the_shells_storage_settings(trained_via_job_api, mlflow_client):
    """RAYMAAS_STORAGE_PATH and RAYMAAS_SHARED_STORAGE travel with the job, as the tracking URI
    does: its checkpoints land where the user's shell said, not in the head's default folder."""
    run_id, _, storage = trained_via_job_api
    run_name = mlflow_client.get_run(run_id).info.run_name
    assert list((storage / run_name).glob("checkpoint_*")), sorted(p.name for p in storage.iterdir())


# --------------------------------------------------------------------------- serve (last: see its docstring)


class Streamed:
    """A subprocess whose output (stdout and stderr together) is collected line by line as it comes."""

    def __init__(self, args: list[str], env: dict):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            cwd=str(REPO),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: killed as one if the test fails
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in list(self.lines)):
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)
                if any(text in line for line in self.lines):
                    return
                pytest.fail(
                    f"exited ({self.proc.returncode}) before printing {text!r}; its output:\n{self.output[-6000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} after {timeout_s}s; its output so far:\n{self.output[-6000:]}")
            time.sleep(0.5)

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not exit within {timeout_s}s; its output:\n{self.output[-6000:]}")
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def http(url: str, payload: dict | None = None, timeout: float = 30) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a GET, or of a JSON POST when payload is given."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"text": raw[:2000].decode(errors="replace")}
        return err.code, body, dict(err.headers)
    except OSError as err:  # not listening (yet), reset
        return 0, {"error": repr(err)}, {}


def serve_apps_then_shutdown(ray_head) -> list[str]:
    """The applications left on the head's Serve; then Serve itself is shut down, so the
    session's head is as it was before `raymaas serve` joined it (asked from a separate process)."""
    script = textwrap.dedent(
        f"""
        import json, logging
        import ray
        from ray import serve
        ray.init(address={ray_head.address!r}, logging_level=logging.ERROR, log_to_driver=False)
        apps = sorted(serve.status().applications)
        serve.shutdown()
        print(json.dumps(apps))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=ray_head.env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_serve_publishes_the_registered_model_over_http_until_ctrl_c(trained_via_job_api, ray_head, mlflow_client):
    """`raymaas serve NAME --address HEAD` publishes the champion the job registered on the
    head's Serve: it answers predictions (those of the registered version, named in the
    headers), GET /models lists it, and Ctrl-C deletes its applications from the head and
    exits 0. Last in the module: the served version's monitoring run lands in cli-debug's
    experiment, and test_runs_and_models_show_the_trained_job wants the job's run newest there."""
    import mlflow
    from sklearn.datasets import load_digits

    name = "cli-debug"
    version = str(mlflow_client.get_model_version_by_alias(name, "champion").version)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serving = Streamed(
        [sys.executable, "-m", "raymaas.cli", "serve", name, "--address", ray_head.address, "--port", str(port)],
        env={**user_env(ray_head), "PYTHONUNBUFFERED": "1"},
    )
    try:
        serving.wait_for_line("Ctrl-C stops serving", timeout_s=300)
        assert f"raymaas: application {name!r} at {base}/models/{name}/" in serving.lines, serving.output
        assert f"raymaas: application 'index' at {base}/" in serving.lines, serving.output

        rows = load_digits().data[:6].astype(np.float32)
        url = f"{base}/models/{name}/invocations"
        answers = []

        def answered():  # the applications are RUNNING; the proxy may take a moment to route
            answers.append(http(url, {"inputs": rows.tolist()}))
            return answers[-1][0] == 200

        try:
            wait_for(answered, timeout_s=60, what=f"a 200 from {url}", interval=1)
        except TimeoutError as err:
            pytest.fail(f"{err}; last answer: {answers[-1]}\nits output:\n{serving.output[-6000:]}")
        _, body, headers = answers[-1]
        headers = {k.lower(): v for k, v in headers.items()}
        assert (headers["x-model-name"], headers["x-model-version"], headers["x-model-alias"]) == (
            name,
            version,
            "champion",
        ), headers
        expected = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(rows)
        assert body["predictions"] == expected.tolist(), (body, expected)  # [6] class ids, as in-process

        status, listing, _ = http(f"{base}/models")
        assert status == 200, listing
        (published,) = [m for m in listing["models"] if m["name"] == name]
        assert (published["version"], published["alias"], published["route"]) == (
            version,
            "champion",
            f"/models/{name}/invocations",
        ), published

        serving.proc.send_signal(signal.SIGINT)
        assert serving.wait(timeout_s=120) == 0, serving.output[-6000:]
        assert "raymaas: stopping the applications" in serving.lines, serving.output[-6000:]
    finally:
        serving.kill()
        left = serve_apps_then_shutdown(ray_head)  # also when the test failed: the head's Serve goes
    assert left == [], f"applications left on the head after Ctrl-C: {left}"
