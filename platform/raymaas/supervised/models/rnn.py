"""The `lstm` and `gru` families: a recurrent network over a window of steps, read from its
last step.

Both names share one config (RNNConfig, its `name` picks the cell), so FAMILIES registers the
same class under two tags; `name` survives a round trip through JSON, and with it the cell.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from raymaas.specs import SpecModel


class RNNConfig(SpecModel):
    """a recurrent network (lstm: torch.nn.LSTM, gru: torch.nn.GRU) over a sequence of steps,
    then a Linear from the last step's state (both directions' final states when bidirectional);
    input (length, channels), or (length,): one channel per step"""

    name: Literal["lstm", "gru"] = Field(..., description="the recurrent cell: lstm or gru")
    hidden_size: PositiveInt = Field(64, description="size of the recurrent state of each layer (and direction)")
    num_layers: int = Field(1, ge=1, description="stacked recurrent layers")
    bidirectional: bool = Field(False, description="also read the sequence backwards; the head sees both final states")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="dropout on the outputs of each recurrent layer but the last, as torch applies it: "
        "only when num_layers > 1 (ignored with one layer)",
    )


_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


def sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(length, channels) of an input of this shape: (length,) is one channel per step."""
    if len(input_shape) == 2:
        return input_shape
    if len(input_shape) == 1:
        return (input_shape[0], 1)
    raise ValueError(f"a recurrent model takes (length, channels) or (length,) inputs, not {input_shape}")


class RecurrentNet(nn.Module):
    """An LSTM or GRU (batch_first) and a Linear head on the last layer's final states."""

    def __init__(self, cell: str, sequence: tuple[int, int], n_outputs: int, config: RNNConfig):
        super().__init__()
        self.length, self.channels = sequence
        self.rnn = _CELLS[cell](
            input_size=self.channels,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            batch_first=True,
            # torch warns about dropout with one layer, where it has no effect anyway
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.directions = 2 if config.bidirectional else 1
        self.head = nn.Linear(self.directions * config.hidden_size, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        # [n, length, channels], [n, length] (one channel) and flat [n, length * channels] rows alike
        x = x.reshape(n, self.length, self.channels)
        _, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state  # an LSTM's state is (h_n, c_n)
        # h_n: [num_layers * directions, n, hidden]; the last layer's are the last `directions` rows.
        # For a backward direction the last step's output is its first state, so read h_n, not the output.
        last = h_n[-self.directions :].transpose(0, 1).reshape(n, -1)
        return self.head(last)


def build(config: RNNConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """A RecurrentNet of config's cell over inputs of input_shape, to n_outputs."""
    if math.prod(input_shape) == 0:
        raise ValueError(f"model {config.name} needs at least one step and one channel, not {input_shape}")
    return RecurrentNet(config.name, sequence_shape(tuple(input_shape)), n_outputs, config)
