"""The real-photo checks of a checkpoint under several inference options, and what each costs.

For every combination of ``--iterations``, ``--symmetric`` and ``--refine``: every bundled photo
aligned onto itself (mean over photos and worst photo, % of the diagonal), the stereo pair against
its disparity map (mean error, PCK@0.05), PCK@0.1 on the held-out synthetic pairs
(:func:`a2net.evaluate.evaluate_stereo_demo`), and the time of one ``a2net.align`` call on the
stereo pair (median of ``--repeats`` calls, after one warm-up). Usage, from the checkout::

    python experiments/real_photos.py                       # the embedded model, the options of the README
    python experiments/real_photos.py runs/demo/last --iterations 1 2 3 --symmetric 0 1 --refine 0 1 \\
        --json options.json

Prints one markdown row per combination (the README's table of inference options).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from a2net import checkpoint as ckpt  # noqa: E402
from a2net import evaluate, synthetic  # noqa: E402
from a2net.alignment import align  # noqa: E402
from a2net.benchmarks import stereo_pair  # noqa: E402

# the rows of the README's table when no option is given
README_GRID = [
    (1, False, False),
    (1, True, False),
    (2, False, False),
    (2, True, False),
    (3, True, False),
    (2, True, True),
]


def align_ms(model, pair, repeats: int, **options) -> float:
    """Median milliseconds of one ``align`` call on the stereo pair."""
    align(pair["source"], pair["target"], model=model, **options)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        align(pair["source"], pair["target"], model=model, **options)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=None, help="default: the embedded demo model")
    parser.add_argument("--iterations", type=int, nargs="+", default=None)
    parser.add_argument("--symmetric", type=int, nargs="+", default=None, choices=(0, 1))
    parser.add_argument("--refine", type=int, nargs="+", default=None, choices=(0, 1))
    parser.add_argument("--pairs", type=int, default=200, help="held-out synthetic pairs (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20, help="timed align calls per row (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = ckpt.load_model(args.checkpoint) if args.checkpoint else ckpt.load_default_model()
    if args.iterations is None and args.symmetric is None and args.refine is None:
        grid = README_GRID
    else:
        grid = list(itertools.product(args.iterations or [1], args.symmetric or [0], args.refine or [0]))
    pairs = synthetic.heldout_synthetic_pairs("affine", n_pairs=args.pairs, image_size=model.image_size)
    stereo = stereo_pair(None)  # every correspondence: the align call reads the images only
    print(
        "| iterations, symmetric, refine | self-alignment (% diagonal, mean / worst photo) | stereo error (px) | "
        "stereo PCK@0.05 | synthetic PCK@0.1 | ms per align |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    rows = []
    for iterations, symmetric, refine in grid:
        options = {"iterations": iterations, "symmetric": bool(symmetric), "refine": bool(refine)}
        checks = evaluate.evaluate_stereo_demo(model, pairs, inference=options)
        row = {
            **options,
            "self_mean": checks["self_alignment"]["mean"],
            "self_worst": checks["self_alignment"]["worst_mean"],
            "self_worst_photo": checks["self_alignment"]["worst"],
            "stereo_error": checks["stereo"]["mean_error"],
            "stereo_identity_error": checks["stereo"]["identity"]["mean_error"],
            "stereo_pck05": checks["stereo"]["PCK@0.05"],
            "synthetic_pck10": checks["synthetic"]["metrics"]["PCK@0.1"],
            "align_ms": align_ms(model, stereo, args.repeats, **options),
        }
        rows.append(row)
        yes = {True: "yes", False: "no"}
        print(
            f"| {iterations}, {yes[bool(symmetric)]}, {yes[bool(refine)]} | {row['self_mean']:.2f} / "
            f"{row['self_worst']:.2f} | {row['stereo_error']:.1f} | {row['stereo_pck05']:.3f} | "
            f"{row['synthetic_pck10']:.3f} | {row['align_ms']:.0f} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
