"""Thin helpers around ``torch.distributed`` for ``torchrun`` launches (and plain single processes).

* :func:`init_distributed` reads the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``) and starts the default process group: NCCL when CUDA is available, gloo
  otherwise. Without those variables (or with ``WORLD_SIZE=1``) nothing is started and a single-process
  :class:`DistInfo` is returned. Calling it again, or after the caller started a group itself, only
  describes the existing group.
* :func:`all_gather_with_grad` concatenates a tensor from all ranks along dim 0 and lets gradients flow back
  to every rank's own slice (backward = sum of the gradients all ranks computed for that slice, a
  reduce-scatter). Every rank must pass a tensor of the *same shape* (the trainer's samplers guarantee it).
* :func:`all_gather_no_grad`, :func:`reduce_mean`, :func:`reduce_sum`, :func:`barrier`,
  :func:`broadcast_buffers`, :func:`all_gather_object` and :func:`cleanup` are no-ops (or the identity) in a
  single process, so calling code needs no ``if distributed`` branches.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, overload

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` / ``world_size`` / ``local_rank``, its ``device``, ``is_main``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(*, backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Start (or describe) the process group of a ``torchrun`` launch; see the module docstring.

    ``backend`` overrides the choice (``"nccl"`` on CUDA, else ``"gloo"``). On CUDA the current device is set
    to ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if world > 1:
            if not dist.is_available():  # pragma: no cover - every supported torch build has it
                raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
            chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if chosen == "nccl":
                torch.cuda.set_device(_device_for(local_rank))
            dist.init_process_group(
                backend=chosen,
                init_method="env://",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
            log.info("process group started: backend %s, rank %d of %d", chosen, rank, world)
    device = _device_for(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, is_main=rank == 0)


def cleanup() -> None:
    """Destroy the default process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    """``cat([x_0, ..., x_{W-1}])``; backward gives each rank the sum over ranks of its slice's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.n = dist.get_rank(), tensor.shape[0]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = torch.empty((ctx.n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        # gloo has no reduce-scatter: sum everything, keep this rank's rows
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (``[n, ...]``, same shape on every rank) from all ranks, rank order, dim 0.

    Differentiable: the gradient reaching this rank's input is the sum of the gradients that all ranks'
    losses put on this rank's rows, so with each rank minimising the mean loss of its own rows and DDP
    averaging parameter gradients, the update equals that of the global mean loss. Identity in one process.
    """
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 without autograd (ids, labels)."""
    if not is_distributed():
        return tensor
    tensor = tensor.detach().contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def _collective_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@overload
def reduce_sum(value: torch.Tensor) -> torch.Tensor: ...
@overload
def reduce_sum(value: float) -> float: ...
def reduce_sum(value: torch.Tensor | float) -> torch.Tensor | float:
    """Sum of ``value`` over ranks (a tensor keeps its device and dtype; a float comes back as a float)."""
    if not is_distributed():
        return value
    if torch.is_tensor(value):
        out = value.detach().clone()
        moved = out.device != _collective_device()
        work = out.to(_collective_device()) if moved else out
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(value.device) if moved else work
    work = torch.tensor(float(value), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return float(work.item())


@overload
def reduce_mean(value: torch.Tensor) -> torch.Tensor: ...
@overload
def reduce_mean(value: float) -> float: ...
def reduce_mean(value: torch.Tensor | float) -> torch.Tensor | float:
    """Mean of ``value`` over ranks (tensor or float; identity in a single process)."""
    if not is_distributed():
        return value
    total = reduce_sum(value)
    world = dist.get_world_size()
    return total / world


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to all ranks, in place."""
    if not is_distributed():
        return
    for buf in module.buffers():
        if buf.device != _collective_device():
            tmp = buf.detach().to(_collective_device())
            dist.broadcast(tmp, src)
            buf.copy_(tmp)
        else:
            dist.broadcast(buf.data, src)
