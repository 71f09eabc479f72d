"""perf/: the CPU benchmark end to end, the results CSV, the plots, the tuned-config table
round trip, the autotuner's config checker, and gpu_check.sh's plumbing.

The benchmarks write to temporary CSVs (``--csv``), never to the committed
perf/results/results.csv; the tuned table goes to a temporary path read back through
``A2NET_TUNED_CONFIGS``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
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
        with autotune.recording(store):
            out = spec.providers["triton"](inputs, "ieee")
            torch.autograd.grad(out, [v for v in inputs.values() if v.requires_grad], torch.randn_like(out))
    names = {name for name, _ in store}
    assert {
        "correlation_fwd",
        "correlation_bwd_features",
        "offset_aware_correlation_fwd",
        "offset_aware_correlation_bwd_corr",
        "offset_aware_correlation_bwd_weight",
        "offset_aware_correlation_bwd_bias",
        "correlation_oac_fwd",
        "correlation_oac_bwd_weight",
        "correlation_oac_bwd_corr",
        "attention_pool_fwd",
        "attention_pool_bwd",
    } <= names, names
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
    for stage in ("tests (cuda)", "autotune", "bench_ops", "bench_model", "kernel_report"):
        assert stage in summary
    for command in (
        "A2NET_TEST_DEVICE=cuda",
        "perf/autotune.py",
        "perf/bench_ops.py --device cuda",
        "perf/bench_model.py --device cuda",
        "perf/kernel_report.py",
    ):
        assert command in proc.stdout
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
