"""Real photos with a known answer: the stereo pair's ground truth from the disparity of its left
view, the self-alignment displacement, both evaluations with fixed thetas, `a2net eval --benchmark
stereo-demo` (tables and JSON), and `a2net demo` with the embedded model (its output, its figure,
and the goals the embedded model must meet)."""

import json
import math

import numpy as np
import pytest
import torch

from a2net import benchmarks, cli, evaluate, metrics
from tests.test_evaluate import tiny

pytest.importorskip("skimage")

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_stereo_correspondences_follow_the_left_disparity():
    from skimage.data import stereo_motorcycle

    _, _, disparity = stereo_motorcycle()
    pair = benchmarks.stereo_pair(n_points=500, seed=3)
    source, target = pair["source_points"], pair["target_points"]
    assert source.shape == target.shape == (2, 500) and source.dtype == torch.float64
    assert pair["source"].shape == pair["target"].shape == (3, 500, 741)
    # left (x, y) -> right (x - d, y), 1-based pixels: column c is x = c + 1
    cols, rows = source[0].long() - 1, source[1].long() - 1
    d = torch.from_numpy(disparity[rows.numpy(), cols.numpy()].astype(np.float64))
    assert torch.isfinite(d).all()
    torch.testing.assert_close(target[0], source[0] - d)
    assert torch.equal(target[1], source[1])
    assert (target[0] >= 1).all()
    again = benchmarks.stereo_pair(n_points=500, seed=3)
    assert torch.equal(again["target_points"], target)
    every = benchmarks.stereo_pair(n_points=None)
    inside = np.isfinite(disparity) & (np.arange(1, 742)[None, :] - disparity >= 1)
    assert every["source_points"].shape[1] == int(inside.sum())
    with pytest.raises(ValueError, match="n_points"):
        benchmarks.stereo_pair(n_points=0)


def test_self_alignment_displacement():
    identity = torch.tensor([IDENTITY])
    assert float(metrics.self_alignment_displacement(identity, (300, 400)).abs().max()) == 0
    # a shift of 0.1 (normalised) moves every point by 0.05 * (W - 1) pixels
    shift = torch.tensor([[1.0, 0.0, 0.1, 0.0, 1.0, 0.0]])
    moved = metrics.self_alignment_displacement([shift], (300, 401), grid_size=3)
    expected = torch.full((1, 9), 20.0 * 100 / math.hypot(300, 401), dtype=torch.float64)
    torch.testing.assert_close(moved, expected)


def test_evaluations_with_fixed_thetas():
    identity = evaluate.evaluate_stereo(tiny(theta=IDENTITY), n_points=200)
    assert identity["mean_error"] == pytest.approx(identity["identity"]["mean_error"], rel=1e-5)
    assert identity["PCK@0.05"] == identity["identity"]["PCK@0.05"] and identity["points"] == 200
    # the mean disparity as a shift: the source x is the target x + d, i.e. +2d/(W-1) normalised
    shifted = evaluate.evaluate_stereo(tiny(theta=[1.0, 0.0, 0.09, 0.0, 1.0, 0.0]), n_points=200)
    assert shifted["mean_error"] < 0.6 * shifted["identity"]["mean_error"] and shifted["PCK@0.05"] > 0.9
    selfs = evaluate.evaluate_self_alignment(tiny(theta=IDENTITY), names=["coins"])
    assert selfs["photos"]["coins"] == {"mean": 0.0, "max": 0.0} and selfs["worst_mean"] == 0.0
    assert selfs["worst"] == "coins" and selfs["goal"] == evaluate.SELF_ALIGNMENT_GOAL


def test_eval_stereo_demo_prints_the_three_tables_and_writes_json(tmp_path, capsys, monkeypatch):
    import a2net.inference

    monkeypatch.setattr(a2net.inference, "load_aligner", lambda **kwargs: tiny(theta=[1.0, 0.0, 0.09, 0.0, 1.0, 0.0]))
    out = tmp_path / "stereo.json"
    parser = cli._build_parser(["eval"])
    args = parser.parse_args(["eval", "--benchmark", "stereo-demo", "--pairs", "3", "--output", str(out)])
    assert cli._run_eval(args) == 0
    printed = capsys.readouterr().out
    for words in ("stereo pair", "identity (baseline)", "coins", "all 16 photos", "goal", "PCK@0.15", "wrote"):
        assert words in printed, words
    report = json.loads(out.read_text())
    assert report["benchmark"] == "stereo-demo" and report["inference"] == {"affine": a2net.inference.DEFAULT_INFERENCE}
    stereo = report["stereo"]["affine"]
    assert set(stereo) >= {"mean_error", "PCK@0.05", "PCK@0.1", "identity", "points", "seconds", "theta"}
    assert stereo["mean_error"] < stereo["identity"]["mean_error"]
    assert len(report["self_alignment"]["affine"]["photos"]) == 16
    assert report["modes"]["affine"]["pairs"] == 3 and "identity" in report["modes"]["affine"]["baseline"]
    # without --output: the tables only
    args = parser.parse_args(["eval", "--benchmark", "stereo-demo", "--pairs", "1", "--iterations", "2"])
    assert cli._run_eval(args) == 0
    assert "wrote" not in capsys.readouterr().out


def test_demo_prints_the_checks_and_writes_the_stereo_figure(tmp_path, capsys):
    out = tmp_path / "demo" / "alignment.png"
    assert cli.main(["demo", "--pairs", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("embedded model: demo_affine.safetensors") and "2000 steps" in lines[0]
    assert "1 thread" in lines[0] and "iterations 2, symmetric True, refine False" in lines[1]
    order = [printed.index(w) for w in ("stereo pair", "aligned onto itself", "held-out synthetic", "figure:")]
    assert order == sorted(order)
    assert "goal: a mean <= 1% for every photo" in printed and "goal met" in printed
    assert "identity (baseline)     5000      34.2     0.487     1.000" in printed
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_embedded_model_meets_its_goals():
    """Every bundled photo aligned onto itself within 1% of its diagonal (mean), the stereo pair at
    PCK@0.05 >= 0.7 with a mean error <= 0.6x the identity's, held-out synthetic PCK@0.1 >= 0.7."""
    from a2net.checkpoint import load_default_model

    checks = evaluate.evaluate_stereo_demo(load_default_model(), n_pairs=200)
    selfs, stereo, synthetic = checks["self_alignment"], checks["stereo"], checks["synthetic"]
    assert all(p["mean"] <= 1.0 for p in selfs["photos"].values()), selfs["photos"]
    assert stereo["PCK@0.05"] >= 0.7 and stereo["mean_error"] <= 0.6 * stereo["identity"]["mean_error"], stereo
    assert synthetic["metrics"]["PCK@0.1"] >= 0.7, synthetic["metrics"]
