"""Training with several processes (`torchrun --nproc_per_node 2 -m a2net train ...`, gloo on CPU):
the ranks hold identical parameters after the steps, the result is that of one process with the
same global batch, only rank 0 writes the checkpoint and the metrics, and `--resume` continues a
distributed run. The runs use the demo preset's options: identity and near-identity pairs and the
consistency losses, computed in the one forward DistributedDataParallel wraps."""

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from a2net import checkpoint as ckpt
from a2net import cli, train
from tests.test_benchmarks import write_image

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Per process: 2 pairs a step, 112 px; the demo preset (its small backbone trained with the head:
# BatchNorm layers in training mode, whose statistics must be those of the global batch; its share of
# identity pairs and its consistency losses), at a constant learning rate so that a run resumed with
# a longer --max-steps follows the uninterrupted one.
TINY = ["--preset", "demo", "--image-size", "112", "--resize", "96", "128", "--lr-schedule", "constant"]
TINY += ["--lr", "1e-4", "--threads", "1", "--no-progress", "--seed", "5"]

# `python -m a2net train ...` in a torchrun process (runpy: the module's own entry point), recording
# that rank's gradients at every optimiser step and its parameters and buffers after the run (only
# rank 0 writes a checkpoint, so this is how the ranks are compared).
DRIVER = r"""
import os, runpy, sys
import torch
from a2net import train

out, sys.argv = sys.argv[1], ["a2net", *sys.argv[2:]]
models, grads = [], []
build = train.build_model
train.build_model = lambda *args, **kwargs: models.append(build(*args, **kwargs)) or models[-1]


class Recording(torch.optim.Adam):
    def step(self, closure=None):
        grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return super().step(closure)


torch.optim.Adam = Recording
try:
    runpy.run_module("a2net", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
rank = os.environ["RANK"]
torch.save({k: v.detach().clone() for k, v in models[0].state_dict().items()}, f"{out}/state{rank}.pt")
torch.save(grads, f"{out}/grads{rank}.pt")
sys.exit(code)
"""


def torchrun(states: Path, *args) -> str:
    """``a2net train *args`` on 2 processes (gloo); each rank's state and gradients go to ``states``."""
    states.mkdir(parents=True, exist_ok=True)
    driver = states / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [*TORCHRUN, str(driver), str(states), "train", *map(str, args)]
    process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process.stdout


def steps(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def assert_same_ranks(states: Path) -> dict:
    rank0, rank1 = torch.load(states / "state0.pt"), torch.load(states / "state1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # gradients all-reduced, BatchNorm statistics of the global batch: the same bits
        assert torch.equal(rank0[key], rank1[key]), key
    for step0, step1 in zip(torch.load(states / "grads0.pt"), torch.load(states / "grads1.pt"), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(step0, step1, strict=True))
    return rank0


@pytest.mark.slow
def test_two_processes_match_one_with_the_global_batch_and_resume(tmp_path, monkeypatch):
    data = tmp_path / "images"
    for i in range(6):
        write_image(data / f"{i}.png", 150, 200, seed=i)
    tiny = TINY + ["--data", str(data)]
    run = tmp_path / "run"
    first = torchrun(tmp_path / "first", *tiny, "--batch-size", "2", "--max-steps", "2", "--output-dir", run)
    assert first.count("done: step 2") == 1 and "batch 2x2" in first  # rank 0 alone reports
    assert sorted(p.name for p in run.iterdir()) == ["last", "metrics.jsonl"]  # rank 0 alone writes
    assert [r["step"] for r in steps(run)] == [1, 2]
    options = ckpt.read_state(run / "last")["options"]
    assert options["identity_share"] > 0 and all(options[k] > 0 for k in train.CONSISTENCY_WEIGHTS)
    assert_same_ranks(tmp_path / "first")

    resumed = torchrun(tmp_path / "resumed", "--output-dir", run, "--resume", "--max-steps", "3")
    assert resumed.count("done: step 3") == 1 and "steps 3..3" in resumed
    assert sorted(p.name for p in run.iterdir()) == ["last", "metrics.jsonl"]
    assert [r["step"] for r in steps(run)] == [1, 2, 3]
    state = assert_same_ranks(tmp_path / "resumed")
    saved = ckpt.load_model(run / "last").state_dict()
    assert all(torch.equal(saved[key], value) for key, value in state.items())

    # one process with the global batch of 4, uninterrupted, its gradients recorded
    grads = []

    class Recording(torch.optim.Adam):
        def step(self, closure=None):
            grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    parser = argparse.ArgumentParser()
    cli._add_train_arguments(parser)
    args = parser.parse_args(tiny + ["--batch-size", "4", "--max-steps", "3"])
    single = tmp_path / "single"
    train.train(train.resolve_options(args, None), single, progress=False, log=lambda *_: None)
    # The first step's gradients, all-reduced over the 2 ranks, are those of the one process: within
    # float reordering (2e-5 of each tensor's norm), or noise for the parameters whose gradient is
    # 0 in exact arithmetic (a bias before a BatchNorm: norms ~1e-5 against ~1 to 100 for the others).
    for a, b in zip(torch.load(tmp_path / "first" / "grads0.pt")[0], grads[0], strict=True):
        assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-4, (tuple(b.shape), float(b.norm()))
    # Later steps agree less closely: Adam divides each gradient element by its own magnitude, so
    # float noise in near-zero elements moves weights by up to the learning rate, and this training
    # amplifies it step by step. Two single-process runs that differ only in their thread count
    # diverge as much (measured at lr 1e-4: 1e-6, 1e-4, 2e-4 over 3 steps; 10x more at lr 1e-3). A
    # resume on another step's data would be off by tens of percent.
    losses, expected = [r["loss"] for r in steps(run)], [r["loss"] for r in steps(single)]
    for loss, reference, tolerance in zip(losses, expected, (1e-5, 1e-3, 3e-3), strict=True):
        assert loss == pytest.approx(reference, rel=tolerance)


def test_global_batch_norm_is_batch_norm_on_one_process(tmp_path):
    """The all-reduce BatchNorm of the CPU path, in a group of one process: BatchNorm2d's output,
    gradients and running statistics (training), and its output in eval mode."""
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        reference = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, bias=False), torch.nn.BatchNorm2d(5), torch.nn.ReLU())
        with torch.no_grad():
            reference[1].weight.uniform_(0.5, 1.5)
            reference[1].bias.uniform_(-0.5, 0.5)
        synced = copy.deepcopy(reference)
        train._sync_batch_norm(synced, torch.device("cpu"))
        assert type(synced[1]).__name__ == "_GlobalBatchNorm" and synced[0].weight is not reference[0].weight
        x = torch.randn(6, 3, 9, 8, generator=torch.Generator().manual_seed(0))
        for _ in range(2):  # two updates of the running statistics
            out, expected = synced(x), reference(x)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
            out.square().sum().backward()
            expected.square().sum().backward()
        for a, b in zip(synced.parameters(), reference.parameters(), strict=True):
            # float reordering (no bias before the BatchNorm: its gradient would be 0 plus noise)
            assert float((a.grad - b.grad).norm()) <= 1e-5 * float(b.grad.norm())
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(synced.state_dict()[key], value, rtol=1e-5, atol=1e-6)
        synced.eval(), reference.eval()
        torch.testing.assert_close(synced(x), reference(x), rtol=1e-5, atol=1e-6)
    finally:
        torch.distributed.destroy_process_group()
