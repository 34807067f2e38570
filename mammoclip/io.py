"""Atomic file writes: a reader sees the old file or the complete new one, never half a file.

Everything is written to a temporary file in the destination's folder (same filesystem), then moved onto
the destination with ``os.replace``; on an error the temporary file is removed and the destination is left
as it was. The parent folder is created when missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_copy", "atomic_path", "atomic_write", "temporary_path"]


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh hidden sibling of ``path``, unique per process, thread and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, temporary: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path for the caller to write (e.g. ``frame.to_parquet(tmp)``); on leaving the
    block without an exception it replaces ``path``.

    ``temporary``: the temporary file's name, for writers whose output depends on it (``torch.save`` names
    its zip archive after the file); it must be in ``path``'s folder. Default: :func:`temporary_path`.
    """
    path = Path(path)
    tmp = Path(temporary) if temporary is not None else temporary_path(path)
    if tmp.parent.resolve() != path.parent.resolve():
        raise ValueError(f"temporary file {tmp} is not in the folder of {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_write(path, "wb") as f: f.write(...)``: ``open(tmp, mode, **open_kwargs)`` on a
    temporary sibling of ``path``, closed and moved onto ``path`` when the block ends without an exception.

    ``mode``: a write mode (``"w"``, ``"wb"``, ...).
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write needs a write mode ('w', 'wb', ...), got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as handle:
        yield handle


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (``shutil.copyfile`` to a temporary sibling, then
    ``os.replace``); returns ``dst``."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
