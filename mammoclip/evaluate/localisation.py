"""Weakly supervised localisation scores of attribute heatmaps (Mammo-FActOR; docs/upstream.md#mammo-factor).

* :func:`heatmap_to_png`: a feature-resolution heatmap to PNG pixels. A stride-``s`` map of an ``H x W``
  input covers ``ceil(H / s) * s`` rows (same padding), so it is upsampled to that extent (bilinear,
  pixel-centre aligned: OpenCV), cropped to the input and resized to the PNG.
* :func:`heatmap_regions`: the pixels above the ``percentile``-th percentile of the heatmap (the paper's
  reading: 95), split into 8-connected components (OpenCV), each component's bounding box.
* :func:`image_localisation`: per image, the best IoU of a region box with a truth box (an image is a hit
  at IoU ``t`` when it reaches ``t``), whether the heatmap's maximum falls inside a truth box (pointing
  game), and the pointing game's random baseline (the fraction of the PNG inside the truth boxes).
* :func:`localisation_metrics`: the rates over images with 95 % bootstrap intervals over patients
  (:func:`mammoclip.evaluate.metrics.bootstrap_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd

from mammoclip.evaluate.metrics import bootstrap_weights

__all__ = [
    "BOX_COLUMNS",
    "heatmap_regions",
    "heatmap_to_png",
    "hit_metric_name",
    "image_localisation",
    "localisation_metrics",
]

BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")


def hit_metric_name(iou_threshold: float) -> str:
    """``iou_hit@0.25``: the paper-results name of the hit rate at an IoU threshold."""
    return f"iou_hit@{iou_threshold:.2f}"


def heatmap_to_png(
    heatmap: np.ndarray, *, stride: int, input_size: tuple[int, int], png_size: tuple[int, int]
) -> np.ndarray:
    """``float32 [png_h, png_w]``: ``heatmap [h, w]`` of a stride-``stride`` map of an input of
    ``input_size = (H, W)`` (the PNG resized to it, aspect not kept), in PNG pixels."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    (in_h, in_w), (png_h, png_w) = input_size, png_size
    h, w = heatmap.shape
    if h != math.ceil(in_h / stride) or w != math.ceil(in_w / stride):
        raise ValueError(
            f"a {h} x {w} heatmap is not the stride-{stride} map of a {in_h} x {in_w} input "
            f"({math.ceil(in_h / stride)} x {math.ceil(in_w / stride)})"
        )
    full = cv2.resize(heatmap, (w * stride, h * stride), interpolation=cv2.INTER_LINEAR)[:in_h, :in_w]
    if (in_h, in_w) == (png_h, png_w):
        return np.ascontiguousarray(full)
    return cv2.resize(full, (png_w, png_h), interpolation=cv2.INTER_LINEAR)


def heatmap_regions(heatmap: np.ndarray, *, percentile: float = 95.0) -> np.ndarray:
    """``[n, 4]`` xyxy boxes (pixel edges: a single pixel at (x, y) is ``[x, y, x + 1, y + 1]``) of the
    8-connected components of the pixels strictly above the heatmap's ``percentile``-th percentile; a
    constant heatmap has no region."""
    if not 0.0 <= percentile < 100.0:
        raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
    heatmap = np.asarray(heatmap, dtype=np.float32)
    mask = (heatmap > np.percentile(heatmap, percentile)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    x, y, w, h = (stats[1:, i].astype(np.float64) for i in range(4))
    return np.stack([x, y, x + w, y + h], axis=1).reshape(-1, 4)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``[n, 4]`` x ``[m, 4]`` (continuous coordinates)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def image_localisation(heatmap: np.ndarray, truths: np.ndarray, *, percentile: float = 95.0) -> dict:
    """One image's localisation: ``max_iou`` (best region box vs truth box; 0 without a region),
    ``pointing_hit`` (the heatmap's maximum, the first in row-major order on ties, lies inside a truth
    box, edges included) and ``random_hit`` (the chance that a uniformly random pixel does: the fraction
    of pixels inside the union of the truth boxes). ``heatmap`` in PNG pixels, ``truths [m >= 1, 4]``."""
    truths = np.asarray(truths, dtype=np.float64).reshape(-1, 4)
    if not len(truths):
        raise ValueError("image_localisation needs at least one truth box")
    heatmap = np.asarray(heatmap, dtype=np.float32)
    regions = heatmap_regions(heatmap, percentile=percentile)
    max_iou = float(_iou(regions, truths).max()) if len(regions) else 0.0
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cx, cy = x + 0.5, y + 0.5  # the pixel's centre
    inside = (truths[:, 0] <= cx) & (cx <= truths[:, 2]) & (truths[:, 1] <= cy) & (cy <= truths[:, 3])
    covered = np.zeros(heatmap.shape, dtype=bool)
    for x0, y0, x1, y1 in truths:
        # pixels whose centre lies in the box
        c0, c1 = max(0, math.ceil(x0 - 0.5)), min(heatmap.shape[1], math.floor(x1 - 0.5) + 1)
        r0, r1 = max(0, math.ceil(y0 - 0.5)), min(heatmap.shape[0], math.floor(y1 - 0.5) + 1)
        covered[r0:r1, c0:c1] = True
    return {
        "max_iou": max_iou,
        "n_regions": len(regions),
        "pointing_hit": bool(inside.any()),
        "random_hit": float(covered.mean()),
    }


def localisation_metrics(
    per_image: pd.DataFrame,
    *,
    iou_thresholds: Sequence[float] = (0.25, 0.5),
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Rows ``metric, value, value_low, value_high, n_images, n_patients`` from :func:`image_localisation`
    rows (with ``patient_id``): :func:`hit_metric_name` per threshold, ``pointing_game`` and
    ``pointing_random`` (its chance level on these images); intervals by resampling patients."""
    if per_image.empty:
        raise ValueError("no image to evaluate")
    values = {hit_metric_name(t): (per_image["max_iou"] >= t).to_numpy(float) for t in iou_thresholds}
    values["pointing_game"] = per_image["pointing_hit"].to_numpy(float)
    values["pointing_random"] = per_image["random_hit"].to_numpy(float)
    boots: dict[str, list[float]] = {name: [] for name in values}
    for weights in bootstrap_weights(
        len(per_image), n_boot=n_boot, seed=seed, groups=per_image["patient_id"]
    ):
        for name, v in values.items():
            boots[name].append(float(np.average(v, weights=weights)))
    rows = []
    for name, v in values.items():
        low, high = np.quantile(boots[name], [(1 - ci) / 2, (1 + ci) / 2]) if n_boot else (np.nan, np.nan)
        rows.append(
            {
                "metric": name,
                "value": float(v.mean()),
                "value_low": float(low),
                "value_high": float(high),
                "n_images": len(per_image),
                "n_patients": int(per_image["patient_id"].nunique()),
            }
        )
    return pd.DataFrame(rows)
