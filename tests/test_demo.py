"""`raymaas demo` end to end on the debug specs, once, in a fresh RAYMAAS_HOME, checked from
outside: through a real `mlflow server` on the demo's store (its REST API) and real HTTP
requests to the endpoints that `--keep-serving` leaves up. Its last stage rolls the sweep's
best model out on the classifier's endpoint as digits-debug version 2: the hub promotes it or
rolls it back (both are the platform working; the registry must agree with what it printed).

The demo runs on the embedded default (local Rays of its own), not on the test session's head.
It ran twice here until the suite reached 46 minutes; a second run took another 5.5 minutes to
check what other tests already check at their own scale: an existing store is never replaced
(test_tracking) and a second version of a model is gated against its champion
(test_supervised, test_rl). The demo finds each of its jobs' runs by a run name of its own, so
earlier runs in the store do not confuse it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, free_port

# One demo of ten stages: 6-11 minutes here, longer on a loaded machine (the default bound is 900 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MODELS = ("digits-debug", "cartpole-ppo-debug", "cartpole-dqn-debug")
SERVING_LINE = "raymaas demo: serving until Ctrl-C"


def demo_env(home: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAYMAAS_HOME")
    }
    env.update(RAYMAAS_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


class Demo:
    """`raymaas demo` in a subprocess, its output collected line by line as it comes."""

    def __init__(self, home: Path, *args: str):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "raymaas.cli", "demo", "--debug", *args],
            cwd=str(REPO),
            env=demo_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"demo ended (exit {self.proc.returncode}) before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout_s}s:\n{self.output}"
            time.sleep(1)

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not exit {timeout_s}s after being asked to; its output:\n{self.output[-6000:]}")
        self._reader.join(timeout=10)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            import psutil

            # The demo starts each job in a session of its own: a job in flight (and the local
            # Ray it started) is not in the demo's group, so it is ended by PID.
            try:
                jobs = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                jobs = []
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group is the demo's own (start_new_session)
            for proc in jobs:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            self.proc.wait(timeout=30)


def http_json(url: str, payload: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo-home")


@pytest.fixture(scope="module")
def demo(demo_home):
    """One run with --keep-serving: trains, registers, serves and queries, then yields while its
    endpoints are up; Ctrl-C at the end."""
    port = free_port()
    demo = Demo(demo_home, "--keep-serving", "--port", str(port))
    try:
        demo.wait_for_line(SERVING_LINE, timeout_s=1500)
        yield demo, f"http://127.0.0.1:{port}"
        demo.proc.send_signal(signal.SIGINT)
        assert demo.wait(timeout_s=120) == 0, demo.output
        assert "raymaas demo: endpoints stopped" in demo.output
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def mlflow_server(demo_home, demo):
    """A real `mlflow server` on the demo's store, read through its REST API only."""
    port = free_port()
    log = demo_home / "mlflow-server.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_cli),
            "server",
            "--backend-store-uri",
            f"sqlite:///{demo_home / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=str(demo_home),
        # no job runner: the REST API is all this test reads (see raymaas.runtime.localcluster)
        env={**demo_env(demo_home), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # a file: a pipe nobody reads fills up and stalls the server
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, f"mlflow server exited: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "mlflow server did not come up in 120 s"
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group it leads
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_demo_shows_every_stage_and_what_the_endpoints_answered(demo):
    out = demo[0].output
    for number in range(1, 11):
        assert f"[{number}/10]" in out, out
    # the explanation stage: one digit's pixels, one CartPole move
    assert re.search(r"digits-debug: a held-out \d predicted \d \(integrated gradients against the training", out), out
    assert re.search(r"pixels \(row,col\) pushing most: \(\d,\d\) [+-]\d", out), out
    assert re.search(r"cartpole-\w+-debug: action [01] \(push (left|right)\) because of", out), out
    # the monitoring stage: feedback gives a live accuracy, the brightened pixel is flagged
    assert re.search(r"digits-debug: true labels of \d+ answered rows sent to /feedback", out), out
    pixel = re.search(r"digits-debug: \d+ more digits with pixel (\d+) 3 std brighter", out)
    assert pixel and f"FLAGGED {pixel.group(1)} " in out, out
    assert re.search(r"live \(\d+ labelled rows\): accuracy 0\.\d+", out), out
    # the sweep stage: trials followed, the best trial's model registered
    assert re.search(r"trials started 2, ended 2", out), out  # the debug demo: one lr per layer size
    assert re.search(r"digits-sweep-debug version \d+: val_accuracy 0\.\d+ -> (champion|candidate)", out), out
    # progress: epochs of the classifier, env steps of the policies, a time for each stage
    assert re.search(r"epoch 3/3 +val_accuracy 0\.\d+", out), out
    assert re.search(r"env steps [\d,]+/1,500", out), out
    accuracy = re.search(r"digits-debug \(version 1\): ([\d.]+)% of (\d+) held-out digits right", out)
    assert accuracy and float(accuracy.group(1)) >= 80, out
    # the batch stage: raymaas predict on the same held-out rows, every one scored
    scored = re.search(r"(\d+) held-out rows scored into \S+: ([\d.]+) right \(version 1", out)
    assert scored and int(scored.group(1)) == int(accuracy.group(2)) and float(scored.group(2)) >= 0.8, out
    for policy in MODELS[1:]:
        assert re.search(rf"{policy} \(version 1\): episode return \d+ over \d+ steps", out), out
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    for model in MODELS:
        assert f"/models/{model}/invocations" in out
    assert re.search(r"raymaas demo: done in \S+", out)


def test_the_rollout_stage_shows_each_step_the_live_figures_and_the_hub_s_decision(demo):
    """The sweep's best as digits-debug version 2, half the held-out digits' requests to it,
    both versions' live accuracy, then the hub's decision, and the summary agreeing with it."""
    out = demo[0].output
    assert re.search(
        r"digits-sweep-debug version 1 \(the sweep's best, val_accuracy 0\.\d+\) registered as digits-debug "
        r"version 2: candidate",
        out,
    ), out
    assert "rollout of digits-debug version 2 against champion version 1 started in the registry: 50% then 100%" in out
    assert "by hand: raymaas rollout digits-debug --version 2 --canary 50 --steps 50,100 --min-labels 100" in out
    assert "step 1 of 2: the endpoint sends 50% of requests to version 2, each by its x-raymaas-key" in out
    held_out = int(re.search(r"digits-debug \(version 1\): [\d.]+% of (\d+) held-out digits right", out).group(1))
    first = re.search(
        r"pass 1: (\d+) held-out digits, a request each: version 1 answered (\d+), version 2 (\d+); labels of (\d+)",
        out,
    )
    sent, champion, candidate, labelled = (int(g) for g in first.groups())
    # half the keys to each version, give or take (at 50%, one standard deviation of 359 keys is 9.5)
    assert sent == labelled == held_out == champion + candidate and min(champion, candidate) > 100, first.group(0)
    assert re.search(r"hub: (hold at 50%|advance (from 50% )?to 100% of requests|roll back)", out), out
    outcome = re.search(r"^      digits-debug version 2 (promoted|rolled back) by the hub: (.+)$", out, re.M)
    assert outcome, out
    if outcome.group(1) == "promoted":
        assert "step 2 of 2: the endpoint sends 100% of requests to version 2" in out, out
        assert re.search(r"hub: promote version 2 to champion: candidate accuracy [01]\.\d+ vs champion", out), out
        assert outcome.group(2).startswith("digits-debug@champion is version 2 now (was 1); the endpoint answers"), out
        on_accuracy = True
    else:
        rollback = re.search(r"hub: roll back: every request to version 1 again: candidate (\w+)", out)
        assert rollback, out
        assert outcome.group(2).startswith("digits-debug@champion stays version 1"), out
        on_accuracy = rollback.group(1) == "accuracy"  # not a guard (error rate, p99 latency)
    if on_accuracy:  # each version's live accuracy and labels, as the hub judged them
        assert re.search(
            r"live accuracy: version 1 \(champion\) [01]\.\d{3} over \d+ labels since the rollout began, "
            r"version 2 \(candidate\) [01]\.\d{3} over \d+ this step",
            out,
        ), out
    champion_now = "2" if outcome.group(1) == "promoted" else "1"
    assert re.search(
        rf"rollout: digits-debug version 2 {outcome.group(1)} by the endpoint's monitor hub \(candidate", out
    ), out
    assert re.search(rf"digits-debug@champion is version {champion_now}; its decisions are in MLflow run \w+", out), out
    assert re.search(r"digits-debug +version 2 +\S+ +val_accuracy 0\.\d+ +digits-sweep-debug version 1, rolled", out), (
        out
    )


def _tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def test_the_store_holds_one_training_run_per_model_and_the_rollout_s_outcome(mlflow_server):
    """One training run and one version per model, but digits-debug's version 2: the sweep's
    best trial's model, rolled out (promoted or rejected), its rollout run in the sweep's
    experiment beside that trial's run."""
    api = f"{mlflow_server}/api/2.0/mlflow"
    for model in MODELS:
        status, got = http_json(f"{api}/experiments/get-by-name?experiment_name={model}")
        assert status == 200, got
        status, found = http_json(f"{api}/runs/search", {"experiment_ids": [got["experiment"]["experiment_id"]]})
        kinds = {r["info"]["run_id"]: _tag(r, "raymaas.job_kind") for r in found.get("runs", [])}
        assert list(kinds.values()).count("predict") == (1 if model.startswith("digits") else 0), kinds
        # the served versions' monitoring runs are beside them (linked by tags), not training runs
        runs = [r for r in found.get("runs", []) if kinds[r["info"]["run_id"]] not in ("predict", "monitor")]
        assert len(runs) == 1 and all(r["info"]["status"] == "FINISHED" for r in runs), found
        gate_metric = "val_accuracy" if model.startswith("digits") else "eval_return_mean"
        for run in runs:
            assert gate_metric in {m["key"] for m in run["data"]["metrics"]}, run
            status, listing = http_json(f"{api}/artifacts/list?run_id={run['info']['run_id']}")
            assert status == 200 and {"plots", "spec.yaml"} <= {f["path"] for f in listing.get("files", [])}, listing

        status, registered = http_json(f"{api}/registered-models/get?name={model}")
        assert status == 200, registered
        aliases = {a["alias"]: a["version"] for a in registered["registered_model"].get("aliases", [])}
        status, versions = http_json(f"{api}/model-versions/search?filter=name%3D%27{model}%27")
        if model != "digits-debug":
            assert aliases.get("champion") == "1", registered
            assert sorted(int(v["version"]) for v in versions["model_versions"]) == [1], versions
            continue
        assert sorted(int(v["version"]) for v in versions["model_versions"]) == [1, 2], versions
        # no rollout active any more: the hub ended it
        assert "raymaas.rollout.candidate" not in {t["key"] for t in registered["registered_model"].get("tags", [])}
        status, got = http_json(f"{api}/model-versions/get?name={model}&version=2")
        assert status == 200, got
        tags = {t["key"]: t["value"] for t in got["model_version"].get("tags", [])}
        outcome = tags.get("raymaas.rollout")
        assert outcome in ("promoted", "rejected"), tags
        assert aliases.get("champion") == ("2" if outcome == "promoted" else "1"), (registered, tags)
        assert aliases.get("candidate") == "2", registered
        assert tags["raymaas.promotion"] == ("champion" if outcome == "promoted" else "rejected by rollout"), tags
        assert tags["raymaas.rollout.steps"] == "50,100" and tags["raymaas.rollout.champion"] == "1", tags

        # version 2 is the sweep's best trial's model: its run, a child of the sweep's run
        status, trial = http_json(f"{api}/runs/get?run_id={got['model_version']['run_id']}")
        assert status == 200 and _tag(trial["run"], "mlflow.parentRunId"), trial
        status, sweep = http_json(f"{api}/experiments/get-by-name?experiment_name=digits-sweep-debug")
        sweep_experiment = sweep["experiment"]["experiment_id"]
        assert trial["run"]["info"]["experiment_id"] == sweep_experiment, trial
        # the rollout's run: ended with the outcome, each decision's share logged
        status, rollout = http_json(f"{api}/runs/get?run_id={tags['raymaas.rollout.run_id']}")
        assert status == 200, rollout
        run = rollout["run"]
        assert run["info"]["status"] == "FINISHED" and run["info"]["experiment_id"] == sweep_experiment, run
        assert _tag(run, "raymaas.job_kind") == "rollout" and _tag(run, "raymaas.rollout.outcome") == outcome, run
        status, shares = http_json(f"{api}/metrics/get-history?run_id={run['info']['run_id']}&metric_key=share")
        last = max(shares["metrics"], key=lambda m: int(m.get("step", 0)))
        assert last["value"] == (100.0 if outcome == "promoted" else 0.0), shares


def test_kept_endpoints_answer_and_list_the_three_champions(demo):
    _, base = demo
    status, listing = http_json(f"{base}/models")
    assert status == 200, listing
    published = {m["name"]: m for m in listing["models"]}
    assert set(MODELS) <= set(published), listing
    status, body = http_json(f"{base}/models/digits-debug/invocations", {"inputs": [[0.0] * 64, [8.0] * 64]})
    assert status == 200 and len(body["predictions"]) == 2, body
    for policy in MODELS[1:]:
        status, body = http_json(f"{base}/models/{policy}/invocations", {"inputs": [[0.0, 0.1, 0.02, -0.1]]})
        assert status == 200 and body["predictions"][0] in (0, 1), body
    # a bad request is the client's fault, named, not a 500
    status, body = http_json(f"{base}/models/cartpole-ppo-debug/invocations", {"inputs": [[0.0, 0.1]]})
    assert status == 422, body


RAY_TRAIN_CLEANER_WARNING = "Failed to query Ray Train Controller actor state"


def _seconds(clock: str) -> int:
    """The demo's clock ("45s", "2m05s") in seconds."""
    minutes, _, seconds = clock.rpartition("m")
    return int(minutes or 0) * 60 + int(seconds.removesuffix("s"))


def test_demo_output_is_progress_a_reader_can_follow(demo):
    """The demo's own lines: the ten stages in order on a running clock; each training stage
    names the command it ran and the log it wrote, then its progress and its outcome. The
    jobs' own output in those logs: each epoch once, each RL iteration, the run. Nowhere one
    of Ray's "Failed to query Ray Train Controller actor state" warnings."""
    out = demo[0].output
    headers = list(re.finditer(r"^\[(\d+)/10\] .+   \(demo at (\S+)\)$", out, re.M))
    assert [int(h.group(1)) for h in headers] == list(range(1, 11)), out
    clocks = [_seconds(h.group(2)) for h in headers]
    assert clocks == sorted(clocks), out
    blocks = [out[h.end() : nxt.start() if nxt else len(out)] for h, nxt in zip(headers, [*headers[1:], None])]

    modules = [re.search(r"^      \$ python -m (jobs\.\w+) ", b, re.M) for b in blocks[:4]]
    assert [m.group(1) if m else None for m in modules] == ["jobs.supervised", "jobs.sweep", "jobs.rl", "jobs.rl"], out
    assert re.search(r"^      \$ raymaas predict models:/digits-debug/1 ", blocks[4], re.M), out
    logs = {}
    for block in blocks[:5]:
        (path,) = re.findall(r"^      job output: (\S+\.log)$", block, re.M)
        logs[Path(path).stem] = (REPO / path).read_text(errors="replace")
    assert set(logs) == {*MODELS, "digits-sweep-debug", "digits-debug-predict"}, sorted(logs)

    # progress, then the outcome, in each training stage's block
    epochs = [int(e) for e in re.findall(r"^      epoch (\d)/3  val_accuracy [\d.]+  train_loss ", blocks[0], re.M)]
    assert epochs and epochs == sorted(set(epochs)) and epochs[-1] == 3, blocks[0]
    for block in blocks[2:4]:
        steps = [int(s.replace(",", "")) for s in re.findall(r"^      env steps ([\d,]+)/1,500  ", block, re.M)]
        assert steps and steps == sorted(steps), block
    for block, model, metric in zip(
        blocks[:4],
        ("digits-debug", "digits-sweep-debug", *MODELS[1:]),
        ("val_accuracy", "val_accuracy", *2 * ["eval_return_mean"]),
    ):
        assert re.search(rf"^      {model} version 1: {metric} [\d.]+ -> champion", block, re.M), block

    # the jobs' own output: each epoch once, each RL iteration's env steps, the run it tracked
    assert re.findall(r"raymaas: epoch (\d)/3 ", logs["digits-debug"]) == ["1", "2", "3"], logs["digits-debug"]
    for policy in MODELS[1:]:
        steps = [int(s) for s in re.findall(r"raymaas: iteration \d+: (\d+) env steps", logs[policy])]
        assert steps and steps == sorted(steps), logs[policy]
    for model in (*MODELS, "digits-sweep-debug"):
        assert re.search(r"raymaas: (run|sweep) \S+", logs[model]), logs[model][-3000:]

    # the rollout: registered, started, a step, a pass, the hub's word, the outcome, in that order
    said = [
        r"digits-sweep-debug version 1 .+ registered as digits-debug version 2: candidate",
        r"rollout of digits-debug version 2 against champion version 1 started",
        r"step 1 of 2: ",
        r"pass 1: ",
        r"hub: ",
        r"digits-debug version 2 (promoted|rolled back) by the hub",
    ]
    found = [re.search(rf"^      {text}", blocks[9], re.M) for text in said]
    assert all(found) and [f.start() for f in found] == sorted(f.start() for f in found), blocks[9]

    for name, text in {"the demo": out, **logs}.items():
        assert RAY_TRAIN_CLEANER_WARNING not in text, f"{name}:\n{text[-4000:]}"


def _cartpole_observations(n: int = 6) -> list[list[float]]:
    """States of a CartPole episode (seed 11) pushed left and right in turn: off the rest position."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=11)
    states = []
    for i in range(n):
        states.append([float(v) for v in obs])
        obs, *_ = env.step(i % 2)
    env.close()
    return states


def test_a_policys_explanation_attributes_its_chosen_action_to_each_observation_feature(demo):
    """POST /models/<policy>/explain (both CartPole policies): per observation, one attribution
    per feature, for the action the policy picks there (as /invocations answers it), complete:
    they sum to the action's score minus its score at the baseline, within the reported
    convergence delta."""
    _, base = demo
    rows = _cartpole_observations()
    for policy in MODELS[1:]:
        status, acted = http_json(f"{base}/models/{policy}/invocations", {"inputs": rows})
        assert status == 200 and len(acted["predictions"]) == len(rows), acted
        # the first request of a model's explanations starts its explainer replica
        status, body = http_json(f"{base}/models/{policy}/explain", {"inputs": rows}, timeout=180)
        assert status == 200, body
        assert (body["model"], body["version"], body["method"]) == (policy, "1", "integrated_gradients"), body
        assert body["baseline_prediction"] in (0, 1), body
        assert len(body["explanations"]) == len(rows), body
        for obs, action, row in zip(rows, acted["predictions"], body["explanations"]):
            attributions = row["attributions"]
            assert isinstance(attributions, list) and len(attributions) == len(obs) == 4, row
            assert row["target"] == row["prediction"] == action, (obs, action, row)
            gap = row["score"] - row["baseline_score"]
            assert abs(sum(attributions) - gap - row["convergence_delta"]) < 1e-4, row
            assert abs(row["convergence_delta"]) < 0.05 * max(1.0, abs(gap)), row
