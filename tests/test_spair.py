"""SPair-71k: the reader on a fixture in the real layout (JPEGImages/, PairAnnotation/<split>/*.json,
Layout/large/<split>.txt), PCK computed by hand for a model of known theta (source keypoints carried
into the target image, L from the target box), per category, per difficulty level and overall;
`a2net eval --benchmark spair` and its one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from a2net import cli, geometry, metrics, spair
from a2net.model import normalize_images
from tests.test_cli_errors import assert_error, run_cases
from tests.test_evaluate import save_tiny_checkpoint, shift, tiny

# The model's theta moves a point by tx = 0.125 in normalised x. Between two 33 px wide images
# that is +2 px; from a 33 px wide source into a 65 px wide target x -> 2 x + 4 (and y -> 2 y
# from 17 px to 33 px high): (x / 16 + 0.125) * 32. Every number here is exact in float64.
PAIRS = {
    # name: (category, src image, trg image, src kps, trg kps, trg box, flags)
    "000001-c1-c2:cat": (
        "cat",
        "c1",
        "c2",
        ([2, 10, 20, 25, 5], [3, 3, 8, 12, 6]),
        ([4, 14, 26, 32, 17], [3, 3, 8, 12, 6]),  # errors 0, 2, 4, 5, 10 px
        [1, 2, 31, 14],  # L = 30: thresholds 1.5 / 3 / 4.5 px
        {"viewpoint_variation": 0, "scale_variation": 0, "truncation": 0, "occlusion": 0, "mirror": 0},
    ),
    "000002-c2-c1:cat": (
        "cat",
        "c2",
        "c1",
        ([0, 8, 16], [1, 5, 9]),
        ([2, 10, 18], [1, 7, 15]),  # errors 0, 2, 6 px
        [0, 0, 24, 10],  # L = 24: thresholds 1.2 / 2.4 / 3.6 px
        {"viewpoint_variation": 2, "scale_variation": 1, "truncation": 1, "occlusion": 0, "mirror": 1},
    ),
    "000003-d1-d2:dog": (
        "dog",
        "d1",
        "d2",
        ([1, 3, 6, 10], [2, 4, 4, 8]),  # carried to x [6, 10, 16, 24], y [4, 8, 8, 16]
        ([6, 13, 24, 25], [4, 8, 8, 16]),  # errors 0, 3, 8, 1 px
        [10, 5, 50, 25],  # L = 40: thresholds 2 / 4 / 6 px
        {"viewpoint_variation": 2, "scale_variation": 2, "truncation": 3, "occlusion": 1},  # no mirror flag
    ),
}
SIZES = {"c1": (17, 33), "c2": (17, 33), "d1": (17, 33), "d2": (33, 65)}
PCK = {  # per pair, at alpha 0.05 / 0.1 / 0.15
    "000001-c1-c2:cat": (1 / 5, 2 / 5, 3 / 5),
    "000002-c2-c1:cat": (1 / 3, 2 / 3, 2 / 3),
    "000003-d1-d2:dog": (2 / 4, 3 / 4, 3 / 4),
}
NAMES = ("PCK@0.05", "PCK@0.1", "PCK@0.15")


def make_spair(root, split="test", pairs=PAIRS):
    """The SPair-71k layout with the pairs above (JPEG images, 0-based JSON coordinates)."""
    generator = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        category = "dog" if name.startswith("d") else "cat"
        path = root / "JPEGImages" / category / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(generator.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    (root / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
    (root / "Layout" / "large").mkdir(parents=True, exist_ok=True)
    for name, (category, src, trg, src_kps, trg_kps, trg_box, flags) in pairs.items():
        record = {
            "pair_id": int(name.split("-")[0]),
            "src_imname": f"{src}.jpg",
            "trg_imname": f"{trg}.jpg",
            "src_imsize": [SIZES[src][1], SIZES[src][0], 3],
            "trg_imsize": [SIZES[trg][1], SIZES[trg][0], 3],
            "src_bndbox": [0, 0, 16, 12],
            "trg_bndbox": trg_box,
            "category": category,
            "src_kps": [list(p) for p in zip(*src_kps, strict=True)],
            "trg_kps": [list(p) for p in zip(*trg_kps, strict=True)],
            "kps_ids": [str(i) for i in range(len(src_kps[0]))],
            **flags,
        }
        (root / "PairAnnotation" / split / f"{name}.json").write_text(json.dumps(record))
    (root / "Layout" / "large" / f"{split}.txt").write_text("".join(f"{name}\n" for name in pairs) + "\n")
    return root


def test_items_swap_the_roles_and_use_1_based_pixels(tmp_path):
    dataset = spair.SPairDataset(make_spair(tmp_path))
    assert len(dataset) == 3 and dataset.pairs[0] == "000001-c1-c2:cat"
    item = dataset[2]
    assert tuple(item["source_image"].shape) == (3, 33, 65) and tuple(item["target_image"].shape) == (3, 17, 33)
    assert item["source_name"] == "JPEGImages/dog/d2.jpg" and item["spair_source_name"] == "JPEGImages/dog/d1.jpg"
    assert item["target_keypoints"].tolist() == [[2, 4, 7, 11], [3, 5, 5, 9]]  # the src kps + 1
    assert item["source_bbox"].tolist() == [11, 6, 51, 26]
    assert item["reference_length"].item() == 40.0 and item["reference_kind"] == "bbox"
    assert item["category"] == "dog" and item["class_index"].item() == spair.SPAIR_CATEGORIES.index("dog")
    assert item["truncation"].item() == 3 and item["mirror"].item() == -1
    assert dataset.flags(2)["mirror"] is None
    assert spair.SPairDataset(tmp_path, reference="image")[2]["reference_length"].item() == 65.0
    assert spair.SPairDataset(tmp_path, reference="keypoints")[2]["reference_length"].item() == 19.0


def _expected(pairs, column):
    return sum(PCK[p][column] for p in pairs) / len(pairs)


def test_pck_per_pair_category_difficulty_and_overall(tmp_path):
    dataset = spair.SPairDataset(make_spair(tmp_path))
    result = spair.evaluate_spair(tiny(theta=shift(0.125)), dataset, progress=False, batch_size=2)
    assert result["pairs"] == result["scored"] == 3 and result["reference_kind"] == "bbox"
    for record in result["per_pair"]:
        assert tuple(record[n] for n in NAMES) == pytest.approx(PCK[record["pair"]], abs=1e-12)
    first = result["per_pair"][0]
    assert first["source"] == "JPEGImages/cat/c1.jpg" and first["target"] == "JPEGImages/cat/c2.jpg"
    assert first["reference_length"] == 30.0 and first["viewpoint_variation"] == 0
    cat, dog = ["000001-c1-c2:cat", "000002-c2-c1:cat"], ["000003-d1-d2:dog"]
    for i, name in enumerate(NAMES):
        assert result["per_class"]["cat"]["metrics"][name] == pytest.approx(_expected(cat, i))
        assert result["overall"]["mean_over_pairs"][name] == pytest.approx(_expected(cat + dog, i))
        assert result["overall"]["mean_over_categories"][name] == pytest.approx(
            (_expected(cat, i) + _expected(dog, i)) / 2
        )
        hard = result["per_difficulty"]["viewpoint_variation"]["2"]
        assert hard["metrics"][name] == pytest.approx(_expected([cat[1]] + dog, i))
    assert result["overall"]["mean_over_pairs"] == result["metrics"]
    levels = result["per_difficulty"]
    assert list(levels) == list(spair.DIFFICULTY_FLAGS)
    assert levels["viewpoint_variation"]["2"]["label"] == "hard" and levels["viewpoint_variation"]["2"]["pairs"] == 2
    assert levels["truncation"]["3"]["label"] == "both" and levels["truncation"]["3"]["metrics"]["PCK@0.1"] == 0.75
    assert {k: v["pairs"] for k, v in levels["mirror"].items()} == {"0": 1, "1": 1}  # the dog pair has no flag


def test_the_network_sees_target_then_source(tmp_path):
    """The real (random) tiny network: the per-pair PCK is that of theta = model(trg, src) applied
    to the src keypoints and compared with the trg keypoints, L the trg box."""
    dataset = spair.SPairDataset(make_spair(tmp_path))
    model = tiny("affine").eval()
    result = spair.evaluate_spair(model, dataset, progress=False)
    record = dataset.annotations[2]
    src = torch.tensor(np.asarray(Image.open(tmp_path / "JPEGImages/dog/d1.jpg")), dtype=torch.float32) / 255
    trg = torch.tensor(np.asarray(Image.open(tmp_path / "JPEGImages/dog/d2.jpg")), dtype=torch.float32) / 255
    src, trg = src.permute(2, 0, 1)[None], trg.permute(2, 0, 1)[None]
    with torch.no_grad():
        theta = model(normalize_images(trg, size=(112, 112)), normalize_images(src, size=(112, 112))).double()
    points = geometry.pixels_to_normalized(record["src_kps"][None] + 1, (17, 33))
    moved = geometry.normalized_to_pixels(geometry.transform_points(theta, points), (33, 65))
    expected = metrics.pck(moved, record["trg_kps"][None] + 1, torch.tensor([40.0], dtype=torch.float64), alpha=0.1)
    assert result["per_pair"][2]["PCK@0.1"] == pytest.approx(expected.item(), abs=1e-6)


def test_eval_command_writes_the_tables_and_the_report(tmp_path, capsys):
    make_spair(tmp_path / "SPair-71k", split="val")
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "affine")
    out = tmp_path / "spair.json"
    code = cli.main(
        ["eval", "--benchmark", "spair", "--data", str(tmp_path / "SPair-71k"), "--split", "val"]
        + ["--checkpoint", str(checkpoint), "--output", str(out), "--no-progress", "--device", "cpu"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for words in ("SPair-71k (val split): 3 pairs", "target object's bounding box", "viewpoint_variation=2 (hard)"):
        assert words in printed
    assert "overall, mean over pairs" in printed and "overall, mean over categories" in printed
    report = json.loads(out.read_text())
    assert report["benchmark"] == "spair" and report["split"] == "val" and report["reference_kind"] == "bbox"
    assert report["transfer"].startswith("source keypoints -> target image")
    affine = report["modes"]["affine"]
    assert set(affine["per_class"]) == {"cat", "dog"} and len(affine["per_pair"]) == 3
    assert set(affine["overall"]) == {"mean_over_pairs", "mean_over_categories"}
    assert affine["per_difficulty"]["occlusion"]["1"]["pairs"] == 1


def test_eval_errors_are_one_line(tmp_path):
    root = make_spair(tmp_path / "ok")
    broken = make_spair(tmp_path / "broken")
    (broken / "PairAnnotation" / "test" / "000001-c1-c2:cat.json").write_text('{"src_imname": "c1.jpg", ')
    missing_key = make_spair(tmp_path / "missing_key")
    path = missing_key / "PairAnnotation" / "test" / "000002-c2-c1:cat.json"
    record = json.loads(path.read_text())
    del record["trg_kps"]
    path.write_text(json.dumps(record))
    no_annotation = make_spair(tmp_path / "no_annotation")
    (no_annotation / "PairAnnotation" / "test" / "000003-d1-d2:dog.json").unlink()
    no_image = make_spair(tmp_path / "no_image")
    (no_image / "JPEGImages" / "dog" / "d2.jpg").unlink()
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", "affine")
    out = tmp_path / "out"
    base = ["eval", "--benchmark", "spair", "--checkpoint", checkpoint, "--no-progress", "--device", "cpu"]
    cases = [
        (base + ["--data", root, "--split", "trn", "--output", out / "a.json"], 1, "Layout", "trn.txt", "not found"),
        (base + ["--data", root, "--split", "all", "--output", out / "a.json"], 2, "--split", "trn", "'all'"),
        (base + ["--data", broken, "--output", out / "a.json"], 1, "000001-c1-c2:cat.json", "not a JSON"),
        (base + ["--data", missing_key, "--output", out / "a.json"], 1, "000002-c2-c1:cat.json", "'trg_kps'"),
        (base + ["--data", no_annotation, "--output", out / "a.json"], 1, "pair annotation not found", "000003"),
        (base + ["--data", no_image, "--output", out / "a.json"], 1, "d2.jpg", "not found"),
        (["eval", "--benchmark", "pf-pascal", "--data", root, "--split", "trn", "--output", out / "a.json"], 2),
    ]
    results = run_cases(tmp_path, [case[0] for case in cases])
    for (argv, code, *words), result in zip(cases, results, strict=True):
        try:
            assert_error(result, code, *words)
        except AssertionError as err:
            raise AssertionError(f"{argv[:4]}: {err}") from None
    assert not out.exists()


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="SPair-71k: the test layout file not found"):
        spair.SPairDataset(tmp_path)
    root = make_spair(tmp_path / "r")
    (root / "Layout" / "large" / "test.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="lists no pair"):
        spair.SPairDataset(root)
    bad = dict(PAIRS)
    bad["000001-c1-c2:cat"] = PAIRS["000001-c1-c2:cat"][:5] + ([5, 5, 5, 9],) + PAIRS["000001-c1-c2:cat"][6:]
    with pytest.raises(ValueError, match=r"trg_bndbox: expected \[x1, y1, x2, y2\] with x2 > x1"):
        spair.SPairDataset(make_spair(tmp_path / "box", pairs=bad))
    uneven = dict(PAIRS)
    uneven["000001-c1-c2:cat"] = PAIRS["000001-c1-c2:cat"][:4] + (([4], [3]),) + PAIRS["000001-c1-c2:cat"][5:]
    with pytest.raises(ValueError, match="trg_kps: expected 5 keypoints"):
        spair.SPairDataset(make_spair(tmp_path / "uneven", pairs=uneven))
    with pytest.raises(ValueError, match="split"):
        spair.SPairDataset(root, split="train")
