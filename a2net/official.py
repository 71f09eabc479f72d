"""The authors' published A2Net checkpoints (``*.pth.tar``) as :class:`a2net.A2Net` models.

The authors' code (a fork of CNNGeometric) saves ``{"state_dict", "args", "epoch",
"best_test_loss", "optimizer"}`` with ``torch.save``, in PyTorch's legacy (non-zip) format:

* ``state_dict`` keys are ``FeatureExtraction.model.*`` (``FeatureExtraction.vgg.*`` in old VGG
  checkpoints) and ``FeatureRegression.{preconv,conv,proj,att.att,linear,weight}``; the module
  names of :class:`a2net.A2Net` are the same;
* the OAC is a 1x1 convolution over the ``(2h-1)(2w-1)`` channels of their aligned tensor,
  ``preconv.0.weight`` ``(128, 841, 1, 1)``; its channel ``dy*(2w-1) + dx`` is offset ``(dy, dx)``,
  so it is this library's OAC weight ``(128, 29, 29)`` reshaped;
* their correlation flattens the source map column-major, so their offsets are those of this
  library's OAC on the source map with its axes swapped (docs/design.md §3.3): the model is built
  with ``oac_layout="official"``;
* checkpoints of that PyTorch era have no BatchNorm ``num_batches_tracked`` buffers (they get
  the default, 0: unused in eval mode);
* ``args`` is an ``argparse.Namespace`` and ``best_test_loss`` often a numpy scalar, which
  ``torch.load(weights_only=True)`` refuses unless allow-listed. Only those are allow-listed
  (:data:`ALLOWED_GLOBALS`); a file that needs anything else is refused, never unpickled
  without restriction (unpickling can run arbitrary code).

Example::

    >>> model = load_official_checkpoint("resnet_affine_oack027.pth.tar")   # doctest: +SKIP
    >>> theta = model(source_images, target_images)                          # doctest: +SKIP
    >>> convert_official("resnet_affine_oack027.pth.tar", "models/resnet_affine")  # doctest: +SKIP

Command line: ``a2net convert-official SRC DST`` (:mod:`a2net.cli`).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from a2net._validation import check_choice
from a2net.checkpoint import save_checkpoint
from a2net.model import GEOMETRIC_MODELS, TORCHVISION_BACKBONES, A2Net

__all__ = [
    "ALLOWED_GLOBALS",
    "authors_correlation",
    "authors_correlation_align",
    "authors_offset_aware_correlation",
    "convert_official",
    "load_official_checkpoint",
    "official_state_dict",
    "read_official_checkpoint",
]

# --------------------------------------------------------------------------------------------
# The authors' construction of the head's first stages, written once: the baseline of the CPU
# benchmark and what the tests hold the reference ops and the kernels to.


def authors_correlation(feature_a: torch.Tensor, feature_b: torch.Tensor) -> torch.Tensor:
    """The authors' correlation: the *source* map flattened column-major.

    Args:
        feature_a: ``(B, C, H, W)`` source features. feature_b: ``(B, C, H, W)`` target features.
    Returns:
        ``(B, H*W, H, W)``; channel ``xs*H + ys`` is source position ``(ys, xs)`` (this library's
        :func:`a2net.reference.correlation` uses ``ys*W + xs``).
    """
    b, c, h, w = feature_a.shape
    source = feature_a.transpose(2, 3).reshape(b, c, h * w)
    target = feature_b.reshape(b, c, h * w).transpose(1, 2)
    return torch.bmm(target, source).view(b, h, w, h * w).permute(0, 3, 1, 2)


def authors_correlation_align(corr: torch.Tensor, source_size=None) -> torch.Tensor:
    """The authors' aligned tensor: a Python loop over target positions scatters each target's
    ``(Hs, Ws)`` block of source scores into a zero-filled ``(Hs+Ht-1, Ws+Wt-1)`` offset grid.

    Target ``(yt, xt)`` sees source ``(ys, xs)`` at offset ``(ys - yt + Ht - 1, xs - xt + Wt - 1)``,
    so its block lands on rows ``Ht-1-yt .. Ht-1-yt+Hs-1`` and columns ``Wt-1-xt .. Wt-1-xt+Ws-1``.

    Args:
        corr: ``(B, Hs*Ws, Ht, Wt)``, channel ``ys*Ws + xs``.
        source_size: ``(Hs, Ws)``; default the target size (the authors' maps are square and equal).
    Returns:
        ``(B, (Hs+Ht-1)*(Ws+Wt-1), Ht, Wt)``, channel ``dy*(Ws+Wt-1) + dx``.
    """
    b, _, ht, wt = corr.shape
    hs, ws = source_size if source_size is not None else (ht, wt)
    dh, dw = hs + ht - 1, ws + wt - 1
    blocks = corr.reshape(b, hs, ws, ht, wt)
    aligned = corr.new_zeros(b, dh, dw, ht, wt)
    for yt in range(ht):
        for xt in range(wt):
            aligned[:, ht - 1 - yt : ht - 1 - yt + hs, wt - 1 - xt : wt - 1 - xt + ws, yt, xt] = blocks[:, :, :, yt, xt]
    return aligned.view(b, dh * dw, ht, wt)


def authors_offset_aware_correlation(
    corr: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, source_size=None
) -> torch.Tensor:
    """The authors' OAC: :func:`authors_correlation_align`, then a 1x1 convolution over its
    ``(Hs+Ht-1)(Ws+Wt-1)`` channels.

    Args:
        corr: ``(B, Hs*Ws, Ht, Wt)``. weight: ``(O, Hs+Ht-1, Ws+Wt-1)``. bias: ``(O,)`` or ``None``.
        source_size: ``(Hs, Ws)``; default the target size.
    Returns:
        ``(B, O, Ht, Wt)``, equal to :func:`a2net.reference.offset_aware_correlation`.
    """
    o, dh, dw = weight.shape
    aligned = authors_correlation_align(corr, source_size)
    return F.conv2d(aligned, weight.reshape(o, dh * dw, 1, 1), bias)


_BACKBONE_PREFIX = "FeatureExtraction.model."
_OLD_VGG_PREFIX = "FeatureExtraction.vgg."
_OAC_WEIGHT = "FeatureRegression.preconv.0.weight"
_LINEAR_WEIGHT = "FeatureRegression.linear.weight"
_POSITION_CODE = "FeatureRegression.weight"


def _numpy_scalar_globals() -> list:
    """numpy's scalar reconstructor (under both module names numpy has had) and its dtypes.

    A pickled numpy scalar is ``scalar(dtype, raw bytes)``; the dtype is ``numpy.dtype(code)``
    plus a ``__setstate__`` on the dtype instance, whose class must be allowed too.
    """
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdg"}
    return [
        (scalar, "numpy.core.multiarray.scalar"),  # pickled by numpy 1.x (the authors' era)
        (scalar, "numpy._core.multiarray.scalar"),  # pickled by numpy 2
        np.dtype,
        *sorted(dtypes - {np.dtype}, key=lambda t: t.__name__),
    ]


#: The globals, beyond tensors and plain containers, that :func:`read_official_checkpoint` lets
#: ``torch.load(weights_only=True)`` build: the training arguments and numpy scalars.
ALLOWED_GLOBALS: list = [argparse.Namespace, *_numpy_scalar_globals()]


def _safe_load(path: Path):
    """``torch.load(weights_only=True)`` with :data:`ALLOWED_GLOBALS`, errors made explicit."""
    with open(path, "rb") as f:
        head = f.read(4)
    if tarfile.is_tarfile(path):
        raise pickle.UnpicklingError(
            f"refused to load {str(path)!r}: it is in PyTorch's oldest (.tar) checkpoint format, which only an "
            "unrestricted pickle load reads, and unpickling without restriction can run arbitrary code"
        )
    if head[:2] != b"PK" and head[:1] != b"\x80":  # a zip archive, or a pickle stream (the legacy format)
        raise ValueError(f"path: {str(path)!r} is not a PyTorch checkpoint (starts with {head!r})")
    # Only the entries the user has not allowed already: leaving the context removes what it added.
    present = set(torch.serialization.get_safe_globals())
    extra = [g for g in ALLOWED_GLOBALS if g not in present]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL (\S+)", text)
        # torch's own explanation, without its advice to retry with weights_only=False
        detail = next(
            (
                line.strip()
                for line in text.splitlines()
                if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler error" in line
            ),
            text.splitlines()[0] if text else "",
        )
        what = f"the global {found.group(1)!r}, which is" if found else "something"
        raise pickle.UnpicklingError(
            f"refused to load {str(path)!r}: its pickle needs {what} not on this loader's allow-list "
            "(tensors, plain containers, argparse.Namespace, numpy scalars: ALLOWED_GLOBALS). Unpickling it "
            "could run arbitrary code, so nothing in it was run and the file is not loaded (this loader never "
            "unpickles without restriction). If you trust the file, re-save its 'state_dict' and 'args' (as a "
            f"dict) with plain types. [{detail}]"
        ) from None


def read_official_checkpoint(path) -> dict:
    """Read an authors' checkpoint file safely (legacy or zip ``torch.save`` format).

    Args:
        path: the ``*.pth.tar`` file.
    Returns:
        ``{"state_dict": {name: tensor}, "args": dict or None, **other entries}`` on CPU; a file
        holding a bare state_dict gives ``{"state_dict": it, "args": None}``.
    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file needs a global outside :data:`ALLOWED_GLOBALS` (refused,
            nothing in it is run).
        ValueError: not a PyTorch checkpoint, or no state_dict in it.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"path: expected the authors' *.pth.tar file, got the directory {str(path)!r} (this "
            "library's checkpoints are directories: load them with a2net.checkpoint.load_model)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    obj = _safe_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        checkpoint = dict(obj)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        checkpoint = {"state_dict": obj}
    else:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else None
        raise ValueError(
            f"path: expected a dict with a 'state_dict' (the authors' format) in {str(path)!r}, got "
            f"{type(obj).__name__}" + (f" with keys {keys}" if keys is not None else "")
        )
    args = checkpoint.get("args")
    checkpoint["args"] = vars(args) if isinstance(args, argparse.Namespace) else args
    return checkpoint


def official_state_dict(state: dict) -> dict:
    """The authors' state_dict with this library's names and shapes (no model needed).

    ``module.`` prefixes (DataParallel) are dropped, ``FeatureExtraction.vgg.`` becomes
    ``FeatureExtraction.model.``, the OAC's ``(O, (2h-1)(2w-1), 1, 1)`` convolution weight becomes
    ``(O, 2h-1, 2w-1)`` (square maps: the authors' code needs them). Missing BatchNorm
    ``num_batches_tracked`` buffers are added by :func:`load_official_checkpoint`, which knows the model.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    mapped = {}
    for key, value in state.items():
        if key.startswith(_OLD_VGG_PREFIX):
            key = _BACKBONE_PREFIX + key.removeprefix(_OLD_VGG_PREFIX)
        if key in mapped:
            raise ValueError(f"state_dict: {key!r} appears under both its old ('vgg') and its new ('model') name")
        mapped[key] = value
    if _OAC_WEIGHT not in mapped:
        raise ValueError(
            f"state_dict: no {_OAC_WEIGHT!r}; is this an A2Net checkpoint? (keys: {sorted(mapped)[:5]}...)"
        )
    oac = mapped[_OAC_WEIGHT]
    side = math.isqrt(int(oac.shape[1])) if oac.dim() == 4 else 0
    if oac.dim() != 4 or tuple(oac.shape[2:]) != (1, 1) or side * side != oac.shape[1] or side % 2 == 0:
        raise ValueError(
            f"state_dict: expected {_OAC_WEIGHT} of the authors' 1x1 convolution over (2h-1)^2 "
            f"offsets, (O, (2h-1)^2, 1, 1) (128, 841, 1, 1 at 240x240), got {tuple(oac.shape)}"
        )
    mapped[_OAC_WEIGHT] = oac.reshape(oac.shape[0], side, side)  # channel dy*(2w-1) + dx -> [dy, dx]
    return mapped


def _infer(state: dict) -> tuple[str, str, int, int]:
    """``(geometric_model, backbone, channels, feature side)`` from a mapped state_dict's shapes."""
    if _LINEAR_WEIGHT not in state:
        raise ValueError(f"state_dict: no {_LINEAR_WEIGHT!r}; is this an A2Net checkpoint?")
    rows = int(state[_LINEAR_WEIGHT].shape[0])
    by_rows = {n: name for name, n in GEOMETRIC_MODELS.items()}
    if rows not in by_rows:
        raise ValueError(f"state_dict: {_LINEAR_WEIGHT} has {rows} outputs, expected 6 (affine) or 18 (TPS)")
    first = state.get(_BACKBONE_PREFIX + "0.weight")
    if first is None:
        raise ValueError(
            "state_dict: no backbone weights (FeatureExtraction.model.* or FeatureExtraction.vgg.*); "
            "the authors' checkpoints hold the backbone they were trained with"
        )
    backbone = {(7, 7): "resnet101", (3, 3): "vgg16"}.get(tuple(first.shape[2:]))
    if backbone is None:
        raise ValueError(
            f"state_dict: cannot tell the backbone from its first convolution {tuple(first.shape)} "
            "(7x7: ResNet-101, 3x3: VGG-16)"
        )
    oac = state[_OAC_WEIGHT]
    return by_rows[rows], backbone, int(oac.shape[0]), (int(oac.shape[1]) + 1) // 2


def _build(checkpoint: dict, geometric_model, backbone, map_location) -> A2Net:
    state = official_state_dict(checkpoint["state_dict"])
    inferred_model, inferred_backbone, channels, side = _infer(state)
    for name, given, inferred, choices in (
        ("geometric_model", geometric_model, inferred_model, GEOMETRIC_MODELS),
        ("backbone", backbone, inferred_backbone, TORCHVISION_BACKBONES),
    ):
        if given is not None:
            check_choice(name, given, tuple(choices))
            if given != inferred:
                raise ValueError(f"{name}: got {given!r}, but the checkpoint's weights are those of {inferred!r}")
    # Both backbones have stride 16 and 240 -> 15: the OAC's (2h-1)^2 channels give the input size.
    image_size = (16 * side, 16 * side)
    # On the meta device: no random initialisation of weights the checkpoint replaces.
    with torch.device("meta"):
        model = A2Net(
            inferred_model, backbone=inferred_backbone, oac_layout="official", image_size=image_size, channels=channels
        )
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=value.dtype)  # absent from checkpoints of that era
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"state_dict: does not fit A2Net({inferred_model!r}, backbone={inferred_backbone!r}, image_size="
            f"{image_size}): missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shapes {wrong[:5]}"
        )
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"internal: tensors not loaded from the checkpoint: {left[:5]}")
    return model.to(map_location if map_location is not None else "cpu").eval()


def load_official_checkpoint(
    path, geometric_model: str | None = None, backbone: str | None = None, map_location="cpu"
) -> A2Net:
    """Load an authors' published checkpoint (``*.pth.tar``) as an :class:`a2net.A2Net`.

    The geometric model (6 or 18 outputs of ``linear.weight``), the backbone (its first
    convolution: 7x7 ResNet-101, 3x3 VGG-16), the channels and the input size (the OAC's
    ``(2h-1)^2`` channels, 841 -> 240x240) are read from the weights; the model gets
    ``oac_layout="official"``, so that its theta is the authors' code's for the same images.

    Args:
        path: the checkpoint file (legacy or zip ``torch.save`` format; read with
            ``torch.load(weights_only=True)``, see :func:`read_official_checkpoint`).
        geometric_model: ``"affine"`` or ``"tps"`` to check against the weights (``None``: inferred).
        backbone: ``"resnet101"`` or ``"vgg16"`` to check against the weights (``None``: inferred).
        map_location: device of the returned model.
    Returns:
        the model, in eval mode, backbone frozen; ``model(source, target)`` takes ``(B, 3, 240, 240)``
        ImageNet-normalised images (:func:`a2net.normalize_images`) and returns ``(B, 6)`` or ``(B, 18)``.
    Raises:
        FileNotFoundError, ValueError (not an A2Net checkpoint, or ``geometric_model``/``backbone``
        disagree with it), pickle.UnpicklingError (refused: a global outside :data:`ALLOWED_GLOBALS`).
    """
    return _build(read_official_checkpoint(path), geometric_model, backbone, map_location)


def _json_value(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return repr(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_official(src, dst, geometric_model: str | None = None, backbone: str | None = None) -> Path:
    """Convert an authors' checkpoint to this library's checkpoint directory.

    The full model (backbone included: its weights come from the file) is written with
    :func:`a2net.checkpoint.save_checkpoint`, so :func:`a2net.checkpoint.load_model` and
    ``a2net eval --checkpoint DST`` load it. ``state.json["converted_from"]`` records the source
    file (path, SHA-256), its ``args`` and ``epoch``.

    Args:
        src: the ``*.pth.tar`` file.
        dst: the checkpoint directory to write (replaced atomically if it exists).
        geometric_model, backbone: checked against the weights (see :func:`load_official_checkpoint`).
    Returns:
        the checkpoint directory.
    """
    src = Path(src)
    checkpoint = read_official_checkpoint(src)
    model = _build(checkpoint, geometric_model, backbone, "cpu")
    args = checkpoint.get("args")
    record = {
        "format": "authors' A2Net checkpoint (*.pth.tar)",
        "path": str(src.resolve()),
        "sha256": _sha256(src),
        "epoch": _json_value(checkpoint.get("epoch")),
        "args": {str(k): _json_value(v) for k, v in args.items()} if isinstance(args, dict) else _json_value(args),
    }
    return save_checkpoint(dst, model, step=0, extra={"converted_from": record})
