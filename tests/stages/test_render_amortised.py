"""The amortised start (``start="amortised"``): one network trained per render over all the cells'
directions, every cell refined from its own predicted icon; kept beside ``icons.h5`` so that a
killed render resumes to the same icons."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from test_render import FAST, photo_direction_cells, render_killed_at, stop_after_first_grid_4_batch, write_fake_cells

from atlas.models import load_model
from atlas.optvis import directions, evaluate
from atlas.stages.render import render_cells
from atlas.stages.render.amortised import predict_icons, start_file, train_direction_images
from atlas.stages.render.settings import DEFAULT_COSSIM_POW, icon_view_transforms
from atlas.store.icons import read_icons
from tinynet import Tiny

pytestmark = pytest.mark.usefixtures("one_thread")

AMORT = dict(FAST, start="amortised", amortise_steps=30, refine_steps=6, refine_lr=0.08)


@pytest.fixture
def tiny():
    return load_model(Tiny(), input_size=16)


def objective_of(model, layer, vecs, icons_u8):
    x = torch.from_numpy(icons_u8).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        obj = directions(layer, torch.as_tensor(vecs), cossim_pow=DEFAULT_COSSIM_POW, spatial_mean=True)
        return evaluate(model, obj, x).numpy()


def test_the_network_learns_icons_that_score_above_its_untrained_start(tiny):
    vecs = np.random.default_rng(0).random((40, 4)).astype(np.float32)
    transforms = icon_view_transforms("whole")
    untrained = train_direction_images(tiny, "relu2", vecs, transforms, icon_size=40, steps=1, lr=1e-9)
    trained = train_direction_images(tiny, "relu2", vecs, transforms, icon_size=40, steps=150, batch_size=8)
    to_u8 = lambda net: (predict_icons(net, vecs).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    before, after = objective_of(tiny, "relu2", vecs, to_u8(untrained.net)), objective_of(tiny, "relu2", vecs,
                                                                                             to_u8(trained.net))
    assert after.mean() > before.mean() * 1.5, (after.mean(), before.mean())
    assert trained.history[-1] > trained.history[0]
    # one network, one icon per direction: different directions get different icons
    icons = to_u8(trained.net)
    assert np.abs(icons[0].astype(int) - icons[1]).mean() > 1


def test_amortised_render_starts_every_cell_from_its_predicted_icon_and_refines_it(tmp_path, tiny, monkeypatch):
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 4, 4: 9})
    start = render_cells(cells, tmp_path / "start.h5", tiny, **{**AMORT, "refine_steps": 0})
    assert start.complete and start.rendered == {2: 4, 4: 9}
    assert start_file(tmp_path / "start.h5") == tmp_path / "start.start.pt" and (tmp_path / "start.start.pt").exists()
    warm = render_cells(cells, tmp_path / "warm.h5", tiny, **AMORT)
    s, w = read_icons(tmp_path / "start.h5"), read_icons(tmp_path / "warm.h5")
    from atlas.store.cells import read_cells

    levels = read_cells(cells)
    for size in (2, 4):
        # no steps: the network's icon itself, the same for both renders (one seed, the same cells)
        before = objective_of(tiny, "relu2", levels[size].direction, s[size].icons)
        np.testing.assert_allclose(s[size].objective, before, rtol=1e-4, atol=1e-5)
        # the refinement raises the cells' objective above their start's, as the cold path's steps do
        # (a few steps on the tiny net: most cells, and the mean)
        assert (w[size].objective > s[size].objective).mean() >= 0.75, size
        assert w[size].objective.mean() > s[size].objective.mean() * 1.02, size
        assert np.abs(w[size].icons.astype(int) - s[size].icons).mean() > 1
    assert warm.complete and warm.start_seconds > 0 and set(warm.level_seconds) == {2, 4}
    assert "the amortised start" in warm.describe() and "per level 2x2" in warm.describe()
    with h5py.File(tmp_path / "warm.h5", "r") as f:
        assert f.attrs["start"] == "amortised" and f.attrs["refine_steps"] == 6
        warm_hash = f.attrs["settings_hash"]
    with h5py.File(tmp_path / "start.h5", "r") as f:
        assert f.attrs["settings_hash"] != warm_hash
    # current: nothing to do, and nothing trained
    monkeypatch.setattr("atlas.stages.render.amortised.train_direction_images",
                        lambda *a, **k: pytest.fail("trained again"))
    assert render_cells(cells, tmp_path / "warm.h5", tiny, **AMORT).up_to_date
    # another training setting is another render (refused without overwrite, and trained again with it)
    from atlas.store.common import SettingsChangedError

    with pytest.raises(SettingsChangedError, match="amortise_steps"):
        render_cells(cells, tmp_path / "warm.h5", tiny, **{**AMORT, "amortise_steps": 31})
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        render_cells(cells, tmp_path / "warm.h5", tiny, **{**AMORT, "amortise_steps": 31}, overwrite=True)


def test_an_amortised_render_killed_and_resumed_equals_an_uninterrupted_one(tmp_path, tiny):
    """SIGKILL after the network is kept and one batch is written, then in grid 4, then a run to the
    end: the icons of an uninterrupted run, the network trained once."""
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 4, 4: 9})
    full = render_cells(cells, tmp_path / "full.h5", tiny, batch_size=3, **AMORT)
    out = tmp_path / "killed.h5"
    stamps = []
    for kill_at, done in ((1, {2: 3, 4: 0}), (2, {2: 4, 4: 3}), (-1, {2: 4, 4: 9})):
        got = render_killed_at(tmp_path, cells, out, AMORT, kill_at)
        assert {s: int(lv.done.sum()) for s, lv in got.items()} == done
        stamps.append(start_file(out).stat().st_mtime_ns)
    assert len(set(stamps)) == 1  # trained by the first run only
    a = read_icons(tmp_path / "full.h5")
    assert full.complete
    for s in (2, 4):
        np.testing.assert_array_equal(a[s].icons, got[s].icons)
        np.testing.assert_array_equal(a[s].objective, got[s].objective)


def test_atlas_render_start_amortised_as_typed(tmp_path, atlas_cli):
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 3}, channels=512, model="inceptionv1", layer="inception4c")
    out = tmp_path / "icons.h5"
    base = ("-q", "render", "--cells", str(cells), "-o", str(out), "--random-init", "--device", "cpu", "--icon-size",
            "40")
    code, _out, err = atlas_cli(*base, "--start", "amortised", "--amortise-steps", "0")
    assert code == 2 and "--amortise-steps must be at least 1" in err and "Traceback" not in err and not out.exists()
    code, text, err = atlas_cli(*base, "--start", "amortised", "--amortise-steps", "3", "--refine-steps", "2")
    assert code == 0, err
    assert "rendered 3 icons" in text and start_file(out).exists()
    with h5py.File(out, "r") as f:
        assert f.attrs["start"] == "amortised" and f.attrs["complete"]


@pytest.mark.slow
def test_real_amortised_icons_raise_their_objective_and_resume_to_the_same_icons(
        tmp_path, inceptionv1, sample_paths, monkeypatch):
    """Three grid-2 cells and their six grid-4 children (mean inception4c activations of photos of
    dogs, birds and cars, as in the parent start's test); a network trained 200 steps (batches of 3)
    on the nine directions, then 16 steps per cell at the default rate: the icons' objective and
    cosine rise above their starts', to within 0.05 of 64 cold steps'; a render stopped in grid 4
    and resumed gives the same icons."""
    from atlas.stages.render.batch import _icon_cossim

    layer = "inception4c"
    cells, parents, children = photo_direction_cells(tmp_path, inceptionv1, sample_paths)
    kw = dict(steps=64, batch_size=3, device="cpu", progress=False)
    amort = dict(kw, start="amortised", amortise_steps=200, refine_steps=16)  # the refinement at its default lr
    cold = render_cells(cells, tmp_path / "cold.h5", inceptionv1, start="cold", **kw)
    start = render_cells(cells, tmp_path / "start.h5", inceptionv1, **{**amort, "refine_steps": 0})
    warm = render_cells(cells, tmp_path / "warm.h5", inceptionv1, **amort)
    assert cold.complete and start.complete and warm.complete
    c, s, w = (read_icons(tmp_path / f"{n}.h5") for n in ("cold", "start", "warm"))
    vecs = {2: parents, 4: children}
    for size in (2, 4):
        # the steps raise the objective (the mean, and most cells: a good start can dip by a percent)
        assert w[size].objective.mean() > s[size].objective.mean(), (size, w[size].objective, s[size].objective)
        assert (w[size].objective > s[size].objective).mean() >= 0.6, (size, w[size].objective, s[size].objective)
        x = torch.from_numpy(s[size].icons).permute(0, 3, 1, 2).float() / 255
        start_cos = _icon_cossim(inceptionv1, layer, x, vecs[size], spatial_mean=True)
        assert w[size].cossim.mean() > start_cos.mean(), (w[size].cossim, start_cos)
        assert w[size].cossim.mean() > c[size].cossim.mean() - 0.05, (w[size].cossim, c[size].cossim)
    # siblings start from icons of their own directions, not one shared picture
    assert np.abs(s[4].icons[0].astype(int) - s[4].icons[1]).mean() > 2
    # stopped after grid 4's first batch, then resumed: the same icons
    stop_after_first_grid_4_batch(monkeypatch, lambda: render_cells(cells, tmp_path / "resumed.h5", inceptionv1,
                                                                    **amort))
    assert read_icons(tmp_path / "resumed.h5")[4].done.tolist() == [True] * 3 + [False] * 3
    resumed = render_cells(cells, tmp_path / "resumed.h5", inceptionv1, **amort)
    assert resumed.rendered == {2: 0, 4: 3} and resumed.complete
    r = read_icons(tmp_path / "resumed.h5")
    for size in (2, 4):
        np.testing.assert_array_equal(r[size].icons, w[size].icons)


def test_auto_start_is_cold_for_a_small_file_and_amortised_for_a_large_one(tmp_path, tiny, monkeypatch):
    from atlas.stages.render import AUTO_AMORTISED_CELLS, RenderSettings

    assert RenderSettings().start == "auto"  # the default
    auto = RenderSettings(start="auto")
    assert auto.resolve(AUTO_AMORTISED_CELLS - 1).start == "cold"
    assert auto.resolve(AUTO_AMORTISED_CELLS).start == "amortised"
    assert RenderSettings(start="parent").resolve(10**6).start == "parent"
    cells = write_fake_cells(tmp_path / "cells.h5", {2: 4, 4: 9})
    # a small file: the same render (and hash) as start="cold"
    small = render_cells(cells, tmp_path / "auto.h5", tiny, **{**FAST, "start": "auto"})
    assert small.complete and not start_file(tmp_path / "auto.h5").exists()
    assert render_cells(cells, tmp_path / "auto.h5", tiny, **FAST).up_to_date
    # a large file (the threshold lowered): amortised, recorded as such
    monkeypatch.setattr("atlas.stages.render.settings.AUTO_AMORTISED_CELLS", 13)
    big = render_cells(cells, tmp_path / "big.h5", tiny, **{**FAST, "start": "auto", "amortise_steps": 5})
    assert big.complete and start_file(tmp_path / "big.h5").exists()
    with h5py.File(tmp_path / "big.h5", "r") as f:
        assert f.attrs["start"] == "amortised"
    # a render already in the file keeps its start under the default: a finished cold render of
    # this (now large) file is current, not refused or trained again; with overwrite, amortised
    assert RenderSettings(start="auto").resolve(10**6, kept="cold").start == "cold"
    assert RenderSettings(start="cold").resolve(10**6, kept="amortised").start == "cold"  # asked for: asked for
    monkeypatch.setattr("atlas.stages.render.amortised.train_direction_images",
                        lambda *a, **k: pytest.fail("trained"))
    kept = render_cells(cells, tmp_path / "auto.h5", tiny, **FAST)
    assert kept.up_to_date and not start_file(tmp_path / "auto.h5").exists()
    with pytest.raises(pytest.fail.Exception, match="trained"):
        render_cells(cells, tmp_path / "auto.h5", tiny, **FAST, overwrite=True)


def test_the_amortised_start_moves_each_cells_icon_by_its_own_cyclic_shift(tmp_path, tiny, atlas_cli):
    """With ``amortise_shift``: neighbouring cells' directions are close, so the network's icons are close pictures:
    each cell's predicted icon is moved by its own cyclic shift (a function of the seed, the level
    and the cell id) before its steps; ``amortise_shift=False`` keeps the network's layout, and the
    settings hash of the renders made before the setting (the default)."""
    from atlas.stages.render.amortised import cell_shifts, shifted
    from atlas.stages.render.settings import RenderSettings
    from atlas.store.cells import read_cells

    cells = write_fake_cells(tmp_path / "cells.h5", {2: 4, 4: 9})
    render_cells(cells, tmp_path / "moved.h5", tiny, **{**AMORT, "refine_steps": 0, "amortise_shift": True})
    render_cells(cells, tmp_path / "kept.h5", tiny, **{**AMORT, "refine_steps": 0})  # the default: no shift
    moved, kept, levels = read_icons(tmp_path / "moved.h5"), read_icons(tmp_path / "kept.h5"), read_cells(cells)
    for size in (2, 4):
        shifts = cell_shifts(RenderSettings.seed, size, levels[size].cell_id, 40)
        assert shifts.shape == (len(levels[size]), 2) and ((shifts >= 0) & (shifts < 40)).all()
        assert len({tuple(s) for s in shifts}) > 1  # not one shift for all
        # the stored start is the network's icon (the same network: same seed and cells) rolled by the cell's shift
        want = shifted(torch.from_numpy(kept[size].icons).permute(0, 3, 1, 2), shifts).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(moved[size].icons, want)
    # a function of (seed, level, cell) only: the same again, another seed or level differs
    np.testing.assert_array_equal(cell_shifts(0, 4, [3, 5], 80), cell_shifts(0, 4, [3, 5], 80))
    assert not np.array_equal(cell_shifts(0, 4, range(9), 80), cell_shifts(1, 4, range(9), 80))
    assert not np.array_equal(cell_shifts(0, 4, range(9), 80), cell_shifts(0, 8, range(9), 80))
    # a shifted FFT icon is the same periodic picture: shifting back gives the icon again
    icon = torch.rand(1, 3, 40, 40)
    np.testing.assert_array_equal(shifted(shifted(icon, np.array([[7, 33]])), np.array([[33, 7]])), icon)
    # hashed only when on: renders made before the setting (no shift) stay current with it off
    args = ("h", "inceptionv1", "inception4c")
    kw = dict(whiten=None, transforms=icon_view_transforms("whole"))
    assert RenderSettings(start="amortised", amortise_shift=True).hashed(*args, **kw)["amortise_shift"] is True
    assert "amortise_shift" not in RenderSettings(start="amortised").hashed(*args, **kw)
    with h5py.File(tmp_path / "moved.h5", "r") as a, h5py.File(tmp_path / "kept.h5", "r") as b:
        assert a.attrs["settings_hash"] != b.attrs["settings_hash"]
    # as typed
    cells512 = write_fake_cells(tmp_path / "c512.h5", {2: 3}, channels=512, model="inceptionv1", layer="inception4c")
    out = tmp_path / "typed.h5"
    code, text, err = atlas_cli("-q", "render", "--cells", str(cells512), "-o", str(out), "--random-init", "--device",
                                "cpu", "--icon-size", "40", "--start", "amortised", "--amortise-steps", "2",
                                "--refine-steps", "1", "--amortise-shift")
    assert code == 0, err
    with h5py.File(out, "r") as f:
        typed_hash = f.attrs["settings_hash"]
    render_cells(cells512, tmp_path / "api.h5", load_model("inceptionv1", random_init=True, device="cpu"),
                 icon_size=40, start="amortised", amortise_steps=2, refine_steps=1, amortise_shift=True, progress=False)
    with h5py.File(tmp_path / "api.h5", "r") as f:
        assert f.attrs["settings_hash"] == typed_hash
    with pytest.raises(Exception, match="amortise_shift"):
        RenderSettings(amortise_shift="yes")


def test_the_networks_training_options_that_the_benchmark_compares(tiny):
    """The options ``bench_pyramid.py`` measured and did not keep still train: a latent per cell
    (the network then needs one, a function of the cell: :func:`cell_latents`), the layout
    penalty, the contrastive term over anchors and their nearest directions, shifted icons."""
    from atlas.stages.render.amortised import cell_latents

    vecs = np.random.default_rng(1).random((30, 4)).astype(np.float32)
    transforms = icon_view_transforms("whole")
    fit = train_direction_images(tiny, "relu2", vecs, transforms, icon_size=40, steps=4, batch_size=8, latent=3,
                                 diversity=1.0, contrast=1.0, neighbours=4, shift=True)
    assert len(fit.history) == 1 and np.isfinite(fit.history[0]) and fit.net.latent == 3
    with pytest.raises(ValueError, match=r"takes a \(2, 3\) latent"):
        predict_icons(fit.net, vecs[:2])
    z = cell_latents(0, 4, [5, 6], 3)
    np.testing.assert_array_equal(z, cell_latents(0, 4, [5, 6], 3))
    assert not np.array_equal(z[0], z[1])
    icons = predict_icons(fit.net, vecs[:2], z=z)
    assert icons.shape == (2, 3, 40, 40) and not torch.equal(icons, predict_icons(fit.net, vecs[:2], z=-z))
