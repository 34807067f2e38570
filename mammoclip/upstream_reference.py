"""Plain re-implementation of upstream Mammo-CLIP's CPU DICOM -> PNG conversion (the reference).

Written from a description of upstream's code (docs/upstream.md#preprocessing) for clarity, not speed:
every step is one obvious numpy operation on the whole image, in upstream's dtypes, so that it can serve as
the pixel-equality oracle for ``mammoclip.preprocess`` (``legacy=True``) and as the "upstream" column of the
preprocessing benchmark. It reads with dicomsdl directly, without any safety check: only feed it valid
files (dicomsdl crashes the process on some malformed ones, see :mod:`mammoclip.dicom`).

Steps: dicomsdl ``pixelData()`` (float32, RescaleSlope/Intercept applied, nothing else) -> drop 5 pixels on
every side -> MONOCHROME1: ``max - x`` -> ``x - min``, ``/ max``, ``* 255``, cast to uint8 (truncation) ->
breast extraction on a copy with values <= 40 set to 0 -> ``cv2.resize(img, (width, height), INTER_AREA)``.
A constant image divides 0 by 0 exactly as upstream does (NaN cast to uint8).

:func:`map_box_like_upstream` restates upstream's VinDr detector-box script the same way (one box, one
DICOM, plain Python arithmetic): the oracle for :func:`mammoclip.annotations.vindr.map_boxes_to_png` with
``legacy=True``, which computes the same numbers from the preprocessing manifest alone.
"""

from __future__ import annotations

import os
import warnings

import cv2
import dicomsdl
import numpy as np

__all__ = [
    "breast_indices",
    "convert_like_upstream",
    "extract_breast",
    "map_box_like_upstream",
    "normalise_to_uint8",
    "read_pixels_like_upstream",
    "run_counts",
]


def read_pixels_like_upstream(dicom_path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """dicomsdl's ``pixelData()`` and the PhotometricInterpretation dicomsdl reports."""
    dataset = dicomsdl.open(str(dicom_path))
    pixels = dataset.pixelData()
    photometric = dataset.getPixelDataInfo()["PhotometricInterpretation"]
    return pixels, photometric


def normalise_to_uint8(pixels: np.ndarray, photometric: str) -> np.ndarray:
    """Border crop, MONOCHROME1 inversion and min-max to uint8, step by step as upstream."""
    data = pixels[5:-5, 5:-5]
    if photometric == "MONOCHROME1":
        data = np.amax(data) - data
    data = data - np.min(data)
    with np.errstate(divide="ignore", invalid="ignore"):
        data = data / np.max(data)
        data = (data * 255).astype(np.uint8)
    return data


def run_counts(flags: np.ndarray) -> np.ndarray:
    """For each position, the length of the run of True values containing it, as upstream counts it.

    False positions get -1. Upstream's counter measures a run as (index of the next False, or the last
    index if there is none) minus (index of the previous False, or 0 if there is none) minus 1, so a
    run touching the first or the last position comes out one shorter per touched end.
    """
    n = len(flags)
    counts = np.full(n, -1, dtype=np.int64)
    i = 0
    while i < n:
        if not flags[i]:
            i += 1
            continue
        start = i
        while i < n and flags[i]:
            i += 1
        stop = i  # one past the run
        previous_false = start - 1 if start > 0 else 0
        next_false = stop if stop < n else n - 1
        counts[start:stop] = next_false - previous_false - 1
    return counts


def _longest(flags: np.ndarray) -> np.ndarray:
    counts = run_counts(flags)
    return np.where(counts == counts.max())[0]


def breast_indices(img8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's breast heuristic: the kept ``(row_ind, col_ind)``, longest run(s) of columns, then rows."""
    thresholded = np.where(img8 <= 40, 0, img8)

    height = thresholded.shape[0]
    band_rows = thresholded[height // 2 - int(height * 0.4) : height // 2 + int(height * 0.4)]
    with warnings.catch_warnings():  # an empty band (tiny image) gives NaN std, as upstream
        warnings.simplefilter("ignore", RuntimeWarning)
        column_flags = band_rows.std(axis=0) != 0
    columns = _longest(column_flags)
    thresholded = thresholded[:, columns]

    width = thresholded.shape[1]
    band_columns = thresholded[:, width // 2 - int(width * 0.4) : width // 2 + int(width * 0.4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        row_flags = band_columns.std(axis=1) != 0
    rows = _longest(row_flags)
    return rows, columns


def extract_breast(img8: np.ndarray) -> np.ndarray:
    """The kept rows x columns of the (unthresholded) image."""
    rows, columns = breast_indices(img8)
    return img8.copy()[rows][:, columns]


def map_box_like_upstream(
    dicom_path: str | os.PathLike,
    box: tuple[float, float, float, float],
    width: int = 912,
    height: int = 1520,
) -> tuple[float, float, float, float]:
    """Upstream's detector-box script for one VinDr box ``(xmin, ymin, xmax, ymax)`` (original pixels).

    Recomputes the crop on the DICOM, then, in Python floats: shift by the 5-pixel border with upstream's
    clamps, which compare x against the cropped image's *height* and y against its *width*
    (``max(0, xmin - 5)``, ``max(0, ymin - 5)``, ``min(h, xmax - 5)``, ``min(w, ymax - 5)`` for the cropped
    ``h x w``); subtract the first kept column / row (``col_ind[0]``, ``row_ind[0]``), even when the kept
    indices are not contiguous; scale x by ``width / len(col_ind)`` and y by ``height / len(row_ind)``.
    Nothing is clipped afterwards. A NaN box goes through Python's ``max``/``min`` as upstream's did, which
    return their first argument when compared with NaN.
    """
    pixels, photometric = read_pixels_like_upstream(dicom_path)
    img8 = normalise_to_uint8(pixels, photometric)
    rows, columns = breast_indices(img8)
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    xmin, ymin = max(0, xmin - 5), max(0, ymin - 5)
    xmax, ymax = min(img8.shape[0], xmax - 5), min(img8.shape[1], ymax - 5)
    xmin, xmax = xmin - int(columns[0]), xmax - int(columns[0])
    ymin, ymax = ymin - int(rows[0]), ymax - int(rows[0])
    return (
        xmin * width / len(columns),
        ymin * height / len(rows),
        xmax * width / len(columns),
        ymax * height / len(rows),
    )


def convert_like_upstream(dicom_path: str | os.PathLike, width: int = 912, height: int = 1520) -> np.ndarray:
    """The PNG array upstream would write for ``dicom_path`` (``height`` rows, ``width`` columns)."""
    pixels, photometric = read_pixels_like_upstream(dicom_path)
    img8 = normalise_to_uint8(pixels, photometric)
    breast = extract_breast(img8)
    return cv2.resize(breast, (width, height), interpolation=cv2.INTER_AREA)
