"""What a progressive rollout decides at each look (issue 30): whether a candidate version
earns more of the live traffic, the `champion` alias, or a rollback.

A rollout moves a share of traffic to the candidate in `RolloutPolicy.steps` (percent). At each
look, `decide` compares the two versions' live figures (`VersionFigures`) in this order:

1. guards, once both versions have answered `min_requests` requests: the candidate's error rate
   may exceed the champion's by at most `max_error_rate_increase`, its p99 latency may be at
   most `max_latency_ratio` times the champion's. A failed guard is a rollback at once: these
   are bright lines on the observed figures (an outage should not wait for significance), and
   `min_requests` is what keeps a handful of requests from tripping them;
2. the metric, once both versions have `min_labels` labelled answers (fewer: hold): a
   non-inferiority test of d = candidate - champion (accuracy), or champion - candidate (RMSE),
   so that a positive d always favours the candidate. With one-sided bounds at `confidence`:
   lower bound > -max_regression advances one step (promotes at the last one); upper bound
   < -max_regression (shown worse by more than allowed) rolls back; anything else holds.
   Advancing also needs the guards to have been judged, not merely not failed.

The statistics (each a two-sided interval at 2 * confidence - 1, whose ends are the two
one-sided bounds at `confidence`):

- accuracy, independent samples: Agresti-Caffo (one success and one failure added to each
  version, then Wald). Plain Wald has zero width when an accuracy is 0 or 1 and covers too
  rarely at small n; the adjustment fixes both at no cost, where Newcombe's score interval
  would need a root-finder per bound for much the same coverage;
- accuracy, paired (shadow mode: both versions answered the same requests): the mean of the
  per-request differences of the 0/1 arrays, with Agresti-Min's 0.5 added to each cell of the
  2x2 table of (candidate right, champion right), which again keeps an all-ties run from a
  zero standard error. Pairing removes the variance of request difficulty, so it needs far
  fewer labels than the independent test for the same bound;
- RMSE: scipy.stats.bootstrap (percentile, fixed seed, so a look at the same figures always
  decides the same) of RMSE(champion) - RMSE(candidate), resampling the versions
  independently, or the same requests for both when paired. A bootstrap bounds the RMSE
  difference in RMSE units, the units of `max_regression`, where Welch's t on squared errors
  would bound the MSE and assume normality of heavy-tailed squares; percentile rather than
  BCa because BCa's jackknife grows with n squared, and because the p-value read off the same
  resampled distribution then agrees with the bounds.

Acting on a decision (moving the share, the `champion` alias, tagging a rejected version with
the reason) is the caller's: this module holds no Ray, Serve or MLflow object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from raymaas.specs import SpecModel

Action = Literal["advance", "promote", "hold", "rollback"]
Task = Literal["classification", "regression"]

BOOTSTRAP_RESAMPLES = 2000  # 100 resamples beyond each 95% bound; the bounds move by ~0.1 SE between seeds
BOOTSTRAP_SEED = 0
BOOTSTRAP_BATCH = 250  # resamples held in memory at once: 250 x n floats per version


class RolloutPolicy(SpecModel):
    """How a candidate earns traffic: the steps, the evidence it needs and the guards."""

    steps: list[int] = Field(
        default_factory=lambda: [10, 25, 50, 100],
        description="percent of traffic to the candidate at each step: in (0, 100], increasing, ending at 100",
    )
    min_labels: int = Field(100, ge=1, description="labelled answers each version needs before any step")
    max_regression: float = Field(
        0.02,
        ge=0.0,
        description="how much worse the candidate's live metric may be, in the metric's own units: accuracy "
        "points (0.02 = 2 points) for classification, RMSE units for regression",
    )
    confidence: float = Field(0.95, description="one-sided confidence of the non-inferiority bounds, in (0.5, 1)")
    max_error_rate_increase: float = Field(
        0.01, ge=0.0, le=1.0, description="candidate error rate at most the champion's plus this (0.01 = 1 point)"
    )
    max_latency_ratio: float = Field(1.5, ge=1.0, description="candidate p99 latency at most this times the champion's")
    min_requests: int = Field(50, ge=1, description="requests each version needs before the error and latency guards")

    @field_validator("steps")
    @classmethod
    def _steps_to_100(cls, steps: list[int]) -> list[int]:
        if not steps:
            raise ValueError("steps must list at least one share, ending at 100")
        if any(s <= 0 or s > 100 for s in steps):
            raise ValueError(f"steps must be percentages in (0, 100], got {steps}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must be strictly increasing, got {steps}")
        if steps[-1] != 100:
            raise ValueError(f"steps must end at 100 (the promotion), got {steps}")
        return steps

    @field_validator("confidence")
    @classmethod
    def _confidence_range(cls, confidence: float) -> float:
        if not 0.5 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0.5, 1), e.g. 0.95, got {confidence}")
        return confidence


@dataclass
class VersionFigures:
    """One version's live figures: requests and errors answered, p99 latency, and one outcome per
    labelled answer (classification: 1 right, 0 wrong; regression: predicted - actual, a row of
    them for a multi-output model)."""

    version: str
    requests: int
    errors: int
    latency_p99_ms: float
    outcomes: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def labels(self) -> int:
        return len(self.outcomes)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Decision:
    """What to do now, why (one sentence with the figures), the candidate's next share (percent)
    and the figures to log as MLflow metrics."""

    action: Action
    reason: str
    next_share: int
    figures: dict[str, float] = field(default_factory=dict)


def decide(
    policy: RolloutPolicy,
    step_index: int,
    champion: VersionFigures,
    candidate: VersionFigures,
    task: Task,
    paired: bool = False,
) -> Decision:
    """Advance, promote, hold or roll back the candidate now serving policy.steps[step_index]."""
    if not 0 <= step_index < len(policy.steps):
        raise ValueError(f"step_index {step_index} is outside the policy's {len(policy.steps)} steps")
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be classification or regression, got {task!r}")
    share = policy.steps[step_index]
    last = step_index == len(policy.steps) - 1
    figures: dict[str, float] = {
        "champion_requests": champion.requests,
        "candidate_requests": candidate.requests,
        "champion_error_rate": champion.error_rate,
        "candidate_error_rate": candidate.error_rate,
        "champion_latency_p99_ms": float(champion.latency_p99_ms),
        "candidate_latency_p99_ms": float(candidate.latency_p99_ms),
        "champion_labels": champion.labels,
        "candidate_labels": candidate.labels,
    }

    guarded = min(champion.requests, candidate.requests) >= policy.min_requests
    if guarded:
        failed = _guard_failure(policy, champion, candidate)
        if failed:
            return Decision("rollback", failed, 0, figures)

    if paired and champion.labels != candidate.labels:
        raise ValueError(
            f"paired outcomes must be aligned, one per request: champion has {champion.labels}, "
            f"candidate {candidate.labels}"
        )
    fewest = min(champion.labels, candidate.labels)
    if fewest < policy.min_labels:
        who = "candidate" if candidate.labels <= champion.labels else "champion"
        return Decision(
            "hold",
            f"the {who} has {fewest:,} of the {policy.min_labels:,} labelled answers needed before a step",
            share,
            figures,
        )

    if task == "classification":
        test = _accuracy_test(champion.outcomes, candidate.outcomes, policy, paired)
    else:
        test = _rmse_test(champion.outcomes, candidate.outcomes, policy, paired)
    figures.update(test)
    said = _metric_sentence(task, test, champion.labels, candidate.labels, paired)
    margin = -policy.max_regression
    percent = f"{policy.confidence:.0%}"
    fmt = _fmt(task)
    # Both read "positive favours the candidate"; for RMSE that is champion minus candidate.
    diff = "difference" if task == "classification" else "RMSE gain (champion - candidate)"

    if test["upper_bound"] < margin:
        return Decision(
            "rollback",
            f"{said}: the {percent} upper bound of the {diff} {fmt(test['upper_bound'])} is below {margin:g}",
            0,
            figures,
        )
    if test["lower_bound"] > margin:
        shown = f"{said}: the {percent} lower bound of the {diff} {fmt(test['lower_bound'])} is above {margin:g}"
        if not guarded:
            return Decision(
                "hold",
                f"{shown}, but the guards need {policy.min_requests:,} requests of each version "
                f"(champion {champion.requests:,}, candidate {candidate.requests:,})",
                share,
                figures,
            )
        if last:
            return Decision("promote", shown, share, figures)
        return Decision("advance", shown, policy.steps[step_index + 1], figures)
    return Decision(
        "hold",
        f"{said}: the {percent} bounds of the {diff}, {fmt(test['lower_bound'])} to "
        f"{fmt(test['upper_bound'])}, straddle {margin:g}; more labels are needed",
        share,
        figures,
    )


def _guard_failure(policy: RolloutPolicy, champion: VersionFigures, candidate: VersionFigures) -> str | None:
    """The reason the error-rate or the latency guard fails, or None."""
    over = f"over {candidate.requests:,} and {champion.requests:,} requests"
    if candidate.error_rate > champion.error_rate + policy.max_error_rate_increase:
        return (
            f"candidate error rate {candidate.error_rate:.2%} vs champion {champion.error_rate:.2%} {over}: "
            f"more than {policy.max_error_rate_increase:.2%} above"
        )
    if candidate.latency_p99_ms > policy.max_latency_ratio * champion.latency_p99_ms:
        ratio = candidate.latency_p99_ms / champion.latency_p99_ms if champion.latency_p99_ms else float("inf")
        return (
            f"candidate p99 latency {candidate.latency_p99_ms:,.0f} ms vs champion {champion.latency_p99_ms:,.0f} ms "
            f"{over}: {ratio:.2f} times, above the allowed {policy.max_latency_ratio:g}"
        )
    return None


def _accuracy_test(champion: np.ndarray, candidate: np.ndarray, policy: RolloutPolicy, paired: bool) -> dict:
    """Non-inferiority of candidate - champion accuracy: both accuracies, the difference, bounds, p-value."""
    from scipy.stats import norm

    h = _correctness(champion, "champion")
    c = _correctness(candidate, "candidate")
    if paired:
        # Agresti-Min: 0.5 added to each cell of the 2x2 table; only the discordant cells move d.
        n = len(c) + 2.0
        better = np.sum((c == 1) & (h == 0)) + 0.5
        worse = np.sum((c == 0) & (h == 1)) + 0.5
        centre = (better - worse) / n
        se = np.sqrt((better + worse) - (better - worse) ** 2 / n) / n
    else:
        # Agresti-Caffo: one success and one failure added to each version.
        pc = (c.sum() + 1.0) / (len(c) + 2.0)
        ph = (h.sum() + 1.0) / (len(h) + 2.0)
        centre = pc - ph
        se = np.sqrt(pc * (1 - pc) / (len(c) + 2.0) + ph * (1 - ph) / (len(h) + 2.0))
    z = norm.ppf(policy.confidence)
    return {
        "champion_accuracy": float(h.mean()),
        "candidate_accuracy": float(c.mean()),
        "difference": float(c.mean() - h.mean()),
        "lower_bound": float(centre - z * se),
        "upper_bound": float(centre + z * se),
        # H0: d <= -max_regression (the candidate is worse by more than allowed).
        "p_value": float(norm.sf((centre + policy.max_regression) / se)),
    }


def _rmse_test(champion: np.ndarray, candidate: np.ndarray, policy: RolloutPolicy, paired: bool) -> dict:
    """Non-inferiority of RMSE(champion) - RMSE(candidate) by a seeded percentile bootstrap."""
    from scipy.stats import bootstrap

    # Each row's mean squared error over its outputs: the RMSE of a resample is then that of
    # every output of its rows, as raymaas.monitoring.live.regression_scores computes it.
    h = _row_squares(champion)
    c = _row_squares(candidate)

    def gain(h_sq, c_sq, axis=-1):
        return np.sqrt(np.mean(h_sq, axis=axis)) - np.sqrt(np.mean(c_sq, axis=axis))

    result = bootstrap(
        (h, c),
        gain,
        n_resamples=BOOTSTRAP_RESAMPLES,
        batch=BOOTSTRAP_BATCH,
        vectorized=True,
        paired=paired,
        confidence_level=2 * policy.confidence - 1,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    h_rmse, c_rmse = float(np.sqrt(h.mean())), float(np.sqrt(c.mean()))
    return {
        "champion_rmse": h_rmse,
        "candidate_rmse": c_rmse,
        "difference": h_rmse - c_rmse,
        "lower_bound": float(result.confidence_interval.low),
        "upper_bound": float(result.confidence_interval.high),
        "p_value": float(np.mean(result.bootstrap_distribution <= -policy.max_regression)),
    }


def _correctness(outcomes: np.ndarray, who: str) -> np.ndarray:
    values = np.asarray(outcomes, dtype=np.float64).ravel()
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"the {who}'s classification outcomes must be 0/1 correctness, one per labelled answer")
    return values


def _row_squares(outcomes: np.ndarray) -> np.ndarray:
    errors = np.asarray(outcomes, dtype=np.float64)
    return (errors**2).reshape(len(errors), -1).mean(axis=1)


def _fmt(task: Task):
    return (lambda x: f"{x:.3f}") if task == "classification" else (lambda x: f"{x:.4g}")


def _metric_sentence(task: Task, test: dict, champion_labels: int, candidate_labels: int, paired: bool) -> str:
    """The figures a reason opens with: both metrics and how many labels each stands on."""
    metric = "accuracy" if task == "classification" else "rmse"
    name = "accuracy" if task == "classification" else "RMSE"
    fmt = _fmt(task)
    over = f"{candidate_labels:,} paired labels" if paired else f"{candidate_labels:,} and {champion_labels:,} labels"
    return (
        f"candidate {name} {fmt(test['candidate_' + metric])} vs champion {fmt(test['champion_' + metric])} over {over}"
    )


# --------------------------------------------------------------------------- figures from what was served


def is_error(code: int) -> bool:
    """An answer that counts against the version that gave it: a failure (5xx), or a 422, which
    is the signature or the model refusing the input (a malformed, unauthorised or oversized
    request is the client's whichever version it met, and counts for neither)."""
    return code >= 500 or code == 422


def latency_percentiles(milliseconds) -> tuple[float, float]:
    """(p50, p99) of answer times in ms; (0, 0) for none."""
    ms = np.asarray(list(milliseconds), dtype=np.float64)
    if not len(ms):
        return 0.0, 0.0
    p50, p99 = np.percentile(ms, [50, 99])
    return float(p50), float(p99)


def outcome(predicted, actual, task: Task):
    """One labelled answer's outcome: classification 1.0 right, 0.0 wrong (labels compared as text,
    as raymaas.monitoring.live does); regression predicted - actual (a row for several outputs)."""
    if task == "classification":
        return 1.0 if str(predicted) == str(actual) else 0.0
    return np.asarray(predicted, dtype=np.float64).ravel() - np.asarray(actual, dtype=np.float64).ravel()


def version_figures(version: str, answers, labelled, task: Task) -> VersionFigures:
    """A version's VersionFigures from its answers, (status code, milliseconds) each, and its
    labelled answers, (predicted, actual) each."""
    answers = list(answers)
    _, p99 = latency_percentiles(ms for _, ms in answers)
    return VersionFigures(
        version=str(version),
        requests=len(answers),
        errors=sum(1 for code, _ in answers if is_error(code)),
        latency_p99_ms=p99,
        outcomes=_stack([outcome(p, a, task) for p, a in labelled], task),
    )


def paired_outcomes(champion: dict, candidate: dict, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """The outcomes of the rows both versions answered (shadow mode), aligned: champion and
    candidate map a row's key (request id and row) to its (predicted, actual)."""
    keys = [k for k in champion if k in candidate]
    return (
        _stack([outcome(*champion[k], task) for k in keys], task),
        _stack([outcome(*candidate[k], task) for k in keys], task),
    )


def _stack(outcomes: list, task: Task) -> np.ndarray:
    if task == "classification" or not outcomes:
        return np.asarray(outcomes, dtype=np.float64)
    widths = {len(o) for o in outcomes}
    if len(widths) != 1:  # labels of another shape than the answers: keep the commonest width
        common = max(widths, key=lambda w: sum(len(o) == w for o in outcomes))
        outcomes = [o for o in outcomes if len(o) == common]
    rows = np.stack(outcomes)
    return rows[:, 0] if rows.shape[1] == 1 else rows
