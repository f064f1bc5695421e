"""`raymaas rollout`: start, end and inspect a progressive rollout of a registered version.

    raymaas rollout NAME --canary 10 [--steps 10,25,50,100] [--version N] [--shadow] [--min-labels 100 ...]
    raymaas rollout NAME --promote | --abort
    raymaas rollout status NAME [--url http://127.0.0.1:8000] [--json]

The rollout's state lives in the Model Registry (raymaas.tracking.rollout): a serving endpoint
picks it up at its next registry poll, routes the share to the candidate and moves the share,
the `champion` alias or the candidate's rejection by raymaas.monitoring.rollout's decisions.
Exit codes: 0 done, 1 the rollout cannot start or end as asked, 2 invalid options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime

from raymaas.monitoring.report import fetch_json
from raymaas.specs import EXIT_INVALID_SPEC, SpecError

# The RolloutPolicy fields that are options (--min-labels ...); those left out keep the policy's defaults.
POLICY_FIELDS = (
    "steps",
    "min_labels",
    "max_regression",
    "confidence",
    "max_error_rate_increase",
    "max_latency_ratio",
    "min_requests",
)


def cmd_rollout(args: argparse.Namespace) -> int:
    """Start a rollout (--canary), end one (--promote, --abort), or show one (status NAME)."""
    # mlflow (through raymaas.tracking) is imported here, not at the top: the CLI's start-up.
    from raymaas.tracking.rollout import RolloutError

    if args.name is not None and args.target != "status":
        return _invalid(f"expected NAME or `status NAME`, got {args.target} {args.name}")
    status = args.name is not None
    given = {
        option: getattr(args, option.strip("-").replace("-", "_")) not in (None, False)
        for option in ("--canary", "--promote", "--abort", "--version", "--shadow", "--url", "--json")
    }
    policy_given = [f"--{k.replace('_', '-')}" for k in POLICY_FIELDS if getattr(args, k) is not None]
    try:
        if status:
            extra = [o for o in ("--canary", "--promote", "--abort", "--version", "--shadow") if given[o]]
            if extra or policy_given:
                return _invalid(f"`rollout status` only reads: {', '.join(extra + policy_given)} not allowed")
            return show_status(args.name, args.url, args.json)
        if given["--url"] or given["--json"]:
            return _invalid("--url and --json go with `raymaas rollout status NAME`")
        name = args.target
        if args.promote or args.abort:
            extra = policy_given + [o for o in ("--version", "--shadow") if given[o]]
            if extra:
                return _invalid(f"{', '.join(extra)} only go with --canary (starting a rollout)")
            return end(name, "promote" if args.promote else "abort")
        if args.canary is None:
            return _invalid(
                f"say what to do: `raymaas rollout {name} --canary PCT`, --promote, --abort, "
                f"or `raymaas rollout status {name}`"
            )
        return start(args)
    except RolloutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def start(args: argparse.Namespace) -> int:
    """Validate the policy options, start the rollout, print one line."""
    from raymaas.monitoring.rollout import RolloutPolicy
    from raymaas.specs import validate_spec
    from raymaas.tracking.rollout import start_rollout
    from raymaas.tracking.store import get_client

    raw = {field: getattr(args, field) for field in POLICY_FIELDS if getattr(args, field) is not None}
    if "steps" in raw:
        raw["steps"] = [s.strip() for s in raw["steps"].split(",")]  # pydantic names a step that is not a number
    try:
        policy = validate_spec(RolloutPolicy, raw, source="(raymaas rollout options)")
    except SpecError as err:
        return _invalid(str(err))
    state = start_rollout(
        get_client(), args.target, policy, canary=args.canary, version=args.version, shadow=args.shadow
    )
    steps = ",".join(map(str, state.policy.steps))
    if state.mode == "shadow":
        what = f"a copy of {state.share}% of requests, answers recorded, not returned"
    else:
        what = f"{state.share}% of requests (sticky per x-raymaas-key)"
    print(
        f"raymaas: rollout of {state.name} version {state.version} started: {what}, steps {steps}, "
        f"against champion version {state.champion}; the endpoint picks it up at its next registry poll; "
        f"MLflow run {state.run_id}"
    )
    return 0


def end(name: str, action: str) -> int:
    """Promote or abort the active rollout by hand; print the outcome."""
    from raymaas.tracking.rollout import end_rollout
    from raymaas.tracking.store import get_client

    state = end_rollout(get_client(), name, action)
    if state.status == "promoted":
        print(
            f"raymaas: {name} version {state.version} promoted by hand: {name}@champion is now version "
            f"{state.version} (was version {state.champion}); MLflow run {state.run_id}"
        )
    else:
        print(
            f"raymaas: rollout of {name} version {state.version} aborted: every request goes to champion "
            f"version {state.champion} again; MLflow run {state.run_id}"
        )
    return 0


def show_status(name: str, url: str | None, as_json: bool) -> int:
    """Print the last rollout of name from the registry and, with url, the endpoint's live figures."""
    from raymaas.monitoring.report import API_KEY_ENV
    from raymaas.tracking.rollout import last_rollout
    from raymaas.tracking.store import get_client

    state = last_rollout(get_client(), name)
    live, live_error = None, None
    if url:
        try:
            live = fetch_live(url, name, os.environ.get(API_KEY_ENV))
        except LookupError as err:
            live_error = str(err)
    if as_json:
        doc = {"rollout": state.to_dict() if state else None}
        if url:
            doc.update(live=live, live_error=live_error)
        print(json.dumps(doc, indent=2))
        return 0
    if state is None:
        print(f"raymaas: {name} has had no rollout (start one with `raymaas rollout {name} --canary PCT`)")
    else:
        print(format_state(state))
    if live is not None:
        print(f"  live ({url.rstrip('/')}/models/{name}/rollout):")
        for key, value in live.items():
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
            print(f"    {key}: {shown}")
    elif live_error is not None:
        print(f"  live: {live_error}")
    return 0


def format_state(state) -> str:
    """A few lines: status, share and step, versions, policy, last reason, run."""
    steps = ",".join(map(str, state.policy.steps))
    share = f"on a copy of {state.share}%" if state.mode == "shadow" else f"at {state.share}%"
    step = f"step {state.step_index + 1} of {len(state.policy.steps)} ({steps})"
    policy = ", ".join(f"{k}={v}" for k, v in state.policy.model_dump().items() if k != "steps")
    started = datetime.fromtimestamp(state.started_at).strftime("%Y-%m-%d %H:%M:%S")
    return "\n".join(
        [
            f"{state.name} version {state.version}: {state.status}, {state.mode} {share} of requests, {step}, "
            f"against champion version {state.champion}",
            f"  policy: {policy}",
            f"  last reason: {state.reason}",
            f"  started {started}, {state.decisions} decision(s) logged to MLflow run {state.run_id}",
        ]
    )


def fetch_live(base_url: str, name: str, api_key: str | None = None, timeout: float = 10) -> dict:
    """GET BASE/models/NAME/rollout; LookupError (one line: why) if it refuses or nothing answers."""
    return fetch_json(base_url, name, "rollout", api_key, timeout)


def _invalid(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_INVALID_SPEC


def percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole percentage, got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {value}")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    """The `rollout` command on the `raymaas` parser's subparsers."""
    parser = sub.add_parser(
        "rollout",
        help="roll a registered version out on live traffic against the champion, end or show a rollout",
        description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2].replace("\n", " "),
    )
    configure(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `raymaas rollout`."""
    parser.add_argument(
        "target", metavar="NAME | status", help="the registered model, or `status NAME`: show its rollout"
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="after `status`: the registered model")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--canary", type=percent, metavar="PCT", help="start: the candidate's first share of requests, in percent"
    )
    action.add_argument("--promote", action="store_true", help="end the active rollout: the candidate becomes champion")
    action.add_argument("--abort", action="store_true", help="end the active rollout: every request to the champion")
    parser.add_argument("--version", metavar="N", help="the version to roll out (default: the `candidate` alias)")
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="shadow mode: the candidate answers a copy of the share, recorded and compared, never returned",
    )
    policy = parser.add_argument_group("policy (default: raymaas.monitoring.rollout.RolloutPolicy's)")
    policy.add_argument(
        "--steps", metavar="PCT,PCT,...", help="shares in percent, increasing, ending at 100 (10,25,50,100)"
    )
    policy.add_argument("--min-labels", metavar="N", help="labelled answers each version needs before a step (100)")
    policy.add_argument(
        "--max-regression", metavar="X", help="how much worse the live metric may be, in its units (0.02)"
    )
    policy.add_argument("--confidence", metavar="X", help="one-sided confidence of the bounds, in (0.5, 1) (0.95)")
    policy.add_argument(
        "--max-error-rate-increase", metavar="X", help="candidate error rate at most the champion's plus this (0.01)"
    )
    policy.add_argument(
        "--max-latency-ratio", metavar="X", help="candidate p99 latency at most this times the champion's (1.5)"
    )
    policy.add_argument("--min-requests", metavar="N", help="requests each version needs before the guards (50)")
    parser.add_argument("--url", metavar="URL", help="status: also the live figures from the endpoint at URL")
    parser.add_argument("--json", action="store_true", help="status: as JSON")
    parser.set_defaults(func=cmd_rollout)
