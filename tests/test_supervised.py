"""The supervised job end to end on a real Ray head and a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import DEBUG_SPEC, REPO, run_job

pytestmark = pytest.mark.slow


def _outcome_line(stdout: str, prefix: str = "raymaas: run ") -> str:
    return next(line for line in stdout.splitlines() if line.startswith(prefix))


def _run_id(stdout: str) -> str:
    return _outcome_line(stdout).split()[2]


@pytest.fixture(scope="module")
def trained_digits(ray_head, mlflow_client):
    """A 2-worker digits MLP trained through the job entrypoint."""
    proc = run_job(
        [
            "jobs.supervised",
            str(REPO / "jobs/specs/digits_mlp.yaml"),
            "--set",
            "name=test-digits",
            "--set",
            "train_loop_config.epochs=12",
        ],
        env=ray_head.env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _run_id(proc.stdout), proc


def test_two_workers_reach_95_percent(trained_digits, mlflow_client):
    run_id, proc = trained_digits
    # the job's output is its own lines: no MLflow progress bars, no advice about type hints
    for noise in ("Downloading artifacts", "Add type hints to the `predict` method"):
        assert noise not in proc.stdout + proc.stderr, noise
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_accuracy"] >= 0.95
    assert run.data.tags["num_workers"] == "2"
    assert run.data.tags["device"] == "cpu"
    assert run.data.params["scaling_config.num_workers"] == "2"
    # every epoch logged exactly once, with every per-epoch metric
    for key in ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"):
        steps = [m.step for m in mlflow_client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(12)), key
    artifacts = {a.path for a in mlflow_client.list_artifacts(run_id)}
    assert {"spec.yaml", "feature_importance.json"} <= artifacts
    plots = {a.path for a in mlflow_client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/loss_curve.png", "plots/feature_importance.png"}
    # integrated gradients over validation digits: the border pixels (always blank) matter least
    import mlflow

    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/feature_importance.json")
    importance = dict(table["data"])
    assert len(importance) == 64 and table["data"][0][1] > 0
    assert importance["input[0]"] < table["data"][10][1]  # pixel (0,0) is blank in every digit


def test_registered_model_has_signature_aliases_and_decision(trained_digits, mlflow_client):
    run_id, _ = trained_digits
    (found,) = mlflow_client.search_model_versions(f"name='test-digits' and run_id='{run_id}'")
    mv = mlflow_client.get_model_version("test-digits", found.version)  # search omits aliases
    assert "candidate" in mv.aliases
    assert mv.tags["raymaas.promotion"] == "champion"  # the first version becomes champion
    assert "first champion" in mv.tags["raymaas.promotion_reason"]
    champion = mlflow_client.get_model_version_by_alias("test-digits", "champion")
    assert champion.version == mv.version
    import mlflow

    info = mlflow.models.get_model_info("models:/test-digits@champion")
    inputs = info.signature.inputs.to_dict()
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 64)}}]
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["dtype"] == "int64"


def test_model_loads_without_ray_and_keeps_accuracy(trained_digits, ray_head):
    """A fresh process that cannot import Ray loads the model and scores the same data."""
    run_id, _ = trained_digits
    script = textwrap.dedent(
        f"""
        import builtins, json, sys
        real_import = builtins.__import__
        def guarded(name, *a, **k):
            if name == "ray" or name.startswith("ray."):
                raise ImportError("ray must not be imported to serve a registered model")
            return real_import(name, *a, **k)
        builtins.__import__ = guarded
        import mlflow, numpy as np
        from sklearn.datasets import load_digits
        mlflow.set_tracking_uri({ray_head.tracking_uri!r})
        model = mlflow.pyfunc.load_model("models:/test-digits@champion")
        bunch = load_digits()
        order = np.random.default_rng(0).permutation(len(bunch.data))
        val = order[: int(round(len(order) * 0.2))]
        pred = model.predict(bunch.data[val].astype(np.float32))
        single = model.predict(bunch.data[val[:1]].astype(np.float32))
        print(json.dumps({{"accuracy": float((pred == bunch.target[val]).mean()),
                          "dtype": str(pred.dtype), "single": int(single[0]), "first": int(pred[0]),
                          "ray_loaded": "ray" in sys.modules}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ray_loaded"] is False
    assert out["dtype"] == "int64"
    assert out["single"] == out["first"]
    logged = _champion_accuracy(ray_head)
    assert out["accuracy"] == pytest.approx(logged, abs=1e-9)
    assert out["accuracy"] >= 0.95


def _champion_accuracy(ray_head) -> float:
    from raymaas.tracking import get_client

    client = get_client(ray_head.tracking_uri)
    mv = client.get_model_version_by_alias("test-digits", "champion")
    return float(mv.tags["raymaas.gate_value"])


def test_second_version_is_gated_against_champion(trained_digits, ray_head, mlflow_client):
    """A worse model becomes a candidate only; the reason is recorded on the version."""
    proc = run_job(
        [
            "jobs.supervised",
            str(DEBUG_SPEC),
            "--set",
            "name=test-digits",
            "--set",
            "train_loop_config.epochs=1",
            "--set",
            "train_loop_config.lr=0.0005",
        ],
        env=ray_head.env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_id = _run_id(proc.stdout)
    (found,) = mlflow_client.search_model_versions(f"name='test-digits' and run_id='{run_id}'")
    mv = mlflow_client.get_model_version("test-digits", found.version)
    assert "candidate" in mv.aliases and "champion" not in mv.aliases
    assert mv.tags["raymaas.promotion"] == "kept candidate"
    assert "does not beat champion" in mv.tags["raymaas.promotion_reason"]
    champion = mlflow_client.get_model_version_by_alias("test-digits", "champion")
    assert champion.version != mv.version


def test_cnn_spec_trains(ray_head, mlflow_client):
    proc = run_job(
        [
            "jobs.supervised",
            str(REPO / "jobs/specs/digits_cnn.yaml"),
            "--set",
            "name=test-cnn",
            "--set",
            "train_loop_config.epochs=3",
        ],
        env=ray_head.env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = mlflow_client.get_run(_run_id(proc.stdout))
    assert run.data.metrics["val_accuracy"] > 0.8
    assert np.isfinite(run.data.metrics["train_loss"])


# A factory as written before input_shape and n_outputs: still given n_features and n_classes.
USER_PACKAGE = """
import torch


def tiny_mlp(n_features, n_classes, width=16):
    return torch.nn.Sequential(torch.nn.Linear(n_features, width), torch.nn.ReLU(), torch.nn.Linear(width, n_classes))
"""


def test_parquet_folder_and_user_model_factory(tmp_path, ray_head, mlflow_client):
    """Rows from a Parquet folder streamed by Ray Data, a model from the user's own package
    (shipped to the workers), and a registered model that takes named columns."""
    import pandas as pd

    from raymaas.supervised.data import make_synthetic

    x, y = make_synthetic(3000, 16, 3, seed=1)  # a linear model scores about 0.9 here
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(16)]).assign(species=y)
    folder = tmp_path / "rows"
    folder.mkdir()
    for i in range(3):
        frame.iloc[i * 1000 : (i + 1) * 1000].to_parquet(folder / f"part-{i}.parquet")
    package = tmp_path / "code" / "acme_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(USER_PACKAGE)

    env = ray_head.job_env(PYTHONPATH=str(tmp_path / "code"))
    proc = run_job(
        [
            "jobs.supervised",
            str(DEBUG_SPEC),
            "--set",
            "name=test-parquet",
            "--set",
            f"data.source={folder}",
            "--set",
            "data.label_column=species",
            "--set",  # the whole section: the debug spec's hidden_sizes is not a factory's field
            "model={name: acme_models:tiny_mlp, options: {width: 32}}",
            "--set",
            "train_loop_config.epochs=4",
        ],
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = mlflow_client.get_run(_run_id(proc.stdout))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_accuracy"] > 0.8
    import mlflow

    model = mlflow.pyfunc.load_model("models:/test-parquet@champion")
    names = [c["name"] for c in model.metadata.signature.inputs.to_dict()]
    assert names == [f"f{i}" for i in range(16)]
    # named columns in any order, as dataframe_records clients send them
    shuffled = frame[list(reversed(names))].head(50)
    pred = model.predict(shuffled)
    assert pred.dtype == np.int64 and pred.shape == (50,)
    assert (pred == frame["species"].head(50).to_numpy()).mean() > 0.7


def test_best_epoch_is_registered_and_early_stopping_ends_the_job(ray_head, mlflow_client):
    """The issue's case: an MLP on the diabetes table overfits after a dozen epochs. The version
    registered and gated is the best epoch's by val_rmse, and early stopping ends the job
    `patience` epochs after it. A single-output regression: an importance per feature, a
    [n] float32 signature, and a model that answers in the target's units."""
    import mlflow

    from raymaas.supervised.data import DataSpec, load_builtin

    patience = 5
    proc = run_job(
        [
            "jobs.supervised",
            str(REPO / "jobs/specs/diabetes_mlp.yaml"),
            "--set",
            "name=test-best-epoch",
            "--set",
            f"train_loop_config.early_stopping.patience={patience}",
        ],
        env=ray_head.env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_id = _run_id(proc.stdout)
    rmse = [m.value for m in sorted(mlflow_client.get_metric_history(run_id, "val_rmse"), key=lambda m: m.step)]
    best = int(np.argmin(rmse))
    # stopped `patience` epochs after the best, well before the spec's 60
    assert len(rmse) == best + 1 + patience < 60, rmse
    run = mlflow_client.get_run(run_id)
    assert run.data.tags["task"] == "regression"
    assert "val_accuracy" not in run.data.metrics
    assert run.data.tags["raymaas.stopped_early"] == f"after epoch {len(rmse)}"
    assert f"raymaas: stopped early after epoch {len(rmse)} of 60" in proc.stdout
    metrics = run.data.metrics
    assert metrics["best_epoch"] == best + 1
    assert metrics["best_val_rmse"] == pytest.approx(rmse[best])
    r2 = {m.step: m.value for m in mlflow_client.get_metric_history(run_id, "val_r2")}
    assert metrics["best_val_r2"] == pytest.approx(r2[best])  # every validation metric at that epoch
    assert metrics["best_val_r2"] > 0.3  # an MLP on this table: about 0.5
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/feature_importance.json")
    assert len(table["data"]) == 10 and all(v >= 0 for _, v in table["data"])  # one per feature
    (version,) = mlflow_client.search_model_versions(f"name='test-best-epoch' and run_id='{run_id}'")
    assert float(version.tags["raymaas.gate_value"]) == pytest.approx(rmse[best])
    assert f"val_rmse {rmse[best]:.4f} at epoch {best + 1}, the best of {len(rmse)}" in proc.stdout
    # the weights registered are that epoch's: the model scores its validation RMSE, not the last one's
    uri = f"models:/test-best-epoch/{version.version}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1,)}
    model = mlflow.pyfunc.load_model(uri)
    split = load_builtin(DataSpec(source="diabetes", validation_fraction=0.2), 0, "regression")
    pred = model.predict(split.x_val)
    assert pred.dtype == np.float32 and pred.shape == (len(split.x_val),)
    # the same model, in the same units
    assert float(np.sqrt(np.mean((pred - split.y_val[:, 0]) ** 2))) == pytest.approx(rmse[best], rel=1e-3)
    assert abs(pred.mean() - split.y_val.mean()) < 30  # not standardised: the target's mean is ~150
    assert rmse[-1] > rmse[best]


MULTI_OUTPUT_NOISE = np.array([20.0, 0.5])  # each target's noise, in its units


def _two_targets(n: int, seed: int):
    """Features, and two targets linear in them in units far apart (a price in the
    thousands, a temperature in the tens): the true values and the values plus noise."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 4)), columns=["f0", "f1", "f2", "f3"])
    true = pd.DataFrame(
        {
            "price_eur": 2000.0 + 300.0 * x.f0 - 150.0 * x.f1 + 50.0 * x.f2,
            "temperature_c": 20.0 + 2.0 * x.f1 + 3.0 * x.f3,
        }
    )
    noisy = true + rng.normal(size=true.shape) * MULTI_OUTPUT_NOISE
    return x, true, noisy


def test_multi_output_regression_trains_and_answers_each_target_in_its_units(tmp_path, ray_head, mlflow_client):
    """Two target columns of a Parquet file (data.label_column a list), trained with the
    diabetes debug spec (linear model, default gate): every epoch's losses and validation
    metrics, each output's in its own units beside the overall ones, the regression plots, a
    version gated on val_rmse at its best epoch, a [n, 2] float32 signature, and predictions of
    rows it never saw close to the true function of each target."""
    import mlflow

    x, _, noisy = _two_targets(1200, seed=0)
    path = tmp_path / "two-targets.parquet"
    x.join(noisy).to_parquet(path, index=False)
    proc = run_job(
        [
            "jobs.supervised",
            str(REPO / "jobs/specs/diabetes_debug.yaml"),
            "--set",
            "name=test-two-targets",
            "--set",
            f"data.source={path}",
            "--set",
            "data.label_column=[price_eur, temperature_c]",
        ],
        env=ray_head.env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    run_id = _run_id(proc.stdout)
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["task"] == "regression"
    metrics = run.data.metrics
    for key in (
        "train_loss",
        "val_loss",
        "val_rmse",
        "val_mae",
        "val_r2",
        "val_rmse/price_eur",
        "val_rmse/temperature_c",
        "val_mae/temperature_c",
    ):
        assert sorted(m.step for m in mlflow_client.get_metric_history(run_id, key)) == list(range(20)), key
    assert "val_accuracy" not in metrics
    # each output in its own units: its error about its noise, far from the other's
    for target, noise in zip(("price_eur", "temperature_c"), MULTI_OUTPUT_NOISE):
        assert 0.8 * noise < metrics[f"val_rmse/{target}"] < 1.5 * noise, (target, metrics)
        assert 0.6 * noise < metrics[f"val_mae/{target}"] < 1.2 * noise, (target, metrics)
        assert metrics[f"val_r2/{target}"] > 0.95, (target, metrics)
    # the overall ones are over both outputs together
    rmse = [metrics[f"val_rmse/{t}"] for t in ("price_eur", "temperature_c")]
    assert metrics["val_rmse"] == pytest.approx(np.sqrt(np.mean(np.square(rmse))), rel=1e-6)
    assert metrics["val_mae"] == pytest.approx((metrics["val_mae/price_eur"] + metrics["val_mae/temperature_c"]) / 2)
    assert metrics["val_r2"] == pytest.approx((metrics["val_r2/price_eur"] + metrics["val_r2/temperature_c"]) / 2)
    plots = {a.path for a in mlflow_client.list_artifacts(run_id, "plots")}
    assert plots == {
        "plots/loss_curve.png",
        "plots/predicted_vs_actual.png",
        "plots/residuals.png",
        "plots/feature_importance.png",
    }, plots
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/feature_importance.json")
    assert sorted(name for name, _ in table["data"]) == ["f0", "f1", "f2", "f3"]  # one per feature column
    assert all(v >= 0 for _, v in table["data"])

    # the spec names no gate: a regression's default, val_rmse, at the best epoch (not necessarily the last)
    (found,) = mlflow_client.search_model_versions(f"name='test-two-targets' and run_id='{run_id}'")
    assert found.tags["raymaas.gate_metric"] == "val_rmse"
    best_rmse = min(m.value for m in mlflow_client.get_metric_history(run_id, "val_rmse"))
    assert metrics["best_val_rmse"] == pytest.approx(best_rmse)
    assert float(found.tags["raymaas.gate_value"]) == pytest.approx(best_rmse)

    info = mlflow.models.get_model_info("models:/test-two-targets@champion")
    assert info.signature.outputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 2)}
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["f0", "f1", "f2", "f3"]
    # rows it never saw, answered in each target's units: close to the true function
    held_out, true, _ = _two_targets(300, seed=1)
    pred = mlflow.pyfunc.load_model("models:/test-two-targets@champion").predict(held_out)
    assert pred.dtype == np.float32 and pred.shape == (300, 2)
    error = np.sqrt(np.mean((pred - true.to_numpy()) ** 2, axis=0))
    assert np.all(error < 0.05 * true.std().to_numpy()), (error, true.std().to_numpy())


def test_named_classes_from_a_csv(tmp_path, ray_head, mlflow_client):
    """String labels with an imbalance, class_weight balanced: the model answers "spam" or
    "ham", and the run has the binary task's full metrics and the per-class table."""
    import mlflow
    import pandas as pd

    from raymaas.supervised.data import make_synthetic

    x, y = make_synthetic(1200, 8, 2, seed=3)
    keep = (y == 1) | (np.arange(len(y)) % 4 == 0)  # ham is 1 row in 4 of spam's
    x, y = x[keep], y[keep]
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)]).assign(kind=np.where(y == 1, "spam", "ham"))
    path = tmp_path / "mail.csv"
    frame.to_csv(path, index=False)
    proc = run_job(
        [
            "jobs.supervised",
            str(DEBUG_SPEC),
            "--set",
            "name=test-spam",
            "--set",
            f"data.source={path}",
            "--set",
            "data.label_column=kind",
            "--set",
            "train_loop_config.class_weight=balanced",
            "--set",
            "mlflow.gate_metric=val_f1_macro",
        ],
        env=ray_head.env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_id = _run_id(proc.stdout)
    run = mlflow_client.get_run(run_id)
    for key in (
        "val_accuracy",
        "val_precision_macro",
        "val_recall_macro",
        "val_f1_macro",
        "val_log_loss",
        "val_roc_auc",
    ):
        assert 0.7 < run.data.metrics[key] <= 1.0 or key == "val_log_loss", (key, run.data.metrics[key])
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/per_class_metrics.json")
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in table["data"]] == ["ham", "spam"]
    (found,) = mlflow_client.search_model_versions(f"name='test-spam' and run_id='{run_id}'")
    assert found.tags["raymaas.gate_metric"] == "val_f1_macro"
    model = mlflow.pyfunc.load_model("models:/test-spam@champion")
    # its reference profile (drift, and the explanations' fallback baseline) knows the named classes
    assert model.unwrap_python_model().reference_profile["predictions"]["labels"] == ["ham", "spam"]
    pred = model.predict(frame.drop(columns="kind").head(200))
    assert set(pred) <= {"spam", "ham"}
    assert (pred == frame["kind"].head(200).to_numpy()).mean() > 0.8
