"""Benchmark of an A2Net training step: our ops against the reference path, eager and compiled.

A step is the paper's: frozen ResNet-101 features of the source and the target images (no
gradient), correlation, OAC, encoder, attention, regressor, transformed grid loss, backward
through the head, an Adam update. Random images and random affine thetas (the timing does not
depend on their content, but zeros are never timed). Per setting and provider it reports:

* ``step``: the whole training step (``pass=step`` rows) -> pairs/s = B / step time;
* ``head``: the same step on features computed beforehand (everything but the backbone);
* ``backbone``: the frozen feature extraction of both images alone (the same for every
  provider: cuDNN convolutions, timed once per setting);
* peak memory of a step (model, optimiser state and inputs included);
* the head's share of the step, ``head / step``.

Providers: ``triton`` (A2NET_BACKEND=triton; the model's default fused correlation+OAC op),
``triton-unfused`` (the model built with ``fused=False``: our correlation op, then our OAC op),
``reference`` (A2NET_BACKEND=torch), and ``triton-compiled``/``reference-compiled``, the head
(everything after the backbone) under ``torch.compile``. The frozen backbone stays eager in every
provider: it is the same cuDNN code for all and only dilutes the comparison (compiling
ResNet-101 would also cost minutes of the GPU budget).

Settings: ``paper`` (240x240 images, 15x15 maps, B=32) and ``highres`` (480x480, 30x30 maps,
B=32); ``--quick`` shrinks them (CUDA: B=8 and 4; CPU: B=2 at 240 only).

Usage::

    PYTHONPATH=. python perf/bench_model.py                  # CUDA
    python perf/bench_model.py --device cpu --quick          # CPU, reference path
    python perf/bench_model.py --settings paper --providers triton reference

Rows go to ``perf/results/results.csv`` (``op=a2net_train_step``).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from a2net import geometry
from a2net.model import A2Net
from a2net.ops import TRITON_CALLS
from perf import _harness as H

OP = "a2net_train_step"
PROVIDERS = ("triton", "reference", "triton-unfused", "triton-compiled", "reference-compiled")
#: name -> (image side, batch) per mode.
SETTINGS = {
    "paper": {"full": (240, 32), "quick-cuda": (240, 8), "quick-cpu": (240, 2), "cpu": (240, 4)},
    "highres": {"full": (480, 32), "quick-cuda": (480, 4), "quick-cpu": None, "cpu": (480, 1)},
}
BACKBONE = "resnet101"


def _backend(provider: str) -> str:
    return "triton" if provider.startswith("triton") else "torch"


def head(model, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Everything of ``model.forward`` after the backbone: features -> theta, the way the model
    runs it (the fused correlation+OAC op unless the model was built with ``fused=False``)."""
    if getattr(model, "fused", False):
        return model.FeatureRegression.forward_features(
            source, target, normalize_features=model.FeatureCorrelation.normalize_features
        )
    corr = model.FeatureCorrelation(source, target)
    return model.FeatureRegression(corr, source_size=tuple(source.shape[2:]))


class Step:
    """A model, its Adam optimiser and one batch; ``step``/``head_step``/``backbone`` are the
    timed callables. ``-compiled`` providers run :func:`head` under ``torch.compile``; the
    backbone stays eager in every provider."""

    def __init__(self, image: int, batch: int, provider: str, device: torch.device):
        torch.manual_seed(0)
        gen = torch.Generator(device=device).manual_seed(0)
        options = {"fused": False} if provider.startswith("triton-unfused") else {}
        self.model = A2Net("affine", backbone=BACKBONE, backbone_weights=None, image_size=(image, image), **options).to(
            device
        )
        self.model.train()
        self.head = torch.compile(head) if provider.endswith("-compiled") else head
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=2e-4)
        self.source = torch.randn(batch, 3, image, image, device=device, generator=gen)
        self.target = torch.randn(batch, 3, image, image, device=device, generator=gen)
        self.theta = geometry.random_affine_theta(batch, torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            self.f_source, self.f_target = self.backbone()

    def _update(self, source, target):
        theta = self.head(self.model, source, target)
        loss = geometry.transformed_grid_loss(theta, self.theta)
        loss.backward()
        self.optimizer.step()

    def step(self):
        """The training step: backbone (frozen), head, loss, backward, Adam."""
        self.optimizer.zero_grad(set_to_none=True)
        self._update(self.model.features(self.source), self.model.features(self.target))

    def head_step(self):
        """The same on features computed beforehand."""
        self.optimizer.zero_grad(set_to_none=True)
        self._update(self.f_source, self.f_target)

    def backbone(self):
        with torch.no_grad():
            return self.model.features(self.source), self.model.features(self.target)


def run_setting(args, device, info, timer, meter, name, image, batch, csv_path, rows, skipped, start):
    label = "tf32" if device.type == "cuda" else "fp32"
    H.set_matmul_mode(label)
    shape = f"{BACKBONE}-B{batch}-{image}x{image}"
    times = {}
    for provider in args.providers:
        if time.monotonic() - start > args.budget_s:
            skipped.append(f"{name} {provider}: time budget ({args.budget_s:g} s) spent")
            continue
        os.environ["A2NET_BACKEND"] = _backend(provider)
        torch._dynamo.reset()
        try:
            meter.release()
            calls_before = sum(TRITON_CALLS.values())
            meter.baseline()  # before the model: its parameters and optimiser state count
            bench = Step(image, batch, provider, device)
            bench.step()  # warm-up (compilation, autotuning)
            H.synchronize(device)
            peak = meter.measure(bench.step)  # (the CPU meter's profiler stops here, before the timing)
            q_step = timer.time(bench.step)
            q_head = timer.time(bench.head_step)
            if provider.startswith("triton") and sum(TRITON_CALLS.values()) == calls_before:
                raise RuntimeError("the triton provider never reached the Triton kernels")
            q_backbone = None
            if "backbone" not in times:
                q_backbone = timer.time(bench.backbone)
                times["backbone"] = q_backbone[1]
            del bench
        except torch.cuda.OutOfMemoryError as exc:
            skipped.append(f"{name} {provider}: out of memory ({str(exc).splitlines()[0][:80]})")
            continue
        except Exception as exc:  # a compile failure must not end the run
            if not provider.endswith("-compiled"):
                raise  # the eager paths failing is a bug, never a footnote
            skipped.append(f"{name} {provider}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        times[provider] = (q_step[1], q_head[1], peak)
        share = q_head[1] / q_step[1]
        note = f"pairs/s={batch * 1e3 / q_step[1]:.1f}; head share={share:.0%}"
        if device.type == "cpu":
            note += f"; load {H.load_average()}"
        new = [
            info.row(
                op=OP,
                **{"pass": "step"},
                shape=shape,
                dtype=label,
                provider=provider,
                timer=timer.name,
                ms_p20=q_step[0],
                ms_p50=q_step[1],
                ms_p80=q_step[2],
                peak_mb=peak,
                note=note,
            ),
            info.row(
                op=OP,
                **{"pass": "head"},
                shape=shape,
                dtype=label,
                provider=provider,
                timer=timer.name,
                ms_p20=q_head[0],
                ms_p50=q_head[1],
                ms_p80=q_head[2],
            ),
        ]
        if q_backbone is not None:
            new.append(
                info.row(
                    op=OP,
                    **{"pass": "backbone"},
                    shape=shape,
                    dtype=label,
                    provider="torch",
                    timer=timer.name,
                    ms_p20=q_backbone[0],
                    ms_p50=q_backbone[1],
                    ms_p80=q_backbone[2],
                    note="frozen ResNet-101 features of both images, no gradient",
                )
            )
        rows.extend(new)
        if csv_path is not None:
            H.append_rows(csv_path, new)
        print(
            f"  {name} {shape} {provider}: step {H.fmt_ms(q_step[1])} ms ({batch * 1e3 / q_step[1]:.1f} pairs/s), "
            f"head {H.fmt_ms(q_head[1])} ms ({share:.0%}), peak {peak:.0f} MB"
        )
    return times


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cuda | cpu | auto (cuda when visible; default)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="smaller batches (and only 240x240 on CPU)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--batch", type=int, help="override the batch size of every setting")
    p.add_argument(
        "--image",
        type=int,
        help="override the image side of every setting (>= 128: the encoder "
        "leaves 2x2 of 8x8 maps, and training BatchNorm needs more than one value per channel)",
    )
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, help="CUDA default: all; CPU: reference")
    p.add_argument("--csv", type=Path, default=H.DEFAULT_CSV)
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no new measurement after this")
    p.add_argument("--warmup-ms", type=float, default=100.0)
    p.add_argument("--rep-ms", type=float, default=500.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    gc.freeze()  # the imported modules' objects: later collections (between cases) stay cheap
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = H.resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.providers is None:
        args.providers = list(PROVIDERS) if cuda else ["reference"]
    if not cuda and any(p.startswith("triton") for p in args.providers):
        raise SystemExit("--providers triton*: the Triton kernels need a CUDA device")
    mode = ("quick-cuda" if cuda else "quick-cpu") if args.quick else ("full" if cuda else "cpu")
    info = H.run_info(device)
    timer = H.Timer(device, args.warmup_ms, args.rep_ms, min_reps=3)
    meter = H.MemoryMeter(device)
    csv_path = None if args.no_csv else args.csv
    print(
        f"bench_model: {info.gpu}, torch {info.torch}, triton {info.triton}, commit {info.commit}, {info.date}"
        + ("" if cuda else f", load average {H.load_average()}")
    )
    rows, skipped, summary = [], [], []
    start = time.monotonic()
    for name in args.settings:
        setting = SETTINGS[name][mode]
        if setting is None:
            skipped.append(f"{name}: not part of {mode}")
            continue
        image, batch = setting
        if args.batch:
            batch = args.batch
        if args.image:
            image = args.image
        print(f"{name}: {BACKBONE}, {image}x{image} images ({image // 16}x{image // 16} maps), B={batch}")
        times = run_setting(args, device, info, timer, meter, name, image, batch, csv_path, rows, skipped, start)
        ref = times.get("reference")
        for provider in args.providers:
            if provider not in times:
                continue
            step, head, peak = times[provider]
            summary.append(
                [
                    name,
                    f"B{batch} {image}x{image}",
                    provider,
                    H.fmt_ms(step),
                    f"{batch * 1e3 / step:.1f}",
                    H.fmt_ms(head),
                    f"{head / step:.0%}",
                    f"{peak:.0f}",
                    f"{ref[0] / step:.2f}x" if ref else "-",
                ]
            )
    print("\nsummary:")
    print(
        H.format_table(
            [
                "setting",
                "shape",
                "provider",
                "step ms",
                "pairs/s",
                "head ms",
                "head share",
                "peak MB",
                "speed-up vs reference",
            ],
            summary,
        )
    )
    if skipped:
        print(f"skipped ({len(skipped)}):")
        for line in skipped:
            print(f"  {line}")
    if csv_path is not None:
        print(f"{len(rows)} rows appended to {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
