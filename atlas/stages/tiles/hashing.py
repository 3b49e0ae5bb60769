"""64-bit hashes of the inputs of tiles and sprites (incremental rebuilds): splitmix64, digests, hex lists."""

from __future__ import annotations

import hashlib

import numpy as np

U64 = np.uint64


PLACEHOLDER_DIGEST = 0x9E3779B97F4A7C15


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised over a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=U64).copy()
    x ^= x >> U64(30)
    x *= U64(0xBF58476D1CE4E5B9)
    x ^= x >> U64(27)
    x *= U64(0x94D049BB133111EB)
    x ^= x >> U64(31)
    return x


def array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    return h.hexdigest()


def hex_list(values: np.ndarray) -> list[str]:
    return [format(int(h), "x") for h in values]


def unhex_list(values: list[str] | None, n: int) -> np.ndarray | None:
    return np.array([int(h, 16) for h in values], dtype=U64) if values and len(values) == n else None


__all__ = ["array_digest", "hex_list", "mix64", "PLACEHOLDER_DIGEST", "U64", "unhex_list"]
