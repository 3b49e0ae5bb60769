"""The WordNet hierarchy above the ImageNet classes and the "close relatives" rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas.resources import class_index, imagenet_class_names, imagenet_wnids
from atlas.resources.wordnet import ancestors, close_relatives, hops_apart, hypernyms, parse_data_noun, write_table

# three synsets in data.noun's format: offset lex ss_type w_cnt(hex) word lex_id p_cnt pointers | gloss
DATA_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
00000001 03 n 01 entity 0 000 | that which is perceived
00000002 03 n 02 pan 0 cooking_pan 0 002 @ 00000001 n 0000 ~ 00000003 n 0000 | a shallow vessel
00000003 06 n 01 wok 0 001 @ 00000002 n 0000 | pan with a convex bottom
00000004 06 n 01 frying_pan 0 001 @i 00000002 n 0000 | a pan for frying
"""


def test_parse_data_noun_reads_hypernym_and_instance_pointers():
    parents, names = parse_data_noun(DATA_NOUN.splitlines())
    assert parents == {"n00000001": [], "n00000002": ["n00000001"], "n00000003": ["n00000002"],
                       "n00000004": ["n00000002"]}  # the ~ (hyponym) pointer is not a parent
    assert names["n00000004"] == "frying pan" and names["n00000002"] == "pan"
    assert ancestors("n00000003", parents) == {"n00000003": 0, "n00000002": 1, "n00000001": 2}


def test_write_table_names_missing_synsets(tmp_path):
    src = tmp_path / "data.noun"
    src.write_text(DATA_NOUN)
    out = tmp_path / "h.tsv"
    assert write_table(src, out, ["n00000003"]) == 1
    assert out.read_text().splitlines()[1] == "n00000003\tn00000002:1:pan;n00000001:2:entity"
    with pytest.raises(ValueError, match="lacks 1 ImageNet synsets"):
        write_table(src, out, ["n09999999"])


def _rel(name: str) -> set[str]:
    w, n = imagenet_wnids(), imagenet_class_names()
    return {n[i] for i in close_relatives(w[class_index(name)], w)}


def test_close_relatives_of_the_articles_classes():
    assert {"wok", "frying pan"} <= _rel("wok") and _rel("wok") == _rel("frying pan")
    assert _rel("great white shark") == {"great white shark", "tiger shark", "hammerhead"}
    assert _rel("grey whale") == {"grey whale"}
    assert _rel("scuba diver") == {"scuba diver"}
    assert "electric locomotive" in _rel("steam locomotive")
    # both are two steps below "device", a group of hundreds of classes: not relatives
    assert "computer keyboard" not in _rel("snorkel")
    w = imagenet_wnids()
    assert hops_apart(w[class_index("snorkel")], w[class_index("computer keyboard")]) == 2
    assert hops_apart(w[class_index("snorkel")], w[class_index("computer keyboard")], max_group=25) > 2


def test_every_class_has_its_hierarchy_up_to_entity():
    for w in imagenet_wnids():
        assert hypernyms(w).get("n00001740", 0) > 0, w  # entity
    with pytest.raises(ValueError, match="not an ImageNet-1k WordNet id"):
        hypernyms("n00000000")


def test_table_matches_the_wordnet_database_when_installed(tmp_path):
    src = Path("/usr/share/wordnet/data.noun")
    if not src.is_file():
        pytest.skip("WordNet 3.0 is not installed here (Debian: apt install wordnet-base)")
    out = tmp_path / "h.tsv"
    write_table(src, out, imagenet_wnids())
    shipped = Path(__file__).resolve().parents[2] / "data" / "imagenet_hypernyms.tsv"
    assert out.read_text() == shipped.read_text()
