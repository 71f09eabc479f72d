"""The A2Net building blocks as ``nn.Module`` s.

Each layer calls the op functions of :mod:`a2net.ops`, which run the Triton kernels on CUDA
(and in the interpreter under ``TRITON_INTERPRET=1``) and the PyTorch reference on CPU.

Example::

    >>> import torch
    >>> from a2net.layers import FeatureCorrelation, OffsetAwareCorrelation, AttentionPool2d
    >>> src, tgt = torch.randn(2, 64, 15, 15), torch.randn(2, 64, 15, 15)
    >>> corr = FeatureCorrelation()(src, tgt)                   # (2, 225, 15, 15)
    >>> h = OffsetAwareCorrelation(15, out_channels=128)(corr)  # (2, 128, 15, 15)
    >>> AttentionPool2d()(h[:, :1], h).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from a2net import ops
from a2net._validation import INPUT_PRECISIONS, as_size, check_choice


class FeatureL2Norm(nn.Module):
    """L2 normalisation over channels, ``x / sqrt(sum_c x^2 + 1e-6)``.

    Shape: ``(B, C, *spatial)`` -> same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.feature_l2norm(x)


class FeatureCorrelation(nn.Module):
    """4D correlation of a source and a target feature map.

    ``c[b, s, t] = <f_src[b, :, s], f_tgt[b, :, t]>`` with ``s = ys*Ws + xs``, optionally on
    L2-normalised features, followed by ReLU and L2 normalisation over ``s`` (the paper's setting).

    Args:
        normalize_features: L2-normalise both feature maps over channels first.
        relu: ReLU on the correlation.
        normalize_matches: L2-normalise over the source positions for every target position.
        input_precision: precision of fp32 tensor-core products on the Triton path:
            ``"tf32"`` (default, fast), ``"ieee"`` (exact fp32) or ``"tf32x3"``.

    Shape:
        source ``(B, C, Hs, Ws)``, target ``(B, C, Ht, Wt)`` -> ``(B, Hs*Ws, Ht, Wt)``.
    """

    def __init__(
        self,
        normalize_features: bool = True,
        relu: bool = True,
        normalize_matches: bool = True,
        input_precision: str = "tf32",
    ):
        super().__init__()
        check_choice("input_precision", input_precision, INPUT_PRECISIONS)
        self.normalize_features = normalize_features
        self.relu = relu
        self.normalize_matches = normalize_matches
        self.input_precision = input_precision

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ops.correlation(
            source,
            target,
            normalize_features=self.normalize_features,
            relu=self.relu,
            normalize_matches=self.normalize_matches,
            input_precision=self.input_precision,
        )

    def extra_repr(self) -> str:
        return (
            f"normalize_features={self.normalize_features}, relu={self.relu}, "
            f"normalize_matches={self.normalize_matches}, input_precision={self.input_precision!r}"
        )


def fit_offset_weight(weight: torch.Tensor, sizes: tuple, new_sizes: tuple) -> torch.Tensor:
    """Fit an OAC weight built for one pair of map sizes to another by cropping or zero-padding.

    The offset grid of source ``(Hs, Ws)`` and target ``(Ht, Wt)`` spans displacements
    ``-(Ht-1) .. Hs-1`` by ``-(Wt-1) .. Ws-1`` feature cells. Every entry kept keeps its
    displacement; displacements the weight was not trained for get weight 0.

    Args:
        weight: ``(O, Hs+Ht-1, Ws+Wt-1)`` for ``sizes = ((Hs, Ws), (Ht, Wt))``.
        new_sizes: ``((Hs', Ws'), (Ht', Wt'))``.
    Returns:
        ``(O, Hs'+Ht'-1, Ws'+Wt'-1)``.
    """
    ((hs, ws), (ht, wt)), ((nhs, nws), (nht, nwt)) = sizes, new_sizes
    if (hs, ws, ht, wt) == (nhs, nws, nht, nwt):
        return weight
    # F.pad with negative amounts crops; (left, right, top, bottom) of the last two dims.
    return F.pad(weight, (nwt - wt, nws - ws, nht - ht, nhs - hs))


class OffsetAwareCorrelation(nn.Module):
    """Offset-aware correlation kernel (OAC), the paper's first contribution.

    A learned weight indexed by the *offset* between a source and a target position:
    ``out[b, o, yt, xt] = bias[o] + sum_{ys, xs} weight[o, ys-yt+Ht-1, xs-xt+Wt-1] *
    corr[b, ys*Ws+xs, yt, xt]``. The Triton kernel never builds the
    ``(Hs+Ht-1)(Ws+Wt-1)``-channel aligned tensor of the authors' construction.

    Args:
        source_size: ``(Hs, Ws)`` of the source feature map (an int for a square map).
        target_size: ``(Ht, Wt)``; defaults to ``source_size``.
        out_channels: ``O`` (128 in the paper).
        bias: learn a bias ``(O,)``.
        input_precision: see :class:`FeatureCorrelation`.

    Parameters:
        weight ``(O, Hs+Ht-1, Ws+Wt-1)``, bias ``(O,)``; initialised like the authors' 1x1
        convolution over ``(Hs+Ht-1)(Ws+Wt-1)`` input channels (uniform, bound 1/sqrt(fan_in)).

    Shape:
        corr ``(B, Hs*Ws, Ht, Wt)`` -> ``(B, O, Ht, Wt)``.

    ``forward(corr, source_size=None)``: with ``source_size`` given (maps of another size than
    the layer was built for, e.g. other image sizes), the weight is fitted to the new offset grid
    by :func:`fit_offset_weight` (crop / zero pad: offsets keep their meaning).
    """

    def __init__(
        self,
        source_size,
        target_size=None,
        out_channels: int = 128,
        bias: bool = True,
        input_precision: str = "tf32",
    ):
        super().__init__()
        self.source_size = as_size("source_size", source_size)
        self.target_size = as_size("target_size", target_size if target_size is not None else self.source_size)
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels: expected an int >= 1, got {out_channels!r}")
        check_choice("input_precision", input_precision, INPUT_PRECISIONS)
        self.out_channels = out_channels
        self.input_precision = input_precision
        (hs, ws), (ht, wt) = self.source_size, self.target_size
        self.weight = nn.Parameter(torch.empty(out_channels, hs + ht - 1, ws + wt - 1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[1] * self.weight.shape[2])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, corr: torch.Tensor, source_size=None) -> torch.Tensor:
        weight = self.weight
        if source_size is None:
            source_size = self.source_size
        else:
            source_size = as_size("source_size", source_size)
            if corr.dim() == 4:
                target_size = (int(corr.shape[2]), int(corr.shape[3]))
                weight = fit_offset_weight(weight, (self.source_size, self.target_size), (source_size, target_size))
        return ops.offset_aware_correlation(corr, weight, self.bias, source_size, input_precision=self.input_precision)

    def extra_repr(self) -> str:
        return (
            f"source_size={self.source_size}, target_size={self.target_size}, "
            f"out_channels={self.out_channels}, bias={self.bias is not None}"
        )


class CorrelationOAC(OffsetAwareCorrelation):
    """Correlation and offset-aware correlation in one op: feature maps -> OAC features.

    Equal in math to :class:`FeatureCorrelation` (ReLU and match normalisation on) followed by
    :class:`OffsetAwareCorrelation`, but on the Triton path the ``(B, Hs*Ws, Ht, Wt)``
    correlation is never written to memory: tiles are computed on chip, ReLU'd, their squared
    norms accumulated per target, and contracted with the OAC weight at once (the match
    normalisation is a per-target scale at the end). At 60x60 maps that saves the 52 MB per pair
    of the correlation. For the weight gradient the forward keeps ``relu(c)`` when the maps have at
    most 32x32 positions (0.11 MB per pair in bf16 at 15x15) and the backward recomputes the
    correlation tiles above that. Feature maps are best handed over channels-last (the kernels
    read channel-contiguous rows; others are copied).

    Args:
        source_size, target_size, out_channels, bias, input_precision: see
            :class:`OffsetAwareCorrelation` (same parameters ``weight`` ``(O, Hs+Ht-1, Ws+Wt-1)``
            and ``bias`` ``(O,)``, same initialisation).
        normalize_features: L2-normalise both feature maps over channels first.

    Shape:
        source ``(B, C, Hs, Ws)``, target ``(B, C, Ht, Wt)`` -> ``(B, O, Ht, Wt)``; the maps must
        have the sizes the layer was built for.
    """

    def __init__(
        self,
        source_size,
        target_size=None,
        out_channels: int = 128,
        normalize_features: bool = True,
        bias: bool = True,
        input_precision: str = "tf32",
    ):
        super().__init__(source_size, target_size, out_channels, bias, input_precision)
        self.normalize_features = normalize_features

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ops.correlation_oac(
            source,
            target,
            self.weight,
            self.bias,
            normalize_features=self.normalize_features,
            input_precision=self.input_precision,
        )  #

    def extra_repr(self) -> str:
        return super().extra_repr() + f", normalize_features={self.normalize_features}"


class AttentionPool2d(nn.Module):
    """Softmax attention pooling, the paper's attentive global transformation estimator.

    ``out[b, c] = sum_t softmax_t(logits[b, 0, t]) * values[b, c, t]`` over the ``H*W`` positions.

    Shape:
        logits ``(B, 1, H, W)``, values ``(B, C, H, W)`` -> ``(B, C)``.
    """

    def forward(self, logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return ops.attention_pool(logits, values)
