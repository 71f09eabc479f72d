"""Pure-PyTorch reference of every A2Net op: the definition of correctness and the CPU path.

Everything here is vectorised (no Python loop over positions), works for any floating dtype
(float64 included) and is differentiable by autograd. The Triton kernels in ``kernels/`` are
tested against these functions.

Layouts (SPEC §2):

* feature maps: ``(B, C, H, W)``;
* correlation: ``(B, Hs*Ws, Ht, Wt)`` with source index ``s = ys*Ws + xs`` (row-major);
* offset-aware correlation weight: ``(O, Hs+Ht-1, Ws+Wt-1)``, the offset of source ``(ys, xs)``
  seen from target ``(yt, xt)`` is ``(ys - yt + Ht - 1, xs - xt + Wt - 1)``.
"""

from __future__ import annotations

import torch
from einops import rearrange

from a2net._validation import check_attention_inputs, check_correlation_inputs, check_oac_inputs, check_tensor

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


def offset_index(source_size, target_size, device=None) -> torch.Tensor:
    """Flat offset index ``off[s, t] = (ys-yt+Ht-1)*(Ws+Wt-1) + (xs-xt+Wt-1)``.

    Returns:
        ``(Hs*Ws, Ht*Wt)`` int64 tensor; for a fixed ``t`` the map ``s -> off[s, t]`` is
        injective, which is what lets the OAC scatter without collisions.
    """
    hs, ws = source_size
    ht, wt = target_size
    ys = torch.arange(hs, device=device).view(hs, 1, 1, 1)
    xs = torch.arange(ws, device=device).view(1, ws, 1, 1)
    yt = torch.arange(ht, device=device).view(1, 1, ht, 1)
    xt = torch.arange(wt, device=device).view(1, 1, 1, wt)
    off = (ys - yt + ht - 1) * (ws + wt - 1) + (xs - xt + wt - 1)
    return off.reshape(hs * ws, ht * wt)


def offset_aware_correlation(
    corr: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    source_size,
) -> torch.Tensor:
    """Offset-aware correlation (OAC), SPEC §2.4 generalised to any source/target sizes.

    ``out[b, o, yt, xt] = bias[o] + sum_{ys, xs} weight[o, ys-yt+Ht-1, xs-xt+Wt-1] *
    corr[b, ys*Ws+xs, yt, xt]``.

    This reference scatters ``corr`` into the zero-filled aligned tensor
    ``(B, (Hs+Ht-1)*(Ws+Wt-1), Ht*Wt)`` and contracts it with ``weight`` in one GEMM (the
    fastest CPU formulation measured, SPEC §6). Its memory is about 4x that of ``corr``; the
    Triton kernel never builds the aligned tensor.

    Args:
        corr: ``(B, Hs*Ws, Ht, Wt)`` correlation.
        weight: ``(O, Hs+Ht-1, Ws+Wt-1)``.
        bias: ``(O,)`` or None.
        source_size: ``(Hs, Ws)`` (or an int for a square map).
    Returns:
        ``(B, O, Ht, Wt)``.
    """
    hs, ws = check_oac_inputs(corr, weight, bias, source_size)
    b, s, ht, wt = corr.shape
    n_off = weight.shape[1] * weight.shape[2]
    index = offset_index((hs, ws), (ht, wt), device=corr.device).expand(b, s, ht * wt)
    aligned = corr.new_zeros(b, n_off, ht * wt).scatter(1, index, corr.reshape(b, s, ht * wt))
    out = torch.matmul(weight.reshape(weight.shape[0], n_off), aligned)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, -1, ht, wt)


def attention_pool(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax attention pooling: ``out[b, c] = sum_t softmax_t(logits[b, 0]) * values[b, c, t]``.

    Args:
        logits: ``(B, 1, H, W)`` attention logits.
        values: ``(B, C, H, W)``.
    Returns:
        ``(B, C)``.
    """
    check_attention_inputs(logits, values)
    p = torch.softmax(logits.flatten(1), dim=1)
    return torch.einsum("bt,bct->bc", p, values.flatten(2))
