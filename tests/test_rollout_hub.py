"""The monitor hub judging a rollout, without Ray: the hub's class in this process, fed what
replicas push (windows, answers, predictions) and /feedback's labels, on a real MLflow registry
(SQLite) that holds the rollout's state. The same hub, on Serve, is tests/test_rollout.py's."""

from __future__ import annotations

import asyncio
import time

import pytest

from raymaas.monitoring.rollout import RolloutPolicy
from raymaas.serving.hub import _hub_class
from raymaas.serving.specs import ServeSpec
from raymaas.tracking import get_client
from raymaas.tracking.registry import CHAMPION
from raymaas.tracking.rollout import last_rollout, start_rollout

POLICY = {"steps": [50, 100], "min_labels": 20, "min_requests": 20, "max_latency_ratio": 50.0, "max_regression": 0.1}


def _registry(tmp_path, rollout: dict | None = None):
    """A registry of model m (v1 champion, v2) and a hub of its application (the serve
    config's `rollout:` section, if given), without its background loops: the test looks when
    it wants."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = get_client(uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source="file:///nowhere")
    client.set_registered_model_alias("m", CHAMPION, "1")
    spec = {"models": [{"name": "m"}], "tracking_uri": uri, **({"rollout": rollout} if rollout else {})}
    hub = _hub_class()(ServeSpec.model_validate(spec).model_dump())
    hub._start = lambda: None
    return client, hub


@pytest.fixture()
def registry(tmp_path):
    return _registry(tmp_path)


def _snapshot(version: str, role: str) -> dict:
    return {
        "version": version,
        "role": role,
        "class_counts": {},
        "rows": 0,
        "oldest": None,
        "newest": None,
        "dropped_rows": 0,
        "unavailable": "no profile in this test",
        "task": "classification",
        "counts": None,
    }


async def _serve(hub, n: int, right: dict[str, bool], shadow: bool = False, ms: dict | None = None, code=200):
    """n requests answered by v1 and v2 in turn (shadow: by v1, with v2 seeing a copy), each
    labelled 1; a version answers 1 where right[version], else 0."""
    for i in range(n):
        rid = f"r{time.monotonic_ns()}-{i}"
        answering = ["1"] if shadow else ["1" if i % 2 else "2"]
        copies = ["2"] if shadow else []
        for v in answering + copies:
            role = "followed" if v == "1" else "candidate"
            values = [1 if right[v] else 0]
            await hub.push("m", "replica-a", _snapshot(v, role), [(rid, time.time(), values, v in copies)])
            await hub.answers("m", v, [(code if v == "2" else 200, (ms or {}).get(v, 5.0))], None)
        await hub.feedback("m", {rid: 1}, 0.05)


def test_a_wrong_candidate_is_rolled_back_and_a_right_one_advances_then_is_promoted(registry):
    client, hub = registry
    start_rollout(client, "m", RolloutPolicy(**POLICY), version="2")

    async def run():
        assert (await hub.judge_rollout("m"))["action"] == "hold"  # no labels yet
        first = hub.client
        await _serve(hub, 60, {"1": True, "2": False})
        decision = await hub.judge_rollout("m")
        assert decision["action"] == "rollback" and "accuracy" in decision["reason"], decision
        report = await hub.rollout_report("m")
        assert report["rollout"]["status"] == "rejected" and report["rollout"]["share"] == 0
        assert report["versions"]["2"]["metrics"]["accuracy"] == 0.0
        assert report["versions"]["1"]["requests"] == report["versions"]["2"]["requests"] == 30
        assert await hub.judge_rollout("m") is None  # nothing active any more

        start_rollout(client, "m", RolloutPolicy(**POLICY), version="2")
        await _serve(hub, 80, {"1": True, "2": True})
        assert (await hub.judge_rollout("m"))["action"] == "advance"
        assert last_rollout(client, "m").share == 100
        held = await hub.judge_rollout("m")  # the same evidence does not earn the next step too
        assert held["action"] == "hold" and "0 of the 20 labelled answers" in held["reason"], held
        await _serve(hub, 80, {"1": True, "2": True})
        assert (await hub.judge_rollout("m"))["action"] == "promote"
        assert str(client.get_model_version_by_alias("m", CHAMPION).version) == "2"
        assert hub.client is first  # one client for every look and report

    asyncio.run(run())


def test_guards_roll_back_on_errors_and_latency_before_any_label_counts(registry):
    client, hub = registry
    start_rollout(client, "m", RolloutPolicy(**{**POLICY, "max_latency_ratio": 2.0}), version="2")

    async def run():
        await _serve(hub, 60, {"1": True, "2": True}, ms={"1": 5.0, "2": 50.0})
        decision = await hub.judge_rollout("m")
        assert decision["action"] == "rollback" and "p99 latency" in decision["reason"], decision

    asyncio.run(run())


def test_shadow_mode_pairs_the_versions_on_the_same_requests(registry):
    client, hub = registry
    start_rollout(client, "m", RolloutPolicy(**POLICY), version="2", shadow=True)

    async def run():
        await _serve(hub, 30, {"1": True, "2": True}, shadow=True)
        decision = await hub.judge_rollout("m")
        assert decision["action"] == "advance", decision
        assert "paired" in decision["reason"] or decision["figures"]["candidate_labels"] == 30, decision
        monitor = await hub.report("m")
        # GET /models/m/rollout's versions are GET /monitor's blocks, built without the whole report
        whole, hub._report = hub._report, None
        report = await hub.rollout_report("m")
        hub._report = whole
        assert report["rollout"]["this_step"]["paired"] is True
        assert report["versions"] == {v: monitor["versions"][v] for v in ("1", "2")}
        assert list(report["versions"]) == ["1", "2"]
        # a shadow answer is scored for its version and left out of the endpoint's own live metrics
        assert monitor["live"]["labelled_rows"] == 30 and monitor["versions"]["2"]["labelled_rows"] == 30

    asyncio.run(run())


def test_the_serve_config_s_policy_overrides_the_stored_guards_but_not_the_steps(tmp_path):
    strict = {"min_labels": 1000, "steps": [10, 100]}  # its steps are not the rollout's
    client, hub = _registry(tmp_path, {"policy": strict})
    start_rollout(client, "m", RolloutPolicy(**POLICY), version="2")

    async def run():
        await _serve(hub, 80, {"1": True, "2": True})
        decision = await hub.judge_rollout("m")
        assert decision["action"] == "hold" and "1,000 labelled answers" in decision["reason"], decision
        assert last_rollout(client, "m").share == 50  # the rollout's own steps

    asyncio.run(run())
