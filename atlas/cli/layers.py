"""``atlas layers``: a model's hookable layers and their output shapes."""

from __future__ import annotations

import argparse


def add_layers(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas layers`` to ``sub``."""
    s = sub.add_parser("layers", help="list a model's hookable layers with output shapes")
    s.add_argument("model", nargs="?", default="inceptionv1")
    s.add_argument("--weights", default=None)
    s.add_argument("--random-init", action="store_true",
                   help="skip loading weights (shapes do not depend on them)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--spatial", action="store_true",
                   help="only the layers collect can use: (C, H, W) layers and a vision transformer's token layers")
    s.set_defaults(func=cmd_layers)


def cmd_layers(args: argparse.Namespace) -> int:
    from atlas.models import load_model

    model = load_model(args.model, weights=args.weights, random_init=args.random_init, device=args.device)
    shapes = model.layer_shapes()
    width = max(len(n) for n in shapes)
    print(f"# {model.name}: output shape of each layer at {model.input_size}x{model.input_size} input")
    if any(model.token_layout(shape) for shape in shapes.values()):
        print("# token layers (T, C): collect reads their patch tokens on the patch grid, without the "
              "class/register tokens")
    for name, shape in shapes.items():
        layout = model.token_layout(shape)
        if args.spatial and len(shape) != 3 and layout is None:
            continue
        note = f"  tokens {layout.describe()}" if layout is not None else ""
        print(f"{name:<{width}}  {tuple(shape)}{note}")
    return 0
