"""Registered models as plain MLflow pyfunc models: torch and MLflow to load, never Ray.

The network is saved with torch.export (a program, not a pickled class), so a user's own
module class need not be importable where the model is loaded, and the batch dimension stays
dynamic. The model's code folder holds this package (see `_model_code`), so the model loads
where raymaas is not installed; `raymaas/pyfunc.py` keeps the name that models registered
before this package existed pickled.

Three kinds: TorchClassifier (class scores to labels), TorchRegressor (values), and
TorchAnomalyScorer (an autoencoder's reconstruction error of a row, its anomaly score, and
whether it exceeds the threshold fitted at training time, which a request may override).

A model of named columns declares the column types MLflow's schema enforcement takes from the
frame pandas reads of a table (float64, int64, bool; see `_input_schema`) and casts to float32
itself: `load_model(...).predict(pd.read_csv(...))` works. Models registered before declared
`float` (float32) columns, which such a frame fails; they load and predict as they did.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
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
THRESHOLD = "threshold"  # the inference param that overrides an anomaly scorer's fitted threshold


class TorchClassifier(mlflow.pyfunc.PythonModel):
    """Maps a batch of feature rows to class ids (int64), or to the class labels the model was
    trained on (strings, booleans, any integers) when it was given them."""

    # The input is checked against the signature (MLflow's enforcement, raymaas.serving.protocol),
    # not by type hints on predict: MLflow skips its type-hint wrapper for such a class, and
    # with it the advice to add hints that every job and replica would print.
    _skip_type_hint_validation = True

    def __init__(self, feature_columns: list[str] | None = None, classes: list | None = None, encoding=None):
        # Column names when the signature is column-based (tabular files); None for tensors.
        self.feature_columns = feature_columns
        # The label of each output (None: the output index is the class id).
        self.classes = classes
        # raymaas.modelcode.tabular.TabularEncoding.to_dict(): categorical columns' vocabularies
        # and which numeric columns are imputed (None: every column is a number, cast as it is)
        self.encoding = encoding

    def load_context(self, context):
        self._module = torch.export.load(context.artifacts[_PROGRAM]).module()
        self.reference_profile = _read_profile(context)
        self.explain_baseline = _read_baseline(context)
        classes = getattr(self, "classes", None)  # absent from models pickled before it existed
        self._labels = None if classes is None else np.asarray(classes, dtype=_label_dtype(classes))

    def predict(self, context, model_input, params=None):
        x = _to_float32(model_input, self.feature_columns, getattr(self, "encoding", None))
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

    # The input is checked against the signature (MLflow's enforcement, raymaas.serving.protocol),
    # not by type hints on predict: MLflow skips its type-hint wrapper for such a class, and
    # with it the advice to add hints that every job and replica would print.
    _skip_type_hint_validation = True

    def __init__(self, feature_columns: list[str] | None = None, n_outputs: int = 1, encoding=None):
        self.feature_columns = feature_columns
        self.n_outputs = n_outputs
        self.encoding = encoding  # as TorchClassifier's

    def load_context(self, context):
        self._module = torch.export.load(context.artifacts[_PROGRAM]).module()
        self.reference_profile = _read_profile(context)
        self.explain_baseline = _read_baseline(context)

    def predict(self, context, model_input, params=None):
        x = _to_float32(model_input, self.feature_columns, getattr(self, "encoding", None))
        with torch.inference_mode():
            out = self._module(torch.from_numpy(x)).numpy().astype(np.float32)
        return out[:, 0] if self.n_outputs == 1 else out


class TorchAnomalyScorer(mlflow.pyfunc.PythonModel):
    """Maps a batch of feature rows to a frame of their anomaly scores (`anomaly_score`,
    float64: the autoencoder's mean squared reconstruction error of the row, >= 0) and
    whether each exceeds the threshold (`is_anomaly`, bool). The threshold is the one fitted
    at training time unless the request's `threshold` param says another: where to draw the
    line is the caller's trade of false alarms against misses, the score is the model's."""

    # The input is checked against the signature (MLflow's enforcement, raymaas.serving.protocol),
    # not by type hints on predict: MLflow skips its type-hint wrapper for such a class, and
    # with it the advice to add hints that every job and replica would print.
    _skip_type_hint_validation = True

    def __init__(self, feature_columns: list[str] | None = None, *, threshold: float, encoding=None):
        self.feature_columns = feature_columns
        self.threshold = float(threshold)
        self.encoding = encoding  # as TorchClassifier's

    def load_context(self, context):
        self._module = torch.export.load(context.artifacts[_PROGRAM]).module()
        self.reference_profile = _read_profile(context)
        self.explain_baseline = _read_baseline(context)

    def predict(self, context, model_input, params=None):
        x = _to_float32(model_input, self.feature_columns, getattr(self, "encoding", None))
        with torch.inference_mode():
            out = self._module(torch.from_numpy(x))
        scores = out.reshape(len(x), -1)[:, 0].numpy().astype(np.float64)
        threshold = (params or {}).get(THRESHOLD)
        threshold = self.threshold if threshold is None else float(threshold)
        return pd.DataFrame({"anomaly_score": scores, "is_anomaly": scores > threshold})


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


def _to_float32(model_input, columns: list[str] | None, encoding: dict | None = None) -> np.ndarray:
    if encoding is not None:
        return encoded_rows(model_input, encoding)
    if isinstance(model_input, pd.DataFrame):
        frame = model_input[columns] if columns else model_input
        return np.ascontiguousarray(frame.to_numpy(dtype=np.float32))
    if isinstance(model_input, dict):  # a single named tensor
        (model_input,) = model_input.values()
    x = np.asarray(model_input, dtype=np.float32)
    return np.ascontiguousarray(x.reshape(1, -1) if x.ndim == 1 else x)


def encoded_rows(model_input, encoding: dict) -> np.ndarray:
    """Raw rows of a model with categorical or imputed columns as its network takes them
    (raymaas.modelcode.tabular): a ValueError naming each numeric column that holds a missing
    value the model does not fill in (the served answer is a 422 naming it)."""
    enc = _encoding(encoding)
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input, columns=enc.names)
    nulls = enc.nulls(frame)
    if nulls:
        listed = ", ".join(f"{c!r} ({n} row{'s' * (n > 1)})" for c, n in nulls.items())
        raise ValueError(
            f"missing values in {listed}: this model was trained without data.impute, so it does not fill "
            "in a missing number"
        )
    return enc.encode(frame)


_ENCODINGS: dict[int, tuple] = {}


def _encoding(encoding: dict):
    """The TabularEncoding of a model's encoding dict, built once per dict (a request must not
    pay for rebuilding it, nor for the lookups each column builds on first use)."""
    from raymaas.modelcode.tabular import TabularEncoding

    cached = _ENCODINGS.get(id(encoding))
    if cached is None or cached[0] is not encoding:
        if len(_ENCODINGS) > 64:  # a process loads few models; bounded anyway
            _ENCODINGS.clear()
        cached = _ENCODINGS[id(encoding)] = (encoding, TabularEncoding.from_dict(encoding))  # holding it keeps the id
    return cached[1]


def classifier_signature(
    n_features: int | tuple[int, ...],
    feature_columns: list[str] | None,
    classes: list | None = None,
    probabilities: bool = True,
    column_types: dict[str, str] | None = None,
) -> ModelSignature:
    if classes is None or _label_dtype(classes) is np.int64:
        outputs = Schema([TensorSpec(np.dtype(np.int64), (-1,))])
    elif _label_dtype(classes) is object:
        outputs = Schema([ColSpec("string")])
    else:
        outputs = Schema([TensorSpec(np.dtype(_label_dtype(classes)), (-1,))])
    params = ParamSchema([ParamSpec(PROBABILITIES, "boolean", False)]) if probabilities else None
    inputs = _input_schema(n_features, feature_columns, column_types)
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def regressor_signature(
    n_features: int | tuple[int, ...],
    feature_columns: list[str] | None,
    n_outputs: int,
    column_types: dict[str, str] | None = None,
) -> ModelSignature:
    shape = (-1,) if n_outputs == 1 else (-1, n_outputs)
    return ModelSignature(
        inputs=_input_schema(n_features, feature_columns, column_types),
        outputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
    )


def anomaly_signature(
    n_features: int | tuple[int, ...],
    feature_columns: list[str] | None,
    threshold: float,
    column_types: dict[str, str] | None = None,
) -> ModelSignature:
    """The inputs as a classifier's or regressor's; out, the score and the verdict as named
    columns; the `threshold` param, whose default is the fitted threshold."""
    return ModelSignature(
        inputs=_input_schema(n_features, feature_columns, column_types),
        outputs=Schema([ColSpec("double", "anomaly_score"), ColSpec("boolean", "is_anomaly")]),
        params=ParamSchema([ParamSpec(THRESHOLD, "double", float(threshold))]),
    )


# The column types a model of named columns may declare, and the dtype of each in its input
# example. MLflow's enforcement widens but never narrows: `double` takes float64 and float32
# (and integers up to int32), not int64, except all-0/1 columns; `long` takes any integer
# column, no floats; `boolean` takes bool only. `float` (what models declared before) takes
# float32 alone, not even the float64 every table read by pandas holds.
COLUMN_TYPES = {"double": "float64", "long": "int64", "boolean": "bool", "string": "object"}


def feature_types(frame: pd.DataFrame) -> dict[str, str]:
    """The column types to declare for rows of a training table (`column_types` of
    log_classifier, log_regressor and log_anomaly_scorer): `long` for an integer column,
    `boolean` for a boolean one, `double` for anything else, so that the frame pandas reads of
    such a table (int64, bool, float64) is one the signature takes, as MLflow's
    infer_signature would type it."""
    types = {}
    for name, dtype in frame.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            types[str(name)] = "boolean"
        elif pd.api.types.is_integer_dtype(dtype):
            types[str(name)] = "long"
        else:
            types[str(name)] = "double"
    return types


def _input_schema(
    n_features: int | tuple[int, ...], feature_columns: list[str] | None, column_types: dict[str, str] | None = None
) -> Schema:
    """A column signature, or a float32 tensor of n_features per row (an int), or of one
    example's shape (a tuple: (length, channels) for a sequence model, declared [-1, length,
    channels])."""
    if not feature_columns:
        shape = (n_features,) if isinstance(n_features, int) else tuple(int(d) for d in n_features)
        return Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))])
    types = dict(column_types or {})
    unknown = sorted(set(types) - set(feature_columns))
    if unknown:
        raise ValueError(f"column_types names {unknown}, which are not feature columns")
    wrong = {c: t for c, t in types.items() if t not in COLUMN_TYPES}
    if wrong:
        raise ValueError(f"column_types {wrong}: a feature column's type is one of {list(COLUMN_TYPES)}")
    # double where the training table's type is unknown: the frame pandas reads of a float
    # column is float64, which a float32 (`float`) column refuses; the model casts to float32.
    return Schema([ColSpec(types.get(c, "double"), c) for c in feature_columns])


def log_classifier(
    module: torch.nn.Module,
    example: np.ndarray,
    feature_columns: list[str] | None = None,
    name: str = "model",
    classes: list | None = None,
    probabilities: bool = True,
    profile: dict | None = None,
    baseline: np.ndarray | None = None,
    column_types: dict[str, str] | None = None,
    encoding: dict | None = None,
):
    """Export module (class scores out) and log it to the active MLflow run as a
    TorchClassifier answering classes' labels (or class ids); return MLflow's ModelInfo.
    probabilities: declare the `probabilities` param (a softmax of the scores; not for scores
    that are no logits, such as a DQN policy's Q-values). profile: the reference profile
    (raymaas.monitoring.profile) to log with the model; baseline: the input (one row) that
    explanations measure against, the training split's mean. column_types: the signature's
    type of feature columns (`feature_types` of the training rows); a column not named is
    `double`. encoding: the categorical columns' vocabularies and the imputed columns
    (raymaas.modelcode.tabular.TabularEncoding.to_dict()); example then holds encoded rows."""
    n = example.shape[1] if example.ndim == 2 else tuple(example.shape[1:])
    named = classes if classes is not None and classes != list(range(len(classes))) else None
    model = TorchClassifier(feature_columns, named, encoding)
    signature = classifier_signature(n, feature_columns, named, probabilities, column_types)
    return _log_torch(module, example, feature_columns, name, model, signature, profile, baseline, encoding)


def log_regressor(
    module: torch.nn.Module,
    example: np.ndarray,
    n_outputs: int,
    feature_columns: list[str] | None = None,
    name: str = "model",
    profile: dict | None = None,
    baseline: np.ndarray | None = None,
    column_types: dict[str, str] | None = None,
    encoding: dict | None = None,
):
    """Export module (predictions in the targets' units out) and log it to the active MLflow
    run as a TorchRegressor, with its reference profile and explanation baseline if given;
    return MLflow's ModelInfo. column_types, encoding: as for log_classifier."""
    n = example.shape[1] if example.ndim == 2 else tuple(example.shape[1:])
    signature = regressor_signature(n, feature_columns, n_outputs, column_types)
    model = TorchRegressor(feature_columns, n_outputs, encoding)
    return _log_torch(module, example, feature_columns, name, model, signature, profile, baseline, encoding)


def log_anomaly_scorer(
    module: torch.nn.Module,
    example: np.ndarray,
    threshold: float,
    feature_columns: list[str] | None = None,
    name: str = "model",
    profile: dict | None = None,
    baseline: np.ndarray | None = None,
    column_types: dict[str, str] | None = None,
    encoding: dict | None = None,
):
    """Export module (a row's anomaly score out: float32 [n, 1], its mean squared
    reconstruction error) and log it to the active MLflow run as a TorchAnomalyScorer that
    flags a score above threshold, with its reference profile and explanation baseline if
    given; return MLflow's ModelInfo. column_types, encoding: as for log_classifier."""
    n = example.shape[1] if example.ndim == 2 else tuple(example.shape[1:])
    signature = anomaly_signature(n, feature_columns, threshold, column_types)
    model = TorchAnomalyScorer(feature_columns, threshold=threshold, encoding=encoding)
    return _log_torch(module, example, feature_columns, name, model, signature, profile, baseline, encoding)


def _log_torch(
    module, example, feature_columns, name, python_model, signature, profile=None, baseline=None, encoding=None
):
    import json

    module = module.eval().cpu()
    example_t = torch.as_tensor(example[: max(2, min(len(example), 8))], dtype=torch.float32)
    with warnings.catch_warnings():
        # torch.export's note on an LSTM's or GRU's flat weights, which it rebuilds while tracing:
        # the exported program holds them (its predictions are the module's), the note is noise
        warnings.filterwarnings(
            "ignore", message=r"The tensor attributes .*_flat_weights.* were assigned during export"
        )
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
        input_example = _input_example(example, feature_columns, signature, encoding)
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


def _input_example(
    example: np.ndarray, feature_columns: list[str] | None, signature: ModelSignature, encoding: dict | None = None
):
    """Up to five rows of example as the signature types them (the row MLflow checks the
    model with when it is logged, and shows as its example); encoded rows (encoding given)
    as the raw values they encode."""
    rows = np.asarray(example[:5])
    if not feature_columns:
        return rows.astype(np.float32)
    if encoding is not None:
        from raymaas.modelcode.tabular import TabularEncoding

        return TabularEncoding.from_dict(encoding).decode(rows)
    frame = pd.DataFrame(rows, columns=feature_columns)
    for spec in signature.inputs.inputs:
        dtype = COLUMN_TYPES[spec.type.name]
        values = frame[spec.name].to_numpy()
        frame[spec.name] = np.rint(values).astype(dtype) if dtype == "int64" else values.astype(dtype)
    return frame


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
