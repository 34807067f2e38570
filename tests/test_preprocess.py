"""mammoclip.preprocess: pixel identity with the upstream reference (legacy), the two documented fixes
(default), the crop box contract, and the shard / manifest plumbing."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from synthetic import synthetic_mammogram

from mammoclip.io import atomic_path
from mammoclip.preprocess import (
    MANIFEST_COLUMNS,
    ConstantImage,
    PreprocessingFailed,
    check_failures,
    combine_manifests,
    convert_images,
    ok_images,
    read_manifest,
    select_run,
    to_uint8,
    write_manifest,
)
from mammoclip.upstream_reference import convert_like_upstream, run_counts

W, H = 96, 160  # PNG size used by the tests


def _ref(path):
    return convert_like_upstream(path, W, H)


def _crop(row):
    return row["crop_x0"], row["crop_y0"], row["crop_x1"], row["crop_y1"]


# ---------------------------------------------------------------------------------------------------
# Run selection and normalisation units
# ---------------------------------------------------------------------------------------------------


def test_upstream_run_counter_edge_quirk():
    assert run_counts(np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], bool)).tolist() == [
        -1, 2, 2, -1, 1, -1, -1, 3, 3, 3, -1,
    ]  # fmt: skip
    assert run_counts(np.array([1, 1, 0], bool)).tolist() == [1, 1, -1]
    assert run_counts(np.ones(7, bool)).tolist() == [5] * 7


def test_select_run_legacy_matches_reference_counter_on_random_flags():
    rng = np.random.default_rng(0)
    for _ in range(300):
        flags = rng.random(int(rng.integers(1, 25))) < rng.random()
        counts = run_counts(flags)
        expected = np.flatnonzero(counts == counts.max())
        got = select_run(flags, legacy=True)
        got = np.arange(got.start, got.stop) if isinstance(got, slice) else got
        assert np.array_equal(got, expected), flags


def test_select_run_default_true_lengths_and_one_run():
    edge_vs_interior = np.array([1, 1, 0, 1, 0], bool)  # legacy: both runs count 1 -> tie
    assert select_run(edge_vs_interior, legacy=True).tolist() == [0, 1, 3]
    assert select_run(edge_vs_interior, legacy=False) == slice(0, 2)
    tie = np.array([0, 1, 1, 0, 1, 1, 0], bool)
    assert select_run(tie, legacy=False) == slice(1, 3)  # no weight: first
    assert select_run(tie, legacy=False, weight=lambda a, b: a) == slice(4, 6)  # heavier second run
    assert select_run(np.zeros(4, bool), legacy=False) == slice(0, 4)
    assert select_run(np.zeros(4, bool), legacy=True) == slice(0, 4)


def test_to_uint8_lookup_table_equals_elementwise():
    rng = np.random.default_rng(1)
    image = rng.integers(100, 3000, (50, 40))
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        for slope, intercept in [(1.0, 0.0), (-1.0, 4095.0), (0.37, -10.5)]:

            def rescale(v, slope=slope, intercept=intercept):
                out = np.float32(v)
                out *= slope
                out += intercept
                return out

            elementwise = to_uint8(rescale(image), photometric=photometric)
            lo = image.min()
            table = to_uint8(rescale(np.arange(lo, image.max() + 1)), photometric=photometric)
            assert np.array_equal(table[image - lo], elementwise)
    with pytest.raises(ConstantImage):
        to_uint8(np.full((4, 4), 7.0, np.float32), photometric="MONOCHROME2")


# ---------------------------------------------------------------------------------------------------
# legacy=True is pixel-identical to the upstream reference
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", ["uncompressed", "jpeg2000", "jpegls", "jpeg_lossless"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_legacy_equals_reference_on_phantoms(write_dcm, convert, syntax, photometric, bits):
    img = synthetic_mammogram(220, 170, side=("left", "right")[bits % 2], bits_stored=bits, seed=bits)
    stored = (2**bits - 1) - img if photometric == "MONOCHROME1" else img
    path = write_dcm(stored, photometric=photometric, bits_stored=bits, transfer_syntax=syntax)
    row, png = convert(path, legacy=True)
    assert row["status"] == "ok" and row["reason"] == ""
    assert png.shape == (H, W) and png.dtype == np.uint8
    assert np.array_equal(png, _ref(path))
    assert (row["orig_height"], row["orig_width"], row["bits_stored"]) == (220, 170, bits)
    assert row["photometric"] == photometric and row["crop_contiguous"]


def _random_blocks(rng, shape, top):
    """Background plus 1-3 textured blocks, often touching an edge, often of equal width (ties)."""
    h, w = shape
    img = np.full(shape, int(rng.integers(0, top // 10)), np.int64)
    width = int(rng.integers(2, max(3, w // 3)))
    for _ in range(int(rng.integers(1, 4))):
        x0 = int(rng.choice([0, w - width, int(rng.integers(0, w - width))]))
        y0 = int(rng.integers(0, h // 2))
        y1 = int(rng.integers(y0 + 2, h + 1))
        img[y0:y1, x0 : x0 + width] = rng.integers(top // 4, top, (y1 - y0, width))
    return img


def _longest_run(flags, weights):
    """Plain statement of the default rule: true run lengths, one run, ties by weight then first."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    if not runs:
        return slice(0, len(flags))
    longest = max(b - a for a, b in runs)
    tied = [(a, b) for a, b in runs if b - a == longest]
    return slice(*max(tied, key=lambda r: (weights[r[0] : r[1]].sum(), -r[0])))


def _default_like(path):
    """The documented default algorithm, elementwise on pydicom's Modality-LUT output."""
    ds = pydicom.dcmread(path)
    values = np.asarray(apply_modality_lut(ds.pixel_array, ds), np.float32)
    img8 = to_uint8(values[5:-5, 5:-5], photometric=ds.PhotometricInterpretation)
    t = np.where(img8 <= 40, 0, img8).astype(np.int64)
    h = t.shape[0]
    band = t[h // 2 - int(h * 0.4) : h // 2 + int(h * 0.4)]
    cols = _longest_run(band.std(axis=0) != 0 if len(band) else np.ones(t.shape[1], bool), band.sum(axis=0))
    w = cols.stop - cols.start
    sub = t[:, cols][:, w // 2 - int(w * 0.4) : w // 2 + int(w * 0.4)]
    rows = _longest_run(sub.std(axis=1) != 0 if sub.shape[1] else np.ones(h, bool), sub.sum(axis=1))
    return cv2.resize(img8[rows, cols], (W, H), interpolation=cv2.INTER_AREA)


def test_both_modes_equal_plain_implementations_on_random_edge_cases(write_dcm, convert):
    """Random blocks (ties, edge-touching runs, non-contiguous legacy crops) with random encodings:
    slopes/intercepts (float32 rescale), MONOCHROME1, signed pixels, tiny images. legacy must equal the
    upstream reference, default the plain elementwise statement of the default algorithm."""
    rng = np.random.default_rng(7)
    non_contiguous = 0
    for i in range(60):
        bits = int(rng.choice([8, 12, 16]))
        shape = (int(rng.integers(11, 70)), int(rng.integers(11, 60)))
        img = _random_blocks(rng, shape, 2**bits - 1)
        slope, intercept = [(1.0, 0.0), (-1.0, 0.0), (0.37, -10.5), (2.5, 100.0)][i % 4]
        path = write_dcm(
            img.astype(np.uint16),
            photometric=("MONOCHROME1", "MONOCHROME2")[i % 2],
            bits_stored=bits if bits > 8 else 12,
            rescale_slope=slope,
            rescale_intercept=intercept,
        )
        if i % 5 == 0:  # signed pixel data: the same bit patterns read as int16
            ds = pydicom.dcmread(path)
            ds.PixelRepresentation = 1
            ds.BitsStored, ds.HighBit = 16, 15
            ds.save_as(path, enforce_file_format=True)
        row, png = convert(path, legacy=True)
        if np.ptp(img[5:-5, 5:-5]) == 0:  # all blocks inside the 5-pixel border
            assert row["reason"].startswith("constant_image") and png is None
            continue
        assert row["status"] == "ok", row["reason"]
        assert np.array_equal(png, _ref(path)), (i, shape)
        non_contiguous += not row["crop_contiguous"]
        default_row, default_png = convert(path)
        assert default_row["crop_contiguous"] and np.array_equal(default_png, _default_like(path)), i
    assert non_contiguous >= 3  # the battery really exercises upstream's tie behaviour


def test_mono1_of_inverted_data_equals_mono2(write_dcm, convert):
    img = synthetic_mammogram(200, 150, seed=5)
    mono2 = write_dcm(img, photometric="MONOCHROME2")
    mono1 = write_dcm(4095 - img, photometric="MONOCHROME1")
    for legacy in (True, False):
        (row2, png2), (row1, png1) = convert(mono2, legacy=legacy), convert(mono1, legacy=legacy)
        assert np.array_equal(png1, png2) and _crop(row1) == _crop(row2)
    assert np.array_equal(png2, _ref(mono1))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_jpeg_lossless_sv1_converts_like_uncompressed(write_dcm, convert, bits, photometric):
    """RSNA's JPEG Lossless SV1 files give the same PNG and manifest as the same pixels uncompressed."""
    img = synthetic_mammogram(210, 160, side="right", bits_stored=bits, seed=bits + 1)
    stored = (2**bits - 1) - img if photometric == "MONOCHROME1" else img
    kwargs = {"photometric": photometric, "bits_stored": bits, "rescale_intercept": -100.0}
    uncompressed = write_dcm(stored, transfer_syntax="uncompressed", **kwargs)
    sv1 = write_dcm(stored, transfer_syntax="jpeg_lossless", **kwargs)
    for legacy in (True, False):
        (row_u, png_u), (row_j, png_j) = convert(uncompressed, legacy=legacy), convert(sv1, legacy=legacy)
        assert row_j["status"] == "ok" and png_j.shape == (H, W)
        assert np.array_equal(png_j, png_u)
        assert (row_u["transfer_syntax"], row_j["transfer_syntax"]) == (
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2.4.70",
        )
        different = {"source_path", "png_path", "transfer_syntax"}
        assert {k: v for k, v in row_j.items() if k not in different} == {
            k: v for k, v in row_u.items() if k not in different
        }
    assert np.array_equal(png_j, _default_like(uncompressed))


def test_left_and_right_breasts_are_mirror_images(write_dcm, convert):
    left = synthetic_mammogram(200, 150, side="left", seed=2)
    (row_l, png_l), (row_r, png_r) = convert(write_dcm(left)), convert(write_dcm(left[:, ::-1].copy()))
    assert np.array_equal(png_r, png_l[:, ::-1])
    assert row_l["crop_x0"] == 5 and row_r["crop_x1"] == 150 - 5  # breast touches the chest-wall edge
    assert row_r["crop_x0"] == 150 - row_l["crop_x1"] and row_l["crop_x1"] < 0.85 * 150  # marker ignored


# ---------------------------------------------------------------------------------------------------
# legacy=False: the two fixes
# ---------------------------------------------------------------------------------------------------


def _texture(shape, lo, hi, seed):
    return np.random.default_rng(seed).integers(lo, hi, shape)


def test_tied_runs_legacy_keeps_both_default_keeps_the_brighter(write_dcm, convert):
    img = np.zeros((200, 160), np.int64)
    img[30:170, 30:60] = _texture((140, 30), 1000, 2000, 1)  # dimmer block, 30 columns
    img[30:170, 100:130] = _texture((140, 30), 2500, 4000, 2)  # brighter block, 30 columns
    path = write_dcm(img.astype(np.uint16))
    legacy_row, legacy_png = convert(path, legacy=True)
    assert np.array_equal(legacy_png, _ref(path))
    assert not legacy_row["crop_contiguous"] and _crop(legacy_row) == (30, 30, 130, 170)
    row, png = convert(path, legacy=False)
    assert row["crop_contiguous"] and _crop(row) == (100, 30, 130, 170)
    expected = cv2.resize(
        to_uint8(img[5:-5, 5:-5].astype(np.float32), photometric="MONOCHROME2")[25:165, 95:125],
        (W, H),
        interpolation=cv2.INTER_AREA,
    )
    assert np.array_equal(png, expected)


def test_edge_touching_breast_counted_in_full_by_default(write_dcm, convert):
    img = np.zeros((200, 160), np.int64)
    img[20:180, 0:36] = _texture((160, 36), 1500, 3000, 3)  # 31 columns after the border crop, at the edge
    img[60:140, 100:130] = _texture((80, 30), 1500, 3000, 4)  # 30 columns, interior (a label)
    path = write_dcm(img.astype(np.uint16))
    legacy_row, legacy_png = convert(path, legacy=True)
    assert np.array_equal(legacy_png, _ref(path))
    assert not legacy_row["crop_contiguous"] and (legacy_row["crop_x0"], legacy_row["crop_x1"]) == (5, 130)
    row, _ = convert(path, legacy=False)
    assert row["crop_contiguous"] and _crop(row) == (5, 20, 36, 180)


def _lut_item(table):
    item = Dataset()
    item.LUTDescriptor = [len(table), 0, 16]
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "OW", np.asarray(table, dtype="<u2").tobytes())
    return item


@pytest.mark.parametrize("shape", ["monotone", "non_monotone"])
def test_modality_lut_sequence_default_vs_legacy(write_dcm, convert, shape):
    img = synthetic_mammogram(200, 150, seed=9)
    s = np.arange(4096)
    table = (4095 - s) // 2 if shape == "monotone" else np.where(s < 2000, s, 4095 - s // 3)
    with_lut = write_dcm(
        img,
        rescale_slope=None,
        rescale_intercept=None,
        extra={"ModalityLUTSequence": ("SQ", [_lut_item(table)])},
    )
    mapped = write_dcm(table[img].astype(np.uint16))  # what the Modality LUT says the pixels are
    raw = write_dcm(img)
    default_row, default_png = convert(with_lut)
    legacy_row, legacy_png = convert(with_lut, legacy=True)
    assert np.array_equal(default_png, convert(mapped)[1])
    assert np.array_equal(legacy_png, convert(raw, legacy=True)[1])  # upstream ignores the LUT
    assert np.array_equal(legacy_png, _ref(with_lut))
    assert not np.array_equal(default_png, legacy_png)


def test_rescale_slope_minus_one_is_applied_in_both_modes(write_dcm, convert):
    """dicomsdl applies RescaleSlope/Intercept too, so a slope of -1 inverts in legacy and default alike."""
    img = synthetic_mammogram(200, 150, seed=4)
    negated = write_dcm(img, rescale_slope=-1.0, rescale_intercept=0.0)
    inverted = write_dcm(4095 - img)
    plain = convert(write_dcm(img))[1]
    for legacy in (True, False):
        png = convert(negated, legacy=legacy)[1]
        assert np.array_equal(png, convert(inverted, legacy=legacy)[1])
        assert not np.array_equal(png, plain)


# ---------------------------------------------------------------------------------------------------
# Crop box contract, failures, atomic writes
# ---------------------------------------------------------------------------------------------------


def test_crop_box_maps_a_known_rectangle(write_dcm, convert):
    img = np.zeros((300, 200), np.int64)
    img[40:260, 0:150] = _texture((220, 150), 1200, 2400, 5)  # breast, touching the left edge
    img[100:130, 60:90] = 4095  # bright rectangle, original coordinates [60, 90) x [100, 130)
    row, png = convert(write_dcm(img.astype(np.uint16)), width=100, height=160)
    assert _crop(row) == (5, 40, 150, 260) and (row["png_width"], row["png_height"]) == (100, 160)

    def to_png(x, y):
        return (
            (x - row["crop_x0"]) * row["png_width"] / (row["crop_x1"] - row["crop_x0"]),
            (y - row["crop_y0"]) * row["png_height"] / (row["crop_y1"] - row["crop_y0"]),
        )

    (px0, py0), (px1, py1) = to_png(60, 100), to_png(90, 130)
    inside = png[int(np.ceil(py0)) : int(py1), int(np.ceil(px0)) : int(px1)]
    assert inside.size > 100 and (inside == 255).all()
    bright = np.argwhere(png == 255)
    assert bright[:, 0].min() >= py0 - 1 and bright[:, 0].max() < py1 + 1
    assert bright[:, 1].min() >= px0 - 1 and bright[:, 1].max() < px1 + 1


def test_constant_image_fails_and_removes_a_stale_png(write_dcm, tmp_path):
    from mammoclip.preprocess import convert_dicom_to_png

    dst = tmp_path / "stale" / "x.png"
    dst.parent.mkdir()
    dst.write_bytes(b"old")
    row = convert_dicom_to_png(write_dcm(np.full((80, 60), 321, np.uint16)), dst, width=W, height=H)
    assert row["status"] == "failed" and row["reason"].startswith("constant_image: ")
    assert not dst.exists() and list(dst.parent.iterdir()) == []
    assert (row["orig_height"], row["orig_width"]) == (80, 60) and pd.isna(row["crop_x0"])


def test_interrupted_write_leaves_nothing(tmp_path):
    dst = tmp_path / "a" / "b.png"

    with pytest.raises(KeyboardInterrupt), atomic_path(dst) as tmp:
        tmp.write_bytes(b"half a png")
        raise KeyboardInterrupt
    assert list(dst.parent.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# Shards, PNG releases, manifests
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def shard(tmp_path, write_dcm):
    good = [write_dcm(synthetic_mammogram(120, 90, seed=i), transfer_syntax="jpegls") for i in range(4)]
    release = tmp_path / "release" / "r1.PNG"
    release.parent.mkdir()
    cv2.imwrite(str(release.with_suffix(".png")), np.full((152, 91), 77, np.uint8))
    release.with_suffix(".png").rename(release)
    broken = tmp_path / "release" / "r2.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    constant = write_dcm(np.zeros((40, 40), np.uint16))
    sources = [*good[:2], release, constant, broken, *good[2:]]
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in (5, 3, 9, 1, 7, 2, 8)],
            "patient_id": ["pB", "pA", "pC", "pA", "pC", "pB", "pA"],
            "source_path": [str(s) for s in sources],
            "png_path": [str(tmp_path / "out" / f"pat{k}" / f"{k}.png") for k in range(7)],
            "laterality": list("LRLRLRL"),
        }
    )


def test_convert_shard_manifest(shard, tmp_path):
    shard.loc[2, "png_path"] = ""  # release PNG used in place
    manifest = convert_images(shard, width=W, height=H, processes=2, progress=False)
    assert list(manifest.columns) == [*MANIFEST_COLUMNS, "laterality"]
    assert list(manifest["image_id"]) == list(shard["image_id"])  # input order
    assert list(manifest["laterality"]) == list(shard["laterality"])
    assert list(manifest["status"]) == ["ok", "ok", "ok", "failed", "failed", "ok", "ok"]
    assert manifest.loc[3, "reason"].startswith("constant_image: ")
    assert manifest.loc[4, "reason"].startswith("unreadable_png: ")
    release = manifest.loc[2]
    assert release["png_path"] == shard.loc[2, "source_path"]
    assert (release["png_height"], release["png_width"]) == (152, 91)
    assert (
        pd.isna(release["crop_x0"]) and pd.isna(release["orig_height"]) and release["transfer_syntax"] == ""
    )
    dicom_ok = manifest[manifest["transfer_syntax"] != ""].query("status == 'ok'")
    assert (dicom_ok["png_height"] == H).all() and dicom_ok["crop_contiguous"].all()
    assert dicom_ok["transfer_syntax"].eq("1.2.840.10008.1.2.4.80").all()
    out = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert out == ["pat0/0.png", "pat1/1.png", "pat5/5.png", "pat6/6.png"]  # no .tmp, no failed PNG
    one_process = convert_images(shard, width=W, height=H, processes=1, progress=False)
    pd.testing.assert_frame_equal(one_process, manifest)


def test_png_release_copied_to_png_path(shard, tmp_path):
    manifest = convert_images(shard.iloc[[2]], progress=False)
    dst = tmp_path / "out" / "pat2" / "2.png"
    assert manifest.loc[0, "status"] == "ok" and manifest.loc[0, "png_path"] == str(dst)
    assert dst.read_bytes() == (tmp_path / "release" / "r1.PNG").read_bytes()


def test_convert_shard_rejects_bad_input_frames(shard):
    with pytest.raises(ValueError, match="duplicate image_id"):
        convert_images(pd.concat([shard, shard.iloc[[0]]]), progress=False)
    with pytest.raises(ValueError, match="lacks columns"):
        convert_images(shard.drop(columns="png_path"), progress=False)


def test_combine_manifests(shard, tmp_path):
    first = convert_images(shard.iloc[:4], width=W, height=H, progress=False)
    second = convert_images(shard.iloc[4:], width=W, height=H, progress=False)
    write_manifest(second, tmp_path / "second.csv")
    assert (tmp_path / "second.csv").exists() and not list(tmp_path.glob(".*.tmp"))
    joined = combine_manifests([first, tmp_path / "second.csv"])
    assert list(joined.columns) == [*MANIFEST_COLUMNS, "laterality"]
    assert list(zip(joined["patient_id"], joined["image_id"], strict=True)) == [
        ("pA", "i1"), ("pA", "i3"), ("pA", "i8"), ("pB", "i2"), ("pB", "i5"), ("pC", "i7"), ("pC", "i9"),
    ]  # fmt: skip
    pd.testing.assert_frame_equal(joined, combine_manifests([second, first]))
    roundtrip = read_manifest(tmp_path / "second.csv")
    pd.testing.assert_frame_equal(roundtrip, second, check_dtype=False)
    assert str(roundtrip["crop_x0"].dtype) == "Int64" and str(roundtrip["crop_contiguous"].dtype) == "boolean"
    with pytest.raises(ValueError, match="duplicate image_id.*i5"):
        combine_manifests([first, first.iloc[[0]]])


def test_check_failures_threshold_both_ways(shard):
    manifest = convert_images(shard, width=W, height=H, progress=False)  # 2 of 7 failed
    check_failures(manifest, 2 / 7)  # exactly at the limit: fine
    check_failures(manifest, 0.5)
    with pytest.raises(PreprocessingFailed) as info:
        check_failures(manifest, 0.2)
    message = str(info.value)
    assert message.startswith("2 of 7 images failed preprocessing")
    for _, failed in manifest[manifest["status"] == "failed"].iterrows():
        assert f"  {failed['source_path']}: {failed['reason']}" in message.splitlines()
    check_failures(manifest[manifest["status"] == "ok"], 0.0)


def test_ok_images_excludes_and_logs(shard, caplog):
    manifest = convert_images(shard, width=W, height=H, progress=False)
    with caplog.at_level(logging.INFO, logger="test"):
        ok = ok_images(manifest, logging.getLogger("test"))
    assert list(ok["image_id"]) == ["i5", "i3", "i9", "i2", "i8"] and (ok["status"] == "ok").all()
    assert "excluded 2 of 7 images (constant_image: 1, unreadable_png: 1)" in caplog.text
