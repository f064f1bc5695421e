"""Score a file or folder with a registered model on Ray Data: `python -m jobs.predict SPEC [--set key=value ...]`.

The job `raymaas predict` runs, from a spec (`raymaas.batch.job.PredictSpec`), for
`ray job submit --working-dir . -- python -m jobs.predict jobs/specs/predict_digits.yaml`.
Exit codes: 0 done, 1 the job failed, 2 invalid spec (an unknown model, a missing column, a
wrong type, an output folder in the way), 3 the cluster lacks the resources, 130/143 stopped.
"""

import argparse
import sys

from raymaas.batch.job import PredictSpec, run_and_report
from raymaas.specs import EXIT_INVALID_SPEC, SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="YAML spec, e.g. jobs/specs/predict_digits.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec field")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(PredictSpec, args.spec, args.set)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    return run_and_report(spec, args.address)


if __name__ == "__main__":
    sys.exit(main())
