"""Provenance: every result file records the code, data, settings and seed that made it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from mammoclip import __version__


@cache
def code_version() -> str:
    """Package version plus the git commit of the source tree (with '-dirty' for uncommitted changes)."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{__version__}+{commit}"


def provenance(**fields: Any) -> dict[str, Any]:
    """A provenance record: the caller's fields plus code version and Python version."""
    return {"code_version": code_version(), "python": platform.python_version(), **fields}


def write_provenance(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Write a provenance record as JSON (sorted keys, stable bytes for equal inputs) and return it."""
    record = provenance(**fields)
    Path(path).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return record
