"""A candidate earns `champion` on live traffic: rollouts on a real Serve application, real
HTTP on 127.0.0.1, real feedback, the registry as the rollout's state (issue 30).

One application follows `test-rollout@champion`. Its versions are tiny torch classifiers of 64
inputs: v1 (the champion) and v3 share their weights, v2 answers otherwise. The labels sent to
/feedback are v1's own answers, so v1 and v3 are right on every row and v2 about one in ten:
v2 is the bad candidate, v3 the good one. A load thread sends single-row requests (each with a
client key) and their labels the whole time, and counts every answer that is not a 200.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pytest

from conftest import free_port, wait_for

NAME = "test-rollout"
APP = "rollout"
ROWS = np.random.default_rng(7).random((200, 64), dtype=np.float32)

pytestmark = pytest.mark.slow


def _log_tiny(seed: int) -> str:
    import mlflow
    import torch

    from raymaas.modelcode.pyfunc import log_classifier

    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with mlflow.start_run(run_name=f"rollout-tiny-{seed}"):
        info = log_classifier(module, ROWS[:8])
    return str(mlflow.register_model(info.model_uri, NAME).version)


@pytest.fixture(scope="module")
def versions(ray_head, mlflow_client):
    """v1 champion, v2 (other weights), v3 and v4 (v1's weights); the labels: v1's answers."""
    import mlflow

    from raymaas.tracking import ensure_experiment

    mlflow.set_experiment(experiment_id=ensure_experiment(mlflow_client, "test-rollout"))
    v1, v2, v3, v4 = _log_tiny(1), _log_tiny(2), _log_tiny(1), _log_tiny(1)
    mlflow_client.set_registered_model_alias(NAME, "champion", v1)
    labels = mlflow.pyfunc.load_model(f"models:/{NAME}/{v1}").predict(ROWS)
    bad = mlflow.pyfunc.load_model(f"models:/{NAME}/{v2}").predict(ROWS)
    assert np.mean(np.asarray(bad) == np.asarray(labels)) < 0.5  # v2 really is the worse one
    return {"v1": v1, "v2": v2, "v3": v3, "v4": v4, "labels": [int(v) for v in labels]}


class Endpoint:
    """The application on the session head, and HTTP to it."""

    def __init__(self, ray_head):
        from ray import serve

        from raymaas.runtime.cluster import connect
        from raymaas.serving import ServeSpec

        self.saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAYMAAS_HOME")}
        os.environ.update({k: ray_head.env[k] for k in self.saved})
        connect(ray_head.address)
        self.port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.spec = ServeSpec.model_validate(
            {
                "models": [{"name": NAME}],
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                "ray_actor_options": {"num_cpus": 0.25},
                "poll_interval_s": 0.5,
                "monitoring": {"push_interval_s": 0.5},
                "explain": {"enabled": False},
                "rollout": {"interval_s": 1.0},
            }
        )
        self.deploy()

    def deploy(self) -> None:
        from ray import serve

        from raymaas.serving import build_model_app

        serve.run(build_model_app(self.spec), name=APP, route_prefix=self.spec.route_prefix)

    def restart(self) -> None:
        """The application deleted and deployed again: new replicas and a new hub."""
        from ray import serve

        serve.delete(APP)
        self.deploy()

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def call(self, path: str, payload: dict | None = None, headers: dict | None = None):
        """(status, JSON body, response headers) of GET (no payload) or POST /models/NAME/path."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/models/{NAME}" + (f"/{path}" if path else ""),
            data=None if payload is None else json.dumps(payload).encode(),
            headers={"content-type": "application/json", **(headers or {})},
            method="GET" if payload is None else "POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}"), dict(err.headers)

    def predict(self, row: int, key: str | None = None):
        """(status, the version that answered, the request id) of one row."""
        headers = {"x-raymaas-key": key} if key else {}
        status, _, got = self.call("invocations", {"inputs": ROWS[row : row + 1].tolist()}, headers)
        lower = {k.lower(): v for k, v in got.items()}
        return status, lower.get("x-model-version"), lower.get("x-request-id")


class Load:
    """Requests (a client key each, from 50) and their labels until stopped; every answer's
    status and version counted."""

    def __init__(self, endpoint: Endpoint, labels: list[int]):
        self.endpoint, self.labels = endpoint, labels
        self.seen: Counter = Counter()  # (status, version)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        pending: dict[str, int] = {}
        while not self.stop_event.is_set():
            row = int(rng.integers(len(ROWS)))
            try:
                status, version, rid = self.endpoint.predict(row, f"client-{rng.integers(50)}")
            except OSError as err:  # a refused or reset connection is a failed request too
                self.seen[(f"no answer: {type(err).__name__}", None)] += 1
                continue
            self.seen[(status, version)] += 1
            if status == 200 and rid:
                pending[rid] = self.labels[row]
            if len(pending) >= 10:
                self.endpoint.call("feedback", {"labels": pending})
                pending = {}

    def failed(self) -> dict:
        return {f"{s} v{v}": n for (s, v), n in self.seen.items() if s != 200}

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=120)


@pytest.fixture(scope="module")
def endpoint(ray_head, versions):
    ep = Endpoint(ray_head)
    try:
        yield ep
    finally:
        ep.close()


def _rollout(mlflow_client):
    from raymaas.tracking.rollout import last_rollout

    return last_rollout(mlflow_client, NAME)


def _saw(endpoint: Endpoint, load: Load | None = None):
    def seen() -> str:
        status, body, _ = endpoint.call("rollout")
        return json.dumps(
            {"GET rollout": [status, body], "load": {str(k): n for k, n in (load.seen if load else {}).items()}},
            indent=1,
            default=str,
        )[-6000:]

    return seen


def test_a_bad_candidate_is_rolled_back_by_itself_and_a_good_one_promoted_under_load(endpoint, versions, mlflow_client):
    """The whole path under load with 0 failed requests: v2 (canary) rolled back by the hub on
    live accuracy; v3 sticky per key, advanced a step, resumed at its share by a restarted
    application, then promoted to champion."""
    from raymaas.monitoring.rollout import RolloutPolicy
    from raymaas.tracking.registry import CHAMPION
    from raymaas.tracking.rollout import ROLLOUT_TAG, start_rollout

    # The latency guard is tested without Serve (test_rollout_hub); here a cold first request
    # of a freshly loaded version on a busy 2-core machine must not decide the rollout.
    guards = {"max_latency_ratio": 1000.0, "max_error_rate_increase": 0.05, "min_requests": 20}
    failed: dict = {}

    def under_load(what: str, until, timeout_s: float):
        load = Load(endpoint, versions["labels"])
        try:
            return wait_for(until, timeout_s, what, seen=_saw(endpoint, load))
        finally:
            load.stop()
            failed.update({f"{what}: {k}": n for k, n in load.failed().items()})

    def rollout_state(check):
        def look():
            state = _rollout(mlflow_client)
            return state if state is not None and check(state) else None

        return look

    def serving(version: str, mode: str = "canary"):
        return lambda: (r := endpoint.call("")[1].get("rollout")) and r["version"] == version and r["mode"] == mode

    start_rollout(
        mlflow_client,
        NAME,
        RolloutPolicy(steps=[50, 100], min_labels=20, max_regression=0.1, **guards),
        version=versions["v2"],
    )
    wait_for(serving(versions["v2"]), 60, "the replica to load the candidate beside the champion", seen=_saw(endpoint))
    rejected = under_load(
        "the hub to roll the bad candidate back", rollout_state(lambda r: r.status == "rejected"), 180
    )
    tags = mlflow_client.get_model_version(NAME, versions["v2"]).tags
    assert tags[ROLLOUT_TAG] == "rejected" and "accuracy" in rejected.reason, (tags, rejected.reason)
    assert rejected.share == 0
    assert str(mlflow_client.get_model_version_by_alias(NAME, CHAMPION).version) == versions["v1"]
    status, report, _ = endpoint.call("rollout")
    assert status == 200 and report["last_decision"]["action"] == "rollback", report
    both = report["versions"]
    assert both[versions["v1"]]["requests"] > 0 and both[versions["v2"]]["requests"] > 0, both
    assert both[versions["v2"]]["metrics"]["accuracy"] < both[versions["v1"]]["metrics"]["accuracy"], both

    # the good one: a key keeps its version (no labels flow, so the share cannot move meanwhile)
    start_rollout(
        mlflow_client,
        NAME,
        RolloutPolicy(steps=[30, 60, 100], min_labels=40, max_regression=0.1, **guards),
        version=versions["v3"],
    )
    wait_for(serving(versions["v3"]), 60, "the replica to load the good candidate", seen=_saw(endpoint))
    met: set = set()
    for key in (f"user-{i}" for i in range(12)):
        answered = {endpoint.predict(0, key)[1] for _ in range(4)}
        assert len(answered) == 1, (key, answered)  # sticky: the same version every time
        met |= answered
    assert met == {versions["v1"], versions["v3"]}, met  # 12 keys at 30%: both versions met (0.7^12 + 0.3^12 < 2%)
    under_load("the good candidate to advance a step", rollout_state(lambda r: r.step_index >= 1), 180)

    endpoint.restart()  # new replicas and a new hub: the registry holds the rollout
    state = _rollout(mlflow_client)  # a step or two on: the load stopped a moment after the first advance
    assert state.active and state.share in (60, 100), state
    resumed = wait_for(
        lambda: endpoint.call("")[1].get("rollout"), 60, "the restarted application to resume", seen=_saw(endpoint)
    )
    assert resumed == {"version": versions["v3"], "share": state.share, "mode": "canary"}, resumed
    promoted = under_load("the good candidate to be promoted", rollout_state(lambda r: r.status == "promoted"), 300)
    assert str(mlflow_client.get_model_version_by_alias(NAME, CHAMPION).version) == versions["v3"]
    wait_for(lambda: endpoint.predict(0)[1] == versions["v3"], 60, "the new champion to answer", seen=_saw(endpoint))
    assert not failed, failed
    assert promoted.share == 100
    assert mlflow_client.get_run(promoted.run_id).info.status == "FINISHED"
    shares = [m.value for m in sorted(mlflow_client.get_metric_history(promoted.run_id, "share"), key=lambda m: m.step)]
    assert {60.0, 100.0} <= set(shares) and shares[-1] == 100.0, shares  # every decision logged with its share


def test_shadow_mode_answers_with_the_champion_and_counts_the_candidate_s_agreement(endpoint, versions, mlflow_client):
    """v4 (the champion's weights) sees copies of every request: no answer comes from it, its
    agreement with the answers returned is 1.0, and an abort by hand ends it."""
    from raymaas.monitoring.rollout import RolloutPolicy
    from raymaas.tracking.registry import CHAMPION
    from raymaas.tracking.rollout import end_rollout, start_rollout

    champion = str(mlflow_client.get_model_version_by_alias(NAME, CHAMPION).version)
    start_rollout(
        mlflow_client, NAME, RolloutPolicy(steps=[100], min_labels=10_000), version=versions["v4"], shadow=True
    )
    wait_for(
        lambda: endpoint.call("")[1].get("rollout", {}).get("mode") == "shadow",
        60,
        "the replica to load the shadow candidate",
        seen=_saw(endpoint),
    )
    answered = Counter(endpoint.predict(i % len(ROWS))[1] for i in range(40))
    assert answered == Counter({champion: 40}), answered

    def agreement():
        status, report, _ = endpoint.call("monitor")
        shadow = report.get("versions", {}).get(versions["v4"], {}) if status == 200 else {}
        return shadow if shadow.get("shadow_rows_compared", 0) >= 40 else None

    shadow = wait_for(agreement, 60, "the shadow candidate's agreement", seen=_saw(endpoint))
    assert shadow["shadow_agreement"] == 1.0 and shadow["role"] == "candidate", shadow
    ended = end_rollout(mlflow_client, NAME, "abort", "test over")
    assert ended.status == "aborted" and ended.share == 0
    assert str(mlflow_client.get_model_version_by_alias(NAME, CHAMPION).version) == champion
