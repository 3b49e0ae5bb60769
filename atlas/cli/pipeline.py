"""The pipeline's stages one command each (collect, reduce, grid, render, tiles) and ``atlas run``,
which runs them in order from a config."""

from __future__ import annotations

import argparse

from atlas.cli.common import add_model_args, add_scheduler_arg, int_list, run_file


def add_collect(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas collect`` to ``sub``."""
    s = sub.add_parser("collect", help="images -> activations.h5 (activations + class attribution)")
    s.add_argument("source", nargs="+",
                   help="image folder (recursive), text file of paths, .tar shard(s) or glob, or 'imagenette'")
    s.add_argument("-o", "--output", required=True, help="activations.h5 to write")
    add_model_args(s)
    s.add_argument("--layer", action="append", default=None,
                   help="layer to collect; repeat for several [inception4c]")
    s.add_argument("--sampling", choices=("random", "all", "shared"), default="random",
                   help="random positions per image (paper), all positions, or shared: the same random places "
                        "of each photo in every layer, drawn on the coarsest layer's grid [%(default)s]")
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
    add_scheduler_arg(s, "one Dask task per block of images; --workers is then decode threads per task")
    s.add_argument("--decode", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where JPEGs are decoded: gpu = in batches on the model's device (TorchCodec, nvJPEG), cpu = PIL "
                        "in the workers; auto = gpu on CUDA, cpu otherwise [%(default)s]")
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="forward and attribution passes under torch.autocast at this precision [%(default)s]")
    s.add_argument("--breakdown", action="store_true",
                   help="also print what the loop waited on: decode, host->device, model, attribution, write")
    s.set_defaults(func=cmd_collect)


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


def add_reduce(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas reduce`` to ``sub``."""
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
    add_scheduler_arg(s, "placement chunks as Dask tasks; the UMAP fit stays here")
    s.set_defaults(func=cmd_reduce)


def cmd_reduce(args: argparse.Namespace) -> int:
    from atlas.stages.reduce import ReduceSettings, reduce_file

    settings = ReduceSettings(
        n_neighbors=args.n_neighbors, min_dist=args.min_dist, metric=args.metric, whiten=args.whiten,
        sample_size=args.sample_size, placement=args.placement, random_state=args.seed,
        class_filter=args.class_filter, class_top_n=args.class_top_n, n_workers=args.workers,
    )
    acts = run_file(args.run_dir, args.activations, "activations.h5")
    out = run_file(args.run_dir, args.output, "layout.h5")
    summary = reduce_file(acts, out, settings, layer=args.layer, progress=not args.quiet, overwrite=args.overwrite,
                          scheduler=args.scheduler)
    print(summary.describe())
    return 0


def add_grid(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas grid`` to ``sub``."""
    from atlas.stages.grid import GridSettings

    s = sub.add_parser("grid", help="activations + layout -> cells.h5 at several zoom levels")
    s.add_argument("run_dir", nargs="?", default=None)
    s.add_argument("--activations", default=None)
    s.add_argument("--layout", default=None)
    s.add_argument("-o", "--output", default=None, help="cells file [RUN_DIR/cells.h5]")
    s.add_argument("--sizes", type=int_list, default=",".join(map(str, GridSettings.sizes)),
                   help="grid sizes [%(default)s]")
    s.add_argument("--min-count", type=int, default=GridSettings.min_count,
                   help="drop cells with fewer rows [%(default)s]")
    s.add_argument("--top-k", type=int, default=GridSettings.top_k, help="classes kept per cell [%(default)s]")
    s.add_argument("--examples", type=int, default=GridSettings.n_examples, help="dataset examples per cell [%(default)s]")
    s.add_argument("--class", dest="class_filter", default=None, help="class atlas: only this class's rows")
    s.add_argument("--class-top-n", type=int, default=GridSettings.class_top_n)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_grid)


def cmd_grid(args: argparse.Namespace) -> int:
    from atlas.stages.grid import GridSettings, grid_file

    settings = GridSettings(sizes=args.sizes, min_count=args.min_count,
                            top_k=args.top_k, n_examples=args.examples, class_filter=args.class_filter,
                            class_top_n=args.class_top_n)
    acts = run_file(args.run_dir, args.activations, "activations.h5")
    layout = run_file(args.run_dir, args.layout, "layout.h5")
    out = run_file(args.run_dir, args.output, "cells.h5")
    summary = grid_file(acts, layout, out, settings, progress=not args.quiet, overwrite=args.overwrite)
    print(summary.describe())
    return 0


def add_render(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas render`` to ``sub``."""
    from atlas.stages.render.settings import ICON_VIEWS, RENDER_STARTS, RenderSettings

    s = sub.add_parser("render", help="cells.h5 -> icons.h5: a feature visualization per cell, in batches")
    s.add_argument("run_dir", nargs="?", default=None)
    s.add_argument("--cells", default=None)
    s.add_argument("-o", "--output", default=None, help="icons file [RUN_DIR/icons.h5]")
    add_model_args(s)
    s.add_argument("--levels", type=int_list, default=None, help="grid sizes to render, e.g. 20,40 [all]")
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
    s.add_argument("--icon-view", choices=tuple(ICON_VIEWS), default=RenderSettings.icon_view,
                   help="what the model sees of an icon each step: the whole icon (78 px), a 62 px window (wide), "
                        "the paper notebooks' 50 px window (about 2.1x faster on a CPU, pale borders), or "
                        "much stronger jitter, zoom and rotation for vision transformers (transformer) [%(default)s]")
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
    s.add_argument("--start", choices=RENDER_STARTS, default=RenderSettings.start,
                   help="auto: amortised for 1000 cells or more, else cold (a render already in the file keeps its "
                        "start); cold: every cell from noise with --steps; amortised: train one network on all the cells' "
                        "directions (--amortise-steps), then every cell from its own predicted icon with "
                        "--refine-steps steps; parent: render the levels coarse to fine, every cell of a finer level "
                        "starting from its parent cell's icon with --refine-steps steps (the cells under one coarse "
                        "cell then share its picture) [%(default)s]")
    s.add_argument("--refine-steps", type=int, default=RenderSettings.refine_steps,
                   help="steps of a cell that starts from a predicted or parent icon (--start amortised / parent) "
                        "[%(default)s]")
    s.add_argument("--refine-lr", type=float, default=RenderSettings.refine_lr,
                   help="Adam learning rate of those steps [%(default)s]")
    s.add_argument("--amortise-steps", type=int, default=RenderSettings.amortise_steps,
                   help="training steps of the amortised start's network, paid once a render [%(default)s]")
    s.add_argument("--amortise-lr", type=float, default=RenderSettings.amortise_lr,
                   help="Adam learning rate of that training [%(default)s]")
    s.add_argument("--amortise-shift", action=argparse.BooleanOptionalAction, default=RenderSettings.amortise_shift,
                   help="move each cell's predicted icon by its own cyclic shift, so that neighbouring cells start "
                        "from different layouts [%(default)s]")
    s.add_argument("--compile", action="store_true",
                   help="run the network under torch.compile (falls back to eager, with a warning, if it fails)")
    add_scheduler_arg(s, "one Dask task per batch of cells, each worker on its own device")
    s.set_defaults(func=cmd_render)


def cmd_render(args: argparse.Namespace) -> int:
    from atlas.models import load_model
    from atlas.stages.render import render_cells

    cells = run_file(args.run_dir, args.cells, "cells.h5")
    out = run_file(args.run_dir, args.output, "icons.h5")
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
                           amortise_steps=args.amortise_steps, amortise_lr=args.amortise_lr,
                           amortise_shift=args.amortise_shift, compile=args.compile, scheduler=args.scheduler)
    print(summary.describe())
    return 0


def add_tiles(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas tiles`` to ``sub``."""
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


def cmd_tiles(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.stages.tiles import build_tiles

    cells = run_file(args.run_dir, args.cells, "cells.h5")
    icons = run_file(args.run_dir, args.icons, "icons.h5")
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


def add_run(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas run`` to ``sub``."""
    s = sub.add_parser("run", help="run a pipeline config (TOML): every stage in order, resumable")
    s.add_argument("config")
    s.add_argument("--only", default=None, help="run just this stage (not with --from)")
    s.add_argument("--from", dest="start", default=None, help="start at this stage, run the ones after it too")
    add_scheduler_arg(s, "collect and reduce on Dask; replaces the config's [run] scheduler")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the output of a stage whose settings changed (the later stages follow); "
                        "without it such a stage stops the run and names the changes")
    s.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from atlas.pipeline import run_pipeline

    run_pipeline(args.config, only=args.only, start=args.start, progress=not args.quiet,
                 report=lambda stage, summary: print(f"[{stage}] {summary}"), scheduler=args.scheduler,
                 overwrite=args.overwrite)
    return 0
