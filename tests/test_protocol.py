"""The scoring protocol without Ray: parse_scoring_request is pure. Requests to a model with
named columns are checked and built without MLflow's parser; what they build must be what
MLflow's own parsing and schema enforcement build, and what they refuse must say why."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.models.utils import _enforce_schema
from mlflow.pyfunc.scoring_server import infer_and_parse_data, parse_csv_input
from mlflow.types import ColSpec, Schema, TensorSpec

from raymaas.serving.errors import ServingError
from raymaas.serving.protocol import parse_scoring_request

ROWS = [
    {"d": 1.5, "f": 0.1, "l": 3, "i": 4, "b": True, "s": "x"},
    {"d": 2, "f": 2, "l": -1, "i": 0, "b": False, "s": "yy"},
    {"d": -0.25, "f": 1e-3, "l": 2**40, "i": -7, "b": True, "s": ""},
]
MIXED = ModelSignature(
    inputs=Schema(
        [
            ColSpec("double", "d"),
            ColSpec("float", "f"),
            ColSpec("long", "l"),
            ColSpec("integer", "i"),
            ColSpec("boolean", "b"),
            ColSpec("string", "s"),
        ]
    )
)
WIDE = ModelSignature(inputs=Schema([ColSpec("double", f"f{i}") for i in range(64)]))
DOUBLES = ModelSignature(inputs=Schema([ColSpec("double", c) for c in ("sepal_length", "sepal_width", "petal_width")]))


@pytest.fixture(autouse=True)
def _quiet_mlflow():
    # MLflow's enforcement warns of every extra column it drops
    logger = logging.getLogger("mlflow.models.utils")
    level, logger.level = logger.level, logging.ERROR
    yield
    logger.setLevel(level)


def parse(payload, signature, content_type="application/json"):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_scoring_request(body, content_type, signature)[0]


def mlflow_reads(payload: dict, signature):
    """What `mlflow models serve` makes of a JSON request: its parser, then its enforcement."""
    return _enforce_schema(infer_and_parse_data(payload, signature.inputs), signature.inputs)


def mlflow_reads_csv(text: str, signature):
    return _enforce_schema(parse_csv_input(io.StringIO(text), signature.inputs), signature.inputs)


def split(rows: list[dict], columns: list[str]) -> dict:
    return {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}}


def wide_rows(n: int) -> list[dict]:
    values = np.random.default_rng(0).random((n, 64)).round(4)
    return [{f"f{i}": float(v) if i % 3 else int(v * 16) for i, v in enumerate(row)} for row in values]


@pytest.mark.parametrize(
    "signature, payload",
    [
        (MIXED, {"dataframe_records": ROWS}),
        (MIXED, split(ROWS, list(ROWS[0]))),
        # another column order, an extra column (dropped, as MLflow drops it)
        (
            MIXED,
            {
                "dataframe_split": {
                    "columns": ["s", "x", *"bilfd"],
                    "data": [[r["s"], 9, *(r[c] for c in "bilfd")] for r in ROWS],
                }
            },
        ),
        (MIXED, {"dataframe_records": [{**dict(reversed(r.items())), "extra": [1, 2]} for r in ROWS]}),
        (MIXED, {"inputs": {c: [r[c] for r in ROWS] for c in ROWS[0]}}),
        (MIXED, {"inputs": ROWS[0]}),  # one row of scalars
        (WIDE, split(wide_rows(1), [f"f{i}" for i in range(64)])),  # ints in double columns too
        (WIDE, split(wide_rows(5), [f"f{i}" for i in reversed(range(64))])),
        (WIDE, {"dataframe_records": wide_rows(3)}),
        (WIDE, {"inputs": {f"f{i}": [r[f"f{i}"] for r in wide_rows(2)] for i in range(64)}}),
        (
            DOUBLES,
            {"dataframe_split": {"columns": ["petal_width", "sepal_length", "sepal_width"], "data": [[1, 2.5, 3]]}},
        ),
    ],
)
def test_column_requests_build_what_mlflow_builds(signature, payload):
    fast = parse(payload, signature)
    expected = mlflow_reads(payload, signature)
    pd.testing.assert_frame_equal(fast, expected)
    assert list(fast.columns) == signature.inputs.input_names()


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_records": ROWS},
        split(ROWS, list(ROWS[0])),
        {"inputs": {c: [r[c] for r in ROWS] for c in ROWS[0]}},
        {"inputs": ROWS[0]},
    ],
)
def test_strings_as_objects_build_mlflows_frame_with_object_strings(payload):
    """For the platform's own models (which read string columns as objects) the strings stay
    numpy objects: the same frame as MLflow's but for that column's dtype."""
    fast, _ = parse_scoring_request(json.dumps(payload).encode(), "application/json", MIXED, strings_as_objects=True)
    expected = mlflow_reads(payload, MIXED)
    assert fast["s"].dtype == object
    pd.testing.assert_frame_equal(fast, expected.astype({"s": object}))


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["sepal_length", "sepal_width"], "data": [[1.0, 2.0]]}},
        {"dataframe_records": [{"sepal_length": 1.0, "sepal_width": 2.0, "petal_length": 4.0}]},
        {"inputs": {"sepal_length": [1.0], "sepal_width": [2.0]}},
    ],
)
def test_missing_column_is_422_naming_it(payload):
    with pytest.raises(ServingError) as caught:
        parse(payload, DOUBLES)
    assert caught.value.status == 422
    assert "missing input column 'petal_width' (double)" in caught.value.body["message"]
    assert [c["name"] for c in caught.value.body["expected"]] == ["sepal_length", "sepal_width", "petal_width"]


@pytest.mark.parametrize(
    "signature, row, column, says",
    [
        (DOUBLES, {"sepal_length": 1.0, "sepal_width": "abc", "petal_width": 2.0}, "sepal_width", "double"),
        (MIXED, {**ROWS[0], "d": {"a": 1}}, "d", "double"),
        (MIXED, {**ROWS[0], "b": "maybe"}, "b", "boolean"),
        (MIXED, {**ROWS[0], "l": "seven"}, "l", "long"),
    ],
)
def test_wrong_type_is_422_naming_the_column_and_its_type(signature, row, column, says):
    for payload in ({"dataframe_records": [row]}, split([row], list(row))):
        with pytest.raises(ServingError) as caught:
            parse(payload, signature)
        message = caught.value.body["message"]
        assert caught.value.status == 422, message
        assert f"column {column!r} expects {says}, got" in message
        assert caught.value.body["expected"]


@pytest.mark.parametrize(
    "column, value, says",
    [
        ("b", "no", 'got a string "no"'),
        ("b", 1, "got an integer 1"),
        ("l", 1.5, "got a number 1.5"),
        ("i", -0.5, "-0.5"),
    ],
)
def test_values_mlflow_would_change_are_refused(column, value, says):
    # MLflow's parser casts before it checks: "no" would be True, 1.5 would be 1
    row = {**ROWS[0], column: value}
    with pytest.raises(ServingError) as caught:
        parse({"dataframe_records": [ROWS[1], row]}, MIXED)
    assert caught.value.status == 422
    assert f"column {column!r} expects" in caught.value.body["message"] and says in caught.value.body["message"]
    # a whole number in an integer column is that number
    pd.testing.assert_frame_equal(
        parse({"dataframe_records": [{**ROWS[0], "l": 2.0}]}, MIXED),
        mlflow_reads({"dataframe_records": [{**ROWS[0], "l": 2}]}, MIXED),
    )


@pytest.mark.parametrize(
    "payload",
    [
        # what the column check leaves to MLflow, which takes these as `mlflow models serve` does
        {"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_width"], "data": [[1.0, None, "2.5"]]}},
        {
            "dataframe_split": {
                "index": [7],
                "columns": ["sepal_length", "sepal_width", "petal_width"],
                "data": [[1, 2, 3]],
            }
        },
        {"dataframe_records": [{"sepal_length": 1.0, "sepal_width": 2.0, "petal_width": 3.0}, {"sepal_length": 1.0}]},
        {"instances": [{"sepal_length": 1.0, "sepal_width": 2.0, "petal_width": 3.0}]},
    ],
)
def test_what_the_check_leaves_to_mlflow_is_read_as_mlflow_reads_it(payload):
    pd.testing.assert_frame_equal(parse(payload, DOUBLES), mlflow_reads(payload, DOUBLES))


def test_optional_columns_and_tensors_go_through_mlflow():
    optional = ModelSignature(inputs=Schema([ColSpec("double", "a"), ColSpec("long", "b", required=False)]))
    payload = {"dataframe_records": [{"a": 1.0}]}
    pd.testing.assert_frame_equal(parse(payload, optional), mlflow_reads(payload, optional))
    tensor = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]))
    out = parse({"inputs": [[1, 2, 3]]}, tensor)
    assert out.dtype == np.float32 and out.shape == (1, 3)
    with pytest.raises(ServingError, match="shape"):
        parse({"inputs": [[1, 2]]}, tensor)


def test_the_platforms_column_signatures_take_json_ints_and_floats():
    """A model logged by the platform declares double columns (long and boolean ones where the
    training table held them); one logged before declared float. Both take JSON integers and
    numbers in a double or float column, as MLflow does: float64 for the new, float32 as before."""
    from raymaas.modelcode.pyfunc import classifier_signature, regressor_signature

    columns = ["score", "visits", "member"]
    rows = [[1.5, 3, True], [2, 0, False], [-0.25, 12, True]]
    legacy = ModelSignature(inputs=Schema([ColSpec("float", c) for c in columns]))
    typed = {"visits": "long", "member": "boolean"}
    numbers = [[r[0], r[1], float(r[2])] for r in rows]  # every column a number, as in a table of floats
    cases = [
        (classifier_signature(3, columns), numbers, ["float64"] * 3),
        (regressor_signature(3, columns, 1), numbers, ["float64"] * 3),
        (classifier_signature(3, columns, column_types=typed), rows, ["float64", "int64", "bool"]),
        (legacy, numbers, ["float32"] * 3),
    ]
    for signature, data, dtypes in cases:
        payload = {"dataframe_split": {"columns": columns, "data": data}}
        fast = parse(payload, signature)
        pd.testing.assert_frame_equal(fast, mlflow_reads(payload, signature))
        assert [str(t) for t in fast.dtypes] == dtypes
        text = pd.DataFrame(data, columns=columns).to_csv(index=False)
        from_csv = parse(text.encode(), signature, "text/csv")
        pd.testing.assert_frame_equal(from_csv, mlflow_reads_csv(text, signature))
        pd.testing.assert_frame_equal(from_csv, fast)
    # ints and floats mixed in one double column of a CSV body
    signature = classifier_signature(3, columns)
    text = "score,visits,member\n1,2,0\n2.5,3,1\n"
    pd.testing.assert_frame_equal(parse(text.encode(), signature, "text/csv"), mlflow_reads_csv(text, signature))
    assert parse(text.encode(), signature, "text/csv")["score"].tolist() == [1.0, 2.5]


# --------------------------------------------------------------------------- text/csv


@pytest.mark.parametrize(
    "signature, frame",
    [
        (MIXED, pd.DataFrame([r for r in ROWS if r["s"]])),
        (
            DOUBLES,
            pd.DataFrame(
                {"petal_width": [1.5, 2], "x": ["q", "r"], "sepal_length": [3.25, 1e-3], "sepal_width": [1, 2]}
            ),
        ),
        (WIDE, pd.DataFrame(wide_rows(4))),
    ],
)
def test_csv_builds_what_mlflow_builds_and_what_the_json_formats_build(signature, frame):
    text = frame.to_csv(index=False)
    fast = parse(text.encode(), signature, "text/csv; charset=utf-8")
    pd.testing.assert_frame_equal(fast, mlflow_reads_csv(text, signature))
    from_json = parse({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}, signature)
    pd.testing.assert_frame_equal(fast, from_json, check_dtype=False)  # string columns: object in CSV, str in JSON
    assert [str(t) for t in fast.dtypes if str(t) != "object"] == [
        str(t) for t in from_json.dtypes if not isinstance(t, pd.StringDtype)
    ]


@pytest.mark.parametrize(
    "text, status, says",
    [
        ("", 400, "empty"),
        ("  \n", 400, "empty"),
        ("sepal_length,sepal_width,petal_width\n", 422, "no rows"),
        ("sepal_length,sepal_width,petal_width\n1,2,3,4\n", 400, "line 2 has 4 fields"),
        ('sepal_length,sepal_width,petal_width\n"1,2,3\n', 400, "not valid CSV"),
        ("sepal_length,sepal_width\n1,2\n", 422, "missing input column 'petal_width' (double)"),
        (
            "sepal_length,sepal_width,petal_width\n1,2,3\n1,abc,3\n",
            422,
            "column 'sepal_width' expects double, got 'abc' in row 2",
        ),
    ],
)
def test_bad_csv(text, status, says):
    with pytest.raises(ServingError) as caught:
        parse(text.encode(), DOUBLES, "text/csv")
    assert caught.value.status == status, caught.value.body
    assert says in caught.value.body["message"]


def test_csv_missing_values_and_non_utf8():
    text = "sepal_length,sepal_width,petal_width\n1,,3\n4,NA,6\n"
    pd.testing.assert_frame_equal(parse(text.encode(), DOUBLES, "text/csv"), mlflow_reads_csv(text, DOUBLES))
    with pytest.raises(ServingError) as caught:
        parse(b"a\n\xff\xfe\n", DOUBLES, "text/csv")
    assert caught.value.status == 400


def test_csv_without_a_signature_and_other_media_types():
    out = parse(b"a,b\n1,x\n", None, "text/csv")
    assert list(out.columns) == ["a", "b"] and out["a"].tolist() == [1]
    with pytest.raises(ServingError) as caught:
        parse(b"{}", DOUBLES, "text/plain")
    assert caught.value.status == 415 and "text/csv" in caught.value.body["message"]


# --------------------------------------------------------------------------- the predict call


def test_a_checked_input_is_not_checked_again_and_predicts_the_same(tmp_path):
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from raymaas.serving.batching import PredictItem, predict_batch
    from raymaas.serving.following import LoadedModel, without_input_check

    rows = wide_rows(40)
    frame = pd.DataFrame(rows).astype("float64")
    clf = LogisticRegression(max_iter=5000).fit(frame, np.arange(40) % 3)
    no_inference = {"pip_requirements": ["scikit-learn"]}  # MLflow would import packages to find them
    mlflow.sklearn.save_model(clf, tmp_path / "plain", signature=infer_signature(frame), **no_inference)
    model = mlflow.pyfunc.load_model(str(tmp_path / "plain"))
    twin = without_input_check(model)
    assert twin is not None and twin._model_impl is model._model_impl
    assert model.metadata.signature is not None  # the loaded model keeps its check
    loaded = LoadedModel("m", "1", None, model, model.metadata.signature, checked_model=twin)
    items = [PredictItem(loaded, parse(split(rows[i : i + 2], list(rows[0])), WIDE), None) for i in range(0, 40, 2)]
    merged = np.concatenate(predict_batch(items))
    assert merged.tolist() == model.predict(frame).tolist()
    # an input of another origin is checked as MLflow checks it
    with pytest.raises(ServingError):
        raise predict_batch([PredictItem(loaded, frame.drop(columns=["f3"]), None, checked=False)])[0]

    # a params schema stays on the twin: MLflow still fills in the params' defaults
    with_params = infer_signature(frame, params={"k": 1})
    mlflow.sklearn.save_model(clf, tmp_path / "params", signature=with_params, **no_inference)
    twin = without_input_check(mlflow.pyfunc.load_model(str(tmp_path / "params")))
    assert twin.metadata.signature.inputs is None and twin.metadata.signature.params == with_params.params


def test_class_probabilities_when_asked_and_bad_params_are_422(tmp_path):
    """A TorchClassifier declares a boolean `probabilities` param: asked, it answers the
    prediction and a named probability per class, through the unchecked twin as well."""
    import mlflow
    import torch

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.serving.following import without_input_check

    # A store of its own and an experiment of its own in it: the fluent API remembers the last
    # experiment an earlier test in this process set, which this store does not have.
    saved_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("probabilities", artifact_location=str(tmp_path / "artifacts"))
        x = np.random.default_rng(0).random((6, 4), dtype=np.float32)
        with mlflow.start_run(experiment_id=experiment):
            info = log_classifier(torch.nn.Linear(4, 2), x, classes=["ham", "spam"])
        model = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(saved_uri)
    signature = model.metadata.signature
    body = json.dumps({"inputs": x.tolist(), "params": {"probabilities": True}}).encode()
    data, params = parse_scoring_request(body, "application/json", signature)
    for predictor in (model, without_input_check(model)):
        frame = predictor.predict(data, params=params)
        assert list(frame.columns) == ["prediction", "probability_ham", "probability_spam"]
        assert set(frame["prediction"]) <= {"ham", "spam"}
        assert np.allclose(frame[["probability_ham", "probability_spam"]].sum(axis=1), 1.0)
        assert predictor.predict(data).tolist() == frame["prediction"].tolist()
    for bad, says in [({"probabilities": "maybe"}, "probabilities"), ({"top_k": 3}, "unknown params ['top_k']")]:
        with pytest.raises(ServingError) as err:
            parse_scoring_request(
                json.dumps({"inputs": x.tolist(), "params": bad}).encode(), "application/json", signature
            )
        assert err.value.status == 422 and says in str(err.value), str(err.value)
