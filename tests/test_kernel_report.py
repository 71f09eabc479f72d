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


@triton.jit
def toy_gemm_kernel(p_a, p_b, p_c, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, K_MAJOR: tl.constexpr):
    """``c[m, n] = sum_k a[m, k] b[n, k]`` over a K loop; the operands' rows run along ``k``
    (``K_MAJOR``: 16-byte aligned rows when K is a multiple of 16) or along ``m``/``n``."""
    o_m = tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    o_k = tl.arange(0, BK)
    if K_MAJOR:
        p_at = p_a + o_m[:, None] * K + o_k[None, :]  # [BM, BK]
        p_bt = p_b + o_n[:, None] * K + o_k[None, :]  # [BN, BK]
    else:
        p_at = p_a + o_k[None, :] * BM + o_m[:, None]
        p_bt = p_b + o_k[None, :] * BN + o_n[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K, BK):
        acc = tl.dot(tl.load(p_at), tl.trans(tl.load(p_bt)), acc)
        p_at += BK if K_MAJOR else BK * BM
        p_bt += BK if K_MAJOR else BK * BN
    tl.store(p_c + o_m[:, None] * BN + o_n[None, :], acc)


def _toy_gemm(name: str, dtype: str, bm: int, k_major: bool) -> dict:
    return {
        "name": name,
        "fn": toy_gemm_kernel,
        "signature": {"p_a": f"*{dtype}", "p_b": f"*{dtype}", "p_c": "*fp32", "K": "i32:16"},
        "constexprs": {"BM": bm, "BN": 64, "BK": 32, "K_MAJOR": k_major},
        "num_warps": 4,
        "num_stages": 3,
        "contraction": True,
    }


def toy_specs(all_configs: bool = False) -> list[dict]:
    """The toy specs: the add kernel and a K-major fp16 GEMM (a contraction that meets its tiling)
    by default; as extras, an oversized-shared-memory dot, an fp32 GEMM with M-major operands
    (tf32 ``wgmma`` takes K-major operands only, so they are copied 4 bytes at a time) and a
    16-row GEMM (below ``wgmma``'s 64 rows: ``mma.sync``).

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
        },
        _toy_gemm("toy_gemm[fp16,K-major]", "fp16", 64, True),
    ]
    if all_configs:
        specs.append(_toy_gemm("toy_gemm[fp32,M-major]", "fp32", 64, False))
        specs.append(_toy_gemm("toy_gemm[fp16,M16]", "fp16", 16, True))
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


def _run_report(tmp_path, *args, timeout=900):
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
        "correlation_fwd[bf16,H60,scaled,cfg0]",
        "correlation_normalize_matches[fp32,H60]",
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


def _listings(lister, all_configs: bool):
    """The lister's specs for each architecture the report compiles (once when it takes no arch)."""
    if not kernel_report.takes_arch(lister):
        return [lister(all_configs)]
    return [lister(all_configs, arch=arch) for arch in kernel_report.DEFAULT_ARCHS]


@pytest.mark.parametrize("op", list(kernel_specs.SPECS))
def test_kernel_specs_cover_every_argument(op):
    lister = kernel_specs.SPECS[op]
    for specs in [specs for all_configs in (False, True) for specs in _listings(lister, all_configs)]:
        names = [s["name"] for s in specs]
        assert names and len(names) == len(set(names))
        for spec in specs:
            assert set(spec) == {"name", "fn", "signature", "constexprs", "num_warps", "num_stages", "contraction"}
            assert set(spec["signature"]) | set(spec["constexprs"]) == set(spec["fn"].arg_names), spec["name"]
            assert not set(spec["signature"]) & set(spec["constexprs"]), spec["name"]
    names = [s["name"] for s in lister()]
    for prefix in EXPECTED_SPECS[op]:
        assert any(n.startswith(prefix) for n in names), prefix


def test_specs_per_architecture():
    """The fused forward's specs carry each architecture's tiles (128 targets in bf16 only on
    sm_90); the report lists per architecture only the listers that take ``arch``."""

    def tiles(arch):
        (spec,) = [
            s
            for s in kernel_specs.correlation_oac_specs(arch=arch)
            if s["name"] == "correlation_oac_fwd[bf16,H60,cfg0]"
        ]
        c = spec["constexprs"]
        return c["RT"] * c["BX"], c["RS"] * c["BX"]

    assert tiles(80) == (64, 128) and tiles(90) == (128, 128)
    assert kernel_report.takes_arch(kernel_specs.correlation_oac_specs)
    assert not kernel_report.takes_arch(toy_specs)
    calls = []

    def per_arch(all_configs=False, arch=90):
        calls.append(arch)
        return [{"name": f"k{arch}"}]

    assert kernel_report.collect_specs(per_arch, False, 80) == [({"name": "k80"}, True)]
    assert kernel_report.collect_specs(toy_specs, False, 80) == [(s, True) for s in toy_specs()]
    assert calls == [80]


#: Kernels whose specs must say ``contraction``: the GEMM-like ones (names before the ``[``).
CONTRACTIONS = {
    "correlation_fwd",
    "correlation_bwd_features",
    "offset_aware_correlation_fwd",
    "offset_aware_correlation_bwd_corr",
    "offset_aware_correlation_bwd_weight",
    "correlation_oac_fwd",
    "correlation_oac_bwd_weight",
    "correlation_oac_bwd_corr",
}


@pytest.mark.parametrize("op", list(kernel_specs.SPECS))
def test_contraction_kernels_are_marked(op):
    """Only GEMM-like kernels are marked, and each of them in at least one default spec (a layout
    variant may be exempt: the OAC's dW reading a contiguous 15x15 correlation, whose 900-byte
    rows no 16-byte copy can load)."""
    specs = kernel_specs.SPECS[op]()
    marked = {spec["name"].split("[")[0] for spec in specs if spec["contraction"]}
    assert marked <= CONTRACTIONS
    assert {spec["name"].split("[")[0] for spec in specs} & CONTRACTIONS <= marked


def test_report_compiles_default_configs_of_kernel_specs(tmp_path):
    proc, report = _run_report(tmp_path)
    output = proc.stdout + proc.stderr
    assert report is not None, output
    failing = [f"{r['name']} sm_{r['arch']}: {r['problems']}" for r in report["rows"] if r["default"] and r["problems"]]
    assert not failing, output
    assert proc.returncode == report["exit_status"] == 0, output
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
        if row["contraction"]:  # every main loop found, loading 16-byte copies
            assert row["loads"] in ("cp.async.16", "tma"), row
        if row["contraction"] and row["arch"] == 90:
            assert row["wgmma"] > 0 and row["mma_sync"] == 0, row
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
    assert set(rows) == {
        "toy_add[fp32,BLOCK1024]",
        "toy_dot[fp16,oversized]",
        "toy_gemm[fp16,K-major]",
        "toy_gemm[fp32,M-major]",
        "toy_gemm[fp16,M16]",
    }

    gemm = rows["toy_gemm[fp16,K-major]"]
    assert gemm.default and gemm.contraction and gemm.ok, output
    assert gemm.wgmma > 0 and gemm.mma_sync == 0 and gemm.loads == "cp.async.16"
    m_major = rows["toy_gemm[fp32,M-major]"]
    assert m_major.wgmma > 0 and m_major.loads == "cp.async.4"
    assert m_major.problems == ["main-loop loads cp.async.4 (< 16 bytes)"]
    small = rows["toy_gemm[fp16,M16]"]
    assert small.mma_sync > 0 and small.wgmma == 0
    assert small.problems[:2] == [f"mma.sync ({small.mma_sync}) on sm_90", "no wgmma on sm_90"]
    assert "flagged: main-loop loads cp.async.4" in proc.stdout

    add = rows["toy_add[fp32,BLOCK1024]"]
    assert add.default and add.ok and add.error is None, output
    assert add.arch == 90 and add.num_warps == 4 and add.num_stages == 1
    assert add.regs > 0 and not add.contraction
    assert add.wgmma == 0 and add.mma_sync == 0 and add.loads is None  # no loop
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


#: PTX as LLVM lays it out, with its loop comments in both shapes: the outer loop's header mark on
#: its label's line, the nested loop's on the comment lines after its label; the outer loop's latch
#: (``BB0_6``) placed before its header; a fall-through block (``// %bb.N:``) in the outer loop.
PTX_NESTED_LOOPS = """
.visible .entry k(
)
{
	ld.global.b32 	%r1, [%rd1];
	cp.async.cg.shared.global [ %r2 + 0 ], [ %rd2 + 0 ], 0x10, %r3;
	bra.uni 	$L__BB0_2;
$L__BB0_6:                              // %._crit_edge
                                        //   in Loop: Header=BB0_2 Depth=1
	ld.global.b32 	%r20, [%rd20];
$L__BB0_2:                              // =>This Loop Header: Depth=1
                                        //     Child Loop BB0_3 Depth 2
	ld.global.v2.b32 	{%r21, %r22}, [%rd21];
	wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1}, %rd1, %rd2, 1, 1, 1, 1, 1;
// %bb.1:                               // %.lr.ph
                                        //   in Loop: Header=BB0_2 Depth=1
	cp.async.cg.shared.global [ %r4 + 0 ], [ %rd4 + 0 ], 0x10, %r5;
$L__BB0_3:                              // %.lr.ph.body
                                        //   Parent Loop BB0_2 Depth=1
                                        // =>  This Inner Loop Header: Depth=2
	cp.async.cg.shared.global [ %r6 + 0 ], [ %rd6 + 0 ], 0x10, %r7;
	ld.global.v4.b32 	{%r8, %r9, %r10, %r11}, [%rd8];
	wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1}, %rd1, %rd2, 1, 1, 1, 1, 1;
	@%p1 bra 	$L__BB0_3;
// %bb.4:                               // %._crit_edge.loopexit
                                        //   in Loop: Header=BB0_2 Depth=1
	@%p2 bra 	$L__BB0_6;
// %bb.5:
	mov.b32 	%r12, 0;
$L__BB0_7:                              // =>This Inner Loop Header: Depth=1
	ld.global.v2.b16 	{%rs1, %rs2}, [%rd9];
	fma.rn.f32 	%r9, %r10, %r11, %r9;
	@%p3 bra 	$L__BB0_7;
// %bb.8:
	mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%r1}, {%r2}, {%r3}, {%r4};
	ret;
}
$L__func_end0:
"""


def _lines_of(ptx: str, *needles: str) -> list[int]:
    lines = ptx.splitlines()
    return [i for i, line in enumerate(lines) if any(n in line for n in needles)]


def test_ptx_loops_from_llvm_comments():
    """Loop headers marked on the label's line and on the next comment lines; every block of a
    loop (the latch laid out before its header, fall-through blocks) is in it; nested loops' lines
    are not in their parent's own body."""
    loops = kernel_report.ptx_loops(PTX_NESTED_LOOPS.splitlines())
    assert set(loops) == {"BB0_2", "BB0_3", "BB0_7"}
    assert [loops[h]["parent"] for h in ("BB0_2", "BB0_3", "BB0_7")] == [None, "BB0_2", None]
    lines = PTX_NESTED_LOOPS.splitlines()
    own = {h: [lines[i].strip() for i in loop["own"]] for h, loop in loops.items()}
    assert "ld.global.b32 \t%r20, [%rd20];" in own["BB0_2"]  # the latch before the header
    assert any(line.startswith("cp.async") for line in own["BB0_2"])  # the fall-through %bb.1
    assert "@%p2 bra \t$L__BB0_6;" in own["BB0_2"]
    assert not any("ld.global.v4" in line for line in own["BB0_2"])  # the nested loop's
    assert [line for line in own["BB0_3"] if not line.startswith("//")][1:] == [
        "cp.async.cg.shared.global [ %r6 + 0 ], [ %rd6 + 0 ], 0x10, %r7;",
        "ld.global.v4.b32 \t{%r8, %r9, %r10, %r11}, [%rd8];",
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1}, %rd1, %rd2, 1, 1, 1, 1, 1;",
        "@%p1 bra \t$L__BB0_3;",
    ]
    outside = set(_lines_of(PTX_NESTED_LOOPS, "mma.sync", "ret;", "mov.b32 \t%r12", "$L__func_end0"))
    assert outside and not outside & {i for loop in loops.values() for i in loop["own"]}
    # the nested header's mark on the next comment line only: the old one-line rule missed it
    assert "Loop Header" not in lines[_lines_of(PTX_NESTED_LOOPS, "$L__BB0_3:")[0]]


def test_ptx_stats_main_loop_loads():
    """The main loop is the innermost loop of the matrix instructions (the K loop BB0_3), not the
    outer loop around it (its 8- and 4-byte per-tile loads are not judged), nor the FMA loop."""
    stats = kernel_report.ptx_stats(PTX_NESTED_LOOPS)
    assert (stats["wgmma"], stats["mma_sync"], stats["fma"]) == (2, 1, 1)
    assert stats["load_counts"] == {"cp.async.16": 1, "ld.global.16": 1}
    assert stats["loads"] == "ld.global.16"  # a plain load before a copy of the same width
    scalar = PTX_NESTED_LOOPS.replace("ld.global.v4.b32 \t{%r8, %r9, %r10, %r11}", "ld.global.b16 \t%rs8")
    assert kernel_report.ptx_stats(scalar)["loads"] == "ld.global.2"
    outer_only = PTX_NESTED_LOOPS.replace(
        "\tld.global.v4.b32 \t{%r8, %r9, %r10, %r11}, [%rd8];\n\twgmma",
        "\tld.global.v4.b32 \t{%r8, %r9, %r10, %r11}, [%rd8];\n\tnop",
    )  # no matrix instruction left in BB0_3: the outer loop is the main loop
    stats = kernel_report.ptx_stats(outer_only)
    assert stats["load_counts"] == {"ld.global.4": 1, "ld.global.8": 1, "cp.async.16": 1}
    assert stats["loads"] == "ld.global.4"
    fma_only = PTX_NESTED_LOOPS.replace("wgmma.mma_async", "nop").replace("mma.sync", "nop")
    stats = kernel_report.ptx_stats(fma_only)
    assert stats["load_counts"] == {"ld.global.4": 1}  # the FMA loop
    assert kernel_report.ptx_stats("ret;") == {"wgmma": 0, "mma_sync": 0, "fma": 0, "loads": None, "load_counts": {}}


def test_scalar_main_loop_loads_fail_a_contraction():
    """From PTX to exit status: a contraction whose K loop loads scalars (or whose main loop shows no
    load) fails the report; with 16-byte copies it passes."""

    def row_of(ptx: str) -> kernel_report.Row:
        row = kernel_report.Row(name="k", group="g", arch=90, num_warps=8, num_stages=3, contraction=True)
        row.regs, row.shared, row.shared_limit = 128, 0, kernel_report.MAX_SHARED[90]
        row.stack = row.local = row.spill_stores = row.spill_loads = 0
        stats = kernel_report.ptx_stats(ptx)
        row.wgmma, row.mma_sync, row.fma = stats["wgmma"], 0, stats["fma"]
        row.loads, row.load_counts = stats["loads"], stats["load_counts"]
        return row.check()

    good = row_of(PTX_NESTED_LOOPS)
    assert good.ok and kernel_report.exit_status([good]) == 0
    scalar = PTX_NESTED_LOOPS.replace("cp.async.cg.shared.global [ %r6 + 0 ], [ %rd6 + 0 ], 0x10", "ld.global.b16 %rs6")
    bad = row_of(scalar)
    assert bad.problems == ["main-loop loads ld.global.2 (< 16 bytes)"]
    assert kernel_report.exit_status([good, bad]) == 1
    unparsed = row_of(PTX_NESTED_LOOPS.replace("Loop Header", "Loop"))  # no loop recognised
    assert unparsed.loads is None and unparsed.problems == ["no main-loop loads found"]


def test_tiling_problems_only_for_contractions():
    row = kernel_report.Row(name="k", group="g", arch=90, num_warps=8, num_stages=3, regs=100, shared=0)
    row.shared_limit, row.stack, row.local, row.spill_stores, row.spill_loads = 232448, 0, 0, 0, 0
    row.wgmma, row.mma_sync, row.loads = 0, 4, "ld.global.2"
    assert row.check().ok  # not a contraction: counted, not judged
    row.contraction = True
    assert row.check().problems == [
        "mma.sync (4) on sm_90",
        "no wgmma on sm_90",
        "main-loop loads ld.global.2 (< 16 bytes)",
    ]
    row.arch, row.loads = 80, "cp.async.16"
    assert row.check().ok  # mma.sync is the tensor-core instruction of sm_80
    row.arch, row.wgmma, row.mma_sync, row.loads = 90, 8, 0, "tma"
    assert row.check().ok


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
