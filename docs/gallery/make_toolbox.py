"""Regenerate the DeepDream, style-transfer and channel-view figures of this folder (README.md).

CPU, a few minutes on 2 cores::

    python docs/gallery/make_toolbox.py --weights ../shared/models/bvlc_googlenet.pth \\
        --images ../shared/images/imagenet-sample [--only dream,style,channels]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from atlas.models import load_model
from atlas.optvis import to_uint8
from atlas.optvis.dream import dream, read_image, resize_image
from atlas.optvis.neural_style import style_transfer

OUT = Path(__file__).resolve().parent
log = logging.getLogger("gallery")


def labelled_strip(images: list[np.ndarray], labels: list[str], path: Path, gap: int = 4) -> None:
    """uint8 (H, W, 3) images of one height side by side, a caption above each."""
    h = max(i.shape[0] for i in images)
    w = sum(i.shape[1] for i in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (w, h + 16), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for img, text in zip(images, labels):
        canvas.paste(Image.fromarray(img), (x, 16))
        draw.text((x + 2, 2), text, fill="black")
        x += img.shape[1] + gap
    canvas.save(path, optimize=True)


def dream_figure(model, paths: dict[str, Path], max_side: int) -> None:
    photo = paths["lakeside"]
    base = read_image(photo, max_side)
    panels, labels = [to_uint8(base[0])], [f"photo ({photo.name})"]
    for layer in ("inception3b", "inception4c"):
        r = dream(model, photo, layer, max_side=max_side, device="cpu")
        panels.append(to_uint8(r.image[0]))
        labels.append(f"dream {layer}: 4 octaves x 10 steps")
    labelled_strip(panels, labels, OUT / "dream_lakeside.png")


def style_figure(model, paths: dict[str, Path], size: int = 224, steps: int = 200) -> None:
    """Rows content | style | result; the style images are textured photos (no painting in the sample)."""
    rows = []
    for content_name, style_name in (("lakeside", "honeycomb"), ("golden_retriever", "coral_reef")):
        r = style_transfer(model, paths[content_name], paths[style_name], size=size, steps=steps, device="cpu")
        log.info("%s x %s: content loss %.3g -> %.3g, style loss %.3g -> %.3g", content_name, style_name,
                 r.start_content_loss, r.content_loss, r.start_style_loss, r.style_loss)
        h, w = r.image.shape[2:]
        style = read_image(paths[style_name], size)
        panels = [read_image(paths[content_name], size), resize_image(style, (h, round(style.shape[3] * h / style.shape[2]))),
                  r.image]
        rows.append([to_uint8(p[0]) for p in panels])
    width = max(sum(p.shape[1] for p in row) + 8 for row in rows)
    canvas = Image.new("RGB", (width, sum(row[0].shape[0] + 20 for row in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for row, names in zip(rows, (("lakeside", "honeycomb"), ("golden retriever", "coral reef"))):
        x = 0
        for img, text in zip(row, (f"content: {names[0]}", f"style: {names[1]} (photo)", "result")):
            draw.text((x + 2, y + 4), text, fill="black")
            canvas.paste(Image.fromarray(img), (x, y + 18))
            x += img.shape[1] + 4
        y += row[0].shape[0] + 20
    canvas.save(OUT / "style_transfer.png", optimize=True)


def channels_figure_real(model, paths: dict[str, Path], cache: Path) -> None:
    """Top 16 inception4c channels of the golden retriever photo (64 px icons, 96 steps, cached)."""
    from atlas.tools.channels import channel_view, channels_figure

    view = channel_view(model, paths["golden_retriever"], "inception4c", top=16, cache_dir=cache, device="cpu")
    channels_figure(view, OUT / "channels_view_golden_retriever.png", top=16, cols=4, size=80)
    log.info("top channels: %s", [(int(c), round(float(view.mean[c]), 1)) for c in view.order[:16]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-side", type=int, default=320)
    ap.add_argument("--only", default="dream,style,channels")
    ap.add_argument("--cache-dir", default=None, help="channel icon cache [the default cache]")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    model = load_model("inceptionv1", weights=args.weights)
    paths = {p.stem.split("_", 1)[1]: p for p in sorted(Path(args.images).glob("*.JPEG"))}
    parts = args.only.split(",")
    for name, fn in (("dream", lambda: dream_figure(model, paths, args.max_side)),
                     ("style", lambda: style_figure(model, paths)),
                     ("channels", lambda: channels_figure_real(model, paths, args.cache_dir))):
        if name in parts:
            t = time.perf_counter()
            fn()
            log.info("%s: %.0f s", name, time.perf_counter() - t)


if __name__ == "__main__":
    main()
