"""The layers around every network: the inputs standardised with the training split's
statistics, and a regression network's outputs put back in the targets' units."""

from __future__ import annotations

import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics stored as buffers."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", torch.where(std > 1e-6, std, torch.ones_like(std)).float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Unstandardize(nn.Module):
    """y * std + mean: a regression network's standardised outputs in the targets' units."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", torch.where(std > 1e-6, std, torch.ones_like(std)).float().clone())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean
