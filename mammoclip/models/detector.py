"""RetinaNet on a Mammo-CLIP image encoder from torchvision's detection parts (docs/upstream.md#detection).

:func:`build_retinanet` returns a plain ``torchvision.models.detection.RetinaNet`` whose backbone is
:class:`EncoderPyramid`: the encoder's :meth:`~mammoclip.models.image_encoders.ImageEncoder.feature_stages`
(strides 8, 16, 32 of the *same* module and weights the classifiers and CLIP use) feeding
``torchvision.ops.FeaturePyramidNetwork`` with ``LastLevelP6P7`` (P6 from C5, P7 from ReLU(P6)), so P3-P7
sit at strides 8-128. Everything else is torchvision's: the anchor generator, the shared classification and
regression heads (4 x conv3x3 + ReLU, prior 0.01), anchor matching (IoU >= 0.5 foreground, < 0.4
background), the sigmoid focal loss, the box coder, per-level top-k, NMS and the per-image cap.

What is set here, from the run's settings (:class:`DetectorSettings`, e.g.
:class:`mammoclip.train.detect.DetectorConfig`) or as upstream:

* one foreground class (label 0; the sigmoid heads need no background class);
* anchors: one base size per level (``anchor_sizes``, upstream 32-512) times scales 2^0, 2^(1/3), 2^(2/3)
  and height/width ratios 0.5, 1, 2: 9 anchors per cell;
* focal loss ``alpha`` / ``gamma`` (``focal_alpha``, ``focal_gamma``): torchvision's head hard-codes
  0.25 / 2, so :class:`FocalClassificationHead` computes the same per-image loss (summed over anchors that
  are not ignored, divided by the number of foreground anchors, averaged over images) with settable values;
* box coding: deltas scaled by (10, 10, 5, 5), upstream's normalisation by std (0.1, 0.1, 0.2, 0.2), for
  both the loss and decoding; the regression loss (``box_loss``, :class:`BoxRegressionHead`) is smooth-L1
  on the coded deltas with beta 1/9 (upstream), L1 (torchvision's RetinaNet) or generalised IoU of the
  decoded boxes (torchvision's RetinaNet v2), all through torchvision's ``_box_loss``;
* heads ``fpn_channels`` wide (256 as RetinaNet), their four conv layers optionally followed by GroupNorm
  (``head_norm: group_norm``, torchvision's RetinaNet v2 head: far fewer steps to a working detector,
  which is what a CPU demo needs);
* head outputs cast to float32 (:class:`Float32Head`), so losses, decoding and NMS stay in float32 under
  autocast;
* post-processing: ``score_threshold`` (None: torchvision's 0.05; scores equal to the threshold are kept),
  NMS at IoU 0.5 (upstream's), at most ``max_detections`` per image.

Inputs arrive already resized to ``(input_height, input_width)`` and normalised like the classifiers'
(:mod:`mammoclip.data.detection_data`), so the model's internal ``GeneralizedRCNNTransform`` is replaced by
:class:`PassThroughTransform`: no resizing, no re-normalisation, only batching (zero padding to a multiple
of 32 at the bottom/right, which leaves boxes unchanged); an input of another size is an error.

``freeze=True``: every encoder parameter gets ``requires_grad=False`` and the encoder stays in eval mode
whatever ``train()`` is called with (BatchNorm statistics and stochastic depth are those of inference;
upstream's frozen backbone kept updating its BN statistics); the pyramid and heads train.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from mammoclip.models.image_encoders import ImageEncoder

__all__ = [
    "ANCHOR_RATIOS",
    "ANCHOR_SCALES",
    "BOX_CODER_WEIGHTS",
    "BOX_LOSSES",
    "HEAD_NORMS",
    "NMS_THRESHOLD",
    "NUM_CLASSES",
    "DetectorSettings",
    "EncoderPyramid",
    "BoxRegressionHead",
    "Float32Head",
    "FocalClassificationHead",
    "PassThroughTransform",
    "build_retinanet",
]

#: one foreground class (label 0)
NUM_CLASSES = 1
#: anchor scales per base size and height/width ratios (upstream's and RetinaNet's)
ANCHOR_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
#: box-delta weights (dx, dy, dw, dh): upstream divides by std (0.1, 0.1, 0.2, 0.2)
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: IoU of NMS (upstream's)
NMS_THRESHOLD = 0.5
#: torchvision's score threshold when a run gives none
DEFAULT_SCORE_THRESHOLD = 0.05
#: feature pyramid levels (P3-P7): one anchor base size each
PYRAMID_LEVELS = 5
#: normalisation after each head conv: none (RetinaNet, upstream) or GroupNorm (torchvision's RetinaNet v2)
HEAD_NORMS = ("none", "group_norm")
#: box-regression losses (``_box_loss`` names of torchvision)
BOX_LOSSES = ("smooth_l1", "l1", "giou")
#: smooth-L1 transition point (upstream's)
SMOOTH_L1_BETA = 1.0 / 9.0


class DetectorSettings(Protocol):
    """The fields :func:`build_retinanet` reads (``mammoclip.train.detect.DetectorConfig`` has them)."""

    input_height: int
    input_width: int
    anchor_sizes: Any  # a sequence of PYRAMID_LEVELS numbers
    fpn_channels: int
    head_norm: str
    box_loss: str
    focal_alpha: float
    focal_gamma: float
    score_threshold: float | None
    max_detections: int


class PassThroughTransform(GeneralizedRCNNTransform):
    """RetinaNet's input transform for inputs that are already resized and normalised: batching only.

    ``normalize`` and ``resize`` return their input unchanged (``resize`` checks the size is
    ``(height, width)``), so boxes and detections stay in input pixels; ``batch_images`` still pads to a
    multiple of ``size_divisible`` at the bottom/right.
    """

    def __init__(self, height: int, width: int, *, size_divisible: int = 32) -> None:
        height, width = int(height), int(width)
        super().__init__(
            min_size=min(height, width),
            max_size=max(height, width),
            image_mean=[0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0],
            size_divisible=size_divisible,
        )
        self.input_size = (height, width)

    def normalize(self, image: Tensor) -> Tensor:
        return image

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        if tuple(image.shape[-2:]) != self.input_size:
            raise ValueError(
                f"detector input of size {tuple(image.shape[-2:])}, expected {self.input_size} "
                "(images are resized by the dataset, not by the model)"
            )
        return image, target

    def __repr__(self) -> str:
        return f"PassThroughTransform(input_size={self.input_size}, size_divisible={self.size_divisible})"


class EncoderPyramid(nn.Module):
    """Backbone of the RetinaNet: ``encoder.feature_stages`` (C3, C4, C5) -> FPN + P6/P7.

    ``forward`` returns torchvision's ordered dict of ``out_channels``-channel maps ``p3`` .. ``p7``.
    ``freeze``: the encoder does not train (module docstring).
    """

    def __init__(self, encoder: ImageEncoder, *, out_channels: int = 256, freeze: bool = False) -> None:
        super().__init__()
        c3, c4, c5 = encoder.stage_channels
        self.encoder = encoder
        # LastLevelP6P7 computes P6 from C5 (as upstream) unless C5 already has out_channels channels
        self.fpn = FeaturePyramidNetwork(
            [c3, c4, c5], out_channels, extra_blocks=LastLevelP6P7(c5, out_channels)
        )
        self.out_channels = int(out_channels)
        self.freeze = bool(freeze)
        if self.freeze:
            for param in self.encoder.parameters():
                param.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderPyramid:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        if self.freeze:
            with torch.no_grad():
                stages = self.encoder.feature_stages(x)
        else:
            stages = self.encoder.feature_stages(x)
        # the pyramid names its outputs after its inputs: p3, p4, p5, then p6, p7
        return self.fpn(OrderedDict(zip(("p3", "p4", "p5"), stages, strict=True)))


class FocalClassificationHead(RetinaNetClassificationHead):
    """torchvision's RetinaNet classification head with the focal loss's ``alpha`` and ``gamma`` settable.

    Loss per image: sigmoid focal loss summed over every anchor that is not ignored (matched IoU between the
    background and foreground thresholds), one-hot targets for foreground anchors, divided by
    max(1, number of foreground anchors); the batch loss is the mean over images.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        alpha: float,
        gamma: float,
        prior_probability: float = 0.01,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__(
            in_channels, num_anchors, num_classes, prior_probability=prior_probability, norm_layer=norm_layer
        )
        self.focal_alpha = float(alpha)
        self.focal_gamma = float(gamma)

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], matched_idxs: list[Tensor]
    ) -> Tensor:
        per_image = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs, strict=True):
            foreground = matched >= 0
            wanted = torch.zeros_like(logits)
            wanted[foreground, target["labels"][matched[foreground]]] = 1.0
            counted = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(
                logits[counted],
                wanted[counted],
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                reduction="sum",
            )
            per_image.append(loss / max(1, int(foreground.sum())))
        return torch.stack(per_image).sum() / len(targets)

    def extra_repr(self) -> str:
        return f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}"


class BoxRegressionHead(RetinaNetRegressionHead):
    """torchvision's RetinaNet regression head with the loss chosen by name (:data:`BOX_LOSSES`).

    Per image: the loss summed over foreground anchors (each against its matched box), divided by
    max(1, number of foreground anchors); the batch loss is the mean over images, as torchvision's. Only
    ``compute_loss`` is replaced, to pass smooth-L1's ``beta`` (torchvision's head always uses 1.0).
    """

    def __init__(
        self, in_channels: int, num_anchors: int, *, loss: str, norm_layer: Callable[..., nn.Module] | None
    ) -> None:
        if loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {loss!r}")
        super().__init__(in_channels, num_anchors, norm_layer=norm_layer)
        self._loss_type = loss

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        per_image = []
        for target, deltas, anchors_per_image, matched in zip(
            targets, head_outputs["bbox_regression"], anchors, matched_idxs, strict=True
        ):
            foreground = torch.where(matched >= 0)[0]
            loss = det_utils._box_loss(
                self._loss_type,
                self.box_coder,
                anchors_per_image[foreground],
                target["boxes"][matched[foreground]],
                deltas[foreground],
                cnf={"beta": SMOOTH_L1_BETA},
            )
            per_image.append(loss / max(1, foreground.numel()))
        return torch.stack(per_image).sum() / max(1, len(targets))

    def extra_repr(self) -> str:
        return f"box_loss={self._loss_type}"


def head_norm_layer(head_norm: str, channels: int) -> Callable[..., nn.Module] | None:
    """None, or GroupNorm with 32 groups (channels / 4 groups when that is fewer) for ``group_norm``."""
    if head_norm not in HEAD_NORMS:
        raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
    if head_norm == "none":
        return None
    groups = min(32, max(1, channels // 4))
    if channels % groups:
        raise ValueError(f"fpn_channels {channels} is not divisible into {groups} GroupNorm groups")
    return functools.partial(nn.GroupNorm, groups)


class Float32Head(RetinaNetHead):
    """torchvision's RetinaNet head whose outputs are cast to float32, so that under bf16/fp16 autocast the
    losses, box decoding (anchors take the deltas' dtype) and NMS still run in float32: bf16 has a spacing
    of 2-4 px at 512 px coordinates."""

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        return {k: v.float() for k, v in super().forward(x).items()}


def anchor_generator(anchor_sizes) -> AnchorGenerator:
    """torchvision's generator: per level ``size * scale`` (:data:`ANCHOR_SCALES`), :data:`ANCHOR_RATIOS`."""
    sizes = [float(s) for s in anchor_sizes]
    if len(sizes) != PYRAMID_LEVELS or any(not (math.isfinite(s) and s > 0) for s in sizes):
        raise ValueError(
            f"anchor_sizes must be {PYRAMID_LEVELS} positive sizes (P3-P7), got {anchor_sizes!r}"
        )
    return AnchorGenerator(
        sizes=tuple(tuple(s * scale for scale in ANCHOR_SCALES) for s in sizes),
        aspect_ratios=(ANCHOR_RATIOS,) * PYRAMID_LEVELS,
    )


def _strict_threshold(threshold: float) -> float:
    """The float32 below ``threshold``: torchvision keeps ``score > t``; we keep ``score >= threshold``."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def build_retinanet(
    encoder: ImageEncoder,
    *,
    settings: DetectorSettings,
    freeze: bool,
    nms_threshold: float = NMS_THRESHOLD,
    topk_candidates: int = 1000,
) -> RetinaNet:
    """A one-class torchvision RetinaNet on ``encoder``'s feature stages (module docstring).

    ``settings``: input size, anchor sizes, pyramid/head width and head normalisation, box loss, focal
    alpha/gamma, score threshold and detections per image. ``freeze``: the encoder neither trains nor
    leaves eval mode. ``topk_candidates``: best anchors per level kept before NMS.
    """
    if not 0.0 <= float(settings.focal_alpha) <= 1.0 and float(settings.focal_alpha) != -1:
        raise ValueError(f"focal_alpha must be in [0, 1] (or -1: none), got {settings.focal_alpha!r}")
    if float(settings.focal_gamma) < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {settings.focal_gamma!r}")
    if int(settings.max_detections) < 1:
        raise ValueError(f"max_detections must be >= 1, got {settings.max_detections!r}")
    threshold = (
        DEFAULT_SCORE_THRESHOLD if settings.score_threshold is None else float(settings.score_threshold)
    )
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"score_threshold must be in [0, 1), got {settings.score_threshold!r}")

    fpn_channels = int(settings.fpn_channels)
    norm_layer = head_norm_layer(settings.head_norm, fpn_channels)
    backbone = EncoderPyramid(encoder, out_channels=fpn_channels, freeze=freeze)
    anchors = anchor_generator(settings.anchor_sizes)
    num_anchors = anchors.num_anchors_per_location()[0]
    head = Float32Head(fpn_channels, num_anchors, NUM_CLASSES)
    head.classification_head = FocalClassificationHead(
        fpn_channels,
        num_anchors,
        NUM_CLASSES,
        alpha=settings.focal_alpha,
        gamma=settings.focal_gamma,
        norm_layer=norm_layer,
    )
    head.regression_head = BoxRegressionHead(
        fpn_channels, num_anchors, loss=settings.box_loss, norm_layer=norm_layer
    )
    coder = det_utils.BoxCoder(weights=BOX_CODER_WEIGHTS)
    head.regression_head.box_coder = coder
    model = RetinaNet(
        backbone,
        num_classes=NUM_CLASSES,
        anchor_generator=anchors,
        head=head,
        score_thresh=_strict_threshold(threshold),
        nms_thresh=float(nms_threshold),
        detections_per_img=int(settings.max_detections),
        topk_candidates=int(topk_candidates),
    )
    model.box_coder = coder
    model.transform = PassThroughTransform(settings.input_height, settings.input_width)
    return model
