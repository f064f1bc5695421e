"""The monitor report of an endpoint (GET /models/NAME/monitor) as text, for the terminal:
`raymaas monitor NAME` and the demo print it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

API_KEY_ENV = "RAYMAAS_API_KEY"  # the key `raymaas monitor` sends, if the endpoint wants one


def fetch_report(base_url: str, name: str, api_key: str | None = None, timeout: float = 30) -> dict:
    """GET BASE/models/NAME/monitor; LookupError (with the endpoint's reason) if it refuses."""
    return fetch_json(base_url, name, "monitor", api_key, timeout)


def fetch_json(base_url: str, name: str, action: str, api_key: str | None = None, timeout: float = 30) -> dict:
    """GET BASE/models/NAME/ACTION, a JSON object; LookupError (one line: the endpoint's reason,
    or why nothing answered) if it refuses, nothing answers or the answer is no JSON object."""
    req = urllib.request.Request(f"{base_url.rstrip('/')}/models/{name}/{action}")
    if api_key:
        req.add_header("x-api-key", api_key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            reason = json.loads(raw).get("message", raw.decode(errors="replace"))
        except (ValueError, AttributeError):
            reason = raw.decode(errors="replace")[:200]
        raise LookupError(f"{err.code} from {req.full_url}: {reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise LookupError(f"no endpoint answers at {req.full_url}: {getattr(err, 'reason', err)}") from None
    except ValueError:
        raise LookupError(f"{req.full_url} did not answer JSON") from None
    if not isinstance(body, dict):
        raise LookupError(f"{req.full_url} answered {type(body).__name__}, not a JSON object")
    return body


def format_report(report: dict, top: int = 5) -> str:
    """A few lines: the window, drift (flagged features and the highest scores), live metrics."""
    lines = [f"{report['model']} version {report['version']} ({report['replicas']} replica(s) reporting)"]
    w = report["window"]
    if w["rows"]:
        lines.append(
            f"  window: {w['rows']} rows ({w['rows_per_replica']} per replica at most), "
            f"oldest {w['oldest_age_s']:.0f}s ago, newest {w['newest_age_s']:.0f}s ago"
        )
    else:
        lines.append("  window: no rows yet")
    drift = report["drift"]
    if drift["status"] == "unavailable":
        lines.append(f"  drift: unavailable: {drift['reason']}")
    else:
        flagged = drift["flagged"]
        state = f"FLAGGED {', '.join(flagged)}" if flagged else "nothing flagged"
        if drift["status"] != "ok":
            state += f" ({drift['status']}: flags need {drift['min_rows']} rows)"
        lines.append(
            f"  drift: {state} (PSI >= {drift['psi_threshold']} and KS or chi2 p < {drift['ks_pvalue_threshold']})"
        )
        worst = sorted(drift["features"].items(), key=lambda kv: -kv[1]["psi"])[:top]
        for feature, f in worst:
            mark = " *" if f["flagged"] else ""
            if "chi2_pvalue" in f:  # a categorical feature
                test = f"chi2 {f['chi2_statistic']:.3g}  p {f['chi2_pvalue']:.3g}"
            else:
                test = f"KS D {f['ks_statistic']:.3f}  p {f['ks_pvalue']:.3g}"
            lines.append(f"    {feature:>16}  PSI {f['psi']:8.3f}  {test}{mark}")
    live = report["live"]
    fb = live["feedback"]
    if live["metrics"]:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in live["metrics"].items())
        lines.append(f"  live ({live['labelled_rows']} labelled rows): {scores}")
    else:
        lines.append("  live: no labels yet (POST /models/NAME/feedback)")
    lines.append(
        f"  feedback: {fb['matched']} matched, {fb['rows']} labelled rows sent, {fb['unknown']} unknown, "
        f"{fb['expired']} expired, {fb['duplicate']} duplicate, {fb['mismatched']} mismatched; "
        f"{live['awaiting_labels']} predictions await labels"
    )
    return "\n".join(lines)
