"""Pre-training: contrastive loss, optimiser / schedule, DDP helpers and the resumable trainer.

* :mod:`mammoclip.train.loss` — :func:`~mammoclip.train.loss.clip_loss`, upstream's multi-view / multi-text
  CLIP loss (i2t, t2i, i2i, t2t) with DDP all-gather and optional false-negative masking.
* :mod:`mammoclip.train.optim` — :func:`~mammoclip.train.optim.build_optimizer` (AdamW, timm's no-decay
  groups); the schedule is ``transformers.get_cosine_schedule_with_warmup``.
* :mod:`mammoclip.train.distributed` — :func:`~mammoclip.train.distributed.init_distributed` for
  ``torchrun`` launches, autograd-aware all-gather, reductions, barrier.
* :mod:`mammoclip.train.pretrain` — :class:`~mammoclip.train.pretrain.TrainConfig` and
  :func:`~mammoclip.train.pretrain.train_clip` (setup, resume, train one epoch, validate around a
  :class:`~mammoclip.train.pretrain.TrainState`): checkpoints every epoch, exact resume, ``model-best.tar``
  in the released key layout, metrics CSV and TensorBoard.
* :mod:`mammoclip.train.classify` — downstream linear probes and finetunes.
* :mod:`mammoclip.train.precision` — :func:`~mammoclip.train.precision.autocast`, the one autocast rule.
* :mod:`mammoclip.train.settings` — the configs' defaults, read from the schema.

Submodules are imported on use (nothing heavy is imported here).
"""
