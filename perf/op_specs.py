"""The benchmarked ops: their inputs, shapes, providers, and cost/memory models (:mod:`perf.costs`).

Providers (perf/README.md explains how to read them):

* ``triton``: ours, the public op (``a2net.ops``) on the Triton kernels (CUDA only);
* ``reference``: the vectorised PyTorch reference (``a2net.reference``), eager — on CPU this
  *is* the library's path, so there it is the subject the others are compared with;
* ``reference-compiled``: the same function under ``torch.compile``;
* ``authors`` (OAC, and the fused op): the authors' construction
  (:func:`a2net.official.authors_offset_aware_correlation`), a Python loop over target positions
  that scatters the correlation into the zero-filled ``(2H-1)(2W-1)``-channel aligned tensor,
  then a 1x1 convolution;
* ``triton-unfused`` (the fused op only): our correlation op, then our OAC op — what the fusion
  saves;
* ``cublas`` (``correlation_gemm`` only): ``torch.bmm`` of the two feature maps.

Ops (:data:`OPS`): ``correlation``, ``offset_aware_correlation``, ``correlation_oac`` (the two
fused: the correlation is never stored; what the model runs by default), ``attention_pool``, and
``correlation_gemm``: the correlation's GEMM alone (no normalisation, no ReLU) on cuBLAS, forward
only, the yardstick of the fused forward at large maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from a2net import ops, reference
from a2net.official import authors_offset_aware_correlation
from perf import costs

PROVIDERS = ("triton", "triton-unfused", "reference", "reference-compiled", "authors", "cublas")
OAC_CHANNELS = 128  # O, the paper's OAC output channels
ATTENTION_CHANNELS = 128  # C of the attention values in the model
ENCODER_SHRINK = 6  # the 7x7 encoder convolution (no padding) takes 6 off each side length


@dataclass
class OpSpec:
    """One op of the benchmark.

    ``shape(b, c, hw)`` returns the op's shape dict for feature maps of ``hw x hw`` with ``c``
    channels and batch ``b`` (None when the op has no such case); ``make(shape, dtype, device,
    gen, all_grads)`` returns the inputs, those that need a gradient in the model requiring grad
    (every one with ``all_grads``); ``providers[name](inputs, precision)`` runs it;
    ``cost(shape, pass, elem, all_grads)`` returns ``(flop, byte)`` of the roofline model;
    ``memory(shape, elem, provider)`` estimates the bytes a fwd+bwd needs (for skipping cases
    that cannot fit). ``truth``: the provider whose float64 result the others are checked against;
    ``passes``: the passes worth timing.
    """

    name: str
    shape_keys: tuple
    shape: Callable
    make: Callable
    providers: dict
    cost: Callable
    memory: Callable
    truth: str = "reference"
    passes: tuple = ("fwd", "bwd", "fwd+bwd")

    def shape_id(self, shape: dict) -> str:
        return "-".join(f"{k}{shape[k]}" for k in self.shape_keys)


_COMPILED: dict = {}


def compiled(fn):
    """One ``torch.compile`` of a reference function per process (dynamic shapes after the first
    recompile; the recompile limit is raised so that a grid of shapes never falls back to eager)."""
    if fn not in _COMPILED:
        for knob in (
            "recompile_limit",
            "cache_size_limit",
            "accumulated_recompile_limit",
            "accumulated_cache_size_limit",
        ):  #
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(256, getattr(torch._dynamo.config, knob)))
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


def _randn(shape, dtype, device, gen, scale=1.0):
    x = torch.randn(shape, device=device, dtype=torch.float32, generator=gen) * scale
    return x.to(dtype).requires_grad_(True)


# correlation ------------------------------------------------------------------------------


def _correlation_make(shape, dtype, device, gen, all_grads=False):
    b, c, h, w = shape["B"], shape["C"], shape["H"], shape["W"]
    return {"source": _randn((b, c, h, w), dtype, device, gen), "target": _randn((b, c, h, w), dtype, device, gen)}


CORRELATION = OpSpec(
    name="correlation",
    shape_keys=("B", "C", "H", "W"),
    shape=lambda b, c, hw: {"B": b, "C": c, "H": hw, "W": hw},
    make=_correlation_make,
    providers={
        "triton": lambda x, p: ops.correlation(x["source"], x["target"], input_precision=p),
        "reference": lambda x, p: reference.correlation(x["source"], x["target"]),
        "reference-compiled": lambda x, p: compiled(reference.correlation)(x["source"], x["target"]),
    },
    cost=costs.correlation_cost,
    memory=costs.correlation_memory,
)


# offset-aware correlation -----------------------------------------------------------------


def _oac_make(shape, dtype, device, gen, all_grads=False):
    b, o, h, w = shape["B"], shape["O"], shape["H"], shape["W"]
    # a correlation-like input: non-negative, L2-normalised over the source positions. It needs
    # no gradient in the model (it comes from the frozen backbone's features).
    corr = torch.rand((b, h * w, h, w), device=device, generator=gen)
    corr = (corr / corr.norm(dim=1, keepdim=True)).to(dtype).requires_grad_(all_grads)
    return {"corr": corr, **_oac_parameters(o, h, w, dtype, device, gen)}


def _oac_parameters(o, h, w, dtype, device, gen):
    """Weight and bias as the layer initialises them (uniform, bound 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt((2 * h - 1) * (2 * w - 1))
    weight = (torch.rand((o, 2 * h - 1, 2 * w - 1), device=device, generator=gen) * 2 - 1) * bound
    bias = (torch.rand((o,), device=device, generator=gen) * 2 - 1) * bound
    return {"weight": weight.to(dtype).requires_grad_(True), "bias": bias.to(dtype).requires_grad_(True)}


OAC = OpSpec(
    name="offset_aware_correlation",
    shape_keys=("B", "O", "H", "W"),
    shape=lambda b, c, hw: {"B": b, "O": OAC_CHANNELS, "H": hw, "W": hw},
    make=_oac_make,
    providers={
        "triton": lambda x, p: ops.offset_aware_correlation(
            x["corr"], x["weight"], x["bias"], tuple(x["corr"].shape[2:]), input_precision=p
        ),
        "reference": lambda x, p: reference.offset_aware_correlation(
            x["corr"], x["weight"], x["bias"], tuple(x["corr"].shape[2:])
        ),
        "reference-compiled": lambda x, p: compiled(reference.offset_aware_correlation)(
            x["corr"], x["weight"], x["bias"], tuple(x["corr"].shape[2:])
        ),
        "authors": lambda x, p: authors_offset_aware_correlation(x["corr"], x["weight"], x["bias"]),
    },
    cost=costs.offset_aware_correlation_cost,
    memory=costs.offset_aware_correlation_memory,
)


# attention pooling ------------------------------------------------------------------------


def _attention_make(shape, dtype, device, gen, all_grads=False):
    b, c, h, w = shape["B"], shape["C"], shape["H"], shape["W"]
    return {"logits": _randn((b, 1, h, w), dtype, device, gen, 2.0), "values": _randn((b, c, h, w), dtype, device, gen)}


def _attention_shape(b, c, hw):
    side = hw - ENCODER_SHRINK
    return {"B": b, "C": ATTENTION_CHANNELS, "H": side, "W": side} if side >= 1 else None


ATTENTION = OpSpec(
    name="attention_pool",
    shape_keys=("B", "C", "H", "W"),
    shape=_attention_shape,
    make=_attention_make,
    providers={
        "triton": lambda x, p: ops.attention_pool(x["logits"], x["values"]),
        "reference": lambda x, p: reference.attention_pool(x["logits"], x["values"]),
        "reference-compiled": lambda x, p: compiled(reference.attention_pool)(x["logits"], x["values"]),
    },
    cost=costs.attention_pool_cost,
    memory=costs.attention_pool_memory,
)

# correlation + OAC, fused ----------------------------------------------------------------


def _correlation_oac_make(shape, dtype, device, gen, all_grads=False):
    b, c, o, h, w = shape["B"], shape["C"], shape["O"], shape["H"], shape["W"]
    # the feature maps come from the frozen backbone in the model: no gradient unless all_grads
    source = _randn((b, c, h, w), dtype, device, gen).requires_grad_(all_grads)
    target = _randn((b, c, h, w), dtype, device, gen).requires_grad_(all_grads)
    return {"source": source, "target": target, **_oac_parameters(o, h, w, dtype, device, gen)}


def _reference_correlation_oac(source, target, weight, bias):
    corr = reference.correlation(source, target)
    return reference.offset_aware_correlation(corr, weight, bias, tuple(source.shape[2:]))


CORRELATION_OAC = OpSpec(
    name="correlation_oac",
    shape_keys=("B", "C", "O", "H", "W"),
    shape=lambda b, c, hw: {"B": b, "C": c, "O": OAC_CHANNELS, "H": hw, "W": hw},
    make=_correlation_oac_make,
    providers={
        "triton": lambda x, p: ops.correlation_oac(x["source"], x["target"], x["weight"], x["bias"], input_precision=p),
        # our two ops one after the other: what the fusion saves
        "triton-unfused": lambda x, p: ops.offset_aware_correlation(
            ops.correlation(x["source"], x["target"], input_precision=p),
            x["weight"],
            x["bias"],
            tuple(x["source"].shape[2:]),
            input_precision=p,
        ),
        "reference": lambda x, p: _reference_correlation_oac(x["source"], x["target"], x["weight"], x["bias"]),
        "reference-compiled": lambda x, p: compiled(_reference_correlation_oac)(
            x["source"], x["target"], x["weight"], x["bias"]
        ),
        # the correlation is the same batched GEMM in any code; the OAC is built the authors' way
        "authors": lambda x, p: authors_offset_aware_correlation(
            reference.correlation(x["source"], x["target"]), x["weight"], x["bias"]
        ),
    },
    cost=costs.correlation_oac_cost,
    memory=costs.correlation_oac_memory,
)

# the correlation's GEMM alone, on cuBLAS ------------------------------------------------------


def correlation_gemm(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, C, Hs, Ws), (B, C, Ht, Wt) -> (B, Hs*Ws, Ht*Wt)``: the raw channel products, one
    ``torch.bmm`` (cuBLAS reads the NCHW maps through transposed views, no copy)."""
    return torch.bmm(source.flatten(2).transpose(1, 2), target.flatten(2))


CORRELATION_GEMM = OpSpec(
    name="correlation_gemm",
    shape_keys=("B", "C", "H", "W"),
    shape=lambda b, c, hw: {"B": b, "C": c, "H": hw, "W": hw},
    make=_correlation_make,
    providers={"cublas": lambda x, p: correlation_gemm(x["source"], x["target"])},
    cost=costs.correlation_gemm_cost,
    memory=costs.correlation_gemm_memory,
    truth="cublas",
    passes=("fwd",),
)

#: The ops benchmarked, in order.
OPS = {spec.name: spec for spec in (CORRELATION, OAC, CORRELATION_OAC, ATTENTION, CORRELATION_GEMM)}
