"""mammoclip.bench at a tiny scale: table shape and internal consistency (timings are machine-dependent)."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import synthetic_mammogram

from mammoclip.bench import METHODS, benchmark_preprocessing, format_benchmark


def test_synthetic_mammogram_layout():
    left = synthetic_mammogram(200, 150, side="left", bits_stored=14, seed=1)
    right = synthetic_mammogram(200, 150, side="right", bits_stored=14, seed=1)
    assert left.dtype == np.uint16 and left.max() < 2**14
    assert np.array_equal(right, left[:, ::-1])
    assert left[100, :20].min() > 0.2 * 2**14 and left[5, 140] < 0.05 * 2**14  # tissue at the chest wall


def test_benchmark_table(tmp_path):
    table = benchmark_preprocessing(tmp_path, n_images=1, scale=0.05, width=64, height=96)
    assert list(table.columns) == [
        "syntax",
        "method",
        "images_per_s",
        "seconds_per_image",
        "ratio_to_decode",
        "overhead_vs_decode",
        "speedup_vs_reference",
    ]
    # one row per (syntax, method); by default RSNA's two syntaxes and uncompressed
    assert len(table) == 12 and list(table["syntax"].drop_duplicates()) == [
        "jpeg2000",
        "jpeg_lossless",
        "uncompressed",
    ]
    assert all(tuple(methods) == METHODS for _, methods in table.groupby("syntax")["method"])
    assert (table["seconds_per_image"] > 0).all()
    assert np.allclose(table["images_per_s"] * table["seconds_per_image"], 1.0)
    decode = table[table["method"] == "decode"]
    assert np.allclose(decode["ratio_to_decode"], 1.0)
    reference = table[table["method"] == "upstream reference"]
    assert np.allclose(reference["speedup_vs_reference"], 1.0)
    text = format_benchmark(table)
    assert "ours (legacy)" in text and "upstream reference" in text
    with pytest.raises(ValueError):
        synthetic_mammogram(10, 10, side="middle")


DETECT_COLUMNS = [
    "encoder",
    "device",
    "precision",
    "mode",
    "phase",
    "input",
    "images_per_s",
    "seconds_per_batch",
    "peak_memory_mib",
    "parameters_m",
    "trainable_m",
    "threads",
]


def test_bench_detect_command(capsys, tmp_path):
    """`mammoclip bench detect` on a tiny timm encoder and input: one row per (mode, phase)."""
    import pandas as pd

    from mammoclip.cli import main

    csv = tmp_path / "detect.csv"
    argv = ["bench", "detect", "--encoder", "test_efficientnet", "--size", "64", "--batch-size", "2"]
    argv += ["--steps", "1", "--mode", "ft", "--mode", "freeze", "--fpn-channels", "16", "--csv", str(csv)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == DETECT_COLUMNS
    table = pd.read_csv(csv)
    assert list(table.columns) == DETECT_COLUMNS
    assert list(zip(table["mode"], table["phase"], strict=True)) == [
        ("ft", "inference"),
        ("ft", "train"),
        ("freeze", "inference"),
        ("freeze", "train"),
    ]
    assert (table["device"] == "cpu").all() and (table["input"] == "2x3x64x64").all()
    assert (table["images_per_s"] > 0).all() and (table["peak_memory_mib"] > 0).all()
    assert np.allclose(table["images_per_s"] * table["seconds_per_batch"], 2.0)
    # the frozen encoder does not train: fewer trainable parameters, the same model
    ft, freeze = table.iloc[0], table.iloc[2]
    assert ft["parameters_m"] == freeze["parameters_m"] and ft["trainable_m"] == ft["parameters_m"]
    assert 0 < freeze["trainable_m"] < ft["trainable_m"]
    with pytest.raises(ValueError, match="modes"):
        from mammoclip.bench import benchmark_detection

        benchmark_detection("test_efficientnet", size=64, modes=("lp",))
