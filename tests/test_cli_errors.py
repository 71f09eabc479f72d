"""The command line's error path: every user mistake ends with exit code 2 (usage) or 1 (bad
data), ONE line ``a2net: error: ...`` on stderr naming the option or the file, no traceback, and
no output file; nothing wrong leaves with exit code 0.

To stay fast, most cases run through :func:`a2net.cli.main` in one subprocess (``DRIVER``: one
torch import for all); a few run ``python -m a2net`` itself, for the real exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from a2net import checkpoint as ckpt
from a2net import cli
from tests.test_benchmarks import write_csv, write_image
from tests.test_evaluate import make_willow_pairs, save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# Runs each argv of a JSON list through a2net.cli.main in this one process; records the exit
# code and what went to stdout and stderr.
DRIVER = r"""
import contextlib, io, json, sys
from a2net.cli import main

results = []
for argv in json.loads(open(sys.argv[1]).read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
open(sys.argv[2], "w").write(json.dumps(results))
"""

TRAIN = ["train", "--backbone", "small_cnn", "--image-size", "112", "--resize", "96", "128", "--batch-size", "2"]
TRAIN += ["--data", "bundled:training", "--threads", "1", "--no-progress", "--checkpoint-every", "1"]


def run_cases(tmp_path: Path, cases: list[list[str]]) -> list[dict]:
    """Run the CLI ``cases`` in one subprocess; one result dict per case."""
    argv_file, result_file = tmp_path / "cases.json", tmp_path / "results.json"
    argv_file.write_text(json.dumps([[str(a) for a in argv] for argv in cases]))
    process = subprocess.run(
        [sys.executable, "-c", DRIVER, str(argv_file), str(result_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr
    return json.loads(result_file.read_text())


def assert_error(result: dict, code: int, *words: str) -> str:
    """Exit ``code``, exactly one stderr line ``a2net: error: ...`` containing every word, no traceback."""
    lines = result["stderr"].splitlines()
    assert result["code"] == code, result
    assert len(lines) == 1, result["stderr"]
    assert lines[0].startswith("a2net: error: "), lines[0]
    assert "Traceback" not in result["stderr"]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def flip_bit(path: Path, offset_from_end: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------
# Fixtures: broken images, checkpoints and dataset files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    f = {"root": root}
    write_image(root / "s.png", 40, 56, seed=1)
    write_image(root / "t.png", 48, 40, seed=2)
    f["source"], f["target"] = root / "s.png", root / "t.png"
    f["missing"] = root / "missing.png"
    (root / "notes.png").write_text("not an image\n")
    f["not_image"] = root / "notes.png"
    buffer = root / "full.jpg"
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(buffer)
    data = buffer.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    f["truncated"] = root / "truncated.jpg"
    nan = np.full((48, 64), 0.5, np.float32)
    nan[3, 4] = np.nan
    Image.fromarray(nan, mode="F").save(root / "nan.tif")
    f["nan_image"] = root / "nan.tif"
    Image.fromarray(np.full((48, 64), 200.0, np.float32), mode="F").save(root / "float255.tif")
    f["float255"] = root / "float255.tif"

    good = save_tiny_checkpoint(root / "good", "affine")
    f["good"] = good
    f["tps"] = save_tiny_checkpoint(root / "tps", "tps")
    for name in ("bitflip", "truncated_ckpt", "garbage_state", "empty_state", "nan_weights"):
        (root / name).mkdir()
        for file in good.iterdir():
            (root / name / file.name).write_bytes(file.read_bytes())
    flip_bit(root / "bitflip" / "model.safetensors")
    model_bytes = (root / "truncated_ckpt" / "model.safetensors").read_bytes()
    (root / "truncated_ckpt" / "model.safetensors").write_bytes(model_bytes[: len(model_bytes) // 2])
    (root / "garbage_state" / "state.json").write_bytes(b"\x00\x01{garbage")
    (root / "empty_state" / "state.json").write_text("{}")
    model = ckpt.load_model(good)
    with torch.no_grad():
        model.FeatureRegression.linear.weight[0, 0] = float("nan")
    ckpt.save_checkpoint(root / "nan_weights", model, step=3)
    (root / "empty_dir").mkdir()
    f.update({n: root / n for n in ("bitflip", "truncated_ckpt", "garbage_state", "empty_state", "nan_weights")})
    f["empty_dir"] = root / "empty_dir"

    f["willow"] = root / "willow"
    make_willow_pairs(f["willow"])
    f["header_only"] = root / "header_only"
    write_csv(f["header_only"] / "test_pairs_pf.csv", [["imageA", "imageB"] + [f"k{i}" for i in range(40)]])
    f["binary_csv"] = root / "binary_csv"
    f["binary_csv"].mkdir()
    (f["binary_csv"] / "test_pairs_pf.csv").write_bytes(b"imageA,imageB\n\xff\xfe\x00garbage\n")
    f["short_row"] = root / "short_row"
    write_csv(f["short_row"] / "test_pairs_pf.csv", [["imageA", "imageB", "x"], ["a.png", "b.png", "1", "2"]])

    f["empty_folder"] = root / "empty_folder"
    f["empty_folder"].mkdir()
    f["non_images"] = root / "non_images"
    f["non_images"].mkdir()
    (f["non_images"] / "a.jpg").write_text("text, not a JPEG\n")
    (root / "a_file").write_text("a file\n")
    f["a_file"] = root / "a_file"
    return f


# --------------------------------------------------------------------------------------------
# align and eval: images, checkpoints, outputs, dataset files


def test_align_and_eval_errors(files, tmp_path):
    f = files
    out = tmp_path / "out"
    figure = out / "figure.png"
    align = ["align", f["source"], f["target"], "--out", figure, "--device", "cpu", "--checkpoint", f["good"]]
    willow = ["eval", "--benchmark", "pf-willow", "--no-progress", "--device", "cpu", "--checkpoint", f["good"]]
    cases = {
        # outputs: checked before any work
        "warped_bad_ext": (align + ["--warped-out", out / "x.xyz"], 2, "--warped-out", "x.xyz", ".png"),
        "figure_bad_ext": (["align", f["source"], f["target"], "--out", out / "f.xyz"], 2, "--out", "f.xyz"),
        "figure_under_file": (align[:3] + ["--out", f["a_file"] / "f.png"], 2, "--out", "is a file"),
        "small_image_size": (align + ["--image-size", "64", "64"], 2, "--image-size", "7x7", "(64, 64)"),
        # images
        "missing_image": (["align", f["missing"], *align[2:]], 1, "source: no such file", "missing.png"),
        "not_an_image": (["align", f["source"], f["not_image"], *align[3:]], 1, "target:", "notes.png", "not an image"),
        "truncated_jpeg": (["align", f["truncated"], *align[2:]], 1, "truncated.jpg", "truncated or corrupted"),
        "nan_image": (["align", f["nan_image"], *align[2:]], 1, "nan.tif", "NaN"),
        "float_0_255": (["align", f["float255"], *align[2:]], 1, "float255.tif", "[0, 1]", "255"),
        # checkpoints
        "bitflip": (align[:-1] + [f["bitflip"]], 1, "bitflip", "model.safetensors", "corrupted"),
        "truncated_checkpoint": (align[:-1] + [f["truncated_ckpt"]], 1, "truncated_ckpt", "corrupted or truncated"),
        "garbage_state": (align[:-1] + [f["garbage_state"]], 1, "state.json", "corrupted"),
        "state_missing_keys": (align[:-1] + [f["empty_state"]], 1, "state.json", "format"),
        "nan_weights": (align[:-1] + [f["nan_weights"]], 1, "nan_weights", "NaN/inf"),
        "empty_checkpoint_dir": (align[:-1] + [f["empty_dir"]], 1, "no checkpoint", "empty_dir", "empty"),
        "missing_checkpoint_dir": (align[:-1] + [f["root"] / "nope"], 1, "no checkpoint", "does not exist"),
        # eval: dataset files, flags, and the same checkpoints
        "header_only_csv": (
            willow + ["--data", f["header_only"], "--output", out / "w.json"],
            1,
            "test_pairs_pf.csv",
            "no pairs",
            "only a header",
        ),
        "binary_csv": (
            willow + ["--data", f["binary_csv"], "--output", out / "w.json"],
            1,
            "test_pairs_pf.csv",
            "UTF-8",
        ),
        "short_row": (
            willow + ["--data", f["short_row"], "--output", out / "w.json"],
            1,
            "test_pairs_pf.csv",
            "line 2",
            "columns",
        ),
        "eval_bitflip": (
            willow[:-1] + [f["bitflip"], "--data", f["willow"], "--output", out / "w.json"],
            1,
            "corrupted",
        ),
        "eval_no_data": (willow + ["--output", out / "w.json"], 2, "--data", "pf-willow"),
        "eval_output_dir_is_file": (
            willow + ["--data", f["willow"], "--output", f["a_file"] / "w.json"],
            2,
            "--output",
        ),
        "eval_batch_size_0": (willow + ["--data", f["willow"], "--output", out / "w.json", "--batch-size", "0"], 2),
        "eval_no_output": (willow + ["--data", f["willow"]], 2, "--output", "required", "pf-willow"),
        "eval_iterations_0": (
            willow + ["--data", f["willow"], "--output", out / "w.json", "--iterations", "0"],
            2,
            "--iterations",
            "'0'",
        ),
        "eval_tps_refine": (
            willow[:-1] + [f["tps"], "--data", f["willow"], "--output", out / "w.json", "--refine"],
            2,
            "--refine",
            "TPS",
        ),
        "stereo_demo_data": (
            ["eval", "--benchmark", "stereo-demo", "--data", f["willow"], "--output", out / "w.json"],
            2,
            "--data",
            "bundled",
        ),
        "align_iterations_x": (align + ["--iterations", "two"], 2, "--iterations", "'two'"),
        "align_tps_symmetric": (align[:-1] + [f["tps"], "--symmetric"], 2, "--symmetric", "TPS"),
        "eval_pairs_0": (
            ["eval", "--benchmark", "synthetic", "--output", out / "w.json", "--pairs", "0"],
            2,
            "--pairs",
        ),
        # convert-official
        "convert_missing": (["convert-official", f["root"] / "none.pth.tar", out / "conv"], 1, "none.pth.tar"),
        "convert_dst_file": (["convert-official", f["root"] / "none.pth.tar", f["a_file"]], 2, "dst", "is a file"),
        "demo_threads_0": (["demo", "--threads", "0", "--out", out / "demo.png"], 2, "--threads", "'0'"),
        "demo_pairs": (["demo", "--pairs", "100000", "--out", out / "demo.png"], 2, "--pairs", "1000"),
        "bad_device": (align[:5] + ["--device", "tpu", "--checkpoint", f["good"]], 2, "--device", "tpu"),
    }
    results = run_cases(tmp_path, [case[0] for case in cases.values()])
    for (name, (_, code, *words)), result in zip(cases.items(), results, strict=True):
        try:
            assert_error(result, code, *words)
        except AssertionError as err:
            raise AssertionError(f"case {name}: {err}") from None
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))  # no partial output of any case


def test_real_exit_status_and_debug(files, tmp_path):
    """Through ``python -m a2net``: the process's exit status; --debug / A2NET_DEBUG=1 show the traceback."""
    command = [sys.executable, "-m", "a2net", "align", str(files["source"]), str(files["target"])]
    command += ["--out", str(tmp_path / "f.png"), "--checkpoint", str(files["bitflip"]), "--device", "cpu"]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_error({"code": process.returncode, "stderr": process.stderr}, 1, "corrupted")
    assert not (tmp_path / "f.png").exists()
    process = subprocess.run(command + ["--debug"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 1 and "Traceback" in process.stderr and "InputError" in process.stderr
    env = dict(os.environ, A2NET_DEBUG="1")
    process = subprocess.run(
        [sys.executable, "-m", "a2net", "train", "--batch-size", "x"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert_error({"code": process.returncode, "stderr": process.stderr}, 2, "--batch-size", "'x'")


def test_demo_without_scikit_image_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['skimage'] = None\n"  # as if scikit-image were not installed
        "from a2net.cli import main\n"
        f"sys.exit(main(['demo', '--out', {str(tmp_path / 'd.png')!r}]))\n"
    )
    process = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_error({"code": process.returncode, "stderr": process.stderr}, 1, "scikit-image", "pip install 'a2net[data]'")
    assert not (tmp_path / "d.png").exists()


# --------------------------------------------------------------------------------------------
# train: flags, data, output directories, existing runs, leftovers of kills


def _metrics_steps(directory: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_train_errors_and_run_directories(files, tmp_path):
    f = files
    run = tmp_path / "run"
    killed = tmp_path / "killed"  # a run killed during its first save: metrics, a temp folder, no last/
    killed.mkdir()
    (killed / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (killed / ".last.tmp-4242").mkdir()
    (killed / ".last.tmp-4242" / "model.safetensors").write_bytes(b"partial")
    never = tmp_path / "never"
    cases = [
        # flags and data: refused before the output directory is created
        (TRAIN + ["--output-dir", never, "--batch-size", "0"], 2, "--batch-size", "'0'"),
        (TRAIN + ["--output-dir", never, "--max-steps", "-5"], 2, "--max-steps", "'-5'"),
        (TRAIN + ["--output-dir", never, "--max-steps", "0"], 2, "--max-steps"),
        (TRAIN + ["--output-dir", never, "--epochs", "-1"], 2, "--epochs", "'-1'"),
        (TRAIN + ["--output-dir", never, "--max-steps", "2", "--image-size", "64"], 2, "--image-size", "112"),
        (TRAIN + ["--output-dir", never, "--max-steps", "2", "--data", f["empty_folder"]], 1, "--data", "no .jpg"),
        (TRAIN + ["--output-dir", never, "--max-steps", "2", "--data", f["non_images"]], 1, "a.jpg", "not an image"),
        (TRAIN + ["--output-dir", never, "--max-steps", "2", "--data", f["root"] / "nope"], 1, "--data", "nope"),
        (TRAIN + ["--output-dir", never, "--identity-share", "1.5"], 2, "--identity-share", "'1.5'"),
        (TRAIN + ["--output-dir", never, "--swap-weight", "-1"], 2, "--swap-weight", "'-1'"),
        (
            TRAIN
            + ["--output-dir", never, "--max-steps", "2", "--identity-share", "0.6", "--near-identity-share", "0.6"],
            2,
            "--near-identity-share",
            "sum <= 1",
        ),
        (
            TRAIN + ["--output-dir", never, "--max-steps", "2", "--geometric-model", "tps", "--cycle-weight", "1"],
            2,
            "--cycle-weight",
            "affine",
        ),
        (
            TRAIN + ["--output-dir", never, "--max-steps", "2", "--init-from", f["root"] / "nope"],
            1,
            "--init-from",
            "nope",
        ),
        (
            TRAIN + ["--output-dir", never, "--max-steps", "2", "--init-from", f["good"], "--image-size", "128"],
            2,
            "--init-from",
            "image_size",
        ),
        (TRAIN + ["--output-dir", f["a_file"], "--max-steps", "2"], 2, "--output-dir", "is a file"),
        (TRAIN + ["--output-dir", never, "--resume"], 1, "--resume", "no checkpoint", "without --resume"),
        # a run, then the same directory again: refused; resumed; overwritten
        (TRAIN + ["--output-dir", run, "--max-steps", "2"], 0),
        (TRAIN + ["--output-dir", run, "--max-steps", "3"], 2, "--output-dir", "holds a run", "step 2", "--resume"),
        (TRAIN + ["--output-dir", run, "--max-steps", "2", "--resume"], 2, "--max-steps", "step 2 already"),
        (TRAIN + ["--output-dir", run, "--max-steps", "3", "--resume", "--overwrite"], 2, "--resume, --overwrite"),
        (["mkdir-stale"], None),  # placeholder: a stale temp folder appears before the next case
        (TRAIN + ["--output-dir", run, "--max-steps", "3", "--resume"], 0),
        (TRAIN + ["--output-dir", run, "--max-steps", "1", "--overwrite"], 0),
        # the run killed during its first save
        (TRAIN + ["--output-dir", killed, "--max-steps", "1", "--resume"], 1, "no checkpoint", "--overwrite"),
        (TRAIN + ["--output-dir", killed, "--max-steps", "1"], 2, "holds a run", "no checkpoint yet"),
        (TRAIN + ["--output-dir", killed, "--max-steps", "1", "--overwrite"], 0),
    ]
    split = next(i for i, case in enumerate(cases) if case[0] == ["mkdir-stale"])
    results = run_cases(tmp_path, [case[0] for case in cases[:split]])
    (run / ".last.tmp-99999").mkdir()  # a kill during a save leaves such a folder
    (run / ".last.tmp-99999" / "model.safetensors").write_bytes(b"partial")
    results += [None] + run_cases(tmp_path, [case[0] for case in cases[split + 1 :]])
    for i, (case, result) in enumerate(zip(cases, results, strict=True)):
        if result is None:
            continue
        argv, code, *words = case
        if code == 0:
            assert result["code"] == 0, (i, result)
            assert "Traceback" not in result["stderr"], (i, result["stderr"])
        else:
            try:
                assert_error(result, code, *words)
            except AssertionError as err:
                raise AssertionError(f"case {i} {argv[-4:]}: {err}") from None
    assert not never.exists()
    # resumed to step 3 (the stale temp folder removed), then overwritten by a run of 1 step, with a notice
    assert results[split + 2]["code"] == 0 and "--overwrite: moved the previous run" in results[split + 2]["stdout"]
    assert "step 3" in results[split + 2]["stdout"]
    assert _metrics_steps(run) == [1] and ckpt.read_state(run / "last")["step"] == 1
    # the replaced run is moved aside whole, never deleted
    (aside,) = run.glob("replaced-*")
    assert sorted(p.name for p in run.iterdir()) == ["last", "metrics.jsonl", aside.name]
    assert _metrics_steps(aside) == [1, 2, 3] and ckpt.read_state(aside / "last")["step"] == 3
    assert _metrics_steps(killed) == [1] and ckpt.read_state(killed / "last")["step"] == 1
    (killed_aside,) = killed.glob("replaced-*")
    assert sorted(p.name for p in killed.iterdir()) == ["last", "metrics.jsonl", killed_aside.name]


def test_a_refused_run_changes_nothing(tmp_path):
    """A refused run changes nothing: last/ and metrics.jsonl of the existing run stay as they were."""
    results = run_cases(
        tmp_path,
        [TRAIN + ["--output-dir", tmp_path / "r", "--max-steps", "2"], TRAIN + ["--output-dir", tmp_path / "r"]],
    )
    assert results[0]["code"] == 0
    before = (
        (tmp_path / "r" / "metrics.jsonl").read_bytes(),
        (tmp_path / "r" / "last" / "model.safetensors").read_bytes(),
    )
    assert_error(results[1], 2, "holds a run")
    after = (
        (tmp_path / "r" / "metrics.jsonl").read_bytes(),
        (tmp_path / "r" / "last" / "model.safetensors").read_bytes(),
    )
    assert before == after


# --------------------------------------------------------------------------------------------
# The parser: literal choices match the library, --help imports no torch


def test_literal_choices_match_the_library():
    from a2net.evaluate import BENCHMARKS
    from a2net.inference import MODES
    from a2net.model import BACKBONES, GEOMETRIC_MODELS, TORCHVISION_BACKBONES
    from a2net.train import LR_SCHEDULES, PRESETS

    assert cli.BACKBONE_CHOICES == tuple(BACKBONES)
    assert cli.TORCHVISION_BACKBONE_CHOICES == tuple(TORCHVISION_BACKBONES)
    assert cli.GEOMETRIC_MODEL_CHOICES == tuple(GEOMETRIC_MODELS)
    assert cli.MODE_CHOICES == tuple(MODES)
    assert cli.PRESET_CHOICES == tuple(sorted(PRESETS))
    assert cli.LR_SCHEDULE_CHOICES == tuple(LR_SCHEDULES)
    assert cli.BENCHMARK_CHOICES == tuple(BENCHMARKS)


def test_help_imports_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from a2net.cli import main\n"
        "for command in ([], ['train'], ['eval'], ['align'], ['demo'], ['convert-official']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(command + ['--help'])\n"
        "        except SystemExit as exit:\n"
        "            assert exit.code == 0, command\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'triton', 'matplotlib') if m in sys.modules))\n"
    )
    process = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "[]"


def test_an_error_from_a_dataloader_worker_is_one_line():
    from torch._utils import ExceptionWrapper

    from a2net.errors import InputError

    try:
        raise InputError("image: 'x.jpg' is truncated or corrupted")
    except InputError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(InputError) as caught:
        wrapped.reraise()
    assert "Traceback" in str(caught.value)  # what DataLoader re-raises: the worker's traceback in the message
    assert cli._message(caught.value) == "image: 'x.jpg' is truncated or corrupted"
