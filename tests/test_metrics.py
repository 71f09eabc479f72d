"""Evaluation metrics on hand-computed cases: keypoint PCK and reference lengths, dense flows,
the Caltech-101 mask metrics and the PCK of synthetic pairs."""

import math

import numpy as np
import pytest
import torch

from a2net import geometry, metrics

DTYPES = [torch.float32, torch.float64]


def nan_equal(out, expected):
    expected = torch.as_tensor(expected, dtype=out.dtype)
    return bool(torch.equal(torch.isnan(out), torch.isnan(expected))) and torch.allclose(
        out.nan_to_num(-7.0), expected.nan_to_num(-7.0), rtol=1e-6, atol=1e-12
    )


# --------------------------------------------------------------------------------------------
# PCK


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pck_padding_half_right_and_empty(dtype):
    # L = 20, alpha = 0.1: a keypoint is right within 2 pixels.
    target = torch.tensor(
        [
            [[10, 20, -1, -1], [10, 20, -1, -1]],  # 2 valid, 2 padded
            [[5, 6, 7, 50], [5, 6, 7, 50]],  # 4 valid
            [[-1, -1, -1, -1], [-1, -1, -1, -1]],  # none valid
        ],
        dtype=dtype,
    )
    predicted = torch.tensor(
        [
            [[10, 20, 900, 900], [11, 25, 900, 900]],  # 1 px off (right), 5 px off (wrong); padding ignored
            [[5, 8, -1, 52], [7, 8, -1, 50]],  # exactly 2 (right), 2*sqrt2 (wrong), left the image (wrong), 2 (right)
            [[0, 0, 0, 0], [0, 0, 0, 0]],
        ],
        dtype=dtype,
    )
    out = metrics.pck(predicted, target, torch.tensor([20.0, 20.0, 20.0], dtype=dtype), alpha=0.1)
    assert out.dtype == dtype
    assert nan_equal(out, [0.5, 0.5, float("nan")])
    # one number for all pairs; alpha 0.25 (5 px) makes the 5 px and 2*sqrt2 px errors right
    assert nan_equal(metrics.pck(predicted, target, 20.0, alpha=0.25), [1.0, 0.75, float("nan")])


def test_pck_nan_prediction_is_wrong():
    target = torch.tensor([[[1.0, 2.0], [1.0, 2.0]]])
    predicted = torch.tensor([[[float("nan"), 2.0], [1.0, 2.0]]])
    assert nan_equal(metrics.pck(predicted, target, torch.tensor([10.0])), [0.5])


def test_pck_argument_errors():
    points = torch.zeros(2, 2, 3)
    with pytest.raises(ValueError, match="target: expected shape"):
        metrics.pck(points, torch.zeros(2, 2, 4), 1.0)
    with pytest.raises(ValueError, match=r"reference_length: .*B = 2"):
        metrics.pck(points, points, torch.ones(3))
    with pytest.raises(ValueError, match="alpha"):
        metrics.pck(points, points, 1.0, alpha=0)
    with pytest.raises(ValueError, match="target: expected dtype"):
        metrics.pck(points, points.double(), 1.0)


# --------------------------------------------------------------------------------------------
# Reference lengths


def test_reference_length_bbox_and_image():
    bbox = torch.tensor([[0.0, 0.0, 10.0, 4.0], [5.0, 5.0, 8.0, 20.0]])
    assert torch.equal(metrics.reference_length("bbox", bbox=bbox), torch.tensor([10.0, 15.0]))
    sizes = torch.tensor([[480, 640], [500, 300]])
    out = metrics.reference_length("image", image_size=sizes)
    assert out.dtype == torch.float64 and out.tolist() == [640.0, 500.0]
    assert metrics.reference_length("image", image_size=(240, 180)).tolist() == [240.0]


def test_reference_length_keypoints_ignores_padding():
    keypoints = torch.tensor(
        [
            [[5.0, 25.0, -1.0], [10.0, 15.0, -1.0]],  # valid box 20 x 5; with the pad it would be 26
            [[3.0, 4.0, 30.0], [1.0, 40.0, 2.0]],  # all valid: max(27, 39)
            [[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]],  # nothing valid
        ]
    )
    out = metrics.reference_length("keypoints", keypoints=keypoints)
    assert nan_equal(out, [20.0, 39.0, float("nan")])


def test_reference_length_errors():
    with pytest.raises(ValueError, match="bbox: required for kind 'bbox'"):
        metrics.reference_length("bbox", keypoints=torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="kind: expected one of"):
        metrics.reference_length("object")
    with pytest.raises(ValueError, match="bbox: expected box coordinates"):
        metrics.reference_length("bbox", bbox=torch.zeros(2, 3))


# --------------------------------------------------------------------------------------------
# Flow


def test_theta_to_flow_identity_translation_and_scale():
    identity = geometry.identity_theta("affine", 2, dtype=torch.float64)
    assert torch.equal(metrics.theta_to_flow(identity, (3, 5)), torch.zeros(2, 2, 3, 5, dtype=torch.float64))
    tps = geometry.identity_theta("tps", 1, dtype=torch.float64)
    assert metrics.theta_to_flow(tps, (4, 3)).abs().max() < 1e-12
    # tx = 0.5, ty = -1 in normalised units: W = 5 -> +1 px in x, H = 3 -> -1 px in y
    shift = torch.tensor([[1.0, 0.0, 0.5, 0.0, 1.0, -1.0]], dtype=torch.float64)
    flow = metrics.theta_to_flow(shift, (3, 5))
    assert torch.allclose(flow[0, 0], torch.ones(3, 5, dtype=torch.float64))
    assert torch.allclose(flow[0, 1], -torch.ones(3, 5, dtype=torch.float64))
    # identity onto a source twice as large (5 x 9): target pixel x (0-based) sits at 2x in the source
    flow = metrics.theta_to_flow(identity[:1], (3, 5), source_size=(5, 9))
    xs = torch.arange(5, dtype=torch.float64)
    assert torch.allclose(flow[0, 0], xs.expand(3, 5))
    assert torch.allclose(flow[0, 1], torch.arange(3, dtype=torch.float64)[:, None].expand(3, 5))


def test_theta_to_flow_matches_warp_image():
    """The flow points where warp_image samples: warping a ramp image I(x, y) = x (source pixels)
    gives the source x of every target pixel, i.e. target x + flow_x."""
    theta = torch.tensor([[0.8, 0.1, 0.05, -0.08, 0.7, 0.02]], dtype=torch.float64)  # stays inside the source
    hs, ws, ht, wt = 9, 11, 7, 6
    ys, xs = torch.meshgrid(torch.arange(hs, dtype=torch.float64), torch.arange(ws, dtype=torch.float64), indexing="ij")
    ramp = torch.stack((xs, ys)).unsqueeze(0)  # (1, 2, Hs, Ws)
    warped = geometry.warp_image(ramp, theta, (ht, wt))
    flow = metrics.theta_to_flow(theta, (ht, wt), source_size=(hs, ws))
    yt, xt = torch.meshgrid(torch.arange(ht, dtype=torch.float64), torch.arange(wt, dtype=torch.float64), indexing="ij")
    assert torch.allclose(warped[0, 0], xt + flow[0, 0], atol=1e-9)
    assert torch.allclose(warped[0, 1], yt + flow[0, 1], atol=1e-9)


def test_theta_to_flow_two_stage_matches_compose_points():
    aff = torch.tensor([[1.0, 0.1, 0.2, 0.0, 0.9, -0.1]], dtype=torch.float64)
    tps = geometry.identity_theta("tps", 1, dtype=torch.float64) + 0.05
    two = metrics.theta_to_flow([tps, aff], (4, 6))
    grid = torch.stack(torch.meshgrid(torch.arange(1.0, 5.0), torch.arange(1.0, 7.0), indexing="ij")[::-1])
    grid = grid.double().reshape(1, 2, -1)
    moved = geometry.compose_points([tps, aff], geometry.pixels_to_normalized(grid, (4, 6)))
    expected = (geometry.normalized_to_pixels(moved, (4, 6)) - grid).reshape(1, 2, 4, 6)
    assert torch.allclose(two, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flow_pck_hand_made(dtype):
    # H = 2, W = 4: L = max(H, W) = 4, alpha = 0.25 -> threshold 1 pixel.
    gt = torch.zeros(2, 2, 2, 4, dtype=dtype)
    pred = torch.zeros(2, 2, 2, 4, dtype=dtype)
    pred[0, 0, 0] = torch.tensor([0.0, 1.0, 1.5, 3.0])  # errors 0, 1 (right, on the threshold), 1.5, 3
    pred[0, 1, 1, 0] = -1.0  # error exactly 1 in y: right
    pred[0, 0, 1, 1] = float("nan")  # a NaN prediction is wrong
    gt[0, :, 1, 2] = 1e10  # unknown ground truth: not evaluated
    mask = torch.ones(2, 2, 4, dtype=torch.bool)
    mask[0, 1, 3] = False  # background: not evaluated
    mask[1] = False  # pair 1: nothing to evaluate
    out = metrics.flow_pck(pred, gt, mask, alpha=0.25)
    # pair 0 evaluates 8 - 2 = 6 pixels: (0,0) (0,1) (1,0) right; (0,2) (0,3) (1,1) wrong
    assert out.dtype == dtype
    assert nan_equal(out, [0.5, float("nan")])
    # without a mask every known pixel counts: pixel (1, 3) has error 0 -> 4 right of 7
    assert nan_equal(metrics.flow_pck(pred[:1], gt[:1], None, alpha=0.25), [4 / 7])
    # a given L: 8 -> threshold 2 lets the 1.5 error pass
    assert nan_equal(metrics.flow_pck(pred[:1], gt[:1], mask[:1], alpha=0.25, reference_length=8.0), [4 / 6])


def test_flow_pck_of_an_exact_prediction_is_one():
    theta = torch.tensor([[1.1, 0.0, 0.1, 0.05, 0.9, -0.2]], dtype=torch.float64)
    flow = metrics.theta_to_flow(theta, (6, 8), source_size=(7, 5))
    mask = torch.zeros(1, 6, 8, dtype=torch.bool)
    mask[:, 1:4, 2:7] = True
    assert metrics.flow_pck(flow, flow.clone(), mask).tolist() == [1.0]


def test_flow_pck_argument_errors():
    flow = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"mask: expected shape \(B, H, W\)"):
        metrics.flow_pck(flow, flow, torch.ones(1, 4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="flow_gt: expected shape"):
        metrics.flow_pck(flow, torch.zeros(1, 2, 3, 5))


# --------------------------------------------------------------------------------------------
# Masks


def test_label_transfer_accuracy_and_iou_tiny_masks():
    warped = torch.tensor([[[1, 1, 0], [0, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    target = torch.tensor([[[1, 0, 0], [1, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    assert metrics.label_transfer_accuracy(warped, target).tolist() == [7 / 9]
    assert metrics.mask_iou(warped, target).tolist() == [1 / 3]
    # numbers: foreground above 0.5 (a bilinearly warped mask)
    soft = warped.double() * 0.4
    soft[0, 0, :2] += torch.tensor([0.3, 0.05], dtype=torch.float64)  # 0.7, 0.45
    assert metrics.label_transfer_accuracy(soft, target.float()).tolist() == [8 / 9]  # only (0, 0) > 0.5
    assert metrics.mask_iou(soft, target.float()).tolist() == [1 / 2]
    empty = torch.zeros(1, 3, 3, dtype=torch.bool)
    assert metrics.label_transfer_accuracy(empty, empty).tolist() == [1.0]
    assert math.isnan(metrics.mask_iou(empty, empty).item())
    with pytest.raises(ValueError, match="target_mask: expected shape"):
        metrics.mask_iou(warped, torch.zeros(1, 3, 4, dtype=torch.bool))


def box_mask(height, width, rows, cols):
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[0, rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


def naive_localization_error(flow, source, target):
    """The definition, pixel by pixel (one pair)."""

    def frame(mask):
        ys, xs = np.nonzero(mask)
        return xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1

    lt, tt, wt, ht = frame(target)
    ls, ts, ws, hs = frame(source)
    errors = []
    for y in range(target.shape[0]):
        for x in range(target.shape[1]):
            qx, qy = x + flow[0, y, x], y + flow[1, y, x]
            if 0 <= qx <= source.shape[1] - 1 and 0 <= qy <= source.shape[0] - 1:
                errors.append(abs((x - lt) / wt - (qx - ls) / ws) + abs((y - tt) / ht - (qy - ts) / hs))
    return float(np.mean(errors))


def test_localization_error_identity_and_known_shift():
    target = box_mask(6, 10, rows=(1, 3), cols=(2, 5))  # box 4 wide, 3 high
    zero = torch.zeros(1, 2, 6, 10, dtype=torch.float64)
    assert metrics.localization_error(zero, target, target).tolist() == [0.0]
    # the source object is the target's moved 3 px right, and the flow says so: error 0
    moved = box_mask(6, 10, rows=(1, 3), cols=(5, 8))
    shift = zero.clone()
    shift[:, 0] = 3.0
    assert metrics.localization_error(shift, moved, target).tolist() == [0.0]
    # same flow onto an unmoved object: every in-bound pixel is off by 3 / 4 of the box width
    assert metrics.localization_error(shift, target, target).tolist() == [0.75]
    # plus one row down: + 1 / 3 of the box height (pixels mapping below the image are skipped)
    shift[:, 1] = 1.0
    assert metrics.localization_error(shift, target, target).item() == pytest.approx(0.75 + 1 / 3)


def test_localization_error_matches_the_definition_on_random_flows():
    generator = torch.Generator().manual_seed(0)
    target = box_mask(7, 9, rows=(2, 5), cols=(1, 6))
    source = box_mask(8, 6, rows=(0, 6), cols=(2, 4))
    flow = (torch.rand(2, 2, 7, 9, generator=generator, dtype=torch.float64) - 0.5) * 8
    out = metrics.localization_error(flow, source.expand(2, -1, -1), target.expand(2, -1, -1))
    for b in range(2):
        expected = naive_localization_error(flow[b].numpy(), source[0].numpy(), target[0].numpy())
        assert out[b].item() == pytest.approx(expected)


def test_localization_error_empty_mask_is_nan():
    target = box_mask(4, 4, rows=(1, 2), cols=(1, 2))
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    flow = torch.zeros(1, 2, 4, 4)
    assert math.isnan(metrics.localization_error(flow, empty, target).item())
    with pytest.raises(ValueError, match="target_mask: expected shape"):
        metrics.localization_error(flow, target, torch.zeros(1, 4, 5, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# Held-out synthetic pairs


def test_synthetic_pck_values():
    theta = geometry.identity_theta("affine", 2)
    shifted = theta.clone()
    # a shift of 0.1 normalised units = 0.1 * (W - 1) / 2 = 4.95 px on a 100 px image
    shifted[0, 2] = 0.1
    shifted[1, 2] = 0.3  # 14.85 px
    result = metrics.synthetic_pck(shifted, theta, 100, alpha=0.1)  # tolerance 10 px
    assert result.tolist() == [1.0, 0.0]
    assert metrics.synthetic_pck(shifted, theta, 100, alpha=0.15).tolist() == [1.0, 1.0]
    # half of the grid points move by 20 px: a rotation-free x flip about the centre column
    flip = torch.tensor([[-1.0, 0, 0, 0, 1, 0]], dtype=torch.float64)
    value = metrics.synthetic_pck(flip, geometry.identity_theta("affine", 1, dtype=torch.float64), 101, grid_size=3)
    assert value.item() == pytest.approx(3 / 9)  # only the centre column stays
    # points mapped outside the image still count (no padding rule)
    far = geometry.identity_theta("affine", 1)
    far[0, 2] = 5.0
    assert metrics.synthetic_pck(far, far, 50).item() == 1.0
    with pytest.raises(ValueError, match="theta_true: expected batch size 2"):
        metrics.synthetic_pck(theta, geometry.identity_theta("tps", 3), 10)
    # Any kind of prediction, and chains (affine+TPS): the identity TPS after theta is theta.
    identity_tps = geometry.identity_theta("tps", 2)
    assert metrics.synthetic_pck([identity_tps, theta], theta, 10).tolist() == [1.0, 1.0]
    torch.testing.assert_close(
        metrics.synthetic_pck(identity_tps, theta, 10),
        metrics.synthetic_pck(geometry.identity_theta("affine", 2), theta, 10),
    )
    assert metrics.synthetic_pck(theta, theta, (20, 30), grid_size=1).tolist() == [1.0, 1.0]
