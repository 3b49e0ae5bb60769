"""Attacks on the model: a patch from atlas neighbourhoods (``attack``), FGSM/PGD examples
(``adversarial``) and fooling images (``fool``)."""

from __future__ import annotations

import argparse

from atlas.cli.common import add_model_args, float_list


def add_attack(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas attack`` to ``sub``."""
    s = sub.add_parser("attack", help="patch attack from atlas neighbourhoods: source class -> target class")
    s.add_argument("run_dir", metavar="RUN_DIR", help="an atlas run folder (activations.h5, layout.h5, cells.h5)")
    s.add_argument("--source", required=True, help="class of the photos to attack, e.g. snorkel")
    s.add_argument("--target", required=True, help="class the patch should turn them into, e.g. 'scuba diver'")
    add_model_args(s)
    s.add_argument("--images", default=None, help="photos of the source class [those in the atlas's source]")
    s.add_argument("--target-images", default=None, help="photos of the target class [those in the atlas's source]")
    s.add_argument("--universal", default=None, metavar="DIR",
                   help="also paste the patches over these photos of many classes (flip-to-target rate)")
    s.add_argument("--universal-limit", type=int, default=None, help="use at most this many universal photos")
    s.add_argument("--level", type=int, default=None, help="grid size to take cells from [middle size]")
    s.add_argument("--protocol", choices=("best", "article"), default="best",
                   help="best: each family's best patch chosen on some views, measured on the rest; article: the "
                        "Activation Atlas article's protocol (ten patches per family, every photo x patch counted, "
                        "dynamic and static placement, bootstrap intervals) [%(default)s]")
    s.add_argument("--kind", choices=("target", "third", "both"), default=None,
                   help="neighbourhoods that become patches: the comparison atlas's best cells (target: they "
                        "depict the target), cells of a third class that push toward the target (third), or both "
                        "side by side (article protocol only) [target; article: both]")
    s.add_argument("--patches", type=int, default=10, help="article protocol: patches per family [%(default)s]")
    s.add_argument("--rank", choices=("auto", "push", "attribution"), default=None,
                   help="article protocol, third kind: rank the cells by the push of their direction on the "
                        "selection photos (gradient), or by their atlas rows' own attribution to the target minus "
                        "the source (the article's comparison atlas over every photo) [auto: attribution where "
                        "the atlas was collected with it, else push]")
    s.add_argument("--screen", type=int, default=0,
                   help="article protocol, third kind: render this many of the best-ranked cells and keep the "
                        "--patches that flip most selection photos (0: the first --patches as ranked) [%(default)s]")
    s.add_argument("--controls", type=int, default=10,
                   help="article protocol: noise patches and random-cell patches [%(default)s]")
    s.add_argument("--max-photos", type=int, default=None,
                   help="article protocol: use at most this many source photos, evenly spaced [all]")
    s.add_argument("--candidates", type=int, default=4, help="atlas cells to try [%(default)s]")
    s.add_argument("--random-cells", type=int, default=4, help="random cells for the baseline [%(default)s]")
    s.add_argument("--noise-patches", type=int, default=4, help="noise patches for the baseline [%(default)s]")
    s.add_argument("--patch", choices=("optvis", "icon"), default="optvis",
                   help="fresh feature visualization at patch size, or the cell's rendered icon [%(default)s]")
    s.add_argument("--patch-px", type=int, default=112, help="rendered patch side in pixels [%(default)s]")
    s.add_argument("--steps", type=int, default=256, help="optimization steps per patch [%(default)s]")
    s.add_argument("--sizes", type=float_list, default="0.2,0.3,0.4,0.5", help="patch sizes, fractions of the width [%(default)s]")
    s.add_argument("--corner", default="br", choices=("tl", "tr", "bl", "br"), help="static corner [%(default)s]")
    s.add_argument("--augment", type=int, default=24, help="views per source photo when there are few [%(default)s]")
    s.add_argument("--selection-fraction", type=float, default=None,
                   help="share of the source views each family's patch is chosen on (article: the photos that "
                        "rank the candidates and pick the static placement); the rest measure it [0.5; article: 0.25]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", default=None, help="report folder [RUN_DIR/attacks/SOURCE-to-TARGET]")
    s.set_defaults(func=cmd_attack)


def cmd_attack(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.models import load_model
    from atlas.tools.attack import AttackSettings, run_attack

    if args.protocol == "article":
        return _cmd_attack_article(args)
    if args.kind == "both":
        raise SystemExit("atlas attack: error: --kind both needs --protocol article (the best-of protocol "
                         "reports one kind; run it once with --kind target and once with --kind third)")
    settings = AttackSettings(
        source=args.source, target=args.target, level=args.level, candidates=args.candidates,
        random_cells=args.random_cells, noise_patches=args.noise_patches, patch=args.patch, patch_px=args.patch_px,
        steps=args.steps, sizes=args.sizes, static_corner=args.corner,
        augment=args.augment, seed=args.seed, universal_limit=args.universal_limit,
        selection_fraction=0.5 if args.selection_fraction is None else args.selection_fraction,
        kind=args.kind or "target",
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


def _cmd_attack_article(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atlas.models import load_model
    from atlas.tools.attack import ProtocolSettings, run_protocol

    settings = ProtocolSettings(
        source=args.source, target=args.target, kind=args.kind or "both", level=args.level, patches=args.patches,
        controls=args.controls, **({"rank": args.rank} if args.rank else {}), screen=args.screen, patch_px=args.patch_px, steps=args.steps, sizes=args.sizes,
        selection_fraction=0.25 if args.selection_fraction is None else args.selection_fraction,
        augment=args.augment, max_photos=args.max_photos, universal_limit=args.universal_limit, seed=args.seed)
    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    out = Path(args.out or Path(args.run_dir) / "attacks" / f"{args.source}-to-{args.target}".replace(" ", "_"))
    report = run_protocol(model, args.run_dir, settings, images=args.images, target_images=args.target_images,
                          universal=args.universal, out_dir=out, progress=not args.quiet)
    print(f"left out as the source's and target's close relatives: {', '.join(report.excluded)}")
    for kind, cands in report.candidates.items():
        score = {"third": f"{report.settings['rank']} score", "target": "target - source attribution"}.get(kind, "-")
        print(f"{kind} candidates (cell, {score}, rows, top classes):")
        for c in cands:
            print(f"  cell {c['cell'][0]}:{c['cell'][1]},{c['cell'][2]}  {c['score']:+.4f}  {c['count']} rows  "
                  f"[{', '.join(c['classes'][:3])}]")
    print(f"{report.n_source_correct} of {report.n_source_views} views of {report.source!r} classified correctly; "
          f"{report.n_selection} rank the candidates and pick the static placement, {report.n_test} measure")
    print(report.table())
    print(f"wrote {out}/protocol.json, protocol.md, patches.png ({report.seconds['total']:.0f} s)")
    return 0


def add_adversarial(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas adversarial`` to ``sub``."""
    s = sub.add_parser("adversarial", help="adversarial examples (FGSM, PGD): success rate and smallest budget")
    s.add_argument("photos", nargs="+", metavar="PHOTO", help="photo files and/or folders of photos")
    add_model_args(s)
    s.add_argument("--target", default=None,
                   help="class name, WordNet id or index; 'random' = one random class per photo (seeded); "
                        "omit for an untargeted attack (away from the clean top-1)")
    s.add_argument("--norm", choices=("linf", "l2"), default="linf")
    s.add_argument("--eps", type=float_list, default="0.25,0.5,1,2,4",
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


def add_fool(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas fool`` to ``sub``."""
    s = sub.add_parser("fool", help="fooling images: noise optimized until the model is >= 99%% sure of a class")
    s.add_argument("--classes", required=True, help="comma-separated class names, WordNet ids or indices")
    add_model_args(s)
    s.add_argument("--priors", choices=("both", "on", "off"), default="both",
                   help="on: FFT parameterization + transforms; off: raw pixels, no transforms [%(default)s]")
    s.add_argument("--size", type=int, default=None, help="image side [the model's input size]")
    s.add_argument("--steps", type=int, default=256)
    s.add_argument("--lr", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", default="fooling.png", help="gallery PNG [%(default)s]")
    s.set_defaults(func=cmd_fool)


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
