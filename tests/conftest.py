"""Test-suite set-up: Triton runs in its CPU interpreter, the default backend is the reference.

``TRITON_INTERPRET`` must be set before triton is imported. Kernel tests switch to the Triton
path with the ``triton_backend`` fixture; everything else runs the PyTorch reference.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("A2NET_BACKEND", "torch")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def triton_backend(monkeypatch):
    """Force the Triton kernels and poison every kernel output with NaN.

    On CPU the kernels run in the interpreter. With ``A2NET_TEST_DEVICE=cuda`` (and
    ``TRITON_INTERPRET=0``) new tensors default to the GPU, so the same tests run the compiled
    kernels.
    """
    import a2net.kernels._memory
    from tests.helpers import DEVICE

    monkeypatch.setenv("A2NET_BACKEND", "triton")
    monkeypatch.setattr(a2net.kernels._memory, "POISON", True)
    if DEVICE.type == "cpu":
        yield
        return
    torch.set_default_device(DEVICE)
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("A2NET_BACKEND", "torch")
    yield
