"""Evaluation protocols of the classifiers and detectors: ``paper`` (upstream, as is) and ``clean``.

Each protocol turns an annotation table into three explicit parts, ``train`` (fit), ``select`` (choose the
best epoch) and ``report`` (the numbers that are published), as DataFrames that keep the input's index and
columns. Functions take DataFrames and plain arguments only (no config or file reading); the caller records
which protocol produced each result table.

``paper`` — reproduces upstream's splits (docs/upstream.md#classifiers), **defects included, on purpose**:

* VinDr on the *row* table (``vindr_detection_v1_folds.csv``, one row per finding row, so images with
  several findings count several times): ``train`` = ``split == "training"``; ``select`` and ``report``
  are both ``split == "test"``. Upstream picks the best epoch on the official test split and reports the
  same split (model selection on the reported set), which makes its numbers
  optimistic. ``val_fold`` is ignored.
* RSNA on ``train_folds.csv``: ``train`` = folds 1 and 2 (hard-coded upstream), ``select`` = ``report`` =
  fold 0 (``cur_fold`` 0, ``--n_folds 1`` in every shipped script); fold 3 is never used. Only ``fold=0``
  is accepted: with another ``cur_fold`` upstream would train on the fold it evaluates.
* Data fraction: ``train.sample(frac=fraction, random_state=1)`` — row level (a patient's images can be
  split between kept and dropped), seed fixed at 1 whatever the run's seed; ``fraction == 1`` keeps the
  table unchanged (upstream samples only when ``data_frac < 1``).

``clean`` — the same data without selecting on what is reported:

* VinDr on the *image* table (one row per image, labels = union over the image's findings; a table with a
  duplicated ``image_id`` is refused): ``select`` = training images with ``val_fold == k`` (patient-level
  validation folds of the training split, see :mod:`mammoclip.annotations.vindr`), ``train`` = the other
  training images, ``report`` = ``split == "test"``, evaluated once with the selected checkpoint.
* RSNA, for every fold ``k`` of the ``K`` folds (0-3 for ``train_folds.csv``): ``report`` = fold ``k``,
  ``select`` = fold ``(k + 1) % K``, ``train`` = the remaining ``K - 2`` folds. Over ``k = 0..K-1`` every
  image is reported exactly once (out-of-fold predictions for the whole table) and every fold is trained on.
  Selection uses a whole fold (about 13 600 images, ~290 positives on RSNA), so the selected epoch is stable.
* Data fraction, seeded by patient: ``round(fraction * n)`` patients (at least one) are drawn without
  replacement with ``numpy.random.default_rng(seed)`` from the sorted patient ids and all their rows kept
  (input row order). With ``label_column`` (0/1), patients are split into positive (any positive row) and
  negative and each non-empty stratum is sampled separately, keeping at least one patient of each, so the
  sample always includes a positive patient when the table has one and keeps about the original prevalence.
* Parts are checked to be patient-disjoint (``patient_id``); a patient in two parts raises ``ValueError``.

Detection (:func:`split_detection`, docs/upstream.md#detection) on VinDr's *image* table, with a 0/1
column named after the label that says whether the image has at least one (usable) box of it:

* ``paper``: ``train`` = training images with a box, ``select`` = ``report`` = test images with a box
  (upstream's detector datasets hold positive images only, and it picks the best epoch on the test split).
* ``clean``: ``train`` = training images outside validation fold ``val_fold``, all positives plus a seeded
  ``negative_fraction`` of the negatives (``round(fraction * n)`` images drawn with
  ``default_rng(seed)``); ``select`` = every image of the validation fold; ``report`` = every test image.
  Parts are checked to be patient-disjoint.

Invalid input (unknown protocol, missing columns, split values other than ``training``/``test``, folds not
``0..K-1``, a fold or split with no rows) raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = [
    "PAPER_SAMPLE_RANDOM_STATE",
    "PROTOCOLS",
    "RSNA_PAPER_REPORT_FOLD",
    "RSNA_PAPER_TRAIN_FOLDS",
    "check_protocol",
    "rsna_fold_roles",
    "rsna_folds_to_run",
    "sample_fraction",
    "split_detection",
    "split_rsna",
    "split_vindr",
]

PROTOCOLS = ("paper", "clean")
RSNA_PAPER_TRAIN_FOLDS = (1, 2)
RSNA_PAPER_REPORT_FOLD = 0
PAPER_SAMPLE_RANDOM_STATE = 1
PARTS = ("train", "select", "report")
VINDR_SPLITS = ("training", "test")


def check_protocol(protocol: str) -> str:
    """Return ``protocol`` if it is one of :data:`PROTOCOLS`, else raise ``ValueError``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    return protocol


def _require(table: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")


def _nonempty(parts: dict[str, pd.DataFrame], what: str) -> dict[str, pd.DataFrame]:
    empty = [name for name in PARTS if parts[name].empty]
    if empty:
        raise ValueError(f"{what}: no rows in {empty}")
    return parts


def _check_patient_disjoint(parts: dict[str, pd.DataFrame], patient_column: str, what: str) -> None:
    patients = {name: set(parts[name][patient_column]) for name in PARTS}
    for i, first in enumerate(PARTS):
        for second in PARTS[i + 1 :]:
            shared = patients[first] & patients[second]
            if shared:
                examples = sorted(map(str, shared))[:5]
                raise ValueError(
                    f"{what}: {len(shared)} patients in both {first!r} and {second!r}, e.g. {examples}"
                )


def _integer_column(table: pd.DataFrame, column: str, what: str) -> pd.Series:
    values = table[column]
    if values.isna().any():
        raise ValueError(f"{what}: column {column!r} has {int(values.isna().sum())} missing values")
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().any() or (numeric != np.round(numeric)).any():
        raise ValueError(f"{what}: column {column!r} must hold integers")
    return numeric.astype(np.int64)


def split_vindr(table: pd.DataFrame, *, protocol: str, val_fold: int = 0) -> dict[str, pd.DataFrame]:
    """``{"train", "select", "report"}`` for VinDr (row table for ``paper``, image table for ``clean``).

    ``paper``: training rows / test rows / the same test rows again (upstream's defect, reproduced on
    purpose; ``select`` is a copy of ``report``). ``clean``: training images outside validation fold
    ``val_fold`` / training images in it / test images, patient-disjoint.
    """
    check_protocol(protocol)
    what = f"split_vindr({protocol})"
    _require(table, ["split"], what)
    unknown = sorted(set(table["split"].astype(str)) - set(VINDR_SPLITS))
    if unknown or table["split"].isna().any():
        raise ValueError(f"{what}: split values must be {VINDR_SPLITS}, found {unknown or 'missing values'}")
    is_train = table["split"].eq("training")
    is_test = table["split"].eq("test")
    if protocol == "paper":
        report = table[is_test].copy()
        return _nonempty({"train": table[is_train].copy(), "select": report.copy(), "report": report}, what)

    _require(table, ["patient_id", "val_fold"], what)
    if "image_id" in table.columns and table["image_id"].duplicated().any():
        n_dup = int(table["image_id"].duplicated().sum())
        raise ValueError(
            f"{what}: {n_dup} duplicated image_id rows; the clean protocol runs on the image table "
            "(one row per image), not the finding-row table"
        )
    folds = _integer_column(table, "val_fold", what)
    train_folds = sorted(set(folds[is_train]))
    if any(f < 0 for f in train_folds):
        raise ValueError(f"{what}: training rows need a validation fold >= 0, found {train_folds}")
    if val_fold not in train_folds:
        raise ValueError(f"{what}: val_fold {val_fold!r} is not one of the training folds {train_folds}")
    in_val = is_train & folds.eq(val_fold)
    parts = {
        "train": table[is_train & ~in_val].copy(),
        "select": table[in_val].copy(),
        "report": table[is_test].copy(),
    }
    _nonempty(parts, what)
    _check_patient_disjoint(parts, "patient_id", what)
    return parts


def split_detection(
    images: pd.DataFrame,
    *,
    label: str,
    protocol: str,
    val_fold: int = 0,
    seed: int = 0,
    negative_fraction: float = 1.0,
) -> dict[str, pd.DataFrame]:
    """``{"train", "select", "report"}`` of a detector run on VinDr's image table (one row per image).

    ``images[label]`` is 1 for an image with at least one box of the label, else 0. ``paper``: positive
    training images / positive test images / the same again (``val_fold``, ``seed`` and
    ``negative_fraction`` unused). ``clean``: training images outside ``val_fold`` (positives + a seeded
    ``negative_fraction`` of the negatives) / all images of the fold / all test images, patient-disjoint.
    Rows keep the input's order and columns.
    """
    check_protocol(protocol)
    what = f"split_detection({protocol}, {label})"
    _require(images, ["split", "patient_id", label], what)
    if "image_id" in images.columns and images["image_id"].duplicated().any():
        n_dup = int(images["image_id"].duplicated().sum())
        raise ValueError(f"{what}: {n_dup} duplicated image_id rows; detection runs on the image table")
    values = images[label]
    if values.isna().any() or not values.isin([0, 1]).all():
        raise ValueError(f"{what}: column {label!r} must hold 0/1 (image has a box of the label)")
    if not 0.0 <= negative_fraction <= 1.0:
        raise ValueError(f"{what}: negative_fraction must be in [0, 1], got {negative_fraction!r}")
    if protocol == "paper":
        positive = images[values.astype(bool)]
        parts = split_vindr(positive, protocol="paper")
        return {name: parts[name] for name in PARTS}
    parts = split_vindr(images, protocol="clean", val_fold=val_fold)
    train = parts["train"]
    negative = train[train[label].eq(0)]
    if negative_fraction < 1.0 and len(negative):
        k = min(len(negative), _round_half_up(negative_fraction * len(negative)))
        picked = np.random.default_rng(seed).choice(len(negative), size=k, replace=False)
        dropped = negative.index.difference(negative.index[np.sort(picked)])
        train = train.drop(index=dropped)
    parts = {**parts, "train": train}
    _nonempty(parts, what)
    if not train[label].eq(1).any():
        raise ValueError(f"{what}: no training image with a box of the label")
    return parts


def rsna_folds_to_run(protocol: str, n_folds: int = 4) -> list[int]:
    """Folds ``k`` to pass to :func:`split_rsna`: ``[0]`` (paper), ``[0, ..., n_folds - 1]`` (clean)."""
    check_protocol(protocol)
    return [RSNA_PAPER_REPORT_FOLD] if protocol == "paper" else list(range(n_folds))


def rsna_fold_roles(protocol: str, fold: int = 0, n_folds: int = 4) -> dict[str, tuple[int, ...]]:
    """Fold numbers of each part, e.g. paper: ``{"train": (1, 2), "select": (0,), "report": (0,)}``.

    ``clean`` with fold ``k``: ``report`` ``(k,)``, ``select`` ``((k + 1) % n_folds,)``, ``train`` the rest
    (``n_folds >= 3``). Folds outside both (paper: fold 3) are unused.
    """
    check_protocol(protocol)
    if protocol == "paper":
        if fold != RSNA_PAPER_REPORT_FOLD:
            raise ValueError(
                f"the paper protocol runs RSNA fold {RSNA_PAPER_REPORT_FOLD} only (upstream --n_folds 1); "
                f"fold {fold!r} would train on folds {RSNA_PAPER_TRAIN_FOLDS} and evaluate on one of them "
                "or fold 3: use the clean protocol for other folds"
            )
        report = (RSNA_PAPER_REPORT_FOLD,)
        return {"train": RSNA_PAPER_TRAIN_FOLDS, "select": report, "report": report}
    if n_folds < 3:
        raise ValueError(f"the clean protocol needs at least 3 folds, got {n_folds}")
    if fold not in range(n_folds):
        raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold!r}")
    select = (fold + 1) % n_folds
    train = tuple(f for f in range(n_folds) if f not in (fold, select))
    return {"train": train, "select": (select,), "report": (fold,)}


def split_rsna(table: pd.DataFrame, *, protocol: str, fold: int = 0) -> dict[str, pd.DataFrame]:
    """``{"train", "select", "report"}`` for RSNA ``train_folds.csv`` (``fold``), per :func:`rsna_fold_roles`.

    The table's folds must be ``0..K-1``, all non-empty (``K`` = 4 for ``train_folds.csv``). ``paper``
    needs folds 0-2 present and accepts ``fold=0`` only; ``select`` is a copy of ``report``. ``clean``
    checks that the parts are patient-disjoint.
    """
    check_protocol(protocol)
    what = f"split_rsna({protocol}, fold={fold})"
    _require(table, ["fold"] + (["patient_id"] if protocol == "clean" else []), what)
    folds = _integer_column(table, "fold", what)
    present = sorted(set(folds))
    if present != list(range(len(present))):
        raise ValueError(f"{what}: folds must be 0..K-1 with none empty, found {present}")
    roles = rsna_fold_roles(protocol, fold, n_folds=len(present))
    parts = {name: table[folds.isin(roles[name])].copy() for name in PARTS}
    _nonempty(parts, what)
    if protocol == "clean":
        _check_patient_disjoint(parts, "patient_id", what)
    return parts


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def sample_fraction(
    train: pd.DataFrame,
    *,
    fraction: float,
    protocol: str,
    seed: int,
    patient_column: str = "patient_id",
    label_column: str | None = None,
) -> pd.DataFrame:
    """The training subset for a data fraction in ``(0, 1]`` (see the module docstring for each protocol).

    ``paper``: ``train.sample(frac=fraction, random_state=1)`` (``seed``, ``patient_column`` and
    ``label_column`` unused). ``clean``: whole patients drawn with ``default_rng(seed)``, stratified on
    patient positivity when ``label_column`` (0/1) is given, in the input's row order. ``fraction == 1``
    returns a copy of ``train`` under both protocols.
    """
    check_protocol(protocol)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if fraction == 1:
        return train.copy()
    if protocol == "paper":
        return train.sample(frac=fraction, random_state=PAPER_SAMPLE_RANDOM_STATE)

    what = f"sample_fraction(clean, {fraction})"
    _require(train, [patient_column] + ([label_column] if label_column else []), what)
    patients = train[patient_column]
    if patients.isna().any():
        raise ValueError(f"{what}: column {patient_column!r} has missing values")
    if label_column:
        labels = train[label_column]
        if labels.isna().any() or not labels.isin([0, 1]).all():
            raise ValueError(f"{what}: column {label_column!r} must hold 0/1 labels")
        positive = labels.astype(bool).groupby(patients).any()
        flags = positive.to_numpy()
        strata = [sorted(positive.index[flags]), sorted(positive.index[~flags])]
    else:
        strata = [sorted(pd.unique(patients))]
    rng = np.random.default_rng(seed)
    chosen: list = []
    for stratum in strata:
        if not stratum:
            continue
        k = min(len(stratum), max(1, _round_half_up(fraction * len(stratum))))
        picked = rng.choice(len(stratum), size=k, replace=False)
        chosen.extend(stratum[i] for i in sorted(picked))
    return train[patients.isin(chosen)].copy()
