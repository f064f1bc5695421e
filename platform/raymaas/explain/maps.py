"""An image's attributions as a picture: the map /explain answers when asked (params.image).

The channels' attributions add up per pixel, then a diverging colour map centred on zero
(matplotlib's `bwr`) draws them: red pushes toward the explained output, blue away, white
neither. One scale for the whole map, the largest absolute value, so a map compares its own
pixels, never two maps. Encoded by Pillow, without a pyplot figure (no backend, no global state).
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib import colormaps
from PIL import Image

COLORMAP = "bwr"
MIN_SIDE = 64  # a 16x16 digit would be a speck on screen: pixels repeat until the short side has this


def attribution_map(attributions: np.ndarray) -> Image.Image:
    """The RGB picture of attributions [channels, height, width]: summed over channels, red
    positive, blue negative, each pixel repeated (NEAREST) until the short side is MIN_SIDE."""
    values = np.asarray(attributions, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"attributions of an image are [channels, height, width], got shape {values.shape}")
    summed = values.sum(axis=0)
    peak = float(np.abs(summed).max()) if summed.size else 0.0
    scaled = summed / peak if peak > 0 else np.zeros_like(summed)  # all zero: every pixel white
    rgba = colormaps[COLORMAP]((scaled + 1) / 2, bytes=True)
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))  # uint8 [h, w, 3]: RGB
    height, width = summed.shape
    factor = math.ceil(MIN_SIDE / min(height, width))
    if factor > 1:
        image = image.resize((width * factor, height * factor), resample=Image.NEAREST)
    return image


def attribution_png(attributions: np.ndarray) -> str:
    """attribution_map as a base64-encoded PNG, as it goes in a JSON answer."""
    out = io.BytesIO()
    attribution_map(attributions).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")
