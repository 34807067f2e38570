"""Optimiser and learning-rate schedule for pre-training (upstream-mammoclip.md section 6.2).

:func:`build_optimizer`: AdamW (default betas / eps, as upstream) with a weight-decay group and a no-decay
group. Upstream decays *every* parameter (its ``no_decay`` option can never be read, section 13.1 item 10);
``no_decay_for=()`` reproduces that (a single group). Each entry of ``no_decay_for`` selects parameters:

* ``"bias"``: parameters whose own name is ``bias``;
* ``"norm"``: parameters of normalisation layers, recognised by module *type* (BatchNorm / SyncBatchNorm /
  InstanceNorm, LayerNorm, GroupNorm, RMSNorm and subclasses such as timm's ``BatchNormAct2d``), plus any
  parameter whose module path contains "norm" (case-insensitive; e.g. BERT's ``LayerNorm``);
* anything else: a substring of the full parameter name (``"logit_scale"``, ``"embeddings"``, ...).

Frozen parameters (``requires_grad=False``) are left out; empty groups are dropped. Groups carry a
``"name"`` (``"decay"`` / ``"no_decay"``).

:func:`warmup_cosine`: a ``LambdaLR`` stepped once per *optimiser* step with multiplier ``step / warmup``
for ``step < warmup``, then ``cos²(π/2 · (step − warmup) / (total − warmup))`` (a half-cosine from 1 to 0),
and 0 from ``total`` on. As upstream, the first optimiser step runs at lr 0 when ``warmup_steps > 0``. The
multiplier is a small picklable object, so ``scheduler.state_dict()`` records ``warmup_steps`` and
``total_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _no_decay(name: str, module: nn.Module, leaf: str, rules: Iterable[str]) -> bool:
    module_path = name.rsplit(".", 1)[0] if "." in name else ""
    for rule in rules:
        if rule == "bias":
            if leaf == "bias":
                return True
        elif rule == "norm":
            if isinstance(module, NORM_TYPES) or "norm" in module_path.lower():
                return True
        elif rule in name:
            return True
    return False


def split_decay_params(
    model: nn.Module, no_decay_for: Iterable[str] = ("bias", "norm", "logit_scale")
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """``(decay, no_decay)`` lists of ``(name, parameter)`` (trainable parameters only, each once)."""
    rules = tuple(no_decay_for)
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{leaf}" if module_name else leaf
            (no_decay if _no_decay(name, module, leaf, rules) else decay).append((name, param))
    return decay, no_decay


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    no_decay_for: Iterable[str] = ("bias", "norm", "logit_scale"),
) -> torch.optim.AdamW:
    """AdamW with a ``weight_decay`` group and a no-decay group (see the module docstring)."""
    decay, no_decay = split_decay_params(model, no_decay_for)
    groups = []
    if decay:
        groups.append({"params": [p for _, p in decay], "weight_decay": float(weight_decay), "name": "decay"})
    if no_decay:
        groups.append({"params": [p for _, p in no_decay], "weight_decay": 0.0, "name": "no_decay"})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=float(lr), weight_decay=float(weight_decay))


class WarmupCosine:
    """The ``LambdaLR`` multiplier of :func:`warmup_cosine` (a class so its settings are in state_dict)."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if step >= self.total_steps:
            return 0.0
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return math.cos(math.pi / 2 * progress) ** 2


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then half-cosine to 0, per optimiser step (see the module docstring)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
