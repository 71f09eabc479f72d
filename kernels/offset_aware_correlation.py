"""Triton kernels of the offset-aware correlation (OAC), forward and backward.

``out[b, o, t] = bias[o] + sum_s W[o, off(s, t)] * corr[b, s, t]``, ``off(s, t) = (ys-yt+Ht-1,
xs-xt+Wt-1)`` on the ``Dh x Dw = (Hs+Ht-1) x (Ws+Wt-1)`` offset grid. In the authors' terms this is
a 1x1 convolution of the zero-filled *aligned* tensor ``A[b, d, t] = corr[b, s(d, t), t]`` (0 where
offset ``d`` from ``t`` leaves the source map). Every kernel here is an implicit GEMM on ``A``:
blocks of ``A`` are gathered from ``corr`` on the fly (or scattered into ``dcorr``), the aligned
tensor itself never exists.

* forward ``out[b, :, t] = W @ A[b, :, t]`` and ``dcorr``'s ``dA[b, :, t] = W^T @ g[b, :, t]``: one
  program per tile of targets (``BLOCK_T`` consecutive ``xt`` of one row ``yt``) x a block of the
  batch; N = (target, batch) pairs. Only the offsets that some target of the tile can see are
  visited: ``Hs`` rows x ``Ws + BLOCK_T - 1`` columns of the offset grid (``Ws / (Ws+BLOCK_T-1)``
  of the products are useful; the rest are masked zeros). Each ``dcorr`` element is written by
  exactly one program, with a plain store.
* ``dW[o, d] = sum_{b, t} g[b, o, t] * A[b, d, t]``: one program per 2-D tile of offsets x a block
  of channels, K over the targets that some offset of the tile can see. Deterministic: the batch
  may be split into fixed chunks (partial sums, then
  :func:`offset_aware_correlation_bwd_reduce_kernel` adds them in a fixed order); no atomics
  anywhere, so two runs give bit-identical gradients.
* ``dbias`` sums ``g`` per batch element, then the same reduction.

Memory: ``O(B*O*T + B*S*T)``, plus for ``dW`` at most ``16*O*Dh*Dw`` fp32 partial sums.
Gathers decompose into ``offset(d) + offset(t, b)`` (two 1-D vectors broadcast together), which
keeps the integer work and the registers per element low.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2net.kernels._common import batch_split, dtype_name, strides
from a2net.kernels._memory import accumulation_dtype, empty
from a2net.kernels._tuning import INTERPRET, autotune, launch

# ---------------------------------------------------------------------------------------------
# Configs. The first entry of each list is the default (the only one under the interpreter).
# ---------------------------------------------------------------------------------------------

FWD_CONFIGS = [
    triton.Config({"BLOCK_O": 128, "BLOCK_D": 32, "BLOCK_T": 16, "BLOCK_B": 4}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_O": 128, "BLOCK_D": 32, "BLOCK_T": 16, "BLOCK_B": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_O": 64, "BLOCK_D": 32, "BLOCK_T": 16, "BLOCK_B": 4}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_O": 128, "BLOCK_D": 64, "BLOCK_T": 8, "BLOCK_B": 8}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_O": 64, "BLOCK_D": 64, "BLOCK_T": 16, "BLOCK_B": 1}, num_warps=4, num_stages=3),
]

BWD_CORR_CONFIGS = [
    triton.Config({"BLOCK_D": 64, "BLOCK_O": 32, "BLOCK_T": 16, "BLOCK_B": 4}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_D": 128, "BLOCK_O": 32, "BLOCK_T": 16, "BLOCK_B": 4}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_D": 64, "BLOCK_O": 32, "BLOCK_T": 16, "BLOCK_B": 8}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_D": 64, "BLOCK_O": 32, "BLOCK_T": 8, "BLOCK_B": 4}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_D": 64, "BLOCK_O": 32, "BLOCK_T": 16, "BLOCK_B": 1}, num_warps=4, num_stages=3),
]

BWD_WEIGHT_CONFIGS = [
    triton.Config({"BLOCK_O": 128, "BLOCK_DY": 4, "BLOCK_DX": 16, "BLOCK_T": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_O": 128, "BLOCK_DY": 4, "BLOCK_DX": 16, "BLOCK_T": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_O": 64, "BLOCK_DY": 4, "BLOCK_DX": 16, "BLOCK_T": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_O": 64, "BLOCK_DY": 2, "BLOCK_DX": 32, "BLOCK_T": 16}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_O": 32, "BLOCK_DY": 8, "BLOCK_DX": 16, "BLOCK_T": 16}, num_warps=4, num_stages=3),
]

BWD_BIAS_CONFIGS = [
    triton.Config({"BLOCK_O": 16, "BLOCK_T": 128}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_O": 32, "BLOCK_T": 128}, num_warps=4, num_stages=2),
]

REDUCE_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK": 4096}, num_warps=8, num_stages=2),
]

# The dW batch split is chosen from a nominal tile (offsets x channels), not from the config the
# autotuner picks, so the split (and the summation order) depends on the shapes only.
OFFSET_TILE_D = 64
OFFSET_TILE_O = 64
OFFSET_TILE_TARGET_PROGRAMS = 2048


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _target_tile(i_t, i_b, B, Ws, Wt, BLOCK_T: tl.constexpr, BLOCK_B: tl.constexpr):
    """The (target, batch) pairs of a program and the offsets they can see.

    Program ``i_t`` owns targets ``xt0 .. xt_last`` of row ``yt``; ``i_b`` owns a block of the batch.
    N index ``n = b_local * BLOCK_T + t_local``. The offsets seen from these targets form the
    rectangle ``Hs x n_c`` of the offset grid starting at ``(Ht-1-yt, Wt-1-xt_last)``; in it,
    flat index ``k = r * n_c + c`` is the source ``(ys, xs) = (r, c + xt - xt_last)`` of target ``xt``.
    """
    n_xb = tl.cdiv(Wt, BLOCK_T)
    yt = i_t // n_xb
    xt0 = (i_t % n_xb) * BLOCK_T
    xt_last = tl.minimum(xt0 + BLOCK_T, Wt) - 1
    n_c = Ws + xt_last - xt0
    o_n = tl.arange(0, BLOCK_T * BLOCK_B)
    xt = xt0 + o_n % BLOCK_T  # [N]
    o_b = i_b * BLOCK_B + o_n // BLOCK_T  # [N]
    m_n = (xt < Wt) & (o_b < B)
    return yt, xt_last, n_c, xt, o_b, m_n


@autotune(FWD_CONFIGS, key=["B", "O", "Hs", "Ws", "Ht", "Wt"])
@triton.jit
def offset_aware_correlation_fwd_kernel(
    p_corr,
    p_weight,
    p_bias,
    p_out,
    B,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_cb,
    stride_cs,
    stride_cy,
    stride_cx,
    stride_wo,
    stride_wy,
    stride_wx,
    stride_bias,
    stride_ob,
    stride_oo,
    stride_oy,
    stride_ox,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_B: tl.constexpr,
):  #
    """``out[b, o, t] = bias[o] + sum_d W[o, d] * A[b, d, t]`` for a tile of targets x batch."""
    i_t, i_o, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    yt, xt_last, n_c, xt, o_b, m_n = _target_tile(i_t, i_b, B, Ws, Wt, BLOCK_T, BLOCK_B)
    n_d = Hs * n_c
    dxs = xt - xt_last  # [N], xs = c + dxs
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    m_o = o_o < O

    # corr[b, r*Ws + c + dxs, yt, xt] = p_c + (r*Ws + c) * stride_cs
    p_c = p_corr + yt.to(tl.int64) * stride_cy - xt_last.to(tl.int64) * stride_cs
    p_c += (o_b.to(tl.int64) * stride_cb + xt.to(tl.int64) * (stride_cx + stride_cs))[None, :]
    # W[o, Ht-1-yt + r, Wt-1-xt_last + c]
    p_w = p_weight + (Ht - 1 - yt) * stride_wy + (Wt - 1 - xt_last) * stride_wx + o_o[:, None] * stride_wo

    ACC: tl.constexpr = tl.float64 if p_out.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_O, BLOCK_T * BLOCK_B), dtype=ACC)  # [BO, N]
    for k0 in range(0, n_d, BLOCK_D):
        o_k = k0 + tl.arange(0, BLOCK_D)
        m_k = o_k < n_d
        r, c = o_k // n_c, o_k % n_c  # [BD]
        p_w_k = p_w + (r * stride_wy + c * stride_wx)[None, :]
        b_w = tl.load(p_w_k, mask=m_o[:, None] & m_k[None, :], other=0.0)  # [BO, BD]
        xs = c[:, None] + dxs[None, :]  # [BD, N]
        m_a = (m_k[:, None] & m_n[None, :]) & ((xs >= 0) & (xs < Ws))
        b_a = tl.load(p_c + ((r * Ws + c).to(tl.int64) * stride_cs)[:, None], mask=m_a, other=0.0)  # [BD, N]
        if UPCAST:
            b_w, b_a = b_w.to(tl.float32), b_a.to(tl.float32)
        acc = tl.dot(b_w, b_a, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)

    if HAS_BIAS:
        acc += tl.load(p_bias + o_o * stride_bias, mask=m_o, other=0.0).to(acc.dtype)[:, None]
    p_o = p_out + yt * stride_oy + o_o[:, None] * stride_oo + (o_b.to(tl.int64) * stride_ob + xt * stride_ox)[None, :]
    tl.store(p_o, acc.to(p_out.dtype.element_ty), mask=m_o[:, None] & m_n[None, :])


@autotune(BWD_CORR_CONFIGS, key=["B", "O", "Hs", "Ws", "Ht", "Wt"])
@triton.jit
def offset_aware_correlation_bwd_corr_kernel(
    p_grad,
    p_weight,
    p_dcorr,
    B,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_gb,
    stride_go,
    stride_gy,
    stride_gx,
    stride_wo,
    stride_wy,
    stride_wx,
    stride_cb,
    stride_cs,
    stride_cy,
    stride_cx,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_B: tl.constexpr,
):  #
    """``dcorr[b, s, t] = dA[b, off(s, t), t]`` with ``dA[b, d, t] = sum_o W[o, d] * g[b, o, t]``,
    for a tile of targets x batch; every (s, t) of the tile is one (d, t) of its offset rectangle."""
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    yt, xt_last, n_c, xt, o_b, m_n = _target_tile(i_t, i_b, B, Ws, Wt, BLOCK_T, BLOCK_B)
    n_d = Hs * n_c
    dxs = xt - xt_last  # [N]

    p_g = p_grad + yt * stride_gy + (o_b.to(tl.int64) * stride_gb + xt * stride_gx)[None, :]
    p_w = p_weight + (Ht - 1 - yt) * stride_wy + (Wt - 1 - xt_last) * stride_wx
    p_c = p_dcorr + yt.to(tl.int64) * stride_cy - xt_last.to(tl.int64) * stride_cs
    p_c += (o_b.to(tl.int64) * stride_cb + xt.to(tl.int64) * (stride_cx + stride_cs))[None, :]

    ACC: tl.constexpr = tl.float64 if p_dcorr.dtype.element_ty == tl.float64 else tl.float32
    for k0 in range(0, n_d, BLOCK_D):
        o_k = k0 + tl.arange(0, BLOCK_D)
        m_k = o_k < n_d
        r, c = o_k // n_c, o_k % n_c  # [BD]
        p_w_k = p_w + (r * stride_wy + c * stride_wx)[:, None]
        acc = tl.zeros((BLOCK_D, BLOCK_T * BLOCK_B), dtype=ACC)  # [BD, N]
        for o0 in range(0, O, BLOCK_O):
            o_o = o0 + tl.arange(0, BLOCK_O)
            m_o = o_o < O
            b_w = tl.load(p_w_k + o_o[None, :] * stride_wo, mask=m_k[:, None] & m_o[None, :], other=0.0)  # [BD, BO]
            b_g = tl.load(p_g + o_o[:, None] * stride_go, mask=m_o[:, None] & m_n[None, :], other=0.0)  # [BO, N]
            if UPCAST:
                b_w, b_g = b_w.to(tl.float32), b_g.to(tl.float32)
            acc = tl.dot(b_w, b_g, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)
        xs = c[:, None] + dxs[None, :]  # [BD, N]
        m_a = (m_k[:, None] & m_n[None, :]) & ((xs >= 0) & (xs < Ws))
        tl.store(p_c + ((r * Ws + c).to(tl.int64) * stride_cs)[:, None], acc.to(p_dcorr.dtype.element_ty), mask=m_a)


@autotune(BWD_WEIGHT_CONFIGS, key=["B", "O", "Hs", "Ws", "Ht", "Wt", "batch_per_split"])
@triton.jit
def offset_aware_correlation_bwd_weight_kernel(
    p_grad,
    p_corr,
    p_dweight,
    B,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    batch_per_split,
    stride_gb,
    stride_go,
    stride_gy,
    stride_gx,
    stride_cb,
    stride_cs,
    stride_cy,
    stride_cx,
    stride_dn,
    stride_do,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_DY: tl.constexpr,
    BLOCK_DX: tl.constexpr,
    BLOCK_T: tl.constexpr,
):  #
    """``dW[n, o, d] = sum_{b in split n} sum_t g[b, o, t] * corr[b, s(d, t), t]`` for one tile of
    offsets ``d`` (``BLOCK_DY x BLOCK_DX`` of the offset grid) and a block of channels.

    ``s(d, t) = (yt + dy - (Ht-1), xt + dx - (Wt-1))`` when inside the source map, else no term.
    Only the rectangle of targets ``(yt, xt)`` for which some offset of the tile lands inside the
    source map is visited (flattened, ``BLOCK_T`` targets per step). ``p_dweight`` is
    ``(n_split, O, Dh*Dw)`` with row stride ``stride_do``; the batch split is ``batch_per_split``.
    """
    i_d, i_o, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    Dh, Dw = Hs + Ht - 1, Ws + Wt - 1
    i_dy, i_dx = i_d // tl.cdiv(Dw, BLOCK_DX), i_d % tl.cdiv(Dw, BLOCK_DX)
    dy_lo, dx_lo = i_dy * BLOCK_DY, i_dx * BLOCK_DX
    dy_hi = tl.minimum(dy_lo + BLOCK_DY, Dh) - 1
    dx_hi = tl.minimum(dx_lo + BLOCK_DX, Dw) - 1
    # ys = yt + dy - (Ht-1) in [0, Hs) for some dy of the tile <=> yt in [Ht-1-dy_hi, Ht-1-dy_lo+Hs-1]
    yt_lo = tl.maximum(Ht - 1 - dy_hi, 0)
    yt_end = tl.minimum(Ht - dy_lo + Hs - 1, Ht)
    xt_lo = tl.maximum(Wt - 1 - dx_hi, 0)
    xt_end = tl.minimum(Wt - dx_lo + Ws - 1, Wt)

    o_d = tl.arange(0, BLOCK_DY * BLOCK_DX)
    dy = dy_lo + o_d // BLOCK_DX  # [BD]
    dx = dx_lo + o_d % BLOCK_DX  # [BD]
    m_d = (dy < Dh) & (dx < Dw)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    m_o = o_o < O

    b_lo = i_n * batch_per_split
    b_end = tl.minimum(b_lo + batch_per_split, B)
    # pointers to batch element b_lo, advanced by one batch stride per iteration (64-bit)
    p_g_b = p_grad + b_lo.to(tl.int64) * stride_gb + o_o[:, None] * stride_go
    p_c_b = p_corr + b_lo.to(tl.int64) * stride_cb
    ACC: tl.constexpr = tl.float64 if p_corr.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_O, BLOCK_DY * BLOCK_DX), dtype=ACC)  # [BO, BD]
    # corr[b, s(d, t), t] = p_c_b + off_t[t] + off_d[d]: the gather is a sum of two 1-D offsets
    off_d = (dy * Ws + dx - ((Ht - 1) * Ws + (Wt - 1))).to(tl.int64) * stride_cs  # [BD]
    dy_ = dy - (Ht - 1)
    dx_ = dx - (Wt - 1)
    # K runs over the (yt, xt) rectangle of useful targets, flattened (several rows per block)
    nx = xt_end - xt_lo
    n_t = (yt_end - yt_lo) * nx
    for _ in range(b_lo, b_end):
        for k0 in range(0, n_t, BLOCK_T):
            o_k = k0 + tl.arange(0, BLOCK_T)
            m_t = o_k < n_t
            yt, xt = yt_lo + o_k // nx, xt_lo + o_k % nx  # [BT]
            p_g = p_g_b + (yt * stride_gy + xt * stride_gx)[None, :]
            b_g = tl.load(p_g, mask=m_o[:, None] & m_t[None, :], other=0.0)  # [BO, BT]
            ys = yt[:, None] + dy_[None, :]  # [BT, BD]
            xs = xt[:, None] + dx_[None, :]  # [BT, BD]
            m_a = (m_t[:, None] & m_d[None, :]) & ((ys >= 0) & (ys < Hs)) & ((xs >= 0) & (xs < Ws))
            off_t = (yt * Ws + xt).to(tl.int64) * stride_cs + yt.to(tl.int64) * stride_cy
            off_t += xt.to(tl.int64) * stride_cx  # [BT]
            b_a = tl.load(p_c_b + off_t[:, None] + off_d[None, :], mask=m_a, other=0.0)  # [BT, BD]: A[b, d, t]^T
            if UPCAST:
                b_g, b_a = b_g.to(tl.float32), b_a.to(tl.float32)
            acc = tl.dot(b_g, b_a, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)
        p_g_b += stride_gb
        p_c_b += stride_cb

    p_dw = p_dweight + i_n.to(tl.int64) * stride_dn + o_o[:, None] * stride_do + (dy * Dw + dx)[None, :]
    tl.store(p_dw, acc.to(p_dweight.dtype.element_ty), mask=m_o[:, None] & m_d[None, :])


@autotune(BWD_BIAS_CONFIGS, key=["O", "Ht", "Wt"])
@triton.jit
def offset_aware_correlation_bwd_bias_kernel(
    p_grad,
    p_dbias,
    O,
    Ht,
    Wt,
    stride_gb,
    stride_go,
    stride_gy,
    stride_gx,
    stride_dn,
    BLOCK_O: tl.constexpr,
    BLOCK_T: tl.constexpr,
):  #
    """``dbias[b, o] = sum_t g[b, o, t]`` for one batch element (partial sums over the batch)."""
    i_o, i_b = tl.program_id(0), tl.program_id(1)
    T = Ht * Wt
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    m_o = o_o < O
    p_g = p_grad + i_b.to(tl.int64) * stride_gb + o_o[:, None] * stride_go
    acc = tl.zeros((BLOCK_O, BLOCK_T), dtype=p_dbias.dtype.element_ty)  # [BO, BT]
    for t0 in range(0, T, BLOCK_T):
        o_t = t0 + tl.arange(0, BLOCK_T)
        m_t = o_t < T
        p = p_g + ((o_t // Wt) * stride_gy + (o_t % Wt) * stride_gx)[None, :]
        acc += tl.load(p, mask=m_o[:, None] & m_t[None, :], other=0.0).to(acc.dtype)
    tl.store(p_dbias + i_b.to(tl.int64) * stride_dn + o_o, tl.sum(acc, axis=1), mask=m_o)


@autotune(REDUCE_CONFIGS, key=["N", "n_split"])
@triton.jit
def offset_aware_correlation_bwd_reduce_kernel(p_partial, p_out, N, n_split, stride_pn, BLOCK: tl.constexpr):
    """``out[i] = sum_n partial[n, i]`` in the fixed order n = 0, 1, ... (deterministic)."""
    i_blk = tl.program_id(0)
    o_i = i_blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_i = o_i < N
    p = p_partial + o_i
    acc = tl.zeros((BLOCK,), dtype=p_partial.dtype.element_ty)  # [BLOCK]
    for _ in range(0, n_split):
        acc += tl.load(p, mask=m_i, other=0.0)
        p += stride_pn
    tl.store(p_out + o_i, acc.to(p_out.dtype.element_ty), mask=m_i)


# ---------------------------------------------------------------------------------------------
# Launchers (tensor in, tensor out)
# ---------------------------------------------------------------------------------------------


def _upcast(dtype: torch.dtype) -> bool:
    """The interpreter has no bf16 arithmetic: its dots run on fp32 copies (exact for bf16 inputs)."""
    return INTERPRET and dtype == torch.bfloat16


def _precision(dtype: torch.dtype, input_precision: str) -> str:
    """fp64 dots are always exact ("tf32" does not apply to them)."""
    return "ieee" if dtype == torch.float64 else input_precision


def _sizes(corr: torch.Tensor, o: int) -> dict:
    b, s, ht, wt = corr.shape
    return {"B": b, "O": o, "S": s, "T": ht * wt, "dtype": dtype_name(corr.dtype)}


def offset_aware_correlation_fwd(
    corr: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    source_size: tuple[int, int],
    input_precision: str = "tf32",
) -> torch.Tensor:
    """OAC forward: corr ``(B, Hs*Ws, Ht, Wt)``, weight ``(O, Hs+Ht-1, Ws+Wt-1)``, bias ``(O,)`` or
    None -> ``(B, O, Ht, Wt)`` in corr's dtype. Arguments are assumed validated."""
    hs, ws = source_size
    b, _, ht, wt = corr.shape
    o = weight.shape[0]
    out = empty(b, o, ht, wt, dtype=corr.dtype, device=corr.device)
    if out.numel() == 0:
        return out
    launch(
        offset_aware_correlation_fwd_kernel,
        lambda meta: (
            ht * triton.cdiv(wt, meta["BLOCK_T"]),
            triton.cdiv(o, meta["BLOCK_O"]),
            triton.cdiv(b, meta["BLOCK_B"]),
        ),
        name="offset_aware_correlation_fwd",
        device=corr.device,
        sizes=_sizes(corr, o),
        p_corr=corr,
        p_weight=weight,
        p_bias=weight if bias is None else bias,
        p_out=out,
        B=b,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        **strides("c", corr, "bsyx"),
        **strides("w", weight, "oyx"),
        stride_bias=0 if bias is None else bias.stride(0),
        **strides("o", out, "boyx"),
        HAS_BIAS=bias is not None,
        UPCAST=_upcast(corr.dtype),
        INPUT_PRECISION=_precision(corr.dtype, input_precision),
    )  #
    return out


def offset_aware_correlation_bwd_corr(
    grad_out: torch.Tensor, weight: torch.Tensor, source_size: tuple[int, int], input_precision: str = "tf32"
) -> torch.Tensor:
    """Gradient of the OAC w.r.t. corr: grad_out ``(B, O, Ht, Wt)`` -> ``(B, Hs*Ws, Ht, Wt)``."""
    hs, ws = source_size
    b, o, ht, wt = grad_out.shape
    dcorr = empty(b, hs * ws, ht, wt, dtype=grad_out.dtype, device=grad_out.device)
    if dcorr.numel() == 0:
        return dcorr
    launch(
        offset_aware_correlation_bwd_corr_kernel,
        lambda meta: (ht * triton.cdiv(wt, meta["BLOCK_T"]), triton.cdiv(b, meta["BLOCK_B"])),
        name="offset_aware_correlation_bwd_corr",
        device=grad_out.device,
        sizes=_sizes(dcorr, o),
        p_grad=grad_out,
        p_weight=weight,
        p_dcorr=dcorr,
        B=b,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        **strides("g", grad_out, "boyx"),
        **strides("w", weight, "oyx"),
        **strides("c", dcorr, "bsyx"),
        UPCAST=_upcast(grad_out.dtype),
        INPUT_PRECISION=_precision(grad_out.dtype, input_precision),
    )  #
    return dcorr


def offset_tile_batch_split(b: int, o: int, offset_grid: tuple[int, int]) -> tuple[int, int]:
    """``(n_split, batch_per_split)``: the batch split of each offset tile's dW program, enough
    programs to fill a GPU when the offset grid is small (paper: 29x29), one split when it is
    large. A function of the shapes only."""
    n_tiles = triton.cdiv(offset_grid[0] * offset_grid[1], OFFSET_TILE_D) * triton.cdiv(o, OFFSET_TILE_O)
    return batch_split(b, n_tiles, OFFSET_TILE_TARGET_PROGRAMS)


def _reduce_partials(partial: torch.Tensor, out: torch.Tensor) -> None:
    """``out.view(-1) = partial.view(n, -1).sum(0)`` in a fixed order (out contiguous)."""
    n = out.numel()
    launch(
        offset_aware_correlation_bwd_reduce_kernel,
        lambda meta: (triton.cdiv(n, meta["BLOCK"]),),
        name="offset_aware_correlation_bwd_reduce",
        device=out.device,
        sizes={"N": n, "n_split": partial.shape[0], "dtype": dtype_name(out.dtype)},
        p_partial=partial,
        p_out=out,
        N=n,
        n_split=partial.shape[0],
        stride_pn=partial.stride(0),
    )  #


def offset_aware_correlation_bwd_weight(
    grad_out: torch.Tensor, corr: torch.Tensor, source_size: tuple[int, int], input_precision: str = "tf32"
) -> torch.Tensor:
    """Gradient of the OAC w.r.t. weight: ``(O, Hs+Ht-1, Ws+Wt-1)`` in corr's dtype, deterministic."""
    hs, ws = source_size
    b, o, ht, wt = grad_out.shape
    dh, dw = hs + ht - 1, ws + wt - 1
    dweight = empty(o, dh, dw, dtype=corr.dtype, device=corr.device)
    if b == 0:
        return dweight.zero_()
    n_split, per_split = offset_tile_batch_split(b, o, (dh, dw))
    # One split writes dW directly; several write fp32 partial sums that are then reduced.
    if n_split == 1:
        partial = dweight
    else:
        partial = empty(n_split, o, dh * dw, dtype=accumulation_dtype(corr.dtype), device=corr.device)
    launch(
        offset_aware_correlation_bwd_weight_kernel,
        lambda meta: (
            triton.cdiv(dh, meta["BLOCK_DY"]) * triton.cdiv(dw, meta["BLOCK_DX"]),
            triton.cdiv(o, meta["BLOCK_O"]),
            n_split,
        ),
        name="offset_aware_correlation_bwd_weight",
        device=corr.device,
        sizes=_sizes(corr, o),
        p_grad=grad_out,
        p_corr=corr,
        p_dweight=partial,
        B=b,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        batch_per_split=per_split,
        **strides("g", grad_out, "boyx"),
        **strides("c", corr, "bsyx"),
        stride_dn=0 if n_split == 1 else partial.stride(0),
        stride_do=dh * dw,
        UPCAST=_upcast(corr.dtype),
        INPUT_PRECISION=_precision(corr.dtype, input_precision),
    )  #
    if n_split > 1:
        _reduce_partials(partial, dweight)
    return dweight


def offset_aware_correlation_bwd_bias(grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient of the OAC w.r.t. bias: ``(O,)``, the sum of grad_out over batch and targets."""
    b, o, ht, wt = grad_out.shape
    dbias = empty(o, dtype=grad_out.dtype, device=grad_out.device)
    if b == 0:
        return dbias.zero_()
    partial = empty(b, o, dtype=accumulation_dtype(grad_out.dtype), device=grad_out.device)
    launch(
        offset_aware_correlation_bwd_bias_kernel,
        lambda meta: (triton.cdiv(o, meta["BLOCK_O"]), b),
        name="offset_aware_correlation_bwd_bias",
        device=grad_out.device,
        sizes={"B": b, "O": o, "T": ht * wt, "dtype": dtype_name(grad_out.dtype)},
        p_grad=grad_out,
        p_dbias=partial,
        O=o,
        Ht=ht,
        Wt=wt,
        **strides("g", grad_out, "boyx"),
        stride_dn=partial.stride(0),
    )  #
    _reduce_partials(partial, dbias)
    return dbias
