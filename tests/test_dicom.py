"""mammoclip.dicom: decoding in every supported encoding, Modality LUT semantics, and the pre-checks that
keep malformed files away from dicomsdl (which would crash the process instead of raising)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import dicomsdl
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEGLosslessSV1, RLELossless
from synthetic import synthetic_mammogram

from mammoclip.dicom import (
    SUPPORTED_TRANSFER_SYNTAXES,
    ImageReadError,
    read_dicom,
    read_header,
)
from mammoclip.phantoms.dicom_writer import TRANSFER_SYNTAXES, write_mammogram_dicom

IMG = synthetic_mammogram(120, 90, seed=3)  # 12-bit stored values


def _resave(src, dst, *, implicit=False, big_endian=False):
    ds = pydicom.dcmread(src)
    if big_endian:
        ds.PixelData = ds.pixel_array.byteswap().tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    pydicom.dcmwrite(dst, ds, implicit_vr=implicit, little_endian=not big_endian, force_encoding=True)
    return dst


@pytest.mark.parametrize("bits", [12, 14, 16])
@pytest.mark.parametrize(
    "syntax", ["uncompressed", "jpeg2000", "jpegls", "jpeg_lossless", "implicit", "big_endian"]
)
def test_every_encoding_decodes_to_the_stored_values(write_dcm, tmp_path, syntax, bits):
    stored = (IMG.astype(np.int64) * (2**bits - 1) // 4095).astype(np.uint16)
    writer_ts = syntax if syntax in TRANSFER_SYNTAXES else "uncompressed"
    path = write_dcm(stored, bits_stored=bits, transfer_syntax=writer_ts)
    if syntax in ("implicit", "big_endian"):
        path = _resave(
            path, tmp_path / f"{syntax}.dcm", implicit=syntax == "implicit", big_endian=syntax == "big_endian"
        )
    header = read_header(path)
    assert header.transfer_syntax in SUPPORTED_TRANSFER_SYNTAXES
    assert (header.rows, header.columns, header.bits_stored) == (120, 90, bits)
    exact = read_dicom(path, modality_lut=True)
    assert exact.pixels.dtype == np.uint16 and np.array_equal(exact.pixels, stored)
    upstream = read_dicom(path, modality_lut=False)
    assert upstream.pixels.dtype == np.float32 and np.array_equal(upstream.pixels, stored.astype(np.float32))


def _jpeg_segments(codestream: bytes) -> dict[int, bytes]:
    """Marker -> payload of the marker segments before the first SOS (inclusive) of a JPEG codestream."""
    assert codestream[:2] == b"\xff\xd8"
    segments, pos = {}, 2
    while True:
        marker, (length,) = codestream[pos + 1], struct.unpack(">H", codestream[pos + 2 : pos + 4])
        segments[marker] = codestream[pos + 4 : pos + 2 + length]
        if marker == 0xDA:
            return segments
        pos += 2 + length


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_jpeg_lossless_sv1_round_trip(write_dcm, tmp_path, bits, photometric):
    """RSNA's second syntax: the writer makes a standard Process 14 SV1 stream that dicomsdl (our reader)
    and pydicom + pylibjpeg-libjpeg (an independent decoder) both decode to exactly the stored values."""
    rng = np.random.default_rng(bits)
    stored = (IMG.astype(np.int64) * (2**bits - 1) // 4095).astype(np.uint16)
    stored[:8] = rng.integers(0, 2**bits, (8, stored.shape[1]))  # noise: large prediction residuals
    stored[0, :2] = (0, 2**bits - 1)  # both ends of the range
    if photometric == "MONOCHROME1":
        stored = (2**bits - 1 - stored).astype(np.uint16)
    kwargs = {"photometric": photometric, "bits_stored": bits, "transfer_syntax": "jpeg_lossless"}
    path = write_dcm(stored, **kwargs)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70" == JPEGLosslessSV1
    assert ds["PixelData"].VR == "OB" and ds["PixelData"].is_undefined_length
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    segments = _jpeg_segments(frame)
    sof3 = segments[0xC3]  # lossless, Huffman; no other SOF
    assert not {0xC0, 0xC1, 0xC2, 0xC7, 0xF7} & set(segments)
    assert (sof3[0], *struct.unpack(">HH", sof3[1:5]), sof3[5]) == (bits, 120, 90, 1)  # P, Y, X, Nf
    assert segments[0xDA][-3:] == bytes([1, 0, 0])  # Ss = predictor 1, Se = 0, Ah/Al = 0 (no point transform)
    assert frame.rstrip(b"\0").endswith(b"\xff\xd9")

    header = read_header(path)
    assert header.transfer_syntax == JPEGLosslessSV1
    assert (header.photometric, header.bits_stored) == (photometric, bits)
    exact = read_dicom(path, modality_lut=True)
    assert exact.pixels.dtype == np.uint16 and np.array_equal(exact.pixels, stored)
    assert np.array_equal(read_dicom(path, modality_lut=False).pixels, stored.astype(np.float32))
    assert np.array_equal(ds.pixel_array, stored)  # pydicom's decoder agrees
    # deterministic: the same arguments give the same bytes
    again = write_mammogram_dicom(tmp_path / "again" / path.name, stored, **kwargs)
    assert again.read_bytes() == path.read_bytes()


def test_legacy_read_is_dicomsdl_pixeldata(write_dcm):
    path = write_dcm(IMG, rescale_slope=0.37, rescale_intercept=-10.5)
    legacy = read_dicom(path, modality_lut=False).pixels
    assert np.array_equal(legacy, dicomsdl.open(str(path)).pixelData())
    assert np.array_equal(legacy, np.float32(IMG) * np.float32(0.37) + np.float32(-10.5))
    full = read_dicom(path, modality_lut=True).pixels  # pydicom: float64 arithmetic, returned as float32
    assert np.array_equal(full, (IMG * 0.37 - 10.5).astype(np.float32))


def _modality_lut_item(table: np.ndarray, first: int = 0) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table), first, 16]
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "OW", np.asarray(table, dtype="<u2").tobytes())
    return item


def test_modality_lut_sequence_applied_only_with_modality_lut(write_dcm):
    table = (4095 - np.arange(4096)) // 3  # decreasing, integer output
    path = write_dcm(
        IMG,
        rescale_slope=None,
        rescale_intercept=None,
        extra={"ModalityLUTSequence": ("SQ", [_modality_lut_item(table)])},
    )
    ds = pydicom.dcmread(path)
    full = read_dicom(path, modality_lut=True).pixels
    assert np.array_equal(full, apply_modality_lut(ds.pixel_array, ds))
    assert np.array_equal(full, table[IMG])
    assert np.array_equal(read_dicom(path, modality_lut=False).pixels, IMG.astype(np.float32))  # ignored


# ---------------------------------------------------------------------------------------------------
# Bad files. Each is built with pydicom / plain bytes (safe); read_header must reject it before dicomsdl.
# ---------------------------------------------------------------------------------------------------


def _bad_files(tmp_path, write_dcm) -> dict[str, tuple[str, str]]:
    """name -> (path, expected reason of read_header or, for the last group, of the whole conversion)."""
    d = tmp_path / "bad"
    d.mkdir()
    files: dict[str, tuple[str, str]] = {}
    unc = write_dcm(IMG, bits_stored=12)
    j2k = write_dcm(IMG, bits_stored=12, transfer_syntax="jpeg2000")
    jls = write_dcm(IMG, bits_stored=12, transfer_syntax="jpegls")
    ljpeg = write_dcm(IMG, bits_stored=12, transfer_syntax="jpeg_lossless")
    unc_bytes, j2k_bytes = unc.read_bytes(), j2k.read_bytes()

    def put(name, data, reason):
        (d / name).write_bytes(data)
        files[name] = (str(d / name), reason)

    def put_ds(name, ds, reason):
        ds.save_as(d / name, enforce_file_format=True)
        files[name] = (str(d / name), reason)

    put("cut_uncompressed.dcm", unc_bytes[: len(unc_bytes) // 2], "truncated")
    put("cut_last4_uncompressed.dcm", unc_bytes[:-4], "truncated")
    put("cut_j2k.dcm", j2k_bytes[: len(j2k_bytes) // 2], "truncated")
    put("cut_j2k_delimiter.dcm", j2k_bytes[:-8], "truncated")
    put("cut_jpegls.dcm", jls.read_bytes()[:-500], "truncated")
    put("cut_jpeg_lossless.dcm", ljpeg.read_bytes()[:-500], "truncated")
    put("text.dcm", b"this is not a DICOM file\n" * 40, "not_dicom")
    put("empty.dcm", b"", "not_dicom")  # dicomsdl: double free
    files["missing.dcm"] = (str(d / "missing.dcm"), "missing_file")

    ds = pydicom.dcmread(unc)
    del ds.PixelData
    put_ds("no_pixel_data.dcm", ds, "no_pixel_data")  # dicomsdl: segfault in pixelData()
    ds = pydicom.dcmread(unc)
    ds.Rows = ds.Rows + 40
    put_ds("rows_beyond_pixel_data.dcm", ds, "truncated")  # dicomsdl: reads past the buffer
    ds = pydicom.dcmread(j2k)
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.99.1"
    put_ds("made_up_syntax.dcm", ds, "unsupported_transfer_syntax")
    ds = pydicom.dcmread(unc)
    ds.compress(RLELossless)
    put_ds("rle.dcm", ds, "unsupported_transfer_syntax")
    ds = pydicom.dcmread(unc)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    put_ds("palette.dcm", ds, "unsupported_image")
    ds = pydicom.dcmread(j2k)
    ds.Rows = ds.Rows - 20
    put_ds("j2k_rows_too_small.dcm", ds, "decode_error")  # dicomsdl: heap corruption
    ds = pydicom.dcmread(jls)
    ds.Columns = ds.Columns - 10
    put_ds("jls_columns_mismatch.dcm", ds, "decode_error")
    ds = pydicom.dcmread(ljpeg)
    ds.Rows = ds.Rows - 20
    put_ds("jpeg_lossless_rows_mismatch.dcm", ds, "decode_error")
    ds = pydicom.dcmread(j2k)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    put_ds("j2k_precision_over_bits_allocated.dcm", ds, "decode_error")
    return files


def _cut_codestream(j2k_path, dst):
    """A J2K file whose single fragment holds only half the codestream (consistent lengths)."""
    ds = pydicom.dcmread(j2k_path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2 // 2 * 2]])
    ds.save_as(dst, enforce_file_format=True)
    return str(dst)


def test_read_header_rejects_every_bad_file(tmp_path, write_dcm):
    for name, (path, reason) in _bad_files(tmp_path, write_dcm).items():
        with pytest.raises(ImageReadError) as info:
            read_header(path)
        assert info.value.reason == reason, (name, info.value)
        assert info.value.path == path and info.value.detail


def test_bad_files_fail_cleanly_in_a_shard_without_crashing(tmp_path, write_dcm):
    """The whole battery, plus decoder-level errors and a constant image, through convert_images in a child
    process: a dicomsdl crash would show up as a signal exit code instead of failed rows."""
    files = _bad_files(tmp_path, write_dcm)
    j2k = write_dcm(IMG, bits_stored=12, transfer_syntax="jpeg2000")
    files["half_codestream.dcm"] = (_cut_codestream(j2k, tmp_path / "half_codestream.dcm"), "decode_error")
    files["constant.dcm"] = (str(write_dcm(np.full((60, 50), 700, np.uint16))), "constant_image")
    files["good.dcm"] = (str(write_dcm(IMG, bits_stored=12, transfer_syntax="jpegls")), "")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    files["broken.png"] = (str(tmp_path / "broken.png"), "unreadable_png")
    names = list(files)
    shard = pd.DataFrame(
        {
            "image_id": names,
            "patient_id": "p1",
            "source_path": [files[n][0] for n in names],
            "png_path": [str(tmp_path / "out" / f"{n}.png") for n in names],
        }
    )
    shard.to_csv(tmp_path / "shard.csv", index=False)
    script = textwrap.dedent(
        """
        import sys, pandas as pd
        from mammoclip.preprocess import convert_images
        images = pd.read_csv(sys.argv[1], dtype=str)
        manifest = convert_images(images, width=32, height=48, processes=2, progress=False)
        manifest.to_csv(sys.argv[2], index=False)
        """
    )
    out = tmp_path / "manifest.csv"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "shard.csv"), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(manifest["image_id"]) == names
    got = {n: r.split(":", 1)[0] for n, r in zip(manifest["image_id"], manifest["reason"], strict=True)}
    assert got == {n: files[n][1] for n in names}, json.dumps(got, indent=1)
    status = dict(zip(manifest["image_id"], manifest["status"], strict=True))
    assert status == {n: "ok" if n == "good.dcm" else "failed" for n in names}
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["good.dcm.png"]  # failed images leave no PNG (and no temporary file)
