"""a2net.synthetic: synthetic pairs (values, determinism, worker safety), theta CSVs, the bundled
split, the held-out pairs and their PCK."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from a2net import geometry, metrics, synthetic
from a2net.images import bundled_names


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    _write_png(root / "a.png", rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))
    _write_png(root / "sub" / "b.PNG", rng.integers(0, 255, (36, 30, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(root / "sub" / "c.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def _ramp(h=48, w=64):
    """A smooth image whose pixel values encode their position (x in channel 0, y in channel 1)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack((xs, ys, torch.full_like(xs, 0.5)))


def test_list_images_recursive_any_case(folder):
    listed = synthetic.list_images(folder)
    assert [p.relative_to(folder).as_posix() for p in listed] == ["a.png", "sub/b.PNG", "sub/c.jpg"]
    with pytest.raises(FileNotFoundError, match="folder"):
        synthetic.list_images(folder / "missing")


def test_item_is_the_synthetic_pair_of_its_theta():
    image = _ramp()
    ds = synthetic.SyntheticPairDataset([image], "affine", output_size=(20, 24), resize=(48, 64), seed=3)
    item = ds[5]
    assert item["source"].shape == (3, 20, 24) and item["theta"].shape == (6,) and item["index"] == 5
    # the same pair, rebuilt from the item's theta with geometry.synthetic_pair
    src, tgt = geometry.synthetic_pair(image[None], item["theta"][None], (20, 24))
    torch.testing.assert_close(item["source"], src[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(item["target"], tgt[0], atol=1e-6, rtol=0)
    # the source is the central 9/16 of the image: on the ramp, x spans [0.5 - 9/32, 0.5 + 9/32]
    assert item["source"][0, 0, 0].item() == pytest.approx(0.5 - 9 / 32, abs=0.02)
    assert item["source"][0, 0, -1].item() == pytest.approx(0.5 + 9 / 32, abs=0.02)
    # and the theta lies in the authors' range (|t| <= 0.5, entries within 1.5)
    assert item["theta"].abs()[[2, 5]].max() <= 0.5 and item["theta"].abs().max() <= 1.5


def test_stream_is_a_function_of_seed_and_index(folder):
    a = synthetic.SyntheticPairDataset(folder, "tps", output_size=16, resize=(32, 40), seed=7)
    b = synthetic.SyntheticPairDataset(folder, "tps", output_size=16, resize=(32, 40), seed=7)
    c = synthetic.SyntheticPairDataset(folder, "tps", output_size=16, resize=(32, 40), seed=8)
    order = [4, 0, 9, 4]
    items_a = [a[k] for k in order]
    items_b = [b[k] for k in reversed(order)][::-1]  # another access order: same items
    for x, y in zip(items_a, items_b, strict=True):
        assert torch.equal(x["theta"], y["theta"]) and torch.equal(x["target"], y["target"]) and x["name"] == y["name"]
    assert not torch.equal(a[4]["theta"], c[4]["theta"])
    assert not torch.equal(a[1]["theta"], a[2]["theta"])
    # every epoch visits every image once
    n = len(a)
    for epoch in range(3):
        assert sorted(a[epoch * n + i]["name"] for i in range(n)) == sorted(a.names)
    # pickling (DataLoader workers) keeps the stream
    clone = pickle.loads(pickle.dumps(a))
    assert torch.equal(clone[9]["target"], items_a[2]["target"])


def test_dataloader_workers_give_the_same_batches(folder):
    ds = synthetic.SyntheticPairDataset(folder, "affine", output_size=16, resize=(32, 40), seed=1, augment=True)
    sampler = synthetic.StepBatchSampler(batch_size=2, start_step=1, max_steps=3)
    kwargs = dict(batch_sampler=sampler, collate_fn=synthetic.collate_pairs)
    main = list(torch.utils.data.DataLoader(ds, **kwargs))
    workers = list(torch.utils.data.DataLoader(ds, num_workers=2, **kwargs))
    assert len(main) == 3
    for x, y in zip(main, workers, strict=True):
        assert x["index"].tolist() == y["index"].tolist()
        assert torch.equal(x["source"], y["source"]) and torch.equal(x["theta"], y["theta"])


def test_step_batch_sampler_resume_and_ranks():
    full = list(synthetic.StepBatchSampler(3, 1, 4))
    assert full == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert list(synthetic.StepBatchSampler(3, 3, 4)) == full[2:]
    ranks = [list(synthetic.StepBatchSampler(2, 1, 2, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0] == [[0, 2], [4, 6]] and ranks[1] == [[1, 3], [5, 7]]
    with pytest.raises(ValueError, match="rank"):
        synthetic.StepBatchSampler(2, 1, 2, rank=2, world_size=2)


def test_theta_csv_authors_order(tmp_path, folder):
    csv_path = tmp_path / "train.csv"
    # the authors' affine columns: a22, a21, a12, a11, ty, tx
    csv_path.write_text("image,A22,A21,A12,A11,ty,tx\na.png,0.9,0.1,-0.2,1.1,0.3,-0.4\nsub/c.jpg,1,0,0,1,0,0\n")
    names, thetas = synthetic.read_theta_csv(csv_path, "affine")
    assert names == ["a.png", "sub/c.jpg"]
    torch.testing.assert_close(thetas[0], torch.tensor([1.1, -0.2, -0.4, 0.1, 0.9, 0.3], dtype=torch.float64))
    ds = synthetic.SyntheticPairDataset(folder, "affine", output_size=16, resize=(32, 40), thetas=csv_path)
    assert len(ds) == 2
    item = next(ds[k] for k in range(2) if ds[k]["name"] == "a.png")
    torch.testing.assert_close(item["theta"], thetas[0].float())
    tps_csv = tmp_path / "tps.csv"
    tps_csv.write_text("a.png," + ",".join(["0.5"] * 18) + "\n")
    assert synthetic.read_theta_csv(tps_csv, "tps")[1].shape == (1, 18)
    with pytest.raises(ValueError, match="expected 6 numbers"):
        synthetic.read_theta_csv(tps_csv, "affine")
    (tmp_path / "bad.csv").write_text("missing.png,1,0,0,1,0,0\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        synthetic.SyntheticPairDataset(folder, "affine", thetas=tmp_path / "bad.csv")


def test_bad_arguments(folder):
    with pytest.raises(ValueError, match="geometric_model"):
        synthetic.SyntheticPairDataset(folder, "homography")
    with pytest.raises(ValueError, match="images"):
        synthetic.SyntheticPairDataset([torch.rand(1, 8, 8)])
    with pytest.raises(IndexError, match="index"):
        synthetic.SyntheticPairDataset(folder)[-1]
    with pytest.raises(ValueError, match="split"):
        synthetic.bundled_photos("test")


def test_bundled_split_is_documented_and_disjoint():
    names = set(bundled_names())
    training, heldout = set(synthetic.BUNDLED_TRAINING), set(synthetic.BUNDLED_HELDOUT)
    assert not training & heldout and not (training | heldout) & set(synthetic.BUNDLED_EXCLUDED)
    assert set(synthetic.bundled_photos("all")) <= names
    assert {"motorcycle_left", "motorcycle_right"} <= heldout  # one scene: one side of the split
    assert synthetic.bundled_photos("training") == [n for n in synthetic.BUNDLED_TRAINING if n in names]
    for name in synthetic.bundled_photos("heldout"):
        assert f"``{name}``" in synthetic.__doc__


def test_heldout_pairs_are_fixed_and_identity_is_the_baseline():
    a = synthetic.heldout_synthetic_pairs("affine", n_pairs=6, image_size=32)
    b = synthetic.heldout_synthetic_pairs("affine", n_pairs=6, image_size=32)
    assert a["source"].shape == (6, 3, 32, 32) and a["theta"].shape == (6, 6)
    assert torch.equal(a["target"], b["target"]) and set(a["name"]) <= set(synthetic.BUNDLED_HELDOUT)
    truth = metrics.synthetic_pck(a["theta"], a["theta"], 32)
    assert torch.equal(truth, torch.ones(6, dtype=torch.float64))
    identity = metrics.synthetic_pck(geometry.identity_theta("affine", 6), a["theta"], 32)
    assert 0 <= identity.mean() < 0.5
