"""Small synthetic test images shared by the preprocessing tests (fast to make, simple to reason about)."""

from __future__ import annotations

import cv2
import numpy as np


def synthetic_mammogram(
    height: int,
    width: int,
    *,
    side: str = "left",
    bits_stored: int = 12,
    seed: int = 0,
    marker: bool = True,
) -> np.ndarray:
    """A breast-like image of stored values (MONOCHROME2 sense: bright tissue on a dark background).

    A textured half-ellipse against the chest-wall edge (column 0 for ``side="left"``, the last column for
    ``"right"``), a flat background at ~2 % of full scale, and (``marker``) a small bright label block on
    the opposite side that upstream's heuristic must ignore.
    """
    rng = np.random.default_rng(seed)
    top = 2**bits_stored - 1
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.sqrt(((yy - height / 2) / (0.42 * height)) ** 2 + (xx / (0.7 * width)) ** 2)
    coarse = rng.normal(0.0, 1.0, (max(height // 32, 2), max(width // 32, 2))).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    tissue = 0.35 + 0.3 * (1 - r) + 0.06 * texture + rng.normal(0, 0.01, (height, width)).astype(np.float32)
    img = np.where(r < 1, np.clip(tissue, 0.2, 0.9), 0.02).astype(np.float32)
    if marker:
        y0, x0 = int(0.45 * height), int(0.86 * width)
        img[y0 : y0 + max(height // 40, 2), x0 : x0 + max(width // 20, 2)] = 0.97
    if side == "right":
        img = img[:, ::-1]
    elif side != "left":
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return np.ascontiguousarray(np.round(img * top).astype(np.uint16))
