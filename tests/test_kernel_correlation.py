"""Triton 4D correlation (kernels/correlation.py) against the float64 reference.

Runs in the Triton interpreter on CPU. fp16 and fp32 run the kernels as compiled for a GPU. The
interpreter has no bf16 ``tl.dot`` (it returns garbage), so under the interpreter bf16 tiles are
cast to fp32 before the dot (``DOT_FP32``); bf16 loads, stores and fp32 epilogues are exercised,
the native bf16 dot only compiles (kernel report). float64 works (the kernels then accumulate in
fp64), which the gradcheck uses.

Degenerate settings are kept out of the gradient comparison on purpose: with C=1 and either
normalisation (normalised features are +-1; a normalised column of ``x_s * y_t`` does not depend
on ``y_t``) or with S=1 and ``normalize_matches`` (the output is r/sqrt(r^2+eps) ~ 1), the true
gradient is eps-sized, the difference of two O(1) terms, which no fp32 evaluation resolves to
1e-5. Those sizes run with the other flags.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import a2net.kernels.correlation as kernel_module
from a2net import reference
from a2net.kernels._common import block_offset
from a2net.ops import TRITON_CALLS
from a2net.ops.correlation import correlation
from tests.helpers import DEVICE, assert_close_to_reference

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
FLAGS = {  # name -> (normalize_features, relu, normalize_matches)
    "all": (True, True, True),
    "none": (False, False, False),
    "feat": (True, False, False),
    "relu": (False, True, False),
    "match": (False, False, True),
    "feat-relu": (True, True, False),
    "feat-match": (True, False, True),
    "relu-match": (False, True, True),
}

# (B, (Hs, Ws, Ht, Wt), C, dtype, flags): a covering list, not the cartesian product. C=64 spans
# two channel blocks, C=17 ends on a partial one; 17x16 (S=272 > MAX_FUSED_S) takes the split
# match normalisation at its natural size; 15x15 is the paper's map, once.
CASES = [
    (1, (1, 1, 1, 1), 1, torch.float32, "relu"),
    (3, (1, 1, 1, 1), 17, torch.float16, "feat-relu"),
    (3, (5, 7, 5, 7), 17, torch.float32, "all"),
    (3, (5, 7, 5, 7), 64, torch.float16, "all"),
    (1, (5, 7, 5, 7), 1, torch.bfloat16, "relu"),
    (1, (5, 7, 5, 7), 17, torch.float32, "feat-relu"),
    (3, (4, 6, 7, 3), 17, torch.float32, "none"),
    (1, (4, 6, 7, 3), 64, torch.float32, "feat-match"),
    (3, (4, 6, 7, 3), 64, torch.bfloat16, "all"),
    (1, (4, 6, 7, 3), 17, torch.float16, "match"),
    (3, (4, 6, 7, 3), 17, torch.float32, "feat"),
    (3, (7, 3, 4, 6), 1, torch.float32, "none"),
    (1, (7, 3, 4, 6), 64, torch.float32, "relu-match"),
    (3, (17, 16, 3, 5), 17, torch.float16, "feat-match"),
    (1, (17, 16, 3, 5), 17, torch.float32, "all"),
    (1, (15, 15, 15, 15), 64, torch.float32, "all"),
]


def case_id(case) -> str:
    b, (hs, ws, ht, wt), c, dtype, flags = case
    return f"B{b}-{hs}x{ws}to{ht}x{wt}-C{c}-{DTYPE_NAMES[dtype]}-{flags}"


def make_inputs(b, sizes, c, dtype, seed=0):
    hs, ws, ht, wt = sizes
    gen = torch.Generator(DEVICE).manual_seed(seed)
    source = torch.randn(b, c, hs, ws, generator=gen).to(dtype)
    target = torch.randn(b, c, ht, wt, generator=gen).to(dtype)
    grad = torch.randn(b, hs * ws, ht, wt, generator=gen).to(dtype)
    return source, target, grad


def reference_grads(source, target, grad, flags):
    """float64 reference output and gradients at the (rounded) inputs."""
    sd = source.detach().double().requires_grad_()
    td = target.detach().double().requires_grad_()
    out = reference.correlation(sd, td, *flags)
    ds, dt = torch.autograd.grad(out, (sd, td), grad.double())
    return out.detach(), ds, dt


def check_against_reference(source, target, grad, dtype, flags):
    source = source.detach().requires_grad_()
    target = target.detach().requires_grad_()
    before = TRITON_CALLS["correlation"], TRITON_CALLS["correlation_backward"]
    out = correlation(source, target, *flags, input_precision="ieee")
    ds, dt = torch.autograd.grad(out, (source, target), grad)
    after = TRITON_CALLS["correlation"], TRITON_CALLS["correlation_backward"]
    assert after == (before[0] + 1, before[1] + 1), "the Triton forward/backward did not run"
    assert out.dtype == dtype and ds.dtype == dtype and dt.dtype == dtype
    ref_out, ref_ds, ref_dt = reference_grads(source, target, grad, flags)
    assert_close_to_reference(out.detach(), ref_out, dtype, "output")
    assert_close_to_reference(ds, ref_ds, dtype, "dsource")
    assert_close_to_reference(dt, ref_dt, dtype, "dtarget")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(triton_backend, case):
    b, sizes, c, dtype, flags = case
    source, target, grad = make_inputs(b, sizes, c, dtype)
    check_against_reference(source, target, grad, dtype, FLAGS[flags])


@pytest.fixture(params=["rescale", "recompute"])
def small_split(request, monkeypatch):
    """Split the source dimension into 16-row blocks, so that small maps take the split match
    normalisation (several blocks and a partial last one), by either design (forced: the launcher
    picks by the channel count, :func:`kernel_module.recompute_matches`)."""
    monkeypatch.setattr(kernel_module, "MAX_FUSED_S", 8)
    monkeypatch.setattr(kernel_module, "SPLIT_BLOCK_S", 16)
    monkeypatch.setattr(kernel_module, "recompute_matches", lambda *args: request.param == "recompute")
    return request.param


@pytest.mark.parametrize(
    "dtype,flags",
    [
        (torch.float32, "all"),
        (torch.float32, "match"),
        (torch.float16, "relu-match"),
        (torch.bfloat16, "all"),
    ],
    ids=["fp32-all", "fp32-match", "fp16-relu-match", "bf16-all"],
)
def test_split_match_normalization(triton_backend, small_split, dtype, flags):
    source, target, grad = make_inputs(3, (5, 7, 4, 6), 17, dtype, seed=1)
    check_against_reference(source, target, grad, dtype, FLAGS[flags])


def test_split_zero_blocks(triton_backend, small_split):
    """A source block whose ReLU'd values are all 0 (partial norm 0) and an all-zero column."""
    source, target, grad = make_inputs(2, (5, 7, 3, 3), 3, torch.float32, seed=2)
    target = target.abs()
    source.view(2, 3, -1)[:, :, :16] = -source.view(2, 3, -1)[:, :, :16].abs()  # block 0: all c < 0
    target.view(2, 3, -1)[:, :, 4] = 0.0  # column 4 is 0 everywhere: n_t = sqrt(eps)
    check_against_reference(source, target, grad, torch.float32, FLAGS["relu-match"])


def test_split_deterministic(triton_backend, small_split):
    source, target, _ = make_inputs(2, (5, 7, 5, 7), 17, torch.float32, seed=3)
    first = correlation(source, target)
    assert torch.equal(first, correlation(source, target))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_split_odd_sizes_both_designs(triton_backend, small_split, dtype):
    """Both split designs at odd sizes: 37 sources (three 16-row blocks, the last partial) against
    5x3 targets, 3 channels (one partial channel block); without feature normalisation the
    correlations pass fp16's range (~1e5 > 65504), which neither design may store unnormalised."""
    source, target, grad = make_inputs(3, (37, 1, 5, 3), 3, dtype, seed=12)
    source, target = source * 200, target * 200
    assert (source.double().flatten(2).transpose(1, 2) @ target.double().flatten(2)).max() > 65504
    check_against_reference(source, target, grad, dtype, FLAGS["relu-match"])
    check_against_reference(source, target, grad, dtype, FLAGS["all"])


def test_empty_batch(triton_backend):
    source = torch.randn(0, 5, 3, 4, requires_grad=True)
    target = torch.randn(0, 5, 2, 3, requires_grad=True)
    before = TRITON_CALLS["correlation"]
    out = correlation(source, target)
    assert TRITON_CALLS["correlation"] == before + 1
    assert out.shape == (0, 12, 2, 3)
    out.sum().backward()
    assert source.grad.shape == source.shape and target.grad.shape == target.shape


def test_non_contiguous(triton_backend):
    gen = torch.Generator(DEVICE).manual_seed(4)
    source = torch.randn(2, 6, 4, 5, generator=gen).to(memory_format=torch.channels_last)
    target = torch.randn(2, 12, 3, 8, generator=gen)[:, ::2, :, ::2]  # channel and column strides
    grad = torch.randn(2, 3, 4, 20, generator=gen).permute(0, 3, 1, 2)  # (B, S, Ht, Wt), s strided
    assert not (source.is_contiguous() or target.is_contiguous() or grad.is_contiguous())
    check_against_reference(source, target, grad, torch.float32, FLAGS["all"])


@pytest.mark.parametrize("flags", ["all", "feat"])
def test_expanded_grad(triton_backend, flags):
    """``out.sum()`` sends a stride-0 gradient; without ReLU/match normalisation the GEMMs read it
    directly."""
    source, target, _ = make_inputs(2, (4, 6, 7, 3), 17, torch.float32, seed=9)
    grad = torch.ones(()).expand(2, 24, 7, 3)
    check_against_reference(source, target, grad, torch.float32, FLAGS[flags])


@pytest.mark.parametrize("which", ["source", "target"])
def test_single_input_gradient(triton_backend, which):
    """Only the input that requires grad gets one; the backward op skips the other."""
    source, target, grad = make_inputs(2, (4, 6, 7, 3), 17, torch.float32, seed=5)
    needs = source if which == "source" else target
    needs.requires_grad_()
    before = TRITON_CALLS["correlation_backward"]
    out = correlation(source, target, input_precision="ieee")
    (got,) = torch.autograd.grad(out, (needs,), grad)
    assert TRITON_CALLS["correlation_backward"] == before + 1
    _, ref_ds, ref_dt = reference_grads(source, target, grad, FLAGS["all"])
    assert_close_to_reference(got, ref_ds if which == "source" else ref_dt, torch.float32, f"d{which}")
    saved = torch.ops.a2net.correlation(source.detach(), target.detach(), True, True, True, "ieee")
    need = (which == "source", which == "target")
    gs, gt = torch.ops.a2net.correlation_backward(
        grad, source.detach(), target.detach(), *saved, True, True, True, "ieee", *need
    )
    assert (gt if which == "source" else gs).numel() == 0


def test_triton_path_runs(triton_backend):
    source, target, _ = make_inputs(1, (2, 3, 3, 2), 4, torch.float32)
    before = TRITON_CALLS["correlation"]
    correlation(source, target)
    assert TRITON_CALLS["correlation"] == before + 1


def test_torch_backend_skips_triton(torch_backend):
    source, target, _ = make_inputs(1, (2, 3, 3, 2), 4, torch.float32)
    before = TRITON_CALLS["correlation"]
    out = correlation(source, target)
    assert TRITON_CALLS["correlation"] == before
    torch.testing.assert_close(out, reference.correlation(source, target))


def test_opcheck(triton_backend):
    source, target, grad = make_inputs(2, (3, 4, 2, 5), 6, torch.float32, seed=6)
    for flags in (FLAGS["all"], FLAGS["relu"]):
        torch.library.opcheck(
            torch.ops.a2net.correlation.default,
            (source.clone().requires_grad_(), target.clone().requires_grad_(), *flags, "ieee"),
        )
        saved = torch.ops.a2net.correlation(source, target, *flags, "ieee")
        for need in ((True, True), (True, False), (False, True)):
            torch.library.opcheck(
                torch.ops.a2net.correlation_backward.default,
                (grad, source, target, *saved, *flags, "ieee", *need),
            )


def test_gradcheck_float64(triton_backend):
    gen = torch.Generator(DEVICE).manual_seed(7)
    source = torch.randn(1, 4, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(1, 4, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    before = TRITON_CALLS["correlation_backward"]
    assert torch.autograd.gradcheck(correlation, (source, target))
    assert TRITON_CALLS["correlation_backward"] > before


def test_compile_fullgraph(triton_backend):
    source, target, grad = make_inputs(2, (3, 4, 2, 5), 6, torch.float32, seed=8)
    source.requires_grad_()
    compiled = torch.compile(correlation, fullgraph=True, backend="aot_eager")
    before = TRITON_CALLS["correlation"], TRITON_CALLS["correlation_backward"]
    out = compiled(source, target, input_precision="ieee")
    (ds,) = torch.autograd.grad(out, (source,), grad)
    assert TRITON_CALLS["correlation"] > before[0] and TRITON_CALLS["correlation_backward"] > before[1]
    ref_out, ref_ds, _ = reference_grads(source, target, grad, FLAGS["all"])
    assert_close_to_reference(out.detach(), ref_out, torch.float32)
    assert_close_to_reference(ds, ref_ds, torch.float32, "dsource")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"source": torch.randn(2, 3, 4)}, "source"),
        ({"target": torch.randn(2, 3, 4, 4, dtype=torch.float64)}, "target"),
        ({"target": torch.randn(2, 5, 4, 4)}, "target"),
        ({"target": torch.randn(3, 3, 4, 4)}, "target"),
        ({"source": torch.ones(2, 3, 4, 4, dtype=torch.int64)}, "source"),
        ({"input_precision": "fp16"}, "input_precision"),
        ({"relu": 1}, "relu"),
        ({"normalize_matches": None}, "normalize_matches"),
    ],
    ids=["source-3d", "dtype", "channels", "batch", "int", "precision", "relu-int", "matches-none"],
)
def test_bad_inputs(triton_backend, kwargs, match):
    args = {"source": torch.randn(2, 3, 4, 4), "target": torch.randn(2, 3, 4, 4), **kwargs}
    with pytest.raises(ValueError, match=match):
        correlation(**args)


@pytest.mark.parametrize(
    "normalize_matches,size,c,passes",
    [
        (True, (15, 15), 8, ("tile",)),
        (True, (17, 16), 8, ("partials", "final")),
        (True, (17, 16), 96, ("scaled", "rescale")),
        (False, (17, 16), 96, ("none",)),
    ],
    ids=["fused", "split-recompute", "split-rescale", "no-match-norm"],
)
def test_forward_passes(triton_backend, monkeypatch, normalize_matches, size, c, passes):
    """The passes the launcher runs: the column norm in the tile; above MAX_FUSED_S sources, with
    few channels (ieee fp32 dots: below 80) a GEMM pass writing only the column sums of squares
    then one recomputing the tile and writing the output once, with more a GEMM pass writing
    scaled tiles then the rescale pass."""
    seen = []
    real_launch, real_rescale = kernel_module.launch, kernel_module.correlation_normalize_matches_kernel

    def recording(kernel, grid, **kwargs):
        seen.append(kwargs["MATCH"])
        return real_launch(kernel, grid, **kwargs)

    class Rescale:
        def __getitem__(self, grid):
            seen.append("rescale")
            return real_rescale[grid]

    monkeypatch.setattr(kernel_module, "launch", recording)
    monkeypatch.setattr(kernel_module, "correlation_normalize_matches_kernel", Rescale())
    expected = tuple(p for p in passes if p != "rescale")
    assert kernel_module.match_mode(normalize_matches, size[0] * size[1], c, torch.float32, "ieee") == expected
    source, target, _ = make_inputs(1, (*size, 3, 5), c, torch.float32, seed=10)
    out = correlation(source, target, True, True, normalize_matches, input_precision="ieee")
    assert tuple(seen) == passes
    ref = reference.correlation(source.double(), target.double(), True, True, normalize_matches)
    assert_close_to_reference(out, ref, torch.float32)


def test_recompute_matches_model():
    """Recomputing the GEMM (2 C FLOPs an output element) against rescaling the output (2 e bytes
    an element): recomputation below C = peak_flops * e / HBM bandwidth, ~591 in tf32 and bf16."""
    for dtype, precision, limit in (
        (torch.float32, "tf32", 591),
        (torch.bfloat16, "tf32", 591),
        (torch.float16, "ieee", 591),
        (torch.float32, "ieee", 80),
        (torch.float32, "tf32x3", 197),
    ):
        assert kernel_module.recompute_matches(limit - 1, dtype, precision), (dtype, precision)
        assert not kernel_module.recompute_matches(limit + 1, dtype, precision), (dtype, precision)
    assert not kernel_module.recompute_matches(1024, torch.bfloat16, "tf32")  # the paper's C: rescale
    assert kernel_module.match_mode(True, 3600, 1024, torch.float32, "tf32") == ("scaled",)
    assert kernel_module.match_mode(True, 3600, 256, torch.float32, "tf32") == ("partials", "final")


def test_channels_last_maps_are_read_in_place():
    x = torch.randn(2, 6, 4, 5)
    assert kernel_module.channels_last_rows(x) is None  # NCHW: the launcher copies it
    rows = kernel_module.channels_last_rows(x.contiguous(memory_format=torch.channels_last))
    assert rows is not None and rows.shape == (2, 20, 6) and rows.stride(2) == 1
    assert torch.equal(rows, x.flatten(2).transpose(1, 2))


@triton.jit
def _block_offset_kernel(p_out, i_block, row_length, BLOCK: tl.constexpr):
    tl.store(p_out, block_offset(i_block, BLOCK, row_length))


def test_tile_offsets_are_64_bit(triton_backend):
    """The offset of a tile's first row (``s0 * T`` and the like) does not wrap at 2^31: the
    launchers' index type for maps of 216x216 and more, where ``S * T`` passes 2^31."""
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    _block_offset_kernel[(1,)](out, 70_000, 200_000, BLOCK=256)
    assert int(out) == 70_000 * 256 * 200_000 > 2**31


def test_huge_batch_stride(triton_backend):
    """Feature maps whose batch stride passes 2^31 elements (a view into a 4 GiB allocation of
    which only the used pages are touched): forward and backward match the reference."""
    try:
        storage = torch.empty(2**31 + 4096, dtype=torch.float16, device=DEVICE)
    except RuntimeError as exc:
        pytest.skip(f"cannot reserve 4 GiB of address space: {exc}")
    gen = torch.Generator(DEVICE).manual_seed(11)
    source = storage.as_strided((2, 5, 3, 4), (2**31, 12, 4, 1))
    source.copy_(torch.randn(2, 5, 3, 4, generator=gen))
    target = torch.randn(2, 5, 4, 3, generator=gen).to(torch.float16)
    grad = torch.randn(2, 12, 4, 3, generator=gen).to(torch.float16)
    check_against_reference(source, target, grad, torch.float16, FLAGS["all"])


@pytest.mark.parametrize(
    "shape,match",
    [((65536, 1, 1, 1), "batch size of at most 65535"), ((1, 1, 2897, 2897), "positions Hs")],
    ids=["batch", "positions"],
)
def test_sizes_beyond_the_kernels_grid(triton_backend, shape, match):
    source = torch.empty(shape, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        correlation(source, torch.empty(shape[:2] + (1, 1), device=DEVICE))
