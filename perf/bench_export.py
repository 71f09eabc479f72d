"""One call of an exported program against the eager model it came from.

Exports the aligner (the embedded demo model unless ``--checkpoint``) with its inference options
(``a2net export``'s defaults: the checkpoint's, e.g. two composed symmetric passes for the demo
model) into a temporary folder, loads the program, and times, per batch size, the eager
``predict_chain(model, normalize_images(s), normalize_images(t), ...)`` with the same options and
``program(s, t)``, calls interleaved; prints the medians, their ratio and the largest difference
between the two thetas::

    python perf/bench_export.py [--batch 1 8] [--threads 2] [--reps 15] [--iterations N --symmetric]

CPU only: an export for CUDA holds the a2net custom ops, which the eager model calls too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from perf._harness import format_table, load_average


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: the embedded demo model)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=15, help="timed calls of each, after one warm-up call")
    parser.add_argument("--iterations", type=int, default=None, help="default: the checkpoint's")
    parser.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from a2net.export import export_aligner, exported_options
    from a2net.inference import load_aligner, predict_chain
    from a2net.model import normalize_images

    model = load_aligner(args.checkpoint, None, None).eval()
    options = exported_options(model, args.iterations, args.symmetric)  # what the program runs
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt2"
        export_aligner(model, path, iterations=args.iterations, symmetric=args.symmetric)
        program = torch.export.load(path).module()

    def eager(source, target):
        chain = predict_chain(model, normalize_images(source), normalize_images(target), **options)
        return chain[0]

    rows = []
    generator = torch.Generator().manual_seed(0)
    for batch in args.batch:
        source, target = (torch.rand(batch, 3, *model.image_size, generator=generator) for _ in range(2))
        times = {"eager": [], "exported": []}
        with torch.no_grad():
            difference = (eager(source, target) - program(source, target)).abs().max().item()  # also the warm-up
            for _ in range(args.reps):
                for name, call in (("eager", eager), ("exported", program)):
                    start = time.perf_counter()
                    call(source, target)
                    times[name].append((time.perf_counter() - start) * 1e3)
        medians = {name: statistics.median(values) for name, values in times.items()}
        rows.append(
            [
                batch,
                f"{medians['eager']:.1f}",
                f"{medians['exported']:.1f}",
                f"{medians['eager'] / medians['exported']:.2f}x",
                f"{difference:.1e}",
            ]
        )
    passes = options["iterations"]
    print(
        f"{'the embedded demo model' if args.checkpoint is None else args.checkpoint} at "
        f"{model.image_size[0]}x{model.image_size[1]}, {passes} pass{'es' if passes > 1 else ''}"
        f"{', symmetric' if options['symmetric'] else ''}; CPU, {args.threads} threads, "
        f"median of {args.reps} interleaved calls; load average {load_average()}"
    )
    print(format_table(["B", "eager ms", "exported ms", "eager/exported", "max |dtheta|"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
