"""The offset-aware correlation (OAC) op."""

from __future__ import annotations

import torch

from a2net import reference


def offset_aware_correlation(
    corr: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, source_size
) -> torch.Tensor:
    """Offset-aware correlation; see :func:`a2net.reference.offset_aware_correlation`.

    Args:
        corr: ``(B, Hs*Ws, Ht, Wt)``.
        weight: ``(O, Hs+Ht-1, Ws+Wt-1)``.
        bias: ``(O,)`` or None.
        source_size: ``(Hs, Ws)``.
    Returns:
        ``(B, O, Ht, Wt)``.
    """
    return reference.offset_aware_correlation(corr, weight, bias, source_size)
