"""Anomaly scores from reconstruction (task: anomaly, model: autoencoder): the spec's rules, the
metrics, and the generated card payments trained on their normal rows, registered as a model
answering anomaly_score and is_anomaly, and scored in batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_job
from raymaas.specs import SpecError, load_spec
from raymaas.supervised import SupervisedSpec

DEBUG = REPO / "jobs/specs/transactions_autoencoder_debug.yaml"
NAME = "test-transactions"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The debug spec's table, written as `raymaas sample-data transactions` writes it."""
    from raymaas.cli.main import main

    path = tmp_path_factory.mktemp("anomaly") / "transactions.parquet"
    assert main(["sample-data", "transactions", str(path), "--rows", "3000"]) == 0
    return path


def _refused(*overrides) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(SupervisedSpec, DEBUG, list(overrides))
    return str(err.value)


def test_the_spec_pairs_the_task_with_the_autoencoder(table):
    from raymaas.kinds import get_kind

    source = f"data.source={table}"
    for name in ("transactions_autoencoder.yaml", "transactions_autoencoder_debug.yaml"):
        spec = load_spec(SupervisedSpec, REPO / "jobs/specs" / name, [source])
        assert spec.task == "anomaly" and spec.data.normal_label == "no"
        assert spec.gate(get_kind("supervised")).metric == "val_roc_auc"  # labelled: how well scores separate
    unlabelled = load_spec(SupervisedSpec, DEBUG, [source, "data.label_column=null", "data.normal_label=null"])
    gate = unlabelled.gate(get_kind("supervised"))
    assert (gate.metric, gate.higher_is_better) == ("val_reconstruction_error", False)
    assert "model autoencoder is for task anomaly, not classification" in _refused(source, "task=classification")
    assert "task anomaly trains model autoencoder" in _refused(source, "model={name: mlp}")
    assert "data.normal_label is for task anomaly" in _refused(source, "data.label_column=null")
    assert "a regression job needs a label column" in _refused(
        source, "task=regression", "model={name: mlp}", "data.label_column=null", "data.normal_label=null"
    )
    assert "minimises the reconstruction error" in _refused(source, "train_loop_config.loss=huber")


def test_the_autoencoder_answers_a_reconstruction_error_per_row():
    from raymaas.supervised.models import build_model, parse_model_spec

    spec = parse_model_spec({"name": "autoencoder", "hidden_sizes": [8], "latent_size": 2})
    net = build_model(spec, 5, 1, torch.zeros(5), torch.ones(5))
    x = torch.randn(7, 5)
    score = net(x)
    assert score.shape == (7, 1) and bool((score >= 0).all())
    inner = net[1]
    assert torch.allclose(score[:, 0], ((inner.reconstruct(x) - x) ** 2).mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="one anomaly score, not 3 outputs"):
        build_model(spec, 5, 3, torch.zeros(5), torch.ones(5))


def test_anomaly_metrics_add_up_across_workers():
    """Two workers' tallies, added as all_reduce adds them, give the metrics of all rows."""
    from sklearn.metrics import roc_auc_score

    from raymaas.supervised.data import Targets
    from raymaas.supervised.metrics import Tally

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(np.int64)
    score = rng.gamma(2.0, 0.3, 400) + 0.8 * y
    targets = Targets(task="anomaly", label="fraud", normal="no")
    tallies = [Tally(targets, torch.device("cpu")) for _ in range(2)]
    for tally, rows in zip(tallies, (slice(0, 250), slice(250, None))):
        out = torch.as_tensor(score[rows]).reshape(-1, 1).float()
        tally.add(out, torch.as_tensor(y[rows]), out.sum())
    tallies[0].sums += tallies[1].sums
    tallies[0].histograms += tallies[1].histograms
    metrics = tallies[0].metrics()
    assert abs(metrics["val_reconstruction_error"] - score[y == 0].mean()) < 1e-5
    assert abs(metrics["val_loss"] - score.mean()) < 1e-5
    assert abs(metrics["val_roc_auc"] - roc_auc_score(y, score)) < 0.005  # up to ties within a bin
    unlabelled = Tally(Targets(task="anomaly"), torch.device("cpu"))
    unlabelled.add(torch.ones(3, 1), torch.zeros(3, dtype=torch.int64), torch.tensor(3.0))
    assert unlabelled.metrics() == {"val_loss": 1.0, "val_reconstruction_error": 1.0}


@pytest.fixture(scope="module")
def trained(table, ray_head, mlflow_client):
    proc = run_job(
        ["jobs.supervised", str(DEBUG), "--set", f"name={NAME}", "--set", f"data.source={table}"], env=ray_head.env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("raymaas: run "))
    return mlflow_client.get_run(line.split()[2]), proc.stdout


@pytest.mark.slow
def test_trained_on_normal_rows_the_score_finds_the_others(trained, table):
    import mlflow

    run, out = trained
    metrics = run.data.metrics
    assert metrics["val_roc_auc"] > 0.7, metrics
    assert metrics["anomaly_threshold"] > 0 and "is_anomaly above" in out, out
    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["anomaly_score", "is_anomaly"]
    frame = pd.read_parquet(table)
    answers = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(frame.drop(columns="fraud"))
    assert list(answers.columns) == ["anomaly_score", "is_anomaly"] and len(answers) == len(frame)
    fraud = (frame["fraud"] == "yes").to_numpy()
    scores = answers["anomaly_score"].to_numpy()
    assert scores[fraud].mean() > 1.5 * scores[~fraud].mean()
    flagged = answers["is_anomaly"].to_numpy()
    assert flagged[fraud].mean() > 3 * flagged[~fraud].mean()
    assert flagged[~fraud].mean() < 0.05  # the threshold is the normal rows' 0.99 quantile


@pytest.mark.slow
def test_batch_scoring_writes_the_score_and_the_flag(trained, table, ray_head, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "scored"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from raymaas.cli.predict import main; sys.exit(main(sys.argv[1:]))",
            f"{NAME}@champion",
            str(table),
            str(out),
            "--passthrough",
            "fraud",
        ],
        env=ray_head.env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    scored = pd.read_parquet(out)
    assert len(scored) == 3000 and {"anomaly_score", "is_anomaly", "fraud"} <= set(scored.columns), scored.columns
    by_label = scored.groupby("fraud")["anomaly_score"].mean()
    assert by_label["yes"] > 1.5 * by_label["no"], by_label


@pytest.mark.slow
def test_served_scores_take_a_threshold_and_explain_by_column(trained, table, ray_head):
    """Over HTTP: raw rows (a text category with a null) answered with the score and the flag;
    params.threshold moves the flag, not the score; /explain attributes the score to each
    column, completely."""
    import json
    import os
    import urllib.error
    import urllib.request

    import ray
    from ray import serve

    from conftest import free_port
    from raymaas.runtime.cluster import connect
    from raymaas.serving import ServeSpec, build_model_app

    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAYMAAS_HOME")}
    os.environ.update({k: ray_head.env[k] for k in saved})
    connect(ray_head.address)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spec = ServeSpec.model_validate(
        {
            "models": [{"name": NAME}],
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "ray_actor_options": {"num_cpus": 0.25},
        }
    )

    def post(path: str, payload: dict):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/models/{NAME}/{path}",
            data=json.dumps(payload).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        serve.run(build_model_app(spec), name="anomaly", route_prefix=spec.route_prefix)
        rows = pd.read_parquet(table).drop(columns="fraud").head(4)
        rows.loc[rows.index[1], "merchant"] = None
        records = json.loads(rows.to_json(orient="records"))
        status, out = post("invocations", {"dataframe_records": records})
        assert status == 200, out
        answers = out["predictions"]
        assert [sorted(a) for a in answers] == [["anomaly_score", "is_anomaly"]] * 4, answers
        status, low = post("invocations", {"dataframe_records": records, "params": {"threshold": 0.0}})
        assert status == 200 and all(a["is_anomaly"] for a in low["predictions"]), low
        assert [a["anomaly_score"] for a in low["predictions"]] == [a["anomaly_score"] for a in answers]
        status, out = post("explain", {"dataframe_records": records[:2]})
        assert status == 200, out
        for row in out["explanations"]:
            assert sorted(row["attributions"]) == sorted(rows.columns), row
            gap = sum(row["attributions"].values()) - (row["score"] - row["baseline_score"])
            assert abs(gap - row["convergence_delta"]) < 1e-3 * max(1.0, abs(row["score"])), row
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
