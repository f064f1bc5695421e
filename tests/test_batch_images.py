"""Batch scoring of image models: a folder of PNG/JPEG files feeding a tensor [-1, C, H, W].

In-process and fast, but for the last test: no Ray, no MLflow store. The signature is built as
the supervised job logs an image model's, the input is a folder of small images written here,
the plan is made as `raymaas predict` makes it before Ray starts, and `score_table` (what each
model actor runs) is given a batch as Ray Data's read_binary_files hands one over, with a plain
Python model that keeps what it was given. The pixels are checked against the Pillow calls of
Ray Data's read_images, which the supervised job trains on.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from PIL import Image

from conftest import REPO
from raymaas.batch.job import PredictSpec, batch_rows
from raymaas.batch.plan import BYTES_COLUMN, PATH_COLUMN, plan_input
from raymaas.batch.scorer import ERROR_COLUMN, INPUT_COLUMN, decode_image, decode_images, score_table
from raymaas.specs import SpecError
from raymaas.supervised.images import channels_first

SIDE = 8


def signature(*shape: int) -> ModelSignature:
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]))


def write_image(path, size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG", seed: int = 0) -> bytes:
    """An image of size (width, height) in mode (P: a palette), random pixels; its file's bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA") if mode == "RGBA" else Image.fromarray(pixels[..., :3], "RGB").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path.read_bytes()


def read_images_pixels(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """What the supervised job trains on for a file: the Pillow calls of Ray Data's read_images
    (ray/data/_internal/datasource/image_datasource.py, ImageDatasource._read_stream: resized
    bilinear to (height, width) where it differs, then converted to the mode where it differs),
    then raymaas.supervised.images.channels_first."""
    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"
    image = Image.open(io.BytesIO(data))
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.BILINEAR)
    if image.mode != mode:
        image = image.convert(mode)
    return channels_first(np.asarray(image)[None])[0]


class Model:
    """A pyfunc stand-in for a classifier: "bright" or "dark" by each image's mean, keeping
    every input it was given."""

    def __init__(self):
        self.inputs: list[np.ndarray] = []

    def __call__(self, x):
        self.inputs.append(x)
        return np.where(x.reshape(len(x), -1).mean(axis=1) > 127.5, "bright", "dark").astype(object)


def binary_batch(plan) -> pa.Table:
    """Every file of the plan as read_binary_files(include_paths=True) reads it: bytes, path."""
    files = [f for u in plan.units for f in u.files]
    return pa.table({BYTES_COLUMN: pa.array([open(f, "rb").read() for f in files], pa.binary()), PATH_COLUMN: files})


def score(plan, batch: pa.Table):
    model = Model()
    out = score_table(
        batch,
        model,
        plan.features,
        [u.path for u in plan.units],
        list(plan.passthrough),
        "prediction",
        input_root=plan.root,
    )
    return out, model


# --------------------------------------------------------------------------- planning


def test_an_image_folder_is_planned_one_unit_a_folder(tmp_path):
    root = tmp_path / "photos"
    write_image(root / "cat" / "a.png", (20, 30))
    write_image(root / "cat" / "b.jpg", (8, 8), fmt="JPEG")
    write_image(root / "dog" / "c.jpeg", (9, 7), fmt="JPEG")
    write_image(root / "dog" / "puppies" / "d.PNG", (8, 8), "L")
    write_image(root / "loose.png", (8, 8))
    write_image(root / ".hidden.png", (8, 8))  # skipped, as Ray's and Spark's readers skip them
    write_image(root / "_drafts" / "e.png", (8, 8))
    (root / "notes.txt").write_text("not an image")

    plan = plan_input(str(root), "auto", signature(3, SIDE, SIDE), [], None, "prediction")

    assert plan.format == "images" and plan.root == str(root.resolve())
    features = plan.features
    assert (features.kind, features.tensor_shape, features.dtypes, features.image_mode) == (
        "image",
        (-1, 3, SIDE, SIDE),
        ("float32",),
        "RGB",
    )
    assert features.describe() == "tensor float32 [-1, 3, 8, 8] from image files, read as RGB 8x8"
    # The input folder's own images are named after it; a folder's, after its path in the input.
    assert [(u.name, u.num_rows) for u in plan.units] == [("photos", 1), ("cat", 2), ("dog", 1), ("dog__puppies", 1)]
    assert plan.num_rows == 5
    assert plan.units[1].path == str(root.resolve() / "cat")
    assert plan.units[1].files == (str(root.resolve() / "cat" / "a.png"), str(root.resolve() / "cat" / "b.jpg"))
    # Each output row's one kept column is its image's path, text even in a part of no scored row.
    assert plan.passthrough == (PATH_COLUMN,) and plan.passthrough_types == {PATH_COLUMN: pa.string()}


def test_a_grayscale_model_reads_its_images_as_mode_l(tmp_path):
    write_image(tmp_path / "in" / "a.png", (16, 16))
    plan = plan_input(str(tmp_path / "in"), "images", signature(1, 16, 16), [], None, "prediction")
    assert (plan.features.image_mode, [u.name for u in plan.units]) == ("L", ["in"])


def test_the_default_batch_of_an_image_model_fits_64_mib(tmp_path):
    write_image(tmp_path / "in" / "a.png", (8, 8))
    big = plan_input(str(tmp_path / "in"), "auto", signature(3, 224, 224), [], None, "prediction").features
    small = plan_input(str(tmp_path / "in"), "auto", signature(1, 16, 16), [], None, "prediction").features
    spec = PredictSpec(name="p", model="m", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    assert batch_rows(spec, big) == (64 << 20) // (3 * 224 * 224 * 4)  # 111 images of 602 KB
    assert batch_rows(spec, small) == 4096  # the default, as for a table
    given = PredictSpec(name="p", model="m", input=str(tmp_path / "in"), output=str(tmp_path / "out"), batch_size=500)
    assert batch_rows(given, big) == 500


NAMED = ModelSignature(inputs=Schema([ColSpec("double", "a"), ColSpec("double", "b")]))


@pytest.mark.parametrize(
    "model, message",
    [
        (
            NAMED,
            r"is a folder of 2 images \(\*\.png, \*\.jpg, \*\.jpeg\), but the model takes named columns \('a', 'b'\)",
        ),
        (signature(64), r"but the model takes a float32 tensor \[-1, 64\]: images feed a model whose signature"),
        (signature(4, SIDE, SIDE), r"but the model takes a float32 tensor \[-1, 4, 8, 8\]"),
        (signature(SIDE, SIDE, 3), r"but the model takes a float32 tensor \[-1, 8, 8, 3\]"),
    ],
    ids=["named-columns", "tensor-64", "four-channels", "channels-last"],
)
def test_an_image_folder_for_a_model_of_no_images_exits_2(model, message, tmp_path):
    write_image(tmp_path / "in" / "x" / "a.png", (8, 8))
    write_image(tmp_path / "in" / "y" / "b.jpg", (8, 8), fmt="JPEG")
    with pytest.raises(SpecError, match=message):
        plan_input(str(tmp_path / "in"), "auto", model, [], None, "prediction")


@pytest.mark.parametrize("name", ["in.parquet", "in.csv"])
def test_a_table_for_an_image_model_exits_2(name, tmp_path):
    frame = pd.DataFrame(np.zeros((2, 256)), columns=[f"p{i}" for i in range(256)])
    path = tmp_path / name
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    with pytest.raises(
        SpecError,
        match=r"the model takes a float32 tensor \[-1, 1, 16, 16\], L images of 16x16 pixels, but .*in\.\w+ is a "
        r"table: give a folder of its images",
    ):
        plan_input(str(path), "auto", signature(1, 16, 16), [], None, "prediction")


@pytest.mark.parametrize(
    "passthrough, feature_columns, prediction, message",
    [
        (["id"], None, "prediction", r"passthrough_columns \['id'\]: an image folder has no columns to pass through"),
        ([], ["a"], "prediction", r"feature_columns applies to tables"),
        ([], None, "path", r"prediction_column 'path' is the column naming each image"),
    ],
    ids=["passthrough", "feature-columns", "prediction-path"],
)
def test_options_of_tables_exit_2_on_an_image_folder(passthrough, feature_columns, prediction, message, tmp_path):
    write_image(tmp_path / "in" / "a.png", (8, 8))
    with pytest.raises(SpecError, match=message):
        plan_input(str(tmp_path / "in"), "auto", signature(3, SIDE, SIDE), passthrough, feature_columns, prediction)


def test_one_image_file_a_folder_with_none_and_a_mixed_folder_exit_2(tmp_path):
    write_image(tmp_path / "in" / "a.png", (8, 8))
    with pytest.raises(SpecError, match=r"a\.png is one image: give the folder of images to score"):
        plan_input(str(tmp_path / "in" / "a.png"), "auto", signature(3, SIDE, SIDE), [], None, "prediction")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SpecError, match=r"no Parquet or CSV files .* or images \(\*\.png, \*\.jpg, \*\.jpeg\) in it"):
        plan_input(str(tmp_path / "empty"), "auto", signature(3, SIDE, SIDE), [], None, "prediction")
    # A table beside images is a table (as the supervised job infers a folder's format): an image
    # model refuses it.
    pd.DataFrame({"a": [1.0]}).to_parquet(tmp_path / "in" / "labels.parquet")
    with pytest.raises(SpecError, match=r"labels\.parquet is a table"):
        plan_input(str(tmp_path / "in"), "auto", signature(3, SIDE, SIDE), [], None, "prediction")


# --------------------------------------------------------------------------- decoding and scoring


@pytest.mark.parametrize("channels", [1, 3], ids=["L", "RGB"])
@pytest.mark.parametrize(
    "size, mode, fmt",
    [
        ((SIDE, SIDE), "RGB", "PNG"),  # the model's size: no resize
        ((20, 30), "RGBA", "PNG"),
        ((5, 11), "L", "PNG"),
        ((17, 9), "P", "PNG"),  # a palette
        ((31, 12), "RGB", "JPEG"),
        ((SIDE, SIDE), "L", "JPEG"),
    ],
    ids=["rgb-same-size", "rgba", "gray", "palette", "jpeg", "gray-jpeg"],
)
def test_a_file_decodes_as_read_images_reads_it_for_training(size, mode, fmt, channels, tmp_path):
    data = write_image(tmp_path / "x", size, mode, fmt, seed=sum(size))
    shape = (channels, SIDE, SIDE)

    x = decode_image(data, shape)

    assert x.dtype == np.float32 and x.shape == shape
    np.testing.assert_array_equal(x, read_images_pixels(data, shape))
    assert 0 <= x.min() and x.max() <= 255


def test_files_that_do_not_decode_are_named_with_pillows_reason(tmp_path):
    good = write_image(tmp_path / "a.png", (SIDE, SIDE))
    truncated = write_image(tmp_path / "b.png", (64, 64))[:200]
    column = pa.array([b"not an image at all", good, truncated, b""], pa.binary())
    paths = ["cat/garbage.png", "cat/a.png", "dog/truncated.png", "dog/empty.jpg"]

    x, problems = decode_images(column, paths, (3, SIDE, SIDE), "float32")

    reasons = dict(problems)
    assert sorted(reasons) == [0, 2, 3]
    assert reasons[0] == "'cat/garbage.png' does not decode: UnidentifiedImageError: cannot identify image file"
    assert reasons[2].startswith("'dog/truncated.png' does not decode: OSError: ")
    assert reasons[3].startswith("'dog/empty.jpg' does not decode: UnidentifiedImageError")
    assert "BytesIO" not in " ".join(reasons.values())
    np.testing.assert_array_equal(x[1], read_images_pixels(good, (3, SIDE, SIDE)))
    assert not x[[0, 2, 3]].any()  # zeros where a file did not decode


def test_a_folder_is_scored_by_path_and_bad_files_rejected_with_why(tmp_path):
    root = tmp_path / "in"
    write_image(root / "cat" / "a.png", (20, 30), "RGBA", seed=1)
    write_image(root / "cat" / "b.jpg", (SIDE, SIDE), "RGB", "JPEG", seed=2)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    write_image(root / "dog" / "c.png", (5, 11), "L", seed=3)
    write_image(root / "d.png", (SIDE, SIDE), seed=4)
    plan = plan_input(str(root), "auto", signature(3, SIDE, SIDE), [], None, "prediction")
    batch = binary_batch(plan)
    # Sliced and in two chunks, as Ray Data hands over parts of blocks: offsets must not matter.
    batch = pa.concat_tables([batch.slice(0, 2), batch.slice(2)])

    out, model = score(plan, batch)

    assert out.column(PATH_COLUMN).to_pylist() == ["d.png", "cat/a.png", "cat/b.jpg", "cat/broken.png", "dog/c.png"]
    # Each row's unit: the folder it lies in, by its place in the plan's units.
    assert out.column("__raymaas_unit").to_pylist() == [0, 1, 1, 1, 2]
    errors = out.column(ERROR_COLUMN).to_pylist()
    assert errors[3].startswith("'cat/broken.png' does not decode: UnidentifiedImageError")
    assert errors[:3] + errors[4:] == [None] * 4
    assert INPUT_COLUMN not in out.column_names  # a rejected image is named by its path, not copied
    [given] = model.inputs
    good = [0, 1, 2, 4]
    files = [f for u in plan.units for f in u.files]
    expected = np.stack([read_images_pixels(open(files[i], "rb").read(), (3, SIDE, SIDE)) for i in good])
    assert given.dtype == np.float32 and given.shape == (4, 3, SIDE, SIDE)
    np.testing.assert_array_equal(given, expected)
    predictions = out.column("prediction").to_pylist()
    assert [predictions[i] for i in good] == list(Model()(expected)) and predictions[3] is None


# --------------------------------------------------------------------------- on Ray

# The command's own function, as `raymaas predict` calls it (as tests/test_batch.py runs it).
PREDICT = "import sys; from raymaas.cli.predict import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.slow  # a batch job on Ray
def test_a_folder_of_images_is_scored_with_bad_files_to_errors(ray_head, mlflow_client, tmp_path):
    """A registered TorchClassifier of RGB 12x12 images (a tiny CNN, logged as the supervised
    job logs one) scores two class folders of PNGs of other sizes and modes: one output row per
    image, named by its path, with the model's own prediction on the pixels read_images gives;
    a file that does not decode goes to the errors, named."""
    import mlflow
    import torch

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.tracking import ensure_experiment

    shape = (3, 12, 12)
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    example = np.random.default_rng(0).uniform(0, 255, size=(8, *shape)).astype(np.float32)
    with mlflow.start_run(experiment_id=ensure_experiment(mlflow_client, "batch-images")):
        info = log_classifier(module, example, classes=["cat", "dog"])
    version = mlflow.register_model(info.model_uri, "batch-images").version
    mlflow_client.set_registered_model_alias("batch-images", "champion", version)

    source = tmp_path / "photos"
    layout = [
        ("cat/0.png", (12, 12), "RGB"),
        ("cat/1.png", (20, 16), "RGBA"),
        ("cat/2.png", (8, 8), "L"),
        ("dog/3.png", (12, 12), "L"),
        ("dog/4.png", (30, 9), "RGB"),
        ("dog/5.png", (12, 12), "P"),
    ]
    contents = {name: write_image(source / name, size, mode, seed=i) for i, (name, size, mode) in enumerate(layout)}
    (source / "dog" / "garbage.png").write_bytes(np.random.default_rng(9).bytes(300))
    out = tmp_path / "scored"

    proc = subprocess.run(
        [sys.executable, "-c", PREDICT, "batch-images@champion", str(source), str(out)],
        env=ray_head.env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    scored = pd.read_parquet(out).set_index(PATH_COLUMN).sort_index()
    assert list(scored.index) == sorted(contents) and list(scored.columns) == ["prediction"]
    x = np.stack([read_images_pixels(contents[name], shape) for name in scored.index])
    expected = mlflow.pyfunc.load_model(f"models:/batch-images/{version}").predict(x)
    assert list(scored["prediction"]) == list(expected)

    errors = pd.read_parquet(tmp_path / "scored-errors")
    assert list(errors.columns) == [PATH_COLUMN, "error"]
    assert list(errors[PATH_COLUMN]) == ["dog/garbage.png"]
    assert errors["error"][0].startswith("'dog/garbage.png' does not decode: UnidentifiedImageError")
    assert "1 rejected" in proc.stdout and "2 folders" in proc.stdout
