"""The `mlp` family: a multilayer perceptron over the input, flattened."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from raymaas.specs import SpecModel


class MLPConfig(SpecModel):
    """a multilayer perceptron: Linear and ReLU (and dropout) for each hidden layer, then a Linear"""

    name: Literal["mlp"] = "mlp"
    hidden_sizes: list[PositiveInt] = Field([128, 64], min_length=1, description="widths of the hidden layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each hidden layer")


class MLP(nn.Module):
    def __init__(self, n_inputs: int, n_outputs: int, hidden_sizes: list[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def build(config: MLPConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """An MLP from the input, flattened, to n_outputs."""
    return MLP(math.prod(input_shape), n_outputs, config.hidden_sizes, config.dropout)
