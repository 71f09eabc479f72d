"""Triton kernels of the 4D correlation (docs/design.md §3.1), forward and backward.

``out[b, s, t] = N_t(relu(a[b, s] * b[b, t] * <src[b, :, s], tgt[b, :, t]>))`` where ``a``/``b``
are the inverse channel norms of the two feature maps (``1/sqrt(sum_c f^2 + eps)``, or 1 without
feature normalisation) and ``N_t`` the L2 normalisation over ``s`` for each ``t`` (optional, as
is the ReLU).

Layouts (docs/design.md §9). Every GEMM here reads both operands as rows whose reduction index is
contiguous (K-major): the only layout Hopper's tf32 ``wgmma`` takes, and the one whose rows load
with 16-byte ``cp.async`` when they are 16-byte aligned. The forward reduces over channels, so it
reads the feature maps channels-last; the backward reduces over positions, so it reads
position-contiguous copies padded to :data:`POS_PAD` (an NCHW row of a 15x15 map is 900 bytes,
never aligned).

Forward:

* :func:`correlation_fwd_prep_kernel`, one pass over a feature map: the inverse norms ``(B, N)``
  and, when the map is not channels-last already, its channels-last copy ``(B, N, C)`` (the copy
  the launcher makes for any other strides; a channels-last input is read in place).
* :func:`correlation_fwd_kernel`, the batched GEMM ``(S x C) @ (C x T)`` with the scales, the ReLU
  and the match normalisation in its epilogue; ``[BLOCK_S, BLOCK_T]`` tiles, sources as the M
  dimension. When a column of sources fits one block (S <= :data:`MAX_FUSED_S`, the paper's
  15x15) the column norm is complete in the tile (``MATCH="tile"``) and the output is written
  once, final. Above that the column norm needs every ``s``-block, and the launcher picks one of
  two designs per call (:func:`recompute_matches`):

  - rescale (``MATCH="scaled"``, then :func:`correlation_normalize_matches_kernel`): one GEMM pass
    stores each tile over its own partial column norm (bounded by 1, so 16-bit outputs cannot
    overflow even without feature normalisation) and the column sums of squares per
    ``(s-block, t)``; a second, memory-bound pass re-reads and re-writes the output once,
    rescaled by ``sqrt(partial) / n_t``: ``2 B S T e`` extra bytes;
  - recompute (``MATCH="partials"``, then ``MATCH="final"``): the first GEMM pass stores only the
    column sums of squares, the second recomputes the tile and stores ``r / n_t``, the output
    written once: ``2 B S T C`` extra FLOPs.

  Recomputation wins below ``C = peak FLOP/s * e / HBM bytes/s`` (about 590 channels on H100 in
  tf32 and bf16): at the paper's C=1024 the rescale. Either way the partials of a column are summed
  in block order by every program that needs them (deterministic, no atomics).

Backward (``g`` the incoming gradient, ``n_t`` the column norm, ``r = relu(c)``):

* :func:`correlation_bwd_prep_kernel`, one program per ``t``-block looping over ``s``:
  ``dc = (g - out * <g, out>_s) / n_t``, masked by ``out > 0`` with ReLU, written as ``dc``
  ``(B, S, T_pad)`` for the source gradient and as its transpose ``(B, T, S_pad)`` for the target
  gradient (each the K-major operand of its GEMM), zero-padded. With feature normalisation it also
  produces the row/column dots ``sum_t dc*r`` and ``sum_s dc*r``, which equal
  ``<d f_hat, f_hat>_c`` of the feature-norm backward (``<fs_hat_s, ft_hat_t> = c[s, t]``), so the
  GEMM epilogue needs no reduction over C.
* :func:`correlation_bwd_operand_kernel`: the other map, normalised (``x * x_scale``: bounded by
  1, safe in 16 bits) and position-contiguous ``(B, C, K_pad)``.
* :func:`correlation_bwd_features_kernel`, one GEMM per input ``y``:
  ``dy[n, c] = v_n * (sum_k e[n, k] x_hat[c, k] - y[n, c] v_n dot_n)`` (``n = s, k = t`` for the
  source, the other way round for the target).

Offsets: the batch offsets and the offset of each tile's first row (``s0 * T`` passes 2^31 from
about 216x216 maps on) are 64-bit scalars (:func:`a2net.kernels._common.block_offset`); offsets
inside a tile stay 32-bit (a 64-bit offset tensor costs two registers an element). The grids put
the batch in their last dimension (at most 65535, checked by the op).

Saved for the backward: the output, the inverse feature norms (B, S), (B, T) and the inverse
match norms (B, T); nothing of size S*T beyond the output itself. The ReLU mask is ``out > 0``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2net.kernels._common import block_offset, dot_nt_tile, dot_options, dtype_name, strides
from a2net.kernels._memory import accumulation_dtype, empty
from a2net.kernels._tuning import autotune, launch

#: Largest source size whose column norm is complete in one GEMM tile (one ``s``-block).
MAX_FUSED_S = 256
#: ``s``-block of the GEMM when the source dimension is split (two passes over the tiles).
SPLIT_BLOCK_S = 128
#: Every forward config's ``BLOCK_C`` divides this: ``C % MAX_BLOCK_C == 0`` drops the channel mask.
MAX_BLOCK_C = 64
#: Position rows of the backward operands are padded to a multiple of this (>= every ``BLOCK_K``),
#: which keeps them 16-byte aligned and the GEMM's K loop unmasked.
POS_PAD = 64
#: Largest dynamic shared memory a config may ask for (sm_80's; sm_90 has 232448).
SHARED_LIMIT = 166912
#: The split match normalisation's cost model (:func:`recompute_matches`): dense peaks of an H100
#: SXM by the dots' operand kind (``"fp32"``: CUDA cores, the ieee dots) and its HBM bandwidth.
PEAK_FLOPS = {"tf32": 495e12, "tf32x3": 165e12, "bf16": 990e12, "fp16": 990e12, "fp32": 67e12, "fp64": 67e12}
HBM_BYTES_PER_S = 3.35e12
#: fp32 accumulator elements per thread: the default config holds at most ``MAX_ACC_DEFAULT`` (it
#: never spills); larger tiles, up to ``MAX_ACC_SEARCH``, are candidates of the search only (which
#: compiles them and drops those that spill).
MAX_ACC_DEFAULT, MAX_ACC_SEARCH = 64, 128

# The GEMMs' first config is the default (interpreter, kernel report, deterministic mode). 8 warps
# are two warpgroups: every tile has >= 64 rows per warpgroup, so every tl.dot is a wgmma on sm_90.
FWD_CONFIGS = [
    triton.Config({"BLOCK_T": 128, "BLOCK_C": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_T": 64, "BLOCK_C": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_T": 128, "BLOCK_C": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_T": 64, "BLOCK_C": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_T": 128, "BLOCK_C": 32}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_T": 64, "BLOCK_C": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_T": 256, "BLOCK_C": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_T": 256, "BLOCK_C": 64}, num_warps=8, num_stages=3),
]
BWD_CONFIGS = [
    triton.Config({"BLOCK_N": 128, "BLOCK_C": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_N": 64, "BLOCK_C": 128, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 128, "BLOCK_C": 128, "BLOCK_K": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_N": 128, "BLOCK_C": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_N": 128, "BLOCK_C": 128, "BLOCK_K": 32}, num_warps=8, num_stages=4),
]
assert all(MAX_BLOCK_C % c.kwargs["BLOCK_C"] == 0 for c in FWD_CONFIGS)
assert all(POS_PAD % c.kwargs["BLOCK_K"] == 0 for c in BWD_CONFIGS)

# Memory-bound kernels: fixed blocks (the prep blocks divide POS_PAD, so their grids cover the padding).
NORM_BLOCK_N, NORM_BLOCK_C, NORM_WARPS = 64, 32, 4
PREP_BLOCK_S, PREP_BLOCK_T, PREP_WARPS = 32, 64, 8
# The rescale pass rewrites the output in place: never tuned (a benchmark run would rescale again).
RESCALE_BLOCK_S, RESCALE_BLOCK_T, RESCALE_WARPS = 64, 32, 4
OPERAND_BLOCK_R, OPERAND_BLOCK_K, OPERAND_WARPS = 32, 64, 4


def _prune(configs, tiles, elem: int) -> list:
    """``configs`` whose pipelined operand tiles fit in shared memory and whose accumulator fits the
    search's limit, those within the default's limit first (the first of them is the default);
    ``tiles(cfg) -> (BLOCK_M, BLOCK_N, BLOCK_K)``."""
    kept, large = [], []
    for cfg in configs:
        block_m, block_n, block_k = tiles(cfg)
        threads = 32 * cfg.num_warps
        if cfg.num_stages * (block_m + block_n) * block_k * elem > SHARED_LIMIT:
            continue
        if block_m * block_n <= MAX_ACC_DEFAULT * threads:
            kept.append(cfg)
        elif block_m * block_n <= MAX_ACC_SEARCH * threads:
            large.append(cfg)
    return kept + large or configs[:1]


def _elem(args: dict, name: str) -> int:
    x = args.get(name)
    return x.element_size() if isinstance(x, torch.Tensor) else 4


def prune_fwd_configs(configs, named_args, **kwargs):
    """The configs that fit at the launcher's ``BLOCK_S`` (:func:`_prune`; the 256-row tile of the
    fused column norm leaves fewer)."""
    block_s = kwargs["BLOCK_S"]
    return _prune(configs, lambda c: (block_s, c.kwargs["BLOCK_T"], c.kwargs["BLOCK_C"]), _elem(kwargs, "p_src"))


def prune_bwd_configs(configs, named_args, **kwargs):
    """The configs that fit (:func:`_prune`)."""
    return _prune(
        configs, lambda c: (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_C"], c.kwargs["BLOCK_K"]), _elem(kwargs, "p_e")
    )


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def correlation_fwd_prep_kernel(
    p_x,
    p_inv,
    p_rows,
    N,
    C,
    stride_xb,
    stride_xc,
    stride_xn,
    eps,
    NORM: tl.constexpr,
    COPY: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    FP64: tl.constexpr,
):
    """One pass over a feature map ``x`` (B, C, N), any strides; grid ``(cdiv(N, BN), B)``.

    ``NORM``: ``inv[b, n] = 1 / sqrt(sum_c x[b, c, n]^2 + eps)``. ``COPY``: ``rows[b, n, c] =
    x[b, c, n]``, the channels-last copy (B, N, C).
    """
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    i_b64 = i_b.to(tl.int64)
    r_n = tl.arange(0, BLOCK_N)
    o_n = i_n * BLOCK_N + r_n
    o_c = tl.arange(0, BLOCK_C)
    m_n = o_n < N
    p_xt = p_x + i_b64 * stride_xb + block_offset(i_n, BLOCK_N, stride_xn)
    p_xt += r_n[:, None] * stride_xn + o_c[None, :] * stride_xc  # [BN, BC]
    p_r = p_rows + i_b64 * N * C + block_offset(i_n, BLOCK_N, C) + (r_n[:, None] * C + o_c[None, :])  # [BN, BC]
    b_ss = tl.zeros((BLOCK_N,), dtype=tl.float64 if FP64 else tl.float32)
    for c0 in range(0, C, BLOCK_C):
        m_x = m_n[:, None] & ((c0 + o_c) < C)[None, :]
        b_x = tl.load(p_xt, mask=m_x, other=0.0)  # [BN, BC]
        if COPY:
            tl.store(p_r, b_x, mask=m_x)
        if NORM:
            b_xf = b_x.to(b_ss.dtype)
            b_ss += tl.sum(b_xf * b_xf, axis=1)
        p_xt += BLOCK_C * stride_xc
        p_r += BLOCK_C
    if NORM:
        tl.store(p_inv + i_b64 * N + o_n, 1.0 / tl.sqrt(b_ss + eps), mask=m_n)


@autotune(FWD_CONFIGS, key=["S", "T", "C"], prune_configs_by={"early_config_prune": prune_fwd_configs})
@triton.jit
def correlation_fwd_kernel(
    p_src,
    p_tgt,
    p_inv_src,
    p_inv_tgt,
    p_out,
    p_sumsq,
    p_inv_match,
    S,
    T,
    C,
    stride_sb,
    stride_ss,
    stride_tb,
    stride_tt,
    eps,
    NORM_FEAT: tl.constexpr,
    RELU: tl.constexpr,
    MATCH: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP64: tl.constexpr,
):
    """One ``[BLOCK_S, BLOCK_T]`` correlation tile; grid ``(cdiv(T, BT), cdiv(S, BS), B)``:
    consecutive programs share their source rows and sweep the targets, so the target map (15 MB
    for a 60x60 fp32 map with C=1024) stays in L2 and every feature row is read from memory once.

    ``src`` (B, S, C) and ``tgt`` (B, T, C) have unit channel stride. ``MATCH``: ``"none"``;
    ``"tile"`` (the whole column in the tile: writes ``out`` and ``inv_match`` (B, T));
    ``"partials"`` (writes only ``sumsq`` (B, cdiv(S, BS), T), the column sums of squares of each
    ``s``-block); ``"final"`` (reads them, writes ``out`` and, from the first ``s``-block,
    ``inv_match``); ``"scaled"`` (writes ``sumsq`` and ``out`` over each tile's own partial column
    norm, which :func:`correlation_normalize_matches_kernel` then rescales).
    """
    i_t, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    i_b64 = i_b.to(tl.int64)
    r_s = tl.arange(0, BLOCK_S)
    r_t = tl.arange(0, BLOCK_T)
    o_s = i_s * BLOCK_S + r_s
    o_t = i_t * BLOCK_T + r_t
    o_c = tl.arange(0, BLOCK_C)
    m_s = o_s < S
    m_t = o_t < T
    p_ss = p_sumsq + i_b64 * tl.num_programs(1) * T + o_t  # [BT], row i_s
    # Every scale is positive, so it commutes with the ReLU: the columns' scales (the target norms
    # and, in the final pass, the match norms) are one [BT] vector, made before the GEMM so that
    # only it stays live through the main loop.
    b_col = tl.full((BLOCK_T,), 1.0, ACC)
    if NORM_FEAT:
        b_col = tl.load(p_inv_tgt + i_b64 * T + o_t, mask=m_t, other=0.0)  # [BT]
    if MATCH == "final":
        b_total = tl.zeros((BLOCK_T,), dtype=ACC)
        for i in range(0, tl.num_programs(1)):
            b_total += tl.load(p_ss + i * T, mask=m_t, other=0.0)
        b_inv = 1.0 / tl.sqrt(b_total + eps)
        if i_s == 0:
            tl.store(p_inv_match + i_b64 * T + o_t, b_inv, mask=m_t)
        b_col = b_col * b_inv
    p_a = p_src + i_b64 * stride_sb + block_offset(i_s, BLOCK_S, stride_ss) + (r_s[:, None] * stride_ss + o_c[None, :])
    p_b = p_tgt + i_b64 * stride_tb + block_offset(i_t, BLOCK_T, stride_tt) + (r_t[:, None] * stride_tt + o_c[None, :])
    acc = dot_nt_tile(
        p_a, p_b, m_s, m_t, C, BLOCK_S, BLOCK_T, BLOCK_C, EVEN_C, INPUT_PRECISION, DOT_FP32, ACC
    )  # [BS, BT]
    if NORM_FEAT:
        acc = acc * tl.load(p_inv_src + i_b64 * S + o_s, mask=m_s, other=0.0)[:, None]
    if NORM_FEAT or MATCH == "final":
        acc = acc * b_col[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if MATCH == "tile":
        b_inv = 1.0 / tl.sqrt(tl.sum(acc * acc, axis=0) + eps)  # padded rows are 0
        tl.store(p_inv_match + i_b64 * T + o_t, b_inv, mask=m_t)
        acc = acc * b_inv[None, :]
    if MATCH == "partials":
        tl.store(p_ss + i_s * T, tl.sum(acc * acc, axis=0), mask=m_t)
    if MATCH == "scaled":
        b_ss = tl.sum(acc * acc, axis=0)  # [BT]
        tl.store(p_ss + i_s * T, b_ss, mask=m_t)
        # over the tile's own partial norm: |value| <= 1 whatever the input scale (0 where all are 0)
        acc = acc * tl.where(b_ss > 0.0, 1.0 / tl.sqrt(tl.maximum(b_ss, 1e-30)), 0.0)[None, :]
    if MATCH != "partials":
        p_o = p_out + i_b64 * S * T + block_offset(i_s, BLOCK_S, T) + (r_s[:, None] * T + o_t[None, :])  # [BS, BT]
        tl.store(p_o, acc.to(p_out.dtype.element_ty), mask=m_s[:, None] & m_t[None, :])


@triton.jit
def correlation_normalize_matches_kernel(
    p_out,
    p_sumsq,
    p_inv_match,
    S,
    T,
    block_s,
    n_sblocks,
    eps,
    BLOCK_S: tl.constexpr,
    BLOCK_T: tl.constexpr,
    FP64: tl.constexpr,
):
    """The rescale pass of the split match normalisation, in place on ``out`` (B, S, T) as
    ``MATCH="scaled"`` left it; grid ``(cdiv(T, BT), B)``, each program one column block over all
    ``s``. ``BLOCK_S`` divides the GEMM's ``s``-block ``block_s``, so a step lies in one block.

    ``out = v * sqrt(sumsq[s-block]) / sqrt(sum_blocks sumsq + eps)``, ``inv_match`` (B, T) =
    ``1 / sqrt(sum_blocks sumsq + eps)``; the partials of ``sumsq`` (B, n_sblocks, T) are summed in
    block order (deterministic).
    """
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    i_b64 = i_b.to(tl.int64)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    r_s = tl.arange(0, BLOCK_S)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < T
    p_ss = p_sumsq + i_b64 * n_sblocks * T + o_t  # [BT], block 0
    b_total = tl.zeros((BLOCK_T,), dtype=ACC)
    for i in range(0, n_sblocks):
        b_total += tl.load(p_ss + i * T, mask=m_t, other=0.0)
    b_inv = 1.0 / tl.sqrt(b_total + eps)  # [BT]
    tl.store(p_inv_match + i_b64 * T + o_t, b_inv, mask=m_t)
    # rows s0.. of the step: the pointers move (64-bit), s0 * T passes 2^31 from about 216x216 maps on
    p_o = p_out + i_b64 * S * T + (r_s[:, None] * T + o_t[None, :])  # [BS, BT]
    for s0 in range(0, S, BLOCK_S):
        b_scale = tl.sqrt(tl.load(p_ss + (s0 // block_s) * T, mask=m_t, other=0.0)) * b_inv  # [BT]
        m_o = ((s0 + r_s) < S)[:, None] & m_t[None, :]
        b_o = tl.load(p_o, mask=m_o, other=0.0).to(ACC)
        tl.store(p_o, (b_o * b_scale[None, :]).to(p_out.dtype.element_ty), mask=m_o)
        p_o += BLOCK_S * T


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def correlation_bwd_prep_kernel(
    p_grad,
    p_out,
    p_inv_match,
    p_dc,
    p_dct,
    p_dot_src,
    p_dot_tgt,
    S,
    T,
    S_pad,
    T_pad,
    stride_gb,
    stride_gs,
    stride_gt,
    RELU: tl.constexpr,
    NORM_MATCH: tl.constexpr,
    NORM_FEAT: tl.constexpr,
    NEED_SRC: tl.constexpr,
    NEED_TGT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_T: tl.constexpr,
    FP64: tl.constexpr,
):
    """Gradient w.r.t. the pre-ReLU correlation and the feature-norm dots; grid ``(T_pad / BT, B)``.

    Writes ``dc`` (B, S, T_pad) with ``NEED_SRC`` and its transpose ``dct`` (B, T, S_pad) with
    ``NEED_TGT``, zero in the padding (``dc = grad`` without ReLU and match normalisation); with
    ``NORM_FEAT`` also ``dot_src`` (B, T_pad / BT, S), partial ``sum_t dc*r`` per ``t``-block, and
    ``dot_tgt`` (B, T) = ``sum_s dc*r``. ``BLOCK_S`` and ``BLOCK_T`` divide the padding multiple.
    """
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    i_b64 = i_b.to(tl.int64)
    r_t = tl.arange(0, BLOCK_T)
    o_t = i_t * BLOCK_T + r_t
    o_s = tl.arange(0, BLOCK_S)  # rows of the first s-block; the loops move the pointers (64-bit)
    m_t = o_t < T
    p_g = p_grad + i_b64 * stride_gb + (o_s[:, None] * stride_gs + o_t[None, :] * stride_gt)  # [BS, BT]
    p_o = p_out + i_b64 * S * T + (o_s[:, None] * T + o_t[None, :])  # [BS, BT]
    p_d = p_dc + i_b64 * S * T_pad + (o_s[:, None] * T_pad + o_t[None, :])  # [BS, BT]
    p_dt = p_dct + i_b64 * T * S_pad + block_offset(i_t, BLOCK_T, S_pad) + (r_t[None, :] * S_pad + o_s[:, None])
    ACC = tl.float64 if FP64 else tl.float32
    if NORM_MATCH:
        b_rn = tl.load(p_inv_match + i_b64 * T + o_t, mask=m_t, other=1.0)  # [BT], 1/n_t
        b_gdot = tl.zeros((BLOCK_T,), dtype=ACC)
        p_gi, p_oi = p_g, p_o
        for s0 in range(0, S, BLOCK_S):
            m_o = ((s0 + o_s) < S)[:, None] & m_t[None, :]
            b_g = tl.load(p_gi, mask=m_o, other=0.0).to(ACC)
            b_o = tl.load(p_oi, mask=m_o, other=0.0).to(ACC)
            b_gdot += tl.sum(b_g * b_o, axis=0)
            p_gi += BLOCK_S * stride_gs
            p_oi += BLOCK_S * T
    b_dot_t = tl.zeros((BLOCK_T,), dtype=ACC)
    # the transposed copy needs its padding columns s in [S, S_pad) written as zeros too
    for s0 in range(0, S_pad if NEED_TGT else S, BLOCK_S):
        m_row = (s0 + o_s) < S
        m_o = m_row[:, None] & m_t[None, :]
        b_g = tl.load(p_g, mask=m_o, other=0.0).to(ACC)  # [BS, BT]
        b_o = tl.load(p_o, mask=m_o, other=0.0).to(ACC)  # [BS, BT]
        if NORM_MATCH:
            b_dc = (b_g - b_o * b_gdot[None, :]) * b_rn[None, :]
            b_r = b_o / b_rn[None, :]  # relu(c) = out * n_t
        else:
            b_dc = b_g
            b_r = b_o
        if RELU:  # c > 0 <=> out > 0 (but for a c so small that out underflows the output dtype)
            b_dc = tl.where(b_o > 0.0, b_dc, 0.0)
        if NEED_SRC:
            tl.store(p_d, b_dc.to(p_dc.dtype.element_ty), mask=m_row[:, None])
        if NEED_TGT:
            tl.store(p_dt, b_dc.to(p_dct.dtype.element_ty), mask=m_t[None, :])
        if NORM_FEAT:
            b_prod = b_dc * b_r  # = dc * c where dc != 0
            b_dot_t += tl.sum(b_prod, axis=0)
            p_ds = p_dot_src + (i_b64 * tl.num_programs(0) + i_t) * S + s0 + o_s
            tl.store(p_ds, tl.sum(b_prod, axis=1), mask=m_row)
        p_g += BLOCK_S * stride_gs
        p_o += BLOCK_S * T
        p_d += BLOCK_S * T_pad
        p_dt += BLOCK_S
    if NORM_FEAT:
        tl.store(p_dot_tgt + i_b64 * T + o_t, b_dot_t, mask=m_t)


@triton.jit
def correlation_bwd_operand_kernel(
    p_x,
    p_scale,
    p_rows,
    R,
    K,
    K_pad,
    stride_xb,
    stride_xr,
    stride_xk,
    SCALE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """A backward GEMM operand: ``rows[b, r, k] = x[b, r, k] * scale[b, k]`` (``SCALE``, else
    ``x``), (B, R, K_pad) with unit ``k`` stride and zeros for ``k >= K``; ``x`` (B, R, K) any
    strides. Grid ``(K_pad / BK, cdiv(R, BR), B)``."""
    i_k, i_r, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b64 = i_b.to(tl.int64)
    r_k = tl.arange(0, BLOCK_K)
    r_r = tl.arange(0, BLOCK_R)
    o_k = i_k * BLOCK_K + r_k
    o_r = i_r * BLOCK_R + r_r
    m_r = o_r < R
    m_k = o_k < K
    p_xt = p_x + i_b64 * stride_xb + block_offset(i_r, BLOCK_R, stride_xr) + block_offset(i_k, BLOCK_K, stride_xk)
    p_xt += r_r[:, None] * stride_xr + r_k[None, :] * stride_xk  # [BR, BK]
    b_x = tl.load(p_xt, mask=m_r[:, None] & m_k[None, :], other=0.0)  # [BR, BK]
    if SCALE:
        b_sc = tl.load(p_scale + i_b64 * K + o_k, mask=m_k, other=0.0)  # [BK]
        b_x = b_x.to(b_sc.dtype) * b_sc[None, :]
    p_r = p_rows + i_b64 * R * K_pad + block_offset(i_r, BLOCK_R, K_pad) + (r_r[:, None] * K_pad + o_k[None, :])
    tl.store(p_r, b_x.to(p_rows.dtype.element_ty), mask=m_r[:, None] & (o_k < K_pad)[None, :])


@autotune(BWD_CONFIGS, key=["N", "C", "K_pad"], prune_configs_by={"early_config_prune": prune_bwd_configs})
@triton.jit
def correlation_bwd_features_kernel(
    p_e,
    p_x,
    p_y,
    p_y_scale,
    p_dot,
    p_grad,
    N,
    C,
    K_pad,
    n_dot,
    stride_yb,
    stride_yc,
    stride_yn,
    NORM_FEAT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP64: tl.constexpr,
):
    """Gradient of one feature map, ``grad`` (B, C, N) contiguous; grid ``(cdiv(C, BC), cdiv(N, BN), B)``:
    consecutive programs share their ``e`` rows and sweep the channels, so ``x`` (C x K_pad, 15 MB
    for a 60x60 fp32 map) stays in L2 while each row block of ``e`` is read from memory once.

    ``e`` (B, N, K_pad) is the correlation gradient seen from this map and ``x`` (B, C, K_pad) the
    other map, normalised, both with unit ``k`` stride and zero padding; ``y`` (B, C, N) is this
    map (any strides), ``y_scale`` its inverse norms, ``dot`` (B, n_dot, N) the partial
    feature-norm dots summed here in order. Without ``NORM_FEAT``: ``grad[c, n] = sum_k e[n, k] x[c, k]``.
    """
    i_c, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b64 = i_b.to(tl.int64)
    r_n = tl.arange(0, BLOCK_N)
    r_c = tl.arange(0, BLOCK_C)
    o_n = i_n * BLOCK_N + r_n
    o_c = i_c * BLOCK_C + r_c
    o_k = tl.arange(0, BLOCK_K)
    m_n = o_n < N
    m_c = o_c < C
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    p_a = p_e + i_b64 * N * K_pad + block_offset(i_n, BLOCK_N, K_pad) + (r_n[:, None] * K_pad + o_k[None, :])
    p_b = p_x + i_b64 * C * K_pad + block_offset(i_c, BLOCK_C, K_pad) + (r_c[:, None] * K_pad + o_k[None, :])
    acc = dot_nt_tile(p_a, p_b, m_n, m_c, K_pad, BLOCK_N, BLOCK_C, BLOCK_K, True, INPUT_PRECISION, DOT_FP32, ACC)
    if NORM_FEAT:
        b_dot = tl.zeros((BLOCK_N,), dtype=ACC)
        for i in range(0, n_dot):
            b_dot += tl.load(p_dot + (i_b64 * n_dot + i) * N + o_n, mask=m_n, other=0.0)
        b_ys = tl.load(p_y_scale + i_b64 * N + o_n, mask=m_n, other=0.0)  # [BN]
        p_yt = p_y + i_b64 * stride_yb + block_offset(i_c, BLOCK_C, stride_yc) + block_offset(i_n, BLOCK_N, stride_yn)
        p_yt += r_c[None, :] * stride_yc + r_n[:, None] * stride_yn  # [BN, BC]
        b_y = tl.load(p_yt, mask=m_n[:, None] & m_c[None, :], other=0.0).to(ACC)
        # df = y_n * (df_hat - f_hat * <df_hat, f_hat>_c), f_hat = f * y_n
        acc = b_ys[:, None] * (acc - b_y * (b_ys * b_dot)[:, None])
    p_g = p_grad + i_b64 * C * N + block_offset(i_c, BLOCK_C, N) + i_n * BLOCK_N + (r_c[None, :] * N + r_n[:, None])
    tl.store(p_g, acc.to(p_grad.dtype.element_ty), mask=m_n[:, None] & m_c[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def fused_block_s(S: int) -> int | None:
    """The GEMM's ``BLOCK_S`` when the source dimension fits one block, else None (split). At least
    64 rows: one ``wgmma`` M tile."""
    return max(64, triton.next_power_of_2(S)) if S <= MAX_FUSED_S else None


def padded(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`POS_PAD`: the row length of the backward operands."""
    return triton.cdiv(n, POS_PAD) * POS_PAD


def dot_kind(dtype: torch.dtype, input_precision: str) -> str:
    """The key of :data:`PEAK_FLOPS` for dots of ``dtype`` operands: ``"tf32"``/``"tf32x3"``/``"fp32"``
    (ieee) for fp32 by ``input_precision``, else the dtype's name."""
    if dtype == torch.float32:
        return "fp32" if input_precision == "ieee" else input_precision
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]


def recompute_matches(C: int, dtype: torch.dtype, input_precision: str) -> bool:
    """Whether the split match normalisation recomputes the GEMM rather than rescaling the output.

    Recomputing costs ``2 B S T C`` FLOPs, ``2 B S T C / peak_flops``; the rescale pass re-reads and
    re-writes the output, ``2 B S T e / hbm_bandwidth`` (``e`` the element size). Recomputation is
    the cheaper below ``C = peak_flops * e / hbm_bandwidth`` (:data:`PEAK_FLOPS`,
    :data:`HBM_BYTES_PER_S`: 591 channels in tf32 and bf16, 80 with ieee fp32 dots).
    """
    return C * HBM_BYTES_PER_S < PEAK_FLOPS[dot_kind(dtype, input_precision)] * dtype.itemsize


def match_mode(normalize_matches: bool, S: int, C: int, dtype: torch.dtype, input_precision: str) -> tuple[str, ...]:
    """The forward GEMM's ``MATCH`` passes: ``("none",)``, ``("tile",)``, ``("partials", "final")``
    (recompute) or ``("scaled",)`` (followed by the rescale pass); :func:`recompute_matches`."""
    if not normalize_matches:
        return ("none",)
    if fused_block_s(S) is not None:
        return ("tile",)
    return ("partials", "final") if recompute_matches(C, dtype, input_precision) else ("scaled",)


def feature_prep(x: torch.Tensor, normalize: bool, copy: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse norms (B, N) (with ``normalize``) and channels-last rows (B, N, C) (with ``copy``) of
    ``x`` (B, C, N), in one pass."""
    B, C, N = x.shape
    inv = empty(B, N, dtype=accumulation_dtype(x.dtype), device=x.device) if normalize else None
    rows = empty(B, N, C, dtype=x.dtype, device=x.device) if copy else None
    correlation_fwd_prep_kernel[(triton.cdiv(N, NORM_BLOCK_N), B)](
        p_x=x,
        p_inv=inv if normalize else x,
        p_rows=rows if copy else x,
        N=N,
        C=C,
        **strides("x", x, "bcn"),
        eps=eps,
        NORM=normalize,
        COPY=copy,
        BLOCK_N=NORM_BLOCK_N,
        BLOCK_C=NORM_BLOCK_C,
        FP64=x.dtype == torch.float64,
        num_warps=NORM_WARPS,
    )
    return inv, rows


def correlation_inverse_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / sqrt(sum_c x^2 + eps)`` of a ``(B, C, N)`` tensor (any strides) -> ``(B, N)``."""
    inv, _ = feature_prep(x, True, False, eps)
    return inv


def channels_last_rows(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` (B, C, H, W) as rows (B, H*W, C) with unit channel stride when that is a view (a
    channels-last map), else None (the launcher then makes the copy)."""
    B, C, H, W = x.shape
    rows = x.permute(0, 2, 3, 1)
    if C > 1 and rows.stride(3) != 1:
        return None
    try:
        return rows.view(B, H * W, C)
    except RuntimeError:  # (H, W) do not collapse
        return None


def correlation_fwd(
    source: torch.Tensor,
    target: torch.Tensor,
    normalize_features: bool,
    relu: bool,
    normalize_matches: bool,
    input_precision: str,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward of the correlation.

    Args:
        source: ``(B, C, Hs, Ws)``; target: ``(B, C, Ht, Wt)``; any strides, same dtype. A map that
            is not channels-last is copied to channels-last (in the pass that computes its norms).
    Returns:
        ``out (B, Hs*Ws, Ht, Wt)`` in the input dtype, then what the backward needs, in the
        accumulation dtype: ``inv_source (B, S)``, ``inv_target (B, T)`` (empty without
        ``normalize_features``), ``inv_match (B, T)`` (empty without ``normalize_matches``).
    """
    B, C, Hs, Ws = source.shape
    Ht, Wt = target.shape[2:]
    S, T = Hs * Ws, Ht * Wt
    dev, acc_dtype = source.device, accumulation_dtype(source.dtype)
    out = empty(B, S, Ht, Wt, dtype=source.dtype, device=dev)
    # distinct empty tensors: custom-op outputs must not alias each other
    inv_src, inv_tgt, inv_match = (source.new_empty((0,), dtype=acc_dtype) for _ in range(3))
    if out.numel() == 0:
        if normalize_features:
            inv_src = source.new_zeros((B, S), dtype=acc_dtype)
            inv_tgt = source.new_zeros((B, T), dtype=acc_dtype)
        if normalize_matches:
            inv_match = source.new_zeros((B, T), dtype=acc_dtype)
        return out, inv_src, inv_tgt, inv_match
    maps = []
    for x in (source, target):
        rows = channels_last_rows(x)
        inv = None
        if normalize_features or rows is None:
            inv, copy = feature_prep(x.reshape(x.shape[0], C, -1), normalize_features, rows is None, eps)
            rows = copy if rows is None else rows
        maps.append((rows, inv))
    (src, inv_s), (tgt, inv_t) = maps
    if normalize_features:
        inv_src, inv_tgt = inv_s, inv_t
    block_s = fused_block_s(S) or SPLIT_BLOCK_S
    n_sblocks = triton.cdiv(S, block_s)
    passes = match_mode(normalize_matches, S, C, source.dtype, input_precision)
    if normalize_matches:
        inv_match = empty(B, T, dtype=acc_dtype, device=dev)
    split = passes[0] in ("partials", "scaled")
    sumsq = empty(B, n_sblocks, T, dtype=acc_dtype, device=dev) if split else out
    unused = out  # placeholder pointer for buffers a disabled code path never touches
    for mode in passes:
        launch(
            correlation_fwd_kernel,
            lambda meta: (triton.cdiv(T, meta["BLOCK_T"]), n_sblocks, B),
            name="correlation_fwd",
            device=dev,
            sizes={"S": S, "T": T, "C": C, "dtype": dtype_name(source.dtype)},
            p_src=src,
            p_tgt=tgt,
            p_inv_src=inv_src if normalize_features else unused,
            p_inv_tgt=inv_tgt if normalize_features else unused,
            p_out=out,
            p_sumsq=sumsq,
            p_inv_match=inv_match if normalize_matches else unused,
            S=S,
            T=T,
            C=C,
            stride_sb=src.stride(0),
            stride_ss=src.stride(1),
            stride_tb=tgt.stride(0),
            stride_tt=tgt.stride(1),
            eps=eps,
            NORM_FEAT=normalize_features,
            RELU=relu,
            MATCH=mode,
            BLOCK_S=block_s,
            EVEN_C=C % MAX_BLOCK_C == 0,
            **dot_options(source.dtype, input_precision),
        )
    if "scaled" in passes:
        correlation_normalize_matches_kernel[(triton.cdiv(T, RESCALE_BLOCK_T), B)](
            p_out=out,
            p_sumsq=sumsq,
            p_inv_match=inv_match,
            S=S,
            T=T,
            block_s=block_s,
            n_sblocks=n_sblocks,
            eps=eps,
            BLOCK_S=min(RESCALE_BLOCK_S, block_s),
            BLOCK_T=RESCALE_BLOCK_T,
            FP64=source.dtype == torch.float64,
            num_warps=RESCALE_WARPS,
        )
    return out, inv_src, inv_tgt, inv_match


def bwd_operand(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``x`` (B, R, K), any strides, times ``scale`` (B, K) when given, as (B, R, padded(K)) with unit
    ``k`` stride and zero padding: a K-major operand of :func:`correlation_bwd_gemm`."""
    B, R, K = x.shape
    K_pad = padded(K)
    rows = empty(B, R, K_pad, dtype=x.dtype, device=x.device)
    correlation_bwd_operand_kernel[(K_pad // OPERAND_BLOCK_K, triton.cdiv(R, OPERAND_BLOCK_R), B)](
        p_x=x,
        p_scale=x if scale is None else scale,
        p_rows=rows,
        R=R,
        K=K,
        K_pad=K_pad,
        **strides("x", x, "brk"),
        SCALE=scale is not None,
        BLOCK_R=OPERAND_BLOCK_R,
        BLOCK_K=OPERAND_BLOCK_K,
        num_warps=OPERAND_WARPS,
    )
    return rows


def correlation_bwd_gemm(
    e: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    y_scale: torch.Tensor,
    dot: torch.Tensor | None,
    normalize_features: bool,
    input_precision: str,
) -> torch.Tensor:
    """Gradient w.r.t. one feature map ``y``, launching :func:`correlation_bwd_features_kernel`.

    Args:
        e: ``(B, N, K_pad)`` the gradient w.r.t. the pre-ReLU correlation seen from ``y``
            (``e[n, k]``), x: ``(B, C, K_pad)`` the other map, normalised: both as
            :func:`bwd_operand` makes them (unit ``k`` stride, zero padding).
        y: ``(B, C, N)`` this map, any strides; y_scale: its inverse norms ``(B, N)``; dot: the
            feature-norm dots ``(B, n, N)`` (partials over ``n``); unused without ``normalize_features``.
    Returns:
        ``(B, C, N)``, contiguous, in ``y``'s dtype.
    """
    B, C, N = y.shape
    K_pad = x.shape[2]
    grad = empty(B, C, N, dtype=y.dtype, device=y.device)
    launch(
        correlation_bwd_features_kernel,
        lambda meta: (triton.cdiv(C, meta["BLOCK_C"]), triton.cdiv(N, meta["BLOCK_N"]), B),
        name="correlation_bwd_features",
        device=y.device,
        sizes={"N": N, "K_pad": K_pad, "C": C, "dtype": dtype_name(y.dtype)},
        p_e=e,
        p_x=x,
        p_y=y,
        p_y_scale=y_scale if normalize_features else grad,
        p_dot=dot if normalize_features else grad,
        p_grad=grad,
        N=N,
        C=C,
        K_pad=K_pad,
        n_dot=dot.shape[1] if normalize_features else 0,
        **strides("y", y, "bcn"),
        NORM_FEAT=normalize_features,
        **dot_options(y.dtype, input_precision),
    )
    return grad


def correlation_bwd_features(
    x: torch.Tensor,
    y: torch.Tensor,
    e: torch.Tensor,
    x_scale: torch.Tensor,
    y_scale: torch.Tensor,
    dot: torch.Tensor | None,
    normalize_features: bool,
    input_precision: str,
) -> torch.Tensor:
    """Gradient w.r.t. one feature map ``y`` from a correlation gradient ``e`` in any layout.

    Args:
        x: ``(B, C, K)`` the other map; y: ``(B, C, N)``; e: ``(B, K, N)`` the gradient w.r.t. the
            pre-ReLU correlation, read ``e[k, n]``; any strides (views). Both ``e`` and ``x`` are
            copied into the GEMM's K-major operands (:func:`bwd_operand`).
        x_scale, y_scale: inverse feature norms ``(B, K)``, ``(B, N)``; dot: the feature-norm dots
            ``(B, n, N)`` (partials over ``n``); all three unused without ``normalize_features``.
    Returns:
        ``(B, C, N)``, contiguous, in ``y``'s dtype.
    """
    e_rows = bwd_operand(e.transpose(1, 2), None)
    x_rows = bwd_operand(x, x_scale if normalize_features else None)
    return correlation_bwd_gemm(e_rows, x_rows, y, y_scale, dot, normalize_features, input_precision)


def correlation_bwd(
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
    """Backward of :func:`correlation_fwd`.

    Args:
        grad: ``(B, S, Ht, Wt)`` gradient of ``out`` (any strides); the rest as returned by /
            given to :func:`correlation_fwd`.
        need_source, need_target: which gradients to compute.
    Returns:
        ``grad_source`` ``(B, C, Hs, Ws)`` and ``grad_target`` ``(B, C, Ht, Wt)``, contiguous, in
        the input dtype; a gradient not asked for is an empty tensor.
    """
    B, C, Hs, Ws = source.shape
    Ht, Wt = target.shape[2:]
    S, T = Hs * Ws, Ht * Wt
    dev, acc_dtype = source.device, accumulation_dtype(source.dtype)
    grad_src, grad_tgt = source.new_empty((0,)), source.new_empty((0,))  # distinct: no aliasing
    if B * C * S * T == 0 or not (need_source or need_target):  # nothing to reduce
        grad_src = source.new_zeros((B, C, Hs, Ws)) if need_source else grad_src
        grad_tgt = target.new_zeros((B, C, Ht, Wt)) if need_target else grad_tgt
        return grad_src, grad_tgt
    src = source.reshape(B, C, S)
    tgt = target.reshape(B, C, T)
    g = grad.reshape(B, S, T)
    out = out.reshape(B, S, T)
    S_pad, T_pad = padded(S), padded(T)
    n_tblocks = T_pad // PREP_BLOCK_T
    dc = empty(B, S, T_pad, dtype=source.dtype, device=dev) if need_source else out
    dct = empty(B, T, S_pad, dtype=source.dtype, device=dev) if need_target else out
    dot_src = empty(B, n_tblocks, S, dtype=acc_dtype, device=dev) if normalize_features else None
    dot_tgt = empty(B, 1, T, dtype=acc_dtype, device=dev) if normalize_features else None
    correlation_bwd_prep_kernel[(n_tblocks, B)](
        p_grad=g,
        p_out=out,
        p_inv_match=inv_match if normalize_matches else out,
        p_dc=dc,
        p_dct=dct,
        p_dot_src=dot_src if normalize_features else out,
        p_dot_tgt=dot_tgt if normalize_features else out,
        S=S,
        T=T,
        S_pad=S_pad,
        T_pad=T_pad,
        **strides("g", g, "bst"),
        RELU=relu,
        NORM_MATCH=normalize_matches,
        NORM_FEAT=normalize_features,
        NEED_SRC=need_source,
        NEED_TGT=need_target,
        BLOCK_S=PREP_BLOCK_S,
        BLOCK_T=PREP_BLOCK_T,
        FP64=source.dtype == torch.float64,
        num_warps=PREP_WARPS,
    )
    if need_source:  # df_s[c, s] from the target (k = t): e[s, t] = dc[s, t]
        x_rows = bwd_operand(tgt, inv_target if normalize_features else None)
        grad_src = correlation_bwd_gemm(dc, x_rows, src, inv_source, dot_src, normalize_features, input_precision).view(
            B, C, Hs, Ws
        )
    if need_target:  # df_t[c, t] from the source (k = s): e[t, s] = dc[s, t]
        x_rows = bwd_operand(src, inv_source if normalize_features else None)
        grad_tgt = correlation_bwd_gemm(
            dct, x_rows, tgt, inv_target, dot_tgt, normalize_features, input_precision
        ).view(B, C, Ht, Wt)
    return grad_src, grad_tgt
