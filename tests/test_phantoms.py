"""Tests of the phantom dataset generators (mammoclip.phantoms)."""

from __future__ import annotations

import ast
import csv
import itertools
import re
from pathlib import Path

import dicomsdl
import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy import ndimage

from mammoclip.config import load_config, load_schema
from mammoclip.phantoms import (
    INHOUSE_COLUMNS,
    RSNA_COLUMNS,
    VINDR_BREAST_COLUMNS,
    VINDR_FINDING_COLUMNS,
    generate_inhouse,
    generate_rsna,
    generate_vindr,
    image_rng,
)
from mammoclip.phantoms.anatomy import (
    CALCIFICATION,
    MASS,
    make_breast_geometry,
    place_lesions,
    render_breast_image,
)
from mammoclip.phantoms.dicom_writer import TRANSFER_SYNTAXES
from mammoclip.phantoms.generate import DEFAULT_TRANSFER_SYNTAXES, RSNA_MACHINE_SIZES, VINDR_SIZES
from mammoclip.stages import phantom

SCALE = 0.1
VINDR_SEED = 3  # this seed's 10 studies hold every finding type, incl. a combined calcification + mass
HEX32 = re.compile(r"^[0-9a-f]{32}$")
VINDR_CSVS = (
    "breast-level_annotations.csv",
    "finding_annotations.csv",
    "phantom_truth.csv",
    "phantom_lesions.csv",
)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def vindr(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vindr")
    generate_vindr(out, n_studies=10, image_scale=SCALE, seed=VINDR_SEED)
    return out


@pytest.fixture(scope="module")
def vindr_same_seed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vindr_again")
    generate_vindr(out, n_studies=10, image_scale=SCALE, seed=VINDR_SEED)
    return out


@pytest.fixture(scope="module")
def rsna(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rsna")
    generate_rsna(out, n_patients=10, image_scale=SCALE, seed=0)
    return out


@pytest.fixture(scope="module")
def inhouse(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inhouse")
    generate_inhouse(out, n_patients=8, image_scale=SCALE, seed=0)
    return out


def _truth(root: Path) -> pd.DataFrame:
    return pd.read_csv(
        root / "phantom_truth.csv", dtype={"image_id": str, "patient_id": str, "study_id": str}
    )


def _lesions(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "phantom_lesions.csv", dtype={"image_id": str})


def _raw_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Half-open (xmin, ymin, xmax, ymax) of the True pixels (independent of the package's helper)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _display(stored: np.ndarray, row: pd.Series) -> np.ndarray:
    """Decoded stored values -> MONOCHROME2-sense stored values (bright = high)."""
    v = stored.astype(np.int64)
    if row["photometric"] == "MONOCHROME1":
        v = 2 ** int(row["bits_stored"]) - 1 - v
    return v


# ---------------------------------------------------------------- an upstream-style breast crop (§1.1)


def _run_lengths(flags: np.ndarray) -> np.ndarray:
    """Length of the run of True containing each index (-1 for False), with upstream's edge quirk."""
    out = np.full(flags.size, -1)
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    for s, e in zip(starts, ends, strict=True):
        out[s:e] = (e - s) - int(s == 0) - int(e == flags.size)
    return out


def _to_uint8(stored: np.ndarray, photometric: str) -> np.ndarray:
    data = stored[5:-5, 5:-5].astype(np.float64)
    if photometric == "MONOCHROME1":
        data = data.max() - data
    data = data - data.min()
    return (data / data.max() * 255).astype(np.uint8)


def _extract(img: np.ndarray, threshold: int = 40) -> tuple[np.ndarray, np.ndarray]:
    th = img.copy()
    th[th <= threshold] = 0
    h, w = th.shape
    band = th[h // 2 - int(0.4 * h) : h // 2 + int(0.4 * h)]
    runs = _run_lengths(band.std(axis=0) > 0)
    cols = np.flatnonzero(runs == runs.max())
    sub = th[:, cols]
    sw = sub.shape[1]
    runs = _run_lengths(sub[:, sw // 2 - int(0.4 * sw) : sw // 2 + int(0.4 * sw)].std(axis=1) > 0)
    rows = np.flatnonzero(runs == runs.max())
    return rows, cols


# ------------------------------------------------------------------------------------------------- VinDr


def test_vindr_breast_level_schema(vindr: Path) -> None:
    header, _ = _raw_rows(vindr / "breast-level_annotations.csv")
    assert header == VINDR_BREAST_COLUMNS
    df = pd.read_csv(vindr / "breast-level_annotations.csv", dtype=str)
    assert len(df) == 40 and df["image_id"].is_unique
    for col in ("study_id", "series_id", "image_id"):
        assert df[col].str.fullmatch(HEX32).all(), col
    assert df["breast_birads"].str.fullmatch(r"BI-RADS [1-5]").all()
    assert df["breast_density"].str.fullmatch(r"DENSITY [ABCD]").all()
    assert set(df["split"]) == {"training", "test"}
    sizes = {(round(h * SCALE), round(w * SCALE)) for h, w in VINDR_SIZES}
    for study, g in df.groupby("study_id"):
        assert sorted(zip(g["laterality"], g["view_position"], strict=True)) == [
            ("L", "CC"),
            ("L", "MLO"),
            ("R", "CC"),
            ("R", "MLO"),
        ], study
        assert g["breast_density"].nunique() == 1 and g["split"].nunique() == 1
        assert g[["height", "width"]].drop_duplicates().shape[0] == 1
        assert (int(g["height"].iloc[0]), int(g["width"].iloc[0])) in sizes
        for _, breast in g.groupby("laterality"):
            assert breast["breast_birads"].nunique() == 1
    assert (df.groupby("study_id")["split"].first() == "test").sum() == 2  # 20 % of 10 studies


def test_vindr_finding_schema_and_boxes(vindr: Path) -> None:
    header, raw = _raw_rows(vindr / "finding_annotations.csv")
    assert header == VINDR_FINDING_COLUMNS
    idx = {c: i for i, c in enumerate(header)}
    allowed = {
        "['Mass']",
        "['Suspicious Calcification']",
        "['Suspicious Calcification', 'Mass']",
        "['No Finding']",
    }
    kinds = [r[idx["finding_categories"]] == "['No Finding']" for r in raw]
    assert kinds == sorted(kinds), "finding rows must come before the No Finding rows"
    assert any(kinds) and not all(kinds)
    assert {r[idx["finding_categories"]] for r in raw} == allowed  # every kind of row occurs
    for r in raw:
        assert r[idx["finding_categories"]] in allowed
        ast.literal_eval(r[idx["finding_categories"]])
        box = [r[idx[c]] for c in ("xmin", "ymin", "xmax", "ymax")]
        if r[idx["finding_categories"]] == "['No Finding']":
            assert r[idx["finding_birads"]] == "" and box == ["", "", "", ""]
        else:
            assert re.fullmatch(r"BI-RADS [1-5]", r[idx["finding_birads"]])
            assert all(re.fullmatch(r"\d+\.0", v) for v in box)

    df = pd.read_csv(vindr / "finding_annotations.csv", dtype={"image_id": str})
    level = pd.read_csv(vindr / "breast-level_annotations.csv", dtype=str)
    nf = df["finding_categories"] == "['No Finding']"
    assert df.loc[nf, ["finding_birads", "xmin", "ymin", "xmax", "ymax"]].isna().all().all()
    assert df.loc[~nf, ["xmin", "ymin", "xmax", "ymax"]].notna().all().all()
    # every image appears; images without findings exactly once, and never also with a finding
    assert set(df["image_id"]) == set(level["image_id"])
    assert df.loc[nf, "image_id"].is_unique
    assert not set(df.loc[nf, "image_id"]) & set(df.loc[~nf, "image_id"])
    assert (df["xmin"][~nf] < df["xmax"][~nf]).all() and (df["ymin"][~nf] < df["ymax"][~nf]).all()
    assert (df["xmax"][~nf] <= df["width"][~nf]).all() and (df["ymax"][~nf] <= df["height"][~nf]).all()

    # VinDr boxes == truth lesion boxes (union over a finding's lesions; a combined finding == its mass box)
    lesions = _lesions(vindr)
    expected = []
    for (image_id, _), g in lesions.groupby(["image_id", "finding"], sort=False):
        expected.append(
            (image_id, float(g.xmin.min()), float(g.ymin.min()), float(g.xmax.max()), float(g.ymax.max()))
        )
        if len(g) > 1:
            mass = g[g.category == MASS].iloc[0]
            assert (mass.xmin, mass.ymin, mass.xmax, mass.ymax) == tuple(expected[-1][1:])
    got = [
        tuple(r) for r in df.loc[~nf, ["image_id", "xmin", "ymin", "xmax", "ymax"]].itertuples(index=False)
    ]
    assert sorted(got) == sorted(expected)
    # a lesion appears in both views of its breast
    truth = _truth(vindr).set_index("image_id")
    per_breast = lesions.join(truth[["study_id", "laterality", "view"]], on="image_id")
    counts = per_breast.groupby(["study_id", "laterality", "lesion"])["view"].apply(sorted)
    assert all(v == ["CC", "MLO"] for v in counts)


def test_vindr_prevalence_and_truth_consistency(vindr: Path) -> None:
    truth = _truth(vindr)
    findings = pd.read_csv(vindr / "finding_annotations.csv", dtype={"image_id": str})
    for _, r in truth.iterrows():
        cats = set()
        for s in findings.loc[findings.image_id == r.image_id, "finding_categories"]:
            cats |= set(ast.literal_eval(s))
        assert r.has_mass == int(MASS in cats)
        assert r.has_calcification == int(CALCIFICATION in cats)
    breasts = truth.groupby(["study_id", "laterality"])[["has_mass", "has_calcification"]].first()
    assert 0.1 <= breasts.has_mass.mean() <= 0.7
    assert 0.05 <= breasts.has_calcification.mean() <= 0.6


def test_layout_every_row_has_its_dicom(vindr: Path, rsna: Path, inhouse: Path) -> None:
    level = pd.read_csv(vindr / "breast-level_annotations.csv", dtype=str)
    for r in level.itertuples():
        assert (vindr / "images" / r.study_id / f"{r.image_id}.dicom").is_file()
    train = pd.read_csv(rsna / "train.csv")
    for r in train.itertuples():
        assert (rsna / "train_images" / str(r.patient_id) / f"{r.image_id}.dcm").is_file()
    reports = pd.read_csv(inhouse / "reports.csv", dtype={"image_id": str})
    for r in reports.itertuples():
        assert (inhouse / "images" / str(r.patient_id) / f"{r.image_id}.dcm").is_file()
    for root, n_files in ((vindr, len(level)), (rsna, len(train)), (inhouse, len(reports))):
        truth = _truth(root)
        assert len(truth) == n_files and truth["image_id"].is_unique
        assert all((root / p).is_file() for p in truth["dicom_path"])
        assert len([p for p in root.rglob("*") if p.suffix in (".dcm", ".dicom")]) == n_files


def test_determinism(vindr: Path, vindr_same_seed: Path, tmp_path: Path) -> None:
    for name in VINDR_CSVS:
        assert (vindr / name).read_bytes() == (vindr_same_seed / name).read_bytes(), name
    truth = _truth(vindr)
    for p in truth["dicom_path"]:
        a, b = pydicom.dcmread(vindr / p), pydicom.dcmread(vindr_same_seed / p)
        assert np.array_equal(a.pixel_array, b.pixel_array)
        assert a.SOPInstanceUID == b.SOPInstanceUID  # pydicom's compress() must not draw a random UID
        assert (vindr / p).read_bytes() == (vindr_same_seed / p).read_bytes()
    other = tmp_path / "seed1"
    generate_vindr(other, n_studies=10, image_scale=SCALE, seed=VINDR_SEED + 1)
    for name in VINDR_CSVS:
        assert (vindr / name).read_bytes() != (other / name).read_bytes(), name
    t1 = _truth(other)
    a = pydicom.dcmread(vindr / truth["dicom_path"][0]).pixel_array
    b = pydicom.dcmread(other / t1["dicom_path"][0]).pixel_array
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_generators_are_deterministic_too(rsna: Path, inhouse: Path, tmp_path: Path) -> None:
    generate_rsna(tmp_path / "r", n_patients=10, image_scale=SCALE, seed=0)
    generate_inhouse(tmp_path / "i", n_patients=8, image_scale=SCALE, seed=0)
    for a, b, names in ((rsna, tmp_path / "r", ("train.csv",)), (inhouse, tmp_path / "i", ("reports.csv",))):
        for name in (*names, "phantom_truth.csv", "phantom_lesions.csv"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        truth = _truth(a)
        for p in truth["dicom_path"][:6]:
            assert np.array_equal(pydicom.dcmread(a / p).pixel_array, pydicom.dcmread(b / p).pixel_array)


@pytest.mark.parametrize("dataset", ["vindr", "rsna"])
def test_dicom_headers_match_truth(dataset: str, request) -> None:
    root = request.getfixturevalue(dataset)
    truth = _truth(root)
    csv_sizes = {}
    if dataset == "vindr":
        level = pd.read_csv(root / "breast-level_annotations.csv", dtype={"image_id": str})
        csv_sizes = {r.image_id: (r.height, r.width) for r in level.itertuples()}
    for _, r in truth.iterrows():
        ds = pydicom.dcmread(root / r.dicom_path)
        assert ds.PhotometricInterpretation == r.photometric
        assert ds.BitsStored == r.bits_stored and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[r.transfer_syntax] == r.transfer_syntax_uid
        assert (ds.Rows, ds.Columns) == (r.height, r.width)
        if csv_sizes:
            assert csv_sizes[r.image_id] == (r.height, r.width)
        assert float(ds.RescaleSlope) == r.rescale_slope and float(ds.RescaleIntercept) == r.rescale_intercept
        assert ds.ImageLaterality == r.laterality and ds.ViewPosition == r.view
        assert ds.Modality == "MG"
        px = ds.pixel_array
        assert px.shape == (r.height, r.width) and int(px.max()) < 2**r.bits_stored
        v = _display(px, r)
        assert v.min() >= r.stored_lo and v.max() == r.stored_hi  # markers/border line are full intensity
        # dicomsdl (what the preprocessing reads with) decodes the same stored values
        assert np.array_equal(dicomsdl.open(str(root / r.dicom_path)).pixelData(storedvalue=True), px)


def test_every_encoding_combination_present(vindr: Path) -> None:
    truth = _truth(vindr)
    assert len(truth) == 40
    combos = set(zip(truth.photometric, truth.bits_stored, truth.transfer_syntax, strict=True))
    assert combos == set(
        itertools.product(
            ("MONOCHROME1", "MONOCHROME2"),
            (12, 14, 16),
            ("uncompressed", "jpeg2000", "jpegls", "jpeg_lossless"),
        )
    )
    assert (truth.rescale_slope == 1.0).all()
    nonzero = (truth.rescale_intercept != 0).sum()
    assert 1 <= nonzero <= len(truth) // 2


def test_rsna_phantom_from_config_defaults_has_both_real_rsna_syntaxes(tmp_path: Path) -> None:
    """RSNA's real files are JPEG 2000 lossless (.4.90) and JPEG Lossless SV1 (.4.70); the demo's phantom
    (config defaults, generated the way the phantom rule does) holds both, decoded exactly by dicomsdl."""
    config = load_config({"phantoms": {"image_scale": 0.05, "rsna": {"n_patients": 6}}}, load_schema())
    assert config["phantoms"]["transfer_syntaxes"] == list(DEFAULT_TRANSFER_SYNTAXES)
    assert config["phantoms"]["transfer_syntaxes"] == ["uncompressed", "jpeg2000", "jpegls", "jpeg_lossless"]
    truth = phantom(
        dataset="rsna",
        out_dir=tmp_path,
        size=config["phantoms"]["rsna"]["n_patients"],
        image_scale=config["phantoms"]["image_scale"],
        seed=config["seed"],
        transfer_syntaxes=config["phantoms"]["transfer_syntaxes"],
    )
    # 6 patients: 24 CC/MLO images + 1 extra view; the first 24 are one permutation of the 24 combinations
    assert len(truth) == 25
    counts = truth["transfer_syntax"].value_counts()
    assert set(counts.index) == {"uncompressed", "jpeg2000", "jpegls", "jpeg_lossless"}
    assert sorted(counts) == [6, 6, 6, 7]
    uids = {}
    for _, r in truth.iterrows():
        ds = pydicom.dcmread(tmp_path / r.dicom_path)
        uids.setdefault(r.transfer_syntax, set()).add(str(ds.file_meta.TransferSyntaxUID))
        decoded = dicomsdl.open(str(tmp_path / r.dicom_path)).pixelData(storedvalue=True)
        assert np.array_equal(decoded, ds.pixel_array)  # dicomsdl == pydicom (+ pylibjpeg-libjpeg)
        assert _display(decoded, r).max() == r.stored_hi and r.transfer_syntax_uid in uids[r.transfer_syntax]
    assert uids["jpeg2000"] == {"1.2.840.10008.1.2.4.90"}
    assert uids["jpeg_lossless"] == {"1.2.840.10008.1.2.4.70"}


def test_transfer_syntax_argument_and_validation(tmp_path: Path) -> None:
    truth = generate_vindr(
        tmp_path / "u",
        n_studies=2,
        image_scale=SCALE,
        seed=3,
        transfer_syntaxes=("uncompressed",),
        progress=True,
    )
    assert set(truth.transfer_syntax) == {"uncompressed"}
    assert set(truth.split) == {"training", "test"}
    with pytest.raises(ValueError, match="transfer syntax"):
        generate_vindr(tmp_path / "x", n_studies=1, image_scale=SCALE, seed=0, transfer_syntaxes=("jpeg",))
    with pytest.raises(ValueError):
        generate_rsna(tmp_path / "y", n_patients=0, image_scale=SCALE, seed=0)
    with pytest.raises(ValueError):
        generate_inhouse(tmp_path / "z", n_patients=1, image_scale=0.0, seed=0)


# --------------------------------------------------------------------------------------- images / boxes


def test_lesion_pixels_recovered_from_decoded_dicoms(vindr: Path, rsna: Path) -> None:
    """Decoded pixels minus a lesion-free re-render == exactly the lesions; boxes are tight around them."""
    assert _check_lesion_pixels(vindr, seed=VINDR_SEED, scale=SCALE) >= 5
    assert _check_lesion_pixels(rsna, seed=0, scale=SCALE, dataset="rsna") >= 2  # incl. ML/LM/AT views


def _check_lesion_pixels(root: Path, *, seed: int, scale: float, dataset: str = "vindr") -> int:
    truth = _truth(root)
    lesions = _lesions(root)
    n_checked = 0
    for i, r in truth.iterrows():
        rng = image_rng(seed, dataset, i)
        geom = make_breast_geometry(r.height, r.width, r.view, rng, scale=scale)
        ref = render_breast_image(geom, [], density=r.density, laterality=r.laterality, rng=rng)
        ref_v = r.stored_lo + np.rint(ref.intensity * (r.stored_hi - r.stored_lo))
        v = _display(pydicom.dcmread(root / r.dicom_path).pixel_array, r)
        changed = v != ref_v
        mine = lesions[lesions.image_id == r.image_id]
        assert changed.any() == (len(mine) > 0)
        assert bool(r.has_mass or r.has_calcification) == (len(mine) > 0)
        covered = np.zeros_like(changed)
        for f, g in mine.groupby("finding"):
            x0, y0, x1, y1 = g.xmin.min(), g.ymin.min(), g.xmax.max(), g.ymax.max()
            covered[y0:y1, x0:x1] = True
            inside = np.zeros_like(changed)
            inside[y0:y1, x0:x1] = changed[y0:y1, x0:x1]
            assert _bbox(inside) == (x0, y0, x1, y1), f"finding {f} box not tight"
            for les in g.itertuples():
                if len(g) == 1:
                    assert (les.xmin, les.ymin, les.xmax, les.ymax) == (x0, y0, x1, y1)
                # lesions lie fully inside the breast and away from the 5 px border crop
                bx = (r.breast_xmin, r.breast_ymin, r.breast_xmax, r.breast_ymax)
                assert bx[0] <= les.xmin and bx[1] <= les.ymin and les.xmax <= bx[2] and les.ymax <= bx[3]
                assert (
                    les.xmin >= 8 and les.ymin >= 8 and les.xmax <= r.width - 8 and les.ymax <= r.height - 8
                )
            n_checked += 1
        assert not (changed & ~covered).any(), "lesion pixels outside the written boxes"
    return n_checked


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_anatomy_masks_and_boxes(view: str, laterality: str) -> None:
    rng = np.random.default_rng(11)
    geom = make_breast_geometry(704, 560, view, rng, scale=0.2)
    findings = [[MASS], [CALCIFICATION], [CALCIFICATION, MASS]]
    specs = place_lesions(findings, [geom], np.random.default_rng(12))
    assert [s.category for s in specs] == [MASS, CALCIFICATION, MASS, CALCIFICATION]
    assert specs[3].parent == 2 and specs[3].finding == 2
    with_lesions = render_breast_image(
        geom, specs, density="B", laterality=laterality, rng=np.random.default_rng(13)
    )
    without = render_breast_image(geom, [], density="B", laterality=laterality, rng=np.random.default_rng(13))
    masks = [m.full(704, 560) for m in with_lesions.lesion_masks]
    union = np.logical_or.reduce(masks)
    assert np.array_equal(with_lesions.intensity != without.intensity, union)
    for m, full in zip(with_lesions.lesion_masks, masks, strict=True):
        assert m.box == _bbox(full)
        assert not (full & ~with_lesions.breast_mask).any()
        assert (m.values[m.patch] > 0).all() and (m.values[~m.patch] == 0).all()
    assert not (masks[3] & ~masks[2]).any(), "combined finding: calcifications inside their mass"
    assert not (masks[0] & masks[1]).any()
    # calcification specks are tiny (<= 3 px at scale 0.2), 5..20 per cluster, bright
    lab, n = ndimage.label(masks[1])
    assert 1 <= n <= 20
    sizes = [max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndimage.find_objects(lab)]
    assert max(sizes) <= 6  # specks may touch, each is at most 3 px wide
    gain = (with_lesions.intensity - without.intensity)[masks[1]]
    assert gain.min() >= 0.1
    # mirror layout: chest wall at the left edge for L, right edge for R
    xmin, _, xmax, _ = with_lesions.breast_box
    assert with_lesions.chest_wall_side == ("left" if laterality == "L" else "right")
    assert (xmin == 0) if laterality == "L" else (xmax == 560)


def test_left_is_mirror_layout_of_right(vindr: Path) -> None:
    truth = _truth(vindr)
    for _, r in truth.iterrows():
        img = _to_uint8(pydicom.dcmread(vindr / r.dicom_path).pixel_array, r.photometric).astype(float)
        h = img.shape[0]
        band = img[int(0.3 * h) : int(0.7 * h)]
        left, right = np.median(band[:, :10]), np.median(band[:, -10:])
        if r.laterality == "L":
            assert r.chest_wall_side == "left" and r.breast_xmin == 0 and left > right + 40
        else:
            assert r.chest_wall_side == "right" and r.breast_xmax == r.width and right > left + 40


def test_upstream_preprocessing_branches(vindr: Path) -> None:
    """Background under the threshold, markers as a separate shorter run, bright lines in the crop zone."""
    truth = _truth(vindr)
    n_marker_runs = 0
    for _, r in truth.iterrows():
        stored = pydicom.dcmread(vindr / r.dicom_path).pixel_array
        v = _display(stored, r)
        # a full-intensity line 1-3 px wide lies inside the outer 5 px along at least one border
        full = v == r.stored_hi
        edges = [
            full[:5].all(axis=1),
            full[-5:].all(axis=1),
            full[:, :5].all(axis=0),
            full[:, -5:].all(axis=0),
        ]
        assert any(e.any() for e in edges)
        img = _to_uint8(stored, r.photometric)
        x0, y0, x1, y1 = r.breast_xmin, r.breast_ymin, r.breast_xmax, r.breast_ymax
        # background noise is non-constant but stays <= 40 after min-max to 8 bit
        bg = np.ones(img.shape, bool)
        bg[max(0, y0 - 5) : y1 - 5, max(0, x0 - 5) : x1 - 5] = False
        bg &= img < 200  # leave out markers / labels
        assert img[bg].max() <= 40 and img[bg].std() > 0
        rows, cols = _extract(img)
        exp_cols = np.arange(max(0, x0 - 5), min(x1 - 5, r.width - 10))
        assert np.array_equal(cols, exp_cols), "longest non-constant column run must be the breast"
        assert rows[0] >= max(0, y0 - 5) and rows[-1] < y1 - 5
        breast_rows = min(y1 - 5, r.height - 10) - max(0, y0 - 5)
        assert len(rows) == rows[-1] - rows[0] + 1 and len(rows) >= 0.9 * breast_rows
        # without the threshold the noisy background makes every column non-constant
        _, cols_no_threshold = _extract(img, threshold=-1)
        assert len(cols_no_threshold) >= img.shape[1] - 2
        h = img.shape[0]
        band = img[h // 2 - int(0.4 * h) : h // 2 + int(0.4 * h)].copy()
        band[band <= 40] = 0
        flags = np.concatenate([[0], (band.std(axis=0) > 0).astype(np.int8), [0]])
        n_marker_runs += int((np.diff(flags) == 1).sum() >= 2)
    assert n_marker_runs >= len(truth) // 2


@pytest.mark.parametrize("density_order", [("A", "B", "C", "D")])
def test_density_increases_breast_brightness(density_order: tuple[str, ...]) -> None:
    means = []
    for d in density_order:
        rng = np.random.default_rng(5)
        geom = make_breast_geometry(352, 280, "CC", rng, scale=0.1)
        img = render_breast_image(geom, [], density=d, laterality="L", rng=rng)
        means.append(float(img.intensity[img.breast_mask].mean()))
    assert means == sorted(means) and means[-1] - means[0] > 0.1


# -------------------------------------------------------------------------------------------------- RSNA


def test_rsna_schema_and_labels(rsna: Path) -> None:
    header, raw = _raw_rows(rsna / "train.csv")
    assert header == RSNA_COLUMNS
    idx = {c: i for i, c in enumerate(header)}
    assert {r[idx["difficult_negative_case"]] for r in raw} <= {"True", "False"}
    assert {r[idx["BIRADS"]] for r in raw} <= {"0", "1", "2", ""}
    assert {r[idx["density"]] for r in raw} <= {"A", "B", "C", "D", ""}
    for col in ("site_id", "patient_id", "image_id", "machine_id"):
        assert all(re.fullmatch(r"\d+", r[idx[col]]) for r in raw), col
    df = pd.read_csv(rsna / "train.csv")
    assert df["image_id"].is_unique and df["patient_id"].is_monotonic_increasing
    for col in ("cancer", "biopsy", "invasive", "implant"):
        assert set(df[col]) <= {0, 1}, col
    assert set(df["laterality"]) == {"L", "R"}
    views = df["view"].value_counts()
    assert {"CC", "MLO", "ML", "LM", "AT"} <= set(views.index) and views["CC"] == 2 * df.patient_id.nunique()
    assert views[["ML", "LM", "AT"]].min() >= 1
    assert df.loc[df.cancer == 1, "patient_id"].nunique() >= 2
    assert (df.invasive <= df.cancer).all() and (df.biopsy >= df.cancer).all()
    assert (df.groupby(["patient_id", "laterality"])["cancer"].nunique() == 1).all()
    assert set(df["site_id"]) <= {1, 2}
    sizes = {(round(h * SCALE), round(w * SCALE)) for h, w in RSNA_MACHINE_SIZES.values()}
    truth = _truth(rsna).astype({"image_id": np.int64, "patient_id": np.int64})
    merged = df.merge(truth, on=["image_id", "patient_id", "laterality", "view"], validate="one_to_one")
    assert len(merged) == len(df)
    assert all((h, w) in sizes for h, w in zip(merged.height, merged.width, strict=True))
    assert (merged.cancer_x == merged.cancer_y).all()
    # cancer breasts carry a planted finding; some non-cancer breasts carry one too (benign)
    cancer = merged[merged.cancer_x == 1]
    assert ((cancer.has_mass + cancer.has_calcification) > 0).all()
    with_density = merged[merged.density_x.notna()]
    assert len(with_density) > 0 and (with_density.density_x == with_density.density_y).all()
    lesions = _lesions(rsna).astype({"image_id": np.int64})
    special = merged.loc[merged.view.isin(["ML", "LM", "AT"]) & (merged.n_findings > 0), "image_id"]
    assert set(special) <= set(lesions.image_id)


# ---------------------------------------------------------------------------------------------- in-house


def test_inhouse_reports(inhouse: Path) -> None:
    header, raw = _raw_rows(inhouse / "reports.csv")
    assert header == INHOUSE_COLUMNS
    df = pd.read_csv(inhouse / "reports.csv", dtype={"image_id": str})
    truth = _truth(inhouse)
    lesions = _lesions(inhouse)
    assert len(df) == len(truth) == 32
    assert set(df.image_id) == set(truth.image_id)
    assert df.image_id.str.fullmatch(r"[0-9.]+").all() and not df.image_id.str.endswith(".png").any()
    assert df["fold"].isna().all() and set(df.GENDER) == {"F"}
    for r in df.itertuples():  # image_id is the file stem and the DICOM SOPInstanceUID
        path = inhouse / "images" / str(r.patient_id) / f"{r.image_id}.dcm"
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == r.image_id
    assert df.BIRADS_CATEGORY.tolist() == [f"BIRADS {n}" for n in df.BIRADS_numeric]
    t = truth.set_index("image_id")
    for _, g in df.groupby(["patient_id", "laterality"]):
        assert sorted(g.view) == ["CC", "MLO"]
        text_cols = ["HISTORY", "FINDINGS", "IMPRESSION", "ASSESMENT", "RECOMENDATION", "CONCLUSION"]
        assert len(g[text_cols].fillna("").drop_duplicates()) == 1, "both views carry the same report"
        row = g.iloc[0]
        tr = t.loc[row.image_id]
        assert (g.img_size_row == tr.height).all() and (g.img_size_column == tr.width).all()
        m = re.search(r"BI-?RADS:? (\d)", row.IMPRESSION, flags=re.IGNORECASE)
        assert m and int(m.group(1)) == row.BIRADS_numeric
        findings = row.FINDINGS.lower()
        if tr.has_mass:
            assert "mass" in findings
        if tr.has_calcification:
            assert "calcification" in findings
        mine = lesions[lesions.image_id == row.image_id]
        if len(mine) == 0:
            assert "quadrant" not in findings and " cm" not in findings and " mm" not in findings
        for les in mine.itertuples():  # every finding is located by quadrant or clock position
            if les.category == MASS or len(mine[mine.finding == les.finding]) == 1:
                assert les.quadrant in findings or re.search(rf"\b{les.clock} o[’']clock", findings)
    assert df.HISTORY.isna().any() and df.HISTORY.notna().any()
    for col in ("ASSESMENT", "RECOMENDATION", "CONCLUSION"):
        assert df[col].isna().any(), col
    text = " ".join(df[["HISTORY", "FINDINGS", "IMPRESSION", "RECOMENDATION"]].fillna("").to_numpy().ravel())
    assert re.search(r"\d\.\d", text), "decimal sizes exercise the period-splitting cleaner"
    assert any(ord(ch) > 127 for ch in text)
    assert truth.has_mass.any() and truth.has_calcification.any() and (truth.n_findings == 0).any()
