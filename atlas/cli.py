"""The ``atlas`` command: parses arguments and calls library functions, nothing more.

Every subcommand maps to one function of the Python API; ``atlas run CONFIG`` runs the
pipeline's stages in order (see :mod:`atlas.pipeline`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from atlas.checks import SettingError

log = logging.getLogger("atlas")

EXIT_USAGE = 2

#: Settings fields whose command-line option is named otherwise (field -> argparse dest), so that
#: a :class:`~atlas.checks.SettingError` names the option the user typed.
_FIELD_DESTS = {"n_examples": "examples", "positions_per_image": "positions", "examples_per_cell": "examples",
                "tile_format": "format", "n_workers": "workers", "random_state": "seed"}


def _number_list(kind: type, example: str) -> Callable[[str], tuple]:
    """An argparse type for comma-separated numbers; a bad list names the option and the value."""
    what = "whole numbers" if kind is int else "numbers"

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {what}, e.g. {example}") from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


_int_list = _number_list(int, "20,40,80")
_float_list = _number_list(float, "0.2,0.3")


def _option_for(parser: argparse.ArgumentParser, key: str) -> str | None:
    """The option of ``parser`` that sets the settings field ``key`` (``min_count`` -> ``--min-count``)."""
    dest = _FIELD_DESTS.get(key, key)
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return max(action.option_strings, key=len)
    return None


def _add_model_args(p: argparse.ArgumentParser, default: str | None = "inceptionv1") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default,
                   help="inceptionv1 (BVLC GoogLeNet), torchvision:NAME (e.g. torchvision:resnet50) [%(default)s]")
    g.add_argument("--weights", default=None,
                   help="local weight file (InceptionV1: also $ATLAS_INCEPTIONV1_WEIGHTS)")
    g.add_argument("--random-init", action="store_true", help="use random weights (tests, smoke runs)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 [%(default)s]")


def _add_scheduler_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help=f"Dask scheduler (tcp://HOST:8786, or local / local:N for N worker processes here): {what}")


def cmd_layers(args: argparse.Namespace) -> int:
    from atlas.models import load_model

    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    shapes = model.layer_shapes()
    width = max(len(n) for n in shapes)
    print(f"# {model.name}: output shape of each layer at {model.input_size}x{model.input_size} input")
    for name, shape in shapes.items():
        if args.spatial and len(shape) != 3:
            continue
        print(f"{name:<{width}}  {tuple(shape)}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from atlas.stages.collect.stage import CollectSettings, collect

    settings = CollectSettings(
        layers=tuple(args.layer or ["inception4c"]),
        sampling=args.sampling,
        positions_per_image=args.positions,
        edge_margin=args.edge_margin,
        seed=args.seed,
        attribution=not args.no_attribution,
        attribution_classes=args.attribution_classes,
        top_k=args.top_k,
        full_attribution=args.full_attribution,
        dtype=args.dtype,
        block_size=args.block_size,
    )
    summary = collect(
        args.source if len(args.source) > 1 else args.source[0],
        args.output,
        args.model,
        settings,
        weights=args.weights,
        random_init=args.random_init,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
        scheduler=args.scheduler,
        decode=args.decode,
        precision=args.precision,
        breakdown=args.breakdown,
    )
    print(summary.describe())
    if args.breakdown:
        print(summary.describe_breakdown())
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.models import load_model
    from atlas.tools.attribution import METHODS
    from atlas.tools.explain import ALL_METHODS, DEFAULT_METHODS, evaluate_methods, explain_figure, explain_photo

    if args.methods in (None, "default"):
        methods = DEFAULT_METHODS
    elif args.methods == "all":
        methods = ALL_METHODS
    else:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}, "
                         "or 'all' / 'default'")
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


def cmd_adversarial(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.models import load_model
    from atlas.tools.adversarial import describe_eps, eps_from_cli, list_photos, run_adversarial

    budgets = [eps_from_cli(v, args.norm) for v in args.eps]
    photos = list_photos(args.photos, args.limit)
    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    out = Path(args.out)
    report = run_adversarial(model, photos, out, target=args.target, budgets=budgets, norm=args.norm,
                             method=args.method, steps=args.steps, random_start=args.random_start, seed=args.seed,
                             run_dir=args.run, figures=args.figures, progress=not args.quiet)
    print(report.describe())
    for p in report.photos[:10]:
        print(f"  {Path(p.path).name}: smallest flipping budget "
              + (describe_eps(p.smallest_eps, args.norm) if p.smallest_eps is not None else "none of those tried"))
    print(f"wrote {out}/report.json, report.md and {min(len(report.photos), args.figures if args.figures >= 0 else 10**9)}"
          " figures")
    return 0


def cmd_fool(args: argparse.Namespace) -> int:
    from atlas.models import load_model
    from atlas.tools.fooling import fooling_gallery, fooling_images

    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    settings = {"both": (True, False), "on": (True,), "off": (False,)}[args.priors]
    results = []
    for priors in settings:
        r = fooling_images(model, classes, priors=priors, size=args.size, steps=args.steps, lr=args.lr,
                           seed=args.seed, progress=not args.quiet)
        print(r.describe())
        results.append(r)
    print(f"wrote {fooling_gallery(results, args.out)}")
    return 0


def _run_file(run_dir: str | None, explicit: str | None, name: str) -> str:
    from pathlib import Path

    if explicit:
        return explicit
    if run_dir is None:
        raise ValueError(f"give the run folder (RUN_DIR) or --{name.split('.')[0]} PATH")
    return str(Path(run_dir) / name)


def cmd_attack(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.models import load_model
    from atlas.tools.attack import AttackSettings, run_attack

    settings = AttackSettings(
        source=args.source, target=args.target, level=args.level, candidates=args.candidates,
        random_cells=args.random_cells, noise_patches=args.noise_patches, patch=args.patch, patch_px=args.patch_px,
        steps=args.steps, sizes=args.sizes, static_corner=args.corner,
        augment=args.augment, seed=args.seed, universal_limit=args.universal_limit,
        selection_fraction=args.selection_fraction,
    )
    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    out = Path(args.out or Path(args.run_dir) / "attacks" / f"{args.source}-to-{args.target}".replace(" ", "_"))
    report = run_attack(model, args.run_dir, settings, images=args.images, target_images=args.target_images,
                        universal=args.universal, out_dir=out, progress=not args.quiet)
    print("candidates (target - source attribution, mean over the cell's rows):")
    for c in report.candidates:
        print(f"  cell {c['cell'][0]}:{c['cell'][1]},{c['cell'][2]}  score {c['score']:+.4f}  {c['count']} rows  "
              f"[{', '.join(c['classes'][:3])}]")
    print(f"{report.n_source_correct} of {report.n_source_views} views of {report.source!r} classified correctly; "
          f"patches chosen on {report.n_selection}, measured on {report.n_test}")
    print(report.table())
    print(f"wrote {out}/report.json, report.md, candidates.png, examples.png, success.png "
          f"({report.seconds['total']:.0f} s)")
    return 0


def cmd_reduce(args: argparse.Namespace) -> int:
    from atlas.stages.reduce import ReduceSettings, reduce_file

    settings = ReduceSettings(
        n_neighbors=args.n_neighbors, min_dist=args.min_dist, metric=args.metric, whiten=args.whiten,
        sample_size=args.sample_size, placement=args.placement, random_state=args.seed,
        class_filter=args.class_filter, class_top_n=args.class_top_n, n_workers=args.workers,
    )
    acts = _run_file(args.run_dir, args.activations, "activations.h5")
    out = _run_file(args.run_dir, args.output, "layout.h5")
    summary = reduce_file(acts, out, settings, layer=args.layer, progress=not args.quiet, overwrite=args.overwrite,
                          scheduler=args.scheduler)
    print(summary.describe())
    return 0


def _subatlas_settings(args: argparse.Namespace):
    from atlas.stages.classes import SubAtlasSettings

    return SubAtlasSettings(sizes=args.sizes, min_count=args.min_count,
                            class_top_n=args.class_top_n, icon_size=args.icon_size, steps=args.steps,
                            batch_size=args.batch_size)


def cmd_classes(args: argparse.Namespace) -> int:
    from atlas.models import load_model
    from atlas.stages.classes import class_atlas

    settings = _subatlas_settings(args)
    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    for name in args.classes:
        print(class_atlas(args.run_dir, name, model, settings, device=args.device, progress=not args.quiet,
                          overwrite=args.overwrite).describe())
    print(f"browse them with: atlas serve {args.run_dir}  (the atlas picker lists classes/<name>)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from atlas.models import load_model
    from atlas.stages.classes import comparison_atlas

    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    summary = comparison_atlas(args.run_dir, args.class_a, args.class_b, model, _subatlas_settings(args),
                               device=args.device, progress=not args.quiet, overwrite=args.overwrite)
    print(summary.describe())
    print(f"browse it with: atlas serve {args.run_dir}  (the atlas picker lists {summary.folder.parent.name}/"
          f"{summary.folder.name})")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from atlas.stages.grid import GridSettings, grid_file

    settings = GridSettings(sizes=args.sizes, min_count=args.min_count,
                            top_k=args.top_k, n_examples=args.examples, class_filter=args.class_filter,
                            class_top_n=args.class_top_n)
    acts = _run_file(args.run_dir, args.activations, "activations.h5")
    layout = _run_file(args.run_dir, args.layout, "layout.h5")
    out = _run_file(args.run_dir, args.output, "cells.h5")
    summary = grid_file(acts, layout, out, settings, progress=not args.quiet, overwrite=args.overwrite)
    print(summary.describe())
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from atlas.models import load_model
    from atlas.stages.render import render_cells

    cells = _run_file(args.run_dir, args.cells, "cells.h5")
    out = _run_file(args.run_dir, args.output, "icons.h5")
    if args.scheduler:
        from atlas.runtime.distributed import ModelSpec

        model = ModelSpec.of(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    else:
        model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    summary = render_cells(cells, out, model, levels=args.levels, icon_size=args.icon_size, steps=args.steps,
                           attempts=args.attempts, batch_size=args.batch_size, lr=args.lr,
                           cossim_pow=args.cossim_pow, icon_view=args.icon_view, whiten=True if args.whiten else None,
                           device=args.device, seed=args.seed, progress=not args.quiet, overwrite=args.overwrite,
                           precision=args.precision, border_prior=args.border_prior, objective=args.objective,
                           start=args.start, refine_steps=args.refine_steps, refine_lr=args.refine_lr,
                           compile=args.compile, scheduler=args.scheduler)
    print(summary.describe())
    return 0


def cmd_vis(args: argparse.Namespace) -> int:
    from atlas.models import load_model
    from atlas.optvis import visualize

    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    out = args.out or (args.objective.replace(":", "_").replace("/", "_") + ".png")
    visualize(model, args.objective, out, size=args.size, steps=args.steps, batch=args.batch, param=args.param,
              init_image=args.image, transforms=not args.no_transforms, lr=args.lr, seed=args.seed,
              device=args.device, progress=not args.quiet, input_size=args.input_size)
    print(f"wrote {out}")
    return 0


def cmd_dream(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.models import load_model
    from atlas.optvis.dream import dream

    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    what = f"{args.layer}_{args.channel}" if args.channel is not None else args.layer
    out = args.out or f"{Path(args.photo).stem}-dream-{what}.png"
    r = dream(model, args.photo, args.layer, channel=args.channel, out=out, max_side=args.max_side,
              octaves=args.octaves, octave_scale=args.octave_scale, steps=args.steps, jitter=args.jitter, lr=args.lr,
              param=args.param, seed=args.seed, device=args.device, progress=not args.quiet)
    sizes = ", ".join(f"{h}x{w}" for h, w in r.octave_sizes)
    print(f"octaves {sizes}; objective at full size {r.start_values[-1]:.4g} -> {r.end_values[-1]:.4g}")
    print(f"wrote {out}")
    return 0


def cmd_style(args: argparse.Namespace) -> int:
    from atlas.models import load_model
    from atlas.optvis.neural_style import style_transfer

    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    layers = tuple(v for v in args.style_layers.split(",") if v)
    r = style_transfer(model, args.content, args.style, out=args.out, content_layer=args.content_layer,
                       style_layers=layers, style_weight=args.style_weight, content_weight=args.content_weight,
                       size=args.size or None, steps=args.steps, lr=args.lr, param=args.param, init=args.init,
                       seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"content loss {r.start_content_loss:.3g} -> {r.content_loss:.3g}, "
          f"style loss {r.start_style_loss:.3g} -> {r.style_loss:.3g} (relative errors)")
    print(f"wrote {args.out}")
    return 0


def cmd_channels(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.models import load_model
    from atlas.tools.channels import channel_view, channels_figure, publish_channel_view, write_channels_html

    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}; use --all to render every channel")
    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    view = channel_view(model, args.photo, args.layer, top=None if args.all else args.top, cache_dir=args.cache_dir,
                        icon_size=args.icon_size, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                        device=args.device, progress=not args.quiet)
    out = args.out or f"{Path(args.photo).stem}-channels-{args.layer}.png"
    channels_figure(view, out, top=args.top)
    top = ", ".join(f"{c} ({view.mean[c]:.3g})" for c in view.order[:5])
    print(f"{args.layer}: top channels by mean activation {top}")
    print(f"{int(view.has_icon.sum())} of {len(view.mean)} channels have icons; cache {view.cache}")
    print(f"wrote {out}")
    if args.html:
        print(f"wrote {write_channels_html(view, args.html, title=f'{Path(args.photo).name}: {args.layer}')}")
    if args.run:
        page = publish_channel_view(view, args.run, args.photo, title=f"{Path(args.photo).name}: {args.layer}")
        print(f"wrote {page}; `atlas serve {args.run}` lists it under Channel views")
    return 0


def cmd_tiles(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.stages.tiles import build_tiles

    cells = _run_file(args.run_dir, args.cells, "cells.h5")
    icons = _run_file(args.run_dir, args.icons, "icons.h5")
    acts = args.activations or (str(Path(args.run_dir) / "activations.h5") if args.run_dir else None)
    if acts and not Path(acts).exists():
        acts = None
    out = args.output or (str(Path(args.run_dir) / "tiles") if args.run_dir else None)
    if out is None:
        raise ValueError("give -o/--output for the tiles folder (or a RUN_DIR)")
    summary = build_tiles(cells, icons, out, activations_path=acts, tile_size=args.tile_size,
                          background=args.background, density_scaling=args.density_scaling,
                          progress=not args.quiet, cell_px=args.cell_px, tile_format=args.format,
                          placeholder=args.placeholder, quality=args.quality,
                          examples_per_cell=args.examples, thumb_size=args.thumb_size, title=args.title,
                          overwrite=args.overwrite)
    print(summary.describe())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from atlas.web.serve import serve

    serve(args.run_dir, host=args.host, port=args.port, open_browser=args.open,
          ready=lambda server: print(f"serving {args.run_dir} at {server.url} (Ctrl-C stops)", flush=True))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from atlas.web.export import export_site

    print(export_site(args.run_dir, args.out_dir, overwrite=args.overwrite).describe())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from atlas.pipeline import run_pipeline

    run_pipeline(args.config, only=args.only, start=args.start, progress=not args.quiet,
                 report=lambda stage, summary: print(f"[{stage}] {summary}"), scheduler=args.scheduler,
                 overwrite=args.overwrite)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from atlas.stages.grid import GridSettings
    from atlas.stages.render.settings import RenderSettings

    p = argparse.ArgumentParser(prog="atlas", description="Activation atlases of image classifiers.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("layers", help="list a model's hookable layers with output shapes")
    s.add_argument("model", nargs="?", default="inceptionv1")
    s.add_argument("--weights", default=None)
    s.add_argument("--random-init", action="store_true",
                   help="skip loading weights (shapes do not depend on them)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--spatial", action="store_true", help="only (C, H, W) layers, the ones collect can use")
    s.set_defaults(func=cmd_layers)

    s = sub.add_parser("collect", help="images -> activations.h5 (activations + class attribution)")
    s.add_argument("source", nargs="+",
                   help="image folder (recursive), text file of paths, .tar shard(s) or glob, or 'imagenette'")
    s.add_argument("-o", "--output", required=True, help="activations.h5 to write")
    _add_model_args(s)
    s.add_argument("--layer", action="append", default=None,
                   help="layer to collect; repeat for several [inception4c]")
    s.add_argument("--sampling", choices=("random", "all"), default="random",
                   help="random positions per image (paper) or all positions [%(default)s]")
    s.add_argument("--positions", type=int, default=1, help="random positions per image [%(default)s]")
    s.add_argument("--edge-margin", type=int, default=1, help="border cells never sampled [%(default)s]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--top-k", type=int, default=10, help="classes kept per row by attribution [%(default)s]")
    s.add_argument("--full-attribution", action="store_true", help="also store all K attributions per row")
    s.add_argument("--no-attribution", action="store_true", help="skip attribution (about 2x faster)")
    s.add_argument("--attribution-classes", type=int, default=0, metavar="N",
                   help="rank only each image's N top-scoring classes plus its label, with one backward pass "
                        "per class for all positions at once (use with --sampling all); 0 ranks every class "
                        "with one forward pass per position [%(default)s]")
    s.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--workers", type=int, default=None, help="decode processes [one per spare core]")
    s.add_argument("--block-size", type=int, default=256, help="images per committed part [%(default)s]")
    s.add_argument("--overwrite", action="store_true",
                   help="discard existing output / partial run (needed when its settings differ)")
    _add_scheduler_arg(s, "one Dask task per block of images; --workers is then decode threads per task")
    s.add_argument("--decode", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where JPEGs are decoded: gpu = in batches on the model's device (torchvision), cpu = PIL "
                        "in the workers; auto = gpu on CUDA, cpu otherwise [%(default)s]")
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="forward and attribution passes under torch.autocast at this precision [%(default)s]")
    s.add_argument("--breakdown", action="store_true",
                   help="also print what the loop waited on: decode, host->device, model, attribution, write")
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser("reduce", help="activations.h5 -> layout.h5 (UMAP to 2-D, normalized to [0, 1])")
    s.add_argument("run_dir", nargs="?", default=None, help="run folder with activations.h5")
    s.add_argument("--activations", default=None)
    s.add_argument("-o", "--output", default=None, help="layout file [RUN_DIR/layout.h5]")
    s.add_argument("--layer", default=None, help="which collected layer [the only one]")
    s.add_argument("--n-neighbors", type=int, default=20)
    s.add_argument("--min-dist", type=float, default=0.01)
    s.add_argument("--metric", default="cosine")
    s.add_argument("--whiten", action="store_true", help="whiten activations before UMAP")
    s.add_argument("--sample-size", type=int, default=100_000, help="rows UMAP is fitted on [%(default)s]")
    s.add_argument("--placement", choices=("refine", "knn", "umap"), default="refine",
                   help="placing the other rows: kNN median refined by 25 epochs of UMAP's optimisation, the kNN median "
                        "alone (fastest), or UMAP.transform (slowest) [%(default)s]")
    s.add_argument("--class", dest="class_filter", default=None, help="class atlas: lay out only this class")
    s.add_argument("--class-top-n", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2, help="parallel placement tasks [%(default)s]")
    s.add_argument("--overwrite", action="store_true")
    _add_scheduler_arg(s, "placement chunks as Dask tasks; the UMAP fit stays here")
    s.set_defaults(func=cmd_reduce)

    s = sub.add_parser("grid", help="activations + layout -> cells.h5 at several zoom levels")
    s.add_argument("run_dir", nargs="?", default=None)
    s.add_argument("--activations", default=None)
    s.add_argument("--layout", default=None)
    s.add_argument("-o", "--output", default=None, help="cells file [RUN_DIR/cells.h5]")
    s.add_argument("--sizes", type=_int_list, default=",".join(map(str, GridSettings.sizes)),
                   help="grid sizes [%(default)s]")
    s.add_argument("--min-count", type=int, default=GridSettings.min_count,
                   help="drop cells with fewer rows [%(default)s]")
    s.add_argument("--top-k", type=int, default=GridSettings.top_k, help="classes kept per cell [%(default)s]")
    s.add_argument("--examples", type=int, default=GridSettings.n_examples, help="dataset examples per cell [%(default)s]")
    s.add_argument("--class", dest="class_filter", default=None, help="class atlas: only this class's rows")
    s.add_argument("--class-top-n", type=int, default=GridSettings.class_top_n)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_grid)

    def subatlas_args(s: argparse.ArgumentParser) -> None:
        _add_model_args(s)
        s.add_argument("--sizes", type=_int_list, default="10,20", help="grid sizes (zoom levels) [%(default)s]")
        s.add_argument("--min-count", type=int, default=4, help="rows a cell needs [%(default)s]")
        s.add_argument("--class-top-n", type=int, default=2000,
                       help="rows kept besides those whose top class is the class [%(default)s]")
        s.add_argument("--icon-size", type=int, default=RenderSettings.icon_size)
        s.add_argument("--steps", type=int, default=128, help="optimisation steps per icon [%(default)s]")
        s.add_argument("--batch-size", type=int, default=RenderSettings.batch_size)
        s.add_argument("--overwrite", action="store_true", help="replace the files made with other settings")

    s = sub.add_parser("classes", help="class atlases: the rows attributed to each class, laid out, rendered, tiled")
    s.add_argument("run_dir", help="a run folder with activations.h5 (collected with attribution)")
    s.add_argument("classes", nargs="+", metavar="CLASS", help="class names, WordNet ids or indices")
    subatlas_args(s)
    s.set_defaults(func=cmd_classes)

    s = sub.add_parser("compare", help="a two-class comparison atlas: x = attribution to A minus B")
    s.add_argument("run_dir", help="a run folder with activations.h5 (collected with attribution)")
    s.add_argument("class_a", metavar="A", help="class drawn on the right")
    s.add_argument("class_b", metavar="B", help="class drawn on the left")
    subatlas_args(s)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("render", help="cells.h5 -> icons.h5: a feature visualization per cell, in batches")
    s.add_argument("run_dir", nargs="?", default=None)
    s.add_argument("--cells", default=None)
    s.add_argument("-o", "--output", default=None, help="icons file [RUN_DIR/icons.h5]")
    _add_model_args(s)
    s.add_argument("--levels", type=_int_list, default=None, help="grid sizes to render, e.g. 20,40 [all]")
    s.add_argument("--icon-size", type=int, default=RenderSettings.icon_size)
    s.add_argument("--steps", type=int, default=RenderSettings.steps,
                   help="optimizer steps of an icon started from noise: the coarsest level, or every level with "
                        "--start cold (paper: 1024) [%(default)s]")
    s.add_argument("--attempts", type=int, default=RenderSettings.attempts,
                   help="best of k attempts (paper: 4) [%(default)s]")
    s.add_argument("--batch-size", type=int, default=RenderSettings.batch_size,
                   help="cells optimized together; on a GPU try 128-256 [%(default)s]")
    s.add_argument("--lr", type=float, default=RenderSettings.lr, help="Adam learning rate of the icons [%(default)s]")
    s.add_argument("--cossim-pow", type=float, default=RenderSettings.cossim_pow)
    s.add_argument("--icon-view", choices=("whole", "wide", "notebooks"), default=RenderSettings.icon_view,
                   help="what the model sees of an icon each step: the whole icon (78 px), a 62 px window (wide), "
                        "or the paper notebooks' 50 px window (about 2.1x faster on a CPU, pale borders) [%(default)s]")
    s.add_argument("--whiten", action="store_true",
                   help="whiten directions by the activations' inverse covariance (paper's option)")
    s.add_argument("--seed", type=int, default=RenderSettings.seed)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=RenderSettings.precision,
                   help="model passes of the optimization under torch.autocast at this precision [%(default)s]")
    s.add_argument("--objective", choices=("mean", "center"), default=RenderSettings.objective,
                   help="the direction objective on the layer's activation averaged over the icon (mean) or at its "
                        "center position only, as the paper notebooks (center) [%(default)s]")
    s.add_argument("--border-prior", type=float, default=RenderSettings.border_prior,
                   help="weight of the frame prior that pulls each icon's outer 5 px to a smooth gray, relative to "
                        "the objective (0: none) [%(default)s]")
    s.add_argument("--start", choices=("cold", "parent"), default=RenderSettings.start,
                   help="cold: every cell from noise with --steps; parent: render the levels coarse to fine, every "
                        "cell of a finer level starting from its parent cell's icon with --refine-steps steps (the "
                        "coarsest level from noise with --steps): about 8x faster a cell, but the cells under one "
                        "coarse cell then share its picture [%(default)s]")
    s.add_argument("--refine-steps", type=int, default=RenderSettings.refine_steps,
                   help="steps of a cell that starts from its parent's icon (--start parent) [%(default)s]")
    s.add_argument("--refine-lr", type=float, default=RenderSettings.refine_lr,
                   help="Adam learning rate of those steps [%(default)s]")
    s.add_argument("--compile", action="store_true",
                   help="run the network under torch.compile (falls back to eager, with a warning, if it fails)")
    _add_scheduler_arg(s, "one Dask task per batch of cells, each worker on its own device")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("vis", help="one feature visualization: channel, neuron, class logit, DeepDream ...")
    s.add_argument("objective", help="e.g. inception4c:447 (channel), neuron:inception4c:447, logit:snorkel, layer:inception4c (DeepDream), "
                                     "channel:inception4c:97 + 100*diversity:inception4c (with --batch 4)")
    _add_model_args(s)
    s.add_argument("-o", "--out", default=None, help="PNG to write [from the objective]")
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--steps", type=int, default=512)
    s.add_argument("--batch", type=int, default=1, help="images at once (with diversity) [%(default)s]")
    s.add_argument("--param", choices=("fft", "pixel", "maco"), default="fft",
                   help="parameterization: decorrelated FFT, pixels, or MACO (natural magnitude, optimized phase) "
                        "[%(default)s]")
    s.add_argument("--image", default=None, help="start from this photo (DeepDream)")
    s.add_argument("--no-transforms", action="store_true", help="no transformation robustness")
    s.add_argument("--lr", type=float, default=None, help="Adam learning rate [fft, pixel: 0.05; maco: 0.25]")
    s.add_argument("--input-size", type=int, default=None,
                   help="side the model sees the image at [the model's input size, 224]; 0 = as rendered")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_vis)

    s = sub.add_parser("dream", help="DeepDream a photo: amplify a layer's (or a channel's) activations, by octaves")
    s.add_argument("photo", help="the photo to start from (output has its size)")
    _add_model_args(s)
    s.add_argument("--layer", default="inception4c", help="layer to amplify (its squared activations) [%(default)s]")
    s.add_argument("--channel", type=int, default=None, help="amplify only this channel's mean activation")
    s.add_argument("-o", "--out", default=None, help="PNG to write [PHOTO-dream-LAYER.png]")
    s.add_argument("--octaves", type=int, default=4, help="scales, smallest first [%(default)s]")
    s.add_argument("--octave-scale", type=float, default=1.4, help="size ratio between octaves [%(default)s]")
    s.add_argument("--steps", type=int, default=10, help="gradient steps per octave [%(default)s]")
    s.add_argument("--jitter", type=int, default=32, help="largest random roll in pixels per step [%(default)s]")
    s.add_argument("--lr", type=float, default=None, help="normalized step size [0.02]")
    s.add_argument("--param", choices=("pixel", "decorrelated", "fft"), default="pixel",
                   help="parameterization the photo is held in [%(default)s]")
    s.add_argument("--max-side", type=int, default=None, help="shrink the photo to this longer side first")
    s.add_argument("--seed", type=int, default=0, help="seed of the jitter [%(default)s]")
    s.set_defaults(func=cmd_dream)

    s = sub.add_parser("style", help="style transfer: CONTENT painted with STYLE's Gram matrices (Gatys et al.)")
    s.add_argument("content", help="content photo")
    s.add_argument("style", help="style image (e.g. a strongly textured photo)")
    s.add_argument("-o", "--out", default="style.png", help="PNG to write [%(default)s]")
    _add_model_args(s)
    s.add_argument("--content-layer", default="inception3b", help="[%(default)s]")
    s.add_argument("--style-layers", default="conv3_relu,inception3a,inception3b,inception4a,inception4b,inception4c",
                   help="comma-separated [%(default)s]")
    s.add_argument("--style-weight", type=float, default=10.0, help="[%(default)s]")
    s.add_argument("--content-weight", type=float, default=1.0, help="[%(default)s]")
    s.add_argument("--size", type=int, default=256, help="longer side of both photos; 0 keeps them [%(default)s]")
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--lr", type=float, default=0.05)
    s.add_argument("--param", choices=("fft", "pixel"), default="fft")
    s.add_argument("--init", choices=("content", "noise"), default="content", help="start image [%(default)s]")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_style)

    s = sub.add_parser("channels", help="one photo, every channel of a layer: activation map beside feature vis")
    s.add_argument("photo", help="the photo (resized and center-cropped as the model's input)")
    _add_model_args(s)
    s.add_argument("--layer", default="inception4c", help="[%(default)s]")
    s.add_argument("--top", type=int, default=16, help="channels in the figure, by mean activation; their icons "
                                                       "are rendered if not cached [%(default)s]")
    s.add_argument("--all", action="store_true", help="render (cache) every channel's icon, e.g. for --html")
    s.add_argument("-o", "--out", default=None, help="figure PNG [PHOTO-channels-LAYER.png]")
    s.add_argument("--html", default=None, metavar="DIR", help="also write a static page of every channel to DIR")
    s.add_argument("--run", default=None, metavar="RUN",
                   help="also put the page into RUN's tiles: the atlas viewer (atlas serve RUN) lists it")
    s.add_argument("--cache-dir", default=None,
                   help="channel icon cache [$ATLAS_CACHE_DIR/channels or ~/.cache/atlas/channels]")
    s.add_argument("--icon-size", type=int, default=64, help="[%(default)s]")
    s.add_argument("--steps", type=int, default=96, help="optimizer steps per icon [%(default)s]")
    s.add_argument("--batch-size", type=int, default=32, help="channels per optimizer batch [%(default)s]")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_channels)

    s = sub.add_parser("tiles", help="cells.h5 + icons.h5 -> zoomable tile pyramid + metadata")
    s.add_argument("run_dir", nargs="?", default=None, help="run folder with cells.h5, icons.h5, activations.h5")
    s.add_argument("--cells", default=None)
    s.add_argument("--icons", default=None)
    s.add_argument("--activations", default=None, help="for dataset-example thumbnails [RUN_DIR/activations.h5]")
    s.add_argument("-o", "--output", default=None, help="tiles folder [RUN_DIR/tiles]")
    s.add_argument("--tile-size", type=int, default=256)
    s.add_argument("--cell-px", type=int, default=None, help="pixels per cell at its native zoom [icon size]")
    s.add_argument("--format", choices=("jpeg", "png", "webp"), default="jpeg")
    s.add_argument("--quality", type=int, default=88)
    s.add_argument("--background", default="#f4f3ef")
    s.add_argument("--placeholder", default="#d9d7d0", help="color of cells not rendered yet")
    s.add_argument("--density-scaling", action="store_true", help="scale icons by cell density")
    s.add_argument("--examples", type=int, default=8, help="dataset examples per cell [%(default)s]")
    s.add_argument("--thumb-size", type=int, default=64)
    s.add_argument("--title", default=None)
    s.add_argument("--overwrite", action="store_true", help="redraw a pyramid drawn with other settings")
    s.set_defaults(func=cmd_tiles)

    s = sub.add_parser("serve", help="browse atlases in a web browser (read-only HTTP server)")
    s.add_argument("run_dir", help="a run folder, its tiles folder, or a folder of runs")
    s.add_argument("--host", default="127.0.0.1", help="bind address; 0.0.0.0 only when you mean it [%(default)s]")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--open", action="store_true", help="open the page in a browser")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("export", help="the atlas as a static site (viewer, tiles, data) for any static file host")
    s.add_argument("run_dir", help="a run folder, its tiles folder, or a folder of runs")
    s.add_argument("out_dir", help="folder to write the site into (new or empty)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("explain", help="attribution maps of one photo (or --evaluate a folder)")
    s.add_argument("photo", help="a photo; with --evaluate a folder / list of photos")
    _add_model_args(s)
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

    s = sub.add_parser("attack", help="patch attack from atlas neighbourhoods: source class -> target class")
    s.add_argument("run_dir", metavar="RUN_DIR", help="an atlas run folder (activations.h5, layout.h5, cells.h5)")
    s.add_argument("--source", required=True, help="class of the photos to attack, e.g. snorkel")
    s.add_argument("--target", required=True, help="class the patch should turn them into, e.g. 'scuba diver'")
    _add_model_args(s)
    s.add_argument("--images", default=None, help="photos of the source class [those in the atlas's source]")
    s.add_argument("--target-images", default=None, help="photos of the target class [those in the atlas's source]")
    s.add_argument("--universal", default=None, metavar="DIR",
                   help="also paste the patches over these photos of many classes (flip-to-target rate)")
    s.add_argument("--universal-limit", type=int, default=None, help="use at most this many universal photos")
    s.add_argument("--level", type=int, default=None, help="grid size to take cells from [middle size]")
    s.add_argument("--candidates", type=int, default=4, help="atlas cells to try [%(default)s]")
    s.add_argument("--random-cells", type=int, default=4, help="random cells for the baseline [%(default)s]")
    s.add_argument("--noise-patches", type=int, default=4, help="noise patches for the baseline [%(default)s]")
    s.add_argument("--patch", choices=("optvis", "icon"), default="optvis",
                   help="fresh feature visualization at patch size, or the cell's rendered icon [%(default)s]")
    s.add_argument("--patch-px", type=int, default=112, help="rendered patch side in pixels [%(default)s]")
    s.add_argument("--steps", type=int, default=256, help="optimization steps per patch [%(default)s]")
    s.add_argument("--sizes", type=_float_list, default="0.2,0.3,0.4,0.5", help="patch sizes, fractions of the width [%(default)s]")
    s.add_argument("--corner", default="br", choices=("tl", "tr", "bl", "br"), help="static corner [%(default)s]")
    s.add_argument("--augment", type=int, default=24, help="views per source photo when there are few [%(default)s]")
    s.add_argument("--selection-fraction", type=float, default=0.5,
                   help="share of the source views each family's patch is chosen on; the rest measure it "
                        "[%(default)s]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", default=None, help="report folder [RUN_DIR/attacks/SOURCE-to-TARGET]")
    s.set_defaults(func=cmd_attack)

    s = sub.add_parser("adversarial", help="adversarial examples (FGSM, PGD): success rate and smallest budget")
    s.add_argument("photos", nargs="+", metavar="PHOTO", help="photo files and/or folders of photos")
    _add_model_args(s)
    s.add_argument("--target", default=None,
                   help="class name, WordNet id or index; 'random' = one random class per photo (seeded); "
                        "omit for an untargeted attack (away from the clean top-1)")
    s.add_argument("--norm", choices=("linf", "l2"), default="linf")
    s.add_argument("--eps", type=_float_list, default="0.25,0.5,1,2,4",
                   help="budgets, comma-separated: linf in 0..255 pixel units (4 = 4/255 of the range per value), "
                        "l2 as the Euclidean norm of the perturbation in 0..1 units, e.g. 0.1,0.5,1 [%(default)s]")
    s.add_argument("--method", choices=("fgsm", "pgd"), default="pgd")
    s.add_argument("--steps", type=int, default=10, help="PGD steps [%(default)s]")
    s.add_argument("--random-start", action="store_true", help="PGD starts at a random point of the budget")
    s.add_argument("--limit", type=int, default=None, help="attack this many photos, spread evenly over the list")
    s.add_argument("--run", default=None, metavar="RUN_DIR",
                   help="atlas run: the figures show where the photo and its adversarial image land on it")
    s.add_argument("--figures", type=int, default=8, help="figures for the first N photos (-1: all) [%(default)s]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", default="adversarial", help="report folder [%(default)s]")
    s.set_defaults(func=cmd_adversarial)

    s = sub.add_parser("fool", help="fooling images: noise optimized until the model is >= 99%% sure of a class")
    s.add_argument("--classes", required=True, help="comma-separated class names, WordNet ids or indices")
    _add_model_args(s)
    s.add_argument("--priors", choices=("both", "on", "off"), default="both",
                   help="on: FFT parameterization + transforms; off: raw pixels, no transforms [%(default)s]")
    s.add_argument("--size", type=int, default=None, help="image side [the model's input size]")
    s.add_argument("--steps", type=int, default=256)
    s.add_argument("--lr", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", default="fooling.png", help="gallery PNG [%(default)s]")
    s.set_defaults(func=cmd_fool)

    s = sub.add_parser("run", help="run a pipeline config (TOML): every stage in order, resumable")
    s.add_argument("config")
    s.add_argument("--only", default=None, help="run just this stage (not with --from)")
    s.add_argument("--from", dest="start", default=None, help="start at this stage, run the ones after it too")
    _add_scheduler_arg(s, "collect and reduce on Dask; replaces the config's [run] scheduler")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the output of a stage whose settings changed (the later stages follow); "
                        "without it such a stage stops the run and names the changes")
    s.set_defaults(func=cmd_run)
    for command in sub.choices.values():
        command.set_defaults(command_parser=command)  # main() names the options of bad settings
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2) if not args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    except SettingError as e:  # a bad value: named as the option that set it, where there is one
        option = _option_for(args.command_parser, e.key)
        print(f"atlas {args.command}: error: {f'{option} {e.reason}' if option else e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:  # user errors: bad paths, names, configs -- the message says the fix
        print(f"atlas {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
