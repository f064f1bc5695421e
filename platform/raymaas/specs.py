"""Job specs: YAML files validated by pydantic models, with `--set key.sub=value` overrides."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        check_space(type(self), base, parse_space(self.param_space))
        return self

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


def parse_overrides(items: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse `key.sub=value` strings; values are read as YAML scalars (3 -> int, true -> bool)."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, for example train_loop_config.epochs=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
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
        data = yaml.safe_load(path.read_text()) or {}
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
        raise SpecError(format_validation_error(exc, source)) from None


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid spec {source}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
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
    """(dotted name, default, description) for every field of a spec, sections expanded."""
    rows = []
    for name, field in model.model_fields.items():
        ann = _section_model(field.annotation)
        dotted = f"{prefix}{name}"
        if ann is not None:
            optional = "" if field.is_required() or field.get_default(call_default_factory=True) is not None else "None"
            rows.append((dotted, optional, field.description or ""))
            rows.extend(describe_fields(ann, f"{dotted}."))
            continue
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((dotted, default, field.description or ""))
    return rows


def _section_model(annotation) -> type[BaseModel] | None:
    """The section model of a field typed as one, or as one or None (tune_config)."""
    import typing

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
