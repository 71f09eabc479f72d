"""Loading images as tensors, and the real photos bundled with scikit-image (no download).

Every image enters the library here or through :func:`a2net.inference.as_image`, and comes out
as a ``(3, H, W)`` float32 tensor in ``[0, 1]``:

* 8-bit data (uint8, and every 8-bit PIL mode: grayscale, palette, RGB(A), CMYK, ...) is divided
  by 255; 16-bit data (uint16 arrays, 16-bit grayscale PNG/TIFF) by 65535 — a 16-bit file is
  never clipped to white; 16-bit RGB PNGs are read by PIL at 8 bits;
* float data must be finite and in ``[0, 1]`` (within :data:`RANGE_SLACK`, the rounding of a
  resampling): a float image in 0..255 is refused (divide it by 255, or pass uint8), not rescaled;
* a file that is missing, not an image, truncated or corrupted raises an error naming it
  (:class:`a2net.errors.InputNotFoundError`, :class:`a2net.errors.InputError`).

Images of any size are accepted here: the network input size (at least 112 pixels a side for
the named backbones) is what the images are resized to before alignment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from a2net.errors import InputError, InputNotFoundError, require_extra

__all__ = [
    "DEMO_PAIR",
    "RANGE_SLACK",
    "bundled_image",
    "bundled_names",
    "check_image_file",
    "check_image_range",
    "from_pil",
    "load_image",
    "to_tensor",
]

#: scikit-image's bundled photos used by the demo: two views of one motorcycle.
DEMO_PAIR = ("motorcycle_left", "motorcycle_right")
#: How far outside ``[0, 1]`` a float image may go (bilinear resampling rounds to ~1e-7).
RANGE_SLACK = 1e-3
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def check_image_range(name: str, images: torch.Tensor) -> None:
    """Check that float ``images`` (any shape) are finite and in ``[0, 1]``; integer images pass.

    Raises:
        a2net.errors.InputError: naming ``name``, with the range found.
    """
    if not images.is_floating_point() or images.numel() == 0:
        return
    finite = images.isfinite()
    if not bool(finite.all()):
        bad = int(images.numel() - finite.sum())
        raise InputError(f"{name}: expected finite pixel values, got {bad} NaN/inf of {images.numel()}")
    low, high = float(images.min()), float(images.max())
    if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
        hint = " (an image in 0..255? divide it by 255, or pass uint8)" if high > 1.5 else ""
        raise InputError(f"{name}: expected a float image in [0, 1], got values in [{low:.4g}, {high:.4g}]{hint}")


def to_tensor(array: np.ndarray, name: str = "image") -> torch.Tensor:
    """An ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array -> ``(3, H, W)`` float32 in [0, 1].

    uint8 is divided by 255, uint16 by 65535; float arrays must already be in ``[0, 1]`` (see the
    module docstring); other dtypes are refused. A fourth (alpha) channel is dropped.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        scale = 255.0
    elif a.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        scale = None
    else:
        raise InputError(f"{name}: expected a uint8, uint16 or float array, got dtype {a.dtype}")
    t = torch.from_numpy(np.array(a, dtype=np.float32, copy=True)).permute(2, 0, 1)
    if scale is not None:
        return t / scale
    check_image_range(name, t)
    return t


def _decode(image, where: str) -> np.ndarray:
    """The pixels of an opened PIL image as an array :func:`to_tensor` scales correctly."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":  # 32-bit integers: 16-bit data (PGM, PNG) in a wider container
        a = np.asarray(image)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise InputError(f"{where}: 32-bit integer pixels in [{a.min()}, {a.max()}]; expected 8- or 16-bit data")
        return a.astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    return np.asarray(image.convert("RGB"))


def from_pil(image, name: str = "image") -> torch.Tensor:
    """A PIL image (any mode; 16-bit ones scaled by 65535) -> ``(3, H, W)`` float32 in [0, 1]."""
    return to_tensor(_decode(image, name), name)


def load_image(path, name: str = "image") -> torch.Tensor:
    """Read an image file (jpg/png/...) as ``(3, H, W)`` float32 in [0, 1]; ``name`` (e.g.
    ``"source"``) opens every error message.

    Raises:
        a2net.errors.InputNotFoundError: no such file.
        a2net.errors.InputError: the file is not an image, is truncated or corrupted, or holds
            pixel values this library cannot scale (32-bit integers beyond 16 bits, floats outside
            ``[0, 1]``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{name}: no such file {str(path)!r}")
    from PIL import Image, UnidentifiedImageError  # installed with torchvision

    where = repr(str(path))
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, inside this error handling
            return from_pil(image, f"{name} {where}")
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(
            f"{name}: {where} is not an image file (expected JPEG, PNG or another format PIL reads)"
        ) from None
    except Exception as err:  # PIL reports a bad stream as OSError, SyntaxError, zlib.error, ...
        raise InputError(f"{name}: {where} is truncated or corrupted ({type(err).__name__}: {err})") from None


def check_image_file(path) -> tuple[int, int]:
    """Check that ``path`` is an image file by reading its header only (fast: a folder of
    thousands of images is checked in seconds); returns its ``(H, W)``.

    Raises:
        a2net.errors.InputNotFoundError, a2net.errors.InputError: as :func:`load_image`, for a
            missing file or one that is not an image (a truncated one is found when decoded).
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"image: no such file {str(path)!r}")
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception as err:  # UnidentifiedImageError, or OSError for an unreadable file
        raise InputError(
            f"image: {str(path)!r} is not an image file (expected JPEG, PNG or another format PIL reads; "
            f"{type(err).__name__})"
        ) from None


def _bundled_dir() -> Path:
    return Path(require_extra("skimage.data", "the bundled photos (scikit-image's)").data_dir)


def bundled_names() -> list[str]:
    """Names of the photos that ship inside scikit-image (no download)."""
    return sorted(p.stem for p in _bundled_dir().iterdir() if p.suffix in (".png", ".jpg"))


def bundled_image(name: str) -> torch.Tensor:
    """One of scikit-image's bundled photos (e.g. ``"chelsea"``) as ``(3, H, W)`` in [0, 1].

    Read from the files inside the installed package, never downloaded.
    """
    root = _bundled_dir()
    for suffix in (".png", ".jpg"):
        if (root / f"{name}{suffix}").is_file():
            return load_image(root / f"{name}{suffix}")
    raise ValueError(f"name: expected one of scikit-image's bundled photos {bundled_names()}, got {name!r}")
