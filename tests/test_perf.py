"""perf/: the CPU benchmark end to end, the results CSV, the plots, the export benchmark, the
tuned-config table round trip, the autotuner's config checker, and gpu_check.sh's plumbing.

The benchmarks write to temporary CSVs (``--csv``), never to the committed
perf/results/results.csv; the tuned table goes to a temporary path read back through
``A2NET_TUNED_CONFIGS``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import a2net.kernels._tuning as tuning
from perf import _harness as H
from perf import op_specs
from tests.helpers import DEVICE

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "perf"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"perf_{name}_under_test", PERF / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
    env.pop("A2NET_TUNED_CONFIGS", None)
    return env


# ----------------------------------------------------------------------------------------------
# bench_ops.py --device cpu --quick, in a subprocess (as users run it)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    csv_path = tmp_path_factory.mktemp("bench") / "results.csv"
    proc = subprocess.run(
        [
            sys.executable,
            str(PERF / "bench_ops.py"),
            "--device",
            "cpu",
            "--quick",
            "--threads",
            "1",
            "--csv",
            str(csv_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=_env(),
    )
    return proc, csv_path


def test_bench_ops_cpu_quick_prints_figures(quick_run):
    proc, _ = quick_run
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "cpu (" in proc.stdout and "threads)" in proc.stdout
    for header in (
        "correlation B2-C512-H15-W15 fp32",
        "offset_aware_correlation B2-O128-H15-W15 fp32",
        "correlation_oac B2-C512-O128-H15-W15 fp32",
        "attention_pool B2-C128-H9-W9 fp32",
    ):
        assert header in proc.stdout, out
    assert "summary (geometric mean over shapes):" in proc.stdout
    assert "authors" in proc.stdout.split("summary (geometric mean over shapes):")[1]  # the OAC's baseline
    assert "MISMATCH" not in proc.stdout, out


def test_bench_ops_cpu_quick_appends_well_formed_rows(quick_run):
    proc, csv_path = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(csv_path) as f:
        header = f.readline().strip().split(",")
    assert tuple(header) == H.CSV_COLUMNS
    rows = H.read_rows(csv_path)
    ops_rows = [r for r in rows if r["op"] != "peak"]
    # 4 ops x 3 passes x reference, + the authors' construction of the OAC and the fused op x 3 passes
    assert len(ops_rows) == 18, [(r["op"], r["pass"], r["provider"]) for r in ops_rows]
    assert {(r["op"], r["pass"]) for r in rows if r["op"] == "peak"} == {("peak", "matmul"), ("peak", "copy")}
    for r in rows:
        assert r["gpu"].startswith("cpu (") and r["gpu"].endswith(" threads)"), r
        assert r["torch"] == torch.__version__.split("+")[0]
        assert r["triton"] and r["commit"] and r["date"].endswith("Z")
        assert r["timer"] == "perf_counter"
        p20, p50, p80 = (float(r[k]) for k in ("ms_p20", "ms_p50", "ms_p80"))
        assert 0 < p20 <= p50 <= p80, r
    for r in ops_rows:
        assert r["pass"] in ("fwd", "bwd", "fwd+bwd") and r["dtype"] == "fp32"
        assert r["provider"] in ("reference", "authors")
        assert float(r["gflop"]) > 0 and float(r["gbyte"]) > 0
        peak = float(r["peak_mb"])
        assert math.isnan(peak) or peak > 0, r
        assert float(r["rel_err"]) < 1e-5, r
    for op in ("offset_aware_correlation", "correlation_oac"):
        assert {r["provider"] for r in ops_rows if r["op"] == op} == {"reference", "authors"}


def test_plot_results_regenerates_readme_and_png(quick_run, tmp_path):
    pytest.importorskip("matplotlib")
    proc, csv_path = quick_run
    assert proc.returncode == 0
    plot_results = _load("plot_results")
    (tmp_path / "README.md").write_text("# kept\n\n<!-- generated:begin -->\nold\n<!-- generated:end -->\ntail kept\n")
    written = plot_results.generate(csv_path, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("# kept") and readme.rstrip().endswith("tail kept") and "\nold\n" not in readme
    assert "### offset_aware_correlation, forward+backward" in readme and "authors / reference" in readme
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "cpu-1-threads.md").exists() and (tmp_path / "cpu-1-threads.png") in pngs


def test_plot_results_gpu_rows(tmp_path):
    """The GPU side of the tables (subject triton, CUDA-graph rows, the training step), from made-up rows."""
    pytest.importorskip("matplotlib")
    plot_results = _load("plot_results")
    info = H.RunInfo("NVIDIA Test GPU", "2.11.0", "3.6.0", "abc123", "2026-01-01T00:00:00Z")
    rows = [
        info.row(
            op="peak",
            **{"pass": "matmul"},
            shape="M8192-N8192-K8192",
            dtype=d,
            provider="torch",
            timer="do_bench",
            ms_p20=1,
            ms_p50=1,
            ms_p80=1,
            gflop=g,
        )
        for d, g in (("tf32", 400), ("bf16", 800))
    ]
    rows.append(
        info.row(
            op="peak",
            **{"pass": "copy"},
            shape="N1",
            dtype="fp32",
            provider="torch",
            timer="do_bench",
            ms_p20=1,
            ms_p50=1,
            ms_p80=1,
            gbyte=3,
        )
    )
    speed = {"triton": 1.0, "reference": 3.0, "reference-compiled": 2.0, "authors": 9.0}
    for op, shape in (
        ("correlation", "B32-C1024-H{h}-W{h}"),
        ("offset_aware_correlation", "B32-O128-H{h}-W{h}"),
        ("attention_pool", "B32-C128-H{h}-W{h}"),
    ):
        for h in (15, 30):
            for pass_ in ("fwd", "bwd", "fwd+bwd"):
                for provider, k in speed.items():
                    if provider == "authors" and op != "offset_aware_correlation":
                        continue
                    for timer in ("do_bench", "cudagraph"):
                        ms = k * h / 15 * (0.5 if timer == "cudagraph" else 1.0)
                        rows.append(
                            info.row(
                                op=op,
                                **{"pass": pass_},
                                shape=shape.format(h=h),
                                dtype="bf16",
                                provider=provider,
                                timer=timer,
                                ms_p20=ms,
                                ms_p50=ms,
                                ms_p80=ms,
                                peak_mb=10 * k,
                                gflop=1.0,
                                gbyte=0.1,
                                rel_err=1e-3,
                            )
                        )
    for provider, step in (("triton", 100.0), ("reference", 150.0)):
        for pass_, ms in (("step", step), ("head", step - 80)):
            rows.append(
                info.row(
                    op="a2net_train_step",
                    **{"pass": pass_},
                    shape="resnet101-B32-240x240",
                    dtype="tf32",
                    provider=provider,
                    timer="do_bench",
                    ms_p20=ms,
                    ms_p50=ms,
                    ms_p80=ms,
                    peak_mb=900,
                )
            )
    rows.append(
        info.row(
            op="a2net_train_step",
            **{"pass": "backbone"},
            shape="resnet101-B32-240x240",
            dtype="tf32",
            provider="torch",
            timer="do_bench",
            ms_p20=80,
            ms_p50=80,
            ms_p80=80,
        )
    )
    csv_path = tmp_path / "results.csv"
    H.append_rows(csv_path, rows)
    written = plot_results.generate(csv_path, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "## NVIDIA Test GPU" in readme and "matmul bf16 800 TFLOP/s" in readme
    assert "authors / triton" in readme and "9.00x" in readme and "3.00x" in readme
    assert "| resnet101-B32-240x240 | tf32 | triton | 100.0 | 320.0 | 20.0 | 20% | 900 | 1.50x |" in readme
    detail = (tmp_path / "nvidia-test-gpu.md").read_text()
    assert "cudagraph" in detail
    assert any(p.name == "nvidia-test-gpu.png" for p in written)


def test_append_rows_refuses_a_different_header(tmp_path):
    path = tmp_path / "r.csv"
    info = H.RunInfo("cpu (1 threads)", "2.11", "3.6", "abc", "2026-01-01T00:00:00Z")
    H.append_rows(path, [info.row(op="x", ms_p50=1.0)])
    H.append_rows(path, [info.row(op="y", ms_p50=2.0)])
    assert [r["op"] for r in H.read_rows(path)] == ["x", "y"]
    assert path.read_text().count("gpu,torch") == 1
    with pytest.raises(KeyError):
        info.row(not_a_column=1)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="header"):
        H.append_rows(bad, [info.row(op="x")])


# ----------------------------------------------------------------------------------------------
# bench_model.py on CPU with a tiny backbone (ResNet-101 on CPU takes minutes)
# ----------------------------------------------------------------------------------------------


def test_bench_model_cpu_rows(tmp_path, monkeypatch):
    bench_model = _load("bench_model")
    real = bench_model.A2Net

    def tiny_a2net(*args, backbone=None, **kwargs):  # stride 16, 64 channels: 128 px -> 8x8 maps
        return real(*args, backbone=torch.nn.Conv2d(3, 64, kernel_size=16, stride=16), **kwargs)

    monkeypatch.setattr(bench_model, "A2Net", tiny_a2net)
    monkeypatch.setenv("A2NET_BACKEND", "torch")
    csv_path = tmp_path / "model.csv"
    threads = torch.get_num_threads()
    try:
        code = bench_model.main(
            [
                "--device",
                "cpu",
                "--quick",
                "--image",
                "128",
                "--batch",
                "2",
                "--settings",
                "paper",
                "--threads",
                "1",
                "--warmup-ms",
                "0",
                "--rep-ms",
                "1",
                "--csv",
                str(csv_path),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    rows = H.read_rows(csv_path)
    assert {r["pass"] for r in rows} == {"step", "head", "backbone"}
    step = next(r for r in rows if r["pass"] == "step")
    assert step["op"] == "a2net_train_step" and step["provider"] == "reference" and step["shape"].endswith("B2-128x128")
    assert float(step["ms_p50"]) > 0 and float(step["peak_mb"]) > 0
    assert "pairs/s=" in step["note"] and "head share=" in step["note"]
    with pytest.raises(SystemExit, match="CUDA"):
        bench_model.main(["--device", "cpu", "--providers", "triton", "--no-csv"])


def test_bench_export_times_a_program_that_gives_the_eager_theta(tmp_path, capsys):
    from tests.test_evaluate import save_tiny_checkpoint

    bench_export = _load("bench_export")
    checkpoint = save_tiny_checkpoint(tmp_path / "affine", "affine")
    threads = torch.get_num_threads()
    try:
        argv = ["--checkpoint", str(checkpoint), "--batch", "2", "--threads", "1", "--reps", "1"]
        assert bench_export.main([*argv, "--iterations", "2", "--symmetric"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "2 passes, symmetric; CPU, 1 threads, median of 1 interleaved calls" in printed
    batch, eager, exported, ratio, difference = printed.strip().splitlines()[-1].split()
    assert batch == "2" and float(eager) > 0 and float(exported) > 0 and ratio.endswith("x")
    assert float(difference) <= 1e-5  # the program computes the eager chain


# ----------------------------------------------------------------------------------------------
# The tuned-config table: autotune.py writes it, kernels._tuning reads it
# ----------------------------------------------------------------------------------------------


def test_tuned_table_round_trip(tmp_path, monkeypatch):
    autotune = _load("autotune")
    name = "offset_aware_correlation_fwd"
    path = tmp_path / "tuned.json"
    old_entry = {"kwargs": {"BLOCK_O": 64}, "num_warps": 4, "num_stages": 2}
    path.write_text(json.dumps({name: {"sm_80": {"B=32": old_entry}}}))
    sizes = {"B": 32, "O": 128, "S": 225, "T": 225, "dtype": "float32"}
    key = tuning.table_key(sizes)
    assert key == "B=32,O=128,S=256,T=256,dtype=float32"
    entry = {
        "kwargs": {"BLOCK_O": 128, "BLOCK_D": 32, "BLOCK_T": 16, "BLOCK_B": 8},
        "num_warps": 8,
        "num_stages": 3,
        "ms": 0.01,
    }
    merged = autotune.write_table(path, {name: {"sm_fake": {key: entry}}})
    assert set(merged[name]) == {"sm_80", "sm_fake"}  # the other arch is kept
    assert json.loads(path.read_text()) == merged
    assert [p.name for p in tmp_path.iterdir()] == ["tuned.json"]  # no temporary file left behind

    monkeypatch.setenv(tuning.TABLE_ENV, str(path))
    monkeypatch.setattr(tuning, "INTERPRET", False)
    monkeypatch.setattr(tuning, "device_arch", lambda device: "sm_fake")
    tuning.load_table.cache_clear()
    try:
        assert tuning.table_path() == path
        same_bucket = tuning.table_key(dict(sizes, S=240, T=250))
        config = tuning.tuned_config(name, torch.device("cuda"), same_bucket)
        assert config is not None and config.kwargs == entry["kwargs"]
        assert (config.num_warps, config.num_stages) == (8, 3)
        assert tuning.tuned_config(name, torch.device("cuda"), tuning.table_key(dict(sizes, dtype="bfloat16"))) is None
        assert tuning.tuned_config(name, torch.device("cpu"), key) is None
        # a second write merges key by key
        autotune.write_table(path, {name: {"sm_fake": {"B=1": entry}}})
        tuning.load_table.cache_clear()
        assert set(tuning.load_table()[name]["sm_fake"]) == {key, "B=1"}
    finally:
        monkeypatch.delenv(tuning.TABLE_ENV)
        tuning.load_table.cache_clear()

    path.write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        autotune.write_table(path, {name: {"sm_fake": {key: entry}}})
    assert path.read_text() == "{not json"  # refused, not overwritten
    with pytest.raises(SystemExit, match="num_warps"):
        autotune.write_table(tmp_path / "other.json", {name: {"sm_fake": {key: {"kwargs": {}}}}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: autotune.py would tune for real")
def test_autotune_refuses_without_cuda(tmp_path):
    table = tmp_path / "t.json"
    env = _env()
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, str(PERF / "autotune.py"), "--table", str(table)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode != 0
    assert "needs a CUDA device" in proc.stderr
    assert not table.exists()


def test_autotune_checks_every_config_of_every_kernel(triton_backend):
    """The recorder sees each kernel launch of the ops; every config agrees with the default one."""
    if DEVICE.type != "cpu" or not tuning.INTERPRET:
        # On a GPU every config would be compiled (about a minute): perf/autotune.py does this
        # check there, at the paper's shapes, in gpu_check.sh's autotune stage.
        pytest.skip("runs in the Triton interpreter")
    autotune = _load("autotune")
    store: dict = {}
    shapes = {
        "correlation": {"B": 2, "C": 8, "H": 4, "W": 5},
        "offset_aware_correlation": {"B": 3, "O": 16, "H": 5, "W": 6},
        "correlation_oac": {"B": 2, "C": 8, "O": 16, "H": 4, "W": 5},
        "attention_pool": {"B": 2, "C": 40, "H": 3, "W": 5},
    }
    for name, shape in shapes.items():
        spec = op_specs.OPS[name]
        inputs = spec.make(shape, torch.float32, DEVICE, torch.Generator(device=DEVICE).manual_seed(0), all_grads=True)
        before = len(store)
        with autotune.recording(store):
            out = spec.providers["triton"](inputs, "ieee")
            torch.autograd.grad(out, [v for v in inputs.values() if v.requires_grad], torch.randn_like(out))
        assert len(store) > before, f"{name}: no autotuned launch recorded"
    names = {name for name, _ in store}
    # every launch of these two ops' kernels at any size (the OAC family picks its kernels by size)
    assert {"correlation_fwd", "correlation_bwd_features", "attention_pool_fwd", "attention_pool_bwd"} <= names
    for (name, key), launch in store.items():
        configs = autotune.candidate_configs(launch.kernel, launch.args)
        checker = autotune.Checker(launch, configs[0])
        assert checker.expected, f"{name}: the default config changed no tensor"
        for config in configs:
            assert checker.check(config) is None, f"{name} [{key}] {config}"
        checker.close()
    assert tuning.launch.__name__ == "launch"  # the recorder is removed afterwards


def test_autotune_checker_rejects_a_wrong_config():
    import triton
    import triton.language as tl

    if DEVICE.type == "cpu" and not tuning.INTERPRET:
        pytest.skip("needs the Triton interpreter or a GPU")
    autotune = _load("autotune")

    @triton.jit
    def scale_kernel(p_x, p_out, n, BLOCK: tl.constexpr, SKIP_LAST: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = (o < n - 1) if SKIP_LAST else (o < n)
        tl.store(p_out + o, tl.load(p_x + o, mask=m) * 2.0, mask=m)

    configs = [
        triton.Config({"BLOCK": 16, "SKIP_LAST": False}, num_warps=1),
        triton.Config({"BLOCK": 32, "SKIP_LAST": False}, num_warps=1),
        triton.Config({"BLOCK": 16, "SKIP_LAST": True}, num_warps=1),
    ]
    kernel = tuning.autotune(configs, key=["n"])(scale_kernel)
    x = torch.randn(40, device=DEVICE)
    out = torch.empty_like(x)
    args = {"p_x": x, "p_out": out, "n": 40}
    launch = autotune.Launch(
        "scale",
        kernel,
        lambda meta: (triton.cdiv(40, meta["BLOCK"]),),
        {"n": 40},
        args,
        "n=64",
        before={"p_x": x.clone(), "p_out": out.clone()},
    )
    checker = autotune.Checker(launch, configs[0])
    assert list(checker.expected) == ["p_out"] and checker.poison
    assert checker.check(configs[1]) is None
    assert "p_out" in checker.check(configs[2])  # the unwritten last element shows as NaN


# ----------------------------------------------------------------------------------------------
# gpu_check.sh: the plumbing, without a GPU
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path):
    proc = subprocess.run(
        ["bash", str(PERF / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=_env(PYTHON=sys.executable, OUT_DIR=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.split("=== gpu_check summary")[1]
    for stage in (
        "tests (cuda)",
        "autotune",
        "goals: paper shape",
        "goals: 60x60",
        "goals: kernel times",
        "bench_ops",
        "bench_model",
        "kernel_report",
        "goals ",
    ):
        assert stage in summary
    for command in (
        "A2NET_TEST_DEVICE=cuda",
        "perf/autotune.py",
        "perf/bench_ops.py --device cuda",
        "--ops correlation_oac --batch 32 --hw 15 --channels 1024 --dtypes tf32 bf16 --providers triton "
        "reference-compiled --passes fwd+bwd",
        "--ops correlation_oac correlation_gemm --batch 8 --hw 60 --channels 1024 --dtypes tf32 bf16 "
        "--providers triton triton-unfused cublas --passes fwd",
        "perf/goals.py --profile",
        "perf/goals.py --csv",
        "perf/bench_model.py --device cuda",
        "perf/kernel_report.py",
    ):
        assert command in proc.stdout
    limits = [int(x) for x in re.findall(r"^=== .* \(limit (\d+)s\)", proc.stdout, re.M)]
    assert sum(limits) <= 8.5 * 60  # the stage budgets keep the whole run near 8 minutes
    assert (tmp_path / "gpu_check_summary.txt").exists() and (tmp_path / "gpu_check.tar.gz").exists()


@pytest.mark.skipif(shutil.which("bash") is None or torch.cuda.is_available(), reason="needs bash and no GPU")
def test_gpu_check_refuses_without_cuda():
    proc = subprocess.run(
        ["bash", str(PERF / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=_env(PYTHON=sys.executable),
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


# ----------------------------------------------------------------------------------------------
# The roofline model and the goals (no GPU needed)
# ----------------------------------------------------------------------------------------------


def test_roofline_correlation_follows_the_launchers():
    from a2net.kernels import correlation as corr
    from perf import roofline

    small = roofline.costs("correlation", "fwd", {"B": 32, "C": 1024, "H": 15, "W": 15}, "tf32")
    assert [e["name"] for e in small] == ["correlation_fwd_prep_kernel"] * 2 + ["correlation_fwd_kernel"]
    gemm = small[-1]
    # 15x15: one 256-row block of sources (the column norm in the tile), T padded to the block
    assert gemm["useful_flops"] == 2 * 32 * 225 * 225 * 1024 < gemm["flops"] == 2 * 32 * 256 * 256 * 1024
    large = roofline.costs("correlation", "fwd+bwd", {"B": 8, "C": 1024, "H": 60, "W": 60}, "bf16")
    # 60x60 at C=1024: the split match normalisation rescales (one GEMM pass, then the rescale pass)
    assert corr.match_mode(True, 3600, 1024, torch.bfloat16, "tf32") == ("scaled",)
    names = [e["name"] for e in large]
    assert names.count("correlation_fwd_kernel") == 1
    assert names.index("correlation_normalize_matches_kernel") == names.index("correlation_fwd_kernel") + 1
    rescale = large[names.index("correlation_normalize_matches_kernel")]
    assert rescale["hbm_bytes"] >= 2 * 8 * 3600 * 3600 * 2 and not rescale["tensor"]  # the output read and written
    # with few channels it recomputes: two GEMM passes, only the second writing the output
    few = roofline.costs("correlation", "fwd", {"B": 8, "C": 256, "H": 60, "W": 60}, "bf16")
    passes = [e for e in few if e["name"] == "correlation_fwd_kernel"]
    assert len(passes) == len(corr.match_mode(True, 3600, 256, torch.bfloat16, "tf32")) == 2
    assert passes[0]["hbm_bytes"] < passes[1]["hbm_bytes"]
    assert "correlation_normalize_matches_kernel" not in [e["name"] for e in few]
    assert {e["name"] for e in large} >= {"correlation_bwd_prep_kernel", "correlation_bwd_features_kernel"}
    for e in large:
        seconds, bound = roofline.predict(e, roofline.H100, "bf16")
        assert seconds > 0 and bound in ("compute", "HBM", "L2")
        assert e["flops"] >= e["useful_flops"] and e["max_over_mean"] >= 1
    h100 = roofline.predict_op("correlation", "fwd", {"B": 8, "C": 1024, "H": 60, "W": 60}, "tf32", roofline.H100)
    h200 = roofline.predict_op("correlation", "fwd", {"B": 8, "C": 1024, "H": 60, "W": 60}, "tf32", roofline.H200)
    assert h200 <= h100
    assert roofline.gpu_for("NVIDIA H200") is roofline.H200 and roofline.gpu_for("NVIDIA A100") is roofline.H100


def test_roofline_oac_family_comes_from_roofline_oac(monkeypatch):
    import types

    from perf import roofline

    shape = {"B": 8, "C": 1024, "O": 128, "H": 60, "W": 60}
    monkeypatch.setattr(roofline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(roofline.NotModelled, match="roofline_oac"):
        roofline.costs("correlation_oac", "fwd", shape, "tf32")
    calls = []

    def fake_costs(op, pass_, shape, dtype, need):
        calls.append((op, pass_, need["weight"], need["source"]))
        return [roofline.kernel(f"{op}_{pass_}_kernel", 1e9, 1e9, 1e6, 1e6, 100)]

    monkeypatch.setitem(sys.modules, "perf.roofline_oac", types.SimpleNamespace(costs=fake_costs))
    monkeypatch.setattr(roofline.importlib.util, "find_spec", lambda name: object())
    entries = roofline.costs("correlation_oac", "fwd+bwd", shape, "bf16")
    assert [e["name"] for e in entries] == ["correlation_oac_fwd_kernel", "correlation_oac_bwd_kernel"]
    assert calls == [("correlation_oac", "fwd", True, False), ("correlation_oac", "bwd", True, False)]


def test_roofline_cli_prints_the_table(capsys):
    from perf import roofline

    assert roofline.main(["--kernels"]) == 0
    out = capsys.readouterr().out
    assert "B32 15x15" in out and "B8 60x60" in out and "correlation_fwd_kernel" in out
    assert "H100 us" in out and "H200 us" in out and "(L2)" in out


def test_bench_ops_prints_predictions_on_cuda(capsys):
    """The predicted_us / of_roofline columns, from made-up CUDA rows (nothing runs on a GPU)."""
    from types import SimpleNamespace

    from perf import bench_ops, roofline

    shape = {"B": 8, "C": 1024, "H": 60, "W": 60}
    info = H.RunInfo("NVIDIA H100 80GB HBM3", "2.11", "3.6", "abc", "2026-01-01T00:00:00Z")
    rows = [
        info.row(
            op="correlation",
            **{"pass": "fwd"},
            shape="B8-C1024-H60-W60",
            dtype="tf32",
            provider=provider,
            timer="do_bench",
            ms_p20=ms,
            ms_p50=ms,
            ms_p80=ms,
            peak_mb=1.0,
            gflop=1.0,
            gbyte=1.0,
            rel_err=1e-4,
        )
        for provider, ms in (("triton", 3.2), ("reference", 6.0))
    ]
    ctx = SimpleNamespace(
        device=torch.device("cuda"), args=SimpleNamespace(all_grads=False), info=info, peaks=None, subject="triton"
    )
    bench_ops.print_case(ctx, op_specs.OPS["correlation"], shape, "tf32", rows)
    out = capsys.readouterr().out
    predicted = roofline.predict_op("correlation", "fwd", shape, "tf32", roofline.H100) * 1e6
    assert "predicted_us" in out and "of_roofline" in out
    assert f"{predicted:.1f}" in out and f"{predicted / 3200:.0%}" in out


def test_goals_from_rows_and_kernel_times():
    from perf import goals, roofline

    info = H.RunInfo("NVIDIA H100 80GB HBM3", "2.11", "3.6", "abc", "2026-01-01T00:00:00Z")

    def row(op, pass_, shape, dtype, provider, ms, peak=None):
        return info.row(
            op=op,
            **{"pass": pass_},
            shape=shape,
            dtype=dtype,
            provider=provider,
            timer="do_bench",
            ms_p50=ms,
            peak_mb=peak,
        )

    paper, large = "B32-C1024-O128-H15-W15", "B8-C1024-O128-H60-W60"
    rows = []
    for dtype, speedup, gemm_ratio in (("tf32", 4.0, 1.2), ("bf16", 2.0, 1.5)):
        rows += [
            row("correlation_oac", "fwd+bwd", paper, dtype, "triton", 1.0),
            row("correlation_oac", "fwd+bwd", paper, dtype, "reference-compiled", speedup),
            row(
                "correlation_oac",
                "fwd",
                large,
                dtype,
                "triton",
                gemm_ratio,
                peak=goals.input_mib(goals.LARGE, dtype) + 20,
            ),
            row(
                "correlation_oac",
                "fwd",
                large,
                dtype,
                "triton-unfused",
                3.0,
                peak=goals.input_mib(goals.LARGE, dtype) + 400,
            ),
            row("correlation_gemm", "fwd", "B8-C1024-H60-W60", dtype, "cublas", 1.0),
        ]
    lines = [text for text, _ in goals.bench_goals(rows)]
    assert len(lines) == 6
    assert lines[0].endswith(": met") and "4.00" in lines[0]
    assert lines[1].endswith(": NOT MET") and "2.00" in lines[1]
    assert lines[2].endswith(": met") and "1.20" in lines[2]
    assert lines[3].endswith(": met") and "20.00" in lines[3]  # 400 / 20 MiB of working memory
    assert lines[4].endswith(": NOT MET")

    predicted = {}
    for e in roofline.costs("correlation", "fwd+bwd", goals.LARGE, "tf32"):
        predicted[e["name"]] = predicted.get(e["name"], 0.0) + roofline.predict(e, roofline.H100, "tf32")[0] * 1e6
    measured = {
        "correlation_fwd_kernel": predicted["correlation_fwd_kernel"] * 1.5,  # 67% of its roofline
        "correlation_bwd_features_kernel": predicted["correlation_bwd_features_kernel"] * 3,  # 33%
        "correlation_bwd_prep_kernel": 1e9,  # not a contraction: not judged
    }
    results = goals.kernel_goals({"tf32": {"correlation": measured}}, "NVIDIA H100 80GB HBM3")
    assert [ok for _, ok in results] == [False, True]
    assert "correlation_bwd_features_kernel" in results[0][0] and "0.33" in results[0][0]
    assert goals.main([]) == 1  # nothing measured: every goal says so
