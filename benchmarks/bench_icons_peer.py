"""Atlas icons side by side with dreamlens: the same cells, steps, size and batch.

Renders the icons of ``--cells`` cells of one grid level of a run (evenly spaced over the
level's kept cells) with

- ``atlas``: the render stage's defaults (:func:`atlas.stages.render.render_directions`);
- ``atlas-VIEW``: another ``icon_view`` (:data:`atlas.stages.render.ICON_VIEWS`): ``whole`` (16 px gray
  pad, the model sees 78 px), ``wide`` (8 px, 62 px), ``notebooks`` (the paper notebooks' 2 px
  white pad and 50 px window, the default before this benchmark); ``-mean`` / ``-center``
  the icon objective read on the activation averaged over positions (the default) or at the
  center (``--objective``); ``-powP`` another ``cossim_pow``, ``-borderW`` the frame prior at
  weight W (``--border-prior``), ``-lrX`` another learning rate (``--lr``), ``-bf16`` bf16
  autocast (``--precision bf16``), e.g. ``atlas-wide-bf16``;
- ``dreamlens`` / ``dreamlens-3``: dreamlens's ``render_icons`` (optional, ``pip install
  dreamlens``) with 1 attempt / its default 3 attempts (best kept), on the same model and layer;

all at ``--steps`` steps, 80 px, ``--batch-size`` cells per optimizer batch, one process, and
scores every icon the same way:

- ``cos224``: the cosine between the icon's spatially averaged activation at 224 px and its
  cell's direction (the icon resized to the model's input size, activations averaged over all
  positions);
- ``cos_center``: the cosine at the center position of the layer for the 80 px icon (the
  render stage's own figure, ``RenderSummary.mean_cossim``, for ``objective="center"``);
- ``sharpness`` (mean absolute Laplacian of the luminance), ``saturation`` (mean HSV
  saturation) and ``contrast`` (standard deviation of the luminance), in [0, 1] pixel units;
- icons per minute of wall time, the methods taking turns batch by batch (so that load from
  other processes slows them alike).

    python benchmarks/bench_icons_peer.py runs/real-1m --weights ../shared/models/bvlc_googlenet.pth \\
        --level 20 --cells 64 --steps 128 --threads 2

Prints a table, writes ``benchmarks/results/icons_peer.json`` and the contact sheet
``docs/gallery/icons_peer.png`` (one row of icons per method, the same cells in each column).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from atlas import optvis
from atlas.models import AtlasModel, capture, load_model
from atlas.stages.render import (
    DEFAULT_COSSIM_POW,
    DEFAULT_ICON_OBJECTIVE,
    DEFAULT_ICON_VIEW,
    ICON_VIEWS,
    _icon_cossim,
    cell_generator,
    icon_view_transforms,
    render_directions,
)
from atlas.store.cells import cells_attrs, read_cells

REPO = Path(__file__).resolve().parents[1]


def icon_scores(model: AtlasModel, layer: str, icons: torch.Tensor, vecs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-icon measures described in the module docstring."""
    s = model.input_size
    x = F.interpolate(icons, size=(s, s), mode="bilinear", align_corners=False)
    with torch.no_grad(), capture(model, [layer], detach=True) as a:
        optvis.evaluate(model, optvis.channel(layer, 0), x)
    act = a[layer].mean(dim=(2, 3))
    cos224 = F.cosine_similarity(act, torch.from_numpy(vecs).float(), dim=1).numpy()
    lum = (0.299 * icons[:, 0] + 0.587 * icons[:, 1] + 0.114 * icons[:, 2])[:, None]
    lap = F.conv2d(lum, torch.tensor([[[[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]]]))
    hi, lo = icons.max(1).values, icons.min(1).values
    return {
        "cos224": cos224,
        "cos_center": _icon_cossim(model, layer, icons, vecs),
        "sharpness": lap.abs().mean((1, 2, 3)).numpy(),
        "saturation": ((hi - lo) / hi.clamp(min=1e-3)).mean((1, 2)).numpy(),
        "contrast": lum.std((1, 2, 3)).numpy(),
    }


def render_atlas(model: AtlasModel, layer: str, vecs: np.ndarray, ids: np.ndarray, level: int, steps: int,
                 batch: int, view: str | None = None, cossim_pow: float | None = None,
                 precision: str = "fp32", border_prior: float = 0.0, objective: str = DEFAULT_ICON_OBJECTIVE,
                 lr: float | None = None) -> torch.Tensor:
    kw: dict = {"precision": precision, "border_prior": border_prior, "objective": objective}
    if lr is not None:
        kw["lr"] = lr
    if view is not None:
        kw["transforms"] = icon_view_transforms(view)
    if cossim_pow is not None:
        kw["cossim_pow"] = cossim_pow
    out = []
    for i in range(0, len(vecs), batch):
        gens = [[cell_generator(0, level, int(c)) for c in ids[i:i + batch]]]
        icons, _ = render_directions(model, layer, vecs[i:i + batch], gens, steps=steps, **kw)
        out.append(icons)
    return torch.cat(out)


def atlas_method(name: str) -> dict | None:
    """``atlas[-VIEW][-mean|-center][-powP][-borderW][-lrX][-bf16]`` -> keyword arguments of
    :func:`render_atlas`, None if not one."""
    parts = name.split("-")
    if parts[0] != "atlas":
        return None
    kw: dict = {}
    for part in parts[1:]:
        if part in ("mean", "center"):
            kw["objective"] = part
        elif part in ICON_VIEWS:
            kw["view"] = part
        elif part == "bf16":
            kw["precision"] = "bf16"
        elif part.startswith("pow"):
            kw["cossim_pow"] = float(part[3:])
        elif part.startswith("border"):
            kw["border_prior"] = float(part[6:])
        elif part.startswith("lr"):
            kw["lr"] = float(part[2:])
        else:
            return None
    return kw


def render_dreamlens(model: AtlasModel, layer: str, vecs: np.ndarray, steps: int, batch: int,
                     attempts: int) -> torch.Tensor:
    from dreamlens.render import render_icons

    torch.manual_seed(0)
    out = []
    for i in range(0, len(vecs), batch):
        imgs, _ = render_icons(vecs[i:i + batch], model, "net." + layer, size=80, n_steps=steps,
                               num_attempts=attempts, device=str(model.device))
        out.append(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float())
    return torch.cat(out)


def contact_sheet(rows: list[tuple[str, torch.Tensor]], path: Path, columns: int) -> None:
    """One row per method; the columns are ``columns`` cells spread evenly over those rendered."""
    size, gap, left = 80, 3, 150
    sheet = Image.new("RGB", (left + columns * (size + gap), len(rows) * (size + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, icons) in enumerate(rows):
        y = r * (size + gap)
        for line, text in enumerate(name.split("\n")):
            draw.text((4, y + 4 + 12 * line), text, fill="black")
        pick = np.unique(np.linspace(0, len(icons) - 1, columns).round().astype(int))
        arr = optvis.to_uint8(icons[pick])
        for c in range(len(arr)):
            sheet.paste(Image.fromarray(arr[c]), (left + c * (size + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run folder with cells.h5")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--level", type=int, default=20)
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--methods", default="atlas,atlas-notebooks,dreamlens",
                    help="atlas[-VIEW][-powP][-bf16], dreamlens, dreamlens-3 [%(default)s]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--columns", type=int, default=12, help="icons per row of the contact sheet")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "icons_peer.json"))
    ap.add_argument("--sheet", default=str(REPO / "docs" / "gallery" / "icons_peer.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cells = Path(args.run) / "cells.h5"
    layer = str(cells_attrs(cells)["layer"])
    lv = read_cells(cells, [args.level])[args.level]
    idx = np.unique(np.linspace(0, len(lv) - 1, args.cells).round().astype(int))
    vecs, ids = lv.direction[idx].astype(np.float32), lv.cell_id[idx]
    model = load_model("inceptionv1", weights=args.weights, device="cpu")
    print(f"# {len(idx)} cells of level {args.level} of {cells} ({layer}); {args.steps} steps, 80 px, "
          f"batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'method':16s} {'cos224':>7s} {'cos_ctr':>7s} {'sharp':>7s} {'satur':>7s} {'contr':>7s} {'icons/min':>9s}")
    methods = args.methods.split(",")
    for method in methods:
        if method not in ("dreamlens", "dreamlens-3") and atlas_method(method) is None:
            raise SystemExit(f"unknown method {method!r}")
    if any(m.startswith("dreamlens") for m in methods):
        try:
            import dreamlens  # noqa: F401
        except ImportError as e:
            print(f"# dreamlens skipped: {e} (pip install dreamlens)", file=sys.stderr)
            methods = [m for m in methods if not m.startswith("dreamlens")]
    # Batch by batch, every method in turn: load from other processes then slows all methods alike.
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for i in range(0, len(vecs), args.batch_size):
        v, c = vecs[i:i + args.batch_size], ids[i:i + args.batch_size]
        for method in methods:
            t0 = time.perf_counter()
            if method.startswith("dreamlens"):
                icons = render_dreamlens(model, layer, v, args.steps, args.batch_size,
                                         attempts=3 if method == "dreamlens-3" else 1)
            else:
                icons = render_atlas(model, layer, v, c, args.level, args.steps, args.batch_size,
                                     **atlas_method(method))
            seconds[method] += time.perf_counter() - t0
            parts[method].append(icons)
    rows, sheet = [], []
    for method in methods:
        icons = torch.cat(parts[method])
        sc = icon_scores(model, layer, icons, vecs)
        rate = len(vecs) / seconds[method] * 60
        row = {"method": method, "icons_per_min": rate, "seconds": seconds[method],
               **{k: float(v.mean()) for k, v in sc.items()}, "per_icon": {k: v.tolist() for k, v in sc.items()}}
        rows.append(row)
        print(f"{method:16s} {row['cos224']:7.3f} {row['cos_center']:7.3f} {row['sharpness']:7.4f} "
              f"{row['saturation']:7.3f} {row['contrast']:7.3f} {rate:9.1f}", flush=True)
        sheet.append((f"{method}\ncos224 {row['cos224']:.3f}\n{rate:.0f} icons/min", icons))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "cells": len(idx), "level": args.level,
                                           "steps": args.steps, "batch_size": args.batch_size,
                                           "default_cossim_pow": DEFAULT_COSSIM_POW,
                                           "default_icon_view": DEFAULT_ICON_VIEW, "rows": rows}, indent=1))
    contact_sheet(sheet, Path(args.sheet), args.columns)
    print(f"wrote {args.json} and {args.sheet}")


if __name__ == "__main__":
    main()
