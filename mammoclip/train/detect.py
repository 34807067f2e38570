"""Training and running one lesion detector: RetinaNet on a CLIP image encoder (docs/upstream.md#detection).

:class:`DetectorConfig` holds one run's settings: the keys of a ``detect.labels.<label>`` section of the
config (defaults in mammoclip/schema.yaml, their only home) plus the run's ``mode`` (``freeze`` / ``ft``),
``label``, ``seed``, ``precision`` and ``num_workers``.

:func:`train_detector` trains on ``parts["train"]``, selects the epoch on ``parts["select"]`` and detects on
``parts["report"]``:

* model: :func:`mammoclip.models.detector.build_retinanet` on the image encoder of a CLIP checkpoint (ours
  or released, loaded by :func:`mammoclip.checkpoints.load_clip` as the classifiers do), encoder frozen and
  kept in eval mode for ``freeze``; pyramid and heads initialised from ``seed``;
* data: :class:`mammoclip.data.detection_data.DetectionImages` (training images augmented, seeded per
  ``(seed, epoch, image)``); boxes are the label's boxes in PNG pixels, rows with a NaN coordinate dropped
  and counted (``info["n_boxes_dropped_nan"]``);
* optimisation as upstream: Adam (``lr``, ``weight_decay``; ``lr_schedule`` constant as upstream, or
  cosine decay to 0 by ``transformers.get_cosine_schedule_with_warmup``), gradient-norm clipping at
  ``max_grad_norm`` (None: none), batches of ``batch_size`` shuffled by a generator seeded with ``seed``;
  loss = torchvision's focal classification loss + box regression loss (``box_loss``); a non-finite loss
  stops the run;
* precision: :func:`mammoclip.train.precision.autocast` (bf16/fp16 on CUDA only, with a gradient scaler for
  fp16; the CPU runs fp32);
* selection: after every epoch, detections on ``select`` (same post-processing as the report) are scored by
  :func:`mammoclip.evaluate.detection.voc_ap` against the select images' boxes; the best epoch has the
  highest AP, the earliest on ties (an undefined AP counts lowest);
* detections: on ``report`` with the selected weights, mapped back to PNG pixels, ``score >=
  score_threshold``, at most ``max_detections`` per image after NMS.

Determinism: :func:`mammoclip.train.pretrain.seed_everything` at the start; on the CPU two runs with the
same seed give identical histories, weights and detections.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mammoclip.data.detection_data import BOX_COLUMNS, DetectionImages, collate_detection, group_boxes
from mammoclip.models.detector import BOX_LOSSES, HEAD_NORMS
from mammoclip.models.image_encoders import ImageEncoder
from mammoclip.train.precision import PRECISIONS, autocast
from mammoclip.train.pretrain import seed_everything
from mammoclip.train.settings import FROM_SCHEMA, fill_from_schema, schema_defaults

__all__ = [
    "DETECTION_COLUMNS",
    "HISTORY_COLUMNS",
    "MODES",
    "PROTOCOL_SCORE_THRESHOLDS",
    "DetectorConfig",
    "DetectorResult",
    "predict_detections",
    "train_detector",
]

log = logging.getLogger(__name__)

#: ``freeze``: encoder frozen and in eval mode (upstream's "lp"); ``ft``: everything trains
MODES = ("freeze", "ft")
#: learning rate over the run: upstream's constant, or cosine decay to 0 over all steps
LR_SCHEDULES = ("constant", "cosine")
#: keys of a ``detect.labels.<label>`` section that are not run settings
_LABEL_KEYS_NOT_TRAINING = ("enabled", "fractions", "mode_overrides")
#: ``score_threshold: null`` is the protocol's: upstream's 0.2 for ``paper``, 0.05 (untruncated) for ``clean``
PROTOCOL_SCORE_THRESHOLDS = {"paper": 0.2, "clean": 0.05}
DETECTION_COLUMNS = ("image_id", "score", *BOX_COLUMNS)
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_classification_loss",
    "train_box_loss",
    "select_map50",
    "lr",
    "selected",
)
_PARTS = ("train", "select", "report")


def _label_defaults(label: str | None) -> dict[str, Any]:
    """The schema's defaults of ``detect.labels.<label>``; for another label (or None) those every label
    shares (``$defs/detector_label``)."""
    labels = schema_defaults("detect", "labels")
    if label in labels:
        return labels[label]
    from mammoclip.config import fill_defaults, load_schema

    schema = load_schema()
    wrapper = {"properties": {"label": {"$ref": "#/$defs/detector_label"}}, "$defs": schema["$defs"]}
    return fill_defaults({}, wrapper)["label"]


@dataclass
class DetectorConfig:
    """Settings of one detector run (module docstring). Fields left out get the schema's default of
    ``detect.labels.<label>``; ``mode``, ``seed``, ``precision`` and ``num_workers`` must be given.
    ``augment`` may list only some keys (the others keep their defaults) or be None (no augmentation).
    ``score_threshold`` None is the protocol's (:data:`PROTOCOL_SCORE_THRESHOLDS`, resolved by
    :meth:`from_config` when it is told the protocol); training needs a number."""

    mode: str = FROM_SCHEMA
    label: str | None = None
    seed: int = FROM_SCHEMA
    precision: str = FROM_SCHEMA
    num_workers: int = FROM_SCHEMA
    epochs: int = FROM_SCHEMA
    batch_size: int = FROM_SCHEMA
    lr: float = FROM_SCHEMA
    weight_decay: float = FROM_SCHEMA
    max_grad_norm: float | None = FROM_SCHEMA
    input_height: int = FROM_SCHEMA
    input_width: int = FROM_SCHEMA
    keep_aspect: bool = FROM_SCHEMA
    score_threshold: float | None = FROM_SCHEMA
    max_detections: int = FROM_SCHEMA
    augment: dict[str, Any] | None = FROM_SCHEMA
    anchor_sizes: list[float] = FROM_SCHEMA
    fpn_channels: int = FROM_SCHEMA
    head_norm: str = FROM_SCHEMA
    box_loss: str = FROM_SCHEMA
    lr_schedule: str = FROM_SCHEMA
    focal_alpha: float = FROM_SCHEMA
    focal_gamma: float = FROM_SCHEMA
    clean_negative_fraction: float = FROM_SCHEMA

    def __post_init__(self) -> None:
        defaults = _label_defaults(self.label)
        if self.augment is not FROM_SCHEMA and self.augment is not None:
            self.augment = {**defaults.get("augment", {}), **dict(self.augment)}
        fill_from_schema(self, {k: v for k, v in defaults.items() if k not in _LABEL_KEYS_NOT_TRAINING})
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "max_detections", "input_height", "input_width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.score_threshold is not None and not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1) or None, got {self.score_threshold!r}")
        for name, allowed in (
            ("head_norm", HEAD_NORMS),
            ("box_loss", BOX_LOSSES),
            ("lr_schedule", LR_SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if int(self.fpn_channels) < 8:
            raise ValueError(f"fpn_channels must be >= 8, got {self.fpn_channels!r}")
        self.anchor_sizes = [float(s) for s in self.anchor_sizes]

    @classmethod
    def from_config(
        cls,
        label_settings: Mapping[str, Any],
        *,
        mode: str,
        seed: int,
        num_workers: int,
        precision: str,
        label: str | None = None,
        protocol: str | None = None,
    ) -> DetectorConfig:
        """From one ``detect.labels.<label>`` section (its ``mode_overrides`` for ``mode`` applied;
        ``enabled`` and ``fractions`` ignored). ``num_workers``, ``precision``: the ``detect`` section's.
        ``protocol`` (``paper`` / ``clean``): resolves ``score_threshold: null``."""
        settings = dict(label_settings)
        settings.update((settings.get("mode_overrides") or {}).get(mode) or {})
        for key in _LABEL_KEYS_NOT_TRAINING:
            settings.pop(key, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ValueError(f"detect.labels.{label or '<label>'}: unknown setting(s) {unknown}")
        if settings.get("score_threshold") is None and protocol is not None:
            if protocol not in PROTOCOL_SCORE_THRESHOLDS:
                raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOL_SCORE_THRESHOLDS)}")
            settings["score_threshold"] = PROTOCOL_SCORE_THRESHOLDS[protocol]
        return cls(
            **settings, mode=mode, label=label, seed=seed, precision=precision, num_workers=num_workers
        )

    @property
    def freeze(self) -> bool:
        return self.mode == "freeze"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DetectorResult:
    """What :func:`train_detector` returns.

    ``detections``: :data:`DETECTION_COLUMNS` on the report images (PNG pixels). ``history``: one row per
    epoch, :data:`HISTORY_COLUMNS`. ``state_dict``: CPU copy of the selected weights (whole model).
    ``info``: counts and choices of the run (``best_epoch``, ``best_select_map50``, ``n_train_images``,
    ``n_train_boxes``, ``n_boxes_dropped_nan``, ...).
    """

    detections: pd.DataFrame
    history: pd.DataFrame
    state_dict: dict[str, Tensor]
    info: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------


def _loader(dataset: DetectionImages, batch_size: int, num_workers: int, generator=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        num_workers=num_workers,
        collate_fn=collate_detection,
        drop_last=False,
    )


@torch.no_grad()
def predict_detections(
    model: nn.Module,
    dataset: DetectionImages,
    *,
    score_threshold: float,
    max_detections: int,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    precision: str = "fp32",
    num_workers: int = 0,
) -> pd.DataFrame:
    """Detections of ``model`` (a torchvision detector) on ``dataset``, in PNG pixels.

    Columns :data:`DETECTION_COLUMNS`; per image (in dataset order) by score, descending, ``score >=
    score_threshold``, at most ``max_detections``; boxes that map entirely into padding are dropped. The
    model runs in eval mode and its previous mode is restored.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    rows: list[pd.DataFrame] = []
    try:
        for images, _, metas in _loader(dataset, batch_size, num_workers):
            with autocast(device, precision):
                outputs = model([image.to(device) for image in images])
            for output, meta in zip(outputs, metas, strict=True):
                scores = output["scores"].float().cpu().numpy().astype(np.float64)
                boxes = meta["frame"].to_png(output["boxes"].float().cpu().numpy())
                keep = (scores >= score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                scores, boxes = scores[keep], boxes[keep]
                order = np.argsort(-scores, kind="stable")[:max_detections]
                frame = pd.DataFrame(boxes[order], columns=list(BOX_COLUMNS))
                frame.insert(0, "score", scores[order])
                frame.insert(0, "image_id", [meta["image_id"]] * len(order))
                rows.append(frame)
    finally:
        model.train(was_training)
    if not rows:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c == "image_id" else float) for c in DETECTION_COLUMNS}
        )
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _load_encoder(
    checkpoint: Any, encoder: ImageEncoder | None, load_kwargs: Mapping[str, Any] | None
) -> tuple[ImageEncoder, dict[str, Any]]:
    if (checkpoint is None) == (encoder is None):
        raise ValueError("give exactly one of checkpoint (a CLIP checkpoint path) and encoder")
    if encoder is not None:
        return encoder, {"checkpoint": None}
    from mammoclip.checkpoints import load_clip

    clip, _, info = load_clip(checkpoint, tokenizer=False, **dict(load_kwargs or {}))
    image_encoder = clip.image_encoder
    if not isinstance(image_encoder, ImageEncoder):
        raise TypeError(
            f"{checkpoint}: the image encoder is a {type(image_encoder).__name__}, not an ImageEncoder"
        )
    return image_encoder, {"checkpoint": info["path"], "checkpoint_format": info["format"]}


def _truths(frame: pd.DataFrame, boxes_by_image: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Truths DataFrame (``image_id`` + box columns, PNG pixels) of the images of ``frame``."""
    ids, rows = [], []
    for image_id in frame["image_id"]:
        for box in boxes_by_image.get(str(image_id), ()):
            ids.append(image_id)
            rows.append(box)
    out = pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(-1, 4), columns=list(BOX_COLUMNS))
    out.insert(0, "image_id", pd.Series(ids, dtype=frame["image_id"].dtype))
    return out


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_detector(
    parts: Mapping[str, pd.DataFrame],
    boxes: pd.DataFrame,
    config: DetectorConfig,
    *,
    checkpoint: Any = None,
    encoder: ImageEncoder | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    iou_threshold: float = 0.5,
    threads: int | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
) -> DetectorResult:
    """Train one detector, select its epoch on ``parts["select"]``, detect on ``parts["report"]``.

    ``parts``: ``train``, ``select``, ``report`` image rows (``image_id``, ``png_path``; ``patient_id`` is
    not needed here). ``boxes``: the label's boxes (``image_id, xmin, ymin, xmax, ymax`` in PNG pixels;
    only those of images in the parts are used). ``checkpoint``: a CLIP checkpoint (ours or released) whose
    image encoder is used; or ``encoder``: an :class:`~mammoclip.models.image_encoders.ImageEncoder` to use
    as it is (tests, benchmarks). ``load_kwargs``: passed to :func:`mammoclip.checkpoints.load_clip`.
    ``iou_threshold``: of the selection AP. ``threads``: torch's CPU threads (else as is).
    """
    from mammoclip.evaluate.detection import voc_ap
    from mammoclip.models.detector import build_retinanet

    if config.score_threshold is None:
        raise ValueError(
            "config.score_threshold is None: give a number or build the config with "
            "DetectorConfig.from_config(..., protocol=...)"
        )
    missing = [p for p in _PARTS if p not in parts]
    if missing:
        raise ValueError(f"parts lacks {missing}")
    if len(parts["train"]) == 0 or len(parts["select"]) == 0:
        raise ValueError("the train and select parts must not be empty")
    if threads:
        torch.set_num_threads(int(threads))
    device = torch.device(device)
    precision = config.precision
    if precision != "fp32" and device.type != "cuda":
        log.info(
            "precision %s requested on %s: running fp32 (autocast is used on CUDA only)", precision, device
        )
        precision = "fp32"
    started = time.perf_counter()
    seed_everything(config.seed)

    ids_in_parts = set().union(*(set(parts[p]["image_id"].astype(str)) for p in _PARTS))
    boxes_by_image, n_nan = group_boxes(boxes)
    if n_nan:
        log.warning("%d box(es) with a NaN coordinate (outside the PNG crop) left out", n_nan)
    n_other = sum(len(v) for k, v in boxes_by_image.items() if k not in ids_in_parts)
    boxes_by_image = {k: v for k, v in boxes_by_image.items() if k in ids_in_parts}

    data = {
        name: DetectionImages(
            parts[name],
            boxes_by_image,
            height=config.input_height,
            width=config.input_width,
            keep_aspect=config.keep_aspect,
            augment=config.augment if name == "train" else None,
            seed=config.seed,
        )
        for name in _PARTS
    }
    train_ds = data["train"]
    if train_ds.n_boxes == 0:
        raise ValueError(f"no {config.label or 'label'} box in the {len(train_ds)} training images")
    select_truths = _truths(parts["select"], boxes_by_image)
    if len(select_truths) == 0:
        log.warning(
            "no box in the %d select images: AP is undefined, the first epoch is kept", len(data["select"])
        )

    encoder, source = _load_encoder(checkpoint, encoder, load_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_retinanet(encoder, settings=config, freeze=config.freeze)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    generator = torch.Generator().manual_seed(int(config.seed))
    train_loader = _loader(train_ds, config.batch_size, config.num_workers, generator=generator)
    scheduler = None
    if config.lr_schedule == "cosine":
        from transformers import get_cosine_schedule_with_warmup

        scheduler = get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=0, num_training_steps=config.epochs * len(train_loader)
        )
    detect = functools.partial(
        predict_detections,
        model,
        score_threshold=float(config.score_threshold),
        max_detections=int(config.max_detections),
        device=device,
        batch_size=config.batch_size,
        precision=precision,
        num_workers=config.num_workers,
    )
    log.info(
        "detector %s (%s): train %d images (%d with boxes, %d boxes), select %d (%d boxes), report %d; "
        "%d trainable parameters",
        config.label or "",
        config.mode,
        len(train_ds),
        train_ds.n_positive,
        train_ds.n_boxes,
        len(data["select"]),
        len(select_truths),
        len(data["report"]),
        sum(p.numel() for p in trainable),
    )

    history: list[dict[str, Any]] = []
    best_state: dict[str, Tensor] | None = None
    best_score, best_index = -math.inf, 0
    bar = tqdm(
        total=config.epochs * len(train_loader), disable=not progress, desc=f"detect {config.label or ''}"
    )
    try:
        for epoch in range(1, config.epochs + 1):
            train_ds.set_epoch(epoch)
            model.train()
            sums = np.zeros(3)
            batches = 0
            for images, targets, _ in train_loader:
                images = [image.to(device, non_blocking=True) for image in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                with autocast(device, precision):
                    losses = model(images, targets)
                cls_loss = losses["classification"].float()
                box_loss = losses["bbox_regression"].float()
                loss = cls_loss + box_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch}: {loss.item()}")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    if config.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if config.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                sums += [float(loss.detach()), float(cls_loss.detach()), float(box_loss.detach())]
                batches += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.4f}")
            detections = detect(data["select"])
            score = voc_ap(detections, select_truths, iou_threshold=iou_threshold)
            means = sums / max(batches, 1)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": means[0],
                    "train_classification_loss": means[1],
                    "train_box_loss": means[2],
                    "select_map50": score,
                    "lr": float(optimizer.param_groups[0]["lr"]),
                    "selected": False,
                }
            )
            log.info(
                "epoch %d/%d: train loss %.4f (classification %.4f, box %.4f), select AP@%g %.4f",
                epoch,
                config.epochs,
                *means,
                iou_threshold,
                score,
            )
            if best_state is None or (not math.isnan(score) and score > best_score):
                best_score = -math.inf if math.isnan(score) else score
                best_index = epoch - 1
                best_state = _state_copy(model)
    finally:
        bar.close()
    assert best_state is not None  # set after the first epoch
    history[best_index]["selected"] = True
    model.load_state_dict(best_state)
    report = detect(data["report"])
    report_truths = _truths(parts["report"], boxes_by_image)
    info = {
        **source,
        "label": config.label,
        "mode": config.mode,
        "best_epoch": best_index + 1,
        "best_select_map50": history[best_index]["select_map50"],
        "n_train_images": len(train_ds),
        "n_train_positive_images": train_ds.n_positive,
        "n_train_boxes": train_ds.n_boxes,
        "n_select_images": len(data["select"]),
        "n_select_boxes": len(select_truths),
        "n_report_images": len(data["report"]),
        "n_report_boxes": len(report_truths),
        "n_boxes_dropped_nan": n_nan,
        "n_boxes_other_images": n_other,
        "n_report_detections": len(report),
        "score_threshold": float(config.score_threshold),
        "iou_threshold": float(iou_threshold),
        "precision": precision,
        "device": str(device),
        "encoder": getattr(encoder, "name", None)
        or getattr(encoder, "variant", None)
        or type(encoder).__name__,
        "stage_channels": list(encoder.stage_channels),
        "n_trainable_parameters": sum(p.numel() for p in trainable),
        "train_seconds": time.perf_counter() - started,
    }
    log.info(
        "detector %s (%s): best epoch %d (select AP %.4f), %d report detections",
        config.label or "",
        config.mode,
        info["best_epoch"],
        info["best_select_map50"],
        len(report),
    )
    return DetectorResult(
        detections=report,
        history=pd.DataFrame(history, columns=list(HISTORY_COLUMNS)),
        state_dict=best_state,
        info=info,
    )
