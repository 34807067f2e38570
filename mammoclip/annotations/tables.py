"""Shared plumbing for the annotation tables: errors that point into the source CSV, strict CSV reading,
list-column (de)serialisation, and the join with the PNG manifest.

Row numbers. Frames returned by :func:`read_csv_strict` keep a RangeIndex equal to the 0-based data row of
the CSV, and ``frame.attrs["source"]`` names the file. Every later step keeps that index until a table is
finally built, so an error can always say ``finding_annotations.csv: row 17 (line 18), column 'xmin'``:
*row* is the 1-based data row (header excluded), *line* the physical line of the file (header = line 1),
given only when the file has no quoted multi-line field (then line = row + 1).

List columns hold Python lists in memory and are written as their ``repr`` (upstream's format, e.g.
``['Mass', 'Suspicious Calcification']``); :func:`read_table` parses them back with ``ast.literal_eval``.
:func:`write_table` is deterministic: same frame, same bytes (floats in Python's shortest round-trip
``repr``, ``\\n`` line ends, UTF-8, written atomically).
"""

from __future__ import annotations

import ast
import collections
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mammoclip.io import atomic_write

__all__ = [
    "AnnotationError",
    "isin",
    "add_manifest_columns",
    "location",
    "parse_list_column",
    "raise_at",
    "read_csv_strict",
    "read_table",
    "require_columns",
    "source_of",
    "write_table",
]

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5  #: ids / rows quoted in an error or log message


class AnnotationError(ValueError):
    """An annotation file (or table) is malformed; the message names the file, row(s) and column."""


# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------


def source_of(frame: pd.DataFrame, default: str = "<table>") -> str:
    """The file a frame was read from (``attrs["source"]``), else ``default``."""
    return str(frame.attrs.get("source", default))


def _row_label(frame: pd.DataFrame | None, index: object) -> str:
    try:
        row = int(index) + 1  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return repr(index)
    if frame is not None and frame.attrs.get("line_per_row", False):
        return f"{row} (line {row + 1})"
    return str(row)


def location(
    frame: pd.DataFrame | None,
    rows: Iterable[object] = (),
    column: str | None = None,
    *,
    source: str | None = None,
) -> str:
    """``"file: row 3 (line 4), column 'xmin'"``; ``rows`` are index labels (0-based data rows)."""
    src = source if source is not None else (source_of(frame) if frame is not None else "<table>")
    rows = list(rows)
    parts = []
    if rows:
        shown = ", ".join(_row_label(frame, r) for r in rows[:MAX_EXAMPLES])
        more = f" and {len(rows) - MAX_EXAMPLES} more" if len(rows) > MAX_EXAMPLES else ""
        parts.append(f"{'row' if len(rows) == 1 else 'rows'} {shown}{more}")
    if column is not None:
        parts.append(f"column {column!r}")
    return f"{src}: {', '.join(parts)}" if parts else src


def raise_at(
    frame: pd.DataFrame, bad: pd.Series | np.ndarray, column: str | None, problem: str, *, show: bool = True
) -> None:
    """Raise :class:`AnnotationError` for the rows flagged in ``bad`` (if any).

    The message names the file, the first rows (index labels) and ``column`` and, when ``show``, quotes
    the first offending value.
    """
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return
    rows = frame.index[bad]
    detail = problem
    if show and column is not None and column in frame.columns:
        detail += f" (got {_plain(frame.at[rows[0], column])!r})"
    count = f" [{len(rows)} rows in total]" if len(rows) > 1 else ""
    raise AnnotationError(f"{location(frame, rows, column)}: {detail}{count}")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], *, what: str = "") -> None:
    """Raise :class:`AnnotationError` naming the file and every missing column."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        kind = f" ({what})" if what else ""
        raise AnnotationError(
            f"{source_of(frame)}{kind}: missing column(s) {', '.join(map(repr, missing))}; "
            f"expected {', '.join(columns)}"
        )


def isin(values: pd.Series | Sequence[object] | np.ndarray, allowed: Iterable[object]) -> np.ndarray:
    """Boolean membership array (a set lookup per value; pandas' ``isin`` on Arrow strings is ~50x slower)."""
    allowed = allowed if isinstance(allowed, set | frozenset) else set(allowed)
    array = (
        values.to_numpy(dtype=object) if isinstance(values, pd.Series) else np.asarray(values, dtype=object)
    )
    return np.fromiter((v in allowed for v in array), dtype=bool, count=len(array))


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_csv_strict(
    path: str | os.PathLike,
    columns: Sequence[str],
    *,
    what: str = "",
    dtype: object = str,
    keep_extra: bool = False,
) -> pd.DataFrame:
    """Read ``path`` requiring ``columns``; extra columns are logged and dropped (kept with ``keep_extra``).

    With ``dtype=str`` (default) every cell is a string and empty cells are ``""`` (no NA parsing), so
    ids keep their exact spelling. The result has ``attrs["source"]`` and the 0-based data row as index.
    """
    path = Path(path)
    try:
        if dtype is str:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
        else:
            frame = pd.read_csv(path, dtype=dtype, encoding="utf-8-sig")  # type: ignore[arg-type]
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not a readable CSV file: {err}") from None
    frame.attrs["source"] = str(path)
    require_columns(frame, columns, what=what)
    extra = [c for c in frame.columns if c not in columns]
    if extra and not keep_extra:
        log.warning("%s: ignoring unexpected column(s) %s", path, ", ".join(map(repr, extra)))
        frame = frame[list(columns)]
    frame.attrs["source"] = str(path)
    frame.attrs["line_per_row"] = _one_line_per_row(path, len(frame))
    return frame


def _one_line_per_row(path: Path, n_rows: int) -> bool:
    """True when the file has exactly one physical line per record (no quoted multi-line fields)."""
    data = path.read_bytes()
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    return lines == n_rows + 1


def parse_list_column(
    frame: pd.DataFrame,
    column: str,
    *,
    allowed: Iterable[str] | None = None,
    allow_empty: bool = False,
) -> list[list[str]]:
    """Parse a column of Python list literals of strings (``"['Mass', 'Asymmetry']"``).

    Each distinct string is parsed once with :func:`ast.literal_eval` (so 20 000 rows with 35 distinct
    values cost 35 parses). Anything that is not a list of strings (or, with ``allowed``, holds an unknown
    string) raises :class:`AnnotationError` naming the file, row and column. Returns fresh lists.
    """
    allowed_set = None if allowed is None else set(allowed)
    values = frame[column].astype(object).to_numpy()
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    parsed: list[list[str]] = []
    for code, text in enumerate(uniques):
        problem = None
        try:
            value = ast.literal_eval(str(text).strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            problem = "not a Python list literal"
        else:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problem = "expected a list of strings"
            elif not value and not allow_empty:
                problem = "empty list"
            elif allowed_set is not None and (unknown := sorted(set(value) - allowed_set)):
                problem = f"unknown value(s) {unknown}; expected some of {sorted(allowed_set)}"
        if problem is not None:
            raise_at(frame, codes == code, column, problem)
        parsed.append(value)
    if (codes < 0).any():
        raise_at(frame, codes < 0, column, "empty cell; expected a list literal", show=False)
    return [list(parsed[c]) for c in codes]


# --------------------------------------------------------------------------------------------------
# Writing and reading tables with list columns
# --------------------------------------------------------------------------------------------------


def _plain(value: object) -> object:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_list_column(series: pd.Series) -> bool:
    if series.dtype != object:
        return False
    return any(isinstance(v, list | tuple) for v in series)


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` to CSV (list columns as Python ``repr``), deterministically and atomically."""
    out = frame.copy()
    for column in out.columns:
        if _is_list_column(out[column]):
            out[column] = [repr(_plain(v)) if isinstance(v, list | tuple) else v for v in out[column]]
    text = out.to_csv(index=False, lineterminator="\n")
    with atomic_write(path, "wb") as handle:
        handle.write(text.encode("utf-8"))


def read_table(
    path: str | os.PathLike, *, list_columns: Sequence[str] = (), str_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """Read a table written by :func:`write_table`; ``list_columns`` are parsed back into lists.

    ``str_columns`` (e.g. ids) are read as strings. Empty list cells stay NaN.
    """
    frame = pd.read_csv(path, dtype=dict.fromkeys(str_columns, str))
    for column in list_columns:
        if column in frame.columns:
            frame[column] = [ast.literal_eval(v) if isinstance(v, str) else v for v in frame[column]]
    frame.attrs["source"] = str(path)
    return frame


# --------------------------------------------------------------------------------------------------
# Manifest join
# --------------------------------------------------------------------------------------------------


def _reason_code(reason: object) -> str:
    return str(reason).split(":", 1)[0].strip() or "unknown"


def add_manifest_columns(
    frame: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    columns: Sequence[str] = ("png_path",),
    id_column: str = "image_id",
    missing: str = "exclude",
    what: str = "rows",
    logger: logging.Logger | None = None,
) -> pd.DataFrame:
    """Keep the rows of ``frame`` whose image converted successfully, adding manifest ``columns``.

    Rows whose image is absent from the manifest, or present with ``status != "ok"``, are dropped; the
    count, the reasons (manifest reason codes), the first rows and image ids are logged as a warning,
    never silently. With ``missing="error"`` an image absent from the manifest raises
    :class:`AnnotationError` naming the file, rows and ``id_column`` instead. The index of ``frame`` is
    kept (so later messages still name source rows).
    """
    if missing not in ("exclude", "error"):
        raise ValueError(f"missing must be 'exclude' or 'error', got {missing!r}")
    logger = logger or log
    require_columns(frame, [id_column])
    needed = ["image_id", "status", *[c for c in columns if c not in ("image_id", "status")]]
    if "reason" in manifest.columns and "reason" not in needed:
        needed.append("reason")
    absent_cols = [c for c in needed if c not in manifest.columns]
    if absent_cols:
        raise AnnotationError(f"PNG manifest: missing column(s) {', '.join(map(repr, absent_cols))}")
    ids = manifest["image_id"].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise AnnotationError(
            f"PNG manifest: {len(dup)} duplicated image id(s), e.g. {', '.join(dup[:MAX_EXAMPLES])}"
        )
    indexed = manifest.set_index(ids)[[c for c in needed if c != "image_id"]]
    keys = frame[id_column].astype(str)
    present = isin(keys, set(indexed.index))
    status = keys.map(indexed["status"]).to_numpy(dtype=object)
    ok = present & (status == "ok")
    source = source_of(frame)
    if not present.all():
        rows = frame.index[~present]
        examples = ", ".join(pd.unique(keys[~present])[:MAX_EXAMPLES])
        message = (
            f"{location(frame, rows, id_column)}: {len(rows)} {what} name image(s) absent from the PNG "
            f"manifest (e.g. {examples})"
        )
        if missing == "error":
            raise AnnotationError(message)
        logger.warning("%s; excluded", message)
    failed = present & ~ok
    if failed.any():
        reasons = keys[failed].map(indexed["reason"]) if "reason" in indexed else pd.Series(["unknown"])
        counts = collections.Counter(_reason_code(r) for r in reasons)
        detail = ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))
        rows = frame.index[failed]
        examples = ", ".join(pd.unique(keys[failed])[:MAX_EXAMPLES])
        logger.warning(
            "%s: %d %s belong to image(s) that failed preprocessing (%s; e.g. %s); excluded",
            location(frame, rows, id_column),
            int(failed.sum()),
            what,
            detail,
            examples,
        )
    n_out = int((~ok).sum())
    logger.info(
        "%s: kept %d of %d %s after the PNG manifest join (excluded %d)", source, int(ok.sum()), len(ok),
        what, n_out,
    )  # fmt: skip
    kept = frame[ok].copy()
    extra = indexed.loc[keys[ok].to_numpy(), [c for c in columns if c != "image_id"]]
    for column in extra.columns:
        kept[column] = extra[column].to_numpy()
    kept.attrs = dict(frame.attrs)
    return kept
