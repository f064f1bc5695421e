"""Batch scoring (`raymaas predict`, `python -m jobs.predict`) on the session's Ray head and MLflow store.

Real models (TorchClassifier, logged with log_classifier and registered), real files, real
Ray Data: the jobs join the session head, whose Python lacks raymaas, so the model actors run
the platform's shipped code. The checks that must stop a job before it starts run in-process
and are fast; four jobs run on Ray: a CSV file, a Parquet folder stopped half way and resumed,
and a file three times the object store of a Ray started with Ray's minimum store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_job, wait_for
from raymaas.batch.job import PredictSpec
from raymaas.specs import load_spec

COLUMNS = ["a", "b", "c", "d"]
WIDTH = 16  # the tensor model's features
WIDE = 256  # the wide tensor model's: fewer rows for the same bytes in the larger-than-memory test
EXPERIMENT = "batch-models"


@pytest.fixture(scope="module")
def models(ray_head, mlflow_client):
    """Three registered TorchClassifiers (champion each), and the same models loaded here:
    named columns a..d; a float32 tensor [-1, 16]; a float32 tensor [-1, 256]."""
    import mlflow
    import torch

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.tracking import ensure_experiment, get_client

    client = get_client(ray_head.tracking_uri)
    experiment_id = ensure_experiment(client, EXPERIMENT)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    specs = {
        "batch-columns": (torch.nn.Linear(4, 3), COLUMNS),
        "batch-tensor": (torch.nn.Sequential(torch.nn.Linear(WIDTH, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)), None),
        "batch-wide": (torch.nn.Linear(WIDE, 3), None),
    }
    loaded = {}
    for name, (module, columns) in specs.items():
        example = rng.normal(size=(8, len(columns) if columns else module_width(module))).astype(np.float32)
        with mlflow.start_run(experiment_id=experiment_id):
            info = log_classifier(module, example, feature_columns=columns)
        version = mlflow.register_model(info.model_uri, name).version
        client.set_registered_model_alias(name, "champion", version)
        loaded[name] = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return loaded


def module_width(module) -> int:
    first = module[0] if hasattr(module, "__getitem__") else module
    return first.in_features


def predict_cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """`raymaas predict ARGS` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-c", PREDICT, *args], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout
    )


# The command's own function, as `raymaas predict` calls it (`python -m raymaas.cli predict` once
# cli/main.py lists the command).
PREDICT = "import sys; from raymaas.cli.predict import main; sys.exit(main(sys.argv[1:]))"


def run_of(client, stdout: str):
    line = next(x for x in stdout.splitlines() if x.startswith("raymaas: run "))
    return client.get_run(line.split()[2])


def runs_in(client, experiment: str) -> int:
    exp = client.get_experiment_by_name(experiment)
    return len(client.search_runs([exp.experiment_id])) if exp else 0


def tensor_frame(n: int, width: int, first_id: int, seed: int) -> pd.DataFrame:
    x = np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(width)])
    frame.insert(0, "id", np.arange(first_id, first_id + n, dtype=np.int64))
    return frame


# --------------------------------------------------------------------------- on Ray


@pytest.mark.slow  # a batch job on Ray
def test_csv_with_named_columns_bad_rows_to_errors(models, ray_head, mlflow_client, tmp_path):
    """Columns matched by name (reordered, one extra), an id passed through, one output row per
    good row with its class probabilities, a null and a word rejected with their reasons,
    tracked in the model's experiment."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(300, 4)), columns=COLUMNS)
    frame.insert(0, "id", np.arange(1000, 1300))
    frame["note"] = "x"
    frame = frame[["id", "d", "note", "b", "a", "c"]].astype(object)
    frame.loc[7, "b"] = None
    frame.loc[11, "c"] = "oops"
    source = tmp_path / "rows.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "scored"

    proc = predict_cli(
        "batch-columns@champion", str(source), str(out), "--passthrough", "id", "--probabilities", env=ray_head.env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    scored = pd.read_parquet(out)
    probabilities = ["probability_0", "probability_1", "probability_2"]  # one per class, named
    assert list(scored.columns) == ["id", "prediction", *probabilities]
    np.testing.assert_allclose(scored[probabilities].sum(axis=1), 1.0, rtol=1e-5)
    good = frame.drop(index=[7, 11])
    assert sorted(scored["id"]) == list(good["id"])
    expected = models["batch-columns"].predict(good[COLUMNS].astype(np.float32))
    scored = scored.set_index("id").loc[good["id"]]
    assert scored["prediction"].dtype == np.int64
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), expected)

    errors = pd.read_parquet(tmp_path / "scored-errors").set_index("id")
    assert errors.loc[1007, "error"] == "null in column 'b'"
    assert errors.loc[1011, "error"] == "column 'c': 'oops' is not a number"
    assert json.loads(errors.loc[1011, "input"])["c"] == "oops"
    assert len(errors) == 2

    run = run_of(mlflow_client, proc.stdout)
    mv = mlflow_client.get_model_version_by_alias("batch-columns", "champion")
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == mlflow_client.get_run(mv.run_id).info.experiment_id
    assert run.data.metrics["rows_scored"] == 298
    assert run.data.metrics["rows_rejected"] == 2
    assert run.data.metrics["rows_per_second"] > 0 and run.data.metrics["seconds"] > 0
    tags = run.data.tags
    assert (tags["raymaas.job_kind"], tags["raymaas.model_name"], tags["raymaas.model_version"]) == (
        "predict",
        "batch-columns",
        str(mv.version),
    )
    assert tags["raymaas.input"] == str(source) and tags["raymaas.output"] == str(out)
    assert "2 rejected" in proc.stdout


@pytest.mark.slow  # a batch job on Ray
def test_parquet_folder_stopped_half_way_resumes_without_rescoring(models, ray_head, mlflow_client, tmp_path):
    """`ray job stop` half way (SIGTERM): the run is KILLED with some files committed; run again
    with the same run name, it skips those (their files untouched) and scores the rest, in the
    same MLflow run: every row once."""
    source = tmp_path / "table"
    source.mkdir()
    n_files, rows = 8, 1500
    for k in range(n_files):
        tensor_frame(rows, WIDTH, k * rows, seed=k).to_parquet(source / f"part-{k:02d}.parquet")
    out = tmp_path / "scores"
    spec = tmp_path / "predict.yaml"
    spec.write_text(
        f"kind: predict\nname: resume-test\nmodel: batch-tensor\ninput: {source}\noutput: {out}\n"
        "passthrough_columns: [id]\nactors: 1\nmlflow: {run_name: resume-me}\n"
    )
    # Batches of 4 rows: slow enough to be stopped after its first file or few.
    log = tmp_path / "first.log"  # a file, not a pipe: a wait that times out reads it
    first = subprocess.Popen(
        [sys.executable, "-m", "jobs.predict", str(spec), "--set", "batch_size=4"],
        env=ray_head.env,
        cwd=str(REPO),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: list(out.glob("part-*.parquet")) or first.poll() is not None,
            240,
            "a first part file",
            0.05,
            seen=lambda: f"the job's output:\n{log.read_text()[-3000:]}",
        )
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    output = log.read_text()
    assert first.returncode == 128 + signal.SIGTERM, output[-4000:]
    committed = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}
    assert 1 <= len(committed) < n_files, output[-3000:]
    (killed,) = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string="tags.`raymaas.job_key` = 'resume-me'",
    )
    assert killed.info.status == "KILLED"

    second = run_job(["jobs.predict", str(spec)], env=ray_head.env)
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"{len(committed)} of {n_files} files scored by an earlier attempt" in second.stdout
    for name, stamp in committed.items():
        path = out / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, f"{name} was written again"
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-part-{k:02d}.parquet" for k in range(n_files)]
    assert not list(out.glob(".*.tmp"))

    scored = pd.read_parquet(out).sort_values("id")
    np.testing.assert_array_equal(scored["id"].to_numpy(), np.arange(n_files * rows))
    x = np.concatenate(
        [tensor_frame(rows, WIDTH, k * rows, seed=k).drop(columns="id").to_numpy() for k in range(n_files)]
    )
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), models["batch-tensor"].predict(x))

    run = run_of(mlflow_client, second.stdout)
    assert run.info.run_id == killed.info.run_id  # one run across both attempts
    assert run.info.status == "FINISHED"
    assert run.data.tags["raymaas.resumed"] == "true"
    assert run.data.metrics["rows_scored"] == n_files * rows
    assert run.data.metrics["rows_rejected"] == 0


@pytest.mark.slow  # a batch job on Ray
def test_input_three_times_the_object_store_streams_through(models, ray_head, mlflow_client, tmp_path):
    """A fresh local Ray with Ray's smallest object store (75 MiB) scores a 240 MB file: it
    streams through without spilling, and every row comes out exactly once."""
    store = 75 * 1024 * 1024
    n = 3 * store // (WIDE * 4) + 1000
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, WIDE)).astype(np.float32)
    table = pa.table({"id": np.arange(n), **{f"x{i}": x[:, i] for i in range(WIDE)}})
    del x
    source = tmp_path / "big.parquet"
    pq.write_table(table, source, row_group_size=8192, compression="none")
    assert table.nbytes > 3 * store
    del table
    out = tmp_path / "big-scores"
    local = {k: v for k, v in ray_head.env.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}

    proc = predict_cli(
        "batch-wide", str(source), str(out), "--passthrough", "id", "--object-store-memory", str(store), env=local
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ids = pq.read_table(out, columns=["id"]).column("id").to_numpy()
    assert len(ids) == n
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    metrics = run_of(mlflow_client, proc.stdout).data.metrics
    assert metrics["rows_scored"] == n
    assert metrics["spilled_bytes"] == 0, "blocks were spilled to disk: the input did not stream"
    assert metrics["fallback_bytes_max"] == 0, "blocks were held outside the object store's memory"


# --------------------------------------------------------------------------- before anything starts


def _predict_here(*args: str) -> int:
    from raymaas.cli.predict import main

    return main(list(args))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing column", "lacks the model's input column 'c'"),
        ("wrong type", "string, the model expects double (a Parquet column's type is its own)"),
        ("text column", "column 'd' holds text ('red', 'green', 'blue', ...) where the model expects double"),
        ("tensor width", "gives 15 feature columns"),
        ("unknown alias", "has no alias 'nope'"),
        ("probabilities", "cannot return class probabilities"),
        ("output in the way", "exists and is not empty"),
    ],
)
def test_bad_jobs_exit_2_before_ray_or_a_run(case, message, models, ray_head, mlflow_client, tmp_path, capsys):
    import ray

    frame = pd.DataFrame(np.ones((5, 4)), columns=COLUMNS)
    frame.insert(0, "id", range(5))
    model, out, extra = "batch-columns", tmp_path / "out", []
    if case == "missing column":
        source = tmp_path / "in.parquet"
        frame.drop(columns="c").to_parquet(source)
    elif case == "wrong type":
        source = tmp_path / "in.parquet"
        frame.assign(b="1.5").to_parquet(source)
    elif case == "text column":
        source = tmp_path / "in.csv"
        frame.assign(d=["red", "green", "blue", "red", "red"]).to_csv(source, index=False)
    elif case == "tensor width":
        source = tmp_path / "in.parquet"
        tensor_frame(5, WIDTH - 1, 0, seed=0).to_parquet(source)
        model = "batch-tensor"
    elif case == "unknown alias":
        source = tmp_path / "in.parquet"
        frame.to_parquet(source)
        model = "batch-columns@nope"
    elif case == "probabilities":  # a model registered by hand, without a `probabilities` param
        import mlflow
        from mlflow.models import infer_signature
        from sklearn.linear_model import LogisticRegression

        source = tmp_path / "in.parquet"
        frame.to_parquet(source)
        clf = LogisticRegression().fit(frame[COLUMNS], [0, 1, 0, 1, 1])
        with mlflow.start_run(experiment_id=mlflow_client.get_experiment_by_name(EXPERIMENT).experiment_id):
            info = mlflow.sklearn.log_model(
                clf, name="model", signature=infer_signature(frame[COLUMNS], clf.predict(frame[COLUMNS]))
            )
        version = mlflow.register_model(info.model_uri, "batch-sklearn").version
        model, extra = f"models:/batch-sklearn/{version}", ["--probabilities"]
    else:
        source = tmp_path / "in.parquet"
        frame.to_parquet(source)
        out.mkdir()
        (out / "notes.txt").write_text("someone's")
    runs_before, ray_before = runs_in(mlflow_client, EXPERIMENT), ray.is_initialized()

    code = _predict_here(model, str(source), str(out), "--passthrough", "id", *extra)

    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert runs_in(mlflow_client, EXPERIMENT) == runs_before
    assert ray.is_initialized() == ray_before
    if case == "output in the way":
        assert (out / "notes.txt").exists()
        assert _predict_here(model, str(source), str(out), "--overwrite") == 2  # not ours to delete
        assert "would delete files raymaas did not write" in capsys.readouterr().err


def test_output_of_another_run_is_refused_and_overwrite_replaces_it(models, ray_head, mlflow_client, tmp_path):
    """A folder an earlier run wrote: continued only under that run's name, replaced by overwrite."""
    from raymaas.batch.output import prepare_folders
    from raymaas.batch.plan import marker_content, plan_output, resolve_model
    from raymaas.specs import SpecError

    model = resolve_model(mlflow_client, "batch-tensor")
    out = tmp_path / "out"
    fresh = plan_output(str(out), "first", model, "/data", overwrite=False)
    prepare_folders(fresh, marker_content("first", model, "/data"))
    (out / "part-a.parquet").write_bytes(b"scored")
    errors = tmp_path / "out-errors"
    errors.mkdir()
    (errors / "part-a.parquet").write_bytes(b"rejected")

    with pytest.raises(SpecError, match="written by run 'first'.*mlflow.run_name=first"):
        plan_output(str(out), "second", model, "/data", overwrite=False)
    with pytest.raises(SpecError, match="not /elsewhere"):
        plan_output(str(out), "first", model, "/elsewhere", overwrite=False)
    resumed = plan_output(str(out), "first", model, "/data", overwrite=False)
    assert resumed.resumed and resumed.done == {"a"}
    replaced = plan_output(str(out), "second", model, "/data", overwrite=True)
    prepare_folders(replaced, marker_content("second", model, "/data"))
    assert [p.name for p in out.iterdir()] == ["_raymaas_predict.json"] and not errors.exists()


# --------------------------------------------------------------------------- the scorer, without Ray


PICKY_MODEL = '''
import mlflow
import numpy as np


class Picky(mlflow.pyfunc.PythonModel):
    """Scores rows with a < 100; raises on a batch holding any other."""

    def predict(self, context, model_input, params=None):
        a = model_input["a"].to_numpy()
        if (a >= 100).any():
            raise ValueError(f"a={a[a >= 100][0]:g} is out of range")
        return (a > 0).astype(np.int64)


mlflow.models.set_model(Picky())
'''


def test_rows_the_model_rejects_are_found_and_the_rest_scored(ray_head, tmp_path):
    """A pyfunc that raises on a batch with a bad row: bisection finds exactly the bad rows,
    the rest are scored as the model scores them alone; a model that rejects everything fails."""
    import mlflow
    from mlflow.models import infer_signature

    from raymaas.batch.plan import Features
    from raymaas.batch.scorer import ERROR_COLUMN, ModelFailed, score_table

    code = tmp_path / "picky.py"
    code.write_text(PICKY_MODEL)
    example = pd.DataFrame({"a": [1.0, -1.0]})
    with mlflow.start_run(experiment_id=mlflow.set_experiment(EXPERIMENT).experiment_id):
        info = mlflow.pyfunc.log_model(
            name="picky", python_model=str(code), signature=infer_signature(example, np.array([1, 0]))
        )
    model = mlflow.pyfunc.load_model(info.model_uri)
    calls = []

    def predict(x):
        calls.append(len(x))
        return model.predict(x)

    a = np.linspace(-50, 50, 64)
    a[[5, 40]] = [150.0, 999.0]
    batch = pa.table({"id": np.arange(64), "a": a, "path": ["/in/f.parquet"] * 64})
    features = Features("columns", ("a",), ("float64",))

    out = score_table(batch, predict, features, ["/in/f.parquet"], ["id"], "prediction")

    errors = out.column(ERROR_COLUMN).to_pylist()
    assert [i for i, e in enumerate(errors) if e] == [5, 40]
    assert errors[5] == "the model raised ValueError: a=150 is out of range"
    good = np.setdiff1d(np.arange(64), [5, 40])
    np.testing.assert_array_equal(np.asarray(out.column("prediction").to_pylist())[good], (a[good] > 0).astype(int))
    assert out.column("prediction").null_count == 2
    assert len(calls) <= 1 + 2 * 2 * 6  # two bad rows in 64: a few halvings each, not a call per row

    with pytest.raises(ModelFailed, match="every one of the 64 rows of its first batch"):
        score_table(
            batch.set_column(1, "a", pa.array(a + 1000)), predict, features, ["/in/f.parquet"], ["id"], "p", True
        )


def test_shipped_specs_validate():
    for name in ("predict_digits", "predict_digits_debug"):
        spec = load_spec(PredictSpec, REPO / "jobs" / "specs" / f"{name}.yaml")
        assert spec.passthrough_columns == ["id", "label"]
        assert os.path.isabs(spec.input) and os.path.isabs(spec.output)


def test_object_store_sizes_and_cluster_addresses_are_checked(tmp_path):
    from raymaas.batch.job import run_predict
    from raymaas.specs import SpecError, validate_spec

    base = {"name": "p", "model": "m", "input": str(tmp_path / "in"), "output": str(tmp_path / "out")}
    assert validate_spec(PredictSpec, {**base, "object_store_memory": "100MB"}).object_store_memory == 10**8
    with pytest.raises(SpecError, match="at least"):
        validate_spec(PredictSpec, {**base, "object_store_memory": "10MB"})
    with pytest.raises(SpecError, match="inside the input"):
        validate_spec(PredictSpec, {**base, "output": str(tmp_path / "in" / "out")})
    with pytest.raises(SpecError, match="submit it"):
        run_predict(validate_spec(PredictSpec, base), address="http://127.0.0.1:8265")


def test_actors_take_a_fixed_pool_or_a_range_and_name_the_field(tmp_path, capsys):
    from raymaas.batch.job import describe_actors
    from raymaas.specs import SpecError, validate_spec

    base = {"name": "p", "model": "m", "input": str(tmp_path / "in"), "output": str(tmp_path / "out")}
    assert validate_spec(PredictSpec, base).actor_range == (2, 2)  # the default: a fixed pool of 2
    for given, expected in [(3, (3, 3)), ([1, 4], (1, 4)), ("1:4", (1, 4)), ("2", (2, 2)), ([2, 2], (2, 2))]:
        spec = validate_spec(PredictSpec, {**base, "actors": given})
        assert spec.actor_range == expected, given
    # a YAML spec (and --set) writes a range as a list, and the logged spec.yaml reads back the same
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"name: p\nmodel: m\ninput: {tmp_path / 'in'}\noutput: {tmp_path / 'out'}\nactors: [1, 4]\n")
    spec = load_spec(PredictSpec, spec_file)
    assert spec.actors == (1, 4) and spec.model_dump(mode="json")["actors"] == [1, 4]
    # a list, or MIN:MAX (which YAML 1.1 alone would read as the base-60 number 126: specs read it as text)
    assert load_spec(PredictSpec, spec_file, ["actors=[2, 6]"]).actor_range == (2, 6)
    assert load_spec(PredictSpec, spec_file, ["actors=2:6"]).actor_range == (2, 6)
    spec_file.write_text(spec_file.read_text().replace("actors: [1, 4]", "actors: 1:4"))
    assert load_spec(PredictSpec, spec_file).actor_range == (1, 4)
    spec_file.write_text(spec_file.read_text().replace("actors: 1:4", "actors: [1, 4]"))
    assert validate_spec(PredictSpec, {**base, **spec.model_dump(mode="json")}).actor_range == (1, 4)
    assert describe_actors((1, 4)) == "1 to 4 actors" and describe_actors((1, 1)) == "1 actor"
    for bad, message in [
        ([3, 1], "MIN 3 is more than MAX 1"),
        ("3:1", "MIN 3 is more than MAX 1"),
        (0, "must be at least 1"),
        ([0, 4], "MIN must be at least 1"),
        ([1, 2, 3], "a range is [MIN, MAX]"),
        ("many", "not a whole number"),
        (1.5, "not a whole number"),
    ]:
        with pytest.raises(SpecError, match="actors: ") as caught:
            validate_spec(PredictSpec, {**base, "actors": bad})
        assert message in str(caught.value), (bad, str(caught.value))
    # the old name: a fixed pool, with a warning; never beside actors
    capsys.readouterr()
    assert validate_spec(PredictSpec, {**base, "concurrency": 3}).actor_range == (3, 3)
    assert "concurrency is deprecated: write actors: 3" in capsys.readouterr().err
    with pytest.raises(SpecError, match="concurrency is the old name of actors: give actors only"):
        validate_spec(PredictSpec, {**base, "concurrency": 3, "actors": [1, 4]})
    with pytest.raises(SpecError, match="concurrency .* at least 1"):
        validate_spec(PredictSpec, {**base, "concurrency": 0})


def test_predict_options_build_the_actor_pool(tmp_path, capsys):
    import argparse

    from raymaas.cli.predict import configure, spec_from_args
    from raymaas.specs import validate_spec

    parser = argparse.ArgumentParser()
    configure(parser)

    def spec_of(*options: str) -> PredictSpec:
        args = parser.parse_args(["m", str(tmp_path / "in"), str(tmp_path / "out"), *options])
        return validate_spec(PredictSpec, spec_from_args(args))

    assert spec_of().actor_range == (2, 2)
    assert spec_of("--actors", "1:4").actor_range == (1, 4)
    assert spec_of("--actors", "3").actor_range == (3, 3)
    assert spec_of("--concurrency", "3").actor_range == (3, 3)  # the old option: actors 3, and a warning
    assert "concurrency is deprecated" in capsys.readouterr().err
    for options, message in [
        (["--actors", "4:1"], "argument --actors: MIN 4 is more than MAX 1"),
        (["--actors", "0"], "argument --actors: must be at least 1"),
        (["--actors", "0:2"], "argument --actors: MIN must be at least 1"),
        (["--actors", "2", "--concurrency", "2"], "argument --concurrency: not allowed with argument --actors"),
    ]:
        with pytest.raises(SystemExit) as caught:
            spec_of(*options)
        assert caught.value.code == 2
        assert message in capsys.readouterr().err, options
