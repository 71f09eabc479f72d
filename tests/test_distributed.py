"""Training with several processes (`torchrun --nproc_per_node 2 -m a2net train ...`, gloo on CPU):
the ranks hold identical parameters after the steps, the result is that of one process with the
same global batch, only rank 0 writes the checkpoint and the metrics, and `--resume` continues a
distributed run."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from a2net import checkpoint as ckpt
from a2net import cli, train

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Per process: 2 pairs a step, 112 px; the demo's small backbone, trained with the head (BatchNorm
# layers in training mode: the statistics must be those of the global batch).
TINY = ["--backbone", "small_cnn", "--fine-tune-backbone", "--image-size", "112", "--resize", "96", "128"]
TINY += ["--lr", "1e-3", "--data", "bundled:training", "--threads", "1", "--no-progress", "--seed", "5"]

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
    run = tmp_path / "run"
    first = torchrun(tmp_path / "first", *TINY, "--batch-size", "2", "--max-steps", "2", "--output-dir", run)
    assert first.count("done: step 2") == 1 and "batch 2x2" in first  # rank 0 alone reports
    assert sorted(p.name for p in run.iterdir()) == ["last", "metrics.jsonl"]  # rank 0 alone writes
    assert [r["step"] for r in steps(run)] == [1, 2]
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
    args = parser.parse_args(TINY + ["--batch-size", "4", "--max-steps", "3"])
    single = tmp_path / "single"
    train.train(train.resolve_options(args, None), single, progress=False, log=lambda *_: None)
    # The first step's gradients, all-reduced over the 2 ranks, are those of the one process: within
    # float reordering (2e-5 of each tensor's norm), or noise for the parameters whose gradient is
    # 0 in exact arithmetic (a bias before a BatchNorm: norms ~1e-5 against ~1 to 100 for the others).
    for a, b in zip(torch.load(tmp_path / "first" / "grads0.pt")[0], grads[0], strict=True):
        assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-4, (tuple(b.shape), float(b.norm()))
    # Adam divides each gradient element by its own magnitude, so near-zero elements move by up to
    # the learning rate whatever their float noise: later steps agree less closely than the first
    # (measured: 1e-6, 5e-5, 6e-4). A wrong resume (another step's data, lost Adam moments) is far off.
    losses, expected = [r["loss"] for r in steps(run)], [r["loss"] for r in steps(single)]
    for loss, reference, tolerance in zip(losses, expected, (1e-5, 5e-4, 5e-3), strict=True):
        assert loss == pytest.approx(reference, rel=tolerance)
