"""Command line: ``a2net demo|train|eval|align|...`` (also ``python -m a2net ...``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def demo(args: argparse.Namespace) -> int:
    """Align held-out bundled photos with the embedded trained model; figure and PCK."""
    import torch

    from a2net import data, geometry
    from a2net.alignment import align, save_alignment_figure
    from a2net.checkpoint import DEFAULT_CHECKPOINT, load_default_model
    from a2net.evaluate import evaluate_synthetic, format_results
    from a2net.ops import backend

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_default_model(map_location=device)
    state = getattr(model, "checkpoint_state", {})
    print(f"embedded model: {DEFAULT_CHECKPOINT.name} ({model.geometric_model}, backbone "
          f"{model.config['backbone']}, {model.image_size[0]}x{model.image_size[1]} input, trained "
          f"{state.get('step', '?')} steps by `a2net train --preset demo`) on {device}, backend {backend()}")

    # 1. PCK on held-out synthetic pairs (photos never seen in training, known transformations).
    start = time.perf_counter()
    report = evaluate_synthetic(model, n_pairs=args.pairs, device=device, progress=False)
    print(f"\nheld-out synthetic pairs of the bundled photos ({args.pairs} pairs, "
          f"{time.perf_counter() - start:.1f} s):")
    print(format_results({"benchmark": "synthetic", "modes": {report["mode"]: report}}))

    # 2. One held-out pair as a figure: the true transformation's keypoints vs the predicted ones.
    pairs = data.heldout_synthetic_pairs(model.geometric_model, n_pairs=args.index + 1, image_size=model.image_size)
    source, target, theta = pairs["source"][args.index], pairs["target"][args.index], pairs["theta"][args.index]
    h, w = target.shape[1:]
    axis = torch.linspace(-0.7, 0.7, 4, dtype=torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack((xs.flatten(), ys.flatten()))[None]
    size = torch.tensor([[h, w]])
    target_points = geometry.normalized_to_pixels(grid, size)[0]
    source_points = geometry.normalized_to_pixels(geometry.transform_points(theta[None].double(), grid), size)[0]
    start = time.perf_counter()
    result = align(source, target, model=model, source_points=source_points.float(), target_points=target_points.float())
    elapsed = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_alignment_figure(result, out)
    errors = result.transfer_errors()
    inside = ~torch.isnan(errors)  # keypoints whose true source position lies inside the image
    identity = torch.linalg.vector_norm(source_points - target_points, dim=0)[inside]
    print(f"\npair {args.index} ({pairs['name'][args.index]}): aligned in {elapsed * 1e3:.0f} ms; keypoint "
          f"error {errors[inside].mean():.1f} px mean over {int(inside.sum())} points inside the source "
          f"(without alignment: {identity.mean():.1f} px)")
    print(f"figure: {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="a2net", description="A2Net semantic alignment")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="align held-out bundled photos with the embedded trained model")
    p.add_argument("--out", default="demo/alignment.png", help="the alignment figure (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=200, help="held-out synthetic pairs scored (default: %(default)s)")
    p.add_argument("--index", type=int, default=3, help="which held-out pair the figure shows (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=demo)
    from a2net import alignment, evaluate, official, train

    p = sub.add_parser("train", help="train A2Net on synthetic pairs (self-supervised)")
    train.add_arguments(p).set_defaults(func=train.run)
    p = sub.add_parser("eval", help="evaluate a model on a benchmark or on held-out synthetic pairs")
    evaluate.add_arguments(p).set_defaults(func=evaluate.run)
    p = sub.add_parser("align", help="align a source image onto a target image and draw the result")
    alignment.add_arguments(p).set_defaults(func=alignment.run)
    p = sub.add_parser("convert-official", help="convert the authors' published *.pth.tar checkpoint")
    official.add_arguments(p)
    p.set_defaults(func=official.run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
