"""Model-randomisation sanity check (Adebayo et al. 2018) of every attribution method on real photos.

    python benchmarks/bench_sanity.py --images DIR --weights bvlc_googlenet.pth [--limit 8] [--depth 13]
        [--methods all] [--ig-steps 8] [--occlusion-patch 56 --occlusion-stride 56]
        [--igos-iterations 2 --igos-steps 4] [--json OUT]

Takes every ``len(photos) / limit``-th photo, re-initialises the real InceptionV1 from the top
(fc, then inception5b, inception5a, ... down to ``--depth`` layers) and prints, per method, the
mean Spearman rank correlation of |map| between the randomised and the trained model at each
depth, and from which depth the method passes (correlation below 0.5). See ``atlas.tools.sanity``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from atlas.data import list_photos
from atlas.models import load_model
from atlas.tools.explain import ALL_METHODS, DEFAULT_METHODS
from atlas.tools.sanity import cascading_randomization


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--depth", type=int, default=13, help="layers randomised at the end (13: every one)")
    ap.add_argument("--methods", default="all", help="comma-separated, 'default' or 'all'")
    ap.add_argument("--ig-steps", type=int, default=8)
    ap.add_argument("--occlusion-patch", type=int, default=56)
    ap.add_argument("--occlusion-stride", type=int, default=56)
    ap.add_argument("--igos-iterations", type=int, default=2)
    ap.add_argument("--igos-steps", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    photos = sorted(p.resolve() for p in list_photos(args.images, recursive=False))
    every = max(1, len(photos) // args.limit)
    photos = photos[::every][: args.limit]
    methods = {"default": DEFAULT_METHODS, "all": ALL_METHODS}.get(args.methods) or tuple(args.methods.split(","))
    model = load_model("inceptionv1", weights=args.weights, device="cpu")
    t0 = time.perf_counter()
    r = cascading_randomization(model, photos, methods=methods, depth=args.depth, threshold=args.threshold,
                                ig_steps=args.ig_steps, occlusion_patch=args.occlusion_patch,
                                occlusion_stride=args.occlusion_stride, igos_iterations=args.igos_iterations,
                                igos_steps=args.igos_steps)
    print(f"{r.photos} photos (every {every}-th), "
          f"InceptionV1 (BVLC), top-1 class of the trained model, {r.settings}; Spearman rank correlation of "
          f"|map| with the trained model's, mean over photos; passes below {r.threshold}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - t0:.0f} s in all")
    print(r.table())
    if args.json:
        Path(args.json).write_text(json.dumps({
            "photos": [p.name for p in photos], "depths": r.depths, "threshold": r.threshold, "settings": r.settings,
            "correlation": {m: v.tolist() for m, v in r.correlation.items()}, "seconds": r.seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
