"""Fused correlation + OAC (kernels/correlation_oac.py) against the float64 unfused reference.

The reference is :func:`a2net.reference.correlation` (ReLU and match normalisation on) followed by
:func:`a2net.reference.offset_aware_correlation`, evaluated in float64 at the same (rounded)
inputs. Runs in the Triton interpreter on CPU. The interpreter has no bf16 ``tl.dot``, so under
the interpreter bf16 tiles are cast to fp32 before every dot (``DOT_FP32`` / ``OAC_FP32``); bf16
loads, stores and the fp32 epilogues are exercised, the native bf16 dots only compile (kernel
report). float64 runs through the same kernels (fp64 dots), which the gradcheck uses.

The weight gradient has two paths: from the ``relu(c)`` the forward saves (maps of at most
``SAVED_CORRELATION_MAX`` positions, every case here by default) and recomputing the correlation
(forced by lowering that threshold in ``recompute_weight_grad``).

Degenerate sizes are kept out of the *feature*-gradient comparison in 16/32-bit on purpose (as in
tests/test_kernel_correlation.py): with one source position (S=1) the match-normalised output is
``r / sqrt(r^2 + eps) ~ 1``, and with one channel (C=1) a normalised correlation column does not
depend on the target feature; the true gradient is then eps-sized, the difference of two O(1)
terms, which no fp32 evaluation resolves. Those sizes still check the output and the
weight/bias gradients, and run in float64 once with every gradient.
"""

from __future__ import annotations

import pytest
import torch
import triton

import a2net.kernels.correlation_oac as kernel_module
import a2net.kernels.offset_aware_correlation as oac_kernels
from a2net import reference
from a2net.ops import TRITON_CALLS, correlation, offset_aware_correlation
from a2net.ops.correlation_oac import correlation_oac
from tests.helpers import DEVICE, assert_close_to_reference

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}

# (B, (Hs, Ws, Ht, Wt), C, O, dtype, normalize_features): a covering list, not a product. C=17 and
# 40 end on a partial channel block (the masked tail), C=32/64 do not; O=130 takes two
# output-channel programs; widths 17-32 take 32-column blocks, 33-64 64-column ones, 70/66 two of
# them (three diagonals in dW); maps 5x7 vs 9x6 differ in both sizes; the paper's 15x15 once;
# bf16 from 17 columns on takes the 128x128 tiles.
CASES = [
    (1, (1, 1, 1, 1), 1, 1, torch.float64, True),
    (3, (1, 1, 1, 1), 17, 16, torch.float32, False),
    (3, (5, 7, 5, 7), 17, 16, torch.float32, True),
    (1, (5, 7, 5, 7), 64, 128, torch.float16, True),
    (3, (4, 6, 7, 3), 17, 1, torch.float32, False),
    (1, (4, 6, 7, 3), 64, 16, torch.bfloat16, True),
    (3, (7, 3, 4, 6), 1, 128, torch.float32, True),
    (1, (2, 9, 3, 20), 17, 16, torch.float16, False),
    (1, (3, 5, 4, 4), 17, 16, torch.bfloat16, False),
    (1, (2, 40, 1, 35), 17, 16, torch.float32, True),
    (20, (2, 3, 3, 2), 5, 130, torch.float32, True),
    (1, (15, 15, 15, 15), 64, 128, torch.float32, True),
    (2, (5, 7, 9, 6), 40, 16, torch.float32, True),
    (2, (5, 7, 9, 6), 32, 16, torch.bfloat16, True),
    (1, (2, 70, 3, 66), 17, 16, torch.float32, True),
]


def case_id(case) -> str:
    b, (hs, ws, ht, wt), c, o, dtype, norm = case
    return f"B{b}-{hs}x{ws}to{ht}x{wt}-C{c}-O{o}-{DTYPE_NAMES[dtype]}" + ("" if norm else "-nonorm")


def make_inputs(b, sizes, c, o, dtype, seed=0):
    hs, ws, ht, wt = sizes
    gen = torch.Generator(DEVICE).manual_seed(seed)
    source = torch.randn(b, c, hs, ws, generator=gen).to(dtype)
    target = torch.randn(b, c, ht, wt, generator=gen).to(dtype)
    weight = (torch.randn(o, hs + ht - 1, ws + wt - 1, generator=gen) / (hs * ws) ** 0.5).to(dtype)
    bias = torch.randn(o, generator=gen).to(dtype)
    grad = torch.randn(b, o, ht, wt, generator=gen).to(dtype)
    return source, target, weight, bias, grad


def unfused_reference(source, target, weight, bias, normalize_features=True):
    """float64 ``reference.correlation`` then ``reference.offset_aware_correlation``."""
    hs, ws = source.shape[2:]
    corr = reference.correlation(source.double(), target.double(), normalize_features, True, True)
    return reference.offset_aware_correlation(corr, weight.double(), None if bias is None else bias.double(), (hs, ws))


def reference_grads(inputs, grad, normalize_features):
    """float64 output and gradients of every input at the (rounded) inputs."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    out = unfused_reference(*leaves, normalize_features)
    wanted = [t for t in leaves if t is not None]
    return out.detach(), torch.autograd.grad(out, wanted, grad.double())


def check_case(b, sizes, c, o, dtype, norm, seed=0, bias=True):
    source, target, weight, bias_t, grad = make_inputs(b, sizes, c, o, dtype, seed)
    inputs = (source, target, weight, bias_t if bias else None)
    leaves = [t.requires_grad_() for t in inputs if t is not None]
    before = TRITON_CALLS["correlation_oac"], TRITON_CALLS["correlation_oac_backward"]
    out = correlation_oac(*inputs, normalize_features=norm, input_precision="ieee")
    grads = torch.autograd.grad(out, leaves, grad)
    after = TRITON_CALLS["correlation_oac"], TRITON_CALLS["correlation_oac_backward"]
    assert after == (before[0] + 1, before[1] + 1), "the Triton forward/backward did not run"
    ref, ref_grads = reference_grads(inputs, grad, norm)
    assert out.dtype == dtype
    assert_close_to_reference(out.detach(), ref, dtype, "output")
    hs, ws = sizes[:2]
    resolvable = dtype == torch.float64 or (hs * ws > 1 and c > 1)
    for name, g, ref_g in zip(("source", "target", "weight", "bias"), grads, ref_grads, strict=False):
        assert g.dtype == dtype and g.shape == ref_g.shape, name
        if name in ("source", "target") and not resolvable:
            assert torch.isfinite(g).all(), f"grad {name}: not finite"
            continue
        assert_close_to_reference(g, ref_g, dtype, f"grad {name}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_unfused_reference(triton_backend, case):
    check_case(*case)


@pytest.fixture
def recompute_weight_grad(monkeypatch):
    """The weight gradient recomputes the correlation (as above 32x32) instead of reading it."""
    monkeypatch.setattr(kernel_module, "SAVED_CORRELATION_MAX", 0)


@pytest.fixture
def narrow_blocks(monkeypatch):
    """16-column blocks for every width, so small maps span several blocks (and diagonals)."""
    monkeypatch.setattr(oac_kernels, "MAX_BLOCK_X", 16)
    monkeypatch.setattr(kernel_module, "WEIGHT_BLOCK_X", 16)


@pytest.mark.parametrize(
    "dtype,norm,bias",
    [(torch.float32, True, True), (torch.float16, True, False), (torch.float32, False, True)],
    ids=["fp32", "fp16-nobias", "fp32-nonorm"],
)  #
def test_several_column_blocks(triton_backend, narrow_blocks, dtype, norm, bias):
    check_case(2, (2, 20, 3, 35), 17, 16, dtype, norm, seed=1, bias=bias)


def test_matches_unfused_triton_ops(triton_backend):
    """The fused op equals the two Triton ops it replaces (within the fp32 tolerance)."""
    source, target, weight, bias, _ = make_inputs(2, (4, 5, 3, 6), 17, 16, torch.float32, seed=2)
    fused = correlation_oac(source, target, weight, bias, input_precision="ieee")
    corr = correlation(source, target, input_precision="ieee")
    unfused = offset_aware_correlation(corr, weight, bias, (4, 5), input_precision="ieee")
    assert_close_to_reference(fused, unfused.double(), torch.float32, "fused vs unfused Triton ops")


def test_zero_match_column(triton_backend):
    """A target position with no positive correlation: n_t = sqrt(eps), out = bias there."""
    source, target, weight, bias, grad = make_inputs(2, (3, 4, 2, 3), 5, 16, torch.float32, seed=3)
    target[:, :, 1, 2] = 0.0
    leaves = [t.requires_grad_() for t in (source, target, weight, bias)]
    out = correlation_oac(*leaves, input_precision="ieee")
    torch.testing.assert_close(out[:, :, 1, 2], bias.detach().expand(2, -1))
    grads = torch.autograd.grad(out, leaves, grad)
    _, ref_grads = reference_grads((source, target, weight, bias), grad, True)
    for name, g, ref_g in zip(("source", "target", "weight", "bias"), grads, ref_grads, strict=False):
        assert_close_to_reference(g, ref_g, torch.float32, f"grad {name}")


def test_only_requested_gradients(triton_backend, monkeypatch):
    """Frozen features (the paper): the feature-gradient kernels must not run."""
    source, target, weight, bias, grad = make_inputs(2, (3, 4, 5, 2), 6, 16, torch.float32, seed=4)

    def forbidden(*args, **kwargs):
        raise AssertionError("feature gradients computed although no feature map requires grad")

    monkeypatch.setattr(kernel_module, "correlation_oac_bwd_corr", forbidden)
    weight.requires_grad_(), bias.requires_grad_()
    out = correlation_oac(source, target, weight, bias, input_precision="ieee")
    dweight, dbias = torch.autograd.grad(out, (weight, bias), grad)
    _, ref_grads = reference_grads((source, target, weight, bias), grad, True)
    assert_close_to_reference(dweight, ref_grads[2], torch.float32, "grad weight")
    assert_close_to_reference(dbias, ref_grads[3], torch.float32, "grad bias")


@pytest.mark.parametrize("which", ["source", "target"])
def test_single_feature_gradient(triton_backend, which):
    source, target, weight, bias, grad = make_inputs(2, (4, 3, 3, 5), 6, 16, torch.float32, seed=5)
    needs = source if which == "source" else target
    needs.requires_grad_()
    (got,) = torch.autograd.grad(correlation_oac(source, target, weight, bias, input_precision="ieee"), (needs,), grad)
    _, ref_grads = reference_grads((source, target, weight, bias), grad, True)
    assert_close_to_reference(got, ref_grads[0 if which == "source" else 1], torch.float32, f"grad {which}")
    saved = torch.ops.a2net.correlation_oac(source, target, weight, bias, True, "ieee", False)
    assert saved[4].numel() == 0  # no correlation kept when not asked for
    grads = torch.ops.a2net.correlation_oac_backward(
        grad, source, target, weight, bias, *saved, True, "ieee", which == "source", which == "target", False, False
    )
    assert [g.numel() == 0 for g in grads] == [which != "source", which != "target", True, True]


@pytest.mark.parametrize("path", ["saved", "recompute"])
def test_weight_gradient_is_deterministic(triton_backend, monkeypatch, path):
    """Two backward runs give bit-identical weight gradients, with several chunks per group reduced."""
    if path == "recompute":
        monkeypatch.setattr(kernel_module, "SAVED_CORRELATION_MAX", 0)
    monkeypatch.setattr(oac_kernels, "WEIGHT_TARGET_PROGRAMS", 64)
    source, target, weight, bias, grad = make_inputs(5, (5, 7, 5, 7), 6, 16, torch.float32, seed=6)
    tiling = oac_kernels.weight_tiling(7, 7, 16, torch.float32) if path == "saved" else kernel_module.weight_tiling(16)
    schedule = oac_kernels.weight_schedule(5, (5, 7, 5, 7), tiling.bx, tiling.rt if path == "saved" else 1)
    assert schedule.n_chunks > len(schedule.group_chunks) - 1  # some group has several chunks
    weight.requires_grad_()
    runs = [torch.autograd.grad(correlation_oac(source, target, weight, bias), (weight,), grad)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1]), "two backward runs differ"
    _, ref_grads = reference_grads((source, target, weight, bias), grad, True)
    assert_close_to_reference(runs[0], ref_grads[2], torch.float32, "grad weight")


@pytest.mark.parametrize("path", ["saved", "recompute"])
@pytest.mark.parametrize(
    "sizes,c,dtype,norm",
    [
        ((5, 7, 9, 6), 17, torch.float32, True),
        ((2, 70, 3, 66), 8, torch.float32, False),
        ((3, 5, 4, 4), 16, torch.bfloat16, True),
    ],
    ids=["5x7to9x6", "2x70to3x66-nonorm", "bf16"],
)  #
def test_weight_gradient_paths(triton_backend, monkeypatch, path, sizes, c, dtype, norm):
    """The weight gradient from the saved relu(c) and from the recomputed correlation: each path
    runs (the other is forbidden) and matches the reference."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the {path} path should not call this")

    if path == "saved":
        monkeypatch.setattr(kernel_module, "correlation_oac_bwd_weight", forbidden)
    else:
        monkeypatch.setattr(kernel_module, "SAVED_CORRELATION_MAX", 0)
        monkeypatch.setattr(kernel_module, "offset_aware_correlation_bwd_weight", forbidden)
    source, target, weight, bias, grad = make_inputs(2, sizes, c, 16, dtype, seed=13)
    weight.requires_grad_()
    out = correlation_oac(source, target, weight, bias, normalize_features=norm, input_precision="ieee")
    (dweight,) = torch.autograd.grad(out, (weight,), grad)
    _, ref_grads = reference_grads((source, target, weight, bias), grad, norm)
    assert_close_to_reference(dweight, ref_grads[2], dtype, "grad weight")


def test_saved_correlation_layout(triton_backend):
    """The forward keeps relu(c) (no match normalisation) in 16-byte aligned rows, only when asked."""
    b, sizes = 2, (3, 4, 5, 6)
    source, target, weight, bias, _ = make_inputs(b, sizes, 5, 16, torch.float32, seed=14)
    *_, inv_match, corr = torch.ops.a2net.correlation_oac(source, target, weight, bias, True, "ieee", True)
    assert corr.shape == kernel_module.saved_correlation_shape(b, sizes) == (b, 12, 5, 16)
    expected = reference.correlation(source.double(), target.double(), True, True, False)
    torch.testing.assert_close(corr[..., :6].double(), expected, rtol=1e-5, atol=1e-6)
    assert not corr[..., 6:].any()
    half = [t.half() for t in (source, target, weight, bias)]
    assert torch.ops.a2net.correlation_oac(*half, False, "ieee", True)[4].numel() == 0  # fp16 unnormalised


def test_forward_tiling_follows_the_architecture(monkeypatch):
    """128-target 16-bit tiles only on sm_90 (wgmma), 64 targets elsewhere; the launcher asks the
    device's compute capability, and off a GPU takes sm_90's tiles."""
    for arch, targets in ((80, 64), (86, 64), (90, 128), (100, 64), (120, 64)):
        tiling = kernel_module.forward_tiling(60, 60, 128, torch.bfloat16, arch=arch)
        assert (tiling.targets, tiling.sources) == (targets, 128), arch
        assert kernel_module.forward_tiling(60, 60, 128, torch.float32, arch=arch).targets == 64
        assert kernel_module.forward_tiling(15, 15, 128, torch.bfloat16, arch=arch).targets == 64
    assert kernel_module.forward_tiling(60, 60, 128, torch.bfloat16).targets == 128  # DEFAULT_ARCH
    assert kernel_module.device_arch(torch.device("cpu")) == kernel_module.DEFAULT_ARCH == 90
    monkeypatch.setattr(kernel_module, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert kernel_module.device_arch(torch.device("cuda", 0)) == 86


def test_sm80_tiling_in_the_launcher(triton_backend, monkeypatch):
    """The launcher's tiles come from the device's architecture: sm_80's 64-target 16-bit tiles
    (two target rows of a 32-column block) give the reference's values and gradients."""
    seen = []
    tiling = kernel_module.forward_tiling

    def recording(*args, **kwargs):
        seen.append(tiling(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(kernel_module, "SAVED_CORRELATION_MAX", 0)  # saving takes 64x64 tiles anyway
    monkeypatch.setattr(kernel_module, "device_arch", lambda device: 80)
    monkeypatch.setattr(kernel_module, "forward_tiling", recording)
    check_case(1, (3, 20, 5, 18), 17, 16, torch.bfloat16, True, seed=17)
    assert seen and all((t.bx, t.rt, t.rs) == (32, 2, 4) for t in seen), seen
    assert tiling(20, 18, 16, torch.bfloat16, arch=90).rt == 4


def test_weight_schedule_is_balanced():
    """The chunks of the paper's shapes (GPU schedule): no program above 1.5x the mean work."""
    for b, size, tiling in (
        (32, 15, oac_kernels.weight_tiling(15, 15, 128, torch.bfloat16)),  # saved path at 15x15
        (32, 32, oac_kernels.weight_tiling(32, 32, 128, torch.bfloat16)),
        (8, 60, kernel_module.weight_tiling(128)),  # recompute path above 32x32
        (1, 33, kernel_module.weight_tiling(128)),
    ):
        rt = tiling.rt if size <= 32 else 1
        schedule = oac_kernels.weight_schedule(b, (size,) * 4, tiling.bx, rt, oac_kernels.GPU_WEIGHT_PROGRAMS)
        assert schedule.max_over_mean <= 1.5, (b, size, schedule.max_over_mean)
        assert int(schedule.chunks[:, 2].sum()) == schedule.items


def test_int64_offsets(triton_backend, monkeypatch):
    """The 64-bit index path (IDX64), forced on small maps, gives the same values and gradients."""
    monkeypatch.setattr(oac_kernels, "IDX64_THRESHOLD", 16)
    check_case(2, (3, 5, 4, 6), 17, 16, torch.float32, True, seed=15)
    monkeypatch.setattr(kernel_module, "SAVED_CORRELATION_MAX", 0)
    check_case(2, (3, 5, 4, 6), 17, 16, torch.float32, True, seed=16)


def test_int64_decision_and_unsupported_sizes():
    """Launcher decisions at real sizes (meta tensors, nothing allocated): the (B, S, T) gradient
    of 216x216 maps needs 64-bit offsets, 215x215 not; a map of 2^31 elements is refused."""
    meta = {"device": "meta"}
    assert oac_kernels.needs_int64(torch.empty(1, 216 * 216, 216 * 216, **meta))
    assert not oac_kernels.needs_int64(torch.empty(1, 215 * 215, 215 * 215, **meta))
    assert not oac_kernels.needs_int64(torch.empty(2**20, 15 * 15, 15, 15, **meta))  # the batch stride is 64-bit anyway
    huge = torch.empty(1, 2048, 1024, 1024, **meta)
    with pytest.raises(ValueError, match="source"):
        kernel_module.correlation_oac_fwd(huge, huge, torch.empty(8, 2047, 2047, **meta), None, True, "ieee", 1e-6)


def test_empty_batch(triton_backend):
    source, target, weight, bias, _ = make_inputs(0, (3, 4, 5, 2), 6, 16, torch.float32)
    leaves = [t.requires_grad_() for t in (source, target, weight, bias)]
    before = TRITON_CALLS["correlation_oac"]
    out = correlation_oac(*leaves)
    assert TRITON_CALLS["correlation_oac"] == before + 1
    assert out.shape == (0, 16, 5, 2)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    assert [g.shape for g in grads] == [t.shape for t in leaves]
    assert not grads[2].any() and not grads[3].any()


def test_non_contiguous_inputs(triton_backend):
    b, (hs, ws, ht, wt), c, o = 2, (4, 5, 3, 6), 6, 16
    gen = torch.Generator(DEVICE).manual_seed(7)
    source = torch.randn(b, c, hs, ws, generator=gen).to(memory_format=torch.channels_last)
    target = torch.randn(b, 2 * c, ht, 2 * wt, generator=gen)[:, ::2, :, ::2]
    weight = torch.randn(o, hs + ht - 1, 2 * (ws + wt - 1), generator=gen)[:, :, ::2]
    bias = torch.randn(2 * o, generator=gen)[::2]
    grad = torch.randn(b, ht, wt, o, generator=gen).permute(0, 3, 1, 2)
    inputs = (source, target, weight, bias)
    assert not any(t.is_contiguous() for t in inputs + (grad,))
    leaves = [t.requires_grad_() for t in inputs]
    out = correlation_oac(*leaves, input_precision="ieee")
    grads = torch.autograd.grad(out, leaves, grad)
    ref, ref_grads = reference_grads(inputs, grad, True)
    assert_close_to_reference(out.detach(), ref, torch.float32, "output")
    for name, g, ref_g in zip(("source", "target", "weight", "bias"), grads, ref_grads, strict=False):
        assert_close_to_reference(g, ref_g, torch.float32, f"grad {name}")


def test_channels_last_maps_are_read_in_place():
    """Maps with unit channel stride (channels-last, or a permuted view of one) are not copied;
    NCHW maps are, to channels-last."""
    x = torch.randn(2, 8, 5, 6)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert kernel_module.channels_last(cl) is cl
    view = cl.transpose(2, 3)  # the authors' source layout: still channel-contiguous
    assert kernel_module.channels_last(view) is view
    copied = kernel_module.channels_last(x)
    assert copied.stride(1) == 1 and torch.equal(copied, x)


@pytest.mark.parametrize("layout", ["nchw", "strided", "transposed", "channels_last"])
def test_maps_are_copied_in_the_norm_pass(triton_backend, layout):
    """The forward's one pass over each map: an NCHW map (or a strided one whose (H, W) collapse)
    comes back channels-last from the kernel that computes its norms; a transposed NCHW map (no
    collapse) is copied first; a channels-last map is read in place. Odd sizes, NaN-poisoned
    buffers, float64 reference; then the whole op on such maps."""
    b, c, h, w = 3, 7, 5, 6
    gen = torch.Generator(DEVICE).manual_seed(11)
    base = torch.randn(b, 2 * c, h, 2 * w, generator=gen)
    x = {
        "nchw": base[:, :c, :, :w].contiguous(),
        "strided": base[:, ::2, :, ::2],
        "transposed": base[:, :c, :, :h].contiguous().transpose(2, 3)[:, :, :w],
        "channels_last": base[:, :c, :, :w].contiguous(memory_format=torch.channels_last),
    }[layout]
    inv, rows = kernel_module._channels_last_and_norms(x, True, 1e-6)
    assert rows.stride(1) == 1 and torch.equal(rows, x)
    assert (rows is x) == (layout == "channels_last")
    expected = (x.double().pow(2).sum(1) + 1e-6).rsqrt().reshape(b, -1)
    torch.testing.assert_close(inv.double(), expected, rtol=1e-6, atol=0)
    none, rows = kernel_module._channels_last_and_norms(x, False, 1e-6)
    assert none is None and torch.equal(rows, x)
    o = 16
    weight = torch.randn(o, 2 * x.shape[2] - 1, 2 * x.shape[3] - 1, generator=gen) / x.shape[2]
    out = correlation_oac(x, x.flip(0), weight, None, input_precision="ieee")
    assert_close_to_reference(out, unfused_reference(x, x.flip(0), weight, None), torch.float32, "output")


def test_expanded_grad(triton_backend):
    """``out.sum()`` sends a stride-0 gradient."""
    source, target, weight, bias, _ = make_inputs(2, (3, 4, 2, 5), 6, 16, torch.float32, seed=8)
    grad = torch.ones(()).expand(2, 16, 2, 5)
    leaves = [t.requires_grad_() for t in (source, target, weight, bias)]
    grads = torch.autograd.grad(correlation_oac(*leaves, input_precision="ieee"), leaves, grad)
    _, ref_grads = reference_grads((source, target, weight, bias), grad, True)
    for name, g, ref_g in zip(("source", "target", "weight", "bias"), grads, ref_grads, strict=False):
        assert_close_to_reference(g, ref_g, torch.float32, f"grad {name}")


def test_torch_backend_is_the_reference(torch_backend):
    source, target, weight, bias, _ = make_inputs(1, (2, 3, 3, 2), 4, 16, torch.float32)
    before = TRITON_CALLS["correlation_oac"]
    out = correlation_oac(source, target, weight, bias)
    assert TRITON_CALLS["correlation_oac"] == before
    torch.testing.assert_close(out, unfused_reference(source, target, weight, bias).float())


def test_gradcheck_float64(triton_backend):
    source, target, weight, bias, _ = make_inputs(1, (2, 3, 3, 2), 4, 3, torch.float64, seed=9)
    leaves = [t.requires_grad_() for t in (source, target, weight, bias)]
    before = TRITON_CALLS["correlation_oac_backward"]
    assert torch.autograd.gradcheck(correlation_oac, leaves, fast_mode=True)
    assert TRITON_CALLS["correlation_oac_backward"] > before


def test_opcheck_forward(triton_backend):
    source, target, weight, bias, _ = make_inputs(2, (3, 4, 2, 5), 6, 16, torch.float32, seed=10)
    for b_, norm, save in ((bias, True, True), (None, False, False)):
        args = [t.clone().requires_grad_() for t in (source, target, weight)]
        torch.library.opcheck(torch.ops.a2net.correlation_oac.default, (*args, b_, norm, "ieee", save))


def test_opcheck_backward(triton_backend):
    source, target, weight, bias, grad = make_inputs(2, (3, 4, 2, 5), 6, 16, torch.float32, seed=11)
    for b_, norm, save in ((bias, True, True), (None, False, False)):
        saved = torch.ops.a2net.correlation_oac(source, target, weight, b_, norm, "ieee", save)
        for need in ((True, True, True, b_ is not None), (False, False, True, False), (True, False, False, False)):
            torch.library.opcheck(
                torch.ops.a2net.correlation_oac_backward.default,
                (grad, source, target, weight, b_, *saved, norm, "ieee", *need),
            )


def test_compile_fullgraph(triton_backend):
    source, target, weight, bias, grad = make_inputs(2, (3, 4, 2, 5), 6, 16, torch.float32, seed=12)
    weight.requires_grad_(), bias.requires_grad_()
    compiled = torch.compile(correlation_oac, fullgraph=True, backend="aot_eager")
    before = TRITON_CALLS["correlation_oac"], TRITON_CALLS["correlation_oac_backward"]
    out = compiled(source, target, weight, bias, input_precision="ieee")
    dweight, dbias = torch.autograd.grad(out, (weight, bias), grad)
    assert TRITON_CALLS["correlation_oac"] > before[0] and TRITON_CALLS["correlation_oac_backward"] > before[1]
    ref, ref_grads = reference_grads((source, target, weight, bias), grad, True)
    assert_close_to_reference(out.detach(), ref, torch.float32)
    assert_close_to_reference(dweight, ref_grads[2], torch.float32, "grad weight")
    assert_close_to_reference(dbias, ref_grads[3], torch.float32, "grad bias")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"source": torch.randn(2, 3, 4)}, "source"),
        ({"target": torch.randn(2, 3, 4, 4, dtype=torch.float64)}, "target"),
        ({"target": torch.randn(2, 5, 4, 4)}, "target"),
        ({"source": torch.ones(2, 3, 4, 4, dtype=torch.int64)}, "source"),
        ({"weight": torch.randn(8, 7, 6)}, "weight"),
        ({"weight": torch.randn(8, 7)}, "weight"),
        ({"weight": torch.randn(8, 7, 7, dtype=torch.float64)}, "weight"),
        ({"bias": torch.randn(9)}, "bias"),
        ({"bias": torch.randn(8, dtype=torch.float16)}, "bias"),
        ({"input_precision": "fp16"}, "input_precision"),
        ({"normalize_features": 1}, "normalize_features"),
    ],
    ids=[
        "source-3d",
        "dtype",
        "channels",
        "int",
        "weight-grid",
        "weight-2d",
        "weight-dtype",
        "bias-length",
        "bias-dtype",
        "precision",
        "normalize-int",
    ],
)  #
def test_bad_inputs(triton_backend, kwargs, match):
    args = {
        "source": torch.randn(2, 3, 4, 4),
        "target": torch.randn(2, 3, 4, 4),
        "weight": torch.randn(8, 7, 7),
        "bias": torch.randn(8),
        **kwargs,
    }  #
    with pytest.raises(ValueError, match=match):
        correlation_oac(**args)


def test_roofline_costs_follow_the_launchers():
    """perf/roofline_oac.py: one entry per launch with the launchers' tiles; executed FLOPs cover
    the useful ones; the 60x60 bf16 forward's correlation tiles reach 64 FLOP per operand byte."""
    from perf import roofline_oac

    keys = {"name", "flops", "useful_flops", "hbm_bytes", "l2_bytes", "programs", "max_over_mean"}
    shape = {"B": 8, "C": 1024, "O": 128, "H": 60, "W": 60}
    for op in roofline_oac.OPS:
        for pass_ in ("fwd", "bwd"):
            need = {"source": True, "target": True, "corr": True}
            for entry in roofline_oac.costs(op, pass_, shape, "bf16", need):
                assert keys <= set(entry), entry["name"]
                assert entry["flops"] >= entry["useful_flops"] >= 0 and entry["programs"] >= 1, entry["name"]
                assert entry["max_over_mean"] >= 1.0 - 1e-9, entry["name"]
    (fwd,) = [e for e in roofline_oac.costs("correlation_oac", "fwd", shape, "bf16", {}) if e["tensor"]]
    tiling = kernel_module.forward_tiling(60, 60, 128, torch.bfloat16)
    assert fwd["programs"] == 8 * triton.cdiv(60, tiling.rt) * triton.cdiv(60, tiling.bx)
    assert fwd["correlation_intensity"] >= 64
    names = [e["name"] for e in roofline_oac.costs("correlation_oac", "bwd", {**shape, "H": 15, "W": 15}, "bf16", {})]
    assert "offset_aware_correlation_bwd_weight_kernel" in names  # the saved path at 15x15
    assert "correlation_oac_bwd_weight_kernel" in [
        e["name"] for e in roofline_oac.costs("correlation_oac", "bwd", shape, "bf16", {})
    ]
