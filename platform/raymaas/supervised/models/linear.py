"""The `linear` family: linear or logistic regression, one torch.nn.Linear; the baseline."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from raymaas.specs import SpecModel


class LinearConfig(SpecModel):
    """linear (or logistic) regression: one torch.nn.Linear over the input, the baseline"""

    name: Literal["linear"] = "linear"


def build(config: LinearConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """One linear layer from the input, flattened, to n_outputs."""
    layer = nn.Linear(math.prod(input_shape), n_outputs)
    # A flat input keeps the bare Linear: the state dict of the checkpoints saved before stays valid.
    return layer if len(input_shape) == 1 else nn.Sequential(nn.Flatten(), layer)
