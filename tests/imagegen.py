"""Synthetic good and bad image files for the data tests, all cheap to make.

Every function returns the encoded bytes; ``write(path, data)`` puts them on disk.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def solid(color: tuple[int, int, int] = (200, 30, 60), size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def noise_rgb(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def jpeg(img: Image.Image | None = None, quality: int = 90) -> bytes:
    return encode(img if img is not None else solid(), "JPEG", quality=quality)


def png(img: Image.Image | None = None) -> bytes:
    return encode(img if img is not None else solid(), "PNG")


def truncated_jpeg(seed: int = 0) -> bytes:
    """A noisy JPEG cut in half (noise, so that half the file is half the scan data)."""
    data = jpeg(noise_rgb((96, 96), seed))
    return data[: len(data) // 2]


def garbage(n: int = 2048, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def text_bytes() -> bytes:
    return b"this is not an image\nreally not\n" * 20


def gray_png(value: int = 77, size: tuple[int, int] = (40, 30)) -> bytes:
    return png(Image.new("L", size, value))


def cmyk_jpeg(cmyk: tuple[int, int, int, int] = (0, 255, 255, 0), size: tuple[int, int] = (32, 32)) -> bytes:
    """A CMYK JPEG; the default colour (no cyan, full magenta and yellow, no black) is red."""
    return jpeg(Image.new("CMYK", size, cmyk), quality=95)


def png16(values: np.ndarray) -> bytes:
    """A 16-bit grayscale PNG of a (H, W) uint16 array."""
    return png(Image.fromarray(np.asarray(values, dtype=np.uint16)))


def palette_png_with_transparency(size: tuple[int, int] = (32, 32)) -> bytes:
    """Left half palette index 0 (blue, fully transparent), right half index 1 (opaque red)."""
    img = Image.new("P", size, 0)
    img.putpalette([0, 0, 255, 255, 0, 0] + [0, 0, 0] * 254)
    img.paste(1, (size[0] // 2, 0, size[0], size[1]))
    return encode(img, "PNG", transparency=0)


def rgba_png(rgb: tuple[int, int, int] = (255, 0, 0), alpha: int = 0, size: tuple[int, int] = (32, 32)) -> bytes:
    return png(Image.new("RGBA", size, (*rgb, alpha)))


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (1-bit gray) but holds one row of data:
    a decoder that allocates or decodes it fails ("truncated"); one that checks the size first
    refuses it ("too large") at no cost."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b"")


def big_gray_jpeg(width: int = 8000, height: int = 7000, value: int = 128) -> bytes:
    """A constant gray JPEG; 56 MP by default, a few hundred kB, about a second to make."""
    return jpeg(Image.new("L", (width, height), value), quality=50)


def make_tar(path: Path, members: Mapping[str, bytes]) -> Path:
    """An uncompressed tar with ``members`` (name -> bytes) in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path
