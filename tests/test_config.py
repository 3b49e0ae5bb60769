"""Pipeline configs: loading, env expansion, and errors that name file, key and fix."""

from __future__ import annotations

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
