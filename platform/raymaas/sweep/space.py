"""A sweep's two spec sections: `tune_config` (after ray.tune.TuneConfig) and `param_space`
(dotted spec fields mapped to one of Tune's search-space functions), and the checks that a
space can only draw values the spec accepts.

Ray-free and torch-free: a spec with a space is checked by `raymaas train` before anything
starts. raymaas.sweep.job turns a space into Tune's.

    param_space:
      train_loop_config.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.hidden_sizes: {choice: [[64], [128, 64]]}
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The search-space functions of ray.tune a domain may name, and what their list holds.
DOMAINS = {
    "choice": "the values to pick from",
    "grid_search": "the values to try, each once per sample",
    "uniform": "[low, high]: real numbers",
    "loguniform": "[low, high]: real numbers, uniform in their logarithm (low > 0)",
    "randint": "[low, high): integers, high excluded",
}
# Sections a sweep cannot vary: they name the sweep itself (its runs, model and experiment).
FIXED = ("name", "kind", "mlflow", "tune_config", "param_space")
# An interior point of a range, as a fraction of it: irrational, so an integer field is never
# handed an integer by chance.
_INTERIOR = 1 / math.pi


class TuneConfigSpec(BaseModel):
    # raymaas.specs.SpecModel's rule (unknown keys are errors), here since specs imports this module
    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(1, ge=1, description="trials to run (with grid_search: repeats of the whole grid)")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="trials at once (default: as many as the cluster's CPUs and GPUs hold)"
    )
    metric: str | None = Field(None, description="what picks the best trial (default: the job's gate metric)")
    mode: Literal["max", "min"] | None = Field(None, description="max or min (default: the gate metric's direction)")
    search_alg: Literal["random", "optuna"] = Field(
        "random", description="random (and grid) search, or Optuna's TPE through Tune's OptunaSearch"
    )
    scheduler: Literal["fifo", "asha"] = Field(
        "fifo", description="fifo runs every trial to its end; asha stops the weak ones early"
    )
    grace_period: int = Field(1, ge=1, description="asha: epochs (or iterations) a trial always gets")
    reduction_factor: float = Field(4, gt=1, description="asha: keep 1 in reduction_factor trials at each rung")
    time_budget_s: float | None = Field(
        None, gt=0, description="stop starting and running trials after this many seconds"
    )
    seed: int | None = Field(0, description="seed of the search algorithm (null: a new search each run)")


class Domain:
    """One searched field: its Tune function and the list it takes."""

    def __init__(self, field: str, raw: Any):
        self.field = field
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ValueError(
                f"param_space.{field}: one of {', '.join(DOMAINS)} with its list, "
                f"e.g. {{loguniform: [1.0e-4, 1.0e-2]}} (got {raw!r})"
            )
        ((self.kind, self.values),) = raw.items()
        if self.kind not in DOMAINS:
            raise ValueError(f"param_space.{field}: unknown search space {self.kind!r} (one of {', '.join(DOMAINS)})")
        values = self.values
        if not isinstance(values, list) or not values:
            raise ValueError(f"param_space.{field}: {self.kind} takes a list, {DOMAINS[self.kind]}")
        if self.kind in ("uniform", "loguniform", "randint"):
            if len(values) != 2 or not all(_is_number(v) for v in values):
                raise ValueError(f"param_space.{field}: {self.kind} takes {DOMAINS[self.kind]} (got {values!r})")
            low, high = values
            if not low < high:
                raise ValueError(f"param_space.{field}: {self.kind} needs low < high (got {values!r})")
            if self.kind == "loguniform" and low <= 0:
                raise ValueError(f"param_space.{field}: loguniform needs low > 0 (got {values!r})")
            if self.kind == "randint" and not all(isinstance(v, int) for v in values):
                raise ValueError(f"param_space.{field}: randint takes integers (got {values!r})")

    @property
    def categorical(self) -> bool:
        return self.kind in ("choice", "grid_search")

    def probes(self) -> list[Any]:
        """Values this domain can draw that between them find a range the spec refuses: the
        ends of a range and a point inside it, or every value of a list."""
        if self.categorical:
            return list(self.values)
        low, high = self.values
        if self.kind == "randint":
            return [low, high - 1]
        if self.kind == "uniform":
            return [float(low), float(high), low + (high - low) * _INTERIOR]
        return [float(low), float(high), low * (high / low) ** _INTERIOR]

    def describe(self) -> str:
        return f"{self.kind}({self.values!r})"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A space with its fields as dotted keys: sections may also be nested, as `--set
    param_space.train_loop_config.lr=...` writes them. A mapping whose one key names a search
    space (or holds a list) is a field's domain; any other mapping is a section."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        # {kind: [...]}: a domain (an unknown kind is named as such by Domain), else a section
        domain = isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list)
        if isinstance(value, dict) and not domain:
            if not value:
                raise ValueError(f"param_space.{name}: an empty section")
            flat.update(flatten_space(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parse_space(space: dict[str, Any]) -> dict[str, Domain]:
    if not space:
        raise ValueError("param_space: a sweep searches at least one field")
    domains = {}
    for field, raw in flatten_space(space).items():
        top = field.split(".")[0]
        if top in FIXED:
            raise ValueError(f"param_space.{field}: {top} names the sweep itself and is not searched")
        domains[field] = Domain(field, raw)
    return domains


def set_field(data: dict, field: str, value: Any) -> dict:
    """A copy of the raw spec data with the dotted field set (sections made as needed)."""
    import copy

    data = copy.deepcopy(data)
    node = data
    parts = field.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ValueError(f"param_space.{field}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value
    return data


def trial_data(base: dict, values: dict[str, Any]) -> dict:
    """The raw spec of one trial: the sweep's spec without its sweep sections, values set."""
    data = {k: v for k, v in base.items() if k not in ("tune_config", "param_space")}
    for field, value in values.items():
        data = set_field(data, field, value)
    return data


def check_space(spec_model: type, base: dict, domains: dict[str, Domain]) -> list[tuple[str, Any, Any]]:
    """Every value each domain can draw, set alone in the base spec, validates: else a
    ValueError naming the field, the value and what the spec says of it. Returns each probe
    (Domain.probes) as (field, value, its validated spec), for what the sweep derives from them."""
    from pydantic import ValidationError

    from raymaas.specs import spec_location  # raymaas.specs imports this module

    probed = []
    for field, domain in domains.items():
        for value in domain.probes():
            try:
                probed.append((field, value, spec_model.model_validate(trial_data(base, {field: value}))))
            except ValidationError as exc:
                err = exc.errors()[0]
                where, member = spec_location(spec_model, err["loc"])
                # the field itself unknown, not a field the drawn value refuses (model.name: cnn
                # refuses the mlp's model.hidden_sizes)
                unknown = f"not a field of {where.rpartition('.')[0]} ({member})" if member else f"{where} is unknown"
                if err["type"] == "extra_forbidden" and (field == where or field.startswith(where + ".")):
                    raise ValueError(f"param_space.{field}: no such spec field ({unknown})") from None
                msg = unknown if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
                raise ValueError(
                    f"param_space.{field}: {domain.describe()} can draw {value!r}, which the spec refuses: "
                    f"{where or field}: {msg}"
                ) from None
    return probed
