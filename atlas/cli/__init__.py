"""The ``atlas`` command: parses arguments and calls library functions, nothing more.

Every subcommand maps to one function of the Python API; ``atlas run CONFIG`` runs the
pipeline's stages in order (see :mod:`atlas.pipeline`). Each command's parser sits beside its
handler in one module of this package (a family of commands shares one); :mod:`atlas.cli.common`
holds the options they share.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from atlas.checks import SettingError
from atlas.cli import aligned, attack, classes, explain, layers, optvis, pipeline, web
from atlas.cli.common import option_for

log = logging.getLogger("atlas")

EXIT_USAGE = 2

#: Each command's ``add_*(sub)``, in the order ``atlas --help`` lists the commands.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    layers.add_layers,
    pipeline.add_collect, pipeline.add_reduce, pipeline.add_grid,
    classes.add_classes, classes.add_compare, aligned.add_align,
    pipeline.add_render,
    optvis.add_vis, optvis.add_dream, optvis.add_style, optvis.add_channels,
    pipeline.add_tiles,
    web.add_serve, web.add_export,
    explain.add_explain,
    attack.add_attack, attack.add_adversarial, attack.add_fool,
    pipeline.add_run,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atlas", description="Activation atlases of image classifiers.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
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
        option = option_for(args.command_parser, e.key)
        print(f"atlas {args.command}: error: {f'{option} {e.reason}' if option else e}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:  # user errors: bad paths, names, configs -- the message says the fix
        print(f"atlas {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
