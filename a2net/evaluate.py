"""Evaluation on the semantic alignment benchmarks (docs/design.md §8), on held-out synthetic
pairs and on real photos with a known answer (``a2net eval``).

Every ``evaluate_*`` function takes a model — an :class:`a2net.A2Net` (mode ``"affine"`` or
``"tps"``) or a :class:`a2net.TwoStageAligner` (``"affine+tps"``) — and a dataset of
:mod:`a2net.benchmarks` (or held-out pairs of :mod:`a2net.synthetic`), runs the model on batches
of pairs resized to the network input (:func:`a2net.benchmarks.collate`, then ImageNet normalisation)
and scores every pair at its original resolution. It returns a JSON-ready dict::

    {"mode": "affine", "pairs": 299, "scored": 299,
     "metrics": {"PCK@0.05": ..., "PCK@0.1": ..., "PCK@0.15": ...},   # mean over scored pairs
     "per_class": {"cat": {"pairs": 15, "metrics": {...}}, ...},
     "class_average": {...},                                             # mean of the per-class means
     "per_pair": [{"source": ..., "target": ..., "category": ..., "PCK@0.1": ..., ...}, ...],
     ...benchmark-specific fields (reference_kind, alphas, baseline)}

A pair with nothing to score (no valid keypoint, no known flow) is kept in ``per_pair`` with
NaN (``null`` in JSON) and left out of the means; ``scored`` counts the others.

* keypoints (PF-WILLOW, PF-PASCAL): the *target* keypoints are normalised with the target size,
  mapped through theta (through TPS then affine for affine+TPS) into the source, denormalised with
  the source size and compared with the source keypoints; PCK with the dataset's reference length
  ``L`` (``reference_kind`` says which, always reported);
* TSS: the dense flow of theta on the target grid (:func:`a2net.metrics.theta_to_flow`) against
  the ground truth over the foreground, ``L = max(H, W)`` of the source;
* Caltech-101: the source mask warped with theta onto the target grid, label-transfer accuracy and
  IoU with the target mask, and the localisation error of the flow;
* synthetic (the held-out pairs of :func:`a2net.synthetic.heldout_synthetic_pairs`): a grid of
  target points mapped by the true and by the predicted theta, PCK with ``L = max(H, W)`` of the
  pair images (:func:`a2net.metrics.synthetic_pck`), next to the identity transformation as a
  baseline;
* real photos (``stereo-demo``, :func:`evaluate_stereo_demo`): the bundled stereo pair against its
  disparity map (:func:`evaluate_stereo`), every bundled photo aligned onto itself
  (:func:`evaluate_self_alignment`), and the held-out synthetic pairs.

The models run through the helpers of :mod:`a2net.inference`, with the inference options the
model's checkpoint names unless ``inference`` overrides some
(:func:`a2net.inference.inference_defaults`). ``a2net eval`` (:mod:`a2net.cli`)
prints :func:`format_results` and writes the report with :func:`a2net.fileio.write_json`.
"""

from __future__ import annotations

import functools
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from a2net import geometry, metrics, synthetic
from a2net.benchmarks import STEREO_POINTS, collate, stereo_pair
from a2net.inference import (
    inference_defaults,
    input_size,
    mode_of,
    model_device,
    predict_chain,
    transfer_points,
    warp_chain,
)
from a2net.model import normalize_images

__all__ = [
    "BENCHMARKS",
    "KEYPOINT_ALPHAS",
    "SELF_ALIGNMENT_GOAL",
    "SELF_ALIGNMENT_GRID",
    "STEREO_ALPHAS",
    "TSS_ALPHAS",
    "evaluate_caltech",
    "evaluate_keypoints",
    "evaluate_self_alignment",
    "evaluate_stereo",
    "evaluate_stereo_demo",
    "evaluate_synthetic",
    "evaluate_tss",
    "default_pair_model",
    "format_results",
    "format_stereo_demo",
]

#: Benchmarks of ``a2net eval``.
BENCHMARKS = ("pf-willow", "pf-pascal", "spair", "tss", "caltech", "synthetic", "stereo-demo")
#: PCK tolerances reported on the keypoint benchmarks (docs/design.md §8).
KEYPOINT_ALPHAS = (0.05, 0.1, 0.15)
#: TSS's tolerance.
TSS_ALPHAS = (0.05,)
#: PCK tolerances of the stereo pair, fractions of ``max(H, W)`` of the source view.
STEREO_ALPHAS = (0.05, 0.1)
#: Points per side of the grid of :func:`evaluate_self_alignment`.
SELF_ALIGNMENT_GRID = 7
#: What the embedded model must achieve on every bundled photo aligned onto itself: at most this
#: mean displacement, in percent of the image diagonal.
SELF_ALIGNMENT_GOAL = 1.0
#: What each reference length kind is, for the reports.
REFERENCE_DESCRIPTIONS = {
    "keypoints": "longest side of the bounding box of the source keypoints",
    "bbox": "longest side of the source object's bounding box",
    "image": "longest side of the source image",
}


# --------------------------------------------------------------------------------------------
# The common loop


def _pck_name(alpha: float) -> str:
    return f"PCK@{alpha:g}"


def _check_alphas(alphas) -> tuple[float, ...]:
    if isinstance(alphas, (int, float)):
        alphas = (alphas,)
    alphas = tuple(alphas)
    if not alphas or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in alphas):
        raise ValueError(f"alphas: expected a non-empty sequence of numbers > 0, got {alphas!r}")
    return tuple(float(a) for a in alphas)


def _check_batch_size(batch_size) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    return batch_size


def _batches(
    model: nn.Module,
    dataset,
    image_size,
    batch_size: int,
    device,
    num_workers: int,
    progress: bool,
    desc: str,
    inference: dict | None = None,
):
    """Yield ``(batch, chain)``: the collated batch (images resized to the network input) and the
    predicted thetas (:func:`a2net.inference.predict_chain`, with the model's inference options
    updated by ``inference``) in float64 on the CPU."""
    from tqdm.auto import tqdm

    options = inference_defaults(model, **(inference or {}))
    if device is not None:
        model.to(device)
    model.eval()
    device = model_device(model)
    size = input_size(model, image_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=_check_batch_size(batch_size),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, size=size),
    )
    with tqdm(total=len(dataset), desc=desc, unit="pair", disable=not progress, file=sys.stderr) as bar:
        for batch in loader:
            with torch.no_grad():
                source = normalize_images(batch["source_image"].to(device))
                target = normalize_images(batch["target_image"].to(device))
                chain = predict_chain(model, source, target, **options)
                chain = [theta.detach().to("cpu", torch.float64) for theta in chain]
            yield batch, chain
            bar.update(batch["source_image"].shape[0])


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _summarise(mode: str, records: list[dict], names: Sequence[str]) -> dict:
    """Means over the scored pairs, overall and per class (``category``), of the metrics ``names``."""
    scored = [r for r in records if not all(math.isnan(r[n]) for n in names)]
    by_class = defaultdict(list)
    for r in records:
        by_class[r["category"]].append(r)
    per_class = {
        category: {"pairs": len(rs), "metrics": {n: _mean([r[n] for r in rs]) for n in names}}
        for category, rs in sorted(by_class.items())
    }
    return {
        "mode": mode,
        "pairs": len(records),
        "scored": len(scored),
        "metrics": {n: _mean([r[n] for r in records]) for n in names},
        "per_class": per_class,
        "class_average": {n: _mean([c["metrics"][n] for c in per_class.values()]) for n in names},
        "per_pair": records,
    }


def _size_pair(size: torch.Tensor) -> tuple[int, int]:
    return int(size[0]), int(size[1])


def _slice(chain: list[torch.Tensor], i: int) -> list[torch.Tensor]:
    return [theta[i : i + 1] for theta in chain]


# --------------------------------------------------------------------------------------------
# Keypoints: PF-WILLOW, PF-PASCAL


def evaluate_keypoints(
    model: nn.Module,
    dataset,
    alphas=KEYPOINT_ALPHAS,
    image_size=None,
    batch_size: int = 8,
    device=None,
    num_workers: int = 0,
    progress: bool = True,
    inference: dict | None = None,
) -> dict:
    """PCK of keypoint transfer on PF-WILLOW or PF-PASCAL (docs/design.md §8).

    The target keypoints ``(2, N)`` (1-based pixels) are normalised with the target size, mapped
    through the predicted transformation(s) into the source, denormalised with the source size
    and compared with the source keypoints (:func:`a2net.metrics.pck`), the padded keypoints left
    out. ``L`` is each item's ``reference_length``, of the kind its ``reference_kind`` says.

    Args:
        model: :class:`a2net.A2Net` or :class:`a2net.TwoStageAligner`.
        dataset: :class:`a2net.benchmarks.PFWillowDataset`, :class:`a2net.benchmarks.PFPascalDataset`
            or any dataset with their keys.
        alphas: PCK tolerances (fractions of ``L``).
        image_size: network input ``(H, W)``; default the model's.
        batch_size: pairs per forward pass.
        device: move the model there first; default where it is.
        num_workers: ``DataLoader`` workers reading the images.
        progress: show a tqdm bar on stderr.
        inference: ``{"iterations", "symmetric", "refine"}`` (any of them) for
            :func:`a2net.inference.predict_chain`; the others are the model's
            (:func:`a2net.inference.inference_defaults`), as in :func:`a2net.align`.
    Returns:
        the summary dict of this module (``metrics`` ``PCK@<alpha>``), plus ``alphas``,
        ``reference_kind`` (``"keypoints"``, ``"bbox"``, ``"image"`` or ``"mixed"``),
        ``reference_kinds`` (pair counts per kind) and ``reference_description``.
    """
    alphas = _check_alphas(alphas)
    mode = mode_of(model)
    names = [_pck_name(a) for a in alphas]
    records = []
    for batch, chain in _batches(
        model, dataset, image_size, batch_size, device, num_workers, progress, f"keypoints {mode}", inference
    ):
        moved = transfer_points(chain, batch["target_keypoints"], batch["target_size"], batch["source_size"])
        truth = batch["source_keypoints"].to(torch.float64)
        lengths = batch["reference_length"].to(torch.float64)
        scores = [metrics.pck(moved, truth, lengths, alpha=a) for a in alphas]
        valid = geometry.valid_keypoints(truth).sum(1)
        for i in range(truth.shape[0]):
            records.append(
                {
                    "source": batch["source_name"][i],
                    "target": batch["target_name"][i],
                    "category": batch["category"][i],
                    "keypoints": int(valid[i]),
                    "reference_length": float(lengths[i]),
                    "reference_kind": batch["reference_kind"][i],
                    **{n: float(s[i]) for n, s in zip(names, scores, strict=True)},
                }
            )
    result = _summarise(mode, records, names)
    kinds = Counter(r["reference_kind"] for r in records)
    kind = next(iter(kinds)) if len(kinds) == 1 else "mixed"
    description = (
        REFERENCE_DESCRIPTIONS.get(kind, kind)
        if kind != "mixed"
        else "; ".join(f"{REFERENCE_DESCRIPTIONS.get(k, k)} ({k}) for {n} pairs" for k, n in sorted(kinds.items()))
    )
    result.update(
        alphas=list(alphas), reference_kind=kind, reference_kinds=dict(kinds), reference_description=description
    )
    return result


# --------------------------------------------------------------------------------------------
# TSS


def evaluate_tss(
    model: nn.Module,
    dataset,
    alphas=TSS_ALPHAS,
    image_size=None,
    batch_size: int = 8,
    device=None,
    num_workers: int = 0,
    progress: bool = True,
    inference: dict | None = None,
) -> dict:
    """Flow PCK on TSS over the foreground (docs/design.md §8), per subset (FG3DCar, JODS, PASCAL).

    For each pair the predicted transformation gives a dense target -> source flow on the target
    grid (:func:`a2net.metrics.theta_to_flow` with the two images' sizes), scored against the
    ground truth over the target's foreground with ``L`` = the item's ``reference_length``
    (``max(H, W)`` of the source image, :class:`a2net.benchmarks.TSSDataset`).

    Args: as :func:`evaluate_keypoints`; ``alphas`` default ``(0.05,)``, TSS's.
    Returns:
        the summary dict (``metrics`` ``PCK@<alpha>``; ``per_class`` per subset; ``class_average``
        the mean of the subsets, as the TSS tables report it), plus ``alphas`` and
        ``reference_kind`` ``"image"``.
    """
    alphas = _check_alphas(alphas)
    mode = mode_of(model)
    names = [_pck_name(a) for a in alphas]
    records = []
    for batch, chain in _batches(
        model, dataset, image_size, batch_size, device, num_workers, progress, f"TSS {mode}", inference
    ):
        for i in range(len(batch["flow"])):
            target_size = _size_pair(batch["target_size"][i])
            flow = metrics.theta_to_flow(_slice(chain, i), target_size, batch["source_size"][i : i + 1])
            truth = batch["flow"][i][None].to(torch.float64)
            length = batch["reference_length"][i : i + 1].to(torch.float64)
            mask = batch["target_mask"][i][None]
            records.append(
                {
                    "source": batch["source_name"][i],
                    "target": batch["target_name"][i],
                    "category": batch["category"][i],
                    "pair": batch["pair"][i],
                    **{
                        n: float(metrics.flow_pck(flow, truth, mask, a, length)[0])
                        for n, a in zip(names, alphas, strict=True)
                    },
                }
            )
    result = _summarise(mode, records, names)
    result.update(alphas=list(alphas), reference_kind="image", reference_description=REFERENCE_DESCRIPTIONS["image"])
    return result


# --------------------------------------------------------------------------------------------
# Caltech-101

CALTECH_METRICS = ("LT-ACC", "IoU", "LOC-ERR")


def evaluate_caltech(
    model: nn.Module,
    dataset,
    image_size=None,
    batch_size: int = 8,
    device=None,
    num_workers: int = 0,
    progress: bool = True,
    inference: dict | None = None,
) -> dict:
    """Label-transfer accuracy, IoU and localisation error on Caltech-101 (docs/design.md §8).

    The source mask is warped with the predicted transformation onto the target grid (bilinear,
    zeros outside, foreground where > 0.5; one resampling through both stages for affine+TPS,
    :func:`a2net.inference.warp_chain`) and compared with the target mask
    (:func:`a2net.metrics.label_transfer_accuracy`, :func:`a2net.metrics.mask_iou`); LOC-ERR is
    :func:`a2net.metrics.localization_error` of the predicted flow. Higher LT-ACC and IoU and lower
    LOC-ERR are better.

    Args: as :func:`evaluate_keypoints` (no ``alphas``).
    Returns:
        the summary dict with ``metrics`` ``LT-ACC``, ``IoU``, ``LOC-ERR``.
    """
    mode = mode_of(model)
    records = []
    for batch, chain in _batches(
        model, dataset, image_size, batch_size, device, num_workers, progress, f"Caltech-101 {mode}", inference
    ):
        for i in range(len(batch["source_mask"])):
            pair = _slice(chain, i)
            target_size = _size_pair(batch["target_size"][i])
            source_mask = batch["source_mask"][i][None]
            target_mask = batch["target_mask"][i][None]
            warped = warp_chain(source_mask[:, None].to(torch.float64), pair, target_size)[:, 0]
            flow = metrics.theta_to_flow(pair, target_size, batch["source_size"][i : i + 1])
            records.append(
                {
                    "source": batch["source_name"][i],
                    "target": batch["target_name"][i],
                    "category": batch["category"][i],
                    "LT-ACC": float(metrics.label_transfer_accuracy(warped, target_mask)[0]),
                    "IoU": float(metrics.mask_iou(warped, target_mask)[0]),
                    "LOC-ERR": float(metrics.localization_error(flow, source_mask, target_mask)[0]),
                }
            )
    return _summarise(mode, records, CALTECH_METRICS)


# --------------------------------------------------------------------------------------------
# Held-out synthetic pairs


def default_pair_model(model: nn.Module) -> str:
    """The kind of held-out synthetic pairs a model is evaluated on by default: TPS pairs for a
    TPS model, affine pairs otherwise (also for affine+TPS, so that the three modes of one run
    share one set of pairs)."""
    return "tps" if mode_of(model) == "tps" else "affine"


def _synthetic_batches(pairs, batch_size: int):
    """Batches ``(source, target, theta, names)`` of held-out pairs given as the batch dict of
    :func:`a2net.synthetic.heldout_synthetic_pairs` or as a dataset of
    :class:`a2net.synthetic.SyntheticPairDataset` items."""
    if isinstance(pairs, dict):
        n = pairs["theta"].shape[0]
        for start in range(0, n, batch_size):
            end = min(n, start + batch_size)
            yield (
                pairs["source"][start:end],
                pairs["target"][start:end],
                pairs["theta"][start:end],
                list(pairs.get("name", ["synthetic"] * n))[start:end],
            )
        return
    loader = torch.utils.data.DataLoader(
        range(len(pairs)),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=lambda ks: synthetic.collate_pairs([pairs[k] for k in ks]),
    )
    for batch in loader:
        yield batch["source"], batch["target"], batch["theta"], batch["name"]


def evaluate_synthetic(
    model: nn.Module,
    pairs=None,
    alphas=KEYPOINT_ALPHAS,
    image_size=None,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
    grid_size: int = 20,
    geometric_model: str | None = None,
    n_pairs: int = 100,
    inference: dict | None = None,
) -> dict:
    """PCK on held-out synthetic pairs with a known transformation, next to the identity baseline.

    The measure of :func:`a2net.metrics.synthetic_pck`: a ``grid_size`` x ``grid_size`` grid of
    target points on ``[-1, 1]^2`` is mapped by the true and by the predicted transformation(s)
    (through TPS then affine for affine+TPS), both in pixels of the ``(H, W)`` pair images, and a
    point is correct within ``alpha * max(H, W)`` (``reference_kind`` ``"image"``). The identity
    transformation (no alignment at all) is scored the same way as ``baseline``.

    Args:
        model: :class:`a2net.A2Net` or :class:`a2net.TwoStageAligner`.
        pairs: the batch dict of :func:`a2net.synthetic.heldout_synthetic_pairs` (``source``,
            ``target`` ``(N, 3, h, w)`` in [0, 1], ``theta`` ``(N, P)``, ``name``), a dataset of
            :class:`a2net.synthetic.SyntheticPairDataset` items, or None: ``n_pairs`` held-out pairs of
            the bundled photos at the network input size, with ``geometric_model`` thetas
            (default :func:`default_pair_model`).
        grid_size: points per side of the grid.
        other arguments: as :func:`evaluate_keypoints`. Pairs of another size than the network
            input are resized to it (bilinear, antialiased) for the model only.
    Returns:
        the summary dict (``metrics`` ``PCK@<alpha>``, ``per_class`` per photo), plus ``alphas``,
        ``reference_kind`` ``"image"``, ``grid_size``, ``pair_model`` (the kind of the true thetas),
        ``inference`` (the options used) and ``baseline``: ``{"identity": {"PCK@<alpha>": ...}}``.
    """
    from tqdm.auto import tqdm

    alphas = _check_alphas(alphas)
    batch_size = _check_batch_size(batch_size)
    mode = mode_of(model)
    options = inference_defaults(model, **(inference or {}))
    names = [_pck_name(a) for a in alphas]
    if device is not None:
        model.to(device)
    model.eval()
    run_on = model_device(model)
    size = input_size(model, image_size)
    if pairs is None:
        pairs = synthetic.heldout_synthetic_pairs(
            geometric_model or default_pair_model(model), n_pairs=n_pairs, image_size=size
        )
    kinds = set()
    total = pairs["theta"].shape[0] if isinstance(pairs, dict) else len(pairs)
    records, baseline = [], []
    with tqdm(total=total, desc=f"synthetic {mode}", unit="pair", disable=not progress, file=sys.stderr) as bar:
        for source, target, theta, photo in _synthetic_batches(pairs, batch_size):
            pair_size = tuple(source.shape[2:])
            resize = None if pair_size == size else size
            with torch.no_grad():
                chain = predict_chain(
                    model,
                    normalize_images(source.to(run_on), size=resize),
                    normalize_images(target.to(run_on), size=resize),
                    **options,
                )
            chain = [t.detach().to("cpu", torch.float64) for t in chain]
            theta = theta.to(torch.float64)
            kind = "affine" if theta.shape[1] == 6 else "tps"
            kinds.add(kind)
            identity = geometry.identity_theta(kind, theta.shape[0], dtype=torch.float64)
            scores = [metrics.synthetic_pck(chain, theta, pair_size, alpha=a, grid_size=grid_size) for a in alphas]
            base = [metrics.synthetic_pck(identity, theta, pair_size, alpha=a, grid_size=grid_size) for a in alphas]
            for i in range(theta.shape[0]):
                records.append(
                    {
                        "index": len(records),
                        "category": str(photo[i]),
                        **{n: float(s[i]) for n, s in zip(names, scores, strict=True)},
                    }
                )
                baseline.append({n: float(s[i]) for n, s in zip(names, base, strict=True)})
            bar.update(theta.shape[0])
    result = _summarise(mode, records, names)
    result.update(
        alphas=list(alphas),
        reference_kind="image",
        reference_description=REFERENCE_DESCRIPTIONS["image"],
        grid_size=grid_size,
        pair_model="+".join(sorted(kinds)) or None,
        inference=options,
        baseline={"identity": {n: _mean([r[n] for r in baseline]) for n in names}},
    )
    return result


# --------------------------------------------------------------------------------------------
# Real photos with a known answer: the stereo pair, each photo aligned onto itself


def _align_chain(model: nn.Module, source: torch.Tensor, target: torch.Tensor, size, options: dict):
    """``(chain, seconds)`` of one pair of ``(3, H, W)`` images in [0, 1], as :func:`a2net.align`
    computes it (both resized to the network input ``size``; thetas float32 on the CPU)."""
    import time

    run_on = model_device(model)
    start = time.perf_counter()
    with torch.no_grad():
        src = normalize_images(source[None].to(run_on), size=size)
        tgt = normalize_images(target[None].to(run_on), size=size)
        chain = [theta.detach().float().cpu() for theta in predict_chain(model, src, tgt, **options)]
    return chain, time.perf_counter() - start


def evaluate_stereo(
    model: nn.Module,
    n_points: int | None = STEREO_POINTS,
    alphas=STEREO_ALPHAS,
    image_size=None,
    device=None,
    inference: dict | None = None,
) -> dict:
    """The bundled stereo pair (:func:`a2net.benchmarks.stereo_pair`: right view = target, left
    view = source) against its disparity ground truth (docs/design.md §8).

    The target points are mapped through the predicted chain into the source view and compared
    with their true matches: mean error in pixels of the source view, and PCK with ``L = max(H,
    W)`` of the source view (741 px). The identity (no alignment) is scored the same way.

    Args:
        model: :class:`a2net.A2Net` or :class:`a2net.TwoStageAligner`.
        n_points: correspondences scored (a fixed sample; None: all of them).
        alphas: PCK tolerances, fractions of ``L``.
        image_size: network input ``(H, W)``; default the model's.
        device: move the model there first; default where it is.
        inference: as in :func:`evaluate_keypoints`.
    Returns:
        ``{"mode", "mean_error", "PCK@<alpha>"..., "identity": {"mean_error", "PCK@<alpha>"...},
        "points", "reference_length", "seconds" (the alignment), "theta" (the chain as lists),
        "inference"}``.
    """
    alphas = _check_alphas(alphas)
    if device is not None:
        model.to(device)
    model.eval()
    options = inference_defaults(model, **(inference or {}))
    pair = stereo_pair(n_points)
    chain, seconds = _align_chain(model, pair["source"], pair["target"], input_size(model, image_size), options)
    source_size, target_size = tuple(pair["source"].shape[1:]), tuple(pair["target"].shape[1:])
    moved = transfer_points(chain, pair["target_points"][None], target_size, source_size)[0]
    length = max(source_size)

    def score(points: torch.Tensor) -> dict:
        error = torch.linalg.vector_norm(points - pair["source_points"], dim=0)
        pcks = {_pck_name(a): float((error <= a * length).double().mean()) for a in alphas}
        return {"mean_error": float(error.mean()), **pcks}

    return {
        "mode": mode_of(model),
        **score(moved),
        "identity": score(pair["target_points"]),
        "points": int(pair["source_points"].shape[1]),
        "reference_length": length,
        "seconds": seconds,
        "theta": [theta[0].tolist() for theta in chain],
        "inference": options,
    }


def evaluate_self_alignment(
    model: nn.Module,
    names: Sequence[str] | None = None,
    grid_size: int = SELF_ALIGNMENT_GRID,
    image_size=None,
    device=None,
    inference: dict | None = None,
) -> dict:
    """Align every bundled photo onto itself: the answer is the identity (docs/design.md §8).

    The measure is :func:`a2net.metrics.self_alignment_displacement`: how far a ``grid_size`` x
    ``grid_size`` grid on ``[-1, 1]^2`` moves, in percent of the photo's diagonal.

    Args:
        model: :class:`a2net.A2Net` or :class:`a2net.TwoStageAligner`.
        names: bundled photo names (default: every bundled photo, training and held-out,
            :func:`a2net.synthetic.bundled_photos` ``("all")``).
        grid_size: points per side of the grid.
        image_size, device, inference: as in :func:`evaluate_stereo`.
    Returns:
        ``{"mode", "photos": {name: {"mean", "max"}}, "mean" (over photos), "max",
        "worst": name of the largest mean, "worst_mean", "goal"`` (:data:`SELF_ALIGNMENT_GOAL`),
        ``"seconds"`` (mean per alignment), ``"inference"}``; percentages of the diagonal.
    """
    from a2net.images import bundled_image

    if device is not None:
        model.to(device)
    model.eval()
    options = inference_defaults(model, **(inference or {}))
    size = input_size(model, image_size)
    names = list(synthetic.bundled_photos("all") if names is None else names)
    photos, seconds = {}, []
    for name in names:
        image = bundled_image(name)
        chain, elapsed = _align_chain(model, image, image, size, options)
        seconds.append(elapsed)
        moved = metrics.self_alignment_displacement(chain, tuple(image.shape[1:]), grid_size)[0]
        photos[name] = {"mean": float(moved.mean()), "max": float(moved.max())}
    worst = max(photos, key=lambda n: photos[n]["mean"])
    return {
        "mode": mode_of(model),
        "photos": photos,
        "mean": _mean([p["mean"] for p in photos.values()]),
        "max": max(p["max"] for p in photos.values()),
        "worst": worst,
        "worst_mean": photos[worst]["mean"],
        "goal": SELF_ALIGNMENT_GOAL,
        "grid_size": grid_size,
        "seconds": _mean(seconds),
        "inference": options,
    }


def evaluate_stereo_demo(
    model: nn.Module,
    pairs=None,
    n_pairs: int = 200,
    alphas=None,
    image_size=None,
    batch_size: int = 8,
    device=None,
    progress: bool = False,
    inference: dict | None = None,
) -> dict:
    """The real-photo checks of ``a2net eval --benchmark stereo-demo`` and ``a2net demo``:
    :func:`evaluate_stereo`, :func:`evaluate_self_alignment` and :func:`evaluate_synthetic` on
    the held-out pairs of the bundled photos (``pairs``, or ``n_pairs`` of them).

    Args:
        alphas: PCK tolerances of the stereo pair and of the synthetic pairs (default
            :data:`STEREO_ALPHAS` and :data:`KEYPOINT_ALPHAS`).
        other arguments: as :func:`evaluate_synthetic`.
    Returns:
        ``{"stereo", "self_alignment", "synthetic"}``: the three results, each with its
        ``seconds`` (the synthetic one's: the whole evaluation).
    """
    import time

    if device is not None:
        model.to(device)
    common = dict(image_size=image_size, inference=inference)
    stereo = evaluate_stereo(model, alphas=alphas or STEREO_ALPHAS, **common)
    selfs = evaluate_self_alignment(model, **common)
    start = time.perf_counter()
    synthetic_result = evaluate_synthetic(
        model,
        pairs,
        alphas=alphas or KEYPOINT_ALPHAS,
        batch_size=batch_size,
        progress=progress,
        n_pairs=n_pairs,
        **common,
    )
    synthetic_result["seconds"] = time.perf_counter() - start
    return {"stereo": stereo, "self_alignment": selfs, "synthetic": synthetic_result}


def format_stereo_demo(report: dict) -> str:
    """The tables of the real-photo checks: ``report["stereo"]`` and ``report["self_alignment"]``
    (``{mode: result}`` of :func:`evaluate_stereo` and :func:`evaluate_self_alignment`) and the
    synthetic table of ``report["modes"]`` (:func:`format_results`)."""
    stereo, selfs = report["stereo"], report["self_alignment"]
    first = next(iter(stereo.values()))
    names = [k for k in first if k.startswith("PCK@")]
    label = max(21, *(len(m) + 2 for m in stereo))
    lines = [
        f"the stereo pair motorcycle, right view -> left view ({first['points']} points of known disparity; error in "
        f"px of the left view, PCK L = {first['reference_length']} px; aligned in "
        + ", ".join(f"{r['seconds'] * 1e3:.0f} ms" for r in stereo.values())
        + "):",
        f"{'mode':<{label}}{'points':>7}{'error px':>10}" + "".join(f"{n:>10}" for n in names),
    ]
    rows = [(mode, r) for mode, r in stereo.items()] + [("identity (baseline)", first["identity"])]
    for mode, r in rows:
        lines.append(
            f"{mode:<{label}}{first['points']:>7}{r['mean_error']:>10.1f}" + "".join(_cell(r[n], 10) for n in names)
        )
    one = next(iter(selfs.values()))
    goal = one["goal"]
    lines += [
        "",
        f"each bundled photo aligned onto itself (the answer: the identity): how far a {one['grid_size']}x"
        f"{one['grid_size']} grid moves, in % of the image diagonal (goal: a mean <= {goal:g}% for every photo):",
    ]
    photo_width = max(20, *(len(n) + 2 for n in one["photos"]))
    lines.append(f"{'photo':<{photo_width}}" + "".join(f"{m + ' mean/max':>22}" for m in selfs))
    for name in one["photos"]:
        cells = "".join(
            f"{r['photos'][name]['mean']:>14.2f} / {r['photos'][name]['max']:<5.2f}" for r in selfs.values()
        )
        lines.append(f"{name:<{photo_width}}{cells}")
    lines.append(
        f"{'all ' + str(len(one['photos'])) + ' photos':<{photo_width}}"
        + "".join(f"{r['mean']:>14.2f} / {r['max']:<5.2f}" for r in selfs.values())
    )
    for mode, r in selfs.items():
        verdict = "goal met" if r["worst_mean"] <= goal else "goal NOT met"
        lines.append(
            f"{mode}: worst photo {r['worst']} at {r['worst_mean']:.2f}% mean: {verdict} ({r['seconds'] * 1e3:.0f} ms "
            "per photo)"
        )
    title = report.get("synthetic_title") or "held-out synthetic pairs of the bundled photos"
    lines += ["", format_results({"benchmark": "synthetic", "title": title, "modes": report["modes"]})]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------------------------
# Reports


def _cell(value: float, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.3f}"


def format_results(report: dict) -> str:
    """The tables ``a2net eval`` prints: one row per mode (and the baseline), metrics as columns;
    then, where the benchmark has classes, one row per class with each mode's metrics."""
    modes = report["modes"]
    if not modes:
        return ""
    first = next(iter(modes.values()))
    names = list(first["metrics"])
    lines = [report.get("title", report["benchmark"])]
    if "reference_kind" in first:
        lines.append(f"PCK reference length L ({first['reference_kind']}): {first['reference_description']}")
    width = max(10, *(len(n) + 1 for n in names))
    label = max(12, *(len(m) + 2 for m in modes), 20 if "baseline" in first else 0)
    lines.append(f"{'mode':<{label}}{'pairs':>7}" + "".join(f"{n:>{width}}" for n in names))
    for mode, result in modes.items():
        cells = "".join(_cell(result["metrics"][n], width) for n in names)
        lines.append(f"{mode:<{label}}{result['scored']:>7}" + cells)
    if "baseline" in first:
        for kind, values in first["baseline"].items():
            lines.append(
                f"{kind + ' (baseline)':<{label}}{first['scored']:>7}" + "".join(_cell(values[n], width) for n in names)
            )
    if report.get("per_class") and len(first["per_class"]) > 1:
        classes = list(first["per_class"])
        name_width = max(12, *(len(c) + 2 for c in classes))
        block = 6 * len(names) + 2
        lines.append("")
        lines.append(f"per class ({' / '.join(names)}):")
        lines.append(f"{'class':<{name_width}}{'pairs':>6}  " + "".join(f"{m:<{block}}" for m in modes))
        for category in classes:
            cells = []
            for result in modes.values():
                values = result["per_class"].get(category, {}).get("metrics", {})
                cells.append(" ".join(_cell(values.get(n, float("nan")), 5) for n in names).ljust(block))
            lines.append(f"{category:<{name_width}}{first['per_class'][category]['pairs']:>6}  " + "".join(cells))
        averages = [" ".join(_cell(r["class_average"][n], 5) for n in names).ljust(block) for r in modes.values()]
        lines.append(f"{'class mean':<{name_width}}{'':>6}  " + "".join(averages))
    return "\n".join(line.rstrip() for line in lines)
