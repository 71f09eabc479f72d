"""The cost and memory models of the benchmarked ops (perf/README.md, "The roofline model").

``<op>_cost(shape, pass_, elem, all_grads)`` -> ``(flop, byte)``: the floating-point operations
(a multiply-add counts 2) and the fewest bytes an implementation must move through device memory
(each input read once, each output written once) for one pass (``"fwd"``, ``"bwd"`` or
``"fwd+bwd"``) at ``elem`` bytes per element; ``all_grads`` adds the gradients the model does not
need (the OAC's correlation, the fused op's feature maps).

``<op>_memory(shape, elem, provider)`` -> bytes: an estimate of what one forward+backward of
``provider`` needs, inputs included, to skip the cases that cannot fit.

Shapes are dicts of sizes: ``B``, ``C``, ``O``, ``H``, ``W`` (both maps ``H x W``, so
``S = T = H*W``), as the ``shape`` of each :class:`perf.op_specs.OpSpec` makes them.
"""

from __future__ import annotations


def _passes(fwd: tuple, bwd: tuple, pass_: str) -> tuple:
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": (fwd[0] + bwd[0], fwd[1] + bwd[1])}[pass_]


def correlation_cost(shape: dict, pass_: str, elem: int, all_grads: bool = False) -> tuple:
    b, c, hw = shape["B"], shape["C"], shape["H"] * shape["W"]
    feats, out = 2 * b * c * hw, b * hw * hw
    fwd = (2 * b * hw * hw * c, elem * (feats + out))
    bwd = (4 * b * hw * hw * c, elem * (2 * out + 2 * feats))
    return _passes(fwd, bwd, pass_)


def correlation_gemm_cost(shape: dict, pass_: str, elem: int, all_grads: bool = False) -> tuple:
    """``torch.bmm`` of the two maps: the correlation's FLOPs, the maps read and the output written."""
    b, c, hw = shape["B"], shape["C"], shape["H"] * shape["W"]
    feats, out = 2 * b * c * hw, b * hw * hw
    return _passes((2 * b * hw * hw * c, elem * (feats + out)), (4 * b * hw * hw * c, elem * (2 * feats + out)), pass_)


def correlation_gemm_memory(shape: dict, elem: int, provider: str) -> int:
    b, c, hw = shape["B"], shape["C"], shape["H"] * shape["W"]
    return elem * (4 * b * c * hw + 2 * b * hw * hw)


def correlation_memory(shape: dict, elem: int, provider: str) -> int:
    b, c, hw = shape["B"], shape["C"], shape["H"] * shape["W"]
    feats, out = 2 * b * c * hw, b * hw * hw
    if provider.startswith("triton"):  # channels-last and backward operand copies; out, grad, dc, dc^T
        return elem * (5 * feats + 4 * out)
    return elem * (4 * feats + 8 * out)  # the reference: normalised copies, S x T temporaries


def offset_aware_correlation_cost(shape: dict, pass_: str, elem: int, all_grads: bool = False) -> tuple:
    b, o, h, w = shape["B"], shape["O"], shape["H"], shape["W"]
    s = t = h * w
    d = (2 * h - 1) * (2 * w - 1)
    corr, out, wgt = b * s * t, b * o * t, o * d + o
    fwd = (2 * b * o * s * t, elem * (corr + wgt + out))
    # dW (and dbias) read the incoming gradient and corr; dcorr also reads W and writes corr's size
    bwd = (2 * b * o * s * t + b * o * t, elem * (out + corr + wgt))
    if all_grads:
        bwd = (bwd[0] + 2 * b * o * s * t, bwd[1] + elem * (corr + wgt))
    return _passes(fwd, bwd, pass_)


def offset_aware_correlation_memory(shape: dict, elem: int, provider: str) -> int:
    b, o, h, w = shape["B"], shape["O"], shape["H"], shape["W"]
    corr = b * (h * w) ** 2
    aligned = b * (2 * h - 1) * (2 * w - 1) * h * w
    if provider.startswith("triton"):
        return elem * (3 * corr + 4 * b * o * h * w)
    return elem * (3 * corr + 3 * aligned) + 8 * (h * w) ** 2  # + the int64 scatter index (reference)


def attention_pool_cost(shape: dict, pass_: str, elem: int, all_grads: bool = False) -> tuple:
    b, c, t = shape["B"], shape["C"], shape["H"] * shape["W"]
    fwd = (2 * b * c * t + 5 * b * t, elem * (b * t + b * c * t + b * c))
    bwd = (3 * b * c * t + 5 * b * t, elem * (b * c + b * t + b * c * t + b * c * t + b * t))
    return _passes(fwd, bwd, pass_)


def attention_pool_memory(shape: dict, elem: int, provider: str) -> int:
    b, c, t = shape["B"], shape["C"], shape["H"] * shape["W"]
    return elem * 6 * (b * c * t + b * t)


def correlation_oac_cost(shape: dict, pass_: str, elem: int, all_grads: bool = False) -> tuple:
    """The fused op's floor: the correlation never goes through memory (only the maps, the
    weight and the output do); the backward recomputes it for dW."""
    b, c, o, h, w = shape["B"], shape["C"], shape["O"], shape["H"], shape["W"]
    s = t = h * w
    d = (2 * h - 1) * (2 * w - 1)
    feats, out, wgt = 2 * b * c * h * w, b * o * t, o * d + o
    corr_flop, oac_flop = 2 * b * s * t * c, 2 * b * o * s * t
    fwd = (corr_flop + oac_flop, elem * (feats + wgt + out))
    bwd = (corr_flop + oac_flop + b * o * t, elem * (feats + out + wgt))
    if all_grads:  # dcorr, then both feature-map GEMMs through a (B, S, T) buffer
        bwd = (bwd[0] + oac_flop + 2 * corr_flop, bwd[1] + elem * (feats + 2 * b * s * t))
    return _passes(fwd, bwd, pass_)


def correlation_oac_memory(shape: dict, elem: int, provider: str) -> int:
    if provider == "triton":  # the maps and their gradients, the output; no (B, S, T) buffer
        b, c, o, t = shape["B"], shape["C"], shape["O"], shape["H"] * shape["W"]
        return elem * (4 * 2 * b * c * t + 4 * b * o * t)
    corr_shape = {k: shape[k] for k in ("B", "C", "H", "W")}
    oac_shape = {k: shape[k] for k in ("B", "O", "H", "W")}
    return correlation_memory(corr_shape, elem, provider) + offset_aware_correlation_memory(oac_shape, elem, provider)
