"""Drift of a window of served inputs against the reference profile, from binned counts.

A replica keeps the bin of each feature of each recent row, never the row itself, so what
leaves it for the endpoint-wide view (`raymaas.monitoring.hub`) is a count per bin, which
adds up across replicas. Both tests run on those counts:

- population stability index: sum over bins of (w - r) * ln(w / r), the window's and the
  reference's fractions, each floored at EPSILON (a bin the training data never reached,
  such as one beyond its range, counts as rare, not impossible);
- Kolmogorov-Smirnov: D, the largest gap between the two cumulative fractions at the bin
  edges (a lower bound of the exact D, so the test is conservative), and its p-value from
  scipy's distribution of D for the effective size n*m/(n+m).

A categorical column (its bins are categories, unseen values and nulls) has no order for KS
to walk: its second test is Pearson's chi-squared of the window's counts against the shares
the reference expects (scipy.stats.chisquare; a bin training never reached expects EPSILON of
the rows).

A feature is flagged when the window holds at least `min_rows` rows and both tests agree:
PSI at least `psi_threshold` and the p-value (KS, or chi-squared) below `ks_pvalue`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPSILON = 1e-4


@dataclass(frozen=True)
class DriftThresholds:
    psi_threshold: float = 0.2
    ks_pvalue: float = 0.01
    min_rows: int = 100


def psi(reference: np.ndarray, counts: np.ndarray) -> float:
    r = np.maximum(np.asarray(reference, dtype=np.float64), EPSILON)
    total = counts.sum()
    w = np.maximum(counts / total if total else np.zeros_like(r), EPSILON)
    return float(np.sum((w - r) * np.log(w / r)))


def ks_test(reference: np.ndarray, counts: np.ndarray, reference_rows: int) -> tuple[float, float]:
    """(D, p-value) from binned fractions; n = the window's rows, m = the reference's."""
    from scipy.stats import kstwo

    n = int(counts.sum())
    if n == 0:
        return 0.0, 1.0
    r = np.asarray(reference, dtype=np.float64)
    d = float(np.max(np.abs(np.cumsum(counts / n) - np.cumsum(r / max(r.sum(), EPSILON)))))
    m = max(1, int(reference_rows))
    effective = max(1, round(n * m / (n + m)))
    return d, float(kstwo.sf(d, effective))


def chi2_test(reference: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """(chi-squared statistic, p-value) of a window's category counts against the reference's
    shares, each floored at EPSILON and renormalised (a bin training never reached is rare,
    not impossible)."""
    from scipy.stats import chisquare

    n = float(counts.sum())
    if n == 0:
        return 0.0, 1.0
    r = np.maximum(np.asarray(reference, dtype=np.float64), EPSILON)
    statistic, p = chisquare(counts, r / r.sum() * n)
    return float(statistic), float(p)


def drift_report(profile: dict, counts: list[np.ndarray], rows: int, thresholds: DriftThresholds) -> dict:
    """Per feature: PSI, KS statistic and p-value, flagged; counts[i] is feature i's window
    count per bin (len(edges) + 2 bins)."""
    features = {}
    enough = rows >= thresholds.min_rows
    for feature, c in zip(profile["features"], counts, strict=True):
        c = np.asarray(c, dtype=np.float64)
        ref = np.asarray(feature["reference"], dtype=np.float64)
        score = psi(ref, c)
        if feature.get("kind") == "categorical":
            statistic, p = chi2_test(ref, c)
            test = {"chi2_statistic": round(statistic, 6), "chi2_pvalue": float(f"{p:.6g}")}
        else:
            d, p = ks_test(ref, c, profile.get("rows", 0))
            test = {"ks_statistic": round(d, 6), "ks_pvalue": float(f"{p:.6g}")}
        features[feature["name"]] = {
            "psi": round(score, 6),
            **test,
            "flagged": bool(enough and score >= thresholds.psi_threshold and p < thresholds.ks_pvalue),
        }
    return {
        "status": "ok" if enough else "too few rows",
        "min_rows": thresholds.min_rows,
        "psi_threshold": thresholds.psi_threshold,
        "ks_pvalue_threshold": thresholds.ks_pvalue,
        "flagged": [name for name, f in features.items() if f["flagged"]],
        "features": features,
    }


def window_counts(bins: np.ndarray, profile: dict) -> list[np.ndarray]:
    """Per feature, the count of rows in each bin of a [rows, features] array of bin indices."""
    return [
        np.bincount(bins[:, i], minlength=len(f["edges"]) + 2)[: len(f["edges"]) + 2]
        for i, f in enumerate(profile["features"])
    ]
