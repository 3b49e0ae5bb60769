"""Render throughput: icons per minute of the batched engine vs one cell at a time, and memory.

Renders atlas icons (80 px, the render stage's objective and transforms) for synthetic
directions in ``inception4c`` of the BVLC InceptionV1, in one run:

- ``one at a time``: the same engine with one cell per optimizer batch;
- ``naive one at a time``: additionally the whole network runs every step (no early stop after
  the objective's layer) in NCHW layout -- what a straightforward port of Lucid's loop does;
- ``batched``: ``B`` cells per optimizer batch, for each ``--batch-sizes``;
- peak memory per batch size, rendering in a fresh child process (CPU: peak resident memory,
  sampled every 5 ms, over the resident memory after loading the model; GPU:
  ``torch.cuda.max_memory_allocated`` over what the model holds);
- the time a full ``--level`` x ``--level`` grid would take at the best batched rate.

    python benchmarks/bench_render.py --weights ../shared/models/bvlc_googlenet.pth            # CPU
    python benchmarks/bench_render.py --weights W --device cuda --steps 1024 --batch-sizes 1,32,64,128,256
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import torch

from atlas import optvis
from atlas.models import load_model, resolve_device
from atlas.stages.render import DEFAULT_COSSIM_POW, cell_generator

LAYER = "inception4c"


def directions(n: int, channels: int = 512) -> np.ndarray:
    """Non-negative directions like cell means of post-ReLU activations (cost does not depend on them)."""
    rng = np.random.default_rng(0)
    return np.abs(rng.normal(size=(n, channels))).astype(np.float32) * (rng.random((n, channels)) < 0.3)


def render_batch(model, vecs: np.ndarray, first_cell: int, steps: int, icon_size: int, device: torch.device,
                 naive: bool = False) -> torch.Tensor:
    gens = [cell_generator(0, 40, first_cell + i) for i in range(len(vecs))]
    obj = optvis.directions(LAYER, vecs, cossim_pow=DEFAULT_COSSIM_POW)
    if naive:
        obj = obj + 0 * optvis.class_logit(0)  # needs the logits: the whole network runs every step
    param = optvis.fft_image(icon_size, len(vecs), generator=gens, device=device)
    res = optvis.render_vis(model, obj, param, optvis.icon_transforms(), steps=steps, generator=gens,
                            device=device, channels_last=False if naive else None)
    return res.images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def icons_per_minute(model, batch: int, cells: int, steps: int, icon_size: int, device: torch.device,
                     naive: bool = False) -> dict:
    """Render ``cells`` icons ``batch`` at a time (after one warm-up step); icons/min."""
    vecs = directions(max(cells, batch))
    render_batch(model, vecs[:batch], 0, 1, icon_size, device, naive)  # warm-up (allocator, oneDNN kernels)
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < cells:
        b = min(batch, cells - done)
        render_batch(model, vecs[done:done + b], done, steps, icon_size, device, naive)
        done += b
    sync(device)
    seconds = time.perf_counter() - t0
    return {"batch": batch, "cells": cells, "seconds": seconds, "icons_per_min": cells / seconds * 60,
            "ms_per_icon_step": seconds / cells / steps * 1000, "naive": naive}


def child_memory(args: argparse.Namespace, batch: int) -> dict:
    """Peak memory of rendering one batch for a few steps, measured in a fresh process."""
    cmd = [sys.executable, __file__, "--child-memory", str(batch), "--weights", args.weights, "--device",
           args.device, "--icon-size", str(args.icon_size), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss() -> int:
    """Current resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_memory_here(args: argparse.Namespace, batch: int) -> dict:
    device = resolve_device(args.device)
    model = load_model("inceptionv1", weights=args.weights, device=device)
    vecs = directions(batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        render_batch(model, vecs, 0, 3, args.icon_size, device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        # ru_maxrss already holds the peak of loading the weights, so sample the current RSS instead
        base = _rss()
        peak_rss = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak_rss[0] = max(peak_rss[0], _rss())
                time.sleep(0.005)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            render_batch(model, vecs, 0, 3, args.icon_size, device)
        finally:
            stop.set()
            t.join()
        peak = max(peak_rss[0], _rss()) - base
    return {"batch": batch, "peak_mib": peak / 2**20, "kind": "cuda allocated" if device.type == "cuda" else "rss"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="bvlc_googlenet.pth")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto [%(default)s]")
    ap.add_argument("--steps", type=int, default=128, help="optimizer steps per icon [%(default)s]")
    ap.add_argument("--icon-size", type=int, default=80)
    ap.add_argument("--batch-sizes", default="8,32,64", help="batched sizes to time [%(default)s]")
    ap.add_argument("--cells", type=int, default=64, help="icons rendered per batched size [%(default)s]")
    ap.add_argument("--single-cells", type=int, default=4, help="icons rendered one at a time [%(default)s]")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive one-at-a-time baseline")
    ap.add_argument("--memory-batch-sizes", default="1,8,16,32,64", help="'' to skip [%(default)s]")
    ap.add_argument("--level", type=int, default=40, help="estimate the time of a full LEVEL x LEVEL grid")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_memory is not None:
        print(json.dumps(measure_memory_here(args, args.child_memory)))
        return

    device = resolve_device(args.device)
    model = load_model("inceptionv1", weights=args.weights, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# render benchmark: {device} ({name}), torch {torch.__version__}, {args.threads} threads, "
          f"{args.steps} steps, {args.icon_size} px icons, layer {LAYER}", flush=True)
    rows = []
    single = icons_per_minute(model, 1, args.single_cells, args.steps, args.icon_size, device)
    rows.append({"mode": "one at a time", **single})
    print(f"one at a time: {single['icons_per_min']:.2f} icons/min", flush=True)
    if not args.no_naive:
        naive = icons_per_minute(model, 1, args.single_cells, args.steps, args.icon_size, device, naive=True)
        rows.append({"mode": "naive one at a time", **naive})
        print(f"naive one at a time: {naive['icons_per_min']:.2f} icons/min", flush=True)
    for b in [int(s) for s in args.batch_sizes.split(",") if s]:
        r = icons_per_minute(model, b, max(args.cells, b), args.steps, args.icon_size, device)
        rows.append({"mode": f"batched B={b}", **r})
        print(f"batched B={b}: {r['icons_per_min']:.2f} icons/min", flush=True)

    best = max((r for r in rows if r["mode"].startswith("batched")), key=lambda r: r["icons_per_min"], default=single)
    print("\n| mode | cells | seconds | icons/min | ms per icon-step | vs one at a time |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['cells']} | {r['seconds']:.1f} | {r['icons_per_min']:.2f} | "
              f"{r['ms_per_icon_step']:.2f} | {r['icons_per_min'] / single['icons_per_min']:.2f}x |")
    level_cells = args.level * args.level
    level_min = level_cells / best["icons_per_min"]
    print(f"\nbest: {best['mode']}, {best['icons_per_min'] / single['icons_per_min']:.2f}x one at a time"
          + (f", {best['icons_per_min'] / rows[1]['icons_per_min']:.2f}x naive" if not args.no_naive else ""))
    print(f"a full {args.level}x{args.level} level ({level_cells} cells, all kept) at {args.steps} steps, best of 1: "
          f"{level_min:.0f} min ({level_min / 60:.1f} h); best of 4: {4 * level_min / 60:.1f} h")

    mem = []
    if args.memory_batch_sizes:
        print("\n| batch | peak memory (MiB) |\n|---:|---:|")
        for b in [int(s) for s in args.memory_batch_sizes.split(",") if s]:
            m = child_memory(args, b)
            mem.append(m)
            print(f"| {b} | {m['peak_mib']:.0f} ({m['kind']}) |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "device_name": name, "threads": args.threads, "steps": args.steps,
                       "icon_size": args.icon_size, "rows": rows, "memory": mem,
                       "level": {"size": args.level, "minutes_best_of_1": level_min}}, f, indent=2)


if __name__ == "__main__":
    main()
