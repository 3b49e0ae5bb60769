"""What the commands' parsers share: list types, the model and scheduler options, run-folder paths,
and the option that sets a settings field."""

from __future__ import annotations

import argparse
from collections.abc import Callable

#: Settings fields whose command-line option is named otherwise (field -> argparse dest), so that
#: a :class:`~atlas.checks.SettingError` names the option the user typed.
FIELD_DESTS = {"n_examples": "examples", "positions_per_image": "positions", "examples_per_cell": "examples",
               "tile_format": "format", "n_workers": "workers", "random_state": "seed",
               **{f"{side}.{key}": f"{side}_{key}" for side in "ab" for key in ("layer", "model", "random_init",
                                                                              "weights")}}


def number_list(kind: type, example: str) -> Callable[[str], tuple]:
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


int_list = number_list(int, "20,40,80")
float_list = number_list(float, "0.2,0.3")


def option_for(parser: argparse.ArgumentParser, key: str) -> str | None:
    """The option of ``parser`` that sets the settings field ``key`` (``min_count`` -> ``--min-count``)."""
    dest = FIELD_DESTS.get(key, key)
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return max(action.option_strings, key=len)
    return None


def add_model_args(p: argparse.ArgumentParser, default: str | None = "inceptionv1") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default,
                   help="inceptionv1 (BVLC GoogLeNet), torchvision:NAME (e.g. torchvision:resnet50) [%(default)s]")
    g.add_argument("--weights", default=None,
                   help="local weight file (InceptionV1: also $ATLAS_INCEPTIONV1_WEIGHTS)")
    g.add_argument("--random-init", action="store_true", help="use random weights (tests, smoke runs)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 [%(default)s]")


def add_scheduler_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help=f"Dask scheduler (tcp://HOST:8786, or local / local:N for N worker processes here): {what}")


def run_file(run_dir: str | None, explicit: str | None, name: str) -> str:
    from pathlib import Path

    if explicit:
        return explicit
    if run_dir is None:
        raise ValueError(f"give the run folder (RUN_DIR) or --{name.split('.')[0]} PATH")
    return str(Path(run_dir) / name)
