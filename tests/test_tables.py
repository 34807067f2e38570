"""mammoclip.paper_tables: per-run metrics -> the paper's tables (Markdown/CSV) (the data-efficiency plots:
tests/test_plots.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.paper_tables import (
    aggregate_runs,
    caption_for,
    detection_table,
    paper_table,
    read_paper_results,
    to_markdown,
    write_table_files,
)

# An excerpt of config/paper-results.csv (the whole file: test_read_the_real_paper_results).
PAPER_CSV = """\
# Mammo-CLIP headline results, read off the authors' charts (+-0.01 per cell).
# setting: zs = zero-shot; lp = linear probe; ft = finetune.
dataset,task,label,metric,setting,data_frac,clip_rn50,clip_enb5,mc_enb2,mc_enb5,mc_enb5_vindr
vindr,classification,Suspicious_Calcification,auroc,zs,1.0,0.37,0.53,0.68,0.61,0.62
vindr,classification,Mass,auroc,zs,1.0,0.20,0.32,0.58,0.48,0.76
vindr,classification,Mass,auroc,lp,0.1,0.34,0.52,0.69,0.73,0.80
vindr,classification,Mass,auroc,lp,0.5,0.42,0.57,0.72,0.78,0.84
vindr,classification,Mass,auroc,lp,1.0,0.49,0.59,0.73,0.79,0.86
vindr,classification,Mass,auroc,ft,1.0,0.57,0.78,0.85,0.85,0.88
vindr,classification,density,accuracy,zs,1.0,0.04,0.10,0.13,0.15,0.15
vindr,classification,density,accuracy,lp,0.1,0.55,0.76,0.80,0.83,0.83
vindr,classification,density,accuracy,lp,0.5,0.61,0.76,0.82,0.84,0.86
vindr,classification,density,accuracy,lp,1.0,0.70,0.78,0.84,0.85,0.86
vindr,classification,density,accuracy,ft,1.0,0.72,0.83,0.85,0.88,0.88
rsna,classification,cancer,auroc,zs,1.0,0.28,0.42,0.60,0.62,0.60
vindr,factor_localization,Mass,iou_hit@0.25,weak,1.0,,,0.38,0.45,
"""
REAL_PAPER_CSV = Path(__file__).resolve().parent.parent / "config" / "paper-results.csv"

MC, B2, RAW = "mammoclip", "b2-model-best-epoch-7", "imagenet-b5"


def _run(label, metric, setting, frac, model, value, *, fold=0, seed=0, protocol="paper", **extra):
    paper_model = {MC: "mc_enb5", B2: "mc_enb2"}.get(model, "")
    row = {
        "dataset": "vindr",
        "label": label,
        "metric": metric,
        "setting": setting,
        "data_frac": frac,
        "model": model,
        "paper_model": paper_model,
        "protocol": protocol,
        "fold": fold,
        "seed": seed,
        "value": value,
        "value_low": np.nan,
        "value_high": np.nan,
        "majority_baseline": np.nan,
        "checkpoint": f"ckpt/{model}.tar",
        "code_version": "abc123",
    }
    row.update(extra)
    return row


@pytest.fixture
def paper(tmp_path):
    path = tmp_path / "paper-results.csv"
    path.write_text(PAPER_CSV)
    return read_paper_results(path)


@pytest.fixture
def runs():
    rows = [
        # two folds -> mean 0.72, std sqrt(0.0008)
        _run("Mass", "auroc", "lp", 0.1, MC, 0.70, fold=0, code_version="abc123"),
        _run("Mass", "auroc", "lp", 0.1, MC, 0.74, fold=1, code_version="def456"),
        # a single run keeps its bootstrap interval
        _run("Mass", "auroc", "lp", 1.0, MC, 0.80, value_low=0.75, value_high=0.85),
        # one fold undefined (single-class) -> left out of the mean, counted
        _run("Mass", "auroc", "ft", 1.0, MC, np.nan, fold=0),
        _run("Mass", "auroc", "ft", 1.0, MC, 0.84, fold=1),
        # density: two seeds, majority-class baseline
        _run("density", "accuracy", "lp", 1.0, MC, 0.84, seed=0, majority_baseline=0.77),
        _run("density", "accuracy", "lp", 1.0, MC, 0.86, seed=1, majority_baseline=0.77),
        _run("density", "macro_f1", "lp", 1.0, MC, 0.55, seed=0),
        # a second model compared with mc_enb2, and one without a paper counterpart
        _run("Mass", "auroc", "lp", 0.1, B2, 0.60, seed=0, checkpoint="ckpt/b2-a.tar"),
        _run("Mass", "auroc", "lp", 0.1, B2, 0.64, seed=1, checkpoint="ckpt/b2-b.tar"),
        _run("Mass", "auroc", "lp", 0.5, B2, 0.70),
        _run("Mass", "auroc", "lp", 0.1, RAW, 0.55),
        # the clean protocol must not leak into the paper-protocol table
        _run("Mass", "auroc", "lp", 0.1, MC, 0.65, fold=0, protocol="clean"),
        _run("Mass", "auroc", "lp", 0.1, MC, 0.67, fold=1, protocol="clean"),
    ]
    return pd.DataFrame(rows)


def _cell(table, label, setting, frac, column, metric=None):
    sel = (table["label"] == label) & (table["setting"] == setting) & np.isclose(table["data_frac"], frac)
    if metric is not None:
        sel &= table["metric"] == metric
    assert sel.sum() == 1, (label, setting, frac)
    return table.loc[sel, column].iloc[0]


# ------------------------------------------------------------------------------------------ paper results


def test_read_paper_results_long_form(paper):
    # 13 rows x 5 models, minus 3 blank cells of the localisation row
    assert len(paper) == 13 * 5 - 3
    assert list(paper.columns) == [
        "dataset",
        "task",
        "label",
        "metric",
        "setting",
        "data_frac",
        "paper_model",
        "paper_value",
    ]
    cell = paper[
        (paper["label"] == "Mass")
        & (paper["setting"] == "lp")
        & (paper["data_frac"] == 0.1)
        & (paper["paper_model"] == "mc_enb5")
    ]
    assert cell["paper_value"].tolist() == [0.73]
    assert not paper["paper_value"].isna().any()
    loc = paper[paper["setting"] == "weak"]
    assert sorted(loc["paper_model"]) == ["mc_enb2", "mc_enb5"]


def test_read_the_real_paper_results():
    paper = read_paper_results(REAL_PAPER_CSV)
    assert not paper.duplicated(
        subset=["dataset", "task", "label", "metric", "setting", "data_frac", "paper_model"]
    ).any()
    density = paper[
        (paper["label"] == "density") & (paper["setting"] == "ft") & (paper["paper_model"] == "mc_enb5")
    ]
    assert density["paper_value"].tolist() == [0.88]


# -------------------------------------------------------------------------------------------- aggregation


def test_aggregate_means_stds_and_provenance(runs):
    agg = aggregate_runs(runs)
    assert len(agg) == 9
    key = (agg["model"] == MC) & (agg["protocol"] == "paper") & (agg["label"] == "Mass")
    lp10 = agg[key & (agg["setting"] == "lp") & (agg["data_frac"] == 0.1)].iloc[0]
    assert lp10["mean"] == pytest.approx(0.72)
    assert lp10["std"] == pytest.approx(math.sqrt(0.0008))
    assert (lp10["n"], lp10["n_nan"], lp10["n_runs"]) == (2, 0, 2)
    assert math.isnan(lp10["value_low"]) and math.isnan(lp10["value_high"])
    assert lp10["folds"] == "0,1" and lp10["seeds"] == "0"
    assert lp10["code_versions"] == "abc123; def456"
    assert lp10["checkpoints"] == "ckpt/mammoclip.tar"
    assert lp10["paper_model"] == "mc_enb5"

    single = agg[key & (agg["setting"] == "lp") & (agg["data_frac"] == 1.0)].iloc[0]
    assert (single["mean"], single["value_low"], single["value_high"]) == (0.80, 0.75, 0.85)
    assert math.isnan(single["std"]) and single["n"] == 1

    ft = agg[key & (agg["setting"] == "ft")].iloc[0]
    assert (ft["mean"], ft["n"], ft["n_nan"], ft["n_runs"]) == (0.84, 1, 1, 2)
    assert math.isnan(ft["value_low"])  # two runs: no single bootstrap interval

    dens = agg[(agg["label"] == "density") & (agg["metric"] == "accuracy")].iloc[0]
    assert dens["mean"] == pytest.approx(0.85) and dens["majority_baseline"] == pytest.approx(0.77)
    assert dens["seeds"] == "0,1"
    b2 = agg[(agg["model"] == B2) & (agg["data_frac"] == 0.1)].iloc[0]
    assert b2["checkpoints"] == "ckpt/b2-a.tar; ckpt/b2-b.tar"
    clean = agg[agg["protocol"] == "clean"].iloc[0]
    assert clean["mean"] == pytest.approx(0.66)


def test_aggregate_rejects_bad_input(runs):
    with pytest.raises(ValueError, match="repeat"):
        aggregate_runs(pd.concat([runs, runs.iloc[[0]]]))
    bad = runs.copy()
    bad.loc[0, "protocol"] = "sloppy"
    with pytest.raises(ValueError, match="unknown protocol"):
        aggregate_runs(bad)
    conflict = runs.copy()
    conflict.loc[1, "paper_model"] = "mc_enb2"
    with pytest.raises(ValueError, match="maps to"):
        aggregate_runs(conflict)
    with pytest.raises(ValueError, match="missing columns"):
        aggregate_runs(runs.drop(columns=["value"]))


# -------------------------------------------------------------------------------------------------- table


@pytest.fixture
def table(runs, paper):
    return paper_table(aggregate_runs(runs), paper, protocol="paper")


def test_paper_table_layout_and_order(table):
    # Mass: zs, lp 10/50/100 %, ft; density accuracy: the same five; density macro F1: lp 100 % (ours only)
    layout = list(zip(table["label"], table["metric"], table["setting"], table["data_frac"], strict=True))
    assert layout == [
        ("Mass", "auroc", "zs", 1.0),
        ("Mass", "auroc", "lp", 0.1),
        ("Mass", "auroc", "lp", 0.5),
        ("Mass", "auroc", "lp", 1.0),
        ("Mass", "auroc", "ft", 1.0),
        ("density", "accuracy", "zs", 1.0),
        ("density", "accuracy", "lp", 0.1),
        ("density", "accuracy", "lp", 0.5),
        ("density", "accuracy", "lp", 1.0),
        ("density", "accuracy", "ft", 1.0),
        ("density", "macro_f1", "lp", 1.0),
    ]
    assert set(table["protocol"]) == {"paper"}
    # model column groups, ordered by the paper's columns (mc_enb2 before mc_enb5, unmapped last)
    assert table.attrs["models"] == {B2: "mc_enb2", MC: "mc_enb5", RAW: ""}
    assert "paper mc_enb5" in table.columns and f"{MC} - mc_enb5" in table.columns
    assert not any(c.startswith(f"{RAW} - ") for c in table.columns)


def test_paper_value_and_difference_line_up(table):
    assert _cell(table, "Mass", "lp", 0.1, "paper mc_enb5") == 0.73
    assert _cell(table, "Mass", "lp", 0.1, f"{MC} mean") == pytest.approx(0.72)
    assert _cell(table, "Mass", "lp", 0.1, f"{MC} - mc_enb5") == pytest.approx(-0.01)
    assert _cell(table, "Mass", "lp", 0.1, MC) == "0.720 ± 0.028 (n=2)"
    assert _cell(table, "Mass", "lp", 1.0, MC) == "0.800 [0.750, 0.850]"
    assert _cell(table, "Mass", "lp", 1.0, f"{MC} - mc_enb5") == pytest.approx(0.80 - 0.79)
    assert _cell(table, "Mass", "ft", 1.0, MC) == "0.840 (n=1, 1 NaN)"
    # the second model is compared with its own paper column
    assert _cell(table, "Mass", "lp", 0.1, "paper mc_enb2") == 0.69
    assert _cell(table, "Mass", "lp", 0.1, f"{B2} - mc_enb2") == pytest.approx(0.62 - 0.69)
    assert _cell(table, "Mass", "lp", 0.5, f"{B2} - mc_enb2") == pytest.approx(0.70 - 0.72)
    assert _cell(table, "Mass", "lp", 0.1, RAW) == "0.550 (n=1)"  # no interval given
    # the clean-protocol runs (mean 0.66) are not in the paper-protocol table
    assert 0.66 not in table[f"{MC} mean"].round(6).tolist()


def test_missing_cells_are_empty_not_zero(table):
    # no mammoclip run for Mass lp 50 %: ours and the difference are empty, the paper value is shown
    assert _cell(table, "Mass", "lp", 0.5, MC) == ""
    assert math.isnan(_cell(table, "Mass", "lp", 0.5, f"{MC} mean"))
    assert math.isnan(_cell(table, "Mass", "lp", 0.5, f"{MC} - mc_enb5"))
    assert pd.isna(_cell(table, "Mass", "lp", 0.5, f"{MC} n"))
    assert _cell(table, "Mass", "lp", 0.5, "paper mc_enb5") == 0.78
    # no paper value for macro F1
    assert math.isnan(_cell(table, "density", "lp", 1.0, "paper mc_enb5", metric="macro_f1"))
    # a model without any run in a row: every number of ours is missing, the paper value is not
    for column in ["mean", "std", "low", "high", "- mc_enb2"]:
        assert pd.isna(_cell(table, "Mass", "lp", 1.0, f"{B2} {column}"))
    assert pd.isna(_cell(table, "Mass", "lp", 1.0, f"{B2} n"))
    assert _cell(table, "Mass", "lp", 1.0, B2) == ""
    assert _cell(table, "Mass", "lp", 1.0, "paper mc_enb2") == 0.73


def test_density_row_shows_majority_baseline(table):
    assert _cell(table, "density", "lp", 1.0, "majority baseline", metric="accuracy") == pytest.approx(0.77)
    assert _cell(table, "density", "lp", 1.0, "paper mc_enb5", metric="accuracy") == 0.85
    assert _cell(table, "density", "lp", 1.0, f"{MC} - mc_enb5", metric="accuracy") == pytest.approx(0.0)
    assert table.loc[table["label"] == "Mass", "majority baseline"].isna().all()
    # density rows without runs show the label's baseline too (same evaluation split)
    assert _cell(table, "density", "zs", 1.0, "majority baseline", metric="accuracy") == pytest.approx(0.77)
    assert pd.isna(_cell(table, "density", "lp", 1.0, "majority baseline", metric="macro_f1"))
    md = to_markdown(table)
    row = next(line for line in md.splitlines() if "| density | accuracy | linear probe | 100 % |" in line)
    assert row.startswith("| vindr | density | accuracy | linear probe | 100 % | 0.770 |")
    assert "| 0.850 ± 0.014 (n=2) | 0.85 | 0.00 |" in row


def test_caption_names_protocol_and_metrics(runs, paper, table):
    caption = caption_for(table, "VinDr classification")
    assert caption.startswith("VinDr classification. paper protocol: best epoch chosen on the reported split")
    assert "vindr: AUROC (Mass); accuracy (density); macro F1 (density)" in caption
    assert "Majority baseline" in caption
    clean = paper_table(aggregate_runs(runs), paper, protocol="clean")
    assert "clean protocol: best epoch chosen on a held-out validation part" in caption_for(clean)
    assert len(clean) == 5 and _cell(clean, "Mass", "lp", 0.1, "paper mc_enb5") == 0.73
    with pytest.raises(ValueError, match="protocol"):
        paper_table(aggregate_runs(runs), paper, protocol="other")


def test_markdown_header_and_rows(table):
    md = to_markdown(table, caption="VinDr")
    lines = md.splitlines()
    assert lines[0].startswith("**Table.** VinDr. paper protocol:")
    header, rule, *rows = lines[2:]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == [
        "dataset",
        "label",
        "metric",
        "setting",
        "data",
        "majority baseline",
        B2,
        "paper mc_enb2",
        f"{B2} - mc_enb2",
        MC,
        "paper mc_enb5",
        f"{MC} - mc_enb5",
        RAW,
    ]
    assert rule == "|" + "|".join(["---"] * len(columns)) + "|"
    assert len(rows) == len(table) == 11
    assert all(r.count(" | ") == len(columns) - 1 for r in rows)
    mass10 = next(r for r in rows if "| Mass | AUROC | linear probe | 10 % |" in r)
    assert "| 0.720 ± 0.028 (n=2) | 0.73 | -0.01 |" in mass10
    mass50 = next(r for r in rows if "| Mass | AUROC | linear probe | 50 % |" in r)
    assert "|  | 0.78 |  |" in mass50  # ours and the difference empty, paper shown
    assert md.endswith("\n")


def test_write_table_files_is_deterministic(table, tmp_path):
    md1, csv1 = write_table_files(table, tmp_path / "a" / "vindr", "VinDr")
    md2, csv2 = write_table_files(table.copy(), tmp_path / "b" / "vindr", "VinDr")
    assert (md1.name, csv1.name) == ("vindr.md", "vindr.csv")
    assert csv1.read_bytes() == csv2.read_bytes() and md1.read_bytes() == md2.read_bytes()
    assert md1.read_text() == to_markdown(table, caption="VinDr")
    back = pd.read_csv(csv1)
    assert len(back) == 11 and "paper mc_enb5" in back.columns
    assert b"\r" not in csv1.read_bytes()
    mass10 = back[(back["label"] == "Mass") & (back["setting"] == "lp") & (back["data_frac"] == 0.1)].iloc[0]
    assert mass10["paper mc_enb5"] == 0.73 and mass10[f"{MC} mean"] == pytest.approx(0.72)
    assert math.isnan(back.loc[(back["label"] == "Mass") & (back["data_frac"] == 0.5), f"{MC} mean"].iloc[0])
    # a table read back from CSV (attrs lost) renders the same Markdown
    back.attrs = {}
    assert to_markdown(back, caption="VinDr") == to_markdown(table, caption="VinDr")


# ---------------------------------------------------------------------------------------------- detection

FPS = (0.125, 0.25, 0.5, 1, 2, 4)


def _detection_metrics(label, setting, frac, *, protocol, fold, map50, seed=10, model=MC):
    """One detector run's metrics.csv (design: metric, value, value_low/high, counts + run keys)."""
    rows = [("map50", map50, map50 - 0.1, map50 + 0.1)]
    if protocol == "clean":
        rows.append(("cpm", map50 + 0.2, map50 + 0.1, map50 + 0.3))
        rows += [(f"sensitivity_at_{fp:g}", 0.1 * (i + 1), np.nan, np.nan) for i, fp in enumerate(FPS)]
    return pd.DataFrame(
        [
            {
                "metric": metric,
                "value": value,
                "value_low": low,
                "value_high": high,
                "n_images": 40,
                "n_boxes": 12,
                "n_patients": 10,
                "dataset": "vindr",
                "label": label,
                "setting": setting,
                "data_frac": frac,
                "model": model,
                "paper_model": "mc_enb5" if model == MC else np.nan,
                "protocol": protocol,
                "fold": fold,
                "seed": seed,
                "checkpoint": f"ckpt/{model}.tar",
                "code_version": "abc123",
            }
            for metric, value, low, high in rows
        ]
    )


@pytest.fixture
def detection_frames():
    frames = [
        _detection_metrics("Mass", "freeze", 1.0, protocol="paper", fold=0, map50=0.30),
        _detection_metrics("Mass", "ft", 1.0, protocol="paper", fold=0, map50=0.50),
        _detection_metrics("Suspicious_Calcification", "ft", 0.1, protocol="paper", fold=0, map50=0.10),
    ]
    # clean: two validation folds of Mass ft 100 %
    frames += [
        _detection_metrics("Mass", "ft", 1.0, protocol="clean", fold=k, map50=0.40 + 0.02 * k) for k in (0, 1)
    ]
    return frames


@pytest.fixture
def real_paper():
    return read_paper_results(REAL_PAPER_CSV)


def test_detection_table_paper_protocol(detection_frames, real_paper):
    table = detection_table(detection_frames, real_paper, protocol="paper")
    layout = list(zip(table["label"], table["metric"], table["setting"], table["data_frac"], strict=True))
    # the paper's order (calcification first), frozen encoder before finetune; every paper cell shown
    assert layout == [
        ("Suspicious_Calcification", "map50", "freeze", 1.0),
        ("Suspicious_Calcification", "map50", "ft", 0.1),
        ("Suspicious_Calcification", "map50", "ft", 0.5),
        ("Suspicious_Calcification", "map50", "ft", 1.0),
        ("Mass", "map50", "freeze", 1.0),
        ("Mass", "map50", "ft", 0.1),
        ("Mass", "map50", "ft", 0.5),
        ("Mass", "map50", "ft", 1.0),
    ]
    assert set(table["protocol"]) == {"paper"} and table.attrs["models"] == {MC: "mc_enb5"}
    assert _cell(table, "Mass", "freeze", 1.0, MC) == "0.300 [0.200, 0.400]"
    assert _cell(table, "Mass", "freeze", 1.0, "paper mc_enb5") == 0.35
    assert _cell(table, "Mass", "freeze", 1.0, f"{MC} - mc_enb5") == pytest.approx(0.30 - 0.35)
    assert _cell(table, "Mass", "ft", 1.0, f"{MC} - mc_enb5") == pytest.approx(0.50 - 0.58)
    assert _cell(table, "Suspicious_Calcification", "ft", 0.1, "paper mc_enb5") == 0.12
    # no run: ours and the difference empty, the paper's value shown
    assert (
        _cell(table, "Mass", "ft", 0.5, MC) == "" and _cell(table, "Mass", "ft", 0.5, "paper mc_enb5") == 0.52
    )
    assert math.isnan(_cell(table, "Mass", "ft", 0.5, f"{MC} - mc_enb5"))
    md = to_markdown(table, caption="Detection")
    assert md.startswith(
        "**Table.** Detection. paper protocol (upstream): VinDr images with at least one box"
    )
    assert (
        "best epoch chosen on the test split" in md
        and "vindr: mAP@0.5 (Suspicious_Calcification, Mass)" in md
    )
    assert "majority baseline" not in md.splitlines()[2]  # no baseline column for detection
    row = next(line for line in md.splitlines() if "| Mass | mAP@0.5 | frozen encoder | 100 % |" in line)
    assert row.endswith("| 0.300 [0.200, 0.400] | 0.35 | -0.05 |")
    with pytest.raises(ValueError, match="protocol"):
        detection_table(detection_frames, real_paper, protocol="other")


def test_detection_table_clean_protocol_froc_rows(detection_frames, real_paper, tmp_path):
    table = detection_table(detection_frames, real_paper, protocol="clean")
    mass = table[table["label"] == "Mass"]
    # the paper's AP rows, then CPM and the sensitivities by FP rate (ours only)
    metrics = list(dict.fromkeys(mass["metric"]))
    assert metrics == ["map50", "cpm", *(f"sensitivity_at_{fp:g}" for fp in FPS)]
    assert _cell(table, "Mass", "ft", 1.0, MC, metric="map50") == "0.410 ± 0.014 (n=2)"
    assert _cell(table, "Mass", "ft", 1.0, f"{MC} - mc_enb5", metric="map50") == pytest.approx(0.41 - 0.58)
    assert _cell(table, "Mass", "ft", 1.0, f"{MC} mean", metric="cpm") == pytest.approx(0.61)
    assert math.isnan(_cell(table, "Mass", "ft", 1.0, "paper mc_enb5", metric="cpm"))
    assert math.isnan(_cell(table, "Mass", "ft", 1.0, f"{MC} - mc_enb5", metric="cpm"))
    assert _cell(table, "Mass", "ft", 1.0, MC, metric="sensitivity_at_4") == "0.600 ± 0.000 (n=2)"
    assert len(table[table["metric"] == "cpm"]) == 1  # FROC rows only where we ran
    # the paper-protocol runs are not in the clean table
    ap = table.loc[table["metric"] == "map50", f"{MC} mean"]
    assert ap.dropna().round(6).tolist() == [0.41]
    caption = caption_for(table, "Detection")
    assert "clean protocol: training images include negatives" in caption
    assert "CPM (Mass); sensitivity at 0.125 FP/image (Mass)" in caption
    md1, csv1 = write_table_files(table, tmp_path / "a" / "detection", "Detection")
    md2, _ = write_table_files(table.copy(), tmp_path / "b" / "detection", "Detection")
    assert md1.read_bytes() == md2.read_bytes()
    text = md1.read_text()
    assert "| vindr | Mass | CPM | finetune | 100 % | 0.610 ± 0.014 (n=2) |  |  |" in text
    assert "| vindr | Mass | sensitivity at 0.125 FP/image | finetune | 100 % |" in text
    # read back from the CSV (attrs lost): same Markdown, detection caption included
    back = pd.read_csv(csv1)
    assert to_markdown(back, caption="Detection") == text
    # no run of the protocol: the table is empty, not an error
    assert detection_table(detection_frames[:1], real_paper, protocol="clean").empty
