"""Fused correlation + offset-aware correlation (docs/design.md §3.5): feature maps -> OAC
features, the 4D correlation never in memory.

``out[b, o, t] = bias[o] + sum_s W[o, off(s, t)] * relu(c[s, t]) / n_t`` with
``c[s, t] = a_s b_t <src[:, s], tgt[:, t]>`` (``a``/``b`` the inverse channel norms, or 1 without
feature normalisation), ``n_t = sqrt(sum_s relu(c[s, t])^2 + eps)`` and ``off(s, t) =
(ys-yt+Ht-1, xs-xt+Wt-1)``: :func:`a2net.reference.correlation` (ReLU and match normalisation on)
followed by :func:`a2net.reference.offset_aware_correlation`, in the spirit of FlashAttention.

Feature maps are read as channels-last rows (``(B, H, W, C)`` storage, channels contiguous): a
``[positions, BLOCK_C]`` tile then loads with 16-byte ``cp.async`` and is K-major for ``wgmma``
(tf32 takes no other layout). The launchers copy a map that is not channels-last (one pass over
it, counted by the benchmarks); the model hands them channels-last maps.

Forward (:func:`correlation_oac_fwd_kernel`), one program per (batch element, target tile of
``RT`` rows x ``BX`` columns, block of output channels), looping over source tiles of ``RS`` rows x
``BX`` columns (column blocks inside rows when a map is wider than ``BX``; :func:`forward_tiling`:
64x64 tiles up to 16 columns and when saving ``relu(c)``, else 128x128 in 16 bits on sm_90 and
64x128 otherwise; the launcher reads the device's compute capability):

* the correlation tile ``c[t, s]`` ``[N_T, M_S]`` is a ``tl.dot`` over channels (targets the M
  dimension), scaled by the inverse feature norms; ``R = relu(c)``, whose squared row sums
  accumulate ``n_t^2``;
* the OAC of the tile is :func:`a2net.kernels.offset_aware_correlation.oac_tile_accumulate`: a
  Toeplitz skew on chip, then ``acc[N_T, O] += G @ Wslice`` per relative row and chunk of
  weight columns, a second ``tl.dot`` against the zero-padded weight;
* the match normalisation is a per-target scale at the end: ``out = acc / n_t + bias``. Saved for
  the backward: ``1 / n_t`` (B, T), and with ``SAVE`` (maps of at most
  :data:`SAVED_CORRELATION_MAX` positions, weight gradient wanted) ``relu(c)`` itself, in the input
  dtype, without the match normalisation (known only after the last source tile; the backward
  folds ``1/n_t`` into ``g``): ``(B, S, Ht, Wp)`` with rows zero-padded to whole column blocks
  (``Wp = cdiv(Wt, BX) * BX``: 16 at 15x15) so the ``dW`` kernel reads them in 16-byte vectors,
  ``S*Ht*Wp*e`` bytes per pair: 0.11 MB (bf16) / 0.22 MB (fp32) at 15x15, 2.1 / 4.2 MB at 32x32.

The target tile is read again for every source tile (Triton keeps no tile in shared memory across
a loop; at C=1024 a 128-target bf16 tile, 256 KB, would not fit anyway): the operand intensity of
the correlation is ``2*N_T*M_S / ((N_T + M_S) * e)`` FLOP per byte loaded, 64 at 128x128 in bf16,
43 at 64x128 in bf16 (sm_80), 21 at 64x128 in fp32 (perf/roofline_oac.py).

Backward (``g`` the incoming gradient, ``Y = out - bias``, ``R = relu(c)``):

* ``dW[o, d] = sum_{b, t} g[b, o, t] * corr[b, s(d, t), t]``: from the saved ``relu(c)`` by
  :func:`a2net.kernels.offset_aware_correlation.offset_aware_correlation_bwd_weight` (``g``
  scaled by ``1/n_t``); above :data:`SAVED_CORRELATION_MAX` positions
  :func:`correlation_oac_bwd_weight_kernel` recomputes the correlation: items (batch element,
  target row, column block) grouped by offset row and diagonal, cut into chunks of equal length
  (:func:`a2net.kernels.offset_aware_correlation.weight_schedule`: no program does more than
  1.25x the mean work), one ``[BX, BX]`` (64x64) correlation tile per item, skewed and met with
  ``g`` in a ``tl.dot`` accumulating ``dW[O, dy, 2*BX columns]`` in registers; the chunks are
  reduced in a fixed order. Deterministic, no atomics. ``dbias`` is the sum of ``g``.
* Only when a feature map needs a gradient (the paper freezes the backbone, so the default
  training path skips this), :func:`correlation_oac_bwd_corr_kernel`, on the forward's tiling
  (64x64 tiles), recomputes the correlation tiles, with ``q_t = sum_o g[o, t] Y[o, t] / n_t`` and
  ``P[t, s] = sum_o W[o, off(s, t)] g[o, t]``
  (:func:`a2net.kernels.offset_aware_correlation.oac_transpose_tile`: products against the
  channel-contiguous padded weight, un-skewed by a gather): ``dc = (P - q_t c) / n_t`` where
  ``c > 0``. ``dc`` (B, S, T) is written (the one (HW)^2 buffer, on this path only) with the
  feature-norm dots, and the correlation's backward GEMMs
  (:func:`a2net.kernels.correlation.correlation_bwd_features`) finish.

Offsets: batch offsets are 64-bit, offsets inside one batch element 32-bit unless one can pass
2^31 (``IDX64``, e.g. the ``(B, S, T)`` ``dcorr`` from about 216x216 maps on).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2net.kernels._common import dot_options, dtype_name
from a2net.kernels._memory import accumulation_dtype, empty
from a2net.kernels._tuning import INTERPRET, autotune, launch
from a2net.kernels.correlation import correlation_bwd_features, correlation_inverse_norm, feature_prep
from a2net.kernels.offset_aware_correlation import (
    Tiling,
    channels_last_grad,
    check_index_range,
    column_block,
    needs_int64,
    oac_tile_accumulate,
    oac_tiling,
    oac_transpose_tile,
    offset_aware_correlation_bwd_bias,
    offset_aware_correlation_bwd_weight,
    output_block,
    padded_target_rows,
    padded_weight,
    reduce_weight_partials,
    target_tile,
    vector_width,
    weight_schedule,
)

# ---------------------------------------------------------------------------------------------
# Configs. The launchers choose the tiles (forward_tiling, ...) and the channel step from the
# shapes; the configs tune the OAC chunk, warps and stages. The first entry is the default (the
# only one under the interpreter). None spills at any tiling the launchers pick (kernel report).
# ---------------------------------------------------------------------------------------------

FWD_CONFIGS = [
    triton.Config({"OAC_CHUNK": 32}, num_warps=8, num_stages=3),
    triton.Config({"OAC_CHUNK": 32}, num_warps=8, num_stages=4),
    triton.Config({"OAC_CHUNK": 16}, num_warps=8, num_stages=3),
]
BWD_WEIGHT_CONFIGS = [
    triton.Config({}, num_warps=8, num_stages=3),
    triton.Config({}, num_warps=8, num_stages=4),
]
BWD_CORR_CONFIGS = [triton.Config({"OAC_CHUNK": 16}, num_warps=8, num_stages=2)]  # the others spill on sm_80

BLOCK_C = 32  # channels per step of the correlation tiles (a 128-byte fp32 / 64-byte bf16 row)
WEIGHT_BLOCK_X = 64  # column block of the recomputing dW kernel: 64-row correlation tiles (wgmma)
#: Maps of at most this many positions (both) keep relu(c) for the weight gradient (32x32).
SAVED_CORRELATION_MAX = 32 * 32
#: Major compute capability where the forward takes 128-target 16-bit tiles: Hopper's, the one with
#: ``wgmma`` (operands from shared memory). With register operands (sm_80's and sm_120's
#: ``mma.sync``) or sm_100's instructions that tile spills.
WGMMA_MAJOR = 9
#: Compute capability whose tiles the launchers pick off a GPU: the widest tiles, so the
#: interpreter tests cover them.
DEFAULT_ARCH = 90


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def correlation_nt_tile(
    p_a,
    p_b,
    m_a,
    m_b,
    C,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    ACC: tl.constexpr,
):  #
    """``sum_c a[m, c] * b[n, c]`` -> ``[BM, BN]``; ``p_a`` ``[BM, BC]`` / ``p_b`` ``[BN, BC]`` point
    at channel 0 of channel-contiguous rows, ``m_a``/``m_b`` mask rows. The main loop has no
    channel mask (a row mask is constant along a vector, so loads stay 16 bytes wide); without
    ``EVEN_C`` one masked step ends it."""
    o_c = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    c_full = C - C % BLOCK_C
    for _ in range(0, c_full, BLOCK_C):
        b_a = tl.load(p_a, mask=m_a[:, None], other=0.0)
        b_b = tl.load(p_b, mask=m_b[:, None], other=0.0)
        if DOT_FP32:  # the interpreter has no bf16 dot
            b_a, b_b = b_a.to(tl.float32), b_b.to(tl.float32)
        acc = tl.dot(b_a, tl.trans(b_b), acc, input_precision=INPUT_PRECISION, out_dtype=ACC)
        p_a += BLOCK_C
        p_b += BLOCK_C
    if not EVEN_C:
        m_c = (c_full + o_c) < C
        b_a = tl.load(p_a, mask=m_a[:, None] & m_c[None, :], other=0.0)
        b_b = tl.load(p_b, mask=m_b[:, None] & m_c[None, :], other=0.0)
        if DOT_FP32:
            b_a, b_b = b_a.to(tl.float32), b_b.to(tl.float32)
        acc = tl.dot(b_a, tl.trans(b_b), acc, input_precision=INPUT_PRECISION, out_dtype=ACC)
    return acc


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
    p_corr,
    C,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_sb,
    stride_sy,
    stride_sx,
    stride_tb,
    stride_ty,
    stride_tx,
    stride_wy,
    stride_wo,
    stride_bias,
    stride_ob,
    stride_oo,
    stride_oy,
    stride_ox,
    stride_cb,
    stride_cs,
    stride_cy,
    eps,
    NORM_FEAT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    OAC_FP32: tl.constexpr,
    OAC_PRECISION: tl.constexpr,
    FP64: tl.constexpr,
    ALIGN: tl.constexpr,
    IDX64: tl.constexpr,
    EVEN_C: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BX: tl.constexpr,
    RS: tl.constexpr,
    RT: tl.constexpr,
    OAC_CHUNK: tl.constexpr,
):  #
    """``out[b, o, t-tile]``, ``inv_match[b, t-tile]`` (and with ``SAVE`` ``relu(c)[b, s, t-tile]``
    into ``p_corr``, rows 16-element aligned); grid ``(B * cdiv(Ht, RT) * cdiv(Wt, BX), cdiv(O,
    BO))``. Feature maps are ``(B, H, W, C)`` rows with unit channel stride (row strides multiples
    of ``ALIGN``); ``p_wpad``: :func:`a2net.kernels.offset_aware_correlation.padded_weight`."""
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    N_T: tl.constexpr = RT * BX
    M_S: tl.constexpr = RS * BX
    if IDX64:  # offsets inside one batch element can pass 2^31
        stride_sy, stride_ty = stride_sy.to(tl.int64), stride_ty.to(tl.int64)
        stride_cs, stride_cy = stride_cs.to(tl.int64), stride_cy.to(tl.int64)
    i_o = tl.program_id(1)
    i_b, yt0, xt0, j_n, x_n, yt, xt, m_t = target_tile(tl.program_id(0), Ht, Wt, BX, RT)
    i_b64 = i_b.to(tl.int64)
    o_m = tl.arange(0, M_S)
    i_m = o_m // BX
    u_m = o_m % BX
    o_c = tl.arange(0, BLOCK_C)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    n_xt = (Wt + BX - 1) // BX
    n_xs = (Ws + BX - 1) // BX

    # channel-contiguous rows starting at multiples of ALIGN: 16-byte cp.async
    p_t = p_tgt + tl.multiple_of(i_b64 * stride_tb, ALIGN) + o_c[None, :]
    p_t += tl.multiple_of(yt * stride_ty + xt * stride_tx, ALIGN)[:, None]  # [N_T, BC]
    p_s_b = p_src + tl.multiple_of(i_b64 * stride_sb, ALIGN) + o_c[None, :]
    p_s_b += tl.multiple_of(i_m * stride_sy + u_m * stride_sx, ALIGN)[:, None]  # [M_S, BC] of source tile 0
    if NORM_FEAT:
        b_bt = tl.load(p_inv_tgt + i_b64 * (Ht * Wt) + yt * Wt + xt, mask=m_t, other=0.0)  # [N_T]
    if SAVE:  # offsets of the saved tile: targets (contiguous runs) and sources, combined at the store
        off_cv_t = tl.multiple_of(yt * stride_cy, 16) + xt  # [N_T]
        off_cv_s = tl.multiple_of((i_m * Ws + u_m) * stride_cs, 16)  # [M_S]
    p_w_o = p_wpad + tl.multiple_of(o_o * stride_wo, 16)[None, :]  # [1, BO]
    acc = tl.zeros((N_T, BLOCK_O), dtype=ACC)
    b_ss = tl.zeros((N_T,), dtype=ACC)
    for i_s in range(0, (Hs + RS - 1) // RS * n_xs):
        ys0 = (i_s // n_xs) * RS
        xs0 = (i_s % n_xs) * BX
        m_s = (i_m < Hs - ys0) & (u_m < Ws - xs0)
        p_s = p_s_b + tl.multiple_of(ys0 * stride_sy + xs0 * stride_sx, ALIGN)
        b_c = correlation_nt_tile(
            p_t, p_s, m_t, m_s, C, N_T, M_S, BLOCK_C, EVEN_C, INPUT_PRECISION, DOT_FP32, ACC
        )  # [N_T, M_S]
        if NORM_FEAT:
            b_as = tl.load(p_inv_src + i_b64 * (Hs * Ws) + (ys0 * Ws + xs0) + i_m * Ws + u_m, mask=m_s, other=0.0)
            b_c = b_c * b_bt[:, None] * b_as[None, :]
        b_r = tl.maximum(b_c, 0.0)  # padded rows / columns are 0
        b_ss += tl.sum(b_r * b_r, axis=1)
        if not OAC_FP32:  # relu(c) <= 1 (Cauchy-Schwarz on normalised features): safe in 16 bits
            b_r = b_r.to(p_wpad.dtype.element_ty)
        if SAVE:
            p_sv = p_corr + i_b64 * stride_cb + tl.multiple_of((ys0 * Ws + xs0) * stride_cs, 16)
            p_sv += off_cv_t[:, None] + off_cv_s[None, :]
            tl.store(p_sv, b_r.to(p_corr.dtype.element_ty), mask=m_t[:, None] & m_s[None, :])
        # padded weight: row ys0 - yt0 + Ht - 1 is relative row 0, column xs0 - xt0 + (n_xt-1)*BX is k = 0
        p_w = p_w_o + tl.multiple_of((ys0 - yt0 + Ht - 1) * stride_wy, 16) + (xs0 - xt0 + (n_xt - 1) * BX)
        acc = oac_tile_accumulate(
            acc,
            b_r,
            p_w,
            stride_wy,
            j_n,
            x_n,
            tl.minimum(Ht - yt0, RT),
            tl.minimum(Hs - ys0, RS),
            RS,
            RT,
            BX,
            OAC_CHUNK,
            OAC_FP32,
            OAC_PRECISION,
        )  #

    b_inv = 1.0 / tl.sqrt(b_ss + eps)  # [N_T]
    acc = acc * b_inv[:, None]
    m_o = o_o < O
    if HAS_BIAS:
        acc += tl.load(p_bias + o_o * stride_bias, mask=m_o, other=0.0).to(ACC)[None, :]
    p_o = p_out + i_b64 * stride_ob + (o_o.to(tl.int64) * stride_oo)[None, :]
    p_o += (yt.to(tl.int64) * stride_oy + xt * stride_ox)[:, None]
    tl.store(p_o, acc.to(p_out.dtype.element_ty), mask=m_t[:, None] & m_o[None, :])
    tl.store(p_inv_match + i_b64 * (Ht * Wt) + yt * Wt + xt, b_inv, mask=m_t & (i_o == 0))


@autotune(BWD_WEIGHT_CONFIGS, key=["C", "O", "Hs", "Ws", "Ht", "Wt"])
@triton.jit
def correlation_oac_bwd_weight_kernel(
    p_src,
    p_tgt,
    p_sscale,
    p_grad,
    p_sched,
    p_partial,
    C,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_sb,
    stride_sy,
    stride_sx,
    stride_tb,
    stride_ty,
    stride_tx,
    stride_gb,
    stride_go,
    stride_gy,
    stride_gx,
    stride_pc,
    NORM_FEAT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP64: tl.constexpr,
    ALIGN: tl.constexpr,
    IDX64: tl.constexpr,
    EVEN_C: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BX: tl.constexpr,
):  #
    """Partial ``dW`` of one chunk of :func:`a2net.kernels.offset_aware_correlation.weight_schedule`
    (one target row per item), recomputing the correlation; grid ``(n_chunks, cdiv(O, BO))``.

    Item ``(b, yt, it)`` of group (offset row ``dy``, diagonal ``k``) pairs targets ``(yt, it*BX +
    x)`` with sources ``(yt + dy - (Ht-1), (it+k)*BX + u)``: ``c[x, u]`` ``[BX, BX]`` is one
    ``tl.dot`` over channels, ``relu(c) / n_t`` skewed to ``[BX, 2*BX]`` meets ``g[o, x]`` in a
    second. Writes ``partial[chunk, o, kk]`` ``(n_chunks, O, 2*BX)`` (as the standalone kernel).

    ``g`` ``(B, O, Ht, n_xt*BX)`` comes scaled by ``b_t / n_t`` per target (``relu`` commutes with
    that positive scale), and with the inverse source norms ``sscale`` ``(B, Hs, n_xs*BX)`` (only
    with ``NORM_FEAT``) has zero-padded rows: no column mask on their loads, which stay vectors."""
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    BJ: tl.constexpr = 2 * BX
    if IDX64:  # offsets inside one batch element can pass 2^31
        stride_sy, stride_ty = stride_sy.to(tl.int64), stride_ty.to(tl.int64)
        stride_go, stride_gy = stride_go.to(tl.int64), stride_gy.to(tl.int64)
    i_c, i_o = tl.program_id(0), tl.program_id(1)
    group = tl.load(p_sched + 3 * i_c)
    first = tl.load(p_sched + 3 * i_c + 1)
    count = tl.load(p_sched + 3 * i_c + 2)
    n_xs = (Ws + BX - 1) // BX
    n_xt = (Wt + BX - 1) // BX
    n_k = n_xs + n_xt - 1
    dy = group // n_k
    k = group % n_k - (n_xt - 1)
    ddy = dy - (Ht - 1)  # ys = yt + ddy
    yt_lo = tl.maximum(-ddy, 0)
    n_yt = tl.minimum(Hs - ddy, Ht) - yt_lo
    it_lo = tl.maximum(-k, 0)
    n_it = tl.minimum(n_xs - k, n_xt) - it_lo

    o_x = tl.arange(0, BX)
    o_c = tl.arange(0, BLOCK_C)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    m_o = o_o < O
    # skew along the source axis: G[x, kk] = R[x, kk + x - (BX-1)], zero outside the block; the
    # 2*BX columns in two halves (two accumulators), which keeps half a skewed tile live at a time
    o_lo = o_x[None, :] + o_x[:, None] - (BX - 1)  # [BX, BX]: kk < BX
    m_lo = o_lo >= 0
    o_lo = tl.where(m_lo, o_lo, 0)
    o_hi = o_x[None, :] + o_x[:, None] + 1  # kk >= BX
    m_hi = o_hi < BX
    o_hi = tl.where(m_hi, o_hi, 0)
    off_t = tl.multiple_of(o_x * stride_tx, ALIGN)[:, None] + o_c[None, :]  # [BX, BC]
    off_s = tl.multiple_of(o_x * stride_sx, ALIGN)[:, None] + o_c[None, :]
    off_g = (o_o * stride_go)[:, None] + (o_x * stride_gx)[None, :]  # [BO, BX]
    ws_pad = n_xs * BX
    acc_lo = tl.zeros((BLOCK_O, BX), dtype=ACC)
    acc_hi = tl.zeros((BLOCK_O, BX), dtype=ACC)
    for item in range(first, first + count):
        it = it_lo + item % n_it
        rest = item // n_it
        yt = yt_lo + rest % n_yt
        b64 = (rest // n_yt).to(tl.int64)
        xt0 = it * BX
        xs0 = (it + k) * BX
        ys = yt + ddy
        m_t = o_x < Wt - xt0
        m_s = o_x < Ws - xs0
        p_t = p_tgt + tl.multiple_of(b64 * stride_tb + yt * stride_ty + xt0 * stride_tx, ALIGN) + off_t
        p_s = p_src + tl.multiple_of(b64 * stride_sb + ys * stride_sy + xs0 * stride_sx, ALIGN) + off_s
        b_c = correlation_nt_tile(p_t, p_s, m_t, m_s, C, BX, BX, BLOCK_C, EVEN_C, INPUT_PRECISION, DOT_FP32, ACC)
        if NORM_FEAT:
            b_c = b_c * tl.load(p_sscale + tl.multiple_of((b64 * Hs + ys) * ws_pad + xs0, 16) + o_x)[None, :]
        b_r = tl.maximum(b_c, 0.0)
        p_g = p_grad + tl.multiple_of(b64 * stride_gb + yt * stride_gy + xt0 * stride_gx, ALIGN) + off_g
        b_g = tl.load(p_g, mask=m_o[:, None], other=0.0)  # [BO, BX]
        if DOT_FP32:
            b_g = b_g.to(tl.float32)
        b_s = tl.where(m_lo, tl.gather(b_r, o_lo, axis=1), 0.0).to(b_g.dtype)  # [BX, BX]
        acc_lo = tl.dot(b_g, b_s, acc_lo, input_precision=INPUT_PRECISION, out_dtype=ACC)
        b_s = tl.where(m_hi, tl.gather(b_r, o_hi, axis=1), 0.0).to(b_g.dtype)
        acc_hi = tl.dot(b_g, b_s, acc_hi, input_precision=INPUT_PRECISION, out_dtype=ACC)

    p_p = p_partial + i_c.to(tl.int64) * stride_pc + (o_o * BJ)[:, None] + o_x[None, :]
    tl.store(p_p, acc_lo, mask=m_o[:, None])
    tl.store(p_p + BX, acc_hi, mask=m_o[:, None])


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
    O_pad,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_sb,
    stride_sy,
    stride_sx,
    stride_tb,
    stride_ty,
    stride_tx,
    stride_wy,
    stride_wx,
    stride_bias,
    stride_ob,
    stride_oo,
    stride_oy,
    stride_ox,
    stride_gb,
    stride_gt,
    NORM_FEAT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP64: tl.constexpr,
    ALIGN: tl.constexpr,
    IDX64: tl.constexpr,
    EVEN_C: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BX: tl.constexpr,
    RS: tl.constexpr,
    RT: tl.constexpr,
    OAC_CHUNK: tl.constexpr,
):  #
    """Gradient w.r.t. the pre-ReLU correlation, ``dcorr`` (B, S, T) contiguous, of one (batch,
    target tile); grid ``(B * n_target_tiles,)``. ``p_grad``: ``(B, T, O_pad)`` (channels
    contiguous, zero-padded), ``p_wpad``: the channels-last padded weight. With ``NORM_FEAT`` also
    the feature-norm dots ``sum_s dc*c`` -> ``dot_tgt`` (B, T) and per program ``sum_t dc*c`` ->
    ``dot_src`` (B, n_target_tiles, S)."""
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    N_T: tl.constexpr = RT * BX
    M_S: tl.constexpr = RS * BX
    S = Hs * Ws
    T = Ht * Wt
    if IDX64:  # offsets inside one batch element can pass 2^31
        stride_sy, stride_ty, stride_gt = stride_sy.to(tl.int64), stride_ty.to(tl.int64), stride_gt.to(tl.int64)
        T = T.to(tl.int64)
    pid = tl.program_id(0)
    i_b, yt0, xt0, j_n, x_n, yt, xt, m_t = target_tile(pid, Ht, Wt, BX, RT)
    i_b64 = i_b.to(tl.int64)
    o_m = tl.arange(0, M_S)
    i_m = o_m // BX
    u_m = o_m % BX
    o_c = tl.arange(0, BLOCK_C)
    o_ob = tl.arange(0, BLOCK_O)
    n_xt = (Wt + BX - 1) // BX
    n_xs = (Ws + BX - 1) // BX
    n_tiles = (Ht + RT - 1) // RT * n_xt
    o_t = yt * Wt + xt

    p_g = p_grad + i_b64 * stride_gb + tl.multiple_of(o_t * stride_gt, 16)[:, None]  # [N_T, 1]
    b_inv = tl.load(p_inv_match + i_b64 * (Ht * Wt) + o_t, mask=m_t, other=0.0)  # [N_T], 1/n_t
    # q_t = <g, Y>_o / n_t, Y = out - bias
    p_y = p_out + i_b64 * stride_ob + (yt.to(tl.int64) * stride_oy + xt * stride_ox)[:, None]
    b_q = tl.zeros((N_T,), dtype=ACC)
    for o0 in range(0, O, BLOCK_O):
        o_o = o0 + o_ob
        m_g = m_t[:, None] & (o_o < O)[None, :]
        b_g = tl.load(p_g + o_o[None, :], mask=m_g, other=0.0).to(ACC)  # [N_T, BO]
        b_y = tl.load(p_y + (o_o.to(tl.int64) * stride_oo)[None, :], mask=m_g, other=0.0).to(ACC)
        if HAS_BIAS:
            b_y -= tl.load(p_bias + o_o * stride_bias, mask=o_o < O, other=0.0).to(ACC)[None, :]
        b_q += tl.sum(tl.where(m_g, b_g * b_y, 0.0), axis=1)
    b_q *= b_inv

    p_t = p_tgt + tl.multiple_of(i_b64 * stride_tb, ALIGN) + o_c[None, :]
    p_t += tl.multiple_of(yt * stride_ty + xt * stride_tx, ALIGN)[:, None]  # [N_T, BC]
    p_s_b = p_src + tl.multiple_of(i_b64 * stride_sb, ALIGN) + o_c[None, :]
    p_s_b += tl.multiple_of(i_m * stride_sy + u_m * stride_sx, ALIGN)[:, None]  # [M_S, BC]
    if NORM_FEAT:
        b_bt = tl.load(p_inv_tgt + i_b64 * (Ht * Wt) + o_t, mask=m_t, other=0.0)  # [N_T]
    p_dc = p_dcorr + i_b64 * S * (Ht * Wt) + o_t[:, None] + ((i_m * Ws + u_m) * T)[None, :]  # [N_T, M_S]
    b_dot_t = tl.zeros((N_T,), dtype=ACC)
    for i_s in range(0, (Hs + RS - 1) // RS * n_xs):
        ys0 = (i_s // n_xs) * RS
        xs0 = (i_s % n_xs) * BX
        m_s = (i_m < Hs - ys0) & (u_m < Ws - xs0)
        p_s = p_s_b + tl.multiple_of(ys0 * stride_sy + xs0 * stride_sx, ALIGN)
        b_c = correlation_nt_tile(
            p_t, p_s, m_t, m_s, C, N_T, M_S, BLOCK_C, EVEN_C, INPUT_PRECISION, DOT_FP32, ACC
        )  # [N_T, M_S]
        if NORM_FEAT:
            b_as = tl.load(p_inv_src + i_b64 * S + (ys0 * Ws + xs0) + i_m * Ws + u_m, mask=m_s, other=0.0)
            b_c = b_c * b_bt[:, None] * b_as[None, :]
        p_w = p_wpad + tl.multiple_of((ys0 - yt0 + Ht - 1) * stride_wy, 16)
        p_w += tl.multiple_of((xs0 - xt0 + (n_xt - 1) * BX) * stride_wx, 16)
        b_p = oac_transpose_tile(
            p_g,
            m_t,
            p_w,
            stride_wy,
            stride_wx,
            O_pad,
            j_n,
            x_n,
            tl.minimum(Ht - yt0, RT),
            tl.minimum(Hs - ys0, RS),
            RS,
            RT,
            BX,
            OAC_CHUNK,
            BLOCK_O,
            DOT_FP32,
            INPUT_PRECISION,
            ACC,
        )  # [N_T, M_S]
        b_dc = tl.where(b_c > 0.0, (b_p - b_q[:, None] * b_c) * b_inv[:, None], 0.0)
        m_ts = m_t[:, None] & m_s[None, :]
        tl.store(p_dc + (ys0 * Ws + xs0) * T, b_dc.to(p_dcorr.dtype.element_ty), mask=m_ts)
        if NORM_FEAT:
            b_prod = b_dc * b_c
            b_dot_t += tl.sum(b_prod, axis=1)
            p_ds = p_dot_src + (i_b64 * n_tiles + pid % n_tiles) * S + (ys0 * Ws + xs0) + i_m * Ws + u_m
            tl.store(p_ds, tl.sum(b_prod, axis=0), mask=m_s)
    if NORM_FEAT:
        tl.store(p_dot_tgt + i_b64 * (Ht * Wt) + o_t, b_dot_t, mask=m_t)


# ---------------------------------------------------------------------------------------------
# Tiles and layouts (functions of the shapes; perf/roofline_oac.py uses them)
# ---------------------------------------------------------------------------------------------


def device_arch(device: torch.device) -> int:
    """Compute capability ``10 * major + minor`` of ``device`` (90 for sm_90), the one whose tiles
    the launchers pick; :data:`DEFAULT_ARCH` off a GPU (the interpreter, CPU tensors)."""
    if INTERPRET or device.type != "cuda":
        return DEFAULT_ARCH
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def forward_tiling(
    ws: int, wt: int, o: int, dtype: torch.dtype, save: bool = False, arch: int = DEFAULT_ARCH
) -> Tiling:
    """Tiles of :func:`correlation_oac_fwd_kernel` on compute capability ``arch`` (as
    :func:`device_arch`): 64 targets x 64 sources for maps up to 16 columns (the paper's 15x15: 128
    programs at B=32) and when the forward saves ``relu(c)``; from 17 columns on 64 x 128, and
    128 x 128 in 16 bits on sm_90 (:data:`WGMMA_MAJOR`; elsewhere that tile spills, e.g. sm_80
    under Triton 3.6): the largest tiles that compile without spills (Triton 3.6 and 3.8, sm_80
    and sm_90)."""
    bx = column_block(max(ws, wt))
    small = bx == 16 or save
    targets = 128 if not small and dtype.itemsize <= 2 and arch // 10 == WGMMA_MAJOR else 64
    sources = 64 if small else 128
    return Tiling(bx, sources // bx, targets // bx, output_block(o))


def weight_tiling(o: int) -> Tiling:
    """Tiles of :func:`correlation_oac_bwd_weight_kernel`: one target row of ``WEIGHT_BLOCK_X``
    columns against one source row per item (a 64x64 correlation tile)."""
    return Tiling(WEIGHT_BLOCK_X, 1, 1, output_block(o))


def saves_correlation(sizes: tuple, dtype: torch.dtype, normalize_features: bool) -> bool:
    """Whether the forward keeps ``relu(c)`` for the weight gradient: maps of at most
    :data:`SAVED_CORRELATION_MAX` positions, and values that fit the dtype (16-bit inputs only with
    normalised features, whose correlation is in [-1, 1])."""
    hs, ws, ht, wt = sizes
    fits = normalize_features or dtype.itemsize > 2
    return fits and max(hs * ws, ht * wt) <= SAVED_CORRELATION_MAX


def saved_correlation_shape(b: int, sizes: tuple) -> tuple[int, int, int, int]:
    """``(B, S, Ht, Wp)``: the saved ``relu(c)``, rows zero-padded to whole column blocks of the
    ``dW`` kernel that reads them (``Wp = cdiv(Wt, BX) * BX``, a multiple of 16)."""
    hs, ws, ht, wt = sizes
    bx = column_block(max(ws, wt))  # that of the dW kernel's tiling
    return b, hs * ws, ht, triton.cdiv(wt, bx) * bx


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` with channels-last storage (unit channel stride): ``x`` itself when it
    has it, else a copy."""
    if x.stride(1) == 1 or x.shape[1] == 1:
        return x
    return x.contiguous(memory_format=torch.channels_last)


def _feature_args(source: torch.Tensor, target: torch.Tensor) -> dict:
    """Strides (b, y, x) of both channels-last maps, ``ALIGN`` and ``EVEN_C``."""
    align = min(vector_width(source, 1), vector_width(target, 1))
    return {
        "stride_sb": source.stride(0),
        "stride_sy": source.stride(2),
        "stride_sx": source.stride(3),
        "stride_tb": target.stride(0),
        "stride_ty": target.stride(2),
        "stride_tx": target.stride(3),
        "ALIGN": align,
        "EVEN_C": source.shape[1] % BLOCK_C == 0,
        "BLOCK_C": BLOCK_C,
    }


def _oac_dot_options(dtype: torch.dtype, normalize_features: bool, input_precision: str) -> dict:
    """The ``relu(c) @ W`` product of the forward: in the input dtype, except for 16-bit inputs
    without feature normalisation (relu(c) unbounded: fp32 operands, tf32) and bf16 under the
    interpreter (no bf16 dot there)."""
    if dtype in (torch.float16, torch.bfloat16) and not normalize_features:
        return {"OAC_FP32": True, "OAC_PRECISION": "ieee" if INTERPRET else "tf32"}
    if INTERPRET and dtype == torch.bfloat16:
        return {"OAC_FP32": True, "OAC_PRECISION": "ieee"}
    return {"OAC_FP32": False, "OAC_PRECISION": input_precision if dtype == torch.float32 else "ieee"}


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


def _channels_last_and_norms(x: torch.Tensor, normalize: bool, eps: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(inverse norms (B, H*W) or None, x channels-last)`` of a map ``(B, C, H, W)``: a map
    that is not channels-last is copied in the pass that computes its norms (one read instead of
    two); one whose ``(H, W)`` do not collapse is copied first."""
    b, c, h, w = x.shape
    if x.stride(1) != 1 and c > 1:
        try:
            flat = x.view(b, c, h * w)
        except RuntimeError:  # (H, W) do not collapse: a separate copy, then the norms
            x = channels_last(x)
        else:
            inv, rows = feature_prep(flat, normalize, True, eps)
            return inv, rows.view(b, h, w, c).permute(0, 3, 1, 2)
    return (_inverse_norm(x, eps) if normalize else None), x


def _check_feature_sizes(source: torch.Tensor, target: torch.Tensor) -> None:
    """Feature offsets inside one batch element are 32-bit unless a map passes 2^31 elements."""
    for name, x in (("source", source), ("target", target)):
        check_index_range(f"{name} (one batch element)", x[0].numel() if x.shape[0] else 0)


# ---------------------------------------------------------------------------------------------
# Launchers (tensor in, tensor out)
# ---------------------------------------------------------------------------------------------


def correlation_oac_fwd(
    source: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    normalize_features: bool,
    input_precision: str,
    eps: float,
    save_correlation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward.

    Args:
        source ``(B, C, Hs, Ws)``, target ``(B, C, Ht, Wt)``, weight ``(O, Hs+Ht-1, Ws+Wt-1)``,
        bias ``(O,)`` or None: any strides, one dtype; validated by the caller. Maps that are not
        channels-last are copied to channels-last first, in the pass that computes their norms.
        save_correlation: keep ``relu(c)`` for the weight gradient (honoured only where
            :func:`saves_correlation` allows).
    Returns:
        ``out (B, O, Ht, Wt)`` in the input dtype, then in the accumulation dtype
        ``inv_source (B, S)``, ``inv_target (B, T)`` (empty without ``normalize_features``) and
        ``inv_match (B, T)`` = ``1 / n_t``, then ``corr``: ``relu(c)`` ``(B, S, Ht, Wp)``
        (:func:`saved_correlation_shape`, input dtype) or an empty tensor.
    """
    b, c, hs, ws = source.shape
    ht, wt = target.shape[2:]
    sizes = (hs, ws, ht, wt)
    o = weight.shape[0]
    dev, acc_dtype = source.device, accumulation_dtype(source.dtype)
    save = save_correlation and saves_correlation(sizes, source.dtype, normalize_features)
    out = empty(b, o, ht, wt, dtype=source.dtype, device=dev)
    inv_match = empty(b, ht * wt, dtype=acc_dtype, device=dev)
    corr = empty(*saved_correlation_shape(b, sizes), dtype=source.dtype, device=dev) if save else source.new_empty(0)
    inv_src, inv_tgt = (source.new_empty((0,), dtype=acc_dtype) for _ in range(2))  # distinct: no aliasing
    if out.numel() == 0:
        if normalize_features:
            inv_src = source.new_zeros((b, hs * ws), dtype=acc_dtype)
            inv_tgt = source.new_zeros((b, ht * wt), dtype=acc_dtype)
        return out, inv_src, inv_tgt, inv_match.zero_(), corr.zero_()
    _check_feature_sizes(source, target)
    (norm_src, src), (norm_tgt, tgt) = (_channels_last_and_norms(x, normalize_features, eps) for x in (source, target))
    if normalize_features:
        inv_src, inv_tgt = norm_src, norm_tgt
    if save:
        corr[..., wt:].zero_()  # the padding columns: never read as data, never left as NaN
    tiling = forward_tiling(ws, wt, o, source.dtype, save, device_arch(dev))
    wpad = padded_weight(weight, sizes, tiling)
    n_tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, tiling.bx)
    launch(
        correlation_oac_fwd_kernel,
        lambda meta: (b * n_tiles, triton.cdiv(o, tiling.block_o)),
        name="correlation_oac_fwd",
        device=dev,
        sizes=_sizes(source, target, o),
        p_src=src,
        p_tgt=tgt,
        p_inv_src=inv_src if normalize_features else out,
        p_inv_tgt=inv_tgt if normalize_features else out,
        p_wpad=wpad,
        p_bias=weight if bias is None else bias,
        p_out=out,
        p_inv_match=inv_match,
        p_corr=corr if save else out,
        C=c,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        stride_wy=wpad.stride(0),
        stride_wo=wpad.stride(1),
        stride_bias=0 if bias is None else bias.stride(0),
        stride_ob=out.stride(0),
        stride_oo=out.stride(1),
        stride_oy=out.stride(2),
        stride_ox=out.stride(3),
        stride_cb=corr.stride(0) if save else 0,
        stride_cs=corr.stride(1) if save else 0,
        stride_cy=corr.stride(2) if save else 0,
        eps=eps,
        NORM_FEAT=normalize_features,
        HAS_BIAS=bias is not None,
        SAVE=save,
        **dot_options(source.dtype, input_precision),
        **_oac_dot_options(source.dtype, normalize_features, input_precision),
        IDX64=needs_int64(src) or needs_int64(tgt) or (save and needs_int64(corr)),
        **_feature_args(src, tgt),
        **tiling.kwargs(),
    )  #
    return out, inv_src, inv_tgt, inv_match, corr


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
    """``dW`` ``(O, Hs+Ht-1, Ws+Wt-1)`` in the input dtype, recomputing the correlation;
    deterministic (chunks of a fixed schedule, reduced in a fixed order)."""
    b, c, hs, ws = source.shape
    ht, wt = target.shape[2:]
    sizes = (hs, ws, ht, wt)
    if b == 0 or hs * ws * ht * wt == 0:
        return source.new_zeros(o, hs + ht - 1, ws + wt - 1)
    _check_feature_sizes(source, target)
    tiling = weight_tiling(o)
    schedule = weight_schedule(b, sizes, tiling.bx, 1)
    dev = source.device
    partial = empty(schedule.n_chunks, o, 2 * tiling.bx, dtype=accumulation_dtype(source.dtype), device=dev)
    bx = tiling.bx
    n_xs, n_xt = triton.cdiv(ws, bx), triton.cdiv(wt, bx)
    src, tgt = channels_last(source), channels_last(target)
    g = padded_target_rows(grad, n_xt * bx, inv_match * inv_target if normalize_features else inv_match)
    sscale = padded_target_rows(inv_source.view(b, hs, ws), n_xs * bx) if normalize_features else g
    features = _feature_args(src, tgt)
    features["ALIGN"] = min(features["ALIGN"], vector_width(g))
    launch(
        correlation_oac_bwd_weight_kernel,
        lambda meta: (schedule.n_chunks, triton.cdiv(o, tiling.block_o)),
        name="correlation_oac_bwd_weight",
        device=dev,
        sizes=_sizes(source, target, o),
        p_src=src,
        p_tgt=tgt,
        p_sscale=sscale,
        p_grad=g,
        p_sched=schedule.on(dev)[0],
        p_partial=partial,
        C=c,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        stride_gb=g.stride(0),
        stride_go=g.stride(1),
        stride_gy=g.stride(2),
        stride_gx=g.stride(3),
        stride_pc=partial.stride(0),
        NORM_FEAT=normalize_features,
        **dot_options(source.dtype, input_precision),
        IDX64=needs_int64(src) or needs_int64(tgt) or needs_int64(g),
        **features,
        BLOCK_O=tiling.block_o,
        BX=bx,
    )  #
    return reduce_weight_partials(partial, schedule, o, sizes, tiling.bx, source.dtype)


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
    ``dot_tgt`` ``(B, 1, T)`` that :func:`a2net.kernels.correlation.correlation_bwd_features` takes.
    ``grad`` is copied channels-last (``B*O*T`` elements) for the ``P = W^T g`` products."""
    b, c, hs, ws = source.shape
    ht, wt = target.shape[2:]
    sizes = (hs, ws, ht, wt)
    o = weight.shape[0]
    s, t = hs * ws, ht * wt
    dev, acc_dtype = source.device, accumulation_dtype(source.dtype)
    _check_feature_sizes(source, target)
    tiling = oac_tiling(ws, wt, o)
    wpad = padded_weight(weight, sizes, tiling, channels_last=True)
    g = channels_last_grad(grad, wpad.shape[2])
    src, tgt = channels_last(source), channels_last(target)
    n_tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, tiling.bx)
    dcorr = empty(b, s, t, dtype=source.dtype, device=dev)
    dot_src = empty(b, n_tiles, s, dtype=acc_dtype, device=dev) if normalize_features else None
    dot_tgt = empty(b, 1, t, dtype=acc_dtype, device=dev) if normalize_features else None
    launch(
        correlation_oac_bwd_corr_kernel,
        lambda meta: (b * n_tiles,),
        name="correlation_oac_bwd_corr",
        device=dev,
        sizes=_sizes(source, target, o),
        p_src=src,
        p_tgt=tgt,
        p_inv_src=inv_source if normalize_features else dcorr,
        p_inv_tgt=inv_target if normalize_features else dcorr,
        p_wpad=wpad,
        p_bias=weight if bias is None else bias,
        p_out=out,
        p_inv_match=inv_match,
        p_grad=g,
        p_dcorr=dcorr,
        p_dot_src=dot_src if normalize_features else dcorr,
        p_dot_tgt=dot_tgt if normalize_features else dcorr,
        C=c,
        O=o,
        O_pad=wpad.shape[2],
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        stride_wy=wpad.stride(0),
        stride_wx=wpad.stride(1),
        stride_bias=0 if bias is None else bias.stride(0),
        stride_ob=out.stride(0),
        stride_oo=out.stride(1),
        stride_oy=out.stride(2),
        stride_ox=out.stride(3),
        stride_gb=g.stride(0),
        stride_gt=g.stride(1),
        NORM_FEAT=normalize_features,
        HAS_BIAS=bias is not None,
        **dot_options(source.dtype, input_precision),
        IDX64=needs_int64(src) or needs_int64(tgt) or needs_int64(dcorr) or needs_int64(g),
        **_feature_args(src, tgt),
        **tiling.kwargs(),
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
    corr: torch.Tensor,
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
            by :func:`correlation_oac_fwd` (``corr`` empty when the forward kept no correlation:
            the weight gradient then recomputes it).
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
    if need_weight and corr.numel():
        dweight = offset_aware_correlation_bwd_weight(
            grad, corr[..., :wt], (hs, ws), input_precision, target_scale=inv_match, corr_padded=True
        )
    elif need_weight:
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
