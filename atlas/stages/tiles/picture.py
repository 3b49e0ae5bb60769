"""The whole atlas as one picture, stitched from a built pyramid's tiles."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from atlas.stages.tiles.metadata import read_manifest
from atlas.stages.tiles.settings import TilesError, parse_color


def atlas_image(tiles_dir: str | os.PathLike, zoom: int | None = None) -> tuple[Image.Image, Callable[[np.ndarray], np.ndarray]]:
    """The whole atlas as one picture, stitched from the tiles of ``zoom`` (default: the
    deepest zoom whose picture is at most 1024 px wide), and the map from layout ``(x, y)`` in
    [0, 1] to pixel ``(x, y)`` of that picture. Tiles not drawn yet are left background."""
    tiles_dir = Path(tiles_dir)
    m = read_manifest(tiles_dir)
    top = int(m["max_native_zoom"])
    if zoom is None:
        zoom = 0
        while zoom < top and m["world_px"] / 2 ** (top - zoom - 1) <= 1024:
            zoom += 1
    if not 0 <= zoom <= top:
        raise TilesError(f"zoom {zoom} is not in the pyramid (0..{top})")
    scale = 2.0 ** (zoom - top)
    side = int(np.ceil(m["world_px"] * scale))
    tile = int(m["tile_size"])
    canvas = Image.new("RGB", (side, side), parse_color(m.get("background", "#ffffff")))
    ext = m["tile_url"].rsplit(".", 1)[-1]
    for tx in range(-(-side // tile)):
        for ty in range(-(-side // tile)):
            path = tiles_dir / str(zoom) / str(tx) / f"{ty}.{ext}"
            if path.is_file():
                with Image.open(path) as im:
                    canvas.paste(im.convert("RGB"), (tx * tile, ty * tile))

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return (m["margin_px"] + np.asarray(xy, np.float64) * m["content_px"]) * scale

    return canvas, to_pixels


__all__ = ["atlas_image"]
