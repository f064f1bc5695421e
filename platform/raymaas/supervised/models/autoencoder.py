"""The `autoencoder` family, for `task: anomaly`: a row's anomaly score is how badly the network
reconstructs it.

The network squeezes a row (as the input layer hands it over: standardised numbers, one-hot
categories) through a narrow latent layer and back; trained on normal rows, it reconstructs
rows like them and fails on others. Its output is the score itself, the mean squared
reconstruction error over the row's values, shape [n, 1]: training minimises it, and the
served model answers it (the threshold that makes a score an anomaly is fitted on the training
split's scores after training).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from raymaas.specs import SpecModel


class AutoencoderConfig(SpecModel):
    """an autoencoder (task: anomaly): Linear and ReLU layers down to latent_size and mirrored
    back up; the anomaly score is the mean squared reconstruction error of a row"""

    name: Literal["autoencoder"] = "autoencoder"
    hidden_sizes: list[PositiveInt] = Field(
        [64, 32], min_length=1, description="widths of the encoder's hidden layers (the decoder mirrors them)"
    )
    latent_size: PositiveInt = Field(8, description="width of the bottleneck")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each hidden layer")
    anomaly_quantile: float = Field(
        0.99,
        gt=0.0,
        lt=1.0,
        description="is_anomaly: a score above this quantile of the training split's scores",
    )


def _stack(widths: list[int], dropout: float) -> nn.Sequential:
    """Linear layers through widths, ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ReconstructionError(nn.Module):
    """An encoder and a decoder; forward answers each row's mean squared reconstruction error [n, 1]."""

    def __init__(self, n_inputs: int, config: AutoencoderConfig):
        super().__init__()
        widths = [n_inputs, *config.hidden_sizes, config.latent_size]
        self.encoder = _stack(widths, config.dropout)
        self.decoder = _stack(widths[::-1], config.dropout)
        # the encoder's last Linear feeds the decoder through a ReLU, as between hidden layers
        self.bottleneck = nn.ReLU()

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.bottleneck(self.encoder(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return ((self.reconstruct(x) - x) ** 2).mean(dim=1, keepdim=True)


def build(config: AutoencoderConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The scoring network over inputs of input_shape (flattened); n_outputs is its one score."""
    if n_outputs != 1:
        raise ValueError(f"model autoencoder answers one anomaly score, not {n_outputs} outputs (task: anomaly)")
    return ReconstructionError(math.prod(input_shape), config)
