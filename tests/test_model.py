"""The A2Net model: every stage wired as in docs/design.md §2, both backbones, both geometric models."""

import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from a2net import A2Net, TwoStageAligner, normalize_images, reference
from a2net.images import bundled_image
from a2net.layers import fit_offset_weight


def bn(x, m: nn.BatchNorm2d):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def manual_theta(model: A2Net, src_img, tgt_img):
    """docs/design.md §2 stage by stage with functional calls and the reference ops (eval mode)."""
    fs = model.FeatureExtraction.model(src_img)
    ft = model.FeatureExtraction.model(tgt_img)
    if model.oac_layout == "official":
        fs = fs.transpose(2, 3)
    corr = reference.correlation(fs, ft)  # L2 norm, correlation, ReLU, match L2 norm
    head = model.FeatureRegression
    oac = head.preconv[0]
    hs, ws = fs.shape[2:]
    ht, wt = ft.shape[2:]
    weight = fit_offset_weight(oac.weight, (oac.source_size, oac.target_size), ((hs, ws), (ht, wt)))
    x = reference.offset_aware_correlation(corr, weight, oac.bias, (hs, ws))
    x = F.relu(bn(x, head.preconv[1]))
    x = F.relu(bn(F.conv2d(x, head.preconv[3].weight, head.preconv[3].bias), head.preconv[4]))
    encoded = x
    h, w = encoded.shape[2:]
    code = F.interpolate(head.weight, size=(h, w), mode="bilinear", align_corners=True)
    x = torch.cat([code.expand(x.shape[0], -1, h, w), x], 1)
    x = F.relu(bn(F.conv2d(x, head.conv[0].weight, head.conv[0].bias), head.conv[1]))
    values = F.relu(bn(F.conv2d(x, head.proj[0].weight, head.proj[0].bias), head.proj[1]))
    att = head.att.att
    a = F.relu(bn(F.conv2d(encoded, att[0].weight, att[0].bias), att[1]))
    logits = F.conv2d(a, att[3].weight, att[3].bias)
    p = torch.softmax(logits.flatten(1), 1)
    pooled = (p[:, None] * values.flatten(2)).sum(-1)
    return F.linear(pooled, head.linear.weight, head.linear.bias)


def randomize_batchnorm(model):
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


@pytest.fixture(scope="module")
def photos():
    src = bundled_image("chelsea")[None]
    tgt = bundled_image("coffee")[None]
    return src, tgt


@pytest.mark.parametrize("geometric_model", ["affine", "tps"])
@pytest.mark.parametrize("backbone", ["resnet101", "vgg16"])
def test_model_matches_stage_by_stage_computation(backbone, geometric_model, photos):
    torch.manual_seed(0)
    model = A2Net(geometric_model, backbone=backbone).eval()
    randomize_batchnorm(model.FeatureRegression)
    a, b = (normalize_images(p, size=(240, 240)) for p in photos)
    src, tgt = torch.cat([a, b]), torch.cat([b, a])
    with torch.no_grad():
        theta = model(src, tgt)
        expected = manual_theta(model, src, tgt)
    assert theta.shape == (2, 6 if geometric_model == "affine" else 18)
    torch.testing.assert_close(theta, expected, rtol=1e-4, atol=1e-5)
    assert model.FeatureRegression.oac.weight.shape == (128, 29, 29)
    assert model.FeatureRegression.weight.shape == (1, 5, 9, 9)
    assert not torch.allclose(theta[0], theta[1])  # depends on the inputs


@pytest.mark.parametrize(
    "backbone, size, feature", [("resnet101", (200, 280), (13, 18)), ("vgg16", (176, 250), (11, 15))]
)
def test_non_square_images(backbone, size, feature, photos):
    torch.manual_seed(1)
    model = A2Net("tps", backbone=backbone).eval()
    randomize_batchnorm(model.FeatureRegression)
    src = normalize_images(photos[0], size=size)
    tgt = normalize_images(photos[1], size=size)
    with torch.no_grad():
        assert tuple(model.features(src).shape[2:]) == feature
        theta = model(src, tgt)
        torch.testing.assert_close(theta, manual_theta(model, src, tgt), rtol=1e-4, atol=1e-5)
    # Built for that size: the OAC weight and the position code fit it exactly.
    built = A2Net("affine", backbone=backbone, image_size=size)
    fh, fw = feature
    assert built.FeatureRegression.oac.weight.shape == (128, 2 * fh - 1, 2 * fw - 1)
    assert built.FeatureRegression.weight.shape == (1, 5, fh - 6, fw - 6)


def test_official_layout_transposes_the_source_map(photos):
    torch.manual_seed(2)
    geometric = A2Net("affine", backbone="vgg16").eval()
    official = A2Net("affine", backbone="vgg16", oac_layout="official").eval()
    official.load_state_dict(geometric.state_dict())
    src = normalize_images(photos[0], size=(240, 240))
    tgt = normalize_images(photos[1], size=(240, 240))
    with torch.no_grad():
        a, b = geometric(src, tgt), official(src, tgt)
        torch.testing.assert_close(b, manual_theta(official, src, tgt), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, b)


def test_backbone_is_frozen_and_head_trains():
    torch.manual_seed(3)
    model = A2Net("affine", backbone="vgg16", image_size=(128, 128)).train()
    assert not model.FeatureExtraction.model.training
    src, tgt = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)
    model(src, tgt).square().sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.FeatureExtraction.parameters())
    head = dict(model.FeatureRegression.named_parameters())
    for name in ["preconv.0.weight", "preconv.0.bias", "weight", "att.att.0.weight", "linear.weight"]:
        assert head[name].grad is not None and head[name].grad.abs().sum() > 0, name


def test_fine_tuning_backbone():
    model = A2Net("affine", backbone="vgg16", image_size=(128, 128), freeze_backbone=False).train()
    model(torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)).sum().backward()
    assert model.FeatureExtraction.model[0].weight.grad is not None


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel_size=16, stride=16)

    def forward(self, x):
        return self.conv(x)


def test_custom_backbone_module():
    model = A2Net("affine", backbone=TinyBackbone(), image_size=(160, 192)).eval()
    assert model.FeatureRegression.oac.weight.shape == (128, 19, 23)
    with torch.no_grad():
        theta = model(torch.randn(1, 3, 160, 192), torch.randn(1, 3, 160, 192))
    assert theta.shape == (1, 6) and torch.isfinite(theta).all()
    assert model.config["backbone"] == "custom"


def test_backbone_weights_from_a_file(tmp_path):
    from torchvision.models import vgg16

    full = vgg16(weights=None)
    path = tmp_path / "vgg16_features.pth"
    torch.save(
        {f"model.{k}": v for k, v in nn.Sequential(*list(full.features.children())[:24]).state_dict().items()}, path
    )
    model = A2Net("affine", backbone="vgg16", backbone_weights=path)
    torch.testing.assert_close(model.FeatureExtraction.model[0].weight, full.features[0].weight)
    torch.save({"unrelated.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="backbone_weights: .* fits neither"):
        A2Net("affine", backbone="vgg16", backbone_weights=tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="backbone_weights: no such file"):
        A2Net("affine", backbone="vgg16", backbone_weights=tmp_path / "missing.pth")


def test_imagenet_weights_offline_says_what_to_do(monkeypatch):
    import torchvision

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.VGG16_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"pass the local file: backbone_weights="):
        A2Net("affine", backbone="vgg16", backbone_weights="imagenet")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"geometric_model": "homography"}, r"geometric_model: expected one of \['affine', 'tps'\], got 'homography'"),
        ({"backbone": "resnet50"}, r"backbone: expected one of"),
        ({"oac_layout": "transposed"}, r"oac_layout: expected one of"),
        ({"backbone": "vgg16", "image_size": (96, 96)}, r"feature_size: expected at least 7x7"),
        (
            {"backbone": "vgg16", "oac_layout": "official", "image_size": (240, 320)},
            r"oac_layout: 'official' needs square",
        ),
    ],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A2Net(**kwargs)


def test_bad_images():
    model = A2Net("affine", backbone=TinyBackbone(), image_size=(128, 128))
    with pytest.raises(ValueError, match=r"source_images: expected 3 channels"):
        model(torch.randn(1, 1, 128, 128), torch.randn(1, 3, 128, 128))
    with pytest.raises(ValueError, match=r"target_images: expected batch size 2"):
        model(torch.randn(2, 3, 128, 128), torch.randn(1, 3, 128, 128))
    with pytest.raises(ValueError, match=r"target_images: expected a 4-D tensor"):
        model(torch.randn(1, 3, 128, 128), torch.randn(3, 128, 128))


def test_two_stage_aligner_composes_affine_then_tps():
    from a2net import geometry

    torch.manual_seed(4)
    affine = A2Net("affine", backbone=TinyBackbone(), image_size=(160, 160)).eval()
    tps = A2Net("tps", backbone=TinyBackbone(), image_size=(160, 160)).eval()
    aligner = TwoStageAligner(affine, tps)
    src, tgt = torch.randn(2, 3, 160, 160), torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        theta_a, theta_t = aligner(src, tgt)
        torch.testing.assert_close(theta_a, affine(src, tgt))
        torch.testing.assert_close(theta_t, tps(geometry.warp_image(src, theta_a), tgt))
    points = torch.rand(2, 2, 5) * 2 - 1
    composed = TwoStageAligner.transform_points(theta_a, theta_t, points)
    torch.testing.assert_close(composed, geometry.transform_points(theta_a, geometry.transform_points(theta_t, points)))
    with pytest.raises(ValueError, match="expected an affine and a TPS model"):
        TwoStageAligner(tps, affine)


def test_normalize_images():
    x = torch.full((1, 3, 4, 6), 0.5)
    out = normalize_images(x)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 0, 0], expected)
    u8 = torch.full((1, 3, 4, 6), 255, dtype=torch.uint8)
    torch.testing.assert_close(
        normalize_images(u8, size=(2, 3))[0, :, 0, 0],
        (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]),
    )


@pytest.mark.parametrize(
    "use_oac, use_attention",
    [(False, False), (True, False), (False, True)],
    ids=["cnngeo", "oac-only", "attention-only"],
)
def test_ablation_heads(use_oac, use_attention):
    torch.manual_seed(5)
    model = A2Net(
        "affine", backbone=TinyBackbone(), image_size=(160, 176), use_oac=use_oac, use_attention=use_attention
    ).eval()
    head = model.FeatureRegression
    src, tgt = torch.randn(2, 3, 160, 176), torch.randn(2, 3, 160, 176)
    with torch.no_grad():
        theta = model(src, tgt)
        corr = model.FeatureCorrelation(model.features(src), model.features(tgt))
        if use_oac:
            x = reference.offset_aware_correlation(corr, head.oac.weight, head.oac.bias, (10, 11))
        else:
            x = F.conv2d(corr, head.preconv[0].weight, head.preconv[0].bias)
            assert head.preconv[0].weight.shape == (128, 110, 1, 1)
        encoded = head.preconv[1:](x)
        values = head.proj(head.conv(torch.cat([head.weight.expand(2, -1, 4, 5), encoded], 1)))
        pooled = head.att(encoded, values) if use_attention else values.flatten(1)
        torch.testing.assert_close(theta, head.linear(pooled))
    assert model.config["use_oac"] is use_oac and model.config["use_attention"] is use_attention
    with pytest.raises(ValueError, match="fixes the size"):
        model(torch.randn(1, 3, 192, 192), torch.randn(1, 3, 192, 192))


def test_fused_and_unfused_paths_agree_on_the_triton_kernels(triton_backend):
    """A2Net's default fused correlation+OAC op and the two unfused ops give the same theta and grads."""
    torch.manual_seed(6)
    fused = A2Net("affine", backbone=TinyBackbone(), image_size=(128, 144), input_precision="ieee").eval()
    unfused = A2Net(
        "affine", backbone=TinyBackbone(), image_size=(128, 144), input_precision="ieee", fused=False
    ).eval()
    unfused.load_state_dict(fused.state_dict())
    assert fused.fused and not unfused.fused
    src, tgt = torch.randn(2, 3, 128, 144), torch.randn(2, 3, 128, 144)
    thetas, grads = [], []
    for model in (fused, unfused):
        theta = model(src, tgt)
        thetas.append(theta.detach())
        grads.append(torch.autograd.grad(theta.square().sum(), model.FeatureRegression.oac.weight)[0])
    torch.testing.assert_close(thetas[0], thetas[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
