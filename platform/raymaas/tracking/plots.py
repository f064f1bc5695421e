"""PNG plots logged with runs (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _figure(width: float = 6.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def confusion_matrix_figure(confusion: np.ndarray, title: str):
    fig, ax = _figure(5.5, 5.0)
    image = ax.imshow(confusion, cmap="Blues")
    n = confusion.shape[0]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
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
