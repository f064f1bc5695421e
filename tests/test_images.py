"""Image folders (raymaas.supervised.images): one sub-folder of PNG or JPEG files per class,
resized to data.image_size in data.image_mode, trained by the supervised job and registered
with a float32 [n, channels, height, width] signature of 0-255 pixels.

Without Ray: the spec's fields and what it refuses before Ray (a folder of one class, of no
images, a missing image_size, a table's fields), the file that does not decode (counted and
named, the job goes on), the stratified split, the augmentations, the per-channel
standardisation, the cnn at image sizes, the model as the publish tail logs it, and
`raymaas sample-data digit-images`. On the session's head: the debug spec trained on the
written digits with one broken file among them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_job
from raymaas.specs import SpecError, load_spec, validate_spec
from raymaas.supervised import SupervisedSpec
from raymaas.supervised.data import ImageData, Targets
from raymaas.supervised.images import (
    augment_batch,
    channels_first,
    random_crop,
    random_flip,
    scan_image_folder,
    split_files,
    write_digit_images,
)
from raymaas.supervised.models import CNNConfig, build_model, build_network

DEBUG = REPO / "jobs/specs/digit_images_cnn_debug.yaml"
FULL = REPO / "jobs/specs/digit_images_cnn.yaml"
BROKEN = b"this is no PNG, whatever its name says" * 4


def _png(path: Path, value: int = 128, size: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size if mode == "L" else (*size, 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def _spec(source, **data) -> dict:
    return {"name": "images", "data": {"source": str(source), "image_size": 16, **data}, "model": {"name": "cnn"}}


def _refused(raw: dict) -> str:
    with pytest.raises(SpecError) as err:
        validate_spec(SupervisedSpec, raw)
    return str(err.value)


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory) -> Path:
    """200 of the bundled digits as `raymaas sample-data digit-images` writes them."""
    folder = tmp_path_factory.mktemp("images") / "digits"
    assert write_digit_images(folder, 200) == 200
    return folder


# --------------------------------------------------------------------------- no Ray


def test_sample_data_writes_a_folder_per_digit(tmp_path):
    from raymaas.cli.main import main

    folder = tmp_path / "digit-images"
    assert main(["sample-data", "digit-images", str(folder), "--rows", "120"]) == 0
    classes = sorted(p.name for p in folder.iterdir())
    assert classes == [str(d) for d in range(10)]
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 120 and all(p.parent.name in classes for p in files)
    with Image.open(files[0]) as image:
        assert image.mode == "L" and image.size == (16, 16)
        pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.max() > 200  # 0-16 scaled to 0-255
    (tmp_path / "a-file").write_text("x")
    assert main(["sample-data", "digit-images", str(tmp_path / "a-file")]) == 2


def test_the_shipped_specs_take_the_image_folder(small_digits):
    for path in (DEBUG, FULL):
        spec = load_spec(SupervisedSpec, path, [f"data.source={small_digits}"])
        assert spec.data.format == "images" and spec.model.name == "cnn"
        assert spec.data.image_size == 16 and spec.data.image_mode == "L" and spec.data.augment == ["crop"]
    rectangle = validate_spec(SupervisedSpec, _spec(small_digits, image_size=[12, 20], augment=["flip", "crop"]))
    assert rectangle.data.image_size == (12, 20) and rectangle.data.image_mode == "RGB"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"image_size": None}, "data.image_size: an image folder needs the size its images are resized to"),
        ({"image_size": 0}, "an int > 0 (a square), or [height, width] of ints > 0"),
        ({"image_mode": "CMYK"}, "data.image_mode: Input should be 'L' or 'RGB'"),
        ({"augment": ["rotate"]}, "Input should be 'flip' or 'crop'"),
        ({"label_column": "digit"}, "an image folder's labels are its sub-folder names"),
        ({"feature_columns": ["pixel"]}, "data.feature_columns: for a table, not an image folder"),
        ({"impute": "mean"}, "data.impute: for a table, not an image folder"),
    ],
)
def test_bad_image_fields_are_refused(small_digits, data, message):
    text = _refused(_spec(small_digits, **data))
    assert message in text, text


def test_image_fields_and_other_tasks_or_models_are_refused(small_digits):
    assert "data.augment: for an image folder (format images), not the built-in set 'digits'" in _refused(
        {"name": "x", "data": {"source": "digits", "augment": ["flip"]}}
    )
    text = _refused({**_spec(small_digits), "task": "regression"})
    assert "an image folder trains task classification" in text, text
    text = _refused({**_spec(small_digits), "model": {"name": "gru"}})
    assert "model gru reads sequences, not images" in text, text
    # a family that flattens its input takes images too
    assert validate_spec(SupervisedSpec, {**_spec(small_digits), "model": {"name": "mlp"}}).model.name == "mlp"


def test_folders_that_cannot_train_are_refused(tmp_path):
    _png(tmp_path / "one" / "cat" / "a.png")
    assert "has one sub-folder (cat): an image folder needs a sub-folder for each of 2 or more classes" in _refused(
        _spec(tmp_path / "one")
    )
    (tmp_path / "none" / "cat").mkdir(parents=True)
    (tmp_path / "none" / "dog").mkdir()
    (tmp_path / "none" / "dog" / "notes.txt").write_text("no image here")
    assert "cannot infer the format" in _refused(_spec(tmp_path / "none"))
    text = _refused(_spec(tmp_path / "none", format="images"))
    assert "2 class folders" in text and "(cat, dog) hold no image that decodes" in text, text
    _png(tmp_path / "empty" / "cat" / "a.png")
    (tmp_path / "empty" / "dog").mkdir()
    assert "1 class folder of" in _refused(_spec(tmp_path / "empty"))
    _png(tmp_path / "loose" / "cat" / "a.png")
    _png(tmp_path / "loose" / "dog" / "a.png")
    _png(tmp_path / "loose" / "stray.png")
    assert "1 image file directly in" in _refused(_spec(tmp_path / "loose"))
    _png(tmp_path / "nested" / "cat" / "a.png")
    _png(tmp_path / "nested" / "dog" / "puppies" / "a.png")
    assert "dog/puppies/a.png" in _refused(_spec(tmp_path / "nested"))
    (tmp_path / "broken" / "cat").mkdir(parents=True)
    (tmp_path / "broken" / "cat" / "a.png").write_bytes(BROKEN)
    _png(tmp_path / "broken" / "dog" / "a.png")
    text = _refused(_spec(tmp_path / "broken"))
    assert "(cat) holds no image that decodes" in text and "1 file did not: cat/a.png" in text, text


def test_a_file_that_does_not_decode_is_counted_and_named(tmp_path):
    for name in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / "pets" / name / f"{i}.png", value=40 * i, size=(10, 12), mode="RGB")
    (tmp_path / "pets" / "dog" / "broken.png").write_bytes(BROKEN)
    (tmp_path / "pets" / "cat" / "cut.JPG").write_bytes(b"\xff\xd8\xff\xe0" + BROKEN)
    spec = validate_spec(SupervisedSpec, _spec(tmp_path / "pets", image_size=[8, 8]))  # accepted: the job goes on
    facts = scan_image_folder(spec.data.source, spec.data.image_size, spec.data.image_mode)
    assert facts.classes == ["cat", "dog"] and facts.n_images == 6
    assert [p for p, _ in facts.undecodable] == ["cat/cut.JPG", "dog/broken.png"]
    line = facts.undecodable_line()
    assert line.startswith("2 files did not decode and are left out: cat/cut.JPG, dog/broken.png"), line
    assert all(not p.endswith(("broken.png", "cut.JPG")) for f in facts.files.values() for p in f)


def test_the_check_of_the_digits_is_cheap(tmp_path):
    write_digit_images(tmp_path / "digits")
    started = time.perf_counter()
    facts = scan_image_folder(tmp_path / "digits", 16, "L")
    assert facts.n_images == 1797 and not facts.undecodable
    assert time.perf_counter() - started < 10  # about 1 s on the 2-core machine


def test_the_split_is_stratified_by_class(small_digits):
    facts = scan_image_folder(small_digits, 16, "L")
    split = split_files(facts, 0.2, seed=0)
    assert len(split.train) + len(split.validation) == facts.n_images == 200
    for name in facts.classes:
        n = len(facts.files[name])
        n_val = sum(c == name for _, c in split.validation)
        assert n_val == round(n * 0.2), (name, n, n_val)
    assert len({c for _, c in split.train[:30]}) > 5  # the classes shuffled together
    assert split_files(facts, 0.2, seed=0) == split
    assert split_files(facts, 0.2, seed=1) != split


def test_augmentations_keep_the_shape_and_move_pixels():
    generator = torch.Generator().manual_seed(0)
    x = torch.arange(64 * 3 * 6 * 8, dtype=torch.float32).reshape(64, 3, 6, 8)
    flipped = random_flip(x, generator)
    assert flipped.shape == x.shape
    mirrored = [bool(torch.equal(f, o.flip(-1))) for f, o in zip(flipped, x)]
    same = [bool(torch.equal(f, o)) for f, o in zip(flipped, x)]
    assert all(m or s for m, s in zip(mirrored, same)) and 0 < sum(mirrored) < 64

    cropped = random_crop(x, generator)
    assert cropped.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")  # 1/8 of 6 and of 8: 1 pixel
    windows = [
        [(t, left) for t in range(3) for left in range(3) if torch.equal(c, p[:, t : t + 6, left : left + 8])]
        for c, p in zip(cropped, padded)
    ]
    assert all(windows), "each crop is a window of its padded image"
    assert len({w[0] for w in windows}) > 1, "windows at random places"
    assert augment_batch(x, [], generator) is x
    assert augment_batch(x, ["flip", "crop"], generator).shape == x.shape


def test_pixels_are_standardised_per_channel_inside_the_model():
    data = ImageData(
        input_shape=(3, 5, 4),
        targets=Targets(task="classification", classes=["a", "b"]),
        mean=[10.0, 100.0, 200.0],
        std=[2.0, 20.0, 40.0],
    )
    assert ImageData.model_validate(data.model_dump(mode="json")) == data  # as the workers get it
    mean, std = data.scaling()
    model = build_model(CNNConfig(channels=[4]), data.input_shape, 2, mean, std)
    x = torch.from_numpy(mean + std * np.ones((2, 3, 5, 4))).float()  # one std above each channel's mean
    assert torch.allclose(model[0](x), torch.ones_like(x))
    # rebuilt from zeros of the same shape, as the driver does before loading a checkpoint
    rebuilt = build_model(CNNConfig(channels=[4]), data.input_shape, 2, np.zeros((3, 1, 1)), np.ones((3, 1, 1)))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(ValueError, match="one entry per channel"):
        ImageData(input_shape=(1, 5, 4), targets=data.targets, mean=[1.0, 2.0], std=[1.0, 1.0])


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 20, 24), (3, 64, 48), (1, 8, 8)])
def test_the_cnn_builds_for_an_image_size(shape):
    net = build_network(CNNConfig(), shape, n_outputs=7)
    assert net(torch.rand(5, *shape) * 255).shape == (5, 7)
    pools = sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert pools == (0 if min(shape[1:]) < 16 else 1 if min(shape[1:]) < 32 else 2), net


def test_the_flat_digits_cnn_is_unchanged():
    net = build_network(CNNConfig(channels=[16, 32]), (64,), n_outputs=10)
    assert net(torch.randn(3, 64)).shape == (3, 10)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert [k for k in net.state_dict() if k.startswith("convs")] == [
        "convs.0.weight",
        "convs.0.bias",
        "convs.2.weight",
        "convs.2.bias",
    ]


@pytest.fixture
def temporary_store(tmp_path):
    """An MLflow store of this test's own; MLflow's process-wide URIs put back afterwards."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in names}
    saved_path = sys.path
    sys.path = list(sys.path)  # loading a model prepends its code folder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.create_experiment("images", artifact_location=(tmp_path / "artifacts").as_uri())
    finally:
        sys.path = saved_path
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_logged_model_takes_raw_pixels(small_digits, temporary_store):
    """As the publish tail logs an image classifier: a float32 [-1, 1, 16, 16] tensor of 0-255
    pixels in, the class folders' names out, the module's answers."""
    from raymaas.modelcode.pyfunc import log_classifier

    paths = sorted(small_digits.rglob("*.png"))[:12]
    x = channels_first(np.stack([np.asarray(Image.open(p)) for p in paths]))
    assert x.shape == (12, 1, 16, 16) and x.max() > 200
    classes = [str(d) for d in range(10)]
    torch.manual_seed(0)
    module = build_model(CNNConfig(), (1, 16, 16), 10, np.full((1, 1, 1), 40.0), np.full((1, 1, 1), 80.0)).eval()
    with mlflow.start_run(experiment_id=temporary_store):
        info = log_classifier(module, x[:8], None, classes=classes, baseline=x.mean(axis=0))
    (tensor,) = info.signature.inputs.to_dict()
    assert tensor["tensor-spec"]["dtype"] == "float32" and list(tensor["tensor-spec"]["shape"]) == [-1, 1, 16, 16]
    predictions = mlflow.pyfunc.load_model(info.model_uri).predict(x)
    with torch.no_grad():
        expected = [classes[i] for i in module(torch.from_numpy(x)).argmax(dim=1).tolist()]
    assert list(predictions) == expected


def test_a_bad_image_folder_exits_2_before_ray(tmp_path):
    """`raymaas train` on a folder of one class: exit 2, the folder named, no Ray started."""
    _png(tmp_path / "one" / "cat" / "a.png")
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # a Ray it would try to reach: none there
    proc = subprocess.run(
        [sys.executable, "-m", "raymaas.cli", "train", str(DEBUG), "--set", f"data.source={tmp_path / 'one'}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(REPO),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has one sub-folder (cat)" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- trained on the head

NAME = "test-digit-images"


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """All the bundled digits as 16x16 PNGs, and one file among them that does not decode."""
    from raymaas.cli.main import main

    folder = tmp_path_factory.mktemp("digit-images") / "digits"
    assert main(["sample-data", "digit-images", str(folder)]) == 0
    (folder / "3" / "broken.png").write_bytes(BROKEN)
    return folder


@pytest.fixture(scope="module")
def trained(digit_folder, ray_head, mlflow_client):
    """The debug spec trained on the session's head: (its run, the job's output)."""
    proc = run_job(
        ["jobs.supervised", str(DEBUG), "--set", f"name={NAME}", "--set", f"data.source={digit_folder}"],
        env=ray_head.env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("raymaas: run "))
    return mlflow_client.get_run(line.split()[2]), proc.stdout


@pytest.mark.slow
def test_the_image_folder_trains_and_registers_a_pixel_signature(trained, digit_folder):
    run, out = trained
    # the broken file: named before training, left out, the job went on
    assert "1 file did not decode and is left out: 3/broken.png" in out, out
    assert out.index("3/broken.png") < out.index("raymaas: epoch 1/"), out
    assert run.data.tags["raymaas.undecodable_files"] == "1: 3/broken.png", run.data.tags
    assert "1438 training and 359 validation images of 10 classes" in run.data.tags["raymaas.images"], run.data.tags
    assert run.info.status == "FINISHED"
    # 8 epochs ended at 0.92-0.97 in torch-only runs of this budget (see the debug spec)
    assert run.data.metrics["val_accuracy"] > 0.8, run.data.metrics

    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    (tensor,) = info.signature.inputs.to_dict()
    assert tensor["tensor-spec"]["dtype"] == "float32" and list(tensor["tensor-spec"]["shape"]) == [-1, 1, 16, 16]

    # five images of each digit as a client has them: PNGs read with Pillow, pixel values 0-255
    paths = [p for d in range(10) for p in sorted((digit_folder / str(d)).glob("*.png"))[:5] if p.name != "broken.png"]
    x = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in paths])[:, None]
    predictions = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(x)
    truth = np.asarray([p.parent.name for p in paths])
    assert (np.asarray(predictions) == truth).mean() > 0.8, list(zip(predictions, truth))


@pytest.mark.slow
def test_served_images_answer_png_jpeg_and_multipart_bodies(trained, digit_folder, ray_head):
    """Over HTTP on the session head: a PNG body of another size and mode (resized and converted
    as training read the folder), a JPEG, a multipart form of three files answered in order, the
    same answers as the pyfunc on the pixels read_images gives; a body that does not decode is a
    422 naming it; /explain takes the image with ?target= and answers per pixel."""
    import base64
    import io
    import json
    import urllib.error
    import urllib.request

    import ray
    from ray import serve

    from conftest import free_port
    from raymaas.runtime.cluster import connect
    from raymaas.serving import ServeSpec, build_model_app

    def encoded(path: Path, fmt: str, size: tuple[int, int] | None = None, mode: str = "L") -> bytes:
        with Image.open(path) as image:
            image = image.convert(mode)
            if size is not None:
                image = image.resize(size, Image.NEAREST)
            out = io.BytesIO()
            image.save(out, format=fmt)
            return out.getvalue()

    def as_trained(data: bytes) -> np.ndarray:  # what Ray Data's read_images makes of it: 16x16, mode L
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (16, 16):
                image = image.resize((16, 16), Image.BILINEAR)
            return np.asarray(image.convert("L"), dtype=np.float32)[None]

    def post(path: str, body: bytes, content_type: str):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/models/{NAME}/{path}",
            data=body,
            headers={"content-type": content_type},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    paths = [sorted((digit_folder / str(d)).glob("*.png"))[0] for d in (1, 4, 7)]
    bodies = [
        ("image/png", encoded(paths[0], "PNG", (40, 40), "RGB")),  # bigger, in colour: resized, made grey
        ("image/jpeg", encoded(paths[1], "JPEG")),
    ]
    boundary = "raymaas-test-boundary"
    parts = b"".join(
        f'--{boundary}\r\ncontent-disposition: form-data; name="files"; filename="{p.parent.name}-{p.name}"\r\n'
        "content-type: image/png\r\n\r\n".encode()
        + p.read_bytes()
        + b"\r\n"
        for p in paths
    )
    multipart = parts + f"--{boundary}--\r\n".encode()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")

    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAYMAAS_HOME")}
    os.environ.update({k: ray_head.env[k] for k in saved})
    connect(ray_head.address)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spec = ServeSpec.model_validate(
        {
            "models": [{"name": NAME}],
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "ray_actor_options": {"num_cpus": 0.25},
        }
    )
    try:
        serve.run(build_model_app(spec), name="images", route_prefix=spec.route_prefix)
        for content_type, body in bodies:
            status, out = post("invocations", body, content_type)
            assert status == 200, (content_type, out)
            assert out["predictions"] == list(pyfunc.predict(as_trained(body)[None])), (content_type, out)
        status, out = post("invocations", multipart, f"multipart/form-data; boundary={boundary}")
        assert status == 200, out
        x = np.stack([as_trained(p.read_bytes()) for p in paths])
        assert out["predictions"] == list(pyfunc.predict(x)), out  # one answer a file, in the order sent

        status, out = post("invocations", BROKEN, "image/png")
        assert status == 422 and "does not decode" in out["message"], out

        status, out = post(f"explain?target={paths[0].parent.name}", paths[0].read_bytes(), "image/png")
        assert status == 200, out
        (row,) = out["explanations"]
        assert row["target"] == "1" and np.asarray(row["attributions"]).shape == (1, 16, 16), row
        assert "attribution_png" not in row  # only when asked

        status, out = post("explain?target=1&image=true", paths[0].read_bytes(), "image/png")
        assert status == 200, out
        (row,) = out["explanations"]
        with Image.open(io.BytesIO(base64.b64decode(row["attribution_png"]))) as picture:
            assert picture.format == "PNG" and picture.mode == "RGB" and min(picture.size) >= 64, picture
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
