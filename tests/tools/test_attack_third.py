"""Third-class neighbourhoods and the article's protocol (`atlas attack --kind third`,
`--protocol article`): the candidate filter, the counting, and the whole run on the tiny atlas."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from atlas.resources import class_index, imagenet_class_names
from atlas.store.cells import CellLevel
from atlas.tools.attack import (
    AttackSettings,
    ProtocolCounts,
    ProtocolSettings,
    atlas_class_attribution,
    excluded_classes,
    protocol_result,
    run_attack,
    run_protocol,
    third_class_cells,
    two_way_bootstrap,
)

NAMES = imagenet_class_names()


@pytest.fixture(scope="module")
def model():
    from atlas.models import load_model

    return load_model("inceptionv1", random_init=True)


def _c(name: str) -> int:
    return class_index(name)


def _level(pushes, classes, counts, size: int = 4) -> CellLevel:
    """A grid level whose cell i has direction ``pushes[i] * e0`` (so its push along the gradient
    ``e0`` is ``pushes[i]``) and the top classes ``classes[i]``."""
    m = len(pushes)
    direction = np.zeros((m, 8), np.float32)
    direction[:, 0] = pushes
    direction[:, 1] = 1.0  # orthogonal to the gradient: no push
    top = np.full((m, 3), -1, np.int64)
    vals = np.zeros((m, 3), np.float32)
    for i, cs in enumerate(classes):
        top[i, :len(cs)] = cs
        vals[i, :len(cs)] = np.linspace(1.0, 0.5, len(cs))
    ids = np.arange(m, dtype=np.int64) * 3
    return CellLevel(size, 1, ids, np.stack(np.divmod(ids, size), 1), np.zeros((m, 2)), np.asarray(counts),
                     direction, top, vals, np.arange(m)[:, None].astype(np.int64), np.zeros((m, 1), np.int64))


def test_third_class_cells_skip_the_source_target_and_relatives_and_rank_by_push():
    source, target = _c("frying pan"), _c("wok")
    exclude = excluded_classes(source, target, 1000)
    assert {source, target, _c("caldron"), _c("teapot")} <= exclude  # wok's narrow WordNet family
    assert _c("steam locomotive") not in exclude and _c("French horn") not in exclude
    cells = _level(
        pushes=[5.0, 4.0, 3.0, 2.5, 2.0, -1.0, 1.0],
        classes=[[_c("steam locomotive"), source], [_c("caldron")], [_c("French horn"), _c("cornet")],
                 [_c("baseball")], [_c("steam locomotive")], [_c("tench")], [target]],
        counts=[50, 50, 50, 2, 50, 50, 50])
    grad = np.zeros(8)
    grad[0] = 1.0
    got = third_class_cells(cells, grad, exclude, k=5, top=3, min_count=8, class_names=NAMES)
    # cell 0: its top classes hold the source; 1: a relative of the target; 3: too few rows;
    # 5: pushes away from the target; 6: the target itself
    assert [c.iy * 4 + c.ix for c in got] == [6, 12]
    assert [c.score for c in got] == [3.0, 2.0]
    assert got[0].classes == ["French horn", "cornet"] and got[0].example_row == 2
    assert np.allclose(got[1].direction, cells.direction[4])
    # only the first `top` classes count: with top=1 cell 0 (steam locomotive first) is a third class
    assert [c.iy * 4 + c.ix for c in third_class_cells(cells, grad, exclude, k=1, top=1, min_count=8,
                                                       class_names=NAMES)] == [0]
    # a model with other classes than ImageNet's: only the pair itself is left out
    assert excluded_classes(1, 2, 10) == {1, 2}


def test_protocol_counts_every_photo_and_patch_and_chooses_static_on_the_selection():
    # 2 patches x 2 sizes x 2 corners x 6 photos; patch 0 succeeds at (size 1, corner 0) on every
    # photo, patch 1 at (size 0, corner 1) on photos 0-2 only
    hit = np.zeros((2, 2, 2, 6), bool)
    hit[0, 1, 0, :] = True
    hit[1, 0, 1, :3] = True
    prob = np.where(hit, 0.95, 0.05).astype(np.float32)
    counts = ProtocolCounts(hit, prob, np.full(6, 0.01), (0.3, 0.5), ("tl", "br"))
    sel, test = np.array([0, 3]), np.array([1, 2, 4, 5])
    r = protocol_result("third", ["a", "b"], counts, sel, test, labels=["x", "y"])
    # static: on the selection photos (size 1, corner 0) succeeds 2 times, (size 0, corner 1) once
    assert (r.static_size, r.static_corner) == (0.5, "tl")
    assert r.static == pytest.approx(4 / 8)  # patch 0 on all 4 test photos, patch 1 on none
    assert r.dynamic == pytest.approx(6 / 8)  # patch 0: 4 of 4, patch 1: photos 1 and 2
    assert r.per_patch_dynamic == [1.0, 0.5] and r.per_patch_static == [1.0, 0.0]
    assert r.prob_dynamic == pytest.approx((6 * 0.95 + 2 * 0.05) / 8)
    assert r.prob_static == pytest.approx((4 * 0.95 + 4 * 0.05) / 8)
    assert r.prob_before == pytest.approx(0.01) and r.n_photos == 4
    assert r.dynamic_ci[0] <= r.dynamic <= r.dynamic_ci[1] and r.dynamic_ci[1] - r.dynamic_ci[0] > 0.1
    # a rate that is the same for every photo and patch has no spread
    assert two_way_bootstrap(np.ones((3, 5))) == [1.0, 1.0]
    with pytest.raises(ValueError, match="patches, sizes, corners, photos"):
        protocol_result("x", ["a"], ProtocolCounts(hit[0], prob[0], np.zeros(6), (0.3,), ("tl",)), sel, test)


def test_two_way_bootstrap_is_wider_when_patches_differ_than_a_pooled_count_suggests():
    # 10 patches, half work on every photo and half on none: 50% with a wide interval, since a
    # new draw of patches moves it; 10 x 200 independent trials would give about +-2%
    x = np.zeros((10, 200))
    x[:5] = 1
    lo, hi = two_way_bootstrap(x)
    assert lo < 0.3 and hi > 0.7


def _source_target(model, tiny_run):
    from atlas.tools.explain import load_photo

    photos = tiny_run.parent / "photos"
    with torch.no_grad():
        source = int(model(load_photo(photos / "p0.jpg", model)).argmax())
    return model.class_names[source], model.class_names[(source + 1) % 1000], photos


def test_run_protocol_end_to_end_reports_both_kinds_and_the_controls(model, tiny_run, tmp_path):
    source, target, photos = _source_target(model, tiny_run)
    src = tmp_path / "src.txt"
    src.write_text(str(photos / "p0.jpg") + "\n")
    settings = ProtocolSettings(source, target, kind="both", level=4, patches=2, controls=2, patch_px=32, steps=3,
                                sizes=(0.3, 0.5), augment=12, min_count=1, screen=3)
    report = run_protocol(model, tiny_run, settings, images=src, target_images=src, out_dir=tmp_path / "out",
                          progress=False)
    assert list(report.families) == ["third", "third_example", "target", "target_example", "random_cell", "noise"]
    assert report.n_selection + report.n_test == report.n_source_correct
    assert source in report.excluded and target in report.excluded
    third_classes = {c for cand in report.candidates["third"] for c in cand["classes"][:3]}
    assert not third_classes & set(report.excluded)
    for fam, r in report.families.items():
        assert r.n_photos == report.n_test
        assert len(r.per_patch_dynamic) == len(r.members) >= 1
        assert all(d >= s for d, s in zip(r.per_patch_dynamic, r.per_patch_static))  # best placement >= one
        assert r.dynamic == pytest.approx(np.mean(r.per_patch_dynamic))
        assert r.dynamic_ci[0] <= r.dynamic <= r.dynamic_ci[1]
        assert r.static_corner in ("tl", "tr", "bl", "br") and r.static_size in (0.3, 0.5)
    # screening: 3 third-class cells rendered and tried on the selection views, the best 2 kept
    kept = [c for c in report.screening if c.get("kept")]
    assert len(report.screening) == 3 and len(kept) == 2
    assert min(c["selection_dynamic"] for c in kept) >= max(c["selection_dynamic"] for c in report.screening
                                                           if not c.get("kept"))
    assert {tuple(c["cell"]) for c in report.candidates["third"]} == {tuple(c["cell"]) for c in kept}
    with pytest.raises(ValueError, match="screen"):
        ProtocolSettings("a", "b", patches=10, screen=5)
    doc = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert doc["families"]["noise"]["members"] == ["noise 0", "noise 1"]
    assert (tmp_path / "out" / "patches.png").stat().st_size > 0
    assert "| third (" in (tmp_path / "out" / "protocol.md").read_text()


def test_best_of_protocol_with_third_class_candidates(model, tiny_run, tmp_path):
    source, target, photos = _source_target(model, tiny_run)
    src = tmp_path / "src.txt"
    src.write_text(str(photos / "p0.jpg") + "\n")
    settings = AttackSettings(source, target, level=4, candidates=2, random_cells=1, noise_patches=1, patch_px=32,
                              steps=3, sizes=(0.5,), augment=6, kind="third")
    report = run_attack(model, tiny_run, settings, images=src, target_images=src, progress=False)
    assert report.families["example"].members[0].startswith("example of cell")
    excluded = {NAMES[i] for i in excluded_classes(class_index(source), class_index(target), 1000)}
    assert report.candidates and all(not set(c["classes"][:3]) & excluded for c in report.candidates)
    with pytest.raises(ValueError, match="kind must be 'target' or 'third'"):
        AttackSettings("a", "b", kind="both")


def test_cli_article_protocol_as_typed(tiny_run, tmp_path):
    photos = tiny_run.parent / "photos"
    from atlas.models import load_model
    from atlas.tools.explain import load_photo

    model = load_model("inceptionv1", random_init=True)
    with torch.no_grad():
        source = int(model(load_photo(photos / "p0.jpg", model)).argmax())
    src = tmp_path / "src.txt"
    src.write_text(str(photos / "p0.jpg") + "\n")
    cmd = [sys.executable, "-m", "atlas", "-q", "attack", str(tiny_run), "--source", str(source), "--target",
           str((source + 1) % 1000), "--random-init", "--images", str(src), "--target-images", str(src),
           "--level", "4", "--patch-px", "32", "--steps", "2", "--sizes", "0.5", "--augment", "8"]
    r = subprocess.run([*cmd, "--kind", "both"], capture_output=True, text=True)
    assert r.returncode != 0 and "--kind both needs --protocol article" in r.stderr
    r = subprocess.run([*cmd, "--protocol", "article", "--kind", "target", "--patches", "2", "--controls", "1",
                        "-o", str(tmp_path / "cli")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "target candidates" in r.stdout and "| noise (1) |" in r.stdout
    assert (tmp_path / "cli" / "protocol.json").is_file()


def test_atlas_class_attribution_is_the_cells_mean_over_their_rows(tiny_run):
    import h5py

    from atlas.stages.grid import grid_cells

    # the classes the tiny atlas's rows list most often, and one they never list
    with h5py.File(tiny_run / "activations.h5", "r") as f:
        layer = [k for k in f["layers"]][0]
        tc = f[f"layers/{layer}/attribution/top_classes"][:]
        tv = f[f"layers/{layer}/attribution/top_values"][:].astype(np.float64)
    with h5py.File(tiny_run / "layout.h5", "r") as f:
        valid, xy, row_ids = f["valid"][:], f["xy"][:], f["row_ids"][:]
    common = np.bincount(tc.ravel().astype(np.int64)).argsort()[::-1][:2]
    absent = int(np.setdiff1d(np.arange(1000), tc.ravel())[0])
    classes = [int(common[0]), int(common[1]), absent]
    attr, counts = atlas_class_attribution(tiny_run, 4, classes)
    assert attr.shape == (16, 3) and counts.sum() == valid.sum()
    ids = grid_cells(xy[valid], 4)
    rows = row_ids[valid]
    for j, c in enumerate(classes):
        per_row = np.where(tc[rows] == c, tv[rows], 0.0).sum(1)
        for cell in range(16):
            here = ids == cell
            want = per_row[here].mean() if here.any() else 0.0
            assert attr[cell, j] == pytest.approx(want, abs=1e-9)
    assert not attr[:, 2].any()  # a class no row lists has no attribution anywhere
    assert attr[:, 0].any()


def test_ranking_by_the_atlas_rows_attribution(model, tiny_run, tmp_path):
    import h5py

    source, _target, photos = _source_target(model, tiny_run)
    with h5py.File(tiny_run / "activations.h5", "r") as f:  # a target the atlas's rows attribute to
        layer = [k for k in f["layers"]][0]
        listed = np.bincount(f[f"layers/{layer}/attribution/top_classes"][:].ravel().astype(np.int64))
    names = model.class_names
    target = next(names[int(c)] for c in listed.argsort()[::-1] if names[int(c)] != source)
    src = tmp_path / "src.txt"
    src.write_text(str(photos / "p0.jpg") + "\n")
    settings = ProtocolSettings(source, target, kind="third", rank="attribution", level=4, patches=2, controls=1,
                                patch_px=32, steps=2, sizes=(0.5,), augment=8, min_count=1, top=1)
    report = run_protocol(model, tiny_run, settings, images=src, progress=False)
    assert list(report.families) == ["third", "third_example", "random_cell", "noise"]
    attr, _ = atlas_class_attribution(tiny_run, 4, [class_index(target), class_index(source)])
    for c in report.candidates["third"]:  # the score is the cell's target-minus-source attribution
        cell = c["cell"][1] * 4 + c["cell"][2]
        assert c["score"] == pytest.approx(attr[cell, 0] - attr[cell, 1]) and c["score"] > 0
    with pytest.raises(ValueError, match="rank must be one of auto, push, attribution"):
        ProtocolSettings("a", "b", rank="gradient")


def test_the_default_rank_reads_the_atlas_rows_where_it_can_and_pushes_where_it_cannot(model, tiny_run, tmp_path,
                                                                                      monkeypatch):
    import shutil

    import h5py

    import atlas.tools.attack.article as article
    from atlas.tools.attack import atlas_has_attribution

    source, _target, photos = _source_target(model, tiny_run)
    with h5py.File(tiny_run / "activations.h5", "r") as f:
        layer = [k for k in f["layers"]][0]
        listed = np.bincount(f[f"layers/{layer}/attribution/top_classes"][:].ravel().astype(np.int64),
                             minlength=1000)
    names = model.class_names
    target = next(names[int(c)] for c in listed.argsort()[::-1] if names[int(c)] != source)
    never = _target  # no row of the tiny atlas lists it
    assert listed[class_index(never)] == 0
    src = tmp_path / "src.txt"
    src.write_text(str(photos / "p0.jpg") + "\n")

    def run(tgt: str, **kw):
        settings = ProtocolSettings(source, tgt, kind="third", level=4, patches=2, controls=1, patch_px=32, steps=2,
                                    sizes=(0.5,), augment=8, min_count=1, top=1, **kw)
        assert settings.rank == kw.get("rank", "auto")
        r = run_protocol(model, tiny_run, settings, images=src, progress=False)
        return r.settings["rank"], [tuple(c["cell"]) for c in r.candidates["third"]]

    # an atlas collected with attribution, a target its rows list: ranked as --rank attribution ranks
    assert atlas_has_attribution(tiny_run, layer)
    assert run(target) == run(target, rank="attribution") and run(target)[0] == "attribution"
    # a target no row lists gives no attribution ranking: the push ranks instead, as --rank push does
    assert run(never) == run(never, rank="push") and run(never)[0] == "push"
    # an atlas collected without attribution: the push
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("activations.h5", "layout.h5"):
        shutil.copy(tiny_run / name, bare / name)
    with h5py.File(bare / "activations.h5", "a") as f:
        del f[f"layers/{layer}/attribution"]
    assert not atlas_has_attribution(bare, layer)
    monkeypatch.setattr(article, "atlas_has_attribution", lambda run_dir, layer: False)
    assert run(target)[0] == "push"
