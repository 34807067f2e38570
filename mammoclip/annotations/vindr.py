"""VinDr-Mammo annotations -> the tables downstream reads (upstream-mammoclip.md sections 1.4, 3, 7.2, 12).

Inputs are VinDr's ``breast-level_annotations.csv`` (one row per image, :data:`BREAST_COLUMNS`) and
``finding_annotations.csv`` (one row per finding box or per normal image, :data:`FINDING_COLUMNS`), plus
the PNG manifest of :mod:`mammoclip.preprocess`. Functions take and return DataFrames; the caller does the
file I/O (:func:`mammoclip.annotations.tables.write_table` writes list columns as their Python ``repr``).

Pipeline::

    breast, findings = read_vindr_annotations(breast_csv, findings_csv)   # validated, typed
    mapped = map_boxes_to_png(findings, manifest)                          # + resized_* (PNG frame)
    rows = vindr_row_table(breast, mapped, manifest, n_folds=5, seed=0)    # ~ vindr_detection_v1_folds.csv
    images, boxes = vindr_image_table(breast, mapped, manifest, n_folds=5, seed=0)
    breasts = vindr_image_label_table(images)                              # ~ clip_vindr_final.csv

Validation (:func:`read_vindr_annotations`). Ids are read as strings. Missing columns, an unparsable or
non-list ``finding_categories``, an unknown category, ``No Finding`` combined with another category,
malformed ``BI-RADS k`` (k in 0-6) / ``DENSITY X`` (X in A-D) / laterality (L, R) / view (CC, MLO) / split
(training, test) / size values, a box that is partly empty, non-numeric, not ``xmin < xmax`` and ``ymin <
ymax``, or outside ``[0, width] x [0, height]``, a ``No Finding`` row with a box, a finding row without
one, a duplicated image id in the breast-level file, a finding row whose image or per-image columns
disagree with the breast-level file, an image with no finding row, and an image with both ``No Finding``
and finding rows raise :class:`~mammoclip.annotations.tables.AnnotationError` naming the file, the 1-based
data row (and CSV line) and the column. Extra columns are logged and ignored. All checks are vectorised
(20 000 rows read and validated in well under a second).

Box mapping (:func:`map_boxes_to_png`, section 1.4 with its defects fixed). VinDr boxes are in original
DICOM pixels; the manifest's crop box is half-open ``[crop_x0, crop_x1) x [crop_y0, crop_y1)`` in the same
pixels, 5 px border included, and the crop was resized to ``png_width x png_height``, so
``resized_x = (x - crop_x0) * png_width / (crop_x1 - crop_x0)`` and likewise for y with the height, then x
is clipped to ``[0, png_width]`` and y to ``[0, png_height]`` (upstream clamped x by the height and y by
the width, truncating tall boxes, and never clipped after the shift/scale). Decisions:

* ``No Finding`` rows keep NaN resized boxes (upstream turned NaN into full-image boxes).
* A box entirely outside the breast crop (empty after clipping) is **kept** with NaN resized coordinates
  (its category still labels the image; there is nothing to detect in the PNG); the count, rows, image ids
  and boxes are logged as a warning. Partly clipped boxes are counted at INFO level.
* A row whose image is absent from the manifest, or failed preprocessing there, is **excluded**; the
  count, reasons, rows and ids are logged as a warning (``missing="error"`` raises for absent images).
* A manifest without a crop box (a PNG release registered as is) cannot be mapped: resized boxes stay NaN
  and the rows are counted in a warning. A non-contiguous legacy crop (``crop_contiguous`` False) is
  mapped through its bounding range, which is approximate; such rows are counted in a warning.
* The manifest's ``orig_height``/``orig_width`` must equal the CSV's ``height``/``width`` (else the boxes
  are in another frame): a mismatch raises.

Row table (:func:`vindr_row_table`, :data:`ROW_TABLE_COLUMNS`): upstream's ``vindr_detection_v1_folds.csv``
layout, one row per finding row in ``finding_annotations.csv`` order (minus excluded images).
``patient_id`` = ``study_id``, ``image_id`` = ``f"{image_id}.png"`` (as upstream), ``view`` =
``view_position``, ``finding_categories`` as written in the CSV (list order kept), per-row one-hot
finding columns (upstream's alphabetical names; an image with several rows keeps one label set per row,
as upstream), ``density`` A-D -> 0-3. ``fold`` is 0 for the test split and 1 for training (upstream's
derivation is unknown and unused: downstream splits VinDr on ``split``; these values follow upstream's
image-label table). Ours, at the end: ``png_path`` (from the manifest) and ``val_fold``
(:func:`assign_validation_folds`).

Image table (:func:`vindr_image_table`, :data:`IMAGE_TABLE_COLUMNS`): one row per image in breast-level
order, labels = union of the categories of the image's finding rows; ``No_Finding`` is 1 only when no other
category is; ``finding_categories`` lists them in :data:`LABELS` order; ``n_boxes`` counts the image's boxes.
The long box table (:data:`BOX_TABLE_COLUMNS`) has one row per finding box (``No Finding`` rows have none),
in ``finding_annotations.csv`` order.

Image-label table (:func:`vindr_image_label_table`, :data:`LABEL_TABLE_COLUMNS`): upstream's
``clip_vindr_final.csv``, one row per breast (patient_id, laterality), sorted by patient id then
laterality. ``image`` / ``view`` list every image of the breast, CC images first then MLO, each in
breast-level CSV order; ``CC`` / ``MLO`` the file names of that view (possibly empty or with two entries:
such breasts are kept, unlike upstream which dropped its one two-CC breast by hand); ``cc_findings`` /
``mlo_findings`` the per-image label lists of that view. ``CC_FINDING`` / ``MLO_FINDING`` are the 4-slot
``[pos_right, pos_left, neg_right, neg_left]`` of section 3.3, built per view (section 3.3's defect fixed):
positives = union of the categories of that view's images in :data:`LABELS` order; negatives = the 10
:data:`FINDING_CATEGORIES` minus the positives. A view whose images have no finding (even when the other
view of the breast has one: VinDr annotates per image) gets ``['No Finding']`` as its only positive and
no negatives. A view with no image gets four empty slots. A right breast fills slots 0 and 2, a left breast
slots 1 and 3. ``fold`` is 0 (test) / 1 (training); ``val_fold`` as below.

Validation folds (:func:`assign_validation_folds`): for the clean protocol (model selection without the
test split), the *training* patients are ordered by ``sha256(f"{seed}:{patient_id}")`` and dealt round-robin
into ``n_folds`` folds (fold sizes differ by at most one patient; the assignment is portable, needing no
RNG stream); test rows get -1. All three tables take the folds from the breast-level file, so a patient
has the same ``val_fold`` everywhere, whichever of its images were excluded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mammoclip.annotations.tables import (
    AnnotationError,
    isin,
    join_manifest,
    location,
    parse_list_column,
    raise_at,
    read_csv_strict,
    require_columns,
    source_of,
)

__all__ = [
    "BOX_COLUMNS",
    "BOX_TABLE_COLUMNS",
    "BREAST_COLUMNS",
    "FINDING_CATEGORIES",
    "FINDING_COLUMNS",
    "IMAGE_TABLE_COLUMNS",
    "LABELS",
    "LABEL_TABLE_COLUMNS",
    "LIST_COLUMNS",
    "NO_FINDING",
    "ONE_HOT_COLUMNS",
    "RESIZED_COLUMNS",
    "ROW_TABLE_COLUMNS",
    "assign_validation_folds",
    "finding_slots",
    "map_boxes_to_png",
    "read_vindr_annotations",
    "validate_vindr_annotations",
    "vindr_image_label_table",
    "vindr_image_table",
    "vindr_row_table",
]

log = logging.getLogger(__name__)

DEFAULT_VAL_FOLDS = 5
DEFAULT_SEED = 0

BREAST_COLUMNS = (
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
)  # fmt: skip
FINDING_COLUMNS = (
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
)  # fmt: skip
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
RESIZED_COLUMNS = ("resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax")

#: the 10 finding categories, in the order of upstream's notebook (section 3.3)
FINDING_CATEGORIES = (
    "Mass", "Suspicious Calcification", "Architectural Distortion", "Global Asymmetry", "Focal Asymmetry",
    "Asymmetry", "Suspicious Lymph Node", "Nipple Retraction", "Skin Retraction", "Skin Thickening",
)  # fmt: skip
NO_FINDING = "No Finding"
#: every label, in the order used for label lists
LABELS = (*FINDING_CATEGORIES, NO_FINDING)
#: upstream's one-hot column names (alphabetical)
ONE_HOT_COLUMNS = tuple(sorted(label.replace(" ", "_") for label in LABELS))
_ONE_HOT_OF = {label: label.replace(" ", "_") for label in LABELS}

ROW_TABLE_COLUMNS = (
    "patient_id", "series_id", "image_id", "laterality", "view", "height", "width", "breast_birads",
    "breast_density", "finding_categories", "finding_birads", *BOX_COLUMNS, "split", *RESIZED_COLUMNS,
    "fold", *ONE_HOT_COLUMNS, "density", "png_path", "val_fold",
)  # fmt: skip
IMAGE_TABLE_COLUMNS = (
    "patient_id", "series_id", "image_id", "laterality", "view", "height", "width", "breast_birads",
    "breast_density", "split", "finding_categories", "n_boxes", "fold", *ONE_HOT_COLUMNS, "density",
    "png_path", "val_fold",
)  # fmt: skip
BOX_TABLE_COLUMNS = (
    "patient_id", "image_id", "laterality", "view", "split", "finding_categories", "finding_birads",
    *BOX_COLUMNS, *RESIZED_COLUMNS, "png_path", "val_fold",
)  # fmt: skip
LABEL_TABLE_COLUMNS = (
    "patient_id", "laterality", "split", "image", "view", "CC", "MLO", "cc_findings", "mlo_findings",
    "CC_FINDING", "MLO_FINDING", "fold", "patient_id_laterality", "val_fold",
)  # fmt: skip
#: list-valued columns of the tables above (written as Python repr)
LIST_COLUMNS = (
    "finding_categories", "image", "view", "CC", "MLO", "cc_findings", "mlo_findings", "CC_FINDING",
    "MLO_FINDING",
)  # fmt: skip

_LATERALITIES = ("L", "R")
_VIEWS = ("CC", "MLO")
_SPLITS = ("training", "test")
_BIRADS = r"BI-RADS [0-6]"
_DENSITY = r"DENSITY [A-D]"
_DENSITY_CODE = {"A": 0, "B": 1, "C": 2, "D": 3}
# per-image columns the finding file repeats from the breast-level file
_SHARED = (
    "study_id", "series_id", "laterality", "view_position", "height", "width", "breast_birads",
    "breast_density", "split",
)  # fmt: skip
_MANIFEST_GEOMETRY = (
    "orig_height", "orig_width", "crop_x0", "crop_y0", "crop_x1", "crop_y1", "png_height", "png_width",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------------------------------


def read_vindr_annotations(
    breast_csv: str | os.PathLike, findings_csv: str | os.PathLike
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and validate VinDr's two annotation CSVs; see the module docstring for every check.

    Returns ``(breast, findings)``: string columns except ``height``/``width`` (int64) and the boxes
    (float64, NaN when empty); ``finding_categories`` holds lists; empty ``finding_birads`` is NaN. The
    index is the 0-based data row of each file and ``attrs["source"]`` its path.
    """
    breast = read_csv_strict(breast_csv, BREAST_COLUMNS, what="VinDr breast-level annotations")
    findings = read_csv_strict(findings_csv, FINDING_COLUMNS, what="VinDr finding annotations")
    return validate_vindr_annotations(breast, findings)


def _check_identity(frame: pd.DataFrame) -> None:
    for column in ("study_id", "series_id", "image_id"):
        raise_at(frame, frame[column].str.strip() == "", column, "empty identifier", show=False)
    raise_at(frame, ~isin(frame["laterality"], _LATERALITIES), "laterality", "expected L or R")
    raise_at(frame, ~isin(frame["view_position"], _VIEWS), "view_position", "expected CC or MLO")
    raise_at(frame, ~isin(frame["split"], _SPLITS), "split", "expected 'training' or 'test'")
    for column in ("height", "width"):
        value = pd.to_numeric(frame[column], errors="coerce")
        bad = value.isna() | (value <= 0) | (value != np.floor(value))
        raise_at(frame, bad.to_numpy(), column, "expected a positive integer")
    raise_at(frame, ~frame["breast_birads"].str.fullmatch(_BIRADS), "breast_birads", "expected 'BI-RADS k'")
    raise_at(
        frame, ~frame["breast_density"].str.fullmatch(_DENSITY), "breast_density", "expected 'DENSITY A-D'"
    )


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as a string, missing values as "" (frames built in memory may hold NaN / numbers)."""
    return pd.DataFrame(
        {c: frame[c].astype(object).where(frame[c].notna(), "").astype(str) for c in frame.columns},
        index=frame.index,
    )


def _typed_size(frame: pd.DataFrame) -> None:
    for column in ("height", "width"):
        frame[column] = pd.to_numeric(frame[column]).astype(np.int64)


def validate_vindr_annotations(
    breast: pd.DataFrame, findings: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate and type the two VinDr tables ; see :func:`read_vindr_annotations`."""
    require_columns(breast, BREAST_COLUMNS, what="VinDr breast-level annotations")
    require_columns(findings, FINDING_COLUMNS, what="VinDr finding annotations")
    breast_attrs, findings_attrs = dict(breast.attrs), dict(findings.attrs)
    breast = _as_text(breast[list(BREAST_COLUMNS)])
    findings = _as_text(findings[list(FINDING_COLUMNS)])
    breast.attrs, findings.attrs = breast_attrs, findings_attrs

    # breast level
    _check_identity(breast)
    dup = breast["image_id"].duplicated(keep=False).to_numpy()
    raise_at(breast, dup, "image_id", "duplicated image id (one row per image expected)")

    # finding level: per-row formats
    _check_identity(findings)
    categories = parse_list_column(findings, "finding_categories", allowed=LABELS)
    is_normal = np.array([NO_FINDING in c for c in categories])
    mixed = np.array([NO_FINDING in c and len(c) > 1 for c in categories])
    raise_at(findings, mixed, "finding_categories", f"{NO_FINDING!r} combined with other categories")
    fb = findings["finding_birads"].str.strip()
    raise_at(
        findings, (fb != "") & ~fb.str.fullmatch(_BIRADS), "finding_birads", "expected 'BI-RADS k' or empty"
    )

    boxes = {}
    empty = {}
    for column in BOX_COLUMNS:
        text = findings[column].str.strip()
        empty[column] = (text == "").to_numpy()
        value = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(dtype=float)
        raise_at(findings, ~empty[column] & ~np.isfinite(value), column, "expected a number or an empty cell")
        boxes[column] = value
    n_empty = sum(e.astype(int) for e in empty.values())
    partial = (n_empty > 0) & (n_empty < 4)
    first_empty = next(c for c in BOX_COLUMNS if (empty[c] & partial).any()) if partial.any() else None
    raise_at(findings, partial, first_empty, "box partly empty (all four coordinates or none)")
    has_box = n_empty == 0
    raise_at(findings, is_normal & has_box, "xmin", f"a {NO_FINDING!r} row must have an empty box")
    raise_at(findings, ~is_normal & ~has_box, "xmin", "a finding row needs a box", show=False)

    width = pd.to_numeric(findings["width"]).to_numpy(dtype=float)
    height = pd.to_numeric(findings["height"]).to_numpy(dtype=float)
    x0, y0, x1, y1 = (boxes[c] for c in BOX_COLUMNS)
    with np.errstate(invalid="ignore"):
        raise_at(findings, has_box & ~(x0 < x1), "xmin", "xmin must be < xmax")
        raise_at(findings, has_box & ~(y0 < y1), "ymin", "ymin must be < ymax")
        raise_at(findings, has_box & (x0 < 0), "xmin", "box outside the image (xmin < 0)")
        raise_at(findings, has_box & (y0 < 0), "ymin", "box outside the image (ymin < 0)")
        raise_at(findings, has_box & (x1 > width), "xmax", "box outside the image (xmax > width)")
        raise_at(findings, has_box & (y1 > height), "ymax", "box outside the image (ymax > height)")

    # consistency with the breast-level file
    by_image = breast.set_index("image_id")
    known = isin(findings["image_id"], set(by_image.index))
    raise_at(findings, ~known, "image_id", f"image not listed in {source_of(breast)}")
    for column in _SHARED:
        ref = findings["image_id"].map(by_image[column])
        bad = (findings[column] != ref).to_numpy()
        if bad.any():
            first = findings.index[bad][0]
            raise_at(
                findings,
                bad,
                column,
                f"differs from {source_of(breast)} for this image ({ref[first]!r} there)",
            )
    listed = isin(breast["image_id"], set(findings["image_id"]))
    raise_at(breast, ~listed, "image_id", f"image has no row in {source_of(findings)}")
    normal_images = set(findings.loc[is_normal, "image_id"])
    finding_images = set(findings.loc[~is_normal, "image_id"])
    both = isin(findings["image_id"], normal_images & finding_images) & is_normal
    raise_at(findings, both, "finding_categories", f"{NO_FINDING!r} row for an image that has findings")

    study_splits = breast.groupby("study_id")["split"].nunique()
    if (study_splits > 1).any():
        log.warning(
            "%s: %d studies have images in both splits (e.g. %s)",
            source_of(breast),
            int((study_splits > 1).sum()),
            ", ".join(study_splits.index[study_splits > 1][:5]),
        )

    _typed_size(breast)
    _typed_size(findings)
    findings["finding_categories"] = pd.Series(categories, index=findings.index, dtype=object)
    findings["finding_birads"] = fb.where(fb != "")
    for column in BOX_COLUMNS:
        findings[column] = boxes[column]
    breast.attrs, findings.attrs = breast_attrs, findings_attrs
    return breast, findings


# --------------------------------------------------------------------------------------------------
# Boxes -> PNG frame
# --------------------------------------------------------------------------------------------------


def _float(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _examples(frame: pd.DataFrame, mask: np.ndarray, n: int = 3) -> str:
    rows = frame.index[mask][:n]
    return "; ".join(
        f"{frame.at[r, 'image_id']} box {[float(frame.at[r, c]) for c in BOX_COLUMNS]}" for r in rows
    )


def map_boxes_to_png(
    findings: pd.DataFrame, manifest: pd.DataFrame, *, missing: str = "exclude"
) -> pd.DataFrame:
    """Add ``resized_xmin, resized_ymin, resized_xmax, resized_ymax`` (PNG pixels) to the finding rows.

    Rows of images absent from / failed in ``manifest`` are excluded and logged (``missing="error"``
    raises for absent images). See the module docstring for the formula and the NaN decisions. The
    index (source rows) and ``attrs`` of ``findings`` are kept.
    """
    require_columns(findings, ["image_id", "height", "width", *BOX_COLUMNS])
    columns = [*_MANIFEST_GEOMETRY, *(["crop_contiguous"] if "crop_contiguous" in manifest.columns else [])]
    joined = join_manifest(findings, manifest, columns=columns, missing=missing, what="finding rows")
    source = source_of(findings)

    for ours, theirs in (("height", "orig_height"), ("width", "orig_width")):
        dicom = _float(joined[theirs])
        bad = ~np.isnan(dicom) & (dicom != _float(joined[ours]))
        if bad.any():
            first = joined.index[bad][0]
            raise_at(
                joined, bad, ours,
                f"differs from the DICOM size in the PNG manifest ({theirs} = {int(dicom[bad][0])} for image "
                f"{joined.at[first, 'image_id']}); the boxes would be mapped from the wrong frame",
            )  # fmt: skip

    x0, y0, x1, y1 = (_float(joined[c]) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    pw, ph = _float(joined["png_width"]), _float(joined["png_height"])
    bx0, by0, bx1, by1 = (joined[c].to_numpy(dtype=float) for c in BOX_COLUMNS)
    has_box = ~np.isnan(bx0)
    has_crop = ~(np.isnan(x0) | np.isnan(y0) | np.isnan(x1) | np.isnan(y1) | np.isnan(pw) | np.isnan(ph))
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = [
            (bx0 - x0) * pw / (x1 - x0),
            (by0 - y0) * ph / (y1 - y0),
            (bx1 - x0) * pw / (x1 - x0),
            (by1 - y0) * ph / (y1 - y0),
        ]
        limits = [pw, ph, pw, ph]
        mapped = [np.clip(v, 0.0, lim) for v, lim in zip(raw, limits, strict=True)]
        empty = has_box & has_crop & ((mapped[2] <= mapped[0]) | (mapped[3] <= mapped[1]))
        clipped = (
            has_box & has_crop & ~empty & np.any([m != r for m, r in zip(mapped, raw, strict=True)], axis=0)
        )

    if empty.any():
        log.warning(
            "%s: %d box(es) lie entirely outside the breast crop and are kept with NaN resized boxes "
            "(e.g. %s)",
            location(joined, joined.index[empty]),
            int(empty.sum()),
            _examples(joined, empty),
        )
    if clipped.any():
        log.info(
            "%s: %d box(es) partly outside the breast crop were clipped to the PNG",
            source,
            int(clipped.sum()),
        )
    no_crop = has_box & ~has_crop
    if no_crop.any():
        log.warning(
            "%s: %d box(es) belong to images without a crop box in the manifest (PNG release?); "
            "their resized boxes stay NaN (e.g. %s)",
            source,
            int(no_crop.sum()),
            _examples(joined, no_crop),
        )
    if "crop_contiguous" in joined.columns:
        legacy_split = has_box & (joined["crop_contiguous"].astype("boolean") == False).to_numpy(  # noqa: E712
            dtype=bool, na_value=False
        )
        if legacy_split.any():
            log.warning(
                "%s: %d box(es) are on images with a non-contiguous (legacy) crop; mapped through its "
                "bounding range, which is approximate",
                source,
                int(legacy_split.sum()),
            )

    keep = has_box & has_crop & ~empty
    out = joined[list(findings.columns)].copy()
    for column, value in zip(RESIZED_COLUMNS, mapped, strict=True):
        out[column] = np.where(keep, value, np.nan)
    out.attrs = dict(findings.attrs)
    return out


# --------------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------------


def assign_validation_folds(
    table: pd.DataFrame,
    *,
    n_folds: int,
    seed: int,
    patient_column: str = "patient_id",
    split_column: str = "split",
    train_value: str = "training",
) -> pd.Series:
    """Patient-level validation folds carved from the training split (test rows get -1).

    Training patients are ordered by ``sha256(f"{seed}:{patient}")`` and dealt round-robin into
    ``n_folds`` folds, so every row of a patient shares its fold, fold sizes differ by at most one patient,
    and the result depends only on the set of training patients and the seed. Returns an int64 Series
    named ``val_fold`` aligned with ``table``.
    """
    if int(n_folds) < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    require_columns(table, [patient_column, split_column])
    patients = table[patient_column].astype(str)
    train = (table[split_column] == train_value).to_numpy()
    unique = sorted(set(patients[train]))
    order = sorted(unique, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())
    fold_of = {p: i % n_folds for i, p in enumerate(order)}
    if 0 < len(unique) < n_folds:
        log.warning(
            "only %d training patients for %d validation folds: some folds are empty", len(unique), n_folds
        )
    folds = np.full(len(table), -1, dtype=np.int64)
    folds[train] = patients[train].map(fold_of).to_numpy(dtype=np.int64)
    return pd.Series(folds, index=table.index, name="val_fold")


def _patient_val_folds(
    breast: pd.DataFrame, patients: pd.Series, splits: pd.Series, *, n_folds: int, seed: int
) -> np.ndarray:
    """``val_fold`` for rows given by (patient id, split), with folds computed on the breast-level file."""
    require_columns(breast, ["study_id", "split"])
    folds = assign_validation_folds(breast, n_folds=n_folds, seed=seed, patient_column="study_id")
    train = (breast["split"] == "training").to_numpy()
    fold_of = dict(zip(breast["study_id"].astype(str)[train], folds[train], strict=True))
    is_train = (splits == "training").to_numpy()
    mapped = patients.astype(str).map(fold_of).to_numpy(dtype=float, na_value=np.nan)
    if np.isnan(mapped[is_train]).any():
        unknown = pd.unique(patients[is_train & np.isnan(mapped)])[:5]
        raise AnnotationError(
            f"training patient(s) {', '.join(map(str, unknown))} have no training image in "
            f"{source_of(breast)}"
        )
    return np.where(is_train, mapped, -1).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def _one_hot(categories: Sequence[Sequence[str]], index: pd.Index) -> pd.DataFrame:
    """Per-row 0/1 columns :data:`ONE_HOT_COLUMNS` (cached per distinct category list)."""
    position = {name: j for j, name in enumerate(ONE_HOT_COLUMNS)}
    cache: dict[tuple[str, ...], np.ndarray] = {}
    matrix = np.zeros((len(categories), len(ONE_HOT_COLUMNS)), dtype=np.int64)
    for i, cats in enumerate(categories):
        key = tuple(cats)
        vec = cache.get(key)
        if vec is None:
            vec = np.zeros(len(ONE_HOT_COLUMNS), dtype=np.int64)
            for c in key:
                vec[position[_ONE_HOT_OF[c]]] = 1
            cache[key] = vec
        matrix[i] = vec
    return pd.DataFrame(matrix, columns=list(ONE_HOT_COLUMNS), index=index)


def _density_code(breast_density: pd.Series) -> np.ndarray:
    return breast_density.str[-1].map(_DENSITY_CODE).to_numpy(dtype=np.int64)


def _split_fold(split: pd.Series) -> np.ndarray:
    return np.where(split.to_numpy() == "test", 0, 1).astype(np.int64)


def _require_mapped(findings_mapped: pd.DataFrame) -> None:
    require_columns(findings_mapped, [*FINDING_COLUMNS, *RESIZED_COLUMNS], what="mapped VinDr findings")


def vindr_row_table(
    breast: pd.DataFrame,
    findings_mapped: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    n_folds: int = DEFAULT_VAL_FOLDS,
    seed: int = DEFAULT_SEED,
    missing: str = "exclude",
) -> pd.DataFrame:
    """Upstream's ``vindr_detection_v1_folds.csv`` (section 12.4) + ``png_path``, ``val_fold``.

    One row per finding row of ``findings_mapped`` (output of :func:`map_boxes_to_png`) in its order,
    restricted to images that are ok in ``manifest``; columns :data:`ROW_TABLE_COLUMNS`, fresh RangeIndex.
    """
    require_columns(breast, BREAST_COLUMNS)
    _require_mapped(findings_mapped)
    rows = join_manifest(
        findings_mapped, manifest, columns=("png_path",), missing=missing, what="finding rows"
    )
    categories = list(rows["finding_categories"])
    out = pd.DataFrame(
        {
            "patient_id": rows["study_id"].astype(str),
            "series_id": rows["series_id"].astype(str),
            "image_id": rows["image_id"].astype(str) + ".png",
            "laterality": rows["laterality"],
            "view": rows["view_position"],
            "height": rows["height"].astype(np.int64),
            "width": rows["width"].astype(np.int64),
            "breast_birads": rows["breast_birads"],
            "breast_density": rows["breast_density"],
            "finding_categories": pd.Series([list(c) for c in categories], index=rows.index, dtype=object),
            "finding_birads": rows["finding_birads"],
            **{c: rows[c].astype(float) for c in BOX_COLUMNS},
            "split": rows["split"],
            **{c: rows[c].astype(float) for c in RESIZED_COLUMNS},
            "fold": _split_fold(rows["split"]),
        },
        index=rows.index,
    )
    out = pd.concat([out, _one_hot(categories, rows.index)], axis=1)
    out["density"] = _density_code(rows["breast_density"])
    out["png_path"] = rows["png_path"].astype(str)
    out["val_fold"] = _patient_val_folds(breast, out["patient_id"], out["split"], n_folds=n_folds, seed=seed)
    return out[list(ROW_TABLE_COLUMNS)].reset_index(drop=True)


def vindr_image_table(
    breast: pd.DataFrame,
    findings_mapped: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    n_folds: int = DEFAULT_VAL_FOLDS,
    seed: int = DEFAULT_SEED,
    missing: str = "exclude",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(images, boxes)``: one row per image (:data:`IMAGE_TABLE_COLUMNS`), one row per box
    (:data:`BOX_TABLE_COLUMNS`). Images not ok in ``manifest`` are excluded (logged)."""
    require_columns(breast, BREAST_COLUMNS)
    _require_mapped(findings_mapped)
    images = join_manifest(breast, manifest, columns=("png_path",), missing=missing, what="images")

    row_hot = _one_hot(list(findings_mapped["finding_categories"]), findings_mapped.index)
    row_hot["image_id"] = findings_mapped["image_id"].astype(str).to_numpy()
    per_image = row_hot.groupby("image_id", sort=False).max()
    n_boxes = findings_mapped["xmin"].notna().groupby(findings_mapped["image_id"].astype(str)).sum()
    ids = images["image_id"].astype(str)
    raise_at(
        images, ~isin(ids, set(per_image.index)), "image_id",
        "image has no finding row in the mapped findings table", show=True,
    )  # fmt: skip
    hot = per_image.reindex(ids.to_numpy())
    hot.index = images.index
    others = [c for c in ONE_HOT_COLUMNS if c != "No_Finding"]
    hot["No_Finding"] = (~hot[others].astype(bool).any(axis=1)).astype(np.int64)
    label_matrix = hot[[_ONE_HOT_OF[label] for label in LABELS]].to_numpy(dtype=bool)
    cache: dict[bytes, list[str]] = {}
    label_lists = []
    for bits in label_matrix:
        key = bits.tobytes()
        if key not in cache:
            cache[key] = [LABELS[j] for j in np.flatnonzero(bits)]
        label_lists.append(list(cache[key]))

    table = pd.DataFrame(
        {
            "patient_id": images["study_id"].astype(str),
            "series_id": images["series_id"].astype(str),
            "image_id": ids + ".png",
            "laterality": images["laterality"],
            "view": images["view_position"],
            "height": images["height"].astype(np.int64),
            "width": images["width"].astype(np.int64),
            "breast_birads": images["breast_birads"],
            "breast_density": images["breast_density"],
            "split": images["split"],
            "finding_categories": pd.Series(label_lists, index=images.index, dtype=object),
            "n_boxes": ids.map(n_boxes).fillna(0).astype(np.int64),
            "fold": _split_fold(images["split"]),
        },
        index=images.index,
    )
    table = pd.concat([table, hot[list(ONE_HOT_COLUMNS)].astype(np.int64)], axis=1)
    table["density"] = _density_code(images["breast_density"])
    table["png_path"] = images["png_path"].astype(str)
    table["val_fold"] = _patient_val_folds(
        breast, table["patient_id"], table["split"], n_folds=n_folds, seed=seed
    )
    table = table[list(IMAGE_TABLE_COLUMNS)].reset_index(drop=True)

    in_images = isin(findings_mapped["image_id"].astype(str), set(ids))
    has_box = findings_mapped["xmin"].notna().to_numpy()
    rows = findings_mapped[in_images & has_box]
    by_image = table.set_index("image_id")
    png_names = rows["image_id"].astype(str) + ".png"
    boxes = pd.DataFrame(
        {
            "patient_id": rows["study_id"].astype(str),
            "image_id": png_names,
            "laterality": rows["laterality"],
            "view": rows["view_position"],
            "split": rows["split"],
            "finding_categories": pd.Series(
                [list(c) for c in rows["finding_categories"]], index=rows.index, dtype=object
            ),
            "finding_birads": rows["finding_birads"],
            **{c: rows[c].astype(float) for c in (*BOX_COLUMNS, *RESIZED_COLUMNS)},
            "png_path": png_names.map(by_image["png_path"]),
            "val_fold": png_names.map(by_image["val_fold"]).astype(np.int64),
        },
        index=rows.index,
    )
    return table, boxes[list(BOX_TABLE_COLUMNS)].reset_index(drop=True)


def finding_slots(positives: Sequence[str], laterality: str, *, has_images: bool = True) -> list[list[str]]:
    """The 4-slot ``[pos_right, pos_left, neg_right, neg_left]`` of one view (section 3.3, fixed).

    ``positives``: the union of the view's image categories (``No Finding`` ignored). No finding ->
    ``['No Finding']`` and no negatives; no image -> four empty slots.
    """
    if laterality not in _LATERALITIES:
        raise ValueError(f"laterality must be L or R, got {laterality!r}")
    slots: list[list[str]] = [[], [], [], []]
    if not has_images:
        return slots
    found = {p for p in positives if p != NO_FINDING}
    unknown = found - set(FINDING_CATEGORIES)
    if unknown:
        raise ValueError(f"unknown finding categories {sorted(unknown)}")
    pos = [c for c in FINDING_CATEGORIES if c in found]
    neg = [c for c in FINDING_CATEGORIES if c not in found] if pos else []
    side = 0 if laterality == "R" else 1
    slots[side] = pos or [NO_FINDING]
    slots[side + 2] = neg
    return slots


def vindr_image_label_table(image_table: pd.DataFrame) -> pd.DataFrame:
    """Upstream's ``clip_vindr_final.csv`` (sections 3, 12.5) + ``val_fold``: one row per breast.

    ``image_table`` is the first output of :func:`vindr_image_table`. Columns :data:`LABEL_TABLE_COLUMNS`;
    ordering and slot rules in the module docstring.
    """
    needed = ["patient_id", "laterality", "view", "image_id", "split", "finding_categories", "val_fold"]
    require_columns(image_table, needed)
    bad_view = ~isin(image_table["view"], _VIEWS)
    raise_at(image_table, bad_view, "view", "expected CC or MLO")
    groups: dict[tuple[str, str], list[int]] = {}
    patients = image_table["patient_id"].astype(str).to_numpy()
    lats = image_table["laterality"].to_numpy()
    for i, key in enumerate(zip(patients, lats, strict=True)):
        groups.setdefault(key, []).append(i)
    views = image_table["view"].to_numpy()
    names = image_table["image_id"].astype(str).to_numpy()
    cats = image_table["finding_categories"].to_numpy()
    splits = image_table["split"].to_numpy()
    val_folds = image_table["val_fold"].to_numpy()

    records = []
    for patient, lat in sorted(groups):
        idx = groups[(patient, lat)]
        if len({splits[i] for i in idx}) > 1:
            raise AnnotationError(
                f"{source_of(image_table)}: breast {patient} {lat} has images in both splits"
            )
        if len({val_folds[i] for i in idx}) > 1:
            raise AnnotationError(f"{source_of(image_table)}: breast {patient} {lat} has several val_folds")
        by_view = {v: [i for i in idx if views[i] == v] for v in _VIEWS}
        ordered = by_view["CC"] + by_view["MLO"]
        slots = {
            v: finding_slots([c for i in by_view[v] for c in cats[i]], lat, has_images=bool(by_view[v]))
            for v in _VIEWS
        }
        split = splits[idx[0]]
        records.append(
            {
                "patient_id": patient,
                "laterality": lat,
                "split": split,
                "image": [names[i] for i in ordered],
                "view": [views[i] for i in ordered],
                "CC": [names[i] for i in by_view["CC"]],
                "MLO": [names[i] for i in by_view["MLO"]],
                "cc_findings": [list(cats[i]) for i in by_view["CC"]],
                "mlo_findings": [list(cats[i]) for i in by_view["MLO"]],
                "CC_FINDING": slots["CC"],
                "MLO_FINDING": slots["MLO"],
                "fold": 0 if split == "test" else 1,
                "patient_id_laterality": f"{patient}_{lat}",
                "val_fold": int(val_folds[idx[0]]),
            }
        )
    table = pd.DataFrame.from_records(records, columns=list(LABEL_TABLE_COLUMNS))
    for column in ("fold", "val_fold"):
        table[column] = table[column].astype(np.int64)
    return table
