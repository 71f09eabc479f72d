"""Ahead-of-time compile report for the Triton kernels: tiling, registers, spills, shared memory.

Compiles every config that ``perf/kernel_specs.py`` lists for real GPU architectures (sm_80
and sm_90 by default) without a GPU, and reads the resource usage of each cubin and the
instructions of its PTX. This catches what the CPU interpreter cannot see: GPU compile errors,
register spills, configs whose shared memory exceeds the architecture's per-block limit (the
compiler accepts those; they only fail at launch), and what the tiling became: tensor-core
instructions or FMAs, and how the main loop loads its operands.

Usage::

    python perf/kernel_report.py [--all-configs] [--arch 80 90] [--json OUT] [--module M ...]

Each compiled config is one row of the table:

* ``regs``: registers per thread from ``cuobjdump --dump-resource-usage`` (the cuobjdump shipped
  in the triton wheel); ``ptxas``: the count ``ptxas -v`` logged while compiling (a cross-check,
  Triton's metadata has no register count until a kernel is loaded on a GPU).
* ``stack``/``local``: bytes per thread from cuobjdump; ``spill_st``/``spill_ld``: spill stores and
  loads from the ptxas log. Any of them non-zero counts as a spill.
* ``shared``: ``compiled.metadata.shared`` (Triton's dynamic shared memory per block), against the
  architecture's maximum (sm_80: 166912 bytes, sm_90: 232448 bytes).
* From the PTX (:func:`ptx_stats`): ``wgmma`` (Hopper ``wgmma.mma_async``), ``mma`` (Ampere-style
  ``mma.sync``) and ``fma`` (``fma.rn.*``) instruction counts, and ``loads``: the narrowest global
  load of the *main loops* (the innermost loops of the matrix instructions: ``wgmma``,
  ``mma.sync``, or ``fma`` when there are neither; the loops are read from LLVM's loop comments,
  :func:`ptx_loops`), one of ``tma`` (``cp.async.bulk``), ``cp.async.16`` / ``.8`` / ``.4``
  (asynchronous copies of that many bytes) or ``ld.global.<bytes>`` (plain loads;
  ``ld.global.4`` and narrower are scalar loads). ``-`` when no main loop loads.

A *contraction* kernel (a GEMM-like kernel whose spec says ``"contraction": True``) is held to its
tiling: on sm_90 it must use ``wgmma`` and no ``mma.sync``, and on every architecture its main-loop
loads must be 16 bytes wide or more (16-byte ``cp.async`` or TMA: a narrower one is a scalar or
near-scalar copy, the sign of operand rows that are not contiguous or not 16-byte aligned). A
contraction with matrix instructions but no main-loop load found fails too.

Exit status: 0 when every *default* config compiles, does not spill, fits in shared memory and,
for a contraction, meets its tiling; 1 otherwise. With ``--all-configs`` the other configs are
compiled and listed, flagged, but do not change the exit status.

A spec module (``perf/kernel_specs.py``, or the ``--module`` ones) has ``SPECS``, a dict
``group -> lister``: ``lister(all_configs=False)`` returns the group's specs (one group per op,
each row of the report names its group); a module that does not exist or has no ``SPECS`` is
skipped with a note; a lister that also takes ``arch`` is called once per architecture compiled
(``lister(all_configs=..., arch=90)``: that architecture's specs, e.g. tiles chosen by compute
capability), the others once for all. Specs are dicts with ``name``, ``fn`` (the raw ``triton.JITFunction``),
``signature`` (non-constexpr argument -> type string such as ``"*fp32"`` or ``"i32"``),
``constexprs`` (constexpr argument -> value), ``num_warps``, ``num_stages`` and optionally
``contraction`` (bool, default False). Pointer arguments are compiled as 16-byte aligned
(``tt.divisibility=16``), as Triton specialises them for torch allocations at run time; an integer
typed ``"i32:16"`` is compiled as a multiple of 16, as Triton specialises such values at run time
(a row stride of 1024 channels). Identical compilations (same function, types, constexprs, options
and arch) are compiled once and their figures shared.

Triton versions: written for triton 3.6 and 3.8, whose ``ASTSource(fn, signature, constexprs,
attrs)`` agree: ``constexprs`` keyed by argument name, ``attrs`` keyed by ``(index,)`` tuples, and
the signature naming every argument, constexprs typed ``"constexpr"`` (both versions' own
``triton/tools/compile.py`` do the same). Under ``TRITON_INTERPRET`` ``@triton.jit`` builds
interpreter functions that cannot be compiled, so the script then re-runs itself in a subprocess
with ``TRITON_INTERPRET`` removed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC_MODULES = ("perf.kernel_specs",)
DEFAULT_ARCHS = (80, 90)

# Maximum dynamic shared memory per block (bytes), CUDA programming guide, compute capabilities.
MAX_SHARED = {
    70: 98304,
    75: 65536,
    80: 166912,
    86: 101376,
    87: 166912,
    89: 101376,
    90: 232448,
    100: 232448,
    103: 232448,
    120: 101376,
}
REGS_PER_BLOCK = 65536  # 64K 32-bit registers per block on every architecture listed above
_DERIVED_NOTES = ("regs mismatch", "no shared-memory limit")  # notes that Row.check() writes


def interpreting(environ=None) -> bool:
    """Whether ``TRITON_INTERPRET`` is set to a true value (the rule kernels._tuning uses)."""
    environ = os.environ if environ is None else environ
    return environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """The compile result of one spec on one architecture."""

    name: str
    group: str
    arch: int
    num_warps: int
    num_stages: int
    default: bool = True
    contraction: bool = False  # held to the tiling criteria (wgmma on sm_90, 16-byte main-loop loads)
    regs: int | None = None  # cuobjdump REG
    ptxas_regs: int | None = None  # "Used N registers" in the ptxas log
    stack: int | None = None  # cuobjdump STACK, bytes per thread
    local: int | None = None  # cuobjdump LOCAL, bytes per thread
    spill_stores: int | None = None  # ptxas log, bytes
    spill_loads: int | None = None
    shared: int | None = None  # metadata.shared, bytes per block
    shared_limit: int | None = None
    wgmma: int | None = None  # wgmma.mma_async instructions in the PTX
    mma_sync: int | None = None  # mma.sync instructions
    fma: int | None = None  # fma.rn.* instructions
    loads: str | None = None  # the narrowest main-loop global load (see the module doc)
    load_counts: dict = dataclasses.field(default_factory=dict)  # main-loop load kind -> count
    compile_s: float = 0.0
    same_as: str | None = None  # name of an identical compilation whose figures these are
    error: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)  # these fail a default config
    notes: list[str] = dataclasses.field(default_factory=list)  # informational

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def spills(self) -> int:
        """Total spill evidence in bytes (stack + local + spill stores + spill loads)."""
        return sum(v or 0 for v in (self.stack, self.local, self.spill_stores, self.spill_loads))

    def check(self) -> Row:
        """Fill ``problems`` and ``notes`` from the figures."""
        self.problems = []
        self.notes = [n for n in self.notes if not n.startswith(_DERIVED_NOTES)]
        if self.error is not None:
            self.problems.append("compile error")
            return self
        if self.spills:
            self.problems.append(
                f"spills (stack {self.stack}, local {self.local}, stores {self.spill_stores}, loads {self.spill_loads})"
            )
        if self.shared_limit is None:
            self.notes.append(f"no shared-memory limit known for sm_{self.arch}")
        elif self.shared is not None and self.shared > self.shared_limit:
            self.problems.append(f"shared {self.shared} > {self.shared_limit}")
        if self.regs is not None and self.regs * 32 * self.num_warps > REGS_PER_BLOCK:
            self.problems.append(f"{self.regs} regs x {32 * self.num_warps} threads > {REGS_PER_BLOCK}")
        if self.regs is None:
            self.problems.append("no register count (cuobjdump)")
        if self.ptxas_regs is not None and self.regs is not None and self.ptxas_regs != self.regs:
            self.notes.append(f"regs mismatch: cuobjdump {self.regs}, ptxas {self.ptxas_regs}")
        if self.contraction:
            self.problems += tiling_problems(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def exit_status(rows: list[Row], failed: list[str] = ()) -> int:
    """1 when a default config has a problem (or a module's specs could not be listed), else 0."""
    return int(bool(failed) or any(r.default and not r.ok for r in rows))


# --------------------------------------------------------------------------------------------
# Parsing the tools' output
# --------------------------------------------------------------------------------------------

_FUNCTION = re.compile(r"^\s*Function\s+(\S+?)\s*:\s*$")
_FIELD = re.compile(r"([A-Z_]+(?:\[\d+\])?)\s*:\s*(\d+)")


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump --dump-resource-usage`` output -> ``{function: {"REG": n, "STACK": n, ...}}``.

    The fields of a function sit on the lines after its ``Function name:`` header, up to the next
    header (cuobjdump versions print them on one line; field order and extra fields vary).
    """
    usage: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = _FUNCTION.match(line)
        if m:
            current = usage.setdefault(m.group(1), {})
            continue
        if current is not None:
            for key, value in _FIELD.findall(line):
                current[key] = int(value)
            if re.match(r"^\s*\S+.*:\s*$", line) and not _FIELD.search(line):
                current = None  # another section header ("Common:", "Fatbin ...")
    return usage


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PTXAS_FRAME = re.compile(r"(\d+)\s+bytes stack frame,\s*(\d+)\s+bytes spill stores,\s*(\d+)\s+bytes spill loads")
_PTXAS_REGS = re.compile(r"Used\s+(\d+)\s+registers")


def parse_ptxas_log(text: str, function: str | None = None) -> dict[str, int]:
    """``ptxas -v`` log -> ``{"regs", "stack_frame", "spill_stores", "spill_loads"}``.

    The log can describe several functions; the entry function ``function`` (or the first entry
    function) is read. Missing figures are absent from the result.
    """
    sections = re.split(r"(?=ptxas info\s*:\s*Compiling entry function)", text)
    chosen = None
    for section in sections:
        m = _PTXAS_ENTRY.search(section)
        if m and (function is None or m.group(1) == function):
            chosen = section
            break
    if chosen is None:
        chosen = next((s for s in sections if _PTXAS_ENTRY.search(s)), text)
    out = {}
    m = _PTXAS_REGS.search(chosen)
    if m:
        out["regs"] = int(m.group(1))
    m = _PTXAS_FRAME.search(chosen)
    if m:
        out["stack_frame"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    return out


_BLOCK = re.compile(r"^(?:\$L__(BB\w+):|\s*//\s*%bb\.\d+:)")  # a labelled or fall-through basic block
_COMMENT_ONLY = re.compile(r"^\s*//")
_HEADER = re.compile(r"=>\s*This (?:Inner )?Loop Header")
_IN_LOOP = re.compile(r"in Loop: Header=(BB\w+)")
_PARENT_LOOP = re.compile(r"Parent Loop (BB\w+)")
_WGMMA = re.compile(r"\bwgmma\.mma_async\b")
_MMA_SYNC = re.compile(r"\bmma\.sync\b")
_FMA = re.compile(r"\bfma\.rn\b")
_TMA = re.compile(r"\bcp\.async\.bulk\b")
_CP_ASYNC = re.compile(r"\bcp\.async\.c[ag]\.shared\.global\S*\s+\[[^]]*\],\s*\[[^]]*\],\s*(0x[0-9a-fA-F]+|\d+)")
_LD_GLOBAL = re.compile(r"\bld\.global((?:\.[\w:]+)*)")
#: Width in bytes of the widest load kinds, for ordering (TMA moves whole tiles).
_TMA_BYTES = 128


def ptx_loops(lines: list[str]) -> dict[str, dict]:
    """The loops of a PTX listing, from the comments LLVM writes at each basic block: a loop's header
    block says ``=>This Loop Header`` (``=>  This Inner Loop Header`` for an innermost loop) and
    names its enclosing loops (``Parent Loop BB0_2 Depth=1``), each other block of a loop says
    ``in Loop: Header=BB0_2 Depth=1`` (its innermost loop). These comments sit on the block's label
    line or on the comment-only lines right after it (a nested loop's header: ``$L__BB0_4: //
    %.lr.ph``, then ``// Parent Loop BB0_2 Depth=1``, then ``// =>  This Inner Loop Header: Depth=2``),
    and they hold wherever the blocks are placed (a latch laid out before its header included).

    Returns ``{header: {"parent": header or None, "own": [line indices]}}`` (headers named as
    ``BB0_2``): ``own`` are the lines of the loop's own body, those of its nested loops excluded.
    """
    loops: dict[str, dict] = {}
    current = None  # innermost loop of the block being read
    i = 0
    while i < len(lines):
        m = _BLOCK.match(lines[i])
        if m is None:
            if lines[i].startswith("}"):  # end of the function
                current = None
            elif current is not None:
                loops[current]["own"].append(i)
            i += 1
            continue
        comments = [lines[i]]
        j = i + 1
        while j < len(lines) and _COMMENT_ONLY.match(lines[j]) and not _BLOCK.match(lines[j]):
            comments.append(lines[j])
            j += 1
        text = "\n".join(comments)
        parents = _PARENT_LOOP.findall(text)
        member = _IN_LOOP.search(text)
        if m.group(1) and _HEADER.search(text):
            current = m.group(1)
            loops.setdefault(current, {"parent": None, "own": []})["parent"] = parents[-1] if parents else None
            for outer, inner in zip(parents, parents[1:], strict=False):  # outermost first
                loops.setdefault(inner, {"parent": None, "own": []})["parent"] = outer
        else:
            current = member.group(1) if member else None
            if current is not None:
                loops.setdefault(current, {"parent": None, "own": []})
        if current is not None:
            loops[current]["own"] += range(i, j)
        i = j
    return loops


def _load_kind(line: str) -> tuple[str, int] | None:
    """``(kind, bytes)`` of a global load instruction, None for other lines."""
    if _TMA.search(line):
        return "tma", _TMA_BYTES
    m = _CP_ASYNC.search(line)
    if m:
        size = int(m.group(1), 0)
        return f"cp.async.{size}", size
    m = _LD_GLOBAL.search(line)
    if m:
        suffixes = m.group(1).split(".")
        vec = next((int(x[1:]) for x in suffixes if re.fullmatch(r"v\d", x)), 1)
        bits = next((int(x[1:]) for x in reversed(suffixes) if re.fullmatch(r"[bfsu]\d+", x)), 32)
        size = vec * bits // 8
        return f"ld.global.{size}", size
    return None


def ptx_stats(ptx: str) -> dict:
    """Instruction counts of a kernel's PTX and the kind of its main-loop loads.

    Returns ``{"wgmma", "mma_sync", "fma", "loads", "load_counts"}``: the counts of
    ``wgmma.mma_async``, ``mma.sync`` and ``fma.rn.*`` instructions; ``load_counts`` maps each load
    kind (``tma``, ``cp.async.<bytes>``, ``ld.global.<bytes>``) found in the main loops to its
    count, and ``loads`` is the narrowest of them (a plain load before an asynchronous copy of the
    same width), None when the main loops load nothing.

    The main loops are the innermost loops of the matrix instructions (``wgmma`` or ``mma.sync``,
    ``fma`` when the kernel has neither): loops whose own body (:func:`ptx_loops`, nested loops
    excluded) holds some and none of whose nested loops does. They are the GEMMs' K loops; an
    outer loop around one (over tiles, with a smaller product per tile) is not judged by its
    per-tile loads (scales, the pipeline's prologue).
    """
    lines = ptx.splitlines()
    counts = {
        "wgmma": sum(1 for ln in lines if _WGMMA.search(ln)),
        "mma_sync": sum(1 for ln in lines if _MMA_SYNC.search(ln)),
        "fma": sum(1 for ln in lines if _FMA.search(ln)),
    }
    matrix = (_WGMMA, _MMA_SYNC) if counts["wgmma"] or counts["mma_sync"] else (_FMA,)
    loops = ptx_loops(lines)
    holding = {h for h, loop in loops.items() if any(rx.search(lines[i]) for i in loop["own"] for rx in matrix)}
    enclosing = set()  # loops with a matrix loop nested inside
    for header in holding:
        parent = loops[header]["parent"]
        while parent is not None and parent not in enclosing:
            enclosing.add(parent)
            parent = loops.get(parent, {}).get("parent")
    kinds: dict[str, int] = {}
    order: dict[str, tuple] = {}
    for header in holding - enclosing:
        for i in loops[header]["own"]:
            kind = _load_kind(lines[i])
            if kind is not None:
                kinds[kind[0]] = kinds.get(kind[0], 0) + 1
                order[kind[0]] = (kind[1], not kind[0].startswith("ld."))
    narrowest = min(kinds, key=order.__getitem__) if kinds else None
    return {**counts, "loads": narrowest, "load_counts": kinds}


def load_bytes(kind: str | None) -> int | None:
    """Bytes per instruction of a load kind from :func:`ptx_stats` (None for None)."""
    if kind is None:
        return None
    return _TMA_BYTES if kind == "tma" else int(kind.rsplit(".", 1)[1])


def tiling_problems(row: Row) -> list[str]:
    """What a contraction kernel's row breaks of the tiling criteria (module doc)."""
    if row.error is not None or row.wgmma is None:
        return []
    problems = []
    if row.arch == 90 and row.mma_sync:
        problems.append(f"mma.sync ({row.mma_sync}) on sm_90")
    if row.arch == 90 and not row.wgmma:
        problems.append("no wgmma on sm_90")
    width = load_bytes(row.loads)
    if width is not None and width < 16:
        problems.append(f"main-loop loads {row.loads} (< 16 bytes)")
    if width is None and (row.wgmma or row.mma_sync):
        problems.append("no main-loop loads found")
    return problems


# --------------------------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------------------------


def cuobjdump_path() -> str:
    """The cuobjdump shipped inside the triton wheel (else one on PATH)."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("cuobjdump")
    if found is None:
        raise FileNotFoundError("cuobjdump: not in the triton wheel nor on PATH")
    return found


def ptxas_version() -> str | None:
    """``"12.9"``-style release of the ptxas in the triton wheel (None when not found)."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    try:
        text = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    m = re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else None


def resource_usage(cubin: bytes) -> dict[str, dict[str, int]]:
    """Run cuobjdump on a cubin (written to a temporary file) and parse its resource usage."""
    with tempfile.TemporaryDirectory(prefix="kernel_report_") as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        proc = subprocess.run([cuobjdump_path(), "--dump-resource-usage", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_resource_usage(proc.stdout)


def jit_function(fn):
    """The raw ``triton.JITFunction`` under autotune/heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    seen = 0
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn") and seen < 8:
        fn, seen = fn.fn, seen + 1
    if not isinstance(fn, JITFunction):
        hint = " (imported under TRITON_INTERPRET?)" if "Interpret" in type(fn).__name__ else ""
        raise TypeError(f"spec 'fn' is a {type(fn).__name__}, not a triton.JITFunction{hint}")
    return fn


def ast_source(spec: dict):
    """``triton.compiler.ASTSource`` of a spec, with the signature both triton 3.6 and 3.8 take.

    The signature lists every argument of the function in order; constexprs are typed
    ``"constexpr"`` and their values passed by name, a constexpr missing from the spec takes the
    function's default. Pointers get the 16-byte divisibility hint that run-time specialisation
    gives torch tensors.
    """
    from triton.compiler import ASTSource

    fn = jit_function(spec["fn"])
    given_sig = dict(spec.get("signature", {}))
    constexprs = dict(spec.get("constexprs", {}))
    unknown = (set(given_sig) | set(constexprs)) - set(fn.arg_names)
    if unknown:
        raise ValueError(f"{spec['name']}: not arguments of {fn.__name__}: {sorted(unknown)}")
    params = {p.name: p for p in getattr(fn, "params", [])}
    signature, attrs, missing = {}, {}, []
    for index, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
            continue
        if arg not in given_sig:
            param = params.get(arg)
            if param is not None and param.is_constexpr and param.has_default:
                constexprs[arg] = param.default
                signature[arg] = "constexpr"
                continue
            missing.append(arg)
            continue
        ty, _, divisor = given_sig[arg].partition(":")
        if ty == "constexpr":
            missing.append(f"{arg} (typed constexpr, no value)")
            continue
        signature[arg] = ty
        if ty.startswith("*") or divisor == "16":
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif divisor:
            raise ValueError(f"{spec['name']}: {arg}: only ':16' divisibility is supported, got {given_sig[arg]!r}")
    if missing:
        raise ValueError(f"{spec['name']}: no type or value for arguments of {fn.__name__}: {missing}")
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), fn


@contextlib.contextmanager
def _captured_fd2():
    """Capture file descriptor 2 (MLIR diagnostics are written there, below Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode("utf-8", "replace")


def _summarise_error(exc: BaseException, stdout: str, stderr: str) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    diag = [ln for ln in stderr.splitlines() if "error" in ln.lower()]
    ptxas = [ln for ln in stdout.splitlines() if ln.startswith("ptxas") and "error" in ln.lower()]
    keep = lines[:3] + (["..."] + lines[-3:] if len(lines) > 6 else lines[3:])
    return "\n".join(keep + diag[:5] + ptxas[:5])


def compile_spec(spec: dict, arch: int, *, group: str = "", default: bool = True) -> Row:
    """AOT-compile one spec for ``sm_<arch>`` and measure it; errors land in ``Row.error``."""
    import triton
    from triton.backends.compiler import GPUTarget

    row = Row(
        name=spec["name"],
        group=group,
        arch=arch,
        num_warps=int(spec.get("num_warps", 4)),
        num_stages=int(spec.get("num_stages", 3)),
        default=default,
        contraction=bool(spec.get("contraction", False)),
        shared_limit=MAX_SHARED.get(arch),
    )
    options = {"num_warps": row.num_warps, "num_stages": row.num_stages}
    for key in ("num_ctas", "maxnreg"):
        if key in spec:
            options[key] = spec[key]
    out = io.StringIO()
    start = time.perf_counter()
    try:
        src, fn = ast_source(spec)
        with contextlib.ExitStack() as stack:
            knobs = getattr(triton, "knobs", None)
            if knobs is not None:  # ptxas -v log printed to stdout, and no cache hit without it
                stack.enter_context(knobs.nvidia.scope())
                stack.enter_context(knobs.compilation.scope())
                knobs.nvidia.dump_ptxas_log = True
                knobs.compilation.always_compile = True
            stack.enter_context(contextlib.redirect_stdout(out))
            err = stack.enter_context(_captured_fd2())
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
            except Exception as exc:  # every compile failure is a row
                stack.close()
                row.error = _summarise_error(exc, out.getvalue(), err["text"])
                return row.check()
    except Exception as exc:  # a malformed spec is a row too
        row.error = f"{type(exc).__name__}: {exc}"
        return row.check()
    finally:
        row.compile_s = round(time.perf_counter() - start, 3)

    row.shared = int(compiled.metadata.shared)
    stats = ptx_stats(compiled.asm["ptx"])
    row.wgmma, row.mma_sync, row.fma = stats["wgmma"], stats["mma_sync"], stats["fma"]
    row.loads, row.load_counts = stats["loads"], stats["load_counts"]
    kernel_name = getattr(compiled.metadata, "name", fn.__name__)
    try:
        usage = resource_usage(compiled.asm["cubin"])
    except Exception as exc:
        row.error = f"cuobjdump: {exc}"
        return row.check()
    entry = usage.get(kernel_name)
    if entry is None and len(usage) == 1:
        entry = next(iter(usage.values()))
    if entry is None:
        row.notes.append(f"cuobjdump: no function {kernel_name!r} among {sorted(usage)}")
    else:
        row.regs, row.stack, row.local = entry.get("REG"), entry.get("STACK"), entry.get("LOCAL")
    log = parse_ptxas_log(out.getvalue(), kernel_name)
    row.ptxas_regs = log.get("regs")
    row.spill_stores, row.spill_loads = log.get("spill_stores"), log.get("spill_loads")
    if not log:
        row.notes.append("no ptxas log captured")
    return row.check()


# --------------------------------------------------------------------------------------------
# Discovering specs
# --------------------------------------------------------------------------------------------


def load_module(target: str):
    """Import a dotted module name or a ``.py`` file path; ``None`` when it does not exist."""
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        if not path.is_file():
            return None
        name = f"_kernel_report_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            return None
        raise


def takes_arch(lister) -> bool:
    """Whether a spec lister takes ``arch`` (it lists each architecture's own specs)."""
    try:
        return "arch" in inspect.signature(lister).parameters
    except (TypeError, ValueError):
        return False


def collect_specs(lister, all_configs: bool, arch: int | None = None) -> list[tuple[dict, bool]]:
    """``[(spec, is_default)]`` of a group's lister: its default specs, plus the others if asked;
    ``arch``: the architecture to list for (passed on only to a lister that takes it)."""
    kw = {"arch": arch} if arch is not None and takes_arch(lister) else {}
    defaults = list(lister(all_configs=False, **kw))
    names = [s["name"] for s in defaults]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate spec names: {sorted({n for n in names if names.count(n) > 1})}")
    if not all_configs:
        return [(s, True) for s in defaults]
    default_names = set(names)
    specs = list(lister(all_configs=True, **kw))
    listed = {s["name"] for s in specs}
    out = [(s, bool(s.get("default", s["name"] in default_names))) for s in specs]
    out += [(s, True) for s in defaults if s["name"] not in listed]
    return out


def _dedup_key(spec: dict, arch: int):
    fn = jit_function(spec["fn"])
    return (
        id(fn),
        arch,
        tuple(sorted((k, str(v)) for k, v in spec.get("signature", {}).items())),
        tuple(sorted((k, repr(v)) for k, v in spec.get("constexprs", {}).items())),
        int(spec.get("num_warps", 4)),
        int(spec.get("num_stages", 3)),
        spec.get("num_ctas"),
        spec.get("maxnreg"),
        bool(spec.get("contraction", False)),
    )


def run_report(modules=SPEC_MODULES, archs=DEFAULT_ARCHS, all_configs=False, log=None):
    """Compile every spec of ``modules`` for ``archs``; returns ``(rows, skipped, failed)``.

    ``skipped``: ``[(module, reason)]`` for modules absent or without ``SPECS``;
    ``failed``: ``[(module or group, error)]`` for imports or spec listings that raised.
    Must run in a process where ``TRITON_INTERPRET`` is unset (see :func:`main`).
    """
    if interpreting():
        raise RuntimeError("TRITON_INTERPRET is set: run perf/kernel_report.py (it re-runs itself without)")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    work, skipped, failed = [], [], []
    for target in modules:
        try:
            module = load_module(target)
        except Exception as exc:
            failed.append((target, f"import failed: {type(exc).__name__}: {exc}"))
            continue
        if module is None:
            skipped.append((target, "module does not exist"))
            continue
        if not hasattr(module, "SPECS"):
            skipped.append((target, "no SPECS"))
            continue
        for group, lister in module.SPECS.items():
            try:
                per_arch = takes_arch(lister)
                shared = None if per_arch else collect_specs(lister, all_configs)
                listed = [(arch, collect_specs(lister, all_configs, arch) if per_arch else shared) for arch in archs]
            except Exception as exc:
                failed.append((group, f"listing its specs failed: {type(exc).__name__}: {exc}"))
                continue
            work += [(group, spec, default, arch) for arch, specs in listed for spec, default in specs]

    rows, done = [], {}
    for i, (group, spec, default, arch) in enumerate(work, 1):
        try:
            key = _dedup_key(spec, arch)
        except Exception:  # compile_spec reports the malformed spec
            key = None
        if key is not None and key in done:
            first = done[key]
            row = dataclasses.replace(
                first,
                name=spec["name"],
                group=group,
                default=default,
                contraction=bool(spec.get("contraction", False)),
                compile_s=0.0,
                same_as=first.same_as or first.name,
                problems=[],
                notes=list(first.notes),
            ).check()
            log(f"[{i:>3}/{len(work)}] sm_{arch} {spec['name']}: same binary as {row.same_as}")
        else:
            row = compile_spec(spec, arch, group=group, default=default)
            if key is not None:
                done[key] = row
            status = "ok" if row.ok else "; ".join(row.problems)
            log(f"[{i:>3}/{len(work)}] sm_{arch} {spec['name']}: {row.compile_s:.2f} s, {status}")
        rows.append(row)
    return rows, skipped, failed


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

COLUMNS = (
    "kernel",
    "arch",
    "cfg",
    "warps",
    "stages",
    "wgmma",
    "mma",
    "fma",
    "loads",
    "regs",
    "ptxas",
    "stack",
    "local",
    "spill_st",
    "spill_ld",
    "shared",
    "limit",
    "status",
)


def _cell(value) -> str:
    return "-" if value is None else str(value)


def format_table(rows: list[Row]) -> str:
    """The report table, one line per row, then the errors and notes."""
    lines = []
    body = []
    for r in rows:
        if r.ok:
            status = "ok"
        else:
            status = ("FAIL: " if r.default else "flagged: ") + "; ".join(r.problems)
        body.append(
            (
                r.name,
                f"sm_{r.arch}",
                ("default" if r.default else "extra") + ("*" if r.contraction else ""),
                str(r.num_warps),
                str(r.num_stages),
                _cell(r.wgmma),
                _cell(r.mma_sync),
                _cell(r.fma),
                _cell(r.loads),
                _cell(r.regs),
                _cell(r.ptxas_regs),
                _cell(r.stack),
                _cell(r.local),
                _cell(r.spill_stores),
                _cell(r.spill_loads),
                _cell(r.shared),
                _cell(r.shared_limit),
                status,
            )
        )
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(COLUMNS)]

    def fmt(cells):
        first = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2].ljust(widths[2])]
        nums = [c.rjust(w) for c, w in zip(cells[3:-1], widths[3:-1], strict=True)]
        return "  ".join(first + nums + [cells[-1]]).rstrip()

    lines.append(fmt(COLUMNS))
    lines.append(fmt(tuple("-" * w for w in widths)))
    lines += [fmt(b) for b in body]
    lines.append("cfg*: a contraction kernel, held to its tiling (sm_90: wgmma, no mma.sync; main-loop loads >= 16 B)")
    for r in rows:
        if r.error:
            indented = "\n".join("    " + ln for ln in r.error.splitlines())
            lines.append(f"\nerror: {r.name} sm_{r.arch}:\n{indented}")
        for note in r.notes:
            lines.append(f"note: {r.name} sm_{r.arch}: {note}")
    return "\n".join(lines)


def summary(rows, skipped, failed) -> str:
    import triton

    distinct = sum(1 for r in rows if r.same_as is None)
    bad_default = sum(1 for r in rows if r.default and not r.ok)
    flagged = sum(1 for r in rows if not r.default and not r.ok)
    lines = [f"skipped {m}: {why}" for m, why in skipped]
    lines += [f"FAILED {m}: {why}" for m, why in failed]
    lines.append(
        f"{len(rows)} configs ({distinct} distinct compilations), {bad_default} failing default, "
        f"{flagged} flagged extra; triton {triton.__version__}, ptxas {ptxas_version()}"
    )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="AOT-compile the Triton kernels' configs for GPU archs (no GPU needed) and "
        "report registers, spills and shared memory."
    )
    parser.add_argument(
        "--all-configs", action="store_true", help="also compile the non-default configs (listed, not gating the exit)"
    )
    parser.add_argument(
        "--arch",
        nargs="+",
        default=[str(a) for a in DEFAULT_ARCHS],
        help="compute capabilities, e.g. 80 90 (also sm_90 / sm_90a)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    parser.add_argument(
        "--module",
        nargs="+",
        metavar="M",
        help="spec modules (dotted or .py path, each with SPECS) to report instead of perf/kernel_specs.py",
    )
    args = parser.parse_args(argv)
    archs = []
    for a in args.arch:
        m = re.fullmatch(r"(?:sm_)?(\d+)a?", a.strip().lower())
        if m is None:
            parser.error(f"--arch: not a compute capability: {a!r}")
        archs.append(int(m.group(1)))
    args.arch = archs
    return args


def main(argv=None) -> int:
    """Run the report; re-runs itself in a subprocess without TRITON_INTERPRET when it is set."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if interpreting():
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        print(
            "kernel_report: TRITON_INTERPRET is set; compiling in a subprocess without it", file=sys.stderr, flush=True
        )
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv], env=env)
    args = parse_args(argv)
    rows, skipped, failed = run_report(args.module or SPEC_MODULES, args.arch, args.all_configs)
    print(format_table(rows))
    print(summary(rows, skipped, failed))
    status = exit_status(rows, [m for m, _ in failed])
    if args.json:
        import triton

        with open(args.json, "w") as f:
            json.dump(
                {
                    "triton_version": triton.__version__,
                    "ptxas_version": ptxas_version(),
                    "archs": args.arch,
                    "all_configs": args.all_configs,
                    "rows": [r.to_dict() for r in rows],
                    "skipped": [{"source": m, "reason": why} for m, why in skipped],
                    "failed": [{"source": m, "error": why} for m, why in failed],
                    "exit_status": status,
                },
                f,
                indent=1,
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
