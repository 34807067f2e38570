"""The one autocast rule of training, inference and benchmarks.

:func:`autocast`: ``bf16`` / ``fp16`` autocast on CUDA; everything else runs in fp32 with autocast
explicitly off (``fp32`` anywhere, and any precision on the CPU unless ``cpu=True``, which only the
benchmark uses to time CPU autocast).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str, *, cpu: bool = False) -> Any:
    """A context manager: ``torch.autocast`` to ``precision`` on CUDA (and on the CPU with ``cpu=True``),
    else autocast disabled (fp32). ``precision``: ``fp32`` | ``bf16`` | ``fp16``."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    dtype = DTYPES[precision]
    if dtype is not None and (device_type == "cuda" or (cpu and device_type == "cpu")):
        return torch.autocast(device_type, dtype=dtype)
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
