"""Synthetic breast anatomy, lesions and background objects for phantom mammograms.

Everything here is pure numpy/OpenCV and deterministic given the ``numpy.random.Generator`` passed in.

Conventions
-----------
* **Canonical frame.** Images are first drawn with the chest wall along column 0 and the breast extending
  to the right (the layout of a *left* breast). Right-breast images are the horizontal mirror image: their
  chest wall lies along the last column. :func:`render_breast_image` returns images in the *final* frame.
* **Intensity.** Floats in [0, 1] in the display sense (0 = black background, 1 = brightest), independent
  of the DICOM photometric interpretation chosen later (:func:`intensity_to_stored`). Levels:
  background <= ``BACKGROUND_MAX`` (0.06, i.e. <= 16/255 after an upstream-style min-max to 8 bit, well
  under its threshold of 40), breast skin edge ~0.3, fat ~0.4, fibroglandular ~0.6-0.7, pectoral muscle
  ~0.7, mass +0.2..0.3 on top of the tissue, calcification specks +0.35..0.5, markers/border lines 1.0.
* **Boxes** are half-open pixel boxes ``(xmin, ymin, xmax, ymax)``: pixel (row r, column c) is inside iff
  ``xmin <= c < xmax`` and ``ymin <= r < ymax`` (equivalently continuous coordinates where pixel c covers
  [c, c + 1)). A lesion's box is exactly the tight box of its mask, the set of pixels its drawing changed.
* **Views.** CC-like views use the vertical image axis for outer (lateral, top of the image) vs inner;
  MLO-like views (MLO, ML, LM, AT, LMO) use it for upper vs lower and carry a pectoral-muscle triangle in
  the top corner at the chest-wall side (narrower for ML/LM). A lesion is specified once per breast
  (:class:`LesionSpec`) and mapped into every view of that breast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

MASS = "Mass"
CALCIFICATION = "Suspicious Calcification"
LESION_CATEGORIES = (MASS, CALCIFICATION)

MLO_LIKE_VIEWS = frozenset({"MLO", "ML", "LM", "AT", "LMO"})
VIEW_CODES = {"CC": 0, "MLO": 1, "ML": 2, "LM": 3, "AT": 4, "LMO": 5, "XCCL": 6}

#: Fraction of the breast area covered by fibroglandular texture, per ACR density class.
DENSITY_FRACTIONS: dict[str, tuple[float, float]] = {
    "A": (0.04, 0.14),
    "B": (0.20, 0.34),
    "C": (0.45, 0.60),
    "D": (0.70, 0.85),
}
BACKGROUND_MAX = 0.06
MARKER_INTENSITY = 1.0
TISSUE_MAX = 0.85
#: Pixels within this distance of any image edge never hold lesion pixels (upstream crops 5 px).
EDGE_MARGIN = 8
#: Nominal breast depth (chest wall to nipple) in mm, used to express lesion sizes in reports.
NOMINAL_BREAST_DEPTH_MM = 120.0
_FIXED = 16  # fixed-point factor (shift=4) for sub-pixel polygon filling


@dataclass(frozen=True)
class BreastGeometry:
    """Outline of one breast in one view, canonical frame (chest wall at column 0)."""

    height: int
    width: int
    view: str
    scale: float  # image_scale: pixel size relative to the real dataset's full-resolution pixels
    cy: float  # row of the outline's centre line
    a: float  # breast depth in pixels (chest wall to nipple)
    b_up: float  # half-height above cy at the chest wall
    b_down: float  # half-height below cy at the chest wall
    p: float  # super-ellipse exponent of the outline
    mask: np.ndarray  # bool (H, W): breast tissue incl. pectoral muscle
    pectoral: np.ndarray | None  # bool (H, W) or None for CC-like views
    interior: np.ndarray  # bool (H, W): where lesion pixels may lie

    @property
    def mlo_like(self) -> bool:
        return self.view in MLO_LIKE_VIEWS


@dataclass(frozen=True)
class LesionSpec:
    """A lesion of one breast, independent of the view.

    ``depth`` in [0, 1] runs from the chest wall to the nipple; ``outer`` (>0 lateral) is the CC vertical
    axis, ``upper`` (>0 superior) the MLO one, both in [-1, 1] of the local half-height. ``size`` is the
    mass radius / calcification-cluster radius as a fraction of the breast depth. ``parent`` is the index
    of the mass that encloses a calcification cluster (a combined finding), else None. ``seed`` drives the
    lesion's own shape so that it is the same in every view.
    """

    category: str
    finding: int
    depth: float
    outer: float
    upper: float
    size: float
    amplitude: float
    seed: int
    parent: int | None = None

    @property
    def quadrant(self) -> str:
        return f"{'upper' if self.upper >= 0 else 'lower'} {'outer' if self.outer >= 0 else 'inner'} quadrant"

    def clock(self, laterality: str) -> int:
        """Clock-face position as seen facing the patient (12 = superior; right breast outer = 9)."""
        x = -self.outer if laterality == "R" else self.outer
        hour = round(math.degrees(math.atan2(x, self.upper)) / 30.0) % 12
        return 12 if hour == 0 else hour

    @property
    def size_mm(self) -> float:
        """Nominal diameter in mm."""
        return round(2.0 * self.size * NOMINAL_BREAST_DEPTH_MM, 1)


@dataclass(frozen=True)
class LesionMask:
    """Pixels of one lesion in one image, stored as a patch at (y0, x0)."""

    y0: int
    x0: int
    patch: np.ndarray  # bool
    values: np.ndarray  # float32 additive intensity, same shape as patch, > 0 exactly on patch

    def full(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        h, w = self.patch.shape
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.patch
        return out

    def flipped(self, width: int) -> LesionMask:
        w = self.patch.shape[1]
        return LesionMask(
            self.y0, width - self.x0 - w, self.patch[:, ::-1].copy(), self.values[:, ::-1].copy()
        )

    @property
    def box(self) -> tuple[int, int, int, int]:
        return mask_box(self.patch, offset=(self.y0, self.x0))


@dataclass
class PhantomImage:
    """A rendered phantom in the final frame (left breast: chest wall left; right breast: right)."""

    intensity: np.ndarray  # float32 (H, W) in [0, 1]
    breast_mask: np.ndarray  # bool (H, W)
    lesion_masks: list[LesionMask]  # one per LesionSpec, same order
    chest_wall_side: str  # "left" | "right"

    @property
    def lesion_boxes(self) -> list[tuple[int, int, int, int]]:
        return [m.box for m in self.lesion_masks]

    @property
    def breast_box(self) -> tuple[int, int, int, int]:
        return mask_box(self.breast_mask)


def mask_box(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> tuple[int, int, int, int]:
    """Tight half-open box (xmin, ymin, xmax, ymax) of the True pixels of ``mask``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no bounding box")
    y0, x0 = offset
    return (int(cols[0]) + x0, int(rows[0]) + y0, int(cols[-1]) + 1 + x0, int(rows[-1]) + 1 + y0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Standardised low-frequency Gaussian noise with correlation length ~``sigma`` pixels (float32)."""
    h, w = shape
    f = max(1, int(sigma // 2))
    small: np.ndarray = rng.standard_normal((h // f + 3, w // f + 3), dtype=np.float32)
    small = cv2.GaussianBlur(small, (0, 0), max(sigma / f, 0.5), borderType=cv2.BORDER_REFLECT)
    big = cv2.resize(small, (small.shape[1] * f, small.shape[0] * f), interpolation=cv2.INTER_LINEAR)
    big = np.ascontiguousarray(big[:h, :w])
    std = float(big.std())
    return (big - float(big.mean())) / (std if std > 0 else 1.0)


def _fill_convex(height: int, width: int, pts: np.ndarray) -> np.ndarray:
    canvas = np.zeros((height, width), dtype=np.uint8)
    fixed = np.round(np.asarray(pts, dtype=np.float64) * _FIXED).astype(np.int32)
    hull = cv2.convexHull(fixed.reshape(-1, 1, 2))
    cv2.fillConvexPoly(canvas, hull, 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def make_breast_geometry(
    height: int, width: int, view: str, rng: np.random.Generator, *, scale: float = 1.0
) -> BreastGeometry:
    """Random breast outline (and pectoral muscle for MLO-like views) in the canonical frame."""
    h, w = int(height), int(width)
    mlo = view in MLO_LIKE_VIEWS
    a = w * rng.uniform(0.56, 0.72)
    if view == "AT":
        a *= 0.85
    p = rng.uniform(1.8, 2.6)
    if mlo:
        cy = h * rng.uniform(0.50, 0.58)
        b = h * rng.uniform(0.34, 0.40)
    else:
        cy = h * rng.uniform(0.46, 0.54)
        b = h * rng.uniform(0.33, 0.41)
    b_up = b * rng.uniform(0.95, 1.05)
    b_down = b * rng.uniform(0.95, 1.05)
    b_up = min(b_up, cy - 0.05 * h)
    b_down = min(b_down, 0.95 * h - cy)

    theta = np.linspace(-math.pi / 2, math.pi / 2, 181)
    c, s = np.cos(theta), np.sin(theta)
    xs = a * np.abs(c) ** (2.0 / p)
    ys = cy + np.where(s < 0, b_up, b_down) * np.sign(s) * np.abs(s) ** (2.0 / p)
    pts: list[Any] = [np.stack([xs, ys], axis=1), [[-2.0, cy - b_up], [-2.0, cy + b_down]]]
    pectoral = None
    if mlo:
        pw = a * rng.uniform(0.26, 0.38) * (0.6 if view in ("ML", "LM") else 1.0)
        ph = h * rng.uniform(0.30, 0.48)
        top_w = max(1.25 * pw, a * rng.uniform(0.38, 0.5))
        pts.append([[-2.0, -2.0], [top_w, -2.0]])
        # pectoral: triangle with a slightly convex free edge
        t = np.linspace(0.0, 1.0, 33)
        normal = np.array([ph, pw]) / math.hypot(ph, pw)
        bulge = rng.uniform(0.0, 0.08) * min(pw, ph) * np.sin(math.pi * t)
        edge = np.stack([pw * (1 - t), ph * t], axis=1) + bulge[:, None] * normal[None, :]
        pect_pts = np.concatenate([[[-2.0, -2.0]], edge, [[-2.0, ph]]])
        pectoral = _fill_convex(h, w, pect_pts)
    mask = _fill_convex(h, w, np.concatenate(pts))
    if pectoral is not None:
        pectoral &= mask

    margin = max(2, round(0.02 * a))
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    interior = eroded.astype(bool)
    if pectoral is not None:
        grown = cv2.dilate(pectoral.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
        interior &= ~grown.astype(bool)
    e = EDGE_MARGIN
    interior[:e] = False
    interior[-e:] = False
    interior[:, :e] = False
    interior[:, -e:] = False
    return BreastGeometry(
        h,
        w,
        view,
        float(scale),
        float(cy),
        float(a),
        float(b_up),
        float(b_down),
        float(p),
        mask,
        pectoral,
        interior,
    )


# --------------------------------------------------------------------------------------------------------
# lesions
# --------------------------------------------------------------------------------------------------------


def _view_rng(spec: LesionSpec, view: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, VIEW_CODES.get(view, 99)])


def lesion_center(spec: LesionSpec, geom: BreastGeometry) -> tuple[float, float]:
    """(x, y) of the lesion centre in the canonical frame of ``geom``."""
    v = spec.upper if geom.mlo_like else spec.outer
    b = geom.b_up if v >= 0 else geom.b_down
    half = b * max(0.0, 1.0 - spec.depth**geom.p) ** (1.0 / geom.p)
    return spec.depth * geom.a, geom.cy - v * half


def _mass_mask(spec: LesionSpec, geom: BreastGeometry, center: tuple[float, float]) -> LesionMask:
    shape_rng = np.random.default_rng([spec.seed, 1000])
    ks = np.arange(2, 7)
    coef = shape_rng.uniform(0.0, 0.14, ks.size) / ks**0.6
    phase = shape_rng.uniform(0, 2 * math.pi, ks.size)
    vr = _view_rng(spec, geom.view)
    radius = max(2.0, spec.size * geom.a * vr.uniform(0.92, 1.08))
    rot = vr.uniform(0, 2 * math.pi)
    theta = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    r = radius * (
        1.0 + (coef[:, None] * np.cos(ks[:, None] * (theta[None, :] + rot) + phase[:, None])).sum(0)
    )
    r = np.maximum(r, 0.55 * radius)
    cx, cy = center
    pad = int(math.ceil(r.max())) + 2
    x0, y0 = int(math.floor(cx)) - pad, int(math.floor(cy)) - pad
    size = 2 * pad + 2
    pts = np.stack([cx - x0 + r * np.cos(theta), cy - y0 + r * np.sin(theta)], axis=1)
    canvas = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * _FIXED).astype(np.int32).reshape(-1, 1, 2)], 1, cv2.LINE_8, shift=4)
    patch = canvas.astype(bool)
    if not patch.any():
        patch[pad, pad] = True
        canvas[pad, pad] = 1
    dist = cv2.distanceTransform(canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    t = np.clip(dist / (0.4 * radius + 1.0), 0.0, 1.0)
    profile = 0.25 + 0.75 * t * t * (3.0 - 2.0 * t)
    values = np.where(patch, spec.amplitude * profile, 0.0).astype(np.float32)
    return _trim(LesionMask(y0, x0, patch, values))


def _calc_mask(
    spec: LesionSpec, geom: BreastGeometry, center: tuple[float, float], within: LesionMask | None
) -> LesionMask:
    shape_rng = np.random.default_rng([spec.seed, 2000])
    n = int(shape_rng.integers(5, 21))
    rad = np.sqrt(shape_rng.uniform(0, 1, n))
    ang = shape_rng.uniform(0, 2 * math.pi, n)
    rad[0] = 0.0  # the centre speck is always present (also inside a parent mass)
    diam_full = shape_rng.uniform(5.0, 14.0, n)  # speck diameter at full resolution (pixels)
    gain = shape_rng.uniform(0.35, 0.5, n)
    vr = _view_rng(spec, geom.view)
    spread = max(2.0, spec.size * geom.a * vr.uniform(0.9, 1.1))
    rot = vr.uniform(0, 2 * math.pi)
    cx, cy = center
    xs = cx + spread * rad * np.cos(ang + rot)
    ys = cy + spread * rad * np.sin(ang + rot)
    diam = np.maximum(1, np.round(diam_full * geom.scale)).astype(int)
    pad = int(math.ceil(spread)) + int(diam.max()) + 2
    x0, y0 = int(math.floor(cx)) - pad, int(math.floor(cy)) - pad
    size = 2 * pad + 2
    patch = np.zeros((size, size), dtype=bool)
    values = np.zeros((size, size), dtype=np.float32)
    allowed = None
    if within is not None:
        allowed = np.zeros((size, size), dtype=bool)
        wy, wx = within.y0 - y0, within.x0 - x0
        ph, pw = within.patch.shape
        # place the parent's mask into this patch's frame (clipped)
        sy0, sx0 = max(0, wy), max(0, wx)
        sy1, sx1 = min(size, wy + ph), min(size, wx + pw)
        if sy1 > sy0 and sx1 > sx0:
            allowed[sy0:sy1, sx0:sx1] = within.patch[sy0 - wy : sy1 - wy, sx0 - wx : sx1 - wx]
    for i in range(n):
        d = int(diam[i])
        px = int(math.floor(xs[i] - x0 - (d - 1) / 2.0 + 0.5))
        py = int(math.floor(ys[i] - y0 - (d - 1) / 2.0 + 0.5))
        speck = np.ones((d, d), dtype=bool)
        if d >= 3:
            speck[0, 0] = speck[0, -1] = speck[-1, 0] = speck[-1, -1] = False
        if allowed is not None and i > 0 and not np.all(allowed[py : py + d, px : px + d][speck]):
            continue
        region = patch[py : py + d, px : px + d]
        region |= speck
        vals = values[py : py + d, px : px + d]
        vals[speck] = np.maximum(vals[speck], gain[i])
    return _trim(LesionMask(y0, x0, patch, values))


def _trim(m: LesionMask) -> LesionMask:
    x0, y0, x1, y1 = mask_box(m.patch)
    return LesionMask(m.y0 + y0, m.x0 + x0, m.patch[y0:y1, x0:x1].copy(), m.values[y0:y1, x0:x1].copy())


def lesion_masks(specs: Sequence[LesionSpec], geom: BreastGeometry) -> list[LesionMask]:
    """Masks of all lesions of a breast in one view (canonical frame), in ``specs`` order.

    A calcification cluster with a ``parent`` is centred on, and kept inside, its parent mass.
    """
    out: list[LesionMask] = []
    for spec in specs:
        if spec.category == MASS:
            out.append(_mass_mask(spec, geom, lesion_center(spec, geom)))
        elif spec.category == CALCIFICATION and spec.parent is not None:
            parent = specs[spec.parent]
            out.append(_calc_mask(spec, geom, lesion_center(parent, geom), out[spec.parent]))
        elif spec.category == CALCIFICATION:
            out.append(_calc_mask(spec, geom, lesion_center(spec, geom), None))
        else:
            raise ValueError(f"unknown lesion category {spec.category!r}")
    return out


def _fits(m: LesionMask, allowed: np.ndarray) -> bool:
    h, w = m.patch.shape
    if m.y0 < 0 or m.x0 < 0 or m.y0 + h > allowed.shape[0] or m.x0 + w > allowed.shape[1]:
        return False
    return bool(np.all(allowed[m.y0 : m.y0 + h, m.x0 : m.x0 + w][m.patch]))


def _stamp(occupied: np.ndarray, m: LesionMask, grow: int) -> None:
    h, w = m.patch.shape
    y0, x0 = max(0, m.y0 - grow), max(0, m.x0 - grow)
    y1, x1 = min(occupied.shape[0], m.y0 + h + grow), min(occupied.shape[1], m.x0 + w + grow)
    occupied[y0:y1, x0:x1] = True  # a box around the lesion: keeps lesions and their boxes apart


def place_lesions(
    findings: Sequence[Sequence[str]], geoms: Sequence[BreastGeometry], rng: np.random.Generator
) -> list[LesionSpec]:
    """Place the lesions of one breast so that they lie fully inside the breast in every view.

    ``findings`` lists the categories of each finding, e.g. ``[["Mass"], ["Suspicious Calcification",
    "Mass"]]``; a finding with both categories becomes a mass with a calcification cluster inside it.
    Lesions of different findings (and their boxes, grown by a small gap) do not overlap in any view.
    Raises RuntimeError if no position fits (practically never happens for a sane geometry).
    """
    specs: list[LesionSpec] = []
    occupied = [np.zeros((g.height, g.width), dtype=bool) for g in geoms]
    for f_idx, cats in enumerate(findings):
        cats = list(cats)
        unknown = set(cats) - set(LESION_CATEGORIES)
        if unknown or not cats:
            raise ValueError(f"unsupported finding categories {cats!r}")
        primary = MASS if MASS in cats else CALCIFICATION
        for attempt in range(90):
            shrink = 1.0 if attempt < 30 else (0.65 if attempt < 60 else 0.4)
            size = rng.uniform(0.04, 0.08) if primary == MASS else rng.uniform(0.025, 0.05)
            spec = LesionSpec(
                category=primary,
                finding=f_idx,
                depth=float(rng.uniform(0.22, 0.72)),
                outer=float(rng.uniform(-0.75, 0.75)),
                upper=float(rng.uniform(-0.75, 0.75)),
                size=float(size * shrink),
                amplitude=float(rng.uniform(0.2, 0.3) if primary == MASS else 0.0),
                seed=int(rng.integers(0, 2**62)),
            )
            group = [spec]
            if primary == MASS and CALCIFICATION in cats:
                group.append(
                    LesionSpec(
                        CALCIFICATION,
                        f_idx,
                        spec.depth,
                        spec.outer,
                        spec.upper,
                        float(spec.size * rng.uniform(0.3, 0.45)),
                        0.0,
                        int(rng.integers(0, 2**62)),
                        parent=len(specs),
                    )
                )
            trial = specs + group
            ok = True
            per_view: list[list[LesionMask]] = []
            for g, occ in zip(geoms, occupied, strict=True):
                masks = lesion_masks(trial, g)[len(specs) :]
                allowed = g.interior & ~occ
                if not all(_fits(m, allowed) for m in masks):
                    ok = False
                    break
                per_view.append(masks)
            if ok:
                specs.extend(group)
                for g, occ, masks in zip(geoms, occupied, per_view, strict=True):
                    for m in masks:
                        _stamp(occ, m, grow=max(2, round(0.01 * g.a)))
                break
        else:
            raise RuntimeError(f"could not place finding {cats!r} inside the breast")
    return specs


# --------------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------------


def _text_block(text: str, height: int, width: int) -> np.ndarray:
    """Letter-like bool block of ``text`` resized to (height, width)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, 1.0, 2)
    canvas = np.zeros((th + base + 4, tw + 4), dtype=np.uint8)
    cv2.putText(canvas, text, (2, th + 2), font, 1.0, 255, 2, cv2.LINE_8)
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA) >= 128


def _draw_background_objects(
    img: np.ndarray, breast_extent: int, label: str, chest_left: bool, rng: np.random.Generator
) -> None:
    """Markers/labels on the side opposite the chest wall, and bright line(s) in the outer 5 px."""
    h, w = img.shape
    gap = max(3, round(0.04 * w))
    zx0 = max(breast_extent + gap, round(0.8 * w))  # canonical columns [zx0, zx1) are free of breast
    zx1 = w - 7

    def put(block: np.ndarray, y: int, x_canon: int, value: float) -> None:
        bh, bw = block.shape
        x = x_canon if chest_left else w - x_canon - bw
        img[y : y + bh, x : x + bw][block] = value  # labels stay readable (not mirrored)

    zone = zx1 - zx0
    if zone >= 6:
        # view label near the top (or bottom) corner, outside the central band used for column detection
        lw = min(zone, max(6, round(0.12 * w)))
        lh = max(4, min(round(0.045 * h), lw))
        ly = 8 if rng.random() < 0.7 else h - 8 - lh
        lx = zx0 + int(rng.integers(0, zone - lw + 1))
        put(_text_block(label, lh, lw), ly, lx, MARKER_INTENSITY)
        # a lead-marker-like block inside the central band: a short, separate run of non-constant columns
        mw = min(zone, max(2, round(rng.uniform(0.02, 0.05) * w)))
        mh = max(3, round(rng.uniform(0.03, 0.08) * h))
        my = int(rng.integers(round(0.3 * h), round(0.65 * h) - mh + 1))
        mx = zx0 + int(rng.integers(0, zone - mw + 1))
        block = np.ones((mh, mw), dtype=bool)
        if mw >= 5 and mh >= 5 and rng.random() < 0.5:
            block[mh // 3 : mh - mh // 3, mw // 3 : mw - mw // 3] = False  # letter-O-like
        put(block, my, mx, float(rng.uniform(0.85, 1.0)))
    # bright line(s) along border(s), entirely inside the outer 5 px
    sides = ["top", "bottom", "far"]
    n_lines = 1 if rng.random() < 0.7 else 2
    for side in rng.permutation(sides)[:n_lines]:
        thick = int(rng.integers(1, 4))
        off = int(rng.integers(0, 5 - thick + 1))
        if side == "top":
            img[off : off + thick, :] = MARKER_INTENSITY
        elif side == "bottom":
            img[h - off - thick : h - off, :] = MARKER_INTENSITY
        else:
            cols = slice(w - off - thick, w - off) if chest_left else slice(off, off + thick)
            img[:, cols] = MARKER_INTENSITY


def render_breast_image(
    geom: BreastGeometry,
    lesions: Sequence[LesionSpec],
    *,
    density: str,
    laterality: str,
    rng: np.random.Generator,
    label: str | None = None,
) -> PhantomImage:
    """Render one phantom mammogram (float intensities in the final, possibly mirrored frame).

    The random numbers drawn from ``rng`` do not depend on ``lesions`` (lesion shapes come from their own
    seeds), so rendering the same geometry with and without lesions differs exactly on the lesion masks.
    """
    if density not in DENSITY_FRACTIONS:
        raise ValueError(f"density must be one of A-D, got {density!r}")
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be L or R, got {laterality!r}")
    h, w, a = geom.height, geom.width, geom.a
    mask = geom.mask

    bg = 0.024 + 0.01 * smooth_noise(rng, (h, w), 0.05 * w) + 0.005 * rng.standard_normal((h, w), np.float32)
    np.clip(bg, 0.0, BACKGROUND_MAX, out=bg)

    mask_u8 = mask.astype(np.uint8)
    dist = cv2.distanceTransform(mask_u8, cv2.DIST_L2, cv2.DIST_MASK_5)
    falloff = np.clip(dist / (0.1 * a), 0.0, 1.0) ** 0.6
    fat = rng.uniform(0.36, 0.44)
    gland = fat + rng.uniform(0.2, 0.27)
    lo, hi = DENSITY_FRACTIONS[density]
    frac = rng.uniform(lo, hi)
    field = (
        smooth_noise(rng, (h, w), 0.07 * a)
        + 0.6 * smooth_noise(rng, (h, w), 0.025 * a)
        + 1.2 * np.clip(dist / (0.3 * a), 0.0, 1.0)
    )
    inside = field[mask]
    thr = np.quantile(inside, 1.0 - frac) if inside.size else 0.0
    glandular = cv2.GaussianBlur((field > thr).astype(np.float32), (0, 0), max(0.8, 0.008 * a))
    tissue = fat + (gland - fat) * glandular + 0.025 * smooth_noise(rng, (h, w), max(1.0, 0.004 * a))
    tissue = 0.3 + (tissue - 0.3) * falloff
    if geom.pectoral is not None:
        pm = cv2.GaussianBlur(geom.pectoral.astype(np.float32), (0, 0), max(0.8, 0.004 * a))
        pect = rng.uniform(0.66, 0.76) + 0.02 * smooth_noise(rng, (h, w), max(1.0, 0.01 * a))
        tissue = tissue * (1.0 - pm) + pect * pm
    k = max(1, round(0.004 * a))
    eroded = cv2.erode(mask_u8, np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(bool)
    tissue = tissue + 0.04 * (mask & ~eroded)
    img = np.where(mask, np.clip(tissue, 0.0, TISSUE_MAX), bg).astype(np.float32)
    img += 0.004 * rng.standard_normal((h, w), np.float32)
    img[~mask] = np.clip(img[~mask], 0.0, BACKGROUND_MAX)

    masks = lesion_masks(lesions, geom) if lesions else []
    for m in masks:
        ph, pw = m.patch.shape
        img[m.y0 : m.y0 + ph, m.x0 : m.x0 + pw] += m.values
    np.clip(img, 0.0, 1.0, out=img)

    chest_left = laterality == "L"
    breast_mask = mask
    if not chest_left:
        img = np.ascontiguousarray(img[:, ::-1])
        breast_mask = np.ascontiguousarray(mask[:, ::-1])
        masks = [m.flipped(w) for m in masks]
    cols = np.flatnonzero(mask.any(axis=0))
    extent = int(cols[-1]) + 1 if cols.size else 0
    _draw_background_objects(img, extent, label or f"{laterality} {geom.view}", chest_left, rng)
    return PhantomImage(img, breast_mask, masks, "left" if chest_left else "right")


def intensity_to_stored(
    intensity: np.ndarray, *, photometric: str, bits_stored: int, lo_frac: float = 0.0, hi_frac: float = 1.0
) -> np.ndarray:
    """Map [0, 1] display intensities to stored integers (uint16).

    MONOCHROME2: ``v = lo + round(I * (hi - lo))``; MONOCHROME1: ``2**bits - 1 - v`` (bright = low stored).
    """
    full = 2**bits_stored - 1
    lo = round(lo_frac * full)
    hi = round(hi_frac * full)
    if not 0 <= lo < hi <= full:
        raise ValueError(f"bad stored range [{lo}, {hi}] for {bits_stored} bits")
    v = lo + np.rint(np.clip(intensity, 0.0, 1.0) * (hi - lo))
    if photometric == "MONOCHROME1":
        v = full - v
    elif photometric != "MONOCHROME2":
        raise ValueError(f"unsupported photometric interpretation {photometric!r}")
    return v.astype(np.uint16)
