"""Explanations on their own (no Ray): Integrated Gradients of the platform's torch models as
MLflow loads them, Kernel SHAP of a scikit-learn model registered by hand, and the feature
importance logged at training time. The served side (POST /models/NAME/explain) is in
test_serve.py."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from raymaas.explain.attribution import (
    INTEGRATED_GRADIENTS,
    KERNEL_SHAP,
    ExplainError,
    explainer_for,
    global_importance,
    profile_background,
)
from raymaas.modelcode.pyfunc import log_classifier, log_regressor
from raymaas.monitoring.profile import bin_index, build_profile
from raymaas.runtime.driver import TrainedModel


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A file store of the module's own; MLflow's URI put back afterwards."""
    saved = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path_factory.mktemp('explain') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("test-explain")
    yield uri
    mlflow.set_tracking_uri(saved)


@pytest.fixture(scope="module")
def digits(store):
    """An MLP trained on the bundled digits for a few hundred full-batch steps (about 95%
    validation accuracy), logged as the platform logs it: a tensor signature, the profile,
    the training mean as the explanation baseline."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, y_train, x_val = x[:1400], y[:1400], x[1400:]
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(module.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(xt), yt).backward()
        opt.step()
    with mlflow.start_run():
        info = log_classifier(
            module,
            x_train[:8],
            profile=build_profile(x_train),
            baseline=x_train.mean(axis=0),
        )
    return mlflow.pyfunc.load_model(info.model_uri), x_val, y[1400:]


def test_integrated_gradients_of_the_digits_model_are_complete(digits):
    model, x_val, y_val = digits
    rows = x_val[:12]
    explanation = explainer_for(model).explain(rows, n_steps=64)
    assert explanation.method == INTEGRATED_GRADIENTS
    assert explanation.baseline == "the training split's mean"
    # the predicted class is explained, and it is what the served model answers
    assert explanation.predictions == model.predict(rows).tolist() == explanation.targets
    assert (np.asarray(explanation.predictions) == y_val[:12]).mean() > 0.8
    assert explanation.attributions.shape == (12, 64)
    # completeness: a row's attributions sum to f(x) - f(baseline), within Captum's delta
    sums = explanation.attributions.sum(axis=1)
    gap = explanation.scores - explanation.baseline_scores
    assert np.allclose(sums - gap, explanation.deltas, atol=1e-4)
    assert np.all(np.abs(explanation.deltas) < 0.05 * np.maximum(1.0, np.abs(gap)))
    # the answer a client gets: one list of 64 per row, and the baseline's own prediction
    answer = explanation.to_json()
    assert len(answer["explanations"][0]["attributions"]) == 64
    assert answer["baseline_prediction"] in range(10)


def test_a_named_target_class_and_a_wrong_one(digits):
    model, x_val, _ = digits
    explainer = explainer_for(model)
    explanation = explainer.explain(x_val[:3], target=7, n_steps=32)
    assert explanation.targets == [7, 7, 7]
    with pytest.raises(ExplainError, match=r"params.target 12 is not one of this model's class ids 0..9"):
        explainer.explain(x_val[:3], target=12)


def test_regression_with_columns_is_exact_for_a_linear_model(store):
    """For a linear model, IG's attribution of feature i is w_i (x_i - baseline_i) exactly."""
    rng = np.random.default_rng(1)
    columns = ["rooms", "age", "distance"]
    x = rng.normal(size=(200, 3)).astype(np.float32)
    module = torch.nn.Linear(3, 1)
    with torch.no_grad():
        module.weight[:] = torch.tensor([[2.0, -0.5, 0.0]])
        module.bias[:] = 1.0
    baseline = x.mean(axis=0)
    with mlflow.start_run():
        info = log_regressor(module, x[:8], 1, columns, baseline=baseline)
    model = mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame(x[:5], columns=columns)
    explanation = explainer_for(model).explain(frame, n_steps=16)
    expected = np.array([2.0, -0.5, 0.0]) * (x[:5] - baseline)
    assert np.allclose(explanation.attributions, expected, atol=1e-5)
    assert np.allclose(explanation.predictions, model.predict(frame), atol=1e-6)
    row = explanation.to_json()["explanations"][0]
    assert list(row["attributions"]) == columns  # named by the signature's columns
    assert row["target"] == 0 and abs(row["score"] - row["baseline_score"] - sum(row["attributions"].values())) < 1e-4


def test_a_model_logged_without_baseline_falls_back_to_the_profiles_mean(store):
    torch.manual_seed(2)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = np.random.default_rng(2).normal(loc=5.0, size=(300, 4)).astype(np.float32)
    with mlflow.start_run():
        with_profile = log_classifier(module, x[:8], profile=build_profile(x)).model_uri
        bare = log_classifier(module, x[:8]).model_uri
    explained = explainer_for(mlflow.pyfunc.load_model(with_profile)).explain(x[:2], n_steps=8)
    assert explained.baseline == "the training split's mean (reference profile)"
    assert explainer_for(mlflow.pyfunc.load_model(bare)).explain(x[:2], n_steps=8).baseline.startswith("zeros")


@pytest.fixture(scope="module")
def iris_model(store):
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris(as_frame=True)
    frame = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    clf = LogisticRegression(max_iter=500).fit(frame, iris.target)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(clf, name="model", input_example=frame.head(3))
    return mlflow.pyfunc.load_model(info.model_uri), frame, clf


def test_kernel_shap_of_a_model_registered_by_hand(iris_model):
    model, frame, clf = iris_model
    with pytest.raises(ExplainError, match="no background data"):
        explainer_for(model)
    profile = build_profile(frame)
    explainer = explainer_for(model, profile)
    rows = frame.iloc[[0, 60, 120]].reset_index(drop=True)
    explanation = explainer.explain(rows, nsamples=100)
    assert explanation.method == KERNEL_SHAP
    assert explanation.predictions == [0, 1, 2] == explanation.targets
    # efficiency: attributions + the background's mean probability = the row's probability
    proba = clf.predict_proba(rows)[np.arange(3), explanation.targets]
    assert np.allclose(explanation.scores, proba)
    assert np.allclose(explanation.attributions.sum(axis=1) + explanation.baseline_scores, proba, atol=1e-6)
    # petal measurements decide iris species; the sepal width hardly does
    table = global_importance(explanation)
    assert table["data"][0][0] in ("petal_length", "petal_width")
    assert table["data"][-1][0] in ("sepal_width", "sepal_length")
    # a named class, and rows of a background file instead of the profile
    other = explainer_for(model, background=frame.sample(50, random_state=0), background_source="rows")
    assert other.explain(rows, target=2, nsamples=60).targets == [2, 2, 2]
    with pytest.raises(ExplainError, match=r"params.target 'setosa' is not a class"):
        other.explain(rows, target="setosa")


def test_profile_background_follows_the_training_bins():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(10, 2, 5000), "b": rng.exponential(1.0, 5000)})
    profile = build_profile(frame)
    background = profile_background(profile, ["a", "b"], n_rows=2000)
    assert background.shape == (2000, 2)
    for j, feature in enumerate(profile["features"]):
        # as many background rows in each training bin as training rows, inside the training range
        edges = np.asarray(feature["edges"])
        fractions = np.bincount(bin_index(background[:, j], edges), minlength=len(edges) + 2) / len(background)
        assert np.abs(fractions - feature["reference"]).max() < 0.03, feature["name"]
        assert fractions[0] == fractions[len(edges)] == 0
    assert abs(background[:, 0].mean() - 10) < 0.3 and abs(np.median(background[:, 1]) - np.log(2)) < 0.1
    with pytest.raises(ExplainError, match=r"no features \['c'\]"):
        profile_background(profile, ["a", "c"])


def test_training_time_feature_importance_is_logged(store, digits):
    """publish's log_feature_importance: a table and a bar chart in the run's artifacts."""

    from raymaas.tracking import get_client
    from raymaas.tracking.publish import log_feature_importance

    model, x_val, _ = digits
    module = model.unwrap_python_model()._module
    trained = TrainedModel(
        module=module,
        example=x_val[:8],
        gate_value=0.0,
        summary="",
        baseline=x_val.mean(axis=0),
        explain_rows=x_val[:64],
    )
    client = get_client(store)
    with mlflow.start_run() as run:
        pass
    table = log_feature_importance(client, run.info.run_id, "digits", trained, n_steps=16)
    assert table["columns"] == ["feature", "mean_abs_attribution"] and len(table["data"]) == 64
    values = [v for _, v in table["data"]]
    assert values == sorted(values, reverse=True) and values[0] > 0
    names = {f.path for f in client.list_artifacts(run.info.run_id)} | {
        f.path for f in client.list_artifacts(run.info.run_id, "plots")
    }
    assert {"feature_importance.json", "plots/feature_importance.png"} <= names
