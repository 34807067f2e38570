"""Images and boxes for the detector: reading, resizing, augmentation, batching (docs/upstream.md#detection).

:class:`DetectionImages` yields, per image row (``image_id`` and ``png_path`` or ``path``), the model input,
its target and where it came from:

1. the 8-bit grey PNG (:func:`mammoclip.inference.read_grey`);
2. resized to the input size ``(height, width)`` with ``INTER_AREA``
   (:func:`mammoclip.data.transforms.resize_image`): stretched by default (upstream), or with
   ``keep_aspect`` scaled by one factor to fit and zero-padded at the bottom and right. The boxes (PNG
   pixels, ``xmin, ymin, xmax, ymax`` with pixel *edges* as coordinates, so a box of the whole image is
   ``0, 0, width, height``) are scaled with the image (:class:`InputFrame`);
3. training only (``augment``): image and boxes transformed together by ``torchvision.transforms.v2`` on a
   ``tv_tensors.Image`` and ``tv_tensors.BoundingBoxes`` -- horizontal flip, vertical flip and, with
   probability ``affine_p``, ``RandomAffine`` (bilinear, zero fill; a box becomes the axis-aligned box of
   its four transformed corners). Then always ``ClampBoundingBoxes`` and ``SanitizeBoundingBoxes``
   (boxes under 1 pixel wide/high or 1 pixel^2 are dropped with their labels). Each sample's randomness is
   seeded from ``(seed, epoch, index)`` (:meth:`DetectionImages.set_epoch`), so a run is reproducible
   whatever the number of loader workers;
4. normalised exactly as the classifiers' and CLIP's input (:func:`mammoclip.inference.normalise_image`:
   per-image min-max after augmentation, the pretraining mean/std, grey copied to 3 channels).

Augmentation settings (``detect.labels.<label>.augment``): ``hflip_p``, ``vflip_p``, ``affine_p`` and the
``RandomAffine`` ranges ``degrees`` (a number d: -d..d, or a range), ``translate`` (fraction of width and
height: a number or ``[x, y]``), ``scale`` (a range ``[low, high]``, or a number s: 1-s..1+s) and
``shear`` (torchvision's meaning: a number s shears along x in -s..s; 2 values an x range; 4 values x and y
ranges). Zero or None leaves a parameter out. No elastic transform: upstream's is sub-pixel
(docs/upstream.md#detection).

:func:`collate_detection` makes the lists torchvision's detection models take. :meth:`InputFrame.to_png`
maps boxes predicted on the model input back to PNG pixels (clipped to the PNG).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mammoclip.data.transforms import resize_image
from mammoclip.inference import normalise_image, read_grey

__all__ = [
    "AUGMENT_KEYS",
    "BOX_COLUMNS",
    "DetectionImages",
    "InputFrame",
    "build_augmentation",
    "collate_detection",
    "group_boxes",
    "sample_seed",
]

log = logging.getLogger(__name__)

BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
AUGMENT_KEYS = ("hflip_p", "vflip_p", "affine_p", "degrees", "translate", "scale", "shear")
#: every box gets this label: the detector has one foreground class
FOREGROUND = 0


@dataclass(frozen=True)
class InputFrame:
    """How a PNG of ``png_height x png_width`` sits in the ``height x width`` model input.

    The PNG is scaled by ``scale_x`` / ``scale_y`` and placed at the top-left corner (the rest, with
    ``keep_aspect``, is zero padding): input = PNG * scale.
    """

    png_height: int
    png_width: int
    height: int
    width: int
    keep_aspect: bool = False

    @property
    def resized(self) -> tuple[int, int]:
        """``(h, w)`` of the resized PNG inside the input (the input size unless ``keep_aspect``)."""
        if not self.keep_aspect:
            return self.height, self.width
        factor = min(self.height / self.png_height, self.width / self.png_width)
        h = min(self.height, max(1, round(self.png_height * factor)))
        w = min(self.width, max(1, round(self.png_width * factor)))
        return h, w

    @property
    def scale(self) -> tuple[float, float]:
        """``(scale_x, scale_y)``: input pixels per PNG pixel."""
        h, w = self.resized
        return w / self.png_width, h / self.png_height

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """PNG-pixel boxes ``[n, 4]`` (xyxy) -> input pixels."""
        sx, sy = self.scale
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])

    def to_png(self, boxes: np.ndarray) -> np.ndarray:
        """Input-pixel boxes ``[n, 4]`` (xyxy) -> PNG pixels, clipped to the PNG (padding maps outside)."""
        sx, sy = self.scale
        out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / np.array([sx, sy, sx, sy])
        out[:, 0::2] = out[:, 0::2].clip(0.0, self.png_width)
        out[:, 1::2] = out[:, 1::2].clip(0.0, self.png_height)
        return out

    def image(self, png: np.ndarray) -> np.ndarray:
        """The uint8 ``[height, width]`` input of the grey PNG ``png`` (resized, padded if needed)."""
        h, w = self.resized
        out = resize_image(png, h, w)
        if (h, w) == (self.height, self.width):
            return out
        padded = np.zeros((self.height, self.width), dtype=np.uint8)
        padded[:h, :w] = out
        return padded


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A torch seed for one sample's augmentation, mixed from ``(seed, epoch, index)``."""
    state = np.random.SeedSequence([abs(int(seed)), abs(int(epoch)), abs(int(index))]).generate_state(1)
    return int(state[0])


def group_boxes(boxes: pd.DataFrame | None) -> tuple[dict[str, np.ndarray], int]:
    """``({str(image_id): float boxes [n, 4] in PNG pixels}, number of rows dropped for NaN coordinates)``."""
    if boxes is None or len(boxes) == 0:
        return {}, 0
    missing = [c for c in ("image_id", *BOX_COLUMNS) if c not in boxes.columns]
    if missing:
        raise ValueError(f"boxes table lacks column(s) {missing}")
    coords = boxes[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
    finite = np.isfinite(coords).all(axis=1)
    grouped: dict[str, list[np.ndarray]] = {}
    for image_id, row in zip(boxes["image_id"].astype(str)[finite], coords[finite], strict=True):
        grouped.setdefault(image_id, []).append(row)
    return {k: np.stack(v) for k, v in grouped.items()}, int((~finite).sum())


def _pair(value: Any, what: str) -> tuple[float, float]:
    values = [float(v) for v in value] if isinstance(value, Sequence) else []
    if len(values) != 2:
        raise ValueError(f"augment.{what} must be a number or a pair, got {value!r}")
    return values[0], values[1]


def build_augmentation(augment: Mapping[str, Any] | None) -> Any:
    """The ``torchvision.transforms.v2`` pipeline of an ``augment`` mapping (module docstring), followed
    by box clamping and sanitising; ``None``: clamping and sanitising only."""
    from torchvision.transforms import v2

    settings = dict(augment or {})
    unknown = sorted(set(settings) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"unknown augment setting(s) {unknown}; known: {list(AUGMENT_KEYS)}")
    steps: list[Any] = []
    for key in ("hflip_p", "vflip_p", "affine_p"):
        p = float(settings.get(key) or 0.0)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.{key} must be in [0, 1], got {p}")
    if settings.get("hflip_p"):
        steps.append(v2.RandomHorizontalFlip(float(settings["hflip_p"])))
    if settings.get("vflip_p"):
        steps.append(v2.RandomVerticalFlip(float(settings["vflip_p"])))
    if settings.get("affine_p"):
        degrees = settings.get("degrees") or 0.0
        translate = settings.get("translate") or None
        scale = settings.get("scale") or None
        shear = settings.get("shear") or None
        if isinstance(translate, int | float):
            translate = (float(translate), float(translate))
        elif translate is not None:
            translate = _pair(translate, "translate")
        if isinstance(scale, int | float):
            scale = (1.0 - float(scale), 1.0 + float(scale))
        elif scale is not None:
            scale = _pair(scale, "scale")
        if scale is not None and not 0 < scale[0] <= scale[1]:
            raise ValueError(
                f"augment.scale must give a range 0 < low <= high, got {settings.get('scale')!r}"
            )
        if isinstance(degrees, Sequence):
            degrees = _pair(degrees, "degrees")
        affine = v2.RandomAffine(
            degrees=degrees,
            translate=translate,
            scale=scale,
            shear=list(shear) if isinstance(shear, Sequence) else shear,
            interpolation=v2.InterpolationMode.BILINEAR,
            fill=0,
        )
        steps.append(v2.RandomApply([affine], p=float(settings["affine_p"])))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0)]
    return v2.Compose(steps)


class DetectionImages(Dataset):
    """``(input [3, height, width] float32, target, meta)`` per row of ``images`` (module docstring).

    ``target``: ``boxes`` float32 ``[n, 4]`` (xyxy, input pixels) and ``labels`` int64 ``[n]`` (all 0), as
    torchvision's detectors take them. ``meta``: ``index`` (row), ``image_id`` and ``frame``
    (:class:`InputFrame`, for :meth:`InputFrame.to_png`). ``boxes``: PNG-pixel boxes of the label (rows of
    other images are ignored; rows with a NaN coordinate are dropped and counted in ``n_dropped_nan``), or
    the output of :func:`group_boxes`.
    ``augment``: a mapping of augmentation settings for training, or None.
    """

    def __init__(
        self,
        images: pd.DataFrame,
        boxes: pd.DataFrame | Mapping[str, np.ndarray] | None,
        *,
        height: int,
        width: int,
        keep_aspect: bool = False,
        augment: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        column = next((c for c in ("png_path", "path") if c in images.columns), None)
        if "image_id" not in images.columns or column is None:
            raise ValueError(f"image rows need image_id and png_path (columns: {list(images.columns)})")
        if images["image_id"].astype(str).duplicated().any():
            raise ValueError("image rows must have unique image_id values")
        self.images = images.reset_index(drop=True)
        self.paths = self.images[column].astype(str).tolist()
        self.image_ids = self.images["image_id"].tolist()
        self.height, self.width, self.keep_aspect = int(height), int(width), bool(keep_aspect)
        if isinstance(boxes, Mapping):
            grouped, self.n_dropped_nan = {str(k): np.asarray(v).reshape(-1, 4) for k, v in boxes.items()}, 0
        else:
            grouped, self.n_dropped_nan = group_boxes(boxes)
        empty = np.zeros((0, 4), dtype=np.float64)
        self.png_boxes = [grouped.get(str(i), empty) for i in self.image_ids]
        self.augment = augment is not None
        self.transform = build_augmentation(augment)
        self.seed, self.epoch = int(seed), 0

    @property
    def n_boxes(self) -> int:
        return int(sum(len(b) for b in self.png_boxes))

    @property
    def n_positive(self) -> int:
        return int(sum(len(b) > 0 for b in self.png_boxes))

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation draws of ``epoch`` (call before iterating; workers copy the dataset)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def frame(self, png: np.ndarray) -> InputFrame:
        return InputFrame(int(png.shape[0]), int(png.shape[1]), self.height, self.width, self.keep_aspect)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        from torchvision import tv_tensors

        path = self.paths[index]
        png = read_grey(path)
        frame = self.frame(png)
        sample = {
            "image": tv_tensors.Image(torch.from_numpy(frame.image(png))[None]),
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(frame.to_input(self.png_boxes[index]), dtype=torch.float32),
                format="XYXY",
                canvas_size=(self.height, self.width),
            ),
            "labels": torch.full((len(self.png_boxes[index]),), FOREGROUND, dtype=torch.int64),
        }
        if self.augment:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, self.epoch, index))
                sample = self.transform(sample)
        else:
            sample = self.transform(sample)
        image = normalise_image(sample["image"][0].numpy(), source=path)
        target = {
            "boxes": sample["boxes"].as_subclass(Tensor).reshape(-1, 4).float(),
            "labels": sample["labels"].as_subclass(Tensor).long(),
        }
        meta = {"index": index, "image_id": self.image_ids[index], "frame": frame}
        return torch.from_numpy(image), target, meta


def collate_detection(
    batch: Sequence[tuple[Tensor, dict[str, Tensor], dict[str, Any]]],
) -> tuple[list[Tensor], list[dict[str, Tensor]], list[dict[str, Any]]]:
    """Samples -> ``(images, targets, metas)`` lists, as torchvision's detection models take them."""
    images, targets, metas = zip(*batch, strict=True) if batch else ((), (), ())
    return list(images), list(targets), list(metas)
