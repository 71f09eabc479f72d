"""Inputs are validated where they enter: images of every bit depth scaled correctly, float images
outside [0, 1] and NaN/inf tensors refused with the tensor named, non-finite thetas never passed
on as a figure or a score, benchmark files without pairs refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from a2net import align, benchmarks, checkpoint, evaluate, normalize_images
from a2net.errors import InputError, MissingExtraError, check_finite, require_extra
from a2net.images import check_image_file, load_image, to_tensor
from a2net.inference import as_image, input_size, predict_chain
from a2net.model import build_model
from tests.png16 import write_png16
from tests.test_benchmarks import write_csv, write_image

SMALL = {"geometric_model": "affine", "backbone": "small_cnn", "image_size": [112, 112]}


@pytest.fixture(scope="module")
def model():
    return build_model(SMALL, backbone_seed=0).eval()


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    gray = np.array([[0, 32768, 65535]], np.uint16).repeat(4, axis=0)
    write_png16(tmp_path / "gray16.png", gray)
    image = load_image(tmp_path / "gray16.png")
    assert image.shape == (3, 4, 3)
    torch.testing.assert_close(image[0, 0], torch.tensor([0.0, 32768 / 65535, 1.0]))  # not all white
    rgb = np.zeros((2, 3, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 257
    write_png16(tmp_path / "rgb16.png", rgb)
    torch.testing.assert_close(load_image(tmp_path / "rgb16.png")[:, 0, 0], torch.tensor([1.0, 128 / 255, 1 / 255]))
    # uint16 arrays and 16-bit PIL images given directly
    torch.testing.assert_close(to_tensor(gray)[0, 0], image[0, 0])
    with Image.open(tmp_path / "gray16.png") as pil:
        torch.testing.assert_close(as_image(pil)[0, 0], image[0, 0])
    assert check_image_file(tmp_path / "gray16.png") == (4, 3)


def test_float_images_must_be_finite_and_in_unit_range(model):
    image = torch.rand(3, 40, 50)
    with pytest.raises(
        InputError, match=r"source: expected a float image in \[0, 1\], got values in .*divide it by 255"
    ):
        align(image * 255, image, model=model)
    bad = image.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(InputError, match="target: expected finite pixel values, got 1 NaN/inf"):
        align(image, bad, model=model)
    with pytest.raises(InputError, match="image: expected a float image"):
        to_tensor(np.full((4, 4, 3), 200.0))
    with pytest.raises(InputError, match="expected a uint8, uint16 or float array, got dtype int64"):
        to_tensor(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(InputError, match="images: expected a float image"):
        normalize_images(image[None] * 255)
    normalize_images(image[None].clamp(0, 1) + 1e-6)  # resampling round-off is accepted
    assert normalize_images((image * 255).to(torch.uint8)[None]).shape == (1, 3, 40, 50)


def test_forward_refuses_non_finite_inputs_and_too_small_images(model):
    x = torch.randn(2, 3, 112, 112)
    y = x.clone()
    y[1, 0, 5, 5] = float("inf")
    with pytest.raises(InputError, match=r"target_images: expected finite values, got 1 NaN/inf"):
        model(x, y)
    with pytest.raises(InputError, match=r"target_images: expected feature maps of at least 7x7.*\(64, 64\) images"):
        model(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    with pytest.raises(InputError, match=r"image_size: expected at least 7x7 feature maps"):
        input_size(model, (96, 96))
    assert input_size(model, (128, 112)) == (128, 112)
    with pytest.raises(InputError, match="source_images: expected finite"):
        check_finite("source_images", torch.tensor([float("nan")]))


def test_non_finite_theta_is_an_error_not_a_figure_or_a_score(model, tmp_path):
    broken = build_model(SMALL, backbone_seed=0).eval()
    with torch.no_grad():
        broken.FeatureRegression.linear.bias.fill_(float("nan"))
    x = normalize_images(torch.rand(2, 3, 112, 112))
    with pytest.raises(InputError, match=r"model: expected a finite theta, got NaN/inf for pair\(s\) \[0, 1\]"):
        predict_chain(broken, x, x)
    with pytest.raises(InputError, match="finite theta"):
        align(torch.rand(3, 50, 60), torch.rand(3, 50, 60), model=broken)
    pairs = {"source": torch.rand(2, 3, 112, 112), "target": torch.rand(2, 3, 112, 112), "theta": torch.zeros(2, 6)}
    with pytest.raises(InputError, match="finite theta"):
        evaluate.evaluate_synthetic(broken, pairs, progress=False)
    assert predict_chain(model, x, x)[0].isfinite().all()
    # a checkpoint of it is refused when loaded, before any alignment
    checkpoint.save_checkpoint(tmp_path / "nan", broken)
    with pytest.raises(InputError, match="NaN/inf"):
        checkpoint.load_model(tmp_path / "nan")


def test_benchmark_files_without_pairs_or_text_are_refused(tmp_path):
    header = ["imageA", "imageB"] + [f"k{i}" for i in range(40)]
    write_csv(tmp_path / "test_pairs_pf.csv", [header])
    with pytest.raises(InputError, match=r"PF-WILLOW: .*test_pairs_pf.csv' has no pairs \(only a header row\)"):
        benchmarks.PFWillowDataset(tmp_path)
    (tmp_path / "test_pairs_pf.csv").write_bytes(b"a,b\n\xff\xfe\n")
    with pytest.raises(InputError, match=r"test_pairs_pf.csv' is not a text CSV pair list \(byte 4"):
        benchmarks.PFWillowDataset(tmp_path)
    (tmp_path / "test_pairs_pf.csv").write_bytes(b'a,b,"unterminated\x00\n')
    with pytest.raises(InputError, match=r"test_pairs_pf.csv"):
        benchmarks.PFWillowDataset(tmp_path)
    (tmp_path / "TSS" / "FG3DCar").mkdir(parents=True)
    with pytest.raises(InputError, match="TSS: no pair folders"):
        benchmarks.TSSDataset(tmp_path / "TSS", subsets="FG3DCar")


def test_image_files_that_are_not_images(tmp_path):
    (tmp_path / "a.jpg").write_text("text")
    with pytest.raises(InputError, match=r"a.jpg' is not an image file"):
        load_image(tmp_path / "a.jpg")
    with pytest.raises(InputError, match=r"a.jpg' is not an image file"):
        check_image_file(tmp_path / "a.jpg")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "b.png")
    write_image(tmp_path / "c.png", 10, 12)
    data = (tmp_path / "c.png").read_bytes()
    (tmp_path / "c.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"c.png' is truncated or corrupted"):
        load_image(tmp_path / "c.png")


def test_missing_extra_names_the_install_command(monkeypatch):
    import sys

    # a None entry makes the import fail; both, since an earlier test may have imported skimage.data
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(MissingExtraError, match=r"the demo needs scikit-image, .*pip install 'a2net\[data\]'"):
        require_extra("skimage.data", "the demo")
    assert issubclass(MissingExtraError, ImportError)
