"""`a2net.align`: the warp at the target's resolution, the keypoint transfer, the input types,
affine+TPS, the figure (a valid PNG of the documented size, written atomically) and `a2net align`."""

import argparse
import os

import numpy as np
import pytest
import torch
from PIL import Image

from a2net import TwoStageAligner, cli, geometry
from a2net.alignment import align, checkerboard, save_alignment_figure
from a2net.inference import load_aligner
from tests.test_benchmarks import write_image
from tests.test_evaluate import IDENTITY, SIZE, save_tiny_checkpoint, shift, tiny, tps_shift

THETA = [0.9, 0.1, 0.05, -0.08, 1.1, -0.1]


def images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 20, 33, generator=g), torch.rand(3, 25, 17, generator=g)


def test_warped_source_is_warp_image_at_the_target_resolution():
    source, target = images()
    result = align(source, target, model=tiny(theta=THETA))
    assert result.mode == "affine" and result.image_size == SIZE
    torch.testing.assert_close(result.theta, torch.tensor(THETA), rtol=0, atol=0)
    expected = geometry.warp_image(source[None], torch.tensor([THETA]), size=(25, 17))[0]
    assert result.warped.shape == (3, 25, 17)
    assert torch.equal(result.warped, expected)
    assert torch.equal(result.source, source) and torch.equal(result.target, target)
    assert result.transferred_points is None and result.transfer_errors() is None


def test_the_package_attribute_is_the_align_function():
    """``a2net.align(...)`` is the function of :mod:`a2net.alignment`."""
    import a2net

    source, target = images()
    model = tiny(theta=THETA)
    assert torch.equal(a2net.align(source, target, model=model).warped, align(source, target, model=model).warped)


def test_real_network_theta_matches_a_direct_forward():
    from a2net import normalize_images

    source, target = images(1)
    model = tiny("tps").eval()
    result = align(source, target, model=model)
    with torch.no_grad():
        theta = model(normalize_images(source[None], size=SIZE), normalize_images(target[None], size=SIZE))
    torch.testing.assert_close(result.theta, theta[0])
    assert torch.equal(result.warped, geometry.warp_image(source[None], result.theta[None], size=(25, 17))[0])


def test_inputs_as_path_pil_array_and_tensor(tmp_path):
    source = write_image(tmp_path / "s.png", 20, 33, seed=3)
    target = write_image(tmp_path / "t.png", 25, 17, seed=4)
    model = tiny(theta=THETA)
    reference = align(source, target, model=model).warped
    pil = Image.open(tmp_path / "t.png")
    array = (source.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for src, tgt in ((str(tmp_path / "s.png"), tmp_path / "t.png"), (array, pil), (source, target)):
        assert torch.equal(align(src, tgt, model=model).warped, reference)
    with pytest.raises(ValueError, match=r"source: expected a \(3, H, W\) tensor, got shape \(1, 3, 20, 33\)"):
        align(source[None], target, model=model)
    with pytest.raises(ValueError, match=r"target: expected a path, a PIL image, an array or a \(3, H, W\) tensor"):
        align(source, 3.0, model=model)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        align(tmp_path / "missing.png", target, model=model)


def test_keypoints_transfer_into_the_source():
    """Both images 33 px wide and 17 px high: tx = 0.125 is 2 px, ty = -0.25 is -2 px; target
    points move by (+2, -2) into the source, the padded one stays -1."""
    source, target = torch.rand(3, 17, 33), torch.rand(3, 17, 33)
    target_points = torch.tensor([[1.0, 10.0, 20.0, -1.0], [3.0, 8.0, 17.0, -1.0]])
    source_points = torch.tensor([[3.0, 12.0, 25.0, -1.0], [1.0, 6.0, 15.0, -1.0]])  # last real one 3 px off
    result = align(
        source, target, model=tiny(theta=shift(0.125, -0.25)), source_points=source_points, target_points=target_points
    )
    expected = torch.tensor([[3.0, 12.0, 22.0, -1.0], [1.0, 6.0, 15.0, -1.0]], dtype=torch.float64)
    assert torch.equal(result.transferred_points, expected)
    errors = result.transfer_errors()
    assert errors[:3].tolist() == [0.0, 0.0, 3.0] and torch.isnan(errors[3])
    assert torch.equal(result.transform_points(target_points), expected)
    with pytest.raises(ValueError, match=r"target_points: expected shape \(2, 4\) \(that of source_points"):
        align(
            source, target, model=tiny(theta=IDENTITY), source_points=source_points, target_points=target_points[:, :2]
        )
    with pytest.raises(ValueError, match=r"source_points: expected \(2, N\) 1-based pixel coordinates"):
        align(source, target, model=tiny(theta=IDENTITY), source_points=torch.zeros(4, 2))


def test_two_stage_alignment():
    """affine tx 0.0625 then a TPS translating by 0.0625: one warp by a 0.125 shift, in one resampling."""
    source, target = images(2)
    aligner = TwoStageAligner(tiny("affine", shift(0.0625)), tiny("tps", tps_shift(0.0625)))
    result = align(source, target, model=aligner, target_points=torch.tensor([[5.0], [5.0]]))
    assert result.mode == "affine+tps"
    theta_affine, theta_tps = result.theta
    assert theta_affine.shape == (6,) and theta_tps.shape == (18,)
    expected = geometry.warp_image(source[None], torch.tensor([shift(0.125)]), size=(25, 17))[0]
    torch.testing.assert_close(result.warped, expected, atol=1e-5, rtol=0)
    # target pixel (5, 5) of 25x17 -> normalised (-0.5, -2/3) -> shifted x + 0.125 -> pixels of the 20x33 source
    x = (((5 - 1) * 2 / 16 - 1) + 0.125 + 1) * 32 / 2 + 1
    y = ((5 - 1) * 2 / 24 - 1 + 1) * 19 / 2 + 1
    torch.testing.assert_close(result.transferred_points, torch.tensor([[x], [y]], dtype=torch.float64))


def test_figure_is_a_png_of_the_documented_size(tmp_path):
    source, target = torch.rand(3, 17, 33), torch.rand(3, 40, 20)  # tallest aspect 2 -> clamped to 2
    result = align(
        source,
        target,
        model=tiny(theta=THETA),
        target_points=torch.tensor([[2.0, 10.0], [3.0, 30.0]]),
        source_points=torch.tensor([[4.0, 12.0], [3.0, 10.0]]),
    )
    path = save_alignment_figure(result, tmp_path / "figs" / "pair.png", dpi=50, panel_size=2.0)
    assert path == tmp_path / "figs" / "pair.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (round(5 * 2.0 * 50), round((2.0 * 2 + 0.75) * 50))
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # something was drawn
    wide = align(torch.rand(3, 10, 40), torch.rand(3, 12, 40), model=tiny(theta=IDENTITY))
    with Image.open(save_alignment_figure(wide, tmp_path / "wide.png")) as image:
        assert image.size == (1600, round((3.2 * 0.4 + 0.75) * 100))  # aspect 0.3 -> clamped to 0.4
    assert save_alignment_figure(wide, tmp_path / "wide.pdf").read_bytes()[:4] == b"%PDF"


def test_figure_write_is_atomic(tmp_path, monkeypatch):
    result = align(*images(), model=tiny(theta=THETA))
    path = tmp_path / "figure.png"
    path.write_bytes(b"old figure")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_alignment_figure(result, path)
    assert path.read_bytes() == b"old figure"


def test_checkerboard():
    a, b = torch.zeros(1, 4, 6), torch.ones(1, 4, 6)
    board = checkerboard(a, b, tiles=2)
    assert board[0].tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]]


# --------------------------------------------------------------------------------------------
# Loading models and the command line


def parse(argv):
    parser = argparse.ArgumentParser()
    cli._add_align_arguments(parser)
    return parser.parse_args(argv)


def test_align_command(tmp_path, capsys, monkeypatch):
    from a2net import checkpoint

    write_image(tmp_path / "s.png", 40, 56, seed=1)
    write_image(tmp_path / "t.png", 48, 40, seed=2)
    affine = save_tiny_checkpoint(tmp_path / "affine", "affine")
    tps = save_tiny_checkpoint(tmp_path / "tps", "tps")
    out = tmp_path / "out" / "figure.png"
    args = parse(
        [
            str(tmp_path / "s.png"),
            str(tmp_path / "t.png"),
            "--checkpoint",
            str(affine),
            "--out",
            str(out),
            "--target-points",
            "3,4;20,30",
            "--source-points",
            "5,6;30,20",
            "--warped-out",
            str(tmp_path / "warped.png"),
            "--device",
            "cpu",
        ]
    )
    assert cli._run_align(args) == 0
    printed = capsys.readouterr().out
    assert "theta affine (6): [" in printed and "keypoint transfer error: mean" in printed and f"wrote {out}" in printed
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] == 1600
    expected = align(tmp_path / "s.png", tmp_path / "t.png", model=checkpoint.load_model(affine))
    with Image.open(tmp_path / "warped.png") as image:
        warped = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert warped.shape == (3, 48, 40)
    assert (warped - expected.warped).abs().max() <= 0.5 / 255 + 1e-6  # uint8 rounding only
    # a checkpoint path as model, and two stages
    by_path = align(tmp_path / "s.png", tmp_path / "t.png", model=str(affine), device="cpu")
    assert torch.equal(by_path.warped, expected.warped)
    args = parse(
        [
            str(tmp_path / "s.png"),
            str(tmp_path / "t.png"),
            "--affine-checkpoint",
            str(affine),
            "--tps-checkpoint",
            str(tps),
            "--out",
            str(tmp_path / "two.png"),
            "--geometric-model",
            "affine+tps",
        ]
    )
    assert cli._run_align(args) == 0
    printed = capsys.readouterr().out
    assert "theta affine (6)" in printed and "theta tps (18)" in printed
    with pytest.raises(ValueError, match="geometric_model: expected 'tps', the checkpoint\\(s\\) give 'affine'"):
        cli._run_align(parse(["s", "t", "--checkpoint", str(affine), "--out", "x.png", "--geometric-model", "tps"]))
    # the embedded default, here a checkpoint put in its place; and its absence
    monkeypatch.setattr(checkpoint, "DEFAULT_CHECKPOINT", affine / "model.safetensors")
    default = align(tmp_path / "s.png", tmp_path / "t.png", device="cpu")
    assert torch.equal(default.warped, expected.warped)
    monkeypatch.setattr(checkpoint, "DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="embedded demo checkpoint"):
        align(tmp_path / "s.png", tmp_path / "t.png")


def test_bad_command_arguments(tmp_path):
    with pytest.raises(SystemExit):
        parse(["s", "t", "--out", "f.png", "--target-points", "1,2;3"])
    with pytest.raises(ValueError, match="affine_checkpoint, tps_checkpoint: expected both"):
        load_aligner(affine_checkpoint=tmp_path)
