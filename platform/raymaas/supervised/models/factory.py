"""Your own network: `model.name: package.module:factory`, a callable that returns a torch.nn.Module.

The factory is called with keywords: `input_shape` (one row's shape, a tuple: `(n_features,)`
for a table) and `n_outputs` (the number of classes, or of targets for regression), then the
spec's `options`. A factory written before input_shape existed, one whose signature names
`n_features` and `n_classes`, is given those instead (n_features: the input's size flattened);
a factory is given each of the four that its signature names.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator
from torch import nn

from raymaas.specs import SpecModel


class FactoryConfig(SpecModel):
    """your own network: name is package.module:factory, called as factory(input_shape=..., n_outputs=...,
    **options) and returning a torch.nn.Module"""

    name: str = Field(
        ..., description="package.module:factory, importable where the job starts (PYTHONPATH); shipped to the workers"
    )
    options: dict[str, Any] = Field({}, description="keyword arguments passed to the factory")

    @field_validator("name")
    @classmethod
    def _importable(cls, name: str) -> str:
        if ":" not in name:
            raise ValueError(f"model factory {name!r}: expected package.module:factory")
        resolve_factory(name)
        return name


def resolve_factory(ref: str) -> Callable[..., nn.Module]:
    """The callable that `package.module:factory` names; ValueError saying what is missing."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model factory {ref!r}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model factory {ref!r}: {module_name} has no callable {attr!r}")
    return factory


def build(config: FactoryConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The network the factory returns for this input shape and number of outputs."""
    factory = resolve_factory(config.name)
    net = factory(**_shape_arguments(factory, input_shape, n_outputs), **config.options)
    if not isinstance(net, nn.Module):
        raise TypeError(f"model factory {config.name!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _shape_arguments(factory: Callable, input_shape: tuple[int, ...], n_outputs: int) -> dict[str, Any]:
    """The shape keywords the factory's signature names; input_shape and n_outputs if it names none."""
    offered = {
        "input_shape": tuple(input_shape),
        "n_outputs": n_outputs,
        "n_features": math.prod(input_shape),
        "n_classes": n_outputs,
    }
    try:
        named = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a signature Python can read (some C extensions)
        named = {}
    return {k: v for k, v in offered.items() if k in named} or {
        "input_shape": offered["input_shape"],
        "n_outputs": n_outputs,
    }
