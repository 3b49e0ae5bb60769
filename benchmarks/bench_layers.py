"""Several layers' attribution: one pass per layer against one pass for every layer.

    python benchmarks/bench_layers.py --images ../shared/images/imagenet-sample \\
        --weights ../shared/models/bvlc_googlenet.pth --n 48

On ``--n`` real photos (drawn with a fixed seed), the real InceptionV1 and the layers of
``pipelines/layers.toml`` (mixed3b, 4a, 4c, 4e, 5b), the attribution of every position to each
photo's 16 top-scoring classes plus its label (``attribution_classes = 16``), computed

- **per layer** (the naive way, and collect's before): one forward pass and one batched backward
  pass per layer (:func:`atlas.stages.collect.rows.position_attribution` for each);
- **together** (collect's way now): one forward pass and one batched backward pass for every
  layer (:func:`atlas.stages.collect.rows.layer_attributions`);

the two taking turns batch by batch; reports photos/s of each, the ratio, and the largest
difference between the two's values (relative to the largest value).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from PIL import Image

from atlas.models import load_model
from atlas.stages.collect.rows import candidate_classes, layer_attributions, position_attribution

LAYERS = ["inception3b", "inception4a", "inception4c", "inception4e", "inception5b"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--n", type=int, default=48, help="photos")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from atlas.data import list_photos

    photos = list_photos(args.images)
    photos = [photos[i] for i in np.sort(np.random.default_rng(0).choice(len(photos), args.n, replace=False))]
    model = load_model("inceptionv1", weights=args.weights, device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.stack([model.image_transform(Image.open(p).convert("RGB")) for p in photos])
    times = {"per layer": 0.0, "together": 0.0}
    worst = 0.0
    for start in range(0, len(photos), args.batch):
        xb = x[start:start + args.batch]
        with torch.no_grad():
            chosen = candidate_classes(model(xb), args.classes, None)
        t0 = time.perf_counter()
        apart = {name: position_attribution(model, xb, name, chosen) for name in LAYERS}
        times["per layer"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        together = layer_attributions(model, xb, LAYERS, lambda logits: chosen)
        times["together"] += time.perf_counter() - t0
        for name in LAYERS:
            a, b = apart[name][2], together[name][2]
            worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    rate = {k: len(photos) / v for k, v in times.items()}
    res = {"photos": len(photos), "batch": args.batch, "threads": args.threads, "layers": LAYERS,
           "classes": args.classes + 1, "photos_per_s": rate, "speedup": rate["together"] / rate["per layer"],
           "max_relative_difference": worst}
    print(f"{len(photos)} photos, {len(LAYERS)} layers, {args.classes} + label classes, batch {args.batch}, "
          f"{args.threads} threads")
    for k, v in rate.items():
        print(f"  {k:10s} {v:6.2f} photos/s")
    print(f"  together / per layer: {res['speedup']:.2f}x; largest difference {worst:.1e} of the largest value")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
