"""Test-suite set-up: Triton runs in its CPU interpreter, the default backend is the reference.

``TRITON_INTERPRET`` must be set before triton is imported. Kernel tests switch to the Triton
path with the ``triton_backend`` fixture; everything else runs the PyTorch reference.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("A2NET_BACKEND", "torch")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def triton_backend(monkeypatch):
    """Force the Triton kernels (interpreter on CPU) and poison every kernel output with NaN."""
    import kernels._memory

    monkeypatch.setenv("A2NET_BACKEND", "triton")
    monkeypatch.setattr(kernels._memory, "POISON", True)
    yield


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("A2NET_BACKEND", "torch")
    yield
