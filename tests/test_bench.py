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
