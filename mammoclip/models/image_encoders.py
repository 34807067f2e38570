"""Image encoders: the EfficientNet-B5/B2 inside the released Mammo-CLIP checkpoints, and any timm model.

Every encoder is an :class:`ImageEncoder`: ``forward_features`` maps ``[B, 3, H, W]`` to the feature map
``[B, out_dim, h, w]``; ``forward`` applies global average pooling and dropout (active in train mode only)
and returns ``[B, out_dim]``. :func:`build_image_encoder` builds one by name and never downloads anything.

Legacy encoders (:data:`LEGACY_ENCODERS`)
-----------------------------------------
The released checkpoints hold a lukemelas-style EfficientNet (docs/upstream.md#models). To load
them strictly and to keep our checkpoints readable by upstream's tools, the module tree of
:class:`LegacyEfficientNet` *is* that layout: ``_conv_stem``, ``_bn0``, ``_blocks.{i}.{_expand_conv, _bn0,
_depthwise_conv, _bn1, _se_reduce, _se_expand, _project_conv, _bn2}``, ``_conv_head``, ``_bn1`` (852 keys
B5, 506 B2, no ``_fc``), so ``state_dict()``, ``named_parameters()`` and ``load_state_dict()`` all use those
names with no key rewriting.

The network is written here by hand (about 100 lines) rather than derived from timm's EfficientNet. timm's
module tree differs from the checkpoint's in ways that renaming alone does not hide: blocks are nested per
stage (``blocks.{stage}.{j}`` against a flat ``_blocks.{i}``), the squeeze-excitation convs sit one level
down (``se.conv_reduce``), BatchNorm and activation are fused in ``BatchNormAct2d``, and the same name means
different layers in the two block types (``bn1`` is the expansion BN of an inverted-residual block but the
depthwise BN of a depthwise-separable one). Matching the checkpoint would need private state-dict hooks
that rename keys on save and load, and then ``named_parameters()``, ``get_parameter()``, optimiser
parameter names and strict-load error messages would disagree with the checkpoint; every conv would also
have to be swapped for a static-padding one. The hand-written network avoids all of that. It is checked
against two independent implementations in ``tests/test_image_encoders.py``: outputs against
``efficientnet-pytorch`` (same weights, max abs difference below 1e-5, also at 1520x912) and parameter
shapes against timm's ``tf_efficientnet_b5``/``tf_efficientnet_b2``.

Architecture: compound scaling of the B0 stages (width, depth, nominal resolution, dropout) = (1.1, 1.2,
260, 0.3) for B2 and (1.6, 2.2, 456, 0.4) for B5; BatchNorm eps 1e-3, momentum 0.01; swish (SiLU);
squeeze-excitation with bias, reduced to a quarter of the block *input* channels; drop-connect in training
with rate 0.2 * block index / number of blocks; dropout before the output. Every convolution uses TF
"same" padding computed once from the nominal resolution (:class:`StaticSamePadConv2d`), not from the
real input, exactly as in the released models: at 1520x912 a dynamic "same" padding would differ at B5
block 13 and B2 blocks 5 and 8, and the embeddings would no longer match.

Initialisation is random (logged at INFO). The upstream code downloads lukemelas' ImageNet weights before a
checkpoint overwrites them; we never download. With ``pretrained=True`` the lukemelas ImageNet file
(``efficientnet-b5-b6417697.pth`` / ``efficientnet-b2-8bb594d6.pth``, the upstream pre-training
initialisation) is used when it is already on disk: ``cache_dir`` (the file itself or a folder holding it,
also under ``checkpoints/``) or the torch hub cache (``torch.hub.get_dir()/checkpoints``).

Feature stages (detection)
--------------------------
:meth:`ImageEncoder.feature_stages` returns three feature maps at strides 8, 16 and 32 of the input, with
:attr:`ImageEncoder.stage_channels` channels, for a feature pyramid (docs/upstream.md#detection). They come
from the same modules and weights as ``forward_features`` (no second copy of the network), and the stride-32
map *is* the ``forward_features`` output: legacy EfficientNets tap the ends of the B0 stages 3 and 5 (stride
8 and 16: 64 and 176 channels for B5, 48 and 120 for B2) and return the head (2048 / 1408); timm encoders
use ``forward_intermediates`` at the last ``feature_info`` entries of reduction 8 and 16, plus the final
feature map (models without those reductions, e.g. ViTs, are refused).

timm encoders (any other name)
------------------------------
``timm.create_model(name, num_classes=0, global_pool="")`` plus our pooling; ``out_dim`` is
``model.num_features``. With ``pretrained=True`` weights come only from local files: ``cache_dir`` (a
weight file, a folder holding ``model.safetensors``/``pytorch_model.bin`` or the checkpoint named by the
model's URL, or a Hugging Face cache folder) and the default Hugging Face and torch hub caches. When none
holds them the encoder keeps its random initialisation and a WARNING lists where we looked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Names used by upstream configs (``model.image_encoder.name``) for the released encoders -> variant.
#: ``tf_efficientnetv2-detect`` is EfficientNet-B2 despite its name.
LEGACY_ENCODERS: dict[str, str] = {"tf_efficientnet_b5_ns-detect": "b5", "tf_efficientnetv2-detect": "b2"}

#: variant -> (width multiplier, depth multiplier, nominal resolution, output dropout)
_LEGACY_SCALING: dict[str, tuple[float, float, int, float]] = {
    "b2": (1.1, 1.2, 260, 0.3),
    "b5": (1.6, 2.2, 456, 0.4),
}
#: EfficientNet-B0 stages: (repeats, kernel, first stride, expansion ratio, input channels, output channels)
_B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS, _HEAD_CHANNELS = 32, 1280
_BN_EPS, _BN_MOMENTUM = 1e-3, 0.01  # PyTorch convention (TF decay 0.99)
_SE_RATIO = 0.25
_DROP_CONNECT = 0.2
#: 0-based B0 stages whose last block gives the stride-8 and stride-16 maps of feature_stages
_STRIDE8_STAGE, _STRIDE16_STAGE = 2, 4
#: lukemelas ImageNet weights that upstream downloads as initialisation (only ever read from local disk)
_LEGACY_IMAGENET_FILES = {"b5": "efficientnet-b5-b6417697.pth", "b2": "efficientnet-b2-8bb594d6.pth"}
#: variant -> (stem channels, number of blocks, head channels): the signature used by infer_legacy_variant
_LEGACY_SIGNATURES = {"b5": (48, 39, 2048), "b2": (32, 23, 1408)}


class ImageEncoder(nn.Module):
    """Base of all image encoders: feature map -> global average pooling -> dropout (train mode only)."""

    out_dim: int

    def __init__(self, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_dim = int(out_dim)
        self._dropout = nn.Dropout(dropout)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> feature map ``[B, out_dim, h, w]`` before pooling."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> pooled features ``[B, out_dim]``."""
        pooled = F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1)
        return self._dropout(pooled)

    @property
    def stage_channels(self) -> tuple[int, int, int]:
        """Channels of the three :meth:`feature_stages` maps (strides 8, 16, 32)."""
        raise NotImplementedError(f"{type(self).__name__} has no feature stages")

    def feature_stages(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> feature maps at strides 8, 16 and 32 (in that order), with
        :attr:`stage_channels` channels; the last one is the ``forward_features`` map."""
        raise NotImplementedError(f"{type(self).__name__} has no feature stages")


# --------------------------------------------------------------------------------------------------------
# Legacy EfficientNet (released Mammo-CLIP checkpoints)
# --------------------------------------------------------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" pad ``(before, after)`` of one dimension: output ``ceil(size/stride)``, odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class StaticSamePadConv2d(nn.Conv2d):
    """Conv2d with TF "same" padding fixed at construction from ``image_size``, whatever the real input.

    ``static_padding`` is ``(left, right, top, bottom)``. Symmetric pads use the convolution's own zero
    padding; asymmetric ones (one more pixel after) are applied with ``F.pad``. Parameters are those of
    ``nn.Conv2d`` (``weight``, ``bias``), so state-dict keys are unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        image_size: tuple[int, int],
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        top, bottom = same_padding(image_size[0], kernel_size, stride)
        left, right = same_padding(image_size[1], kernel_size, stride)
        symmetric = top == bottom and left == right
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(top, left) if symmetric else 0,
            groups=groups,
            bias=bias,
        )
        self.image_size = tuple(image_size)
        self.static_padding = (left, right, top, bottom)
        self._explicit_pad = None if symmetric else self.static_padding

    def forward(self, x: Tensor) -> Tensor:
        if self._explicit_pad is not None:
            x = F.pad(x, self._explicit_pad)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, static_padding={self.static_padding}, image_size={self.image_size}"


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width``, round to a multiple of ``divisor``, never below 90 % of the target."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _drop_connect(x: Tensor, rate: float) -> Tensor:
    """Drop the whole residual branch of each sample with probability ``rate`` (stochastic depth)."""
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: [1x1 expand] -> depthwise kxk -> squeeze-excitation -> 1x1 project."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        *,
        image_size: tuple[int, int],
        drop_connect_rate: float,
        norm: Any,
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = norm(mid)
        self._depthwise_conv = StaticSamePadConv2d(
            mid, mid, kernel_size, stride, image_size=image_size, groups=mid
        )
        self._bn1 = norm(mid)
        squeezed = max(1, int(in_channels * _SE_RATIO))
        self._se_reduce = nn.Conv2d(mid, squeezed, 1)
        self._se_expand = nn.Conv2d(squeezed, mid, 1)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = norm(out_channels)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        h = F.silu(self._bn1(self._depthwise_conv(h)))
        gate = self._se_expand(F.silu(self._se_reduce(F.adaptive_avg_pool2d(h, 1))))
        h = self._bn2(self._project_conv(torch.sigmoid(gate) * h))
        if not self.has_residual:
            return h
        if self.training and self.drop_connect_rate > 0:
            h = _drop_connect(h, self.drop_connect_rate)
        return h + x


class LegacyEfficientNet(ImageEncoder):
    """EfficientNet-B5 / B2 exactly as inside the released Mammo-CLIP checkpoints (lukemelas layer names)."""

    def __init__(self, variant: str) -> None:
        if variant not in _LEGACY_SCALING:
            raise ValueError(
                f"unknown legacy EfficientNet variant {variant!r}; expected one of {sorted(_LEGACY_SCALING)}"
            )
        width, depth, resolution, dropout = _LEGACY_SCALING[variant]
        stem, head = _round_filters(_STEM_CHANNELS, width), _round_filters(_HEAD_CHANNELS, width)
        super().__init__(out_dim=head, dropout=dropout)
        self.variant = variant
        self.nominal_resolution = resolution
        norm = partial(nn.BatchNorm2d, eps=_BN_EPS, momentum=_BN_MOMENTUM)

        size = (resolution, resolution)  # spatial size at each layer for the nominal input: fixes the pads
        self._conv_stem = StaticSamePadConv2d(3, stem, 3, 2, image_size=size)
        self._bn0 = norm(stem)
        size = (-(-size[0] // 2), -(-size[1] // 2))

        layout = []  # (in, out, kernel, stride, expansion) per block
        stage_ends = []  # index of the last block of each B0 stage
        for repeats, kernel, stride, expand, c_in, c_out in _B0_STAGES:
            c_in, c_out = _round_filters(c_in, width), _round_filters(c_out, width)
            for j in range(math.ceil(depth * repeats)):
                layout.append((c_in if j == 0 else c_out, c_out, kernel, stride if j == 0 else 1, expand))
            stage_ends.append(len(layout) - 1)
        # feature_stages taps: the last blocks at strides 8 and 16 (B0 stages 3 and 5, 1-based)
        self._stage_taps = (stage_ends[_STRIDE8_STAGE], stage_ends[_STRIDE16_STAGE])
        self._stage_channels = (layout[self._stage_taps[0]][1], layout[self._stage_taps[1]][1], head)
        blocks = []
        for i, (c_in, c_out, kernel, stride, expand) in enumerate(layout):
            blocks.append(
                MBConvBlock(
                    c_in,
                    c_out,
                    kernel,
                    stride,
                    expand,
                    image_size=size,
                    drop_connect_rate=_DROP_CONNECT * i / len(layout),
                    norm=norm,
                )
            )
            size = (-(-size[0] // stride), -(-size[1] // stride))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(layout[-1][1], head, 1, bias=False)
        self._bn1 = norm(head)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.silu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.silu(self._bn1(self._conv_head(x)))

    @property
    def stage_channels(self) -> tuple[int, int, int]:
        return self._stage_channels

    def feature_stages(self, x: Tensor) -> list[Tensor]:
        stages = []
        x = F.silu(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._stage_taps:
                stages.append(x)
        stages.append(F.silu(self._bn1(self._conv_head(x))))
        return stages


def infer_legacy_variant(state_dict: Mapping[str, Tensor]) -> str | None:
    """``"b5"`` / ``"b2"`` if ``state_dict`` holds a legacy (lukemelas-named) encoder, else ``None``.

    Decided from ``_conv_stem.weight`` ([48,3,3,3] B5, [32,3,3,3] B2), the ``_conv_head.weight`` output
    channels (2048 / 1408) and the number of ``_blocks`` (39 / 23). Keys may carry a common prefix ending
    in ``.`` (e.g. ``image_encoder.`` in a whole Mammo-CLIP state dict).
    """
    suffix = "_conv_stem.weight"
    for key, stem in state_dict.items():
        if not (isinstance(key, str) and key.endswith(suffix)):
            continue
        prefix = key[: -len(suffix)]
        if prefix and not prefix.endswith("."):
            continue
        head = state_dict.get(prefix + "_conv_head.weight")
        if head is None:
            continue
        block_prefix = prefix + "_blocks."
        n_blocks = len(
            {k[len(block_prefix) :].split(".", 1)[0] for k in state_dict if k.startswith(block_prefix)}
        )
        for variant, (stem_ch, blocks, head_ch) in _LEGACY_SIGNATURES.items():
            if tuple(stem.shape) == (stem_ch, 3, 3, 3) and head.shape[0] == head_ch and n_blocks == blocks:
                return variant
    return None


def _find_legacy_imagenet_file(variant: str, cache_dir: str | Path | None) -> tuple[Path | None, list[str]]:
    filename = _LEGACY_IMAGENET_FILES[variant]
    candidates = []
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
        if root.is_file():
            return root, [str(root)]
        candidates += [root / filename, root / "checkpoints" / filename]
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    for path in candidates:
        if path.is_file():
            return path, [str(p) for p in candidates]
    return None, [str(p) for p in candidates]


def _build_legacy(name: str, *, pretrained: bool, cache_dir: str | Path | None) -> LegacyEfficientNet:
    variant = LEGACY_ENCODERS[name]
    encoder = LegacyEfficientNet(variant)
    if not pretrained:
        log.info("%s (EfficientNet-%s): random initialisation", name, variant.upper())
        return encoder
    path, looked = _find_legacy_imagenet_file(variant, cache_dir)
    if path is None:
        log.info(
            "%s (EfficientNet-%s): random initialisation (ImageNet weights %s not on disk, looked in %s; "
            "never downloaded — load a Mammo-CLIP checkpoint for trained weights)",
            name,
            variant.upper(),
            _LEGACY_IMAGENET_FILES[variant],
            ", ".join(looked),
        )
        return encoder
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a plain state dict of lukemelas EfficientNet weights")
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not hold EfficientNet-{variant.upper()} weights: {err}") from err
    log.info("%s (EfficientNet-%s): ImageNet initialisation from %s", name, variant.upper(), path)
    return encoder


# --------------------------------------------------------------------------------------------------------
# timm encoders
# --------------------------------------------------------------------------------------------------------

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _find_timm_weights(cfg: Mapping[str, Any], cache_dir: str | Path | None) -> tuple[Path | None, list[str]]:
    """Local weight file for a timm ``pretrained_cfg`` and the places searched (never uses the network)."""
    from huggingface_hub import constants, try_to_load_from_cache

    hub_id = cfg.get("hf_hub_id") or None
    repo_id, _, revision = (hub_id or "").partition("@")
    hf_files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HF_WEIGHT_FILES
    url_file = Path(cfg["url"]).name if cfg.get("url") else None
    looked: list[str] = []

    def in_hf_cache(root: Path | str) -> Path | None:
        if not repo_id:
            return None
        looked.append(f"Hugging Face cache {root} ({repo_id})")
        for filename in hf_files:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=root, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None

    def first_file(paths: list[Path]) -> Path | None:
        looked.extend(str(p) for p in paths)
        return next((p for p in paths if p.is_file()), None)

    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
        if root.is_file():
            return root, [str(root)]
        names = [*hf_files, *([url_file] if url_file else [])]
        found = first_file(
            [root / n for n in names] + ([root / "checkpoints" / url_file] if url_file else [])
        )
        found = found or in_hf_cache(root)
        if found:
            return found, looked
    found = in_hf_cache(constants.HF_HUB_CACHE)
    if found is None and url_file:
        found = first_file([Path(torch.hub.get_dir()) / "checkpoints" / url_file])
    return found, looked


class TimmImageEncoder(ImageEncoder):
    """A timm model without classifier or pooling, followed by our global average pooling and dropout."""

    def __init__(self, name: str, *, pretrained: bool = True, cache_dir: str | Path | None = None) -> None:
        import timm

        kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": ""}
        model: Any  # timm's models carry attributes (pretrained_cfg, num_features) nn.Module does not declare
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except RuntimeError as err:  # e.g. an unknown pretrained tag
            raise ValueError(f"timm cannot build {name!r}: {err}") from err
        if not pretrained:
            log.info("%s: random initialisation (pretrained=False)", name)
        else:
            path, looked = _find_timm_weights(model.pretrained_cfg, cache_dir)
            if path is None:
                log.warning(
                    "%s: no local pretrained weights, using random initialisation (looked in: %s; weights "
                    "are never downloaded — put them in one of these places or pass cache_dir)",
                    name,
                    "; ".join(looked) or "nowhere: the model has no pretrained source",
                )
            else:
                overlay = {"file": str(path), "source": "file"}
                model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
                log.info("%s: pretrained weights from %s", name, path)
        super().__init__(out_dim=model.num_features, dropout=float(getattr(model, "drop_rate", 0.0) or 0.0))
        self.name = name
        self.model = model

    def forward_features(self, x: Tensor) -> Tensor:
        return self._feature_map(self.model.forward_features(x))

    def _feature_map(self, features: Tensor) -> Tensor:
        """The model's final features as ``[B, out_dim, h, w]`` (NHWC outputs permuted; else an error)."""
        if features.ndim == 4 and str(getattr(self.model, "output_fmt", "NCHW")) == "NHWC":
            features = features.permute(0, 3, 1, 2)
        if features.ndim != 4 or features.shape[1] != self.out_dim:
            raise RuntimeError(
                f"timm model {self.name!r} returned features of shape {tuple(features.shape)}, not a "
                f"[B, {self.out_dim}, h, w] feature map; only convolutional timm models are supported"
            )
        return features

    def _stage_indices(self) -> tuple[int, int]:
        """``feature_info`` indices of the last entries at reductions 8 and 16 (checked: final is 32)."""
        info = list(getattr(self.model, "feature_info", None) or [])
        reductions = [int(entry.get("reduction", 0)) for entry in info]
        i8 = max((i for i, r in enumerate(reductions) if r == 8), default=-1)
        i16 = max((i for i, r in enumerate(reductions) if r == 16), default=-1)
        if i8 < 0 or i16 < 0 or reductions[-1] != 32 or not hasattr(self.model, "forward_intermediates"):
            raise ValueError(
                f"timm model {self.name!r} has no feature stages at strides 8, 16 and 32 "
                f"(feature_info reductions {reductions}); detection needs a convolutional pyramid"
            )
        return i8, i16

    @property
    def stage_channels(self) -> tuple[int, int, int]:
        i8, i16 = self._stage_indices()
        info = self.model.feature_info
        return int(info[i8]["num_chs"]), int(info[i16]["num_chs"]), self.out_dim

    def feature_stages(self, x: Tensor) -> list[Tensor]:
        final, intermediates = self.model.forward_intermediates(
            x, indices=list(self._stage_indices()), output_fmt="NCHW"
        )
        return [*intermediates, self._feature_map(final)]


# --------------------------------------------------------------------------------------------------------


def build_image_encoder(name: str, *, pretrained: bool = True, cache_dir: str | None = None) -> ImageEncoder:
    """Build an image encoder by name: a legacy Mammo-CLIP EfficientNet or a timm model. Never downloads.

    ``pretrained``: use ImageNet weights when they are already on disk (see the module docstring);
    otherwise the encoder is randomly initialised (logged). ``cache_dir``: a weight file or a folder to
    search before the default Hugging Face and torch hub caches.
    """
    if name in LEGACY_ENCODERS:
        return _build_legacy(name, pretrained=pretrained, cache_dir=cache_dir)
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"unknown image encoder {name!r}: use a legacy Mammo-CLIP encoder ({', '.join(LEGACY_ENCODERS)}) "
            "or a timm model name (see timm.list_models(), e.g. timm.list_models('efficientnet*'))"
        )
    return TimmImageEncoder(name, pretrained=pretrained, cache_dir=cache_dir)
