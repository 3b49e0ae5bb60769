"""`atlas explain`: one photo's attribution maps and figure; bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from atlas.models import load_model
from atlas.tools.explain import ALL_METHODS, DEFAULT_METHODS, explain_figure, explain_photo, layer_position_attribution


@pytest.fixture(scope="module")
def model():
    return load_model("inceptionv1", random_init=True)


@pytest.fixture
def photo(tmp_path):
    p = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(p)
    return p


def test_explain_photo_and_figure(model, photo, tmp_path):
    e = explain_photo(model, photo, target="snorkel", ig_steps=4)
    assert e.target == 801 and e.target_name == "snorkel"
    assert set(e.maps) == set(DEFAULT_METHODS)
    assert all(m.shape == (224, 224) for m in e.maps.values())
    assert e.layer_attribution.shape == (14, 14) and e.layer_activations.shape == (196, 512)
    out = explain_figure(e, tmp_path / "fig.png", model.class_names)
    with Image.open(out) as im:
        assert im.size[0] > 1000


def test_grad_cam_defaults_to_the_last_spatial_layer(model, photo):
    """Grad-CAM(++) at the last convolutional layer (inception5b), not at the per-position layer."""
    e = explain_photo(model, photo, methods=("grad_cam", "grad_cam_pp"))
    assert e.gradcam_layer == "inception5b" and e.layer == "inception4c"
    at4c = explain_photo(model, photo, methods=("grad_cam",), gradcam_layer="inception4c")
    assert at4c.gradcam_layer == "inception4c"
    assert not np.allclose(e.maps["grad_cam"], at4c.maps["grad_cam"])
    assert explain_photo(model, photo, methods=("saliency",)).gradcam_layer is None
    with pytest.raises(ValueError, match="inception4c"):
        explain_photo(model, photo, methods=("grad_cam",), gradcam_layer="inception4x")


def test_every_method_in_the_figure(model, photo, tmp_path):
    e = explain_photo(model, photo, methods=ALL_METHODS, ig_steps=2, occlusion_patch=112, occlusion_stride=112,
                      igos_iterations=1, igos_steps=1)
    assert list(e.maps) == list(ALL_METHODS) and set(e.seconds) == set(ALL_METHODS)
    assert all(m.shape == (224, 224) and np.isfinite(m).all() for m in e.maps.values())
    assert len(np.unique(e.maps["occlusion"])) <= 4  # four 112-pixel squares, no overlap
    out = explain_figure(e, tmp_path / "all.png", model.class_names)
    with Image.open(out) as im:
        assert im.size[1] > 700  # two rows of panels
    with pytest.raises(ValueError, match="unknown methods.*igos"):
        explain_photo(model, photo, methods=("i-gos",))


def test_layer_attribution_sums_like_the_gradient_times_input(model, photo):
    """sum over positions of h . dlogit/dh equals the full-layer gradient x input."""
    import torch

    from atlas.tools.explain import load_photo

    x = load_photo(photo, model)
    a, vecs = layer_position_attribution(model, x, 3, "inception4c")
    with torch.enable_grad():
        from atlas.models import capture

        with capture(model, ["inception4c"]) as acts:
            logit = model(x.clone().requires_grad_(True))[0, 3]
            h = acts["inception4c"]
            (g,) = torch.autograd.grad(logit, h)
    assert np.isclose(a.sum(), float((h * g).sum().detach()), rtol=1e-4, atol=1e-5)
    assert np.allclose(vecs[15], h[0, :, 1, 1].detach().numpy())  # position (1, 1) = row 15 of 14x14


def test_bad_inputs(model, photo, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot be used"):
        explain_photo(model, text)
    with pytest.raises(ValueError, match="does not exist"):
        explain_photo(model, tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="Did you mean"):
        explain_photo(model, photo, target="snorkl")
    with pytest.raises(ValueError, match="not spatial"):
        explain_photo(model, photo, layer="fc", methods=("saliency",))
    with pytest.raises(ValueError, match="Did you mean"):
        explain_photo(model, photo, layer="inception4x")


def test_cli_explain(photo, tmp_path):
    out = tmp_path / "e.png"
    r = subprocess.run([sys.executable, "-m", "atlas", "explain", str(photo), "--random-init", "--ig-steps", "2",
                        "--methods", "saliency,integrated_gradients", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.exists() and "completeness error" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "atlas", "explain", str(photo), "--random-init", "--class", "wokk"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Did you mean" in bad.stderr and "wok" in bad.stderr


def test_cli_unknown_method_is_named_before_the_model_loads(photo, atlas_cli):
    """The command checks --methods with the library's own check, before it loads the model."""
    code, _out, err = atlas_cli("explain", str(photo), "--model", "torchvision:no_such_net", "--methods", "saliency,i-gos")
    assert code == 2
    assert "atlas explain: error: --methods: unknown methods ['i-gos']; available: saliency," in err
    assert "igos, or 'all' / 'default'" in err and "no_such_net" not in err


def test_the_methods_help_names_every_attribution_method_in_order():
    """The parser spells the method names out (importing the methods would load torch for every
    command); they must be :data:`~atlas.tools.attribution.METHODS`, and the default those of
    DEFAULT_METHODS."""
    import argparse

    from atlas.cli import build_parser
    from atlas.tools.attribution import METHODS

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (option,) = [a for a in commands.choices["explain"]._actions if a.dest == "methods"]
    names, _, rest = option.help.removeprefix("comma-separated: ").partition("; ")
    assert names.split(", ") == list(METHODS)
    assert set(ALL_METHODS) == set(METHODS)
    assert rest.endswith(f"[all but {', '.join(m for m in ALL_METHODS if m not in DEFAULT_METHODS)}]")


def test_cli_evaluate_prints_auc_table(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    r = subprocess.run([sys.executable, "-m", "atlas", "-q", "explain", str(photos), "--evaluate", "--random-init",
                        "--ig-steps", "2", "--curve-steps", "2", "--methods", "saliency,grad_cam"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| saliency |" in r.stdout and "| grad_cam |" in r.stdout and "| random |" in r.stdout
    assert r.stdout.startswith("2 photos") and "Grad-CAM(++) at inception5b" in r.stdout.splitlines()[0]
    assert "grad_cam - random: deletion" in r.stdout  # the paired differences to the floor
    bad = subprocess.run([sys.executable, "-m", "atlas", "explain", str(photos), "--evaluate", "--random-init",
                          "--methods", "saliency,gradcam"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown methods ['gradcam']" in bad.stderr and "grad_cam_pp" in bad.stderr


def test_evaluate_scores_the_new_methods_with_per_photo_values(model, tmp_path):
    from atlas.tools.explain import evaluate_methods

    rng = np.random.default_rng(2)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"q{i}.png")
        Image.fromarray(rng.integers(0, 256, (90, 90, 3), dtype=np.uint8)).save(paths[-1])
    s = evaluate_methods(model, paths, methods=("cam", "igos"), steps=1,
                         igos_iterations=1, igos_steps=1, progress=False)
    assert list(s.deletion_auc) == ["cam", "igos", "random"]
    assert all(len(v) == 2 for v in s.per_photo_deletion.values())
    assert np.isclose(s.deletion_auc["cam"], np.mean(s.per_photo_deletion["cam"]))
    d, lo, hi, lower = s.paired("igos", "cam")
    diffs = np.subtract(s.per_photo_deletion["igos"], s.per_photo_deletion["cam"])
    assert np.isclose(d, diffs.mean()) and lo <= d <= hi and lower == np.mean(diffs < 0)
    with pytest.raises(ValueError, match="no per-photo scores of \\['occlusion'\\]"):
        s.paired("occlusion", "cam")


# ---- the photo on an atlas -----------------------------------------------------------------


@pytest.fixture(scope="module")
def placed(tiny_run, model):
    """A photo of the tiny run explained and placed on that run's atlas (same random-init model)."""
    from atlas.tools.explain import place_on_atlas

    photo = tiny_run.parent / "photos" / "p3.jpg"
    e = explain_photo(model, photo, methods=("saliency",))
    return e, place_on_atlas(e, tiny_run, class_names=model.class_names)


def test_placement_puts_the_collected_positions_where_the_atlas_has_them(tiny_run, placed):
    """The positions of the photo that collect sampled are rows of the atlas: projected again from
    explain's activations they land at (or next to) those rows' own layout points."""
    from atlas.store.activations import ActivationsFile
    from atlas.store.layout import read_layout

    e, pl = placed
    assert pl.xy.shape == (196, 2) and pl.positions.shape == (196, 2) and pl.attribution.shape == (196,)
    assert np.isfinite(pl.xy).all() and pl.xy.min() > -0.2 and pl.xy.max() < 1.2
    assert np.allclose(pl.attribution.reshape(14, 14), e.layer_attribution)
    with ActivationsFile(tiny_run / "activations.h5") as f:
        keys = [k.decode() if isinstance(k, bytes) else k for k in f.image_keys()]
        image = f.dataset("inception4c", "image_index")[:]
        pos = f.dataset("inception4c", "position")[:]
    layout = read_layout(tiny_run / "layout.h5")
    row_xy = dict(zip(layout.row_ids.tolist(), layout.xy))
    rows = np.flatnonzero(image == keys.index("p3.jpg"))
    assert len(rows) == 3
    all_xy = layout.xy[layout.valid]
    for r in rows:
        y, x = pos[r]
        got = pl.xy[y * 14 + x]
        own = np.linalg.norm(got - row_xy[int(r)])
        others = np.linalg.norm(all_xy - got, axis=1)
        assert own < 0.05, (r, got, row_xy[int(r)])
        assert own <= np.sort(others)[2] + 1e-6  # among the three nearest atlas points
    # neighbourhoods: every position counted once, sorted by attribution
    nbs = pl.neighborhoods
    assert sum(nb["positions"] for nb in nbs) == 196
    assert [nb["attribution"] for nb in nbs] == sorted((nb["attribution"] for nb in nbs), reverse=True)
    assert pl.level == 4 and all(0 <= nb["iy"] < 4 and 0 <= nb["ix"] < 4 for nb in nbs)


def test_overlay_file_and_figure_panel(tiny_run, placed, tmp_path):
    import json

    from atlas.tools.explain import write_overlay

    e, pl = placed
    out = write_overlay(e, pl, name="my photo!")
    assert out == tiny_run / "tiles" / "overlays" / "my-photo.json"
    doc = json.loads(out.read_text())
    assert doc["kind"] == "atlas-overlay" and doc["class"] == e.target_name and len(doc["points"]) == 196
    p = doc["points"][20]
    assert p["pos"] == [1, 6] and np.isclose(p["x"], pl.xy[20, 0], atol=1e-4) and np.isclose(p["a"], pl.attribution[20], atol=1e-4)
    assert doc["thumb"].startswith("data:image/jpeg;base64,")
    write_overlay(e, pl, name="my photo!")  # the same name replaces, a new one adds
    write_overlay(e, pl, name="second")
    index = json.loads((out.parent / "index.json").read_text())["overlays"]
    names = [o["name"] for o in index]  # the shared tiny run may hold other tests' overlays too
    assert names.count("my-photo") == 1 and [n for n in names if n in ("my-photo", "second")] == ["my-photo", "second"]
    fig = explain_figure(e, tmp_path / "fig.png", placement=pl)
    with Image.open(fig) as im:
        assert im.size[1] > 900  # the second row with the atlas


def test_placement_on_an_atlas_of_another_layer_is_refused(tiny_run, model, photo):
    from atlas.tools.explain import place_on_atlas

    e = explain_photo(model, photo, methods=("saliency",), layer="inception4d")
    with pytest.raises(ValueError, match="made at layer 'inception4c'.*--layer inception4c"):
        place_on_atlas(e, tiny_run)
    with pytest.raises(ValueError, match="no layout.h5"):
        place_on_atlas(e, tiny_run.parent / "photos")


def test_cli_explain_with_atlas_writes_overlay(tiny_run, tmp_path):
    photo = tiny_run.parent / "photos" / "p5.jpg"
    r = subprocess.run([sys.executable, "-m", "atlas", "explain", str(photo), "--random-init", "--methods", "saliency",
                        "--atlas", str(tiny_run), "-o", str(tmp_path / "p5.png")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "196 of 196 positions placed" in r.stdout and "tick 'p5' under Photos" in r.stdout
    assert (tiny_run / "tiles" / "overlays" / "p5.json").is_file()
