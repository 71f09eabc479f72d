"""The inference options of a2net.inference: affine composition and inverse, composed passes (the
identity stays the identity; a known warp is recovered better with more passes), feature reuse and
the symmetric estimate, photometric refinement, the defaults a checkpoint names, and their plumbing
through predict_chain, align and the evaluations."""

import pytest
import torch

from a2net import A2Net, TwoStageAligner, geometry, inference, synthetic
from a2net.alignment import align
from a2net.errors import InputError
from a2net.model import normalize_images
from tests.test_evaluate import SIZE, TinyBackbone, tiny

THETA = [0.9, 0.1, 0.05, -0.08, 1.1, -0.1]


def textured(h=64, w=80, seed=0):
    """A smooth random texture ``(1, 3, h, w)`` (low-pass noise: Lucas-Kanade's linearisation holds)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True).clamp(0, 1)


def test_compose_and_invert_affine_match_point_mapping():
    g = torch.Generator().manual_seed(0)
    outer = geometry.random_affine_theta(4, g, dtype=torch.float64)
    inner = geometry.random_affine_theta(4, g, dtype=torch.float64)
    points = torch.rand(4, 2, 7, generator=g, dtype=torch.float64) * 2 - 1
    composed = geometry.compose_affine(outer, inner)
    torch.testing.assert_close(
        geometry.transform_points(composed, points), geometry.compose_points([inner, outer], points)
    )
    identity = geometry.identity_theta("affine", 4, dtype=torch.float64)
    torch.testing.assert_close(geometry.compose_affine(outer, geometry.invert_affine(outer)), identity)
    torch.testing.assert_close(geometry.compose_affine(geometry.invert_affine(outer), outer), identity)
    with pytest.raises(ValueError, match="inner"):
        geometry.compose_affine(outer, inner[:2])


class Oracle(torch.nn.Module):
    """A stand-in network that estimates the remaining warp by ``steps`` Gauss-Newton steps from
    the identity: each pass recovers part of what is left."""

    def __init__(self, steps=1):
        super().__init__()
        self.steps = steps

    def forward(self, source, target):
        start = geometry.identity_theta("affine", source.shape[0], dtype=source.dtype)
        return inference.refine_affine(source, target, start, levels=1, steps=self.steps)


def test_iterations_of_an_identity_network_stay_identity():
    model = tiny(theta=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    image = torch.rand(2, 3, *SIZE)
    for iterations in (1, 3):
        theta = inference.iterate_affine(model, image, image, iterations)
        torch.testing.assert_close(theta, geometry.identity_theta("affine", 2))


def test_iterations_recover_a_known_warp_better():
    image = textured()
    truth = torch.tensor([[1.04, 0.03, 0.06, -0.02, 0.97, -0.05]])
    source, target = image, geometry.warp_image(image, truth)
    errors = []
    for iterations in (1, 2, 4):
        theta = inference.iterate_affine(Oracle(), source, target, iterations)
        errors.append(float(geometry.transformed_grid_loss(theta, truth)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1 * errors[0]


def test_a_fixed_theta_composes_with_itself():
    model = tiny(theta=THETA)
    image = torch.rand(1, 3, *SIZE)
    twice = inference.iterate_affine(model, image, image, 2)
    theta = torch.tensor([THETA])
    torch.testing.assert_close(twice, geometry.compose_affine(theta, theta))
    with pytest.raises(ValueError, match="iterations"):
        inference.iterate_affine(model, image, image, 0)
    with pytest.raises(ValueError, match="symmetric"):
        inference.iterate_affine(model, image, image, 1, symmetric=True)  # a stand-in has no head to run


@pytest.mark.parametrize("layout", ["geometric", "official"])
def test_feature_reuse_matches_the_forward_and_symmetric_averages_both_directions(layout):
    torch.manual_seed(0)
    model = A2Net("affine", backbone=TinyBackbone(), image_size=SIZE, oac_layout=layout).eval()
    g = torch.Generator().manual_seed(1)
    source, target = (normalize_images(torch.rand(2, 3, *SIZE, generator=g)) for _ in range(2))
    with torch.no_grad():
        forward = model(source, target)
        torch.testing.assert_close(inference.iterate_affine(model, source, target, 1), forward)
        reused = inference.regress(
            model, inference.network_features(model, source), inference.network_features(model, target)
        )
        torch.testing.assert_close(reused, forward)
        # theta(S, T) averaged with theta(T, S)^-1, one batch through the head
        symmetric = inference.iterate_affine(model, source, target, 1, symmetric=True)
        expected = 0.5 * (forward + geometry.invert_affine(model(target, source)))
        torch.testing.assert_close(symmetric, expected)


def test_the_symmetric_average_cancels_the_first_order_error_of_the_identity():
    # for one image twice, theta = I + eps E gives (theta + theta^-1) / 2 = I + O(eps^2)
    identity = geometry.identity_theta("affine", 1, dtype=torch.float64)
    error = torch.tensor([[0.3, -0.2, 0.5, 0.1, -0.4, 0.2]], dtype=torch.float64)
    for eps in (1e-2, 1e-3):
        theta = identity + eps * error
        averaged = 0.5 * (theta + geometry.invert_affine(theta))
        assert float((averaged - identity).abs().max()) < eps**2
        assert float((theta - identity).abs().max()) > 0.1 * eps


def test_photometric_refinement_keeps_identity_and_recovers_a_small_warp():
    image = textured(seed=2)
    identity = geometry.identity_theta("affine", 1)
    torch.testing.assert_close(inference.refine_affine(image, image, identity), identity, atol=1e-4, rtol=0)
    truth = torch.tensor([[1.05, -0.04, 0.08, 0.03, 0.96, -0.06]])
    target = geometry.warp_image(image, truth)
    refined = inference.refine_affine(image, target, identity)
    assert float(geometry.transformed_grid_loss(refined, truth)) < 1e-2 * float(
        geometry.transformed_grid_loss(identity, truth)
    )
    # a refined theta that moves the image further than max_change from the estimate is not kept
    torch.testing.assert_close(inference.refine_affine(image, target, identity, max_change=1e-3), identity)


def test_inference_defaults_come_from_the_checkpoint_then_the_library():
    model = tiny()
    assert inference.inference_defaults(model) == inference.DEFAULT_INFERENCE
    model.checkpoint_state = {"inference": {"iterations": 3, "symmetric": True}}
    assert inference.inference_defaults(model) == {"iterations": 3, "symmetric": True, "refine": False}
    assert inference.inference_defaults(model, iterations=1, refine=True) == {
        "iterations": 1,
        "symmetric": True,
        "refine": True,
    }
    # the two-stage aligner takes its affine stage's
    assert inference.inference_defaults(TwoStageAligner(model, tiny("tps")))["iterations"] == 3
    with pytest.raises(InputError, match="iterations"):
        inference.inference_defaults(model, iterations=0)
    model.checkpoint_state = {"inference": {"refine": "yes"}}
    with pytest.raises(InputError, match="refine"):
        inference.inference_defaults(model)


def test_predict_chain_and_align_use_the_model_defaults_and_explicit_options():
    model = tiny(theta=THETA)
    source, target = torch.rand(3, 30, 40), torch.rand(3, 25, 35)
    theta = torch.tensor([THETA])
    assert torch.equal(align(source, target, model=model).theta, theta[0])
    twice = geometry.compose_affine(theta, theta)[0]
    torch.testing.assert_close(align(source, target, model=model, iterations=2).theta, twice)
    model.checkpoint_state = {"inference": {"iterations": 2}}
    torch.testing.assert_close(align(source, target, model=model).theta, twice)
    assert torch.equal(align(source, target, model=model, iterations=1).theta, theta[0])
    src, tgt = normalize_images(source[None], size=SIZE), normalize_images(target[None], size=SIZE)
    torch.testing.assert_close(inference.predict_chain(model, src, tgt, iterations=2)[0], twice[None])
    # affine+TPS: the affine stage iterates, the TPS stage runs once on the source it warped
    tps_theta = [x + 0.01 for x in geometry.TPS_CONTROL_X] + list(geometry.TPS_CONTROL_Y)
    two = TwoStageAligner(tiny(theta=THETA), tiny("tps", theta=tps_theta))
    chain = inference.predict_chain(two, src, tgt, iterations=2)
    torch.testing.assert_close(chain[1], twice[None])
    torch.testing.assert_close(chain[0], torch.tensor([tps_theta]))
    # a TPS model makes one plain pass whatever the options
    tps = tiny("tps", theta=tps_theta)
    torch.testing.assert_close(inference.predict_chain(tps, src, tgt, iterations=3)[0], torch.tensor([tps_theta]))


def test_evaluations_take_the_model_defaults_and_overrides():
    from a2net import evaluate

    pairs = synthetic.heldout_synthetic_pairs("affine", n_pairs=2, image_size=SIZE)
    model = tiny(theta=[1.0, 0.0, 0.05, 0.0, 1.0, 0.0])
    once = evaluate.evaluate_synthetic(model, pairs, progress=False)
    assert once["inference"] == inference.DEFAULT_INFERENCE
    model.checkpoint_state = {"inference": {"iterations": 3}}
    thrice = evaluate.evaluate_synthetic(model, pairs, progress=False)
    assert thrice["inference"]["iterations"] == 3 and thrice["metrics"] != once["metrics"]
    override = evaluate.evaluate_synthetic(model, pairs, progress=False, inference={"iterations": 1})
    assert override["inference"] == inference.DEFAULT_INFERENCE and override["metrics"] == once["metrics"]
