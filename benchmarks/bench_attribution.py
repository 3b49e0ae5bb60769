"""Attribution at many positions: per-position forward mode vs one backward pass per candidate class.

    python benchmarks/bench_attribution.py --images ../shared/images/imagenette-val \\
        --weights ../shared/models/bvlc_googlenet.pth --n 32

On ``--n`` real photos (drawn with a fixed seed) and the real InceptionV1 at ``inception4c``:

- **forward mode** (``attribution_classes=0``, every class ranked): one forward-mode pass of the
  network per sampled position; timed on ``--slots`` positions per photo, and its cost is that
  per-position figure times the positions (one pass per position, by construction);
- **candidates** (``attribution_classes=N``): one forward pass, then one backward pass per
  candidate class (the photo's N top-scoring classes plus its label) from the logits down to
  the layer, batched, for all 196 positions at once;
- **no attribution**: the forward pass alone.

It checks that the candidate values equal the forward-mode values of the same classes at the
same positions (max abs difference), and reports how the rows' top-10 classes compare with
ranking every class: overlap of the two top-10 sets, and how often the photo's label is among
the top 10 (rows at every position, label known).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.models import load_model
from atlas.stages.collect.rows import attributed_slots, candidate_attribution


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--n", type=int, default=32, help="photos")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--slots", type=int, default=4, help="positions per photo timed in forward mode")
    ap.add_argument("--candidates", default="8,16,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from atlas.data import infer_label, list_photos

    photos = list_photos(args.images)
    photos = [photos[i] for i in np.sort(np.random.default_rng(0).choice(len(photos), args.n, replace=False))]
    model = load_model("inceptionv1", weights=args.weights, device="cpu").to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.stack([model.image_transform(Image.open(p)) for p in photos]).contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([infer_label([*p.parent.parts[-1:], p.name]) for p in photos])
    batches = [slice(s, s + args.batch) for s in range(0, len(photos), args.batch)]
    res: dict = {"photos": len(photos), "batch": args.batch, "threads": args.threads}

    with torch.no_grad():
        model(x[batches[0]])  # warm-up
        t = time.perf_counter()
        for b in batches:
            model(x[b])
        res["forward_s_per_photo"] = (time.perf_counter() - t) / len(photos)

    rng = np.random.default_rng(1)
    pos = np.stack([np.stack(np.divmod(rng.choice(196, args.slots, replace=False), 14), 1) for _ in photos])
    t = time.perf_counter()
    exact = []
    for b in batches:
        _, attrs = attributed_slots(model, x[b], "inception4c", pos[b])
        exact.append(torch.stack(attrs, 1))  # (B, slots, K)
    exact = torch.cat(exact)
    per_pos = (time.perf_counter() - t) / (len(photos) * args.slots)
    res["forward_mode_s_per_position"] = per_pos
    res["forward_mode_s_per_photo_all_196"] = per_pos * 196
    print(f"no attribution: {res['forward_s_per_photo']:.3f} s/photo; forward mode: {per_pos:.3f} s per position "
          f"-> {per_pos * 196:.1f} s/photo at all 196 positions", flush=True)

    res["candidates"] = {}
    for n in (int(v) for v in args.candidates.split(",")):
        t = time.perf_counter()
        out = [candidate_attribution(model, x[b], "inception4c", n, labels[b]) for b in batches]
        sec = (time.perf_counter() - t) / len(photos)
        classes = torch.cat([o[1] for o in out])  # (P, n + 1)
        attr = torch.cat([o[2] for o in out])  # (P, n + 1, 14, 14)
        diffs, overlap, top1, lab_c, lab_e = [], [], [], [], []
        for i in range(len(photos)):
            for s in range(args.slots):
                y, xx = pos[i, s]
                ex = exact[i, s]
                mine = attr[i, :, y, xx]
                diffs.append(float((mine - ex[classes[i]]).abs().max()))
                top_e = ex.topk(10).indices.tolist()
                top_c = classes[i][mine.topk(min(10, len(mine))).indices].tolist()
                overlap.append(len(set(top_e) & set(top_c)))
                top1.append(top_e[0] == top_c[0])
                if labels[i] >= 0:
                    lab_c.append(int(labels[i]) in top_c)
                    lab_e.append(int(labels[i]) in top_e)
        res["candidates"][n] = {
            "s_per_photo_all_196": sec, "speedup_vs_forward_mode_all_196": per_pos * 196 / sec,
            "max_abs_diff": max(diffs), "top10_overlap_mean": float(np.mean(overlap)),
            "top1_same": float(np.mean(top1)), "label_in_top10": float(np.mean(lab_c)) if lab_c else None,
            "label_in_top10_every_class": float(np.mean(lab_e)) if lab_e else None,
        }
        r = res["candidates"][n]
        print(f"candidates {n:>3}: {sec:.3f} s/photo at all 196 positions ({r['speedup_vs_forward_mode_all_196']:.0f}x "
              f"forward mode); max |diff| {r['max_abs_diff']:.1e}; top-10 overlap with every-class ranking "
              f"{r['top10_overlap_mean']:.1f}/10, same top-1 {r['top1_same']:.0%}; label in top 10: "
              f"{r['label_in_top10']:.0%} (every class ranked: {r['label_in_top10_every_class']:.0%})", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
