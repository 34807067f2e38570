"""RSNA Screening Mammography: ``train.csv`` -> ``train_folds.csv`` -> the per-image table with PNG paths.

Upstream (docs/upstream.md#rsna) ships ``train_folds.csv``: ``train.csv``'s 14 columns
plus ``fold`` 0-3, patient-disjoint, positives balanced; its generator is not in the repository. Here:

* :func:`read_rsna_train` reads ``train.csv`` with ``patient_id``/``image_id`` as strings (other columns
  with pandas' inference, so writing the table back reproduces Kaggle's spelling, e.g. ``age`` ``61.0``),
  and validates: the 14 columns :data:`TRAIN_COLUMNS` (extra ones, e.g. a ``fold``, are logged and
  dropped), non-empty ids, unique ``image_id``, ``laterality`` L/R, non-empty ``view``, ``cancer`` 0/1.
  Errors are :class:`~mammoclip.annotations.tables.AnnotationError` naming file, row and column.
* :func:`make_rsna_folds` regenerates folds: ``StratifiedGroupKFold(n_folds, shuffle=True,
  random_state=seed)`` with the image-level ``cancer`` label as stratum and ``patient_id`` as group, so
  folds are patient-disjoint and positives spread over the folds. Output: ``train.csv``'s columns + ``fold``
  in ``train.csv`` row order (:data:`FOLDS_COLUMNS`). Deterministic for a given input order, seed and
  scikit-learn version.
* :func:`validate_fold_file` checks a user-supplied fold file (e.g. the paper's ``train_folds.csv``):
  every train image exactly once (missing / extra / duplicated ids are named), integer folds ``0..k-1`` with
  none empty, patient-disjoint folds (straddling patients are named, with their folds), and agreement with
  ``train.csv`` on ``patient_id`` and ``cancer`` where the fold file has them. It is then used as is: the
  fold file's row order and fold values, with ``train.csv``'s 14 columns.
* :func:`join_rsna_manifest` keeps the images that converted successfully and adds ``png_path``; images
  absent from / failed in the PNG manifest are dropped and counted in a warning (never silently).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mammoclip.annotations.tables import (
    MAX_EXAMPLES,
    AnnotationError,
    add_manifest_columns,
    isin,
    raise_at,
    read_csv_strict,
    require_columns,
    source_of,
)

__all__ = [
    "FOLDS_COLUMNS",
    "IMAGE_TABLE_COLUMNS",
    "TRAIN_COLUMNS",
    "join_rsna_manifest",
    "make_rsna_folds",
    "read_rsna_folds",
    "read_rsna_train",
    "validate_fold_file",
    "validate_rsna_train",
]

log = logging.getLogger(__name__)

TRAIN_COLUMNS = (
    "site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "invasive",
    "BIRADS", "implant", "density", "machine_id", "difficult_negative_case",
)  # fmt: skip
FOLDS_COLUMNS = (*TRAIN_COLUMNS, "fold")
IMAGE_TABLE_COLUMNS = (*FOLDS_COLUMNS, "png_path")
_ID_DTYPES = {"patient_id": str, "image_id": str}


def _ids_as_text(frame: pd.DataFrame, columns: tuple[str, ...] = ("patient_id", "image_id")) -> None:
    for column in columns:
        if column in frame.columns:
            values = frame[column]
            frame[column] = values.astype(object).where(values.notna(), "").astype(str).str.strip()


def read_rsna_train(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate RSNA's ``train.csv`` (see the module docstring)."""
    train = read_csv_strict(path, TRAIN_COLUMNS, what="RSNA train.csv", dtype=_ID_DTYPES)
    return validate_rsna_train(train)


def validate_rsna_train(train: pd.DataFrame) -> pd.DataFrame:
    """Validate an in-memory ``train.csv`` frame; returns a copy with string ids and int ``cancer``."""
    require_columns(train, TRAIN_COLUMNS, what="RSNA train.csv")
    attrs = dict(train.attrs)
    train = train[list(TRAIN_COLUMNS)].copy()
    train.attrs = attrs
    _ids_as_text(train)
    for column in ("patient_id", "image_id"):
        raise_at(train, (train[column] == "").to_numpy(), column, "empty identifier", show=False)
    raise_at(train, train["image_id"].duplicated(keep=False).to_numpy(), "image_id", "duplicated image id")
    raise_at(train, ~isin(train["laterality"], ("L", "R")), "laterality", "expected L or R")
    view = train["view"].astype(object).where(train["view"].notna(), "").astype(str).str.strip()
    raise_at(train, (view == "").to_numpy(), "view", "empty view", show=False)
    cancer = pd.to_numeric(train["cancer"], errors="coerce")
    raise_at(train, ~isin(cancer, (0, 1)), "cancer", "expected 0 or 1")
    train["cancer"] = cancer.astype(np.int64)
    return train


def make_rsna_folds(train: pd.DataFrame, *, n_folds: int = 4, seed: int) -> pd.DataFrame:
    """Patient-grouped folds stratified by ``cancer`` (like upstream's ``train_folds.csv``)."""
    train = validate_rsna_train(train)
    n_patients = train["patient_id"].nunique()
    if int(n_folds) < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if n_patients < n_folds:
        raise ValueError(f"{n_patients} patients cannot fill {n_folds} patient-disjoint folds")
    splitter = StratifiedGroupKFold(n_splits=int(n_folds), shuffle=True, random_state=int(seed))
    fold = np.full(len(train), -1, dtype=np.int64)
    y = train["cancer"].to_numpy()
    groups = train["patient_id"].to_numpy()
    with warnings.catch_warnings():
        # "The least populated class in y has only k members": expected for tiny data sets; reported below
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, idx) in enumerate(splitter.split(np.zeros(len(train)), y, groups)):
            fold[idx] = k
    folds = train.copy()
    folds["fold"] = fold
    cancer_patients = folds.loc[folds["cancer"] == 1].groupby("fold")["patient_id"].nunique()
    log.info(
        "RSNA folds (seed %d): images per fold %s, cancer patients per fold %s",
        seed,
        folds["fold"].value_counts().sort_index().tolist(),
        cancer_patients.reindex(range(n_folds), fill_value=0).tolist(),
    )
    return folds[list(FOLDS_COLUMNS)]


def read_rsna_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read a user-supplied fold file (needs ``image_id`` and ``fold``), ids as strings."""
    return read_csv_strict(
        path, ("image_id", "fold"), what="RSNA fold file", dtype=_ID_DTYPES, keep_extra=True
    )


def _examples(values: Iterable[Any]) -> str:
    items = list(values)
    shown = ", ".join(map(str, items[:MAX_EXAMPLES]))
    return shown + (f" and {len(items) - MAX_EXAMPLES} more" if len(items) > MAX_EXAMPLES else "")


def validate_fold_file(folds: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """Check a user fold file against ``train`` (see the module docstring) and return it as used.

    Returns :data:`FOLDS_COLUMNS`: ``train``'s columns for each fold-file row, the fold file's ``fold``,
    in the fold file's row order (fresh RangeIndex).
    """
    source = source_of(folds, "fold file")
    require_columns(folds, ("image_id", "fold"), what="RSNA fold file")
    train = validate_rsna_train(train)
    attrs = dict(folds.attrs)
    folds = folds.copy()
    folds.attrs = attrs
    _ids_as_text(folds)

    dup = folds["image_id"].duplicated(keep=False).to_numpy()
    raise_at(folds, dup, "image_id", "image listed more than once")
    train_ids = set(train["image_id"])
    fold_ids = set(folds["image_id"])
    missing = [i for i in train["image_id"] if i not in fold_ids]
    extra = [i for i in folds["image_id"] if i not in train_ids]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} train image(s) missing from it ({_examples(missing)})")
        if extra:
            parts.append(f"{len(extra)} image(s) not in {source_of(train, 'train.csv')} ({_examples(extra)})")
        raise AnnotationError(f"{source}: column 'image_id': " + "; ".join(parts))

    value = pd.to_numeric(folds["fold"], errors="coerce")
    bad = (value.isna() | (value < 0) | (value != np.floor(value))).to_numpy()
    raise_at(folds, bad, "fold", "expected a non-negative integer fold")
    fold = value.astype(np.int64)
    k = int(fold.max()) + 1
    absent = sorted(set(range(k)) - set(fold))
    if absent:
        raise AnnotationError(
            f"{source}: column 'fold': folds must be 0..k-1 with none empty; no rows in {absent}"
        )

    ref = train.set_index("image_id")
    for column in ("patient_id", "cancer"):
        if column in folds.columns:
            theirs = (
                folds[column] if column == "patient_id" else pd.to_numeric(folds[column], errors="coerce")
            )
            mismatch = (theirs != folds["image_id"].map(ref[column])).to_numpy()
            raise_at(folds, mismatch, column, f"differs from {source_of(train, 'train.csv')} for this image")
    patients = folds["image_id"].map(ref["patient_id"])
    per_patient = fold.groupby(patients.to_numpy()).unique()
    straddle = per_patient[per_patient.map(len) > 1]
    if len(straddle):
        shown = _examples(f"{p} (folds {sorted(int(f) for f in fs)})" for p, fs in straddle.items())
        raise AnnotationError(f"{source}: column 'fold': {len(straddle)} patient(s) straddle folds: {shown}")

    out = ref.loc[folds["image_id"].to_numpy()].reset_index()
    out["fold"] = fold.to_numpy()
    log.info("%s: %d images in %d patient-disjoint folds", source, len(out), k)
    return out[list(FOLDS_COLUMNS)]


def join_rsna_manifest(
    folds: pd.DataFrame, manifest: pd.DataFrame, *, missing: str = "exclude"
) -> pd.DataFrame:
    """Fold table + ``png_path`` for the images that are ok in ``manifest`` (others dropped and logged)."""
    require_columns(folds, FOLDS_COLUMNS, what="RSNA fold table")
    table = add_manifest_columns(folds, manifest, columns=("png_path",), missing=missing, what="images")
    return table[list(IMAGE_TABLE_COLUMNS)].reset_index(drop=True)
