"""What several kernel modules share: dot options, stride arguments, the dtype name of a table
key, and the ``@triton.jit`` helpers (the K-contiguous GEMM tile, 64-bit tile offsets).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2net.kernels._tuning import INTERPRET


def dot_options(dtype: torch.dtype, input_precision: str) -> dict:
    """``INPUT_PRECISION``, ``DOT_FP32`` and ``FP64`` constexprs of a kernel whose dots take
    operands of ``dtype``: ``input_precision`` only means something for fp32 operands (16/64-bit
    dots take "ieee"); the interpreter has no bf16 dot, so bf16 tiles go to fp32 there."""
    return {
        "INPUT_PRECISION": input_precision if dtype == torch.float32 else "ieee",
        "DOT_FP32": INTERPRET and dtype == torch.bfloat16,
        "FP64": dtype == torch.float64,
    }


def strides(prefix: str, x: torch.Tensor, dims: str) -> dict:
    """Stride arguments of ``x``'s leading dims named ``stride_<prefix><dim>``: ``strides("s", x,
    "bcyx")`` -> ``{"stride_sb": ..., "stride_sc": ..., "stride_sy": ..., "stride_sx": ...}``.
    ``dims`` may name fewer dims than ``x`` has (a trailing unit stride the kernel assumes)."""
    return {f"stride_{prefix}{d}": s for d, s in zip(dims, x.stride(), strict=False)}


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32``: the dtype entry of a tuned-config table key."""
    return str(dtype).removeprefix("torch.")


@triton.jit
def block_offset(i_block, BLOCK: tl.constexpr, row_length):
    """``i_block * BLOCK * row_length`` in 64 bits: the element offset of a tile's first row in a
    buffer whose size may pass 2^31 (``s * T`` with ``S * T >= 2^31`` from about 216x216 maps on).
    Offsets inside the tile stay 32-bit (``BLOCK * row_length < 2^31``): a tensor of 64-bit offsets
    costs two registers an element."""
    return (i_block * BLOCK).to(tl.int64) * row_length


@triton.jit
def dot_nt_tile(
    p_a,
    p_b,
    m_a,
    m_b,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    ACC: tl.constexpr,
):
    """``sum_k a[m, k] * b[n, k]`` -> ``[BM, BN]`` in ``ACC``, both operands K-contiguous.

    ``p_a`` ``[BM, BK]`` and ``p_b`` ``[BN, BK]`` point at ``k = 0`` of rows whose ``k`` stride is 1;
    ``m_a``/``m_b`` mask rows (masked ones give 0). K-contiguous rows are what makes both operands
    K-major for Hopper's ``wgmma`` (tf32 takes no other layout) and lets the pipelined loads be
    16-byte ``cp.async`` when rows are 16-byte aligned. ``EVEN_K`` (``K % BLOCK_K == 0``): no
    channel mask, so a row mask is constant along the vector and the loads stay 16 bytes wide.
    """
    o_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            b_a = tl.load(p_a, mask=m_a[:, None], other=0.0)  # [BM, BK]
            b_b = tl.load(p_b, mask=m_b[:, None], other=0.0)  # [BN, BK]
        else:
            m_k = (k0 + o_k) < K
            b_a = tl.load(p_a, mask=m_a[:, None] & m_k[None, :], other=0.0)
            b_b = tl.load(p_b, mask=m_b[:, None] & m_k[None, :], other=0.0)
        if DOT_FP32:  # the interpreter has no bf16 dot
            b_a, b_b = b_a.to(tl.float32), b_b.to(tl.float32)
        acc = tl.dot(b_a, tl.trans(b_b), acc, input_precision=INPUT_PRECISION, out_dtype=ACC)
        p_a += BLOCK_K
        p_b += BLOCK_K
    return acc
