"""`python -m jobs.<kind> SPEC [--set key=value ...]`: the main of every job entrypoint.

Exit codes: 0 done, 1 training failed, 2 invalid spec (also when found on the cluster: a
node-local store on a multi-node cluster, data that does not fit the spec), 3 the cluster
lacks the resources, 130/143 stopped (Ctrl-C / `ray job stop`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raymaas.specs import EXIT_INVALID_SPEC, SpecError, load_spec, read_spec_file

EXIT_NO_RESOURCES = 3


def quiet_artifact_downloads() -> None:
    """No MLflow progress bars ("Downloading artifacts: 100%|...") in a job's or a command's
    output: its own lines say what happens. A user's MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR wins."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None, kind: str | None = None, sweep: bool = False) -> int:
    """Validate the spec, run its job (kind, else the spec's own), print the outcome. A spec
    with tune_config runs as a sweep (raymaas.sweep.job); sweep=True refuses any other."""
    from raymaas.kinds import UnknownKind, get_kind, kind_of

    quiet_artifact_downloads()
    prog = "python -m jobs.sweep" if sweep else f"python -m jobs.{kind}" if kind else "python -m jobs.run"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a sweep (a spec with tune_config and param_space) on Ray Tune."
        if sweep
        else f"Run a {kind or 'raymaas'} job from its YAML spec.",
        epilog=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("spec", help="YAML spec, e.g. jobs/specs/digits_debug.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec field")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    try:
        job_kind = get_kind(kind or kind_of(read_spec_file(Path(args.spec), args.set)))
        spec = load_spec(job_kind.load_spec_model(), args.spec, args.set)
        if sweep and not spec.is_sweep:
            raise SpecError(f"{args.spec} is not a sweep: it has no tune_config (run it with python -m jobs.run)")
    except (SpecError, UnknownKind) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID_SPEC

    if spec.is_sweep:
        from raymaas.sweep.job import run_sweep

        return report(lambda: run_sweep(spec, job_kind, address=args.address))
    return report(lambda: job_kind.load_run()(spec, address=args.address))


def report(job: Callable[[], Any]) -> int:
    """Run job() (run_job, run_sweep or run_predict) and print its outcome's lines; the exit
    code: 0 done, 2 a SpecError (checks that need the cluster or the data: storage, RLlib's own,
    file contents), 3 a ResourceError. Any other exception propagates (exit 1); a stopped job
    exits 130/143 from final_status."""
    from raymaas.runtime.cluster import ResourceError

    try:
        outcome = job()
    except ResourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NO_RESOURCES
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    print("\n".join(outcome.lines()), flush=True)
    return 0
