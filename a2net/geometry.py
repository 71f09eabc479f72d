"""Geometric transformations of A2Net: affine and thin-plate-spline grids, point mapping, warping,
polygon rasterisation, synthetic training pairs and the transformed grid loss.

Conventions (docs/design.md §5; checkpoints and datasets depend on them):

* Coordinates are normalised to ``[-1, 1]``, x to the right, y down, with ``align_corners=True``
  semantics: the centre of the first pixel is ``-1`` and that of the last pixel ``+1``.
* Point sets are ``(B, 2, N)`` tensors, row 0 holding x and row 1 holding y. Sampling grids are
  ``(B, H, W, 2)`` with x then y in the last dimension, as :func:`torch.nn.functional.grid_sample`
  takes them.
* Every ``theta`` maps a *target* point to the *source* point it samples (the backward warp of
  ``grid_sample``): warping the source with ``theta`` produces the target, and target keypoints go
  through :func:`transform_points` into the source image.
* Affine ``theta``: ``(B, 6)`` viewed as ``[[a11, a12, tx], [a21, a22, ty]]`` (the layout of
  :func:`torch.nn.functional.affine_grid`); ``(B, 2, 3)`` is accepted too.
  Identity ``[1, 0, 0, 0, 1, 0]``.
* TPS ``theta``: ``(B, 18)``, the x coordinates of 9 control points, then their 9 y coordinates.
  The reference control points form a 3x3 grid on ``[-1, 1]^2``, x major:
  ``x = [-1,-1,-1, 0,0,0, 1,1,1]``, ``y = [-1,0,1, -1,0,1, -1,0,1]``; the identity theta is
  those 18 numbers. The spline sends reference control point ``i`` to ``(theta[i], theta[9+i])``
  and interpolates with the kernel ``U(r) = r^2 log r^2`` (``U(0) = 0``) plus an affine part, no
  regularisation. Its 12x12 system depends only on the fixed reference points: it is solved once
  (in float64) per device and dtype and cached.
* Keypoint files hold **1-based pixel coordinates**: pixel 1 maps to ``-1`` and pixel ``L`` to
  ``+1`` (:func:`pixels_to_normalized`, :func:`normalized_to_pixels`). Missing keypoints are
  padded with negative values (``-1`` in PF-PASCAL); see :func:`valid_keypoints`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from a2net._validation import as_size, check_choice, check_dim, check_same, check_tensor

__all__ = [
    "PAD_VALUE",
    "TPS_CONTROL_X",
    "TPS_CONTROL_Y",
    "THETA_SIZE",
    "TransformedGridLoss",
    "affine_grid",
    "compose_affine",
    "compose_points",
    "identity_theta",
    "invert_affine",
    "mirror_pad",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "polygon_to_mask",
    "random_affine_theta",
    "random_near_identity_theta",
    "random_tps_theta",
    "synthetic_pair",
    "tps_grid",
    "transform_points",
    "transformed_grid_loss",
    "valid_keypoints",
    "warp_image",
]

#: Number of parameters of each geometric model.
THETA_SIZE = {"affine": 6, "tps": 18}
#: x and y of the 9 reference TPS control points (3x3 grid on [-1, 1]^2, x major).
TPS_CONTROL_X = (-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
TPS_CONTROL_Y = (-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0)
#: Value written for padded (missing) keypoints by :func:`normalized_to_pixels` (PF-PASCAL's).
PAD_VALUE = -1.0

_AFFINE_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_TPS_CACHE: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


# --------------------------------------------------------------------------------------------
# Argument checks


def _flatten_theta(theta, name: str = "theta", kinds: Sequence[str] = ("affine", "tps")) -> tuple[str, torch.Tensor]:
    """Return ``(kind, theta as (B, P))``; ``kinds`` restricts the models accepted."""
    check_tensor(name, theta)
    expected = " or ".join(f"{THETA_SIZE[k]} ({k})" for k in kinds)
    if theta.dim() == 3:
        if "affine" in kinds and tuple(theta.shape[1:]) == (2, 3):
            return "affine", theta.reshape(theta.shape[0], 6)
        also = " or (B, 2, 3)" if "affine" in kinds else ""
        raise ValueError(
            f"{name}: expected a 2-D tensor (B, P) with P = {expected}{also}, got {theta.dim()}-D "
            f"with shape {tuple(theta.shape)}"
        )
    if theta.dim() != 2:
        raise ValueError(
            f"{name}: expected a 2-D tensor (B, P) with P = {expected}, got {theta.dim()}-D "
            f"with shape {tuple(theta.shape)}"
        )
    for kind in kinds:
        if theta.shape[1] == THETA_SIZE[kind]:
            return kind, theta
    raise ValueError(f"{name}: expected last dimension {expected}, got {theta.shape[1]} (shape {tuple(theta.shape)})")


def _check_points(name: str, points, theta_name: str, theta: torch.Tensor) -> None:
    """``points`` is ``(B, 2, N)`` with the batch, dtype and device of ``theta``."""
    check_tensor(name, points, 3)
    check_dim(name, points, 1, 2, "coordinates (x, y)")
    check_same(theta_name, theta, name, points)
    check_dim(name, points, 0, theta.shape[0], f"batch size (that of {theta_name})")


def _check_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value, maximum: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bound = f"in (0, {maximum}]" if maximum is not None else "> 0"
        raise ValueError(f"{name}: expected a number {bound}, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Point transforms on (B, N, 2) xy tensors (the internal layout; B may be 1 to broadcast)


def _axis(n: int, device, dtype) -> torch.Tensor:
    # align_corners=True; a single sample sits at 0, as F.affine_grid puts it.
    if n == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)


def _base_grid(size: tuple[int, int], device, dtype) -> torch.Tensor:
    """``(1, H*W, 2)`` normalised pixel centres, row-major, x then y."""
    h, w = size
    ys, xs = torch.meshgrid(_axis(h, device, dtype), _axis(w, device, dtype), indexing="ij")
    return torch.stack((xs, ys), dim=-1).reshape(1, h * w, 2)


def _affine_xy(theta: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """theta ``(B, 6)``, xy ``(B|1, N, 2)`` -> ``(B, N, 2)``."""
    m = theta.reshape(-1, 2, 3)
    return torch.matmul(xy, m[:, :, :2].transpose(1, 2)) + m[:, :, 2].unsqueeze(1)


def _tps_control_points(device, dtype) -> torch.Tensor:
    """``(9, 2)`` reference control points, x then y."""
    return torch.tensor([TPS_CONTROL_X, TPS_CONTROL_Y], device=device, dtype=dtype).t()


def _tps_kernel(d2: torch.Tensor) -> torch.Tensor:
    # U = r^2 log r^2 with U(0) = 0. Replacing 0 by 1 *before* the log keeps the gradient finite
    # (a torch.where after the log would back-propagate 0 * inf = NaN).
    d2 = torch.where(d2 > 0, d2, torch.ones_like(d2))
    return d2 * torch.log(d2)


def _solve_tps_system(device, dtype) -> torch.Tensor:
    p = _tps_control_points("cpu", torch.float64)
    k = _tps_kernel(((p.unsqueeze(1) - p.unsqueeze(0)) ** 2).sum(-1))
    affine = torch.cat((torch.ones(9, 1, dtype=torch.float64), p), dim=1)  # [1, x, y]
    system = torch.zeros(12, 12, dtype=torch.float64)
    system[:9, :9] = k
    system[:9, 9:] = affine
    system[9:, :9] = affine.t()
    rhs = torch.cat((torch.eye(9, dtype=torch.float64), torch.zeros(3, 9, dtype=torch.float64)))
    # (12, 9): [w_1..w_9, a_1, a_x, a_y] = solution @ (target coordinates of the 9 control points)
    return torch.linalg.solve(system, rhs).to(device=device, dtype=dtype)


def _tps_constants(device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(12, 9)`` map from control point coordinates to spline coefficients and the
    ``(9, 2)`` reference control points, cached per device and dtype."""
    key = (torch.device(device), dtype)
    constants = _TPS_CACHE.get(key)
    if constants is None:
        if torch.compiler.is_compiling():  # never cache a traced (fake) tensor
            return _solve_tps_system(device, dtype), _tps_control_points(device, dtype)
        # A cache filled under inference_mode would hold inference tensors, which autograd
        # refuses to save for backward in later training calls.
        with torch.inference_mode(False):
            constants = (_solve_tps_system(device, dtype), _tps_control_points(device, dtype))
        _TPS_CACHE[key] = constants
    return constants


def _tps_xy(theta: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """theta ``(B, 18)``, xy ``(B|1, N, 2)`` -> ``(B, N, 2)``."""
    solution, control = _tps_constants(theta.device, theta.dtype)
    coeffs = torch.matmul(solution, theta.reshape(-1, 2, 9).transpose(1, 2))  # (B, 12, 2)
    dx = xy[..., 0:1] - control[:, 0]  # (B|1, N, 9)
    dy = xy[..., 1:2] - control[:, 1]
    u = _tps_kernel(dx * dx + dy * dy)
    return torch.matmul(u, coeffs[:, :9]) + coeffs[:, 9].unsqueeze(1) + torch.matmul(xy, coeffs[:, 10:])


def _transform_xy(kind: str, theta: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    return _affine_xy(theta, xy) if kind == "affine" else _tps_xy(theta, xy)


def _grid(kind: str, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    xy = _transform_xy(kind, theta, _base_grid(size, theta.device, theta.dtype))
    return xy.reshape(theta.shape[0], h, w, 2)


# --------------------------------------------------------------------------------------------
# Grids, points, warps


def affine_grid(theta: torch.Tensor, size) -> torch.Tensor:
    """Source sampling grid of an affine transformation.

    Equals ``F.affine_grid(theta.view(B, 2, 3), (B, 1, H, W), align_corners=True)``.

    Args:
        theta: ``(B, 6)`` or ``(B, 2, 3)`` affine parameters (target -> source).
        size: output ``(H, W)`` or an int for a square.
    Returns:
        ``(B, H, W, 2)`` grid of normalised source coordinates, x then y.

    Example:
        >>> affine_grid(identity_theta("affine"), (2, 3))[0, :, :, 0]
        tensor([[-1.,  0.,  1.],
                [-1.,  0.,  1.]])
    """
    _, theta = _flatten_theta(theta, kinds=("affine",))
    return _grid("affine", theta, as_size("size", size))


def tps_grid(theta: torch.Tensor, size) -> torch.Tensor:
    """Source sampling grid of a thin-plate-spline transformation.

    Args:
        theta: ``(B, 18)`` TPS parameters: 9 control point x, then 9 y (target -> source).
        size: output ``(H, W)`` or an int for a square.
    Returns:
        ``(B, H, W, 2)`` grid of normalised source coordinates, x then y.
    """
    _, theta = _flatten_theta(theta, kinds=("tps",))
    return _grid("tps", theta, as_size("size", size))


def transform_points(theta: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map normalised target points to source points.

    The model is chosen by the size of ``theta``'s last dimension: 6 (or a ``(B, 2, 3)`` matrix)
    is affine, 18 is TPS.

    Args:
        theta: ``(B, 6)``, ``(B, 2, 3)`` or ``(B, 18)``.
        points: ``(B, 2, N)`` normalised coordinates, row 0 x, row 1 y; same dtype and device.
    Returns:
        ``(B, 2, N)`` transformed points.
    """
    kind, flat = _flatten_theta(theta)
    _check_points("points", points, "theta", flat)
    return _transform_xy(kind, flat, points.transpose(1, 2)).transpose(1, 2)


def compose_points(thetas: Sequence[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """Map points through several transformations, ``thetas[0]`` first.

    For the two-stage affine+TPS aligner pass ``[theta_tps, theta_aff]``: the TPS model was
    estimated on the affine-warped source, so a target point goes target -> (TPS) ->
    affine-warped-source coordinates -> (affine) -> source. The matching single sampling grid
    of the two-stage warp is ``compose_points`` applied to the output pixel grid.

    Args:
        thetas: a non-empty sequence of ``(B, 6)``, ``(B, 2, 3)`` or ``(B, 18)`` tensors.
        points: ``(B, 2, N)`` normalised target points.
    Returns:
        ``(B, 2, N)`` points after the last transformation.
    """
    if isinstance(thetas, torch.Tensor) or not isinstance(thetas, Sequence) or len(thetas) == 0:
        raise ValueError(f"thetas: expected a non-empty sequence of theta tensors, got {type(thetas).__name__}")
    for i, theta in enumerate(thetas):
        kind, flat = _flatten_theta(theta, name=f"thetas[{i}]")
        _check_points("points", points, f"thetas[{i}]", flat)
        points = _transform_xy(kind, flat, points.transpose(1, 2)).transpose(1, 2)
    return points


def warp_image(image: torch.Tensor, theta: torch.Tensor, size=None) -> torch.Tensor:
    """Warp ``image`` with ``theta``: output pixel ``p`` samples ``image`` at ``theta(p)``.

    Bilinear ``grid_sample``, ``align_corners=True``, zeros outside the image.

    Args:
        image: ``(B, C, H, W)`` floating tensor.
        theta: ``(B, 6)``, ``(B, 2, 3)`` or ``(B, 18)``, same dtype and device as ``image``.
        size: output ``(h, w)`` (or an int); ``None`` keeps ``(H, W)``.
    Returns:
        ``(B, C, h, w)`` warped image.
    """
    check_tensor("image", image, 4)
    kind, flat = _flatten_theta(theta)
    check_same("image", image, "theta", flat)
    check_dim("theta", flat, 0, image.shape[0], "batch size (that of image)")
    size = tuple(image.shape[2:]) if size is None else as_size("size", size)
    grid = _grid(kind, flat, size)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def identity_theta(kind: str, batch_size: int = 1, device=None, dtype=None) -> torch.Tensor:
    """The identity transformation.

    Args:
        kind: ``"affine"`` or ``"tps"``.
        batch_size: number of copies B.
        device, dtype: of the result (defaults: PyTorch's).
    Returns:
        ``(B, 6)`` ``[1, 0, 0, 0, 1, 0]`` or ``(B, 18)`` reference control points.
    """
    check_choice("kind", kind, tuple(THETA_SIZE))
    _check_count("batch_size", batch_size, 0)
    values = _AFFINE_IDENTITY if kind == "affine" else TPS_CONTROL_X + TPS_CONTROL_Y
    return torch.tensor(values, device=device, dtype=dtype).repeat(batch_size, 1)


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``outer o inner`` of affine thetas: points go through ``inner`` first (docs/design.md §5).

    Args:
        outer, inner: ``(B, 6)`` or ``(B, 2, 3)`` affine thetas, same dtype and device.
    Returns:
        ``(B, 6)``: ``x -> outer(inner(x))``.
    """
    _, a = _flatten_theta(outer, name="outer", kinds=("affine",))
    _, b = _flatten_theta(inner, name="inner", kinds=("affine",))
    check_same("outer", a, "inner", b)
    check_dim("inner", b, 0, a.shape[0], "batch size (that of outer)")
    a, b = a.reshape(-1, 2, 3), b.reshape(-1, 2, 3)
    linear = torch.matmul(a[:, :, :2], b[:, :, :2])
    shift = torch.matmul(a[:, :, :2], b[:, :, 2:]) + a[:, :, 2:]
    return torch.cat((linear, shift), dim=2).reshape(-1, 6)


def invert_affine(theta: torch.Tensor) -> torch.Tensor:
    """The inverse of affine thetas (source -> target when ``theta`` maps target -> source).

    Args:
        theta: ``(B, 6)`` or ``(B, 2, 3)`` with invertible 2x2 parts.
    Returns:
        ``(B, 6)``.
    """
    _, flat = _flatten_theta(theta, kinds=("affine",))
    m = flat.reshape(-1, 2, 3)
    linear = torch.linalg.inv(m[:, :, :2])
    return torch.cat((linear, -torch.matmul(linear, m[:, :, 2:])), dim=2).reshape(-1, 6)


# --------------------------------------------------------------------------------------------
# Pixel coordinates of keypoint files


def _lengths(size, points: torch.Tensor) -> torch.Tensor:
    """``(B|1, 2, 1)`` image lengths (W for the x row, H for the y row) in ``points``' dtype."""
    if isinstance(size, torch.Tensor):
        if size.dim() == 1:
            size = size.unsqueeze(0)
        if size.dim() != 2 or size.shape[1] != 2:
            raise ValueError(f"size: expected a (B, 2) tensor of (H, W) or a pair, got shape {tuple(size.shape)}")
        if size.shape[0] not in (1, points.shape[0]):
            raise ValueError(f"size: expected batch size {points.shape[0]} (that of points) or 1, got {size.shape[0]}")
        size = size.to(device=points.device, dtype=points.dtype)
    else:
        size = torch.tensor([as_size("size", size)], device=points.device, dtype=points.dtype)
    if bool((size < 2).any()):
        raise ValueError(f"size: expected image sizes >= 2 pixels, got {size.tolist()}")
    return size.flip(-1).unsqueeze(-1)


def valid_keypoints(points: torch.Tensor) -> torch.Tensor:
    """Mask of the real (non-padded) keypoints of a pixel-coordinate keypoint tensor.

    A keypoint is padding when any of its coordinates is negative (PF-PASCAL pads with ``-1``).
    Take the mask from the *pixel* coordinates read from the file, before any conversion.

    Args:
        points: ``(B, 2, N)`` 1-based pixel coordinates.
    Returns:
        ``(B, N)`` bool, True for real keypoints.
    """
    check_tensor("points", points, 3, floating=False)
    check_dim("points", points, 1, 2, "coordinates (x, y)")
    return (points >= 0).all(dim=1)


def pixels_to_normalized(points: torch.Tensor, size) -> torch.Tensor:
    """1-based pixel coordinates to ``[-1, 1]``: pixel 1 -> -1, pixel L -> +1.

    ``x_norm = (x - 1) * 2 / (W - 1) - 1`` and the same for y with H.
    Padded keypoints (any coordinate < 0) pass through unchanged. ``-1`` is also a valid
    normalised coordinate, so after conversion they are no longer recognisable by value: keep
    the :func:`valid_keypoints` mask of the pixel input and hand it to
    :func:`normalized_to_pixels` to restore the padding.

    Args:
        points: ``(B, 2, N)`` floating, row 0 x, row 1 y.
        size: ``(H, W)`` of each image as a ``(B, 2)`` (or ``(2,)``) tensor, or one pair for all;
            sizes >= 2.
    Returns:
        ``(B, 2, N)`` normalised coordinates.
    """
    check_tensor("points", points, 3)
    check_dim("points", points, 1, 2, "coordinates (x, y)")
    lengths = _lengths(size, points)
    normalized = (points - 1) * 2 / (lengths - 1) - 1
    padded = (points < 0).any(dim=1, keepdim=True)
    return torch.where(padded, points, normalized)


def normalized_to_pixels(points: torch.Tensor, size, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[-1, 1]`` coordinates to 1-based pixels: -1 -> pixel 1, +1 -> pixel L.

    ``x = (x_norm + 1) * (W - 1) / 2 + 1`` and the same for y with H. Every point is converted
    unless ``valid`` is given: where it is False, both coordinates are set to
    :data:`PAD_VALUE` (``-1``), so padded keypoints stay recognisable after a transformation.

    Args:
        points: ``(B, 2, N)`` normalised coordinates, row 0 x, row 1 y.
        size: ``(H, W)`` of each image as a ``(B, 2)`` (or ``(2,)``) tensor, or one pair for all.
        valid: optional ``(B, N)`` bool mask of real keypoints (see :func:`valid_keypoints`).
    Returns:
        ``(B, 2, N)`` pixel coordinates.
    """
    check_tensor("points", points, 3)
    check_dim("points", points, 1, 2, "coordinates (x, y)")
    pixels = (points + 1) * (_lengths(size, points) - 1) / 2 + 1
    if valid is None:
        return pixels
    check_tensor("valid", valid, 2, floating=False)
    if valid.dtype != torch.bool or tuple(valid.shape) != (points.shape[0], points.shape[2]):
        raise ValueError(
            f"valid: expected a bool tensor of shape (B, N) = {(points.shape[0], points.shape[2])}, "
            f"got {valid.dtype} with shape {tuple(valid.shape)}"
        )
    return torch.where(valid.unsqueeze(1), pixels, torch.full_like(pixels, PAD_VALUE))


# --------------------------------------------------------------------------------------------
# Polygons


def polygon_to_mask(xs, ys, size) -> torch.Tensor:
    """Rasterise a polygon: the pixels whose centre lies inside it or on its boundary.

    Vertex coordinates are taken as pixel positions on the 0-based grid (pixel ``(row, col)`` has
    centre ``(x, y) = (col, row)``), as ``skimage.draw.polygon(ys, xs, size)`` takes them and as
    the reference Caltech-101 evaluation feeds the annotation polygons to it; for polygons with
    non-integer vertices (the Caltech annotations) the two agree pixel for pixel. Inside is the
    even-odd rule (PNPOLY's crossing test), vectorised over the pixels of the polygon's bounding box.

    Args:
        xs: ``(V,)`` x (column) coordinates of the vertices, V >= 3 (sequence, array or tensor).
        ys: ``(V,)`` y (row) coordinates.
        size: ``(H, W)`` of the mask (an int for a square).
    Returns:
        ``(H, W)`` bool mask (on the CPU, or on ``xs``' device for a tensor).

    Example:
        >>> polygon_to_mask([0.5, 3.5, 3.5, 0.5], [0.5, 0.5, 2.5, 2.5], (4, 5)).int()
        tensor([[0, 0, 0, 0, 0],
                [0, 1, 1, 1, 0],
                [0, 1, 1, 1, 0],
                [0, 0, 0, 0, 0]], dtype=torch.int32)
    """
    height, width = as_size("size", size)
    device = xs.device if isinstance(xs, torch.Tensor) else None
    vx = torch.as_tensor(xs, dtype=torch.float64, device=device).reshape(-1)
    vy = torch.as_tensor(ys, dtype=torch.float64, device=device).reshape(-1)
    if vx.shape != vy.shape or vx.numel() < 3:
        raise ValueError(f"xs, ys: expected two vertex lists of one length >= 3, got {vx.numel()} and {vy.numel()}")
    if not bool(torch.isfinite(vx).all() and torch.isfinite(vy).all()):
        raise ValueError("xs, ys: expected finite vertex coordinates, got NaN or inf")
    mask = torch.zeros(height, width, dtype=torch.bool, device=vx.device)
    row0, row1 = max(0, int(vy.min().ceil())), min(height - 1, int(vy.max().floor()))
    col0, col1 = max(0, int(vx.min().ceil())), min(width - 1, int(vx.max().floor()))
    if row0 > row1 or col0 > col1:
        return mask
    y, x = torch.meshgrid(
        torch.arange(row0, row1 + 1, dtype=torch.float64, device=vx.device),
        torch.arange(col0, col1 + 1, dtype=torch.float64, device=vx.device),
        indexing="ij",
    )
    inside = torch.zeros_like(x, dtype=torch.bool)
    on_edge = torch.zeros_like(inside)
    for i in range(vx.numel()):  # edge (j -> i), j the previous vertex (the last one closes the ring)
        xi, yi, xj, yj = vx[i], vy[i], vx[i - 1], vy[i - 1]
        if yi != yj:  # a horizontal edge is never crossed
            straddles = (yi <= y) != (yj <= y)
            inside ^= straddles & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
        # Exact in float64 for the pixel grid; catches the centres that lie on an edge.
        collinear = (xj - xi) * (y - yi) == (yj - yi) * (x - xi)
        within = (x >= torch.minimum(xi, xj)) & (x <= torch.maximum(xi, xj))
        within &= (y >= torch.minimum(yi, yj)) & (y <= torch.maximum(yi, yj))
        on_edge |= collinear & within
    mask[row0 : row1 + 1, col0 : col1 + 1] = inside | on_edge
    return mask


# --------------------------------------------------------------------------------------------
# Random transformations and synthetic training pairs (docs/design.md §6)


def _uniform(shape, generator, device) -> torch.Tensor:
    """Uniform in [-1, 1], float64, drawn on the generator's device (else ``device``)."""
    sample_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=sample_device, dtype=torch.float64) * 2 - 1


def _cast(theta: torch.Tensor, device, dtype) -> torch.Tensor:
    # computed in float64 and cast once, so every dtype gets the same draws, rounded once
    return theta.to(device=device, dtype=dtype or torch.get_default_dtype())


def random_affine_theta(
    batch_size: int,
    generator: torch.Generator | None = None,
    *,
    rotation: float = math.pi / 6,
    scale: float = 0.5,
    translation: float = 0.5,
    device=None,
    dtype=None,
) -> torch.Tensor:
    """Random affine thetas of the self-supervised training (the authors' sampling).

    With ``alpha`` uniform in ``[-rotation, rotation]`` and independent ``u_i`` uniform in
    ``[-1, 1]``::

        [[(1 + u_1 s) cos(alpha), -(1 + u_2 s) sin(alpha), u_5 t],
         [(1 + u_3 s) sin(alpha),  (1 + u_4 s) cos(alpha), u_6 t]]

    with ``s = scale`` and ``t = translation``: each entry of the 2x2 part is jittered on its own,
    so the result is a rotation with anisotropic scale and shear, not a similarity.

    Args:
        batch_size: number of thetas B.
        generator: optional ``torch.Generator`` for reproducible draws (numbers are drawn in
            float64 on its device, then cast).
        rotation: largest rotation angle in radians (default pi/6).
        scale: jitter amplitude of the matrix entries (default 0.5).
        translation: largest translation (default 0.5, in normalised units).
        device, dtype: of the result (defaults: the generator's device, else PyTorch's; PyTorch's
            default dtype).
    Returns:
        ``(B, 6)`` affine thetas.
    """
    _check_count("batch_size", batch_size, 0)
    u = _uniform((batch_size, 7), generator, device)
    alpha = u[:, 0] * rotation
    cos, sin = torch.cos(alpha), torch.sin(alpha)
    s = 1 + u[:, 1:5] * scale
    t = u[:, 5:7] * translation
    theta = torch.stack((s[:, 0] * cos, -s[:, 1] * sin, t[:, 0], s[:, 2] * sin, s[:, 3] * cos, t[:, 1]), dim=1)
    return _cast(theta, device, dtype)


def random_near_identity_theta(
    batch_size: int,
    generator: torch.Generator | None = None,
    *,
    rotation: float = math.pi / 18,
    scale: float = 0.15,
    translation: float = 0.15,
    shear: float = 0.05,
    device=None,
    dtype=None,
) -> torch.Tensor:
    """Random small affine thetas, like the viewpoint change between two photos of one scene.

    A similarity (rotation ``alpha`` uniform in ``[-rotation, rotation]``, isotropic scale
    ``exp(u log(1 + scale))`` with ``u`` uniform in ``[-1, 1]``, translation uniform in
    ``[-translation, translation]`` on each axis) whose 2x2 part is then jittered by independent
    uniform ``[-shear, shear]`` entries (a little anisotropy and shear, as parallax gives). The
    authors' :func:`random_affine_theta` rarely draws such pairs; with them the network learns the
    identity and small corrections precisely, which composed inference passes rely on
    (docs/design.md §6).

    Args:
        batch_size: number of thetas B.
        generator: optional ``torch.Generator`` (draws in float64 on its device, then cast).
        rotation: largest rotation angle in radians (default pi/18, 10 degrees).
        scale: largest relative scale change (default 0.15).
        translation: largest translation (default 0.15, normalised units).
        shear: largest jitter of each 2x2 entry (default 0.05).
        device, dtype: of the result (as in :func:`random_affine_theta`).
    Returns:
        ``(B, 6)`` affine thetas.
    """
    _check_count("batch_size", batch_size, 0)
    u = _uniform((batch_size, 8), generator, device)
    alpha = u[:, 0] * rotation
    s = torch.exp(u[:, 1] * math.log1p(scale))
    cos, sin = s * torch.cos(alpha), s * torch.sin(alpha)
    j = u[:, 2:6] * shear
    t = u[:, 6:8] * translation
    theta = torch.stack((cos + j[:, 0], -sin + j[:, 1], t[:, 0], sin + j[:, 2], cos + j[:, 3], t[:, 1]), dim=1)
    return _cast(theta, device, dtype)


def random_tps_theta(
    batch_size: int, generator: torch.Generator | None = None, noise: float = 0.4, *, device=None, dtype=None
) -> torch.Tensor:
    """Random TPS thetas: the reference control points plus uniform noise in ``[-noise, noise]``
    on each of the 18 numbers.

    Args:
        batch_size: number of thetas B.
        generator: optional ``torch.Generator`` (draws in float64 on its device, then cast).
        noise: largest displacement of a control point coordinate (default 0.4).
        device, dtype: of the result (as in :func:`random_affine_theta`).
    Returns:
        ``(B, 18)`` TPS thetas.
    """
    _check_count("batch_size", batch_size, 0)
    u = _uniform((batch_size, 18), generator, device)
    return _cast(identity_theta("tps", batch_size, device=u.device, dtype=u.dtype) + u * noise, device, dtype)


def mirror_pad(image: torch.Tensor, padding_factor: float = 0.5) -> torch.Tensor:
    """Pad each side by ``int(L * padding_factor)`` pixels of the mirrored image.

    The mirror includes the edge pixel (numpy's ``"symmetric"`` mode, the authors'
    ``symmetricImagePad``), unlike ``F.pad(mode="reflect")``.

    Args:
        image: ``(B, C, H, W)``.
        padding_factor: fraction of each side's length added on that side, in ``(0, 1]``.
    Returns:
        ``(B, C, H + 2 int(H p), W + 2 int(W p))``.
    """
    check_tensor("image", image, 4)
    padding_factor = _check_positive("padding_factor", padding_factor, maximum=1.0)
    h, w = image.shape[2:]
    pad_h, pad_w = int(h * padding_factor), int(w * padding_factor)
    image = torch.cat((image[..., :pad_w].flip(-1), image, image[..., w - pad_w :].flip(-1)), dim=-1)
    return torch.cat((image[..., :pad_h, :].flip(-2), image, image[..., h - pad_h :, :].flip(-2)), dim=-2)


def synthetic_pair(
    image: torch.Tensor,
    theta: torch.Tensor,
    output_size=(240, 240),
    padding_factor: float = 0.5,
    crop_factor: float = 9 / 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A self-supervised training pair (the CNNGeometric / A2Net ``SynthPairTnf``).

    The image is mirror-padded by ``padding_factor`` of each side (:func:`mirror_pad`). Both
    sampling grids are built on ``output_size`` in ``[-1, 1]`` (identity for the source, ``theta``
    for the target), multiplied by ``padding_factor * crop_factor`` and sampled from the padded
    image (bilinear, ``align_corners=True``). With the default padding 0.5 the padded image is
    twice as large, so the factor 0.5 brings the grid back onto the original image and
    ``crop_factor`` keeps its central part: the source is the central ``crop_factor`` of the
    image, and the target is that crop warped by ``theta`` in the crop's own normalised
    coordinates (so ``theta`` maps target points to source points as everywhere else), with the
    mirrored border filling what falls outside the image.

    Args:
        image: ``(B, C, H, W)`` (the authors resize to 480x640 first; any size works).
        theta: ``(B, 6)``, ``(B, 2, 3)`` or ``(B, 18)``, same dtype and device as ``image``.
        output_size: ``(h, w)`` of both outputs (or an int).
        padding_factor: mirror padding of each side, as a fraction of its length, in ``(0, 1]``.
        crop_factor: fraction of the grid kept, in ``(0, 1]``.
    Returns:
        ``(source, target)``, each ``(B, C, h, w)``.
    """
    check_tensor("image", image, 4)
    kind, flat = _flatten_theta(theta)
    check_same("image", image, "theta", flat)
    check_dim("theta", flat, 0, image.shape[0], "batch size (that of image)")
    size = as_size("output_size", output_size)
    padding_factor = _check_positive("padding_factor", padding_factor, maximum=1.0)
    scale = padding_factor * _check_positive("crop_factor", crop_factor, maximum=1.0)
    padded = mirror_pad(image, padding_factor)
    batch = image.shape[0]
    source_grid = _base_grid(size, image.device, image.dtype).reshape(1, *size, 2).expand(batch, -1, -1, -1)
    target_grid = _grid(kind, flat, size)
    sample = dict(mode="bilinear", padding_mode="zeros", align_corners=True)
    return F.grid_sample(padded, source_grid * scale, **sample), F.grid_sample(padded, target_grid * scale, **sample)


# --------------------------------------------------------------------------------------------
# Loss


def _loss_points(grid_size: int, device, dtype) -> torch.Tensor:
    """``(1, grid_size**2, 2)`` grid of points on [-1, 1]^2."""
    return _base_grid((grid_size, grid_size), device, dtype)


def transformed_grid_loss(theta_pred: torch.Tensor, theta_true: torch.Tensor, grid_size: int = 20) -> torch.Tensor:
    """Transformed grid loss: mean squared distance between a grid mapped by both thetas.

    A ``grid_size`` x ``grid_size`` grid of points on ``[-1, 1]^2`` is mapped by the predicted and
    by the true transformation; the loss is the squared Euclidean distance between the two images
    of each point, averaged over the points and the batch.

    Args:
        theta_pred: ``(B, 6)``, ``(B, 2, 3)`` or ``(B, 18)`` predicted parameters.
        theta_true: ground truth of the same model, dtype and device.
        grid_size: points per side (default 20).
    Returns:
        a 0-D tensor.
    """
    kind, pred = _flatten_theta(theta_pred, name="theta_pred")
    _, true = _flatten_theta(theta_true, name="theta_true", kinds=(kind,))
    check_same("theta_pred", pred, "theta_true", true)
    check_dim("theta_true", true, 0, pred.shape[0], "batch size (that of theta_pred)")
    _check_count("grid_size", grid_size, 1)
    points = _loss_points(grid_size, pred.device, pred.dtype)
    diff = _transform_xy(kind, pred, points) - _transform_xy(kind, true, points)
    return diff.pow(2).sum(-1).mean()


class TransformedGridLoss(nn.Module):
    """Module form of :func:`transformed_grid_loss` for one geometric model.

    Args:
        geometric_model: ``"affine"`` or ``"tps"``; thetas of the other model are refused.
        grid_size: points per side of the grid (default 20).

    Shapes:
        ``forward(theta_pred, theta_true)``: two ``(B, 6)`` (or ``(B, 2, 3)``) or two ``(B, 18)``
        tensors -> 0-D loss.
    """

    def __init__(self, geometric_model: str = "affine", grid_size: int = 20):
        super().__init__()
        check_choice("geometric_model", geometric_model, tuple(THETA_SIZE))
        self.geometric_model = geometric_model
        self.grid_size = _check_count("grid_size", grid_size, 1)

    def forward(self, theta_pred: torch.Tensor, theta_true: torch.Tensor) -> torch.Tensor:
        _flatten_theta(theta_pred, name="theta_pred", kinds=(self.geometric_model,))
        return transformed_grid_loss(theta_pred, theta_true, self.grid_size)

    def extra_repr(self) -> str:
        return f"geometric_model={self.geometric_model!r}, grid_size={self.grid_size}"
