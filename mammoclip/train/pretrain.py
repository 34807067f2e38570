"""Resumable CLIP pre-training loop (single process or DDP under ``torchrun``).

Upstream (upstream-mammoclip.md sections 6.2-6.4, 13.1) trains with a single AdamW group, a per-iteration
warmup-cosine schedule, fp16 autocast, no accumulation or clipping, no logit-scale clamp; its DDP trainer
stops every epoch after 11 batches and its resume restores model weights only. :func:`train_clip` keeps the
objective and schedule and fixes the rest:

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
    ``log_every`` may change) and the same world size, else :class:`ValueError` (use a new ``out_dir``).
    A finished run returns the best checkpoint at once.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mammoclip.models.clip import LOGIT_SCALE_MAX
from mammoclip.train import distributed as du
from mammoclip.train.loss import LOSS_KEYS, clip_loss
from mammoclip.train.optim import build_optimizer, warmup_cosine

log = logging.getLogger(__name__)

STATE_FORMAT = "mammoclip-train-state"
STATE_VERSION = 1
LAST = "last.pt"
BEST = "model-best.tar"
METRICS = "metrics.csv"
TENSORBOARD = "tensorboard"
METRIC_COLUMNS = ("epoch", "step", "split", *LOSS_KEYS, "lr", "logit_scale", "images_per_s")
PRECISIONS = ("fp32", "bf16", "fp16")
#: TrainConfig fields that may differ between a run and its resumption
RESUME_MAY_CHANGE = frozenset({"num_workers", "log_every"})

_SALT_TRAIN, _SALT_VAL = 1, 2


@dataclass
class TrainConfig:
    """Pre-training settings. Defaults follow upstream's configs (section 6.1) except where noted.

    ``warmup``: an ``int`` is a number of epochs (upstream ``warmup_epochs: 1``), a ``float`` in [0, 1] a
    fraction of the total optimiser steps (upstream's float form). ``precision``: ``fp32`` | ``bf16`` |
    ``fp16`` (CUDA only; upstream: fp16 AMP). ``clamp_logit_scale``: upper bound applied after every
    step (``None`` = upstream's no clamp). ``no_decay_for``: see :mod:`mammoclip.train.optim` (``()`` =
    upstream, everything decayed). ``val_batch_size``: defaults to ``batch_size``. ``seed``: sampler order,
    loader-worker seeds, and the global RNGs of rank ``r`` (seeded with ``derive_seed(seed, r)`` at the start
    of a fresh run; the model itself is built, and so initialised, by the caller). ``cudnn_benchmark``:
    upstream's ``True`` (faster, not bit-reproducible).
    """

    epochs: int = 15
    lr: float = 5e-5
    weight_decay: float = 1e-4
    no_decay_for: tuple[str, ...] = ("bias", "norm", "logit_scale")
    warmup: int | float = 1
    grad_accum_steps: int = 1
    max_grad_norm: float | None = None
    precision: str = "bf16"
    channels_last: bool = True
    batch_size: int = 4
    val_batch_size: int | None = None
    num_workers: int = 4
    drop_last: bool = True
    seed: int = 10
    clamp_logit_scale: float | None = LOGIT_SCALE_MAX
    i2i_weight: float = 1.0
    t2t_weight: float = 0.5
    label_smoothing: float = 0.0
    mask_false_negatives: bool = False
    freeze_text_pooler: bool = True
    find_unused_parameters: bool = False
    cudnn_benchmark: bool = True
    log_every: int = 10

    def __post_init__(self) -> None:
        self.no_decay_for = tuple(self.no_decay_for)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ValueError(f"val_batch_size must be >= 1, got {self.val_batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int | float):
            raise ValueError(f"warmup must be an int (epochs) or a float (fraction), got {self.warmup!r}")
        if isinstance(self.warmup, float) and not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"a float warmup is a fraction of the total steps in [0, 1], got {self.warmup}")
        if isinstance(self.warmup, int) and self.warmup < 0:
            raise ValueError(f"warmup epochs must be >= 0, got {self.warmup}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples become lists), as stored in checkpoints."""
        out = dataclasses.asdict(self)
        out["no_decay_for"] = list(self.no_decay_for)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (e.g. YAML); unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def warmup_steps(self, steps_per_epoch: int, total_steps: int) -> int:
        """The warmup length in optimiser steps (see the class docstring)."""
        if isinstance(self.warmup, int):
            return min(self.warmup * steps_per_epoch, total_steps)
        return int(round(self.warmup * total_steps))


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, path)
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
        model = model.module
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
    saved = dict(state.get("config") or {})
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
    info = du.init_distributed()
    device, world, rank = info.device, info.world_size, info.rank
    out = Path(out_dir)
    last_path, best_path = out / LAST, out / BEST
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    du.barrier()

    on_cuda = device.type == "cuda"
    precision = config.precision if on_cuda else "fp32"
    if config.precision != "fp32" and not on_cuda:
        log.info("precision %s requested but training on the CPU: using fp32", config.precision)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision bf16 requested but this GPU does not support bfloat16; use fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    channels_last = bool(config.channels_last and on_cuda)
    if on_cuda:
        torch.backends.cudnn.benchmark = bool(config.cudnn_benchmark)

    raw = _unwrap(model)
    pooler = getattr(getattr(getattr(raw, "text_encoder", None), "text_encoder", None), "pooler", None)
    if config.freeze_text_pooler and isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)
    raw.to(device)
    if channels_last:
        raw.to(memory_format=torch.channels_last)

    # ---- data ----
    sampler = DistributedSampler(
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
            f"the training set ({len(train_dataset)} samples over {world} process(es)) gives no complete "
            f"batch of {config.batch_size}; lower batch_size or set drop_last=False"
        )
    val_loader = None
    if val_dataset is not None and len(val_dataset) > 0:
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

    accum = config.grad_accum_steps
    steps_per_epoch = math.ceil(n_batches / accum)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = config.warmup_steps(steps_per_epoch, total_steps)

    optimizer = build_optimizer(
        raw, lr=config.lr, weight_decay=config.weight_decay, no_decay_for=config.no_decay_for
    )
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)
    scaler = torch.amp.GradScaler("cuda" if on_cuda else "cpu", enabled=precision == "fp16")
    params = [p for group in optimizer.param_groups for p in group["params"]]

    # ---- resume or start ----
    start_epoch, global_step, best_val, best_epoch = 0, 0, None, None
    rng_to_restore = None
    if last_path.exists():
        state = load_train_state(last_path)
        _check_resumable(state, config, world, last_path)
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        best_val, best_epoch = state.get("best_val_loss"), state.get("best_epoch")
        if start_epoch >= config.epochs:
            if info.is_main:
                log.info("%s: training already finished (%d epochs); nothing to do", last_path, start_epoch)
            if not best_path.exists():
                raise FileNotFoundError(f"{last_path} says training finished but {best_path} is missing")
            du.barrier()
            return best_path
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rng_to_restore = state["rng"][rank]
        if info.is_main:
            log.info(
                "resuming from %s: %d of %d epochs done, step %d, best validation loss %s",
                last_path,
                start_epoch,
                config.epochs,
                global_step,
                best_val,
            )
        del state
    else:
        if info.is_main:
            # leftovers of a run that never completed an epoch
            best_path.unlink(missing_ok=True)
            shutil.rmtree(out / TENSORBOARD, ignore_errors=True)
            log.info(
                "training from scratch: %d epochs x %d steps (warmup %d), batch %d x accum %d x %d "
                "process(es) = %d, precision %s, device %s",
                config.epochs,
                steps_per_epoch,
                warmup_steps,
                config.batch_size,
                accum,
                world,
                config.batch_size * accum * world,
                precision,
                device,
            )
    du.barrier()

    train_model: nn.Module = raw
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            raw,
            device_ids=[device.index] if on_cuda else None,
            find_unused_parameters=config.find_unused_parameters,
        )

    metrics = writer = None
    if info.is_main:
        metrics = MetricsLog(out / METRICS, keep_epochs_up_to=start_epoch if start_epoch else None)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / TENSORBOARD), purge_step=global_step + 1 if start_epoch else None)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=amp_dtype)

    def emit(split: str, epoch: int, values: torch.Tensor, images_per_s: float) -> None:
        if not info.is_main:
            return
        row = {"epoch": epoch, "step": global_step, "split": split, "lr": last_lr}
        row.update({k: float(v) for k, v in zip(LOSS_KEYS, values.tolist(), strict=True)})
        row["logit_scale"] = float(raw.logit_scale.detach().exp())
        row["images_per_s"] = images_per_s
        metrics.write(row)
        for key in (*LOSS_KEYS, "images_per_s"):
            writer.add_scalar(f"{split}/{key}", row[key], global_step)
        if split == "train_step":
            writer.add_scalar("lr", last_lr, global_step)
            writer.add_scalar("logit_scale", row["logit_scale"], global_step)

    # RNG set-up last, so that nothing above can consume random numbers in between
    if rng_to_restore is not None:
        restore_rng(rng_to_restore)
    else:
        seed_everything(derive_seed(config.seed, rank))
    last_lr = float(scheduler.get_last_lr()[0])
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            sampler.set_epoch(epoch)
            set_dataset_epoch(train_dataset, epoch)
            generator.manual_seed(derive_seed(config.seed, epoch, rank, _SALT_TRAIN))
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
                disable=not info.is_main,
                dynamic_ncols=True,
                leave=False,
                # a log file (Snakemake rule) gets a line every 30 s, not every 0.1 s
                mininterval=1.0 if sys.stderr.isatty() else 30.0,
            )
            optimizer.zero_grad(set_to_none=True)
            for i, batch in enumerate(loader):
                group_start = (i // accum) * accum
                group_size = min(accum, n_batches - group_start)
                step_now = i - group_start == group_size - 1
                batch = _to_device(batch, device, channels_last)
                sync = contextlib.nullcontext()
                if world > 1 and not step_now:
                    sync = train_model.no_sync()
                with sync:
                    with autocast():
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
                last_lr = float(scheduler.get_last_lr()[0])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if config.clamp_logit_scale is not None:
                    raw.clamp_logit_scale(config.clamp_logit_scale)
                global_step += 1

                if global_step % config.log_every == 0 or i == n_batches - 1:
                    values = du.reduce_mean(window_sum / window_n)
                    now = time.perf_counter()
                    rate = window_images / max(now - t_window, 1e-9)
                    emit("train_step", epoch, values, rate)
                    bar.set_postfix(loss=f"{float(values[0]):.4f}", img_s=f"{rate:.1f}")
                    window_sum.zero_()
                    window_n = window_images = 0
                    t_window = now
                if on_step is not None:
                    on_step(epoch, global_step)
            bar.close()
            train_values = du.reduce_mean(epoch_sum / epoch_n)
            emit("train", epoch, train_values, epoch_images / max(time.perf_counter() - t_epoch, 1e-9))
            train_loss = float(train_values[0])

            du.broadcast_buffers(raw)
            if val_loader is not None:
                val_values, val_rate = _validate(
                    raw, val_loader, config, device, rank, autocast, channels_last
                )
                emit("val", epoch, val_values, val_rate)
                score = float(val_values[0])
            else:
                score = train_loss
            if info.is_main:
                log.info(
                    "epoch %d/%d: train loss %.5f, %s loss %.5f",
                    epoch,
                    config.epochs,
                    train_loss,
                    "val" if val_loader is not None else "train",
                    score,
                )

            if not math.isfinite(score) and info.is_main:
                log.warning("epoch %d: non-finite loss %s; it cannot become the best epoch", epoch, score)
            improved = math.isfinite(score) and (best_val is None or score < best_val)
            if improved:
                best_val, best_epoch = score, epoch
                if info.is_main:
                    meta = {
                        **dict(metadata),
                        "epoch": epoch,
                        "global_step": global_step,
                        "val_loss": score if val_loader is not None else None,
                        "train_loss": train_loss,
                        "seed": config.seed,
                        "train_config": config.to_dict(),
                        "world_size": world,
                        "effective_batch_size": config.batch_size * accum * world,
                        "selected_by": "val_loss" if val_loader is not None else "train_loss",
                    }
                    from mammoclip.checkpoints import save_clip_checkpoint

                    save_clip_checkpoint(
                        best_path, raw, metadata=meta, tokenizer=tokenizer, epoch=epoch, train_loss=train_loss
                    )
                    log.info("epoch %d is the best so far: wrote %s", epoch, best_path)

            rng_states = du.all_gather_object(capture_rng())
            if info.is_main:
                _save_state(
                    last_path,
                    raw=raw,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    rng_states=rng_states,
                    epoch=epoch,
                    global_step=global_step,
                    best_val=best_val,
                    best_epoch=best_epoch,
                    config=config,
                    world=world,
                    steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps,
                    warmup_steps=warmup_steps,
                    metadata=metadata,
                )
                writer.flush()
            du.barrier()
    finally:
        if metrics is not None:
            metrics.close()
        if writer is not None:
            writer.close()
    if best_epoch is None:
        raise RuntimeError(f"no epoch had a finite loss (diverged?); see {out / METRICS}")
    return best_path


@torch.no_grad()
def _validate(raw, loader, config, device, rank, autocast, channels_last) -> tuple[torch.Tensor, float]:
    was_training = raw.training
    raw.eval()
    total = torch.zeros(len(LOSS_KEYS), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    images = 0
    start = time.perf_counter()
    try:
        with _isolated_rng(derive_seed(config.seed, rank, _SALT_VAL), device):
            loader.generator.manual_seed(derive_seed(config.seed, rank, _SALT_VAL))
            for batch in loader:
                batch = _to_device(batch, device, channels_last)
                with autocast():
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


def _save_state(
    path: Path,
    *,
    raw,
    optimizer,
    scheduler,
    scaler,
    rng_states,
    epoch,
    global_step,
    best_val,
    best_epoch,
    config: TrainConfig,
    world,
    steps_per_epoch,
    total_steps,
    warmup_steps,
    metadata,
) -> None:
    from mammoclip.checkpoints import _plain_data
    from mammoclip.provenance import code_version

    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "best_val_loss": None if best_val is None else float(best_val),
        "best_epoch": best_epoch,
        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_states,
        "loader": {
            "sampler_seed": int(config.seed),
            "sampler_epoch": int(epoch),
            "generator_seed_rule": "derive_seed(seed, epoch, rank, 1) at the start of each epoch",
        },
        "config": config.to_dict(),
        "world_size": int(world),
        "steps_per_epoch": int(steps_per_epoch),
        "total_steps": int(total_steps),
        "warmup_steps": int(warmup_steps),
        "code_version": code_version(),
        "metadata": _plain_data(dict(metadata)),
    }
    _atomic_save(state, path)
