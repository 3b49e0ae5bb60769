"""The per-channel view: the channel-icon cache (keyed, batched, resumable), the figure, and the
static page in headless Chromium; one real-photo check on InceptionV1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import atlas.tools.channels as channels_mod
from atlas.cli import main
from atlas.models import load_model
from atlas.store.channel_icons import ChannelIconCache, read_channel_icons
from atlas.store.common import ArtifactError
from atlas.tools.channels import (
    channel_cache_path,
    channel_view,
    channels_figure,
    fill_channel_cache,
    write_channels_html,
)
from tinynet import Tiny

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(icon_size=16, steps=3, batch_size=2, device="cpu")


@pytest.fixture
def tiny():
    return load_model(Tiny(), input_size=16)


@pytest.fixture
def photo():
    g = torch.Generator().manual_seed(5)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear")


@pytest.fixture
def calls(monkeypatch):
    """Counts render_vis batches (and their sizes) made by the cache fill."""
    seen: list[int] = []
    real = channels_mod.render_vis

    def counting(model, objective, param, *args, **kwargs):
        seen.append(param.batch)
        return real(model, objective, param, *args, **kwargs)

    monkeypatch.setattr(channels_mod, "render_vis", counting)
    return seen


def test_cache_store_round_trip_and_resume(tmp_path):
    path = tmp_path / "c.h5"
    cache = ChannelIconCache.prepare(path, 5, 8, {"a": 1}, {"model": "m", "layer": "L"})
    cache.write(np.array([1, 3]), np.full((2, 8, 8, 3), 7, np.uint8), np.array([0.5, 1.5]))
    got = read_channel_icons(path)
    assert got.done.tolist() == [False, True, False, True, False] and got.icons[3].max() == 7
    assert np.isnan(got.objective[0]) and got.objective[3] == 1.5 and not got.attrs["complete"]
    again = ChannelIconCache.prepare(path, 5, 8, {"a": 1}, {"model": "m", "layer": "L"})  # same settings: kept
    assert again.done().sum() == 2
    other = ChannelIconCache.prepare(path, 5, 8, {"a": 2}, {"model": "m", "layer": "L"})  # other settings: anew
    assert other.done().sum() == 0
    with pytest.raises(ValueError, match="strictly increasing"):
        other.write(np.array([3, 1]), np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2))
    with pytest.raises(ArtifactError, match="does not exist"):
        read_channel_icons(tmp_path / "none.h5")


def test_cache_key_follows_weights_layer_and_settings(tiny, tmp_path):
    base = channel_cache_path(tiny, "relu2", tmp_path)
    assert base == channel_cache_path(load_model(Tiny(), input_size=16), "relu2", tmp_path)  # same weights
    assert base != channel_cache_path(load_model(Tiny(seed=1), input_size=16), "relu2", tmp_path)
    assert base != channel_cache_path(tiny, "relu", tmp_path)
    assert base != channel_cache_path(tiny, "relu2", tmp_path, steps=7)
    assert base.name.startswith("channels-") and base.parent == tmp_path


def test_fill_is_batched_lazy_and_resumable(tiny, tmp_path, calls):
    path = fill_channel_cache(tiny, "relu2", tmp_path, [2, 0], **SMALL)
    got = read_channel_icons(path)
    assert got.done.tolist() == [True, False, True, False] and calls == [2]  # both in one batch
    assert got.icons[0].std() > 0 and np.isfinite(got.objective[[0, 2]]).all()
    fill_channel_cache(tiny, "relu2", tmp_path, None, **SMALL)  # all: only 1 and 3 are left
    assert calls == [2, 2] and read_channel_icons(path).attrs["complete"]
    np.testing.assert_array_equal(read_channel_icons(path).icons[0], got.icons[0])  # kept, not redone
    fill_channel_cache(tiny, "relu2", tmp_path, None, **SMALL)
    assert calls == [2, 2]  # nothing to do


def test_a_killed_fill_keeps_its_finished_batches(tiny, tmp_path, monkeypatch):
    real = channels_mod.render_vis
    n = []

    def dies_on_the_second_batch(*args, **kwargs):
        n.append(1)
        if len(n) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(channels_mod, "render_vis", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        fill_channel_cache(tiny, "relu2", tmp_path, None, **SMALL)
    path = channel_cache_path(tiny, "relu2", tmp_path, icon_size=16, steps=3)
    assert read_channel_icons(path).done.tolist() == [True, True, False, False]
    monkeypatch.setattr(channels_mod, "render_vis", real)
    fill_channel_cache(tiny, "relu2", tmp_path, None, **SMALL)
    assert read_channel_icons(path).done.all()


def test_fill_checks_its_arguments(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        fill_channel_cache(tiny, "relu2", tmp_path, [4], **SMALL)
    with pytest.raises(ValueError, match="Did you mean"):
        fill_channel_cache(tiny, "relu3", tmp_path, [0], **SMALL)
    with pytest.raises(ValueError, match="spatial layer"):
        fill_channel_cache(tiny, "fc", tmp_path, [0], **SMALL)


def test_view_sorts_channels_and_renders_only_the_top(tiny, photo, tmp_path, calls):
    v = channel_view(tiny, photo, "relu2", top=2, cache_dir=tmp_path, **SMALL)
    assert v.maps.shape == (4, 16, 16) and v.photo.shape == (32, 32, 3) and v.photo.dtype == np.uint8
    np.testing.assert_allclose(v.mean, v.maps.mean((1, 2)))
    assert sorted(v.order.tolist()) == [0, 1, 2, 3] and np.all(np.diff(v.mean[v.order]) <= 0)
    assert v.has_icon[v.order[:2]].all() and not v.has_icon[v.order[2:]].any() and calls == [2]
    fig = channels_figure(v, tmp_path / "fig.png", top=3, cols=2, size=40)
    w, h = Image.open(fig).size
    assert w == 2 * (2 * 40 + 2) + 10 and h > 2 * 40
    none = channel_view(tiny, photo, "relu2", top=0, cache_dir=tmp_path, **SMALL)  # only what is cached
    assert calls == [2] and none.has_icon.sum() == 2


def test_cli_channels(tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    rc = main(["--quiet", "channels", str(tmp_path / "p.png"), "--random-init", "--device", "cpu", "--layer",
               "conv1", "--top", "2", "--icon-size", "16", "--steps", "2", "--cache-dir", str(tmp_path / "cache"),
               "-o", str(tmp_path / "fig.png"), "--html", str(tmp_path / "page")])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "fig.png").is_file() and (tmp_path / "page" / "index.html").is_file()
    assert "2 of 64 channels have icons" in out
    assert len(list((tmp_path / "page" / "maps").glob("*.jpg"))) == 64
    run = tmp_path / "run"
    (run / "tiles").mkdir(parents=True)
    (run / "tiles" / "manifest.json").write_text("{}")
    rc = main(["--quiet", "channels", str(tmp_path / "p.png"), "--random-init", "--device", "cpu", "--layer",
               "conv1", "--top", "2", "--icon-size", "16", "--steps", "2", "--cache-dir", str(tmp_path / "cache"),
               "-o", str(tmp_path / "fig2.png"), "--run", str(run)])
    out = capsys.readouterr().out
    assert rc == 0 and "lists it under Channel views" in out
    assert (run / "tiles" / "channels" / "p" / "index.html").is_file()
    assert {p.name for p in (run / "tiles" / "channels" / "p").iterdir()} >= {"data.js", "channels.js", "photo.png"}


# --------------------------------------------------------------------------- the page in a browser


@pytest.mark.browser
def test_static_page_in_headless_chromium(tiny, photo, tmp_path):
    from browserkit import CHROMIUM, CHROMIUM_ARGS, _require_browser

    sync_playwright = _require_browser()
    v = channel_view(tiny, photo, "relu2", top=3, cache_dir=tmp_path / "cache", **SMALL)
    page_path = write_channels_html(v, tmp_path / "page", title="tiny <test>")
    errors: list[str] = []
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = b.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            page.wait_for_function("document.querySelectorAll('.card img.map').length === 4 && "
                                   "[...document.images].every(i => i.complete)")
            shown = page.eval_on_selector_all(".card", "els => els.map(e => +e.dataset.channel)")
            assert shown == v.order.tolist()  # by mean activation, highest first
            assert page.eval_on_selector_all("img", "els => els.every(i => i.naturalWidth > 0)")
            assert page.locator(".card img.icon").count() == 3 and page.locator(".card .none").count() == 1
            assert page.title() == "tiny <test>"
            page.select_option("#sort", "channel")
            assert page.eval_on_selector_all(".card", "els => els.map(e => +e.dataset.channel)") == [0, 1, 2, 3]
            page.fill("#filter", "2")
            assert page.eval_on_selector_all(".card", "els => els.map(e => +e.dataset.channel)") == [2]
            assert "1 of 4 channels" in page.inner_text("#count")
        finally:
            b.close()
    assert not errors


@pytest.mark.shared
def test_real_photo_top_channels_and_their_icons(inceptionv1, sample_paths, tmp_path):
    v = channel_view(inceptionv1, sample_paths[207], "inception4c", top=2, cache_dir=tmp_path, icon_size=48,
                     steps=24, device="cpu")  # golden retriever
    assert v.maps.shape == (512, 14, 14) and v.has_icon.sum() == 2
    assert np.all(np.diff(v.mean[v.order]) <= 0) and v.mean[v.order[0]] > 3 * np.median(v.mean)
    cached = read_channel_icons(v.cache)
    for c in v.order[:2]:  # each icon drives its channel further than the photo does
        assert cached.objective[c] > v.mean[c], (c, cached.objective[c], v.mean[c])
