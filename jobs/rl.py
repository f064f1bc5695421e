"""Train an RLlib policy: `python -m jobs.rl SPEC [--set key=value ...]`.

Exit codes: 0 done, 1 training failed, 2 invalid spec, 3 the cluster lacks the resources,
130/143 stopped (Ctrl-C / `ray job stop`).
"""

from __future__ import annotations

import argparse
import sys

from raymaas.cluster import ResourceError
from raymaas.rl import RLSpec, run_rl
from raymaas.specs import EXIT_INVALID_SPEC, SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.rl", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="YAML spec, e.g. jobs/specs/cartpole_ppo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec field")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(RLSpec, args.spec, args.set)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    try:
        outcome = run_rl(spec, address=args.address)
    except ResourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except SpecError as err:  # RLlib's own checks of the assembled config
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    ev = outcome.evaluation
    print(
        f"raymaas: {outcome.model_name} version {outcome.version}: greedy return {ev.mean:.1f} "
        f"(std {ev.std:.1f}, min {ev.min:.0f}, {len(ev.returns)} episodes) after {outcome.env_steps} env steps, "
        f"{outcome.iterations} iterations, {outcome.training_seconds:.1f}s; stopped by {outcome.stopped_by}; "
        f"{'champion' if outcome.promoted else 'candidate'} ({outcome.promotion_reason})\n"
        f"raymaas: run {outcome.run_id} in {outcome.tracking_uri}\n"
        f"raymaas: see it with  mlflow ui --backend-store-uri {outcome.tracking_uri}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
