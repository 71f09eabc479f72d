"""Triton softmax attention pooling (kernels/attention_pool.py) against the float64 reference.

Runs in the Triton interpreter on CPU. bf16 works there (the kernels load bf16 and compute in
fp32), and so does float64 (the kernels then accumulate in fp64), which the gradcheck uses.
"""

from __future__ import annotations

import pytest
import torch

from a2net import reference
from a2net.ops import TRITON_CALLS
from a2net.ops.attention_pool import attention_pool
from tests.helpers import DEVICE, assert_close_to_reference

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# (B, H, W, C, dtype): a covering list, not the cartesian product. 9x9 with C=128 is the model's
# shape; 15x15 (225 positions, several position blocks) appears once; C=128 spans several channel
# blocks in both kernels, C=72 ends on a partial one; 1x1 has a single position (zero logit
# gradient).
CASES = [
    (1, 1, 1, 1, torch.float32),
    (3, 1, 1, 128, torch.float16),
    (3, 5, 7, 17, torch.float32),
    (3, 5, 7, 17, torch.float16),
    (3, 5, 7, 1, torch.bfloat16),
    (1, 9, 9, 128, torch.float32),
    (3, 9, 9, 128, torch.float16),
    (1, 9, 9, 128, torch.bfloat16),
    (3, 9, 9, 1, torch.float32),
    (1, 4, 6, 17, torch.bfloat16),
    (3, 4, 6, 72, torch.float32),
    (1, 15, 15, 17, torch.float32),
]


def case_id(case) -> str:
    b, h, w, c, dtype = case
    return f"B{b}-{h}x{w}-C{c}-{DTYPE_NAMES[dtype]}"


def make_inputs(b, h, w, c, dtype, scale=3.0, seed=0):
    gen = torch.Generator(DEVICE).manual_seed(seed)
    logits = (scale * torch.randn(b, 1, h, w, generator=gen)).to(dtype)
    values = torch.randn(b, c, h, w, generator=gen).to(dtype)
    grad = torch.randn(b, c, generator=gen).to(dtype)
    return logits, values, grad


def reference_grads(logits, values, grad):
    """float64 reference output and gradients at the (rounded) inputs."""
    ld = logits.detach().double().requires_grad_()
    vd = values.detach().double().requires_grad_()
    out = reference.attention_pool(ld, vd)
    dl, dv = torch.autograd.grad(out, (ld, vd), grad.double())
    return out.detach(), dl, dv


def check_against_reference(logits, values, grad, dtype):
    logits = logits.detach().requires_grad_()
    values = values.detach().requires_grad_()
    before = TRITON_CALLS["attention_pool"], TRITON_CALLS["attention_pool_backward"]
    out = attention_pool(logits, values)
    dl, dv = torch.autograd.grad(out, (logits, values), grad)
    after = TRITON_CALLS["attention_pool"], TRITON_CALLS["attention_pool_backward"]
    assert after == (before[0] + 1, before[1] + 1), "the Triton forward/backward did not run"
    assert out.dtype == dtype and dl.dtype == dtype and dv.dtype == dtype
    ref_out, ref_dl, ref_dv = reference_grads(logits, values, grad)
    assert_close_to_reference(out.detach(), ref_out, dtype, "output")
    assert_close_to_reference(dl, ref_dl, dtype, "dlogits")
    assert_close_to_reference(dv, ref_dv, dtype, "dvalues")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(triton_backend, case):
    b, h, w, c, dtype = case
    check_against_reference(*make_inputs(b, h, w, c, dtype), dtype)


# Extreme logits. "offset" (1e4 + noise) is the case where a single fp32 logsumexp
# (1e4 + log sum, ulp 1e-3) would put a 5e-4 relative error on every gradient.
EXTREME = {
    "pm1e4": lambda g, shape: 1e4 * (2 * torch.randint(0, 2, shape, generator=g) - 1).float(),
    "equal": lambda g, shape: torch.full(shape, 7.0),
    "offset1e4": lambda g, shape: 1e4 + torch.randn(shape, generator=g),
    "minus1e4": lambda g, shape: -1e4 + torch.randn(shape, generator=g),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind", list(EXTREME))
def test_extreme_logits(triton_backend, kind, dtype):
    gen = torch.Generator(DEVICE).manual_seed(1)
    logits = EXTREME[kind](gen, (3, 1, 5, 7)).to(dtype)
    values = torch.randn(3, 17, 5, 7, generator=gen).to(dtype)
    grad = torch.randn(3, 17, generator=gen).to(dtype)
    check_against_reference(logits, values, grad, dtype)


@pytest.mark.parametrize("which", ["logits", "values"])
def test_gradient_only_where_needed(triton_backend, which):
    logits, values, grad = make_inputs(3, 5, 7, 17, torch.float32)
    logits.requires_grad_(which == "logits")
    values.requires_grad_(which == "values")
    before = TRITON_CALLS["attention_pool_backward"]
    out = attention_pool(logits, values)
    (got,) = torch.autograd.grad(out, (logits if which == "logits" else values), grad)
    assert TRITON_CALLS["attention_pool_backward"] == before + 1
    _, ref_dl, ref_dv = reference_grads(logits, values, grad)
    assert_close_to_reference(got, ref_dl if which == "logits" else ref_dv, torch.float32, f"d{which}")
    # the backward op skips the other gradient and returns an empty tensor for it
    out32, lse = torch.ops.a2net.attention_pool(logits.detach(), values.detach())
    dl, dv = torch.ops.a2net.attention_pool_backward(
        grad, logits.detach(), values.detach(), out32, lse, which == "logits", which == "values"
    )
    assert (dv if which == "logits" else dl).numel() == 0


@pytest.mark.parametrize("shape", [(0, 17, 5, 7), (3, 0, 5, 7)], ids=["B0", "C0"])
def test_empty(triton_backend, shape):
    b, c, h, w = shape
    logits = torch.randn(b, 1, h, w, requires_grad=True)
    values = torch.randn(b, c, h, w, requires_grad=True)
    out = attention_pool(logits, values)
    assert out.shape == (b, c)
    dl, dv = torch.autograd.grad(out, (logits, values), torch.ones_like(out))
    assert dl.shape == logits.shape and dv.shape == values.shape
    assert torch.equal(dl, torch.zeros_like(dl))  # no channels: the output does not depend on logits


def test_non_contiguous_inputs(triton_backend):
    gen = torch.Generator(DEVICE).manual_seed(2)
    # logits with swapped spatial strides (H and W do not merge: the launcher copies), values in
    # channels-last layout (a strided view is kept) and a channel slice; an expanded grad.
    logits = torch.randn(3, 1, 7, 5, generator=gen).transpose(2, 3)
    values = torch.randn(3, 5, 7, 34, generator=gen).permute(0, 3, 1, 2)[:, ::2]
    assert not logits.is_contiguous() and not values.is_contiguous()
    grad = torch.randn(1, 17, generator=gen).expand(3, 17)
    check_against_reference(logits, values, grad, torch.float32)
    values_cl = torch.randn(3, 17, 5, 7, generator=gen).to(memory_format=torch.channels_last)
    check_against_reference(logits, values_cl, grad, torch.float32)


def test_opcheck(triton_backend):
    logits, values, grad = make_inputs(2, 3, 4, 5, torch.float32)
    torch.library.opcheck(torch.ops.a2net.attention_pool.default, (logits.requires_grad_(), values.requires_grad_()))
    out, lse = torch.ops.a2net.attention_pool(logits.detach(), values.detach())
    for flags in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(
            torch.ops.a2net.attention_pool_backward.default,
            (grad, logits.detach(), values.detach(), out, lse, *flags),
        )


def test_gradcheck_float64(triton_backend):
    gen = torch.Generator(DEVICE).manual_seed(3)
    logits = torch.randn(2, 1, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 3, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    before = TRITON_CALLS["attention_pool_backward"]
    assert torch.autograd.gradcheck(attention_pool, (logits, values))
    assert TRITON_CALLS["attention_pool_backward"] > before


def test_compile_fullgraph(triton_backend):
    logits, values, grad = make_inputs(2, 5, 7, 17, torch.float32)
    logits.requires_grad_()
    values.requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(attention_pool, fullgraph=True, backend="aot_eager")
    before = TRITON_CALLS["attention_pool"], TRITON_CALLS["attention_pool_backward"]
    out = compiled(logits, values)
    dl, dv = torch.autograd.grad(out, (logits, values), grad)
    assert TRITON_CALLS["attention_pool"] > before[0] and TRITON_CALLS["attention_pool_backward"] > before[1]
    ref_out, ref_dl, ref_dv = reference_grads(logits, values, grad)
    assert_close_to_reference(out.detach(), ref_out, torch.float32, "output")
    assert_close_to_reference(dl, ref_dl, torch.float32, "dlogits")
    assert_close_to_reference(dv, ref_dv, torch.float32, "dvalues")


@pytest.mark.parametrize(
    "logits_shape, values_shape, dtypes, match",
    [
        ((2, 2, 5, 7), (2, 17, 5, 7), (torch.float32, torch.float32), "logits"),
        ((2, 1, 5, 7), (2, 17, 5, 6), (torch.float32, torch.float32), "values"),
        ((2, 1, 5, 7), (3, 17, 5, 7), (torch.float32, torch.float32), "values"),
        ((2, 1, 5, 7), (2, 17, 5, 7), (torch.float32, torch.float16), "values"),
        ((2, 1, 35), (2, 17, 5, 7), (torch.float32, torch.float32), "logits"),
        ((2, 1, 5, 7), (2, 17, 35), (torch.float32, torch.float32), "values"),
        ((2, 1, 5, 7), (2, 17, 5, 7), (torch.int64, torch.int64), "logits"),
    ],
    ids=["logit-channels", "spatial", "batch", "dtype", "logits-3d", "values-3d", "integer"],
)
def test_bad_inputs(triton_backend, logits_shape, values_shape, dtypes, match):
    logits = torch.zeros(logits_shape, dtype=dtypes[0])
    values = torch.zeros(values_shape, dtype=dtypes[1])
    with pytest.raises(ValueError, match=match):
        attention_pool(logits, values)


@pytest.mark.parametrize("path", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=["fp32", "fp16", "fp64"])
def test_all_minus_inf_logits_give_zeros_and_zero_gradients(monkeypatch, triton_backend, path, dtype):
    monkeypatch.setenv("A2NET_BACKEND", path)
    gen = torch.Generator(DEVICE).manual_seed(4)
    # row 0: all -inf (no softmax: zeros); row 1: some -inf (those positions get weight 0); row 2: finite
    logits = torch.randn(3, 1, 5, 7, generator=gen).to(dtype)
    logits[0] = float("-inf")
    logits[1, 0, :2] = float("-inf")
    values = torch.randn(3, 17, 5, 7, generator=gen).to(dtype)
    grad = torch.randn(3, 17, generator=gen).to(dtype)
    logits.requires_grad_()
    values.requires_grad_()
    before = TRITON_CALLS["attention_pool"], TRITON_CALLS["attention_pool_backward"]
    out = attention_pool(logits, values)
    dl, dv = torch.autograd.grad(out, (logits, values), grad)
    ran_triton = (TRITON_CALLS["attention_pool"], TRITON_CALLS["attention_pool_backward"]) != before
    assert ran_triton == (path == "triton")
    assert torch.equal(out[0].detach(), torch.zeros_like(out[0]))
    assert torch.equal(dl[0], torch.zeros_like(dl[0])) and torch.equal(dv[0], torch.zeros_like(dv[0]))
    assert torch.equal(dl[1, 0, :2], torch.zeros_like(dl[1, 0, :2]))
    assert all(bool(t.isfinite().all()) for t in (out, dl, dv))
    # the finite rows are the softmax of the finite logits, as before
    ref_out, ref_dl, ref_dv = reference_grads(logits[1:], values[1:], grad[1:])
    assert_close_to_reference(out[1:].detach(), ref_out, dtype, "output")
    assert_close_to_reference(dl[1:], ref_dl, dtype, "dlogits")
    assert_close_to_reference(dv[1:], ref_dv, dtype, "dvalues")
