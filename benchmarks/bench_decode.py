"""JPEG decoding speed of each decoder atlas can use, on real photos, one thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_decode.py [PHOTO_DIR] [--n 500] [--rounds 3]

PHOTO_DIR defaults to ``$ATLAS_SHARED_DIR/images/imagenet-sample`` (``../shared`` beside the
repository without the variable); its JPEGs (``*.JPEG``, ``*.jpg``, ``*.jpeg``, searched
recursively, sorted) are read into memory first, so file reads are not timed. Two measurements
per decoder:

- ``decode``: file bytes -> (3, H, W) uint8 RGB tensor at full size.
- ``decode+resize+crop``: what collect does with each photo before the model, for InceptionV1's
  transform (256 x 256, center crop 224): ``torchcodec`` decodes and then resizes on the
  tensor (:func:`atlas.stages.collect.batch_decode.resize_crop`, collect's batched path);
  ``pil`` is :func:`atlas.data.decode_image` with the JPEG draft target and the transform
  (collect's PIL path in the decode workers).

Decoders: ``pil`` always; ``torchcodec`` where :func:`atlas.data.jpeg_batch_decoder` finds it
usable (otherwise its reason is printed). The cases alternate within each round so that
background load hits them alike. Prints, per round and as the median over rounds, photos per
second of wall time and photos per second of this process's CPU time (one thread: the second
is what the decode costs, the first also counts time the process waited for a core), and a
JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from atlas.data import decode_image, decode_jpegs, jpeg_batch_decoder, torchcodec_problem
from atlas.models import ImageTransform
from atlas.stages.collect.batch_decode import resize_crop

REPO = Path(__file__).resolve().parents[1]


def default_dir() -> Path:
    shared = Path(os.environ.get("ATLAS_SHARED_DIR", REPO.parent / "shared"))
    return shared / "images" / "imagenet-sample"


def read_photos(folder: Path, n: int) -> list[bytes]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))[:n]
    if not paths:
        raise SystemExit(f"no JPEGs under {folder}")
    return [p.read_bytes() for p in paths]


def _pil_tensor(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(decode_image(data))).permute(2, 0, 1)


def _torchcodec_tensor(data: bytes) -> torch.Tensor:
    (img,) = decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], "cpu")
    if img is None:
        raise RuntimeError("TorchCodec rejected a photo")
    return img


def cases(transform: ImageTransform) -> dict[str, Callable[[bytes], object]]:
    """name -> one photo's work, for each decoder usable here."""
    out: dict[str, Callable[[bytes], object]] = {
        "pil decode": _pil_tensor,
        "pil decode+resize+crop": lambda d: transform(decode_image(d, target_size=transform.target_size)),
    }
    if jpeg_batch_decoder() == "torchcodec":
        out["torchcodec decode"] = _torchcodec_tensor
        out["torchcodec decode+resize+crop"] = lambda d: resize_crop(_torchcodec_tensor(d), transform)
    return out


def photos_per_s(fn: Callable[[bytes], object], photos: list[bytes]) -> tuple[float, float]:
    """(photos per wall-clock second, photos per CPU second of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for data in photos:
        fn(data)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(photos) / wall, len(photos) / cpu


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("photos", nargs="?", type=Path, default=None, help="folder of JPEGs [imagenet-sample]")
    p.add_argument("--n", type=int, default=500, help="photos to decode per round [%(default)s]")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the cases alternate within each [%(default)s]")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    folder = args.photos or default_dir()
    photos = read_photos(folder, args.n)
    sizes = [decode_image(d).size for d in photos[:50]]
    print(f"{len(photos)} photos from {folder}, {sum(map(len, photos)) / len(photos) / 1024:.0f} KiB each on average, "
          f"median size {int(np.median([w for w, _ in sizes]))}x{int(np.median([h for _, h in sizes]))} (first 50)")
    problem = torchcodec_problem()
    if problem:
        print(f"torchcodec not measured: {problem}")
    transform = ImageTransform(256, 224, keep_aspect=False)  # InceptionV1's
    todo = cases(transform)
    for fn in todo.values():  # warm up: load the libraries, fill caches
        fn(photos[0])
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in todo}
    for r in range(args.rounds):
        for name, fn in todo.items():
            rates[name].append(photos_per_s(fn, photos))
            wall, cpu = rates[name][-1]
            print(f"round {r + 1}: {name:<32} {wall:7.1f} photos/s, {cpu:7.1f} photos/CPU-s")
    summary = {"photos": len(photos), "folder": str(folder), "threads": torch.get_num_threads(),
               "median_photos_per_s": {n: round(statistics.median(w for w, _ in v), 1) for n, v in rates.items()},
               "median_photos_per_cpu_s": {n: round(statistics.median(c for _, c in v), 1) for n, v in rates.items()},
               "torchcodec": problem or "used"}
    print(f"median over {args.rounds} rounds:")
    for name in rates:
        print(f"  {name:<32} {summary['median_photos_per_s'][name]:7.1f} photos/s, "
              f"{summary['median_photos_per_cpu_s'][name]:7.1f} photos/CPU-s")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
