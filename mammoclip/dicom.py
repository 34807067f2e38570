"""Safe DICOM reading for the DICOM -> PNG stage.

The decoder is ``dicomsdl`` (the library upstream Mammo-CLIP uses). dicomsdl 0.109.4 does not raise on many
malformed files: it takes the whole process down instead (segmentation fault or heap corruption). Measured
cases, all guarded here:

* empty file (``open``: double free);
* native (uncompressed) Pixel Data shorter than Rows x Columns x BitsAllocated/8, or a file cut inside the
  Pixel Data value (``open``: segfault, or a silent read past the buffer);
* no Pixel Data element (``pixelData``: segfault);
* JPEG 2000 / JPEG / RLE codestreams whose size disagrees with Rows/Columns (heap overflow).

So every file is first checked with a pydicom header read (no pixel data loaded) plus a byte-level walk of
the Pixel Data element and, for compressed syntaxes, the codestream's frame header. Only a file that passes
is handed to dicomsdl. A failed check raises :class:`ImageReadError` with a stable ``reason`` code:

==============================  ==========================================================================
``missing_file``                the path does not exist / is not a regular file
``not_dicom``                   not a DICOM Part 10 file (no ``DICM`` prefix, unparsable header)
``unsupported_transfer_syntax``  transfer syntax not in :data:`SUPPORTED_TRANSFER_SYNTAXES`
``unsupported_image``           not a single-frame greyscale image this stage can convert (colour, 32-bit,
                                multi-frame, float pixel data, smaller than 11 x 11)
``no_pixel_data``               no top-level Pixel Data element
``truncated``                   Pixel Data shorter than the header needs or cut off by the end of the file
``decode_error``                the codestream disagrees with the header, or the decoder reported an error
==============================  ==========================================================================

(:mod:`mammoclip.preprocess` adds ``constant_image``, ``unreadable_png``, ``write_error`` and
``internal_error``.)

Modality LUT: ``read_dicom(..., modality_lut=False)`` returns exactly what upstream works on, i.e.
``dicomsdl``'s ``pixelData()``: float32 ``stored * RescaleSlope + RescaleIntercept`` computed in float32,
with a Modality LUT Sequence ignored. ``modality_lut=True`` (our default) applies the full DICOM Modality
LUT with :func:`pydicom.pixels.apply_modality_lut` semantics: a Modality LUT Sequence if present (integer
output), otherwise the rescale (computed in float64, returned as float32; pydicom only rescales when both
slope and intercept are present). For the usual mammogram (slope 1, intercept 0, no LUT sequence) both
give the same values. Neither inverts MONOCHROME1 (that is the caller's job).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import dicomsdl
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

__all__ = [
    "ENCAPSULATED_TRANSFER_SYNTAXES",
    "NATIVE_TRANSFER_SYNTAXES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "DecodedPixels",
    "DicomHeader",
    "DicomImage",
    "ImageReadError",
    "decode_stored",
    "legacy_rescale",
    "modality_lut_values",
    "read_dicom",
    "read_header",
]

#: Uncompressed syntaxes: Implicit VR LE, Explicit VR LE, Explicit VR BE (retired but still seen).
NATIVE_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
}
#: Compressed syntaxes dicomsdl decodes by itself and whose frame header we can check before decoding.
ENCAPSULATED_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}
#: Everything else is rejected with ``unsupported_transfer_syntax``. Deliberately excluded although
#: dicomsdl can decode them: Deflated Explicit VR LE (1.2.840.10008.1.2.1.99; Pixel Data offsets are not
#: file offsets, so the truncation check cannot be done without inflating) and RLE Lossless
#: (1.2.840.10008.1.2.5; the RLE header carries no image size and dicomsdl corrupts the heap when the
#: segments disagree with Rows/Columns). Neither is used by the mammography datasets (VinDr, RSNA, CBIS).
SUPPORTED_TRANSFER_SYNTAXES: dict[str, str] = {**NATIVE_TRANSFER_SYNTAXES, **ENCAPSULATED_TRANSFER_SYNTAXES}

_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
_PIXEL_DATA_TAG = 0x7FE00010
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _SEQ_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_CODESTREAM_PEEK = 1 << 16  # bytes of the first fragment read to find the frame header
_MAX_FRAGMENTS = 1 << 20
# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS SOF55.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE_MARKERS = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9}


class ImageReadError(Exception):
    """A source image could not be read; ``reason`` is a stable code, ``detail`` a human explanation."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}: {detail}")


@dataclass(frozen=True)
class DicomHeader:
    """What the pydicom pre-check learned about a file that is safe to hand to dicomsdl."""

    path: str
    transfer_syntax: str
    rows: int
    columns: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    dataset: Dataset = field(repr=False, compare=False)  # header only (no Pixel Data)

    @property
    def has_modality_lut_sequence(self) -> bool:
        return bool(self.dataset.get("ModalityLUTSequence"))


@dataclass(frozen=True)
class DecodedPixels:
    """Stored values decoded by dicomsdl plus the rescale dicomsdl's ``pixelData()`` would apply."""

    header: DicomHeader
    stored: np.ndarray  # integers as decoded (uint8/uint16/int16), shape (rows, columns)
    dicomsdl_slope: float
    dicomsdl_intercept: float


@dataclass(frozen=True)
class DicomImage:
    """A decoded greyscale frame. ``pixels`` is float32 or an integer array (see :func:`read_dicom`)."""

    pixels: np.ndarray
    photometric: str
    bits_stored: int
    rows: int
    columns: int
    transfer_syntax: str
    modality_lut: bool


def read_header(path: str | os.PathLike) -> DicomHeader:
    """Validate ``path`` without decoding pixels; :class:`ImageReadError` if dicomsdl must not see it."""
    path = str(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "missing_file", "no such file")
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            pixel_offset = fp.tell()  # pydicom rewinds to the start of the Pixel Data element
    except InvalidDicomError as exc:
        raise ImageReadError(path, "not_dicom", str(exc).strip()) from exc
    except Exception as exc:  # pydicom raises assorted errors on garbage/cut headers
        raise ImageReadError(path, "not_dicom", f"unreadable header ({type(exc).__name__}: {exc})") from exc

    ts = str(ds.file_meta.get("TransferSyntaxUID", "")).strip()
    if not ts:
        raise ImageReadError(path, "unsupported_transfer_syntax", "no TransferSyntaxUID in the file meta")
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ImageReadError(path, "unsupported_transfer_syntax", f"transfer syntax {ts} is not supported")

    _require_pixel_element(path, ts, pixel_offset, size)  # before the image header: SR, RT plans, ...
    header = _image_header(path, ds, ts)
    _check_pixel_data(header, ts, pixel_offset, size)
    return header


def _require_pixel_element(path: str, ts: str, offset: int, size: int) -> None:
    """Where pydicom stopped there must be the top-level (7FE0,0010) Pixel Data element."""
    with open(path, "rb") as fp:
        fp.seek(offset)
        head = fp.read(4)
    if len(head) < 4:
        raise ImageReadError(path, "no_pixel_data", f"the file ends (byte {size}) without Pixel Data")
    group, element = struct.unpack((">" if ts == "1.2.840.10008.1.2.2" else "<") + "HH", head)
    if (group << 16) | element != _PIXEL_DATA_TAG:
        if group == 0x7FE0:
            raise ImageReadError(path, "unsupported_image", f"pixel element ({group:04X},{element:04X})")
        raise ImageReadError(path, "no_pixel_data", "no top-level Pixel Data element")


def _image_header(path: str, ds: Dataset, ts: str) -> DicomHeader:
    def get_int(keyword: str, default: int | None = None) -> int:
        value = ds.get(keyword, default)
        if value is None or value == "":
            if default is None:
                raise ImageReadError(path, "unsupported_image", f"missing {keyword}")
            return default
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ImageReadError(path, "unsupported_image", f"bad {keyword} {value!r}") from exc

    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    rows, columns = get_int("Rows"), get_int("Columns")
    samples = get_int("SamplesPerPixel", 1)
    bits_allocated, bits_stored = get_int("BitsAllocated"), get_int("BitsStored")
    representation = get_int("PixelRepresentation", 0)
    frames = get_int("NumberOfFrames", 1)
    problems = []
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        problems.append(f"photometric interpretation {photometric or '(missing)'} is not greyscale")
    if samples != 1:
        problems.append(f"{samples} samples per pixel")
    if bits_allocated not in (8, 16):
        problems.append(f"BitsAllocated {bits_allocated} (only 8 and 16 are supported)")
    if not 1 <= bits_stored <= bits_allocated:
        problems.append(f"BitsStored {bits_stored} with BitsAllocated {bits_allocated}")
    if frames > 1:
        problems.append(f"multi-frame image ({frames} frames)")
    if rows < 11 or columns < 11:
        problems.append(f"image of {rows} x {columns} pixels is smaller than 11 x 11")
    if problems:
        raise ImageReadError(path, "unsupported_image", "; ".join(problems))
    return DicomHeader(
        path=path,
        transfer_syntax=ts,
        rows=rows,
        columns=columns,
        photometric=photometric,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=representation,
        dataset=ds,
    )


def _check_pixel_data(header: DicomHeader, ts: str, offset: int, size: int) -> None:
    """Walk the Pixel Data element at ``offset`` and check it is complete and matches the header."""
    path = header.path
    big_endian = ts == "1.2.840.10008.1.2.2"
    implicit = ts == "1.2.840.10008.1.2"
    order = ">" if big_endian else "<"
    with open(path, "rb") as fp:
        fp.seek(offset)
        head = fp.read(12)  # tag already checked by _require_pixel_element
        if implicit:
            header_len, fmt, length_bytes = 8, order + "I", head[4:8]
        elif head[4:6] in _LONG_LENGTH_VRS:
            header_len, fmt, length_bytes = 12, order + "I", head[8:12]
        else:
            header_len, fmt, length_bytes = 8, order + "H", head[6:8]
        if len(head) < header_len:
            raise ImageReadError(path, "truncated", "the file ends inside the Pixel Data element header")
        (length,) = struct.unpack(fmt, length_bytes)
        value_start = offset + header_len

        if ts in NATIVE_TRANSFER_SYNTAXES:
            if length == _UNDEFINED:
                raise ImageReadError(
                    path, "decode_error", "encapsulated Pixel Data in a native transfer syntax"
                )
            needed = header.rows * header.columns * header.bits_allocated // 8
            if length < needed:
                raise ImageReadError(
                    path, "truncated", f"Pixel Data holds {length} bytes, Rows x Columns needs {needed}"
                )
            if value_start + length > size:
                raise ImageReadError(
                    path,
                    "truncated",
                    f"file ends {value_start + length - size} bytes before the end of Pixel Data",
                )
            return

        if length != _UNDEFINED:
            raise ImageReadError(
                path, "decode_error", "compressed transfer syntax but Pixel Data is not encapsulated"
            )
        first_fragment = _walk_fragments(fp, path, value_start, size)
        fp.seek(first_fragment[0])
        peek = fp.read(min(first_fragment[1], _CODESTREAM_PEEK))
    if ts in _J2K:
        frame = _j2k_frame_header(peek)
        kind = "JPEG 2000"
    else:
        frame = _jpeg_frame_header(peek)
        kind = "JPEG-LS" if ts in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81") else "JPEG"
    if frame is None:
        raise ImageReadError(path, "decode_error", f"no {kind} frame header in the first fragment")
    rows, columns, components, precision = frame
    if (rows, columns) != (header.rows, header.columns):
        raise ImageReadError(
            path,
            "decode_error",
            f"{kind} codestream is {rows} x {columns}, header says {header.rows} x {header.columns}",
        )
    if components != 1:
        raise ImageReadError(path, "decode_error", f"{kind} codestream has {components} components")
    if precision > header.bits_allocated:
        raise ImageReadError(
            path, "decode_error", f"{kind} precision {precision} > BitsAllocated {header.bits_allocated}"
        )


def _walk_fragments(fp, path: str, start: int, size: int) -> tuple[int, int]:
    """Check the encapsulated item sequence lies inside the file; return (offset, length) of fragment 1."""
    pos, index, first = start, 0, None
    while index <= _MAX_FRAGMENTS:
        fp.seek(pos)
        item = fp.read(8)
        if len(item) < 8:
            raise ImageReadError(
                path, "truncated", f"encapsulated Pixel Data ends at byte {size} without a sequence delimiter"
            )
        group, element, length = struct.unpack("<HHI", item)
        tag = (group << 16) | element
        if tag == _SEQ_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED:
            raise ImageReadError(path, "decode_error", f"bad item ({group:04X},{element:04X}) in Pixel Data")
        if pos + 8 + length > size:
            raise ImageReadError(
                path,
                "truncated",
                f"Pixel Data item {index} needs {pos + 8 + length - size} bytes beyond the end of the file",
            )
        if index >= 1 and first is None and length > 0:  # item 0 is the Basic Offset Table
            first = (pos + 8, length)
        pos += 8 + length
        index += 1
    else:
        raise ImageReadError(path, "decode_error", "too many Pixel Data fragments")
    if first is None:
        raise ImageReadError(path, "truncated", "encapsulated Pixel Data holds no data fragment")
    return first


def _j2k_frame_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, max precision) from the SIZ marker of a J2K codestream (or JP2 file)."""
    at = data.find(b"\xff\x4f\xff\x51")
    if at < 0 or len(data) < at + 4 + 38:
        return None
    siz = at + 4  # Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz (4 each) Csiz(2)
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[siz + 4 : siz + 20])
    (components,) = struct.unpack(">H", data[siz + 36 : siz + 38])
    ssiz = data[siz + 38 : siz + 38 + 3 * components : 3]
    if len(ssiz) != components or components == 0:
        return None
    precision = max((s & 0x7F) + 1 for s in ssiz)
    return ysiz - yosiz, xsiz - xosiz, components, precision


def _jpeg_frame_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) from the SOF marker of a JPEG / JPEG-LS codestream."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        (seg_len,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 10 > len(data):
                return None
            precision = data[pos + 4]
            rows, columns = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return rows, columns, data[pos + 9], precision
        pos += 2 + seg_len
    return None


def decode_stored(header: DicomHeader) -> DecodedPixels:
    """Decode the stored values with dicomsdl (only call with a header from :func:`read_header`)."""
    try:
        dset = dicomsdl.open(header.path)
        info = dset.getPixelDataInfo()
        stored = dset.pixelData(storedvalue=True)
    except Exception as exc:  # dicomsdl.DicomException, RuntimeError, ...
        raise ImageReadError(header.path, "decode_error", f"{type(exc).__name__}: {exc}") from exc
    if stored.shape != (header.rows, header.columns):
        raise ImageReadError(
            header.path, "decode_error", f"decoded shape {stored.shape} != ({header.rows}, {header.columns})"
        )
    slope, intercept = info.get("RescaleSlope"), info.get("RescaleIntercept")
    return DecodedPixels(
        header=header,
        stored=stored,
        dicomsdl_slope=1.0 if slope is None else float(slope),
        dicomsdl_intercept=0.0 if intercept is None else float(intercept),
    )


def legacy_rescale(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """dicomsdl's ``pixelData()`` rescale, bit for bit: float32 copy, then ``*= slope``, ``+= intercept``."""
    out = stored.astype(np.float32)  # a copy, as np.float32(array)
    out *= slope
    out += intercept
    return out


def modality_lut_values(decoded: DecodedPixels, values: np.ndarray, *, modality_lut: bool) -> np.ndarray:
    """Map stored ``values`` (any integer array) to float32 pixel values.

    ``modality_lut=False``: dicomsdl/upstream (float32 rescale, LUT sequence ignored).
    ``modality_lut=True``: pydicom's ``apply_modality_lut`` then float32.
    The same function is used on whole images and on the range of stored values (to build lookup tables),
    so both give identical results.
    """
    if not modality_lut:
        return legacy_rescale(values, decoded.dicomsdl_slope, decoded.dicomsdl_intercept)
    return np.asarray(_full_modality_lut(decoded.header, np.asarray(values, dtype=np.int64)), np.float32)


def _full_modality_lut(header: DicomHeader, values: np.ndarray) -> np.ndarray:
    try:
        return apply_modality_lut(values, header.dataset)
    except Exception as exc:  # malformed LUT Descriptor / LUT Data, unparsable slope
        raise ImageReadError(
            header.path, "decode_error", f"Modality LUT: {type(exc).__name__}: {exc}"
        ) from exc


def read_dicom(path: str | os.PathLike, *, modality_lut: bool) -> DicomImage:
    """Read one greyscale frame; raise :class:`ImageReadError` instead of crashing on bad files.

    ``modality_lut=False`` reproduces upstream Mammo-CLIP: the array is dicomsdl's ``pixelData()`` (float32,
    RescaleSlope/Intercept applied in float32, a Modality LUT Sequence ignored).
    ``modality_lut=True`` applies the DICOM Modality LUT with pydicom ``apply_modality_lut`` semantics to the
    stored values: the Modality LUT Sequence when present (integer array), else slope/intercept when both
    are present (float32; stored integers returned unchanged when slope is 1 and intercept 0), else the
    stored integers. MONOCHROME1 is never inverted here.
    """
    header = read_header(Path(path))
    if not modality_lut:
        try:
            pixels = dicomsdl.open(header.path).pixelData()
        except Exception as exc:
            raise ImageReadError(header.path, "decode_error", f"{type(exc).__name__}: {exc}") from exc
    else:
        stored = decode_stored(header).stored
        ds = header.dataset
        identity = ds.get("RescaleSlope", 1) == 1 and ds.get("RescaleIntercept", 0) == 0
        if ds.get("ModalityLUTSequence"):
            pixels = _full_modality_lut(header, stored)
        elif "RescaleSlope" in ds and "RescaleIntercept" in ds and not identity:
            pixels = np.asarray(_full_modality_lut(header, stored), dtype=np.float32)
        else:
            pixels = stored
    return DicomImage(
        pixels=pixels,
        photometric=header.photometric,
        bits_stored=header.bits_stored,
        rows=header.rows,
        columns=header.columns,
        transfer_syntax=header.transfer_syntax,
        modality_lut=modality_lut,
    )
