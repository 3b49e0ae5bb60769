"""The tile pyramid: geometry, pixels in the right place, metadata, thumbnails, incremental rebuilds."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from atlas.stages.tiles import TilesError, build_tiles, density_scale, plan_pyramid, read_manifest
from atlas.store.common import SettingsChangedError
from atlasfixture import BLOB_CLASSES, fake_icons, icon_color, mark_done, write_fake_run

# sizes 4/8/16, 16 px icons drawn 1:1, 64 px tiles, margin 8 px: hand-checkable numbers
SMALL = dict(tile_size=64, cell_px=16, margin=1 / 32, tile_format="png", progress=False)
BG = (244, 243, 239)
PH = (217, 215, 208)


@pytest.fixture
def run(tmp_path: Path):
    return write_fake_run(tmp_path / "run", sizes=(4, 8, 16), icon_size=16, done_fraction=0.6)


def _pixel(tiles: Path, z: int, x: float, y: float, tile: int = 64) -> tuple[int, int, int]:
    tx, ty = int(x) // tile, int(y) // tile
    img = Image.open(tiles / str(z) / str(tx) / f"{ty}.png").convert("RGB")
    return img.getpixel((int(x) % tile, int(y) % tile))


def _tiles_of(z_scale: float, ids: np.ndarray, size: int, margin: float = 8, content: float = 256, tile: int = 64) -> set:
    """Tiles touched by the icons of ``ids`` (gap 0.06), computed by hand."""
    c = content * z_scale / size
    side = np.full(len(ids), np.floor(c * 0.94 + 0.5))
    iy, ix = np.divmod(ids, size)
    left = np.floor(margin * z_scale + ix * c + (c - side) / 2 + 0.5)
    top = np.floor(margin * z_scale + iy * c + (c - side) / 2 + 0.5)
    out = set()
    for l, t, s in zip(left, top, side):
        for tx in range(int(l) // tile, int(l + s - 1) // tile + 1):
            for ty in range(int(t) // tile, int(t + s - 1) // tile + 1):
                out.add((tx, ty))
    return out


def test_plan_pyramid_paper_sizes():
    pyr = plan_pyramid([160, 20, 80, 40], tile_size=256, cell_px=64, margin=0.03)
    # content 160 * 64 = 10240 px, margin 307 px -> world 10854 px -> 43 tiles of 256 at zoom 6
    assert (pyr.content_px, pyr.margin_px, pyr.world_px) == (10240, 307, 10854)
    assert pyr.max_zoom == 6 and pyr.n_tiles(6) == 43 and pyr.n_tiles(0) == 1
    # each zoom step doubles map and grid; zooms 0-2 show the coarsest grid smaller
    assert pyr.zoom_levels == (20, 20, 20, 20, 40, 80, 160)
    assert [pyr.cell_size(z) for z in (3, 4, 5, 6)] == [64.0, 64.0, 64.0, 64.0]


def test_plan_pyramid_uneven_sizes_pick_closest_level():
    pyr = plan_pyramid([10, 25, 100], tile_size=256, cell_px=32, margin=0)
    # world 3200 px -> max zoom 4; native zooms: 100 -> 4, 25 -> 2, 10 -> 0.68
    assert pyr.max_zoom == 4
    assert pyr.zoom_levels == (10, 10, 25, 25, 100)  # zoom 3 is a tie (25 and 100): coarser wins


def test_pyramid_structure_and_tile_counts(run):
    summary = build_tiles(run.cells, run.icons, run.dir / "tiles", **SMALL)
    tiles = run.dir / "tiles"
    # content 256 + 2 * 8 margin = 272 px at zoom 3 -> 5, 3, 2, 1 tiles per side
    assert summary.max_zoom == 3 and summary.tiles_total == 25 + 9 + 4 + 1
    for z, n in enumerate([1, 2, 3, 5]):
        found = sorted(p.relative_to(tiles / str(z)).as_posix() for p in (tiles / str(z)).rglob("*.png"))
        assert found == sorted(f"{x}/{y}.png" for x in range(n) for y in range(n))
    manifest = read_manifest(tiles)
    assert [zz["level"] for zz in manifest["zooms"]] == [4, 4, 8, 16]
    assert manifest["tile_url"] == "{z}/{x}/{y}.png" and manifest["tile_size"] == 64
    assert (manifest["max_native_zoom"], manifest["max_zoom"]) == (3, 5)
    assert Image.open(tiles / "3" / "4" / "4.png").size == (64, 64)


@pytest.mark.parametrize("z,size", [(0, 4), (1, 4), (2, 8), (3, 16)])
def test_icon_pixels_land_in_the_right_tile(run, z, size):
    build_tiles(run.cells, run.icons, run.dir / "tiles", **SMALL)
    scale = 2.0 ** (z - 3)
    c = 256 * scale / size
    done = run.done[size]
    ids = run.cell_ids[size]
    for cell_id in ids[done][:12]:
        iy, ix = divmod(int(cell_id), size)
        x, y = 8 * scale + (ix + 0.5) * c, 8 * scale + (iy + 0.5) * c  # centre of the cell
        assert _pixel(run.dir / "tiles", z, x, y) == tuple(icon_color(size, cell_id)), (z, cell_id)
    # a cell not rendered yet shows its nearest rendered ancestor's icon stretched over the
    # ancestor's cell (flat with a lighter ring: between the two colours), or the placeholder
    checked = set()
    for cell_id in ids[~done].tolist():
        iy, ix = divmod(cell_id, size)
        up = _rendered_ancestor(run, size, iy, ix)
        got = np.array(_pixel(run.dir / "tiles", z, 8 * scale + (ix + 0.5) * c, 8 * scale + (iy + 0.5) * c))
        if up is None:
            assert tuple(got) == PH, (z, cell_id)
            checked.add("placeholder")
        else:
            icon = fake_icons(up[0], np.array([up[1]]), run.icon_size)[0].reshape(-1, 3).astype(int)
            assert (got >= icon.min(0) - 2).all() and (got <= icon.max(0) + 2).all(), (z, cell_id, got)
            assert tuple(got) != PH
            checked.add("ancestor")
    assert checked == {"placeholder"} if size == 4 else "ancestor" in checked
    empty = sorted(set(range(size * size)) - set(ids.tolist()))[0]
    iy, ix = divmod(empty, size)
    assert _pixel(run.dir / "tiles", z, 8 * scale + (ix + 0.5) * c, 8 * scale + (iy + 0.5) * c) == BG


def _rendered_ancestor(run, size: int, iy: int, ix: int) -> tuple[int, int] | None:
    """(size, cell id) of the nearest rendered coarser cell holding cell (iy, ix)'s centre, or None."""
    for coarse in sorted((s for s in run.sizes if s < size), reverse=True):
        aid = int((iy + 0.5) * coarse / size) * coarse + int((ix + 0.5) * coarse / size)
        rows = np.flatnonzero(run.cell_ids[coarse] == aid)
        if len(rows) and run.done[coarse][rows[0]]:
            return coarse, aid
    return None


def test_icon_box_and_gap_at_native_zoom(run):
    build_tiles(run.cells, run.icons, run.dir / "tiles", **SMALL)
    cell_id = int(run.cell_ids[16][run.done[16]][0])
    iy, ix = divmod(cell_id, 16)
    # 16 px cell, icon 15 px (gap 6 %): columns 9 + 16 ix .. 23 + 16 ix; the 16th column is a gap
    left, top = 9 + 16 * ix, 9 + 16 * iy
    assert _pixel(run.dir / "tiles", 3, left + 7, top + 7) == tuple(icon_color(16, cell_id))
    assert _pixel(run.dir / "tiles", 3, left - 1, top + 7) == BG  # the gap before it
    assert _pixel(run.dir / "tiles", 3, left + 15, top + 7) == BG  # and after it


def test_metadata_per_level_and_cell(run):
    build_tiles(run.cells, run.icons, run.dir / "tiles", activations_path=run.activations, **SMALL)
    tiles = run.dir / "tiles"
    manifest = json.loads((tiles / "manifest.json").read_text())
    assert manifest["kind"] == "atlas-tiles" and manifest["model"] == "fake-net" and manifest["layer"] == "mixed4c"
    assert len(manifest["classes"]) == 1000 and manifest["classes"][207] == "golden retriever"
    assert manifest["complete"] is False and manifest["thumbs"] is True
    levels = {lv["size"]: lv for lv in manifest["levels"]}
    assert levels[16]["zooms"] == [3] and levels[4]["zooms"] == [0, 1]
    assert levels[16]["n_done"] == int(run.done[16].sum())

    with h5py.File(run.cells) as f:
        g = f["levels/8"]
        ids, counts = g["cell_id"][:], g["count"][:]
        top_c, top_v = g["top_classes"][:], g["top_values"][:]
        ex_rows, ex_imgs = g["example_rows"][:], g["example_images"][:]
    doc = json.loads((tiles / "meta" / "8" / "0-0.json").read_text())
    assert doc["level"] == 8 and len(doc["cells"]) == len(ids)
    cells = {c["id"]: c for c in doc["cells"]}
    i = int(np.argmax(counts))
    cell = cells[int(ids[i])]
    assert (cell["iy"], cell["ix"]) == divmod(int(ids[i]), 8)
    assert cell["count"] == counts[i] and cell["done"] == bool(run.done[8][i])
    assert [c for c, _v in cell["top"]] == top_c[i].tolist()
    assert np.allclose([v for _c, v in cell["top"]], top_v[i], rtol=1e-3)
    assert doc["names"][str(top_c[i][0])] == manifest["classes"][top_c[i][0]]
    assert set(doc["names"]) <= {str(c) for c in BLOB_CLASSES}
    n = int((ex_rows[i] >= 0).sum())
    assert cell["examples"] == ex_imgs[i][:n].tolist()
    assert cell["thumbs"] == [f"thumbs/{r // 1000}/{r}.jpg" for r in ex_rows[i][:n]]
    for url in cell["thumbs"]:
        thumb = Image.open(tiles / url)
        assert thumb.format == "JPEG" and thumb.size == (64, 64)
    assert sum(c["count"] for c in doc["cells"]) == 1500
    # every rendered icon, full size, in its sprite sheet (16 px icons: 16 x 16 cells a sheet)
    assert manifest["levels"][1]["sprite_cells"] == 16
    for c in doc["cells"]:
        if not c["done"]:
            assert c["icon"] is None
            continue
        ref = c["icon"]
        assert ref["sprite"] == "icons/8/0-0.jpg" and (ref["x"], ref["y"], ref["size"]) == (c["ix"] * 16, c["iy"] * 16, 16)
        sheet = Image.open(tiles / ref["sprite"]).convert("RGB")
        assert sheet.size == (256, 256)
        got = np.asarray(sheet.crop((ref["x"] + 6, ref["y"] + 6, ref["x"] + 10, ref["y"] + 10)), float).mean((0, 1))
        assert np.abs(got - icon_color(8, c["id"])).max() <= 10  # JPEG; neighbouring cells differ by 25


def test_metadata_split_into_regions(tmp_path):
    run = write_fake_run(tmp_path / "run", sizes=(4, 16), icon_size=8)
    build_tiles(run.cells, run.icons, tmp_path / "tiles", tile_size=64, progress=False, examples_per_cell=2)
    manifest = read_manifest(tmp_path / "tiles")
    # default regions hold 40 x 40 cells: a 16 grid fits one file
    assert [lv["regions"] for lv in manifest["levels"]] == [[[0, 0]], [[0, 0]]]
    from atlas.stages.tiles import TileSettings
    from atlas.stages.tiles.inputs import read_cells
    from atlas.stages.tiles.metadata import region_files

    _attrs, levels = read_cells(run.cells)
    level16 = levels[1]
    level16.done = np.ones(len(level16.cell_id), bool)
    docs = region_files(level16, TileSettings(region=5), manifest["classes"], None, 8)
    for (ry, rx), data in docs.items():
        for cell in json.loads(data)["cells"]:
            assert (cell["iy"] // 5, cell["ix"] // 5) == (ry, rx)
    assert sum(len(json.loads(d)["cells"]) for d in docs.values()) == len(level16.cell_id)


def test_thumbnail_is_the_window_the_model_saw(run):
    # photo 0: left half red, right half blue; the model sees a centre crop of the resized photo
    with h5py.File(run.activations) as f:
        key = f["images/key"].asstr()[0]
        image_index = f["layers/mixed4c/image_index"][:]
        position = f["layers/mixed4c/position"][:]
    photo = np.zeros((90, 120, 3), np.uint8)
    photo[:, :60] = (220, 20, 20)
    photo[:, 60:] = (20, 20, 220)
    Image.fromarray(photo).save(run.images / key, quality=95)
    build_tiles(run.cells, run.icons, run.dir / "tiles", activations_path=run.activations, **SMALL)
    checked = 0
    for row in np.flatnonzero(image_index == 0):
        path = run.dir / "tiles" / "thumbs" / "0" / f"{row}.jpg"
        if not path.exists():
            continue
        mean = np.asarray(Image.open(path).convert("RGB"), np.float64).mean(axis=(0, 1))
        x = int(position[row, 1])  # 7-wide grid, x in 1..5: 1-2 left of centre, 4-5 right
        if x <= 2:
            assert mean[0] > 150 and mean[2] < 80, (row, x, mean)
        elif x >= 4:
            assert mean[2] > 150 and mean[0] < 80, (row, x, mean)
        checked += 1
    assert checked >= 1


def test_incremental_rebuild_redraws_only_affected_tiles(run):
    tiles = run.dir / "tiles"
    first = build_tiles(run.cells, run.icons, tiles, **SMALL)
    assert first.tiles_written == first.tiles_total == 39
    assert first.cells_pending == sum(int((~d).sum()) for d in run.done.values())
    again = build_tiles(run.cells, run.icons, tiles, **SMALL)
    assert again.tiles_written == 0 and again.sprites_written == 0 and again.metadata_written == 0

    mtimes = {p: p.stat().st_mtime_ns for p in tiles.rglob("*.png")}
    pending_rows = np.flatnonzero(~run.done[16])[:3]
    ids = run.cell_ids[16][pending_rows]
    mark_done(run.icons, 16, pending_rows)
    third = build_tiles(run.cells, run.icons, tiles, **SMALL)
    expected = {tiles / "3" / str(tx) / f"{ty}.png" for tx, ty in _tiles_of(1.0, ids, 16)}
    assert third.tiles_written == len(expected)
    assert third.sprites_written == 1 and third.cells_pending == first.cells_pending - 3  # one sheet holds grid 16
    changed = {p for p, t in mtimes.items() if p.stat().st_mtime_ns != t}
    assert changed == expected  # only zoom 3 (grid 16) tiles holding the three cells
    for cell_id in ids:
        iy, ix = divmod(int(cell_id), 16)
        assert _pixel(tiles, 3, 8 + (ix + 0.5) * 16, 8 + (iy + 0.5) * 16) == tuple(icon_color(16, cell_id))
    doc = json.loads((tiles / "meta" / "16" / "0-0.json").read_text())
    assert all(c["done"] for c in doc["cells"] if c["id"] in set(ids.tolist()))


def test_changed_drawing_settings_are_refused_or_redraw_everything_with_overwrite(run):
    tiles = run.dir / "tiles"
    build_tiles(run.cells, run.icons, tiles, **SMALL)
    manifest = (tiles / "manifest.json").read_bytes()
    with pytest.raises(SettingsChangedError, match="background: '#f4f3ef' -> '#000000'") as e:
        build_tiles(run.cells, run.icons, tiles, **{**SMALL, "background": "#000000"})
    assert e.value.changes == {"background": ("#f4f3ef", "#000000")}
    assert (tiles / "manifest.json").read_bytes() == manifest
    summary = build_tiles(run.cells, run.icons, tiles, **{**SMALL, "background": "#000000"}, overwrite=True)
    assert summary.tiles_written == summary.tiles_total
    assert _pixel(tiles, 0, 0, 0) == (0, 0, 0)


def test_density_scaling_shrinks_sparse_cells(run):
    assert np.allclose(density_scale(np.array([0, 9, 99])), [0.25, 0.25 + 0.75 * np.log(10) / np.log(100), 1.0])
    tiles = run.dir / "tiles"
    build_tiles(run.cells, run.icons, tiles, **{**SMALL, "density_scaling": True})
    with h5py.File(run.cells) as f:
        counts = f["levels/16/count"][:]
    done = run.done[16]
    sparse = int(np.flatnonzero(done & (counts == counts[done].min()))[0])
    dense = int(np.flatnonzero(done & (counts == counts[done].max()))[0])
    for i, filled in ((sparse, False), (dense, True)):
        iy, ix = divmod(int(run.cell_ids[16][i]), 16)
        corner = _pixel(tiles, 3, 8 + ix * 16 + 2, 8 + iy * 16 + 2)
        assert (corner != BG) == filled


def test_jpeg_tiles_default(run):
    summary = build_tiles(run.cells, run.icons, run.dir / "tiles", tile_size=64, progress=False)
    manifest = read_manifest(run.dir / "tiles")
    assert manifest["tile_format"] == "jpeg" and manifest["cell_px"] == 16  # icon size by default
    assert Image.open(run.dir / "tiles" / "0" / "0" / "0.jpg").format == "JPEG"
    assert summary.complete is False and "placeholders" in summary.describe()


def test_errors_name_the_fix(run, tmp_path):
    with h5py.File(run.cells, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(TilesError, match="atlas grid"):
        build_tiles(run.cells, run.icons, tmp_path / "t1", **SMALL)
    with h5py.File(run.cells, "r+") as f:
        f.attrs["complete"] = True

    foreign = tmp_path / "stuff"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(TilesError, match="new or empty folder"):
        build_tiles(run.cells, run.icons, foreign, **SMALL)

    with pytest.raises(TilesError, match="atlas render"):
        build_tiles(run.cells, tmp_path / "missing.h5", tmp_path / "t2", **SMALL)
    with h5py.File(run.icons, "r+") as f:
        del f["levels/8/icons"]
        f["levels/8/icons"] = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(TilesError, match="rerun `atlas render`"):
        build_tiles(run.cells, run.icons, tmp_path / "t3", **SMALL)
    with pytest.raises(TilesError, match="tile_size"):
        build_tiles(run.cells, run.icons, tmp_path / "t4", **{**SMALL, "tile_size": 3})
    with pytest.raises(TilesError, match="colour"):
        build_tiles(run.cells, run.icons, tmp_path / "t5", **{**SMALL, "background": "not-a-colour"})


def test_missing_icon_level_draws_placeholders(run):
    with h5py.File(run.icons, "r+") as f:
        del f["levels/4"]
    summary = build_tiles(run.cells, run.icons, run.dir / "tiles", **SMALL)
    assert summary.cells_pending >= len(run.cell_ids[4])
    cell_id = int(run.cell_ids[4][0])
    iy, ix = divmod(cell_id, 4)
    # zoom 1 is 1/4 of zoom 3: margin 2 px, grid-4 cells of 16 px
    assert _pixel(run.dir / "tiles", 1, 2 + (ix + 0.5) * 16, 2 + (iy + 0.5) * 16) == PH


QUADRANTS = np.array([[[230, 40, 40], [40, 200, 40]], [[40, 40, 230], [230, 210, 40]]], np.uint8)


def test_unrendered_level_shows_its_ancestors_icons_for_their_area_scaled(tmp_path):
    """Grid 8 not rendered, grid 4 rendered with icons of four flat quadrants: each grid-8 cell
    shows the quadrant of its parent's icon that covers it, blown up to the cell's box; its
    metadata and the manifest say so; rendering the cell later redraws it with its own icon."""
    run = write_fake_run(tmp_path / "run", sizes=(4, 8), icon_size=16, done_fraction=1.0)
    quadrants = np.repeat(np.repeat(QUADRANTS, 8, axis=0), 8, axis=1)  # (16, 16, 3)
    with h5py.File(run.icons, "r+") as f:
        f["levels/4/icons"][:] = quadrants
        f["levels/8/done"][:] = False
    tiles = tmp_path / "run" / "tiles"
    summary = build_tiles(run.cells, run.icons, tiles, **SMALL)
    assert summary.cells_pending == summary.cells_fallback == len(run.cell_ids[8])
    assert f"({len(run.cell_ids[8])} shown as a coarser cell's icon, 0 placeholders)" in summary.describe()
    manifest = read_manifest(tiles)
    z = [zz["z"] for zz in manifest["zooms"] if zz["level"] == 8][-1]
    c, m = manifest["zooms"][z]["cell_px"], manifest["margin_px"] * 2.0 ** (z - manifest["max_native_zoom"])
    shown = 0
    for cell_id in run.cell_ids[8].tolist():
        iy, ix = divmod(cell_id, 8)
        if (iy // 2) * 4 + ix // 2 not in set(run.cell_ids[4].tolist()):
            continue
        for fy, fx in ((0.3, 0.3), (0.5, 0.5), (0.7, 0.6)):  # anywhere in the cell's box
            got = _pixel(tiles, z, m + (ix + fx) * c, m + (iy + fy) * c)
            assert np.abs(np.subtract(got, QUADRANTS[iy % 2, ix % 2], dtype=int)).max() <= 3, (cell_id, got)
        shown += 1
    assert shown >= 8
    entry = {lv["size"]: lv for lv in manifest["levels"]}
    assert entry[8]["fallbacks"] == {"4": len(run.cell_ids[8])} and entry[4]["fallbacks"] == {}
    cells = [c for p in sorted((tiles / "meta" / "8").glob("*.json")) for c in json.loads(p.read_text())["cells"]]
    for cell in cells:
        assert not cell["done"] and cell["icon"] is None
        fb = cell["fallback"]
        assert (fb["size"], fb["iy"], fb["ix"]) == (4, cell["iy"] // 2, cell["ix"] // 2)
        assert fb["icon"]["sprite"] == "icons/4/0-0.jpg"
    first = int(run.cell_ids[8][0])
    mark_done(run.icons, 8, [0])
    again = build_tiles(run.cells, run.icons, tiles, **SMALL)
    assert again.cells_pending == summary.cells_pending - 1 and again.tiles_written >= 1
    iy, ix = divmod(first, 8)
    assert _pixel(tiles, z, m + (ix + 0.5) * c, m + (iy + 0.5) * c) == tuple(icon_color(8, first))


def test_no_partial_files_left(run):
    build_tiles(run.cells, run.icons, run.dir / "tiles", activations_path=run.activations, **SMALL)
    leftovers = [p for p in (run.dir / "tiles").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert os.access(run.dir / "tiles" / ".state.json", os.R_OK)


def test_thumbnails_from_tar_shard_and_missing_photos(run):
    with h5py.File(run.activations, "r+") as f:
        keys = f["images/key"].asstr()[:]
        shards = run.dir / "shards"
        shards.mkdir()
        with tarfile.open(shards / "part-0.tar", "w") as tar:
            for key in keys[1:]:  # photo 0 is missing from the shard
                tar.add(run.images / key, arcname=key)
        del f["images/key"]
        f.create_dataset("images/key", data=np.array([f"part-0.tar::{k}" for k in keys], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.attrs["source"] = str(shards / "part-0.tar")
        image_index = f["layers/mixed4c/image_index"][:]
    shutil.rmtree(run.images)
    summary = build_tiles(run.cells, run.icons, run.dir / "tiles", activations_path=run.activations, **SMALL)
    assert summary.thumbs_failed == 1 and summary.thumbs_written > 0
    doc = json.loads((run.dir / "tiles" / "meta" / "16" / "0-0.json").read_text())
    with h5py.File(run.cells) as f:
        rows = dict(zip(f["levels/16/cell_id"][:].tolist(), f["levels/16/example_rows"][:].tolist()))
    for cell in doc["cells"]:
        valid = [r for r in rows[cell["id"]] if r >= 0]
        for row, thumb in zip(valid, cell["thumbs"]):
            assert (thumb is None) == (image_index[row] == 0)
            if thumb:
                assert Image.open(run.dir / "tiles" / thumb).size == (64, 64)
