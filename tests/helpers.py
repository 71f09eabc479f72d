"""Shared test helpers: the kernel tolerance table and the comparison against the reference."""

from __future__ import annotations

import os

import torch

#: Where the kernel tests run: ``cpu`` (the Triton interpreter, CI) or ``cuda`` (a CUDA machine,
#: ``A2NET_TEST_DEVICE=cuda TRITON_INTERPRET=0``, see perf/gpu_check.sh).
DEVICE = torch.device(os.environ.get("A2NET_TEST_DEVICE", "cpu"))

#: Relative error ``||out - ref|| / ||ref||`` allowed against the float64 reference, per dtype.
#: fp32 is checked with ``input_precision="ieee"``; fp16/bf16 round inputs and outputs.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2, torch.float64: 1e-12}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "output"):
    """Shape equal, no NaN (unwritten elements of poisoned buffers), relative error within the table."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{what}: NaN present (unwritten output element?)"
    if ref.numel() == 0:
        return
    err = relative_error(out, ref)
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3e} > {TOLERANCE[dtype]:.0e} ({dtype})"
