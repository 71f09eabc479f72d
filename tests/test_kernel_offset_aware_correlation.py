"""Triton OAC kernels (interpreter on CPU) against the float64 reference and the authors' construction.

bf16 runs too: the interpreter has no bf16 arithmetic, so the kernels' dots run on fp32 copies of
the bf16 blocks there (``UPCAST``), loads and stores stay bf16. float64 runs through the same
kernels (fp64 dots), which is what lets ``gradcheck`` go through the Triton path.
"""

from __future__ import annotations

import pytest
import torch

import a2net.kernels.offset_aware_correlation as oac_kernels
from a2net import reference
from a2net.official import authors_offset_aware_correlation
from a2net.ops import TRITON_CALLS, offset_aware_correlation
from tests.helpers import DEVICE, assert_close_to_reference

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}

# (B, (Hs, Ws, Ht, Wt), O, dtype, bias): a covering list, not a product. O in {1, 16, 128}; the
# paper's 15x15 -> 15x15 twice (interpreter time); widths 17-32 take 32-column blocks, 70/66 two
# 64-column blocks (three diagonals in dW); maps 5x7 vs 9x6 differ in both sizes.
CASES = [
    (1, (1, 1, 1, 1), 1, torch.float32, True),
    (3, (1, 1, 1, 1), 16, torch.float16, False),
    (3, (5, 7, 5, 7), 16, torch.float32, True),
    (1, (5, 7, 5, 7), 128, torch.float16, True),
    (3, (4, 6, 7, 3), 1, torch.float32, False),
    (1, (4, 6, 7, 3), 16, torch.bfloat16, True),
    (3, (7, 3, 4, 6), 128, torch.float32, True),
    (3, (2, 9, 3, 20), 16, torch.bfloat16, False),
    (3, (6, 5, 2, 18), 1, torch.float16, True),
    (1, (15, 15, 15, 15), 128, torch.float32, True),
    (3, (15, 15, 15, 15), 16, torch.bfloat16, True),
    # several channel blocks in every kernel, several batch elements per dW chunk
    (20, (2, 3, 3, 2), 130, torch.float32, True),
    (2, (5, 7, 9, 6), 16, torch.float32, True),
    (1, (2, 70, 3, 66), 16, torch.float32, False),
]


def _case_id(case) -> str:
    b, (hs, ws, ht, wt), o, dtype, bias = case
    return f"B{b}-{hs}x{ws}to{ht}x{wt}-O{o}-{DTYPE_NAMES[dtype]}" + ("" if bias else "-nobias")


def _inputs(b, sizes, o, dtype, bias=True, seed=0):
    hs, ws, ht, wt = sizes
    gen = torch.Generator(DEVICE).manual_seed(seed)
    corr = torch.rand(b, hs * ws, ht, wt, generator=gen).to(dtype)
    weight = (torch.randn(o, hs + ht - 1, ws + wt - 1, generator=gen) / (hs * ws) ** 0.5).to(dtype)
    bias_t = torch.randn(o, generator=gen).to(dtype) if bias else None
    return corr, weight, bias_t


def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _reference(corr, weight, bias, source_size, grad_out):
    """float64 reference output and gradients, from the same (rounded) inputs."""
    leaves = [t.detach().double().requires_grad_() for t in (corr, weight) + ((bias,) if bias is not None else ())]
    out = reference.offset_aware_correlation(leaves[0], leaves[1], leaves[2] if bias is not None else None, source_size)
    grads = torch.autograd.grad(out, leaves, grad_out.double())
    return out.detach(), grads


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_output_and_gradients_match_reference(triton_backend, case):
    b, sizes, o, dtype, has_bias = case
    corr, weight, bias = _inputs(b, sizes, o, dtype, has_bias)
    leaves = [t.requires_grad_() for t in (corr, weight, bias) if t is not None]
    out = offset_aware_correlation(corr, weight, bias, sizes[:2], input_precision=_precision(dtype))
    grad_out = torch.randn(out.shape, generator=torch.Generator(DEVICE).manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, leaves, grad_out)

    ref, ref_grads = _reference(corr, weight, bias, sizes[:2], grad_out)
    assert out.dtype == dtype
    assert_close_to_reference(out.detach(), ref, dtype, "output")
    for name, grad, ref_grad in zip(("corr", "weight", "bias"), grads, ref_grads, strict=False):
        assert grad.dtype == dtype
        assert_close_to_reference(grad, ref_grad, dtype, f"grad {name}")


def test_matches_authors_construction(triton_backend):
    corr, weight, bias = _inputs(2, (4, 6, 5, 3), 16, torch.float32)
    out = offset_aware_correlation(corr, weight, bias, (4, 6), input_precision="ieee")
    expected = authors_offset_aware_correlation(corr.double(), weight.double(), bias.double(), (4, 6))
    assert_close_to_reference(out, expected, torch.float32, "output vs the authors' construction")


def test_triton_path_runs(triton_backend):
    corr, weight, bias = _inputs(2, (3, 4, 5, 2), 16, torch.float32)
    weight.requires_grad_()
    before = (TRITON_CALLS["offset_aware_correlation"], TRITON_CALLS["offset_aware_correlation_backward"])
    offset_aware_correlation(corr, weight, bias, (3, 4)).sum().backward()
    after = (TRITON_CALLS["offset_aware_correlation"], TRITON_CALLS["offset_aware_correlation_backward"])
    assert after == (before[0] + 1, before[1] + 1), "the Triton forward/backward did not run"


def test_only_requested_gradients_are_computed(triton_backend, monkeypatch):
    """In the model corr comes from frozen features: the dcorr kernel must not run."""
    corr, weight, bias = _inputs(2, (3, 4, 5, 2), 16, torch.float32)
    weight.requires_grad_()

    def forbidden(*args, **kwargs):
        raise AssertionError("dcorr computed although corr does not require grad")

    monkeypatch.setattr(oac_kernels, "offset_aware_correlation_bwd_corr", forbidden)
    monkeypatch.setattr(oac_kernels, "offset_aware_correlation_bwd_bias", forbidden)
    out = offset_aware_correlation(corr, weight, bias, (3, 4), input_precision="ieee")
    grad_out = torch.randn(out.shape)
    (dweight,) = torch.autograd.grad(out, (weight,), grad_out)
    _, (_, ref_dweight, _) = _reference(corr, weight, bias, (3, 4), grad_out)
    assert_close_to_reference(dweight, ref_dweight, torch.float32, "grad weight")


def test_weight_gradient_is_deterministic(triton_backend, monkeypatch):
    """Two backward runs give bit-identical gradients, with the dW items cut into several chunks
    per (offset row, diagonal) group (partial sums reduced in a fixed order)."""
    monkeypatch.setattr(oac_kernels, "WEIGHT_TARGET_PROGRAMS", 64)
    corr, weight, bias = _inputs(5, (5, 7, 5, 7), 16, torch.float32)
    tiling = oac_kernels.weight_tiling(7, 7, 16, torch.float32, padded=False)
    schedule = oac_kernels.weight_schedule(5, (5, 7, 5, 7), tiling.bx, tiling.rt)
    assert schedule.n_chunks > len(schedule.group_chunks) - 1  # some group has several chunks
    leaves = (weight.requires_grad_(), bias.requires_grad_())
    runs = []
    for _ in range(2):
        out = offset_aware_correlation(corr, weight, bias, (5, 7))
        runs.append(torch.autograd.grad(out, leaves, torch.ones_like(out)))
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second), "two backward runs differ"


def test_int64_offsets(triton_backend, monkeypatch):
    """The 64-bit index path (IDX64), forced on small maps, gives the same values and gradients."""
    monkeypatch.setattr(oac_kernels, "IDX64_THRESHOLD", 16)
    corr, weight, bias = _inputs(2, (3, 5, 4, 6), 16, torch.float32)
    assert oac_kernels.needs_int64(corr)
    leaves = [t.requires_grad_() for t in (corr, weight, bias)]
    out = offset_aware_correlation(corr, weight, bias, (3, 5), input_precision="ieee")
    grad_out = torch.randn(out.shape, generator=torch.Generator(DEVICE).manual_seed(2))
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref, ref_grads = _reference(corr, weight, bias, (3, 5), grad_out)
    assert_close_to_reference(out.detach(), ref, torch.float32, "output")
    for name, grad, ref_grad in zip(("corr", "weight", "bias"), grads, ref_grads, strict=True):
        assert_close_to_reference(grad, ref_grad, torch.float32, f"grad {name}")


def test_padded_weight_layout():
    """Every weight entry sits at (dy + RT - 1, dx + n_xt*BX - Wt) of the padded copy, zeros around."""
    sizes = (5, 7, 9, 6)
    weight = torch.randn(3, 13, 12)
    tiling = oac_kernels.oac_tiling(7, 6, 3)
    left = tiling.bx - 6
    for channels_last in (False, True):
        wpad = oac_kernels.padded_weight(weight, sizes, tiling, channels_last)
        inner = wpad.permute(0, 2, 1) if channels_last else wpad  # (rows, O, cols)
        assert inner.shape[1] % tiling.block_o == 0 and inner.shape[2] % 16 == 0
        body = inner[tiling.rt - 1 : tiling.rt - 1 + 13, :3, left : left + 12]
        torch.testing.assert_close(body, weight.permute(1, 0, 2))
        assert torch.count_nonzero(inner) == torch.count_nonzero(weight)


def test_empty_batch(triton_backend):
    corr, weight, bias = _inputs(0, (3, 4, 5, 2), 16, torch.float32)
    leaves = (corr.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    out = offset_aware_correlation(corr, weight, bias, (3, 4))
    assert out.shape == (0, 16, 5, 2)
    dcorr, dweight, dbias = torch.autograd.grad(out, leaves, torch.ones_like(out))
    assert dcorr.shape == corr.shape
    assert torch.equal(dweight, torch.zeros_like(weight)) and torch.equal(dbias, torch.zeros_like(bias))


def test_non_contiguous_inputs(triton_backend):
    b, (hs, ws, ht, wt), o = 3, (4, 5, 6, 3), 16
    gen = torch.Generator(DEVICE).manual_seed(3)
    # corr stored (B, Wt, Ht, S) and viewed as (B, S, Ht, Wt); weight and bias every other element
    corr = torch.rand(b, wt, ht, hs * ws, generator=gen).permute(0, 3, 2, 1)
    weight = torch.randn(o, hs + ht - 1, 2 * (ws + wt - 1), generator=gen)[:, :, ::2]
    bias = torch.randn(2 * o, generator=gen)[::2]
    assert not (corr.is_contiguous() or weight.is_contiguous() or bias.is_contiguous())
    leaves = (corr.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    out = offset_aware_correlation(corr, weight, bias, (hs, ws), input_precision="ieee")
    grad_out = torch.randn(b, ht, wt, o, generator=gen).permute(0, 3, 1, 2)  # non-contiguous too
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref, ref_grads = _reference(corr, weight, bias, (hs, ws), grad_out)
    assert_close_to_reference(out.detach(), ref, torch.float32, "output")
    for name, grad, ref_grad in zip(("corr", "weight", "bias"), grads, ref_grads, strict=False):
        assert_close_to_reference(grad, ref_grad, torch.float32, f"grad {name}")


def test_gradcheck_float64(triton_backend):
    corr, weight, bias = _inputs(2, (3, 2, 2, 3), 3, torch.float64)
    leaves = (corr.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    before = TRITON_CALLS["offset_aware_correlation_backward"]
    assert torch.autograd.gradcheck(lambda c, w, b_: offset_aware_correlation(c, w, b_, (3, 2)), leaves)
    assert TRITON_CALLS["offset_aware_correlation_backward"] > before


def test_opcheck_forward(triton_backend):
    corr, weight, bias = _inputs(2, (3, 4, 5, 2), 16, torch.float32)
    corr.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()
    for b_ in (bias, None):
        torch.library.opcheck(torch.ops.a2net.offset_aware_correlation.default, (corr, weight, b_, 3, 4, "ieee"))


def test_opcheck_backward(triton_backend):
    corr, weight, _ = _inputs(2, (3, 4, 5, 2), 16, torch.float32)
    grad_out = torch.randn(2, 16, 5, 2)
    for flags in ((True, True, True), (False, True, True), (True, False, False)):
        torch.library.opcheck(
            torch.ops.a2net.offset_aware_correlation_backward.default,
            (grad_out, corr, weight, 3, 4, "ieee", *flags),
        )


def test_compiles_without_graph_breaks(triton_backend):
    corr, weight, bias = _inputs(2, (3, 4, 5, 2), 16, torch.float32)
    weight.requires_grad_(), bias.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(c, w, b_):
        return offset_aware_correlation(c, w, b_, (3, 4), input_precision="ieee").square().sum()

    before = TRITON_CALLS["offset_aware_correlation_backward"]
    dweight, dbias = torch.autograd.grad(loss(corr, weight, bias), (weight, bias))
    assert TRITON_CALLS["offset_aware_correlation_backward"] == before + 1
    ref = reference.offset_aware_correlation(corr, weight, bias, (3, 4)).square().sum()
    ref_dweight, ref_dbias = torch.autograd.grad(ref, (weight, bias))
    assert_close_to_reference(dweight, ref_dweight, torch.float32, "grad weight (compiled)")
    assert_close_to_reference(dbias, ref_dbias, torch.float32, "grad bias (compiled)")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c, w, b: (c[0], w, b, (3, 4)), "corr"),
        (lambda c, w, b: (c, w, b, (2, 4)), "corr"),
        (lambda c, w, b: (c, w[:, 1:], b, (3, 4)), "weight"),
        (lambda c, w, b: (c, w.double(), b, (3, 4)), "weight"),
        (lambda c, w, b: (c, w, b[1:], (3, 4)), "bias"),
        (lambda c, w, b: (c, w, b.half(), (3, 4)), "bias"),
        (lambda c, w, b: (c.long(), w, b, (3, 4)), "corr"),
        (lambda c, w, b: (c, w, b, (3, 0)), "source_size"),
        (lambda c, w, b: (c, w, b, "3x4"), "source_size"),
    ],
    ids=[
        "corr-3d",
        "source-mismatch",
        "weight-grid",
        "weight-dtype",
        "bias-length",
        "bias-dtype",
        "corr-int",
        "size-zero",
        "size-str",
    ],
)  #
def test_bad_inputs_raise(triton_backend, change, match):
    corr, weight, bias = _inputs(2, (3, 4, 5, 2), 16, torch.float32)
    with pytest.raises(ValueError, match=match):
        offset_aware_correlation(*change(corr, weight, bias))


def test_bad_input_precision_raises(triton_backend):
    corr, weight, bias = _inputs(2, (3, 4, 5, 2), 16, torch.float32)
    with pytest.raises(ValueError, match="input_precision"):
        offset_aware_correlation(corr, weight, bias, (3, 4), input_precision="fp16")
