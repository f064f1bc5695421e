"""The reference profile, drift and live scores on their own (no Ray): what the endpoints'
monitoring computes, checked on the bundled digits and on generated columns. The served side
(metrics scraped from Ray's export, /monitor across replicas, /feedback) is in test_serve.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from raymaas.monitoring.drift import DriftThresholds, drift_report, psi, window_counts
from raymaas.monitoring.live import classification_scores, regression_scores
from raymaas.monitoring.profile import (
    MAX_BYTES,
    bin_index,
    build_profile,
    drift_features,
    dumps,
    load_profile,
)


def _report(profile, rows, thresholds=DriftThresholds()):
    columns = [f["name"] for f in profile["features"]] if isinstance(rows, pd.DataFrame) else None
    categorical = {f["name"]: f["categories"] for f in profile["features"] if f.get("kind") == "categorical"}
    matrix, _, _ = drift_features(rows, columns, categorical)
    bins = np.stack(
        [bin_index(matrix[:, i], np.asarray(f["edges"])) for i, f in enumerate(profile["features"])], axis=1
    )
    return drift_report(profile, window_counts(bins, profile), len(matrix), thresholds)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    return x[order].astype(np.float32), y[order]


def test_digits_profile_is_small_and_bins_its_own_training_rows_as_it_says(digits):
    x, y = digits
    profile = build_profile(x[:1400], predictions=y[1400:].tolist(), task="classification", classes=list(range(10)))
    assert len(dumps(profile).encode()) <= MAX_BYTES
    assert profile["rows"] == 1400 and len(profile["features"]) == 64
    assert profile["predictions"]["labels"] == [str(i) for i in range(10)]
    assert abs(sum(profile["predictions"]["reference"]) - 1) < 1e-4
    for i in (0, 21, 36):
        f = profile["features"][i]
        # the fractions are those of the training rows in the stored edges' bins
        counts = np.bincount(
            bin_index(x[:1400, i].astype(np.float64), np.asarray(f["edges"])), minlength=len(f["edges"]) + 2
        )
        assert np.allclose(counts / 1400, f["reference"], atol=1e-6)
        assert f["reference"][0] == 0 and f["reference"][-2] == 0  # nothing below or above the training range
    # a constant feature (pixel 0 is always 0) still has a bin on each side of its value
    assert profile["features"][0]["std"] == 0 and len(profile["features"][0]["edges"]) == 2


def test_in_distribution_flags_nothing_and_a_3_sigma_shift_flags_that_feature_only(digits):
    x, _ = digits
    profile = build_profile(x[:1400])
    assert _report(profile, x[1400:])["flagged"] == []
    rng = np.random.default_rng(1)
    for n in (150, 400, 1000):  # resampled training rows: no false alarm at any window size
        assert _report(profile, x[rng.integers(0, 1400, n)])["flagged"] == []
    for k in (21, 43):
        shifted = x[1400:].copy()
        shifted[:, k] += 3 * profile["features"][k]["std"]
        report = _report(profile, shifted)
        assert report["flagged"] == [str(k)], report["flagged"]
        assert report["features"][str(k)]["psi"] > 1 and report["features"][str(k)]["ks_pvalue"] < 1e-6


def test_too_few_rows_flag_nothing_and_say_so(digits):
    x, _ = digits
    profile = build_profile(x[:1400])
    shifted = x[1400:1450].copy()
    shifted[:, 21] += 100
    report = _report(profile, shifted)
    assert report["status"] == "too few rows" and report["flagged"] == []
    assert report["features"]["21"]["psi"] > 1  # scored all the same


def test_columns_missing_values_and_out_of_range():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {"age": rng.normal(40, 10, 2000), "income": rng.lognormal(10, 1, 2000), "flag": rng.integers(0, 2, 2000)}
    )
    profile = build_profile(frame)
    assert [f["name"] for f in profile["features"]] == ["age", "income", "flag"]
    assert profile["input"]["kind"] == "columns"
    served = frame.sample(500, random_state=3).reset_index(drop=True)
    assert _report(profile, served)["flagged"] == []
    served.loc[:200, "income"] = np.nan  # missing values are a drift of their own
    served.loc[:, "age"] = 500.0  # far beyond the training range
    report = _report(profile, served)
    assert sorted(report["flagged"]) == ["age", "income"]


def test_tensor_inputs_are_profiled_per_channel():
    rng = np.random.default_rng(4)
    images = rng.normal(0.5, 0.1, size=(300, 3, 8, 8)).astype(np.float32)
    profile = build_profile(images)
    names = [f["name"] for f in profile["features"]]
    assert names == ["mean[0]", "mean[1]", "mean[2]", "std[0]", "std[1]", "std[2]"]
    assert profile["input"]["shape"] == [3, 8, 8] and "summary" in profile["input"]
    brighter = images.copy()
    brighter[:, 1] += 0.3
    assert _report(profile, brighter)["flagged"] == ["mean[1]"]
    sequences = rng.normal(size=(300, 20, 2))  # [n, length, channels]
    assert [f["name"] for f in build_profile(sequences)["features"]] == ["mean[0]", "mean[1]", "std[0]", "std[1]"]


def test_regression_predictions_and_profile_files(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 4))
    profile = build_profile(x, predictions=rng.normal(100, 5, 200), task="regression", output_names=["price"])
    assert profile["predictions"]["kind"] == "values"
    assert profile["predictions"]["outputs"][0]["name"] == "price"
    (tmp_path / "p.json").write_text(json.dumps(profile))
    assert load_profile(tmp_path / "p.json") == profile
    pd.DataFrame(x, columns=list("abcd")).to_csv(tmp_path / "rows.csv", index=False)
    assert [f["name"] for f in load_profile(tmp_path / "rows.csv")["features"]] == list("abcd")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a raymaas reference profile"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="give a profile"):
        load_profile(tmp_path / "rows.txt")


def test_wide_inputs_are_kept_under_the_size_limit():
    x = np.random.default_rng(6).normal(size=(2000, 700))
    profile = build_profile(x)
    assert len(dumps(profile).encode()) <= MAX_BYTES and len(profile["features"]) == 700


def test_psi_and_live_scores():
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(ref, np.array([25, 25, 25, 25])) == pytest.approx(0)
    assert psi(ref, np.array([100, 0, 0, 0])) > 2
    scores = classification_scores(["spam", "ham", "spam", 3], ["spam", "spam", "spam", "3"])
    assert scores["accuracy"] == 0.75  # a JSON 3 and a served "3" are one class
    assert 0 < scores["f1_macro"] < 1
    assert regression_scores([1.0, 2.0, 4.0], [1.0, 2.0, 2.0]) == pytest.approx({"rmse": (4 / 3) ** 0.5, "mae": 2 / 3})


def test_the_grafana_dashboard_charts_the_series_the_endpoints_export():
    import re

    from conftest import REPO

    serving = REPO / "platform" / "raymaas" / "serving"
    source = (serving / "monitoring.py").read_text() + (serving / "hub.py").read_text()  # the replica's, the hub's
    exported = set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(raymaas_\w+)"', source))
    assert len(exported) == 16, exported
    dashboard = json.loads((REPO / "docs" / "grafana" / "raymaas-endpoints.json").read_text())
    charted = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_(raymaas_\w+)", target["expr"])
    }
    assert charted == exported


def test_a_categorical_column_drifts_by_its_category_shares():
    """Categories are bins of their own (unseen values and nulls too): a window with the
    training shares flags nothing; one where a rare category took over, or where values
    training never saw arrive, is flagged by PSI and chi-squared; numbers keep KS."""
    rng = np.random.default_rng(0)
    n = 4000
    train = pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east"], n, p=[0.6, 0.3, 0.1]),
            "term": rng.choice([12, 36], n).astype(np.int64),
            "income": rng.normal(50, 10, n),
        }
    )
    categorical = {"region": ["north", "south", "east"], "term": [12, 36]}
    profile = build_profile(train, categorical=categorical)
    region = profile["features"][0]
    assert region["kind"] == "categorical" and region["categories"] == ["north", "south", "east"]
    assert region["reference"] == pytest.approx([0.6, 0.3, 0.1, 0.0, 0.0], abs=0.03)  # + unseen, missing
    assert profile["features"][1]["categories"] == ["12", "36"]
    json.loads(dumps(profile))

    same = train.sample(1000, random_state=1).assign(term=lambda f: f.term.astype("float64"))  # 36.0 is 36
    report = _report(profile, same, DriftThresholds(min_rows=100))
    assert report["flagged"] == [], report
    assert {"chi2_statistic", "chi2_pvalue"} <= set(report["features"]["region"])
    assert "ks_pvalue" in report["features"]["income"] and "chi2_pvalue" not in report["features"]["income"]

    shifted = same.assign(region=rng.choice(["east", "atlantis", None], 1000, p=[0.5, 0.3, 0.2]))
    report = _report(profile, shifted, DriftThresholds(min_rows=100))
    assert report["flagged"] == ["region"], report
    assert report["features"]["region"]["chi2_pvalue"] < 1e-6 and report["features"]["region"]["psi"] > 1
