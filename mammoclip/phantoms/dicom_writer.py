"""Write single-frame mammography DICOM files with a chosen pixel encoding.

Used by the phantom generator and by tests to produce files in every encoding the real datasets use
(uncompressed, JPEG 2000 lossless, JPEG-LS lossless, JPEG Lossless SV1), every bit depth (12, 14, 16 bits
stored) and both photometric interpretations.

Transfer syntax names (:data:`TRANSFER_SYNTAXES`):

* ``uncompressed``: Explicit VR Little Endian (1.2.840.10008.1.2.1), native Pixel Data.
* ``jpeg2000``: JPEG 2000 Lossless (1.2.840.10008.1.2.4.90), encoded by pydicom with pylibjpeg-openjpeg.
* ``jpegls``: JPEG-LS Lossless (1.2.840.10008.1.2.4.80), encoded by pydicom with pyjpegls.
* ``jpeg_lossless``: JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, Selection Value
  1; 1.2.840.10008.1.2.4.70), the syntax of part of RSNA's files. pydicom has no encoder for it, so the
  frame is encoded with ``imagecodecs.jpeg8_encode(lossless=True, predictor=1)`` (libjpeg-turbo: SOF3,
  predictor 1, no point transform, precision = BitsStored) and encapsulated with
  :func:`pydicom.encaps.encapsulate` (a Basic Offset Table holding offset 0, one fragment), as
  ``Dataset.compress`` does for the other syntaxes. (``imagecodecs.ljpeg_encode`` is not used: it writes
  predictor 6, which is only valid under 1.2.840.10008.1.2.4.57.)

Every syntax is lossless and the bytes written depend only on the arguments.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Literal

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)
from pydicom.valuerep import VR

TransferSyntaxName = Literal["uncompressed", "jpeg2000", "jpegls", "jpeg_lossless"]

TRANSFER_SYNTAXES: dict[str, UID] = {
    "uncompressed": ExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "jpeg_lossless": JPEGLosslessSV1,
}
# Digital Mammography X-Ray Image Storage - For Presentation
MAMMOGRAPHY_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.2")
_ENCODING_PLUGIN = {"jpeg2000": "pylibjpeg", "jpegls": "pyjpegls"}


def deterministic_uid(*parts: object) -> UID:
    """A valid DICOM UID derived only from ``parts`` (same inputs, same UID)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def encode_jpeg_lossless_sv1(pixels: np.ndarray, bits_stored: int) -> bytes:
    """One greyscale frame as a JPEG Lossless Process 14 SV1 codestream (SOF3, predictor 1, Pt 0).

    ``pixels`` are unsigned stored values below ``2**bits_stored`` (2 <= bits_stored <= 16).
    """
    if not 2 <= bits_stored <= 16:  # JPEG lossless sample precision (ITU T.81 B.2.2)
        raise ValueError(f"JPEG Lossless needs 2..16 bits stored, got {bits_stored}")
    data = np.ascontiguousarray(pixels, dtype=np.uint16 if bits_stored > 8 else np.uint8)
    return bytes(imagecodecs.jpeg8_encode(data, lossless=True, predictor=1, bitspersample=bits_stored))


def write_mammogram_dicom(
    path: str | Path,
    stored: np.ndarray,
    *,
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2",
    bits_stored: int = 16,
    transfer_syntax: TransferSyntaxName = "uncompressed",
    rescale_slope: float | None = 1.0,
    rescale_intercept: float | None = 0.0,
    patient_id: str = "0",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    laterality: str = "",
    view_position: str = "",
    extra: dict[str, tuple[str, object]] | None = None,
) -> Path:
    """Write ``stored`` (2-D unsigned integers, the *stored* values) as a DICOM file at ``path``.

    ``stored`` must already respect ``bits_stored`` (values < 2**bits_stored); MONOCHROME1 data must
    already be inverted by the caller. ``extra`` maps keyword -> (VR, value) for additional elements.
    Returns the path written.
    """
    stored = np.asarray(stored)
    if stored.ndim != 2:
        raise ValueError(f"stored pixels must be 2-D, got shape {stored.shape}")
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in 1..16, got {bits_stored}")
    if stored.size and (stored.min() < 0 or int(stored.max()) >= 2**bits_stored):
        raise ValueError(f"pixel values outside [0, 2**{bits_stored}) for {path}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax {transfer_syntax!r} not one of {sorted(TRANSFER_SYNTAXES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(stored.astype(np.uint16))
    study_uid = study_uid or deterministic_uid("study", patient_id, path.name)
    series_uid = series_uid or deterministic_uid("series", study_uid, view_position, laterality)
    sop_uid = sop_uid or deterministic_uid("sop", series_uid, path.name)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MAMMOGRAPHY_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = deterministic_uid("mammoclip-phantoms")

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MAMMOGRAPHY_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = str(patient_id)
    ds.PatientName = f"PHANTOM^{patient_id}"
    ds.Modality = "MG"
    ds.StudyDate = _dt.date(2020, 1, 1).strftime("%Y%m%d")
    ds.Laterality = laterality
    ds.ImageLaterality = laterality
    ds.ViewPosition = view_position
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale_slope is not None:
        ds.RescaleSlope = f"{rescale_slope:g}"
    if rescale_intercept is not None:
        ds.RescaleIntercept = f"{rescale_intercept:g}"
    if rescale_slope is not None or rescale_intercept is not None:
        ds.RescaleType = "US"
    for keyword, (vr, value) in (extra or {}).items():
        ds.add_new(keyword, vr, value)

    if transfer_syntax == "uncompressed":
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
    elif transfer_syntax == "jpeg_lossless":
        ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(pixels, bits_stored)])
        ds["PixelData"].VR = VR.OB  # PS3.5 A.4: encapsulated, undefined length, OB
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    else:
        ds.compress(
            TRANSFER_SYNTAXES[transfer_syntax],
            pixels,
            encoding_plugin=_ENCODING_PLUGIN[transfer_syntax],
            # pydicom would otherwise replace SOPInstanceUID with a random one (non-deterministic files,
            # and the caller's sop_uid silently lost)
            generate_instance_uid=False,
        )
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
