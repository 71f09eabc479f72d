"""The offset-aware correlation (OAC) op: validation, ``torch.ops.a2net`` registration, autograd.

Two custom ops, registered once:

* ``a2net::offset_aware_correlation(corr, weight, bias?, hs, ws, input_precision) -> out``;
* ``a2net::offset_aware_correlation_backward(grad_out, corr, weight, hs, ws, input_precision,
  need_corr, need_weight, need_bias) -> (dcorr, dweight, dbias)``: the flags say which gradients
  are wanted; an unwanted one is not computed and comes back as an empty tensor (``None`` to
  autograd). In the model ``corr`` comes from frozen features, so ``dcorr`` is usually skipped.

Both run the Triton kernels of :mod:`a2net.kernels.offset_aware_correlation` and stay in the graph under
``torch.compile`` (fake implementations give the output shapes).
"""

from __future__ import annotations

import torch

from a2net import reference
from a2net._validation import INPUT_PRECISIONS, check_choice, check_offset_aware_correlation_inputs
from a2net.ops._dispatch import TRITON_CALLS, use_triton


@torch.library.custom_op("a2net::offset_aware_correlation", mutates_args=())
def _offset_aware_correlation_op(
    corr: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, hs: int, ws: int, input_precision: str
) -> torch.Tensor:
    """Triton forward ``(B, O, Ht, Wt)``; see :func:`offset_aware_correlation`."""
    from a2net.kernels.offset_aware_correlation import offset_aware_correlation_fwd

    TRITON_CALLS["offset_aware_correlation"] += 1
    return offset_aware_correlation_fwd(corr, weight, bias, (hs, ws), input_precision)


@_offset_aware_correlation_op.register_fake
def _offset_aware_correlation_fake(corr, weight, bias, hs, ws, input_precision):
    return corr.new_empty(corr.shape[0], weight.shape[0], corr.shape[2], corr.shape[3])


@torch.library.custom_op("a2net::offset_aware_correlation_backward", mutates_args=())
def _offset_aware_correlation_backward_op(
    grad_out: torch.Tensor,
    corr: torch.Tensor,
    weight: torch.Tensor,
    hs: int,
    ws: int,
    input_precision: str,
    need_corr: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward ``(dcorr, dweight, dbias)``, each empty unless its flag asks for it."""
    from a2net.kernels.offset_aware_correlation import (
        offset_aware_correlation_bwd_bias,
        offset_aware_correlation_bwd_corr,
        offset_aware_correlation_bwd_weight,
    )

    TRITON_CALLS["offset_aware_correlation_backward"] += 1
    # distinct empty tensors for the gradients not asked for: custom-op outputs must not alias
    dcorr, dweight, dbias = (grad_out.new_empty(0) for _ in range(3))
    if need_corr:
        dcorr = offset_aware_correlation_bwd_corr(grad_out, weight, (hs, ws), input_precision)
    if need_weight:
        dweight = offset_aware_correlation_bwd_weight(grad_out, corr, (hs, ws), input_precision)
    if need_bias:
        dbias = offset_aware_correlation_bwd_bias(grad_out)
    return dcorr, dweight, dbias


@_offset_aware_correlation_backward_op.register_fake
def _offset_aware_correlation_backward_fake(
    grad_out, corr, weight, hs, ws, input_precision, need_corr, need_weight, need_bias
):
    return (
        corr.new_empty(corr.shape) if need_corr else grad_out.new_empty(0),
        weight.new_empty(weight.shape) if need_weight else grad_out.new_empty(0),
        weight.new_empty(weight.shape[0]) if need_bias else grad_out.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    corr, weight, bias, hs, ws, input_precision = inputs
    ctx.save_for_backward(corr, weight)
    ctx.hs, ctx.ws, ctx.input_precision = hs, ws, input_precision
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    corr, weight = ctx.saved_tensors
    need_corr, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_bias = need_bias and ctx.has_bias
    dcorr, dweight, dbias = torch.ops.a2net.offset_aware_correlation_backward(
        grad_out, corr, weight, ctx.hs, ctx.ws, ctx.input_precision, need_corr, need_weight, need_bias
    )
    return (
        dcorr if need_corr else None,
        dweight if need_weight else None,
        dbias if need_bias else None,
        None,
        None,
        None,
    )


_offset_aware_correlation_op.register_autograd(_backward, setup_context=_setup_context)


def offset_aware_correlation(
    corr: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    source_size,
    input_precision: str = "tf32",
) -> torch.Tensor:
    """Offset-aware correlation (docs/design.md §3.2), any source and target sizes.

    ``out[b, o, yt, xt] = bias[o] + sum_{ys, xs} weight[o, ys-yt+Ht-1, xs-xt+Wt-1] *
    corr[b, ys*Ws+xs, yt, xt]``. The Triton path never builds the aligned
    ``(Hs+Ht-1)*(Ws+Wt-1)``-channel tensor, and its weight gradient is deterministic.

    Args:
        corr: ``(B, Hs*Ws, Ht, Wt)`` correlation (source index ``s = ys*Ws + xs``).
        weight: ``(O, Hs+Ht-1, Ws+Wt-1)``, same dtype and device as corr.
        bias: ``(O,)`` or None.
        source_size: ``(Hs, Ws)`` (or an int for a square map).
        input_precision: how the Triton kernels multiply fp32 inputs: ``"tf32"`` (default,
            tensor cores, ~1e-3 relative error), ``"tf32x3"`` (three tf32 products, ~fp32
            accuracy) or ``"ieee"`` (exact fp32). Ignored for fp16/bf16 and by the PyTorch path.
    Returns:
        ``(B, O, Ht, Wt)`` in corr's dtype.

    Example:
        >>> corr = torch.rand(2, 15 * 15, 15, 15)
        >>> weight = torch.randn(128, 29, 29)
        >>> offset_aware_correlation(corr, weight, None, (15, 15)).shape
        torch.Size([2, 128, 15, 15])
    """
    hs, ws = check_offset_aware_correlation_inputs(corr, weight, bias, source_size)
    check_choice("input_precision", input_precision, INPUT_PRECISIONS)
    if use_triton(corr):
        return torch.ops.a2net.offset_aware_correlation(corr, weight, bias, hs, ws, input_precision)
    return reference.offset_aware_correlation(corr, weight, bias, (hs, ws))
