"""Regenerate perf/results/README.md's tables, the per-device detail pages and the plots from
the results CSV.

For every device (the CSV's ``gpu`` column) the latest measurement of each (op, pass, shape,
dtype, provider, timer) is kept (runs accumulate in the CSV across machines and commits):

* ``perf/results/README.md``: between its ``<!-- generated:begin -->`` and
  ``<!-- generated:end -->`` markers (the text around them is kept; a missing file is created):
  per device, the machine peaks, the geometric-mean speed-ups, per op the forward+backward time
  of every provider by shape with the ratio to the subject (``triton`` on a GPU, ``reference``
  on CPU) and the peak memory, and the training-step table of bench_model;
* ``perf/results/<device>.md``: every row of the device (all passes, p20/p50/p80, peak memory,
  TFLOP/s, GB/s, fraction of the roofline floor, relative error);
* ``perf/results/<device>.png``: time and peak memory against H=W, one row of panels per op
  (forward+backward, the largest batch and C measured).

Usage::

    python perf/plot_results.py [--csv perf/results/results.csv] [--out perf/results]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf import _harness as H

BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"
OPS_ORDER = ("correlation", "offset_aware_correlation", "correlation_oac", "attention_pool", "correlation_gemm")
PROVIDER_ORDER = (
    "triton",
    "triton-unfused",
    "reference",
    "reference-compiled",
    "authors",
    "cublas",
    "triton-compiled",
    "torch",
)
INTRO = f"""# Benchmark results

Measured by `perf/bench_ops.py` (the ops) and `perf/bench_model.py` (a training step), appended to
[`results.csv`](results.csv) (one row per op, pass, shape, dtype, provider and timer, with the
machine, torch and triton versions, commit and date); this page and the plots are regenerated
from it by `python perf/plot_results.py`. How to read the numbers: [`../README.md`](../README.md).

{BEGIN}
{END}
"""


def slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def _f(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _shape_dims(shape: str) -> dict:
    """``"B32-C1024-H15-W15"`` -> ``{"B": 32, "C": 1024, "H": 15, "W": 15}``."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"([A-Z])(\d+)", shape)}


def _order(name: str, order: tuple) -> tuple:
    return (order.index(name) if name in order else len(order), name)


def latest(rows: list[dict]) -> dict:
    """device -> the latest row per (op, pass, shape, dtype, provider, timer)."""
    out: dict = defaultdict(dict)
    for r in rows:
        key = (r["op"], r["pass"], r["shape"], r["dtype"], r["provider"], r["timer"])
        if key not in out[r["gpu"]] or r["date"] >= out[r["gpu"]][key]["date"]:
            out[r["gpu"]][key] = r
    return out


def peaks_of(rows: dict) -> dict:
    """date -> {"tflops": {dtype: value}, "gbps": value} from a device's peak rows."""
    peaks: dict = defaultdict(lambda: {"tflops": {}, "gbps": float("nan")})
    for r in rows.values():
        if r["op"] != "peak":
            continue
        ms = _f(r["ms_p50"])
        if r["pass"] == "matmul":
            peaks[r["date"]]["tflops"][r["dtype"]] = _f(r["gflop"]) / ms
        elif r["pass"] == "copy":
            peaks[r["date"]]["gbps"] = _f(r["gbyte"]) / ms * 1e3
    return peaks


def subject_of(device: str) -> str:
    return "reference" if device.startswith("cpu") else "triton"


def md_table(headers: list, rows: list) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def _run_line(rows: dict) -> str:
    runs = sorted({(r["date"], r["commit"], r["torch"], r["triton"]) for r in rows.values()})
    last = runs[-1]
    return f"torch {last[2]}, triton {last[3]}; {len(runs)} run(s), latest {last[0]} at commit `{last[1]}`"


def geomean_rows(rows: dict, subject: str) -> list:
    by_case: dict = defaultdict(dict)
    for (op, pass_, shape, dtype, provider, timer), r in rows.items():
        if op in ("peak", "a2net_train_step"):
            continue
        by_case[(op, pass_, dtype, timer, shape)][provider] = _f(r["ms_p50"])
    ratios: dict = defaultdict(list)
    for (op, pass_, dtype, timer, _), times in by_case.items():
        if subject not in times:
            continue
        for provider, ms in times.items():
            if provider != subject:
                ratios[(op, pass_, dtype, timer, provider)].append(ms / times[subject])
    out = []
    for (op, pass_, dtype, timer, provider), v in sorted(
        ratios.items(), key=lambda kv: (_order(kv[0][0], OPS_ORDER), kv[0][1:])
    ):
        out.append([op, pass_, dtype, timer, provider, f"{H.geomean(v):.2f}x", f"{min(v):.2f}-{max(v):.2f}", len(v)])
    return out


def op_table(rows: dict, op: str, subject: str, pass_: str = "fwd+bwd") -> str | None:
    """Rows (shape, dtype); columns: p50 ms of each provider, ratio to the subject, peak MB."""
    cases: dict = defaultdict(dict)
    for (o, p, shape, dtype, provider, timer), r in rows.items():
        if o == op and p == pass_ and timer in ("do_bench", "perf_counter"):
            cases[(shape, dtype)][provider] = r
    if not cases:
        return None
    providers = sorted({p for c in cases.values() for p in c}, key=lambda p: _order(p, PROVIDER_ORDER))
    others = [p for p in providers if p != subject]
    ratios = [f"{p} / {subject}" for p in others] if subject in providers else []
    headers = ["shape", "dtype"] + [f"{p} ms" for p in providers] + ratios + [f"{p} MB" for p in providers]
    body = []
    for (shape, dtype), c in sorted(cases.items(), key=lambda kv: (kv[0][1], tuple(_shape_dims(kv[0][0]).values()))):
        ms = {p: _f(c[p]["ms_p50"]) if p in c else float("nan") for p in providers}
        line = [shape, dtype] + [H.fmt_ms(ms[p]) for p in providers]
        if subject in providers:
            line += [f"{ms[p] / ms[subject]:.2f}x" if math.isfinite(ms[p] / ms[subject]) else "-" for p in others]
        peaks = [_f(c[p]["peak_mb"]) if p in c else float("nan") for p in providers]
        line += [f"{mb:.3g}" if math.isfinite(mb) else "-" for mb in peaks]
        body.append(line)
    return md_table(headers, body)


def model_table(rows: dict) -> str | None:
    steps = {k: r for k, r in rows.items() if k[0] == "a2net_train_step"}
    if not steps:
        return None
    by: dict = defaultdict(dict)
    for (_, pass_, shape, dtype, provider, _), r in steps.items():
        by[(shape, dtype, provider)][pass_] = r
    backbone = {(shape, dtype): _f(r["backbone"]["ms_p50"]) for (shape, dtype, p), r in by.items() if "backbone" in r}
    body = []
    for (shape, dtype, provider), r in sorted(by.items(), key=lambda kv: (kv[0][0], _order(kv[0][2], PROVIDER_ORDER))):
        if "step" not in r:
            continue
        step = _f(r["step"]["ms_p50"])
        head = _f(r["head"]["ms_p50"]) if "head" in r else float("nan")
        batch = _shape_dims(shape.split("-", 1)[1]).get("B", 0)
        ref = by.get((shape, dtype, "reference"), {}).get("step")
        body.append(
            [
                shape,
                dtype,
                provider,
                H.fmt_ms(step),
                f"{batch * 1e3 / step:.1f}",
                H.fmt_ms(head),
                f"{head / step:.0%}" if math.isfinite(head) else "-",
                f"{_f(r['step']['peak_mb']):.0f}",
                f"{_f(ref['ms_p50']) / step:.2f}x" if ref else "-",
            ]
        )
    table = md_table(
        [
            "setting",
            "dtype",
            "provider",
            "step ms",
            "pairs/s",
            "head ms",
            "head share",
            "peak MB",
            "speed-up vs reference",
        ],
        body,
    )
    if backbone:
        table += "\n\nFrozen backbone alone (both images, no gradient): " + ", ".join(
            f"{shape} {H.fmt_ms(ms)} ms" for (shape, _), ms in sorted(backbone.items())
        )
    return table


def detail_page(device: str, rows: dict) -> str:
    peaks = peaks_of(rows)
    lines = [
        f"# {device}: every measurement",
        "",
        _run_line(rows),
        "",
        "Latest row per (op, pass, shape, dtype, provider, timer); roofline = max(FLOPs / matmul peak, "
        "bytes / copy peak) / time, with the peaks of the same run. Generated by `perf/plot_results.py`.",
        "",
    ]
    body = []

    def order(k):
        return (
            _order(k[0], OPS_ORDER + ("a2net_train_step", "peak")),
            k[1],
            k[3],
            tuple(_shape_dims(k[2]).values()),
            _order(k[4], PROVIDER_ORDER),
            k[5],
        )

    for key in sorted(rows, key=order):
        r = rows[key]
        ms = _f(r["ms_p50"])
        gflop, gbyte = _f(r["gflop"]), _f(r["gbyte"])
        tflops = gflop / ms if math.isfinite(gflop) else float("nan")
        gbps = gbyte / ms * 1e3 if math.isfinite(gbyte) else float("nan")
        pk = peaks.get(r["date"])
        roof = float("nan")
        if pk and r["op"] != "peak":
            rate = pk["tflops"].get(r["dtype"]) or pk["tflops"].get("tf32") or pk["tflops"].get("fp32") or float("nan")
            floor = max(
                gflop / rate if math.isfinite(gflop) else 0.0, gbyte / pk["gbps"] * 1e3 if math.isfinite(gbyte) else 0.0
            )
            roof = floor / ms if floor else float("nan")
        body.append(
            [
                r["op"],
                r["pass"],
                r["shape"],
                r["dtype"],
                r["provider"],
                r["timer"],
                f"{H.fmt_ms(_f(r['ms_p20']))} / {H.fmt_ms(ms)} / {H.fmt_ms(_f(r['ms_p80']))}",
                f"{_f(r['peak_mb']):.1f}" if math.isfinite(_f(r["peak_mb"])) else "-",
                f"{tflops:.3g}" if math.isfinite(tflops) else "-",
                f"{gbps:.3g}" if math.isfinite(gbps) else "-",
                f"{100 * roof:.1f}%" if math.isfinite(roof) else "-",
                r["rel_err"] or "-",
                r["note"],
            ]
        )
    lines.append(
        md_table(
            [
                "op",
                "pass",
                "shape",
                "dtype",
                "provider",
                "timer",
                "ms p20 / p50 / p80",
                "peak MB",
                "TFLOP/s",
                "GB/s",
                "roofline",
                "rel_err",
                "note",
            ],
            body,
        )
    )
    return "\n".join(lines) + "\n"


def plot(device: str, rows: dict, path: Path) -> bool:
    """Time and peak memory of forward+backward against H=W; False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OPS_ORDER if any(k[0] == op and k[1] == "fwd+bwd" for k in rows)]
    if not ops:
        return False
    fig, axes = plt.subplots(len(ops), 2, figsize=(11, 3.3 * len(ops)), squeeze=False)
    for i, op in enumerate(ops):
        keys = [k for k in rows if k[0] == op and k[1] == "fwd+bwd" and k[5] in ("do_bench", "perf_counter")]
        dims = [_shape_dims(k[2]) for k in keys]
        batch = max(d["B"] for d in dims)
        channels = max(d.get("C", 0) for d in dims)
        series: dict = defaultdict(list)
        for k, d in zip(keys, dims, strict=True):
            if d["B"] != batch or d.get("C", 0) != channels:
                continue
            r = rows[k]
            series[(k[4], k[3])].append((d["H"], _f(r["ms_p50"]), _f(r["peak_mb"])))
        for (provider, dtype), pts in sorted(
            series.items(), key=lambda kv: (_order(kv[0][0], PROVIDER_ORDER), kv[0][1])
        ):
            pts.sort()
            xs = [p[0] for p in pts]
            style = dict(
                linestyle="-" if dtype in ("tf32", "fp32") else "--",
                marker="o",
                color=f"C{_order(provider, PROVIDER_ORDER)[0] % 10}",
                label=f"{provider} {dtype}",
            )
            axes[i][0].plot(xs, [p[1] for p in pts], **style)
            axes[i][1].plot(xs, [p[2] for p in pts], **style)
        shape_note = f"B={batch}" + (f", C={channels}" if op != "attention_pool" and channels else "")
        for j, what in enumerate(("time, ms (p50)", "peak memory, MiB")):
            ax = axes[i][j]
            ax.set_yscale("log")
            ax.set_xlabel("H = W" + (" (attention map: feature map - 6)" if op == "attention_pool" else ""))
            ax.set_ylabel(what)
            ax.set_title(f"{op} fwd+bwd, {shape_note}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        axes[i][0].legend(fontsize=7)
    fig.suptitle(device, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def generate(csv_path: Path, out_dir: Path) -> list[Path]:
    """Write the README section, the detail pages and the plots; returns the files written."""
    rows = H.read_rows(csv_path)
    by_device = latest(rows)
    written = []
    sections = [
        f"_Generated from `{csv_path.name}` ({len(rows)} rows) by `perf/plot_results.py`; do not edit "
        "between the markers._",
        "",
    ]
    for device in sorted(by_device, key=lambda d: (d.startswith("cpu"), d)):
        drows = by_device[device]
        subject = subject_of(device)
        name = slug(device)
        sections += [f"## {device}", "", _run_line(drows) + f". Every measurement: [{name}.md]({name}.md).", ""]
        pk = peaks_of(drows)
        if pk:
            last = pk[max(pk)]
            matmuls = ", ".join(f"matmul {d} {v:.3g} TFLOP/s" for d, v in sorted(last["tflops"].items()))
            sections += [f"Measured peaks: {matmuls}, copy {last['gbps']:.3g} GB/s (read + write).", ""]
        g = geomean_rows(drows, subject)
        if g:
            sections += [
                f"Geometric mean over shapes of provider time / {subject} time (above 1: {subject} is faster):",
                "",
                md_table(["op", "pass", "dtype", "timer", "provider", "geomean", "range", "shapes"], g),
                "",
            ]
        if plot(device, drows, out_dir / f"{name}.png"):
            written.append(out_dir / f"{name}.png")
            sections += [f"![{device}: time and memory against H=W]({name}.png)", ""]
        for op in OPS_ORDER:
            t = op_table(drows, op, subject)
            if t:
                sections += [f"### {op}, forward+backward", "", t, ""]
        m = model_table(drows)
        if m:
            sections += ["### A2Net training step (perf/bench_model.py)", "", m, ""]
        detail = out_dir / f"{name}.md"
        detail.write_text(detail_page(device, drows))
        written.append(detail)
    readme = out_dir / "README.md"
    text = readme.read_text() if readme.exists() else INTRO
    if BEGIN not in text or END not in text:
        text = text.rstrip() + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + BEGIN + "\n" + "\n".join(sections).rstrip() + "\n" + END + tail)
    written.append(readme)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", type=Path, default=H.DEFAULT_CSV)
    p.add_argument("--out", type=Path, help="output folder (default: the CSV's folder)")
    args = p.parse_args(argv)
    if not args.csv.exists():
        raise SystemExit(f"{args.csv}: no such file (run perf/bench_ops.py first)")
    out = args.out or args.csv.parent
    out.mkdir(parents=True, exist_ok=True)
    for path in generate(args.csv, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
