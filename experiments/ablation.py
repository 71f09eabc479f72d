"""The paper's ablation at demo scale: four heads trained with the same budget, held-out PCK.

The heads (``A2Net(use_oac=..., use_attention=...)``):

* ``correlation regressor`` — CNNGeometric-style: the correlation's source positions as channels
  of a 1x1 convolution, the encoder, then a flattened linear regressor;
* ``+ OAC`` — the offset-aware correlation kernel instead of the 1x1 convolution;
* ``+ attention`` — softmax attention pooling instead of the flattened regressor;
* ``+ OAC + attention`` — A2Net.

Each is trained by :func:`a2net.train.train` with the options of ``a2net train --preset demo``
(same data stream, seed, initialisation seed, steps, schedule) except ``--max-steps`` (this
script's ``--steps``) and without the preset's identity pairs and consistency losses (the paper's
synthetic pairs only), then evaluated on the held-out synthetic pairs
(:func:`a2net.synthetic.heldout_synthetic_pairs`, PCK of :func:`a2net.metrics.synthetic_pck` at
alpha 0.05 / 0.1 / 0.15, L = image size) next to the identity transformation.

It measures accuracy, not speed (the benchmarks are in ``perf/``). Usage, from the checkout::

    python experiments/ablation.py --steps 1500 --out runs/ablation     # ~4x the time of one run

Writes ``OUT/ablation.json`` and ``OUT/ablation.md`` (the markdown table); runs are kept in
``OUT/<head>/`` and an interrupted ablation resumes them (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from a2net import checkpoint as ckpt
from a2net import fileio, geometry, metrics, synthetic, train
from a2net.model import normalize_images

#: (name, use_oac, use_attention), in the paper's order.
HEADS = (
    ("correlation regressor", False, False),
    ("+ OAC", True, False),
    ("+ attention", False, True),
    ("+ OAC + attention (A2Net)", True, True),
)
ALPHAS = (0.05, 0.1, 0.15)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def evaluate(model, pairs: dict, image_size: int, batch_size: int = 50) -> dict:
    """PCK of ``model`` (or of the identity when ``model`` is None) on held-out pairs."""
    thetas = []
    with torch.no_grad():
        for i in range(0, len(pairs["theta"]), batch_size):
            src, tgt = pairs["source"][i : i + batch_size], pairs["target"][i : i + batch_size]
            if model is None:
                thetas.append(geometry.identity_theta(model_kind(pairs), len(src)))
            else:
                thetas.append(model(normalize_images(src), normalize_images(tgt)).float())
    theta = torch.cat(thetas)
    return {f"pck@{a}": float(metrics.synthetic_pck(theta, pairs["theta"], image_size, alpha=a).mean()) for a in ALPHAS}


def model_kind(pairs: dict) -> str:
    return "affine" if pairs["theta"].shape[1] == 6 else "tps"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each head (same for all)")
    parser.add_argument("--out", default="runs/ablation", help="output folder")
    parser.add_argument("--pairs", type=int, default=200, help="held-out synthetic pairs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="continue the runs found in OUT")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(train.DEFAULTS, **train.PRESETS["demo"], preset="demo")
    options["max_steps"] = args.steps
    # The paper's recipe: only the large random warps, no identity pairs or consistency losses
    # (the demo preset's additions for real photo pairs), so the heads compare as in the paper.
    options.update(identity_share=0.0, near_identity_share=0.0, swap_weight=0.0, cycle_weight=0.0, self_weight=0.0)
    size = options["image_size"]
    pairs = synthetic.heldout_synthetic_pairs(options["geometric_model"], args.pairs, size)
    rows = [
        {
            "head": "identity (no alignment)",
            "use_oac": None,
            "use_attention": None,
            "seconds": 0.0,
            **evaluate(None, pairs, size),
        }
    ]
    print(f"identity: {rows[0]}", flush=True)
    for name, use_oac, use_attention in HEADS:
        run_dir = out / _slug(name)
        run_options = dict(options, use_oac=use_oac, use_attention=use_attention)
        resume = args.resume and (run_dir / "last").exists()
        done = resume and ckpt.load_checkpoint(run_dir / "last")["step"] >= args.steps
        result = {"seconds": float("nan")}
        if not done:
            result = train.train(run_options, run_dir, resume=resume, progress=False)
        model = ckpt.load_model(run_dir / "last")
        params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("FeatureExtraction."))
        row = {
            "head": name,
            "use_oac": use_oac,
            "use_attention": use_attention,
            "head_parameters": params,
            "seconds": round(result["seconds"], 1),
            **evaluate(model, pairs, size),
        }
        rows.append(row)
        print(row, flush=True)
    report = {
        "what": "held-out synthetic PCK (a2net.metrics.synthetic_pck, L = image size) of four heads trained with "
        "the demo preset's options and the same number of steps",
        "steps": args.steps,
        "demo_preset_steps": train.PRESETS["demo"]["max_steps"],
        "pairs": args.pairs,
        "held_out_images": synthetic.bundled_photos("heldout"),
        "options": options,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    fileio.atomic_write(out / "ablation.json", json.dumps(report, indent=2))
    fileio.atomic_write(out / "ablation.md", markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        f"Held-out synthetic affine pairs ({report['pairs']} pairs of {', '.join(report['held_out_images'])}; "
        f"PCK with L = image size), each head trained {report['steps']} steps with the demo preset's options "
        f"(the demo checkpoint: {report['demo_preset_steps']} steps).",
        "",
        "| head | OAC | attention | PCK@0.05 | PCK@0.1 | PCK@0.15 |",
        "|---|:-:|:-:|--:|--:|--:|",
    ]
    for row in report["rows"]:
        mark = {True: "yes", False: "no", None: "-"}
        lines.append(
            f"| {row['head']} | {mark[row['use_oac']]} | {mark[row['use_attention']]} | "
            f"{row['pck@0.05']:.3f} | {row['pck@0.1']:.3f} | {row['pck@0.15']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
