"""The `raymaas` command: train a spec here or on a cluster, list runs and models, promote, explain.

    raymaas train jobs/specs/digits_debug.yaml                            # the driver runs here
    raymaas train jobs/specs/digits_mlp.yaml --address http://HEAD:8265   # through Ray's job API
    raymaas runs | raymaas models | raymaas promote NAME VERSION | raymaas explain
    raymaas rollout NAME --canary 10 | --promote | --abort; raymaas rollout status NAME   # on live traffic

Every command reads the MLflow store that jobs write to (MLFLOW_TRACKING_URI, else the
embedded SQLite store of the project; see raymaas.paths). Job kinds come from raymaas.kinds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from raymaas import paths
from raymaas.cli.args import positive_int
from raymaas.cli.predict import add_parser as add_predict_parser
from raymaas.cli.rollout import add_parser as add_rollout_parser
from raymaas.kinds import KINDS, SWEEP_ENTRYPOINT, JobKind, UnknownKind, get_kind, kind_of
from raymaas.runtime.submit import SubmitError, job_args, submit_job
from raymaas.serving.ingress import INGRESSES
from raymaas.specs import EXIT_INVALID_SPEC, SpecError, describe_fields, load_spec, read_spec_file

# Shown by `raymaas runs`: the first of these a run has (each kind's gate metric, then RL's
# training return for a run that has not evaluated yet), else its first metric by name.
MAIN_METRICS = (*dict.fromkeys(k.gate_metric for k in KINDS.values()), "val_rmse", "episode_return_mean")


class CliError(Exception):
    """A failure the user can fix; main() prints it and exits with exit_code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    """Validate the spec here, then run its job locally or submit it to a cluster's job API."""
    spec_path = Path(args.spec)
    try:
        kind = get_kind(job_kind(spec_path, args.set))
    except UnknownKind as err:
        raise CliError(f"{err} in {spec_path}", EXIT_INVALID_SPEC) from None
    try:
        spec = validate_job_spec(kind, spec_path, args.set)
    except SpecError as err:
        raise CliError(str(err), EXIT_INVALID_SPEC) from None
    try:
        root = paths.project_root(spec_path)
    except paths.ProjectNotFound as err:
        raise CliError(str(err)) from None
    module = SWEEP_ENTRYPOINT if spec.is_sweep else kind.entrypoint
    if not (root / (module.replace(".", "/") + ".py")).is_file():
        raise CliError(f"no entrypoint {module} in {root} for {kind.name} jobs")
    if args.address:
        try:
            return submit_job(args.address, root, module, spec_path, args.set)
        except SubmitError as err:
            raise CliError(str(err), err.exit_code) from None
    return run_local(root, module, spec_path, args.set)


def job_kind(spec_path: Path, overrides: Sequence[str] = ()) -> str:
    """The spec's kind (raymaas.kinds.kind_of); a spec that cannot be read counts as supervised,
    whose validation then reports the problem in full."""
    try:
        return kind_of(read_spec_file(spec_path, overrides))
    except SpecError:
        return "supervised"


def validate_job_spec(kind: JobKind, spec_path: Path, overrides: Sequence[str]):
    """Validate exactly what the job's entrypoint will, so a bad spec never reaches a cluster."""
    return load_spec(kind.load_spec_model(), spec_path, overrides)


def run_local(root: Path, module: str, spec_path: Path, overrides: Sequence[str]) -> int:
    """`python -m MODULE SPEC --set ...` with this Python, output streamed; its exit code."""
    cmd = [sys.executable, *job_args(module, str(spec_path), overrides)]
    env = dict(os.environ)
    if root != Path.cwd().resolve():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The job got the same Ctrl-C and marks its MLflow run KILLED before it exits.
        return proc.wait()


# --------------------------------------------------------------------------- runs and models


def cmd_runs(args: argparse.Namespace) -> int:
    """Print the most recent MLflow runs, newest first."""
    from raymaas.tracking.store import get_client

    client = get_client()
    if args.experiment:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise CliError(f"no experiment named {args.experiment!r} in {client.tracking_uri}")
        experiments = [exp]
    else:
        experiments = client.search_experiments()
    names = {e.experiment_id: e.name for e in experiments}
    runs = (
        client.search_runs(list(names), order_by=["attributes.start_time DESC"], max_results=args.limit)
        if names
        else []
    )
    if not runs:
        print(f"no runs in {client.tracking_uri}")
        return 0
    rows = []
    for run in runs:
        info, metrics = run.info, run.data.metrics
        metric = next((m for m in MAIN_METRICS if m in metrics), min(metrics, default=None))
        rows.append(
            [
                info.run_name,
                names.get(info.experiment_id, info.experiment_id),
                info.status,
                format_time(info.start_time),
                format_duration(info.start_time, info.end_time),
                f"{metric}={metrics[metric]:.4g}" if metric else "",
                info.run_id,
            ]
        )
    print(format_table(["run", "experiment", "status", "started", "duration", "metric", "run id"], rows))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print every version of every registered model, with aliases and the gate's decision."""
    from raymaas.tracking.registry import DECISION_TAG, GATE_METRIC_TAG, GATE_VALUE_TAG
    from raymaas.tracking.store import get_client

    client = get_client()
    rows = []
    for model in _all_registered_models(client):
        # search_model_versions leaves out aliases; the registered model maps alias -> version.
        aliases: dict[str, list[str]] = {}
        for alias, version in sorted(model.aliases.items()):
            aliases.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name='{model.name}'")
        for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
            metric, value = mv.tags.get(GATE_METRIC_TAG), mv.tags.get(GATE_VALUE_TAG)
            rows.append(
                [
                    model.name,
                    mv.version,
                    ",".join(aliases.get(str(mv.version), [])),
                    f"{metric}={_format_number(value)}" if metric and value is not None else "",
                    mv.tags.get(DECISION_TAG, ""),
                    format_time(mv.creation_timestamp),
                ]
            )
    if not rows:
        print(f"no registered models in {client.tracking_uri}")
        return 0
    print(format_table(["model", "version", "aliases", "gate", "decision", "created"], rows))
    return 0


def _all_registered_models(client):
    token = None
    while True:
        page = client.search_registered_models(order_by=["name ASC"], page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def cmd_promote(args: argparse.Namespace) -> int:
    """Move the `champion` alias to a version by hand."""
    from mlflow.exceptions import MlflowException

    from raymaas.tracking.registry import CHAMPION, promote
    from raymaas.tracking.store import get_client

    client = get_client()
    try:
        client.get_registered_model(args.name)
    except MlflowException:
        raise CliError(f"no registered model named {args.name!r} in {client.tracking_uri}") from None
    try:
        before = client.get_model_version_by_alias(args.name, CHAMPION).version
    except MlflowException:
        before = None
    try:
        promote(client, args.name, args.version)
    except MlflowException as err:
        raise CliError(f"cannot promote {args.name} version {args.version}: {err.message}") from None
    was = f" (was version {before})" if before is not None else ""
    print(f"raymaas: {args.name}@{CHAMPION} is now version {args.version}{was}")
    return 0


# --------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Publish registered models with Ray Serve: the applications of a Serve config file
    (default serve/config.yaml), or models named NAME (its champion), NAME@ALIAS or
    NAME/VERSION (pinned: a version is served until redeployed), or their models:/ URIs, each
    its own application at /models/NAME with the default settings, plus the index at /. Start a local Ray (or join --address), deploy, print the endpoints,
    serve until Ctrl-C."""
    from raymaas.serving.deploy import check_models, deploy_config, deploy_models, serve_targets

    try:
        config_path, models = serve_targets(args.targets)
    except (ValueError, FileNotFoundError) as err:
        raise CliError(str(err), EXIT_INVALID_SPEC) from None
    tracking_uri = paths.tracking_uri()
    if models:
        try:  # before anything starts
            check_models(models, tracking_uri)
        except LookupError as err:
            raise CliError(str(err), EXIT_INVALID_SPEC) from None
    else:
        config = Path(config_path)
        if not config.is_file():
            raise CliError(f"Serve config {config} does not exist", EXIT_INVALID_SPEC)
        # import_path `serve.app:...` resolves against the project folder
        try:
            sys.path.insert(0, str(paths.project_root(config)))
        except paths.ProjectNotFound:
            pass  # an import path of an installed package needs no project folder
    from ray import serve

    from raymaas.runtime.cluster import connect
    from raymaas.serving.ingress import prepare_local_ingress

    # Ctrl-C stops serving also where a shell without job control started `raymaas serve` in
    # the background with SIGINT ignored (Python keeps an inherited ignore).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    joining = args.address or os.environ.get("RAY_ADDRESS")
    if joining and args.ingress:
        raise CliError(
            "--ingress applies to the local Ray that `raymaas serve` starts; a cluster's Serve takes "
            "its ingress from the environment its nodes were started with (RAY_SERVE_ENABLE_HA_PROXY=1)",
            EXIT_INVALID_SPEC,
        )
    cleanup = (lambda: None) if joining else prepare_local_ingress(args.ingress or "haproxy")
    try:
        connect(args.address)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C (after ray.init, which sets its own)
        if models:
            deployed = deploy_models(models, http_host=args.host, http_port=args.port, tracking_uri=tracking_uri)
        else:
            try:
                deployed = deploy_config(str(config), http_host=args.host, http_port=args.port)
            except (ValueError, TypeError) as err:  # args that fail their pydantic model, bad import paths
                raise CliError(f"cannot deploy {config}: {err}", EXIT_INVALID_SPEC) from None
        for app in deployed:
            print(f"raymaas: application {app.name!r} at {app.url or app.base_url}/", flush=True)
        if deployed:
            import ray

            exports = sorted({n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]})
            print(
                f"raymaas: GET {deployed[0].base_url}/models lists the published models, "
                f"{deployed[0].base_url}/docs the routes, /models/NAME/monitor a model's drift and live "
                f"metrics; Prometheus scrapes each node's metrics port ({', '.join(map(str, exports))} here); "
                "Ctrl-C stops serving",
                flush=True,
            )
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("raymaas: stopping the applications", flush=True)
            if joining:  # the cluster's Serve keeps running for others
                for app in deployed:
                    serve.delete(app.name)
            else:  # all of it is ours: Serve stops every application at once
                serve.shutdown()
    finally:
        if not joining:  # the local Ray, Serve and HAProxy all started here, and end here
            import ray

            ray.shutdown()
            cleanup()
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """Print the monitor report of a published model (GET /models/NAME/monitor): its input
    window and drift against the training data, and its live performance from feedback.
    The API key, where the endpoint wants one, comes from RAYMAAS_API_KEY."""
    from raymaas.monitoring.report import API_KEY_ENV, fetch_report, format_report

    try:
        report = fetch_report(args.url, args.name, os.environ.get(API_KEY_ENV))
    except LookupError as err:
        raise CliError(str(err)) from None
    print(json.dumps(report, indent=2) if args.json else format_report(report, top=args.top))
    return 0


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the digits classifier (Ray Train), PPO and DQN on CartPole (RLlib), each tracked,
    registered and gated in MLflow; publish the three champions with Ray Serve and query them
    over HTTP. Runs on the embedded default (a local Ray, the project's MLflow store)."""
    from raymaas.demo import DemoError, run_demo

    try:
        return run_demo(
            "debug" if args.debug else "full", keep_serving=args.keep_serving, host=args.host, port=args.port
        )
    except DemoError as err:
        raise CliError(str(err)) from None
    except KeyboardInterrupt:
        print("raymaas demo: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- explain


def cmd_explain(args: argparse.Namespace) -> int:
    """Print every field of a job kind's spec (or of a batch-scoring spec: `predict`) with its
    default and description."""
    if args.kind == "predict":  # not a training kind: no gate, no row in the kinds table
        from raymaas.batch.job import PredictSpec

        rows = [[name, default, description] for name, default, description in describe_fields(PredictSpec)]
        print(
            "fields of a predict spec (python -m jobs.predict SPEC; raymaas predict takes the same as options)\n"
            "(YAML keys; override any with --set FIELD=VALUE):\n"
        )
        print(format_table(["field", "default", "description"], rows))
        return 0
    kind = get_kind(args.kind)
    rows = [[name, default, description] for name, default, description in describe_fields(kind.load_spec_model())]
    print(
        f"fields of a {kind.name} spec: {kind.title}; gate {kind.gate_metric} "
        f"({'higher' if kind.higher_is_better else 'lower'} is better)\n"
        "(YAML keys; override any with --set FIELD=VALUE):\n"
    )
    print(format_table(["field", "default", "description"], rows))
    return 0


# --------------------------------------------------------------------------- sample-data


def cmd_sample_data(args: argparse.Namespace) -> int:
    """Write a generated table to a Parquet or CSV file (by its suffix), to train a shipped
    spec on: `loans` is what jobs/specs/loans.yaml reads (numbers with missing values, text
    and integer categories, a boolean, the label `default`); `load` an hourly electricity
    load with the temperature, rows shuffled (jobs/specs/load_lstm.yaml forecasts it);
    `waveforms` labelled sensor traces in a list column, Parquet only
    (jobs/specs/waveforms_gru.yaml); `transactions` card payments, a few of them fraud
    (jobs/specs/transactions_autoencoder.yaml, task anomaly). `digit-images` is a folder, not a
    table: scikit-learn's bundled digits as 16x16 grayscale PNGs, one sub-folder per digit
    (jobs/specs/digit_images_cnn.yaml); --rows caps the number of images (1797 at most)."""
    from pathlib import Path

    from raymaas.supervised.data import make_load_series, make_loans, make_transactions, make_waveforms

    path = Path(args.output)
    if args.name == "digit-images":
        from raymaas.supervised.images import write_digit_images

        if path.exists() and not path.is_dir():
            raise CliError(f"{args.output}: digit-images are written to a folder, and this is a file", exit_code=2)
        n = write_digit_images(path, args.rows)
        print(f"raymaas: wrote {n} digit images (16x16, grayscale PNG) to {path}/<digit>/")
        return 0
    if path.suffix.lower() not in (".parquet", ".csv"):
        raise CliError(f"{args.output}: name a .parquet or .csv file", exit_code=2)
    if args.name == "waveforms" and path.suffix.lower() == ".csv":
        raise CliError(f"{args.output}: waveforms are a list column, which CSV cannot hold: name a .parquet file", 2)
    make = {
        "loans": make_loans,
        "load": make_load_series,
        "waveforms": make_waveforms,
        "transactions": make_transactions,
    }[args.name]
    frame = make(args.rows, seed=args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    print(f"raymaas: wrote {len(frame)} rows of {args.name} to {path}")
    return 0


# --------------------------------------------------------------------------- up / down


def cmd_up(args: argparse.Namespace) -> int:
    """Start a Ray head and an MLflow tracking server on this machine (127.0.0.1 only), for
    `ray job submit` and `raymaas train --address`; print their addresses. `raymaas down` stops them."""
    from raymaas.runtime import localcluster

    home = Path(args.home).expanduser() if args.home else paths.raymaas_home()
    try:
        cluster = localcluster.start(
            home,
            num_cpus=args.num_cpus,
            port=args.port,
            dashboard_port=args.dashboard_port,
            mlflow_port=args.mlflow_port,
            # a password in the URI goes to the server's environment only; printed and saved masked
            backend_store_uri=args.backend_store_uri or os.environ.get(localcluster.BACKEND_STORE_ENV),
            artifacts_destination=args.artifacts_destination,
        )
    except RuntimeError as err:
        raise CliError(str(err)) from None
    store = f"store {cluster.backend_store}, artifacts {cluster.artifacts_destination}" if cluster.backend_store else ""
    print(
        f"raymaas: Ray head            {cluster.gcs_address}\n"
        f"raymaas: dashboard, job API  {cluster.dashboard_url}\n"
        f"raymaas: MLflow server       {cluster.mlflow_url}   ({store or f'store and artifacts in {cluster.home}'})\n"
        f"raymaas: Prometheus metrics  {cluster.metrics_url}   (Ray's and every endpoint's)\n"
        f"raymaas: for this shell:\n"
        + "".join(f"  {line}\n" for line in cluster.exports())
        + "raymaas: then: ray job submit --working-dir . -- python -m jobs.supervised jobs/specs/digits_mlp.yaml\n"
        f"raymaas:    or: raymaas train jobs/specs/digits_mlp.yaml --address {cluster.dashboard_url}\n"
        f"raymaas: stop with: raymaas down" + (f" --home {cluster.home}" if args.home else ""),
        flush=True,
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the Ray head and MLflow server that `raymaas up` started, by PID; nothing else."""
    from raymaas.runtime import localcluster

    home = Path(args.home).expanduser() if args.home else paths.raymaas_home()
    if localcluster.read_state(home.resolve()) is None:
        print(f"raymaas: nothing to stop (no {localcluster.STATE_FILE} in {home})")
        return 0
    pids = localcluster.stop(home)
    print(f"raymaas: stopped the Ray head and MLflow server of {home} ({len(pids)} processes)")
    return 0


# --------------------------------------------------------------------------- helpers


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as plain text columns, left-aligned, under the header and a rule."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    cells.insert(1, ["-" * w for w in widths])
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def format_time(millis: int | None) -> str:
    """An MLflow timestamp (ms since the epoch) as local time."""
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(start_ms: int | None, end_ms: int | None) -> str:
    """How long a run took, or has been running (with a trailing +)."""
    if not start_ms:
        return ""
    seconds = int(((end_ms or time.time() * 1000) - start_ms) / 1000)
    if seconds < 60:
        text = f"{seconds}s"
    elif seconds < 3600:
        text = f"{seconds // 60}m{seconds % 60:02d}s"
    else:
        text = f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return text if end_ms else f"{text}+"


def _format_number(raw: str) -> str:
    try:
        return f"{float(raw):.4f}"
    except ValueError:
        return raw


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raymaas",
        description="Train models on Ray, track them in MLflow, move the registry's champion alias.",
        epilog="The MLflow store is MLFLOW_TRACKING_URI, else mlflow.db in the project folder (RAYMAAS_HOME).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="validate a spec, then run its job here or on a cluster",
        description="Validate a job spec, then run its job: locally (`python -m jobs.<kind> SPEC`) "
        "or, with --address, through the cluster's Ray job API with the project's code. "
        "Exit codes: 0 done, 2 invalid spec, 3 the cluster lacks the resources (the job's own verdicts, "
        "also when found on the cluster), 1 any other failure.",
    )
    train.add_argument("spec", help="YAML spec, e.g. jobs/specs/digits_debug.yaml")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. train_loop_config.epochs=3 (repeatable)",
    )
    train.add_argument(
        "--address",
        metavar="URL",
        help="Ray dashboard of the cluster to submit to, e.g. http://127.0.0.1:8265 "
        "(default: run the job's driver here; it joins RAY_ADDRESS if set, else starts a local Ray)",
    )
    train.set_defaults(func=cmd_train)

    add_predict_parser(sub)
    add_rollout_parser(sub)

    runs = sub.add_parser("runs", help="list recent MLflow runs", description=cmd_runs.__doc__)
    runs.add_argument("--experiment", metavar="NAME", help="only this experiment (default: all)")
    runs.add_argument("--limit", type=positive_int, default=20, metavar="N", help="at most N runs (default: 20)")
    runs.set_defaults(func=cmd_runs)

    models = sub.add_parser("models", help="list registered model versions", description=cmd_models.__doc__)
    models.set_defaults(func=cmd_models)

    promote = sub.add_parser("promote", help="move the champion alias by hand", description=cmd_promote.__doc__)
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version", help="model version to become champion")
    promote.set_defaults(func=cmd_promote)

    serve_cmd = sub.add_parser("serve", help="publish registered models with Ray Serve", description=cmd_serve.__doc__)
    serve_cmd.add_argument(
        "targets",
        nargs="*",
        metavar="CONFIG | MODEL",
        help="a Serve config file (default: serve/config.yaml), or registered models: NAME (its champion), "
        "NAME@ALIAS, NAME/VERSION or their models:/ URIs, each published at /models/NAME with the default settings",
    )
    serve_cmd.add_argument(
        "--address", metavar="ADDRESS", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"
    )
    serve_cmd.add_argument("--host", help="HTTP host of the ingress (default: the config's, else 127.0.0.1)")
    serve_cmd.add_argument("--port", type=positive_int, help="HTTP port (default: the config's, else 8000)")
    serve_cmd.add_argument(
        "--ingress",
        choices=INGRESSES,
        help="what takes the HTTP requests on a local Ray: Ray's HAProxy, which hands each one "
        "straight to a replica (default), or Serve's Python proxy",
    )
    serve_cmd.set_defaults(func=cmd_serve)

    monitor = sub.add_parser(
        "monitor", help="drift and live performance of a published model", description=cmd_monitor.__doc__
    )
    monitor.add_argument("name", help="published model name (as in /models/NAME)")
    monitor.add_argument(
        "--url", default="http://127.0.0.1:8000", help="where Serve answers (default: http://127.0.0.1:8000)"
    )
    monitor.add_argument("--top", type=positive_int, default=5, help="features shown, highest PSI first (default: 5)")
    monitor.add_argument("--json", action="store_true", help="the report as the endpoint returns it")
    monitor.set_defaults(func=cmd_monitor)

    demo = sub.add_parser(
        "demo", help="train, track, register, serve and query everything, end to end", description=cmd_demo.__doc__
    )
    demo.add_argument("--keep-serving", action="store_true", help="leave the endpoints up until Ctrl-C")
    demo.add_argument(
        "--debug",
        action="store_true",
        help="the small debug specs: the whole path in a few minutes (policies will not solve CartPole)",
    )
    demo.add_argument("--host", default="127.0.0.1", help="HTTP host of the endpoints (default: 127.0.0.1)")
    demo.add_argument("--port", type=positive_int, default=8000, help="HTTP port of the endpoints (default: 8000)")
    demo.set_defaults(func=cmd_demo)

    explain = sub.add_parser(
        "explain", help="list a spec's fields, defaults and meaning", description=cmd_explain.__doc__
    )
    explain.add_argument(
        "kind",
        nargs="?",
        default="supervised",
        choices=[*sorted(KINDS), "predict"],
        help="job kind, or predict for batch scoring (default: supervised)",
    )
    explain.set_defaults(func=cmd_explain)

    sample = sub.add_parser(
        "sample-data",
        help="write a generated table (or image folder) to train a shipped spec on",
        description=cmd_sample_data.__doc__,
    )
    sample.add_argument(
        "name",
        choices=["loans", "load", "waveforms", "transactions", "digit-images"],
        help="the table: loans (jobs/specs/loans.yaml), load (load_lstm.yaml), waveforms (waveforms_gru.yaml), "
        "transactions (transactions_autoencoder.yaml); or digit-images, a folder (digit_images_cnn.yaml)",
    )
    sample.add_argument("output", help="the .parquet or .csv file to write (digit-images: the folder)")
    sample.add_argument(
        "--rows", type=positive_int, default=20_000, help="rows to write (default: 20000; digit-images: all 1797)"
    )
    sample.add_argument("--seed", type=int, default=0, help="the generator's seed (default: 0)")
    sample.set_defaults(func=cmd_sample_data)

    up = sub.add_parser(
        "up", help="start a local Ray head and MLflow server for `ray job submit`", description=cmd_up.__doc__
    )
    up.add_argument(
        "--home", metavar="DIR", help="RAYMAAS_HOME: MLflow store, artifacts, checkpoints (default: the project folder)"
    )
    up.add_argument("--num-cpus", type=positive_int, metavar="N", help="CPUs the head offers (default: all)")
    up.add_argument("--port", type=positive_int, help="Ray GCS port (default: 6379 if free)")
    up.add_argument(
        "--dashboard-port", type=positive_int, help="Ray dashboard and job API port (default: 8265 if free)"
    )
    up.add_argument("--mlflow-port", type=positive_int, help="MLflow server port (default: 5000 if free)")
    up.add_argument(
        "--backend-store-uri",
        metavar="URI",
        help="the MLflow server's database, e.g. postgresql://USER@HOST:5432/DB with the password in PGPASSWORD "
        "(default: $MLFLOW_BACKEND_STORE_URI, else a SQLite file in --home)",
    )
    up.add_argument(
        "--artifacts-destination",
        metavar="URI",
        help="where the MLflow server keeps the artifacts it serves over HTTP: a folder or s3://BUCKET/PATH "
        "(default: mlartifacts in --home)",
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop what `raymaas up` started", description=cmd_down.__doc__)
    down.add_argument("--home", metavar="DIR", help="the --home given to `raymaas up` (default: the project folder)")
    down.set_defaults(func=cmd_down)
    return parser


def main(argv: list[str] | None = None) -> int:
    from raymaas.runtime.entrypoint import quiet_artifact_downloads

    quiet_artifact_downloads()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
