"""The attribution map /explain answers for a model of images when asked (params.image or
?image=), without Ray: attribution_png and split_image are pure."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from PIL import Image

from raymaas.explain.maps import MIN_SIDE, attribution_png
from raymaas.serving.errors import ServingError
from raymaas.serving.explaining import split_image, split_target

GRAY = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1, 8, 8))]))
TABLE = ModelSignature(inputs=Schema([ColSpec("double", "a"), ColSpec("double", "b")]))
ROWS = {"inputs": [[[[0.0] * 8] * 8]]}


def decoded(png: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(png)))
    assert image.format == "PNG"
    return image


def reddish(rgb) -> bool:
    r, g, b = rgb
    return r == 255 and max(g, b) < 160  # half the peak: bwr's (255, 127, 127)


def bluish(rgb) -> bool:
    r, g, b = rgb
    return b == 255 and max(r, g) < 10  # the peak itself: pure blue


@pytest.mark.parametrize(
    ("shape", "size"),
    [((1, 8, 8), (64, 64)), ((3, 5, 7), (7 * 13, 5 * 13)), ((1, 70, 100), (100, 70))],  # (width, height)
)
def test_the_map_is_an_rgb_png_red_toward_the_target_blue_away(shape, size):
    rng = np.random.default_rng(0)
    attributions = rng.uniform(-0.1, 0.1, shape)
    _, height, width = shape
    attributions[:, 1, 2] = 1.0  # summed over channels: the largest positive, half the scale
    attributions[:, height - 1, width - 2] = -2.0  # and the most negative, which sets it
    image = decoded(attribution_png(attributions))
    assert image.mode == "RGB" and image.size == size
    assert min(image.size) >= min(MIN_SIDE, min(height, width)) and min(image.size) < MIN_SIDE + min(height, width)
    factor = size[0] // width
    at = lambda row, col: image.getpixel((col * factor + factor // 2, row * factor + factor // 2))  # noqa: E731
    assert reddish(at(1, 2)) and bluish(at(height - 1, width - 2))


def test_an_all_zero_map_is_white():
    image = decoded(attribution_png(np.zeros((3, 5, 7))))
    assert image.size == (91, 65)
    assert all(min(rgb) >= 250 for _, rgb in image.getcolors())


def test_image_comes_from_params_or_the_url_and_is_not_passed_to_the_model():
    payload = {**ROWS, "params": {"image": True}}
    assert split_image(payload, None, GRAY) is True and payload == ROWS  # taken out: the rest is the model's
    both = {**ROWS, "params": {"target": 3, "image": 1}}
    target = split_target(both)
    image = split_image(both, None, GRAY)
    assert (target, image) == (3, True) and both == ROWS
    # an image body has no payload to read: only the URL can carry image
    assert split_image(None, "1", GRAY) is True
    assert split_image(None, "TRUE", GRAY) is True
    assert split_image(None, "0", GRAY) is False
    assert split_image(None, None, GRAY) is False
    plain = dict(ROWS)
    assert split_image(plain, None, TABLE) is False and plain == ROWS  # not asked: no 422


@pytest.mark.parametrize(
    ("body", "query", "signature", "says"),
    [
        ({**ROWS, "params": {"image": True}}, "1", GRAY, "twice"),
        (ROWS, "maybe", GRAY, "?image= must be true or false"),
        ({**ROWS, "params": {"image": "maybe"}}, None, GRAY, "params.image must be true or false"),
        ({**ROWS, "params": {"image": 2}}, None, GRAY, "must be true or false"),
        ({**ROWS, "params": {"image": 1.0}}, None, GRAY, "must be true or false"),
        ({"inputs": [[1.0, 2.0]], "params": {"image": True}}, None, TABLE, "model of images only"),
        ({"inputs": [[1.0, 2.0]]}, "true", TABLE, "model of images only"),
    ],
)
def test_image_given_twice_not_a_flag_or_of_a_table_model_is_a_422(body, query, signature, says):
    with pytest.raises(ServingError) as caught:
        split_image(json.loads(json.dumps(body)), query, signature)
    assert caught.value.status == 422 and says in str(caught.value)
