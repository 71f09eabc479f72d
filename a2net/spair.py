"""SPair-71k (Min, Lee, Ponce and Cho, 2019): the reader and its evaluation protocol
(``a2net eval --benchmark spair``; docs/design.md §8).

Layout of the dataset folder (as published)::

    JPEGImages/<category>/<image>.jpg
    PairAnnotation/<split>/<pair>.json      split: trn, val or test
    Layout/large/<split>.txt                one pair name per line: <id>-<source>-<target>:<category>

A pair annotation holds ``src_imname``, ``trg_imname``, ``category``, ``src_kps`` and ``trg_kps``
(lists of ``[x, y]``, keypoint ``i`` of one image matching keypoint ``i`` of the other),
``src_bndbox`` and ``trg_bndbox`` (``[x1, y1, x2, y2]``), ``src_imsize``, ``trg_imsize``,
``kps_ids`` and the difficulty flags of :data:`DIFFICULTY_FLAGS`.

**Coordinates.** The files' keypoints and boxes are 0-based pixels: the public loaders (e.g. the
SPair-71k authors' DHPF code, ``data/spair.py``) rescale them by ``new size / old size`` with no
offset, which is right only for 0-based positions. This reader adds 1 to reach the 1-based pixels
of :func:`a2net.geometry.pixels_to_normalized` (box sides, hence ``L``, do not change).

**Direction.** SPair-71k's standard transfers the *source* keypoints into the *target* image and
measures the error there, with ``L = max(w, h)`` of the *target* object box. This library's
theta maps points of the model's target image to its source image (docs/design.md §5), so each
pair is given to the model with its roles swapped: the model's source is the pair's ``trg``
image and the model's target the pair's ``src`` image. Mapping the ``src`` keypoints through theta
then lands them in the ``trg`` image, where they are compared with the ``trg`` keypoints: exactly
the benchmark's measure, with no inverse transformation (a TPS has none in closed form). The
items below follow :mod:`a2net.benchmarks`'s keypoint convention in the *model's* roles, so
:func:`a2net.evaluate.evaluate_keypoints` scores them unchanged.

PCK is per pair (the fraction of its keypoints within ``alpha * L``), then averaged over pairs
and, separately, over categories, as the published tables report them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import Dataset

from a2net._validation import check_choice
from a2net.benchmarks import PASCAL_CLASSES
from a2net.errors import InputError, InputNotFoundError
from a2net.evaluate import KEYPOINT_ALPHAS, evaluate_keypoints
from a2net.images import load_image

__all__ = [
    "DIFFICULTY_FLAGS",
    "DIFFICULTY_LABELS",
    "SPAIR_CATEGORIES",
    "SPAIR_REFERENCES",
    "SPAIR_SPLITS",
    "SPairDataset",
    "evaluate_spair",
    "format_spair",
]

#: The 18 categories of SPair-71k: PASCAL VOC's 20, in their order, without dining table and sofa.
SPAIR_CATEGORIES = tuple(name for name in PASCAL_CLASSES if name not in ("diningtable", "sofa"))
#: The splits, as the dataset names its folders and layout files.
SPAIR_SPLITS = ("trn", "val", "test")
#: PCK reference lengths: the target object box (the benchmark's standard), the target image,
#: or the box of the target keypoints.
SPAIR_REFERENCES = ("bbox", "image", "keypoints")
#: The difficulty flags of a pair annotation, reported level by level.
DIFFICULTY_FLAGS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "mirror")
#: Names of the levels, in the SPair-71k paper's terms (``source``/``target`` are the file's
#: ``src``/``trg`` images).
DIFFICULTY_LABELS = {
    "viewpoint_variation": {0: "easy", 1: "medium", 2: "hard"},
    "scale_variation": {0: "easy", 1: "medium", 2: "hard"},
    "truncation": {0: "none", 1: "source only", 2: "target only", 3: "both"},
    "occlusion": {0: "none", 1: "source only", 2: "target only", 3: "both"},
}
_ORIGIN = (
    "SPair-71k comes from its project page (cvlab.postech.ac.kr/research/SPair-71k; Min, Lee, Ponce and Cho, "
    "'SPair-71k: A Large-scale Benchmark for Semantic Correspondence', 2019); download it there and pass the "
    "folder holding JPEGImages/, PairAnnotation/ and Layout/ (nothing is downloaded here)."
)
_REFERENCE_DESCRIPTIONS = {
    "bbox": "longest side of the target object's bounding box (the SPair-71k standard)",
    "image": "longest side of the target image",
    "keypoints": "longest side of the bounding box of the target keypoints",
}


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputNotFoundError(f"SPair-71k: {what} not found: {str(path)!r}. {_ORIGIN}")
    return path


def _points(value, key: str, where: str) -> torch.Tensor:
    """``[[x, y], ...]`` -> ``(2, N)`` float64 (as in the file)."""
    try:
        points = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        points = None
    if points is None or points.dim() != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise InputError(f"{where}: {key}: expected a non-empty list of [x, y] pairs, got {str(value)[:80]}")
    if not bool(points.isfinite().all()) or bool((points < 0).any()):
        raise InputError(f"{where}: {key}: expected finite 0-based pixel coordinates >= 0, got {str(value)[:80]}")
    return points.t().contiguous()


def _box(value, key: str, where: str) -> torch.Tensor:
    try:
        box = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        box = None
    if box is None or box.shape != (4,) or not bool(box.isfinite().all()) or not (box[2] > box[0] and box[3] > box[1]):
        raise InputError(f"{where}: {key}: expected [x1, y1, x2, y2] with x2 > x1 and y2 > y1, got {value!r}")
    return box


def _flag(value, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, (int, float)) and float(value).is_integer()):
        return int(value)
    raise InputError(f"{where}: {key}: expected an integer level, got {value!r}")


def _read_annotation(path: Path) -> dict:
    """The parsed, checked annotation of one pair (coordinates still 0-based, as in the file)."""
    where = f"SPair-71k: {str(path)!r}"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"{where}: not a JSON pair annotation (byte {err.start} is not UTF-8)") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not a JSON pair annotation (line {err.lineno}: {err.msg})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox"):
        if key not in record:
            raise InputError(f"{where}: expected the key {key!r} of a SPair-71k pair annotation; it is missing")
    for key in ("src_imname", "trg_imname", "category"):
        if not isinstance(record[key], str) or not record[key]:
            raise InputError(f"{where}: {key}: expected a name, got {record[key]!r}")
    source, target = _points(record["src_kps"], "src_kps", where), _points(record["trg_kps"], "trg_kps", where)
    if source.shape != target.shape:
        raise InputError(
            f"{where}: trg_kps: expected {source.shape[1]} keypoints (as many as src_kps), got {target.shape[1]}"
        )
    return {
        "src_imname": record["src_imname"],
        "trg_imname": record["trg_imname"],
        "category": record["category"],
        "src_kps": source,
        "trg_kps": target,
        "src_bndbox": _box(record["src_bndbox"], "src_bndbox", where),
        "trg_bndbox": _box(record["trg_bndbox"], "trg_bndbox", where),
        "kps_ids": record.get("kps_ids"),
        "flags": {flag: _flag(record.get(flag), flag, where) for flag in DIFFICULTY_FLAGS},
    }


class SPairDataset(Dataset):
    """The pairs of one SPair-71k split, in the layout file's order (see the module docstring).

    Every annotation is read and checked when the dataset is built (a missing or malformed file
    is named before any model runs); images are read by ``__getitem__``.

    Items have the keys of :mod:`a2net.benchmarks`' keypoint datasets in the **model's roles**:
    ``source_*`` is the pair's ``trg`` image (where errors are measured) and ``target_*`` its
    ``src`` image, so that ``theta`` carries the ``src`` keypoints into the ``trg`` image:

    * ``source_image``, ``target_image`` ``(3, H, W)`` in [0, 1]; ``source_size``, ``target_size``;
    * ``source_keypoints``, ``target_keypoints``: ``(2, N)`` float64, **1-based** pixels (the file's
      0-based values + 1); ``source_bbox``, ``target_bbox``: ``(4,)`` 1-based ``x1, y1, x2, y2``;
    * ``reference_length`` (0-D float64) measured in the ``trg`` image, of ``reference_kind``;
    * ``source_name``, ``target_name``: ``JPEGImages/<category>/<image>`` of the ``trg`` and ``src`` images;
    * ``category`` and ``class_index`` (its position in :data:`SPAIR_CATEGORIES`, -1 for another name);
    * ``pair`` (the layout name), ``spair_source_name``, ``spair_target_name`` (the file's ``src`` and
      ``trg`` images) and the flags of :data:`DIFFICULTY_FLAGS` (an int, ``-1`` when absent).

    Args:
        root: the folder holding ``JPEGImages/``, ``PairAnnotation/`` and ``Layout/``.
        split: ``"trn"``, ``"val"`` or ``"test"``.
        reference: the PCK length ``L``, measured in the ``trg`` image: ``"bbox"`` (the longest
            side of the object box, the benchmark's standard), ``"image"`` (the longest image
            side) or ``"keypoints"`` (the longest side of the keypoints' box).
        layout: the layout folder, ``"large"`` (the benchmark) or ``"small"``.
    """

    def __init__(self, root, split: str = "test", reference: str = "bbox", layout: str = "large"):
        check_choice("split", split, SPAIR_SPLITS)
        check_choice("reference", reference, SPAIR_REFERENCES)
        check_choice("layout", layout, ("large", "small"))
        self.root = Path(root)
        self.split, self.reference = split, reference
        self.layout_file = _require(self.root / "Layout" / layout / f"{split}.txt", f"the {split} layout file")
        try:
            names = [line.strip() for line in self.layout_file.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as err:
            raise InputError(
                f"SPair-71k: {str(self.layout_file)!r} is not a text layout file (byte {err.start} is not UTF-8)"
            ) from None
        self.pairs = [name for name in names if name]
        if not self.pairs:
            raise InputError(f"SPair-71k: {str(self.layout_file)!r} lists no pair; expected one pair name per line")
        folder = self.root / "PairAnnotation" / split
        self.annotations = [
            _read_annotation(_require(folder / f"{name}.json", "pair annotation")) for name in self.pairs
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, category: str, name: str) -> str:
        """``JPEGImages/<category>/<name>`` (relative to ``root``)."""
        return f"JPEGImages/{category}/{name}"

    def flags(self, index: int) -> dict:
        """The difficulty flags of pair ``index`` (``None`` where the annotation has none)."""
        return dict(self.annotations[index]["flags"])

    def __getitem__(self, index: int) -> dict:
        record = self.annotations[index]
        category = record["category"]
        src_name = self.image_path(category, record["src_imname"])
        trg_name = self.image_path(category, record["trg_imname"])
        src_image = load_image(_require(self.root / src_name, "image"))
        trg_image = load_image(_require(self.root / trg_name, "image"))
        src_points, trg_points = record["src_kps"] + 1, record["trg_kps"] + 1
        src_box, trg_box = record["src_bndbox"] + 1, record["trg_bndbox"] + 1
        if self.reference == "bbox":
            length = torch.maximum(trg_box[2] - trg_box[0], trg_box[3] - trg_box[1])
        elif self.reference == "image":
            length = torch.tensor(float(max(trg_image.shape[1:])), dtype=torch.float64)
        else:
            extent = trg_points.amax(1) - trg_points.amin(1)
            length = extent.max()
        item = {
            "source_image": trg_image,
            "target_image": src_image,
            "source_size": torch.tensor(trg_image.shape[1:], dtype=torch.int64),
            "target_size": torch.tensor(src_image.shape[1:], dtype=torch.int64),
            "source_name": trg_name,
            "target_name": src_name,
            "source_keypoints": trg_points,
            "target_keypoints": src_points,
            "source_bbox": trg_box,
            "target_bbox": src_box,
            "reference_length": length,
            "reference_kind": self.reference,
            "category": category,
            "class_index": torch.tensor(SPAIR_CATEGORIES.index(category) if category in SPAIR_CATEGORIES else -1),
            "pair": self.pairs[index],
            "spair_source_name": src_name,
            "spair_target_name": trg_name,
        }
        for flag, value in record["flags"].items():
            item[flag] = torch.tensor(-1 if value is None else value)
        return item


# --------------------------------------------------------------------------------------------
# Evaluation


def _mean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def evaluate_spair(
    model,
    dataset: SPairDataset,
    alphas=KEYPOINT_ALPHAS,
    image_size=None,
    batch_size: int = 8,
    device=None,
    num_workers: int = 0,
    progress: bool = True,
    inference: dict | None = None,
) -> dict:
    """PCK on SPair-71k per pair, per category, per difficulty level and overall.

    The keypoint protocol of :func:`a2net.evaluate.evaluate_keypoints` on the items of
    :class:`SPairDataset` (the model sees ``(trg, src)``: theta carries the ``src`` keypoints into
    the ``trg`` image; see the module docstring).

    Args:
        model: :class:`a2net.A2Net` or :class:`a2net.TwoStageAligner`.
        dataset: a :class:`SPairDataset`.
        other arguments: as :func:`a2net.evaluate.evaluate_keypoints`.
    Returns:
        the dict of :func:`a2net.evaluate.evaluate_keypoints` (``metrics`` the mean over pairs,
        ``class_average`` the mean over categories), where each ``per_pair`` record names the
        pair's ``src`` image as ``source`` and its ``trg`` image as ``target`` and adds ``pair``
        and the flags; plus

        * ``overall``: ``{"mean_over_pairs": {...}, "mean_over_categories": {...}}``;
        * ``per_difficulty``: ``{flag: {level: {"label", "pairs", "metrics"}}}`` for every flag
          present in the annotations (levels as strings, JSON keys);
        * ``transfer``: the direction in words.
    """
    if not isinstance(dataset, SPairDataset):
        raise ValueError(f"dataset: expected an SPairDataset, got {type(dataset).__name__}")
    result = evaluate_keypoints(
        model,
        dataset,
        alphas=alphas,
        image_size=image_size,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
        inference=inference,
    )
    names = list(result["metrics"])
    levels = defaultdict(lambda: defaultdict(list))
    for index, record in enumerate(result["per_pair"]):
        annotation = dataset.annotations[index]
        flags = dataset.flags(index)
        record.update(
            source=dataset.image_path(annotation["category"], annotation["src_imname"]),
            target=dataset.image_path(annotation["category"], annotation["trg_imname"]),
            pair=dataset.pairs[index],
            **flags,
        )
        for flag, value in flags.items():
            if value is not None:
                levels[flag][value].append(record)
    result["overall"] = {
        "mean_over_pairs": dict(result["metrics"]),
        "mean_over_categories": dict(result["class_average"]),
    }
    result["per_difficulty"] = {
        flag: {
            str(value): {
                "label": DIFFICULTY_LABELS.get(flag, {}).get(value, str(value)),
                "pairs": len(records),
                "metrics": {n: _mean([r[n] for r in records]) for n in names},
            }
            for value, records in sorted(levels[flag].items())
        }
        for flag in DIFFICULTY_FLAGS
        if flag in levels
    }
    result["transfer"] = "source keypoints -> target image (the model is given (target, source))"
    result["reference_description"] = _REFERENCE_DESCRIPTIONS.get(result["reference_kind"], result["reference_kind"])
    return result


def _cell(value: float) -> str:
    return f"{'-':>5}" if value is None or math.isnan(value) else f"{value:5.3f}"


def format_spair(report: dict) -> str:
    """The SPair-71k tables beyond :func:`a2net.evaluate.format_results`: each difficulty level,
    then the two overall means, one column per mode."""
    modes = report["modes"]
    first = next(iter(modes.values()))
    names = list(first["metrics"])
    rows = []
    for flag, levels in first["per_difficulty"].items():
        for level, entry in levels.items():
            named = f" ({entry['label']})" if entry["label"] != level else ""
            rows.append((f"{flag}={level}{named}", entry["pairs"], flag, level))
    width = max(32, *(len(r[0]) + 2 for r in rows)) if rows else 32
    block = 6 * len(names) + 2
    lines = [
        f"per difficulty level ({' / '.join(names)}; levels in the file's source/target terms):",
        f"{'level':<{width}}{'pairs':>6}  " + "".join(f"{m:<{block}}" for m in modes),
    ]
    for label, pairs, flag, level in rows:
        cells = []
        for result in modes.values():
            values = result["per_difficulty"].get(flag, {}).get(level, {}).get("metrics", {})
            cells.append(" ".join(_cell(values.get(n, float("nan"))) for n in names).ljust(block))
        lines.append(f"{label:<{width}}{pairs:>6}  " + "".join(cells))
    for key, label in (
        ("mean_over_pairs", "overall, mean over pairs"),
        ("mean_over_categories", "overall, mean over categories"),
    ):
        count = first["scored"] if key == "mean_over_pairs" else len(first["per_class"])
        cells = [" ".join(_cell(r["overall"][key][n]) for n in names).ljust(block) for r in modes.values()]
        lines.append(f"{label:<{width}}{count:>6}  " + "".join(cells))
    return "\n".join(line.rstrip() for line in lines)
