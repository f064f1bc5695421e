"""Reinforcement learning on RLlib (new API stack): the spec, the training loop, and the driver.

One job is one MLflow run (raymaas.runtime.driver): the loop calls `algo.train()` until a
stop condition, logs each iteration, evaluates the greedy policy on seeded gymnasium
episodes and checkpoints with `algo.save_to_path` under the job's checkpoint storage
(RAYMAAS_STORAGE_PATH, as for supervised jobs), so a resubmission on any node continues.
The registered model is Ray-free (raymaas.rl.export): float32 observations in, int64
actions out, checked against the RLlib module's greedy actions before it is registered.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache, partial
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from raymaas.modelcode.policy import Evaluation
from raymaas.rl.export import (
    PARITY_OBSERVATIONS,
    action_scores_network,
    check_parity,
    greedy_actions,
    not_exportable,
    scored_greedy,
)
from raymaas.specs import SpecError, SpecModel, TrainingJobSpec
from raymaas.sweep.job import Trials

# The RLlib config class of each algorithm, imported only when a spec is validated.
ALGO_CONFIGS = {"ppo": "ray.rllib.algorithms.ppo:PPOConfig", "dqn": "ray.rllib.algorithms.dqn:DQNConfig"}
# The Algorithm class a config builds where it is not RLlib's own (raymaas.rl.dqn: RLlib's DQN
# with its updates on ready batches where the replay buffer builds them).
ALGO_CLASSES = {"dqn": "raymaas.rl.dqn:DQN"}


class EnvRunnersSpec(SpecModel):
    num_env_runners: int = Field(
        0, ge=0, description="remote EnvRunner actors (0: sample in the driver, fastest for cheap envs)"
    )
    num_envs_per_env_runner: int = Field(8, ge=1, description="vectorized envs in each EnvRunner")
    rollout_fragment_length: int | Literal["auto"] = Field(
        "auto", description="env steps per env and sample() call ('auto': RLlib derives it from the train batch)"
    )


class StopSpec(SpecModel):
    target_return: float | None = Field(
        475.0, description="stop once the greedy evaluation's mean return reaches this (null: never)"
    )
    max_env_steps: int = Field(
        500_000, ge=1, description="stop after this many env steps sampled (over all submissions of the job)"
    )
    max_seconds: float = Field(900.0, gt=0, description="stop after this many seconds of training in one submission")


class EvaluationSpec(SpecModel):
    episodes: int = Field(
        20, ge=1, description="greedy episodes per evaluation; episode i starts from env.reset(seed=seed + i)"
    )
    seed: int = Field(1_000_000, ge=0, description="seed of the first evaluation episode")
    interval: int = Field(1, ge=1, description="evaluate every this many iterations")
    min_episode_return: float = Field(
        0.0, description="skip evaluations while the training episodes' mean return is below this"
    )


class RLCheckpointSpec(SpecModel):
    checkpoint_frequency: int = Field(
        10, ge=1, description="save an RLlib checkpoint every this many iterations (and at the end)"
    )


class RLSpec(TrainingJobSpec):
    kind: Literal["rl"] = Field("rl", description="job kind: picks the entrypoint `raymaas train` runs")
    algo: Literal["ppo", "dqn"] = Field(..., description="RLlib algorithm: ppo (PPOConfig) or dqn (DQNConfig)")
    env: str = Field("CartPole-v1", description="gymnasium env id: a flat Box observation and a Discrete action space")
    seed: int = Field(0, description="config.debugging(seed=...): seeds the envs and the network")
    env_runners: EnvRunnersSpec = Field(default_factory=EnvRunnersSpec, description="config.env_runners(...)")
    training: dict[str, Any] = Field(
        default_factory=dict, description="config.training(...): RLlib's training fields by their RLlib names"
    )
    model: dict[str, Any] = Field(
        default_factory=dict,
        description="config.rl_module(model_config=...): DefaultModelConfig fields, e.g. fcnet_hiddens",
    )
    stop: StopSpec = Field(default_factory=StopSpec, description="when training ends (whichever comes first)")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="the greedy evaluation that decides target_return and the gate"
    )
    checkpoint_config: RLCheckpointSpec = Field(
        default_factory=RLCheckpointSpec, description="RLlib checkpoints a resubmission continues from"
    )

    @field_validator("env")
    @classmethod
    def _known_env(cls, env_id: str, info) -> str:
        check_env(env_id, info.data.get("algo"))
        return env_id

    @field_validator("training")
    @classmethod
    def _training_fields(cls, training: dict, info) -> dict:
        algo = info.data.get("algo")
        if algo is not None:
            _check_keys(training, training_fields(algo), f"{algo_config_class(algo).__name__}.training()")
        buffers = training.get("replay_buffer_config") or {}
        buffer = buffers.get("type")
        if isinstance(buffer, str) and ("." in buffer or ":" in buffer):
            _resolve(buffer, "training.replay_buffer_config.type")
            # RLlib imports the class it names as package.module.Name only
            training = {**training, "replay_buffer_config": {**buffers, "type": buffer.replace(":", ".")}}
        return training

    @field_validator("model")
    @classmethod
    def _model_fields(cls, model: dict, info) -> dict:
        _check_keys(model, model_config_fields(), "RLlib's DefaultModelConfig")
        # The module's model_config holds DQN's training fields too (num_atoms)
        unsupported = not_exportable({**(info.data.get("training") or {}), **model})
        if unsupported is not None:
            raise ValueError(
                f"{unsupported}: raymaas registers a policy as its action-score network, "
                "which it cannot export for such a module"
            )
        return model

    @field_validator("mlflow")
    @classmethod
    def _gate_metric(cls, mlflow):
        if mlflow.gate_metric not in (None, "eval_return_mean"):
            raise ValueError(
                f"gate_metric {mlflow.gate_metric!r}: an RL job's gate compares eval_return_mean "
                "(the greedy evaluation's mean return)"
            )
        return mlflow


_LATEST_FILE = "latest.json"
# Training fields RLlib tells apart by `isinstance(x, tuple)`; YAML only has lists.
_TUPLE_FIELDS = {"n_step"}


# --------------------------------------------------------------------------- validation


def algo_config_class(algo: str):
    return _resolve(ALGO_CONFIGS[algo], f"the {algo} config class")


def algo_class(algo: str):
    """The Algorithm class a spec's config builds (None: the config's own)."""
    return _resolve(ALGO_CLASSES[algo], f"the {algo} algorithm class") if algo in ALGO_CLASSES else None


def _resolve(path: str, where: str):
    """What path names, "package.module:Name" or "package.module.Name" (as RLlib names a class
    in a config). ValueError, saying where path comes from, unless it imports: RLlib itself
    would only find out while building the algorithm, on Ray."""
    module_name, _, name = path.replace(":", ".").rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{where} {path!r}: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        own = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module_name
        ]
        close = difflib.get_close_matches(name, own, n=1, cutoff=0.5)
        hint = f" (did you mean {module_name}.{close[0]}?)" if close else ""
        raise ValueError(f"{where} {path!r}: {module_name} has no {name!r}{hint}") from None


@cache
def training_fields(algo: str) -> frozenset[str]:
    """The keyword arguments config.training() takes for algo (its own and AlgorithmConfig's)."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    names = set()
    for method in (algo_config_class(algo).training, AlgorithmConfig.training):
        names.update(
            p.name
            for p in inspect.signature(method).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
        )
    return frozenset(names)


@cache
def model_config_fields() -> frozenset[str]:
    import dataclasses

    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return frozenset(f.name for f in dataclasses.fields(DefaultModelConfig))


def _check_keys(given: dict, known: frozenset[str], where: str) -> None:
    unknown = [key for key in given if key not in known]
    if unknown:
        hints = [
            f"{key!r}"
            + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, known, n=1)) else "")
            for key in unknown
        ]
        raise ValueError(f"unknown RLlib field {', '.join(hints)}: {where} has no such field")


def check_env(env_id: str, algo: str | None = None) -> None:
    """Raise ValueError unless gymnasium knows env_id and it has a flat Box observation
    space and a Discrete action space (what the registered policy's signature promises)."""
    import gymnasium as gym

    # "package.module:Env-v0": your own env, registered with gymnasium when its module is
    # imported (gymnasium's own convention; the package travels with the job).
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(
                f"cannot import {module!r} for env {env_id!r} (is its folder on PYTHONPATH?): {exc}"
            ) from None
    try:
        gym.spec(name)
    except gym.error.Error as exc:
        raise ValueError(f"gymnasium does not know env {env_id!r}: {exc}") from None
    try:
        env = gym.make(env_id)
    except Exception as exc:  # missing extras (box2d, mujoco...) and the like
        raise ValueError(f"gymnasium cannot make env {env_id!r}: {type(exc).__name__}: {exc}") from None
    try:
        obs_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"env {env_id!r} has observation space {obs_space}; raymaas RL jobs need a flat Box")
    if not isinstance(action_space, gym.spaces.Discrete):
        kind = "a continuous" if isinstance(action_space, gym.spaces.Box) else "a non-discrete"
        who = "dqn" if algo == "dqn" else "a raymaas RL job (its registered policy returns int64 actions)"
        raise ValueError(f"env {env_id!r} has {kind} action space {action_space}; {who} needs a Discrete one")


def build_algo_config(spec: RLSpec):
    """The RLlib AlgorithmConfig of the spec, checked by RLlib itself (SpecError if it objects)."""
    training = {k: tuple(v) if k in _TUPLE_FIELDS and isinstance(v, list) else v for k, v in spec.training.items()}
    try:
        config = (
            algo_config_class(spec.algo)(algo_class=algo_class(spec.algo))
            .environment(spec.env)
            .env_runners(
                num_env_runners=spec.env_runners.num_env_runners,
                num_envs_per_env_runner=spec.env_runners.num_envs_per_env_runner,
                rollout_fragment_length=spec.env_runners.rollout_fragment_length,
            )
            .training(**training)
            .rl_module(model_config=dict(spec.model))
            .debugging(seed=spec.seed)
        )
        config.validate()
    except (ValueError, TypeError, KeyError) as exc:
        raise SpecError(f"RLlib rejects the {spec.algo} config of {spec.name}: {exc}") from None
    return config


# --------------------------------------------------------------------------- driver side


@dataclass
class Progress:
    """What a resubmission needs besides the RLlib checkpoint."""

    iteration: int = 0
    env_steps: int = 0


@dataclass
class _Loop:
    """State of one submission's training loop."""

    progress: Progress
    started: float = field(default_factory=time.monotonic)
    last_evaluation: Evaluation | None = None
    evaluated_at: int = -1
    stopped_by: str = ""


def run_rl(spec: RLSpec, address: str | None = None):
    """Train spec.algo on RLlib, track it as one MLflow run, register and gate the policy;
    a raymaas.runtime.driver.JobOutcome."""
    import os

    from raymaas.kinds import get_kind
    from raymaas.runtime import cluster
    from raymaas.runtime.driver import run_job

    config = build_algo_config(spec)
    runners = spec.env_runners.num_env_runners
    env_module = spec.env.rpartition(":")[0]
    user_code = [d for d in [cluster.package_dir_of(env_module) if env_module else None] if d]

    def prepare(storage_path: str):
        if runners:
            cluster.wait_for_resources({"CPU": runners * config.num_cpus_per_env_runner}, timeout_s=30)
        return config, {"algo": spec.algo, "env": spec.env}

    return run_job(
        spec,
        get_kind("rl"),
        address,
        prepare=prepare,
        train=_train_and_export,
        # Logical CPUs for a local Ray: one per EnvRunner actor; the learner runs in the driver,
        # and with no EnvRunner actors the job needs no worker processes at all.
        num_cpus=max(os.cpu_count() or 1, runners + 1),
        py_modules=user_code,
        prestart_workers=runners > 0,
        # RLlib's seeding switches torch to deterministic algorithms, which imports torch's
        # compiler stack (~1 s here): imported while Ray starts.
        warm_imports=("torch._dynamo",),
    )


def _train_and_export(job, config):
    algo, checkpoints, progress = _start(job, config)
    job.after_publish(algo.stop)
    loop = _train(algo, job.spec, job.client, job.run_id, checkpoints, progress)
    return _trained_model(job.spec, algo, job, checkpoints, loop)


def _start(job, config):
    """The algorithm, its checkpoint store, and where it stands: restored from the newest
    checkpoint when the job's run is a continued one."""
    from raymaas.runtime.lifecycle import call_interruptibly

    algo = call_interruptibly(config.build_algo)
    checkpoints = CheckpointStore(job.storage_path, job.run.run_name)
    progress = Progress()
    if job.run.resumed and checkpoints.latest() is not None:
        progress = checkpoints.restore(algo)
        job.client.set_tag(job.run_id, "raymaas.resumed_from_iteration", str(progress.iteration))
        print(f"raymaas: continuing from iteration {progress.iteration} ({progress.env_steps} env steps)", flush=True)
    return algo, checkpoints, progress


def _train(
    algo,
    spec: RLSpec,
    client,
    run_id: str,
    checkpoints: CheckpointStore,
    progress: Progress,
    report: Callable[[dict], None] | None = None,
) -> _Loop:
    """algo.train() until a stop condition; metrics each iteration, checkpoints every few.
    report (a sweep's trial: ray.tune.report) gets each iteration's metrics too, the last
    greedy evaluation's carried between evaluations (Tune's schedulers need the metric in
    every result)."""
    from raymaas.modelcode.policy import evaluate_greedy
    from raymaas.runtime.lifecycle import call_interruptibly
    from raymaas.tracking.runs import log_metrics

    loop = _Loop(progress)
    stop, ev = spec.stop, spec.evaluation
    while True:
        result = call_interruptibly(algo.train)
        progress.iteration += 1
        # Counted here and kept beside the checkpoint, so a resumed job's steps carry on.
        progress.env_steps += int(result["env_runners"].get("num_env_steps_sampled", 0))
        step = progress.env_steps
        metrics = {**iteration_metrics(result), "training_iteration": progress.iteration, "env_steps_sampled": step}

        train_return = metrics.get("episode_return_mean", float("-inf"))
        if progress.iteration % ev.interval == 0 and train_return >= ev.min_episode_return:
            # In a thread of its own, as algo.train: torch work on the main thread gives it a
            # second OpenMP team whose threads then took the CPU from every later iteration's
            # (measured: DQN iterations 1.15 s before the first evaluation, 2.1 s after).
            loop.last_evaluation = call_interruptibly(
                lambda: evaluate_greedy(
                    scored_greedy(action_scores_network(algo.get_module())), spec.env, ev.episodes, ev.seed
                )
            )
            loop.evaluated_at = step
            metrics.update(loop.last_evaluation.metrics())

        elapsed = time.monotonic() - loop.started
        if (
            stop.target_return is not None
            and loop.evaluated_at == step
            and loop.last_evaluation.mean >= stop.target_return
        ):
            loop.stopped_by = "target_return"
        elif step >= stop.max_env_steps:
            loop.stopped_by = "max_env_steps"
        elif elapsed >= stop.max_seconds:
            loop.stopped_by = "max_seconds"
        # Checkpoint before logging: an iteration that a kill cuts short is never logged twice.
        if loop.stopped_by or progress.iteration % spec.checkpoint_config.checkpoint_frequency == 0:
            checkpoints.save(algo, progress)
        log_metrics(client, run_id, metrics, step=step)
        if report is not None:
            carried = loop.last_evaluation.metrics() if loop.last_evaluation is not None else {}
            reported = {**carried, **metrics, "env_steps_sampled": step}
            reported.pop("training_iteration")  # Tune counts its own
            report(reported)
        print(
            f"raymaas: iteration {progress.iteration}: {step} env steps, return {train_return:.1f}"
            + (f", greedy {loop.last_evaluation.mean:.1f}" if loop.evaluated_at == step else "")
            + f" ({elapsed:.1f}s)",
            flush=True,
        )
        if loop.stopped_by:
            client.set_tag(run_id, "raymaas.stopped_by", loop.stopped_by)
            return loop


def iteration_metrics(result: dict) -> dict[str, float]:
    """The per-iteration metrics of an RLlib result: episode return, throughput, losses."""
    runners = result.get("env_runners", {})
    metrics: dict[str, float] = {}
    if "episode_return_mean" in runners:
        metrics["episode_return_mean"] = float(runners["episode_return_mean"])
    seconds = float(result.get("time_this_iter_s") or 0)
    sampled = float(runners.get("num_env_steps_sampled", 0))
    if seconds > 0:
        metrics["env_steps_per_second"] = sampled / seconds
    for module_id, values in (result.get("learners") or {}).items():
        if module_id.startswith("__") or not isinstance(values, dict):
            continue
        for key, value in values.items():
            if (key.endswith("_loss") or key in ("entropy", "td_error_mean")) and np.isscalar(value):
                metrics[key] = float(value)
    return metrics


def _trained_model(spec: RLSpec, algo, job, checkpoints: CheckpointStore, loop: _Loop):
    """The final evaluation, the return curves and the checkpoint; the exported policy with its
    parity check, for the publish tail."""
    import mlflow

    from raymaas.modelcode.policy import collect_observations, evaluate_greedy
    from raymaas.monitoring.profile import build_profile
    from raymaas.runtime.driver import TrainedModel
    from raymaas.runtime.lifecycle import call_interruptibly
    from raymaas.tracking import plots
    from raymaas.tracking.publish import log_as_classifier
    from raymaas.tracking.runs import log_metrics

    client, run_id, progress = job.client, job.run_id, loop.progress
    module = algo.get_module()

    def exported():
        """The policy to register, acting as the loop's evaluations do (the final one too when
        the last iteration had none), and the observations of its parity episodes."""
        network = action_scores_network(module)
        act = scored_greedy(network)
        settings, evaluation = spec.evaluation, loop.last_evaluation
        if evaluation is None or loop.evaluated_at != progress.env_steps:
            evaluation = evaluate_greedy(act, spec.env, settings.episodes, settings.seed)
        obs = collect_observations(act, spec.env, PARITY_OBSERVATIONS, seed=settings.seed + 500_000)
        return network, evaluation, obs, act(obs)

    # In the training thread, as the loop's torch work (see _train)
    network, evaluation, obs, actions = call_interruptibly(exported)
    if evaluation is not loop.last_evaluation:
        log_metrics(client, run_id, evaluation.metrics(), step=progress.env_steps)

    curves = {}
    for key, label in (("episode_return_mean", "training episodes"), ("eval_return_mean", "greedy evaluation")):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        if history:
            curves[label] = ([m.step for m in history], [m.value for m in history])
    figure = plots.curves_figure(curves, "env steps", "episode return", f"{spec.name}: {spec.algo} on {spec.env}")

    def check(model_uri: str) -> None:
        """The exported policy must act as the RLlib module does, or it is not registered."""
        try:
            call_interruptibly(
                lambda: check_parity(partial(greedy_actions, module), mlflow.pyfunc.load_model(model_uri).predict, obs)
            )
        finally:
            client.set_tag(run_id, "raymaas.parity_observations", str(len(obs)))

    with checkpoints.local_copy() as folder:
        client.log_artifacts(run_id, folder, "checkpoint")
    ev = evaluation
    # what the policy saw and did on the parity episodes: the served endpoint's reference
    profile = build_profile(
        obs, predictions=actions.tolist(), task="classification", classes=list(range(module.action_space.n))
    )
    return TrainedModel(
        module=network,
        example=obs,
        gate_value=ev.mean,
        summary=(
            f"greedy return {ev.mean:.1f} (std {ev.std:.1f}, min {ev.min:.0f}, {len(ev.returns)} episodes) "
            f"after {progress.env_steps} env steps, {progress.iteration} iterations, "
            f"{time.monotonic() - loop.started:.1f}s; stopped by {loop.stopped_by}"
        ),
        dicts={"evaluation.json": {**ev.to_dict(), "env_steps": progress.env_steps}},
        figures={"plots/return_curve.png": figure},
        check=check,
        # action ids; a policy's action scores are no logits to take probabilities of
        log_model=log_as_classifier(probabilities=False),
        profile=profile,
        baseline=obs.mean(axis=0),  # the mean observation of the parity episodes
        explain_rows=obs[:256],
        details={
            "evaluation": ev,
            "env_steps": progress.env_steps,
            "iterations": progress.iteration,
            "stopped_by": loop.stopped_by,
        },
    )


class CheckpointStore:
    """The RLlib checkpoints of one job: STORAGE/RUN_NAME/checkpoint_NNNNNN folders and a
    latest.json naming the newest whole one. The pointer is written after its checkpoint, so a
    kill mid-save leaves the one before in force. STORAGE is the job's checkpoint storage
    (raymaas.paths.checkpoint_storage: a folder, or a URI such as s3://BUCKET/PATH, read and
    written through pyarrow's filesystems, which RLlib's save_to_path takes too)."""

    def __init__(self, storage_path: str, run_name: str):
        import pyarrow.fs

        if "://" in storage_path:
            self.fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
        else:
            self.fs, root = pyarrow.fs.LocalFileSystem(), storage_path
        self.root = f"{root.rstrip('/')}/{run_name}"

    def latest(self) -> dict | None:
        import pyarrow.fs

        pointer = f"{self.root}/{_LATEST_FILE}"
        if self.fs.get_file_info(pointer).type == pyarrow.fs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(pointer) as f:
            return json.loads(f.read())

    def save(self, algo, progress: Progress) -> None:
        previous = self.latest()
        name = f"checkpoint_{progress.iteration:06d}"
        path = f"{self.root}/{name}"
        import pyarrow.fs

        if self.fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:  # left by a kill mid-save
            self.fs.delete_dir(path)
        algo.save_to_path(path, filesystem=self.fs)
        self._write_pointer({"checkpoint": name, "progress": asdict(progress)})
        if previous is not None and previous["checkpoint"] != name:
            self.fs.delete_dir(f"{self.root}/{previous['checkpoint']}")

    def restore(self, algo) -> Progress:
        latest = self.latest()
        algo.restore_from_path(f"{self.root}/{latest['checkpoint']}", filesystem=self.fs)
        return Progress(**latest["progress"])

    def _write_pointer(self, content: dict) -> None:
        import os

        import pyarrow.fs

        data = json.dumps(content).encode()
        target = f"{self.root}/{_LATEST_FILE}"
        if isinstance(self.fs, pyarrow.fs.LocalFileSystem):
            staged = f"{target}.{os.getpid()}"
            with open(staged, "wb") as f:
                f.write(data)
            os.replace(staged, target)  # whole or not at all
        else:  # an object store's PUT replaces the object whole
            with self.fs.open_output_stream(target) as f:
                f.write(data)

    def local_copy(self):
        """A context manager: a local folder holding the newest checkpoint."""
        import contextlib
        import tempfile

        import pyarrow.fs

        @contextlib.contextmanager
        def copy():
            path = f"{self.root}/{self.latest()['checkpoint']}"
            if isinstance(self.fs, pyarrow.fs.LocalFileSystem):
                yield path
                return
            with tempfile.TemporaryDirectory() as tmp:
                pyarrow.fs.copy_files(path, tmp, source_filesystem=self.fs)
                yield tmp

        return copy()


def _trial_connect_options(spec: RLSpec, concurrent: int = 1) -> dict:
    """cluster.connect's options for concurrent trials of spec at once: each trial's learner
    runs in its trial's own process, beside its EnvRunner actors."""
    import os

    from raymaas.runtime import cluster

    per_trial = 1 + spec.env_runners.num_env_runners
    env_module = spec.env.rpartition(":")[0]
    return {
        "num_cpus": max(os.cpu_count() or 1, concurrent * per_trial),
        "py_modules": [d for d in [cluster.package_dir_of(env_module) if env_module else None] if d],
        "warm_imports": ("torch._dynamo",),
    }


def _trial_actors(spec: RLSpec) -> dict[str, float]:
    """A trial's EnvRunner actors (its learner is the trial's own process: Trials.training)."""
    config = build_algo_config(spec)
    return {"CPU": spec.env_runners.num_env_runners * config.num_cpus_per_env_runner}


def _trial_prepare(spec: RLSpec, storage_path: str):
    return build_algo_config(spec), {"algo": spec.algo, "env": spec.env}


def _trial_fit(job, config) -> str:
    """A trial: RLlib until its stop condition, each iteration reported to Tune; the folder of
    its checkpoints."""
    from ray import tune

    algo, checkpoints, progress = _start(job, config)
    try:
        _train(algo, job.spec, job.client, job.run_id, checkpoints, progress, report=tune.report)
    finally:
        algo.stop()
    return checkpoints.root


def _trial_model(job, config, path: str):
    """The best trial's policy, from its last checkpoint, with the same checks as a job's."""
    from raymaas.runtime.lifecycle import call_interruptibly

    algo = call_interruptibly(config.build_algo)
    job.after_publish(algo.stop)
    checkpoints = CheckpointStore(job.storage_path, job.run.run_name)
    loop = _Loop(checkpoints.restore(algo))
    loop.stopped_by = job.client.get_run(job.run_id).data.tags.get("raymaas.stopped_by", "the sweep's scheduler")
    return _trained_model(job.spec, algo, job, checkpoints, loop)


# ASHA's max_t for RL trials, in iterations: a trial ends by its own stop conditions first.
_ITERATION_BUDGET = 100_000

# What a sweep of RL specs runs per trial (raymaas.sweep.job); named in raymaas.kinds.
TRIALS = Trials(
    connect_options=_trial_connect_options,
    training=lambda spec: {"CPU": 1},  # the learner, in the trial's own process (Trials.in_process)
    actors=_trial_actors,
    budget=lambda spec: _ITERATION_BUDGET,
    prepare=_trial_prepare,
    fit=_trial_fit,
    model_of=_trial_model,
)
