"""Crash-safe file writing: atomic replacement, fsynced files and directories, JSON reports.

A file written here is complete or absent: it goes to a temp file in the same directory, is
flushed and fsynced, then ``os.replace``-d over the destination, and the directory is fsynced
so that the rename itself survives a power loss.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "write_json", "write_synced"]


def fsync_dir(path) -> None:
    """fsync a directory, so that renames and new entries in it are durable (a no-op on platforms
    without directory handles)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path, write: Callable) -> None:
    """Create ``path`` (binary), let ``write(file)`` fill it, then flush and fsync it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path, data: bytes | str) -> None:
    """Write a file atomically: a temp file in the same directory, flushed and fsynced, then
    ``os.replace``; a crash leaves the old file or the new one, never a partial one."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_synced(tmp, lambda f: f.write(payload))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old file is untouched; leave no temp file behind
        raise
    fsync_dir(path.parent)


def _json_safe(value):
    """NaN -> None (JSON has no NaN), tuples -> lists, paths -> str, recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path, report: dict) -> Path:
    """Write ``report`` as JSON atomically (temp file, fsync, ``os.replace``); NaN becomes null.

    The parent directory is created. Returns the path written.
    """
    text = json.dumps(_json_safe(report), indent=1, allow_nan=False) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return Path(path)
