"""VinDr's real-file quirks: boxes slightly outside the image, empty finding BI-RADS, multi-category rows;
upstream's box arithmetic in legacy mode against a plain restatement on DICOMs with tie and edge crops;
the authors' PNG release with upstream's row table as the box source."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from mammoclip.annotations.tables import AnnotationError, write_table
from mammoclip.annotations.vindr import (
    BOX_COLUMNS,
    RESIZED_COLUMNS,
    UPSTREAM_BOX_ROWS,
    boxes_from_release_table,
    map_boxes_to_png,
    read_release_box_table,
    read_vindr_annotations,
    vindr_row_table,
)
from mammoclip.preprocess import MANIFEST_COLUMNS, read_manifest, write_manifest
from mammoclip.stages import build_vindr_tables
from mammoclip.upstream_reference import map_box_like_upstream

LOGGER = "mammoclip.annotations"
HEADER_B = (
    "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split"
)
HEADER_F = (
    "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,"
    "finding_categories,finding_birads,xmin,ymin,xmax,ymax,split"
)
# image -> (study, laterality, view, height, width, split); the real sizes 3518 x 2800, 2812 x 2012, ...
IMAGES = {
    "i1": ("s1", "L", "CC", 3518, 2800, "training"),
    "i2": ("s1", "L", "MLO", 3518, 2800, "training"),
    "i3": ("s1", "R", "CC", 2812, 2012, "training"),
    "i4": ("s1", "R", "MLO", 2812, 2012, "training"),
    "i5": ("s2", "L", "CC", 3580, 2364, "test"),
    "i6": ("s2", "L", "MLO", 3580, 2364, "test"),
}
# the real quirks: xmin down to -26.8 and a long float, ymin -5.2, xmax 33.2 beyond, ymax 41.1 beyond,
# several findings on one row (up to 4 categories), several rows on one image, empty finding_birads
FINDINGS = [  # image, categories, finding_birads, box
    ("i1", "['Mass']", "BI-RADS 4", (-26.8, 1200.0, 300.5, 1420.0)),
    ("i1", "['Suspicious Calcification']", "", (-6.2529702186584, 50.0, 120.0, 260.0)),
    ("i1", "['Mass', 'Suspicious Calcification', 'Architectural Distortion', 'Focal Asymmetry']", "BI-RADS 5",
     (2000.0, -5.2, 2833.2, 300.0)),
    ("i3", "['Focal Asymmetry', 'Mass']", "", (1900.0, 2600.0, 2012.0 + 12.5, 2812.0 + 41.1)),
    ("i3", "['Asymmetry']", "BI-RADS 3", (100.0, 100.0, 400.0, 400.0)),
    ("i5", "['Suspicious Lymph Node', 'Skin Thickening', 'Nipple Retraction']", "",
     (0.0, 0.0, 2364.0, 3580.0)),
]  # fmt: skip
NORMAL = ["i2", "i4", "i6"]


def _csvs(tmp_path, findings=FINDINGS):
    breast = [HEADER_B]
    per_image = {}
    for image, (study, lat, view, h, w, split) in IMAGES.items():
        prefix = f"{study},ser_{study}_{lat},{image},{lat},{view},{h},{w},BI-RADS 2,DENSITY B"
        breast.append(f"{prefix},{split}")
        per_image[image] = (prefix, split)
    rows = [HEADER_F]
    for image, cats, birads, box in findings:
        prefix, split = per_image[image]
        quoted = f'"{cats}"' if "," in cats else cats
        rows.append(f"{prefix},{quoted},{birads},{','.join(repr(float(v)) for v in box)},{split}")
    for image in NORMAL:
        prefix, split = per_image[image]
        rows.append(f"{prefix},['No Finding'],,,,,,{split}")
    b, f = tmp_path / "breast-level_annotations.csv", tmp_path / "finding_annotations.csv"
    b.write_text("\n".join(breast) + "\n")
    f.write_text("\n".join(rows) + "\n")
    return b, f


# ------------------------------------------------------------------------------------------------ clipping


def test_boxes_slightly_outside_are_clipped_counted_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _, findings = read_vindr_annotations(*_csvs(tmp_path))
    boxes = findings[list(BOX_COLUMNS)]
    assert boxes.loc[0].tolist() == [0.0, 1200.0, 300.5, 1420.0]
    assert boxes.loc[1].tolist() == [0.0, 50.0, 120.0, 260.0]
    assert boxes.loc[2].tolist() == [2000.0, 0.0, 2800.0, 300.0]
    assert boxes.loc[3].tolist() == [1900.0, 2600.0, 2012.0, 2812.0]
    assert boxes.loc[4].tolist() == [100.0, 100.0, 400.0, 400.0]
    assert boxes.loc[5].tolist() == [0.0, 0.0, 2364.0, 3580.0]  # exactly the image: untouched
    assert findings.attrs["clipped_boxes"] == {
        "boxes": 4,
        "xmin": {"rows": 2, "max_px": 26.8},
        "ymin": {"rows": 1, "max_px": 5.2},
        "xmax": {"rows": 2, "max_px": 33.2},
        "ymax": {"rows": 1, "max_px": 41.1},
    }
    assert findings.attrs["boxes_clipped"] is True
    assert (
        "finding_annotations.csv: 4 box(es) extend beyond the image and were clipped to the image: "
        "xmin < 0 on 2 row(s) (by up to 26.8 px), ymin < 0 on 1 row(s) (by up to 5.2 px), xmax > width on 2 "
        "row(s) (by up to 33.2 px), ymax > height on 1 row(s) (by up to 41.1 px)"
    ) in caplog.text
    assert (
        "row 2 (line 3): image i1 box [-6.2529702186584, 50.0, 120.0, 260.0]; the image is 2800 x 3518 "
        "(width x height)" in caplog.text
    )
    # the other real quirks pass: empty finding BI-RADS on finding rows, up to 4 categories per row
    assert findings["finding_birads"].isna().tolist() == [False, True, False, True, False, True] + [True] * 3
    assert findings.loc[2, "finding_categories"] == [
        "Mass", "Suspicious Calcification", "Architectural Distortion", "Focal Asymmetry",
    ]  # fmt: skip


def test_legacy_keeps_the_csv_boxes(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, findings = read_vindr_annotations(*_csvs(tmp_path), clip_boxes=False)
    assert findings.loc[1, "xmin"] == -6.2529702186584 and findings.loc[3, "ymax"] == 2812.0 + 41.1
    assert findings.attrs["clipped_boxes"]["boxes"] == 4 and findings.attrs["boxes_clipped"] is False
    assert "were kept as they are (legacy: upstream's arithmetic)" in caplog.text


@pytest.mark.parametrize(
    ("box", "column", "message"),
    [
        ((2800.0, 10.0, 2900.0, 50.0), "xmin", "entirely outside the image (xmin >= width)"),
        ((-40.0, 10.0, -0.5, 50.0), "xmax", "entirely outside the image (xmax <= 0)"),
        ((10.0, 3518.0, 50.0, 3600.0), "ymin", "entirely outside the image (ymin >= height)"),
        ((10.0, -50.0, 50.0, 0.0), "ymax", "entirely outside the image (ymax <= 0)"),
        ((60.0, 10.0, 50.0, 50.0), "xmin", "inverted box"),
        ((10.0, 60.0, 50.0, 60.0), "ymin", "empty box"),
    ],
)
def test_truly_broken_boxes_still_stop_naming_file_row_column_value(tmp_path, box, column, message):
    findings = [
        *FINDINGS[:4],
        ("i3", "['Asymmetry']", "BI-RADS 3", (100.0, 100.0, 400.0, 400.0)),
        FINDINGS[5],
    ]
    findings[1] = ("i1", "['Mass']", "", box)
    with pytest.raises(AnnotationError) as err:
        read_vindr_annotations(*_csvs(tmp_path, findings))
    text = str(err.value)
    assert f"finding_annotations.csv: row 2 (line 3), column {column!r}: " in text, text
    assert message in text and "(got '" in text, text


def test_thirty_five_category_lists_pass(tmp_path):
    from itertools import combinations

    from mammoclip.annotations.vindr import FINDING_CATEGORIES

    lists = [[c] for c in FINDING_CATEGORIES] + [list(p) for p in combinations(FINDING_CATEGORIES[:6], 2)]
    lists = [*lists[:25], *[list(t) for t in combinations(FINDING_CATEGORIES[:5], 3)][:8]]
    lists.append(list(FINDING_CATEGORIES[:4]))  # the real maximum: 4 categories on one row
    assert len({tuple(x) for x in lists}) == 34
    images = ["i1", "i3", "i5"]
    findings = [(images[i % 3], repr(c), "", (10.0 + i, 10.0, 60.0 + i, 60.0)) for i, c in enumerate(lists)]
    _, read = read_vindr_annotations(*_csvs(tmp_path, findings))
    assert len({tuple(c) for c in read["finding_categories"]}) == 35  # with No Finding, as in VinDr
    assert max(map(len, read["finding_categories"])) == 4


# ------------------------------------------------------------------------------------------------ legacy


def _texture(shape, lo, hi, seed):
    return np.random.default_rng(seed).integers(lo, hi, shape)


def _tie_image():
    img = np.zeros((200, 160), np.int64)
    img[30:170, 30:60] = _texture((140, 30), 1000, 2000, 1)
    img[30:170, 100:130] = _texture((140, 30), 2500, 4000, 2)
    return img


def _edge_image():
    img = np.zeros((200, 160), np.int64)
    img[20:180, 0:36] = _texture((160, 36), 1500, 3000, 3)  # breast at the edge: upstream counts it short
    img[60:140, 100:130] = _texture((80, 30), 1500, 3000, 4)
    return img


def _plain_image():
    img = np.zeros((220, 170), np.int64)
    img[15:200, 10:120] = _texture((185, 110), 800, 3000, 5)
    return img


LEGACY_BOXES = [  # (x0, y0, x1, y1) in original pixels: inside, both tie runs, out of the image on each side,
    (40.0, 50.0, 55.0, 90.0),  # and tall boxes whose ymax upstream clamps against the *width*
    (20.0, 30.0, 140.0, 175.0),
    (-6.2529702186584, 40.0, 50.0, 80.0),
    (100.0, -5.2, 160.0 + 33.2, 100.0),
    (40.0, 150.0, 60.0, 241.1),
    (40.0, 120.0, 60.0, 190.0),
    (np.nan, np.nan, np.nan, np.nan),  # a normal row among upstream's first 2255 rows
]


def test_legacy_mapping_equals_upstream_on_tie_edge_and_plain_crops(write_dcm, convert, tmp_path):
    manifests, rows, paths = [], [], {}
    for name, img in (("tie", _tie_image()), ("edge", _edge_image()), ("plain", _plain_image())):
        path = write_dcm(img.astype(np.uint16))
        row, _ = convert(path, legacy=True, width=96, height=160)
        assert row["status"] == "ok"
        manifests.append({"image_id": name, "patient_id": "p", **row})
        paths[name] = path
        for box in LEGACY_BOXES:
            rows.append(
                {
                    "image_id": name,
                    "height": img.shape[0],
                    "width": img.shape[1],
                    **dict(zip(BOX_COLUMNS, box, strict=True)),
                }
            )
    manifest = pd.DataFrame(manifests, columns=list(MANIFEST_COLUMNS))
    by_name = manifest.set_index("image_id")
    assert not by_name.loc["tie", "crop_contiguous"] and not by_name.loc["edge", "crop_contiguous"]
    assert by_name.loc["plain", "crop_contiguous"]
    # non-contiguous: the kept counts differ from the bounding range, and the manifest records them
    assert (
        by_name.loc["tie", "crop_n_cols"]
        == 60
        < by_name.loc["tie", "crop_x1"] - by_name.loc["tie", "crop_x0"]
    )
    findings = pd.DataFrame(rows)
    mapped = map_boxes_to_png(findings, manifest, legacy=True)
    got = mapped[list(RESIZED_COLUMNS)].to_numpy()
    expected = np.array([map_box_like_upstream(paths[r["image_id"]], [r[c] for c in BOX_COLUMNS], 96, 160)
                         for r in rows])  # fmt: skip
    np.testing.assert_array_equal(got, expected)  # bit for bit, NaN row included
    assert np.isfinite(got).all()  # the normal row got upstream's made-up whole-image box
    # upstream's defects are really exercised: y clamped by the width, boxes beyond the PNG, tie offsets
    tall = (findings["image_id"] == "plain") & (findings["ymin"] == 150.0)
    assert mapped.loc[tall, "resized_ymax"].iloc[0] < mapped.loc[tall, "resized_ymin"].iloc[0] + 100
    assert (got[:, 0] < 0).any() and (got[:, 2] > 96).any()
    # the default mapping differs (clipped, per-extent scale), and says why for tie crops
    default = map_boxes_to_png(findings, manifest)[list(RESIZED_COLUMNS)].to_numpy()
    assert not np.allclose(np.nan_to_num(default), np.nan_to_num(got))


def test_legacy_normal_rows_after_upstreams_first_rows_stay_empty(write_dcm, convert):
    path = write_dcm(_plain_image().astype(np.uint16))
    row, _ = convert(path, legacy=True)
    manifest = pd.DataFrame([{"image_id": "a", "patient_id": "p", **row}], columns=list(MANIFEST_COLUMNS))
    findings = pd.DataFrame(
        {
            "image_id": ["a", "a"],
            "height": [220, 220],
            "width": [170, 170],
            **{c: [np.nan] * 2 for c in BOX_COLUMNS},
        },
        index=[UPSTREAM_BOX_ROWS - 1, UPSTREAM_BOX_ROWS],
    )
    mapped = map_boxes_to_png(findings, manifest, legacy=True)
    assert mapped.loc[UPSTREAM_BOX_ROWS - 1, list(RESIZED_COLUMNS)].notna().all()
    assert mapped.loc[UPSTREAM_BOX_ROWS, list(RESIZED_COLUMNS)].isna().all()


def test_legacy_needs_kept_counts_of_a_tie_crop_and_old_manifests_are_read(write_dcm, convert, tmp_path):
    path = write_dcm(_tie_image().astype(np.uint16))
    row, _ = convert(path, legacy=True)
    manifest = pd.DataFrame([{"image_id": "t", "patient_id": "p", **row}], columns=list(MANIFEST_COLUMNS))
    old = tmp_path / "old.csv"
    manifest.drop(columns=["crop_n_rows", "crop_n_cols"]).to_csv(old, index=False)
    reread = read_manifest(old)
    assert list(reread.columns) == list(MANIFEST_COLUMNS)
    assert reread["crop_n_cols"].isna().all()  # not recoverable for a tie crop
    findings = pd.DataFrame(
        [
            {
                "image_id": "t",
                "height": 200,
                "width": 160,
                **dict(zip(BOX_COLUMNS, LEGACY_BOXES[0], strict=True)),
            }
        ]
    )
    with pytest.raises(AnnotationError, match=r"row 1, column 'image_id': the PNG manifest does not record"):
        map_boxes_to_png(findings, reread, legacy=True)
    contiguous = manifest.assign(crop_contiguous=True, crop_x0=30, crop_x1=60)
    contiguous.drop(columns=["crop_n_rows", "crop_n_cols"]).to_csv(old, index=False)
    reread = read_manifest(old)
    assert (
        reread.loc[0, "crop_n_cols"] == 30 and reread.loc[0, "crop_n_rows"] == row["crop_y1"] - row["crop_y0"]
    )


# -------------------------------------------------------------------------------------------- release table


def _release_setup(tmp_path):
    """Annotations, a 'DICOM' manifest with crop boxes, and the upstream-style row table built from them."""
    b, f = _csvs(tmp_path)
    manifest = pd.DataFrame(
        [
            {"image_id": image, "patient_id": study, "status": "ok", "reason": "", "orig_height": h,
             "orig_width": w, "crop_x0": 5, "crop_y0": 105, "crop_x1": w - 50, "crop_y1": h - 100,
             "crop_contiguous": True, "png_width": 912, "png_height": 1520, "png_path": f"png/{image}.png",
             "source_path": f"{image}.dcm"}
            for image, (study, _, _, h, w, _) in IMAGES.items()
        ],
        columns=list(MANIFEST_COLUMNS),
    )  # fmt: skip
    breast, findings = read_vindr_annotations(b, f, clip_boxes=False)
    mapped = map_boxes_to_png(findings, manifest, legacy=True)
    table = vindr_row_table(breast, mapped, manifest).iloc[:, :33]  # upstream's 33 columns
    release_manifest = manifest.assign(
        **{c: pd.NA for c in ("orig_height", "orig_width", "crop_x0", "crop_y0", "crop_x1", "crop_y1")},
        crop_contiguous=pd.NA,
        source_path=manifest["png_path"],
    )
    return b, f, table, release_manifest, manifest


def test_release_table_boxes_taken_default_clipped_legacy_as_written(tmp_path, caplog):
    b, f, table, release_manifest, _ = _release_setup(tmp_path)
    write_table(table, tmp_path / "vindr_detection_v1_folds.csv")
    release = read_release_box_table(tmp_path / "vindr_detection_v1_folds.csv")
    _, raw = read_vindr_annotations(b, f, clip_boxes=False)
    legacy = boxes_from_release_table(raw, release, release_manifest, legacy=True)
    np.testing.assert_array_equal(
        legacy[list(RESIZED_COLUMNS)].to_numpy(), table[list(RESIZED_COLUMNS)].to_numpy()
    )
    _, clipped = read_vindr_annotations(b, f)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        default = boxes_from_release_table(clipped, release, release_manifest)
    values = default[list(RESIZED_COLUMNS)].to_numpy()
    has_box = clipped["xmin"].notna().to_numpy()
    assert np.isnan(values[~has_box]).all()  # normal rows: no box (upstream's made-up one dropped)
    inside = values[has_box]
    assert (np.nanmin(inside, axis=0) >= 0).all()
    assert np.nanmax(inside[:, 2]) <= 912 and np.nanmax(inside[:, 3]) <= 1520
    expected = np.clip(table[list(RESIZED_COLUMNS)].to_numpy()[has_box], 0, [912, 1520, 912, 1520])
    inverted = (expected[:, 2] <= expected[:, 0]) | (expected[:, 3] <= expected[:, 1])
    expected[inverted] = np.nan
    np.testing.assert_array_equal(inside, expected)
    # row 3 (i3): upstream's truncated ymax (2002 by the width instead of 2853) lies above its ymin: the
    # box is inverted in upstream's table, so the default keeps it without a PNG box, and says so
    assert inverted.tolist() == [False, False, False, True, False, False]
    assert "row 4 (line 5): 1 box(es) lie entirely outside the PNG (or are inverted there)" in caplog.text
    # upstream truncated ymax where ymax - 5 > width - 10: counted, said
    assert default.attrs["truncated_ymax"] == 2
    assert "2 box(es) have the ymax that upstream truncated" in caplog.text


def test_release_table_mismatches_name_the_rows(tmp_path):
    b, f, table, release_manifest, _ = _release_setup(tmp_path)
    _, findings = read_vindr_annotations(b, f)
    moved = table.copy()
    moved.loc[4, "xmin"] = 101.0
    write_table(moved, tmp_path / "t.csv")
    with pytest.raises(AnnotationError) as err:
        boxes_from_release_table(findings, read_release_box_table(tmp_path / "t.csv"), release_manifest)
    text = str(err.value)
    assert "finding_annotations.csv: row 5 (line 6): 1 finding row(s) without a row of the same image" in text
    assert "t.csv: row 5 (line 6): 1 row(s) not in" in text and "i3|Asymmetry|101.0000" in text
    write_table(table.drop(index=[8]), tmp_path / "t.csv")
    with pytest.raises(AnnotationError, match=r"rows per split \{'test': 1, 'training': 7\} differ from"):
        boxes_from_release_table(findings, read_release_box_table(tmp_path / "t.csv"), release_manifest)
    write_table(table, tmp_path / "t.csv")
    small = release_manifest.assign(png_width=456)
    with pytest.raises(AnnotationError, match=r"the PNG is 456 x 1520 .* 912 x 1520 frame of the authors"):
        boxes_from_release_table(findings, read_release_box_table(tmp_path / "t.csv"), small)


def test_prepare_tables_from_the_release_table_record_the_source(tmp_path):
    b, f, table, release_manifest, _ = _release_setup(tmp_path)
    write_table(table, tmp_path / "vindr_detection_v1_folds.csv")
    write_manifest(release_manifest, tmp_path / "manifest.csv")
    tables = build_vindr_tables(
        b,
        f,
        tmp_path / "manifest.csv",
        n_folds=2,
        seed=0,
        box_table=tmp_path / "vindr_detection_v1_folds.csv",
    )
    boxes = tables["boxes"]
    assert len(boxes) == 6 and boxes["resized_xmin"].notna().tolist() == [True] * 3 + [False] + [True] * 2
    summary = boxes.attrs["box_summary"]
    assert summary["box_source"].endswith("vindr_detection_v1_folds.csv")
    assert summary["boxes_mapped"] == 5 and summary["boxes_without_png_box"] == 1
    assert summary["truncated_ymax_in_box_table"] == 2
    assert summary["boxes_beyond_image"]["boxes"] == 4
    # without the table the same release manifest gives no PNG boxes at all (and says how to get them)
    plain = build_vindr_tables(b, f, tmp_path / "manifest.csv", n_folds=2, seed=0)
    assert plain["boxes"]["resized_xmin"].isna().all()


def test_prepare_tables_in_legacy_mode_keep_upstreams_numbers(tmp_path):
    b, f, _, _, manifest = _release_setup(tmp_path)
    write_manifest(manifest, tmp_path / "manifest.csv")
    tables = build_vindr_tables(b, f, tmp_path / "manifest.csv", n_folds=2, seed=0, legacy=True)
    rows = tables["rows"]
    assert rows.loc[0, "xmin"] == -26.8 and rows.loc[3, "ymax"] == 2812.0 + 41.1  # the CSV's values
    _, raw = read_vindr_annotations(b, f, clip_boxes=False)
    expected = map_boxes_to_png(raw, read_manifest(tmp_path / "manifest.csv"), legacy=True)
    np.testing.assert_array_equal(
        rows[list(RESIZED_COLUMNS)].to_numpy(), expected[list(RESIZED_COLUMNS)].to_numpy()
    )
    assert rows[list(RESIZED_COLUMNS)].notna().all().all()  # normal rows too: upstream's made-up boxes
    assert (
        rows.loc[3, "resized_xmax"] > 912 and rows.loc[3, "resized_ymax"] < rows.loc[3, "resized_ymin"]
    )  # as upstream
    summary = rows.attrs["box_summary"]
    assert (
        summary["box_mapping"] == "legacy (upstream's arithmetic)" and not summary["boxes_clipped_to_image"]
    )
