"""A progressive rollout's state in the MLflow Model Registry (issue 30): start one, read it,
act on raymaas.monitoring.rollout's decisions, end it by hand.

The state lives in tags, so an endpoint that restarts resumes the rollout where it was:

- the registered model's `raymaas.rollout.candidate` names the version whose rollout is active
  (absent: none). The endpoint's poll gets it with the aliases in one get_registered_model
  call, and reading the rest costs one get_model_version more;
- the version's `raymaas.rollout` is its status (active | promoted | rejected | aborted), and
  `raymaas.rollout.*` the share, step, steps, mode, champion, policy, last reason, MLflow run,
  start time and decision count.

Decisions are logged to the rollout's own MLflow run, numbered by the version's
`raymaas.rollout.decisions` tag. Every decision but a hold whose reason is unchanged (which
writes nothing) logs its figures and the share as metrics at step = its number. Advance,
promote and rollback, and a promote or abort by hand (end_rollout), also write the JSON
artifact decisions/NNNN-ACTION.json; a hold with a new reason writes none (a rollout waiting on
labels holds thousands of times), only its metrics and the version's reason and decisions tags.
Ray-free: the endpoint's hub, the CLI and the tests use it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Literal

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raymaas.monitoring.rollout import Decision, RolloutPolicy
from raymaas.tracking.registry import CANDIDATE, CHAMPION, DECISION_TAG, REASON_TAG
from raymaas.tracking.store import ensure_experiment

ROLLOUT_TAG = "raymaas.rollout"  # version tag: active | promoted | rejected | aborted
MODEL_TAG = "raymaas.rollout.candidate"  # registered-model tag: the version whose rollout is active
_P = ROLLOUT_TAG + "."
SHARE_TAG = _P + "share"
STEP_INDEX_TAG = _P + "step_index"
STEPS_TAG = _P + "steps"  # also inside the policy; on its own so the registry UI shows it
MODE_TAG = _P + "mode"
CHAMPION_TAG = _P + "champion"
POLICY_TAG = _P + "policy"
ROLLOUT_REASON_TAG = _P + "reason"
RUN_ID_TAG = _P + "run_id"
STARTED_AT_TAG = _P + "started_at"
STEP_STARTED_AT_TAG = _P + "step_started_at"  # when the share last changed: a step is judged on its own traffic
DECISIONS_TAG = _P + "decisions"  # the rollout run's decision counter: the step of its metrics
OUTCOME_TAG = _P + "outcome"  # run tag, set when the rollout ends
EXPERIMENT = "rollouts"  # where a rollout run goes when the candidate has no training run

Mode = Literal["canary", "shadow"]
Status = Literal["active", "promoted", "rejected", "aborted"]


class RolloutError(ValueError):
    """A rollout that cannot start or end as asked; the message names what is wrong."""


@dataclass(frozen=True)
class RolloutState:
    """One version's rollout, as its registry tags hold it."""

    name: str
    version: str
    champion: str
    mode: Mode
    share: int
    step_index: int
    policy: RolloutPolicy
    status: Status
    reason: str
    run_id: str
    started_at: float
    decisions: int = 0
    step_started_at: float = 0.0  # when the current share began (the start, then each advance)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_dict(self) -> dict:
        """The state as plain JSON-ready values (the policy as its fields)."""
        return {**asdict(self), "policy": self.policy.model_dump(), "active": self.active}


def start_rollout(
    client: MlflowClient,
    name: str,
    policy: RolloutPolicy,
    *,
    canary: int | None = None,
    version: str | None = None,
    shadow: bool = False,
) -> RolloutState:
    """Start rolling version (default: the `candidate` alias) out against the champion at
    `canary` percent (default: the policy's first step); RolloutError if it cannot start."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise RolloutError(f"no registered model named {name!r} in {client.tracking_uri}") from None
    aliases = {alias: str(v) for alias, v in model.aliases.items()}  # the SQLite store returns ints
    if version is None:
        version = aliases.get(CANDIDATE)
        if version is None:
            raise RolloutError(f"{name} has no `{CANDIDATE}` alias: name the version to roll out (--version N)")
    version = str(version)
    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        raise RolloutError(f"{name} has no version {version}") from None
    champion = aliases.get(CHAMPION)
    if champion is None:
        raise RolloutError(
            f"{name} has no `{CHAMPION}` alias, so version {version} has nothing to be compared with: "
            f"promote it by hand (`raymaas promote {name} {version}`) or let the training gate do it"
        )
    if champion == version:
        raise RolloutError(f"version {version} is already {name}'s {CHAMPION}")
    active = read_rollout(client, name, model)
    if active is not None:
        raise RolloutError(
            f"a rollout of {name} version {active.version} is already active at {active.share}% of requests: "
            f"end it first with `raymaas rollout {name} --abort` (or --promote)"
        )
    if canary is not None:
        if not 0 < canary <= 100:
            raise RolloutError(f"the canary share must be a percentage in (0, 100], got {canary}")
        # The canary is the first step; the policy's later steps above it follow.
        steps = [canary] + [s for s in policy.steps if s > canary]
        policy = RolloutPolicy.model_validate({**policy.model_dump(), "steps": steps})
    share = policy.steps[0]
    mode: Mode = "shadow" if shadow else "canary"
    started_at = time.time()
    run_id = _create_run(client, name, version, champion, mode, policy, mv.run_id)
    state = RolloutState(
        name=name,
        version=version,
        champion=champion,
        mode=mode,
        share=share,
        step_index=0,
        policy=policy,
        status="active",
        reason=f"started at {share}% against champion version {champion}",
        run_id=run_id,
        started_at=started_at,
        step_started_at=started_at,
        decisions=0,
    )
    # Every version tag (overwriting an earlier rollout's) before the model tag that makes the
    # rollout visible, so an endpoint never reads a half-written state.
    _set_version_tags(client, state, _tags(state))
    client.set_registered_model_tag(name, MODEL_TAG, version)
    return state


def read_rollout(client: MlflowClient, name: str, model=None) -> RolloutState | None:
    """The active rollout of name, or None; `model`, a RegisteredModel already fetched, saves a call."""
    if model is None:
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            return None
    version = model.tags.get(MODEL_TAG)
    if not version:
        return None
    state = _read_version(client, name, str(version))
    # A model tag left on an ended version (a writer that stopped between the two writes) is no rollout.
    return state if state is not None and state.active else None


def last_rollout(client: MlflowClient, name: str) -> RolloutState | None:
    """The active rollout of name, else the one started last; RolloutError for an unknown model."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise RolloutError(f"no registered model named {name!r} in {client.tracking_uri}") from None
    active = read_rollout(client, name, model)
    if active is not None:
        return active
    states = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        states += [s for s in (_state(name, mv) for mv in page) if s is not None]
        token = page.token
        if not token:
            break
    return max(states, key=lambda s: s.started_at, default=None)


def apply_decision(client: MlflowClient, state: RolloutState, decision: Decision) -> RolloutState:
    """Act on decide()'s decision for state's rollout and log it; the rollout's state after.
    The version's tags are read again first (RolloutError if it has no rollout): a rollout that
    ended meanwhile (aborted by hand) or was started again since (another run) is left as it
    is, nothing written, and returned fresh.

    - hold with the reason the version's tag already holds: nothing written (the hub looks
      every few seconds);
    - hold with a new reason: the figures and share as metrics at step = the decision's
      number, and the version's reason and decisions tags; no artifact;
    - advance: those metrics, decisions/NNNN-advance.json, and the share, step_index,
      step_started_at, reason and decisions tags;
    - promote and rollback (_end): those metrics, decisions/NNNN-promote.json or
      NNNN-rollback.json, the status (promoted | rejected), share (100 | 0), reason and
      decisions tags, raymaas.promotion and its reason as registry.promote sets them (champion |
      rejected by rollout), the champion alias moved on promote; then the model tag is dropped
      and the run ends FINISHED with its raymaas.rollout.outcome tag."""
    fresh = _read_version(client, state.name, state.version)
    if fresh is None:
        raise RolloutError(f"{state.name} version {state.version} has no rollout any more")
    if not fresh.active or fresh.run_id != state.run_id:
        return fresh
    if decision.action == "hold":
        if decision.reason == fresh.reason:
            # The hub looks every few seconds: an unchanged hold writes nothing.
            return fresh
        after = replace(fresh, reason=decision.reason, decisions=fresh.decisions + 1)
        _log_decision(client, fresh, after, decision.action, decision.reason, decision.figures)
        _set_version_tags(client, after, {ROLLOUT_REASON_TAG: after.reason, DECISIONS_TAG: str(after.decisions)})
        return after
    if decision.action == "advance":
        if fresh.step_index + 1 >= len(fresh.policy.steps):
            raise ValueError(f"cannot advance past the last step ({fresh.share}%): the decision there is promote")
        after = replace(
            fresh,
            share=int(decision.next_share),
            step_index=fresh.step_index + 1,
            reason=decision.reason,
            decisions=fresh.decisions + 1,
            step_started_at=time.time(),
        )
        _log_decision(client, fresh, after, decision.action, decision.reason, decision.figures)
        _set_version_tags(
            client,
            after,
            _tags(after, keys=(SHARE_TAG, STEP_INDEX_TAG, STEP_STARTED_AT_TAG, ROLLOUT_REASON_TAG, DECISIONS_TAG)),
        )
        return after
    if decision.action == "promote":
        return _end(client, fresh, "promoted", decision.reason, decision.action, decision.figures)
    if decision.action == "rollback":
        return _end(client, fresh, "rejected", decision.reason, decision.action, decision.figures)
    raise ValueError(f"unknown decision action {decision.action!r}")


def end_rollout(
    client: MlflowClient, name: str, action: Literal["promote", "abort"], reason: str | None = None
) -> RolloutState:
    """End name's active rollout by hand: promote the candidate or abort (share 0, champion kept)."""
    if action not in ("promote", "abort"):
        raise ValueError(f"action must be promote or abort, got {action!r}")
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise RolloutError(f"no registered model named {name!r} in {client.tracking_uri}") from None
    state = read_rollout(client, name, model)
    if state is None:
        raise RolloutError(f"no rollout of {name} is active: `raymaas rollout status {name}` shows the last one")
    if action == "promote":
        return _end(client, state, "promoted", reason or "promoted by hand", "promote", {})
    return _end(client, state, "aborted", reason or "aborted by hand", "abort", {})


# --------------------------------------------------------------------------- internals


def _create_run(
    client: MlflowClient, name: str, version: str, champion: str, mode: str, policy: RolloutPolicy, training_run: str
) -> str:
    """The rollout's MLflow run, in the experiment of the candidate's training run (as the
    endpoint's monitoring run), else in `rollouts`."""
    experiment_id = None
    if training_run:
        try:
            experiment_id = client.get_run(training_run).info.experiment_id
        except MlflowException:
            experiment_id = None
    if experiment_id is None:
        experiment_id = ensure_experiment(client, EXPERIMENT)
    run = client.create_run(
        experiment_id,
        run_name=f"rollout-{name}-v{version}",
        tags={
            "raymaas.job_kind": "rollout",  # not a training run: `raymaas runs` shows it as such
            _P + "model": name,
            _P + "version": version,
            _P + "champion": champion,
            "mlflow.note.content": f"Progressive rollout of {name} version {version} against champion "
            f"version {champion}: each decision's figures and reason.",
        },
    )
    params = {"mode": mode, "champion": champion, "candidate": version}
    for field, value in policy.model_dump().items():
        params[field] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


def _tags(state: RolloutState, keys: tuple[str, ...] | None = None) -> dict[str, str]:
    """The version tags that hold state (only `keys`, if given)."""
    tags = {
        ROLLOUT_TAG: state.status,
        SHARE_TAG: str(state.share),
        STEP_INDEX_TAG: str(state.step_index),
        STEPS_TAG: ",".join(map(str, state.policy.steps)),
        MODE_TAG: state.mode,
        CHAMPION_TAG: state.champion,
        POLICY_TAG: state.policy.model_dump_json(),
        ROLLOUT_REASON_TAG: state.reason,
        RUN_ID_TAG: state.run_id,
        STARTED_AT_TAG: repr(state.started_at),
        STEP_STARTED_AT_TAG: repr(state.step_started_at),
        DECISIONS_TAG: str(state.decisions),
    }
    return tags if keys is None else {k: tags[k] for k in keys}


def _set_version_tags(client: MlflowClient, state: RolloutState, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(state.name, state.version, key, value)


def _read_version(client: MlflowClient, name: str, version: str) -> RolloutState | None:
    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        return None
    return _state(name, mv)


def _state(name: str, mv) -> RolloutState | None:
    """A version's rollout from its tags, or None if it was never rolled out."""
    tags = mv.tags
    if ROLLOUT_TAG not in tags or POLICY_TAG not in tags:
        return None
    return RolloutState(
        name=name,
        version=str(mv.version),
        champion=tags.get(CHAMPION_TAG, ""),
        mode=tags.get(MODE_TAG, "canary"),
        share=int(tags.get(SHARE_TAG, 0)),
        step_index=int(tags.get(STEP_INDEX_TAG, 0)),
        policy=RolloutPolicy.model_validate_json(tags[POLICY_TAG]),
        status=tags[ROLLOUT_TAG],
        reason=tags.get(ROLLOUT_REASON_TAG, ""),
        run_id=tags.get(RUN_ID_TAG, ""),
        started_at=float(tags.get(STARTED_AT_TAG, 0.0)),
        step_started_at=float(tags.get(STEP_STARTED_AT_TAG, tags.get(STARTED_AT_TAG, 0.0))),
        decisions=int(tags.get(DECISIONS_TAG, 0)),
    )


def _end(
    client: MlflowClient, state: RolloutState, status: Status, reason: str, action: str, figures: dict
) -> RolloutState:
    """Promote, reject or abort: the version's tags, the champion alias on promotion, the model
    tag removed, the run ended."""
    share = 100 if status == "promoted" else 0
    after = replace(state, status=status, share=share, reason=reason, decisions=state.decisions + 1)
    _log_decision(client, state, after, action, reason, figures)
    if status == "promoted":
        client.set_registered_model_alias(state.name, CHAMPION, state.version)
    _set_version_tags(client, after, _tags(after, keys=(ROLLOUT_TAG, SHARE_TAG, ROLLOUT_REASON_TAG, DECISIONS_TAG)))
    if status == "promoted":
        # What registry.promote records, so `raymaas models` shows why it is champion.
        _set_version_tags(client, after, {DECISION_TAG: "champion", REASON_TAG: reason})
    elif status == "rejected":
        _set_version_tags(client, after, {DECISION_TAG: "rejected by rollout", REASON_TAG: reason})
    # Only after the version's tags: a reader between the two writes sees an ended version and
    # no rollout (read_rollout checks the status), never an active rollout at a stale share.
    try:
        client.delete_registered_model_tag(state.name, MODEL_TAG)
    except MlflowException:
        pass  # already gone
    client.set_tag(state.run_id, OUTCOME_TAG, status)
    client.set_terminated(state.run_id, "KILLED" if status == "aborted" else "FINISHED")
    return after


def _log_decision(
    client: MlflowClient, before: RolloutState, after: RolloutState, action: str, reason: str, figures: dict
) -> None:
    """One decision to the rollout's run: figures and share as metrics at step = its number, and
    but for a hold, decisions/NNNN-ACTION.json (a rollout waiting on labels for a day holds
    some thousands of times: its metrics keep each look, its reason tag the last)."""
    now = time.time()
    millis = int(now * 1000)
    step = after.decisions
    metrics = [Metric(k, float(v), millis, step) for k, v in figures.items()]
    metrics.append(Metric("share", float(after.share), millis, step))
    client.log_batch(before.run_id, metrics=metrics)
    record = {
        "decision": step,
        "action": action,
        "reason": reason,
        "share_before": before.share,
        "share_after": after.share,
        "step_index": after.step_index,
        "figures": {k: float(v) for k, v in figures.items()},
        "time": now,
    }
    if action != "hold":
        client.log_dict(before.run_id, record, f"decisions/{step:04d}-{action}.json")
