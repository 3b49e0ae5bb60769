"""Neighbouring cells of one level, rendered from noise (two seeds) and from a run's amortised
start (as the render stage starts them, and with shifted starts), one row per render, beside the
icons the run stored: what one place of the map looks like under each start.

    python benchmarks/pyramid_region.py runs/real-1m --weights ../shared/models/bvlc_googlenet.pth \\
        --level 80 --row 40 --col 34 --cells 12 --sheet docs/real-1m/real1m-80-region.jpg

The network is the run's own (``icons.start.pt`` beside ``icons.h5``, kept by an amortised
render). Prints per row the mean cos224 (as ``bench_icons_peer.py``), sharpness, ``subject`` (as
``bench_pyramid.py``: avgpool cosine to the seed-0 cold icon of the same cell) and the mean pixel
difference between neighbouring icons.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from atlas.models import load_model  # noqa: E402
from atlas.optvis import to_uint8  # noqa: E402
from atlas.stages.render import cell_generator, icon_view_transforms, render_directions  # noqa: E402
from atlas.stages.render.amortised import cell_shifts, network_of, predict_icons, shifted, start_file  # noqa: E402
from atlas.store.cells import cells_attrs, read_cells  # noqa: E402
from atlas.store.icons import read_icons  # noqa: E402
from bench_icons_peer import contact_sheet, icon_scores  # noqa: E402
from bench_pyramid import subject_features  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run folder with cells.h5, icons.h5 and icons.start.pt")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--level", type=int, default=80)
    ap.add_argument("--row", type=int, default=40)
    ap.add_argument("--col", type=int, default=34, help="first column")
    ap.add_argument("--cells", type=int, default=12, help="cells along the row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sheet", default="pyramid-region.jpg")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run, level = Path(args.run), args.level
    layer = str(cells_attrs(run / "cells.h5")["layer"])
    lv = read_cells(run / "cells.h5", [level])[level]
    want = [args.row * level + c for c in range(args.col, args.col + args.cells)]
    idx = np.flatnonzero(np.isin(lv.cell_id, want))
    vecs, ids = lv.direction[idx].astype(np.float32), lv.cell_id[idx]
    model = load_model("inceptionv1", weights=args.weights, device="cpu")
    transforms = icon_view_transforms("whole")
    rows: dict[str, torch.Tensor] = {}

    def render(name: str, init: torch.Tensor | None = None, *, seed: int = 0, steps: int = 128, lr: float = 0.08,
               rr: int = 16) -> None:
        t0 = time.perf_counter()
        gens = [[cell_generator(seed, level, int(c)) for c in ids]]
        icons, _ = render_directions(model, layer, vecs, gens, steps=steps, lr=lr, transforms=transforms,
                                     objective="mean", init=init, redirect_relu_steps=rr)
        rows[name] = torch.from_numpy(to_uint8(icons)).permute(0, 3, 1, 2).float() / 255
        print(f"{name.replace(chr(10), ' ')}: {time.perf_counter() - t0:.0f} s", flush=True)

    render("cold, 128 steps\n(seed 0)")
    render("cold, 128 steps\n(seed 1)", seed=1)
    net = network_of(torch.load(start_file(run / "icons.h5"), map_location="cpu", weights_only=True))
    init = predict_icons(net, vecs)
    render("amortised start\n(the default)", init, steps=16, lr=0.04, rr=0)
    shifts = cell_shifts(0, level, ids, init.shape[-1])
    render("amortised,\nshifted starts", shifted(init, shifts), steps=16, lr=0.04, rr=0)
    render("amortised, starts\nshifted up to 10 px", shifted(init, shifts % 21 - 10), steps=16, lr=0.04, rr=0)
    stored = read_icons(run / "icons.h5", [level])[level]
    rows["as rendered in\nthe run (amortised)"] = torch.from_numpy(stored.icons[idx]).permute(0, 3, 1, 2).float() / 255
    cold = subject_features(model, rows["cold, 128 steps\n(seed 0)"])
    sheet = []
    for name, x in rows.items():
        sc = icon_scores(model, layer, x, vecs)
        subject = F.cosine_similarity(subject_features(model, x), cold, dim=1).numpy()
        neighbours = (x[1:] - x[:-1]).abs().mean((1, 2, 3)).mean()
        print(f"{name.replace(chr(10), ' '):40s} cos224 {sc['cos224'].mean():.3f} sharpness {sc['sharpness'].mean():.3f} "
              f"subject {subject.mean():.3f} neighbour pixel difference {neighbours:.3f}")
        sheet.append((f"{name}\ncos224 {sc['cos224'].mean():.3f}", x))
    contact_sheet(sheet, Path(args.sheet), len(idx))
    print("wrote", args.sheet)


if __name__ == "__main__":
    main()
