"""Compute precision of the network's forward (and backward) pass.

``fp32`` computes everything in float32. ``bf16`` runs the network under
``torch.autocast(dtype=torch.bfloat16)``: convolutions and matrix products in bfloat16, while
the weights, their gradients, the optimizer state, the loss, the sampler's update and the KID
stay float32. ``auto`` is ``bf16`` where the hardware computes bfloat16 natively (a CUDA GPU
with bfloat16 support, a CPU with AVX512-BF16, AMX or Arm BF16) and ``fp32`` elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "auto"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")

#: CPU feature flags (``/proc/cpuinfo``) of native bfloat16 arithmetic
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (emulated bfloat16 is slower than float32)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:  # pragma: no cover - a probe unusable on this build
            pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return bool(_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def compute_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which the network computes in ``precision`` on ``device``."""
    dtype = compute_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def in_precision(
    fn: Callable[..., torch.Tensor], precision: str, device: torch.device | str
) -> Callable[..., torch.Tensor]:
    """``fn`` computed in ``precision``, its output returned as float32 (``fn`` itself for fp32)."""
    if compute_dtype(precision, device) is None:
        return fn

    def wrapped(*args, **kwargs) -> torch.Tensor:
        with autocast(precision, device):
            out = fn(*args, **kwargs)
        return out.float()

    return wrapped
