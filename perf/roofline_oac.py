"""The roofline model of the OAC family's kernel launches, from the launchers' real tiling.

:func:`costs` gives, for ``a2net.ops.correlation_oac`` (the fused op) or
``a2net.ops.offset_aware_correlation``, one dict per kernel launch of a pass, with the tiles the
launchers pick (:func:`a2net.kernels.correlation_oac.forward_tiling`,
:func:`a2net.kernels.offset_aware_correlation.oac_tiling`, ``weight_tiling``, ``weight_schedule``,
...; no block size is repeated here):

* ``flops``: executed (tensor-core products of the tiles as launched: padding of partial tiles,
  the zeros of the Toeplitz band, the recomputed correlation of the backward);
* ``useful_flops``: what the math needs (a multiply-add counts 2);
* ``hbm_bytes``: compulsory traffic with device memory: every input read once, every output
  written once, except the feature maps when one batch element's maps, times the batch elements in
  flight, do not fit half the L2 (then the source map is read once per target tile);
* ``l2_bytes``: operand bytes all programs load through L2 (a tile read by many programs counts
  every time);
* ``programs``; ``max_over_mean``: the busiest SM's work over the mean, programs handed to
  :data:`SMS` SMs in launch order, one 8-warp program per SM at a time (wave quantisation, and the
  chunk lengths of the weight-gradient schedules);
* ``tensor``: whether the FLOPs run on tensor cores (elementwise kernels and copies: False).

``schedule_max_over_mean`` (weight-gradient kernels): the longest program over the mean program,
the balance criterion of the schedule (at most 1.25 by construction).

``perf/roofline.py`` turns these into predicted times on H100 / H200. Run standalone, this module
prints the paper's shape (B=32, C=1024, O=128, 15x15) and 60x60 at B=8, in tf32 and bf16::

    python perf/roofline_oac.py [--batch 32 --hw 15 ...] [--dtypes tf32 bf16]
"""

from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch
import triton

from a2net.kernels import correlation as corr_kernels
from a2net.kernels import correlation_oac as fused
from a2net.kernels import offset_aware_correlation as oac

ELEMENT_BYTES = {"tf32": 4, "fp32": 4, "bf16": 2}
TORCH_DTYPES = {"tf32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}
SMS = 132  # H100 SXM and H200
ARCH = 90  # their compute capability: the tiles the launchers pick there
L2_SIZE = 50e6
OPS = ("correlation_oac", "offset_aware_correlation")
#: What the model's backward needs with a frozen backbone; ``channels_last``: feature maps handed
#: over channels-last (the model's), else the launchers copy them.
DEFAULT_NEED = {"weight": True, "bias": True, "corr": False, "source": False, "target": False, "channels_last": False}


def launch(name, flops, useful_flops, hbm_bytes, l2_bytes, programs, works=None, tensor=True, **extra) -> dict:
    """One launch; ``works``: each program's work (default equal), for ``max_over_mean``."""
    works = [1.0] * int(programs) if works is None else list(works)
    return {
        "name": name,
        "flops": float(flops),
        "useful_flops": float(useful_flops),
        "hbm_bytes": float(hbm_bytes),
        "l2_bytes": float(l2_bytes),
        "programs": int(programs),
        "max_over_mean": busiest_sm(works),
        "tensor": tensor,
        **extra,
    }


def busiest_sm(works: list, slots: int = SMS) -> float:
    """The most loaded of ``slots`` SMs over the mean when programs of these works are handed out in
    launch order to whichever SM frees first (as the block scheduler does)."""
    total = sum(works)
    if not works or total <= 0:
        return 1.0
    finish = [0.0] * min(slots, len(works))
    heapq.heapify(finish)
    for w in works:
        heapq.heappush(finish, heapq.heappop(finish) + w)
    return max(finish) / (total / slots)


def _sizes(shape: dict) -> tuple[int, int, int, int]:
    """``(Hs, Ws, Ht, Wt)`` from ``Hs, Ws, Ht, Wt`` or square ``H, W`` (both maps)."""
    if "Hs" in shape:
        return shape["Hs"], shape["Ws"], shape["Ht"], shape["Wt"]
    return shape["H"], shape["W"], shape["H"], shape["W"]


def _row_pairs(ht: int, hs: int, rt: int, rs: int) -> int:
    """Relative rows the OAC loop visits, summed over (target row block, source row block)."""
    return sum(min(ht - yt0, rt) + min(hs - ys0, rs) - 1 for yt0 in range(0, ht, rt) for ys0 in range(0, hs, rs))


def _feature_reads(b: int, c: int, s: int, t: int, e: int, tiles: int) -> float:
    """HBM bytes of the two maps. The target tiles of one batch element run side by side and sweep
    the same source map, so it is read once when it fits half the L2; else once per wave of them."""
    per_batch = (s + t) * c * e
    waves = 1 if per_batch <= L2_SIZE / 2 else triton.cdiv(tiles, min(tiles, SMS))
    return b * (t * c * e + waves * s * c * e)


def torch_copy(name: str, hbm_bytes: float) -> dict:
    """A copy done by PyTorch (its kernels spread over the whole GPU): bandwidth only."""
    entry = launch(name, 0, 0, hbm_bytes, hbm_bytes, 1, tensor=False)
    entry["max_over_mean"] = 1.0
    return entry


def _copies(b: int, c: int, s: int, t: int, e: int, channels_last: bool) -> list[dict]:
    """The forward's one pass over each map (the correlation's prep kernel): the inverse feature
    norms, and the channels-last copy of a map handed over NCHW, written in the same pass."""
    out = []
    for n in (s, t):
        copy = 0 if channels_last else b * c * n * e
        hbm = b * c * n * e + copy + b * n * 4
        progs = b * triton.cdiv(n, corr_kernels.NORM_BLOCK_N)
        out.append(launch("correlation_fwd_prep_kernel", 2 * b * c * n, 2 * b * c * n, hbm, hbm, progs, tensor=False))
    return out


def _backward_copies(b: int, c: int, s: int, t: int, e: int, channels_last: bool) -> list[dict]:
    """A backward kernel that reads the feature maps gets channels-last copies of NCHW ones
    (PyTorch copies, made by its launcher)."""
    return [] if channels_last else [torch_copy("channels_last_copy", 2 * b * c * (s + t) * e)]


def _padded_weight(o: int, sizes: tuple, tiling, e: int) -> dict:
    hs, ws, ht, wt = sizes
    rows = hs + ht - 1 + tiling.rt + tiling.rs - 2
    cols = (triton.cdiv(ws, tiling.bx) + triton.cdiv(wt, tiling.bx)) * tiling.bx
    o_pad = triton.cdiv(o, tiling.block_o) * tiling.block_o
    return torch_copy("padded_weight", (rows * cols * o_pad + o * (hs + ht - 1) * (ws + wt - 1)) * e)


def _weight_grad(b: int, o: int, sizes: tuple, e: int, tiling, rt: int, recompute: dict | None, corr_bytes: float):
    """The dW kernel of a schedule (standalone, or recomputing with ``recompute`` = {c, c_pad,
    feature_hbm}), the padded gradient copy and the chunk reduction."""
    hs, ws, ht, wt = sizes
    bx, bo = tiling.bx, tiling.block_o
    n_o = triton.cdiv(o, bo)
    n_t = rt * bx
    schedule = oac.weight_schedule(b, sizes, bx, rt, oac.GPU_WEIGHT_PROGRAMS)  # the GPU's, also under the interpreter
    counts = schedule.chunks[:, 2].tolist()
    wp = triton.cdiv(wt, bx) * bx
    grad_copy = b * o * ht * (wt + wp) * e
    out = [torch_copy("padded_target_rows", grad_copy)]
    partial = schedule.n_chunks * o * 2 * bx * 4
    useful = 2 * b * o * hs * ws * ht * wt
    item_flops = 4 * bo * n_t * bx  # two [BO, N_T] x [N_T, BX] products
    item_l2 = bo * n_t * e  # the gradient tile
    if recompute is None:
        name, hbm = "offset_aware_correlation_bwd_weight_kernel", corr_bytes + b * o * ht * wp * e + partial
        item_l2 += n_t * bx * e
    else:
        name = "correlation_oac_bwd_weight_kernel"
        item_flops += 2 * bx * bx * recompute["c_pad"]
        useful += 2 * b * hs * ws * ht * wt * recompute["c"]
        item_l2 += 2 * bx * recompute["c_pad"] * e + bx * 4
        hbm = recompute["feature_hbm"] + b * o * ht * wp * e + b * hs * triton.cdiv(ws, bx) * bx * 4 + partial
    out.append(
        launch(
            name,
            schedule.items * item_flops * n_o,
            useful,
            hbm,
            schedule.items * item_l2 * n_o,
            schedule.n_chunks * n_o,
            [n for n in counts for _ in range(n_o)],
            schedule_max_over_mean=schedule.max_over_mean,
            chunk_items=schedule.chunk_items,
        )
    )
    dw = o * (hs + ht - 1) * (ws + wt - 1) * e
    progs = (hs + ht - 1) * triton.cdiv(o, oac.WEIGHT_REDUCE_BLOCK_O)
    out.append(launch("offset_weight_reduce_kernel", partial / 4, 0, partial + dw, partial + dw, progs, tensor=False))
    return out


def _bias_grad(b: int, o: int, t: int, e: int) -> list[dict]:
    grad = b * o * t * e
    return [
        launch("offset_aware_correlation_bwd_bias_kernel", b * o * t, b * o * t, grad, grad, b, tensor=False),
        launch("offset_aware_correlation_bwd_reduce_kernel", b * o, b * o, b * o * 4, b * o * 4, 1, tensor=False),
    ]


def _transpose_flops(tiling, sizes: tuple, o_pad: int, kc: int) -> tuple[float, float]:
    """``(flops, l2 bytes / e)`` of the ``P = W^T g`` products of one target-tile program (all its
    source tiles): per relative row and chunk, ``[N_T, O] x [O, KC]``, gradient and weight tiles."""
    hs, ws, ht, wt = sizes
    bx, n_t = tiling.bx, tiling.targets
    kc = min(kc, 2 * bx)
    steps = _row_pairs(ht, hs, tiling.rt, tiling.rs) * triton.cdiv(ws, bx) * (2 * bx // kc)
    n_tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, bx)
    return steps * 2 * n_t * kc * o_pad / n_tiles, steps * (n_t + kc) * o_pad / n_tiles


def fused_costs(pass_: str, shape: dict, dtype: str, need: dict) -> list[dict]:
    """Launches of ``a2net.ops.correlation_oac`` (feature normalisation on)."""
    b, c, o = shape["B"], shape["C"], shape["O"]
    sizes = hs, ws, ht, wt = _sizes(shape)
    s, t = hs * ws, ht * wt
    e = ELEMENT_BYTES[dtype]
    tdtype = TORCH_DTYPES[dtype]
    c_pad = triton.cdiv(c, fused.BLOCK_C) * fused.BLOCK_C
    save = need["weight"] and fused.saves_correlation(sizes, tdtype, True)
    out = []
    if pass_ == "fwd":
        tiling = fused.forward_tiling(ws, wt, o, tdtype, save, ARCH)
        bx, n_t, m_s, bo = tiling.bx, tiling.targets, tiling.sources, tiling.block_o
        n_o = triton.cdiv(o, bo)
        tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, bx)
        n_sb = triton.cdiv(hs, tiling.rs) * triton.cdiv(ws, bx)
        programs = b * tiles * n_o
        oac_steps = _row_pairs(ht, hs, tiling.rt, tiling.rs) * triton.cdiv(ws, bx) * triton.cdiv(wt, bx)
        flops = programs * n_sb * 2 * n_t * m_s * c_pad + b * n_o * oac_steps * 2 * n_t * 2 * bx * bo
        useful = 2 * b * s * t * (c + o)
        saved = b * s * ht * fused.saved_correlation_shape(1, sizes)[3] * e if save else 0
        hbm = _feature_reads(b, c, s, t, e, tiles) + b * o * t * e + b * (s + 2 * t) * 4 + saved
        operands = programs * n_sb * (n_t + m_s) * c_pad * e
        weights = b * n_o * oac_steps * 2 * bx * bo * e
        out += _copies(b, c, s, t, e, need["channels_last"])
        out.append(_padded_weight(o, sizes, tiling, e))
        out.append(
            launch(
                "correlation_oac_fwd_kernel",
                flops,
                useful,
                hbm,
                operands + weights,
                programs,
                tiles=f"{n_t}x{m_s} (BX {bx}, RT {tiling.rt}, RS {tiling.rs}, BO {bo})",
                operand_intensity=flops / (operands + weights),
                correlation_intensity=2 * n_t * m_s / ((n_t + m_s) * e),
            )
        )
        return out
    if need["weight"]:
        if save:
            tiling = oac.weight_tiling(ws, wt, o, tdtype)
            corr_bytes = b * s * ht * fused.saved_correlation_shape(1, sizes)[3] * e
            out += _weight_grad(b, o, sizes, e, tiling, tiling.rt, None, corr_bytes)
        else:
            tiling = fused.weight_tiling(o)
            tiles = ht * triton.cdiv(wt, tiling.bx)
            recompute = {"c": c, "c_pad": c_pad, "feature_hbm": _feature_reads(b, c, s, t, e, tiles)}
            out += _backward_copies(b, c, s, t, e, need["channels_last"])
            out += _weight_grad(b, o, sizes, e, tiling, 1, recompute, 0)
    if need["bias"]:
        out += _bias_grad(b, o, t, e)
    if need["source"] or need["target"]:
        tiling = oac.oac_tiling(ws, wt, o)
        bx, n_t, m_s = tiling.bx, tiling.targets, tiling.sources
        o_pad = triton.cdiv(o, tiling.block_o) * tiling.block_o
        tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, bx)
        n_sb = triton.cdiv(hs, tiling.rs) * triton.cdiv(ws, bx)
        kc = fused.correlation_oac_bwd_corr_kernel.all_configs[0].kwargs["OAC_CHUNK"]
        p_flops, p_l2 = _transpose_flops(tiling, sizes, o_pad, kc)
        programs = b * tiles
        flops = programs * (n_sb * 2 * n_t * m_s * c_pad + p_flops)
        out += _backward_copies(b, c, s, t, e, need["channels_last"])
        out.append(torch_copy("channels_last_grad", b * o * t * e + b * t * o_pad * e))
        out.append(_padded_weight(o, sizes, tiling, e))
        hbm = _feature_reads(b, c, s, t, e, tiles) + b * s * t * e + b * t * o_pad * e + 2 * b * o * t * e
        l2 = programs * (n_sb * (n_t + m_s) * c_pad + p_l2) * e
        out.append(launch("correlation_oac_bwd_corr_kernel", flops, 2 * b * s * t * (c + o), hbm, l2, programs))
        from perf import roofline  # the feature-map GEMMs are the correlation's (perf/roofline.py)

        gemms = roofline.correlation_costs("bwd", shape, dtype, {"source": need["source"], "target": need["target"]})
        out += [g for g in gemms if g["name"] != "correlation_bwd_prep_kernel"]
    return out


def oac_costs(pass_: str, shape: dict, dtype: str, need: dict) -> list[dict]:
    """Launches of ``a2net.ops.offset_aware_correlation`` on a contiguous ``(B, S, Ht, Wt)``
    correlation."""
    b, o = shape["B"], shape["O"]
    sizes = hs, ws, ht, wt = _sizes(shape)
    s, t = hs * ws, ht * wt
    e = ELEMENT_BYTES[dtype]
    corr_bytes = b * s * t * e
    out = []
    if pass_ == "fwd":
        tiling = oac.oac_tiling(ws, wt, o)
        bx, n_t, m_s, bo = tiling.bx, tiling.targets, tiling.sources, tiling.block_o
        n_o = triton.cdiv(o, bo)
        tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, bx)
        n_sb = triton.cdiv(hs, tiling.rs) * triton.cdiv(ws, bx)
        programs = b * tiles * n_o
        oac_steps = _row_pairs(ht, hs, tiling.rt, tiling.rs) * triton.cdiv(ws, bx) * triton.cdiv(wt, bx)
        flops = b * n_o * oac_steps * 2 * n_t * 2 * bx * bo
        l2 = programs * n_sb * n_t * m_s * e + b * n_o * oac_steps * 2 * bx * bo * e
        out.append(_padded_weight(o, sizes, tiling, e))
        out.append(
            launch(
                "offset_aware_correlation_fwd_kernel",
                flops,
                2 * b * o * s * t,
                corr_bytes + b * o * t * e,
                l2,
                programs,
                tiles=f"{n_t}x{m_s} (BX {bx}, RT {tiling.rt}, RS {tiling.rs}, BO {bo})",
            )
        )
        return out
    if need["weight"]:
        tiling = oac.weight_tiling(ws, wt, o, TORCH_DTYPES[dtype], padded=False)
        out += _weight_grad(b, o, sizes, e, tiling, tiling.rt, None, corr_bytes)
    if need["bias"]:
        out += _bias_grad(b, o, t, e)
    if need["corr"]:
        tiling = oac.oac_tiling(ws, wt, o)
        o_pad = triton.cdiv(o, tiling.block_o) * tiling.block_o
        tiles = triton.cdiv(ht, tiling.rt) * triton.cdiv(wt, tiling.bx)
        kc = oac.offset_aware_correlation_bwd_corr_kernel.all_configs[0].kwargs["OAC_CHUNK"]
        p_flops, p_l2 = _transpose_flops(tiling, sizes, o_pad, kc)
        out.append(torch_copy("channels_last_grad", b * o * t * e + b * t * o_pad * e))
        out.append(_padded_weight(o, sizes, tiling, e))
        hbm = corr_bytes + b * t * o_pad * e
        out.append(
            launch(
                "offset_aware_correlation_bwd_corr_kernel",
                b * tiles * p_flops,
                2 * b * o * s * t,
                hbm,
                b * tiles * p_l2 * e,
                b * tiles,
            )
        )
    return out


def costs(op: str, pass_: str, shape: dict, dtype: str, need: dict) -> list[dict]:
    """One dict per kernel launch of ``op`` (``"correlation_oac"`` or ``"offset_aware_correlation"``)
    for ``pass_`` (``"fwd"`` or ``"bwd"``).

    Args:
        shape: ``B, C, O`` and ``Hs, Ws, Ht, Wt`` (or ``H, W`` for two ``H x W`` maps).
        dtype: ``"tf32"``, ``"fp32"`` or ``"bf16"``.
        need: the gradients the backward computes (``weight``, ``bias``, ``corr``, ``source``,
            ``target``) and ``channels_last`` (feature maps handed over channels-last); missing
            keys take :data:`DEFAULT_NEED`.
    Returns:
        dicts with ``name, flops, useful_flops, hbm_bytes, l2_bytes, programs, max_over_mean,
        tensor`` (and for the main kernels ``tiles``, intensities, ``schedule_max_over_mean``).
    """
    if pass_ not in ("fwd", "bwd"):
        raise ValueError(f"pass_: expected 'fwd' or 'bwd', got {pass_!r}")
    if dtype not in ELEMENT_BYTES:
        raise ValueError(f"dtype: expected one of {list(ELEMENT_BYTES)}, got {dtype!r}")
    need = {**DEFAULT_NEED, **(need or {})}
    if op == "correlation_oac":
        return fused_costs(pass_, shape, dtype, need)
    if op == "offset_aware_correlation":
        return oac_costs(pass_, shape, dtype, need)
    raise ValueError(f"op: expected one of {list(OPS)}, got {op!r}")


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

CASES = ((32, 15), (8, 60))  # (B, H=W): the paper's shape, and 60x60 maps


def rows(cases, dtypes, channels: int = 1024, out_channels: int = 128) -> list[list[str]]:
    out = []
    for b, hw in cases:
        shape = {"B": b, "C": channels, "O": out_channels, "H": hw, "W": hw}
        for dtype in dtypes:
            for op in OPS:
                for pass_ in ("fwd", "bwd"):
                    for e in costs(op, pass_, shape, dtype, {}):
                        if not e["tensor"]:
                            continue
                        out.append(
                            [
                                f"B{b} {hw}x{hw}",
                                dtype,
                                op,
                                pass_,
                                e["name"].removesuffix("_kernel"),
                                e.get("tiles", ""),
                                str(e["programs"]),
                                f"{e['flops'] / 1e9:.2f}",
                                f"{e['useful_flops'] / e['flops']:.0%}",
                                f"{e['hbm_bytes'] / 1e6:.1f}",
                                f"{e['l2_bytes'] / 1e6:.1f}",
                                f"{e['flops'] / e['l2_bytes']:.1f}",
                                f"{e['correlation_intensity']:.1f}" if "correlation_intensity" in e else "",
                                f"{e['max_over_mean']:.2f}",
                                f"{e['schedule_max_over_mean']:.2f}" if "schedule_max_over_mean" in e else "",
                            ]
                        )
    return out


def format_table(headers: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", help="with --hw: B values (default B=32 at 15x15, B=8 at 60x60)")
    p.add_argument("--hw", type=int, nargs="+", help="H=W of both maps")
    p.add_argument("--channels", type=int, default=1024)
    p.add_argument("--out-channels", type=int, default=128)
    p.add_argument("--dtypes", nargs="+", default=["tf32", "bf16"], choices=list(ELEMENT_BYTES))
    args = p.parse_args(argv)
    cases = tuple((b, hw) for hw in args.hw for b in (args.batch or [32])) if args.hw else CASES
    headers = [
        "shape",
        "dtype",
        "op",
        "pass",
        "kernel",
        "tiles",
        "programs",
        "GFLOP",
        "useful",
        "HBM MB",
        "L2 MB",
        "FLOP/L2 B",
        "corr tile",
        "busiest SM",
        "max/mean",
    ]
    print(
        f"OAC family, tensor-core launches (C={args.channels}, O={args.out_channels}; backward: weight and bias "
        "gradients, frozen backbone). FLOP/L2 B: executed FLOPs per operand byte loaded by the programs; corr "
        "tile: the correlation tile's own 2*N_T*M_S/((N_T+M_S)*e); busiest SM: the most loaded SM over the "
        "mean; max/mean: the longest program over the mean program of a weight-gradient schedule"
    )
    print(format_table(headers, rows(cases, args.dtypes, args.channels, args.out_channels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
