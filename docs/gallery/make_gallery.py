"""Regenerate the PNGs of this folder (see README.md). CPU, about 10 minutes on 2 cores.

    python docs/gallery/make_gallery.py --weights ../shared/models/bvlc_googlenet.pth \
        --images ../shared/images/imagenet-sample [--only channels,directions,dream,algebra]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas import optvis
from atlas.models import capture, load_model
from atlas.stages.render import cell_generator, render_directions

OUT = Path(__file__).resolve().parent
LAYER = "inception4c"
log = logging.getLogger("gallery")


def gens(n: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def channels(model, steps: int) -> None:
    chs = [447, 7, 1, 97, 300, 410]
    vecs = torch.zeros(len(chs), 512)
    vecs[range(len(chs)), chs] = 1.0  # one-hot directions: channel objectives, one per image
    g = gens(len(chs))
    r = optvis.render_vis(model, optvis.directions(LAYER, vecs, spatial_mean=True),
                          optvis.fft_image(128, len(chs), generator=g), generator=g, steps=steps)
    for ch, img in zip(chs, r.images):
        optvis.save_png(img, OUT / f"channel_{LAYER}_{ch}.png")
    optvis.save_png(r.images, OUT / f"channels_{LAYER}.png")


def photo_directions(model, paths: list[Path]) -> dict[str, np.ndarray]:
    groups = {"dogs": range(200, 206), "birds": range(10, 16), "cars": [817, 751, 656, 705, 511, 436],
              "flowers": [985, 986, 987, 988, 989, 990]}
    out = {}
    for name, idx in groups.items():
        x = torch.stack([model.image_transform(Image.open(paths[i])) for i in idx])
        with torch.no_grad(), capture(model, [LAYER], detach=True) as a:
            model(x)
        out[name] = a[LAYER][:, :, 5:9, 5:9].mean((0, 2, 3)).numpy()  # central 4x4 positions of 6 photos
    return out


def directions(model, paths: list[Path], steps: int) -> None:
    dirs = photo_directions(model, paths)
    vecs = np.stack(list(dirs.values()))
    # atlas icons: what the render stage does for a cell (80 px, cossim_pow 4), read at the center
    g = [[cell_generator(0, 1, i) for i in range(len(vecs))]]
    icons, _ = render_directions(model, LAYER, vecs, g, steps=steps, objective="center")
    optvis.save_png(icons, OUT / f"directions_{LAYER}_icons.png")
    for name, img in zip(dirs, icons):
        optvis.save_png(img, OUT / f"direction_{LAYER}_{name}.png")
    # the same directions over the whole image (mean over positions), 128 px
    g2 = gens(len(vecs), 100)
    r = optvis.render_vis(model, optvis.directions(LAYER, vecs, spatial_mean=True, cossim_pow=1),
                          optvis.fft_image(128, len(vecs), generator=g2), generator=g2, steps=steps)
    optvis.save_png(r.images, OUT / f"directions_{LAYER}_textures.png")


def whitened(model, paths: list[Path], steps: int) -> None:
    """The same four directions, whitened (``v @ S``) with S from 200 photos x 196 positions."""
    rows = []
    for start in range(0, 1000, 125):
        batch = paths[start:start + 125:5]
        x = torch.stack([model.image_transform(Image.open(p)) for p in batch])
        with torch.no_grad(), capture(model, [LAYER], detach=True) as a:
            model(x)
        rows.append(a[LAYER].permute(0, 2, 3, 1).reshape(-1, a[LAYER].shape[1]))
    s = optvis.whitening_matrix(torch.cat(rows))
    dirs = photo_directions(model, paths)
    vecs = np.stack(list(dirs.values()))
    g = [[cell_generator(0, 1, i) for i in range(len(vecs))]]
    icons, _ = render_directions(model, LAYER, vecs, g, steps=steps, whiten=s, objective="center")
    optvis.save_png(icons, OUT / f"directions_{LAYER}_icons_whitened.png")


def dream(model, paths: list[Path], steps: int) -> None:
    photo = model.image_transform(Image.open(paths[970]))[None]  # alp
    g = torch.Generator().manual_seed(0)
    param = optvis.fft_image(224, init=photo)
    r = optvis.render_vis(model, optvis.layer(LAYER), param, [optvis.jitter(8)], generator=g, steps=steps, lr=0.02)
    optvis.save_png(torch.cat([photo, r.images]), OUT / f"deepdream_{LAYER}_alp.png")


def algebra(model, steps: int) -> None:
    g = gens(4, 200)
    obj = optvis.channel(LAYER, 97) + 100 * optvis.diversity(LAYER)  # Lucid: channel - 1e2 * diversity
    r = optvis.render_vis(model, obj, optvis.fft_image(96, 4, generator=g), generator=g, steps=steps)
    optvis.save_png(r.images, OUT / f"diversity_{LAYER}_97.png")
    g = gens(5, 300)
    obj = optvis.interpolate(optvis.channel(LAYER, 447), optvis.channel(LAYER, 1))
    r = optvis.render_vis(model, obj, optvis.fft_image(96, 5, generator=g), generator=g, steps=steps)
    optvis.save_png(r.images, OUT / f"interpolate_{LAYER}_447_1.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="channels,directions,whitened,dream,algebra")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    model = load_model("inceptionv1", weights=args.weights)
    paths = sorted(Path(args.images).glob("*.JPEG"))
    parts = args.only.split(",")
    for name, fn in (("channels", lambda: channels(model, args.steps)),
                     ("directions", lambda: directions(model, paths, args.steps)),
                     ("whitened", lambda: whitened(model, paths, args.steps)),
                     ("dream", lambda: dream(model, paths, min(args.steps, 96))),
                     ("algebra", lambda: algebra(model, args.steps // 2))):
        if name in parts:
            t = time.perf_counter()
            fn()
            log.info("%s: %.0f s", name, time.perf_counter() - t)


if __name__ == "__main__":
    main()
