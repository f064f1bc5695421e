"""Live performance: served predictions scored against the true labels that came later."""

from __future__ import annotations

import numpy as np


def classification_scores(predicted: list, actual: list) -> dict[str, float]:
    """accuracy and macro precision, recall and F1 (over the labels seen in either list),
    comparing labels as text: a JSON 3 and a served "3" are the same class."""
    p = [str(v) for v in predicted]
    a = [str(v) for v in actual]
    labels = sorted(set(p) | set(a))
    if not labels:
        return {}
    precision, recall, f1 = [], [], []
    for label in labels:
        tp = sum(1 for x, y in zip(p, a, strict=True) if x == label and y == label)
        said = sum(1 for x in p if x == label)
        true = sum(1 for y in a if y == label)
        pr = tp / said if said else 0.0
        rc = tp / true if true else 0.0
        precision.append(pr)
        recall.append(rc)
        f1.append(2 * pr * rc / (pr + rc) if pr + rc else 0.0)
    return {
        "accuracy": sum(1 for x, y in zip(p, a, strict=True) if x == y) / len(p),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
    }


def regression_scores(predicted: list, actual: list) -> dict[str, float]:
    """rmse and mae over every output of every row."""
    p = np.asarray(predicted, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    if len(p) == 0 or len(p) != len(a):
        return {}
    err = p - a
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def live_scores(labelled: list, task: str) -> dict[str, float]:
    """The scores of (predicted, actual) pairs: regression_scores for a regression, else
    classification_scores; {} for none."""
    if not labelled:
        return {}
    predicted, actual = [p for p, _ in labelled], [a for _, a in labelled]
    if task == "regression":
        return regression_scores(predicted, actual)
    return classification_scores(predicted, actual)
