"""`atlas attack`: patches from atlas neighbourhoods, pasting, success rates, reports, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from atlas.models import capture, load_model
from atlas.tools.attack import (
    CORNERS,
    AttackSettings,
    comparison_cells,
    comparison_rows,
    evaluate_patch,
    example_patches,
    paste,
    run_attack,
    source_images,
    wilson_interval,
)


class CornerNet(nn.Module):
    """Three classes: 0 = bright bottom-right quadrant, 1 = bright top-left quadrant, 2 = neither
    (a constant): the answer to any pasted patch is known in closed form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        br = x[:, :, h:, h:].mean((1, 2, 3))
        tl = x[:, :, :h, :h].mean((1, 2, 3))
        return torch.stack([8 * br, 8 * tl, torch.full_like(br, 4.0)], 1)


@pytest.fixture(scope="module")
def corner_model():
    return load_model(CornerNet(), input_size=32, class_names=["br", "tl", "none"])


def test_paste_puts_a_resized_patch_in_the_corner():
    images = torch.zeros(2, 3, 40, 40)
    patch = torch.ones(3, 8, 8)
    for corner, (cy, cx) in CORNERS.items():
        out = paste(images, patch, 0.25, corner)  # 10 px
        y0, x0 = cy * 30, cx * 30
        assert torch.all(out[:, :, y0:y0 + 10, x0:x0 + 10] == 1)
        assert out.sum() == 2 * 3 * 100  # nothing else changed
    assert images.sum() == 0  # the input is left alone
    with pytest.raises(ValueError, match="unknown corner"):
        paste(images, patch, 0.3, "middle")
    with pytest.raises(ValueError, match="fraction"):
        paste(images, patch, 1.5, "br")


def test_success_rates_static_and_dynamic_match_the_closed_form(corner_model):
    dark = torch.zeros(6, 3, 32, 32)
    white = torch.ones(3, 16, 16)
    e = evaluate_patch(corner_model, dark, white, target=0, sizes=(0.25, 0.5))
    # a white patch of w px in the bottom-right quadrant (16 x 16) gives mean (w/16)^2: logit 8*(w/16)^2
    # against the constant 4 -> class 0 wins only when the patch fills over half of the quadrant
    assert e.static("br").tolist() == [0.0, 1.0]
    assert e.static("tl").tolist() == [0.0, 0.0]
    assert e.dynamic().tolist() == [0.0, 1.0] and e.dynamic_any_size() == 1.0
    assert e.hit.shape == (2, 4, 6)
    expect = torch.softmax(torch.tensor([8.0 * 0.25, 0.0, 4.0]), 0)[0]  # 8 px patch: mean 1/4
    assert np.allclose(e.target_prob[0, list(CORNERS).index("br")], float(expect), atol=1e-6)
    # the other class is reached by the other corner
    e1 = evaluate_patch(corner_model, dark, white, target=1, sizes=(0.5,))
    assert e1.static("tl").tolist() == [1.0] and e1.static("br").tolist() == [0.0]


def test_source_images_keep_only_views_classified_as_the_source(corner_model, tmp_path):
    from PIL import Image

    bright_br = np.zeros((32, 32, 3), np.uint8)
    bright_br[16:, 16:] = 255
    Image.fromarray(bright_br).save(tmp_path / "br.png")
    x, tried = source_images(corner_model, 0, [str(tmp_path / "br.png")], augment=1)
    assert tried == 1 and len(x) == 1
    with pytest.raises(ValueError, match="classifies none of the 1 views"):
        source_images(corner_model, 1, [str(tmp_path / "br.png")], augment=1)


@pytest.fixture(scope="module")
def model():
    return load_model("inceptionv1", random_init=True)


def test_comparison_rows_are_the_per_position_attribution(model, tiny_run):
    from atlas.tools.explain import load_photo

    x = torch.cat([load_photo(tiny_run.parent / "photos" / f"p{i}.jpg", model) for i in range(2)])
    rows = comparison_rows(model, "inception4c", x, source=3, target=7, batch_size=1)
    assert rows.acts.shape == (2 * 196, 512) and rows.image.tolist() == [0] * 196 + [1] * 196
    with torch.enable_grad(), capture(model, ["inception4c"]) as cap:
        logit = model(x[1:].clone().requires_grad_(True))[0, 7]
        h = cap["inception4c"]
        (g,) = torch.autograd.grad(logit, h)
    want = (h * g).sum(1)[0].detach().numpy().reshape(-1)
    assert np.allclose(rows.target_attribution[196:], want, rtol=1e-4, atol=1e-6)
    assert np.allclose(rows.acts[196 + 15].astype(np.float32), h[0, :, 1, 1].detach().numpy(), rtol=1e-2, atol=1e-3)


def test_comparison_cells_score_the_rows_placed_on_the_atlas(model, tiny_run):
    from atlas.stages.grid import grid_cells
    from atlas.stages.reduce import project
    from atlas.tools.explain import load_photo

    x = torch.cat([load_photo(tiny_run.parent / "photos" / f"p{i}.jpg", model) for i in range(3)])
    rows = comparison_rows(model, "inception4c", x, source=3, target=7)
    cands, rands, level = comparison_cells(tiny_run, rows, level=4, k=3, n_random=2, min_rows=1)
    assert level == 4 and 1 <= len(cands) <= 3 and len(rands) <= 2
    xy = project(tiny_run / "layout.h5", rows.acts.astype(np.float32))
    ids = grid_cells(np.clip(xy, 0, 1), 4)
    for c in cands:
        sel = ids == c.iy * 4 + c.ix
        assert c.count == sel.sum()
        assert c.score == pytest.approx(rows.diff[sel].mean(), rel=1e-5, abs=1e-9) and c.score > 0
        w = np.maximum(rows.diff[sel], 0)
        want = (rows.acts[sel].astype(np.float32) * w[:, None]).sum(0) / w.sum()
        assert np.allclose(c.direction, want, rtol=1e-4, atol=1e-5)
    push = [np.maximum(rows.diff[ids == c.iy * 4 + c.ix], 0).sum() for c in cands]
    assert push == sorted(push, reverse=True)
    assert not {(c.iy, c.ix) for c in cands} & {(c.iy, c.ix) for c in rands}


def test_run_attack_end_to_end_writes_report_and_figures(model, tiny_run, tmp_path):
    photos = tiny_run.parent / "photos"
    from atlas.tools.explain import load_photo

    with torch.no_grad():
        source = int(model(load_photo(photos / "p0.jpg", model)).argmax())
    target = (source + 1) % 1000
    names = model.class_names
    settings = AttackSettings(names[source], names[target], level=4, candidates=2, random_cells=1, noise_patches=2,
                              patch_px=32, steps=3, sizes=(0.3, 0.5), augment=6)
    src = tmp_path / "src.txt"
    src.write_text(str(photos / "p0.jpg") + "\n")
    with pytest.raises(ValueError, match="none of the 12 universal images"):  # noise photos: all one class
        run_attack(model, tiny_run, settings, images=src, target_images=src, universal=photos, progress=False)
    report = run_attack(model, tiny_run, settings, images=src, target_images=src, out_dir=tmp_path / "out",
                        progress=False)
    assert report.n_selection + report.n_test == report.n_source_correct >= 4
    for fam in ("atlas", "example", "random_cell", "noise"):
        r = report.families[fam]
        assert len(r.static) == len(r.dynamic) == 2 and all(0 <= v <= 1 for v in r.static + r.dynamic)
        assert r.n_test == report.n_test and len(r.dynamic_ci) == 2
        assert all(lo <= v <= hi for v, (lo, hi) in zip(r.dynamic, r.dynamic_ci))
        assert all(d >= s for s, d in zip(r.static, r.dynamic))  # the best corner is at least the fixed one
        assert r.universal_flip is None
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["source"] == names[source] and doc["families"]["noise"]["members"] == ["noise 0", "noise 1"]
    assert doc["families"]["example"]["members"][0].startswith("example of cell")
    for name in ("candidates.png", "examples.png", "success.png", "patch-atlas.png", "patch-example.png", "report.md"):
        assert (tmp_path / "out" / name).is_file(), name
    assert "| atlas" in report.table()


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(8, 12)  # 67% of 12: the textbook Wilson interval is 39.1% to 86.2%
    assert lo == pytest.approx(0.391, abs=1e-3) and hi == pytest.approx(0.862, abs=1e-3)
    lo, hi = wilson_interval(0, 200)
    assert lo == 0.0 and hi == pytest.approx(0.0188, abs=1e-3)
    assert wilson_interval(5, 0) == (0.0, 1.0)
    # more views, a narrower interval around the same rate
    assert np.diff(wilson_interval(100, 400)) < np.diff(wilson_interval(10, 40))
    with pytest.raises(ValueError, match="selection_fraction"):
        AttackSettings("snorkel", "scuba diver", selection_fraction=1.0)


def test_example_patches_crop_the_view_around_the_best_position(model, tiny_run):
    from atlas.tools.attack import Candidate, ComparisonRows

    views = torch.zeros(2, 3, 224, 224)
    views[1, :, 0:112, 112:224] = 1.0  # view 1: the top-right quadrant is white
    n = 2 * 196
    rows = ComparisonRows(np.zeros((n, 4), np.float16), np.zeros(n, np.float32), np.zeros(n, np.float32),
                          np.repeat([0, 1], 196), np.tile(np.stack(np.divmod(np.arange(196), 14), 1), (2, 1)), (14, 14))
    row = 196 + 2 * 14 + 11  # view 1, position (2, 11): inside the white quadrant
    cand = Candidate(4, 0, 0, 1.0, 1.0, 0.0, 5, [], np.zeros(4, np.float32), None, example_row=row)
    p = example_patches([cand], rows, views, px=32, fraction=0.25)
    assert p.shape == (1, 3, 32, 32) and float(p.min()) > 0.99  # a 56-px crop centred at (40, 184): all white
    far = Candidate(4, 0, 0, 1.0, 1.0, 0.0, 5, [], np.zeros(4, np.float32), None, example_row=196 + 13 * 14 + 0)
    assert float(example_patches([far], rows, views, px=32, fraction=0.25).max()) < 0.01  # bottom-left: black


def test_bad_input(model, tiny_run, tmp_path):
    with pytest.raises(ValueError, match="Did you mean"):
        run_attack(model, tiny_run, AttackSettings("snorkl", "scuba diver"))
    with pytest.raises(ValueError, match="same class"):
        run_attack(model, tiny_run, AttackSettings("snorkel", "snorkel"))
    with pytest.raises(ValueError, match="no layout.h5"):
        run_attack(model, tmp_path, AttackSettings("snorkel", "scuba diver"))
    with pytest.raises(ValueError, match="no photo labelled 'snorkel'.*--images"):
        run_attack(model, tiny_run, AttackSettings("snorkel", "scuba diver"))
    with pytest.raises(ValueError, match="static_corner"):
        AttackSettings("a", "b", static_corner="middle")
    r = subprocess.run([sys.executable, "-m", "atlas", "attack", str(tiny_run), "--source", "wokk", "--target", "snorkel",
                        "--random-init"], capture_output=True, text=True)
    assert r.returncode == 2 and "Did you mean" in r.stderr and "wok" in r.stderr
