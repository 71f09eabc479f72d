"""The softmax attention pooling op."""

from __future__ import annotations

import torch

from a2net import reference


def attention_pool(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax attention pooling; see :func:`a2net.reference.attention_pool`.

    Args:
        logits: ``(B, 1, H, W)``.
        values: ``(B, C, H, W)``.
    Returns:
        ``(B, C)``.
    """
    return reference.attention_pool(logits, values)
