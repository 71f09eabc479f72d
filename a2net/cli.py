"""Command line: ``a2net demo|train|eval|align|export|convert-official`` (also ``python -m a2net ...``).

Every command is a pair of functions here, ``_add_<command>_arguments(parser)`` and
``_run_<command>(args)``, over the library modules. The library is imported inside the
``_run_*`` functions, and the options' choices are literals here (tests check them against the
library), so ``a2net --help`` and ``a2net <command> --help`` import neither torch nor torchvision.

**One error path.** A user's mistake ends the command with one line on stderr,
``a2net: error: <what>: expected ..., got ...`` naming the option or the file, and no traceback:

* exit code 2 for usage — an option out of range (argparse's checks and :class:`a2net.errors.UsageError`),
  an output that cannot be written (checked before any work);
* exit code 1 for bad data — any other exception: unreadable images, corrupted checkpoints,
  malformed dataset files (:class:`a2net.errors.InputError`, ``FileNotFoundError``, a missing
  optional dependency, ...);
* exit code 130 on Ctrl-C.

``--debug`` (anywhere on the command line) or ``A2NET_DEBUG=1`` lets the exception through with
its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from a2net.errors import UsageError

__all__ = ["main"]

#: Formats of the alignment figure (matplotlib's writers that need nothing more); no suffix: PNG.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
#: Formats of ``align --warped-out`` (PIL's writers); no suffix: PNG.
IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}
#: At most this many synthetic pairs (``--pairs``): they are built in memory at once (~0.7 MB each at 176 px).
MAX_PAIRS = 1000
# The choices of the options, as literals so that building a parser imports no torch
# (tests/test_cli_errors.py checks each against the library's constant named beside it).
BACKBONE_CHOICES = ("resnet101", "vgg16", "small_cnn")  # a2net.model.BACKBONES
TORCHVISION_BACKBONE_CHOICES = ("resnet101", "vgg16")  # a2net.model.TORCHVISION_BACKBONES
GEOMETRIC_MODEL_CHOICES = ("affine", "tps")  # a2net.model.GEOMETRIC_MODELS
MODE_CHOICES = ("affine", "tps", "affine+tps")  # a2net.inference.MODES
PRESET_CHOICES = ("demo", "paper")  # a2net.train.PRESETS
LR_SCHEDULE_CHOICES = ("constant", "cosine")  # a2net.train.LR_SCHEDULES
BENCHMARK_CHOICES = (  # a2net.evaluate.BENCHMARKS
    "pf-willow",
    "pf-pascal",
    "spair",
    "tss",
    "caltech",
    "synthetic",
    "stereo-demo",
)
#: Held-out synthetic pairs scored by default: by ``eval --benchmark synthetic``, and by ``demo``
#: and ``eval --benchmark stereo-demo``.
SYNTHETIC_PAIRS, DEMO_PAIRS = 100, 200


# --------------------------------------------------------------------------------------------
# Option types and checks run before any work


def _bounded(kind, low, high=None, strict=False):
    """An argparse ``type``: ``kind`` (int or float) within ``[low, high]`` (``low`` excluded if
    ``strict``); the message says what was expected and what was given."""
    bound = f"> {low}" if strict else f">= {low}"
    if high is not None:
        bound += f" and <= {high}"
    noun = "an int" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} {bound}, got {text!r}") from None
        if value != value or value < low or (strict and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {noun} {bound}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


_positive_int = _bounded(int, 1)
_non_negative_int = _bounded(int, 0)
_positive_float = _bounded(float, 0, strict=True)
_non_negative_float = _bounded(float, 0)
_fraction = _bounded(float, 0, 1)
_pair_count = _bounded(int, 1, MAX_PAIRS)


def _device(text: str | None):
    """``--device`` as a ``torch.device`` (default: CUDA when available); a usage error if unusable."""
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: expected cpu, cuda or cuda:<index>, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device: {text!r} asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: expected cpu, cuda or cuda:<index>, got {text!r}")
    return device


def _input_size(aligner, size) -> tuple[int, int] | None:
    """``--image-size`` checked against the model (large enough for the encoder), or None."""
    from a2net.errors import InputError
    from a2net.inference import input_size

    if size is None:
        return None
    try:
        return input_size(aligner, tuple(size))
    except InputError as err:
        raise UsageError(f"--image-size: {str(err).removeprefix('image_size: ')}") from None


def _add_model_arguments(parser: argparse.ArgumentParser, two_stage: str, size_help: str) -> None:
    """``--checkpoint``, ``--affine-checkpoint``/``--tps-checkpoint`` and ``--image-size H W``:
    which trained model a command runs, and at what input size."""
    parser.add_argument(
        "--checkpoint", default=None, help="checkpoint folder or model.safetensors (default: the embedded demo model)"
    )
    parser.add_argument("--affine-checkpoint", default=None, help=f"with --tps-checkpoint: {two_stage}")
    parser.add_argument("--tps-checkpoint", default=None, help=f"with --affine-checkpoint: {two_stage}")
    parser.add_argument("--image-size", type=_positive_int, nargs=2, default=None, metavar=("H", "W"), help=size_help)


def _add_inference_arguments(parser: argparse.ArgumentParser, refine: bool = True) -> None:
    """``--iterations``, ``--symmetric`` and (``refine``) ``--refine``: the inference options
    (a2net.inference)."""
    parser.add_argument(
        "--iterations",
        type=_positive_int,
        default=None,
        help="forward passes of the affine model, each composed with the last (default: the model's)",
    )
    parser.add_argument(
        "--symmetric",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the estimates of both directions in each pass (default: the model's)",
    )
    if not refine:
        return
    parser.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refine the affine theta on the grey levels, for two views of one scene (default: the model's)",
    )


def _inference_options(args: argparse.Namespace, aligners) -> dict:
    """The inference options given on the command line; a usage error when no aligner has an
    affine stage for them."""
    from a2net.inference import mode_of

    given = {k: v for k in ("iterations", "symmetric", "refine") if (v := getattr(args, k, None)) is not None}
    if given and all(mode_of(aligner) == "tps" for aligner in aligners):
        raise UsageError(
            f"--{next(iter(given))}: an option of the affine model (or of the affine stage of affine+TPS); "
            "the model given is a TPS model"
        )
    return given


def _figure_path(name: str, path: str) -> Path:
    """An alignment figure's path, checked before any work (format, writable folder, matplotlib)."""
    from a2net.errors import require_extra
    from a2net.fileio import check_output_path

    out = Path(path)
    check_output_path(name, out, FIGURE_SUFFIXES if out.suffix else None)
    require_extra("matplotlib", "the alignment figure")
    return out


# --------------------------------------------------------------------------------------------
# a2net demo


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo/alignment.png", help="the stereo pair's figure (default: %(default)s)")
    parser.add_argument(
        "--pairs",
        type=_pair_count,
        default=DEMO_PAIRS,
        help=f"held-out synthetic pairs scored, 1..{MAX_PAIRS} (default: %(default)s)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    # Batches of 8 small images: a second thread gains little, and on a busy machine its
    # synchronisation costs several times the work (2-core machine at load 3-4: 37 s with 2 threads,
    # 6.6 s with 1).
    parser.add_argument("--threads", type=_positive_int, default=1, help="CPU threads (default: %(default)s)")


#: Correspondences of the stereo pair drawn in the demo's figure.
FIGURE_POINTS = 12


def _run_demo(args: argparse.Namespace) -> int:
    """The embedded trained model on bundled photos with a known answer: the stereo pair against
    its disparity map, every photo aligned onto itself, held-out synthetic pairs; the stereo
    pair's figure."""
    from a2net.errors import require_extra

    out = _figure_path("--out", args.out)
    require_extra("skimage.data", "the demo (scikit-image's bundled photos)")

    import torch

    from a2net.alignment import align, save_alignment_figure
    from a2net.benchmarks import stereo_pair
    from a2net.checkpoint import DEFAULT_CHECKPOINT, load_default_model
    from a2net.evaluate import evaluate_stereo_demo, format_stereo_demo
    from a2net.inference import inference_defaults, mode_of
    from a2net.ops import backend

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    model = load_default_model(map_location=device)
    state = getattr(model, "checkpoint_state", {})
    history = state.get("history") or f"trained {state.get('step', '?')} steps by `a2net train --preset demo`"
    print(
        f"embedded model: {DEFAULT_CHECKPOINT.name} ({model.geometric_model}, backbone "
        f"{model.config['backbone']}, {model.image_size[0]}x{model.image_size[1]} input; {history}) on {device}, "
        f"backend {backend()}, {torch.get_num_threads()} thread(s)"
    )
    options = inference_defaults(model)
    print(
        "inference (the model's defaults; --iterations/--symmetric/--refine of eval and align change them): "
        + ", ".join(f"{k} {v}" for k, v in options.items())
    )

    start = time.perf_counter()
    checks = evaluate_stereo_demo(model, n_pairs=args.pairs, device=device)
    mode = mode_of(model)
    synthetic = checks["synthetic"]
    report = {
        "stereo": {mode: checks["stereo"]},
        "self_alignment": {mode: checks["self_alignment"]},
        "modes": {mode: synthetic},
        "synthetic_title": f"held-out synthetic pairs of the bundled photos ({synthetic['pairs']} pairs, "
        f"{synthetic['seconds']:.1f} s):",
    }
    print()
    print(format_stereo_demo(report))
    print(f"(the three checks: {time.perf_counter() - start:.1f} s)")

    # The stereo pair as a figure, with a few of its known correspondences.
    pair = stereo_pair(FIGURE_POINTS)
    result = align(
        pair["source"],
        pair["target"],
        model=model,
        source_points=pair["source_points"].float(),
        target_points=pair["target_points"].float(),
    )
    written = save_alignment_figure(result, out)
    errors = result.transfer_errors()
    identity = torch.linalg.vector_norm(pair["source_points"] - pair["target_points"], dim=0)
    print(
        f"\nfigure: {written} (the stereo pair: source = left view, target = right view; {FIGURE_POINTS} of its "
        f"correspondences, error {float(errors.mean()):.1f} px mean, without alignment {float(identity.mean()):.1f} px)"
    )
    return 0


# --------------------------------------------------------------------------------------------
# a2net train


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default=None,
        help="defaults of a recipe: 'demo' (the embedded model's, on CPU) or 'paper' (docs/design.md §7)",
    )
    p.add_argument("--geometric-model", choices=GEOMETRIC_MODEL_CHOICES, default=None)
    p.add_argument("--backbone", choices=BACKBONE_CHOICES, default=None)
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="'imagenet' (torchvision's, downloaded), a state_dict path, or 'none' (random init)",
    )
    p.add_argument("--backbone-seed", type=int, default=None, help="seed of the model's initialisation (0)")
    p.add_argument(
        "--fine-tune-backbone",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the backbone too (demo preset: on; the paper: off)",
    )
    p.add_argument(
        "--no-oac",
        dest="use_oac",
        action="store_false",
        default=None,
        help="ablation: plain 1x1 conv over the correlation instead of the OAC",
    )
    p.add_argument(
        "--no-attention",
        dest="use_attention",
        action="store_false",
        default=None,
        help="ablation: flatten + linear regressor instead of attention pooling",
    )
    p.add_argument("--image-size", type=_positive_int, default=None, help="square input size (pixels, >= 112)")
    p.add_argument(
        "--resize",
        type=_positive_int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="images are resized to this before padding and cropping (480 640)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=None, help="pairs per step (per process)")
    p.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate")
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULE_CHOICES,
        default=None,
        help="constant (the paper) or cosine decay to 0 at the last step",
    )
    p.add_argument("--max-steps", type=_positive_int, default=None, help="train until this step")
    p.add_argument(
        "--epochs",
        type=_positive_float,
        default=None,
        help="train for this many passes over the images (sets --max-steps)",
    )
    p.add_argument(
        "--data", default=None, help="image folder (recursive jpg/png), or bundled:training (scikit-image photos)"
    )
    p.add_argument("--thetas", default=None, help="CSV of image name + 6/18 theta numbers (the authors' files)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random crop + flip of each image (demo preset: on)",
    )
    p.add_argument(
        "--identity-share",
        type=_fraction,
        default=None,
        help="fraction of the pairs whose theta is the identity (affine; demo preset: 0.1; else 0)",
    )
    p.add_argument(
        "--near-identity-share",
        type=_fraction,
        default=None,
        help="fraction of the pairs with a small viewpoint change (affine; demo preset: 0.3; else 0)",
    )
    p.add_argument(
        "--swap-weight",
        type=_non_negative_float,
        default=None,
        help="weight of the loss of each pair swapped, against the inverse theta (affine; demo preset: 1; else 0)",
    )
    p.add_argument(
        "--cycle-weight",
        type=_non_negative_float,
        default=None,
        help="weight of the loss theta(A,B) o theta(B,A) = identity (affine; demo preset: 0.5; else 0)",
    )
    p.add_argument(
        "--self-weight",
        type=_non_negative_float,
        default=None,
        help="weight of the loss theta(A,A) = identity, each image against itself (demo preset: 1; else 0)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="start from the weights of this checkpoint (folder or .safetensors; the same model config)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the data stream (0)")
    p.add_argument("--output-dir", default=None, help="where metrics.jsonl and last/ go (runs/a2net)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, help="save last/ every N steps")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUTPUT_DIR from its last/ (an error when it has no checkpoint yet)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in OUTPUT_DIR, moving its run (last/, metrics.jsonl) into replaced-<time>/; "
        "without --resume or --overwrite a directory holding a run is refused",
    )
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--num-workers", type=_non_negative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bar")


def _run_train(args: argparse.Namespace) -> int:
    """``a2net train``: resolve the options (preset, explicit, the resumed run's) and train."""
    import torch

    from a2net import train
    from a2net.fileio import check_output_dir

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    output_dir = check_output_dir("--output-dir", args.output_dir or train.DEFAULTS["output_dir"])
    stored = train._stored_run(output_dir) if args.resume else None
    options = train.resolve_options(args, stored)
    train.train(
        options,
        output_dir,
        resume=args.resume,
        overwrite=getattr(args, "overwrite", False),
        device=_device(args.device),
        amp=args.amp,
        compile=args.compile,
        num_workers=args.num_workers,
        progress=args.progress,
    )
    return 0


# --------------------------------------------------------------------------------------------
# a2net eval


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=BENCHMARK_CHOICES)
    parser.add_argument(
        "--data",
        default=None,
        help="the benchmark's folder (for synthetic: a folder of images; default the held-out bundled photos)",
    )
    parser.add_argument("--output", default=None, help="results JSON to write (required, except for stereo-demo)")
    _add_model_arguments(parser, "evaluate affine, TPS and affine+TPS", "network input size (default: the model's)")
    parser.add_argument(
        "--alphas",
        type=_positive_float,
        nargs="+",
        default=None,
        help="PCK tolerances (default 0.05 0.1 0.15; TSS 0.05)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train", "all", "trn"),
        help="PF-PASCAL: test, val, train or all; SPair-71k: test, val or trn (default: test)",
    )
    parser.add_argument(
        "--reference",
        default="bbox",
        choices=("bbox", "image", "keypoints"),
        help="PF-PASCAL and SPair-71k PCK reference length (default: object bounding box; SPair-71k measures it "
        "in the target image)",
    )
    parser.add_argument(
        "--pairs",
        type=_pair_count,
        default=None,
        help=f"synthetic, stereo-demo: number of held-out pairs, 1..{MAX_PAIRS} (default {SYNTHETIC_PAIRS}, "
        f"stereo-demo {DEMO_PAIRS})",
    )
    parser.add_argument(
        "--pair-model",
        default=None,
        choices=("affine", "tps"),
        help="synthetic: kind of the pairs' random thetas (default: tps for a TPS model, else affine)",
    )
    _add_inference_arguments(parser)
    parser.add_argument("--batch-size", type=_positive_int, default=8)
    parser.add_argument(
        "--num-workers", type=_non_negative_int, default=0, help="DataLoader workers reading the images"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _checkpoint_record(model, path, embedded: bool = False) -> dict:
    state = getattr(model, "checkpoint_state", None) or {}
    return {"path": str(Path(path).resolve()), "embedded": embedded, "step": state.get("step")}


def _eval_aligners(args: argparse.Namespace, device) -> tuple[dict, dict]:
    """``{mode: aligner}`` and ``{geometric model: {"path", "embedded", "step"}}`` for the report."""
    from a2net import checkpoint as ckpt
    from a2net.inference import load_aligner, mode_of

    if args.affine_checkpoint is not None or args.tps_checkpoint is not None:
        two = load_aligner(
            affine_checkpoint=args.affine_checkpoint,
            tps_checkpoint=args.tps_checkpoint,
            checkpoint=args.checkpoint,
            device=device,
        )
        return (
            {"affine": two.affine, "tps": two.tps, "affine+tps": two},
            {
                "affine": _checkpoint_record(two.affine, args.affine_checkpoint),
                "tps": _checkpoint_record(two.tps, args.tps_checkpoint),
            },
        )
    model = load_aligner(checkpoint=args.checkpoint, device=device)
    if args.checkpoint is not None:
        record = _checkpoint_record(model, args.checkpoint)
    else:
        record = _checkpoint_record(model, ckpt.DEFAULT_CHECKPOINT, embedded=True)
    return {mode_of(model): model}, {mode_of(model): record}


def _eval_dataset(args: argparse.Namespace, aligners: dict):
    """``(dataset, title)`` of the benchmark; for synthetic, the held-out pairs' batch dict."""
    from a2net import benchmarks, synthetic
    from a2net.evaluate import default_pair_model
    from a2net.inference import input_size

    if args.benchmark in ("synthetic", "stereo-demo"):
        size = input_size(next(iter(aligners.values())), args.image_size and tuple(args.image_size))
        pair_model = args.pair_model or default_pair_model(list(aligners.values())[-1])
        images = "bundled:heldout" if args.data is None else args.data
        n_pairs = args.pairs or (SYNTHETIC_PAIRS if args.benchmark == "synthetic" else DEMO_PAIRS)
        pairs = synthetic.heldout_synthetic_pairs(pair_model, n_pairs=n_pairs, image_size=size, images=images)
        where = "held-out bundled photos" if args.data is None else str(args.data)
        return pairs, f"synthetic {pair_model} pairs of the {where}"
    if args.benchmark == "pf-willow":
        return benchmarks.PFWillowDataset(args.data), "PF-WILLOW"
    if args.benchmark == "pf-pascal":
        return (
            benchmarks.PFPascalDataset(args.data, split=args.split, reference=args.reference),
            f"PF-PASCAL ({args.split} split)",
        )
    if args.benchmark == "spair":
        from a2net.spair import SPairDataset

        return SPairDataset(args.data, split=args.split, reference=args.reference), f"SPair-71k ({args.split} split)"
    if args.benchmark == "tss":
        return benchmarks.TSSDataset(args.data), "TSS"
    return benchmarks.CaltechDataset(args.data), "Caltech-101"


def _run_eval(args: argparse.Namespace) -> int:
    """``a2net eval``: evaluate, print the tables, write the JSON report."""
    if args.benchmark == "stereo-demo":
        if args.data is not None:
            raise UsageError(f"--data: --benchmark stereo-demo uses the bundled photos only, got {args.data!r}")
        from a2net.errors import require_extra

        require_extra("skimage.data", "--benchmark stereo-demo (scikit-image's bundled photos)")
    elif args.data is None and args.benchmark != "synthetic":
        raise UsageError(f"--data: required for --benchmark {args.benchmark} (the dataset's folder)")
    if args.output is None and args.benchmark != "stereo-demo":
        raise UsageError(f"--output: required for --benchmark {args.benchmark} (the results JSON to write)")
    if args.benchmark == "spair" and args.split not in ("test", "val", "trn"):
        raise UsageError(f"--split: expected test, val or trn (SPair-71k's splits), got {args.split!r}")
    if args.benchmark == "pf-pascal" and args.split == "trn":
        raise UsageError("--split: expected test, val, train or all (PF-PASCAL's splits), got 'trn'")
    from a2net.fileio import check_output_path

    if args.output is not None:
        check_output_path("--output", args.output)

    import datetime

    import torch

    import a2net
    from a2net.errors import InputError
    from a2net.evaluate import (
        KEYPOINT_ALPHAS,
        TSS_ALPHAS,
        evaluate_caltech,
        evaluate_keypoints,
        evaluate_stereo_demo,
        evaluate_synthetic,
        evaluate_tss,
        format_results,
        format_stereo_demo,
    )
    from a2net.fileio import write_json
    from a2net.inference import DEFAULT_INFERENCE, inference_defaults, input_size

    device = _device(args.device)
    aligners, checkpoints = _eval_aligners(args, device)
    image_size = None
    for aligner in aligners.values():  # too small for the encoder: an error before any image is read
        image_size = _input_size(aligner, args.image_size)
    inference = _inference_options(args, aligners.values())
    dataset, title = _eval_dataset(args, aligners)
    common = dict(
        image_size=image_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        inference=inference,
    )
    results, real = {}, {"stereo": {}, "self_alignment": {}}
    for mode, aligner in aligners.items():
        if args.benchmark in ("pf-willow", "pf-pascal"):
            results[mode] = evaluate_keypoints(aligner, dataset, alphas=args.alphas or KEYPOINT_ALPHAS, **common)
        elif args.benchmark == "spair":
            from a2net.spair import evaluate_spair

            results[mode] = evaluate_spair(aligner, dataset, alphas=args.alphas or KEYPOINT_ALPHAS, **common)
        elif args.benchmark == "tss":
            results[mode] = evaluate_tss(aligner, dataset, alphas=args.alphas or TSS_ALPHAS, **common)
        elif args.benchmark == "caltech":
            results[mode] = evaluate_caltech(aligner, dataset, **common)
        elif args.benchmark == "stereo-demo":
            common.pop("num_workers", None)
            checks = evaluate_stereo_demo(aligner, dataset, alphas=args.alphas, **common)
            results[mode] = checks["synthetic"]
            real["stereo"][mode], real["self_alignment"][mode] = checks["stereo"], checks["self_alignment"]
        else:
            common.pop("num_workers", None)
            results[mode] = evaluate_synthetic(aligner, dataset, alphas=args.alphas or KEYPOINT_ALPHAS, **common)
    for mode, result in results.items():
        if result["scored"] == 0:
            raise InputError(
                f"--data: none of the {result['pairs']} pairs of {title} could be scored in mode {mode} "
                "(no valid keypoint, known flow or mask); nothing written"
            )
    first = next(iter(results.values()))
    report = {
        "benchmark": args.benchmark,
        "title": f"{title}: {first['pairs']} pairs",
        "data": None if args.data is None else str(Path(args.data).resolve()),
        "checkpoint": checkpoints,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "a2net_version": a2net.__version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "image_size": list(input_size(next(iter(aligners.values())), common["image_size"])),
        "per_class": args.benchmark in ("pf-pascal", "spair", "tss"),
        "modes": results,
    }
    report["inference"] = {  # what each mode ran with (a TPS model always makes one plain pass)
        mode: DEFAULT_INFERENCE if mode == "tps" else inference_defaults(aligner, **inference)
        for mode, aligner in aligners.items()
    }
    for key in ("reference_kind", "reference_description", "alphas", "pair_model", "grid_size"):
        if key in first:
            report[key] = first[key]
    if args.benchmark in ("pf-pascal", "spair"):
        report["split"] = args.split
    if args.benchmark == "spair":
        from a2net.spair import format_spair

        report["transfer"] = first["transfer"]
        print(format_results(report) + "\n\n" + format_spair(report))
    elif args.benchmark == "stereo-demo":
        report.update(real, title=f"the stereo pair, the bundled photos aligned onto themselves and {title}")
        print(format_stereo_demo({**report, "synthetic_title": f"{title}: {first['pairs']} pairs"}))
    else:
        print(format_results(report))
    if args.output is not None:
        written = write_json(args.output, report)
        print(f"wrote {written}")
    return 0


# --------------------------------------------------------------------------------------------
# a2net align


def _parse_points(text: str | None):
    """``"x1,y1;x2,y2;..."`` (1-based pixels) -> ``(2, N)`` float64 tensor."""
    import torch

    if text is None:
        return None
    try:
        pairs = [tuple(float(v) for v in item.split(",")) for item in text.split(";") if item.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'x1,y1;x2,y2;...' in 1-based pixels, got {text!r}") from err
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected 'x1,y1;x2,y2;...' in 1-based pixels, got {text!r}")
    return torch.tensor(pairs, dtype=torch.float64).t()


def _add_align_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", help="source image (the one that is warped)")
    parser.add_argument("target", nargs="?", help="target image")
    parser.add_argument(
        "--out", default=None, help=f"figure to write ({', '.join(s.lstrip('.') for s in FIGURE_SUFFIXES)})"
    )
    pairs = parser.add_argument_group("many pairs (instead of SOURCE TARGET --out)")
    pairs.add_argument(
        "--pairs",
        default=None,
        metavar="PAIRS.csv",
        help="pair list: columns source,target[,target_points] (paths relative to the CSV's folder)",
    )
    pairs.add_argument("--out-dir", default=None, help="with --pairs: results.jsonl (resumed if present), figures/")
    pairs.add_argument(
        "--batch-size", type=_positive_int, default=None, help="with --pairs: pairs per forward pass (default 8)"
    )
    pairs.add_argument(
        "--num-workers", type=_non_negative_int, default=None, help="with --pairs: DataLoader workers (default 2)"
    )
    pairs.add_argument("--figures", action="store_true", help="with --pairs: one alignment figure per pair")
    pairs.add_argument("--no-progress", action="store_true", help="with --pairs: no progress bar")
    _add_model_arguments(parser, "affine+TPS alignment", "network input size (default: the model's)")
    parser.add_argument(
        "--geometric-model",
        default=None,
        choices=MODE_CHOICES,
        help="check that the model is of this kind (affine, tps or affine+tps)",
    )
    parser.add_argument(
        "--source-points",
        type=_parse_points,
        default=None,
        metavar="X,Y;X,Y;...",
        help="keypoints of the source image, 1-based pixels",
    )
    parser.add_argument(
        "--target-points",
        type=_parse_points,
        default=None,
        metavar="X,Y;X,Y;...",
        help="keypoints of the target image, 1-based pixels; drawn with their transfer",
    )
    parser.add_argument(
        "--warped-out",
        default=None,
        help=f"also write the warped source alone ({', '.join(s.lstrip('.') for s in IMAGE_FORMATS)})",
    )
    _add_inference_arguments(parser)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _run_align(args: argparse.Namespace) -> int:
    """``a2net align``: align two images, print theta, write the figure (or, with ``--pairs``,
    align a pair list: :func:`_run_align_pairs`)."""
    if args.pairs is not None:
        return _run_align_pairs(args)
    for option in ("out_dir", "batch_size", "num_workers", "figures"):
        if getattr(args, option) is not None and getattr(args, option) is not False:
            raise UsageError(f"--{option.replace('_', '-')}: only with --pairs (aligning a pair list)")
    if args.source is None or args.target is None or args.out is None:
        raise UsageError("expected SOURCE TARGET --out FIGURE (one pair) or --pairs PAIRS.csv --out-dir DIR")
    from a2net.fileio import check_output_path

    out = _figure_path("--out", args.out)
    if args.warped_out is not None:
        warped_out = Path(args.warped_out)
        check_output_path("--warped-out", warped_out, tuple(IMAGE_FORMATS) if warped_out.suffix else None)

    import io

    import torch

    from a2net.alignment import align, save_alignment_figure
    from a2net.fileio import atomic_write
    from a2net.inference import as_image, load_aligner

    aligner = load_aligner(
        args.checkpoint,
        args.affine_checkpoint,
        args.tps_checkpoint,
        geometric_model=args.geometric_model,
        device=_device(args.device),
    )
    inference = _inference_options(args, [aligner])
    source, target = as_image(args.source, "source"), as_image(args.target, "target")
    image_size = _input_size(aligner, args.image_size)
    result = align(
        source,
        target,
        model=aligner,
        image_size=image_size,
        source_points=args.source_points,
        target_points=args.target_points,
        **inference,
    )
    thetas = (
        {"affine": result.chain[-1], "tps": result.chain[0]}
        if result.mode == "affine+tps"
        else {result.mode: result.chain[0]}
    )
    for kind, theta in thetas.items():
        print(f"theta {kind} ({theta.shape[1]}): [" + ", ".join(f"{v:+.4f}" for v in theta[0].tolist()) + "]")
    errors = result.transfer_errors()
    if errors is not None:
        print(
            f"keypoint transfer error: mean {float(torch.nanmean(errors)):.2f} px over "
            f"{int(torch.isfinite(errors).sum())} keypoints"
        )
    written = save_alignment_figure(result, out)
    print(f"wrote {written}")
    if args.warped_out is not None:
        from PIL import Image

        pixels = (result.warped.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=IMAGE_FORMATS.get(warped_out.suffix.lower(), "PNG"))
        warped_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(warped_out, buffer.getvalue())
        print(f"wrote {warped_out}")
    return 0


def _run_align_pairs(args: argparse.Namespace) -> int:
    """``a2net align --pairs PAIRS.csv --out-dir DIR``: every pair of the list into DIR/results.jsonl."""
    if args.source is not None:
        raise UsageError("SOURCE TARGET: expected either SOURCE TARGET --out FIGURE or --pairs PAIRS.csv, got both")
    for option in ("out", "warped_out", "source_points", "target_points"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option.replace('_', '-')}: not with --pairs (each pair's figure: --figures)")
    if args.out_dir is None:
        raise UsageError("--out-dir: required with --pairs (where results.jsonl goes)")
    from a2net.errors import require_extra
    from a2net.fileio import check_output_dir

    check_output_dir("--out-dir", args.out_dir)
    if args.figures:
        require_extra("matplotlib", "--figures")

    import torch

    from a2net.batch import align_pairs
    from a2net.inference import load_aligner

    device = _device(args.device)
    aligner = load_aligner(
        args.checkpoint,
        args.affine_checkpoint,
        args.tps_checkpoint,
        geometric_model=args.geometric_model,
        device=device,
    )
    batch_size = 8 if args.batch_size is None else args.batch_size
    workers = 2 if args.num_workers is None else args.num_workers
    summary = align_pairs(
        args.pairs,
        args.out_dir,
        aligner,
        image_size=_input_size(aligner, args.image_size),
        batch_size=batch_size,
        num_workers=workers,
        figures=args.figures,
        progress=not args.no_progress,
        inference=_inference_options(args, [aligner]),
    )
    print(
        f"{summary['pairs']} pairs: {summary['aligned']} aligned, {summary['failed']} failed, "
        f"{summary['done_before']} done before -> {summary['results']}"
    )
    print(
        f"{summary['pairs_per_s']:.1f} pairs/s ({summary['aligned'] + summary['failed']} pairs in "
        f"{summary['seconds']:.1f} s; batch {batch_size}, {workers} workers, {device}, "
        f"{torch.get_num_threads()} threads)"
    )
    return 0


# --------------------------------------------------------------------------------------------
# a2net export


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the program to write (FILE.pt2, torch.export.save)")
    _add_model_arguments(parser, "export affine+TPS", "the program's input size (default: the model's)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default: the PyTorch reference, aten ops only) or cuda (the Triton kernels as a2net custom ops)",
    )
    _add_inference_arguments(parser, refine=False)


def _run_export(args: argparse.Namespace) -> int:
    """``a2net export``: write a torch.export program of the model, say what it expects."""
    from a2net.fileio import check_output_path

    out = check_output_path("--out", args.out, (".pt2",))
    device = _device(args.device)

    from a2net.export import export_aligner, exported_options, graph_ops
    from a2net.inference import input_size, load_aligner, mode_of

    aligner = load_aligner(args.checkpoint, args.affine_checkpoint, args.tps_checkpoint, device=device)
    size = _input_size(aligner, args.image_size) or input_size(aligner)
    options = _inference_options(args, [aligner])
    program = export_aligner(aligner, out, image_size=size, device=device, **options)
    ops = graph_ops(program)
    custom = sorted(op for op in ops if op.startswith("a2net."))
    mode = mode_of(aligner)
    output = (
        "(theta_affine (B, 6), theta_tps (B, 18))"
        if mode == "affine+tps"
        else f"theta (B, {6 if mode == 'affine' else 18})"
    )
    print(f"exported the {mode} aligner -> {out} ({out.stat().st_size / 2**20:.1f} MB)")
    print(
        f"inputs: source, target: (B, 3, {size[0]}, {size[1]}) float32 RGB in [0, 1] on {device}, any B >= 1 "
        f"(ImageNet normalisation inside); output: {output}, target -> source"
    )
    inference = exported_options(aligner, **options)
    passes = inference["iterations"]
    print(
        f"inference: {f'{passes} composed passes' if passes > 1 else 'one pass'}"
        + (", each the symmetric estimate" if inference["symmetric"] else "")
        + " (--iterations / --symmetric; refinement is not exported: apply a2net.inference.refine_affine)"
    )
    print(
        f"graph: {sum(ops.values())} op calls; a2net custom ops: "
        + (", ".join(custom) if custom else "none (the PyTorch reference: runs with PyTorch alone)")
    )
    load = "import a2net.ops; " if custom else ""
    print(f"load: {load}program = torch.export.load({str(out)!r}).module(); theta = program(source, target)")
    return 0


# --------------------------------------------------------------------------------------------
# a2net convert-official


def _add_convert_official_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="the authors' checkpoint file (e.g. resnet_affine_oack027.pth.tar)")
    parser.add_argument("dst", help="checkpoint directory to write (this library's format)")
    parser.add_argument(
        "--geometric-model",
        default=None,
        choices=GEOMETRIC_MODEL_CHOICES,
        help="check the checkpoint is this model (default: read from its weights)",
    )
    parser.add_argument(
        "--backbone",
        default=None,
        choices=TORCHVISION_BACKBONE_CHOICES,
        help="check the checkpoint has this backbone (default: read from its weights)",
    )


def _run_convert_official(args: argparse.Namespace) -> int:
    """``a2net convert-official``: convert, print what was written."""
    from a2net.fileio import check_output_dir

    check_output_dir("dst", args.dst)

    from a2net.checkpoint import read_state
    from a2net.official import convert_official

    out = convert_official(args.src, args.dst, geometric_model=args.geometric_model, backbone=args.backbone)
    config = read_state(out)["config"]
    print(
        f"converted {args.src} -> {out}: A2Net({config['geometric_model']!r}, backbone={config['backbone']!r}, "
        f"oac_layout={config['oac_layout']!r}, image_size={tuple(config['image_size'])})"
    )
    return 0


# --------------------------------------------------------------------------------------------
# The parser

#: command -> (help, adds its options, runs it)
_COMMANDS = {
    "demo": (
        "check the embedded trained model on bundled photos with a known answer (stereo, self, synthetic)",
        _add_demo_arguments,
        _run_demo,
    ),
    "train": ("train A2Net on synthetic pairs (self-supervised)", _add_train_arguments, _run_train),
    "eval": ("evaluate a model on a benchmark or on held-out synthetic pairs", _add_eval_arguments, _run_eval),
    "align": (
        "align a source image onto a target image and draw the result, or a list of pairs (--pairs)",
        _add_align_arguments,
        _run_align,
    ),
    "export": ("export a trained model as a torch.export program (.pt2)", _add_export_arguments, _run_export),
    "convert-official": (
        "convert the authors' published *.pth.tar checkpoint",
        _add_convert_official_arguments,
        _run_convert_official,
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line: ``a2net: error: <message> (see: a2net <command> --help)``."""

    def error(self, message: str):
        self.exit(2, f"a2net: error: {message} (see: {self.prog} --help)\n")


def _message(err: BaseException) -> str:
    """One line for an exception: its message; for one re-raised from a DataLoader worker (whose
    message holds the worker's traceback), the original exception's own line."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if any(line.startswith("Original Traceback") for line in lines):
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return " ".join(lines)


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the Python traceback of an error (also A2NET_DEBUG=1)",
    )
    parser = _Parser(prog="a2net", description="A2Net semantic alignment", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, add_arguments, run) in _COMMANDS.items():
        command = sub.add_parser(name, help=text, description=text, parents=[common])
        if name in argv:  # only the options of the command being run are built
            add_arguments(command)
        command.set_defaults(func=run)
    return parser


def main(argv=None) -> int:
    """``a2net COMMAND ...``: parse ``argv`` (default ``sys.argv[1:]``), run the command, return its
    exit code: 0, 2 for a usage error, 1 for bad data or any other error, 130 on Ctrl-C (see the
    module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("A2NET_DEBUG", "") not in ("", "0")
    try:
        args = _build_parser(argv).parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("a2net: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        message = _message(err)
        if not isinstance(err, (ValueError, OSError, ImportError)):  # not an anticipated input error
            message = f"{type(err).__name__}: {message} (--debug shows the traceback)"
        print(f"a2net: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
