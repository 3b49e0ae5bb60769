"""Screenshots of a multi-layer run and its aligned atlases in headless Chromium.

    python docs/screenshots/take_layer_screenshots.py runs/layers docs/screenshots/layers \\
        --class "golden retriever" --aligned 4a-4e trained-random-4c

Serves RUN_DIR with ``atlas serve``'s server on a free loopback port, opens the viewer in
Debian's Chromium (``/usr/bin/chromium``) through Playwright, and saves (PNG):

- ``<layer>.png``: every layer's atlas, with the row of layer names;
- ``class-<first layer>.png``, ``class-<last layer>.png``: a class highlighted in the first layer,
  then the last layer's button clicked (the highlight goes along);
- ``aligned-<name>.png``, ``aligned-<name>-hover.png``: both sides of each aligned atlas, and the
  pointer on side a with the crosshair at the same place of side b.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import quote

from take_screenshots import point_at, viewer_page  # beside this script


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--class", dest="cls", default="golden retriever")
    ap.add_argument("--aligned", nargs="*", default=[])
    ap.add_argument("--hover", type=float, nargs=2, default=(0.4, 0.55), metavar=("U", "V"),
                    help="where to point on side a, as fractions of the layout")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifests = sorted(run.glob("layers/*/tiles/manifest.json"))
    layers = json.loads(manifests[0].read_text())["layer_set"] if manifests else []
    with viewer_page(args.run_dir) as (page, base):

        def open_(hash_: str, settle: int = 2500) -> None:
            page.goto(base + "#" + hash_)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_timeout(settle)

        for layer in layers:
            open_(f"run={quote(f'layers/{layer}/tiles')}")
            page.screenshot(path=str(out / f"{layer}.png"))
        if layers:
            open_(f"run={quote(f'layers/{layers[0]}/tiles')}&class={quote(args.cls)}")
            page.screenshot(path=str(out / f"class-{layers[0]}.png"))
            page.locator(f"#layer-row button[data-layer='{layers[-1]}']").click()
            page.wait_for_function("(id) => location.hash.includes(id)", arg=quote(f"layers/{layers[-1]}/tiles"),
                                   timeout=10_000)
            page.wait_for_selector("body[data-highlight-class]", timeout=10_000)
            page.wait_for_timeout(2500)
            page.screenshot(path=str(out / f"class-{layers[-1]}.png"))
        for name in args.aligned:
            open_(f"run={quote(f'aligned/{name}/a/tiles')}", settle=3500)
            page.screenshot(path=str(out / f"aligned-{name}.png"))
            point_at(page, *args.hover)
            page.wait_for_selector("body[data-cross='peer']", timeout=10_000)
            page.wait_for_timeout(800)
            page.screenshot(path=str(out / f"aligned-{name}-hover.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
