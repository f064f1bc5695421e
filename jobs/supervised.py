"""Train a supervised model on Ray Train: `python -m jobs.supervised SPEC [--set key=value ...]`.

Exit codes: 0 done, 1 training failed, 2 invalid spec, 3 the cluster lacks the resources,
130/143 stopped (Ctrl-C / `ray job stop`).
"""

from __future__ import annotations

import argparse
import sys

from raymaas.cluster import ResourceError
from raymaas.specs import EXIT_INVALID_SPEC, SpecError, load_spec
from raymaas.supervised import SupervisedSpec, run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.supervised", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="YAML spec, e.g. jobs/specs/digits_mlp.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec field")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(SupervisedSpec, args.spec, args.set)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    try:
        outcome = run_training(spec, address=args.address)
    except ResourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (SpecError, ValueError) as err:  # data problems found once the files are read
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    print(
        f"raymaas: {outcome.model_name} version {outcome.version}: val_accuracy {outcome.val_accuracy:.4f} "
        f"after {outcome.epochs} epochs; {'champion' if outcome.promoted else 'candidate'} ({outcome.promotion_reason})\n"
        f"raymaas: run {outcome.run_id} in {outcome.tracking_uri}\n"
        f"raymaas: see it with  mlflow ui --backend-store-uri {outcome.tracking_uri}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
