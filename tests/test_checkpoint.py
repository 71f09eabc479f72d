"""a2net.checkpoint: round trips (stored and seeded backbones), crash safety of the swap, clear
errors, the embedded demo checkpoint."""

import json
import os

import pytest
import torch

from a2net import checkpoint as ckpt
from a2net.model import BACKBONES, backbone_sha256, build_model, small_cnn

SMALL = {"geometric_model": "affine", "backbone": "small_cnn", "image_size": [112, 112]}


def _trained(config=SMALL, seed=0):
    model = build_model(config, backbone_seed=seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # moves the head, the BN statistics and the optimizer state
        loss = model(x, x.flip(0)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(SMALL, backbone_seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_model(SMALL, backbone_seed=5)
    _assert_same_weights(a, b)
    c = build_model(SMALL, backbone_seed=6)
    assert backbone_sha256(a) == a.backbone_init["sha256"] != backbone_sha256(c)
    assert a.config["backbone"] == "small_cnn"
    with pytest.raises(ValueError, match="backbone"):
        build_model(dict(SMALL, backbone="alexnet"))


def test_round_trip_model_and_optimizer(tmp_path):
    model, optimizer = _trained()
    x = torch.randn(1, 3, 112, 112)
    path = ckpt.save_checkpoint(tmp_path / "last", model, optimizer, step=7, extra={"options": {"lr": 0.01}})
    assert sorted(os.listdir(path)) == ["model.safetensors", "optimizer.pt", "state.json"]
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 7 and state["config"] == model.config and state["options"] == {"lr": 0.01}
    assert state["backbone"]["stored"]  # small: stored whatever the seed
    loaded = ckpt.load_model(path)
    _assert_same_weights(model, loaded)
    assert not loaded.training and loaded.checkpoint_state["step"] == 7
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, x), loaded(x, x))
    # also through the model file, and into a given model + optimizer
    _assert_same_weights(model, ckpt.load_model(path / "model.safetensors"))
    fresh = build_model(SMALL, backbone_seed=9)
    fresh_opt = torch.optim.Adam([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    state = ckpt.load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert state["step"] == 7 and state["model"] is fresh
    _assert_same_weights(model, fresh)
    saved, restored = optimizer.state_dict(), fresh_opt.state_dict()
    for k, v in saved["state"].items():
        for name in v:
            assert torch.equal(v[name], restored["state"][k][name])


def test_seeded_backbone_is_not_stored_and_is_checked(tmp_path, monkeypatch):
    model, _ = _trained()
    path = ckpt.save_checkpoint(tmp_path / "ck", model, store_backbone=False)
    state = json.loads((path / "state.json").read_text())
    assert state["backbone"] == {"stored": False, "seed": 0, "sha256": backbone_sha256(model)}
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert not any(k.startswith("FeatureExtraction.") for k in f.keys())
    _assert_same_weights(model, ckpt.load_model(path))
    # a PyTorch whose initialisation draws other numbers: refused with an explanation
    original = small_cnn

    def other_init():
        net = original()
        with torch.no_grad():
            net[0].weight.mul_(1.0001)
        return net

    monkeypatch.setitem(BACKBONES, "small_cnn", other_init)
    with pytest.raises(RuntimeError, match="initialises the backbone differently"):
        ckpt.load_model(path)


def test_large_random_backbone_is_stored_by_seed(tmp_path):
    config = {"geometric_model": "tps", "backbone": "vgg16", "image_size": [112, 112]}
    model = build_model(config, backbone_seed=3)
    path = ckpt.save_checkpoint(tmp_path / "vgg", model)
    assert (path / "model.safetensors").stat().st_size < 4 * 2**20  # the head only (VGG-16 alone: 29 MB)
    _assert_same_weights(model, ckpt.load_model(path))
    with torch.no_grad():
        next(model.FeatureExtraction.parameters()).add_(1)  # fine-tuned: now it must be stored
    with pytest.raises(ValueError, match="store_backbone"):
        ckpt.save_checkpoint(tmp_path / "vgg", model, store_backbone=False)


def test_a_crash_at_any_point_of_the_swap_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    first, _ = _trained(seed=0)
    second, _ = _trained(seed=1)
    target = tmp_path / "last"
    ckpt.save_checkpoint(target, first, step=1)
    real_replace = os.replace
    for crash_at in range(2):  # before the first rename, between the two renames
        calls = []

        def failing_replace(src, dst, calls=calls, crash_at=crash_at):
            calls.append(dst)
            if len(calls) > crash_at:
                raise KeyboardInterrupt("killed")
            return real_replace(src, dst)

        monkeypatch.setattr(ckpt.os, "replace", failing_replace)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save_checkpoint(target, second, step=2)
        monkeypatch.setattr(ckpt.os, "replace", real_replace)
        loaded = ckpt.load_model(target)  # the previous checkpoint, whatever the crash left
        assert loaded.checkpoint_state["step"] == 1
        _assert_same_weights(first, loaded)
        assert ckpt.load_checkpoint(target)["step"] == 1
        ckpt.save_checkpoint(target, first, step=1)  # a later save cleans up and succeeds
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    ckpt.save_checkpoint(target, second, step=2)
    assert ckpt.load_model(target).checkpoint_state["step"] == 2


def test_clear_errors(tmp_path):
    model, _ = _trained()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.load_model(tmp_path / "nothing")
    with pytest.raises(ValueError, match="reserved"):
        ckpt.save_checkpoint(tmp_path / "x", model, extra={"step": 3})
    with pytest.raises(TypeError):
        ckpt.save_checkpoint(tmp_path / "x", model, extra={"bad": object()})
    assert not (tmp_path / "x").exists()
    from a2net import A2Net

    custom = A2Net("affine", backbone=small_cnn(), image_size=112)
    with pytest.raises(ValueError, match="custom"):
        ckpt.save_checkpoint(tmp_path / "x", custom)
    path = ckpt.save_checkpoint(tmp_path / "y", model)
    other = build_model(dict(SMALL, geometric_model="tps"))
    with pytest.raises(ValueError, match="config"):
        ckpt.load_checkpoint(path, model=other)
    with pytest.raises(FileNotFoundError, match="optimizer"):
        ckpt.load_checkpoint(path, optimizer=torch.optim.Adam(model.parameters()))


def test_default_checkpoint(monkeypatch, tmp_path):
    if ckpt.DEFAULT_CHECKPOINT.is_file():
        model = ckpt.load_default_model()
        assert model.config["backbone"] == "small_cnn" and not model.training
        assert ckpt.DEFAULT_CHECKPOINT.stat().st_size < 8 * 2**20
        assert model.checkpoint_state["preset"] == "demo"
        # the SHA-256 of its tensors, its inference options and history, no path of the machine it was trained on
        from safetensors import safe_open

        with safe_open(str(ckpt.DEFAULT_CHECKPOINT), framework="pt") as f:
            assert len(f.metadata()["a2net_sha256"]) == 64
        state = model.checkpoint_state
        assert state["inference"] == {"iterations": 2, "symmetric": True, "refine": False} and state["history"]
        assert not [v for v in state["options"].values() if isinstance(v, str) and v.startswith(("/", "~"))]
    monkeypatch.setattr(ckpt, "DEFAULT_CHECKPOINT", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="a2net train --preset demo"):
        ckpt.load_default_model()


def test_save_model_file_writes_one_self_contained_file(tmp_path):
    model, _ = _trained()
    extra = {"inference": {"iterations": 2, "symmetric": True, "refine": False}, "history": "two steps"}
    path = ckpt.save_model_file(tmp_path / "models" / "small.safetensors", model, step=2, extra=extra)
    assert sorted(p.name for p in path.parent.iterdir()) == ["small.safetensors"]  # no temporary file left
    loaded = ckpt.load_model(path)
    _assert_same_weights(loaded, model)
    assert loaded.checkpoint_state["step"] == 2 and loaded.checkpoint_state["history"] == "two steps"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        ckpt.load_model(path)
    with pytest.raises(ValueError, match="model.safetensors"):
        ckpt.save_model_file(tmp_path / "model.safetensors", model)


def test_corrupted_checkpoints_are_named_and_refused(tmp_path):
    from a2net.errors import InputError, InputNotFoundError

    model, optimizer = _trained()
    good = ckpt.save_checkpoint(tmp_path / "good", model, optimizer, step=4)
    assert ckpt.read_state(good)["step"] == 4

    def copy(name):
        directory = tmp_path / name
        directory.mkdir()
        for file in good.iterdir():
            (directory / file.name).write_bytes(file.read_bytes())
        return directory

    # a flipped bit anywhere in the tensors: the stored SHA-256 no longer matches
    flipped = copy("flipped")
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-7] ^= 0x01  # the lowest mantissa bit of one weight: still finite, still plausible
    (flipped / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"flipped/model.safetensors' is corrupted: .*SHA-256"):
        ckpt.load_model(flipped)
    truncated = copy("truncated")
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"truncated/model.safetensors' is corrupted or truncated"):
        ckpt.load_model(truncated)
    # non-finite weights (a file without a checksum, saved before it existed, is still checked for them)
    with torch.no_grad():
        model.FeatureRegression.linear.bias[1] = float("inf")
    nan = ckpt.save_checkpoint(tmp_path / "nan", model, step=4)
    with pytest.raises(InputError, match=r"'FeatureRegression.linear.bias' has 1 NaN/inf"):
        ckpt.load_model(nan)
    # state.json: not JSON, not the expected object
    for text, match in [
        (b"\xff\x00{", "state.json' is corrupted \\(not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({"format": ckpt.FORMAT, "step": -1, "config": {}, "backbone": {}}).encode(), "step -1"),
    ]:
        broken = copy(f"state{len(list(tmp_path.iterdir()))}")
        (broken / "state.json").write_bytes(text)
        with pytest.raises(InputError, match=match):
            ckpt.load_model(broken)
    # a config that builds other shapes than the stored tensors
    other = copy("other")
    state = json.loads((other / "state.json").read_text())
    state["config"]["channels"] = 64
    (other / "state.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match=r"does not fit the model its config describes: tensor .* has shape"):
        ckpt.load_model(other)
    # a damaged optimizer file, when resuming
    damaged = copy("damaged")
    (damaged / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"optimizer: .*damaged/optimizer.pt' is corrupted"):
        ckpt.load_checkpoint(damaged, optimizer=torch.optim.Adam(model.parameters()))
    # missing or empty: FileNotFoundError-compatible, saying what was found
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="it is empty"):
        ckpt.load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.read_state(tmp_path / "absent")
