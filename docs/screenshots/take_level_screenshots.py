"""Screenshots of one place of an atlas at every grid level, in headless Chromium.

    python docs/screenshots/take_level_screenshots.py runs/real-1m docs/real-1m --at 0.62,0.55 \
        --prefix real1m-level-

Serves RUN_DIR as ``atlas serve`` does (see take_screenshots.py), reads the tiles manifest for the
zoom at which each grid level's icons are shown at their own size, and saves, per level, the view
centred on the layout point ``--at u,v`` at that zoom (``PREFIX<size>.jpg``), with the icons loaded.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from PIL import Image
from take_screenshots import viewer_page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--at", default="0.5,0.5", help="layout point u,v to centre on [0.5,0.5]")
    ap.add_argument("--prefix", default="level-")
    ap.add_argument("--zoom-offset", type=float, default=0.0, help="added to each level's native zoom")
    ap.add_argument("--settle", type=int, default=4000, help="ms to wait for the tiles")
    args = ap.parse_args(argv)
    u, v = (float(x) for x in args.at.split(","))
    manifest = json.loads((Path(args.run_dir) / "tiles" / "manifest.json").read_text())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with viewer_page(args.run_dir) as (page, base):
        for level in manifest["levels"]:
            if not level.get("zooms"):
                continue
            z = level["native_zoom"] + args.zoom_offset
            page.goto(f"{base}#z={z}&x={u:.4f}&y={v:.4f}")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_timeout(args.settle)
            png = page.screenshot()
            path = out / f"{args.prefix}{level['size']}.jpg"
            Image.open(io.BytesIO(png)).convert("RGB").save(path, quality=85)
            print(f"grid {level['size']}: zoom {z} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
