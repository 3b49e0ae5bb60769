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

    assert RenderSettings().start == "cold"  # the default
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
