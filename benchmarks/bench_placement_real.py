"""Placement of non-fitted rows on a real atlas: kNN median, refined, and UMAP.transform.

    python benchmarks/bench_placement_real.py runs/real-1m --rows 20000 --eval 5000

Takes a finished run (its ``layout.h5`` and the fitted model beside it, ``layout.umap.pkl``),
draws ``--rows`` rows that were *not* in the UMAP fit sample (seeded), and places the same rows
three ways with the same fitted model, timing each:

- ``knn``: the per-axis median of the 20 nearest fitted rows (atlas's fast placement);
- ``refine``: the same start, then ``--epochs`` of UMAP's optimisation of the new points against
  the fixed embedding (atlas's default);
- ``umap``: ``UMAP.transform`` (umap-learn's own placement).

The run's saved placer searches neighbours with UMAP's NNDescent index; ``--ivf`` adds the
placer that a fit makes now (``knn_backend="auto"``: :class:`atlas.stages.reduce.placement.IVFIndex`,
inverted lists over the 64 leading principal axes with exact re-ranking), built from the same
fitted rows and layout. Its build, once per fit like UMAP's own index, is timed on its own line.

Then sklearn's trustworthiness (k=10, cosine) of each layout of ``--eval`` of those
rows (a seeded draw), and the rows/s of each. Everything in one process, one run, the same rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.manifold import trustworthiness

from atlas.stages.reduce import load_placer
from atlas.stages.reduce.placement import KNNPlacer
from atlas.store.activations import ActivationsFile
from atlas.store.layout import read_fit, read_layout, read_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--rows", type=int, default=20000, help="held-out rows placed (and timed)")
    ap.add_argument("--eval", type=int, default=5000, help="rows the trustworthiness is computed on")
    ap.add_argument("--epochs", default="15", help="refinement epochs; several, comma separated, to compare")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ivf", default="30:2", help="epochs:negative-sample-rate of refinements with the ivf "
                    "placer, comma separated; empty for none")
    ap.add_argument("--skip-index", action="store_true", help="leave out the NNDescent-based knn and refine")
    ap.add_argument("--repeat", type=int, default=1, help="times each placement runs; the best time counts")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    lay = read_layout(run / "layout.h5")
    fit_ids, _ = read_fit(run / "layout.h5")
    held = np.setdiff1d(lay.row_ids[lay.valid], fit_ids)
    rows = np.sort(np.random.default_rng(0).choice(held, args.rows, replace=False))
    with ActivationsFile(lay.attrs.get("source") or run / "activations.h5") as acts:
        x = read_rows(acts.dataset(lay.layer, "activations"), rows).astype(np.float32)
    est = load_placer(run / "layout.h5")
    print(f"{len(lay.row_ids):,} rows in the layout, {len(fit_ids):,} fitted; placing {len(rows):,} held-out rows, "
          f"trustworthiness (k={args.k}, cosine) on {args.eval:,} of them", flush=True)
    est.transform(x[:500], placement="refine")  # warm-up: numba compilation of both paths
    est.transform(x[:500], placement="umap")
    res: dict = {"run": str(run), "layout_rows": int(len(lay.row_ids)), "fit_rows": int(len(fit_ids)),
                 "placed_rows": int(len(rows)), "eval_rows": args.eval, "k": args.k, "methods": {}}
    saved = est.placer_
    ivf_placer = None
    if args.ivf:
        t = time.perf_counter()
        ivf_placer = KNNPlacer(saved.data, saved.embedding, metric=saved.metric, n_neighbors=saved.n_neighbors,
                               backend="ivf", random_state=saved.random_state,
                               optimizer=saved.optimizer.for_refinement())
        res["ivf_build_seconds"] = time.perf_counter() - t
        print(f"ivf index over the {len(saved.data):,} fitted rows built in {res['ivf_build_seconds']:.1f} s "
              f"({ivf_placer.ivf.nlist} lists, {ivf_placer.ivf.dims} axes); once per fit", flush=True)
    ev = np.sort(np.random.default_rng(1).choice(len(x), min(args.eval, len(x)), replace=False))
    methods = [] if args.skip_index else (
        [("knn", "knn", saved, None)] + [(f"refine ({e} epochs)", "refine", saved, (int(e), None))
                                         for e in args.epochs.split(",")])
    for spec in filter(None, args.ivf.split(",")):
        e, nsr = spec.split(":")
        methods.append((f"ivf refine ({e} epochs, {nsr} negatives)", "refine", ivf_placer, (int(e), float(nsr))))
    methods.append(("UMAP.transform", "umap", saved, None))
    for label, how, placer, opts in methods:
        est.placer_ = placer
        if opts is not None:
            placer.refine_epochs = opts[0]
            if opts[1] is not None:
                placer.optimizer = dataclasses.replace(saved.optimizer, negative_sample_rate=opts[1])
        times = []
        for _ in range(args.repeat):  # the same rows, the same result: the best time is the least disturbed one
            t = time.perf_counter()
            xy = est.transform(x, placement=how)
            times.append(time.perf_counter() - t)
        sec = min(times)
        tw = trustworthiness(x[ev], xy[ev], n_neighbors=args.k, metric="cosine")
        res["methods"][label] = {"seconds": sec, "all_seconds": times, "rows_per_s": len(x) / sec,
                                 "trustworthiness": float(tw)}
        print(f"{label:<36} trustworthiness {tw:.4f}   {sec:7.1f} s (of {', '.join(f'{t:.1f}' for t in times)})"
              f"   {len(x) / sec:9,.0f} rows/s", flush=True)
    base = res["methods"]["UMAP.transform"]
    for label, m in res["methods"].items():
        m["speedup_vs_transform"] = base["seconds"] / m["seconds"]
        m["trust_minus_transform"] = m["trustworthiness"] - base["trustworthiness"]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
