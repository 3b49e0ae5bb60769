"""Pipeline configs: TOML files, validated on load, with ``${VAR:-default}`` environment expansion.

A config names a run directory, a model and each stage's settings::

    [run]
    dir = "runs/quickstart"            # every artifact of the run goes here
    device = "auto"                    # "auto" (CUDA if present), "cpu", "cuda", "cuda:1"
    scheduler = "tcp://HOST:8786"      # optional: collect and reduce on Dask distributed;
                                       # "local" / "local:N" = N worker processes here

    [model]
    name = "inceptionv1"               # or "torchvision:googlenet", "torchvision:resnet50", ...
    weights = "${ATLAS_INCEPTIONV1_WEIGHTS:-}"   # empty = the model's default location/download
    random_init = false

    [collect]
    source = "images/"                 # folder, list file, .tar shards (glob), or "imagenette"
    layers = ["inception4c"]
    ...                                # any field of atlas.stages.collect.stage.CollectSettings, plus
                                       # batch_size and workers

    [[aligned]]                        # optional, one table per aligned atlas (RUN/aligned/<name>)
    name = "4a-4e"
    a = { layer = "inception4a" }      # a side: layer, and optionally model, random_init, weights
    b = { layer = "inception4e" }      # (left out: the run's model); any other field of
    sizes = [10, 20]                   # atlas.stages.aligned.AlignedSettings

Unknown sections or keys, wrong types and bad values raise :class:`ConfigError` naming the
file, the key and what is allowed, when the file is loaded: every value is checked by the
stage's own settings object or check (:mod:`atlas.checks`), the same one the command line goes
through, so a bad value never waits for its stage to run. Strings may use ``${NAME}`` or ``${NAME:-default}``; an
unset variable without a default is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import tomllib

from atlas.checks import SettingError
from atlas.models import check_device, check_model_setting
from atlas.stages.aligned.settings import AlignedSettings
from atlas.stages.classes import SubAtlasSettings
from atlas.stages.collect.stage import CollectSettings, check_loader
from atlas.stages.grid import GridSettings
from atlas.stages.reduce import ReduceSettings
from atlas.stages.render import RenderSettings
from atlas.stages.tiles import TileSettings

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class RunSection:
    """``scheduler``: empty (stages run in this process), a Dask scheduler address
    (``tcp://HOST:8786``), or ``local`` / ``local:N`` (see :mod:`atlas.runtime.distributed`)."""

    dir: str = "runs/default"
    device: str = "auto"
    scheduler: str = ""

    def __post_init__(self) -> None:
        check_device(self.device)


@dataclass(frozen=True)
class ModelSection:
    name: str = "inceptionv1"
    weights: str = ""
    random_init: bool = False

    def __post_init__(self) -> None:
        check_model_setting("name", self.name)


@dataclass(frozen=True)
class CollectSection:
    source: str = ""
    batch_size: int = 32
    workers: int = -1  # -1: one per spare core
    settings: CollectSettings = field(default_factory=CollectSettings)

    def __post_init__(self) -> None:
        check_loader(self.batch_size, None if self.workers == -1 else self.workers)


@dataclass(frozen=True)
class TilesSection:
    """Settings of :func:`atlas.stages.tiles.build_tiles`."""

    tile_size: int = 256
    density_scaling: bool = False
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    examples: int = 8
    title: str = ""

    def __post_init__(self) -> None:
        names = {"tile_format": "format", "examples_per_cell": "examples"}  # TileSettings' names -> these
        try:
            TileSettings(tile_size=self.tile_size, tile_format=self.format, examples_per_cell=self.examples)
        except SettingError as e:
            raise SettingError(names.get(e.key, e.key), e.reason) from None


@dataclass(frozen=True)
class PipelineConfig:
    path: Path
    run: RunSection
    model: ModelSection
    collect: CollectSection
    reduce: ReduceSettings
    grid: GridSettings
    render: RenderSettings
    tiles: TilesSection
    classes: SubAtlasSettings = field(default_factory=SubAtlasSettings)
    aligned: tuple[AlignedSettings, ...] = ()

    @property
    def run_dir(self) -> Path:
        d = Path(self.run.dir)
        return d if d.is_absolute() else Path.cwd() / d


STAGE_SECTIONS = ("reduce", "grid", "render", "tiles", "classes", "aligned")


def expand_env(value: Any, where: str, path: Path) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in strings, recursively in lists and tables."""
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ and os.environ[name] != "":
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: {where} uses ${{{name}}}, which is not set; set it or write ${{{name}:-default}}")
        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}", path) for k, v in value.items()}
    return value


def _build(cls: type, table: Mapping[str, Any], section: str, path: Path, skip: tuple[str, ...] = ()) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{path}: unknown key [{section}] {key}.{hint} Allowed: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], f"[{section}] {key}", path)
    try:
        return cls(**kwargs)
    except SettingError as e:  # names its key: "[grid] min_count must be at least 1, got 0"
        raise ConfigError(f"{path}: [{section}] {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: [{section}]: {e}") from e


def _coerce(value: Any, hint: Any, where: str, path: Path) -> Any:
    origin = get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: {where} must be a list, e.g. [\"inception4c\"], not {value!r}")
        return tuple(value)
    if str(origin) == "typing.Literal" or getattr(origin, "__name__", "") == "Literal":
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path}: {where} = {value!r} is not allowed; use one of {list(allowed)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: {where} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: {where} must be a number, not {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{path}: {where} must be a string, not {value!r}")
    return value


def load_config(path: str | os.PathLike) -> PipelineConfig:
    """Read and validate a pipeline config (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (examples are in pipelines/)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    raw = expand_env(raw, "", path)
    sections = ("run", "model", "collect", *STAGE_SECTIONS)
    for name in raw:
        if name not in sections:
            close = difflib.get_close_matches(name, sections, n=2)
            hint = f" Did you mean [{close[0]}]?" if close else ""
            raise ConfigError(f"{path}: unknown section [{name}].{hint} Allowed: {', '.join(sections)}")
    run = _build(RunSection, raw.get("run", {}), "run", path)
    if run.scheduler:
        from atlas.runtime.distributed import parse_scheduler

        try:
            parse_scheduler(run.scheduler)
        except ValueError as e:
            raise ConfigError(f"{path}: [run] scheduler: {e}") from e
    model = _build(ModelSection, raw.get("model", {}), "model", path)
    coll = dict(raw.get("collect", {}))
    own = {k: coll.pop(k) for k in ("source", "batch_size", "workers") if k in coll}
    settings = _build(CollectSettings, coll, "collect", path)
    collect_sec = _build(CollectSection, own, "collect", path, skip=("settings",))
    if not collect_sec.source:
        raise ConfigError(f"{path}: [collect] source is empty; give a folder, list file, .tar shards or 'imagenette'")
    collect_sec = dataclasses.replace(collect_sec, settings=settings)
    return PipelineConfig(
        path, run, model, collect_sec,
        reduce=_build(ReduceSettings, raw.get("reduce", {}), "reduce", path),
        grid=_build(GridSettings, raw.get("grid", {}), "grid", path),
        render=_build(RenderSettings, raw.get("render", {}), "render", path),
        tiles=_build(TilesSection, raw.get("tiles", {}), "tiles", path),
        classes=_build(SubAtlasSettings, raw.get("classes", {}), "classes", path),
        aligned=_build_aligned(raw.get("aligned", []), path),
    )


def _build_aligned(entries: Any, path: Path) -> tuple[AlignedSettings, ...]:
    """The ``[[aligned]]`` tables, each an :class:`AlignedSettings` (its sides as inline tables or
    ``[aligned.a]`` / ``[aligned.b]`` sub-tables); errors name the table as ``[aligned #N]``."""
    if isinstance(entries, dict):
        raise ConfigError(f"{path}: [aligned] is one table; write an [[aligned]] table (two brackets) for each aligned "
                          "atlas, e.g. [[aligned]] name = \"4a-4e\" a = { layer = \"inception4a\" } "
                          "b = { layer = \"inception4e\" }")
    out: list[AlignedSettings] = []
    folders: dict[str, int] = {}
    for i, entry in enumerate(entries, 1):
        section = f"aligned #{i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: [{section}] must be a table with name, a and b, not {entry!r}")
        settings = _build(AlignedSettings, entry, section, path)
        if settings.folder_name in folders:
            raise ConfigError(f"{path}: [{section}] name = {settings.name!r} gives the folder aligned/"
                              f"{settings.folder_name}, as [aligned #{folders[settings.folder_name]}] does; "
                              "give each aligned atlas its own name")
        folders[settings.folder_name] = i
        out.append(settings)
    return tuple(out)
