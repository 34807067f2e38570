"""ROC curves of one binary label under one protocol, on the rows the classification table evaluates.

Curves (one per model and setting):

* ``zs``: the zero-shot scores of the protocol's primary :class:`mammoclip.evaluate.zeroshot.EvaluationSet`
  (VinDr: ``paper`` the test split's finding rows, ``clean`` its images; RSNA: ``paper`` fold 0 per image,
  ``clean`` every fold per breast), the rows of the table's zero-shot AUROC.
* ``lp``/``ft``: the classifier runs' ``predictions.csv`` at their primary level
  (:func:`mammoclip.downstream.primary_predictions`: VinDr as predicted, RSNA per breast), the rows of
  each run's AUROC in the table.

Several folds or seeds (:func:`select_runs`): the curve takes the first seed; of its runs (by fold), each
one whose reported images are not already taken is pooled. Under RSNA ``clean`` every fold reports its own
images, so the curve pools the out-of-fold predictions of all folds run (the table shows their mean ±
s.d.); under VinDr ``clean`` every validation fold reports the same test split, so the curve is the first
fold's. Points and AUROC come from :func:`sklearn.metrics.roc_curve` and
:func:`sklearn.metrics.roc_auc_score`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from mammoclip.downstream import primary_predictions
from mammoclip.evaluate.zeroshot import EvaluationSet

__all__ = [
    "ROC_CURVE_COLUMNS",
    "ROC_SCORE_COLUMNS",
    "classifier_scores",
    "roc_curves",
    "select_runs",
    "zero_shot_scores",
]

#: one row per evaluated unit of a curve (:func:`classifier_scores`, :func:`zero_shot_scores`)
ROC_SCORE_COLUMNS = ["setting", "model", "level", "runs", "patient_id", "y", "score"]
#: one row per ROC point (:func:`roc_curves`)
ROC_CURVE_COLUMNS = ["setting", "model", "level", "runs", "n", "n_pos", "auroc", "fpr", "tpr", "threshold"]
_CURVE_KEY = ["setting", "model", "level", "runs"]
_SETTING_ORDER = {"zs": 0, "lp": 1, "ft": 2}


def select_runs(
    runs: Sequence[tuple[Mapping[str, Any], pd.DataFrame]],
) -> list[tuple[Mapping[str, Any], pd.DataFrame]]:
    """The runs of one curve (module docstring): the first seed's runs by fold, each kept only when none
    of its reported images was reported by a run kept before (``image_id`` of ``predictions.csv``)."""
    if not runs:
        return []
    first_seed = min(int(key["seed"]) for key, _ in runs)
    kept: list[tuple[Mapping[str, Any], pd.DataFrame]] = []
    seen: set[str] = set()
    for key, predictions in sorted(
        (r for r in runs if int(r[0]["seed"]) == first_seed), key=lambda r: int(r[0]["fold"])
    ):
        images = set(predictions["image_id"].astype(str))
        if images & seen:
            continue
        kept.append((key, predictions))
        seen |= images
    return kept


def _runs_text(keys: Sequence[Mapping[str, Any]]) -> str:
    folds = [str(key["fold"]) for key in keys]
    pooled = f"folds {'+'.join(folds)} pooled" if len(folds) > 1 else f"fold {folds[0]}"
    return f"{pooled}, seed {keys[0]['seed']}"


def classifier_scores(
    runs: Sequence[tuple[Mapping[str, Any], pd.DataFrame]], *, dataset: str, protocol: str
) -> pd.DataFrame:
    """:data:`ROC_SCORE_COLUMNS` of the classifier curves, one per (model, setting) of ``runs``.

    ``runs``: ``(key, predictions)`` pairs, ``key`` with ``model``, ``mode`` (``lp``/``ft``), ``fold`` and
    ``seed`` (the ``classify`` rule's wildcards), ``predictions`` a run's ``predictions.csv``. Runs are
    chosen by :func:`select_runs`; each is reduced to its primary level first, then pooled.
    """
    groups: dict[tuple[str, str], list[tuple[Mapping[str, Any], pd.DataFrame]]] = {}
    for key, predictions in runs:
        groups.setdefault((str(key["model"]), str(key["mode"])), []).append((key, predictions))
    frames = []
    for (model, setting), group in groups.items():
        chosen = select_runs(group)
        parts = [primary_predictions(p, dataset=dataset, protocol=protocol) for _, p in chosen]
        rows = pd.concat([rows for rows, _ in parts], ignore_index=True)
        frames.append(
            pd.DataFrame(
                {
                    "setting": setting,
                    "model": model,
                    "level": parts[0][1],
                    "runs": _runs_text([key for key, _ in chosen]),
                    "patient_id": rows["patient_id"].astype(str),
                    "y": rows["label"].astype(np.int64),
                    "score": rows["probability"].astype(np.float64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROC_SCORE_COLUMNS)


def zero_shot_scores(evaluation: EvaluationSet, *, model: str) -> pd.DataFrame:
    """:data:`ROC_SCORE_COLUMNS` of the zero-shot curve of ``model`` on ``evaluation``'s rows."""
    frame = evaluation.frame
    return pd.DataFrame(
        {
            "setting": "zs",
            "model": model,
            "level": evaluation.level,
            "runs": "",
            "patient_id": frame["patient_id"].astype(str),
            "y": frame[evaluation.label].astype(np.int64),
            "score": frame["score"].astype(np.float64),
        }
    )[ROC_SCORE_COLUMNS]


def roc_curves(scores: pd.DataFrame) -> pd.DataFrame:
    """:data:`ROC_CURVE_COLUMNS`: the ROC points of every curve of ``scores`` (:data:`ROC_SCORE_COLUMNS`).

    Per curve: ``fpr, tpr, threshold`` from :func:`sklearn.metrics.roc_curve` (its default, intermediate
    collinear points dropped), ``auroc`` from :func:`sklearn.metrics.roc_auc_score`, ``n`` rows and
    ``n_pos`` positives. A curve with one class only has no ROC: one row with NaN points and AUROC.
    Curves are ordered zero-shot, linear probe, finetune, then by model.
    """
    missing = [c for c in ROC_SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"roc_curves: missing columns {missing}")
    frames = []
    for key, group in scores.groupby(_CURVE_KEY, sort=False):
        y, score = group["y"].to_numpy(np.int64), group["score"].to_numpy(np.float64)
        if len(np.unique(y)) == 2:
            fpr, tpr, threshold = roc_curve(y, score)
            auroc = float(roc_auc_score(y, score))
        else:  # undefined: sklearn would warn and return NaN rates
            fpr = tpr = threshold = np.array([np.nan])
            auroc = np.nan
        frames.append(
            pd.DataFrame(
                {
                    **dict(zip(_CURVE_KEY, key, strict=True)),
                    "n": len(y),
                    "n_pos": int(y.sum()),
                    "auroc": auroc,
                    "fpr": fpr,
                    "tpr": tpr,
                    "threshold": threshold,
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=ROC_CURVE_COLUMNS)
    curves = pd.concat(frames, ignore_index=True)[ROC_CURVE_COLUMNS]
    order = curves["setting"].map(_SETTING_ORDER).fillna(len(_SETTING_ORDER))
    return (
        curves.assign(_order=order)
        .sort_values(["_order", "model"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
