"""Zero-shot evaluation of per-image prompt scores (docs/upstream.md#zero-shot) under both protocols.

The scores come from :func:`mammoclip.inference.score_table` (``image_id, task, class, probability``); a
task's positive class is its LAST class (``{"no mass": ..., "mass": ...}`` -> "mass"), so the score of an
image is the probability of that class. Which label a task is evaluated against is the label's
``zero_shot_task`` in :mod:`mammoclip.registry` (:func:`mammoclip.registry.zero_shot_tasks`); each dataset's
registry entry names its evaluator here (:func:`evaluate_vindr`, :func:`evaluate_rsna`).

* ``paper`` (upstream): VinDr on the finding rows of the test split (an image with several findings counts
  several times), RSNA per image on fold 0.
* ``clean``: VinDr per image on the test split, RSNA per breast (mean score of the breast's images, label =
  any positive image) over all folds (no training happens, so every image can be evaluated); bootstrap
  intervals resample patients.

RSNA is also reported at the other level of each protocol (paper per breast, clean per image) with
``primary`` False; ``primary`` rows are the ones the paper's table shows. VinDr density (a task with one
prompt set per class, classes in density order A-D) is scored by accuracy and macro F1 of the argmax class,
next to the majority-class baseline of the evaluated labels (upstream configures no density prompts).

The rows each binary AUROC is computed on are built first, as :class:`EvaluationSet` objects
(:func:`vindr_sets`, :func:`rsna_sets`; each dataset's registry entry names its function), so the ROC
curves of the report (:mod:`mammoclip.evaluate.roc`) are drawn on exactly the rows the table evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from mammoclip import registry
from mammoclip.evaluate.metrics import aggregate_by, binary_metrics, multiclass_metrics

#: the datasets of :func:`evaluate_vindr` and :func:`evaluate_rsna` (their registry entries name them)
VINDR, RSNA = "vindr", "rsna"


@dataclass(frozen=True)
class EvaluationSet:
    """The rows one binary zero-shot AUROC is computed on, and how the result row describes them.

    ``frame``: one row per evaluated unit (finding row, image or breast) with ``patient_id``, the label's
    0/1 column (named after the label) and ``score``. ``grouped``: the bootstrap resamples patients (else
    rows). ``primary``: the row the paper's table shows for the protocol.
    """

    dataset: str
    label: str
    task: str
    protocol: str
    level: str
    subset: str
    primary: bool
    grouped: bool
    frame: pd.DataFrame


def primary_set(sets: Sequence[EvaluationSet], *, label: str, protocol: str) -> EvaluationSet:
    """The set of ``label`` the table reports under ``protocol`` (its ``primary`` one)."""
    found = [s for s in sets if s.label == label and s.protocol == protocol and s.primary]
    if len(found) != 1:
        raise ValueError(f"{len(found)} primary zero-shot sets for {label} ({protocol}), expected one")
    return found[0]


def _task_rows(scores: pd.DataFrame, task: str) -> pd.DataFrame:
    rows = scores[scores["task"] == task]
    if rows.empty:
        raise ValueError(f"no scores for task {task!r} (tasks: {sorted(scores['task'].unique())})")
    return rows


def positive_scores(scores: pd.DataFrame, task: str) -> pd.DataFrame:
    """``image_id, score``: each image's probability of the task's last (positive) class."""
    rows = _task_rows(scores, task)
    positive = list(dict.fromkeys(rows["class"]))[-1]
    out = rows[rows["class"] == positive][["image_id", "probability"]].rename(
        columns={"probability": "score"}
    )
    return out.assign(image_id=out["image_id"].astype(str)).reset_index(drop=True)


def _result(dataset, label, task, protocol, level, subset, metrics, *, metric="auroc", primary=True) -> dict:
    return {
        "dataset": dataset,
        "label": label,
        "task": task,
        "metric": metric,
        "setting": "zs",
        "data_frac": 1.0,
        "protocol": protocol,
        "level": level,
        "subset": subset,
        "primary": primary,
        "n": metrics["n"],
        "n_pos": metrics.get("n_pos", float("nan")),
        "value": metrics[metric],
        "value_low": metrics[f"{metric}_low"],
        "value_high": metrics[f"{metric}_high"],
        "majority_baseline": metrics.get("majority_accuracy", float("nan"))
        if metric == "accuracy"
        else float("nan"),
        "note": metrics["note"],
    }


def predicted_classes(scores: pd.DataFrame, task: str) -> pd.DataFrame:
    """``image_id, score``: each image's most probable class of a task (its position in the class order)."""
    rows = _task_rows(scores, task)
    order = list(dict.fromkeys(rows["class"]))
    wide = rows.pivot_table(index="image_id", columns="class", values="probability", aggfunc="first")[order]
    out = pd.DataFrame({"image_id": wide.index.astype(str), "score": wide.to_numpy().argmax(axis=1)})
    return out.reset_index(drop=True)


def _multiclass_results(scores, rows, images, *, task, label, n_boot, seed) -> list[dict]:
    """VinDr density: accuracy and macro F1 of the argmax class, on test finding rows and test images."""
    predicted = predicted_classes(scores, task)
    n_classes = scores.loc[scores["task"] == task, "class"].nunique()
    results = []
    for protocol, table, level in (("paper", rows, "finding rows"), ("clean", images, "image")):
        part = _with_scores(table[table["split"] == "test"], predicted, f"VinDr {level}")
        metrics = multiclass_metrics(
            part[label].astype(int),
            part["score"].astype(int),
            n_classes=int(n_classes),
            n_boot=n_boot,
            seed=seed,
            groups=part["patient_id"],
        )
        for metric in ("accuracy", "macro_f1"):
            results.append(
                _result(VINDR, label, task, protocol, level, "split == test", metrics, metric=metric)
            )
    return results


def _with_scores(table: pd.DataFrame, scores: pd.DataFrame, what: str) -> pd.DataFrame:
    ids = table["image_id"].astype(str).str.removesuffix(".png")
    joined = table.assign(image_id=ids).merge(scores, on="image_id", how="left", validate="many_to_one")
    missing = joined["score"].isna()
    if missing.any():
        examples = ", ".join(joined.loc[missing, "image_id"].iloc[:3])
        raise ValueError(f"{what}: {int(missing.sum())} image(s) have no score, e.g. {examples}")
    return joined


def _vindr_binary_sets(scores, rows, images, *, task: str, label: str) -> list[EvaluationSet]:
    task_scores = positive_scores(scores, task)
    paper = _with_scores(rows[rows["split"] == "test"], task_scores, "VinDr finding rows")
    clean = _with_scores(images[images["split"] == "test"], task_scores, "VinDr images")
    return [
        EvaluationSet(VINDR, label, task, "paper", "finding rows", "split == test", True, False, paper),
        EvaluationSet(VINDR, label, task, "clean", "image", "split == test", True, True, clean),
    ]


def vindr_sets(scores: pd.DataFrame, rows: pd.DataFrame, images: pd.DataFrame) -> list[EvaluationSet]:
    """The binary VinDr sets: paper on the test split's finding rows (rows resampled, as upstream reports
    them), clean on its images (patients resampled), for every scored binary task."""
    sets = []
    for task, label in registry.zero_shot_tasks(VINDR).items():
        if task in set(scores["task"]) and registry.get_label(label).n_classes == 1:
            sets.extend(_vindr_binary_sets(scores, rows, images, task=task, label=label))
    return sets


def _binary_result(evaluation: EvaluationSet, *, n_boot: int, seed: int) -> dict:
    frame = evaluation.frame
    metrics = binary_metrics(
        frame[evaluation.label],
        frame["score"],
        n_boot=n_boot,
        seed=seed,
        groups=frame["patient_id"] if evaluation.grouped else None,
    )
    return _result(
        evaluation.dataset,
        evaluation.label,
        evaluation.task,
        evaluation.protocol,
        evaluation.level,
        evaluation.subset,
        metrics,
        primary=evaluation.primary,
    )


def evaluate_vindr(
    scores: pd.DataFrame, rows: pd.DataFrame, images: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Zero-shot AUROC of the VinDr tasks: paper (test finding rows) and clean (test images)."""
    results = []
    for task, label in registry.zero_shot_tasks(VINDR).items():
        if task not in set(scores["task"]):
            continue
        if registry.get_label(label).n_classes > 1:
            results.extend(
                _multiclass_results(scores, rows, images, task=task, label=label, n_boot=n_boot, seed=seed)
            )
            continue
        for evaluation in _vindr_binary_sets(scores, rows, images, task=task, label=label):
            results.append(_binary_result(evaluation, n_boot=n_boot, seed=seed))
    return pd.DataFrame(results)


def rsna_sets(scores: pd.DataFrame, folds: pd.DataFrame) -> list[EvaluationSet]:
    """The RSNA sets: paper on fold 0 per image (primary, rows resampled) and per breast; clean on all
    folds per image and per breast (primary); a breast's score is its images' mean, its label any positive
    image (:func:`mammoclip.evaluate.metrics.aggregate_by`)."""
    sets = []
    for task, label in registry.zero_shot_tasks(RSNA).items():
        if task not in set(scores["task"]):
            continue
        table = _with_scores(folds, positive_scores(scores, task), "RSNA images")
        table[label] = table[label].astype(int)
        paper = table[table["fold"].astype(int) == 0]
        sets += [
            EvaluationSet(RSNA, label, task, "paper", "image", "fold == 0", True, False, paper),
            EvaluationSet(
                RSNA, label, task, "paper", "breast", "fold == 0", False, True, _breasts(paper, label)
            ),
            EvaluationSet(RSNA, label, task, "clean", "image", "all folds", False, True, table),
            EvaluationSet(
                RSNA, label, task, "clean", "breast", "all folds", True, True, _breasts(table, label)
            ),
        ]
    return sets


def _breasts(images: pd.DataFrame, label: str) -> pd.DataFrame:
    return aggregate_by(images, ["patient_id", "laterality"], "score", label)


def evaluate_rsna(
    scores: pd.DataFrame, folds: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Zero-shot AUROC for RSNA cancer: paper (fold 0, per image) and clean (all folds, per breast)."""
    return pd.DataFrame([_binary_result(s, n_boot=n_boot, seed=seed) for s in rsna_sets(scores, folds)])
