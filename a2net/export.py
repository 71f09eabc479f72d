"""Exporting a trained aligner as a ``torch.export`` program (``a2net export``).

The program is the model with the ImageNet normalisation in front of it, so that deployment code
needs only PyTorch and a resize::

    program = torch.export.load("model.pt2").module()
    theta = program(source, target)          # affine or TPS: (B, 6) or (B, 18)
    theta_affine, theta_tps = program(source, target)   # an affine+TPS export

**Inference options in the graph.** The program runs the model's inference options (those the
checkpoint names, as ``a2net align`` does, unless ``iterations`` / ``symmetric`` say otherwise;
:func:`a2net.inference.inference_defaults`): composed passes of the affine model (or of the
two-stage aligner's affine stage) and the symmetric estimate are traced into it, so the program
gives what :func:`a2net.inference.predict_chain` gives. The photometric refinement is not exported
(its accept/reject steps are data-dependent control flow): apply
:func:`a2net.inference.refine_affine` to the program's theta where wanted. The options are saved
in the file, as the JSON extra file :data:`INFO_FILE` (:func:`program_info` reads it).

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
import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from a2net.fileio import atomic_write
from a2net.inference import inference_defaults, input_size, mode_of, predict_chain
from a2net.model import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["INFO_FILE", "ExportedAligner", "export_aligner", "exported_options", "graph_ops", "program_info"]

#: The extra file of a ``.pt2`` that says what the program computes: ``{"mode", "image_size",
#: "inference": {"iterations", "symmetric"}}``.
INFO_FILE = "a2net.json"


class ExportedAligner(nn.Module):
    """An aligner with the ImageNet normalisation in front: what :func:`export_aligner` traces.

    Shape: ``forward(source, target)``, two ``(B, 3, H, W)`` float batches in [0, 1] -> theta
    ``(B, 6)`` / ``(B, 18)``, or ``(theta_affine, theta_tps)`` for a
    :class:`a2net.TwoStageAligner`; ``iterations`` composed passes of the affine model (or stage),
    each the ``symmetric`` estimate or not (:func:`a2net.inference.predict_chain`, without its
    finiteness check).
    """

    def __init__(self, aligner: nn.Module, iterations: int = 1, symmetric: bool = False):
        super().__init__()
        self.mode = mode_of(aligner)  # an A2Net or a TwoStageAligner
        self.aligner = aligner
        self.iterations, self.symmetric = iterations, symmetric
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, source: torch.Tensor, target: torch.Tensor):
        chain = predict_chain(
            self.aligner,
            (source - self.mean) / self.std,
            (target - self.mean) / self.std,
            self.iterations,
            self.symmetric,
            check_finite=False,
        )
        if self.mode == "affine+tps":
            theta_tps, theta_affine = chain
            return theta_affine, theta_tps
        return chain[0]


def export_aligner(
    aligner: nn.Module,
    path=None,
    image_size=None,
    device=None,
    iterations: int | None = None,
    symmetric: bool | None = None,
) -> torch.export.ExportedProgram:
    """Export ``aligner`` (see the module docstring) and, with ``path``, save it atomically.

    Args:
        aligner: an :class:`a2net.A2Net` or a :class:`a2net.TwoStageAligner` (left unchanged: a
            frozen copy is exported).
        path: the ``.pt2`` file to write (``torch.export.save``, with :data:`INFO_FILE`), or None.
        image_size: the input ``(H, W)`` of the program; default the model's.
        device: ``"cpu"`` or ``"cuda"``: the device the program runs on (default: the aligner's).
        iterations, symmetric: the inference options traced into the program (None: the
            checkpoint's, :func:`a2net.inference.inference_defaults`; a TPS model makes one plain
            pass whatever they say).
    Returns:
        the ``torch.export.ExportedProgram``.
    Raises:
        a2net.errors.InputError: an option of the wrong type or range.
    """
    size = input_size(aligner, image_size)
    options = exported_options(aligner, iterations, symmetric)
    if device is None:
        param = next(aligner.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    frozen = copy.deepcopy(aligner).to(device).eval().requires_grad_(False)
    program_module = ExportedAligner(frozen, **options).to(device)
    example = torch.rand(2, 3, *size, device=device)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(
            program_module, (example, example.clone()), dynamic_shapes=({0: batch}, {0: batch})
        )
    if path is not None:
        info = {"mode": mode_of(aligner), "image_size": list(size), "inference": options}
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={INFO_FILE: json.dumps(info)})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
    return program


def graph_ops(program: torch.export.ExportedProgram) -> Counter:
    """How many times each op is called in ``program``'s graph (``"a2net.correlation_oac.default"``,
    ``"aten.conv2d.default"``, ...)."""
    return Counter(str(node.target) for node in program.graph.nodes if node.op == "call_function")


def exported_options(aligner: nn.Module, iterations: int | None = None, symmetric: bool | None = None) -> dict:
    """``{"iterations", "symmetric"}`` that :func:`export_aligner` traces into the program: one
    plain pass for a TPS model, else those given (not None) over the checkpoint's
    (:func:`a2net.inference.inference_defaults`; the refinement is never exported)."""
    if mode_of(aligner) == "tps":
        return {"iterations": 1, "symmetric": False}
    options = inference_defaults(aligner, iterations, symmetric, refine=False)
    return {"iterations": options["iterations"], "symmetric": options["symmetric"]}


def program_info(path) -> dict:
    """What a ``.pt2`` written by :func:`export_aligner` computes: ``{"mode", "image_size",
    "inference": {"iterations", "symmetric"}}`` (its :data:`INFO_FILE`; ``{}`` for a file
    without one)."""
    extra = {INFO_FILE: ""}
    torch.export.load(path, extra_files=extra)
    return json.loads(extra[INFO_FILE]) if extra[INFO_FILE] else {}
