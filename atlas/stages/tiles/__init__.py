"""Tiles: ``cells.h5`` + ``icons.h5`` -> a zoomable tile pyramid with JSON metadata.

Carter et al., "Activation Atlas" (Distill 2019) show the atlas as a zoomable map: zoomed out,
a coarse grid of feature-visualization icons; zooming in replaces them by the icons of finer
grids, each icon staying about the same size on screen. This package draws that map.

Layout: slippy-map ``{z}/{x}/{y}`` tiles, read by Leaflet with a ``CRS.Simple``-style flat
projection (y grows downward). We chose it over Deep Zoom (OpenSeadragon) because a slippy map
treats every zoom level as its own image, so each zoom can show *another grid level* -- Deep
Zoom's levels are, by contract, downsamplings of one full-resolution image -- and because its
tile addressing is trivial for any map client (Leaflet, OpenLayers, MapLibre raster sources).

Geometry (all pixel values at the deepest tiled zoom ``max_zoom``; zoom ``z`` is ``2**(z -
max_zoom)`` times smaller)::

    content  = s_max * cell_px       the unit square of the layout; s_max is the finest grid
    margin   = round(margin * content)
    world    = content + 2 * margin  a square; tile (x, y) at zoom z covers pixels
                                     [x * T, (x + 1) * T) x [y * T, (y + 1) * T) of that zoom
    max_zoom = ceil(log2(world / T))  so that zoom 0 fits in one tile of T px

Grid level ``s`` is *native* at zoom ``max_zoom - log2(s_max / s)``, where one of its cells is
``cell_px`` wide; every integer zoom shows the level whose native zoom is closest (ties to the
coarser), so with sizes 20/40/80/160 each zoom step doubles both the map and the grid. Zooms
below the coarsest native zoom show the coarsest grid smaller; the viewer over-zooms the
deepest tiles by ``overzoom`` more steps. Cell ``(iy, ix)`` of level ``s`` covers
``[margin + ix * c, margin + (ix + 1) * c)`` horizontally (``c = content / s``), y likewise; the
icon is centred in it, ``1 - gap`` of the cell wide (times a density factor with
``density_scaling``). A cell whose icon is not rendered yet (``done`` false; a render stopped
early, or a level not chosen) shows its nearest rendered ancestor's icon for its area, scaled: the
part of the icon of the coarser cell that holds it, stretched over that cell as if its level were
shown at this zoom (flat placeholder colour when no ancestor is rendered either); its metadata
names the ancestor (``fallback``) and the manifest counts such cells per level (``fallbacks``). A
later run redraws the cell with its own icon.

Output folder::

    manifest.json              levels, zoom -> level mapping, geometry, tile size/format, model,
                               layer, class names, build id (see :func:`build_tiles`)
    {z}/{x}/{y}.jpg            tiles (.png / .webp with tile_format)
    meta/{size}/{ry}-{rx}.json per-cell metadata of one region of region x region cells
    icons/{size}/{sy}-{sx}.jpg sprite sheets: the rendered icons of a block of k x k cells at full
                               resolution (k = 512 // icon_size, at most 16), for tooltips and the
                               side panel; a cell's metadata gives its sprite and pixel offset
    thumbs/{row // 1000}/{row}.jpg  dataset-example thumbnails (with activations_path)
    .state.json                per-tile input hashes of the last build (incremental rebuilds)

Incremental: every tile's inputs are summarised by a 64-bit hash (the icon digests, the
ancestor's icon digest for a cell not rendered, or a placeholder mark, of the cells drawn on it,
and where); a rebuild rewrites only tiles (and
icon sprites) whose hash changed, so re-running after render has finished more cells redraws
just their tiles. Zooms below a grid's native zoom are drawn from their four child tiles.
Changing any drawing setting (or the cells) changes a global hash and redraws everything.

Modules, one idea each: :mod:`~atlas.stages.tiles.settings` (drawing settings, colours, constants),
:mod:`~atlas.stages.tiles.pyramid` (planning: zooms, levels, cell and tile geometry),
:mod:`~atlas.stages.tiles.inputs` (reading cells and icons), :mod:`~atlas.stages.tiles.hashing` and
:mod:`~atlas.stages.tiles.state` (what changed since the last build), :mod:`~atlas.stages.tiles.paint` (tiles
and sprite sheets), :mod:`~atlas.stages.tiles.thumbs` (dataset-example thumbnails),
:mod:`~atlas.stages.tiles.metadata` (per-cell documents, the manifest reader), :mod:`~atlas.stages.tiles.files`
(atomic writes), :mod:`~atlas.stages.tiles.build` (the stage), :mod:`~atlas.stages.tiles.picture` (the atlas
as one image).
"""

from atlas.stages.tiles.build import TilesSummary, build_tiles
from atlas.stages.tiles.metadata import read_manifest, sprite_cells
from atlas.stages.tiles.picture import atlas_image
from atlas.stages.tiles.pyramid import Pyramid, density_scale, plan_pyramid
from atlas.stages.tiles.settings import (
    MANIFEST_KIND,
    STATE_FILE,
    TILES_FORMAT,
    TileFormat,
    TilesError,
    TileSettings,
    parse_color,
)

__all__ = [
    "MANIFEST_KIND",
    "STATE_FILE",
    "TILES_FORMAT",
    "Pyramid",
    "TileFormat",
    "TileSettings",
    "TilesError",
    "TilesSummary",
    "atlas_image",
    "build_tiles",
    "density_scale",
    "parse_color",
    "plan_pyramid",
    "read_manifest",
    "sprite_cells",
]
