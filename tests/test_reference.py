"""The PyTorch reference ops against naive float64 loops, the authors' construction, gradcheck."""

import itertools

import pytest
import torch

from a2net import reference
from a2net.official import authors_correlation, authors_offset_aware_correlation

SIZES = [(1, 1, 1, 1), (5, 7, 5, 7), (4, 6, 7, 3), (3, 5, 2, 4)]


def size_id(s):
    return f"{s[0]}x{s[1]}to{s[2]}x{s[3]}"


def naive_l2norm(x):
    out = torch.empty_like(x)
    b, c = x.shape[:2]
    flat, flat_out = x.reshape(b, c, -1), out.view(b, c, -1)
    for i in range(b):
        for p in range(flat.shape[2]):
            norm = sum(float(flat[i, k, p]) ** 2 for k in range(c)) + 1e-6
            flat_out[i, :, p] = flat[i, :, p] / norm**0.5
    return out


def naive_correlation(src, tgt, normalize_features, relu, normalize_matches):
    if normalize_features:
        src, tgt = naive_l2norm(src), naive_l2norm(tgt)
    b, c, hs, ws = src.shape
    ht, wt = tgt.shape[2:]
    out = torch.zeros(b, hs * ws, ht, wt, dtype=src.dtype)
    for i, ys, xs, yt, xt in itertools.product(range(b), range(hs), range(ws), range(ht), range(wt)):
        v = float((src[i, :, ys, xs] * tgt[i, :, yt, xt]).sum())
        out[i, ys * ws + xs, yt, xt] = max(v, 0.0) if relu else v
    if normalize_matches:
        out = naive_l2norm(out)
    return out


def naive_oac(corr, weight, bias, hs, ws):
    b, _, ht, wt = corr.shape
    o = weight.shape[0]
    out = torch.zeros(b, o, ht, wt, dtype=corr.dtype)
    for i, k, yt, xt in itertools.product(range(b), range(o), range(ht), range(wt)):
        acc = float(bias[k]) if bias is not None else 0.0
        for ys, xs in itertools.product(range(hs), range(ws)):
            acc += float(weight[k, ys - yt + ht - 1, xs - xt + wt - 1]) * float(corr[i, ys * ws + xs, yt, xt])
        out[i, k, yt, xt] = acc
    return out


def naive_attention_pool(logits, values):
    b, c = values.shape[:2]
    out = torch.zeros(b, c, dtype=values.dtype)
    for i in range(b):
        lg = logits[i, 0].flatten().tolist()
        m = max(lg)
        e = [pow(2.718281828459045, v - m) for v in lg]
        z = sum(e)
        for k in range(c):
            out[i, k] = sum(e[t] / z * float(values[i, k].flatten()[t]) for t in range(len(e)))
    return out


def test_feature_l2norm_matches_loop():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(reference.feature_l2norm(x), naive_l2norm(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "flags",
    [(True, True, True), (False, False, False), (True, False, True), (False, True, False)],
    ids=lambda f: "nf{}-relu{}-nm{}".format(*map(int, f)),
)
@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_correlation_matches_loop(size, flags):
    hs, ws, ht, wt = size
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 3, hs, ws, dtype=torch.float64, generator=g)
    tgt = torch.randn(2, 3, ht, wt, dtype=torch.float64, generator=g)
    out = reference.correlation(src, tgt, *flags)
    assert out.shape == (2, hs * ws, ht, wt)
    torch.testing.assert_close(out, naive_correlation(src, tgt, *flags), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
def test_offset_aware_correlation_matches_loop(size, bias):
    hs, ws, ht, wt = size
    g = torch.Generator().manual_seed(1)
    corr = torch.randn(2, hs * ws, ht, wt, dtype=torch.float64, generator=g)
    weight = torch.randn(3, hs + ht - 1, ws + wt - 1, dtype=torch.float64, generator=g)
    b = torch.randn(3, dtype=torch.float64, generator=g) if bias else None
    out = reference.offset_aware_correlation(corr, weight, b, (hs, ws))
    torch.testing.assert_close(out, naive_oac(corr, weight, b, hs, ws), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hw", [(5, 5), (4, 6), (1, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_offset_aware_correlation_matches_authors_construction(hw):
    h, w = hw
    g = torch.Generator().manual_seed(2)
    corr = torch.randn(2, h * w, h, w, dtype=torch.float64, generator=g)
    weight = torch.randn(4, 2 * h - 1, 2 * w - 1, dtype=torch.float64, generator=g)
    bias = torch.randn(4, dtype=torch.float64, generator=g)
    expected = authors_offset_aware_correlation(corr, weight, bias)
    torch.testing.assert_close(reference.offset_aware_correlation(corr, weight, bias, (h, w)), expected)


def test_official_layout_is_a_source_axis_swap():
    """Their transposed correlation + their scatter == ours on the source map with H and W swapped."""
    g = torch.Generator().manual_seed(3)
    h = 5
    src = torch.randn(2, 6, h, h, dtype=torch.float64, generator=g)
    tgt = torch.randn(2, 6, h, h, dtype=torch.float64, generator=g)
    weight = torch.randn(3, 2 * h - 1, 2 * h - 1, dtype=torch.float64, generator=g)
    bias = torch.randn(3, dtype=torch.float64, generator=g)
    theirs_corr = reference.feature_l2norm(
        torch.relu(authors_correlation(reference.feature_l2norm(src), reference.feature_l2norm(tgt)))
    )
    theirs = authors_offset_aware_correlation(theirs_corr, weight, bias)
    ours_corr = reference.correlation(src.transpose(2, 3), tgt)
    torch.testing.assert_close(ours_corr, theirs_corr)
    torch.testing.assert_close(reference.offset_aware_correlation(ours_corr, weight, bias, (h, h)), theirs)


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (9, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_attention_pool_matches_loop(hw):
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(2, 1, *hw, dtype=torch.float64, generator=g)
    values = torch.randn(2, 5, *hw, dtype=torch.float64, generator=g)
    torch.testing.assert_close(reference.attention_pool(logits, values), naive_attention_pool(logits, values))


def test_attention_pool_is_stable_for_large_logits():
    logits = torch.tensor([[[[1e4, -1e4, 1e4 - 1.0]]]], dtype=torch.float32)
    values = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    out = reference.attention_pool(logits, values)
    p = torch.softmax(torch.tensor([0.0, -2e4, -1.0], dtype=torch.float64), 0)
    torch.testing.assert_close(out.double(), (p * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().view(1, 1))


def test_gradcheck_reference_ops():
    g = torch.Generator().manual_seed(5)
    # Feature maps whose correlations are all clearly positive keep ReLU away from its kink.
    src = (torch.rand(1, 3, 2, 3, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    tgt = (torch.rand(1, 3, 3, 2, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: reference.correlation(a, b), (src, tgt))
    corr = torch.randn(2, 6, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(2, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda c, w, b: reference.offset_aware_correlation(c, w, b, (2, 3)), (corr, weight, bias)
    )
    logits = torch.randn(2, 1, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    values = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(reference.attention_pool, (logits, values))


# ---------------------------------------------------------------- bad input
def f32(*shape):
    return torch.zeros(*shape)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: reference.correlation(f32(2, 3, 4), f32(2, 3, 4, 4)), r"source: expected a 4-D tensor, got 3-D"),
        (lambda: reference.correlation(f32(2, 3, 4, 4), f32(1, 3, 4, 4)), r"target: expected batch size .* = 2, got 1"),
        (lambda: reference.correlation(f32(2, 3, 4, 4), f32(2, 5, 4, 4)), r"target: expected channels .* = 3, got 5"),
        (
            lambda: reference.correlation(f32(2, 3, 4, 4), f32(2, 3, 4, 4).double()),
            r"target: expected dtype torch.float32",
        ),
        (lambda: reference.correlation(f32(2, 3, 4, 4), f32(2, 3, 4, 4).to("meta")), r"target: expected device cpu"),
        (
            lambda: reference.offset_aware_correlation(f32(1, 12, 3, 4), f32(2, 6, 7), None, (3, 4)),
            r"weight: expected offset grid .* = \(5, 7\) .* got \(6, 7\)",
        ),
        (
            lambda: reference.offset_aware_correlation(f32(1, 11, 3, 4), f32(2, 5, 7), None, (3, 4)),
            r"corr: expected source positions Hs\*Ws .* = 12, got 11",
        ),
        (
            lambda: reference.offset_aware_correlation(f32(1, 12, 3, 4), f32(2, 5, 7), f32(3), (3, 4)),
            r"bias: expected output channels O of weight .* = 2, got 3",
        ),
        (
            lambda: reference.attention_pool(f32(2, 2, 3, 3), f32(2, 4, 3, 3)),
            r"logits: expected channels .* = 1, got 2",
        ),
        (
            lambda: reference.attention_pool(f32(2, 1, 3, 3), f32(2, 4, 3, 2)),
            r"values: expected batch and spatial size",
        ),
        (
            lambda: reference.attention_pool(f32(2, 1, 3, 3), torch.zeros(2, 4, 3, 3, dtype=torch.long)),
            r"values: expected a floating-point tensor",
        ),
    ],
    ids=[
        "rank",
        "batch",
        "channels",
        "dtype",
        "device",
        "oac-weight",
        "oac-corr",
        "oac-bias",
        "att-logits",
        "att-values",
        "att-dtype",
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
