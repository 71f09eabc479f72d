"""Fused correlation + offset-aware correlation (docs/design.md §3.5): feature maps -> OAC features.

Equal in math to :func:`a2net.ops.correlation` (ReLU and match normalisation on) followed by
:func:`a2net.ops.offset_aware_correlation`, but the Triton path never writes the
``(B, Hs*Ws, Ht, Wt)`` correlation (13 million entries per pair at 60x60) nor the aligned tensor:
tiles of it are computed on chip and contracted with the OAC weights at once
(:mod:`a2net.kernels.correlation_oac`).

Registered ops (``S = Hs*Ws``, ``T = Ht*Wt``):

* ``a2net::correlation_oac(source, target, weight, bias?, normalize_features, input_precision,
  save_correlation) -> (out, inv_source, inv_target, inv_match, corr)``: ``out`` ``(B, O, Ht, Wt)``
  in the input dtype, then what the backward needs, in the accumulation dtype (fp32; fp64 for
  fp64 inputs): the inverse feature norms ``(B, S)``, ``(B, T)`` (empty without
  ``normalize_features``) and the inverse match norms ``(B, T)``; then ``corr``, ``relu(c)``
  ``(B, S, Ht, Wp)`` in the input dtype when ``save_correlation`` is set and the maps have at
  most 32x32 positions (the weight gradient then reads it instead of recomputing the
  correlation; ``S*Ht*Wp*e`` bytes per pair, ``Wp`` = ``Wt`` rounded up to whole column blocks:
  0.11 MB in bf16 at 15x15, 2.1 MB at 32x32), else empty. The public function returns ``out``
  only and asks for ``corr`` when the weight requires grad;
* ``a2net::correlation_oac_backward(grad, source, target, weight, bias?, out, inv_source,
  inv_target, inv_match, corr, normalize_features, input_precision, need_source, need_target,
  need_weight, need_bias) -> (grad_source, grad_target, grad_weight, grad_bias)``: a gradient not
  asked for is not computed and comes back as an empty tensor (``None`` to autograd). The
  feature-map gradients (the only part that writes a ``(B, S, T)`` buffer) run only when a
  feature map requires grad; with a frozen backbone (the paper) they never do.
"""

from __future__ import annotations

import torch

from a2net import reference
from a2net._validation import INPUT_PRECISIONS, check_choice, check_correlation_oac_inputs, check_flag
from a2net.kernels._memory import accumulation_dtype
from a2net.ops._dispatch import TRITON_CALLS, use_triton


@torch.library.custom_op("a2net::correlation_oac", mutates_args=())
def _correlation_oac_op(
    source: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    normalize_features: bool,
    input_precision: str,
    save_correlation: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton forward: ``(out, inv_source, inv_target, inv_match, corr)``; see :func:`correlation_oac`."""
    from a2net.kernels.correlation_oac import correlation_oac_fwd

    TRITON_CALLS["correlation_oac"] += 1
    return correlation_oac_fwd(
        source, target, weight, bias, normalize_features, input_precision, reference.EPS, save_correlation
    )


@_correlation_oac_op.register_fake
def _correlation_oac_fake(source, target, weight, bias, normalize_features, input_precision, save_correlation):
    from a2net.kernels.correlation_oac import saved_correlation_shape, saves_correlation

    b, _, hs, ws = source.shape
    ht, wt = target.shape[2:]
    sizes = (hs, ws, ht, wt)
    acc = accumulation_dtype(source.dtype)
    out = source.new_empty((b, weight.shape[0], ht, wt))
    inv_src = source.new_empty((b, hs * ws) if normalize_features else (0,), dtype=acc)
    inv_tgt = source.new_empty((b, ht * wt) if normalize_features else (0,), dtype=acc)
    inv_match = source.new_empty((b, ht * wt), dtype=acc)
    save = save_correlation and saves_correlation(sizes, source.dtype, normalize_features)
    corr = source.new_empty(saved_correlation_shape(b, sizes) if save else (0,))
    return out, inv_src, inv_tgt, inv_match, corr


@torch.library.custom_op("a2net::correlation_oac_backward", mutates_args=())
def _correlation_oac_backward_op(
    grad: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    inv_source: torch.Tensor,
    inv_target: torch.Tensor,
    inv_match: torch.Tensor,
    corr: torch.Tensor,
    normalize_features: bool,
    input_precision: str,
    need_source: bool,
    need_target: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: ``(grad_source, grad_target, grad_weight, grad_bias)``, empty where not needed."""
    from a2net.kernels.correlation_oac import correlation_oac_bwd

    TRITON_CALLS["correlation_oac_backward"] += 1
    return correlation_oac_bwd(
        grad,
        source,
        target,
        weight,
        bias,
        out,
        inv_source,
        inv_target,
        inv_match,
        corr,
        normalize_features,
        input_precision,
        need_source,
        need_target,
        need_weight,
        need_bias,
    )  #


@_correlation_oac_backward_op.register_fake
def _correlation_oac_backward_fake(
    grad,
    source,
    target,
    weight,
    bias,
    out,
    inv_source,
    inv_target,
    inv_match,
    corr,
    normalize_features,
    input_precision,
    need_source,
    need_target,
    need_weight,
    need_bias,
):  #
    return (
        source.new_empty(source.shape if need_source else (0,)),
        target.new_empty(target.shape if need_target else (0,)),
        weight.new_empty(weight.shape if need_weight else (0,)),
        weight.new_empty((weight.shape[0],) if need_bias else (0,)),
    )


def _setup_context(ctx, inputs, output):
    source, target, weight, bias, normalize_features, input_precision, _ = inputs
    out, inv_src, inv_tgt, inv_match, corr = output
    ctx.mark_non_differentiable(inv_src, inv_tgt, inv_match, corr)
    ctx.save_for_backward(source, target, weight, bias, out, inv_src, inv_tgt, inv_match, corr)
    ctx.flags = (normalize_features, input_precision)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out, _grad_inv_src, _grad_inv_tgt, _grad_inv_match, _grad_corr):
    need_source, need_target, need_weight, need_bias = ctx.needs_input_grad[:4]
    need_bias = need_bias and ctx.has_bias
    dsrc, dtgt, dweight, dbias = torch.ops.a2net.correlation_oac_backward(
        grad_out, *ctx.saved_tensors, *ctx.flags, need_source, need_target, need_weight, need_bias
    )
    return (
        dsrc if need_source else None,
        dtgt if need_target else None,
        dweight if need_weight else None,
        dbias if need_bias else None,
        None,
        None,
        None,
    )


_correlation_oac_op.register_autograd(_backward, setup_context=_setup_context)


def correlation_oac(
    source: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    normalize_features: bool = True,
    input_precision: str = "tf32",
) -> torch.Tensor:
    """Correlation followed by the offset-aware correlation, fused (docs/design.md §3.5).

    ``out[b, o, yt, xt] = bias[o] + sum_{ys, xs} weight[o, ys-yt+Ht-1, xs-xt+Wt-1] *
    corr[b, ys*Ws+xs, yt, xt]`` with ``corr = correlation(source, target, normalize_features,
    relu=True, normalize_matches=True)``. The Triton path computes tiles of ``corr`` on chip and
    contracts them at once: nothing of size ``(Hs*Ws) * (Ht*Wt)`` is written, except ``relu(c)``
    for the weight gradient at maps of at most 32x32 positions (when ``weight`` requires grad) and
    the backward's ``dcorr`` when ``source`` or ``target`` requires grad. The weight gradient is
    deterministic. Maps that are not channels-last are copied to channels-last first (in the
    forward, in the pass that computes their norms; the backward copies them again where it reads
    them): hand channels-last maps to save the copies.

    Args:
        source: ``(B, C, Hs, Ws)`` source feature map (fp32, fp16 or bf16 on the Triton path).
        target: ``(B, C, Ht, Wt)`` target feature map, same dtype and device.
        weight: ``(O, Hs+Ht-1, Ws+Wt-1)`` OAC weight.
        bias: ``(O,)`` or None.
        normalize_features: L2-normalise both maps over channels first (eps 1e-6).
        input_precision: precision of the fp32 products on the Triton path: ``"tf32"``
            (default, tensor cores, ~1e-3 relative), ``"ieee"`` (exact fp32) or ``"tf32x3"``
            (close to fp32 accuracy). Ignored for fp16/bf16 and on the reference path.
    Returns:
        ``(B, O, Ht, Wt)`` in the input dtype.

    Example::

        >>> src, tgt = torch.randn(2, 64, 15, 15), torch.randn(2, 64, 15, 15)
        >>> weight, bias = torch.randn(128, 29, 29), torch.zeros(128)
        >>> correlation_oac(src, tgt, weight, bias).shape
        torch.Size([2, 128, 15, 15])
    """
    check_correlation_oac_inputs(source, target, weight, bias)
    check_flag("normalize_features", normalize_features)
    check_choice("input_precision", input_precision, INPUT_PRECISIONS)
    if use_triton(source):
        save = torch.is_grad_enabled() and weight.requires_grad  # relu(c) for the weight gradient
        out, *_ = torch.ops.a2net.correlation_oac(
            source, target, weight, bias, normalize_features, input_precision, save
        )
        return out
    corr = reference.correlation(source, target, normalize_features, relu=True, normalize_matches=True)
    return reference.offset_aware_correlation(corr, weight, bias, tuple(source.shape[2:]))
