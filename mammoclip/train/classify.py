"""Downstream classifiers on a Mammo-CLIP encoder: linear probe and finetune (docs/upstream.md#classifiers).

Models

* :class:`EncoderClassifier`: image encoder -> pooled ``[B, out_dim]`` -> ``Linear(out_dim, n_classes)``
  (``n_classes`` 1 = binary, a logit; 4 = VinDr density). ``freeze_encoder=True`` (linear probe) sets
  ``requires_grad=False`` on every encoder parameter **and keeps the encoder in eval mode** whatever
  ``train()`` is called with, so BatchNorm running statistics and dropout do not change. Upstream only
  switches gradients off and calls ``model.train()``, so its "frozen" encoder's BN statistics drift.
  :func:`build_classifier` makes one for a :class:`ClassifierConfig`;
  :func:`classifier_from_clip` takes the encoder of a CLIP checkpoint
  (:func:`mammoclip.checkpoints.load_clip`).
* The cheap linear probe, :func:`train_head_on_embeddings`, trains a ``Linear(dim, n_classes)`` head on
  cached embeddings (the raw features of :func:`mammoclip.inference.read_embeddings`), with the same loss,
  optimiser, schedule and selection as the image-level loop. It is equivalent to an image-level linear
  probe without augmentation, since the encoder is in eval mode there too.

Training (:func:`train_classifier`; shared by both)

* Loss: binary ``BCEWithLogitsLoss``, with ``pos_weight`` = #negative / #positive of the rows actually
  trained on (:func:`positive_weight`) when ``weighted_loss``; upstream hard-codes weights computed on other
  subsets (all rows outside the validation fold). ``ClassifierConfig.pos_weight`` sets a value explicitly
  (e.g. upstream's, to reproduce it). Multiclass: ``CrossEntropyLoss`` (unweighted, as upstream;
  ``weighted_loss`` does not apply).
* Sampling: shuffled batches from a ``torch.Generator`` seeded with ``seed``; with ``balanced_sampler`` a
  ``WeightedRandomSampler`` (with replacement, ``len(train)`` draws per epoch) whose row weights are
  1 / (count of the row's class) **in the training labels** (upstream: a hard-coded table of the validation
  fold's counts, always on the ``cancer`` column), seeded the same way.
* Optimiser / schedule: :func:`mammoclip.train.optim.build_optimizer` (AdamW over trainable parameters; no
  decay on biases and norms) and ``transformers.get_cosine_schedule_with_warmup`` stepped per batch with
  ``round(warmup_epochs * steps_per_epoch)`` warmup steps over ``epochs * steps_per_epoch``. As upstream the
  first step runs at lr 0 when there is warmup.
* Precision: ``"bf16"`` / ``"fp16"`` autocast on CUDA only (CPU runs fp32;
  :func:`mammoclip.train.precision.autocast`); a single ``GradScaler`` for the whole run, and only for fp16
  (upstream recreates it every epoch).
* Selection: after every epoch the ``select`` split is scored; the best epoch has the highest AUROC
  (binary) or accuracy (multiclass), the earliest on ties (an undefined AUROC counts as lowest). Use a split
  that is not the reported one (see :mod:`mammoclip.evaluate.protocols`).
* Determinism: :func:`mammoclip.train.pretrain.seed_everything` at the start; on the CPU with
  ``num_workers=0`` two runs with the same seed give identical weights.

``history`` is a list of per-epoch dicts ``epoch`` (1-based), ``train_loss`` (mean over batches), ``lr``
(after the epoch's last step), ``select_auroc`` or ``select_accuracy``, and ``selected`` (True on the chosen
epoch only) — rows for a metrics CSV (``pandas.DataFrame(history).to_csv``).

:func:`predict` returns probabilities: sigmoid ``[N]`` for a one-logit model, softmax ``[N, C]`` otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler
from transformers import get_cosine_schedule_with_warmup

from mammoclip.evaluate.metrics import binary_metrics, multiclass_metrics
from mammoclip.train.optim import build_optimizer
from mammoclip.train.precision import PRECISIONS, autocast
from mammoclip.train.pretrain import seed_everything
from mammoclip.train.settings import FROM_SCHEMA, fill_from_schema, schema_defaults

__all__ = [
    "MODES",
    "PRECISIONS",
    "ClassifierConfig",
    "EncoderClassifier",
    "LabelledImages",
    "balanced_sampler",
    "build_classifier",
    "build_loss",
    "classifier_from_clip",
    "positive_weight",
    "predict",
    "select_metric_name",
    "train_classifier",
    "train_head_on_embeddings",
]

log = logging.getLogger(__name__)

MODES = ("linear_probe", "finetune")
#: the config's mode names (``classify.labels.<label>.mode_overrides``, workflow wildcards) -> :data:`MODES`
MODE_NAMES = {"lp": "linear_probe", "ft": "finetune"}
#: keys of a ``classify.labels.<label>`` section that are not training settings
_LABEL_KEYS_NOT_TRAINING = ("enabled", "fractions", "mode_overrides")


def _label_defaults(label: str) -> dict[str, Any]:
    """The schema's training defaults of ``classify.labels.<label>`` (a label it does not know: the
    defaults every label shares, ``$defs/classifier_settings``)."""
    labels = schema_defaults("classify", "labels")
    if label in labels:
        return labels[label]
    from mammoclip.config import load_schema

    shared = load_schema()["$defs"]["classifier_settings"]
    return {k: v["default"] for k, v in shared.items() if isinstance(v, dict) and "default" in v}


@dataclass
class ClassifierConfig:
    """Settings of one classifier run: the run's ``mode``, ``label``, ``n_classes`` (1 = binary, one logit;
    >= 2 softmax classes, 4 = density), ``seed``, ``precision`` and ``num_workers`` (all required), and the
    training settings of a ``classify.labels.<label>`` section under the same names (a setting left out gets
    that label's default in the schema). ``pos_weight`` None: #neg/#pos of the training rows. Build one from
    a config with :meth:`from_config`."""

    mode: str = FROM_SCHEMA
    label: str = FROM_SCHEMA
    n_classes: int = FROM_SCHEMA
    epochs: int = FROM_SCHEMA
    batch_size: int = FROM_SCHEMA
    lr: float = FROM_SCHEMA
    weight_decay: float = FROM_SCHEMA
    warmup_epochs: float = FROM_SCHEMA
    balanced_sampler: bool = FROM_SCHEMA
    weighted_loss: bool = FROM_SCHEMA
    seed: int = FROM_SCHEMA
    precision: str = FROM_SCHEMA
    num_workers: int = FROM_SCHEMA
    pos_weight: float | None = FROM_SCHEMA

    def __post_init__(self) -> None:
        if self.label is FROM_SCHEMA:
            raise TypeError("ClassifierConfig needs label")
        defaults = _label_defaults(self.label)
        fill_from_schema(self, {k: v for k, v in defaults.items() if k not in _LABEL_KEYS_NOT_TRAINING})
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.n_classes, bool) or int(self.n_classes) != self.n_classes or self.n_classes < 1:
            raise ValueError(f"n_classes must be a positive integer, got {self.n_classes!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("lr must be > 0, weight_decay and warmup_epochs >= 0")
        if self.pos_weight is not None and not (math.isfinite(self.pos_weight) and self.pos_weight > 0):
            raise ValueError(f"pos_weight must be a positive number or None, got {self.pos_weight!r}")

    @classmethod
    def from_config(
        cls,
        label_settings: Mapping[str, Any],
        *,
        mode: str,
        label: str,
        n_classes: int,
        seed: int,
        precision: str,
        num_workers: int,
    ) -> ClassifierConfig:
        """From one ``classify.labels.<label>`` section (its ``mode_overrides`` for ``mode`` applied if it
        still has them; ``enabled`` and ``fractions`` ignored). ``mode``: ``lp`` / ``ft`` or a :data:`MODES`
        name; ``precision`` and ``num_workers``: the ``classify`` section's."""
        settings = dict(label_settings)
        mode = MODE_NAMES.get(mode, mode)
        short = {v: k for k, v in MODE_NAMES.items()}.get(mode, mode)
        settings.update((settings.get("mode_overrides") or {}).get(short) or {})
        for key in _LABEL_KEYS_NOT_TRAINING:
            settings.pop(key, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ValueError(f"classify.labels.{label}: unknown setting(s) {unknown}")
        return cls(
            **settings,
            mode=mode,
            label=label,
            n_classes=n_classes,
            seed=seed,
            precision=precision,
            num_workers=num_workers,
        )

    @property
    def binary(self) -> bool:
        return self.n_classes == 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def select_metric_name(config: ClassifierConfig) -> str:
    """The history column used for epoch selection: ``select_auroc`` or ``select_accuracy``."""
    return "select_auroc" if config.binary else "select_accuracy"


# --------------------------------------------------------------------------------------------------
# Labels, loss, sampler
# --------------------------------------------------------------------------------------------------


def _binary_labels(labels) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("binary labels must be 0 or 1")
    return y


def positive_weight(labels) -> float:
    """``#negative / #positive`` of ``labels`` (0/1), the ``pos_weight`` of BCE for the rows trained on."""
    y = _binary_labels(labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError(f"no positive label among {len(y)} training rows: pos_weight is undefined")
    return float(len(y) - n_pos) / n_pos


def build_loss(config: ClassifierConfig, train_labels) -> nn.Module:
    """``BCEWithLogitsLoss`` (binary; ``pos_weight`` per the module docstring) or ``CrossEntropyLoss``."""
    if not config.binary:
        return nn.CrossEntropyLoss()
    if not config.weighted_loss:
        return nn.BCEWithLogitsLoss()
    weight = config.pos_weight if config.pos_weight is not None else positive_weight(train_labels)
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([weight], dtype=torch.float32))


def balanced_sampler(labels, *, seed: int) -> WeightedRandomSampler:
    """``len(labels)`` draws with replacement, each class equally likely (weights 1 / class count)."""
    y = np.asarray(labels).reshape(-1)
    if y.size == 0:
        raise ValueError("balanced_sampler needs at least one label")
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    weights = torch.as_tensor(1.0 / counts[inverse], dtype=torch.double)
    generator = torch.Generator().manual_seed(int(seed))
    # WeightedRandomSampler takes a tensor (torch.as_tensor of it); its stub says Sequence[float]
    return WeightedRandomSampler(
        cast(Sequence[float], weights), num_samples=len(y), replacement=True, generator=generator
    )


def _dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels of a dataset without loading images when it exposes them (``labels`` or a TensorDataset)."""
    labels = getattr(dataset, "labels", None)
    if labels is None and isinstance(dataset, TensorDataset):
        labels = dataset.tensors[1]
    if labels is None:
        labels = [dataset[i][1] for i in range(len(cast(Sized, dataset)))]
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    return np.asarray([float(v) for v in labels] if isinstance(labels, list) else labels).reshape(-1)


class LabelledImages(Dataset):
    """``(model input [3, H, W], label)`` for a table with ``image_id``, ``path`` and the ``label`` column.

    Images are read as :class:`mammoclip.inference.ImageFiles` does; ``augment=True`` applies the
    pretraining augmentation (:class:`mammoclip.data.transforms.TrainAugment`, as upstream's classifier
    training does) drawn from one generator seeded with ``seed``, so with ``num_workers=0`` a run is
    reproducible. ``labels`` holds the label column as a numpy array, so training never reads images just to
    count classes.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        label: str,
        *,
        height: int,
        width: int,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        from mammoclip.data.transforms import TrainAugment
        from mammoclip.inference import ImageFiles

        if label not in table.columns:
            raise ValueError(f"label column {label!r} is missing (columns: {list(table.columns)})")
        if table[label].isna().any():
            raise ValueError(f"label column {label!r} has {int(table[label].isna().sum())} missing values")
        self.images = ImageFiles(table, height=height, width=width)
        self.labels = table[label].to_numpy()
        self.augment = TrainAugment(height, width) if augment else None
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        if self.augment is None:
            return self.images[index], self.labels[index].item()
        from mammoclip.inference import normalise_image, read_grey

        path = self.images.inputs.at[index, "path"]
        image = self.augment(read_grey(path), self.rng)
        return torch.from_numpy(normalise_image(image, source=str(path))), self.labels[index].item()


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class EncoderClassifier(nn.Module):
    """Image encoder (``out_dim``, ``forward(x) -> [B, out_dim]``) + ``Linear(out_dim, n_classes)``.

    ``freeze_encoder``: encoder parameters get ``requires_grad=False`` and the encoder stays in eval mode
    (``train()`` is overridden), so BN statistics and dropout are those of inference.
    """

    def __init__(self, encoder: nn.Module, n_classes: int, *, freeze_encoder: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(cast(int, encoder.out_dim)), int(n_classes))
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            for param in self.encoder.parameters():
                param.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                features = self.encoder(x)
        else:
            features = self.encoder(x)
        return self.head(features.float())


def build_classifier(encoder: nn.Module, config: ClassifierConfig) -> EncoderClassifier:
    """An :class:`EncoderClassifier` for ``config`` (frozen encoder for ``linear_probe``), head seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return EncoderClassifier(encoder, config.n_classes, freeze_encoder=config.mode == "linear_probe")


def classifier_from_clip(path, config: ClassifierConfig, **load_kwargs) -> tuple[EncoderClassifier, dict]:
    """``(classifier, info)`` on the image encoder of a CLIP checkpoint (released or ours)."""
    from mammoclip.checkpoints import load_clip

    model, _, info = load_clip(path, tokenizer=False, **load_kwargs)
    return build_classifier(model.image_encoder, config), info


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _loader(dataset: Dataset, batch_size: int, num_workers: int, sampler=None, generator=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None and generator is not None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        num_workers=num_workers,
        drop_last=False,
    )


def _logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.ndim == 2 and logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    if logits.ndim == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict(
    model_or_head: nn.Module,
    data,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    precision: str = "fp32",
    num_workers: int = 0,
) -> np.ndarray:
    """Probabilities: sigmoid ``[N]`` (one logit) or softmax ``[N, C]``, in the input order.

    ``data``: an array / tensor of inputs (embeddings for a head), a Dataset yielding ``x`` or ``(x, y)``,
    or a DataLoader. The model is run in eval mode and its previous mode restored.
    """
    device = torch.device(device)
    if isinstance(data, np.ndarray | torch.Tensor):
        data = TensorDataset(
            torch.as_tensor(np.asarray(data) if isinstance(data, np.ndarray) else data).float()
        )
    loader = data if isinstance(data, DataLoader) else _loader(data, batch_size, num_workers)
    was_training = model_or_head.training
    model_or_head.eval()
    out: list[torch.Tensor] = []
    try:
        for batch in loader:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            with autocast(device, precision):
                logits = model_or_head(x.to(device).float())
            out.append(_logits_to_probs(logits).cpu())
    finally:
        model_or_head.train(was_training)
    if not out:
        return np.zeros((0,), dtype=np.float32)
    return torch.cat(out).numpy()


def _select_score(config: ClassifierConfig, labels: np.ndarray, probs: np.ndarray) -> float:
    if config.binary:
        return float(binary_metrics(labels.astype(np.int64), probs, n_boot=0)["auroc"])
    predicted = probs.argmax(axis=1)
    return float(
        multiclass_metrics(labels.astype(np.int64), predicted, n_classes=config.n_classes, n_boot=0)[
            "accuracy"
        ]
    )


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _check_labels(config: ClassifierConfig, labels: np.ndarray, what: str) -> None:
    if config.binary:
        _binary_labels(labels)
    elif not np.isin(labels, np.arange(config.n_classes)).all():
        raise ValueError(f"{what} labels must be integers in 0..{config.n_classes - 1}")


def train_classifier(
    model: nn.Module,
    train_ds: Dataset,
    select_ds: Dataset,
    config: ClassifierConfig,
    *,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Train ``model`` (outputs ``[B, n_classes]`` logits) and select the best epoch on ``select_ds``.

    Datasets yield ``(input, label)``. Returns ``(best_state, history)``: a CPU copy of the state dict of
    the selected epoch (also loaded into ``model`` on return) and the per-epoch rows (module docstring).
    An :class:`EncoderClassifier` must match ``config.mode`` (frozen encoder iff ``linear_probe``).
    """
    device = torch.device(device)
    if isinstance(model, EncoderClassifier) and model.freeze_encoder != (config.mode == "linear_probe"):
        raise ValueError(
            f"config.mode={config.mode!r} but the model's encoder is "
            f"{'' if model.freeze_encoder else 'not '}frozen"
        )
    if len(cast(Sized, train_ds)) == 0 or len(cast(Sized, select_ds)) == 0:
        raise ValueError("train and select datasets must not be empty")
    precision = config.precision
    if precision != "fp32" and device.type != "cuda":
        log.info(
            "precision %s requested on %s: running fp32 (autocast is used on CUDA only)", precision, device
        )
        precision = "fp32"

    train_labels = _dataset_labels(train_ds)
    select_labels = _dataset_labels(select_ds)
    _check_labels(config, train_labels, "training")
    _check_labels(config, select_labels, "select")
    if config.balanced_sampler and config.weighted_loss and config.binary:
        log.warning("balanced sampler and weighted BCE are both on: the class imbalance is corrected twice")

    seed_everything(config.seed)
    model.to(device)
    criterion = build_loss(config, train_labels).to(device)
    if config.binary and config.weighted_loss:
        log.info(
            "BCE pos_weight %.4f (%s)",
            cast(torch.Tensor, criterion.pos_weight).item(),  # BCEWithLogitsLoss with a pos_weight
            "given" if config.pos_weight else "training rows",
        )
    sampler = balanced_sampler(train_labels, seed=config.seed) if config.balanced_sampler else None
    generator = torch.Generator().manual_seed(int(config.seed))
    train_loader = _loader(
        train_ds, config.batch_size, config.num_workers, sampler=sampler, generator=generator
    )
    select_loader = _loader(select_ds, config.batch_size, config.num_workers)

    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = min(int(round(config.warmup_epochs * steps_per_epoch)), total_steps)
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    metric = select_metric_name(config)
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_score, best_index = -math.inf, -1
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, batches = 0.0, 0
        for x, y in train_loader:
            x = x.to(device, non_blocking=True).float()
            y = y.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            if config.binary:
                loss = criterion(logits.reshape(-1), y.float().reshape(-1))
            else:
                loss = criterion(logits, y.long().reshape(-1))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch}: {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            batches += 1
        probs = predict(model, select_loader, device=device, precision=precision)
        score = _select_score(config, select_labels, probs)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(batches, 1),
                "lr": float(optimizer.param_groups[0]["lr"]),
                metric: score,
                "selected": False,
            }
        )
        log.info("epoch %d: train loss %.4f, %s %.4f", epoch, history[-1]["train_loss"], metric, score)
        if best_state is None or (not math.isnan(score) and score > best_score):
            best_score = -math.inf if math.isnan(score) else score
            best_index = epoch - 1
            best_state = _state_copy(model)
    history[best_index]["selected"] = True
    assert best_state is not None  # set in the first epoch (history[best_index] exists)
    model.load_state_dict(best_state)
    return best_state, history


def train_head_on_embeddings(
    train_x,
    train_y,
    select_x,
    select_y,
    config: ClassifierConfig,
    *,
    device: str | torch.device = "cpu",
) -> tuple[nn.Linear, list[dict[str, Any]]]:
    """Linear probe on cached embeddings: a ``Linear(dim, n_classes)`` head (seeded init) trained by
    :func:`train_classifier`; returns ``(head in its selected state, on the CPU, in eval mode; history)``.
    """
    train_x, select_x = np.asarray(train_x, dtype=np.float32), np.asarray(select_x, dtype=np.float32)
    if train_x.ndim != 2 or select_x.ndim != 2 or train_x.shape[1] != select_x.shape[1]:
        raise ValueError(
            f"embeddings must be [N, D] with the same D, got {train_x.shape} and {select_x.shape}"
        )
    train_y, select_y = np.asarray(train_y).reshape(-1), np.asarray(select_y).reshape(-1)
    if len(train_y) != len(train_x) or len(select_y) != len(select_x):
        raise ValueError("embeddings and labels must have the same number of rows")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = nn.Linear(train_x.shape[1], config.n_classes)
    train_ds = TensorDataset(torch.from_numpy(train_x), torch.as_tensor(train_y.astype(np.float32)))
    select_ds = TensorDataset(torch.from_numpy(select_x), torch.as_tensor(select_y.astype(np.float32)))
    _, history = train_classifier(head, train_ds, select_ds, config, device=device)
    return head.cpu().eval(), history
