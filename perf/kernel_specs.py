"""Ahead-of-time compilation specs of every Triton kernel, for ``perf/kernel_report.py``.

One spec per (kernel, dtype, map size, config): the raw JIT function, the Triton type of each
runtime argument and the value of each constexpr, as the launchers in ``kernels/`` would pass
them for contiguous inputs at the paper's shapes (B=32, C=1024, O=128, 15x15 maps) and at larger
maps, in fp32 (tf32 dots) and bf16. Specs are compiled for a GPU, not for the interpreter, so
``DOT_FP32``/``UPCAST``/``OAC_FP32`` are off whatever ``TRITON_INTERPRET`` says.

:data:`SPECS` maps each op (named as in :mod:`a2net.ops`) to a function
``(all_configs: bool = False) -> list[dict]``: the default (first) config of every autotuned
kernel, or all of them. A lister that also takes ``arch`` (a compute capability such as 90) lists
that architecture's specs (the fused forward's tiles depend on it; the report asks for each
architecture it compiles). Each dict has ``name`` (``<kernel>[<dtype>,<shape>,cfg<i>]``), ``fn``,
``signature`` (runtime argument -> type such as ``"*fp32"`` or ``"i32"``), ``constexprs``,
``num_warps``, ``num_stages`` and ``contraction``.
"""

from __future__ import annotations

import torch

from a2net.kernels import attention_pool as attention_kernels
from a2net.kernels import correlation as corr_kernels
from a2net.kernels import correlation_oac as fused_kernels
from a2net.kernels import offset_aware_correlation as oac_kernels
from a2net.kernels._common import dot_options
from a2net.kernels._memory import accumulation_dtype

#: Triton's name of each torch dtype, for pointer types (``"*" + name``).
TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
DTYPES = (torch.float32, torch.bfloat16)  # fp32 with tf32 dots, and bf16
BATCH, OAC_CHANNELS = 32, 128  # the paper's batch and OAC output channels


def _spec(
    name: str, fn, types: dict, constexprs: dict, num_warps: int, num_stages: int = 3, contraction: bool = False
) -> dict:
    """A spec dict; ``types`` entries equal to 1 are unit strides, which Triton specialises to the
    constant 1 at run time for contiguous tensors (so they are compiled as constexprs here too);
    ``"i32:16"`` is an integer Triton sees as a multiple of 16 (a row of 1024 channels).
    ``contraction``: a GEMM-like kernel the report holds to its tiling (perf/kernel_report.py)."""
    return {
        "name": name,
        "fn": fn,
        "signature": {k: v for k, v in types.items() if v != 1},
        "constexprs": {**{k: 1 for k, v in types.items() if v == 1}, **constexprs},
        "num_warps": num_warps,
        "num_stages": num_stages,
        "contraction": contraction,
    }


def _config_specs(
    label: str,
    kernel,
    types: dict,
    constexprs: dict,
    all_configs: bool,
    contraction: bool = False,
    configs: list | None = None,
) -> list[dict]:
    """The specs of an autotuned kernel's configs (``configs``, default :func:`_configs`), named
    ``<label>,cfg<i>]`` (``label``: ``"<kernel>[<tags>"``), each with the config's constexprs over
    ``constexprs``."""
    return [
        _spec(
            f"{label},cfg{i}]",
            kernel.fn,
            types,
            {**constexprs, **cfg.kwargs},
            cfg.num_warps,
            cfg.num_stages,
            contraction=contraction,
        )
        for i, cfg in enumerate(_configs(kernel, all_configs) if configs is None else configs)
    ]


def _strides(prefix: str, dims: str, unit: str | None = None, aligned: bool = False) -> dict:
    """Stride arguments ``stride_<prefix><dim>``: ``"i32"`` (``"i32:16"``, a multiple of 16, where
    ``aligned``), except 1 (a unit stride) for the dim ``unit`` (default the last one; ``""`` for none)."""
    unit = dims[-1] if unit is None else unit
    kind = "i32:16" if aligned else "i32"
    return {f"stride_{prefix}{d}": 1 if d == unit else kind for d in dims}


def _configs(kernel, all_configs: bool) -> list:
    """The autotuned kernel's configs: all of them, or the default (first) one."""
    return list(kernel.all_configs if all_configs else kernel.all_configs[:1])


def _pointers(dtype: torch.dtype) -> tuple[str, str]:
    """Pointer types of the input dtype and of its accumulation dtype."""
    return f"*{TRITON_DTYPE[dtype]}", f"*{TRITON_DTYPE[accumulation_dtype(dtype)]}"


def _default_first(kernel, args: dict, all_configs: bool) -> list:
    """The configs a launch with ``args`` can pick (the kernel's own pruning applied): all of them, or
    the first, the default :func:`a2net.kernels._tuning.select_config` runs."""
    configs = kernel.candidates(args)
    return configs if all_configs else configs[:1]


def correlation_specs(all_configs: bool = False) -> list[dict]:
    """:mod:`a2net.kernels.correlation`: the paper's default flags (all on), C=1024, H=W in (15, 30,
    60): the column norm in the tile at 15; above, the GEMM passes of both split designs (the
    launcher picks by the channel count, :func:`a2net.kernels.correlation.recompute_matches`:
    partials + final when recomputing, scaled + the rescale kernel at C=1024); NCHW feature maps
    (copied to channels-last by the prep kernel); the backward's prep, operand and GEMM kernels
    (the GEMM is the same code for either map)."""
    k = corr_kernels
    specs = []
    for dtype in DTYPES:
        ty, acc = _pointers(dtype)
        dot = {**dot_options(dtype, "tf32"), "DOT_FP32": False}
        probe = {"p_src": torch.empty((), dtype=dtype), "p_e": torch.empty((), dtype=dtype)}
        for size in (15, 30, 60):
            tag = f"{TRITON_DTYPE[dtype]},H{size}"
            s = size * size
            block_s = k.fused_block_s(s) or k.SPLIT_BLOCK_S
            specs.append(
                _spec(
                    f"correlation_fwd_prep[{tag}]",
                    k.correlation_fwd_prep_kernel,
                    {
                        "p_x": ty,
                        "p_inv": acc,
                        "p_rows": ty,
                        "N": "i32",
                        "C": "i32:16",
                        **_strides("x", "bcn"),
                        "eps": "fp32",
                    },
                    {"NORM": True, "COPY": True, "BLOCK_N": k.NORM_BLOCK_N, "BLOCK_C": k.NORM_BLOCK_C, "FP64": False},
                    k.NORM_WARPS,
                )
            )
            fwd_types = {
                "p_src": ty,
                "p_tgt": ty,
                "p_inv_src": acc,
                "p_inv_tgt": acc,
                "p_out": ty,
                "p_sumsq": acc,
                "p_inv_match": acc,
                "S": "i32",
                "T": "i32",
                "C": "i32:16",
                "stride_sb": "i32:16",
                "stride_ss": "i32:16",
                "stride_tb": "i32:16",
                "stride_tt": "i32:16",
                "eps": "fp32",
            }
            # every pass a launch at this size can take: few channels recompute, many rescale
            modes = [*k.match_mode(True, s, 1, dtype, "tf32"), *k.match_mode(True, s, 1 << 20, dtype, "tf32")]
            for mode in dict.fromkeys(modes):
                flags = {"NORM_FEAT": True, "RELU": True, "MATCH": mode, "BLOCK_S": block_s, "EVEN_C": True}
                configs = _default_first(k.correlation_fwd_kernel, {**probe, "BLOCK_S": block_s}, all_configs)
                specs += _config_specs(
                    f"correlation_fwd[{tag},{mode}",
                    k.correlation_fwd_kernel,
                    fwd_types,
                    {**flags, **dot},
                    all_configs,
                    contraction=True,
                    configs=configs,
                )
            if "scaled" in modes:
                specs.append(
                    _spec(
                        f"correlation_normalize_matches[{tag}]",
                        k.correlation_normalize_matches_kernel,
                        {
                            "p_out": ty,
                            "p_sumsq": acc,
                            "p_inv_match": acc,
                            "S": "i32",
                            "T": "i32:16" if s % 16 == 0 else "i32",  # as Triton specialises it (60x60)
                            "block_s": "i32:16",
                            "n_sblocks": "i32",
                            "eps": "fp32",
                        },
                        {"BLOCK_S": min(k.RESCALE_BLOCK_S, block_s), "BLOCK_T": k.RESCALE_BLOCK_T, "FP64": False},
                        k.RESCALE_WARPS,
                    )
                )
            specs.append(
                _spec(
                    f"correlation_bwd_prep[{tag}]",
                    k.correlation_bwd_prep_kernel,
                    {
                        "p_grad": ty,
                        "p_out": ty,
                        "p_inv_match": acc,
                        "p_dc": ty,
                        "p_dct": ty,
                        "p_dot_src": acc,
                        "p_dot_tgt": acc,
                        "S": "i32",
                        "T": "i32",
                        "S_pad": "i32:16",
                        "T_pad": "i32:16",
                        **_strides("g", "bst"),
                    },
                    {
                        "RELU": True,
                        "NORM_MATCH": True,
                        "NORM_FEAT": True,
                        "NEED_SRC": True,
                        "NEED_TGT": True,
                        "BLOCK_S": k.PREP_BLOCK_S,
                        "BLOCK_T": k.PREP_BLOCK_T,
                        "FP64": False,
                    },
                    k.PREP_WARPS,
                )
            )
            specs.append(
                _spec(
                    f"correlation_bwd_operand[{tag}]",
                    k.correlation_bwd_operand_kernel,
                    {
                        "p_x": ty,
                        "p_scale": acc,
                        "p_rows": ty,
                        "R": "i32",
                        "K": "i32",
                        "K_pad": "i32:16",
                        **_strides("x", "brk"),
                    },
                    {"SCALE": True, "BLOCK_R": k.OPERAND_BLOCK_R, "BLOCK_K": k.OPERAND_BLOCK_K},
                    k.OPERAND_WARPS,
                )
            )
            bwd_types = {
                "p_e": ty,
                "p_x": ty,
                "p_y": ty,
                "p_y_scale": acc,
                "p_dot": acc,
                "p_grad": ty,
                "N": "i32",
                "C": "i32:16",
                "K_pad": "i32:16",
                "n_dot": "i32",
                **_strides("y", "bcn"),
            }
            specs += _config_specs(
                f"correlation_bwd_features[{tag}",
                k.correlation_bwd_features_kernel,
                bwd_types,
                {"NORM_FEAT": True, **dot},
                all_configs,
                contraction=True,
                configs=_default_first(k.correlation_bwd_features_kernel, probe, all_configs),
            )
    return specs


SIZES = (15, 30, 60)  # H = W of both maps: the paper's 15x15 and the larger images' maps


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous tensor without storage: its strides give the launchers' ``ALIGN`` / ``IDX64``."""
    return torch.empty(shape, dtype=dtype, device="meta")


def _oac_types(ty: str, size: int, dtype: torch.dtype) -> dict:
    """Argument types of the standalone OAC kernels on a contiguous correlation ``(B, S, H, W)``
    (as :func:`a2net.ops.correlation` returns it), and the ``ALIGN`` its rows allow."""
    dims = {name: "i32" for name in ("B", "O", "Hs", "Ws", "Ht", "Wt")}
    corr = _meta(BATCH, size * size, size, size, dtype=dtype)
    return {
        "fwd": {
            "p_corr": ty,
            "p_wpad": ty,
            "p_bias": ty,
            "p_out": ty,
            **dims,
            **_strides("c", "bsyx"),
            "stride_wy": "i32:16",
            "stride_wo": "i32:16",
            "stride_bias": 1,
            **_strides("o", "boyx"),
        },
        "bwd_corr": {
            "p_grad": ty,
            "p_wpad": ty,
            "p_dcorr": ty,
            "B": "i32",
            "O_pad": "i32:16",
            **{name: "i32" for name in ("Hs", "Ws", "Ht", "Wt")},
            "stride_gb": "i32:16",
            "stride_gt": "i32:16",
            "stride_wy": "i32:16",
            "stride_wx": "i32:16",
            **_strides("c", "bsyx"),
        },
        "align": oac_kernels.vector_width(corr),
    }


def _weight_types(ty: str, acc: str, padded: bool) -> dict:
    """Argument types of the dW kernel; ``padded``: the fused op's saved correlation (rows padded
    to whole column blocks), else a contiguous correlation. The gradient's rows are padded in both."""
    strides = "i32:16" if padded else "i32"
    return {
        "p_grad": ty,
        "p_corr": ty,
        "p_sched": "*i32",
        "p_partial": acc,
        **{name: "i32" for name in ("O", "Hs", "Ws", "Ht", "Wt")},
        **_strides("g", "boyx", aligned=True),
        "stride_cb": strides,
        "stride_cs": strides,
        "stride_cy": strides,
        "stride_cx": 1,
        "stride_pc": "i32:16",
    }


def _reduce_spec(name: str, acc: str, ty: str, bx: int) -> dict:
    k = oac_kernels
    types = {
        "p_partial": acc,
        "p_group_chunks": "*i32",
        "p_dweight": ty,
        **{n: "i32" for n in ("O", "Dh", "Dw", "Wt", "n_xt", "n_k")},
        "stride_pc": "i32:16",
    }
    flags = {"BLOCK_O": k.WEIGHT_REDUCE_BLOCK_O, "BX": bx}
    return _spec(name, k.offset_weight_reduce_kernel, types, flags, k.WEIGHT_REDUCE_WARPS)


def offset_aware_correlation_specs(all_configs: bool = False) -> list[dict]:
    """:mod:`a2net.kernels.offset_aware_correlation` at H=W in (15, 30, 60), O=128, B=32, on a
    contiguous correlation ``(B, S, H, W)``: its rows of ``W`` elements are 16-byte aligned only at
    60 (fp32), so ``ALIGN`` is what those strides allow. The contraction kernels' main loops (the
    weight slices of the forward / ``dcorr``, the ``dW`` items) are held to the tiling criteria;
    the ``dW`` kernel on a contiguous correlation (``[...,contiguous,...]``: its correlation tiles
    are masked along the targets, so they load as scalars) is listed without that gate, and gated
    on the zero-padded rows the fused op saves (``[...,padded,...]``)."""
    k = oac_kernels
    specs = []
    for size in SIZES:
        for dtype in DTYPES:
            ty, acc = _pointers(dtype)
            tag = f"{TRITON_DTYPE[dtype]},H{size}"
            types = _oac_types(ty, size, dtype)
            dots = {"UPCAST": False, "INPUT_PRECISION": dot_options(dtype, "tf32")["INPUT_PRECISION"], "IDX64": False}
            tiling = k.oac_tiling(size, size, OAC_CHANNELS).kwargs()
            flags = {"ALIGN": types["align"], **dots, **tiling}
            for name, kernel, kernel_types, kernel_flags in (
                (
                    "offset_aware_correlation_fwd",
                    k.offset_aware_correlation_fwd_kernel,
                    types["fwd"],
                    {"HAS_BIAS": True},
                ),
                (
                    "offset_aware_correlation_bwd_corr",
                    k.offset_aware_correlation_bwd_corr_kernel,
                    types["bwd_corr"],
                    {},
                ),
            ):
                specs += _config_specs(
                    f"{name}[{tag}", kernel, kernel_types, {**flags, **kernel_flags}, all_configs, contraction=True
                )
            for layout, align in (("contiguous", types["align"]), ("padded", 16 // dtype.itemsize)):
                padded = layout == "padded"
                weight = k.weight_tiling(size, size, OAC_CHANNELS, dtype, padded)
                flags = {"CORR_PADDED": padded, "ALIGN": align, **dots, "BLOCK_O": weight.block_o}
                specs += _config_specs(
                    f"offset_aware_correlation_bwd_weight[{tag},{layout}",
                    k.offset_aware_correlation_bwd_weight_kernel,
                    _weight_types(ty, acc, padded),
                    {**flags, "BX": weight.bx, "RT": weight.rt},
                    all_configs,
                    contraction=padded,
                )
            specs.append(_reduce_spec(f"offset_weight_reduce[{tag}]", acc, ty, weight.bx))
            bias_types = {
                "p_grad": ty,
                "p_dbias": acc,
                "O": "i32",
                "T": "i32",
                **_strides("g", "bot"),
                "stride_dn": "i32",
            }
            specs += _config_specs(
                f"offset_aware_correlation_bwd_bias[{tag}",
                k.offset_aware_correlation_bwd_bias_kernel,
                bias_types,
                {},
                all_configs,
            )
            reduce_types = {"p_partial": acc, "p_out": ty, "N": "i32", "n_split": "i32", "stride_pn": "i32"}
            specs += _config_specs(
                f"offset_aware_correlation_bwd_reduce[{tag}",
                k.offset_aware_correlation_bwd_reduce_kernel,
                reduce_types,
                {},
                all_configs,
            )
    return specs


def attention_pool_specs(all_configs: bool = False) -> list[dict]:
    """:mod:`a2net.kernels.attention_pool`, named after the model's attention (C=128 at 9x9) and a
    large map (C=1024 at 60x60); sizes are runtime arguments, so both compile the same code."""
    k = attention_kernels
    specs = []
    for dtype in DTYPES:
        ty, acc = _pointers(dtype)
        strides = {**_strides("l", "bt", ""), **_strides("v", "bct", ""), **_strides("o", "bc", "")}
        fwd_types = {"p_logits": ty, "p_values": ty, "p_out": acc, "p_lse": acc, "C": "i32", "T": "i32", **strides}
        bwd_types = {
            "p_grad": acc,
            "p_logits": ty,
            "p_values": ty,
            "p_out": acc,
            "p_lse": acc,
            "p_dlogits": ty,
            "p_dvalues": ty,
            "C": "i32",
            "T": "i32",
            **_strides("g", "bc", ""),
            **strides,
            **_strides("dl", "bt", ""),
            **_strides("dv", "bct", ""),
        }  #
        kernels = [
            ("attention_pool_fwd", k.attention_pool_fwd_kernel, fwd_types, {}),
            ("attention_pool_bwd", k.attention_pool_bwd_kernel, bwd_types, {"NEED_LOGITS": True, "NEED_VALUES": True}),
        ]
        for shape in ("C128-H9", "C1024-H60"):
            for name, kernel, types, flags in kernels:
                specs += _config_specs(f"{name}[{TRITON_DTYPE[dtype]},{shape}", kernel, types, flags, all_configs)
    return specs


def correlation_oac_specs(all_configs: bool = False, arch: int = 90) -> list[dict]:
    """:mod:`a2net.kernels.correlation_oac` on compute capability ``arch`` (the forward's tiles
    depend on it): C=1024, O=128, B=32, feature normalisation on, H=W in (15, 30, 60),
    channels-last feature maps (the model's; row strides multiples of 16), the
    forward as in training (``SAVE`` where the maps have at most 32x32 positions); the weight
    gradient from the saved correlation (15, 30: the standalone ``dW`` kernel with the target
    scale) and recomputing it (all sizes; the path above 32x32), with their reduction; the
    feature-gradient kernel too (off the default training path)."""
    k = fused_kernels
    oac = oac_kernels
    dims = {name: "i32" for name in ("C", "O", "Hs", "Ws", "Ht", "Wt")}
    maps = {f"stride_{m}{d}": "i32:16" for m in "st" for d in "byx"}
    specs = []
    for dtype in DTYPES:
        ty, acc = _pointers(dtype)
        dot = {**dot_options(dtype, "tf32"), "DOT_FP32": False}
        features = {"ALIGN": 16 // dtype.itemsize, "IDX64": False, "EVEN_C": True, "BLOCK_C": k.BLOCK_C}
        for size in SIZES:
            tag = f"{TRITON_DTYPE[dtype]},H{size}"
            sizes = (size,) * 4
            save = k.saves_correlation(sizes, dtype, True)
            fwd_types = {
                "p_src": ty,
                "p_tgt": ty,
                "p_inv_src": acc,
                "p_inv_tgt": acc,
                "p_wpad": ty,
                "p_bias": ty,
                "p_out": ty,
                "p_inv_match": acc,
                "p_corr": ty,
                **dims,
                **maps,
                "stride_wy": "i32:16",
                "stride_wo": "i32:16",
                "stride_bias": 1,
                **_strides("o", "boyx"),
                "stride_cb": "i32:16",
                "stride_cs": "i32:16",
                "stride_cy": "i32:16",
                "eps": "fp32",
            }
            oac_dot = {"OAC_FP32": False, "OAC_PRECISION": dot["INPUT_PRECISION"]}
            # training (relu(c) saved where the maps allow it), and inference where that differs
            for mode, saving in (("", save), (",inference", False)) if save else (("", False),):
                tiling = k.forward_tiling(size, size, OAC_CHANNELS, dtype, saving, arch)
                flags = {"NORM_FEAT": True, "HAS_BIAS": True, "SAVE": saving, **features, **tiling.kwargs()}
                specs += _config_specs(
                    f"correlation_oac_fwd[{tag}{mode}",
                    k.correlation_oac_fwd_kernel,
                    fwd_types,
                    {**flags, **dot, **oac_dot},
                    all_configs,
                    contraction=True,
                )
            if save:
                weight = oac.weight_tiling(size, size, OAC_CHANNELS, dtype)
                saved = {
                    "CORR_PADDED": True,
                    "UPCAST": False,
                    "INPUT_PRECISION": dot["INPUT_PRECISION"],
                    "ALIGN": 16 // dtype.itemsize,
                    "IDX64": False,
                    "BLOCK_O": weight.block_o,
                    "BX": weight.bx,
                    "RT": weight.rt,
                }
                specs += _config_specs(
                    f"offset_aware_correlation_bwd_weight[{tag},saved",
                    oac.offset_aware_correlation_bwd_weight_kernel,
                    _weight_types(ty, acc, True),
                    {**saved},
                    all_configs,
                    contraction=True,
                )
                specs.append(_reduce_spec(f"offset_weight_reduce[{tag},saved]", acc, ty, weight.bx))
            weight = k.weight_tiling(OAC_CHANNELS)
            weight_types = {
                "p_src": ty,
                "p_tgt": ty,
                "p_sscale": acc,
                "p_grad": ty,
                "p_sched": "*i32",
                "p_partial": acc,
                **dims,
                **maps,
                **_strides("g", "boyx", aligned=True),
                "stride_pc": "i32:16",
            }
            weight_flags = {"NORM_FEAT": True, **features, "BLOCK_O": weight.block_o, "BX": weight.bx}
            specs += _config_specs(
                f"correlation_oac_bwd_weight[{tag}",
                k.correlation_oac_bwd_weight_kernel,
                weight_types,
                {**weight_flags, **dot},
                all_configs,
                contraction=True,
            )
            specs.append(_reduce_spec(f"offset_weight_reduce[{tag},recompute]", acc, ty, weight.bx))
            corr_tiling = oac.oac_tiling(size, size, OAC_CHANNELS)
            corr_types = {
                **{n: t for n, t in fwd_types.items() if not n.startswith(("p_corr", "stride_c", "eps", "stride_wo"))},
                "p_grad": ty,
                "p_dcorr": ty,
                "p_dot_src": acc,
                "p_dot_tgt": acc,
                "O_pad": "i32:16",
                "stride_wx": "i32:16",
                "stride_gb": "i32:16",
                "stride_gt": "i32:16",
            }
            corr_flags = {"NORM_FEAT": True, "HAS_BIAS": True, **features, **corr_tiling.kwargs()}
            specs += _config_specs(
                f"correlation_oac_bwd_corr[{tag}",
                k.correlation_oac_bwd_corr_kernel,
                corr_types,
                {**corr_flags, **dot},
                all_configs,
                contraction=True,
            )
    return specs


#: op -> its spec lister, in the order the report lists them.
SPECS = {
    "correlation": correlation_specs,
    "offset_aware_correlation": offset_aware_correlation_specs,
    "attention_pool": attention_pool_specs,
    "correlation_oac": correlation_oac_specs,
}
