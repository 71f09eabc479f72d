"""a2net.train: options and presets, a few steps that lower the loss, the output directory, and
resume after a real SIGKILL giving the weights of an uninterrupted run bit for bit."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from a2net import checkpoint as ckpt
from a2net import cli, geometry, synthetic, train
from a2net.model import build_model, normalize_images

ROOT = Path(__file__).resolve().parents[1]
# A tiny run: 112 px (7x7 feature maps), 2 pairs per step, sharp small resize.
TINY = [
    "--backbone",
    "small_cnn",
    "--image-size",
    "112",
    "--resize",
    "96",
    "128",
    "--batch-size",
    "2",
    "--lr",
    "1e-3",
    "--data",
    "bundled:training",
    "--threads",
    "1",
    "--no-progress",
]


def _options(**overrides):
    parser = argparse.ArgumentParser()
    cli._add_train_arguments(parser)
    args = parser.parse_args(TINY + [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()])
    return train.resolve_options(args, None)


def _metrics(directory):
    return [json.loads(line) for line in (Path(directory) / "metrics.jsonl").read_text().splitlines()]


def test_presets_and_explicit_options():
    parser = argparse.ArgumentParser()
    cli._add_train_arguments(parser)
    demo = train.resolve_options(parser.parse_args(["--preset", "demo"]), None)
    assert demo["backbone"] == "small_cnn" and demo["fine_tune_backbone"] and demo["max_steps"] > 0
    assert tuple(demo["resize"]) == synthetic.matched_resize(demo["image_size"])
    override = train.resolve_options(
        parser.parse_args(["--preset", "demo", "--lr", "0.5", "--no-fine-tune-backbone"]), None
    )
    assert override["lr"] == 0.5 and not override["fine_tune_backbone"] and override["image_size"] == 176
    paper = train.resolve_options(parser.parse_args(["--preset", "paper"]), None)
    assert (
        paper["backbone"],
        paper["backbone_weights"],
        paper["image_size"],
        paper["batch_size"],
        paper["lr"],
        paper["epochs"],
    ) == ("resnet101", "imagenet", 240, 32, 2e-4, 50)
    with pytest.raises(ValueError, match="--data"):
        train._check(paper)  # PASCAL VOC must be given
    stored = {"options": dict(demo), "preset": "demo"}
    with pytest.raises(ValueError, match="--lr"):
        train.resolve_options(parser.parse_args(["--lr", "0.5"]), stored)
    assert train.resolve_options(parser.parse_args(["--max-steps", "9"]), stored)["max_steps"] == 9
    assert train.learning_rate(dict(demo, lr=1.0), 1, 10) == 1.0
    assert train.learning_rate(dict(demo, lr=1.0), 6, 10) == pytest.approx(0.5)
    assert train.learning_rate(paper, 10**6, 10) == 2e-4


def test_a_few_steps_lower_the_loss_and_fill_the_output_dir(tmp_path):
    options = _options(max_steps=24, checkpoint_every=10, seed=3, image_size=128, batch_size=4)
    heldout = synthetic.collate_pairs(
        [
            synthetic.SyntheticPairDataset("bundled:training", "affine", 128, resize=(96, 128), seed=99)[k]
            for k in range(16)
        ]
    )

    def loss_of(model):
        # batch statistics: after 24 steps the BN running averages still lag the moving weights
        model.train()
        with torch.no_grad():
            theta = model(normalize_images(heldout["source"]), normalize_images(heldout["target"]))
        return geometry.transformed_grid_loss(theta, heldout["theta"]).item()

    initial = build_model(
        {"geometric_model": "affine", "backbone": "small_cnn", "image_size": [128, 128]}, backbone_seed=0
    )
    result = train.train(options, tmp_path, progress=False, log=lambda *_: None)
    assert result["step"] == 24
    trained = ckpt.load_model(tmp_path / "last")
    before, after = loss_of(initial), loss_of(trained)
    assert after < 0.5 * before, (before, after)
    records = _metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 25))
    assert set(records[0]) == {"step", "loss", "lr", "pairs_per_s"} and all(r["pairs_per_s"] > 0 for r in records)
    state = json.loads((tmp_path / "last" / "state.json").read_text())
    assert state["step"] == 24 and state["config"] == trained.config and state["options"]["seed"] == 3
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == ["model.safetensors", "optimizer.pt", "state.json"]


def _command(output_dir, *extra):
    return [
        sys.executable,
        "-m",
        "a2net",
        "train",
        *TINY,
        "--checkpoint-every",
        "2",
        "--output-dir",
        str(output_dir),
        *extra,
    ]


def _run(command):
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)


def _checkpoint_step(directory):
    try:
        return json.loads((directory / "last" / "state.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _command(killed, "--max-steps", "10000"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while _checkpoint_step(killed) < 4:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint at step 4 in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stderr.close()
    resumed_from = ckpt.load_checkpoint(killed / "last")["step"]
    assert resumed_from >= 4 and resumed_from % 2 == 0
    final = resumed_from + 3  # an odd step: the last checkpoint is the end-of-run one
    _run(_command(killed, "--max-steps", str(final), "--resume"))
    straight = tmp_path / "straight"
    _run(_command(straight, "--max-steps", str(final)))

    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(killed / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((killed / "last" / "state.json").read_text())["step"] == final
    # one metrics line per step, and the same losses as the uninterrupted run
    records, reference = _metrics(killed), _metrics(straight)
    assert [r["step"] for r in records] == list(range(1, final + 1))
    assert [r["loss"] for r in records] == [r["loss"] for r in reference]
    opt_a = torch.load(straight / "last" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(killed / "last" / "optimizer.pt", weights_only=True)
    for k, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b["state"][k][name]), (k, name)
    assert not any(p.name.startswith(".") for p in killed.iterdir())  # no temp leftovers


def test_resume_refuses_to_change_the_run(tmp_path):
    train.train(_options(max_steps=2, checkpoint_every=2), tmp_path, progress=False, log=lambda *_: None)
    parser = argparse.ArgumentParser()
    cli._add_train_arguments(parser)
    args = parser.parse_args(
        TINY + ["--output-dir", str(tmp_path), "--resume", "--max-steps", "3", "--image-size", "128"]
    )
    with pytest.raises(ValueError, match="--image-size"):
        cli._run_train(args)
    args = parser.parse_args(
        [
            "--output-dir",
            str(tmp_path),
            "--resume",
            "--max-steps",
            "3",
            "--no-progress",
            "--threads",
            str(torch.get_num_threads()),
        ]
    )
    assert cli._run_train(args) == 0
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        cli._run_train(parser.parse_args(["--output-dir", str(tmp_path / "none"), "--resume"]))


def test_epochs_set_the_steps(tmp_path):
    n = len(synthetic.bundled_photos("training"))
    result = train.train(
        _options(epochs=f"{4 / n}", checkpoint_every=100), tmp_path, progress=False, log=lambda *_: None
    )
    assert result["step"] == 2  # 4 images / batch 2
    assert os.path.isfile(tmp_path / "last" / "model.safetensors")
