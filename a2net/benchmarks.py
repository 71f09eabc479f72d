"""The evaluation benchmarks (docs/design.md §8): readers of PF-WILLOW, PF-PASCAL, TSS and
Caltech-101 (real image pairs with annotations), the bundled stereo pair with its disparity ground
truth (:func:`stereo_pair`), plus the Middlebury ``.flo`` format and a batching ``collate``. (The
synthetic training pairs are :mod:`a2net.synthetic`.)

Every dataset is a ``torch.utils.data.Dataset`` whose items are dicts. Common keys:

* ``source_image``, ``target_image``: ``(3, H, W)`` float32 in [0, 1], at the file's resolution
  (grayscale files are repeated to 3 channels);
* ``source_size``, ``target_size``: ``(2,)`` int64 ``(H, W)`` of those images;
* ``source_name``, ``target_name``: the image paths as the pair list gives them (str);
* ``category`` (str) and ``class_index`` (0-D int64, ``-1`` where the format has none).

Keypoint datasets (:class:`PFWillowDataset`, :class:`PFPascalDataset`) add ``source_keypoints``,
``target_keypoints`` — ``(2, N)`` float64, **1-based pixels** of the file, row 0 x, row 1 y, ``-1``
for padding — and ``reference_length`` (0-D float64, the PCK ``L`` of the pair, measured in the
source image) with ``reference_kind`` (str: ``"bbox"``, ``"keypoints"`` or ``"image"``) saying
which ``L`` it is. Following the protocol (docs/design.md §8), the *target* keypoints are mapped
through ``theta`` into the source image and compared with the *source* keypoints::

    valid = geometry.valid_keypoints(batch["target_keypoints"])
    points = geometry.pixels_to_normalized(batch["target_keypoints"], batch["target_size"])
    moved = geometry.transform_points(theta.double(), points)
    moved = geometry.normalized_to_pixels(moved, batch["source_size"], valid)
    metrics.pck(moved, batch["source_keypoints"], batch["reference_length"], alpha=0.1)

:class:`TSSDataset` items carry a dense ground-truth flow and masks, :class:`CaltechDataset` items
object polygons and masks; see each class. A file that is missing raises
:class:`a2net.errors.InputNotFoundError` (a ``FileNotFoundError``) naming the file and the
dataset's origin (nothing is downloaded); a pair list that is not a text CSV, has a row with too
few columns, or has no pair at all (only a header) raises :class:`a2net.errors.InputError` (a
``ValueError``) naming the file and the line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from a2net._validation import as_size, check_choice, check_dim, check_tensor
from a2net.errors import InputError, InputNotFoundError, require_extra
from a2net.geometry import polygon_to_mask
from a2net.images import load_image

__all__ = [
    "CaltechDataset",
    "FLO_MAGIC",
    "PASCAL_CLASSES",
    "PFPascalDataset",
    "PFWillowDataset",
    "STEREO_POINTS",
    "STEREO_SEED",
    "TSSDataset",
    "TSS_SUBSETS",
    "collate",
    "read_flo",
    "stereo_pair",
    "write_flo",
]

#: Size and seed of the fixed random sample of the stereo pair's correspondences (:func:`stereo_pair`).
STEREO_POINTS = 5000
STEREO_SEED = 0
#: The float32 tag that opens a Middlebury ``.flo`` file ("PIEH" read as a float).
FLO_MAGIC = 202021.25
#: PF-PASCAL's ``class`` column is 1-based in this (PASCAL VOC) order.
PASCAL_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)  #
#: The three parts of TSS, one folder each.
TSS_SUBSETS = ("FG3DCar", "JODS", "PASCAL")

_ORIGIN = {
    "PF-WILLOW": "PF-WILLOW comes from the Proposal Flow project page (Ham, Cho, Schmid and Ponce, CVPR 2016); "
    "its pair list test_pairs_pf.csv from the CNNGeometric project page (Rocco, Arandjelovic and Sivic, CVPR 2017)",
    "PF-PASCAL": "PF-PASCAL (images and Annotations/<class>/*.mat) comes from the Proposal Flow project page "
    "(Ham, Cho, Schmid and Ponce, CVPR 2016 / TPAMI 2018); the split lists {test,val,all}_pairs_pf_pascal.csv "
    "from the CNNGeometric and WeakAlign project pages (Rocco et al., CVPR 2017 and 2018)",
    "TSS": "TSS comes from the project page of 'Joint Recovery of Dense Correspondence and Cosegmentation in Two "
    "Images' (Taniai, Sinha and Sato, CVPR 2016): folders FG3DCar, JODS and PASCAL of pair folders",
    "Caltech-101": "Caltech-101 images and annotations come from the Caltech-101 page (Fei-Fei, Fergus and Perona, "
    "2004); the pair list test_pairs_caltech_with_category.csv from the CNNGeometric project page (Rocco, "
    "Arandjelovic and Sivic, CVPR 2017)",
}  #


def _require(path: Path, dataset: str, what: str) -> Path:
    if not path.exists():
        raise InputNotFoundError(
            f"{dataset}: {what} not found: {str(path)!r}. {_ORIGIN[dataset]}; download it there and pass its "
            "folder as root (nothing is downloaded here)."
        )
    return path


def _image(root: Path, name: str, dataset: str) -> torch.Tensor:
    return load_image(_require(root / name, dataset, "image"))


def _size(image: torch.Tensor) -> torch.Tensor:
    return torch.tensor(image.shape[1:], dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# Middlebury .flo


def read_flo(path) -> torch.Tensor:
    """Read a Middlebury ``.flo`` optical flow file.

    Format (little-endian): float32 ``202021.25``, int32 width, int32 height, then
    ``height * width`` float32 pairs ``(u, v)``, row by row. The flow at pixel ``p`` of image 1
    points to ``p + (u, v)`` in image 2. Unknown flow is stored as values >= 1e9 in magnitude
    and is returned as is (:func:`a2net.metrics.flow_pck` skips it).

    Args:
        path: file path.
    Returns:
        ``(2, H, W)`` float32 tensor, channel 0 u (x), channel 1 v (y).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    raw = path.read_bytes()
    if len(raw) < 12:
        raise ValueError(f"path: expected a .flo header of 12 bytes, got {len(raw)} bytes in {str(path)!r}")
    magic = float(np.frombuffer(raw, "<f4", count=1)[0])
    if magic != FLO_MAGIC:
        raise ValueError(f"path: expected the .flo magic number {FLO_MAGIC}, got {magic} in {str(path)!r}")
    width, height = (int(v) for v in np.frombuffer(raw, "<i4", count=2, offset=4))
    expected = 12 + 8 * width * height
    if width < 0 or height < 0 or len(raw) != expected:
        raise ValueError(
            f"path: expected {expected} bytes for a {width}x{height} flow, got {len(raw)} in {str(path)!r}"
        )
    data = np.frombuffer(raw, "<f4", count=2 * width * height, offset=12).reshape(height, width, 2)
    return torch.from_numpy(data.astype(np.float32).transpose(2, 0, 1).copy())


def write_flo(path, flow) -> None:
    """Write a ``(2, H, W)`` flow (tensor or array, pixels) as a Middlebury ``.flo`` file (float32)."""
    array = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
    if array.ndim != 3 or array.shape[0] != 2:
        raise ValueError(f"flow: expected shape (2, H, W), got {array.shape}")
    height, width = array.shape[1:]
    body = np.ascontiguousarray(array.transpose(1, 2, 0), dtype="<f4")
    Path(path).write_bytes(
        np.array([FLO_MAGIC], "<f4").tobytes() + np.array([width, height], "<i4").tobytes() + body.tobytes()
    )


# --------------------------------------------------------------------------------------------
# CSV pair lists


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _read_csv(
    path: Path, min_columns: int, numeric_column: int, dataset: str
) -> tuple[list[str] | None, list[list[str]]]:
    """``(header or None, rows)``. The first row is a header when its ``numeric_column`` cell is
    not a number (the authors' files have one; a header-less file works too). A file without
    any pair row is an error: a benchmark of 0 pairs has no score."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows, lines = [], []
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append([cell.strip() for cell in row])
                    lines.append(reader.line_num)
    except UnicodeDecodeError as err:
        raise InputError(
            f"{dataset}: {str(path)!r} is not a text CSV pair list (byte {err.start} is not UTF-8)"
        ) from None
    except csv.Error as err:
        raise InputError(f"{dataset}: {str(path)!r}, line {reader.line_num}: not a CSV row ({err})") from None
    header = None
    if rows and len(rows[0]) > numeric_column and not _is_number(rows[0][numeric_column]):
        header, rows, lines = rows[0], rows[1:], lines[1:]
    if not rows:
        found = "only a header row" if header is not None else "no rows"
        raise InputError(f"{dataset}: {str(path)!r} has no pairs ({found}); expected at least one pair row")
    for row, line in zip(rows, lines, strict=True):
        if len(row) < min_columns:
            raise InputError(f"{str(path)!r}, line {line}: expected at least {min_columns} columns, got {len(row)}")
    return header, rows


def _numbers(text: str, where: str) -> list[float]:
    """A coordinate list: numbers separated by ``;``, ``,`` or white space."""
    cells = [c for c in re.split(r"[;,\s]+", text.strip()) if c]
    try:
        return [float(c) for c in cells]
    except ValueError as err:
        raise ValueError(f"{where}: expected a list of numbers separated by ';', got {text!r}") from err


def _point_pair(xa, ya, xb, yb, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``(2, N)`` float64 keypoint sets; a keypoint missing (negative or absent) in either
    image is padded with -1 in both, so that validity is one mask for the pair."""
    if len(xa) != len(ya) or len(xb) != len(yb):
        raise ValueError(
            f"{where}: expected as many x as y values, got {len(xa)}/{len(ya)} (A), {len(xb)}/{len(yb)} (B)"
        )
    n = max(len(xa), len(xb))
    a = torch.full((2, n), -1.0, dtype=torch.float64)
    b = torch.full((2, n), -1.0, dtype=torch.float64)
    a[:, : len(xa)] = torch.tensor([xa, ya], dtype=torch.float64).reshape(2, -1)
    b[:, : len(xb)] = torch.tensor([xb, yb], dtype=torch.float64).reshape(2, -1)
    missing = (a < 0).any(0) | (b < 0).any(0)
    a[:, missing] = -1.0
    b[:, missing] = -1.0
    return a, b


def _keypoint_box(points: torch.Tensor) -> torch.Tensor:
    """``(4,)`` ``x1, y1, x2, y2`` of the valid keypoints of ``(2, N)``; NaN without any."""
    valid = (points >= 0).all(0)
    if not bool(valid.any()):
        return torch.full((4,), float("nan"), dtype=torch.float64)
    p = points[:, valid]
    return torch.cat((p.amin(1), p.amax(1)))


def _longest_side(box: torch.Tensor) -> torch.Tensor:
    return torch.maximum(box[2] - box[0], box[3] - box[1])


# --------------------------------------------------------------------------------------------
# PF-WILLOW


class PFWillowDataset(Dataset):
    """PF-WILLOW (900 pairs, 10 classes x 90; docs/design.md §8).

    The pair list ``test_pairs_pf.csv`` has columns image A, image B, then 10 x and 10 y values of
    A's keypoints and 10 x and 10 y of B's (1-based pixels); a header row is detected and
    skipped. Image A is the source, B the target. ``reference_length`` is the longest side of
    the bounding box of the source's (valid) keypoints, ``reference_kind`` ``"keypoints"``.
    ``category`` is the folder of image A (e.g. ``"car(G)"``); ``class_index`` is -1.

    Args:
        root: folder that holds the pair list and against which its image paths are resolved.
        csv_file: the pair list, relative to ``root`` or absolute.
    """

    def __init__(self, root, csv_file="test_pairs_pf.csv"):
        self.root = Path(root)
        self.csv_file = _require(self.root / csv_file, "PF-WILLOW", "pair list")
        _, self.rows = _read_csv(self.csv_file, min_columns=42, numeric_column=2, dataset="PF-WILLOW")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        where = f"{str(self.csv_file)!r}, pair {index}"
        try:
            values = [float(v) for v in row[2:42]]
        except ValueError as err:
            raise ValueError(f"{where}: expected 40 numbers after the two image names, got {row[2:42]}") from err
        source_points, target_points = _point_pair(values[0:10], values[10:20], values[20:30], values[30:40], where)
        source, target = _image(self.root, row[0], "PF-WILLOW"), _image(self.root, row[1], "PF-WILLOW")
        return {
            "source_image": source,
            "target_image": target,
            "source_size": _size(source),
            "target_size": _size(target),
            "source_name": row[0],
            "target_name": row[1],
            "source_keypoints": source_points,
            "target_keypoints": target_points,
            "reference_length": _longest_side(_keypoint_box(source_points)),
            "reference_kind": "keypoints",
            "category": Path(row[0]).parent.name,
            "class_index": torch.tensor(-1),
        }


# --------------------------------------------------------------------------------------------
# PF-PASCAL


def _read_pascal_box(path: Path) -> torch.Tensor:
    loadmat = require_extra("scipy.io", f"reading the PF-PASCAL annotation {str(path)!r}").loadmat
    box = np.asarray(loadmat(str(path))["bbox"], dtype=np.float64).reshape(-1)
    if box.size != 4:
        raise ValueError(f"{str(path)!r}: expected a bbox of 4 numbers (x1, y1, x2, y2), got {box.size}")
    return torch.from_numpy(box)


class PFPascalDataset(Dataset):
    """PF-PASCAL (1,351 pairs over 20 classes; test split 299 pairs; docs/design.md §8).

    Pair lists have columns ``source_image, target_image, class, XA, YA, XB, YB``, each
    coordinate column a ``;``-separated list of 1-based pixels (``-1`` pads missing keypoints;
    lists of different lengths are padded with ``-1`` too). A header row is detected; with one,
    columns are found by name. A ``flip`` column, where present and 1, mirrors both images and
    their annotations horizontally (``x -> W + 1 - x``). ``class`` is 1-based in
    :data:`PASCAL_CLASSES` order.

    Object bounding boxes are read from the Proposal Flow annotations
    ``<dir>/Annotations/<class>/<image stem>.mat`` (its ``bbox``, 1-based ``x1, y1, x2, y2``; read
    with ``scipy.io.loadmat``), where ``<dir>`` is the folder above the images' ``JPEGImages``
    (``annotation_root`` overrides it). Without that file the box is the bounding box of the
    valid keypoints, and ``bbox_from`` says which: ``"annotation"`` or ``"keypoints"``.

    ``reference_length`` is measured in the source image:

    * ``reference="bbox"``: the longest side of the source object box; ``reference_kind`` is
      ``"bbox"``, or ``"keypoints"`` when the box fell back to the keypoints;
    * ``reference="image"``: ``max(H, W)`` of the source image (``"image"``);
    * ``reference="keypoints"``: the longest side of the source keypoints' box (``"keypoints"``).
      This is what CNNGeometric / WeakAlign's ``pck_procedure="pf"`` computes, whatever its name.

    (WeakAlign's "image size" procedure instead rescales all keypoints to the 240x240 network
    input and uses ``L = 240``; to reproduce it, rescale the points and pass 240 to ``pck``.)

    Args:
        root: folder of the pair lists, against which image paths are resolved.
        split: ``"test"``, ``"val"``, ``"train"`` or ``"all"``: reads ``<split>_pairs_pf_pascal.csv``.
        csv_file: a pair list to read instead (relative to ``root`` or absolute).
        reference: ``"bbox"`` (default), ``"image"`` or ``"keypoints"``.
        annotation_root: folder of the ``<class>/<stem>.mat`` annotations, if not the default.

    Items add ``source_bbox``, ``target_bbox`` (``(4,)`` float64, 1-based pixels) and ``bbox_from``.
    """

    SPLITS = ("test", "val", "train", "all")
    _COLUMNS = ("source_image", "target_image", "class", "XA", "YA", "XB", "YB")

    def __init__(self, root, split: str = "test", csv_file=None, reference: str = "bbox", annotation_root=None):
        self.root = Path(root)
        check_choice("split", split, self.SPLITS)
        check_choice("reference", reference, ("bbox", "image", "keypoints"))
        self.split, self.reference = split, reference
        self.annotation_root = None if annotation_root is None else Path(annotation_root)
        name = f"{split}_pairs_pf_pascal.csv" if csv_file is None else csv_file
        self.csv_file = _require(self.root / name, "PF-PASCAL", "pair list")
        header, self.rows = _read_csv(self.csv_file, min_columns=3, numeric_column=2, dataset="PF-PASCAL")
        if header is not None and all(c in header for c in self._COLUMNS[:3]):
            self._column = {c: header.index(c) for c in (*self._COLUMNS, "flip") if c in header}
        else:  # positional: source, target, class, XA, YA, XB, YB
            self._column = {c: i for i, c in enumerate(self._COLUMNS)}

    def __len__(self) -> int:
        return len(self.rows)

    def _cell(self, row: list[str], column: str) -> str | None:
        i = self._column.get(column)
        return row[i] if i is not None and i < len(row) else None

    def _annotation_path(self, image_name: str, category: str) -> Path:
        stem = Path(image_name).stem + ".mat"
        if self.annotation_root is not None:
            return self.annotation_root / category / stem
        parts = Path(image_name).parts
        base = self.root / Path(*parts[: parts.index("JPEGImages")]) if "JPEGImages" in parts else self.root
        return base / "Annotations" / category / stem

    def _box(self, image_name: str, category: str, points: torch.Tensor) -> tuple[torch.Tensor, str]:
        path = self._annotation_path(image_name, category)
        if path.is_file():
            return _read_pascal_box(path), "annotation"
        return _keypoint_box(points), "keypoints"

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        where = f"{str(self.csv_file)!r}, pair {index}"
        source_name, target_name = self._cell(row, "source_image"), self._cell(row, "target_image")
        class_cell = self._cell(row, "class")
        if not _is_number(class_cell) or not 1 <= float(class_cell) <= len(PASCAL_CLASSES):
            raise ValueError(f"{where}: expected a class index in 1..{len(PASCAL_CLASSES)}, got {class_cell!r}")
        class_index = int(float(class_cell))
        category = PASCAL_CLASSES[class_index - 1]
        lists = [_numbers(self._cell(row, c) or "", where) for c in ("XA", "YA", "XB", "YB")]
        source_points, target_points = _point_pair(*lists, where)
        source, target = _image(self.root, source_name, "PF-PASCAL"), _image(self.root, target_name, "PF-PASCAL")
        source_box, source_from = self._box(source_name, category, source_points)
        target_box, target_from = self._box(target_name, category, target_points)
        flip = self._cell(row, "flip")
        if flip is not None and _is_number(flip) and float(flip) == 1:
            source, source_points, source_box = _mirror(source, source_points, source_box)
            target, target_points, target_box = _mirror(target, target_points, target_box)
        bbox_from = source_from if source_from == target_from else "mixed"
        if self.reference == "image":
            length, kind = torch.tensor(float(max(source.shape[1:])), dtype=torch.float64), "image"
        elif self.reference == "keypoints":
            length, kind = _longest_side(_keypoint_box(source_points)), "keypoints"
        else:
            length, kind = _longest_side(source_box), ("bbox" if source_from == "annotation" else "keypoints")
        return {
            "source_image": source,
            "target_image": target,
            "source_size": _size(source),
            "target_size": _size(target),
            "source_name": source_name,
            "target_name": target_name,
            "source_keypoints": source_points,
            "target_keypoints": target_points,
            "source_bbox": source_box,
            "target_bbox": target_box,
            "bbox_from": bbox_from,
            "reference_length": length,
            "reference_kind": kind,
            "category": category,
            "class_index": torch.tensor(class_index),
        }


def _mirror(image: torch.Tensor, points: torch.Tensor, box: torch.Tensor):
    """Horizontal flip of an image and its 1-based annotations (pixel 1 <-> pixel W)."""
    width = image.shape[2]
    points = points.clone()
    valid = (points >= 0).all(0)
    points[0, valid] = width + 1 - points[0, valid]
    box = torch.stack((width + 1 - box[2], box[1], width + 1 - box[0], box[3]))
    return image.flip(-1), points, box


# --------------------------------------------------------------------------------------------
# TSS


def _read_mask(path: Path) -> torch.Tensor:
    """A mask image -> ``(H, W)`` bool, foreground where the gray level is non-zero (the TSS
    kit's reading of its ground-truth masks)."""
    from PIL import Image  # a dependency of torchvision

    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("L")) > 0)


class TSSDataset(Dataset):
    """TSS (Taniai et al., CVPR 2016): dense flow with foreground masks (docs/design.md §8).

    Layout: ``root/<subset>/<pair>/`` with ``image1.png``, ``image2.png``, ``flow1.flo``,
    ``flow2.flo``, ``mask1.png``, ``mask2.png`` and an optional ``flip_gt.txt`` (``1`` when the
    two objects face opposite ways). ``flowK.flo`` is defined on ``imageK`` and points into the
    other image. Each pair folder gives two items, as the TSS evaluation kit scores both
    directions: item ``2 i`` has target ``image1`` (ground truth ``flow1.flo``, foreground
    ``mask1.png``) and source ``image2``; item ``2 i + 1`` the reverse. When ``flip_gt.txt`` says
    1 the *source* image (and its mask) is mirrored horizontally before alignment, as the
    reference evaluation does (CNNGeometric's ``evaluateTSS``): the ground-truth flow refers to
    the mirrored source.

    The flow is then the target -> source flow of :func:`a2net.metrics.theta_to_flow` with
    ``size = target_size`` and ``source_size = source_size``, to score with
    ``metrics.flow_pck(pred, flow[None], target_mask[None], 0.05, reference_length)``.
    ``reference_length`` is ``max(H, W)`` of the source image (the kit's threshold uses the image
    the flow points into), ``reference_kind`` ``"image"``.

    Items add ``flow`` (``(2, H_t, W_t)`` float32 pixels, unknown values kept as in the file),
    ``source_mask`` and ``target_mask`` (bool), ``flip`` (0-D bool) and ``pair`` (str,
    ``"<subset>/<pair>/flowK"``). ``category`` is the subset; ``class_index`` its position in
    :data:`TSS_SUBSETS`.

    Args:
        root: folder holding the subset folders.
        subsets: which of :data:`TSS_SUBSETS` to read.
    """

    def __init__(self, root, subsets: Sequence[str] = TSS_SUBSETS):
        self.root = Path(root)
        if isinstance(subsets, str):
            subsets = (subsets,)
        for subset in subsets:
            check_choice("subsets", subset, TSS_SUBSETS)
        self.pairs: list[tuple[str, Path]] = []
        for subset in subsets:
            folder = _require(self.root / subset, "TSS", f"subset folder {subset}")
            self.pairs += [(subset, p) for p in sorted(folder.iterdir()) if p.is_dir()]
        if not self.pairs:
            raise InputError(
                f"TSS: no pair folders in {[str(self.root / s) for s in subsets]}; expected <subset>/<pair>/"
            )

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index: expected a value in [0, {len(self)}), got {index}")
        index %= len(self)
        subset, folder = self.pairs[index // 2]
        k = 1 + index % 2  # target image k, source the other one
        o = 3 - k

        def need(name):
            return _require(folder / name, "TSS", "file")

        flip_file = folder / "flip_gt.txt"
        flip = flip_file.is_file() and flip_file.read_text().strip() not in ("", "0")
        source, target = load_image(need(f"image{o}.png")), load_image(need(f"image{k}.png"))
        source_mask, target_mask = _read_mask(need(f"mask{o}.png")), _read_mask(need(f"mask{k}.png"))
        if flip:
            source, source_mask = source.flip(-1), source_mask.flip(-1)
        return {
            "source_image": source,
            "target_image": target,
            "source_size": _size(source),
            "target_size": _size(target),
            "source_name": f"{subset}/{folder.name}/image{o}.png",
            "target_name": f"{subset}/{folder.name}/image{k}.png",
            "flow": read_flo(need(f"flow{k}.flo")),
            "source_mask": source_mask,
            "target_mask": target_mask,
            "flip": torch.tensor(flip),
            "reference_length": torch.tensor(float(max(source.shape[1:])), dtype=torch.float64),
            "reference_kind": "image",
            "pair": f"{subset}/{folder.name}/flow{k}",
            "category": subset,
            "class_index": torch.tensor(TSS_SUBSETS.index(subset)),
        }


# --------------------------------------------------------------------------------------------
# Caltech-101


class CaltechDataset(Dataset):
    """Caltech-101 pairs with object masks (docs/design.md §8), CNNGeometric's evaluation format.

    The pair list ``test_pairs_caltech_with_category.csv`` has columns ``source_image,
    target_image, class, XA, YA, XB, YB`` where ``XA``/``YA`` (``XB``/``YB``) list the x and y of
    the source (target) object polygon's vertices (separated by ``;``, or by ``,`` inside a quoted
    cell as in the published file). A header row is detected. The masks are the polygons
    rasterised by :func:`a2net.geometry.polygon_to_mask` (vertices as given, on the 0-based pixel
    grid, as the reference evaluation rasterises them with ``skimage.draw.polygon``).

    Items add ``source_polygon``, ``target_polygon`` (``(2, V)`` float64) and ``source_mask``,
    ``target_mask`` (``(H, W)`` bool at the image's resolution). ``class_index`` is the file's
    ``class`` value as is; ``category`` the folder of the source image (e.g. ``"Faces"``).

    Args:
        root: folder of the pair list, against which image paths are resolved.
        csv_file: the pair list, relative to ``root`` or absolute.
    """

    def __init__(self, root, csv_file="test_pairs_caltech_with_category.csv"):
        self.root = Path(root)
        self.csv_file = _require(self.root / csv_file, "Caltech-101", "pair list")
        _, self.rows = _read_csv(self.csv_file, min_columns=7, numeric_column=2, dataset="Caltech-101")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        where = f"{str(self.csv_file)!r}, pair {index}"
        if not _is_number(row[2]):
            raise ValueError(f"{where}: expected a numeric class, got {row[2]!r}")
        xa, ya, xb, yb = (_numbers(cell, where) for cell in row[3:7])
        if len(xa) != len(ya) or len(xb) != len(yb) or min(len(xa), len(xb)) < 3:
            raise ValueError(
                f"{where}: expected polygons of >= 3 vertices with as many x as y values, "
                f"got {len(xa)}/{len(ya)} (A) and {len(xb)}/{len(yb)} (B)"
            )
        source, target = _image(self.root, row[0], "Caltech-101"), _image(self.root, row[1], "Caltech-101")
        source_polygon = torch.tensor([xa, ya], dtype=torch.float64)
        target_polygon = torch.tensor([xb, yb], dtype=torch.float64)
        return {
            "source_image": source,
            "target_image": target,
            "source_size": _size(source),
            "target_size": _size(target),
            "source_name": row[0],
            "target_name": row[1],
            "source_polygon": source_polygon,
            "target_polygon": target_polygon,
            "source_mask": polygon_to_mask(xa, ya, tuple(source.shape[1:])),
            "target_mask": polygon_to_mask(xb, yb, tuple(target.shape[1:])),
            "category": Path(row[0]).parent.name,
            "class_index": torch.tensor(int(float(row[2]))),
        }


# --------------------------------------------------------------------------------------------
# Batching

_IMAGE_KEYS = ("source_image", "target_image")
_KEYPOINT_KEYS = ("source_keypoints", "target_keypoints")
#: Per-pair fields whose shape differs from pair to pair: always returned as lists.
_LIST_KEYS = ("flow", "source_mask", "target_mask", "source_polygon", "target_polygon")


def collate(items: Sequence[dict], size=None) -> dict:
    """Batch dataset items (``DataLoader(..., collate_fn=functools.partial(collate, size=240))``).

    * ``source_image``, ``target_image``: resized to ``size`` (bilinear, ``align_corners=True``,
      the sampling convention of :mod:`a2net.geometry`) and stacked to ``(B, 3, h, w)``; with
      ``size=None`` they must already share one size.
    * ``source_keypoints``, ``target_keypoints``: padded with ``-1`` to the largest N,
      ``(B, 2, N)``. They stay in the **original** images' 1-based pixels: normalise them with
      ``source_size`` / ``target_size`` (``geometry.pixels_to_normalized``), which the resize
      does not change, since normalised coordinates do not depend on the resolution.
    * ``flow``, masks and polygons: lists (their sizes differ; the metrics take them at the
      original resolution, one pair at a time or stacked by the caller).
    * other tensors (sizes, boxes, reference lengths, class indices) stacked; strings as lists.

    Args:
        items: non-empty sequence of item dicts of one dataset.
        size: ``(h, w)`` or an int for the images, or ``None``.
    Returns:
        a dict of the same keys.
    """
    if isinstance(items, dict) or not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError(f"items: expected a non-empty sequence of dicts, got {type(items).__name__}")
    size = None if size is None else as_size("size", size)
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in _IMAGE_KEYS:
            batch[key] = _stack_images(key, values, size)
        elif key in _KEYPOINT_KEYS:
            n = max(v.shape[1] for v in values)
            batch[key] = torch.stack([F.pad(v, (0, n - v.shape[1]), value=-1.0) for v in values])
        elif key in _LIST_KEYS or not isinstance(values[0], torch.Tensor):
            batch[key] = values
        else:
            batch[key] = torch.stack(values)
    return batch


def _stack_images(key: str, images: list[torch.Tensor], size) -> torch.Tensor:
    for image in images:
        check_tensor(key, image, 3)
        check_dim(key, image, 0, 3, "channels")
    if size is None:
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise ValueError(f"{key}: expected one image size without a resize size, got {sorted(shapes)}; pass size")
        return torch.stack(images)
    return torch.cat(
        [F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", align_corners=True) for image in images]
    )


# --------------------------------------------------------------------------------------------
# The bundled stereo pair


def stereo_pair(n_points: int | None = STEREO_POINTS, seed: int = STEREO_SEED) -> dict:
    """scikit-image's rectified stereo pair ``stereo_motorcycle`` with ground-truth
    correspondences from the disparity map of its left view (docs/design.md §8).

    Left pixel ``(x, y)`` with a finite disparity ``d`` matches right pixel ``(x - d, y)``. The
    right view is the *target* and the left view the *source*, so that theta (target -> source)
    must carry target point ``(x - d, y)`` to source point ``(x, y)``. Every left pixel whose
    match lies inside the right view (``x - d >= 1``, 1-based pixels: array column ``c`` is
    ``x = c + 1``) gives one correspondence; ``n_points`` of them (332,144 in all) are drawn
    without replacement by ``numpy.random.default_rng(seed)`` and kept in image order.

    Args:
        n_points: sample size (at most the number of correspondences), or None for all of them.
        seed: seed of the sample.
    Returns:
        ``{"source", "target"}``: the left and the right view ``(3, 500, 741)`` float32 in
        [0, 1]; ``{"source_points", "target_points"}``: ``(2, N)`` float64 1-based pixels, point
        ``i`` of the right view matching point ``i`` of the left view.
    """
    if n_points is not None and (isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1):
        raise ValueError(f"n_points: expected an int >= 1 or None, got {n_points!r}")
    from a2net.images import to_tensor

    left, right, disparity = require_extra("skimage.data", "the stereo pair (scikit-image's)").stereo_motorcycle()
    rows, cols = np.nonzero(np.isfinite(disparity))
    d = disparity[rows, cols].astype(np.float64)
    x_left, y = cols + 1.0, rows + 1.0
    x_right = x_left - d
    inside = x_right >= 1.0
    x_left, x_right, y = x_left[inside], x_right[inside], y[inside]
    if n_points is not None:
        pick = np.random.default_rng(seed).choice(x_left.size, size=min(n_points, x_left.size), replace=False)
        pick = np.sort(pick)
        x_left, x_right, y = x_left[pick], x_right[pick], y[pick]
    return {
        "source": to_tensor(left, "stereo left view"),
        "target": to_tensor(right, "stereo right view"),
        "source_points": torch.from_numpy(np.stack((x_left, y))),
        "target_points": torch.from_numpy(np.stack((x_right, y))),
    }
