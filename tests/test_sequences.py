"""Sequence models end to end (raymaas.supervised.sequences): a time series cut into windows
(the generated hourly load, forecast by an LSTM) and a list column (the generated waveforms,
classified by a GRU), each trained by the supervised job, registered with a [n, length,
channels] signature, served over HTTP (a wrong shape a 422 naming the expected one,
/explain per step and channel, drift per channel) and scored in batch. The data's errors
(a ragged list column, a non-numeric step, a window longer than the series) are refused with
the spec, before Ray."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import REPO, free_port, run_job
from raymaas.specs import SpecError, load_spec
from raymaas.supervised import SupervisedSpec
from raymaas.supervised.sequences import SequenceError, sequence_array

LOAD_SPEC = REPO / "jobs/specs/load_lstm_debug.yaml"
WAVES_SPEC = REPO / "jobs/specs/waveforms_gru_debug.yaml"


# --------------------------------------------------------------------------- no Ray


def test_list_columns_become_steps_by_channels():
    steps = [[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], [[4.0, 40.0], [5.0, 50.0], [6.0, 60.0]]]
    nested = pa.table({"s": steps})
    assert sequence_array(nested, ["s"]).tolist() == steps
    two = pa.table({"a": [[1, 2, 3], [4, 5, 6]], "b": [[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]})
    x = sequence_array(two, ["a", "b"])
    assert x.dtype == np.float32 and x.shape == (2, 3, 2) and x.tolist() == steps
    assert sequence_array(two, ["b"]).shape == (2, 3, 1)


@pytest.mark.parametrize(
    "table, columns, message",
    [
        (pa.table({"s": [[1.0, 2.0], [1.0, 2.0, 3.0]]}), ["s"], "'s' is ragged: row 0 has 2 steps, row 1 has 3 steps"),
        (pa.table({"s": [["a", "b"], ["c", "d"]]}), ["s"], "its steps hold string, not numbers"),
        (
            pa.table({"s": [[1.0, None], [1.0, 2.0]]}),
            ["s"],
            "1 missing step value(s) (null or NaN), the first at row 0",
        ),
        (pa.table({"s": [[1.0, 2.0], None]}), ["s"], "1 missing sequence(s), the first at row 1"),
        (
            pa.table({"s": [[[1.0], [2.0]], [[1.0, 2.0], [3.0]]]}),
            ["s"],
            "row 0, step 0 has 1 channels, row 1, step 0 has 2 channels",
        ),
        (pa.table({"x": [1.0, 2.0]}), ["x"], "holds double, not lists"),
        (pa.table({"a": [[1.0], [2.0]], "b": [[1.0, 2.0], [3.0, 4.0]]}), ["a", "b"], "differ in length"),
    ],
)
def test_bad_sequences_are_named(table, columns, message):
    with pytest.raises(SequenceError) as err:
        sequence_array(table, columns)
    assert message in str(err.value), err.value


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The shipped debug specs' data, written as `raymaas sample-data` writes it."""
    from raymaas.cli.main import main

    folder = tmp_path_factory.mktemp("sequences")
    load, waves = folder / "load.parquet", folder / "waveforms.parquet"
    assert main(["sample-data", "load", str(load), "--rows", "3000"]) == 0
    assert main(["sample-data", "waveforms", str(waves), "--rows", "1500"]) == 0
    return load, waves


def test_the_shipped_specs_take_the_sample_data(files):
    load, waves = files
    frame = pd.read_parquet(load)
    assert not frame["timestamp"].is_monotonic_increasing  # the job sorts the rows, not the file
    for name in ("load_lstm.yaml", "load_lstm_debug.yaml"):
        spec = load_spec(SupervisedSpec, REPO / "jobs/specs" / name, [f"data.source={load}"])
        assert spec.model.name == "lstm" and spec.data.order_by == "timestamp"
    for name in ("waveforms_gru.yaml", "waveforms_gru_debug.yaml"):
        spec = load_spec(SupervisedSpec, REPO / "jobs/specs" / name, [f"data.source={waves}"])
        assert spec.model.name == "gru"


def _refused(spec, *overrides) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(SupervisedSpec, spec, list(overrides))
    return str(err.value)


def test_bad_sequence_data_is_refused_with_the_spec(files, tmp_path):
    load, waves = files
    message = _refused(LOAD_SPEC, f"data.source={load}", "data.window.length=3000")
    assert "the series has 3000 rows; one window needs length + horizon = 3000 + 3" in message, message
    assert "order_by and window go together" in _refused(LOAD_SPEC, f"data.source={load}", "data.window=null")
    assert "order_by 'time' is not a column" in _refused(LOAD_SPEC, f"data.source={load}", "data.order_by=time")
    frame = pd.read_parquet(waves)
    frame.at[7, "signal"] = frame.at[7, "signal"][:-1]
    ragged = tmp_path / "ragged.parquet"
    frame.to_parquet(ragged, index=False)
    message = _refused(WAVES_SPEC, f"data.source={ragged}")
    assert "feature column 'signal' is ragged: row 0 has 64 steps, row 7 has 63 steps" in message, message


def test_a_bad_sequence_file_exits_2_before_ray(files, tmp_path):
    """`raymaas train` on a file with a non-numeric step: exit 2, the column named, no Ray started."""
    import subprocess
    import sys

    bad = tmp_path / "text.parquet"
    pd.DataFrame({"signal": [["a", "b"], ["c", "d"]] * 10, "shape": ["x", "y"] * 10}).to_parquet(bad, index=False)
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # a Ray it would try to reach: none there
    proc = subprocess.run(
        [sys.executable, "-m", "raymaas.cli", "train", str(WAVES_SPEC), "--set", f"data.source={bad}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(REPO),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "feature column 'signal': its steps hold string, not numbers" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- trained, served, scored

LOAD, WAVES = "test-load", "test-waves"


@pytest.fixture(scope="module")
def trained(files, ray_head, mlflow_client):
    """Both debug specs trained on the session's head: {name: (its run, the job's output)}."""
    load, waves = files
    runs = {}
    for name, spec, source in ((LOAD, LOAD_SPEC, load), (WAVES, WAVES_SPEC, waves)):
        proc = run_job(
            ["jobs.supervised", str(spec), "--set", f"name={name}", "--set", f"data.source={source}"],
            env=ray_head.env,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("raymaas: run "))
        runs[name] = (mlflow_client.get_run(line.split()[2]), proc.stdout)
    return runs


def _validation(spec_path, source, task):
    from raymaas.supervised.sequences import read_sequences

    spec = load_spec(SupervisedSpec, spec_path, [f"data.source={source}"])
    return read_sequences(spec.data, task, spec.train_loop_config.seed)


@pytest.mark.slow
def test_the_forecast_beats_the_naive_one_and_declares_its_shape(trained, files):
    import mlflow

    run, out = trained[LOAD]
    metrics = run.data.metrics
    assert metrics["val_rmse"] < metrics["val_rmse_naive"], metrics
    assert "the naive forecast's val_rmse" in out, out
    assert "24 steps x 2 channel(s) (temperature, load)" in run.data.tags["raymaas.sequences"]
    info = mlflow.models.get_model_info(f"models:/{LOAD}@champion")
    (tensor,) = info.signature.inputs.to_dict()
    assert tensor["tensor-spec"]["dtype"] == "float32" and list(tensor["tensor-spec"]["shape"]) == [-1, 24, 2], tensor
    split = _validation(LOAD_SPEC, files[0], "regression")
    predictions = mlflow.pyfunc.load_model(f"models:/{LOAD}@champion").predict(split.x_val)
    rmse = float(np.sqrt(np.mean((predictions - split.y_val[:, 0]) ** 2)))
    assert abs(rmse - metrics["best_val_rmse"]) < 1e-3 * max(1.0, rmse), (rmse, metrics)


@pytest.mark.slow
def test_the_list_column_classifier_learns_the_shapes(trained, files):
    import mlflow

    from raymaas.supervised.data import WAVEFORMS

    run, _ = trained[WAVES]
    assert run.data.metrics["val_accuracy"] > 0.4, run.data.metrics  # 4 shapes: chance is 0.25
    info = mlflow.models.get_model_info(f"models:/{WAVES}@champion")
    (tensor,) = info.signature.inputs.to_dict()
    assert list(tensor["tensor-spec"]["shape"]) == [-1, 64, 1], tensor
    split = _validation(WAVES_SPEC, files[1], "classification")
    predictions = mlflow.pyfunc.load_model(f"models:/{WAVES}@champion").predict(split.x_val)
    assert set(predictions) <= set(WAVEFORMS)
    assert abs((predictions == split.y_val).mean() - run.data.metrics["best_val_accuracy"]) < 1e-6


@pytest.fixture(scope="module")
def endpoint(trained, ray_head):
    """Both models on Serve, on the session's head."""
    import ray
    from ray import serve

    from raymaas.runtime.cluster import connect
    from raymaas.serving import ServeSpec, build_model_app

    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAYMAAS_HOME")}
    os.environ.update({k: ray_head.env[k] for k in saved})
    connect(ray_head.address)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spec = ServeSpec.model_validate(
        {
            "models": [{"name": LOAD}, {"name": WAVES}],
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "ray_actor_options": {"num_cpus": 0.25},
            "monitoring": {"push_interval_s": 0.5},
        }
    )
    serve.run(build_model_app(spec), name="sequences", route_prefix=spec.route_prefix)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _post(url: str, payload: dict):
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
def test_served_sequences_answer_explain_and_refuse_a_wrong_shape(endpoint, files):
    import mlflow

    split = _validation(LOAD_SPEC, files[0], "regression")
    x = split.x_val[:3]
    url = f"{endpoint}/models/{LOAD}"
    status, out = _post(f"{url}/invocations", {"inputs": x.tolist()})
    assert status == 200, out
    expected = mlflow.pyfunc.load_model(f"models:/{LOAD}@champion").predict(x)
    assert np.allclose(out["predictions"], expected, rtol=1e-4, atol=1e-3), (out, expected)
    status, out = _post(f"{url}/invocations", {"inputs": x[:, 1:, :].tolist()})
    assert status == 422 and "(-1, 24, 2)" in out["message"], out
    # Integrated Gradients per step and channel: the answer has the input's shape, and adds up
    status, out = _post(f"{url}/explain", {"inputs": x[:2].tolist()})
    assert status == 200, out
    for row in out["explanations"]:
        attributions = np.asarray(row["attributions"])
        assert attributions.shape == (24, 2), attributions.shape
        gap = attributions.sum() - (row["score"] - row["baseline_score"])
        assert abs(gap - row["convergence_delta"]) < 1e-2 * max(1.0, abs(row["score"])), row


@pytest.mark.slow
def test_served_sequences_drift_per_channel(endpoint, files):
    """The profile logged with the model holds each channel's per-example mean and spread; served
    windows are binned the same way: the validation windows flag nothing, a shifted temperature
    channel is flagged."""
    from conftest import wait_for

    split = _validation(LOAD_SPEC, files[0], "regression")
    url = f"{endpoint}/models/{LOAD}"

    def monitor() -> dict:
        with urllib.request.urlopen(f"{url}/monitor", timeout=60) as resp:
            return json.loads(resp.read())

    def send(x: np.ndarray) -> None:
        for start in range(0, len(x), 100):
            status, out = _post(f"{url}/invocations", {"inputs": x[start : start + 100].tolist()})
            assert status == 200, out

    before = monitor()["window"]["rows"]
    send(split.x_val[:400])
    report = wait_for(lambda: (r := monitor())["window"]["rows"] >= before + 400 and r, 60, "400 rows in the window")
    features = report["drift"]["features"]
    assert {"mean[0]", "mean[1]", "std[0]", "std[1]"} <= set(features), features
    hot = split.x_val[:400].copy()
    hot[:, :, 0] += 15.0  # a heat wave in the temperature channel
    send(hot)
    wait_for(lambda: "mean[0]" in monitor()["drift"]["flagged"], 60, "the temperature channel flagged", seen=monitor)


@pytest.mark.slow
def test_batch_scoring_takes_the_list_column(trained, files, ray_head, tmp_path):
    """`raymaas predict` on the waveforms table: the list column is the model's [n, 64, 1]
    input; a row whose trace is a step short goes to the errors output, named."""
    import subprocess
    import sys

    frame = pd.read_parquet(files[1]).head(300)
    frame.at[5, "signal"] = frame.at[5, "signal"][:-1]
    source = tmp_path / "traces.parquet"
    frame.to_parquet(source, index=False)
    out = tmp_path / "scored"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from raymaas.cli.predict import main; sys.exit(main(sys.argv[1:]))",
            f"{WAVES}@champion",
            str(source),
            str(out),
            "--passthrough",
            "shape",
        ],
        env=ray_head.env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    scored = pd.read_parquet(out)
    assert len(scored) == 299 and (scored["prediction"] == scored["shape"]).mean() > 0.4
    errors = pd.read_parquet(tmp_path / "scored-errors")
    assert len(errors) == 1 and errors.iloc[0]["error"] == "column 'signal': 63 steps, the model takes 64", errors
