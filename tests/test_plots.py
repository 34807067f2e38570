"""mammoclip.plots: FROC curves and detection panels (matplotlib): sizes, contents, reproducible bytes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from mammoclip.plots import (
    detection_panel,
    detection_panel_figure,
    froc_figure,
    froc_plot,
    panel_size,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FPS = (0.125, 0.25, 0.5, 1, 2, 4)


def _curve(label, setting, frac, *, fold=0, scale=1.0):
    fp = np.array([0.0, 0.1, 0.3, 0.6, 1.5, 3.0, 6.0])
    sensitivity = np.minimum(1.0, scale * np.array([0.1, 0.2, 0.35, 0.5, 0.6, 0.7, 0.8]))
    return pd.DataFrame(
        {
            "label": label,
            "setting": setting,
            "data_frac": frac,
            "fold": fold,
            "threshold": np.linspace(0.9, 0.05, len(fp)),
            "fp_per_image": fp,
            "sensitivity": sensitivity,
        }
    )


@pytest.fixture
def curves():
    return pd.concat(
        [
            _curve("Mass", "freeze", 1.0),
            _curve("Mass", "ft", 0.1, scale=0.8),
            _curve("Mass", "ft", 1.0, fold=0),
            _curve("Mass", "ft", 1.0, fold=1, scale=0.5),  # a second fold: averaged into the same line
            _curve("Suspicious_Calcification", "ft", 1.0, scale=0.6),
        ],
        ignore_index=True,
    )


def test_froc_one_line_per_label_setting_fraction(curves):
    figure = froc_figure(curves, title="FROC")
    ax = figure.axes[0]
    assert len(ax.lines) == 4
    names = [line.get_label() for line in ax.lines]
    assert names == [
        "Mass, frozen encoder 100 %",
        "Mass, finetune 10 %",
        "Mass, finetune 100 % (mean, 2 runs)",
        "Suspicious_Calcification, finetune 100 %",
    ]
    assert ax.get_xscale() == "log" and ax.get_xlim() == pytest.approx((0.125, 8.0))
    # the six FROC points are marked on every line (one scatter each), at the step function's values
    assert len(ax.collections) == 4
    freeze = ax.collections[0].get_offsets()
    assert np.allclose(freeze[:, 0], FPS)
    assert np.allclose(freeze[:, 1], [0.2, 0.2, 0.35, 0.5, 0.6, 0.7])
    two_folds = ax.collections[2].get_offsets()[:, 1]
    assert np.allclose(two_folds, 0.75 * np.array([0.2, 0.2, 0.35, 0.5, 0.6, 0.7]))
    # the line is the step function too (0.6 between 1.5 and 3 FP/image)
    x, y = ax.lines[0].get_data()
    assert y[list(x).index(2.0)] == pytest.approx(0.6)


def test_froc_plot_png(curves, tmp_path):
    a = froc_plot(curves, tmp_path / "a.png", title="FROC, clean protocol")
    b = froc_plot(curves.copy(), tmp_path / "b.png", title="FROC, clean protocol")
    data = a.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data == b.read_bytes()
    assert b"Software" not in data and b"matplotlib" not in data
    with Image.open(a) as img:
        assert img.size == (1000, 500)
    c = froc_plot(curves[curves["label"] == "Mass"], tmp_path / "c.png", title="FROC, clean protocol")
    assert c.read_bytes() != data
    empty = froc_plot(curves.iloc[:0], tmp_path / "empty.png", title="FROC")
    with Image.open(empty) as img:
        assert img.size == (1000, 500)
    with pytest.raises(ValueError, match="missing columns"):
        froc_figure(curves.drop(columns=["sensitivity"]), title="FROC")


@pytest.fixture
def items(tmp_path):
    pixels = np.zeros((64, 40), np.uint8)
    pixels[20:30, 10:20] = 200
    paths = []
    for i in range(3):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return [
        {
            "png_path": paths[0],
            "truths": np.array([[10.0, 20.0, 20.0, 30.0]]),
            "detections": np.array([[9.0, 19.0, 21.0, 31.0], [0.0, 0.0, 5.0, 5.0]]),
            "scores": np.array([0.9, 0.3]),
        },
        {  # two truths, no detection
            "png_path": paths[1],
            "truths": np.array([[10.0, 20.0, 20.0, 30.0], [25.0, 40.0, 35.0, 50.0]]),
            "detections": np.zeros((0, 4)),
            "scores": np.zeros(0),
        },
        {  # a negative image with a false positive
            "png_path": paths[2],
            "truths": np.zeros((0, 4)),
            "detections": np.array([[1.0, 2.0, 8.0, 9.0]]),
            "scores": np.array([0.5]),
        },
    ]


def _rectangles(ax, colour):
    return [
        p
        for p in ax.patches
        if isinstance(p, Rectangle) and np.allclose(p.get_edgecolor()[:3], colour, atol=1e-3)
    ]


def test_panel_one_rectangle_per_truth_and_detection(items):
    figure = detection_panel_figure(items, title="Mass")
    axes = figure.axes
    assert len(axes) == 3
    green, orange = (0x2C / 255, 0xA0 / 255, 0x2C / 255), (1.0, 0x7F / 255, 0x0E / 255)
    for ax, item in zip(axes, items, strict=True):
        assert len(ax.patches) == len(item["truths"]) + len(item["detections"])
        truths, detections = _rectangles(ax, green), _rectangles(ax, orange)
        assert len(truths) == len(item["truths"]) and len(detections) == len(item["detections"])
        for rect, (x0, y0, x1, y1) in zip(detections, item["detections"], strict=True):
            assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (
                x0,
                y0,
                x1 - x0,
                y1 - y0,
            )
        # scores written next to the detections
        assert [t.get_text() for t in ax.texts] == [f"{s:.2f}" for s in item["scores"]]
    # max_images keeps the first items
    assert len(detection_panel_figure(items, title="Mass", max_images=2).axes) == 2


def test_detection_panel_png(items, tmp_path):
    a = detection_panel(items, tmp_path / "a.png", title="Mass: test images")
    b = detection_panel(items, tmp_path / "b.png", title="Mass: test images")
    data = a.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data == b.read_bytes()
    assert b"Software" not in data
    with Image.open(a) as img:
        assert img.size == panel_size(3) == (900, 450)
    nine = detection_panel(items * 3, tmp_path / "nine.png", title="Mass")  # 8 shown: two rows of four
    with Image.open(nine) as img:
        assert img.size == panel_size(9) == (1200, 850)
    empty = detection_panel([], tmp_path / "empty.png", title="Mass")
    with Image.open(empty) as img:
        assert img.size == panel_size(0) == panel_size(1) == (600, 450)
    bad = [{**items[0], "scores": np.array([0.9])}]
    with pytest.raises(ValueError, match="scores"):
        detection_panel_figure(bad, title="Mass")
