"""Detection metrics: VOC all-point AP, FROC, bootstrap intervals over patients (docs/upstream.md#detection).

Frames (PNG pixel coordinates, floats; extra columns are kept and ignored):

* detections: ``image_id, score, xmin, ymin, xmax, ymax``;
* truths: ``image_id, xmin, ymin, xmax, ymax``;
* images (:func:`detection_metrics` only): ``image_id, patient_id``, one row per evaluated image, including
  images without truth boxes or without detections (they count in the false positives per image).

Matching (:func:`match_detections`) is the VOC / upstream rule, for one class: detections are sorted by
score, descending, ties broken by ``image_id`` (sorted) and then input order, so results never depend on
an unstable sort. In that order, a detection's *best* truth is the truth of the same image with the largest
IoU (first in input order on equal IoU); the detection is a true positive when that IoU is ``>=
iou_threshold`` and the best truth is not yet matched, otherwise a false positive. A second detection of an
already found box is therefore a false positive, and every detection on an image without truth boxes too.
(COCO differs in one corner: it falls back to the best *unmatched* truth above the threshold; with truth
boxes that do not overlap each other the two rules agree.) IoU is continuous (``(xmax - xmin) * (ymax -
ymin)``, no VOC "+1" pixel), 0 for a zero-area union.

AP (:func:`voc_ap`) is the area under the precision envelope (precision made non-increasing from the
right) over recall, summed at every recall step — VOC 2010+ "all-point" interpolation, as upstream
computes it; recall beyond the last detection counts precision 0, so a score threshold that truncates the
curve lowers AP. Tied scores are not merged: each detection is one point of the curve, in the tie order
above. One class, so this AP is the paper's "mAP". It is written here because neither form is in a
standard library: scikit-learn's ``average_precision_score`` is a classification AP without box matching,
and torchmetrics / pycocotools compute COCO's 101-point interpolated AP (tests compare ours with
pycocotools through the 101-point value of our own precision/recall curve).

FROC (:func:`froc_curve`, :func:`froc_points`, :func:`cpm`), as mammography CAD is usually compared: one
point per distinct score threshold (detections with ``score >= threshold`` kept, so tied detections enter
together), sensitivity = matched truth boxes / all truth boxes (lesion level), false positives per image =
false-positive detections / evaluated images. The sensitivity at a rate is the highest sensitivity reached
with at most that many false positives per image (0 if no threshold is that strict), and the CPM
(competition performance metric) the mean over the rates ``0.125, 0.25, 0.5, 1, 2, 4``. Detections are
matched exactly as for AP (duplicates are false positives).

Bootstrap (:func:`detection_metrics`): :func:`mammoclip.evaluate.metrics.bootstrap_weights` draws patients
with replacement (seeded), every image of a drawn patient with the patient's multiplicity; an image drawn
twice counts twice (its truths and detections as those of two images, the copies of a detection adjacent
in the tie order). Matching is per image, so it is done once and a resample only reweights the matched
detections. Resamples without any truth box have no AP and are left out of the interval (logged). The
interval is the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles of the resampled values.

Invalid input (missing columns, non-finite scores or coordinates, ``xmax < xmin`` or ``ymax < ymin``,
``iou_threshold`` outside ``(0, 1]``, images of detections/truths missing from ``images``) raises
``ValueError``. No truth box makes AP and the sensitivities NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mammoclip.evaluate.metrics import _check_bootstrap_args, _interval, bootstrap_weights

__all__ = [
    "BOX_COLUMNS",
    "FPS_PER_IMAGE",
    "cpm",
    "detection_metrics",
    "froc_curve",
    "froc_metric_name",
    "froc_points",
    "match_detections",
    "voc_ap",
]

log = logging.getLogger(__name__)

NAN = float("nan")
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
#: false positives per image of the FROC points and the CPM
FPS_PER_IMAGE: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
DETECTION_COLUMNS = ("image_id", "score", *BOX_COLUMNS)
TRUTH_COLUMNS = ("image_id", *BOX_COLUMNS)
METRIC_COLUMNS = ("metric", "value", "value_low", "value_high", "n_images", "n_boxes", "n_patients")


def froc_metric_name(fp_per_image: float) -> str:
    """Metric name of one FROC point: ``sensitivity_at_0.125``, ``sensitivity_at_1``, ..."""
    return f"sensitivity_at_{float(fp_per_image):g}"


def _ap_metric_name(iou_threshold: float) -> str:
    return f"map{round(100 * iou_threshold):d}"


# ----------------------------------------------------------------------------------------- validation


def _check_frame(name: str, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing columns {missing}")
    if frame["image_id"].isna().any():
        raise ValueError(f"{name}: image_id has {int(frame['image_id'].isna().sum())} missing values")


def _boxes(name: str, frame: pd.DataFrame) -> np.ndarray:
    try:
        boxes = frame[list(BOX_COLUMNS)].to_numpy(dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: box coordinates must be numeric: {err}") from None
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} boxes have non-finite coordinates")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise ValueError(f"{name}: {int(inverted.sum())} boxes have xmax < xmin or ymax < ymin")
    return boxes


def _scores(frame: pd.DataFrame) -> np.ndarray:
    try:
        scores = frame["score"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"detections: score must be numeric: {err}") from None
    if not np.isfinite(scores).all():
        raise ValueError(f"detections: {int((~np.isfinite(scores)).sum())} scores are not finite")
    return scores


def _check_iou_threshold(iou_threshold: float) -> float:
    value = float(iou_threshold)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    return value


def _check_n_images(n_images: int, minimum: int) -> int:
    if isinstance(n_images, bool) or not isinstance(n_images, int | np.integer) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if n_images < minimum:
        raise ValueError(f"n_images={n_images} but detections and truths come from {minimum} distinct images")
    return int(n_images)


# ----------------------------------------------------------------------------------------- matching


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row-aligned boxes ``a[i]`` and ``b[i]`` (both ``(n, 4)``)."""
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0, None)
    inter = width * height
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _match(
    det_image: np.ndarray, det_boxes: np.ndarray, truth_image: np.ndarray, truth_boxes: np.ndarray, thr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match detections already in score order; image ids as integer codes shared by both sides.

    Returns ``tp`` (bool), ``iou`` (best IoU, 0 without truths) and ``matched`` (position of the matched
    truth, -1 for a false positive), one entry per detection.
    """
    n_det = len(det_image)
    best_iou = np.zeros(n_det)
    best_truth = np.full(n_det, -1, dtype=np.int64)
    matched = np.full(n_det, -1, dtype=np.int64)
    if n_det == 0 or len(truth_image) == 0:
        return np.zeros(n_det, dtype=bool), best_iou, matched
    # every (detection, truth of the same image) pair, truths in input order within a detection
    truth_order = np.argsort(truth_image, kind="stable")
    sorted_image = truth_image[truth_order]
    start = np.searchsorted(sorted_image, det_image, side="left")
    count = np.searchsorted(sorted_image, det_image, side="right") - start
    total = int(count.sum())
    if total:
        pair_det = np.repeat(np.arange(n_det), count)
        offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        pair_truth = truth_order[np.repeat(start, count) + offset]
        iou = _pairwise_iou(det_boxes[pair_det], truth_boxes[pair_truth])
        # per detection: the largest IoU, the first truth in input order among equal ones (stable sort)
        order = np.lexsort((-iou, pair_det))
        first = np.unique(pair_det[order], return_index=True)[1]
        has_pair = pair_det[order][first]
        best_iou[has_pair] = iou[order][first]
        best_truth[has_pair] = pair_truth[order][first]
    candidate = np.flatnonzero((best_truth >= 0) & (best_iou >= thr))
    # the first candidate (in score order) of each truth is its match; later ones are duplicates
    winners = candidate[np.unique(best_truth[candidate], return_index=True)[1]]
    tp = np.zeros(n_det, dtype=bool)
    tp[winners] = True
    matched[winners] = best_truth[winners]
    return tp, best_iou, matched


def _sorted_match(
    detections: pd.DataFrame, truths: pd.DataFrame, iou_threshold: float
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Validated, sorted detections with ``tp``/``iou``/``matched``; also image codes of both sides.

    The codes index the sorted distinct image ids of detections and truths together.
    """
    thr = _check_iou_threshold(iou_threshold)
    _check_frame("detections", detections, DETECTION_COLUMNS)
    _check_frame("truths", truths, TRUTH_COLUMNS)
    det_boxes = _boxes("detections", detections)
    truth_boxes = _boxes("truths", truths)
    scores = _scores(detections)
    ids = pd.concat([detections["image_id"], truths["image_id"]], ignore_index=True)
    try:
        codes, uniques = pd.factorize(ids, sort=True)
    except TypeError as err:
        raise ValueError(f"image_id values must be mutually comparable (one type): {err}") from None
    det_code, truth_code = codes[: len(detections)], codes[len(detections) :]
    # score descending, then image_id, then input order
    order = np.lexsort((np.arange(len(detections)), det_code, -scores))
    tp, iou, matched = _match(det_code[order], det_boxes[order], truth_code, truth_boxes, thr)
    out = detections.iloc[order].reset_index(drop=True)
    out["tp"] = tp
    out["iou"] = iou
    out["matched"] = matched
    return out, det_code[order], truth_code, uniques.to_numpy()


def _precision_recall(
    tp: np.ndarray, n_truths: float, weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative precision and recall after every (weighted) detection; recall NaN without truths."""
    w = np.ones(len(tp)) if weight is None else weight.astype(np.float64)
    ctp = np.cumsum(w * tp)
    cfp = np.cumsum(w * ~tp)
    total = ctp + cfp
    precision = np.divide(ctp, total, out=np.zeros_like(ctp), where=total > 0)
    recall = ctp / n_truths if n_truths > 0 else np.full(len(tp), NAN)
    return precision, recall


def _all_point_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC all-point interpolated AP of a precision/recall curve (points in score order)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _ap(tp: np.ndarray, n_truths: float, weight: np.ndarray | None = None) -> float:
    if n_truths <= 0:
        return NAN
    if weight is not None:
        keep = weight > 0
        tp, weight = tp[keep], weight[keep]
    if not len(tp):
        return 0.0
    precision, recall = _precision_recall(tp, n_truths, weight)
    return _all_point_ap(precision, recall)


def match_detections(
    detections: pd.DataFrame, truths: pd.DataFrame, *, iou_threshold: float = 0.5
) -> pd.DataFrame:
    """Detections in score order with their match against the truth boxes (VOC greedy rule, one class).

    Returns the detection rows (all input columns, index reset) sorted by score descending, ties by
    ``image_id`` then input order, with added columns ``tp`` (bool), ``iou`` (IoU with the best truth of
    the image, 0 without truths), ``matched`` (row position in ``truths`` of the matched box, -1 for a false
    positive) and the curve after each detection, ``precision`` and ``recall`` (NaN without truths). The
    matching rule is in the module docstring.
    """
    out, _, _, _ = _sorted_match(detections, truths, iou_threshold)
    out["precision"], out["recall"] = _precision_recall(out["tp"].to_numpy(dtype=bool), float(len(truths)))
    return out


def voc_ap(detections: pd.DataFrame, truths: pd.DataFrame, *, iou_threshold: float = 0.5) -> float:
    """VOC all-point interpolated average precision at ``iou_threshold``; NaN without truth boxes, 0 without
    detections."""
    out, _, _, _ = _sorted_match(detections, truths, iou_threshold)
    return _ap(out["tp"].to_numpy(dtype=bool), float(len(truths)))


# ----------------------------------------------------------------------------------------- FROC


def _froc_counts(
    tp: np.ndarray, scores: np.ndarray, weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (distinct scores, descending) with cumulative true and false positives kept at each."""
    w = np.ones(len(tp)) if weight is None else weight.astype(np.float64)
    ctp = np.cumsum(w * tp)
    cfp = np.cumsum(w * ~tp)
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if len(scores) else np.array([], int)
    return scores[last], ctp[last], cfp[last]


def _sensitivities(
    ctp: np.ndarray, cfp: np.ndarray, n_truths: float, n_images: float, rates: Sequence[float]
) -> dict[float, float]:
    out: dict[float, float] = {}
    for rate in rates:
        if n_truths <= 0:
            out[float(rate)] = NAN
            continue
        allowed = np.flatnonzero(cfp <= rate * n_images + 1e-9)
        # counts are non-decreasing along the thresholds: the last allowed point has the most true positives
        out[float(rate)] = float(ctp[allowed[-1]] / n_truths) if len(allowed) else 0.0
    return out


def _check_rates(fps_per_image: Sequence[float]) -> tuple[float, ...]:
    rates = tuple(float(r) for r in fps_per_image)
    if not rates or any(not np.isfinite(r) or r < 0 for r in rates):
        raise ValueError(f"fps_per_image must be non-negative finite numbers, got {fps_per_image!r}")
    return rates


def froc_curve(
    detections: pd.DataFrame, truths: pd.DataFrame, n_images: int, *, iou_threshold: float = 0.5
) -> pd.DataFrame:
    """The whole FROC curve: one row per distinct score (descending), ``threshold, fp_per_image,
    sensitivity`` for the detections with ``score >= threshold`` on ``n_images`` evaluated images.

    ``n_images`` counts every evaluated image, with or without boxes or detections (it must be at least the
    number of distinct images in ``detections`` and ``truths``). No detections: an empty frame. No truths:
    sensitivity NaN.
    """
    matched, det_code, truth_code, _ = _sorted_match(detections, truths, iou_threshold)
    n = _check_n_images(n_images, len(np.unique(np.concatenate([det_code, truth_code]))))
    thresholds, ctp, cfp = _froc_counts(matched["tp"].to_numpy(dtype=bool), matched["score"].to_numpy(float))
    n_truths = len(truths)
    sensitivity = ctp / n_truths if n_truths else np.full(len(ctp), NAN)
    return pd.DataFrame(
        {"threshold": thresholds, "fp_per_image": cfp / n, "sensitivity": sensitivity.astype(np.float64)}
    )


def froc_points(
    detections: pd.DataFrame,
    truths: pd.DataFrame,
    n_images: int,
    *,
    fps_per_image: Sequence[float] = FPS_PER_IMAGE,
    iou_threshold: float = 0.5,
) -> dict[float, float]:
    """Sensitivity at each rate of ``fps_per_image``: the highest sensitivity of a score threshold with at
    most that many false positives per image (0 if none; NaN without truths). Keys are the rates as floats."""
    rates = _check_rates(fps_per_image)
    matched, det_code, truth_code, _ = _sorted_match(detections, truths, iou_threshold)
    n = _check_n_images(n_images, len(np.unique(np.concatenate([det_code, truth_code]))))
    _, ctp, cfp = _froc_counts(matched["tp"].to_numpy(dtype=bool), matched["score"].to_numpy(float))
    return _sensitivities(ctp, cfp, float(len(truths)), float(n), rates)


def cpm(points: Mapping[float, float]) -> float:
    """Competition performance metric: the mean sensitivity over the FROC points (NaN if any is NaN or
    there are none)."""
    values = np.asarray(list(points.values()), dtype=np.float64)
    return float(values.mean()) if len(values) else NAN


# ----------------------------------------------------------------------------------------- with intervals


def detection_metrics(
    detections: pd.DataFrame,
    truths: pd.DataFrame,
    images: pd.DataFrame,
    *,
    froc: bool,
    n_boot: int,
    seed: int,
    iou_threshold: float = 0.5,
    ci: float = 0.95,
) -> pd.DataFrame:
    """AP (and with ``froc`` the CPM and FROC sensitivities) with bootstrap intervals over patients.

    One row per metric: ``map50`` (``map<100 * iou_threshold>`` at another threshold), then with ``froc``
    ``cpm`` and ``sensitivity_at_<rate>`` for :data:`FPS_PER_IMAGE`; columns ``metric, value, value_low,
    value_high, n_images, n_boxes, n_patients`` (counts of the evaluated set). ``images`` lists every
    evaluated image (``image_id`` unique, ``patient_id``); detections and truths of other images are
    refused. Intervals: ``n_boot`` seeded resamples of patients (module docstring); NaN with ``n_boot=0``.
    """
    _check_bootstrap_args(n_boot, ci)
    _check_frame("images", images, ("image_id", "patient_id"))
    if images["patient_id"].isna().any():
        raise ValueError(f"images: patient_id has {int(images['patient_id'].isna().sum())} missing values")
    if images["image_id"].duplicated().any():
        raise ValueError(f"images: {int(images['image_id'].duplicated().sum())} duplicated image_id values")
    if images.empty:
        raise ValueError("images: no image to evaluate")
    matched, _, _, _ = _sorted_match(detections, truths, iou_threshold)
    image_ids = pd.Index(images["image_id"])
    det_image = image_ids.get_indexer(matched["image_id"])
    truth_image = image_ids.get_indexer(truths["image_id"])
    for name, codes in (("detections", det_image), ("truths", truth_image)):
        if (codes < 0).any():
            raise ValueError(f"{name}: {int((codes < 0).sum())} rows of images not listed in images")
    tp = matched["tp"].to_numpy(dtype=bool)
    scores = matched["score"].to_numpy(dtype=np.float64)
    n_images, n_truths = len(images), len(truths)
    rates = FPS_PER_IMAGE

    def compute(weight: np.ndarray | None) -> dict[str, float]:
        if weight is None:
            det_w, n_t, n_i = None, float(n_truths), float(n_images)
        else:
            det_w = weight[det_image]
            n_t, n_i = float(weight[truth_image].sum()), float(weight.sum())
        values = {_ap_metric_name(iou_threshold): _ap(tp, n_t, det_w)}
        if froc:
            _, ctp, cfp = _froc_counts(tp, scores, det_w)
            points = _sensitivities(ctp, cfp, n_t, n_i, rates)
            values["cpm"] = cpm(points)
            values.update({froc_metric_name(rate): value for rate, value in points.items()})
        return values

    point = compute(None)
    resampled: dict[str, list[float]] = {name: [] for name in point}
    no_truth = 0
    groups = images["patient_id"].to_numpy()
    for weight in bootstrap_weights(n_images, n_boot=n_boot, seed=seed, groups=groups):
        values = compute(weight)
        if not np.isfinite(values[_ap_metric_name(iou_threshold)]):
            no_truth += 1
            continue
        for name, value in values.items():
            resampled[name].append(value)
    if no_truth and n_truths:
        log.warning("detection_metrics: %d of %d resamples had no truth box, left out", no_truth, n_boot)
    n_patients = int(images["patient_id"].nunique())
    rows = []
    for name, value in point.items():
        low, high = _interval(resampled[name], ci) if np.isfinite(value) else (NAN, NAN)
        rows.append(
            {
                "metric": name,
                "value": value,
                "value_low": low,
                "value_high": high,
                "n_images": n_images,
                "n_boxes": n_truths,
                "n_patients": n_patients,
            }
        )
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
