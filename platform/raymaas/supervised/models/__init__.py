"""The networks a supervised job trains: built-in families (linear, mlp, cnn, lstm, gru; autoencoder
for task anomaly) and user
factories named `package.module:factory`.

A family is one module here: its config (a SpecModel whose `name` is a Literal of the family's
name, holding only that family's fields) and `build(config, input_shape, n_outputs)`. Adding
one is that module and one line in FAMILIES; the spec's `model` section (ModelSpec), `raymaas
explain` and build_model follow from the registry.

Every network is wrapped so that it takes features exactly as the data set provides them and,
for regression, answers in the targets' own units: the standardisation of the inputs and of
the targets fitted on the training split are layers of the model, not a client's job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, NamedTuple, Union

import torch
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, TypeAdapter, field_validator
from torch import nn

from raymaas.modelcode.tabular import TabularEncoding, TabularInput
from raymaas.specs import SpecModel
from raymaas.supervised.models import autoencoder, cnn, factory, linear, mlp, rnn
from raymaas.supervised.models.autoencoder import AutoencoderConfig
from raymaas.supervised.models.cnn import CNNConfig, SmallCNN
from raymaas.supervised.models.factory import FactoryConfig, resolve_factory
from raymaas.supervised.models.linear import LinearConfig
from raymaas.supervised.models.mlp import MLP, MLPConfig
from raymaas.supervised.models.rnn import RNNConfig
from raymaas.supervised.models.scaling import Standardize, Unstandardize


class Family(NamedTuple):
    """A model family: the spec section that configures it, and what builds its network from that."""

    config: type[SpecModel]
    build: Callable[[Any, tuple[int, ...], int], nn.Module]


# The built-in families by name (each config's `name` literal). A new family: its module, and a line here.
FAMILIES: dict[str, Family] = {
    "linear": Family(LinearConfig, linear.build),
    "mlp": Family(MLPConfig, mlp.build),
    "cnn": Family(CNNConfig, cnn.build),
    "lstm": Family(RNNConfig, rnn.build),
    "gru": Family(RNNConfig, rnn.build),
    "autoencoder": Family(AutoencoderConfig, autoencoder.build),
}
BUILTIN_MODELS = tuple(FAMILIES)
DEFAULT_MODEL = "mlp"
_FACTORY = Family(FactoryConfig, factory.build)


class _UnknownModel(SpecModel):
    """Where a name that is neither a family nor a factory lands, so that the one error is at
    model.name (not at each field the section came with, as a factory's would be)."""

    model_config = ConfigDict(extra="ignore")

    name: Any

    @field_validator("name")
    @classmethod
    def _unknown(cls, name):
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(FAMILIES)} or package.module:factory")


def _family_tag(section: Any) -> str | None:
    """Which member of ModelSpec a model section is: a built-in family by its name (mlp when it
    has none), a factory by the ':' in its name; None for something that is not a section."""
    if isinstance(section, dict):
        name = section.get("name", DEFAULT_MODEL)
    elif isinstance(section, BaseModel):  # an already validated config, e.g. a field's default
        name = getattr(section, "name", None)
    else:
        return None
    if isinstance(name, str) and name in FAMILIES:
        return name
    if isinstance(name, str) and ":" in name:
        return "factory"
    return "_unknown"  # tags starting with _ are not listed by `raymaas explain`


# The spec's `model` section: the config of one family, picked by its name. A factory's name is
# free text, hence a callable discriminator rather than name as a plain discriminator field.
ModelSpec = Annotated[
    Union[  # built from the registry: a new family is one line there
        tuple(Annotated[family.config, Tag(name)] for name, family in FAMILIES.items())
        + (Annotated[FactoryConfig, Tag("factory")], Annotated[_UnknownModel, Tag("_unknown")])
    ],
    Discriminator(
        _family_tag,
        custom_error_type="model_section",
        custom_error_message="a model section is a mapping with a name: "
        f"{', '.join(FAMILIES)} or package.module:factory",
    ),
]

_MODEL_SPEC = TypeAdapter(ModelSpec)


def parse_model_spec(section: dict) -> SpecModel:
    """A model section (a dict as a spec writes it) validated into its family's config."""
    return _MODEL_SPEC.validate_python(section)


def build_network(spec: SpecModel, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The bare network of spec's family for inputs of input_shape (one row's), with n_outputs outputs."""
    return FAMILIES.get(spec.name, _FACTORY).build(spec, tuple(input_shape), n_outputs)


def build_model(
    spec: SpecModel,
    input_shape: int | tuple[int, ...],
    n_outputs: int,
    mean,
    std,
    target_mean=None,
    target_std=None,
    encoding: dict | None = None,
) -> nn.Module:
    """The network named by spec for inputs of input_shape (one example's: (n_features,) for a
    row, (length, channels) for a sequence; an int is a row's width), behind a Standardize
    layer fitted to the training data (mean and std per feature, or per channel: the last
    axis) and, for regression (target_mean and target_std given), before an Unstandardize
    layer. With an encoding (raymaas.modelcode.tabular.TabularEncoding.to_dict(): categorical
    or imputed columns) a TabularInput layer takes the encoded rows instead of Standardize: it
    fills in missing numbers, standardises them and one-hot encodes or embeds each categorical
    column; the network's input is that layer's width."""
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    first: nn.Module
    if encoding is not None:
        if getattr(spec, "input_is_image", False):
            raise ValueError(
                f"model {spec.name} takes images (square, numeric features), not categorical or imputed columns"
            )
        first = TabularInput(TabularEncoding.from_dict(encoding))
        shape = (first.width,)
    else:
        first = Standardize(torch.as_tensor(mean), torch.as_tensor(std))
    layers = [first, build_network(spec, shape, n_outputs)]
    if target_mean is not None:
        layers.append(Unstandardize(torch.as_tensor(target_mean), torch.as_tensor(target_std)))
    return nn.Sequential(*layers)


__all__ = [
    "AutoencoderConfig",
    "BUILTIN_MODELS",
    "CNNConfig",
    "DEFAULT_MODEL",
    "FAMILIES",
    "FactoryConfig",
    "Family",
    "LinearConfig",
    "MLP",
    "MLPConfig",
    "ModelSpec",
    "RNNConfig",
    "SmallCNN",
    "Standardize",
    "Unstandardize",
    "build_model",
    "build_network",
    "parse_model_spec",
    "resolve_factory",
]
