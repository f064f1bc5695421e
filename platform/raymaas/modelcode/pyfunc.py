"""Registered models as plain MLflow pyfunc models: torch and MLflow to load, never Ray.

The network is saved with torch.export (a program, not a pickled class), so a user's own
module class need not be importable where the model is loaded, and the batch dimension stays
dynamic. The model's code folder holds this package (see `_model_code`), so the model loads
where raymaas is not installed; `raymaas/pyfunc.py` keeps the name that models registered
before this package existed pickled.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

_PROGRAM = "program"
_PROFILE = "reference_profile"
_BASELINE = "explain_baseline"  # the input explanations measure against (the training split's mean)
BASELINE_FILE = "explain_baseline.npy"
PROFILE_FILE = "reference_profile.json"  # the model's reference profile (raymaas.monitoring.profile)
PROBABILITIES = "probabilities"  # the inference param that asks a classifier for class probabilities


class TorchClassifier(mlflow.pyfunc.PythonModel):
    """Maps a batch of feature rows to class ids (int64), or to the class labels the model was
    trained on (strings, booleans, any integers) when it was given them."""

    def __init__(self, feature_columns: list[str] | None = None, classes: list | None = None):
        # Column names when the signature is column-based (tabular files); None for tensors.
        self.feature_columns = feature_columns
        # The label of each output (None: the output index is the class id).
        self.classes = classes

    def load_context(self, context):
        self._module = torch.export.load(context.artifacts[_PROGRAM]).module()
        self.reference_profile = _read_profile(context)
        self.explain_baseline = _read_baseline(context)
        classes = getattr(self, "classes", None)  # absent from models pickled before it existed
        self._labels = None if classes is None else np.asarray(classes, dtype=_label_dtype(classes))

    def predict(self, context, model_input, params=None):
        x = _to_float32(model_input, self.feature_columns)
        with torch.inference_mode():
            logits = self._module(torch.from_numpy(x))
        ids = logits.argmax(dim=1).numpy().astype(np.int64)
        labels = getattr(self, "_labels", None)
        predictions = ids if labels is None else labels[ids]
        if not (params and params.get(PROBABILITIES)):
            return predictions
        # {"params": {"probabilities": true}}: the prediction and one probability per class, named
        names = labels.tolist() if labels is not None else range(logits.shape[1])
        probs = torch.softmax(logits.float(), dim=1).numpy()
        frame = pd.DataFrame({"prediction": predictions})
        for i, name in enumerate(names):
            frame[f"probability_{name}"] = probs[:, i]
        return frame


class TorchRegressor(mlflow.pyfunc.PythonModel):
    """Maps a batch of feature rows to float32 predictions in the targets' units: shape [n]
    for one target, [n, k] for k."""

    def __init__(self, feature_columns: list[str] | None = None, n_outputs: int = 1):
        self.feature_columns = feature_columns
        self.n_outputs = n_outputs

    def load_context(self, context):
        self._module = torch.export.load(context.artifacts[_PROGRAM]).module()
        self.reference_profile = _read_profile(context)
        self.explain_baseline = _read_baseline(context)

    def predict(self, context, model_input, params=None):
        x = _to_float32(model_input, self.feature_columns)
        with torch.inference_mode():
            out = self._module(torch.from_numpy(x)).numpy().astype(np.float32)
        return out[:, 0] if self.n_outputs == 1 else out


def _read_profile(context) -> dict | None:
    """The reference profile logged with the model (None for a model logged without one):
    what the serving endpoint measures drift against."""
    import json

    path = (context.artifacts or {}).get(_PROFILE)
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def _read_baseline(context) -> np.ndarray | None:
    """The baseline input logged with the model (one row's shape), for explanations."""
    path = (context.artifacts or {}).get(_BASELINE)
    return None if path is None else np.load(path)


def _label_dtype(classes: list):
    if all(isinstance(c, bool) for c in classes):
        return np.bool_
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return np.int64
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return np.float64
    return object  # strings (or a mix, answered as given)


def _to_float32(model_input, columns: list[str] | None) -> np.ndarray:
    if isinstance(model_input, pd.DataFrame):
        frame = model_input[columns] if columns else model_input
        return np.ascontiguousarray(frame.to_numpy(dtype=np.float32))
    if isinstance(model_input, dict):  # a single named tensor
        (model_input,) = model_input.values()
    x = np.asarray(model_input, dtype=np.float32)
    return np.ascontiguousarray(x.reshape(1, -1) if x.ndim == 1 else x)


def classifier_signature(
    n_features: int, feature_columns: list[str] | None, classes: list | None = None, probabilities: bool = True
) -> ModelSignature:
    if classes is None or _label_dtype(classes) is np.int64:
        outputs = Schema([TensorSpec(np.dtype(np.int64), (-1,))])
    elif _label_dtype(classes) is object:
        outputs = Schema([ColSpec("string")])
    else:
        outputs = Schema([TensorSpec(np.dtype(_label_dtype(classes)), (-1,))])
    params = ParamSchema([ParamSpec(PROBABILITIES, "boolean", False)]) if probabilities else None
    return ModelSignature(inputs=_input_schema(n_features, feature_columns), outputs=outputs, params=params)


def regressor_signature(n_features: int, feature_columns: list[str] | None, n_outputs: int) -> ModelSignature:
    shape = (-1,) if n_outputs == 1 else (-1, n_outputs)
    return ModelSignature(
        inputs=_input_schema(n_features, feature_columns), outputs=Schema([TensorSpec(np.dtype(np.float32), shape)])
    )


def _input_schema(n_features: int, feature_columns: list[str] | None) -> Schema:
    if feature_columns:
        return Schema([ColSpec("float", c) for c in feature_columns])
    return Schema([TensorSpec(np.dtype(np.float32), (-1, n_features))])


def log_classifier(
    module: torch.nn.Module,
    example: np.ndarray,
    feature_columns: list[str] | None = None,
    name: str = "model",
    classes: list | None = None,
    probabilities: bool = True,
    profile: dict | None = None,
    baseline: np.ndarray | None = None,
):
    """Export module (class scores out) and log it to the active MLflow run as a
    TorchClassifier answering classes' labels (or class ids); return MLflow's ModelInfo.
    probabilities: declare the `probabilities` param (a softmax of the scores; not for scores
    that are no logits, such as a DQN policy's Q-values). profile: the reference profile
    (raymaas.monitoring.profile) to log with the model; baseline: the input (one row) that
    explanations measure against, the training split's mean."""
    n = example.shape[1]
    named = classes if classes is not None and classes != list(range(len(classes))) else None
    model = TorchClassifier(feature_columns, named)
    signature = classifier_signature(n, feature_columns, named, probabilities)
    return _log_torch(module, example, feature_columns, name, model, signature, profile, baseline)


def log_regressor(
    module: torch.nn.Module,
    example: np.ndarray,
    n_outputs: int,
    feature_columns: list[str] | None = None,
    name: str = "model",
    profile: dict | None = None,
    baseline: np.ndarray | None = None,
):
    """Export module (predictions in the targets' units out) and log it to the active MLflow
    run as a TorchRegressor, with its reference profile and explanation baseline if given;
    return MLflow's ModelInfo."""
    signature = regressor_signature(example.shape[1], feature_columns, n_outputs)
    model = TorchRegressor(feature_columns, n_outputs)
    return _log_torch(module, example, feature_columns, name, model, signature, profile, baseline)


def _log_torch(module, example, feature_columns, name, python_model, signature, profile=None, baseline=None):
    import json

    module = module.eval().cpu()
    example_t = torch.as_tensor(example[: max(2, min(len(example), 8))], dtype=torch.float32)
    program = torch.export.export(module, (example_t,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt2"
        torch.export.save(program, path)
        artifacts = {_PROGRAM: str(path)}
        if profile is not None:
            artifacts[_PROFILE] = str(Path(tmp) / PROFILE_FILE)
            Path(artifacts[_PROFILE]).write_text(json.dumps(profile, separators=(",", ":")))
        if baseline is not None:
            artifacts[_BASELINE] = str(Path(tmp) / BASELINE_FILE)
            np.save(artifacts[_BASELINE], np.asarray(baseline, dtype=np.float32).reshape(example.shape[1:]))
        input_example = (
            pd.DataFrame(example[:5], columns=feature_columns) if feature_columns else example[:5].astype(np.float32)
        )
        # MLflow's notes on cloudpickle and on checking the input example are not for the job's output.
        with _quiet("mlflow.pyfunc"):
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=python_model,
                artifacts=artifacts,
                signature=signature,
                input_example=input_example,
                code_paths=[_model_code(Path(tmp))],
                # Explicit requirements: inference would load the model in a subprocess, slowly.
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}",
                    "numpy",
                    "pandas",
                ],
            )


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Only errors from that logger while the block runs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _model_code(folder: Path) -> str:
    """A raymaas folder holding only its __init__ and modelcode/: what the model runs, without
    the platform's Ray-dependent modules."""
    import shutil

    import raymaas

    source = Path(raymaas.__file__).parent
    target = folder / "code" / "raymaas"
    target.mkdir(parents=True)
    shutil.copyfile(source / "__init__.py", target / "__init__.py")
    shutil.copytree(Path(__file__).parent, target / "modelcode", ignore=shutil.ignore_patterns("__pycache__"))
    return str(target)
