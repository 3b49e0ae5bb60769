"""Every stage of a real atlas, measured: wall time, peak memory, throughput and artifact sizes.

    python benchmarks/bench_real_scale.py --config pipelines/real-1m.toml --images ../shared/images \\
        --weights ../shared/models/bvlc_googlenet.pth --scales 51,510,all --out benchmarks/results/real-scale.json

For each scale (a number of photos drawn with a fixed seed from the photos under ``--images``, or
``all``), runs ``atlas run CONFIG --only STAGE`` for collect, reduce, grid, render and tiles, each
as its own process under ``/usr/bin/time``, into ``runs/real-scale-<N>`` (``all``: the config's own
run folder, so an existing run is reused). A stage that finds its output complete and current
is recorded as skipped, with the figures of the run that made it when ``--out`` already holds
them. Rows = photos x 196 (``inception4c`` at every position).

Prints a table and writes the JSON (``--out``) and a plot of time and memory against rows
(``--plot``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ("collect", "reduce", "grid", "render", "tiles")
ARTIFACTS = {"collect": ["activations.h5"], "reduce": ["layout.h5", "layout.umap.pkl"], "grid": ["cells.h5"],
             "render": ["icons.h5"], "tiles": ["tiles"]}


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def photo_list(root: Path, n: int | None, dest: Path) -> Path:
    from atlas.data import list_photos

    photos = list_photos(root)
    if n is not None:
        pick = np.sort(np.random.default_rng(0).choice(len(photos), n, replace=False))
        photos = [photos[i] for i in pick]
    dest.write_text("".join(f"{p}\n" for p in photos))
    return dest


def run_stage(config: Path, stage: str, env: dict[str, str], log: Path) -> dict:
    cmd = ["/usr/bin/time", "-f", "TIME %e s %M KB", sys.executable, "-m", "atlas", "-q", "run", str(config),
           "--only", stage]
    t = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    text = log.read_text()
    if proc.returncode:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}); see {log}")
    m = re.findall(r"TIME ([\d.]+) s (\d+) KB", text)[-1]
    summary = [ln for ln in text.splitlines() if ln.startswith(f"[{stage}]")][-1]
    return {"wall_s": float(m[0]) if m else wall, "peak_rss_mib": int(m[1]) / 1024, "summary": summary,
            "skipped": "complete and current" in summary or "up to date" in summary}


def icons_rendered(summary: str) -> int | None:
    m = re.search(r"rendered (\d+) icons", summary)
    return int(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="pipelines/real-1m.toml")
    ap.add_argument("--images", required=True, help="folder holding the photos (searched recursively)")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--scales", default="51,510,all", help="photos per scale, comma separated; 'all' = every photo")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--out", default="benchmarks/results/real-scale.json")
    ap.add_argument("--plot", default="docs/real-1m/scaling.png")
    args = ap.parse_args(argv)
    config = Path(args.config).resolve()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("machine", f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    runs = results.setdefault("runs", {})
    for scale in args.scales.split(","):
        n = None if scale == "all" else int(scale)
        run_dir = Path("runs/real-1m" if n is None else f"runs/real-scale-{n}").resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        source = Path(args.images).resolve() if n is None else photo_list(Path(args.images), n, run_dir / "photos.txt")
        env = {**os.environ, "ATLAS_RUN_DIR": str(run_dir), "ATLAS_IMAGES_ROOT": str(source),
               "ATLAS_INCEPTIONV1_WEIGHTS": str(Path(args.weights).resolve()), "PYTHONUNBUFFERED": "1"}
        rec = runs.setdefault(scale, {"stages": {}})
        for stage in args.stages.split(","):
            r = run_stage(config, stage, env, run_dir / "bench.log")
            if r["skipped"] and stage in rec["stages"]:
                print(f"{scale:>5} {stage:<8} skipped (current); keeping the recorded figures", flush=True)
                continue
            r["artifact_bytes"] = sum(size_of(run_dir / a) for a in ARTIFACTS[stage])
            if stage == "tiles":
                m = re.search(r"wrote (\d+) of (\d+) tiles.*?(\d+) thumbnails", r["summary"])
                r["tile_files"], r["thumbnails"] = (int(m.group(2)), int(m.group(3))) if m else (None, None)
            if stage == "render":
                r["icons"] = icons_rendered(r["summary"])
            rec["stages"][stage] = r
            print(f"{scale:>5} {stage:<8} {r['wall_s']:8.1f} s {r['peak_rss_mib']:8.0f} MiB  {r['summary'][:110]}",
                  flush=True)
        if (run_dir / "activations.h5").exists():
            import h5py

            with h5py.File(run_dir / "activations.h5", "r") as f:
                layer = next(iter(f["layers"])) if "layers" in f else None
                rec["rows"] = int(f["layers"][layer]["activations"].shape[0]) if layer else None
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    print_table(results)
    if args.plot:
        plot(results, Path(args.plot))
    return 0


def print_table(results: dict) -> None:
    print("\n| rows | stage | wall | peak RSS | throughput | on disk |\n|---:|---|---:|---:|---:|---:|")
    for scale, rec in sorted(results["runs"].items(), key=lambda kv: kv[1].get("rows") or 0):
        rows = rec.get("rows") or 0
        for stage in STAGES:
            r = rec["stages"].get(stage)
            if not r:
                continue
            if stage == "render":
                thr = f"{(r.get('icons') or 0) / r['wall_s'] * 60:,.0f} icons/min"
            elif stage == "tiles":
                thr = f"{r.get('tile_files') or 0:,} tiles, {r.get('thumbnails') or 0:,} thumbnails"
            else:
                thr = f"{rows / r['wall_s']:,.0f} rows/s"
            print(f"| {rows:,} | {stage} | {r['wall_s']:,.0f} s | {r['peak_rss_mib']:,.0f} MiB | {thr} | "
                  f"{r.get('artifact_bytes', 0) / 2**20:,.1f} MiB |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = sorted((rec for rec in results["runs"].values() if rec.get("rows")), key=lambda r: r["rows"])
    if len(recs) < 2:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = [r["rows"] for r in recs]
    for stage in STAGES:
        pts = [(r["rows"], r["stages"][stage]) for r in recs if stage in r["stages"]]
        if not pts:
            continue
        axes[0].loglog([p[0] for p in pts], [p[1]["wall_s"] for p in pts], "o-", label=stage)
        axes[1].semilogx([p[0] for p in pts], [p[1]["peak_rss_mib"] for p in pts], "o-", label=stage)
    lin = np.array(rows, float)
    first = recs[0]["stages"].get("collect", {}).get("wall_s")
    if first:
        axes[0].loglog(lin, first * lin / lin[0], "k:", lw=1, label="linear (from collect)")
    axes[0].set(xlabel="real rows", ylabel="wall time (s)", title="time per stage")
    axes[1].set(xlabel="real rows", ylabel="peak RSS (MiB)", title="peak memory per stage")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("atlas on real inception4c rows (InceptionV1, every position of real photos)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
