"""Model Registry: register a version, tag it `candidate`, move `champion` by a metric gate."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raymaas.model_refs import CHAMPION, ModelRef

CANDIDATE = "candidate"
# Version tags that record the gate's decision, so the registry UI shows why.
GATE_METRIC_TAG = "raymaas.gate_metric"
GATE_VALUE_TAG = "raymaas.gate_value"
DECISION_TAG = "raymaas.promotion"
REASON_TAG = "raymaas.promotion_reason"


@dataclass(frozen=True)
class Promotion:
    version: str
    promoted: bool
    reason: str


def register_model(
    client: MlflowClient,
    model_uri: str,
    name: str,
    metric: str,
    value: float,
) -> str:
    """Register model_uri as a new version of name, alias it `candidate`; return the version."""
    import mlflow

    # mlflow.register_model resolves MLflow 3's `models:/m-...` logged-model URIs and waits
    # until the version is READY.
    mlflow.set_registry_uri(client._registry_uri)
    mv = mlflow.register_model(
        model_uri,
        name,
        tags={
            GATE_METRIC_TAG: metric,
            GATE_VALUE_TAG: repr(float(value)),
        },
    )
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    return mv.version


def promote_if_better(client: MlflowClient, name: str, version: str, higher_is_better: bool = True) -> Promotion:
    """Move `champion` to version if its gate metric beats the champion's; record why."""
    mv = client.get_model_version(name, version)
    metric = mv.tags.get(GATE_METRIC_TAG)
    value = _gate_value(mv)
    champion = _alias_version(client, name, CHAMPION)
    if value is None:
        promoted, reason = False, f"version {version} has no {GATE_VALUE_TAG} tag to compare"
    elif champion is None:
        promoted, reason = True, f"first champion ({metric}={value:.4f})"
    elif str(champion.version) == str(version):  # the SQLite store returns ints
        promoted, reason = True, "already champion"
    else:
        best = _gate_value(champion)
        if best is None:
            promoted, reason = True, f"champion v{champion.version} has no gate metric"
        else:
            beats = value > best if higher_is_better else value < best
            verb = "beats" if beats else "does not beat"
            promoted = beats
            reason = f"{metric} {value:.4f} {verb} champion v{champion.version}'s {best:.4f}"
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, DECISION_TAG, "champion" if promoted else "kept candidate")
    client.set_model_version_tag(name, version, REASON_TAG, reason)
    return Promotion(str(version), promoted, reason)


def promote(client: MlflowClient, name: str, version: str) -> None:
    """Move `champion` to version by hand (the decision is recorded on the version)."""
    client.get_model_version(name, version)  # raises a clear MlflowException if absent
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, DECISION_TAG, "champion")
    client.set_model_version_tag(name, version, REASON_TAG, "promoted by hand")


def find_version(client: MlflowClient, ref: ModelRef):
    """The ModelVersion a registered model's reference (raymaas.model_refs) stands for now;
    LookupError saying what the registry lacks: the model, the version, or the alias (with
    the aliases it has)."""
    where = client.tracking_uri
    try:
        registered = client.get_registered_model(ref.name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise LookupError(f"cannot read the model registry at {where}: {err.message}") from None
        raise LookupError(f"no registered model named {ref.name!r} in {where} (`raymaas models` lists them)") from None
    try:
        if ref.version is not None:
            return client.get_model_version(ref.name, ref.version)
        return client.get_model_version_by_alias(ref.name, ref.alias)
    except MlflowException:
        if ref.version is not None:
            raise LookupError(f"registered model {ref.name!r} has no version {ref.version}") from None
        aliases = sorted(registered.aliases or {})
        known = f"its aliases: {', '.join(aliases)}" if aliases else "it has no aliases"
        raise LookupError(
            f"registered model {ref.name!r} has no alias {ref.alias!r} ({known}; NAME/VERSION names a version)"
        ) from None


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _gate_value(mv) -> float | None:
    raw = mv.tags.get(GATE_VALUE_TAG)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
