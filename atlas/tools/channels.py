"""A per-channel view of one photo: every channel's activation map beside its feature visualization.

In the spirit of Yosinski, Clune, Nguyen, Fuchs, Lipson, "Understanding Neural Networks Through
Deep Visualization" (ICML Deep Learning Workshop 2015; the Deep Visualization Toolbox): for one
photo and one layer, the channels are sorted by their mean activation on the photo, and each is
shown as its activation map over the photo next to a feature visualization of the channel
(Olah et al., "Feature Visualization", Distill 2017: :func:`atlas.optvis.channel`'s objective,
FFT parameterization, Lucid's standard transforms).

Channel visualizations depend only on the model and layer, so they are rendered once and cached
(:mod:`atlas.store.channel_icons`), keyed by the model's name, a fingerprint of its weights, the
layer and the render settings. The cache fills lazily -- only the channels a view shows --
``batch_size`` channels per optimizer batch (each channel its own image and seed, as the render
stage does for atlas cells), and is written after every batch, so a killed fill keeps what it
finished. Rendering all 512 channels of ``inception4c`` at the defaults (64 px, 96 steps) takes
a while on a CPU; the view's ``top`` channels come first.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from atlas.models import AtlasModel, capture, resolve_device
from atlas.optvis import directions, fft_image, render_vis, standard_transforms, to_uint8
from atlas.store.channel_icons import ChannelIconCache, cache_file_name, read_channel_icons

__all__ = [
    "ChannelView",
    "channel_activations",
    "channel_cache_path",
    "channel_view",
    "channels_figure",
    "default_cache_dir",
    "fill_channel_cache",
    "model_fingerprint",
    "write_channels_html",
]

log = logging.getLogger(__name__)

#: Icon side in pixels for the view (small: 512 channels must fit in CPU time).
DEFAULT_ICON_SIZE = 64
#: Optimizer steps per channel icon.
DEFAULT_STEPS = 96
#: Channels per optimizer batch.
DEFAULT_BATCH_SIZE = 32


def default_cache_dir() -> Path:
    """``$ATLAS_CACHE_DIR/channels``, default ``~/.cache/atlas/channels``."""
    return Path(os.environ.get("ATLAS_CACHE_DIR", "~/.cache/atlas")).expanduser() / "channels"


def model_fingerprint(model: AtlasModel) -> str:
    """First 16 hex digits of the SHA-256 of the model's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in list(model.net.named_parameters()) + list(model.net.named_buffers()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _settings(model: AtlasModel, layer: str, icon_size: int, steps: int, lr: float, seed: int) -> dict:
    return {"model": model.name, "weights": model_fingerprint(model), "layer": layer, "icon_size": int(icon_size),
            "steps": int(steps), "lr": float(lr), "seed": int(seed), "objective": "channel (mean over positions)",
            "param": "fft", "transforms": repr(standard_transforms())}


def channel_cache_path(model: AtlasModel, layer: str, cache_dir: str | os.PathLike | None = None, *,
                       icon_size: int = DEFAULT_ICON_SIZE, steps: int = DEFAULT_STEPS, lr: float = 0.05,
                       seed: int = 0) -> Path:
    """Where the channel icons of ``layer`` with these settings are cached."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / cache_file_name(model.name, layer, _settings(model, layer, icon_size, steps, lr, seed))


def _channel_generator(seed: int, channel: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(channel)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def _n_channels(model: AtlasModel, layer: str) -> int:
    model.layer(layer)  # unknown layer: error with close matches
    shape = model.layer_shapes([layer])[layer]
    if len(shape) != 3:
        raise ValueError(f"layer {layer!r} has output shape {tuple(shape)}; pick a spatial layer (C, H, W), "
                         f"see `atlas layers --spatial`")
    return int(shape[0])


def fill_channel_cache(
    model: AtlasModel,
    layer: str,
    cache_dir: str | os.PathLike | None = None,
    channels: Sequence[int] | None = None,
    *,
    icon_size: int = DEFAULT_ICON_SIZE,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> Path:
    """Render the feature visualizations of ``channels`` of ``layer`` (default: all) that the cache
    lacks, ``batch_size`` per optimizer batch, writing after every batch. Returns the cache path.

    Channel c's image is seeded from ``(seed, c)``; like the render stage's icons, an image also
    depends (in float rounding) on which channels shared its batch.
    """
    if icon_size < 16 or steps < 1 or batch_size < 1:
        raise ValueError(f"need icon_size >= 16, steps >= 1 and batch_size >= 1, got {icon_size}, {steps}, "
                         f"{batch_size}")
    dev = resolve_device(device)
    if model.device != dev:
        model.to(dev)
    n = _n_channels(model, layer)
    want = np.arange(n) if channels is None else np.unique(np.asarray(list(channels), np.int64))
    if len(want) and (want.min() < 0 or want.max() >= n):
        raise ValueError(f"channels must be in [0, {n}) for layer {layer!r}, got {want.min()}..{want.max()}")
    settings = _settings(model, layer, icon_size, steps, lr, seed)
    path = channel_cache_path(model, layer, cache_dir, icon_size=icon_size, steps=steps, lr=lr, seed=seed)
    cache = ChannelIconCache.prepare(path, n, icon_size, settings,
                                     {"model": model.name, "layer": layer, "model_fingerprint": settings["weights"],
                                      "steps": steps, "lr": lr, "seed": seed,
                                      "transforms": settings["transforms"]})
    todo = want[~cache.done()[want]]
    if len(todo) == 0:
        return path
    log.info("rendering %d channel icons of %s (%d px, %d steps), %d per batch, into %s", len(todo), layer,
             icon_size, steps, batch_size, path)
    bar = tqdm(total=len(todo), desc=f"channels {layer}", unit="ch", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chs = todo[start:start + batch_size]
        vecs = torch.zeros(len(chs), n)
        vecs[torch.arange(len(chs)), torch.as_tensor(chs)] = 1.0  # one-hot: channel objective per image
        gens = [_channel_generator(seed, int(c)) for c in chs]
        r = render_vis(model, directions(layer, vecs, spatial_mean=True), fft_image(icon_size, len(chs),
                       generator=gens, device=dev), standard_transforms(), steps=steps, lr=lr, generator=gens,
                       device=dev)
        cache.write(chs, to_uint8(r.images), r.values.numpy())
        bar.update(len(chs))
    bar.close()
    return path


def channel_activations(model: AtlasModel, photo: torch.Tensor, layer: str) -> np.ndarray:
    """Activations of ``layer`` for one image (1, 3, S, S) in [0, 1]: (C, H, W) float32 (a token
    layer's patch tokens on their grid)."""
    with torch.no_grad(), capture(model, [layer], detach=True, grid=True) as acts:
        model(photo.to(model.device))
    a = acts[layer]
    if a.dim() != 4:
        raise ValueError(f"layer {layer!r} gives activations {tuple(a.shape)}; pick a spatial layer (B, C, H, W)")
    return a[0].float().cpu().numpy()


@dataclass
class ChannelView:
    """Every channel of a layer for one photo.

    Attributes:
        photo: (S, S, 3) uint8, the photo as the model sees it (resized and center-cropped).
        layer: the layer.
        maps: (C, H, W) float32 activation maps.
        mean: (C,) mean activation over positions.
        order: (C,) channel indices by mean activation, highest first.
        icons: (C, I, I, 3) uint8 feature visualizations (zeros where ``has_icon`` is False).
        has_icon: (C,) bool.
        cache: the cache file the icons came from.
    """

    photo: np.ndarray
    layer: str
    maps: np.ndarray
    mean: np.ndarray
    order: np.ndarray
    icons: np.ndarray
    has_icon: np.ndarray
    cache: Path


def channel_view(
    model: AtlasModel,
    photo: str | os.PathLike | torch.Tensor,
    layer: str = "inception4c",
    *,
    top: int | None = 16,
    cache_dir: str | os.PathLike | None = None,
    icon_size: int = DEFAULT_ICON_SIZE,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> ChannelView:
    """The per-channel view of ``photo`` at ``layer``; renders (and caches) the icons of the ``top``
    channels by mean activation (None: every channel) that the cache lacks.

    Args:
        photo: a photo file (resized and cropped as the model's input) or (1, 3, S, S) in [0, 1].
        top: how many channels need icons; 0 renders none (only what the cache holds is shown).
        Other arguments: the icon settings, as :func:`fill_channel_cache`.
    """
    dev = resolve_device(device)
    if model.device != dev:
        model.to(dev)
    if isinstance(photo, torch.Tensor):
        x = photo.reshape(1, 3, *photo.shape[-2:]).float()
    else:
        from atlas.tools.explain import load_photo

        x = load_photo(photo, model)
    model.layer(layer)
    maps = channel_activations(model, x, layer)
    mean = maps.mean((1, 2))
    order = np.argsort(-mean, kind="stable")
    wanted = order if top is None else order[: max(int(top), 0)]
    path = channel_cache_path(model, layer, cache_dir, icon_size=icon_size, steps=steps, lr=lr, seed=seed)
    if len(wanted) or not path.exists():
        path = fill_channel_cache(model, layer, cache_dir, wanted, icon_size=icon_size, steps=steps,
                                  batch_size=batch_size, lr=lr, seed=seed, device=dev, progress=progress)
    cached = read_channel_icons(path)
    return ChannelView(photo=to_uint8(x[0].cpu()), layer=layer, maps=maps, mean=mean, order=order,
                       icons=cached.icons, has_icon=cached.done, cache=path)


def _overlay(photo: np.ndarray, amap: np.ndarray, size: int, vmax: float) -> np.ndarray:
    """The photo (S, S, 3) lit by an activation map (H, W) / vmax, at ``size`` px: (size, size, 3) uint8.

    Bright where the channel fires, dim where it does not; a warm tint shows the map's strength.
    """
    p = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    p = F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.from_numpy(np.clip(amap / max(vmax, 1e-8), 0, 1))[None, None].float()
    m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
    tint = torch.tensor([1.0, 0.55, 0.1])[None, :, None, None]
    out = p * (0.3 + 0.7 * m) + 0.5 * m * tint * (1 - p)
    return to_uint8(out.clamp(0, 1)[0])


def _icon(view: ChannelView, c: int, size: int) -> np.ndarray:
    if not view.has_icon[c]:
        return np.full((size, size, 3), 230, np.uint8)
    return np.asarray(Image.fromarray(view.icons[c]).resize((size, size), Image.BILINEAR))


def channels_figure(view: ChannelView, out: str | os.PathLike, *, top: int = 16, cols: int = 4,
                    size: int = 112) -> Path:
    """A PNG of the ``top`` channels by mean activation: per channel, the photo lit by its activation
    map (normalized by the channel's own maximum) beside its feature visualization. Returns the path."""
    chans = [int(c) for c in view.order[:top]]
    if not chans:
        raise ValueError("top must be at least 1")
    cols = min(cols, len(chans))
    rows = -(-len(chans) // cols)
    tile_w, tile_h, gap = 2 * size + 2, size + 14, 10
    head = 20
    canvas = Image.new("RGB", (cols * tile_w + (cols - 1) * gap, head + rows * (tile_h + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 4), f"{view.layer}: top {len(chans)} of {len(view.mean)} channels by mean activation "
                      f"(left: photo lit by the channel's map; right: the channel's feature visualization)",
              fill="black")
    for i, c in enumerate(chans):
        r, k = divmod(i, cols)
        x, y = k * (tile_w + gap), head + r * (tile_h + 6)
        draw.text((x + 1, y), f"#{i + 1} ch {c}  mean {view.mean[c]:.3g}  max {view.maps[c].max():.3g}",
                  fill="black")
        canvas.paste(Image.fromarray(_overlay(view.photo, view.maps[c], size, float(view.maps[c].max()))),
                     (x, y + 14))
        canvas.paste(Image.fromarray(_icon(view, c, size)), (x + size + 2, y + 14))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    return out


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<link rel="icon" href="data:,">
<style>
body{font:14px system-ui,sans-serif;margin:16px;background:#f4f3ef;color:#222}
header{display:flex;gap:16px;align-items:flex-start}
header img{width:224px;height:224px;border:1px solid #ccc}
#cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:16px}
.card{background:#fff;border:1px solid #ddd;padding:4px;width:196px}
.card img{width:96px;height:96px;image-rendering:auto;vertical-align:top}
.card .none{display:inline-block;width:96px;height:96px;background:#e6e6e6;color:#777;font-size:11px;
 text-align:center;line-height:96px;vertical-align:top}
.card .label{font-size:12px;margin-bottom:3px}
</style></head><body>
<header><img id="photo" src="photo.png" alt="the photo">
<div><h1 style="margin:0 0 8px;font-size:18px">__TITLE__</h1>
<p>Every channel of <b>__LAYER__</b>, sorted by its mean activation on this photo. Left: the photo lit by
the channel's activation map (normalized by the channel's own maximum); right: the channel's feature
visualization (grey: not rendered yet; run <code>atlas channels PHOTO --layer __LAYER__ --all</code> to
render every channel).</p>
<label>sort by <select id="sort"><option value="mean">mean activation</option><option value="max">max activation</option>
<option value="channel">channel number</option></select></label>
<label style="margin-left:12px">channel <input id="filter" size="6" placeholder="e.g. 447"></label>
<span id="count" style="margin-left:12px"></span></div></header>
<div id="cards"></div>
<script src="data.js"></script>
<script src="channels.js"></script>
</body></html>
"""

#: the page's script, a file of its own so that a server's ``script-src 'self'`` policy allows it;
#: it builds the cards from DOM nodes (text and attributes), never from HTML strings
_SCRIPT = """const DATA = window.CHANNEL_VIEW;
function node(tag, attrs, text) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}
function render() {
  const key = document.getElementById("sort").value;
  const q = document.getElementById("filter").value.trim();
  let rows = DATA.channels.slice();
  if (key === "channel") rows.sort((a, b) => a.channel - b.channel);
  else rows.sort((a, b) => b[key] - a[key]);
  if (q) rows = rows.filter(r => String(r.channel).startsWith(q));
  const cards = document.getElementById("cards");
  cards.replaceChildren(...rows.map((r) => {
    const d = node("div", {class: "card", "data-channel": r.channel});
    d.append(
      node("div", {class: "label"}, `#${r.rank} ch ${r.channel} \\u00b7 mean ${r.mean.toPrecision(3)}` +
                                    ` \\u00b7 max ${r.max.toPrecision(3)}`),
      node("img", {class: "map", src: r.map, alt: `channel ${r.channel} activation map`}),
      r.icon ? node("img", {class: "icon", src: r.icon, alt: `channel ${r.channel} visualization`})
             : node("span", {class: "none"}, "not rendered"));
    return d;
  }));
  document.getElementById("count").textContent = `${rows.length} of ${DATA.channels.length} channels`;
}
document.getElementById("sort").addEventListener("change", render);
document.getElementById("filter").addEventListener("input", render);
render();
"""


def write_channels_html(view: ChannelView, out_dir: str | os.PathLike, *, title: str | None = None,
                        size: int = 96) -> Path:
    """A self-contained static page (``index.html`` + ``photo.png``, ``maps/``, ``icons/``) with every
    channel of the view, sortable and filterable in the browser. Returns the page's path."""
    out = Path(out_dir)
    for sub in ("maps", "icons"):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)  # a page written before for another photo
        (out / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(view.photo).save(out / "photo.png")
    rank = np.empty(len(view.order), np.int64)
    rank[view.order] = np.arange(1, len(view.order) + 1)
    rows = []
    for c in range(len(view.mean)):
        vmax = float(view.maps[c].max())
        Image.fromarray(_overlay(view.photo, view.maps[c], size, vmax)).save(out / "maps" / f"{c:04d}.jpg",
                                                                              quality=85)
        icon = None
        if view.has_icon[c]:
            Image.fromarray(view.icons[c]).save(out / "icons" / f"{c:04d}.png")
            icon = f"icons/{c:04d}.png"
        rows.append({"channel": c, "rank": int(rank[c]), "mean": float(view.mean[c]), "max": vmax,
                     "map": f"maps/{c:04d}.jpg", "icon": icon})
    page = (_PAGE.replace("__TITLE__", html.escape(title or f"{view.layer}: channels of one photo"))
            .replace("__LAYER__", html.escape(view.layer)))
    data = json.dumps({"layer": view.layer, "channels": rows}).replace("</", "<\\/")
    (out / "data.js").write_text(f"window.CHANNEL_VIEW = {data};\n", encoding="utf-8")
    (out / "channels.js").write_text(_SCRIPT, encoding="utf-8")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def publish_channel_view(view: ChannelView, run_dir: str | os.PathLike, photo: str | os.PathLike, *,
                         title: str | None = None) -> Path:
    """Write the view's page into a run's tiles, where ``atlas serve`` and the viewer find it.

    The page goes to ``RUN/tiles/channels/<name>/``, ``name`` the photo's file name made
    URL-safe (as overlay names are), and is listed in ``RUN/tiles/channels/index.json`` (``{"views": [{"name", "layer",
    "photo", "page"}]}``; the same name replaces its entry). The viewer lists the views of the
    atlas it shows under "Channel views". Returns the page's path.
    """
    from atlas.tools.explain import overlay_name

    tiles = Path(run_dir) / "tiles"
    if not (tiles / "manifest.json").is_file():
        raise ValueError(f"{run_dir} has no tiles/manifest.json; build the atlas's tiles first (atlas tiles RUN) "
                         "or write a standalone page with --html DIR")
    safe = overlay_name(photo)
    page = write_channels_html(view, tiles / "channels" / safe, title=title)
    index_path = tiles / "channels" / "index.json"
    views = []
    if index_path.is_file():
        views = [v for v in json.loads(index_path.read_text(encoding="utf-8")).get("views", []) if v.get("name") != safe]
    views.append({"name": safe, "layer": view.layer, "photo": Path(photo).name,
                  "page": f"channels/{safe}/index.html"})
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"views": views}, indent=1), encoding="utf-8")
    os.replace(tmp, index_path)
    return page
