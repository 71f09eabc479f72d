"""Triton kernels of the 4D correlation (docs/design.md §3.1), forward and backward.

``out[b, s, t] = N_t(relu(a[b, s] * b[b, t] * <src[b, :, s], tgt[b, :, t]>))`` where ``a``/``b``
are the inverse channel norms of the two feature maps (``1/sqrt(sum_c f^2 + eps)``, or 1 without
feature normalisation) and ``N_t`` the L2 normalisation over ``s`` for each ``t`` (optional, as
is the ReLU).

Forward:

* :func:`correlation_inverse_norm_kernel` computes ``a`` (B, S) and ``b`` (B, T) over C, once per
  map.
* :func:`correlation_fwd_kernel` is the batched GEMM ``(S x C) @ (C x T)`` per batch with the
  scales, the ReLU and the match normalisation fused into its epilogue. When the whole source
  dimension fits one block (S <= :data:`MAX_FUSED_S`) the column norm over ``s`` is complete
  inside the tile and the output is final. Otherwise (``SPLIT``) each tile stores its values
  divided by their own partial column norm (bounded by 1, so fp16 cannot overflow even without
  feature normalisation) and its partial sums of squares per ``(s-block, t)``;
  :func:`correlation_normalize_matches_kernel` then sums the partials in a fixed order
  (deterministic, no atomics) and rescales in place.

Backward (``g`` the incoming gradient, ``n_t`` the column norm, ``r = relu(c)``):

* :func:`correlation_bwd_prep_kernel`, one program per ``t``-block looping over ``s``:
  ``dc = (g - out * <g, out>_s) / n_t``, masked by ``out > 0`` with ReLU. With feature
  normalisation it also produces the row/column dots ``sum_t dc*r`` and ``sum_s dc*r``, which
  equal ``<d f_hat, f_hat>_c`` of the feature-norm backward (``<fs_hat_s, ft_hat_t> = c[s, t]``),
  so the GEMM epilogue needs no reduction over C.
* :func:`correlation_bwd_features_kernel`, one GEMM for either input ``y`` against the other map
  ``x`` with inverse norms ``v``/``u``: ``dy[c, n] = v_n * (sum_k x[c, k] u_k dc[k, n] - y[c, n] v_n
  dot_n)`` (``n = s, k = t`` for the source, the other way round for the target). The scale
  ``u_k`` is applied to the ``x`` tile (normalised features, bounded by 1: safe in 16 bits) so
  that ``dc`` stays unscaled in the input dtype.

Saved for the backward: the output, the inverse feature norms (B, S), (B, T) and the inverse
match norms (B, T); nothing of size S*T beyond the output itself. The ReLU mask is ``out > 0``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2net.kernels._common import correlation_tile, dot_options, dtype_name, strides
from a2net.kernels._memory import accumulation_dtype, empty
from a2net.kernels._tuning import autotune, launch

#: Largest source size whose column norm is fused into the GEMM tile (one ``s``-block).
MAX_FUSED_S = 256
#: ``s``-block of the GEMM when the source dimension is split (two-stage match normalisation).
SPLIT_BLOCK_S = 128

# Forward GEMM: BLOCK_S is chosen by the launcher (it decides fused vs split and sizes the
# partial-sum buffer), so it is not tuned. First config = default (interpreter, AOT report).
FWD_CONFIGS = [
    triton.Config({"BLOCK_T": 64, "BLOCK_C": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_T": 32, "BLOCK_C": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_T": 32, "BLOCK_C": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_T": 64, "BLOCK_C": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_T": 64, "BLOCK_C": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_T": 128, "BLOCK_C": 32}, num_warps=8, num_stages=3),
]
BWD_CONFIGS = [
    triton.Config({"BLOCK_C": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_C": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_C": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
]


def prune_fwd_configs(configs, named_args, **kwargs):
    """Drop the configs whose accumulator (> 64 fp32 a thread) or source tile (> 32) would
    spill at the launcher's ``BLOCK_S`` (the fused 256-row tile; the kernel report shows them
    spilling on sm_90)."""
    block_s = kwargs.get("BLOCK_S", named_args.get("BLOCK_S", SPLIT_BLOCK_S))

    def fits(cfg):
        threads = 32 * cfg.num_warps
        acc, tile = block_s * cfg.kwargs["BLOCK_T"], block_s * cfg.kwargs["BLOCK_C"]
        return acc <= 64 * threads and tile <= 32 * threads

    return [cfg for cfg in configs if fits(cfg)] or configs[:1]


# Memory-bound helpers: fixed blocks. correlation_normalize_matches_kernel rescales in place, so it
# must never be autotuned (benchmark runs would rescale repeatedly).
NORM_BLOCK_N, NORM_BLOCK_C, NORM_WARPS = 64, 32, 4
RESCALE_BLOCK_T, RESCALE_WARPS = 32, 4
PREP_BLOCK_S, PREP_BLOCK_T, PREP_WARPS = 32, 64, 8


@triton.jit
def correlation_inverse_norm_kernel(
    p_x,
    p_inv,
    N,
    C,
    stride_xb,
    stride_xc,
    stride_xn,
    eps,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    FP64: tl.constexpr,
):
    """``inv[b, n] = 1 / sqrt(sum_c x[b, c, n]^2 + eps)``; grid ``(cdiv(N, BLOCK_N), B)``."""
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_c = tl.arange(0, BLOCK_C)
    m_n = o_n < N
    # the channel offset grows in the (64-bit) pointer, tile offsets stay 32-bit
    p_xt = p_x + i_b.to(tl.int64) * stride_xb + o_c[:, None] * stride_xc + o_n[None, :] * stride_xn  # [BC,BN]
    b_ss = tl.zeros((BLOCK_N,), dtype=tl.float64 if FP64 else tl.float32)
    for c0 in range(0, C, BLOCK_C):
        m_x = ((c0 + o_c) < C)[:, None] & m_n[None, :]
        b_x = tl.load(p_xt, mask=m_x, other=0.0).to(b_ss.dtype)  # [BC, BN]
        b_ss += tl.sum(b_x * b_x, axis=0)
        p_xt += BLOCK_C * stride_xc
    tl.store(p_inv + i_b.to(tl.int64) * N + o_n, 1.0 / tl.sqrt(b_ss + eps), mask=m_n)


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
    stride_sc,
    stride_ss,
    stride_tb,
    stride_tc,
    stride_tt,
    eps,
    NORM_FEAT: tl.constexpr,
    RELU: tl.constexpr,
    NORM_MATCH: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP64: tl.constexpr,
):
    """One ``[BLOCK_S, BLOCK_T]`` correlation tile; grid ``(cdiv(T, BT), cdiv(S, BS), B)``.

    Writes ``out`` (B, S, T); with ``NORM_MATCH`` also ``inv_match`` (B, T) when fused, or the
    partial sums of squares ``sumsq`` (B, cdiv(S, BS), T) when ``SPLIT``.
    """
    i_t, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    i_b64 = i_b.to(tl.int64)
    o_s = i_s * BLOCK_S + tl.arange(0, BLOCK_S)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    o_c = tl.arange(0, BLOCK_C)
    m_s = o_s < S
    m_t = o_t < T
    p_a = p_src + i_b64 * stride_sb + o_s[:, None] * stride_ss + o_c[None, :] * stride_sc  # [BS, BC]
    p_b = p_tgt + i_b64 * stride_tb + o_c[:, None] * stride_tc + o_t[None, :] * stride_tt  # [BC, BT]
    acc = correlation_tile(
        p_a,
        p_b,
        m_s,
        m_t,
        C,
        stride_sc,
        stride_tc,
        BLOCK_S,
        BLOCK_T,
        BLOCK_C,
        INPUT_PRECISION,
        DOT_FP32,
        ACC,
    )  #
    if NORM_FEAT:
        b_as = tl.load(p_inv_src + i_b64 * S + o_s, mask=m_s, other=0.0)  # [BS]
        b_bt = tl.load(p_inv_tgt + i_b64 * T + o_t, mask=m_t, other=0.0)  # [BT]
        acc = acc * b_as[:, None] * b_bt[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if NORM_MATCH:
        b_ss = tl.sum(acc * acc, axis=0)  # [BT]; padded rows are 0
        if SPLIT:
            # store the tile over its own partial norm: |value| <= 1 whatever the input scale
            b_scale = tl.where(b_ss > 0.0, 1.0 / tl.sqrt(tl.maximum(b_ss, 1e-30)), 0.0)
            tl.store(p_sumsq + (i_b64 * tl.num_programs(1) + i_s) * T + o_t, b_ss, mask=m_t)
        else:
            b_scale = 1.0 / tl.sqrt(b_ss + eps)
            tl.store(p_inv_match + i_b64 * T + o_t, b_scale, mask=m_t)
        acc = acc * b_scale[None, :]
    # s*T stays 32-bit: S*T < 2^31 up to 215x215 maps
    p_o = p_out + i_b64 * S * T + o_s[:, None] * T + o_t[None, :]  # [BS, BT]
    tl.store(p_o, acc.to(p_out.dtype.element_ty), mask=m_s[:, None] & m_t[None, :])


@triton.jit
def correlation_normalize_matches_kernel(
    p_out,
    p_sumsq,
    p_inv_match,
    S,
    T,
    n_sblocks,
    eps,
    BLOCK_S: tl.constexpr,
    BLOCK_T: tl.constexpr,
    FP64: tl.constexpr,
):
    """Second stage of the split match normalisation, in place on ``out`` (B, S, T).

    Grid ``(cdiv(T, BT), n_sblocks, B)``; ``BLOCK_S`` is the GEMM's, so a tile lies in one
    ``s``-block. ``out = v * sqrt(sumsq[s-block]) / sqrt(sum_blocks sumsq + eps)``; the partials
    are summed in block order, identically by every program of a column.
    """
    i_t, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b64 = i_b.to(tl.int64)
    o_s = i_s * BLOCK_S + tl.arange(0, BLOCK_S)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_s = o_s < S
    m_t = o_t < T
    p_ss = p_sumsq + i_b64 * n_sblocks * T + o_t  # [BT]
    b_total = tl.zeros((BLOCK_T,), dtype=tl.float64 if FP64 else tl.float32)
    for i in range(0, n_sblocks):
        b_total += tl.load(p_ss + i * T, mask=m_t, other=0.0)
    b_inv = 1.0 / tl.sqrt(b_total + eps)  # [BT]
    if i_s == 0:
        tl.store(p_inv_match + i_b64 * T + o_t, b_inv, mask=m_t)
    b_scale = tl.sqrt(tl.load(p_ss + i_s * T, mask=m_t, other=0.0)) * b_inv  # [BT]
    p_o = p_out + i_b64 * S * T + o_s[:, None] * T + o_t[None, :]  # [BS, BT]
    m_o = m_s[:, None] & m_t[None, :]
    b_o = tl.load(p_o, mask=m_o, other=0.0).to(b_total.dtype)
    tl.store(p_o, (b_o * b_scale[None, :]).to(p_out.dtype.element_ty), mask=m_o)


@triton.jit
def correlation_bwd_prep_kernel(
    p_grad,
    p_out,
    p_inv_match,
    p_dcorr,
    p_dot_src,
    p_dot_tgt,
    S,
    T,
    stride_gb,
    stride_gs,
    stride_gt,
    RELU: tl.constexpr,
    NORM_MATCH: tl.constexpr,
    NORM_FEAT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_T: tl.constexpr,
    FP64: tl.constexpr,
):
    """Gradient w.r.t. the pre-ReLU correlation and the feature-norm dots; grid ``(cdiv(T, BT), B)``.

    Writes ``dcorr`` (B, S, T) when ``RELU or NORM_MATCH`` (else ``dcorr = grad``); with
    ``NORM_FEAT`` also ``dot_src`` (B, cdiv(T, BT), S) partial ``sum_t dc*r`` per ``t``-block
    and ``dot_tgt`` (B, T) = ``sum_s dc*r``.
    """
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    i_b64 = i_b.to(tl.int64)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    o_s = tl.arange(0, BLOCK_S)
    m_t = o_t < T
    p_g = p_grad + i_b64 * stride_gb + o_s[:, None] * stride_gs + o_t[None, :] * stride_gt  # [BS, BT]
    p_o = p_out + i_b64 * S * T + o_s[:, None] * T + o_t[None, :]  # [BS, BT]
    ACC = tl.float64 if FP64 else tl.float32
    if NORM_MATCH:
        b_rn = tl.load(p_inv_match + i_b64 * T + o_t, mask=m_t, other=1.0)  # [BT], 1/n_t
        b_gdot = tl.zeros((BLOCK_T,), dtype=ACC)
        for s0 in range(0, S, BLOCK_S):
            m_o = ((s0 + o_s) < S)[:, None] & m_t[None, :]
            b_g = tl.load(p_g + s0 * stride_gs, mask=m_o, other=0.0).to(ACC)
            b_o = tl.load(p_o + s0 * T, mask=m_o, other=0.0).to(ACC)
            b_gdot += tl.sum(b_g * b_o, axis=0)
    b_dot_t = tl.zeros((BLOCK_T,), dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        m_row = (s0 + o_s) < S
        m_o = m_row[:, None] & m_t[None, :]
        b_g = tl.load(p_g + s0 * stride_gs, mask=m_o, other=0.0).to(ACC)  # [BS, BT]
        b_o = tl.load(p_o + s0 * T, mask=m_o, other=0.0).to(ACC)  # [BS, BT]
        if NORM_MATCH:
            b_dc = (b_g - b_o * b_gdot[None, :]) * b_rn[None, :]
            b_r = b_o / b_rn[None, :]  # relu(c) = out * n_t
        else:
            b_dc = b_g
            b_r = b_o
        if RELU:  # c > 0 <=> out > 0 (but for a c so small that out underflows the output dtype)
            b_dc = tl.where(b_o > 0.0, b_dc, 0.0)
        if RELU or NORM_MATCH:
            p_dc = p_dcorr + i_b64 * S * T + (s0 + o_s)[:, None] * T + o_t[None, :]  # [BS, BT]
            tl.store(p_dc, b_dc.to(p_dcorr.dtype.element_ty), mask=m_o)
        if NORM_FEAT:
            b_prod = b_dc * b_r  # = dc * c where dc != 0
            b_dot_t += tl.sum(b_prod, axis=0)
            p_ds = p_dot_src + (i_b64 * tl.num_programs(0) + i_t) * S + s0 + o_s
            tl.store(p_ds, tl.sum(b_prod, axis=1), mask=m_row)
    if NORM_FEAT:
        tl.store(p_dot_tgt + i_b64 * T + o_t, b_dot_t, mask=m_t)


@autotune(BWD_CONFIGS, key=["N", "K", "C"])
@triton.jit
def correlation_bwd_features_kernel(
    p_x,
    p_y,
    p_e,
    p_x_scale,
    p_y_scale,
    p_dot,
    p_grad,
    N,
    K,
    C,
    n_dot,
    stride_xb,
    stride_xc,
    stride_xk,
    stride_yb,
    stride_yc,
    stride_yn,
    stride_eb,
    stride_ek,
    stride_en,
    NORM_FEAT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP64: tl.constexpr,
):
    """Gradient of one feature map, ``grad`` (B, C, N); grid ``(cdiv(N, BN), cdiv(C, BC), B)``.

    ``x`` (B, C, K) is the other map, ``y`` (B, C, N) this one, ``e[k, n]`` the correlation
    gradient seen from this map, ``x_scale``/``y_scale`` their inverse norms, ``dot``
    (B, n_dot, N) the partial dots summed here in order. Without ``NORM_FEAT``:
    ``grad = x @ e``.
    """
    i_n, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b64 = i_b.to(tl.int64)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_k = tl.arange(0, BLOCK_K)
    m_c = o_c < C
    m_n = o_n < N
    o_c64 = o_c.to(tl.int64)
    p_xt = p_x + i_b64 * stride_xb + o_c64[:, None] * stride_xc + o_k[None, :] * stride_xk  # [BC, BK]
    p_et = p_e + i_b64 * stride_eb + o_k[:, None] * stride_ek + o_n[None, :] * stride_en  # [BK, BN]
    p_xs = p_x_scale + i_b64 * K + o_k  # [BK]
    ACC = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        m_k = (k0 + o_k) < K
        b_x = tl.load(p_xt, mask=m_c[:, None] & m_k[None, :], other=0.0)  # [BC, BK]
        b_e = tl.load(p_et, mask=m_k[:, None] & m_n[None, :], other=0.0)  # [BK, BN]
        if NORM_FEAT:  # x_hat = x * x_scale: bounded by 1, safe to round back to 16 bits
            b_xs = tl.load(p_xs, mask=m_k, other=0.0)  # [BK]
            b_x = (b_x.to(ACC) * b_xs[None, :]).to(p_x.dtype.element_ty)
        if DOT_FP32:  # the interpreter has no bf16 dot
            b_x = b_x.to(tl.float32)
            b_e = b_e.to(tl.float32)
        acc = tl.dot(b_x, b_e, acc, input_precision=INPUT_PRECISION)
        p_xt += BLOCK_K * stride_xk
        p_et += BLOCK_K * stride_ek
        p_xs += BLOCK_K
    if NORM_FEAT:
        b_dot = tl.zeros((BLOCK_N,), dtype=ACC)
        for i in range(0, n_dot):
            b_dot += tl.load(p_dot + (i_b64 * n_dot + i) * N + o_n, mask=m_n, other=0.0)
        b_ys = tl.load(p_y_scale + i_b64 * N + o_n, mask=m_n, other=0.0)  # [BN]
        p_yt = p_y + i_b64 * stride_yb + o_c64[:, None] * stride_yc + o_n[None, :] * stride_yn  # [BC, BN]
        b_y = tl.load(p_yt, mask=m_c[:, None] & m_n[None, :], other=0.0).to(ACC)
        # df = y_n * (df_hat - f_hat * <df_hat, f_hat>_c), f_hat = f * y_n
        acc = b_ys[None, :] * (acc - b_y * (b_ys * b_dot)[None, :])
    p_gt = p_grad + i_b64 * C * N + o_c64[:, None] * N + o_n[None, :]  # [BC, BN]
    tl.store(p_gt, acc.to(p_grad.dtype.element_ty), mask=m_c[:, None] & m_n[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def fused_block_s(S: int) -> int | None:
    """The GEMM's ``BLOCK_S`` when the source dimension fits one block, else None (split)."""
    return max(16, triton.next_power_of_2(S)) if S <= MAX_FUSED_S else None


def correlation_inverse_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / sqrt(sum_c x^2 + eps)`` of a ``(B, C, N)`` tensor (any strides) -> ``(B, N)``."""
    B, C, N = x.shape
    inv = empty(B, N, dtype=accumulation_dtype(x.dtype), device=x.device)
    correlation_inverse_norm_kernel[(triton.cdiv(N, NORM_BLOCK_N), B)](
        p_x=x,
        p_inv=inv,
        N=N,
        C=C,
        **strides("x", x, "bcn"),
        eps=eps,
        BLOCK_N=NORM_BLOCK_N,
        BLOCK_C=NORM_BLOCK_C,
        FP64=x.dtype == torch.float64,
        num_warps=NORM_WARPS,
    )
    return inv


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
        source: ``(B, C, Hs, Ws)``; target: ``(B, C, Ht, Wt)``; any strides, same dtype.
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
    src = source.reshape(B, C, S)  # a view whenever (Hs, Ws) collapse; strides are passed
    tgt = target.reshape(B, C, T)
    if normalize_features:
        inv_src, inv_tgt = correlation_inverse_norm(src, eps), correlation_inverse_norm(tgt, eps)
    block_s = fused_block_s(S)
    split = normalize_matches and block_s is None
    block_s = block_s or SPLIT_BLOCK_S
    n_sblocks = triton.cdiv(S, block_s)
    if normalize_matches:
        inv_match = empty(B, T, dtype=acc_dtype, device=dev)
    sumsq = empty(B, n_sblocks, T, dtype=acc_dtype, device=dev) if split else None
    unused = out  # placeholder pointer for buffers a disabled code path never touches
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
        p_sumsq=sumsq if split else unused,
        p_inv_match=inv_match if normalize_matches else unused,
        S=S,
        T=T,
        C=C,
        **strides("s", src, "bcs"),
        **strides("t", tgt, "bct"),
        eps=eps,
        NORM_FEAT=normalize_features,
        RELU=relu,
        NORM_MATCH=normalize_matches,
        SPLIT=split,
        BLOCK_S=block_s,
        **dot_options(source.dtype, input_precision),
    )
    if split:
        correlation_normalize_matches_kernel[(triton.cdiv(T, RESCALE_BLOCK_T), n_sblocks, B)](
            p_out=out,
            p_sumsq=sumsq,
            p_inv_match=inv_match,
            S=S,
            T=T,
            n_sblocks=n_sblocks,
            eps=eps,
            BLOCK_S=block_s,
            BLOCK_T=RESCALE_BLOCK_T,
            FP64=source.dtype == torch.float64,
            num_warps=RESCALE_WARPS,
        )
    return out, inv_src, inv_tgt, inv_match


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
    """Gradient w.r.t. one feature map ``y``, launching :func:`correlation_bwd_features_kernel`.

    Args:
        x: ``(B, C, K)`` the other map; y: ``(B, C, N)``; e: ``(B, K, N)`` the gradient w.r.t. the
            pre-ReLU correlation, read ``e[k, n]``; any strides (views).
        x_scale, y_scale: inverse feature norms ``(B, K)``, ``(B, N)``; dot: the feature-norm dots
            ``(B, n, N)`` (partials over ``n``); all three unused without ``normalize_features``.
    Returns:
        ``(B, C, N)``, contiguous, in ``y``'s dtype.
    """
    B, C, N = y.shape
    K = x.shape[2]
    grad = empty(B, C, N, dtype=y.dtype, device=y.device)
    launch(
        correlation_bwd_features_kernel,
        lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(C, meta["BLOCK_C"]), B),
        name="correlation_bwd_features",
        device=y.device,
        sizes={"N": N, "K": K, "C": C, "dtype": dtype_name(y.dtype)},
        p_x=x,
        p_y=y,
        p_e=e,
        p_x_scale=x_scale if normalize_features else grad,
        p_y_scale=y_scale if normalize_features else grad,
        p_dot=dot if normalize_features else grad,
        p_grad=grad,
        N=N,
        K=K,
        C=C,
        n_dot=dot.shape[1] if normalize_features else 0,
        **strides("x", x, "bck"),
        **strides("y", y, "bcn"),
        **strides("e", e, "bkn"),
        NORM_FEAT=normalize_features,
        **dot_options(y.dtype, input_precision),
    )
    return grad


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
    if B * C * S * T == 0:  # nothing to reduce: the gradients are zero (or empty)
        grad_src = source.new_zeros((B, C, Hs, Ws)) if need_source else grad_src
        grad_tgt = target.new_zeros((B, C, Ht, Wt)) if need_target else grad_tgt
        return grad_src, grad_tgt
    src = source.reshape(B, C, S)
    tgt = target.reshape(B, C, T)
    g = grad.reshape(B, S, T)
    out = out.reshape(B, S, T)
    n_tblocks = triton.cdiv(T, PREP_BLOCK_T)
    dcorr = empty(B, S, T, dtype=source.dtype, device=dev) if (relu or normalize_matches) else g
    dot_src = empty(B, n_tblocks, S, dtype=acc_dtype, device=dev) if normalize_features else None
    dot_tgt = empty(B, 1, T, dtype=acc_dtype, device=dev) if normalize_features else None
    if relu or normalize_matches or normalize_features:
        correlation_bwd_prep_kernel[(n_tblocks, B)](
            p_grad=g,
            p_out=out,
            p_inv_match=inv_match if normalize_matches else out,
            p_dcorr=dcorr,
            p_dot_src=dot_src if normalize_features else out,
            p_dot_tgt=dot_tgt if normalize_features else out,
            S=S,
            T=T,
            **strides("g", g, "bst"),
            RELU=relu,
            NORM_MATCH=normalize_matches,
            NORM_FEAT=normalize_features,
            BLOCK_S=PREP_BLOCK_S,
            BLOCK_T=PREP_BLOCK_T,
            FP64=source.dtype == torch.float64,
            num_warps=PREP_WARPS,
        )
    if need_source:  # df_s[c, s] from x = target (k = t), e[t, s] = dc[s, t]
        e_src = dcorr.transpose(1, 2)
        grad_src = correlation_bwd_features(
            tgt, src, e_src, inv_target, inv_source, dot_src, normalize_features, input_precision
        ).view(B, C, Hs, Ws)
    if need_target:  # df_t[c, t] from x = source (k = s), e[s, t] = dc[s, t]
        grad_tgt = correlation_bwd_features(
            src, tgt, dcorr, inv_source, inv_target, dot_tgt, normalize_features, input_precision
        ).view(B, C, Ht, Wt)
    return grad_src, grad_tgt
