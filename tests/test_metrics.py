"""Validation metrics from all-reducible sums, against scikit-learn on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from raymaas.supervised.data import Targets, sort_classes, unseen_labels
from raymaas.supervised.metrics import Tally, per_class_scores


def _tally_of(targets, out, y, batches=3):
    tally = Tally(targets, torch.device("cpu"))
    for o, t in zip(torch.tensor_split(out, batches), torch.tensor_split(y, batches)):
        tally.add(o, t, torch.tensor(0.0))
    return tally.metrics()


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_match_scikit_learn(n_classes):
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 500)
    logits = rng.normal(size=(500, n_classes)) + 1.5 * np.eye(n_classes)[y]
    got = _tally_of(
        Targets(task="classification", classes=list(range(n_classes))), torch.tensor(logits), torch.tensor(y)
    )
    pred = logits.argmax(1)
    prob = torch.softmax(torch.tensor(logits), 1).numpy()
    assert got["val_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["val_precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert got["val_recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert got["val_f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["val_log_loss"] == pytest.approx(skm.log_loss(y, prob), rel=1e-6)
    if n_classes == 2:
        assert got["val_roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob[:, 1]), abs=2e-3)  # 1,024 bins
    else:
        assert "val_roc_auc" not in got


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.normal(100.0, 20.0, size=(300, 2))
    out = y + rng.normal(0.0, 5.0, size=y.shape)
    got = _tally_of(
        Targets(task="regression", mean=[100.0, 100.0], std=[20.0, 20.0]), torch.tensor(out), torch.tensor(y)
    )
    assert got["val_rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, out)))
    assert got["val_mae"] == pytest.approx(skm.mean_absolute_error(y, out))
    assert got["val_r2"] == pytest.approx(skm.r2_score(y, out))  # uniform average over the outputs


def test_per_class_scores_and_a_class_never_predicted():
    confusion = np.array([[5, 0, 0], [2, 3, 0], [1, 0, 0]])
    scores = per_class_scores(confusion)
    assert scores["precision"].tolist() == pytest.approx([5 / 8, 1.0, 0.0])
    assert scores["recall"].tolist() == pytest.approx([1.0, 0.6, 0.0])
    assert scores["support"].tolist() == [5, 5, 1]


def test_class_list_and_labels_seen_only_in_validation():
    assert sort_classes(np.array(["spam", "ham", "spam"], dtype=object)) == ["ham", "spam"]
    assert sort_classes(np.array([10, 3, 7])) == [3, 7, 10] and type(sort_classes(np.array([1, 2]))[0]) is int
    assert sort_classes([True, False]) == [False, True]
    assert unseen_labels(["ham", "eggs", "eggs", "spam"], ["ham", "spam"]) == {"eggs": 2}
    assert unseen_labels([3, 7], [3, 7, 10]) == {}
