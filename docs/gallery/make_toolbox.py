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
from atlas.optvis.dream import dream, read_image

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-side", type=int, default=320)
    ap.add_argument("--only", default="dream,style,channels")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    model = load_model("inceptionv1", weights=args.weights)
    paths = {p.stem.split("_", 1)[1]: p for p in sorted(Path(args.images).glob("*.JPEG"))}
    parts = args.only.split(",")
    for name, fn in (("dream", lambda: dream_figure(model, paths, args.max_side)),):
        if name in parts:
            t = time.perf_counter()
            fn()
            log.info("%s: %.0f s", name, time.perf_counter() - t)


if __name__ == "__main__":
    main()
