"""Mammo-FActOR: attribute embeddings, mapper training, heatmaps (docs/upstream.md#mammo-factor).

* Attribute embeddings (:func:`attribute_embeddings`): per attribute, the normalised mean of the CLIP
  model's normalised sentence embeddings (:func:`mammoclip.inference.embed_classes`); sentences from
  ``factor.attributes``, by default our VinDr report sentences stating the finding
  (:func:`attribute_sentences`).
* Mapper (:class:`mammoclip.models.factor.AttributeMapper`) on the frozen image encoder's feature map at
  ``feature_stride`` (32: the final map, as the paper; 8 or 16: an earlier stage of
  :meth:`~mammoclip.models.image_encoders.ImageEncoder.feature_stages`), trained with :func:`mapper_loss`:
  multi-positive InfoNCE over the batch on the image scores (best channel's cosine / ``temperature``).
  AdamW, batches shuffled by a generator seeded with ``seed``, the epoch with the lowest loss on
  ``select`` kept, early stop after ``patience`` epochs without improvement.
* Heatmaps (:func:`mapper_heatmaps`): per image and attribute, the ``top_k`` channels by cosine, their
  maps weighted by the cosine and summed, at feature-map resolution (float16).

``legacy=True`` reproduces upstream's defects: the interleaving reshape of the heads' outputs, positives
counted in the InfoNCE denominator, and the encoder left in train mode (its BatchNorm statistics drift with
every batch, so the encoder cannot be run once and cached). Selection on the test split is the ``paper``
protocol's (:mod:`mammoclip.evaluate.protocols`), not this module's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mammoclip.models.factor import AttributeMapper, image_scores, region_similarities
from mammoclip.models.image_encoders import ImageEncoder
from mammoclip.train.pretrain import seed_everything
from mammoclip.train.settings import FROM_SCHEMA, fill_from_schema, schema_defaults

__all__ = [
    "ATTRIBUTE_FINDINGS",
    "FEATURE_STRIDES",
    "MapperConfig",
    "MapperResult",
    "attribute_embeddings",
    "attribute_sentences",
    "encode_maps",
    "mapper_heatmaps",
    "mapper_loss",
    "train_mapper",
]

log = logging.getLogger(__name__)

#: attribute -> (VinDr finding category of the prompts file, label of the annotation tables)
ATTRIBUTE_FINDINGS: Mapping[str, tuple[str, str]] = {
    "mass": ("Mass", "Mass"),
    "suspicious_calcification": ("Suspicious Calcification", "Suspicious_Calcification"),
}
#: feature maps the mapper can read: strides of ``ImageEncoder.feature_stages`` (32 = the final map)
FEATURE_STRIDES = (8, 16, 32)
HISTORY_COLUMNS = ("epoch", "train_loss", "select_loss", "lr", "selected")


def attribute_sentences(attributes: Mapping[str, Sequence[str] | None]) -> dict[str, list[str]]:
    """``{attribute: sentences}``: the given sentences, or for an empty/None list the VinDr report sentences
    stating the attribute's finding (both sides, ``mammoclip/data/vindr_prompts.yaml``)."""
    from mammoclip.data.clip_data import load_prompts

    prompts = None
    out = {}
    for name, sentences in attributes.items():
        if sentences:
            out[name] = [str(s) for s in sentences]
            continue
        if name not in ATTRIBUTE_FINDINGS:
            raise ValueError(
                f"factor.attributes.{name}: no sentences given and no default (defaults exist for "
                f"{sorted(ATTRIBUTE_FINDINGS)})"
            )
        prompts = prompts or load_prompts()
        category = prompts[ATTRIBUTE_FINDINGS[name][0]]
        out[name] = [*category["pos_right"], *category["pos_left"]]
    return out


def attribute_embeddings(model: Any, tokenizer: Any, sentences: Mapping[str, Sequence[str]]) -> Tensor:
    """``[A, P]`` normalised attribute embeddings of the CLIP ``model`` (rows in ``sentences``' order)."""
    from mammoclip.inference import embed_classes

    return embed_classes(model, tokenizer, sentences, device=torch.device("cpu")).float()


def mapper_loss(scores: Tensor, targets: Tensor, *, positives_in_denominator: bool = False) -> Tensor:
    """Multi-positive InfoNCE over the batch, averaged over the positive (image, attribute) pairs.

    ``scores``: ``[B, A]`` image scores; ``targets``: ``[B, A]`` 0/1. For a positive ``(i, a)``:
    ``-log(exp(s_ia) / (exp(s_ia) + sum_{j negative for a} exp(s_ja)))``. Attributes without a positive
    in the batch add nothing; a batch without any positive gives 0 (with a gradient of zeros).
    ``positives_in_denominator`` (upstream, ``legacy``): the denominator sums ``exp(s_ja * (1 - y_ja))``
    over the whole batch, so every positive adds ``exp(0) = 1``.
    """
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must be [B, A]")
    positive = targets.to(torch.bool)
    if not positive.any():
        return scores.sum() * 0.0
    if positives_in_denominator:
        others = torch.exp(scores * (~positive).to(scores.dtype)).sum(dim=0, keepdim=True)  # [1, A]
        log_den = torch.log(torch.exp(scores) + others)
    else:
        # logsumexp over {s_ia} and the attribute's negatives, without overflow
        masked = scores.masked_fill(positive, float("-inf"))  # negatives only
        neg = torch.logsumexp(masked, dim=0, keepdim=True).expand_as(scores)
        log_den = torch.logaddexp(scores, neg)
    losses = (log_den - scores)[positive]
    return losses.mean()


@dataclass
class MapperConfig:
    """Settings of one mapper run: the ``factor`` section's training keys (defaults in the schema) plus the
    run's ``seed``."""

    seed: int = FROM_SCHEMA
    epochs: int = FROM_SCHEMA
    batch_size: int = FROM_SCHEMA
    lr: float = FROM_SCHEMA
    weight_decay: float = FROM_SCHEMA
    patience: int = FROM_SCHEMA
    temperature: float = FROM_SCHEMA
    input_height: int = FROM_SCHEMA
    input_width: int = FROM_SCHEMA
    feature_stride: int = FROM_SCHEMA
    top_k: int = FROM_SCHEMA
    cache_features: bool = FROM_SCHEMA
    legacy: bool = FROM_SCHEMA

    def __post_init__(self) -> None:
        defaults = schema_defaults("factor")
        defaults["legacy"] = schema_defaults("legacy")
        fill_from_schema(self, defaults)
        for name in ("epochs", "batch_size", "patience", "input_height", "input_width", "top_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"factor.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.temperature > 0:
            raise ValueError("factor: lr and temperature must be > 0 and weight_decay >= 0")
        if self.feature_stride not in FEATURE_STRIDES:
            raise ValueError(
                f"factor.feature_stride must be one of {FEATURE_STRIDES}, got {self.feature_stride}"
            )
        if self.legacy and self.cache_features:
            log.warning("legacy: the encoder runs in train mode (BatchNorm drift), features are not cached")
            self.cache_features = False

    @classmethod
    def from_config(cls, factor: Mapping[str, Any], *, seed: int, legacy: bool) -> MapperConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in factor.items() if k in names}, seed=seed, legacy=legacy)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class MapperResult:
    """What :func:`train_mapper` returns: ``state_dict`` (CPU copy of the selected mapper), ``history``
    (:data:`HISTORY_COLUMNS`, one row per epoch run) and ``info`` (``best_epoch``, counts, ``map_shape``)."""

    state_dict: dict[str, Tensor]
    history: pd.DataFrame
    info: dict[str, Any]


def _stage(encoder: ImageEncoder, images: Tensor, stride: int) -> Tensor:
    if stride == 32:
        return encoder.forward_features(images)
    return encoder.feature_stages(images)[FEATURE_STRIDES.index(stride)]


def _inputs(frame: pd.DataFrame, config: MapperConfig) -> Dataset:
    """The model inputs ``[3, H, W]`` of the frame's ``png_path`` column."""
    from mammoclip.inference import ImageFiles

    paths = pd.DataFrame({"path": [str(p) for p in frame["png_path"]]})
    return ImageFiles(paths, height=config.input_height, width=config.input_width)


def encode_maps(
    encoder: ImageEncoder,
    frame: pd.DataFrame,
    config: MapperConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
    num_workers: int = 0,
) -> Tensor:
    """The frozen encoder's feature maps at ``config.feature_stride`` of the frame's images (eval mode,
    float16 on the CPU): ``[N, C, h, w]``; ``num_workers`` processes read the images."""
    loader = DataLoader(_inputs(frame, config), batch_size=config.batch_size, num_workers=num_workers)
    encoder = encoder.to(device).eval()
    maps = []
    with torch.inference_mode():
        for images in tqdm(loader, desc="feature maps", unit="batch", disable=not progress):
            maps.append(_stage(encoder, images.to(device), config.feature_stride).half().cpu())
    return torch.cat(maps)


def _targets(frame: pd.DataFrame, labels: Sequence[str]) -> Tensor:
    return torch.tensor(frame[list(labels)].to_numpy(np.float32))


def _save_resume(path: str | Path, state: dict[str, Any]) -> None:
    from mammoclip.io import atomic_path

    path = Path(path)
    with atomic_path(path, temporary=path.with_suffix(".tmp")) as tmp:
        torch.save(state, tmp)


def _state_copy(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def train_mapper(
    parts: Mapping[str, pd.DataFrame],
    embeddings: Tensor,
    labels: Sequence[str],
    config: MapperConfig,
    encoder: ImageEncoder,
    *,
    device: str = "cpu",
    progress: bool = True,
    resume_path: str | Path | None = None,
    num_workers: int = 0,
) -> MapperResult:
    """Train one mapper on ``parts["train"]`` and select its epoch on ``parts["select"]``.

    ``parts``: frames with ``png_path`` and 0/1 columns ``labels`` (one per attribute, in the order of
    ``embeddings`` ``[A, P]``). The encoder is frozen (no gradient) and in eval mode, its maps computed once
    when ``cache_features``; with ``legacy`` it stays in train mode as upstream's. ``num_workers``
    processes read the images.

    ``resume_path``: after every epoch the run's state (mapper, optimiser, shuffle generator, history, best
    weights) is written there atomically; a run started with the same file continues after its last
    finished epoch and ends as the uninterrupted run would (on the CPU: the same numbers). A file written
    with other settings, attributes or images stops the run with a message.
    """
    seed_everything(config.seed)
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1).to(device)
    encoder = encoder.to(device)
    for p in encoder.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        probe = torch.zeros(1, 3, config.input_height, config.input_width, device=device)
        _, _, h, w = _stage(encoder.eval(), probe, config.feature_stride).shape
    mapper = AttributeMapper(h * w, embeddings.shape[1], len(labels), interleave_heads=config.legacy).to(
        device
    )
    optimiser = torch.optim.AdamW(mapper.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    cached = {
        name: encode_maps(
            encoder, parts[name], config, device=device, progress=progress, num_workers=num_workers
        )
        for name in ("train", "select")
        if config.cache_features
    }
    targets = {name: _targets(parts[name], labels) for name in ("train", "select")}

    inputs = {name: _inputs(parts[name], config) for name in ("train", "select")}

    def batches(name: str, generator: torch.Generator | None):
        n = len(parts[name])
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        if config.cache_features:
            for start in range(0, n, config.batch_size):
                index = order[start : start + config.batch_size]
                yield cached[name][index].to(device).float(), targets[name][index].to(device)
            return
        # upstream's encoder is in train mode while the mapper trains (legacy), in eval mode otherwise
        encoder.train(config.legacy and generator is not None)
        loader = DataLoader(
            torch.utils.data.Subset(inputs[name], order.tolist()),
            batch_size=config.batch_size,
            num_workers=num_workers,
        )
        for images, index in zip(loader, order.split(config.batch_size), strict=True):
            with torch.no_grad():
                maps = _stage(encoder, images.to(device), config.feature_stride).float()
            yield maps, targets[name][index].to(device)

    def loss_of(maps: Tensor, y: Tensor) -> Tensor:
        scores = image_scores(region_similarities(mapper(maps), embeddings), config.temperature)
        return mapper_loss(scores, y, positives_in_denominator=config.legacy)

    generator = torch.Generator().manual_seed(config.seed)
    history, best, best_state, stale = [], math.inf, _state_copy(mapper), 0
    run_key = {
        "config": config.to_dict(),
        "labels": list(labels),
        "images": {name: [str(p) for p in parts[name]["png_path"]] for name in ("train", "select")},
    }
    start = 1
    if resume_path is not None and Path(resume_path).exists():
        saved = torch.load(resume_path, map_location="cpu", weights_only=True)
        if saved.get("run") != run_key:
            raise ValueError(
                f"{resume_path} was written by a mapper run with other settings, attributes or images; "
                "delete it to start afresh"
            )
        mapper.load_state_dict(saved["mapper"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
        history, best, stale = saved["history"], saved["best"], saved["stale"]
        best_state = saved["best_state"]
        start = len(history) + 1
        log.info("resuming from %s after epoch %d", resume_path, len(history))
    started = time.perf_counter()
    last = config.epochs if stale < config.patience else start - 1  # a resumed run may have stopped early
    for epoch in range(start, last + 1):
        mapper.train()
        total, count = 0.0, 0
        for maps, y in tqdm(
            batches("train", generator), desc=f"mapper epoch {epoch}", unit="batch", disable=not progress
        ):
            loss = loss_of(maps, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total, count = total + float(loss.detach()) * len(y), count + len(y)
        mapper.eval()
        with torch.no_grad():
            sel = [(float(loss_of(maps, y)), len(y)) for maps, y in batches("select", None)]
        select_loss = sum(v * n for v, n in sel) / max(1, sum(n for _, n in sel))
        improved = select_loss < best
        if improved:
            best, best_state, stale = select_loss, _state_copy(mapper), 0
        else:
            stale += 1
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(1, count),
                "select_loss": select_loss,
                "lr": config.lr,
                "selected": False,
            }
        )
        log.info("epoch %d: train loss %.4f, select loss %.4f", epoch, history[-1]["train_loss"], select_loss)
        if resume_path is not None:
            _save_resume(
                resume_path,
                {
                    "run": run_key,
                    "mapper": _state_copy(mapper),
                    "optimiser": optimiser.state_dict(),
                    "generator": generator.get_state(),
                    "history": history,
                    "best": best,
                    "best_state": best_state,
                    "stale": stale,
                },
            )
        if stale >= config.patience:
            log.info("early stop: %d epochs without a lower select loss", stale)
            break
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    best_epoch = int(frame.loc[frame["select_loss"].idxmin(), "epoch"])
    frame["selected"] = frame["epoch"].eq(best_epoch)
    info = {
        "best_epoch": best_epoch,
        "best_select_loss": float(best),
        "map_shape": [int(h), int(w)],
        "train_seconds": time.perf_counter() - started,
        **{f"n_{name}_images": len(parts[name]) for name in ("train", "select")},
        **{f"n_train_{label}": int(parts["train"][label].sum()) for label in labels},
    }
    return MapperResult(state_dict=best_state, history=frame, info=info)


def mapper_heatmaps(
    mapper: AttributeMapper,
    maps: Tensor,
    embeddings: Tensor,
    *,
    top_k: int,
    temperature: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(heatmaps [N, A, h, w] float16, scores [N, A] float32)`` of feature maps ``[N, C, h, w]``.

    Heatmap of attribute ``a``: the ``top_k`` channels with the highest cosine to the attribute, each map
    weighted by its cosine, summed. Score: the image score (best channel's cosine / ``temperature``).
    """
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    mapper = mapper.eval()
    heat, scores = [], []
    with torch.no_grad():
        for start in range(0, len(maps), 16):
            chunk = maps[start : start + 16].float()
            sims = region_similarities(mapper(chunk), embeddings)  # [b, A, C]
            k = min(top_k, sims.shape[2])
            top, index = sims.topk(k, dim=2)
            picked = torch.stack(
                [chunk[torch.arange(len(chunk))[:, None], index[:, a]] for a in range(sims.shape[1])], dim=1
            )  # [b, A, k, h, w]
            heat.append((picked * top[..., None, None]).sum(dim=2).half())
            scores.append(image_scores(sims, temperature))
    return torch.cat(heat).numpy(), torch.cat(scores).numpy().astype(np.float32)
