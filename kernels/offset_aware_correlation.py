"""Triton kernels of the offset-aware correlation (OAC), forward and backward, and the Toeplitz
skew that the fused correlation + OAC (:mod:`a2net.kernels.correlation_oac`) shares.

``out[b, o, t] = bias[o] + sum_s W[o, off(s, t)] * corr[b, s, t]``, ``off(s, t) = (ys-yt+Ht-1,
xs-xt+Wt-1)`` on the ``Dh x Dw = (Hs+Ht-1) x (Ws+Wt-1)`` offset grid (docs/design.md §3.2). The
authors' aligned tensor ``A[b, d, t] = corr[b, s(d, t), t]`` is never built.

Tiling (docs/design.md §9). Maps are cut into column blocks of ``BX`` positions
(:func:`column_block`: 16, 32 or 64) and blocks of rows. A *target tile* is ``RT`` rows x ``BX``
columns of the target map (``N_T = RT*BX`` targets, the M dimension of every product), a *source
tile* ``RS`` rows x ``BX`` columns (``M_S`` sources). For a target row ``j`` and a source row ``i``
of the tiles, the weights ``W[o, dy, xs - xt + Wt - 1]`` form a Toeplitz matrix in ``(xs, xt)``:
skewing the ``[N_T, M_S]`` correlation tile on chip, ``G[(j, x), k] = R[(j, x), (i, k + x - BX +
1)]`` (zero outside the row), makes every target of one relative row ``dyr = i - j + RT - 1`` read
the same weight row ``dy`` and the same ``2*BX`` weight columns: ``acc[N_T, O] += G @ Wslice``, a
plain ``tl.dot`` (:func:`oac_tile_accumulate`). The skew first selects the source row of each
target row (a masked sum over ``RS``, no data movement across threads) and then gathers inside
that ``BX``-wide row (``tl.gather`` along the tile's N axis, which Triton lowers to warp shuffles:
about ``BX/16`` per element). The launcher zero-pads the weight (:func:`padded_weight`: ``RT-1``
rows above, ``RS-1`` below, ``n_xt*BX - Wt`` columns on the left) so every slice is in range,
16-element aligned and loaded without a mask in 16-byte vectors. The band costs ``2*(RS+RT-1)/RS``
times the useful OAC products (zeros of the skew), the price of tensor-core products.

* forward (:func:`offset_aware_correlation_fwd_kernel`): one program per (batch element, target
  tile, block of output channels); correlation tiles ``[N_T, M_S]`` are read coalesced along the
  targets (a whole source tile per program step; the map's edge masks them along the targets, so
  they load element-wide), skewed in registers; the main loop (weight slices) is 16-byte ``cp.async``;
* ``dcorr`` (:func:`offset_aware_correlation_bwd_corr_kernel`): the same tiles, ``Q[n, k] =
  sum_o g[o, n] W[o, dy, dx0 + k]`` per relative row (a dot against the channel-contiguous padded
  weight; ``g`` copied channels-last), un-skewed into ``[N_T, M_S]`` by a gather and stored along
  the targets (:func:`oac_transpose_tile`); every element written once;
* ``dW`` (:func:`offset_aware_correlation_bwd_weight_kernel`): targets are grouped by offset row
  ``dy`` and *diagonal* ``k`` (source column block minus target column block): all the
  ``(b, target rows, column block)`` items of a group map to the same ``[O, 2*BX]`` window of
  ``dW``, accumulated in registers as ``g[O, N_T] @ G[N_T, 2*BX]`` (two ``[O, BX]`` halves). The
  items of every group are cut into chunks of at most ``L`` items (:func:`weight_schedule`), one
  program per chunk, so no program does more than about 1.25x the mean work;
  :func:`offset_weight_reduce_kernel` adds the chunks of the two diagonals that overlap each
  column, in a fixed order: deterministic, no atomics. ``g`` is copied into zero-padded rows
  (:func:`padded_target_rows`) and loads unmasked in 16-byte vectors; so does the correlation when
  its rows are padded the same way (the fused op's saved one).
* ``dbias`` sums ``g`` per batch element, then :func:`offset_aware_correlation_bwd_reduce_kernel`.

Offsets: batch offsets are 64-bit; offsets inside one batch element are 32-bit unless the
launcher finds one that can pass 2^31 (``IDX64``: ``S*T`` from about 216x216 maps on).

Memory: ``O(B*O*T + B*S*T)``, the padded weight (``(Dh+RS+RT-2) * O * (n_xs+n_xt)*BX``), and for
``dW`` one fp32 ``[O, 2*BX]`` partial sum per chunk (at most about
``(WEIGHT_TARGET_PROGRAMS + Dh*n_k) * O * 2*BX * 4`` bytes).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from a2net.kernels._common import dtype_name, strides
from a2net.kernels._memory import accumulation_dtype, empty
from a2net.kernels._tuning import INTERPRET, autotune, launch

# ---------------------------------------------------------------------------------------------
# Configs. The launchers choose the tiles (BX, RS, RT, BLOCK_O) from the shapes; the configs tune
# the OAC chunk (weight columns per product), warps and stages. The first entry is the default
# (the only one under the interpreter).
# ---------------------------------------------------------------------------------------------

FWD_CONFIGS = [
    triton.Config({"OAC_CHUNK": 32}, num_warps=8, num_stages=3),
    triton.Config({"OAC_CHUNK": 32}, num_warps=8, num_stages=2),
    triton.Config({"OAC_CHUNK": 64}, num_warps=8, num_stages=3),
]
BWD_CORR_CONFIGS = [
    triton.Config({"OAC_CHUNK": 32}, num_warps=8, num_stages=3),
    triton.Config({"OAC_CHUNK": 32}, num_warps=8, num_stages=2),
    triton.Config({"OAC_CHUNK": 16}, num_warps=8, num_stages=3),
]
BWD_WEIGHT_CONFIGS = [triton.Config({}, num_warps=8, num_stages=3)]  # 2 or 4 stages spill somewhere
BWD_BIAS_CONFIGS = [
    triton.Config({"BLOCK_O": 16, "BLOCK_T": 128}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_O": 32, "BLOCK_T": 128}, num_warps=4, num_stages=2),
]
REDUCE_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK": 4096}, num_warps=8, num_stages=2),
]
WEIGHT_REDUCE_WARPS, WEIGHT_REDUCE_BLOCK_O = 4, 32

MAX_BLOCK_X = 64  # column block of the maps: 16 for the paper's 15, 64 from 33 columns on
TILE_POSITIONS = 64  # targets / sources per tile of these kernels (wgmma wants >= 64 rows)
MAX_BLOCK_O = 128  # output channels per program (the paper's O); more -> several programs
#: The dW chunk length is chosen from the shapes only (so is the summation order): about this
#: many chunks (4 per SM of an H100), fewer items per chunk while the longest chunk is above
#: WEIGHT_MAX_OVER_MEAN times the mean. The interpreter runs one program after another: there
#: every program costs a fixed overhead, so it takes few, long chunks.
GPU_WEIGHT_PROGRAMS = 528
WEIGHT_TARGET_PROGRAMS = 1 if INTERPRET else GPU_WEIGHT_PROGRAMS
WEIGHT_MAX_OVER_MEAN = 1.25
INT32_LIMIT = 2**31  # a buffer the kernels address with 32-bit offsets must be smaller
#: Offsets inside one batch element at or above this are computed in 64 bits (``IDX64``); tests
#: lower it to run the 64-bit path on small tensors.
IDX64_THRESHOLD = INT32_LIMIT


# ---------------------------------------------------------------------------------------------
# The Toeplitz skew (shared with the fused kernels)
# ---------------------------------------------------------------------------------------------


@triton.jit
def oac_tile_accumulate(
    acc,
    b_r,
    p_w,
    stride_wy,
    j_n,
    x_n,
    n_rows_t,
    n_rows_s,
    RS: tl.constexpr,
    RT: tl.constexpr,
    BX: tl.constexpr,
    KC: tl.constexpr,
    W_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):  #
    """``acc[n, o] += sum_m W[o, off(m, n)] r[n, m]`` for one ``[N_T, M_S]`` tile ``b_r``.

    ``p_w`` ``[1, BO]`` points at column ``k = 0`` of relative row ``dyr = 0`` in the padded,
    column-contiguous weight (row stride ``stride_wy``, a multiple of 16). ``j_n``/``x_n``: row and
    column of each target in the tile; ``n_rows_t``/``n_rows_s``: rows of the tiles inside the maps
    (relative rows that pair none of them are skipped). One flat dynamic loop over (relative row,
    chunk of ``KC`` columns): the pipeliner turns its weight loads into ``cp.async``, and one chunk
    is live at a time. The skew first selects each target row's source row (a masked sum over the
    ``RS`` rows, no data movement across threads), then gathers inside that ``BX``-wide row.
    """
    N_T: tl.constexpr = RT * BX
    KC_: tl.constexpr = KC if KC < 2 * BX else 2 * BX
    N_KC: tl.constexpr = 2 * BX // KC_
    o_k = tl.arange(0, KC_)
    o_rs = tl.arange(0, RS)
    b_r3 = tl.reshape(b_r, (N_T, RS, BX))
    # the index tensors are rebuilt from [N_T] vectors in every step: cheaper than keeping
    # [N_T, KC] of them live in registers through the whole kernel
    for q in range((RT - n_rows_t) * N_KC, (RT - 1 + n_rows_s) * N_KC):
        dyr = q // N_KC
        kc = (q % N_KC) * KC_
        m_row = (j_n + (dyr - (RT - 1)))[:, None] == o_rs[None, :]  # [N_T, RS]
        b_rows = tl.sum(tl.where(m_row[:, :, None], b_r3, 0.0), axis=1)  # [N_T, BX]
        o_u = o_k[None, :] + (x_n + (kc - (BX - 1)))[:, None]  # [N_T, KC]: source column of (n, k)
        m_u = (o_u >= 0) & (o_u < BX)
        b_g = tl.where(m_u, tl.gather(b_rows, tl.where(m_u, o_u, 0), axis=1), 0.0)
        b_w = tl.load(p_w + tl.multiple_of(dyr * stride_wy, 16) + (kc + o_k)[:, None])  # [KC, BO]
        if W_FP32:
            b_w = b_w.to(tl.float32)
        acc = tl.dot(b_g.to(b_w.dtype), b_w, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def oac_transpose_tile(
    p_g,
    m_t,
    p_w,
    stride_wy,
    stride_wx,
    O_pad,
    j_n,
    x_n,
    n_rows_t,
    n_rows_s,
    RS: tl.constexpr,
    RT: tl.constexpr,
    BX: tl.constexpr,
    KC: tl.constexpr,
    BLOCK_O: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):  #
    """``P[n, m] = sum_o W[o, off(m, n)] g[o, n]`` ``[N_T, M_S]`` for one source tile.

    ``p_g`` ``[N_T, 1]`` points at channel 0 of each target's gradient row (channels contiguous,
    zero-padded to ``O_pad``); ``m_t`` masks targets. ``p_w`` points at relative row 0, column
    ``k = 0`` of the padded, channel-contiguous weight (row / column strides ``stride_wy``,
    ``stride_wx``, multiples of 16). Per (relative row, chunk of ``KC``
    columns) ``Q = g @ W^T`` ``[N_T, KC]`` is a ``tl.dot``; the un-skew ``P[(j, x), (i, u)] =
    Q_{i-j+RT-1}[(j, x), u - x + BX - 1]`` a gather along the tile's N axis.
    """
    N_T: tl.constexpr = RT * BX
    M_S: tl.constexpr = RS * BX
    KC_: tl.constexpr = KC if KC < 2 * BX else 2 * BX
    N_KC: tl.constexpr = 2 * BX // KC_
    o_k = tl.arange(0, KC_)
    o_ob = tl.arange(0, BLOCK_O)
    o_m = tl.arange(0, M_S)
    # relative row and skewed column of every (target, source) pair of the tile
    dyr_nm = (o_m // BX)[None, :] - j_n[:, None] + (RT - 1)  # [N_T, M_S]
    k_nm = (o_m % BX)[None, :] - x_n[:, None] + (BX - 1)  # in [0, 2*BX - 1)
    b_p = tl.zeros((N_T, M_S), dtype=ACC)
    for q in range((RT - n_rows_t) * N_KC, (RT - 1 + n_rows_s) * N_KC):
        dyr = q // N_KC
        kc = (q % N_KC) * KC_
        p_w_q = p_w + tl.multiple_of(dyr * stride_wy, 16) + ((kc + o_k) * stride_wx)[None, :]  # [1, KC]
        b_q = tl.zeros((N_T, KC_), dtype=ACC)
        for o0 in range(0, O_pad, BLOCK_O):
            b_g = tl.load(p_g + (o0 + o_ob)[None, :], mask=m_t[:, None], other=0.0)  # [N_T, BO]
            b_w = tl.load(p_w_q + (o0 + o_ob)[:, None])  # [BO, KC]
            if UPCAST:
                b_g, b_w = b_g.to(tl.float32), b_w.to(tl.float32)
            b_q = tl.dot(b_g, b_w, b_q, input_precision=PRECISION, out_dtype=ACC)
        if N_KC == 1:
            b_p = tl.where(dyr_nm == dyr, tl.gather(b_q, k_nm, axis=1), b_p)
        else:
            m_q = (dyr_nm == dyr) & (k_nm >= kc) & (k_nm < kc + KC_)
            b_p = tl.where(m_q, tl.gather(b_q, tl.where(m_q, k_nm - kc, 0), axis=1), b_p)
    return b_p


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def target_tile(pid, Ht, Wt, BX: tl.constexpr, RT: tl.constexpr):
    """``(i_b, yt0, xt0, j_n, x_n, yt, xt, m_t)`` of program ``pid`` of a grid of ``B *
    cdiv(Ht, RT) * cdiv(Wt, BX)`` target tiles (tiles of one batch element adjacent)."""
    n_xt = (Wt + BX - 1) // BX
    n_tiles = (Ht + RT - 1) // RT * n_xt
    i_b = pid // n_tiles
    i_t = pid % n_tiles
    yt0 = (i_t // n_xt) * RT
    xt0 = (i_t % n_xt) * BX
    o_n = tl.arange(0, RT * BX)
    j_n = o_n // BX
    x_n = o_n % BX
    yt = yt0 + j_n
    xt = xt0 + x_n
    return i_b, yt0, xt0, j_n, x_n, yt, xt, (yt < Ht) & (xt < Wt)


@autotune(FWD_CONFIGS, key=["B", "O", "Hs", "Ws", "Ht", "Wt"])
@triton.jit
def offset_aware_correlation_fwd_kernel(
    p_corr,
    p_wpad,
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
    stride_wy,
    stride_wo,
    stride_bias,
    stride_ob,
    stride_oo,
    stride_oy,
    stride_ox,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BX: tl.constexpr,
    RS: tl.constexpr,
    RT: tl.constexpr,
    OAC_CHUNK: tl.constexpr,
):  #
    """``out[b, o, t-tile] = bias[o] + sum_s W[o, off(s, t)] corr[b, s, t]``; grid
    ``(B * cdiv(Ht, RT) * cdiv(Wt, BX), cdiv(O, BO))``. ``p_wpad``: :func:`padded_weight`."""
    ACC: tl.constexpr = tl.float64 if p_out.dtype.element_ty == tl.float64 else tl.float32
    M_S: tl.constexpr = RS * BX
    if IDX64:  # offsets inside one batch element can pass 2^31
        stride_cs, stride_cy = stride_cs.to(tl.int64), stride_cy.to(tl.int64)
    i_o = tl.program_id(1)
    i_b, yt0, xt0, j_n, x_n, yt, xt, m_t = target_tile(tl.program_id(0), Ht, Wt, BX, RT)
    o_m = tl.arange(0, M_S)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    n_xt = (Wt + BX - 1) // BX
    n_xs = (Ws + BX - 1) // BX

    # row starts are multiples of ALIGN: contiguous runs of targets load as vectors
    p_c = p_corr + tl.multiple_of(i_b.to(tl.int64) * stride_cb, ALIGN)
    p_c += (tl.multiple_of(yt * stride_cy, ALIGN) + xt * stride_cx)[:, None]  # [N_T, 1]
    i_m = o_m // BX
    u_m = o_m % BX
    off_m = tl.multiple_of((i_m * Ws + u_m) * stride_cs, ALIGN)[None, :]  # [1, M_S]
    p_w_o = p_wpad + tl.multiple_of(o_o * stride_wo, 16)[None, :]  # [1, BO]
    acc = tl.zeros((RT * BX, BLOCK_O), dtype=ACC)
    for i_s in range(0, (Hs + RS - 1) // RS * n_xs):
        ys0 = (i_s // n_xs) * RS
        xs0 = (i_s % n_xs) * BX
        m_s = (i_m < Hs - ys0) & (u_m < Ws - xs0)
        p_r = p_c + off_m + tl.multiple_of((ys0 * Ws + xs0) * stride_cs, ALIGN)
        b_r = tl.load(p_r, mask=m_t[:, None] & m_s[None, :], other=0.0)  # [N_T, M_S]
        if UPCAST:
            b_r = b_r.to(tl.float32)
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
            UPCAST,
            INPUT_PRECISION,
        )  #

    m_o = o_o < O
    if HAS_BIAS:
        acc += tl.load(p_bias + o_o * stride_bias, mask=m_o, other=0.0).to(ACC)[None, :]
    p_o = p_out + i_b.to(tl.int64) * stride_ob + (o_o.to(tl.int64) * stride_oo)[None, :]
    p_o += (yt.to(tl.int64) * stride_oy + xt * stride_ox)[:, None]
    tl.store(p_o, acc.to(p_out.dtype.element_ty), mask=m_t[:, None] & m_o[None, :])


@autotune(BWD_CORR_CONFIGS, key=["B", "O", "Hs", "Ws", "Ht", "Wt"])
@triton.jit
def offset_aware_correlation_bwd_corr_kernel(
    p_grad,
    p_wpad,
    p_dcorr,
    B,
    O_pad,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_gb,
    stride_gt,
    stride_wy,
    stride_wx,
    stride_cb,
    stride_cs,
    stride_cy,
    stride_cx,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BX: tl.constexpr,
    RS: tl.constexpr,
    RT: tl.constexpr,
    OAC_CHUNK: tl.constexpr,
):  #
    """``dcorr[b, s, t-tile] = sum_o W[o, off(s, t)] g[b, o, t]``; grid ``(B * n_target_tiles,)``.
    ``p_grad``: ``(B, T, O_pad)`` (channels contiguous, zero-padded), ``p_wpad``:
    :func:`padded_weight` with ``channels_last``."""
    ACC: tl.constexpr = tl.float64 if p_dcorr.dtype.element_ty == tl.float64 else tl.float32
    M_S: tl.constexpr = RS * BX
    if IDX64:  # offsets inside one batch element can pass 2^31
        stride_gt, stride_cs, stride_cy = stride_gt.to(tl.int64), stride_cs.to(tl.int64), stride_cy.to(tl.int64)
    i_b, yt0, xt0, j_n, x_n, yt, xt, m_t = target_tile(tl.program_id(0), Ht, Wt, BX, RT)
    o_m = tl.arange(0, M_S)
    n_xt = (Wt + BX - 1) // BX
    n_xs = (Ws + BX - 1) // BX
    i_b64 = i_b.to(tl.int64)

    p_g = p_grad + i_b64 * stride_gb + tl.multiple_of((yt * Wt + xt) * stride_gt, 16)[:, None]  # [N_T, 1]
    p_c = p_dcorr + tl.multiple_of(i_b64 * stride_cb, ALIGN)
    p_c += (tl.multiple_of(yt * stride_cy, ALIGN) + xt * stride_cx)[:, None]  # [N_T, 1]
    i_m = o_m // BX
    u_m = o_m % BX
    off_m = tl.multiple_of((i_m * Ws + u_m) * stride_cs, ALIGN)[None, :]  # [1, M_S]
    for i_s in range(0, (Hs + RS - 1) // RS * n_xs):
        ys0 = (i_s // n_xs) * RS
        xs0 = (i_s % n_xs) * BX
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
            UPCAST,
            INPUT_PRECISION,
            ACC,
        )  #
        m_s = (i_m < Hs - ys0) & (u_m < Ws - xs0)
        p_d = p_c + off_m + tl.multiple_of((ys0 * Ws + xs0) * stride_cs, ALIGN)
        tl.store(p_d, b_p.to(p_dcorr.dtype.element_ty), mask=m_t[:, None] & m_s[None, :])


@autotune(BWD_WEIGHT_CONFIGS, key=["B", "O", "Hs", "Ws", "Ht", "Wt"])
@triton.jit
def offset_aware_correlation_bwd_weight_kernel(
    p_grad,
    p_corr,
    p_sched,
    p_partial,
    O,
    Hs,
    Ws,
    Ht,
    Wt,
    stride_gb,
    stride_go,
    stride_gy,
    stride_gx,
    stride_cb,
    stride_cs,
    stride_cy,
    stride_cx,
    stride_pc,
    CORR_PADDED: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    ALIGN: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BX: tl.constexpr,
    RT: tl.constexpr,
):  #
    """Partial ``dW`` of one chunk of :func:`weight_schedule`; grid ``(n_chunks, cdiv(O, BO))``.

    The chunk's group is (offset row ``dy``, diagonal ``k``): item ``(b, target rows, column
    block it)`` pairs targets ``(yt, it*BX + x)`` with sources ``(yt + dy - (Ht-1), (it+k)*BX +
    u)``, whose offset column is ``dx0(k) + kk``, ``kk = u - x + BX - 1``. Writes ``partial[chunk,
    o, kk]`` = ``sum_items g[b, o, t] * corr[b, s, t]`` ``(n_chunks, O, 2*BX)``.

    ``g`` has target rows zero-padded to ``n_xt*BX`` columns (:func:`padded_target_rows`): its
    tiles load without a column mask (a mask along the contiguous axis is what keeps loads from
    being vectors). With ``CORR_PADDED`` so has ``corr``.
    """
    ACC: tl.constexpr = tl.float64 if p_partial.dtype.element_ty == tl.float64 else tl.float32
    N_T: tl.constexpr = RT * BX
    BJ: tl.constexpr = 2 * BX
    if IDX64:  # offsets inside one batch element can pass 2^31
        stride_go, stride_gy = stride_go.to(tl.int64), stride_gy.to(tl.int64)
        stride_cs, stride_cy = stride_cs.to(tl.int64), stride_cy.to(tl.int64)
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
    yt_hi = tl.minimum(Hs - ddy, Ht)
    n_yb = (yt_hi - yt_lo + RT - 1) // RT
    it_lo = tl.maximum(-k, 0)
    n_it = tl.minimum(n_xs - k, n_xt) - it_lo

    o_n = tl.arange(0, N_T)
    j_n = o_n // BX
    x_n = o_n % BX
    o_u = tl.arange(0, BX)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    m_o = o_o < O
    # skew along the source axis: G[n, kk] = A[n, kk + x - (BX-1)], zero outside the row; the
    # 2*BX columns in two halves (two accumulators), which keeps half a skewed tile live at a time
    o_lo = o_u[None, :] + x_n[:, None] - (BX - 1)  # [N_T, BX]: kk < BX, A column <= BX - 1
    m_lo = o_lo >= 0
    o_lo = tl.where(m_lo, o_lo, 0)
    o_hi = o_u[None, :] + x_n[:, None] + 1  # kk >= BX, A column >= 1
    m_hi = o_hi < BX
    o_hi = tl.where(m_hi, o_hi, 0)

    # offsets of the item at target row yt0, column block it: a vector part fixed per program
    # (each target row reads its own source row yt + ddy) plus a scalar per item
    off_a = tl.multiple_of(j_n * (stride_cy + Ws * stride_cs), ALIGN) + x_n * stride_cx  # [N_T]
    off_a = off_a[:, None] + tl.multiple_of(o_u * stride_cs, ALIGN)[None, :]  # [N_T, BX]
    off_g = (o_o * stride_go)[:, None] + (tl.multiple_of(j_n * stride_gy, ALIGN) + x_n * stride_gx)[None, :]
    acc_lo = tl.zeros((BLOCK_O, BX), dtype=ACC)
    acc_hi = tl.zeros((BLOCK_O, BX), dtype=ACC)
    for item in range(first, first + count):
        it = it_lo + item % n_it
        rest = item // n_it
        yt0 = yt_lo + (rest % n_yb) * RT
        b64 = (rest // n_yb).to(tl.int64)
        xt0 = it * BX
        xs0 = (it + k) * BX
        m_row = j_n < yt_hi - yt0  # [N_T], constant along each row of targets
        if CORR_PADDED:
            m_a = m_row
        else:
            m_a = m_row & (x_n < Wt - xt0)
        base_a = tl.multiple_of(yt0 * stride_cy + ((yt0 + ddy) * Ws + xs0) * stride_cs, ALIGN) + xt0 * stride_cx
        p_a = p_corr + tl.multiple_of(b64 * stride_cb, ALIGN) + base_a + off_a
        b_a = tl.load(p_a, mask=m_a[:, None] & (o_u < Ws - xs0)[None, :], other=0.0)  # [N_T, BX]
        base_g = tl.multiple_of(b64 * stride_gb + yt0 * stride_gy, ALIGN) + xt0 * stride_gx
        b_g = tl.load(p_grad + base_g + off_g, mask=m_o[:, None] & m_row[None, :], other=0.0)  # [BO, N_T]
        if UPCAST:
            b_g, b_a = b_g.to(tl.float32), b_a.to(tl.float32)
        b_s = tl.where(m_lo, tl.gather(b_a, o_lo, axis=1), 0.0).to(b_g.dtype)  # [N_T, BX]
        acc_lo = tl.dot(b_g, b_s, acc_lo, input_precision=INPUT_PRECISION, out_dtype=ACC)
        b_s = tl.where(m_hi, tl.gather(b_a, o_hi, axis=1), 0.0).to(b_g.dtype)
        acc_hi = tl.dot(b_g, b_s, acc_hi, input_precision=INPUT_PRECISION, out_dtype=ACC)

    p_p = p_partial + i_c.to(tl.int64) * stride_pc + (o_o * BJ)[:, None] + o_u[None, :]
    tl.store(p_p, acc_lo, mask=m_o[:, None])
    tl.store(p_p + BX, acc_hi, mask=m_o[:, None])


@triton.jit
def offset_weight_reduce_kernel(
    p_partial,
    p_group_chunks,
    p_dweight,
    O,
    Dh,
    Dw,
    Wt,
    n_xt,
    n_k,
    stride_pc,
    BLOCK_O: tl.constexpr,
    BX: tl.constexpr,
):  #
    """``dW[o, dy, :]`` (contiguous) of one offset row; grid ``(Dh, cdiv(O, BO))``. Window ``w`` of
    ``BX`` columns holds columns ``kk`` of diagonal ``w`` and ``kk - BX`` of diagonal ``w - 1``;
    each is the sum of its group's chunks (``group_chunks[g] .. group_chunks[g+1]``), in chunk
    order: deterministic."""
    BJ: tl.constexpr = 2 * BX
    dy, i_o = tl.program_id(0), tl.program_id(1)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_j = tl.arange(0, BX)
    m_o = o_o < O
    p_o = (o_o * BJ)[:, None] + o_j[None, :]  # [BO, BX]
    p_dw = p_dweight + (o_o.to(tl.int64) * (Dh * Dw))[:, None] + (dy * Dw - (n_xt * BX - Wt) + o_j)[None, :]
    c_first = tl.load(p_group_chunks + dy * n_k)
    for w in range(0, n_k + 1):
        acc = tl.zeros((BLOCK_O, BX), dtype=p_partial.dtype.element_ty)
        # chunks of diagonal w - 1 (columns BX..2BX of its window), then of diagonal w (0..BX)
        c_mid = tl.load(p_group_chunks + dy * n_k + tl.minimum(w, n_k))
        c_end = tl.load(p_group_chunks + dy * n_k + tl.minimum(w + 1, n_k))
        p = p_partial + c_first.to(tl.int64) * stride_pc + p_o + BX
        for _ in range(c_first, c_mid):
            acc += tl.load(p, mask=m_o[:, None])
            p += stride_pc
        p = p_partial + c_mid.to(tl.int64) * stride_pc + p_o
        for _ in range(c_mid, c_end):
            acc += tl.load(p, mask=m_o[:, None])
            p += stride_pc
        dx = w * BX + o_j - (n_xt * BX - Wt)
        m_dx = (dx >= 0) & (dx < Dw)
        tl.store(p_dw + w * BX, acc.to(p_dweight.dtype.element_ty), mask=m_o[:, None] & m_dx[None, :])
        c_first = c_mid


@autotune(BWD_BIAS_CONFIGS, key=["O", "T"])
@triton.jit
def offset_aware_correlation_bwd_bias_kernel(
    p_grad,
    p_dbias,
    O,
    T,
    stride_gb,
    stride_go,
    stride_gt,
    stride_dn,
    BLOCK_O: tl.constexpr,
    BLOCK_T: tl.constexpr,
):  #
    """``dbias[b, o] = sum_t g[b, o, t]`` for one batch element (partial sums over the batch);
    ``p_grad`` is ``(B, O, T)``."""
    i_o, i_b = tl.program_id(0), tl.program_id(1)
    o_o = i_o * BLOCK_O + tl.arange(0, BLOCK_O)
    m_o = o_o < O
    p_g = p_grad + i_b.to(tl.int64) * stride_gb + (o_o.to(tl.int64) * stride_go)[:, None]
    acc = tl.zeros((BLOCK_O, BLOCK_T), dtype=p_dbias.dtype.element_ty)  # [BO, BT]
    for t0 in range(0, T, BLOCK_T):
        o_t = t0 + tl.arange(0, BLOCK_T)
        p = p_g + (o_t * stride_gt)[None, :]
        acc += tl.load(p, mask=m_o[:, None] & (o_t < T)[None, :], other=0.0).to(acc.dtype)
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
# Tiles, schedules and operand layouts (functions of the shapes; perf/roofline_oac.py uses them)
# ---------------------------------------------------------------------------------------------


def column_block(width: int) -> int:
    """Column block ``BX`` of maps this wide: 16 for the paper's 15, at most :data:`MAX_BLOCK_X`."""
    return min(MAX_BLOCK_X, max(16, triton.next_power_of_2(width)))


def output_block(o: int, cap: int = MAX_BLOCK_O) -> int:
    """Output channels per program (``tl.dot`` needs >= 16)."""
    return min(cap, max(16, triton.next_power_of_2(o)))


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Tiles of one launch: column block ``bx``, source/target rows per tile ``rs``/``rt``, output
    channels per program ``block_o``."""

    bx: int
    rs: int
    rt: int
    block_o: int

    @property
    def targets(self) -> int:
        return self.rt * self.bx

    @property
    def sources(self) -> int:
        return self.rs * self.bx

    def kwargs(self) -> dict:
        return {"BX": self.bx, "RS": self.rs, "RT": self.rt, "BLOCK_O": self.block_o}


def oac_tiling(ws: int, wt: int, o: int) -> Tiling:
    """Tiles of the forward and ``dcorr`` kernels: :data:`TILE_POSITIONS` targets x as many sources."""
    bx = column_block(max(ws, wt))
    rows = max(1, TILE_POSITIONS // bx)
    return Tiling(bx, rows, rows, output_block(o))


def weight_tiling(ws: int, wt: int, o: int, dtype: torch.dtype, padded: bool = True) -> Tiling:
    """Tiles of the ``dW`` kernel: items of ``rt`` target rows. On zero-padded rows (unmasked
    vector loads) :data:`TILE_POSITIONS` targets, 128 for 16-bit 16-column blocks (so every thread
    loads 16 bytes of the ``[targets, BX]`` tile); on other correlations (masked, narrower loads
    that hold more registers) column blocks of at most 32 and 64 targets in 16 bits, 32 in fp32."""
    bx = column_block(max(ws, wt))
    if padded:
        targets = 2 * TILE_POSITIONS if bx == 16 and dtype.itemsize == 2 else TILE_POSITIONS
    else:
        bx = min(bx, 32)
        targets = TILE_POSITIONS if dtype.itemsize == 2 else TILE_POSITIONS // 2
    return Tiling(bx, 1, max(1, targets // bx), output_block(o))


def padded_weight(weight: torch.Tensor, sizes: tuple, tiling: Tiling, channels_last: bool = False) -> torch.Tensor:
    """The weight the forward and ``dcorr`` kernels read, zero-padded so that every slice they take
    is in range, unmasked and 16-element aligned.

    ``(Dh + RT + RS - 2, O_pad, Wp)`` (columns contiguous; ``channels_last``: ``(Dh_pad, Wp, O_pad)``,
    channels contiguous), ``O_pad`` a multiple of ``block_o``, ``Wp = (n_xs + n_xt) * BX``; row
    ``dy + RT - 1``, column ``dx + n_xt*BX - Wt`` hold ``weight[:, dy, dx]``. A tile's columns are
    contiguous along the product's K dimension (tf32 ``wgmma`` takes K-major operands only).
    """
    hs, ws, ht, wt = sizes
    o, dh, dw = weight.shape
    bx = tiling.bx
    n_xs, n_xt = triton.cdiv(ws, bx), triton.cdiv(wt, bx)
    o_pad = triton.cdiv(o, tiling.block_o) * tiling.block_o
    rows, cols = dh + tiling.rt + tiling.rs - 2, (n_xs + n_xt) * bx
    check_index_range("weight", rows * o_pad * cols)
    top, left = tiling.rt - 1, n_xt * bx - wt
    if channels_last:
        wpad = weight.new_zeros(rows, cols, o_pad)
        wpad[top : top + dh, left : left + dw, :o] = weight.permute(1, 2, 0)
    else:
        wpad = weight.new_zeros(rows, o_pad, cols)
        wpad[top : top + dh, :o, left : left + dw] = weight.permute(1, 0, 2)
    return wpad


def check_index_range(name: str, numel: int) -> None:
    """Refuse a buffer the kernels address with 32-bit offsets that has 2^31 elements or more."""
    if numel >= INT32_LIMIT:
        raise ValueError(f"{name}: expected fewer than 2^31 elements for the Triton kernels, got {numel}")


def needs_int64(x: torch.Tensor, batch_dim: int = 0) -> bool:
    """Whether an offset inside one batch element of ``x`` (every dim but ``batch_dim``) can reach
    2^31: then the kernels do that index math in 64 bits (``IDX64``)."""
    extent = sum((n - 1) * abs(s) for i, (n, s) in enumerate(zip(x.shape, x.stride(), strict=True)) if i != batch_dim)
    return extent >= IDX64_THRESHOLD


def vector_width(x: torch.Tensor, unit_dim: int = -1) -> int:
    """Largest power of two ``v`` (at most 16 bytes of elements) dividing every stride of ``x``
    except ``unit_dim``'s: the ``ALIGN`` hint under which row starts load as ``v``-wide vectors.
    Strides of size-1 dims never move a pointer and do not count."""
    unit_dim %= x.dim()
    v = max(1, 16 // x.element_size())
    for i, (n, s) in enumerate(zip(x.shape, x.stride(), strict=True)):
        if i != unit_dim and n > 1:
            while s % v:
                v //= 2
    return v


@dataclasses.dataclass(frozen=True)
class WeightSchedule:
    """The work of a ``dW`` kernel: ``groups = Dh * n_k`` (offset row, diagonal) groups of items,
    cut into chunks of at most ``chunk_items`` items, one program per chunk.

    ``chunks`` ``(n_chunks, 3)`` int32: group, first item, item count; ``group_chunks``
    ``(groups + 1,)`` int32: the chunks of group ``g`` are ``group_chunks[g] .. group_chunks[g+1]``.
    ``max_over_mean``: the longest chunk over the mean (work per item is the same for all items).
    """

    chunks: torch.Tensor
    group_chunks: torch.Tensor
    n_k: int
    items: int
    chunk_items: int
    max_over_mean: float

    @property
    def n_chunks(self) -> int:
        return int(self.chunks.shape[0])

    def on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chunks, group_chunks)`` on ``device``, copied once per device (a copy from the host
        inside a CUDA-graph capture would fail; the first call happens before)."""
        return _on_device(self.chunks, device), _on_device(self.group_chunks, device)


@functools.lru_cache(maxsize=256)
def _on_device(tensor: torch.Tensor, device) -> torch.Tensor:
    return tensor.to(device)


def group_items(b: int, sizes: tuple, bx: int, rt: int) -> torch.Tensor:
    """Items per (offset row ``dy``, diagonal) group, ``(Dh, n_k)``: ``b`` x blocks of ``rt``
    target rows that see row ``dy`` x column-block pairs on the diagonal."""
    hs, ws, ht, wt = sizes
    n_xs, n_xt = triton.cdiv(ws, bx), triton.cdiv(wt, bx)
    ddy = torch.arange(hs + ht - 1) - (ht - 1)
    rows = torch.minimum(hs - ddy, torch.tensor(ht)) - torch.clamp(-ddy, min=0)
    k = torch.arange(n_xs + n_xt - 1) - (n_xt - 1)
    pairs = torch.minimum(n_xs - k, torch.tensor(n_xt)) - torch.clamp(-k, min=0)
    return b * ((rows + rt - 1) // rt)[:, None] * pairs[None, :]


def weight_schedule(b: int, sizes: tuple, bx: int, rt: int, target_programs: int | None = None) -> WeightSchedule:
    """Chunks of the ``dW`` items (CPU tensors; a function of the shapes only, so is the summation
    order). The chunk length starts at ``cdiv(items, target_programs)`` (default
    :data:`WEIGHT_TARGET_PROGRAMS`) and shrinks while the longest chunk is above
    :data:`WEIGHT_MAX_OVER_MEAN` times the mean."""
    return _weight_schedule(b, tuple(sizes), bx, rt, target_programs or WEIGHT_TARGET_PROGRAMS)


@functools.lru_cache(maxsize=64)
def _weight_schedule(b: int, sizes: tuple, bx: int, rt: int, target_programs: int) -> WeightSchedule:
    per_group = group_items(b, sizes, bx, rt).flatten()
    items = int(per_group.sum())
    length = max(1, triton.cdiv(items, target_programs))
    while True:
        n_chunks = (per_group + length - 1) // length
        ratio = length * int(n_chunks.sum()) / max(1, items)
        if ratio <= WEIGHT_MAX_OVER_MEAN or length == 1:
            break
        length = max(1, int(length / ratio * WEIGHT_MAX_OVER_MEAN))
    group_chunks = torch.zeros(len(per_group) + 1, dtype=torch.int64)
    group_chunks[1:] = torch.cumsum(n_chunks, 0)
    group = torch.repeat_interleave(torch.arange(len(per_group)), n_chunks)
    first = (torch.arange(len(group)) - group_chunks[group]) * length
    count = torch.minimum(per_group[group] - first, torch.tensor(length))
    chunks = torch.stack([group, first, count], 1).to(torch.int32)
    longest = int(count.max()) if len(count) else 0
    mean = items / max(1, len(count))
    return WeightSchedule(
        chunks=chunks,
        group_chunks=group_chunks.to(torch.int32),
        n_k=per_group.numel() // (sizes[0] + sizes[2] - 1),
        items=items,
        chunk_items=length,
        max_over_mean=longest / mean if mean else 1.0,
    )


def padded_target_rows(x: torch.Tensor, width: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` ``(B, ..., Ht, Wt)`` copied into zero-filled ``(B, ..., Ht, width)`` storage (``width >= Wt``,
    a multiple of 16): rows 16-byte aligned, and a ``[.., BX]`` tile of a row read without a mask
    finds zeros past ``Wt``. ``scale`` ``(B, Ht*Wt)`` (accumulation dtype) or None: multiplies each
    target first (rounded once to ``x``'s dtype). ``dW`` kernels read their gradient (and the
    fused one its per-target scales) this way (a copy of ``B*O*T`` elements)."""
    out = x.new_zeros(*x.shape[:-1], width)
    if scale is not None:
        b, ht, wt = x.shape[0], x.shape[-2], x.shape[-1]
        x = x * scale.view(b, *[1] * (x.dim() - 3), ht, wt)
    out[..., : x.shape[-1]] = x
    return out


def channels_last_grad(grad: torch.Tensor, o_pad: int) -> torch.Tensor:
    """``grad`` ``(B, O, Ht, Wt)`` as ``(B, T, O_pad)``, channels contiguous and zero-padded: the
    K-major operand of the ``dcorr`` products (a copy of ``B*O*T`` elements)."""
    b, o, ht, wt = grad.shape
    out = grad.new_zeros(b, ht * wt, o_pad)
    out[:, :, :o] = grad.reshape(b, o, ht * wt).transpose(1, 2)
    return out


# ---------------------------------------------------------------------------------------------
# Launchers (tensor in, tensor out)
# ---------------------------------------------------------------------------------------------


def _upcast(dtype: torch.dtype) -> bool:
    """The interpreter has no bf16 arithmetic: its dots run on fp32 copies (exact for bf16 inputs)."""
    return INTERPRET and dtype == torch.bfloat16


def _precision(dtype: torch.dtype, input_precision: str) -> str:
    """``input_precision`` for fp32 operands; 16/64-bit dots take "ieee"."""
    return input_precision if dtype == torch.float32 else "ieee"


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
    """OAC forward: corr ``(B, Hs*Ws, Ht, Wt)`` (any strides), weight ``(O, Hs+Ht-1, Ws+Wt-1)``,
    bias ``(O,)`` or None -> ``(B, O, Ht, Wt)`` in corr's dtype. Arguments are assumed validated.
    Correlation rows load as 16-byte vectors when ``Wt`` and ``Ht*Wt`` elements are multiples of
    16 bytes; narrower otherwise (no copy is made to align them)."""
    hs, ws = source_size
    b, _, ht, wt = corr.shape
    o = weight.shape[0]
    out = empty(b, o, ht, wt, dtype=corr.dtype, device=corr.device)
    if out.numel() == 0:
        return out
    tiling = oac_tiling(ws, wt, o)
    wpad = padded_weight(weight, (hs, ws, ht, wt), tiling)
    n_tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, tiling.bx)
    launch(
        offset_aware_correlation_fwd_kernel,
        lambda meta: (b * n_tiles, triton.cdiv(o, tiling.block_o)),
        name="offset_aware_correlation_fwd",
        device=corr.device,
        sizes=_sizes(corr, o),
        p_corr=corr,
        p_wpad=wpad,
        p_bias=weight if bias is None else bias,
        p_out=out,
        B=b,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        **strides("c", corr, "bsyx"),
        stride_wy=wpad.stride(0),
        stride_wo=wpad.stride(1),
        stride_bias=0 if bias is None else bias.stride(0),
        **strides("o", out, "boyx"),
        HAS_BIAS=bias is not None,
        UPCAST=_upcast(corr.dtype),
        INPUT_PRECISION=_precision(corr.dtype, input_precision),
        ALIGN=vector_width(corr),
        IDX64=needs_int64(corr),
        **tiling.kwargs(),
    )  #
    return out


def offset_aware_correlation_bwd_corr(
    grad_out: torch.Tensor, weight: torch.Tensor, source_size: tuple[int, int], input_precision: str = "tf32"
) -> torch.Tensor:
    """Gradient of the OAC w.r.t. corr: grad_out ``(B, O, Ht, Wt)`` -> ``(B, Hs*Ws, Ht, Wt)``
    (contiguous). The gradient is copied channels-last first (``B*O*T`` elements)."""
    hs, ws = source_size
    b, o, ht, wt = grad_out.shape
    dcorr = empty(b, hs * ws, ht, wt, dtype=grad_out.dtype, device=grad_out.device)
    if dcorr.numel() == 0:
        return dcorr
    tiling = oac_tiling(ws, wt, o)
    wpad = padded_weight(weight, (hs, ws, ht, wt), tiling, channels_last=True)
    g = channels_last_grad(grad_out, wpad.shape[2])
    n_tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, tiling.bx)
    launch(
        offset_aware_correlation_bwd_corr_kernel,
        lambda meta: (b * n_tiles,),
        name="offset_aware_correlation_bwd_corr",
        device=grad_out.device,
        sizes=_sizes(dcorr, o),
        p_grad=g,
        p_wpad=wpad,
        p_dcorr=dcorr,
        B=b,
        O_pad=wpad.shape[2],
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        stride_gb=g.stride(0),
        stride_gt=g.stride(1),
        stride_wy=wpad.stride(0),
        stride_wx=wpad.stride(1),
        **strides("c", dcorr, "bsyx"),
        UPCAST=_upcast(grad_out.dtype),
        INPUT_PRECISION=_precision(grad_out.dtype, input_precision),
        ALIGN=vector_width(dcorr),
        IDX64=needs_int64(dcorr) or needs_int64(g),
        **tiling.kwargs(),
    )  #
    return dcorr


def reduce_weight_partials(
    partial: torch.Tensor, schedule: WeightSchedule, o: int, sizes: tuple, bx: int, dtype: torch.dtype
) -> torch.Tensor:
    """``dW`` ``(O, Dh, Dw)`` in ``dtype`` from the ``(n_chunks, O, 2*BX)`` partial sums of a
    :class:`WeightSchedule` (fixed order: deterministic)."""
    hs, ws, ht, wt = sizes
    dh, dw = hs + ht - 1, ws + wt - 1
    dweight = empty(o, dh, dw, dtype=dtype, device=partial.device)
    block_o = output_block(o, WEIGHT_REDUCE_BLOCK_O)
    offset_weight_reduce_kernel[(dh, triton.cdiv(o, block_o))](
        p_partial=partial,
        p_group_chunks=schedule.on(partial.device)[1],
        p_dweight=dweight,
        O=o,
        Dh=dh,
        Dw=dw,
        Wt=wt,
        n_xt=triton.cdiv(wt, bx),
        n_k=schedule.n_k,
        stride_pc=partial.stride(0),
        BLOCK_O=block_o,
        BX=bx,
        num_warps=WEIGHT_REDUCE_WARPS,
    )  #
    return dweight


def offset_aware_correlation_bwd_weight(
    grad_out: torch.Tensor,
    corr: torch.Tensor,
    source_size: tuple[int, int],
    input_precision: str = "tf32",
    target_scale: torch.Tensor | None = None,
    corr_padded: bool = False,
) -> torch.Tensor:
    """Gradient of the OAC w.r.t. weight: ``(O, Hs+Ht-1, Ws+Wt-1)`` in corr's dtype, deterministic.

    ``target_scale`` ``(B, Ht*Wt)`` (accumulation dtype) or None: multiplies ``grad_out`` per target
    first (the fused op's saved correlation has no match normalisation; this applies it). ``corr_padded``:
    ``corr`` is a ``[..., :Wt]`` view of rows zero-padded to ``cdiv(Wt, BX) * BX`` columns
    (:func:`weight_tiling`'s ``BX``; the fused op's saved correlation), read without a column mask.
    ``grad_out`` is copied into zero-padded rows (``B*O*T`` elements)."""
    hs, ws = source_size
    b, o, ht, wt = grad_out.shape
    sizes = (hs, ws, ht, wt)
    if b == 0:
        return corr.new_zeros(o, hs + ht - 1, ws + wt - 1)
    tiling = weight_tiling(ws, wt, o, corr.dtype, corr_padded)
    schedule = weight_schedule(b, sizes, tiling.bx, tiling.rt)
    partial = empty(schedule.n_chunks, o, 2 * tiling.bx, dtype=accumulation_dtype(corr.dtype), device=corr.device)
    grad = padded_target_rows(grad_out, triton.cdiv(wt, tiling.bx) * tiling.bx, target_scale)
    launch(
        offset_aware_correlation_bwd_weight_kernel,
        lambda meta: (schedule.n_chunks, triton.cdiv(o, tiling.block_o)),
        name="offset_aware_correlation_bwd_weight",
        device=corr.device,
        sizes=_sizes(corr, o),
        p_grad=grad,
        p_corr=corr,
        p_sched=schedule.on(corr.device)[0],
        p_partial=partial,
        O=o,
        Hs=hs,
        Ws=ws,
        Ht=ht,
        Wt=wt,
        **strides("g", grad, "boyx"),
        **strides("c", corr, "bsyx"),
        stride_pc=partial.stride(0),
        CORR_PADDED=corr_padded,
        UPCAST=_upcast(corr.dtype),
        INPUT_PRECISION=_precision(corr.dtype, input_precision),
        ALIGN=min(vector_width(corr), vector_width(grad)),
        IDX64=needs_int64(corr) or needs_int64(grad),
        BLOCK_O=tiling.block_o,
        BX=tiling.bx,
        RT=tiling.rt,
    )  #
    return reduce_weight_partials(partial, schedule, o, sizes, tiling.bx, corr.dtype)


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


def offset_aware_correlation_bwd_bias(grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient of the OAC w.r.t. bias: ``(O,)``, the sum of grad_out over batch and targets."""
    b, o, ht, wt = grad_out.shape
    dbias = empty(o, dtype=grad_out.dtype, device=grad_out.device)
    if b == 0:
        return dbias.zero_()
    grad = grad_out.reshape(b, o, ht * wt)  # a view unless the target dims do not flatten
    partial = empty(b, o, dtype=accumulation_dtype(grad_out.dtype), device=grad_out.device)
    launch(
        offset_aware_correlation_bwd_bias_kernel,
        lambda meta: (triton.cdiv(o, meta["BLOCK_O"]), b),
        name="offset_aware_correlation_bwd_bias",
        device=grad_out.device,
        sizes={"B": b, "O": o, "T": ht * wt, "dtype": dtype_name(grad_out.dtype)},
        p_grad=grad,
        p_dbias=partial,
        O=o,
        T=ht * wt,
        **strides("g", grad, "bot"),
        stride_dn=partial.stride(0),
    )  #
    _reduce_partials(partial, dbias)
    return dbias
