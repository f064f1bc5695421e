"""PNG plots logged with runs (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _figure(width: float = 6.0, height: float = 4.5, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), dpi=100)


def confusion_matrix_figure(confusion: np.ndarray, title: str, labels: Sequence[str] | None = None):
    fig, ax = _figure(5.5, 5.0)
    image = ax.imshow(confusion, cmap="Blues")
    n = confusion.shape[0]
    ax.set_xticks(range(n), labels=labels if labels is not None and n <= 30 else None)
    ax.set_yticks(range(n), labels=labels if labels is not None and n <= 30 else None)
    if labels is not None and n <= 30 and max((len(x) for x in labels), default=0) > 3:
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 20:
        threshold = confusion.max() / 2 if confusion.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if confusion[i, j] > threshold else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def curves_figure(series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, title: str):
    """One line per named series of (x, y) points."""
    fig, ax = _figure()
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def predicted_vs_actual_figure(actual: np.ndarray, predicted: np.ndarray, names: Sequence[str], title: str):
    """Predicted against true value for each target ([n, k] arrays), with the y = x line."""
    k = actual.shape[1]
    fig, axes = _figure(4.5 * k, 4.5, ncols=k)
    for i, ax in enumerate(np.atleast_1d(axes)):
        a, p = actual[:, i], predicted[:, i]
        ax.scatter(a, p, s=8, alpha=0.5)
        lo, hi = float(min(a.min(), p.min())), float(max(a.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
        ax.set_xlabel(f"actual {names[i]}")
        ax.set_ylabel(f"predicted {names[i]}")
        ax.set_title(title if k == 1 else f"{title}: {names[i]}", fontsize=9)
    fig.tight_layout()
    return fig


def residuals_figure(actual: np.ndarray, predicted: np.ndarray, names: Sequence[str], title: str):
    """Residual (actual - predicted) against the prediction for each target."""
    k = actual.shape[1]
    fig, axes = _figure(4.5 * k, 4.0, ncols=k)
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.scatter(predicted[:, i], actual[:, i] - predicted[:, i], s=8, alpha=0.5)
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set_xlabel(f"predicted {names[i]}")
        ax.set_ylabel("residual (actual - predicted)")
        ax.set_title(title if k == 1 else f"{title}: {names[i]}", fontsize=9)
    fig.tight_layout()
    return fig


def param_figure(field: str, points: Sequence[tuple[object, float]], metric: str, log_x: bool = False):
    """A sweep's trials: one searched field's value against the metric, a point per trial.
    Numbers on a numeric axis (log for a loguniform field); other values as categories."""
    fig, ax = _figure()
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in points)
    if numeric:
        ax.scatter([x for x, _ in points], [y for _, y in points])
        if log_x:
            ax.set_xscale("log")
    else:
        labels = sorted({str(x) for x, _ in points})
        where = {label: i for i, label in enumerate(labels)}
        ax.scatter([where[str(x)] for x, _ in points], [y for _, y in points])
        ax.set_xticks(range(len(labels)), labels=labels)
    ax.set_xlabel(field)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {field}, a point per trial")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def importance_figure(table: dict, title: str, top: int = 20):
    """Horizontal bars of a feature importance table (raymaas.explain.attribution.global_importance),
    its top features, the largest at the top."""
    rows = table["data"][:top]
    fig, ax = _figure(6.0, max(2.5, 0.28 * len(rows) + 1.2))
    names = [str(r[0]) for r in rows][::-1]
    ax.barh(range(len(rows)), [r[1] for r in rows][::-1], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels=names)
    ax.set_xlabel("mean |attribution| over validation rows")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
