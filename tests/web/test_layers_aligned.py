"""A multi-layer run's layer row and an aligned atlas's side-by-side view, in the server's run
listing.

The site: ``multi/layers/<layer>/tiles`` for four of the five layers of its ``layer_set`` (the
fourth, ``inception4e``, not built), ``multi/aligned/pair/{a,b}/tiles`` (two sides of one layout
on different grids, so different world and content sizes) and an ordinary run ``beta/tiles``.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest

from atlas.stages.tiles import build_tiles
from atlas.web.serve import Run, find_runs, make_server
from atlasfixture import write_fake_run

LAYERS = ["inception3b", "inception4a", "inception4c", "inception4e", "inception5b"]
BUILT = [name for name in LAYERS if name != "inception4e"]
#: each layer atlas on its own grids: switching layers must keep the view in relative terms
LAYER_SIZES = {"inception3b": (4, 8, 16), "inception4a": (8, 16, 32), "inception4c": (6, 12, 24),
               "inception5b": (4, 8)}
SIDES = {"a": ((8, 16, 32), "inception4a"), "b": ((6, 12, 24), "InceptionV1 (random init) inception4c")}
LAYER_ID = "multi/layers/{}/tiles"
SIDE_ID = "multi/aligned/pair/{}/tiles"


def _atlas(folder: Path, sizes, seed: int, **manifest) -> None:
    run = write_fake_run(folder, sizes=sizes, icon_size=16, n_points=900, n_images=6, examples=2, seed=seed)
    build_tiles(run.cells, run.icons, folder / "tiles", progress=False, **manifest)


def build_site(root: Path) -> Path:
    for i, layer in enumerate(BUILT):
        folder = root / "multi" / "layers" / layer
        _atlas(folder, LAYER_SIZES[layer], seed=10 + i, layer_set=LAYERS)
        path = folder / "tiles" / "manifest.json"  # the fixture's cells all say one layer; name each its own
        path.write_text(json.dumps({**json.loads(path.read_text()), "layer": layer}))
    for side, (sizes, label) in SIDES.items():
        other = "b" if side == "a" else "a"
        _atlas(root / "multi" / "aligned" / "pair" / side, sizes, seed=3, aligned={
            "name": "pair", "side": side, "label": label, "peer": f"../../{other}/tiles", "peer_label": SIDES[other][1]})
    _atlas(root / "beta", (4, 8), seed=2)
    return root


def serve(folder: Path):
    server = make_server(folder, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    return server


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("layers-aligned"))


@pytest.fixture(scope="module")
def site(root):
    server = serve(root)
    yield server
    server.shutdown()
    server.server_close()


def _get(server, path: str):
    with urllib.request.urlopen(server.base_url + path.lstrip("/"), timeout=10) as r:
        return json.loads(r.read())


def _runs(server) -> dict[str, dict]:
    return {r["id"]: r for r in _get(server, "api/runs")["runs"]}


# ---- the server's listing ----------------------------------------------------------------------


@pytest.mark.parametrize("served, prefix", [(None, "multi/"), ("multi", "")])
def test_the_listing_names_the_layers_and_the_aligned_peer(root, served, prefix):
    """Served from the folder of runs or from the run folder itself, every layer atlas and both
    sides of the aligned atlas (5 folders below the folder of runs) are found and linked."""
    server = serve(root / served if served else root)
    try:
        runs = _runs(server)
        ids = [prefix + f"layers/{layer}/tiles" for layer in BUILT]
        sides = {s: prefix + f"aligned/pair/{s}/tiles" for s in "ab"}
        assert set(runs) == {*ids, *sides.values()} | ({"beta/tiles"} if not served else set())
        for layer, run_id in zip(BUILT, ids):
            run = runs[run_id]
            assert run["layers"] == {"group": prefix.rstrip("/"), "names": LAYERS,
                                     "ids": {n: prefix + f"layers/{n}/tiles" for n in BUILT}}
            assert run["layer"] == layer and run["name"] == "multi" and run["aligned"] is None
        for side, other in (("a", "b"), ("b", "a")):
            assert runs[sides[side]]["aligned"] == {"name": "pair", "side": side, "label": SIDES[side][1],
                                                    "peer_id": sides[other], "peer_label": SIDES[other][1]}
            assert runs[sides[side]]["layers"] is None and runs[sides[side]]["name"] == "multi"
        if not served:
            assert runs["beta/tiles"]["layers"] is None and runs["beta/tiles"]["aligned"] is None
        # the tiles of the deepest atlas are served
        assert _get(server, f"data/{sides['b']}/manifest.json")["aligned"]["side"] == "b"
    finally:
        server.shutdown()
        server.server_close()
    assert len(find_runs(root)) == 7


def _run(run_id: str, manifest: dict, path: Path) -> Run:
    return Run(run_id, path, manifest, 0, "r")


def test_describe_without_or_with_malformed_fields_gives_null(tmp_path):
    """A manifest without ``layer_set``/``aligned``, or with anything but the contract's shapes in
    them, is listed with ``layers``/``aligned`` null; never an error."""
    tiles = tmp_path / "run" / "layers" / "l1" / "tiles"
    base = {"kind": "atlas-tiles", "layer": "l1"}
    plain = _run("run/layers/l1/tiles", base, tiles).describe()
    assert plain["layers"] is None and plain["aligned"] is None
    for layer_set in (None, "l1,l2", [], [1, 2], ["l1", None], ["l1", ""], ["a/b"], ["x" * 201], {"l1": 1}):
        assert _run("run/layers/l1/tiles", {**base, "layer_set": layer_set}, tiles).describe()["layers"] is None
    # a layer set on an atlas that is not RUN/layers/<layer>/tiles
    for other in ("run/tiles", "run/layers/tiles", "run/layers/l1/tiles/x", "run/classes/l1/tiles"):
        assert _run(other, {**base, "layer_set": ["l1"]}, tiles).describe()["layers"] is None
    # alone (no other atlas known), only itself is present; repeated names count once
    alone = _run("run/layers/l1/tiles", {**base, "layer_set": ["l0", "l1", "l1"]}, tiles).describe()["layers"]
    assert alone == {"group": "run", "names": ["l0", "l1"], "ids": {"l1": "run/layers/l1/tiles"}}
    assert _run("layers/l1/tiles", {**base, "layer_set": ["l1"]}, tiles).describe()["layers"]["group"] == ""

    side = tmp_path / "run" / "aligned" / "p" / "a" / "tiles"
    good = {"name": "p", "side": "a", "label": "A", "peer": "../../b/tiles", "peer_label": "B"}
    for entry in (None, "p", [], {**good, "name": ""}, {**good, "name": 3}, {**good, "side": "c"},
                  {k: v for k, v in good.items() if k != "side"}):
        assert _run("run/aligned/p/a/tiles", {**base, "aligned": entry}, side).describe()["aligned"] is None
    # the peer: not served, or a path that leads nowhere or is not a path -> peer_id null
    for peer in ("../../b/tiles", "/", "../" * 50, "\0", 7, None, "x" * 2000, ""):
        got = _run("run/aligned/p/a/tiles", {**base, "aligned": {**good, "peer": peer}}, side).describe()["aligned"]
        assert got == {"name": "p", "side": "a", "label": "A", "peer_id": None, "peer_label": "B"}
    # labels that are not text: the side's letters instead
    got = _run("run/aligned/p/a/tiles", {**base, "aligned": {**good, "label": 5, "peer_label": ["x"]}}, side).describe()
    assert (got["aligned"]["label"], got["aligned"]["peer_label"]) == ("a", "b")
    # with the peer served, its id; a peer that is the atlas itself is no peer
    peer = _run("run/aligned/p/b/tiles", {**base}, (side / "../../b/tiles").resolve())
    me = _run("run/aligned/p/a/tiles", {**base, "aligned": good}, side.resolve())
    runs = {r.id: r for r in (me, peer)}
    assert me.describe(runs)["aligned"]["peer_id"] == "run/aligned/p/b/tiles"
    itself = _run("run/aligned/p/a/tiles", {**base, "aligned": {**good, "peer": "."}}, side.resolve())
    assert itself.describe({itself.id: itself})["aligned"]["peer_id"] is None
