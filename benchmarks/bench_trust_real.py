"""Layout quality on real activations: sample-fit + placement vs a full UMAP fit.

    python benchmarks/bench_trust_real.py --images DIR --weights bvlc_googlenet.pth

Collects 20 random ``inception4c`` positions from each of the 1000 sample photos (20,000 real
rows, no attribution), then lays them out three ways with the same UMAP settings:

- ``full``: UMAP fitted on all 20,000 rows;
- ``sample+knn``: fitted on a 5,000-row sample, the other 15,000 placed by atlas's kNN placement;
- ``sample+transform``: the same fit, the others placed by ``UMAP.transform``.

and reports sklearn's trustworthiness (k=10, cosine) of each layout on the same 5,000 rows
(drawn from the rows that were *not* in the fit sample), with wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.manifold import trustworthiness

from atlas.stages.collect.stage import CollectSettings, collect
from atlas.stages.reduce import AtlasUMAP
from atlas.store.activations import ActivationsFile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--positions", type=int, default=20)
    ap.add_argument("--sample", type=int, default=5000)
    ap.add_argument("--eval", type=int, default=5000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "acts.h5"
        t = time.perf_counter()
        collect(args.images, out, "inceptionv1", CollectSettings(positions_per_image=args.positions, attribution=False),
                weights=args.weights, device="cpu", progress=False)
        with ActivationsFile(out) as f:
            x = f.read(None, "activations").astype(np.float32)
        print(f"collected {len(x)} real inception4c rows in {time.perf_counter() - t:.0f} s", flush=True)
    res: dict = {"rows": len(x), "sample": args.sample, "eval_rows": args.eval}
    t = time.perf_counter()
    full = AtlasUMAP(sample_size=len(x), random_state=0).fit(x)
    xy_full = full.transform(x)
    res["full_fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    part = AtlasUMAP(sample_size=args.sample, random_state=0).fit(x)
    res["sample_fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    xy_knn = part.transform(x, placement="knn")
    res["knn_place_s"] = time.perf_counter() - t
    t = time.perf_counter()
    xy_umap = part.transform(x, placement="umap")
    res["umap_transform_s"] = time.perf_counter() - t
    fitted = np.zeros(len(x), bool)
    fitted[np.asarray(part.sample_indices_)] = True
    rng = np.random.default_rng(0)
    ev = rng.choice(np.flatnonzero(~fitted), size=min(args.eval, int((~fitted).sum())), replace=False)
    for name, xy in (("full", xy_full), ("sample+knn", xy_knn), ("sample+transform", xy_umap)):
        res[f"trust_{name}"] = float(trustworthiness(x[ev], xy[ev], n_neighbors=10, metric="cosine"))
        print(f"{name}: trustworthiness {res[f'trust_{name}']:.4f}", flush=True)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
