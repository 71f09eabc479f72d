"""Running a trained aligner: the helpers that :mod:`a2net.evaluate` and :mod:`a2net.alignment` share.

An *aligner* is an :class:`a2net.A2Net` (mode ``"affine"`` or ``"tps"``) or an
:class:`a2net.TwoStageAligner` (``"affine+tps"``). :func:`predict_chain` gives its transformations
in the order target points go through them (the direction of every ``theta``, docs/design.md §5);
:func:`warp_chain` and :func:`transfer_points` apply such a chain to images and to 1-based pixel
keypoints; :func:`load_aligner` builds one from checkpoints and :func:`as_image` reads an input image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from a2net import checkpoint as ckpt
from a2net import geometry
from a2net._validation import as_size, check_choice
from a2net.errors import InputError
from a2net.images import check_image_range, from_pil, load_image, to_tensor
from a2net.model import A2Net, TwoStageAligner

__all__ = [
    "MODES",
    "as_image",
    "input_size",
    "load_aligner",
    "mode_of",
    "model_device",
    "predict_chain",
    "transfer_points",
    "warp_chain",
]

#: The three ways of aligning: one affine model, one TPS model, or affine then TPS.
MODES = ("affine", "tps", "affine+tps")


def mode_of(aligner: nn.Module) -> str:
    """``"affine"`` or ``"tps"`` for an :class:`a2net.A2Net`, ``"affine+tps"`` for a
    :class:`a2net.TwoStageAligner`."""
    if isinstance(aligner, TwoStageAligner):
        return "affine+tps"
    if isinstance(aligner, A2Net):
        return aligner.geometric_model
    raise ValueError(f"model: expected an A2Net or a TwoStageAligner, got {type(aligner).__name__}")


def input_size(aligner: nn.Module, image_size=None) -> tuple[int, int]:
    """The network input size: ``image_size`` if given, else the model's (the affine stage's).

    Raises:
        a2net.errors.InputError: ``image_size`` gives feature maps under 7x7 (the encoder's 7x7
            convolution; 112x112 pixels for the named backbones).
    """
    models = [aligner.affine, aligner.tps] if mode_of(aligner) == "affine+tps" else [aligner]
    if image_size is None:
        return tuple(models[0].image_size)
    size = as_size("image_size", image_size)
    for model in models:
        features = model._feature_size(size)
        if min(features) < 7:
            raise InputError(
                f"image_size: expected at least 7x7 feature maps (the encoder's 7x7 convolution; 112x112 pixels "
                f"for the named backbones), got {features} from {size}"
            )
    return size


def model_device(aligner: nn.Module) -> torch.device:
    """The device of the aligner's parameters (CPU for a model without any)."""
    param = next(aligner.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def predict_chain(aligner: nn.Module, source_images: torch.Tensor, target_images: torch.Tensor) -> list[torch.Tensor]:
    """The predicted transformations in the order points go through them (target -> source).

    Args:
        aligner: an :class:`a2net.A2Net` or a :class:`a2net.TwoStageAligner`.
        source_images, target_images: ``(B, 3, H, W)`` ImageNet-normalised network inputs.
    Returns:
        ``[theta]`` (``(B, 6)`` or ``(B, 18)``) for one model, ``[theta_tps, theta_affine]`` for
        the two-stage aligner: the chain :func:`a2net.geometry.compose_points` takes.
    Raises:
        a2net.errors.InputError: a predicted theta is not finite (never passed on as a figure or
            a score).
    """
    if mode_of(aligner) == "affine+tps":
        theta_affine, theta_tps = aligner(source_images, target_images)
        chain = [theta_tps, theta_affine]
    else:
        chain = [aligner(source_images, target_images)]
    for theta in chain:
        finite = theta.detach().isfinite().all(dim=1)
        if not bool(finite.all()):
            pairs = (~finite).nonzero().flatten().tolist()
            raise InputError(
                f"model: expected a finite theta, got NaN/inf for pair(s) {pairs[:10]} of {theta.shape[0]} "
                "(are the checkpoint's weights or the images corrupted?)"
            )
    return chain


def warp_chain(image: torch.Tensor, chain: Sequence[torch.Tensor], size=None) -> torch.Tensor:
    """Warp ``image`` through a chain of transformations with **one** resampling.

    One transformation is :func:`a2net.geometry.warp_image`. For a chain (affine+TPS) the
    output pixel grid is mapped through all of them (:func:`a2net.geometry.compose_points`)
    and the source sampled once, which keeps the detail that warping twice would blur.

    Args:
        image: ``(B, C, H, W)`` floating tensor.
        chain: thetas as :func:`predict_chain` returns them, each ``(B, P)``.
        size: output ``(h, w)``; ``None`` keeps ``(H, W)``.
    Returns:
        ``(B, C, h, w)``; bilinear, ``align_corners=True``, zeros outside the source.
    """
    if len(chain) == 1:
        return geometry.warp_image(image, chain[0].to(image), size)
    h, w = tuple(image.shape[2:]) if size is None else as_size("size", size)
    theta = chain[0]

    def axis(n):  # pixel centres, align_corners=True; a single one at 0 as geometry.warp_image puts it
        if n == 1:
            return torch.zeros(1, device=theta.device, dtype=theta.dtype)
        return torch.linspace(-1, 1, n, device=theta.device, dtype=theta.dtype)

    ys, xs = torch.meshgrid(axis(h), axis(w), indexing="ij")
    points = torch.stack((xs, ys)).reshape(1, 2, h * w).expand(theta.shape[0], -1, -1)
    grid = geometry.compose_points(list(chain), points).transpose(1, 2).reshape(-1, h, w, 2)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def transfer_points(
    chain: Sequence[torch.Tensor], target_points: torch.Tensor, target_size, source_size
) -> torch.Tensor:
    """Map target keypoints in 1-based pixels into the source image (docs/design.md §5).

    Normalise with the target size, go through the chain, denormalise with the source size;
    padded keypoints (a negative coordinate) stay ``-1``. Computed in float64.

    Args:
        chain: thetas as :func:`predict_chain` returns them, each ``(B, P)``.
        target_points: ``(B, 2, N)`` 1-based pixels of the target image.
        target_size, source_size: ``(H, W)`` pairs or ``(B, 2)`` tensors.
    Returns:
        ``(B, 2, N)`` float64 1-based pixels in the source image.
    """
    points = target_points.to(torch.float64)
    valid = geometry.valid_keypoints(points)
    chain = [theta.detach().to(device=points.device, dtype=torch.float64) for theta in chain]
    moved = geometry.compose_points(chain, geometry.pixels_to_normalized(points, target_size))
    return geometry.normalized_to_pixels(moved, source_size, valid)


def load_aligner(
    checkpoint=None, affine_checkpoint=None, tps_checkpoint=None, geometric_model=None, device=None
) -> nn.Module:
    """Build the aligner a command asked for, on ``device``, in eval mode.

    * ``affine_checkpoint`` and ``tps_checkpoint``: a :class:`a2net.TwoStageAligner`;
    * ``checkpoint``: that model (:func:`a2net.checkpoint.load_model`);
    * none of them: the embedded default model (:func:`a2net.checkpoint.load_default_model`).

    ``geometric_model`` (``"affine"``, ``"tps"``, ``"affine+tps"`` or None) checks that the
    aligner is of that kind.
    """
    if (affine_checkpoint is None) != (tps_checkpoint is None):
        raise ValueError(
            "affine_checkpoint, tps_checkpoint: expected both (affine+TPS) or neither, got "
            f"{affine_checkpoint!r} and {tps_checkpoint!r}"
        )
    if affine_checkpoint is not None:
        if checkpoint is not None:
            raise ValueError("checkpoint: expected either checkpoint or affine_checkpoint + tps_checkpoint, got both")
        aligner = TwoStageAligner(ckpt.load_model(affine_checkpoint), ckpt.load_model(tps_checkpoint))
    elif checkpoint is not None:
        aligner = ckpt.load_model(checkpoint)
    else:
        aligner = ckpt.load_default_model()  # FileNotFoundError, saying what to do, when absent
    if geometric_model is not None:
        check_choice("geometric_model", geometric_model, MODES)
        if mode_of(aligner) != geometric_model:
            raise ValueError(
                f"geometric_model: expected {geometric_model!r}, the checkpoint(s) give {mode_of(aligner)!r}"
            )
    return aligner.to(device or "cpu").eval()


# --------------------------------------------------------------------------------------------
# Inputs


def as_image(image, name: str = "image") -> torch.Tensor:
    """A path, a PIL image, an ``(H, W[, 3|4])`` array or a ``(3, H, W)`` tensor -> ``(3, H, W)``
    float32 in [0, 1] on the CPU.

    uint8 tensors and arrays are divided by 255 (uint16 arrays and 16-bit files by 65535); float
    ones must be finite and in [0, 1], else :class:`a2net.errors.InputError` (see :mod:`a2net.images`)."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        if not image.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor in [0, 1] or uint8, got dtype {image.dtype}")
        check_image_range(name, image)
        return image.detach().float().cpu()
    if isinstance(image, np.ndarray):
        return to_tensor(image, name)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return from_pil(image, name)
    raise ValueError(
        f"{name}: expected a path, a PIL image, an array or a (3, H, W) tensor, got {type(image).__name__}"
    )
