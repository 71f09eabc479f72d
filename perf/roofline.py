"""The roofline model of every kernel launch, from the launchers' real tiling (perf/README.md, "The
roofline model").

Per kernel launch (a dict, the same as ``perf/roofline_oac.py``'s ``costs()`` gives for the OAC
family): ``name`` (the Triton kernel's function name), ``flops`` executed (padding and
recomputation included: tensor-core FLOPs of the tiles as launched), ``useful_flops`` (what the
math needs), ``hbm_bytes`` (from device memory: inputs read once where the working set stays in
L2, outputs written once), ``l2_bytes`` (operand bytes every program loads through L2: a tile
re-read by many programs counts every time), ``programs`` and ``max_over_mean`` (the busiest SM's
work over the mean: wave quantisation of equal programs, one 8-warp GEMM program per SM).

Predicted time of a launch on a GPU: ``max(flops / peak, hbm_bytes / HBM bandwidth, l2_bytes / L2
bandwidth) * max_over_mean``, with the term that wins named as the bound; an op is the sum of its
launches. Peaks (dense): H100 SXM 495 TFLOP/s tf32, 990 bf16, 67 fp32 (CUDA cores: the
elementwise kernels and ieee dots), 3.35 TB/s HBM, 50 MB L2; H200 the same compute, 4.8 TB/s HBM.
The L2 bandwidth is an assumption, :data:`L2_BANDWIDTH` = 10 TB/s (published microbenchmarks of
H100 measure 5.5 to 12 TB/s depending on the access pattern): a 128x128 fp32 tile's operands
(32 FLOP per L2 byte) then bound a tf32 GEMM below its compute peak, which is what the model should
say.

The correlation (``kernels/correlation.py``, :func:`correlation_costs`) and a plain cuBLAS
``torch.bmm`` of the feature maps (:func:`bmm_costs`, the correlation GEMM alone) are modelled here;
the OAC family comes from ``perf/roofline_oac.py`` when it exists (else "n/a").

Usage::

    python perf/roofline.py                      # the paper's shapes and 60x60, both dtypes
    python perf/roofline.py --batch 8 --hw 60 --dtypes bf16 --kernels
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch
import triton

from a2net.kernels import correlation as corr

#: Assumed L2 bandwidth (bytes/s) of H100 and H200 (see the module doc).
L2_BANDWIDTH = 10e12
ELEMENT_BYTES = {"tf32": 4, "fp32": 4, "bf16": 2}
TORCH_DTYPES = {"tf32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}
#: The dots' ``input_precision`` of each dtype label (``"fp32"``: exact fp32, ieee).
PRECISIONS = {"tf32": "tf32", "fp32": "ieee", "bf16": "tf32"}
#: The ops modelled here, and those ``perf/roofline_oac.py`` models.
OPS = ("correlation", "correlation_gemm")
OAC_OPS = ("offset_aware_correlation", "correlation_oac")


@dataclass(frozen=True)
class GPU:
    """Dense peaks of a GPU: FLOP/s per dtype label (``"fp32"``: CUDA cores), bytes/s, L2 size."""

    name: str
    flops: dict
    hbm: float
    l2: float
    l2_size: float
    sms: int

    def peak(self, dtype: str, tensor: bool) -> float:
        return self.flops[dtype] if tensor else self.flops["fp32"]


H100 = GPU("H100 SXM", {"tf32": 495e12, "bf16": 990e12, "fp32": 67e12}, 3.35e12, L2_BANDWIDTH, 50e6, 132)
H200 = GPU("H200", {"tf32": 495e12, "bf16": 990e12, "fp32": 67e12}, 4.8e12, L2_BANDWIDTH, 50e6, 132)
GPUS = {"H100": H100, "H200": H200}


class NotModelled(LookupError):
    """An op this model cannot cost (the OAC family without ``perf/roofline_oac.py``)."""


def gpu_for(device_name: str) -> GPU:
    """The peaks to hold a measured GPU to: H200 when its name says so, else H100 SXM."""
    return H200 if "H200" in device_name else H100


def kernel(name, flops, useful_flops, hbm_bytes, l2_bytes, programs, max_over_mean=1.0, tensor=True) -> dict:
    """One launch's figures (``tensor``: its FLOPs run on tensor cores, else on CUDA cores)."""
    return {
        "name": name,
        "flops": float(flops),
        "useful_flops": float(useful_flops),
        "hbm_bytes": float(hbm_bytes),
        "l2_bytes": float(l2_bytes),
        "programs": int(programs),
        "max_over_mean": float(max_over_mean),
        "tensor": tensor,
    }


def waves(programs: int, slots: int = H100.sms) -> float:
    """Busiest SM over the mean when ``programs`` equal programs run ``slots`` at a time."""
    if programs <= 0:
        return 1.0
    return math.ceil(programs / slots) / (programs / slots)


# ------------------------------------------------------------------------------------------------
# The correlation, from kernels/correlation.py's launchers
# ------------------------------------------------------------------------------------------------


def _default_config(tuner, args: dict):
    return tuner.candidates(args)[0]


def correlation_costs(pass_: str, shape: dict, dtype: str, need: dict | None = None) -> list[dict]:
    """Launches of ``a2net.ops.correlation`` (all flags on, as in the model) on ``(B, C, H, W)`` maps.

    ``need``: ``{"source": bool, "target": bool}`` feature-map gradients of the backward (default
    both, as ``perf/bench_ops.py`` measures), ``"channels_last": bool`` (default False: NCHW maps,
    which the prep kernel copies).
    """
    need = {"source": True, "target": True, "channels_last": False, **(need or {})}
    b, c, h, w = shape["B"], shape["C"], shape["H"], shape["W"]
    s = t = h * w
    e = ELEMENT_BYTES[dtype]
    l2_size = H100.l2_size
    out = []
    if pass_ in ("fwd", "fwd+bwd"):
        for n in (s, t):
            copy = 0 if need["channels_last"] else b * n * c * e
            hbm = b * c * n * e + copy + b * n * 4
            progs = b * triton.cdiv(n, corr.NORM_BLOCK_N)
            out.append(
                kernel("correlation_fwd_prep_kernel", 2 * b * c * n, 2 * b * c * n, hbm, hbm, progs, tensor=False)
            )
        block_s = corr.fused_block_s(s) or corr.SPLIT_BLOCK_S
        cfg = _default_config(
            corr.correlation_fwd_kernel, {"BLOCK_S": block_s, "p_src": torch.empty((), dtype=TORCH_DTYPES[dtype])}
        )
        block_t, block_c = cfg.kwargs["BLOCK_T"], cfg.kwargs["BLOCK_C"]
        n_s, n_t = triton.cdiv(s, block_s), triton.cdiv(t, block_t)
        c_pad = triton.cdiv(c, block_c) * block_c
        progs = b * n_s * n_t
        flops = 2 * b * n_s * block_s * n_t * block_t * c_pad
        # the target map stays in L2 while a source block sweeps it when it fits (module doc)
        features = b * (s + (t if t * c * e <= l2_size / 2 else n_s * t)) * c * e
        norms = b * (s + t) * 4
        operands = progs * (block_s + block_t) * c_pad * e
        partials = b * n_s * t * 4  # the column sums of squares per s-block of a split column
        passes = corr.match_mode(True, s, c, TORCH_DTYPES[dtype], PRECISIONS[dtype])
        for mode in passes:
            writes = {"partials": partials, "scaled": b * s * t * e + partials}.get(mode, b * s * t * e + b * t * 4)
            reads = partials if mode == "final" else 0
            l2 = operands + (progs * n_s * block_t * 4 if mode == "final" else 0)
            out.append(
                kernel(
                    "correlation_fwd_kernel",
                    flops,
                    2 * b * s * t * c,
                    features + norms + writes + reads,
                    l2,
                    progs,
                    waves(progs),
                )
            )
        if "scaled" in passes:  # the rescale pass: the output read and written again
            progs = b * triton.cdiv(t, corr.RESCALE_BLOCK_T)
            steps = triton.cdiv(s, min(corr.RESCALE_BLOCK_S, block_s))
            rescale = 2 * b * s * t * e + partials + b * t * 4
            l2 = rescale + progs * (n_s + steps) * corr.RESCALE_BLOCK_T * 4  # partials: summed, then per step
            out.append(
                kernel("correlation_normalize_matches_kernel", 2 * b * s * t, 0, rescale, l2, progs, tensor=False)
            )
    if pass_ in ("bwd", "fwd+bwd") and (need["source"] or need["target"]):
        s_pad, t_pad = corr.padded(s), corr.padded(t)
        progs = b * t_pad // corr.PREP_BLOCK_T
        grad_out = 2 * b * s * t * e
        footprint = min(progs, H100.sms) * s * corr.PREP_BLOCK_T * e * 2
        second = grad_out if footprint > l2_size / 2 else 0  # the column dot's pass re-reads them
        writes = (b * s * t_pad * e if need["source"] else 0) + (b * t * s_pad * e if need["target"] else 0)
        small = b * (t_pad // corr.PREP_BLOCK_T) * s * 4 + 3 * b * t * 4
        out.append(
            kernel(
                "correlation_bwd_prep_kernel",
                10 * b * s * t,
                10 * b * s * t,
                grad_out + second + writes + small,
                2 * grad_out + writes + small,
                progs,
                tensor=False,
            )
        )
        cfg = _default_config(corr.correlation_bwd_features_kernel, {"p_e": torch.empty((), dtype=TORCH_DTYPES[dtype])})
        block_n, block_c = cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_C"]
        for side, n, k, k_pad in (("source", s, t, t_pad), ("target", t, s, s_pad)):
            if not need[side]:
                continue
            operand = b * c * k * e + b * k * 4 + b * c * k_pad * e
            progs = b * triton.cdiv(c, corr.OPERAND_BLOCK_R) * k_pad // corr.OPERAND_BLOCK_K
            out.append(
                kernel("correlation_bwd_operand_kernel", b * c * k, b * c * k, operand, operand, progs, tensor=False)
            )
            n_n, n_c = triton.cdiv(n, block_n), triton.cdiv(c, block_c)
            progs = b * n_n * n_c
            x_reads = 1 if c * k_pad * e <= l2_size / 2 else n_n
            hbm = b * n * k_pad * e + x_reads * b * c * k_pad * e + 2 * b * c * n * e + b * n * 4 * 3
            l2 = progs * (block_n + block_c) * k_pad * e + 2 * b * c * n * e
            flops = 2 * b * n_n * block_n * n_c * block_c * k_pad
            out.append(
                kernel("correlation_bwd_features_kernel", flops, 2 * b * n * k * c, hbm, l2, progs, waves(progs))
            )
    return out


def bmm_costs(pass_: str, shape: dict, dtype: str, need: dict | None = None) -> list[dict]:
    """``torch.bmm`` of the two ``(B, C, H*W)`` maps, the correlation GEMM alone on cuBLAS (modelled
    with 128x256 tiles, its usual Hopper choice for large GEMMs); forward only."""
    if pass_ != "fwd":
        raise NotModelled("correlation_gemm: forward only (it is the GEMM the fused forward is compared with)")
    b, c, h, w = shape["B"], shape["C"], shape["H"], shape["W"]
    s = t = h * w
    e = ELEMENT_BYTES[dtype]
    progs = b * triton.cdiv(s, 128) * triton.cdiv(t, 256)
    flops = 2 * b * s * t * c
    hbm = b * (s + t) * c * e + b * s * t * e
    return [kernel("cublas_bmm", flops, flops, hbm, progs * (128 + 256) * c * e, progs, waves(progs))]


def costs(op: str, pass_: str, shape: dict, dtype: str, need: dict | None = None) -> list[dict]:
    """The launches of ``op`` (``OPS`` here, ``OAC_OPS`` through ``perf/roofline_oac.py``) for one
    pass (``"fwd"``, ``"bwd"``, ``"fwd+bwd"``); raises :class:`NotModelled` when it cannot.

    ``shape``: ``B, C, O, H, W`` (square maps, as perf/op_specs.py makes them); ``dtype``: ``"tf32"``,
    ``"fp32"`` (ieee) or ``"bf16"``; ``need``: which gradients the backward computes (the
    correlation: ``source``/``target``; the OAC family: ``weight``/``bias``/``corr``/``source``/
    ``target``; default: what the model needs with a frozen backbone).
    """
    if op == "correlation":
        return correlation_costs(pass_, shape, dtype, need)
    if op == "correlation_gemm":
        return bmm_costs(pass_, shape, dtype, need)
    if op in OAC_OPS:
        if importlib.util.find_spec("perf.roofline_oac") is None:
            raise NotModelled(f"{op}: perf/roofline_oac.py does not exist yet")
        oac = importlib.import_module("perf.roofline_oac")
        need = {"weight": True, "bias": True, "corr": False, "source": False, "target": False, **(need or {})}
        passes = ("fwd", "bwd") if pass_ == "fwd+bwd" else (pass_,)
        return [entry for p in passes for entry in oac.costs(op, p, shape, dtype, need)]
    raise NotModelled(f"{op}: no roofline model")


# ------------------------------------------------------------------------------------------------
# Predictions
# ------------------------------------------------------------------------------------------------


def predict(entry: dict, gpu: GPU, dtype: str) -> tuple[float, str]:
    """``(seconds, bound)`` of one launch: the largest of compute, HBM and L2 time, times the load
    imbalance; ``bound`` names the term that won."""
    terms = {
        "compute": entry["flops"] / gpu.peak(dtype, entry.get("tensor", True)),
        "HBM": entry["hbm_bytes"] / gpu.hbm,
        "L2": entry["l2_bytes"] / gpu.l2,
    }
    bound = max(terms, key=terms.get)
    return terms[bound] * entry.get("max_over_mean", 1.0), bound


def predict_op(op: str, pass_: str, shape: dict, dtype: str, gpu: GPU = H100, need: dict | None = None) -> float:
    """Predicted seconds of one op and pass (the sum of its launches); raises :class:`NotModelled`."""
    return sum(predict(e, gpu, dtype)[0] for e in costs(op, pass_, shape, dtype, need))


def summarise(entries: list[dict], gpu: GPU, dtype: str) -> tuple[float, str]:
    """``(seconds, bound)`` of a list of launches: the total and the bound of the longest launch."""
    timed = [predict(e, gpu, dtype) for e in entries]
    longest = max(timed, key=lambda tb: tb[0])
    return sum(t for t, _ in timed), longest[1]


def merge_by_name(entries: list[dict]) -> list[dict]:
    """Launches of the same kernel added up (the forward's two passes, the two prep calls)."""
    merged: dict[str, dict] = {}
    for e in entries:
        m = merged.setdefault(
            e["name"],
            {**e, "flops": 0.0, "useful_flops": 0.0, "hbm_bytes": 0.0, "l2_bytes": 0.0, "programs": 0, "launches": 0},
        )
        for key in ("flops", "useful_flops", "hbm_bytes", "l2_bytes", "programs"):
            m[key] += e[key]
        m["launches"] += 1
    return list(merged.values())


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

#: The table's cases: (B, H=W) pairs, the paper's first.
CASES = ((32, 15), (8, 60))


def _fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.1f}" if us < 100 else f"{us:.0f}"


def table(cases, dtypes, ops, passes, per_kernel: bool, channels: int = 1024, out_channels: int = 128) -> str:
    from perf import _harness as H

    rows = []
    for b, hw in cases:
        shape = {"B": b, "C": channels, "O": out_channels, "H": hw, "W": hw}
        for dtype in dtypes:
            for op in ops:
                for pass_ in passes:
                    label = f"B{b} {hw}x{hw}"
                    try:
                        entries = costs(op, pass_, shape, dtype)
                    except NotModelled as exc:
                        if "forward only" not in str(exc):
                            rows.append([label, dtype, op, pass_, "(all)", "n/a", "", "", "", "", "", ""])
                        continue
                    except Exception as exc:  # perf/roofline_oac.py failing must not hide the other rows
                        error = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
                        rows.append([label, dtype, op, pass_, "(all)", error, "", "", "", "", "", ""])
                        continue
                    listed = [(e["name"], [e]) for e in merge_by_name(entries)] if per_kernel else []
                    for name, group in [*listed, ("(all)", entries)]:
                        h100, bound100 = summarise(group, H100, dtype)
                        h200, bound200 = summarise(group, H200, dtype)
                        flops = sum(e["flops"] for e in group)
                        useful = sum(e["useful_flops"] for e in group)
                        rows.append(
                            [
                                label,
                                dtype,
                                op,
                                pass_,
                                name,
                                f"{flops / 1e9:.1f}",
                                f"{useful / flops:.0%}" if flops else "-",
                                f"{sum(e['hbm_bytes'] for e in group) / 1e6:.0f}",
                                f"{sum(e['l2_bytes'] for e in group) / 1e6:.0f}",
                                f"{_fmt_us(h100)} ({bound100})",
                                f"{_fmt_us(h200)} ({bound200})",
                                str(sum(e["programs"] for e in group)),
                            ]
                        )
    headers = [
        "shape",
        "dtype",
        "op",
        "pass",
        "kernel",
        "GFLOP",
        "useful",
        "HBM MB",
        "L2 MB",
        "H100 us",
        "H200 us",
        "programs",
    ]
    return H.format_table(headers, rows)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", help="with --hw: B values (default: B=32 at 15x15 and B=8 at 60x60)")
    p.add_argument("--hw", type=int, nargs="+", help="H=W values")
    p.add_argument("--channels", type=int, default=1024)
    p.add_argument("--dtypes", nargs="+", default=["tf32", "bf16"], choices=list(ELEMENT_BYTES))
    p.add_argument("--ops", nargs="+", default=["correlation", "correlation_gemm", *OAC_OPS], choices=[*OPS, *OAC_OPS])
    p.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "bwd", "fwd+bwd"])
    p.add_argument("--kernels", action="store_true", help="one row per kernel, then the op's total")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = CASES
    if args.hw:
        cases = tuple((b, hw) for hw in args.hw for b in (args.batch or [32]))
    print(
        f"roofline: H100 SXM (495/990 TFLOP/s tf32/bf16, 3.35 TB/s) and H200 (4.8 TB/s); "
        f"L2 {L2_BANDWIDTH / 1e12:g} TB/s assumed; fwd+bwd: the weight and bias gradients of the OAC family "
        "(frozen backbone), both feature-map gradients of the correlation; NCHW maps (copied to channels-last)"
    )
    print(table(cases, args.dtypes, args.ops, args.passes, args.kernels, args.channels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
