"""Aligned atlases: the least-squares maps and their held-out R^2, the joint layout, and the whole
aligned atlas of a tiny run (two layers of one model, and a second model collected for the purpose)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlas.checks import SettingError
from atlas.stages.aligned import (
    AlignedSettings,
    AlignedSide,
    RowsMismatchError,
    SideRows,
    check_rows_line_up,
    fit_linear_map,
    fit_maps_file,
    joint_layout,
    r2_score,
)
from atlas.stages.aligned.fit import heldout_images, load_maps
from atlas.stages.reduce import ReduceSettings
from atlas.store.common import SettingsChangedError
from atlas.store.layout import read_layout

pytestmark = pytest.mark.usefixtures("one_thread")

# ---- synthetic activations


def write_acts(path: Path, layers: dict[str, np.ndarray], *, n_images: int, positions: np.ndarray | None = None,
               keys: list[str] | None = None) -> Path:
    """An ``activations.h5`` whose layers hold ``layers`` (rows ordered by photo, as collect writes them)."""
    n = len(next(iter(layers.values())))
    image_index = np.sort(np.arange(n) % n_images).astype(np.int64)
    pos = positions if positions is not None else np.stack([np.arange(n) % 5, np.arange(n) % 3], 1).astype(np.int16)
    keys = keys or [f"photo_{i:03d}.jpg" for i in range(n_images)]
    with h5py.File(path, "w") as f:
        f.attrs.update(atlas_version="0.1.0", kind="activations", model="synthetic", layers=list(layers),
                       source="synthetic", n_images=n_images, n_skipped=0, top_k=1, settings_json="{}",
                       settings_hash=f"h{path.stem}", artifact_id=f"id{path.stem}", complete=True)
        f.create_dataset("images/key", data=np.array(keys, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("images/label", data=np.full(n_images, -1, np.int32))
        f.create_dataset("images/status", data=np.zeros(n_images, np.uint8))
        for name, x in layers.items():
            g = f.create_group(f"layers/{name}")
            g.attrs.update(n_rows=n, channels=x.shape[1], grid_shape=(7, 7), sampling="random")
            g.create_dataset("activations", data=x.astype(np.float32))
            g.create_dataset("image_index", data=image_index)
            g.create_dataset("position", data=pos)
    return path


def clusters(rng: np.random.Generator, n: int, channels: int, k: int = 5) -> np.ndarray:
    """Non-negative rows around ``k`` directions, like a layer's activations."""
    centers = rng.gamma(1.0, 1.0, size=(k, channels))
    return np.maximum(centers[rng.integers(0, k, n)] + rng.normal(0, 0.15, (n, channels)), 0)


# ---- the maps


def test_least_squares_recovers_a_known_map_and_scores_it(rng) -> None:
    a = rng.normal(size=(600, 6))
    m = rng.normal(size=(6, 4))
    lm = fit_linear_map(a[:480], a[:480] @ m + 2.0)  # the intercept takes the offset
    np.testing.assert_allclose(lm.w, m, atol=1e-5)
    np.testing.assert_allclose(lm.bias, 2.0, atol=1e-5)
    exact = r2_score(a[480:] @ m + 2.0, lm(a[480:]))
    assert exact.total > 0.999999 and exact.mean_per_channel > 0.999999 and exact.channels == 4
    shrunk = fit_linear_map(a[:480], a[:480] @ m, ridge=0.1)  # a ridge shrinks the map toward the mean
    assert 0.9 < r2_score(a[480:] @ m, shrunk(a[480:])).total < exact.total
    b = rng.normal(size=(600, 4))  # independent of a: the map explains nothing of held-out rows
    none = r2_score(b[480:], fit_linear_map(a[:480], b[:480])(a[480:]))
    assert abs(none.total) < 0.1 and abs(none.mean_per_channel) < 0.1
    # R^2 = 1 - SSE/SST by hand, on a 3 x 1 example
    y, y_hat = np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [2.0]])
    assert r2_score(y, y_hat).total == pytest.approx(1 - 1 / 2)


def test_the_ridge_is_chosen_on_validation_rows(rng) -> None:
    """Few noisy rows for many channels want a large ridge; many rows of an exact map the smallest.
    The validation error from moments is the error of the fitted map on the validation rows."""
    from atlas.stages.aligned.fit import DEFAULT_RIDGES, Moments, choose_ridge, fit_direction, validation_errors

    def moments(x, y):
        mo = Moments(x.shape[1], y.shape[1])
        mo.add(x, y)
        return mo

    def noisy(n):
        x = rng.normal(size=(n, 40))
        return x, x @ rng.normal(size=(40, 5)) * 0.1 + rng.normal(size=(n, 5))

    few, val = moments(*noisy(50)), moments(*noisy(400))
    assert choose_ridge(few, val, True, DEFAULT_RIDGES) >= 0.3
    x = rng.normal(size=(3000, 8))
    y = x @ rng.normal(size=(8, 5))
    assert choose_ridge(moments(x[:2000], y[:2000]), moments(x[2000:], y[2000:]), True, DEFAULT_RIDGES) == 1e-3
    assert choose_ridge(few, val, True, (0.5,)) == 0.5
    xv, yv = noisy(30)
    direct = [((yv - fit_direction(few, True, r)(xv)) ** 2).sum() for r in (0.01, 1.0)]
    np.testing.assert_allclose(validation_errors(few, moments(xv, yv), True, (0.01, 1.0)), direct, rtol=1e-5)
    direct = [((xv - fit_direction(few, False, r)(yv)) ** 2).sum() for r in (0.01, 1.0)]  # b -> a
    np.testing.assert_allclose(validation_errors(few, moments(xv, yv), False, (0.01, 1.0)), direct, rtol=1e-5)


def test_a_constant_channel_is_left_out_of_the_mean_per_channel(rng) -> None:
    y = np.c_[rng.normal(size=50), np.full(50, 3.0)]
    score = r2_score(y, y)
    assert score.channels == 1 and score.mean_per_channel == 1.0 and score.total == 1.0


def test_whole_photos_are_held_out(rng) -> None:
    image_index = np.repeat(np.arange(10), 4)
    held = heldout_images(image_index, 0.2, seed=3)
    assert len(held) == 2 and set(held) <= set(range(10))
    assert (heldout_images(image_index, 0.2, seed=3) == held).all()
    assert len(heldout_images(image_index, 0.99)) == 9  # one photo is always left to fit on
    with pytest.raises(ValueError, match="at least 2"):
        heldout_images(np.zeros(5, int), 0.2)


def test_fit_step_writes_maps_and_fit_json_and_skips_when_current(tmp_path: Path, rng) -> None:
    a = clusters(rng, 400, 6)
    m = rng.normal(size=(6, 6))
    acts = write_acts(tmp_path / "acts.h5", {"la": a, "lb": a @ m, "noise": rng.normal(size=(400, 5))}, n_images=40)
    sa, sb = SideRows("a", acts, "la", "synthetic · la"), SideRows("b", acts, "lb", "synthetic · lb")
    s = fit_maps_file(sa, sb, tmp_path / "maps.h5", holdout=0.25, seed=1, fit_json=tmp_path / "fit.json",
                      progress=False)
    assert s.a_to_b.total > 0.999 and s.b_to_a.total > 0.999 and not s.up_to_date
    doc = json.loads((tmp_path / "fit.json").read_text())
    assert doc["held_out"] == {"rows": 100, "images": 10, "fraction": 0.25} and doc["train"]["images"] == 30
    assert doc["validation"]["images"] == 8 and doc["ridge"]["a_to_b"] in doc["ridge"]["candidates"]
    assert doc["r2"]["a_to_b"]["total"] == pytest.approx(s.a_to_b.total)
    assert doc["a"]["layer"] == "la" and doc["b"]["channels"] == 6 and doc["maps"] == "maps.h5"
    maps = load_maps(tmp_path / "maps.h5")
    assert r2_score(a @ m, maps.ab(a)).total > 0.999 and r2_score(a, maps.ba(a @ m)).total > 0.999
    again = fit_maps_file(sa, sb, tmp_path / "maps.h5", holdout=0.25, seed=1, progress=False)
    assert again.up_to_date and "nothing to do" in again.describe()
    noise = fit_maps_file(sa, SideRows("b", acts, "noise"), tmp_path / "noise.h5", holdout=0.25, progress=False)
    assert noise.a_to_b.total < 0.1


def test_rows_that_do_not_line_up_are_refused_naming_what_differs(tmp_path: Path, rng) -> None:
    x = rng.normal(size=(30, 4))
    base = write_acts(tmp_path / "base.h5", {"l": x}, n_images=10)
    moved = np.stack([np.arange(30) % 4, np.arange(30) % 2], 1).astype(np.int16)
    cases = {
        "fewer.h5": ({"l": x[:27]}, {"n_images": 9}, "9 photos"),
        "other.h5": ({"l": x}, {"n_images": 10, "keys": [f"q{i}.jpg" for i in range(10)]}, "'photo_000.jpg'"),
        "moved.h5": ({"l": x}, {"n_images": 10, "positions": moved}, "other positions"),
    }
    for name, (layers, kw, says) in cases.items():
        other = write_acts(tmp_path / name, layers, **kw)
        with pytest.raises(RowsMismatchError, match="do not line up") as e:
            check_rows_line_up(SideRows("a", base, "l"), SideRows("b", other, "l"))
        assert says in str(e.value), str(e.value)
    assert check_rows_line_up(SideRows("a", base, "l"), SideRows("b", base, "l")) == 30


# ---- the joint layout

SMALL_UMAP = ReduceSettings(n_neighbors=8, random_state=0, sample_size=500)


def test_identical_sides_get_one_layout(tmp_path: Path, rng) -> None:
    acts = write_acts(tmp_path / "acts.h5", {"l": clusters(rng, 240, 8)}, n_images=60)
    side = SideRows("a", acts, "l")
    fit_maps_file(side, side, tmp_path / "maps.h5", holdout=0.2, progress=False)
    s = joint_layout(side, side, tmp_path / "maps.h5", tmp_path / "a" / "layout.h5", tmp_path / "b" / "layout.h5",
                     SMALL_UMAP, progress=False)
    la, lb = read_layout(tmp_path / "a" / "layout.h5"), read_layout(tmp_path / "b" / "layout.h5")
    assert s.rows == 240 and len(la.xy) == len(lb.xy) == 240 and la.valid.all() and lb.valid.all()
    assert np.abs(la.xy - lb.xy).max() < 0.02
    assert la.attrs["norm_lo"] == lb.attrs["norm_lo"] and la.attrs["aligned_side"] == "a"


def test_two_layers_share_one_map_where_pairs_lie_close(tmp_path: Path, rng) -> None:
    """Where each side predicts the other (held-out R^2 near 1 both ways), row i of side a and row i
    of side b land together. (Where one way is poor, e.g. b = relu(a M) with fewer channels than a,
    half of each joint vector disagrees and pairs only share a cluster: that is the method's.)"""
    a = clusters(rng, 300, 8)
    b = a @ rng.normal(size=(8, 8)) + rng.normal(0, 0.05, (300, 8))
    acts = write_acts(tmp_path / "acts.h5", {"la": a, "lb": b}, n_images=75)
    sa, sb = SideRows("a", acts, "la"), SideRows("b", acts, "lb")
    fit_maps_file(sa, sb, tmp_path / "maps.h5", holdout=0.2, progress=False)
    paths = tmp_path / "a" / "layout.h5", tmp_path / "b" / "layout.h5"
    joint_layout(sa, sb, tmp_path / "maps.h5", *paths, SMALL_UMAP, mode="mapped", progress=False)
    la, lb = (read_layout(p) for p in paths)
    np.testing.assert_array_equal(la.row_ids, lb.row_ids)
    pairs = np.linalg.norm(la.xy - lb.xy, axis=1)
    strangers = np.linalg.norm(la.xy - lb.xy[rng.permutation(300)], axis=1)
    assert np.median(pairs) < 0.05 * np.median(strangers), (np.median(pairs), np.median(strangers))
    dist = np.linalg.norm(la.xy[:, None] - lb.xy[None], axis=2)  # a's row i to every row of b
    rank = (dist < np.diag(dist)[:, None]).sum(axis=1)  # how many rows of b lie nearer than its pair
    assert (rank < 10).mean() > 0.9
    assert joint_layout(sa, sb, tmp_path / "maps.h5", *paths, SMALL_UMAP, mode="mapped", progress=False).up_to_date


def test_the_joint_layout_puts_a_row_s_two_sides_at_one_place_where_the_maps_fit_poorly(tmp_path: Path, rng) -> None:
    """b a nonlinear function of a with other clusters: the linear maps fit poorly, and Lucid's
    mapped layout parts the two sides; the joint layout places every row once, for both sides."""
    a = clusters(rng, 300, 8)
    b = np.maximum(np.sin(3 * a) @ rng.normal(size=(8, 6)), 0) + clusters(rng, 300, 6)
    acts = write_acts(tmp_path / "acts.h5", {"la": a, "lb": b}, n_images=75)
    sa, sb = SideRows("a", acts, "la"), SideRows("b", acts, "lb")
    fit_maps_file(sa, sb, tmp_path / "maps.h5", holdout=0.2, progress=False)
    spread = {}
    for mode in ("joint", "mapped"):
        paths = tmp_path / mode / "a.h5", tmp_path / mode / "b.h5"
        joint_layout(sa, sb, tmp_path / "maps.h5", *paths, SMALL_UMAP, mode=mode, progress=False)
        la, lb = (read_layout(p) for p in paths)
        pairs = np.linalg.norm(la.xy - lb.xy, axis=1)
        strangers = np.linalg.norm(la.xy - lb.xy[rng.permutation(300)], axis=1)
        spread[mode] = np.median(pairs) / np.median(strangers)
        if mode == "joint":
            np.testing.assert_array_equal(la.xy, lb.xy)  # one place per row, for both sides
            assert la.valid.all() and la.attrs["aligned_side"] == "a" and lb.attrs["aligned_side"] == "b"
    assert spread["joint"] == 0 and spread["mapped"] > 0.1, spread
    with pytest.raises(SettingsChangedError):  # the mode is a setting of the files
        joint_layout(sa, sb, tmp_path / "maps.h5", tmp_path / "joint" / "a.h5", tmp_path / "joint" / "b.h5",
                     SMALL_UMAP, mode="mapped", progress=False)


def test_settings_name_the_bad_key() -> None:
    a = AlignedSide("inception4a")
    assert AlignedSettings(name="4a vs 4e", a=a, b=AlignedSide("inception4e")).folder_name == "4a-vs-4e"
    assert AlignedSettings(name="x", a=a, b=AlignedSide(random_init=True)).b.layer == "inception4a"
    for kwargs, key in [({"name": ""}, "name"), ({"name": "12"}, "name"), ({"b": AlignedSide()}, "b"),
                        ({"holdout": 1.0}, "holdout"), ({"ridge": -1.0}, "ridge"), ({"n_neighbors": 1}, "n_neighbors"),
                        ({"sizes": (0,)}, "sizes"), ({"steps": 0}, "steps"), ({"b": {"layr": "x"}}, "b.layr"),
                        ({"a": AlignedSide()}, "a.layer")]:
        with pytest.raises(SettingError) as e:
            AlignedSettings(**{"name": "x", "a": a, "b": AlignedSide("inception4e"), **kwargs})
        assert e.value.key == key, (kwargs, e.value)
    with pytest.raises(SettingError, match="model"):
        AlignedSide("inception4a", model="resnet")


def test_umap_defaults_are_the_reduce_stage_s() -> None:
    s = AlignedSettings(name="x", a=AlignedSide("inception4a"), b=AlignedSide("inception4e"))
    reduce = ReduceSettings()
    assert s.reduce_settings() == reduce
    assert {k: getattr(s, k) for k in ("n_neighbors", "min_dist", "metric", "sample_size", "refine_epochs")} == \
        {k: getattr(reduce, k) for k in ("n_neighbors", "min_dist", "metric", "sample_size", "refine_epochs")}


# ---- the whole aligned atlas on a tiny run: random-init InceptionV1, two layers of one collect

SMALL = {"sizes": (2, 3), "min_count": 1, "icon_size": 64, "steps": 2, "batch_size": 8, "n_neighbors": 5,
         "holdout": 0.25}
#: The small settings as `atlas align` options.
SMALL_ARGS = ["--sizes", "2,3", "--min-count", "1", "--icon-size", "64", "--steps", "2", "--batch-size", "8",
              "--n-neighbors", "5", "--holdout", "0.25", "--device", "cpu", "--workers", "0"]


def two_layer_config(root: Path, aligned: str = "") -> Path:
    """The tiny run's config (``tinyrun.make_config``), collecting ``inception4a`` and ``inception4e``
    (both 14 x 14) at 4 positions of each of its 12 noise photos, plus ``aligned`` appended."""
    from tinyrun import make_config

    cfg = make_config(root)
    text = cfg.read_text().replace('layers = ["inception4c"]', 'layers = ["inception4a", "inception4e"]')
    cfg.write_text(text.replace("positions_per_image = 3", "positions_per_image = 4") + aligned)
    return cfg


def settings_4a_4e(name: str = "4a-4e", **kw) -> AlignedSettings:
    return AlignedSettings(name=name, a=AlignedSide("inception4a"), b=AlignedSide("inception4e"), **{**SMALL, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from atlas.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("aligned-run")
    run_pipeline(two_layer_config(root), only="collect", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def model():
    from atlas.models import load_model

    return load_model("inceptionv1", random_init=True, device="cpu")


@pytest.fixture(scope="module")
def built(run: Path, model):
    """The aligned atlas of inception4a and inception4e of the run, built once."""
    from atlas.stages.aligned import aligned_atlas

    return aligned_atlas(run, settings_4a_4e(), model, model, device="cpu", progress=False)


def artifact_ids(folder: Path) -> dict[str, str]:
    from atlas.store.lineage import ID_ATTR, root_attrs

    return {str(p.relative_to(folder)): root_attrs(p)[ID_ATTR] for p in sorted(folder.rglob("*.h5"))}


@pytest.mark.slow
def test_aligned_atlas_builds_two_sides_that_name_each_other(run: Path, built) -> None:
    folder = run / "aligned" / "4a-4e"
    assert built.folder == folder and not built.up_to_date and built.rows == 48
    assert built.icons["a"] > 0 and built.icons["b"] > 0
    la, lb = read_layout(folder / "a" / "layout.h5"), read_layout(folder / "b" / "layout.h5")
    assert (la.layer, lb.layer) == ("inception4a", "inception4e") and len(la.xy) == len(lb.xy) == 48
    assert la.attrs["norm_lo"] == lb.attrs["norm_lo"]  # one normalisation for both sides
    doc = json.loads((folder / "fit.json").read_text())
    assert doc["a"]["layer"] == "inception4a" and doc["b"]["channels"] == 832 and doc["a"]["model"] == "inceptionv1"
    assert doc["held_out"]["images"] == 3 and doc["r2"]["a_to_b"]["total"] == pytest.approx(built.fit.a_to_b.total)
    for side, peer in (("a", "b"), ("b", "a")):
        manifest = json.loads((folder / side / "tiles" / "manifest.json").read_text())
        entry = manifest["aligned"]
        assert entry == {"name": "4a-4e", "side": side, "label": built.labels[side], "peer": f"../../{peer}/tiles",
                         "peer_label": built.labels[peer]}
        assert (folder / side / "tiles" / entry["peer"]).resolve() == (folder / peer / "tiles").resolve()
        assert f"side {side}" in manifest["title"] and manifest["layer"] == ("inception4a", "inception4e")[side == "b"]
    assert built.labels == {"a": "inceptionv1 (random weights) · inception4a",
                            "b": "inceptionv1 (random weights) · inception4e"}
    from atlas.web.serve import find_runs

    assert {"aligned/4a-4e/a/tiles", "aligned/4a-4e/b/tiles"} <= set(find_runs(run))


@pytest.mark.slow
def test_a_second_call_skips_every_step(run: Path, built, model) -> None:
    from atlas.stages.aligned import aligned_atlas

    before = artifact_ids(built.folder)
    steps: list[str] = []
    again = aligned_atlas(run, settings_4a_4e(), model, model, device="cpu", progress=False,
                          on_step=lambda step, summary: steps.append(step))
    assert again.up_to_date and "nothing to do" in again.describe() and not any(again.steps.values())
    assert steps == ["fit", "layout", "grid a", "render a", "tiles a", "grid b", "render b", "tiles b"]
    assert artifact_ids(built.folder) == before


@pytest.mark.slow
def test_other_settings_are_refused_unless_overwrite(run: Path, built, model) -> None:
    from atlas.stages.aligned import aligned_atlas
    from atlas.store.common import SettingsChangedError

    with pytest.raises(SettingsChangedError, match="holdout"):
        aligned_atlas(run, settings_4a_4e(holdout=0.5), model, model, device="cpu", progress=False)
    assert aligned_atlas(run, settings_4a_4e(), model, model, device="cpu", progress=False).up_to_date


@pytest.mark.slow
def test_a_killed_render_resumes_without_redoing_finished_steps(run: Path, model, monkeypatch) -> None:
    import atlas.stages.render.stage as render_stage
    from atlas.stages.aligned import aligned_atlas
    from atlas.store.cells import read_cells

    real = render_stage.render_icon_batch
    calls = {"n": 0}

    def dies_on_the_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    steps: list[str] = []
    monkeypatch.setattr(render_stage, "render_icon_batch", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        aligned_atlas(run, settings_4a_4e("killed"), model, model, device="cpu", progress=False,
                      on_step=lambda step, summary: steps.append(step))
    assert steps == ["fit", "layout", "grid a"]
    folder = run / "aligned" / "killed"
    done = artifact_ids(folder)
    monkeypatch.setattr(render_stage, "render_icon_batch", real)
    resumed = aligned_atlas(run, settings_4a_4e("killed"), model, model, device="cpu", progress=False)
    assert {k: v for k, v in resumed.steps.items() if not v} == {"fit": False, "layout": False, "grid a": False}
    levels = read_cells(folder / "a" / "cells.h5")
    assert len(levels[2].cell_id) <= 8 and len(levels[3].cell_id) <= 8  # one batch a level
    assert resumed.icons["a"] == len(levels[3].cell_id)  # the 2 x 2 level's batch was written before the kill
    now = artifact_ids(folder)
    assert {k: now[k] for k in ("maps.h5", "a/layout.h5", "b/layout.h5", "a/cells.h5")} == \
        {k: done[k] for k in ("maps.h5", "a/layout.h5", "b/layout.h5", "a/cells.h5")}
    assert (folder / "b" / "tiles" / "manifest.json").is_file()


@pytest.mark.slow
def test_a_second_model_is_collected_with_the_run_s_settings_and_aligned(run: Path, model) -> None:
    """Side b names another model (torchvision's GoogLeNet, random weights): collected into b/,
    with the run's photos, positions and seed, then aligned with side a."""
    from atlas.stages.aligned import aligned_atlas, load_side_model, run_model
    from atlas.store.activations import ActivationsFile, read_row_origins

    settings = AlignedSettings(name="two models", a=AlignedSide("inception4e"),
                               b=AlignedSide("inception4e", model="torchvision:googlenet", random_init=True), **SMALL)
    other = load_side_model(settings.b, run_model(run / "activations.h5"), device="cpu")
    s = aligned_atlas(run, settings, model, other, device="cpu", progress=False, workers=0)
    folder = run / "aligned" / "two-models"
    assert s.steps["collect b"] and "collect a" not in s.steps
    with ActivationsFile(folder / "b" / "activations.h5") as f:
        assert f.layers == ["inception4e"] and f.model == "torchvision:googlenet"
    mine, theirs = read_row_origins(run / "activations.h5", "inception4e"), \
        read_row_origins(folder / "b" / "activations.h5", "inception4e")
    assert (mine.keys == theirs.keys).all() and (mine.position == theirs.position).all()
    assert s.labels["b"] == "torchvision:googlenet (random weights) · inception4e"
    manifest = json.loads((folder / "b" / "tiles" / "manifest.json").read_text())
    assert manifest["model"] == "torchvision:googlenet" and manifest["aligned"]["peer"] == "../../a/tiles"
    assert aligned_atlas(run, settings, model, other, device="cpu", progress=False).up_to_date


@pytest.mark.slow
@pytest.mark.shared
def test_a_trained_run_aligned_with_its_random_init_network(inceptionv1_weights: Path, tmp_path_factory) -> None:
    """Lucid's two-model case: trained InceptionV1 and the same network with random weights, on the
    same photos, from a config: side b is collected with random weights, then aligned with side a."""
    from atlas.pipeline import run_pipeline
    from atlas.stages.aligned import aligned_atlas
    from tinyrun import make_config

    root = tmp_path_factory.mktemp("trained")
    cfg = make_config(root)
    text = cfg.read_text().replace("random_init = true", f'weights = "{inceptionv1_weights}"')
    cfg.write_text(text + """
[[aligned]]
name = "trained vs random"
a = { layer = "inception4c" }
b = { random_init = true }
sizes = [2, 3]
min_count = 1
icon_size = 64
steps = 2
batch_size = 8
n_neighbors = 5
""")
    run_pipeline(cfg, only="collect", progress=False)
    out = run_pipeline(cfg, only="aligned", progress=False)["aligned"]
    folder = root / "run" / "aligned" / "trained-vs-random"
    assert "did collect b, fit" in out and (folder / "b" / "activations.h5").is_file()
    for side in ("a", "b"):
        assert json.loads((folder / side / "tiles" / "manifest.json").read_text())["aligned"]["side"] == side
    doc = json.loads((folder / "fit.json").read_text())
    assert doc["b"]["label"] == "inceptionv1 (random weights) · inception4c"
    assert doc["a"]["label"] == "inceptionv1 · inception4c"
    again = aligned_atlas(root / "run", load_config_aligned(cfg), weights=inceptionv1_weights, device="cpu",
                          progress=False)
    assert again.up_to_date


def load_config_aligned(cfg: Path) -> AlignedSettings:
    from atlas.config import load_config

    return load_config(cfg).aligned[0]


@pytest.mark.slow
def test_pipeline_builds_the_configured_aligned_atlas(run: Path, built) -> None:
    from atlas.pipeline import run_pipeline

    (run.parent / "again").mkdir(exist_ok=True)
    cfg = two_layer_config(run.parent / "again", """
[[aligned]]
name = "4a-4e"
a = { layer = "inception4a" }
b = { layer = "inception4e" }
sizes = [2, 3]
min_count = 1
icon_size = 64
steps = 2
batch_size = 8
n_neighbors = 5
holdout = 0.25
""")
    cfg.write_text(cfg.read_text().replace(f'dir = "{run.parent / "again" / "run"}"', f'dir = "{run}"'))
    summary = run_pipeline(cfg, only="aligned", progress=False)["aligned"]
    assert "aligned/4a-4e" in summary and "nothing to do" in summary


# ---- the command, typed as a user would


@pytest.mark.slow
def test_align_command_builds_an_aligned_atlas(run: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "atlas", "-q", "align", str(run), "--name", "cli",
                           "--a-layer", "inception4a", "--b-layer", "inception4e", *SMALL_ARGS],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "aligned/cli" in proc.stdout and "held-out R^2" in proc.stdout and f"atlas serve {run}" in proc.stdout
    for side in ("a", "b"):
        assert json.loads((run / "aligned" / "cli" / side / "tiles" / "manifest.json").read_text())["aligned"]
    help_text = subprocess.run([sys.executable, "-m", "atlas", "align", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--b-random-init" in help_text.stdout and "fit.json" in help_text.stdout


def test_align_command_errors_say_why(run: Path, atlas_cli) -> None:
    code, out, err = atlas_cli("align", str(run), "--name", "bad", "--a-layer", "inception4x", "--b-layer",
                               "inception4e", *SMALL_ARGS)
    assert code == 2 and "no layer 'inception4x'" in err and "inception4a" in err and "Valid layers" in err
    assert not (run / "aligned" / "bad").exists()  # refused before any work
    code, out, err = atlas_cli("align", str(run), "--name", "bad", "--a-layer", "inception4a", "--b-layer",
                               "inception4e", "--holdout", "1.5")
    assert code == 2 and "--holdout must be a share" in err
    code, out, err = atlas_cli("align", str(run), "--name", "bad", "--a-layer", "inception4a")
    assert code == 2 and "same activations as side a" in err
    # inception5b's 7 x 7 grid puts its rows at other positions than inception4a's 14 x 14
    code, out, err = atlas_cli("align", str(run), "--name", "grids", "--a-layer", "inception4a", "--b-layer",
                               "inception5b", *SMALL_ARGS)
    assert code == 2 and "would not line up" in err and "14 x 14" in err and "7 x 7" in err and "Traceback" not in err
    assert not (run / "aligned" / "grids" / "b" / "activations.h5").exists()  # refused before collecting
    code, out, err = atlas_cli("align", str(run.parent / "nowhere"), "--name", "x", "--a-layer", "inception4a",
                               "--b-layer", "inception4e")
    assert code == 2 and "atlas collect" in err
