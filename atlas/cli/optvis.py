"""Feature visualization commands: ``vis``, ``dream``, ``style`` and ``channels``."""

from __future__ import annotations

import argparse

from atlas.cli.common import add_model_args


def add_vis(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas vis`` to ``sub``."""
    s = sub.add_parser("vis", help="one feature visualization: channel, neuron, class logit, DeepDream ...")
    s.add_argument("objective", help="e.g. inception4c:447 (channel), neuron:inception4c:447, logit:snorkel, layer:inception4c (DeepDream), "
                                     "channel:inception4c:97 + 100*diversity:inception4c (with --batch 4)")
    add_model_args(s)
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


def add_dream(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas dream`` to ``sub``."""
    s = sub.add_parser("dream", help="DeepDream a photo: amplify a layer's (or a channel's) activations, by octaves")
    s.add_argument("photo", help="the photo to start from (output has its size)")
    add_model_args(s)
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


def add_style(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas style`` to ``sub``."""
    s = sub.add_parser("style", help="style transfer: CONTENT painted with STYLE's Gram matrices (Gatys et al.)")
    s.add_argument("content", help="content photo")
    s.add_argument("style", help="style image (e.g. a strongly textured photo)")
    s.add_argument("-o", "--out", default="style.png", help="PNG to write [%(default)s]")
    add_model_args(s)
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


def add_channels(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas channels`` to ``sub``."""
    s = sub.add_parser("channels", help="one photo, every channel of a layer: activation map beside feature vis")
    s.add_argument("photo", help="the photo (resized and center-cropped as the model's input)")
    add_model_args(s)
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
