"""Sub-atlases of a run: ``atlas classes`` (one class's rows) and ``atlas compare`` (two classes)."""

from __future__ import annotations

import argparse

from atlas.cli.common import add_model_args, int_list


def _subatlas_args(s: argparse.ArgumentParser) -> None:
    from atlas.stages.render.settings import RenderSettings

    add_model_args(s)
    s.add_argument("--sizes", type=int_list, default="10,20", help="grid sizes (zoom levels) [%(default)s]")
    s.add_argument("--min-count", type=int, default=4, help="rows a cell needs [%(default)s]")
    s.add_argument("--class-top-n", type=int, default=2000,
                   help="rows kept besides those whose top class is the class [%(default)s]")
    s.add_argument("--icon-size", type=int, default=RenderSettings.icon_size)
    s.add_argument("--steps", type=int, default=128, help="optimisation steps per icon [%(default)s]")
    s.add_argument("--batch-size", type=int, default=RenderSettings.batch_size)
    s.add_argument("--overwrite", action="store_true", help="replace the files made with other settings")


def _subatlas_settings(args: argparse.Namespace):
    from atlas.stages.classes import SubAtlasSettings

    return SubAtlasSettings(sizes=args.sizes, min_count=args.min_count,
                            class_top_n=args.class_top_n, icon_size=args.icon_size, steps=args.steps,
                            batch_size=args.batch_size)


def add_classes(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas classes`` to ``sub``."""
    s = sub.add_parser("classes", help="class atlases: the rows attributed to each class, laid out, rendered, tiled")
    s.add_argument("run_dir", help="a run folder with activations.h5 (collected with attribution)")
    s.add_argument("classes", nargs="+", metavar="CLASS", help="class names, WordNet ids or indices")
    _subatlas_args(s)
    s.set_defaults(func=cmd_classes)


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


def add_compare(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas compare`` to ``sub``."""
    s = sub.add_parser("compare", help="a two-class comparison atlas: x = attribution to A minus B")
    s.add_argument("run_dir", help="a run folder with activations.h5 (collected with attribution)")
    s.add_argument("class_a", metavar="A", help="class drawn on the right")
    s.add_argument("class_b", metavar="B", help="class drawn on the left")
    _subatlas_args(s)
    s.set_defaults(func=cmd_compare)


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
