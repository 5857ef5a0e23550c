"""A minimal PNG encoder (8-bit grey or RGB, no interlace) on the standard library's zlib."""

import os
import struct
import zlib

import numpy as np


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def encode_png(image: np.ndarray, *, compression: int = 6) -> bytes:
    """PNG bytes of a uint8 image `(height, width)` (grey) or `(height, width, 3)` (RGB)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(
            f"PNG images must be uint8, got {image.dtype}: convert with .astype(np.uint8)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    colour_type = 0 if image.ndim == 2 else 2
    rows = image.reshape(height, -1)
    # Each scanline starts with filter type 0 (none).
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, compression)) + _chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 `(H, W)` or `(H, W, 3)` image to a PNG file."""
    with open(path, "wb") as f:
        f.write(encode_png(image))
