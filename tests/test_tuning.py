"""kernels/_tuning.py: how a launch picks its config, with fake kernels (no GPU needed).

The CUDA-only branches are reached by monkeypatching what a GPU would answer: the interpreter
switch, the device's arch, the capture check, the spill probe and the benchmark.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

import a2net.kernels as kernel_package
import a2net.kernels._tuning as tuning

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")  # a descriptor only: nothing here touches a GPU


def fake_kernel_fn(p_x, n, FLAG: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK: tl.constexpr):
    """The signature of a kernel: two runtime arguments, two flags and a tuned block size."""


class FakeJIT:
    """Stands for a JIT function: records launches and compiles (``warmup``) per config."""

    def __init__(self):
        self.fn = fake_kernel_fn
        self.launches: list[dict] = []
        self.compiled: list[int] = []
        self.spilling: set[int] = set()

    def __getitem__(self, grid):
        def run(**kwargs):
            self.launches.append(kwargs)

        return run

    def warmup(self, grid, **kwargs):
        block = kwargs["BLOCK"]
        self.compiled.append(block)
        spills = block in self.spilling

        class Compiled:
            n_spills = 8 if spills else 0

            def _init_handles(self):
                pass

        return Compiled()


CONFIGS = [
    triton.Config({"BLOCK": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK": 128}, num_warps=8, num_stages=4),
]
#: Milliseconds the fake benchmark reports per BLOCK.
TIMES = {16: 3.0, 32: 2.0, 64: 1.0, 128: 0.5}
ARGS = {"p_x": None, "n": 100, "FLAG": True, "INPUT_PRECISION": "tf32"}
SIZES = {"n": 100, "dtype": "float32"}


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """A pretend sm_90 GPU: no interpreter, no capture, an empty table, the fake benchmark."""
    monkeypatch.setattr(tuning, "INTERPRET", False)
    monkeypatch.setattr(tuning, "SEARCH", True)
    monkeypatch.setattr(tuning, "device_arch", lambda device: "sm_90")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.delenv(tuning.DETERMINISTIC_ENV, raising=False)
    table = tmp_path / "table.json"
    monkeypatch.setenv(tuning.TABLE_ENV, str(table))
    tuning.load_table.cache_clear()
    benchmarked = []

    def fake_benchmark(kernel, grid, args, config):
        benchmarked.append(config.kwargs["BLOCK"])
        return TIMES[config.kwargs["BLOCK"]]

    monkeypatch.setattr(tuning, "benchmark", fake_benchmark)
    yield {"table": table, "benchmarked": benchmarked}
    tuning.load_table.cache_clear()


def make_kernel(prune=None):
    return tuning.autotune(CONFIGS, key=["n"], prune_configs_by={"early_config_prune": prune} if prune else None)(
        FakeJIT()
    )


def pick(kernel, args=ARGS, device=CUDA):
    key = tuning.call_key(kernel, SIZES, args)
    config, why = tuning.select_config(kernel, None, name="fake", device=device, key=key, args=args)
    return config.kwargs["BLOCK"], why


# ------------------------------------------------------------------------------------------------
# Keys
# ------------------------------------------------------------------------------------------------


def test_table_key_buckets_sizes_and_keeps_flags():
    assert tuning.table_key({"S": 225, "C": 1024, "dtype": "float32"}) == "C=1024,S=256,dtype=float32"
    # bools are not sizes: True and False must not both bucket to 1
    assert tuning.table_key({"RELU": True}) != tuning.table_key({"RELU": False})
    assert tuning.table_key({"RELU": False}) == "RELU=False"
    assert tuning.table_key({"MATCH": "final", "INPUT_PRECISION": "ieee"}) == "INPUT_PRECISION=ieee,MATCH=final"


def test_call_key_holds_every_flag_but_not_the_tuned_values():
    kernel = make_kernel()
    assert kernel.flags == {"FLAG", "INPUT_PRECISION"}
    tf32 = tuning.call_key(kernel, SIZES, ARGS)
    ieee = tuning.call_key(kernel, SIZES, dict(ARGS, INPUT_PRECISION="ieee"))
    assert tf32 != ieee and "INPUT_PRECISION=tf32" in tf32
    assert tuning.call_key(kernel, SIZES, dict(ARGS, FLAG=False)) != tf32
    assert "BLOCK" not in tf32 and "p_x" not in tf32


def test_every_kernel_keys_on_its_input_precision_and_flags():
    """All autotuned kernels of the package: every constexpr no config sets is a flag of the key."""
    tuners = []
    for info in pkgutil.iter_modules(kernel_package.__path__):
        module = importlib.import_module(f"a2net.kernels.{info.name}")
        tuners += [v for v in vars(module).values() if isinstance(v, tuning.Tuner)]
    assert tuners
    for kernel in tuners:
        constexprs = set(tuning.constexpr_names(kernel.fn))
        tuned = {k for c in kernel.all_configs for k in c.kwargs}
        assert kernel.flags == constexprs - tuned, kernel
        if "INPUT_PRECISION" in constexprs:
            assert "INPUT_PRECISION" in kernel.flags, kernel


def test_correlation_forward_key_separates_precisions_and_passes():
    from a2net.kernels.correlation import correlation_fwd_kernel

    flags = {"NORM_FEAT", "RELU", "MATCH", "BLOCK_S", "EVEN_C", "INPUT_PRECISION", "DOT_FP32", "FP64"}
    assert correlation_fwd_kernel.flags == flags
    args = {"MATCH": "final", "INPUT_PRECISION": "tf32", "BLOCK_S": 128, "NORM_FEAT": True}
    sizes = {"S": 3600, "T": 3600, "C": 1024, "dtype": "float32"}
    keys = {
        tuning.call_key(correlation_fwd_kernel, sizes, dict(args, **change))
        for change in ({}, {"INPUT_PRECISION": "ieee"}, {"MATCH": "partials"}, {"NORM_FEAT": False})
    }
    assert len(keys) == 4


# ------------------------------------------------------------------------------------------------
# The policy
# ------------------------------------------------------------------------------------------------


def test_search_skips_spilling_configs_and_caches(gpu):
    kernel = make_kernel()
    kernel.fn.spilling = {128}  # the fastest one spills: never benchmarked, never picked
    assert pick(kernel) == (64, "searched")
    assert sorted(gpu["benchmarked"]) == [16, 32, 64]
    assert sorted(kernel.fn.compiled) == [16, 32, 64, 128]
    assert pick(kernel) == (64, "cached")
    assert len(gpu["benchmarked"]) == 3  # no second search


def test_all_configs_spilling_falls_back_to_the_default(gpu):
    kernel = make_kernel()
    kernel.fn.spilling = {16, 32, 64, 128}
    assert pick(kernel) == (16, "searched")
    assert gpu["benchmarked"] == []


def test_a_config_that_does_not_compile_counts_as_spilling(gpu):
    kernel = make_kernel()

    def broken(grid, **kwargs):
        raise RuntimeError("out of resources")

    kernel.fn.warmup = broken
    assert tuning.spills(kernel, None, ARGS, CONFIGS[1])


def test_pruned_configs_are_never_tried_and_the_first_kept_is_the_default(gpu, monkeypatch):
    kernel = make_kernel(prune=lambda configs, named, **args: [c for c in configs if c.kwargs["BLOCK"] in (32, 64)])
    assert kernel.candidates(ARGS)[0].kwargs["BLOCK"] == 32
    assert pick(kernel) == (64, "searched")
    assert sorted(gpu["benchmarked"]) == [32, 64]
    monkeypatch.setattr(tuning, "SEARCH", False)
    assert pick(make_kernel(prune=kernel.early_config_prune)) == (32, "default")


def test_no_benchmark_while_a_cuda_graph_is_captured(gpu, monkeypatch):
    kernel = make_kernel()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert pick(kernel) == (16, "default")
    assert gpu["benchmarked"] == [] and kernel.fn.compiled == []
    assert kernel.cache == {}  # the fallback is not remembered: the next plain call searches
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert pick(kernel) == (128, "searched")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert pick(kernel) == (128, "cached")  # what this process already measured is fine in a capture


@pytest.mark.parametrize("switch", ["env", "torch"])
def test_deterministic_mode_fixes_the_config(gpu, monkeypatch, switch):
    kernel = make_kernel()
    assert pick(kernel) == (128, "searched")  # a search happened earlier in this process
    if switch == "env":
        monkeypatch.setenv(tuning.DETERMINISTIC_ENV, "1")
    else:
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert tuning.deterministic()
    # not the timing-dependent winner: the default, the same in every process
    assert pick(kernel) == (16, "default")
    assert pick(make_kernel()) == (16, "default") and len(gpu["benchmarked"]) == 4


def test_deterministic_mode_and_capture_take_the_table(gpu, monkeypatch):
    kernel = make_kernel()
    key = tuning.call_key(kernel, SIZES, ARGS)
    entry = {"kwargs": {"BLOCK": 32}, "num_warps": 4, "num_stages": 3}
    gpu["table"].write_text(json.dumps({"_comment": "test", "fake": {"sm_90": {key: entry}}}))
    tuning.load_table.cache_clear()
    monkeypatch.setenv(tuning.DETERMINISTIC_ENV, "1")
    assert pick(kernel) == (32, "table")
    monkeypatch.delenv(tuning.DETERMINISTIC_ENV)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert pick(kernel) == (32, "table")
    assert gpu["benchmarked"] == []


def test_a_tf32_table_entry_is_not_used_for_ieee(gpu):
    kernel = make_kernel()
    key = tuning.call_key(kernel, SIZES, ARGS)
    gpu["table"].write_text(
        json.dumps({"fake": {"sm_90": {key: {"kwargs": {"BLOCK": 32}, "num_warps": 4, "num_stages": 3}}}})
    )
    tuning.load_table.cache_clear()
    assert pick(kernel) == (32, "table")
    assert pick(kernel, dict(ARGS, INPUT_PRECISION="ieee")) == (128, "searched")


def test_no_search_switch_and_interpreter_take_the_default(gpu, monkeypatch):
    kernel = make_kernel()
    monkeypatch.setattr(tuning, "SEARCH", False)
    assert pick(kernel) == (16, "default")
    monkeypatch.setattr(tuning, "SEARCH", True)
    monkeypatch.setattr(tuning, "INTERPRET", True)
    assert pick(kernel) == (16, "default")
    monkeypatch.setattr(tuning, "INTERPRET", False)
    assert pick(kernel, device=torch.device("cpu")) == (16, "default")
    assert gpu["benchmarked"] == []


def test_launch_runs_the_chosen_config(gpu):
    kernel = make_kernel()
    tuning.launch(kernel, lambda meta: (1,), name="fake", device=CUDA, sizes=SIZES, **ARGS)
    (launched,) = [call for call in kernel.fn.launches if call.get("num_warps") == 8]
    assert launched["BLOCK"] == 128 and launched["num_stages"] == 4 and launched["FLAG"] is True


def test_autotune_arguments():
    with pytest.raises(ValueError, match="at least one config"):
        tuning.autotune([], key=["n"])(FakeJIT())
    with pytest.raises(TypeError, match="perf_model"):
        tuning.autotune(CONFIGS, key=["n"], prune_configs_by={"perf_model": None})


# ------------------------------------------------------------------------------------------------
# The shipped table
# ------------------------------------------------------------------------------------------------


def test_shipped_table_is_empty_and_packaged(monkeypatch):
    data = json.loads(tuning.TABLE_PATH.read_text())
    assert set(data) == {"_comment"} and "perf/autotune.py" in data["_comment"]
    monkeypatch.delenv(tuning.TABLE_ENV, raising=False)
    tuning.load_table.cache_clear()
    try:
        assert tuning.load_table() == {}
    finally:
        tuning.load_table.cache_clear()
    package_data = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    assert re.search(r'^a2net = \[[^]]*"kernels/\*\.json"', package_data, re.M)
