"""Optimiser and learning-rate schedule (docs/upstream.md#pretraining), from libraries.

:func:`build_optimizer`: AdamW (default betas / eps, as upstream). With ``exclude_norms_biases_and_scale``
(our default) the groups are ``timm.optim.param_groups_weight_decay``'s: no decay for biases and every
parameter of at most one dimension (normalisation weights, ``logit_scale``); upstream decays *every*
parameter (its ``no_decay`` option can never be read), which ``False`` reproduces with a single group.
Groups are ordered decay first (the order optimiser states are stored in ``last.pt``) and carry a
``"name"``; frozen parameters are left out.

The schedule is ``transformers.get_cosine_schedule_with_warmup`` stepped once per *optimiser* step: linear
warmup from 0 (as upstream, the first step runs at lr 0 when there is warmup), then a half-cosine to 0.
tests/test_optim.py shows both equal the hand-written code they replaced on the models the configs use
(the schedule up to one floating-point rounding, 2.2e-16).
"""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import nn


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, exclude_norms_biases_and_scale: bool = True
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` (see the module docstring)."""
    if exclude_norms_biases_and_scale:
        groups = param_groups_weight_decay(
            model, weight_decay=float(weight_decay), no_weight_decay_list=("logit_scale",)
        )
        groups.sort(key=lambda group: group["weight_decay"] == 0)  # stable: decay group first
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for group in groups:
        group["name"] = "no_decay" if group.get("weight_decay", weight_decay) == 0 else "decay"
    return torch.optim.AdamW(groups, lr=float(lr), weight_decay=float(weight_decay))
