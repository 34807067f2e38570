"""Real-scale rehearsal data: the metadata files of VinDr-Mammo 1.0.0 and of the RSNA Screening Mammography
challenge at their real size and with their measured quirks, plus the preprocessing manifests the DICOM ->
PNG stage would write for them. No pixel is generated.

Why: the real images cannot be shipped, but the annotation stage and the DAG construction must be
rehearsed on files that look exactly like the real ones (row counts, empty cells, multi-category rows, boxes
that stick out of the image, rare views), in CI and in seconds. Everything is deterministic from ``seed``
(same seed, same bytes) and vectorised (all five files in under two seconds).

Reproduced exactly (counts measured on the real files):

* VinDr ``breast-level_annotations.csv``: 20 000 rows, the 10 columns of
  :data:`mammoclip.annotations.vindr.BREAST_COLUMNS`; 5 000 studies (32-hex ids) of 4 images, 5 036
  series; unique 32-hex image ids; laterality L/R 10 000 each; view_position CC 10 001 / MLO 9 999 (one
  breast has two CC views); height in {3518, 2812, 3580}, 58 distinct widths (2800, 2012, 2364 and 55
  rarer ones); breast_birads ``BI-RADS 1..5`` (13 406 / 4 676 / 930 / 762 / 226, equal on both views of
  a breast); breast_density ``DENSITY A..D`` (100 / 1 908 / 15 292 / 2 700, one per study); split
  training 16 000 / test 4 000 by whole studies.
* VinDr ``finding_annotations.csv``: 20 486 rows, the 16 columns of
  :data:`mammoclip.annotations.vindr.FINDING_COLUMNS` (the 9 per-image columns equal the breast-level
  row's). Rows 0-2253 are the 2 254 finding rows with a box (grouped by image, images in breast-level
  order), rows 2254+ the 18 232 ``['No Finding']`` rows (one per normal image, empty box and
  finding_birads). 1 768 images have findings, 338 of them more than one row (at most 7).
  ``finding_birads`` is empty on 18 357 rows (all No Finding rows and 125 finding rows).
  ``finding_categories`` is a list repr with 35 distinct values, up to 4 categories per row; Mass on
  1 226 rows (989 training), Suspicious Calcification 543 (428), Focal Asymmetry 269 (216). Split
  training 16 391 / test 4 095 rows. Boxes in original pixels, median about 228 x 244 px; 19 boxes with
  ``xmin < 0`` (down to -26.8), 3 with ``ymin < 0`` (down to -5.2), 20 with ``xmax > width`` (by up to
  33.2), 1 with ``ymax > height`` (by 41.1), each on its own box; none inverted, empty or entirely
  outside its image.
* RSNA ``train.csv``: 54 706 rows, the 14 columns of :data:`mammoclip.annotations.rsna.TRAIN_COLUMNS`,
  11 913 patients, Kaggle's spelling (``age`` ``61.0``, ``BIRADS`` ``0.0``/``1.0``/``2.0``,
  ``difficult_negative_case`` ``True``/``False``); ``age`` empty on 37 rows (whole patients),
  ``BIRADS`` empty on 28 420 (whole breasts), ``density`` empty on 25 236 (whole patients); views CC
  26 765, MLO 27 903, AT 19, LM 10, ML 8, LMO 1; ``cancer`` 1 on 1 158 rows (whole breasts).

Made up (plausible, not measured): the ids; which studies are in the test split; image sizes per study;
the other 7 categories' row counts and the list of 34 category combinations (:data:`VINDR_CATEGORY_ROWS`);
which images have findings (weighted towards BI-RADS 3-5); box positions (centred in the breast crop)
and sizes (log-normal); RSNA ages, sites, machines, biopsies and image sizes; the manifests' crop boxes,
photometric interpretations and bit depths; the transfer syntax of VinDr's files (JPEG 2000 lossless
assumed). RSNA's manifest mixes its two real syntaxes, JPEG 2000 lossless (1.2.840.10008.1.2.4.90) and
JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), by machine.

Manifests (:func:`vindr_manifest`, :func:`rsna_manifest`): every column of
:data:`mammoclip.preprocess.MANIFEST_COLUMNS`, one row per image, sorted by patient then image id as
:func:`mammoclip.preprocess.combine_manifests` sorts them; ``status`` ok except a few images that failed with
the stage's reason codes (``decode_error``, ``truncated``, ``constant_image``, ``unsupported_image``;
VinDr: 3 images, 2 normal ones and one with several finding rows; RSNA: 6 images);
``orig_height``/``orig_width`` the CSV's size (VinDr) or the machine's (RSNA); a contiguous crop box
inside the image's 5-pixel border (the breast attached to the left edge for L, the right edge for R;
VinDr images with an out-of-image box get a crop reaching that edge, so that every box overlaps its
crop), ``crop_n_rows``/``crop_n_cols`` its extents; PNG 1520 x 912 under
``{png_root}/{patient_id}/{image_id}.png`` as :func:`mammoclip.datasets.list_images` names them.

Typical use (``mammoclip.bench.write_paper_like_roots``, ``tests/test_rehearsal.py``)::

    files = write_rehearsal(tmp / "data", manifest_dir=tmp / "results/preprocess")
    tables = build_vindr_tables(files["vindr_breast"], files["vindr_findings"], files["vindr_manifest"],
                                n_folds=5, seed=42)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mammoclip.annotations.rsna import TRAIN_COLUMNS
from mammoclip.annotations.vindr import BREAST_COLUMNS, FINDING_COLUMNS, NO_FINDING
from mammoclip.phantoms.generate import RSNA_MACHINE_SIZES, RSNA_SITE_MACHINES
from mammoclip.preprocess import BORDER, MANIFEST_COLUMNS, write_manifest

__all__ = [
    "JPEG2000_LOSSLESS",
    "JPEG_LOSSLESS_SV1",
    "PNG_SIZE",
    "RSNA_TRAIN_CSV",
    "VINDR_BREAST_CSV",
    "VINDR_CATEGORY_ROWS",
    "VINDR_FINDINGS_CSV",
    "RsnaRehearsal",
    "VinDrRehearsal",
    "make_rsna",
    "make_vindr",
    "preprocess_manifest",
    "rsna_manifest",
    "vindr_manifest",
    "write_rehearsal",
]

VINDR_BREAST_CSV = "breast-level_annotations.csv"
VINDR_FINDINGS_CSV = "finding_annotations.csv"
RSNA_TRAIN_CSV = "train.csv"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
#: (png_height, png_width) written by the preprocessing stage with the paper's settings
PNG_SIZE = (1520, 912)

# ------------------------------------------------------------------------------------------- VinDr counts
_STUDIES = 5_000
_TEST_STUDIES = 1_000
_SERIES_EXTRA = 36  # studies with a second series (5 036 series)
#: breast-level BI-RADS 1..5 per breast (x 2 images: 13 406 / 4 676 / 930 / 762 / 226)
_BIRADS_BREASTS = (6_703, 2_338, 465, 381, 113)
#: density A..D per study (x 4 images: 100 / 1 908 / 15 292 / 2 700)
_DENSITY_STUDIES = (25, 477, 3_823, 675)
#: (height, width) of the three VinDr machines and the share of studies on each
_VINDR_MACHINES = ((3518, 2800), (2812, 2012), (3580, 2364))
_VINDR_MACHINE_SHARE = (0.55, 0.2, 0.25)
_RARE_WIDTHS = 55  # further widths on some 3580-high images (58 in all)
_RARE_WIDTH_SHARE = 0.3  # of the 3580-high images
#: images with findings per split, and how many images (per split) have 2, 3, ..., 7 finding rows:
#: 338 multi-row images, 2 254 finding rows in all (training 1 803, test 451)
_FINDING_IMAGES = {"training": 1_412, "test": 356}
_MULTI_ROW_IMAGES = {
    "training": {2: 153, 3: 100, 4: 5, 5: 3, 6: 1, 7: 1},
    "test": {2: 60, 3: 10, 4: 5},
}
_EMPTY_FINDING_BIRADS = 125  # finding rows (besides every No Finding row)
#: image BI-RADS -> weight of being an image with findings
_FINDING_WEIGHT = {1: 0.0, 2: 0.02, 3: 1.0, 4: 1.0, 5: 1.0}
#: median box size (width, height) in original pixels, and the log-normal spread
_BOX_MEDIAN = (232.0, 242.0)
_BOX_SIGMA = 0.55
#: out-of-image sides: (rows, largest overshoot in px)
_BEYOND = {"xmin": (19, 26.8), "ymin": (3, 5.2), "xmax": (20, 33.2), "ymax": (1, 41.1)}

_M, _SC, _AD, _GA, _FA = (
    "Mass",
    "Suspicious Calcification",
    "Architectural Distortion",
    "Global Asymmetry",
    "Focal Asymmetry",
)
_A, _SLN, _NR, _SR, _ST = (
    "Asymmetry",
    "Suspicious Lymph Node",
    "Nipple Retraction",
    "Skin Retraction",
    "Skin Thickening",
)
#: the 34 finding category lists (list order as written), with their rows in all and in the test split.
#: Measured: 2 254 rows, Mass 1 226 (test 237), Suspicious Calcification 543 (115), Focal Asymmetry 269
#: (53), 35 distinct values with No Finding, at most 4 categories a row; the rest is made up.
VINDR_CATEGORY_ROWS: tuple[tuple[tuple[str, ...], int, int], ...] = (
    ((_M,), 1097, 216), ((_SC,), 437, 97), ((_FA,), 238, 49), ((_AD,), 64, 14), ((_A,), 97, 21),
    ((_GA,), 24, 4), ((_SLN,), 51, 10), ((_NR,), 20, 4), ((_SR,), 13, 2), ((_ST,), 40, 9),
    ((_SC, _M), 40, 8), ((_M, _SC), 35, 7), ((_M, _AD), 12, 2), ((_AD, _M), 8, 1), ((_FA, _M), 10, 2),
    ((_M, _FA), 9, 1), ((_SC, _FA), 5, 1), ((_FA, _SC), 4, 0), ((_AD, _SC), 6, 1), ((_SC, _AD), 5, 1),
    ((_A, _SC), 3, 0), ((_M, _SLN), 4, 0), ((_SLN, _M), 2, 0), ((_ST, _NR), 6, 1), ((_NR, _ST), 4, 0),
    ((_SR, _NR), 3, 0), ((_NR, _SR), 2, 0), ((_M, _ST), 3, 0), ((_ST, _SR), 2, 0), ((_GA, _SC), 2, 0),
    ((_M, _SC, _AD), 3, 0), ((_SC, _M, _FA), 2, 0), ((_ST, _SR, _NR), 2, 0), ((_M, _SC, _AD, _FA), 1, 0),
)  # fmt: skip

# -------------------------------------------------------------------------------------------- RSNA counts
_PATIENTS = 11_913
#: rows beyond one CC and one MLO per breast (CC 26 765, MLO 27 903, AT 19, LM 10, ML 8, LMO 1)
_EXTRA_VIEWS = {"CC": 2_939, "MLO": 4_077, "AT": 19, "LM": 10, "ML": 8, "LMO": 1}
_RSNA_CANCER_ROWS = 1_158
_RSNA_AGE_MISSING = 37
_RSNA_BIRADS_MISSING = 28_420
_RSNA_DENSITY_MISSING = 25_236
#: machine -> transfer syntax of its files (RSNA uses both syntaxes; the assignment is made up)
_RSNA_SYNTAX = {
    21: JPEG_LOSSLESS_SV1, 29: JPEG2000_LOSSLESS, 48: JPEG_LOSSLESS_SV1, 49: JPEG2000_LOSSLESS,
    93: JPEG2000_LOSSLESS, 170: JPEG_LOSSLESS_SV1, 190: JPEG_LOSSLESS_SV1, 197: JPEG2000_LOSSLESS,
    210: JPEG_LOSSLESS_SV1, 216: JPEG2000_LOSSLESS,
}  # fmt: skip

#: failed images of the manifests: reason codes of mammoclip.dicom / mammoclip.preprocess with details
_VINDR_FAILURES = (
    "decode_error: the codestream's size disagrees with Rows x Columns",
    "truncated: the file ends inside the Pixel Data element",
    "constant_image: a single value after the border crop",
)
_RSNA_FAILURES = (
    "decode_error: the codestream's size disagrees with Rows x Columns",
    "truncated: encapsulated Pixel Data holds no data fragment",
    "constant_image: a single value after the border crop",
    "decode_error: the decoder reported an error",
    "truncated: the file ends inside the Pixel Data element header",
    "unsupported_image: NumberOfFrames 2",
)


# ------------------------------------------------------------------------------------------------ helpers


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0x5CA1E, stream])


def _hex_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct 32-character lowercase hex ids (128 random bits each)."""
    data = rng.bytes(16 * n)
    ids = np.array([data[i : i + 16].hex() for i in range(0, 16 * n, 16)], dtype=object)
    if len(set(ids)) != n:  # pragma: no cover - 128-bit collision
        raise RuntimeError("hex id collision; use another seed")
    return ids


def _shuffled_labels(rng: np.random.Generator, counts: Sequence[int]) -> np.ndarray:
    """Label ``k`` repeated ``counts[k]`` times, in random order."""
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def _top_k_weighted(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` items drawn without replacement with probability ~ ``weights`` (sorted)."""
    if int((weights > 0).sum()) < k:
        raise RuntimeError(f"only {int((weights > 0).sum())} candidates for {k} draws")
    with np.errstate(divide="ignore"):
        keys = np.log(rng.random(len(weights))) / weights
    return np.sort(np.argsort(-keys, kind="stable")[:k])


def _exact_subset(rng: np.random.Generator, sizes: np.ndarray, target: int) -> np.ndarray:
    """A random set of groups whose ``sizes`` (>= 1) sum to exactly ``target`` (boolean mask over groups).

    Groups in random order: a prefix up to a few groups short of the target, then the remainder by
    subset-sum over the following groups (parent pointers over the reachable sums).
    """
    order = rng.permutation(len(sizes))
    cum = np.cumsum(sizes[order])
    k = int(np.searchsorted(cum, target - 4 * int(sizes.max()), side="right"))
    chosen = np.zeros(len(sizes), dtype=bool)
    chosen[order[:k]] = True
    rest = target - (int(cum[k - 1]) if k else 0)
    parent: dict[int, tuple[int, int] | None] = {0: None}
    for g in order[k:]:
        if rest in parent:
            break
        size = int(sizes[g])
        for reached in list(parent):
            if reached + size <= rest and reached + size not in parent:
                parent[reached + size] = (reached, int(g))
    if rest not in parent:  # pragma: no cover - depends only on the constants
        raise RuntimeError(f"no subset of the groups sums to {target}")
    while (step := parent[rest]) is not None:
        rest, group = step
        chosen[group] = True
    return chosen


def _crop_boxes(
    rng: np.random.Generator, height: np.ndarray, width: np.ndarray, laterality: np.ndarray
) -> dict[str, np.ndarray]:
    """A plausible contiguous breast crop per image, half-open, inside the 5-pixel border: the breast is
    attached to the left edge (L) or the right edge (R), 45-85 % of the width, most of the height."""
    inner_w, inner_h = width - 2 * BORDER, height - 2 * BORDER
    crop_w = np.round(inner_w * rng.uniform(0.45, 0.85, len(width))).astype(np.int64)
    left = laterality == "L"
    x0 = np.where(left, BORDER, width - BORDER - crop_w)
    x1 = np.where(left, BORDER + crop_w, width - BORDER)
    y0 = BORDER + np.floor(inner_h * rng.uniform(0.0, 0.04, len(height))).astype(np.int64)
    y1 = height - BORDER - np.floor(inner_h * rng.uniform(0.0, 0.08, len(height))).astype(np.int64)
    return {"crop_x0": x0, "crop_y0": y0, "crop_x1": x1, "crop_y1": y1}


# -------------------------------------------------------------------------------------------------- VinDr


@dataclass(frozen=True)
class VinDrRehearsal:
    """VinDr's two annotation files (frames written as they are) and the per-image geometry.

    ``images``: one row per ``breast`` row (same order): ``image_id, patient_id, height, width,
    laterality``, the crop box ``crop_x0, crop_y0, crop_x1, crop_y1`` (original pixels, half-open) and
    ``finding_rows`` (the image's rows with a box in ``findings``; 0 for a normal image).
    """

    breast: pd.DataFrame
    findings: pd.DataFrame
    images: pd.DataFrame


def make_vindr(seed: int = 0) -> VinDrRehearsal:
    """VinDr-Mammo 1.0.0's two annotation files at real scale (see the module docstring)."""
    rng = _rng(seed, 1)
    n_images = 4 * _STUDIES
    study = np.repeat(np.arange(_STUDIES), 4)
    laterality = np.tile(np.array(["L", "L", "R", "R"], dtype=object), _STUDIES)
    view = np.tile(np.array(["CC", "MLO", "CC", "MLO"], dtype=object), _STUDIES)

    test_studies = np.zeros(_STUDIES, dtype=bool)
    test_studies[rng.choice(_STUDIES, _TEST_STUDIES, replace=False)] = True
    split = np.where(test_studies[study], "test", "training").astype(object)
    view[4 * int(rng.choice(np.flatnonzero(~test_studies))) + 1] = "CC"  # one breast with two CC views

    study_ids = _hex_ids(rng, _STUDIES)
    series = _hex_ids(rng, _STUDIES + _SERIES_EXTRA)
    series_id = series[study].copy()
    two_series = rng.choice(_STUDIES, _SERIES_EXTRA, replace=False)
    for k, s in enumerate(two_series):  # the MLO images of these studies come in a second series
        series_id[4 * s + np.array([1, 3])] = series[_STUDIES + k]
    image_ids = _hex_ids(rng, n_images)

    machine = rng.choice(len(_VINDR_MACHINES), _STUDIES, p=_VINDR_MACHINE_SHARE)[study]
    height = np.array([h for h, _ in _VINDR_MACHINES], dtype=np.int64)[machine]
    width = np.array([w for _, w in _VINDR_MACHINES], dtype=np.int64)[machine]
    tall = np.flatnonzero(height == 3580)
    rare = rng.permutation(tall)[: int(len(tall) * _RARE_WIDTH_SHARE)]
    common = {w for _, w in _VINDR_MACHINES}
    pool = np.array([w for w in range(1800, 3000, 4) if w not in common])
    rare_widths = rng.choice(pool, _RARE_WIDTHS, replace=False)
    width[rare] = np.concatenate(  # every rare width at least once
        [rare_widths, rng.choice(rare_widths, len(rare) - _RARE_WIDTHS)]
    )

    breast_birads = 1 + _shuffled_labels(rng, _BIRADS_BREASTS)[np.arange(n_images) // 2]
    density = np.array(list("ABCD"), dtype=object)[_shuffled_labels(rng, _DENSITY_STUDIES)][study]
    breast = pd.DataFrame(
        {
            "study_id": study_ids[study],
            "series_id": series_id,
            "image_id": image_ids,
            "laterality": laterality,
            "view_position": view,
            "height": height,
            "width": width,
            "breast_birads": [f"BI-RADS {b}" for b in breast_birads],
            "breast_density": "DENSITY " + density,
            "split": split,
        }
    )[list(BREAST_COLUMNS)]

    # images with findings and their number of rows, per split
    weight = np.array([_FINDING_WEIGHT.get(b, 0.0) for b in range(6)])[breast_birads]
    rows_per_image = np.zeros(n_images, dtype=np.int64)
    for name, n_finding in _FINDING_IMAGES.items():
        members = np.flatnonzero(split == name)
        chosen = members[_top_k_weighted(rng, weight[members], n_finding)]
        multi = _MULTI_ROW_IMAGES[name]
        counts = np.concatenate(
            [
                np.ones(n_finding - sum(multi.values()), dtype=np.int64),
                np.repeat(list(multi), list(multi.values())),
            ]
        )
        rows_per_image[chosen] = rng.permutation(counts)
    row_image = np.repeat(np.arange(n_images), rows_per_image)  # finding rows, grouped by image
    n_rows = len(row_image)

    # categories per split
    categories = np.empty(n_rows, dtype=object)
    lists = [repr(list(cats)) for cats, _, _ in VINDR_CATEGORY_ROWS]
    for name in ("training", "test"):
        rows = np.flatnonzero(split[row_image] == name)
        split_counts = [test if name == "test" else total - test for _, total, test in VINDR_CATEGORY_ROWS]
        if sum(split_counts) != len(rows):  # pragma: no cover - constants out of step
            raise RuntimeError(f"{sum(split_counts)} category rows for {len(rows)} {name} finding rows")
        categories[rows] = np.array(lists, dtype=object)[_shuffled_labels(rng, split_counts)]

    finding_birads = np.array([f"BI-RADS {b}" for b in breast_birads[row_image]], dtype=object)
    finding_birads[rng.choice(n_rows, _EMPTY_FINDING_BIRADS, replace=False)] = ""

    crops = _crop_boxes(rng, height, width, laterality)
    boxes = _vindr_boxes(rng, row_image, height, width, laterality, crops)

    finding_frame = breast.iloc[row_image].reset_index(drop=True)
    finding_frame["finding_categories"] = categories
    finding_frame["finding_birads"] = finding_birads
    for column, values in boxes.items():
        finding_frame[column] = values
    normal = breast[rows_per_image == 0].reset_index(drop=True)
    normal["finding_categories"] = repr([NO_FINDING])
    normal["finding_birads"] = ""
    for column in boxes:
        normal[column] = np.nan
    findings = pd.concat([finding_frame, normal], ignore_index=True)[list(FINDING_COLUMNS)]

    images = pd.DataFrame(
        {
            "image_id": image_ids,
            "patient_id": study_ids[study],
            "height": height,
            "width": width,
            "laterality": laterality,
            **crops,
            "finding_rows": rows_per_image,
        }
    )
    return VinDrRehearsal(breast, findings, images)


def _vindr_boxes(
    rng: np.random.Generator,
    row_image: np.ndarray,
    height: np.ndarray,
    width: np.ndarray,
    laterality: np.ndarray,
    crops: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Boxes of the finding rows (original pixels, 2 decimals): log-normal size, centred in the image's
    breast crop and clipped to the image, then the out-of-image sides of :data:`_BEYOND` on their own
    boxes (their images' crops are widened to the edge they stick out of, so every box overlaps its
    crop; ``crops`` is updated in place)."""
    n = len(row_image)
    h, w = height[row_image].astype(float), width[row_image].astype(float)
    x0, y0, x1, y1 = (crops[c][row_image].astype(float) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    bw = np.clip(_BOX_MEDIAN[0] * np.exp(_BOX_SIGMA * rng.standard_normal(n)), 24.0, 0.5 * w)
    bh = np.clip(_BOX_MEDIAN[1] * np.exp(_BOX_SIGMA * rng.standard_normal(n)), 24.0, 0.5 * h)
    cx = x0 + (x1 - x0) * rng.uniform(0.1, 0.9, n)
    cy = y0 + (y1 - y0) * rng.uniform(0.1, 0.9, n)
    box = {
        "xmin": np.maximum(cx - bw / 2, 0.0),
        "ymin": np.maximum(cy - bh / 2, 0.0),
        "xmax": np.minimum(cx + bw / 2, w),
        "ymax": np.minimum(cy + bh / 2, h),
    }
    box = {c: np.round(v, 2) for c, v in box.items()}

    used = np.zeros(n, dtype=bool)
    side = laterality[row_image]
    eligible = {"xmin": side == "L", "xmax": side == "R", "ymin": np.ones(n, bool), "ymax": np.ones(n, bool)}
    for column, (count, largest) in _BEYOND.items():
        rows = rng.choice(np.flatnonzero(eligible[column] & ~used), count, replace=False)
        used[rows] = True
        overshoot = np.round(rng.uniform(0.3, largest, count), 2)
        overshoot[0] = largest
        extent_x = np.round(np.maximum(bw[rows], 80.0), 2)
        extent_y = np.round(np.maximum(bh[rows], 80.0), 2)
        images = row_image[rows]
        if column == "xmin":
            box["xmin"][rows] = -overshoot
            box["xmax"][rows] = np.round(-overshoot + extent_x, 2)
            crops["crop_x0"][images] = BORDER
        elif column == "xmax":
            box["xmax"][rows] = w[rows] + overshoot
            box["xmin"][rows] = np.round(w[rows] + overshoot - extent_x, 2)
            crops["crop_x1"][images] = width[images] - BORDER
        elif column == "ymin":
            box["ymin"][rows] = -overshoot
            box["ymax"][rows] = np.round(-overshoot + extent_y, 2)
            crops["crop_y0"][images] = BORDER
        else:
            box["ymax"][rows] = h[rows] + overshoot
            box["ymin"][rows] = np.round(h[rows] + overshoot - extent_y, 2)
            crops["crop_y1"][images] = height[images] - BORDER
    return box


# --------------------------------------------------------------------------------------------------- RSNA


@dataclass(frozen=True)
class RsnaRehearsal:
    """RSNA's ``train.csv`` (frame written as it is) and the per-image geometry.

    ``images``: one row per ``train`` row (same order): ``image_id, patient_id, height, width,
    laterality, machine_id`` and the crop box ``crop_x0, crop_y0, crop_x1, crop_y1``.
    """

    train: pd.DataFrame
    images: pd.DataFrame


def make_rsna(seed: int = 0) -> RsnaRehearsal:
    """RSNA's ``train.csv`` at real scale (see the module docstring)."""
    rng = _rng(seed, 2)
    patient_ids = np.sort(rng.choice(65_535 - 10_000, _PATIENTS, replace=False) + 10_000)
    n_breasts = 2 * _PATIENTS
    # rows: one CC and one MLO per breast, then the extra views on random breasts
    extra_view = np.repeat(np.array(list(_EXTRA_VIEWS), dtype=object), list(_EXTRA_VIEWS.values()))
    row_breast = np.concatenate(
        [np.repeat(np.arange(n_breasts), 2), rng.integers(0, n_breasts, len(extra_view))]
    )
    row_view = np.concatenate([np.tile(np.array(["CC", "MLO"], dtype=object), n_breasts), extra_view])
    order = np.lexsort((rng.random(len(row_breast)), row_breast))  # by patient, L before R, random within
    row_breast, row_view = row_breast[order], row_view[order]
    n_rows = len(row_breast)
    row_patient = row_breast // 2
    breast_rows = np.bincount(row_breast, minlength=n_breasts)
    patient_rows = np.bincount(row_patient, minlength=_PATIENTS)

    draws = np.unique(rng.integers(1_000, 2_147_483_647, n_rows + 1_000))
    image_ids = rng.permutation(draws)[:n_rows]

    site = np.where(rng.random(_PATIENTS) < 0.55, 1, 2)
    machine = np.zeros(_PATIENTS, dtype=np.int64)
    for s, machines in RSNA_SITE_MACHINES.items():
        at_site = site == s
        machine[at_site] = np.asarray(machines)[rng.integers(0, len(machines), int(at_site.sum()))]
    age = rng.integers(26, 90, _PATIENTS).astype(float)
    age[_exact_subset(rng, patient_rows, _RSNA_AGE_MISSING)] = np.nan

    cancer = _exact_subset(rng, breast_rows, _RSNA_CANCER_ROWS)
    biopsy = cancer | (rng.random(n_breasts) < 0.015)
    invasive = cancer & (rng.random(n_breasts) < 0.7)
    birads = np.where(biopsy, 0.0, np.where(rng.random(n_breasts) < 0.8, 1.0, 2.0))
    birads[_exact_subset(rng, breast_rows, _RSNA_BIRADS_MISSING)] = np.nan
    density = rng.choice(np.array(list("ABCD"), dtype=object), _PATIENTS, p=(0.1, 0.43, 0.4, 0.07))
    density[_exact_subset(rng, patient_rows, _RSNA_DENSITY_MISSING)] = np.nan
    implant = (rng.random(_PATIENTS) < 0.014).astype(np.int64)

    laterality = np.where(row_breast % 2 == 0, "L", "R").astype(object)
    train = pd.DataFrame(
        {
            "site_id": site[row_patient],
            "patient_id": patient_ids[row_patient],
            "image_id": image_ids,
            "laterality": laterality,
            "view": row_view,
            "age": age[row_patient],
            "cancer": cancer[row_breast].astype(np.int64),
            "biopsy": biopsy[row_breast].astype(np.int64),
            "invasive": invasive[row_breast].astype(np.int64),
            "BIRADS": birads[row_breast],
            "implant": implant[row_patient],
            "density": density[row_patient],
            "machine_id": machine[row_patient],
            "difficult_negative_case": (biopsy & ~cancer)[row_breast],
        }
    )[list(TRAIN_COLUMNS)]
    sizes = np.array([RSNA_MACHINE_SIZES[int(m)] for m in machine], dtype=np.int64)[row_patient]
    height, width = sizes[:, 0], sizes[:, 1]
    images = pd.DataFrame(
        {
            "image_id": image_ids.astype(str),
            "patient_id": patient_ids[row_patient].astype(str),
            "height": height,
            "width": width,
            "laterality": laterality,
            "machine_id": machine[row_patient],
            **_crop_boxes(rng, height, width, laterality),
        }
    )
    return RsnaRehearsal(train, images)


# ---------------------------------------------------------------------------------------------- manifests


def preprocess_manifest(
    images: pd.DataFrame,
    *,
    source_path: Sequence[str],
    png_root: str | os.PathLike,
    transfer_syntax: Sequence[str],
    photometric: Sequence[str] | np.ndarray,
    bits_stored: Sequence[int] | np.ndarray,
    failures: Mapping[str, str],
) -> pd.DataFrame:
    """A manifest as the preprocessing stage writes it, one row per image of ``images``.

    ``images`` needs ``image_id, patient_id, height, width, crop_x0, crop_y0, crop_x1, crop_y1``;
    ``failures`` maps image ids to a failure reason (``code: detail``). Every column of
    :data:`mammoclip.preprocess.MANIFEST_COLUMNS` is filled (a column this function does not know stays
    empty); failed rows have no crop box and no PNG size. Sorted by patient id, then image id.
    """
    n = len(images)
    ids = images["image_id"].astype(str).to_numpy()
    patients = images["patient_id"].astype(str).to_numpy()
    failed = np.array([i in failures for i in ids], dtype=bool)
    unknown = set(failures) - set(ids)
    if unknown:
        raise ValueError(f"failures name images that are not listed: {sorted(unknown)[:5]}")

    def ok_only(values: np.ndarray) -> pd.arrays.IntegerArray:
        return pd.arrays.IntegerArray(np.where(failed, 0, values).astype(np.int64), failed.copy())

    x0, y0, x1, y1 = (
        images[c].to_numpy(dtype=np.int64) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")
    )
    png_root = str(png_root)
    values: dict[str, object] = {
        "image_id": ids,
        "patient_id": patients,
        "source_path": np.asarray(source_path, dtype=object),
        "png_path": np.array([f"{png_root}/{p}/{i}.png" for p, i in zip(patients, ids, strict=True)]),
        "status": np.where(failed, "failed", "ok"),
        "reason": np.array([failures.get(i, "") for i in ids], dtype=object),
        "orig_height": images["height"].to_numpy(dtype=np.int64),
        "orig_width": images["width"].to_numpy(dtype=np.int64),
        "photometric": np.asarray(photometric, dtype=object),
        "bits_stored": np.asarray(bits_stored, dtype=np.int64),
        "transfer_syntax": np.asarray(transfer_syntax, dtype=object),
        "crop_x0": ok_only(x0),
        "crop_y0": ok_only(y0),
        "crop_x1": ok_only(x1),
        "crop_y1": ok_only(y1),
        "crop_contiguous": pd.arrays.BooleanArray(np.ones(n, dtype=bool), failed.copy()),
        "crop_n_rows": ok_only(y1 - y0),
        "crop_n_cols": ok_only(x1 - x0),
        "png_height": ok_only(np.full(n, PNG_SIZE[0])),
        "png_width": ok_only(np.full(n, PNG_SIZE[1])),
    }
    empty = pd.Series(pd.NA, index=range(n), dtype=object)
    manifest = pd.DataFrame({c: values.get(c, empty) for c in MANIFEST_COLUMNS})
    order = pd.DataFrame({"p": patients, "i": ids}).sort_values(["p", "i"], kind="stable").index
    return manifest.iloc[order].reset_index(drop=True)


def _failures(
    rng: np.random.Generator, candidates: np.ndarray, ids: np.ndarray, reasons: Sequence[str]
) -> dict:
    picked = rng.choice(candidates, len(reasons), replace=False)
    return {str(ids[i]): reason for i, reason in zip(picked, reasons, strict=True)}


def vindr_manifest(
    data: VinDrRehearsal, root: str | os.PathLike, *, png_root: str = "results/png/vindr", seed: int = 0
) -> pd.DataFrame:
    """The preprocessing manifest of :func:`make_vindr`'s images (DICOMs under ``root``).

    Three images failed: two normal ones and one with several finding rows (none with a box outside the
    image).
    """
    rng = _rng(seed, 3)
    images = data.images
    ids = images["image_id"].to_numpy()
    rows = images["finding_rows"].to_numpy()
    beyond = set(_beyond_images(data))
    plain = np.array([i not in beyond for i in ids])
    failures = {
        **_failures(rng, np.flatnonzero(rows == 0), ids, _VINDR_FAILURES[:2]),
        **_failures(rng, np.flatnonzero((rows > 1) & plain), ids, _VINDR_FAILURES[2:]),
    }
    machine = np.where(images["height"] == 2812, 1, 0)
    folder = str(Path(root))
    return preprocess_manifest(
        images,
        source_path=[
            f"{folder}/images/{p}/{i}.dicom" for p, i in zip(images["patient_id"], ids, strict=True)
        ],
        png_root=png_root,
        transfer_syntax=[JPEG2000_LOSSLESS] * len(images),
        photometric=np.where(machine == 1, "MONOCHROME1", "MONOCHROME2"),
        bits_stored=np.where(machine == 1, 12, 16),
        failures=failures,
    )


def _beyond_images(data: VinDrRehearsal) -> np.ndarray:
    """Ids of images with a box that sticks out of the image."""
    f = data.findings
    out = (f["xmin"] < 0) | (f["ymin"] < 0) | (f["xmax"] > f["width"]) | (f["ymax"] > f["height"])
    return f.loc[out, "image_id"].unique()


def rsna_manifest(
    data: RsnaRehearsal, root: str | os.PathLike, *, png_root: str = "results/png/rsna", seed: int = 0
) -> pd.DataFrame:
    """The preprocessing manifest of :func:`make_rsna`'s images (DICOMs under ``root``); six failed."""
    rng = _rng(seed, 4)
    images = data.images
    ids = images["image_id"].to_numpy()
    failures = _failures(rng, np.arange(len(images)), ids, _RSNA_FAILURES)
    machine = images["machine_id"].to_numpy()
    folder = str(Path(root))
    return preprocess_manifest(
        images,
        source_path=[
            f"{folder}/train_images/{p}/{i}.dcm" for p, i in zip(images["patient_id"], ids, strict=True)
        ],
        png_root=png_root,
        transfer_syntax=[_RSNA_SYNTAX[int(m)] for m in machine],
        photometric=np.where(np.isin(machine, (29, 48, 49)), "MONOCHROME1", "MONOCHROME2"),
        bits_stored=np.where(np.isin(machine, (21, 170)), 10, 12),
        failures=failures,
    )


# ----------------------------------------------------------------------------------------------- writing


def write_rehearsal(
    data_root: str | os.PathLike,
    *,
    manifest_dir: str | os.PathLike | None = None,
    png_root: str = "results/png",
    seed: int = 0,
) -> dict[str, Path]:
    """Write VinDr's two CSVs under ``data_root/vindr`` and RSNA's ``train.csv`` under ``data_root/rsna``;
    with ``manifest_dir``, also the preprocessing manifests ``manifest_dir/{vindr,rsna}/manifest.csv``
    (PNG paths ``{png_root}/{dataset}/{patient_id}/{image_id}.png``; ``results/preprocess`` of a
    workflow directory is where the workflow's own manifests go).

    Returns the paths: ``vindr``/``rsna`` (dataset roots), ``vindr_breast``, ``vindr_findings``,
    ``rsna_train`` and, with ``manifest_dir``, ``vindr_manifest``, ``rsna_manifest``.
    """
    data_root = Path(data_root)
    vindr_root, rsna_root = data_root / "vindr", data_root / "rsna"
    paths = {
        "vindr": vindr_root,
        "rsna": rsna_root,
        "vindr_breast": vindr_root / VINDR_BREAST_CSV,
        "vindr_findings": vindr_root / VINDR_FINDINGS_CSV,
        "rsna_train": rsna_root / RSNA_TRAIN_CSV,
    }
    if manifest_dir is not None:
        paths["vindr_manifest"] = Path(manifest_dir) / "vindr" / "manifest.csv"
        paths["rsna_manifest"] = Path(manifest_dir) / "rsna" / "manifest.csv"
    for name, path in paths.items():
        (path if name in ("vindr", "rsna") else path.parent).mkdir(parents=True, exist_ok=True)
    vindr = make_vindr(seed)
    _write_csv(vindr.breast, paths["vindr_breast"])
    _write_csv(vindr.findings, paths["vindr_findings"])
    rsna = make_rsna(seed)
    _write_csv(rsna.train, paths["rsna_train"])
    if manifest_dir is not None:
        manifests = {
            "vindr_manifest": vindr_manifest(vindr, vindr_root, png_root=f"{png_root}/vindr", seed=seed),
            "rsna_manifest": rsna_manifest(rsna, rsna_root, png_root=f"{png_root}/rsna", seed=seed),
        }
        for name, manifest in manifests.items():
            write_manifest(manifest, paths[name])
    return paths


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Plain CSV as the datasets ship it: no index, ``\\n`` line ends, empty cells for missing values."""
    path.write_text(frame.to_csv(index=False, lineterminator="\n"), encoding="utf-8")
