"""What the benchmarks share: run identity, timing, peak memory, machine peaks, the results CSV.

Not a utility grab-bag: everything here is about *measuring* (perf/README.md explains the
definitions). ``bench_ops.py``, ``bench_model.py`` and ``autotune.py`` import it as
``perf._harness`` (each script puts the repository root on ``sys.path`` first, so they run from
a checkout with or without ``PYTHONPATH=.``).

* Timing on CUDA: ``triton.testing.do_bench`` (L2 flushed before every run, CUDA events), the
  20/50/80 percentiles; ``do_bench_cudagraph`` for the graph-replay variant (no L2 flush, no
  launch gaps). On CPU: ``time.perf_counter`` around each call, same percentiles.
* Peak memory, in MiB, of one call *including the tensors alive when it starts* (inputs, and for
  a backward the graph saved by the forward), measured after a warm-up call: CUDA
  ``max_memory_allocated`` after ``reset_peak_memory_stats`` minus what was allocated before the
  case's inputs were made; CPU the largest running total of live tensor allocations that the
  PyTorch profiler (``profile_memory=True``) records, counted from before the inputs were made.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import functools
import gc
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO / "perf" / "results" / "results.csv"

#: The columns of results.csv, in order. ``pass``: fwd | bwd | fwd+bwd (ops), step | head |
#: backbone (model), matmul | copy (machine peaks). ``timer``: do_bench | cudagraph | perf_counter.
CSV_COLUMNS = (
    "gpu",
    "torch",
    "triton",
    "commit",
    "date",
    "op",
    "pass",
    "shape",
    "dtype",
    "provider",
    "timer",
    "ms_p20",
    "ms_p50",
    "ms_p80",
    "peak_mb",
    "gflop",
    "gbyte",
    "rel_err",
    "note",
)

QUANTILES = (0.2, 0.5, 0.8)

# dtype label -> (storage dtype, fp32 matmul mode). "tf32": fp32 tensors, tf32 tensor-core products
# (torch matmuls/convs and our kernels' input_precision="tf32"); "fp32": exact fp32 ("ieee").
DTYPES = {
    "tf32": (torch.float32, "tf32"),
    "fp32": (torch.float32, "ieee"),
    "bf16": (torch.bfloat16, "tf32"),
}


def set_matmul_mode(label: str) -> None:
    """Make torch's fp32 matmuls and convolutions follow a dtype label (tf32 or exact)."""
    tf32 = label != "fp32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32


# ------------------------------------------------------------------------------------------
# Run identity
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    gpu: str
    torch: str
    triton: str
    commit: str
    date: str

    def row(self, **fields) -> dict:
        """A results.csv row: this run's identity plus ``fields`` (missing columns empty)."""
        unknown = set(fields) - set(CSV_COLUMNS)
        if unknown:
            raise KeyError(f"not results.csv columns: {sorted(unknown)}")
        row = {c: "" for c in CSV_COLUMNS}
        row.update(gpu=self.gpu, torch=self.torch, triton=self.triton, commit=self.commit, date=self.date)
        row.update({k: _fmt(v) for k, v in fields.items()})
        return row


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.6g}"
    return str(value)


def device_label(device: torch.device) -> str:
    """``"NVIDIA H100 80GB HBM3"`` on CUDA, ``"cpu (N threads)"`` on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    """Short commit of the checkout (``-dirty`` with local changes); ``$A2NET_COMMIT`` wins (a
    device machine's copy of the tree may have no ``.git``); ``"unknown"`` when neither works."""
    given = os.environ.get("A2NET_COMMIT", "").strip()
    if given:
        return given
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> str:
    """The 1-minute load average and the CPU count (a busy CPU machine gives slow, noisy figures)."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:
        return "unknown"


def run_info(device: torch.device) -> RunInfo:
    import triton

    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return RunInfo(device_label(device), torch.__version__.split("+")[0], triton.__version__, git_commit(), date)


def resolve_device(name: str) -> torch.device:
    """``"cuda"``/``"cpu"`` -> a device; a clear error when CUDA is asked for and absent."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(
                f"--device {name}: no CUDA device is visible (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}); use --device cpu on this machine"
            )
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            raise SystemExit(
                "--device cuda with TRITON_INTERPRET set: the Triton kernels would run in "
                "the CPU interpreter; unset it (export TRITON_INTERPRET=0)"
            )
    elif device.type != "cpu":
        raise SystemExit(f"--device: expected cuda or cpu, got {name!r}")
    return device


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Percentiles (p20, p50, p80) of a callable's time in ms.

    Args:
        device: where the work runs.
        warmup_ms, rep_ms: time spent warming up and measuring (``do_bench``'s arguments; on CPU
            at least ``min_reps`` timed calls are made whatever the time).
    """

    def __init__(self, device: torch.device, warmup_ms: float = 25, rep_ms: float = 100, min_reps: int = 5):
        self.device, self.warmup_ms, self.rep_ms, self.min_reps = device, warmup_ms, rep_ms, min_reps

    @property
    def name(self) -> str:
        return "do_bench" if self.device.type == "cuda" else "perf_counter"

    def time(self, fn: Callable[[], object]) -> tuple[float, float, float]:
        if self.device.type == "cuda":
            import triton.testing

            q = triton.testing.do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, quantiles=list(QUANTILES))
            return tuple(float(v) for v in q)
        return self._time_cpu(fn)

    def time_graph(self, fn: Callable[[], object]) -> tuple[float, float, float]:
        """CUDA-graph replays (``do_bench_cudagraph``); CUDA only."""
        if self.device.type != "cuda":
            raise RuntimeError("the CUDA-graph timer needs a CUDA device")
        import triton.testing

        q = triton.testing.do_bench_cudagraph(fn, rep=self.rep_ms, quantiles=list(QUANTILES))
        return tuple(float(v) for v in q)

    def _time_cpu(self, fn) -> tuple[float, float, float]:
        fn()  # first call outside the estimate (lazy initialisation)
        t0 = time.perf_counter()
        fn()
        estimate = max(time.perf_counter() - t0, 1e-6) * 1e3
        for _ in range(max(0, int(self.warmup_ms / estimate) - 1)):
            fn()
        n = max(self.min_reps, int(self.rep_ms / estimate))
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return percentiles(times)


def percentiles(times: list[float]) -> tuple[float, float, float]:
    """(p20, p50, p80) with linear interpolation (``numpy.percentile``'s default)."""
    xs = sorted(times)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]

    def q(p):
        pos = p * (len(xs) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return q(0.2), statistics.median(xs), q(0.8)


# ------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------


def free_memory(device: torch.device) -> int:
    """Bytes that a case may still allocate (CUDA: free on the device; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            return int(re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024
    except (OSError, AttributeError):
        return 8 << 30


@contextlib.contextmanager
def _quiet_fd2():
    """Silence file descriptor 2 (Kineto prints a line at every profiler start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_MARK = "a2net_bench_measure"


class MemoryMeter:
    """Peak memory of a call, counting the tensors alive when it starts that were made after
    :meth:`baseline` (see the module doc).

    Use: :meth:`release`, :meth:`baseline`, make the inputs, warm up, then :meth:`measure`.
    CUDA reads the caching allocator's counters. CPU runs the PyTorch profiler with
    ``profile_memory=True`` from :meth:`baseline` to the end of :meth:`measure` and takes the
    largest running total of live CPU allocations it recorded inside the measured call; NaN when
    the profiler does not give it.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0
        self._prof = None

    def release(self) -> None:
        """Free what earlier cases left behind (run before :meth:`baseline`; CUDA only: the CPU
        meter counts allocations from its baseline on, whatever lives before)."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def baseline(self) -> None:
        if self.device.type == "cuda":
            self.base = torch.cuda.memory_allocated(self.device)
            return
        from torch.profiler import ProfilerActivity, profile

        self._stop()
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_fd2():
            self._prof.__enter__()

    def _stop(self):
        prof, self._prof = self._prof, None
        if prof is not None:
            with _quiet_fd2():
                prof.__exit__(None, None, None)
        return prof

    def measure(self, fn: Callable[[], object]) -> float:
        """Peak MiB of one call of ``fn`` (warm it up first)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            result = fn()
            torch.cuda.synchronize(self.device)
            del result
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        if self._prof is None:
            raise RuntimeError("MemoryMeter.measure: call baseline() before making the inputs")
        try:
            with torch.profiler.record_function(_MARK):
                result = fn()
            del result
        finally:
            prof = self._stop()
        try:
            return _cpu_peak(prof) / 2**20
        except Exception:  # private profiler API: a figure we cannot read is NaN
            return float("nan")


def _cpu_peak(prof) -> float:
    """Largest live-allocation total (bytes) inside the ``_MARK`` scope of a profile."""
    events, marks = [], []

    def walk(node):
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and str(fields.device).startswith("cpu"):
            events.append((node.start_time_ns, fields.total_allocated, fields.alloc_size))
        if node.name == _MARK:
            marks.append((node.start_time_ns, node.end_time_ns))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    if not marks:
        raise RuntimeError("no measured scope in the profile")
    start, end = marks[-1]
    events.sort()
    if not events:
        return 0.0
    # The reporter's running total outlives a profile (frees of tensors allocated under an
    # earlier profile are not subtracted): count from the total before the first event here.
    origin = events[0][1] - events[0][2]
    before = [total for t, total, _ in events if t < start]
    inside = [total for t, total, _ in events if start <= t <= end]
    return float(max(inside + before[-1:] + [origin])) - origin


# ------------------------------------------------------------------------------------------
# Machine peaks
# ------------------------------------------------------------------------------------------


@dataclass
class Peaks:
    """Measured ceilings: matmul TFLOP/s per dtype label, copy GB/s (bytes read + written)."""

    tflops: dict
    gbps: float

    def roofline_ms(self, gflop: float, gbyte: float, label: str) -> float:
        """The floor: max(FLOPs / matmul rate, bytes / copy bandwidth), in ms."""
        rate = self.tflops.get(label) or self.tflops.get("tf32") or float("nan")
        return max(gflop / rate if gflop else 0.0, gbyte / self.gbps * 1e3 if gbyte else 0.0)


def measure_peaks(
    device: torch.device, labels: Iterable[str], info: RunInfo, timer: Timer, small: bool = False
) -> tuple[Peaks, list]:
    """Time a large matmul per dtype label and a large device copy, once per run.

    Random data (never zeros: they run faster than real data). CUDA: 8192^3 products and a
    1 GiB copy; CPU: 2048^3 and 256 MiB (``small``: 1024^3 and 64 MiB, for quick runs).
    """
    if device.type == "cuda":
        n, copy_bytes = 8192, 1 << 30
    else:
        n, copy_bytes = (1024, 64 << 20) if small else (2048, 256 << 20)
    rows, tflops = [], {}
    gen = torch.Generator(device=device).manual_seed(0)
    for label in labels:
        dtype, _ = DTYPES[label]
        set_matmul_mode(label)
        q = timer.time(
            functools.partial(
                torch.matmul,
                torch.randn(n, n, device=device, dtype=dtype, generator=gen),
                torch.randn(n, n, device=device, dtype=dtype, generator=gen),
            )
        )
        gflop = 2 * n**3 / 1e9
        tflops[label] = gflop / q[1]  # GFLOP / ms = TFLOP/s
        rows.append(
            info.row(
                op="peak",
                **{"pass": "matmul"},
                shape=f"M{n}-N{n}-K{n}",
                dtype=label,
                provider="torch",
                timer=timer.name,
                ms_p20=q[0],
                ms_p50=q[1],
                ms_p80=q[2],
                gflop=gflop,
                gbyte=3 * n * n * torch.empty((), dtype=dtype).element_size() / 1e9,
                note=f"{tflops[label]:.3g} TFLOP/s",
            )
        )
    src = torch.randn(copy_bytes // 4, device=device, generator=gen)
    q = timer.time(functools.partial(torch.Tensor.copy_, torch.empty_like(src), src))
    gbyte = 2 * copy_bytes / 1e9
    gbps = gbyte / q[1] * 1e3
    rows.append(
        info.row(
            op="peak",
            **{"pass": "copy"},
            shape=f"N{copy_bytes // 4}",
            dtype="fp32",
            provider="torch",
            timer=timer.name,
            ms_p20=q[0],
            ms_p50=q[1],
            ms_p80=q[2],
            gbyte=gbyte,
            note=f"{gbps:.3g} GB/s (read + write)",
        )
    )
    del src
    set_matmul_mode("tf32")
    return Peaks(tflops, gbps), rows


# ------------------------------------------------------------------------------------------
# Results CSV and printing
# ------------------------------------------------------------------------------------------


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a results CSV, writing the header when the file is new or empty.

    Refuses a file whose header differs from :data:`CSV_COLUMNS` (no silent column shift).
    """
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_COLUMNS:
            raise SystemExit(f"{path}: header {header} differs from the expected columns {list(CSV_COLUMNS)}")
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def geomean(values: Iterable[float]) -> float:
    xs = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in xs) / len(xs)) if xs else float("nan")


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain fixed-width table (also valid Markdown when ``markdown`` rules are added)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_ms(ms: float) -> str:
    if not math.isfinite(ms):
        return "-"
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"
