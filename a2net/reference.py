"""Pure-PyTorch reference of every A2Net op: the definition of correctness and the CPU path.

Everything here is vectorised (no Python loop over positions), works for any floating dtype
(float64 included) and is differentiable by autograd. The Triton kernels in ``kernels/`` are
tested against these functions.

Layouts (docs/design.md §4):

* feature maps: ``(B, C, H, W)``;
* correlation: ``(B, Hs*Ws, Ht, Wt)`` with source index ``s = ys*Ws + xs`` (row-major);
* offset-aware correlation weight: ``(O, Hs+Ht-1, Ws+Wt-1)``, the offset of source ``(ys, xs)``
  seen from target ``(yt, xt)`` is ``(ys - yt + Ht - 1, xs - xt + Wt - 1)``.
"""

from __future__ import annotations

import torch
from einops import rearrange

from a2net._validation import (
    check_attention_pool_inputs,
    check_correlation_inputs,
    check_offset_aware_correlation_inputs,
    check_tensor,
)

EPS = 1e-6  # the eps of both L2 normalisations (authors' FeatureL2Norm)


def feature_l2norm(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """L2-normalise over channels: ``x / sqrt(sum_c x^2 + eps)``.

    Args:
        x: ``(B, C, *spatial)`` tensor.
    Returns:
        a tensor of the same shape and dtype.
    """
    check_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x: expected at least 2-D (B, C, ...), got shape {tuple(x.shape)}")
    return x * torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True) + eps)


def correlation(
    source: torch.Tensor,
    target: torch.Tensor,
    normalize_features: bool = True,
    relu: bool = True,
    normalize_matches: bool = True,
) -> torch.Tensor:
    """4D correlation ``c[b, s, t] = <source[b, :, s], target[b, :, t]>``.

    Args:
        source: ``(B, C, Hs, Ws)`` source feature map.
        target: ``(B, C, Ht, Wt)`` target feature map.
        normalize_features: L2-normalise both maps over channels first.
        relu: apply ReLU to the correlation.
        normalize_matches: L2-normalise over the source positions for every target position
            (after the ReLU when both are on).
    Returns:
        ``(B, Hs*Ws, Ht, Wt)``, source index ``s = ys*Ws + xs``.
    """
    check_correlation_inputs(source, target)
    if normalize_features:
        source, target = feature_l2norm(source), feature_l2norm(target)
    ht, wt = target.shape[2:]
    corr = torch.einsum(
        "bcs,bct->bst",
        rearrange(source, "b c h w -> b c (h w)"),
        rearrange(target, "b c h w -> b c (h w)"),
    )
    if relu:
        corr = torch.relu(corr)
    if normalize_matches:
        corr = feature_l2norm(corr)
    return rearrange(corr, "b s (h w) -> b s h w", h=ht, w=wt)


def offset_aware_correlation(
    corr: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    source_size,
) -> torch.Tensor:
    """Offset-aware correlation (OAC), docs/design.md §3.2, for any source and target sizes.

    ``out[b, o, yt, xt] = bias[o] + sum_{ys, xs} weight[o, ys-yt+Ht-1, xs-xt+Wt-1] *
    corr[b, ys*Ws+xs, yt, xt]``.

    This reference writes ``corr`` into the zero-filled aligned tensor (the authors'
    construction, ``(B, Ht*Wt, (Hs+Ht-1)*(Ws+Wt-1))`` here) through one strided view, then
    contracts it with ``weight`` in one GEMM — measured the fastest CPU formulation (docs/design.md §10),
    faster than the authors' loop of slice copies and than an index scatter. Its memory is
    about 4x that of ``corr``; the Triton kernel never builds the aligned tensor.

    Args:
        corr: ``(B, Hs*Ws, Ht, Wt)`` correlation.
        weight: ``(O, Hs+Ht-1, Ws+Wt-1)``.
        bias: ``(O,)`` or None.
        source_size: ``(Hs, Ws)`` (or an int for a square map).
    Returns:
        ``(B, O, Ht, Wt)``.
    """
    hs, ws = check_offset_aware_correlation_inputs(corr, weight, bias, source_size)
    b, _, ht, wt = corr.shape
    o, dy, dx = weight.shape
    # aligned[b, yt, xt, ys-yt+Ht-1, xs-xt+Wt-1] = corr[b, ys*Ws+xs, yt, xt]. With the target
    # dims outermost every stride of that map from (ys, xs, yt, xt) into ``aligned`` is positive,
    # so it is one as_strided view (no two elements share an address: for a fixed target the
    # offset is injective in the source position) and one strided copy fills it.
    aligned = corr.new_zeros(b, ht, wt, dy, dx)
    view = aligned.as_strided(
        (b, hs, ws, ht, wt),
        (ht * wt * dy * dx, dx, 1, wt * dy * dx - dx, dy * dx - 1),
        (ht - 1) * dx + (wt - 1),
    )
    view.copy_(corr.reshape(b, hs, ws, ht, wt))
    out = torch.matmul(aligned.view(b, ht * wt, dy * dx), weight.reshape(o, dy * dx).t())  # (B, T, O)
    if bias is not None:
        out = out + bias
    return out.transpose(1, 2).reshape(b, o, ht, wt)


def attention_pool(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax attention pooling: ``out[b, c] = sum_t softmax_t(logits[b, 0]) * values[b, c, t]``.

    A row whose logits are all ``-inf`` has no softmax; its output is defined as zeros, with
    zero gradients for its logits and values (docs/design.md §3.4), never NaN.

    Args:
        logits: ``(B, 1, H, W)`` attention logits.
        values: ``(B, C, H, W)``.
    Returns:
        ``(B, C)``.
    """
    check_attention_pool_inputs(logits, values)
    flat = logits.flatten(1)
    # a row of -inf only: softmax over zeros instead (finite, no NaN in either pass), then weight 0
    dead = torch.isneginf(flat).all(dim=1, keepdim=True)
    p = torch.softmax(torch.where(dead, torch.zeros_like(flat), flat), dim=1) * (~dead).to(flat.dtype)
    return torch.einsum("bt,bct->bc", p, values.flatten(2))
