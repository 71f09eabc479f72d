"""Align one image pair with a trained model and draw the result (``a2net.align``, ``a2net align``).

:func:`align` takes a source and a target image (paths, PIL images, arrays or ``(3, H, W)``
tensors in [0, 1]), predicts the transformation with an :class:`a2net.A2Net` (affine or TPS) or a
:class:`a2net.TwoStageAligner` (affine+TPS), warps the source onto the target at the target's
resolution and, when keypoints are given, transfers the target keypoints into the source image
(the direction of every ``theta``, SPEC §3 and §5). :func:`save_alignment_figure` draws the
source, the target, the warped source, a checkerboard of warped source and target and their
blend, with the keypoints, and writes the figure atomically.

Keypoints are ``(2, N)`` **1-based pixel** coordinates (row 0 x, row 1 y), the convention of the
benchmark keypoint files (:func:`a2net.geometry.pixels_to_normalized`); negative values mark
padding, as in PF-PASCAL.

The helpers shared with :mod:`a2net.evaluate` live here too: :func:`mode_of`,
:func:`predict_chain`, :func:`warp_chain` and :func:`transfer_points`.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from a2net import geometry
from a2net._validation import as_size, check_choice
from a2net.checkpoint import atomic_write

__all__ = [
    "MODES",
    "Alignment",
    "add_arguments",
    "align",
    "as_image",
    "checkerboard",
    "input_size",
    "load_aligner",
    "mode_of",
    "model_device",
    "predict_chain",
    "run",
    "save_alignment_figure",
    "transfer_points",
    "warp_chain",
]

#: The three ways of aligning: one affine model, one TPS model, or affine then TPS.
MODES = ("affine", "tps", "affine+tps")


# --------------------------------------------------------------------------------------------
# Models: one A2Net or the two-stage aligner


def mode_of(aligner: nn.Module) -> str:
    """``"affine"`` or ``"tps"`` for an :class:`a2net.A2Net`, ``"affine+tps"`` for a
    :class:`a2net.TwoStageAligner`."""
    from a2net.model import A2Net, TwoStageAligner

    if isinstance(aligner, TwoStageAligner):
        return "affine+tps"
    if isinstance(aligner, A2Net):
        return aligner.geometric_model
    raise ValueError(f"model: expected an A2Net or a TwoStageAligner, got {type(aligner).__name__}")


def input_size(aligner: nn.Module, image_size=None) -> tuple[int, int]:
    """The network input size: ``image_size`` if given, else the model's (the affine stage's)."""
    if image_size is not None:
        return as_size("image_size", image_size)
    model = aligner.affine if mode_of(aligner) == "affine+tps" else aligner
    return tuple(model.image_size)


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
    """
    if mode_of(aligner) == "affine+tps":
        theta_affine, theta_tps = aligner(source_images, target_images)
        return [theta_tps, theta_affine]
    return [aligner(source_images, target_images)]


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


def transfer_points(chain: Sequence[torch.Tensor], target_points: torch.Tensor, target_size, source_size) -> torch.Tensor:
    """Map target keypoints in 1-based pixels into the source image (SPEC §5).

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


def load_aligner(checkpoint=None, affine_checkpoint=None, tps_checkpoint=None, geometric_model=None,
                 device=None) -> nn.Module:
    """Build the aligner a command asked for, on ``device``, in eval mode.

    * ``affine_checkpoint`` and ``tps_checkpoint``: a :class:`a2net.TwoStageAligner`;
    * ``checkpoint``: that model (:func:`a2net.checkpoint.load_model`);
    * none of them: the embedded default model (:func:`a2net.checkpoint.load_default_model`).

    ``geometric_model`` (``"affine"``, ``"tps"``, ``"affine+tps"`` or None) checks that the
    aligner is of that kind.
    """
    from a2net import checkpoint as ckpt
    from a2net.model import TwoStageAligner

    if (affine_checkpoint is None) != (tps_checkpoint is None):
        raise ValueError("affine_checkpoint, tps_checkpoint: expected both (affine+TPS) or neither, got "
                         f"{affine_checkpoint!r} and {tps_checkpoint!r}")
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
            raise ValueError(f"geometric_model: expected {geometric_model!r}, the checkpoint(s) give "
                             f"{mode_of(aligner)!r}")
    return aligner.to(device or "cpu").eval()


# --------------------------------------------------------------------------------------------
# Inputs


def as_image(image, name: str = "image") -> torch.Tensor:
    """A path, a PIL image, an ``(H, W[, 3|4])`` array or a ``(3, H, W)`` tensor -> ``(3, H, W)``
    float32 in [0, 1] on the CPU (uint8 tensors and arrays are divided by 255)."""
    from a2net.images import load_image, to_tensor

    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        if not image.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor in [0, 1] or uint8, got dtype {image.dtype}")
        return image.detach().float().cpu()
    if isinstance(image, np.ndarray):
        return to_tensor(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return to_tensor(np.asarray(image.convert("RGB")))
    raise ValueError(f"{name}: expected a path, a PIL image, an array or a (3, H, W) tensor, got {type(image).__name__}")


def _as_points(points, name: str) -> torch.Tensor | None:
    if points is None:
        return None
    p = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points).to(torch.float64)
    if p.dim() != 2 or p.shape[0] != 2:
        raise ValueError(f"{name}: expected (2, N) 1-based pixel coordinates (row 0 x, row 1 y), got shape "
                         f"{tuple(p.shape)}")
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
        valid = geometry.valid_keypoints(self.source_points[None])[0] & geometry.valid_keypoints(
            self.target_points[None])[0]
        errors = torch.linalg.vector_norm(self.transferred_points - self.source_points, dim=0)
        return torch.where(valid, errors, torch.full_like(errors, float("nan")))


def align(source, target, model=None, image_size=None, source_points=None, target_points=None,
          device=None) -> Alignment:
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
    Returns:
        an :class:`Alignment`; ``warped`` is the source resampled at the target's resolution.

    Example::

        >>> result = a2net.align("cat1.jpg", "cat2.jpg")
        >>> result.theta            # (6,) target -> source, for the default affine model
        >>> save_alignment_figure(result, "alignment.png")
    """
    from a2net.model import normalize_images

    if model is None or isinstance(model, (str, os.PathLike)):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_aligner(checkpoint=model, device=device)
    mode = mode_of(model)
    source_image, target_image = as_image(source, "source"), as_image(target, "target")
    source_points, target_points = _as_points(source_points, "source_points"), _as_points(target_points, "target_points")
    if source_points is not None and target_points is not None and source_points.shape != target_points.shape:
        raise ValueError(f"target_points: expected shape {tuple(source_points.shape)} (that of source_points: "
                         f"keypoint i of one image matches keypoint i of the other), got {tuple(target_points.shape)}")
    size = input_size(model, image_size)
    run_on = model_device(model)
    with torch.no_grad():
        src = normalize_images(source_image[None].to(run_on), size=size)
        tgt = normalize_images(target_image[None].to(run_on), size=size)
        chain = [theta.detach().float().cpu() for theta in predict_chain(model, src, tgt)]
        warped = warp_chain(source_image[None], chain, tuple(target_image.shape[1:]))[0]
    transferred = None
    if target_points is not None:
        transferred = transfer_points(chain, target_points[None], tuple(target_image.shape[1:]),
                                      tuple(source_image.shape[1:]))[0]
    return Alignment(mode=mode, chain=tuple(chain), source=source_image, target=target_image, warped=warped,
                     image_size=size, source_points=source_points, target_points=target_points,
                     transferred_points=transferred)


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
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02 * panel_size / (height + header),
                        top=height / (height + header), wspace=0.04)
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
                axes[0].plot([moved[0, i] - 1, sp[0, i] - 1], [moved[1, i] - 1, sp[1, i] - 1], color=colours[i],
                             linewidth=1.0, zorder=2)
        axes[0].scatter(moved[0, keep] - 1, moved[1, keep] - 1, c=colours[: moved.shape[1]][keep], marker="X",
                        s=40, edgecolors="black", linewidths=0.5, zorder=4)
    for ax, image in zip(axes, (result.source, target, warped, warped, warped)):  # points may leave the image
        ax.set_xlim(-0.5, image.shape[2] - 0.5)
        ax.set_ylim(image.shape[1] - 0.5, -0.5)

    title = f"A2Net {result.mode} alignment (source warped onto target; network input {result.image_size[0]}x" \
            f"{result.image_size[1]})"
    errors = result.transfer_errors()
    if errors is not None and bool(torch.isfinite(errors).any()):
        title += f"\no: keypoints, x: target keypoints transferred into the source; mean error " \
                 f"{float(torch.nanmean(errors)):.1f} px"
    elif moved is not None:
        title += "\no: target keypoints, x: their transfer into the source"
    fig.suptitle(title, fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return path


# --------------------------------------------------------------------------------------------
# Command line


def _parse_points(text: str | None):
    """``"x1,y1;x2,y2;..."`` (1-based pixels) -> ``(2, N)``."""
    if text is None:
        return None
    try:
        pairs = [tuple(float(v) for v in item.split(",")) for item in text.split(";") if item.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'x1,y1;x2,y2;...' in 1-based pixels, got {text!r}") from err
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected 'x1,y1;x2,y2;...' in 1-based pixels, got {text!r}")
    return torch.tensor(pairs, dtype=torch.float64).t()


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``a2net align`` to ``parser`` (and return it)."""
    parser.add_argument("source", help="source image (the one that is warped)")
    parser.add_argument("target", help="target image")
    parser.add_argument("--out", required=True, help="figure to write (PNG, or .pdf/.svg)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder or model.safetensors (default: the embedded demo model)")
    parser.add_argument("--affine-checkpoint", default=None, help="with --tps-checkpoint: affine+TPS alignment")
    parser.add_argument("--tps-checkpoint", default=None, help="with --affine-checkpoint: affine+TPS alignment")
    parser.add_argument("--geometric-model", default=None, choices=MODES,
                        help="check that the model is of this kind (affine, tps or affine+tps)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="network input size (default: the model's)")
    parser.add_argument("--source-points", type=_parse_points, default=None, metavar="X,Y;X,Y;...",
                        help="keypoints of the source image, 1-based pixels")
    parser.add_argument("--target-points", type=_parse_points, default=None, metavar="X,Y;X,Y;...",
                        help="keypoints of the target image, 1-based pixels; drawn with their transfer")
    parser.add_argument("--warped-out", default=None, help="also write the warped source alone (PNG)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def run(args: argparse.Namespace) -> int:
    """``a2net align``: align two images, print theta, write the figure."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    aligner = load_aligner(args.checkpoint, args.affine_checkpoint, args.tps_checkpoint,
                           geometric_model=args.geometric_model, device=device)
    result = align(args.source, args.target, model=aligner, image_size=args.image_size,
                   source_points=args.source_points, target_points=args.target_points)
    thetas = {"affine": result.chain[-1], "tps": result.chain[0]} if result.mode == "affine+tps" else \
        {result.mode: result.chain[0]}
    for kind, theta in thetas.items():
        print(f"theta {kind} ({theta.shape[1]}): [" + ", ".join(f"{v:+.4f}" for v in theta[0].tolist()) + "]")
    errors = result.transfer_errors()
    if errors is not None:
        print(f"keypoint transfer error: mean {float(torch.nanmean(errors)):.2f} px over "
              f"{int(torch.isfinite(errors).sum())} keypoints")
    written = save_alignment_figure(result, args.out)
    print(f"wrote {written}")
    if args.warped_out is not None:
        from PIL import Image

        pixels = (result.warped.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        fmt = Path(args.warped_out).suffix.lstrip(".").upper() or "PNG"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG" if fmt == "JPG" else fmt)
        Path(args.warped_out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.warped_out, buffer.getvalue())
        print(f"wrote {args.warped_out}")
    return 0
