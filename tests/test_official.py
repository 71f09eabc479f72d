"""The authors' published checkpoints: safe loading, key mapping, conversion, and their forward.

The checkpoints here are written in the authors' exact format from random weights: their
state_dict names and shapes (the OAC as a ``(128, 841, 1, 1)`` convolution, the 5x9x9 position
code), no BatchNorm ``num_batches_tracked``, an ``argparse.Namespace`` under ``args``, a numpy
scalar ``best_test_loss``, storages tagged ``cuda:0`` (they trained on GPUs), PyTorch's legacy
serialisation. The reference is a re-implementation of the authors' forward written from
docs/design.md §2 and §3.3 (their column-major source flattening and their scatter loop, the
construction written once in :mod:`a2net.official`, then a 1x1 convolution over the 841 offsets),
independent of the library's model.
"""

import argparse
import collections
import json
import os
import pickle
import shlex
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from a2net import cli, normalize_images, official
from a2net.checkpoint import load_model
from a2net.images import bundled_image

HEAD_CHANNELS, OFFSETS = 128, 29 * 29
VGG16_POOL4 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]


# --------------------------------------------------------------------------------------------
# The authors' forward, from docs/design.md §2 and §3.3


def l2norm(x):
    return x / torch.sqrt((x * x).sum(1, keepdim=True) + 1e-6)


def authors_theta(state, feature_a, feature_b, calibrate=False):
    """Their head on backbone features, with their state_dict's names and shapes.

    ``calibrate``: first set every BatchNorm's running statistics to this batch's (in place), as a
    trained network's would be, so that theta depends visibly on the images.
    """

    def p(name):
        return state["FeatureRegression." + name]

    def conv(x, name):
        return F.conv2d(x, p(name + ".weight"), p(name + ".bias"))

    def bn_relu(x, name, relu=True):
        if calibrate:
            p(name + ".running_mean").copy_(x.mean((0, 2, 3)))
            p(name + ".running_var").copy_(x.var((0, 2, 3)))
        x = F.batch_norm(
            x,
            p(name + ".running_mean"),
            p(name + ".running_var"),
            p(name + ".weight"),
            p(name + ".bias"),
            False,
            0.0,
            1e-5,
        )
        return F.relu(x) if relu else x

    corr = l2norm(F.relu(official.authors_correlation(l2norm(feature_a), l2norm(feature_b))))
    x = bn_relu(conv(official.authors_correlation_align(corr), "preconv.0"), "preconv.1")
    encoded = bn_relu(conv(x, "preconv.3"), "preconv.4")
    b, _, h, w = encoded.shape
    x = torch.cat((p("weight").expand(b, 5, h, w), encoded), 1)  # the position code comes first
    values = bn_relu(conv(bn_relu(conv(x, "conv.0"), "conv.1"), "proj.0"), "proj.1")
    logits = conv(bn_relu(conv(encoded, "att.att.0"), "att.att.1"), "att.att.3")
    weights = torch.softmax(logits.view(b, h * w), 1).view(b, 1, h, w)
    pooled = (weights * values).sum(3).sum(2)
    return F.linear(pooled, p("linear.weight"), p("linear.bias"))


# --------------------------------------------------------------------------------------------
# Checkpoints in the authors' format


def authors_backbone(name, seed, images):
    """Their FeatureExtraction.model: VGG-16 to pool4 or ResNet-101 to layer3, random weights.

    Calibrated on ``images`` (BatchNorm statistics, or VGG's conv weights and biases scaled and
    shifted to zero-mean unit-variance outputs) as trained weights would be: a random deep network
    otherwise gives nearly the same features for every image.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "resnet101":
            r = torchvision.models.resnet101(weights=None)
            model = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
        else:
            layers, previous = [], 3
            for v in VGG16_POOL4:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(previous, v, 3, padding=1), nn.ReLU(inplace=True)]
                    previous = v
            model = nn.Sequential(*layers)
    with torch.no_grad():
        if name == "resnet101":
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None  # a cumulative average: one batch sets the statistics to its own
            model.train()(images)
        else:
            x = images
            for m in model:
                if isinstance(m, nn.Conv2d):
                    y = m(x)
                    std = y.std((0, 2, 3))
                    m.weight /= std.view(-1, 1, 1, 1)
                    m.bias.copy_(-y.mean((0, 2, 3)) / std)
                x = m(x)
    return model.eval()


def authors_head_state(output_dim, seed):
    g = torch.Generator().manual_seed(seed)

    def uniform(shape, bound):
        return (torch.rand(shape, generator=g) * 2 - 1) * bound

    state = {}

    def conv(name, out_ch, in_ch, k):
        bound = (in_ch * k * k) ** -0.5  # PyTorch's default initialisation
        state[f"{name}.weight"], state[f"{name}.bias"] = uniform((out_ch, in_ch, k, k), bound), uniform(out_ch, bound)

    def bn(name, ch):
        state[f"{name}.weight"] = 1 + uniform(ch, 0.2)
        state[f"{name}.bias"] = uniform(ch, 0.1)
        state[f"{name}.running_mean"], state[f"{name}.running_var"] = torch.zeros(ch), torch.ones(ch)

    conv("preconv.0", HEAD_CHANNELS, OFFSETS, 1)
    bn("preconv.1", HEAD_CHANNELS)
    conv("preconv.3", HEAD_CHANNELS, HEAD_CHANNELS, 7)
    bn("preconv.4", HEAD_CHANNELS)
    conv("conv.0", HEAD_CHANNELS, HEAD_CHANNELS + 5, 1)
    bn("conv.1", HEAD_CHANNELS)
    conv("proj.0", HEAD_CHANNELS, HEAD_CHANNELS, 1)
    bn("proj.1", HEAD_CHANNELS)
    conv("att.att.0", 64, HEAD_CHANNELS, 1)
    bn("att.att.1", 64)
    conv("att.att.3", 1, 64, 1)
    state["linear.weight"] = uniform((output_dim, HEAD_CHANNELS), HEAD_CHANNELS**-0.5)
    state["linear.bias"] = uniform(output_dim, HEAD_CHANNELS**-0.5)
    state["weight"] = uniform((1, 5, 9, 9), 1.0)
    return {"FeatureRegression." + k: v for k, v in state.items()}


def save_authors_checkpoint(path, state_dict, args=None, zip_format=False, **entries):
    """``torch.save`` as the authors' training script did (on GPU, PyTorch 0.3/0.4 era)."""
    checkpoint = {
        "epoch": 50,
        "args": args,
        "state_dict": state_dict,
        "best_test_loss": np.float32(0.0123),
        "optimizer": {
            "state": {},
            "param_groups": [
                {"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "params": [140210000000000]}
            ],
        },
        **entries,
    }
    # Their storages say cuda:0: loading must map them to the CPU.
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    return path


def training_args(geometric_model, backbone):
    return argparse.Namespace(
        geometric_model=geometric_model,
        feature_extraction_cnn=backbone.replace("16", ""),
        lr=0.0002,
        num_epochs=50,
        batch_size=16,
        weight_decay=0,
        use_mse_loss=False,
        training_dataset="pascal",
        random_sample=True,
        trained_models_dir="trained_models",
    )


#: (backbone, geometric model, backbone key: 'model' or old 'vgg', zip serialisation)
CASES = [
    ("resnet101", "affine", "model", False),
    ("resnet101", "tps", "model", True),
    ("vgg16", "affine", "vgg", False),
    ("vgg16", "tps", "model", False),
]


def case_id(case):
    backbone, geometric_model, key, zip_format = case
    return f"{backbone}-{geometric_model}-{key}keys-{'zip' if zip_format else 'legacy'}"


@pytest.fixture(scope="module")
def images():
    """Source and target batches: (chelsea -> coffee) and (coffee -> chelsea), 240x240."""
    a, b = (normalize_images(bundled_image(name)[None], size=(240, 240)) for name in ("chelsea", "coffee"))
    return torch.cat([a, b]), torch.cat([b, a])


@pytest.fixture(scope="module")
def authors_files(tmp_path_factory, images):
    """``get(case) -> (checkpoint path, the authors' theta for images)``; backbones built once."""
    backbones, files = {}, {}
    root = tmp_path_factory.mktemp("official")

    def get(case):
        backbone, geometric_model, key, zip_format = case
        if backbone not in backbones:
            photos = torch.cat([images[0][:1], images[1][:1]])  # chelsea, coffee
            model = authors_backbone(backbone, seed=1, images=photos)
            with torch.no_grad():
                features = model(photos)
            source, target = features, features.flip(0)
            state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            backbones[backbone] = state, source, target
        if case not in files:
            state, source, target = backbones[backbone]
            head = authors_head_state(6 if geometric_model == "affine" else 18, seed=CASES.index(case) + 2)
            with torch.no_grad():
                authors_theta(head, source, target, calibrate=True)
                theta = authors_theta(head, source, target)
            state_dict = collections.OrderedDict(
                [(f"FeatureExtraction.{key}.{k}", v) for k, v in state.items()] + list(head.items())
            )
            path = save_authors_checkpoint(
                root / f"{case_id(case)}.pth.tar", state_dict, training_args(geometric_model, backbone), zip_format
            )
            files[case] = path, theta
        return files[case]

    return get


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_official_checkpoint_reproduces_authors_theta(case, authors_files, images):
    backbone, geometric_model, _, zip_format = case
    path, expected = authors_files(case)
    with open(path, "rb") as f:
        assert (f.read(2) == b"PK") == zip_format  # zip archive vs legacy pickle stream
    model = official.load_official_checkpoint(path)
    assert (model.geometric_model, model.FeatureExtraction.name, model.oac_layout) == (
        geometric_model,
        backbone,
        "official",
    )
    assert not model.training
    assert model.FeatureRegression.oac.weight.shape == (128, 29, 29)
    assert all(b.item() == 0 for n, b in model.named_buffers() if n.endswith("num_batches_tracked"))
    with torch.no_grad():
        theta = model(*images)
    assert theta.shape == (2, 6 if geometric_model == "affine" else 18)
    torch.testing.assert_close(theta, expected, rtol=0, atol=1e-5)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # theta depends on the images: 1000x the tolerance


def test_conversion_round_trip(authors_files, images, tmp_path, capsys):
    case = ("resnet101", "tps", "model", True)
    path, expected = authors_files(case)
    parser = argparse.ArgumentParser()
    cli._add_convert_official_arguments(parser)
    args = parser.parse_args([str(path), str(tmp_path / "converted"), "--geometric-model", "tps"])
    assert cli._run_convert_official(args) == 0
    assert "oac_layout='official'" in capsys.readouterr().out
    model = load_model(tmp_path / "converted")
    assert model.config["oac_layout"] == "official" and model.config["backbone"] == "resnet101"
    with torch.no_grad():
        theta = model(images[0][:1], images[1][:1])  # the first pair: half the backbone's time
    torch.testing.assert_close(theta, expected[:1], rtol=0, atol=1e-5)
    record = json.loads((tmp_path / "converted" / "state.json").read_text())["converted_from"]
    assert record["args"]["feature_extraction_cnn"] == "resnet101" and record["epoch"] == 50
    assert len(record["sha256"]) == 64 and record["path"] == str(path.resolve())


def tiny_state(geometric_model="affine", first_kernel=3):
    """Head weights plus the backbone's first convolution: enough to infer, not to load."""
    state = authors_head_state(6 if geometric_model == "affine" else 18, seed=0)
    state["FeatureExtraction.model.0.weight"] = torch.zeros(64, 3, first_kernel, first_kernel)
    return state


def test_reads_the_authors_entries(tmp_path):
    path = save_authors_checkpoint(tmp_path / "a.pth.tar", tiny_state(), training_args("affine", "vgg16"))
    assert b"cuda:0" in path.read_bytes()  # as saved on a GPU: torch.load needs map_location there
    checkpoint = official.read_official_checkpoint(path)
    assert checkpoint["args"]["feature_extraction_cnn"] == "vgg" and checkpoint["epoch"] == 50
    assert isinstance(checkpoint["best_test_loss"], np.float32)
    assert checkpoint["state_dict"]["FeatureRegression.weight"].device.type == "cpu"
    mapped = official.official_state_dict({"module." + k: v for k, v in checkpoint["state_dict"].items()})
    assert mapped["FeatureRegression.preconv.0.weight"].shape == (128, 29, 29)
    torch.testing.assert_close(
        mapped["FeatureRegression.preconv.0.weight"][:, 3, 5],
        checkpoint["state_dict"]["FeatureRegression.preconv.0.weight"][:, 3 * 29 + 5, 0, 0],
    )


def test_wrong_arguments_and_files(tmp_path):
    path = save_authors_checkpoint(tmp_path / "a.pth.tar", tiny_state(), training_args("affine", "vgg16"))
    with pytest.raises(ValueError, match="geometric_model: got 'tps'.*'affine'"):
        official.load_official_checkpoint(path, geometric_model="tps")
    with pytest.raises(ValueError, match="backbone: got 'resnet101'.*'vgg16'"):
        official.load_official_checkpoint(path, backbone="resnet101")
    with pytest.raises(ValueError, match="does not fit.*missing.*FeatureExtraction.model.0.bias"):
        official.load_official_checkpoint(path)  # only the first backbone weight is there
    with pytest.raises(FileNotFoundError):
        official.load_official_checkpoint(tmp_path / "missing.pth.tar")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        official.read_official_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="directory"):
        official.read_official_checkpoint(tmp_path)
    state = tiny_state()
    del state["FeatureRegression.preconv.0.weight"]
    torch.save({"state_dict": state}, tmp_path / "b.pth.tar")
    with pytest.raises(ValueError, match="no 'FeatureRegression.preconv.0.weight'"):
        official.load_official_checkpoint(tmp_path / "b.pth.tar")
    with pytest.raises(ValueError, match="geometric_model"):
        cli._run_convert_official(
            argparse.Namespace(src=str(path), dst=str(tmp_path / "out"), geometric_model="tps", backbone=None)
        )
    assert not (tmp_path / "out").exists()


def create_marker(path):
    Path(path).touch()


class ShellPayload:
    """Unpickles to ``os.system("touch MARKER")``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class CustomPayload:
    """Unpickles to a call of this test module's ``create_marker`` (a custom global)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return create_marker, (str(self.marker),)


@pytest.mark.parametrize(
    "payload, refused", [(ShellPayload, "system"), (CustomPayload, "create_marker")], ids=["os.system", "custom-global"]
)
@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_disallowed_global_is_refused_and_never_runs(payload, refused, zip_format, tmp_path):
    marker = tmp_path / "marker"
    path = save_authors_checkpoint(
        tmp_path / "evil.pth.tar", tiny_state(), training_args("affine", "vgg16"), zip_format, extra=payload(marker)
    )
    with pytest.raises(pickle.UnpicklingError, match=f"refused to load .*{refused}.*allow-list"):
        official.load_official_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        cli._run_convert_official(
            argparse.Namespace(src=str(path), dst=str(tmp_path / "out"), geometric_model=None, backbone=None)
        )
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # The payload is live: the unrestricted load that the loader never does creates the marker.
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()
