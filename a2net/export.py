"""Exporting a trained aligner as a ``torch.export`` program (``a2net export``).

The program is the model with the ImageNet normalisation in front of it, so that deployment code
needs only PyTorch and a resize::

    program = torch.export.load("model.pt2").module()
    theta = program(source, target)          # affine or TPS: (B, 6) or (B, 18)
    theta_affine, theta_tps = program(source, target)   # an affine+TPS export

**Inputs**: ``source`` and ``target``, ``(B, 3, H, W)`` float32 RGB in ``[0, 1]`` on the device
it was exported for, at exactly the exported ``(H, W)`` (the model's ``image_size`` unless
``image_size`` says otherwise; a program refuses other sizes). Resize the images first;
:func:`a2net.normalize_images`'s resize (bilinear, antialiased) reproduces the eager model's
input exactly. ``B`` is dynamic (any batch size >= 1). **Output**: theta as the model returns
it, mapping target points to source points (docs/design.md §5). Unlike the eager model, the
program does not check its inputs for NaN or for the [0, 1] range.

**What the graph holds.** The op dispatch (:mod:`a2net.ops`) is decided while tracing, from the
example inputs' device:

* exported for CPU: the ops' PyTorch reference, i.e. ``aten`` ops only — the file loads and runs
  with PyTorch alone, without a2net installed;
* exported for CUDA: the Triton kernels stay as the registered custom ops
  ``torch.ops.a2net.correlation_oac`` and ``torch.ops.a2net.attention_pool`` (traced through their
  fake kernels); loading the file then needs them registered first: ``import a2net.ops`` before
  ``torch.export.load``.

The export runs under ``torch.no_grad()`` with the weights frozen, so the program computes
nothing for a backward pass (the fused op is not asked to keep its correlation tiles).
"""

from __future__ import annotations

import copy
import io
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from a2net.fileio import atomic_write
from a2net.inference import input_size, mode_of
from a2net.model import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ExportedAligner", "export_aligner", "graph_ops"]


class ExportedAligner(nn.Module):
    """An aligner with the ImageNet normalisation in front: what :func:`export_aligner` traces.

    Shape: ``forward(source, target)``, two ``(B, 3, H, W)`` float batches in [0, 1] -> theta
    ``(B, 6)`` / ``(B, 18)``, or ``(theta_affine, theta_tps)`` for a
    :class:`a2net.TwoStageAligner`.
    """

    def __init__(self, aligner: nn.Module):
        super().__init__()
        mode_of(aligner)  # an A2Net or a TwoStageAligner
        self.aligner = aligner
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, source: torch.Tensor, target: torch.Tensor):
        return self.aligner((source - self.mean) / self.std, (target - self.mean) / self.std)


def export_aligner(aligner: nn.Module, path=None, image_size=None, device=None) -> torch.export.ExportedProgram:
    """Export ``aligner`` (see the module docstring) and, with ``path``, save it atomically.

    Args:
        aligner: an :class:`a2net.A2Net` or a :class:`a2net.TwoStageAligner` (left unchanged: a
            frozen copy is exported).
        path: the ``.pt2`` file to write (``torch.export.save``), or None.
        image_size: the input ``(H, W)`` of the program; default the model's.
        device: ``"cpu"`` or ``"cuda"``: the device the program runs on (default: the aligner's).
    Returns:
        the ``torch.export.ExportedProgram``.
    """
    size = input_size(aligner, image_size)
    if device is None:
        param = next(aligner.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    frozen = copy.deepcopy(aligner).to(device).eval().requires_grad_(False)
    program_module = ExportedAligner(frozen).to(device)
    example = torch.rand(2, 3, *size, device=device)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(
            program_module, (example, example.clone()), dynamic_shapes=({0: batch}, {0: batch})
        )
    if path is not None:
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
    return program


def graph_ops(program: torch.export.ExportedProgram) -> Counter:
    """How many times each op is called in ``program``'s graph (``"a2net.correlation_oac.default"``,
    ``"aten.conv2d.default"``, ...)."""
    return Counter(str(node.target) for node in program.graph.nodes if node.op == "call_function")
