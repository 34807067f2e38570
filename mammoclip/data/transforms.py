"""Image augmentation for pre-training (docs/upstream.md#pretraining), on 8-bit grey images.

Every transform takes and returns a ``uint8`` array ``[H, W]`` (the PNGs of the DICOM -> PNG stage) and
first resizes it to the configured ``(height, width)`` with ``INTER_AREA`` when its size differs (as the
converter and :func:`mammoclip.inference.read_model_input` do). Normalisation to the model input is *not*
done here: :func:`mammoclip.inference.normalise_image` does it after augmentation.

:class:`TrainAugment` (training), each step independently:

1. horizontal flip, p = 0.5;
2. vertical flip, p = 0.5;
3. affine, p = 0.5, about the image centre ``((W-1)/2, (H-1)/2)``: output point =
   ``centre + translation + R(rotate) . Shx(shear_x) . Shy(shear_y) . diag(scale_x, scale_y) . (p - centre)``
   in pixel coordinates ``(x right, y down)``, bilinear, constant zero border, output the same size.
   ``R(a) = [[cos a, -sin a], [sin a, cos a]]``: with y pointing down a positive angle turns the image
   *clockwise on screen* (the convention of scikit-image / albumentations). ``Shx(a) = [[1, tan a], [0, 1]]``,
   ``Shy(a) = [[1, 0], [tan a, 1]]``; translation = ``(translate_x * W, translate_y * H)``;
4. elastic deformation, p = 0.5 (below).

Affine parameters. ``legacy=False`` (default): ``rotate ~ U(-20, 20)`` degrees, ``shear_x, shear_y ~
U(-20, 20)`` degrees, ``translate_x, translate_y ~ U(-0.1, 0.1)`` (fractions of W and H), ``scale_x,
scale_y ~ U(0.8, 1.2)`` independently (upstream's ``keep_ratio=False``). ``legacy=True`` reproduces the
magnitudes upstream actually trained with: albumentations 1.4 reads a
scalar ``Affine`` argument as a fixed value, so whenever the affine fires the image is rotated by exactly
+20 degrees, sheared by +20 degrees on both axes and shifted by +10 % of W and H; only the scale is random
(``U(0.8, 1.2)`` per axis). The magnitudes and sampling are upstream's; the matrix composition is ours, so
legacy outputs are not bit-identical to albumentations.

Elastic deformation, in upstream's units (albumentations ``ElasticTransform(alpha=10, sigma=15)``): a
displacement field ``dx = alpha * G_sigma * U``, ``dy`` likewise with independent noise, where ``U`` is
uniform noise in [-1, 1] per pixel and ``G_sigma`` a Gaussian blur with standard deviation ``sigma`` *pixels*
(of the image being augmented, i.e. after the resize; kernel truncated at 4 sigma). ``alpha`` is therefore
a multiplier of smoothed noise, not a displacement in pixels: blurring white noise of variance 1/3 with
a 2-D Gaussian leaves a standard deviation of ``sqrt(1/3) / (2 sqrt(pi) sigma)``, so ``alpha=10,
sigma=15`` displaces pixels by only about ``10 * 0.577 / (3.545 * 15) ~= 0.11`` px RMS: upstream's elastic
step is essentially a mild bilinear resampling, and so is ours (same units, same values). Pixels are
sampled with ``cv2.remap`` (bilinear, constant zero border). Releases of albumentations that still had
``ElasticTransform``'s ``alpha_affine`` argument (default 50) added a random corner-jitter affine inside
the elastic step; that extra affine is not reproduced.

Randomness comes only from the ``numpy.random.Generator`` passed to each call, so an augmentation is
reproducible from the generator's seed (:meth:`TrainAugment.sample` draws every parameter, in a fixed
order, whether or not the step fires; :meth:`TrainAugment.apply` is deterministic).
:class:`EvalTransform` (validation, test) only resizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "AffineParams",
    "AugmentParams",
    "EvalTransform",
    "TrainAugment",
    "affine_matrix",
    "elastic_displacement",
    "resize_image",
]


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a grey uint8 image [H, W], got {got}")


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` resized to ``(height, width)`` with ``INTER_AREA``; returned as is when the size matches."""
    _check_image(image)
    if image.shape == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class AffineParams:
    """One affine draw; angles in degrees, translations as fractions of width / height."""

    rotate: float = 0.0
    shear_x: float = 0.0
    shear_y: float = 0.0
    translate_x: float = 0.0
    translate_y: float = 0.0
    scale_x: float = 1.0
    scale_y: float = 1.0


@dataclass(frozen=True)
class AugmentParams:
    """Everything :meth:`TrainAugment.apply` needs; ``affine`` / ``elastic_seed`` are None when the step
    does not fire."""

    hflip: bool
    vflip: bool
    affine: AffineParams | None
    elastic_seed: int | None


def affine_matrix(params: AffineParams, height: int, width: int) -> np.ndarray:
    """The forward ``2 x 3`` matrix (input pixel -> output pixel) of ``params`` (see the module docstring)."""
    rot = math.radians(params.rotate)
    rotation = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    shear_x = np.array([[1.0, math.tan(math.radians(params.shear_x))], [0.0, 1.0]])
    shear_y = np.array([[1.0, 0.0], [math.tan(math.radians(params.shear_y)), 1.0]])
    linear = rotation @ shear_x @ shear_y @ np.diag([params.scale_x, params.scale_y])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = np.array([params.translate_x * width, params.translate_y * height])
    offset = centre + shift - linear @ centre
    return np.hstack([linear, offset[:, None]])


def elastic_displacement(
    height: int, width: int, *, alpha: float, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(dx, dy)``, float32 ``[H, W]``: ``alpha * GaussianBlur_sigma(U(-1, 1))``, independent noise each."""
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    fields = []
    for _ in range(2):
        noise = rng.random((height, width), dtype=np.float32)
        noise *= 2.0
        noise -= 1.0
        blurred = cv2.GaussianBlur(
            noise, (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
        )
        fields.append(blurred * np.float32(alpha))
    return fields[0], fields[1]


class EvalTransform:
    """Validation / test: resize only (``rng`` is accepted and ignored, for a common call signature)."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = int(height), int(width)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return resize_image(image, self.height, self.width)

    def __repr__(self) -> str:
        return f"EvalTransform(height={self.height}, width={self.width})"


class TrainAugment:
    """Training augmentation of a grey uint8 image (module docstring): resize, flips, affine, elastic.

    ``rotate`` / ``shear`` (degrees) and ``translate`` (fraction) are half-widths of symmetric ranges, or
    with ``legacy=True`` the fixed values upstream applied; ``scale`` is always a range. Each ``*_p`` is
    the probability of that step. Call as ``augment(image, rng)`` with a ``numpy.random.Generator``.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        legacy: bool = False,
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        affine_p: float = 0.5,
        elastic_p: float = 0.5,
        rotate: float = 20.0,
        shear: float = 20.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.8, 1.2),
        elastic_alpha: float = 10.0,
        elastic_sigma: float = 15.0,
    ) -> None:
        for name, p in (
            ("hflip_p", hflip_p),
            ("vflip_p", vflip_p),
            ("affine_p", affine_p),
            ("elastic_p", elastic_p),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be a range (low, high) with 0 < low <= high, got {scale}")
        if elastic_sigma <= 0:
            raise ValueError(f"elastic_sigma must be > 0, got {elastic_sigma}")
        self.height, self.width = int(height), int(width)
        self.legacy = bool(legacy)
        self.hflip_p, self.vflip_p, self.affine_p, self.elastic_p = hflip_p, vflip_p, affine_p, elastic_p
        self.rotate, self.shear, self.translate = float(rotate), float(shear), float(translate)
        self.scale = (float(scale[0]), float(scale[1]))
        self.elastic_alpha, self.elastic_sigma = float(elastic_alpha), float(elastic_sigma)

    def __repr__(self) -> str:
        return (
            f"TrainAugment(height={self.height}, width={self.width}, legacy={self.legacy}, "
            f"p=(hflip {self.hflip_p}, vflip {self.vflip_p}, affine {self.affine_p}, "
            f"elastic {self.elastic_p}), "
            f"rotate={self.rotate}, shear={self.shear}, translate={self.translate}, scale={self.scale}, "
            f"elastic_alpha={self.elastic_alpha}, elastic_sigma={self.elastic_sigma})"
        )

    def _symmetric(self, rng: np.random.Generator, half: float) -> float:
        draw = float(rng.uniform(-half, half))
        return half if self.legacy else draw

    def sample(self, rng: np.random.Generator) -> AugmentParams:
        """Draw the parameters of one augmentation; always consumes the same amount of randomness."""
        hflip = bool(rng.random() < self.hflip_p)
        vflip = bool(rng.random() < self.vflip_p)
        affine_on = bool(rng.random() < self.affine_p)
        affine = AffineParams(
            rotate=self._symmetric(rng, self.rotate),
            shear_x=self._symmetric(rng, self.shear),
            shear_y=self._symmetric(rng, self.shear),
            translate_x=self._symmetric(rng, self.translate),
            translate_y=self._symmetric(rng, self.translate),
            scale_x=float(rng.uniform(*self.scale)),
            scale_y=float(rng.uniform(*self.scale)),
        )
        elastic_on = bool(rng.random() < self.elastic_p)
        elastic_seed = int(rng.integers(0, 2**63 - 1))
        return AugmentParams(
            hflip=hflip,
            vflip=vflip,
            affine=affine if affine_on else None,
            elastic_seed=elastic_seed if elastic_on else None,
        )

    def apply(self, image: np.ndarray, params: AugmentParams) -> np.ndarray:
        """Resize, then the steps of ``params`` in order; uint8 ``[height, width]``."""
        out = resize_image(image, self.height, self.width)
        if params.hflip:
            out = out[:, ::-1]
        if params.vflip:
            out = out[::-1, :]
        out = np.ascontiguousarray(out)
        if params.affine is not None:
            out = cv2.warpAffine(
                out,
                affine_matrix(params.affine, self.height, self.width),
                (self.width, self.height),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        if params.elastic_seed is not None:
            dx, dy = elastic_displacement(
                self.height,
                self.width,
                alpha=self.elastic_alpha,
                sigma=self.elastic_sigma,
                rng=np.random.default_rng(params.elastic_seed),
            )
            grid_x, grid_y = np.meshgrid(
                np.arange(self.width, dtype=np.float32), np.arange(self.height, dtype=np.float32)
            )
            out = cv2.remap(
                out,
                grid_x + dx,
                grid_y + dy,
                interpolation=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        return out

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"TrainAugment needs a numpy.random.Generator, got {type(rng).__name__}")
        _check_image(image)
        return self.apply(image, self.sample(rng))
