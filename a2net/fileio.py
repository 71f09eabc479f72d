"""Crash-safe file writing: atomic replacement, fsynced files and directories, JSON reports.

A file written here is complete or absent: it goes to a temp file in the same directory, is
flushed and fsynced, then ``os.replace``-d over the destination, and the directory is fsynced
so that the rename itself survives a power loss.

:func:`check_output_path` and :func:`check_output_dir` are the checks a command runs on its
outputs *before* any work: a figure or report that cannot be written fails at once, not after
the computation.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from a2net.errors import UsageError

__all__ = ["atomic_write", "check_output_dir", "check_output_path", "fsync_dir", "write_json", "write_synced"]


def _writable_ancestor(name: str, path: Path) -> None:
    """The nearest existing ancestor of ``path`` is a directory this process may write into
    (where ``path`` and the folders above it will be created)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{name}: cannot create {str(path)!r}: {str(ancestor)!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{name}: cannot create {str(path)!r}: no permission to write in {str(ancestor)!r}")


def check_output_path(name: str, path, suffixes=None) -> Path:
    """Check that a file can be written at ``path``, without creating anything.

    Args:
        name: the argument named in the error (e.g. ``"--out"``).
        path: the file to be written.
        suffixes: the accepted suffixes, lower case with the dot (e.g. ``(".png", ".pdf")``), or None.
    Returns:
        ``path`` as a ``Path``.
    Raises:
        a2net.errors.UsageError: a directory is in the way, the suffix is not supported, or the
            folder cannot be written.
    """
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UsageError(
            f"{name}: expected a file name ending in one of {', '.join(sorted(suffixes))}, got {str(path)!r}"
        )
    if path.is_dir():
        raise UsageError(f"{name}: {str(path)!r} is a directory; expected a file name")
    _writable_ancestor(name, path)
    return path


def check_output_dir(name: str, path) -> Path:
    """Check that ``path`` is a directory or can be created as one, without creating it.

    Raises:
        a2net.errors.UsageError: naming ``name``: ``path`` is a file, or cannot be created.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{name}: {str(path)!r} is a file; expected a directory (or a path to create one)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{name}: no permission to write in {str(path)!r}")
        return path
    _writable_ancestor(name, path)
    return path


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
