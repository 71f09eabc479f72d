"""How every autotuned kernel picks its config: deterministic, safe, and the same in every process
that sees the same table.

:func:`autotune` wraps a JIT function with its config list (``configs[0]`` is the *default*: the
one the interpreter runs and the kernel report gates). :func:`launch` picks one config per call, in
this order:

1. the interpreter (``TRITON_INTERPRET=1``) or a non-CUDA device: the default;
2. the tuned-config table (``tuned_configs.json``, written by ``perf/autotune.py`` on a GPU), keyed
   by kernel name, GPU arch and :func:`call_key`;
3. the default again when the choice must not depend on timings: the deterministic mode
   (:func:`deterministic`: ``torch.are_deterministic_algorithms_enabled()`` or
   ``A2NET_DETERMINISTIC=1``, so gradients are bit-identical across processes), ``A2NET_AUTOTUNE=0``
   (no search), or a CUDA graph being captured (:func:`capturing`: benchmarking inside a capture
   would record the benchmark runs into the graph) when this process has not searched the key yet;
4. otherwise the fastest config of this process's own search, done once per key: the configs the
   kernel's ``early_config_prune`` keeps, minus those that spill (:func:`spills` compiles each and
   reads the compiled kernel's ``n_spills``), timed with ``triton.testing.do_bench``.

The key (:func:`call_key`) holds the sizes the launcher passes (bucketed to powers of two), the
dtype, and every constexpr argument the configs do not set: ``INPUT_PRECISION`` and the flags. So
a winner measured with tf32 dots is never reused for ieee ones, nor one measured without the match
normalisation for a call with it. ``A2NET_TUNED_CONFIGS=/path/table.json`` reads another table
(tests, trying a freshly tuned table); it is read at the first launch after the path changes.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_FALSE = ("0", "off", "false", "no")
#: False with ``A2NET_AUTOTUNE=0``: the default config of each kernel unless the table has an entry.
SEARCH = os.environ.get("A2NET_AUTOTUNE", "1").strip().lower() not in _FALSE
TABLE_PATH = Path(__file__).with_name("tuned_configs.json")
TABLE_ENV = "A2NET_TUNED_CONFIGS"
DETERMINISTIC_ENV = "A2NET_DETERMINISTIC"


class Tuner:
    """A JIT function and its configs, as :func:`autotune` returns it; launch it with :func:`launch`.

    Attributes:
        fn: the JIT function.
        all_configs: the config list; ``all_configs[0]`` is the default.
        keys: argument names that identify the problem size (added to the key with the launcher's sizes).
        early_config_prune: ``(configs, named_args, **args) -> configs`` or None.
        flags: the constexpr arguments no config sets; their values are part of every key.
        cache: ``(arch, key) -> config`` found by this process's searches.
    """

    def __init__(self, fn, configs: list, key: list[str], early_config_prune=None):
        if not configs:
            raise ValueError("autotune: expected at least one config")
        self.fn = fn
        self.all_configs = list(configs)
        self.keys = list(key)
        self.early_config_prune = early_config_prune
        tuned = {name for config in configs for name in config.kwargs}
        self.flags = frozenset(constexpr_names(fn)) - tuned
        self.cache: dict = {}

    @property
    def configs(self) -> list:
        return self.all_configs

    def candidates(self, args: dict) -> list:
        """The configs the kernel's own pruning keeps for these arguments (never empty; the first
        is the default for this call)."""
        if self.early_config_prune is None:
            return list(self.all_configs)
        return list(self.early_config_prune(self.all_configs, {}, **args)) or self.all_configs[:1]

    def __repr__(self) -> str:
        return f"Tuner({getattr(self.fn, '__name__', self.fn)}, {len(self.all_configs)} configs)"


def constexpr_names(fn) -> list[str]:
    """Names of a JIT (or interpreted) function's ``tl.constexpr`` parameters."""
    while not inspect.isfunction(fn):
        fn = fn.fn
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if "constexpr" in str(p.annotation)]


def autotune(configs: list, key: list[str], prune_configs_by: dict | None = None):
    """Decorator: the JIT function becomes a :class:`Tuner` over ``configs`` (``configs[0]`` the
    default). ``prune_configs_by`` may hold ``early_config_prune`` (Triton's convention)."""
    unknown = set(prune_configs_by or {}) - {"early_config_prune"}
    if unknown:
        raise TypeError(f"autotune: unsupported prune_configs_by entries {sorted(unknown)}")
    prune = (prune_configs_by or {}).get("early_config_prune")
    return lambda fn: Tuner(fn, configs, key, prune)


# ------------------------------------------------------------------------------------------------
# Keys and the table
# ------------------------------------------------------------------------------------------------


def bucket(n: int) -> int:
    """Shape bucket of a size: the next power of two (>= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def table_key(sizes: dict) -> str:
    """Canonical key of a call: integer sizes bucketed to powers of two; bools, strings (dtypes,
    precisions) and other values kept as they are."""
    parts = []
    for name in sorted(sizes):
        value = sizes[name]
        is_size = isinstance(value, int) and not isinstance(value, bool)
        parts.append(f"{name}={bucket(value) if is_size else value}")
    return ",".join(parts)


def call_key(kernel: Tuner, sizes: dict, args: dict) -> str:
    """The key of one launch: the launcher's ``sizes``, the kernel's ``keys`` and every flag."""
    values = {name: args[name] for name in kernel.keys if name in args}
    values.update({name: args[name] for name in kernel.flags if name in args})
    values.update(sizes)
    return table_key(values)


def table_path() -> Path:
    """The table in use: ``$A2NET_TUNED_CONFIGS`` when set, else ``kernels/tuned_configs.json``."""
    override = os.environ.get(TABLE_ENV, "").strip()
    return Path(override) if override else TABLE_PATH


@functools.lru_cache(maxsize=4)
def _read_table(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_table() -> dict:
    """The tuned-config table at :func:`table_path`, ``{}`` when absent (cached per path). Top-level
    names starting with ``_`` are comments, not kernels."""
    return {k: v for k, v in _read_table(str(table_path())).items() if not k.startswith("_")}


load_table.cache_clear = _read_table.cache_clear  # forget cached tables (after rewriting one)


def device_arch(device) -> str:
    """``"sm_90"`` style name of a CUDA device."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def tuned_config(name: str, device, key: str) -> triton.Config | None:
    """The table's config for kernel ``name`` under ``key`` on ``device``, if any."""
    if INTERPRET or getattr(device, "type", "cpu") != "cuda":
        return None
    entry = load_table().get(name, {}).get(device_arch(device), {}).get(key)
    if entry is None:
        return None
    return triton.Config(entry["kwargs"], num_warps=entry["num_warps"], num_stages=entry["num_stages"])


# ------------------------------------------------------------------------------------------------
# The policy
# ------------------------------------------------------------------------------------------------


def deterministic() -> bool:
    """Whether configs must not depend on timings: ``torch.are_deterministic_algorithms_enabled()``
    or ``A2NET_DETERMINISTIC=1``."""
    import torch

    flag = os.environ.get(DETERMINISTIC_ENV, "0").strip().lower() not in ("",) + _FALSE
    return flag or torch.are_deterministic_algorithms_enabled()


def capturing(device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream."""
    import torch

    return getattr(device, "type", "cpu") == "cuda" and torch.cuda.is_current_stream_capturing()


def run(kernel: Tuner, grid, args: dict, config: triton.Config) -> None:
    """Launch the plain JIT function with one config."""
    kernel.fn[grid](**args, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def spills(kernel: Tuner, grid, args: dict, config: triton.Config) -> bool:
    """Whether ``config`` spills registers: compiles it (nothing runs) and reads ``n_spills`` of the
    loaded kernel (a GPU is needed). A config that does not compile counts as spilling."""
    try:
        compiled = kernel.fn.warmup(
            grid=grid, **args, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
        )
        compiled._init_handles()
    except Exception:  # out of resources, compile errors: never benchmarked
        return True
    return bool(compiled.n_spills)


def benchmark(kernel: Tuner, grid, args: dict, config: triton.Config) -> float:
    """Median milliseconds of one config (``triton.testing.do_bench``); inf when it fails to run."""
    import triton.testing

    try:
        return float(triton.testing.do_bench(functools.partial(run, kernel, grid, args, config)))
    except Exception:
        return float("inf")


def search(kernel: Tuner, grid, args: dict) -> triton.Config:
    """The fastest of the candidates that do not spill (the default when all of them spill)."""
    candidates = kernel.candidates(args)
    fit = [c for c in candidates if not spills(kernel, grid, args, c)] or candidates[:1]
    if len(fit) == 1:
        return fit[0]
    times = [benchmark(kernel, grid, args, c) for c in fit]
    return fit[min(range(len(fit)), key=times.__getitem__)]


def select_config(kernel: Tuner, grid, *, name: str, device, key: str, args: dict) -> tuple[triton.Config, str]:
    """``(config, why)`` for one launch; ``why`` is ``"default"``, ``"table"``, ``"cached"`` or
    ``"searched"`` (the order is the module's docstring)."""
    default = kernel.candidates(args)[0]
    if INTERPRET or getattr(device, "type", "cpu") != "cuda":
        return default, "default"
    config = tuned_config(name, device, key)
    if config is not None:
        return config, "table"
    if deterministic() or not SEARCH:
        return default, "default"
    cache_key = (device_arch(device), key)
    if cache_key in kernel.cache:
        return kernel.cache[cache_key], "cached"
    if capturing(device):
        return default, "default"
    config = search(kernel, grid, args)
    kernel.cache[cache_key] = config
    return config, "searched"


def launch(kernel: Tuner, grid, *, name: str, device, sizes: dict, **args) -> None:
    """Launch an autotuned kernel with the config :func:`select_config` picks.

    Args:
        kernel: a :class:`Tuner` (a JIT function wrapped by :func:`autotune`).
        grid: a callable ``META -> tuple`` (META holds the block sizes).
        name: the kernel's name in the table (``<op>_fwd`` / ``<op>_bwd_<what>``).
        device: the device the tensors live on.
        sizes: the shape values the key holds (with the dtype).
        **args: the kernel's arguments, by keyword (the flags among them join the key).
    """
    config, _ = select_config(kernel, grid, name=name, device=device, key=call_key(kernel, sizes, args), args=args)
    run(kernel, grid, args, config)
