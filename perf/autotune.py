"""Sweep every kernel's config list at given shapes on a GPU and write the winners to the
tuned-config table (``kernels/tuned_configs.json``, read by :mod:`a2net.kernels._tuning`).

How: each op runs once forward and backward with :func:`a2net.kernels._tuning.launch` replaced by a
recorder, which keeps every distinct launch — kernel, grid, its key
(:func:`a2net.kernels._tuning.call_key`: the sizes the launcher passed and every flag, so the
table key is exactly the one :func:`a2net.kernels._tuning.launch` will look up) and its arguments —
and lets it run with the default config. Then, per recorded launch, every config of the kernel's
list (``all_configs``, pruned by the kernel's own ``early_config_prune``) is

1. compiled: a config that spills registers (:func:`a2net.kernels._tuning.spills`) is rejected
   without running;
2. checked: run on the recorded arguments restored to their state before the launch, its
   outputs (the tensors the default config changed) must match the default's (relative error
   ``<= 1e-3`` for fp32, ``2e-2`` for 16-bit outputs), and, where the default passes this too,
   with those outputs NaN-filled first (an element a config forgets to write shows as NaN);
3. timed with ``triton.testing.do_bench`` (median);

and the fastest correct config goes to the table under ``kernel name -> sm_XY -> call key``,
with its time, the default's time and where it was measured. The table is merged into the one
on disk (other archs and keys kept) and written atomically (temporary file + rename). Finally
the ops run once more with the new table and are compared with the float64 reference.

Shapes: the paper's by default (B=32, 15x15 maps, C=1024 (ResNet-101) and 512 (VGG-16), the
attention's 9x9 map; fp32 with tf32 and bf16), the model's path first (the fused
correlation+OAC op and the attention, then the unfused ops), tf32 before bf16. Table keys bucket
every size to the next power of two, so a 15x15 entry also serves 16x16 and B=17..32; a key
holds the input precision and the flags, so a tf32 entry never serves an ieee call.

Usage (needs a CUDA device; refuses otherwise)::

    PYTHONPATH=. python perf/autotune.py                    # the paper's shapes
    PYTHONPATH=. python perf/autotune.py --hw 15 30 --dtypes bf16 --dry-run
    PYTHONPATH=. python perf/autotune.py --table my_table.json   # another table (A2NET_TUNED_CONFIGS)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
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

import a2net.kernels._tuning as tuning

#: Relative error of a config's outputs against the default config's, per output width.
CONFIG_TOLERANCE = {4: 1e-3, 8: 1e-9, 2: 2e-2}


# ------------------------------------------------------------------------------------------
# The table: read, merge, write atomically (no GPU needed; tests/test_perf.py uses these)
# ------------------------------------------------------------------------------------------


def read_table(path: Path) -> dict:
    """The table at ``path`` (``{}`` when absent); refuses a file that is not a table."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not valid JSON ({exc}); refusing to overwrite it") from exc
    check_table(table, path)
    return table


def check_table(table, where="table") -> None:
    """``kernel -> arch -> key -> {"kwargs": {...}, "num_warps": int, "num_stages": int, ...}``; top-level
    names starting with ``_`` are comments."""
    if not isinstance(table, dict):
        raise SystemExit(f"{where}: expected a JSON object at the top, got {type(table).__name__}")
    for name, archs in table.items():
        if name.startswith("_"):
            continue
        for arch, keys in (archs or {}).items():
            for key, entry in (keys or {}).items():
                ok = (
                    isinstance(entry, dict)
                    and isinstance(entry.get("kwargs"), dict)
                    and isinstance(entry.get("num_warps"), int)
                    and isinstance(entry.get("num_stages"), int)
                )
                if not ok:
                    raise SystemExit(f"{where}: entry {name} / {arch} / {key} lacks kwargs, num_warps or num_stages")


def merge_tables(old: dict, new: dict) -> dict:
    """``old`` updated with ``new`` key by key: other kernels, archs and keys are kept."""
    merged = copy.deepcopy(old)
    for name, archs in new.items():
        if name.startswith("_"):
            merged[name] = copy.deepcopy(archs)
            continue
        for arch, keys in archs.items():
            merged.setdefault(name, {}).setdefault(arch, {}).update(copy.deepcopy(keys))
    return merged


def write_table(path: Path, new: dict) -> dict:
    """Merge ``new`` into the table at ``path`` and write it atomically; returns the merged table."""
    path = Path(path)
    check_table(new, "new entries")
    merged = merge_tables(read_table(path), new)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    tuning.load_table.cache_clear()
    return merged


# ------------------------------------------------------------------------------------------
# Recording launches
# ------------------------------------------------------------------------------------------


@dataclass
class Launch:
    name: str
    kernel: object
    grid: object
    sizes: dict
    args: dict
    key: str
    before: dict = field(default_factory=dict)  # clones of the tensor arguments before the launch
    results: list = field(default_factory=list)  # (config, p50 ms or None, status)


def candidate_configs(kernel, args: dict) -> list:
    """The kernel's full config list, pruned as :func:`a2net.kernels._tuning.select_config` prunes
    it for ``args`` (the first is the default)."""
    return kernel.candidates(args)


def run_config(launch: Launch, config) -> None:
    tuning.run(launch.kernel, launch.grid, launch.args, config)


@contextlib.contextmanager
def recording(store: dict):
    """Replace ``launch`` in every loaded kernel module by a recorder (default config)."""
    import importlib
    import pkgutil

    import a2net.kernels as kernel_package

    for info in pkgutil.iter_modules(kernel_package.__path__):  # the ops import their kernels lazily
        importlib.import_module(f"a2net.kernels.{info.name}")
    original = tuning.launch

    def recorder(kernel, grid, *, name, device, sizes, **args):
        key = tuning.call_key(kernel, sizes, args)
        launch = Launch(name, kernel, grid, dict(sizes), dict(args), key)
        if (name, key) not in store:
            with torch.no_grad():  # the arguments as the kernel finds them: Checker restores this
                launch.before = {k: v.clone() for k, v in _tensors(args).items()}
            store[(name, key)] = launch
        run_config(launch, candidate_configs(kernel, args)[0])

    patched = [
        m
        for m in list(sys.modules.values())
        if getattr(m, "__name__", "").startswith("a2net.kernels") and getattr(m, "launch", None) is original
    ]
    for module in patched:
        module.launch = recorder
    try:
        yield
    finally:
        for module in patched:
            module.launch = original


# ------------------------------------------------------------------------------------------
# Checking and timing the configs of one launch
# ------------------------------------------------------------------------------------------


def _sync(tensors: dict) -> None:
    if any(t.is_cuda for t in tensors.values()):
        torch.cuda.synchronize()


def _tensors(args: dict) -> dict:
    return {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    both_nan = torch.isnan(a) & torch.isnan(b) if a.is_floating_point() else torch.zeros_like(a, dtype=torch.bool)
    return bool(((a != b) & ~both_nan).any())


def _rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if torch.isnan(out).any() and not torch.isnan(ref).any():
        return float("nan")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


class Checker:
    """Compares a config's outputs with the default config's on the same restored arguments."""

    @torch.no_grad()
    def __init__(self, launch: Launch, default):
        self.launch = launch
        self.tensors = _tensors(launch.args)
        self.before = launch.before
        self._restore()
        run_config(launch, default)
        _sync(self.tensors)
        self.expected = {k: v.clone() for k, v in self.tensors.items() if _differs(v, self.before[k])}
        self.poison = True
        self.poison = self.check(default) is None  # a kernel that reads its outputs cannot be poisoned

    @torch.no_grad()
    def _restore(self):
        for k, v in self.tensors.items():
            v.copy_(self.before[k])

    @torch.no_grad()
    def check(self, config) -> str | None:
        """None when the config's outputs match the default's, else why not."""
        self._restore()
        if self.poison:
            for k in self.expected:
                if self.tensors[k].is_floating_point():
                    self.tensors[k].fill_(float("nan"))
        run_config(self.launch, config)
        _sync(self.tensors)
        for k, ref in self.expected.items():
            tol = CONFIG_TOLERANCE.get(ref.element_size(), 2e-2)
            err = _rel_error(self.tensors[k], ref)
            if not err <= tol:
                return f"{k}: relative error {err:.2e} > {tol:g}"
        return None

    def close(self):
        self._restore()


def tune_launch(launch: Launch, rep_ms: float, warmup_ms: float) -> None:
    import triton.testing

    configs = candidate_configs(launch.kernel, launch.args)
    checker = Checker(launch, configs[0])
    try:
        for config in configs:
            try:
                if config is not configs[0] and tuning.spills(launch.kernel, launch.grid, launch.args, config):
                    launch.results.append((config, None, "spills"))
                    continue
                why = checker.check(config)
                if why is not None:
                    launch.results.append((config, None, f"mismatch: {why}"))
                    continue
                q = triton.testing.do_bench(
                    functools.partial(run_config, launch, config), warmup=warmup_ms, rep=rep_ms, quantiles=[0.5]
                )
                ms = float(q[0] if isinstance(q, (list, tuple)) else q)
                launch.results.append((config, ms, "ok"))
            except Exception as exc:  # compile errors, out of resources
                try:
                    torch.cuda.synchronize()
                except Exception as fatal:
                    raise SystemExit(
                        f"{launch.name} {config}: the CUDA context broke ({fatal}); "
                        "the config list holds a config that faults"
                    ) from exc
                launch.results.append((config, None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"))
    finally:
        checker.close()


def best_entry(launch: Launch, info: dict) -> dict | None:
    ok = [(ms, cfg) for cfg, ms, status in launch.results if status == "ok"]
    if not ok:
        return None
    ms, cfg = min(ok, key=lambda t: t[0])
    default_ms = launch.results[0][1] if launch.results and launch.results[0][2] == "ok" else None
    return {
        "kwargs": dict(cfg.kwargs),
        "num_warps": int(cfg.num_warps),
        "num_stages": int(cfg.num_stages),
        "ms": round(ms, 5),
        "default_ms": None if default_ms is None else round(default_ms, 5),
        "configs_ok": len(ok),
        "configs_tried": len(launch.results),
        "sizes": {k: v for k, v in launch.sizes.items()},
        **info,
    }


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", help="ops to tune (default: all of perf.op_specs.OPS)")
    p.add_argument("--batch", nargs="+", type=int, default=[32])
    p.add_argument("--hw", nargs="+", type=int, default=[15])
    p.add_argument("--channels", nargs="+", type=int, default=[1024, 512])
    p.add_argument("--dtypes", nargs="+", default=["tf32", "bf16"], choices=["tf32", "fp32", "bf16"])
    p.add_argument(
        "--table", type=Path, help="table to merge into (default: $A2NET_TUNED_CONFIGS or kernels/tuned_configs.json)"
    )
    p.add_argument("--dry-run", action="store_true", help="tune and print, write nothing")
    p.add_argument("--rep-ms", type=float, default=40.0)
    p.add_argument("--warmup-ms", type=float, default=10.0)
    p.add_argument(
        "--budget-s",
        type=float,
        default=float("inf"),
        help="tune no new launch after this many seconds (what is done is written)",
    )
    return p.parse_args(argv)


def require_cuda() -> torch.device:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit(
            "autotune.py: TRITON_INTERPRET is set; tuning needs the compiled kernels on a GPU "
            "(export TRITON_INTERPRET=0)"
        )
    if not torch.cuda.is_available():
        raise SystemExit(
            "autotune.py: needs a CUDA device (none is visible); the tuned-config table can only "
            "be measured on the GPU it is for. Nothing was written."
        )
    return torch.device("cuda")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = require_cuda()
    os.environ["A2NET_BACKEND"] = "triton"
    from perf import _harness as H
    from perf.op_specs import OPS

    # the model's path first (fused op, attention), so that a cut budget loses the unfused ops
    preferred = ("correlation_oac", "attention_pool", "offset_aware_correlation", "correlation")
    ours = [n for n in OPS if "triton" in OPS[n].providers]  # correlation_gemm is cuBLAS's
    names = args.ops or sorted(ours, key=lambda n: preferred.index(n) if n in preferred else len(preferred))
    unknown = set(names) - set(ours)
    if unknown:
        raise SystemExit(f"--ops: unknown {sorted(unknown)}; expected some of {ours}")
    path = args.table or tuning.table_path()
    arch = tuning.device_arch(device)
    run = H.run_info(device)
    info = {"gpu": run.gpu, "torch": run.torch, "triton": run.triton, "date": run.date}
    print(f"autotune: {run.gpu} ({arch}), torch {run.torch}, triton {run.triton}; table {path}")

    new: dict = {}
    tuned: list[Launch] = []
    start = time.monotonic()
    out_of_time = False
    cases = []
    for label in args.dtypes:  # tf32 of every op first: a cut budget loses bf16, not an op
        for b in args.batch:
            for hw in args.hw:
                for c in args.channels:
                    for name in names:
                        spec = OPS[name]
                        shape = spec.shape(b, c, hw)
                        if shape is not None and (name, spec.shape_id(shape), label) not in {x[:3] for x in cases}:
                            cases.append((name, spec.shape_id(shape), label, spec, shape))
    for name, sid, label, spec, shape in cases:
        if out_of_time:
            break
        dtype, precision = H.DTYPES[label]
        H.set_matmul_mode(label)
        store: dict = {}
        gen = torch.Generator(device=device).manual_seed(0)
        inputs = spec.make(shape, dtype, device, gen, all_grads=True)  # every backward kernel
        with recording(store):
            out = spec.providers["triton"](inputs, precision)
            torch.autograd.grad(out, [v for v in inputs.values() if v.requires_grad], torch.randn_like(out))
        torch.cuda.synchronize()
        for (kname, key), launch in store.items():
            if any(t.name == kname and t.key == key for t in tuned):
                continue
            if time.monotonic() - start > args.budget_s:
                print(f"time budget ({args.budget_s:g} s) spent: stopping before {kname} [{key}]")
                out_of_time = True
                break
            tune_launch(launch, args.rep_ms, args.warmup_ms)
            tuned.append(launch)
            entry = best_entry(launch, info)
            if entry is not None:
                new.setdefault(kname, {}).setdefault(arch, {})[key] = entry
            bad = [
                f"{c.kwargs},w{c.num_warps},s{c.num_stages}: {status}"
                for c, _, status in launch.results
                if status != "ok"
            ]
            print(
                f"  {name} {sid} {label}: {kname} [{key}] {len(launch.results)} configs"
                + (f", best {entry['ms']:.4f} ms vs default {entry['default_ms']} ms" if entry else ", none correct")
            )
            for line in bad:
                print(f"    rejected {line}")
            launch.args, launch.before = {}, {}  # drop the tensors
        del store, inputs

    rows = []
    for launch in tuned:
        entry = new.get(launch.name, {}).get(arch, {}).get(launch.key)
        if entry is None:
            rows.append([launch.name, launch.key, "-", "-", "-", "none correct"])
            continue
        d = entry["default_ms"]
        rows.append(
            [
                launch.name,
                launch.key,
                f"{d:.4f}" if d else "-",
                f"{entry['ms']:.4f}",
                f"{d / entry['ms']:.2f}x" if d else "-",
                f"{entry['kwargs']} w{entry['num_warps']} s{entry['num_stages']}",
            ]
        )
    print()
    print(H.format_table(["kernel", "key", "default ms", "best ms", "speed-up", "best config"], rows))
    mismatched = [t for t in tuned if any(s.startswith("mismatch") for _, _, s in t.results)]

    if args.dry_run:
        print("--dry-run: nothing written")
    elif new:
        merged = write_table(path, new)
        n = sum(len(k) for a in merged.values() for k in a.values())
        print(
            f"wrote {sum(len(k) for a in new.values() for k in a.values())} entries for {arch} into {path} "
            f"({n} entries in all)"
        )
        verify(path, names, args, device)
    if mismatched:
        print(f"{len(mismatched)} kernels have configs whose outputs differ from the default config's (see above)")
        return 1
    return 0


def verify(path: Path, names, args, device) -> None:
    """Run each op with the written table and compare with the float64 reference."""
    from perf import _harness as H
    from perf import bench_ops
    from perf.op_specs import OPS

    os.environ[tuning.TABLE_ENV] = str(path)
    tuning.load_table.cache_clear()
    failures = []
    for label in args.dtypes:
        for name in names:
            spec = OPS[name]
            shape = spec.shape(args.batch[0], args.channels[0], args.hw[0])
            if shape is None:
                continue
            H.set_matmul_mode(label)
            ctx = argparse.Namespace(device=device, reference_errors={}, args=argparse.Namespace(all_grads=True))
            err_fwd, err_bwd, note = bench_ops.check_provider(ctx, spec, shape, label, "triton", H.DTYPES[label][1])
            print(
                f"  verify {name} {spec.shape_id(shape)} {label}: rel_err fwd {err_fwd:.2e}, bwd {err_bwd:.2e} {note}"
            )
            if "MISMATCH" in note or not (math.isfinite(err_fwd) and math.isfinite(err_bwd)):
                failures.append(name)
    if failures:
        raise SystemExit(f"the tuned table gives wrong results for {failures}")


if __name__ == "__main__":
    sys.exit(main())
