"""Aligning a list of pairs (``a2net align --pairs PAIRS.csv --out-dir DIR``), resumable.

``PAIRS.csv`` has a header with the columns ``source`` and ``target`` (image paths, relative to
the CSV's folder unless absolute) and optionally ``target_points`` (``x,y;x,y;...``, 1-based
pixels of the target image; quote the cell, it holds commas). Other columns are ignored.

The pairs are read by a ``DataLoader`` (worker processes decode and resize the images), batched
on the model's device, and every result is one JSON line of ``DIR/results.jsonl``::

    {"row": 3, "source": "a.jpg", "target": "b.jpg", "target_points": "10,20;30,40", "status": "ok",
     "mode": "affine", "theta": {"affine": [6 numbers]}, "transferred_points": [[x, y], ...],
     "seconds": 0.012, "figure": "figures/00003_a_b.png"}

``row`` is the pair's 1-based data row in the CSV; ``theta`` has one entry per stage
(``"affine"`` and ``"tps"`` for affine+TPS), each mapping target points to source points
(docs/design.md §5); ``transferred_points`` are the target points carried into the source image
(1-based pixels; ``[-1, -1]`` for a padded point); ``seconds`` is the pair's share of its batch's
time. A pair whose image cannot be read gets ``"status": "error"`` and ``"error"``, and the run
goes on.

**Crash safety and resuming.** The lines of a batch are appended in one write, flushed and
fsynced. Running the same command again skips every pair that has an ``ok`` line (same row,
paths and points) and retries the failed ones (their old error lines are dropped). A kill can
leave at most a half-written last line: the next run detects it and rewrites the file without it
(atomically), so nothing complete is lost and nothing is recomputed. ``DIR/run.json`` records
the model (a SHA-256 of its weights), the input size and the inference options
(:func:`a2net.inference.inference_defaults`); a run with another model, size or options in the same
folder is refused rather than mixed in. Figures (``--figures``, ``DIR/figures/``) are written
atomically before their pair's line, for the pairs aligned by a run that asks for them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from a2net.checkpoint import _weights_sha256
from a2net.errors import InputError, InputNotFoundError, UsageError, require_extra
from a2net.fileio import atomic_write, check_output_dir, fsync_dir
from a2net.images import load_image
from a2net.inference import (
    DEFAULT_INFERENCE,
    inference_defaults,
    input_size,
    mode_of,
    model_device,
    predict_chain,
    transfer_points,
    warp_chain,
)
from a2net.model import normalize_images

__all__ = ["FIGURES_DIR", "RESULTS_FILE", "RUN_FILE", "PairListDataset", "align_pairs", "read_pairs", "read_results"]

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
FIGURES_DIR = "figures"


# --------------------------------------------------------------------------------------------
# The pair list


def _parse_points(text: str, where: str) -> torch.Tensor:
    """``"x1,y1;x2,y2"`` -> ``(2, N)`` float64 1-based pixels."""
    try:
        pairs = [tuple(float(v) for v in item.split(",")) for item in text.split(";") if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or not all(math.isfinite(v) for v in p) for p in pairs):
        raise InputError(f"{where}: target_points: expected 'x1,y1;x2,y2;...' in 1-based pixels, got {text!r}")
    return torch.tensor(pairs, dtype=torch.float64).t().contiguous()


def read_pairs(path) -> list[dict]:
    """Read a pair list (see the module docstring).

    Returns:
        one dict per data row: ``row`` (1-based), ``source``, ``target`` (as written),
        ``target_points`` (the cell's text or None) and ``points`` (``(2, N)`` float64 or None).
    Raises:
        a2net.errors.InputNotFoundError: no such file.
        a2net.errors.InputError: not UTF-8 CSV text, no ``source``/``target`` header, no pair, an
            empty path or malformed points (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"--pairs: no such file {str(path)!r}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, [cell.strip() for cell in row]) for row in reader if any(c.strip() for c in row)]
    except UnicodeDecodeError as err:
        raise InputError(f"--pairs: {str(path)!r} is not a text CSV file (byte {err.start} is not UTF-8)") from None
    except csv.Error as err:
        raise InputError(f"--pairs: {str(path)!r}: not a CSV file ({err})") from None
    if not lines or not {"source", "target"} <= set(lines[0][1]):
        got = lines[0][1] if lines else "an empty file"
        raise InputError(
            f"--pairs: {str(path)!r}: expected a header row with the columns source,target[,target_points], got {got}"
        )
    header = lines[0][1]
    column = {name: header.index(name) for name in ("source", "target", "target_points") if name in header}
    rows = []
    for row, (line, cells) in enumerate(lines[1:], start=1):
        where = f"--pairs: {str(path)!r}, line {line}"

        def cell(name, cells=cells):
            i = column.get(name)
            return cells[i] if i is not None and i < len(cells) and cells[i] else None

        source, target, points = cell("source"), cell("target"), cell("target_points")
        if source is None or target is None:
            raise InputError(f"{where}: expected a source and a target path, got {cells}")
        rows.append(
            {
                "row": row,
                "source": source,
                "target": target,
                "target_points": points,
                "points": None if points is None else _parse_points(points, where),
            }
        )
    if not rows:
        raise InputError(f"--pairs: {str(path)!r} has no pairs (only a header row); expected at least one pair row")
    return rows


class PairListDataset(Dataset):
    """Pairs of a pair list, loaded and prepared for the network (in ``DataLoader`` workers).

    Items: ``index`` (into ``rows``), then either ``error`` (str: the image could not be read), or
    ``source_input``, ``target_input`` (``(3, h, w)`` ImageNet-normalised at ``image_size``, as
    :func:`a2net.align` prepares them), ``source_size``, ``target_size`` (``(H, W)`` of the
    files) and, with ``keep_images``, ``source_image``, ``target_image`` (``(3, H, W)`` in [0, 1]).

    Args:
        rows: from :func:`read_pairs`.
        base: folder that relative paths are resolved against.
        image_size: the network input ``(h, w)``.
        keep_images: also return the full-resolution images (for figures).
    """

    def __init__(self, rows: list[dict], base, image_size, keep_images: bool = False):
        self.rows, self.base, self.image_size, self.keep_images = rows, Path(base), tuple(image_size), keep_images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        try:
            source = load_image(self.base / row["source"], "source")
            target = load_image(self.base / row["target"], "target")
        except (InputError, OSError) as err:
            return {"index": index, "error": str(err)}
        item = {
            "index": index,
            "source_input": normalize_images(source[None], size=self.image_size)[0],
            "target_input": normalize_images(target[None], size=self.image_size)[0],
            "source_size": tuple(source.shape[1:]),
            "target_size": tuple(target.shape[1:]),
        }
        if self.keep_images:
            item.update(source_image=source, target_image=target)
        return item


def _collate(items: list[dict]) -> dict:
    ok = [item for item in items if "error" not in item]
    batch = {"failed": [item for item in items if "error" in item], "items": ok}
    if ok:
        batch["source"] = torch.stack([item["source_input"] for item in ok])
        batch["target"] = torch.stack([item["target_input"] for item in ok])
    return batch


# --------------------------------------------------------------------------------------------
# The results file


def _key(record: dict) -> tuple:
    return record.get("row"), record.get("source"), record.get("target"), record.get("target_points")


def read_results(path) -> tuple[list[dict], int]:
    """The complete JSON lines of a results file and how many lines were not (a line cut by a
    kill, or bytes that are not a JSON object)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    records, broken = [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, line in enumerate(lines):
        complete = i < len(lines) - 1 or data.endswith(b"\n")
        try:
            record = json.loads(line) if complete else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            broken += 1
    return records, broken


def _check_run(out_dir: Path, run: dict) -> bool:
    """Compare with the run recorded in ``out_dir``; True if none is recorded yet."""
    path = out_dir / RUN_FILE
    if not path.exists():
        return True
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict):
        raise InputError(
            f"--out-dir: {str(path)!r} is not the run record a2net writes; remove it or use another --out-dir"
        )
    # a record without inference options is of a version that made one plain pass
    stored.setdefault("inference", DEFAULT_INFERENCE)
    for key in ("weights_sha256", "mode", "image_size", "inference"):
        if stored.get(key) != run[key]:
            what = {"weights_sha256": "model weights", "inference": "inference options"}.get(key, key.replace("_", " "))
            raise UsageError(
                f"--out-dir: {str(out_dir)!r} holds results of another run ({what} {stored.get(key)!r}, now "
                f"{run[key]!r}); use another --out-dir so that results are not mixed"
            )
    return False


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(text).stem)[:60] or "image"


# --------------------------------------------------------------------------------------------
# The run


def align_pairs(
    pairs,
    out_dir,
    model: nn.Module,
    image_size=None,
    batch_size: int = 8,
    num_workers: int = 2,
    figures: bool = False,
    progress: bool = True,
    inference: dict | None = None,
    log=print,
) -> dict:
    """Align every pair of a pair list into ``out_dir/results.jsonl`` (module docstring).

    Args:
        pairs: the pair list CSV.
        out_dir: where ``results.jsonl``, ``run.json`` and ``figures/`` go (created).
        model: an :class:`a2net.A2Net` or :class:`a2net.TwoStageAligner`, on its device, in eval mode.
        image_size: network input ``(h, w)``; default the model's.
        batch_size: pairs per forward pass.
        num_workers: ``DataLoader`` worker processes reading the images (0: in this process).
        figures: write the alignment figure of every pair.
        progress: show a tqdm bar on stderr.
        inference: ``{"iterations", "symmetric", "refine"}`` (any of them) over the model's
            (:func:`a2net.inference.inference_defaults`), as in :func:`a2net.align`.
        log: where the summary lines go.
    Returns:
        ``{"pairs", "done_before", "aligned", "failed", "seconds", "pairs_per_s", "results"}``:
        ``aligned`` and ``failed`` count this run's pairs, ``pairs_per_s`` is ``(aligned + failed)
        / seconds`` over the loop (reading, network, writing).
    """
    from tqdm.auto import tqdm

    from a2net.alignment import Alignment, save_alignment_figure

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size: expected an int >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise UsageError(f"--num-workers: expected an int >= 0, got {num_workers!r}")
    out_dir = check_output_dir("--out-dir", out_dir)
    if figures:
        require_extra("matplotlib", "--figures")
    rows = read_pairs(pairs)
    size = input_size(model, image_size)
    mode = mode_of(model)
    model.eval()
    device = model_device(model)
    options = inference_defaults(model, **(inference or {}))
    run = {
        "mode": mode,
        "image_size": list(size),
        "inference": options,
        "weights_sha256": _weights_sha256(model.state_dict()),
    }
    fresh = _check_run(out_dir, run)

    results = out_dir / RESULTS_FILE
    records, broken = read_results(results)
    done = {_key(r) for r in records if r.get("status") == "ok"}
    wanted = {_key(r) for r in rows}
    retried = [r for r in records if r.get("status") != "ok" and _key(r) in wanted]
    if broken or retried:
        kept = [r for r in records if r.get("status") == "ok" or _key(r) not in wanted]
        atomic_write(results, "".join(json.dumps(r) + "\n" for r in kept))
        if broken:
            log(f"{results}: dropped {broken} incomplete line(s) left by an interrupted run")
    todo = [r for r in rows if _key(r) not in done]
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        atomic_write(out_dir / RUN_FILE, json.dumps(dict(run, pairs=str(Path(pairs).resolve())), indent=1) + "\n")
    if figures:
        (out_dir / FIGURES_DIR).mkdir(exist_ok=True)

    dataset = PairListDataset(todo, Path(pairs).parent, size, keep_images=figures)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    aligned = failed = 0
    start = time.perf_counter()
    created = not results.exists()
    with (
        open(results, "ab") as sink,
        tqdm(total=len(todo), desc=f"align {mode}", unit="pair", disable=not progress, file=sys.stderr) as bar,
    ):
        if created:
            fsync_dir(out_dir)
        for batch in loader:
            began = time.perf_counter()
            lines = {}  # index -> line: written in the list's order
            for item in batch["failed"]:
                lines[item["index"]] = _record(todo[item["index"]], status="error", error=item["error"])
            if batch["items"]:
                with torch.no_grad():
                    chain = predict_chain(model, batch["source"].to(device), batch["target"].to(device), **options)
                chain = [theta.detach().to("cpu", torch.float64) for theta in chain]
                share = (time.perf_counter() - began) / len(batch["items"])
                for i, item in enumerate(batch["items"]):
                    row = todo[item["index"]]
                    pair = [theta[i : i + 1] for theta in chain]
                    stages = {"affine": pair[1][0], "tps": pair[0][0]} if mode == "affine+tps" else {mode: pair[0][0]}
                    moved = None
                    if row["points"] is not None:
                        moved = transfer_points(pair, row["points"][None], item["target_size"], item["source_size"])[0]
                    fields = {
                        "mode": mode,
                        "theta": {k: v.tolist() for k, v in stages.items()},
                        "transferred_points": None if moved is None else moved.t().tolist(),
                        "seconds": share,
                    }
                    if figures:
                        name = f"{FIGURES_DIR}/{row['row']:05d}_{_safe(row['source'])}_{_safe(row['target'])}.png"
                        chain_f = tuple(theta.float() for theta in pair)
                        target = item["target_image"]
                        result = Alignment(
                            mode=mode,
                            chain=chain_f,
                            source=item["source_image"],
                            target=target,
                            warped=warp_chain(item["source_image"][None], chain_f, tuple(target.shape[1:]))[0],
                            image_size=size,
                            target_points=None if row["points"] is None else row["points"].float(),
                            transferred_points=None if moved is None else moved.float(),
                        )
                        save_alignment_figure(result, out_dir / name)
                        fields["figure"] = name
                    lines[item["index"]] = _record(row, status="ok", **fields)
            sink.write("".join(lines[k] for k in sorted(lines)).encode())
            sink.flush()
            os.fsync(sink.fileno())
            failed += len(batch["failed"])
            aligned += len(batch["items"])
            bar.update(len(batch["failed"]) + len(batch["items"]))
    seconds = time.perf_counter() - start
    rate = (aligned + failed) / seconds if aligned + failed and seconds > 0 else float("nan")
    return {
        "pairs": len(rows),
        "done_before": len(rows) - len(todo),
        "aligned": aligned,
        "failed": failed,
        "seconds": seconds,
        "pairs_per_s": rate,
        "results": str(results),
    }


def _record(row: dict, **fields) -> str:
    record = {
        "row": row["row"],
        "source": row["source"],
        "target": row["target"],
        "target_points": row["target_points"],
    }
    return json.dumps({**record, **fields}) + "\n"
