"""The rollout's decision core on its own (no Ray, Serve or MLflow): guards, non-inferiority of
accuracy (independent and paired) and of RMSE, the policy's validation, and that the stated
confidence is what a run of equal versions sees."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from raymaas.monitoring.rollout import Decision, RolloutPolicy, VersionFigures, decide


def _correct(rng, accuracy: float, n: int) -> np.ndarray:
    return (rng.random(n) < accuracy).astype(np.int8)


def _version(version: str, outcomes, requests: int = 5000, errors: int = 0, p99: float = 100.0) -> VersionFigures:
    return VersionFigures(version, requests, errors, p99, np.asarray(outcomes))


def test_clearly_worse_candidate_rolls_back_naming_both_accuracies():
    rng = np.random.default_rng(0)
    champion = _version("3", _correct(rng, 0.93, 3000))
    candidate = _version("4", _correct(rng, 0.85, 500), requests=600)
    d = decide(RolloutPolicy(), 1, champion, candidate, "classification")
    assert d.action == "rollback" and d.next_share == 0
    acc_c, acc_h = d.figures["candidate_accuracy"], d.figures["champion_accuracy"]
    assert f"candidate accuracy {acc_c:.3f} vs champion {acc_h:.3f} over 500 and 3,000 labels" in d.reason
    assert "95% upper bound" in d.reason and "below -0.02" in d.reason
    assert d.figures["upper_bound"] < -0.02 and d.figures["p_value"] > 0.95


def test_equal_candidate_advances_then_promotes_at_the_last_step():
    rng = np.random.default_rng(1)
    champion = _version("3", _correct(rng, 0.93, 3000))
    candidate = _version("4", _correct(rng, 0.93, 3000))
    policy = RolloutPolicy()
    d = decide(policy, 0, champion, candidate, "classification")
    assert d.action == "advance" and d.next_share == 25
    assert d.figures["lower_bound"] > -0.02 and "lower bound" in d.reason
    assert decide(policy, 2, champion, candidate, "classification").next_share == 100
    last = decide(policy, 3, champion, candidate, "classification")
    assert last.action == "promote" and last.next_share == 100


def test_too_few_labels_holds_at_the_current_share():
    rng = np.random.default_rng(2)
    champion = _version("3", _correct(rng, 0.93, 3000))
    candidate = _version("4", _correct(rng, 0.5, 99))
    d = decide(RolloutPolicy(), 1, champion, candidate, "classification")
    assert d.action == "hold" and d.next_share == 25
    assert "99 of the 100 labelled answers" in d.reason


def test_undecided_evidence_holds():
    rng = np.random.default_rng(3)
    champion = _version("3", _correct(rng, 0.93, 3000))
    candidate = _version("4", _correct(rng, 0.91, 150))
    d = decide(RolloutPolicy(), 0, champion, candidate, "classification")
    assert d.action == "hold" and d.next_share == 10
    assert d.figures["lower_bound"] < -0.02 < d.figures["upper_bound"] and "straddle" in d.reason


def test_error_rate_guard_rolls_back_once_both_have_min_requests():
    rng = np.random.default_rng(4)
    champion = _version("3", _correct(rng, 0.93, 3000), requests=5000, errors=25)
    candidate = _version("4", _correct(rng, 0.93, 3000), requests=400, errors=12)
    d = decide(RolloutPolicy(), 1, champion, candidate, "classification")
    assert d.action == "rollback" and d.next_share == 0
    assert "candidate error rate 3.00% vs champion 0.50%" in d.reason
    # The same rates over 40 requests are not judged yet: the metric decides, and a shown
    # non-inferiority still waits for the guards.
    few = _version("4", candidate.outcomes, requests=40, errors=4)
    d = decide(RolloutPolicy(), 1, champion, few, "classification")
    assert d.action == "hold" and "guards need 50 requests" in d.reason


def test_latency_guard_rolls_back_once_both_have_min_requests():
    rng = np.random.default_rng(5)
    champion = _version("3", _correct(rng, 0.93, 3000), p99=120.0)
    candidate = _version("4", _correct(rng, 0.93, 3000), requests=400, p99=310.0)
    d = decide(RolloutPolicy(), 0, champion, candidate, "classification")
    assert d.action == "rollback" and "p99 latency 310 ms vs champion 120 ms" in d.reason and "2.58 times" in d.reason
    slow_but_few = _version("4", candidate.outcomes, requests=49, p99=310.0)
    assert decide(RolloutPolicy(), 0, champion, slow_but_few, "classification").action != "rollback"
    within = _version("4", candidate.outcomes, requests=400, p99=179.0)
    assert decide(RolloutPolicy(), 0, champion, within, "classification").action == "advance"


def test_regression_much_larger_errors_roll_back_equal_errors_advance():
    rng = np.random.default_rng(6)
    champion = _version("3", rng.normal(0, 1.0, 2000))
    worse = _version("4", rng.normal(0, 1.3, 500))
    d = decide(RolloutPolicy(), 0, champion, worse, "regression")
    assert d.action == "rollback" and "candidate RMSE" in d.reason and "champion - candidate" in d.reason
    assert d.figures["candidate_rmse"] > d.figures["champion_rmse"] and d.figures["difference"] < 0
    equal = _version("4", rng.normal(0, 1.0, 4000))
    policy = RolloutPolicy(max_regression=0.1)
    d = decide(policy, 0, champion, equal, "regression")
    assert d.action == "advance" and d.next_share == 25
    # A fixed bootstrap seed: the same figures always decide the same.
    assert decide(policy, 0, champion, equal, "regression") == d


def test_regression_multi_output_rows_and_paired_resampling():
    rng = np.random.default_rng(7)
    truth_noise = rng.normal(0, 1.0, (800, 2))
    champion = _version("3", truth_noise)
    candidate = _version("4", truth_noise * 1.01 + rng.normal(0, 0.05, (800, 2)))
    unpaired = decide(RolloutPolicy(max_regression=0.05), 0, champion, candidate, "regression")
    paired = decide(RolloutPolicy(max_regression=0.05), 0, champion, candidate, "regression", paired=True)
    assert paired.action == "advance" and "800 paired labels" in paired.reason
    # Shared request difficulty cancels when paired: a much tighter interval.
    width = lambda d: d.figures["upper_bound"] - d.figures["lower_bound"]
    assert width(paired) < width(unpaired) / 3
    assert paired.figures["champion_rmse"] == pytest.approx(np.sqrt(np.mean(truth_noise**2)))


def test_paired_accuracy_is_tighter_and_needs_aligned_outcomes():
    rng = np.random.default_rng(8)
    champion = _correct(rng, 0.9, 400)
    candidate = champion.copy()
    # Three answers the candidate gets right that the champion missed, three the other way.
    flip = np.r_[rng.choice(np.flatnonzero(champion == 0), 3, replace=False), np.flatnonzero(champion == 1)[:3]]
    candidate[flip] = 1 - candidate[flip]
    policy = RolloutPolicy(max_regression=0.02)
    paired = decide(policy, 0, _version("3", champion), _version("4", candidate), "classification", paired=True)
    unpaired = decide(policy, 0, _version("3", champion), _version("4", candidate), "classification")
    assert paired.action == "advance" and unpaired.action == "hold"
    assert "400 paired labels" in paired.reason
    # All ties still have a standard error (Agresti-Min's 0.5 per cell): a bound, not a point.
    ties = decide(
        RolloutPolicy(max_regression=0.0),
        0,
        _version("3", champion),
        _version("4", champion),
        "classification",
        paired=True,
    )
    assert ties.action == "hold" and ties.figures["lower_bound"] < 0 < ties.figures["upper_bound"]
    with pytest.raises(ValueError, match="paired outcomes must be aligned"):
        decide(policy, 0, _version("3", champion), _version("4", candidate[:-1]), "classification", paired=True)


def test_perfect_accuracy_on_both_sides_does_not_collapse_the_interval():
    ones = np.ones(300, dtype=np.int8)
    d = decide(RolloutPolicy(max_regression=0.0), 0, _version("3", ones), _version("4", ones), "classification")
    assert d.action == "hold" and d.figures["lower_bound"] < 0 < d.figures["upper_bound"]
    assert decide(RolloutPolicy(), 0, _version("3", ones), _version("4", ones), "classification").action == "advance"


def test_figures_are_flat_numbers_for_mlflow():
    rng = np.random.default_rng(9)
    d = decide(
        RolloutPolicy(),
        0,
        _version("3", _correct(rng, 0.9, 500)),
        _version("4", _correct(rng, 0.9, 500)),
        "classification",
    )
    assert isinstance(d, Decision)
    assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in d.figures.values())
    for key in ("champion_accuracy", "candidate_accuracy", "difference", "lower_bound", "upper_bound", "p_value"):
        assert key in d.figures
    for key in ("champion_error_rate", "candidate_latency_p99_ms", "champion_labels", "candidate_labels"):
        assert key in d.figures


@pytest.mark.parametrize(
    ("values", "field", "says"),
    [
        ({"steps": [10, 25, 50]}, "steps", "must end at 100"),
        ({"steps": [10, 50, 25, 100]}, "steps", "strictly increasing"),
        ({"steps": [0, 50, 100]}, "steps", "(0, 100]"),
        ({"steps": []}, "steps", "at least one share"),
        ({"confidence": 1.0}, "confidence", "must be in (0.5, 1)"),
        ({"confidence": 0.5}, "confidence", "must be in (0.5, 1)"),
        ({"max_latency_ratio": 0.9}, "max_latency_ratio", "greater than or equal to 1"),
        ({"min_labels": 0}, "min_labels", "greater than or equal to 1"),
        ({"max_regression": -0.01}, "max_regression", "greater than or equal to 0"),
        ({"step": [10, 100]}, "step", "Extra inputs are not permitted"),
    ],
)
def test_policy_validation_names_what_is_wrong(values, field, says):
    with pytest.raises(ValidationError) as err:
        RolloutPolicy(**values)
    (error,) = err.value.errors()
    assert error["loc"] == (field,) and says in error["msg"]


def test_policy_defaults_and_step_index_range():
    policy = RolloutPolicy()
    assert policy.steps == [10, 25, 50, 100] and policy.confidence == 0.95 and policy.min_labels == 100
    assert RolloutPolicy(steps=[100]).steps == [100]
    ones = _version("3", np.ones(200))
    with pytest.raises(ValueError, match="step_index 4 is outside"):
        decide(policy, 4, ones, ones, "classification")


def test_stated_confidence_is_honoured_for_equal_versions():
    # With max_regression 0, rolling back an equal candidate is a type I error of the
    # one-sided upper bound: it should happen in at most 1 - confidence of the looks.
    rng = np.random.default_rng(10)
    policy = RolloutPolicy(max_regression=0.0, confidence=0.95)
    runs = 200
    rollbacks = {"unpaired": 0, "paired": 0}
    for _ in range(runs):
        accuracy = rng.uniform(0.6, 0.97)
        champion = _version("3", _correct(rng, accuracy, 2000))
        candidate = _version("4", _correct(rng, accuracy, 300))
        rollbacks["unpaired"] += decide(policy, 0, champion, candidate, "classification").action == "rollback"
        # Shadow: both versions answered the same 300 requests, each right with its own luck.
        shadow_champion = _version("3", champion.outcomes[:300])
        d = decide(policy, 0, shadow_champion, candidate, "classification", paired=True)
        rollbacks["paired"] += d.action == "rollback"
    # 0.05 + 3 binomial standard errors (0.015 each over 200 runs) of slack.
    for mode, count in rollbacks.items():
        assert count / runs <= 0.05 + 0.045, f"{mode}: {count} of {runs} equal candidates rolled back"


def test_stated_confidence_is_honoured_for_equal_regressions():
    rng = np.random.default_rng(11)
    policy = RolloutPolicy(max_regression=0.0, confidence=0.9)
    runs = 100
    rollbacks = 0
    for _ in range(runs):
        champion = _version("3", rng.normal(0, 2.0, 400))
        candidate = _version("4", rng.normal(0, 2.0, 200))
        rollbacks += decide(policy, 0, champion, candidate, "regression").action == "rollback"
    # 0.10 + 3 binomial standard errors (0.03 each over 100 runs) of slack.
    assert rollbacks / runs <= 0.10 + 0.09
