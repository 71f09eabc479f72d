"""The nn.Module layers: values against the reference ops, offset-weight fitting, errors."""

import pytest
import torch

from a2net import reference
from a2net.layers import (
    AttentionPool2d,
    CorrelationOAC,
    FeatureCorrelation,
    FeatureL2Norm,
    OffsetAwareCorrelation,
    fit_offset_weight,
)


def test_layers_compute_the_reference():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 8, 4, 6, generator=g)
    tgt = torch.randn(2, 8, 5, 3, generator=g)
    torch.testing.assert_close(FeatureL2Norm()(src), reference.feature_l2norm(src))
    corr = FeatureCorrelation()(src, tgt)
    torch.testing.assert_close(corr, reference.correlation(src, tgt))
    raw = FeatureCorrelation(False, False, False)(src, tgt)
    torch.testing.assert_close(raw, torch.einsum("bcs,bct->bst", src.flatten(2), tgt.flatten(2)).view(2, 24, 5, 3))
    oac = OffsetAwareCorrelation((4, 6), (5, 3), out_channels=7)
    assert oac.weight.shape == (7, 8, 8) and oac.bias.shape == (7,)
    torch.testing.assert_close(oac(corr), reference.offset_aware_correlation(corr, oac.weight, oac.bias, (4, 6)))
    logits, values = torch.randn(2, 1, 5, 3, generator=g), torch.randn(2, 4, 5, 3, generator=g)
    torch.testing.assert_close(AttentionPool2d()(logits, values), reference.attention_pool(logits, values))


def test_oac_without_bias_and_parameter_names():
    oac = OffsetAwareCorrelation(5, out_channels=3, bias=False)
    assert oac.bias is None and [n for n, _ in oac.named_parameters()] == ["weight"]
    assert oac.weight.shape == (3, 9, 9)
    bound = 1 / 81**0.5
    assert oac.weight.abs().max() <= bound


def test_fit_offset_weight_keeps_displacements():
    """A weight fitted to bigger maps gives, at every kept displacement, the same value; new ones are 0."""
    sizes, new_sizes = ((3, 4), (2, 5)), ((5, 6), (4, 3))
    w = torch.randn(2, 3 + 2 - 1, 4 + 5 - 1)
    fitted = fit_offset_weight(w, sizes, new_sizes)
    assert fitted.shape == (2, 5 + 4 - 1, 6 + 3 - 1)
    for dy in range(-(4 - 1), 5):
        for dx in range(-(3 - 1), 6):
            value = fitted[:, dy + 4 - 1, dx + 3 - 1]
            if -(2 - 1) <= dy <= 3 - 1 and -(5 - 1) <= dx <= 4 - 1:
                torch.testing.assert_close(value, w[:, dy + 2 - 1, dx + 5 - 1])
            else:
                assert (value == 0).all()
    assert fit_offset_weight(w, sizes, sizes) is w


def test_oac_layer_on_other_map_sizes_uses_the_fitted_weight():
    oac = OffsetAwareCorrelation(5)
    corr = torch.randn(1, 7 * 6, 7, 6)
    out = oac(corr, source_size=(7, 6))
    fitted = fit_offset_weight(oac.weight, ((5, 5), (5, 5)), ((7, 6), (7, 6)))
    torch.testing.assert_close(out, reference.offset_aware_correlation(corr, fitted, oac.bias, (7, 6)))


def test_oac_layer_rejects_a_mismatched_map():
    with pytest.raises(ValueError, match=r"corr: expected source positions"):
        OffsetAwareCorrelation(5)(torch.randn(1, 24, 5, 5))
    with pytest.raises(ValueError, match=r"weight: expected offset grid"):
        OffsetAwareCorrelation(5)(torch.randn(1, 25, 4, 5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"source_size": (0, 3)}, r"source_size: expected sizes >= 1"),
        ({"source_size": "15"}, r"source_size: expected an int or a pair"),
        ({"source_size": 5, "out_channels": 0}, r"out_channels: expected an int >= 1, got 0"),
        ({"source_size": 5, "input_precision": "fp64"}, r"input_precision: expected one of"),
    ],
)
def test_oac_layer_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OffsetAwareCorrelation(**kwargs)


@pytest.mark.parametrize("normalize_features", [True, False])
def test_correlation_oac_layer_equals_the_two_layers(normalize_features):
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randn(2, 8, 4, 6, generator=g), torch.randn(2, 8, 5, 3, generator=g)
    fused = CorrelationOAC((4, 6), (5, 3), out_channels=7, normalize_features=normalize_features)
    assert [n for n, _ in fused.named_parameters()] == ["weight", "bias"] and fused.weight.shape == (7, 8, 8)
    oac = OffsetAwareCorrelation((4, 6), (5, 3), out_channels=7)
    oac.load_state_dict(fused.state_dict())
    expected = oac(FeatureCorrelation(normalize_features=normalize_features)(src, tgt))
    torch.testing.assert_close(fused(src, tgt), expected)
    with pytest.raises(ValueError, match="weight"):
        fused(torch.randn(2, 8, 5, 6), tgt)
