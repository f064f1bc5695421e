"""Built-in torch models (linear, MLP, small CNN) and user factories named `package.module:factory`.

Every model is wrapped so that it takes features exactly as the data set provides them and,
for regression, answers in the targets' own units: the standardisation of the inputs and of
the targets fitted on the training split are layers of the model, not a client's job.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
from pydantic import Field, field_validator
from torch import nn

from raymaas.specs import SpecModel

BUILTIN_MODELS = ("linear", "mlp", "cnn")


class ModelSpec(SpecModel):
    name: str = Field(
        "mlp",
        description="linear (linear/logistic regression), mlp, cnn, or package.module:factory returning a torch.nn.Module",
    )
    hidden_sizes: list[int] = Field([128, 64], description="mlp: widths of the hidden layers")
    channels: list[int] = Field([16, 32], description="cnn: output channels of each 3x3 conv layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before each hidden layer's output")
    options: dict = Field({}, description="keyword arguments passed to a user factory")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name in BUILTIN_MODELS:
            return name
        if ":" not in name:
            raise ValueError(
                f"unknown model {name!r}: use one of {', '.join(BUILTIN_MODELS)} or package.module:factory"
            )
        resolve_factory(name)
        return name

    @field_validator("hidden_sizes", "channels")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError("must be a non-empty list of positive integers")
        return sizes


def resolve_factory(ref: str) -> Callable[..., nn.Module]:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model factory {ref!r}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model factory {ref!r}: {module_name} has no callable {attr!r}")
    return factory


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


class MLP(nn.Module):
    def __init__(self, n_features: int, n_classes: int, hidden_sizes: list[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv layers over a square single-channel image given as flat features."""

    def __init__(self, n_features: int, n_classes: int, channels: list[int], dropout: float):
        super().__init__()
        side = math.isqrt(n_features)
        if side * side != n_features:
            raise ValueError(f"model cnn needs square images: {n_features} features is not a square")
        self.side = side
        convs: list[nn.Module] = []
        in_ch = 1
        for ch in channels:
            convs += [nn.Conv2d(in_ch, ch, kernel_size=3, padding=1), nn.ReLU()]
            in_ch = ch
        self.convs = nn.Sequential(*convs)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch * 4, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, self.side, self.side)
        return self.head(self.pool(self.convs(x)))


def build_model(
    spec: ModelSpec,
    n_features: int,
    n_outputs: int,
    mean,
    std,
    target_mean=None,
    target_std=None,
    encoding: dict | None = None,
) -> nn.Module:
    """The network named by spec, behind a Standardize layer fitted to the training data and,
    for regression (target_mean and target_std given), before an Unstandardize layer. With an
    encoding (raymaas.modelcode.tabular.TabularEncoding.to_dict(): categorical or imputed
    columns) a TabularInput layer takes the encoded rows instead of Standardize: it fills in
    missing numbers, standardises them and one-hot encodes or embeds each categorical column;
    the network's input is that layer's width."""
    first: nn.Module
    if encoding is not None:
        from raymaas.modelcode.tabular import TabularEncoding, TabularInput

        first = TabularInput(TabularEncoding.from_dict(encoding))
        n_features = first.width
        if spec.name == "cnn":
            raise ValueError("model cnn takes images (square, numeric features), not categorical or imputed columns")
    else:
        first = Standardize(torch.as_tensor(mean), torch.as_tensor(std))
    if spec.name == "linear":
        net = nn.Linear(n_features, n_outputs)
    elif spec.name == "mlp":
        net = MLP(n_features, n_outputs, spec.hidden_sizes, spec.dropout)
    elif spec.name == "cnn":
        net = SmallCNN(n_features, n_outputs, spec.channels, spec.dropout)
    else:
        net = resolve_factory(spec.name)(n_features=n_features, n_classes=n_outputs, **spec.options)
        if not isinstance(net, nn.Module):
            raise TypeError(f"model factory {spec.name!r} returned {type(net).__name__}, not a torch.nn.Module")
    layers = [first, net]
    if target_mean is not None:
        layers.append(Unstandardize(torch.as_tensor(target_mean), torch.as_tensor(target_std)))
    return nn.Sequential(*layers)
