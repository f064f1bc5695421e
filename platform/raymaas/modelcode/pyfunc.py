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
from mlflow.types import ColSpec, Schema, TensorSpec

_PROGRAM = "program"


class TorchClassifier(mlflow.pyfunc.PythonModel):
    """Maps a batch of feature rows to int64 class ids."""

    def __init__(self, feature_columns: list[str] | None = None):
        # Column names when the signature is column-based (tabular files); None for tensors.
        self.feature_columns = feature_columns

    def load_context(self, context):
        self._module = torch.export.load(context.artifacts[_PROGRAM]).module()

    def predict(self, context, model_input, params=None):
        x = _to_float32(model_input, self.feature_columns)
        with torch.inference_mode():
            logits = self._module(torch.from_numpy(x))
        return logits.argmax(dim=1).numpy().astype(np.int64)


def _to_float32(model_input, columns: list[str] | None) -> np.ndarray:
    if isinstance(model_input, pd.DataFrame):
        frame = model_input[columns] if columns else model_input
        return np.ascontiguousarray(frame.to_numpy(dtype=np.float32))
    if isinstance(model_input, dict):  # a single named tensor
        (model_input,) = model_input.values()
    x = np.asarray(model_input, dtype=np.float32)
    return np.ascontiguousarray(x.reshape(1, -1) if x.ndim == 1 else x)


def classifier_signature(n_features: int, feature_columns: list[str] | None) -> ModelSignature:
    outputs = Schema([TensorSpec(np.dtype(np.int64), (-1,))])
    if feature_columns:
        inputs = Schema([ColSpec("float", c) for c in feature_columns])
    else:
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, n_features))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_classifier(
    module: torch.nn.Module,
    example: np.ndarray,
    feature_columns: list[str] | None = None,
    name: str = "model",
):
    """Export module and log it to the active MLflow run; return MLflow's ModelInfo."""
    module = module.eval().cpu()
    example_t = torch.as_tensor(example[: max(2, min(len(example), 8))], dtype=torch.float32)
    program = torch.export.export(module, (example_t,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt2"
        torch.export.save(program, path)
        input_example = (
            pd.DataFrame(example[:5], columns=feature_columns) if feature_columns else example[:5].astype(np.float32)
        )
        # MLflow's notes on cloudpickle and on checking the input example are not for the job's output.
        with _quiet("mlflow.pyfunc"):
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=TorchClassifier(feature_columns),
                artifacts={_PROGRAM: str(path)},
                signature=classifier_signature(example.shape[1], feature_columns),
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
