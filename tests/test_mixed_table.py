"""A table as real ones arrive (raymaas.supervised.data.make_loans: numbers with holes, an
integer category, text categories with nulls and with many values, a boolean) trained by the
supervised job with data.impute, then taken as raw rows everywhere: in-process with MLflow,
over HTTP (an unseen category and nulls answered; a model without impute refuses a null with
a 422 naming the column), /explain per original column, and `raymaas predict`."""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request

import pandas as pd
import pytest

from conftest import DEBUG_SPEC, free_port, run_job

pytestmark = pytest.mark.slow

NAME = "test-loans"
STRICT = "test-loans-strict"  # the same columns, without impute: a served null is refused
FEATURES = ["income", "debt_ratio", "age", "term_months", "region", "employer", "homeowner"]


@pytest.fixture(scope="module")
def loans(tmp_path_factory):
    from raymaas.supervised.data import make_loans

    folder = tmp_path_factory.mktemp("loans")
    frame = make_loans(3000, seed=1)
    frame.to_parquet(folder / "loans.parquet", index=False)
    return folder / "loans.parquet", frame


@pytest.fixture(scope="module")
def trained(loans, ray_head, mlflow_client):
    path, _ = loans
    proc = run_job(
        [
            "jobs.supervised",
            str(DEBUG_SPEC),
            "--set",
            f"name={NAME}",
            "--set",
            f"data.source={path}",
            "--set",
            "data.label_column=default",
            "--set",
            "data.impute=median",
            "--set",
            "data.categorical_columns=[term_months]",
            "--set",
            "train_loop_config.epochs=6",
        ],
        env=ray_head.env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("raymaas: run "))
    return mlflow_client.get_run(line.split()[2])


def _odd_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Three rows no training row looks like: an unseen region and employer, nulls in the
    imputed numbers and in a text category."""
    rows = frame[FEATURES].head(3).copy()
    rows.loc[rows.index[0], "region"] = "atlantis"
    rows.loc[rows.index[1], ["income", "debt_ratio", "region"]] = [None, None, None]
    rows.loc[rows.index[2], "employer"] = "employer-99"
    return rows


def test_the_job_trains_on_categories_and_imputed_numbers(trained, loans):
    import mlflow

    run = trained
    assert run.info.status == "FINISHED"
    # the majority class is 2 rows in 3: the model has learned from the columns
    assert run.data.metrics["val_accuracy"] > 0.72, run.data.metrics
    assert run.data.tags["raymaas.categorical_columns"] == "term_months (4), region (6), employer (60), homeowner (2)"
    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    types = {c["name"]: c["type"] for c in info.signature.inputs.to_dict()}
    assert types == {
        "income": "double",
        "debt_ratio": "double",
        "age": "long",
        "term_months": "long",
        "region": "string",
        "employer": "string",
        "homeowner": "boolean",
    }
    # the logged feature importance names the original columns, not one-hot slots
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/feature_importance.json")
    assert sorted(name for name, _ in table["data"]) == sorted(FEATURES)


def test_the_registered_model_takes_the_frame_pandas_reads(trained, loans):
    import mlflow

    path, _ = loans
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame = pd.read_parquet(path)
    predictions = model.predict(frame.drop(columns="default"))
    assert set(predictions) <= {"yes", "no"} and len(predictions) == len(frame)
    assert (predictions == frame["default"].to_numpy()).mean() > 0.72
    odd = model.predict(_odd_rows(frame))
    assert set(odd) <= {"yes", "no"} and len(odd) == 3


@pytest.fixture(scope="module")
def endpoint(trained, ray_head, mlflow_client, loans):
    """Both models on Serve, on the session's head."""
    import mlflow
    import ray
    from ray import serve

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.modelcode.tabular import TabularInput, fit_encoding
    from raymaas.runtime.cluster import connect
    from raymaas.serving import ServeSpec, build_model_app
    from raymaas.tracking import ensure_experiment

    # the strict model: the same columns, logged by hand without imputation (no second job)
    _, frame = loans
    encoding = fit_encoding(frame, FEATURES, categorical=["term_months"], impute="none")
    import torch

    layer = TabularInput(encoding)
    module = torch.nn.Sequential(layer, torch.nn.Linear(layer.width, 2))
    example = encoding.encode(frame[FEATURES].dropna().head(8))
    mlflow.set_tracking_uri(ray_head.tracking_uri)
    with mlflow.start_run(experiment_id=ensure_experiment(mlflow_client, "test-mixed-table")):
        info = log_classifier(
            module,
            example,
            FEATURES,
            classes=["no", "yes"],
            column_types={c.name: c.dtype for c in encoding.columns},
            encoding=encoding.to_dict(),
        )
    version = mlflow.register_model(info.model_uri, STRICT).version
    mlflow_client.set_registered_model_alias(STRICT, "champion", version)

    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAYMAAS_HOME")}
    os.environ.update({k: ray_head.env[k] for k in saved})
    connect(ray_head.address)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spec = ServeSpec.model_validate(
        {
            "models": [{"name": NAME}, {"name": STRICT}],
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "ray_actor_options": {"num_cpus": 0.25},
            "monitoring": {"push_interval_s": 0.5},
        }
    )
    serve.run(build_model_app(spec), name="loans", route_prefix=spec.route_prefix)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _post(url: str, body: bytes, content_type: str = "application/json"):
    req = urllib.request.Request(url, data=body, headers={"content-type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _records(rows: pd.DataFrame) -> list[dict]:
    """Rows as a JSON client writes them: null for a missing value."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in json.loads(rows.to_json(orient="records"))
    ]


def test_raw_rows_with_unseen_categories_and_nulls_are_answered_over_http(endpoint, loans):
    import mlflow

    _, frame = loans
    odd = _odd_rows(frame)
    expected = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(odd).tolist()
    url = f"{endpoint}/models/{NAME}/invocations"
    records = _records(odd)
    assert records[1]["income"] is None and records[1]["region"] is None
    status, out = _post(url, json.dumps({"dataframe_records": records}).encode())
    assert status == 200, out
    assert out["predictions"] == expected
    split = {"columns": FEATURES, "data": [[r[c] for c in FEATURES] for r in records]}
    status, out = _post(url, json.dumps({"dataframe_split": split}).encode())
    assert status == 200 and out["predictions"] == expected, out
    status, out = _post(url, odd.to_csv(index=False).encode(), "text/csv")
    assert status == 200 and out["predictions"] == expected, out


def test_a_model_without_impute_refuses_a_served_null_naming_the_column(endpoint, loans):
    _, frame = loans
    records = _records(frame[FEATURES].dropna().head(2))
    url = f"{endpoint}/models/{STRICT}/invocations"
    status, out = _post(url, json.dumps({"dataframe_records": records}).encode())
    assert status == 200, out
    records[1]["debt_ratio"] = None
    records[1]["region"] = None  # a null category is the unknown slot: not refused
    status, out = _post(url, json.dumps({"dataframe_records": records}).encode())
    assert status == 422, out
    assert "'debt_ratio' (1 row)" in out["message"] and "region" not in out["message"], out


def test_explanations_are_per_original_column_and_complete(endpoint, loans):
    _, frame = loans
    records = _records(_odd_rows(frame))
    status, out = _post(f"{endpoint}/models/{NAME}/explain", json.dumps({"dataframe_records": records}).encode())
    assert status == 200, out
    for row in out["explanations"]:
        assert list(row["attributions"]) == FEATURES
        gap = sum(row["attributions"].values()) - (row["score"] - row["baseline_score"])
        assert abs(row["convergence_delta"]) < 0.05 * max(1.0, abs(row["score"] - row["baseline_score"])), row
        assert abs(gap - row["convergence_delta"]) < 1e-3, row


def test_a_categorical_columns_drift_is_its_category_shares(endpoint, loans):
    """The reference profile logged by the job bins region by category; served rows are binned
    the same way: the training shares flag nothing, a flood of an unseen region is flagged by
    PSI and chi-squared."""
    from conftest import wait_for

    _, frame = loans
    url = f"{endpoint}/models/{NAME}"

    def monitor() -> dict:
        with urllib.request.urlopen(f"{url}/monitor", timeout=60) as resp:
            return json.loads(resp.read())

    def send(rows: pd.DataFrame) -> None:
        for start in range(0, len(rows), 100):
            body = {"dataframe_records": _records(rows.iloc[start : start + 100])}
            status, out = _post(f"{url}/invocations", json.dumps(body).encode())
            assert status == 200, out

    # 900 rows: PSI over employer's 62 bins has sampling noise of about bins / rows (0.2 at 300)
    before = monitor()["window"]["rows"]
    send(frame[FEATURES].iloc[:900])
    report = wait_for(
        lambda: (r := monitor())["window"]["rows"] >= min(1000, before + 900) and r, 60, "900 rows in the window"
    )
    drift = report["drift"]
    assert drift.get("reason") is None and "chi2_pvalue" in drift["features"]["region"], drift
    assert "ks_pvalue" in drift["features"]["income"] and drift["flagged"] == [], drift
    send(frame[FEATURES].iloc[900:1500].assign(region="atlantis"))
    report = wait_for(lambda: "region" in monitor()["drift"]["flagged"] and monitor(), 60, "region flagged")
    region = report["drift"]["features"]["region"]
    assert region["psi"] > 1 and region["chi2_pvalue"] < 1e-6, region
    assert "income" not in report["drift"]["flagged"]


def test_batch_scoring_takes_the_raw_table(trained, loans, ray_head, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    path, frame = loans
    out = tmp_path / "scored"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from raymaas.cli.predict import main; sys.exit(main(sys.argv[1:]))",
            f"{NAME}@champion",
            str(path),
            str(out),
            "--passthrough",
            "default",
        ],
        env=ray_head.env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    scored = pd.read_parquet(out)
    assert len(scored) == len(frame)  # rows with nulls and unseen values scored, none rejected
    assert set(scored["prediction"]) <= {"yes", "no"}
    assert (scored["prediction"] == scored["default"]).mean() > 0.72
