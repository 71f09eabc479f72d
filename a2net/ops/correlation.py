"""The 4D correlation op."""

from __future__ import annotations

import torch

from a2net import reference


def correlation(
    source: torch.Tensor,
    target: torch.Tensor,
    normalize_features: bool = True,
    relu: bool = True,
    normalize_matches: bool = True,
) -> torch.Tensor:
    """4D correlation of two feature maps; see :func:`a2net.reference.correlation`.

    Args:
        source: ``(B, C, Hs, Ws)``.
        target: ``(B, C, Ht, Wt)``.
    Returns:
        ``(B, Hs*Ws, Ht, Wt)``, source index ``s = ys*Ws + xs``.
    """
    return reference.correlation(source, target, normalize_features, relu, normalize_matches)
