"""Reinforcement learning on RLlib (new API stack): the spec, the training loop, and the driver.

One job is one MLflow run: the driver creates (or, for the same run name, continues) it,
calls `algo.train()` until a stop condition, logs each iteration, evaluates the greedy
policy on seeded gymnasium episodes, checkpoints with `algo.save_to_path`, and at the end
registers the policy. The registered model is Ray-free: the RLlib module's forward pass up
to the action scores, exported with torch.export behind the same pyfunc as supervised models
(`raymaas.pyfunc`), float32 observations in, int64 actions out. A parity check against the
RLlib module's greedy actions guards the registration.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator

from raymaas.policy import Act, Evaluation, action_mismatches
from raymaas.specs import JobSpec, SpecError, SpecModel, flatten

# The RLlib config class of each algorithm, imported only when a spec is validated.
ALGO_CONFIGS = {"ppo": "ray.rllib.algorithms.ppo:PPOConfig", "dqn": "ray.rllib.algorithms.dqn:DQNConfig"}


class EnvRunnersSpec(SpecModel):
    num_env_runners: int = Field(0, ge=0, description="remote EnvRunner actors (0: sample in the driver, fastest for cheap envs)")
    num_envs_per_env_runner: int = Field(8, ge=1, description="vectorized envs in each EnvRunner")
    rollout_fragment_length: int | Literal["auto"] = Field("auto", description="env steps per env and sample() call ('auto': RLlib derives it from the train batch)")


class StopSpec(SpecModel):
    target_return: float | None = Field(475.0, description="stop once the greedy evaluation's mean return reaches this (null: never)")
    max_env_steps: int = Field(500_000, ge=1, description="stop after this many env steps sampled (over all submissions of the job)")
    max_seconds: float = Field(900.0, gt=0, description="stop after this many seconds of training in one submission")


class EvaluationSpec(SpecModel):
    episodes: int = Field(20, ge=1, description="greedy episodes per evaluation; episode i starts from env.reset(seed=seed + i)")
    seed: int = Field(1_000_000, ge=0, description="seed of the first evaluation episode")
    interval: int = Field(1, ge=1, description="evaluate every this many iterations")
    min_episode_return: float = Field(0.0, description="skip evaluations while the training episodes' mean return is below this")


class CheckpointSpec(SpecModel):
    checkpoint_frequency: int = Field(10, ge=1, description="save an RLlib checkpoint every this many iterations (and at the end)")


class RLSpec(JobSpec):
    kind: Literal["rl"] = Field("rl", description="job kind: picks the entrypoint `raymaas train` runs")
    algo: Literal["ppo", "dqn"] = Field(..., description="RLlib algorithm: ppo (PPOConfig) or dqn (DQNConfig)")
    env: str = Field("CartPole-v1", description="gymnasium env id: a flat Box observation and a Discrete action space")
    seed: int = Field(0, description="config.debugging(seed=...): seeds the envs and the network")
    env_runners: EnvRunnersSpec = Field(default_factory=EnvRunnersSpec, description="config.env_runners(...)")
    training: dict[str, Any] = Field(default_factory=dict, description="config.training(...): RLlib's training fields by their RLlib names")
    model: dict[str, Any] = Field(default_factory=dict, description="config.rl_module(model_config=...): DefaultModelConfig fields, e.g. fcnet_hiddens")
    stop: StopSpec = Field(default_factory=StopSpec, description="when training ends (whichever comes first)")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="the greedy evaluation that decides target_return and the gate")
    checkpoint_config: CheckpointSpec = Field(default_factory=CheckpointSpec, description="RLlib checkpoints a resubmission continues from")

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
        return training

    @field_validator("model")
    @classmethod
    def _model_fields(cls, model: dict) -> dict:
        _check_keys(model, model_config_fields(), "RLlib's DefaultModelConfig")
        return model


GATE_METRIC = "eval_return_mean"
PARITY_OBSERVATIONS = 2000
_PROGRESS_FILE = "raymaas_progress.json"
# Training fields RLlib tells apart by `isinstance(x, tuple)`; YAML only has lists.
_TUPLE_FIELDS = {"n_step"}


# --------------------------------------------------------------------------- validation


def algo_config_class(algo: str):
    import importlib

    module, _, name = ALGO_CONFIGS[algo].partition(":")
    return getattr(importlib.import_module(module), name)


@lru_cache(maxsize=None)
def training_fields(algo: str) -> frozenset[str]:
    """The keyword arguments config.training() takes for algo (its own and AlgorithmConfig's)."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    names = set()
    for method in (algo_config_class(algo).training, AlgorithmConfig.training):
        names.update(p.name for p in inspect.signature(method).parameters.values()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self")
    return frozenset(names)


@lru_cache(maxsize=None)
def model_config_fields() -> frozenset[str]:
    import dataclasses

    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return frozenset(f.name for f in dataclasses.fields(DefaultModelConfig))


def _check_keys(given: dict, known: frozenset[str], where: str) -> None:
    unknown = [key for key in given if key not in known]
    if unknown:
        hints = [f"{key!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, known, n=1)) else "")
                 for key in unknown]
        raise ValueError(f"unknown RLlib field {', '.join(hints)}: {where} has no such field")


def check_env(env_id: str, algo: str | None = None) -> None:
    """Raise ValueError unless gymnasium knows env_id and it has a flat Box observation
    space and a Discrete action space (what the registered policy's signature promises)."""
    import importlib

    import gymnasium as gym

    # "package.module:Env-v0": your own env, registered with gymnasium when its module is
    # imported (gymnasium's own convention; the package travels with the job).
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"cannot import {module!r} for env {env_id!r} (is its folder on PYTHONPATH?): {exc}") from None
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
            algo_config_class(spec.algo)()
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


# --------------------------------------------------------------------------- the RLlib module


def greedy_actions(module, obs: np.ndarray) -> np.ndarray:
    """The RLlib module's own greedy actions: forward_inference, then the deterministic choice."""
    import torch
    from ray.rllib.core.columns import Columns

    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)})
    if Columns.ACTIONS in out:  # DQN picks its greedy action itself
        return out[Columns.ACTIONS].cpu().numpy().astype(np.int64)
    return out[Columns.ACTION_DIST_INPUTS].argmax(-1).cpu().numpy().astype(np.int64)


def action_scores_network(module):
    """A torch module mapping observations to the scores whose argmax is the greedy action
    (PPO: action logits; DQN: Q-values), built from the RLlib module's own forward code, so
    torch.export traces exactly what RLlib computes into a program with no RLlib in it."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import QNetAPI

    class ActionScores(torch.nn.Module):
        def __init__(self, rl_module):
            super().__init__()
            self.rl_module = rl_module

        def forward(self, obs):
            batch = {Columns.OBS: obs}
            if isinstance(self.rl_module, QNetAPI):
                return self.rl_module.compute_q_values(batch)["qf_preds"]
            return self.rl_module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]

    if getattr(module, "num_atoms", 1) > 1 or module.model_config.get("use_lstm"):
        raise NotImplementedError("exporting distributional or recurrent policies is not supported")
    return ActionScores(module)


# --------------------------------------------------------------------------- driver side


@dataclass
class Progress:
    """What a resubmission needs besides the RLlib checkpoint."""

    iteration: int = 0
    env_steps: int = 0


@dataclass(frozen=True)
class RLOutcome:
    run_id: str
    run_name: str
    experiment_id: str
    tracking_uri: str
    model_name: str
    version: str
    evaluation: Evaluation
    env_steps: int
    iterations: int
    stopped_by: str
    promoted: bool
    promotion_reason: str
    training_seconds: float


@dataclass
class _Loop:
    """State of one submission's training loop."""

    progress: Progress
    started: float = field(default_factory=time.monotonic)
    last_evaluation: Evaluation | None = None
    evaluated_at: int = -1
    stopped_by: str = ""


def run_rl(spec: RLSpec, address: str | None = None) -> RLOutcome:
    """Train spec.algo on RLlib, track it as one MLflow run, register and gate the policy."""
    import os

    import ray

    from raymaas import cluster, tracking
    from raymaas.lifecycle import call_interruptibly, final_status, in_background

    config = build_algo_config(spec)
    tracking_uri = tracking.resolve_tracking_uri()
    # While Ray starts (~2 s here, mostly waiting on its processes): open the MLflow store,
    # and import what building the algorithm will import. RLlib's seeding switches torch to
    # deterministic algorithms, which imports torch's compiler stack (~1 s on this machine).
    opening = tracking.open_client_in_background(tracking_uri)
    warming = in_background(importlib.import_module, "torch._dynamo", name="raymaas-imports")
    runners = spec.env_runners.num_env_runners
    # Logical CPUs for a local Ray: one per EnvRunner actor; the learner runs in the driver,
    # and with no EnvRunner actors the job needs no worker processes at all.
    env_module = spec.env.rpartition(":")[0]
    user_code = [d for d in [cluster.package_dir_of(env_module) if env_module else None] if d]
    cluster.connect(address, num_cpus=max(os.cpu_count() or 1, runners + 1), py_modules=user_code,
                    prestart_workers=runners > 0)
    client = opening.result()
    warming.result()
    if runners:
        cluster.wait_for_resources({"CPU": runners * config.num_cpus_per_env_runner}, timeout_s=30)

    run_name = spec.mlflow.run_name or tracking.new_run_name(spec.name)
    job_run = tracking.start_job_run(
        client,
        spec.experiment_name,
        run_name,
        params=flatten(spec.model_dump(mode="json")),
        tags={"raymaas.job_kind": "rl", "ray_version": ray.__version__, "algo": spec.algo, "env": spec.env},
    )
    print(f"raymaas: MLflow run {job_run.run_id} ({run_name}) in {tracking_uri}"
          + (" [continuing]" if job_run.resumed else ""), flush=True)
    checkpoint_dir = tracking.raymaas_home() / "ray_results" / run_name / "checkpoint"

    with final_status(client, job_run.run_id) as status:
        algo = call_interruptibly(config.build_algo)
        progress = Progress()
        if job_run.resumed and (checkpoint_dir / _PROGRESS_FILE).is_file():
            progress = _restore(algo, checkpoint_dir)
            client.set_tag(job_run.run_id, "raymaas.resumed_from_iteration", str(progress.iteration))
            print(f"raymaas: continuing from iteration {progress.iteration} ({progress.env_steps} env steps)", flush=True)
        loop = _train(algo, spec, client, job_run.run_id, checkpoint_dir, progress)
        outcome = _publish(spec, algo, client, job_run, checkpoint_dir, loop)
        status.set("FINISHED")
    algo.stop()
    return outcome


def _train(algo, spec: RLSpec, client, run_id: str, checkpoint_dir: Path, progress: Progress) -> _Loop:
    """algo.train() until a stop condition; metrics each iteration, checkpoints every few."""
    from raymaas.lifecycle import call_interruptibly
    from raymaas.policy import evaluate_greedy
    from raymaas.tracking import log_metrics

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
            module = algo.get_module()
            loop.last_evaluation = evaluate_greedy(lambda o: greedy_actions(module, o), spec.env, ev.episodes, ev.seed)
            loop.evaluated_at = step
            metrics.update(loop.last_evaluation.metrics())

        elapsed = time.monotonic() - loop.started
        if (stop.target_return is not None and loop.evaluated_at == step
                and loop.last_evaluation.mean >= stop.target_return):
            loop.stopped_by = "target_return"
        elif step >= stop.max_env_steps:
            loop.stopped_by = "max_env_steps"
        elif elapsed >= stop.max_seconds:
            loop.stopped_by = "max_seconds"
        # Checkpoint before logging: an iteration that a kill cuts short is never logged twice.
        if loop.stopped_by or progress.iteration % spec.checkpoint_config.checkpoint_frequency == 0:
            _save(algo, checkpoint_dir, progress)
        log_metrics(client, run_id, metrics, step=step)
        print(f"raymaas: iteration {progress.iteration}: {step} env steps, return {train_return:.1f}"
              + (f", greedy {loop.last_evaluation.mean:.1f}" if loop.evaluated_at == step else "")
              + f" ({elapsed:.1f}s)", flush=True)
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


def _save(algo, checkpoint_dir: Path, progress: Progress) -> None:
    """Checkpoint beside the old one, then swap: a kill mid-save leaves the old one whole."""
    fresh = checkpoint_dir.with_name(checkpoint_dir.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    algo.save_to_path(str(fresh))
    (fresh / _PROGRESS_FILE).write_text(json.dumps(progress.__dict__))
    old = checkpoint_dir.with_name(checkpoint_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if checkpoint_dir.exists():
        checkpoint_dir.rename(old)
    fresh.rename(checkpoint_dir)
    shutil.rmtree(old, ignore_errors=True)


def _restore(algo, checkpoint_dir: Path) -> Progress:
    algo.restore_from_path(str(checkpoint_dir))
    return Progress(**json.loads((checkpoint_dir / _PROGRESS_FILE).read_text()))


def _publish(spec: RLSpec, algo, client, job_run, checkpoint_dir: Path, loop: _Loop) -> RLOutcome:
    """Final evaluation, curves, checkpoint and spec to the run; the policy to the registry."""
    import mlflow

    from raymaas import plots, registry
    from raymaas.policy import collect_observations, evaluate_greedy
    from raymaas.pyfunc import log_classifier
    from raymaas.tracking import log_metrics

    run_id, progress = job_run.run_id, loop.progress
    module = algo.get_module()
    act = lambda o: greedy_actions(module, o)  # noqa: E731
    evaluation = loop.last_evaluation
    if evaluation is None or loop.evaluated_at != progress.env_steps:
        evaluation = evaluate_greedy(act, spec.env, spec.evaluation.episodes, spec.evaluation.seed)
        log_metrics(client, run_id, evaluation.metrics(), step=progress.env_steps)

    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
    client.log_dict(run_id, {**evaluation.to_dict(), "env_steps": progress.env_steps}, "evaluation.json")
    curves = {}
    for key, label in (("episode_return_mean", "training episodes"), ("eval_return_mean", "greedy evaluation")):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        if history:
            curves[label] = ([m.step for m in history], [m.value for m in history])
    fig = plots.curves_figure(curves, "env steps", "episode return", f"{spec.name}: {spec.algo} on {spec.env}")
    client.log_figure(run_id, fig, "plots/return_curve.png")
    client.log_artifacts(run_id, str(checkpoint_dir), "checkpoint")

    # The exported policy must act as the RLlib module does, or it is not registered.
    obs = collect_observations(act, spec.env, PARITY_OBSERVATIONS, seed=spec.evaluation.seed + 500_000)
    with mlflow.start_run(run_id=run_id):
        info = log_classifier(action_scores_network(module), obs)
    exported = mlflow.pyfunc.load_model(info.model_uri)
    try:
        check_parity(act, exported.predict, obs)
    finally:
        client.set_tag(run_id, "raymaas.parity_observations", str(len(obs)))
    name = spec.registered_model_name
    version = registry.register_model(client, info.model_uri, name, GATE_METRIC, evaluation.mean)
    decision = registry.promote_if_better(client, name, version)
    return RLOutcome(
        run_id=run_id, run_name=job_run.run_name, experiment_id=job_run.experiment_id,
        tracking_uri=job_run.tracking_uri, model_name=name, version=version, evaluation=evaluation,
        env_steps=progress.env_steps, iterations=progress.iteration, stopped_by=loop.stopped_by,
        promoted=decision.promoted, promotion_reason=decision.reason,
        training_seconds=time.monotonic() - loop.started,
    )


class PolicyExportError(RuntimeError):
    """The exported policy does not act as the RLlib module does."""


def check_parity(expected: Act, exported: Act, obs: np.ndarray) -> None:
    """Raise PolicyExportError unless both policies pick the same action on every observation."""
    mismatches = action_mismatches(expected(obs), exported(obs))
    if len(mismatches):
        raise PolicyExportError(
            f"the exported policy differs from the RLlib module on {len(mismatches)} of {len(obs)} "
            f"observations (first: {obs[mismatches[0]].tolist()}); not registered"
        )
