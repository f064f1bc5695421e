"""Job specs: YAML files validated by pydantic models, with `--set key.sub=value` overrides."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from raymaas.sweep.space import TuneConfigSpec

# A spec that fails validation exits with this code, before anything is started.
EXIT_INVALID_SPEC = 2


class SpecModel(BaseModel):
    """Base of every spec section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class MlflowSpec(SpecModel):
    experiment_name: str | None = Field(None, description="MLflow experiment (default: the job name)")
    run_name: str | None = Field(None, description="a run name continues that run if it exists (default: a new name)")
    registered_model_name: str | None = Field(None, description="Model Registry name (default: the job name)")
    gate_metric: str | None = Field(
        None,
        description="the metric the registry gate compares (default: the kind's; supervised regression: "
        "val_rmse); losses and errors promote only when lower",
    )


class JobSpec(SpecModel):
    """What every job kind's spec has: a name, and the MLflow names that default to it."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="job name: experiment and registered model default to it",
    )
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec, description="MLflow experiment, run and registry names")

    @property
    def is_sweep(self) -> bool:
        return False

    def tracked_params(self) -> dict[str, Any]:
        """The spec as MLflow params: its dotted fields."""
        return flatten(self.model_dump(mode="json"))

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment_name or self.name

    @property
    def registered_model_name(self) -> str:
        return self.mlflow.registered_model_name or self.name

    def gate(self, kind) -> Gate:
        """The metric the registry gate compares for this job, and its direction."""
        from raymaas.kinds import higher_is_better

        metric = self.mlflow.gate_metric or self.default_gate_metric(kind)
        return Gate(metric, kind.higher_is_better if metric == kind.gate_metric else higher_is_better(metric))

    def default_gate_metric(self, kind) -> str:
        return kind.gate_metric


class TrainingJobSpec(JobSpec):
    """A spec of a kind that trains a model: it may also be a sweep of such jobs on Ray Tune."""

    tune_config: TuneConfigSpec | None = Field(
        None, description="a sweep: ray.tune.TuneConfig for the trials (with param_space)"
    )
    param_space: dict[str, Any] | None = Field(
        None,
        description="a sweep: dotted spec fields and their search space, e.g. "
        "train_loop_config.lr: {loguniform: [1.0e-4, 1.0e-2]}; choice, grid_search, uniform, loguniform, randint",
    )

    @field_validator("param_space")
    @classmethod
    def _dotted_fields(cls, space):
        from raymaas.sweep.space import flatten_space

        return None if space is None else flatten_space(space)

    @model_validator(mode="after")
    def _space_fits_the_spec(self):
        if self.tune_config is None and self.param_space is None:
            return self
        if self.tune_config is None or not self.param_space:
            raise ValueError("a sweep has both tune_config and param_space (one field at least)")
        from raymaas.kinds import get_kind
        from raymaas.sweep.space import check_space, parse_space

        kind = get_kind(self.kind)
        if kind.sweep is None:
            raise ValueError(f"tune_config: sweeps of {kind.name} jobs are not supported yet")
        base = self.model_dump(mode="json", exclude={"tune_config", "param_space"})
        self._probes = check_space(type(self), base, parse_space(self.param_space))
        return self

    # check_space's probes, kept from validation: (field, value, the validated trial spec)
    _probes: list[tuple[str, Any, Any]] = PrivateAttr(default_factory=list)

    @property
    def sweep_probes(self) -> list[tuple[str, Any, Any]]:
        """Each value the sweep's domains probe (Domain.probes), set alone in the base spec:
        (field, value, that trial's spec), validated with the spec."""
        return self._probes

    @property
    def is_sweep(self) -> bool:
        return self.tune_config is not None

    def tracked_params(self) -> dict[str, Any]:
        """The spec as MLflow params: dotted fields (a single job's run has no sweep sections)."""
        return flatten(self.model_dump(mode="json", exclude=None if self.is_sweep else {"tune_config", "param_space"}))


@dataclass(frozen=True)
class Gate:
    metric: str
    higher_is_better: bool

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and what is wrong."""


SpecT = TypeVar("SpecT", bound=SpecModel)


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader without YAML 1.1's base-60 numbers: `actors: 1:4` (or `--set
    actors=1:4`) reaches the spec as the text "1:4", which a range field reads as MIN:MAX,
    instead of the integer 64."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not (tag.endswith(":int") or tag.endswith(":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern in (
    # YAML 1.1's int and float patterns (PyYAML's), less their sexagesimal alternatives
    ("tag:yaml.org,2002:int", r"[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+"),
    (
        "tag:yaml.org,2002:float",
        r"[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
    ),
):
    _SpecLoader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), list("-+0123456789."))


def load_yaml(text: str):
    """A spec's YAML (or a --set value) as data: yaml.safe_load less base-60 numbers."""
    return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader subclass)


# parse_range's message for a value that is no count or range at all
_NOT_A_RANGE = "not a whole number: give N, [MIN, MAX] or MIN:MAX, e.g. 2, [1, 4] or 1:4"


def parse_range(value: Any, least: int = 1) -> int | tuple[int, int]:
    """N (at least `least`), [MIN, MAX] or "MIN:MAX" (MIN at least 1) as N or (MIN, MAX), [N, N] as N.

    ValueError says what is wrong; the caller names the field (a spec error's location, argparse's
    option), so the message does not."""
    if isinstance(value, str):
        parts = value.strip().split(":")
        try:
            value = int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
        except ValueError:
            raise ValueError(_NOT_A_RANGE) from None
    if isinstance(value, list | tuple):
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError("a range is [MIN, MAX], two whole numbers")
        low, high = value
        if low < 1:
            raise ValueError("MIN must be at least 1")
        if low > high:
            raise ValueError(f"MIN {low} is more than MAX {high}")
        return low if low == high else (low, high)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(_NOT_A_RANGE)
    if value < least:
        raise ValueError(f"must be at least {least}")
    return value


def parse_overrides(items: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse `key.sub=value` strings; values are read as YAML scalars (3 -> int, true -> bool)."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, for example train_loop_config.epochs=3")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {item!r}: value is not valid YAML ({exc.problem})") from None
        parsed.append((key.strip().split("."), value))
    return parsed


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Return a copy of the raw spec dict with each override applied at its dotted path."""
    data = _deep_copy(data)
    for path, value in parse_overrides(overrides):
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise SpecError(f"--set {'.'.join(path)}: {where} is a {type(child).__name__}, not a section")
            node = child
        node[path[-1]] = value
    return data


def read_spec_file(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """A YAML spec as a raw dict with overrides applied; SpecError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} does not exist")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a mapping of fields, got {type(data).__name__}")
    return apply_overrides(data, overrides)


def load_spec(model: type[SpecT], path: str | Path, overrides: Iterable[str] = ()) -> SpecT:
    """Read a YAML spec, apply overrides and validate it; raise SpecError naming the bad field."""
    return validate_spec(model, read_spec_file(path, overrides), source=str(path))


def validate_spec(model: type[SpecT], data: dict, source: str = "spec") -> SpecT:
    """Validate a raw dict into a spec model; raise SpecError with one line per bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source, model)) from None


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel]) -> str:
    lines = [f"invalid spec {source}:"]
    for err in exc.errors():
        field, member = spec_location(model, err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and member is not None:
            msg = f"not a field of {field.rpartition('.')[0]} ({member}); `raymaas explain` lists each one's fields"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `raymaas explain` lists the fields)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        # pydantic prefixes messages from our own validators with "Value error, ".
        msg = msg.removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        # a check across fields names the fields in its message
        lines.append(f"  {field}: {msg}{shown}" if field else f"  {msg}")
    return "\n".join(lines)


def spec_location(model: type[BaseModel], loc: tuple) -> tuple[str, str | None]:
    """An error's location as the spec's dotted field, and the tag of the union member it is in
    (the model family, for a field of a `model` section). pydantic puts a tagged union's tag in the
    location (model.mlp.hidden_sizes), a key no spec has."""
    parts: list[str] = []
    member = entered = None
    node: Any = model
    rest = list(loc)
    while rest:
        part = rest.pop(0)
        parts.append(str(part))
        member, entered = entered, None  # the member this part is a field of, if any
        fields = node.model_fields if isinstance(node, type) and issubclass(node, BaseModel) else {}
        field = fields.get(part) if isinstance(part, str) else None
        members = _union_members(field) if field is not None else None
        if members and rest and rest[0] in members:
            entered = rest.pop(0)
            node = members[entered]
        else:
            node = _section_model(field.annotation) if field is not None else None
    return ".".join(parts), member


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, description) for every field of a spec, sections expanded; a
    section that is one of several models (a tagged union: the supervised `model`) shows the
    fields they share once, then each member's own as `section (tag).field`; a model that
    several tags name (lstm and gru: RNNConfig) is described once, as `section (tag | tag).field`."""
    rows = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        members = _union_members(field)
        if members:
            rows.append((dotted, "", field.description or ""))
            rows.extend(_describe_members(dotted, members, field.get_default(call_default_factory=True)))
            continue
        ann = _section_model(field.annotation)
        if ann is not None:
            optional = "" if field.is_required() or field.get_default(call_default_factory=True) is not None else "None"
            rows.append((dotted, optional, field.description or ""))
            rows.extend(describe_fields(ann, f"{dotted}."))
            continue
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((dotted, default, field.description or ""))
    return rows


def _describe_members(dotted: str, members: dict[str, type[BaseModel]], default: Any) -> list[tuple[str, str, str]]:
    # A member tagged _... only carries an error (a model name that is no family): not listed.
    listed = {tag: cls for tag, cls in members.items() if not tag.startswith("_")}
    shared = set.intersection(*(set(cls.model_fields) for cls in listed.values()))
    rows = [
        (f"{dotted}.{name}", repr(getattr(default, name, None)), f"which section below applies: {', '.join(listed)}")
        for name in sorted(shared)
    ]
    # The tags of each model, in the order the first of them is listed: a model under several
    # tags has the same fields under each, so it is described once, naming them all.
    tags_of: dict[type[BaseModel], list[str]] = {}
    for tag, cls in listed.items():
        tags_of.setdefault(cls, []).append(tag)
    for cls, tags in tags_of.items():
        section = f"{dotted} ({' | '.join(tags)})"
        rows.append((section, "", " ".join((cls.__doc__ or "").split())))
        rows.extend(
            row for row in describe_fields(cls, f"{section}.") if row[0] not in {f"{section}.{s}" for s in shared}
        )
    return rows


def _union_members(field: FieldInfo) -> dict[str, type[BaseModel]] | None:
    """The members of a field typed as a tagged union (pydantic's Discriminator and Tags), by tag."""
    if not any(isinstance(m, Discriminator) for m in field.metadata):
        return None
    members = {}
    for arg in typing.get_args(field.annotation):
        cls, *marks = typing.get_args(arg)  # Annotated[cls, Tag(tag)]
        tag = next(m.tag for m in marks if isinstance(m, Tag))
        members[tag] = cls
    return members


def _section_model(annotation) -> type[BaseModel] | None:
    """The section model of a field typed as one, or as one or None (tune_config)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
