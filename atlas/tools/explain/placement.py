"""Where a photo lives in an atlas: its layer activations projected onto the atlas's layout and
grouped into the grid's neighbourhoods (:func:`place_on_atlas`, :class:`AtlasPlacement`), and
the placement saved as an overlay of the atlas viewer (:func:`write_overlay`)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from atlas.store.runs import require_atlas_files
from atlas.tools.explain.maps import Explanation

log = logging.getLogger("atlas.tools.explain")


@dataclass
class AtlasPlacement:
    """Where the positions of one photo's layer activations land on an atlas.

    ``P = H * W`` positions in row-major order; ``xy``: (P, 2) layout ``(x, y)`` in [0, 1] (NaN
    for a position the layout's metric cannot place, e.g. all zeros under cosine);
    ``positions``: (P, 2) ``(y, x)`` in the layer grid; ``attribution``: (P,) ``h . d logit / d h``
    toward the explained class; ``neighborhoods``: the cells of grid ``level`` that the photo's
    positions fall in, by summed attribution (descending), each a dict with ``size``, ``iy``,
    ``ix``, ``positions``, ``attribution`` and ``classes`` (the cell's top classes by the atlas's
    own attribution; empty for a cell the atlas dropped).
    """

    run_dir: Path
    layer: str
    grid_shape: tuple[int, int]
    xy: np.ndarray
    positions: np.ndarray
    attribution: np.ndarray
    level: int
    neighborhoods: list[dict]
    layout_hash: str = ""

    def describe(self, limit: int = 5) -> str:
        lines = [f"{int(np.isfinite(self.xy).all(1).sum())} of {len(self.xy)} positions placed on "
                 f"{self.run_dir} ({self.layer}); neighbourhoods of grid {self.level} by attribution:"]
        for nb in self.neighborhoods[:limit]:
            classes = ", ".join(nb["classes"][:3]) or "(cell not in the atlas)"
            lines.append(f"  cell ({nb['iy']:>2}, {nb['ix']:>2}): {nb['positions']:>3} positions, "
                         f"attribution {nb['attribution']:+.3f}  [{classes}]")
        return "\n".join(lines)


def place_on_atlas(e: Explanation, run_dir: str | os.PathLike, *, level: int | None = None,
                   class_names: Sequence[str] | None = None, est=None) -> AtlasPlacement:
    """Project ``e.layer_activations`` onto the atlas in ``run_dir`` (its ``layout.h5`` and the
    fitted model beside it; ``cells.h5`` names the neighbourhoods).

    ``level``: the grid size used to group positions into neighbourhoods (default: the middle
    size of ``cells.h5``). ``est``: the layout's fitted placer (:func:`atlas.stages.reduce.load_placer`),
    to load it once when placing many photos. Raises ``ValueError`` when the atlas was made at
    another layer.
    """
    from atlas.resources import imagenet_class_names
    from atlas.stages.grid import grid_cells
    from atlas.stages.reduce import load_placer, project
    from atlas.store.cells import cells_attrs, read_cells
    from atlas.store.layout import read_layout

    run_dir = Path(run_dir)
    layout_path, cells_path = run_dir / "layout.h5", run_dir / "cells.h5"
    require_atlas_files(run_dir, {"layout.h5": "reduce"})
    attrs = read_layout(layout_path).attrs
    if str(attrs.get("layer")) != e.layer:
        raise ValueError(f"the atlas in {run_dir} was made at layer {attrs.get('layer')!r}, not {e.layer!r}; "
                         f"explain with --layer {attrs.get('layer')}")
    if attrs.get("class_index", -1) not in (-1, None):
        log.info("%s is a class atlas (class %s); placing on it anyway", run_dir, attrs.get("class_index"))
    est = est if est is not None else load_placer(layout_path)
    xy = project(layout_path, e.layer_activations.astype(np.float32), est=est)
    h, w = e.layer_attribution.shape
    yy, xx = np.divmod(np.arange(h * w), w)
    positions = np.stack([yy, xx], 1).astype(np.int32)
    a = e.layer_attribution.reshape(-1).astype(np.float64)
    neighborhoods: list[dict] = []
    size = level or 0
    if cells_path.is_file():
        sizes = [int(v) for v in cells_attrs(cells_path)["sizes"]]
        size = level or sizes[len(sizes) // 2]
        if size not in sizes:
            raise ValueError(f"{cells_path} has grid sizes {sizes}, not {size}")
        cells = read_cells(cells_path, [size])[size]
        names = list(class_names or imagenet_class_names())
        ok = np.isfinite(xy).all(1)
        ids = grid_cells(np.clip(xy[ok], 0.0, 1.0), size)
        where = {int(c): i for i, c in enumerate(cells.cell_id)}
        for cid in np.unique(ids):
            sel = ids == cid
            i = where.get(int(cid))
            classes = [] if i is None else [
                names[int(c)] if 0 <= int(c) < len(names) else str(int(c))
                for c, v in zip(cells.top_classes[i], cells.top_values[i]) if v > 0]
            neighborhoods.append({"size": size, "iy": int(cid // size), "ix": int(cid % size),
                                  "positions": int(sel.sum()), "attribution": float(a[ok][sel].sum()),
                                  "classes": classes})
        neighborhoods.sort(key=lambda nb: -nb["attribution"])
    return AtlasPlacement(run_dir, e.layer, (h, w), xy, positions, a, size, neighborhoods,
                          str(attrs.get("settings_hash", "")))


def overlay_name(photo: str | os.PathLike) -> str:
    """A URL- and file-safe overlay name from a photo path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(photo).stem).strip("-.")[:64] or "photo"


def write_overlay(e: Explanation, placement: AtlasPlacement, tiles_dir: str | os.PathLike | None = None,
                  name: str | None = None) -> Path:
    """Save the placement as an overlay of the atlas viewer: ``TILES/overlays/NAME.json``, listed
    in ``TILES/overlays/index.json`` (a later overlay of the same name replaces it).

    The viewer (``atlas serve``) lists the overlays in its "Photos" box; each shows the photo's
    positions as points over the atlas, red where they push toward the class and blue where
    they push away, sized by the size of the attribution.
    """
    from atlas.stages.tiles import read_manifest

    tiles = Path(tiles_dir) if tiles_dir is not None else placement.run_dir / "tiles"
    manifest = read_manifest(tiles)
    if manifest.get("layer") not in (None, "", e.layer):
        raise ValueError(f"{tiles} shows layer {manifest.get('layer')!r}, not {e.layer!r}")
    name = overlay_name(name or e.path)
    thumb = io.BytesIO()
    img = Image.fromarray((e.image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    img.thumbnail((160, 160))
    img.save(thumb, format="JPEG", quality=85)
    ok = np.isfinite(placement.xy).all(1)
    doc = {
        "kind": "atlas-overlay", "format": 1, "name": name, "photo": Path(e.path).name,
        "class": e.target_name, "class_index": e.target, "probability": round(float(e.probs[e.target]), 4),
        "layer": e.layer, "grid": list(placement.grid_shape), "layout_hash": placement.layout_hash,
        "max_abs": float(np.abs(placement.attribution).max() or 1.0),
        "thumb": "data:image/jpeg;base64," + base64.b64encode(thumb.getvalue()).decode(),
        "points": [{"x": round(float(x), 5), "y": round(float(y), 5), "pos": [int(p[0]), int(p[1])],
                    "a": round(float(v), 5)}
                   for (x, y), p, v, good in zip(placement.xy, placement.positions, placement.attribution, ok) if good],
        "neighborhoods": placement.neighborhoods[:8],
    }
    folder = tiles / "overlays"
    folder.mkdir(exist_ok=True)
    out = folder / f"{name}.json"
    _write_json(out, doc)
    index_path = folder / "index.json"
    try:
        index = json.loads(index_path.read_text())["overlays"]
    except (OSError, ValueError, KeyError, TypeError):
        index = []
    index = [o for o in index if isinstance(o, dict) and o.get("name") != name]
    index.append({"name": name, "file": f"overlays/{name}.json", "photo": doc["photo"], "class": doc["class"],
                  "probability": doc["probability"]})
    _write_json(index_path, {"kind": "atlas-overlays", "overlays": index})
    return out


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)
