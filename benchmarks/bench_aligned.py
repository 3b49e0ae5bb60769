"""Aligned atlases: how well the linear maps fit, and how well each layout aligns the two sides.

    python benchmarks/bench_aligned.py runs/layers --name 4a-4e --work runs/bench-aligned
    python benchmarks/bench_aligned.py runs/layers --name trained-random-4c --work runs/bench-aligned

For an aligned atlas built by ``atlas align`` / ``[[aligned]]`` (its ``fit.json`` and ``maps.h5``
in ``RUN/aligned/<name>/``), reads the maps' held-out R^2 each way and lays the two sides out
both ways, into ``--work`` (the run's own files are not touched):

- **joint** (the default): every row once, by its two sides' own activations side by side;
- **mapped** (Lucid's ``aligned_activation_atlas``): each side's rows with the other side
  predicted through the linear maps, both sides stacked in one UMAP, split.

For each it reports how far apart a row's two positions lie (median, against the median for two
unrelated rows) and the share of rows whose two positions fall in the same cell of grids 10, 20
and 40, which is what "the same place on both maps shows the same inputs" needs; and the time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from atlas.stages.aligned.layout import joint_layout
from atlas.stages.aligned.pairs import SideRows
from atlas.stages.reduce import ReduceSettings
from atlas.store.layout import read_layout

GRIDS = (10, 20, 40)


def alignment(xa: np.ndarray, xb: np.ndarray, seed: int = 0) -> dict:
    """How well row i's positions on the two sides agree (rows valid on both sides)."""
    ok = np.isfinite(xa).all(1) & np.isfinite(xb).all(1)
    xa, xb = xa[ok], xb[ok]
    pairs = np.linalg.norm(xa - xb, axis=1)
    strangers = np.linalg.norm(xa - xb[np.random.default_rng(seed).permutation(len(xb))], axis=1)
    cell = {g: float((np.minimum((xa * g).astype(int), g - 1) == np.minimum((xb * g).astype(int), g - 1))
                     .all(1).mean()) for g in GRIDS}
    return {"rows": int(ok.sum()), "pair_median": float(np.median(pairs)),
            "stranger_median": float(np.median(strangers)),
            "pair_over_stranger": float(np.median(pairs) / np.median(strangers)), "same_cell": cell}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--name", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--modes", default="joint,mapped")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    folder = Path(args.run_dir) / "aligned" / args.name
    fit = json.loads((folder / "fit.json").read_text())
    sides = {s: SideRows(s, (folder / fit[s]["activations"]).resolve(), fit[s]["layer"]) for s in ("a", "b")}
    res: dict = {"name": args.name, "a": fit["a"]["label"], "b": fit["b"]["label"], "rows": fit["rows"],
                 "r2": {k: round(v["total"], 3) for k, v in fit["r2"].items()},
                 "r2_mean_per_channel": {k: round(v["mean_per_channel"], 3) for k, v in fit["r2"].items()},
                 "modes": {}}
    print(f"{args.name}: {res['a']} / {res['b']}, {fit['rows']} rows a side")
    print(f"  held-out R^2: a -> b {res['r2']['a_to_b']:.3f}, b -> a {res['r2']['b_to_a']:.3f} "
          f"(mean per channel {res['r2_mean_per_channel']['a_to_b']:.3f} / {res['r2_mean_per_channel']['b_to_a']:.3f})")
    umap = ReduceSettings(sample_size=100_000)
    for mode in args.modes.split(","):
        out = Path(args.work) / args.name / mode
        t0 = time.perf_counter()
        joint_layout(sides["a"], sides["b"], folder / "maps.h5", out / "a.h5", out / "b.h5", umap, mode=mode,
                     name=args.name, progress=False)
        seconds = time.perf_counter() - t0
        la, lb = read_layout(out / "a.h5"), read_layout(out / "b.h5")
        m = alignment(la.xy, lb.xy)
        m["seconds"] = round(seconds, 1)
        res["modes"][mode] = m
        cells = ", ".join(f"grid {g} {100 * v:.1f}%" for g, v in m["same_cell"].items())
        print(f"  {mode:6s}: pair distance median {m['pair_median']:.3f} against {m['stranger_median']:.3f} for "
              f"unrelated rows ({m['pair_over_stranger']:.2f}); same cell: {cells}; {seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
