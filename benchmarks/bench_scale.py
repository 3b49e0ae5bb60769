"""Scale-out benchmarks: collect on Dask workers, and how every stage's time and memory grow with size.

Subcommands (each prints one line per measurement and a JSON summary at the end):

``workers``
    The same collect (small crops of the sample photos at ``--size`` px, real InceptionV1,
    one random position per image with top-10 attribution) four ways in one run: in-process
    (1 compute thread + 1 decode process), 1 Dask worker, 2 Dask workers (atlas's local
    cluster: one process and one compute thread each), and 1 Dask worker with Dask's default
    worker environment (``MALLOC_TRIM_THRESHOLD_=65536``). Workers are started and warmed
    (model loaded) before the timed runs; ``--rounds`` alternates the modes so background load
    hits them alike.
    Also measures per-image costs at the real 224 px for the GPU projection: decoding a sample
    photo, and collect's compute with and without attribution.

``stages``
    Reduce (fit on a fixed ``--sample`` + kNN placement of every row) and grid (sizes
    20/40/80/160) on synthetic ``activations.h5`` files of ``--rows`` rows (the real format,
    written by ``bench_reduce_grid.write_synthetic``). Each size runs in its own subprocess, so
    the peak RSS (sampled every 0.1 s, per stage) is that size's own.

``collect-scaling``
    Collect of ``--counts`` distinct small crops (e.g. 1,000 and 10,000) on 2 Dask workers at
    ``--size`` px: images/s and peak RSS of the whole process tree (client + workers), and the
    time of the final join of the part files.

``join``
    The client's join of the part files alone (``finalize``), on synthetic parts of
    ``--block-size`` rows of 528 float16 channels with top-10 attribution (the real layout).

Examples (the figures in benchmarks/README.md)::

    python benchmarks/bench_scale.py workers --images ../shared/images/imagenet-sample \\
        --weights ../shared/models/bvlc_googlenet.pth --n 300 --size 112
    python benchmarks/bench_scale.py stages --rows 10000,100000,1000000 --sample 10000
    python benchmarks/bench_scale.py collect-scaling --images ../shared/images/imagenet-sample \\
        --weights ../shared/models/bvlc_googlenet.pth --counts 1000,10000 --size 64
    python benchmarks/bench_scale.py join --rows 200000 --block-size 1024

One compute thread per process throughout (the machine's cores are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, here and in subprocesses
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZE_ENV = "ATLAS_BENCH_INPUT_SIZE"
DASK_ENV = "1 worker, Dask's default env"  # with MALLOC_TRIM_THRESHOLD_=65536, as `dask worker` sets it
MODES = ("in-process", "1 worker", "2 workers", DASK_ENV)


# --------------------------------------------------------------------------- helpers


class PeakRSS:
    """Peak resident memory (bytes) of this process, and of its children with ``tree=True``."""

    def __init__(self, tree: bool = False, interval: float = 0.1):
        self.tree, self.interval, self.peak = tree, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)] if self.tree else [me]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of this process (with its reaped children) and of ``pids``."""
    t = psutil.Process().cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for pid in pids:
        try:
            c = psutil.Process(pid).cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def machine() -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30), "python": platform.python_version(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def small_inceptionv1():
    """The BVLC InceptionV1 taking ``$ATLAS_BENCH_INPUT_SIZE`` px inputs (a ModelSpec factory:
    each Dask worker builds it itself). Weights from ``$ATLAS_INCEPTIONV1_WEIGHTS``."""
    from atlas.models import ImageTransform, load_model

    size = int(os.environ.get(SIZE_ENV, "224"))
    model = load_model("inceptionv1")
    model.input_size = size
    model.image_transform = ImageTransform(round(size * 256 / 224), size, keep_aspect=False)
    return model


def warm_worker(spec) -> int:
    """Load the model on a worker (its import and load time stay out of the timed runs)."""
    from atlas.runtime.distributed import worker_model

    return worker_model(spec)[1]


def make_crops(photos: list[Path], n: int, side: int, folder: Path, seed: int = 0) -> Path:
    """``n`` distinct JPEG crops, ``side`` px square, random squares of the photos, resized."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    if have >= n:
        return folder
    rng = np.random.default_rng(seed)
    for i in range(have, n):
        with Image.open(photos[i % len(photos)]) as im:
            im.draft("RGB", (side * 2, side * 2))
            im = im.convert("RGB")
            w, h = im.size
            s = int(min(w, h) * rng.uniform(0.5, 1.0))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            im.crop((x, y, x + s, y + s)).resize((side, side), Image.BILINEAR).save(folder / f"c{i:06d}.jpg", quality=90)
    return folder


def _photos(images: Path) -> list[Path]:
    from atlas.data import list_photos

    photos = list_photos(images, recursive=False)
    if not photos:
        raise SystemExit(f"no photos in {images}")
    return photos


def _setup_model_env(weights: Path | None, size: int) -> None:
    if weights is not None:
        os.environ["ATLAS_INCEPTIONV1_WEIGHTS"] = str(weights.resolve())
    os.environ[SIZE_ENV] = str(size)
    sys.path.insert(0, str(HERE))  # workers import this module for the factory (they inherit sys.path)


# --------------------------------------------------------------------------- workers


def cmd_workers(args: argparse.Namespace) -> dict:
    import torch
    from distributed import Client, LocalCluster

    from atlas.runtime.distributed import ModelSpec, local_cluster
    from atlas.stages.collect.stage import CollectSettings, collect

    torch.set_num_threads(1)
    _setup_model_env(args.weights, args.size)
    work = Path(args.workdir)
    photos = _photos(args.images)
    crops = make_crops(photos, args.n, round(args.size * 256 / 224) + 8, work / f"crops-{args.size}")
    spec = ModelSpec(factory="bench_scale:small_inceptionv1", device="cpu")
    settings = CollectSettings(layers=("inception4c",), block_size=args.block_size)
    out: dict = {"machine": machine(), "images": args.n, "input_px": args.size, "rounds": []}
    print(f"machine {out['machine']}", flush=True)

    clusters = {}
    for name in ("1 worker", "2 workers", DASK_ENV):
        t0 = time.perf_counter()
        if name == DASK_ENV:  # last: Dask's pre-spawn environment also lands in this process's os.environ
            cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
        else:
            cluster = local_cluster(int(name[0]))
        client = Client(cluster)
        client.run(warm_worker, spec)  # warm: every worker imports torch and loads the model
        clusters[name] = (cluster, client)
        print(f"{name}: started and warmed in {time.perf_counter() - t0:.1f} s", flush=True)

    worker_pids = {name: list(client.run(os.getpid).values()) for name, (_, client) in clusters.items()}

    def timed(mode: str) -> tuple[float, float]:
        """(images/s, CPU cores used): CPU seconds of this process (and its decode worker) or of
        the mode's Dask workers plus this client, over the wall time."""
        target = work / f"w-{mode}.h5"
        pids = [] if mode == "in-process" else worker_pids[mode]
        cpu0 = cpu_seconds(pids)
        t0 = time.perf_counter()
        if mode == "in-process":
            collect(str(crops), target, spec, settings, batch_size=args.batch_size, workers=1, progress=False,
                    overwrite=True)
        else:
            collect(str(crops), target, spec, settings, batch_size=args.batch_size, progress=False, overwrite=True,
                    scheduler=clusters[mode][1])
        wall = time.perf_counter() - t0
        return args.n / wall, (cpu_seconds(pids) - cpu0) / wall

    try:
        for r in range(args.rounds):
            rates, cores = {}, {}
            for mode in MODES:
                rates[mode], cores[mode] = timed(mode)
            load = round(os.getloadavg()[0], 2)
            out["rounds"].append({"images_per_s": {k: round(v, 2) for k, v in rates.items()},
                                  "cpu_cores_used": {k: round(v, 2) for k, v in cores.items()}, "load_average": load})
            print(f"round {r + 1}: " + ", ".join(f"{k} {rates[k]:.2f} img/s ({cores[k]:.2f} cores)" for k in MODES)
                  + f"; 2 workers / 1 worker = {rates['2 workers'] / rates['1 worker']:.2f}x; load average {load}",
                  flush=True)
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
    med = {k: float(np.median([r["images_per_s"][k] for r in out["rounds"]])) for k in MODES}
    out["median_cpu_cores_used"] = {k: round(float(np.median([r["cpu_cores_used"][k] for r in out["rounds"]])), 2)
                                    for k in MODES}
    out["cpu_ms_per_image"] = {k: round(1000 * out["median_cpu_cores_used"][k] / med[k], 1) for k in MODES}
    out["median_images_per_s"] = {k: round(v, 2) for k, v in med.items()}
    out["ratio_2_over_1_worker"] = round(med["2 workers"] / med["1 worker"], 2)
    out["ratio_2_workers_over_in_process"] = round(med["2 workers"] / med["in-process"], 2)
    out["ratio_1_worker_over_dask_default_env"] = round(med["1 worker"] / med[DASK_ENV], 2)
    print(f"median images/s {out['median_images_per_s']}; CPU cores used {out['median_cpu_cores_used']}; "
          f"CPU ms per image {out['cpu_ms_per_image']}; 2 workers / 1 worker = {out['ratio_2_over_1_worker']}x",
          flush=True)
    if args.full_size:
        out["per_image_224"] = per_image_costs(photos[: args.full_size], args)
    return out


def per_image_costs(photos: list[Path], args: argparse.Namespace) -> dict:
    """Measured at 224 px on one thread: decode + transform of a sample photo, and collect's model
    compute per image with attribution (the real cost) and without it (one plain forward)."""
    import torch

    from atlas.data import ImageDataset, open_source
    from atlas.models import load_model
    from atlas.stages.collect.stage import CollectSettings, compute_rows, layer_specs

    model = load_model("inceptionv1", device="cpu").to(memory_format=torch.channels_last)
    src = open_source([str(p) for p in photos])
    ds = ImageDataset(src, model.image_transform)
    t0 = time.perf_counter()
    items = [ds[i] for i in range(len(ds))]
    decode_ms = 1000 * (time.perf_counter() - t0) / len(ds)
    x = torch.stack([t for _, t, code in items if code == 0]).contiguous(memory_format=torch.channels_last)
    res = {"decode_ms": round(decode_ms, 2)}
    for attribution in (True, False):
        s = CollectSettings(layers=("inception4c",), attribution=attribution)
        specs = layer_specs(model, s.layers)
        compute_rows(model, x[:4], list(range(4)), specs, s)  # warm-up
        t0 = time.perf_counter()
        for b in range(0, len(x), 16):
            compute_rows(model, x[b:b + 16], list(range(b, min(len(x), b + 16))), specs, s)
        res["compute_ms_attribution" if attribution else "compute_ms_no_attribution"] = round(
            1000 * (time.perf_counter() - t0) / len(x), 1)
    # the plain forward to the logits (what published throughput figures measure)
    with torch.no_grad():
        model(x[:4])
        t0 = time.perf_counter()
        for b in range(0, len(x), 16):
            model(x[b:b + 16])
        res["forward_ms"] = round(1000 * (time.perf_counter() - t0) / len(x), 1)
    res["attribution_over_forward"] = round(res["compute_ms_attribution"] / res["forward_ms"], 2)
    print(f"per image at 224 px, 1 thread, {len(x)} photos: decode+transform {res['decode_ms']} ms, "
          f"collect compute {res['compute_ms_attribution']} ms with attribution / "
          f"{res['compute_ms_no_attribution']} ms without, plain forward {res['forward_ms']} ms "
          f"(attribution collect = {res['attribution_over_forward']}x a forward)", flush=True)
    return res


# --------------------------------------------------------------------------- stages


def cmd_stages(args: argparse.Namespace) -> dict:
    out: dict = {"machine": machine(), "sample": args.sample, "sizes": {}}
    print(f"machine {out['machine']}", flush=True)
    for rows in args.rows:
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "stage-size", "--rows", str(rows), "--sample", str(args.sample),
               "--workdir", str(Path(args.workdir) / f"stages-{rows}"), "--workers", str(args.workers)]
        if args.scheduler:
            cmd += ["--scheduler", args.scheduler]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            raise SystemExit(f"the {rows}-row run failed")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        out["sizes"][rows] = res
        print(f"{rows:>9,} rows: " + ", ".join(
            f"{k} {v['wall_s']} s / {v['peak_rss_mib']} MiB" for k, v in res["stages"].items())
            + f" ({time.perf_counter() - t0:.0f} s with setup)", flush=True)
    sizes = sorted(out["sizes"])
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for stage in out["sizes"][lo]["stages"]:
            a, b = out["sizes"][lo]["stages"][stage], out["sizes"][hi]["stages"][stage]
            print(f"{stage}: {hi // lo}x the rows -> {b['wall_s'] / max(a['wall_s'], 1e-9):.1f}x the time, "
                  f"{b['peak_rss_mib'] / max(a['peak_rss_mib'], 1e-9):.2f}x the peak memory", flush=True)
    return out


def cmd_stage_size(args: argparse.Namespace) -> None:
    """One size, in a process of its own: write the data, then time reduce and grid."""
    import logging

    sys.path.insert(0, str(HERE))
    from atlas.stages.grid import grid_file
    from atlas.stages.reduce import reduce_file
    from atlas.store.layout import model_path
    from bench_reduce_grid import write_synthetic

    logging.basicConfig(level=logging.WARNING)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    acts, layout, cells = work / "activations.h5", work / "layout.h5", work / "cells.h5"
    for stale in (layout, cells, model_path(layout)):
        stale.unlink(missing_ok=True)
    res: dict = {"rows": args.rows, "stages": {}}
    t0 = time.perf_counter()
    write_synthetic(acts, args.rows, 512, 200, 0)
    res["write_s"] = round(time.perf_counter() - t0, 1)
    sample = min(args.sample, args.rows)
    scheduler = None
    if args.scheduler:
        from atlas.runtime.distributed import Scheduler

        scheduler = Scheduler(args.scheduler)
        scheduler.client()
    try:
        with PeakRSS(tree=bool(args.scheduler)) as peak:
            t0 = time.perf_counter()
            summary = reduce_file(acts, layout, sample_size=sample, n_workers=args.workers, progress=False,
                                  random_state=0, scheduler=scheduler)
            wall = time.perf_counter() - t0
    finally:
        if scheduler is not None:
            scheduler.close()
    res["stages"]["reduce"] = {"wall_s": round(wall, 1), "peak_rss_mib": round(peak.peak / 2**20),
                               "fit_s": round(summary.fit_seconds, 1), "place_s": round(summary.place_seconds, 1),
                               "place_rows_per_s": round(summary.rows_per_second)}
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        grid_file(acts, layout, cells, sizes=(20, 40, 80, 160), progress=False)
        wall = time.perf_counter() - t0
    res["stages"]["grid"] = {"wall_s": round(wall, 1), "peak_rss_mib": round(peak.peak / 2**20)}
    print(json.dumps(res), flush=True)


# --------------------------------------------------------------------------- collect scaling


def cmd_collect_scaling(args: argparse.Namespace) -> dict:
    from distributed import Client

    import atlas.stages.collect.stage as collect_mod
    from atlas.runtime.distributed import ModelSpec, local_cluster
    from atlas.stages.collect.stage import CollectSettings, collect

    _setup_model_env(args.weights, args.size)
    work = Path(args.workdir)
    photos = _photos(args.images)
    spec = ModelSpec(factory="bench_scale:small_inceptionv1", device="cpu")
    settings = CollectSettings(layers=("inception4c",), block_size=args.block_size)
    out: dict = {"machine": machine(), "input_px": args.size, "workers": args.workers, "counts": {}}
    print(f"machine {out['machine']}", flush=True)
    crops = make_crops(photos, max(args.counts), round(args.size * 256 / 224) + 8, work / f"crops-{args.size}")
    all_crops = sorted(crops.glob("*.jpg"))

    join: dict[str, float] = {}
    real_finalize = collect_mod.finalize

    def timed_finalize(*a, **k):  # the join of the parts, timed on its own
        t0 = time.perf_counter()
        try:
            return real_finalize(*a, **k)
        finally:
            join["s"] = time.perf_counter() - t0

    collect_mod.finalize = timed_finalize
    cluster = local_cluster(args.workers)
    client = Client(cluster)
    try:
        client.run(warm_worker, spec)
        for n in args.counts:
            listing = work / f"crops-{args.size}-{n}.txt"
            listing.write_text("\n".join(str(p) for p in all_crops[:n]) + "\n")
            target = work / f"scaling-{n}.h5"
            with PeakRSS(tree=True, interval=0.05) as peak:
                t0 = time.perf_counter()
                summary = collect(str(listing), target, spec, settings, batch_size=args.batch_size, progress=False,
                                  overwrite=True, scheduler=client)
                wall = time.perf_counter() - t0
            res = {"wall_s": round(wall, 1), "images_per_s": round(n / wall, 1),
                   "join_s": round(join.get("s", 0.0), 2), "rows": summary.rows,
                   "peak_rss_tree_mib": round(peak.peak / 2**20), "load_average": round(os.getloadavg()[0], 2)}
            out["counts"][n] = res
            print(f"{n:>7,} images: {res['wall_s']} s, {res['images_per_s']} img/s, join {res['join_s']} s, "
                  f"peak RSS (client + {args.workers} workers) {res['peak_rss_tree_mib']} MiB, "
                  f"load average {res['load_average']}", flush=True)
    finally:
        client.close()
        cluster.close()
    return out


# --------------------------------------------------------------------------- join


def cmd_join(args: argparse.Namespace) -> dict:
    """Time the client-side join (``finalize``) of synthetic part files of the real layout."""
    from atlas.data import SKIP_REASONS
    from atlas.store.activations import LayerSpec, PartStore, finalize

    work = Path(args.workdir)
    out_path = work / "join" / "activations.h5"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.unlink(missing_ok=True)
    settings = {"synthetic": True, "rows": args.rows, "block_size": args.block_size}
    parts = PartStore(out_path, settings)
    parts.open(overwrite=True)
    spec = LayerSpec("inception4c", 528, (14, 14))
    rng = np.random.default_rng(0)
    n_blocks = -(-args.rows // args.block_size)
    t0 = time.perf_counter()
    for b in range(n_blocks):
        start = b * args.block_size
        n = min(args.block_size, args.rows - start)
        rows = {"inception4c": {
            "activations": rng.random((n, 528), np.float32).astype(np.float16),
            "image_index": np.arange(start, start + n, dtype=np.int64),
            "position": np.full((n, 2), 7, np.int16),
            "attribution/top_classes": rng.integers(0, 1000, (n, 10)).astype(np.int16),
            "attribution/top_values": rng.random((n, 10), np.float32),
        }}
        parts.write(b, start, np.zeros(n, np.uint8), rows)
    write_s = time.perf_counter() - t0
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        finalize(out_path, parts, n_blocks=n_blocks, layers=[spec],
                 image_keys=[f"img{i:08d}.jpg" for i in range(args.rows)], image_labels=np.full(args.rows, -1, np.int32),
                 settings=settings, attrs={"model": "synthetic"}, reasons=SKIP_REASONS)
        join_s = time.perf_counter() - t0
    res = {"machine": machine(), "rows": args.rows, "block_size": args.block_size, "parts": n_blocks,
           "write_parts_s": round(write_s, 1), "join_s": round(join_s, 1), "join_rows_per_s": round(args.rows / join_s),
           "join_peak_rss_mib": round(peak.peak / 2**20), "file_mib": round(out_path.stat().st_size / 2**20)}
    print(f"join of {n_blocks} parts of {args.block_size} rows ({args.rows:,} rows, {res['file_mib']} MiB): "
          f"{res['join_s']} s, {res['join_rows_per_s']:,} rows/s, peak RSS {res['join_peak_rss_mib']} MiB", flush=True)
    out_path.unlink()
    return res


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "atlas-bench-scale"))
        s.add_argument("--json", type=Path, default=None, help="also write the summary here")

    s = sub.add_parser("workers", help="collect: in-process vs 1 vs 2 Dask workers")
    s.add_argument("--images", type=Path, required=True)
    s.add_argument("--weights", type=Path, default=None)
    s.add_argument("--n", type=int, default=300, help="images [%(default)s]")
    s.add_argument("--size", type=int, default=112, help="model input px [%(default)s]")
    s.add_argument("--block-size", type=int, default=16)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--full-size", type=int, default=64, help="photos for the 224 px per-image costs (0: skip)")
    common(s)

    s = sub.add_parser("stages", help="reduce and grid at several row counts, one subprocess each")
    s.add_argument("--rows", type=lambda t: [int(v) for v in t.split(",")], default=[10_000, 100_000, 1_000_000])
    s.add_argument("--sample", type=int, default=10_000, help="UMAP fit rows, the same at every size [%(default)s]")
    s.add_argument("--workers", type=int, default=2, help="placement threads [%(default)s]")
    s.add_argument("--scheduler", default=None, help="run placement on Dask (e.g. local:2)")
    common(s)

    s = sub.add_parser("stage-size", help=argparse.SUPPRESS)
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--sample", type=int, required=True)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--scheduler", default=None)
    s.add_argument("--workdir", required=True)

    s = sub.add_parser("collect-scaling", help="collect of 1k and 10k images on Dask workers: time and memory")
    s.add_argument("--images", type=Path, required=True)
    s.add_argument("--weights", type=Path, default=None)
    s.add_argument("--counts", type=lambda t: [int(v) for v in t.split(",")], default=[1000, 10_000])
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--block-size", type=int, default=64)
    s.add_argument("--batch-size", type=int, default=32)
    common(s)

    s = sub.add_parser("join", help="the client's join of the part files at the end of collect")
    s.add_argument("--rows", type=int, default=200_000)
    s.add_argument("--block-size", type=int, default=1024)
    common(s)

    args = p.parse_args(argv)
    if args.command == "stage-size":
        cmd_stage_size(args)
        return 0
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    run = {"workers": cmd_workers, "stages": cmd_stages, "collect-scaling": cmd_collect_scaling,
           "join": cmd_join}[args.command]
    out = run(args)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
