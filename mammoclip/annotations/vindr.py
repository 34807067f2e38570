"""VinDr-Mammo annotations -> the tables downstream reads (docs/upstream.md#vindr-annotations).

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
(training, test) / size values, a box that is partly empty, non-numeric, inverted, empty (``xmin == xmax``
or ``ymin == ymax``) or entirely outside ``[0, width] x [0, height]``, a ``No Finding`` row with a box, a
finding row without one, a duplicated image id in the breast-level file, a finding row whose image or
per-image columns disagree with the breast-level file, an image with no finding row, and an image with
both ``No Finding`` and finding rows raise :class:`~mammoclip.annotations.tables.AnnotationError` naming
the file, the 1-based data row (and CSV line) and the column. Extra columns are logged and ignored. All
checks are vectorised (20 000 rows read and validated in well under a second).

What the real files contain passes: an empty ``finding_birads`` (18 357 rows of VinDr 1.0.0), lists of up to
4 categories (35 distinct values), and boxes that stick out of the image by a few pixels (VinDr 1.0.0: 19
with ``xmin < 0`` down to -26.8, 3 with ``ymin < 0``, 20 with ``xmax > width`` by up to 33.2, 1 with ``ymax >
height`` by 41.1). Those are clipped to the image (``clip_boxes=False``, used in legacy mode, keeps them for
upstream's arithmetic), counted in ``findings.attrs["clipped_boxes"]`` and logged: one warning per file with
the count and the largest overshoot per side, one INFO line per box.

Box mapping (:func:`map_boxes_to_png`, upstream's box script, defects fixed). VinDr boxes are in original
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
  and the rows are counted in a warning; :func:`boxes_from_release_table` takes them from upstream's row
  table instead (validated against the annotations). A non-contiguous legacy crop (``crop_contiguous``
  False) is mapped through its bounding range, which is approximate; such rows are counted in a warning.
* The manifest's ``orig_height``/``orig_width`` must equal the CSV's ``height``/``width`` (else the boxes
  are in another frame): a mismatch raises.

Legacy box mapping (``map_boxes_to_png(..., legacy=True)``, :func:`legacy_box_mapping`): upstream's
arithmetic exactly, so that converting the DICOMs with ``legacy: true`` rebuilds upstream's
``vindr_detection_v1_folds.csv``: the border shift with its swapped-axis clamps, the offset of the first
kept column/row and the scale from the kept counts (the manifest's ``crop_n_rows``/``crop_n_cols``, which
differ from the bounding range for tie crops), no clipping, and upstream's made-up box on the normal rows
among the first :data:`UPSTREAM_BOX_ROWS` rows. It equals
:func:`mammoclip.upstream_reference.map_box_like_upstream` bit for bit.

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
``[pos_right, pos_left, neg_right, neg_left]`` of upstream's notebook, built per view (its defect fixed):
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
    add_manifest_columns,
    isin,
    location,
    parse_list_column,
    raise_at,
    read_csv_strict,
    require_columns,
    source_of,
)
from mammoclip.preprocess import BORDER as _BORDER
from mammoclip.preprocess import with_kept_counts

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
    "RELEASE_PNG_SIZE",
    "RELEASE_TABLE_COLUMNS",
    "UPSTREAM_BOX_ROWS",
    "assign_validation_folds",
    "boxes_from_release_table",
    "finding_slots",
    "legacy_box_mapping",
    "map_boxes_to_png",
    "read_release_box_table",
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

#: the 10 finding categories, in the order of upstream's notebook
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
_KEPT_COUNTS = ("crop_n_rows", "crop_n_cols")
#: data rows of finding_annotations.csv that upstream's box script processed (``head(2255)``)
UPSTREAM_BOX_ROWS = 2255
_MANIFEST_GEOMETRY = (
    "orig_height", "orig_width", "crop_x0", "crop_y0", "crop_x1", "crop_y1", "png_height", "png_width",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------------------------------


def read_vindr_annotations(
    breast_csv: str | os.PathLike, findings_csv: str | os.PathLike, *, clip_boxes: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and validate VinDr's two annotation CSVs; see the module docstring for every check.

    Returns ``(breast, findings)``: string columns except ``height``/``width`` (int64) and the boxes
    (float64, NaN when empty, clipped to the image unless ``clip_boxes`` is False); ``finding_categories``
    holds lists; empty ``finding_birads`` is NaN. The index is the 0-based data row of each file,
    ``attrs["source"]`` its path and ``findings.attrs["clipped_boxes"]`` the clipping counts.
    """
    breast = read_csv_strict(breast_csv, BREAST_COLUMNS, what="VinDr breast-level annotations")
    findings = read_csv_strict(findings_csv, FINDING_COLUMNS, what="VinDr finding annotations")
    return validate_vindr_annotations(breast, findings, clip_boxes=clip_boxes)


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
    breast: pd.DataFrame, findings: pd.DataFrame, *, clip_boxes: bool = True
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
    _check_box_geometry(findings, boxes, has_box, width=width, height=height)
    boxes, clipped = _clip_to_image(findings, boxes, has_box, width=width, height=height, clip=clip_boxes)

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
    breast.attrs = breast_attrs
    findings.attrs = {**findings_attrs, "clipped_boxes": clipped, "boxes_clipped": clip_boxes}
    return breast, findings


def _check_box_geometry(
    findings: pd.DataFrame, boxes: dict[str, np.ndarray], has_box: np.ndarray, *, width: np.ndarray,
    height: np.ndarray,
) -> None:  # fmt: skip
    """Refuse boxes that are inverted, empty or entirely outside ``[0, width] x [0, height]``."""
    x0, y0, x1, y1 = (boxes[c] for c in BOX_COLUMNS)
    with np.errstate(invalid="ignore"):
        raise_at(findings, has_box & (x0 > x1), "xmin", "inverted box: xmin must be < xmax")
        raise_at(findings, has_box & (y0 > y1), "ymin", "inverted box: ymin must be < ymax")
        raise_at(findings, has_box & (x0 == x1), "xmin", "empty box: xmin must be < xmax")
        raise_at(findings, has_box & (y0 == y1), "ymin", "empty box: ymin must be < ymax")
        outside = "box entirely outside the image"
        raise_at(findings, has_box & (x1 <= 0), "xmax", f"{outside} (xmax <= 0)")
        raise_at(findings, has_box & (y1 <= 0), "ymax", f"{outside} (ymax <= 0)")
        raise_at(findings, has_box & (x0 >= width), "xmin", f"{outside} (xmin >= width)")
        raise_at(findings, has_box & (y0 >= height), "ymin", f"{outside} (ymin >= height)")


def _clip_to_image(
    findings: pd.DataFrame, boxes: dict[str, np.ndarray], has_box: np.ndarray, *, width: np.ndarray,
    height: np.ndarray, clip: bool,
) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
    """Clip boxes that stick out of the image (real VinDr has 43 such sides, up to 41 px) and report them.

    Returns the (clipped unless ``clip`` is False) boxes and ``{"boxes": n, column: {"rows": n,
    "max_px": overshoot}}``; one warning per file gives the counts and overshoots, one INFO line per box
    the row, image and values.
    """
    beyond = {
        "xmin": np.where(has_box, -boxes["xmin"], np.nan),
        "ymin": np.where(has_box, -boxes["ymin"], np.nan),
        "xmax": np.where(has_box, boxes["xmax"] - width, np.nan),
        "ymax": np.where(has_box, boxes["ymax"] - height, np.nan),
    }
    with np.errstate(invalid="ignore"):
        out = {c: np.nan_to_num(v, nan=0.0) > 0 for c, v in beyond.items()}
    any_out = np.any(list(out.values()), axis=0)
    stats: dict = {"boxes": int(any_out.sum())}
    for column in BOX_COLUMNS:
        stats[column] = {
            "rows": int(out[column].sum()),
            "max_px": round(float(beyond[column][out[column]].max()), 3) if out[column].any() else 0.0,
        }
    if not any_out.any():
        return boxes, stats
    source = source_of(findings)
    action = "clipped to the image" if clip else "kept as they are (legacy: upstream's arithmetic)"
    limit = {"xmin": "xmin < 0", "ymin": "ymin < 0", "xmax": "xmax > width", "ymax": "ymax > height"}
    sides = ", ".join(
        f"{limit[c]} on {stats[c]['rows']} row(s) (by up to {stats[c]['max_px']:g} px)"
        for c in BOX_COLUMNS
        if stats[c]["rows"]
    )
    log.warning(
        "%s: %d box(es) extend beyond the image and were %s: %s", source, stats["boxes"], action, sides
    )
    for index in findings.index[any_out]:
        i = findings.index.get_loc(index)
        log.info(
            "%s: image %s box %s; the image is %d x %d (width x height)",
            location(findings, [index]),
            findings.at[index, "image_id"],
            [float(boxes[c][i]) for c in BOX_COLUMNS],
            int(width[i]),
            int(height[i]),
        )
    return (_clipped(boxes, width=width, height=height) if clip else boxes), stats


def _clipped(boxes: dict[str, np.ndarray], *, width: np.ndarray, height: np.ndarray) -> dict[str, np.ndarray]:
    """Boxes clipped to ``[0, width] x [0, height]`` (NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        return {
            "xmin": np.where(boxes["xmin"] < 0, 0.0, boxes["xmin"]),
            "ymin": np.where(boxes["ymin"] < 0, 0.0, boxes["ymin"]),
            "xmax": np.where(boxes["xmax"] > width, width, boxes["xmax"]),
            "ymax": np.where(boxes["ymax"] > height, height, boxes["ymax"]),
        }


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
    findings: pd.DataFrame, manifest: pd.DataFrame, *, missing: str = "exclude", legacy: bool = False
) -> pd.DataFrame:
    """Add ``resized_xmin, resized_ymin, resized_xmax, resized_ymax`` (PNG pixels) to the finding rows.

    Rows of images absent from / failed in ``manifest`` are excluded and logged (``missing="error"``
    raises for absent images). See the module docstring for the formula and the NaN decisions;
    ``legacy=True`` reproduces upstream's arithmetic instead (:func:`legacy_box_mapping`). The index
    (source rows) and ``attrs`` of ``findings`` are kept.
    """
    require_columns(findings, ["image_id", "height", "width", *BOX_COLUMNS])
    manifest = with_kept_counts(manifest)
    optional = ["crop_contiguous"] if "crop_contiguous" in manifest.columns else []
    joined = add_manifest_columns(
        findings, manifest, columns=[*_MANIFEST_GEOMETRY, *_KEPT_COUNTS, *optional], missing=missing,
        what="finding rows",
    )  # fmt: skip
    source = source_of(findings)
    _check_dicom_size(joined)

    x0, y0, x1, y1 = (_float(joined[c]) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    pw, ph = _float(joined["png_width"]), _float(joined["png_height"])
    bx0, by0, bx1, by1 = (joined[c].to_numpy(dtype=float) for c in BOX_COLUMNS)
    has_box = ~np.isnan(bx0)
    has_crop = ~(np.isnan(x0) | np.isnan(y0) | np.isnan(x1) | np.isnan(y1) | np.isnan(pw) | np.isnan(ph))
    no_crop = has_box & ~has_crop
    if no_crop.any():
        log.warning(
            "%s: %d box(es) belong to images without a crop box in the manifest (PNG release?); "
            "their resized boxes stay NaN (give upstream's box table as annotations.vindr_box_table to take "
            "its boxes) (e.g. %s)",
            source,
            int(no_crop.sum()),
            _examples(joined, no_crop),
        )
    if legacy:
        out = joined[list(findings.columns)].copy()
        for column, value in zip(RESIZED_COLUMNS, legacy_box_mapping(joined), strict=True):
            out[column] = value
        out.attrs = dict(findings.attrs)
        return out

    contiguous = (
        joined["crop_contiguous"].astype("boolean").to_numpy(dtype=bool, na_value=True)
        if "crop_contiguous" in joined.columns
        else np.ones(len(joined), dtype=bool)
    )
    legacy_split = has_box & has_crop & ~contiguous
    if legacy_split.any():
        log.warning(
            "%s: %d box(es) are on images with a non-contiguous (legacy) crop; mapped through its bounding "
            "range, which matches neither upstream nor the pixels (set legacy: true for upstream's mapping, "
            "or convert with legacy: false)",
            source,
            int(legacy_split.sum()),
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = [
            (bx0 - x0) * pw / (x1 - x0),
            (by0 - y0) * ph / (y1 - y0),
            (bx1 - x0) * pw / (x1 - x0),
            (by1 - y0) * ph / (y1 - y0),
        ]
    mapped, empty = _clip_to_png(joined, raw, has_box & has_crop, pw, ph, what="breast crop")
    keep = has_box & has_crop & ~empty
    out = joined[list(findings.columns)].copy()
    for column, value in zip(RESIZED_COLUMNS, mapped, strict=True):
        out[column] = np.where(keep, value, np.nan)
    out.attrs = dict(findings.attrs)
    return out


def _check_dicom_size(joined: pd.DataFrame) -> None:
    """The CSV's height/width must equal the DICOM size (manifest ``orig_*``), else the frames differ."""
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


def _clip_to_png(
    joined: pd.DataFrame, raw: list[np.ndarray], mappable: np.ndarray, pw: np.ndarray, ph: np.ndarray, *,
    what: str,
) -> tuple[list[np.ndarray], np.ndarray]:  # fmt: skip
    """Clip PNG-frame boxes to ``[0, pw] x [0, ph]``; returns them and the rows left empty (logged)."""
    with np.errstate(invalid="ignore"):
        mapped = [np.clip(v, 0.0, lim) for v, lim in zip(raw, [pw, ph, pw, ph], strict=True)]
        empty = mappable & ((mapped[2] <= mapped[0]) | (mapped[3] <= mapped[1]))
        clipped = mappable & ~empty & np.any([m != r for m, r in zip(mapped, raw, strict=True)], axis=0)
    if empty.any():
        log.warning(
            "%s: %d box(es) lie entirely outside the %s (or are inverted there) and are kept with NaN "
            "resized boxes (e.g. %s)",
            location(joined, joined.index[empty]),
            int(empty.sum()),
            what,
            _examples(joined, empty),
        )
    if clipped.any():
        log.info(
            "%s: %d box(es) partly outside the %s were clipped to the PNG",
            source_of(joined),
            int(clipped.sum()),
            what,
        )
    return mapped, empty


def legacy_box_mapping(joined: pd.DataFrame) -> list[np.ndarray]:
    """Upstream's detector-box arithmetic, vectorised, from the manifest alone: the four resized columns.

    ``joined``: finding rows with the CSV boxes (not clipped) and the manifest's geometry. Per box, in
    float64 as upstream's Python floats: ``xmin' = max(0, xmin - 5)``, ``ymin' = max(0, ymin - 5)``,
    ``xmax' = min(H - 10, xmax - 5)``, ``ymax' = min(W - 10, ymax - 5)`` (x clamped by the border-cropped
    *height*, y by its *width*: upstream's axis mix-up), minus the first kept column ``crop_x0 - 5`` / row
    ``crop_y0 - 5``, times ``png_width / crop_n_cols`` / ``png_height / crop_n_rows`` (the kept counts,
    also for non-contiguous tie crops); nothing is clipped. Upstream ran the script on the first
    :data:`UPSTREAM_BOX_ROWS` data rows of ``finding_annotations.csv`` (every box plus the first normal
    row), where Python's ``max(0, nan)`` / ``min(h, nan)`` turned an empty box into ``(0, 0, H - 10, W -
    10)``: normal rows among the first :data:`UPSTREAM_BOX_ROWS` source rows (the index) get that box,
    later ones stay NaN. Rows without a crop box stay NaN.
    """
    h = _float(joined["orig_height"]) - 2 * _BORDER
    w = _float(joined["orig_width"]) - 2 * _BORDER
    col0 = _float(joined["crop_x0"]) - _BORDER
    row0 = _float(joined["crop_y0"]) - _BORDER
    pw, ph = _float(joined["png_width"]), _float(joined["png_height"])
    n_rows, n_cols = _float(joined["crop_n_rows"]), _float(joined["crop_n_cols"])
    bx0, by0, bx1, by1 = (joined[c].to_numpy(dtype=float) - _BORDER for c in BOX_COLUMNS)
    has_box = ~np.isnan(bx0)
    positions = np.asarray(joined.index) if pd.api.types.is_integer_dtype(joined.index) else None
    upstream_rows = has_box.copy() if positions is None else has_box | (positions < UPSTREAM_BOX_ROWS)
    mappable = upstream_rows & ~np.isnan(col0) & ~np.isnan(row0) & ~np.isnan(pw) & ~np.isnan(ph)
    needs_counts = mappable & (np.isnan(n_rows) | np.isnan(n_cols))
    if needs_counts.any():
        raise_at(
            joined, needs_counts, "image_id",
            "the PNG manifest does not record how many rows/columns this image's non-contiguous crop "
            "kept (crop_n_rows, crop_n_cols), which upstream's box scaling needs; rerun the preprocessing "
            "stage with legacy: true",
        )  # fmt: skip
    with np.errstate(invalid="ignore"):
        # comparisons with NaN are False, so these are exactly Python's max(0, v) and min(limit, v)
        xmin = np.where(bx0 > 0, bx0, 0.0) - col0
        ymin = np.where(by0 > 0, by0, 0.0) - row0
        xmax = np.where(bx1 < h, bx1, h) - col0
        ymax = np.where(by1 < w, by1, w) - row0
        resized = [xmin * pw / n_cols, ymin * ph / n_rows, xmax * pw / n_cols, ymax * ph / n_rows]
    resized = [np.where(mappable, v, np.nan) for v in resized]
    beyond = mappable & ((resized[0] < 0) | (resized[1] < 0) | (resized[2] > pw) | (resized[3] > ph))
    if beyond.any():
        log.info(
            "%s: legacy box mapping: %d box(es) extend beyond the PNG (upstream does not clip)",
            source_of(joined),
            int(beyond.sum()),
        )
    made_up = mappable & ~has_box
    if made_up.any():
        log.info(
            "%s: legacy box mapping: %d normal row(s) among the first %d rows get upstream's whole-image "
            "box (%s)",
            source_of(joined),
            int(made_up.sum()),
            UPSTREAM_BOX_ROWS,
            location(joined, joined.index[made_up]),
        )
    return resized


# --------------------------------------------------------------------------------------------------
# Boxes from upstream's row table (the authors' PNG release)
# --------------------------------------------------------------------------------------------------

#: the frame of upstream's ``resized_*`` boxes: its PNGs are 912 wide and 1520 tall
RELEASE_PNG_SIZE = (912, 1520)
#: the columns of upstream's table that the boxes are taken from and checked against
RELEASE_TABLE_COLUMNS = (
    "image_id", "height", "width", "finding_categories", *BOX_COLUMNS, "split", *RESIZED_COLUMNS,
)  # fmt: skip


def read_release_box_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read upstream's ``vindr_detection_v1_folds.csv`` (strings; other columns kept as they are)."""
    return read_csv_strict(
        path, RELEASE_TABLE_COLUMNS, what="upstream's VinDr box table (vindr_detection_v1_folds.csv)",
        keep_extra=True,
    )  # fmt: skip


def _box_key(
    frame: pd.DataFrame, categories: Sequence[Sequence[str]], boxes: dict[str, np.ndarray]
) -> pd.Series:
    """``image|categories|box`` per row (box to 1e-4 px, categories sorted): what identifies a finding row."""
    image = frame["image_id"].astype(str).str.removesuffix(".png").to_numpy()
    cats = ["/".join(sorted(c)) for c in categories]
    coords = np.column_stack([np.round(boxes[c], 4) for c in BOX_COLUMNS])
    text = [
        f"{i}|{c}|" + ",".join("" if np.isnan(v) else f"{v:.4f}" for v in row)
        for i, c, row in zip(image, cats, coords, strict=True)
    ]
    return pd.Series(text, index=frame.index)


def _occurrence_keys(keys: pd.Series) -> pd.Series:
    """``key#k`` for the k-th row with that key, so repeated identical findings match one to one."""
    return keys + "#" + keys.groupby(keys).cumcount().astype(str)


def boxes_from_release_table(
    findings: pd.DataFrame,
    release: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    legacy: bool = False,
    missing: str = "exclude",
) -> pd.DataFrame:
    """The finding rows + ``resized_*`` taken from upstream's row table instead of from crop boxes.

    For the authors' PNG release (no crop box in the manifest). ``release`` (:func:`read_release_box_table`)
    must describe exactly the rows of ``findings``: every row matched one to one by image id (``.png``
    suffix ignored), categories and original box (clipped to the image like ``findings`` when it was),
    and the same number of rows per split; otherwise :class:`AnnotationError` names the first unmatched
    rows of each file. Each release PNG must be :data:`RELEASE_PNG_SIZE` (the frame of the boxes).

    Default: finding rows take the table's boxes clipped to the PNG (a box left empty is kept with NaN and
    logged), normal rows NaN; a finding row without a resized box is an error. ``legacy=True`` takes
    every ``resized_*`` value as written (upstream's unclipped boxes and its made-up box on a normal row
    included). Boxes whose ``ymax`` upstream truncated (its border clamp compared y with the image width,
    so ``ymax - 5 > width - 10``) are counted in a warning: the release does not let us recover them.
    Images absent from / failed in ``manifest`` are excluded (logged), as in :func:`map_boxes_to_png`.
    """
    require_columns(findings, [*FINDING_COLUMNS])
    require_columns(release, RELEASE_TABLE_COLUMNS, what="upstream's VinDr box table")
    source, theirs = source_of(findings), source_of(release, "box table")
    attrs = dict(release.attrs)
    release = _as_text(release)
    release.attrs = attrs

    ours_n = findings["split"].value_counts().to_dict()
    theirs_n = release["split"].str.strip().value_counts().to_dict()
    if ours_n != theirs_n:
        raise AnnotationError(
            f"{theirs}: rows per split {dict(sorted(theirs_n.items()))} differ from {source} "
            f"{dict(sorted(ours_n.items()))}: not the box table of these annotations"
        )
    categories = parse_list_column(release, "finding_categories", allowed=LABELS)
    boxes = {}
    for column in (*BOX_COLUMNS, *RESIZED_COLUMNS):
        text = release[column].str.strip()
        value = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(dtype=float)
        raise_at(release, (text != "").to_numpy() & np.isnan(value), column, "expected a number or empty")
        boxes[column] = value
    if findings.attrs.get("boxes_clipped", False):
        width = pd.to_numeric(release["width"], errors="coerce").to_numpy(dtype=float)
        height = pd.to_numeric(release["height"], errors="coerce").to_numpy(dtype=float)
        boxes.update(_clipped(boxes, width=width, height=height))
    ours_key = _occurrence_keys(
        _box_key(
            findings,
            list(findings["finding_categories"]),
            {c: findings[c].to_numpy(float) for c in BOX_COLUMNS},
        )
    )
    theirs_key = _occurrence_keys(_box_key(release, categories, boxes))
    position = pd.Series(np.arange(len(release)), index=theirs_key.to_numpy())
    unmatched_ours = ~isin(ours_key, set(theirs_key))
    unmatched_theirs = ~isin(theirs_key, set(ours_key))
    if unmatched_ours.any() or unmatched_theirs.any():
        parts = []
        if unmatched_ours.any():
            parts.append(
                f"{location(findings, findings.index[unmatched_ours])}: {int(unmatched_ours.sum())} finding "
                f"row(s) without a row of the same image, categories and box in {theirs} (first: "
                f"{ours_key[unmatched_ours].iloc[0].rsplit('#', 1)[0]})"
            )
        if unmatched_theirs.any():
            parts.append(
                f"{location(release, release.index[unmatched_theirs])}: {int(unmatched_theirs.sum())} row(s) "
                f"not in {source} (first: {theirs_key[unmatched_theirs].iloc[0].rsplit('#', 1)[0]})"
            )
        raise AnnotationError("upstream's box table does not match the annotations:\n  " + "\n  ".join(parts))
    matched = position.loc[ours_key.to_numpy()].to_numpy()
    resized = [boxes[c][matched] for c in RESIZED_COLUMNS]

    joined = add_manifest_columns(
        findings.assign(**dict(zip(RESIZED_COLUMNS, resized, strict=True))),
        manifest, columns=("png_width", "png_height"), missing=missing, what="finding rows",
    )  # fmt: skip
    pw, ph = _float(joined["png_width"]), _float(joined["png_height"])
    wrong = (pw != RELEASE_PNG_SIZE[0]) | (ph != RELEASE_PNG_SIZE[1])
    if wrong.any():
        size = f"{int(pw[wrong][0])} x {int(ph[wrong][0])}"
        frame = f"{RELEASE_PNG_SIZE[0]} x {RELEASE_PNG_SIZE[1]}"
        raise_at(
            joined, wrong, "image_id",
            f"the PNG is {size} (width x height) in the manifest, but upstream's boxes are in the {frame} "
            "frame of the authors' PNG release",
        )  # fmt: skip
    has_box = joined["xmin"].notna().to_numpy()
    raw = [joined[c].to_numpy(dtype=float) for c in RESIZED_COLUMNS]
    lacking = has_box & np.isnan(raw).any(axis=0)
    raise_at(joined, lacking, "image_id", f"finding row without a resized box in {theirs}")
    truncated = has_box & (
        joined["ymax"].to_numpy(dtype=float) - _BORDER > joined["width"].to_numpy(dtype=float) - 2 * _BORDER
    )
    if truncated.any():
        log.warning(
            "%s: %d box(es) have the ymax that upstream truncated (border clamp against the image width); "
            "their resized_ymax is too small and cannot be recovered from the PNG release (e.g. %s)",
            theirs,
            int(truncated.sum()),
            _examples(joined, truncated),
        )
    out = joined[list(findings.columns)].copy()
    if legacy:
        for column, value in zip(RESIZED_COLUMNS, raw, strict=True):
            out[column] = value
    else:
        mapped, empty = _clip_to_png(joined, raw, has_box, pw, ph, what="PNG")
        for column, value in zip(RESIZED_COLUMNS, mapped, strict=True):
            out[column] = np.where(has_box & ~empty, value, np.nan)
    log.info("%s: %d finding rows matched; resized boxes taken from it", theirs, len(release))
    out.attrs = {**findings.attrs, "box_source": theirs, "truncated_ymax": int(truncated.sum())}
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
    """Upstream's ``vindr_detection_v1_folds.csv`` + ``png_path``, ``val_fold``.

    One row per finding row of ``findings_mapped`` (output of :func:`map_boxes_to_png`) in its order,
    restricted to images that are ok in ``manifest``; columns :data:`ROW_TABLE_COLUMNS`, fresh RangeIndex.
    """
    require_columns(breast, BREAST_COLUMNS)
    _require_mapped(findings_mapped)
    rows = add_manifest_columns(
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
    images = add_manifest_columns(breast, manifest, columns=("png_path",), missing=missing, what="images")

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
    """The 4-slot ``[pos_right, pos_left, neg_right, neg_left]`` of one view (upstream's notebook, fixed).

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
    """Upstream's ``clip_vindr_final.csv`` + ``val_fold``: one row per breast.

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
