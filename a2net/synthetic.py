"""The training pairs (docs/design.md §6): synthetic pairs made from any images, seeded and
worker-safe, plus the bundled default (real photos shipped with scikit-image) split into training
and held-out images. (The evaluation benchmarks, with real image pairs and annotations, are
:mod:`a2net.benchmarks`.)

A synthetic pair is one image seen twice: the image is resized (480x640 by default), mirror-padded
by half of each side, the *source* is the central crop and the *target* the same region warped by
a random affine or TPS ``theta`` (or a theta read from a CSV file), both sampled at
``output_size``; ``theta`` maps target points to source points (:func:`a2net.geometry.synthetic_pair`).

Determinism: :class:`SyntheticPairDataset` is an *infinite seeded stream*. Item ``k`` (any
``k >= 0``) is a pure function of ``(seed, k)``: epoch ``e = k // len(dataset)`` visits the images
in a permutation drawn from ``(seed, e)``, and the random theta (and augmentation) of item ``k`` is
drawn from a generator seeded with ``(seed, k)``. Nothing depends on global RNG state, on the
worker that loads the item or on the items loaded before, so training step ``s`` (batch ``B``)
always gets items ``(s-1)*B ... s*B-1`` and a resumed run sees exactly the data of an uninterrupted
one (:class:`StepBatchSampler`).

The bundled photos (no download; ``pip install 'a2net[data]'`` for scikit-image): of the images in
scikit-image's data folder (:func:`a2net.images.bundled_names`), only real photographs are used.
Synthetic or non-photo images are excluded (:data:`BUNDLED_EXCLUDED` gives the reason for each):
the chessboards, the colour wheel, the horse silhouette, the logo, the scanned page, the phantom,
the photographed text, the synthetic motion blur and the 102x102 retina crop. The remaining photos
are split by name:

* held-out (:data:`BUNDLED_HELDOUT`): ``chelsea``, ``coffee``, ``coins``, ``motorcycle_left``,
  ``motorcycle_right`` — object photos for evaluation and the demo (the two motorcycle views stay
  on the same side: they are one scene);
* training (:data:`BUNDLED_TRAINING`): ``astronaut``, ``brick``, ``camera``, ``cell``, ``grass``,
  ``gravel``, ``hubble_deep_field``, ``ihc``, ``moon``, ``retina``, ``rocket``.

Held-out synthetic evaluation (the number the demo checkpoint reports):
:func:`heldout_synthetic_pairs` builds a fixed set of pairs from the held-out photos (seed
:data:`HELDOUT_SEED`; resized with :func:`matched_resize`, so that the pairs are sharp, as the demo
preset trains), and :func:`a2net.metrics.synthetic_pck` scores predicted thetas on them: a 20 x 20
(``grid_size``) grid of target points on ``[-1, 1]^2`` is mapped by the predicted and by the true
theta, both converted to pixels of the ``(H, W)`` pair images, and a point is correct when the two
are within ``alpha * max(H, W)`` pixels (every grid point counts, also one that leaves the image).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from a2net import geometry
from a2net._validation import as_size, check_choice, check_tensor
from a2net.images import bundled_image, bundled_names, load_image

__all__ = [
    "BUNDLED_EXCLUDED",
    "BUNDLED_HELDOUT",
    "BUNDLED_TRAINING",
    "HELDOUT_SEED",
    "IMAGE_SUFFIXES",
    "StepBatchSampler",
    "SyntheticPairDataset",
    "bundled_photos",
    "collate_pairs",
    "heldout_synthetic_pairs",
    "list_images",
    "matched_resize",
    "read_theta_csv",
    "stream_seed",
]

#: File suffixes (case-insensitive) taken from an image folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Bundled photos used for training.
BUNDLED_TRAINING = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "grass",
    "gravel",
    "hubble_deep_field",
    "ihc",
    "moon",
    "retina",
    "rocket",
)  #
#: Bundled photos kept for evaluation and the demo (never trained on).
BUNDLED_HELDOUT = ("chelsea", "coffee", "coins", "motorcycle_left", "motorcycle_right")
#: Bundled images that are not real photographs, or unusable as such, and why.
BUNDLED_EXCLUDED = {
    "chessboard_GRAY": "synthetic chessboard",
    "chessboard_RGB": "synthetic chessboard",
    "clock_motion": "synthetic motion blur, almost featureless",
    "color": "synthetic colour wheel",
    "horse": "binary silhouette",
    "logo": "drawn logo",
    "microaneurysms": "102x102 crop, almost featureless",
    "page": "scanned text page",
    "phantom": "synthetic Shepp-Logan phantom",
    "text": "photographed text on a flat page",
}
#: Seed of the held-out synthetic pairs (:func:`heldout_synthetic_pairs`).
HELDOUT_SEED = 2018
#: Size the authors resize every training image to before padding and cropping (docs/design.md §6).
DEFAULT_RESIZE = (480, 640)

# stream tags: the epoch order, the per-item draws and the kind of each item's theta never share seeds
_PERMUTATION, _THETA, _KIND = 0, 1, 2


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer keys (numpy ``SeedSequence``: platform- and
    version-independent, and distinct keys give independent streams)."""
    state = np.random.SeedSequence([int(seed) & (2**64 - 1), *[int(k) for k in keys]]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def _generator(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, *keys))


# --------------------------------------------------------------------------------------------
# Image sources


def list_images(folder) -> list[Path]:
    """All ``.jpg``, ``.jpeg`` and ``.png`` files under ``folder`` (recursive, sorted, any case)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder: no such directory {str(folder)!r}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def bundled_photos(split: str = "training") -> list[str]:
    """Names of the bundled photos of a split that the installed scikit-image ships.

    Args:
        split: ``"training"``, ``"heldout"`` or ``"all"`` (both).
    Returns:
        the names, in the order of :data:`BUNDLED_TRAINING` / :data:`BUNDLED_HELDOUT`.
    """
    check_choice("split", split, ("training", "heldout", "all"))
    names = {"training": BUNDLED_TRAINING, "heldout": BUNDLED_HELDOUT, "all": BUNDLED_TRAINING + BUNDLED_HELDOUT}[split]
    available = set(bundled_names())
    found = [n for n in names if n in available]
    if not found:
        raise FileNotFoundError(
            f"split: none of the bundled {split} photos {list(names)} is in scikit-image's data "
            "folder (is scikit-image installed? pip install 'a2net[data]')"
        )
    return found


def read_theta_csv(path, geometric_model: str) -> tuple[list[str], torch.Tensor]:
    """Image names and thetas from a training CSV in the authors' format.

    One row per image: the image name (relative to the image folder), then 6 (affine) or 18 (TPS)
    numbers; a header row is skipped. The authors' affine columns are ordered
    ``[a22, a21, a12, a11, ty, tx]`` (CNNGeometric reads them as ``row[[3, 2, 5, 1, 0, 4]]``), so
    they are reordered to this library's ``[a11, a12, tx, a21, a22, ty]``; TPS rows are the 9
    control point x then 9 y, as here.

    Args:
        path: the CSV file.
        geometric_model: ``"affine"`` or ``"tps"``.
    Returns:
        ``(names, thetas)``, thetas ``(N, 6)`` or ``(N, 18)`` float64.
    """
    check_choice("geometric_model", geometric_model, tuple(geometry.THETA_SIZE))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thetas: no such file {str(path)!r}")
    count = geometry.THETA_SIZE[geometric_model]
    names, rows = [], []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            try:
                values = [float(v) for v in row[1:]]
            except ValueError:
                if line == 1:
                    continue  # header
                raise ValueError(
                    f"thetas: {str(path)!r} line {line}: expected numbers after the image name, got {row[1:]!r}"
                ) from None
            if len(values) != count:
                raise ValueError(
                    f"thetas: {str(path)!r} line {line}: expected {count} numbers ({geometric_model}), "
                    f"got {len(values)}"
                )
            names.append(row[0].strip())
            rows.append(values)
    if not rows:
        raise ValueError(f"thetas: no rows in {str(path)!r}")
    thetas = torch.tensor(rows, dtype=torch.float64)
    if geometric_model == "affine":
        thetas = thetas[:, [3, 2, 5, 1, 0, 4]]
    return names, thetas


# --------------------------------------------------------------------------------------------
# The dataset


class SyntheticPairDataset(Dataset):
    """Synthetic training pairs (docs/design.md §6) from images, as an infinite seeded stream.

    Args:
        images: a folder (searched recursively for jpg/jpeg/png), a sequence of image paths, a
            sequence of ``(3, H, W)`` tensors in ``[0, 1]``, or ``"bundled:training"`` /
            ``"bundled:heldout"`` / ``"bundled:all"`` (:func:`bundled_photos`). Files are read
            when an item needs them (nothing large held in memory); tensors and bundled photos
            are kept once resized.
        geometric_model: ``"affine"`` or ``"tps"``.
        output_size: ``(h, w)`` of source and target (240x240 in the paper), or an int.
        resize: ``(H, W)`` every image is resized to first (480x640, the authors'; bilinear with
            antialiasing). Since the pairs are sampled in normalised coordinates, this only sets
            the sharpness: the crop of ``crop_factor`` is sampled ~1:1 when
            ``H ~ output_size[0] / crop_factor`` (e.g. 427x569 for 240x240 pairs).
        seed: the stream's seed.
        thetas: ``None`` (random thetas, :func:`a2net.geometry.random_affine_theta` /
            :func:`~a2net.geometry.random_tps_theta` with the authors' ranges) or a CSV in the
            authors' format (:func:`read_theta_csv`); with a CSV, ``images`` must be a folder (the
            names are relative to it) and each row is one item of an epoch.
        augment: after resizing, crop a random window (each side 60-100% of the resized image)
            and flip it horizontally with probability 1/2 — more variety from very few images (the
            bundled demo); off in the paper's recipe. (Coordinates are normalised, so the crop
            need not be resized again: it is sampled at ``output_size`` like a whole image.)
        padding_factor, crop_factor: of :func:`a2net.geometry.synthetic_pair` (0.5 and 9/16).
        identity_share, near_identity_share: fractions of the items (random affine thetas only)
            whose theta is the identity (source and target are then the same crop) or a small
            viewpoint change (:func:`a2net.geometry.random_near_identity_theta`); the others get
            the authors' random theta (docs/design.md §6). The kind of item ``k`` is drawn from
            its own stream ``(seed, k)``, so with both at 0 the items are those of a dataset
            without these options, bit for bit, and the other items keep their draws.

    ``len(dataset)`` is the number of items per epoch; any index ``k >= 0`` is valid (indices past
    the end continue into later epochs, with a new image order and new thetas).

    Item ``k``: a dict with ``source``, ``target`` ``(3, h, w)`` float32 in ``[0, 1]`` (not
    ImageNet-normalised: see :func:`a2net.normalize_images`), ``theta`` ``(6,)`` or ``(18,)``
    float32 (target -> source), ``index`` (int, ``k``) and ``name`` (str, the image).
    """

    def __init__(
        self,
        images,
        geometric_model: str = "affine",
        output_size=(240, 240),
        resize=DEFAULT_RESIZE,
        seed: int = 0,
        thetas=None,
        augment: bool = False,
        padding_factor: float = 0.5,
        crop_factor: float = 9 / 16,
        identity_share: float = 0.0,
        near_identity_share: float = 0.0,
    ):
        check_choice("geometric_model", geometric_model, tuple(geometry.THETA_SIZE))
        for name, share in (("identity_share", identity_share), ("near_identity_share", near_identity_share)):
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
                raise ValueError(f"{name}: expected a number in [0, 1], got {share!r}")
        if identity_share + near_identity_share > 1:
            raise ValueError(
                f"near_identity_share: expected at most 1 - identity_share = {1 - identity_share:g}, "
                f"got {near_identity_share!r}"
            )
        if (identity_share or near_identity_share) and (geometric_model != "affine" or thetas is not None):
            raise ValueError(
                "identity_share, near_identity_share: only random affine thetas have them, got geometric_model "
                f"{geometric_model!r}" + ("" if thetas is None else " with thetas from a CSV")
            )
        self.identity_share, self.near_identity_share = float(identity_share), float(near_identity_share)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: expected an int, got {seed!r}")
        self.geometric_model = geometric_model
        self.output_size = as_size("output_size", output_size)
        self.resize = as_size("resize", resize)
        self.seed = seed
        self.augment = bool(augment)
        self.padding_factor, self.crop_factor = padding_factor, crop_factor
        self.thetas = None
        self._sources, self.names = self._resolve(images)
        if thetas is not None:
            if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
                names, self.thetas = read_theta_csv(thetas, geometric_model)
                missing = [n for n in names if not (Path(images) / n).is_file()]
                if missing:
                    raise FileNotFoundError(
                        f"thetas: {len(missing)} image(s) of {str(thetas)!r} not in {str(images)!r}, e.g. {missing[:3]}"
                    )
                self._sources = [Path(images) / n for n in names]
                self.names = names
            else:
                raise ValueError(f"images: a theta CSV needs the image folder its names refer to, got {images!r}")
        if not self._sources:
            raise ValueError(f"images: expected at least one image, found none in {images!r}")
        self._cache: dict[int, torch.Tensor] = {}
        self._permutation: tuple[int, torch.Tensor] | None = None

    @staticmethod
    def _resolve(images) -> tuple[list, list[str]]:
        if isinstance(images, str) and images.startswith("bundled:"):
            names = bundled_photos(images.removeprefix("bundled:"))
            return [("bundled", n) for n in names], names
        if isinstance(images, (str, os.PathLike)):
            paths = list_images(images)
            return paths, [str(p.relative_to(images)) for p in paths]
        if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
            raise ValueError(
                f"images: expected a folder, a sequence of paths or of (3, H, W) tensors, or "
                f"'bundled:<split>', got {type(images).__name__}"
            )
        sources, names = [], []
        for i, image in enumerate(images):
            if isinstance(image, torch.Tensor):
                check_tensor(f"images[{i}]", image, 3)
                if image.shape[0] != 3:
                    raise ValueError(f"images[{i}]: expected 3 channels (3, H, W), got shape {tuple(image.shape)}")
                sources.append(image)
                names.append(f"<tensor {i}>")
            elif isinstance(image, (str, os.PathLike)):
                sources.append(Path(image))
                names.append(str(image))
            else:
                raise ValueError(f"images[{i}]: expected a path or a (3, H, W) tensor, got {type(image).__name__}")
        return sources, names

    def __len__(self) -> int:
        return len(self._sources)

    def _resized(self, i: int) -> torch.Tensor:
        """Image ``i`` resized to ``resize``, ``(1, 3, H, W)``; kept in memory when it is an
        in-memory tensor or a bundled photo (files of a folder are read again each time)."""
        if i in self._cache:
            return self._cache[i]
        source = self._sources[i]
        if isinstance(source, torch.Tensor):
            image = source.float()
        elif isinstance(source, tuple):
            image = bundled_image(source[1])
        else:
            image = load_image(source)
        image = F.interpolate(
            image.unsqueeze(0), size=self.resize, mode="bilinear", align_corners=False, antialias=True
        ).clamp_(0, 1)
        if not isinstance(source, Path):
            self._cache[i] = image
        return image

    def _order(self, epoch: int) -> torch.Tensor:
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, torch.randperm(len(self), generator=_generator(self.seed, _PERMUTATION, epoch)))
        return self._permutation[1]

    @staticmethod
    def _augment(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        h, w = image.shape[2:]
        ch, cw = max(2, round(h * (0.6 + 0.4 * u[0]))), max(2, round(w * (0.6 + 0.4 * u[1])))
        top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
        image = image[:, :, top : top + ch, left : left + cw]
        return image.flip(-1) if u[4] < 0.5 else image

    def _kind(self, index: int) -> str:
        """``"identity"``, ``"near_identity"`` or ``"random"``: the kind of item ``index``'s theta."""
        if not (self.identity_share or self.near_identity_share):
            return "random"
        u = float(torch.rand(1, generator=_generator(self.seed, _KIND, index), dtype=torch.float64))
        if u < self.identity_share:
            return "identity"
        return "near_identity" if u < self.identity_share + self.near_identity_share else "random"

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise IndexError(f"index: expected an int >= 0, got {index!r}")
        index = int(index)
        i = int(self._order(index // len(self))[index % len(self)])
        generator = _generator(self.seed, _THETA, index)
        kind = self._kind(index)
        if self.thetas is not None:
            theta = self.thetas[i : i + 1]
        elif kind == "identity":
            theta = geometry.identity_theta("affine", 1, dtype=torch.float64)
        elif kind == "near_identity":
            theta = geometry.random_near_identity_theta(1, generator, dtype=torch.float64)
        elif self.geometric_model == "affine":
            theta = geometry.random_affine_theta(1, generator, dtype=torch.float64)
        else:
            theta = geometry.random_tps_theta(1, generator, dtype=torch.float64)
        image = self._resized(i)
        if self.augment:
            image = self._augment(image, generator)
        theta = theta.float()
        source, target = geometry.synthetic_pair(image, theta, self.output_size, self.padding_factor, self.crop_factor)
        return {"source": source[0], "target": target[0], "theta": theta[0], "index": index, "name": self.names[i]}


def collate_pairs(items: Sequence[dict]) -> dict:
    """Stack items of :class:`SyntheticPairDataset`: ``source``/``target`` ``(B, 3, h, w)``,
    ``theta`` ``(B, P)``, ``index`` ``(B,)`` int64, ``name`` a list."""
    return {
        "source": torch.stack([it["source"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "theta": torch.stack([it["theta"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "name": [it["name"] for it in items],
    }


class StepBatchSampler(Sampler):
    """Batches of stream indices by training step: step ``s`` (from 1) is the global batch of
    items ``(s-1)*G ... s*G-1`` with ``G = batch_size * world_size``; rank ``r`` takes every
    ``world_size``-th of them from ``r`` (the interleaving of ``DistributedSampler``).

    Unlike ``DistributedSampler`` (whose state is an epoch), the data of every step is a function
    of the step alone, so resuming at step ``s`` needs nothing but ``start_step=s``.

    Args:
        batch_size: items per rank and step.
        start_step: first step yielded (1 for a fresh run, ``last + 1`` when resuming).
        max_steps: last step yielded (inclusive).
        rank, world_size: of this process in a distributed run (0 and 1 otherwise).
    """

    def __init__(self, batch_size: int, start_step: int, max_steps: int, rank: int = 0, world_size: int = 1):
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("start_step", start_step, 1),
            ("max_steps", max_steps, 0),
            ("world_size", world_size, 1),
            ("rank", rank, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if rank >= world_size:
            raise ValueError(f"rank: expected < world_size = {world_size}, got {rank}")
        self.batch_size, self.start_step, self.max_steps = batch_size, start_step, max_steps
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step + 1)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.batch_size * self.world_size
        for step in range(self.start_step, self.max_steps + 1):
            yield list(range((step - 1) * g + self.rank, step * g, self.world_size))


# --------------------------------------------------------------------------------------------
# Held-out synthetic evaluation


def matched_resize(output_size, crop_factor: float = 9 / 16) -> tuple[int, int]:
    """The 3:4 resize whose central ``crop_factor`` is ``output_size`` high: pairs sampled ~1:1
    (neither blurred nor aliased). ``(427, 569)`` for 240x240 pairs, ``(313, 417)`` for 176x176."""
    h = round(as_size("output_size", output_size)[0] / crop_factor)
    return h, round(h * 4 / 3)


def heldout_synthetic_pairs(
    geometric_model: str = "affine",
    n_pairs: int = 100,
    image_size=(240, 240),
    seed: int = HELDOUT_SEED,
    images="bundled:heldout",
    resize=None,
) -> dict:
    """A fixed set of synthetic pairs of the held-out bundled photos (for evaluation).

    Items ``0 .. n_pairs-1`` of ``SyntheticPairDataset(images, geometric_model, image_size,
    resize=resize, seed=seed)`` without augmentation: the photos are visited in seeded epochs,
    each pair with its own random theta, so the set depends only on the arguments.

    Args:
        geometric_model: ``"affine"`` or ``"tps"`` (which random thetas make the pairs).
        n_pairs: number of pairs N.
        image_size: ``(h, w)`` of the pair images (the model's input size), or an int.
        seed: the pairs' seed (default :data:`HELDOUT_SEED`).
        images: any ``images`` argument of :class:`SyntheticPairDataset` (default the held-out photos).
        resize: ``(H, W)`` of the resize before cropping; ``None``: :func:`matched_resize` of
            ``image_size`` (sharp pairs, as the demo preset trains on).
    Returns:
        the :func:`collate_pairs` batch: ``source``, ``target`` ``(N, 3, h, w)`` in ``[0, 1]``,
        ``theta`` ``(N, P)`` (the truth, target -> source), ``index`` and ``name``.
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
        raise ValueError(f"n_pairs: expected an int >= 1, got {n_pairs!r}")
    resize = matched_resize(image_size) if resize is None else resize
    dataset = SyntheticPairDataset(images, geometric_model, image_size, resize=resize, seed=seed)
    return collate_pairs([dataset[k] for k in range(n_pairs)])
