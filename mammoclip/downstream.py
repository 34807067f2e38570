"""One downstream classifier run (docs/upstream.md#classifiers): data, training, predictions, metrics.

A run is one :class:`mammoclip.runs.RunKey` (protocol, dataset, label, model, mode, data fraction, fold,
seed). Its steps, each a function of DataFrames and plain values; what differs per dataset (the table a
protocol reads, the split, breast-level metrics) comes from its :mod:`mammoclip.registry` entry:

1. :func:`label_table` picks the annotation table the protocol works on (VinDr: finding rows for ``paper``,
   images for ``clean``; RSNA: ``train_folds.csv``) and drops rows without a label or a PNG.
2. :func:`run_parts` splits it into ``train`` / ``select`` / ``report``
   (:mod:`mammoclip.evaluate.protocols`) and samples the data fraction of ``train``.
3. :func:`train_run` trains a linear probe (frozen encoder, eval mode; on images, or on cached embeddings)
   or a finetuned encoder and returns per-row probabilities of the ``report`` part.
4. :func:`run_metrics` scores them: AUROC for binary labels (VinDr per row or per image, RSNA per breast
   = mean probability per patient and laterality, as upstream, plus the per-image value), accuracy and macro
   F1 for density with the majority-class baseline of the *training* labels, each with a bootstrap 95%
   interval that resamples patients.

:func:`mammoclip.stages.classify` chains them and writes the run's files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mammoclip import registry
from mammoclip.evaluate.metrics import aggregate_by, binary_metrics, multiclass_metrics
from mammoclip.evaluate.protocols import check_protocol, sample_fraction
from mammoclip.runs import MODES

__all__ = [
    "MODES",
    "label_table",
    "primary_predictions",
    "run_metrics",
    "run_parts",
    "train_run",
]

log = logging.getLogger(__name__)


def label_table(
    tables: Mapping[str, pd.DataFrame], *, dataset: str, label: str, protocol: str
) -> pd.DataFrame:
    """The rows a run works on, with ``path`` (the PNG) and an integer ``label`` column.

    ``tables``: VinDr ``{"rows": vindr_detection_v1_folds, "images": vindr_images}``, RSNA
    ``{"folds": train_folds}``. Rows without a PNG (failed conversion) or a label are dropped and counted
    in the log.
    """
    check_protocol(protocol)
    spec = registry.get_label(label)
    if spec.dataset != dataset:
        raise ValueError(f"label {label!r} belongs to dataset {spec.dataset!r}, not {dataset!r}")
    key = registry.get_dataset(dataset).classifier_tables[protocol]
    if key not in tables:
        raise ValueError(f"{dataset} ({protocol}) needs the {key!r} table, got {sorted(tables)}")
    table = tables[key]
    for column in (label, "png_path", "patient_id", "image_id"):
        if column not in table.columns:
            raise ValueError(f"{dataset} {key} table: column {column!r} is missing")
    keep = table["png_path"].notna() & table["png_path"].astype(str).ne("") & table[label].notna()
    if (~keep).any():
        log.warning(
            "%s %s table: %d row(s) without PNG or %s label dropped", dataset, key, int((~keep).sum()), label
        )
    out = table[keep].copy()
    values = pd.to_numeric(out[label], errors="coerce")
    allowed = range(max(spec.n_classes, 2))
    if values.isna().any() or not values.isin(allowed).all():
        bad = out[values.isna() | ~values.isin(allowed)].iloc[0]
        raise ValueError(
            f"{dataset} {key} table: column {label!r} must hold {list(allowed)}, found {bad[label]!s} "
            f"(image_id {bad['image_id']})"
        )
    out["label"] = values.astype(np.int64)
    out["path"] = out["png_path"].astype(str)
    out["image_id"] = out["image_id"].astype(str).str.removesuffix(".png")
    return out


def run_parts(
    table: pd.DataFrame, *, dataset: str, protocol: str, fold: int, fraction: float, seed: int, binary: bool
) -> dict[str, pd.DataFrame]:
    """``train`` (the data fraction of it), ``select`` and ``report`` for one run (module docstring)."""
    split = registry.get_dataset(dataset).classifier_split
    if split is None:
        raise ValueError(f"no classification protocol for dataset {dataset!r}")
    parts = registry.resolve(split)(table, protocol=protocol, fold=fold)
    full = len(parts["train"])
    parts["train"] = sample_fraction(
        parts["train"],
        fraction=fraction,
        protocol=protocol,
        seed=seed,
        label_column="label" if binary else None,
    )
    log.info(
        "%s %s fold %d: train %d of %d rows (fraction %g), select %d, report %d",
        dataset,
        protocol,
        fold,
        len(parts["train"]),
        full,
        fraction,
        len(parts["select"]),
        len(parts["report"]),
    )
    return parts


def _embeddings_for(ids: pd.Series, index: Mapping[str, int], raw: np.ndarray, what: str) -> np.ndarray:
    missing = [i for i in ids if i not in index]
    if missing:
        raise ValueError(f"{what}: {len(missing)} image(s) have no cached embedding, e.g. {missing[:3]}")
    return raw[[index[i] for i in ids]]


def train_run(
    parts: Mapping[str, pd.DataFrame],
    config,
    *,
    checkpoint: str | os.PathLike,
    height: int,
    width: int,
    embeddings: tuple[list[str], np.ndarray] | None = None,
    augment: bool = False,
    device: str = "cpu",
    load_kwargs: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Train one classifier; returns ``(report probabilities, history, selected state, checkpoint info)``.

    ``config``: a :class:`mammoclip.train.classify.ClassifierConfig`. With ``embeddings`` (``image_ids,
    raw features`` of the checkpoint's encoder, :func:`mammoclip.inference.read_embeddings`) a linear probe
    trains only the head on them; otherwise images are read from ``path`` (``augment``: the pretraining
    augmentation on training images).
    """
    from mammoclip.train import classify

    if embeddings is not None:
        if config.mode != "linear_probe":
            raise ValueError("cached embeddings can only train a linear probe")
        ids, raw = embeddings
        index = {str(i).removesuffix(".png"): n for n, i in enumerate(ids)}
        x = {k: _embeddings_for(v["image_id"], index, raw, f"{k} part") for k, v in parts.items()}
        head, history = classify.train_head_on_embeddings(
            x["train"], parts["train"]["label"], x["select"], parts["select"]["label"], config, device=device
        )
        probs = classify.predict(head, x["report"], device="cpu")
        return probs, history, {k: v.clone() for k, v in head.state_dict().items()}, {}

    model, info = classify.classifier_from_clip(checkpoint, config, **dict(load_kwargs or {}))
    train_ds = classify.LabelledImages(
        parts["train"], "label", height=height, width=width, augment=augment, seed=config.seed
    )
    select_ds = classify.LabelledImages(parts["select"], "label", height=height, width=width)
    report_ds = classify.LabelledImages(parts["report"], "label", height=height, width=width)
    state, history = classify.train_classifier(model, train_ds, select_ds, config, device=device)
    probs = classify.predict(
        model, report_ds, device=device, batch_size=config.batch_size, num_workers=config.num_workers
    )
    return probs, history, state, info


def _metric_row(metric: str, level: str, values: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {
        "metric": metric,
        "level": level,
        "value": values[name],
        "value_low": values[f"{name}_low"],
        "value_high": values[f"{name}_high"],
        "n": values["n"],
        "note": values.get("note", ""),
    }


def primary_predictions(
    predictions: pd.DataFrame, *, dataset: str, protocol: str
) -> tuple[pd.DataFrame, str]:
    """The rows a binary run's primary AUROC is computed on, and their level.

    ``predictions``: the report part's ``patient_id, laterality, label, probability``. Datasets evaluated
    per breast (registry ``breast_level``, RSNA) give one row per patient and laterality (mean probability,
    label any positive image, as upstream); the others the rows as predicted (VinDr: ``finding rows`` under
    ``paper``, ``image`` under ``clean``).
    """
    if registry.get_dataset(dataset).breast_level:
        return aggregate_by(predictions, ["patient_id", "laterality"], "probability", "label"), "breast"
    return predictions, "image" if protocol == "clean" else "finding rows"


def run_metrics(
    report: pd.DataFrame,
    probs: np.ndarray,
    *,
    dataset: str,
    protocol: str,
    n_classes: int,
    train_labels: pd.Series,
    n_boot: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(metrics, predictions)`` of the report part.

    ``metrics`` rows: ``metric, level, value, value_low, value_high, n, note, primary, majority_baseline``
    (``primary`` marks the row the paper's table shows). ``predictions``: the report rows' ``patient_id,
    image_id, laterality, label`` and ``probability`` (binary) or ``prob_0..`` and ``predicted`` (density).
    """
    keep = [c for c in ("patient_id", "image_id", "laterality", "view") if c in report.columns]
    predictions = report[keep].reset_index(drop=True).copy()
    predictions["label"] = report["label"].to_numpy()
    rows = []
    if n_classes == 1:
        predictions["probability"] = np.asarray(probs, dtype=np.float64).reshape(-1)

        def auroc(frame: pd.DataFrame) -> dict:
            # intervals resample whole patients
            return binary_metrics(
                frame["label"], frame["probability"], n_boot=n_boot, seed=seed, groups=frame["patient_id"]
            )

        primary, level = primary_predictions(predictions, dataset=dataset, protocol=protocol)
        if level == "breast":  # the per-image value too, not the one the paper's table shows
            rows.append({**_metric_row("auroc", "image", auroc(predictions), "auroc"), "primary": False})
        rows.append({**_metric_row("auroc", level, auroc(primary), "auroc"), "primary": True})
        baseline = np.nan
    else:
        probs = np.asarray(probs, dtype=np.float64).reshape(len(predictions), n_classes)
        for k in range(n_classes):
            predictions[f"prob_{k}"] = probs[:, k]
        predictions["predicted"] = probs.argmax(axis=1)
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_classes)
        values = multiclass_metrics(
            predictions["label"],
            predictions["predicted"],
            n_classes=n_classes,
            n_boot=n_boot,
            seed=seed,
            groups=predictions["patient_id"],
            majority_class=int(counts.argmax()),
        )
        level = "image" if protocol == "clean" else "finding rows"
        rows.append({**_metric_row("accuracy", level, values, "accuracy"), "primary": True})
        rows.append({**_metric_row("macro_f1", level, values, "macro_f1"), "primary": True})
        baseline = float(values["majority_accuracy"])
    metrics = pd.DataFrame(rows)
    # the baseline belongs to accuracy: always predicting the training majority class
    metrics["majority_baseline"] = np.where(metrics["metric"].eq("accuracy"), baseline, np.nan)
    return metrics, predictions
