"""The demo: every part of the platform, end to end, on the embedded default.

`make demo` (or `raymaas demo`) trains the digits classifier on Ray Train, a sweep of it on
Ray Tune, PPO and DQN on CartPole with RLlib, each as the job a user would run
(`python -m jobs.supervised SPEC`, `python -m jobs.sweep SPEC`, `python -m jobs.rl SPEC`),
tracked in MLflow and registered and gated in its Model Registry; scores the held-out digits in
batch; then publishes the three champions with Ray Serve and queries them over HTTP (held-out
digits for the classifier, a CartPole episode played through each policy's endpoint), watches
and explains them, and ends with a progressive rollout on the classifier's endpoint.

The rollout's candidate is the sweep's best model, registered as a new version of the served
classifier (`raymaas.tracking.registry.register_model`: alias `candidate`, no gate, for the
rollout is the gate here). It is a real second version: another run, another layer size and
learning rate, trained on the same split of the same digits (the demo checks both specs' data
and seed) and answering with the same signature (checked too), so the held-out digits are
held out for both versions. The alternatives cost more or show less: a second training run of
the classifier adds a Ray Train job of its own (half a minute or more on 2 cores, beside the
running endpoints), and the champion's own run registered again would be a rollout of a model
against itself. The rollout (`raymaas.tracking.rollout.start_rollout`, what `raymaas rollout`
does) sends half the requests to the candidate, then all of them; the held-out digits go
through the endpoint one request each, keyed by `x-raymaas-key`, their labels to /feedback,
and the endpoint's monitor hub decides (advance, promote or roll back) on both versions' live
accuracy: both outcomes are the platform working, and the demo prints which and why.

The demo only orchestrates. Progress comes from the MLflow store, which the jobs write and
the demo reads, and the outcome of each job (version, alias, score) from the registry: the
same places a user looks. Each job's own output goes to a log file, named when it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

from raymaas import paths, tracking
from raymaas.kinds import SWEEP_ENTRYPOINT, get_kind
from raymaas.monitoring.rollout import RolloutPolicy
from raymaas.serving.ingress import prepare_local_ingress
from raymaas.serving.routing import STICKY_HEADER
from raymaas.specs import load_spec
from raymaas.tracking.registry import CHAMPION, register_model
from raymaas.tracking.rollout import end_rollout, read_rollout, start_rollout


@dataclass(frozen=True)
class Stage:
    """A training job of the demo."""

    title: str
    kind: str  # a row of raymaas.kinds
    spec: str  # relative to the project root
    overrides: tuple[str, ...] = ()  # --set arguments
    sweep: bool = False  # a spec with tune_config: jobs.sweep, its best trial's model

    @property
    def module(self) -> str:
        return SWEEP_ENTRYPOINT if self.sweep else get_kind(self.kind).entrypoint


# Four trials of a small digits MLP (a learning rate drawn twice for each of two layer sizes),
# ASHA stopping the weak ones. On 2 cores the trials run one at a time (each holds a core for
# its Train worker and one for itself), about a minute each; the debug demo draws the learning
# rate once per layer size: two trials.
_SWEEP_STAGE = Stage(
    "a sweep of the digits classifier on Ray Tune (4 trials, ASHA)",
    "supervised",
    "jobs/specs/digits_sweep_debug.yaml",
    sweep=True,
)
_DEBUG_SWEEP_STAGE = Stage(
    "a sweep of the digits classifier on Ray Tune (2 trials, ASHA, debug)",
    "supervised",
    "jobs/specs/digits_sweep_debug.yaml",
    ("tune_config.num_samples=1",),
    sweep=True,
)

STAGES = {
    "full": (
        Stage("digits classifier on Ray Train (2 workers)", "supervised", "jobs/specs/digits_mlp.yaml"),
        _SWEEP_STAGE,
        # Each policy gets at most 3 minutes here, so the demo ends within 10 on 2 cores; both
        # solve CartPole well inside that (see the README's figures), the full specs allow 10.
        Stage("PPO on CartPole-v1 (RLlib)", "rl", "jobs/specs/cartpole_ppo.yaml", ("stop.max_seconds=180",)),
        Stage("DQN on CartPole-v1 (RLlib)", "rl", "jobs/specs/cartpole_dqn.yaml", ("stop.max_seconds=180",)),
    ),
    # Small and fast: what the test runs (the RL policies do not solve CartPole here).
    "debug": (
        Stage("digits classifier on Ray Train (2 workers, debug)", "supervised", "jobs/specs/digits_debug.yaml"),
        _DEBUG_SWEEP_STAGE,
        Stage("PPO on CartPole-v1 (RLlib, debug)", "rl", "jobs/specs/cartpole_ppo_debug.yaml"),
        Stage("DQN on CartPole-v1 (RLlib, debug)", "rl", "jobs/specs/cartpole_dqn_debug.yaml"),
    ),
}


# The rollout stage's policy: half the requests to the candidate, then all of them. Each step
# is judged on a pass of the 359 held-out digits (about 180 labels a version at 50%), and the
# margin and confidence are what that many labels can show (the defaults, 2 points at 95%,
# need about a thousand labels a version). While the hub holds, the digits are sent again
# (new keys: a new split between the versions). Simulated with decide(), 400 runs each on
# accuracies like those of the demo's digits models: equal versions, or a candidate up to 2
# points worse, are decided after a median of 2 passes, 96-99% of runs within 15 passes (the
# debug wait holds about that many); 3 points worse, 79% (a difference at the margin takes
# many labels to settle either way). The latency guard allows 3 times the champion's p99 and
# waits for 100 requests of each version: on a busy 2-core machine one slow answer among a
# few dozen moves a p99 by more than the default 1.5 (test_rollout allows 1000 for that).
ROLLOUT_POLICY = RolloutPolicy(
    steps=[50, 100], min_labels=100, max_regression=0.05, confidence=0.9, max_latency_ratio=3.0, min_requests=100
)
ROLLOUT_INTERVAL_S = 2.0  # the serve config's rollout.interval_s: the hub looks every 2 s
ROLLOUT_WAIT_S = {"full": 120.0, "debug": 90.0}  # for the hub's last decision


class DemoError(RuntimeError):
    """A stage failed; the message says which and where its log is."""


@dataclass
class Trained:
    """What a training stage left in MLflow."""

    stage: Stage
    spec: object
    run_id: str
    run_name: str
    model_name: str
    version: str
    aliases: list[str]
    score_name: str
    score: float
    seconds: float


@dataclass
class Answer:
    """What an endpoint answered to the demo's queries."""

    model_name: str
    url: str
    version: str
    summary: str
    details: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # request id -> the true labels of its rows (feedback)


class StageLog:
    """Stage headers and timing lines, flushed at once (the demo is watched live)."""

    def __init__(self, total: int):
        self.total = total
        self.started = time.monotonic()

    def stage(self, number: int, title: str) -> None:
        print(f"\n[{number}/{self.total}] {title}   (demo at {self.clock()})", flush=True)

    def line(self, text: str) -> None:
        print(f"      {text}", flush=True)

    def clock(self) -> str:
        return _duration(time.monotonic() - self.started)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# --------------------------------------------------------------------------- training stages


def train(stage: Stage, progress: StageLog, log_dir: Path, tracking_uri: str) -> Trained:
    """Run one job as a user would, report its progress from MLflow, read its outcome there."""
    root = paths.project_root()
    spec = load_spec(get_kind(stage.kind).load_spec_model(), root / stage.spec, stage.overrides)
    run_name = tracking.new_run_name(spec.name)
    log_path = log_dir / f"{spec.name}.log"
    command = [
        sys.executable,
        "-m",
        stage.module,
        stage.spec,
        *(arg for o in (*stage.overrides, f"mlflow.run_name={run_name}") for arg in ("--set", o)),
    ]
    progress.line(f"$ python {' '.join(command[1:])}")
    progress.line(f"job output: {log_path}")
    # The embedded default: each job starts a Ray of its own in its process, as `make demo`
    # promises, whatever cluster RAY_ADDRESS may name in this shell.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PYTHONUNBUFFERED="1")
    client = tracking.get_client(tracking_uri)
    started = time.monotonic()
    with open(log_path, "w") as log:
        job = subprocess.Popen(
            command, cwd=str(root), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            watch = _Watcher(client, spec, stage.kind, run_name, progress, started)
            while job.poll() is None:
                watch.report()
                time.sleep(2)
            watch.report()
        except KeyboardInterrupt:
            job.send_signal(signal.SIGINT)  # the job ends its MLflow run as KILLED
            job.wait(timeout=60)
            raise
    if job.returncode != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise DemoError(f"{stage.title} failed (exit {job.returncode}); last lines of {log_path}:\n{tail}")
    return _outcome(client, stage, spec, run_name, time.monotonic() - started)


def score_holdout(trained: Trained, progress: StageLog, log_dir: Path, tracking_uri: str) -> str:
    """`raymaas predict` on the validation rows of the classifier's spec (rows it never trained
    on), as a user runs it; the line that says how many it got right."""
    from raymaas.batch.sample import PASSTHROUGH, holdout_accuracy, write_holdout

    root = paths.project_root()
    state = paths.raymaas_home() / paths.STATE_DIR  # git-ignored, beside the logs
    source = write_holdout(trained.spec, state / "data" / f"{trained.model_name}-holdout.csv")
    output = state / "predictions" / f"{trained.model_name}-holdout"
    model = f"models:/{trained.model_name}/{trained.version}"
    command = [sys.executable, "-m", "raymaas.cli", "predict", model, str(source), str(output)]
    command += ["--passthrough", ",".join(PASSTHROUGH), "--overwrite"]
    log_path = log_dir / f"{trained.model_name}-predict.log"
    progress.line(f"$ raymaas {' '.join(command[3:])}")
    progress.line(f"job output: {log_path}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    with open(log_path, "w") as log:
        job = subprocess.Popen(
            command, cwd=str(root), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            job.wait()
        except KeyboardInterrupt:
            job.send_signal(signal.SIGINT)
            job.wait(timeout=60)
            raise
    if job.returncode != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise DemoError(f"batch scoring failed (exit {job.returncode}); last lines of {log_path}:\n{tail}")
    accuracy, rows = holdout_accuracy(output)
    return (
        f"{rows} held-out rows scored into {output}: {accuracy:.3f} right "
        f"(version {trained.version}, tracked in {trained.model_name}'s experiment)   "
        f"[{_duration(time.monotonic() - started)}]"
    )


class _Watcher:
    """Prints a job's progress as its MLflow run records it: epochs, or env steps and returns."""

    def __init__(self, client, spec, kind: str, run_name: str, progress: StageLog, started: float):
        self.client, self.spec, self.kind, self.run_name = client, spec, kind, run_name
        self.progress, self.started = progress, started
        self.run_id: str | None = None
        self.last: tuple | None = None
        self.last_print = 0.0

    def report(self) -> None:
        run = self._run()
        if run is None:
            return
        m = run.data.metrics
        elapsed = time.monotonic() - self.started
        if self.spec.is_sweep:
            trials = self.client.search_runs(
                [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'"
            )
            if not trials:
                return
            ended = sum(t.info.status != "RUNNING" for t in trials)
            scores = [t.data.metrics["val_accuracy"] for t in trials if "val_accuracy" in t.data.metrics]
            epochs = sum(len(self.client.get_metric_history(t.info.run_id, "val_accuracy")) for t in trials)
            key = (len(trials), ended, epochs)
            text = f"trials started {len(trials)}, ended {ended}, epochs {epochs}"
            text += f"  best val_accuracy so far {max(scores):.3f}" if scores else ""
        elif self.kind == "supervised":
            # The epoch is each metric's step.
            history = self.client.get_metric_history(self.run_id, "val_accuracy")
            if not history:
                return
            epoch = max(h.step for h in history)
            key = (epoch,)
            text = (
                f"epoch {epoch + 1}/{self.spec.train_loop_config.epochs}  "
                f"val_accuracy {m.get('val_accuracy', float('nan')):.3f}  "
                f"train_loss {m.get('train_loss', float('nan')):.3f}"
            )
        else:
            if "env_steps_sampled" not in m:
                return
            key = (int(m["env_steps_sampled"]), m.get("eval_return_mean"))
            stop = self.spec.stop
            text = f"env steps {int(m['env_steps_sampled']):,}/{stop.max_env_steps:,}"
            if "episode_return_mean" in m:
                text += f"  training return {m['episode_return_mean']:.1f}"
            if "eval_return_mean" in m:
                text += f"  greedy return {m['eval_return_mean']:.1f}"
            if stop.target_return is not None:
                text += f" (target {stop.target_return:g})"
        # Every epoch; RL iterations at most every 5 s (they come several per second).
        if key != self.last and (self.kind == "supervised" or time.monotonic() - self.last_print >= 5):
            self.progress.line(f"{text}   [{_duration(elapsed)}]")
            self.last, self.last_print = key, time.monotonic()

    def _run(self):
        if self.run_id is None:
            run = _find_run(self.client, self.spec.experiment_name, self.run_name)
            if run is None:
                return None
            self.run_id = run.info.run_id
        return self.client.get_run(self.run_id)


def _find_run(client, experiment_name: str, run_name: str):
    """The run of that name in that experiment, or None while the job has not made it yet."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'", max_results=1
    )
    return runs[0] if runs else None


def _outcome(client, stage: Stage, spec, run_name: str, seconds: float) -> Trained:
    run = _find_run(client, spec.experiment_name, run_name)
    if stage.sweep:  # the model is the best trial's, registered from its child run
        run = client.get_run(run.data.tags["raymaas.best_run_id"])
    name = spec.registered_model_name
    version = next(v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run.info.run_id)
    # search_model_versions leaves aliases out; get_model_version has them.
    version = client.get_model_version(name, str(version.version))
    score_name = get_kind(stage.kind).gate_metric
    return Trained(
        stage,
        spec,
        run.info.run_id,
        run_name,
        name,
        str(version.version),
        list(version.aliases),
        score_name,
        run.data.metrics.get(score_name, float("nan")),
        seconds,
    )


def describe(trained: Trained, client) -> str:
    from raymaas.tracking.registry import REASON_TAG

    version = client.get_model_version(trained.model_name, trained.version)
    gate = "champion" if "champion" in trained.aliases else "candidate"
    reason = version.tags.get(REASON_TAG)
    gate += f" ({reason})" if reason else ""
    target = getattr(getattr(trained.spec, "stop", None), "target_return", None)
    if target is not None and not trained.score >= target:
        gate += f"; did not reach {target:g} within its {trained.spec.stop.max_seconds:g} s"
    return (
        f"{trained.model_name} version {trained.version}: {trained.score_name} {trained.score:.3f} -> {gate}"
        f"   [{_duration(trained.seconds)}]"
    )


# --------------------------------------------------------------------------- serving and querying


def publish(model_names: list[str], host: str, port: int, tracking_uri: str) -> str:
    """Start a local Ray and Serve, publish each model's champion as its own application."""
    import logging

    import ray
    from ray import serve

    from raymaas.serving.endpoint import build_model_app
    from raymaas.serving.index import build_index_app
    from raymaas.serving.specs import IndexSpec, ServeSpec

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the replicas' store
    # The replicas' and Serve's own logs stay in Ray's log folder; the demo prints the answers.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(
        address="local",
        num_cpus=max(4, len(model_names)),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}},
    )
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    targets = [serve.RunTarget(build_index_app(IndexSpec()), name="index", route_prefix="/")]
    for name in model_names:
        spec = ServeSpec.model_validate(
            {
                "models": [{"name": name, "alias": "champion"}],
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
                "ray_actor_options": {"num_cpus": 0.5},
                "tracking_uri": tracking_uri,
                # The rollout stage: the replicas read a rollout's share from the registry every
                # second, the hub judges every ROLLOUT_INTERVAL_S by the policy stored with the
                # rollout (no `policy` override here), and the live window keeps every labelled
                # row of the rollout (the champion's figures span it: its rows of the first step
                # must outlast the passes of the last, at 359 rows a pass).
                "poll_interval_s": 1.0,
                "rollout": {"enabled": True, "interval_s": ROLLOUT_INTERVAL_S},
                "monitoring": {"feedback_window": 10_000},
            }
        )
        targets.append(serve.RunTarget(build_model_app(spec), name=name, route_prefix=spec.route_prefix))
    # All at once: the replicas start in parallel (one serve.run after another waits for each).
    serve.run_many(targets, wait_for_applications_running=False)
    return f"http://{host}:{port}"


def wait_until_serving(base_url: str, model_names: list[str], timeout_s: float = 600) -> None:
    """Serve reports an application RUNNING once its replicas are up; wait for all of them.
    Each replica imports torch and MLflow and loads its model: on a busy 2-core machine the
    four took more than 180 s (a suite run beside a spinning process), so the bound is 600 s,
    and a timeout says what each application was doing."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    wanted = {"index", *model_names}
    while True:
        apps = serve.status().applications
        states = {name: str(apps[name].status) for name in wanted if name in apps}
        failed = {n: apps[n].message for n, s in states.items() if s.endswith("DEPLOY_FAILED")}
        if failed:
            raise DemoError(f"Serve could not deploy {', '.join(failed)}: {failed}")
        if len(states) == len(wanted) and all(s.endswith("RUNNING") for s in states.values()):
            return
        if time.monotonic() > deadline:
            doing = {
                n: f"{states.get(n, 'not deployed')} {apps[n].message if n in apps else ''}".strip() for n in wanted
            }
            raise DemoError(f"Serve applications not running after {timeout_s:.0f}s: {doing}")
        time.sleep(1)


def post_json(url: str, payload: dict, timeout: float = 30, headers: dict | None = None) -> tuple[dict, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json", **_auth_header(), **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read()), dict(response.headers)


def get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=_auth_header()), timeout=timeout) as response:
        return json.loads(response.read())


def _auth_header() -> dict:
    # When the replicas require API keys (RAYMAAS_API_KEYS), the demo's client uses the first.
    keys = [k.strip() for k in os.environ.get("RAYMAAS_API_KEYS", "").split(",") if k.strip()]
    return {"authorization": f"Bearer {keys[0]}"} if keys else {}


def query_classifier(trained: Trained, base_url: str) -> Answer:
    """Send the held-out digits (never trained on) in batches; report the accuracy."""
    import numpy as np

    from raymaas.supervised.data import load_builtin

    spec = trained.spec
    split = load_builtin(spec.data, spec.train_loop_config.seed)
    url = f"{base_url}/models/{trained.model_name}/invocations"
    predicted, versions = [], set()
    labels = {}
    for start in range(0, len(split.x_val), 64):
        body, headers = post_json(url, {"inputs": split.x_val[start : start + 64].tolist()})
        predicted.extend(body["predictions"])
        versions.add(headers.get("x-model-version"))
        labels[headers["x-request-id"]] = split.y_val[start : start + 64].tolist()
    predicted = np.asarray(predicted).reshape(-1)
    accuracy = float((predicted == split.y_val).mean())
    shown = 12
    return Answer(
        trained.model_name,
        url,
        ",".join(sorted(v for v in versions if v)),
        f"{accuracy:.1%} of {len(split.y_val)} held-out digits right ({(len(split.y_val) + 63) // 64} requests)",
        [
            f"predicted {' '.join(str(int(p)) for p in predicted[:shown])}",
            f"true      {' '.join(str(int(t)) for t in split.y_val[:shown])}",
        ],
        labels=labels,
    )


def watch_endpoints(trained: list[Trained], answers: list[Answer], base_url: str) -> list[str]:
    """The true labels of the classifier's answers sent back as feedback, then a batch of the
    same digits with one pixel 3 standard deviations brighter; every endpoint's monitor report."""
    import numpy as np

    from raymaas.monitoring.report import fetch_report, format_report
    from raymaas.supervised.data import load_builtin

    lines = []
    key = _auth_header().get("authorization", "").removeprefix("Bearer ") or None
    for t, answer in zip(trained, answers, strict=True):
        if not answer.labels:
            continue
        body, _ = post_json(f"{base_url}/models/{t.model_name}/feedback", {"labels": answer.labels})
        lines.append(f"{t.model_name}: true labels of {body['rows_scored']} answered rows sent to /feedback")
        split = load_builtin(t.spec.data, t.spec.train_loop_config.seed)
        shifted = np.asarray(split.x_val, dtype=np.float64).copy()
        column = int(np.argmax(split.x_val.std(axis=0)))
        shifted[:, column] += 3 * split.x_val[:, column].std()
        for start in range(0, len(shifted), 64):
            post_json(f"{base_url}/models/{t.model_name}/invocations", {"inputs": shifted[start : start + 64].tolist()})
        lines.append(f"{t.model_name}: {len(shifted)} more digits with pixel {column} 3 std brighter (drift)")
    time.sleep(1.5)  # a push interval: every replica's window reaches the monitor
    for t in trained:
        lines.extend(format_report(fetch_report(base_url, t.model_name, key), top=3).splitlines())
    return lines


CARTPOLE_FEATURES = ("cart position", "cart velocity", "pole angle", "pole angular velocity")


def explain_answers(served: list[Trained], base_url: str) -> list[str]:
    """POST /explain of one held-out digit (the pixels that pushed its prediction most, and a
    map of the 8x8 image: # pushed for it, - against) and of one CartPole decision."""
    import gymnasium as gym
    import numpy as np

    from raymaas.supervised.data import load_builtin

    lines, policy_explained = [], False
    for t in served:
        if t.stage.kind == "supervised":
            split = load_builtin(t.spec.data, t.spec.train_loop_config.seed)
            body, _ = post_json(f"{base_url}/models/{t.model_name}/explain", {"inputs": split.x_val[:1].tolist()}, 120)
            row = body["explanations"][0]
            attr = np.asarray(row["attributions"], dtype=np.float64)
            top = np.argsort(-attr)[:5]
            pixels = ", ".join(f"({i // 8},{i % 8}) {attr[i]:+.2f}" for i in top)
            lines.append(
                f"{t.model_name}: a held-out {int(split.y_val[0])} predicted {row['prediction']} "
                f"({body['method'].replace('_', ' ')} against {body['baseline']}); "
                f"pixels (row,col) pushing most: {pixels}"
            )
            scale = np.abs(attr).max() or 1.0
            marks = np.where(attr > 0.25 * scale, "#", np.where(attr < -0.25 * scale, "-", "."))
            lines.extend("  " + " ".join(marks[r * 8 : r * 8 + 8]) for r in range(8))
        elif not policy_explained:  # one policy's decision is enough
            policy_explained = True
            env = gym.make(t.spec.env)
            obs, _ = env.reset(seed=7)
            env.close()
            body, _ = post_json(f"{base_url}/models/{t.model_name}/explain", {"inputs": [obs.tolist()]}, 120)
            row = body["explanations"][0]
            names = CARTPOLE_FEATURES if len(row["attributions"]) == 4 else range(len(row["attributions"]))
            parts = ", ".join(
                f"{n} {o:+.3f} -> {a:+.3f}"
                for n, o, a in sorted(zip(names, obs, row["attributions"]), key=lambda p: -abs(p[2]))
            )
            move = {0: "push left", 1: "push right"}.get(row["prediction"], row["prediction"])
            lines.append(
                f"{t.model_name}: action {row['prediction']} ({move}) because of (observation -> attribution) {parts}"
            )
    return lines


def play_cartpole(trained: Trained, base_url: str, seed: int = 2026) -> Answer:
    """One CartPole episode whose every action comes from the policy's endpoint."""
    import gymnasium as gym
    import numpy as np

    url = f"{base_url}/models/{trained.model_name}/invocations"
    env = gym.make(trained.spec.env)
    obs, _ = env.reset(seed=seed)
    total, steps, latencies, version = 0.0, 0, [], None
    done = False
    while not done:
        sent = time.perf_counter()
        body, headers = post_json(url, {"inputs": [np.asarray(obs, dtype=np.float32).tolist()]})
        latencies.append(time.perf_counter() - sent)
        version = headers.get("x-model-version")
        obs, reward, terminated, truncated, _ = env.step(int(body["predictions"][0]))
        total += float(reward)
        steps += 1
        done = terminated or truncated
    env.close()
    p50 = sorted(latencies)[len(latencies) // 2] * 1000
    return Answer(
        trained.model_name,
        url,
        version or "?",
        f"episode return {total:.0f} over {steps} steps ({steps} requests, p50 {p50:.1f} ms)",
    )


# --------------------------------------------------------------------------- a progressive rollout


@dataclass
class RolledOut:
    """What the rollout stage left in the registry."""

    model_name: str
    version: str  # the candidate: a new version of model_name
    source: str  # the registered model version it was made from
    status: str  # promoted | rejected (the hub's), aborted (by hand, meanwhile)
    reason: str
    run_id: str  # the rollout's MLflow run
    score_name: str
    score: float


class _NotYet(Exception):
    """What the rollout stage waited for did not come before its deadline."""


def register_sweep_best(classifier: Trained, sweep: Trained, client) -> str:
    """The sweep's best model registered as a new version of the served classifier: alias
    `candidate`, no gate (the rollout is the gate); DemoError where it cannot stand in for it."""
    import mlflow

    def split_of(spec) -> tuple:
        return spec.data.model_dump(), spec.train_loop_config.seed

    if split_of(classifier.spec) != split_of(sweep.spec):
        raise DemoError(
            f"{sweep.model_name} and {classifier.model_name} were trained on different splits (data or seed): "
            f"the held-out digits would not be held out for both"
        )
    mv = client.get_model_version(sweep.model_name, sweep.version)
    source = f"models:/{mv.model_id}" if getattr(mv, "model_id", None) else mv.source  # the logged model
    mlflow.set_tracking_uri(client.tracking_uri)
    with redirect_stderr(StringIO()):  # MLflow's download bars and "Created version" notes
        ours = mlflow.models.get_model_info(f"models:/{classifier.model_name}/{classifier.version}").signature
        theirs = mlflow.models.get_model_info(source).signature
        if ours is None or theirs is None or ours.to_dict() != theirs.to_dict():
            raise DemoError(
                f"{sweep.model_name} version {sweep.version} does not answer with {classifier.model_name}'s "
                f"signature: it cannot be a version of it"
            )
        return str(register_model(client, source, classifier.model_name, sweep.score_name, sweep.score))


def roll_out(
    classifier: Trained, sweep: Trained, base_url: str, client, progress: StageLog, wait_s: float
) -> RolledOut:
    """The sweep's best registered as the classifier's candidate and rolled out on its endpoint
    (ROLLOUT_POLICY): the held-out digits sent through it a pass at a time, their labels to
    /feedback, until the endpoint's monitor hub promotes the candidate or rolls it back."""
    from raymaas.supervised.data import load_builtin

    started = time.monotonic()
    deadline = started + wait_s
    name = classifier.model_name
    version = register_sweep_best(classifier, sweep, client)
    progress.line(
        f"{sweep.model_name} version {sweep.version} (the sweep's best, {sweep.score_name} {sweep.score:.3f}) "
        f"registered as {name} version {version}: candidate"
    )
    left = read_rollout(client, name)
    if left is not None:  # an earlier demo stopped in the middle of its rollout
        end_rollout(client, name, "abort", "left active by an earlier demo")
        progress.line(f"aborted the rollout of {name} version {left.version} that an earlier demo left active")
    state = start_rollout(client, name, ROLLOUT_POLICY, version=version)
    champion, steps, policy = state.champion, state.policy.steps, state.policy
    progress.line(
        f"rollout of {name} version {version} against champion version {champion} started in the registry: "
        f"{' then '.join(f'{s}%' for s in steps)} of requests; the endpoint's monitor hub judges every "
        f"{ROLLOUT_INTERVAL_S:g} s (run {state.run_id})"
    )
    progress.line(
        f"by hand: raymaas rollout {name} --version {version} --canary {steps[0]} --steps {','.join(map(str, steps))} "
        f"--min-labels {policy.min_labels} --max-regression {policy.max_regression:g} "
        f"--confidence {policy.confidence:g} --max-latency-ratio {policy.max_latency_ratio:g} "
        f"--min-requests {policy.min_requests}"
    )
    split = load_builtin(classifier.spec.data, classifier.spec.train_loop_config.seed)
    url = f"{base_url}/models/{name}"
    labelled: Counter = Counter()  # rows the hub matched to labels since the rollout began, by version
    this_step: Counter = Counter()  # the same since the current step began
    step_index, share, passes, announced = 0, steps[0], 0, -1
    try:
        while True:
            _wait_for(f"the endpoint to route {share}% to version {version}", deadline, _routes, url, version, share)
            if announced != step_index:
                announced = step_index
                progress.line(
                    f"step {step_index + 1} of {len(steps)}: the endpoint sends {share}% of requests to version "
                    f"{version}, each by its x-raymaas-key   [{_duration(time.monotonic() - started)}]"
                )
            passes += 1
            answered, matched = _send_digits(url, split, f"demo-pass{passes}")
            labelled.update(matched)
            this_step.update(matched)
            digits = f"{sum(answered.values())} held-out digits" if passes == 1 else "the same digits, new keys"
            progress.line(
                f"pass {passes}: {digits}, a request each: version {champion} answered {answered[champion]}, "
                f"version {version} {answered[version]}; labels of {sum(matched.values())} sent to /feedback"
            )
            wanted = {"champion_labels": labelled[champion], "candidate_labels": this_step[version]}
            report = _wait_for("the hub to judge the labels sent", deadline, _looked, url, version, step_index, wanted)
            rollout, decision = report["rollout"], report.get("last_decision") or {}
            for line in _decision_lines(decision, rollout, step_index, champion, version):
                progress.line(line)
            if rollout["status"] != "active":
                break
            if rollout["step_index"] != step_index:
                step_index, share = rollout["step_index"], rollout["share"]
                this_step.clear()
    except _NotYet as err:
        now = read_rollout(client, name)
        if now is not None:  # the registry is left without an active rollout, the champion serving
            end_rollout(client, name, "abort", f"the demo's {wait_s:.0f} s wait ended")
        where = (
            f"still active at {now.share}% (step {now.step_index + 1} of {len(now.policy.steps)}), "
            f"last reason: {now.reason}; aborted"
            if now is not None
            else "no longer active"
        )
        raise DemoError(
            f"no decision on the rollout of {name} version {version} within {wait_s:.0f} s (waiting for {err}): {where}"
        ) from None

    status = rollout["status"]
    if status == "promoted":
        try:  # the endpoint swaps at its next registry poll
            _wait_for("the swap", time.monotonic() + 15, _serves, url, version)
            serving = f"the endpoint answers with version {version}"
        except _NotYet:
            serving = "the endpoint swaps at its next registry poll"
        outcome = f"promoted by the hub: {name}@{CHAMPION} is version {version} now (was {champion}); {serving}"
    elif status == "rejected":
        outcome = (
            f"rolled back by the hub: {name}@{CHAMPION} stays version {champion}, version {version} is "
            f"tagged raymaas.rollout=rejected with the reason"
        )
    else:
        outcome = f"{status}: {rollout['reason']}"
    progress.line(f"{name} version {version} {outcome}   [{_duration(time.monotonic() - started)}]")
    return RolledOut(
        name,
        version,
        f"{sweep.model_name} version {sweep.version}",
        status,
        rollout["reason"],
        state.run_id,
        sweep.score_name,
        sweep.score,
    )


def _wait_for(what: str, deadline: float, look, *args):
    """look(*args)'s first truthy answer, asked every half second; _NotYet after the deadline.
    A refused or failed request is asked again (a replica busy on 2 cores)."""
    error = None
    while True:
        try:
            got = look(*args)
            if got:
                return got
        except (OSError, ValueError, KeyError) as err:  # urllib's errors are OSErrors
            error = err
        if time.monotonic() > deadline:
            raise _NotYet(what + (f"; last error: {error}" if error else ""))
        time.sleep(0.5)


def _routes(url: str, version: str, share: int) -> bool:
    """Whether the endpoint (GET /models/NAME) routes share percent of requests to version."""
    rollout = get_json(url).get("rollout") or {}
    return rollout.get("version") == version and rollout.get("share") == share


def _serves(url: str, version: str) -> bool:
    """Whether the endpoint (GET /models/NAME) follows version now."""
    return get_json(url).get("version") == version


def _send_digits(url: str, split, prefix: str) -> tuple[Counter, Counter]:
    """The held-out digits, a request each with a key of its own (a key's version follows from
    its hash), then their labels to /feedback: the requests and the labelled rows the hub
    matched, each by the version that answered."""
    versions, labels = {}, {}
    for i, (row, label) in enumerate(zip(split.x_val.tolist(), split.y_val.tolist(), strict=True)):
        _, headers = post_json(f"{url}/invocations", {"inputs": [row]}, headers={STICKY_HEADER: f"{prefix}-{i}"})
        rid = headers["x-request-id"]
        versions[rid] = headers.get("x-model-version")
        labels[rid] = int(label)
    body, _ = post_json(f"{url}/feedback", {"labels": labels}, timeout=60)
    return Counter(versions.values()), Counter(versions[rid] for rid in body["matched"])


def _looked(url: str, version: str, step_index: int, wanted: dict) -> dict | None:
    """GET /models/NAME/rollout once the hub has judged the labels sent: the rollout ended or
    moved a step, or its last decision counted at least `wanted` labels of each version."""
    report = get_json(f"{url}/rollout")
    rollout = report.get("rollout") or {}
    decision = report.get("last_decision") or {}
    if rollout.get("version") != version:
        return None
    # The hub records its decision after the registry holds it: until then, the one before.
    if rollout["status"] != "active":
        return report if rollout["status"] == "aborted" or decision.get("action") in ("promote", "rollback") else None
    if rollout["step_index"] != step_index:
        return (
            report if decision.get("action") == "advance" or decision.get("share_before") == rollout["share"] else None
        )
    figures = decision.get("figures") or {}
    counted = decision.get("version") == version and all(figures.get(k, -1) >= n for k, n in wanted.items())
    return report if counted else None


def _decision_lines(decision: dict, rollout: dict, step_index: int, champion: str, version: str) -> list[str]:
    """The hub's decision on the step just judged: both versions' live figures, then what it did and why."""
    action = decision.get("action")
    moved = rollout["status"] != "active" or rollout["step_index"] != step_index
    if moved and action == "hold":  # the hub has looked again since, at the next step
        return [f"hub: advance to {rollout['share']}% of requests"]
    figures = decision.get("figures") or {}
    lines = []
    if "candidate_accuracy" in figures:
        lines.append(
            f"live accuracy: version {champion} (champion) {figures['champion_accuracy']:.3f} over "
            f"{int(figures['champion_labels'])} labels since the rollout began, version {version} (candidate) "
            f"{figures['candidate_accuracy']:.3f} over {int(figures['candidate_labels'])} this step"
        )
    elif figures:
        lines.append(
            f"labelled answers: version {champion} (champion) {int(figures['champion_labels'])}, "
            f"version {version} (candidate) {int(figures['candidate_labels'])}"
        )
    said = {
        "advance": f"advance from {decision.get('share_before')}% to {decision.get('share_after')}% of requests",
        "promote": f"promote version {version} to {CHAMPION}",
        "rollback": f"roll back: every request to version {champion} again",
        "hold": f"hold at {rollout['share']}%",
    }.get(action, str(action))
    lines.append(f"hub: {said}: {decision.get('reason', rollout['reason'])}")
    return lines


# --------------------------------------------------------------------------- the demo


def run_demo(mode: str = "full", keep_serving: bool = False, host: str = "127.0.0.1", port: int = 8000) -> int:
    # Ctrl-C stops the demo even where it was started in the background by a shell without
    # job control, which starts it with SIGINT ignored (Python then keeps it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stages = STAGES[mode]
    tracking_uri = paths.tracking_uri()
    client = tracking.get_client(tracking_uri)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = paths.log_dir() / f"demo-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    progress = StageLog(len(stages) + 6)
    print(f"raymaas demo ({mode}): MLflow store {tracking_uri}", flush=True)

    trained: list[Trained] = []
    for number, stage in enumerate(stages, 1):
        progress.stage(number, stage.title)
        trained.append(train(stage, progress, log_dir, tracking_uri))
        progress.line(describe(trained[-1], client))

    classifier = next(t for t in trained if t.stage.kind == "supervised")
    progress.stage(len(stages) + 1, f"scoring the held-out digits in batch with {classifier.model_name} (Ray Data)")
    progress.line(score_holdout(classifier, progress, log_dir, tracking_uri))

    served = [t for t in trained if not t.stage.sweep]  # the sweep's best is registered, not served here
    names = [t.model_name for t in served]
    progress.stage(len(stages) + 2, f"publishing the champions of {', '.join(names)} with Ray Serve")
    started = time.monotonic()
    cleanup = prepare_local_ingress("haproxy")  # the platform's default ingress, as `raymaas serve`
    try:
        base_url = publish(names, host, port, tracking_uri)
        wait_until_serving(base_url, names)
        progress.line(f"{len(names)} applications running at {base_url}   [{_duration(time.monotonic() - started)}]")

        progress.stage(len(stages) + 3, "querying the endpoints over HTTP")
        answers = []
        for t in served:
            answer = query_classifier(t, base_url) if t.stage.kind == "supervised" else play_cartpole(t, base_url)
            answers.append(answer)
            progress.line(f"{answer.model_name} (version {answer.version}): {answer.summary}")
            for detail in answer.details:
                progress.line(f"  {detail}")

        progress.stage(len(stages) + 4, "watching the endpoints: feedback, a drifted batch, the monitor reports")
        for line in watch_endpoints(served, answers, base_url):
            progress.line(line)

        progress.stage(
            len(stages) + 5, "explaining answers: the pixels behind a digit, the state behind a CartPole move"
        )
        for line in explain_answers(served, base_url):
            progress.line(line)

        sweep = next(t for t in trained if t.stage.sweep)
        progress.stage(
            len(stages) + 6,
            f"a progressive rollout on {classifier.model_name}'s endpoint: the sweep's best against its champion, "
            f"on live traffic",
        )
        rolled = roll_out(classifier, sweep, base_url, client, progress, ROLLOUT_WAIT_S[mode])

        _summary(trained, rolled, answers, base_url, tracking_uri, client, progress)
        if keep_serving:
            print("\nraymaas demo: serving until Ctrl-C", flush=True)
            _wait_for_interrupt()
    finally:
        import ray

        if keep_serving:
            print("raymaas demo: stopping the endpoints and Ray", flush=True)
        ray.shutdown()  # Serve, its replicas and the local Ray, all started by this process
        cleanup()
    if keep_serving:
        print("raymaas demo: endpoints stopped", flush=True)
    return 0


def _summary(
    trained: list[Trained],
    rolled: RolledOut,
    answers: list[Answer],
    base_url: str,
    tracking_uri: str,
    client,
    progress: StageLog,
) -> None:
    mlflow = Path(sys.executable).with_name("mlflow")
    mlflow_cmd = str(mlflow) if mlflow.exists() else "mlflow"
    try:
        mlflow_cmd = os.path.relpath(mlflow_cmd)
    except ValueError:
        pass
    print(f"\nraymaas demo: done in {progress.clock()}", flush=True)
    print("\n  trained, tracked, registered (aliases as the registry holds them now):")
    for t in trained:
        print(
            f"    {t.model_name:<22} version {t.version:<4} {_aliases(client, t.model_name, t.version):<20} "
            f"{t.score_name} {t.score:.3f}   run {t.run_name}"
        )
    r = rolled
    print(
        f"    {r.model_name:<22} version {r.version:<4} {_aliases(client, r.model_name, r.version):<20} "
        f"{r.score_name} {r.score:.3f}   {r.source}, rolled out"
    )
    champion = client.get_model_version_by_alias(r.model_name, CHAMPION).version
    verdict = {"promoted": "promoted", "rejected": "rolled back"}.get(r.status, r.status)
    print(f"\n  rollout: {r.model_name} version {r.version} {verdict} by the endpoint's monitor hub ({r.reason})")
    print(f"    {r.model_name}@{CHAMPION} is version {champion}; its decisions are in MLflow run {r.run_id}")
    print(f"    raymaas rollout status {r.model_name} --url {base_url}")
    print("\n  MLflow UI (runs, metrics, plots, models):")
    print(f"    {mlflow_cmd} ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")
    print("    then open http://127.0.0.1:5000")
    print('\n  endpoints (MLflow scoring format: POST {"inputs": [[...], ...]}):')
    for a in answers:
        print(f"    {a.url}")
    print(f"    {base_url}/models (published models), {base_url}/docs (OpenAPI)")
    example = answers[-1].url
    print("\n  try:")
    print(f"    curl -s {example} -H 'content-type: application/json' -d '{{\"inputs\": [[0.0, 0.1, 0.02, -0.1]]}}'")
    print("  `raymaas serve` publishes the champions again later; `raymaas models` lists the versions.", flush=True)


def _aliases(client, name: str, version: str) -> str:
    return "/".join(sorted(client.get_model_version(name, version).aliases)) or "-"


def _wait_for_interrupt() -> None:
    """Until Ctrl-C (SIGINT) or SIGTERM."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
