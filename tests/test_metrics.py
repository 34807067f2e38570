"""mammoclip.evaluate.metrics: hand-computed AUROC / accuracy / macro F1, majority baseline, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mammoclip.evaluate.metrics import (
    aggregate_by,
    binary_metrics,
    bootstrap_weights,
    multiclass_metrics,
    summarise_runs,
)


def _separable_ish(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3 == 0
    score = y * 1.0 + rng.normal(0, 0.8, n)
    return y.astype(int), score


# ---- AUROC ----


def test_auroc_hand_computed():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs ranked right (0.35>0.1, 0.8>0.1, 0.8>0.4) = 3 of 4
    out = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_boot=0)
    assert out["auroc"] == pytest.approx(0.75)
    assert (out["n"], out["n_pos"], out["n_boot_skipped"]) == (4, 2, 0)
    assert math.isnan(out["auroc_low"]) and math.isnan(out["auroc_high"])  # no resamples, no interval
    # a tie between a positive and a negative counts one half: (1 + 0.5 + 1 + 1) / 4
    assert binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8], n_boot=0)["auroc"] == pytest.approx(0.875)
    assert binary_metrics([True, False], [0.9, 0.2], n_boot=0)["auroc"] == 1.0


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_single_class_gives_nan_with_note(labels):
    out = binary_metrics(labels, [0.5] * len(labels), n_boot=10)
    assert math.isnan(out["auroc"]) and math.isnan(out["auroc_low"]) and math.isnan(out["auroc_high"])
    assert "only one class" in out["note"]


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels in 0..1"),
        ([0, 1], [0.1], "entries"),
        ([0, 1], [0.1, np.nan], "non-finite"),
    ],
)
def test_binary_rejects_bad_input(y, s, match):
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, s, n_boot=0)


def test_bootstrap_interval_contains_estimate_and_is_deterministic():
    y, s = _separable_ish(60)
    a = binary_metrics(y, s, n_boot=200, seed=3)
    assert a["auroc_low"] <= a["auroc"] <= a["auroc_high"]
    assert a["auroc_low"] < a["auroc_high"]
    assert binary_metrics(y, s, n_boot=200, seed=3) == a
    b = binary_metrics(y, s, n_boot=200, seed=4)
    assert (b["auroc_low"], b["auroc_high"]) != (a["auroc_low"], a["auroc_high"])
    assert b["auroc"] == a["auroc"]


def test_bootstrap_narrows_with_more_data():
    y, s = _separable_ish(40)
    small = binary_metrics(y, s, n_boot=200, seed=0)
    large = binary_metrics(np.tile(y, 10), np.tile(s, 10), n_boot=200, seed=0)
    assert large["auroc"] == pytest.approx(small["auroc"])
    width_small = small["auroc_high"] - small["auroc_low"]
    width_large = large["auroc_high"] - large["auroc_low"]
    assert width_large < 0.5 * width_small  # ~ 1/sqrt(10)


def test_one_class_resamples_are_skipped_and_counted():
    out = binary_metrics([0, 1], [0.2, 0.9], n_boot=100, seed=0)
    assert 0 < out["n_boot_skipped"] < 100  # a resample of two rows has one class half of the time
    assert f"{out['n_boot_skipped']} of 100" in out["note"]
    assert out["auroc_low"] == out["auroc_high"] == 1.0


def test_weights_equal_explicit_resampling():
    y, s = _separable_ish(30)
    for weight in bootstrap_weights(30, n_boot=5, seed=1):
        assert weight.sum() == 30
        rows = np.repeat(np.arange(30), weight)
        keep = weight > 0
        assert roc_auc_score(y[keep], s[keep], sample_weight=weight[keep]) == pytest.approx(
            roc_auc_score(y[rows], s[rows])
        )


def test_grouped_bootstrap_keeps_groups_whole():
    groups = np.array(["p3", "p1", "p1", "p2", "p3", "p3", "p4"])
    sizes = {"p1": 2, "p2": 1, "p3": 3, "p4": 1}
    for weight in bootstrap_weights(len(groups), n_boot=50, seed=0, groups=groups):
        per_group = {g: set(weight[groups == g]) for g in sizes}
        assert all(len(v) == 1 for v in per_group.values())  # every row of a group drawn equally often
        assert sum(next(iter(v)) for v in per_group.values()) == len(sizes)  # 4 groups drawn


def test_grouped_bootstrap_resamples_patients_not_rows():
    y, s = _separable_ish(40)
    rows = binary_metrics(y, s, n_boot=200, seed=5)
    # distinct groups reproduce the row bootstrap exactly
    assert binary_metrics(y, s, n_boot=200, seed=5, groups=np.arange(40)) == rows
    # every patient has two identical images: resampling patients gives the row-level interval of the
    # original data, while treating the 80 images as independent understates the spread
    y2, s2, patients = np.repeat(y, 2), np.repeat(s, 2), np.repeat(np.arange(40), 2)
    grouped = binary_metrics(y2, s2, n_boot=200, seed=5, groups=patients)
    assert (grouped["auroc_low"], grouped["auroc_high"]) == pytest.approx(
        (rows["auroc_low"], rows["auroc_high"])
    )
    naive = binary_metrics(y2, s2, n_boot=200, seed=5)
    assert naive["auroc_high"] - naive["auroc_low"] < grouped["auroc_high"] - grouped["auroc_low"]
    with pytest.raises(ValueError, match="groups has 3 entries"):
        binary_metrics(y, s, n_boot=1, groups=[1, 2, 3])


# ---- multi-class ----

Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]


def test_accuracy_and_macro_f1_hand_computed():
    out = multiclass_metrics(Y_TRUE, Y_PRED, n_classes=4, n_boot=0)
    assert out["accuracy"] == pytest.approx(4 / 6)
    # per class F1: 0 -> P 1, R 2/3 -> 0.8; 1 -> P 1/2, R 1/2 -> 0.5; 2 -> P 1/2, R 1 -> 2/3; 3 absent -> 0
    assert out["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3 + 0.0) / 4)
    # with three classes the absent one no longer counts
    assert multiclass_metrics(Y_TRUE, Y_PRED, n_classes=3, n_boot=0)["macro_f1"] == pytest.approx(
        (0.8 + 0.5 + 2 / 3) / 3
    )
    assert (out["n"], out["n_classes"]) == (6, 4)


def test_majority_baseline_from_labels_or_given():
    out = multiclass_metrics(Y_TRUE, Y_PRED, n_classes=4, n_boot=0)
    assert (out["majority_class"], out["majority_source"]) == (0, "evaluated labels")
    assert out["majority_accuracy"] == pytest.approx(3 / 6)
    given = multiclass_metrics(Y_TRUE, Y_PRED, n_classes=4, n_boot=0, majority_class=2)
    assert (given["majority_class"], given["majority_source"]) == (2, "given")
    assert given["majority_accuracy"] == pytest.approx(1 / 6)
    # ties go to the smallest class
    assert multiclass_metrics([1, 1, 2, 2], [1, 1, 1, 1], n_classes=3, n_boot=0)["majority_class"] == 1
    with pytest.raises(ValueError, match="majority_class"):
        multiclass_metrics(Y_TRUE, Y_PRED, n_classes=4, n_boot=0, majority_class=7)


def test_multiclass_bootstrap():
    y_true, y_pred = np.tile(Y_TRUE, 10), np.tile(Y_PRED, 10)
    out = multiclass_metrics(y_true, y_pred, n_classes=4, n_boot=200, seed=1)
    for name in ("accuracy", "macro_f1"):
        assert out[f"{name}_low"] <= out[name] <= out[f"{name}_high"]
        assert out[f"{name}_low"] < out[f"{name}_high"]
    assert multiclass_metrics(y_true, y_pred, n_classes=4, n_boot=200, seed=1) == out
    grouped = multiclass_metrics(y_true, y_pred, n_classes=4, n_boot=200, seed=1, groups=np.arange(60))
    assert grouped == out


def test_multiclass_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels in 0..3"):
        multiclass_metrics([0, 4], [0, 1], n_classes=4, n_boot=0)
    with pytest.raises(ValueError, match="labels in 0..3"):
        multiclass_metrics([0, 1], [0, 1.5], n_classes=4, n_boot=0)
    empty = multiclass_metrics([], [], n_classes=4, n_boot=5)
    assert math.isnan(empty["accuracy"]) and empty["note"] == "no rows to evaluate"


# ---- aggregation and summaries ----


def test_aggregate_by_breast(caplog):
    frame = pd.DataFrame(
        {
            "patient_id": ["b", "a", "a", "a", "b", "b"],
            "laterality": ["L", "R", "R", "L", "L", "R"],
            "prediction": [0.2, 0.1, 0.5, 0.4, 0.6, 0.9],
            "cancer": [0, 1, 1, 0, 1, 0],
        }
    )
    out = aggregate_by(frame, ["patient_id", "laterality"], "prediction", "cancer")
    assert list(out.columns) == ["patient_id", "laterality", "prediction", "cancer", "n_rows"]
    assert out[["patient_id", "laterality"]].values.tolist() == [
        ["a", "L"],
        ["a", "R"],
        ["b", "L"],
        ["b", "R"],
    ]
    assert out["prediction"].tolist() == pytest.approx([0.4, 0.3, 0.4, 0.9])
    assert out["cancer"].tolist() == [0, 1, 1, 0]  # (b, L) rows disagree: max = 1
    assert out["n_rows"].tolist() == [1, 2, 2, 1]
    assert "1 of 4 groups" in caplog.text
    with pytest.raises(ValueError, match="missing columns"):
        aggregate_by(frame, "patient_id", "score", "cancer")


def test_summarise_runs():
    out = summarise_runs([0.7, 0.8, 0.9])
    assert out["mean"] == pytest.approx(0.8) and out["std"] == pytest.approx(0.1)
    assert (out["n"], out["n_nan"]) == (3, 0)
    with_nan = summarise_runs({0: 0.6, 1: float("nan"), 2: 0.8})
    assert with_nan["mean"] == pytest.approx(0.7) and (with_nan["n"], with_nan["n_nan"]) == (2, 1)
    single = summarise_runs([0.5])
    assert single["mean"] == 0.5 and math.isnan(single["std"])
    assert summarise_runs([])["n"] == 0 and math.isnan(summarise_runs([])["mean"])
