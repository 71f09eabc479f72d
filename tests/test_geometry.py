"""Tests of a2net.geometry: values against independent computations (numpy, scipy, torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.interpolate import RBFInterpolator

from a2net import geometry
from a2net.geometry import (
    PAD_VALUE,
    TPS_CONTROL_X,
    TPS_CONTROL_Y,
    TransformedGridLoss,
    affine_grid,
    compose_points,
    identity_theta,
    mirror_pad,
    normalized_to_pixels,
    pixels_to_normalized,
    random_affine_theta,
    random_tps_theta,
    synthetic_pair,
    tps_grid,
    transform_points,
    transformed_grid_loss,
    valid_keypoints,
    warp_image,
)

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]
ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}
CONTROL = np.stack([TPS_CONTROL_X, TPS_CONTROL_Y], axis=1)  # (9, 2)


def _points(batch, n, dtype, seed=0, scale=1.2):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(batch, 2, n, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)


def _tps_numpy(theta, points):
    """Independent thin-plate spline: theta (18,), points (N, 2) -> (N, 2), all float64 numpy."""

    def kernel(d2):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d2 > 0, d2 * np.log(d2), 0.0)

    k = kernel(((CONTROL[:, None, :] - CONTROL[None, :, :]) ** 2).sum(-1))
    p = np.concatenate([np.ones((9, 1)), CONTROL], axis=1)
    system = np.block([[k, p], [p.T, np.zeros((3, 3))]])
    rhs = np.concatenate([np.stack([theta[:9], theta[9:]], axis=1), np.zeros((3, 2))])
    coeffs = np.linalg.solve(system, rhs)
    u = kernel(((points[:, None, :] - CONTROL[None, :, :]) ** 2).sum(-1))
    return u @ coeffs[:9] + coeffs[9] + points @ coeffs[10:]


# ------------------------------------------------------------------------------------------
# Identity, affine and TPS point maps


@pytest.mark.parametrize("kind", ["affine", "tps"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_maps_points_to_themselves(kind, dtype):
    points = _points(3, 37, dtype)
    out = transform_points(identity_theta(kind, 3, dtype=dtype), points)
    torch.testing.assert_close(out, points, rtol=0, atol=ATOL[dtype])
    grid = (affine_grid if kind == "affine" else tps_grid)(identity_theta(kind, 2, dtype=dtype), (5, 7))
    torch.testing.assert_close(grid[1, 3, 4], torch.tensor([1 / 3, 0.5], dtype=dtype), rtol=0, atol=ATOL[dtype])


def test_identity_theta_values():
    assert identity_theta("affine").tolist() == [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]]
    tps = identity_theta("tps", 2, dtype=torch.float64)
    assert tps.shape == (2, 18) and tps.dtype == torch.float64
    assert tps[1].tolist() == [-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1]


@pytest.mark.parametrize("size", [(5, 7), (1, 4), (6, 1)], ids=["H5-W7", "H1-W4", "H6-W1"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_grid_equals_torch(size, dtype):
    theta = random_affine_theta(4, torch.Generator().manual_seed(1), dtype=dtype)
    with pytest.warns(UserWarning) if 1 in size else _no_warning():
        ref = F.affine_grid(theta.view(4, 2, 3), (4, 1, *size), align_corners=True)
    torch.testing.assert_close(affine_grid(theta, size), ref, rtol=0, atol=ATOL[dtype])
    torch.testing.assert_close(affine_grid(theta.view(4, 2, 3), size), ref, rtol=0, atol=ATOL[dtype])


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_transform_points_is_matrix_product(dtype):
    theta = random_affine_theta(2, torch.Generator().manual_seed(2), dtype=dtype)
    points = _points(2, 11, dtype)
    m = theta.view(2, 2, 3)
    ref = m[:, :, :2] @ points + m[:, :, 2:]
    torch.testing.assert_close(transform_points(theta, points), ref, rtol=0, atol=ATOL[dtype])
    torch.testing.assert_close(transform_points(m, points), ref, rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_tps_maps_reference_control_points_to_theta(dtype):
    theta = random_tps_theta(3, torch.Generator().manual_seed(3), dtype=dtype)
    control = identity_theta("tps", 3, dtype=dtype).view(3, 2, 9)
    out = transform_points(theta, control)
    torch.testing.assert_close(out, theta.view(3, 2, 9), rtol=0, atol=ATOL[dtype])


def test_tps_equals_independent_solve():
    theta = random_tps_theta(2, torch.Generator().manual_seed(4), dtype=torch.float64)
    points = _points(2, 50, torch.float64, scale=1.5)
    points[:, :, 0] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # exactly on a control point
    out = transform_points(theta, points).numpy()
    for b in range(2):
        xy = points[b].T.numpy()
        np.testing.assert_allclose(out[b].T, _tps_numpy(theta[b].numpy(), xy), rtol=0, atol=1e-12)
        # scipy's kernel r^2 log r = U / 2: the same interpolant, through a different solver
        targets = np.stack([theta[b, :9].numpy(), theta[b, 9:].numpy()], axis=1)
        scipy_tps = RBFInterpolator(CONTROL, targets, kernel="thin_plate_spline", degree=1, smoothing=0.0)
        np.testing.assert_allclose(out[b].T, scipy_tps(xy), rtol=0, atol=1e-10)


def test_tps_affine_control_points_reproduce_the_affine_map():
    affine = torch.tensor([[0.9, -0.3, 0.1, 0.2, 1.1, -0.25]], dtype=torch.float64)
    control = identity_theta("tps", dtype=torch.float64).view(1, 2, 9)
    tps = transform_points(affine, control).reshape(1, 18)
    points = _points(1, 40, torch.float64)
    torch.testing.assert_close(transform_points(tps, points), transform_points(affine, points), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tps_grid_equals_transform_points(dtype):
    theta = random_tps_theta(2, torch.Generator().manual_seed(5), dtype=dtype)
    h, w = 6, 9
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=dtype), torch.linspace(-1, 1, w, dtype=dtype), indexing="ij")
    points = torch.stack((xs.reshape(-1), ys.reshape(-1))).expand(2, 2, h * w)
    ref = transform_points(theta, points).transpose(1, 2).reshape(2, h, w, 2)
    torch.testing.assert_close(tps_grid(theta, (h, w)), ref, rtol=0, atol=ATOL[dtype])


def test_tps_gradients_are_finite_and_correct():
    theta_aff = identity_theta("affine", dtype=torch.float64).requires_grad_()
    theta_tps = random_tps_theta(1, torch.Generator().manual_seed(6), dtype=torch.float64).requires_grad_()
    # the TPS input depends on theta_aff and sits exactly on control points: the 0*log(0) case
    points = identity_theta("tps", dtype=torch.float64).view(1, 2, 9)
    compose_points([theta_aff, theta_tps], points).sum().backward()
    assert torch.isfinite(theta_aff.grad).all() and torch.isfinite(theta_tps.grad).all()
    torch.autograd.gradcheck(
        lambda t, p: transform_points(t, p),
        (theta_tps.detach().requires_grad_(), _points(1, 5, torch.float64).requires_grad_()),
    )


def test_tps_cache_filled_under_inference_mode_works_with_autograd():
    geometry._TPS_CACHE.clear()
    with torch.inference_mode():
        transform_points(identity_theta("tps"), torch.zeros(1, 2, 3))
    theta = identity_theta("tps").requires_grad_()
    transform_points(theta, torch.zeros(1, 2, 3)).sum().backward()
    assert theta.grad is not None
    assert len(geometry._TPS_CACHE) == 1


def test_compose_points_order():
    rotate = torch.tensor([[0.0, -1.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    shift = torch.tensor([[1.0, 0.0, 0.5, 0.0, 1.0, 0.0]], dtype=torch.float64)
    points = torch.tensor([[[1.0], [0.0]]], dtype=torch.float64)
    # shift first: (1.5, 0) then rotate by 90 degrees -> (0, 1.5)
    assert compose_points([shift, rotate], points).flatten().tolist() == [0.0, 1.5]
    theta_tps = random_tps_theta(1, torch.Generator().manual_seed(7), dtype=torch.float64)
    many = _points(1, 20, torch.float64)
    ref = transform_points(shift, transform_points(theta_tps, many))
    torch.testing.assert_close(compose_points([theta_tps, shift], many), ref, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# Loss


@pytest.mark.parametrize("kind", ["affine", "tps"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_loss_zero_for_equal_thetas(kind, dtype):
    g = torch.Generator().manual_seed(8)
    theta = (random_affine_theta if kind == "affine" else random_tps_theta)(3, g, dtype=dtype)
    assert transformed_grid_loss(theta, theta.clone()).item() == 0.0
    assert TransformedGridLoss(kind)(theta, theta.clone()).item() == 0.0


@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_grid_loss_translation_and_scale_by_hand(kind):
    tx, ty = 0.3, -0.2
    true = identity_theta(kind, 2, dtype=torch.float64)
    pred = true.clone()
    if kind == "affine":
        pred[:, 2], pred[:, 5] = tx, ty
    else:
        pred[:, :9] += tx
        pred[:, 9:] += ty
    # every grid point moves by (tx, ty): squared distance tx^2 + ty^2 everywhere
    loss = TransformedGridLoss(kind)(pred, true)
    assert loss.item() == pytest.approx(tx**2 + ty**2, abs=1e-12)
    # batch mean: a second element at zero loss halves it
    pred[1] = true[1]
    assert transformed_grid_loss(pred, true).item() == pytest.approx((tx**2 + ty**2) / 2, abs=1e-12)


def test_grid_loss_scaling_by_hand():
    # x scaled by 2 on a 3x3 grid: the error is x^2 for x in {-1, 0, 1}, mean 2/3
    pred = torch.tensor([[2.0, 0, 0, 0, 1, 0]], dtype=torch.float64)
    loss = transformed_grid_loss(pred, identity_theta("affine", dtype=torch.float64), grid_size=3)
    assert loss.item() == pytest.approx(2 / 3, abs=1e-12)


def test_grid_loss_module_refuses_other_model():
    with pytest.raises(ValueError, match=r"theta_pred: expected last dimension 18 \(tps\), got 6"):
        TransformedGridLoss("tps")(identity_theta("affine"), identity_theta("affine"))
    with pytest.raises(ValueError, match=r"theta_true: expected last dimension 6 \(affine\), got 18"):
        transformed_grid_loss(identity_theta("affine"), identity_theta("tps"))
    with pytest.raises(ValueError, match=r"geometric_model: expected one of"):
        TransformedGridLoss("homography")


# ------------------------------------------------------------------------------------------
# Pixel coordinates


@pytest.mark.parametrize("dtype", DTYPES)
def test_pixel_conversions(dtype):
    size = torch.tensor([[7, 11], [20, 5]])  # (H, W) per batch element
    points = torch.tensor([[[1.0, 11.0, 6.0], [1.0, 7.0, 4.0]], [[1.0, 5.0, 3.0], [1.0, 20.0, 10.5]]], dtype=dtype)
    norm = pixels_to_normalized(points, size)
    expected = torch.tensor([[[-1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]], [[-1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]], dtype=dtype)
    torch.testing.assert_close(norm, expected, rtol=0, atol=ATOL[dtype])
    torch.testing.assert_close(normalized_to_pixels(norm, size), points, rtol=0, atol=10 * ATOL[dtype])
    # one pair for the whole batch
    one = pixels_to_normalized(points[:1], (7, 11))
    torch.testing.assert_close(one, norm[:1], rtol=0, atol=0)
    random = _points(2, 13, dtype)
    torch.testing.assert_close(
        pixels_to_normalized(normalized_to_pixels(random, size), size), random, rtol=0, atol=10 * ATOL[dtype]
    )


def test_padded_keypoints_stay_recognisable():
    points = torch.tensor([[[5.0, -1.0, 3.0], [2.0, -1.0, 9.0]]], dtype=torch.float64)
    valid = valid_keypoints(points)
    assert valid.tolist() == [[True, False, True]]
    norm = pixels_to_normalized(points, (10, 10))
    assert norm[0, :, 1].tolist() == [-1.0, -1.0]  # passed through unchanged
    moved = transform_points(torch.tensor([[1.0, 0, 0.3, 0, 1, 0]], dtype=torch.float64), norm)
    back = normalized_to_pixels(moved, (10, 10), valid=valid)
    assert back[0, :, 1].tolist() == [PAD_VALUE, PAD_VALUE]
    assert back[0, 1, 0].item() == pytest.approx(2.0) and back[0, 0, 0].item() == pytest.approx(5.0 + 0.3 * 4.5)


# ------------------------------------------------------------------------------------------
# Warping


@pytest.mark.parametrize("kind", ["affine", "tps"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_warp_identity_returns_image(kind, dtype):
    image = torch.rand(2, 3, 7, 10, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)
    out = warp_image(image, identity_theta(kind, 2, dtype=dtype))
    torch.testing.assert_close(out, image, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_warp_translation_shifts_pixels():
    h, w, kx, ky = 6, 9, 2, 1
    image = torch.rand(1, 2, h, w, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    theta = torch.tensor([[1.0, 0.0, 2 * kx / (w - 1), 0.0, 1.0, 2 * ky / (h - 1)]], dtype=torch.float64)
    out = warp_image(image, theta)
    # output pixel (i, j) samples source pixel (i + ky, j + kx); beyond the border: zeros
    torch.testing.assert_close(out[..., : h - ky, : w - kx], image[..., ky:, kx:], rtol=0, atol=1e-12)
    assert out[..., h - ky :, :].abs().max() == 0 and out[..., :, w - kx :].abs().max() == 0


def test_warp_output_size():
    image = torch.arange(12.0).view(1, 1, 3, 4)
    out = warp_image(image, identity_theta("affine"), size=(5, 7))
    assert out.shape == (1, 1, 5, 7)
    assert out[0, 0, 0].tolist() == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])


# ------------------------------------------------------------------------------------------
# Random thetas


def test_random_affine_ranges_and_reproducible():
    g = torch.Generator().manual_seed(11)
    theta = random_affine_theta(4000, g, dtype=torch.float64)
    a11, a12, tx, a21, a22, ty = theta.unbind(1)
    for t in (tx, ty):
        assert t.abs().max() <= 0.5 and t.abs().max() > 0.49
    cos_min = 0.5 * math.cos(math.pi / 6)
    assert (a11 >= cos_min - 1e-12).all() and (a22 >= cos_min - 1e-12).all()
    assert a11.max() <= 1.5 and a22.max() <= 1.5 and a11.max() > 1.45
    assert a12.abs().max() <= 0.75 and a21.abs().max() <= 0.75
    assert (a12 * a21 <= 0).all()  # -sin and +sin of the same angle
    # without entry jitter the matrix is a rotation by alpha in [-pi/6, pi/6]
    rot = random_affine_theta(4000, torch.Generator().manual_seed(12), scale=0.0, dtype=torch.float64)
    torch.testing.assert_close(rot[:, 0], rot[:, 4], rtol=0, atol=0)
    torch.testing.assert_close(rot[:, 1], -rot[:, 3], rtol=0, atol=0)
    alpha = torch.atan2(rot[:, 3], rot[:, 0])
    torch.testing.assert_close(rot[:, 0] ** 2 + rot[:, 3] ** 2, torch.ones(4000, dtype=torch.float64))
    assert alpha.abs().max() <= math.pi / 6 + 1e-12 and alpha.abs().max() > math.pi / 6 - 0.01
    # without rotation: diagonal only, each entry in [0.5, 1.5]
    diag = random_affine_theta(100, torch.Generator().manual_seed(13), rotation=0.0, translation=0.0)
    assert (diag[:, [1, 2, 3, 5]] == 0).all() and diag[:, [0, 4]].min() >= 0.5 and diag[:, [0, 4]].max() <= 1.5
    # reproducible, and the same draws in every dtype
    again = random_affine_theta(4000, torch.Generator().manual_seed(11), dtype=torch.float64)
    assert torch.equal(theta, again)
    fp32 = random_affine_theta(4000, torch.Generator().manual_seed(11))
    assert fp32.dtype == torch.float32 and torch.equal(fp32, theta.float())
    assert not torch.equal(theta, random_affine_theta(4000, torch.Generator().manual_seed(14), dtype=torch.float64))


def test_random_tps_ranges_and_reproducible():
    theta = random_tps_theta(2000, torch.Generator().manual_seed(15), dtype=torch.float64)
    noise = theta - identity_theta("tps", dtype=torch.float64)
    assert noise.abs().max() <= 0.4 and noise.abs().max() > 0.39
    assert abs(noise.mean().item()) < 0.01
    assert torch.equal(theta, random_tps_theta(2000, torch.Generator().manual_seed(15), dtype=torch.float64))
    small = random_tps_theta(10, torch.Generator().manual_seed(15), noise=0.1, dtype=torch.float64)
    torch.testing.assert_close(small - identity_theta("tps", dtype=torch.float64), noise[:10] / 4, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------
# Synthetic pairs


def test_mirror_pad_is_numpy_symmetric():
    image = torch.rand(2, 3, 7, 10, generator=torch.Generator().manual_seed(16))
    ref = np.pad(image.numpy(), ((0, 0), (0, 0), (3, 3), (5, 5)), mode="symmetric")
    np.testing.assert_array_equal(mirror_pad(image, 0.5).numpy(), ref)


@pytest.mark.parametrize("kind", ["affine", "tps"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_synthetic_pair_identity_gives_equal_images(kind, dtype):
    image = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(17), dtype=torch.float64).to(dtype)
    source, target = synthetic_pair(image, identity_theta(kind, 2, dtype=dtype), output_size=(15, 17))
    assert source.shape == target.shape == (2, 3, 15, 17)
    torch.testing.assert_close(target, source, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_synthetic_pair_crop_and_warp_values():
    # a ramp image (value = 0-based column): bilinear sampling reproduces it exactly, and with odd
    # sizes the padded image is exactly twice the original pixel span around the same centre
    h, w, crop, tx = 9, 13, 9 / 16, 0.2
    image = torch.arange(w, dtype=torch.float64).expand(1, 3, h, w).contiguous()
    theta = torch.tensor([[1.0, 0.0, tx, 0.0, 1.0, 0.0]], dtype=torch.float64)
    source, target = synthetic_pair(image, theta, output_size=(5, 7), crop_factor=crop)
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    centre = (w - 1) / 2
    torch.testing.assert_close(source[0, 1, 2], centre + centre * crop * x, rtol=0, atol=1e-12)
    # theta maps target points to source points in the crop's normalised coordinates
    torch.testing.assert_close(target[0, 1, 2], centre + centre * crop * (x + tx), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Argument checks


def test_bad_theta_and_points():
    points = torch.zeros(2, 2, 5)
    with pytest.raises(ValueError, match=r"theta: expected last dimension 6 \(affine\) or 18 \(tps\), got 7"):
        transform_points(torch.zeros(2, 7), points)
    with pytest.raises(ValueError, match=r"theta: expected a 2-D tensor \(B, P\).*got 1-D"):
        transform_points(torch.zeros(6), points)
    with pytest.raises(ValueError, match=r"theta: expected a 2-D tensor \(B, P\).*got 3-D with shape \(2, 3, 2\)"):
        transform_points(torch.zeros(2, 3, 2), points)
    with pytest.raises(ValueError, match=r"points: expected batch size \(that of theta\) \(dim 0\) = 3, got 2"):
        transform_points(identity_theta("affine", 3), points)
    with pytest.raises(ValueError, match=r"points: expected a 3-D tensor, got 2-D"):
        transform_points(identity_theta("tps", 2), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"points: expected coordinates \(x, y\) \(dim 1\) = 2, got 3"):
        transform_points(identity_theta("tps", 2), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"points: expected dtype torch.float64"):
        transform_points(identity_theta("affine", 2, dtype=torch.float64), points)
    with pytest.raises(ValueError, match=r"theta: expected a floating-point tensor"):
        transform_points(torch.zeros(2, 6, dtype=torch.long), points)
    with pytest.raises(ValueError, match=r"thetas\[1\]: expected last dimension"):
        compose_points([identity_theta("tps", 2), torch.zeros(2, 5)], points)
    with pytest.raises(ValueError, match=r"thetas: expected a non-empty sequence"):
        compose_points([], points)


def test_bad_grid_warp_and_pair_arguments():
    with pytest.raises(ValueError, match=r"theta: expected last dimension 6 \(affine\), got 18"):
        affine_grid(identity_theta("tps"), (4, 4))
    with pytest.raises(ValueError, match=r"theta: expected a 2-D tensor \(B, P\) with P = 18 \(tps\), got 3-D"):
        tps_grid(identity_theta("affine").view(1, 2, 3), (4, 4))
    with pytest.raises(ValueError, match=r"size: expected an int or a pair"):
        affine_grid(identity_theta("affine"), (1, 4, 4))
    with pytest.raises(ValueError, match=r"image: expected a 4-D tensor, got 3-D"):
        warp_image(torch.zeros(3, 4, 4), identity_theta("affine"))
    with pytest.raises(ValueError, match=r"theta: expected batch size \(that of image\) \(dim 0\) = 2, got 1"):
        warp_image(torch.zeros(2, 3, 4, 4), identity_theta("affine"))
    with pytest.raises(ValueError, match=r"padding_factor: expected a number in \(0, 1.0\]"):
        synthetic_pair(torch.zeros(1, 3, 8, 8), identity_theta("affine"), padding_factor=1.5)
    with pytest.raises(ValueError, match=r"kind: expected one of \['affine', 'tps'\], got 'homography'"):
        identity_theta("homography")
    with pytest.raises(ValueError, match=r"batch_size: expected an int >= 0, got -1"):
        random_affine_theta(-1)


def test_bad_pixel_arguments():
    points = torch.ones(2, 2, 3)
    with pytest.raises(ValueError, match=r"size: expected image sizes >= 2 pixels"):
        pixels_to_normalized(points, (1, 5))
    with pytest.raises(ValueError, match=r"size: expected batch size 2 \(that of points\) or 1, got 3"):
        pixels_to_normalized(points, torch.full((3, 2), 5))
    with pytest.raises(ValueError, match=r"valid: expected a bool tensor of shape \(B, N\) = \(2, 3\)"):
        normalized_to_pixels(points, (5, 5), valid=torch.ones(2, 4, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# Polygons


def test_polygon_to_mask_hand_cases():
    square = geometry.polygon_to_mask([0.5, 3.5, 3.5, 0.5], [0.5, 0.5, 2.5, 2.5], (4, 5))
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[1:3, 1:4] = True
    assert torch.equal(square, expected)
    # integer vertices: the boundary pixels are in (skimage.draw.polygon's convention)
    rectangle = geometry.polygon_to_mask(torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([0.0, 0.0, 2.0, 2.0]), (4, 5))
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0:3, 1:4] = True
    assert torch.equal(rectangle, expected)
    # a polygon outside the image gives an empty mask
    assert not geometry.polygon_to_mask([10, 12, 11], [10, 10, 12], (4, 5)).any()
    with pytest.raises(ValueError, match="length >= 3"):
        geometry.polygon_to_mask([1, 2], [1, 2], (4, 5))


def test_polygon_to_mask_matches_skimage():
    draw = pytest.importorskip("skimage.draw")
    rng = np.random.default_rng(0)
    shapes = [(rng.uniform(-3, 25, n), rng.uniform(-3, 20, n)) for n in rng.integers(3, 12, 40)]
    shapes.append((np.array([2.0, 14.0, 8.0]), np.array([1.0, 3.0, 12.0])))  # integer vertices, convex
    shapes.append((np.array([0.0, 21.0, 21.0, 0.0]), np.array([0.0, 0.0, 16.0, 16.0])))
    for xs, ys in shapes:
        rr, cc = draw.polygon(ys, xs, (17, 22))
        expected = np.zeros((17, 22), dtype=bool)
        expected[rr, cc] = True
        assert np.array_equal(geometry.polygon_to_mask(xs, ys, (17, 22)).numpy(), expected)
