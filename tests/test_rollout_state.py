"""A progressive rollout's state in a real MLflow registry (SQLite store, no Ray): start,
refusals, decisions applied, ending by hand, a restart, and `raymaas rollout` in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.entities import RunStatus

from raymaas.cli.main import main
from raymaas.monitoring.rollout import Decision, RolloutPolicy
from raymaas.tracking import get_client, registry
from raymaas.tracking.rollout import (
    DECISIONS_TAG,
    MODEL_TAG,
    OUTCOME_TAG,
    ROLLOUT_TAG,
    RolloutError,
    apply_decision,
    end_rollout,
    last_rollout,
    read_rollout,
    start_rollout,
)

FIGURES = {"candidate_requests": 120.0, "champion_requests": 880.0, "lower_bound": -0.01}


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture()
def client(uri):
    return get_client(uri)


def add_version(client, name: str, alias: str | None = None, run_id: str | None = None) -> str:
    try:
        client.create_registered_model(name)
    except Exception:
        pass
    version = str(client.create_model_version(name, source="file:///nowhere", run_id=run_id).version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


@pytest.fixture()
def model(client):
    """m: version 1 champion, version 2 candidate."""
    add_version(client, "m", registry.CHAMPION)
    add_version(client, "m", registry.CANDIDATE)
    return "m"


def tags(client, name, version):
    return client.get_model_version(name, version).tags


def decisions_logged(client, run_id) -> list[str]:
    return sorted(f.path for f in client.list_artifacts(run_id, "decisions"))


def test_start_defaults_to_the_candidate_and_writes_every_tag(client, model):
    state = start_rollout(client, model, RolloutPolicy())
    assert (state.version, state.champion, state.mode, state.share, state.step_index) == ("2", "1", "canary", 10, 0)
    assert state.active and state.status == "active"
    assert client.get_registered_model(model).tags[MODEL_TAG] == "2"
    t = tags(client, model, "2")
    assert t[ROLLOUT_TAG] == "active"
    assert t["raymaas.rollout.share"] == "10"
    assert t["raymaas.rollout.steps"] == "10,25,50,100"
    assert t["raymaas.rollout.champion"] == "1"
    assert t["raymaas.rollout.mode"] == "canary"
    assert t["raymaas.rollout.run_id"] == state.run_id
    assert RolloutPolicy.model_validate_json(t["raymaas.rollout.policy"]) == RolloutPolicy()
    run = client.get_run(state.run_id)
    assert run.info.run_name == "rollout-m-v2"
    assert client.get_experiment(run.info.experiment_id).name == "rollouts"
    assert run.data.tags["raymaas.job_kind"] == "rollout"
    assert run.data.tags["raymaas.rollout.version"] == "2"
    params = run.data.params
    assert params["mode"] == "canary" and params["champion"] == "1" and params["candidate"] == "2"
    assert params["steps"] == "10,25,50,100" and params["min_labels"] == "100" and params["confidence"] == "0.95"
    assert read_rollout(client, model) == state


def test_the_run_goes_to_the_training_runs_experiment_and_a_canary_becomes_the_first_step(client):
    exp = client.create_experiment("digits")
    training = client.create_run(exp).info.run_id
    add_version(client, "d", registry.CHAMPION)
    v = add_version(client, "d", run_id=training)  # no candidate alias: named by hand
    state = start_rollout(client, "d", RolloutPolicy(steps=[10, 50, 100]), canary=5, version=v, shadow=True)
    assert client.get_run(state.run_id).info.experiment_id == exp
    assert state.policy.steps == [5, 10, 50, 100] and state.share == 5 and state.mode == "shadow"
    assert tags(client, "d", v)["raymaas.rollout.steps"] == "5,10,50,100"
    assert client.get_run(state.run_id).data.params["steps"] == "5,10,50,100"
    end_rollout(client, "d", "abort")
    # A canary that is a step starts there; the steps below it are dropped.
    again = start_rollout(client, "d", RolloutPolicy(), canary=25, version=v)
    assert again.policy.steps == [25, 50, 100] and again.step_index == 0


def test_refusals_name_what_is_wrong(client, model):
    def refused(match, name=model, **kw):
        with pytest.raises(RolloutError, match=match):
            start_rollout(client, name, RolloutPolicy(), **kw)

    refused("no registered model named 'nope'", name="nope")
    refused("m has no version 9", version="9")
    refused("already m's champion", version="1")
    refused(r"percentage in \(0, 100\], got 0", canary=0)
    refused(r"percentage in \(0, 100\], got 101", canary=101)
    add_version(client, "lonely", registry.CANDIDATE)
    refused("no `champion` alias.*raymaas promote lonely 1", name="lonely")
    add_version(client, "orphan", registry.CHAMPION)
    refused("no `candidate` alias: name the version", name="orphan")
    start_rollout(client, model, RolloutPolicy(), canary=25)
    v3 = add_version(client, model)
    refused(r"rollout of m version 2 is already active at 25% .*raymaas rollout m --abort", version=v3)
    with pytest.raises(RolloutError, match="no rollout of orphan is active"):
        end_rollout(client, "orphan", "abort")


def test_hold_advance_promote(client, model):
    state = start_rollout(client, model, RolloutPolicy(steps=[10, 50, 100]))
    hold = Decision("hold", "the candidate has 3 of the 100 labelled answers needed before a step", 10, FIGURES)
    state = apply_decision(client, state, hold)
    assert state.reason == hold.reason and state.decisions == 1
    # The hub looks every few seconds: an identical hold writes nothing.
    again = apply_decision(client, state, hold)
    assert again == state
    assert decisions_logged(client, state.run_id) == []  # a hold: metrics and the reason tag, no file
    assert tags(client, model, "2")[DECISIONS_TAG] == "1"

    state = apply_decision(client, state, Decision("advance", "the lower bound is above -0.02", 50, FIGURES))
    assert (state.share, state.step_index, state.decisions) == (50, 1, 2)
    assert tags(client, model, "2")["raymaas.rollout.share"] == "50"
    assert read_rollout(client, model).share == 50
    state = apply_decision(client, state, Decision("advance", "still fine", 100, FIGURES))
    assert (state.share, state.step_index) == (100, 2)

    state = apply_decision(client, state, Decision("promote", "the candidate holds up at 100%", 100, FIGURES))
    assert state.status == "promoted" and not state.active
    assert str(client.get_model_version_by_alias(model, registry.CHAMPION).version) == "2"
    t = tags(client, model, "2")
    assert t[ROLLOUT_TAG] == "promoted" and t["raymaas.rollout.share"] == "100"
    assert t[registry.DECISION_TAG] == "champion" and t[registry.REASON_TAG] == "the candidate holds up at 100%"
    assert MODEL_TAG not in client.get_registered_model(model).tags
    assert read_rollout(client, model) is None
    run = client.get_run(state.run_id)
    assert run.info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert run.data.tags[OUTCOME_TAG] == "promoted"
    assert decisions_logged(client, state.run_id) == [
        "decisions/0002-advance.json",
        "decisions/0003-advance.json",
        "decisions/0004-promote.json",
    ]
    shares = client.get_metric_history(state.run_id, "share")
    assert [(m.step, m.value) for m in sorted(shares, key=lambda m: m.step)] == [
        (1, 10.0),
        (2, 50.0),
        (3, 100.0),
        (4, 100.0),
    ]
    assert len(client.get_metric_history(state.run_id, "lower_bound")) == 4
    record = json.loads(Path(client.download_artifacts(state.run_id, "decisions/0002-advance.json")).read_text())
    assert record["action"] == "advance" and record["share_before"] == 10 and record["share_after"] == 50
    assert record["figures"] == FIGURES and record["reason"] == "the lower bound is above -0.02"


def test_rollback_rejects_and_an_ended_rollout_is_left_alone(client, model):
    state = start_rollout(client, model, RolloutPolicy())
    reason = "candidate error rate 9.00% vs champion 1.00% over 100 and 900 requests: more than 1.00% above"
    after = apply_decision(client, state, Decision("rollback", reason, 0, FIGURES))
    assert after.status == "rejected" and after.share == 0
    t = tags(client, model, "2")
    assert t[ROLLOUT_TAG] == "rejected" and t["raymaas.rollout.reason"] == reason
    assert t[registry.REASON_TAG] == reason
    assert str(client.get_model_version_by_alias(model, registry.CHAMPION).version) == "1"
    assert MODEL_TAG not in client.get_registered_model(model).tags
    run = client.get_run(state.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[OUTCOME_TAG] == "rejected"
    # The hub still holding the old state: its next decision changes nothing.
    late = apply_decision(client, state, Decision("advance", "late", 25, FIGURES))
    assert late.status == "rejected" and late.share == 0
    assert decisions_logged(client, state.run_id) == ["decisions/0001-rollback.json"]
    # A rejected version may be rolled out again: a new run, fresh tags.
    second = start_rollout(client, model, RolloutPolicy())
    assert second.active and second.run_id != state.run_id and second.decisions == 0
    assert last_rollout(client, model) == second
    # A decision for the first rollout never touches the second.
    assert apply_decision(client, state, Decision("advance", "stale", 25, FIGURES)) == second


def test_end_by_hand(client, model):
    state = start_rollout(client, model, RolloutPolicy(), canary=25)
    aborted = end_rollout(client, model, "abort")
    assert aborted.status == "aborted" and aborted.share == 0 and aborted.reason == "aborted by hand"
    assert str(client.get_model_version_by_alias(model, registry.CHAMPION).version) == "1"
    assert MODEL_TAG not in client.get_registered_model(model).tags
    assert client.get_run(state.run_id).info.status == "KILLED"
    assert client.get_run(state.run_id).data.tags[OUTCOME_TAG] == "aborted"
    assert last_rollout(client, model) == aborted
    with pytest.raises(RolloutError, match="no rollout of m is active"):
        end_rollout(client, model, "promote")

    start_rollout(client, model, RolloutPolicy())
    promoted = end_rollout(client, model, "promote")
    assert promoted.status == "promoted" and promoted.share == 100
    assert str(client.get_model_version_by_alias(model, registry.CHAMPION).version) == "2"
    assert tags(client, model, "2")[registry.REASON_TAG] == "promoted by hand"


def test_read_with_a_prefetched_model_and_after_a_restart(client, model, uri):
    state = start_rollout(client, model, RolloutPolicy(), canary=25)
    state = apply_decision(client, state, Decision("advance", "fine", 50, FIGURES))
    prefetched = client.get_registered_model(model)  # the endpoint's poll: aliases and tags at once
    assert read_rollout(client, model, prefetched) == state
    assert read_rollout(client, "nope") is None
    # A restarted endpoint: a new client of the same store resumes the same rollout.
    fresh = get_client(uri)
    resumed = read_rollout(fresh, model)
    assert resumed == state and resumed.share == 50 and resumed.step_index == 1
    assert resumed.policy.steps == [25, 50, 100]


def test_cli_start_status_abort_and_bad_options(client, model, uri, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)

    assert main(["rollout", model, "--canary", "10", "--steps", "10,50,100", "--min-labels", "20"]) == 0
    out = capsys.readouterr().out
    assert "rollout of m version 2 started: 10% of requests (sticky per x-raymaas-key), steps 10,50,100" in out
    assert "against champion version 1" in out
    assert read_rollout(client, model).policy.min_labels == 20

    assert main(["rollout", "status", model]) == 0
    out = capsys.readouterr().out
    assert "m version 2: active, canary at 10% of requests, step 1 of 3 (10,50,100)" in out
    assert "min_labels=20" in out

    assert main(["rollout", "status", model, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rollout"]["share"] == 10 and doc["rollout"]["policy"]["steps"] == [10, 50, 100]

    assert main(["rollout", model, "--canary", "10"]) == 1
    assert "already active at 10%" in capsys.readouterr().err

    assert main(["rollout", model, "--abort"]) == 0
    assert "aborted" in capsys.readouterr().out
    assert main(["rollout", "status", model]) == 0
    assert "m version 2: aborted" in capsys.readouterr().out

    assert main(["rollout", model, "--canary", "10", "--confidence", "1.5"]) == 2
    assert "confidence must be in (0.5, 1)" in capsys.readouterr().err
    assert main(["rollout", model, "--canary", "10", "--steps", "10,50"]) == 2
    assert "steps must end at 100" in capsys.readouterr().err
    assert main(["rollout", model, "--canary", "10", "--min-labels", "many"]) == 2
    assert "min_labels" in capsys.readouterr().err
    assert main(["rollout", model]) == 2
    assert main(["rollout", model, "--abort", "--min-labels", "5"]) == 2
    assert main(["rollout", "status", model, "--canary", "5"]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["rollout", model, "--canary", "10", "--promote"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        main(["rollout", model, "--canary", "0"])
    assert exit_.value.code == 2
    capsys.readouterr()
    assert main(["rollout", model, "--promote"]) == 1
    assert "no rollout of m is active" in capsys.readouterr().err


def test_cli_status_with_an_endpoint_that_does_not_answer(client, model, uri, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    assert main(["rollout", "status", model, "--url", "http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert "m has had no rollout" in out and "live: no endpoint answers at http://127.0.0.1:9/models/m/rollout" in out
