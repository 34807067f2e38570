"""Per-run metrics -> the paper's result tables (Markdown + CSV).

Inputs
------
* A long *runs* table, one row per run (one fold and seed of one model in one setting), with the columns
  :data:`RUN_COLUMNS`: ``dataset, label, metric, setting (zs|lp|ft), data_frac, model, paper_model,
  protocol (paper|clean), fold, seed, value, value_low, value_high, majority_baseline, checkpoint,
  code_version``. ``model`` is our model's name; ``paper_model`` names the column of the paper's results
  (``clip_rn50, clip_enb5, mc_enb2, mc_enb5, mc_enb5_vindr``) it is compared with, or is empty.
* The paper's numbers, ``config/paper-results.csv`` (:func:`read_paper_results`), read off the authors'
  charts to about +-0.01.

Steps
-----
:func:`aggregate_runs` summarises every (dataset, label, metric, setting, data_frac, model, protocol) over its
folds and seeds with :func:`mammoclip.evaluate.metrics.summarise_runs` (mean, sample std, ``n`` finite
values, ``n_nan``); a group of a single run keeps that run's bootstrap interval. Checkpoints and code versions
are joined so every result row says what produced it. :func:`paper_table` lays one protocol out like the
paper (per label: zero-shot, linear probe 10/50/100 %, finetune), one column group per model: ours, the
paper's value and ours - paper; density rows show the majority-class baseline (~0.77 on the VinDr test
split, so density accuracy must be read against it). A cell without runs is empty (NaN / ``""``), never 0.
:func:`to_markdown` / :func:`write_table_files` render it; the caption always names the protocol and the
metric per dataset. The data-efficiency plots of the aggregated runs are drawn with matplotlib in
:mod:`mammoclip.plots` (:func:`mammoclip.plots.efficiency_plot`).

Detection (docs/upstream.md#detection): :func:`detection_table` takes the detector runs' ``metrics.csv``
frames (``map50`` in both protocols; ``cpm`` and ``sensitivity_at_<fp>`` where the FROC was computed) through
the same steps (:func:`runs_from_detection`, :func:`aggregate_runs`, :func:`paper_table`) with the paper's
``task == detection`` rows, and names the detection protocols in its caption
(:data:`DETECTION_PROTOCOL_CAPTIONS`); the paper reports AP@0.5 only, so CPM and sensitivity rows have no
paper value. Its figures (FROC curves, box panels) are drawn with matplotlib in :mod:`mammoclip.plots`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mammoclip.evaluate.metrics import summarise_runs
from mammoclip.io import atomic_write

__all__ = [
    "PAPER_MODELS",
    "runs_from_results",
    "DETECTION_PROTOCOL_CAPTIONS",
    "PROTOCOL_CAPTIONS",
    "RUN_COLUMNS",
    "aggregate_runs",
    "caption_for",
    "detection_table",
    "localisation_table",
    "LOCALISATION_PROTOCOL_CAPTIONS",
    "metric_name",
    "runs_from_detection",
    "paper_table",
    "read_paper_results",
    "to_markdown",
    "write_table_files",
]

log = logging.getLogger(__name__)

NAN = float("nan")

KEY = ["dataset", "label", "metric", "setting", "data_frac"]
GROUP = [*KEY, "model", "protocol"]
RUN_COLUMNS = [
    "dataset",
    "label",
    "metric",
    "setting",
    "data_frac",
    "model",
    "paper_model",
    "protocol",
    "fold",
    "seed",
    "value",
    "value_low",
    "value_high",
    "majority_baseline",
    "checkpoint",
    "code_version",
]
_REQUIRED = ["dataset", "label", "metric", "setting", "data_frac", "model", "protocol", "value"]
_OPTIONAL_NUMERIC = ["value_low", "value_high", "majority_baseline"]
_OPTIONAL_TEXT = ["paper_model", "checkpoint", "code_version"]

#: the model columns of ``paper-results.csv``, in the paper's order
PAPER_MODELS = ["clip_rn50", "clip_enb5", "mc_enb2", "mc_enb5", "mc_enb5_vindr"]
SETTING_ORDER = ["zs", "lp", "freeze", "ft", "weak"]
SETTING_NAMES = {
    "zs": "zero-shot",
    "lp": "linear probe",
    "ft": "finetune",
    "freeze": "frozen encoder",
    "weak": "weak localisation",
}
METRIC_NAMES = {
    "auroc": "AUROC",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "map50": "mAP@0.5",
    "cpm": "CPM",
    "iou_hit@0.25": "hit rate at IoU >= 0.25",
    "iou_hit@0.50": "hit rate at IoU >= 0.5",
    "pointing_game": "pointing game",
    "pointing_random": "pointing game by chance",
}
#: FROC metrics of the detection runs: ``sensitivity_at_<false positives per image>``
SENSITIVITY_PREFIX = "sensitivity_at_"
PROTOCOL_CAPTIONS = {
    "paper": (
        "paper protocol: best epoch chosen on the reported split (upstream): VinDr test split, RSNA fold 0 "
        "(trained on folds 1+2); VinDr classification on finding rows. Optimistic by construction"
    ),
    "clean": (
        "clean protocol: best epoch chosen on a held-out validation part of the training data; image-level "
        "labels; all folds. The reported split is never used for model selection"
    ),
}
#: the detection protocols (mammoclip.evaluate.protocols.split_detection; defaults of config detect:)
DETECTION_PROTOCOL_CAPTIONS = {
    "paper": (
        "paper protocol (upstream): VinDr images with at least one box of the label only, in training and "
        "test; best epoch chosen on the test split; detections scoring at least 0.2 (default), at most 100 "
        "per image; VOC all-point AP at IoU 0.5. Optimistic by construction"
    ),
    "clean": (
        "clean protocol: training images include negatives; best epoch chosen on a patient-level validation "
        "fold of the training split; reported once on all VinDr test images (negatives too), detections "
        "scoring at least 0.05 (default); VOC all-point AP at IoU 0.5, FROC sensitivity at the given false "
        "positives per image and their mean (CPM). The paper reports AP@0.5 only"
    ),
}
#: the Mammo-FActOR protocols (mammoclip.stages.factor_parts)
LOCALISATION_PROTOCOL_CAPTIONS = {
    "paper": (
        "paper protocol (upstream): the mapper trained on VinDr training images with a mass or suspicious "
        "calcification only, its epoch chosen on the test split. Optimistic by construction"
    ),
    "clean": (
        "clean protocol: the mapper trained on all VinDr training images outside the validation fold "
        "(negatives too), its epoch chosen on that fold"
    ),
}
_LOCALISATION_CAPTION = (
    "Scored on the VinDr test images with a box of the finding: regions = heatmap pixels above its 95th "
    "percentile (default), one box per connected region; an image is a hit when a region box reaches the "
    "IoU with a truth box; pointing game: the heatmap's maximum lies in a truth box, beside the chance that "
    "a random pixel does"
)
_FRAC_DECIMALS = 6


# ------------------------------------------------------------------------------------------------- inputs


def _clean_text(series: pd.Series) -> pd.Series:
    return series.fillna("").astype(str).str.strip().replace({"nan": "", "None": ""})


def _fraction(series: pd.Series) -> pd.Series:
    values = pd.to_numeric(series, errors="raise").astype(np.float64)
    if values.isna().any() or ((values <= 0) | (values > 1)).any():
        raise ValueError("data_frac must be in (0, 1]")
    return values.round(_FRAC_DECIMALS)


def _sensitivity_fp(metric: str) -> float | None:
    """The false-positive rate of a ``sensitivity_at_<fp>`` metric, else None."""
    if not metric.startswith(SENSITIVITY_PREFIX):
        return None
    try:
        return float(metric[len(SENSITIVITY_PREFIX) :])
    except ValueError:
        return None


def _is_detection_metric(metric: str) -> bool:
    return metric in ("map50", "cpm") or _sensitivity_fp(metric) is not None


def metric_name(metric: str) -> str:
    """Display name: :data:`METRIC_NAMES`, ``sensitivity at <fp> FP/image``, else the metric itself."""
    if metric in METRIC_NAMES:
        return METRIC_NAMES[metric]
    fp = _sensitivity_fp(metric)
    return f"sensitivity at {fp:g} FP/image" if fp is not None else metric


def _metric_reference(metrics: Iterable[str]) -> list[str]:
    """Known metrics in :data:`METRIC_NAMES` order, then the FROC sensitivities by false-positive rate."""
    sensitivities = sorted(
        {m for m in metrics if _sensitivity_fp(m) is not None}, key=lambda m: (_sensitivity_fp(m), m)
    )
    return [*METRIC_NAMES, *sensitivities]


def read_paper_results(path: str | os.PathLike) -> pd.DataFrame:
    """The paper's numbers in long form, one row per (dataset, label, metric, setting, data_frac, model).

    Columns: ``dataset, task, label, metric, setting, data_frac, paper_model, paper_value``, in file order
    and then :data:`PAPER_MODELS` order. Lines starting with ``#`` are comments; blank cells (models the
    paper does not report) are dropped.
    """
    wide = pd.read_csv(path, comment="#", skip_blank_lines=True)
    missing = [c for c in ["dataset", "task", *KEY[1:]] if c not in wide.columns]
    models = [c for c in PAPER_MODELS if c in wide.columns]
    if missing or not models:
        raise ValueError(f"{path}: not a paper-results table (missing {missing or 'model columns'})")
    for column in ["dataset", "task", "label", "metric", "setting"]:
        wide[column] = _clean_text(wide[column])
    wide["data_frac"] = _fraction(wide["data_frac"])
    wide["_row"] = np.arange(len(wide))
    long = wide.melt(
        id_vars=["_row", "dataset", "task", *KEY[1:]],
        value_vars=models,
        var_name="paper_model",
        value_name="paper_value",
    )
    long["paper_value"] = pd.to_numeric(long["paper_value"], errors="raise").astype(np.float64)
    long = long.dropna(subset=["paper_value"])
    long["_model"] = long["paper_model"].map(models.index)
    long = long.sort_values(["_row", "_model"], kind="stable").drop(columns=["_row", "_model"])
    dup = long.duplicated(subset=[*KEY, "paper_model"])
    if dup.any():
        raise ValueError(f"{path}: {int(dup.sum())} duplicated paper cells")
    return long.reset_index(drop=True)[["dataset", "task", *KEY[1:], "paper_model", "paper_value"]]


def _check_runs(runs: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in _REQUIRED if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table: missing columns {missing}")
    frame = runs.copy()
    for column in ["dataset", "label", "metric", "setting", "model", "protocol"]:
        frame[column] = _clean_text(frame[column])
        if (frame[column] == "").any():
            raise ValueError(f"runs table: column {column!r} has empty values")
    bad = sorted(set(frame["protocol"]) - set(PROTOCOL_CAPTIONS))
    if bad:
        raise ValueError(f"runs table: unknown protocol(s) {bad}; expected {sorted(PROTOCOL_CAPTIONS)}")
    frame["data_frac"] = _fraction(frame["data_frac"])
    for column in ["value", *_OPTIONAL_NUMERIC]:
        if column not in frame.columns:
            frame[column] = NAN
        frame[column] = pd.to_numeric(frame[column], errors="raise").astype(np.float64)
    for column in [*_OPTIONAL_TEXT, "fold", "seed"]:
        frame[column] = _clean_text(frame[column]) if column in frame.columns else ""
    # fold/seed as text: "0" and "0.0" are the same fold
    for column in ["fold", "seed"]:
        frame[column] = frame[column].str.replace(r"\.0$", "", regex=True)
    dup = frame.duplicated(subset=[*GROUP, "fold", "seed"], keep=False)
    if dup.any():
        example = frame.loc[dup, [*GROUP, "fold", "seed"]].iloc[0].to_dict()
        raise ValueError(f"runs table: {int(dup.sum())} rows repeat a (group, fold, seed), e.g. {example}")
    return frame


def _join(values: Iterable[str]) -> str:
    return "; ".join(sorted({v for v in values if v}))


def _sort_key(values: Iterable[str]) -> list:
    """Sort folds/seeds numerically when they are numbers."""

    def key(v: str):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    return sorted({v for v in values if v}, key=key)


def runs_from_results(
    classification: Iterable[pd.DataFrame],
    zero_shot: Iterable[pd.DataFrame],
    *,
    model_of: dict[str, str] | None = None,
    paper_model: str = "",
) -> pd.DataFrame:
    """The runs table (:data:`RUN_COLUMNS`) from classifier ``metrics.csv`` and zero-shot result frames.

    Only ``primary`` rows are kept (the level the paper reports; other levels stay in the run files).
    Classifier rows carry their keys; ``setting`` ``lp``/``ft``. Zero-shot rows (one file per model) get
    ``model`` from ``model_of`` (``{checkpoint: model}``, else the checkpoint's file stem), ``fold`` 0 and
    their bootstrap seed; ``paper_model`` fills rows that have none.
    """
    frames = []
    for frame in classification:
        frames.append(frame[frame["primary"].astype(str).str.lower().eq("true")].copy())
    for frame in zero_shot:
        frame = frame[frame["primary"].astype(str).str.lower().eq("true")].copy()
        checkpoints = frame["checkpoint"].astype(str)
        frame["model"] = checkpoints.map(lambda c: (model_of or {}).get(c, Path(c).stem))
        frame["fold"] = 0
        frames.append(frame)
    return _as_runs(frames, paper_model=paper_model)


def _as_runs(frames: list[pd.DataFrame], *, paper_model: str = "") -> pd.DataFrame:
    """Concatenate run rows into the :data:`RUN_COLUMNS` table (missing columns NaN or ``""``)."""
    if not frames:
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = pd.concat(frames, ignore_index=True)
    for column in RUN_COLUMNS:
        if column not in runs.columns:
            runs[column] = np.nan if column in _OPTIONAL_NUMERIC else ""
    runs["paper_model"] = runs["paper_model"].fillna("").astype(str).replace("", paper_model)
    return runs[RUN_COLUMNS].reset_index(drop=True)


def runs_from_detection(metric_frames: Iterable[pd.DataFrame], *, paper_model: str = "") -> pd.DataFrame:
    """The runs table (:data:`RUN_COLUMNS`) from detector ``metrics.csv`` frames.

    Every row is a run's metric (``map50``, ``cpm``, ``sensitivity_at_<fp>``) with its run keys (``dataset,
    label, setting`` (``freeze``/``ft``), ``data_frac, model, paper_model, protocol, fold, seed``), ``value``
    and, where bootstrapped, ``value_low``/``value_high``; the box and image counts stay in the run files.
    ``paper_model`` fills rows that have none. No majority baseline (NaN).
    """
    frames = [frame.drop(columns=["majority_baseline"], errors="ignore") for frame in metric_frames]
    return _as_runs([f for f in frames if len(f)], paper_model=paper_model)


# -------------------------------------------------------------------------------------------- aggregation


def aggregate_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, label, metric, setting, data_frac, model, protocol), summarised over runs.

    Columns: the group keys, ``paper_model``, ``mean``, ``std`` (sample, NaN below two finite values),
    ``n`` (finite values), ``n_nan``, ``n_runs``, ``value_low``/``value_high`` (the run's bootstrap interval
    when the group is a single run, NaN otherwise), ``majority_baseline`` (mean over runs, NaN when none),
    ``folds``, ``seeds``, ``checkpoints`` and ``code_versions`` (sorted unique values joined by ``"; "``;
    folds and seeds by ``","``). Sorted by the group keys. Raises ``ValueError`` on missing columns, unknown
    protocols, a (group, fold, seed) given twice, or a model mapped to two different paper models.
    """
    frame = _check_runs(runs)
    rows = []
    for keys, group in frame.groupby(GROUP, sort=True):
        paper_models = sorted(set(group["paper_model"]) - {""})
        if len(paper_models) > 1:
            raise ValueError(f"runs table: {dict(zip(GROUP, keys, strict=True))} maps to {paper_models}")
        summary = summarise_runs(group["value"].tolist())
        single = len(group) == 1
        baseline = group["majority_baseline"].dropna()
        if len(baseline) and float(baseline.max() - baseline.min()) > 1e-9:
            log.warning("aggregate_runs: majority baselines differ within %s; the mean is used", keys)
        rows.append(
            {
                **dict(zip(GROUP, keys, strict=True)),
                "paper_model": paper_models[0] if paper_models else "",
                "mean": summary["mean"],
                "std": summary["std"],
                "n": summary["n"],
                "n_nan": summary["n_nan"],
                "n_runs": len(group),
                "value_low": float(group["value_low"].iloc[0]) if single else NAN,
                "value_high": float(group["value_high"].iloc[0]) if single else NAN,
                "majority_baseline": float(baseline.mean()) if len(baseline) else NAN,
                "folds": ",".join(_sort_key(group["fold"])),
                "seeds": ",".join(_sort_key(group["seed"])),
                "checkpoints": _join(group["checkpoint"]),
                "code_versions": _join(group["code_version"]),
            }
        )
    columns = [
        *GROUP,
        "paper_model",
        "mean",
        "std",
        "n",
        "n_nan",
        "n_runs",
        "value_low",
        "value_high",
        "majority_baseline",
        "folds",
        "seeds",
        "checkpoints",
        "code_versions",
    ]
    out = pd.DataFrame(rows, columns=columns)
    for column in ["n", "n_nan", "n_runs"]:
        out[column] = out[column].astype(np.int64)
    return out


# -------------------------------------------------------------------------------------------------- table


def _fmt(value: float, decimals: int, *, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return ""
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    return "0.00" if text in {"-0.00", "+0.00"} and decimals == 2 else text


def _format_ours(row: dict) -> str:
    """``mean ± std (n=k)``, or ``value [low, high]`` for a single run; ``""`` without runs."""
    n_runs, n, mean = row.get("n_runs"), row.get("n"), row.get("mean")
    if n_runs is None or not n_runs or (isinstance(n_runs, float) and math.isnan(n_runs)):
        return ""
    if not n:
        return f"undefined ({int(n_runs)} run{'s' if n_runs != 1 else ''})"
    nan_note = f", {int(row['n_nan'])} NaN" if row.get("n_nan") else ""
    if n >= 2:
        return f"{mean:.3f} ± {row['std']:.3f} (n={int(n)}{nan_note})"
    low, high = row.get("value_low", NAN), row.get("value_high", NAN)
    if n_runs == 1 and math.isfinite(low) and math.isfinite(high):
        return f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    return f"{mean:.3f} (n=1{nan_note})"


def _order_index(values: Iterable[str], reference: Sequence[str]) -> dict[str, int]:
    """Position of each value: first by ``reference`` order, then alphabetically."""
    known = [v for v in dict.fromkeys(reference) if v in set(values)]
    unknown = sorted(set(values) - set(known))
    return {v: i for i, v in enumerate([*known, *unknown])}


def _model_order(models: dict[str, str]) -> list[str]:
    def key(model: str):
        pm = models[model]
        return (PAPER_MODELS.index(pm) if pm in PAPER_MODELS else len(PAPER_MODELS), model)

    return sorted(models, key=key)


def paper_table(aggregated: pd.DataFrame, paper: pd.DataFrame, *, protocol: str) -> pd.DataFrame:
    """The paper's layout for one protocol: one row per (dataset, label, metric, setting, data_frac).

    Rows are every cell we ran plus every paper cell of the same (dataset, label, metric), ordered as the
    paper (datasets and labels in ``paper``'s order; zero-shot, linear probe by data fraction, finetune).
    Columns: ``protocol``, :data:`KEY`, ``majority baseline`` (from the runs; a row without runs takes its
    label's, as the baseline depends on the evaluation split only) and, for each model (ordered by its paper
    column), ``<model>`` (formatted: ``mean ± std (n=k)`` or ``value [low, high]``), ``<model> mean``,
    ``<model> std``, ``<model> n``, ``<model> low``, ``<model> high``, ``<model> checkpoints``; when the
    model has a ``paper_model``: ``paper <paper_model>`` (the published value) and ``<model> - <paper_model>``
    (ours mean - paper). Missing values are NaN (numbers) or ``""`` (text), never 0.
    """
    if protocol not in PROTOCOL_CAPTIONS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOL_CAPTIONS)}, got {protocol!r}")
    ours = aggregated[aggregated["protocol"] == protocol].copy()
    ours["data_frac"] = _fraction(ours["data_frac"]) if len(ours) else ours["data_frac"]
    paper = paper.copy()
    paper["data_frac"] = _fraction(paper["data_frac"])

    models: dict[str, str] = {}
    for model, group in ours.groupby("model", sort=True):
        mapped = sorted(set(_clean_text(group["paper_model"])) - {""})
        if len(mapped) > 1:
            raise ValueError(f"paper_table: model {model!r} is mapped to several paper models {mapped}")
        models[model] = mapped[0] if mapped else ""
    model_order = _model_order(models)

    # rows: our cells + the paper's cells of the same (dataset, label, metric)
    combos = set(map(tuple, ours[["dataset", "label", "metric"]].drop_duplicates().to_numpy().tolist()))
    paper_rows = paper[
        [tuple(r) in combos for r in paper[["dataset", "label", "metric"]].to_numpy().tolist()]
    ]
    rows = pd.concat([ours[KEY], paper_rows[KEY]], ignore_index=True).drop_duplicates(ignore_index=True)
    ds_order = _order_index(rows["dataset"], paper["dataset"].tolist())
    label_order = _order_index(rows["label"], paper["label"].tolist())
    metric_order = _order_index(
        rows["metric"], [*paper["metric"].tolist(), *_metric_reference(rows["metric"])]
    )
    setting_order = _order_index(rows["setting"], SETTING_ORDER)
    rows = (
        rows.assign(
            _d=rows["dataset"].map(ds_order),
            _l=rows["label"].map(label_order),
            _m=rows["metric"].map(metric_order),
            _s=rows["setting"].map(setting_order),
        )
        .sort_values(["_d", "_l", "_m", "_s", "data_frac"], kind="stable")
        .drop(columns=["_d", "_l", "_m", "_s"])
        .reset_index(drop=True)
    )

    table = rows.copy()
    table.insert(0, "protocol", protocol)
    # the baseline depends on the evaluation split only, not on setting or data fraction: a row without a
    # run of its own shows the (dataset, label, metric)'s baseline
    baseline = ours.groupby(KEY, sort=False)["majority_baseline"].mean()
    per_label = ours.groupby(["dataset", "label", "metric"], sort=False)["majority_baseline"].mean()
    table["majority baseline"] = [
        baseline.get(tuple(k), NAN) if not pd.isna(baseline.get(tuple(k), NAN)) else per_label.get(k[:3], NAN)
        for k in rows[KEY].itertuples(index=False)
    ]
    paper_index = paper.set_index([*KEY, "paper_model"])["paper_value"]
    ours_index = ours.set_index([*KEY, "model"])
    for model in model_order:
        cells = []
        for k in rows[KEY].itertuples(index=False):
            idx = (*k, model)
            cells.append(ours_index.loc[idx].to_dict() if idx in ours_index.index else {})
        table[model] = [_format_ours(c) for c in cells]
        table[f"{model} mean"] = [c.get("mean", NAN) for c in cells]
        table[f"{model} std"] = [c.get("std", NAN) for c in cells]
        table[f"{model} n"] = pd.array([c.get("n") for c in cells], dtype="Int64")
        table[f"{model} low"] = [c.get("value_low", NAN) if c.get("n_runs") == 1 else NAN for c in cells]
        table[f"{model} high"] = [c.get("value_high", NAN) if c.get("n_runs") == 1 else NAN for c in cells]
        table[f"{model} checkpoints"] = [c.get("checkpoints", "") for c in cells]
        pm = models[model]
        if pm:
            published = [paper_index.get((*k, pm), NAN) for k in rows[KEY].itertuples(index=False)]
            table[f"paper {pm}"] = np.asarray(published, dtype=np.float64)
            table[f"{model} - {pm}"] = table[f"{model} mean"].to_numpy(np.float64) - table[f"paper {pm}"]
    table.attrs["models"] = dict((m, models[m]) for m in model_order)
    return table


def detection_table(
    metric_frames: Sequence[pd.DataFrame], paper: pd.DataFrame, *, protocol: str
) -> pd.DataFrame:
    """One protocol's detection table: ours vs the paper per (label, metric, setting, data_frac).

    ``metric_frames``: the detector runs' ``metrics.csv`` frames (:func:`runs_from_detection`; rows of other
    protocols are ignored); ``paper``: :func:`read_paper_results` (only ``task == detection`` rows are used
    when the column is present). Runs are summarised over folds and seeds by :func:`aggregate_runs` (one
    run: ``value [low, high]``; several: ``mean ± std (n=k)``) and laid out by :func:`paper_table`: per
    label (the paper's order) ``map50`` then ``cpm`` and the FROC sensitivities by false-positive rate, each
    by setting (frozen encoder, finetune) and data fraction; the paper's AP@0.5 and ours - paper where the
    model has a ``paper_model``. CPM and sensitivities have no paper value (empty). The caption written by
    :func:`write_table_files` names the detection protocol (:data:`DETECTION_PROTOCOL_CAPTIONS`).
    """
    if protocol not in DETECTION_PROTOCOL_CAPTIONS:
        raise ValueError(f"protocol must be one of {sorted(DETECTION_PROTOCOL_CAPTIONS)}, got {protocol!r}")
    runs = runs_from_detection(metric_frames)
    runs = runs[_clean_text(runs["protocol"]) == protocol]
    if "task" in paper.columns:
        paper = paper[paper["task"] == "detection"]
    table = paper_table(aggregate_runs(runs), paper, protocol=protocol)
    table.attrs["protocol_captions"] = DETECTION_PROTOCOL_CAPTIONS
    return table


def localisation_table(
    metric_frames: Sequence[pd.DataFrame], paper: pd.DataFrame, *, protocol: str
) -> pd.DataFrame:
    """One protocol's Mammo-FActOR localisation table: ours vs the paper per (label, metric).

    ``metric_frames``: the localisation runs' ``metrics.csv`` frames (rows of other protocols are ignored);
    ``paper``: :func:`read_paper_results` (``task == factor_localization`` rows when the column is present).
    Laid out by :func:`paper_table` (hit rates, then pointing game and its chance level); the caption
    names the protocol (:data:`LOCALISATION_PROTOCOL_CAPTIONS`) and how the scores are computed.
    """
    if protocol not in LOCALISATION_PROTOCOL_CAPTIONS:
        raise ValueError(
            f"protocol must be one of {sorted(LOCALISATION_PROTOCOL_CAPTIONS)}, got {protocol!r}"
        )
    runs = runs_from_detection(metric_frames)  # the same run keys and value columns
    runs = runs[_clean_text(runs["protocol"]) == protocol].copy()
    if "task" in paper.columns:
        paper = paper[paper["task"] == "factor_localization"]
    # the paper localises with its image+text models only: a model pretrained with VinDr too is compared
    # with the same encoder's (named in the column header)
    reported = set(paper["paper_model"])
    runs["paper_model"] = [
        m.removesuffix("_vindr") if m not in reported and m.removesuffix("_vindr") in reported else m
        for m in _clean_text(runs["paper_model"])
    ]
    table = paper_table(aggregate_runs(runs), paper, protocol=protocol)
    table.attrs["protocol_captions"] = {
        p: f"{c}. {_LOCALISATION_CAPTION}" for p, c in LOCALISATION_PROTOCOL_CAPTIONS.items()
    }
    return table


# ----------------------------------------------------------------------------------------------- rendering


def caption_for(table: pd.DataFrame, caption: str = "") -> str:
    """``caption`` followed by the protocol's description and the metric per dataset.

    Protocol descriptions: ``table.attrs["protocol_captions"]`` when set (:func:`detection_table`), else
    :data:`DETECTION_PROTOCOL_CAPTIONS` for a table of detection metrics only (a detection table read back
    from its CSV), else :data:`PROTOCOL_CAPTIONS` (classification).
    """
    protocols = sorted(set(table["protocol"])) if "protocol" in table.columns else []
    parts = [caption.strip().rstrip(".")] if caption.strip() else []
    captions = table.attrs.get("protocol_captions")
    if not captions:
        names = set(table["metric"]) if "metric" in table.columns else set()
        detection = bool(names) and all(_is_detection_metric(m) for m in names)
        captions = DETECTION_PROTOCOL_CAPTIONS if detection else PROTOCOL_CAPTIONS
    parts += [captions.get(p, f"{p} protocol") for p in protocols] or ["protocol: unknown"]
    metrics = []
    for dataset, group in table.groupby("dataset", sort=False):
        per_metric = []
        for metric, sub in group.groupby("metric", sort=False):
            labels = ", ".join(dict.fromkeys(sub["label"]))
            per_metric.append(f"{metric_name(metric)} ({labels})")
        metrics.append(f"{dataset}: {'; '.join(per_metric)}")
    if metrics:
        parts.append("Metric: " + " | ".join(metrics))
    if table.get("majority baseline") is not None and table["majority baseline"].notna().any():
        parts.append("Majority baseline: accuracy of always predicting the most frequent class")
    parts.append("Ours: mean ± sample std over folds/seeds (n runs) or one run [95 % bootstrap interval]")
    parts.append("Paper values read off the authors' charts (±0.01); empty cell: no run / not reported")
    return ". ".join(parts) + "."


def _models_from_columns(table: pd.DataFrame) -> dict[str, str]:
    """``{model: paper_model}`` recovered from the column names (when ``attrs`` were lost, e.g. a CSV)."""
    models = {}
    for column in table.columns:
        if f"{column} mean" in table.columns and f"{column} checkpoints" in table.columns:
            prefix = f"{column} - "
            diffs = [c[len(prefix) :] for c in table.columns if c.startswith(prefix)]
            models[column] = next((pm for pm in diffs if f"paper {pm}" in table.columns), "")
    return models


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """The human-readable columns of a :func:`paper_table`, all as strings."""
    out = pd.DataFrame(
        {
            "dataset": table["dataset"],
            "label": table["label"],
            "metric": table["metric"].map(metric_name),
            "setting": table["setting"].map(lambda s: SETTING_NAMES.get(s, s)),
            "data": table["data_frac"].map(lambda f: f"{f * 100:g} %"),
        }
    )
    if "majority baseline" in table.columns and table["majority baseline"].notna().any():
        out["majority baseline"] = table["majority baseline"].map(lambda v: _fmt(v, 3))
    models = table.attrs.get("models") or _models_from_columns(table)
    for model, pm in models.items():
        out[model] = table[model].fillna("")
        if pm and f"paper {pm}" in table.columns:
            out[f"paper {pm}"] = table[f"paper {pm}"].map(lambda v: _fmt(v, 2))
            out[f"{model} - {pm}"] = table[f"{model} - {pm}"].map(lambda v: _fmt(v, 2, signed=True))
    return out


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame, *, caption: str = "") -> str:
    """A GitHub pipe table of :func:`paper_table`'s display columns, preceded by the full caption.

    The caption (:func:`caption_for`) always names the protocol and the metric per dataset. Written without
    ``tabulate``; the output ends with a newline and depends only on the table.
    """
    shown = _display(table)
    lines = [f"**Table.** {_cell(caption_for(table, caption))}", ""]
    lines.append("| " + " | ".join(_cell(c) for c in shown.columns) + " |")
    lines.append("|" + "|".join("---" for _ in shown.columns) + "|")
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table_files(
    table: pd.DataFrame, out_stem: str | os.PathLike, caption: str = ""
) -> tuple[Path, Path]:
    """Write ``<out_stem>.md`` (:func:`to_markdown`) and ``<out_stem>.csv`` (every column, numbers unrounded).

    Bytes are deterministic (UTF-8, ``\\n`` line ends, floats as their shortest exact ``repr``, empty for
    missing). Returns the two paths.
    """
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, csv = stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".csv")
    with atomic_write(md, "wb") as handle:
        handle.write(to_markdown(table, caption=caption).encode("utf-8"))
    text = table.to_csv(index=False, lineterminator="\n", na_rep="")
    with atomic_write(csv, "wb") as handle:
        handle.write(text.encode("utf-8"))
    return md, csv
