"""Self-supervised training (docs/design.md §6-7): ``a2net train`` / ``python -m a2net train``.

Adam on the transformed grid loss between the predicted and the true theta of synthetic pairs
(:mod:`a2net.synthetic`); the backbone is frozen as in the paper (``--fine-tune-backbone`` trains it
too). For real photo pairs (docs/design.md §6) a share of the pairs can be the identity or a small
viewpoint change (``identity_share``, ``near_identity_share``), and consistency losses can be
added (``swap_weight``, ``cycle_weight``, ``self_weight``: :class:`ConsistencyBatch`,
:func:`consistency_loss`). ``init_from`` starts from another checkpoint's weights. Presets
(explicit options override them):

* ``paper`` — docs/design.md §7: ResNet-101 with ImageNet weights (required: ``--backbone-weights imagenet``
  downloads torchvision's, or pass a local state_dict), 240x240, batch 32, lr 2e-4 (the authors'
  script), 50 epochs of ``--data`` (PASCAL VOC 2011 images; required), images resized to 480x640.
* ``demo`` — the CPU recipe of the embedded model (:data:`a2net.checkpoint.DEFAULT_CHECKPOINT`):
  the small backbone trained with the head on the bundled photos, with identity and
  near-identity pairs and the consistency losses; see :data:`PRESETS`, docs/design.md §7 and the
  README (the shipped model's exact history).

Output directory::

    metrics.jsonl   one JSON object per step: step, loss, lr, pairs_per_s
    last/           the latest checkpoint (a2net.checkpoint.save_checkpoint: model.safetensors,
                    state.json with the step, the model config and these training arguments,
                    optimizer.pt), replaced atomically every --checkpoint-every steps and at the end

An output directory that holds a run (``last/`` or ``metrics.jsonl``) is refused unless
``resume`` (continue it) or ``overwrite`` (move its ``last/``, ``.last.old`` and
``metrics.jsonl`` into ``replaced-<UTC time>/`` with a notice, once everything else has been
checked: nothing is deleted) is given. ``resume`` without a checkpoint (a run killed before its first save) is an error
that says so. Temporary ``.last.tmp-*`` folders left by a kill during a save are removed at start.
The options are checked (positive counts, an existing folder of readable images) before anything
is written.

Steps count from 1. The data of step ``s`` is a function of ``(seed, s)`` only
(:class:`a2net.synthetic.StepBatchSampler`), so ``--resume`` continues from ``last/`` and, on CPU,
reaches the same weights as an uninterrupted run, bit for bit. Launched by ``torchrun`` with
several processes, training uses DistributedDataParallel, each rank taking its share of every
step's global batch (``--batch-size`` is per process), one GPU per process (NCCL) or gloo on CPU;
the BatchNorm statistics are those of the global batch, so N processes compute what one process
with the N-fold batch computes. The consistency losses run inside the module DDP (and
``torch.compile``) wraps, so they work there too.

The options of ``a2net train`` (:mod:`a2net.cli`) are the keys of :data:`DEFAULTS`;
:func:`resolve_options` combines them with a preset and, when resuming, with the stored run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from a2net import checkpoint as ckpt
from a2net import geometry
from a2net.errors import InputError, InputNotFoundError, UsageError
from a2net.fileio import atomic_write, check_output_dir
from a2net.images import check_image_file
from a2net.inference import network_features, regress
from a2net.model import build_model, normalize_images
from a2net.synthetic import DEFAULT_RESIZE, StepBatchSampler, SyntheticPairDataset, collate_pairs, list_images

__all__ = [
    "CONSISTENCY_WEIGHTS",
    "ConsistencyBatch",
    "DEFAULTS",
    "LR_SCHEDULES",
    "PRESETS",
    "consistency_loss",
    "learning_rate",
    "resolve_options",
    "train",
]

#: Presets of ``--preset``; every key is an option of ``a2net train`` (dashes as underscores).
PRESETS: dict[str, dict] = {
    "demo": {
        "geometric_model": "affine",
        "backbone": "small_cnn",  # random init, trained with the head: no pretrained weights offline
        "backbone_weights": None,
        "fine_tune_backbone": True,
        "image_size": 176,  # 11x11 feature maps, a 5x5 encoder output
        "resize": [313, 417],  # the 9/16 crop of the resized image is ~176 px: sampled ~1:1
        "batch_size": 16,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "max_steps": 6000,
        "epochs": None,
        "data": "bundled:training",
        "augment": True,
        # real photo pairs: the identity and small viewpoint changes besides the large random warps,
        # and the consistency of the two directions and of each image with itself (docs/design.md §6)
        "identity_share": 0.1,
        "near_identity_share": 0.3,
        "swap_weight": 1.0,
        "cycle_weight": 0.5,
        "self_weight": 1.0,
        "checkpoint_every": 250,
    },
    "paper": {
        "geometric_model": "affine",
        "backbone": "resnet101",
        "backbone_weights": "imagenet",
        "image_size": 240,
        "resize": list(DEFAULT_RESIZE),
        "batch_size": 32,
        "lr": 2e-4,
        "max_steps": None,
        "epochs": 50,
        "data": None,  # PASCAL VOC 2011 JPEGImages: must be given with --data
        "augment": False,
        "lr_schedule": "constant",
        "checkpoint_every": 1000,
    },
}
#: Defaults of the options no preset sets (and of every option without a preset).
DEFAULTS = {
    "geometric_model": "affine",
    "backbone": "resnet101",
    "backbone_weights": None,
    "image_size": 240,
    "resize": list(DEFAULT_RESIZE),
    "batch_size": 16,
    "lr": 2e-4,
    "lr_schedule": "constant",
    "max_steps": None,
    "epochs": None,
    "data": "bundled:training",
    "thetas": None,
    "augment": False,
    "checkpoint_every": 500,
    "seed": 0,
    "backbone_seed": 0,
    "fine_tune_backbone": False,
    "use_oac": True,
    "use_attention": True,
    "identity_share": 0.0,
    "near_identity_share": 0.0,
    "swap_weight": 0.0,
    "cycle_weight": 0.0,
    "self_weight": 0.0,
    "init_from": None,
    "output_dir": "runs/a2net",
}
#: Options that define the run: a resumed run takes them from the checkpoint.
RUN_KEYS = (
    "geometric_model",
    "backbone",
    "backbone_weights",
    "image_size",
    "resize",
    "batch_size",
    "lr",
    "lr_schedule",
    "data",
    "thetas",
    "augment",
    "seed",
    "backbone_seed",
    "fine_tune_backbone",
    "use_oac",
    "use_attention",
    "identity_share",
    "near_identity_share",
    "swap_weight",
    "cycle_weight",
    "self_weight",
    "init_from",
)
METRICS_FILE = "metrics.jsonl"
LR_SCHEDULES = ("constant", "cosine")
#: The weights of the consistency losses (:func:`consistency_loss`).
CONSISTENCY_WEIGHTS = ("swap_weight", "cycle_weight", "self_weight")


class ConsistencyBatch(nn.Module):
    """The thetas the consistency losses need, in one forward (what DistributedDataParallel and
    ``torch.compile`` wrap, so that DDP's gradient hooks and the compiled graph see all of it).

    Each image goes through the backbone once (source and target in one batch); the regression
    head then sees, in one batch (one set of BatchNorm statistics), the pairs ``(A, B)``, then
    ``(B, A)`` if ``swap``, then ``(A, A)`` and ``(B, B)`` if ``self_pairs``.

    Shape: ``forward(source (B, 3, H, W), target (B, 3, H, W))`` -> ``(k B, P)`` with ``k = 1 +
    swap + 2 self_pairs``, in that order.
    """

    def __init__(self, model: nn.Module, swap: bool, self_pairs: bool):
        super().__init__()
        self.model, self.swap, self.self_pairs = model, bool(swap), bool(self_pairs)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = source.shape[0]
        features = network_features(self.model, torch.cat((source, target)))
        fs, ft = features[:n], features[n:]
        sources, targets = [fs], [ft]
        if self.swap:
            sources.append(ft)
            targets.append(fs)
        if self.self_pairs:
            sources += [fs, ft]
            targets += [fs, ft]
        return regress(self.model, torch.cat(sources), torch.cat(targets))


def consistency_loss(thetas: torch.Tensor, theta_true: torch.Tensor, options: dict, loss_fn) -> torch.Tensor:
    """The training loss with the consistency terms (docs/design.md §6), from the thetas of
    :class:`ConsistencyBatch` (built with ``swap = swap_weight or cycle_weight`` and
    ``self_pairs = self_weight``):

    * ``loss_fn(theta(A, B), truth)``, the paper's loss;
    * swap: ``swap_weight * loss_fn(theta(B, A), truth^-1)``;
    * cycle: ``cycle_weight * loss_fn(theta(A, B) o theta(B, A), identity)`` (a target point of
      ``(B, A)`` goes into ``B``'s frame and back);
    * self: ``self_weight * loss_fn(theta(X, X), identity)`` for ``X`` in ``A, B``.

    Args:
        thetas: ``(k B, P)`` float thetas of :class:`ConsistencyBatch`.
        theta_true: ``(B, P)`` the truth of ``(source, target)``.
        options: the run's options (the weights).
        loss_fn: the transformed grid loss (:class:`a2net.geometry.TransformedGridLoss`).
    Returns:
        0-D weighted sum.
    """
    swap, cycle, self_weight = (options[k] for k in CONSISTENCY_WEIGHTS)
    n = theta_true.shape[0]
    loss = loss_fn(thetas[:n], theta_true)
    rest = thetas[n:]
    if swap or cycle:
        swapped, rest = rest[:n], rest[n:]
        if swap:
            loss = loss + swap * loss_fn(swapped, geometry.invert_affine(theta_true))
        if cycle:
            identity = geometry.identity_theta("affine", n, device=swapped.device, dtype=swapped.dtype)
            loss = loss + cycle * loss_fn(geometry.compose_affine(thetas[:n], swapped), identity)
    if self_weight:
        kind = "affine" if thetas.shape[1] == 6 else "tps"
        identity = geometry.identity_theta(kind, 2 * n, device=rest.device, dtype=rest.dtype)
        loss = loss + self_weight * loss_fn(rest, identity)
    return loss


def learning_rate(options: dict, step: int, max_steps: int) -> float:
    """The learning rate of ``step`` (from 1): a function of the step alone, so resuming needs no
    scheduler state."""
    if options["lr_schedule"] == "cosine":
        return options["lr"] * 0.5 * (1 + math.cos(math.pi * (step - 1) / max(max_steps, 1)))
    return options["lr"]


def resolve_options(args, stored: dict | None) -> dict:
    """The run's options: explicit > preset > defaults; when resuming (``stored`` = the
    checkpoint's state), the options that define the run come from the checkpoint, and so do the
    length and the checkpoint interval unless given again.

    Args:
        args: the parsed options of ``a2net train`` (an ``argparse.Namespace``; ``None`` means not
            given).
        stored: the ``state.json`` of the run being resumed, or ``None``.
    Returns:
        the options, a dict with the keys of :data:`DEFAULTS` plus ``"preset"``.
    """
    explicit = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    if str(explicit.get("backbone_weights", "")).lower() == "none":
        explicit["backbone_weights"] = None
    if "max_steps" in explicit or "epochs" in explicit:  # the one given sets the length
        explicit.setdefault("max_steps", None)
        explicit.setdefault("epochs", None)
    preset = getattr(args, "preset", None)
    if stored is not None:
        preset = stored.get("preset", preset)
    options = dict(DEFAULTS)
    if preset is not None:
        options.update(PRESETS[preset])
    if stored is not None:
        # a run saved before an option existed ran with its default
        stored = dict(stored, options={**DEFAULTS, **stored["options"]})
        for key in ("max_steps", "epochs", "checkpoint_every"):
            options[key] = stored["options"][key]
    options.update(explicit)
    if stored is not None:
        for key in RUN_KEYS:
            if key in explicit and explicit[key] != stored["options"][key]:
                raise UsageError(
                    f"--{key.replace('_', '-')}: the run being resumed used {stored['options'][key]!r}, "
                    f"got {explicit[key]!r} (a resumed run keeps its data, model and optimiser)"
                )
            options[key] = stored["options"][key]
    options["preset"] = preset
    options["resize"] = list(options["resize"])
    return options


#: The smallest ``image_size``: 7x7 feature maps for the encoder's 7x7 convolution.
MIN_IMAGE_SIZE = 112


def _check(options: dict) -> None:
    for key in ("batch_size", "checkpoint_every", "image_size"):
        if isinstance(options[key], bool) or not isinstance(options[key], int) or options[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')}: expected an int >= 1, got {options[key]!r}")
    if options["image_size"] < MIN_IMAGE_SIZE:
        raise UsageError(
            f"--image-size: expected >= {MIN_IMAGE_SIZE} (7x7 feature maps for the encoder's 7x7 convolution), "
            f"got {options['image_size']}"
        )
    steps = options["max_steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UsageError(f"--max-steps: expected an int >= 1, got {steps!r}")
    epochs = options["epochs"]
    if epochs is not None and not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise UsageError(f"--epochs: expected a number > 0, got {epochs!r}")
    if not options["lr"] > 0:
        raise UsageError(f"--lr: expected a number > 0, got {options['lr']!r}")
    if options["data"] is None:
        raise UsageError(
            "--data: expected an image folder (the paper preset trains on PASCAL VOC 2011 images: "
            "pass their folder) or bundled:training"
        )
    if options["lr_schedule"] not in LR_SCHEDULES:
        raise UsageError(f"--lr-schedule: expected one of {list(LR_SCHEDULES)}, got {options['lr_schedule']!r}")
    if options["max_steps"] is None and options["epochs"] is None:
        raise UsageError("--max-steps/--epochs: expected one of them")
    for key in ("identity_share", "near_identity_share", *CONSISTENCY_WEIGHTS):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise UsageError(f"--{key.replace('_', '-')}: expected a number >= 0, got {value!r}")
    shares = options["identity_share"] + options["near_identity_share"]
    if shares > 1:
        raise UsageError(
            f"--identity-share, --near-identity-share: expected a sum <= 1 (fractions of the pairs), got {shares:g}"
        )
    affine_only = [k for k in ("identity_share", "near_identity_share", "swap_weight", "cycle_weight") if options[k]]
    if affine_only and options["geometric_model"] != "affine":
        raise UsageError(
            f"--{affine_only[0].replace('_', '-')}: needs affine thetas (the identity pairs are affine; the swap "
            f"and cycle losses invert and compose thetas), got --geometric-model {options['geometric_model']}"
        )
    if (options["identity_share"] or options["near_identity_share"]) and options["thetas"] is not None:
        raise UsageError("--identity-share, --near-identity-share: the pairs' thetas come from --thetas, got both")


def _check_data(data) -> None:
    """An image folder exists and holds readable images (headers only); bundled photos pass."""
    if str(data).startswith("bundled:"):
        return
    folder = Path(data)
    if not folder.is_dir():
        raise InputNotFoundError(
            f"--data: no such directory {str(data)!r} (expected an image folder, or bundled:training)"
        )
    paths = list_images(folder)
    if not paths:
        raise InputError(f"--data: no .jpg/.jpeg/.png images in {str(data)!r}")
    for path in paths:
        check_image_file(path)


def _existing_run(output_dir: Path) -> str | None:
    """What run ``output_dir`` holds (for the messages), or None."""
    for name in ("last", ".last.old"):
        if (output_dir / name).exists():
            try:
                return f"a checkpoint at step {ckpt.read_state(output_dir / name)['step']}"
            except (InputError, OSError):
                return f"a checkpoint folder {name}/"
    metrics = output_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        return f"{METRICS_FILE} but no checkpoint yet (a run stopped before its first save)"
    return None


def _stored_run(output_dir: Path) -> dict:
    """The state of the run ``resume`` continues, or a one-line error saying why there is none."""
    try:
        stored = ckpt.read_state(output_dir / "last")
    except InputNotFoundError:
        found = _existing_run(output_dir)
        raise InputNotFoundError(
            f"--resume: no checkpoint in {str(output_dir / 'last')!r} to resume"
            + (f" ({output_dir} holds {found}); start again with --overwrite" if found else "; run without --resume")
        ) from None
    if not isinstance(stored.get("options"), dict):
        raise InputError(
            f"--resume: {str(output_dir / 'last')!r} is not a checkpoint of `a2net train` (no training options)"
        )
    return stored


def _clear_run(output_dir: Path, overwrite: bool, log) -> None:
    """Remove the leftovers of killed saves and, with ``overwrite``, move the previous run aside.

    The previous run's ``last/``, ``.last.old`` and ``metrics.jsonl`` go into a new folder
    ``replaced-<UTC time>/`` of ``output_dir`` (renames: nothing is copied, nothing is deleted).
    """
    for tmp in output_dir.glob(".last.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if not overwrite:
        return
    found = _existing_run(output_dir)
    if found is None:
        return
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside = output_dir / f"replaced-{stamp}"
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = output_dir / f"replaced-{stamp}-{suffix}"
    aside.mkdir()
    for name in ("last", ".last.old", METRICS_FILE):
        if (output_dir / name).exists():
            os.replace(output_dir / name, aside / name.lstrip("."))
    log(f"--overwrite: moved the previous run in {output_dir} ({found}) to {aside}")


def _init_weights(model: nn.Module, path) -> None:
    """Load the weights of the checkpoint ``path`` (``--init-from``) into ``model``; its config
    must be the run's."""
    try:
        start = ckpt.load_model(path)
    except InputNotFoundError as err:
        raise InputNotFoundError(f"--init-from: {err}") from None
    if start.config != model.config:
        differ = sorted(k for k in {**start.config, **model.config} if start.config.get(k) != model.config.get(k))
        raise UsageError(
            f"--init-from: the checkpoint's model differs from this run's in {differ}: "
            + ", ".join(f"{k} {start.config.get(k)!r} vs {model.config.get(k)!r}" for k in differ)
        )
    model.load_state_dict(start.state_dict())


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


class _AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over the processes, differentiable: the gradient of each process's
    input is the sum of the gradients of every process's output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        torch.distributed.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        torch.distributed.all_reduce(total)
        return total


class _GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch of all processes, over
    any process group (``torch.nn.SyncBatchNorm`` needs CUDA; this one runs on gloo too). The
    statistics are all-reduced with autograd, so the gradients are those of one process holding
    the whole batch; the state_dict keys are BatchNorm's."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"input: expected at least 2 dimensions (B, C, ...), got shape {tuple(input.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        totals = _AllReduceSum.apply(torch.cat((x.sum(dims), count)))
        n = totals[-1]
        centred = x - (totals[:-1] / n).view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n  # two passes, as BatchNorm: no cancellation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(totals[:-1] / n, momentum)
                self.running_var.lerp_(var * n / (n - 1), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def _sync_batch_norm(model: torch.nn.Module, device: torch.device) -> None:
    """Replace every BatchNorm of ``model`` (in place, keeping its parameters and buffers) by one
    normalising over the global batch: a run on N processes of B pairs then computes what one
    process with N*B pairs computes (per-process statistics would differ, and each rank's
    running averages would drift apart)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                continue
            if device.type == "cuda":
                synced = torch.nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            else:
                synced = _GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            synced.track_running_stats = child.track_running_stats
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(synced, key, getattr(child, key))
            synced.train(child.training)
            setattr(parent, name, synced)


def _rewind_metrics(path: Path, step: int) -> None:
    """Keep the complete lines of steps <= ``step`` (a killed run may have logged further, or half
    a line): a resumed run appends from ``step + 1`` and the file keeps one line per step."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    atomic_write(path, "".join(f"{line}\n" for line in kept))


def train(
    options: dict,
    output_dir,
    resume: bool = False,
    overwrite: bool = False,
    device=None,
    amp: bool = False,
    compile: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    log=print,
) -> dict:
    """Train A2Net on synthetic pairs; see the module docstring.

    Args:
        options: the run's options (keys of :data:`DEFAULTS`, e.g. ``dict(DEFAULTS, **PRESETS["demo"])``).
        output_dir: where ``metrics.jsonl`` and ``last/`` go.
        resume: continue from ``output_dir/last`` (options are then those stored there).
        overwrite: replace the run ``output_dir`` holds (without it, and without ``resume``, a
            directory holding a run is refused).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        amp: bf16 autocast on CUDA.
        compile: ``torch.compile`` the model.
        num_workers: DataLoader workers.
        progress: show a tqdm bar (rank 0).
        log: where messages go.
    Returns:
        ``{"step", "loss", "seconds", "output_dir"}`` of the run.
    """
    from tqdm import tqdm

    output_dir = check_output_dir("--output-dir", output_dir)
    stored = None
    if resume and overwrite:
        raise UsageError("--resume, --overwrite: expected at most one of them, got both")
    if resume:
        stored = _stored_run(output_dir)
        options = dict(
            {**DEFAULTS, **stored["options"]},  # a run saved before an option existed ran with its default
            max_steps=options["max_steps"],
            epochs=options["epochs"],
            checkpoint_every=options["checkpoint_every"],
        )
    elif not overwrite and (found := _existing_run(output_dir)) is not None:
        raise UsageError(
            f"--output-dir: {str(output_dir)!r} holds a run ({found}); pass --resume to continue it or "
            "--overwrite to replace it"
        )
    _check(options)
    if stored is not None and options["max_steps"] is not None and options["max_steps"] <= stored["step"]:
        raise UsageError(
            f"--max-steps: the run being resumed is at step {stored['step']} already, got {options['max_steps']}"
        )
    _check_data(options["data"])
    rank, local_rank, world = _distributed()
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", local_rank)  # one GPU per process, as torchrun numbers them
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_amp = amp and device.type == "cuda"
    if amp and not use_amp and rank == 0:
        log("--amp: bf16 autocast is used on CUDA only; training in fp32 on CPU")

    dataset = SyntheticPairDataset(
        options["data"],
        options["geometric_model"],
        options["image_size"],
        resize=tuple(options["resize"]),
        seed=options["seed"],
        thetas=options["thetas"],
        augment=options["augment"],
        identity_share=options["identity_share"],
        near_identity_share=options["near_identity_share"],
    )
    max_steps = options["max_steps"]
    if max_steps is None:
        max_steps = math.ceil(options["epochs"] * len(dataset) / (options["batch_size"] * world))
        if stored is not None and max_steps <= stored["step"]:
            raise UsageError(
                f"--epochs: {options['epochs']} epochs end at step {max_steps}; the run being resumed is at step "
                f"{stored['step']} already"
            )

    config = {
        "geometric_model": options["geometric_model"],
        "backbone": options["backbone"],
        "image_size": [options["image_size"], options["image_size"]],
        "freeze_backbone": not options["fine_tune_backbone"],
        "use_oac": options["use_oac"],
        "use_attention": options["use_attention"],
    }
    model = build_model(config, backbone_seed=options["backbone_seed"], backbone_weights=options["backbone_weights"])
    if options["init_from"] is not None and stored is None:
        _init_weights(model, options["init_from"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=options["lr"])
    step = 0
    if stored is not None:
        state = ckpt.load_checkpoint(output_dir / "last", model=model, optimizer=optimizer)
        step = state["step"]
    model.to(device)
    for group in optimizer.state.values():  # Adam moments follow the model's device
        for key, value in group.items():
            if isinstance(value, torch.Tensor) and key != "step":
                group[key] = value.to(device)
    consistency = any(options[k] for k in CONSISTENCY_WEIGHTS)
    net = model
    if consistency:
        net = ConsistencyBatch(
            model, swap=options["swap_weight"] or options["cycle_weight"], self_pairs=options["self_weight"]
        )
    if world > 1:
        _sync_batch_norm(model, device)
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    if compile:
        net = torch.compile(net)
    loss_fn = geometry.TransformedGridLoss(options["geometric_model"])

    metrics_path = output_dir / METRICS_FILE
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        _clear_run(output_dir, overwrite and stored is None, log)
        if stored is not None:
            _rewind_metrics(metrics_path, step)
    extra = {"options": options, "preset": options.get("preset")}

    sampler = StepBatchSampler(options["batch_size"], step + 1, max_steps, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_pairs,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    if rank == 0:
        log(
            f"training {options['geometric_model']} A2Net ({options['backbone']}, {options['image_size']}px, batch "
            f"{options['batch_size']}x{world}, lr {options['lr']}) on {len(dataset)} images of {options['data']} "
            f"-> {output_dir}: steps {step + 1}..{max_steps} on {device}"
            + (f", starting from the weights of {options['init_from']}" if options["init_from"] and not stored else "")
        )
    bar = tqdm(total=max_steps, initial=step, disable=not progress or rank != 0, dynamic_ncols=True, unit="step")
    start = time.perf_counter()
    last_time, loss_value = start, float("nan")
    metrics = open(metrics_path, "a") if rank == 0 else None
    try:
        for batch in loader:
            step += 1
            source = normalize_images(batch["source"].to(device, non_blocking=True))
            target = normalize_images(batch["target"].to(device, non_blocking=True))
            theta_true = batch["theta"].to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(options, step, max_steps)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                theta = net(source, target)
            if consistency:
                loss = consistency_loss(theta.float(), theta_true, options, loss_fn)
            else:
                loss = loss_fn(theta.float(), theta_true)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            logged = loss.detach()
            if world > 1:
                torch.distributed.all_reduce(logged)
                logged /= world
            loss_value = float(logged)
            now = time.perf_counter()
            record = {
                "step": step,
                "loss": loss_value,
                "lr": optimizer.param_groups[0]["lr"],
                "pairs_per_s": options["batch_size"] * world / max(now - last_time, 1e-9),
            }
            last_time = now
            if rank == 0:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", pairs_s=f"{record['pairs_per_s']:.1f}")
                if step % options["checkpoint_every"] == 0 or step == max_steps:
                    os.fsync(metrics.fileno())
                    ckpt.save_checkpoint(output_dir / "last", model, optimizer, step=step, extra=extra)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    if rank == 0 and stored is None and step == 0:
        ckpt.save_checkpoint(output_dir / "last", model, optimizer, step=0, extra=extra)
    seconds = time.perf_counter() - start
    if rank == 0:
        log(f"done: step {step}, loss {loss_value:.4f}, {seconds:.0f} s -> {output_dir / 'last'}")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"step": step, "loss": loss_value, "seconds": seconds, "output_dir": str(output_dir)}
