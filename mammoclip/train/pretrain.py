"""Resumable CLIP pre-training loop (single process or DDP under ``torchrun``).

Upstream (docs/upstream.md#pretraining) trains with a single AdamW group, a per-iteration warmup-cosine
schedule, fp16 autocast, no accumulation or clipping, no logit-scale clamp; its DDP trainer stops every
epoch after 11 batches and its resume restores model weights only. :func:`train_clip` keeps the objective
and schedule and fixes the rest. It is built, as open_clip's ``main``, from :func:`setup_training` (data,
model, optimiser: a :class:`TrainRun` and a :class:`TrainState`), :func:`resume` (``last.pt``),
:func:`train_one_epoch`, :func:`validate` and :func:`end_epoch` (best checkpoint, ``last.pt``).

Data
    Training batches come from a :class:`~torch.utils.data.DistributedSampler` in *every* launch (with
    ``num_replicas=1`` in a single process): the epoch's order is ``randperm`` seeded by ``(seed, epoch)``
    and rank ``r`` takes positions ``r, r+W, ...``, so the global batch of step ``k`` (the union of the
    ranks' local batches) is the same set of samples whatever the number of ranks; W ranks with batch B
    train exactly like one process with batch W·B (when the dataset size is a multiple of W; otherwise the
    sampler pads the epoch by repeating up to W-1 samples so that all ranks get equal batches). Every
    batch is used (``drop_last`` drops only a final incomplete batch per rank, as upstream's single-process
    loader). DataLoader workers get seeds derived
    from ``(seed, epoch, rank)`` and seed ``random`` / ``numpy`` from them (``worker_init_fn``). Before
    each epoch ``set_epoch(epoch)`` (1-based) is called on the training dataset, or on the datasets it wraps
    (``ConcatDataset.datasets``, ``Subset.dataset``), when they have that method (the pre-training datasets
    draw their augmentations from ``(seed, epoch, index)``).
    The collate function returns ``{"images", "input_ids", "attention_mask"}`` and optionally
    ``"images2"``, ``"input_ids2"``, ``"attention_mask2"``, ``"text_ids"``, ``"text2_ids"`` (see
    :mod:`mammoclip.train.loss`).
Model and DDP
    BERT's pooler is never used by any text pooling, so with ``freeze_text_pooler`` (default) its parameters
    get ``requires_grad=False``: DDP then needs no ``find_unused_parameters`` graph search, and training is
    unchanged (AdamW skips parameters without gradients, as upstream's pooler never received one). The
    pooler keys stay in the checkpoint. Set ``find_unused_parameters=True`` for models with other unused
    parameters.
Step
    Gradient accumulation over ``grad_accum_steps`` micro-batches (``no_sync`` in between; the last group of
    an epoch may be shorter and is averaged over its own size): effective batch = batch · accum · world.
    The contrastive negatives are those of one micro-batch gathered over ranks (batch · world), not of the
    whole accumulation group. Optional gradient-norm clipping; autocast bf16 / fp16 and channels-last only on
    CUDA (the CPU always trains in fp32 channels-first); a GradScaler only for fp16. After each optimiser step
    the scheduler steps and ``logit_scale`` is clamped to ``clamp_logit_scale`` (ln 100; ``None`` = off).
Validation
    After every epoch, under ``torch.no_grad`` in eval mode, with RNGs forked and seeded identically each
    time (so validation is repeatable and does not perturb the training RNG stream), on a non-shuffled
    ``DistributedSampler`` (which pads with at most W-1 repeated samples), rank 0's BatchNorm statistics
    broadcast to all ranks first; the per-sample mean loss over all ranks. Label smoothing is not applied.
    Without a validation set the best epoch is chosen by the training loss (logged).

Files in ``out_dir``:

``last.pt``
    Written atomically after every epoch (``torch.save``, loads with ``weights_only=True``)::

        {"format": "mammoclip-train-state", "version": 1,
         "epoch": completed epochs (1-based), "global_step": optimiser steps so far,
         "best_val_loss": float or None, "best_epoch": int or None,
         "model": MammoClip.state_dict(), "optimizer": ..., "scheduler": ..., "scaler": GradScaler state,
         "rng": [per rank: {"python", "numpy", "torch", "cuda"}],
         "loader": {"sampler_seed", "sampler_epoch", "generator_seed_rule"},
         "config": TrainConfig as a dict, "world_size": W, "steps_per_epoch", "total_steps",
         "warmup_steps", "code_version", "metadata"}

    Calling :func:`train_clip` again with the same ``out_dir`` resumes from it (logged) and continues
    bit-for-bit as an uninterrupted run would (on the CPU; on GPUs up to non-deterministic kernels). A run
    interrupted *inside* an epoch restarts that epoch from its beginning; rows and TensorBoard events of the
    lost partial epoch are dropped. Resuming needs the same ``TrainConfig`` (``num_workers`` and
    ``log_every`` may change; a ``last.pt`` written with the old field names ``warmup`` / ``no_decay_for``
    is read through :meth:`TrainConfig.from_dict`) and the same world size, else :class:`ValueError` (use a
    new ``out_dir``). A finished run returns the best checkpoint at once.
``model-best.tar``
    The epoch with the lowest validation loss, written with
    :func:`mammoclip.checkpoints.save_clip_checkpoint` (released key layout under ``"model"``, tokenizer
    embedded); its metadata holds the caller's ``metadata`` plus ``epoch``, ``global_step``, ``val_loss``,
    ``train_loss``, ``seed``, ``train_config``, ``world_size``, ``effective_batch_size``, ``selected_by``.
``metrics.csv``
    ``epoch, step, split, loss, i2t, t2i, i2i, t2t, lr, logit_scale, images_per_s``; ``split`` is
    ``train_step`` (every ``log_every`` optimiser steps and at the end of an epoch: the mean over the
    micro-batches since the previous row, over all ranks), ``train`` (epoch mean) or ``val``. ``step`` is
    the global optimiser step, ``lr`` the learning rate of the last step, ``logit_scale`` the multiplier
    ``exp(logit_scale)`` (1 / temperature), ``images_per_s`` the images encoded per second over all ranks
    (two per sample with a second view).
``tensorboard/``
    The same scalars (``train_step/*``, ``train/*``, ``val/*``, ``lr``, ``logit_scale``) against the step.

Only rank 0 writes files and shows the tqdm bar; every rank returns the path of ``model-best.tar``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import get_cosine_schedule_with_warmup

from mammoclip.io import atomic_write
from mammoclip.train import distributed as du
from mammoclip.train.loss import LOSS_KEYS, clip_loss
from mammoclip.train.optim import build_optimizer
from mammoclip.train.precision import PRECISIONS, autocast
from mammoclip.train.settings import FROM_SCHEMA, fill_from_schema, schema_defaults

if TYPE_CHECKING:
    from mammoclip.models.clip import MammoClip

log = logging.getLogger(__name__)

#: the old ``no_decay_for`` rules (read from older checkpoints' configs)
NO_DECAY_FOR: tuple[str, ...] = ("bias", "norm", "logit_scale")

STATE_FORMAT = "mammoclip-train-state"
STATE_VERSION = 1
LAST = "last.pt"
BEST = "model-best.tar"
METRICS = "metrics.csv"
TENSORBOARD = "tensorboard"
METRIC_COLUMNS = ("epoch", "step", "split", *LOSS_KEYS, "lr", "logit_scale", "images_per_s")
#: TrainConfig fields that may differ between a run and its resumption
RESUME_MAY_CHANGE = frozenset({"num_workers", "log_every"})
_SALT_TRAIN, _SALT_VAL = 1, 2


@dataclass
class TrainConfig:
    """Pre-training settings: the trainer's keys of the schema's ``pretrain`` section, under the same names
    (defaults and descriptions live there; a field left out gets the schema's default), plus ``seed``.

    ``warmup_epochs``: a whole number is a number of epochs (``min(w · steps_per_epoch, total)`` steps), a
    fractional one ``w`` is ``round(w / epochs · total)`` steps. ``precision``: ``fp32`` | ``bf16`` | ``fp16``
    (CUDA only). ``seed``: sampler order, loader-worker seeds, and the global RNGs of rank ``r`` (seeded with
    ``derive_seed(seed, r)`` at the start of a fresh run; the model itself is built, and so initialised, by
    the caller); left out, the schema's top-level ``seed``. Build one from a config with :meth:`from_config`.
    """

    epochs: int = FROM_SCHEMA
    lr: float = FROM_SCHEMA
    weight_decay: float = FROM_SCHEMA
    no_weight_decay_for_norms_biases_and_scale: bool = FROM_SCHEMA
    warmup_epochs: int | float = FROM_SCHEMA
    grad_accum_steps: int = FROM_SCHEMA
    max_grad_norm: float | None = FROM_SCHEMA
    precision: str = FROM_SCHEMA
    channels_last: bool = FROM_SCHEMA
    batch_size: int = FROM_SCHEMA
    val_batch_size: int | None = FROM_SCHEMA
    num_workers: int = FROM_SCHEMA
    drop_last: bool = FROM_SCHEMA
    seed: int = FROM_SCHEMA
    clamp_logit_scale: float | None = FROM_SCHEMA
    i2i_weight: float = FROM_SCHEMA
    t2t_weight: float = FROM_SCHEMA
    label_smoothing: float = FROM_SCHEMA
    mask_false_negatives: bool = FROM_SCHEMA
    freeze_text_pooler: bool = FROM_SCHEMA
    find_unused_parameters: bool = FROM_SCHEMA
    cudnn_benchmark: bool = FROM_SCHEMA
    log_every: int = FROM_SCHEMA

    def __post_init__(self) -> None:
        fill_from_schema(self, {**schema_defaults("pretrain"), "seed": schema_defaults("seed")})
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ValueError(f"val_batch_size must be >= 1, got {self.val_batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        warmup = self.warmup_epochs
        if isinstance(warmup, bool) or not isinstance(warmup, int | float):
            raise ValueError(f"warmup_epochs must be a number, got {warmup!r}")
        if isinstance(warmup, float) and warmup.is_integer():
            self.warmup_epochs = warmup = int(warmup)
        if warmup < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup}")
        if isinstance(warmup, float) and warmup > self.epochs:
            raise ValueError(f"a fractional warmup_epochs must be at most epochs={self.epochs}, got {warmup}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @classmethod
    def from_config(cls, pretrain_section: Mapping[str, Any], *, seed: int, legacy: bool) -> TrainConfig:
        """From the (schema-validated) ``pretrain`` section of a config; its model and data keys are not
        the trainer's and are ignored. ``legacy``: no ``logit_scale`` clamp (upstream never clamps)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"seed"}
        values = {k: v for k, v in pretrain_section.items() if k in names}
        if legacy:
            values["clamp_logit_scale"] = None
        return cls(**values, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (e.g. a checkpoint's ``config``); unknown keys raise ``ValueError``.

        Also reads the field names of older checkpoints: ``warmup`` (an int: epochs; a float in [0, 1]: a
        fraction of the total steps, i.e. ``warmup · epochs`` epochs) and ``no_decay_for`` (``()``, or the
        rules ``bias``, ``norm``, ``logit_scale``)."""
        data = dict(data)
        if "warmup" in data:
            if "warmup_epochs" in data:
                raise ValueError("give warmup_epochs or the old warmup, not both")
            warmup = data.pop("warmup")
            if isinstance(warmup, bool) or not isinstance(warmup, int | float):
                raise ValueError(f"warmup must be an int (epochs) or a float (fraction), got {warmup!r}")
            if isinstance(warmup, float):
                if not 0.0 <= warmup <= 1.0:
                    raise ValueError(
                        f"a float warmup is a fraction of the total steps in [0, 1], got {warmup}"
                    )
                warmup = warmup * data.get("epochs", schema_defaults("pretrain", "epochs"))
            data["warmup_epochs"] = warmup
        if "no_decay_for" in data:
            if "no_weight_decay_for_norms_biases_and_scale" in data:
                raise ValueError("give no_weight_decay_for_norms_biases_and_scale or the old no_decay_for")
            rules = set(data.pop("no_decay_for"))
            if rules and rules != set(NO_DECAY_FOR):
                raise ValueError(f"no_decay_for must be () or {list(NO_DECAY_FOR)}, got {sorted(rules)}")
            data["no_weight_decay_for_norms_biases_and_scale"] = bool(rules)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def warmup_steps(self, steps_per_epoch: int, total_steps: int) -> int:
        """The warmup length in optimiser steps (see the class docstring)."""
        if isinstance(self.warmup_epochs, int):
            return min(self.warmup_epochs * steps_per_epoch, total_steps)
        return int(round(self.warmup_epochs / self.epochs * total_steps))


# --------------------------------------------------------------------------------------------------------
# RNG, seeding, files
# --------------------------------------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (``numpy.random.SeedSequence``), the same on every platform."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)[0])


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:  # noqa: ARG001 - DataLoader worker_init_fn signature
    """DataLoader ``worker_init_fn``: seed ``random`` and ``numpy`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as weights-only-safe plain data."""
    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": int(npst["pos"])},
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def _isolated_rng(seed: int, device: torch.device):
    """Run the block with all RNGs seeded by ``seed``, restoring the previous states afterwards."""
    py, npst = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npst)


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``last.pt`` (weights-only, onto the CPU) and check its format."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a mammoclip training state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training-state version {state.get('version')} is not {STATE_VERSION}")
    return state


class MetricsLog:
    """Append-only ``metrics.csv`` (rank 0): header once, rows flushed as written."""

    def __init__(self, path: Path, *, keep_epochs_up_to: int | None) -> None:
        self.path = path
        if keep_epochs_up_to is None:
            path.unlink(missing_ok=True)
        elif path.exists():
            # drop rows of an epoch that was interrupted after the state we resume from
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_epochs_up_to]
            with atomic_write(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        new = not path.exists()
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS)
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(getattr(model, "module", None), nn.Module):
        model = cast(nn.Module, model.module)
    return getattr(model, "_orig_mod", model)


def set_dataset_epoch(dataset: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on ``dataset`` or, through ConcatDataset / Subset, on what it wraps."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
        return
    for part in getattr(dataset, "datasets", None) or ():
        set_dataset_epoch(part, epoch)
    inner = getattr(dataset, "dataset", None)
    if isinstance(inner, Dataset):
        set_dataset_epoch(inner, epoch)


def _to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def _forward_loss(model: nn.Module, batch: Mapping[str, Any], config: TrainConfig, *, train: bool):
    out = model(
        batch["images"],
        batch["input_ids"],
        batch["attention_mask"],
        input_ids2=batch.get("input_ids2"),
        attention_mask2=batch.get("attention_mask2"),
        images2=batch.get("images2"),
    )
    losses = clip_loss(
        out["image_embeddings"],
        out["text_embeddings"],
        image_view=out["image_view_embeddings"],
        text2=out["text_embeddings2"],
        logit_scale=out["logit_scale"],
        i2i_weight=config.i2i_weight,
        t2t_weight=config.t2t_weight,
        label_smoothing=config.label_smoothing if train else 0.0,
        text_ids=batch.get("text_ids"),
        text2_ids=batch.get("text2_ids") if batch.get("input_ids2") is not None else None,
        mask_false_negatives=config.mask_false_negatives,
        gather=True,
    )
    return losses


def _images_in(batch: Mapping[str, Any]) -> int:
    n = int(batch["images"].shape[0])
    return n * (2 if batch.get("images2") is not None else 1)


def _stack(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([losses[k].detach().float() for k in LOSS_KEYS])


def _typed(value: Any) -> Any:
    # 1 (epochs) and 1.0 (a fraction) must not compare equal
    if isinstance(value, list | tuple):
        return tuple(_typed(v) for v in value)
    return (type(value).__name__, value)


def _check_resumable(state: Mapping[str, Any], config: TrainConfig, world: int, path: Path) -> None:
    try:  # the settings as this version names them (last.pt of older versions: warmup, no_decay_for)
        saved = TrainConfig.from_dict(state.get("config") or {}).to_dict()
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path} was written with training settings this version cannot read ({err}). Use a new output "
            "folder."
        ) from None
    now = config.to_dict()
    diff = sorted(
        k
        for k in set(saved) | set(now)
        if k not in RESUME_MAY_CHANGE and _typed(saved.get(k)) != _typed(now.get(k))
    )
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise ValueError(
            f"{path} was written with different training settings ({details}); resuming would not continue "
            "the same run. Use a new output folder, or restore the settings."
        )
    if int(state.get("world_size", 1)) != world:
        raise ValueError(
            f"{path} was written by {state.get('world_size')} process(es), this launch has {world}: the "
            "batches, the schedule and the per-rank RNG states would differ. Relaunch with the same number "
            "of processes or use a new output folder."
        )


@dataclass
class TrainState:
    """What one epoch hands to the next (and ``last.pt`` keeps): the model being trained (unwrapped), its
    optimiser, scheduler and GradScaler, the counters, the best epoch so far, and the RNG states to restore
    when resuming (this rank's entry of ``last.pt["rng"]``). The sampler and the loader generator carry no
    state: they are reseeded from ``(seed, epoch, rank)`` every epoch."""

    model: MammoClip
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    epoch: int = 0  # completed epochs
    global_step: int = 0  # optimiser steps so far
    best_val: float | None = None
    best_epoch: int | None = None
    last_lr: float = 0.0  # the learning rate of the last optimiser step
    rng: Mapping[str, Any] | None = None


@dataclass
class TrainRun:
    """The fixed parts of a run: settings, this process's place, files, data and the schedule's length."""

    config: TrainConfig
    info: du.DistInfo
    out: Path
    precision: str  # what runs: fp32 on the CPU whatever the config says
    channels_last: bool
    train_dataset: Dataset
    sampler: DistributedSampler
    generator: torch.Generator
    loader: DataLoader
    val_loader: DataLoader | None
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    tokenizer: Any
    metadata: Mapping[str, Any]
    train_model: nn.Module | None = None  # the model or its DDP wrapper (:func:`wrap_model`)

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def world(self) -> int:
        return self.info.world_size

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def last_path(self) -> Path:
        return self.out / LAST

    @property
    def best_path(self) -> Path:
        return self.out / BEST

    @property
    def n_batches(self) -> int:
        return len(self.loader)


def setup_training(
    model: nn.Module,
    tokenizer: Any,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    collate_fn: Callable[[list[Any]], Mapping[str, Any]],
    *,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    metadata: Mapping[str, Any],
) -> tuple[TrainRun, TrainState]:
    """Start (or join) the process group, place the model, build loaders, optimiser, schedule and scaler."""
    info = du.init_distributed()
    device, world, rank = info.device, info.world_size, info.rank
    out = Path(out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    du.barrier()

    on_cuda = device.type == "cuda"
    precision = config.precision if on_cuda else "fp32"
    if config.precision != "fp32" and not on_cuda:
        log.info("precision %s requested but training on the CPU: using fp32", config.precision)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision bf16 requested but this GPU does not support bfloat16; use fp16")
    channels_last = bool(config.channels_last and on_cuda)
    if on_cuda:
        torch.backends.cudnn.benchmark = bool(config.cudnn_benchmark)

    raw = cast("MammoClip", _unwrap(model))  # train_clip trains a MammoClip
    pooler = getattr(getattr(getattr(raw, "text_encoder", None), "text_encoder", None), "pooler", None)
    if config.freeze_text_pooler and isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)
    raw.to(device)
    if channels_last:
        raw.to(memory_format=torch.channels_last)

    sampler: DistributedSampler[int] = DistributedSampler(
        train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=False
    )
    generator = torch.Generator()
    loader = DataLoader(
        train_dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate_fn,
        pin_memory=on_cuda,
        drop_last=config.drop_last,
        worker_init_fn=seed_worker,
        generator=generator,
    )
    n_batches = len(loader)
    if n_batches == 0:
        raise ValueError(
            f"the training set ({len(cast(Sized, train_dataset))} samples over {world} process(es)) gives "
            f"no complete batch of {config.batch_size}; lower batch_size or set drop_last=False"
        )
    val_loader = None
    if val_dataset is not None and len(cast(Sized, val_dataset)) > 0:
        val_loader = DataLoader(
            val_dataset,
            batch_size=config.val_batch_size or config.batch_size,
            sampler=DistributedSampler(val_dataset, num_replicas=world, rank=rank, shuffle=False),
            num_workers=config.num_workers,
            collate_fn=collate_fn,
            pin_memory=on_cuda,
            drop_last=False,
            worker_init_fn=seed_worker,
            generator=torch.Generator(),
        )
    elif info.is_main:
        log.warning("no validation set: the best checkpoint is chosen by the training loss")

    steps_per_epoch = math.ceil(n_batches / config.grad_accum_steps)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = config.warmup_steps(steps_per_epoch, total_steps)
    optimizer = build_optimizer(
        raw,
        lr=config.lr,
        weight_decay=config.weight_decay,
        exclude_norms_biases_and_scale=config.no_weight_decay_for_norms_biases_and_scale,
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    scaler = torch.amp.GradScaler("cuda" if on_cuda else "cpu", enabled=precision == "fp16")
    run = TrainRun(
        config=config,
        info=info,
        out=out,
        precision=precision,
        channels_last=channels_last,
        train_dataset=train_dataset,
        sampler=sampler,
        generator=generator,
        loader=loader,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        tokenizer=tokenizer,
        metadata=metadata,
    )
    return run, TrainState(model=raw, optimizer=optimizer, scheduler=scheduler, scaler=scaler)


def resume(run: TrainRun, state: TrainState) -> bool:
    """Load ``last.pt`` into ``state`` when there is one (or clear leftovers of a run that never finished
    an epoch); True when that run has already finished (nothing to train)."""
    config, is_main = run.config, run.info.is_main
    if run.last_path.exists():
        saved = load_train_state(run.last_path)
        _check_resumable(saved, config, run.world, run.last_path)
        state.epoch, state.global_step = int(saved["epoch"]), int(saved["global_step"])
        state.best_val, state.best_epoch = saved.get("best_val_loss"), saved.get("best_epoch")
        if state.epoch >= config.epochs:
            if is_main:
                log.info(
                    "%s: training already finished (%d epochs); nothing to do", run.last_path, state.epoch
                )
            if not run.best_path.exists():
                raise FileNotFoundError(
                    f"{run.last_path} says training finished but {run.best_path} is missing"
                )
            du.barrier()
            return True
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        state.scaler.load_state_dict(saved["scaler"])
        state.rng = saved["rng"][run.rank]
        if is_main:
            log.info(
                "resuming from %s: %d of %d epochs done, step %d, best validation loss %s",
                run.last_path,
                state.epoch,
                config.epochs,
                state.global_step,
                state.best_val,
            )
        del saved
    elif is_main:
        # leftovers of a run that never completed an epoch
        run.best_path.unlink(missing_ok=True)
        shutil.rmtree(run.out / TENSORBOARD, ignore_errors=True)
        log.info(
            "training from scratch: %d epochs x %d steps (warmup %d), batch %d x accum %d x %d "
            "process(es) = %d, precision %s, device %s",
            config.epochs,
            run.steps_per_epoch,
            run.warmup_steps,
            config.batch_size,
            config.grad_accum_steps,
            run.world,
            config.batch_size * config.grad_accum_steps * run.world,
            run.precision,
            run.device,
        )
    du.barrier()
    return False


def wrap_model(run: TrainRun, state: TrainState) -> nn.Module:
    """The module the training steps call: the model itself, or its DDP wrapper with several ranks."""
    if run.world > 1:
        return nn.parallel.DistributedDataParallel(
            state.model,
            device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=run.config.find_unused_parameters,
        )
    return state.model


def start_rng(run: TrainRun, state: TrainState) -> None:
    """Restore the RNG states of ``last.pt`` or seed a fresh run (called last, right before training)."""
    if state.rng is not None:
        restore_rng(state.rng)
    else:
        seed_everything(derive_seed(run.config.seed, run.rank))


class Recorder:
    """``metrics.csv`` and TensorBoard rows (rank 0; a no-op elsewhere). A resumed run drops the rows of an
    epoch it lost and purges the TensorBoard events after its step."""

    def __init__(self, run: TrainRun, state: TrainState) -> None:
        self.metrics: MetricsLog | None = None
        self.writer: Any = None
        if run.info.is_main:
            resumed = state.epoch > 0
            self.metrics = MetricsLog(run.out / METRICS, keep_epochs_up_to=state.epoch if resumed else None)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(run.out / TENSORBOARD), purge_step=state.global_step + 1 if resumed else None
            )

    def emit(
        self, split: str, epoch: int, state: TrainState, values: torch.Tensor, images_per_s: float
    ) -> None:
        if self.metrics is None:
            return
        step = state.global_step
        row = {"epoch": epoch, "step": step, "split": split, "lr": state.last_lr}
        row.update({k: float(v) for k, v in zip(LOSS_KEYS, values.tolist(), strict=True)})
        row["logit_scale"] = float(state.model.logit_scale.detach().exp())
        row["images_per_s"] = images_per_s
        self.metrics.write(row)
        for key in (*LOSS_KEYS, "images_per_s"):
            self.writer.add_scalar(f"{split}/{key}", row[key], step)
        if split == "train_step":
            self.writer.add_scalar("lr", state.last_lr, step)
            self.writer.add_scalar("logit_scale", row["logit_scale"], step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()


def train_one_epoch(
    run: TrainRun,
    state: TrainState,
    epoch: int,
    recorder: Recorder,
    on_step: Callable[[int, int], None] | None = None,
) -> float:
    """One pass over the training loader (accumulation, clipping, schedule, clamp, rows every
    ``log_every`` steps); returns the epoch's mean training loss over all ranks."""
    config, device, world, raw = run.config, run.device, run.world, state.model
    optimizer, scheduler, scaler = state.optimizer, state.scheduler, state.scaler
    train_model = run.train_model if run.train_model is not None else raw
    accum, n_batches = config.grad_accum_steps, run.n_batches
    params = [p for group in optimizer.param_groups for p in group["params"]]
    run.sampler.set_epoch(epoch)
    set_dataset_epoch(run.train_dataset, epoch)
    run.generator.manual_seed(derive_seed(config.seed, epoch, run.rank, _SALT_TRAIN))
    train_model.train()
    epoch_sum = torch.zeros(len(LOSS_KEYS), device=device)
    window_sum = torch.zeros(len(LOSS_KEYS), device=device)
    window_n = epoch_n = 0
    window_images = epoch_images = 0
    t_window = t_epoch = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_batches,
        desc=f"epoch {epoch}/{config.epochs}",
        disable=not run.info.is_main,
        dynamic_ncols=True,
        leave=False,
        # a log file (Snakemake rule) gets a line every 30 s, not every 0.1 s
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(run.loader):
        group_start = (i // accum) * accum
        group_size = min(accum, n_batches - group_start)
        step_now = i - group_start == group_size - 1
        batch = _to_device(batch, device, run.channels_last)
        sync: Any = contextlib.nullcontext()
        if world > 1 and not step_now:
            sync = cast("nn.parallel.DistributedDataParallel", train_model).no_sync()  # DDP when world > 1
        with sync:
            with autocast(device, run.precision):
                losses = _forward_loss(train_model, batch, config, train=True)
            scaler.scale(losses["loss"] / group_size).backward()
        stats = _stack(losses)
        window_sum += stats
        epoch_sum += stats
        window_n += 1
        epoch_n += 1
        images = _images_in(batch) * world
        window_images += images
        epoch_images += images
        bar.update(1)
        if not step_now:
            continue

        if config.max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        state.last_lr = float(scheduler.get_last_lr()[0])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if config.clamp_logit_scale is not None:
            raw.clamp_logit_scale(config.clamp_logit_scale)
        state.global_step += 1

        if state.global_step % config.log_every == 0 or i == n_batches - 1:
            values = du.reduce_mean(window_sum / window_n)
            now = time.perf_counter()
            rate = window_images / max(now - t_window, 1e-9)
            recorder.emit("train_step", epoch, state, values, rate)
            bar.set_postfix(loss=f"{float(values[0]):.4f}", img_s=f"{rate:.1f}")
            window_sum.zero_()
            window_n = window_images = 0
            t_window = now
        if on_step is not None:
            on_step(epoch, state.global_step)
    bar.close()
    train_values = du.reduce_mean(epoch_sum / epoch_n)
    recorder.emit(
        "train", epoch, state, train_values, epoch_images / max(time.perf_counter() - t_epoch, 1e-9)
    )
    return float(train_values[0])


@torch.no_grad()
def validate(run: TrainRun, state: TrainState) -> tuple[torch.Tensor, float]:
    """``(per-sample mean loss terms over all ranks, images per second)`` on the validation loader, in eval
    mode, with the RNGs seeded identically every time and restored afterwards."""
    raw, loader, config, device = state.model, run.val_loader, run.config, run.device
    if loader is None:
        raise ValueError("this run has no validation set")
    was_training = raw.training
    raw.eval()
    total = torch.zeros(len(LOSS_KEYS), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    images = 0
    start = time.perf_counter()
    try:
        with _isolated_rng(derive_seed(config.seed, run.rank, _SALT_VAL), device):
            loader.generator.manual_seed(derive_seed(config.seed, run.rank, _SALT_VAL))
            for batch in loader:
                batch = _to_device(batch, device, run.channels_last)
                with autocast(device, run.precision):
                    losses = _forward_loss(raw, batch, config, train=False)
                n = batch["images"].shape[0]
                total += _stack(losses).double() * n
                count += n
                images += _images_in(batch)
    finally:
        raw.train(was_training)
    total, count = du.reduce_sum(total), du.reduce_sum(count)
    rate = du.reduce_sum(float(images)) / max(time.perf_counter() - start, 1e-9)
    return (total / count).float(), rate


def end_epoch(run: TrainRun, state: TrainState, epoch: int, *, score: float, train_loss: float) -> None:
    """Keep the best epoch (lowest finite ``score``; rank 0 writes ``model-best.tar``), mark ``epoch`` done
    and write ``last.pt`` (rank 0, with every rank's RNG states)."""
    config, is_main, by_val = run.config, run.info.is_main, run.val_loader is not None
    if not math.isfinite(score) and is_main:
        log.warning("epoch %d: non-finite loss %s; it cannot become the best epoch", epoch, score)
    if math.isfinite(score) and (state.best_val is None or score < state.best_val):
        state.best_val, state.best_epoch = score, epoch
        if is_main:
            accum = config.grad_accum_steps
            meta = {
                **dict(run.metadata),
                "epoch": epoch,
                "global_step": state.global_step,
                "val_loss": score if by_val else None,
                "train_loss": train_loss,
                "seed": config.seed,
                "train_config": config.to_dict(),
                "world_size": run.world,
                "effective_batch_size": config.batch_size * accum * run.world,
                "selected_by": "val_loss" if by_val else "train_loss",
            }
            from mammoclip.checkpoints import save_clip_checkpoint

            save_clip_checkpoint(
                run.best_path,
                state.model,
                metadata=meta,
                tokenizer=run.tokenizer,
                epoch=epoch,
                train_loss=train_loss,
            )
            log.info("epoch %d is the best so far: wrote %s", epoch, run.best_path)
    state.epoch = epoch
    rng_states = du.all_gather_object(capture_rng())
    if is_main:
        _save_state(run.last_path, run=run, state=state, rng_states=rng_states)


def train_clip(
    model: nn.Module,
    tokenizer: Any,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    collate_fn: Callable[[list[Any]], Mapping[str, Any]],
    *,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    metadata: Mapping[str, Any],
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """Pre-train ``model`` (a :class:`~mammoclip.models.clip.MammoClip`); return ``out_dir/model-best.tar``.

    See the module docstring for data, DDP, the step, validation, resumption and the files written. Under
    ``torchrun`` the process group is started here if the caller has not (:func:`init_distributed`); the
    caller destroys it (:func:`~mammoclip.train.distributed.cleanup`). ``model`` is trained in place (moved
    to this rank's device). ``metadata`` (plain data) goes into both checkpoints. ``on_step(epoch,
    global_step)``, if given, is called on every rank after each optimiser step (progress hooks, tests).
    """
    run, state = setup_training(
        model,
        tokenizer,
        train_dataset,
        val_dataset,
        collate_fn,
        out_dir=out_dir,
        config=config,
        metadata=metadata,
    )
    if resume(run, state):
        return run.best_path
    run.train_model = wrap_model(run, state)
    recorder = Recorder(run, state)
    start_rng(run, state)
    state.last_lr = float(state.scheduler.get_last_lr()[0])
    try:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            train_loss = train_one_epoch(run, state, epoch, recorder, on_step)
            du.broadcast_buffers(state.model)
            if run.val_loader is not None:
                val_values, val_rate = validate(run, state)
                recorder.emit("val", epoch, state, val_values, val_rate)
                score = float(val_values[0])
            else:
                score = train_loss
            if run.info.is_main:
                log.info(
                    "epoch %d/%d: train loss %.5f, %s loss %.5f",
                    epoch,
                    config.epochs,
                    train_loss,
                    "val" if run.val_loader is not None else "train",
                    score,
                )
            end_epoch(run, state, epoch, score=score, train_loss=train_loss)
            recorder.flush()
            du.barrier()
    finally:
        recorder.close()
    if state.best_epoch is None:
        raise RuntimeError(f"no epoch had a finite loss (diverged?); see {run.out / METRICS}")
    return run.best_path


def _save_state(path: Path, *, run: TrainRun, state: TrainState, rng_states: list[Any]) -> None:
    from mammoclip.checkpoints import _plain_data
    from mammoclip.provenance import code_version

    config = run.config
    saved = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "epoch": int(state.epoch),
        "global_step": int(state.global_step),
        "best_val_loss": None if state.best_val is None else float(state.best_val),
        "best_epoch": state.best_epoch,
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": rng_states,
        "loader": {
            "sampler_seed": int(config.seed),
            "sampler_epoch": int(state.epoch),
            "generator_seed_rule": "derive_seed(seed, epoch, rank, 1) at the start of each epoch",
        },
        "config": config.to_dict(),
        "world_size": int(run.world),
        "steps_per_epoch": int(run.steps_per_epoch),
        "total_steps": int(run.total_steps),
        "warmup_steps": int(run.warmup_steps),
        "code_version": code_version(),
        "metadata": _plain_data(dict(run.metadata)),
    }
    _atomic_save(saved, path)
