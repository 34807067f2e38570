"""Mammo-CLIP's pre-training loss (upstream ``breast_clip``, docs/upstream.md#pretraining).

Inputs are L2-normalised embeddings ``[B, D]`` of this rank's batch: ``image`` (I1), optional ``image_view``
(I2, the other view of the same breast), ``text`` (T1), optional ``text2`` (T2, a second report section or
its back-translation), and the exponentiated scale ``s = exp(logit_scale)``. With ``gather=True`` under
DDP the "all" versions are concatenated from every rank by an autograd-aware all-gather; the targets of this
rank's rows are ``arange(B) + rank * B``. In one process "all" = local.

``CE(a, b)`` below is the cross-entropy of the logits ``s * a_local @ b_allᵀ`` with those targets, averaged
over this rank's rows::

    i2t = mean over the pairings P of CE(I, T)     t2i = mean over P of CE(T, I)
    i2i = (CE(I1, I2) + CE(I2, I1)) / 2            t2t = (CE(T2, T1) + CE(T1, T2)) / 2
    loss = (i2t + t2i) / 2 + i2i_weight * i2i + t2t_weight * t2t

With both extras ``P = {(I1,T1), (I2,T1), (I1,T2), (I2,T2)}``, exactly upstream's sum divided by 4.
Fallbacks (upstream always has both; ours may lack either): without ``image_view`` the pairings drop I2 and
``i2i`` is 0; without ``text2`` they drop T2 and ``t2t`` is 0; with neither this is the plain symmetric CLIP
loss ``(CE(I1,T1) + CE(T1,I1)) / 2``. Missing terms are returned as zero tensors so the logged columns
always exist. Everything is computed in at least float32 (half-precision embeddings from autocast
are up-cast; float64 stays float64), with autocast disabled inside, so calling it under an autocast
context does not send the logit matmuls back to half precision.

Under DDP each rank returns the mean loss of its *own* rows; the all-gather's backward sums the gradient
that every rank's loss puts on a rank's rows, so with DDP's gradient averaging the parameter update equals
that of the loss of the global batch in one process (tested in ``tests/test_ddp.py``).

False-negative masking (``mask_false_negatives=True``, off by default as upstream): samples
``i`` and ``j`` (``i != j``, global indices) are *duplicates* when they share an identical text, i.e. when
``{text_ids[i], text2_ids[i]} ∩ {text_ids[j], text2_ids[j]}`` is not empty (only ``text_ids`` without a second
text). ``text_ids`` are per-sample integer ids/hashes of the texts, gathered from all ranks like the
embeddings. In every logit matrix that involves a text (i2t, t2i, t2t) the entries of duplicate pairs are set
to ``-inf``: the duplicate is removed from the softmax denominator rather than pushed away, while the
diagonal (the positive) is never masked. The image-image term is *not* masked: two breasts with the same
report are still different instances, which is what ``i2i`` discriminates. With label smoothing the
smoothing mass is spread over the unmasked classes only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mammoclip.train.distributed import all_gather_no_grad, all_gather_with_grad, is_distributed

LOSS_KEYS = ("loss", "i2t", "t2i", "i2i", "t2t")


def masked_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of ``logits [n, C]`` with ``targets [n]``; ``mask`` (bool, True = excluded) entries.

    Without a mask this equals ``F.cross_entropy(logits, targets, label_smoothing=...)``. Masked entries are
    left out of the softmax and of the label-smoothing distribution (uniform over the remaining classes).
    The target entries must not be masked.
    """
    if mask is None:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    logp = torch.log_softmax(logits.masked_fill(mask, float("-inf")), dim=-1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    if label_smoothing == 0.0:
        return nll.mean()
    kept = (~mask).sum(dim=-1).clamp(min=1).to(logp.dtype)
    smooth = -logp.masked_fill(mask, 0.0).sum(dim=-1) / kept
    return ((1.0 - label_smoothing) * nll + label_smoothing * smooth).mean()


def duplicate_mask(row_ids: list[torch.Tensor], col_ids: list[torch.Tensor], row_offset: int) -> torch.Tensor:
    """``[n_rows, n_cols]`` bool: row sample ``i`` and column sample ``j`` share an id (``j != i + offset``).

    ``row_ids`` / ``col_ids``: one id vector per text slot (``text_ids``, ``text2_ids``) for the local rows
    and for all (gathered) columns; the pair is a duplicate when any row slot equals any column slot.
    """
    n_rows, n_cols = row_ids[0].shape[0], col_ids[0].shape[0]
    same = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=row_ids[0].device)
    for r in row_ids:
        for c in col_ids:
            same |= r[:, None] == c[None, :]
    diag = torch.arange(n_rows, device=same.device) + row_offset
    same[torch.arange(n_rows, device=same.device), diag] = False
    return same


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    image_view: torch.Tensor | None = None,
    text2: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float,
    i2i_weight: float = 1.0,
    t2t_weight: float = 0.5,
    label_smoothing: float = 0.0,
    text_ids: torch.Tensor | None = None,
    text2_ids: torch.Tensor | None = None,
    mask_false_negatives: bool = False,
    gather: bool = True,
) -> dict[str, torch.Tensor]:
    """Upstream's multi-view / multi-text contrastive loss; see the module docstring.

    Returns ``{"loss", "i2t", "t2i", "i2i", "t2t"}`` (float32 or float64 scalars; ``loss`` has the gradient).
    ``gather=False`` uses only this rank's samples as negatives (``rank`` offset 0).
    ``mask_false_negatives`` needs ``text_ids`` (and ``text2_ids`` when ``text2`` is given).
    """
    if image.shape != text.shape:
        raise ValueError(
            f"image {tuple(image.shape)} and text {tuple(text.shape)} embeddings differ in shape"
        )
    for name, extra in (("image_view", image_view), ("text2", text2)):
        if extra is not None and extra.shape != image.shape:
            raise ValueError(f"{name} {tuple(extra.shape)} must have the shape of image {tuple(image.shape)}")
    with torch.autocast(device_type=image.device.type, enabled=False):
        return _clip_loss(
            image,
            text,
            image_view=image_view,
            text2=text2,
            logit_scale=logit_scale,
            i2i_weight=i2i_weight,
            t2t_weight=t2t_weight,
            label_smoothing=label_smoothing,
            text_ids=text_ids,
            text2_ids=text2_ids,
            mask_false_negatives=mask_false_negatives,
            gather=gather,
        )


def _clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    image_view: torch.Tensor | None,
    text2: torch.Tensor | None,
    logit_scale: torch.Tensor | float,
    i2i_weight: float,
    t2t_weight: float,
    label_smoothing: float,
    text_ids: torch.Tensor | None,
    text2_ids: torch.Tensor | None,
    mask_false_negatives: bool,
    gather: bool,
) -> dict[str, torch.Tensor]:
    n = image.shape[0]
    distributed = gather and is_distributed()
    rank = torch.distributed.get_rank() if distributed else 0

    def gathered(x: torch.Tensor) -> torch.Tensor:
        return all_gather_with_grad(x) if distributed else x

    dtype = torch.promote_types(image.dtype, torch.float32)
    if torch.is_tensor(logit_scale):
        scale = logit_scale.to(device=image.device, dtype=dtype)
    else:
        scale = torch.tensor(float(logit_scale), device=image.device, dtype=dtype)
    targets = torch.arange(n, device=image.device) + rank * n

    images = {"I1": image.to(dtype)}
    if image_view is not None:
        images["I2"] = image_view.to(dtype)
    texts = {"T1": text.to(dtype)}
    if text2 is not None:
        texts["T2"] = text2.to(dtype)
    every = {**images, **texts}
    every_all = {k: gathered(v) for k, v in every.items()}

    mask = None
    if mask_false_negatives:
        if text_ids is None or (text2 is not None and text2_ids is None):
            raise ValueError("mask_false_negatives needs text_ids (and text2_ids with text2)")
        local_ids = [text_ids.to(image.device).long()]
        if text2 is not None:
            assert text2_ids is not None  # checked above: text2 needs text2_ids here
            local_ids.append(text2_ids.to(image.device).long())
        all_ids = [all_gather_no_grad(i) if distributed else i for i in local_ids]
        mask = duplicate_mask(local_ids, all_ids, rank * n)

    def ce(row: str, col: str, masked: bool) -> torch.Tensor:
        logits = scale * every[row] @ every_all[col].t()
        return masked_cross_entropy(
            logits, targets, mask=mask if masked else None, label_smoothing=label_smoothing
        )

    pairings = [(i, t) for t in texts for i in images]
    i2t = torch.stack([ce(i, t, True) for i, t in pairings]).mean()
    t2i = torch.stack([ce(t, i, True) for i, t in pairings]).mean()
    zero = torch.zeros((), device=image.device, dtype=dtype)
    i2i = (ce("I1", "I2", False) + ce("I2", "I1", False)) / 2 if "I2" in images else zero
    t2t = (ce("T2", "T1", True) + ce("T1", "T2", True)) / 2 if "T2" in texts else zero
    loss = (i2t + t2i) / 2 + i2i_weight * i2i + t2t_weight * t2t
    return {"loss": loss, "i2t": i2t, "t2i": t2i, "i2i": i2i, "t2t": t2t}
