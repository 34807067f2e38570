"""mammoclip.plots: data-efficiency plots, FROC curves and detection panels (matplotlib): the data they
draw, sizes, contents, reproducible bytes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from mammoclip.paper_tables import aggregate_runs, read_paper_results
from mammoclip.plots import (
    SETTING_COLOURS,
    detection_panel,
    detection_panel_figure,
    efficiency_data,
    efficiency_figure,
    efficiency_plot,
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


# ---- data efficiency ------------------------------------------------------------------------------------

PAPER_CSV = """\
dataset,task,label,metric,setting,data_frac,mc_enb2,mc_enb5
vindr,classification,Mass,auroc,zs,1.0,0.58,0.48
vindr,classification,Mass,auroc,lp,0.1,0.69,0.73
vindr,classification,Mass,auroc,lp,0.5,0.72,0.78
vindr,classification,Mass,auroc,lp,1.0,0.73,0.79
vindr,classification,Mass,auroc,ft,1.0,0.85,0.85
vindr,classification,density,accuracy,zs,1.0,0.13,0.15
vindr,classification,density,accuracy,lp,1.0,0.84,0.85
rsna,classification,cancer,auroc,zs,1.0,0.60,0.62
"""


def _run(
    label, setting, frac, value, *, metric="auroc", fold=0, protocol="clean", low=np.nan, high=np.nan, **kw
):
    return {
        "dataset": "vindr",
        "label": label,
        "metric": metric,
        "setting": setting,
        "data_frac": frac,
        "model": "mammoclip",
        "paper_model": "mc_enb5",
        "protocol": protocol,
        "fold": fold,
        "seed": 10,
        "value": value,
        "value_low": low,
        "value_high": high,
        **kw,
    }


@pytest.fixture
def aggregated():
    """A hand-made classification run table, aggregated as the classification_table stage does."""
    runs = [
        _run("Mass", "zs", 1.0, 0.60, low=0.50, high=0.70),
        # two folds: mean 0.72 ± s.d. 0.0283 (the table's mean ± std)
        _run("Mass", "lp", 0.1, 0.70, fold=0, low=0.6, high=0.8),
        _run("Mass", "lp", 0.1, 0.74, fold=1, low=0.6, high=0.8),
        # single runs keep their bootstrap interval
        _run("Mass", "lp", 1.0, 0.80, low=0.75, high=0.85),
        _run("Mass", "ft", 1.0, 0.84, low=0.79, high=0.90),
        # another protocol must not leak in
        _run("Mass", "lp", 1.0, 0.10, protocol="paper", low=0.0, high=0.2),
        # density: accuracy (the paper's metric) and macro F1, majority baseline
        _run("density", "zs", 1.0, 0.30, metric="accuracy", low=0.2, high=0.4, majority_baseline=0.4),
        _run("density", "lp", 1.0, 0.55, metric="accuracy", low=0.45, high=0.65, majority_baseline=0.5),
        _run("density", "lp", 1.0, 0.35, metric="macro_f1", low=0.25, high=0.45),
    ]
    return aggregate_runs(pd.DataFrame(runs))


@pytest.fixture
def paper(tmp_path):
    path = tmp_path / "paper-results.csv"
    path.write_text(PAPER_CSV)
    return read_paper_results(path)


def _point(data, series, x=None):
    rows = data[data["series"] == series]
    if x is not None:
        rows = rows[np.isclose(rows["x"], x)]
    assert len(rows) == 1, (series, x)
    return rows.iloc[0]


def test_efficiency_data_values_intervals_and_paper(aggregated, paper):
    data = efficiency_data(aggregated, paper, dataset="vindr", label="Mass", protocol="clean")
    assert data.attrs["metric"] == "auroc"
    assert list(dict.fromkeys(data["series"])) == [
        "ours, linear probe",
        "ours, finetune",
        "ours, zero-shot",
        "paper mc_enb5, linear probe",
        "paper mc_enb5, finetune",
        "paper mc_enb5, zero-shot",
    ]
    lp = data[data["series"] == "ours, linear probe"]
    assert lp["x"].tolist() == [0.1, 1.0] and lp["y"].tolist() == pytest.approx([0.72, 0.80])
    two_folds = _point(data, "ours, linear probe", 0.1)
    sd = np.std([0.70, 0.74], ddof=1)
    assert (two_folds["low"], two_folds["high"]) == pytest.approx((0.72 - sd, 0.72 + sd))
    assert two_folds["interval"] == "mean ± 1 s.d. over runs" and two_folds["n_runs"] == 2
    single = _point(data, "ours, linear probe", 1.0)
    assert (single["low"], single["high"], single["interval"]) == (0.75, 0.85, "95 % bootstrap CI")
    finetune = _point(data, "ours, finetune", 1.0)
    assert (finetune["y"], finetune["low"], finetune["high"]) == (0.84, 0.79, 0.90)
    # zero-shot: a reference line (no x) with its interval
    zs = _point(data, "ours, zero-shot")
    assert np.isnan(zs["x"]) and (zs["y"], zs["low"], zs["high"]) == (0.60, 0.50, 0.70)
    # the paper's values of the model's paper column (mc_enb5, not mc_enb2), without intervals
    published = data[data["source"] == "paper"]
    curves = published[published["setting"] != "zs"]
    assert curves.set_index(["setting", "x"])["y"].to_dict() == {
        ("lp", 0.1): 0.73,
        ("lp", 0.5): 0.78,
        ("lp", 1.0): 0.79,
        ("ft", 1.0): 0.85,
    }
    assert _point(data, "paper mc_enb5, zero-shot")["y"] == 0.48
    assert published[["low", "high"]].isna().all().all()
    # no majority baseline for AUROC; without the paper's values only our series remain
    assert "baseline" not in set(data["source"])
    alone = efficiency_data(aggregated, None, dataset="vindr", label="Mass", protocol="clean")
    assert set(alone["source"]) == {"ours"} and len(alone) == 4
    # the other protocol's run is its own plot
    other = efficiency_data(aggregated, paper, dataset="vindr", label="Mass", protocol="paper")
    assert _point(other, "ours, linear probe", 1.0)["y"] == 0.10
    assert "ours, zero-shot" not in set(other["series"])


def test_efficiency_data_density_accuracy_and_majority_baseline(aggregated, paper):
    data = efficiency_data(aggregated, paper, dataset="vindr", label="density", protocol="clean")
    assert data.attrs["metric"] == "accuracy"  # the paper's metric, not macro F1
    assert _point(data, "ours, linear probe", 1.0)["y"] == 0.55
    # the classifiers' baseline (the training majority class), not the zero-shot row's
    assert _point(data, "majority-class baseline")["y"] == 0.5
    assert _point(data, "paper mc_enb5, zero-shot")["y"] == 0.15
    with pytest.raises(ValueError, match="metric"):
        efficiency_data(aggregated, None, dataset="vindr", label="density", protocol="clean")
    macro = efficiency_data(
        aggregated, None, dataset="vindr", label="density", protocol="clean", metric="macro_f1"
    )
    assert macro["y"].tolist() == [0.35] and "baseline" not in set(macro["source"])
    with pytest.raises(ValueError, match="no lp/ft results"):
        efficiency_data(aggregated, paper, dataset="rsna", label="cancer", protocol="clean")


def test_efficiency_figure_draws_each_series(aggregated, paper):
    data = efficiency_data(aggregated, paper, dataset="vindr", label="density", protocol="clean")
    figure = efficiency_figure(data, title="density")
    ax = figure.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "ours, linear probe (95 % bootstrap CI)",
        "ours, zero-shot (95 % bootstrap CI)",
        "paper mc_enb5, linear probe",
        "paper mc_enb5, zero-shot",
        "majority-class baseline",
    ]
    curves = {
        (line.get_linestyle(), line.get_markerfacecolor()) for line in ax.lines if len(line.get_xdata()) == 1
    }
    lp = SETTING_COLOURS["lp"]
    assert ("-", lp) in curves and ("--", "white") in curves  # ours filled, the paper's hollow and dashed
    horizontal = [line for line in ax.lines if list(line.get_xdata()) == [0, 1]]
    assert sorted((line.get_ydata()[0], line.get_linestyle()) for line in horizontal) == [
        (0.15, "--"),
        (0.3, "-"),
        (0.5, ":"),
    ]
    # the zero-shot interval is a band; the lp interval an error bar from 0.45 to 0.65
    assert len(ax.patches) == 1
    (bars,) = ax.collections
    assert np.allclose(bars.get_segments()[0][:, 1], [0.45, 0.65])
    assert ax.get_xlabel().startswith("training data") and ax.get_ylabel() == "accuracy"


def test_efficiency_plot_png_is_reproducible(aggregated, paper, tmp_path):
    kwargs = {"dataset": "vindr", "label": "Mass", "protocol": "clean", "paper": paper}
    a = efficiency_plot(aggregated, tmp_path / "a.png", **kwargs)
    b = efficiency_plot(aggregated.copy(), tmp_path / "b.png", **kwargs)
    data = a.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data == b.read_bytes()
    assert b"Software" not in data and b"tIME" not in data
    with Image.open(a) as img:
        assert img.size == (900, 600)
    c = efficiency_plot(aggregated, tmp_path / "c.png", dataset="vindr", label="Mass", protocol="clean")
    assert c.read_bytes() != data  # without the paper's values
