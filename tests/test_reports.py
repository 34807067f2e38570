"""Report cleaning, section extraction, grouping into the pre-training table and folds."""

from __future__ import annotations

import ast
import logging
import math
import re

import pandas as pd
import pytest
from sklearn.model_selection import GroupKFold

from mammoclip.annotations.reports import (
    TABLE_COLUMNS,
    ReportError,
    assign_report_folds,
    build_pretraining_table,
    clean_impression,
    clean_section,
    extract_sections,
    read_pretraining_table,
    read_reports_csv,
    write_pretraining_table,
)
from mammoclip.annotations.tables import AnnotationError

# ----------------------------------------------------------------------------------------- cleaning

UPSTREAM_EXAMPLE = "Birads: 4, Patient is: 69 years old, and no additional imaging required at this time."


@pytest.mark.parametrize("legacy", [True, False])
def test_upstream_example(legacy: bool) -> None:
    assert clean_impression(UPSTREAM_EXAMPLE, legacy=legacy) == (
        "birads : 4 , patient is : 69 years old , and no additional imaging required at this time"
    )


@pytest.mark.parametrize(
    ("text", "legacy", "expected"),
    [
        # "1. 5 × 1. 2 cm" -> sentences "there is a 1", "5 × 1" (2 ASCII tokens: dropped), "2 cm mass"
        ("There is a 1.5 × 1.2 cm mass.", True, "there is a 1 2 cm mass"),
        ("There is a 1.5 × 1.2 cm mass.", False, "there is a 1.5 1.2 cm mass"),
        # "a 1" has 2 tokens, "5x1" 1 token: both dropped
        ("A 1.5x1.2 cm oval mass.", True, "2 cm oval mass"),
        ("A 1.5x1.2 cm oval mass.", False, "a 1.5x1.2 cm oval mass"),
        # only digit.digit is a decimal point: "2019. 3" stays a sentence break in both modes
        (
            "Lesion of 1.5.2 mm, see 2019. 3 new masses seen.",
            True,
            "lesion of 1 2 mm , see 2019 3 new masses seen",
        ),
        (
            "Lesion of 1.5.2 mm, see 2019. 3 new masses seen.",
            False,
            "lesion of 1.5.2 mm , see 2019 3 new masses seen",
        ),
        ("Measures 0.7 cm.", False, "measures 0.7 cm"),
        ("Measures 0.7 cm.", True, ""),  # "measures 0" and "7 cm" have 2 tokens each
    ],
)
def test_decimals(text: str, legacy: bool, expected: str) -> None:
    assert clean_section(text, legacy=legacy) == expected


@pytest.mark.parametrize("legacy", [True, False])
def test_sentences_short_and_newlines(legacy: bool) -> None:
    text = "The breasts are dense.\nNo suspicious mass. Ok. Stable. BI-RADS 2."
    # findings keep "bi - rads 2" (4 tokens); the impression's "birads 2" has 2 tokens and is dropped
    assert clean_section(text, legacy=legacy) == "the breasts are dense no suspicious mass bi - rads 2"
    assert clean_impression(text, legacy=legacy) == "the breasts are dense no suspicious mass"
    # ". " loses its space, then each "." becomes ". ": runs of periods give empty sentences
    assert clean_section("Dense tissue noted...Stable for years", legacy=legacy) == (
        "dense tissue noted stable for years"
    )


@pytest.mark.parametrize("legacy", [True, False])
def test_non_ascii_and_replacement_chars(legacy: bool) -> None:
    assert (
        clean_section("Patient’s café – résumé noted here.", legacy=legacy) == "patient s caf rsum noted here"
    )
    assert (
        clean_section("Mass\ufffd\ufffdseen in the left breast", legacy=legacy)
        == "mass seen in the left breast"
    )
    assert clean_section("– – abc. Mass at 2 o’clock.", legacy=legacy) == "mass at 2 o clock"
    assert clean_impression("BI-RADS: 4 – suspicious abnormality.", legacy=legacy) == (
        "birads : 4 suspicious abnormality"
    )


@pytest.mark.parametrize("value", [None, math.nan, pd.NA, "", " ", "\n", "Ok.", "No mass"])
def test_empty_or_too_short(value) -> None:
    assert clean_section(value, legacy=True) == ""
    assert clean_section(value, legacy=False) == ""
    assert clean_impression(value, legacy=False) == ""


def test_bi_rads_replaced_only_in_impression_and_exactly() -> None:
    assert clean_section("BI-RADS 4 suspicious.", legacy=True) == "bi - rads 4 suspicious"
    assert clean_impression("BI-RADS 4 suspicious.", legacy=True) == "birads 4 suspicious"
    assert clean_impression("Bi-Rads 4 suspicious.", legacy=True) == "bi - rads 4 suspicious"


# ---------------------------------------------------------------------------------- section extraction

REPORT_1 = """BILATERAL DIGITAL SCREENING MAMMOGRAM

CLINICAL HISTORY: Annual screening. Mother with breast cancer.

FINDINGS:
The breasts are heterogeneously dense.
There is a 1.5 cm irregular mass in the upper outer quadrant of the left breast.

IMPRESSION:
BI-RADS 4: Suspicious abnormality.

RECOMMENDATION: Ultrasound-guided biopsy.
"""

REPORT_2 = (
    "Indication\r\n"
    "Screening, no complaints.\r\n"
    "findings\r\n"
    "Scattered fibroglandular densities. No suspicious mass.\r\n"
    "Assessment: BI-RADS 1 - negative. Conclusion: Negative mammogram."
)


def test_extract_sections_multiline() -> None:
    assert extract_sections(REPORT_1) == {
        "HISTORY": "Annual screening. Mother with breast cancer.",
        "FINDINGS": "The breasts are heterogeneously dense.\n"
        "There is a 1.5 cm irregular mass in the upper outer quadrant of the left breast.",
        "IMPRESSION": "BI-RADS 4: Suspicious abnormality.",
        "ASSESMENT": "",
        "RECOMENDATION": "Ultrasound-guided biopsy.",
        "CONCLUSION": "",
    }


def test_extract_sections_headers_on_own_line_and_inline() -> None:
    assert extract_sections(REPORT_2) == {
        "HISTORY": "Screening, no complaints.",
        "FINDINGS": "Scattered fibroglandular densities. No suspicious mass.",
        "IMPRESSION": "",
        "ASSESMENT": "BI-RADS 1 - negative.",
        "RECOMENDATION": "",
        "CONCLUSION": "Negative mammogram.",
    }


def test_extract_sections_spellings_repeats_and_lookalikes() -> None:
    report = (
        "Findings: Right breast: no change in the patient history: stable.\n"
        "The impression of a mass is not confirmed.\n"
        "FINDINGS: Left breast: benign calcifications.\n"
        "Impressions : BI-RADS 2.\n"
        "ASSESMENT: Benign.\n"
        "Recomendations: Routine screening in 12 months.\n"
        "CONCLUSIONS: Benign findings."
    )
    sections = extract_sections(report)
    assert sections["FINDINGS"] == (
        "Right breast: no change in the patient history: stable.\n"
        "The impression of a mass is not confirmed.\n"
        "Left breast: benign calcifications."
    )
    assert sections["IMPRESSION"] == "BI-RADS 2."
    assert sections["ASSESMENT"] == "Benign."
    assert sections["RECOMENDATION"] == "Routine screening in 12 months."
    assert sections["CONCLUSION"] == "Benign findings."
    assert sections["HISTORY"] == ""


def test_extract_sections_without_headers() -> None:
    assert (
        extract_sections("No suspicious mass.\nBI-RADS 1.")["FINDINGS"] == "No suspicious mass.\nBI-RADS 1."
    )
    assert set(extract_sections(math.nan).values()) == {""}
    assert set(extract_sections(None).values()) == {""}


# ------------------------------------------------------------------------------------------- grouping


def _reports(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["patient_id", "laterality", "view", "image_id", "FINDINGS", "IMPRESSION"]
    )


UID = "1.2.826.0.1.3680043.8.498."
ROWS = [
    ("10", "R", "MLO", UID + "1", "The breasts are dense. A 1.5 cm mass.", "BI-RADS 4: suspicious."),
    ("9", "L", "CC", UID + "2", "No suspicious mass seen.", "BI-RADS: 1 negative result."),
    ("10", "R", "CC", UID + "3", "The breasts are dense. A 1.5 cm mass.", "BI-RADS 4: suspicious."),
    ("9", "L", "MLO", UID + "4", None, "BI-RADS: 1 negative result."),
    ("10", "R", "ML", UID + "5", "New spiculated mass noted here.", "BI-RADS 4: suspicious."),
    ("10", "L", "CC", UID + "6", "Fatty breast tissue noted.", "BI-RADS 1: negative."),
    ("11", "L", "cc ", UID + "7", "Fatty breast tissue noted.", "BI-RADS 1: negative."),
    ("12", "R", "MLO", UID + "8", "Fatty breast tissue noted.", "BI-RADS 1: negative."),
]


def test_grouping_layout_and_order() -> None:
    table = build_pretraining_table(_reports(ROWS), legacy=False)
    assert list(table.columns) == list(TABLE_COLUMNS)
    # numeric patient ids sort numerically (9 < 10 < 11 < 12), then laterality
    assert list(zip(table.patient_id, table.laterality, strict=True)) == [
        ("9", "L"),
        ("10", "L"),
        ("10", "R"),
        ("11", "L"),
        ("12", "R"),
    ]
    r = table.iloc[2]
    # CSV order, extension appended to the dotted ids
    assert r.image == [UID + "1.png", UID + "3.png", UID + "5.png"]
    assert r.view == ["MLO", "CC", "ML"]
    assert r.CC == [UID + "3.png"]
    assert r.MLO == [UID + "1.png"]
    assert r.text == [
        "the breasts are dense a 1.5 cm mass",
        "new spiculated mass noted here",
        "birads 4 : suspicious",
    ]
    assert r.findings == "the breasts are dense a 1.5 cm mass"
    assert r.impressions == "birads 4 : suspicious"
    first = table.iloc[0]
    assert first.findings == "no suspicious mass seen"  # the MLO row has no findings: first non-empty
    assert first.text == ["no suspicious mass seen", "birads : 1 negative result"]
    assert table.iloc[3].view == ["CC"] and table.iloc[3].CC == [UID + "7.png"]
    assert table.iloc[4].CC == [] and table.iloc[4].MLO == [UID + "8.png"]
    assert table.fold.dtype == "int64"
    legacy = build_pretraining_table(_reports(ROWS), legacy=True)
    assert legacy.iloc[2].text[0] == "the breasts are dense 5 cm mass"  # "a 1" has 2 tokens


def test_grouping_is_deterministic() -> None:
    a = build_pretraining_table(_reports(ROWS), legacy=False)
    b = build_pretraining_table(_reports(ROWS), legacy=False)
    pd.testing.assert_frame_equal(a, b)


def test_non_numeric_patient_ids_sort_as_strings() -> None:
    rows = [(p + "x", *rest) for p, *rest in ROWS]
    table = build_pretraining_table(_reports(rows), legacy=False)
    assert list(table.patient_id) == ["10x", "10x", "11x", "12x", "9x"]


def test_report_column_is_split_into_sections() -> None:
    reports = pd.DataFrame(
        {
            "patient_id": ["1", "1", "2", "3", "4"],
            "laterality": ["L", "L", "R", "R", "L"],
            "view": ["CC", "MLO", "CC", "CC", "CC"],
            "image_id": ["a", "b", "c", "d", "e"],
            "REPORT": [
                REPORT_1,
                REPORT_1,
                REPORT_2,
                "FINDINGS: Fatty breasts seen.",
                "Impression: BI-RADS 1 neg.",
            ],
        }
    )
    table = build_pretraining_table(reports, legacy=False)
    assert table.iloc[0].text == [
        "the breasts are heterogeneously dense there is a 1.5 cm irregular mass in the upper outer quadrant "
        "of the left breast",
        "birads 4 : suspicious abnormality",
    ]
    assert table.iloc[1].text == [
        "scattered fibroglandular densities no suspicious mass",
        # IMPRESSION is empty in REPORT_2 (its BI-RADS is under Assessment)
    ]
    assert table.iloc[2].impressions == "" and table.iloc[3].findings == ""
    assert table.iloc[3].text == ["birads 1 neg"]


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        ("laterality", "laterality"),
        ("image_id", "image_id"),
        ("FINDINGS", "FINDINGS"),
        ("IMPRESSION", "IMPRESSION"),
    ],
)
def test_missing_columns(drop: str, named: str) -> None:
    with pytest.raises(ReportError, match=rf"reports\.csv: missing column\(s\) {named}"):
        build_pretraining_table(_reports(ROWS).drop(columns=drop), legacy=False, source="reports.csv")


def test_duplicate_image_ids_and_empty_identifiers() -> None:
    rows = [*ROWS, ("13", "L", "CC", UID + "1", "Fatty breast tissue noted.", "x")]
    with pytest.raises(
        ReportError, match=r"my\.csv: 1 duplicated image id.*'1\.2\.826\.0\.1\.3680043\.8\.498\.1'"
    ):
        build_pretraining_table(_reports(rows), legacy=False, source="my.csv")
    rows = [*ROWS, (None, "L", "CC", UID + "99", "Fatty breast tissue noted.", "x")]
    with pytest.raises(
        ReportError, match=r"^reports CSV: row 9, column 'patient_id': empty identifier in 1 row"
    ):
        build_pretraining_table(_reports(rows), legacy=False)


def test_errors_name_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "reports.csv"
    _reports([*ROWS[:3], ("13", "", "CC", "x.1", "a b c", "d e f")]).to_csv(path, index=False)
    reports = read_reports_csv(path)
    with pytest.raises(ReportError, match=rf"^{re.escape(str(path))}: row 4 \(line 5\), column 'laterality'"):
        build_pretraining_table(reports, legacy=True)
    with pytest.raises(AnnotationError, match=rf"^{re.escape(str(path))}: missing column\(s\) IMPRESSION"):
        build_pretraining_table(reports.drop(columns="IMPRESSION"), legacy=True)


def test_png_filter_and_counts_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    reports = _reports(ROWS)
    png = {i: f"/png/{p}/{i}.png" for p, i in zip(reports.patient_id, reports.image_id, strict=True)}
    del png[UID + "5"], png[UID + "6"]  # the ML image and patient 10's left breast
    reports.loc[0, "FINDINGS"] = "The breasts are dense – a 1.5 cm mass."
    with caplog.at_level(logging.INFO, logger="mammoclip.annotations.reports"):
        table = build_pretraining_table(reports, legacy=False, png_paths=png, source="r.csv")
    assert list(zip(table.patient_id, table.laterality, strict=True)) == [
        ("9", "L"),
        ("10", "R"),
        ("11", "L"),
        ("12", "R"),
    ]
    assert table.iloc[1].image == [UID + "1.png", UID + "3.png"]
    stats = table.attrs["report_stats"]
    assert stats["excluded_no_png"] == 2 and stats["used_rows"] == 6 and stats["rows_with_non_ascii"] == 1
    assert "excluded 2 of 8 report rows whose image is not among the converted PNGs" in caplog.text
    assert "1 of 6 used rows contain non-ASCII characters" in caplog.text
    # the two findings of breast 10/R clean to the same text (en dash stripped, no sentence break)
    assert table.iloc[1].text == ["the breasts are dense a 1.5 cm mass", "birads 4 : suspicious"]


def test_png_paths_from_manifest(caplog: pytest.LogCaptureFixture) -> None:
    from mammoclip.annotations.reports import png_paths_from_manifest

    manifest = pd.DataFrame(
        {
            "image_id": [UID + "1", UID + "3", UID + "5", UID + "2"],
            "patient_id": ["10", "10", "10", "9"],
            "png_path": [f"png/10/{UID}1.png", f"png/10/{UID}3.png", "", f"png/9/{UID}2.png"],
            "status": ["ok", "ok", "failed", "ok"],
            "reason": ["", "", "constant_image: no contrast", ""],
        }
    )
    with caplog.at_level(logging.INFO):
        png = png_paths_from_manifest(manifest)
        table = build_pretraining_table(_reports(ROWS), legacy=False, png_paths=png, n_folds=2)
    assert png == {
        UID + "1": f"png/10/{UID}1.png",
        UID + "3": f"png/10/{UID}3.png",
        UID + "2": f"png/9/{UID}2.png",
    }
    assert list(table.image) == [[UID + "2.png"], [UID + "1.png", UID + "3.png"]]
    assert sorted(table.fold) == [0, 1]
    assert "excluded 1 of 4 images (constant_image: 1)" in caplog.text
    assert "excluded 5 of 8 report rows" in caplog.text
    with pytest.raises(ReportError, match="at least 2 folds"):
        build_pretraining_table(_reports(ROWS), legacy=False, n_folds=1)


def test_breasts_without_text_are_excluded_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    rows = [*ROWS, ("13", "L", "CC", UID + "20", "Ok.", None), ("13", "L", "MLO", UID + "21", "", "-")]
    with caplog.at_level(logging.WARNING, logger="mammoclip.annotations.reports"):
        table = build_pretraining_table(_reports(rows), legacy=True)
    assert "13" not in set(table.patient_id)
    assert table.attrs["report_stats"]["excluded_groups_without_text"] == 1
    assert "excluded 1 of 6 breasts whose findings and impression are empty" in caplog.text


def test_write_read_roundtrip(tmp_path) -> None:
    table = build_pretraining_table(_reports(ROWS), legacy=False)
    table.loc[0, "findings"] = "it's"  # quotes survive the repr format
    table.at[0, "text"] = ["it's", 'say "x"']
    path = tmp_path / "out" / "pretrain.csv"
    write_pretraining_table(table, path)
    raw = pd.read_csv(path, dtype=str)
    assert raw.loc[2, "image"] == repr([UID + "1.png", UID + "3.png", UID + "5.png"])
    assert ast.literal_eval(raw.loc[0, "text"]) == ["it's", 'say "x"']
    back = read_pretraining_table(path)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert back.fold.dtype == "int64"


# ---------------------------------------------------------------------------------------------- folds


def test_folds_group_by_patient() -> None:
    rows = []
    for p in range(23):
        for side in ("L", "R")[: 1 + p % 2]:
            rows.append(
                (str(1000 + p), side, "CC", f"{p}.{side}.cc", "Dense tissue noted here.", "BI-RADS 1 ok.")
            )
            rows.append((str(1000 + p), side, "MLO", f"{p}.{side}.mlo", "Dense tissue noted here.", "x"))
    table = build_pretraining_table(_reports(rows), legacy=False)
    assert len(table) == 34 and set(table.fold) == {0, 1, 2, 3}
    assert table.groupby("patient_id").fold.nunique().max() == 1
    groups = table.patient_id.astype(str)
    for k, (_, test) in enumerate(GroupKFold(n_splits=4).split(table, groups=groups)):
        assert set(table.fold.iloc[test]) == {k}
    again = assign_report_folds(table.drop(columns="fold"), n_folds=4)
    assert list(again.fold) == list(table.fold)
    three = assign_report_folds(table, n_folds=3)
    assert set(three.fold) == {0, 1, 2} and three.groupby("patient_id").fold.nunique().max() == 1
    with pytest.raises(ReportError, match="at least 4 patients, found 2"):
        assign_report_folds(table[table.patient_id.isin(["1000", "1001"])], n_folds=4)


# ------------------------------------------------------------------------------------ in-house phantom


@pytest.fixture(scope="module")
def phantom_reports(tmp_path_factory) -> pd.DataFrame:
    from mammoclip.phantoms.generate import generate_inhouse

    out = tmp_path_factory.mktemp("inhouse")
    generate_inhouse(out, n_patients=8, image_scale=0.05, seed=0)
    return read_reports_csv(out / "reports.csv")


def test_phantom_reports(phantom_reports: pd.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    reports = phantom_reports
    assert reports.image_id.str.count(r"\.").min() > 3
    with caplog.at_level(logging.INFO, logger="mammoclip.annotations.reports"):
        fixed = build_pretraining_table(reports, legacy=False)
    legacy = build_pretraining_table(reports, legacy=True)
    assert len(fixed) == 16 and list(fixed.columns) == list(TABLE_COLUMNS)
    assert fixed.groupby("patient_id").fold.nunique().max() == 1
    assert (fixed.text.map(len) == 2).all()
    assert all(v == ["CC", "MLO"] for v in fixed.view)
    for row in fixed.itertuples():
        ids = set(
            reports.image_id[(reports.patient_id == row.patient_id) & (reports.laterality == row.laterality)]
        )
        assert {i + ".png" for i in ids} == set(row.image) == set(row.CC + row.MLO)
    everything = " ".join(t for texts in fixed.text for t in texts)
    assert everything.isascii() and everything == everything.lower()
    assert "." not in re.sub(r"(?<=\d)\.(?=\d)", "", everything)
    decimals = {d for f in reports.FINDINGS.dropna() for d in re.findall(r"\d+\.\d+", f)}
    assert decimals, "the phantom quotes decimal sizes"
    assert decimals <= set(re.findall(r"\d+\.\d+", " ".join(fixed.findings)))
    assert not re.search(r"\d\.\d", " ".join(t for texts in legacy.text for t in texts))
    assert all("birads" in t for t in fixed.impressions)
    assert "contain non-ASCII characters" in caplog.text
    assert fixed.attrs["report_stats"]["rows_with_non_ascii"] > 0
