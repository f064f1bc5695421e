"""`raymaas predict MODEL INPUT OUTPUT`: score a file or folder with a registered model on Ray Data.

    raymaas predict digits-mlp@champion holdout.csv scores/ --passthrough id,label
    raymaas predict models:/churn/7 s3-export/ out/ --actors 4 --use-gpu auto --address HEAD:6379
    raymaas predict churn s3-export/ out/ --actors 1:8 --address HEAD:6379   (a pool that grows with the cluster)
    raymaas predict digit-images data/digit-images labels/   (a folder of PNG/JPEG files, an image model)

The options build a raymaas.batch.job.PredictSpec, the spec `python -m jobs.predict SPEC`
reads, and call raymaas.batch.job.run_predict. Exit codes: 0 done (rejected rows are reported,
not failures), 1 the job failed, 2 the job cannot run (an unknown model, a missing column, a
wrong type, an output folder in the way), 3 the cluster lacks the resources, 130/143 stopped.
"""

from __future__ import annotations

import argparse
import re
import sys

from raymaas.cli.args import positive_int
from raymaas.specs import EXIT_INVALID_SPEC, SpecError, parse_range


def cmd_predict(args: argparse.Namespace) -> int:
    """Validate the options as a PredictSpec, run the job here (joining --address if given)."""
    from raymaas.batch.job import PredictSpec, run_and_report
    from raymaas.specs import validate_spec

    try:
        spec = validate_spec(PredictSpec, spec_from_args(args), source="(raymaas predict options)")
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    return run_and_report(spec, args.address)


def spec_from_args(args: argparse.Namespace) -> dict:
    """The raw spec the options stand for (unset options keep the spec's defaults)."""
    data = {
        "name": args.name or job_name(args.model),
        "model": args.model,
        "input": args.input,
        "output": args.output,
        "passthrough_columns": _columns(args.passthrough),
        "overwrite": args.overwrite,
        "probabilities": args.probabilities,
        "mlflow": {k: v for k, v in (("run_name", args.run_name), ("experiment_name", args.experiment)) if v},
    }
    optional = {
        "format": args.format,
        "feature_columns": _columns(args.feature_columns) if args.feature_columns else None,
        "prediction_column": args.prediction_column,
        "batch_size": args.batch_size,
        "actors": args.actors,
        "concurrency": args.concurrency,  # the old --actors N: the spec warns and reads it as actors
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "use_gpu": {"true": True, "false": False}.get(args.use_gpu, args.use_gpu),
        "placement_timeout_s": args.placement_timeout_s,
        "object_store_memory": args.object_store_memory,
    }
    data.update({k: v for k, v in optional.items() if v is not None})
    return data


def actor_pool(text: str) -> int | tuple[int, int]:
    """--actors N or MIN:MAX, checked as the spec's `actors` is."""
    try:
        return parse_range(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def job_name(model: str) -> str:
    """predict-NAME for a model reference: the default run name's prefix."""
    name = model.removeprefix("models:/").split("@")[0].split("/")[0]
    return "predict-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model")


def _columns(values: list[str] | None) -> list[str]:
    return [c.strip() for v in values or () for c in v.split(",") if c.strip()]


def add_parser(sub) -> argparse.ArgumentParser:
    """The `predict` command on the `raymaas` parser's subparsers."""
    parser = sub.add_parser(
        "predict",
        help="score a Parquet/CSV file or folder, or a folder of images, with a registered model on Ray Data",
        description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2].replace("\n", " "),
    )
    configure(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `raymaas predict` (also those of the standalone `python -m raymaas.cli.predict`)."""
    parser.add_argument("model", help="NAME (its champion), NAME@ALIAS, NAME/VERSION, or a models:/ URI of those")
    parser.add_argument("input", help="a Parquet or CSV file, or a folder of them, or a folder of PNG/JPEG images")
    parser.add_argument("output", help="Parquet folder to write (rejected rows go to OUTPUT-errors beside it)")
    parser.add_argument(
        "--passthrough",
        action="append",
        metavar="COL[,COL...]",
        help="input columns copied to the output as they are, e.g. an id (repeatable; not for images, whose "
        "output rows name them by path)",
    )
    parser.add_argument(
        "--feature-columns",
        action="append",
        metavar="COL[,COL...]",
        help="tensor-signature models: the columns that form the tensor, in order "
        "(default: every column but the pass-through ones)",
    )
    parser.add_argument("--batch-size", type=positive_int, metavar="N", help="rows per model call (default: 4096)")
    pool = parser.add_mutually_exclusive_group()
    pool.add_argument(
        "--actors",
        type=actor_pool,
        metavar="N|MIN:MAX",
        help="model actors, each loading the model once: N, or a pool Ray Data grows from MIN to MAX while rows "
        "wait; the job starts once MIN fit, an autoscaling cluster adds nodes for the rest (default: 2)",
    )
    pool.add_argument("--concurrency", type=positive_int, metavar="N", help="deprecated: --actors N")
    parser.add_argument("--num-cpus", type=float, metavar="N", help="CPUs per model actor (default: 1)")
    parser.add_argument(
        "--num-gpus", type=float, metavar="N", help="GPUs per model actor (default: 1 if GPUs are used, else 0)"
    )
    parser.add_argument(
        "--use-gpu", choices=("auto", "true", "false"), help="auto (default): GPUs if the cluster has any"
    )
    parser.add_argument(
        "--prediction-column", metavar="NAME", help="name of the prediction column (default: prediction)"
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also class probabilities (models whose signature declares a `probabilities` param)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that is not empty")
    parser.add_argument(
        "--run-name",
        metavar="NAME",
        help="MLflow run name; the name of an interrupted run continues it, skipping the files it finished",
    )
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default: the model's own)")
    parser.add_argument("--name", help="job name, the default run name's prefix (default: predict-MODEL)")
    parser.add_argument(
        "--format", choices=("auto", "parquet", "csv", "images"), help="input format (default: from the names)"
    )
    parser.add_argument(
        "--object-store-memory", metavar="SIZE", help="object store of the local Ray, e.g. 100MB (default: Ray's)"
    )
    parser.add_argument(
        "--placement-timeout-s",
        type=float,
        metavar="S",
        help="seconds to wait for the actors' resources before exit 3 (default: 10)",
    )
    parser.add_argument(
        "--address", metavar="ADDRESS", help="Ray cluster to join, HOST:6379 (default: RAY_ADDRESS, else a local Ray)"
    )
    parser.set_defaults(func=cmd_predict)


def main(argv: list[str] | None = None) -> int:
    """`python -m raymaas.cli.predict ...`: the command on its own, as `raymaas predict ...`."""
    parser = argparse.ArgumentParser(prog="raymaas predict", description=__doc__.split("\n\n")[0])
    configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
