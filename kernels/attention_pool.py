"""Triton kernels of the softmax attention pooling (docs/design.md §3.4).

``out[b, c] = sum_t p[b, t] * values[b, c, t]`` with ``p[b] = softmax(logits[b, 0, :])`` over the
``T = H*W`` positions.

* Forward: one program per (batch, block of channels). A first pass over the logits row finds its
  maximum ``m``; a second pass forms ``exp(logit - m)`` block by block and accumulates both the
  softmax denominator and the weighted sum of the values, so the softmax is never stored. The
  program of the first channel block also stores the row's softmax statistics ``lse[b] = (m,
  log sum_t exp(logit_t - m))``: the logsumexp kept as two fp32 numbers, because a single fp32
  ``m + log(sum)`` loses about ``ulp(m)`` (5e-4 at logits of 1e4), which would become a relative
  error of the whole gradient. A row of ``-inf`` logits only (no softmax) gets ``m = 0`` and a
  sum of 0: its output is 0 and its statistics ``(0, 0)``, so that the backward's
  ``p_t = exp(-inf) = 0`` gives zero gradients, never NaN.
* Backward: one program per (batch, block of positions), looping over all channel blocks, so the
  reduction ``<g, v_t>`` over the channels stays inside a program (deterministic, no atomics):
  ``p_t = exp(logit_t - m - log_sum)``, ``dlogit_t = p_t * <g, v_t - out>`` (=
  ``p_t * (<g, v_t> - <g, out>)``), ``dvalues[c, t] = g[c] * p_t``; each gradient is computed
  only when its flag asks for it.

Accumulation runs in the dtype of ``lse`` (fp32, or fp64 for fp64 inputs). The forward output is
stored in that dtype too: ``v_t - out`` cancels when one position dominates the softmax, and an
fp16/bf16-rounded ``out`` would turn that cancellation into a relative error of ~3e-2 on
``dlogits`` (the public op casts the result to the input dtype). The gradients are stored in the
input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2net.kernels._common import dtype_name, strides
from a2net.kernels._memory import accumulation_dtype, empty
from a2net.kernels._tuning import autotune, launch

# The first config of each list is the default (the only one in interpreter mode); it is sized
# for the model's shapes (C=128, 9x9 positions, B=32) and stays reasonable for C=1024 at 60x60.
FWD_CONFIGS = [
    triton.Config({"BLOCK_C": 32, "BLOCK_T": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_C": 16, "BLOCK_T": 128}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_C": 64, "BLOCK_T": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_C": 64, "BLOCK_T": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 128, "BLOCK_T": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 8, "BLOCK_T": 128}, num_warps=2, num_stages=2),
]

BWD_CONFIGS = [
    triton.Config({"BLOCK_C": 64, "BLOCK_T": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_C": 32, "BLOCK_T": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_C": 128, "BLOCK_T": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_C": 64, "BLOCK_T": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 32, "BLOCK_T": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_C": 16, "BLOCK_T": 32}, num_warps=2, num_stages=2),
]


@autotune(FWD_CONFIGS, key=["C", "T"])
@triton.jit
def attention_pool_fwd_kernel(
    p_logits,  # (B, T), strides (stride_lb, stride_lt)
    p_values,  # (B, C, T), strides (stride_vb, stride_vc, stride_vt)
    p_out,  # (B, C), strides (stride_ob, stride_oc), accumulation dtype
    p_lse,  # (B, 2) contiguous: (max, log-sum) per row; its dtype is the accumulation dtype
    C,
    T,
    stride_lb,
    stride_lt,
    stride_vb,
    stride_vc,
    stride_vt,
    stride_ob,
    stride_oc,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1)
    acc_dtype = p_lse.dtype.element_ty

    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_t = tl.arange(0, BLOCK_T)
    p_logits_row = p_logits + i_b * stride_lb
    # [BC, 1] row pointers of the values; 64-bit since c * stride_vc can be large
    p_values_rows = p_values + i_b * stride_vb + (o_c.to(tl.int64) * stride_vc)[:, None]

    # pass 1: the row maximum (logits only: T numbers, cheap next to the C*T values)
    b_max = tl.full([BLOCK_T], float("-inf"), acc_dtype)  # [BT]
    for t0 in range(0, T, BLOCK_T):
        m_t = t0 + o_t < T
        b_l = tl.load(p_logits_row + (t0 + o_t) * stride_lt, mask=m_t, other=float("-inf"))
        b_max = tl.maximum(b_max, b_l.to(acc_dtype))
    b_m = tl.max(b_max, axis=0)
    b_m = tl.where(b_m == float("-inf"), 0.0, b_m)  # all -inf: exp(-inf - 0) = 0 below, not exp(NaN)

    # pass 2: unnormalised weights exp(logit - m), their sum and the weighted sum of values
    b_sum = tl.zeros([BLOCK_T], dtype=acc_dtype)  # [BT]
    b_acc = tl.zeros([BLOCK_C], dtype=acc_dtype)  # [BC]
    for t0 in range(0, T, BLOCK_T):
        m_t = t0 + o_t < T
        b_l = tl.load(p_logits_row + (t0 + o_t) * stride_lt, mask=m_t, other=float("-inf"))
        b_p = tl.exp(b_l.to(acc_dtype) - b_m)  # [BT], 0 where masked
        b_sum += b_p
        b_v = tl.load(
            p_values_rows + ((t0 + o_t) * stride_vt)[None, :], mask=m_c[:, None] & m_t[None, :], other=0.0
        )  # [BC, BT]
        b_acc += tl.sum(b_v.to(acc_dtype) * b_p[None, :], axis=1)
    b_s = tl.sum(b_sum, axis=0)

    b_s = tl.where(b_s > 0, b_s, 1.0)  # all -inf: b_acc is 0, so the output is 0 and log-sum 0
    b_out = b_acc / b_s
    tl.store(p_out + i_b * stride_ob + o_c * stride_oc, b_out.to(p_out.dtype.element_ty), mask=m_c)
    if i_c == 0:
        tl.store(p_lse + i_b * 2, b_m)
        tl.store(p_lse + i_b * 2 + 1, tl.log(b_s))


@autotune(BWD_CONFIGS, key=["C", "T"])
@triton.jit
def attention_pool_bwd_kernel(
    p_grad,  # (B, C) gradient of the output (accumulation dtype), strides (stride_gb, stride_gc)
    p_logits,  # (B, T)
    p_values,  # (B, C, T)
    p_out,  # (B, C) forward output (accumulation dtype)
    p_lse,  # (B, 2) contiguous (max, log-sum) from the forward
    p_dlogits,  # (B, T), strides (stride_dlb, stride_dlt); untouched unless NEED_LOGITS
    p_dvalues,  # (B, C, T), strides (stride_dvb, stride_dvc, stride_dvt); untouched unless NEED_VALUES
    C,
    T,
    stride_gb,
    stride_gc,
    stride_lb,
    stride_lt,
    stride_vb,
    stride_vc,
    stride_vt,
    stride_ob,
    stride_oc,
    stride_dlb,
    stride_dlt,
    stride_dvb,
    stride_dvc,
    stride_dvt,
    NEED_LOGITS: tl.constexpr,
    NEED_VALUES: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_t = tl.program_id(1)
    acc_dtype = p_lse.dtype.element_ty

    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < T
    o_c = tl.arange(0, BLOCK_C)

    # softmax weights of this block of positions from the saved statistics
    b_m = tl.load(p_lse + i_b * 2)
    b_log_sum = tl.load(p_lse + i_b * 2 + 1)
    b_l = tl.load(p_logits + i_b * stride_lb + o_t * stride_lt, mask=m_t, other=float("-inf"))
    b_p = tl.exp((b_l.to(acc_dtype) - b_m) - b_log_sum)  # [BT], 0 where masked

    b_gv = tl.zeros([BLOCK_T], dtype=acc_dtype)  # [BT] <g, v_t - out>
    for c0 in range(0, C, BLOCK_C):
        m_c = c0 + o_c < C
        o_c64 = (c0 + o_c).to(tl.int64)
        b_g = tl.load(p_grad + i_b * stride_gb + o_c64 * stride_gc, mask=m_c, other=0.0).to(acc_dtype)  # [BC]
        m_ct = m_c[:, None] & m_t[None, :]
        if NEED_VALUES:
            p_dv = p_dvalues + i_b * stride_dvb + (o_c64 * stride_dvc)[:, None] + (o_t * stride_dvt)[None, :]
            b_dv = b_g[:, None] * b_p[None, :]  # [BC, BT]
            tl.store(p_dv, b_dv.to(p_dvalues.dtype.element_ty), mask=m_ct)
        if NEED_LOGITS:
            p_v = p_values + i_b * stride_vb + (o_c64 * stride_vc)[:, None] + (o_t * stride_vt)[None, :]
            b_v = tl.load(p_v, mask=m_ct, other=0.0).to(acc_dtype)  # [BC, BT]
            # <g, v_t - out> rather than <g, v_t> - <g, out>: less cancellation when one
            # position dominates the softmax (then v_t ~ out)
            b_o = tl.load(p_out + i_b * stride_ob + o_c64 * stride_oc, mask=m_c, other=0.0)  # [BC]
            b_gv += tl.sum(b_g[:, None] * (b_v - b_o[:, None]), axis=0)

    if NEED_LOGITS:
        b_dl = b_p * b_gv  # [BT]
        tl.store(p_dlogits + i_b * stride_dlb + o_t * stride_dlt, b_dl.to(p_dlogits.dtype.element_ty), mask=m_t)


def attention_pool_fwd(logits: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher.

    Args:
        logits: ``(B, 1, H, W)``.
        values: ``(B, C, H, W)``, same dtype and device.
    Returns:
        ``out`` ``(B, C)`` and ``lse`` ``(B, 2)``, both in the accumulation dtype (fp32; fp64 for
        fp64 inputs): ``lse`` holds per row the logit maximum and ``log sum_t exp(logit_t - max)``.
    """
    b, c, h, w = values.shape
    t = h * w
    acc = accumulation_dtype(values.dtype)
    out = empty(b, c, dtype=acc, device=values.device)
    lse = empty(b, 2, dtype=acc, device=values.device)
    if b == 0:
        return out, lse
    # reshape keeps a view whenever H and W merge (NCHW and channels-last alike), else copies
    logits2 = logits.reshape(b, t)
    values3 = values.reshape(b, c, t)

    def grid(meta):
        # at least one channel block, so that lse is written even for C = 0
        return (b, max(1, triton.cdiv(c, meta["BLOCK_C"])))

    launch(
        attention_pool_fwd_kernel,
        grid,
        name="attention_pool_fwd",
        device=values.device,
        sizes={"C": c, "T": t, "dtype": dtype_name(values.dtype)},
        p_logits=logits2,
        p_values=values3,
        p_out=out,
        p_lse=lse,
        C=c,
        T=t,
        **strides("l", logits2, "bt"),
        **strides("v", values3, "bct"),
        **strides("o", out, "bc"),
    )
    return out, lse


def attention_pool_bwd(
    grad: torch.Tensor,
    logits: torch.Tensor,
    values: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    need_logits: bool,
    need_values: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward launcher.

    Args:
        grad: ``(B, C)`` gradient of ``out`` (same dtype as ``out``).
        logits, values: the forward inputs.
        out, lse: the forward outputs (accumulation dtype).
        need_logits, need_values: which gradients to compute.
    Returns:
        ``dlogits`` ``(B, 1, H, W)`` and ``dvalues`` ``(B, C, H, W)`` (contiguous, input dtype);
        a gradient that was not asked for is an empty tensor.
    """
    b, c, h, w = values.shape
    t = h * w
    dlogits = empty(*(logits.shape if need_logits else (0,)), dtype=logits.dtype, device=logits.device)
    dvalues = empty(*(values.shape if need_values else (0,)), dtype=values.dtype, device=values.device)
    if b == 0 or not (need_logits or need_values):
        return dlogits, dvalues
    logits2 = logits.reshape(b, t)
    values3 = values.reshape(b, c, t)
    lse = lse.contiguous()
    # strides of the unused outputs are never read: any placeholder works
    dl_strides = (t, 1) if need_logits else (0, 0)
    dv_strides = (c * t, t, 1) if need_values else (0, 0, 0)

    def grid(meta):
        return (b, triton.cdiv(t, meta["BLOCK_T"]))

    launch(
        attention_pool_bwd_kernel,
        grid,
        name="attention_pool_bwd",
        device=values.device,
        sizes={"C": c, "T": t, "dtype": dtype_name(values.dtype)},
        p_grad=grad,
        p_logits=logits2,
        p_values=values3,
        p_out=out,
        p_lse=lse,
        p_dlogits=dlogits,
        p_dvalues=dvalues,
        C=c,
        T=t,
        **strides("g", grad, "bc"),
        **strides("l", logits2, "bt"),
        **strides("v", values3, "bct"),
        **strides("o", out, "bc"),
        stride_dlb=dl_strides[0],
        stride_dlt=dl_strides[1],
        stride_dvb=dv_strides[0],
        stride_dvc=dv_strides[1],
        stride_dvt=dv_strides[2],
        NEED_LOGITS=need_logits,
        NEED_VALUES=need_values,
    )
    return dlogits, dvalues
