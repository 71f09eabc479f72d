"""A writer of 16-bit PNG files (PIL writes 16-bit grayscale only, never 16-bit RGB)."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def write_png16(path, array) -> None:
    """Write an ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB) array as a 16-bit PNG."""
    array = np.asarray(array, dtype=">u2")
    height, width = array.shape[:2]
    colour = 0 if array.ndim == 2 else 2

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + array[y].tobytes() for y in range(height))  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    png = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png)
