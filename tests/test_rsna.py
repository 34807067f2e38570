"""mammoclip.annotations.rsna: train.csv validation, regenerated folds, user fold files, manifest join."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest

from mammoclip.annotations.rsna import (
    FOLDS_COLUMNS,
    IMAGE_TABLE_COLUMNS,
    TRAIN_COLUMNS,
    join_rsna_manifest,
    make_rsna_folds,
    read_rsna_folds,
    read_rsna_train,
    validate_fold_file,
    validate_rsna_train,
)
from mammoclip.annotations.tables import AnnotationError, write_table
from mammoclip.datasets import DatasetSpec, list_images, read_metadata
from mammoclip.phantoms import RSNA_COLUMNS, generate_rsna
from mammoclip.preprocess import MANIFEST_COLUMNS, convert_images

LOGGER = "mammoclip.annotations"

# Kaggle's spelling: float age, BIRADS empty or 0.0/1.0, density empty or A-D, boolean last column.
TRAIN_CSV = """\
site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,machine_id,difficult_negative_case
2,10006,462822612,L,CC,61.0,0,0,0,,0,,29,False
2,10006,1459541791,L,MLO,61.0,0,0,0,,0,,29,False
2,10006,1864590858,R,MLO,61.0,0,0,0,,0,,29,False
2,10006,1874946579,R,CC,61.0,0,0,0,,0,,29,False
1,007,220375232,L,CC,55.0,1,1,1,0.0,0,B,21,False
1,007,1351088028,L,MLO,55.0,1,1,1,0.0,0,B,21,False
1,007,1967300488,R,MLO,55.0,0,0,0,1.0,0,B,21,False
1,007,68070693,R,CC,55.0,0,0,0,1.0,0,B,21,False
1,10038,102788670,L,CC,60.0,0,1,0,0.0,0,C,49,True
1,10038,1140524021,L,ML,60.0,0,1,0,0.0,0,C,49,True
1,10038,1240017720,R,CC,60.0,0,0,0,1.0,0,C,49,False
1,10038,1350492010,R,MLO,60.0,0,0,0,1.0,0,C,49,False
1,10042,203081617,L,CC,,1,1,0,0.0,0,A,93,False
1,10042,1009390143,L,MLO,,1,1,0,0.0,0,A,93,False
1,10042,600512394,R,CC,,0,0,0,1.0,0,A,93,False
1,10042,1143221102,R,MLO,,0,0,0,1.0,0,A,93,False
1,10042,1306030011,R,AT,,0,0,0,1.0,0,A,93,False
"""
LINES = TRAIN_CSV.splitlines()


def _write(tmp_path, text=TRAIN_CSV, name="train.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _synthetic_train(n_patients=200, n_cancer=40, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cancer_patients = set(rng.choice(n_patients, n_cancer, replace=False).tolist())
    rows = []
    for p in range(n_patients):
        cancer_lat = rng.choice(["L", "R"]) if p in cancer_patients else None
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                rows.append(
                    {
                        "site_id": 1, "patient_id": str(10_000 + p), "image_id": str(1_000_000 + len(rows)),
                        "laterality": lat, "view": view, "age": 60.0, "cancer": int(lat == cancer_lat),
                        "biopsy": 0, "invasive": 0, "BIRADS": np.nan, "implant": 0, "density": "B",
                        "machine_id": 49, "difficult_negative_case": False,
                    }
                )  # fmt: skip
    return pd.DataFrame(rows, columns=list(TRAIN_COLUMNS))


def _manifest(image_ids, *, failed=()) -> pd.DataFrame:
    rows = [
        {
            **dict.fromkeys(MANIFEST_COLUMNS, pd.NA),
            "image_id": i,
            "png_path": f"png/{i}.png",
            "status": "failed" if i in failed else "ok",
            "reason": "truncated: cut short" if i in failed else "",
        }
        for i in image_ids
    ]
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


# ------------------------------------------------------------------------------------------------ train.csv


def test_schema_matches_the_phantom_generator():
    assert tuple(RSNA_COLUMNS) == TRAIN_COLUMNS
    assert (*TRAIN_COLUMNS, "fold") == FOLDS_COLUMNS


def test_read_train_ids_are_strings(tmp_path):
    train = read_rsna_train(_write(tmp_path))
    assert list(train.columns) == list(TRAIN_COLUMNS) and len(train) == 17
    assert train["patient_id"].tolist()[4:6] == ["007", "007"]  # leading zeros kept
    assert train["image_id"].iloc[0] == "462822612"
    assert train["cancer"].dtype == np.int64 and train["cancer"].sum() == 4
    assert train.attrs["source"].endswith("train.csv")


@pytest.mark.parametrize(
    ("line", "old", "new", "column", "message"),
    [
        (3, ",0,0,0,,0,,29", ",2,0,0,,0,,29", "cancer", "expected 0 or 1"),
        (3, ",0,0,0,,0,,29", ",,0,0,,0,,29", "cancer", "expected 0 or 1"),
        (4, ",R,", ",X,", "laterality", "expected L or R"),
        (4, ",MLO,", ",,", "view", "empty view"),
        (6, "220375232", "462822612", "image_id", "duplicated image id"),
        (6, ",007,", ",,", "patient_id", "empty identifier"),
    ],
)
def test_train_errors_name_file_row_and_column(tmp_path, line, old, new, column, message):
    lines = list(LINES)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    with pytest.raises(AnnotationError) as err:
        read_rsna_train(_write(tmp_path, "\n".join(lines) + "\n"))
    text = str(err.value)
    assert "train.csv: row" in text and f"{line - 1} (line {line})" in text, text
    assert f"column {column!r}" in text and message in text, text


def test_train_missing_column_and_bad_csv(tmp_path):
    with pytest.raises(AnnotationError, match=r"train\.csv.*missing column\(s\) 'machine_id'"):
        read_rsna_train(_write(tmp_path, TRAIN_CSV.replace("machine_id", "machine", 1)))
    with pytest.raises(AnnotationError, match=r"train\.csv: not a readable CSV file"):
        read_rsna_train(_write(tmp_path, TRAIN_CSV + "1,2,3,L,CC,1,0,0,0,,0,,29,False,extra,fields\n"))


# ------------------------------------------------------------------------------------------------ folds


def test_make_folds_patient_disjoint_and_stratified():
    train = _synthetic_train()
    folds = make_rsna_folds(train, n_folds=4, seed=0)
    assert tuple(folds.columns) == FOLDS_COLUMNS
    assert folds["image_id"].tolist() == train["image_id"].tolist()  # train.csv row order
    assert folds[list(TRAIN_COLUMNS)].astype(str).equals(train.astype(str))
    assert set(folds["fold"]) == {0, 1, 2, 3}
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all()  # no patient in two folds
    cancer_patients = folds[folds.cancer == 1].groupby("fold")["patient_id"].nunique()
    assert cancer_patients.reindex(range(4), fill_value=0).min() >= 8  # 40 cancer patients spread out
    images = folds.groupby("fold").size()
    assert images.min() >= 180 and images.max() <= 220  # 800 images, roughly balanced
    again = make_rsna_folds(train, n_folds=4, seed=0)
    assert again.equals(folds)
    other = make_rsna_folds(train, n_folds=4, seed=1)
    assert not other["fold"].equals(folds["fold"])


def test_make_folds_spreads_few_positives():
    train = _synthetic_train(n_patients=40, n_cancer=4, seed=3)
    for seed in range(5):
        folds = make_rsna_folds(train, n_folds=4, seed=seed)
        assert sorted(folds[folds.cancer == 1].groupby("fold")["patient_id"].nunique().tolist()) == [
            1,
            1,
            1,
            1,
        ]


def test_make_folds_argument_errors():
    train = _synthetic_train(n_patients=3, n_cancer=1)
    with pytest.raises(ValueError, match="3 patients cannot fill 4"):
        make_rsna_folds(train, n_folds=4, seed=0)
    with pytest.raises(ValueError, match="n_folds"):
        make_rsna_folds(train, n_folds=1, seed=0)


def test_fold_file_written_like_upstream_and_read_back(tmp_path):
    train = read_rsna_train(_write(tmp_path))
    folds = make_rsna_folds(train, n_folds=2, seed=0)
    write_table(folds, tmp_path / "train_folds.csv")
    text = (tmp_path / "train_folds.csv").read_text()
    expected = [LINES[0] + ",fold"] + [
        f"{line},{f}" for line, f in zip(LINES[1:], folds["fold"], strict=True)
    ]
    assert text.splitlines() == expected  # train.csv's cells unchanged, fold appended
    back = validate_fold_file(read_rsna_folds(tmp_path / "train_folds.csv"), train)
    assert back.astype(str).equals(folds.astype(str))
    write_table(make_rsna_folds(train, n_folds=2, seed=0), tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "train_folds.csv").read_bytes()


# Rows with every field filled, then one patient per quirk of the real train.csv (54 706 rows: age empty on
# 37, BIRADS on 28 420, density on 25 236; views besides CC/MLO: AT 19, LM 10, ML 8, LMO 1).
FILLED_ROWS = """\
1,20001,5001,L,CC,58.0,0,0,0,1.0,0,B,49,False
1,20001,5002,L,MLO,58.0,0,0,0,1.0,0,B,49,False
1,20001,5003,R,CC,58.0,0,0,0,2.0,0,B,49,False
1,20001,5004,R,MLO,58.0,0,0,0,2.0,0,B,49,False
2,20002,5005,L,CC,71.0,1,1,1,0.0,0,C,21,False
2,20002,5006,L,MLO,71.0,1,1,1,0.0,0,C,21,False
2,20002,5007,R,CC,71.0,0,0,0,1.0,1,C,21,False
2,20002,5008,R,MLO,71.0,0,0,0,1.0,1,C,21,False
"""
#: quirk -> the cells of patient 20003 (two images) that differ from a fully filled row
RSNA_QUIRKS = {
    "age missing": {"age": ""},
    "BIRADS missing": {"BIRADS": ""},
    "density missing": {"density": ""},
    "view AT": {"view": "AT"},
    "view LM": {"view": "LM"},
    "view ML": {"view": "ML"},
    "view LMO": {"view": "LMO"},
}
_QUIRK_PATIENT = {
    "site_id": "2", "patient_id": "20003", "laterality": "L", "age": "64.0", "cancer": "0", "biopsy": "1",
    "invasive": "0", "BIRADS": "0.0", "implant": "0", "density": "D", "machine_id": "190",
    "difficult_negative_case": "True",
}  # fmt: skip


def _quirk_rows(cells: dict[str, str]) -> str:
    """Patient 20003's CC image and its second image (MLO unless the quirk is a view), with ``cells``."""
    rows = []
    for image_id, view in (("5009", "CC"), ("5010", "MLO")):
        row = {**_QUIRK_PATIENT, "image_id": image_id, "view": view, **cells}
        if image_id == "5009":
            row["view"] = "CC"
        rows.append(",".join(row[c] for c in TRAIN_COLUMNS) + "\n")
    return "".join(rows)


@pytest.mark.parametrize("quirk", list(RSNA_QUIRKS))
def test_real_file_quirks_pass_and_are_written_back_unchanged(tmp_path, quirk):
    text = LINES[0] + "\n" + FILLED_ROWS + _quirk_rows(RSNA_QUIRKS[quirk])
    train = read_rsna_train(_write(tmp_path, text))
    folds = make_rsna_folds(validate_rsna_train(train), n_folds=2, seed=0)
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all() and set(folds["fold"]) == {0, 1}
    table = join_rsna_manifest(folds, _manifest(train["image_id"]))
    assert table[list(FOLDS_COLUMNS)].equals(folds)
    original = pd.read_csv(tmp_path / "train.csv", dtype=str, keep_default_na=False)
    [(column, value)] = RSNA_QUIRKS[quirk].items()
    for frame, name in ((folds, "folds.csv"), (table, "table.csv")):
        write_table(frame, tmp_path / name)
        written = pd.read_csv(tmp_path / name, dtype=str, keep_default_na=False)
        assert written[list(TRAIN_COLUMNS)].equals(original), name  # every cell as Kaggle spells it
        assert written.loc[written["patient_id"] == "20003", column].tolist()[-1] == value
    lines = (tmp_path / "folds.csv").read_text().splitlines()
    assert lines[1:] == [f"{row},{f}" for row, f in zip(text.splitlines()[1:], folds["fold"], strict=True)]


def _fold_file(tmp_path, rows: list[tuple[str, str, object]], header="patient_id,image_id,fold"):
    text = header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    return read_rsna_folds(_write(tmp_path, text, "user_folds.csv"))


GOOD = [
    (p, i, {"10006": 0, "007": 1, "10038": 2, "10042": 0}[p])
    for p, i in (ln.split(",")[1:3] for ln in LINES[1:])
]


def test_user_fold_file_used_as_is(tmp_path):
    train = read_rsna_train(_write(tmp_path))
    reordered = GOOD[::-1]
    out = validate_fold_file(_fold_file(tmp_path, reordered), train)
    assert tuple(out.columns) == FOLDS_COLUMNS
    assert out["image_id"].tolist() == [r[1] for r in reordered]  # the file's order
    assert out["fold"].tolist() == [r[2] for r in reordered]  # the file's folds
    assert out.set_index("image_id").loc["220375232", "cancer"] == 1
    only_ids = _fold_file(tmp_path, [(i, f) for _, i, f in GOOD], header="image_id,fold")
    assert validate_fold_file(only_ids, train)["fold"].tolist() == [r[2] for r in GOOD]


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda r: r[1:],
            r"user_folds\.csv: column 'image_id': 1 train image\(s\) missing from it \(462822612\)",
        ),
        (lambda r: [*r, ("10006", "999", 0)], r"1 image\(s\) not in .*train\.csv \(999\)"),
        (
            lambda r: [*r, r[0]],
            r"user_folds\.csv: rows 1 \(line 2\), 18 \(line 19\), column 'image_id'.*more than once",
        ),
        (
            lambda r: [(p, i, 1.5 if k == 2 else f) for k, (p, i, f) in enumerate(r)],
            r"row 3 \(line 4\), column 'fold'",
        ),
        (
            lambda r: [(p, i, -1 if k == 2 else f) for k, (p, i, f) in enumerate(r)],
            r"row 3 \(line 4\), column 'fold'",
        ),
        (lambda r: [(p, i, 3 if f == 2 else f) for p, i, f in r], r"column 'fold': .*no rows in \[2\]"),
        (
            lambda r: [(p, i, 2 if k == 0 else f) for k, (p, i, f) in enumerate(r)],
            r"column 'fold': 1 patient\(s\) straddle folds: 10006 \(folds \[0, 2\]\)",
        ),
        (
            lambda r: [("007" if k == 0 else p, i, f) for k, (p, i, f) in enumerate(r)],
            r"row 1 \(line 2\), column 'patient_id'",
        ),
    ],
)
def test_user_fold_file_errors(tmp_path, edit, pattern):
    train = read_rsna_train(_write(tmp_path))
    with pytest.raises(AnnotationError, match=pattern):
        validate_fold_file(_fold_file(tmp_path, edit(list(GOOD))), train)


def test_user_fold_file_cancer_must_agree(tmp_path):
    train = read_rsna_train(_write(tmp_path))
    cancer = [int(line.split(",")[6]) for line in LINES[1:]]
    rows = [
        (p, i, f, 1 - c if k == 0 else c) for k, ((p, i, f), c) in enumerate(zip(GOOD, cancer, strict=True))
    ]
    folds = _fold_file(tmp_path, rows, header="patient_id,image_id,fold,cancer")
    with pytest.raises(
        AnnotationError, match=r"user_folds\.csv: row 1 \(line 2\), column 'cancer'.*differs from"
    ):
        validate_fold_file(folds, train)


# ---------------------------------------------------------------------------------------------- manifest join


def test_manifest_join_drops_and_logs(tmp_path, caplog):
    train = read_rsna_train(_write(tmp_path))
    folds = make_rsna_folds(train, n_folds=2, seed=0)
    ids = train["image_id"].tolist()
    manifest = _manifest(ids[1:], failed=(ids[5],))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        table = join_rsna_manifest(folds, manifest)
    assert tuple(table.columns) == IMAGE_TABLE_COLUMNS and len(table) == 15
    assert table["image_id"].tolist() == [i for i in ids if i not in (ids[0], ids[5])]
    assert table["png_path"].tolist()[0] == f"png/{ids[1]}.png"
    assert (
        "train.csv: row 1 (line 2), column 'image_id': 1 images name image(s) absent from the PNG manifest "
        "(e.g. 462822612)" in caplog.text
    )
    assert "1 images belong to image(s) that failed preprocessing (truncated: 1" in caplog.text
    with pytest.raises(AnnotationError, match="absent from the PNG manifest"):
        join_rsna_manifest(folds, manifest, missing="error")


# ------------------------------------------------------------------------------------------------ phantom


def test_phantom_rsna_end_to_end(tmp_path, caplog):
    root = tmp_path / "rsna"
    truth = generate_rsna(root, n_patients=10, image_scale=0.1, seed=0)
    spec = DatasetSpec(
        "rsna", "phantom", root, root / "train.csv", "train_images/{patient_id}/{image_id}.dcm"
    )
    images = list_images(spec, read_metadata(spec.metadata_csv), png_root=tmp_path / "png")
    broken = images["source_path"].iloc[3]
    with open(broken, "wb") as fh:
        fh.write(b"not a dicom")
    manifest = convert_images(images, width=160, height=256, progress=False)
    assert (manifest["status"] != "ok").sum() == 1

    train = read_rsna_train(root / "train.csv")
    assert train["image_id"].tolist() == truth["image_id"].astype(str).tolist()
    assert train["cancer"].tolist() == truth["cancer"].tolist()
    assert set(train["view"]) >= {"CC", "MLO"}
    folds = make_rsna_folds(train, n_folds=4, seed=0)
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all() and set(folds["fold"]) == {0, 1, 2, 3}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        table = join_rsna_manifest(folds, manifest)
    assert len(table) == len(train) - 1 and train["image_id"].iloc[3] not in set(table["image_id"])
    assert "failed preprocessing (not_dicom: 1" in caplog.text
    assert all(
        p.endswith(f"/{pid}/{iid}.png")
        for p, pid, iid in zip(table.png_path, table.patient_id, table.image_id, strict=True)
    )
    assert all(os.path.isfile(p) for p in table["png_path"])
    # a user fold file equal to ours validates and is used as is
    write_table(folds, tmp_path / "train_folds.csv")
    assert (
        validate_fold_file(read_rsna_folds(tmp_path / "train_folds.csv"), train)["fold"].tolist()
        == folds["fold"].tolist()
    )
