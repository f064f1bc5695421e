"""Ray Serve publishing on the real test head: real Serve, real HTTP on 127.0.0.1, real MLflow.

One Serve instance for the module: an index app at /, a dedicated app following
`test-serve-tiny@champion` (API keys on), and a shared (multiplexed) app with a scikit-learn
model registered by hand and a model trained by the supervised job.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import DEBUG_SPEC, RayHead, free_port, make_bare_python, run_job, stop_ray_head

TINY = "test-serve-tiny"
SKLEARN = "test-serve-sklearn"
JOB_MODEL = "test-serve-digits"
API_KEY = "test-key-1"
TINY_BODY_LIMIT = 100_000
EXPLAIN_MAX_ROWS = 16


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A bare-Python head of this module's own, with every port of its own: heads started
    by concurrent test sessions on one machine otherwise share the dashboard agent's default
    port, and all but one never get a job agent. Jobs here join by address (no job API)."""
    import subprocess
    import tempfile
    from pathlib import Path

    from raymaas.runtime.cluster import ensure_auth_token
    from raymaas.serving.ingress import haproxy_ingress_env

    ensure_auth_token()  # the head runs with token auth even on a machine that never ran Ray
    base = tmp_path_factory.mktemp("serve-head")
    home = base / "home"
    home.mkdir()
    python = make_bare_python(base / "bare-venv")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {
        **os.environ,
        "PATH": f"{python.parent}:{os.environ['PATH']}",
        "RAYMAAS_HOME": str(home),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "RAY_metrics_report_interval_ms": "1000",  # the monitoring tests scrape the export (default 10 s)
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)
    temp_dir = Path(tempfile.mkdtemp(prefix="rms", dir="/tmp"))
    env.update(haproxy_ingress_env(temp_dir / "haproxy"))  # the platform's ingress: Ray's HAProxy
    port = free_port()
    ports = {
        flag: free_port()
        for flag in (
            "dashboard-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "ray-client-server-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
    }
    try:
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
                *(f"--{flag}={p}" for flag, p in ports.items()),
                "--disable-usage-stats",
            ],
            env=env,
            check=True,
            capture_output=True,
            cwd=str(base),
        )
        address = f"127.0.0.1:{port}"
        driver_env = {
            **os.environ,
            "RAY_ADDRESS": address,
            "RAYMAAS_HOME": str(home),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "RAY_AUTH_MODE": "token",
        }
        yield RayHead(address, f"http://127.0.0.1:{ports['dashboard-port']}", home, tracking_uri, driver_env, temp_dir)
    finally:
        stop_ray_head(temp_dir, port)
        shutil.rmtree(base / "bare-venv", ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_client(ray_head):
    from raymaas.tracking import get_client

    return get_client(ray_head.tracking_uri)


def _train_tiny(seed: int):
    import mlflow
    import torch

    from raymaas.modelcode.pyfunc import log_classifier

    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with mlflow.start_run(run_name=f"tiny-{seed}"):
        info = log_classifier(module, np.random.default_rng(seed).random((8, 64), dtype=np.float32))
    return mlflow.register_model(info.model_uri, TINY).version


@pytest.fixture(scope="module")
def registered(ray_head, mlflow_client):
    """Two versions of a tiny torch model (v1 champion), a hand-registered scikit-learn model
    with named columns, and a model produced by the supervised job on the head."""
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from raymaas.tracking import ensure_experiment

    job = run_job(["jobs.supervised", str(DEBUG_SPEC), "--set", f"name={JOB_MODEL}"], env=ray_head.env)
    assert job.returncode == 0, job.stderr[-3000:]

    mlflow.set_experiment(experiment_id=ensure_experiment(mlflow_client, "test-serve"))
    v1, v2 = _train_tiny(1), _train_tiny(2)
    mlflow_client.set_registered_model_alias(TINY, "champion", v1)

    iris = load_iris(as_frame=True)
    frame = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    clf = LogisticRegression(max_iter=500).fit(frame, iris.target)
    with mlflow.start_run(run_name="sklearn-by-hand"):
        mlflow.sklearn.log_model(clf, name="model", input_example=frame.head(3), registered_model_name=SKLEARN)
    return {"tiny": (str(v1), str(v2)), "iris": frame}


@pytest.fixture(scope="module")
def endpoint(ray_head, registered, tmp_path_factory):
    """Serve on the test head (the driver ships raymaas; the head's Python lacks it)."""
    import ray
    from ray import serve

    from raymaas.runtime.cluster import connect
    from raymaas.serving import IndexSpec, ServeSpec, build_index_app, build_model_app

    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(f"# one key a line\n{API_KEY}\nsecond-key\n")
    # not RAY_AUTH_MODE: set after `import ray` it is ignored; connect() switches to token mode itself
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAYMAAS_HOME")}
    os.environ.update({k: ray_head.env[k] for k in saved})
    connect(ray_head.address)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    key_env = {"runtime_env": {"env_vars": {"RAYMAAS_API_KEYS_FILE": str(keys)}}}
    tiny = ServeSpec.model_validate(
        {
            "models": [{"name": TINY}],  # alias champion by default
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 2,
                "upscale_delay_s": 1,
                "downscale_delay_s": 600,
            },
            "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002},
            "ray_actor_options": {"num_cpus": 0.25, **key_env},
            "max_request_bytes": TINY_BODY_LIMIT,
            "poll_interval_s": 1,
            # a small explain budget, so that a test can overflow it
            "explain": {"max_ongoing_requests": 2, "max_queued_requests": 2, "max_rows": EXPLAIN_MAX_ROWS},
        }
    )
    iris_rows = tmp_path_factory.mktemp("reference") / "iris.csv"
    registered["iris"].to_csv(iris_rows, index=False)
    shared = ServeSpec.model_validate(
        {
            # the model registered by hand has no profile: its reference rows come from the config
            "models": [{"name": SKLEARN, "version": 1, "reference": str(iris_rows)}, {"name": JOB_MODEL}],
            # payload logging switched on here (only here): every request, one column masked
            "monitoring": {
                "payload_logging": {
                    "enabled": True,
                    "sample_rate": 1.0,
                    "mask_columns": ["sepal_length"],
                    "flush_interval_s": 1,
                }
            },
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "ray_actor_options": {"num_cpus": 0.25},
        }
    )
    serve.run(build_index_app(IndexSpec()), name="index", route_prefix="/")
    serve.run(build_model_app(tiny), name="tiny", route_prefix=tiny.route_prefix)
    serve.run(build_model_app(shared), name="shared", route_prefix=shared.route_prefix)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def call(url: str, body=None, headers: dict | None = None, key: str | None = API_KEY, raw: bytes | None = None):
    """(status, headers, parsed JSON body) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"content-type": "application/json", **(headers or {})}
    if key:
        h["x-api-key"] = key
    req = urllib.request.Request(url, data=data, headers=h, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        payload = err.read()
        return err.code, err.headers, json.loads(payload) if payload.startswith(b"{") else payload


def _pyfunc(uri: str):
    import mlflow

    return mlflow.pyfunc.load_model(uri)


# --------------------------------------------------------------------------- ingress


def test_haproxy_ingress_env_keeps_each_instance_apart(tmp_path):
    import tempfile
    from pathlib import Path

    from raymaas.serving.ingress import haproxy_ingress_env

    short = [Path(tempfile.mkdtemp(prefix="rmh", dir="/tmp")) for _ in range(2)]
    try:
        first, second = (haproxy_ingress_env(d / "hap") for d in short)
        assert first["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        assert len([k for k in first if "PORT" in k or k.endswith(("_LOC", "_PATH", "_BASE", "_FILE"))]) == 9
        # nothing shared between two Serve instances on one machine: no path, no port
        shared = {
            k
            for k in first
            if first[k] == second[k] and ("PORT" in k or k.endswith(("_LOC", "_PATH", "_BASE", "_FILE")))
        }
        assert not shared, shared
        assert (short[0] / "hap").stat().st_mode & 0o777 == 0o700  # the admin socket lives there
    finally:
        for d in short:
            shutil.rmtree(d, ignore_errors=True)
    with pytest.raises(ValueError, match="too long for HAProxy"):
        haproxy_ingress_env(tmp_path / ("x" * 40))


def test_serve_refuses_an_unknown_model_before_serve_starts(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "RAYMAAS_HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "raymaas.cli", "serve", "no-such-model", "--port", str(free_port())],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no registered model named 'no-such-model'" in proc.stderr
    assert "application" not in proc.stdout  # nothing was published
    proc = subprocess.run(
        [sys.executable, "-m", "raymaas.cli", "serve", "serve/config.yaml", "no-such-model"],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not both" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- publishing


@pytest.mark.slow
def test_platform_trained_models_match_pyfunc(endpoint, registered):
    from sklearn.datasets import load_digits

    x = load_digits().data[:40].astype(np.float32)
    for name, uri in ((TINY, f"models:/{TINY}/{registered['tiny'][0]}"), (JOB_MODEL, f"models:/{JOB_MODEL}@champion")):
        expected = _pyfunc(uri).predict(x).tolist()
        status, headers, body = call(f"{endpoint}/models/{name}/invocations", {"inputs": x.tolist()})
        assert status == 200, body
        assert body["predictions"] == expected
        assert headers["x-model-name"] == name and headers["x-model-version"]
        # every scoring format that fits a tensor signature
        status, _, body = call(f"{endpoint}/models/{name}/invocations", {"instances": x[:3].tolist()})
        assert status == 200 and body["predictions"] == expected[:3], body
    # class probabilities when asked (MLflow's params field): the prediction and one per class, named
    status, _, body = call(
        f"{endpoint}/models/{JOB_MODEL}/invocations", {"inputs": x[:3].tolist(), "params": {"probabilities": True}}
    )
    assert status == 200, body
    rows = body["predictions"]
    assert [row["prediction"] for row in rows] == expected[:3]
    assert set(rows[0]) == {"prediction", *(f"probability_{c}" for c in range(10))}
    assert abs(sum(v for k, v in rows[0].items() if k != "prediction") - 1.0) < 1e-4


@pytest.mark.slow
def test_sklearn_model_registered_by_hand(endpoint, registered):
    frame = registered["iris"].sample(25, random_state=0)
    expected = _pyfunc(f"models:/{SKLEARN}/1").predict(frame).tolist()
    url = f"{endpoint}/models/{SKLEARN}/invocations"
    split = json.loads(frame.to_json(orient="split", index=False))
    for body in ({"dataframe_split": split}, {"dataframe_records": frame.to_dict(orient="records")}):
        status, headers, out = call(url, body, key=None)  # the shared app has no keys configured
        assert status == 200, out
        assert out["predictions"] == expected
        assert headers["x-model-version"] == "1" and "x-model-alias" not in headers
    # named columns in another order are fine
    status, _, out = call(url, {"dataframe_records": frame[frame.columns[::-1]].to_dict(orient="records")}, key=None)
    assert status == 200 and out["predictions"] == expected
    # text/csv: a header row, then rows, answered as its dataframe_split equivalent
    status, headers, out = call(
        url, raw=frame.to_csv(index=False).encode(), headers={"content-type": "text/csv"}, key=None
    )
    assert status == 200, out
    assert out["predictions"] == expected and headers["x-model-version"] == "1"
    code, _, out = call(
        url,
        raw=frame.drop(columns=["petal_width"]).to_csv(index=False).encode(),
        headers={"content-type": "text/csv"},
        key=None,
    )
    assert code == 422 and "petal_width" in out["message"], out


@pytest.mark.slow
def test_listing_health_and_docs(endpoint, registered):
    status, _, body = call(f"{endpoint}/models", key=None)
    assert status == 200
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {TINY, SKLEARN, JOB_MODEL}
    assert models[TINY]["alias"] == "champion" and models[TINY]["version"] == registered["tiny"][0]
    assert models[SKLEARN]["version"] == "1" and models[SKLEARN]["alias"] is None
    assert models[TINY]["signature"]["inputs"] == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 64]}}
    ]
    assert [c["name"] for c in models[SKLEARN]["signature"]["inputs"]] == list(registered["iris"].columns)
    assert models[JOB_MODEL]["route"] == f"/models/{JOB_MODEL}/invocations"
    assert call(f"{endpoint}/health", key=None)[:3:2] == (200, {"status": "ok"})
    status, _, doc = call(f"{endpoint}/openapi.json", key=None)
    assert status == 200 and {f"/models/{TINY}/invocations", f"/models/{TINY}/explain"} <= set(doc["paths"])
    with urllib.request.urlopen(f"{endpoint}/docs", timeout=30) as resp:
        assert resp.status == 200 and b"swagger" in resp.read().lower()


# --------------------------------------------------------------------------- bad input


@pytest.mark.slow
@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"inputs": [[0.5] * 63]}, 422, "shape"),  # wrong shape
        ({"inputs": [["a"] * 64]}, 422, "float"),  # wrong dtype
        ({"inputs": [[1.0] * 64], "instances": [[1.0] * 64]}, 422, "exactly one"),
        ({"data": [[1.0] * 64]}, 422, "exactly one"),  # no scoring format
        ([[1.0] * 64], 422, "JSON object"),
        ({"inputs": [[1.0] * 64, [1.0] * 3]}, 422, "inputs"),  # ragged
        ({"inputs": [[1.0] * 64], "params": [1]}, 422, "params"),
        ({"inputs": [[1.0] * 64], "params": {"temperature": 2}}, 422, "unknown params ['temperature']"),
    ],
)
def test_bad_tensor_input_is_422_saying_what_is_expected(endpoint, registered, body, status, says):
    code, _, out = call(f"{endpoint}/models/{TINY}/invocations", body)
    assert code == status, out
    assert says in out["message"]
    if body and isinstance(body, dict) and "params" not in body:
        assert out["expected"] == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 64]}}]


@pytest.mark.slow
def test_missing_column_is_422(endpoint, registered):
    frame = registered["iris"].head(3)
    code, _, out = call(
        f"{endpoint}/models/{SKLEARN}/invocations",
        {"dataframe_records": frame.drop(columns=["petal_width"]).to_dict(orient="records")},
        key=None,
    )
    assert code == 422, out
    assert "petal_width" in out["message"]
    assert [c["name"] for c in out["expected"]] == list(registered["iris"].columns)


@pytest.mark.slow
def test_malformed_unknown_and_too_large(endpoint, registered):
    url = f"{endpoint}/models/{TINY}/invocations"
    for raw in (b"{not json", b"", b"\xff\xfe"):
        code, _, out = call(url, raw=raw)
        assert code == 400, (raw, out)
    code, _, out = call(url, raw=b"x" * (TINY_BODY_LIMIT + 1))
    assert code == 413 and str(TINY_BODY_LIMIT) in out["message"]
    code, _, out = call(f"{endpoint}/models/no-such-model/invocations", {"inputs": [[1.0] * 64]})
    assert code == 404 and "no-such-model" in out["message"]
    code, _, out = call(url, raw=b"{}", headers={"content-type": "text/plain"})
    assert code == 415 and "text/csv" in out["message"]
    code, _, out = call(url, raw=b"", headers={"content-type": "text/csv"})
    assert code == 400 and "empty" in out["message"]


@pytest.mark.slow
def test_api_keys(endpoint, registered):
    url, body = f"{endpoint}/models/{TINY}/invocations", {"inputs": [[1.0] * 64]}
    assert call(url, body, key=None)[0] == 401
    code, headers, _ = call(url, body, key="wrong")
    assert code == 401 and headers["www-authenticate"] == "Bearer"
    assert call(url, body, key=None, headers={"authorization": "Bearer wrong"})[0] == 401
    assert call(url, body, key=None, headers={"authorization": f"Bearer {API_KEY}"})[0] == 200
    assert call(url, body, key="second-key")[0] == 200
    # checked before the body is read or parsed: no key says nothing about the model
    assert call(url, raw=b"{not json", key=None)[0] == 401
    assert call(f"{endpoint}/health", key=None)[0] == 200


# --------------------------------------------------------------------------- explanations


def _complete(row: dict) -> bool:
    """Integrated Gradients' completeness: attributions sum to f(x) - f(baseline), within delta."""
    values = row["attributions"].values() if isinstance(row["attributions"], dict) else row["attributions"]
    gap = sum(values) - (row["score"] - row["baseline_score"])
    return abs(gap - row["convergence_delta"]) < 1e-3 and abs(row["convergence_delta"]) < 0.05 * max(
        1.0, abs(row["score"] - row["baseline_score"])
    )


@pytest.mark.slow
def test_explain_beside_invocations_for_trained_and_hand_registered_models(endpoint, registered):
    from sklearn.datasets import load_digits

    x = load_digits().data[:5].astype(np.float32)
    # the job's digits model: Integrated Gradients against the training mean stored with it
    status, headers, out = call(f"{endpoint}/models/{JOB_MODEL}/explain", {"inputs": x.tolist()})
    assert status == 200, out
    _, _, predicted = call(f"{endpoint}/models/{JOB_MODEL}/invocations", {"inputs": x.tolist()})
    assert out["method"] == "integrated_gradients" and out["baseline"] == "the training split's mean"
    assert [r["prediction"] for r in out["explanations"]] == predicted["predictions"]
    assert [r["target"] for r in out["explanations"]] == predicted["predictions"]  # the predicted class
    assert all(len(r["attributions"]) == 64 and _complete(r) for r in out["explanations"]), out
    assert headers["x-model-version"] == out["version"] and out["model"] == JOB_MODEL
    status, _, out = call(
        f"{endpoint}/models/{JOB_MODEL}/explain", {"instances": x[:2].tolist(), "params": {"target": 3}}
    )
    assert status == 200 and [r["target"] for r in out["explanations"]] == [3, 3], out

    # scikit-learn by hand: Kernel SHAP over a sample of the profile of its reference file
    frame = registered["iris"].iloc[[0, 75, 140]]
    body = {"dataframe_records": frame.to_dict(orient="records")}
    status, _, out = call(f"{endpoint}/models/{SKLEARN}/explain", body, key=None)
    assert status == 200, out
    assert out["method"] == "kernel_shap" and "reference profile" in out["baseline"]
    expected = _pyfunc(f"models:/{SKLEARN}/1").predict(frame).tolist()
    assert [r["prediction"] for r in out["explanations"]] == expected
    for row in out["explanations"]:
        assert list(row["attributions"]) == list(frame.columns)  # named by the signature's columns
        assert abs(sum(row["attributions"].values()) + row["baseline_score"] - row["score"]) < 1e-6

    # bad bodies get the answers /invocations gives them; the explanation's own limits their own
    for bad in (
        {"dataframe_records": frame.drop(columns=["petal_width"]).to_dict(orient="records")},
        {"inputs": [[1, 2]], "instances": [[1, 2]]},
    ):
        e = call(f"{endpoint}/models/{SKLEARN}/explain", bad, key=None)
        i = call(f"{endpoint}/models/{SKLEARN}/invocations", bad, key=None)
        assert e[0] == i[0] == 422 and e[2]["message"] == i[2]["message"], (e, i)
    code, _, out = call(f"{endpoint}/models/{SKLEARN}/explain", {**body, "params": {"target": "tulip"}}, key=None)
    assert code == 422 and "tulip" in out["message"]
    url = f"{endpoint}/models/{TINY}/explain"
    assert call(url, raw=b"{not json")[0] == 400
    assert call(url, {"inputs": [[1.0] * 64]}, key=None)[0] == 401
    code, _, out = call(url, {"inputs": [[1.0] * 64] * (EXPLAIN_MAX_ROWS + 1)})
    assert code == 413 and "explain.max_rows" in out["message"]


@pytest.mark.slow
def test_invocations_keep_answering_while_explain_is_over_its_budget(endpoint, registered, ray_head):
    """Explanations have their own deployment and request budget: a flood of them gets 503s
    beyond the budget, and predictions keep answering at their usual speed meanwhile, the
    explainer's process giving them the CPU (every thread of it niced, the replicas' not)."""
    import threading

    from ray.util.state import list_actors

    body = {"inputs": np.random.default_rng(0).random((1, 64)).tolist()}
    invocations, explain = f"{endpoint}/models/{TINY}/invocations", f"{endpoint}/models/{TINY}/explain"
    assert call(explain, {"inputs": body["inputs"] * EXPLAIN_MAX_ROWS})[0] == 200  # the explainer is up

    def latencies(n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            status, _, answer = call(invocations, body)
            assert status == 200, answer
            out.append(time.perf_counter() - started)
        return out

    alone = float(np.median(latencies(40)))
    stop, statuses = threading.Event(), []

    # eight clients, each backing off on a 503 (which says retry-after: 1) as a client would: those the
    # budget admits keep the explainer busy; the rest do not turn the test into a flood of 503s, which
    # the proxy and the endpoint replica answer at their normal priority beside the predictions
    def flood():
        while not stop.is_set() and len(statuses) < 2000:
            status, headers, _ = call(explain, {"inputs": body["inputs"] * EXPLAIN_MAX_ROWS})
            statuses.append(status if status != 503 or headers.get("retry-after") == "1" else "503 without retry-after")
            if status == 503:
                time.sleep(0.5)

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        loaded = float(np.median(latencies(40)))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) > 0, set(statuses)
    # usual speed: never queued behind explanations, and not starved of CPU by them. Issue 32 asks for
    # 1.2x, which bench/explain_load.py measures (docs/performance.md). Here: 3x (was 4x or +50 ms).
    # Runs of this test gave 1.36x alone and 2.00x inside a full `make test` (4.25 -> 8.52 ms, which
    # a 2x bound failed by 0.1%): the explainer's computation now yields, but the flood's requests
    # still go through the proxy and the endpoint replica at normal priority, and on a shared
    # 2-core machine that traffic alone moves the median by up to 2x.
    print(f"\n/invocations p50 {alone * 1000:.2f} ms alone, {loaded * 1000:.2f} ms with /explain flooded", flush=True)
    assert loaded < 3 * alone, (alone, loaded)

    def nice_values(class_name: str) -> set[int]:
        """The nice values of every thread of the deployment's replica processes (this head's own)."""
        actors = list_actors(
            address=ray_head.address, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")]
        )
        assert actors, class_name
        return {os.getpriority(os.PRIO_PROCESS, int(t)) for a in actors for t in os.listdir(f"/proc/{a.pid}/task")}

    assert nice_values("ServeReplica:tiny:Explainer") == {19}  # explain.niceness's default
    # the niceness stays in the explainer's process: the endpoint's replicas run as the head was
    # started (their main threads), and no thread of theirs at the explainer's 19 (Ray itself
    # runs some of a worker's background threads at 15: seen in CI as {0, 15})
    endpoint = nice_values("ServeReplica:tiny:ModelEndpoint")
    assert 19 not in endpoint and min(endpoint) == os.getpriority(os.PRIO_PROCESS, 0), endpoint


# --------------------------------------------------------------------------- promotion and failures under load


async def _load(url: str, body: bytes, concurrency: int, stop: asyncio.Event, log: list, max_requests: int):
    """Closed-loop load: (time, status, version) per request, until stop or max_requests."""
    import aiohttp

    headers = {"content-type": "application/json", "x-api-key": API_KEY}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker():
            while not stop.is_set() and len(log) < max_requests:
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        log.append((time.monotonic(), resp.status, resp.headers.get("x-model-version")))
                except (aiohttp.ClientError, TimeoutError) as err:
                    log.append((time.monotonic(), type(err).__name__, None))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _replicas(app: str) -> int:
    from ray import serve

    return serve.status().applications[app].deployments["ModelEndpoint"].replica_states.get("RUNNING", 0)


@pytest.mark.slow
def test_champion_moves_under_load_without_a_failed_request(endpoint, registered, mlflow_client):
    v1, v2 = registered["tiny"]
    url = f"{endpoint}/models/{TINY}/invocations"
    x = np.random.default_rng(3).random((4, 64), dtype=np.float32)
    body = json.dumps({"inputs": x.tolist()}).encode()
    log: list = []

    async def scenario():
        stop = asyncio.Event()
        load = asyncio.create_task(_load(url, body, 8, stop, log, max_requests=20_000))
        await asyncio.sleep(5)
        moved_at = time.monotonic()
        await asyncio.to_thread(mlflow_client.set_registered_model_alias, TINY, "champion", v2)
        deadline = moved_at + 45
        while time.monotonic() < deadline and not any(t > moved_at and v == v2 for t, _, v in log[-50:]):
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # and keep going a while on the new version
        stop.set()
        await load
        return moved_at

    moved_at = asyncio.run(scenario())
    failed = [entry for entry in log if entry[1] != 200]
    assert len(log) > 50 and not failed, f"{len(failed)} of {len(log)} requests failed: {failed[:5]}"
    first_v2 = min(t for t, _, v in log if v == v2)
    assert first_v2 - moved_at < 30, f"served the new version only after {first_v2 - moved_at:.1f}s"
    assert {v for t, _, v in log if t > first_v2 + 1} == {v2}, "every replica must switch"
    assert {v for t, _, v in log if t < moved_at} == {v1}
    print(f"\n{len(log)} requests, 0 failed; version {v2} served {first_v2 - moved_at:.1f}s after the alias moved")
    status, headers, out = call(url, {"inputs": x.tolist()})
    assert headers["x-model-version"] == v2
    assert out["predictions"] == _pyfunc(f"models:/{TINY}/{v2}").predict(x).tolist()


@pytest.mark.slow
def test_killed_replica_is_replaced_under_load(endpoint, ray_head, registered):
    from ray.util.state import list_actors

    url = f"{endpoint}/models/{TINY}/invocations"
    body = json.dumps({"inputs": [[0.5] * 64]}).encode()
    log: list = []

    def replica_pids():
        actors = list_actors(
            address=ray_head.address,
            filters=[("class_name", "=", "ServeReplica:tiny:ModelEndpoint"), ("state", "=", "ALIVE")],
        )
        return {a.pid for a in actors}

    async def scenario():
        stop = asyncio.Event()
        load = asyncio.create_task(_load(url, body, 8, stop, log, max_requests=100_000))
        # the load (8 in flight, target 2 a replica) scales the app to its max of 2 replicas
        deadline = time.monotonic() + 60
        while _replicas("tiny") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(1)
        scaled = _replicas("tiny")
        before = replica_pids()
        victim = sorted(before)[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)  # a replica of this module's own Serve app on its own head
        deadline = killed_at + 90
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            pids = replica_pids()
            if victim not in pids and len(pids) >= len(before) and _replicas("tiny") >= len(before):
                break
        recovered_at = time.monotonic()
        await asyncio.sleep(3)
        stop.set()
        await load
        return scaled, before, victim, killed_at, recovered_at

    scaled, before, victim, killed_at, recovered_at = asyncio.run(scenario())
    assert scaled == 2, "the load should have scaled the app to 2 replicas"
    after = replica_pids()
    assert victim not in after and len(after) == len(before), (before, after)
    failed = [entry for entry in log if entry[1] != 200]
    share = len(failed) / len(log)
    print(
        f"\nkilled replica {victim}: {len(failed)} of {len(log)} requests failed ({share:.2%}); "
        f"replaced after {recovered_at - killed_at:.1f}s; failures: {sorted({str(f[1]) for f in failed})}"
    )
    assert share < 0.05
    tail = [s for t, s, _ in log if t > recovered_at]
    assert tail and all(s == 200 for s in tail)


# --------------------------------------------------------------------------- monitoring

WATCHED = "test-serve-watched"


@pytest.fixture(scope="module")
def watched(endpoint, registered, mlflow_client):
    """The supervised job's model (its reference profile logged by the job) registered again
    under its own name, on an app of two replicas of its own whose monitor reports often."""
    import mlflow
    from ray import serve

    from raymaas.serving import ServeSpec, build_model_app

    source = mlflow_client.get_model_version_by_alias(JOB_MODEL, "champion")
    version = mlflow.register_model(source.source, WATCHED).version
    mlflow_client.set_registered_model_alias(WATCHED, "champion", version)
    spec = ServeSpec.model_validate(
        {
            "models": [{"name": WATCHED}],
            "autoscaling_config": {"min_replicas": 2, "max_replicas": 2},
            "ray_actor_options": {"num_cpus": 0.25},
            "monitoring": {"push_interval_s": 0.5, "log_interval_s": 2},
        }
    )
    serve.run(build_model_app(spec), name="watched", route_prefix=spec.route_prefix)
    return {"url": f"{endpoint}/models/{WATCHED}", "version": str(version), "sent": {}}


def _monitor(url: str, until, timeout: float = 30.0, key: str | None = API_KEY) -> dict:
    """GET url/monitor until until(report) holds (the replicas report every push interval)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, report = call(f"{url}/monitor", key=key)
        assert status == 200, report
        if until(report) or time.monotonic() > deadline:
            return report
        time.sleep(0.3)


@pytest.mark.slow
def test_drift_in_distribution_then_one_shifted_feature_across_replicas(watched):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(x))[:400]
    for start in range(0, 400, 20):
        idx = rows[start : start + 20]
        status, headers, body = call(f"{watched['url']}/invocations", {"inputs": x[idx].tolist()})
        assert status == 200, body
        watched["sent"][headers["x-request-id"]] = y[idx].tolist()
    assert len(watched["sent"]) == 20  # every prediction has its own request id
    report = _monitor(watched["url"], lambda r: r["window"]["rows"] == 400)
    assert report["window"]["rows"] == 400, report["window"]  # both replicas' windows, added up
    assert report["version"] == watched["version"] and report["replicas"] >= 1
    assert report["drift"]["status"] == "ok" and report["drift"]["flagged"] == [], report["drift"]["flagged"]
    assert len(report["drift"]["features"]) == 64

    # one feature 3 standard deviations off (the training profile's own), the others as they were
    mlflow_profile = _pyfunc(f"models:/{WATCHED}/{watched['version']}").unwrap_python_model().reference_profile
    k = int(np.argmax([f["std"] for f in mlflow_profile["features"]]))
    shifted = x[rows].copy()
    shifted[:, k] += 3 * mlflow_profile["features"][k]["std"]
    for start in range(0, 400, 40):
        status, _, body = call(f"{watched['url']}/invocations", {"inputs": shifted[start : start + 40].tolist()})
        assert status == 200, body
    report = _monitor(watched["url"], lambda r: r["window"]["rows"] == 800)
    assert report["window"]["rows"] == 800
    assert report["drift"]["flagged"] == [str(k)], report["drift"]["flagged"]
    watched["shifted_feature"] = str(k)


@pytest.mark.slow
def test_feedback_gives_live_accuracy_and_unknown_ids_are_reported(watched, registered):
    sent = watched["sent"]
    assert sent, "runs after the drift test, which sends the predictions"
    ids = list(sent)
    status, _, answer = call(
        f"{watched['url']}/feedback", {"labels": {**{i: sent[i] for i in ids[:10]}, "no-such-id": 3}}
    )
    assert status == 200, answer
    assert sorted(answer["matched"]) == sorted(ids[:10]) and answer["unknown"] == ["no-such-id"]
    assert answer["rows_scored"] == 200
    # again: duplicates; a wrong number of labels is mismatched, not a 500
    status, _, answer = call(f"{watched['url']}/feedback", {"labels": {ids[0]: sent[ids[0]], ids[10]: [1, 2]}})
    assert status == 200 and answer["duplicate"] == [ids[0]] and answer["mismatched"] == [ids[10]], answer
    # rows with their labels: scored here
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    status, _, answer = call(f"{watched['url']}/feedback", {"inputs": x[:30].tolist(), "labels": y[:30].tolist()})
    assert status == 200 and answer["rows_scored"] == 30, answer
    for bad in (
        {"labels": "x"},
        {"nothing": 1},
        {"inputs": x[:3].tolist(), "labels": [1]},
        {"labels": {"a": {"b": 1}}},
    ):
        status, _, answer = call(f"{watched['url']}/feedback", bad)
        assert status == 422, (bad, answer)
        assert answer["message"]
    status, _, answer = call(f"{watched['url']}/feedback", raw=b"not json")
    assert status == 400

    report = _monitor(watched["url"], lambda r: r["live"]["labelled_rows"] == 230)
    live = report["live"]
    assert live["labelled_rows"] == 230 and live["task"] == "classification"
    assert set(live["metrics"]) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
    assert live["metrics"]["accuracy"] > 0.5  # the debug model's validation accuracy is ~0.9
    assert live["feedback"] == {"matched": 10, "unknown": 1, "expired": 0, "duplicate": 1, "mismatched": 1, "rows": 30}

    # a model logged without a profile: drift unavailable (not zero); one with reference rows in the config: scored
    status, _, _ = call(f"{endpoint_of(watched)}/models/{TINY}/invocations", {"inputs": [[0.0] * 64]})
    assert status == 200
    report = _monitor(f"{endpoint_of(watched)}/models/{TINY}", lambda r: r["version"] is not None)
    assert report["drift"]["status"] == "unavailable" and "without a reference profile" in report["drift"]["reason"]
    frame = registered["iris"].head(20)
    status, _, body = call(
        f"{endpoint_of(watched)}/models/{SKLEARN}/invocations",
        {"dataframe_split": frame.to_dict(orient="split")},
        key=None,
    )
    assert status == 200, body
    report = _monitor(f"{endpoint_of(watched)}/models/{SKLEARN}", lambda r: r["window"]["rows"] >= 20)
    # (the scikit-learn test's rows may be in the window too: all of them iris rows, nothing drifts)
    assert report["drift"]["status"] in ("ok", "too few rows") and report["drift"]["flagged"] == []
    assert set(report["drift"]["features"]) == set(frame.columns)


def endpoint_of(watched) -> str:
    return watched["url"].rsplit("/models/", 1)[0]


def _scrape(ray_head) -> str:
    import ray

    ports = {n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}
    text = []
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text.append(resp.read().decode())
    return "\n".join(text)


def _series(text: str, series: str, **labels) -> float:
    """The sum of a metric's samples whose labels include labels."""
    import re

    total = 0.0
    for line in text.splitlines():
        if not line.startswith(series + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(series) : line.rindex("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_prometheus_export_counts_the_requests_and_holds_the_gauges(watched, ray_head):
    assert "shifted_feature" in watched, "runs after the drift test"
    bad = 3
    for _ in range(bad):
        status, _, _ = call(f"{watched['url']}/invocations", {"inputs": [[1.0, 2.0]]})
        assert status == 422
    model = {"model": WATCHED, "version": watched["version"]}
    deadline = time.monotonic() + 40
    while True:
        text = _scrape(ray_head)
        ok = _series(text, "ray_raymaas_requests_total", **model, code="200", action="invocations")
        # the hub sets its gauges every GAUGE_INTERVAL_S and Ray exports every second: under load
        # the live score can be a scrape behind the counters
        if (
            ok == 30
            and _series(text, "ray_raymaas_requests_total", **model, code="422", action="invocations") == bad
            and _series(text, "ray_raymaas_drift_flagged_features", **model) == 1
            and _series(text, "ray_raymaas_live_score", **model, metric="accuracy") > 0
        ) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ok == 30  # the drift test's 20 + 10 requests
    assert _series(text, "ray_raymaas_requests_total", **model, code="422", action="invocations") == bad
    assert _series(text, "ray_raymaas_predicted_class_total", **model) == 800  # one per row, by label
    assert _series(text, "ray_raymaas_request_latency_ms_count", model=WATCHED, action="invocations") == 30 + bad
    assert _series(text, "ray_raymaas_batch_size_count", application="watched") >= 1
    assert _series(text, "ray_raymaas_drift_flagged_features", **model) == 1
    assert _series(text, "ray_raymaas_drift_psi", **model, feature=watched["shifted_feature"]) > 1
    assert _series(text, "ray_raymaas_live_score", **model, metric="accuracy") > 0.5
    assert _series(text, "ray_raymaas_feedback_total", model=WATCHED, outcome="matched") == 10


@pytest.mark.slow
def test_monitoring_run_in_mlflow_beside_the_training_run(watched, mlflow_client):
    assert "shifted_feature" in watched, "runs after the drift test"
    mv = mlflow_client.get_model_version(WATCHED, watched["version"])
    training = mlflow_client.get_run(mv.run_id)
    deadline = time.monotonic() + 30
    while True:
        runs = mlflow_client.search_runs(
            [training.info.experiment_id], filter_string=f"tags.`raymaas.monitoring.model` = '{WATCHED}'"
        )
        if (runs and runs[0].data.metrics.get("window_rows") == 800) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["raymaas.monitoring.version"] == watched["version"]
    assert run.data.tags["raymaas.monitoring.training_run_id"] == mv.run_id
    assert (
        mlflow_client.get_model_version(WATCHED, watched["version"]).tags["raymaas.monitoring_run_id"]
        == run.info.run_id
    )
    assert run.data.metrics["window_rows"] == 800 and run.data.metrics["drift_flagged_features"] == 1
    assert len(mlflow_client.get_metric_history(run.info.run_id, "window_rows")) >= 1


@pytest.mark.slow
def test_raymaas_monitor_prints_the_report(watched, capsys):
    from raymaas.cli.main import main

    assert "shifted_feature" in watched, "runs after the drift test"
    assert main(["monitor", WATCHED, "--url", endpoint_of(watched)]) == 0
    out = capsys.readouterr().out
    assert f"{WATCHED} version {watched['version']}" in out
    assert f"FLAGGED {watched['shifted_feature']}" in out and "live (" in out
    assert main(["monitor", "no-such-model", "--url", endpoint_of(watched)]) == 1
    assert "404" in capsys.readouterr().err


@pytest.mark.slow
def test_payload_logging_writes_masked_samples_only_where_switched_on(watched, registered, mlflow_client):
    import pandas as pd

    from raymaas.serving.hub import monitoring_run

    frame = registered["iris"].tail(5).reset_index(drop=True)
    status, headers, body = call(
        f"{endpoint_of(watched)}/models/{SKLEARN}/invocations", {"dataframe_split": frame.to_dict(orient="split")}
    )
    assert status == 200, body
    request_id = headers["x-request-id"]
    run_id = monitoring_run(mlflow_client, SKLEARN, "1")
    deadline = time.monotonic() + 30
    written = pd.DataFrame()
    while time.monotonic() < deadline:
        files = [f.path for f in mlflow_client.list_artifacts(run_id, "payloads")]
        if files:
            written = pd.concat(
                [pd.read_parquet(mlflow_client.download_artifacts(run_id, f)) for f in files], ignore_index=True
            )
            if request_id in set(written["request_id"]):
                break
        time.sleep(1)
    mine = written[written["request_id"] == request_id].reset_index(drop=True)
    assert len(mine) == 5, written
    assert (mine["sepal_length"] == "***").all()  # masked before it was written
    assert np.allclose(mine["petal_width"].astype(float), frame["petal_width"])
    assert mine["prediction"].tolist() == body["predictions"]
    # off by default: the watched model's monitoring run holds no payloads
    watched_run = monitoring_run(mlflow_client, WATCHED, watched["version"])
    assert not mlflow_client.list_artifacts(watched_run, "payloads")


# --------------------------------------------------------------------------- clients nobody here wrote

LATE = "test-serve-late"


def _status(url: str, timeout: float) -> int | None:
    """The status of GET url, or None if nothing answered within timeout seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (TimeoutError, urllib.error.URLError):
        return None


def _from_schema(schema: dict, optional: bool = False):
    """One value a JSON schema of /openapi.json takes, from its types alone: the first choice,
    the required properties (all, with their defaults, if optional), the fewest items."""
    if "const" in schema:
        return schema["const"]
    if "oneOf" in schema:
        return _from_schema(schema["oneOf"][0], optional)
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        props = schema.get("properties", {})
        keys = props if optional else schema.get("required", [])
        return {k: props[k].get("default", _from_schema(props[k], optional)) for k in keys}
    if kind == "array":
        if "prefixItems" in schema:
            return [_from_schema(s, optional) for s in schema["prefixItems"]]
        return [_from_schema(schema["items"], optional) for _ in range(max(1, schema.get("minItems", 0)))]
    return {"number": 0.25, "integer": 1, "boolean": True, "string": "a"}[kind]


@pytest.mark.slow
def test_mlflow_scoring_server_client_at_a_model_s_path(endpoint, registered):
    import mlflow
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient
    from mlflow.utils.proto_json_utils import dump_input_data
    from sklearn.datasets import load_digits

    host, port = endpoint.removeprefix("http://").split(":")
    x = load_digits().data[:5].astype(np.float32)
    frame = registered["iris"].head(10)
    for name, data, uri in ((SKLEARN, frame, f"models:/{SKLEARN}/1"), (JOB_MODEL, x, f"models:/{JOB_MODEL}@champion")):
        client = ScoringServerClient(host, f"{port}/models/{name}")  # MLflow's way to a path prefix
        client.wait_server_ready(timeout=30)
        assert client.get_version() == mlflow.__version__
        answer = client.invoke(data)
        assert answer.get_predictions(predictions_format="ndarray").tolist() == _pyfunc(uri).predict(data).tolist()
    with pytest.raises(Exception, match="error code 404"):
        ScoringServerClient(host, f"{port}/models/no-such-model").ping()
    # the app with API keys: ping and version need none (health checks and this client send none) ...
    tiny = ScoringServerClient(host, f"{port}/models/{TINY}")
    tiny.wait_server_ready(timeout=30)
    assert tiny.get_version() == mlflow.__version__
    # ... its predictions do, and this client has no way to send one
    with pytest.raises(Exception, match="error code 401"):
        tiny.invoke(x)
    status, headers, out = call(f"{endpoint}/models/{TINY}/invocations", raw=dump_input_data(x).encode())
    assert status == 200
    assert out["predictions"] == _pyfunc(f"models:/{TINY}/{headers['x-model-version']}").predict(x).tolist()


@pytest.mark.slow
def test_openapi_describes_each_model_s_body_from_its_signature_and_every_route(endpoint, registered):
    status, _, doc = call(f"{endpoint}/openapi.json", key=None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    names = {m["name"] for m in call(f"{endpoint}/models", key=None)[2]["models"]}
    assert {TINY, SKLEARN, JOB_MODEL} <= names
    assert {p.split("/")[2] for p in doc["paths"] if p.startswith("/models/")} == names  # one source
    assert {"/health", "/ping", "/version", "/models"} <= set(doc["paths"])
    for name in names:
        base = f"/models/{name}"
        routes = {(p, m) for p, ops in doc["paths"].items() if p == base or p.startswith(base + "/") for m in ops}
        assert routes == {
            (base, "get"),
            (f"{base}/invocations", "post"),
            (f"{base}/explain", "post"),
            (f"{base}/feedback", "post"),
            (f"{base}/monitor", "get"),
            (f"{base}/rollout", "get"),
            (f"{base}/ping", "get"),
            (f"{base}/health", "get"),
            (f"{base}/version", "get"),
        }
        assert doc["paths"][f"{base}/ping"]["get"]["security"] == []
        assert "401" in doc["paths"][f"{base}/invocations"]["post"]["responses"]

    def formats(name: str) -> dict:
        schema = doc["paths"][f"/models/{name}/invocations"]["post"]["requestBody"]["content"]["application/json"]
        return {v["required"][0]: v["properties"] for v in schema["schema"].get("oneOf", [schema["schema"]])}

    tiny = formats(TINY)
    assert set(tiny) == {"inputs", "instances"}
    rows = tiny["inputs"]["inputs"]
    assert rows["minItems"] == 1 and rows["items"]["minItems"] == rows["items"]["maxItems"] == 64
    assert rows["items"]["items"]["type"] == "number"
    job = formats(JOB_MODEL)
    assert job["inputs"]["params"]["properties"]["probabilities"]["type"] == "boolean"
    iris = formats(SKLEARN)
    columns = list(registered["iris"].columns)
    split = iris["dataframe_split"]["dataframe_split"]["properties"]
    assert split["columns"]["const"] == columns
    assert [c["type"] for c in split["data"]["items"]["prefixItems"]] == ["number"] * 4
    records = iris["dataframe_records"]["dataframe_records"]["items"]
    assert records["required"] == columns and set(records["properties"]) == set(columns)


@pytest.mark.slow
def test_openapi_generated_bodies_are_accepted(endpoint, registered):
    from jsonschema import Draft202012Validator

    _, _, doc = call(f"{endpoint}/openapi.json", key=None)
    for name in (TINY, SKLEARN, JOB_MODEL):
        url = f"{endpoint}/models/{name}/invocations"
        content = doc["paths"][f"/models/{name}/invocations"]["post"]["requestBody"]["content"]
        schema = content["application/json"]["schema"]
        bodies = [content["application/json"]["example"]]
        for variant in schema.get("oneOf", [schema]):
            bodies += [_from_schema(variant), _from_schema(variant, optional=True)]
        for body in bodies:
            Draft202012Validator(schema).validate(body)
            status, _, out = call(url, body)
            assert status == 200 and len(out["predictions"]) == 1, (name, body, out)
        if "example" in content["text/csv"]:
            status, _, out = call(
                url, raw=content["text/csv"]["example"].encode(), headers={"content-type": "text/csv"}
            )
            assert status == 200, (name, out)


@pytest.mark.slow
def test_openapi_and_models_list_a_model_exactly_while_it_answers(endpoint, registered, mlflow_client):
    import mlflow
    from ray import serve

    from raymaas.serving import ServeSpec, build_model_app

    version = mlflow.register_model(mlflow_client.get_model_version(SKLEARN, "1").source, LATE).version
    spec = ServeSpec.model_validate(
        {
            "models": [{"name": LATE, "version": version}],
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "ray_actor_options": {"num_cpus": 0.1},
        }
    )
    # not waiting for it to run: the listing is watched while the application starts
    serve.run_many(
        [serve.RunTarget(build_model_app(spec), name="late", route_prefix=spec.route_prefix)],
        wait_for_applications_running=False,
    )
    seen = []  # (in /models, in /openapi.json, then /ping's status), in the order asked
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(s == 200 for *_, s in seen) < 10:
            listed = LATE in {m["name"] for m in call(f"{endpoint}/models", key=None)[2]["models"]}
            documented = f"/models/{LATE}/invocations" in call(f"{endpoint}/openapi.json", key=None)[2]["paths"]
            seen.append((listed, documented, _status(f"{endpoint}/models/{LATE}/ping", timeout=2)))
            time.sleep(0.05)
        answered = [i for i, (*_, s) in enumerate(seen) if s == 200]
        assert answered, seen
        # listed only once it answers: what was listed answered the ping asked right after
        assert all(s == 200 for listed, documented, s in seen if listed or documented), seen
        # and from its first answer on, in both
        assert all(listed and documented for listed, documented, _ in seen[answered[0] + 1 :]), seen
        print(f"\n{answered[0]} rounds before the first answer")
    finally:
        serve.delete("late")
    assert LATE not in {m["name"] for m in call(f"{endpoint}/models", key=None)[2]["models"]}
    assert f"/models/{LATE}/invocations" not in call(f"{endpoint}/openapi.json", key=None)[2]["paths"]
