"""The CLIP model: image encoder + text encoder, each with a projection head to a shared embedding space.

Module names and registration order follow upstream's ``BreastClip`` (docs/upstream.md#models),
so ``MammoClip.state_dict()`` has the released checkpoints' key layout::

    image_encoder.<encoder keys>               (lukemelas names for the legacy B5/B2 encoders)
    text_encoder.text_encoder.<BERT keys>
    image_projection.projection.{weight,bias}  (+ fc.*, layer_norm.* for the MLP head)
    text_projection.projection.{weight,bias}
    logit_scale                                (scalar, initialised to ln(1/0.07))

``MammoClip.architecture`` is a plain-data description of the model (encoder name, BERT config, pooling,
projection) from which :func:`clip_from_architecture` rebuilds an identical, randomly initialised model;
the checkpoint writer stores it.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from mammoclip.models.text_encoders import POOLINGS, TextEncoder, load_text_backbone, load_tokenizer

TEMPERATURE = 0.07
LOGIT_SCALE_INIT = math.log(1 / TEMPERATURE)
LOGIT_SCALE_MAX = math.log(100.0)
PROJECTIONS = ("linear", "mlp")


class LinearProjection(nn.Module):
    """A single ``nn.Linear`` stored as ``.projection`` (upstream's "linear" head; its dropout is unused)."""

    def __init__(self, in_dim: int, out_dim: int = 512) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class MLPProjection(nn.Module):
    """Upstream's "mlp" head: ``LayerNorm(p + Dropout(fc(GELU(p))))`` with ``p = projection(x)``.

    Keys: ``projection.*``, ``fc.*``, ``layer_norm.*``.
    """

    def __init__(self, in_dim: int, out_dim: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        x = self.dropout(self.fc(self.gelu(projected)))
        return self.layer_norm(x + projected)


def build_projection(kind: str, in_dim: int, out_dim: int = 512, dropout: float = 0.1) -> nn.Module:
    if kind == "linear":
        return LinearProjection(in_dim, out_dim)
    if kind == "mlp":
        return MLPProjection(in_dim, out_dim, dropout)
    raise ValueError(f"unknown projection head {kind!r}; expected one of {PROJECTIONS}")


class MammoClip(nn.Module):
    """CLIP-style model with the released checkpoints' module layout (see the module docstring).

    ``encode_*`` give the raw pooled encoder features (2048-d B5 / 1408-d B2 images, 768-d BERT text);
    ``embed_*`` give L2-normalised projected embeddings (512-d). ``architecture`` is kept as plain data.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: TextEncoder,
        image_projection: nn.Module,
        text_projection: nn.Module,
        *,
        logit_scale_init: float = LOGIT_SCALE_INIT,
        architecture: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = image_projection
        self.text_projection = text_projection
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.architecture: dict[str, Any] = copy.deepcopy(architecture) if architecture else {}

    # -- images -----------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image-encoder features ``[B, image_dim]`` (before projection)."""
        return self.image_encoder(images)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected image embeddings ``[B, projection_dim]``."""
        return F.normalize(self.image_projection(self.encode_image(images)), dim=-1)

    # -- text -------------------------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled text-encoder features ``[B, text_dim]`` (eos / bos / mean pooling, before projection)."""
        return self.text_encoder(input_ids, attention_mask)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected text embeddings ``[B, projection_dim]``."""
        return F.normalize(self.text_projection(self.encode_text(input_ids, attention_mask)), dim=-1)

    # -- training ---------------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        input_ids2: torch.Tensor | None = None,
        attention_mask2: torch.Tensor | None = None,
        images2: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Normalised embeddings of a batch, as upstream's training forward.

        Returns ``image_embeddings``, ``text_embeddings``, ``text_embeddings2`` (second text, e.g. the
        back-translated report, or ``None``), ``image_view_embeddings`` (second view, or ``None``),
        ``labels`` (``arange(B)``) and ``logit_scale`` (already exponentiated).
        """
        if (input_ids2 is None) != (attention_mask2 is None):
            raise ValueError("input_ids2 and attention_mask2 go together")
        out: dict[str, torch.Tensor | None] = {
            "image_embeddings": self.embed_image(images),
            "text_embeddings": self.embed_text(input_ids, attention_mask),
            "text_embeddings2": None,
            "image_view_embeddings": None,
        }
        if input_ids2 is not None and attention_mask2 is not None:  # both or neither (checked above)
            out["text_embeddings2"] = self.embed_text(input_ids2, attention_mask2)
        if images2 is not None:
            out["image_view_embeddings"] = self.embed_image(images2)
        out["labels"] = torch.arange(images.shape[0], device=images.device)
        out["logit_scale"] = self.logit_scale.exp()
        return out

    def similarity(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Logits ``exp(logit_scale) * image @ text.T`` (``[N_images, N_texts]``)."""
        return self.logit_scale.exp() * image_embeddings @ text_embeddings.t()

    @torch.no_grad()
    def clamp_logit_scale(self, max: float = LOGIT_SCALE_MAX) -> None:
        """Clamp ``logit_scale`` to at most ``max`` (ln 100, as OpenAI CLIP) in place.

        Upstream never clamps; the trainer calls this after each optimiser step unless in legacy mode.
        """
        self.logit_scale.clamp_(max=max)


# ------------------------------------------------------------------------------------------------------------
# Construction
# ------------------------------------------------------------------------------------------------------------


def _image_encoder_by_name(name: str, *, pretrained: bool, cache_dir) -> nn.Module:
    from mammoclip.models.image_encoders import build_image_encoder

    return build_image_encoder(name, pretrained=pretrained, cache_dir=cache_dir)


def _plain_bert_config(config) -> dict[str, Any]:
    """The BERT config as JSON-like plain data (what ``config.json`` holds)."""
    import json

    return json.loads(config.to_json_string(use_diff=False))


def make_architecture(
    *,
    image_encoder: str | None,
    image_dim: int,
    bert_config: dict[str, Any],
    text_source: str | None,
    pooling: str,
    projection: str,
    projection_dim: int,
    projection_dropout: float = 0.1,
    add_pooling_layer: bool = True,
) -> dict[str, Any]:
    """The plain-data model description stored in checkpoints and read by :func:`clip_from_architecture`."""
    return {
        "image_encoder": {"name": image_encoder, "out_dim": int(image_dim)},
        "text_encoder": {
            "source": text_source,
            "pooling": pooling,
            "bert_config": bert_config,
            "add_pooling_layer": bool(add_pooling_layer),
        },
        "projection": {"type": projection, "dim": int(projection_dim), "dropout": float(projection_dropout)},
    }


def _assemble(
    image_encoder: nn.Module,
    text_model: nn.Module,
    *,
    image_name: str | None,
    text_source: str | None,
    projection: str,
    projection_dim: int,
    projection_dropout: float,
    pooling: str,
) -> MammoClip:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown text pooling {pooling!r}; expected one of {POOLINGS}")
    encoder_dim: Any = image_encoder.out_dim  # every image encoder module declares out_dim
    image_dim = int(encoder_dim)
    text_encoder = TextEncoder(text_model, pooling=pooling)
    architecture = make_architecture(
        image_encoder=image_name,
        image_dim=image_dim,
        bert_config=_plain_bert_config(text_model.config),
        text_source=text_source,
        pooling=pooling,
        projection=projection,
        projection_dim=projection_dim,
        projection_dropout=projection_dropout,
        add_pooling_layer=getattr(text_model, "pooler", None) is not None,
    )
    return MammoClip(
        image_encoder,
        text_encoder,
        build_projection(projection, image_dim, projection_dim, projection_dropout),
        build_projection(projection, text_encoder.out_dim, projection_dim, projection_dropout),
        architecture=architecture,
    )


def build_clip(
    *,
    image_encoder: str | nn.Module,
    text_backbone: str | nn.Module,
    projection: str = "linear",
    projection_dim: int = 512,
    pooling: str = "eos",
    pretrained_image: bool = True,
    projection_dropout: float = 0.1,
    tokenizer: Any = None,
    cache_dir: str | None = None,
) -> tuple[MammoClip, Any]:
    """A new CLIP model for training: ``(model, tokenizer)``.

    ``image_encoder``: a name for :func:`~mammoclip.models.image_encoders.build_image_encoder` (legacy
    ``tf_efficientnet_b5_ns-detect`` / ``tf_efficientnetv2-detect`` or a timm name; ``pretrained_image``
    uses local ImageNet weights when present) or a ready module with ``out_dim``. ``text_backbone``: a model
    directory or cached Hugging Face id, loaded offline with its tokenizer, or a ready ``PreTrainedModel``
    (then ``tokenizer`` is used, else loaded from the model's ``name_or_path`` when that is a directory,
    else ``None``). Projections and ``logit_scale`` are freshly initialised.
    """
    if isinstance(image_encoder, str):
        image_name: str | None = image_encoder
        image_module = _image_encoder_by_name(image_encoder, pretrained=pretrained_image, cache_dir=cache_dir)
    else:
        image_name = getattr(image_encoder, "name", None)
        image_module = image_encoder
    text_source: str | None
    if isinstance(text_backbone, str | bytes) or hasattr(text_backbone, "__fspath__"):
        text_source = str(text_backbone)
        text_model, loaded_tokenizer = load_text_backbone(
            cast("str | os.PathLike", text_backbone), cache_dir=cache_dir
        )
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    else:
        text_model = text_backbone
        text_source = getattr(text_model, "name_or_path", None) or None
        if tokenizer is None and text_source:
            from pathlib import Path

            if Path(text_source).is_dir():
                tokenizer = load_tokenizer(text_source)
    model = _assemble(
        image_module,
        text_model,
        image_name=image_name,
        text_source=text_source,
        projection=projection,
        projection_dim=projection_dim,
        projection_dropout=projection_dropout,
        pooling=pooling,
    )
    return model, tokenizer


def clip_from_architecture(
    architecture: dict[str, Any], *, image_encoder: nn.Module | None = None, pooling: str | None = None
) -> MammoClip:
    """A randomly initialised model with the layout described by ``architecture`` (nothing downloaded).

    ``image_encoder`` replaces the encoder named in ``architecture`` (required when it names none, e.g. a
    model built around a custom module). ``pooling`` overrides the stored text pooling.
    """
    from transformers import BertConfig, BertModel

    image_spec = architecture.get("image_encoder") or {}
    if image_encoder is None:
        name = image_spec.get("name")
        if not name:
            raise ValueError(
                "the checkpoint does not name its image encoder; pass the encoder module (image_encoder=...)"
            )
        image_encoder = _image_encoder_by_name(name, pretrained=False, cache_dir=None)
    expected = image_spec.get("out_dim")
    encoder_dim: Any = image_encoder.out_dim
    if expected is not None and int(encoder_dim) != int(expected):
        raise ValueError(
            f"image encoder has out_dim {image_encoder.out_dim}, the architecture expects {expected}"
        )
    text_spec = architecture["text_encoder"]
    config = BertConfig.from_dict(dict(text_spec["bert_config"]))
    with torch.device("cpu"):
        text_model = BertModel(config, add_pooling_layer=bool(text_spec.get("add_pooling_layer", True)))
    text_model.eval()
    proj = architecture["projection"]
    model = _assemble(
        image_encoder,
        text_model,
        image_name=image_spec.get("name") or getattr(image_encoder, "name", None),
        text_source=text_spec.get("source"),
        projection=proj["type"],
        projection_dim=int(proj["dim"]),
        projection_dropout=float(proj.get("dropout", 0.1)),
        pooling=pooling or text_spec.get("pooling", "eos"),
    )
    return model
