"""perf/kernel_report.py and perf/kernel_specs.py: AOT compilation of the kernels' configs for
sm_80/sm_90, without a GPU.

The report runs in a subprocess, as CI runs it: this process has ``TRITON_INTERPRET=1``
(conftest), under which ``@triton.jit`` builds interpreter functions that cannot be compiled, so
the script re-runs itself without it. This file is also a spec module for the report: its toy
kernels below are listed in :data:`SPECS` and compiled by ``--module``.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import triton
import triton.language as tl

from perf import kernel_specs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "perf" / "kernel_report.py"


def _load_report():
    spec = importlib.util.spec_from_file_location("kernel_report_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kernel_report = _load_report()


# ----------------------------------------------------------------------------------------------
# Toy kernels (compiled by the report in a subprocess, never launched here)
# ----------------------------------------------------------------------------------------------


@triton.jit
def toy_add_kernel(p_x, p_y, p_out, n, BLOCK: tl.constexpr):
    i_b = tl.program_id(0)
    o_x = i_b * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    m_x = o_x < n
    b_x = tl.load(p_x + o_x, mask=m_x, other=0.0)
    b_y = tl.load(p_y + o_x, mask=m_x, other=0.0)
    tl.store(p_out + o_x, b_x + b_y, mask=m_x)


@triton.jit
def toy_dot_kernel(p_a, p_b, p_c, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    o_m = tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_k = tl.arange(0, BK)
    b_a = tl.load(p_a + o_m[:, None] * BK + o_k[None, :])  # [BM, BK]
    b_b = tl.load(p_b + o_k[:, None] * BN + o_n[None, :])  # [BK, BN]
    tl.store(p_c + o_m[:, None] * BN + o_n[None, :], tl.dot(b_a, b_b))


def toy_specs(all_configs: bool = False) -> list[dict]:
    """The toy specs: the add kernel by default; an oversized-shared-memory dot as an extra.

    The dot's two fp16 operand blocks, 128x512 and 512x128, need 256 KiB of shared memory: more
    than sm_90's 227 KiB per block, which the compiler accepts and the report must flag.
    """
    specs = [
        {
            "name": "toy_add[fp32,BLOCK1024]",
            "fn": toy_add_kernel,
            "signature": {"p_x": "*fp32", "p_y": "*fp32", "p_out": "*fp32", "n": "i32"},
            "constexprs": {"BLOCK": 1024},
            "num_warps": 4,
            "num_stages": 1,
        }
    ]
    if all_configs:
        specs.append(
            {
                "name": "toy_dot[fp16,oversized]",
                "fn": toy_dot_kernel,
                "signature": {"p_a": "*fp16", "p_b": "*fp16", "p_c": "*fp32"},
                "constexprs": {"BM": 128, "BN": 128, "BK": 512},
                "num_warps": 8,
                "num_stages": 1,
            }
        )
    return specs


SPECS = {"toy": toy_specs}


def _run_report(tmp_path, *args, timeout=300):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


# ----------------------------------------------------------------------------------------------
# The kernels' specs
# ----------------------------------------------------------------------------------------------

#: Specs each op's default list must hold (prefixes of their names).
EXPECTED_SPECS = {
    "correlation": [
        "correlation_fwd[fp32,H15,tile,cfg0]",
        "correlation_fwd[bf16,H60,partials,cfg0]",
        "correlation_fwd[bf16,H60,final,cfg0]",
        "correlation_bwd_features[fp32,H30,cfg0]",
    ],
    "offset_aware_correlation": [],
    "attention_pool": ["attention_pool_fwd[bf16", "attention_pool_bwd[fp32"],
    "correlation_oac": [
        f"correlation_oac_{kernel}[{tag},cfg0]"
        for kernel in ("fwd", "bwd_weight", "bwd_corr")
        for tag in ("fp32,H15", "bf16,H30", "bf16,H60")
    ],
}


@pytest.mark.parametrize("op", list(kernel_specs.SPECS))
def test_kernel_specs_cover_every_argument(op):
    lister = kernel_specs.SPECS[op]
    for all_configs in (False, True):
        specs = lister(all_configs)
        names = [s["name"] for s in specs]
        assert names and len(names) == len(set(names))
        for spec in specs:
            assert set(spec) == {"name", "fn", "signature", "constexprs", "num_warps", "num_stages", "contraction"}
            assert set(spec["signature"]) | set(spec["constexprs"]) == set(spec["fn"].arg_names), spec["name"]
            assert not set(spec["signature"]) & set(spec["constexprs"]), spec["name"]
    names = [s["name"] for s in lister()]
    for prefix in EXPECTED_SPECS[op]:
        assert any(n.startswith(prefix) for n in names), prefix


def test_report_compiles_default_configs_of_kernel_specs(tmp_path):
    proc, report = _run_report(tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert report is not None and report["exit_status"] == 0, output
    assert report["archs"] == [80, 90]
    rows = report["rows"]
    for group, lister in kernel_specs.SPECS.items():
        names = [s["name"] for s in lister()]
        assert names, f"kernel_specs.SPECS[{group!r}] lists nothing"
        for name in names:
            assert name in proc.stdout, f"{name} missing from the report:\n{output}"
            archs = {r["arch"] for r in rows if r["name"] == name and r["group"] == group}
            assert archs == {80, 90}, name
    for row in rows:
        assert row["regs"] and row["regs"] > 0, row
        assert row["shared"] <= row["shared_limit"], row
    assert report["skipped"] == [] and report["failed"] == []
    assert {r["group"] for r in rows} == set(kernel_specs.SPECS)


# ----------------------------------------------------------------------------------------------
# The toy kernels
# ----------------------------------------------------------------------------------------------


def test_toy_kernels_parsed_and_oversized_shared_memory_flagged(tmp_path):
    proc, report = _run_report(tmp_path, "--module", str(Path(__file__).resolve()), "--arch", "sm_90", "--all-configs")
    output = proc.stdout + proc.stderr
    # The oversized config is an extra one: listed and flagged, not failing the exit status.
    assert proc.returncode == 0, output
    rows = {r["name"]: kernel_report.Row.from_dict(r) for r in report["rows"]}
    assert set(rows) == {"toy_add[fp32,BLOCK1024]", "toy_dot[fp16,oversized]"}

    add = rows["toy_add[fp32,BLOCK1024]"]
    assert add.default and add.ok and add.error is None, output
    assert add.arch == 90 and add.num_warps == 4 and add.num_stages == 1
    assert add.regs > 0
    assert add.ptxas_regs == add.regs  # cuobjdump and the ptxas log agree
    assert add.stack == 0 and add.local == 0 and add.spill_stores == 0 and add.spill_loads == 0
    assert add.spills == 0
    assert add.shared_limit == 232448 and add.shared <= add.shared_limit

    dot = rows["toy_dot[fp16,oversized]"]
    assert not dot.default and dot.error is None, output
    assert dot.shared >= 2 * 128 * 512 * 2 > dot.shared_limit == 232448
    assert any(p.startswith("shared") for p in dot.problems)
    assert not dot.ok
    assert "flagged: shared" in proc.stdout

    # The same oversized config as a default one fails the exit status.
    assert kernel_report.exit_status([add]) == 0
    assert kernel_report.exit_status([add, dot]) == 0
    dot.default = True
    assert kernel_report.exit_status([add, dot]) == 1


# ----------------------------------------------------------------------------------------------
# Parsers and checks (no compilation)
# ----------------------------------------------------------------------------------------------

CUOBJDUMP_TWO_FUNCTIONS = """
Resource usage:
 Common:
  GLOBAL:0
 Function spilling_kernel:
  REG:255 STACK:48 SHARED:0 LOCAL:40 CONSTANT[0]:592 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function add_kernel:
  REG:30 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:576 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'other' for 'sm_90a'
ptxas info    : Function properties for other
    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 380 bytes cmem[0]
ptxas info    : Compiling entry function 'add_kernel' for 'sm_90a'
ptxas info    : Function properties for add_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 30 registers, used 1 barriers, 576 bytes cmem[0]
ptxas info    : Compile time = 6.553 ms
"""


def test_parse_resource_usage():
    usage = kernel_report.parse_resource_usage(CUOBJDUMP_TWO_FUNCTIONS)
    assert set(usage) == {"spilling_kernel", "add_kernel"}
    assert usage["add_kernel"]["REG"] == 30 and usage["add_kernel"]["LOCAL"] == 0
    assert usage["spilling_kernel"] == {
        "REG": 255,
        "STACK": 48,
        "SHARED": 0,
        "LOCAL": 40,
        "CONSTANT[0]": 592,
        "TEXTURE": 0,
        "SURFACE": 0,
        "SAMPLER": 0,
    }
    assert kernel_report.parse_resource_usage("") == {}


def test_parse_ptxas_log_picks_the_entry_function():
    assert kernel_report.parse_ptxas_log(PTXAS_LOG, "add_kernel") == {
        "regs": 30,
        "stack_frame": 0,
        "spill_stores": 0,
        "spill_loads": 0,
    }
    assert kernel_report.parse_ptxas_log(PTXAS_LOG, "other")["spill_stores"] == 8
    assert kernel_report.parse_ptxas_log("", "add_kernel") == {}


@pytest.mark.parametrize(
    "figures, problem",
    [
        (dict(regs=64, stack=0, local=0, spill_stores=0, spill_loads=0, shared=1024), None),
        (dict(regs=255, stack=0, local=16, spill_stores=16, spill_loads=16, shared=0), "spills"),
        (dict(regs=64, stack=0, local=0, spill_stores=0, spill_loads=0, shared=166913), "shared"),
        (dict(regs=255, stack=0, local=0, spill_stores=0, spill_loads=0, shared=0, num_warps=16), "255 regs"),
        (dict(error="ptxas failed"), "compile error"),
    ],
    ids=["ok", "spills", "shared-over-sm80", "regs-per-block", "compile-error"],
)
def test_row_check(figures, problem):
    row = kernel_report.Row(
        name="k",
        group="g",
        arch=80,
        num_warps=figures.pop("num_warps", 4),
        num_stages=2,
        shared_limit=kernel_report.MAX_SHARED[80],
        **figures,
    )
    row.check()
    if problem is None:
        assert row.ok and kernel_report.exit_status([row]) == 0
    else:
        assert any(p.startswith(problem) for p in row.problems), row.problems
        assert kernel_report.exit_status([row]) == 1
        row.default = False
        assert kernel_report.exit_status([row]) == 0
