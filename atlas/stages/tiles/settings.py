"""How a pyramid is drawn: :class:`TileSettings`, colours, the format constants and the stage's error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import ImageColor

from atlas.checks import SettingError

#: Bumped whenever the drawing or the file layout changes, so old pyramids get redrawn.
TILES_FORMAT = 1


MANIFEST_KIND = "atlas-tiles"


STATE_FILE = ".state.json"


TileFormat = Literal["jpeg", "png", "webp"]


EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


class TilesError(ValueError):
    """Inputs or an output folder that the tiles stage cannot use; the message names the fix."""


class TileSettingError(SettingError, TilesError):
    """A :class:`TileSettings` value that cannot be used (``key`` names the field)."""


def _check(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise TileSettingError(key, reason)


@dataclass(frozen=True)
class TileSettings:
    """How the pyramid is drawn (all hashed: changing one redraws every tile).

    Attributes:
        tile_size: side of a tile in pixels (256 is what map clients expect).
        cell_px: side of a cell at its native zoom; ``None`` = the icons' own size, so icons are
            drawn 1:1 where their level is native.
        margin: empty border around the layout, as a fraction of the layout's side.
        gap: fraction of a cell left free between neighbouring icons.
        background: map colour (any CSS-style colour Pillow understands, or an RGB tuple).
        placeholder: colour of cells whose icon is not rendered yet.
        density_scaling: scale icons by cell density, ``0.25 + 0.75 * log1p(count) /
            log1p(max count of the level)`` (the paper sizes icons by how many activations
            they average).
        tile_format: ``"jpeg"`` (small, fast), ``"png"`` (lossless) or ``"webp"``.
        quality: JPEG/WebP quality.
        overzoom: zoom steps the viewer may magnify the deepest tiles beyond ``max_zoom``.
        region: metadata files hold ``region x region`` cells of a level.
        examples_per_cell: dataset examples listed (and thumbnailed) per cell.
        thumb_size: side of an example thumbnail in pixels.
        thumb_fraction: side of the thumbnail window as a fraction of the model's input side.
    """

    tile_size: int = 256
    cell_px: int | None = None
    margin: float = 0.03
    gap: float = 0.06
    background: str | tuple[int, int, int] = "#f4f3ef"
    placeholder: str | tuple[int, int, int] = "#d9d7d0"
    density_scaling: bool = False
    tile_format: TileFormat = "jpeg"
    quality: int = 88
    overzoom: int = 2
    region: int = 40
    examples_per_cell: int = 8
    thumb_size: int = 64
    thumb_fraction: float = 1 / 3

    def __post_init__(self) -> None:
        _check(16 <= self.tile_size <= 4096, "tile_size",
               f"must be between 16 and 4096 pixels, not {self.tile_size} (256 is standard)")
        _check(self.cell_px is None or 1 <= self.cell_px <= 1024, "cell_px", f"must be between 1 and 1024, not {self.cell_px}")
        _check(0 <= self.margin <= 1, "margin", f"is a fraction of the layout side in [0, 1], not {self.margin}")
        _check(0 <= self.gap < 1, "gap", f"is a fraction of a cell in [0, 1), not {self.gap}")
        _check(self.tile_format in EXTENSIONS, "tile_format",
               f"must be one of {sorted(EXTENSIONS)}, not {self.tile_format!r}")
        _check(1 <= self.quality <= 100, "quality", f"must be in 1..100, not {self.quality}")
        _check(0 <= self.overzoom <= 6, "overzoom", f"must be in 0..6, not {self.overzoom}")
        _check(self.region >= 1, "region", f"must be >= 1, not {self.region}")
        _check(self.examples_per_cell >= 0, "examples_per_cell", f"must be >= 0, not {self.examples_per_cell}")
        _check(self.thumb_size >= 8, "thumb_size", f"must be >= 8 pixels, not {self.thumb_size}")
        _check(0 < self.thumb_fraction <= 1, "thumb_fraction", f"must be in (0, 1], not {self.thumb_fraction}")
        for key in ("background", "placeholder"):
            try:
                parse_color(getattr(self, key))
            except TilesError as e:
                raise TileSettingError(key, f"is not a colour: {e}") from None

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.tile_format]


def parse_color(color: str | Sequence[int]) -> tuple[int, int, int]:
    """``"#f4f3ef"``, ``"white"``, ``"rgb(1,2,3)"`` or ``(r, g, b)`` -> an RGB tuple of ints."""
    if isinstance(color, str):
        try:
            rgb = ImageColor.getrgb(color)
        except ValueError as e:
            raise TilesError(f"unknown colour {color!r}: give '#rrggbb', a CSS colour name or an (r, g, b) tuple") from e
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    values = tuple(int(c) for c in color)
    if len(values) != 3 or not all(0 <= c <= 255 for c in values):
        raise TilesError(f"an RGB colour needs three values in 0..255, not {color!r}")
    return values  # type: ignore[return-value]


__all__ = ["EXTENSIONS", "MANIFEST_KIND", "parse_color", "STATE_FILE", "TileFormat", "TILES_FORMAT", "TilesError",
           "TileSettingError", "TileSettings"]
