"""The performance goals, each with a met / not-met line, from a GPU run's figures.

1. The fused op (``correlation_oac``), forward+backward with the weight and bias gradients (frozen
   backbone), at least 3x faster than the ``torch.compile``'d PyTorch reference at B=32, C=1024,
   O=128, 15x15, in tf32 and bf16 (``perf/bench_ops.py`` rows, ``do_bench`` medians).
2. At 60x60 (B=8, C=1024, O=128): the fused forward within 1.3x of the correlation GEMM alone
   (``correlation_gemm``: ``torch.bmm`` on cuBLAS at the same precision), and at least 10x less
   working memory than our correlation op followed by our OAC op (``triton-unfused``). Working
   memory is the peak minus the inputs (the feature maps, the weight and the bias), which both
   hold alike.
3. Every contraction kernel (the kernels ``perf/kernel_specs.py`` marks ``contraction``) at least
   50% of its roofline (``perf/roofline.py``: predicted over measured time) at 60x60, B=8, C=1024,
   O=128, forward and backward, tf32 and bf16. Kernel times come from :func:`profile` (the PyTorch
   profiler's CUDA kernel times, summed per kernel name over the launches of one call), which
   gpu_check.sh runs with ``A2NET_AUTOTUNE=0``: the configs the roofline models (or the table's).

Usage (the bench rows first, see perf/gpu_check.sh)::

    PYTHONPATH=. python perf/goals.py --profile results/kernels.json       # goal 3's timings (CUDA)
    PYTHONPATH=. python perf/goals.py --csv results/results.csv --kernels results/kernels.json

Exit status 0 when every goal was measured and met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf import _harness as H
from perf import roofline

DTYPES = ("tf32", "bf16")
PAPER = {"B": 32, "C": 1024, "O": 128, "H": 15, "W": 15}
LARGE = {"B": 8, "C": 1024, "O": 128, "H": 60, "W": 60}
SPEEDUP_GOAL, GEMM_GOAL, MEMORY_GOAL, ROOFLINE_GOAL = 3.0, 1.3, 10.0, 0.5
#: The ops goal 3 profiles, fwd+bwd with the gradients the model needs (the correlation: both maps).
PROFILED_OPS = ("correlation", "offset_aware_correlation", "correlation_oac")
PROFILE_ITERATIONS = 5


def shape_id(shape: dict, keys: str) -> str:
    return "-".join(f"{k}{shape[k]}" for k in keys)


def _median(rows, **match) -> float | None:
    """``ms_p50`` of the first ``do_bench`` row matching every field."""
    for r in rows:
        if r.get("timer") == "do_bench" and all(r.get(k) == v for k, v in match.items()):
            return float(r["ms_p50"])
    return None


def _peak(rows, **match) -> float | None:
    for r in rows:
        if r.get("timer") == "do_bench" and all(r.get(k) == v for k, v in match.items()) and r.get("peak_mb"):
            return float(r["peak_mb"])
    return None


def input_mib(shape: dict, dtype: str) -> float:
    """MiB of the fused op's inputs: both feature maps, the OAC weight and bias."""
    b, c, o, h, w = (shape[k] for k in "BCOHW")
    elements = 2 * b * c * h * w + o * (2 * h - 1) * (2 * w - 1) + o
    return elements * roofline.ELEMENT_BYTES[dtype] / 2**20


def line(name: str, value: float | None, goal: str, met: bool | None) -> tuple[str, bool]:
    status = "not measured" if met is None else "met" if met else "NOT MET"
    shown = "-" if value is None or not math.isfinite(value) else f"{value:.2f}"
    return f"goal {name}: {shown} (goal {goal}): {status}", bool(met)


def bench_goals(rows: list[dict]) -> list[tuple[str, bool]]:
    """Goals 1 and 2 from results.csv rows."""
    out = []
    paper = shape_id(PAPER, "BCOHW")
    large, large_gemm = shape_id(LARGE, "BCOHW"), shape_id(LARGE, "BCHW")
    for dtype in DTYPES:
        ours = _median(rows, op="correlation_oac", shape=paper, dtype=dtype, provider="triton", **{"pass": "fwd+bwd"})
        ref = _median(
            rows, op="correlation_oac", shape=paper, dtype=dtype, provider="reference-compiled", **{"pass": "fwd+bwd"}
        )
        ratio = ref / ours if ours and ref else None
        out.append(
            line(
                f"fused fwd+bwd vs torch.compile reference, {paper} {dtype}",
                ratio,
                f">= {SPEEDUP_GOAL:g}x faster",
                None if ratio is None else ratio >= SPEEDUP_GOAL,
            )
        )
    for dtype in DTYPES:
        fused = _median(rows, op="correlation_oac", shape=large, dtype=dtype, provider="triton", **{"pass": "fwd"})
        gemm = _median(rows, op="correlation_gemm", shape=large_gemm, dtype=dtype, provider="cublas", **{"pass": "fwd"})
        ratio = fused / gemm if fused and gemm else None
        out.append(
            line(
                f"fused fwd / cuBLAS bmm of the maps, {large} {dtype}",
                ratio,
                f"<= {GEMM_GOAL:g}x",
                None if ratio is None else ratio <= GEMM_GOAL,
            )
        )
        inputs = input_mib(LARGE, dtype)
        fused_mb = _peak(rows, op="correlation_oac", shape=large, dtype=dtype, provider="triton", **{"pass": "fwd"})
        unfused_mb = _peak(
            rows, op="correlation_oac", shape=large, dtype=dtype, provider="triton-unfused", **{"pass": "fwd"}
        )
        ratio = None
        if fused_mb is not None and unfused_mb is not None:
            ratio = (unfused_mb - inputs) / max(fused_mb - inputs, 1e-3)
        out.append(
            line(
                f"unfused / fused forward working memory (peak - {inputs:.0f} MiB inputs), {large} {dtype}",
                ratio,
                f">= {MEMORY_GOAL:g}x",
                None if ratio is None else ratio >= MEMORY_GOAL,
            )
        )
    return out


def contraction_kernels() -> set[str]:
    """Function names of the kernels perf/kernel_specs.py marks ``contraction`` (the listers that
    fail are skipped: the kernel report says why)."""
    from perf import kernel_specs

    names = set()
    for lister in kernel_specs.SPECS.values():
        try:
            names |= {spec["fn"].__name__ for spec in lister(True) if spec["contraction"]}
        except Exception:  # a spec module being rewritten must not hide the other goals
            continue
    return names


def kernel_goals(measured: dict, gpu_name: str) -> list[tuple[str, bool]]:
    """Goal 3: ``measured`` is :func:`profile`'s ``{dtype: {op: {kernel: microseconds}}}``."""
    gpu = roofline.gpu_for(gpu_name)
    wanted = contraction_kernels()
    out = []
    for dtype, ops in measured.items():
        for op, kernels in ops.items():
            try:
                entries = roofline.costs(op, "fwd+bwd", LARGE, dtype)
            except roofline.NotModelled as exc:
                out.append(line(f"{op} kernels at 60x60 {dtype} ({exc})", None, "", None))
                continue
            predicted: dict[str, float] = {}
            for e in entries:
                name = e["name"] if e["name"].endswith("_kernel") else e["name"] + "_kernel"
                predicted[name] = predicted.get(name, 0.0) + roofline.predict(e, gpu, dtype)[0] * 1e6
            for name in sorted(set(predicted) & wanted):
                us = kernels.get(name)
                frac = predicted[name] / us if us else None
                out.append(
                    line(
                        f"{name} ({op}) of its roofline at 60x60 {dtype}, {predicted[name]:.0f} us predicted on "
                        f"{gpu.name}, {us or float('nan'):.0f} us measured",
                        frac,
                        f">= {ROOFLINE_GOAL:.0%}",
                        None if frac is None else frac >= ROOFLINE_GOAL,
                    )
                )
    return out


def _step(provider, inputs: dict, needs: list, precision: str) -> None:
    import torch

    out = provider(inputs, precision)
    torch.autograd.grad(out, needs, torch.ones_like(out))


def profile(path: Path) -> dict:
    """Time every kernel of the profiled ops at the 60x60 shape (CUDA; writes and returns
    ``{"gpu": name, "kernels": {dtype: {op: {kernel: us per call}}}}``)."""
    import os

    import torch
    from torch.profiler import ProfilerActivity

    from perf.op_specs import OPS

    device = H.resolve_device("cuda")
    os.environ["A2NET_BACKEND"] = "triton"
    result: dict = {}
    for dtype in DTYPES:
        storage, precision = H.DTYPES[dtype]
        H.set_matmul_mode(dtype)
        for op in PROFILED_OPS:
            spec = OPS[op]
            shape = spec.shape(LARGE["B"], LARGE["C"], LARGE["H"])
            inputs = spec.make(shape, storage, device, torch.Generator(device=device).manual_seed(0))
            needs = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]

            step = functools.partial(_step, spec.providers["triton"], inputs, needs, precision)
            step()  # compile and tune outside the profile
            torch.cuda.synchronize(device)
            with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(PROFILE_ITERATIONS):
                    step()
                torch.cuda.synchronize(device)
            times: dict[str, float] = {}
            for event in prof.key_averages():
                us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)
                if us:
                    times[event.key] = us / PROFILE_ITERATIONS
            result.setdefault(dtype, {})[op] = times
            del inputs, needs, step
            torch.cuda.empty_cache()
    data = {"gpu": torch.cuda.get_device_name(device), "kernels": result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return data


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", type=Path, help="results.csv rows of this run (goals 1 and 2)")
    p.add_argument("--kernels", type=Path, help="per-kernel times written by --profile (goal 3)")
    p.add_argument(
        "--profile", type=Path, metavar="OUT", help="measure the per-kernel times into OUT (CUDA), then stop"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.profile:
        data = profile(args.profile)
        n = sum(len(k) for ops in data["kernels"].values() for k in ops.values())
        print(f"goals: {n} kernel timings on {data['gpu']} -> {args.profile}")
        return 0
    results = []
    if args.csv and args.csv.exists():
        results += bench_goals(H.read_rows(args.csv))
    else:
        results += [line("fused speed, GEMM ratio and memory (no bench rows)", None, "", None)]
    if args.kernels and args.kernels.exists():
        data = json.loads(args.kernels.read_text())
        results += kernel_goals(data["kernels"], data["gpu"])
    else:
        results += [line("contraction kernels of their roofline (no kernel timings)", None, "", None)]
    for text, _ in results:
        print(text)
    met = sum(ok for _, ok in results)
    print(f"goals: {met} of {len(results)} met")
    return 0 if met == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
