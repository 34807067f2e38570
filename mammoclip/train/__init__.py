"""Pre-training: contrastive loss, optimiser / schedule, DDP helpers and the resumable trainer.

* :mod:`mammoclip.train.loss` — :func:`~mammoclip.train.loss.clip_loss`, upstream's multi-view / multi-text
  CLIP loss (i2t, t2i, i2i, t2t) with DDP all-gather and optional false-negative masking.
* :mod:`mammoclip.train.optim` — :func:`~mammoclip.train.optim.build_optimizer` (AdamW, no decay for
  biases / norms / ``logit_scale``) and :func:`~mammoclip.train.optim.warmup_cosine` (per-step schedule).
* :mod:`mammoclip.train.distributed` — :func:`~mammoclip.train.distributed.init_distributed` for
  ``torchrun`` launches, autograd-aware all-gather, reductions, barrier.
* :mod:`mammoclip.train.pretrain` — :class:`~mammoclip.train.pretrain.TrainConfig` and
  :func:`~mammoclip.train.pretrain.train_clip`: checkpoints every epoch, exact resume, ``model-best.tar``
  in the released key layout, metrics CSV and TensorBoard.

Submodules are imported on use (nothing heavy is imported here).
"""
