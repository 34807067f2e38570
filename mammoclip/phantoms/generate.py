"""Deterministic phantom versions of VinDr-Mammo, RSNA Screening Mammography and an in-house image+report set.

Each generator writes DICOM files and CSVs in the real dataset's folder layout and exact CSV schema, plus
two truth tables in ``out_dir``:

* ``phantom_truth.csv`` - one row per image (returned as a DataFrame): ``dataset, image_id, patient_id,
  [study_id,] laterality, view, dicom_path`` (relative to ``out_dir``, POSIX), ``height, width`` (= DICOM
  Rows/Columns), ``photometric, bits_stored, transfer_syntax`` (uncompressed/jpeg2000/jpegls/jpeg_lossless),
  ``transfer_syntax_uid, rescale_slope, rescale_intercept``, ``stored_lo, stored_hi`` (stored values of
  display intensity 0 and 1 in the MONOCHROME2 sense; a MONOCHROME1 file holds ``2**bits_stored - 1 - v``),
  ``density`` (A-D as drawn; the dataset CSV may leave it empty), ``has_mass, has_calcification`` (0/1),
  ``n_findings, birads`` (breast level; may be empty for RSNA), ``chest_wall_side`` (left/right),
  ``breast_xmin, breast_ymin, breast_xmax, breast_ymax`` (tight half-open box of the breast tissue mask,
  pectoral muscle included) and a dataset column: ``split`` (VinDr) or ``cancer`` (RSNA). Rows are in
  generation order: row i was drawn from :func:`image_rng` ``(seed, dataset, i)``.
* ``phantom_lesions.csv`` - one row per drawn lesion per image: ``image_id, lesion`` (index within the
  breast, the same lesion in both views), ``finding`` (index of the finding it belongs to within the
  breast), ``category`` (Mass / Suspicious Calcification), ``xmin, ymin, xmax, ymax, quadrant``,
  ``clock`` (o'clock position facing the patient), ``size_mm`` (nominal diameter; reports quote these).

Boxes are in original pixel coordinates and **half-open**: ``xmin``/``ymin`` are the first lesion
column/row, ``xmax``/``ymax`` one past the last, i.e. the tight box of the lesion's drawn pixels with
pixel c covering [c, c + 1). VinDr ``finding_annotations.csv`` boxes are exactly these (as floats); a
combined finding ``['Suspicious Calcification', 'Mass']`` is a mass with a calcification cluster inside
it, and its box is the union of the two lesion boxes, which equals the mass box.

Layouts (relative to ``out_dir``):

* VinDr: ``images/{study_id}/{image_id}.dicom``, ``breast-level_annotations.csv``,
  ``finding_annotations.csv`` (finding rows first, then one ``['No Finding']`` row per image without a
  finding, with empty ``finding_birads`` and boxes). Ids are 32-hex strings; 4 images per study.
* RSNA: ``train_images/{patient_id}/{image_id}.dcm``, ``train.csv`` (integer ids; views CC/MLO plus a few
  ML, LM (each replacing a breast's MLO) and AT (an extra image)).
* In-house: ``images/{patient_id}/{image_id}.dcm`` and ``reports.csv`` with the upstream 17 columns. Here
  ``image_id`` is the file *stem* without extension: a DICOM-UID-like string that itself contains dots
  (e.g. ``1.2.826.0.1.3680043.8.498.123...``), like the real in-house file names; it equals the DICOM
  SOPInstanceUID. Do not derive paths from it with ``Path.with_suffix`` (that would cut at the last dot);
  append the extension instead. ``fold`` is left empty. One report per breast: both views carry it.

Determinism: every random choice comes from ``numpy.random.default_rng([seed, dataset, stream, index])``;
an image's pixels depend only on (seed, dataset, image index, its breast's lesions). The same arguments give
byte-identical CSVs and identical pixel arrays.

Photometric interpretation (MONOCHROME1/2), BitsStored (12/14/16) and transfer syntax are assigned per
image by cycling through seeded permutations of all their combinations, so any dataset with at least
``2 * 3 * len(transfer_syntaxes)`` images contains every combination. The default syntaxes
(:data:`DEFAULT_TRANSFER_SYNTAXES`, the same list as the config default ``phantoms.transfer_syntaxes``)
are all four writer syntaxes, among them both of RSNA's real ones (JPEG 2000 lossless and JPEG Lossless
SV1), so a dataset of at least 24 images holds each of them. One image in four (in seeded blocks) has a
nonzero RescaleIntercept; RescaleSlope is always 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .anatomy import (
    CALCIFICATION,
    MASS,
    LesionSpec,
    intensity_to_stored,
    make_breast_geometry,
    place_lesions,
    render_breast_image,
)
from .dicom_writer import TRANSFER_SYNTAXES, deterministic_uid, write_mammogram_dicom
from .report_text import make_report

DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = ("uncompressed", "jpeg2000", "jpegls", "jpeg_lossless")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
BITS_STORED = (12, 14, 16)
DENSITIES = ("A", "B", "C", "D")
DENSITY_PROBS = (0.15, 0.30, 0.35, 0.20)

TRUTH_CSV = "phantom_truth.csv"
LESIONS_CSV = "phantom_lesions.csv"

VINDR_BREAST_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
]  # fmt: skip
VINDR_FINDING_COLUMNS = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
]  # fmt: skip
RSNA_COLUMNS = [
    "site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "invasive",
    "BIRADS", "implant", "density", "machine_id", "difficult_negative_case",
]  # fmt: skip
INHOUSE_COLUMNS = [
    "patient_id", "GENDER", "AGE", "BIRADS_CATEGORY", "HISTORY", "FINDINGS", "IMPRESSION", "ASSESMENT",
    "RECOMENDATION", "CONCLUSION", "image_id", "fold", "view", "laterality", "img_size_row",
    "img_size_column", "BIRADS_numeric",
]  # fmt: skip
LESION_COLUMNS = [
    "image_id",
    "lesion",
    "finding",
    "category",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "quadrant",
    "clock",
    "size_mm",
]

#: (rows, columns) at full resolution
VINDR_SIZES = ((3518, 2800), (3518, 2560), (2812, 2012), (3580, 2294))
RSNA_MACHINE_SIZES = {
    21: (2776, 2082), 29: (4096, 3328), 48: (4096, 3328), 49: (4096, 3328), 93: (5355, 4915),
    170: (2776, 2082), 190: (3328, 2560), 197: (4096, 3328), 210: (4096, 3328), 216: (5355, 4915),
}  # fmt: skip
RSNA_SITE_MACHINES = {1: (48, 49, 93, 210), 2: (21, 29, 170, 190, 197, 216)}
INHOUSE_SIZES = ((4096, 3328), (3328, 2560), (2294, 1914))
MIN_SIDE = 128

_DATASET_CODES = {"vindr": 1, "rsna": 2, "inhouse": 3}
_META, _BREAST, _IMAGE, _ENCODING, _REPORT = 0, 1, 2, 3, 4


def _rng(seed: int, dataset: str, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _DATASET_CODES[dataset], stream, index])


def image_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    """A fresh copy of the generator that drew image ``index`` (row ``index`` of ``phantom_truth.csv``).

    Feeding it to :func:`~mammoclip.phantoms.anatomy.make_breast_geometry` and then
    :func:`~mammoclip.phantoms.anatomy.render_breast_image` with no lesions reproduces that image's
    lesion-free intensities (used by tests to recover the exact lesion pixels from a decoded DICOM).
    """
    return _rng(seed, dataset, _IMAGE, index)


# --------------------------------------------------------------------------------------------------------
# encodings
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoding:
    """How one image's intensities are stored in its DICOM file."""

    photometric: str
    bits_stored: int
    transfer_syntax: str
    rescale_slope: float
    rescale_intercept: float
    lo_frac: float  # stored value of intensity 0 (MONOCHROME2 sense), as a fraction of 2**bits - 1
    hi_frac: float  # stored value of intensity 1


def _check_transfer_syntaxes(transfer_syntaxes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(transfer_syntaxes, str):
        transfer_syntaxes = (transfer_syntaxes,)
    names = tuple(dict.fromkeys(transfer_syntaxes))
    if not names:
        raise ValueError("transfer_syntaxes must not be empty")
    unknown = [n for n in names if n not in TRANSFER_SYNTAXES]
    if unknown:
        raise ValueError(f"unknown transfer syntax(es) {unknown}; choose from {sorted(TRANSFER_SYNTAXES)}")
    return names


def assign_encodings(n: int, transfer_syntaxes: Sequence[str], rng: np.random.Generator) -> list[Encoding]:
    """Encodings for ``n`` images: seeded permutations of all (photometric, bits, syntax) combinations."""
    names = _check_transfer_syntaxes(transfer_syntaxes)
    combos = list(itertools.product(PHOTOMETRICS, BITS_STORED, names))
    order: list[int] = []
    while len(order) < n:
        order.extend(int(i) for i in rng.permutation(len(combos)))
    intercept_flags: list[bool] = []
    while len(intercept_flags) < n:
        intercept_flags.extend(bool(f) for f in rng.permutation([False, False, False, True]))
    out = []
    for i in range(n):
        photometric, bits, ts = combos[order[i]]
        intercept = float(rng.choice([-1024.0, -100.0, 512.0])) if intercept_flags[i] else 0.0
        out.append(
            Encoding(
                photometric,
                bits,
                ts,
                1.0,
                intercept,
                float(rng.uniform(0.0, 0.03)),
                float(rng.uniform(0.8, 1.0)),
            )
        )
    return out


# --------------------------------------------------------------------------------------------------------
# shared machinery
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Image:
    image_id: str
    patient_id: object
    laterality: str
    view: str
    height: int
    width: int
    rel_path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    extra: dict = field(default_factory=dict)
    index: int = -1
    encoding: Encoding | None = None
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    finding_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


@dataclass
class _Breast:
    laterality: str
    density: str
    findings: list[list[str]]
    images: list[_Image]
    birads: int | None = None
    extra: dict = field(default_factory=dict)
    lesions: list[LesionSpec] = field(default_factory=list)

    @property
    def has_mass(self) -> bool:
        return any(MASS in f for f in self.findings)

    @property
    def has_calcification(self) -> bool:
        return any(CALCIFICATION in f for f in self.findings)


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(MIN_SIDE, round(size[0] * scale)), max(MIN_SIDE, round(size[1] * scale))


def _hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = rng.bytes(16).hex()
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    if high - low < n:
        raise ValueError(f"cannot draw {n} unique integers from [{low}, {high})")
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < n:
        v = int(rng.integers(low, high))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _check_common(n: int, what: str, image_scale: float, seed: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")
    if not (image_scale > 0 and math.isfinite(image_scale)):
        raise ValueError(f"image_scale must be > 0, got {image_scale!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _finding_birads(rng: np.random.Generator, cats: Sequence[str]) -> int:
    if MASS in cats and CALCIFICATION in cats:
        return int(rng.choice([4, 5, 5]))
    return int(rng.choice([3, 4, 4, 5]))


def _sample_findings(
    rng: np.random.Generator, p_mass: float, p_calc: float, p_combined: float, p_second_mass: float
) -> list[list[str]]:
    has_mass = rng.random() < p_mass
    has_calc = rng.random() < p_calc
    if has_mass and has_calc and rng.random() < p_combined:
        return [[CALCIFICATION, MASS]]
    findings: list[list[str]] = []
    if has_mass:
        findings.append([MASS])
        if rng.random() < p_second_mass:
            findings.append([MASS])
    if has_calc:
        findings.append([CALCIFICATION])
    return findings


def _render(
    dataset: str,
    out_dir: Path,
    breasts: Sequence[_Breast],
    *,
    seed: int,
    image_scale: float,
    transfer_syntaxes: Sequence[str],
    progress: bool,
) -> tuple[list[dict], list[dict]]:
    """Place lesions, render, encode and write every image; return (truth rows, lesion rows)."""
    images = [img for br in breasts for img in br.images]
    encodings = assign_encodings(len(images), transfer_syntaxes, _rng(seed, dataset, _ENCODING))
    for i, (img, encoding) in enumerate(zip(images, encodings, strict=True)):
        img.index, img.encoding = i, encoding
    truth: list[dict] = []
    lesion_rows: list[dict] = []
    with tqdm(total=len(images), desc=f"phantoms {dataset}", unit="img", disable=not progress) as bar:
        for b_idx, br in enumerate(breasts):
            rngs = [_rng(seed, dataset, _IMAGE, img.index) for img in br.images]
            geoms = [
                make_breast_geometry(img.height, img.width, img.view, r, scale=image_scale)
                for img, r in zip(br.images, rngs, strict=True)
            ]
            br.lesions = place_lesions(br.findings, geoms, _rng(seed, dataset, _BREAST, b_idx))
            for img, geom, r in zip(br.images, geoms, rngs, strict=True):
                enc = img.encoding
                assert enc is not None
                ph = render_breast_image(
                    geom, br.lesions, density=br.density, laterality=br.laterality, rng=r
                )
                stored = intensity_to_stored(
                    ph.intensity,
                    photometric=enc.photometric,
                    bits_stored=enc.bits_stored,
                    lo_frac=enc.lo_frac,
                    hi_frac=enc.hi_frac,
                )
                write_mammogram_dicom(
                    out_dir / img.rel_path,
                    stored,
                    photometric=enc.photometric,  # type: ignore[arg-type]
                    bits_stored=enc.bits_stored,
                    transfer_syntax=enc.transfer_syntax,  # type: ignore[arg-type]
                    rescale_slope=enc.rescale_slope,
                    rescale_intercept=enc.rescale_intercept,
                    patient_id=str(img.patient_id),
                    study_uid=img.study_uid,
                    series_uid=img.series_uid,
                    sop_uid=img.sop_uid,
                    laterality=img.laterality,
                    view_position=img.view,
                )
                img.boxes = ph.lesion_boxes
                for f_idx in range(len(br.findings)):
                    members = [bx for bx, s in zip(img.boxes, br.lesions, strict=True) if s.finding == f_idx]
                    img.finding_boxes.append(
                        (
                            float(min(b[0] for b in members)),
                            float(min(b[1] for b in members)),
                            float(max(b[2] for b in members)),
                            float(max(b[3] for b in members)),
                        )
                    )
                for l_idx, (spec, box) in enumerate(zip(br.lesions, img.boxes, strict=True)):
                    lesion_rows.append(
                        {
                            "image_id": img.image_id,
                            "lesion": l_idx,
                            "finding": spec.finding,
                            "category": spec.category,
                            "xmin": box[0],
                            "ymin": box[1],
                            "xmax": box[2],
                            "ymax": box[3],
                            "quadrant": spec.quadrant,
                            "clock": spec.clock(br.laterality),
                            "size_mm": spec.size_mm,
                        }
                    )
                bx = ph.breast_box
                row = {
                    "dataset": dataset,
                    "image_id": img.image_id,
                    "patient_id": img.patient_id,
                    **({"study_id": img.patient_id} if dataset == "vindr" else {}),
                    "laterality": img.laterality,
                    "view": img.view,
                    "dicom_path": img.rel_path,
                    "height": img.height,
                    "width": img.width,
                    "photometric": enc.photometric,
                    "bits_stored": enc.bits_stored,
                    "transfer_syntax": enc.transfer_syntax,
                    "transfer_syntax_uid": str(TRANSFER_SYNTAXES[enc.transfer_syntax]),
                    "rescale_slope": enc.rescale_slope,
                    "rescale_intercept": enc.rescale_intercept,
                    "stored_lo": round(enc.lo_frac * (2**enc.bits_stored - 1)),
                    "stored_hi": round(enc.hi_frac * (2**enc.bits_stored - 1)),
                    "density": br.density,
                    "has_mass": int(br.has_mass),
                    "has_calcification": int(br.has_calcification),
                    "n_findings": len(br.findings),
                    "birads": br.birads,
                    "chest_wall_side": ph.chest_wall_side,
                    "breast_xmin": bx[0],
                    "breast_ymin": bx[1],
                    "breast_xmax": bx[2],
                    "breast_ymax": bx[3],
                }
                truth.append(row)
                bar.update(1)
    return truth, lesion_rows


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")


def _finish(
    out_dir: Path, truth: list[dict], lesion_rows: list[dict], extra: Callable[[dict], dict]
) -> pd.DataFrame:
    rows = [{**r, **extra(r)} for r in truth]
    df = pd.DataFrame(rows)
    df["birads"] = df["birads"].astype("Int64")
    _write_csv(df, out_dir / TRUTH_CSV)
    _write_csv(pd.DataFrame(lesion_rows, columns=LESION_COLUMNS), out_dir / LESIONS_CSV)
    return df


def _breast_ids(breasts: Sequence[_Breast]) -> Iterator[tuple[_Breast, _Image]]:
    for br in breasts:
        for img in br.images:
            yield br, img


# --------------------------------------------------------------------------------------------------------
# VinDr-Mammo
# --------------------------------------------------------------------------------------------------------


def generate_vindr(
    out_dir: Path,
    *,
    n_studies: int,
    image_scale: float,
    seed: int,
    test_fraction: float = 0.2,
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    progress: bool = False,
) -> pd.DataFrame:
    """VinDr-Mammo-like phantom: 4 images (L/R x CC/MLO) per study; returns the per-image truth table.

    ``test_fraction`` of the studies (rounded; at least one study in each split when 0 < fraction < 1
    and n_studies >= 2) get ``split == "test"``. About 35 % of breasts carry a mass, 25 % a
    calcification cluster; density is one ACR class per study.
    """
    _check_common(n_studies, "n_studies", image_scale, seed)
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction!r}")
    _check_transfer_syntaxes(transfer_syntaxes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, "vindr", _META)
    study_ids = _hex_ids(rng, n_studies)
    other_ids = iter(_hex_ids(rng, 8 * n_studies))  # series and image ids
    n_test = round(n_studies * test_fraction)
    if 0.0 < test_fraction < 1.0 and n_studies >= 2:
        n_test = min(max(n_test, 1), n_studies - 1)
    test_idx = {int(i) for i in rng.permutation(n_studies)[:n_test]}

    breasts: list[_Breast] = []
    for s, study_id in enumerate(study_ids):
        h, w = _scaled(VINDR_SIZES[int(rng.integers(len(VINDR_SIZES)))], image_scale)
        density = str(rng.choice(DENSITIES, p=DENSITY_PROBS))
        split = "test" if s in test_idx else "training"
        for lat in ("L", "R"):
            findings = _sample_findings(rng, 0.35, 0.25, 0.3, 0.1)
            f_birads = [_finding_birads(rng, f) for f in findings]
            birads = max(f_birads) if findings else (1 if rng.random() < 0.8 else 2)
            images = []
            for view in ("CC", "MLO"):
                series_id, image_id = next(other_ids), next(other_ids)
                images.append(
                    _Image(
                        image_id,
                        study_id,
                        lat,
                        view,
                        h,
                        w,
                        f"images/{study_id}/{image_id}.dicom",
                        study_uid=str(deterministic_uid("vindr-study", study_id)),
                        series_uid=str(deterministic_uid("vindr-series", series_id)),
                        sop_uid=str(deterministic_uid("vindr-image", image_id)),
                        extra={"series_id": series_id},
                    )
                )
            breasts.append(
                _Breast(
                    lat,
                    density,
                    findings,
                    images,
                    birads=birads,
                    extra={"split": split, "finding_birads": f_birads},
                )
            )

    truth, lesion_rows = _render(
        "vindr",
        out_dir,
        breasts,
        seed=seed,
        image_scale=image_scale,
        transfer_syntaxes=transfer_syntaxes,
        progress=progress,
    )

    level_rows, finding_rows, normal_rows = [], [], []
    for br, img in _breast_ids(breasts):
        base = {
            "study_id": img.patient_id,
            "series_id": img.extra["series_id"],
            "image_id": img.image_id,
            "laterality": img.laterality,
            "view_position": img.view,
            "height": img.height,
            "width": img.width,
            "breast_birads": f"BI-RADS {br.birads}",
            "breast_density": f"DENSITY {br.density}",
        }
        level_rows.append({**base, "split": br.extra["split"]})
        if not br.findings:
            normal_rows.append(
                {
                    **base,
                    "finding_categories": "['No Finding']",
                    "finding_birads": None,
                    "xmin": np.nan,
                    "ymin": np.nan,
                    "xmax": np.nan,
                    "ymax": np.nan,
                    "split": br.extra["split"],
                }
            )
        for cats, fb, box in zip(br.findings, br.extra["finding_birads"], img.finding_boxes, strict=True):
            finding_rows.append(
                {
                    **base,
                    "finding_categories": str(list(cats)),
                    "finding_birads": f"BI-RADS {fb}",
                    "xmin": box[0],
                    "ymin": box[1],
                    "xmax": box[2],
                    "ymax": box[3],
                    "split": br.extra["split"],
                }
            )
    _write_csv(
        pd.DataFrame(level_rows, columns=VINDR_BREAST_COLUMNS), out_dir / "breast-level_annotations.csv"
    )
    findings_df = pd.DataFrame(finding_rows + normal_rows, columns=VINDR_FINDING_COLUMNS)
    for c in ("xmin", "ymin", "xmax", "ymax"):
        findings_df[c] = findings_df[c].astype(float)
    _write_csv(findings_df, out_dir / "finding_annotations.csv")
    split_of = {img.image_id: br.extra["split"] for br, img in _breast_ids(breasts)}
    return _finish(out_dir, truth, lesion_rows, lambda r: {"split": split_of[r["image_id"]]})


# --------------------------------------------------------------------------------------------------------
# RSNA Screening Mammography
# --------------------------------------------------------------------------------------------------------

_RSNA_CANCER_FINDINGS = ([[MASS]], [[CALCIFICATION]], [[MASS], [CALCIFICATION]], [[CALCIFICATION, MASS]])
_RSNA_CANCER_PROBS = (0.5, 0.25, 0.15, 0.1)


def generate_rsna(
    out_dir: Path,
    *,
    n_patients: int,
    image_scale: float,
    seed: int,
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    progress: bool = False,
) -> pd.DataFrame:
    """RSNA-like phantom (``train.csv`` + ``train_images/``); returns the per-image truth table.

    About 30 % of patients (at least 2 when n_patients >= 10) have one cancer breast, which carries a mass
    and/or calcification cluster; ~12 % of the other breasts carry a benign-labelled finding. Views are CC
    and MLO; ``max(1, n_patients // 20)`` patients (when n_patients >= 3) each get an ML view and an LM
    view (replacing one breast's MLO) and an extra AT view.
    """
    _check_common(n_patients, "n_patients", image_scale, seed)
    _check_transfer_syntaxes(transfer_syntaxes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, "rsna", _META)
    patient_ids = sorted(_unique_ints(rng, n_patients, 10_000, 65_535))
    perm = [int(i) for i in rng.permutation(n_patients)]
    n_cancer = round(0.3 * n_patients)
    if n_patients >= 10:
        n_cancer = max(2, n_cancer)
    cancer_idx = set(perm[:n_cancer])
    special: dict[int, str] = {}
    if n_patients >= 3:
        k = max(1, n_patients // 20)
        order = [int(i) for i in rng.permutation(n_patients)]
        for j, view in enumerate(("ML", "LM", "AT")):
            for i in order[j * k : (j + 1) * k]:
                special[i] = view
    image_ids = iter(_unique_ints(rng, 4 * n_patients + len(special), 1_000, 2_147_483_647))

    breasts: list[_Breast] = []
    for p, pid in enumerate(patient_ids):
        site = 1 if rng.random() < 0.6 else 2
        machine = int(rng.choice(RSNA_SITE_MACHINES[site]))
        h, w = _scaled(RSNA_MACHINE_SIZES[machine], image_scale)
        age = float(rng.integers(38, 90)) if rng.random() >= 0.03 else np.nan
        density = str(rng.choice(DENSITIES, p=DENSITY_PROBS))
        density_csv = density if (site == 1 or rng.random() < 0.5) else None
        cancer_lat = str(rng.choice(["L", "R"])) if p in cancer_idx else None
        special_lat = str(rng.choice(["L", "R"])) if p in special else None
        study_uid = str(deterministic_uid("rsna-study", pid))
        for lat in ("L", "R"):
            cancer = lat == cancer_lat
            if cancer:
                findings = [list(f) for f in _RSNA_CANCER_FINDINGS[int(rng.choice(4, p=_RSNA_CANCER_PROBS))]]
                invasive = int(rng.random() < 0.7)
                biopsy = 1
            else:
                benign = rng.random() < 0.12
                findings = [[MASS] if rng.random() < 0.6 else [CALCIFICATION]] if benign else []
                invasive = 0
                biopsy = int(benign and rng.random() < 0.5)
            if site == 2:
                birads_csv = None
            elif cancer or biopsy:
                birads_csv = 0
            elif findings:
                birads_csv = 2
            else:
                birads_csv = 1 if rng.random() < 0.85 else 2
            views = ["CC", "MLO"]
            if lat == special_lat:
                if special[p] == "AT":
                    views.append("AT")
                else:
                    views[1] = special[p]
            images = []
            for view in views:
                image_id = next(image_ids)
                images.append(
                    _Image(
                        str(image_id),
                        pid,
                        lat,
                        view,
                        h,
                        w,
                        f"train_images/{pid}/{image_id}.dcm",
                        study_uid=study_uid,
                        series_uid=str(deterministic_uid("rsna-series", pid, image_id)),
                        sop_uid=str(deterministic_uid("rsna-image", pid, image_id)),
                        extra={"image_id": image_id},
                    )
                )
            breasts.append(
                _Breast(
                    lat,
                    density,
                    findings,
                    images,
                    birads=birads_csv,
                    extra={
                        "site_id": site,
                        "age": age,
                        "cancer": int(cancer),
                        "biopsy": biopsy,
                        "invasive": invasive,
                        "density_csv": density_csv,
                        "machine_id": machine,
                        "difficult": bool(biopsy and not cancer),
                    },
                )
            )

    truth, lesion_rows = _render(
        "rsna",
        out_dir,
        breasts,
        seed=seed,
        image_scale=image_scale,
        transfer_syntaxes=transfer_syntaxes,
        progress=progress,
    )
    rows = []
    for br, img in _breast_ids(breasts):
        e = br.extra
        rows.append(
            {
                "site_id": e["site_id"],
                "patient_id": img.patient_id,
                "image_id": img.extra["image_id"],
                "laterality": img.laterality,
                "view": img.view,
                "age": e["age"],
                "cancer": e["cancer"],
                "biopsy": e["biopsy"],
                "invasive": e["invasive"],
                "BIRADS": br.birads,
                "implant": 0,
                "density": e["density_csv"],
                "machine_id": e["machine_id"],
                "difficult_negative_case": e["difficult"],
            }
        )
    df = pd.DataFrame(rows, columns=RSNA_COLUMNS)
    df["BIRADS"] = df["BIRADS"].astype("Int64")
    df["age"] = df["age"].astype(float)
    _write_csv(df, out_dir / "train.csv")
    cancer_of = {img.image_id: br.extra["cancer"] for br, img in _breast_ids(breasts)}
    truth_df = _finish(out_dir, truth, lesion_rows, lambda r: {"cancer": cancer_of[r["image_id"]]})
    return truth_df


# --------------------------------------------------------------------------------------------------------
# in-house image + report
# --------------------------------------------------------------------------------------------------------


def generate_inhouse(
    out_dir: Path,
    *,
    n_patients: int,
    image_scale: float,
    seed: int,
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    progress: bool = False,
) -> pd.DataFrame:
    """In-house image+report phantom (``reports.csv`` + ``images/``); returns the per-image truth table.

    One report per breast (CC and MLO rows carry the same text); ``image_id`` is the DICOM file stem (a
    dotted UID, see the module docstring). About 35 % of breasts carry a mass, 25 % calcifications.
    """
    _check_common(n_patients, "n_patients", image_scale, seed)
    _check_transfer_syntaxes(transfer_syntaxes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, "inhouse", _META)
    patient_ids = sorted(_unique_ints(rng, n_patients, 10_000_000, 100_000_000))
    breasts: list[_Breast] = []
    for pid in patient_ids:
        age = int(rng.integers(40, 86))
        h, w = _scaled(INHOUSE_SIZES[int(rng.integers(len(INHOUSE_SIZES)))], image_scale)
        density = str(rng.choice(DENSITIES, p=DENSITY_PROBS))
        study_uid = str(deterministic_uid("inhouse-study", seed, pid))
        for lat in ("L", "R"):
            findings = _sample_findings(rng, 0.35, 0.25, 0.3, 0.05)
            normal_birads = 1 if rng.random() < 0.75 else 2
            birads = int(rng.choice([0, 3, 4, 4, 5])) if findings else normal_birads
            images = []
            for view in ("CC", "MLO"):
                uid = str(deterministic_uid("inhouse-image", seed, pid, lat, view))
                images.append(
                    _Image(
                        uid,
                        pid,
                        lat,
                        view,
                        h,
                        w,
                        f"images/{pid}/{uid}.dcm",
                        study_uid=study_uid,
                        series_uid=str(deterministic_uid("inhouse-series", seed, pid, lat, view)),
                        sop_uid=uid,
                    )
                )
            breasts.append(_Breast(lat, density, findings, images, birads=birads, extra={"age": age}))

    truth, lesion_rows = _render(
        "inhouse",
        out_dir,
        breasts,
        seed=seed,
        image_scale=image_scale,
        transfer_syntaxes=transfer_syntaxes,
        progress=progress,
    )
    rows = []
    for b_idx, br in enumerate(breasts):
        assert br.birads is not None
        report = make_report(
            _rng(seed, "inhouse", _REPORT, b_idx),
            laterality=br.laterality,
            density=br.density,
            lesions=br.lesions,
            birads=br.birads,
            age=br.extra["age"],
            force_unicode=b_idx == 0,
        )
        for img in br.images:
            rows.append(
                {
                    "patient_id": img.patient_id,
                    "GENDER": "F",
                    "AGE": br.extra["age"],
                    "BIRADS_CATEGORY": f"BIRADS {br.birads}",
                    **report,
                    "image_id": img.image_id,
                    "fold": None,
                    "view": img.view,
                    "laterality": img.laterality,
                    "img_size_row": img.height,
                    "img_size_column": img.width,
                    "BIRADS_numeric": br.birads,
                }
            )
    _write_csv(pd.DataFrame(rows, columns=INHOUSE_COLUMNS), out_dir / "reports.csv")
    return _finish(out_dir, truth, lesion_rows, lambda r: {})
