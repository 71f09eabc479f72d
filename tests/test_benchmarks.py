"""Benchmark readers on small fixtures written in the real formats (CSV pair lists, PNG images,
Middlebury .flo, PF-PASCAL .mat annotations), the batching collate and the missing-file errors."""

import csv
import functools
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from a2net import benchmarks, geometry, metrics


def write_image(path, height, width, seed=0, channels=3):
    """A random RGB (or gray) PNG; returns it as (C, H, W) float in [0, 1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (channels, height, width), dtype=torch.uint8, generator=generator)
    Image.fromarray(pixels.permute(1, 2, 0).squeeze(-1).numpy()).save(path)
    return pixels.float() / 255


def write_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.to(torch.uint8).numpy() * 255).save(path)


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def join(values):
    return ";".join(str(v) for v in values)


# --------------------------------------------------------------------------------------------
# .flo


def test_flo_round_trip_and_layout(tmp_path):
    flow = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    flow[0, 1, 2] = 1e10  # unknown flow survives as is
    path = tmp_path / "flow1.flo"
    benchmarks.write_flo(path, flow)
    raw = path.read_bytes()
    assert struct.unpack("<fii", raw[:12]) == (202021.25, 5, 3)  # magic, width, height
    assert len(raw) == 12 + 3 * 5 * 2 * 4
    # (u, v) interleaved, row by row: the second float pair is pixel (row 0, col 1)
    assert struct.unpack("<ff", raw[20:28]) == pytest.approx((flow[0, 0, 1].item(), flow[1, 0, 1].item()))
    back = benchmarks.read_flo(path)
    assert back.dtype == torch.float32 and back.shape == (2, 3, 5)
    assert torch.equal(back, flow)


def test_flo_errors(tmp_path):
    bad = tmp_path / "bad.flo"
    bad.write_bytes(struct.pack("<fii", 1.0, 1, 1) + b"\0" * 8)
    with pytest.raises(ValueError, match="magic number"):
        benchmarks.read_flo(bad)
    short = tmp_path / "short.flo"
    short.write_bytes(struct.pack("<fii", 202021.25, 4, 4) + b"\0" * 8)
    with pytest.raises(ValueError, match="expected 140 bytes for a 4x4 flow"):
        benchmarks.read_flo(short)
    with pytest.raises(FileNotFoundError, match="missing.flo"):
        benchmarks.read_flo(tmp_path / "missing.flo")


# --------------------------------------------------------------------------------------------
# PF-WILLOW


WILLOW_A = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [2, 2, 2, 2, 2, 3, 3, 3, 3, 7])  # box 9 x 5
WILLOW_B = ([2, 2, 2, 2, 2, 2, 2, 2, 2, 3.5], [1, 2, 3, 4, 5, 6, 7, 8, 9, 9.25])


def make_willow(root, header=True):
    images = {
        "a": write_image(root / "PF-dataset" / "car(G)" / "a.png", 9, 12, seed=1),
        "b": write_image(root / "PF-dataset" / "car(G)" / "b.png", 11, 7, seed=2, channels=1),
    }
    columns = [f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, 11)]
    rows = [["imageA", "imageB", *columns]] if header else []
    a, b = "PF-dataset/car(G)/a.png", "PF-dataset/car(G)/b.png"
    rows.append([a, b, *WILLOW_A[0], *WILLOW_A[1], *WILLOW_B[0], *WILLOW_B[1]])
    rows.append([b, a, *WILLOW_B[0], *WILLOW_B[1], *WILLOW_A[0], *WILLOW_A[1]])
    write_csv(root / "test_pairs_pf.csv", rows)
    return images


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_pf_willow_items(tmp_path, header):
    images = make_willow(tmp_path, header)
    dataset = benchmarks.PFWillowDataset(tmp_path)
    assert len(dataset) == 2
    item = dataset[0]
    assert torch.equal(item["source_image"], images["a"])
    assert torch.equal(item["target_image"], images["b"].expand(3, -1, -1))  # gray -> 3 channels
    assert item["source_size"].tolist() == [9, 12] and item["target_size"].tolist() == [11, 7]
    assert item["source_keypoints"].dtype == torch.float64
    assert item["source_keypoints"].tolist() == [list(map(float, v)) for v in WILLOW_A]  # 1-based, as in the file
    assert item["target_keypoints"].tolist() == [list(map(float, v)) for v in WILLOW_B]
    assert item["reference_length"].item() == 9.0 and item["reference_kind"] == "keypoints"
    assert item["category"] == "car(G)" and item["class_index"].item() == -1
    assert dataset[1]["reference_length"].item() == 8.25  # B's keypoint box: 1.5 x 8.25


def test_missing_files_name_the_file_and_the_dataset(tmp_path):
    expected = r"PF-WILLOW: pair list not found: .*test_pairs_pf\.csv.*Proposal Flow project page"
    with pytest.raises(FileNotFoundError, match=expected):
        benchmarks.PFWillowDataset(tmp_path)
    make_willow(tmp_path)
    (tmp_path / "PF-dataset" / "car(G)" / "b.png").unlink()
    dataset = benchmarks.PFWillowDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"PF-WILLOW: image not found: .*b\.png.*Ham, Cho, Schmid and Ponce"):
        dataset[0]
    with pytest.raises(FileNotFoundError, match=r"val_pairs_pf_pascal\.csv.*PF-PASCAL"):
        benchmarks.PFPascalDataset(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match=r"TSS: subset folder FG3DCar not found.*Taniai"):
        benchmarks.TSSDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"test_pairs_caltech_with_category\.csv.*Caltech-101 page"):
        benchmarks.CaltechDataset(tmp_path)


# --------------------------------------------------------------------------------------------
# PF-PASCAL


def make_pascal(root, split="test", flip=False):
    """Two pairs: a cat pair with annotations (3 keypoints, one missing in the target) and a dog
    pair without (variable-length lists)."""
    base = root / "PF-dataset-PASCAL"
    images = {
        name: write_image(base / "JPEGImages" / f"{name}.png", h, w, seed=s)
        for name, h, w, s in (("c1", 10, 14, 1), ("c2", 12, 9, 2), ("d1", 8, 8, 3), ("d2", 9, 11, 4))
    }
    savemat = pytest.importorskip("scipy.io").savemat
    (base / "Annotations" / "cat").mkdir(parents=True)
    savemat(str(base / "Annotations" / "cat" / "c1.mat"), {"bbox": np.array([[2, 3, 12, 7]]), "kps": np.zeros((3, 2))})
    savemat(str(base / "Annotations" / "cat" / "c2.mat"), {"bbox": np.array([[1, 1, 8, 11]]), "kps": np.zeros((3, 2))})
    header = ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"]
    cat = [
        "PF-dataset-PASCAL/JPEGImages/c1.png",
        "PF-dataset-PASCAL/JPEGImages/c2.png",
        8,
        join([3, 5.5, 11]),
        join([4, 6, 7]),
        join([2, 4, -1]),
        join([3, 9, -1]),
    ]
    dog = [
        "PF-dataset-PASCAL/JPEGImages/d1.png",
        "PF-dataset-PASCAL/JPEGImages/d2.png",
        12,
        join([1, 8]),
        join([2, 3]),
        join([5, 6, 7]),
        join([1, 2, 9]),
    ]
    if flip:
        header.insert(3, "flip")
        cat.insert(3, 1)
        dog.insert(3, 0)
    write_csv(root / f"{split}_pairs_pf_pascal.csv", [header, cat, dog])
    return images


def test_pf_pascal_bbox_from_annotations_and_fallback(tmp_path):
    make_pascal(tmp_path)
    dataset = benchmarks.PFPascalDataset(tmp_path)  # split "test", reference "bbox"
    assert len(dataset) == 2
    cat = dataset[0]
    assert cat["category"] == "cat" and cat["class_index"].item() == 8
    # the keypoint missing in the target is padded in both images
    assert cat["source_keypoints"].tolist() == [[3.0, 5.5, -1.0], [4.0, 6.0, -1.0]]
    assert cat["target_keypoints"].tolist() == [[2.0, 4.0, -1.0], [3.0, 9.0, -1.0]]
    assert cat["source_bbox"].tolist() == [2.0, 3.0, 12.0, 7.0] and cat["bbox_from"] == "annotation"
    assert cat["reference_length"].item() == 10.0 and cat["reference_kind"] == "bbox"
    dog = dataset[1]  # no annotation file: the box of the valid keypoints, reported as such
    assert dog["source_keypoints"].tolist() == [[1.0, 8.0, -1.0], [2.0, 3.0, -1.0]]  # padded to B's 3
    assert dog["source_bbox"].tolist() == [1.0, 2.0, 8.0, 3.0] and dog["bbox_from"] == "keypoints"
    assert dog["reference_length"].item() == 7.0 and dog["reference_kind"] == "keypoints"


def test_pf_pascal_reference_kinds_and_split(tmp_path):
    make_pascal(tmp_path, split="val")
    by_image = benchmarks.PFPascalDataset(tmp_path, split="val", reference="image")
    assert by_image[0]["reference_length"].item() == 14.0 and by_image[0]["reference_kind"] == "image"
    by_keypoints = benchmarks.PFPascalDataset(tmp_path, split="val", reference="keypoints")
    assert by_keypoints[0]["reference_length"].item() == 2.5  # valid source keypoints: x 3..5.5, y 4..6
    assert by_keypoints[0]["reference_kind"] == "keypoints"
    with pytest.raises(ValueError, match="split: expected one of"):
        benchmarks.PFPascalDataset(tmp_path, split="dev")
    with pytest.raises(ValueError, match="reference: expected one of"):
        benchmarks.PFPascalDataset(tmp_path, split="val", reference="object")


def test_pf_pascal_flip_column_mirrors_images_and_annotations(tmp_path):
    images = make_pascal(tmp_path, split="train", flip=True)
    dataset = benchmarks.PFPascalDataset(tmp_path, split="train")
    cat = dataset[0]  # flip = 1; widths 14 and 9
    assert torch.equal(cat["source_image"], images["c1"].flip(-1))
    assert cat["source_keypoints"].tolist() == [[12.0, 9.5, -1.0], [4.0, 6.0, -1.0]]  # x -> 15 - x
    assert cat["target_keypoints"].tolist() == [[8.0, 6.0, -1.0], [3.0, 9.0, -1.0]]  # x -> 10 - x
    assert cat["source_bbox"].tolist() == [3.0, 3.0, 13.0, 7.0]
    assert torch.equal(dataset[1]["source_image"], images["d1"])  # flip = 0


# --------------------------------------------------------------------------------------------
# TSS


def make_tss(root):
    """FG3DCar/pair01 (no flip, 6x8 and 5x7) and JODS/pair01 (flip_gt 1, 4x5 both)."""
    pair = root / "FG3DCar" / "pair01"
    image1, image2 = write_image(pair / "image1.png", 6, 8, seed=1), write_image(pair / "image2.png", 5, 7, seed=2)
    mask1 = torch.zeros(6, 8, dtype=torch.bool)
    mask1[1:5, 2:7] = True
    mask2 = torch.zeros(5, 7, dtype=torch.bool)
    mask2[0:3, 0:4] = True
    write_mask(pair / "mask1.png", mask1)
    write_mask(pair / "mask2.png", mask2)
    flow1 = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
    flow2 = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(2))
    benchmarks.write_flo(pair / "flow1.flo", flow1)
    benchmarks.write_flo(pair / "flow2.flo", flow2)
    (pair / "flip_gt.txt").write_text("0\n")
    other = root / "JODS" / "pair01"
    jods2 = write_image(other / "image2.png", 4, 5, seed=4)
    write_image(other / "image1.png", 4, 5, seed=3)
    half = torch.zeros(4, 5, dtype=torch.bool)
    half[:, :2] = True
    write_mask(other / "mask1.png", half)
    write_mask(other / "mask2.png", half)
    benchmarks.write_flo(other / "flow1.flo", torch.zeros(2, 4, 5))
    benchmarks.write_flo(other / "flow2.flo", torch.zeros(2, 4, 5))
    (other / "flip_gt.txt").write_text("1\n")
    (root / "PASCAL").mkdir()
    return dict(
        image1=image1, image2=image2, mask1=mask1, mask2=mask2, flow1=flow1, flow2=flow2, jods2=jods2, half=half
    )


def test_tss_items_both_directions_and_flip(tmp_path):
    fx = make_tss(tmp_path)
    dataset = benchmarks.TSSDataset(tmp_path)
    assert len(dataset) == 4  # two pair folders, two directions each
    first = dataset[0]  # target image1 <- source image2, ground truth flow1 on image1's grid
    assert torch.equal(first["target_image"], fx["image1"]) and torch.equal(first["source_image"], fx["image2"])
    assert torch.equal(first["flow"], fx["flow1"])
    assert torch.equal(first["target_mask"], fx["mask1"]) and torch.equal(first["source_mask"], fx["mask2"])
    assert first["reference_length"].item() == 7.0  # longest side of the source (image2, 5 x 7)
    assert first["pair"] == "FG3DCar/pair01/flow1" and first["category"] == "FG3DCar"
    assert not first["flip"].item()
    second = dataset[1]
    assert torch.equal(second["flow"], fx["flow2"]) and second["target_size"].tolist() == [5, 7]
    assert second["reference_length"].item() == 8.0
    flipped = dataset[2]  # JODS, flip_gt 1: the source image and its mask are mirrored
    assert flipped["flip"].item() and flipped["category"] == "JODS" and flipped["class_index"].item() == 1
    assert torch.equal(flipped["source_image"], fx["jods2"].flip(-1))
    assert torch.equal(flipped["source_mask"], fx["half"].flip(-1))
    assert torch.equal(flipped["target_mask"], fx["half"])
    assert len(benchmarks.TSSDataset(tmp_path, subsets="JODS")) == 2


def test_tss_flow_pck_of_the_true_transformation_is_one(tmp_path):
    """The convention end to end: a ground truth written from a known theta (target -> source)
    and read back scores 1 against the same theta's flow, and a different theta scores less."""
    theta = torch.tensor([[0.9, 0.05, 0.1, -0.05, 1.05, 0.0]], dtype=torch.float64)
    make_tss(tmp_path)
    folder = tmp_path / "FG3DCar" / "pair01"
    benchmarks.write_flo(folder / "flow1.flo", metrics.theta_to_flow(theta, (6, 8), source_size=(5, 7))[0])
    item = benchmarks.TSSDataset(tmp_path, subsets="FG3DCar")[0]
    flow_gt = item["flow"][None].double()
    predicted = metrics.theta_to_flow(theta, tuple(item["target_size"].tolist()), item["source_size"][None])
    score = metrics.flow_pck(predicted, flow_gt, item["target_mask"][None], 0.05, item["reference_length"][None])
    assert score.tolist() == [1.0]
    identity = geometry.identity_theta("affine", 1, dtype=torch.float64)
    wrong = metrics.theta_to_flow(identity, (6, 8), source_size=(5, 7))
    worse = metrics.flow_pck(wrong, flow_gt, item["target_mask"][None], 0.05, item["reference_length"][None])
    assert worse.item() < 1.0


def test_tss_missing_file_in_a_pair(tmp_path):
    make_tss(tmp_path)
    (tmp_path / "FG3DCar" / "pair01" / "flow2.flo").unlink()
    with pytest.raises(FileNotFoundError, match=r"TSS: file not found: .*flow2\.flo"):
        benchmarks.TSSDataset(tmp_path)[1]


# --------------------------------------------------------------------------------------------
# Caltech-101


def test_caltech_items_and_masks(tmp_path):
    source = write_image(tmp_path / "101_ObjectCategories" / "Faces" / "image_0001.png", 10, 12, seed=1)
    write_image(tmp_path / "101_ObjectCategories" / "Faces" / "image_0002.png", 9, 8, seed=2)
    xa, ya = [1.5, 9.5, 9.5, 1.5], [2.5, 2.5, 7.5, 7.5]
    xb, yb = [0.5, 6.5, 3.2], [0.5, 1.5, 7.8]
    rows = [
        ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"],
        # the published file separates the vertices with commas inside quoted cells
        [
            "101_ObjectCategories/Faces/image_0001.png",
            "101_ObjectCategories/Faces/image_0002.png",
            1,
            ",".join(map(str, xa)),
            ",".join(map(str, ya)),
            join(xb),
            join(yb),
        ],
    ]
    write_csv(tmp_path / "test_pairs_caltech_with_category.csv", rows)
    dataset = benchmarks.CaltechDataset(tmp_path)
    assert len(dataset) == 1
    item = dataset[0]
    assert torch.equal(item["source_image"], source) and item["category"] == "Faces" and item["class_index"].item() == 1
    assert item["source_polygon"].tolist() == [xa, ya] and item["target_polygon"].tolist() == [xb, yb]
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[3:8, 2:10] = True
    assert torch.equal(item["source_mask"], expected)
    assert torch.equal(item["target_mask"], geometry.polygon_to_mask(xb, yb, (9, 8)))
    # the mask metrics take the item's masks directly: identity on the same mask is perfect
    mask = item["source_mask"][None]
    assert metrics.label_transfer_accuracy(mask, mask).item() == 1.0
    assert metrics.localization_error(torch.zeros(1, 2, 10, 12), mask, mask).item() == 0.0


# --------------------------------------------------------------------------------------------
# collate


def test_collate_resizes_images_and_pads_keypoints(tmp_path):
    make_pascal(tmp_path)
    make_tss(tmp_path)
    dataset = benchmarks.PFPascalDataset(tmp_path)
    items = [dataset[0], dataset[1]]
    items[1]["source_keypoints"] = items[1]["source_keypoints"][:, :2]  # a pair with fewer keypoints
    items[1]["target_keypoints"] = items[1]["target_keypoints"][:, :2]
    batch = benchmarks.collate(items, size=(16, 20))
    assert batch["source_image"].shape == (2, 3, 16, 20) and batch["target_image"].shape == (2, 3, 16, 20)
    # align_corners=True: the corner pixels are kept exactly
    assert torch.allclose(batch["source_image"][0, :, 0, 0], items[0]["source_image"][:, 0, 0])
    assert torch.allclose(batch["source_image"][0, :, -1, -1], items[0]["source_image"][:, -1, -1])
    assert batch["source_keypoints"].shape == (2, 2, 3)
    assert batch["source_keypoints"][1].tolist() == [[1.0, 8.0, -1.0], [2.0, 3.0, -1.0]]
    assert batch["source_size"].tolist() == [[10, 14], [8, 8]]  # original sizes, for normalisation
    assert batch["reference_length"].tolist() == [10.0, 7.0]
    assert batch["category"] == ["cat", "dog"] and batch["bbox_from"] == ["annotation", "keypoints"]
    assert batch["class_index"].tolist() == [8, 12]
    # the batch feeds the metrics: identity on identical keypoints is perfect
    valid = geometry.valid_keypoints(batch["source_keypoints"])
    same = metrics.pck(batch["source_keypoints"], batch["source_keypoints"], batch["reference_length"])
    assert same.tolist() == [1.0, 1.0]
    assert valid.sum().item() == 4
    with pytest.raises(ValueError, match="source_image: expected one image size"):
        benchmarks.collate(items)
    tss = benchmarks.TSSDataset(tmp_path, subsets="FG3DCar")
    tss_batch = benchmarks.collate([tss[0], tss[1]], size=8)
    assert isinstance(tss_batch["flow"], list) and tss_batch["flow"][1].shape == (2, 5, 7)
    assert isinstance(tss_batch["target_mask"], list) and tss_batch["flip"].tolist() == [False, False]
    collate = functools.partial(benchmarks.collate, size=12)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)
    assert next(iter(loader))["target_image"].shape == (2, 3, 12, 12)
