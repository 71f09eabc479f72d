"""Benchmark of the A2Net ops: forward, backward and forward+backward, timed separately.

The ops, their providers (``triton``, ``reference``, ``reference-compiled``, ``authors``,
``triton-unfused``), inputs and cost models are in ``perf/op_specs.py`` and ``perf/costs.py``;
this script checks, times and reports them (perf/README.md explains how to read the figures).

Shapes: every ``B`` x ``H=W`` (and ``C`` for the correlation and the fused op, whose cost
depends on it; the OAC and the attention pooling do not see ``C``: the OAC has O=128 output
channels and reads the ``(B, H*W, H, W)`` correlation, the attention pools ``C=128`` values over
the ``(H-6)x(W-6)`` map the 7x7 encoder leaves). Cases whose estimated memory does not fit are
skipped and listed. Each case checks every provider's output and gradients against the float64 reference first
(``rel_err``; ``MISMATCH`` in the note when far above the eager reference's own error).

Gradients (``bwd``): those the model needs — both feature maps of the correlation op, the
OAC's and the fused op's weight and bias (their correlation / feature-map inputs come from the
frozen backbone: no gradient, as in A2Net training), the attention's logits and values;
``--all-grads`` adds the OAC's ``dcorr`` and the fused op's feature-map gradients (``all-grads``
in the row's note).

Timing: ``triton.testing.do_bench`` (median, p20, p80), plus ``do_bench_cudagraph`` for calls
under ``--graph-below-ms``; peak memory: ``torch.cuda.max_memory_allocated`` after a reset
(perf/_harness.py has the definitions). FLOPs and bytes of every op and pass (the roofline
model of perf/README.md) give TFLOP/s, GB/s and the fraction of the roofline floor, against a
matmul and a copy measured once in the same run. On CUDA, ``predicted_us`` is the per-kernel
model of perf/roofline.py for our kernels (their real tiling, on H100 or H200 peaks) and
``of_roofline`` the predicted over the measured time.

Usage::

    PYTHONPATH=. python perf/bench_ops.py                      # CUDA, the full grid
    python perf/bench_ops.py --device cpu                     # the CPU path (reference vs authors)
    python perf/bench_ops.py --device cpu --quick --csv ops.csv
    python perf/bench_ops.py --ops offset_aware_correlation --batch 32 --hw 15 30 --dtypes bf16

Rows go to ``perf/results/results.csv`` (``--csv`` elsewhere, ``--no-csv`` nowhere), one per
(op, pass, shape, dtype, provider, timer), appended as they are measured.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from a2net import ops
from perf import _harness as H
from perf import roofline
from perf.op_specs import OPS, PROVIDERS, OpSpec

PASSES = ("fwd", "bwd", "fwd+bwd")
#: A result is flagged MISMATCH when its relative error against float64 exceeds
#: ``MISMATCH_FACTOR * max(error of the eager reference at the same dtype, ERROR_FLOOR[dtype])``:
#: relative to what PyTorch itself achieves on the same inputs, because some gradients are
#: ill-conditioned (the match normalisation's backward loses ~1e-3 in fp32 at 30x30 whoever
#: computes it), so no fixed bound separates rounding from a bug at every size.
MISMATCH_FACTOR = 10.0
ERROR_FLOOR = {"fp32": 1e-6, "tf32": 1e-4, "bf16": 1e-3}


# ------------------------------------------------------------------------------------------
# Running one case
# ------------------------------------------------------------------------------------------


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if out.shape != ref.shape:
        return float("inf")
    if torch.isnan(out).any():
        return float("nan")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def _grad_inputs(inputs: dict) -> list:
    return [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]


def _forward_backward(spec, provider, inputs, precision, grad_seed_gen):
    out = spec.providers[provider](inputs, precision)
    g = torch.randn(out.shape, device=out.device, generator=grad_seed_gen).to(out.dtype)
    grads = torch.autograd.grad(out, _grad_inputs(inputs), g)
    return out, grads


@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    info: H.RunInfo
    timer: H.Timer
    meter: H.MemoryMeter
    peaks: H.Peaks | None
    csv: Path | None
    subject: str
    rows: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed_providers: dict = field(default_factory=dict)
    reference_errors: dict = field(default_factory=dict)  # (op, shape, dtype) -> the eager reference's errors

    def emit(self, row: dict) -> None:
        self.rows.append(row)
        if self.csv is not None:
            H.append_rows(self.csv, [row])


def check_provider(ctx: Context, spec: OpSpec, shape: dict, label: str, provider: str, precision: str):
    """``(rel_err fwd, rel_err of the gradients, note)`` against float64 on a batch that fits;
    the note says ``MISMATCH`` when an error is far above the eager reference's (see
    :data:`MISMATCH_FACTOR`)."""
    dtype, _ = H.DTYPES[label]
    b = shape["B"]
    fp64_need = spec.memory(shape, 8, "reference")
    kb = b if fp64_need < 0.25 * H.free_memory(ctx.device) else min(b, 2)
    small = dict(shape, B=kb)
    inputs = spec.make(
        small, dtype, ctx.device, torch.Generator(device=ctx.device).manual_seed(1234), ctx.args.all_grads
    )

    def errors(name, xs, prec):
        gen = torch.Generator(device=ctx.device).manual_seed(7)
        out, grads = _forward_backward(spec, name, xs, prec, gen)
        if name == spec.truth and xs is not inputs:  # the float64 truth itself
            return out, grads
        return (
            _relative_error(out, truth[0]),
            max((_relative_error(g, r) for g, r in zip(grads, truth[1], strict=True)), default=0.0),
        )

    ref_inputs = {
        k: v.detach().double().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }
    truth = errors(spec.truth, ref_inputs, "ieee")
    key = (spec.name, spec.shape_id(small), label)
    if key not in ctx.reference_errors:
        ctx.reference_errors[key] = errors(spec.truth, inputs, precision)
    err_fwd, err_bwd = errors(provider, inputs, precision)
    ref_fwd, ref_bwd = ctx.reference_errors[key]
    floor = ERROR_FLOOR[label]
    notes = []
    if kb < b:
        notes.append(f"checked at B={kb}")
    if not (err_fwd <= MISMATCH_FACTOR * max(ref_fwd, floor) and err_bwd <= MISMATCH_FACTOR * max(ref_bwd, floor)):
        notes.append(f"MISMATCH (eager reference at {label}: {ref_fwd:.1e} fwd, {ref_bwd:.1e} bwd)")
    return err_fwd, err_bwd, "; ".join(notes)


def _pass_fn(spec, provider, inputs, precision, pass_, gen):
    """The callable timed for a pass (the forward of a ``bwd`` pass runs once, outside it)."""
    f = spec.providers[provider]
    req = _grad_inputs(inputs)
    if pass_ == "fwd":
        return lambda: f(inputs, precision)
    if pass_ == "bwd":
        out = f(inputs, precision)
        g = torch.randn(out.shape, device=out.device, generator=gen).to(out.dtype)
        return lambda: torch.autograd.grad(out, req, g, retain_graph=True)
    probe = f(inputs, precision)  # only to size the incoming gradient
    g = torch.randn(probe.shape, device=probe.device, generator=gen).to(probe.dtype)
    del probe
    return lambda: torch.autograd.grad(f(inputs, precision), req, g)


def _time_pass(ctx, spec, provider, shape, dtype, precision, pass_, graph=False):
    """(p20, p50, p80) ms of one pass on fresh inputs (seeded: every provider sees the same)."""
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    inputs = spec.make(shape, dtype, ctx.device, gen, ctx.args.all_grads)
    fn = _pass_fn(spec, provider, inputs, precision, pass_, gen)
    fn()  # warm-up: compilation and autotuning stay out of the figures
    H.synchronize(ctx.device)
    return ctx.timer.time_graph(fn) if graph else ctx.timer.time(fn)


def _peak_of_pass(ctx, spec, provider, shape, dtype, precision, pass_):
    """Peak MiB of one call of a pass, inputs included (measured apart from the timing: the CPU
    meter runs the profiler)."""
    ctx.meter.release()
    ctx.meter.baseline()
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    inputs = spec.make(shape, dtype, ctx.device, gen, ctx.args.all_grads)
    fn = _pass_fn(spec, provider, inputs, precision, pass_, gen)
    if ctx.device.type == "cuda":  # (on CPU nothing is left to compile: _time_pass ran it first)
        fn()
        H.synchronize(ctx.device)
    return ctx.meter.measure(fn)


def run_case(ctx: Context, spec: OpSpec, shape: dict, label: str, providers: list[str]) -> list[dict]:
    """Check, then time and measure every (provider, pass) of one op, shape and dtype."""
    dtype, precision = H.DTYPES[label]
    H.set_matmul_mode(label)
    elem = torch.empty((), dtype=dtype).element_size()
    sid = spec.shape_id(shape)
    results = []
    for provider in providers:
        if provider not in spec.providers:
            continue
        if provider in ctx.failed_providers.get(spec.name, {}):
            continue
        need = spec.memory(shape, elem, provider)
        free = H.free_memory(ctx.device)
        if need > 0.8 * free:
            ctx.skipped.append(
                f"{spec.name} {sid} {label} {provider}: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
            )
            continue
        try:
            err_fwd, err_bwd, note = (float("nan"), float("nan"), "")
            if not ctx.args.no_check:
                err_fwd, err_bwd, note = check_provider(ctx, spec, shape, label, provider, precision)
            if provider.startswith("triton"):
                before = sum(ops.TRITON_CALLS.values())
            for pass_ in (p for p in ctx.args.passes if p in spec.passes):
                q = _time_pass(ctx, spec, provider, shape, dtype, precision, pass_)
                peak = _peak_of_pass(ctx, spec, provider, shape, dtype, precision, pass_)
                flop, byte = spec.cost(shape, pass_, elem, ctx.args.all_grads)
                rel = err_fwd if pass_ == "fwd" else max(err_fwd, err_bwd) if pass_ == "fwd+bwd" else err_bwd
                timings = [(ctx.timer.name, q)]
                # No graph for "bwd": its ops run on the stream of the forward, made outside the capture.
                if ctx.device.type == "cuda" and q[1] < ctx.args.graph_below_ms and pass_ != "bwd":
                    try:
                        timings.append(
                            ("cudagraph", _time_pass(ctx, spec, provider, shape, dtype, precision, pass_, graph=True))
                        )
                    except Exception as exc:  # report and go on
                        torch.cuda.synchronize(ctx.device)  # raises if the context is broken
                        print(
                            f"  note: {provider} {pass_}: no CUDA-graph timing ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]})"
                        )
                row_note = "; ".join(n for n in (note, "all-grads" if ctx.args.all_grads else "") if n)
                if ctx.device.type == "cpu":  # a busy shared CPU gives slow, noisy figures: say how busy
                    row_note = "; ".join(n for n in (row_note, f"load {H.load_average()}") if n)
                for timer_name, qq in timings:
                    row = ctx.info.row(
                        op=spec.name,
                        **{"pass": pass_},
                        shape=sid,
                        dtype=label,
                        provider=provider,
                        timer=timer_name,
                        ms_p20=qq[0],
                        ms_p50=qq[1],
                        ms_p80=qq[2],
                        peak_mb=peak,
                        gflop=flop / 1e9,
                        gbyte=byte / 1e9,
                        rel_err=rel,
                        note=row_note,
                    )
                    ctx.emit(row)
                    results.append(row)
            if provider.startswith("triton") and sum(ops.TRITON_CALLS.values()) == before:
                raise RuntimeError(
                    f"{spec.name}: the triton provider did not reach the Triton kernels "
                    f"(A2NET_BACKEND={os.environ.get('A2NET_BACKEND')!r})"
                )
        except torch.cuda.OutOfMemoryError as exc:
            ctx.skipped.append(f"{spec.name} {sid} {label} {provider}: out of memory ({str(exc).splitlines()[0][:80]})")
        except Exception as exc:  # a compile failure of one provider must not end the run
            if provider.startswith("triton"):
                raise  # ours failing is a bug, never a footnote
            ctx.failed_providers.setdefault(spec.name, {})[provider] = f"{type(exc).__name__}: {exc}"
            print(f"  {provider} failed, skipped from now on: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return results


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------


def predicted_us(ctx: Context, spec: OpSpec, shape: dict, label: str, pass_: str) -> float:
    """The roofline model's time of one pass of our kernels (perf/roofline.py) on this GPU's peaks
    (H200 when the name says so, else H100 SXM); NaN on CPU or where there is no model."""
    if ctx.device.type != "cuda":
        return float("nan")
    need = {"source": True, "target": True, "corr": True} if ctx.args.all_grads else None
    try:
        return 1e6 * roofline.predict_op(spec.name, pass_, shape, label, roofline.gpu_for(ctx.info.gpu), need)
    except (roofline.NotModelled, KeyError):
        return float("nan")


def print_case(ctx: Context, spec: OpSpec, shape: dict, label: str, rows: list[dict]) -> None:
    if not rows:
        return
    print(f"\n{spec.name} {spec.shape_id(shape)} {label}")
    subject = {(r["pass"], r["timer"]): float(r["ms_p50"]) for r in rows if r["provider"] == ctx.subject}
    predictions = {p: predicted_us(ctx, spec, shape, label, p) for p in {r["pass"] for r in rows}}
    table = []
    for r in rows:
        ms = float(r["ms_p50"])
        ours = r["provider"] == "triton" or (spec.name == "correlation_gemm" and r["provider"] == "cublas")
        pred = predictions[r["pass"]] if ours else float("nan")
        flop, byte = float(r["gflop"]) * 1e9, float(r["gbyte"]) * 1e9
        tflops, gbps = flop / ms / 1e9, byte / ms / 1e6
        roof = ctx.peaks.roofline_ms(flop / 1e9, byte / 1e9, label) / ms if ctx.peaks else float("nan")
        base = subject.get((r["pass"], r["timer"]))
        ratio = f"{ms / base:.2f}x" if base and r["provider"] != ctx.subject else ""
        table.append(
            [
                r["pass"],
                r["provider"],
                r["timer"],
                f"{H.fmt_ms(ms)} ({H.fmt_ms(float(r['ms_p20']))}-{H.fmt_ms(float(r['ms_p80']))})",
                f"{tflops:.2f}",
                f"{gbps:.0f}",
                f"{100 * roof:.1f}%" if math.isfinite(roof) else "-",
                f"{pred:.1f}" if math.isfinite(pred) else "-",
                f"{pred / (1e3 * ms):.0%}" if math.isfinite(pred) else "-",
                f"{float(r['peak_mb']):.1f}",
                ratio,
                r["rel_err"],
                r["note"],
            ]
        )
    print(
        H.format_table(
            [
                "pass",
                "provider",
                "timer",
                "ms p50 (p20-p80)",
                "TFLOP/s",
                "GB/s",
                "roofline",
                "predicted_us",
                "of_roofline",
                "peak MB",
                f"/{ctx.subject}",
                "rel_err",
                "note",
            ],
            table,
        )
    )


def summary(ctx: Context) -> str:
    """Geometric mean over shapes of baseline / subject, per op, pass, dtype, baseline, timer."""
    by_key: dict = {}
    for r in ctx.rows:
        case = (r["op"], r["pass"], r["dtype"], r["timer"], r["shape"])
        by_key.setdefault(case, {})[r["provider"]] = float(r["ms_p50"])
    ratios: dict = {}
    for (op, pass_, label, timer, _), times in by_key.items():
        if ctx.subject not in times:
            continue
        for provider, ms in times.items():
            if provider != ctx.subject:
                ratios.setdefault((op, pass_, label, timer, provider), []).append(ms / times[ctx.subject])
    table = [
        [op, pass_, label, timer, provider, f"{H.geomean(v):.2f}x", f"{min(v):.2f}-{max(v):.2f}", len(v)]
        for (op, pass_, label, timer, provider), v in sorted(ratios.items())
    ]
    if not table:
        return f"(no baseline to compare with {ctx.subject})"
    return H.format_table(
        ["op", "pass", "dtype", "timer", "baseline", f"geomean baseline/{ctx.subject}", "range", "shapes"], table
    )


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cuda | cpu | auto (cuda when visible; default)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--quick", action="store_true", help="a small subset (CPU: B=2, 15x15, C=512; CUDA: B=8, 15/30, C=1024)"
    )
    p.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    p.add_argument("--batch", nargs="+", type=int, help="B values (CUDA default 32 8 1; CPU 8 1)")
    p.add_argument("--channels", nargs="+", type=int, help="C of the correlation (default 1024 512)")
    p.add_argument("--hw", nargs="+", type=int, help="H=W of the feature maps (CUDA default 15 30 45 60; CPU 15 30)")
    p.add_argument("--dtypes", nargs="+", choices=list(H.DTYPES), help="CUDA default tf32 bf16; CPU fp32")
    p.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES))
    p.add_argument(
        "--providers", nargs="+", choices=PROVIDERS, help="CUDA default: all; CPU default: reference authors"
    )
    p.add_argument(
        "--csv",
        type=Path,
        default=H.DEFAULT_CSV,
        help=f"results CSV to append to (default {H.DEFAULT_CSV.relative_to(REPO)})",
    )
    p.add_argument("--no-csv", action="store_true", help="append nowhere")
    p.add_argument(
        "--budget-s",
        type=float,
        default=float("inf"),
        help="start no new case after this many seconds (the rest is listed as skipped)",
    )
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument(
        "--graph-below-ms",
        type=float,
        default=1.0,
        help="also time with CUDA-graph replays when the median is below this (CUDA)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the float64 correctness check")
    p.add_argument(
        "--all-grads",
        action="store_true",
        help="backward through every input (default: the model's: the OAC's correlation, from "
        "the frozen backbone, needs none)",
    )
    p.add_argument("--no-peaks", action="store_true", help="skip the matmul/copy peak measurement")
    args = p.parse_args(argv)
    return args


def _defaults(args, device):
    cuda = device.type == "cuda"
    if args.quick:
        grid = (
            dict(batch=[8], channels=[1024], hw=[15, 30], dtypes=["tf32", "bf16"])
            if cuda
            else dict(batch=[2], channels=[512], hw=[15], dtypes=["fp32"])
        )
    else:
        grid = (
            dict(batch=[32, 8, 1], channels=[1024, 512], hw=[15, 30, 45, 60], dtypes=["tf32", "bf16"])
            if cuda
            else dict(batch=[8, 1], channels=[1024, 512], hw=[15, 30], dtypes=["fp32"])
        )
    for key, value in grid.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.providers is None:
        args.providers = list(PROVIDERS) if cuda else ["reference", "authors"]
    if not cuda:
        if any(p.startswith("triton") for p in args.providers):
            raise SystemExit(
                "--providers triton: the Triton kernels need a CUDA device (on CPU they only run in "
                "the interpreter, which is a correctness tool, not something to time)"
            )
        if "tf32" in args.dtypes:
            raise SystemExit("--dtypes tf32: tf32 is a CUDA tensor-core mode; use fp32 (or bf16) on CPU")
    if args.quick and not cuda:
        args.warmup_ms, args.rep_ms = min(args.warmup_ms, 5.0), min(args.rep_ms, 20.0)


def cases(args):
    """(op, shape, dtype) in priority order: the paper's batch first, then growing maps."""
    seen = set()
    for b, hw, c, label in itertools.product(args.batch, sorted(args.hw), args.channels, args.dtypes):
        for name in args.ops:
            spec = OPS[name]
            shape = spec.shape(b, c, hw)
            if shape is None:
                continue
            key = (name, spec.shape_id(shape), label)
            if key in seen:
                continue  # the OAC and the attention do not depend on C
            seen.add(key)
            yield spec, shape, label


def main(argv=None) -> int:
    args = parse_args(argv)
    gc.freeze()  # the imported modules' objects: later collections (between cases) stay cheap
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu":
            print("no CUDA device visible: benchmarking the CPU path (--device cpu)")
    device = H.resolve_device(args.device)
    _defaults(args, device)
    if device.type == "cuda":
        os.environ["A2NET_BACKEND"] = "triton"  # the ops' own dispatch; reference providers call a2net.reference
    info = H.run_info(device)
    timer = H.Timer(device, args.warmup_ms, args.rep_ms, min_reps=3 if args.quick else 5)
    csv_path = None if args.no_csv else args.csv
    subject = "triton" if device.type == "cuda" else "reference"
    print(
        f"bench_ops: {info.gpu}, torch {info.torch}, triton {info.triton}, commit {info.commit}, {info.date}"
        + (f", load average {H.load_average()}" if device.type == "cpu" else "")
    )
    print(
        f"grid: B {args.batch}, C {args.channels} (correlation), H=W {args.hw}, dtypes {args.dtypes}, "
        f"passes {args.passes}, providers {args.providers}; ratios are provider / {subject} (p50)"
    )
    peaks, peak_rows = None, []
    if not args.no_peaks:
        labels = [label for label in args.dtypes]
        peaks, peak_rows = H.measure_peaks(device, labels, info, timer, small=args.quick)
        for row in peak_rows:
            print(f"peak {row['pass']} {row['dtype']}: {row['note']}")
    ctx = Context(args, device, info, timer, H.MemoryMeter(device), peaks, csv_path, subject)
    for row in peak_rows:
        ctx.emit(row)
    start = time.monotonic()
    todo = list(cases(args))
    for i, (spec, shape, label) in enumerate(todo):
        if time.monotonic() - start > args.budget_s:
            for spec2, shape2, label2 in todo[i:]:
                ctx.skipped.append(
                    f"{spec2.name} {spec2.shape_id(shape2)} {label2}: time budget ({args.budget_s:g} s) spent"
                )
            break
        rows = run_case(ctx, spec, shape, label, args.providers)
        print_case(ctx, spec, shape, label, rows)
    print("\nsummary (geometric mean over shapes):")
    print(summary(ctx))
    for name, failures in ctx.failed_providers.items():
        for provider, why in failures.items():
            print(f"provider failed: {name} {provider}: {why.splitlines()[0][:200]}")
    if ctx.skipped:
        print(f"\nskipped ({len(ctx.skipped)}):")
        for line in ctx.skipped:
            print(f"  {line}")
    mismatches = [r for r in ctx.rows if "MISMATCH" in r["note"]]
    if mismatches:
        print(f"\n{len(mismatches)} rows MISMATCH the float64 reference:")
        for r in mismatches:
            print(f"  {r['op']} {r['pass']} {r['shape']} {r['dtype']} {r['provider']}: rel_err {r['rel_err']}")
    if csv_path is not None:
        print(f"\n{len(ctx.rows)} rows appended to {csv_path}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
