"""Output allocation for the kernel launchers.

Tests set :data:`POISON` so every output buffer starts as NaN: an element a kernel forgot to
write then shows up as NaN instead of as stale memory that happens to look right.
"""

from __future__ import annotations

import torch

POISON = False


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation (fp64 for fp64 inputs, which is what makes a float64 gradcheck possible)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty``, NaN-filled when :data:`POISON` is set."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if POISON and out.is_floating_point():
        out.fill_(float("nan"))
    return out
