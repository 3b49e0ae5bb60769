"""Attribution methods on real photos: deletion / insertion AUC per method and time per photo.

    python benchmarks/bench_explain.py --images DIR --weights bvlc_googlenet.pth [--limit 100] [--first]
        [--methods all] [--occlusion-stride 32] [--igos-iterations 4 --igos-steps 4]

Takes every ``len(photos) / limit``-th photo (so classes spread over ImageNet; ``--first``: the
first ``limit`` in file order), explains the model's top-1 class with each method, and prints a
Markdown table (deletion AUC: lower is better; insertion AUC: higher is better; a random map is
the floor) plus integrated gradients' mean completeness error and, when I-GOS ran, its paired
deletion / insertion differences against integrated gradients and Grad-CAM (the I-GOS paper's
claim). The same as ``atlas explain --evaluate DIR``.

Long runs: ``--offset K`` skips the first K selected photos (so two processes can take halves),
``--json OUT`` is rewritten after every ``--chunk`` photos, and ``--merge A.json B.json ...``
prints the table of several such files together (their photos one after another).
``--combine A.json B.json ...`` joins files over the *same* photos in the same order, method by
method (a later file's method replaces an earlier one's; ``--json OUT`` saves the result): to
re-run some methods without the rest. For a method in more than one file it prints the largest
per-photo difference, so a method re-run as a check shows whether the photos line up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from atlas.data import list_photos
from atlas.models import load_model
from atlas.tools.attribution import last_spatial_layer
from atlas.tools.explain import ALL_METHODS, DEFAULT_METHODS, MethodScores, MethodSettings, evaluate_methods


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images")
    ap.add_argument("--weights")
    ap.add_argument("--offset", type=int, default=0, help="skip the first K selected photos")
    ap.add_argument("--chunk", type=int, default=10, help="photos between two writes of --json")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="print the table of these results")
    ap.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                    help="join these results over the same photos, method by method")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--first", action="store_true", help="the first LIMIT photos instead of every n-th")
    ap.add_argument("--methods", default="default", help="comma-separated, 'default' or 'all'")
    ap.add_argument("--occlusion-patch", type=int, default=32)
    ap.add_argument("--occlusion-stride", type=int, default=16)
    ap.add_argument("--igos-iterations", type=int, default=10)
    ap.add_argument("--igos-steps", type=int, default=10)
    ap.add_argument("--gradcam-layer", "--layer", dest="layer", default=None,
                    help="Grad-CAM(++) layer [the model's last spatial layer: inception5b]")
    ap.add_argument("--ig-steps", type=int, default=32)
    ap.add_argument("--curve-steps", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.merge:
        scores = merge([MethodScores(**json.loads(Path(f).read_text())) for f in args.merge])
        print(f"{scores.photos} photos from {len(args.merge)} files")
        report(scores, list(scores.deletion_auc))
        return 0
    if args.combine:
        scores = combine([MethodScores(**json.loads(Path(f).read_text())) for f in args.combine])
        if args.json:
            Path(args.json).write_text(json.dumps(scores.__dict__, indent=1))
        report(scores, list(scores.deletion_auc))
        return 0
    if not (args.images and args.weights):
        ap.error("--images and --weights are needed (or --merge)")
    photos = sorted(p.resolve() for p in list_photos(args.images, recursive=False))
    photos = photos[: args.limit] if args.first else photos[:: max(1, len(photos) // args.limit)][: args.limit]
    photos = photos[args.offset:]
    methods = {"default": DEFAULT_METHODS, "all": ALL_METHODS}.get(args.methods) or tuple(args.methods.split(","))
    model = load_model("inceptionv1", weights=args.weights, device="cpu")
    args.layer = args.layer or last_spatial_layer(model)
    settings = MethodSettings(gradcam_layer=args.layer, ig_steps=args.ig_steps, occlusion_patch=args.occlusion_patch,
                              occlusion_stride=args.occlusion_stride, igos_iterations=args.igos_iterations,
                              igos_steps=args.igos_steps)
    t0 = time.perf_counter()
    parts = []
    for start in range(0, len(photos), args.chunk):
        parts.append(evaluate_methods(model, photos[start:start + args.chunk], methods=methods, layer=args.layer,
                                      steps=args.curve_steps, ig_steps=args.ig_steps,
                                      occlusion_patch=args.occlusion_patch, occlusion_stride=args.occlusion_stride,
                                      igos_iterations=args.igos_iterations, igos_steps=args.igos_steps))
        scores = merge(parts)
        if args.json:
            Path(args.json).write_text(json.dumps(scores.__dict__, indent=1))
    print(f"{scores.photos} photos ({'first' if args.first else 'spread'}, offset {args.offset}), InceptionV1 (BVLC), "
          f"top-1 class, {settings.describe(methods)}, {args.curve_steps} curve steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - t0:.0f} s in all")
    report(scores, methods)
    return 0


def merge(parts: list[MethodScores]) -> MethodScores:
    """One :class:`MethodScores` of several runs over different photos (means weighted by photos)."""
    n = sum(p.photos for p in parts)
    per_del = {m: [v for p in parts for v in p.per_photo_deletion[m]] for m in parts[0].per_photo_deletion}
    per_ins = {m: [v for p in parts for v in p.per_photo_insertion[m]] for m in parts[0].per_photo_insertion}
    secs = {m: sum(p.seconds[m] * p.photos for p in parts) / n for m in parts[0].seconds}
    errs = [(p.ig_completeness_error, p.photos) for p in parts if p.ig_completeness_error is not None]
    err = sum(e * k for e, k in errs) / sum(k for _, k in errs) if errs else None
    mean = lambda d: {k: float(np.mean(v)) for k, v in d.items()}  # noqa: E731
    return MethodScores(mean(per_del), mean(per_ins), secs, n, err, per_del, per_ins, parts[0].gradcam_layer)


def combine(parts: list[MethodScores]) -> MethodScores:
    """One :class:`MethodScores` of several runs over the same photos, method by method."""
    n = parts[0].photos
    if any(p.photos != n for p in parts):
        raise SystemExit(f"--combine needs results over the same photos; counts: {[p.photos for p in parts]}")
    per_del: dict[str, list[float]] = {}
    per_ins: dict[str, list[float]] = {}
    secs: dict[str, float] = {}
    for p in parts:
        for m in p.per_photo_deletion:
            if m in per_del:
                diff = max(abs(a - b) for a, b in zip(per_del[m] + per_ins[m],
                                                       p.per_photo_deletion[m] + p.per_photo_insertion[m]))
                print(f"{m}: in more than one file; largest per-photo AUC difference {diff:.2e} (later file kept)")
            per_del[m], per_ins[m], secs[m] = p.per_photo_deletion[m], p.per_photo_insertion[m], p.seconds[m]
    errs = [p.ig_completeness_error for p in parts if p.ig_completeness_error is not None]
    layers = [p.gradcam_layer for p in parts if p.gradcam_layer]
    mean = lambda d: {k: float(np.mean(v)) for k, v in d.items()}  # noqa: E731
    return MethodScores(mean(per_del), mean(per_ins), secs, n, errs[-1] if errs else None, per_del, per_ins,
                        layers[-1] if layers else None)


def report(scores: MethodScores, methods) -> None:
    print(scores.table())
    if scores.ig_completeness_error is not None:
        print(f"integrated gradients mean completeness error: {100 * scores.ig_completeness_error:.2f}%")
    if scores.gradcam_layer:
        print(f"Grad-CAM and Grad-CAM++ at {scores.gradcam_layer}")
    if "random" in methods:
        print(scores.against_random())
    if "igos" in methods:
        for other in ("integrated_gradients", "grad_cam"):
            if other not in methods:
                continue
            for curve in ("deletion", "insertion"):
                d, lo, hi, lower = scores.paired("igos", other, curve)
                print(f"I-GOS - {other}, {curve} AUC per photo: mean {d:+.4f} (95% interval {lo:+.4f} .. {hi:+.4f}); "
                      f"I-GOS lower on {100 * lower:.0f}% of photos")


if __name__ == "__main__":
    sys.exit(main())
