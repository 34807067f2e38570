"""Cluster job sizes (threads, memory, wall time, GPUs) derived from the experiment, for the Snakemake rules.

A scheduler needs every job's request up front, and a request far above the need wastes the queue while
one below it kills the job. The sizes here scale with what the config says a job will process (image
counts, image size, epochs, data fraction); the constants are measured or upstream's figures:

* DICOM -> PNG: ~1 s to decode a full-size JPEG 2000 mammogram (environment notes: 0.85 s for 3518 x 2800),
  so 2 s per image and worker leaves a 2x margin; each worker holds one decoded 16-bit image and its float
  copy (< 200 MB) plus the interpreter.
* Embedding: a B5 forward at 1520 x 912 takes ~5 s on a CPU and ~0.02 s on a GPU (batch of 8).
* Classifiers: see :func:`classifier_runtime`; detectors: :func:`detector_runtime`.

Snakemake's ``runtime`` is in minutes and ``mem_mb`` in MB. The rules wrap every size in :func:`grow`, so
a job that the profile resubmits (``retries`` in ``profiles/slurm``) after running out of memory or time asks
for twice, then three times as much; profiles can still override any rule (``set-resources``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "classifier_runtime",
    "detector_runtime",
    "grow",
    "conversion_resources",
    "count_rows",
    "embedding_resources",
    "table_resources",
]

#: the paper's image size, the reference for per-image costs
FULL_PIXELS = 1520 * 912


def count_rows(path: str | Path, default: int) -> int:
    """Data rows of a CSV (lines minus the header), or ``default`` when it does not exist yet."""
    path = Path(path)
    if not path.is_file():
        return default
    with open(path, "rb") as handle:
        return max(sum(1 for _ in handle) - 1, 1)


def _minutes(seconds: float, floor: int) -> int:
    return int(floor + math.ceil(seconds / 60))


def conversion_resources(images: int, shards: int, workers: int) -> dict[str, int]:
    """``mem_mb`` and ``runtime`` of one conversion shard of ``images / shards`` images on ``workers``."""
    per_shard = math.ceil(images / max(shards, 1))
    return {
        "mem_mb": 1000 + 500 * workers,
        "runtime": _minutes(2.0 * per_shard / max(workers, 1), 10),
    }


def table_resources(rows: int) -> dict[str, int]:
    """A pandas job over ``rows`` rows (joins, folds, tables): ~20 kB per row in memory at most."""
    return {"mem_mb": 1000 + rows // 50, "runtime": _minutes(rows / 1000, 10)}


def embedding_resources(images: int, pixels: int, gpus: int) -> dict[str, int]:
    """Encoding ``images`` images of ``pixels`` pixels once (B5-sized encoder)."""
    per_image = (0.02 if gpus else 5.0) * max(pixels / FULL_PIXELS, 0.05)
    return {"mem_mb": 8000 if gpus else 4000, "runtime": _minutes(2 * images * per_image, 10)}


def classifier_runtime(
    *, images: int, fraction: float, epochs: int, mode: str, pixels: int, gpus: int, cached: bool
) -> int:
    """Minutes for one classifier run: ~0.25 s per training image and epoch to finetune a B5 at 1520 x 912
    on one GPU, ~0.08 s through a frozen encoder, ten times that on CPUs; a head on cached embeddings needs
    seconds. Evaluation passes and a 1.5x margin included."""
    if cached:
        return 15
    per_image = (0.25 if mode == "ft" else 0.08) * max(pixels / FULL_PIXELS, 0.05) * (1 if gpus else 10)
    return _minutes(1.5 * epochs * images * fraction * per_image, 15)


#: the detector's reference input (upstream's 512 x 512)
DETECT_PIXELS = 512 * 512


def detector_runtime(
    *, images: int, select_images: int, fraction: float, epochs: int, mode: str, pixels: int, gpus: int
) -> int:
    """Minutes for one detector run: ~0.05 s per training image and epoch to finetune a B5 RetinaNet at
    512 x 512 on one GPU (0.03 s with the encoder frozen), twenty times that on CPUs; the selection images
    are scored every epoch at a third of the training cost. A 1.5x margin included. ``images``: the
    training images before the data fraction (an upper bound for the paper protocol's positives only)."""
    per_image = (0.05 if mode == "ft" else 0.03) * max(pixels / DETECT_PIXELS, 0.05) * (1 if gpus else 20)
    seconds = epochs * per_image * (images * fraction + select_images / 3)
    return _minutes(1.5 * seconds, 15)


def grow(base: float | Callable) -> Callable:
    """A Snakemake resource callable: ``base`` (a number, or a function of ``wildcards`` [and ``threads``])
    times ``attempt`` (1 on the first submission, 2 on the first resubmission, ...), as an integer."""
    if not callable(base):
        return lambda wildcards, attempt: int(base * attempt)
    takes_threads = len(inspect.signature(base).parameters) > 1

    def size(wildcards, threads, attempt):
        value = base(wildcards, threads) if takes_threads else base(wildcards)
        return int(value * attempt)

    return size
