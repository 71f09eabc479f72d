"""What several kernel modules share: dot options, stride arguments, the batch split of the
weight-gradient kernels, and the ``@triton.jit`` correlation tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2net.kernels._tuning import INTERPRET

#: Most partial copies of ``dW`` a weight-gradient kernel writes (one per batch split); bounds
#: their memory to ``MAX_BATCH_SPLIT`` times the weight's size in fp32.
MAX_BATCH_SPLIT = 16


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


def batch_split(b: int, n_programs: int, target_programs: int) -> tuple[int, int]:
    """``(n_split, batch_per_split)``: how many chunks a weight-gradient kernel with ``n_programs``
    programs per chunk splits a batch of ``b`` into, so that about ``target_programs`` programs
    run (at most :data:`MAX_BATCH_SPLIT` chunks, none empty). A function of the shapes only, so
    the summation order of the partial sums, hence the result, is too."""
    n_split = max(1, min(b, MAX_BATCH_SPLIT, target_programs // max(1, n_programs)))
    per_split = triton.cdiv(b, n_split)
    return triton.cdiv(b, per_split), per_split


@triton.jit
def correlation_tile(
    p_x,
    p_y,
    m_x,
    m_y,
    C,
    stride_xc,
    stride_yc,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    ACC: tl.constexpr,
):  #
    """``sum_c x[m, c] * y[c, n]`` -> ``[BM, BN]`` in ``ACC``; ``p_x`` ``[BM, BC]`` and ``p_y``
    ``[BC, BN]`` point at channel 0, ``m_x``/``m_y`` mask rows of x / columns of y (masked ones give 0)."""
    o_c = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        m_c = (c0 + o_c) < C
        b_x = tl.load(p_x, mask=m_x[:, None] & m_c[None, :], other=0.0)  # [BM, BC]
        b_y = tl.load(p_y, mask=m_c[:, None] & m_y[None, :], other=0.0)  # [BC, BN]
        if DOT_FP32:  # the interpreter has no bf16 dot
            b_x, b_y = b_x.to(tl.float32), b_y.to(tl.float32)
        acc = tl.dot(b_x, b_y, acc, input_precision=INPUT_PRECISION, out_dtype=ACC)
        p_x += BLOCK_C * stride_xc
        p_y += BLOCK_C * stride_yc
    return acc
