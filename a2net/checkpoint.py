"""Checkpoints: save, load and rebuild A2Net models, crash-safe.

A checkpoint is a directory (or, written by :func:`save_model_file`, its ``model.safetensors``
alone, as the embedded demo model)::

    model.safetensors   the weights (safetensors); its header metadata also holds the state below,
                        so the file alone is a complete model (the embedded demo is one such file)
    state.json          {"format", "step", "config" (A2Net's config), "backbone", ...extra}
    optimizer.pt        the optimizer's state_dict (torch.save; absent when saved without one)

**Backbones.** A2Net's ``config`` names its backbone (a key of :data:`a2net.model.BACKBONES`,
from which :func:`a2net.model.build_model` rebuilds it) or says ``"custom"`` (not rebuildable). A
frozen, randomly initialised backbone is not stored when it is large (VGG-16 or ResNet-101 without
weights: tens of MB): :func:`a2net.model.build_model` creates it under a forked RNG seeded with
``backbone_seed``, and the checkpoint keeps that seed and the SHA-256 of the backbone's tensors,
checked when loading (a PyTorch version whose initialisation draws other numbers fails loudly
instead of running with other features). Any other backbone (small, pretrained, fine-tuned) is
stored with the head.

**Crash safety.** :func:`save_checkpoint` writes a complete sibling directory (every file
fsynced), then swaps it in with two renames (``last`` -> ``.last.old``, new -> ``last``) and
removes the old one; a crash between the renames leaves ``.last.old``, which the loaders use when
``last`` is missing. A kill at any instant leaves a loadable checkpoint (the new or the previous).
The fsynced writes are those of :mod:`a2net.fileio`.

**Integrity.** The safetensors metadata holds the SHA-256 of the weights; loading recomputes it,
so a flipped bit anywhere in the file is reported as corruption (files saved before the
checksum existed are checked without it). Loading also refuses
non-finite weights, tensors whose shapes differ from those the stored config builds, and a
``state.json`` that is not the JSON this module writes, each time naming the file
(:class:`a2net.errors.InputError`; a missing checkpoint is :class:`a2net.errors.InputNotFoundError`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from a2net.errors import InputError, InputNotFoundError
from a2net.fileio import atomic_write, fsync_dir, write_synced
from a2net.model import BACKBONES, backbone_sha256, build_model

__all__ = [
    "SEEDED_BACKBONE_MIN_BYTES",
    "DEFAULT_CHECKPOINT",
    "FORMAT",
    "load_checkpoint",
    "load_default_model",
    "load_model",
    "read_state",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_model_file",
]

#: ``state.json["format"]`` of this library's checkpoints.
FORMAT = "a2net-checkpoint-1"
#: The embedded demo checkpoint (affine, trained by ``a2net train``'s demo recipe), one file; its
#: state names its inference options (``"inference"``) and how it was trained (``"history"``).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo_affine.safetensors"
MODEL_FILE, STATE_FILE, OPTIMIZER_FILE = "model.safetensors", "state.json", "optimizer.pt"
_METADATA_KEY = "a2net_state"
_CHECKSUM_KEY = "a2net_sha256"
#: A frozen random backbone smaller than this is stored anyway (robust to PyTorch's initialisation).
SEEDED_BACKBONE_MIN_BYTES = 8 * 2**20
_RESERVED = ("format", "step", "config", "backbone", "torch_version")


# --------------------------------------------------------------------------------------------
# Writing


def _head_state(model: nn.Module, skip_backbone: bool) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if skip_backbone:
        state = {k: v for k, v in state.items() if not k.startswith("FeatureExtraction.")}
    # safetensors refuses shared or non-contiguous storage: every tensor its own contiguous copy
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _weights_sha256(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _backbone_record(model: nn.Module, store_backbone: bool | None) -> dict:
    """How the backbone is restored: from its seed (random init, unchanged) or stored."""
    init = getattr(model, "backbone_init", None)
    sha = backbone_sha256(model)
    seeded = init is not None and init.get("sha256") == sha
    if store_backbone is None:
        size = sum(t.numel() * t.element_size() for t in model.FeatureExtraction.state_dict().values())
        store_backbone = not seeded or size <= SEEDED_BACKBONE_MIN_BYTES
    if store_backbone is False and not seeded:
        raise ValueError(
            "store_backbone: False needs the unchanged random backbone of build_model (its seed "
            "rebuilds it); this backbone is pretrained, fine-tuned or custom"
        )
    if store_backbone or not seeded:
        return {"stored": True, "seed": init["seed"] if init is not None else None, "sha256": sha}
    return {"stored": False, "seed": init["seed"], "sha256": sha}


def save_checkpoint(
    directory,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    extra: dict | None = None,
    store_backbone: bool | None = None,
) -> Path:
    """Save ``model`` (and ``optimizer``) to ``directory``, replacing what is there atomically.

    Args:
        directory: the checkpoint directory (e.g. ``runs/demo/last``); its parent is created.
        model: an A2Net (or a DDP / compiled wrapper of one); its ``config`` is stored.
        optimizer: saved to ``optimizer.pt`` when given.
        step: the training step (``state.json["step"]``).
        extra: more JSON-serialisable entries for ``state.json`` (e.g. training arguments); they
            may not override ``format``, ``step``, ``config``, ``backbone``, ``torch_version``.
        store_backbone: store the backbone's tensors. ``None`` (default): stored unless the
            backbone is the unchanged random initialisation of :func:`a2net.model.build_model` and
            larger than :data:`SEEDED_BACKBONE_MIN_BYTES` (then its seed and SHA-256 are stored instead);
            ``False`` is only possible for such a seeded backbone.
    Returns:
        the directory.
    """
    text, blob = _model_file(model, step, extra, store_backbone)

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_synced(tmp / MODEL_FILE, lambda f: f.write(blob))
    if optimizer is not None:
        write_synced(tmp / OPTIMIZER_FILE, lambda f: torch.save(optimizer.state_dict(), f))
    write_synced(tmp / STATE_FILE, lambda f: f.write(text.encode()))
    fsync_dir(tmp)
    if old.exists() and directory.exists():
        shutil.rmtree(old)  # a leftover of an earlier crash after the swap
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_dir(directory.parent)
    if old.exists():
        shutil.rmtree(old)
    return directory


def save_model_file(
    path, model: nn.Module, step: int = 0, extra: dict | None = None, store_backbone: bool | None = None
) -> Path:
    """Write ``model`` as one self-contained ``.safetensors`` file (weights, their SHA-256 and the
    state in its metadata: what :func:`load_model` reads, like :data:`DEFAULT_CHECKPOINT`),
    atomically.

    Args:
        path: the file (``.safetensors``, not ``model.safetensors``: that name is a checkpoint
            directory's); its folder is created.
        model, step, extra, store_backbone: as in :func:`save_checkpoint`. ``extra`` may hold
            ``"inference"`` (the options :func:`a2net.inference.inference_defaults` reads) and
            ``"history"`` (one line on how the model was trained, which ``a2net demo`` prints).
    Returns:
        the path.
    """
    path = Path(path)
    if path.suffix != ".safetensors" or path.name == MODEL_FILE:
        raise ValueError(f"path: expected a .safetensors file not named {MODEL_FILE}, got {str(path)!r}")
    _, blob = _model_file(model, step, extra, store_backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, blob)
    return path


def _model_file(model: nn.Module, step: int, extra: dict | None, store_backbone: bool | None) -> tuple[str, bytes]:
    """``(state.json text, model.safetensors bytes)`` of ``model``, checked before anything is written."""
    from safetensors.torch import save as safetensors_save

    model = _unwrap(model)
    if not hasattr(model, "config") or not hasattr(model, "FeatureExtraction"):
        raise ValueError(f"model: expected an A2Net, got {type(model).__name__}")
    if model.config.get("backbone") == "custom":
        raise ValueError(
            "model: a 'custom' backbone cannot be rebuilt from a checkpoint; build the model with "
            f"a backbone named in a2net.model.BACKBONES {list(BACKBONES)}"
        )
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra: keys {clash} are reserved for the checkpoint itself")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    backbone = _backbone_record(model, store_backbone)
    state = {
        "format": FORMAT,
        "step": step,
        "config": model.config,
        "backbone": backbone,
        "torch_version": torch.__version__,
        **extra,
    }
    text = json.dumps(state, indent=2, sort_keys=False)
    json.loads(text)  # fail here, before anything is written, if extra is not JSON
    weights = _head_state(model, skip_backbone=not backbone["stored"])
    blob = safetensors_save(weights, metadata={_METADATA_KEY: text, _CHECKSUM_KEY: _weights_sha256(weights)})
    return text, blob


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


# --------------------------------------------------------------------------------------------
# Reading


def resolve_checkpoint(path) -> Path:
    """The checkpoint directory or model file that ``path`` designates.

    A directory (or a ``model.safetensors`` inside one) whose swap was interrupted by a crash
    resolves to the previous checkpoint ``.<name>.old`` beside it. A ``.safetensors`` file outside
    a checkpoint directory (the embedded demo) is returned as it is.
    """
    path = Path(path)
    if path.suffix == ".safetensors" and path.name != MODEL_FILE:
        if not path.is_file():
            raise InputNotFoundError(f"path: no such checkpoint file {str(path)!r}")
        return path
    directory = path.parent if path.name == MODEL_FILE else path
    if (directory / MODEL_FILE).is_file() and (directory / STATE_FILE).is_file():
        return directory
    old = directory.with_name(f".{directory.name}.old")
    if not directory.exists() and (old / MODEL_FILE).is_file() and (old / STATE_FILE).is_file():
        return old  # a crash between the two renames of save_checkpoint
    if not directory.exists():
        found = "it does not exist"
    elif not directory.is_dir():
        found = "it is not a directory"
    else:
        names = sorted(p.name for p in directory.iterdir())
        found = f"it holds {names[:5]}" if names else "it is empty"
    raise InputNotFoundError(
        f"path: no checkpoint at {str(path)!r} (expected a directory with {MODEL_FILE} and "
        f"{STATE_FILE}, or a .safetensors file; {found})"
    )


def _check_state(state, where: str) -> dict:
    """``state`` is what :func:`save_checkpoint` writes, or an :class:`InputError` naming ``where``."""
    if not isinstance(state, dict):
        raise InputError(f"checkpoint: {where} is corrupted: expected a JSON object, got {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise InputError(
            f"checkpoint: expected an {FORMAT!r} checkpoint, got format {state.get('format')!r} in {where}"
        )
    backbone = state.get("backbone")
    problems = []
    if isinstance(state.get("step"), bool) or not isinstance(state.get("step"), int) or state["step"] < 0:
        problems.append(f"step {state.get('step')!r} (expected an int >= 0)")
    if not isinstance(state.get("config"), dict):
        problems.append(f"config {state.get('config')!r} (expected an object)")
    if (
        not isinstance(backbone, dict)
        or not isinstance(backbone.get("stored"), bool)
        or not isinstance(backbone.get("sha256"), str)
        or not (backbone.get("seed") is None or isinstance(backbone.get("seed"), int))
    ):
        problems.append(f"backbone {backbone!r} (expected {{'stored': bool, 'seed': int or null, 'sha256': str}})")
    if problems:
        raise InputError(f"checkpoint: {where} is corrupted: " + "; ".join(problems))
    return state


def _parse_state(text, where: str) -> dict:
    try:
        return _check_state(json.loads(text), where)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"checkpoint: {where} is corrupted (not JSON: {err})") from None


def _read(path) -> tuple[Path, dict, Path]:
    """``(resolved, state, model file)``."""
    from safetensors import SafetensorError, safe_open

    resolved = resolve_checkpoint(path)
    if resolved.is_dir():
        model_file = resolved / MODEL_FILE
        state_file = resolved / STATE_FILE
        state = _parse_state(state_file.read_bytes(), repr(str(state_file)))
    else:
        model_file = resolved
        try:
            with safe_open(str(resolved), framework="pt") as f:
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise InputError(f"checkpoint: {str(resolved)!r} is corrupted or truncated ({err})") from None
        if _METADATA_KEY not in metadata:
            raise InputError(
                f"path: {str(resolved)!r} is a safetensors file without a2net's state in its metadata; "
                "pass the checkpoint directory instead"
            )
        state = _parse_state(metadata[_METADATA_KEY], f"the metadata of {str(resolved)!r}")
    return resolved, state, model_file


def read_state(path) -> dict:
    """The checked ``state.json`` (step, config, training options...) of a checkpoint, without
    loading its weights.

    Raises:
        a2net.errors.InputNotFoundError: no checkpoint at ``path``.
        a2net.errors.InputError: its state is corrupted (named).
    """
    return _read(path)[1]


def _read_weights(model_file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a model file, checked: readable, its checksum (when stored), all finite."""
    from safetensors import SafetensorError, safe_open

    where = repr(str(model_file))
    try:
        with safe_open(str(model_file), framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise InputError(f"checkpoint: {where} is corrupted or truncated ({err})") from None
    expected = metadata.get(_CHECKSUM_KEY)
    if expected is not None and _weights_sha256(weights) != expected:
        raise InputError(
            f"checkpoint: {where} is corrupted: its tensors do not match the SHA-256 stored when it was saved"
        )
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            bad = int(tensor.numel() - tensor.isfinite().sum())
            raise InputError(f"checkpoint: {where} is corrupted: tensor {name!r} has {bad} NaN/inf values")
    return weights


def _restore_weights(model: nn.Module, state: dict, model_file: Path) -> None:
    backbone = state["backbone"]
    if not backbone["stored"]:
        sha = backbone_sha256(model)
        if sha != backbone["sha256"]:
            raise RuntimeError(
                f"checkpoint: the backbone rebuilt from seed {backbone['seed']} has SHA-256 {sha[:16]}..., the "
                f"checkpoint expects {backbone['sha256'][:16]}... (saved with torch {state.get('torch_version')}, "
                f"running torch {torch.__version__}): this PyTorch version initialises the backbone differently, so "
                "the trained head would see other features. Retrain (a2net train) with this version, or install "
                f"torch {state.get('torch_version')}."
            )
    weights = _read_weights(model_file)
    own = model.state_dict()
    wrong = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in weights.items() if k in own and v.shape != own[k].shape
    ]
    if wrong:
        name, got, expected = wrong[0]
        raise InputError(
            f"checkpoint: {str(model_file)!r} does not fit the model its config describes: tensor {name!r} has "
            f"shape {got}, the config gives {expected} ({len(wrong)} tensor(s) differ)"
        )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if not backbone["stored"]:
        missing = [k for k in missing if not k.startswith("FeatureExtraction.")]
    if missing or unexpected:
        raise InputError(
            f"checkpoint: {str(model_file)!r} does not fit the model its config describes: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )


def load_model(path, map_location="cpu") -> nn.Module:
    """Rebuild the A2Net a checkpoint describes and load its weights.

    Args:
        path: a checkpoint directory, its ``model.safetensors``, or a self-contained
            ``.safetensors`` model file (such as :data:`DEFAULT_CHECKPOINT`).
        map_location: device of the returned model (``"cpu"``, ``"cuda"``, a ``torch.device``).
    Returns:
        the model in eval mode; ``model.checkpoint_state`` holds the checkpoint's state dict
        (step, config, training arguments).
    """
    resolved, state, model_file = _read(path)
    seed = state["backbone"]["seed"]
    try:
        model = build_model(state["config"], backbone_seed=seed if seed is not None else 0)
    except (TypeError, ValueError) as err:
        raise InputError(f"checkpoint: {str(resolved)!r}: its config does not describe a model ({err})") from None
    _restore_weights(model, state, model_file)
    model.checkpoint_state = state
    return model.to(map_location).eval()


def load_checkpoint(
    directory, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None, map_location="cpu"
) -> dict:
    """Load a checkpoint for resuming.

    Args:
        directory: the checkpoint directory (``.../last``; its crash leftover is found too).
        model: an A2Net to load the weights into (its config must match); ``None`` rebuilds it
            (:func:`load_model`).
        optimizer: loaded from ``optimizer.pt`` when given (an error if the file is absent).
        map_location: where the optimizer's tensors go (the model stays where it is).
    Returns:
        ``state.json``'s dict plus ``"model"`` (the model) and ``"directory"`` (the resolved path).
    """
    resolved, state, model_file = _read(directory)
    if model is None:
        model = load_model(resolved, map_location=map_location)
    else:
        target = _unwrap(model)
        if dict(target.config) != state["config"]:
            raise ValueError(f"model: its config {target.config} differs from the checkpoint's {state['config']}")
        device = next(target.parameters()).device
        _restore_weights(target, state, model_file)
        target.to(device)
    if optimizer is not None:
        if not resolved.is_dir() or not (resolved / OPTIMIZER_FILE).is_file():
            raise InputNotFoundError(f"optimizer: no {OPTIMIZER_FILE} in {str(resolved)!r}")
        where = str(resolved / OPTIMIZER_FILE)
        try:
            saved = torch.load(resolved / OPTIMIZER_FILE, map_location=map_location, weights_only=True)
            optimizer.load_state_dict(saved)
        except Exception as err:  # torch.load reports damage as RuntimeError, UnpicklingError, EOFError, ...
            raise InputError(f"optimizer: {where!r} is corrupted or does not fit the model ({err})") from None
    return {**state, "model": model, "directory": resolved}


def load_default_model(map_location="cpu") -> nn.Module:
    """The embedded demo model (:data:`DEFAULT_CHECKPOINT`, affine), in eval mode.

    Raises:
        FileNotFoundError: the checkpoint is not in this installation.
    """
    if not DEFAULT_CHECKPOINT.is_file():
        raise InputNotFoundError(
            f"the embedded demo checkpoint {str(DEFAULT_CHECKPOINT)!r} is missing from this installation. Train one "
            "with `a2net train --preset demo --output-dir runs/demo` and pass `--checkpoint runs/demo/last` "
            "(or a2net.checkpoint.load_model('runs/demo/last'))."
        )
    return load_model(DEFAULT_CHECKPOINT, map_location=map_location)
