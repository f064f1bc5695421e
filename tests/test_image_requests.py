"""Images sent to a model of images, without Ray: parse_scoring_request is pure. A PNG or JPEG
body, or the files of a multipart/form-data body, must become exactly the pixels training read
from an image folder (Ray Data's read_images with size and mode); whatever does not decode is a
4xx naming the image, never a 500."""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from PIL import Image
from urllib3 import encode_multipart_formdata

from raymaas.serving.errors import ServingError
from raymaas.serving.explaining import split_target
from raymaas.serving.protocol import MAX_IMAGE_PIXELS, parse_scoring_request

GRAY = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1, 16, 16))]))  # image_mode L
COLOR = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 3, 20, 24))]))  # RGB, 20 high, 24 wide
SIZES = {id(GRAY): ((16, 16), "L"), id(COLOR): ((20, 24), "RGB")}


def picture(width: int, height: int, mode: str, seed: int = 0) -> Image.Image:
    """A gradient with noise (JPEG and the resize filter both have something to do)."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 200, height), np.linspace(0, 55, width))
    rgb = np.clip(ramp[..., None] + rng.integers(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def as_training_reads(data: bytes, signature) -> np.ndarray:
    """float32 [C, H, W] of what training makes of an image file: the calls of Ray 2.60's
    ImageDatasource._read_stream (read_images(size=(h, w), mode=...)), then the workers'
    channels-first layout (raymaas.supervised.images.channels_first)."""
    (height, width), mode = SIZES[id(signature)]
    image = Image.open(io.BytesIO(data))
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.BILINEAR)
    if image.mode != mode:
        image = image.convert(mode)
    pixels = np.asarray(image)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return pixels.astype(np.float32)


def multipart(files: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    """A multipart/form-data body as a client library encodes it (urllib3, which requests uses):
    (filename, bytes, content type or None for urllib3's guess from the filename)."""
    fields = [("file", (name, data) if ctype is None else (name, data, ctype)) for name, data, ctype in files]
    return encode_multipart_formdata(fields)


def client_error(body: bytes, content_type: str, signature) -> ServingError:
    with pytest.raises(ServingError) as caught:
        parse_scoring_request(body, content_type, signature)
    return caught.value


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height grayscale pixels and holds a few bytes of them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_the_reference_still_makes_ray_data_s_calls():
    # as_training_reads copies the calls of Ray's image reader; an upgraded Ray that reads
    # otherwise must change the server too (raymaas.serving.protocol, "images")
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent  # not imported: ray.data takes seconds
    reader = (ray_dir / "data/_internal/datasource/image_datasource.py").read_text()
    calls = [
        "image = Image.open(io.BytesIO(data))",
        "if self.size is not None and image.size != tuple(reversed(self.size)):",
        "image = image.resize((width, height), resample=Image.BILINEAR)",
        "if self.mode is not None and image.mode != self.mode:",
        "image = image.convert(self.mode)",
        "array = np.asarray(image)",
    ]
    found = [reader.find(call) for call in calls]
    assert -1 not in found and found == sorted(found), [c for c, i in zip(calls, found, strict=True) if i == -1]


@pytest.mark.parametrize(
    "signature, image, fmt, content_type",
    [
        (GRAY, picture(40, 30, "RGB"), "PNG", "image/png"),  # smaller and gray
        (GRAY, picture(16, 16, "L"), "PNG", "image/png"),  # already as trained: nothing to do
        (GRAY, picture(9, 13, "P"), "PNG", "image/png; charset=binary"),  # a palette, taller than wide
        (COLOR, picture(64, 48, "RGB"), "JPEG", "image/jpeg"),
        (COLOR, picture(12, 10, "L"), "PNG", "image/png"),  # larger and in colour
        (COLOR, picture(24, 20, "RGBA"), "PNG", "IMAGE/PNG"),  # the size trained on, less its alpha
        (COLOR, picture(50, 70, "RGB"), "JPEG", "image/jpg"),
        (GRAY, picture(33, 33, "RGB"), "JPEG", "image/png"),  # a JPEG labelled PNG is still read
    ],
)
def test_an_image_body_is_read_as_training_read_it(signature, image, fmt, content_type):
    data = encoded(image, fmt)
    x, params = parse_scoring_request(data, content_type, signature)
    expected = as_training_reads(data, signature)
    assert params is None
    assert x.dtype == np.float32 and x.shape == (1, *expected.shape) and x.flags.c_contiguous
    np.testing.assert_array_equal(x[0], expected)
    assert 0 <= x.min() and x.max() <= 255


def test_multipart_files_are_stacked_in_the_order_sent():
    files = [
        ("b.jpg", encoded(picture(64, 48, "RGB", seed=1), "JPEG"), None),  # image/jpeg, guessed from its name
        ("a.png", encoded(picture(24, 20, "L", seed=2), "PNG"), "image/png"),
        ("blob", encoded(picture(7, 90, "RGBA", seed=3), "PNG"), None),  # application/octet-stream with a name
    ]
    body, content_type = multipart(files)
    assert content_type.startswith("multipart/form-data; boundary=")
    x, params = parse_scoring_request(body, content_type, COLOR)
    assert params is None and x.dtype == np.float32 and x.shape == (3, 3, 20, 24)
    for i, (_, data, _) in enumerate(files):
        np.testing.assert_array_equal(x[i], as_training_reads(data, COLOR))


def test_multipart_keeps_each_file_s_bytes_as_sent():
    # the PNG signature holds \r\n and \n; a file may end in line breaks of its own
    data = encoded(picture(16, 16, "L"), "PNG")
    body, content_type = multipart([("x.png", data + b"\r\n\n\r", "image/png"), ("y.png", data, "image/png")])
    x, _ = parse_scoring_request(body, content_type, GRAY)  # Pillow ignores bytes after IEND
    assert len(x) == 2 and np.array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[1], as_training_reads(data, GRAY))


def test_an_image_that_does_not_decode_is_a_422_naming_it_and_why():
    png = encoded(picture(40, 30, "RGB"), "PNG")
    err = client_error(b"garbage, not a picture", "image/png", GRAY)
    assert err.status == 422 and "the image" in str(err) and "cannot identify image file" in str(err)
    assert "BytesIO" not in str(err)
    err = client_error(png[: len(png) // 2], "image/png", GRAY)
    assert err.status == 422 and "truncated" in str(err)
    assert client_error(b"", "image/jpeg", COLOR).status == 422
    good = encoded(picture(20, 20, "RGB"), "JPEG")
    body, content_type = multipart(
        [("one.jpg", good, None), ("two.png", png[:100], "image/png"), ("three.jpg", good, None)]
    )
    err = client_error(body, content_type, GRAY)
    assert err.status == 422 and "part 2 ('two.png')" in str(err) and "truncated" in str(err), str(err)
    assert err.body["error_code"] == "INVALID_PARAMETER_VALUE"
    # a format an image folder does not train on (Ray's reader reads GIF; the folder check does not)
    err = client_error(encoded(picture(20, 20, "RGB"), "GIF"), "image/png", GRAY)
    assert err.status == 422 and "PNG or JPEG" in str(err)


def test_a_part_that_is_no_image_is_a_422_naming_it():
    png = encoded(picture(16, 16, "L"), "PNG")
    body, content_type = multipart([("a.png", png, "image/png"), ("notes.txt", b"hello", "text/plain")])
    err = client_error(body, content_type, GRAY)
    assert err.status == 422 and "part 2 ('notes.txt') is text/plain, not an image" in str(err)
    # a form field (no filename): explain's target does not travel in the form
    body, content_type = encode_multipart_formdata([("target", "7"), ("file", ("a.png", png, "image/png"))])
    err = client_error(body, content_type, GRAY)
    assert err.status == 422 and "part 1 (field 'target') is a form field" in str(err) and "?target=" in str(err)


def test_malformed_multipart_bodies_are_refused_with_the_reason():
    png = encoded(picture(16, 16, "L"), "PNG")
    body, content_type = multipart([("a.png", png, "image/png")])
    boundary = content_type.split("boundary=")[1]
    assert client_error(body, "multipart/form-data", GRAY).status == 400  # no boundary
    err = client_error(b"no parts here", content_type, GRAY)
    assert err.status == 422 and "no parts" in str(err)
    assert client_error(f"--{boundary}--\r\n".encode(), content_type, GRAY).status == 422
    err = client_error(body[: len(body) // 2], content_type, GRAY)  # cut short in transit
    assert err.status == 400 and "closing boundary" in str(err)
    assert client_error(body, content_type + "\r\nX-Other: 1", GRAY).status == 400


@pytest.mark.parametrize(
    "signature",
    [
        ModelSignature(inputs=Schema([ColSpec("double", "x"), ColSpec("double", "y")])),  # a table
        ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 8))])),  # a vector
        ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 4, 16, 16))])),  # 4 channels
        ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, 1, 16, 16))])),
        ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (1, 1, 16, 16))])),  # not a batch
        None,
    ],
)
def test_a_model_that_takes_no_images_answers_415_with_what_it_takes(signature):
    png = encoded(picture(16, 16, "L"), "PNG")
    err = client_error(png, "image/png", signature)
    assert err.status == 415 and "takes no images" in str(err) and "application/json" in str(err)
    assert err.body["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
    if signature is not None:
        assert err.body["expected"] == signature.inputs.to_dict()
    body, content_type = multipart([("a.png", png, "image/png")])
    assert client_error(body, content_type, signature).status == 415


def test_an_image_of_too_many_pixels_is_a_413_before_it_is_decoded(monkeypatch):
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    err = client_error(png_header(side, side), "image/png", GRAY)  # a header alone: nothing decoded
    assert err.status == 413 and f"{side}x{side} pixels" in str(err)
    # past Pillow's own guard (twice Image.MAX_IMAGE_PIXELS): its DecompressionBombError
    err = client_error(png_header(60_000, 60_000), "image/png", GRAY)
    assert err.status == 413 and "decompression bomb" in str(err).lower()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    body, content_type = multipart([("big.png", encoded(picture(40, 40, "L"), "PNG"), "image/png")])
    err = client_error(body, content_type, GRAY)
    assert err.status == 413 and "part 1 ('big.png')" in str(err)


def test_json_bodies_are_read_as_before():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 1, 16, 16)).astype(float)
    x, params = parse_scoring_request(json.dumps({"inputs": pixels.tolist()}).encode(), "application/json", GRAY)
    assert params is None and x.dtype == np.float32 and x.shape == (2, 1, 16, 16)
    np.testing.assert_array_equal(x, pixels.astype(np.float32))
    err = client_error(b"GIF89a", "image/gif", GRAY)  # the 415 of a model of images names what it takes
    assert err.status == 415 and "image/png" in str(err)


def test_explain_takes_an_image_body_s_target_from_the_url():
    # an image or multipart body is not JSON: no payload, the target comes from ?target= alone
    assert split_target(None, "7") == "7"
    assert split_target(None) is None
    rows = {"inputs": [[[[0.0] * 16] * 16]]}
    assert split_target(dict(rows), "3") == "3"
    with pytest.raises(ServingError) as caught:  # given twice
        split_target({**rows, "params": {"target": 3}}, "3")
    assert caught.value.status == 422 and "twice" in str(caught.value)
