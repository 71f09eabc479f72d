"""Fused correlation + offset-aware correlation (docs/design.md §3.5): feature maps -> OAC
features, the 4D correlation never in memory.

``out[b, o, t] = bias[o] + sum_s W[o, off(s, t)] * relu(c[s, t]) / n_t`` with
``c[s, t] = a_s b_t <src[:, s], tgt[:, t]>`` (``a``/``b`` the inverse channel norms, or 1 without
feature normalisation), ``n_t = sqrt(sum_s relu(c[s, t])^2 + eps)`` and ``off(s, t) =
(ys-yt+Ht-1, xs-xt+Wt-1)``: :func:`a2net.reference.correlation` (ReLU and match normalisation on)
followed by :func:`a2net.reference.offset_aware_correlation`, in the spirit of FlashAttention.

Forward (:func:`correlation_oac_fwd_kernel`), one program per (batch, target row ``yt``, block of
``BLOCK_XT`` target columns, block of output channels), looping over the source rows ``ys`` and
blocks of ``BLOCK_XS`` source columns:

* the correlation tile ``R = relu(c)`` ``[BXS, BXT]`` is a ``tl.dot`` over channels, scaled by
  the inverse feature norms; its squared column sums accumulate ``n_t^2``;
* for a fixed ``(ys, yt)`` the weights ``W[o, dy, xs - xt + Wt - 1]`` form a Toeplitz matrix in
  ``(xs, xt)``. Skewing the tile with ``tl.gather`` (``Rs[j, x] = R[j + x - BXT + 1, x]``, zero
  outside) turns the contraction into a second ``tl.dot`` against the *contiguous* weight slice
  ``W[o, dy, dx0 : dx0 + BJ]`` (``BJ = 2 max(BXS, BXT)``, taken ``OAC_CHUNK`` columns at a time).
  The launcher zero-pads the weight (:func:`padded_weight`) so that every slice is in range and
  16-aligned: unmasked vector loads, which keeps the weight tile's registers low;
* the match normalisation is linear in the tile, so it is a per-target scale at the end:
  ``out = acc / n_t + bias``. Saved for the backward: ``1 / n_t`` (B, T).

Backward (``g`` the incoming gradient, ``Y = out - bias``, ``R = relu(c)``):

* ``dW[o, d] = sum_{b, t} g[b, o, t] * corr[b, s(d, t), t]``
  (:func:`correlation_oac_bwd_weight_kernel`) recomputes the correlation tiles. A program owns
  one offset row ``dy`` and one *diagonal* ``k = i_xs - i_xt`` of column blocks (``BLOCK_X`` for
  both maps), so every tile it visits maps to the same ``2*BLOCK_X`` offset columns: the skewed,
  normalised tile ``[BX, 2BX]`` meets ``g`` in a ``tl.dot`` accumulating in registers, and every
  correlation tile is computed exactly once over all programs. Neighbouring diagonals overlap by
  ``BLOCK_X`` columns; :func:`correlation_oac_bwd_weight_reduce_kernel` adds the partial rows (and
  the batch splits) in a fixed order: deterministic, no atomics. ``dbias`` is the sum of ``g``
  (:func:`a2net.kernels.offset_aware_correlation.offset_aware_correlation_bwd_bias`).
* Only when a feature map needs a gradient (the paper freezes the backbone, so the default
  training path skips this), :func:`correlation_oac_bwd_corr_kernel` recomputes the tiles again,
  with ``q_t = sum_o g[o, t] Y[o, t] / n_t`` and ``P[s, t] = sum_o W[o, off(s, t)] g[o, t]`` (a
  dot against the transposed weight slice, un-skewed by ``tl.gather``):
  ``dc = (P - q_t R) / n_t`` where ``c > 0``. ``dc`` (B, S, T) is written (the one (HW)^2 buffer,
  on this path only) with the feature-norm dots, and the correlation's backward GEMMs
  (:func:`a2net.kernels.correlation.correlation_bwd_features`) finish.

Memory: forward O(B*(C*(S+T) + O*T)); weight/bias backward adds ``n_split * n_diag * O * Dh * 2BX``
fp32 partial sums (a few MB); the feature-gradient path adds ``B*S*T``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2net.kernels._common import batch_split, correlation_tile, dot_options, dtype_name, strides
from a2net.kernels._memory import accumulation_dtype, empty
from a2net.kernels._tuning import INTERPRET, autotune, launch
from a2net.kernels.correlation import correlation_bwd_features, correlation_inverse_norm
from a2net.kernels.offset_aware_correlation import offset_aware_correlation_bwd_bias

# ---------------------------------------------------------------------------------------------
# Configs. The column blocks (BLOCK_XS/XT/X) and BLOCK_O are chosen by the launchers from the
# shapes (they size buffers and grids); the configs tune the channel step, warps and stages.
# The first entry is the default (the only one under the interpreter).
# ---------------------------------------------------------------------------------------------

FWD_CONFIGS = [
    triton.Config({"BLOCK_C": 16, "OAC_CHUNK": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 32, "OAC_CHUNK": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 32, "OAC_CHUNK": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_C": 32, "OAC_CHUNK": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_C": 64, "OAC_CHUNK": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_C": 16, "OAC_CHUNK": 16}, num_warps=4, num_stages=3),
]
BWD_WEIGHT_CONFIGS = [
    triton.Config({"BLOCK_C": 16}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_C": 16}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 32}, num_warps=8, num_stages=2),
]
BWD_CORR_CONFIGS = [
    triton.Config({"BLOCK_C": 16}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_C": 32}, num_warps=8, num_stages=3),
]
REDUCE_BLOCK, REDUCE_WARPS = 1024, 4

MAX_BLOCK_X = 32  # column block of the maps (16 for the paper's 15x15, 32 above)
MAX_BLOCK_O = 128  # output channels per program (the paper's O); more -> several programs
BWD_CORR_BLOCK_O = 64  # output channels per step of the feature-gradient kernel's loop over O
# The dW batch split is a function of the shapes only (so is the summation order): enough
# (offset row, diagonal) programs to fill a GPU when the offset grid is small.
DIAGONAL_TARGET_PROGRAMS = 264


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune(FWD_CONFIGS, key=["C", "O", "Hs", "Ws", "Ht", "Wt"])
@triton.jit
def correlation_oac_fwd_kernel(
    p_src,
    p_tgt,
    p_inv_src,
    p_inv_tgt,
    p_wpad,
    p_bias,
    p_out,
    p_inv_match,
    C,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_sb,
    stride_sc,
    stride_sy,
    stride_sx,
    stride_tb,
    stride_tc,
    stride_ty,
    stride_tx,
    stride_wo,
    stride_wy,
    stride_bias,
    stride_ob,
    stride_oo,
    stride_oy,
    stride_ox,
    eps,
    NORM_FEAT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    OAC_FP32: tl.constexpr,
    OAC_PRECISION: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_XS: tl.constexpr,
    BLOCK_XT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    OAC_CHUNK: tl.constexpr,
):  #
    """``out[b, o, yt, xt-block]`` and ``inv_match[b, yt, xt-block]``; grid
    ``(Ht * cdiv(Wt, BXT), cdiv(O, BO), B)``. ``p_wpad`` is the zero-padded weight of
    :func:`padded_weight` (unit column stride)."""
    i_t, i_o, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    BLOCK_J: tl.constexpr = 2 * BLOCK_XS if BLOCK_XS > BLOCK_XT else 2 * BLOCK_XT
    BLOCK_JC: tl.constexpr = BLOCK_J if BLOCK_J < OAC_CHUNK else OAC_CHUNK
    i_b64 = i_b.to(tl.int64)
    n_xb = tl.cdiv(Wt, BLOCK_XT)
    yt = i_t // n_xb
    xt0 = (i_t % n_xb) * BLOCK_XT
    o_x = tl.arange(0, BLOCK_XT)
    o_xt = xt0 + o_x
    m_xt = o_xt < Wt
    o_i = tl.arange(0, BLOCK_XS)
    o_jc = tl.arange(0, BLOCK_JC)
    o_c = tl.arange(0, BLOCK_C)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    m_o = o_o < O

    p_t = p_tgt + i_b64 * stride_tb + yt * stride_ty
    p_t += o_c[:, None] * stride_tc + o_xt[None, :] * stride_tx  # [BC, BXT]
    p_s_b = p_src + i_b64 * stride_sb + o_c[None, :] * stride_sc  # [1, BC]
    # column of the padded weight where the skewed tile of source block xs0 starts
    dx_pad = (n_xb - 1) * BLOCK_XT - xt0
    if NORM_FEAT:
        b_bt = tl.load(p_inv_tgt + i_b64 * (Ht * Wt) + yt * Wt + o_xt, mask=m_xt, other=0.0)  # [BXT]
    acc = tl.zeros((BLOCK_O, BLOCK_XT), dtype=ACC)
    b_ss = tl.zeros((BLOCK_XT,), dtype=ACC)
    for ys in range(0, Hs):
        o_w_y = o_o * stride_wo + (ys - yt + Ht - 1) * stride_wy  # [BO]
        for xs0 in range(0, Ws, BLOCK_XS):
            o_xs = xs0 + o_i
            m_xs = o_xs < Ws
            p_s = p_s_b + ys * stride_sy + o_xs[:, None] * stride_sx  # [BXS, BC]
            b_c = correlation_tile(
                p_s,
                p_t,
                m_xs,
                m_xt,
                C,
                stride_sc,
                stride_tc,
                BLOCK_XS,
                BLOCK_XT,
                BLOCK_C,
                INPUT_PRECISION,
                DOT_FP32,
                ACC,
            )  #
            if NORM_FEAT:
                b_as = tl.load(p_inv_src + i_b64 * (Hs * Ws) + ys * Ws + o_xs, mask=m_xs, other=0.0)  # [BXS]
                b_c = b_c * b_as[:, None] * b_bt[None, :]
            b_r = tl.maximum(b_c, 0.0)  # [BXS, BXT]; padded rows/columns are 0
            b_ss += tl.sum(b_r * b_r, axis=0)
            # Rs[j, x] sits at offset column dx0 + j for every x: one contiguous weight slice,
            # taken BLOCK_JC columns at a time (bounds the weight tile's registers)
            for jc in tl.static_range(0, BLOCK_J, BLOCK_JC):
                # skew: row j of column x of Rs is row j + x - (BXT-1) of R (zero outside the tile)
                o_sk = (jc + o_jc)[:, None] + o_x[None, :] - (BLOCK_XT - 1)  # [BJC, BXT]
                m_sk = (o_sk >= 0) & (o_sk < BLOCK_XS)
                o_sk = tl.minimum(tl.maximum(o_sk, 0), BLOCK_XS - 1)
                b_rs = tl.where(m_sk, tl.gather(b_r, o_sk, axis=0), 0.0)  # [BJC, BXT]
                # in range and 16-aligned by the padding: no column mask, vector loads
                o_w = tl.multiple_of(o_w_y + (xs0 + dx_pad + jc), 16)  # [BO]
                b_w = tl.load(p_wpad + o_w[:, None] + o_jc[None, :], mask=m_o[:, None], other=0.0)  # [BO, BJC]
                if OAC_FP32:  # unnormalised 16-bit features: relu(c) may not fit 16 bits
                    b_w = b_w.to(tl.float32)
                else:  # relu(c) <= 1 (Cauchy-Schwarz on normalised features): safe in 16 bits
                    b_rs = b_rs.to(b_w.dtype)
                acc = tl.dot(b_w, b_rs, acc, input_precision=OAC_PRECISION, out_dtype=ACC)

    b_inv = 1.0 / tl.sqrt(b_ss + eps)  # [BXT]
    acc = acc * b_inv[None, :]
    if HAS_BIAS:
        acc += tl.load(p_bias + o_o * stride_bias, mask=m_o, other=0.0).to(ACC)[:, None]
    p_o = p_out + i_b64 * stride_ob + yt * stride_oy + o_o[:, None] * stride_oo + o_xt[None, :] * stride_ox
    tl.store(p_o, acc.to(p_out.dtype.element_ty), mask=m_o[:, None] & m_xt[None, :])
    tl.store(p_inv_match + i_b64 * (Ht * Wt) + yt * Wt + o_xt, b_inv, mask=m_xt & (i_o == 0))


@autotune(BWD_WEIGHT_CONFIGS, key=["B", "C", "O", "Hs", "Ws", "Ht", "Wt", "batch_per_split"])
@triton.jit
def correlation_oac_bwd_weight_kernel(
    p_src,
    p_tgt,
    p_inv_src,
    p_inv_tgt,
    p_inv_match,
    p_grad,
    p_partial,
    B,
    C,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    batch_per_split,
    stride_sb,
    stride_sc,
    stride_sy,
    stride_sx,
    stride_tb,
    stride_tc,
    stride_ty,
    stride_tx,
    stride_gb,
    stride_go,
    stride_gy,
    stride_gx,
    stride_pn,
    NORM_FEAT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  #
    """Partial ``dW`` of one offset row ``dy`` and one diagonal ``k`` of column blocks; grid
    ``(Dh * n_diag, cdiv(O, BO), n_split)``.

    Source block ``i_xt + k`` against target block ``i_xt`` covers offset columns
    ``dx0(k) + j``, ``j < 2*BX``, ``dx0(k) = k*BX + Wt - BX``, for every ``i_xt``: the program
    writes ``partial[n, k + n_xt - 1, o, dy, j]`` (``(n_split, n_diag, O, Dh, 2*BX)``, contiguous).
    """
    i_d, i_o, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    BLOCK_J: tl.constexpr = 2 * BLOCK_X
    n_xs = tl.cdiv(Ws, BLOCK_X)
    n_xt = tl.cdiv(Wt, BLOCK_X)
    n_k = n_xs + n_xt - 1
    Dh = Hs + Ht - 1
    dy = i_d // n_k
    i_k = i_d % n_k
    k = i_k - (n_xt - 1)
    ddy = dy - (Ht - 1)  # ys = yt + ddy
    yt_lo = tl.maximum(-ddy, 0)
    yt_hi = tl.minimum(Hs - ddy, Ht)
    it_lo = tl.maximum(-k, 0)
    it_hi = tl.minimum(n_xs - k, n_xt)
    o_x = tl.arange(0, BLOCK_X)
    o_j = tl.arange(0, BLOCK_J)
    o_c = tl.arange(0, BLOCK_C)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    m_o = o_o < O

    # skew along the source axis of the transposed tile: RsT[x, j] = R^T[x, j + x - (BX-1)]
    o_sk = o_x[:, None] + o_j[None, :] - (BLOCK_X - 1)  # [BX, BJ]
    m_sk = (o_sk >= 0) & (o_sk < BLOCK_X)
    o_sk = tl.minimum(tl.maximum(o_sk, 0), BLOCK_X - 1)

    acc = tl.zeros((BLOCK_O, BLOCK_J), dtype=ACC)
    b_lo = i_n * batch_per_split
    b_hi = tl.minimum(b_lo + batch_per_split, B)
    # pointers at batch element b_lo, advanced by one batch stride per iteration (64-bit)
    b64 = b_lo.to(tl.int64)
    p_t_b = p_tgt + b64 * stride_tb + o_c[None, :] * stride_tc  # [1, BC]
    p_s_b = p_src + b64 * stride_sb + o_c[:, None] * stride_sc  # [BC, 1]
    p_g_b = p_grad + b64 * stride_gb + o_o[:, None] * stride_go  # [BO, 1]
    p_ia_b = p_inv_src + b64 * (Hs * Ws)
    p_ib_b = p_inv_tgt + b64 * (Ht * Wt)
    p_in_b = p_inv_match + b64 * (Ht * Wt)
    for _ in range(b_lo, b_hi):
        for yt in range(yt_lo, yt_hi):
            ys = yt + ddy
            for i_xt in range(it_lo, it_hi):
                o_xt = i_xt * BLOCK_X + o_x
                o_xs = o_xt + k * BLOCK_X
                m_xt = o_xt < Wt
                m_xs = o_xs < Ws  # >= 0 by the range of i_xt
                p_t = p_t_b + yt * stride_ty + o_xt[:, None] * stride_tx  # [BX, BC]
                p_s = p_s_b + ys * stride_sy + o_xs[None, :] * stride_sx  # [BC, BX]
                b_c = correlation_tile(
                    p_t,
                    p_s,
                    m_xt,
                    m_xs,
                    C,
                    stride_tc,
                    stride_sc,
                    BLOCK_X,
                    BLOCK_X,
                    BLOCK_C,
                    INPUT_PRECISION,
                    DOT_FP32,
                    ACC,
                )  #  [BX (t), BX (s)]
                if NORM_FEAT:
                    b_bt = tl.load(p_ib_b + yt * Wt + o_xt, mask=m_xt, other=0.0)  # [BX]
                    b_as = tl.load(p_ia_b + ys * Ws + o_xs, mask=m_xs, other=0.0)  # [BX]
                    b_c = b_c * b_bt[:, None] * b_as[None, :]
                b_inv = tl.load(p_in_b + yt * Wt + o_xt, mask=m_xt, other=0.0)  # [BX]
                b_rn = tl.maximum(b_c, 0.0) * b_inv[:, None]  # the correlation, in [0, 1]
                b_rs = tl.where(m_sk, tl.gather(b_rn, o_sk, axis=1), 0.0)  # [BX, BJ]
                p_g = p_g_b + yt * stride_gy + o_xt[None, :] * stride_gx
                b_g = tl.load(p_g, mask=m_o[:, None] & m_xt[None, :], other=0.0)  # [BO, BX]
                if DOT_FP32:
                    b_g = b_g.to(tl.float32)
                else:
                    b_rs = b_rs.to(b_g.dtype)
                acc = tl.dot(b_g, b_rs, acc, input_precision=INPUT_PRECISION, out_dtype=ACC)
        p_t_b += stride_tb
        p_s_b += stride_sb
        p_g_b += stride_gb
        p_ia_b += Hs * Ws
        p_ib_b += Ht * Wt
        p_in_b += Ht * Wt

    p_p = p_partial + i_n.to(tl.int64) * stride_pn + ((i_k * O + o_o[:, None]) * Dh + dy) * BLOCK_J + o_j[None, :]
    tl.store(p_p, acc.to(p_partial.dtype.element_ty), mask=m_o[:, None])


@triton.jit
def correlation_oac_bwd_weight_reduce_kernel(
    p_partial,
    p_dweight,
    O,
    Dh,
    Dw,
    Wt,
    n_xt,
    n_k,
    n_split,
    stride_pn,
    BLOCK_X: tl.constexpr,
    BLOCK: tl.constexpr,
):  #
    """``dW[o, dy, dx]`` (contiguous) = the two diagonals whose offset columns hold ``dx``, summed
    over the batch splits in a fixed order; grid ``(cdiv(O*Dh*Dw, BLOCK),)``."""
    BLOCK_J: tl.constexpr = 2 * BLOCK_X
    o_n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < O * Dh * Dw
    o_od = o_n // Dw  # o * Dh + dy
    dx = o_n % Dw
    # diagonal index i_k (k + n_xt - 1) has dx0 = (i_k - n_xt) * BX + Wt: dx sits at column
    # e % BX of i_k = e // BX and at e % BX + BX of the diagonal before (e >= 0)
    e = dx - Wt + n_xt * BLOCK_X
    k_hi = e // BLOCK_X
    j_hi = e % BLOCK_X
    m_hi = m_n & (k_hi < n_k)
    m_lo = m_n & (k_hi >= 1)
    p_hi = p_partial + (k_hi * O * Dh + o_od).to(tl.int64) * BLOCK_J + j_hi
    p_lo = p_partial + ((k_hi - 1) * O * Dh + o_od).to(tl.int64) * BLOCK_J + j_hi + BLOCK_X
    acc = tl.zeros((BLOCK,), dtype=p_partial.dtype.element_ty)
    for _ in range(0, n_split):
        acc += tl.load(p_hi, mask=m_hi, other=0.0)
        acc += tl.load(p_lo, mask=m_lo, other=0.0)
        p_hi += stride_pn
        p_lo += stride_pn
    tl.store(p_dweight + o_n, acc.to(p_dweight.dtype.element_ty), mask=m_n)


@autotune(BWD_CORR_CONFIGS, key=["C", "O", "Hs", "Ws", "Ht", "Wt"])
@triton.jit
def correlation_oac_bwd_corr_kernel(
    p_src,
    p_tgt,
    p_inv_src,
    p_inv_tgt,
    p_wpad,
    p_bias,
    p_out,
    p_inv_match,
    p_grad,
    p_dcorr,
    p_dot_src,
    p_dot_tgt,
    C,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_sb,
    stride_sc,
    stride_sy,
    stride_sx,
    stride_tb,
    stride_tc,
    stride_ty,
    stride_tx,
    stride_wo,
    stride_wy,
    stride_bias,
    stride_ob,
    stride_oo,
    stride_oy,
    stride_ox,
    stride_gb,
    stride_go,
    stride_gy,
    stride_gx,
    NORM_FEAT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_XS: tl.constexpr,
    BLOCK_XT: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  #
    """Gradient w.r.t. the pre-ReLU correlation, ``dcorr`` (B, S, T), of one (batch, target row,
    column block); grid ``(Ht * cdiv(Wt, BXT), B)``. With ``NORM_FEAT`` also the feature-norm
    dots ``sum_s dc*c`` -> ``dot_tgt`` (B, T) and per program ``sum_t dc*c`` -> ``dot_src``
    (B, n_programs, S)."""
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    BLOCK_J: tl.constexpr = 2 * BLOCK_XS if BLOCK_XS > BLOCK_XT else 2 * BLOCK_XT
    i_b64 = i_b.to(tl.int64)
    S = Hs * Ws
    T = Ht * Wt
    n_xb = tl.cdiv(Wt, BLOCK_XT)
    yt = i_t // n_xb
    xt0 = (i_t % n_xb) * BLOCK_XT
    o_x = tl.arange(0, BLOCK_XT)
    o_xt = xt0 + o_x
    m_xt = o_xt < Wt
    o_i = tl.arange(0, BLOCK_XS)
    o_j = tl.arange(0, BLOCK_J)
    o_c = tl.arange(0, BLOCK_C)
    o_ob = tl.arange(0, BLOCK_O)

    p_g_t = p_grad + i_b64 * stride_gb + yt * stride_gy + o_xt[None, :] * stride_gx  # [1, BXT]
    b_inv = tl.load(p_inv_match + i_b64 * T + yt * Wt + o_xt, mask=m_xt, other=0.0)  # [BXT], 1/n_t
    # q_t = <g, Y>_o / n_t, Y = out - bias
    p_y_t = p_out + i_b64 * stride_ob + yt * stride_oy + o_xt[None, :] * stride_ox
    b_q = tl.zeros((BLOCK_XT,), dtype=ACC)
    for o0 in range(0, O, BLOCK_O):
        o_o = o0 + o_ob
        m_g = (o_o < O)[:, None] & m_xt[None, :]
        b_g = tl.load(p_g_t + o_o[:, None] * stride_go, mask=m_g, other=0.0).to(ACC)  # [BO, BXT]
        b_y = tl.load(p_y_t + o_o[:, None] * stride_oo, mask=m_g, other=0.0).to(ACC)
        if HAS_BIAS:
            b_y -= tl.load(p_bias + o_o * stride_bias, mask=o_o < O, other=0.0).to(ACC)[:, None]
        b_q += tl.sum(tl.where(m_g, b_g * b_y, 0.0), axis=0)
    b_q *= b_inv

    # un-skew: P[i, x] = Q[i - x + BXT - 1, x], always inside the BJ rows of Q
    o_us = o_i[:, None] - o_x[None, :] + (BLOCK_XT - 1)  # [BXS, BXT]
    p_t = p_tgt + i_b64 * stride_tb + yt * stride_ty
    p_t += o_c[:, None] * stride_tc + o_xt[None, :] * stride_tx  # [BC, BXT]
    p_s_b = p_src + i_b64 * stride_sb + o_c[None, :] * stride_sc  # [1, BC]
    if NORM_FEAT:
        b_bt = tl.load(p_inv_tgt + i_b64 * T + yt * Wt + o_xt, mask=m_xt, other=0.0)  # [BXT]
    b_dot_t = tl.zeros((BLOCK_XT,), dtype=ACC)
    dx_pad = (n_xb - 1) * BLOCK_XT - xt0  # see the forward
    for ys in range(0, Hs):
        o_w_y = (ys - yt + Ht - 1) * stride_wy
        for xs0 in range(0, Ws, BLOCK_XS):
            o_xs = xs0 + o_i
            m_xs = o_xs < Ws
            p_s = p_s_b + ys * stride_sy + o_xs[:, None] * stride_sx  # [BXS, BC]
            b_c = correlation_tile(
                p_s,
                p_t,
                m_xs,
                m_xt,
                C,
                stride_sc,
                stride_tc,
                BLOCK_XS,
                BLOCK_XT,
                BLOCK_C,
                INPUT_PRECISION,
                DOT_FP32,
                ACC,
            )  #
            if NORM_FEAT:
                b_as = tl.load(p_inv_src + i_b64 * S + ys * Ws + o_xs, mask=m_xs, other=0.0)  # [BXS]
                b_c = b_c * b_as[:, None] * b_bt[None, :]
            # Q[j, x] = sum_o W[o, dy, dx0 + j] g[o, x]
            b_qq = tl.zeros((BLOCK_J, BLOCK_XT), dtype=ACC)
            for o0 in range(0, O, BLOCK_O):
                o_o = o0 + o_ob
                m_o = o_o < O
                o_w = tl.multiple_of(o_o * stride_wo + (o_w_y + xs0 + dx_pad), 16)  # [BO]
                b_w = tl.load(p_wpad + o_j[:, None] + o_w[None, :], mask=m_o[None, :], other=0.0)  # [BJ, BO]
                b_g = tl.load(p_g_t + o_o[:, None] * stride_go, mask=m_o[:, None] & m_xt[None, :], other=0.0)
                if DOT_FP32:
                    b_w, b_g = b_w.to(tl.float32), b_g.to(tl.float32)
                b_qq = tl.dot(b_w, b_g, b_qq, input_precision=INPUT_PRECISION, out_dtype=ACC)
            b_p = tl.gather(b_qq, o_us, axis=0)  # [BXS, BXT]
            b_dc = tl.where(b_c > 0.0, (b_p - b_q[None, :] * b_c) * b_inv[None, :], 0.0)
            p_dc = p_dcorr + i_b64 * S * T + (ys * Ws + o_xs)[:, None] * T + yt * Wt + o_xt[None, :]
            tl.store(p_dc, b_dc.to(p_dcorr.dtype.element_ty), mask=m_xs[:, None] & m_xt[None, :])
            if NORM_FEAT:
                b_prod = b_dc * b_c
                b_dot_t += tl.sum(b_prod, axis=0)
                p_ds = p_dot_src + (i_b64 * tl.num_programs(0) + i_t) * S + ys * Ws + o_xs
                tl.store(p_ds, tl.sum(b_prod, axis=1), mask=m_xs)
    if NORM_FEAT:
        tl.store(p_dot_tgt + i_b64 * T + yt * Wt + o_xt, b_dot_t, mask=m_xt)


# ---------------------------------------------------------------------------------------------
# Launchers (tensor in, tensor out)
# ---------------------------------------------------------------------------------------------


def _oac_dot_options(dtype: torch.dtype, normalize_features: bool, input_precision: str) -> dict:
    """The ``W @ relu(c)`` product of the forward: in the input dtype, except for 16-bit inputs
    without feature normalisation (relu(c) unbounded: fp32 operands, tf32) and bf16 under the
    interpreter (no bf16 dot there)."""
    if dtype in (torch.float16, torch.bfloat16) and not normalize_features:
        return {"OAC_FP32": True, "OAC_PRECISION": "ieee" if INTERPRET else "tf32"}
    if INTERPRET and dtype == torch.bfloat16:
        return {"OAC_FP32": True, "OAC_PRECISION": "ieee"}
    return {"OAC_FP32": False, "OAC_PRECISION": input_precision if dtype == torch.float32 else "ieee"}


def column_block(width: int) -> int:
    """Column block of a map of this width: 16 for the paper's 15, at most :data:`MAX_BLOCK_X`."""
    return min(MAX_BLOCK_X, max(16, triton.next_power_of_2(width)))


def output_block(o: int, cap: int = MAX_BLOCK_O) -> int:
    """Output channels per program (or per step of the feature-gradient kernel's loop over
    them); tl.dot needs >= 16."""
    return min(cap, max(16, triton.next_power_of_2(o)))


def padded_weight(weight: torch.Tensor, ws: int, wt: int, block_xs: int, block_xt: int) -> torch.Tensor:
    """The weight the forward and feature-gradient kernels read: ``(O, Dh, Dw_pad)``, contiguous,
    column ``pad + dx`` holding ``weight[:, :, dx]`` (zeros around), ``pad = n_xt*BXT - Wt``.

    The skewed tile of source block ``xs0`` against target block ``xt0`` reads columns
    ``xs0 - xt0 + (n_xt-1)*BXT + j``, ``j < 2*max(BXS, BXT)``: with this padding every such slice
    is in range and starts at a multiple of 16, so the kernels load it without a column mask, in
    vectors (a copy of ``O*Dh*Dw_pad`` elements, small next to the correlation).
    """
    o, dh, dw = weight.shape
    n_xs, n_xt = triton.cdiv(ws, block_xs), triton.cdiv(wt, block_xt)
    pad = n_xt * block_xt - wt
    width = (n_xs - 1) * block_xs + (n_xt - 1) * block_xt + 2 * max(block_xs, block_xt)
    wpad = weight.new_zeros(o, dh, width)
    wpad[:, :, pad : pad + dw] = weight
    return wpad


def diagonal_batch_split(b: int, n_programs: int) -> tuple[int, int]:
    """``(n_split, batch_per_split)``: the batch split of the dW kernel's ``n_programs``
    (offset row, diagonal, channel block) programs. A function of the shapes only."""
    return batch_split(b, n_programs, DIAGONAL_TARGET_PROGRAMS)


def _sizes(source: torch.Tensor, target: torch.Tensor, o: int) -> dict:
    b, c, hs, ws = source.shape
    return {
        "B": b,
        "C": c,
        "O": o,
        "S": hs * ws,
        "T": target.shape[2] * target.shape[3],
        "dtype": dtype_name(source.dtype),
    }  #


def _inverse_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / sqrt(sum_c x^2 + eps)`` of ``(B, C, H, W)`` -> ``(B, H*W)`` (the correlation's kernel)."""
    b, c, h, w = x.shape
    if h * w == 0:
        return x.new_empty((b, 0), dtype=accumulation_dtype(x.dtype))
    return correlation_inverse_norm(x.reshape(b, c, h * w), eps)


def correlation_oac_fwd(
    source: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    normalize_features: bool,
    input_precision: str,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward.

    Args:
        source ``(B, C, Hs, Ws)``, target ``(B, C, Ht, Wt)``, weight ``(O, Hs+Ht-1, Ws+Wt-1)``,
        bias ``(O,)`` or None: any strides, one dtype; validated by the caller.
    Returns:
        ``out (B, O, Ht, Wt)`` in the input dtype, then in the accumulation dtype
        ``inv_source (B, S)``, ``inv_target (B, T)`` (empty without ``normalize_features``) and
        ``inv_match (B, T)`` = ``1 / n_t``.
    """
    b, c, hs, ws = source.shape
    ht, wt = target.shape[2:]
    o = weight.shape[0]
    dev, acc_dtype = source.device, accumulation_dtype(source.dtype)
    out = empty(b, o, ht, wt, dtype=source.dtype, device=dev)
    inv_match = empty(b, ht * wt, dtype=acc_dtype, device=dev)
    inv_src, inv_tgt = (source.new_empty((0,), dtype=acc_dtype) for _ in range(2))  # distinct: no aliasing
    if out.numel() == 0:
        if normalize_features:
            inv_src = source.new_zeros((b, hs * ws), dtype=acc_dtype)
            inv_tgt = source.new_zeros((b, ht * wt), dtype=acc_dtype)
        return out, inv_src, inv_tgt, inv_match.zero_()
    if normalize_features:
        inv_src, inv_tgt = _inverse_norm(source, eps), _inverse_norm(target, eps)
    block_o, block_xs, block_xt = output_block(o), column_block(ws), column_block(wt)
    wpad = padded_weight(weight, ws, wt, block_xs, block_xt)
    launch(
        correlation_oac_fwd_kernel,
        lambda meta: (ht * triton.cdiv(wt, block_xt), triton.cdiv(o, block_o), b),
        name="correlation_oac_fwd",
        device=dev,
        sizes=_sizes(source, target, o),
        p_src=source,
        p_tgt=target,
        p_inv_src=inv_src if normalize_features else out,
        p_inv_tgt=inv_tgt if normalize_features else out,
        p_wpad=wpad,
        p_bias=weight if bias is None else bias,
        p_out=out,
        p_inv_match=inv_match,
        C=c,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        **strides("s", source, "bcyx"),
        **strides("t", target, "bcyx"),
        **strides("w", wpad, "oy"),
        stride_bias=0 if bias is None else bias.stride(0),
        **strides("o", out, "boyx"),
        eps=eps,
        NORM_FEAT=normalize_features,
        HAS_BIAS=bias is not None,
        **dot_options(source.dtype, input_precision),
        **_oac_dot_options(source.dtype, normalize_features, input_precision),
        BLOCK_O=block_o,
        BLOCK_XS=block_xs,
        BLOCK_XT=block_xt,
    )  #
    return out, inv_src, inv_tgt, inv_match


def correlation_oac_bwd_weight(
    grad: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    inv_source: torch.Tensor,
    inv_target: torch.Tensor,
    inv_match: torch.Tensor,
    o: int,
    normalize_features: bool,
    input_precision: str,
) -> torch.Tensor:
    """``dW`` ``(O, Hs+Ht-1, Ws+Wt-1)`` in the input dtype, deterministic (partial rows per
    diagonal and batch split, then a fixed-order reduction)."""
    b, c, hs, ws = source.shape
    ht, wt = target.shape[2:]
    dh, dw = hs + ht - 1, ws + wt - 1
    dev = source.device
    dweight = empty(o, dh, dw, dtype=source.dtype, device=dev)
    if b == 0 or dweight.numel() == 0:
        return dweight.zero_()
    block_x = column_block(max(ws, wt))
    block_o = output_block(o)
    n_xt = triton.cdiv(wt, block_x)
    n_k = triton.cdiv(ws, block_x) + n_xt - 1
    n_split, per_split = diagonal_batch_split(b, dh * n_k * triton.cdiv(o, block_o))
    partial = empty(n_split, n_k, o, dh, 2 * block_x, dtype=accumulation_dtype(source.dtype), device=dev)
    launch(
        correlation_oac_bwd_weight_kernel,
        lambda meta: (dh * n_k, triton.cdiv(o, block_o), n_split),
        name="correlation_oac_bwd_weight",
        device=dev,
        sizes={**_sizes(source, target, o), "split": per_split},
        p_src=source,
        p_tgt=target,
        p_inv_src=inv_source if normalize_features else partial,
        p_inv_tgt=inv_target if normalize_features else partial,
        p_inv_match=inv_match,
        p_grad=grad,
        p_partial=partial,
        B=b,
        C=c,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        batch_per_split=per_split,
        **strides("s", source, "bcyx"),
        **strides("t", target, "bcyx"),
        **strides("g", grad, "boyx"),
        stride_pn=partial.stride(0),
        NORM_FEAT=normalize_features,
        **dot_options(source.dtype, input_precision),
        BLOCK_O=block_o,
        BLOCK_X=block_x,
    )  #
    correlation_oac_bwd_weight_reduce_kernel[(triton.cdiv(dweight.numel(), REDUCE_BLOCK),)](
        p_partial=partial,
        p_dweight=dweight,
        O=o,
        Dh=dh,
        Dw=dw,
        Wt=wt,
        n_xt=n_xt,
        n_k=n_k,
        n_split=n_split,
        stride_pn=partial.stride(0),
        BLOCK_X=block_x,
        BLOCK=REDUCE_BLOCK,
        num_warps=REDUCE_WARPS,
    )  #
    return dweight


def correlation_oac_bwd_corr(
    grad: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    inv_source: torch.Tensor,
    inv_target: torch.Tensor,
    inv_match: torch.Tensor,
    normalize_features: bool,
    input_precision: str,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``dcorr`` ``(B, S, T)`` (gradient w.r.t. the pre-ReLU correlation, input dtype) and, with
    ``normalize_features``, the feature-norm dots ``dot_src`` ``(B, n, S)`` (partials) and
    ``dot_tgt`` ``(B, 1, T)`` that :func:`a2net.kernels.correlation.correlation_bwd_features` takes."""
    b, c, hs, ws = source.shape
    ht, wt = target.shape[2:]
    o = weight.shape[0]
    s, t = hs * ws, ht * wt
    dev, acc_dtype = source.device, accumulation_dtype(source.dtype)
    block_xs, block_xt = column_block(ws), column_block(wt)
    wpad = padded_weight(weight, ws, wt, block_xs, block_xt)
    n_prog = ht * triton.cdiv(wt, block_xt)
    dcorr = empty(b, s, t, dtype=source.dtype, device=dev)
    dot_src = empty(b, n_prog, s, dtype=acc_dtype, device=dev) if normalize_features else None
    dot_tgt = empty(b, 1, t, dtype=acc_dtype, device=dev) if normalize_features else None
    launch(
        correlation_oac_bwd_corr_kernel,
        lambda meta: (n_prog, b),
        name="correlation_oac_bwd_corr",
        device=dev,
        sizes=_sizes(source, target, o),
        p_src=source,
        p_tgt=target,
        p_inv_src=inv_source if normalize_features else dcorr,
        p_inv_tgt=inv_target if normalize_features else dcorr,
        p_wpad=wpad,
        p_bias=weight if bias is None else bias,
        p_out=out,
        p_inv_match=inv_match,
        p_grad=grad,
        p_dcorr=dcorr,
        p_dot_src=dot_src if normalize_features else dcorr,
        p_dot_tgt=dot_tgt if normalize_features else dcorr,
        C=c,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        **strides("s", source, "bcyx"),
        **strides("t", target, "bcyx"),
        **strides("w", wpad, "oy"),
        stride_bias=0 if bias is None else bias.stride(0),
        **strides("o", out, "boyx"),
        **strides("g", grad, "boyx"),
        NORM_FEAT=normalize_features,
        HAS_BIAS=bias is not None,
        **dot_options(source.dtype, input_precision),
        BLOCK_O=output_block(o, BWD_CORR_BLOCK_O),
        BLOCK_XS=block_xs,
        BLOCK_XT=block_xt,
    )  #
    return dcorr, dot_src, dot_tgt


def correlation_oac_bwd(
    grad: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    inv_source: torch.Tensor,
    inv_target: torch.Tensor,
    inv_match: torch.Tensor,
    normalize_features: bool,
    input_precision: str,
    need_source: bool,
    need_target: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of :func:`correlation_oac_fwd`.

    Args:
        grad: ``(B, O, Ht, Wt)`` gradient of ``out`` (any strides); the rest as given to / returned
            by :func:`correlation_oac_fwd`.
        need_*: which gradients to compute; the feature-map kernels run only for ``need_source``
            or ``need_target``.
    Returns:
        ``(dsource, dtarget, dweight, dbias)`` in the input dtype (the feature gradients
        contiguous); a gradient not asked for is an empty tensor.
    """
    b, c, hs, ws = source.shape
    ht, wt = target.shape[2:]
    s, t = hs * ws, ht * wt
    dsrc, dtgt, dweight, dbias = (source.new_empty((0,)) for _ in range(4))  # distinct: no aliasing
    if need_weight:
        dweight = correlation_oac_bwd_weight(
            grad,
            source,
            target,
            inv_source,
            inv_target,
            inv_match,
            weight.shape[0],
            normalize_features,
            input_precision,
        )  #
    if need_bias:
        dbias = offset_aware_correlation_bwd_bias(grad)
    if not (need_source or need_target):
        return dsrc, dtgt, dweight, dbias
    if b * c * s * t == 0:  # nothing flows back to the features
        dsrc = source.new_zeros(source.shape) if need_source else dsrc
        dtgt = target.new_zeros(target.shape) if need_target else dtgt
        return dsrc, dtgt, dweight, dbias
    dcorr, dot_src, dot_tgt = correlation_oac_bwd_corr(
        grad,
        source,
        target,
        weight,
        bias,
        out,
        inv_source,
        inv_target,
        inv_match,
        normalize_features,
        input_precision,
    )  #
    src, tgt = source.reshape(b, c, s), target.reshape(b, c, t)
    if need_source:  # df_s[c, s] from x = target (k = t), e[t, s] = dc[s, t]
        dsrc = correlation_bwd_features(
            tgt, src, dcorr.transpose(1, 2), inv_target, inv_source, dot_src, normalize_features, input_precision
        ).view(b, c, hs, ws)
    if need_target:  # df_t[c, t] from x = source (k = s), e[s, t] = dc[s, t]
        dtgt = correlation_bwd_features(
            src, tgt, dcorr, inv_source, inv_target, dot_tgt, normalize_features, input_precision
        ).view(b, c, ht, wt)
    return dsrc, dtgt, dweight, dbias
