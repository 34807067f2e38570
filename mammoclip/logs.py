"""Logging set-up shared by the workflow scripts: one log file per rule, warnings included."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to_file(path: str | Path, level: int = logging.INFO) -> logging.Logger:
    """Send the root logger, Python warnings and stderr (progress bars, tracebacks) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = path.open("a", buffering=1)
    sys.stderr = stream
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(stream)],
        force=True,
    )
    logging.captureWarnings(True)
    return logging.getLogger("mammoclip")
