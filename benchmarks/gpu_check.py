"""One-command check of the GPU path: collect, render and the small pipeline, with a summary table.

    bash benchmarks/gpu_check.sh [DATA_DIR]              # on a GPU machine (under 8 minutes on one H200)
    bash benchmarks/gpu_check.sh [DATA_DIR] --device cpu # the same code at tiny sizes, for CI

``DATA_DIR`` (default ``$ATLAS_GPU_DATA``, else ``gpu_data/`` in the checkout; fill it with
``benchmarks/make_gpu_data.sh``) holds ``bvlc_googlenet.pth`` and ``photos/``. Nothing is
downloaded. Measured, in this order:

1. collect (``inception4c``, one random position per image, attribution of every class) over the
   photos repeated to ``--collect-images``: images/s with ``decode="auto"`` (batched GPU decoding on
   CUDA), then the same run with ``breakdown=True``: the share of the loop spent waiting on decode,
   host->device, model, attribution and writes;
2. render: ``--render-batch`` icons of 80 px in one batch, for 128 and 1024 steps (``--device cpu``:
   a few steps), as icons/min; plus the objective reached with fp32 and with bf16 autocast on the
   same cells; and the amortised start (the render's ``start="amortised"``): its network's training
   (``--amortise-steps`` steps of a batch of directions, paid once a render) and the same batch
   refined from the network's icons with the render's ``refine_steps``;
3. the small pipeline end to end (collect, reduce, grid, render, tiles) on ``--pipeline-images`` photos;
4. peak GPU memory (``torch.cuda.max_memory_allocated``), or peak resident memory on the CPU.

Prints a table and writes ``benchmarks/results/gpu_check-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atlas.data import list_photos
from atlas.models import load_model
from atlas.pipeline import run_pipeline
from atlas.stages.collect.rows import CollectSettings
from atlas.stages.collect.stage import collect
from atlas.stages.render import IconBatch, render_icon_batch
from atlas.store.activations import ActivationsFile

REPO = Path(__file__).resolve().parents[1]
#: The targets named in benchmarks/README.md (one H200).
TARGETS = {"collect_images_per_s": 2000.0, "render_2000_cells_1024_steps_minutes": 10.0}


def _photos(data: Path) -> list[Path]:
    folder = data / "photos"
    paths = list_photos(folder, recursive=False) if folder.is_dir() else []
    if not paths:
        raise SystemExit(f"no photos in {folder}; fill {data} with benchmarks/make_gpu_data.sh")
    return paths


def _list_file(paths: list[Path], n: int, path: Path) -> Path:
    path.write_text("\n".join(str(paths[i % len(paths)]) for i in range(n)) + "\n")
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_collect(weights: Path, photos: list[Path], device: str, n: int, batch_size: int, workers: int | None,
                  tmp: Path) -> dict:
    lst = _list_file(photos, n, tmp / "collect.txt")
    settings = CollectSettings(layers=("inception4c",))
    model = load_model("inceptionv1", weights=weights, device=device)
    # warm-up (cuDNN autotuning, worker start-up), then the measured run
    collect(_list_file(photos, min(n, 2 * batch_size), tmp / "warm.txt"), tmp / "warm.h5", model, settings,
            batch_size=batch_size, workers=workers, progress=False)
    s = collect(lst, tmp / "collect.h5", model, settings, batch_size=batch_size, workers=workers, progress=False)
    b = collect(lst, tmp / "breakdown.h5", model, settings, batch_size=batch_size, workers=workers, progress=False,
                breakdown=True)
    total = sum(b.timings.values())
    return {"images": s.images, "batch_size": batch_size, "images_per_s": s.images_per_second,
            "breakdown_s": b.timings, "breakdown_share": {k: v / total for k, v in b.timings.items()},
            "decode_share": b.timings["decode"] / total, "skipped": s.skipped}


def check_render(weights: Path, acts_path: Path, device: str, batch: int, steps: list[int], icon_size: int,
                 amortise_steps: int) -> dict:
    model = load_model("inceptionv1", weights=weights, device=device)
    with ActivationsFile(acts_path) as f:
        acts = f.read("inception4c", "activations").astype(np.float32)
    rng = np.random.default_rng(0)
    # cell-like directions: means of random groups of 8 rows
    dirs = acts[rng.integers(0, len(acts), (batch, 8))].mean(1).astype(np.float32)
    out: dict = {"batch_size": batch, "icon_size": icon_size, "steps": {}}
    dev = model.device
    for n_steps in steps:
        job = IconBatch("inception4c", 8, np.arange(batch), np.arange(batch, dtype=np.int32), dirs,
                        icon_size=icon_size, steps=n_steps)
        _sync(dev)
        t0 = time.perf_counter()
        res = render_icon_batch(model, job)
        _sync(dev)
        sec = time.perf_counter() - t0
        out["steps"][n_steps] = {"seconds": sec, "icons_per_min": 60 * batch / sec,
                                 "mean_objective": float(res.objective.mean()),
                                 "mean_cossim": float(res.cossim.mean())}
    # autocast: the objective reached (measured in fp32) with and without bf16 steps, same cells
    n_small = min(batch, 16)
    reached = {}
    for precision in ("fp32", "bf16"):
        job = IconBatch("inception4c", 8, np.arange(n_small), np.arange(n_small, dtype=np.int32), dirs[:n_small],
                        icon_size=icon_size, steps=steps[0], precision=precision)
        _sync(dev)
        t0 = time.perf_counter()
        res = render_icon_batch(model, job)
        _sync(dev)
        reached[precision] = {"mean_objective": float(res.objective.mean()), "seconds": time.perf_counter() - t0}
    out["precision"] = reached
    out["amortised"] = check_amortised(model, dirs, icon_size, amortise_steps)
    return out


def check_amortised(model, dirs: np.ndarray, icon_size: int, train_steps: int) -> dict:
    """The amortised start on these cells: train its network, then refine the batch from its icons."""
    from atlas.stages.render import RenderSettings, icon_view_transforms
    from atlas.stages.render.amortised import start_from_network, train_direction_images

    dev, batch, d = model.device, len(dirs), RenderSettings()
    _sync(dev)
    t0 = time.perf_counter()
    fit = train_direction_images(model, "inception4c", dirs, icon_view_transforms(d.icon_view), icon_size=icon_size,
                                 steps=train_steps, batch_size=min(batch, 256), lr=d.amortise_lr)
    _sync(dev)
    train_s = time.perf_counter() - t0
    job = IconBatch("inception4c", 8, np.arange(batch), np.arange(batch, dtype=np.int32), dirs, icon_size=icon_size)
    job = start_from_network([job], fit.net, steps=d.warm_steps, lr=d.refine_lr, shift=d.amortise_shift)[0]
    t0 = time.perf_counter()
    res = render_icon_batch(model, job)
    _sync(dev)
    sec = time.perf_counter() - t0
    return {"train_steps": train_steps, "train_seconds": train_s, "train_steps_per_s": train_steps / train_s,
            "refine_steps": d.warm_steps, "seconds": sec, "icons_per_min": 60 * batch / sec,
            "mean_cossim": float(res.cossim.mean()), "mean_objective": float(res.objective.mean())}


def check_pipeline(weights: Path, photos: list[Path], device: str, n: int, steps: int, tmp: Path) -> dict:
    folder = tmp / "pipeline-photos"
    folder.mkdir()
    for p in photos[:n]:
        (folder / p.name).symlink_to(p)
    cfg = tmp / "pipeline.toml"
    cfg.write_text(f"""
[run]
dir = "{tmp / 'run'}"
device = "{device}"
[model]
name = "inceptionv1"
weights = "{weights}"
[collect]
source = "{folder}"
layers = ["inception4c"]
positions_per_image = 2
batch_size = 64
[reduce]
n_neighbors = 10
[grid]
sizes = [4, 8]
min_count = 1
[render]
steps = {steps}
icon_size = 80
batch_size = 256
[tiles]
tile_size = 256
""")
    t0 = time.perf_counter()
    stages = run_pipeline(cfg, progress=False)
    return {"photos": n, "render_steps": steps, "seconds": time.perf_counter() - t0, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("ATLAS_GPU_DATA", str(REPO / "gpu_data")),
                    help="folder with bvlc_googlenet.pth and photos/ [$ATLAS_GPU_DATA or gpu_data/]")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:1, cpu")
    ap.add_argument("--collect-images", type=int, default=None, help="[20000 on a GPU, 16 on the CPU]")
    ap.add_argument("--collect-batch", type=int, default=None, help="[256 on a GPU, 8 on the CPU]")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers [collect's default]")
    ap.add_argument("--render-batch", type=int, default=None, help="icons per optimizer batch [512 / 2]")
    ap.add_argument("--render-steps", default=None, help="comma-separated step counts [128,1024 / 2,4]")
    ap.add_argument("--amortise-steps", type=int, default=None, help="training steps of the amortised start [1000 / 3]")
    ap.add_argument("--pipeline-images", type=int, default=None, help="[300 / 12]")
    ap.add_argument("--pipeline-steps", type=int, default=None, help="render steps in the pipeline [128 / 2]")
    ap.add_argument("--json", default=None, help="[benchmarks/results/gpu_check-<device>.json]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    data = Path(args.data)
    weights = data / "bvlc_googlenet.pth"
    if not weights.is_file():
        raise SystemExit(f"{weights} not found; fill {data} with benchmarks/make_gpu_data.sh "
                         "(or give the folder as the first argument / $ATLAS_GPU_DATA)")
    photos = _photos(data)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"

    def pick(value, on_gpu, on_cpu):
        return value if value is not None else (on_gpu if gpu else on_cpu)

    n_collect = pick(args.collect_images, 20000, 16)
    collect_batch = pick(args.collect_batch, 256, 8)
    render_batch = pick(args.render_batch, 512, 2)
    steps = [int(v) for v in args.render_steps.split(",")] if args.render_steps else ([128, 1024] if gpu else [2, 4])
    pipe_images = pick(args.pipeline_images, 300, 12)
    pipe_steps = pick(args.pipeline_steps, 128, 2)
    result: dict = {"device": str(device), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "photos": len(photos), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if gpu:
        result["gpu"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(f"[1/3] collect: {n_collect} images, batches of {collect_batch} on {device}", flush=True)
        result["collect"] = check_collect(weights, photos, str(device), n_collect, collect_batch, args.workers, tmp)
        print(f"[2/3] render: {render_batch} icons of 80 px per batch, steps {steps}", flush=True)
        result["render"] = check_render(weights, tmp / "collect.h5", str(device), render_batch, steps, 80,
                                        pick(args.amortise_steps, 1000, 3))
        print(f"[3/3] pipeline: {pipe_images} photos, render {pipe_steps} steps", flush=True)
        result["pipeline"] = check_pipeline(weights, photos, str(device), pipe_images, pipe_steps, tmp)
    result["seconds"] = time.perf_counter() - t_all
    if gpu:
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["targets"] = TARGETS

    c, r = result["collect"], result["render"]
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in c["breakdown_share"].items())
    rows = [
        ("device", result.get("gpu", str(device))),
        ("collect images/s (with attribution)", f"{c['images_per_s']:.1f}  ({c['images']} images, batch "
                                                f"{c['batch_size']}; target >= {TARGETS['collect_images_per_s']:.0f})"),
        ("collect time waiting on decode", f"{100 * c['decode_share']:.0f}%  ({shares})"),
    ]
    for n_steps, v in r["steps"].items():
        rows.append((f"render icons/min, 80 px, {n_steps} steps", f"{v['icons_per_min']:.1f}  (batch {r['batch_size']}, "
                                                                 f"{v['seconds']:.1f} s, cossim {v['mean_cossim']:.2f})"))
    last = r["steps"][steps[-1]]
    rows.append((f"render 2000 cells at {steps[-1]} steps", f"{2000 / last['icons_per_min']:.1f} min  (target < "
                                                            f"{TARGETS['render_2000_cells_1024_steps_minutes']:.0f} min "
                                                            "at 1024 steps)"))
    p = r["precision"]
    rows.append((f"render objective fp32 / bf16 ({steps[0]} steps)",
                 f"{p['fp32']['mean_objective']:.3g} / {p['bf16']['mean_objective']:.3g}  "
                 f"({p['fp32']['seconds']:.1f} s / {p['bf16']['seconds']:.1f} s)"))
    a = r["amortised"]
    rows.append((f"amortised start: training, {a['train_steps']} steps", f"{a['train_seconds']:.1f} s  "
                                                                      f"({a['train_steps_per_s']:.1f} steps/s)"))
    rows.append((f"amortised start: icons/min, {a['refine_steps']} steps", f"{a['icons_per_min']:.1f}  (cossim "
                                                                          f"{a['mean_cossim']:.2f})"))
    rows.append(("small pipeline end to end", f"{result['pipeline']['seconds']:.1f} s  "
                                              f"({result['pipeline']['photos']} photos)"))
    if gpu:
        rows.append(("peak GPU memory", f"{result['peak_gpu_memory_gib']:.2f} GiB"))
    rows.append(("peak resident memory (this process)", f"{result['peak_rss_gib']:.2f} GiB"))
    rows.append(("total", f"{result['seconds']:.0f} s"))
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    out = Path(args.json) if args.json else REPO / "benchmarks" / "results" / f"gpu_check-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
