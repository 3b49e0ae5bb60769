"""Attribution methods on real photos: deletion / insertion AUC per method and time per photo.

    python benchmarks/bench_explain.py --images DIR --weights bvlc_googlenet.pth [--limit 100]

Takes every ``len(photos) / limit``-th photo (so classes spread over ImageNet), explains the
model's top-1 class with each method, and prints a Markdown table (deletion AUC: lower is
better; insertion AUC: higher is better; a random map is the floor) plus integrated gradients'
mean completeness error. The same as ``atlas explain --evaluate DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from atlas.explain import DEFAULT_METHODS, evaluate_methods
from atlas.models import load_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--layer", default="inception4e", help="Grad-CAM layer [%(default)s]")
    ap.add_argument("--ig-steps", type=int, default=32)
    ap.add_argument("--curve-steps", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    photos = sorted(p.resolve() for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    photos = photos[:: max(1, len(photos) // args.limit)][: args.limit]
    model = load_model("inceptionv1", weights=args.weights, device="cpu")
    t0 = time.perf_counter()
    scores = evaluate_methods(model, photos, methods=DEFAULT_METHODS, layer=args.layer,
                              steps=args.curve_steps, ig_steps=args.ig_steps)
    print(f"{scores.photos} photos, InceptionV1 (BVLC), top-1 class, Grad-CAM at {args.layer}, "
          f"IG {args.ig_steps} steps, {args.curve_steps} curve steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - t0:.0f} s in all")
    print(scores.table())
    print(f"integrated gradients mean completeness error: {100 * scores.ig_completeness_error:.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(scores.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
