"""DICOM -> PNG preprocessing: upstream Mammo-CLIP's pipeline, fast, with two documented fixes.

Per image (as upstream, docs/upstream.md#preprocessing): decode the stored values, drop a 5-pixel border,
invert MONOCHROME1 (``max - x``), min-max normalise to uint8 by truncation (``(x - min) / max * 255`` in
float32), find the breast on a copy thresholded at <= 40 (longest run of columns that are non-constant over
the central 80 % of rows, then likewise rows over the central 80 % of the kept columns), cut it out of the
unthresholded image, ``cv2.resize(..., (width, height), INTER_AREA)`` and write an 8-bit PNG.

``legacy=True`` is pixel-identical to :func:`mammoclip.upstream_reference.convert_like_upstream` (upstream's
CPU path, incl. its quirks). ``legacy=False`` (the default) differs in exactly two ways:

1. **Breast run selection.** Upstream's run counter counts a run that touches the first/last column (row)
   one short per touched edge, and when several runs share the maximal count it keeps *all* of them, so
   the "crop" can be a non-contiguous set of columns/rows (and a breast attached to the image edge can tie
   with, or lose to, a label marker). The default measures runs by their true length and keeps exactly
   one contiguous run; ties go to the run with the largest sum of thresholded 8-bit intensity over the
   band (then the first one).
2. **Modality LUT.** Upstream uses dicomsdl's ``pixelData()``: RescaleSlope/Intercept in float32 and a
   Modality LUT Sequence ignored. The default applies the full Modality LUT with pydicom's
   ``apply_modality_lut`` semantics (see :mod:`mammoclip.dicom`). For slope 1 / intercept 0 and no LUT
   sequence (typical mammograms) the values, and so the output, are identical.

Everything else (border, inversion, float32 normalisation arithmetic, threshold, band, resize) is shared.

Speed. The min-max normalisation, inversion and modality mapping are functions of the stored integer value,
so they are evaluated once per distinct value in ``[min, max]`` (a lookup table of at most 65 536 entries,
built with exactly the elementwise float32 operations, hence bit-identical) instead of per pixel. When
that table is monotone (always, except for a non-monotone Modality LUT Sequence) the breast search runs on
the stored values directly: a column/row is non-constant after thresholding iff the thresholded levels of
its maximum and minimum differ (for integers, ``std != 0`` <=> ``max != min``), so only the cropped region
is ever converted to 8 bit. PNGs are written with zlib level 1, RLE strategy, SUB filter (OpenCV's default
parameters, stated explicitly): about 250 kB and 10-15 ms for a 1520 x 912 image, versus ~30 ms at level
3 and ~120 ms at level 6 for 2-15 % smaller files; the pixels are identical at any level.

Manifest: :data:`MANIFEST_COLUMNS`. The crop box is in original DICOM pixel coordinates, half-open
``[crop_x0, crop_x1) x [crop_y0, crop_y1)``, including the 5-pixel border offset: exactly the region that
was resized into the PNG (when legacy ties keep non-contiguous columns/rows it is their bounding range and
``crop_contiguous`` is False). ``crop_n_rows`` / ``crop_n_cols`` count the rows/columns actually kept (the
size of the region that was resized; equal to the box extents unless the crop is non-contiguous): upstream's
box script scales by these counts, so legacy box mapping needs them. A point maps to the PNG as ``x_png = (x -
crop_x0) * png_width / (crop_x1 - crop_x0)`` (same for y) when the crop is contiguous.

Failure reason codes: those of :mod:`mammoclip.dicom` plus ``constant_image`` (no contrast after the border
crop), ``unreadable_png`` (PNG-release mode), ``write_error`` (PNG could not be encoded/written) and
``internal_error`` (anything unexpected). A failed image never leaves a PNG behind.
"""

from __future__ import annotations

import collections
import functools
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mammoclip.dicom import DecodedPixels, ImageReadError, decode_stored, modality_lut_values, read_header
from mammoclip.io import atomic_copy, atomic_path, atomic_write

__all__ = [
    "BORDER",
    "INPUT_COLUMNS",
    "MANIFEST_COLUMNS",
    "PNG_PARAMS",
    "THRESHOLD",
    "ConstantImage",
    "CropBox",
    "PreprocessingFailed",
    "check_failures",
    "convert_dicom_to_png",
    "convert_png_release",
    "convert_images",
    "crop_to_breast",
    "combine_manifests",
    "ok_images",
    "preprocess_pixels",
    "read_manifest",
    "resize",
    "select_run",
    "to_uint8",
    "with_kept_counts",
    "write_manifest",
]

log = logging.getLogger(__name__)

BORDER = 5  #: pixels dropped on every side before anything else
THRESHOLD = 40  #: 8-bit values <= this count as background in the breast search
BAND = 0.4  #: the search band is ``n // 2 +- int(n * BAND)`` (central ~80 %)
PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
]

INPUT_COLUMNS = ("image_id", "patient_id", "source_path", "png_path")
MANIFEST_COLUMNS = (
    "image_id",
    "patient_id",
    "source_path",
    "png_path",
    "status",
    "reason",
    "orig_height",
    "orig_width",
    "photometric",
    "bits_stored",
    "transfer_syntax",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "crop_contiguous",
    "crop_n_rows",
    "crop_n_cols",
    "png_height",
    "png_width",
)
_CROP_COLUMNS = ("crop_x0", "crop_y0", "crop_x1", "crop_y1", "crop_contiguous", "crop_n_rows", "crop_n_cols")
#: added after the first release; read_manifest derives them for older manifests
_LATER_COLUMNS = ("crop_n_rows", "crop_n_cols")
_INT_COLUMNS = (
    "orig_height",
    "orig_width",
    "bits_stored",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "crop_n_rows",
    "crop_n_cols",
    "png_height",
    "png_width",
)
_STR_COLUMNS = ("source_path", "png_path", "status", "reason", "photometric", "transfer_syntax")


class ConstantImage(ValueError):
    """The image has a single value after the border crop (upstream would divide by zero)."""


class PreprocessingFailed(RuntimeError):
    """More images failed than the configured fraction allows."""


# --------------------------------------------------------------------------------------------------
# Pixel steps
# --------------------------------------------------------------------------------------------------


def to_uint8(values: np.ndarray, *, photometric: str, occurring: np.ndarray | None = None) -> np.ndarray:
    """Upstream's MONOCHROME1 inversion + min-max to uint8, in upstream's float32 arithmetic.

    Applied to an image it is the elementwise upstream step. Applied to a table of values (one per stored
    integer) it builds the equivalent lookup table: min/max are then taken over the entries flagged in
    ``occurring`` (all entries when None, which is exact whenever the table is monotone and spans the
    image's [min, max]). Raises :class:`ConstantImage` when max == min.
    """
    values = np.asarray(values, dtype=np.float32)

    def present(v: np.ndarray) -> np.ndarray:
        return v if occurring is None else v[occurring]

    if photometric == "MONOCHROME1":
        values = present(values).max() - values
    values = values - present(values).min()
    top = present(values).max()
    if not top > 0:
        raise ConstantImage("the image has a single value after the border crop")
    values = values / top
    values = values * 255
    if occurring is not None:  # entries that never occur may fall outside [0, 255]
        np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


@dataclass(frozen=True)
class CropBox:
    """Kept rows/columns: the half-open bounding range, plus explicit indices when not contiguous."""

    y0: int
    y1: int
    x0: int
    x1: int
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None

    @property
    def contiguous(self) -> bool:
        return self.rows is None and self.cols is None

    @property
    def n_rows(self) -> int:
        """Rows kept (the height of the region that is resized into the PNG)."""
        return self.y1 - self.y0 if self.rows is None else int(self.rows.size)

    @property
    def n_cols(self) -> int:
        """Columns kept (the width of the region that is resized into the PNG)."""
        return self.x1 - self.x0 if self.cols is None else int(self.cols.size)

    def extract(self, img: np.ndarray) -> np.ndarray:
        """The kept region of ``img`` (a view when contiguous)."""
        if self.contiguous:
            return img[self.y0 : self.y1, self.x0 : self.x1]
        rows = np.arange(self.y0, self.y1) if self.rows is None else self.rows
        cols = np.arange(self.x0, self.x1) if self.cols is None else self.cols
        return img[np.ix_(rows, cols)]

    def shifted(self, dy: int, dx: int) -> CropBox:
        return CropBox(
            self.y0 + dy,
            self.y1 + dy,
            self.x0 + dx,
            self.x1 + dx,
            None if self.rows is None else self.rows + dy,
            None if self.cols is None else self.cols + dx,
        )


def _band(n: int) -> slice:
    return slice(n // 2 - int(n * BAND), n // 2 + int(n * BAND))


def select_run(
    flags: np.ndarray, *, legacy: bool, weight: Callable[[int, int], float] | None = None
) -> slice | np.ndarray:
    """Positions of the breast run among non-constant ``flags``; a slice when contiguous.

    legacy: upstream's counter (a run touching an edge counts one less per touched edge; non-flagged
    positions count -1) and every position whose count equals the maximum is kept (ties => possibly
    non-contiguous; nothing flagged => everything kept). Default: true run lengths, one longest run,
    ties broken by the largest ``weight(start, stop)`` then the first; nothing flagged => everything.
    """
    flags = np.asarray(flags, dtype=bool)
    n = flags.size
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if legacy:
        counts = np.full(n, -1, dtype=np.int64)
        lengths = stops - starts - (starts == 0) - (stops == n)
        for start, stop, length in zip(starts, stops, lengths, strict=True):
            counts[start:stop] = length
        keep = np.flatnonzero(counts == counts.max())
        if keep[-1] - keep[0] + 1 == keep.size:
            return slice(int(keep[0]), int(keep[-1]) + 1)
        return keep
    if starts.size == 0:
        return slice(0, n)
    lengths = stops - starts
    best = np.flatnonzero(lengths == lengths.max())
    if best.size > 1 and weight is not None:
        scores = [weight(int(starts[i]), int(stops[i])) for i in best]
        best = best[[int(np.argmax(scores))]]
    return slice(int(starts[best[0]]), int(stops[best[0]]))


def crop_to_breast(img: np.ndarray, *, legacy: bool, levels: np.ndarray | None = None) -> CropBox:
    """Upstream's breast search on ``img`` (coordinates of ``img``, i.e. after the border crop).

    ``img`` is the uint8 image, or (fast path) the stored integer image with ``levels`` mapping each
    stored value to its uint8 level. ``levels`` must be monotone over the values present (then a line
    is non-constant after thresholding iff the thresholded levels of its max and min differ).
    """
    if levels is None:
        if img.dtype != np.uint8:
            raise TypeError("crop_to_breast needs a uint8 image or a levels table")
        levels = np.arange(256, dtype=np.uint8)
    table = np.where(levels <= THRESHOLD, 0, levels).astype(np.int64)
    height, width = img.shape

    def nonconstant(sub: np.ndarray, axis: int, n: int) -> np.ndarray:
        if sub.shape[axis] == 0:  # empty band: upstream's std is NaN, and NaN != 0
            return np.ones(n, dtype=bool)
        return table[sub.max(axis=axis)] != table[sub.min(axis=axis)]

    band = img[_band(height)]
    cols = select_run(
        nonconstant(band, 0, width),
        legacy=legacy,
        weight=lambda a, b: table[band[:, a:b]].sum(),
    )
    if isinstance(cols, slice):
        kept_width = cols.stop - cols.start
        inner = _band(kept_width)
        sub = img[:, cols.start + inner.start : cols.start + inner.stop]
    else:
        sub = img[:, cols[_band(cols.size)]]
    rows = select_run(
        nonconstant(sub, 1, height),
        legacy=legacy,
        weight=lambda a, b: table[sub[a:b]].sum(),
    )

    def bounds(sel: slice | np.ndarray) -> tuple[int, int, np.ndarray | None]:
        if isinstance(sel, slice):
            return sel.start, sel.stop, None
        return int(sel[0]), int(sel[-1]) + 1, sel

    y0, y1, row_index = bounds(rows)
    x0, x1, col_index = bounds(cols)
    return CropBox(y0, y1, x0, x1, row_index, col_index)


def resize(img8: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """``cv2.resize(img8, (width, height), INTER_AREA)``: the PNG has ``height`` rows, ``width`` columns."""
    return cv2.resize(img8, (width, height), interpolation=cv2.INTER_AREA)


def _is_monotone(x: np.ndarray) -> bool:
    d = np.diff(x.astype(np.int16))
    return bool(np.all(d >= 0) or np.all(d <= 0))


def preprocess_pixels(
    decoded: DecodedPixels, *, width: int, height: int, legacy: bool
) -> tuple[np.ndarray, CropBox]:
    """Decoded stored values -> (PNG array of ``height`` x ``width``, crop box in original coordinates)."""
    view = decoded.stored[BORDER:-BORDER, BORDER:-BORDER]
    lo, hi = (int(v) for v in cv2.minMaxLoc(view)[:2])
    if np.issubdtype(view.dtype, np.signedinteger):  # index the table by value - min
        index, base = (view.astype(np.int32) - lo).astype(np.uint16), lo
        lo, hi = 0, hi - lo
    else:
        index, base = view, 0
    values = modality_lut_values(decoded, np.arange(lo, hi + 1) + base, modality_lut=not legacy)
    occurring = None
    if not legacy and decoded.header.has_modality_lut_sequence:  # arbitrary table: use the histogram
        occurring = np.bincount(index.ravel(), minlength=hi + 1)[lo:] > 0
    levels = np.zeros(hi + 1, dtype=np.uint8)
    levels[lo:] = to_uint8(values, photometric=decoded.header.photometric, occurring=occurring)
    if occurring is None or _is_monotone(levels[lo:][occurring]):
        box = crop_to_breast(index, legacy=legacy, levels=levels)
        crop8 = levels[box.extract(index)]
    else:
        img8 = levels[index]
        box = crop_to_breast(img8, legacy=legacy)
        crop8 = box.extract(img8)
    return resize(crop8, width=width, height=height), box.shifted(BORDER, BORDER)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _write_png(dst: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img, PNG_PARAMS)
    if not ok:
        raise OSError("cv2.imencode failed")
    with atomic_write(dst, "wb") as handle:
        handle.write(buf.tobytes())


def _blank_result(src: str | os.PathLike, dst: str | os.PathLike | None) -> dict:
    row: dict = dict.fromkeys(MANIFEST_COLUMNS[2:], pd.NA)
    row.update(
        source_path=str(src),
        png_path="" if dst is None else str(dst),
        status="failed",
        reason="",
        photometric="",
        transfer_syntax="",
    )
    return row


def _fail(row: dict, reason: str, detail: str, dst: Path | None) -> dict:
    row.update(status="failed", reason=f"{reason}: {detail}")
    for key in (*_CROP_COLUMNS, "png_height", "png_width"):
        row[key] = pd.NA
    if dst is not None:
        try:
            dst.unlink(missing_ok=True)  # no stale PNG from an earlier run for a failed image
        except OSError as exc:
            log.warning("could not remove stale %s: %s", dst, exc)
    return row


def convert_dicom_to_png(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    width: int = 912,
    height: int = 1520,
    legacy: bool = False,
) -> dict:
    """Convert one DICOM to an 8-bit PNG at ``dst`` (written atomically); never raises for bad input.

    Returns the manifest fields from ``source_path`` to ``png_width`` (see :data:`MANIFEST_COLUMNS`).
    """
    dst = Path(dst)
    row = _blank_result(src, dst)
    try:
        header = read_header(src)
        row.update(
            orig_height=header.rows,
            orig_width=header.columns,
            photometric=header.photometric,
            bits_stored=header.bits_stored,
            transfer_syntax=header.transfer_syntax,
        )
        png, box = preprocess_pixels(decode_stored(header), width=width, height=height, legacy=legacy)
    except ImageReadError as exc:
        return _fail(row, exc.reason, exc.detail, dst)
    except ConstantImage as exc:
        return _fail(row, "constant_image", str(exc), dst)
    except Exception as exc:
        log.exception("unexpected error converting %s", src)
        return _fail(row, "internal_error", f"{type(exc).__name__}: {exc}", dst)
    try:
        _write_png(dst, png)
    except Exception as exc:
        return _fail(row, "write_error", f"{type(exc).__name__}: {exc}", dst)
    row.update(
        status="ok",
        reason="",
        crop_x0=box.x0,
        crop_y0=box.y0,
        crop_x1=box.x1,
        crop_y1=box.y1,
        crop_contiguous=box.contiguous,
        crop_n_rows=box.n_rows,
        crop_n_cols=box.n_cols,
        png_height=int(png.shape[0]),
        png_width=int(png.shape[1]),
    )
    return row


def convert_png_release(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> dict:
    """Register an already-converted PNG (the authors' releases): check it decodes, record its size.

    No pixel is changed. With ``dst`` (different from ``src``) the file is copied there atomically, else
    ``png_path`` is ``src``. Original size, DICOM fields and the crop box are unknown (left empty).
    """
    src = Path(src)
    same = dst is None or str(dst) == "" or os.path.abspath(dst) == os.path.abspath(src)
    target = src if same or dst is None else Path(dst)
    row = _blank_result(src, target)
    if not src.is_file():
        return _fail(row, "missing_file", "no such file", None if same else target)
    try:
        data = np.fromfile(src, dtype=np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if img is None or data[:8].tobytes() != b"\x89PNG\r\n\x1a\n":
            return _fail(row, "unreadable_png", "not a decodable PNG file", None if same else target)
        if not same:
            atomic_copy(src, target)
    except Exception as exc:
        return _fail(row, "internal_error", f"{type(exc).__name__}: {exc}", None if same else target)
    row.update(status="ok", reason="", png_height=int(img.shape[0]), png_width=int(img.shape[1]))
    return row


# --------------------------------------------------------------------------------------------------
# Shards and manifests
# --------------------------------------------------------------------------------------------------


def _is_png(path: object) -> bool:
    return str(path).lower().endswith(".png")


def _convert_record(record: dict, width: int, height: int, legacy: bool) -> dict:
    src = record["source_path"]
    png_path = record["png_path"]
    png_path = None if png_path is None or pd.isna(png_path) or str(png_path) == "" else str(png_path)
    try:
        if _is_png(src):
            result = convert_png_release(src, png_path)
        elif png_path is None:
            result = _fail(_blank_result(src, None), "internal_error", "no png_path given", None)
        else:
            result = convert_dicom_to_png(src, png_path, width=width, height=height, legacy=legacy)
    except Exception as exc:  # belt and braces: a bad image must never kill the shard
        result = _fail(_blank_result(src, png_path), "internal_error", f"{type(exc).__name__}: {exc}", None)
    return {"image_id": record["image_id"], "patient_id": record["patient_id"], **result}


def _as_bool(value: object) -> object:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return pd.NA
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower(), pd.NA)
    return bool(value)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for col in _INT_COLUMNS:
        frame[col] = pd.array(pd.to_numeric(frame[col], errors="coerce"), dtype="Int64")
    frame["crop_contiguous"] = pd.array([_as_bool(v) for v in frame["crop_contiguous"]], dtype="boolean")
    for col in _STR_COLUMNS:
        frame[col] = frame[col].astype(object).where(frame[col].notna(), "").astype(str)
    return frame


def _empty_manifest(passthrough: Iterable[str] = ()) -> pd.DataFrame:
    return _typed(pd.DataFrame(columns=[*MANIFEST_COLUMNS, *passthrough]))


def convert_images(
    images: pd.DataFrame,
    *,
    width: int = 912,
    height: int = 1520,
    legacy: bool = False,
    processes: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Convert every row of ``images`` and return the manifest (same order as ``images``).

    ``images`` needs ``image_id, patient_id, source_path, png_path``; other columns are passed through
    after the manifest columns. A ``source_path`` ending in .png/.PNG is registered with
    :func:`convert_png_release` (``png_path`` may then be empty: the PNG is used in place); anything else
    is converted with :func:`convert_dicom_to_png`. Bad images become ``failed`` rows.

    ``processes`` > 1 converts in a pool of worker processes. Not threads: dicomsdl and
    pylibjpeg-openjpeg hold the GIL while decoding JPEG 2000 / JPEG-LS, and 2 threads measured 0.85-0.96x
    the speed of 1 on 2 cores.
    """
    missing = [c for c in INPUT_COLUMNS if c not in images.columns]
    if missing:
        raise ValueError(f"convert_images: input lacks columns {missing}")
    clash = [c for c in images.columns if c in MANIFEST_COLUMNS and c not in INPUT_COLUMNS]
    if clash:
        raise ValueError(f"convert_images: input columns {clash} collide with manifest columns")
    dup = images["image_id"][images["image_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"convert_images: duplicate image_id {list(dup[:10])}")
    targets = images["png_path"].dropna().astype(str)
    targets = targets[(targets != "") & ~images.loc[targets.index, "source_path"].map(_is_png)]
    dup = targets[targets.duplicated()].unique()
    if len(dup):
        raise ValueError(f"convert_images: several images write {list(dup[:10])}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    passthrough = [c for c in images.columns if c not in INPUT_COLUMNS]
    records = images.to_dict("records")
    work = functools.partial(_convert_record, width=width, height=height, legacy=legacy)

    bar = tqdm(total=len(records), desc="DICOM->PNG", unit="img", disable=not progress)
    rows = []
    with bar:
        if processes == 1 or len(records) < 2:
            for record in records:
                rows.append(work(record))
                bar.update()
        else:
            # fork, not spawn/forkserver: those re-import the caller's __main__ in every worker, which for a
            # Snakemake script: or an unguarded script re-runs the whole script there
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(processes, len(records)), mp_context=context) as pool:
                for row in pool.map(work, records, chunksize=2):
                    rows.append(row)
                    bar.update()
    for row, record in zip(rows, records, strict=True):
        row.update((c, record[c]) for c in passthrough)
    if not rows:
        return _empty_manifest(passthrough)
    return _typed(pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, *passthrough]))


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (.csv, .tsv or .parquet), with manifest dtypes."""
    path = Path(path)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        ids = dict.fromkeys(("image_id", "patient_id", *_STR_COLUMNS, "crop_contiguous"), str)
        frame = pd.read_csv(path, sep=sep, dtype=ids, low_memory=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns and c not in _LATER_COLUMNS]
    if missing:
        raise ValueError(f"{path}: not a preprocessing manifest (missing columns {missing})")
    return _typed(with_kept_counts(frame))


def with_kept_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """``manifest`` with ``crop_n_rows``/``crop_n_cols`` filled wherever they can be derived.

    Manifests written before these columns existed, or built by hand, lack them. For a contiguous crop
    (or when ``crop_contiguous`` is absent) they are the extents of the crop box; for a non-contiguous
    (legacy tie) crop they cannot be recovered and stay empty (legacy box mapping then asks to rerun
    preprocessing). Recorded values are kept. Returns a copy when anything is filled.
    """
    incomplete = [c for c in _LATER_COLUMNS if c not in manifest.columns or manifest[c].isna().any()]
    if not incomplete:
        return manifest
    if "crop_contiguous" in manifest.columns:
        contiguous = pd.array([_as_bool(v) for v in manifest["crop_contiguous"]], dtype="boolean")
        contiguous = np.asarray(contiguous.fillna(False), dtype=bool)
    else:
        contiguous = np.ones(len(manifest), dtype=bool)
    frame = manifest.copy()
    extents = dict(zip(_LATER_COLUMNS, (("crop_y0", "crop_y1"), ("crop_x0", "crop_x1")), strict=True))
    for column in incomplete:
        lo, hi = extents[column]
        extent = pd.to_numeric(frame[hi], errors="coerce") - pd.to_numeric(frame[lo], errors="coerce")
        derived = extent.where(contiguous)
        frame[column] = (
            pd.to_numeric(frame[column], errors="coerce").fillna(derived) if column in frame else derived
        )
    order = [c for c in MANIFEST_COLUMNS if c in frame.columns]
    return frame[[*order, *(c for c in frame.columns if c not in order)]]


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a manifest atomically (.csv, .tsv or .parquet by suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            manifest.to_parquet(tmp, index=False)
        else:
            manifest.to_csv(tmp, sep="\t" if path.suffix == ".tsv" else ",", index=False)


def combine_manifests(manifests: Iterable[pd.DataFrame | str | os.PathLike]) -> pd.DataFrame:
    """Concatenate shard manifests (frames or paths); reject duplicate image ids; sort by patient, image."""
    frames = [read_manifest(m) if isinstance(m, str | os.PathLike) else m for m in manifests]
    for i, frame in enumerate(frames):
        missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"manifest {i} lacks columns {missing}")
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty_manifest()
    joined = pd.concat(frames, ignore_index=True)
    ids = joined["image_id"].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"duplicate image_id in manifests: {list(dup[:10])}{' ...' if len(dup) > 10 else ''}"
        )
    extra = [c for c in joined.columns if c not in MANIFEST_COLUMNS]
    joined = joined[[*MANIFEST_COLUMNS, *extra]]
    order = joined.assign(_p=joined["patient_id"].astype(str), _i=ids).sort_values(
        ["_p", "_i"], kind="stable"
    )
    return _typed(joined.loc[order.index].reset_index(drop=True))


def _reason_code(reason: str) -> str:
    return str(reason).split(":", 1)[0] or "unknown"


def check_failures(manifest: pd.DataFrame, max_failed_fraction: float) -> None:
    """Raise :class:`PreprocessingFailed` listing every failed image if their fraction exceeds the limit."""
    if not 0.0 <= max_failed_fraction <= 1.0:
        raise ValueError(f"max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
    total = len(manifest)
    failed = manifest[manifest["status"] != "ok"]
    if total == 0 or failed.empty:
        return
    fraction = len(failed) / total
    if fraction > max_failed_fraction:
        lines = [
            f"{len(failed)} of {total} images failed preprocessing ({fraction:.2%}, "
            f"more than the allowed {max_failed_fraction:.2%}):"
        ]
        lines += [
            f"  {src}: {reason}" for src, reason in zip(failed["source_path"], failed["reason"], strict=True)
        ]
        raise PreprocessingFailed("\n".join(lines))


def ok_images(manifest: pd.DataFrame, logger: logging.Logger | None = None) -> pd.DataFrame:
    """The successfully converted rows; logs ``excluded N of M images (reason: count, ...)``."""
    logger = logger or log
    ok = manifest["status"] == "ok"
    excluded = manifest.loc[~ok, "reason"].map(_reason_code)
    counts = collections.Counter(excluded)
    detail = ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))
    message = f"excluded {int((~ok).sum())} of {len(manifest)} images" + (f" ({detail})" if detail else "")
    (logger.warning if counts else logger.info)(message)
    return manifest[ok].reset_index(drop=True)
