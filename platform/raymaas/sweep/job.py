"""Sweeps on Ray Tune: one parent MLflow run, one child run per trial, the best trial registered.

    run_sweep(spec, kind, address)
      JobDriver.connect              one Ray for every trial (the kind's options, for the
                                     trials that run at once), the MLflow store, storage checks
                                     (raymaas.runtime.lifecycle, as every job)
      parent run                     created, or continued by run name: a resubmitted sweep
      Tuner, or Tuner.restore        a Tune function per trial that runs the kind's fit inside
                                     the trial's child run, found again by its trial id: for
                                     supervised specs a TorchTrainer, whose workers reserve the
                                     trial's resources (the trial's own process reserves almost
                                     nothing), or, for one fixed worker, the training loop in
                                     the trial's own process (raymaas.supervised.trial), which
                                     then reserves the worker's resources; each trial reserves
                                     by its own spec, the values it drew applied
      after fit                      the children's final status (and who stopped them early),
                                     the trials table and a plot per searched field on the
                                     parent, the best trial's model published from its child

A kind takes sweeps by naming a Trials (below) in its raymaas.kinds row.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raymaas.specs import validate_spec
from raymaas.sweep.space import Domain, parse_space, trial_data

# Tags of a sweep's runs: the parent is found again by its run name (raymaas.job_key, as for
# any job); a child by the parent's name and its Tune trial id.
SWEEP_TAG = "raymaas.sweep"  # "parent" on the parent; the parent's run name on each child
TRIAL_TAG = "raymaas.trial_id"
STOPPED_EARLY_TAG = "raymaas.stopped_early"
# On a trial's run that ended by itself: how many results it logged, and its last checkpoint.
FINAL_REPORT_TAG = "raymaas.final_report"
# What a trial's own process reserves by default (connect_options leaves room for it).
TRIAL_CPU = 0.01


@dataclass(frozen=True)
class Trials:
    """The parts of one job of a kind that a sweep runs per trial."""

    connect_options: Callable[[Any, int], dict]  # (spec, trials at once) -> cluster.connect's options
    # spec -> what a trial's training reserves, e.g. {"CPU": 2}: the trial's own process where
    # it trains there (an RLlib learner, a supervised trial's one worker), its Train run's
    # workers where it starts one (in_process)
    training: Callable[[Any], dict[str, float]]
    budget: Callable[[Any], int]  # spec -> the epochs (iterations) of a trial that runs to its end
    prepare: Callable[[Any, str], tuple[Any, dict[str, str]]]  # (spec, storage_path) -> (prepared, run tags)
    fit: Callable[[Any, Any], str | None]  # (job, prepared) -> its last checkpoint's path; reports to Tune
    model_of: Callable[[Any, Any, str | None], Any]  # (job, prepared, that path) -> driver.TrainedModel
    # spec -> what the other actors a trial starts reserve (RLlib's EnvRunners)
    actors: Callable[[Any], dict[str, float]] = lambda spec: {}
    # spec -> whether a trial of spec trains in its own process; if not, it starts a Ray Train
    # run of its own, whose workers reserve `training` while the trial's process only waits on
    # them (TRIAL_CPU). The kind's one answer to where a trial trains: the sweep derives from
    # it what each trial reserves (_own, _need), and whether its Ray needs the dashboard and Tune
    # restarts trials (_trains_where)
    in_process: Callable[[Any], bool] = lambda spec: True
    # spec -> how often Tune restarts a trial that trains in its own process when that process
    # died (from its last checkpoint); a Train run restarts its own workers instead
    max_failures: Callable[[Any], int] = lambda spec: 0


@dataclass(frozen=True)
class SweepOutcome:
    """The end of a sweep: its parent run, its trials, and the best trial's registered model."""

    parent_run_id: str
    run_name: str
    metric: str
    mode: str
    trials: list[dict]  # one row per trial: trial_id, run_id, status, the searched values, the metric
    best_trial_id: str
    best: Any  # runtime.driver.JobOutcome of the best trial's model

    def lines(self) -> list[str]:
        done = sum(1 for t in self.trials if t["status"] == "FINISHED")
        early = sum(1 for t in self.trials if t.get("stopped_early"))
        out = [
            f"raymaas: sweep {self.run_name}: {len(self.trials)} trials ({done} finished, {early} stopped early); "
            f"best {self.best_trial_id} with {self.metric} {self._best_value():.4f}",
            f"raymaas: parent run {self.parent_run_id}",
        ]
        return out + self.best.lines()

    def _best_value(self) -> float:
        return next(t[self.metric] for t in self.trials if t["trial_id"] == self.best_trial_id)


def tune_space(domains: dict[str, Domain], shuffle_grid: int | None = None) -> dict[str, Any]:
    """Tune's param_space for domains, keyed by the dotted field. A list of values that are not
    all scalars (layer sizes) is searched by index: Optuna's categories must be scalars.

    shuffle_grid (a seed): each grid_search list in an order of its own. ASHA judges a trial
    against the trials that reached the same rung before it, so a grid written from the weakest
    value to the strongest (learning rates in ascending order) would never have one stopped."""
    import random

    from ray import tune

    space = {}
    for field, d in domains.items():
        if d.categorical:
            options = list(d.values) if _scalars(d.values) else list(range(len(d.values)))
            if d.kind == "grid_search" and shuffle_grid is not None:
                random.Random(f"{shuffle_grid}:{field}").shuffle(options)
            space[field] = tune.grid_search(options) if d.kind == "grid_search" else tune.choice(options)
        elif d.kind == "randint":
            space[field] = tune.randint(*d.values)
        else:
            space[field] = getattr(tune, d.kind)(*map(float, d.values))
    return space


def decode(domains: dict[str, Domain], config: dict[str, Any]) -> dict[str, Any]:
    """The spec values of a Tune config (tune_space's inverse)."""
    values = {}
    for field, d in domains.items():
        raw = config[field]
        values[field] = d.values[raw] if d.categorical and not _scalars(d.values) else raw
    return values


def _scalars(values: list) -> bool:
    return all(v is None or isinstance(v, bool | int | float | str) for v in values)


def child_run_name(parent_run_name: str, trial_id: str) -> str:
    return f"{parent_run_name}-{trial_id}"


def run_sweep(spec, kind, address: str | None = None) -> SweepOutcome:
    """Run spec's sweep on Ray Tune; see the module's docstring."""
    # Tune's own progress tables off (verbose=0 below is honoured by its classic output only):
    # the sweep prints a line per trial epoch itself.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    from raymaas import tracking
    from raymaas.runtime import cluster
    from raymaas.runtime.driver import Job
    from raymaas.runtime.lifecycle import JobDriver, call_interruptibly, final_status
    from raymaas.tracking.publish import publish_model

    trials: Trials = kind.load_sweep()
    tc = spec.tune_config
    domains = parse_space(spec.param_space)
    base = spec.model_dump(mode="json")
    gate = spec.gate(kind)
    metric = tc.metric or gate.metric
    mode = tc.mode or ("max" if (gate.higher_is_better if metric == gate.metric else _higher(metric)) else "min")
    # Each trial reserves by its own spec (tune.with_resources below), but the trials at once
    # are counted by the base spec's needs: an approximation where a searched field changes
    # them (scaling_config.num_workers). A trial that needs more than counted waits for room
    # (Tune holds back its process, or its Train run its workers); one that needs less leaves
    # room unused.
    need = _need(trials, spec)
    local = not (address or os.environ.get("RAY_ADDRESS"))

    at_once = tc.max_concurrent_trials or (_fits(need, {"CPU": os.cpu_count() or 1}) if local else 1)
    options = trials.connect_options(spec, at_once)
    if options.get("num_cpus"):  # a local Ray: one CPU more holds every trial's own TRIAL_CPU
        options["num_cpus"] += 1
    warm = options.pop("warm_imports", ())  # imported while Ray starts, waited for before Tune starts
    # Ray's dashboard and Tune's restarts are set once per sweep, and its trials may train
    # either way (a searched num_workers): a sweep where any trial may start a Train run takes
    # the settings such trials need, whatever the others would have.
    # The dashboard: Train V2 frees the workers' placement group of a Train run whose
    # controller died (each trial Tune stops early) from a cleaner actor that asks Ray's State
    # API, which lives in the dashboard. Without it the cleaner only logs "Failed to query Ray
    # Train Controller actor state" and the stopped trials' CPUs stay reserved: the sweep starved
    # once ASHA had stopped two trials on 2 cores (bench/sweep.py, reduction factor 4). Trials
    # that train in their own process leave nothing to free.
    # Tune's restarts: none, since a Train run restarts its own workers (the spec's
    # failure_config) and Tune restarting its trial as well would multiply the restarts; the
    # trials of such a sweep that train in their own process are then not restarted either.
    train_runs = False in _trains_where(trials, spec)
    max_failures = 0 if train_runs else trials.max_failures(spec)
    # Ray shut down however the sweep ends, from here on (raymaas.runtime.lifecycle)
    with JobDriver.connect(
        address,
        logs="trials, Train controllers" if train_runs else "trials",
        warm_imports=warm,
        include_dashboard=train_runs,
        **options,
    ) as driver:
        tracking_uri, client, storage_path = driver.tracking_uri, driver.client, driver.storage_path
        need = _need(trials, spec)  # use_gpu auto resolved now
        capacity = None
        if tc.max_concurrent_trials is None:
            if local:
                at_once = _fits(need, {**ray.cluster_resources(), "CPU": os.cpu_count() or 1})
            else:
                # As many trials as the cluster can grow to hold: the ones that do not fit now wait
                # pending, and what they ask for is what makes the autoscaler add nodes.
                capacity = cluster.growth_capacity()
                at_once = _fits(need, capacity.resources)

        run_name = spec.mlflow.run_name or tracking.new_run_name(spec.name)
        parent = driver.start_run(
            spec.experiment_name,
            run_name,
            params=spec.tracked_params(),
            tags={"raymaas.job_kind": kind.name, SWEEP_TAG: "parent", "raymaas.sweep_metric": f"{metric} ({mode})"},
            line=None,  # the sweep's own, below
        )
        print(
            f"raymaas: sweep {run_name}: MLflow parent run {parent.run_id} in {tracking_uri}"
            + (" [continuing]" if parent.resumed else "")
            + f"; up to {at_once} trials at once"
            + (f" (each needs {_shown(need)}; the cluster can grow to {capacity.describe()})" if capacity else ""),
            flush=True,
        )
        with final_status(client, parent.run_id) as status:
            trainable = tune.with_resources(
                _make_trainable(
                    kind.name, base, tracking_uri, storage_path, parent.run_id, run_name, spec.experiment_name, metric
                ),
                trial_resources(kind.name, base),
            )
            experiment_path = _join(storage_path, run_name)
            run_config = tune.RunConfig(
                name=run_name,
                storage_path=storage_path,
                verbose=0,
                callbacks=[_progress(metric, trials.budget(spec))],
                failure_config=tune.FailureConfig(max_failures=max_failures),
            )
            tune_config = tune.TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=tc.num_samples,
                # a BasicVariantGenerator takes it itself (_search_alg); Tune would warn it is ignored
                max_concurrent_trials=at_once if tc.search_alg == "optuna" else None,
                search_alg=_search_alg(tc, metric, mode, at_once),
                scheduler=_scheduler(tc, trials.budget(spec)),
                time_budget_s=tc.time_budget_s,
            )
            try:
                if tune.Tuner.can_restore(experiment_path):
                    print(f"raymaas: continuing the sweep's trials from {experiment_path}", flush=True)
                    tuner = tune.Tuner.restore(experiment_path, trainable, resume_errored=True)
                else:
                    tuner = tune.Tuner(
                        trainable,
                        param_space=tune_space(domains, tc.seed if tc.scheduler == "asha" else None),
                        tune_config=tune_config,
                        run_config=run_config,
                    )
                driver.warming.result()
                grid = call_interruptibly(tuner.fit)
            except BaseException:
                _end_children(client, parent, "KILLED")
                raise
            rows = _trial_rows(client, parent, grid, domains, metric, tc.scheduler)
            scored = [r for r in rows if isinstance(r.get(metric), float) and math.isfinite(r[metric])]
            if not scored:
                raise RuntimeError(f"no trial of sweep {run_name} reported {metric}: see the trials' runs for why")
            best_row = (max if mode == "max" else min)(scored, key=lambda r: r[metric])
            _log_parent(client, parent.run_id, rows, domains, metric, best_row)

            best_spec = validate_spec(
                kind.load_spec_model(), trial_data(base, best_row["values"]), source=f"trial {best_row['trial_id']}"
            )
            best_run = tracking.JobRun(
                best_row["run_id"], parent.experiment_id, best_row["run_name"], tracking_uri, resumed=True
            )
            job = Job(best_spec, kind, client, best_run, tracking_uri, storage_path)
            prepared, _ = trials.prepare(best_spec, storage_path)
            trained = trials.model_of(job, prepared, best_row["checkpoint_path"])
            published = publish_model(client, best_run.run_id, best_spec, gate, trained)
            for fn in job.deferred:  # e.g. stopping the RLlib algorithm the model came from
                fn()
            for key, value in {
                "raymaas.sweep_run": run_name,
                "raymaas.sweep_parent_run_id": parent.run_id,
                TRIAL_TAG: best_row["trial_id"],
                **{f"raymaas.trial.{k}": str(v) for k, v in best_row["values"].items()},
            }.items():
                client.set_model_version_tag(published.model_name, published.version, key, value)
            client.set_tag(parent.run_id, "raymaas.registered_version", f"{published.model_name}/{published.version}")
            status.set("FINISHED")

    from raymaas.runtime.driver import JobOutcome

    best = JobOutcome.of(
        best_run.run_id, best_run.run_name, parent.experiment_id, tracking_uri, published, gate, trained
    )
    return SweepOutcome(parent.run_id, run_name, metric, mode, rows, best_row["trial_id"], best)


def _higher(metric: str) -> bool:
    from raymaas.kinds import higher_is_better

    return higher_is_better(metric)


def _total(*parts: dict[str, float]) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total


def _shown(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if v) or "nothing"


def _own(trials: Trials, spec) -> dict[str, float]:
    """What the own process of a trial of spec reserves: its training where it trains there,
    else TRIAL_CPU (its Train run's workers train; the process only waits on them)."""
    return trials.training(spec) if trials.in_process(spec) else {"CPU": TRIAL_CPU}


def _need(trials: Trials, spec) -> dict[str, float]:
    """All that a trial of spec reserves: its training and its other actors, and its own
    process's TRIAL_CPU where a Train run's workers train."""
    waiting = {} if trials.in_process(spec) else {"CPU": TRIAL_CPU}
    return _total(trials.training(spec), trials.actors(spec), waiting)


def _trains_where(trials: Trials, spec) -> set[bool]:
    """Whether the sweep's trials may train in their own process (True), start Train runs
    (False), or both: trials.in_process of the base spec, and of the base with each value a
    domain probes (Domain.probes: a list's every value, a range's ends) set alone, the specs
    validated with the sweep's spec (sweep_probes). A change that only a combination of drawn
    values makes is not foreseen; supervised's answer rests on scaling_config.num_workers alone."""
    return {trials.in_process(spec)} | {trials.in_process(s) for _, _, s in spec.sweep_probes}


def trial_resources(kind_name: str, base: dict) -> Callable[[dict], dict[str, float]]:
    """Tune's resources for a trial, a function of its config (tune.with_resources calls it in
    the driver as each trial is added, and turns the dict into a placement group factory as it
    does a dict given for all trials): what the trial's own process reserves by the trial's own
    spec, the base spec with the values it drew, since those may change it (a searched
    scaling_config.num_workers)."""

    def reserve(config: dict) -> dict[str, float]:
        from raymaas.kinds import get_kind
        from raymaas.specs import SpecError

        kind = get_kind(kind_name)
        try:
            spec = _trial_spec(kind, base, config, "for a trial's resources")
        except SpecError:  # values the spec refuses together: the trial's function fails at once, naming them
            return {"CPU": TRIAL_CPU}
        return _own(kind.load_sweep(), spec)

    return reserve


def _trial_spec(kind, base: dict, config: dict, source: str):
    """A trial's spec: the sweep's base spec with the values its Tune config drew, validated as
    a job's spec is."""
    values = decode(parse_space(base["param_space"]), config)
    return validate_spec(kind.load_spec_model(), trial_data(base, values), source=source)


def _fits(need: dict[str, float], have: dict[str, float]) -> int:
    """How many trials that each need `need` fit in `have` at once (at least one)."""
    counts = [math.floor(have.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
    return max(1, min(counts, default=1))


def _join(storage_path: str, name: str) -> str:
    return f"{storage_path.rstrip('/')}/{name}"


def _search_alg(tc, metric: str, mode: str, at_once: int):
    """Tune applies max_concurrent_trials to a Searcher (Optuna) itself, but ignores it for a
    BasicVariantGenerator passed in: that one takes it as its own max_concurrent."""
    if tc.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode=mode, seed=tc.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=tc.seed, max_concurrent=at_once)


def _scheduler(tc, budget: int):
    if tc.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # Rungs in epochs: the report Train passes on carries each epoch.
        # max_t one past the budget: ASHA stops every trial that reaches max_t, which would end
        # a trial's function before it closes its own run.
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=max(budget, tc.grace_period) + 1,
            grace_period=tc.grace_period,
            reduction_factor=tc.reduction_factor,
        )
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _make_trainable(kind_name, base, tracking_uri, storage_path, parent_run_id, parent_run_name, experiment, metric):
    """The Tune function of every trial: its spec, its child run (found again by trial id
    after a retry or a resubmitted sweep), the kind's prepare and fit.

    A trial that reports nothing in this attempt (its run had ended, or its checkpoint was its
    last epoch, before Tune's saved state said so) reports its run's last values instead:
    Tune needs the metric in a trial's last result."""

    def run_trial(config: dict) -> None:
        import ray
        from ray import tune

        from raymaas.kinds import get_kind
        from raymaas.runtime.driver import Job
        from raymaas.tracking import get_client
        from raymaas.tracking.runs import end_job_run, epochs_from_checkpoints, find_job_run, start_job_run
        from raymaas.tracking.store import ensure_experiment

        kind = get_kind(kind_name)
        trials: Trials = kind.load_sweep()
        trial_id = tune.get_context().get_trial_id()
        spec = _trial_spec(kind, base, config, f"trial {trial_id}")
        client = get_client(tracking_uri)
        name = child_run_name(parent_run_name, trial_id)
        done = find_job_run(client, ensure_experiment(client, experiment), name)
        if done is not None and done.info.status == "FINISHED":
            # A resubmitted sweep whose saved Tune state predates this trial's end: not trained again.
            tune.report({**done.data.metrics, **json.loads(done.data.tags[FINAL_REPORT_TAG])})
            return
        run = start_job_run(
            client,
            experiment,
            name,
            params=spec.tracked_params(),
            tags={
                "mlflow.parentRunId": parent_run_id,
                SWEEP_TAG: parent_run_name,
                TRIAL_TAG: trial_id,
                "raymaas.job_kind": kind_name,
                "ray_version": ray.__version__,
            },
        )
        # Tune needs a report from this attempt; epochs logged from their checkpoints were not one
        logged_before = len(client.get_metric_history(run.run_id, metric)) - epochs_from_checkpoints(
            client.get_run(run.run_id)
        )
        # An exception ends the run in the driver, on Tune's verdict: one raised because Tune
        # stopped this trial (its Train controller gone: ActorDiedError) is not a failure, and
        # reaches MLflow, if at all, after the driver has closed the sweep's runs.
        prepared, tags = trials.prepare(spec, storage_path)
        for key, value in tags.items():
            client.set_tag(run.run_id, key, value)
        checkpoint_path = trials.fit(Job(spec, kind, client, run, tracking_uri, storage_path), prepared)
        logged = len(client.get_metric_history(run.run_id, metric))
        final = {"reports": logged, "checkpoint_path": checkpoint_path}
        client.set_tag(run.run_id, FINAL_REPORT_TAG, json.dumps(final))
        end_job_run(client, run.run_id, "FINISHED")
        if logged - epochs_from_checkpoints(client.get_run(run.run_id)) == logged_before:
            tune.report({**client.get_run(run.run_id).data.metrics, **final})

    return run_trial


def _children(client, parent) -> dict[str, Any]:
    """The parent's child runs by trial id."""
    runs = client.search_runs(
        [parent.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'", max_results=10000
    )
    return {r.data.tags.get(TRIAL_TAG): r for r in runs}


def _end_children(client, parent, status: str) -> None:
    """Children still RUNNING (their trial was stopped with the sweep) end as status."""
    try:
        for run in _children(client, parent).values():
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status=status)
    except Exception as exc:  # the parent's status still matters more
        print(f"raymaas: could not end the trials' runs: {exc}", flush=True)


def _trial_rows(client, parent, grid, domains, metric, scheduler) -> list[dict]:
    """One row per trial; each child run ends FINISHED (tagged when stopped early) or FAILED."""
    children = _children(client, parent)
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or _trial_id_of_path(result.path)
        run = children.get(trial_id)
        ended = json.loads(run.data.tags[FINAL_REPORT_TAG]) if run and FINAL_REPORT_TAG in run.data.tags else None
        if "epoch" in metrics:
            epochs = int(metrics["epoch"]) + 1
        else:  # RL, or a trial's last values reported from its run again
            epochs = int(metrics.get("reports") or metrics.get("training_iteration", 0))
        row = {
            "trial_id": trial_id,
            "run_id": run.info.run_id if run else None,
            "run_name": run.info.run_name if run else None,
            "values": decode(domains, result.config),
            "epochs": epochs,
            "checkpoint_path": (ended or {}).get("checkpoint_path") or metrics.get("checkpoint_path"),
            metric: float(metrics[metric]) if metric in metrics else None,
        }
        if result.error is not None:
            row["status"] = "FAILED"
            if run is not None:
                client.set_tag(
                    run.info.run_id, "raymaas.error", f"{type(result.error).__name__}: {result.error}"[:5000]
                )
        else:
            row["status"] = "FINISHED"
            if run is not None and ended is None:  # its function did not end by itself: Tune stopped it
                row["stopped_early"] = "asha" if scheduler == "asha" else "time_budget_s"
        if run is not None:
            if row.get("stopped_early"):
                unit = "epoch" if "epoch" in metrics else "iteration"
                client.set_tag(run.info.run_id, STOPPED_EARLY_TAG, f"{row['stopped_early']} after {unit} {epochs}")
            # Tune's verdict is the trial's: RUNNING, its function was stopped (by the scheduler);
            # FAILED, the stop reached its Train run before its function ("ActorDiedError:
            # TrainController"); KILLED, the sweep was stopped while it ran, and it ended since.
            fresh = client.get_run(run.info.run_id)
            if fresh.info.status != row["status"]:
                client.set_terminated(run.info.run_id, status=row["status"])
                if row["status"] == "FINISHED" and "raymaas.error" in fresh.data.tags:
                    client.delete_tag(run.info.run_id, "raymaas.error")
        rows.append(row)
    return rows


def _log_parent(client, run_id: str, rows: list[dict], domains: dict[str, Domain], metric: str, best: dict) -> None:
    """The best trial's values and metric, the trials table, a plot per searched field."""
    from raymaas.tracking import plots
    from raymaas.tracking.runs import log_metrics, log_params

    log_params(client, run_id, {f"best.{k}": v for k, v in best["values"].items()})
    log_metrics(client, run_id, {f"best_{metric}": best[metric]}, step=0)
    client.set_tag(run_id, "raymaas.best_trial", best["trial_id"])
    client.set_tag(run_id, "raymaas.best_run_id", str(best["run_id"]))
    fields = list(domains)
    columns = ["trial_id", "run_id", "status", "epochs", "stopped_early", *fields, metric]
    data = [
        [
            r["trial_id"],
            r["run_id"],
            r["status"],
            r["epochs"],
            r.get("stopped_early", ""),
            *[_cell(r["values"][f]) for f in fields],
            r[metric],
        ]
        for r in rows
    ]
    client.log_dict(run_id, {"columns": columns, "data": data}, "trials.json")
    for field in fields:
        points = [(_cell(r["values"][field]), r[metric]) for r in rows if r[metric] is not None]
        figure = plots.param_figure(field, points, metric, log_x=domains[field].kind == "loguniform")
        client.log_figure(run_id, figure, f"plots/param_{field}.png")


def _trial_id_of_path(path: str) -> str | None:
    """The trial id in a trial folder's name (run_trial_<id>_<index>_<values>), for a trial
    that failed before its first report."""
    match = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", os.path.basename(path.rstrip("/")))
    return match.group(1) if match else None


def _cell(value):
    """A table cell: lists (layer sizes) as their text."""
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def _progress(metric: str, budget: int):
    """A Tune callback that prints the sweep's progress lines in the driver's output."""
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(metric)
            shown = f"  {metric} {value:.4g}" if isinstance(value, int | float) else ""
            if "epoch" in result:
                where = f"epoch {int(result['epoch']) + 1}/{budget}"
            else:
                where = f"iteration {result.get('training_iteration')}"
            print(f"raymaas: trial {trial.trial_id} {where}{shown}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            print(f"raymaas: trial {trial.trial_id} ended", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"raymaas: trial {trial.trial_id} failed: see {trial.path}", flush=True)

    return Progress()
