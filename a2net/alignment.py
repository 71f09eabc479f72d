"""Align one image pair with a trained model and draw the result (``a2net.align``, ``a2net align``).

:func:`align` takes a source and a target image (paths, PIL images, arrays or ``(3, H, W)``
tensors in [0, 1]), predicts the transformation with an :class:`a2net.A2Net` (affine or TPS) or a
:class:`a2net.TwoStageAligner` (affine+TPS), warps the source onto the target at the target's
resolution and, when keypoints are given, transfers the target keypoints into the source image
(the direction of every ``theta``, docs/design.md §5). :func:`save_alignment_figure` draws the
source, the target, the warped source, a checkerboard of warped source and target and their
blend, with the keypoints, and writes the figure atomically.

Keypoints are ``(2, N)`` **1-based pixel** coordinates (row 0 x, row 1 y), the convention of the
benchmark keypoint files (:func:`a2net.geometry.pixels_to_normalized`); negative values mark
padding, as in PF-PASCAL.

The model-running helpers (:func:`a2net.inference.predict_chain`, ...) are those of
:mod:`a2net.inference`, shared with :mod:`a2net.evaluate`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from a2net import geometry
from a2net.fileio import atomic_write
from a2net.inference import (
    as_image,
    inference_defaults,
    input_size,
    load_aligner,
    mode_of,
    model_device,
    predict_chain,
    transfer_points,
    warp_chain,
)
from a2net.model import normalize_images

__all__ = [
    "Alignment",
    "align",
    "checkerboard",
    "save_alignment_figure",
]


# --------------------------------------------------------------------------------------------
# Inputs


def _as_points(points, name: str) -> torch.Tensor | None:
    if points is None:
        return None
    p = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points).to(torch.float64)
    if p.dim() != 2 or p.shape[0] != 2:
        raise ValueError(
            f"{name}: expected (2, N) 1-based pixel coordinates (row 0 x, row 1 y), got shape {tuple(p.shape)}"
        )
    return p.cpu()


# --------------------------------------------------------------------------------------------
# align


@dataclass(frozen=True)
class Alignment:
    """The result of :func:`align`.

    Attributes:
        mode: ``"affine"``, ``"tps"`` or ``"affine+tps"``.
        chain: the thetas in the order target points go through them, each ``(1, P)``
            (``[theta]``, or ``[theta_tps, theta_affine]``), on the CPU.
        source, target: ``(3, H_s, W_s)`` and ``(3, H_t, W_t)`` in [0, 1].
        warped: ``(3, H_t, W_t)`` the source warped onto the target's grid.
        source_points, target_points: ``(2, N)`` 1-based pixels as given, or None.
        transferred_points: ``(2, N)`` the target points mapped into the source image (1-based
            pixels, ``-1`` for padding), or None without target points.
    """

    mode: str
    chain: tuple
    source: torch.Tensor
    target: torch.Tensor
    warped: torch.Tensor
    image_size: tuple
    source_points: torch.Tensor | None = None
    target_points: torch.Tensor | None = None
    transferred_points: torch.Tensor | None = None

    @property
    def theta(self):
        """``(P,)`` for one model; ``(theta_affine (6,), theta_tps (18,))`` for affine+TPS
        (the output order of :class:`a2net.TwoStageAligner`)."""
        if len(self.chain) == 1:
            return self.chain[0][0]
        return self.chain[1][0], self.chain[0][0]

    def transform_points(self, target_points) -> torch.Tensor:
        """Map ``(2, N)`` 1-based target pixels into the source image (1-based pixels)."""
        points = _as_points(target_points, "target_points")
        return transfer_points(self.chain, points[None], tuple(self.target.shape[1:]), tuple(self.source.shape[1:]))[0]

    def transfer_errors(self) -> torch.Tensor | None:
        """``(N,)`` pixel distances between the transferred target points and the source points
        (NaN for padded keypoints); None unless both point sets were given."""
        if self.transferred_points is None or self.source_points is None:
            return None
        valid = (
            geometry.valid_keypoints(self.source_points[None])[0]
            & geometry.valid_keypoints(self.target_points[None])[0]
        )
        errors = torch.linalg.vector_norm(self.transferred_points - self.source_points, dim=0)
        return torch.where(valid, errors, torch.full_like(errors, float("nan")))


def align(
    source,
    target,
    model=None,
    image_size=None,
    source_points=None,
    target_points=None,
    device=None,
    iterations: int | None = None,
    symmetric: bool | None = None,
    refine: bool | None = None,
) -> Alignment:
    """Align ``source`` onto ``target``.

    Args:
        source, target: paths, PIL images, ``(H, W[, 3])`` arrays or ``(3, H, W)`` tensors in [0, 1].
        model: an :class:`a2net.A2Net`, a :class:`a2net.TwoStageAligner`, a checkpoint path
            (:func:`a2net.checkpoint.load_model`), or None for the embedded default model.
        image_size: network input ``(H, W)``; default the model's ``image_size``. Both images are
            resized to it (bilinear, antialiased) and ImageNet-normalised.
        source_points, target_points: optional ``(2, N)`` 1-based pixel keypoints of each image.
        device: where to run a model given by path or None (default: CUDA when available).
            A model passed in runs where it is.
        iterations, symmetric, refine: the inference options of
            :func:`a2net.inference.predict_chain` (composed passes, both directions averaged,
            photometric refinement); None takes the model's
            (:func:`a2net.inference.inference_defaults`: those its checkpoint names, else one
            plain pass).
    Returns:
        an :class:`Alignment`; ``warped`` is the source resampled at the target's resolution.

    Example::

        >>> result = a2net.align("cat1.jpg", "cat2.jpg")
        >>> result.theta            # (6,) target -> source, for the default affine model
        >>> save_alignment_figure(result, "alignment.png")
    """
    if model is None or isinstance(model, (str, os.PathLike)):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_aligner(checkpoint=model, device=device)
    mode = mode_of(model)
    options = inference_defaults(model, iterations, symmetric, refine)
    source_image, target_image = as_image(source, "source"), as_image(target, "target")
    source_points = _as_points(source_points, "source_points")
    target_points = _as_points(target_points, "target_points")
    if source_points is not None and target_points is not None and source_points.shape != target_points.shape:
        raise ValueError(
            f"target_points: expected shape {tuple(source_points.shape)} (that of source_points: "
            f"keypoint i of one image matches keypoint i of the other), got {tuple(target_points.shape)}"
        )
    size = input_size(model, image_size)
    run_on = model_device(model)
    with torch.no_grad():
        src = normalize_images(source_image[None].to(run_on), size=size)
        tgt = normalize_images(target_image[None].to(run_on), size=size)
        chain = [theta.detach().float().cpu() for theta in predict_chain(model, src, tgt, **options)]
        warped = warp_chain(source_image[None], chain, tuple(target_image.shape[1:]))[0]
    transferred = None
    if target_points is not None:
        transferred = transfer_points(
            chain, target_points[None], tuple(target_image.shape[1:]), tuple(source_image.shape[1:])
        )[0]
    return Alignment(
        mode=mode,
        chain=tuple(chain),
        source=source_image,
        target=target_image,
        warped=warped,
        image_size=size,
        source_points=source_points,
        target_points=target_points,
        transferred_points=transferred,
    )


# --------------------------------------------------------------------------------------------
# The figure


def checkerboard(a: torch.Tensor, b: torch.Tensor, tiles: int = 8) -> torch.Tensor:
    """Interleave two ``(C, H, W)`` images in a ``tiles`` x ``tiles`` checkerboard (``a`` on the
    top-left tile)."""
    h, w = a.shape[1:]
    rows = (torch.arange(h) * tiles // h).view(h, 1)
    cols = (torch.arange(w) * tiles // w).view(1, w)
    return torch.where(((rows + cols) % 2 == 0).unsqueeze(0), a, b)


def _show(ax, image: torch.Tensor, title: str):
    ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="bilinear")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def _valid(points: torch.Tensor | None) -> torch.Tensor | None:
    return None if points is None else geometry.valid_keypoints(points[None])[0]


def save_alignment_figure(result: Alignment, path, dpi: int = 100, panel_size: float = 3.2, tiles: int = 8) -> Path:
    """Draw an :class:`Alignment` and write it atomically (PNG, or the format of ``path``'s suffix).

    Panels: source, target, warped source, checkerboard of warped source and target, 50/50
    blend. Target keypoints, when given, are drawn on the target and (since the warped source
    lives on the target's grid) on the warped source and the overlays; their transfer into the
    source as crosses on the source, joined to the source keypoints when those are given too.
    A keypoint has the same colour in every panel.

    The image is ``round(5 * panel_size * dpi)`` pixels wide and ``round((panel_size * a + 0.75) *
    dpi)`` high, with ``a`` the larger height/width ratio of the two images clamped to [0.4, 2].

    Args:
        result: from :func:`align`.
        path: output file (``.png``, ``.pdf``, ``.svg``, ...).
        dpi: pixels per inch.
        panel_size: width of each of the 5 panels in inches.
        tiles: checkerboard tiles per side.
    Returns:
        the path written.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas for PNG

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    # the panels' height follows the taller image's aspect ratio (within 0.4x .. 2x the width)
    aspect = max(image.shape[1] / image.shape[2] for image in (result.source, result.target))
    height = panel_size * min(max(aspect, 0.4), 2.0)
    header = 0.75  # inches for the title lines and the panel titles
    # Agg truncates width * dpi to an int: aim at the middle of the pixel so that the size is the
    # documented rounding whatever the float error
    pixels = (round(5 * panel_size * dpi), round((height + header) * dpi))
    fig = Figure(figsize=((pixels[0] + 0.5) / dpi, (pixels[1] + 0.5) / dpi), dpi=dpi)
    axes = fig.subplots(1, 5)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.02 * panel_size / (height + header), top=height / (height + header), wspace=0.04
    )
    warped, target = result.warped, result.target
    _show(axes[0], result.source, "source")
    _show(axes[1], target, "target")
    _show(axes[2], warped, "warped source")
    _show(axes[3], checkerboard(warped, target, tiles), "checkerboard (warped | target)")
    _show(axes[4], 0.5 * warped + 0.5 * target, "blend (warped + target)")

    n = max([p.shape[1] for p in (result.target_points, result.source_points) if p is not None], default=0)
    palette = colormaps["tab10" if n <= 10 else "tab20"]
    colours = palette(np.arange(max(n, 1)) % palette.N)
    marker = dict(s=28, edgecolors="white", linewidths=0.7, zorder=3)
    tp, sp, moved = result.target_points, result.source_points, result.transferred_points
    if tp is not None:
        keep = _valid(tp).numpy()
        for ax in axes[1:]:
            ax.scatter(tp[0, keep] - 1, tp[1, keep] - 1, c=colours[: tp.shape[1]][keep], marker="o", **marker)
    if sp is not None:
        keep = _valid(sp).numpy()
        axes[0].scatter(sp[0, keep] - 1, sp[1, keep] - 1, c=colours[: sp.shape[1]][keep], marker="o", **marker)
    if moved is not None:
        keep = _valid(moved).numpy()
        if sp is not None:
            both = keep & _valid(sp).numpy()
            for i in np.flatnonzero(both):
                axes[0].plot(
                    [moved[0, i] - 1, sp[0, i] - 1],
                    [moved[1, i] - 1, sp[1, i] - 1],
                    color=colours[i],
                    linewidth=1.0,
                    zorder=2,
                )
        axes[0].scatter(
            moved[0, keep] - 1,
            moved[1, keep] - 1,
            c=colours[: moved.shape[1]][keep],
            marker="X",
            s=40,
            edgecolors="black",
            linewidths=0.5,
            zorder=4,
        )
    panels = (result.source, target, warped, warped, warped)
    for ax, image in zip(axes, panels, strict=True):  # the axes keep the image's extent: points may leave it
        ax.set_xlim(-0.5, image.shape[2] - 0.5)
        ax.set_ylim(image.shape[1] - 0.5, -0.5)

    title = (
        f"A2Net {result.mode} alignment (source warped onto target; network input {result.image_size[0]}x"
        f"{result.image_size[1]})"
    )
    errors = result.transfer_errors()
    if errors is not None and bool(torch.isfinite(errors).any()):
        title += (
            f"\no: keypoints, x: target keypoints transferred into the source; mean error "
            f"{float(torch.nanmean(errors)):.1f} px"
        )
    elif moved is not None:
        title += "\no: target keypoints, x: their transfer into the source"
    fig.suptitle(title, fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return path
