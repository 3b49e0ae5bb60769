"""``atlas align``: an aligned atlas of a run, two layers (or two models) of the same inputs on one map."""

from __future__ import annotations

import argparse

from atlas.cli.common import float_list, int_list

_DESCRIPTION = """\
Lay out two sets of activations of the same inputs on one map, so that the same place on both
means the same photos at the same positions (Lucid's aligned activation atlas): two layers of the
run's model whose grids have the same shape (e.g. inception4a and inception4e), or one layer of the
run's model and of another (e.g. the same network with --b-random-init). Linear maps are fitted
each way by least squares (held-out R^2 in RUN/aligned/NAME/fit.json), one UMAP is fitted on the
joint vectors of both sides, and each side is gridded, rendered and tiled as an atlas of its own
(RUN/aligned/NAME/a/tiles, .../b/tiles), each naming the other. A side the run's activations.h5
cannot serve (another model, other or random weights, a layer the run did not collect) is
collected into its folder with the run's collect settings. Rerunning skips what is done."""


def add_align(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas align`` to ``sub``."""
    from atlas.stages.aligned import AlignedSettings as A

    s = sub.add_parser("align", help="an aligned atlas: two layers or two models of the same inputs on one map",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("run_dir", metavar="RUN", help="a run folder with activations.h5")
    s.add_argument("--name", required=True, help="the aligned atlas's name; it is built in RUN/aligned/NAME")
    for key, what in (("a", "required"), ("b", "default: side a's")):
        g = s.add_argument_group(f"side {key}")
        g.add_argument(f"--{key}-layer", required=key == "a", default="", metavar="LAYER",
                       help=f"the layer of side {key} ({what})")
        g.add_argument(f"--{key}-model", default="", metavar="MODEL",
                       help="inceptionv1 or torchvision:NAME [the run's model]")
        g.add_argument(f"--{key}-random-init", action="store_true",
                       help="random (seeded) weights: the untrained network")
        g.add_argument(f"--{key}-weights", default="", metavar="PATH", help="a weight file [the model's default]")
    g = s.add_argument_group("the run's model")
    g.add_argument("--weights", default=None, metavar="PATH",
                   help="weight file of the run's model, for the sides that show it (InceptionV1: also "
                        "$ATLAS_INCEPTIONV1_WEIGHTS); its name and random_init are read from RUN/activations.h5")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 [%(default)s]")
    g = s.add_argument_group("linear maps and joint layout")
    g.add_argument("--holdout", type=float, default=A.holdout,
                   help="share of the photos held out of the maps' fit to score them [%(default)s]")
    g.add_argument("--ridge", type=float_list, default=A.ridge, metavar="R[,R...]",
                   help="candidate ridge terms, relative to the mean channel variance: each direction takes the one "
                        "that predicts validation photos best; one value: that ridge [" +
                        ",".join(f"{r:g}" for r in A.ridge) + "]")
    g.add_argument("--layout", choices=("joint", "mapped"), default=A.layout,
                   help="joint: each row laid out once by both sides' activations side by side, both maps at that "
                        "place; mapped: Lucid's, each side's rows with the other side predicted by the linear maps, "
                        "stacked [%(default)s]")
    g.add_argument("--no-balance", dest="balance", action="store_false",
                   help="do not scale the two activation spaces to the same mean row length (Lucid's joint vectors)")
    g.add_argument("--seed", type=int, default=A.seed, help="seeds the held-out photos and UMAP [%(default)s]")
    g.add_argument("--n-neighbors", type=int, default=A.n_neighbors, help="UMAP neighbours [%(default)s]")
    g.add_argument("--min-dist", type=float, default=A.min_dist, help="UMAP min_dist [%(default)s]")
    g.add_argument("--metric", default=A.metric, help="UMAP metric [%(default)s]")
    g.add_argument("--sample-size", type=int, default=A.sample_size,
                   help="rows of both sides UMAP is fitted on; the rest are placed [%(default)s]")
    g.add_argument("--refine-epochs", type=int, default=A.refine_epochs,
                   help="epochs of UMAP's optimisation of each placed row [%(default)s]")
    g = s.add_argument_group("each side's atlas")
    g.add_argument("--sizes", type=int_list, default=A.sizes, help="grid sizes (zoom levels) [10,20]")
    g.add_argument("--min-count", type=int, default=A.min_count, help="rows a cell needs [%(default)s]")
    g.add_argument("--icon-size", type=int, default=A.icon_size, help="icon side in pixels [%(default)s]")
    g.add_argument("--steps", type=int, default=A.steps, help="optimisation steps per icon [%(default)s]")
    g.add_argument("--batch-size", type=int, default=A.batch_size, help="icons optimised together [%(default)s]")
    g.add_argument("--lr", type=float, default=A.lr, help="the icons' learning rate [%(default)s]")
    g.add_argument("--objective", choices=("mean", "center"), default=A.objective,
                   help="where the icon objective reads the layer [%(default)s]")
    g.add_argument("--icon-view", choices=("whole", "wide", "notebooks"), default=A.icon_view,
                   help="what the model sees of an icon [%(default)s]")
    g = s.add_argument_group("collecting a side (when the run's activations cannot serve it)")
    g.add_argument("--source", default=None, help="the photos [the run's, as recorded in RUN/activations.h5]")
    g.add_argument("--collect-batch-size", type=int, default=32, help="images per forward pass [%(default)s]")
    g.add_argument("--workers", type=int, default=None, help="decode processes [one per spare core]")
    s.add_argument("--overwrite", action="store_true", help="replace the files made with other settings")
    s.set_defaults(func=cmd_align)


def cmd_align(args: argparse.Namespace) -> int:
    from atlas.stages.aligned import AlignedSettings, aligned_atlas

    sides = {key: {"layer": getattr(args, f"{key}_layer"), "model": getattr(args, f"{key}_model"),
                   "random_init": getattr(args, f"{key}_random_init"), "weights": getattr(args, f"{key}_weights")}
             for key in ("a", "b")}
    settings = AlignedSettings(
        name=args.name, a=sides["a"], b=sides["b"], holdout=args.holdout, ridge=args.ridge, layout=args.layout,
        balance=args.balance,
        seed=args.seed, n_neighbors=args.n_neighbors, min_dist=args.min_dist, metric=args.metric,
        sample_size=args.sample_size,
        refine_epochs=args.refine_epochs, sizes=args.sizes, min_count=args.min_count, icon_size=args.icon_size,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, objective=args.objective, icon_view=args.icon_view)
    summary = aligned_atlas(args.run_dir, settings, weights=args.weights, device=args.device, progress=not args.quiet,
                            overwrite=args.overwrite, source=args.source, batch_size=args.collect_batch_size,
                            workers=args.workers)
    print(summary.describe())
    where = f"{summary.folder.parent.name}/{summary.folder.name}"
    print(f"fit: {summary.folder / 'fit.json'}; browse it with: atlas serve {args.run_dir}  (the atlas picker lists "
          f"{where}/a/tiles and {where}/b/tiles)")
    return 0
