"""Training for real photo pairs: the near-identity sampler, identity and near-identity shares of the
synthetic pairs, the consistency losses (swap, cycle, self) computed in one forward of
ConsistencyBatch (what DDP and torch.compile wrap), --init-from, and resuming a run saved before
these options existed."""

import argparse
import json

import pytest
import torch

from a2net import checkpoint as ckpt
from a2net import cli, geometry, synthetic, train
from a2net.errors import UsageError
from a2net.model import build_model, normalize_images
from tests.test_evaluate import SIZE, tiny

TINY = ["--backbone", "small_cnn", "--image-size", "112", "--resize", "96", "128", "--batch-size", "2"]
TINY += ["--lr", "1e-3", "--data", "bundled:training", "--threads", "1", "--no-progress"]
NEW = ["--identity-share", "0.2", "--near-identity-share", "0.3", "--swap-weight", "1", "--cycle-weight", "0.5"]
NEW += ["--self-weight", "1"]


def _dataset(**kwargs):
    image = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0))
    return synthetic.SyntheticPairDataset([image], "affine", output_size=16, resize=(32, 40), seed=5, **kwargs)


def _parser():
    parser = argparse.ArgumentParser()
    cli._add_train_arguments(parser)
    return parser


def test_near_identity_thetas_are_small_and_seeded():
    a = geometry.random_near_identity_theta(500, torch.Generator().manual_seed(1), dtype=torch.float64)
    b = geometry.random_near_identity_theta(500, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(a, b) and a.shape == (500, 6)
    linear = a[:, [0, 1, 3, 4]] - torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert linear.abs().max() <= 0.15 * 1 + 0.18 + 0.05  # scale, rotation (sin 10 deg * 1.15), jitter
    assert a[:, [2, 5]].abs().max() <= 0.15
    assert a[:, [2, 5]].abs().max() > 0.1  # the range is used


def test_identity_and_near_identity_shares():
    plain, mixed = _dataset(), _dataset(identity_share=0.2, near_identity_share=0.3)
    kinds = [mixed._kind(k) for k in range(300)]
    assert 0.1 < kinds.count("identity") / 300 < 0.3 and 0.2 < kinds.count("near_identity") / 300 < 0.4
    for k, kind in enumerate(kinds[:40]):
        item = mixed[k]
        if kind == "identity":
            assert torch.equal(item["theta"], torch.tensor([1.0, 0, 0, 0, 1, 0]))
            assert torch.equal(item["source"], item["target"])
        elif kind == "random":  # the authors' draw, as without shares
            assert torch.equal(item["theta"], plain[k]["theta"]) and torch.equal(item["target"], plain[k]["target"])
        else:
            assert (item["theta"][[2, 5]].abs() <= 0.15).all()
    everything = _dataset(identity_share=1.0)
    assert all(torch.equal(everything[k]["source"], everything[k]["target"]) for k in range(3))
    with pytest.raises(ValueError, match="near_identity_share"):
        _dataset(identity_share=0.6, near_identity_share=0.6)
    with pytest.raises(ValueError, match="identity_share"):
        _dataset(identity_share=-0.1)
    with pytest.raises(ValueError, match="affine"):
        synthetic.SyntheticPairDataset([torch.rand(3, 40, 48)], "tps", output_size=16, identity_share=0.1)


def _options(**weights):
    return dict(train.DEFAULTS, **weights)


def test_consistency_loss_terms():
    model = tiny().eval()  # BatchNorm with running statistics: the head's batch composition does not matter
    g = torch.Generator().manual_seed(0)
    source, target = (normalize_images(torch.rand(2, 3, *SIZE, generator=g)) for _ in range(2))
    truth = geometry.random_near_identity_theta(2, g)
    loss_fn = geometry.TransformedGridLoss("affine")

    def loss(**weights):
        options = _options(**weights)
        swap = bool(options["swap_weight"] or options["cycle_weight"])
        thetas = train.ConsistencyBatch(model, swap=swap, self_pairs=bool(options["self_weight"]))(source, target)
        assert thetas.shape == ((1 + swap + 2 * bool(options["self_weight"])) * 2, 6)
        return train.consistency_loss(thetas, truth, options, loss_fn)

    with torch.no_grad():
        ab, ba = model(source, target), model(target, source)
        aa, bb = model(source, source), model(target, target)
        base = loss_fn(ab, truth)
        torch.testing.assert_close(loss(), base)
        torch.testing.assert_close(loss(swap_weight=0.5), base + 0.5 * loss_fn(ba, geometry.invert_affine(truth)))
        identity = geometry.identity_theta("affine", 2)
        cycle = base + 2.0 * loss_fn(geometry.compose_affine(ab, ba), identity)
        torch.testing.assert_close(loss(cycle_weight=2.0), cycle)
        self_ = base + loss_fn(torch.cat((aa, bb)), torch.cat((identity, identity)))
        torch.testing.assert_close(loss(self_weight=1.0), self_)
    model.train()
    loss(swap_weight=1, cycle_weight=1, self_weight=1).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_with_the_new_options_and_resuming_an_older_run(tmp_path):
    parser = _parser()
    options = train.resolve_options(parser.parse_args(TINY + ["--max-steps", "2"] + NEW), None)
    result = train.train(options, tmp_path / "run", progress=False, log=lambda *a: None)
    assert result["step"] == 2
    state = json.loads((tmp_path / "run" / "last" / "state.json").read_text())
    assert state["options"]["swap_weight"] == 1 and state["options"]["near_identity_share"] == 0.3
    # a run saved before these options existed resumes with their defaults (off)
    old = dict(state)
    added = ("identity_share", "near_identity_share", "swap_weight", "cycle_weight", "self_weight", "init_from")
    old["options"] = {k: v for k, v in state["options"].items() if k not in added}
    (tmp_path / "run" / "last" / "state.json").write_text(json.dumps(old))
    resumed = train.resolve_options(parser.parse_args(["--max-steps", "3"]), old)
    assert resumed["swap_weight"] == 0.0 and resumed["identity_share"] == 0.0 and resumed["init_from"] is None
    assert train.train(resumed, tmp_path / "run", resume=True, progress=False, log=lambda *a: None)["step"] == 3
    with pytest.raises(UsageError, match="--swap-weight"):
        train.train(
            dict(options, geometric_model="tps", identity_share=0, near_identity_share=0),
            tmp_path / "tps",
            progress=False,
            log=lambda *a: None,
        )


def test_init_from_starts_from_the_weights_of_a_checkpoint(tmp_path):
    config = {"geometric_model": "affine", "backbone": "small_cnn", "image_size": [112, 112]}
    start = build_model(dict(config, freeze_backbone=False), backbone_seed=7)
    ckpt.save_checkpoint(tmp_path / "start", start, step=5)
    parser = _parser()
    args = ["--fine-tune-backbone", "--max-steps", "1", "--lr", "1e-12", "--init-from", str(tmp_path / "start")]
    options = train.resolve_options(parser.parse_args(TINY + args), None)
    messages = []
    train.train(options, tmp_path / "run", progress=False, log=messages.append)
    assert "starting from the weights of" in messages[0]
    trained = ckpt.load_model(tmp_path / "run" / "last")
    for (name, a), b in zip(trained.named_parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)  # one step at lr 1e-12
    with pytest.raises(UsageError, match="--init-from.*image_size"):
        train.train(dict(options, image_size=128), tmp_path / "other", progress=False, log=lambda *a: None)


@pytest.mark.slow
def test_compiled_consistency_batch_matches_eager():
    """torch.compile(fullgraph=True) of the module DDP wraps: the pair, the swapped pair and the self
    pairs in one graph, forward and backward as in eager mode (the CPU path)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model({"geometric_model": "affine", "backbone": "small_cnn", "image_size": [112, 112]}).eval()
    net = train.ConsistencyBatch(model, swap=True, self_pairs=True)
    g = torch.Generator().manual_seed(2)
    source, target = (normalize_images(torch.rand(2, 3, 112, 112, generator=g)) for _ in range(2))
    eager = net(source, target)
    compiled = torch.compile(net, fullgraph=True)(source, target)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    weight = model.FeatureRegression.oac.weight
    g_e = torch.autograd.grad(eager.square().sum(), weight)[0]
    g_c = torch.autograd.grad(compiled.square().sum(), weight)[0]
    torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-6)
