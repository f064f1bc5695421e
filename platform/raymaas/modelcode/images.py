"""How a model of images reads an image: the pixels its training read from its folder.

A model trained on an image folder (raymaas.supervised.images) takes one float32 tensor
[-1, C, H, W] of pixel values 0-255, C = 1 (image mode L) or 3 (RGB). Training read its files
with Ray Data's read_images(size=(H, W), mode=...), which (ImageDatasource._read_stream, Ray
2.60) opens each with Pillow, resizes it with Image.BILINEAR only where its size differs, then
converts it only where its mode differs; no draft decoding of JPEGs and no EXIF rotation. The
endpoint's image bodies (raymaas.serving.protocol) and `raymaas predict` on a folder of images
(raymaas.batch) read theirs here, the same way, so the model sees the pixels it was trained on.
"""

from __future__ import annotations

import numpy as np

MODES = {1: "L", 3: "RGB"}  # channels -> the Pillow mode training converted to


def image_shape(signature) -> tuple[int, int, int] | None:
    """(channels, height, width) of a model of images: its signature's input is one float32
    tensor [-1, C, H, W] with C 1 or 3, as the supervised job logs one; None for any other."""
    inputs = signature.inputs if signature is not None else None
    if inputs is None or not inputs.is_tensor_spec() or len(inputs.inputs) != 1:
        return None
    spec = inputs.inputs[0]
    shape = tuple(spec.shape)
    if np.dtype(spec.type) != np.float32 or len(shape) != 4 or shape[0] != -1 or min(shape[1:]) < 1:
        return None
    return shape[1:] if shape[1] in MODES else None


def pixels(image, shape: tuple[int, int, int], dtype: str = "float32") -> np.ndarray:
    """An opened Pillow image as the model reads it: [channels, height, width] of 0-255."""
    from PIL import Image

    channels, height, width = shape
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.BILINEAR)
    if image.mode != MODES[channels]:
        image = image.convert(MODES[channels])
    values = np.asarray(image)
    values = values[None] if values.ndim == 2 else values.transpose(2, 0, 1)
    return np.ascontiguousarray(values, dtype=dtype)
