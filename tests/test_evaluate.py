"""Evaluation on small benchmark fixtures written in the real formats, with models whose theta is
known (a tiny A2Net whose forward returns a fixed theta), so that every PCK, IoU and error can be
computed by hand; plus the tiny network end to end, the held-out synthetic pairs and `a2net eval`."""

import argparse
import datetime
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from a2net import A2Net, TwoStageAligner, benchmarks, cli, evaluate, fileio, geometry, metrics
from a2net.errors import UsageError
from tests.test_benchmarks import join, make_tss, write_csv, write_image

SIZE = (112, 112)  # the smallest input of the tiny backbone (7x7 features)


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=16, stride=16)

    def forward(self, x):
        return self.conv(x)


def tiny(kind="affine", theta=None):
    """A tiny A2Net; with ``theta`` its forward returns that theta for every pair."""
    torch.manual_seed(0)
    model = A2Net(kind, backbone=TinyBackbone(), image_size=SIZE)
    if theta is not None:
        fixed = torch.tensor([theta], dtype=torch.float32)
        model.forward = lambda source, target: fixed.expand(source.shape[0], -1).to(source.device)
    return model


IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def shift(tx=0.0, ty=0.0):
    return [1.0, 0.0, tx, 0.0, 1.0, ty]


def tps_shift(tx=0.0):
    return [x + tx for x in geometry.TPS_CONTROL_X] + list(geometry.TPS_CONTROL_Y)


# --------------------------------------------------------------------------------------------
# Fixtures in the benchmark formats


def make_willow_pairs(root):
    """Pair 0: source 9x17 and target 9x9 images, target keypoints at x_t, source keypoints at
    2 x_t - 1 (the same normalised positions: identity is exact only if the target size normalises
    and the source size denormalises). Pair 1: same image twice, identical keypoints."""
    write_image(root / "PF-dataset" / "car(G)" / "wide.png", 9, 17, seed=1)
    write_image(root / "PF-dataset" / "car(G)" / "square.png", 9, 9, seed=2)
    write_image(root / "PF-dataset" / "duck(S)" / "d.png", 12, 10, seed=3)
    xt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 5]
    yt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 2]
    xs = [2 * x - 1 for x in xt]
    d = ([1, 3, 5, 7, 9, 2, 4, 6, 8, 10], [2, 2, 2, 5, 5, 5, 9, 9, 9, 12])
    rows = [
        ["imageA", "imageB"] + [f"k{i}" for i in range(40)],
        ["PF-dataset/car(G)/wide.png", "PF-dataset/car(G)/square.png", *xs, *yt, *xt, *yt],
        ["PF-dataset/duck(S)/d.png", "PF-dataset/duck(S)/d.png", *d[0], *d[1], *d[0], *d[1]],
    ]
    write_csv(root / "test_pairs_pf.csv", rows)


# PF-PASCAL pair, 33 px wide images: affine tx = 0.125 moves a point by 0.125 * (33 - 1) / 2 = 2 px
# (dyadic numbers: exact in float64). The object box of the source is 30 px long, so the
# thresholds at alpha 0.05 / 0.1 / 0.15 are 1.5 / 3 / 4.5 px.
PASCAL_TARGET = ([2, 10, 20, 25, 7], [5, 5, 10, 20, 3])
# transfers under the shift: (4,5) (12,5) (22,10) (27,20); errors 0, 2, 4, 5; the 5th is padding
PASCAL_SOURCE = ([4, 10, 22, 24, -1], [5, 5, 14, 24, -1])
SHIFT_PCK = {"PCK@0.05": 1 / 4, "PCK@0.1": 2 / 4, "PCK@0.15": 3 / 4}


def make_pascal_pairs(root):
    savemat = pytest.importorskip("scipy.io").savemat
    base = root / "PF-dataset-PASCAL"
    for name, seed in (("c1", 1), ("c2", 2), ("b1", 3)):
        write_image(base / "JPEGImages" / f"{name}.png", 25, 33, seed=seed)
    (base / "Annotations" / "cat").mkdir(parents=True)
    savemat(str(base / "Annotations" / "cat" / "c1.mat"), {"bbox": [[2, 3, 32, 20]]})  # longest side 30
    rows = [
        ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"],
        [
            "PF-dataset-PASCAL/JPEGImages/c1.png",
            "PF-dataset-PASCAL/JPEGImages/c2.png",
            8,
            join(PASCAL_SOURCE[0]),
            join(PASCAL_SOURCE[1]),
            join(PASCAL_TARGET[0]),
            join(PASCAL_TARGET[1]),
        ],
        # bird: no annotation, L from the keypoints (box 16 x 8 -> 16): thresholds 0.8 / 1.6 / 2.4 px
        [
            "PF-dataset-PASCAL/JPEGImages/b1.png",
            "PF-dataset-PASCAL/JPEGImages/b1.png",
            3,
            join([3, 19, 10]),
            join([4, 12, 6]),
            join([3, 19, 10]),
            join([4, 12, 6]),
        ],
    ]
    write_csv(root / "test_pairs_pf_pascal.csv", rows)


# --------------------------------------------------------------------------------------------
# Keypoints


def test_pf_willow_identity_transfers_keypoints_exactly(tmp_path):
    make_willow_pairs(tmp_path)
    result = evaluate.evaluate_keypoints(tiny(theta=IDENTITY), benchmarks.PFWillowDataset(tmp_path), progress=False)
    assert result["mode"] == "affine" and result["pairs"] == 2 and result["scored"] == 2
    assert result["metrics"] == {"PCK@0.05": 1.0, "PCK@0.1": 1.0, "PCK@0.15": 1.0}
    assert result["reference_kind"] == "keypoints" and result["reference_kinds"] == {"keypoints": 2}
    assert set(result["per_class"]) == {"car(G)", "duck(S)"}
    first = result["per_pair"][0]
    assert first["source"] == "PF-dataset/car(G)/wide.png" and first["keypoints"] == 10
    assert first["reference_length"] == 16.0  # source keypoints: x 1..17, y 1..9


def test_pf_willow_shift_fails_on_small_boxes(tmp_path):
    """tx = 0.5 moves every transfer by 0.5 * (W_s - 1) / 2 px: 4 px in pair 0's 17 px wide source
    (L = 16: 4 > 0.15 * 16) and 2.25 px in pair 1's 10 px wide image (L = 10: 2.25 > 1.5)."""
    make_willow_pairs(tmp_path)
    result = evaluate.evaluate_keypoints(
        tiny(theta=shift(0.5)), benchmarks.PFWillowDataset(tmp_path), progress=False, batch_size=1
    )
    assert result["metrics"] == {"PCK@0.05": 0.0, "PCK@0.1": 0.0, "PCK@0.15": 0.0}


def test_pf_pascal_shift_gives_the_hand_computed_pck(tmp_path):
    make_pascal_pairs(tmp_path)
    dataset = benchmarks.PFPascalDataset(tmp_path)  # by bbox
    result = evaluate.evaluate_keypoints(tiny(theta=shift(0.125)), dataset, progress=False)
    cat, bird = result["per_pair"]
    assert cat["keypoints"] == 4 and cat["reference_length"] == 30.0 and cat["reference_kind"] == "bbox"
    assert {k: cat[k] for k in SHIFT_PCK} == SHIFT_PCK
    # bird: same image, identical keypoints, every transfer 2 px off; L = 16 -> right at 0.15 only
    assert bird["reference_kind"] == "keypoints" and bird["reference_length"] == 16.0
    assert [bird[k] for k in SHIFT_PCK] == [0.0, 0.0, 1.0]
    assert result["reference_kind"] == "mixed" and result["reference_kinds"] == {"bbox": 1, "keypoints": 1}
    assert result["per_class"]["cat"]["metrics"] == SHIFT_PCK
    assert result["metrics"]["PCK@0.1"] == (0.5 + 0.0) / 2
    assert result["class_average"]["PCK@0.15"] == (0.75 + 1.0) / 2
    by_image = evaluate.evaluate_keypoints(
        tiny(theta=shift(0.125)), benchmarks.PFPascalDataset(tmp_path, reference="image"), progress=False
    )
    assert by_image["reference_kind"] == "image" and by_image["per_pair"][0]["reference_length"] == 33.0


def test_two_stage_composes_tps_then_affine(tmp_path):
    """affine tx = 0.0625 (1 px) and a TPS translating every control point by 0.0625 (1 px):
    together the 2 px shift of the single-model test, so the same PCK."""
    make_pascal_pairs(tmp_path)
    aligner = TwoStageAligner(tiny("affine", shift(0.0625)), tiny("tps", tps_shift(0.0625)))
    result = evaluate.evaluate_keypoints(aligner, benchmarks.PFPascalDataset(tmp_path), progress=False)
    assert result["mode"] == "affine+tps"
    cat = result["per_pair"][0]
    assert cat["PCK@0.05"] == pytest.approx(SHIFT_PCK["PCK@0.05"])
    assert cat["PCK@0.1"] == pytest.approx(SHIFT_PCK["PCK@0.1"])


def test_tiny_network_end_to_end(tmp_path):
    """The real (random) tiny network, affine and affine+TPS, with batches of 2: finite PCKs in
    [0, 1] equal to a pair-by-pair computation."""
    make_pascal_pairs(tmp_path)
    dataset = benchmarks.PFPascalDataset(tmp_path)
    model = tiny("affine").eval()
    result = evaluate.evaluate_keypoints(model, dataset, batch_size=2, progress=False)
    item = benchmarks.collate([dataset[0]], size=SIZE)
    from a2net import normalize_images

    with torch.no_grad():
        theta = model(normalize_images(item["source_image"]), normalize_images(item["target_image"])).double()
    points = geometry.pixels_to_normalized(item["target_keypoints"], item["target_size"])
    moved = geometry.normalized_to_pixels(
        geometry.transform_points(theta, points),
        item["source_size"],
        geometry.valid_keypoints(item["target_keypoints"]),
    )
    expected = metrics.pck(moved, item["source_keypoints"], item["reference_length"], alpha=0.1)
    assert result["per_pair"][0]["PCK@0.1"] == pytest.approx(expected.item(), abs=1e-6)
    two = evaluate.evaluate_keypoints(TwoStageAligner(model, tiny("tps")), dataset, progress=False)
    assert all(0 <= v <= 1 for v in two["metrics"].values())


# --------------------------------------------------------------------------------------------
# TSS and Caltech-101


def test_tss_flow_pck(tmp_path):
    theta = [0.9, 0.05, 0.1, -0.05, 1.05, 0.0]
    make_tss(tmp_path)
    folder = tmp_path / "FG3DCar" / "pair01"  # image1 6x8, image2 5x7; JODS pair: zero flows
    true = torch.tensor([theta], dtype=torch.float64)
    benchmarks.write_flo(folder / "flow1.flo", metrics.theta_to_flow(true, (6, 8), source_size=(5, 7))[0])
    benchmarks.write_flo(folder / "flow2.flo", metrics.theta_to_flow(true, (5, 7), source_size=(6, 8))[0])
    dataset = benchmarks.TSSDataset(tmp_path)
    result = evaluate.evaluate_tss(tiny(theta=theta), dataset, progress=False)
    assert result["per_class"]["FG3DCar"]["metrics"] == {"PCK@0.05": 1.0}  # float32 theta, well within
    identity = evaluate.evaluate_tss(tiny(theta=IDENTITY), dataset, progress=False)
    assert identity["per_class"]["JODS"]["metrics"] == {"PCK@0.05": 1.0}  # zero ground-truth flow
    item = dataset[0]
    flow = metrics.theta_to_flow(geometry.identity_theta("affine", dtype=torch.float64), (6, 8), source_size=(5, 7))
    expected = metrics.flow_pck(
        flow, item["flow"][None].double(), item["target_mask"][None], 0.05, item["reference_length"][None]
    )
    assert identity["per_pair"][0]["PCK@0.05"] == pytest.approx(expected.item())
    assert identity["per_pair"][0]["pair"] == "FG3DCar/pair01/flow1"
    assert result["reference_kind"] == "image" and result["pairs"] == 4
    assert result["class_average"]["PCK@0.05"] == pytest.approx(
        (result["per_class"]["FG3DCar"]["metrics"]["PCK@0.05"] + result["per_class"]["JODS"]["metrics"]["PCK@0.05"]) / 2
    )


def make_caltech(root):
    for name, seed in (("image_0001", 1), ("image_0002", 2)):
        write_image(root / "101_ObjectCategories" / "Faces" / f"{name}.png", 10, 17, seed=seed)
    square = (join([5.5, 9.5, 9.5, 5.5]), join([2.5, 2.5, 6.5, 6.5]))  # columns 6..9, rows 3..6
    write_csv(
        root / "test_pairs_caltech_with_category.csv",
        [
            ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"],
            [
                "101_ObjectCategories/Faces/image_0001.png",
                "101_ObjectCategories/Faces/image_0002.png",
                1,
                *square,
                *square,
            ],
        ],
    )


def test_caltech_mask_metrics(tmp_path):
    make_caltech(tmp_path)
    dataset = benchmarks.CaltechDataset(tmp_path)
    same = evaluate.evaluate_caltech(tiny(theta=IDENTITY), dataset, progress=False)
    assert same["metrics"] == {"LT-ACC": 1.0, "IoU": 1.0, "LOC-ERR": 0.0}
    # tx = 0.25 on 17 px: the target samples the source 2 px to the right, so the warped mask is
    # the square moved 2 px left (columns 4..7): 8 of 24 pixels shared, 16 of 170 disagree; every
    # flow is 2 px = half the 4 px box, for the 15 columns whose match stays inside the source.
    moved = evaluate.evaluate_caltech(tiny(theta=shift(0.25)), dataset, progress=False)
    assert moved["metrics"]["IoU"] == pytest.approx(8 / 24)
    assert moved["metrics"]["LT-ACC"] == pytest.approx(154 / 170)
    assert moved["metrics"]["LOC-ERR"] == pytest.approx(0.5)
    assert moved["per_pair"][0]["category"] == "Faces"
    two = evaluate.evaluate_caltech(
        TwoStageAligner(tiny("affine", shift(0.125)), tiny("tps", tps_shift(0.125))), dataset, progress=False
    )
    assert two["metrics"]["IoU"] == pytest.approx(8 / 24, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Held-out synthetic pairs


def test_synthetic_true_theta_and_identity_baseline():
    """Pairs given as a batch dict; 33x33 images, every pair shifted by 2 px (tx = 0.125): the
    right theta scores 1; identity is 2 px off, within 0.1 * 33 but not 0.05 * 33."""
    n = 3
    pairs = {
        "source": torch.rand(n, 3, 33, 33),
        "target": torch.rand(n, 3, 33, 33),
        "theta": torch.tensor([shift(0.125)] * n),
        "name": ["a", "b", "a"],
    }
    result = evaluate.evaluate_synthetic(tiny(theta=shift(0.125)), pairs, batch_size=2, progress=False, grid_size=5)
    assert result["metrics"] == {"PCK@0.05": 1.0, "PCK@0.1": 1.0, "PCK@0.15": 1.0}
    assert result["baseline"] == {"identity": {"PCK@0.05": 0.0, "PCK@0.1": 1.0, "PCK@0.15": 1.0}}
    assert result["pairs"] == 3 and result["per_class"]["a"]["pairs"] == 2 and result["reference_kind"] == "image"
    two = evaluate.evaluate_synthetic(
        TwoStageAligner(tiny("affine", shift(0.0625)), tiny("tps", tps_shift(0.0625))),
        pairs,
        progress=False,
        grid_size=5,
    )
    assert two["metrics"] == {"PCK@0.05": 1.0, "PCK@0.1": 1.0, "PCK@0.15": 1.0}
    tps_on_affine_pairs = evaluate.evaluate_synthetic(tiny("tps", tps_shift(0.125)), pairs, progress=False, grid_size=5)
    assert tps_on_affine_pairs["metrics"] == {"PCK@0.05": 1.0, "PCK@0.1": 1.0, "PCK@0.15": 1.0}
    assert tps_on_affine_pairs["pair_model"] == "affine"


def test_synthetic_heldout_pairs_of_the_bundled_photos():
    pytest.importorskip("skimage")
    from a2net import synthetic

    pairs = synthetic.heldout_synthetic_pairs("affine", n_pairs=3, image_size=SIZE)
    oracle = tiny()
    truth = iter(pairs["theta"].split(2))
    oracle.forward = lambda source, target: next(truth).to(source.dtype)  # the true theta of each batch
    result = evaluate.evaluate_synthetic(oracle, pairs, batch_size=2, progress=False)
    assert result["metrics"]["PCK@0.05"] == 1.0
    identity = evaluate.evaluate_synthetic(tiny(theta=IDENTITY), pairs, progress=False)
    assert identity["metrics"] == identity["baseline"]["identity"]
    # the composed path (two stages) measures what metrics.synthetic_pck measures
    two = evaluate.evaluate_synthetic(
        TwoStageAligner(tiny("affine", IDENTITY), tiny("tps", tps_shift(0.0))), pairs, progress=False
    )
    assert two["metrics"] == pytest.approx(identity["metrics"])
    assert identity["baseline"]["identity"]["PCK@0.1"] == pytest.approx(
        metrics.synthetic_pck(geometry.identity_theta("affine", 3), pairs["theta"], SIZE).mean().item()
    )
    default = evaluate.evaluate_synthetic(tiny("tps"), n_pairs=2, progress=False)  # pairs drawn for the model
    assert default["pair_model"] == "tps" and default["pairs"] == 2
    assert set(default["per_class"]) <= set(synthetic.BUNDLED_HELDOUT)


# --------------------------------------------------------------------------------------------
# Reports and the command line


def parse(argv):
    parser = argparse.ArgumentParser()
    cli._add_eval_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def fixed_models(monkeypatch):
    """`a2net eval` with models loaded by path: affine shift 0.0625 and TPS shift 0.0625."""
    import a2net.inference

    def load_aligner(checkpoint=None, affine_checkpoint=None, tps_checkpoint=None, geometric_model=None, device=None):
        if affine_checkpoint is not None:
            return TwoStageAligner(tiny("affine", shift(0.0625)), tiny("tps", tps_shift(0.0625)))
        return tiny("affine", shift(0.125))

    monkeypatch.setattr(a2net.inference, "load_aligner", load_aligner)


def test_eval_command_writes_the_report(tmp_path, capsys, fixed_models):
    make_pascal_pairs(tmp_path)
    out = tmp_path / "results" / "pascal.json"
    args = parse(
        [
            "--benchmark",
            "pf-pascal",
            "--data",
            str(tmp_path),
            "--output",
            str(out),
            "--affine-checkpoint",
            "a",
            "--tps-checkpoint",
            "t",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert cli._run_eval(args) == 0
    report = json.loads(out.read_text())
    assert list(report["modes"]) == ["affine", "tps", "affine+tps"]
    assert report["benchmark"] == "pf-pascal" and report["split"] == "test"
    assert report["reference_kind"] == "mixed" and report["modes"]["affine+tps"]["reference_kinds"] == {
        "bbox": 1,
        "keypoints": 1,
    }
    assert report["alphas"] == [0.05, 0.1, 0.15]
    assert report["modes"]["affine"]["per_class"]["cat"]["metrics"]["PCK@0.1"] == 0.5  # 1 px: errors 1, 1, 4.1, 4.5
    assert report["modes"]["affine+tps"]["per_pair"][0]["PCK@0.1"] == pytest.approx(0.5)
    assert report["checkpoint"] == {
        "affine": {"path": str(Path("a").resolve()), "embedded": False, "step": None},
        "tps": {"path": str(Path("t").resolve()), "embedded": False, "step": None},
    }
    assert report["a2net_version"] == __import__("a2net").__version__
    assert datetime.datetime.fromisoformat(report["date"]).tzinfo is not None
    assert report["image_size"] == list(SIZE)
    printed = capsys.readouterr().out
    assert (
        "PCK reference length L (mixed): longest side of the source object's bounding box (bbox) for 1 pairs; "
        "longest side of the bounding box of the source keypoints (keypoints) for 1 pairs" in printed
    )
    assert "affine+tps" in printed
    assert "per class (PCK@0.05 / PCK@0.1 / PCK@0.15)" in printed and "cat" in printed and "bird" in printed
    assert f"wrote {out}" in printed


def test_eval_json_is_written_atomically_with_null_for_nan(tmp_path, monkeypatch, fixed_models):
    make_willow_pairs(tmp_path)
    out = tmp_path / "willow.json"
    out.write_text("previous results\n")
    args = parse(
        [
            "--benchmark",
            "pf-willow",
            "--data",
            str(tmp_path),
            "--output",
            str(out),
            "--checkpoint",
            "m",
            "--no-progress",
            "--alphas",
            "0.1",
        ]
    )

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        cli._run_eval(args)
    assert out.read_text() == "previous results\n"  # the old report survives a failed write
    monkeypatch.undo()
    report = {"modes": {"affine": {"metrics": {"PCK@0.1": float("nan")}}}}
    fileio.write_json(out, report)
    assert json.loads(out.read_text()) == {"modes": {"affine": {"metrics": {"PCK@0.1": None}}}}
    assert "NaN" not in out.read_text()


def test_eval_command_synthetic(tmp_path, capsys, fixed_models):
    pytest.importorskip("skimage")
    out = tmp_path / "synthetic.json"
    args = parse(
        ["--benchmark", "synthetic", "--output", str(out), "--checkpoint", "m", "--pairs", "2", "--no-progress"]
    )
    assert cli._run_eval(args) == 0
    report = json.loads(out.read_text())
    assert report["pair_model"] == "affine" and report["reference_kind"] == "image"
    assert set(report["modes"]["affine"]["baseline"]["identity"]) == {"PCK@0.05", "PCK@0.1", "PCK@0.15"}
    assert "identity (baseline)" in capsys.readouterr().out


def save_tiny_checkpoint(directory, kind):
    """A real checkpoint of a small network (the demo's small_cnn backbone) at 112x112."""
    from a2net import checkpoint
    from a2net.model import build_model

    model = build_model({"geometric_model": kind, "backbone": "small_cnn", "image_size": list(SIZE)}, backbone_seed=1)
    checkpoint.save_checkpoint(directory, model, step=3)
    return directory


def test_eval_command_with_real_checkpoints(tmp_path, monkeypatch):
    """Integration with a2net.checkpoint: --checkpoint, --affine/--tps-checkpoint and the embedded
    default (here a checkpoint put in its place) give the numbers of the Python API."""
    from a2net import checkpoint

    make_willow_pairs(tmp_path)
    affine, tps = save_tiny_checkpoint(tmp_path / "affine", "affine"), save_tiny_checkpoint(tmp_path / "tps", "tps")
    dataset = benchmarks.PFWillowDataset(tmp_path)
    expected = evaluate.evaluate_keypoints(checkpoint.load_model(affine), dataset, progress=False)
    out = tmp_path / "one.json"
    assert (
        cli._run_eval(
            parse(
                [
                    "--benchmark",
                    "pf-willow",
                    "--data",
                    str(tmp_path),
                    "--output",
                    str(out),
                    "--checkpoint",
                    str(affine),
                    "--no-progress",
                    "--device",
                    "cpu",
                ]
            )
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["checkpoint"] == {"affine": {"path": str(affine.resolve()), "embedded": False, "step": 3}}
    assert report["modes"]["affine"]["metrics"] == expected["metrics"]
    assert report["modes"]["affine"]["per_pair"] == json.loads(json.dumps(expected["per_pair"]))
    out = tmp_path / "two.json"
    assert (
        cli._run_eval(
            parse(
                [
                    "--benchmark",
                    "pf-willow",
                    "--data",
                    str(tmp_path),
                    "--output",
                    str(out),
                    "--affine-checkpoint",
                    str(affine / "model.safetensors"),
                    "--tps-checkpoint",
                    str(tps),
                    "--no-progress",
                    "--batch-size",
                    "1",
                ]
            )
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert list(report["modes"]) == ["affine", "tps", "affine+tps"]
    assert report["modes"]["affine"]["metrics"] == expected["metrics"]
    monkeypatch.setattr(checkpoint, "DEFAULT_CHECKPOINT", affine / "model.safetensors")
    out = tmp_path / "default.json"
    assert (
        cli._run_eval(
            parse(["--benchmark", "pf-willow", "--data", str(tmp_path), "--output", str(out), "--no-progress"])
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["checkpoint"] == {"affine": {"path": str(affine / "model.safetensors"), "embedded": True, "step": 3}}
    assert report["modes"]["affine"]["metrics"] == expected["metrics"]


def test_argument_errors(tmp_path):
    make_willow_pairs(tmp_path)
    dataset = benchmarks.PFWillowDataset(tmp_path)
    with pytest.raises(ValueError, match=r"alphas: expected a non-empty sequence of numbers > 0"):
        evaluate.evaluate_keypoints(tiny(theta=IDENTITY), dataset, alphas=(0.1, -1))
    with pytest.raises(ValueError, match=r"batch_size: expected an int >= 1, got 0"):
        evaluate.evaluate_keypoints(tiny(theta=IDENTITY), dataset, batch_size=0)
    with pytest.raises(ValueError, match=r"model: expected an A2Net or a TwoStageAligner, got Linear"):
        evaluate.evaluate_keypoints(nn.Linear(2, 2), dataset)
    with pytest.raises(UsageError, match="--data: required"):
        cli._run_eval(parse(["--benchmark", "tss", "--output", str(tmp_path / "x.json"), "--checkpoint", "m"]))
