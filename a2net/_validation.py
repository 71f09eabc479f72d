"""Argument checks shared by the ops, layers and geometry.

Every check raises ``ValueError`` naming the argument and giving the expected and the actual
value, so that a wrong call fails at the boundary instead of deep inside a kernel or through a
silent broadcast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: ``input_precision`` values: how fp32 ``tl.dot`` runs on the Triton path (fp16/bf16 ignore it).
INPUT_PRECISIONS = ("tf32", "ieee", "tf32x3")
#: CUDA's limit on a grid's y and z dimensions, where the correlation kernels put the batch.
MAX_GRID_YZ = 65535
#: Positions (and channels) of a map the correlation kernels address: their offsets inside a tile of
#: up to 256 rows stay 32-bit (the tiles' first rows are 64-bit), so a row may hold at most 2^23.
MAX_KERNEL_ROW = 1 << 23


def check_tensor(name: str, x, ndim: int | None = None, floating: bool = True) -> None:
    """Check that ``x`` is a tensor of rank ``ndim`` (if given) with a floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Check that two tensors share dtype and device (no implicit promotion or transfer)."""
    if a.dtype != b.dtype:
        raise ValueError(f"{name_b}: expected dtype {a.dtype} (that of {name_a}), got {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{name_b}: expected device {a.device} (that of {name_a}), got {b.device}")


def check_dim(name: str, x: torch.Tensor, dim: int, expected: int, what: str) -> None:
    """Check ``x.shape[dim] == expected``; ``what`` says what the dimension is."""
    if x.shape[dim] != expected:
        raise ValueError(
            f"{name}: expected {what} (dim {dim}) = {expected}, got {x.shape[dim]} (shape {tuple(x.shape)})"
        )


def as_size(name: str, size) -> tuple[int, int]:
    """Normalise an int or a pair of ints to ``(H, W)`` with both >= 1."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        raise ValueError(f"{name}: expected an int or a pair of ints (H, W), got {size!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"{name}: expected sizes >= 1, got {tuple(size)}")
    return int(size[0]), int(size[1])


def check_choice(name: str, value, choices: Sequence) -> None:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def check_flag(name: str, value) -> None:
    """Check that ``value`` is a bool (not merely truthy: a flag given a tensor or a string is a bug)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")


def check_correlation_inputs(source, target) -> None:
    """Feature maps ``(B, C, Hs, Ws)`` and ``(B, C, Ht, Wt)`` on one device, one dtype."""
    check_tensor("source", source, 4)
    check_tensor("target", target, 4)
    check_same("source", source, "target", target)
    check_dim("target", target, 0, source.shape[0], "batch size")
    check_dim("target", target, 1, source.shape[1], "channels")


def check_correlation_kernel_sizes(source: torch.Tensor, target: torch.Tensor) -> None:
    """Sizes the Triton correlation kernels can run: a batch of at most :data:`MAX_GRID_YZ` and at
    most :data:`MAX_KERNEL_ROW` positions per map and channels (the PyTorch path has no such limit)."""
    b, c, hs, ws = source.shape
    ht, wt = target.shape[2:]
    if b > MAX_GRID_YZ:
        raise ValueError(
            f"source: expected a batch size of at most {MAX_GRID_YZ} on the Triton path (a CUDA grid "
            f"dimension of the correlation kernels), got {b}; split the batch"
        )
    for name, value, what in (
        ("source", hs * ws, "positions Hs*Ws"),
        ("target", ht * wt, "positions Ht*Wt"),
        ("source", c, "channels"),
    ):
        if value > MAX_KERNEL_ROW:
            raise ValueError(
                f"{name}: expected at most {MAX_KERNEL_ROW} {what} on the Triton path (the correlation "
                f"kernels' in-tile offsets are 32-bit), got {value}"
            )


def check_offset_aware_correlation_inputs(corr, weight, bias, source_size) -> tuple[int, int]:
    """corr ``(B, Hs*Ws, Ht, Wt)``, weight ``(O, Hs+Ht-1, Ws+Wt-1)``, bias ``(O,)`` or None;
    returns ``source_size`` as ``(Hs, Ws)``."""
    hs, ws = as_size("source_size", source_size)
    check_tensor("corr", corr, 4)
    check_tensor("weight", weight, 3)
    check_same("corr", corr, "weight", weight)
    check_dim("corr", corr, 1, hs * ws, f"source positions Hs*Ws for source_size {(hs, ws)}")
    check_offset_weight(weight, bias, (hs, ws), (corr.shape[2], corr.shape[3]))
    return hs, ws


def check_offset_weight(weight, bias, source_size, target_size) -> None:
    """An OAC weight ``(O, Hs+Ht-1, Ws+Wt-1)`` and bias ``(O,)`` (or None) for these map sizes."""
    (hs, ws), (ht, wt) = source_size, target_size
    expected = (hs + ht - 1, ws + wt - 1)
    if tuple(weight.shape[1:]) != expected:
        raise ValueError(
            f"weight: expected offset grid (Hs+Ht-1, Ws+Wt-1) = {expected} for source {(hs, ws)} and "
            f"target {(ht, wt)}, got {tuple(weight.shape[1:])}"
        )
    if bias is not None:
        check_tensor("bias", bias, 1)
        check_same("weight", weight, "bias", bias)
        check_dim("bias", bias, 0, weight.shape[0], "output channels O of weight")


def check_correlation_oac_inputs(source, target, weight, bias) -> None:
    """Feature maps as for the correlation, weight ``(O, Hs+Ht-1, Ws+Wt-1)``, bias ``(O,)`` or None."""
    check_correlation_inputs(source, target)
    check_tensor("weight", weight, 3)
    check_same("source", source, "weight", weight)
    check_offset_weight(weight, bias, tuple(source.shape[2:]), tuple(target.shape[2:]))


def check_attention_pool_inputs(logits, values) -> None:
    """logits ``(B, 1, H, W)`` and values ``(B, C, H, W)``."""
    check_tensor("logits", logits, 4)
    check_tensor("values", values, 4)
    check_same("logits", logits, "values", values)
    check_dim("logits", logits, 1, 1, "channels")
    if logits.shape[0] != values.shape[0] or logits.shape[2:] != values.shape[2:]:
        raise ValueError(
            f"values: expected batch and spatial size {(logits.shape[0], *logits.shape[2:])} "
            f"(those of logits), got {(values.shape[0], *values.shape[2:])}"
        )
