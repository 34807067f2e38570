"""Real-scale rehearsal (:mod:`mammoclip.phantoms.realscale`): the generated VinDr and RSNA metadata files
reproduce the counts and quirks measured on the real files, and the annotation stage runs on them at full
scale: the functions, the ``bench annotations`` command and (slow) the two Snakemake rules."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mammoclip.annotations.rsna import FOLDS_COLUMNS, TRAIN_COLUMNS
from mammoclip.annotations.tables import write_table
from mammoclip.annotations.vindr import (
    BOX_COLUMNS,
    BREAST_COLUMNS,
    FINDING_CATEGORIES,
    FINDING_COLUMNS,
    RESIZED_COLUMNS,
    read_vindr_annotations,
)
from mammoclip.bench import PAPER_METADATA_ROWS, write_paper_like_roots
from mammoclip.phantoms.realscale import (
    JPEG2000_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    make_rsna,
    make_vindr,
    write_rehearsal,
)
from mammoclip.preprocess import BORDER, MANIFEST_COLUMNS, read_manifest
from mammoclip.stages import build_rsna_folds, build_vindr_tables

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PNG_H, PNG_W = 1520, 912


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rehearsal")
    return write_rehearsal(tmp / "data", manifest_dir=tmp / "results/preprocess")


def _text(path: Path) -> pd.DataFrame:
    """A CSV exactly as written: every cell a string, empty cells ``""``."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def breast(files) -> pd.DataFrame:
    return _text(files["vindr_breast"])


@pytest.fixture(scope="module")
def findings(files) -> pd.DataFrame:
    return _text(files["vindr_findings"])


@pytest.fixture(scope="module")
def train(files) -> pd.DataFrame:
    return _text(files["rsna_train"])


@pytest.fixture(scope="module")
def manifests(files) -> dict[str, pd.DataFrame]:
    return {d: read_manifest(files[f"{d}_manifest"]) for d in ("vindr", "rsna")}


def _failed(manifest: pd.DataFrame) -> set[str]:
    return set(manifest.loc[manifest["status"] != "ok", "image_id"])


@pytest.fixture(scope="module")
def expected(breast, findings, train, manifests) -> dict[str, int]:
    """Rows of each output table: the input rows minus those of the images that failed preprocessing."""
    failed_vindr, failed_rsna = _failed(manifests["vindr"]), _failed(manifests["rsna"])
    kept = ~findings["image_id"].isin(failed_vindr)
    kept_images = breast[~breast["image_id"].isin(failed_vindr)]
    return {
        "rows": int(kept.sum()),
        "images": len(kept_images),
        "boxes": int((kept & (findings["xmin"] != "")).sum()),
        "image_labels": len(kept_images.groupby(["study_id", "laterality"])),
        "rsna": int((~train["image_id"].isin(failed_rsna)).sum()),
    }


# ------------------------------------------------------------------------------------ VinDr: the two CSVs


def test_vindr_breast_level_file(breast):
    assert list(breast.columns) == list(BREAST_COLUMNS) and len(breast) == 20_000
    assert breast["study_id"].nunique() == 5_000 and breast["series_id"].nunique() == 5_036
    assert breast["image_id"].is_unique
    for column in ("study_id", "series_id", "image_id"):
        assert breast[column].str.fullmatch(r"[0-9a-f]{32}").all(), column
    assert breast["laterality"].value_counts().to_dict() == {"L": 10_000, "R": 10_000}
    assert breast["view_position"].value_counts().to_dict() == {"CC": 10_001, "MLO": 9_999}
    assert set(breast["height"]) == {"3518", "2812", "3580"}
    assert breast["width"].nunique() == 58 and {"2800", "2012"} <= set(breast["width"])
    assert breast["breast_birads"].value_counts().to_dict() == {
        "BI-RADS 1": 13_406, "BI-RADS 2": 4_676, "BI-RADS 3": 930, "BI-RADS 4": 762, "BI-RADS 5": 226,
    }  # fmt: skip
    assert breast["breast_density"].value_counts().to_dict() == {
        "DENSITY C": 15_292, "DENSITY D": 2_700, "DENSITY B": 1_908, "DENSITY A": 100,
    }  # fmt: skip
    assert breast["split"].value_counts().to_dict() == {"training": 16_000, "test": 4_000}
    assert (breast.groupby("study_id")["split"].nunique() == 1).all()  # whole studies per split
    assert (breast.groupby(["study_id", "laterality"])["breast_birads"].nunique() == 1).all()


def test_vindr_finding_file_layout(breast, findings):
    assert list(findings.columns) == list(FINDING_COLUMNS) and len(findings) == 20_486
    normal = findings["finding_categories"] == "['No Finding']"
    assert not normal.iloc[:2254].any() and normal.iloc[2254:].all()  # findings first, then 18 232 normals
    assert normal.sum() == 18_232 and findings.loc[normal, "image_id"].is_unique
    assert (findings.loc[normal, list(BOX_COLUMNS)] == "").all().all()
    assert (findings.loc[~normal, list(BOX_COLUMNS)] != "").all().all()
    per_image = findings.loc[~normal, "image_id"].value_counts()
    assert len(per_image) == 1_768 and (per_image > 1).sum() == 338 and per_image.max() == 7
    assert set(findings["image_id"]) == set(breast["image_id"])  # every image has a row
    assert not set(findings.loc[normal, "image_id"]) & set(per_image.index)
    shared = [c for c in BREAST_COLUMNS if c != "image_id"]
    ref = breast.set_index("image_id").loc[findings["image_id"], shared].reset_index(drop=True)
    assert findings[shared].equals(ref)  # the 9 per-image columns repeat the breast-level row
    assert (findings["finding_birads"] == "").sum() == 18_357
    assert (findings.loc[~normal, "finding_birads"] == "").sum() == 125
    assert findings["split"].value_counts().to_dict() == {"training": 16_391, "test": 4_095}


def test_vindr_finding_categories(findings):
    values = findings["finding_categories"]
    assert values.nunique() == 35
    lists = values.map(ast.literal_eval)
    assert lists.map(len).max() == 4
    assert set().union(*lists) == {*FINDING_CATEGORIES, "No Finding"}
    train = findings["split"] == "training"
    for category, rows, training in (
        ("Mass", 1_226, 989), ("Suspicious Calcification", 543, 428), ("Focal Asymmetry", 269, 216),
    ):  # fmt: skip
        has = lists.map(lambda cats, c=category: c in cats)
        assert (has.sum(), (has & train).sum()) == (rows, training), category
    assert "['Suspicious Calcification', 'Mass']" in set(values)  # list order as written


def test_vindr_boxes_and_their_quirks(findings):
    f = findings.iloc[:2254]
    x0, y0, x1, y1 = (pd.to_numeric(f[c]) for c in BOX_COLUMNS)
    width, height = pd.to_numeric(f["width"]), pd.to_numeric(f["height"])
    assert ((x0 < x1) & (y0 < y1)).all()  # none inverted or empty
    assert ((x1 > 0) & (y1 > 0) & (x0 < width) & (y0 < height)).all()  # none entirely outside
    assert ((x0 < 0).sum(), -x0.min()) == (19, 26.8)
    assert ((y0 < 0).sum(), -y0.min()) == (3, 5.2)
    assert (x1 > width).sum() == 20 and (x1 - width).max() == pytest.approx(33.2)
    assert (y1 > height).sum() == 1 and (y1 - height).max() == pytest.approx(41.1)
    assert (x1 - x0).median() == pytest.approx(228, abs=10)
    assert (y1 - y0).median() == pytest.approx(244, abs=10)


# ------------------------------------------------------------------------------------------ RSNA train.csv


def test_rsna_train_file(train):
    assert list(train.columns) == list(TRAIN_COLUMNS) and len(train) == 54_706
    assert train["patient_id"].nunique() == 11_913 and train["image_id"].is_unique
    assert (train["age"] == "").sum() == 37
    assert (train["BIRADS"] == "").sum() == 28_420 and set(train["BIRADS"]) == {"", "0.0", "1.0", "2.0"}
    assert (train["density"] == "").sum() == 25_236 and set(train["density"]) == {"", *"ABCD"}
    assert train["view"].value_counts().to_dict() == {
        "MLO": 27_903, "CC": 26_765, "AT": 19, "LM": 10, "ML": 8, "LMO": 1,
    }  # fmt: skip
    assert (train["cancer"] == "1").sum() == 1_158
    assert train.loc[train["age"] != "", "age"].str.fullmatch(r"\d+\.0").all()  # Kaggle's 61.0
    assert set(train["difficult_negative_case"]) == {"True", "False"}
    for column in ("age", "density"):  # per patient
        assert (train.groupby("patient_id")[column].nunique(dropna=False) == 1).all(), column


# ---------------------------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("dataset", ["vindr", "rsna"])
def test_manifests_as_the_preprocessing_stage_writes_them(files, manifests, breast, train, dataset):
    manifest = manifests[dataset]
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    meta = breast if dataset == "vindr" else train
    assert sorted(manifest["image_id"]) == sorted(meta["image_id"])
    failed = manifest["status"] != "ok"
    assert failed.sum() == (3 if dataset == "vindr" else 6) and (manifest["status"][~failed] == "ok").all()
    codes = manifest.loc[failed, "reason"].str.split(":").str[0]
    assert set(codes) <= {"decode_error", "truncated", "constant_image", "unsupported_image"}
    assert (manifest.loc[~failed, "reason"] == "").all()
    ok = manifest[~failed]
    crop = {c: ok[c].astype(int) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")}
    h, w = ok["orig_height"].astype(int), ok["orig_width"].astype(int)
    assert ((crop["crop_x0"] >= BORDER) & (crop["crop_x1"] <= w - BORDER)).all()
    assert ((crop["crop_y0"] >= BORDER) & (crop["crop_y1"] <= h - BORDER)).all()
    assert ((crop["crop_x1"] > crop["crop_x0"]) & (crop["crop_y1"] > crop["crop_y0"])).all()
    assert ok["crop_contiguous"].all()
    assert (ok["crop_n_rows"] == crop["crop_y1"] - crop["crop_y0"]).all()
    assert (ok["crop_n_cols"] == crop["crop_x1"] - crop["crop_x0"]).all()
    assert (ok["png_height"] == PNG_H).all() and (ok["png_width"] == PNG_W).all()
    assert manifest.loc[failed, ["crop_x0", "crop_n_rows", "png_height"]].isna().all().all()
    pairs = zip(manifest["patient_id"], manifest["image_id"], strict=True)
    assert manifest["png_path"].tolist() == [f"results/png/{dataset}/{p}/{i}.png" for p, i in pairs]
    order = manifest[["patient_id", "image_id"]].astype(str)
    assert order.equals(order.sort_values(["patient_id", "image_id"]).reset_index(drop=True))
    if dataset == "vindr":
        size = breast.set_index("image_id").loc[manifest["image_id"], ["height", "width"]].astype(int)
        assert (manifest["orig_height"].to_numpy() == size["height"].to_numpy()).all()
        assert (manifest["orig_width"].to_numpy() == size["width"].to_numpy()).all()
        assert set(manifest["transfer_syntax"]) == {JPEG2000_LOSSLESS}
        assert manifest["source_path"].str.endswith(".dicom").all()
    else:
        assert set(manifest["transfer_syntax"]) == {JPEG2000_LOSSLESS, JPEG_LOSSLESS_SV1}
        assert manifest["source_path"].str.contains("/train_images/").all()


def test_generation_is_deterministic_and_seeded(files):
    again = make_vindr(0)
    assert again.findings.to_csv(index=False, lineterminator="\n") == files["vindr_findings"].read_text()
    assert make_rsna(0).train.equals(make_rsna(0).train)
    other = make_vindr(1)
    assert not other.breast["image_id"].equals(again.breast["image_id"])
    assert len(other.findings) == 20_486  # the counts do not depend on the seed
    assert len(make_rsna(1).train) == 54_706


def test_paper_like_roots_hold_the_rehearsal(tmp_path):
    roots = write_paper_like_roots(tmp_path)
    shapes = {
        "vindr": (Path(roots["vindr"]) / "breast-level_annotations.csv", PAPER_METADATA_ROWS["vindr"], 10),
        "vindr_findings": (
            Path(roots["vindr"]) / "finding_annotations.csv", PAPER_METADATA_ROWS["vindr_findings"], 16
        ),
        "rsna": (Path(roots["rsna"]) / "train.csv", PAPER_METADATA_ROWS["rsna"], 14),
        "inhouse": (Path(roots["inhouse"]) / "reports.csv", PAPER_METADATA_ROWS["inhouse"], 1),
    }  # fmt: skip
    for name, (path, rows, columns) in shapes.items():
        assert pd.read_csv(path, dtype=str).shape == (rows, columns), name


# ----------------------------------------------------------------------------------- the annotation stage


def test_vindr_annotation_stage_at_real_scale(files, findings, manifests, expected):
    failed = _failed(manifests["vindr"])
    _, validated = read_vindr_annotations(files["vindr_breast"], files["vindr_findings"])
    clipped = validated.attrs["clipped_boxes"]
    assert clipped["boxes"] == 43
    for side, rows, px in (("xmin", 19, 26.8), ("ymin", 3, 5.2), ("xmax", 20, 33.2), ("ymax", 1, 41.1)):
        assert clipped[side]["rows"] == rows and clipped[side]["max_px"] == pytest.approx(px, abs=1e-3), side
    boxes = validated[validated["xmin"].notna()]
    assert ((boxes["xmin"] >= 0) & (boxes["ymin"] >= 0)).all()
    assert ((boxes["xmax"] <= boxes["width"]) & (boxes["ymax"] <= boxes["height"])).all()
    assert (boxes["xmin"] == 0).sum() >= 19 and (boxes["ymax"] == boxes["height"]).sum() >= 1

    tables = build_vindr_tables(
        files["vindr_breast"], files["vindr_findings"], files["vindr_manifest"], n_folds=5, seed=42
    )
    assert {name: len(table) for name, table in tables.items()} == {
        name: expected[name] for name in ("rows", "images", "boxes", "image_labels")
    }
    assert expected["images"] == 20_000 - len(failed) and expected["rows"] < 20_486
    assert expected["boxes"] < 2_254  # one failed image has several finding rows
    kept_rows = ~findings["image_id"].isin(failed)
    summary = tables["boxes"].attrs["box_summary"]
    assert summary["boxes_beyond_image"] == clipped
    assert summary["boxes_mapped"] == len(tables["boxes"]) and summary["boxes_without_png_box"] == 0

    for name in ("rows", "boxes"):
        table = tables[name]
        mapped = table[table["xmin"].notna()]
        x0, y0, x1, y1 = (mapped[c] for c in RESIZED_COLUMNS)
        assert np.isfinite(mapped[list(RESIZED_COLUMNS)].to_numpy()).all(), name
        assert ((x0 >= 0) & (x1 <= PNG_W) & (y0 >= 0) & (y1 <= PNG_H)).all(), name
        assert ((x0 < x1) & (y0 < y1)).all(), name
    rows = tables["rows"]
    mass = findings.loc[kept_rows, "finding_categories"].str.contains("'Mass'")
    assert rows["Mass"].sum() == mass.sum()
    assert (
        rows["density"].tolist()
        == findings.loc[kept_rows, "breast_density"]
        .map({"DENSITY A": 0, "DENSITY B": 1, "DENSITY C": 2, "DENSITY D": 3})
        .tolist()
    )

    for name in ("rows", "images", "image_labels"):  # patient-level validation folds from the training split
        table = tables[name]
        assert (table.groupby("patient_id")["val_fold"].nunique() == 1).all(), name
        assert (table.loc[table["split"] == "test", "val_fold"] == -1).all(), name
    per_fold = tables["images"].query("split == 'training'").groupby("val_fold")["patient_id"].nunique()
    assert list(per_fold.index) == [0, 1, 2, 3, 4] and per_fold.max() - per_fold.min() <= 1


def test_rsna_annotation_stage_at_real_scale(files, train, manifests, expected, tmp_path):
    failed = _failed(manifests["rsna"])
    folds = build_rsna_folds(files["rsna_train"], files["rsna_manifest"], n_folds=4, seed=42)
    assert len(folds) == expected["rsna"] == 54_706 - len(failed) and not set(folds["image_id"]) & failed
    assert list(folds.columns) == [*FOLDS_COLUMNS, "png_path"]
    assert set(folds["fold"]) == {0, 1, 2, 3}
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all()  # patient-disjoint
    sizes = folds["fold"].value_counts()
    assert sizes.min() > 0.23 * len(folds) and sizes.max() < 0.27 * len(folds)
    cancer = folds.groupby("fold")["cancer"].sum()
    assert cancer.sum() == (train.loc[~train["image_id"].isin(failed), "cancer"] == "1").sum()
    assert cancer.min() > 0.2 * cancer.sum() and cancer.max() < 0.3 * cancer.sum()  # stratified
    write_table(folds, tmp_path / "train_folds.csv")
    written = _text(tmp_path / "train_folds.csv")
    original = train[~train["image_id"].isin(failed)].reset_index(drop=True)
    assert written[list(TRAIN_COLUMNS)].equals(original)  # every cell written back as read


def test_bench_annotations_command_reports_the_row_counts(capsys, expected):
    from mammoclip.cli import main

    assert main(["bench", "annotations", "--repeats", "1"]) == 0  # the same files (seed 0)
    out = capsys.readouterr().out
    assert "20000 images, 20486 finding rows" in out
    tables = ", ".join(f"{expected[n]} {n}" for n in ("rows", "images", "boxes", "image_labels"))
    assert "all: build_vindr_tables" in out and tables in out
    assert "54706 images" in out and f"{expected['rsna']} images" in out and "build_rsna_folds" in out


# -------------------------------------------------------------------------- the workflow's annotation rules


@pytest.mark.slow
def test_snakemake_annotation_rules_on_the_rehearsal(tmp_path, expected):
    """The paper configuration's two annotation rules, for real, with the manifests placed where the
    preprocessing stage writes them (no conversion job runs: Snakemake keeps an existing manifest whose
    shards are absent; ``--allowed-rules`` makes sure)."""
    roots = write_paper_like_roots(tmp_path / "data", manifest_dir=tmp_path / "results/preprocess")
    config = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    for dataset, folder in roots.items():
        config["datasets"][dataset]["root"] = folder
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    manifest = tmp_path / "results/preprocess/vindr/manifest.csv"
    before = manifest.read_bytes()
    targets = [f"results/annotations/{d}/provenance.json" for d in ("vindr", "rsna")]
    cmd = [
        SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile",
        str(tmp_path / "config.yaml"), "--cores", "2", *targets,
        "--allowed-rules", "vindr_tables", "rsna_folds",  # after the targets: it takes several values
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 of 2 steps (100%) done" in result.stderr + result.stdout
    assert manifest.read_bytes() == before

    out = tmp_path / "results/annotations"
    counts = {
        "vindr/vindr_detection_v1_folds.csv": expected["rows"],
        "vindr/vindr_images.csv": expected["images"],
        "vindr/vindr_boxes.csv": expected["boxes"],
        "vindr/clip_vindr_final.csv": expected["image_labels"],
        "rsna/train_folds.csv": expected["rsna"],
    }
    for name, rows in counts.items():
        assert len(pd.read_csv(out / name, dtype=str)) == rows, name
    provenance = json.loads((out / "vindr/provenance.json").read_text())
    assert provenance["boxes"]["boxes_beyond_image"]["boxes"] == 43
    assert provenance["rows"] == {n: expected[n] for n in ("rows", "images", "boxes", "image_labels")}
    assert json.loads((out / "rsna/provenance.json").read_text())["images"] == expected["rsna"]
