"""The detection report's figures: FROC curves and a panel of test images with their boxes (matplotlib).

Why: the detection table (:func:`mammoclip.paper_tables.detection_table`) gives AP@0.5 and the FROC points
as numbers; the Snakemake report also shows the curves they come from and what the detector finds on test
images (docs/upstream.md#detection).

* :func:`froc_plot` (:func:`froc_figure`): sensitivity vs false positives per image on a log axis from
  0.125 to 8, one line per (label, setting, data fraction) (and per model when several are given), with
  the FROC points (0.125, 0.25, 0.5, 1, 2, 4 FP/image; the CPM's) marked.
* :func:`detection_panel` (:func:`detection_panel_figure`): up to ``max_images`` images in a grid of at
  most four columns, ground-truth boxes in green, detections in orange with their scores.

Figures are built with matplotlib's object-oriented API on the Agg canvas (no pyplot, no display, no global
figure state) under matplotlib's default style, so a user's matplotlibrc does not change them; sizes and
dpi are fixed and the PNGs carry no metadata (no software version, no date), so the same inputs give the
same bytes. Files are written through :func:`mammoclip.io.atomic_path`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mammoclip.evaluate.detection import FPS_PER_IMAGE
from mammoclip.io import atomic_path

__all__ = [
    "DPI",
    "FROC_SIZE",
    "PANEL_CELL",
    "detection_panel",
    "detection_panel_figure",
    "froc_figure",
    "froc_plot",
    "panel_size",
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
