"""The `cnn` family: a small CNN over an image (an image folder's (channels, height, width),
any size), or over flat features that are a square image (the built-in digits: 64 values, 8x8)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from raymaas.specs import SpecModel


class CNNConfig(SpecModel):
    """a small CNN: 3x3 conv layers (each followed by a 2x2 max-pool while the map is 16 pixels or
    more on its shorter side), average-pooled to 2x2, then a Linear; an image folder's images as
    they are read (channels, height, width), n flat features a sqrt(n) x sqrt(n) single-channel image"""

    name: Literal["cnn"] = "cnn"
    channels: list[PositiveInt] = Field([16, 32], min_length=1, description="output channels of each 3x3 conv layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the last Linear")

    # Its input is pixels: build_model refuses encoded table columns (categories, imputed numbers).
    input_is_image: ClassVar[bool] = True


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of an input of this shape: flat features are a square, single-channel image."""
    if len(input_shape) == 3:
        return input_shape
    if len(input_shape) == 2:
        return (1, *input_shape)
    if len(input_shape) != 1:
        raise ValueError(
            f"model cnn takes (channels, height, width), (height, width) or flat inputs, not {input_shape}"
        )
    (n,) = input_shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"model cnn needs square images: {n} features is not a square")
    return (1, side, side)


# A map this many pixels or more on its shorter side is halved after a conv layer. Without it two
# 3x3 layers see 5x5 pixels of a 16x16 digit before the 2x2 average: a torch-only run of
# digit_images_cnn_debug.yaml's budget (8 epochs, 2 x 16 a step) ended at 0.90-0.91 validation
# accuracy over 3 seeds, 0.92-0.97 with it, in 60% of the time. Smaller maps (the built-in
# digits, 8x8) get no pooling: their networks are as they were.
POOL_FROM_SIDE = 16


class SmallCNN(nn.Module):
    def __init__(self, image: tuple[int, int, int], n_outputs: int, channels: list[int], dropout: float):
        super().__init__()
        self.image = image
        convs: list[nn.Module] = []
        in_ch, side = image[0], min(image[1:])
        for ch in channels:
            convs += [nn.Conv2d(in_ch, ch, kernel_size=3, padding=1), nn.ReLU()]
            if side >= POOL_FROM_SIDE:
                convs.append(nn.MaxPool2d(2))
                side //= 2
            in_ch = ch
        self.convs = nn.Sequential(*convs)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch * 4, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.image)
        return self.head(self.pool(self.convs(x)))


def build(config: CNNConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """A SmallCNN over the input as an image, to n_outputs."""
    return SmallCNN(image_shape(input_shape), n_outputs, config.channels, config.dropout)
