"""The model code that ships inside registered models keeps its import path.

A version registered by raymaas 0.1 (tests/legacy/raymaas_0_1, a frozen copy of that code)
pickles `raymaas.pyfunc.TorchClassifier`; it must load and serve where this raymaas is already
imported (a Serve replica) and in a process with torch and MLflow but no raymaas at all.

Why the shim works: at load time MLflow 3.17 only prepends the model's code folder to sys.path
(mlflow/utils/model_utils.py: _add_code_to_system_path, called by mlflow.pyfunc.load_model via
_add_code_from_conf_to_system_path) and pops nothing from sys.modules, so where raymaas is
already imported the pickled `raymaas.pyfunc` is found in that package (platform/raymaas/pyfunc.py,
the shim), and where raymaas is not importable it is found in the copy the model carries.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, make_bare_python

LEGACY = REPO / "tests" / "legacy" / "raymaas_0_1"
LEGACY_NAME = "legacy-classifier"
NEW_NAME = "modelcode-classifier"

# Runs on a bare Python with only the legacy copy on its path: registers version 1 of
# LEGACY_NAME exactly as raymaas 0.1 did, and writes the inputs and the module's argmax.
_REGISTER_LEGACY = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import mlflow, torch
    import raymaas, raymaas.pyfunc

    uri, artifacts, name, legacy, out = sys.argv[1:]
    assert Path(raymaas.pyfunc.__file__).resolve() == Path(legacy, "raymaas", "pyfunc.py").resolve(), raymaas.pyfunc.__file__
    assert raymaas.__version__ == "0.1.0"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("legacy-models", artifact_location=artifacts)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(32, 4) * 3
    with torch.no_grad():
        expected = module(x).argmax(dim=1)
    with mlflow.start_run(experiment_id=experiment):
        info = raymaas.pyfunc.log_classifier(module, x.numpy())
    version = mlflow.register_model(info.model_uri, name).version
    Path(out).write_text(json.dumps({"version": str(version), "inputs": x.tolist(), "expected": expected.tolist()}))
""")

# Runs on a bare Python (no raymaas importable): loads a model, predicts, says what it used.
_LOAD_BARE = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import mlflow, numpy as np

    model_uri, inputs, out = sys.argv[1:]
    try:
        import raymaas
    except ImportError:
        pass
    else:
        raise AssertionError(f"raymaas is importable before the model loads: {raymaas.__file__}")
    model = mlflow.pyfunc.load_model(model_uri)
    x = np.asarray(json.loads(Path(inputs).read_text())["inputs"], dtype=np.float32)
    predictions = model.predict(x)
    python_model = model.unwrap_python_model()
    import raymaas
    Path(out).write_text(json.dumps({
        "predictions": np.asarray(predictions).tolist(),
        "dtype": str(np.asarray(predictions).dtype),
        "class": f"{type(python_model).__module__}.{type(python_model).__qualname__}",
        "raymaas": raymaas.__file__,
        "ray_modules": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")),
    }))
""")


@dataclass
class Store:
    uri: str  # sqlite:////abs/mlflow.db
    base: Path


@dataclass
class LegacyModel:
    version: str
    inputs: np.ndarray
    expected: np.ndarray
    inputs_file: Path


def _bare_env(**extra: str) -> dict:
    """This environment without anything that points at another store, Ray or raymaas."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k not in ("PYTHONPATH", "RAY_ADDRESS")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in tests/legacy
    env.update(extra)
    return env


def _run(python: Path, script: str, *args, env: dict, cwd: Path) -> None:
    proc = subprocess.run(
        [str(python), "-c", script, *map(str, args)],
        check=False,
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    return make_bare_python(tmp_path_factory.mktemp("modelcode") / "bare-venv")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    base = tmp_path_factory.mktemp("modelcode-store")
    return Store(f"sqlite:///{base / 'mlflow.db'}", base)


@pytest.fixture(scope="module")
def legacy_model(bare_python, store) -> LegacyModel:
    out = store.base / "legacy.json"
    _run(
        bare_python,
        _REGISTER_LEGACY,
        store.uri,
        (store.base / "legacy-artifacts").as_uri(),
        LEGACY_NAME,
        LEGACY,
        out,
        env=_bare_env(PYTHONPATH=str(LEGACY)),
        cwd=store.base,
    )
    saved = json.loads(out.read_text())
    expected = np.asarray(saved["expected"], dtype=np.int64)
    assert saved["version"] == "1"
    assert len(set(expected.tolist())) > 1, "inputs that all get one class would prove little"
    return LegacyModel(saved["version"], np.asarray(saved["inputs"], dtype=np.float32), expected, out)


@pytest.fixture
def mlflow_uris_restored():
    """get_client points MLflow's process-wide URIs (and their env vars) at this module's store:
    put them back afterwards, as well as sys.path, to which loading a model prepends its code."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {k: os.environ.get(k) for k in names}
    saved_path = sys.path
    sys.path = list(sys.path)
    try:
        yield
    finally:
        sys.path = saved_path
        mlflow.set_tracking_uri(saved_env["MLFLOW_TRACKING_URI"])  # None: back to the default
        mlflow.set_registry_uri(saved_env["MLFLOW_REGISTRY_URI"])
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _AnyGlobal:
    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _pickled_classes(model_uri: str, dst: Path) -> set[str]:
    """The globals that a model's pickled python_model names, read without importing any."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    conf = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    names: set[str] = set()

    class Names(pickle.Unpickler):
        def find_class(self, module, name):
            names.add(f"{module}.{name}")
            return _AnyGlobal

    with open(local / conf["python_model"], "rb") as f:
        Names(f).load()
    return names


def test_legacy_model_serves_where_new_raymaas_is_imported(legacy_model, store, tmp_path, mlflow_uris_restored):
    import raymaas
    import raymaas.modelcode.pyfunc
    import raymaas.serving
    from raymaas.serving import ModelEndpointSpec, load_serving_model
    from raymaas.tracking import get_client

    client = get_client(store.uri)
    uri = f"models:/{LEGACY_NAME}/{legacy_model.version}"
    assert "raymaas.pyfunc.TorchClassifier" in _pickled_classes(uri, tmp_path)

    loaded = load_serving_model(client, ModelEndpointSpec(name=LEGACY_NAME, version="1"), "1")

    python_model = loaded.model.unwrap_python_model()
    assert type(python_model) is raymaas.modelcode.pyfunc.TorchClassifier
    # The old name resolved in this raymaas (the shim), not in the copy the model carries.
    assert Path(sys.modules["raymaas.pyfunc"].__file__).resolve() == REPO / "platform" / "raymaas" / "pyfunc.py"
    assert Path(raymaas.__file__).resolve().parent == REPO / "platform" / "raymaas"
    x = legacy_model.inputs
    from_array = loaded.model.predict(x)
    from_frame = loaded.model.predict(pd.DataFrame(x))
    assert from_array.dtype == np.int64
    np.testing.assert_array_equal(from_array, legacy_model.expected)
    np.testing.assert_array_equal(from_frame, legacy_model.expected)


def test_legacy_model_loads_without_raymaas(legacy_model, store, bare_python, tmp_path):
    out = tmp_path / "loaded.json"
    _run(
        bare_python,
        _LOAD_BARE,
        f"models:/{LEGACY_NAME}/{legacy_model.version}",
        legacy_model.inputs_file,
        out,
        env=_bare_env(MLFLOW_TRACKING_URI=store.uri),
        cwd=tmp_path,
    )
    loaded = json.loads(out.read_text())

    assert loaded["predictions"] == legacy_model.expected.tolist()
    assert loaded["dtype"] == "int64"
    assert loaded["class"] == "raymaas.pyfunc.TorchClassifier"
    carried = Path(loaded["raymaas"])  # .../code/raymaas/__init__.py of the downloaded model
    assert carried.parent.parent.name == "code"
    assert REPO not in carried.resolve().parents
    assert loaded["ray_modules"] == []


def test_new_model_loads_without_raymaas(store, bare_python, tmp_path, mlflow_uris_restored):
    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.tracking import get_client

    get_client(store.uri)
    experiment = mlflow.create_experiment("modelcode-models", artifact_location=(store.base / "new-artifacts").as_uri())
    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(32, 4) * 3
    with torch.no_grad():
        expected = module(x).argmax(dim=1).tolist()
    assert len(set(expected)) > 1
    with mlflow.start_run(experiment_id=experiment):
        info = log_classifier(module, x.numpy())
    version = mlflow.register_model(info.model_uri, NEW_NAME).version
    uri = f"models:/{NEW_NAME}/{version}"
    assert "raymaas.modelcode.pyfunc.TorchClassifier" in _pickled_classes(uri, tmp_path / "download")

    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"inputs": x.tolist()}))
    out = tmp_path / "loaded.json"
    _run(bare_python, _LOAD_BARE, uri, inputs, out, env=_bare_env(MLFLOW_TRACKING_URI=store.uri), cwd=tmp_path)
    loaded = json.loads(out.read_text())

    assert loaded["predictions"] == expected
    assert loaded["dtype"] == "int64"
    assert loaded["class"] == "raymaas.modelcode.pyfunc.TorchClassifier"
    carried = Path(loaded["raymaas"])
    assert carried.parent.parent.name == "code"
    assert REPO not in carried.resolve().parents
    assert loaded["ray_modules"] == []


def test_models_of_named_columns_take_the_frame_pandas_reads(store, tmp_path, mlflow_uris_restored):
    """A table written to CSV and read back with pandas (float64, int64 and bool columns) is
    what a registered classifier and regressor predict on, in-process and as a served CSV body,
    answering what their module answers on the same rows as float32."""
    from raymaas.modelcode.pyfunc import feature_types, log_classifier, log_regressor
    from raymaas.serving.protocol import parse_scoring_request
    from raymaas.tracking import get_client

    client = get_client(store.uri)
    experiment = mlflow.create_experiment("modelcode-tables", artifact_location=(store.base / "tables").as_uri())
    rng = np.random.default_rng(3)
    n = 40
    table = pd.DataFrame(
        {
            "score": rng.normal(0.0, 2.0, n),
            "visits": rng.integers(0, 7, n),  # integer-valued: pandas reads it back as int64
            "ratio": rng.normal(0.5, 1.5, n),
            "member": rng.random(n) < 0.5,
        }
    )
    columns = list(table.columns)
    path = tmp_path / "table.csv"
    table.to_csv(path, index=False)
    frame = pd.read_csv(path)
    assert [str(t) for t in frame.dtypes] == ["float64", "int64", "float64", "bool"]
    types = feature_types(frame)
    assert types == {"score": "double", "visits": "long", "ratio": "double", "member": "boolean"}
    x = torch.from_numpy(frame.to_numpy(dtype=np.float32))
    example = x[:8].numpy()

    torch.manual_seed(2)
    classifier = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()
    regressor = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).eval()
    with torch.no_grad():
        classes = classifier(x).argmax(dim=1).numpy()
        values = regressor(x)[:, 0].numpy()
    assert len(set(classes.tolist())) > 1, "rows that all get one class would prove little"
    with mlflow.start_run(experiment_id=experiment):
        logged = {
            "tables-classifier": log_classifier(classifier, example, columns, column_types=types),
            "tables-regressor": log_regressor(regressor, example, 1, columns, column_types=types),
        }
    body = path.read_bytes()
    for name, info in logged.items():
        version = mlflow.register_model(info.model_uri, name).version
        client.set_registered_model_alias(name, "champion", version)
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        inputs = model.metadata.signature.inputs
        assert [(c.name, c.type.name) for c in inputs.inputs] == list(types.items())
        served, _ = parse_scoring_request(body, "text/csv", model.metadata.signature)
        for predictions in (model.predict(frame), model.predict(served)):
            if name == "tables-classifier":
                np.testing.assert_array_equal(predictions, classes)
            else:
                assert predictions.dtype == np.float32
                # the exported program's kernels may round a last bit otherwise than the module's
                np.testing.assert_allclose(predictions, values, rtol=1e-6, atol=1e-7)

    # Without the table's types every named column is double: float64 and float32 frames (what
    # a column model took before) both predict; MLflow takes no int64 into double (so `visits` is
    # float here), which is why the table's integer columns are declared long.
    floats = frame.astype({"visits": "float64", "member": "float64"})
    with mlflow.start_run(experiment_id=experiment):
        info = log_regressor(regressor, example, 1, columns)
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert {c.type.name for c in model.metadata.signature.inputs.inputs} == {"double"}
    np.testing.assert_allclose(model.predict(floats), values, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(floats.astype(np.float32)), values, rtol=1e-6, atol=1e-7)
