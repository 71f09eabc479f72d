"""Loading images as tensors, and the real photos bundled with scikit-image (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: scikit-image's bundled photos used by the demo: two views of one motorcycle.
DEMO_PAIR = ("motorcycle_left", "motorcycle_right")


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """An ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (uint8 or float in [0, 1]) -> ``(3, H, W)``
    float32 in [0, 1]."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"image: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {a.shape}")
    a = a[..., :3]
    t = torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1)
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def load_image(path) -> torch.Tensor:
    """Read an image file (jpg/png/...) as ``(3, H, W)`` float32 in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image: no such file {str(path)!r}")
    from PIL import Image  # installed with torchvision

    with Image.open(path) as image:
        return to_tensor(np.asarray(image.convert("RGB")))


def _bundled_dir() -> Path:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("the bundled photos need scikit-image: pip install 'a2net[data]'") from err
    return Path(skimage.data.data_dir)


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
