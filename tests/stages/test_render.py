"""The render stage: cells.h5 -> icons.h5, batched, best of k, deterministic, resumable.

Most tests use a tiny model and a small fake ``cells.h5`` (:func:`write_fake_cells`); the
``shared`` + ``slow`` test renders real InceptionV1 icons for directions built from photos.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from atlas.models import capture, load_model
from atlas.optvis import icon_transforms
from atlas.stages import render as render_mod
from atlas.stages.render import cell_generator, render_cells
from atlas.store.cells import CellLevel, read_cells, write_cells
from atlas.store.common import SettingsChangedError
from atlas.store.icons import IconsFile, read_icons
from tinynet import Tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny():
    return load_model(Tiny(), input_size=16)


def write_fake_cells(path: Path, sizes: dict[int, int], channels: int = 4, *, model: str = "Tiny",
                     layer: str = "relu2", seed: int = 0, directions: dict[int, np.ndarray] | None = None,
                     source: str = "", cell_ids: dict[int, np.ndarray] | None = None) -> Path:
    """A complete ``cells.h5`` with ``sizes`` = {grid size: number of kept cells} and random
    directions (and cell ids, unless given)."""
    rng = np.random.default_rng(seed)
    levels = []
    for size, m in sizes.items():
        ids = np.sort(rng.choice(size * size, m, replace=False)).astype(np.int32)
        if cell_ids and size in cell_ids:
            ids = np.asarray(cell_ids[size], np.int32)
        d = directions[size] if directions and size in directions else rng.random((m, channels)).astype(np.float32)
        levels.append(CellLevel(
            size=size, min_count=1, cell_id=ids, coords=np.stack([ids // size, ids % size], 1),
            center=rng.random((m, 2)).astype(np.float32), count=rng.integers(1, 50, m).astype(np.int32),
            direction=d, top_classes=rng.integers(0, 5, (m, 3)).astype(np.int16),
            top_values=rng.random((m, 3)).astype(np.float32), example_rows=np.full((m, 2), -1, np.int64),
            example_images=np.full((m, 2), -1, np.int64)))
    write_cells(path, levels, settings={"fake": seed, "sizes": list(sizes)},
                attrs={"model": model, "layer": layer, "source": source})
    return path


FAST = dict(icon_size=40, steps=6, device="cpu", progress=False)


def test_render_writes_every_icon_with_the_documented_layout(tmp_path, tiny):
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 3, 4: 5})
    out = tmp_path / "icons.h5"
    summary = render_cells(cells, out, tiny, batch_size=4, **FAST)
    assert summary.complete and summary.rendered == {2: 3, 4: 5} and "icons" in summary.describe()
    with h5py.File(out, "r") as f:
        assert f.attrs["kind"] == "icons" and f.attrs["complete"] and f.attrs["icon_size"] == 40
        assert f.attrs["model"] == "Tiny" and f.attrs["layer"] == "relu2" and f.attrs["steps"] == 6
        assert list(f.attrs["sizes"]) == [2, 4] and f.attrs["settings_hash"]
        g = f["levels/4"]
        assert g["icons"].shape == (5, 40, 40, 3) and g["icons"].dtype == np.uint8
        assert g["done"][:].all() and g["done"].dtype == bool
        assert np.isfinite(g["objective"][:]).all() and np.isfinite(g["cossim"][:]).all()
        with h5py.File(cells, "r") as fc:
            np.testing.assert_array_equal(g["cell_id"][:], fc["levels/4/cell_id"][:])
    icons = read_icons(out)
    assert icons[2].icons.shape == (3, 40, 40, 3) and icons[2].icons.std() > 0
    for size in (2, 4):  # the per-level figure is the mean of the stored per-icon cosines
        assert summary.level_cossim[size] == pytest.approx(float(icons[size].cossim.mean()), abs=1e-6)
    assert "2x2 " in summary.describe() and "4x4 " in summary.describe()
    again = render_cells(cells, out, tiny, batch_size=4, **FAST)
    assert again.up_to_date and "nothing to do" in again.describe()


def test_a_resumed_render_equals_an_uninterrupted_one(tmp_path, tiny, monkeypatch):
    cells = write_fake_cells(tmp_path / "cells.h5", {3: 7, 4: 3})
    full = render_cells(cells, tmp_path / "full.h5", tiny, batch_size=3, **FAST)
    assert full.complete
    # interrupted after the first batch, then resumed
    calls = {"n": 0}
    real_write = IconsFile.write

    def crash_after_first(self, *args, **kwargs):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(IconsFile, "write", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        render_cells(cells, tmp_path / "resumed.h5", tiny, batch_size=3, **FAST)
    monkeypatch.setattr(IconsFile, "write", real_write)
    partial = read_icons(tmp_path / "resumed.h5")
    assert partial[3].done.tolist() == [True] * 3 + [False] * 4 and not partial[4].done.any()
    assert not partial[3].icons[3:].any()
    resumed = render_cells(cells, tmp_path / "resumed.h5", tiny, batch_size=3, **FAST)
    assert resumed.rendered == {3: 4, 4: 3} and resumed.complete
    a, b = read_icons(tmp_path / "full.h5"), read_icons(tmp_path / "resumed.h5")
    for s in (3, 4):
        np.testing.assert_array_equal(a[s].icons, b[s].icons)
        np.testing.assert_array_equal(a[s].objective, b[s].objective)
    assert np.abs(a[3].icons[0].astype(int) - a[3].icons[1]).max() > 10  # different cells do differ


def test_batch_size_changes_icons_only_by_float_rounding_over_few_steps(tmp_path, tiny):
    cells = write_fake_cells(tmp_path / "cells.h5", {3: 5})
    render_cells(cells, tmp_path / "b1.h5", tiny, batch_size=1, **FAST)
    render_cells(cells, tmp_path / "b4.h5", tiny, batch_size=4, **FAST)
    a, b = read_icons(tmp_path / "b1.h5")[3], read_icons(tmp_path / "b4.h5")[3]
    assert np.abs(a.icons.astype(int) - b.icons).max() <= 1
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-4, atol=1e-4)
    # resuming with another batch size is allowed (not part of the settings)
    assert render_cells(cells, tmp_path / "b4.h5", tiny, batch_size=2, **FAST).up_to_date


def test_levels_can_be_rendered_one_at_a_time(tmp_path, tiny):
    """Cold starts: any level alone (with the parent start a level needs the coarser ones first)."""
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 2, 4: 3})
    out = tmp_path / "icons.h5"
    cold = dict(FAST, start="cold")
    first = render_cells(cells, out, tiny, levels=[4], **cold)
    assert first.rendered == {4: 3} and not first.complete
    assert not read_icons(out)[2].done.any()
    again = render_cells(cells, out, tiny, levels=[4], **cold)  # the level asked for is done: a pipeline rerun
    assert again.up_to_date and not again.complete and "4x4 icons" in again.describe()
    assert "nothing to do" in again.describe()
    before = read_icons(out)[4].icons
    second = render_cells(cells, out, tiny, **cold)
    assert second.rendered == {2: 2, 4: 0} and second.complete
    np.testing.assert_array_equal(read_icons(out)[4].icons, before)  # kept, not rendered again


def test_changed_settings_are_refused_and_changed_cells_render_again(tmp_path, tiny):
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 2, 3: 2})
    out = tmp_path / "icons.h5"
    render_cells(cells, out, tiny, **FAST)
    before = out.read_bytes()
    with pytest.raises(SettingsChangedError, match=r"steps: 6 -> 7.*--overwrite") as e:
        render_cells(cells, out, tiny, **{**FAST, "steps": 7})
    assert e.value.changes == {"steps": (6, 7)} and out.read_bytes() == before
    steps = render_cells(cells, out, tiny, **{**FAST, "steps": 7}, overwrite=True)
    assert steps.rendered == {2: 2, 3: 2} and not steps.up_to_date
    # grid 2 gets other directions, grid 3 stays the same: only grid 2 is rendered again
    kept = read_icons(out)[3].icons
    old = read_cells(cells)
    changed = dataclasses.replace(old[2], direction=old[2].direction[::-1].copy())
    write_cells(cells, [changed, old[3]], settings={"fake": 1, "sizes": [2, 3]},
                attrs={"model": "Tiny", "layer": "relu2", "source": ""})
    again = render_cells(cells, out, tiny, **{**FAST, "steps": 7})
    assert again.rendered == {2: 2, 3: 0} and again.complete
    np.testing.assert_array_equal(read_icons(out)[3].icons, kept)


def test_best_of_k_keeps_the_highest_objective(tmp_path, tiny):
    cells = write_fake_cells(tmp_path / "cells.h5", {4: 6})
    render_cells(cells, tmp_path / "k1.h5", tiny, attempts=1, **FAST)
    render_cells(cells, tmp_path / "k3.h5", tiny, attempts=3, **FAST)
    k1, k3 = read_icons(tmp_path / "k1.h5")[4], read_icons(tmp_path / "k3.h5")[4]
    # attempt 0 uses the same seeds in both runs, so the best of three can only be higher
    assert (k3.objective >= k1.objective - 1e-4).all() and (k3.objective > k1.objective + 1e-4).any()


WARM = dict(FAST, start="parent", refine_steps=6, refine_lr=0.04)


def test_parent_rows_are_the_cells_that_hold_them_else_the_closest_direction():
    def level(size, ids, dirs):
        ids = np.asarray(ids, np.int32)
        m = len(ids)
        return CellLevel(size=size, min_count=1, cell_id=ids, coords=np.stack([ids // size, ids % size], 1),
                         center=np.zeros((m, 2), np.float32), count=np.ones(m, np.int32),
                         direction=np.asarray(dirs, np.float32), top_classes=np.zeros((m, 1), np.int16),
                         top_values=np.zeros((m, 1), np.float32), example_rows=np.zeros((m, 1), np.int64),
                         example_images=np.zeros((m, 1), np.int64))

    parent = level(2, [0, 3], [[1, 0], [0, 1]])  # cells (0, 0) and (1, 1); (0, 1) and (1, 0) not kept
    # grid 4: (0, 1) and (1, 0) lie in (0, 0); (3, 3) in (1, 1); (0, 2) in the dropped (0, 1): closest direction
    child = level(4, [1, 4, 15, 2, 3], [[0, 1], [0, 1], [1, 0], [0.2, 1], [1, 0.1]])
    assert render_mod.parent_rows(child, parent).tolist() == [0, 0, 1, 1, 0]
    odd = level(3, [0, 8], [[1, 0], [0, 1]])  # sizes that do not divide: the cell that holds the centre
    # (0, 0) -> (0, 0) and (5, 5) -> (2, 2) whatever their directions; (2, 2) -> the dropped (1, 1)
    assert render_mod.parent_rows(level(6, [0, 35, 14], [[0, 1], [1, 0], [1, 0]]), odd).tolist() == [0, 1, 0]


def test_parent_start_renders_coarse_to_fine_each_cell_from_its_parents_icon(tmp_path, tiny):
    from atlas.store.cells import read_cells

    cells = write_fake_cells(tmp_path / "cells.h5", {2: 4, 4: 9})  # every grid-4 cell's parent is kept
    levels = read_cells(cells)
    up = render_mod.parent_rows(levels[4], levels[2])
    np.testing.assert_array_equal(levels[2].coords[up], levels[4].coords // 2)
    # grid 4 asked for: its parents' grid 2 is rendered first, from noise, as a cold render does
    start = render_cells(cells, tmp_path / "start.h5", tiny, levels=[4], **{**WARM, "refine_steps": 0})
    assert start.rendered == {2: 4, 4: 9} and start.complete
    render_cells(cells, tmp_path / "cold.h5", tiny, **{**FAST, "start": "cold"})
    s0, c = read_icons(tmp_path / "start.h5"), read_icons(tmp_path / "cold.h5")
    np.testing.assert_array_equal(s0[2].icons, c[2].icons)
    # no refinement: each cell's icon is its parent's icon (through the 8-bit round trip)
    assert np.abs(s0[4].icons.astype(int) - s0[2].icons[up]).max() <= 2
    # refinement raises every cell's objective above its start's, as the cold path's steps do
    warm = render_cells(cells, tmp_path / "warm.h5", tiny, **WARM)
    w = read_icons(tmp_path / "warm.h5")
    assert warm.complete and (w[4].objective > s0[4].objective).all()
    np.testing.assert_array_equal(w[2].icons, c[2].icons)
    assert np.abs(w[4].icons.astype(int) - s0[4].icons).mean() > 1  # the steps moved the icons
    with h5py.File(tmp_path / "warm.h5", "r") as f:
        assert f.attrs["start"] == "parent" and f.attrs["refine_steps"] == 6
    # the start and the refinement steps are settings: another value is another render
    hashes = set()
    for name in ("cold", "warm", "start"):
        with h5py.File(tmp_path / f"{name}.h5", "r") as f:
            hashes.add(f.attrs["settings_hash"])
    assert len(hashes) == 3
    assert render_cells(cells, tmp_path / "warm.h5", tiny, **WARM).up_to_date
    with pytest.raises(ValueError, match="start must be one of 'auto', 'cold', 'amortised', 'parent', got 'warm'"):
        render_cells(cells, tmp_path / "x.h5", tiny, **{**WARM, "start": "warm"})


_KILLED_RENDER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from tinynet import Tiny
from atlas.models import load_model
from atlas.stages.render import render_cells
from atlas.store.icons import IconsFile

kill_at, real, n = int(sys.argv[3]), IconsFile.write, [0]

def write(self, *args, **kwargs):
    if n[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    n[0] += 1
    return real(self, *args, **kwargs)

IconsFile.write = write
render_cells(sys.argv[1], sys.argv[2], load_model(Tiny(), input_size=16), batch_size=3, **{settings!r})
"""


def render_killed_at(tmp_path: Path, cells: Path, out: Path, settings: dict, kill_at: int) -> dict:
    """``render_cells(cells, out, Tiny, batch_size=3, **settings)`` in a child process that is
    SIGKILLed just before its ``kill_at``-th write of a batch (-1: never); the icons of ``out`` after it."""
    import subprocess
    import sys

    script = tmp_path / "render.py"
    script.write_text(_KILLED_RENDER.format(tests=str(Path(__file__).parents[1]), settings=settings))
    proc = subprocess.run([sys.executable, str(script), str(cells), str(out), str(kill_at)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == (-9 if kill_at >= 0 else 0), proc.stderr[-2000:]
    return read_icons(out)


def test_a_parent_render_killed_and_resumed_equals_an_uninterrupted_one(tmp_path, tiny):
    """SIGKILL in the middle of the coarse level, then in the middle of the fine level (batches of
    3: grid 2 is 2 batches, grid 4 is 3), then a run to the end: the icons of an uninterrupted run."""
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 4, 4: 9})
    full = render_cells(cells, tmp_path / "full.h5", tiny, batch_size=3, **WARM)
    out = tmp_path / "killed.h5"
    for kill_at, done in ((1, {2: 3, 4: 0}), (2, {2: 4, 4: 3}), (-1, {2: 4, 4: 9})):
        got = render_killed_at(tmp_path, cells, out, WARM, kill_at)
        assert {s: int(lv.done.sum()) for s, lv in got.items()} == done
    a = read_icons(tmp_path / "full.h5")
    assert full.complete
    for s in (2, 4):
        np.testing.assert_array_equal(a[s].icons, got[s].icons)
        np.testing.assert_array_equal(a[s].objective, got[s].objective)


def write_fake_activations(path: Path, acts: np.ndarray, layer: str = "relu2") -> Path:
    """The parts of ``activations.h5`` that whitening reads (see :mod:`atlas.store.activations`)."""
    with h5py.File(path, "w") as f:
        f.attrs.update(kind="activations", complete=True, layers=[layer], model="Tiny", atlas_version="0.1.0")
        g = f.create_group(f"layers/{layer}")
        g.attrs.update(n_rows=len(acts), channels=acts.shape[1], grid_shape=(4, 4))
        g.create_dataset("activations", data=acts.astype(np.float16))
        f.create_dataset("images/key", data=np.array([b"a"]))
    return path


def test_whitening_from_activations_streams_the_inverse_covariance(tmp_path, tiny):
    from atlas.optvis import whitening_matrix
    from atlas.stages.render import whitening_from_activations

    acts = np.abs(np.random.default_rng(0).normal(size=(1000, 4))).astype(np.float16)
    path = write_fake_activations(tmp_path / "activations.h5", acts)
    s = whitening_from_activations(path, chunk_rows=300)
    np.testing.assert_allclose(s, whitening_matrix(acts.astype(np.float32)), rtol=1e-4)
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 2}, source=str(path))
    plain = render_cells(cells, tmp_path / "plain.h5", tiny, **FAST)
    white = render_cells(cells, tmp_path / "white.h5", tiny, whiten=True, **FAST)
    assert white.rendered == plain.rendered == {2: 2}
    with h5py.File(tmp_path / "white.h5", "r") as f:
        assert f.attrs["whiten"] and '"whiten": null' not in f.attrs["settings_json"]
    assert not np.array_equal(read_icons(tmp_path / "plain.h5")[2].icons, read_icons(tmp_path / "white.h5")[2].icons)
    missing = write_fake_cells(tmp_path / "cells2.h5", {2: 2}, source=str(tmp_path / "gone.h5"))
    with pytest.raises(ValueError, match="whitening_from_activations"):
        render_cells(missing, tmp_path / "w2.h5", tiny, whiten=True, **FAST)


def test_cell_generators_are_distinct_and_stable():
    a = cell_generator(0, 20, 5).initial_seed()
    assert a == cell_generator(0, 20, 5).initial_seed()
    others = {cell_generator(0, 20, 6).initial_seed(), cell_generator(0, 40, 5).initial_seed(),
              cell_generator(1, 20, 5).initial_seed(), cell_generator(0, 20, 5, attempt=1).initial_seed()}
    assert a not in others and len(others) == 4


def test_render_errors_name_the_fix(tmp_path, tiny):
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 2}, model="inceptionv1")
    with pytest.raises(ValueError, match="--model inceptionv1"):
        render_cells(cells, tmp_path / "i.h5", tiny, **FAST)
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 2})
    with pytest.raises(ValueError, match="pick from those"):
        render_cells(cells, tmp_path / "i.h5", tiny, levels=[3], **FAST)
    with pytest.raises(ValueError, match="too small for the transforms"):
        render_cells(cells, tmp_path / "i.h5", tiny, **{**FAST, "icon_size": 20},
                     transforms=icon_transforms(pad_width=2, pad_value=1.0))
    with pytest.raises(ValueError, match="batch_size"):
        render_cells(cells, tmp_path / "i.h5", tiny, batch_size=0, **FAST)
    with pytest.raises(ValueError, match="icon_view must be one of 'whole', 'wide', 'notebooks'"):
        render_cells(cells, tmp_path / "i.h5", tiny, icon_view="center", **FAST)
    with h5py.File(cells, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        render_cells(cells, tmp_path / "i.h5", tiny, **FAST)
    bad = write_fake_cells(tmp_path / "bad.h5", {2: 2}, layer="nope")
    with pytest.raises(ValueError, match="no layer"):
        render_cells(bad, tmp_path / "i.h5", tiny, **FAST)


# --------------------------------------------------------------------------- the real InceptionV1


@pytest.mark.shared
@pytest.mark.slow
def test_icons_point_along_their_cell_direction_more_than_member_photos(tmp_path, inceptionv1, sample_paths):
    """Directions: the mean inception4c activation over the central 4 x 4 positions of 6 photos of
    related classes (dogs, birds, cars). Members: those 96 activation vectors. The icons (80 px,
    96 steps, the render stage's defaults otherwise) must have a higher cosine to their direction,
    read as the default objective reads it (the activation averaged over the icon's positions),
    than the members have on average."""
    from PIL import Image

    layer = "inception4c"
    groups = [range(200, 206), range(10, 16), [817, 751, 656, 705, 511, 436]]
    vecs, member_cos = [], []
    for idx in groups:
        x = torch.stack([inceptionv1.image_transform(Image.open(sample_paths[i])) for i in idx])
        with torch.no_grad(), capture(inceptionv1, [layer], detach=True) as a:
            inceptionv1(x)
        rows = a[layer][:, :, 5:9, 5:9].permute(0, 2, 3, 1).reshape(-1, a[layer].shape[1])
        v = rows.mean(0)
        vecs.append(v.numpy())
        member_cos.append(float(torch.nn.functional.cosine_similarity(rows, v[None], dim=1).mean()))
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 3}, model="inceptionv1", layer=layer,
                             directions={2: np.stack(vecs)}, channels=512)
    out = tmp_path / "icons.h5"
    summary = render_cells(cells, out, inceptionv1, steps=96, batch_size=3, device="cpu", progress=False)
    assert summary.complete
    icons = read_icons(out)[2]
    # recompute the stored cosine from the stored (uint8) icons
    x = torch.from_numpy(icons.icons).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad(), capture(inceptionv1, [layer], detach=True) as a:
        inceptionv1(x)
    assert render_mod.DEFAULT_ICON_OBJECTIVE == "mean"
    act = a[layer].mean(dim=(2, 3))
    cos = torch.nn.functional.cosine_similarity(act, torch.from_numpy(np.stack(vecs)), dim=1).numpy()
    np.testing.assert_allclose(cos, icons.cossim, atol=0.02)
    for i, (c, m) in enumerate(zip(cos, member_cos)):
        assert c > m + 0.03, (i, float(c), m)
    assert render_mod.DEFAULT_COSSIM_POW > 0


def photo_direction_cells(tmp_path: Path, inceptionv1, sample_paths) -> tuple[Path, np.ndarray, np.ndarray]:
    """A ``cells.h5`` of real inception4c directions: grid 2, three cells (0, 0), (0, 1), (1, 0)
    whose directions are the mean activation (central 4 x 4 positions) of 6 photos of related
    classes (dogs, birds, cars); grid 4, each one's two children side by side, the means of 3 of
    those photos. Returns the file and the parents' (3, 512) and children's (6, 512) directions."""
    from PIL import Image

    layer = "inception4c"
    groups = [range(200, 206), range(10, 16), [817, 751, 656, 705, 511, 436]]
    parents, children = [], []
    for idx in groups:
        x = torch.stack([inceptionv1.image_transform(Image.open(sample_paths[i])) for i in idx])
        with torch.no_grad(), capture(inceptionv1, [layer], detach=True) as a:
            inceptionv1(x)
        per_photo = a[layer][:, :, 5:9, 5:9].mean(dim=(2, 3))
        parents.append(per_photo.mean(0).numpy())
        children += [per_photo[:3].mean(0).numpy(), per_photo[3:].mean(0).numpy()]
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 3, 4: 6}, model="inceptionv1", layer=layer, channels=512,
                             directions={2: np.stack(parents), 4: np.stack(children)},
                             cell_ids={2: [0, 1, 2], 4: [0, 1, 2, 3, 8, 9]})
    return cells, np.stack(parents), np.stack(children)


def stop_after_first_grid_4_batch(monkeypatch, render) -> None:
    """Call ``render()`` with :meth:`IconsFile.write` raising KeyboardInterrupt at grid 4's second
    batch (so one grid-4 batch is written), then restore it."""
    real_write, calls = IconsFile.write, {"n": 0}

    def stop_in_grid_4(self, size, *args, **kwargs):
        if size == 4 and calls["n"]:
            raise KeyboardInterrupt
        calls["n"] += size == 4
        return real_write(self, size, *args, **kwargs)

    monkeypatch.setattr(IconsFile, "write", stop_in_grid_4)
    with pytest.raises(KeyboardInterrupt):
        render()
    monkeypatch.setattr(IconsFile, "write", real_write)


@pytest.mark.shared
@pytest.mark.slow
def test_real_icons_refined_from_their_parents_raise_their_objective_and_resume_to_the_same_icons(
        tmp_path, inceptionv1, sample_paths, monkeypatch):
    """Grid 2: three cells whose directions are the mean inception4c activation (central 4 x 4
    positions) of 6 photos of related classes (dogs, birds, cars); grid 4: two children each, the
    means of 3 of those photos (further from their parents than neighbouring cells of an atlas).
    Started from their parents' icons, 16 refinement steps raise every child's objective and its
    cosine above its start's, to near 64 cold steps'; a render stopped in the middle of grid 4 and
    resumed gives the same icons."""
    from atlas.optvis import directions, evaluate
    from atlas.stages.render.batch import _icon_cossim

    layer = "inception4c"
    cells, parents, children = photo_direction_cells(tmp_path, inceptionv1, sample_paths)
    kw = dict(steps=64, batch_size=3, device="cpu", progress=False)
    cold = render_cells(cells, tmp_path / "cold.h5", inceptionv1, start="cold", **kw)
    warm = render_cells(cells, tmp_path / "warm.h5", inceptionv1, start="parent", refine_steps=16, **kw)
    assert cold.complete and warm.complete
    c, w = read_icons(tmp_path / "cold.h5"), read_icons(tmp_path / "warm.h5")
    np.testing.assert_array_equal(c[2].icons, w[2].icons)  # the coarse level is the cold render
    start = torch.from_numpy(w[2].icons[[0, 0, 1, 1, 2, 2]]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        objective = directions(layer, torch.from_numpy(children), cossim_pow=render_mod.DEFAULT_COSSIM_POW,
                               spatial_mean=True)
        before = evaluate(inceptionv1, objective, start).numpy()
    assert (w[4].objective > before).all(), (w[4].objective, before)
    start_cos = _icon_cossim(inceptionv1, layer, start, children, spatial_mean=True)
    assert w[4].cossim.mean() > start_cos.mean() + 0.01, (w[4].cossim, start_cos)
    assert w[4].cossim.mean() > c[4].cossim.mean() - 0.05, (w[4].cossim, c[4].cossim)
    # stopped after grid 4's first batch, then resumed: the same icons
    stop_after_first_grid_4_batch(monkeypatch, lambda: render_cells(
        cells, tmp_path / "resumed.h5", inceptionv1, start="parent", refine_steps=16, **kw))
    assert read_icons(tmp_path / "resumed.h5")[4].done.tolist() == [True] * 3 + [False] * 3
    resumed = render_cells(cells, tmp_path / "resumed.h5", inceptionv1, start="parent", refine_steps=16, **kw)
    assert resumed.rendered == {2: 0, 4: 3} and resumed.complete
    r = read_icons(tmp_path / "resumed.h5")
    for size in (2, 4):
        np.testing.assert_array_equal(r[size].icons, w[size].icons)


def test_icon_views_show_the_model_the_documented_window(tmp_path, tiny):
    from atlas.optvis.transform import apply
    from atlas.stages.render import icon_view_transforms

    x = torch.rand(2, 3, 80, 80)
    assert apply(icon_view_transforms("whole"), x, torch.Generator()).shape[-1] == 78
    assert apply(icon_view_transforms("notebooks"), x, torch.Generator()).shape[-1] == 50
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 2})
    a = render_cells(cells, tmp_path / "a.h5", tiny, **FAST)
    b = render_cells(cells, tmp_path / "b.h5", tiny, icon_view="notebooks", **FAST)
    with h5py.File(tmp_path / "a.h5", "r") as fa, h5py.File(tmp_path / "b.h5", "r") as fb:
        assert fa.attrs["settings_hash"] != fb.attrs["settings_hash"]  # another view is another render
    assert a.complete and b.complete


def test_icon_objective_setting_keeps_center_renders_current_and_checks_its_value(tmp_path):
    """``objective="center"`` hashes as renders made before the setting existed (so an
    existing icons.h5, such as the real-1m run's, stays current); ``"mean"`` is another render;
    anything else is refused by name."""
    from atlas.stages.render import render_settings

    kw = dict(icon_size=80, steps=8, attempts=1, lr=0.05, cossim_pow=4.0, seed=0, whiten=None, transforms=[])
    before = render_settings("h", "m", "inception4c", **kw)
    assert render_settings("h", "m", "inception4c", objective="center", **kw) == before
    assert before["objective"] == "directions(neuron, center)"
    assert render_settings("h", "m", "inception4c", objective="mean", **kw)["objective"] == "directions(mean)"
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 1})
    with pytest.raises(ValueError, match="objective must be one of 'mean', 'center', got 'middle'"):
        render_cells(cells, tmp_path / "icons.h5", load_model(Tiny(), input_size=16), objective="middle",
                     progress=False)


# --------------------------------------------------------------------------- settings at the door


def test_render_steps_zero_and_other_bad_values_are_refused_before_any_work(tmp_path, atlas_cli):
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 2}, channels=512, model="inceptionv1", layer="inception4c")
    out = tmp_path / "icons.h5"
    base = ("render", "--cells", str(cells), "-o", str(out), "--random-init", "--device", "cpu")
    for option, value in (("--steps", "0"), ("--attempts", "0"), ("--icon-size", "4"), ("--batch-size", "0"),
                          ("--lr", "0"), ("--lr", "nan"), ("--cossim-pow", "-1"), ("--border-prior", "-0.5"),
                          ("--levels", "2,x")):
        code, _out, err = atlas_cli(*base, option, value)
        assert code == 2 and option in err and "Traceback" not in err, (option, value, err)
        assert not out.exists(), option
    with pytest.raises(ValueError, match="steps must be at least 1"):
        render_cells(cells, out, load_model(Tiny(), input_size=16), **{**FAST, "steps": 0})
