"""Every zoom level of an atlas: cold icons against icons warm-started from their parent cells.

Picks at least ``--cells`` cells of every grid level of a run so that the picked cells of a level
have their parents among the picked cells of the next coarser level (``--cells`` cells evenly
spread over the finest level, their parents, topped up with evenly spread cells to ``--cells``,
and so on up to the coarsest level), and renders them with each method:

- ``cold`` / ``coldN``: every cell from noise, ``--steps`` / N steps (the render stage's
  ``start="cold"``);
- ``parentN``: the coarsest level as ``cold`` (the same icons: the same seeds and settings; its
  time counts for this method too), every finer cell from its parent cell's icon (as stored:
  8-bit), N steps (``start="parent", refine_steps=N``); suffixes ``-lrX``: the refinement's
  learning rate (``refine_lr``; default the icons' 0.08), ``-rrK``: K steps of redirected ReLU
  gradient (default 0, as the render stage), ``-mixA``: the start pulled toward gray,
  ``0.5 + A * (icon - 0.5)``, ``-crop``: the start is the part of the parent's icon over the
  cell's place in the parent cell, magnified to the icon's size, ``-shift``: the parent's icon
  moved (not magnified) so that the cell's place in the parent cell is at the centre, the edge
  filled by reflection; ``parent0`` is the parent's icon itself;

- ``amortN``: every cell from its own icon as the amortised start's network predicts it
  (``start="amortised"``), N steps; suffixes ``-tT``: the network's training steps (default
  1000), ``-gX``: its learning rate, ``-hH``: its hidden units, ``-lrX``: the refinement's rate,
  ``-roll``: each start moved by the cell's cyclic shift (``amortise_shift``), ``-rollK``: by at
  most K px; tried and not kept: ``-cX-nK`` (a contrastive term at weight X, batches of anchors
  and their K - 1 nearest directions), ``-zK-dX`` (a K-dim latent per cell, and a penalty at
  weight X on one direction's two icons sharing a layout), ``-troll`` (shifted icons in
  training); ``cold-sN``: the cold render with seed N;

all with the render stage's defaults otherwise (whole view, mean objective, lr 0.08, 80 px),
``--batch-size`` cells per optimizer batch, seeded per cell as the render stage seeds them. The
methods take turns batch by batch within a level, so load from other processes slows them alike.
Every icon is scored as in ``bench_icons_peer.py`` (``cos224``, sharpness, saturation, contrast),
and below the coarsest level also by how far it is from its parent's icon (``parent_diff``: mean
absolute pixel difference, [0, 1]) and how much more it shows its own cell than its parent cell
(``specificity``: cos224 to its direction minus cos224 to its parent's direction), and on every
level how alike its subject is to the cold icon's of the same cell (``subject``: the cosine of the
model's ``avgpool`` features, layout-blind); differences to ``cold`` on the same cells come with
95% intervals.

Times: icons per minute per level, and for the whole pyramid of the run (every kept cell of
every level), the time each method would take from its per-icon time per level, a parent
method's coarsest level at the cold time: what the warm start costs, the parents included.

    python benchmarks/bench_pyramid.py runs/pyramid --weights ../shared/models/bvlc_googlenet.pth \\
        --cells 64 --methods cold,parent16,parent32 --threads 1

Resumable: each finished batch is kept under ``--work`` (default ``RUN/bench-pyramid/``), and a
rerun with the same arguments renders only what is missing (the times are the kept ones).
Writes ``benchmarks/results/pyramid.json`` and the contact sheet ``docs/gallery/pyramid.png``
(per level, one row of icons per method, the same cells in each column).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from atlas.models import load_model  # noqa: E402
from atlas.optvis import to_uint8  # noqa: E402
from atlas.stages.render import DEFAULT_LR, cell_generator, icon_view_transforms, parent_rows, render_directions  # noqa: E402
from atlas.stages.render.amortised import (  # noqa: E402
    cell_latents,
    cell_shifts,
    predict_icons,
    shifted,
    train_direction_images,
)  # noqa: E402
from atlas.store.cells import CellLevel, cells_attrs, read_cells  # noqa: E402
from bench_icons_peer import contact_sheet, icon_scores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHOD = re.compile(r"^(cold|parent|amort)(\d+)?((?:-rr\d+|-lr[0-9.]+|-mix[0-9.]+|-crop|-shift|-t\d+|-g[0-9.]+|-h\d+"
                    r"|-c[0-9.]+|-n\d+|-s\d+|-z\d+|-d[0-9.]+|-roll\d*|-troll)*)$")


#: ``-crop``, ``-shift``, ``-troll``: on/off settings of a method
FLAGS = {"crop": "crop", "shift": "shift", "troll": "train_roll"}
#: the numeric suffixes of a method, by prefix (longest first where one prefix starts another)
SUFFIXES = {"rr": ("rr", int), "lr": ("lr", float), "mix": ("mix", float), "t": ("train", int), "g": ("glr", float),
            "h": ("hidden", int), "c": ("contrast", float), "n": ("neighbours", int), "s": ("seed", int),
            "z": ("latent", int), "d": ("diversity", float)}


def parse_method(name: str, steps: int) -> dict:
    """A method name (the module docstring: ``cold[N]``, ``parentN[-...]``, ``amortN[-...]``) -> its settings."""
    m = METHOD.match(name)
    if not m or (m.group(1) != "cold" and not m.group(2)):
        raise SystemExit(f"unknown method {name!r}: cold[N][-sS], parentN[-rrK][-lrX]... or amortN[-tT][-lrX]... (see --help)")
    kw = {"warm": m.group(1) == "parent", "amort": m.group(1) == "amort", "steps": int(m.group(2) or steps), "rr": 16,
          "lr": DEFAULT_LR, "mix": 1.0, "crop": False, "shift": False, "train": 1000, "glr": 2e-3, "hidden": 256,
          "contrast": 0.0, "neighbours": 1, "seed": 0, "latent": 0, "diversity": 0.0, "roll": False,
          "train_roll": False}
    if kw["warm"] or kw["amort"]:
        kw["rr"] = 0
    for part in filter(None, m.group(3).split("-")):
        if part in FLAGS:
            kw[FLAGS[part]] = True
        elif part.startswith("roll"):
            kw["roll"] = int(part[4:] or 0) or True
        else:
            prefix = next(p for p in SUFFIXES if part.startswith(p))  # the regex admits only these
            key, kind = SUFFIXES[prefix]
            kw[key] = kind(part[len(prefix):])
    return kw


def even(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def pick_cells(levels: dict[int, CellLevel], k: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Rows picked per level (ascending) and, for every level but the coarsest, each picked
    row's parent row in the next coarser level (always picked too)."""
    sizes = sorted(levels)
    picked = {sizes[-1]: even(len(levels[sizes[-1]]), k)}
    parents: dict[int, np.ndarray] = {}
    for fine, coarse in zip(sizes[::-1], sizes[-2::-1]):
        parents[fine] = parent_rows(levels[fine], levels[coarse])
        need = np.unique(parents[fine][picked[fine]])
        extra = np.setdiff1d(even(len(levels[coarse]), 4 * k), need)
        top = max(0, k - len(need))
        picked[coarse] = np.union1d(need, extra[even(len(extra), top)] if top else []).astype(np.int64)
    return picked, parents


def crop_starts(images: torch.Tensor, coords: np.ndarray, parent_coords: np.ndarray, f: float) -> torch.Tensor:
    """Each parent icon (B, 3, S, S) cut to the cell's place in its parent cell (``f`` cells a
    side), magnified back to S px."""
    s = images.shape[-1]
    out = []
    for img, (iy, ix), (py, px) in zip(images, coords, parent_coords):
        y0 = int(round(np.clip(iy / f - py, 0, 1 - 1 / f) * s))
        x0 = int(round(np.clip(ix / f - px, 0, 1 - 1 / f) * s))
        w = max(1, int(round(s / f)))
        out.append(F.interpolate(img[None, :, y0:y0 + w, x0:x0 + w], size=(s, s), mode="bilinear",
                                 align_corners=False)[0])
    return torch.stack(out)


def shift_starts(images: torch.Tensor, coords: np.ndarray, parent_coords: np.ndarray, f: float) -> torch.Tensor:
    """Each parent icon (B, 3, S, S) moved so that the cell's place in its parent cell (``f`` cells
    a side) comes to the icon's centre, at the parent's scale (no magnification: as sharp as the
    parent), the edge it uncovers filled by reflection; siblings start from different views."""
    s = images.shape[-1]
    pad = s // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    out = []
    for img, (iy, ix), (py, px) in zip(padded, coords, parent_coords):
        dy = ((iy + 0.5) / f - py) - 0.5  # the cell's centre within its parent cell, from the parent's centre
        dx = ((ix + 0.5) / f - px) - 0.5
        y0 = int(round(pad + np.clip(dy, -0.5, 0.5) * s))
        x0 = int(round(pad + np.clip(dx, -0.5, 0.5) * s))
        out.append(img[:, y0:y0 + s, x0:x0 + s])
    return torch.stack(out)


def subject_features(model, icons: torch.Tensor) -> torch.Tensor:
    """What an icon depicts, whatever its layout: the model's ``avgpool`` features (1024, the
    spatial mean of its last layer) of the icon at the model's input size."""
    from atlas.models import capture

    s = model.input_size
    x = F.interpolate(icons, size=(s, s), mode="bilinear", align_corners=False)
    with torch.no_grad(), capture(model, ["avgpool"], detach=True) as a:
        model(x)
    return a["avgpool"].flatten(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run folder with cells.h5")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cells", type=int, default=64, help="at least this many cells a level")
    ap.add_argument("--steps", type=int, default=128, help="steps of cold and of the coarsest level")
    ap.add_argument("--methods", default="cold,parent16,parent32")
    ap.add_argument("--levels", default=None, help="grid sizes to use [all of the run's]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--columns", type=int, default=12)
    ap.add_argument("--work", default=None, help="finished batches [RUN/bench-pyramid]")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "pyramid.json"))
    ap.add_argument("--sheet", default=str(REPO / "docs" / "gallery" / "pyramid.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cells = Path(args.run) / "cells.h5"
    layer = str(cells_attrs(cells)["layer"])
    levels = read_cells(cells, None if args.levels is None else [int(s) for s in args.levels.split(",")])
    sizes = sorted(levels)
    methods = args.methods.split(",")
    spec = {m: parse_method(m, args.steps) for m in methods}
    if "cold" in methods:
        methods.remove("cold")
    methods.insert(0, "cold")  # the baseline of every comparison, and the parent methods' coarsest level
    spec["cold"] = parse_method("cold", args.steps)
    picked, parents = pick_cells(levels, args.cells)
    work = Path(args.work or Path(args.run) / "bench-pyramid")
    work.mkdir(parents=True, exist_ok=True)
    model = load_model("inceptionv1", weights=args.weights, device="cpu")
    transforms = icon_view_transforms("whole")
    print(f"# {cells} ({layer}); cells picked per level: "
          + ", ".join(f"{s}: {len(picked[s])} of {len(levels[s])}" for s in sizes)
          + f"; {args.steps} cold steps, 80 px, batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}",
          flush=True)
    icons: dict[tuple[str, int], list[np.ndarray]] = {}
    seconds: dict[tuple[str, int], float] = {}
    # amortised starts: one network per training setting, trained on every kept cell of every level
    nets: dict[str, torch.nn.Module] = {}
    trained: dict[str, float] = {}
    pool = np.concatenate([levels[s].direction for s in sizes]).astype(np.float32)
    for m in methods:
        kw = spec[m]
        if not kw["amort"]:
            continue
        tag = f"t{kw['train']}-g{kw['glr']}-h{kw['hidden']}"
        if kw["contrast"] or kw["neighbours"] > 1:
            tag += f"-c{kw['contrast']}-n{kw['neighbours']}"
        if kw["latent"]:
            tag += f"-z{kw['latent']}-d{kw['diversity']}"
        if kw["train_roll"]:
            tag += "-roll"
        path = work / f"amort-{tag}.pt"
        if tag not in nets:
            if path.exists():
                saved = torch.load(path, weights_only=False)
                nets[tag], trained[tag] = saved["net"], saved["seconds"]
                if not hasattr(nets[tag], "latent"):  # pickled before the networks took latents
                    nets[tag].latent = 0
            else:
                fit = train_direction_images(model, layer, pool, transforms, steps=kw["train"], lr=kw["glr"],
                                             hidden=kw["hidden"], contrast=kw["contrast"],
                                             neighbours=kw["neighbours"], latent=kw["latent"],
                                             diversity=kw["diversity"], shift=kw["train_roll"], progress=True)
                torch.save({"net": fit.net, "seconds": fit.seconds, "history": fit.history}, path)
                nets[tag], trained[tag] = fit.net, fit.seconds
                print(f"  amortised start {tag}: {fit.seconds:.0f} s on {len(pool):,} directions; objective per 50 "
                      "steps " + " ".join(f"{h:.3f}" for h in fit.history), flush=True)
        kw["tag"] = tag
    for size in sizes:
        rows = picked[size]
        lv = levels[size]
        for m in methods:
            icons[m, size], seconds[m, size] = [], 0.0
        for b, start in enumerate(range(0, len(rows), args.batch_size)):
            r = rows[start:start + args.batch_size]
            vecs, ids = lv.direction[r].astype(np.float32), lv.cell_id[r]
            for m in methods:
                kw = spec[m]
                warm = kw["warm"] and size != sizes[0]
                if kw["warm"] and not warm:
                    continue  # the coarsest level is cold's
                key = work / f"{m}-{size}-{b:03d}.npz"
                if key.exists():
                    z = np.load(key)
                    if "rows" in z and np.array_equal(z["rows"], r):  # the same cells (other --cells: redo)
                        icons[m, size].append(z["icons"])
                        seconds[m, size] += float(z["seconds"])
                        continue
                init = None
                if kw["amort"]:
                    z = cell_latents(kw["seed"], size, ids, kw["latent"]) if kw["latent"] else None
                    init = predict_icons(nets[kw["tag"]], vecs, z=z)
                    if kw["roll"]:
                        sh = cell_shifts(kw["seed"], size, ids, init.shape[-1])
                        if kw["roll"] is not True:  # at most K px either way
                            sh = sh % (2 * kw["roll"] + 1) - kw["roll"]
                        init = shifted(init, sh)
                if warm:
                    coarse = sizes[sizes.index(size) - 1]
                    done = np.concatenate(icons[m, coarse] if (m, coarse) in icons and icons[m, coarse]
                                          else icons["cold", coarse])
                    where = np.searchsorted(picked[coarse], parents[size][r])
                    init = torch.from_numpy(done[where]).permute(0, 3, 1, 2).float() / 255
                    init = 0.5 + kw["mix"] * (init - 0.5)
                    if kw["crop"]:
                        init = crop_starts(init, lv.coords[r], levels[coarse].coords[parents[size][r]], size / coarse)
                    if kw["shift"]:
                        init = shift_starts(init, lv.coords[r], levels[coarse].coords[parents[size][r]], size / coarse)
                gens = [[cell_generator(kw["seed"], size, int(c)) for c in ids]]
                t0 = time.perf_counter()
                out, _ = render_directions(model, layer, vecs, gens, steps=kw["steps"], lr=kw["lr"],
                                           transforms=transforms, objective="mean", init=init,
                                           redirect_relu_steps=kw["rr"])
                dt = time.perf_counter() - t0
                u8 = to_uint8(out)
                np.savez(key, icons=u8, seconds=dt, rows=r)
                icons[m, size].append(u8)
                seconds[m, size] += dt
            print(f"  level {size} batch {b}: " + ", ".join(
                f"{m} {seconds[m, size]:.0f} s" for m in methods if icons[m, size]), flush=True)
        if any(spec[m]["warm"] for m in methods) and size == sizes[0]:
            for m in methods:
                if spec[m]["warm"]:
                    icons[m, size], seconds[m, size] = icons["cold", size], seconds["cold", size]
    print(f"{'level':>5s} {'method':16s} {'cos224':>7s} {'sharp':>7s} {'satur':>7s} {'contr':>7s} {'parent':>7s} "
          f"{'specif':>7s} {'subject':>7s} {'icons/min':>9s}")
    results, sheet = [], []
    for size in sizes:
        rows = picked[size]
        vecs = levels[size].direction[rows].astype(np.float32)
        for m in methods:
            u8 = np.concatenate(icons[m, size])
            x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
            sc = icon_scores(model, layer, x, vecs)
            if size != sizes[0]:  # how far each icon moved from its parent's icon (the same method's)
                coarse = sizes[sizes.index(size) - 1]
                above = np.concatenate(icons[m, coarse])[np.searchsorted(picked[coarse], parents[size][rows])]
                sc["parent_diff"] = np.abs(u8.astype(np.float32) - above).mean((1, 2, 3)) / 255
                # how much more the icon shows its own cell than its parent cell (cos224 to each)
                up_vecs = levels[coarse].direction[parents[size][rows]].astype(np.float32)
                sc["specificity"] = sc["cos224"] - icon_scores(model, layer, x, up_vecs)["cos224"]
            # how alike its subject is to the cold icon's of the same cell (avgpool features' cosine)
            feats = subject_features(model, x)
            if m == "cold":
                cold_feats = feats
            sc["subject"] = F.cosine_similarity(feats, cold_feats, dim=1).numpy()
            rate = len(rows) / seconds[m, size] * 60
            row = {"level": size, "method": m, "cells": len(rows), "seconds": seconds[m, size], "icons_per_min": rate,
                   **{k: float(v.mean()) for k, v in sc.items()}, "per_icon": {k: v.tolist() for k, v in sc.items()}}
            results.append(row)
            print(f"{size:5d} {m:16s} {row['cos224']:7.3f} {row['sharpness']:7.4f} {row['saturation']:7.3f} "
                  f"{row['contrast']:7.3f} {row.get('parent_diff', float('nan')):7.3f} "
                  f"{row.get('specificity', float('nan')):7.4f} {row['subject']:7.3f} {rate:9.1f}", flush=True)
            sheet.append((f"{size}x{size} {m}\ncos224 {row['cos224']:.3f}\n{rate:.0f} icons/min", x))
    # paired differences to cold on the same cells, with 95% intervals (normal approximation)
    by = {(r["method"], r["level"]): r for r in results}
    print(f"{'level':>5s} {'method':16s} {'d cos224 vs cold [95%]':>26s} {'d sharpness vs cold [95%]':>28s}")
    for r in results:
        if r["method"] == "cold":
            continue
        r["vs_cold"] = {}
        for k in ("cos224", "sharpness", "saturation"):
            d = np.asarray(r["per_icon"][k]) - np.asarray(by["cold", r["level"]]["per_icon"][k])
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            r["vs_cold"][k] = [float(d.mean()), float(d.mean() - half), float(d.mean() + half)]
        c, h = r["vs_cold"]["cos224"], r["vs_cold"]["sharpness"]
        print(f"{r['level']:5d} {r['method']:16s} {c[0]:+9.4f} [{c[1]:+.4f}, {c[2]:+.4f}] "
              f"{h[0]:+10.4f} [{h[1]:+.4f}, {h[2]:+.4f}]")
    # the whole pyramid of the run: every kept cell of every level at the per-icon times measured
    counts = {s: len(levels[s]) for s in sizes}
    per_icon = {(r["method"], r["level"]): r["seconds"] / r["cells"] for r in results}
    pyramid = {}
    for m in methods:
        total = sum(counts[s] * per_icon[m, s] for s in sizes) + (trained[spec[m]["tag"]] if spec[m]["amort"] else 0.0)
        pyramid[m] = {"seconds": total, "icons_per_min": sum(counts.values()) / total * 60}
    print("# the run's whole pyramid (" + " / ".join(f"{counts[s]:,}" for s in sizes) + " cells): " + ", ".join(
        f"{m} {p['seconds'] / 60:.1f} min ({p['icons_per_min']:.0f} icons/min, "
        f"{pyramid['cold']['seconds'] / p['seconds']:.2f}x cold)" for m, p in pyramid.items()), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "command": " ".join(sys.argv), "threads": args.threads, "steps": args.steps, "batch_size": args.batch_size,
        "picked": {s: picked[s].tolist() for s in sizes}, "level_cells": counts, "pyramid": pyramid,
        "rows": results}, indent=1))
    contact_sheet(sheet, Path(args.sheet), args.columns)
    print(f"wrote {args.json} and {args.sheet}")


if __name__ == "__main__":
    main()
