"""Collect throughput: atlas's collect vs a naive loop, in the same run; peak memory vs image count.

    python benchmarks/bench_collect.py --images DIR --weights bvlc_googlenet.pth [--limit 1000]

- ``naive``: one image at a time, decoded in the main thread at full resolution, default memory
  format, batch of one -- the same rows and attribution as collect computes.
- ``atlas``: :func:`atlas.stages.collect.stage.collect` with its defaults (DataLoader decode workers with
  JPEG draft decoding, batches of 32, channels-last), writing a real ``activations.h5``.
- ``--memory-scales 1000,10000`` runs collect over the photos repeated to that many images
  (a list file) and reports peak resident memory of the whole process tree for each.
- ``--breakdown``: what the main loop (on a GPU: the GPU) waited on: decode, host->device copies,
  the model, the attribution, the writes (``collect(..., breakdown=True)``); ``--decode`` and
  ``--precision`` as in ``atlas collect``.

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from PIL import Image

from atlas.data import list_photos
from atlas.models import load_model
from atlas.stages.collect.stage import CollectSettings, collect, compute_rows, layer_specs


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


def breakdown(paths_list: Path, model, settings: CollectSettings, batch_size: int, workers: int, out: Path,
              decode: str = "auto", precision: str = "fp32") -> dict:
    """What the main loop waited on: ``collect(..., breakdown=True)`` (decode, host->device, model,
    attribution, write; the GPU is synchronized between phases, so on CUDA the shares are the GPU's)."""
    s = collect(paths_list, out, model, settings, batch_size=batch_size, workers=workers, progress=False,
                breakdown=True, decode=decode, precision=precision)
    total = sum(s.timings.values())
    return {"images": s.images, "images_per_s": s.images_per_second, "timings_s": s.timings,
            "shares": {k: v / total for k, v in s.timings.items()}, "wait_share": s.timings["decode"] / total,
            "described": s.describe_breakdown()}


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
    ap.add_argument("--decode", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--json", default=None, help="also write the summary here")
    args = ap.parse_args(argv)

    paths = sorted(p.resolve() for p in list_photos(args.images, recursive=False))
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
                          args.workers if args.workers is not None else max(1, min(4, (os.cpu_count() or 2) - 1)),
                          tmp / "breakdown.h5", decode=args.decode, precision=args.precision)
            result["breakdown"] = b
            print(f"breakdown: {b['images_per_s']:.1f} images/s; {b['described']}", flush=True)
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
