"""Collect throughput: atlas's collect vs a naive loop, in the same run; peak memory vs image count.

    python benchmarks/bench_collect.py --images DIR --weights bvlc_googlenet.pth [--limit 1000]

- ``naive``: one image at a time, decoded in the main thread at full resolution, default memory
  format, batch of one -- the same rows and attribution as collect computes.
- ``atlas``: :func:`atlas.collect.collect` with its defaults (DataLoader decode workers with
  JPEG draft decoding, batches of 32, channels-last), writing a real ``activations.h5``.
- ``--memory-scales 1000,10000`` runs collect over the photos repeated to that many images
  (a list file) and reports peak resident memory of the whole process tree for each.
- ``--breakdown``: time the main loop's wait on the decode workers vs model compute
  (on a GPU this shows whether decoding keeps up).

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from PIL import Image

from atlas.collect import CollectSettings, collect, compute_rows, layer_specs
from atlas.data import ImageDataset, open_source
from atlas.models import load_model


class PeakRSS:
    """Sample the resident memory of this process and its children; keep the peak (bytes)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me, *me.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
            except psutil.Error:
                rss = 0
            self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def list_file(paths: list[Path], n: int, folder: Path) -> Path:
    """A list file with ``n`` entries cycling through ``paths`` (each entry is its own image)."""
    f = folder / f"list-{n}.txt"
    f.write_text("\n".join(str(paths[i % len(paths)]) for i in range(n)) + "\n")
    return f


def naive(paths: list[Path], model, settings: CollectSettings) -> float:
    specs = layer_specs(model, settings.layers)
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            x = model.image_transform(im.convert("RGB"))[None].to(model.device)
        compute_rows(model, x, [i], specs, settings)
    return len(paths) / (time.perf_counter() - t0)


def breakdown(paths_list: Path, model, settings: CollectSettings, batch_size: int, workers: int) -> dict:
    """Main-loop time waiting for decoded batches vs computing rows."""
    specs = layer_specs(model, settings.layers)
    fast = model.to(memory_format=torch.channels_last)
    src = open_source(paths_list)
    dataset = ImageDataset(src, model.image_transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                         num_workers=workers, collate_fn=dataset.collate_fn,
                                         pin_memory=model.device.type == "cuda", prefetch_factor=4 if workers else None)
    wait = compute = 0.0
    n = 0
    t0 = time.perf_counter()
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            _all, imgs, ok, _f = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        if not len(ok):
            continue
        imgs = imgs.to(model.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        compute_rows(fast, imgs, ok.tolist(), specs, settings)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        wait += t1 - t
        compute += t2 - t1
        n += len(ok)
    total = time.perf_counter() - t0
    return {"images": n, "images_per_s": n / total, "wait_s": wait, "compute_s": compute,
            "wait_share": wait / total, "compute_only_images_per_s": n / compute}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder of photos (e.g. the ImageNet sample)")
    ap.add_argument("--weights", required=True, help="bvlc_googlenet.pth")
    ap.add_argument("--limit", type=int, default=1000, help="photos for the throughput comparison")
    ap.add_argument("--naive-limit", type=int, default=None, help="photos for the naive loop [--limit]")
    ap.add_argument("--layer", default="inception4c")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="alternating atlas/naive rounds; medians reported")
    ap.add_argument("--memory-scales", default="", help="comma-separated image counts, e.g. 1000,10000")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--json", default=None, help="also write the summary here")
    args = ap.parse_args(argv)

    paths = sorted(p.resolve() for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    paths = paths[: args.limit]
    model = load_model("inceptionv1", weights=args.weights, device=args.device)
    settings = CollectSettings(layers=(args.layer,))
    result: dict = {"device": str(model.device), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "photos": len(paths), "layer": args.layer}
    if model.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps({k: result[k] for k in result}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lst = list_file(paths, len(paths), tmp)
        naive_model = load_model("inceptionv1", weights=args.weights, device=args.device)
        n = args.naive_limit or len(paths)
        atlas_rates, naive_rates, peaks = [], [], []
        # rounds alternate the two so that other load on the machine hits both alike
        for r in range(args.rounds):
            with PeakRSS() as mem:
                s = collect(lst, tmp / f"atlas-{r}.h5", model, settings, batch_size=args.batch_size,
                            workers=args.workers, progress=False)
            atlas_rates.append(s.images_per_second)
            peaks.append(mem.peak / 2**20)
            print(f"round {r}: atlas collect {s.images} images, {s.images_per_second:.2f} images/s, "
                  f"peak RSS {mem.peak / 2**20:.0f} MB", flush=True)
            if not args.skip_naive:
                rate = naive(paths[:n], naive_model, settings)
                naive_rates.append(rate)
                print(f"round {r}: naive loop {n} images, {rate:.2f} images/s", flush=True)
        result["rounds"] = args.rounds
        result["atlas_images_per_s"] = statistics.median(atlas_rates)
        result["atlas_images_per_s_all"] = atlas_rates
        result["atlas_peak_rss_mb"] = max(peaks)
        if naive_rates:
            result["naive_images"] = n
            result["naive_images_per_s"] = statistics.median(naive_rates)
            result["naive_images_per_s_all"] = naive_rates
            result["speedup"] = result["atlas_images_per_s"] / result["naive_images_per_s"]
            print(f"median of {args.rounds}: atlas {result['atlas_images_per_s']:.2f} images/s, naive "
                  f"{result['naive_images_per_s']:.2f} images/s; atlas/naive = {result['speedup']:.2f}x", flush=True)
        if args.breakdown:
            b = breakdown(lst, model, settings, args.batch_size,
                          args.workers if args.workers is not None else max(1, min(4, (os.cpu_count() or 2) - 1)))
            result["breakdown"] = b
            print(f"breakdown: {b['images_per_s']:.1f} images/s end to end; waiting on decode "
                  f"{100 * b['wait_share']:.0f}% of the time; compute alone {b['compute_only_images_per_s']:.1f} images/s",
                  flush=True)
        for n in [int(v) for v in args.memory_scales.split(",") if v]:
            lst_n = list_file(paths, n, tmp)
            with PeakRSS() as mem:
                s = collect(lst_n, tmp / f"mem-{n}.h5", model, settings, batch_size=args.batch_size,
                            workers=args.workers, progress=False)
            result[f"peak_rss_mb_{n}"] = mem.peak / 2**20
            result[f"images_per_s_{n}"] = s.images_per_second
            print(f"{n} images: peak RSS {mem.peak / 2**20:.0f} MB, {s.images_per_second:.2f} images/s", flush=True)
            (tmp / f"mem-{n}.h5").unlink()
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
