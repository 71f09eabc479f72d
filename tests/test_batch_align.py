"""`a2net align --pairs PAIRS.csv --out-dir DIR`: the results of `a2net.align` pair by pair, failed
pairs recorded while the run goes on, resuming without recomputing, a half-written last line
repaired (also after a real SIGKILL), figures, another model refused, the one-line errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from a2net import batch, cli
from a2net.alignment import align
from a2net.checkpoint import load_model
from tests.test_benchmarks import write_image
from tests.test_cli_errors import assert_error, run_cases
from tests.test_evaluate import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
POINTS = "3,4;20.5,10;1,1"


def make_pairs(root: Path, n: int = 5, broken: bool = True) -> Path:
    """``n`` pairs of random images of different sizes (every other one with target points), then a
    missing image and a file that is not an image."""
    sizes = [(20, 33), (25, 17), (40, 40), (31, 22)]
    for i, (h, w) in enumerate(sizes):
        write_image(root / "images" / f"im{i}.png", h, w, seed=i)
    (root / "images" / "notes.png").write_text("not an image\n")
    lines = ["source,target,target_points"]
    for k in range(n):
        points = f'"{POINTS}"' if k % 2 else ""
        lines.append(f"images/im{k % 4}.png,images/im{(k + 1) % 4}.png,{points}")
    if broken:
        lines += ["images/missing.png,images/im0.png,", "images/im1.png,images/notes.png,"]
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root / "pairs.csv"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "affine", "affine")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / batch.RESULTS_FILE).read_text().splitlines()]


def test_results_are_those_of_align_and_failures_are_recorded(tmp_path, model_dir):
    pairs = make_pairs(tmp_path)
    model = load_model(model_dir).eval()
    summary = batch.align_pairs(pairs, tmp_path / "out", model, batch_size=3, num_workers=0, progress=False)
    assert (summary["pairs"], summary["aligned"], summary["failed"], summary["done_before"]) == (7, 5, 2, 0)
    assert summary["pairs_per_s"] > 0
    records = lines(tmp_path / "out")
    assert [r["row"] for r in records] == list(range(1, 8))
    for record in records[:5]:
        single = align(
            tmp_path / record["source"],
            tmp_path / record["target"],
            model=model,
            target_points=None if record["target_points"] is None else cli._parse_points(POINTS),
        )
        assert record["status"] == "ok" and record["mode"] == "affine" and record["seconds"] > 0
        torch.testing.assert_close(torch.tensor(record["theta"]["affine"]), single.theta, atol=1e-5, rtol=0)
        if record["target_points"] is None:
            assert record["transferred_points"] is None
        else:
            moved = torch.tensor(record["transferred_points"], dtype=torch.float64).t()
            torch.testing.assert_close(moved, single.transferred_points, atol=1e-3, rtol=0)
    missing, not_image = records[5:]
    assert missing["status"] == "error" and missing["error"].startswith("source: no such file")
    assert "missing.png" in missing["error"]
    assert not_image["status"] == "error" and not_image["error"].startswith("target:")
    assert "not an image" in not_image["error"]
    run = json.loads((tmp_path / "out" / batch.RUN_FILE).read_text())
    assert run["mode"] == "affine" and run["image_size"] == [112, 112] and len(run["weights_sha256"]) == 64


def test_two_stage_records_both_thetas(tmp_path, model_dir):
    from a2net import TwoStageAligner

    pairs = make_pairs(tmp_path, n=2, broken=False)
    tps = load_model(save_tiny_checkpoint(tmp_path / "tps", "tps"))
    aligner = TwoStageAligner(load_model(model_dir), tps).eval()
    batch.align_pairs(pairs, tmp_path / "out", aligner, num_workers=0, progress=False)
    record = lines(tmp_path / "out")[1]
    single = align(tmp_path / record["source"], tmp_path / record["target"], model=aligner)
    assert record["mode"] == "affine+tps" and len(record["theta"]["tps"]) == 18
    torch.testing.assert_close(torch.tensor(record["theta"]["affine"]), single.theta[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(record["theta"]["tps"]), single.theta[1], atol=1e-5, rtol=0)


def test_inference_options_are_those_of_align_and_recorded(tmp_path, model_dir):
    pairs = make_pairs(tmp_path, n=2, broken=False)
    model = load_model(model_dir).eval()
    options = {"iterations": 2, "symmetric": True}
    out = tmp_path / "out"
    batch.align_pairs(pairs, out, model, num_workers=0, progress=False, inference=options)
    record = lines(out)[0]
    single = align(tmp_path / record["source"], tmp_path / record["target"], model=model, **options)
    torch.testing.assert_close(torch.tensor(record["theta"]["affine"]), single.theta, atol=1e-5, rtol=0)
    run = json.loads((out / batch.RUN_FILE).read_text())
    assert run["inference"] == {"iterations": 2, "symmetric": True, "refine": False}
    with pytest.raises(ValueError, match="inference options"):  # the model's defaults: one plain pass
        batch.align_pairs(pairs, out, model, num_workers=0, progress=False)
    # a record written before the options existed stands for one plain pass
    del run["inference"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / batch.RUN_FILE).write_text(json.dumps(run))
    assert batch.align_pairs(pairs, tmp_path / "old", model, num_workers=0, progress=False)["aligned"] == 2


def test_rerun_skips_done_pairs_retries_failed_ones_and_repairs_a_cut_line(tmp_path, model_dir):
    pairs = make_pairs(tmp_path)
    model = load_model(model_dir).eval()
    out = tmp_path / "out"
    batch.align_pairs(pairs, out, model, batch_size=2, num_workers=0, progress=False)
    first = (out / batch.RESULTS_FILE).read_text().splitlines()
    again = batch.align_pairs(pairs, out, model, batch_size=2, num_workers=0, progress=False)
    assert (again["aligned"], again["failed"], again["done_before"]) == (0, 2, 5)  # only the failed ones retried
    assert (out / batch.RESULTS_FILE).read_text().splitlines() == first  # one line per pair, same text

    # a kill in the middle of a write: pair 3's line cut short, its complete line gone
    kept = [line for line in first if json.loads(line)["row"] != 3]
    (out / batch.RESULTS_FILE).write_text("\n".join(kept) + "\n" + first[2][:37])
    messages = []
    repaired = batch.align_pairs(pairs, out, model, num_workers=0, progress=False, log=messages.append)
    assert (repaired["aligned"], repaired["failed"], repaired["done_before"]) == (1, 2, 4)
    assert messages and "dropped 1 incomplete line" in messages[0]
    records = lines(out)
    assert sorted(r["row"] for r in records) == list(range(1, 8))
    redone = next(r for r in records if r["row"] == 3)["theta"]["affine"]
    assert redone == pytest.approx(json.loads(first[2])["theta"]["affine"], abs=1e-5)  # batch 8 vs 2


def test_figures_and_another_model(tmp_path, model_dir):
    pytest.importorskip("matplotlib")
    pairs = make_pairs(tmp_path, n=2)
    model = load_model(model_dir).eval()
    out = tmp_path / "out"
    batch.align_pairs(pairs, out, model, figures=True, num_workers=0, progress=False)
    records = lines(out)
    figures = sorted(p.name for p in (out / batch.FIGURES_DIR).iterdir())
    assert figures == ["00001_im0_im1.png", "00002_im1_im2.png"]  # none for the failed pairs, no temp file
    assert records[0]["figure"] == "figures/00001_im0_im1.png" and "figure" not in records[2]
    with Image.open(out / records[1]["figure"]) as image:
        assert image.format == "PNG" and image.size[0] > 100
    other = load_model(save_tiny_checkpoint(tmp_path / "tps", "tps")).eval()
    with pytest.raises(ValueError, match="holds results of another run"):
        batch.align_pairs(pairs, out, other, num_workers=0, progress=False)


def test_command_line_and_its_errors(tmp_path, model_dir, capsys):
    pairs = make_pairs(tmp_path, n=3)
    argv = ["align", "--pairs", str(pairs), "--out-dir", str(tmp_path / "out"), "--checkpoint", str(model_dir)]
    assert cli.main(argv + ["--device", "cpu", "--no-progress", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "5 pairs: 3 aligned, 2 failed, 0 done before" in printed and "pairs/s (5 pairs in" in printed
    assert "batch 2, 2 workers, cpu" in printed  # DataLoader worker processes by default
    assert [r["status"] for r in lines(tmp_path / "out")] == ["ok"] * 3 + ["error"] * 2

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "no_header.csv").write_text("a.png,b.png\n")
    (bad / "points.csv").write_text('source,target,target_points\na.png,b.png,"1,2;3"\n')
    (bad / "empty.csv").write_text("source,target\n")
    out = tmp_path / "never"
    image = tmp_path / "images" / "im0.png"
    cases = [
        (["align", "--pairs", pairs], 2, "--out-dir", "required"),
        (["align", image, image, "--pairs", pairs, "--out-dir", out], 2, "SOURCE TARGET", "both"),
        (["align", "--pairs", pairs, "--out-dir", out, "--out", out / "f.png"], 2, "--out", "--figures"),
        (["align", image, image, "--out", out / "f.png", "--out-dir", out], 2, "--out-dir", "only with --pairs"),
        (["align", image, image, "--out", out / "f.png", "--figures"], 2, "--figures", "only with --pairs"),
        (["align", image], 2, "SOURCE TARGET --out"),
        (["align", "--pairs", pairs, "--out-dir", out, "--batch-size", "0"], 2, "--batch-size", "'0'"),
        (["align", "--pairs", pairs, "--out-dir", pairs], 2, "--out-dir", "is a file"),
        (["align", "--pairs", tmp_path / "none.csv", "--out-dir", out], 1, "--pairs", "none.csv", "no such file"),
        (["align", "--pairs", bad / "no_header.csv", "--out-dir", out], 1, "no_header.csv", "header"),
        (["align", "--pairs", bad / "points.csv", "--out-dir", out], 1, "points.csv", "line 2", "target_points"),
        (["align", "--pairs", bad / "empty.csv", "--out-dir", out], 1, "empty.csv", "no pairs"),
    ]
    results = run_cases(tmp_path, [case[0] + ["--device", "cpu"] for case in cases])
    for (argv, code, *words), result in zip(cases, results, strict=True):
        try:
            assert_error(result, code, *words)
        except AssertionError as err:
            raise AssertionError(f"{argv[1:4]}: {err}") from None
    assert not out.exists()


def test_a_sigkill_loses_no_complete_line(tmp_path, model_dir):
    """A real SIGKILL while pairs are being written; the rerun keeps every complete line as it
    was, repairs a cut one, and ends with exactly one ok line per pair."""
    pytest.importorskip("matplotlib")
    pairs = make_pairs(tmp_path, n=8, broken=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "a2net", "align", "--pairs", str(pairs), "--out-dir", str(out)]
    command += ["--checkpoint", str(model_dir), "--device", "cpu", "--no-progress", "--batch-size", "1"]
    command += ["--num-workers", "0", "--figures"]  # a figure per pair: slow enough to be killed midway
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / batch.RESULTS_FILE
    deadline = time.monotonic() + 120
    while not results.exists() or results.read_text().count("\n") < 2:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no result lines in time"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stderr.close()
    before = results.read_bytes()
    complete = before[: before.rfind(b"\n") + 1].decode().splitlines()
    assert 2 <= len(complete) < 8
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    after = results.read_text().splitlines()
    assert after[: len(complete)] == complete
    records = [json.loads(line) for line in after]
    assert sorted(r["row"] for r in records) == list(range(1, 9)) and {r["status"] for r in records} == {"ok"}
    assert not [p for p in (out / batch.FIGURES_DIR).iterdir() if p.name.startswith(".")]  # no temp figure
