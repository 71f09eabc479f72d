"""Which implementation an op call takes: the Triton kernels or the PyTorch reference.

``A2NET_BACKEND`` (read at every call, so tests and benchmarks can switch it):

* ``auto`` (default): CUDA tensors -> Triton; CPU tensors -> the reference, except when
  ``TRITON_INTERPRET=1`` is set, where CPU tensors run the Triton kernels in the interpreter
  (how the test-suite exercises them without a GPU);
* ``triton``: always the Triton kernels (CPU tensors need ``TRITON_INTERPRET=1``);
* ``torch``: always the reference.
"""

from __future__ import annotations

import os
from collections import Counter

import torch

BACKENDS = ("auto", "triton", "torch")

#: Number of times each op took the Triton path (tests use it to prove the kernels ran).
TRITON_CALLS: Counter = Counter()


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend() -> str:
    """The requested backend, validated."""
    value = os.environ.get("A2NET_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"A2NET_BACKEND: expected one of {list(BACKENDS)}, got {value!r}")
    return value


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on tensors living where ``x`` lives runs the Triton kernels."""
    choice = backend()
    if choice == "torch":
        return False
    runnable = x.is_cuda or (x.device.type == "cpu" and interpreting())
    if choice == "triton" and not runnable:
        raise RuntimeError(
            f"A2NET_BACKEND=triton but the tensors are on {x.device} and TRITON_INTERPRET is not set: "
            "Triton runs on CUDA tensors, or on CPU tensors only in interpreter mode (TRITON_INTERPRET=1)"
        )
    return runnable
