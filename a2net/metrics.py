"""Evaluation metrics of semantic alignment (docs/design.md §8): keypoint PCK (PF-WILLOW, PF-PASCAL),
dense flow PCK (TSS), the mask metrics of Caltech-101 (label transfer accuracy, IoU, localisation
error), the PCK of held-out synthetic pairs (:func:`synthetic_pck`) and the displacement of a photo
aligned onto itself (:func:`self_alignment_displacement`).

Conventions:

* Keypoints are ``(B, 2, N)`` pixel coordinates, row 0 x, row 1 y. A keypoint whose *ground-truth*
  coordinates are negative (``-1`` in PF-PASCAL) is padding (:func:`a2net.geometry.valid_keypoints`):
  it counts neither in a PCK nor in a keypoint bounding box.
* Dense flows are ``(B, 2, H, W)`` in pixels, channel 0 the x (u) and channel 1 the y (v)
  displacement, defined on the grid of the **target** image and pointing into the **source**:
  target pixel ``p`` corresponds to source position ``p + flow[:, :, p]``. This is the direction
  of every ``theta`` (target -> source, :mod:`a2net.geometry`) and of the Middlebury ``.flo``
  convention with "image 1" = target and "image 2" = source: TSS's ``flowK.flo`` lives on
  ``imageK`` and points into the other image, so it is the ground truth of the pair whose target is
  ``imageK`` (see :class:`a2net.benchmarks.TSSDataset`).
* Masks are ``(B, H, W)``: bool, or numbers with foreground ``> 0.5`` (a bilinearly warped mask).
* Per-pair results are ``(B,)`` tensors; a pair with nothing to measure (no valid keypoint, no
  foreground pixel) gets ``NaN``, so that ``torch.nanmean`` over a dataset skips it and it is
  never silently counted as 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from a2net._validation import as_size, check_choice, check_dim, check_same, check_tensor
from a2net.geometry import (
    _axis,
    _flatten_theta,
    compose_points,
    normalized_to_pixels,
    pixels_to_normalized,
    transform_points,
    valid_keypoints,
)

__all__ = [
    "REFERENCE_KINDS",
    "UNKNOWN_FLOW",
    "flow_pck",
    "label_transfer_accuracy",
    "localization_error",
    "mask_iou",
    "pck",
    "reference_length",
    "self_alignment_displacement",
    "synthetic_pck",
    "theta_to_flow",
]

#: The PCK reference lengths :func:`reference_length` knows.
REFERENCE_KINDS = ("bbox", "image", "keypoints")
#: Middlebury's threshold: a flow component whose magnitude is at least this is "unknown".
UNKNOWN_FLOW = 1e9


# --------------------------------------------------------------------------------------------
# Argument checks


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha: expected a number > 0, got {alpha!r}")
    return float(alpha)


def _check_points(name: str, points) -> None:
    check_tensor(name, points, 3)
    check_dim(name, points, 1, 2, "coordinates (x, y)")


def _per_pair(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """A number, a 0-D or a ``(B,)`` tensor -> ``(B,)`` in ``like``'s dtype and device, not negative."""
    batch = like.shape[0]
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise ValueError(f"{name}: expected a number or a (B,) tensor, got {type(value).__name__}")
    value = torch.as_tensor(value, device=like.device).to(like.dtype)
    if value.dim() == 0:
        value = value.expand(batch)
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name}: expected a number or a (B,) tensor with B = {batch}, got shape {tuple(value.shape)}")
    if bool((value < 0).any()):
        raise ValueError(f"{name}: expected lengths >= 0, got {value.tolist()}")
    return value


def _binary_mask(name: str, mask) -> torch.Tensor:
    """``(B, H, W)`` bool or numeric (foreground > 0.5) -> bool."""
    check_tensor(name, mask, 3, floating=False)
    return mask if mask.dtype == torch.bool else mask > 0.5


def _check_mask_pair(warped_mask, target_mask) -> tuple[torch.Tensor, torch.Tensor]:
    warped, target = _binary_mask("warped_mask", warped_mask), _binary_mask("target_mask", target_mask)
    if warped.shape != target.shape:
        raise ValueError(
            f"target_mask: expected shape {tuple(warped.shape)} (that of warped_mask), got {tuple(target.shape)}"
        )
    if warped.device != target.device:
        raise ValueError(f"target_mask: expected device {warped.device} (that of warped_mask), got {target.device}")
    return warped, target


# --------------------------------------------------------------------------------------------
# Keypoints (PF-WILLOW, PF-PASCAL)


def pck(predicted: torch.Tensor, target: torch.Tensor, reference_length, alpha: float = 0.1) -> torch.Tensor:
    """Percentage of correct keypoints of each pair.

    A keypoint is correct when the Euclidean distance between its predicted position and its
    ground truth is ``<= alpha * L``. Only the valid keypoints count: those whose ground truth
    (``target``) has no negative coordinate. Predicted points are never taken as padding (a
    transferred point may legitimately leave the image: it is then simply wrong), and a NaN
    prediction is wrong.

    In the A2Net protocol the target image's keypoints are mapped through ``theta`` into the source
    image, so ``predicted`` is those mapped points and ``target`` the source keypoints (docs/design.md §8).

    Args:
        predicted: ``(B, 2, N)`` predicted positions, in pixels.
        target: ``(B, 2, N)`` ground-truth positions in pixels, negative for padding; same dtype
            and device as ``predicted``.
        reference_length: ``L`` of each pair, a ``(B,)`` tensor or one number for all
            (see :func:`reference_length`).
        alpha: the tolerance as a fraction of ``L`` (default 0.1; the paper also reports 0.05, 0.15).
    Returns:
        ``(B,)`` fraction of correct valid keypoints, in ``predicted``'s dtype; ``NaN`` for a pair
        with no valid keypoint.

    Example:
        >>> gt = torch.tensor([[[10., 20., -1.], [10., 20., -1.]]])
        >>> pred = torch.tensor([[[10., 30., 5.], [11., 20., 5.]]])
        >>> pck(pred, gt, torch.tensor([20.]), alpha=0.1)  # 1 px off: right; 10 px off: wrong
        tensor([0.5000])
    """
    _check_points("predicted", predicted)
    _check_points("target", target)
    check_same("predicted", predicted, "target", target)
    if predicted.shape != target.shape:
        raise ValueError(
            f"target: expected shape {tuple(predicted.shape)} (that of predicted), got {tuple(target.shape)}"
        )
    lengths = _per_pair("reference_length", reference_length, predicted)
    alpha = _check_alpha(alpha)
    valid = valid_keypoints(target)
    distance = torch.linalg.vector_norm(predicted - target, dim=1)  # (B, N)
    correct = (distance <= alpha * lengths.unsqueeze(1)) & valid
    return correct.sum(1).to(predicted.dtype) / valid.sum(1).to(predicted.dtype)  # 0 / 0 = NaN


def reference_length(kind: str, keypoints=None, image_size=None, bbox=None) -> torch.Tensor:
    """The PCK reference length ``L`` of each pair.

    * ``"bbox"``: the longest side of an object bounding box, ``max(x2 - x1, y2 - y1)``;
      needs ``bbox``.
    * ``"image"``: the longest image side, ``max(H, W)``; needs ``image_size``.
    * ``"keypoints"``: the longest side of the bounding box of the **valid** keypoints only
      (padded ``-1`` keypoints would otherwise stretch the box to ``(-1, -1)``); needs
      ``keypoints``. A pair without valid keypoints gets ``NaN``.

    The result does not say which kind it is: the caller chose ``kind`` and must report it
    next to every PCK ("PCK@0.1 by bbox" and "by image size" differ by 10+ points on PF-PASCAL).

    Args:
        kind: one of :data:`REFERENCE_KINDS`.
        keypoints: ``(B, 2, N)`` pixel coordinates, negative for padding.
        image_size: ``(B, 2)`` tensor of ``(H, W)``, or one ``(H, W)`` pair for a single image.
        bbox: ``(B, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels.
    Returns:
        ``(B,)`` lengths, in the input's dtype (float64 for an integer ``image_size``).

    Example:
        >>> kps = torch.tensor([[[5., 25., -1.], [10., 15., -1.]]])
        >>> reference_length("keypoints", keypoints=kps)  # not 26 (= 25 - (-1))
        tensor([20.])
    """
    check_choice("kind", kind, REFERENCE_KINDS)
    given = {"keypoints": keypoints, "image_size": image_size, "bbox": bbox}
    needed = {"bbox": "bbox", "image": "image_size", "keypoints": "keypoints"}[kind]
    if given[needed] is None:
        raise ValueError(f"{needed}: required for kind {kind!r}, got None")
    if kind == "bbox":
        check_tensor("bbox", bbox, 2)
        check_dim("bbox", bbox, 1, 4, "box coordinates (x1, y1, x2, y2)")
        return torch.maximum(bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1])
    if kind == "image":
        if isinstance(image_size, torch.Tensor):
            size = image_size.unsqueeze(0) if image_size.dim() == 1 else image_size
            if size.dim() != 2 or size.shape[1] != 2:
                raise ValueError(f"image_size: expected a (B, 2) tensor of (H, W), got shape {tuple(image_size.shape)}")
        else:
            size = torch.tensor([as_size("image_size", image_size)])
        if not size.is_floating_point():
            size = size.to(torch.float64)
        return size.amax(dim=1)
    _check_points("keypoints", keypoints)
    valid = valid_keypoints(keypoints).unsqueeze(1)  # (B, 1, N)
    inf = torch.tensor(float("inf"), dtype=keypoints.dtype, device=keypoints.device)
    high = torch.where(valid, keypoints, -inf).amax(dim=2)  # (B, 2); -inf without valid keypoints
    low = torch.where(valid, keypoints, inf).amin(dim=2)
    extent = (high - low).amax(dim=1)  # -inf - inf = -inf
    return torch.where(valid.any(dim=2).squeeze(1), extent, torch.full_like(extent, float("nan")))


# --------------------------------------------------------------------------------------------
# Dense flow (TSS)


def theta_to_flow(theta, size, source_size=None) -> torch.Tensor:
    """The dense flow of a predicted transformation on the target image grid, in pixels.

    For every target pixel ``p`` (``align_corners=True`` convention: the pixel centres span
    ``[-1, 1]``), ``theta`` gives the source point ``q`` it corresponds to; the flow is
    ``q - p`` with ``q`` in the source image's pixels and ``p`` in the target's. Direction:
    target -> source, the Middlebury convention with image 1 = target and image 2 = source, the
    direction of TSS's ``flowK.flo`` for the pair whose target is ``imageK``. No pixel is masked:
    a pixel whose ``q`` leaves the source image keeps its flow (CNNGeometric's flow writer sets
    such pixels to 1e10 instead, so that they always count as wrong; here a prediction just past
    the border can still be within tolerance of a ground truth near it).

    Args:
        theta: ``(B, 6)``, ``(B, 2, 3)`` or ``(B, 18)``; or a sequence of them applied in turn,
            ``thetas[0]`` first (for the two-stage affine+TPS aligner: ``[theta_tps, theta_aff]``,
            see :func:`a2net.geometry.compose_points`).
        size: ``(H, W)`` of the target image (the flow's grid), both >= 2.
        source_size: ``(H, W)`` of the source image, as a pair or a ``(B, 2)`` tensor; default
            ``size``.
    Returns:
        ``(B, 2, H, W)`` flow in pixels (channel 0 x, channel 1 y), in ``theta``'s dtype.

    Example:
        >>> shift = torch.tensor([[1., 0., 0.5, 0., 1., 0.]])  # x_src = x_tgt + 0.5 (normalised)
        >>> theta_to_flow(shift, (3, 5))[0, 0]  # one pixel step is 2 / (W - 1) = 0.5 when W = 5
        tensor([[1., 1., 1., 1., 1.],
                [1., 1., 1., 1., 1.],
                [1., 1., 1., 1., 1.]])
    """
    thetas = [theta] if isinstance(theta, torch.Tensor) else theta
    if not isinstance(thetas, Sequence) or len(thetas) == 0 or not isinstance(thetas[0], torch.Tensor):
        raise ValueError(f"theta: expected a tensor or a non-empty sequence of tensors, got {type(theta).__name__}")
    check_tensor("theta", thetas[0])
    height, width = as_size("size", size)
    first = thetas[0]
    batch = first.shape[0]
    ys, xs = torch.meshgrid(
        torch.arange(1, height + 1, device=first.device, dtype=first.dtype),
        torch.arange(1, width + 1, device=first.device, dtype=first.dtype),
        indexing="ij",
    )
    target_pixels = torch.stack((xs, ys)).reshape(1, 2, height * width).expand(batch, -1, -1)
    source = compose_points(thetas, pixels_to_normalized(target_pixels, (height, width)))
    source_pixels = normalized_to_pixels(source, (height, width) if source_size is None else source_size)
    return (source_pixels - target_pixels).reshape(batch, 2, height, width)


def flow_pck(flow_pred: torch.Tensor, flow_gt: torch.Tensor, mask=None, alpha: float = 0.05, reference_length=None):
    """PCK of a dense flow over the foreground pixels (the TSS flow accuracy).

    A pixel is correct when the endpoint error ``||flow_pred - flow_gt||`` is ``<= alpha * L``.
    The pixels evaluated are those of ``mask`` whose ground truth is known: finite and, as in
    Middlebury files, with both components below :data:`UNKNOWN_FLOW` (1e9) in magnitude.
    (The TSS evaluation kit counts the pixels with a known ground-truth flow, which TSS gives on
    the foreground only; passing the target's foreground mask as well changes nothing there.)

    Args:
        flow_pred: ``(B, 2, H, W)`` predicted flow in pixels (target -> source, e.g.
            :func:`theta_to_flow`). A NaN prediction is wrong.
        flow_gt: ``(B, 2, H, W)`` ground truth, same dtype and device.
        mask: ``(B, H, W)`` foreground of the target image (bool, or numbers with foreground
            > 0.5); ``None`` evaluates every pixel with a known ground truth.
        alpha: tolerance as a fraction of ``L`` (default 0.05, TSS's).
        reference_length: ``L`` per pair (a ``(B,)`` tensor or one number); default
            ``max(H, W)`` of the flow grid. The TSS kit uses the longest side of the image the
            flow points into (the source), which :class:`a2net.benchmarks.TSSDataset` items give
            as ``reference_length``.
    Returns:
        ``(B,)`` fraction of correct evaluated pixels, in ``flow_pred``'s dtype; ``NaN`` for a
        pair with no evaluated pixel.
    """
    check_tensor("flow_pred", flow_pred, 4)
    check_tensor("flow_gt", flow_gt, 4)
    check_dim("flow_pred", flow_pred, 1, 2, "flow components (u, v)")
    check_same("flow_pred", flow_pred, "flow_gt", flow_gt)
    if flow_gt.shape != flow_pred.shape:
        raise ValueError(
            f"flow_gt: expected shape {tuple(flow_pred.shape)} (that of flow_pred), got {tuple(flow_gt.shape)}"
        )
    batch, _, height, width = flow_pred.shape
    alpha = _check_alpha(alpha)
    if reference_length is None:
        reference_length = max(height, width)
    lengths = _per_pair("reference_length", reference_length, flow_pred)
    evaluated = (torch.isfinite(flow_gt) & (flow_gt.abs() < UNKNOWN_FLOW)).all(dim=1)  # (B, H, W)
    if mask is not None:
        mask = _binary_mask("mask", mask)
        if tuple(mask.shape) != (batch, height, width):
            raise ValueError(f"mask: expected shape (B, H, W) = {(batch, height, width)}, got {tuple(mask.shape)}")
        evaluated = evaluated & mask.to(evaluated.device)
    error = torch.linalg.vector_norm(flow_pred - flow_gt, dim=1)
    correct = (error <= alpha * lengths.view(batch, 1, 1)) & evaluated
    return correct.sum((1, 2)).to(flow_pred.dtype) / evaluated.sum((1, 2)).to(flow_pred.dtype)


# --------------------------------------------------------------------------------------------
# Masks (Caltech-101)


def label_transfer_accuracy(warped_mask, target_mask) -> torch.Tensor:
    """Label transfer accuracy (LT-ACC): the fraction of all target pixels where the warped source
    mask and the target mask agree (both foreground or both background).

    The warped mask is the source mask sampled through the predicted transformation on the
    target grid, e.g. ``geometry.warp_image(source_mask[:, None].double(), theta, (H, W))[:, 0]``
    (bilinear, zeros outside; foreground where > 0.5, as the reference evaluation thresholds it).

    Args:
        warped_mask: ``(B, H, W)`` bool, or numbers with foreground > 0.5.
        target_mask: ``(B, H, W)`` likewise.
    Returns:
        ``(B,)`` float64 accuracies in [0, 1].
    """
    warped, target = _check_mask_pair(warped_mask, target_mask)
    return (warped == target).to(torch.float64).mean(dim=(1, 2))


def mask_iou(warped_mask, target_mask) -> torch.Tensor:
    """Intersection over union of the warped source mask and the target mask.

    Args:
        warped_mask: ``(B, H, W)`` bool, or numbers with foreground > 0.5.
        target_mask: ``(B, H, W)`` likewise.
    Returns:
        ``(B,)`` float64 ``|A & B| / |A | B|``; ``NaN`` where both masks are empty.
    """
    warped, target = _check_mask_pair(warped_mask, target_mask)
    intersection = (warped & target).sum(dim=(1, 2)).to(torch.float64)
    return intersection / (warped | target).sum(dim=(1, 2)).to(torch.float64)


def _mask_box(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Foreground bounding box of ``(B, H, W)`` bool masks: ``left, top`` (0-based pixel indices),
    ``width, height`` (in pixels, ``right - left + 1``) and whether the mask has a foreground."""
    height, width = mask.shape[1:]
    cols, rows = mask.any(dim=1).to(torch.int8), mask.any(dim=2).to(torch.int8)  # (B, W), (B, H)
    left, top = cols.argmax(dim=1), rows.argmax(dim=1)  # first foreground column / row
    right, bottom = width - 1 - cols.flip(1).argmax(dim=1), height - 1 - rows.flip(1).argmax(dim=1)
    return left, top, right - left + 1, bottom - top + 1, cols.any(dim=1)


def localization_error(flow: torch.Tensor, source_mask, target_mask) -> torch.Tensor:
    """Localisation error (LOC-ERR) of a dense correspondence, the Caltech-101 measure of DSP
    (Kim et al., CVPR 2013) used by Proposal Flow, SCNet and CNNGeometric.

    Each image gets object coordinates from the bounding box of its mask's foreground: with
    ``left``, ``top`` the box's first column and row and ``width = right - left + 1``,
    ``height = bottom - top + 1`` (0-based pixel indices), a position ``(x, y)`` has object
    coordinates ``u = (x - left) / width``, ``v = (y - top) / height``. For **every** target
    pixel ``p`` (the whole image, not only the object: the boxes only set the frame) whose
    correspondence ``q = p + flow(p)`` falls inside the source image
    (``0 <= q_x <= W_s - 1``, ``0 <= q_y <= H_s - 1``)::

        err(p) = |u_t(p) - u_s(q)| + |v_t(p) - v_s(q)|

    and LOC-ERR is the mean of ``err`` over those pixels. A perfect alignment of the two boxes
    gives 0; a correspondence off by the whole box width in x gives 1.

    Two details differ from CNNGeometric's Python port, both below one pixel over the box size:
    ``q`` is used as is (the port truncates it to an integer pixel), and the object coordinates
    use one indexing for ``x`` and ``left`` (the port subtracts a 0-based ``left`` from a 1-based
    ``x``, which shifts each image's coordinates by ``1 / width``).

    Args:
        flow: ``(B, 2, H_t, W_t)`` target -> source flow in pixels (:func:`theta_to_flow`).
        source_mask: ``(B, H_s, W_s)`` bool, or numbers with foreground > 0.5.
        target_mask: ``(B, H_t, W_t)`` likewise.
    Returns:
        ``(B,)`` errors in ``flow``'s dtype; ``NaN`` where a mask is empty or no pixel maps
        inside the source image.
    """
    check_tensor("flow", flow, 4)
    check_dim("flow", flow, 1, 2, "flow components (u, v)")
    source, target = _binary_mask("source_mask", source_mask), _binary_mask("target_mask", target_mask)
    batch, _, height_t, width_t = flow.shape
    if tuple(target.shape) != (batch, height_t, width_t):
        raise ValueError(
            f"target_mask: expected shape (B, H_t, W_t) = {(batch, height_t, width_t)} (those of flow), "
            f"got {tuple(target.shape)}"
        )
    check_dim("source_mask", source, 0, batch, "batch size (that of flow)")
    height_s, width_s = source.shape[1:]
    source, target = source.to(flow.device), target.to(flow.device)

    def object_frame(mask):
        left, top, width, height, nonempty = (t.to(flow.dtype).view(batch, 1, 1) for t in _mask_box(mask))
        return left, top, width, height, nonempty.bool().view(batch)

    left_t, top_t, box_w_t, box_h_t, has_t = object_frame(target)
    left_s, top_s, box_w_s, box_h_s, has_s = object_frame(source)
    y, x = torch.meshgrid(
        torch.arange(height_t, device=flow.device, dtype=flow.dtype),
        torch.arange(width_t, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    qx, qy = x + flow[:, 0], y + flow[:, 1]  # (B, H_t, W_t)
    inside = (qx >= 0) & (qx <= width_s - 1) & (qy >= 0) & (qy <= height_s - 1)
    error = ((x - left_t) / box_w_t - (qx - left_s) / box_w_s).abs() + (
        (y - top_t) / box_h_t - (qy - top_s) / box_h_s
    ).abs()
    total = torch.where(inside, error, torch.zeros_like(error)).sum(dim=(1, 2))
    mean = total / inside.sum(dim=(1, 2)).to(flow.dtype)
    return torch.where(has_s & has_t, mean, torch.full_like(mean, float("nan")))


# --------------------------------------------------------------------------------------------
# Held-out synthetic pairs


def synthetic_pck(
    theta_pred: torch.Tensor, theta_true: torch.Tensor, image_size, alpha: float = 0.1, grid_size: int = 20
) -> torch.Tensor:
    """PCK of predicted thetas on synthetic pairs, per pair.

    A ``grid_size`` x ``grid_size`` grid of target points on ``[-1, 1]^2`` is mapped to the source
    by ``theta_pred`` and by ``theta_true`` (float64); both are converted to pixels of the
    ``(H, W)`` pair images and a point is correct when they are within ``alpha * max(H, W)``
    pixels (the PCK of :func:`pck`, without its padding rule: every point counts).

    Args:
        theta_pred: ``(B, 6)`` or ``(B, 18)`` predictions (identity thetas give the baseline), or a
            chain of them applied in :func:`a2net.compose_points` order
            (``[theta_tps, theta_affine]`` for affine+TPS); any kind, whatever the truth's.
        theta_true: the ground truth ``(B, 6)`` or ``(B, 18)``.
        image_size: ``(H, W)`` of the pair images, or an int.
        alpha: tolerance as a fraction of ``max(H, W)``.
        grid_size: points per side.
    Returns:
        ``(B,)`` float64 fraction of correct points; ``.mean()`` is the PCK of the set.
    """
    chain = list(theta_pred) if isinstance(theta_pred, (list, tuple)) else [theta_pred]
    chain = [_flatten_theta(t, name="theta_pred")[1].detach().double().cpu() for t in chain]
    _, true = _flatten_theta(theta_true, name="theta_true")
    if any(t.shape[0] != true.shape[0] for t in chain):
        raise ValueError(
            f"theta_true: expected batch size {chain[0].shape[0]} (that of theta_pred), got {true.shape[0]}"
        )
    size = as_size("image_size", image_size)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha: expected a number > 0, got {alpha!r}")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size: expected an int >= 1, got {grid_size!r}")
    true = true.detach().double().cpu()
    axis = _axis(grid_size, "cpu", torch.float64)  # align_corners=True; one point sits at 0
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack((xs.flatten(), ys.flatten())).unsqueeze(0).expand(true.shape[0], -1, -1)
    moved = normalized_to_pixels(compose_points(chain, points), size)
    truth = normalized_to_pixels(transform_points(true, points), size)
    # Not pck: a true point that leaves the image has negative pixels, which pck would take for
    # padding; here every grid point counts.
    distance = torch.linalg.vector_norm(moved - truth, dim=1)
    return (distance <= alpha * max(size)).double().mean(1)


# --------------------------------------------------------------------------------------------
# A photo aligned onto itself


def self_alignment_displacement(chain, image_size, grid_size: int = 7) -> torch.Tensor:
    """How far the predicted transformation(s) of a photo aligned onto itself move a grid of
    points, in percent of the image diagonal (0 for the right answer, the identity).

    A ``grid_size`` x ``grid_size`` grid of target points on ``[-1, 1]^2`` (the image corners
    included) is mapped through ``chain``; each point's displacement is measured in pixels of the
    ``(H, W)`` photo.

    Args:
        chain: ``(B, P)`` thetas, or a chain of them in :func:`a2net.geometry.compose_points`
            order (``[theta_tps, theta_affine]`` for affine+TPS).
        image_size: ``(H, W)`` of the photo, or an int.
        grid_size: points per side (>= 2).
    Returns:
        ``(B, grid_size**2)`` float64 percentages.
    """
    chain = list(chain) if isinstance(chain, (list, tuple)) else [chain]
    chain = [_flatten_theta(t, name="chain")[1].detach().double().cpu() for t in chain]
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size: expected an int >= 2, got {grid_size!r}")
    h, w = as_size("image_size", image_size)
    axis = _axis(grid_size, "cpu", torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack((xs.flatten(), ys.flatten())).unsqueeze(0).expand(chain[0].shape[0], -1, -1)
    moved = normalized_to_pixels(compose_points(chain, points), (h, w))
    shift = moved - normalized_to_pixels(points, (h, w))
    return torch.linalg.vector_norm(shift, dim=1) * 100 / math.hypot(h, w)
