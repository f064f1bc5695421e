"""Sweeps on Ray Tune: spaces checked against the spec before anything starts; a real sweep of
the debug spec on the test head, stopped half way and resubmitted, as one parent run with one
child run per trial and one registered version from the best trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import REPO, run_job, wait_for

SWEEP_SPEC = REPO / "jobs/specs/digits_sweep_debug.yaml"


def _load(*overrides: str):
    from raymaas.specs import load_spec
    from raymaas.supervised.job import SupervisedSpec

    return load_spec(SupervisedSpec, SWEEP_SPEC, overrides)


@pytest.mark.parametrize(
    "override, says",
    [
        # a range that can draw a value the field refuses
        (
            "param_space.train_loop_config.lr={uniform: [-0.01, 0.01]}",
            "param_space.train_loop_config.lr: uniform([-0.01, 0.01]) can draw -0.01, which the spec refuses: "
            "train_loop_config.lr: Input should be greater than 0",
        ),
        (
            "param_space.scaling_config.num_workers={uniform: [1, 3]}",
            "which the spec refuses: scaling_config.num_workers: ",
        ),
        ("param_space.train_loop_config.epochs={randint: [0, 4]}", "randint([0, 4]) can draw 0"),
        ("param_space.model.name={choice: [mlp, resnet]}", "can draw 'resnet', which the spec refuses"),
        # a choice that breaks a rule across fields
        ("param_space.data.source={choice: [digits, diabetes]}", "'diabetes' is a data set for regression"),
        # fields that do not exist, or name the sweep itself
        ("param_space.train_loop_config.lrr={loguniform: [0.001, 0.01]}", "train_loop_config.lrr is unknown"),
        ("param_space.mlflow.run_name={choice: [a, b]}", "mlflow names the sweep itself"),
        # domains Tune cannot take
        ("param_space.train_loop_config.lr={loguniform: [0, 0.1]}", "loguniform needs low > 0"),
        ("param_space.train_loop_config.lr={normal: [0.01, 0.001]}", "unknown search space 'normal'"),
        ("param_space.train_loop_config.lr={uniform: [0.1, 0.01]}", "uniform needs low < high"),
        ("param_space.train_loop_config.lr=0.01", "one of choice, grid_search, uniform, loguniform, randint"),
        ("param_space.model.hidden_sizes={choice: []}", "choice takes a list"),
        ("tune_config.scheduler=hyperband", "tune_config.scheduler: Input should be 'fifo' or 'asha'"),
        ("tune_config.num_samples=0", "tune_config.num_samples: Input should be greater than or equal to 1"),
        (
            "tune_config.metric=val_rmse",
            "tune_config.metric 'val_rmse': a classification job logs val_loss, val_accuracy",
        ),
    ],
)
def test_a_space_that_can_draw_what_the_spec_refuses_is_named(override, says):
    from raymaas.specs import SpecError

    with pytest.raises(SpecError) as err:
        _load(override)
    assert says in str(err.value), str(err.value)


def test_sweep_sections_nested_or_dotted_and_tunes_own_space():
    """Nested sections (as --set writes them) read as dotted fields; a list of lists is searched
    by index (Optuna's categories are scalars) and decoded back to the spec's values."""
    from ray import tune

    from raymaas.sweep.job import decode, tune_space
    from raymaas.sweep.space import parse_space

    spec = _load("param_space.train_loop_config.batch_size={choice: [32, 64]}")
    assert spec.is_sweep
    assert list(spec.param_space) == ["train_loop_config.lr", "model.hidden_sizes", "train_loop_config.batch_size"]
    domains = parse_space(spec.param_space)
    space = tune_space(domains)
    assert space["model.hidden_sizes"] == tune.grid_search([0, 1])
    assert space["train_loop_config.batch_size"].categories == [32, 64]
    assert space["train_loop_config.lr"].lower == pytest.approx(1e-3)
    values = decode(
        domains, {"train_loop_config.lr": 0.004, "model.hidden_sizes": 1, "train_loop_config.batch_size": 64}
    )
    assert values == {"train_loop_config.lr": 0.004, "model.hidden_sizes": [64], "train_loop_config.batch_size": 64}


def test_a_bad_sweep_exits_2_before_anything_starts(tmp_path):
    """Through `raymaas train`: exit 2 naming the field, and no store or Ray made."""
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raymaas.cli",
            "train",
            str(SWEEP_SPEC),
            "--set",
            "param_space.train_loop_config.lr={uniform: [0, 0.1]}",
        ],
        env={**_plain_env(), "RAYMAAS_HOME": str(home)},
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "param_space.train_loop_config.lr: uniform([0, 0.1]) can draw 0.0" in proc.stderr
    assert list(home.iterdir()) == []
    rl = subprocess.run(
        [sys.executable, "-m", "jobs.sweep", str(REPO / "jobs/specs/cartpole_ppo_debug.yaml")],
        env={**_plain_env(), "RAYMAAS_HOME": str(home)},
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rl.returncode == 2 and "is not a sweep: it has no tune_config" in rl.stderr, rl.stderr


def _plain_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}


def test_each_trial_reserves_by_its_own_spec():
    """A trial's own process reserves by the trial's drawn spec, not the sweep's base spec: from
    a base of 2 workers, a trial drawn down to 1 trains in its process and reserves the worker's
    CPU, one drawn to 2 runs a Train run and reserves TRIAL_CPU. Such a sweep may start Train
    runs (its Ray then starts the dashboard, and Tune restarts no trial); the debug sweep's
    trials all train in their own process, and an RL trial's learner always does."""
    from raymaas.kinds import get_kind
    from raymaas.rl.job import RLSpec
    from raymaas.specs import load_spec
    from raymaas.supervised.trial import trains_in_trial
    from raymaas.sweep.job import TRIAL_CPU, _trains_where, trial_resources
    from raymaas.sweep.space import check_space, parse_space

    assert trains_in_trial(_load()) and not trains_in_trial(_load("scaling_config.num_workers=2"))
    assert not trains_in_trial(_load("scaling_config.num_workers=[1, 2]"))  # elastic: a Train run

    supervised = get_kind("supervised")
    spec = _load("scaling_config.num_workers=2", "param_space.scaling_config.num_workers={choice: [1, 2]}")
    base = spec.model_dump(mode="json")
    reserve = trial_resources(supervised.name, base)
    drawn = {"train_loop_config.lr": 0.004, "model.hidden_sizes": 1}
    assert reserve({**drawn, "scaling_config.num_workers": 1}) == {"CPU": 1}
    assert reserve({**drawn, "scaling_config.num_workers": 2}) == {"CPU": TRIAL_CPU}

    def where(kind, spec) -> set[bool]:
        return _trains_where(kind.load_sweep(), spec)

    assert where(supervised, spec) == {True, False} and where(supervised, _load()) == {True}
    # the specs it asks are check_space's probes, kept from the spec's validation, each the base
    # with one drawn value
    probed = spec.sweep_probes
    assert [(f, v) for f, v, _ in probed] == [
        (f, v) for f, v, _ in check_space(type(spec), base, parse_space(spec.param_space))
    ]
    workers = [(v, s.scaling_config.num_workers) for f, v, s in probed if f == "scaling_config.num_workers"]
    assert workers == [(1, 1), (2, 2)] and all(s.tune_config is None for _, _, s in probed)

    rl = get_kind("rl")
    rl_spec = load_spec(RLSpec, REPO / "jobs/specs/cartpole_ppo_sweep_debug.yaml")
    assert trial_resources(rl.name, rl_spec.model_dump(mode="json"))({"training.lr": 0.003}) == {"CPU": 1}
    assert where(rl, rl_spec) == {True}


def test_sweep_stopped_and_resubmitted_is_one_parent_one_child_per_trial_one_version(ray_head, mlflow_client):
    """Four trials of the debug spec (ASHA): SIGTERM (what `ray job stop` sends) once a trial has
    ended leaves the parent and its running children KILLED; the same command again continues the
    parent, keeps the ended trial's run as it was, and registers the best trial's model once."""
    args = [
        "jobs.sweep",
        str(SWEEP_SPEC),
        "--set",
        "name=test-sweep",
        "--set",
        "mlflow.run_name=test-sweep-1",
        "--set",
        "tune_config.max_concurrent_trials=2",
    ]
    first, lines, reader = _start_sweep(args, ray_head.env)
    try:
        wait_for(
            lambda: any(" ended" in line for line in lines) or first.poll() is not None,
            400,
            "a trial's end",
            0.2,
            seen=lambda: "the sweep's output:\n" + "".join(lines)[-3000:],
        )
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    assert first.returncode == 128 + signal.SIGTERM, output[-4000:]

    experiment = mlflow_client.get_experiment_by_name("test-sweep").experiment_id
    (parent,) = mlflow_client.search_runs([experiment], filter_string="tags.`raymaas.sweep` = 'parent'")
    assert parent.info.status == "KILLED"
    children = _children(mlflow_client, experiment, parent.info.run_id)
    assert children and all(c.info.status != "RUNNING" for c in children.values())
    before = {tid: _steps(mlflow_client, c.info.run_id) for tid, c in children.items() if c.info.status == "FINISHED"}

    second = run_job(args, env=ray_head.env, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "[continuing]" in second.stdout and "continuing the sweep's trials" in second.stdout

    parent = mlflow_client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    children = _children(mlflow_client, experiment, parent.info.run_id)
    assert len(children) == 4  # one per trial, across both attempts
    for tid, steps in before.items():  # ended before the stop: not trained again
        assert _steps(mlflow_client, children[tid].info.run_id) == steps
    for tid, child in children.items():
        assert child.info.status == "FINISHED", (tid, child.data.tags.get("raymaas.error"))
        steps = _steps(mlflow_client, child.info.run_id)
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 3, (tid, steps)  # each epoch once
        early = child.data.tags.get("raymaas.stopped_early")  # "asha after epoch N"
        if early is None:
            assert len(steps) == 3, (tid, steps)
        else:  # the run may log an epoch more while the stop reaches the trial
            assert early.startswith("asha after epoch ") and int(early.split()[-1]) <= min(len(steps), 2), early
        assert child.data.params["scaling_config.num_workers"] == "1"
        assert "tune_config.num_samples" not in child.data.params  # a trial's params are its job's

    best_id = parent.data.tags["raymaas.best_trial"]
    best = children[best_id]
    accuracies = {tid: c.data.metrics["val_accuracy"] for tid, c in children.items()}
    assert accuracies[best_id] == max(accuracies.values())
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(accuracies[best_id])
    assert parent.data.params["best.train_loop_config.lr"] == best.data.params["train_loop_config.lr"]
    assert parent.data.params["tune_config.scheduler"] == "asha"
    assert parent.data.params["param_space.train_loop_config.lr.loguniform"] == "[0.001, 0.02]"
    trials = json.loads(_artifact_text(mlflow_client, parent.info.run_id, "trials.json"))
    assert sorted(row[0] for row in trials["data"]) == sorted(children)
    plots = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/param_train_loop_config.lr.png", "plots/param_model.hidden_sizes.png"}

    (version,) = mlflow_client.search_model_versions("name='test-sweep'")  # only the best trial's
    assert version.run_id == best.info.run_id
    mv = mlflow_client.get_model_version("test-sweep", version.version)
    assert mv.tags["raymaas.trial_id"] == best_id
    assert mv.tags["raymaas.trial.model.hidden_sizes"] == best.data.params["model.hidden_sizes"]
    assert float(mv.tags["raymaas.gate_value"]) == pytest.approx(accuracies[best_id])
    assert "champion" in mv.aliases


def _start_sweep(args: list[str], env: dict) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """`python -m ARGS` started; its output lines, gathered as they come by the thread."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, lines, reader


def _children(client, experiment: str, parent_run_id: str) -> dict:
    runs = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    ids = [r.data.tags["raymaas.trial_id"] for r in runs]
    assert len(ids) == len(set(ids)), ids  # never two runs for one trial
    return dict(zip(ids, runs))


def _steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy"))


def _artifact_text(client, run_id: str, path: str) -> str:
    from pathlib import Path

    return Path(client.download_artifacts(run_id, path)).read_text()


@pytest.mark.slow
def test_rl_sweep_one_child_per_trial_and_the_best_policy_registered(ray_head, mlflow_client):
    """Two PPO trials (a learning rate each): each child run logs its iterations; the version
    comes from the child with the best greedy return and passed the parity check."""
    proc = run_job(
        ["jobs.sweep", str(REPO / "jobs/specs/cartpole_ppo_sweep_debug.yaml"), "--set", "name=test-rl-sweep"],
        env=ray_head.env,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    experiment = mlflow_client.get_experiment_by_name("test-rl-sweep").experiment_id
    (parent,) = mlflow_client.search_runs([experiment], filter_string="tags.`raymaas.sweep` = 'parent'")
    assert parent.info.status == "FINISHED"
    children = _children(mlflow_client, experiment, parent.info.run_id)
    assert len(children) == 2
    assert {c.data.params["training.lr"] for c in children.values()} == {"0.0003", "0.003"}
    for child in children.values():
        assert child.info.status == "FINISHED" and child.data.tags["raymaas.stopped_by"] == "max_env_steps"
        iterations = mlflow_client.get_metric_history(child.info.run_id, "episode_return_mean")
        assert len(iterations) >= 2 and len({m.step for m in iterations}) == len(iterations)
    best = children[parent.data.tags["raymaas.best_trial"]]
    returns = {tid: c.data.metrics["eval_return_mean"] for tid, c in children.items()}
    assert best.data.metrics["eval_return_mean"] == max(returns.values())
    (version,) = mlflow_client.search_model_versions("name='test-rl-sweep'")
    assert version.run_id == best.info.run_id
    assert best.data.tags["raymaas.parity_observations"] == "2000"


def test_a_one_worker_trial_trains_in_its_own_process_and_comes_back_after_its_death(ray_head, mlflow_client):
    """A trial of one worker trains in its Tune trial's own process (no Ray Train worker);
    that process killed mid-run, Tune starts the trial again (failure_config.max_failures) and
    it goes on from its last checkpoint in storage: one run, each epoch logged once, FINISHED."""
    from ray.util.state import list_actors

    from raymaas.runtime.cluster import _use_token_auth_if_available

    _use_token_auth_if_available()  # the state API of a head with token auth
    epochs = 40
    args = [
        "jobs.sweep",
        str(SWEEP_SPEC),
        "--set",
        "name=test-sweep-trial-death",
        "--set",
        "tune_config.num_samples=1",
        "--set",
        "param_space={model.hidden_sizes: {grid_search: [[32]]}}",
        "--set",
        f"train_loop_config.epochs={epochs}",
    ]
    driver, lines, reader = _start_sweep(args, ray_head.env)

    def alive(class_name: str) -> list:
        return list_actors(address=ray_head.address, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])

    try:
        wait_for(
            lambda: any(f"epoch 3/{epochs}" in line for line in lines) or driver.poll() is not None,
            300,
            "the trial's third epoch",
            0.1,
            seen=lambda: "the sweep's output:\n" + "".join(lines)[-3000:],
        )
        (trial,) = alive("ImplicitFunc")
        assert not alive("RayTrainWorker")  # no Train run of its own
        os.kill(trial.pid, signal.SIGKILL)
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    assert driver.returncode == 0, output[-4000:]

    experiment = mlflow_client.get_experiment_by_name("test-sweep-trial-death").experiment_id
    (parent,) = mlflow_client.search_runs([experiment], filter_string="tags.`raymaas.sweep` = 'parent'")
    (child,) = _children(mlflow_client, experiment, parent.info.run_id).values()
    assert child.info.status == "FINISHED", child.data.tags.get("raymaas.error")
    assert _steps(mlflow_client, child.info.run_id) == list(range(epochs))  # each epoch once
    assert int(child.data.tags["raymaas.resumed_from_epoch"]) >= 3  # from its checkpoint, not from scratch
    (version,) = mlflow_client.search_model_versions("name='test-sweep-trial-death'")
    assert version.run_id == child.info.run_id
