"""The softmax attention pooling op (docs/design.md §3.4): Triton kernels behind ``torch.ops.a2net``.

Registered ops:

* ``a2net::attention_pool(logits, values) -> (out, lse)``: ``out`` ``(B, C)`` and the softmax
  statistics ``lse`` ``(B, 2)`` = per row the logit maximum and ``log sum_t exp(logit_t - max)``
  (the logsumexp in two parts, which keeps the backward exact at large logits). Both are in the
  accumulation dtype (fp32; fp64 for fp64 inputs): the backward needs ``out`` unrounded when one
  position dominates the softmax; the public function casts ``out`` to the input dtype;
* ``a2net::attention_pool_backward(grad, logits, values, out, lse, need_logits, need_values)
  -> (dlogits, dvalues)``: a gradient not asked for comes back as an empty tensor.
"""

from __future__ import annotations

import torch

from a2net import reference
from a2net._validation import check_attention_pool_inputs
from a2net.ops._dispatch import TRITON_CALLS, use_triton


@torch.library.custom_op("a2net::attention_pool", mutates_args=())
def _attention_pool_op(logits: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from a2net.kernels.attention_pool import attention_pool_fwd

    TRITON_CALLS["attention_pool"] += 1
    return attention_pool_fwd(logits, values)


@_attention_pool_op.register_fake
def _attention_pool_fake(logits, values):
    b, c = values.shape[:2]
    acc = torch.float64 if values.dtype == torch.float64 else torch.float32
    return values.new_empty(b, c, dtype=acc), values.new_empty(b, 2, dtype=acc)


@torch.library.custom_op("a2net::attention_pool_backward", mutates_args=())
def _attention_pool_backward_op(
    grad: torch.Tensor,
    logits: torch.Tensor,
    values: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    need_logits: bool,
    need_values: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from a2net.kernels.attention_pool import attention_pool_bwd

    TRITON_CALLS["attention_pool_backward"] += 1
    return attention_pool_bwd(grad, logits, values, out, lse, need_logits, need_values)


@_attention_pool_backward_op.register_fake
def _attention_pool_backward_fake(grad, logits, values, out, lse, need_logits, need_values):
    dlogits = logits.new_empty(logits.shape if need_logits else (0,))
    dvalues = values.new_empty(values.shape if need_values else (0,))
    return dlogits, dvalues


def _setup_context(ctx, inputs, output):
    logits, values = inputs
    out, lse = output
    ctx.save_for_backward(logits, values, out, lse)


def _backward(ctx, grad_out, grad_lse):
    # lse is an internal by-product (the public function never returns it): its gradient is ignored
    logits, values, out, lse = ctx.saved_tensors
    need_logits, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dlogits, dvalues = torch.ops.a2net.attention_pool_backward(
        grad_out, logits, values, out, lse, need_logits, need_values
    )
    return (dlogits if need_logits else None), (dvalues if need_values else None)


_attention_pool_op.register_autograd(_backward, setup_context=_setup_context)


def attention_pool(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax attention pooling: ``out[b, c] = sum_t softmax_t(logits[b, 0])[t] * values[b, c, t]``.

    The softmax runs over all ``H*W`` positions (numerically stable for any finite logits); the
    Triton path fuses it with the weighted sum and never stores the attention map. A row whose
    logits are all ``-inf`` gives zeros, with zero gradients for its logits and values, on both
    paths. See :func:`a2net.reference.attention_pool` for the definition.

    Args:
        logits: ``(B, 1, H, W)`` attention logits.
        values: ``(B, C, H, W)`` values, same dtype and device as ``logits``.
    Returns:
        ``(B, C)`` in the inputs' dtype.

    Example:
        >>> logits, values = torch.zeros(2, 1, 9, 9), torch.randn(2, 128, 9, 9)
        >>> attention_pool(logits, values).shape  # uniform weights: the spatial mean
        torch.Size([2, 128])
    """
    check_attention_pool_inputs(logits, values)
    if use_triton(values):
        out, _ = torch.ops.a2net.attention_pool(logits, values)
        return out.to(values.dtype)
    return reference.attention_pool(logits, values)
