"""Validation metrics of a supervised job, summed in each worker and all-reduced as tensors.

Every metric is built from sums that add across workers (a confusion matrix, histograms of
the positive class's probability, sums of errors and targets), so one all_reduce of a few
tensors gives every rank the metrics of the whole validation split, whatever its shard.

Classification: val_loss (the training objective), val_accuracy, val_precision_macro,
val_recall_macro, val_f1_macro (over the classes that occur in the labels or the
predictions), val_log_loss (unweighted cross-entropy) and, for two classes, val_roc_auc
(from 1,024-bin histograms of the positive class's probability: exact up to ties within a bin).
Anomaly (an autoencoder's score, the reconstruction error): val_loss (the mean score),
val_reconstruction_error (the mean score of the normal rows) and, when the validation rows are
labelled, val_roc_auc of the score against them (anomalies positive).
Regression: val_loss, val_rmse and val_mae (in the targets' units, over all outputs),
val_r2 (the mean of each output's R^2); with several outputs also each output's own, in its
own units: val_rmse/NAME, val_mae/NAME, val_r2/NAME (NAME: the target column).
"""

from __future__ import annotations

import re

import numpy as np
import torch

AUC_BINS = 1024

# Which way each metric a supervised job logs is better: the gate's direction.
LOWER_IS_BETTER = ("val_loss", "val_log_loss", "val_rmse", "val_mae", "train_loss")
CLASSIFICATION_METRICS = (
    "val_loss",
    "val_accuracy",
    "val_precision_macro",
    "val_recall_macro",
    "val_f1_macro",
    "val_log_loss",
    "val_roc_auc",
)
REGRESSION_METRICS = ("val_loss", "val_rmse", "val_mae", "val_r2")
ANOMALY_METRICS = ("val_loss", "val_reconstruction_error", "val_roc_auc")


def task_metric_names(task: str, n_classes: int | None = None) -> tuple[str, ...]:
    if task == "regression":
        return REGRESSION_METRICS
    if task == "anomaly":
        return ANOMALY_METRICS
    if n_classes is not None and n_classes != 2:
        return tuple(m for m in CLASSIFICATION_METRICS if m != "val_roc_auc")
    return CLASSIFICATION_METRICS


class Tally:
    """Sums over validation batches for targets (raymaas.supervised.data.Targets)."""

    def __init__(self, targets, device):
        self.regression = targets.task == "regression"
        self.anomaly = targets.task == "anomaly"
        f64 = {"dtype": torch.float64, "device": device}
        if self.anomaly:
            # rows, loss (the summed scores), normal rows, their summed scores; score histograms
            # of normal (0) and anomalous (1) rows, for val_roc_auc
            self.sums = torch.zeros(4, **f64)
            self.histograms = torch.zeros(2, AUC_BINS, **f64)
        elif self.regression:
            k = targets.n_outputs
            # rows, loss, then per output: squared error, absolute error, sum y, sum y^2
            self.sums = torch.zeros(2 + 4 * k, **f64)
            self.k = k
            self.output_keys = output_keys(targets.names, k)
        else:
            n = targets.n_outputs
            self.sums = torch.zeros(3, **f64)  # rows, loss, log loss
            self.confusion = torch.zeros(n, n, **f64)
            self.histograms = torch.zeros(2, AUC_BINS, **f64) if n == 2 else None

    def add(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        self.sums[0] += len(y)
        self.sums[1] += loss.detach()
        if self.anomaly:
            score = out.detach().double().reshape(-1)
            normal = y == 0
            self.sums[2] += normal.sum()
            self.sums[3] += score[normal].sum()
            # s / (1 + s) keeps the scores' order in [0, 1): the bins' resolution is finest near 0
            bins = (score / (1 + score) * AUC_BINS).long().clamp_(0, AUC_BINS - 1)
            self.histograms.index_put_((y.long(), bins), torch.ones_like(score), accumulate=True)
            return
        if self.regression:
            err = out - y
            k = self.k
            self.sums[2 : 2 + k] += (err**2).sum(0)
            self.sums[2 + k : 2 + 2 * k] += err.abs().sum(0)
            self.sums[2 + 2 * k : 2 + 3 * k] += y.sum(0)
            self.sums[2 + 3 * k :] += (y.double() ** 2).sum(0)
            return
        self.sums[2] += torch.nn.functional.cross_entropy(out, y, reduction="sum")
        pred = out.argmax(1)
        self.confusion.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
        if self.histograms is not None:
            positive = torch.softmax(out.double(), 1)[:, 1]
            bins = (positive * AUC_BINS).long().clamp_(0, AUC_BINS - 1)
            self.histograms.index_put_((y, bins), torch.ones_like(y, dtype=torch.float64), accumulate=True)

    def all_reduce(self) -> None:
        for t in (self.sums, getattr(self, "confusion", None), getattr(self, "histograms", None)):
            if t is not None:
                torch.distributed.all_reduce(t)

    def confusion_matrix(self) -> np.ndarray | None:
        return None if self.regression or self.anomaly else self.confusion.cpu().numpy()

    def metrics(self) -> dict[str, float]:
        s = self.sums.cpu().numpy()
        n = max(s[0], 1.0)
        out = {"val_loss": s[1] / n}
        if self.anomaly:
            # the mean score of the normal rows (all rows when none is labelled an anomaly)
            out["val_reconstruction_error"] = float(s[3] / s[2]) if s[2] else float(s[1] / n)
            auc = roc_auc_from_histograms(self.histograms.cpu().numpy())
            if not np.isnan(auc):  # only with labelled rows of both kinds
                out["val_roc_auc"] = auc
            return out
        if self.regression:
            k = self.k
            sse, sae, sy, syy = s[2 : 2 + k], s[2 + k : 2 + 2 * k], s[2 + 2 * k : 2 + 3 * k], s[2 + 3 * k :]
            total = syy - sy**2 / n
            r2 = np.where(total > 0, 1.0 - sse / np.where(total > 0, total, 1.0), 0.0)
            out.update(
                val_rmse=float(np.sqrt(sse.sum() / (n * k))),
                val_mae=float(sae.sum() / (n * k)),
                val_r2=float(r2.mean()),
            )
            if k > 1:  # the overall values mix the targets' units: each output's own too
                for i, key in enumerate(self.output_keys):
                    out[f"val_rmse/{key}"] = float(np.sqrt(sse[i] / n))
                    out[f"val_mae/{key}"] = float(sae[i] / n)
                    out[f"val_r2/{key}"] = float(r2[i])
            return out
        out.update(classification_metrics(self.confusion.cpu().numpy()))
        out["val_log_loss"] = s[2] / n
        if self.histograms is not None:
            auc = roc_auc_from_histograms(self.histograms.cpu().numpy())
            if not np.isnan(auc):  # undefined while the validation rows hold one class only
                out["val_roc_auc"] = auc
        return out


def output_keys(names: list[str] | None, k: int) -> list[str]:
    """A name for each of k regression outputs in metric keys: its target column (characters
    MLflow refuses in a metric key become _), else its index."""
    if not names or len(names) != k:
        return [str(i) for i in range(k)]
    keys = [re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(name)) for name in names]
    return keys if len(set(keys)) == k else [f"{i}_{key}" for i, key in enumerate(keys)]


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 from a confusion matrix (rows: true labels)."""
    per_class = per_class_scores(confusion)
    present = per_class["support"] + per_class["predicted"] > 0
    total = confusion.sum()
    return {
        "val_accuracy": float(np.trace(confusion) / total) if total else 0.0,
        "val_precision_macro": float(per_class["precision"][present].mean()) if present.any() else 0.0,
        "val_recall_macro": float(per_class["recall"][present].mean()) if present.any() else 0.0,
        "val_f1_macro": float(per_class["f1"][present].mean()) if present.any() else 0.0,
    }


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1, support (true rows) and predicted rows of each class; a class
    never predicted has precision 0, as scikit-learn's zero_division=0 gives."""
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1).astype(np.float64)
    predicted = confusion.sum(0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}


def roc_auc_from_histograms(histograms: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties (same bin) counted half."""
    negative, positive = histograms[0], histograms[1]
    n_neg, n_pos = negative.sum(), positive.sum()
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    below = np.cumsum(negative) - negative  # negatives in lower bins
    wins = (positive * (below + 0.5 * negative)).sum()
    return float(wins / (n_neg * n_pos))
