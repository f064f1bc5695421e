"""The table of job kinds: the one place the CLI, the demo and the entrypoints look a kind up.

A kind is a spec model, the function that runs it, and the metric its registry gate compares.
Adding one is a module (its spec model at the top, a run function that calls
`raymaas.runtime.driver.run_job`) plus a row here; see the README's "Your own job kind".

Rows name their spec model and run function as "module:attribute" strings, imported only when
used: `raymaas explain rl` must not import torch's training stack, and validating a
supervised spec must not import RLlib.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobKind:
    name: str  # the spec's `kind:` value
    spec_model: str  # "module:Class", a raymaas.specs.JobSpec subclass
    run: str  # "module:function", (spec, address) -> raymaas.runtime.driver.JobOutcome
    gate_metric: str  # the metric the registry gate compares (tagged on each version)
    higher_is_better: bool
    title: str  # one line for --help and `raymaas explain`
    entrypoint: str = "jobs.run"  # `python -m ENTRYPOINT SPEC`: what `raymaas train` runs
    # "module:attribute", a raymaas.sweep.job.Trials for this kind's specs: the parts of a job a
    # sweep runs once per trial. None: the kind's specs take no tune_config.
    sweep: str | None = None

    def load_spec_model(self) -> type:
        return _import(self.spec_model)

    def load_run(self) -> Callable[..., Any]:
        return _import(self.run)

    def load_sweep(self) -> Any:
        return _import(self.sweep) if self.sweep else None


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind(
            "supervised",
            "raymaas.supervised.job:SupervisedSpec",
            "raymaas.supervised.job:run_training",
            gate_metric="val_accuracy",
            higher_is_better=True,
            entrypoint="jobs.supervised",
            sweep="raymaas.supervised.job:TRIALS",
            title="a PyTorch model trained with Ray Train (DDP over num_workers workers)",
        ),
        JobKind(
            "rl",
            "raymaas.rl.job:RLSpec",
            "raymaas.rl.job:run_rl",
            gate_metric="eval_return_mean",
            higher_is_better=True,
            entrypoint="jobs.rl",
            sweep="raymaas.rl.job:TRIALS",
            title="an RLlib policy (PPO or DQN) on a gymnasium environment",
        ),
    )
}


# `python -m jobs.sweep SPEC`: what `raymaas train` runs for a spec with tune_config, of any kind
# whose row names its Trials.
SWEEP_ENTRYPOINT = "jobs.sweep"


# Metrics for which a lower value is the better model: the gate's direction for a metric a
# spec names in mlflow.gate_metric (a kind's own gate metric has its row's direction).
_LOWER_IS_BETTER_SUFFIXES = ("loss", "rmse", "mae", "mse", "error", "seconds")


def higher_is_better(metric: str) -> bool:
    return not metric.endswith(_LOWER_IS_BETTER_SUFFIXES)


class UnknownKind(KeyError):
    def __str__(self) -> str:
        return f"unknown job kind {self.args[0]!r} (kinds: {', '.join(KINDS)})"


def get_kind(name: str) -> JobKind:
    """The row of a kind; UnknownKind names the kinds there are."""
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(name) from None


def kind_of(data: dict) -> str:
    """The kind of a raw spec: its `kind:`, else `rl` if it names an `algo`, else `supervised`."""
    if "kind" in data:
        return str(data["kind"])
    return "rl" if "algo" in data else "supervised"


def _import(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
