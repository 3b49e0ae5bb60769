"""Pipeline configs: loading, env expansion, and errors that name file, key and fix."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from atlas.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    return p


def test_shipped_configs_load(monkeypatch):
    monkeypatch.setenv("ATLAS_SAMPLE_IMAGES", "/photos")
    monkeypatch.setenv("ATLAS_IMAGES_ROOT", "/photos")
    for p in sorted((REPO / "pipelines").glob("*.toml")):
        cfg = load_config(p)
        assert cfg.collect.settings.layers


def test_env_expansion_with_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_IMAGES", "/data/photos")
    monkeypatch.delenv("UNSET_THING", raising=False)
    cfg = load_config(write(tmp_path, """
[run]
dir = "${UNSET_THING:-runs/x}"
[collect]
source = "${MY_IMAGES}"
layers = ["inception4c", "inception4d"]
positions_per_image = 3
"""))
    assert cfg.run.dir == "runs/x" and cfg.collect.source == "/data/photos"
    assert cfg.collect.settings.layers == ("inception4c", "inception4d")
    assert cfg.collect.settings.positions_per_image == 3


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    p = write(tmp_path, '[collect]\nsource = "x"\npositions_per_imag = 2\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "positions_per_imag" in msg and "positions_per_image" in msg


def test_unknown_section_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[colect\].*Did you mean \[collect\]"):
        load_config(write(tmp_path, '[colect]\nsource = "x"\n'))
    with pytest.raises(ConfigError, match="sampling = 'some' is not allowed"):
        load_config(write(tmp_path, '[collect]\nsource = "x"\nsampling = "some"\n'))
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(write(tmp_path, '[collect]\nsource = "x"\ntop_k = "ten"\n'))
    with pytest.raises(ConfigError, match="must be a list"):
        load_config(write(tmp_path, '[collect]\nsource = "x"\nlayers = "inception4c"\n'))
    with pytest.raises(ConfigError, match="UNSET_VAR_XYZ"):
        load_config(write(tmp_path, '[collect]\nsource = "${UNSET_VAR_XYZ}"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, '[collect\n'))
    with pytest.raises(ConfigError, match="source is empty"):
        load_config(write(tmp_path, '[collect]\nlayers = ["a"]\n'))
    with pytest.raises(ConfigError, match="positions_per_image must be at least 1"):
        load_config(write(tmp_path, '[collect]\nsource = "x"\npositions_per_image = 0\n'))


# values checked at load, each error naming the section and the key

BAD_VALUES = [
    ("render", 'icon_view = "everything"', "icon_view", "whole"),
    ("render", 'objective = "edge"', "objective", "mean"),
    ("render", 'precision = "fp8"', "precision", "bf16"),
    ("render", "steps = 0", "steps", "at least 1"),
    ("render", "attempts = 0", "attempts", "at least 1"),
    ("render", "icon_size = 4", "icon_size", "at least"),
    ("render", "batch_size = 0", "batch_size", "at least 1"),
    ("render", "lr = 0", "lr", "positive"),
    ("render", "lr = nan", "lr", "positive"),
    ("render", "cossim_pow = -1", "cossim_pow", ">= 0"),
    ("render", "border_prior = -1", "border_prior", ">= 0"),
    ("render", "levels = [20, 0]", "levels", "positive"),
    ("tiles", "tile_size = 3", "tile_size", "between 16 and 4096"),
    ("tiles", "examples = -1", "examples", ">= 0"),
    ("grid", "sizes = [20, 100000]", "sizes", "100000"),
    ("grid", "min_count = 0", "min_count", "at least 1"),
    ("classes", 'icon_view = "everything"', "icon_view", "whole"),
    ("classes", 'objective = "edge"', "objective", "mean"),
    ("classes", "sizes = [10, 100000]", "sizes", "100000"),
    ("classes", "min_count = 0", "min_count", "at least 1"),
    ("classes", "steps = 0", "steps", "at least 1"),
    ("classes", "icon_size = 4", "icon_size", "at least"),
    ("classes", "lr = -0.1", "lr", "positive"),
    ("run", 'device = "gpu"', "device", "cuda"),
    ("reduce", 'metric = "cosin"', "metric", "UMAP metric"),
    ("reduce", "min_dist = 2.0", "min_dist", "[0, 1]"),
    ("reduce", "n_neighbors = 1", "n_neighbors", ">= 2"),
    ("tiles", 'format = "gif"', "format", "jpeg"),
    ("model", 'name = "resnet"', "name", "torchvision:"),
]


@pytest.mark.parametrize("section, line, key, hint", BAD_VALUES, ids=[f"{s}.{k}" for s, _l, k, _h in BAD_VALUES])
def test_bad_values_fail_at_load_naming_section_and_key(tmp_path, section, line, key, hint):
    p = write(tmp_path, f'[collect]\nsource = "x"\n[{section}]\n{line}\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and f"[{section}] {key}" in msg and hint in msg, msg


@pytest.mark.parametrize("line, key", [("batch_size = 0", "batch_size"), ("workers = -2", "workers"),
                                       ("block_size = 0", "block_size"), ("positions_per_image = 0",
                                                                          "positions_per_image")])
def test_bad_collect_values_fail_at_load(tmp_path, line, key):
    p = write(tmp_path, f'[collect]\nsource = "x"\n{line}\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"[collect] {key}" in str(e.value), str(e.value)


# one home for the defaults: the config and the command line read them from the settings objects


def _option_defaults(argv: list[str], fields: list[str]) -> dict[str, object]:
    """What ``atlas *argv`` with no other option sets each settings field of ``fields`` to, with the
    real parser (a field the command has no option for is missing)."""
    from atlas.cli import build_parser
    from atlas.cli.common import FIELD_DESTS as _FIELD_DESTS

    args = vars(build_parser().parse_args(argv))
    return {name: args[_FIELD_DESTS.get(name, name)] for name in fields if _FIELD_DESTS.get(name, name) in args}


def _choices(command: str) -> dict[str, tuple]:
    from atlas.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: tuple(a.choices) for a in sub._actions if a.choices is not None}


def test_render_defaults_of_the_config_and_the_command_line_are_render_settings(tmp_path):
    from atlas.runtime.precision import PRECISIONS
    from atlas.stages.classes import SubAtlasSettings
    from atlas.stages.render import ICON_OBJECTIVES, ICON_VIEWS, RENDER_STARTS, RenderSettings

    defaults = RenderSettings()
    fields = [f.name for f in dataclasses.fields(RenderSettings)]
    assert load_config(write(tmp_path, '[collect]\nsource = "x"\n')).render == defaults
    cli = _option_defaults(["render", "run"], fields)
    assert sorted(cli) == sorted(fields), "every render setting has an option of `atlas render`"
    assert cli.pop("levels") is None  # no --levels: every level, as the settings' empty levels
    assert cli == {name: getattr(defaults, name) for name in cli}
    assert RenderSettings(**{**cli, "levels": None}) == defaults
    assert _choices("render") == {"icon_view": tuple(ICON_VIEWS), "objective": ICON_OBJECTIVES,
                                  "start": RENDER_STARTS, "precision": PRECISIONS}
    # the class atlases render as the stage does, but for their own (fewer) steps
    sub = SubAtlasSettings()
    assert {k: getattr(sub, k) for k in ("icon_size", "batch_size", "lr", "objective", "icon_view")} == \
        {k: getattr(defaults, k) for k in ("icon_size", "batch_size", "lr", "objective", "icon_view")}


def test_grid_and_class_atlas_defaults_of_the_config_and_the_command_line_are_their_settings(tmp_path):
    from atlas.stages.classes import SubAtlasSettings
    from atlas.stages.grid import GridSettings

    cfg = load_config(write(tmp_path, '[collect]\nsource = "x"\n'))
    assert cfg.grid == GridSettings() and cfg.classes == SubAtlasSettings()
    for argv, settings in ((["grid", "run"], GridSettings()), (["classes", "run", "tench"], SubAtlasSettings()),
                           (["compare", "run", "tench", "goldfish"], SubAtlasSettings())):
        cli = _option_defaults(argv, [f.name for f in dataclasses.fields(settings)])
        assert {"sizes", "min_count", "class_top_n"} <= set(cli), argv
        assert cli == {name: getattr(settings, name) for name in cli}, argv


# aligned atlases: an array of tables, each one AlignedSettings


def test_aligned_tables_parse_with_inline_and_sub_tables(tmp_path):
    from atlas.stages.aligned import AlignedSettings, AlignedSide

    cfg = load_config(write(tmp_path, """
[collect]
source = "x"
[[aligned]]
name = "4a-4e"
a = { layer = "inception4a" }
b = { layer = "inception4e" }
sizes = [2, 3]
holdout = 0.25
[[aligned]]
name = "trained vs random"
steps = 64
[aligned.a]
layer = "inception4c"
[aligned.b]
random_init = true
"""))
    first, second = cfg.aligned
    assert first == AlignedSettings(name="4a-4e", a=AlignedSide("inception4a"), b=AlignedSide("inception4e"),
                                    sizes=(2, 3), holdout=0.25)
    assert second.b == AlignedSide("inception4c", random_init=True) and second.steps == 64
    assert load_config(write(tmp_path, '[collect]\nsource = "x"\n')).aligned == ()


@pytest.mark.parametrize("text, says", [
    ('[[aligned]]\nname = "x"\na = { layer = "l" }\nb = { layer = "m" }\nholdot = 0.3\n',
     ["unknown key [aligned #1] holdot", "holdout"]),
    ('[[aligned]]\nname = "x"\na = { layer = "l" }\nb = { layr = "m" }\n', ["[aligned #1] b.layr", "did you mean layer"]),
    ('[[aligned]]\nname = "x"\na = { layer = "l" }\nb = { random_init = "yes" }\n',
     ["[aligned #1] b.random_init must be true or false"]),
    ('[[aligned]]\nname = "x"\na = "l"\n', ["[aligned #1] a must be a side"]),
    ('[[aligned]]\nname = "x"\nb = { layer = "m" }\n', ["[aligned #1] a.layer must name a layer"]),
    ('[[aligned]]\na = { layer = "l" }\nb = { layer = "m" }\n', ["[aligned #1] name must name"]),
    ('[[aligned]]\nname = "x"\na = { layer = "l" }\nb = { layer = "m" }\nholdout = 2\n',
     ["[aligned #1] holdout must be a share"]),
    ('[[aligned]]\nname = "x"\na = { layer = "l" }\nb = { layer = "m", model = "resnet" }\n',
     ["[aligned #1] b.model must name a model"]),
    ('[aligned]\nname = "x"\n', ["[[aligned]] table (two brackets)"]),
    ('[[aligned]]\nname = "X y"\na = { layer = "l" }\nb = { layer = "m" }\n'
     '[[aligned]]\nname = "x-y"\na = { layer = "l" }\nb = { layer = "n" }\n', ["[aligned #2]", "aligned/x-y", "#1"]),
], ids=["key", "side-key", "side-type", "side-string", "no-a", "no-name", "holdout", "model", "table", "same-folder"])
def test_aligned_tables_reject_bad_keys_and_values(tmp_path, text, says):
    p = write(tmp_path, '[collect]\nsource = "x"\n' + text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and all(s in msg for s in says), msg


def test_align_defaults_of_the_command_line_are_aligned_settings():
    from atlas.stages.aligned import AlignedSettings

    fields = [f.name for f in dataclasses.fields(AlignedSettings) if f.name not in ("name", "a", "b")]
    cli = _option_defaults(["align", "run", "--name", "x", "--a-layer", "inception4a"], fields)
    assert sorted(cli) == sorted(fields), "every setting but the name and sides has an option of `atlas align`"
    defaults = AlignedSettings(name="x", a={"layer": "inception4a"}, b={"layer": "inception4e"})
    assert cli == {name: getattr(defaults, name) for name in cli}
