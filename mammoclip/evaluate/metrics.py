"""Classification metrics with bootstrap confidence intervals (docs/upstream.md#evaluation).

The metrics themselves come from scikit-learn, as upstream used them: AUROC is ``roc_auc_score``, accuracy is
``accuracy_score`` and macro F1 is ``f1_score(average="macro", labels=range(n_classes), zero_division=0)``
(every class counts, including one absent from both labels and predictions, whose F1 is then 0). Upstream
reported point estimates only; here every metric comes with a percentile interval.

Bootstrap (:func:`bootstrap_weights`). ``numpy.random.default_rng(seed)`` draws ``n_boot`` resamples of
size equal to the number of *units*, with replacement. A unit is a row, or with ``groups=`` (e.g. the
patient id of every row) a group: a drawn group brings all its rows, so patients are resampled whole and
the interval reflects that images of one patient are not independent. A resample is applied as integer
per-row multiplicities passed to scikit-learn's ``sample_weight``, which gives the same value as
materialising the repeated rows (AUROC, accuracy and F1 only depend on weighted counts). The interval is the
``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles (``numpy.quantile``, linear interpolation) of the resampled
values. For AUROC a resample with only one class has no value: it is skipped, counted in
``n_boot_skipped`` and mentioned in ``note``; the remaining resamples give the interval (NaN when none is
left). The draws are consumed identically whether or not a resample is skipped, so results are
deterministic for a seed, and ``groups`` that are all distinct reproduce the row-level bootstrap exactly.

Invalid input (different lengths, labels outside ``{0, 1}`` / ``0..n_classes-1``, non-finite scores,
missing group ids, ``ci`` outside ``(0, 1)``, negative ``n_boot``) raises ``ValueError``. A metric that is
undefined for valid input (one class only, no rows) is NaN with an explanatory ``note``; ``note`` is ``""``
otherwise, so the dicts make uniform table rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

__all__ = [
    "aggregate_by",
    "binary_metrics",
    "bootstrap_weights",
    "multiclass_metrics",
    "summarise_runs",
]

log = logging.getLogger(__name__)

NAN = float("nan")


def _as_1d(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _as_labels(name: str, values, n_classes: int) -> np.ndarray:
    arr = _as_1d(name, values)
    if arr.size == 0:
        return arr.astype(np.int64)
    is_bool = arr.dtype == bool
    if (is_bool and n_classes != 2) or not (is_bool or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be integer class labels, got dtype {arr.dtype}")
    as_float = arr.astype(np.float64)
    bad = ~np.isfinite(as_float) | (as_float != np.round(as_float)) | (as_float < 0) | (as_float >= n_classes)
    if bad.any():
        examples = arr[bad][:5].tolist()
        raise ValueError(
            f"{name} must hold labels in 0..{n_classes - 1}; {int(bad.sum())} do not, e.g. {examples}"
        )
    return as_float.astype(np.int64)


def _check_bootstrap_args(n_boot: int, ci: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")


def _group_codes(groups, n_rows: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n_rows), n_rows
    arr = _as_1d("groups", groups)
    if len(arr) != n_rows:
        raise ValueError(f"groups has {len(arr)} entries for {n_rows} rows")
    if pd.isna(arr).any():
        raise ValueError("groups must not contain missing ids")
    codes, uniques = pd.factorize(arr, sort=True)
    return codes, len(uniques)


def bootstrap_weights(
    n_rows: int, *, n_boot: int, seed: int, groups: Sequence | np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Yield ``n_boot`` resamples as per-row integer multiplicities (``int64`` arrays of length ``n_rows``).

    Without ``groups`` each resample draws ``n_rows`` rows with replacement; with ``groups`` (one id per row)
    it draws as many groups as there are distinct ids, and every row of a drawn group gets the group's
    multiplicity (groups stay whole). Group ids are ordered with ``pandas.factorize(sort=True)``, so the
    draws do not depend on row order within the ids' sorted order.
    """
    codes, n_units = _group_codes(groups, n_rows)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        drawn = rng.integers(0, n_units, size=n_units)
        yield np.bincount(drawn, minlength=n_units)[codes]


def _interval(values: list[float], ci: float) -> tuple[float, float]:
    if not values:
        return NAN, NAN
    low, high = np.quantile(np.asarray(values, dtype=np.float64), [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(low), float(high)


def binary_metrics(
    y_true: Sequence | np.ndarray,
    y_score: Sequence | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    groups: Sequence | np.ndarray | None = None,
) -> dict:
    """AUROC of scores against 0/1 labels with a percentile bootstrap interval.

    Returns ``auroc``, ``auroc_low``, ``auroc_high``, ``n`` (rows), ``n_pos``, ``n_boot``,
    ``n_boot_skipped`` (one-class resamples), ``ci`` and ``note``. Labels may be bool or 0/1 numbers. With
    a single class (or no rows) every AUROC value is NaN and ``note`` says why; no exception is raised.
    ``groups`` resamples whole groups (see the module docstring).
    """
    _check_bootstrap_args(n_boot, ci)
    y = _as_labels("y_true", y_true, 2)
    score = _as_1d("y_score", y_score)
    if len(score) != len(y):
        raise ValueError(f"y_true has {len(y)} entries but y_score has {len(score)}")
    try:
        score = score.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"y_score must be numeric: {err}") from None
    if not np.isfinite(score).all():
        raise ValueError(f"y_score has {int((~np.isfinite(score)).sum())} non-finite values")
    n, n_pos = len(y), int(y.sum())
    out = {
        "auroc": NAN,
        "auroc_low": NAN,
        "auroc_high": NAN,
        "n": n,
        "n_pos": n_pos,
        "n_boot": int(n_boot),
        "n_boot_skipped": 0,
        "ci": ci,
        "note": "",
    }
    _group_codes(groups, n)  # validate groups even when AUROC is undefined
    if n_pos in (0, n):
        out["note"] = f"AUROC undefined: y_true has only one class ({n_pos} positive of {n} rows)"
        return out
    out["auroc"] = float(roc_auc_score(y, score))
    positive = y == 1
    values: list[float] = []
    skipped = 0
    for weight in bootstrap_weights(n, n_boot=n_boot, seed=seed, groups=groups):
        if not weight[positive].any() or not weight[~positive].any():
            skipped += 1
            continue
        keep = weight > 0
        values.append(float(roc_auc_score(y[keep], score[keep], sample_weight=weight[keep])))
    out["auroc_low"], out["auroc_high"] = _interval(values, ci)
    out["n_boot_skipped"] = skipped
    if skipped:
        note = f"{skipped} of {n_boot} bootstrap resamples had one class and were skipped"
        out["note"] = note + ("" if values else "; no interval")
    return out


def multiclass_metrics(
    y_true: Sequence | np.ndarray,
    y_pred: Sequence | np.ndarray,
    *,
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    groups: Sequence | np.ndarray | None = None,
    majority_class: int | None = None,
) -> dict:
    """Accuracy and macro F1 of predicted classes (e.g. VinDr density 0-3) with bootstrap intervals.

    Returns ``accuracy``, ``accuracy_low``, ``accuracy_high``, ``macro_f1``, ``macro_f1_low``,
    ``macro_f1_high`` (both resampled together), ``n``, ``n_classes``, ``n_boot``, ``ci``, ``note`` and the
    majority baseline: ``majority_accuracy`` = accuracy of always predicting ``majority_class``.

    ``majority_class`` is the constant prediction. Passed in (e.g. the most frequent class of the
    *training* labels, the honest baseline), it is used as is and ``majority_source`` is ``"given"``. Left
    ``None``, it is the most frequent class of the evaluated ``y_true`` (smallest label on ties) and
    ``majority_source`` is ``"evaluated labels"``: an optimistic baseline that peeks at the test labels, as
    in the upstream-facing statement "always predicting the majority class gives ~0.77 on the VinDr test".
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    _check_bootstrap_args(n_boot, ci)
    y = _as_labels("y_true", y_true, n_classes)
    pred = _as_labels("y_pred", y_pred, n_classes)
    if len(pred) != len(y):
        raise ValueError(f"y_true has {len(y)} entries but y_pred has {len(pred)}")
    n = len(y)
    _group_codes(groups, n)
    if majority_class is None:
        majority = int(np.argmax(np.bincount(y, minlength=n_classes))) if n else None
        source = "evaluated labels"
    else:
        majority = int(_as_labels("majority_class", [majority_class], n_classes)[0])
        source = "given"
    out = {
        "accuracy": NAN,
        "accuracy_low": NAN,
        "accuracy_high": NAN,
        "macro_f1": NAN,
        "macro_f1_low": NAN,
        "macro_f1_high": NAN,
        "majority_class": majority,
        "majority_source": source,
        "majority_accuracy": NAN,
        "n": n,
        "n_classes": int(n_classes),
        "n_boot": int(n_boot),
        "ci": ci,
        "note": "",
    }
    if n == 0:
        out["note"] = "no rows to evaluate"
        return out
    labels = list(range(n_classes))

    def macro_f1(weight=None) -> float:
        return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0, sample_weight=weight))

    out["accuracy"] = float(accuracy_score(y, pred))
    out["macro_f1"] = macro_f1()
    out["majority_accuracy"] = float(np.mean(y == majority))
    accuracies, f1s = [], []
    for weight in bootstrap_weights(n, n_boot=n_boot, seed=seed, groups=groups):
        accuracies.append(float(accuracy_score(y, pred, sample_weight=weight)))
        f1s.append(macro_f1(weight))
    out["accuracy_low"], out["accuracy_high"] = _interval(accuracies, ci)
    out["macro_f1_low"], out["macro_f1_high"] = _interval(f1s, ci)
    return out


def aggregate_by(
    frame: pd.DataFrame, keys: str | Sequence[str], score_column: str, label_column: str
) -> pd.DataFrame:
    """One row per group of ``keys``: mean score, maximum label and the number of rows (``n_rows``).

    RSNA is evaluated per breast, ``keys=["patient_id", "laterality"]``, with the mean image probability
    as the breast score (as upstream). The label is the *maximum* over the group's rows, i.e. a
    group is positive when any of its rows is (RSNA's ``cancer`` is constant per breast, so this only
    matters elsewhere, e.g. VinDr finding rows grouped by ``image_id`` give the image's union label). Groups
    whose rows disagree on the label are counted in a log warning. Output columns: ``keys``,
    ``score_column``, ``label_column``, ``n_rows``, sorted by the keys. Missing columns, missing key values
    or missing scores/labels raise ``ValueError``.
    """
    key_list = [keys] if isinstance(keys, str) else list(keys)
    if not key_list:
        raise ValueError("keys must name at least one column")
    needed = [*key_list, score_column, label_column]
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        raise ValueError(f"aggregate_by: missing columns {missing}")
    if score_column == label_column or score_column in key_list or label_column in key_list:
        raise ValueError("aggregate_by: keys, score_column and label_column must be distinct columns")
    for column in needed:
        n_missing = int(frame[column].isna().sum())
        if n_missing:
            raise ValueError(f"aggregate_by: column {column!r} has {n_missing} missing values")
    grouped = frame.groupby(key_list, sort=True)
    out = grouped.agg(
        **{
            score_column: (score_column, "mean"),
            label_column: (label_column, "max"),
            "_label_min": (label_column, "min"),
            "n_rows": (score_column, "size"),
        }
    ).reset_index()
    disagree = int((out["_label_min"] != out[label_column]).sum())
    if disagree:
        log.warning(
            "aggregate_by: %d of %d groups of %s have rows with different %r labels; the maximum is used",
            disagree,
            len(out),
            key_list,
            label_column,
        )
    return out.drop(columns="_label_min")


def summarise_runs(values: Iterable[float] | Mapping[object, float]) -> dict:
    """Mean and spread of one metric over folds or seeds: ``{"mean", "std", "n", "n_nan"}``.

    ``std`` is the sample standard deviation (``ddof=1``), NaN with fewer than two values. NaN values (e.g.
    an AUROC undefined on a single-class fold) are left out of ``mean``/``std``/``n`` and counted in
    ``n_nan``; infinite values raise ``ValueError``. A mapping (e.g. ``{fold: auroc}``) is summarised over
    its values.
    """
    if isinstance(values, Mapping):
        values = values.values()
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"summarise_runs needs a flat sequence of numbers, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError("summarise_runs: infinite values")
    nan = np.isnan(arr)
    finite = arr[~nan]
    n = len(finite)
    return {
        "mean": float(finite.mean()) if n else NAN,
        "std": float(finite.std(ddof=1)) if n > 1 else NAN,
        "n": n,
        "n_nan": int(nan.sum()),
    }
