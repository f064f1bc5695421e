"""The endpoint-wide view of one model application: MonitorHub, one replica (no CPU) beside
the endpoint (raymaas.serving.monitoring has the replicas' side). It adds the replicas' bin
counts up, computes drift (raymaas.monitoring.drift) and live metrics, each version apart,
sets the drift, live and rollout gauges, matches /feedback's labels to predictions, logs the
report to a monitoring run in MLflow (linked by tags to the model version), and judges an
active rollout every rollout.interval_s (raymaas.monitoring.rollout's decision, applied to the
registry by raymaas.tracking.rollout)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter, OrderedDict, deque
from typing import Any

import numpy as np

from raymaas.monitoring.live import live_scores
from raymaas.serving.errors import NotFound

logger = logging.getLogger("ray.serve")

HUB_DEPLOYMENT = "MonitorHub"
GAUGE_INTERVAL_S = 5.0
TRAFFIC_KEPT = 20_000  # answers per version the hub keeps for a rollout's error rate and latency


class _ModelState:
    def __init__(self, spec):
        self.replicas: dict[tuple[str, str], tuple[float, dict]] = {}  # (replica, version) -> (when heard, snapshot)
        self.profiles: dict[str, dict | None] = {}  # version -> profile
        # request id -> {version: (time, predictions, shadow)}: the version that answered, and
        # in a shadow rollout the candidate that saw a copy
        self.pending: OrderedDict = OrderedDict()
        self.expired: OrderedDict = OrderedDict()  # request ids that waited too long
        self.labelled: OrderedDict = OrderedDict()  # request id -> its labels, once given
        # (time, version, predicted, actual, row key, shadow): the row key ("REQUEST_ID#ROW")
        # pairs two versions' answers to one request in a shadow rollout
        self.live: deque = deque(maxlen=spec.feedback_window)
        self.answers: dict[str, deque] = {}  # version -> (time, status code, ms) of its answers
        self.agreement: dict[str, list[int]] = {}  # shadow candidate's version -> [rows agreeing, rows compared]
        self.outcomes: Counter = Counter()
        self.predictions = 0
        self.task: str | None = None


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def _hub_class():
    from ray.serve.metrics import Counter as PromCounter
    from ray.serve.metrics import Gauge

    from raymaas.serving.specs import ServeSpec

    class MonitorHub:
        """The endpoint-wide view of one application's models (one replica)."""

        def __init__(self, spec: dict):
            from raymaas import paths

            self.spec = ServeSpec.model_validate(spec)
            self.mon = self.spec.monitoring
            self.tracking_uri = self.spec.tracking_uri or paths.tracking_uri()
            self._client = None  # the store's MlflowClient, made on first use (the client property)
            # What the first drift report (scipy.stats) and the first rollout look or
            # monitoring log (MLflow's client and its store) would otherwise import and set up
            # while the endpoint serves: ~3 CPU-seconds taken from the replicas on 2 cores
            # (py-spy of a hub under load). Done here, before the replica reports ready.
            import scipy.stats  # noqa: F401

            try:
                self.client.search_registered_models(max_results=1)
            except Exception:  # a store not reachable yet: the client property tries again
                logger.warning("the monitor hub could not reach the MLflow store yet", exc_info=True)
                self._client = None

            self.models: dict[str, _ModelState] = {m.name: _ModelState(self.mon) for m in self.spec.models}
            self.runs: dict[tuple[str, str], str] = {}  # (model, version) -> monitoring run id
            self.logged_steps: Counter = Counter()
            self._tasks: list[asyncio.Task] = []
            tags = ("model", "version")
            self.g_psi = Gauge(
                "raymaas_drift_psi", description="PSI of a feature's window", tag_keys=(*tags, "feature")
            )
            self.g_ks = Gauge(
                "raymaas_drift_ks_pvalue", description="KS p-value of a feature's window", tag_keys=(*tags, "feature")
            )
            self.g_chi2 = Gauge(
                "raymaas_drift_chi2_pvalue",
                description="chi-squared p-value of a categorical feature's window",
                tag_keys=(*tags, "feature"),
            )
            self.g_flagged = Gauge("raymaas_drift_flagged_features", description="features flagged", tag_keys=tags)
            self.g_rows = Gauge("raymaas_window_rows", description="input rows in the drift window", tag_keys=tags)
            self.g_live = Gauge("raymaas_live_score", description="live performance", tag_keys=(*tags, "metric"))
            self.c_feedback = PromCounter(
                "raymaas_feedback", description="feedback by outcome", tag_keys=("model", "outcome")
            )
            self.g_share = Gauge(
                "raymaas_rollout_share", description="percent of requests a rollout's candidate gets", tag_keys=tags
            )
            self.g_agreement = Gauge(
                "raymaas_shadow_agreement",
                description="share of a shadow candidate's answers equal to those returned",
                tag_keys=tags,
            )
            self.c_decisions = PromCounter(
                "raymaas_rollout_decisions",
                description="a rollout's decisions on its candidate",
                tag_keys=(*tags, "action"),
            )
            self.decisions: dict[str, dict] = {}  # model -> the last decision on its rollout

        @property
        def client(self):
            """The MlflowClient of the application's store, made once on first use and kept
            for every rollout look, GET /rollout and monitoring log."""
            if self._client is None:
                from raymaas.tracking import get_client

                self._client = get_client(self.tracking_uri)
            return self._client

        def _start(self) -> None:
            if not self._tasks:
                loop = asyncio.get_running_loop()
                self._tasks = [loop.create_task(self._gauges_forever()), loop.create_task(self._log_forever())]
                if self.spec.rollout.enabled:
                    self._tasks.append(loop.create_task(self._rollouts_forever()))

        def _state(self, model: str) -> _ModelState:
            if model not in self.models:
                raise NotFound(f"no published model {model!r} in this application")
            return self.models[model]

        # -------------------------------------------------------------- from the replicas

        async def push(self, model: str, replica: str, snapshot: dict, waiting: list) -> dict:
            self._start()
            state = self._state(model)
            version = snapshot["version"]
            if "profile" in snapshot:
                state.profiles[version] = snapshot.pop("profile")
            state.replicas[(replica, version)] = (time.time(), snapshot)
            state.task = snapshot.get("task") or state.task
            for request_id, at, values, shadow in waiting:
                if shadow and request_id in state.labelled:  # labelled before the candidate's copy came
                    self._score(state, request_id, version, values, state.labelled[request_id], True)
                    continue
                state.pending.setdefault(request_id, {})[version] = (at, values, shadow)
                if not shadow:
                    state.predictions += len(values)
            self._expire(state)
            return {"need_profile": version not in state.profiles}

        async def answers(self, model: str, version: str, answers: list, agreement: list | None) -> None:
            """A replica's answers of a version since its last push, (status code, ms) each, and
            a shadow candidate's agreement with the answers returned."""
            state = self._state(model)
            now = time.time()
            kept = state.answers.get(version)
            if kept is None:
                kept = state.answers[version] = deque(maxlen=TRAFFIC_KEPT)
            kept.extend((now, code, ms) for code, ms in answers)
            if agreement:
                tally = state.agreement.setdefault(version, [0, 0])
                tally[0] += agreement[0]
                tally[1] += agreement[1]

        def _expire(self, state: _ModelState) -> None:
            cutoff = time.time() - self.mon.feedback_ttl_s
            while state.pending and (
                len(state.pending) > self.mon.max_pending_predictions
                or min(at for at, _, _ in next(iter(state.pending.values())).values()) < cutoff
            ):
                rid, _ = state.pending.popitem(last=False)
                state.expired[rid] = None
            for kept in (state.expired, state.labelled):
                while len(kept) > self.mon.max_pending_predictions:
                    kept.popitem(last=False)

        # -------------------------------------------------------------- feedback

        async def feedback(self, model: str, labels: dict[str, Any], wait_s: float) -> dict:
            state = self._state(model)
            deadline = time.monotonic() + wait_s
            todo = dict(labels)
            result: dict[str, list] = {k: [] for k in ("matched", "unknown", "expired", "duplicate", "mismatched")}
            reasons: dict[str, str] = {}
            rows = 0
            while True:
                self._expire(state)
                for rid in list(todo):
                    label = todo[rid]
                    answered = {v: e for v, e in state.pending.get(rid, {}).items() if not e[2]}
                    if answered:  # the version that answered has reported it (a shadow copy may come later)
                        version, (_, values, _) = next(iter(answered.items()))
                        actual = label if isinstance(label, list) and len(values) != 1 else [label]
                        if len(actual) != len(values):
                            result["mismatched"].append(rid)
                            reasons[rid] = f"{len(actual)} labels for a prediction of {len(values)} rows"
                        else:
                            for v, (_, vals, shadow) in state.pending.pop(rid).items():
                                if len(vals) == len(actual):
                                    self._score(state, rid, v, vals, actual, shadow)
                            state.labelled[rid] = actual
                            result["matched"].append(rid)
                            rows += len(values)
                        del todo[rid]
                    elif rid in state.labelled:
                        result["duplicate"].append(rid)
                        del todo[rid]
                    elif rid in state.expired:
                        result["expired"].append(rid)
                        del todo[rid]
                if not todo or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.1)  # a prediction another replica has not reported yet
            result["unknown"] = list(todo)
            for outcome, ids in result.items():
                state.outcomes[outcome] += len(ids)
                if ids:
                    self.c_feedback.inc(len(ids), tags={"model": model, "outcome": outcome})
            answer = {"rows_scored": rows, **{k: v for k, v in result.items()}}
            if reasons:
                answer["reasons"] = reasons
            return answer

        def _score(self, state: _ModelState, rid: str, version: str, values: list, actual: list, shadow: bool) -> None:
            now = time.time()
            state.live.extend(
                (now, version, p, a, f"{rid}#{i}", shadow) for i, (p, a) in enumerate(zip(values, actual, strict=True))
            )

        async def score_rows(self, model: str, version: str, predicted: list, actual: list) -> dict:
            state = self._state(model)
            now = time.time()
            state.live.extend((now, version, p, a, None, False) for p, a in zip(predicted, actual, strict=True))
            state.outcomes["rows"] += len(predicted)
            self.c_feedback.inc(len(predicted), tags={"model": model, "outcome": "rows"})
            return {"rows_scored": len(predicted), "predictions": predicted}

        # -------------------------------------------------------------- the report

        async def report(self, model: str) -> dict:
            self._state(model)
            return await asyncio.to_thread(self._report, model)

        def _live_snapshots(self, state: _ModelState, now: float) -> list[dict]:
            """The replicas' latest snapshots, each (replica, version)'s, of those still pushing."""
            stale = 3 * self.mon.push_interval_s + 5
            return [s for (at, s) in state.replicas.values() if now - at <= stale]

        def _report(self, model: str) -> dict:
            state = self.models[model]
            now = time.time()
            live = self._live_snapshots(state, now)
            versions = sorted({s["version"] for s in live}, key=_version_key)
            followed = sorted({s["version"] for s in live if s.get("role", "followed") == "followed"}, key=_version_key)
            # the version the alias names now (a rollout's candidate is newer, and reported apart)
            version = (followed or versions or [None])[-1]
            current = [s for s in live if s["version"] == version]
            rows = sum(s["rows"] for s in current)
            oldest = [s["oldest"] for s in current if s["oldest"] is not None]
            newest = [s["newest"] for s in current if s["newest"] is not None]
            labelled = [(p, a) for _, _, p, a, _, shadow in state.live if not shadow]
            task = state.task or _guess_task([p for p, _ in labelled])
            scores = live_scores(labelled, task)
            return {
                "model": model,
                "version": version,
                "other_versions": [v for v in versions if v != version],
                "replicas": len(current),
                "window": {
                    "rows": rows,
                    "rows_per_replica": self.mon.window,
                    "oldest_age_s": round(now - min(oldest), 3) if oldest else None,
                    "newest_age_s": round(now - max(newest), 3) if newest else None,
                    "dropped_rows": sum(s.get("dropped_rows", 0) for s in current),
                },
                "drift": self._drift(state, version, current),
                "live": {
                    "task": task,
                    "labelled_rows": len(labelled),
                    "window": self.mon.feedback_window,
                    "metrics": {k: round(v, 6) for k, v in scores.items()},
                    "feedback": {
                        k: int(state.outcomes[k])
                        for k in ("matched", "unknown", "expired", "duplicate", "mismatched", "rows")
                    },
                    "awaiting_labels": len(state.pending),
                    "predictions_seen": state.predictions,
                },
                "versions": self._version_reports(
                    state, sorted(set(versions) | set(state.answers), key=_version_key), live, task
                ),
            }

        def _version_reports(
            self, state: _ModelState, versions, live: list[dict] | None = None, task: str | None = None
        ) -> dict[str, dict]:
            """The `versions` blocks of _report, of these versions only (a version nothing was
            heard of gets its empty block); live and task as _report has them, else read here."""
            if live is None:
                live = self._live_snapshots(state, time.time())
            if task is None:
                task = state.task or _guess_task([p for _, _, p, _, _, shadow in state.live if not shadow])
            return {v: self._version_report(state, v, [s for s in live if s["version"] == v], task) for v in versions}

        def _drift(self, state: _ModelState, version: str | None, snapshots: list[dict]) -> dict:
            """Drift of a version's windows (over all replicas) against its reference profile."""
            from raymaas.monitoring.drift import DriftThresholds, drift_report

            rows = sum(s["rows"] for s in snapshots)
            profile = state.profiles.get(version)
            unavailable = next((s["unavailable"] for s in snapshots if s["unavailable"]), None)
            if version is None:
                return {"status": "unavailable", "reason": "no predictions yet"}
            if profile is None or unavailable:
                return {"status": "unavailable", "reason": unavailable or "no reference profile for this version"}
            if rows == 0:
                return {"status": "unavailable", "reason": "no input rows in the window yet"}
            counts = [
                np.sum([np.asarray(s["counts"][i]) for s in snapshots if s["counts"] is not None], axis=0)
                for i in range(len(profile["features"]))
            ]
            d = self.mon.drift
            return drift_report(profile, counts, rows, DriftThresholds(d.psi_threshold, d.ks_pvalue, d.min_rows))

        def _version_report(self, state: _ModelState, version: str, snapshots: list[dict], task: str) -> dict:
            """One version's own figures: its answers (requests, errors, latency), its answers'
            class shares, its drift and its live metrics (shadow answers included)."""
            from raymaas.monitoring.rollout import is_error, latency_percentiles

            answers = state.answers.get(version, ())
            errors = sum(1 for _, code, _ in answers if is_error(code))
            p50, p99 = latency_percentiles(ms for _, _, ms in answers)
            classes: Counter = Counter()
            for snap in snapshots:
                classes.update(snap.get("class_counts") or {})
            said = sum(classes.values())
            labelled = [(p, a) for _, v, p, a, _, _ in state.live if v == version]
            scores = live_scores(labelled, task)
            out = {
                "role": next((s.get("role", "followed") for s in snapshots), None),
                "requests": len(answers),
                "errors": errors,
                "error_rate": round(errors / len(answers), 6) if answers else None,
                "latency_p50_ms": round(p50, 3) if answers else None,
                "latency_p99_ms": round(p99, 3) if answers else None,
                "class_shares": {k: round(n / said, 6) for k, n in classes.most_common()} if said else {},
                "drift": self._drift(state, version, snapshots) if snapshots else None,
                "labelled_rows": len(labelled),
                "metrics": {k: round(v, 6) for k, v in scores.items()},
            }
            if version in state.agreement:
                agree, compared = state.agreement[version]
                out["shadow_agreement"] = round(agree / compared, 6) if compared else None
                out["shadow_rows_compared"] = compared
            return out

        # -------------------------------------------------------------- rollouts

        async def _rollouts_forever(self) -> None:
            while True:
                await asyncio.sleep(self.spec.rollout.interval_s)
                for model in self.models:
                    try:
                        await self.judge_rollout(model)
                    except Exception:  # a registry hiccup: the next look tries again
                        logger.exception("judging the rollout of %s failed", model)

        async def judge_rollout(self, model: str) -> dict | None:
            """Look at the model's active rollout (the registry's), if any: decide on the two
            versions' live figures since it started and act (raymaas.tracking.rollout)."""
            from raymaas.monitoring.rollout import decide
            from raymaas.tracking.rollout import apply_decision, read_rollout

            client = self.client
            rollout = await asyncio.to_thread(read_rollout, client, model)
            if rollout is None or not rollout.active:
                return None
            champion, candidate, task, paired = self._rollout_figures(model, rollout)
            policy = rollout.policy
            if self.spec.rollout.policy is not None:  # the application's own guards; the rollout's steps
                policy = self.spec.rollout.policy.model_copy(update={"steps": rollout.policy.steps})
            decision = decide(policy, rollout.step_index, champion, candidate, task, paired)
            after = await asyncio.to_thread(apply_decision, client, rollout, decision)
            tags = {"model": model, "version": rollout.version}
            self.c_decisions.inc(1, tags={**tags, "action": decision.action})
            self.g_share.set(after.share, tags=tags)
            self.decisions[model] = {
                "time": time.time(),
                "version": rollout.version,
                "action": decision.action,
                "reason": decision.reason,
                "share_before": rollout.share,
                "share_after": after.share,
                "figures": decision.figures,
            }
            if decision.action != "hold":
                logger.info(
                    "rollout of %s version %s: %s (%s)", model, rollout.version, decision.action, decision.reason
                )
            return self.decisions[model]

        def _rollout_figures(self, model: str, rollout):
            """(champion's VersionFigures, candidate's, task, paired): the candidate's over what
            it served since the current step began (each step earns the next on traffic at its
            own share, as a canary's soak does), the champion's since the rollout started (its
            share shrinks to nothing at the last step); in shadow mode both over the current
            step's rows that both answered, paired."""
            from raymaas.monitoring.rollout import VersionFigures, paired_outcomes, version_figures

            state = self.models[model]
            task = (
                "regression"
                if (state.task or _guess_task([p for _, _, p, *_ in state.live])) == "regression"
                else "classification"
            )
            step = rollout.step_started_at or rollout.started_at
            paired = rollout.mode == "shadow"

            def answers(version: str, since: float) -> list:
                return [(code, ms) for at, code, ms in state.answers.get(version, ()) if at >= since]

            def rows(version: str, since: float) -> dict:
                return {
                    key or f"row-{i}": (p, a)
                    for i, (at, v, p, a, key, _) in enumerate(state.live)
                    if v == version and at >= since
                }

            baseline = step if paired else rollout.started_at
            ours, theirs = rows(rollout.champion, baseline), rows(rollout.version, step)
            champion = version_figures(rollout.champion, answers(rollout.champion, baseline), ours.values(), task)
            candidate = version_figures(rollout.version, answers(rollout.version, step), theirs.values(), task)
            if paired:
                mine, yours = paired_outcomes(ours, theirs, task)
                champion = VersionFigures(
                    champion.version, champion.requests, champion.errors, champion.latency_p99_ms, mine
                )
                candidate = VersionFigures(
                    candidate.version, candidate.requests, candidate.errors, candidate.latency_p99_ms, yours
                )
            return champion, candidate, task, paired

        async def rollout_report(self, model: str) -> dict:
            """GET /models/NAME/rollout: the registry's state of the model's latest rollout, the
            two versions' figures since it started, and the last decision taken here."""
            from raymaas.tracking.rollout import last_rollout

            state = self._state(model)
            rollout = await asyncio.to_thread(last_rollout, self.client, model)
            if rollout is None:
                return {"model": model, "rollout": None, "reason": f"no rollout of {model} was ever started"}
            # the two versions' blocks of GET /monitor, without its drift and figures of the others
            versions = await asyncio.to_thread(self._version_reports, state, (rollout.champion, rollout.version))
            described = {
                "version": rollout.version,
                "champion": rollout.champion,
                "mode": rollout.mode,
                "status": rollout.status,
                "share": rollout.share,
                "step_index": rollout.step_index,
                "steps": list(rollout.policy.steps),
                "policy": rollout.policy.model_dump(),
                "reason": rollout.reason,
                "run_id": rollout.run_id,
                "started_at": rollout.started_at,
                "step_started_at": rollout.step_started_at,
            }
            if rollout.active:
                champion, candidate, _, paired = self._rollout_figures(model, rollout)
                described["this_step"] = {
                    "paired": paired,
                    rollout.champion: {
                        "requests": champion.requests,
                        "errors": champion.errors,
                        "labels": champion.labels,
                    },
                    rollout.version: {
                        "requests": candidate.requests,
                        "errors": candidate.errors,
                        "labels": candidate.labels,
                    },
                }
            return {
                "model": model,
                "rollout": described,
                "versions": versions,
                "last_decision": self.decisions.get(model),
                "judged_every_s": self.spec.rollout.interval_s if self.spec.rollout.enabled else None,
            }

        async def monitoring_run(self, model: str, version: str) -> str:
            """The id of the version's monitoring run (made on first use)."""
            if (model, version) not in self.runs:
                self.runs[(model, version)] = await asyncio.to_thread(monitoring_run, self.client, model, version)
            return self.runs[(model, version)]

        # -------------------------------------------------------------- gauges and MLflow

        async def _gauges_forever(self) -> None:
            while True:
                await asyncio.sleep(GAUGE_INTERVAL_S)
                for model in self.models:
                    try:
                        self._set_gauges(await asyncio.to_thread(self._report, model))
                    except Exception:
                        logger.exception("monitor gauges of %s failed", model)

        def _set_gauges(self, report: dict) -> None:
            if report["version"] is None:
                return
            tags = {"model": report["model"], "version": report["version"]}
            self.g_rows.set(report["window"]["rows"], tags=tags)
            drift = report["drift"]
            if drift.get("features"):
                self.g_flagged.set(len(drift["flagged"]), tags=tags)
                for feature, f in drift["features"].items():
                    self.g_psi.set(f["psi"], tags={**tags, "feature": feature})
                    if "chi2_pvalue" in f:
                        self.g_chi2.set(f["chi2_pvalue"], tags={**tags, "feature": feature})
                    else:
                        self.g_ks.set(f["ks_pvalue"], tags={**tags, "feature": feature})
            for metric, value in report["live"]["metrics"].items():
                self.g_live.set(value, tags={**tags, "metric": metric})
            for version, figures in report.get("versions", {}).items():
                if figures.get("shadow_agreement") is not None:
                    self.g_agreement.set(
                        figures["shadow_agreement"], tags={"model": report["model"], "version": version}
                    )

        async def _log_forever(self) -> None:
            while True:
                await asyncio.sleep(self.mon.log_interval_s)
                await asyncio.to_thread(self.log_to_mlflow)

        def log_to_mlflow(self) -> list[str]:
            """Log each model's report to its version's monitoring run; the run ids logged to."""
            logged = []
            for model in self.models:
                try:
                    report = self._report(model)
                    if report["version"] is None:
                        continue
                    logged.append(self._log_report(report))
                except Exception:
                    logger.exception("logging %s's monitor report to MLflow failed", model)
            return logged

        def _log_report(self, report: dict) -> str:
            from mlflow.entities import Metric

            client = self.client
            key = (report["model"], report["version"])
            if key not in self.runs:
                self.runs[key] = monitoring_run(client, *key)
            run_id = self.runs[key]
            now = int(time.time() * 1000)
            step = self.logged_steps[key]
            self.logged_steps[key] += 1
            values = {"window_rows": report["window"]["rows"], "predictions_seen": report["live"]["predictions_seen"]}
            values.update({f"live_{k}": v for k, v in report["live"]["metrics"].items()})
            values.update({f"feedback_{k}": v for k, v in report["live"]["feedback"].items()})
            drift = report["drift"]
            if drift.get("features"):
                values["drift_flagged_features"] = len(drift["flagged"])
                values["drift_psi_max"] = max(f["psi"] for f in drift["features"].values())
                for feature, f in drift["features"].items():
                    values[_metric_key(f"drift_psi/{feature}")] = f["psi"]
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])
            client.log_dict(run_id, report, "monitor_report.json")
            return run_id

        def __del__(self):
            for task in self._tasks:
                task.cancel()
            if self._tasks:  # something was served: its last report goes to MLflow
                self.log_to_mlflow()

    MonitorHub.__name__ = MonitorHub.__qualname__ = HUB_DEPLOYMENT
    return MonitorHub


def _version_key(version: str):
    return (0, int(version)) if str(version).isdigit() else (1, str(version))


def _guess_task(predicted: list) -> str:
    if predicted and all(
        isinstance(p, float) or (isinstance(p, list) and p and isinstance(p[0], float)) for p in predicted
    ):
        return "regression"
    return "classification"


def monitoring_run(client, model: str, version: str) -> str:
    """The MLflow run that holds a served model version's monitoring (made on first use), in
    the experiment of the run that trained it, linked by tags both ways."""
    from raymaas.tracking import ensure_experiment

    mv = client.get_model_version(model, version)
    experiment_id = None
    if mv.run_id:
        try:
            experiment_id = client.get_run(mv.run_id).info.experiment_id
        except Exception:
            experiment_id = None
    if experiment_id is None:
        experiment_id = ensure_experiment(client, "monitoring")
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`raymaas.monitoring.model` = '{model}' and tags.`raymaas.monitoring.version` = '{version}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"monitor-{model}-v{version}",
        tags={
            "raymaas.job_kind": "monitor",  # not a training run: `raymaas runs` shows it as such
            "raymaas.monitoring.model": model,
            "raymaas.monitoring.version": str(version),
            "raymaas.monitoring.training_run_id": mv.run_id or "",
            "mlflow.note.content": f"Served performance and input drift of {model} version {version}.",
        },
    )
    client.set_model_version_tag(model, version, "raymaas.monitoring_run_id", run.info.run_id)
    return run.info.run_id


def build_monitor_hub(spec):
    """The MonitorHub deployment of an application (one replica, no CPU), bound to its spec."""
    from ray import serve

    options: dict[str, Any] = {"num_cpus": 0}
    if "runtime_env" in spec.ray_actor_options:
        options["runtime_env"] = spec.ray_actor_options["runtime_env"]
    return serve.deployment(
        _hub_class(),
        name=HUB_DEPLOYMENT,
        num_replicas=1,
        max_ongoing_requests=1000,
        ray_actor_options=options,
        graceful_shutdown_timeout_s=10,
    ).bind(spec.model_dump())
