"""Autotuning shared by every kernel: interpreter bypass and the tuned-config table.

* Under ``TRITON_INTERPRET=1`` Triton's autotuner cannot benchmark (no driver), so
  :func:`autotune` keeps only the first config there; a single config is never benchmarked.
  ``A2NET_AUTOTUNE=0`` does the same on a GPU (the test-suite on CUDA checks the default configs
  without paying for a search at every test shape; ``perf/autotune.py`` checks the others). The
  full list stays on the wrapper as ``all_configs`` for ``perf/autotune.py``.
* ``tuned_configs.json`` (written by ``perf/autotune.py`` on a GPU) maps
  ``kernel name -> GPU arch -> shape key -> config``. :func:`launch` looks the call up there first
  and launches the plain JIT function with that config; a missing entry falls back to the
  autotuner's own search. ``A2NET_TUNED_CONFIGS=/path/table.json`` reads another table (tests,
  trying a freshly tuned table before committing it); it is read at the first launch after the
  path changes.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
#: False with ``A2NET_AUTOTUNE=0``: only the first config of each list (no search).
SEARCH = os.environ.get("A2NET_AUTOTUNE", "1").strip().lower() not in ("0", "off", "false", "no")
TABLE_PATH = Path(__file__).with_name("tuned_configs.json")
TABLE_ENV = "A2NET_TUNED_CONFIGS"


def autotune(configs: list, key: list[str], **kwargs):
    """``triton.autotune`` that keeps only ``configs[0]`` in interpreter mode (and with
    ``A2NET_AUTOTUNE=0``); the full list is kept as the wrapper's ``all_configs``."""

    def decorator(fn):
        tuner = triton.autotune(configs=configs[:1] if INTERPRET or not SEARCH else configs, key=key, **kwargs)(fn)
        tuner.all_configs = list(configs)
        return tuner

    return decorator


def bucket(n: int) -> int:
    """Shape bucket of a size: the next power of two (>= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def table_key(sizes: dict) -> str:
    """Canonical key of a call: sizes bucketed to powers of two, strings (dtypes) kept."""
    parts = []
    for name in sorted(sizes):
        value = sizes[name]
        parts.append(f"{name}={bucket(value) if isinstance(value, int) else value}")
    return ",".join(parts)


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
    """The tuned-config table at :func:`table_path`, ``{}`` when absent (cached per path)."""
    return _read_table(str(table_path()))


load_table.cache_clear = _read_table.cache_clear  # forget cached tables (after rewriting one)


def device_arch(device) -> str:
    """``"sm_90"`` style name of a CUDA device."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def tuned_config(name: str, device, sizes: dict) -> triton.Config | None:
    """The table's config for kernel ``name`` at ``sizes`` on ``device``, if any."""
    if INTERPRET or getattr(device, "type", "cpu") != "cuda":
        return None
    entry = load_table().get(name, {}).get(device_arch(device), {}).get(table_key(sizes))
    if entry is None:
        return None
    return triton.Config(entry["kwargs"], num_warps=entry["num_warps"], num_stages=entry["num_stages"])


def launch(kernel, grid, *, name: str, device, sizes: dict, **args) -> None:
    """Launch an autotuned kernel, preferring the tuned table over the autotuner's search.

    Args:
        kernel: a ``triton.autotune``-wrapped JIT function.
        grid: a callable ``META -> tuple`` (META holds the block sizes).
        name: the kernel's key in the table.
        device: the device the tensors live on.
        sizes: the shape values the table is keyed on (also the autotune ``key``).
        **args: the kernel's arguments, by keyword.
    """
    config = tuned_config(name, device, sizes)
    if config is None:
        kernel[grid](**args)
    else:
        kernel.fn[grid](**args, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
