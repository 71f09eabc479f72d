"""Command line: ``a2net demo|train|eval|align|...`` (also ``python -m a2net ...``)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def demo(args: argparse.Namespace) -> int:
    """Align two bundled photos with the full model (random head, untrained backbone)."""
    import torch

    from a2net import A2Net, normalize_images
    from a2net.images import DEMO_PAIR, bundled_image
    from a2net.ops import backend

    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = bundled_image(DEMO_PAIR[0])[None]
    target = bundled_image(DEMO_PAIR[1])[None]
    model = A2Net(args.geometric_model, backbone=args.backbone).to(device).eval()
    src = normalize_images(source, size=model.image_size).to(device)
    tgt = normalize_images(target, size=model.image_size).to(device)
    print(f"A2Net({args.geometric_model}, {args.backbone}) on {device}, backend {backend()}: "
          f"aligning scikit-image photos {DEMO_PAIR[0]!r} -> {DEMO_PAIR[1]!r} at {model.image_size}")
    print("(untrained: random backbone and head; the trained demo replaces this)")
    times = []
    with torch.no_grad():
        model(src, tgt)  # warm-up: first-call allocations and kernel selection
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            theta = model(src, tgt)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    values = ", ".join(f"{v:+.4f}" for v in theta[0].tolist())
    print(f"theta ({theta.shape[1]}): [{values}]")
    print(f"forward time: median {statistics.median(times) * 1e3:.1f} ms over {len(times)} runs "
          f"(min {min(times) * 1e3:.1f} ms; {torch.get_num_threads()} CPU threads)" if device.type == "cpu" else
          f"forward time: median {statistics.median(times) * 1e3:.1f} ms over {len(times)} runs")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="a2net", description="A2Net semantic alignment")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="align two bundled photos with the full model")
    p.add_argument("--geometric-model", default="affine", choices=["affine", "tps"])
    p.add_argument("--backbone", default="resnet101", choices=["resnet101", "vgg16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes (median reported)")
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
