"""Running a trained aligner: the helpers that :mod:`a2net.evaluate` and :mod:`a2net.alignment` share.

An *aligner* is an :class:`a2net.A2Net` (mode ``"affine"`` or ``"tps"``) or an
:class:`a2net.TwoStageAligner` (``"affine+tps"``). :func:`predict_chain` gives its transformations
in the order target points go through them (the direction of every ``theta``, docs/design.md §5);
:func:`warp_chain` and :func:`transfer_points` apply such a chain to images and to 1-based pixel
keypoints; :func:`load_aligner` builds one from checkpoints and :func:`as_image` reads an input image.

**Inference options** (of the affine model, or of the two-stage aligner's affine stage; a TPS
model makes one plain pass), ``{"iterations", "symmetric", "refine"}``:

* ``iterations`` (:func:`iterate_affine`): predict theta, warp the source with it, predict again on
  the warped source and the target and compose, ``theta <- theta o delta`` (a target point goes
  through ``delta`` into the warped source, then through ``theta`` into the source). Each further
  pass is a near-identity correction, which a network trained on such pairs predicts more
  accurately than a large warp; the target's backbone features are computed once.
* ``symmetric``: each pass averages ``theta(S, T)`` with the inverse of ``theta(T, S)`` (one more
  batch through the head). For two views of one image this cancels the identity's first-order
  error (docs/design.md §5).
* ``refine`` (:func:`refine_affine`): Gauss-Newton on the grey levels after the network, for two
  views of one scene (photometric: different objects do not share grey levels).

:func:`inference_defaults` resolves them: those given, else those the checkpoint names
(``checkpoint_state["inference"]``: the embedded demo model names the ones measured best for
it), else one plain pass (:data:`DEFAULT_INFERENCE`, the paper's).
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
    "DEFAULT_INFERENCE",
    "MODES",
    "PADDING_MODE",
    "as_image",
    "inference_defaults",
    "input_size",
    "iterate_affine",
    "load_aligner",
    "mode_of",
    "model_device",
    "network_features",
    "predict_chain",
    "refine_affine",
    "regress",
    "transfer_points",
    "warp_chain",
    "warp_for_network",
]

#: The three ways of aligning: one affine model, one TPS model, or affine then TPS.
MODES = ("affine", "tps", "affine+tps")
#: Inference options of a model whose checkpoint names none (:func:`inference_defaults`): one
#: plain forward pass, as in the paper.
DEFAULT_INFERENCE = {"iterations": 1, "symmetric": False, "refine": False}
#: How the source is extended past its border when it is warped for the next pass: the synthetic
#: training pairs show the mirrored image there (:func:`a2net.geometry.mirror_pad`); zeros measured
#: worse (held-out synthetic PCK@0.1 0.636 against 0.732 with the embedded model).
PADDING_MODE = "reflection"


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


def inference_defaults(
    aligner: nn.Module, iterations: int | None = None, symmetric: bool | None = None, refine: bool | None = None
) -> dict:
    """The inference options for ``aligner`` (module docstring): those given, else the ones its
    checkpoint names (``checkpoint_state["inference"]``; the two-stage aligner's affine stage's),
    else :data:`DEFAULT_INFERENCE`.

    Args:
        aligner: an :class:`a2net.A2Net` or a :class:`a2net.TwoStageAligner`.
        iterations, symmetric, refine: explicit choices (None: the default).
    Returns:
        ``{"iterations": int >= 1, "symmetric": bool, "refine": bool}``.
    Raises:
        a2net.errors.InputError: an option (given or stored) of the wrong type or range.
    """
    model = getattr(aligner, "affine", aligner)
    stored = getattr(model, "checkpoint_state", None) or {}
    stored = stored.get("inference") or {}
    if not isinstance(stored, dict):
        raise InputError(f"checkpoint: expected its 'inference' entry to be an object, got {stored!r}")
    options = {**DEFAULT_INFERENCE, **{k: v for k, v in stored.items() if k in DEFAULT_INFERENCE}}
    given = {"iterations": iterations, "symmetric": symmetric, "refine": refine}
    options.update({k: v for k, v in given.items() if v is not None})
    n = options["iterations"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"iterations: expected an int >= 1, got {n!r}")
    for key in ("symmetric", "refine"):
        if not isinstance(options[key], bool):
            raise InputError(f"{key}: expected True or False, got {options[key]!r}")
    return options


def warp_for_network(images: torch.Tensor, theta: torch.Tensor, padding_mode: str = PADDING_MODE) -> torch.Tensor:
    """Warp network inputs ``(B, 3, H, W)`` with affine ``theta`` ``(B, 6)`` at their own size
    (bilinear, ``align_corners=True``; ``padding_mode`` of :func:`torch.nn.functional.grid_sample`,
    :data:`PADDING_MODE` by default)."""
    grid = geometry.affine_grid(theta.to(images.dtype), tuple(images.shape[2:]))
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def network_features(model: A2Net, images: torch.Tensor) -> torch.Tensor:
    """Backbone features ``(B, C, h, w)`` of ImageNet-normalised ``images`` ``(B, 3, H, W)``, in
    the memory format :meth:`a2net.A2Net.forward` hands to the correlation (channels-last)."""
    return model.features(images).contiguous(memory_format=torch.channels_last)


def regress(model: A2Net, source_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """Theta from backbone features: what :meth:`a2net.A2Net.forward` computes after the backbone
    (correlation, OAC and the regression head), so that features can be reused across passes
    and pairs.

    Args:
        model: an :class:`a2net.A2Net`.
        source_features, target_features: ``(B, C, h, w)`` from :func:`network_features`.
    Returns:
        ``(B, P)`` thetas.
    """
    if model.oac_layout == "official":
        source_features = source_features.transpose(2, 3)  # the authors' column-major source flattening
    if model.fused:
        return model.FeatureRegression.forward_features(
            source_features, target_features, normalize_features=model.FeatureCorrelation.normalize_features
        )
    corr = model.FeatureCorrelation(source_features, target_features)
    return model.FeatureRegression(corr, source_size=tuple(source_features.shape[2:]))


def _symmetric(model: A2Net, source_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """``(theta(S, T) + theta(T, S)^-1) / 2``: both directions' estimates averaged, one batch
    through the head."""
    n = source_features.shape[0]
    thetas = regress(
        model, torch.cat((source_features, target_features)), torch.cat((target_features, source_features))
    )
    return 0.5 * (thetas[:n] + geometry.invert_affine(thetas[n:]))


def iterate_affine(
    model,
    source: torch.Tensor,
    target: torch.Tensor,
    iterations: int = 1,
    symmetric: bool = False,
    theta: torch.Tensor | None = None,
    padding_mode: str = PADDING_MODE,
) -> torch.Tensor:
    """Affine theta after ``iterations`` composed passes of ``model`` (module docstring).

    An :class:`a2net.A2Net` computes the target's backbone features once for all passes (each
    further pass costs the warped source's features and the head); another callable
    ``(source, target) -> (B, 6)`` (or a model whose ``forward`` was replaced on the instance) is
    called as it is.

    Args:
        model: an affine :class:`a2net.A2Net`, or such a callable.
        source, target: ``(B, 3, H, W)`` ImageNet-normalised network inputs.
        iterations: forward passes (>= 1; 1 is the plain prediction).
        symmetric: each pass averages ``theta(S, T)`` and the inverse of ``theta(T, S)``
            (:class:`a2net.A2Net` only).
        theta: optional ``(B, 6)`` starting estimate (then every pass is a correction of it).
        padding_mode: how the warped source is extended past its border.
    Returns:
        ``(B, 6)`` target -> source.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations: expected an int >= 1, got {iterations!r}")
    reuse = isinstance(model, A2Net) and "forward" not in vars(model)
    if symmetric and not reuse:
        raise ValueError(f"symmetric: expected an A2Net (its head is run on both directions), got {model!r}")
    if reuse:
        if model.geometric_model != "affine":
            raise ValueError(f"model: expected an affine A2Net, got a {model.geometric_model!r} one")
        target_features = network_features(model, target)

        def predict(warped):
            features = network_features(model, warped)
            if symmetric:
                return _symmetric(model, features, target_features)
            return regress(model, features, target_features)

    else:

        def predict(warped):
            return model(warped, target)

    for _ in range(iterations):
        if theta is None:
            theta = predict(source)
        else:
            theta = geometry.compose_affine(theta, predict(warp_for_network(source, theta, padding_mode)))
    return theta


# --------------------------------------------------------------------------------------------
# Refinement on the images themselves (photometric)


def _gray_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``(B, 3, H, W)`` -> grey images, finest first, each standardised per image (zero mean, unit
    variance: robust to a gain and an offset between the two photos) and smoothed (a [1, 2, 1]
    binomial) so that the linearisation holds over a pixel or two; each level halves the size."""
    gray = images.mean(1, keepdim=True)
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device) / 4
    kernel = (kernel[:, None] * kernel[None, :]).view(1, 1, 3, 3)
    out = []
    for level in range(levels):
        if level:
            gray = F.interpolate(gray, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
        smooth = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernel)
        mean = smooth.mean((2, 3), keepdim=True)
        std = smooth.std((2, 3), keepdim=True).clamp_min(1e-6)
        out.append((smooth - mean) / std)
    return out


def _gradients(image: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, 2, H, W)``: central differences per *normalised* unit (x, y)."""
    h, w = image.shape[2:]
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gx = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / 2 * (w - 1) / 2
    gy = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / 2 * (h - 1) / 2
    return torch.cat((gx, gy), dim=1)


def _photometric_cost(params, source, target, points, huber: float):
    """Huber cost of affine ``params`` ``(B, 6)`` between a grey ``source`` ``(B, 1, H', W')``
    sampled at ``params(points)`` and the grey ``target`` ``(B, 1, H, W)`` at its pixel centres
    ``points`` ``(1, H*W, 2)``, over the points that land inside the source. Returns ``(cost (B,),
    residual (B, N), IRLS weight (B, N), sampling grid (B, H, W, 2))``."""
    b, _, h, w = target.shape
    grid = geometry._affine_xy(params, points)
    inside = (grid.abs() <= 1).all(-1)
    sample = grid.view(b, h, w, 2)
    values = F.grid_sample(source, sample, mode="bilinear", padding_mode="border", align_corners=True)
    residual = values.reshape(b, -1) - target.reshape(b, -1)
    a = residual.abs()
    weight = torch.where(a <= huber, torch.ones_like(a), huber / a.clamp_min(1e-12)) * inside
    per_pixel = torch.where(a <= huber, 0.5 * a * a, huber * (a - 0.5 * huber)) * inside
    return per_pixel.sum(1) / inside.sum(1).clamp_min(1), residual, weight, sample


def refine_affine(
    source: torch.Tensor,
    target: torch.Tensor,
    theta: torch.Tensor,
    levels: int = 3,
    steps: int = 10,
    huber: float = 0.5,
    damping: float = 1e-3,
    max_change: float = 10.0,
) -> torch.Tensor:
    """Refine affine thetas by Gauss-Newton on a photometric objective (forward-additive
    Lucas-Kanade), coarse to fine.

    Minimises, over the target pixels ``p`` whose ``theta(p)`` falls inside the source, the Huber
    loss of ``S(theta(p)) - T(p)``, with ``S`` and ``T`` the standardised grey images. A step
    that does not lower the cost is not taken (Gauss-Newton with IRLS weights, Levenberg
    damping). A pair whose refined theta moves a corner of the image by more than ``max_change``
    (normalised units) from the starting estimate keeps the estimate. For two views of one scene
    only: semantic pairs (two different cats) do not share grey levels.

    Args:
        source, target: ``(B, 3, H, W)`` images (network inputs: any per-channel affine
            normalisation is undone by the standardisation).
        theta: ``(B, 6)`` the starting estimate (target -> source).
        levels: pyramid levels (each halves the size).
        steps: Gauss-Newton steps per level.
        huber: threshold of the Huber loss on standardised intensities.
        damping: Levenberg-Marquardt damping relative to the diagonal.
        max_change: largest displacement of the corners from the estimate that is kept.
    Returns:
        ``(B, 6)`` refined thetas (``theta``'s dtype).
    """
    dtype = torch.float32
    start = theta.detach().to(dtype).reshape(-1, 6)
    current = start.clone()
    sources = _gray_pyramid(source.detach().to(dtype), levels)
    targets = _gray_pyramid(target.detach().to(dtype), levels)
    b = start.shape[0]
    for level in reversed(range(levels)):
        s_img, t_img = sources[level], targets[level]
        grads = _gradients(s_img)
        points = geometry._base_grid(tuple(t_img.shape[2:]), s_img.device, dtype)  # (1, N, 2)
        x, y = points[..., 0], points[..., 1]
        cost, residual, weight, sample = _photometric_cost(current, s_img, t_img, points, huber)
        for _ in range(steps):
            g = F.grid_sample(grads, sample, mode="bilinear", padding_mode="border", align_corners=True)
            gx, gy = g[:, 0].reshape(b, -1), g[:, 1].reshape(b, -1)
            jac = torch.stack((gx * x, gx * y, gx, gy * x, gy * y, gy), dim=-1)  # (B, N, 6)
            jw = jac * weight.unsqueeze(-1)
            hessian = torch.matmul(jw.transpose(1, 2), jac)
            rhs = -torch.matmul(jw.transpose(1, 2), residual.unsqueeze(-1))
            diag = torch.diagonal(hessian, dim1=1, dim2=2)
            hessian = hessian + torch.diag_embed(damping * diag + 1e-9)
            proposal = current + torch.linalg.solve(hessian, rhs).squeeze(-1)
            new = _photometric_cost(proposal, s_img, t_img, points, huber)
            better = new[0] < cost
            current = torch.where(better.view(b, 1), proposal, current)
            cost, residual, weight, sample = (
                torch.where(better.view(b, *[1] * (n.dim() - 1)), n, o)
                for n, o in zip(new, (cost, residual, weight, sample), strict=True)
            )
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], dtype=dtype, device=start.device)
    moved = (geometry._affine_xy(current, corners[None]) - geometry._affine_xy(start, corners[None])).norm(dim=-1)
    keep = (moved.amax(1) <= max_change).view(b, 1)
    return torch.where(keep, current, start).to(theta.dtype)


# --------------------------------------------------------------------------------------------
# The chain of an aligner


def predict_chain(
    aligner: nn.Module,
    source_images: torch.Tensor,
    target_images: torch.Tensor,
    iterations: int = 1,
    symmetric: bool = False,
    refine: bool = False,
    check_finite: bool = True,
) -> list[torch.Tensor]:
    """The predicted transformations in the order points go through them (target -> source).

    Args:
        aligner: an :class:`a2net.A2Net` or a :class:`a2net.TwoStageAligner`.
        source_images, target_images: ``(B, 3, H, W)`` ImageNet-normalised network inputs.
        iterations, symmetric, refine: the inference options of the affine model or of the
            two-stage aligner's affine stage (module docstring; :func:`iterate_affine`,
            :func:`refine_affine`). A TPS model, and the TPS stage, make one plain pass.
        check_finite: raise on a non-finite theta (False: no data-dependent check, as
            ``torch.export`` traces it; the caller checks).
    Returns:
        ``[theta]`` (``(B, 6)`` or ``(B, 18)``) for one model, ``[theta_tps, theta_affine]`` for
        the two-stage aligner: the chain :func:`a2net.geometry.compose_points` takes.
    Raises:
        a2net.errors.InputError: a predicted theta is not finite (never passed on as a figure or
            a score).
    """
    mode = mode_of(aligner)
    plain = iterations == 1 and not symmetric and not refine
    if mode == "tps" or plain:
        if mode == "affine+tps":
            theta_affine, theta_tps = aligner(source_images, target_images)
            chain = [theta_tps, theta_affine]
        else:
            chain = [aligner(source_images, target_images)]
    else:
        affine = aligner.affine if mode == "affine+tps" else aligner
        theta = iterate_affine(affine, source_images, target_images, iterations, symmetric=symmetric)
        if refine:
            theta = refine_affine(source_images, target_images, theta)
        chain = [theta]
        if mode == "affine+tps":  # the TPS stage on the affine-warped source, as TwoStageAligner.forward
            chain.insert(0, aligner.tps(geometry.warp_image(source_images, theta), target_images))
    for theta in chain if check_finite else ():
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
        return load_image(image, name)
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
