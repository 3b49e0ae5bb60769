"""``atlas explain``: attribution maps of a photo, placed on an atlas, or scored over photos."""

from __future__ import annotations

import argparse

from atlas.cli.common import add_model_args


def add_explain(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas explain`` to ``sub``."""
    s = sub.add_parser("explain", help="attribution maps of one photo (or --evaluate a folder)")
    s.add_argument("photo", help="a photo; with --evaluate a folder / list of photos")
    add_model_args(s)
    s.add_argument("--class", dest="target", default=None, help="class name, WordNet id or index [top-1]")
    s.add_argument("--layer", default="inception4c", help="layer for the per-position attribution [%(default)s]")
    s.add_argument("--gradcam-layer", default=None,
                   help="layer for Grad-CAM and Grad-CAM++ [the model's last spatial layer, e.g. inception5b]")
    s.add_argument("--methods", default=None,
                   help="comma-separated: saliency, guided_backprop, deconvnet, grad_cam, grad_cam_pp, cam, "
                        "integrated_gradients, occlusion, igos; 'all' for every one [all but occlusion, igos]")
    s.add_argument("--ig-steps", type=int, default=32, help="integrated gradients steps [%(default)s]")
    s.add_argument("--occlusion-patch", type=int, default=32, help="occlusion square side in pixels [%(default)s]")
    s.add_argument("--occlusion-stride", type=int, default=16, help="occlusion stride in pixels [%(default)s]")
    s.add_argument("--igos-iterations", type=int, default=10, help="I-GOS optimization steps [%(default)s]")
    s.add_argument("--igos-steps", type=int, default=10, help="I-GOS integrated-gradient steps [%(default)s]")
    s.add_argument("--smoothgrad", action="store_true", help="average gradient maps over noisy copies")
    s.add_argument("-o", "--out", default=None, help="figure to write [PHOTO-explain.png]")
    s.add_argument("--atlas", default=None, metavar="RUN_DIR",
                   help="place the photo's activations on this atlas (figure panel + viewer overlay)")
    s.add_argument("--level", type=int, default=None, help="grid size for the neighbourhood list [middle]")
    s.add_argument("--overlay-name", default=None, help="name of the viewer overlay [photo file name]")
    s.add_argument("--evaluate", action="store_true", help="deletion/insertion AUC per method over photos")
    s.add_argument("--limit", type=int, default=100, help="photos to evaluate [%(default)s]")
    s.add_argument("--curve-steps", type=int, default=16, help="deletion/insertion steps [%(default)s]")
    s.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.models import load_model
    from atlas.tools.attribution import check_methods
    from atlas.tools.explain import ALL_METHODS, DEFAULT_METHODS, evaluate_methods, explain_figure, explain_photo

    if args.methods in (None, "default"):
        methods = DEFAULT_METHODS
    elif args.methods == "all":
        methods = ALL_METHODS
    else:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    try:  # before the model loads: a typo costs no wait
        check_methods(methods)
    except ValueError as e:
        raise ValueError(f"--methods: {e}, or 'all' / 'default'") from None
    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    extra = dict(occlusion_patch=args.occlusion_patch, occlusion_stride=args.occlusion_stride,
                 igos_iterations=args.igos_iterations, igos_steps=args.igos_steps)
    if args.evaluate:
        from atlas.data import open_source

        src = open_source(args.photo)
        refs = src.refs()[: args.limit]
        paths = [p for p in (src.path(r) for r in refs) if p is not None]  # tar members have no path
        scores = evaluate_methods(model, paths, methods=methods, layer=args.gradcam_layer,
                                  ig_steps=args.ig_steps, steps=args.curve_steps, progress=not args.quiet, **extra)
        at = f"; Grad-CAM(++) at {scores.gradcam_layer}" if scores.gradcam_layer else ""
        print(f"{scores.photos} photos, {model.name}, top-1 class{at}; random map = floor to beat")
        print(scores.table())
        if scores.photos > 1:
            print("photo by photo, method - random (mean, 95% interval):")
            print(scores.against_random())
        if scores.ig_completeness_error is not None:
            print(f"integrated gradients ({args.ig_steps} steps): mean completeness error "
                  f"{100 * scores.ig_completeness_error:.2f}%")
        return 0
    e = explain_photo(model, args.photo, target=args.target, layer=args.layer, methods=methods,
                      gradcam_layer=args.gradcam_layer, ig_steps=args.ig_steps, smooth=args.smoothgrad, **extra)
    placement = None
    if args.atlas:
        from atlas.tools.explain import place_on_atlas

        placement = place_on_atlas(e, args.atlas, level=args.level, class_names=model.class_names)
    out = explain_figure(e, args.out or Path(args.photo).stem + "-explain.png", model.class_names, placement)
    print(f"{Path(args.photo).name}: explaining {e.target_name!r} (p={e.probs[e.target]:.3f}); "
          + ", ".join(f"{m} {s:.2f} s" for m, s in e.seconds.items()))
    if e.ig_completeness_error is not None:
        print(f"integrated gradients completeness error: {100 * e.ig_completeness_error:.2f}%")
    print(f"wrote {out}")
    if placement is not None:
        print(placement.describe())
        if (Path(args.atlas) / "tiles" / "manifest.json").is_file():
            from atlas.tools.explain import write_overlay

            ov = write_overlay(e, placement, name=args.overlay_name)
            print(f"wrote the viewer overlay {ov}: `atlas serve {args.atlas}` and tick "
                  f"{ov.stem!r} under Photos")
        else:
            print(f"no tiles in {args.atlas}: build them (`atlas tiles`) to see the photo in the viewer")
    return 0
