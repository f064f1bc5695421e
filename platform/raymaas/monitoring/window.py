"""A replica's recent inputs of one served model version, as the bins of its drift features
(a ring of `window` rows: bins, never values), and the predictions awaiting their labels; the
reference profile it bins against. Ray-free: raymaas.serving.monitoring's replica extension
keeps one per (model, version) and sends its snapshot to the hub (raymaas.serving.hub)."""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np

MAX_PENDING_ROWS_FACTOR = 4  # rows waiting to be binned, at most this many windows
MAX_CLASSES_REPORTED = 100  # labels of a classifier's answer shares in a report, the commonest


def profile_of(loaded, reference: str | None) -> tuple[dict | None, str | None]:
    """(the reference profile of a loaded model, why there is none): the profile logged with
    the model, else the serve config's reference file, else none."""
    from raymaas.monitoring.profile import check_profile, load_profile

    try:
        python_model = loaded.model.unwrap_python_model()
    except Exception:  # not a python_function model of raymaas (scikit-learn by hand, say)
        python_model = None
    profile = getattr(python_model, "reference_profile", None)
    if profile is not None:
        return check_profile(profile, f"{loaded.name} version {loaded.version}'s profile"), None
    if reference:
        try:
            return load_profile(reference), None
        except (OSError, ValueError) as err:
            return None, f"the reference file could not be read: {err}"
    return None, "the model was logged without a reference profile and the serve config names no reference file"


def prediction_values(result) -> list:
    """One JSON-able value per row of a model's output (a list for several outputs): of a
    frame, its `prediction` column (a classifier asked for probabilities) or its
    `anomaly_score` (an anomaly scorer: the score's distribution is what drifts, not the
    verdict at one threshold)."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        if "prediction" in result.columns:
            return result["prediction"].tolist()
        if "anomaly_score" in result.columns:
            return result["anomaly_score"].tolist()
        return result.to_numpy().tolist()
    if isinstance(result, pd.Series):
        return result.tolist()
    arr = np.asarray(result)
    return arr.tolist() if arr.ndim >= 1 else [arr.item()]


class InputWindow:
    """One model version's recent inputs in one replica, as the bins of its drift features."""

    def __init__(self, loaded, size: int, reference: str | None):
        self.version = loaded.version
        self.role = loaded.role  # followed, or a rollout's candidate
        self.profile, self.unavailable = profile_of(loaded, reference)
        if self.profile is not None and self.profile.get("binned") is False:
            n = len(self.profile["features"])
            self.profile, self.unavailable = None, f"the reference profile has no bins ({n} features are too many)"
        self.size = size
        features = self.profile["features"] if self.profile else []
        self.names = [f["name"] for f in features]
        self.edges = [np.asarray(f["edges"], dtype=np.float64) for f in features]
        self.columns = self.names if self.profile and self.profile["input"]["kind"] == "columns" else None
        # categorical columns, binned by category (raymaas.monitoring.profile.category_codes)
        self.categorical = {f["name"]: f["categories"] for f in features if f.get("kind") == "categorical"}
        predictions = (self.profile or {}).get("predictions") or {}
        self.task = {"classes": "classification", "values": "regression"}.get(predictions.get("kind"))
        self.output_edges = [np.asarray(o["edges"]) for o in predictions.get("outputs", [])]
        self.bins = np.zeros((size, len(features)), dtype=np.int16)
        self.times = np.zeros(size)
        self.filled = 0
        self.next = 0
        self.pending: deque = deque()  # (data, result, request_id, time, shadow): binned at the next push
        self.pending_rows = 0
        self.dropped_rows = 0
        self.profile_sent = False
        self.class_counts: Counter = Counter()  # a classifier's answers by label, since the window began

    def add(self, data, result, request_id: str, rows: int, shadow: bool = False) -> None:
        """A prediction's input and output; shadow: a rollout candidate's answer to a copy of a
        request, recorded and never returned."""
        self.pending.append((data, result, request_id, time.time(), shadow))
        self.pending_rows += rows
        while self.pending_rows > MAX_PENDING_ROWS_FACTOR * self.size and len(self.pending) > 1:
            old = self.pending.popleft()  # a replica that cannot keep up drops the oldest, not the request
            n = rows_of(old[0])
            self.pending_rows -= n
            self.dropped_rows += n

    def absorb(self) -> tuple[list, Counter, Counter]:
        """Bin what came since the last push; (predictions awaiting labels, class counts,
        regression bin counts)."""
        from raymaas.monitoring.profile import bin_index, drift_features
        from raymaas.serving.batching import _concat

        waiting, classes, value_bins = [], Counter(), Counter()
        taken = []
        while self.pending:
            data, result, request_id, at, shadow = self.pending.popleft()
            self.pending_rows -= rows_of(data)
            values = prediction_values(result)
            waiting.append((request_id, at, values, shadow))
            if self.task == "regression" and self.output_edges:
                out = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
                for k, edges in enumerate(self.output_edges[: out.shape[1]]):
                    for b, n in Counter(bin_index(out[:, k], edges).tolist()).items():
                        value_bins[(str(k), _bin_label(edges, b))] += n
            elif self.task != "regression":
                said = Counter(str(v) for v in values)
                classes.update(said)
                self.class_counts.update(said)
            taken.append((data, at))
        if self.profile is None or self.unavailable or not taken:
            return waiting, classes, value_bins
        # the requests' rows together: one binning per feature for the whole interval
        datas = [d for d, _ in taken]
        merged = _concat(datas) if len(datas) > 1 else datas[0]
        groups = [(merged, [at for _, at in taken], [rows_of(d) for d in datas])] if merged is not None else []
        if merged is None:  # inputs of different shapes or types: each on its own
            groups = [(d, [at], [rows_of(d)]) for d, at in taken]
        for data, times, counts in groups:
            try:
                matrix, names, _ = drift_features(data, self.columns, self.categorical)
            except (KeyError, ValueError, TypeError) as err:
                self.unavailable = f"the inputs do not match the reference profile: {err}"
                break
            if len(names) != len(self.names):
                self.unavailable = (
                    f"the inputs have {len(names)} drift features, the reference profile {len(self.names)}"
                )
                break
            bins = np.stack([bin_index(matrix[:, i], e) for i, e in enumerate(self.edges)], axis=1)
            self._store(bins, np.repeat(times, counts))
        return waiting, classes, value_bins

    def _store(self, bins: np.ndarray, times: np.ndarray) -> None:
        """Rows of bins into the ring, the oldest overwritten."""
        if len(bins) > self.size:
            bins, times = bins[-self.size :], times[-self.size :]
        n = len(bins)
        idx = (self.next + np.arange(n)) % self.size
        self.bins[idx] = bins
        self.times[idx] = times
        self.next = int((self.next + n) % self.size)
        self.filled = min(self.size, self.filled + n)

    def snapshot(self) -> dict:
        from raymaas.monitoring.drift import window_counts

        held = self.times[: self.filled] if self.filled < self.size else self.times
        out = {
            "version": self.version,
            "role": self.role,
            "class_counts": dict(self.class_counts.most_common(MAX_CLASSES_REPORTED)),
            "rows": int(self.filled),
            "oldest": float(held.min()) if self.filled else None,
            "newest": float(held.max()) if self.filled else None,
            "dropped_rows": self.dropped_rows,
            "unavailable": self.unavailable,
            "task": self.task,
            "counts": None,
        }
        if self.profile is not None and not self.unavailable and self.filled:
            out["counts"] = [c.tolist() for c in window_counts(self.bins[: self.filled].astype(np.int64), self.profile)]
        return out


def rows_of(data) -> int:
    """Rows of a parsed input (1 for one that has no length)."""
    try:
        return len(data)
    except TypeError:
        return 1


def _bin_label(edges: np.ndarray, b: int) -> str:
    if b == 0:
        return f"<{edges[0]:.4g}"
    if b >= len(edges) + 1:
        return "missing"
    if b == len(edges):
        return f">{edges[-1]:.4g}"
    return f"[{edges[b - 1]:.4g},{edges[b]:.4g})"


# A label: a value, or a list of values (a prediction of several outputs)
