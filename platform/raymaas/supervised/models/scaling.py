"""The layers around every network: the inputs standardised with the training split's
statistics, and a regression network's outputs put back in the targets' units."""

from __future__ import annotations

import torch
from torch import nn


class _Scaling(nn.Module):
    """A mean and a std, stored as the buffers `mean` and `std` (float32; a std of 1e-6 or
    less, a constant column, taken as 1 so nothing is divided by ~0). The buffers' names are
    the state_dict keys of every registered model and checkpoint: they stay as they are."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", torch.where(std > 1e-6, std, torch.ones_like(std)).float().clone())


class Standardize(_Scaling):
    """(x - mean) / std with the training split's statistics stored as buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Unstandardize(_Scaling):
    """y * std + mean: a regression network's standardised outputs in the targets' units."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean
