"""The anomaly scorer as MLflow loads it (no Ray): an autoencoder's reconstruction error logged
with log_anomaly_scorer, its signature (the `threshold` param), its answers (the score and
the verdict at the fitted or the requested threshold), and what the platform's other readers
of a model's answer make of it: monitoring's values, batch scoring's columns, Integrated
Gradients of the score."""

from __future__ import annotations

import types

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.types import ColSpec, Schema, TensorSpec

from raymaas.explain.attribution import INTEGRATED_GRADIENTS, IntegratedGradients, explainer_for
from raymaas.modelcode.pyfunc import THRESHOLD, TorchAnomalyScorer, log_anomaly_scorer

COLUMNS = ["a", "b", "c", "d"]


class Reconstruction(torch.nn.Module):
    """A linear autoencoder that projects a row on a fixed plane and back: the mean squared
    error of that reconstruction is the row's distance from the plane, the anomaly score."""

    def __init__(self, basis: np.ndarray):
        super().__init__()
        q = torch.linalg.qr(torch.as_tensor(basis, dtype=torch.float32))[0]  # orthonormal columns
        self.register_buffer("w", q @ q.T)

    def forward(self, x):
        return ((x @ self.w - x) ** 2).mean(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store of the module's own, its artifacts beside it (not in the working
    directory's mlruns/); MLflow's URI put back afterwards."""
    saved = mlflow.get_tracking_uri()
    folder = tmp_path_factory.mktemp("anomaly")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.create_experiment("test-anomaly", artifact_location=(folder / "artifacts").as_uri())
    mlflow.set_experiment("test-anomaly")
    yield
    mlflow.set_tracking_uri(saved)


@pytest.fixture(scope="module")
def data():
    """Normal rows near the plane of two directions, the fitted threshold (their scores' 99th
    percentile), and rows of which the last four leave the plane."""
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(4, 2))
    module = Reconstruction(basis).eval()
    normal = (rng.normal(size=(300, 2)) @ basis.T + 0.05 * rng.normal(size=(300, 4))).astype(np.float32)
    with torch.no_grad():
        threshold = float(np.quantile(module(torch.from_numpy(normal)).numpy(), 0.99))
    off = rng.normal(size=(4, 4)) * 3.0
    rows = np.concatenate([normal[:6], off]).astype(np.float32)
    return module, normal, threshold, rows


def _scores(module, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(rows)).numpy()[:, 0].astype(np.float64)


@pytest.fixture(scope="module")
def columns_model(store, data):
    module, normal, threshold, _ = data
    with mlflow.start_run():
        info = log_anomaly_scorer(module, normal[:8], threshold, COLUMNS, baseline=normal.mean(axis=0))
    return mlflow.pyfunc.load_model(info.model_uri)


@pytest.fixture(scope="module")
def tensor_model(store, data):
    module, normal, threshold, _ = data
    with mlflow.start_run():
        info = log_anomaly_scorer(module, normal[:8], threshold, baseline=normal.mean(axis=0))
    return mlflow.pyfunc.load_model(info.model_uri)


def test_the_signature_declares_the_columns_both_outputs_and_the_threshold(columns_model, data):
    threshold = data[2]
    signature = columns_model.metadata.signature
    assert signature.inputs == Schema([ColSpec("double", c) for c in COLUMNS])
    assert signature.outputs == Schema([ColSpec("double", "anomaly_score"), ColSpec("boolean", "is_anomaly")])
    (param,) = signature.params.params
    assert (param.name, param.dtype.name, param.default) == (THRESHOLD, "double", pytest.approx(threshold))
    assert isinstance(columns_model.unwrap_python_model(), TorchAnomalyScorer)


def test_scores_are_the_modules_and_the_verdict_is_at_the_fitted_threshold(columns_model, data):
    module, _, threshold, rows = data
    result = columns_model.predict(pd.DataFrame(rows.astype(np.float64), columns=COLUMNS))
    assert list(result.columns) == ["anomaly_score", "is_anomaly"]
    assert result["anomaly_score"].dtype == np.float64 and result["is_anomaly"].dtype == bool
    scores = _scores(module, rows)
    np.testing.assert_allclose(result["anomaly_score"], scores, rtol=1e-6)
    assert (result["anomaly_score"] >= 0).all()
    np.testing.assert_array_equal(result["is_anomaly"], scores > threshold)
    assert result["is_anomaly"].iloc[-4:].all()  # the rows off the plane
    assert not result["is_anomaly"].iloc[:6].all()


def test_the_threshold_param_overrides_the_fitted_one(columns_model, data):
    module, _, threshold, rows = data
    frame = pd.DataFrame(rows, columns=COLUMNS).astype(np.float64)
    scores = _scores(module, rows)
    middle = float(np.median(scores))
    result = columns_model.predict(frame, params={THRESHOLD: middle})
    np.testing.assert_array_equal(result["is_anomaly"], scores > middle)
    assert result["is_anomaly"].sum() == len(rows) // 2
    assert not columns_model.predict(frame, params={THRESHOLD: 1e9})["is_anomaly"].any()
    np.testing.assert_allclose(result["anomaly_score"], scores, rtol=1e-6)  # the score is the model's alone
    assert (columns_model.predict(frame, params={})["is_anomaly"] == (scores > threshold)).all()


def test_a_tensor_signature_scores_arrays(tensor_model, data):
    module, _, threshold, rows = data
    signature = tensor_model.metadata.signature
    assert signature.inputs == Schema([TensorSpec(np.dtype(np.float32), (-1, 4))])
    assert signature.params.params[0].name == THRESHOLD
    result = tensor_model.predict(rows)
    np.testing.assert_allclose(result["anomaly_score"], _scores(module, rows), rtol=1e-6)
    np.testing.assert_array_equal(result["is_anomaly"], _scores(module, rows) > threshold)
    assert tensor_model.predict(rows, params={THRESHOLD: 0.0})["is_anomaly"].all()


def test_monitoring_watches_the_score(columns_model, data):
    from raymaas.monitoring.window import prediction_values

    rows = data[3]
    result = columns_model.predict(pd.DataFrame(rows, columns=COLUMNS).astype(np.float64))
    values = prediction_values(result)
    assert values == result["anomaly_score"].tolist()
    assert all(isinstance(v, float) for v in values)


def test_batch_scoring_writes_the_score_and_the_verdict(columns_model, data):
    import pyarrow as pa

    from raymaas.batch.plan import Features
    from raymaas.batch.scorer import ERROR_COLUMN, as_columns, score_table

    module, _, threshold, rows = data
    result = columns_model.predict(pd.DataFrame(rows, columns=COLUMNS).astype(np.float64))
    assert set(as_columns(result, len(rows))) == {"anomaly_score", "is_anomaly"}

    values = {c: pa.array(rows[:, j].astype(np.float64)) for j, c in enumerate(COLUMNS)}
    values["c"] = pa.array(rows[:, 2].astype(np.float64), mask=np.arange(len(rows)) == 2)  # a null: row 2 rejected
    batch = pa.table({"id": np.arange(len(rows)), **values, "path": ["/in/f.parquet"] * len(rows)})
    features = Features("columns", tuple(COLUMNS), ("float64",) * 4)
    out = score_table(batch, columns_model.predict, features, ["/in/f.parquet"], ["id"], "prediction")
    assert {"anomaly_score", "is_anomaly"} <= set(out.column_names)
    assert "prediction" not in out.column_names
    good = np.array([i != 2 for i in range(len(rows))])
    scores = np.asarray(out.column("anomaly_score").to_pylist(), dtype=object)
    assert scores[2] is None and out.column(ERROR_COLUMN)[2].as_py() is not None
    np.testing.assert_allclose(scores[good].astype(float), _scores(module, rows)[good], rtol=1e-6)
    assert out.column("is_anomaly").type == pa.bool_()
    assert out.column("is_anomaly").to_pylist() == [
        None if not g else bool(s > threshold) for g, s in zip(good, _scores(module, rows))
    ]


def test_integrated_gradients_explain_the_score(columns_model, data):
    module, _, _, rows = data
    explainer = explainer_for(columns_model)
    assert isinstance(explainer, IntegratedGradients) and explainer.classifier is False
    frame = pd.DataFrame(rows, columns=COLUMNS).astype(np.float64)
    explanation = explainer.explain(frame, n_steps=64)
    assert explanation.method == INTEGRATED_GRADIENTS
    assert explanation.baseline == "the training split's mean"
    assert explanation.attributions.shape == (len(rows), 4)
    scores = _scores(module, rows)
    np.testing.assert_allclose(explanation.predictions, scores, rtol=1e-5)  # the answer explained is the score
    np.testing.assert_allclose(explanation.scores, scores, rtol=1e-5)
    assert explanation.targets == [0] * len(rows)
    # completeness: a row's attributions sum to its score less the baseline's, within the delta
    gap = explanation.scores - explanation.baseline_scores
    np.testing.assert_allclose(explanation.attributions.sum(axis=1) - gap, explanation.deltas, atol=1e-4)
    assert np.all(np.abs(explanation.deltas) < 0.01 * np.maximum(1.0, np.abs(gap)))
    row = explanation.to_json()["explanations"][-1]
    assert list(row["attributions"]) == COLUMNS and row["prediction"] == pytest.approx(scores[-1], rel=1e-5)


def test_log_as_anomaly_scorer_logs_the_trained_model(store, data):
    from raymaas.tracking.publish import log_as_anomaly_scorer

    module, normal, threshold, rows = data
    trained = types.SimpleNamespace(
        module=module,
        example=normal[:8],
        feature_columns=COLUMNS,
        profile=None,
        baseline=normal.mean(axis=0),
        column_types={"a": "double"},
        encoding=None,
    )
    with mlflow.start_run():
        info = log_as_anomaly_scorer(threshold * 2)(trained)
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert model.metadata.signature.params.params[0].default == pytest.approx(threshold * 2)
    result = model.predict(pd.DataFrame(rows, columns=COLUMNS).astype(np.float64))
    np.testing.assert_array_equal(result["is_anomaly"], _scores(module, rows) > threshold * 2)
    assert model.unwrap_python_model().explain_baseline.shape == (4,)
