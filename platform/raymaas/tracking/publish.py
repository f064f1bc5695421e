"""The end every job kind shares: the resolved spec, plots and artifacts to the run, the model
logged (a Ray-free pyfunc), registered as `candidate` and gated for `champion`."""

from __future__ import annotations

from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Publication:
    model_name: str
    version: str
    model_uri: str
    promoted: bool
    reason: str


def publish_model(client, run_id: str, spec, gate, trained) -> Publication:
    """Log trained (a raymaas.runtime.driver.TrainedModel) to run_id and register it under the
    spec's registered model name, gated on gate (raymaas.specs.Gate: metric and direction)."""
    import mlflow

    from raymaas.tracking import registry

    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
    for path, content in trained.dicts.items():
        client.log_dict(run_id, content, path)
    for path, figure in trained.figures.items():
        client.log_figure(run_id, figure, path)
    for path, folder in trained.artifact_dirs.items():
        client.log_artifacts(run_id, folder, path)

    if trained.log_model is None:
        raise ValueError("the trained model does not say how it is logged (TrainedModel.log_model)")
    with mlflow.start_run(run_id=run_id):
        info = trained.log_model(trained)
    if trained.explain_rows is not None:
        try:
            log_feature_importance(client, run_id, spec.name, trained)
        except Exception as err:  # an explanation that failed costs the chart, not the model
            print(f"no feature importance: {type(err).__name__}: {err}", flush=True)
    if trained.check is not None:
        trained.check(info.model_uri)  # e.g. the RL policy's parity with the RLlib module
    name = spec.registered_model_name
    version = registry.register_model(client, info.model_uri, name, gate.metric, trained.gate_value)
    decision = registry.promote_if_better(client, name, version, higher_is_better=gate.higher_is_better)
    return Publication(name, version, info.model_uri, decision.promoted, decision.reason)


def log_as_classifier(classes: list | None = None, probabilities: bool = True):
    """A TrainedModel.log_model for class scores: a TorchClassifier answering classes' labels
    (None: class ids); probabilities: it takes the `probabilities` param (a softmax of the
    scores; not for scores that are no logits, such as a DQN policy's Q-values)."""

    def log(trained):
        from raymaas.modelcode.pyfunc import log_classifier

        return log_classifier(
            trained.module,
            trained.example,
            trained.feature_columns,
            classes=classes,
            probabilities=probabilities,
            profile=trained.profile,
            baseline=trained.baseline,
            column_types=trained.column_types,
            encoding=trained.encoding,
        )

    return log


def log_as_regressor(n_outputs: int):
    """A TrainedModel.log_model for values: a TorchRegressor of n_outputs outputs."""

    def log(trained):
        from raymaas.modelcode.pyfunc import log_regressor

        return log_regressor(
            trained.module,
            trained.example,
            n_outputs,
            trained.feature_columns,
            profile=trained.profile,
            baseline=trained.baseline,
            column_types=trained.column_types,
            encoding=trained.encoding,
        )

    return log


def log_as_anomaly_scorer(threshold: float):
    """A TrainedModel.log_model for reconstruction errors: a TorchAnomalyScorer that flags a
    row whose score exceeds threshold (fitted on the training rows; a request may override it)."""

    def log(trained):
        from raymaas.modelcode.pyfunc import log_anomaly_scorer

        return log_anomaly_scorer(
            trained.module,
            trained.example,
            threshold,
            trained.feature_columns,
            profile=trained.profile,
            baseline=trained.baseline,
            column_types=trained.column_types,
            encoding=trained.encoding,
        )

    return log


def log_feature_importance(client, run_id: str, title: str, trained, n_steps: int = 32) -> dict:
    """The model's global feature importance, the mean absolute Integrated Gradients
    attribution of its answer over trained.explain_rows, to the run: feature_importance.json
    (a table) and plots/feature_importance.png (its top 20 as bars)."""
    import numpy as np

    from raymaas.explain.attribution import IntegratedGradients, global_importance
    from raymaas.tracking import plots

    explainer = IntegratedGradients(
        trained.module,
        trained.classifier,
        trained.feature_columns,
        baseline=trained.baseline,
        encoding=trained.encoding,
    )
    rows = np.asarray(trained.explain_rows, dtype=np.float32)
    if trained.feature_columns and trained.encoding is None:  # encoded rows stay an array
        import pandas as pd

        rows = pd.DataFrame(rows, columns=trained.feature_columns)
    explanation = explainer.explain(rows, n_steps=n_steps)
    names = trained.feature_columns or [f"input[{i}]" for i in range(int(np.prod(explanation.attributions.shape[1:])))]
    table = global_importance(explanation, names)
    client.log_dict(run_id, table, "feature_importance.json")
    what = "the predicted class's score" if trained.classifier else "output 0"
    client.log_figure(
        run_id,
        plots.importance_figure(table, f"{title}: integrated gradients of {what}"),
        "plots/feature_importance.png",
    )
    return table
