"""Benchmark the reduce and grid stages on synthetic activations of realistic size.

Writes an ``activations.h5`` of ``--rows`` rows x ``--channels`` float16 channels: a mixture of
``--clusters`` non-negative, sparse-ish clusters (each a low-dimensional manifold plus noise,
ReLU'd, like post-ReLU conv activations), with top-10 class attribution per row, a few
duplicate, all-zero and NaN rows. Then, in one run:

1. reduce: UMAP fit on ``--sample`` rows + knn placement of the rest (``atlas.stages.reduce.reduce_file``);
2. grid: four zoom levels (``atlas.stages.grid.grid_file``);
3. the grid means against a naive per-cell mask loop (Lucid's ``bin_laid_out_activations``
   style, O(cells x rows)) on the same rows held in memory (or on ``--naive-rows`` rows,
   extrapolated linearly to all rows, which flatters the loop: more rows also keep more cells);
4. trustworthiness (k=10, cosine) of knn placement vs ``UMAP.transform`` on ``--holdout``
   rows that were not in the fit sample.

Wall time and peak resident memory (sampled every 0.1 s) are printed per step.

    python benchmarks/bench_reduce_grid.py                 # 1,000,000 rows (about 20 minutes)
    python benchmarks/bench_reduce_grid.py --rows 100000   # a quick run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import platform
import resource
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import psutil

from atlas.stages.grid import cell_means, grid_cells, grid_file
from atlas.stages.reduce import reduce_file
from atlas.store.layout import model_path, read_layout, read_rows

LAYER = "inception4c"


class Peak:
    """Peak RSS of this process during a block, sampled by a thread every ``interval`` s."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    @contextmanager
    def measure(self):
        self.peak = self._proc.memory_info().rss
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self._stop.set()
            t.join()
            self._stop.clear()


RESULTS: dict[str, dict] = {}


@contextmanager
def step(name: str):
    peak = Peak()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with peak.measure():
        yield
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    RESULTS[name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_gib": round(peak.peak / 2**30, 2)}
    print(f"[{name}] wall {wall:.1f} s, cpu {cpu:.1f} s, peak RSS {peak.peak / 2**30:.2f} GiB", flush=True)


def write_synthetic(path: Path, rows: int, channels: int, clusters: int, seed: int, chunk: int = 50_000) -> None:
    """The synthetic ``activations.h5`` (layout of atlas.store.activations), written in chunks."""
    rng = np.random.default_rng(seed)
    latent = 4
    centers = (rng.gamma(1.0, 1.0, (clusters, channels)) * (rng.random((clusters, channels)) < 0.25)).astype(np.float32)
    basis = rng.normal(0, 0.6, (clusters, latent, channels)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, clusters).astype(np.float32)
    k = 10
    cls_of = rng.choice(1000, (clusters, k), replace=False).astype(np.int16) if clusters * k <= 1000 else \
        np.stack([rng.choice(1000, k, replace=False) for _ in range(clusters)]).astype(np.int16)
    n_img = rows  # one position per image, as in the paper
    with h5py.File(path, "w") as f:
        f.attrs.update(atlas_version="0.1.0", kind="activations", model="synthetic", layers=[LAYER],
                       settings_hash=f"synthetic-{rows}-{channels}-{clusters}-{seed}",
                       settings_json=json.dumps({"synthetic": True}), complete=False, top_k=k,
                       source="synthetic", n_images=n_img, n_skipped=0)
        f.create_dataset("images/key", data=np.array([f"img{i:07d}.jpg" for i in range(n_img)], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("images/label", data=np.full(n_img, -1, np.int32))
        f.create_dataset("images/status", data=np.zeros(n_img, np.uint8)).attrs["reasons"] = "{}"
        g = f.create_group(f"layers/{LAYER}")
        g.attrs.update(n_rows=rows, channels=channels, grid_shape=(14, 14), sampling="random")
        c = min(1024, rows)
        acts = g.create_dataset("activations", (rows, channels), np.float16, chunks=(c, channels),
                                maxshape=(None, channels))
        img = g.create_dataset("image_index", data=np.arange(rows, dtype=np.int64), chunks=(c,), maxshape=(None,))
        g.create_dataset("position", data=np.full((rows, 2), 7, np.int16), chunks=(c, 2), maxshape=(None, 2))
        tc = g.create_dataset("attribution/top_classes", (rows, k), np.int16, chunks=(c, k), maxshape=(None, k))
        tv = g.create_dataset("attribution/top_values", (rows, k), np.float32, chunks=(c, k), maxshape=(None, k))
        del img
        for s in range(0, rows, chunk):
            n = min(chunk, rows - s)
            lab = rng.integers(0, clusters, n)
            z = rng.normal(0, 1, (n, latent)).astype(np.float32)
            x = centers[lab] + np.einsum("nl,nlc->nc", z, basis[lab])
            x += rng.normal(0, 0.3, (n, channels)).astype(np.float32)
            x *= scale[lab, None]
            np.maximum(x, 0, out=x)
            dup = rng.random(n) < 0.01  # 1% exact duplicates of the chunk's first rows
            x[dup] = x[rng.integers(0, 50, dup.sum())]
            acts[s:s + n] = x.astype(np.float16)
            order = np.argsort(-rng.random((n, k)) * 0.3 - np.linspace(1, 0, k), axis=1)  # mostly the cluster order
            tc[s:s + n] = np.take_along_axis(cls_of[lab], order, 1)
            tv[s:s + n] = np.sort(rng.gamma(2.0, 1.0, (n, k)).astype(np.float32), axis=1)[:, ::-1]
        # a few rows the reduce stage must handle explicitly
        odd = np.random.default_rng(seed + 1).choice(rows, 110, replace=False)
        acts[np.sort(odd[:100])] = np.zeros((100, channels), np.float16)
        for r in np.sort(odd[100:]):
            acts[r, 0] = np.nan
        f.attrs["complete"] = True


def naive_grid_means(xy: np.ndarray, acts: np.ndarray, size: int, min_count: int) -> int:
    """One boolean mask per cell over all rows, as in Lucid's recipe; returns the cells kept."""
    ids = grid_cells(xy, size)
    kept = 0
    for cell in range(size * size):
        mask = ids == cell
        if mask.sum() >= min_count:
            acts[mask].astype(np.float64).mean(axis=0)
            kept += 1
    return kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--clusters", type=int, default=200)
    p.add_argument("--sample", type=int, default=100_000, help="UMAP fit sample [%(default)s]")
    p.add_argument("--holdout", type=int, default=5_000, help="rows for trustworthiness [%(default)s]")
    p.add_argument("--naive-rows", type=int, default=0,
                   help="rows for the naive grid loop, extrapolated linearly to all rows; 0 = all rows [%(default)s]")
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 40, 80, 160])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/atlas-bench-reduce-grid"))
    p.add_argument("--reuse-data", action="store_true", help="keep an existing activations.h5 of the same shape")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    sample = args.sample
    if sample >= args.rows - args.holdout:
        sample = args.rows // 5
        print(f"--sample {args.sample} leaves no rows to place; using {sample}")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    acts_path, layout_path, cells_path = work / "activations.h5", work / "layout.h5", work / "cells.h5"
    for stale in (layout_path, cells_path, model_path(layout_path)):
        stale.unlink(missing_ok=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
          f"load average at start {os.getloadavg()}")
    print(f"data: {args.rows} rows x {args.channels} float16, {args.clusters} clusters; fit sample {sample}")
    reuse = False
    if args.reuse_data and acts_path.is_file():
        with h5py.File(acts_path, "r") as f:
            reuse = f.attrs.get("complete") and f[f"layers/{LAYER}/activations"].shape == (args.rows, args.channels)
    if not reuse:
        with step("write synthetic activations.h5"):
            write_synthetic(acts_path, args.rows, args.channels, args.clusters, args.seed)

    with step("reduce"):
        summary = reduce_file(acts_path, layout_path, sample_size=sample, n_workers=args.workers, progress=False,
                              random_state=args.seed)
    print(summary.describe())
    RESULTS["reduce"].update(fit_s=round(summary.fit_seconds, 1), place_s=round(summary.place_seconds, 1),
                             place_rows_per_s=round(summary.rows_per_second), placed=summary.placed,
                             zero=summary.zero, nonfinite=summary.nonfinite, fit_rows=summary.fit_rows,
                             fit_duplicates=summary.fit_duplicates,
                             model_pickle_mib=round(model_path(layout_path).stat().st_size / 2**20))
    print(f"load average after reduce {os.getloadavg()}", flush=True)

    with step("grid"):
        gsum = grid_file(acts_path, layout_path, cells_path, sizes=tuple(args.sizes), progress=False)
    print(gsum.describe())
    RESULTS["grid"]["cells"] = gsum.cells
    print(f"load average after grid {os.getloadavg()}", flush=True)

    # naive per-cell mask loop vs the vectorised means, same rows, same float32 array in memory
    lay = read_layout(layout_path)
    valid_rows = np.flatnonzero(lay.valid)
    sub = valid_rows[: args.naive_rows] if args.naive_rows else valid_rows
    with h5py.File(acts_path, "r") as f:
        x_sub = read_rows(f[f"layers/{LAYER}/activations"], lay.row_ids[sub]).astype(np.float32)
    xy_sub = lay.xy[sub]
    per_level = {}
    for size in args.sizes:
        t0 = time.perf_counter()
        _m, kept_cells, _c = cell_means(x_sub, grid_cells(xy_sub, size), size * size, 6)
        t_vec = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept_naive = naive_grid_means(xy_sub, x_sub, size, 6)
        t_naive = time.perf_counter() - t0
        if kept_naive != len(kept_cells):
            raise RuntimeError(f"naive and vectorised disagree at size {size}: {kept_naive} vs {len(kept_cells)} cells")
        per_level[size] = {"cells_kept": kept_naive, "vectorised_s": round(t_vec, 2), "naive_s": round(t_naive, 2),
                           "ratio": round(t_naive / max(t_vec, 1e-6), 1)}
        print(f"means {size}x{size} on {len(sub)} rows: vectorised {t_vec:.2f} s, naive mask loop {t_naive:.2f} s "
              f"(x{t_naive / max(t_vec, 1e-6):.1f}), {kept_naive} cells kept", flush=True)
    factor = len(valid_rows) / len(sub)
    t_vec = sum(v["vectorised_s"] for v in per_level.values())
    t_naive = sum(v["naive_s"] for v in per_level.values())
    RESULTS["comparison"] = {
        "rows": int(len(sub)),
        "per_level": per_level,
        "vectorised_s": round(t_vec, 1),
        "naive_s": round(t_naive, 1),
        "naive_over_vectorised": round(t_naive / max(t_vec, 1e-6), 1),
        "naive_extrapolated_to_all_rows_s": round(t_naive * factor, 1),
        "naive_over_grid_file": round(t_naive * factor / RESULTS["grid"]["wall_s"], 1),
    }
    print(f"means of {len(args.sizes)} levels on {len(sub)} float32 rows in memory: naive mask loop {t_naive:.1f} s, "
          f"vectorised {t_vec:.1f} s (x{t_naive / max(t_vec, 1e-6):.1f})"
          + (f"; naive extrapolated x{factor:.1f} to {len(valid_rows)} rows: {t_naive * factor:.0f} s"
             if factor > 1 else "")
          + f"; grid_file from disk with attribution and examples: {RESULTS['grid']['wall_s']} s", flush=True)
    del x_sub

    # trustworthiness of knn placement vs UMAP.transform on held-out rows
    from sklearn.manifold import trustworthiness

    with h5py.File(layout_path, "r") as f:
        sampled = f["fit/sample_row_ids"][:]
    rng = np.random.default_rng(args.seed + 2)
    pool = np.setdiff1d(lay.row_ids[valid_rows], sampled)
    held = np.sort(rng.choice(pool, min(args.holdout, len(pool)), replace=False))
    with h5py.File(acts_path, "r") as f:
        xh = read_rows(f[f"layers/{LAYER}/activations"], held).astype(np.float32)
    with open(model_path(layout_path), "rb") as fh:
        est = pickle.load(fh)["model"]
    with step("knn placement of held-out rows"):
        knn_xy = est.transform(xh, placement="knn")
    with step("UMAP.transform of held-out rows"):
        umap_xy = est.transform(xh, placement="umap")
    t_knn = trustworthiness(xh, knn_xy, n_neighbors=10, metric="cosine")
    t_umap = trustworthiness(xh, umap_xy, n_neighbors=10, metric="cosine")
    RESULTS["trustworthiness"] = {
        "rows": int(len(held)), "knn": round(float(t_knn), 4), "umap_transform": round(float(t_umap), 4),
        "knn_rows_per_s": round(len(held) / RESULTS["knn placement of held-out rows"]["wall_s"]),
        "umap_rows_per_s": round(len(held) / RESULTS["UMAP.transform of held-out rows"]["wall_s"]),
    }
    print(f"trustworthiness (k=10, cosine, {len(held)} held-out rows): knn {t_knn:.4f}, UMAP.transform {t_umap:.4f}")

    RESULTS["process"] = {"ru_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                          "load_average_end": os.getloadavg()}
    print(json.dumps(RESULTS, indent=2))
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
