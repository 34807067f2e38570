"""mammoclip.evaluate.detection: hand-computed matching, VOC AP, FROC and CPM, the patient bootstrap, and a
cross-check of matching and AP against pycocotools (an independent COCO implementation, test-only)."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pandas as pd
import pytest

from mammoclip.evaluate.detection import (
    FPS_PER_IMAGE,
    cpm,
    detection_metrics,
    froc_curve,
    froc_metric_name,
    froc_points,
    match_detections,
    voc_ap,
)
from mammoclip.evaluate.metrics import bootstrap_weights


def boxes(rows: list[tuple]) -> pd.DataFrame:
    """Truths from ``(image_id, xmin, ymin, xmax, ymax)`` tuples."""
    return pd.DataFrame(rows, columns=["image_id", "xmin", "ymin", "xmax", "ymax"])


def dets(rows: list[tuple]) -> pd.DataFrame:
    """Detections from ``(image_id, score, xmin, ymin, xmax, ymax)`` tuples."""
    return pd.DataFrame(rows, columns=["image_id", "score", "xmin", "ymin", "xmax", "ymax"])


def images(ids: list, patients: list | None = None) -> pd.DataFrame:
    return pd.DataFrame({"image_id": ids, "patient_id": ids if patients is None else patients})


NO_DETS = dets([])
NO_TRUTHS = boxes([])
SQUARE = (0.0, 0.0, 10.0, 10.0)
OTHER = (20.0, 20.0, 30.0, 30.0)
MISS = (50.0, 50.0, 60.0, 60.0)


def tp_of(detections, truths, **kwargs) -> list[bool]:
    return match_detections(detections, truths, **kwargs)["tp"].tolist()


# ---- matching ----


def test_duplicate_detection_is_a_false_positive():
    truths = boxes([("a", *SQUARE)])
    # the lower-scored duplicate overlaps better (IoU 1 vs 0.81) but comes second: it is the false positive
    detections = dets([("a", 0.8, *SQUARE), ("a", 0.9, 0.0, 0.0, 9.0, 9.0)])
    out = match_detections(detections, truths)
    assert out["score"].tolist() == [0.9, 0.8]
    assert out["tp"].tolist() == [True, False]
    assert out["iou"].tolist() == pytest.approx([0.81, 1.0])
    assert out["matched"].tolist() == [0, -1]
    assert out["precision"].tolist() == pytest.approx([1.0, 0.5])
    assert out["recall"].tolist() == pytest.approx([1.0, 1.0])
    assert voc_ap(detections, truths) == 1.0  # precision 1 up to recall 1, the duplicate comes after


def test_iou_threshold_is_inclusive_and_configurable():
    truths = boxes([("a", *SQUARE)])
    half = dets([("a", 0.9, 0.0, 0.0, 10.0, 5.0)])  # IoU exactly 50 / 100
    assert tp_of(half, truths) == [True]
    assert tp_of(half, truths, iou_threshold=0.51) == [False]
    assert voc_ap(half, truths, iou_threshold=0.75) == 0.0


def test_several_boxes_per_image():
    truths = boxes([("a", *SQUARE), ("a", *OTHER), ("b", *SQUARE)])
    detections = dets(
        [
            ("a", 0.9, *OTHER),  # TP (second truth of a)
            ("a", 0.8, *MISS),  # FP
            ("a", 0.7, 1.0, 0.0, 11.0, 10.0),  # TP (first truth of a, IoU 90 / 110)
            ("b", 0.6, *OTHER),  # FP: b's truth is elsewhere
        ]
    )
    out = match_detections(detections, truths)
    assert out["tp"].tolist() == [True, False, True, False]
    assert out["matched"].tolist() == [1, -1, 0, -1]
    # precision 1, 1/2, 2/3, 2/4 at recall 1/3, 1/3, 2/3, 2/3; envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3]
    assert voc_ap(detections, truths) == pytest.approx(1 / 3 + 2 / 9)


def test_best_truth_rule_is_vocs_not_cocos():
    # g1 and g2 overlap each other. B's best truth is g1 (IoU 0.905), already taken by A, so under the VOC
    # (and upstream) rule B is a false positive although it overlaps g2 by 0.739 >= 0.5; COCO would give B g2.
    truths = boxes([("a", 0.0, 0.0, 10.0, 10.0), ("a", 2.0, 0.0, 12.0, 10.0)])
    detections = dets([("a", 0.9, 0.0, 0.0, 10.0, 10.0), ("a", 0.8, 0.5, 0.0, 10.5, 10.0)])
    out = match_detections(detections, truths)
    assert out["tp"].tolist() == [True, False]
    assert out["iou"].tolist() == pytest.approx([1.0, 9.5 / 10.5])


def test_equal_iou_goes_to_the_first_truth():
    truths = boxes([("a", 0.0, 0.0, 10.0, 10.0), ("a", 2.0, 0.0, 12.0, 10.0)])
    middle = dets([("a", 0.9, 1.0, 0.0, 11.0, 10.0)])  # IoU 90 / 110 with both
    assert match_detections(middle, truths)["matched"].tolist() == [0]
    assert match_detections(middle, truths.iloc[::-1].reset_index(drop=True))["matched"].tolist() == [0]


def test_detections_on_images_without_boxes_are_false_positives():
    truths = boxes([("a", *SQUARE)])
    detections = dets([("empty", 0.95, *SQUARE), ("a", 0.9, *SQUARE), ("empty", 0.5, *OTHER)])
    out = match_detections(detections, truths)
    assert out["image_id"].tolist() == ["empty", "a", "empty"]
    assert out["tp"].tolist() == [False, True, False]
    assert out["iou"].tolist() == [0.0, 1.0, 0.0]
    # precision 1/2 at recall 1 (the FP on the empty image ranks first)
    assert voc_ap(detections, truths) == pytest.approx(0.5)
    # FP per image counts the images without any box or detection too (n_images = 4 here)
    curve = froc_curve(detections, truths, 4)
    assert curve["fp_per_image"].tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert curve["sensitivity"].tolist() == [0.0, 1.0, 1.0]


def test_ties_are_broken_by_image_id_then_input_order():
    truths = boxes([("a", *SQUARE), ("b", *SQUARE)])
    detections = dets(
        [
            ("b", 0.5, *SQUARE),  # TP
            ("a", 0.5, *MISS),  # FP
            ("a", 0.5, *SQUARE),  # TP
            ("b", 0.5, *MISS),  # FP
        ]
    ).assign(row=range(4))
    out = match_detections(detections, truths)
    assert out["row"].tolist() == [1, 2, 0, 3]  # image a first, then input order within an image
    assert out["tp"].tolist() == [False, True, True, False]
    # precision 0, 1/2, 2/3, 2/4 at recall 0, 1/2, 1, 1 -> envelope 2/3 over (0, 1]
    assert voc_ap(detections, truths) == pytest.approx(2 / 3)
    # interleaving the rows of different images differently (same order within each image) changes nothing
    shuffled = detections.iloc[[1, 0, 3, 2]]
    assert match_detections(shuffled, truths)["row"].tolist() == [1, 2, 0, 3]
    assert voc_ap(shuffled, truths) == voc_ap(detections, truths)


def test_integer_image_ids_sort_numerically():
    truths = boxes([(10, *SQUARE)])
    detections = dets([(10, 0.5, *SQUARE), (9, 0.5, *SQUARE)])
    assert match_detections(detections, truths)["image_id"].tolist() == [9, 10]


def test_extra_columns_are_kept_and_index_reset():
    truths = boxes([("a", *SQUARE)])
    detections = dets([("a", 0.1, *SQUARE), ("a", 0.9, *MISS)]).assign(note=["x", "y"])
    detections.index = [7, 3]
    out = match_detections(detections, truths)
    assert out["note"].tolist() == ["y", "x"]
    assert out.index.tolist() == [0, 1]
    assert list(out.columns[-5:]) == ["tp", "iou", "matched", "precision", "recall"]


# ---- AP ----


def test_all_point_interpolation_worked_example():
    # Four truths (two per image), detections in score order: TP, FP, FP, TP, TP, FP.
    #   cumulative TP 1 1 1 2 3 3, FP 0 1 2 2 2 3
    #   precision     1 1/2 1/3 1/2 3/5 1/2,   recall 1/4 1/4 1/4 1/2 3/4 3/4
    # Envelope (max precision at recall >= r): 1 on (0, 1/4], 3/5 on (1/4, 1/2] (the later 3/5 lifts the
    # 1/2), 3/5 on (1/2, 3/4], 0 on (3/4, 1] (the fourth truth is never found).
    #   all-point AP = 1/4 * 1 + 1/4 * 3/5 + 1/4 * 3/5 = 0.25 + 0.15 + 0.15 = 0.55
    # whereas the mean precision at the TPs (no interpolation) is (1 + 1/2 + 3/5) / 4 = 0.525 and VOC2007's
    # 11-point value is (3 * 1 + 5 * 3/5) / 11 = 0.5454...
    truths = boxes([("a", *SQUARE), ("a", *OTHER), ("b", *SQUARE), ("b", *OTHER)])
    detections = dets(
        [
            ("a", 0.9, *SQUARE),
            ("a", 0.8, *MISS),
            ("b", 0.7, *MISS),
            ("b", 0.6, *SQUARE),
            ("a", 0.5, *OTHER),
            ("a", 0.4, 70.0, 70.0, 80.0, 80.0),
        ]
    )
    out = match_detections(detections, truths)
    assert out["tp"].tolist() == [True, False, False, True, True, False]
    assert out["precision"].tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 2, 3 / 5, 1 / 2])
    assert out["recall"].tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 4, 1 / 2, 3 / 4, 3 / 4])
    assert voc_ap(detections, truths) == pytest.approx(0.55)


def test_no_detections_gives_ap_zero():
    truths = boxes([("a", *SQUARE)])
    assert voc_ap(NO_DETS, truths) == 0.0
    assert voc_ap(dets([("a", 0.9, *MISS)]), truths) == 0.0  # only false positives
    assert froc_curve(NO_DETS, truths, 1).empty
    assert froc_points(NO_DETS, truths, 1) == dict.fromkeys(FPS_PER_IMAGE, 0.0)


def test_no_truths_gives_nan():
    detections = dets([("a", 0.9, *SQUARE)])
    assert math.isnan(voc_ap(detections, NO_TRUTHS))
    assert math.isnan(voc_ap(NO_DETS, NO_TRUTHS))
    out = match_detections(detections, NO_TRUTHS)
    assert out["tp"].tolist() == [False] and math.isnan(out["recall"].iloc[0])
    points = froc_points(detections, NO_TRUTHS, 2)
    assert all(math.isnan(v) for v in points.values()) and math.isnan(cpm(points))
    assert froc_curve(detections, NO_TRUTHS, 2)["sensitivity"].isna().all()
    table = detection_metrics(detections, NO_TRUTHS, images(["a", "b"]), froc=True, n_boot=20, seed=0)
    assert table[["value", "value_low", "value_high"]].isna().all().all()


def test_perfect_detector():
    truths = boxes([("a", *SQUARE), ("a", *OTHER), ("b", *SQUARE), ("c", *MISS)])
    detections = truths.assign(score=[0.9, 0.3, 0.6, 0.99])
    assert voc_ap(detections, truths) == 1.0
    points = froc_points(detections, truths, 5)  # image "d" without boxes also evaluated
    assert points == dict.fromkeys(FPS_PER_IMAGE, 1.0)
    assert cpm(points) == 1.0
    # lower-scored false positives after all truths are found do not change AP or the FROC points
    noisy = pd.concat([detections, dets([("d", 0.1, *SQUARE), ("a", 0.05, *MISS)])], ignore_index=True)
    assert voc_ap(noisy, truths) == 1.0
    assert cpm(froc_points(noisy, truths, 5)) == 1.0
    table = detection_metrics(
        noisy, truths, images(list("abcd"), [1, 1, 2, 3]), froc=True, n_boot=50, seed=0
    ).set_index("metric")
    assert (table["value"] == 1.0).all()
    assert (table.loc[["map50", "cpm"], ["value_low", "value_high"]] == 1.0).all().all()


# ---- FROC ----


def froc_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    # 4 images (a, b with boxes; c, d without), 3 truths
    truths = boxes([("a", *SQUARE), ("a", *OTHER), ("b", *SQUARE)])
    detections = dets(
        [
            ("a", 0.95, *SQUARE),  # TP 1
            ("c", 0.9, *SQUARE),  # FP 1
            ("b", 0.8, *SQUARE),  # TP 2
            ("d", 0.7, *SQUARE),  # FP 2
            ("c", 0.7, *OTHER),  # FP 3, tied with the one on d: both enter at threshold 0.7
            ("b", 0.6, *OTHER),  # FP 4
            ("a", 0.5, *SQUARE),  # FP 5 (duplicate)
            ("a", 0.4, *OTHER),  # TP 3
            ("d", 0.3, *MISS),  # FP 6
        ]
    )
    return detections, truths


def test_froc_curve_hand_built():
    detections, truths = froc_case()
    curve = froc_curve(detections, truths, 4)
    assert list(curve.columns) == ["threshold", "fp_per_image", "sensitivity"]
    assert curve["threshold"].tolist() == [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert (curve["fp_per_image"] * 4).tolist() == [0, 1, 1, 3, 4, 5, 5, 6]
    assert (curve["sensitivity"] * 3).round(12).tolist() == [1, 1, 2, 2, 2, 2, 3, 3]


def test_froc_points_hand_built():
    detections, truths = froc_case()
    points = froc_points(detections, truths, 4)
    # FP allowed = rate * 4 images: 0.5 -> 1/3 (threshold 0.95), 1 -> 2/3 (0.8), 2 -> 2/3 (0.8: the tie at
    # 0.7 adds two FPs at once, 3 > 2), 4 -> 2/3 (0.6: FP 4), 8 -> 1 (0.4: FP 5), 16 -> 1
    assert list(points) == list(FPS_PER_IMAGE)
    expected = [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0, 1.0]
    assert list(points.values()) == pytest.approx(expected)
    assert cpm(points) == pytest.approx(sum(expected) / 6)
    # other rates: 0.1 * 4 = 0.4 allows no FP (threshold 0.95); rate 0 when the first detection is an FP
    assert froc_points(detections, truths, 4, fps_per_image=(0.1,)) == {0.1: pytest.approx(1 / 3)}
    without_a = detections[detections["image_id"] != "a"]
    assert froc_points(without_a, truths, 4, fps_per_image=(0.0,)) == {0.0: 0.0}


def test_froc_n_images_must_cover_the_images():
    detections, truths = froc_case()
    with pytest.raises(ValueError, match="distinct images"):
        froc_curve(detections, truths, 3)
    with pytest.raises(ValueError, match="positive integer"):
        froc_points(detections, truths, 0)


def test_cpm_is_the_mean():
    assert cpm({0.125: 0.2, 0.25: 0.4}) == pytest.approx(0.3)
    assert math.isnan(cpm({}))


# ---- detection_metrics and the bootstrap ----


def random_case(seed: int, n_images: int = 30, n_patients: int = 12):
    """Random truths (non-overlapping, in quadrants of a 100 x 100 image) and detections (jittered truths,
    duplicates, random boxes, scores rounded to 2 decimals so that ties occur)."""
    rng = np.random.default_rng(seed)
    image_ids = [f"img{i:03d}" for i in range(n_images)]
    truth_rows, det_rows = [], []
    quadrants = [(0, 0), (50, 0), (0, 50), (50, 50)]
    for image in image_ids:
        n_truths = rng.choice([0, 0, 1, 1, 2, 3])
        for q in rng.permutation(4)[:n_truths]:
            x0, y0 = quadrants[q]
            x, y = x0 + rng.uniform(0, 20), y0 + rng.uniform(0, 20)
            w, h = rng.uniform(10, 30), rng.uniform(10, 30)
            truth = (x, y, x + w, y + h)
            truth_rows.append((image, *truth))
            for _ in range(rng.choice([0, 1, 1, 2])):  # misses, hits, duplicates
                jitter = rng.normal(0, 0.15, 4) * np.array([w, h, w, h])
                det_rows.append((image, rng.uniform(), *(np.array(truth) + jitter)))
        for _ in range(rng.poisson(1.0)):
            x, y = rng.uniform(0, 80, 2)
            det_rows.append((image, rng.uniform(), x, y, x + rng.uniform(5, 20), y + rng.uniform(5, 20)))
    detections = dets(det_rows)
    detections["xmax"] = np.maximum(detections["xmax"], detections["xmin"])
    detections["ymax"] = np.maximum(detections["ymax"], detections["ymin"])
    detections["score"] = detections["score"].round(2)
    patients = [f"p{rng.integers(n_patients):02d}" for _ in image_ids]
    return detections, boxes(truth_rows), images(image_ids, patients)


def test_detection_metrics_rows_and_columns():
    detections, truths, imgs = random_case(0)
    table = detection_metrics(detections, truths, imgs, froc=True, n_boot=100, seed=1)
    columns = ["metric", "value", "value_low", "value_high", "n_images", "n_boxes", "n_patients"]
    assert list(table.columns) == columns
    names = ["map50", "cpm", *(froc_metric_name(r) for r in FPS_PER_IMAGE)]
    assert table["metric"].tolist() == names
    assert froc_metric_name(0.125) == "sensitivity_at_0.125" and froc_metric_name(1) == "sensitivity_at_1"
    assert (table["n_images"] == 30).all() and (table["n_boxes"] == len(truths)).all()
    assert (table["n_patients"] == imgs["patient_id"].nunique()).all()
    values = table.set_index("metric")["value"]
    assert values["map50"] == pytest.approx(voc_ap(detections, truths))
    points = froc_points(detections, truths, 30)
    assert values["cpm"] == pytest.approx(cpm(points))
    assert [values[froc_metric_name(r)] for r in FPS_PER_IMAGE] == pytest.approx(list(points.values()))
    only_ap = detection_metrics(detections, truths, imgs, froc=False, n_boot=0, seed=1)
    assert only_ap["metric"].tolist() == ["map50"] and only_ap["value_low"].isna().all()
    assert detection_metrics(detections, truths, imgs, froc=False, n_boot=0, seed=1, iou_threshold=0.75)[
        "metric"
    ].tolist() == ["map75"]


def test_bootstrap_interval_contains_value_and_is_seeded():
    detections, truths, imgs = random_case(1)
    a = detection_metrics(detections, truths, imgs, froc=True, n_boot=200, seed=3)
    for metric in ("map50", "cpm"):
        row = a.set_index("metric").loc[metric]
        assert row["value_low"] <= row["value"] <= row["value_high"]
        assert row["value_low"] < row["value_high"]
    again = detection_metrics(detections, truths, imgs, froc=True, n_boot=200, seed=3)
    pd.testing.assert_frame_equal(a, again)
    b = detection_metrics(detections, truths, imgs, froc=True, n_boot=200, seed=4)
    assert b["value"].tolist() == a["value"].tolist()
    assert b["value_low"].tolist() != a["value_low"].tolist()


def materialise(detections, truths, weight: np.ndarray, image_ids: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The resampled data set itself: ``weight[i]`` copies of image ``i`` under new ids."""
    det_parts, truth_parts = [], []
    for image, w in zip(image_ids, weight, strict=True):
        for copy in range(w):
            det_parts.append(detections[detections["image_id"] == image].assign(image_id=f"{image}#{copy}"))
            truth_parts.append(truths[truths["image_id"] == image].assign(image_id=f"{image}#{copy}"))
    return pd.concat([NO_DETS, *det_parts], ignore_index=True), pd.concat([NO_TRUTHS, *truth_parts])


def test_bootstrap_equals_recomputing_on_resampled_patients():
    # distinct scores, so that the copies of a detection are the only ties
    detections, truths, imgs = random_case(2, n_images=16, n_patients=6)
    detections["score"] = np.random.default_rng(0).permutation(len(detections)) / len(detections)
    n_boot, seed = 40, 5
    table = detection_metrics(detections, truths, imgs, froc=True, n_boot=n_boot, seed=seed)
    table = table.set_index("metric")
    aps, cpms = [], []
    image_ids = imgs["image_id"].tolist()
    groups = imgs["patient_id"].to_numpy()
    for weight in bootstrap_weights(len(imgs), n_boot=n_boot, seed=seed, groups=groups):
        d, t = materialise(detections, truths, weight, image_ids)
        if len(t):
            aps.append(voc_ap(d, t))
            cpms.append(cpm(froc_points(d, t, int(weight.sum()))))
    for metric, values in (("map50", aps), ("cpm", cpms)):
        low, high = np.quantile(values, [0.025, 0.975])
        assert table.loc[metric, "value_low"] == pytest.approx(low)
        assert table.loc[metric, "value_high"] == pytest.approx(high)


def test_bootstrap_resamples_patients_not_images():
    # Every patient has one image with a found mass (TP, score 0.5) and one image with a false positive
    # (score 0.9). Any resample of patients keeps FP and TP images in equal numbers, so AP is always 1/2
    # (all FPs rank first); resampling images independently would change the ratio.
    ids, patients, truth_rows, det_rows = [], [], [], []
    for p in range(10):
        ids += [f"tp{p}", f"fp{p}"]
        patients += [p, p]
        truth_rows.append((f"tp{p}", *SQUARE))
        det_rows += [(f"tp{p}", 0.5, *SQUARE), (f"fp{p}", 0.9, *SQUARE)]
    detections, truths = dets(det_rows), boxes(truth_rows)
    by_patient = detection_metrics(detections, truths, images(ids, patients), froc=False, n_boot=200, seed=0)
    assert by_patient[["value", "value_low", "value_high"]].iloc[0].tolist() == pytest.approx([0.5] * 3)
    by_image = detection_metrics(detections, truths, images(ids), froc=False, n_boot=200, seed=0)
    low, high = by_image[["value_low", "value_high"]].iloc[0]
    assert low < 0.45 and high > 0.55


def test_detection_metrics_rejects_bad_input():
    detections, truths, imgs = random_case(3)
    with pytest.raises(ValueError, match="not listed in images"):
        detection_metrics(detections, truths, imgs.iloc[1:], froc=False, n_boot=0, seed=0)
    with pytest.raises(ValueError, match="duplicated image_id"):
        detection_metrics(detections, truths, pd.concat([imgs, imgs]), froc=False, n_boot=0, seed=0)
    with pytest.raises(ValueError, match="missing columns"):
        detection_metrics(detections, truths, imgs[["image_id"]], froc=False, n_boot=0, seed=0)
    with pytest.raises(ValueError, match="n_boot"):
        detection_metrics(detections, truths, imgs, froc=False, n_boot=-1, seed=0)


@pytest.mark.parametrize(
    ("detections", "truths", "kwargs", "match"),
    [
        (dets([("a", 0.5, *SQUARE)]).drop(columns="score"), NO_TRUTHS, {}, "missing columns"),
        (dets([("a", float("nan"), *SQUARE)]), NO_TRUTHS, {}, "not finite"),
        (dets([("a", 0.5, 0.0, 0.0, np.inf, 1.0)]), NO_TRUTHS, {}, "non-finite"),
        (NO_DETS, boxes([("a", 5.0, 0.0, 1.0, 1.0)]), {}, "xmax < xmin"),
        (NO_DETS, boxes([("a", 0.0, 0.0, float("nan"), 1.0)]), {}, "non-finite"),
        (NO_DETS, NO_TRUTHS, {"iou_threshold": 0.0}, "iou_threshold"),
        (NO_DETS, NO_TRUTHS, {"iou_threshold": 1.5}, "iou_threshold"),
    ],
)
def test_bad_input_raises(detections, truths, kwargs, match):
    with pytest.raises(ValueError, match=match):
        match_detections(detections, truths, **kwargs)


# ---- cross-check against pycocotools ----


def coco_evaluate(detections: pd.DataFrame, truths: pd.DataFrame, image_ids: list):
    """pycocotools at IoU 0.5, one category, all areas, no detection cap. Image ids are numbered in sorted
    order, detection and truth ids are their row positions + 1. Returns the COCOeval object."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    number = {image: i + 1 for i, image in enumerate(sorted(image_ids))}

    def xywh(row) -> list[float]:
        return [row.xmin, row.ymin, row.xmax - row.xmin, row.ymax - row.ymin]

    gt = COCO()
    gt.dataset = {
        "images": [{"id": number[i]} for i in image_ids],
        "categories": [{"id": 1, "name": "lesion"}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": number[row.image_id],
                "category_id": 1,
                "bbox": xywh(row),
                "area": (row.xmax - row.xmin) * (row.ymax - row.ymin),
                "iscrowd": 0,
            }
            for k, row in enumerate(truths.itertuples())
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(
            [
                {"image_id": number[row.image_id], "category_id": 1, "bbox": xywh(row), "score": row.score}
                for row in detections.itertuples()
            ]
        )
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.params.maxDets = [10_000]
        evaluation.params.areaRng = [[0, 1e10]]
        evaluation.params.areaRngLbl = ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation


def coco_101_point(precision: np.ndarray, recall: np.ndarray) -> float:
    """COCO's interpolation applied to our curve: the precision envelope read at recall 0, 0.01, ..., 1 (first
    point reaching each recall; 0 beyond the last), averaged."""
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    return float(np.mean(np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0)))


@pytest.mark.parametrize("seed", range(12))
def test_matching_and_ap_agree_with_pycocotools(seed):
    detections, truths, imgs = random_case(10 + seed, n_images=20)
    detections = detections.assign(det_id=np.arange(1, len(detections) + 1))
    evaluation = coco_evaluate(detections, truths, imgs["image_id"].tolist())

    # matching: COCO's matched truth id (0 = unmatched) for every detection, by detection id
    coco_match = {}
    for record in evaluation.evalImgs:
        if record is not None:
            coco_match.update(zip(record["dtIds"], record["dtMatches"][0].astype(int), strict=True))
    ours = match_detections(detections, truths)
    assert ours["tp"].any() and not ours["tp"].all()  # a case with both outcomes
    assert [coco_match[i] for i in ours["det_id"]] == (ours["matched"] + 1).tolist()

    # AP: COCO's 101-point value equals the 101-point value of our precision/recall curve (the order of
    # tied detections agrees too: score, then image, then input order), and differs from our all-point AP
    # by at most 1/100 (both integrate the same non-increasing envelope; the 101-point mean is a Riemann sum)
    coco_ap = float(evaluation.eval["precision"][0, :, 0, 0, 0].mean())
    ours_101 = coco_101_point(ours["precision"].to_numpy(), ours["recall"].to_numpy())
    assert ours_101 == pytest.approx(coco_ap, abs=1e-12)
    assert abs(voc_ap(detections, truths) - coco_ap) <= 0.01 + 1e-12
