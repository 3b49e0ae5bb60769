"""Tile pyramid build time on synthetic cells and icons, full build vs incremental rebuilds.

    python benchmarks/bench_tiles.py [--sizes 20,40,80,160] [--icon-size 64] [--fill 0.7] [--workdir DIR]

For each atlas (the paper's four grids 20/40/80/160, and a single 160 x 160 grid) it writes a
synthetic ``cells.h5`` and ``icons.h5`` (``fill`` of each grid's cells occupied, icons with a
pattern so JPEG encoding does real work; 90 % of the icons rendered), then times:

- ``full``: the first :func:`atlas.stages.tiles.build_tiles` (every tile, icon sprite and metadata file);
- ``noop``: the same call again (hashing only: nothing changed, nothing is written);
- ``incremental``: after 1 % more cells of the finest grid are marked rendered;
- ``complete``: after all remaining cells are rendered.

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from atlas.stages.tiles import build_tiles


def write_synthetic(folder: Path, sizes: list[int], icon_size: int, fill: float, done: float, seed: int = 0) -> None:
    """cells.h5 + icons.h5 in the grid/render formats: ``fill`` of the cells, ``done`` of them rendered."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:icon_size, 0:icon_size] / icon_size
    with h5py.File(folder / "cells.h5", "w") as fc, h5py.File(folder / "icons.h5", "w") as fi:
        fc.attrs.update(atlas_version="0.1.0", kind="cells", model="synthetic", layer="mixed4c", settings_hash="bench",
                        settings_json="{}", complete=True, sizes=sizes)
        fi.attrs.update(kind="icons", icon_size=icon_size, complete=False, settings_hash="bench")
        for size in sizes:
            # a round blob of occupied cells, like a UMAP layout
            iy, ix = np.divmod(np.arange(size * size), size)
            r = np.hypot((iy + 0.5) / size - 0.5, (ix + 0.5) / size - 0.5)
            keep = r < np.sqrt(fill / np.pi)
            ids = np.flatnonzero(keep).astype(np.int32)
            m = len(ids)
            g = fc.create_group(f"levels/{size}")
            g.attrs.update(size=size, min_count=1)
            g["cell_id"] = ids
            g["coords"] = np.stack(np.divmod(ids, size), 1).astype(np.int32)
            g["center"] = ((np.stack(np.divmod(ids, size), 1) + 0.5) / size).astype(np.float32)
            g["count"] = rng.integers(1, 500, m).astype(np.int32)
            g["direction"] = np.zeros((m, 4), np.float32)
            g["top_classes"] = rng.integers(0, 1000, (m, 5)).astype(np.int16)
            g["top_values"] = np.sort(rng.random((m, 5)).astype(np.float32), 1)[:, ::-1]
            g["example_rows"] = rng.integers(0, 10**6, (m, 8))
            g["example_images"] = rng.integers(0, 10**5, (m, 8))
            gi = fi.create_group(f"levels/{size}")
            ds = gi.create_dataset("icons", (m, icon_size, icon_size, 3), np.uint8,
                                   chunks=(min(m, 64), icon_size, icon_size, 3))
            for start in range(0, m, 1024):
                n = min(1024, m - start)
                phase = rng.random((n, 1, 1, 3)) * 6.28
                freq = rng.uniform(4, 14, (n, 1, 1, 1))
                block = 127 + 100 * np.sin(freq * (xx[None, ..., None] + 0.6 * yy[None, ..., None]) + phase)
                ds[start:start + n] = block.astype(np.uint8)
            gi["done"] = rng.random(m) < done


def mark_more_done(icons: Path, size: int, fraction: float | None, seed: int = 1) -> int:
    with h5py.File(icons, "r+") as f:
        done = f[f"levels/{size}/done"][:]
        todo = np.flatnonzero(~done)
        if fraction is not None:
            todo = np.random.default_rng(seed).choice(todo, min(len(todo), max(1, int(fraction * len(done)))), replace=False)
        done[todo] = True
        f[f"levels/{size}/done"][:] = done
        return len(todo)


def bench(name: str, sizes: list[int], icon_size: int, fill: float, workdir: Path) -> dict:
    folder = workdir / name
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    write_synthetic(folder, sizes, icon_size, fill, done=0.9)
    print(f"[{name}] synthetic inputs written in {time.perf_counter() - t0:.1f} s", flush=True)
    out = folder / "tiles"
    results: dict = {"sizes": sizes, "icon_size": icon_size}

    def run(step: str) -> None:
        t = time.perf_counter()
        s = build_tiles(folder / "cells.h5", folder / "icons.h5", out, progress=False)
        dt = time.perf_counter() - t
        results[step] = {"seconds": round(dt, 2), "tiles_written": s.tiles_written, "tiles_total": s.tiles_total,
                         "sprites_written": s.sprites_written, "metadata_written": s.metadata_written,
                         "tiles_per_s": round(s.tiles_written / dt, 1) if s.tiles_written else None}
        print(f"[{name}] {step:<12} {dt:7.2f} s  tiles {s.tiles_written:>5}/{s.tiles_total}  sprites {s.sprites_written:>5}"
              f"  metadata {s.metadata_written:>3}  (max zoom {s.max_zoom})", flush=True)

    run("full")
    run("noop")
    n = mark_more_done(folder / "icons.h5", sizes[-1], 0.01)
    results["incremental_cells"] = n
    run("incremental")
    results["complete_cells"] = mark_more_done(folder / "icons.h5", sizes[-1], None)
    for size in sizes[:-1]:
        results["complete_cells"] += mark_more_done(folder / "icons.h5", size, None)
    run("complete")
    results["tiles_bytes"] = sum(p.stat().st_size for p in out.rglob("*.jpg") if p.parent.parent.name.isdigit())
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20,40,80,160")
    p.add_argument("--icon-size", type=int, default=64)
    p.add_argument("--fill", type=float, default=0.7, help="fraction of each grid's cells that are occupied")
    p.add_argument("--workdir", default=None, help="where to write (default: a temporary folder, removed)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_tiles_")
    workdir = Path(args.workdir or tmp.name)
    try:
        summary = {
            "pyramid": bench("pyramid", sizes, args.icon_size, args.fill, workdir),
            "single": bench("single", [sizes[-1]], args.icon_size, args.fill, workdir),
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
