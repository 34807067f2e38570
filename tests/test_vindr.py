"""mammoclip.annotations.vindr: reading/validation, box mapping (upstream defects fixed), the row / image /
image-label tables, validation folds, determinism and a 20 000-image build.

Two kinds of fixtures: a small hand-written pair of VinDr CSVs with a hand-made manifest (exact values),
and a phantom VinDr data set converted to PNGs with the real converter (boxes against the lesions).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from mammoclip.annotations.tables import AnnotationError, read_table, write_table
from mammoclip.annotations.vindr import (
    BOX_TABLE_COLUMNS,
    BREAST_COLUMNS,
    FINDING_CATEGORIES,
    FINDING_COLUMNS,
    IMAGE_TABLE_COLUMNS,
    LABEL_TABLE_COLUMNS,
    LIST_COLUMNS,
    NO_FINDING,
    ONE_HOT_COLUMNS,
    ROW_TABLE_COLUMNS,
    assign_validation_folds,
    finding_slots,
    map_boxes_to_png,
    read_vindr_annotations,
    validate_vindr_annotations,
    vindr_image_label_table,
    vindr_image_table,
    vindr_row_table,
)
from mammoclip.datasets import DatasetSpec, list_images, read_metadata
from mammoclip.dicom import decode_stored, read_header
from mammoclip.phantoms import VINDR_BREAST_COLUMNS, VINDR_FINDING_COLUMNS, generate_vindr, image_rng
from mammoclip.phantoms.anatomy import make_breast_geometry, render_breast_image
from mammoclip.preprocess import MANIFEST_COLUMNS, convert_images

LOGGER = "mammoclip.annotations"

# ------------------------------------------------------------------------------------------------
# Hand-written fixture. Every image is 3518 x 2800; the manifest crops [5, 2005) x [105, 3105) and
# resizes to 200 x 300, i.e. x_png = (x - 5) / 10, y_png = (y - 105) / 10.
# ------------------------------------------------------------------------------------------------

BREAST_CSV = """\
study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split
study_a,ser_a1,a_lcc,L,CC,3518,2800,BI-RADS 1,DENSITY C,training
study_a,ser_a1,a_lmlo,L,MLO,3518,2800,BI-RADS 1,DENSITY C,training
study_a,ser_a2,a_rcc,R,CC,3518,2800,BI-RADS 4,DENSITY C,training
study_a,ser_a2,a_rmlo,R,MLO,3518,2800,BI-RADS 4,DENSITY C,training
study_b,ser_b1,b_lcc,L,CC,3518,2800,BI-RADS 5,DENSITY B,test
study_b,ser_b1,b_lmlo,L,MLO,3518,2800,BI-RADS 5,DENSITY B,test
study_b,ser_b2,b_rcc,R,CC,3518,2800,BI-RADS 1,DENSITY B,test
study_b,ser_b2,b_rmlo,R,MLO,3518,2800,BI-RADS 1,DENSITY B,test
study_c,ser_c1,c_lcc1,L,CC,3518,2800,BI-RADS 3,DENSITY A,training
study_c,ser_c1,c_lcc2,L,CC,3518,2800,BI-RADS 3,DENSITY A,training
study_c,ser_c2,c_rmlo,R,MLO,3518,2800,BI-RADS 1,DENSITY A,training
"""
_BREAST_PREFIX = {line.split(",")[2]: line.rsplit(",", 1)[0] for line in BREAST_CSV.splitlines()[1:]}
_SPLIT = {line.split(",")[2]: line.rsplit(",", 1)[1] for line in BREAST_CSV.splitlines()[1:]}
FINDING_ROWS = [  # image, finding_categories (as written in the CSV), finding_birads, box
    ("a_rcc", "['Mass']", "BI-RADS 4", "1005.0,1105.0,1205.0,1305.0"),
    ("a_rcc", "['Suspicious Calcification']", "BI-RADS 4", "1900.0,2005.0,2100.0,2205.0"),
    ("a_rmlo", "['Mass']", "BI-RADS 4", "105.0,405.0,505.0,3005.0"),
    ("b_lcc", "\"['Suspicious Calcification', 'Mass']\"", "BI-RADS 5", "505.0,605.0,705.0,805.0"),
    ("c_lcc1", "['Suspicious Lymph Node']", "BI-RADS 3", "2100.0,205.0,2300.0,405.0"),
    *[
        (image, "['No Finding']", "", ",,,")
        for image in ("a_lcc", "a_lmlo", "b_lmlo", "b_rcc", "b_rmlo", "c_lcc2", "c_rmlo")
    ],
]
FINDINGS_CSV = (
    ",".join(FINDING_COLUMNS)
    + "\n"
    + "".join(
        f"{_BREAST_PREFIX[image]},{cats},{fb},{box},{_SPLIT[image]}\n"
        for image, cats, fb, box in FINDING_ROWS
    )
)
IMAGE_IDS = [line.split(",")[2] for line in BREAST_CSV.splitlines()[1:]]
OTHERS = list(FINDING_CATEGORIES)


def _manifest(image_ids=IMAGE_IDS, *, failed=(), crop=(5, 105, 2005, 3105), png=(200, 300)) -> pd.DataFrame:
    rows = []
    for image_id in image_ids:
        ok = image_id not in failed
        rows.append(
            {
                "image_id": image_id,
                "patient_id": "p",
                "source_path": f"dcm/{image_id}.dicom",
                "png_path": f"png/{image_id}.png",
                "status": "ok" if ok else "failed",
                "reason": "" if ok else "decode_error: broken codestream",
                "orig_height": 3518,
                "orig_width": 2800,
                "photometric": "MONOCHROME2",
                "bits_stored": 12,
                "transfer_syntax": "uncompressed",
                **dict(
                    zip(
                        ("crop_x0", "crop_y0", "crop_x1", "crop_y1"), crop if ok else [pd.NA] * 4, strict=True
                    )
                ),
                "crop_contiguous": True if ok else pd.NA,
                "png_width": png[0] if ok else pd.NA,
                "png_height": png[1] if ok else pd.NA,
            }
        )
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _write(tmp_path: Path, breast: str = BREAST_CSV, findings: str = FINDINGS_CSV) -> tuple[Path, Path]:
    b, f = tmp_path / "breast-level_annotations.csv", tmp_path / "finding_annotations.csv"
    b.write_text(breast)
    f.write_text(findings)
    return b, f


def _replace_line(text: str, line: int, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` on physical line ``line`` (1-based, header = 1)."""
    lines = text.splitlines(keepends=True)
    assert old in lines[line - 1], (old, lines[line - 1])
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    return "".join(lines)


@pytest.fixture
def hand(tmp_path):
    breast, findings = read_vindr_annotations(*_write(tmp_path))
    return breast, findings, _manifest()


def _build(breast, findings, manifest, **kw):
    mapped = map_boxes_to_png(findings, manifest)
    rows = vindr_row_table(breast, mapped, manifest, n_folds=2, seed=0, **kw)
    images, boxes = vindr_image_table(breast, mapped, manifest, n_folds=2, seed=0, **kw)
    return mapped, rows, images, boxes, vindr_image_label_table(images)


# ------------------------------------------------------------------------------------------------ reading


def test_schemas_match_the_phantom_generator():
    assert tuple(VINDR_BREAST_COLUMNS) == BREAST_COLUMNS
    assert tuple(VINDR_FINDING_COLUMNS) == FINDING_COLUMNS
    assert len(ROW_TABLE_COLUMNS) == 33 + 2  # upstream's 33 + png_path, val_fold
    assert ROW_TABLE_COLUMNS[-2:] == ("png_path", "val_fold")
    assert ONE_HOT_COLUMNS == (
        "Architectural_Distortion", "Asymmetry", "Focal_Asymmetry", "Global_Asymmetry", "Mass",
        "Nipple_Retraction", "No_Finding", "Skin_Retraction", "Skin_Thickening", "Suspicious_Calcification",
        "Suspicious_Lymph_Node",
    )  # fmt: skip


def test_read_types_and_values(hand):
    breast, findings, _ = hand
    assert len(breast) == 11 and len(findings) == 12
    assert breast["image_id"].tolist() == IMAGE_IDS
    assert breast["height"].dtype == np.int64 and findings["width"].dtype == np.int64
    assert findings["finding_categories"].tolist()[:5] == [
        ["Mass"], ["Suspicious Calcification"], ["Mass"], ["Suspicious Calcification", "Mass"],
        ["Suspicious Lymph Node"],
    ]  # fmt: skip
    assert findings.loc[0, ["xmin", "ymin", "xmax", "ymax"]].tolist() == [1005.0, 1105.0, 1205.0, 1305.0]
    assert findings.loc[5:, "xmin"].isna().all() and findings.loc[5:, "finding_birads"].isna().all()
    assert findings.attrs["source"].endswith("finding_annotations.csv")
    assert list(findings.index) == list(range(12))


def test_ids_stay_strings(tmp_path):
    breast = BREAST_CSV.replace("a_lcc", "00123")
    findings = FINDINGS_CSV.replace("a_lcc", "00123")
    b, f = read_vindr_annotations(*_write(tmp_path, breast, findings))
    assert b.loc[0, "image_id"] == "00123" and "00123" in set(f["image_id"])


@pytest.mark.parametrize(
    ("file", "line", "old", "new", "column", "message"),
    [
        ("f", 3, "['Suspicious Calcification']", "['Suspicious Calcification'", "finding_categories", "list"),
        ("f", 4, "['Mass']", "Mass", "finding_categories", "not a Python list literal"),
        ("f", 2, "['Mass']", "['Masss']", "finding_categories", "unknown value"),
        ("f", 7, "['No Finding']", "\"['No Finding', 'Mass']\"", "finding_categories", "combined"),
        ("f", 2, "1005.0,1105.0,1205.0", "2805.0,1105.0,2900.0", "xmin", "entirely outside the image"),
        ("f", 2, "1005.0,1105.0,1205.0,1305.0", "1005.0,3518.0,1205.0,3600.0", "ymin", "entirely outside"),
        ("f", 2, "1005.0,1105.0,1205.0", "-30.0,1105.0,0.0", "xmax", "entirely outside the image"),
        ("f", 2, "1005.0,1105.0,1205.0,1305.0", "1005.0,-9.0,1205.0,-1.5", "ymax", "entirely outside"),
        ("f", 2, "1005.0,1105.0,1205.0", "1305.0,1105.0,1205.0", "xmin", "inverted box: xmin must be < xmax"),
        ("f", 2, "1105.0,1205.0,1305.0", "1305.0,1205.0,1105.0", "ymin", "inverted box: ymin must be < ymax"),
        ("f", 2, "1005.0,1105.0,1205.0", "1005.0,1105.0,1005.0", "xmin", "empty box: xmin must be < xmax"),
        ("f", 2, "1105.0,1205.0,1305.0", "1105.0,1205.0,1105.0", "ymin", "empty box: ymin must be < ymax"),
        ("f", 2, "1105.0", "abc", "ymin", "expected a number"),
        ("f", 2, "1105.0", "", "ymin", "partly empty"),
        ("f", 7, ",,,,,training", ",1.0,1.0,2.0,2.0,training", "xmin", "empty box"),
        ("f", 2, "1005.0,1105.0,1205.0,1305.0", ",,,", "xmin", "needs a box"),
        ("f", 2, "BI-RADS 4,1005.0", "BIRADS 4,1005.0", "finding_birads", "BI-RADS"),
        ("f", 2, "DENSITY C", "DENSITY E", "breast_density", "DENSITY"),
        ("f", 2, "DENSITY C", "DENSITY B", "breast_density", "differs from"),
        ("f", 2, "a_rcc", "zz_unknown", "image_id", "not listed"),
        ("f", 7, "a_lcc", "a_rcc", "series_id", "differs from"),
        ("b", 3, ",MLO,", ",XCCL,", "view_position", "CC or MLO"),
        ("b", 3, ",L,", ",B,", "laterality", "L or R"),
        ("b", 3, "3518", "35.5", "height", "positive integer"),
        ("b", 3, "BI-RADS 1", "BI-RADS 7", "breast_birads", "BI-RADS"),
        ("b", 3, "training", "train", "split", "training"),
        ("b", 3, "a_lmlo", "a_lcc", "image_id", "duplicated image id"),
    ],
)
def test_errors_name_file_row_and_column(tmp_path, file, line, old, new, column, message):
    breast, findings = BREAST_CSV, FINDINGS_CSV
    if file == "f":
        findings = _replace_line(findings, line, old, new)
    else:
        breast = _replace_line(breast, line, old, new)
    with pytest.raises(AnnotationError) as err:
        read_vindr_annotations(*_write(tmp_path, breast, findings))
    text = str(err.value)
    name = "finding_annotations.csv" if file == "f" else "breast-level_annotations.csv"
    assert f"{name}: row" in text, text
    assert f"column {column!r}" in text, text
    assert f"{line - 1} (line {line})" in text, text
    assert message in text, text


def test_duplicate_image_names_every_row(tmp_path):
    breast = _replace_line(BREAST_CSV, 3, "a_lmlo", "a_lcc")
    with pytest.raises(
        AnnotationError, match=r"breast-level_annotations\.csv: rows 1 \(line 2\), 2 \(line 3\)"
    ):
        read_vindr_annotations(*_write(tmp_path, breast, FINDINGS_CSV))


def test_missing_columns_are_named(tmp_path):
    findings = FINDINGS_CSV.replace("finding_birads,", "f_birads,", 1)
    with pytest.raises(
        AnnotationError, match=r"finding_annotations\.csv.*missing column\(s\) 'finding_birads'"
    ):
        read_vindr_annotations(*_write(tmp_path, findings=findings))
    breast = BREAST_CSV.replace(",split", ",part", 1).replace("study_id,", "study,", 1)
    with pytest.raises(AnnotationError, match=r"breast-level_annotations\.csv.*'study_id', 'split'"):
        read_vindr_annotations(*_write(tmp_path, breast=breast))


def test_image_without_finding_rows_and_mixed_rows_rejected(tmp_path):
    lines = FINDINGS_CSV.splitlines(keepends=True)
    without = "".join(line for line in lines if ",c_rmlo," not in line)
    with pytest.raises(
        AnnotationError, match=r"breast-level_annotations\.csv: row 11 \(line 12\).*no row in"
    ):
        read_vindr_annotations(*_write(tmp_path, findings=without))
    mixed = FINDINGS_CSV + lines[6].replace("a_lcc", "a_rcc").replace("ser_a1", "ser_a2").replace(
        ",L,CC,", ",R,CC,"
    ).replace("BI-RADS 1", "BI-RADS 4")
    with pytest.raises(
        AnnotationError, match=r"row 13 \(line 14\).*'No Finding' row for an image that has findings"
    ):
        read_vindr_annotations(*_write(tmp_path, findings=mixed))


def test_extra_columns_logged_and_ignored(tmp_path, caplog):
    breast = (
        "\n".join(line + (",note" if i == 0 else ",x") for i, line in enumerate(BREAST_CSV.splitlines()))
        + "\n"
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        b, _ = read_vindr_annotations(*_write(tmp_path, breast=breast))
    assert list(b.columns) == list(BREAST_COLUMNS)
    assert "ignoring unexpected column(s) 'note'" in caplog.text


# ------------------------------------------------------------------------------------------------ box mapping


def test_map_boxes_exact_values_and_upstream_fixes(hand, caplog):
    breast, findings, manifest = hand
    with caplog.at_level(logging.INFO, logger=LOGGER):
        mapped = map_boxes_to_png(findings, manifest)
    r = mapped[["resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"]]
    assert r.loc[0].tolist() == [100.0, 100.0, 120.0, 120.0]
    # partly outside the crop on the right: clipped to the PNG width (200), not left at 209.5
    assert r.loc[1].tolist() == [189.5, 190.0, 200.0, 210.0]
    # tall box: ymax 3005 > width 2800. Upstream clamps ymax - 5 by the width - 10 (2790) -> would map to
    # (2790 - 100) / 10 = 269; the fix keeps (3005 - 105) / 10 = 290.
    assert r.loc[2].tolist() == [10.0, 30.0, 50.0, 290.0]
    upstream_ymax = (min(3005.0 - 5, 2800 - 10) - (105 - 5)) * 300 / 3000
    assert upstream_ymax != r.loc[2, "resized_ymax"]
    assert r.loc[3].tolist() == [50.0, 50.0, 70.0, 70.0]
    # entirely outside the breast crop: kept, NaN, reported
    assert r.loc[4].isna().all() and mapped.loc[4, "finding_categories"] == ["Suspicious Lymph Node"]
    assert re.search(
        r"finding_annotations\.csv: row 5 \(line 6\): 1 box\(es\) lie entirely outside", caplog.text
    )
    assert "c_lcc1 box [2100.0, 205.0, 2300.0, 405.0]" in caplog.text
    assert "1 box(es) partly outside the breast crop were clipped" in caplog.text
    # No Finding rows stay NaN (upstream turned NaN into full-image boxes)
    assert r.loc[5:].isna().all().all()
    assert list(mapped.index) == list(range(12)) and len(mapped) == 12
    assert list(mapped.columns) == [
        *FINDING_COLUMNS,
        "resized_xmin",
        "resized_ymin",
        "resized_xmax",
        "resized_ymax",
    ]


def test_map_uses_per_axis_scale_and_clips_y_by_height(hand):
    _, findings, _ = hand
    manifest = _manifest(crop=(5, 1105, 1005, 3105), png=(100, 1000))  # x / 10, y / 2
    r = map_boxes_to_png(findings, manifest).loc[
        [0, 2], ["resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"]
    ]
    # row 0: x [1005, 1205) is outside [5, 1005) -> empty after clipping -> NaN
    assert r.loc[0].isna().all()
    # row 2: x (105-5)/10=10 .. (505-5)/10=50; y (405-1105)/2 < 0 -> 0, (3005-1105)/2 = 950
    assert r.loc[2].tolist() == [10.0, 0.0, 50.0, 950.0]


def test_failed_and_absent_images_excluded_and_logged(hand, caplog):
    _, findings, _ = hand
    manifest = _manifest([i for i in IMAGE_IDS if i != "a_rmlo"], failed=("b_lcc",))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mapped = map_boxes_to_png(findings, manifest)
    assert len(mapped) == 10 and {"a_rmlo", "b_lcc"}.isdisjoint(mapped["image_id"])
    assert (
        "finding_annotations.csv: row 3 (line 4), column 'image_id': 1 finding rows name image(s) absent "
        "from the PNG manifest (e.g. a_rmlo); excluded"
    ) in caplog.text
    assert "row 4 (line 5), column 'image_id': 1 finding rows belong to image(s) that failed" in caplog.text
    assert "decode_error: 1" in caplog.text
    with pytest.raises(
        AnnotationError, match=r"finding_annotations\.csv: row 3 \(line 4\), column 'image_id'"
    ):
        map_boxes_to_png(findings, manifest, missing="error")


def test_manifest_size_mismatch_and_png_release(hand, caplog):
    _, findings, manifest = hand
    bad = manifest.copy()
    bad.loc[2, "orig_height"] = 3000
    with pytest.raises(
        AnnotationError, match=r"rows 1 \(line 2\), 2 \(line 3\), column 'height'.*orig_height = 3000"
    ):
        map_boxes_to_png(findings, bad)
    release = manifest.copy()
    for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1", "orig_height", "orig_width", "crop_contiguous"):
        release[c] = pd.NA
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mapped = map_boxes_to_png(findings, release)
    assert mapped["resized_xmin"].isna().all() and len(mapped) == 12
    assert "5 box(es) belong to images without a crop box" in caplog.text
    legacy = manifest.copy()
    legacy["crop_contiguous"] = [i != "a_rcc" for i in IMAGE_IDS]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mapped = map_boxes_to_png(findings, legacy)
    assert mapped["resized_xmin"].notna().sum() == 4  # still mapped (through the bounding range)
    assert "2 box(es) are on images with a non-contiguous (legacy) crop" in caplog.text


# ------------------------------------------------------------------------------------------------ tables


def test_row_table(hand):
    breast, findings, manifest = hand
    _, rows, *_ = _build(breast, findings, manifest)
    assert tuple(rows.columns) == ROW_TABLE_COLUMNS and len(rows) == 12
    assert rows["image_id"].tolist() == [f"{i}.png" for i in findings["image_id"]]  # CSV row order
    first = rows.iloc[0]
    identity = ["patient_id", "series_id", "image_id", "laterality", "view", "height", "width"]
    assert first[identity].tolist() == [
        "study_a", "ser_a2", "a_rcc.png", "R", "CC", 3518, 2800,
    ]  # fmt: skip
    values = ["breast_birads", "breast_density", "finding_birads", "split", "fold", "density"]
    assert first[values].tolist() == [
        "BI-RADS 4", "DENSITY C", "BI-RADS 4", "training", 1, 2,
    ]  # fmt: skip
    assert first["png_path"] == "png/a_rcc.png"
    hot = rows[list(ONE_HOT_COLUMNS)]
    assert hot.loc[0].to_dict() == {c: int(c == "Mass") for c in ONE_HOT_COLUMNS}
    assert hot.loc[3, "Mass"] == 1 and hot.loc[3, "Suspicious_Calcification"] == 1 and hot.loc[3].sum() == 2
    assert (hot.loc[5:, "No_Finding"] == 1).all() and (hot.loc[5:].sum(axis=1) == 1).all()
    assert rows["fold"].tolist() == [int(s == "training") for s in rows["split"]]
    assert rows["density"].tolist() == [{"A": 0, "B": 1, "C": 2}[d[-1]] for d in rows["breast_density"]]
    assert (rows.loc[rows.split == "test", "val_fold"] == -1).all()
    assert (rows.loc[rows.split == "training", "val_fold"] >= 0).all()
    assert rows.loc[3, "finding_categories"] == ["Suspicious Calcification", "Mass"]  # as in the CSV


def test_image_table_and_boxes(hand):
    breast, findings, manifest = hand
    _, _, images, boxes, _ = _build(breast, findings, manifest)
    assert tuple(images.columns) == IMAGE_TABLE_COLUMNS and len(images) == 11
    assert images["image_id"].tolist() == [f"{i}.png" for i in IMAGE_IDS]  # breast-level order
    by = images.set_index("image_id")
    assert by.loc["a_rcc.png", "finding_categories"] == ["Mass", "Suspicious Calcification"]
    assert by.loc["a_rcc.png", "n_boxes"] == 2 and by.loc["a_lcc.png", "n_boxes"] == 0
    assert by.loc["a_rcc.png", ["Mass", "Suspicious_Calcification", "No_Finding"]].tolist() == [1, 1, 0]
    assert by.loc["b_lcc.png", "finding_categories"] == ["Mass", "Suspicious Calcification"]  # LABELS order
    assert by.loc["c_lcc1.png", "finding_categories"] == ["Suspicious Lymph Node"]
    assert (
        by.loc["a_lcc.png", "finding_categories"] == [NO_FINDING] and by.loc["a_lcc.png", "No_Finding"] == 1
    )
    assert (images[list(ONE_HOT_COLUMNS)].sum(axis=1) >= 1).all()
    assert tuple(boxes.columns) == BOX_TABLE_COLUMNS and len(boxes) == 5
    assert boxes["image_id"].tolist() == ["a_rcc.png", "a_rcc.png", "a_rmlo.png", "b_lcc.png", "c_lcc1.png"]
    assert boxes.loc[2, ["resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"]].tolist() == [
        10.0, 30.0, 50.0, 290.0,
    ]  # fmt: skip
    assert boxes.loc[4, ["resized_xmin", "resized_xmax"]].isna().all()  # outside the crop: kept, NaN
    assert boxes["png_path"].tolist()[0] == "png/a_rcc.png"
    assert boxes["val_fold"].tolist() == by.loc[boxes["image_id"], "val_fold"].tolist()


def test_image_label_table(hand):
    breast, findings, manifest = hand
    *_, labels = _build(breast, findings, manifest)
    assert tuple(labels.columns) == LABEL_TABLE_COLUMNS
    assert labels["patient_id_laterality"].tolist() == [
        "study_a_L", "study_a_R", "study_b_L", "study_b_R", "study_c_L", "study_c_R",
    ]  # fmt: skip
    b = labels.set_index("patient_id_laterality")
    minus = lambda *pos: [c for c in OTHERS if c not in pos]  # noqa: E731
    # normal breast
    assert b.loc["study_a_L", "image"] == ["a_lcc.png", "a_lmlo.png"] and b.loc["study_a_L", "view"] == [
        "CC",
        "MLO",
    ]
    assert b.loc["study_a_L", "CC_FINDING"] == [[], [NO_FINDING], [], []]
    # right breast with findings in both views: slots 0 and 2; negatives exclude positives (upstream bug)
    assert b.loc["study_a_R", "cc_findings"] == [["Mass", "Suspicious Calcification"]]
    assert b.loc["study_a_R", "CC_FINDING"] == [
        ["Mass", "Suspicious Calcification"], [], minus("Mass", "Suspicious Calcification"), [],
    ]  # fmt: skip
    assert b.loc["study_a_R", "MLO_FINDING"] == [["Mass"], [], minus("Mass"), []]
    # left test breast: finding on CC only -> MLO is "No Finding" with no negatives (per-view union)
    assert b.loc["study_b_L", "CC_FINDING"] == [
        [],
        ["Mass", "Suspicious Calcification"],
        [],
        minus("Mass", "Suspicious Calcification"),
    ]
    assert b.loc["study_b_L", "MLO_FINDING"] == [[], [NO_FINDING], [], []]
    assert b.loc["study_b_L", ["split", "fold", "val_fold"]].tolist() == ["test", 0, -1]
    # two CC images, no MLO: kept (upstream dropped such a breast by hand)
    c_l = b.loc["study_c_L"]
    assert c_l["image"] == ["c_lcc1.png", "c_lcc2.png"] and c_l["view"] == ["CC", "CC"]
    assert c_l["CC"] == ["c_lcc1.png", "c_lcc2.png"] and c_l["MLO"] == []
    assert c_l["cc_findings"] == [["Suspicious Lymph Node"], [NO_FINDING]] and c_l["mlo_findings"] == []
    assert c_l["CC_FINDING"] == [[], ["Suspicious Lymph Node"], [], minus("Suspicious Lymph Node")]
    assert c_l["MLO_FINDING"] == [[], [], [], []]
    # missing CC view: kept
    c_r = b.loc["study_c_R"]
    assert c_r["CC"] == [] and c_r["MLO"] == ["c_rmlo.png"] and c_r["image"] == ["c_rmlo.png"]
    assert c_r["CC_FINDING"] == [[], [], [], []] and c_r["MLO_FINDING"] == [[NO_FINDING], [], [], []]
    for slots in [*labels["CC_FINDING"], *labels["MLO_FINDING"]]:
        pos, neg = slots[0] + slots[1], slots[2] + slots[3]
        assert not set(pos) & set(neg)
        if pos and pos != [NO_FINDING]:
            assert sorted(pos + neg) == sorted(OTHERS)
    # every patient has one val_fold in every table
    assert labels.groupby("patient_id")["val_fold"].nunique().max() == 1


def test_finding_slots_rules():
    assert finding_slots(["Mass", "Mass", NO_FINDING], "R") == [["Mass"], [], OTHERS[1:], []]
    assert finding_slots([], "L") == [[], [NO_FINDING], [], []]
    assert finding_slots([], "L", has_images=False) == [[], [], [], []]
    with pytest.raises(ValueError, match="unknown"):
        finding_slots(["Tumour"], "L")


def test_tables_exclude_failed_images_consistently(hand, caplog):
    breast, findings, _ = hand
    manifest = _manifest([i for i in IMAGE_IDS if i != "c_rmlo"], failed=("a_rcc",))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, rows, images, boxes, labels = _build(breast, findings, manifest)
    assert "a_rcc.png" not in set(rows["image_id"]) | set(images["image_id"]) | set(boxes["image_id"])
    assert len(rows) == 9 and len(images) == 9 and len(boxes) == 3
    assert (
        "breast-level_annotations.csv: row 11 (line 12), column 'image_id': 1 images name image(s) absent"
        in caplog.text
    )
    assert labels.set_index("patient_id_laterality").loc["study_a_R", "CC"] == []
    assert "study_c_R" not in set(labels["patient_id_laterality"])


def test_round_trip_and_determinism(hand, tmp_path):
    breast, findings, manifest = hand
    first = _build(breast, findings, manifest)[1:]
    (tmp_path / "again").mkdir()
    second = _build(*read_vindr_annotations(*_write(tmp_path / "again")), manifest)[1:]
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        write_table(a, tmp_path / f"a{i}.csv")
        write_table(b, tmp_path / f"b{i}.csv")
        assert (tmp_path / f"a{i}.csv").read_bytes() == (tmp_path / f"b{i}.csv").read_bytes()
    labels = first[-1]
    back = read_table(tmp_path / "a3.csv", list_columns=LIST_COLUMNS, str_columns=("patient_id",))
    for column in LIST_COLUMNS:
        if column in labels:
            assert back[column].tolist() == labels[column].tolist(), column
    text = (tmp_path / "a0.csv").read_text()
    assert "\"['Suspicious Calcification', 'Mass']\"" in text  # upstream's repr format
    assert ",,,,," in text.splitlines()[6]  # No Finding: empty boxes, empty resized boxes


# ------------------------------------------------------------------------------------------------ folds


def test_validation_folds_patient_level():
    rng = np.random.default_rng(0)
    patients = [f"p{i:03d}" for i in range(125)]
    rows = [
        (p, "test" if i >= 100 else "training")
        for i, p in enumerate(patients)
        for _ in range(rng.integers(1, 6))
    ]
    table = pd.DataFrame(rows, columns=["patient_id", "split"]).sample(frac=1, random_state=1)
    folds = assign_validation_folds(table, n_folds=5, seed=7)
    assert folds.index.equals(table.index) and folds.name == "val_fold"
    per_patient = folds.groupby(table["patient_id"]).nunique()
    assert (per_patient == 1).all()  # no patient in two folds
    assert (folds[table["split"] == "test"] == -1).all()
    train = folds[table["split"] == "training"]
    assert set(train) == set(range(5))
    counts = train.groupby(table["patient_id"]).first().value_counts()
    assert counts.tolist() == [20] * 5  # 100 training patients -> exactly 20 per fold
    again = assign_validation_folds(table.sort_index(), n_folds=5, seed=7)
    assert again.sort_index().equals(folds.sort_index())  # row order does not matter
    other = assign_validation_folds(table, n_folds=5, seed=8)
    assert not other.equals(folds)
    with pytest.raises(ValueError):
        assign_validation_folds(table, n_folds=1, seed=0)


# ------------------------------------------------------------------------------------------------ phantoms

PNG_W, PNG_H = 960, 1536  # see test_phantom_boxes_match_lesions_in_png for why this size
SEED, SCALE = 3, 0.1


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("vindr_phantom")
    truth = generate_vindr(root, n_studies=6, image_scale=SCALE, seed=SEED)
    spec = DatasetSpec(
        "vindr", "phantom", root, root / "breast-level_annotations.csv", "images/{study_id}/{image_id}.dicom"
    )
    images = list_images(spec, read_metadata(spec.metadata_csv), png_root=root / "png")
    manifest = convert_images(images, width=PNG_W, height=PNG_H, progress=False)
    assert (manifest["status"] == "ok").all()
    breast, findings = read_vindr_annotations(
        root / "breast-level_annotations.csv", root / "finding_annotations.csv"
    )
    lesions = pd.read_csv(root / "phantom_lesions.csv", dtype={"image_id": str})
    return root, truth, manifest, breast, findings, lesions


def _lesion_free(root: Path, truth: pd.DataFrame, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(display-sense stored values of the DICOM, the same without lesions) for truth row ``i``."""
    r = truth.iloc[i]
    rng = image_rng(SEED, "vindr", i)
    geom = make_breast_geometry(int(r.height), int(r.width), r.view, rng, scale=SCALE)
    ref = render_breast_image(geom, [], density=r.density, laterality=r.laterality, rng=rng)
    ref_v = r.stored_lo + np.rint(ref.intensity * (r.stored_hi - r.stored_lo))
    v = decode_stored(read_header(root / r.dicom_path)).stored.astype(np.int64)
    if r.photometric == "MONOCHROME1":
        v = 2 ** int(r.bits_stored) - 1 - v
    return v, ref_v


def _footprint(mask: np.ndarray, crop: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """PNG pixels touched by ``mask`` after the converter's crop + INTER_AREA resize (half-open box)."""
    x0, y0, x1, y1 = crop
    cover = cv2.resize(mask[y0:y1, x0:x1].astype(np.float32), (PNG_W, PNG_H), interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(cover > 1e-3)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return ix / (area(a) + area(b) - ix)


def test_phantom_boxes_match_lesions_in_png(phantom):
    """Every planted lesion, measured in the PNG frame, lies in its finding's mapped box (IoU >= 0.9).

    What is measured: the lesion's pixels are recovered from the decoded DICOM (its difference to a
    lesion-free re-render of the same image, see mammoclip.phantoms.image_rng), then carried into the PNG
    by the converter's own operations (the manifest's crop box and cv2.resize INTER_AREA to the PNG size);
    the PNG pixels they touch give the measured box. That box is pixel-quantised (up to ~1 px per side),
    and the smallest phantom calcification clusters are ~5 source pixels wide at image_scale 0.1, so the
    PNG is made large (960 x 1536, an up-scale) to make IoU >= 0.9 a meaningful, not a quantisation-bound,
    test. Each side must also lie within 1 PNG pixel of the mapped box.
    """
    root, truth, manifest, breast, findings, lesions = phantom
    mapped = map_boxes_to_png(findings, manifest)
    crops = manifest.set_index("image_id")
    n_lesions = n_findings = 0
    ious: list[float] = []
    for i, r in truth.iterrows():
        mine = lesions[lesions.image_id == r.image_id]
        rows = mapped[(mapped.image_id == r.image_id) & mapped.xmin.notna()]
        assert len(rows) == mine["finding"].nunique()
        if mine.empty:
            continue
        v, ref_v = _lesion_free(root, truth, i)
        changed = v != ref_v
        m = crops.loc[r.image_id]
        crop = (int(m.crop_x0), int(m.crop_y0), int(m.crop_x1), int(m.crop_y1))
        for _, group in mine.groupby("finding"):
            truth_box = (group.xmin.min(), group.ymin.min(), group.xmax.max(), group.ymax.max())
            row = rows[
                (rows.xmin == truth_box[0]) & (rows.ymin == truth_box[1])
                & (rows.xmax == truth_box[2]) & (rows.ymax == truth_box[3])
            ]  # fmt: skip
            assert len(row) == 1
            box = row[["resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"]].iloc[0].to_numpy()
            region = np.zeros_like(changed)
            for les in group.itertuples():
                one = np.zeros_like(changed)
                one[les.ymin : les.ymax, les.xmin : les.xmax] = True
                fp = _footprint(changed & one, crop)  # each lesion inside its finding's box (+1 px)
                assert (
                    box[0] - 1 <= fp[0]
                    and box[1] - 1 <= fp[1]
                    and fp[2] <= box[2] + 1
                    and fp[3] <= box[3] + 1
                )
                region |= one
                n_lesions += 1
            measured = _footprint(changed & region, crop)
            assert np.all(np.abs(np.subtract(measured, box)) <= 1.0), (r.image_id, measured, box)
            assert _iou(measured, box) >= 0.9, (r.image_id, measured, box, _iou(measured, box))
            ious.append(_iou(measured, box))
            n_findings += 1
    print(f"{n_findings} findings / {n_lesions} lesions, IoU min {min(ious):.3f} mean {np.mean(ious):.3f}")
    assert n_lesions == len(lesions) >= 10 and n_findings >= 8
    assert set(lesions["category"]) == {"Mass", "Suspicious Calcification"}


def test_phantom_tables_agree_with_truth(phantom):
    root, truth, manifest, breast, findings, _ = phantom
    mapped = map_boxes_to_png(findings, manifest)
    rows = vindr_row_table(breast, mapped, manifest, n_folds=2, seed=0)
    images, boxes = vindr_image_table(breast, mapped, manifest, n_folds=2, seed=0)
    labels = vindr_image_label_table(images)
    assert len(rows) == len(findings) and len(images) == len(truth) == 24 and len(labels) == 12
    t = truth.assign(image_id=truth.image_id + ".png").set_index("image_id").loc[images.image_id]
    assert images["Mass"].tolist() == t["has_mass"].tolist()
    assert images["Suspicious_Calcification"].tolist() == t["has_calcification"].tolist()
    assert images["No_Finding"].tolist() == (t["n_findings"] == 0).astype(int).tolist()
    assert images["split"].tolist() == t["split"].tolist()
    assert images["density"].tolist() == t["density"].map({"A": 0, "B": 1, "C": 2, "D": 3}).tolist()
    assert all(Path(p).is_file() for p in images["png_path"])
    assert len(boxes) == int(rows["No_Finding"].eq(0).sum()) and boxes["resized_xmin"].notna().all()
    assert all(v == ["CC", "MLO"] for v in labels["view"])
    for table in (rows, images, labels):
        assert table.groupby("patient_id")["val_fold"].nunique().max() == 1
    assert ((labels["split"] == "test") == (labels["val_fold"] == -1)).all()


def test_phantom_build_is_byte_identical(phantom, tmp_path):
    root, _, manifest, *_ = phantom
    outputs = []
    for run in range(2):
        breast, findings = read_vindr_annotations(
            root / "breast-level_annotations.csv", root / "finding_annotations.csv"
        )
        mapped, rows, images, boxes, labels = _build(breast, findings, manifest)
        paths = []
        for name, table in (("rows", rows), ("images", images), ("boxes", boxes), ("labels", labels)):
            write_table(table, tmp_path / f"{name}{run}.csv")
            paths.append((tmp_path / f"{name}{run}.csv").read_bytes())
        outputs.append(paths)
    assert outputs[0] == outputs[1]


# ---------------------------------------------------------------------------------------------- 20 000 images


def _synthetic_vindr(n_studies: int = 5000, n_finding_images: int = 1768, n_extra: int = 486):
    """VinDr-sized frames: 4 images per study, finding rows first then one No Finding row per image."""
    rng = np.random.default_rng(0)
    n = 4 * n_studies
    study = np.repeat([f"{i:032x}" for i in range(n_studies)], 4)
    image = np.array([f"{i + 10**6:032x}" for i in range(n)])
    lat = np.tile(["L", "L", "R", "R"], n_studies)
    view = np.tile(["CC", "MLO"], 2 * n_studies)
    split = np.repeat(np.where(np.arange(n_studies) % 5 == 0, "test", "training"), 4)
    density = np.repeat(rng.choice(list("ABCD"), n_studies), 4)
    breast = pd.DataFrame(
        {
            "study_id": study, "series_id": np.char.add("s", study), "image_id": image, "laterality": lat,
            "view_position": view, "height": 3518, "width": 2800, "breast_birads": "BI-RADS 1",
            "breast_density": np.char.add("DENSITY ", density), "split": split,
        }
    )  # fmt: skip
    finding_images = rng.choice(n, n_finding_images, replace=False)
    picks = np.concatenate([finding_images, rng.choice(finding_images, n_extra, replace=False)])
    cats = [[OTHERS[k % 10]] if k % 7 else [OTHERS[k % 10], OTHERS[(k + 3) % 10]] for k in range(len(picks))]
    x0 = rng.uniform(0, 2000, len(picks))
    y0 = rng.uniform(0, 3000, len(picks))
    finding_rows = breast.iloc[picks].reset_index(drop=True).assign(
        finding_categories=[repr(c) for c in cats], finding_birads="BI-RADS 4",
        xmin=x0, ymin=y0,
        xmax=x0 + rng.uniform(10, 700, len(picks)), ymax=y0 + rng.uniform(10, 500, len(picks)),
    )  # fmt: skip
    normal = np.setdiff1d(np.arange(n), finding_images)
    normal_rows = (
        breast.iloc[normal]
        .reset_index(drop=True)
        .assign(
            finding_categories="['No Finding']",
            finding_birads="",
            xmin=np.nan,
            ymin=np.nan,
            xmax=np.nan,
            ymax=np.nan,
        )
    )
    findings = pd.concat([finding_rows, normal_rows], ignore_index=True)[list(FINDING_COLUMNS)]
    manifest = _manifest(list(image), failed=tuple(image[:3]), crop=(5, 300, 2600, 3300), png=(912, 1520))
    manifest = manifest.drop(index=[3, 4]).reset_index(drop=True)  # images 0-2 failed, 3-4 absent
    return breast, findings, manifest


def test_vindr_sized_build(tmp_path):
    breast, findings, manifest = _synthetic_vindr()
    assert len(breast) == 20_000 and len(findings) == 20_486
    write_table(breast, tmp_path / "b.csv")
    write_table(findings, tmp_path / "f.csv")
    breast, findings = read_vindr_annotations(tmp_path / "b.csv", tmp_path / "f.csv")
    mapped = map_boxes_to_png(findings, manifest)
    dropped = findings["image_id"].isin(breast["image_id"].iloc[:5])
    rows = vindr_row_table(breast, mapped, manifest)
    images, boxes = vindr_image_table(breast, mapped, manifest)
    labels = vindr_image_label_table(images)
    assert len(rows) == 20_486 - int(dropped.sum()) and len(images) == 19_995
    assert rows["image_id"].tolist() == (findings.loc[~dropped, "image_id"] + ".png").tolist()
    assert len(boxes) == int((rows["No_Finding"] == 0).sum()) == int((~dropped[:2254]).sum())
    assert int(rows[list(ONE_HOT_COLUMNS)].sum().sum()) == sum(
        len(c) for c in findings.loc[~dropped, "finding_categories"]
    )
    with_findings = set(findings["image_id"][:2254])
    kept = breast["image_id"].iloc[5:]
    assert images["No_Finding"].sum() == int((~kept.isin(with_findings)).sum())
    assert len(labels) == len(breast.iloc[5:].groupby(["study_id", "laterality"])) == 10_000 - 2
    sx, sy = 912 / 2595, 1520 / 3000
    r = mapped.dropna(subset=["resized_xmin"]).iloc[0]
    assert r.resized_xmin == pytest.approx(min(max((r.xmin - 5) * sx, 0), 912))
    assert r.resized_ymax == pytest.approx(min(max((r.ymax - 300) * sy, 0), 1520))
    assert (rows.groupby("patient_id")["val_fold"].nunique() == 1).all()
    assert set(rows.loc[rows.split == "training", "val_fold"]) == set(range(5))
    again = validate_vindr_annotations(breast, findings)[1]  # typed, in-memory frames are accepted too
    assert again["finding_categories"].tolist() == findings["finding_categories"].tolist()
