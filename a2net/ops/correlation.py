"""The 4D correlation op (docs/design.md §3.1): Triton kernels behind ``torch.ops.a2net``.

Registered ops (``S = Hs*Ws``, ``T = Ht*Wt``):

* ``a2net::correlation(source, target, normalize_features, relu, normalize_matches,
  input_precision) -> (out, inv_source, inv_target, inv_match)``: ``out`` ``(B, S, Ht, Wt)`` in
  the input dtype, then what the backward needs, in the accumulation dtype (fp32; fp64 for fp64
  inputs): the inverse feature norms ``(B, S)``, ``(B, T)`` (empty without
  ``normalize_features``) and the inverse match norms ``(B, T)`` (empty without
  ``normalize_matches``). The public function returns ``out`` only;
* ``a2net::correlation_backward(grad, source, target, out, inv_source, inv_target, inv_match,
  normalize_features, relu, normalize_matches, input_precision, need_source, need_target)
  -> (grad_source, grad_target)``: a gradient not asked for comes back as an empty tensor, which
  the autograd glue maps to ``None``.
"""

from __future__ import annotations

import torch

from a2net import reference
from a2net._validation import (
    INPUT_PRECISIONS,
    check_choice,
    check_correlation_inputs,
    check_correlation_kernel_sizes,
    check_flag,
)
from a2net.kernels._memory import accumulation_dtype
from a2net.ops._dispatch import TRITON_CALLS, use_triton


@torch.library.custom_op("a2net::correlation", mutates_args=())
def _correlation_op(
    source: torch.Tensor,
    target: torch.Tensor,
    normalize_features: bool,
    relu: bool,
    normalize_matches: bool,
    input_precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton forward: ``(out, inv_source, inv_target, inv_match)``; see :func:`correlation`."""
    from a2net.kernels.correlation import correlation_fwd

    TRITON_CALLS["correlation"] += 1
    return correlation_fwd(source, target, normalize_features, relu, normalize_matches, input_precision, reference.EPS)


@_correlation_op.register_fake
def _correlation_fake(source, target, normalize_features, relu, normalize_matches, input_precision):
    B, C, Hs, Ws = source.shape
    Ht, Wt = target.shape[2:]
    acc = accumulation_dtype(source.dtype)
    out = source.new_empty((B, Hs * Ws, Ht, Wt))
    inv_src = source.new_empty((B, Hs * Ws) if normalize_features else (0,), dtype=acc)
    inv_tgt = source.new_empty((B, Ht * Wt) if normalize_features else (0,), dtype=acc)
    inv_match = source.new_empty((B, Ht * Wt) if normalize_matches else (0,), dtype=acc)
    return out, inv_src, inv_tgt, inv_match


@torch.library.custom_op("a2net::correlation_backward", mutates_args=())
def _correlation_backward_op(
    grad: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    out: torch.Tensor,
    inv_source: torch.Tensor,
    inv_target: torch.Tensor,
    inv_match: torch.Tensor,
    normalize_features: bool,
    relu: bool,
    normalize_matches: bool,
    input_precision: str,
    need_source: bool,
    need_target: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton backward: ``(grad_source, grad_target)``, empty where not needed."""
    from a2net.kernels.correlation import correlation_bwd

    TRITON_CALLS["correlation_backward"] += 1
    return correlation_bwd(
        grad,
        source,
        target,
        out,
        inv_source,
        inv_target,
        inv_match,
        normalize_features,
        relu,
        normalize_matches,
        input_precision,
        need_source,
        need_target,
    )


@_correlation_backward_op.register_fake
def _correlation_backward_fake(
    grad,
    source,
    target,
    out,
    inv_source,
    inv_target,
    inv_match,
    normalize_features,
    relu,
    normalize_matches,
    input_precision,
    need_source,
    need_target,
):
    grad_src = source.new_empty(source.shape if need_source else (0,))
    grad_tgt = target.new_empty(target.shape if need_target else (0,))
    return grad_src, grad_tgt


def _setup_context(ctx, inputs, output):
    source, target, normalize_features, relu, normalize_matches, input_precision = inputs
    out, inv_src, inv_tgt, inv_match = output
    ctx.mark_non_differentiable(inv_src, inv_tgt, inv_match)
    ctx.save_for_backward(source, target, out, inv_src, inv_tgt, inv_match)
    ctx.flags = (normalize_features, relu, normalize_matches, input_precision)


def _backward(ctx, grad_out, _grad_inv_src, _grad_inv_tgt, _grad_inv_match):
    need_source, need_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_src, grad_tgt = torch.ops.a2net.correlation_backward(
        grad_out, *ctx.saved_tensors, *ctx.flags, need_source, need_target
    )
    return (
        grad_src if need_source else None,
        grad_tgt if need_target else None,
        None,
        None,
        None,
        None,
    )


_correlation_op.register_autograd(_backward, setup_context=_setup_context)


def correlation(
    source: torch.Tensor,
    target: torch.Tensor,
    normalize_features: bool = True,
    relu: bool = True,
    normalize_matches: bool = True,
    input_precision: str = "tf32",
) -> torch.Tensor:
    """4D correlation of two feature maps (docs/design.md §3.1); see :func:`a2net.reference.correlation`.

    ``out[b, s, yt, xt] = <f_src[b, :, s], f_tgt[b, :, yt, xt]>`` with ``s = ys*Ws + xs``, on
    channel-L2-normalised features, then ReLU, then L2 normalisation over ``s`` (each step
    optional, all on by default: the paper's setting).

    Args:
        source: ``(B, C, Hs, Ws)`` source feature map (fp32, fp16 or bf16 on the Triton path), any
            strides. The Triton kernels read channels-last maps in place and copy others to
            channels-last first (one pass, fused with the feature norms): pass
            ``x.contiguous(memory_format=torch.channels_last)`` maps to save it. At most 65535 images
            and 2^23 positions per map on the Triton path.
        target: ``(B, C, Ht, Wt)`` target feature map, same dtype and device.
        normalize_features: L2-normalise both maps over channels first (eps 1e-6).
        relu: ReLU on the correlation.
        normalize_matches: L2-normalise over the source positions for every target position.
        input_precision: precision of the fp32 products on the Triton path: ``"tf32"``
            (default, tensor cores, ~1e-3 relative), ``"ieee"`` (exact fp32) or ``"tf32x3"``
            (tf32 tensor cores, close to fp32 accuracy). Ignored for fp16/bf16 and on the
            reference path.
    Returns:
        ``(B, Hs*Ws, Ht, Wt)`` in the input dtype.

    Example::

        >>> src, tgt = torch.randn(2, 64, 15, 15), torch.randn(2, 64, 15, 15)
        >>> correlation(src, tgt).shape
        torch.Size([2, 225, 15, 15])
    """
    check_correlation_inputs(source, target)
    check_flag("normalize_features", normalize_features)
    check_flag("relu", relu)
    check_flag("normalize_matches", normalize_matches)
    check_choice("input_precision", input_precision, INPUT_PRECISIONS)
    if use_triton(source):
        check_correlation_kernel_sizes(source, target)
        out, _, _, _ = torch.ops.a2net.correlation(
            source, target, normalize_features, relu, normalize_matches, input_precision
        )
        return out
    return reference.correlation(source, target, normalize_features, relu, normalize_matches)
