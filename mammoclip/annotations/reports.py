"""Radiology reports -> the image+text pre-training table (docs/upstream.md#reports).

Input: the in-house report CSV, one row per image, with upstream's columns. Only
``patient_id, laterality, view, image_id`` and the text columns ``FINDINGS`` and ``IMPRESSION`` are used;
when those two are absent, a single free-text ``REPORT`` column is split into sections with
:func:`extract_sections`. Output (:data:`TABLE_COLUMNS`): one row per (patient, breast), the layout of
upstream's ``clip_pretrain_100.csv``; :mod:`mammoclip.annotations.augment` adds
``text_augment``.

Cleaning (:func:`clean_section`). ``legacy=True`` reproduces upstream exactly, including its
decimal defect: every period is a sentence break, so "1.5 cm" becomes the sentences "... 1" and "5 cm ...",
and a short fragment such as "5 × 1" (from "1.5 × 1.2 cm") is dropped altogether. ``legacy=False``
differs in exactly one way: a period with a digit immediately on both sides is a decimal point, not a
sentence break, and the number stays one token. For "There is a 1.5 × 1.2 cm mass." the two modes give

* legacy: ``there is a 1`` + ``2 cm mass`` -> ``"there is a 1 2 cm mass"`` ("5 × 1" has 2 ASCII tokens),
* fixed:  ``"there is a 1.5 1.2 cm mass"`` ("×" is non-ASCII and stripped).

Digits joined by several decimal points ("1.5.2") stay one token; a period with a space or a non-digit on
either side ("1. 5", "1.a", "in 2019.") is still a sentence break. Everything else is shared: NaN/None is
" "; newlines become spaces; ". " loses its space, then every remaining period becomes ". "; the text is
split on ". "; per sentence: skip empty, U+FFFD U+FFFD -> space, lowercase, ``nltk.wordpunct_tokenize``,
skip <= 1 token, strip non-ASCII characters from each token and drop tokens left empty, keep the sentence
only if > 2 tokens remain, join with single spaces; sentences are joined with single spaces (no periods).
:func:`clean_impression` first replaces the exact string "BI-RADS" by "BIRADS" (upstream does this for
IMPRESSION only; FINDINGS keep ``bi - rads``).

Grouping (:func:`build_pretraining_table`), deterministic where upstream is not (its list order follows
Python's string hashing):

* groups = (patient_id, laterality), sorted by patient id (numerically when every id is a decimal
  integer, as upstream's integer-typed ids sort, otherwise as strings), then laterality;
* ``image``: ``f"{image_id}.png"`` for every image of the group (any view), in CSV order. The extension is
  appended, never substituted: in-house image ids are dotted UIDs;
* ``view``: the distinct view codes in order of first occurrence in the CSV (codes are stripped and
  upper-cased); ``CC`` / ``MLO``: the group's image names with that view, in CSV order. Other view codes
  (ML, LM, AT, ...) appear in ``view`` and ``image`` only;
* ``text``: the cleaned FINDINGS of the group's rows in CSV order, then their cleaned IMPRESSIONs,
  de-duplicated keeping the first occurrence, empty strings skipped (one report per breast gives
  ``[findings, impression]``);
* ``findings`` / ``impressions``: the first non-empty cleaned value in CSV order ("" when none);
* ``fold``: :func:`assign_report_folds` (GroupKFold on patient_id).

Nothing is dropped silently. Rows whose image is not among the converted PNGs (``png_paths``), groups
whose text is empty after cleaning, rows with non-ASCII characters (stripped by cleaning) and groups
without a CC or MLO image are counted in the log and in ``table.attrs["report_stats"]``. Malformed input
(missing columns or identifiers, duplicated image ids) raises :class:`ReportError`.

List columns (:data:`LIST_COLUMNS`) hold Python lists in memory; :func:`write_pretraining_table` stores
them as their ``repr`` (upstream's format) and :func:`read_pretraining_table` parses them back with
``ast.literal_eval``.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from nltk.tokenize import wordpunct_tokenize

from mammoclip.annotations.tables import AnnotationError, location, source_of, write_table

__all__ = [
    "ID_COLUMNS",
    "LIST_COLUMNS",
    "SECTION_KEYS",
    "TABLE_COLUMNS",
    "ReportError",
    "assign_report_folds",
    "build_pretraining_table",
    "clean_impression",
    "clean_section",
    "extract_sections",
    "png_paths_from_manifest",
    "read_pretraining_table",
    "read_reports_csv",
    "write_pretraining_table",
]

log = logging.getLogger(__name__)

#: Identifier columns every report CSV needs.
ID_COLUMNS = ("patient_id", "laterality", "view", "image_id")
#: Columns of the pre-training table, in order (``text_augment`` goes before ``fold`` when present).
TABLE_COLUMNS = (
    "patient_id",
    "laterality",
    "image",
    "view",
    "CC",
    "MLO",
    "text",
    "findings",
    "impressions",
    "fold",
)
#: Columns holding lists (stored as their Python repr in CSV files).
LIST_COLUMNS = ("image", "view", "CC", "MLO", "text", "text_augment")
#: Keys of :func:`extract_sections` (upstream's column names, including their spelling).
SECTION_KEYS = ("HISTORY", "FINDINGS", "IMPRESSION", "ASSESMENT", "RECOMENDATION", "CONCLUSION")


class ReportError(AnnotationError):
    """The report CSV cannot be turned into a pre-training table (the message names file and column)."""


# --------------------------------------------------------------------------------------------- cleaning

# Stands in for a decimal point while the text is split into sentences (legacy=False). It is outside
# \w and \s, so wordpunct_tokenize makes it a token of its own between the digit tokens around it.
_DECIMAL_MARK = "\ue000"
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like values
        return False


def _join_decimals(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == _DECIMAL_MARK and out and i + 1 < len(tokens):
            out[-1] = f"{out[-1]}.{tokens[i + 1]}"
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def clean_section(text: Any, *, legacy: bool) -> str:
    """One report section cleaned as in upstream section 2.1 (see the module docstring).

    ``legacy=True`` splits decimal numbers into sentences like upstream; ``legacy=False`` keeps them as one
    token (``"1.5 cm"`` -> ``"1.5 cm"``).
    """
    text = " " if _is_missing(text) else str(text)
    text = text.replace("\n", " ")
    if not legacy:
        text = _DECIMAL_POINT.sub(_DECIMAL_MARK, text.replace(_DECIMAL_MARK, ""))
    text = text.replace(". ", ".").replace(".", ". ")
    sentences: list[str] = []
    for sentence in text.split(". "):
        if not sentence:
            continue
        tokens = wordpunct_tokenize(sentence.replace("\ufffd\ufffd", " ").lower())
        if not legacy:
            tokens = _join_decimals(tokens)
        if len(tokens) <= 1:
            continue
        tokens = [t for t in (tok.encode("ascii", "ignore").decode("ascii") for tok in tokens) if t]
        if len(tokens) > 2:
            sentences.append(" ".join(tokens))
    return " ".join(sentences)


def clean_impression(text: Any, *, legacy: bool) -> str:
    """:func:`clean_section` after replacing "BI-RADS" by "BIRADS" (upstream does so for IMPRESSION)."""
    if not _is_missing(text):
        text = str(text).replace("BI-RADS", "BIRADS")
    return clean_section(text, legacy=legacy)


# ---------------------------------------------------------------------------------- section extraction

_SECTION_NAMES = {
    "HISTORY": r"clinical\s+history|history|clinical\s+indications?|indications?",
    "FINDINGS": r"findings?",
    "IMPRESSION": r"impressions?",
    "ASSESMENT": r"assess?ments?",
    "RECOMENDATION": r"recomm?endations?",
    "CONCLUSION": r"conclusions?",
}
# A header starts the text, a line, or a sentence (after ". ", "! ", "? "); it is followed by ":" or,
# only when nothing else is on its line, by the end of the line.
_HEADER = re.compile(
    r"(?:^|(?<=[.!?])[ \t]+)[ \t]*(?:"
    + "|".join(f"(?P<{key}>{pattern})" for key, pattern in _SECTION_NAMES.items())
    + r")[ \t]*(?::|(?=\r?\n|\Z))",
    re.IGNORECASE | re.MULTILINE,
)


def extract_sections(report: Any) -> dict[str, str]:
    """Split a free-text report into :data:`SECTION_KEYS` sections ("" for an absent section).

    Headers (case-insensitive, singular or plural): HISTORY / CLINICAL HISTORY / INDICATION(S) ->
    ``HISTORY``; FINDING(S); IMPRESSION(S); ASSESSMENT / ASSESMENT -> ``ASSESMENT``; RECOMMENDATION /
    RECOMENDATION -> ``RECOMENDATION``; CONCLUSION(S). A header is recognised at the start of the text,
    of a line or of a sentence, followed by ":" or (alone on its line) by a line break. A section runs
    to the next header; its text is stripped, internal line breaks are kept. A section header that
    occurs twice gets both texts, joined by a line break. Text before the first header (e.g. an exam
    title) is discarded, except that a report without any header is returned whole as ``FINDINGS``.
    Unknown headers ("ADDENDUM:") stay inside the preceding section.
    """
    sections = dict.fromkeys(SECTION_KEYS, "")
    if _is_missing(report):
        return sections
    text = str(report)
    matches = list(_HEADER.finditer(text))
    if not matches:
        sections["FINDINGS"] = text.strip()
        return sections
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        key = match.lastgroup
        assert key is not None  # every alternative of _HEADER is a named group
        body = text[match.end() : following.start() if following else len(text)].strip()
        if body:
            sections[key] = f"{sections[key]}\n{body}" if sections[key] else body
    return sections


# ------------------------------------------------------------------------------------------- grouping


def read_reports_csv(path: str | os.PathLike) -> pd.DataFrame:
    """The report CSV with every cell as text, empty cells as "" (ids such as ``0012`` or dotted UIDs stay
    intact); ``attrs["source"]`` names the file for error messages."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    frame.attrs["source"] = str(path)
    # messages quote physical line numbers only when no quoted field spans several lines
    data = Path(path).read_bytes()
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    frame.attrs["line_per_row"] = lines == len(frame) + 1
    return frame


def png_paths_from_manifest(manifest: pd.DataFrame, logger: logging.Logger | None = None) -> dict[str, str]:
    """``{image_id: png_path}`` of the successfully converted images of a preprocessing manifest.

    Failed conversions are logged (by :func:`mammoclip.preprocess.ok_images`) and left out.
    """
    from mammoclip.preprocess import ok_images

    ok = ok_images(manifest, logger)
    return dict(zip(ok["image_id"].astype(str), ok["png_path"].astype(str), strict=True))


def _identifier(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "" if _is_missing(v) else str(v).strip())


def _sort_key(patient_ids: list[str]):
    if all(p.isdecimal() for p in patient_ids):
        return lambda key: (int(key[0]), key[0], key[1])
    return lambda key: (key[0], "", key[1])


def _examples(values, n: int = 3) -> str:
    values = list(values)
    more = f", ... ({len(values)} in all)" if len(values) > n else ""
    return ", ".join(repr(v) for v in values[:n]) + more


def _validate(reports: pd.DataFrame, source: str) -> tuple[str, ...]:
    """Checks columns and identifiers; returns the text columns to use."""
    missing = [c for c in ID_COLUMNS if c not in reports.columns]
    if {"FINDINGS", "IMPRESSION"} <= set(reports.columns):
        text_columns: tuple[str, ...] = ("FINDINGS", "IMPRESSION")
    elif "REPORT" in reports.columns:
        text_columns = ("REPORT",)
    else:
        text_columns = ()
        missing += [c for c in ("FINDINGS", "IMPRESSION") if c not in reports.columns]
    if missing:
        raise ReportError(
            f"{source}: missing column(s) {', '.join(missing)}; a report CSV needs "
            f"{', '.join(ID_COLUMNS)} and FINDINGS + IMPRESSION (or a single free-text REPORT column). "
            f"Found: {', '.join(map(str, reports.columns))}"
        )
    for column in ID_COLUMNS:
        empty = (_identifier(reports[column]) == "").to_numpy()
        if empty.any():
            where = location(reports, reports.index[empty], column, source=source)
            raise ReportError(f"{where}: empty identifier in {int(empty.sum())} row(s)")
    image_ids = _identifier(reports["image_id"])
    duplicated = image_ids[image_ids.duplicated()].unique()
    if len(duplicated):
        raise ReportError(
            f"{source}: {len(duplicated)} duplicated image id(s) in column 'image_id' (one row per image "
            f"expected), e.g. {_examples(duplicated)}"
        )
    return text_columns


def build_pretraining_table(
    reports: pd.DataFrame,
    *,
    legacy: bool,
    png_paths: Mapping[str, str] | None = None,
    n_folds: int = 4,
    source: str | None = None,
    logger: logging.Logger | None = None,
) -> pd.DataFrame:
    """The pre-training table (:data:`TABLE_COLUMNS`, one row per patient and breast) from a report CSV.

    ``reports``: one row per image (see the module docstring for the rules). ``png_paths``: the converted
    images, ``{image_id: png_path}`` (e.g. :func:`png_paths_from_manifest`); rows whose image is not in it
    are excluded and counted; ``None`` keeps every row. ``source`` names the input in messages (default:
    ``reports.attrs["source"]``, set by :func:`read_reports_csv`).
    Folds: :func:`assign_report_folds` with ``n_folds``. Counts of everything excluded or stripped are
    logged and stored in ``table.attrs["report_stats"]``.
    """
    logger = logger or log
    source = source if source is not None else source_of(reports, "reports CSV")
    text_columns = _validate(reports, source)
    frame = pd.DataFrame({c: _identifier(reports[c]) for c in ID_COLUMNS})
    frame["view"] = frame["view"].str.upper()
    stats: dict[str, int] = {"input_rows": len(frame)}

    keep = pd.Series(True, index=frame.index)
    if png_paths is not None:
        png_paths = {str(k).strip(): str(v) for k, v in png_paths.items()}
        keep = frame["image_id"].map(lambda i: i in png_paths)
        stats["excluded_no_png"] = int((~keep).sum())
        if stats["excluded_no_png"]:
            logger.warning(
                "%s: excluded %d of %d report rows whose image is not among the converted PNGs (absent "
                "from the manifest or failed conversion), e.g. %s",
                source,
                stats["excluded_no_png"],
                len(frame),
                _examples(frame.loc[~keep, "image_id"]),
            )
        renamed = [i for i in frame.loc[keep, "image_id"] if Path(png_paths[i]).name not in ("", f"{i}.png")]
        if renamed:
            logger.warning(
                "%s: %d PNG path(s) are not named {image_id}.png, e.g. %s; the table lists {image_id}.png",
                source,
                len(renamed),
                _examples(png_paths[i] for i in renamed),
            )
    kept_reports = reports.loc[keep.to_numpy()]
    frame = frame.loc[keep]
    stats["used_rows"] = len(frame)

    texts = {c: list(kept_reports[c]) for c in text_columns}
    non_ascii = sum(
        any(not _is_missing(v) and not str(v).isascii() for v in values)
        for values in zip(*texts.values(), strict=True)
    )
    stats["rows_with_non_ascii"] = int(non_ascii)
    if non_ascii:
        logger.info(
            "%s: %d of %d used rows contain non-ASCII characters in %s; cleaning strips them",
            source,
            non_ascii,
            len(frame),
            "/".join(text_columns),
        )

    cache: dict[tuple[str, ...], tuple[str, str]] = {}

    def clean(row: int) -> tuple[str, str]:
        raw = tuple(texts[c][row] for c in text_columns)
        key = tuple("" if _is_missing(v) else str(v) for v in raw)
        if key not in cache:
            if text_columns == ("REPORT",):
                sections = extract_sections(raw[0])
                findings, impression = sections["FINDINGS"], sections["IMPRESSION"]
            else:
                findings, impression = raw
            cache[key] = (clean_section(findings, legacy=legacy), clean_impression(impression, legacy=legacy))
        return cache[key]

    groups: dict[tuple[str, str], list[tuple[str, str, str, str]]] = {}
    for row, (patient, side, view, image_id) in enumerate(
        frame[["patient_id", "laterality", "view", "image_id"]].itertuples(index=False, name=None)
    ):
        groups.setdefault((patient, side), []).append((view, f"{image_id}.png", *clean(row)))

    records = []
    no_text: list[tuple[str, str]] = []
    incomplete = 0
    for key in sorted(groups, key=_sort_key([p for p, _ in groups])):
        members = groups[key]
        texts_of_group = list(
            dict.fromkeys(t for t in [m[2] for m in members] + [m[3] for m in members] if t)
        )
        if not texts_of_group:
            no_text.append(key)
            continue
        views = list(dict.fromkeys(m[0] for m in members))
        incomplete += not ({"CC", "MLO"} <= set(views))
        records.append(
            {
                "patient_id": key[0],
                "laterality": key[1],
                "image": [m[1] for m in members],
                "view": views,
                "CC": [m[1] for m in members if m[0] == "CC"],
                "MLO": [m[1] for m in members if m[0] == "MLO"],
                "text": texts_of_group,
                "findings": next((m[2] for m in members if m[2]), ""),
                "impressions": next((m[3] for m in members if m[3]), ""),
                "fold": -1,
            }
        )
    stats["groups"] = len(groups)
    stats["excluded_groups_without_text"] = len(no_text)
    stats["groups_without_cc_or_mlo"] = incomplete
    if no_text:
        logger.warning(
            "%s: excluded %d of %d breasts whose findings and impression are empty after cleaning, e.g. %s",
            source,
            len(no_text),
            len(groups),
            _examples(no_text),
        )
    if incomplete:
        logger.info("%s: %d breasts lack a CC or an MLO image", source, incomplete)
    if not records:
        raise ReportError(f"{source}: no breast with report text left ({stats})")
    table = pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))
    table = assign_report_folds(table, n_folds=n_folds)
    stats["rows"] = len(table)
    table.attrs["report_stats"] = stats
    logger.info(
        "%s: %d breasts of %d patients from %d images (%s)",
        source,
        len(table),
        table["patient_id"].nunique(),
        stats["used_rows"],
        ", ".join(f"{k}={v}" for k, v in stats.items()),
    )
    return table


def assign_report_folds(table: pd.DataFrame, n_folds: int = 4) -> pd.DataFrame:
    """A copy of ``table`` with ``fold`` = k for the test rows of split k of ``GroupKFold(n_folds)``.

    Groups are ``patient_id`` as strings (as upstream); no shuffling, so the result depends only
    on the table's rows and their order. Raises :class:`ReportError` for n_folds < 2 or fewer patients than
    folds.
    """
    from sklearn.model_selection import GroupKFold

    if n_folds < 2:
        raise ReportError(f"report folds: at least 2 folds are needed, got n_folds={n_folds}")
    groups = table["patient_id"].astype(str).to_numpy()
    n_patients = len(set(groups))
    if n_patients < n_folds:
        raise ReportError(f"{n_folds} report folds need at least {n_folds} patients, found {n_patients}")
    folds = [-1] * len(table)
    for k, (_, test) in enumerate(GroupKFold(n_splits=n_folds).split(groups, groups=groups)):
        for i in test:
            folds[i] = k
    out = table.copy()
    out["fold"] = pd.Series(folds, index=out.index, dtype="int64")
    return out


# ------------------------------------------------------------------------------------------------- I/O


def write_pretraining_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the table as CSV, list columns as their Python repr (upstream's format), deterministically and
    atomically (:func:`mammoclip.annotations.tables.write_table`)."""
    write_table(table, path)


def read_pretraining_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_pretraining_table` (list columns parsed with literal_eval)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in LIST_COLUMNS:
        if column in table.columns:
            try:
                table[column] = [ast.literal_eval(v) for v in table[column]]
            except (ValueError, SyntaxError) as exc:
                raise ReportError(f"{path}: column {column!r} does not hold Python lists: {exc}") from exc
    if "fold" in table.columns:
        table["fold"] = table["fold"].astype("int64")
    return table
