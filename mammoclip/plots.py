"""The report's figures (matplotlib): data efficiency, ROC curves, FROC curves and image panels.

Why: the tables (:mod:`mammoclip.paper_tables`) give the numbers; the Snakemake report also shows them as a
paper would, with their intervals, and the curves and images they come from (docs/upstream.md#evaluation,
docs/upstream.md#detection).

* :func:`efficiency_plot` (:func:`efficiency_data` -> :func:`efficiency_figure`): one (dataset, label,
  protocol)'s metric against the fraction of training data: our linear probe and finetune with their
  intervals, the paper's values for the same settings (hollow markers, dashed), our zero-shot as a
  horizontal line with its interval as a band (the paper's dashed) and, for accuracy, the majority-class
  baseline (grey, dotted).
* :func:`roc_plot` (:func:`roc_figure`): ROC curves with their AUROC in the legend and the chance
  diagonal, from :func:`mammoclip.evaluate.roc.roc_curves`.
* :func:`froc_plot` (:func:`froc_figure`): sensitivity vs false positives per image on a log axis from
  0.125 to 8, one line per (label, setting, data fraction) (and per model when several are given), with
  the FROC points (0.125, 0.25, 0.5, 1, 2, 4 FP/image; the CPM's) marked.
* :func:`detection_panel` (:func:`detection_panel_figure`): up to ``max_images`` images in a grid of at
  most four columns, ground-truth boxes in green, detections in orange with their scores.

Figures are built with matplotlib's object-oriented API on the Agg canvas (no pyplot, no display, no global
figure state) under matplotlib's default style, so a user's matplotlibrc does not change them; sizes and
dpi are fixed and the PNGs carry no metadata (no software version, no date), so the same inputs give the
same bytes. Files are written through :func:`mammoclip.io.atomic_path`. What a figure draws is computed
first as a DataFrame by a pure function (:func:`efficiency_data`, :func:`mammoclip.evaluate.roc.roc_curves`),
so tests check values, not pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mammoclip.evaluate.detection import FPS_PER_IMAGE
from mammoclip.io import atomic_path
from mammoclip.paper_tables import PAPER_MODELS, metric_name

__all__ = [
    "DPI",
    "EFFICIENCY_COLUMNS",
    "EFFICIENCY_SIZE",
    "FROC_SIZE",
    "PANEL_CELL",
    "ROC_SIZE",
    "SETTING_COLOURS",
    "detection_panel",
    "detection_panel_figure",
    "efficiency_data",
    "efficiency_figure",
    "efficiency_plot",
    "froc_figure",
    "froc_plot",
    "panel_size",
    "roc_figure",
    "roc_plot",
]

#: dots per inch of every figure
DPI = 100
#: FROC figure size in inches (1000 x 500 pixels at :data:`DPI`); the legend is right of the axes
FROC_SIZE = (10.0, 5.0)
#: panel cell size in inches (300 x 400 pixels); the panel's title row is :data:`_PANEL_TITLE` inches high
PANEL_CELL = (3.0, 4.0)
_PANEL_TITLE = 0.5
_PANEL_COLUMNS = 4
_FP_RANGE = (0.125, 8.0)
_SETTING_NAMES = {"freeze": "frozen encoder", "ft": "finetune"}
_LINESTYLES = {"freeze": "--", "ft": "-"}
_TRUTH_COLOUR = "#2ca02c"
_DETECTION_COLOUR = "#ff7f0e"
#: PNG metadata matplotlib would otherwise write (its version)
_NO_METADATA: dict[str, str | None] = {"Software": None}


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    out = Path(path)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, metadata=_NO_METADATA)
    return out


def _new_figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


# ------------------------------------------------------------------------------------------------- FROC


def _step_sensitivity(fp: np.ndarray, sensitivity: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The FROC step function at ``at``: the highest sensitivity with at most that many FPs per image."""
    order = np.argsort(fp, kind="stable")
    fp, best = fp[order], np.fmax.accumulate(np.nan_to_num(sensitivity[order], nan=-np.inf))
    index = np.searchsorted(fp, at, side="right") - 1
    values = np.where(index >= 0, best[np.clip(index, 0, None)] if len(best) else 0.0, 0.0)
    return np.where(np.isneginf(values), np.nan, values)


def _froc_lines(curves: pd.DataFrame, fps: Sequence[float]) -> list[dict]:
    """One entry per line: ``key`` (label, setting, data_frac[, model]), ``grid``, mean ``sensitivity``,
    ``points`` (sensitivity at ``fps``) and ``n_runs`` (runs told apart by ``fold``/``seed`` columns)."""
    keys = ["label", "setting", "data_frac"]
    if "model" in curves.columns and curves["model"].nunique() > 1:
        keys.append("model")
    runs = [c for c in ("protocol", "fold", "seed") if c in curves.columns]
    frame = curves.assign(data_frac=pd.to_numeric(curves["data_frac"]).round(6))
    lines = []
    for key, group in frame.groupby(keys, sort=False):
        fp_all = group["fp_per_image"].to_numpy(np.float64)
        grid = np.unique(np.concatenate([fp_all[fp_all > 0], np.asarray(fps, np.float64), [_FP_RANGE[1]]]))
        parts = [g for _, g in group.groupby(runs, sort=True)] if runs else [group]
        at_grid, at_points = [], []
        for part in parts:
            fp = part["fp_per_image"].to_numpy(np.float64)
            sens = part["sensitivity"].to_numpy(np.float64)
            at_grid.append(_step_sensitivity(fp, sens, grid))
            at_points.append(_step_sensitivity(fp, sens, np.asarray(fps, np.float64)))
        lines.append(
            {
                "key": key,
                "grid": grid,
                "sensitivity": np.mean(at_grid, axis=0),
                "points": np.mean(at_points, axis=0),
                "n_runs": len(parts),
            }
        )
    order = {"freeze": 0, "ft": 1}
    return sorted(lines, key=lambda ln: (str(ln["key"][0]), order.get(ln["key"][1], 2), *ln["key"][1:]))


def _line_name(key: tuple, n_runs: int) -> str:
    label, setting, frac, *model = key
    name = f"{label}, {_SETTING_NAMES.get(setting, setting)} {float(frac) * 100:g} %"
    if model:
        name += f", {model[0]}"
    return name + (f" (mean, {n_runs} runs)" if n_runs > 1 else "")


def froc_figure(
    curves: pd.DataFrame, *, title: str, fps_per_image: Sequence[float] = FPS_PER_IMAGE
) -> Figure:
    """The figure of :func:`froc_plot` (not saved): ``axes[0].lines`` holds one line per curve.

    ``curves``: columns ``label, setting, data_frac, fp_per_image, sensitivity``
    (:func:`mammoclip.evaluate.detection.froc_curve` rows with their run's keys). Rows of one (label,
    setting, data_frac) that differ in ``protocol``, ``fold`` or ``seed`` are separate runs: the line is
    the mean of their step functions (sensitivity at a rate = the highest sensitivity with at most that
    many false positives per image, 0 below the first point). The FROC points are marked (a scatter, not
    lines). An empty frame gives empty axes with a note.
    """
    missing = [c for c in ("label", "setting", "data_frac", "fp_per_image", "sensitivity") if c not in curves]
    if missing:
        raise ValueError(f"froc_figure: missing columns {missing}")
    with matplotlib.style.context("default"):
        figure = _new_figure(FROC_SIZE)
        ax = figure.add_axes((0.07, 0.11, 0.5, 0.8))
        colours = [matplotlib.colormaps["tab10"](i) for i in range(10)]
        lines = _froc_lines(curves, fps_per_image)
        labels = list(dict.fromkeys(ln["key"][0] for ln in lines))
        per_label: dict[str, int] = {}
        for line in lines:
            label, setting = line["key"][0], line["key"][1]
            index = per_label.get(label, 0)
            per_label[label] = index + 1
            colour = colours[(labels.index(label) * 3 + index) % len(colours)]
            ax.plot(
                line["grid"],
                line["sensitivity"],
                drawstyle="steps-post",
                linestyle=_LINESTYLES.get(setting, "-."),
                color=colour,
                linewidth=1.6,
                label=_line_name(line["key"], line["n_runs"]),
            )
            ax.scatter(fps_per_image, line["points"], color=colour, s=22, zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xlim(*_FP_RANGE)
        ax.set_ylim(0.0, 1.02)
        ticks = sorted({*fps_per_image, _FP_RANGE[1]})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("false positives per image")
        ax.set_ylabel("sensitivity (lesion level)")
        ax.grid(True, which="major", color="0.88", linewidth=0.8)
        ax.set_title(title, fontsize=11)
        if lines:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        else:
            ax.text(0.5, 0.5, "no FROC curve", transform=ax.transAxes, ha="center", va="center")
    return figure


def froc_plot(
    curves: pd.DataFrame,
    path: str | os.PathLike,
    *,
    title: str,
    fps_per_image: Sequence[float] = FPS_PER_IMAGE,
) -> Path:
    """PNG (1000 x 500 pixels) of FROC curves, one line per (label, setting, data_frac): see
    :func:`froc_figure`."""
    return _save(froc_figure(curves, title=title, fps_per_image=fps_per_image), path)


# ------------------------------------------------------------------------------------------------ panel


def _panel_grid(n_images: int, max_images: int) -> tuple[int, int]:
    """``(columns, rows)``: at most four columns, at least two (room for the title)."""
    shown = max(1, min(n_images, max_images))
    columns = max(2, min(_PANEL_COLUMNS, shown))
    return columns, math.ceil(shown / columns)


def panel_size(n_images: int, *, max_images: int = 8) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of a :func:`detection_panel` of ``n_images`` items: 300 x 400 per
    cell, two to four cells a row, plus a 50-pixel title row."""
    columns, rows = _panel_grid(n_images, max_images)
    return (round(PANEL_CELL[0] * columns * DPI), round((PANEL_CELL[1] * rows + _PANEL_TITLE) * DPI))


def _boxes(value: object, name: str) -> np.ndarray:
    boxes = np.asarray(value if value is not None else np.zeros((0, 4)), dtype=np.float64)
    boxes = boxes.reshape(-1, 4) if boxes.size else np.zeros((0, 4))
    if not np.isfinite(boxes).all():
        raise ValueError(f"detection_panel: non-finite {name}")
    return boxes


def _read_image(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=-1)
    return pixels.astype(np.float64)


def detection_panel_figure(items: Sequence[Mapping], *, title: str, max_images: int = 8) -> Figure:
    """The figure of :func:`detection_panel` (not saved).

    Each item: ``png_path``, ``truths`` (n, 4) and ``detections`` (m, 4) as ``xmin, ymin, xmax, ymax`` in
    PNG pixels, ``scores`` (m,). The first ``max_images`` items are drawn in their order, the image in grey
    levels (its own min..max) with every truth box (green) and every detection (orange, its score above the
    box) as one :class:`~matplotlib.patches.Rectangle` each; an optional ``title`` key names the image.
    The caller chooses the images and the detections (e.g. the top-scoring few). Optional keys for
    heatmaps (Mammo-FActOR): ``heatmap`` (PNG-sized array, drawn over the image with the ``jet`` colour
    map, half transparent), ``point`` (``(x, y)``: the heatmap's maximum, a white cross) and ``caption``
    (replaces the counts under the title).
    """
    if max_images < 1:
        raise ValueError("detection_panel: max_images must be at least 1")
    shown = list(items)[:max_images]
    width, height = panel_size(len(shown), max_images=max_images)
    columns, rows = _panel_grid(len(shown), max_images)
    with matplotlib.style.context("default"):
        figure = _new_figure((width / DPI, height / DPI))
        top = 1.0 - _PANEL_TITLE * DPI / height
        figure.suptitle(title, fontsize=10, y=(1.0 + top) / 2, va="center", wrap=True)
        if not shown:
            figure.text(0.5, top / 2, "no images", ha="center", va="center")
        for i, item in enumerate(shown):
            r, c = divmod(i, columns)
            ax = figure.add_axes(
                (c / columns + 0.01, top * (1 - (r + 1) / rows) + 0.01, 1 / columns - 0.02, top / rows - 0.06)
            )
            pixels = _read_image(item["png_path"])
            h, w = pixels.shape
            low, high = float(pixels.min()), float(pixels.max())
            ax.imshow(
                pixels,
                cmap="gray",
                vmin=low,
                vmax=high if high > low else low + 1,
                extent=(0, w, h, 0),
                interpolation="antialiased",
            )
            if item.get("heatmap") is not None:
                heat = np.asarray(item["heatmap"], dtype=np.float32)
                if heat.shape != (h, w):
                    raise ValueError(f"detection_panel: heatmap {heat.shape} for a {h} x {w} image")
                ax.imshow(heat, cmap="jet", alpha=0.45, extent=(0, w, h, 0), interpolation="bilinear")
            if item.get("point") is not None:
                x, y = item["point"]
                ax.plot([x], [y], marker="x", color="white", markersize=7, markeredgewidth=2)
            truths = _boxes(item.get("truths"), "truths")
            detections = _boxes(item.get("detections"), "detections")
            scores = np.asarray(item.get("scores", np.full(len(detections), np.nan)), dtype=np.float64)
            if scores.shape != (len(detections),):
                raise ValueError(f"detection_panel: {len(detections)} detections but scores {scores.shape}")
            for x0, y0, x1, y1 in truths:
                ax.add_patch(
                    Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=_TRUTH_COLOUR, linewidth=1.4)
                )
            for (x0, y0, x1, y1), score in zip(detections, scores, strict=True):
                ax.add_patch(
                    Rectangle(
                        (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=_DETECTION_COLOUR, linewidth=1.0
                    )
                )
                if math.isfinite(score):
                    ax.text(x0, y0, f"{score:.2f}", color=_DETECTION_COLOUR, fontsize=6, va="bottom")
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            name = item.get("title") or Path(str(item["png_path"])).stem
            plural = "s" if len(detections) != 1 else ""
            counts = item.get("caption") or f"{len(truths)} truth, {len(detections)} detection{plural}"
            ax.set_title(f"{name}\n{counts}", fontsize=7)
    return figure


def detection_panel(
    items: Sequence[Mapping], path: str | os.PathLike, *, title: str, max_images: int = 8
) -> Path:
    """PNG of test images with ground-truth (green) and detected (orange, with score) boxes:
    :func:`detection_panel_figure`; :func:`panel_size` gives its pixel size."""
    return _save(detection_panel_figure(items, title=title, max_images=max_images), path)


# ------------------------------------------------------------------------------------------ data efficiency

#: the settings drawn against the data fraction, and the reference line
_CURVE_SETTINGS = ("lp", "ft")
_SETTING_LABELS = {"zs": "zero-shot", "lp": "linear probe", "ft": "finetune"}
#: one colour per setting, shared by the efficiency and ROC figures
SETTING_COLOURS = {"zs": "#2ca02c", "lp": "#1f77b4", "ft": "#ff7f0e"}
_BASELINE_COLOUR = "0.45"
_MODEL_MARKERS = ("o", "s", "^", "D", "v", "P")
#: efficiency and ROC figure size in inches (900 x 600 pixels at :data:`DPI`); the legend is right of the axes
EFFICIENCY_SIZE = (9.0, 6.0)
ROC_SIZE = (9.0, 6.0)
#: how an interval was obtained, as the legends say it
BOOTSTRAP_INTERVAL = "95 % bootstrap CI"
SD_INTERVAL = "mean ± 1 s.d. over runs"
#: the columns of :func:`efficiency_data`
EFFICIENCY_COLUMNS = ["series", "source", "setting", "model", "x", "y", "low", "high", "interval", "n_runs"]


def _efficiency_metric(ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    """The paper's metric for the label when we have it (density: accuracy, not macro F1), else the only
    metric of our runs."""
    metrics = sorted(set(ours["metric"]))
    reported = [m for m in dict.fromkeys(paper["metric"]) if m in metrics]
    if reported:
        return reported[0]
    if len(metrics) == 1:
        return metrics[0]
    raise ValueError(f"efficiency_data: choose metric= among {metrics}")


def _interval(row: pd.Series) -> tuple[float, float, str]:
    """``(low, high, kind)`` of one aggregated cell, as the classification table reports it: a single run's
    bootstrap interval, else mean ± one sample standard deviation over the runs, else none."""
    if row["n_runs"] == 1 and np.isfinite(row["value_low"]) and np.isfinite(row["value_high"]):
        return float(row["value_low"]), float(row["value_high"]), BOOTSTRAP_INTERVAL
    if row["n"] >= 2 and np.isfinite(row["std"]):
        return float(row["mean"] - row["std"]), float(row["mean"] + row["std"]), SD_INTERVAL
    return math.nan, math.nan, ""


def _models(ours: pd.DataFrame) -> list[tuple[str, str]]:
    """``(model, paper_model)`` pairs, in the paper's column order, then by name."""
    pairs = {
        (str(m), str(pm) if isinstance(pm, str) else "")
        for m, pm in ours[["model", "paper_model"]].itertuples(index=False)
    }
    return sorted(pairs, key=lambda p: (PAPER_MODELS.index(p[1]) if p[1] in PAPER_MODELS else 99, p[0]))


def efficiency_data(
    aggregated: pd.DataFrame,
    paper: pd.DataFrame | None = None,
    *,
    dataset: str,
    label: str,
    protocol: str,
    metric: str | None = None,
) -> pd.DataFrame:
    """What :func:`efficiency_figure` draws for one (dataset, label, protocol), one row per point.

    ``aggregated``: :func:`mammoclip.paper_tables.aggregate_runs`; ``paper``:
    :func:`mammoclip.paper_tables.read_paper_results` (or None). ``metric`` defaults to the paper's metric
    of the label, else the only one present. Columns :data:`EFFICIENCY_COLUMNS`:

    * ``source`` ``ours``: ``setting`` ``lp``/``ft`` per data fraction ``x``, ``y`` the mean over runs;
      ``low``/``high`` a single run's 95 % bootstrap interval or, over several folds/seeds, mean ± one sample
      standard deviation (what the table reports; ``interval`` says which); ``setting`` ``zs``: our
      zero-shot, a reference line (``x`` NaN) with its interval.
    * ``source`` ``paper``: the published values of each model's ``paper_model`` for ``lp``, ``ft`` and
      ``zs`` (no interval).
    * ``source`` ``baseline``: the majority-class baseline of our runs (accuracy only), a line (``x`` NaN).

    ``series`` is the legend name (the model is named only when several are plotted). Raises
    ``ValueError`` without a linear probe or finetune result of the metric.
    """
    ours = aggregated[
        (aggregated["dataset"] == dataset)
        & (aggregated["label"] == label)
        & (aggregated["protocol"] == protocol)
        & aggregated["setting"].isin([*_CURVE_SETTINGS, "zs"])
    ]
    if paper is None:
        paper = pd.DataFrame(columns=["dataset", "label", "metric", "setting", "data_frac", "paper_model"])
    ref = paper[(paper["dataset"] == dataset) & (paper["label"] == label)]
    ref = ref[ref["setting"].isin([*_CURVE_SETTINGS, "zs"])]
    curves = ours[ours["setting"].isin(_CURVE_SETTINGS)]
    if curves.empty:
        raise ValueError(f"efficiency_data: no lp/ft results for {dataset}/{label} ({protocol})")
    metric = metric or _efficiency_metric(curves, ref)
    ours, ref = ours[ours["metric"] == metric], ref[ref["metric"] == metric]
    if not ours["setting"].isin(_CURVE_SETTINGS).any():
        raise ValueError(f"efficiency_data: no lp/ft results for {dataset}/{label}/{metric} ({protocol})")

    models = _models(ours)
    rows: list[dict] = []
    for model, _ in models:
        prefix = "ours" if len(models) == 1 else model
        for setting in (*_CURVE_SETTINGS, "zs"):
            cells = ours[(ours["model"] == model) & (ours["setting"] == setting)].sort_values("data_frac")
            for _, cell in cells[np.isfinite(cells["mean"])].iterrows():
                low, high, kind = _interval(cell)
                rows.append(
                    {
                        "series": f"{prefix}, {_SETTING_LABELS[setting]}",
                        "source": "ours",
                        "setting": setting,
                        "model": model,
                        "x": math.nan if setting == "zs" else float(cell["data_frac"]),
                        "y": float(cell["mean"]),
                        "low": low,
                        "high": high,
                        "interval": kind,
                        "n_runs": int(cell["n_runs"]),
                    }
                )
    # the paper's values, once per paper model (two of our models may be compared with the same one)
    for paper_model in dict.fromkeys(pm for _, pm in models if pm):
        for setting in (*_CURVE_SETTINGS, "zs"):
            published = ref[(ref["paper_model"] == paper_model) & (ref["setting"] == setting)]
            for _, cell in published.sort_values("data_frac").iterrows():
                rows.append(
                    {
                        "series": f"paper {paper_model}, {_SETTING_LABELS[setting]}",
                        "source": "paper",
                        "setting": setting,
                        "model": paper_model,
                        "x": math.nan if setting == "zs" else float(cell["data_frac"]),
                        "y": float(cell["paper_value"]),
                        "low": math.nan,
                        "high": math.nan,
                        "interval": "",
                        "n_runs": 0,
                    }
                )
    # the baseline of the classifiers' evaluation (always predicting the training majority class)
    baseline = ours.loc[ours["setting"].isin(_CURVE_SETTINGS), "majority_baseline"].dropna()
    if len(baseline):
        rows.append(
            {
                "series": "majority-class baseline",
                "source": "baseline",
                "setting": "majority",
                "model": "",
                "x": math.nan,
                "y": float(baseline.mean()),
                "low": math.nan,
                "high": math.nan,
                "interval": "",
                "n_runs": 0,
            }
        )
    data = pd.DataFrame(rows, columns=EFFICIENCY_COLUMNS)
    data.attrs.update(dataset=dataset, label=label, protocol=protocol, metric=metric)
    return data


def _series_label(points: pd.DataFrame) -> str:
    """Legend text: the series and how its intervals were obtained (and over how many runs)."""
    kinds = []
    for kind in dict.fromkeys(k for k in points["interval"] if k):
        runs = sorted(set(points.loc[points["interval"] == kind, "n_runs"]))
        kinds.append(f"{kind}, n = {'/'.join(map(str, runs))}" if kind == SD_INTERVAL else kind)
    return points["series"].iloc[0] + (f" ({'; '.join(kinds)})" if kinds else "")


def _y_limits(data: pd.DataFrame) -> tuple[float, float]:
    values = data[["y", "low", "high"]].to_numpy(np.float64).ravel()
    values = values[np.isfinite(values)]
    low = max(0.0, math.floor((values.min() - 0.03) * 20) / 20)
    high = min(1.0, math.ceil((values.max() + 0.03) * 20) / 20)
    return (low, high) if high - low >= 0.2 else (max(0.0, high - 0.2), max(high, 0.2))


def _reference_line(ax: Axes, points: pd.DataFrame) -> Any:
    """Zero-shot (ours solid with its interval as a band, the paper's dashed) or the majority baseline;
    returns the legend handle (line and band together)."""
    y, low, high = (float(points[c].iloc[0]) for c in ("y", "low", "high"))
    if points["source"].iloc[0] == "baseline":
        return ax.axhline(y, color=_BASELINE_COLOUR, linestyle=":", linewidth=1.6)
    colour = SETTING_COLOURS["zs"]
    line = ax.axhline(y, color=colour, linestyle="--" if points["source"].iloc[0] == "paper" else "-")
    if math.isfinite(low) and math.isfinite(high):
        return (ax.axhspan(low, high, color=colour, alpha=0.12, linewidth=0), line)
    return line


def _curve(ax: Axes, points: pd.DataFrame, marker: str) -> Any:
    """Metric vs fraction: ours solid with filled markers and error bars, the paper's dashed and hollow;
    returns the legend handle."""
    setting, paper = points["setting"].iloc[0], points["source"].iloc[0] == "paper"
    colour = SETTING_COLOURS[setting]
    # lp and ft at the same fraction side by side, so their bars do not overlap
    x = points["x"].to_numpy(np.float64) + {"lp": -0.012, "ft": 0.012}[setting]
    y, low, high = (points[c].to_numpy(np.float64) for c in ("y", "low", "high"))
    (line,) = ax.plot(
        x,
        y,
        linestyle="--" if paper else "-",
        marker=marker,
        markersize=7,
        markerfacecolor="white" if paper else colour,
        color=colour,
        linewidth=1.6,
        zorder=3,
    )
    bars = np.isfinite(low) & np.isfinite(high)
    if bars.any():
        error = np.vstack([y[bars] - low[bars], high[bars] - y[bars]])
        ax.errorbar(x[bars], y[bars], yerr=error, fmt="none", ecolor=colour, capsize=4, zorder=2)
    return line


def efficiency_figure(data: pd.DataFrame, *, title: str) -> Figure:
    """The figure of :func:`efficiency_plot` (not saved) from :func:`efficiency_data`.

    Ours: solid lines in the setting's colour (:data:`SETTING_COLOURS`), filled markers (one shape per
    model), error bars of the interval; the paper's values: dashed, hollow markers of the same colour; lp
    and ft points at the same fraction are drawn slightly apart. Zero-shot: a horizontal line and its
    interval as a light band (the paper's dashed); majority-class baseline: grey, dotted. The legend,
    outside the axes, names each series and how its interval was obtained.
    """
    with matplotlib.style.context("default"):
        figure = _new_figure(EFFICIENCY_SIZE)
        ax = figure.add_axes((0.08, 0.1, 0.52, 0.8))
        models = list(dict.fromkeys(data.loc[data["source"] == "ours", "model"]))
        handles, names = [], []
        for _, points in data.groupby("series", sort=False):
            if points["setting"].iloc[0] in _CURVE_SETTINGS:
                model = points["model"].iloc[0]
                index = models.index(model) if model in models else 0
                handles.append(_curve(ax, points, _MODEL_MARKERS[index % len(_MODEL_MARKERS)]))
            else:
                handles.append(_reference_line(ax, points))
            names.append(_series_label(points))
        fractions = sorted({0.1, 0.5, 1.0} | set(data["x"].dropna()))
        ax.set_xticks(fractions, [f"{f * 100:g} %" for f in fractions])
        ax.set_xlim(0.0, 1.08)
        if len(data):
            ax.set_ylim(*_y_limits(data))
        ax.set_xlabel("training data (fraction of the training part)")
        ax.set_ylabel(metric_name(data.attrs.get("metric", "")))
        ax.grid(True, color="0.9", linewidth=0.8)
        ax.set_title(title, fontsize=11)
        if handles:
            ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return figure


def efficiency_plot(
    aggregated: pd.DataFrame,
    path: str | os.PathLike,
    *,
    dataset: str,
    label: str,
    protocol: str,
    paper: pd.DataFrame | None = None,
    metric: str | None = None,
) -> Path:
    """PNG (900 x 600 pixels) of one label's metric against the training-data fraction under one protocol:
    :func:`efficiency_data` drawn by :func:`efficiency_figure`."""
    data = efficiency_data(aggregated, paper, dataset=dataset, label=label, protocol=protocol, metric=metric)
    title = f"{dataset} {label}: {metric_name(data.attrs['metric'])} vs training data ({protocol} protocol)"
    return _save(efficiency_figure(data, title=title), path)


# ------------------------------------------------------------------------------------------------- ROC


def _roc_name(curve: pd.Series, several_models: bool) -> str:
    """Legend text: setting (and model), AUROC, evaluated units and, for classifiers, the runs drawn."""
    name = _SETTING_LABELS.get(curve["setting"], curve["setting"])
    if several_models:
        name += f", {curve['model']}"
    auroc = "undefined (one class)" if np.isnan(curve["auroc"]) else f"{curve['auroc']:.3f}"
    units = f"{curve['level']}, n = {curve['n']} ({curve['n_pos']} positive)"
    runs = f"\n{curve['runs']}" if curve["runs"] else ""
    return f"{name}: AUROC {auroc}\n{units}{runs}"


def roc_figure(curves: pd.DataFrame, *, title: str) -> Figure:
    """The figure of :func:`roc_plot` (not saved) from :func:`mammoclip.evaluate.roc.roc_curves`.

    One line per curve in its setting's colour (:data:`SETTING_COLOURS`; a marker shape per model when
    several are drawn), the AUROC, the evaluated units and the runs in the legend (outside the axes); the
    chance diagonal dashed grey. A curve with one class only is a legend entry without a line.
    """
    with matplotlib.style.context("default"):
        figure = _new_figure(ROC_SIZE)
        ax = figure.add_axes((0.08, 0.1, 0.533, 0.8))
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1.0, label="chance (AUROC 0.5)")
        models = list(dict.fromkeys(curves["model"]))
        for _, curve in curves.groupby(["setting", "model", "level", "runs"], sort=False):
            first = curve.iloc[0]
            ax.plot(
                curve["fpr"],
                curve["tpr"],
                color=SETTING_COLOURS.get(first["setting"], "0.2"),
                marker=_MODEL_MARKERS[models.index(first["model"])] if len(models) > 1 else None,
                markersize=4,
                linewidth=1.8,
                label=_roc_name(first, len(models) > 1),
            )
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.grid(True, color="0.9", linewidth=0.8)
        ax.set_title(title, fontsize=11)
        ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize=8, frameon=False, labelspacing=1.0)
    return figure


def roc_plot(curves: pd.DataFrame, path: str | os.PathLike, *, title: str) -> Path:
    """PNG (900 x 600 pixels) of ROC curves with the chance diagonal: :func:`roc_figure`."""
    return _save(roc_figure(curves, title=title), path)
