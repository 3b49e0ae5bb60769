"""Screenshots of a real atlas in headless Chromium (the images in this folder).

    python docs/screenshots/take_screenshots.py runs/sample-inceptionv1 docs/screenshots \
        --class "scuba diver"

Serves RUN_DIR with ``atlas serve``'s server on a free loopback port, opens the viewer in
Debian's Chromium (``/usr/bin/chromium``) through Playwright, and saves: the whole atlas, a
zoomed-in view, a hover tooltip, a class highlighted by attribution and a cell's panel.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import sync_playwright

from atlas.web.serve import make_server

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
        "--disable-component-update", "--disable-sync"]


@contextmanager
def viewer_page(run_dir: str) -> Iterator[tuple[object, str]]:
    """A Chromium page (1280 x 800) and the URL of ``atlas serve RUN_DIR`` on a free loopback port."""
    server = make_server(run_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            try:
                yield browser.new_page(viewport={"width": 1280, "height": 800}), \
                    f"http://127.0.0.1:{server.server_address[1]}/"
            finally:
                browser.close()
    finally:
        server.shutdown()


def point_at(page, u: float, v: float) -> tuple[float, float]:
    """Bring the pointer onto the layout point (u, v) of the main map, as a hand would; returns
    where that is on the page."""
    x, y = page.evaluate(
        """([u, v]) => { const p = atlasViewer.map.latLngToContainerPoint(atlasViewer.toLatLng(u, v));
                          return [p.x, p.y]; }""", [u, v])
    page.mouse.move(x - 40, y - 40)
    page.mouse.move(x, y, steps=4)
    return x, y


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--class", dest="cls", default="scuba diver")
    ap.add_argument("--zoom", type=float, default=3)
    ap.add_argument("--prefix", default="sample-")
    ap.add_argument("--run", default=None, help="which atlas of the served folder (e.g. classes/tench/tiles)")
    ap.add_argument("--only", choices=("overview",), default=None, help="take only this shot")
    ap.add_argument("--cell", type=int, nargs=3, default=(20, 8, 4), metavar=("SIZE", "IY", "IX"),
                    help="the cell to hover and click: grid size, row, column")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with viewer_page(args.run_dir) as (page, base):

        def shot(hash_: str, name: str, settle: int = 2500) -> None:
            if args.run:
                hash_ = "#" + "&".join(p for p in (f"run={quote(args.run)}", hash_.lstrip("#")) if p)
            page.goto(base + hash_)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_timeout(settle)
            page.screenshot(path=str(out / f"{args.prefix}{name}.png"))

        shot("", "overview")
        if args.only == "overview":
            return 0
        size, iy, ix = args.cell
        u, v = (ix + 0.5) / size, (iy + 0.5) / size
        shot(f"#z={args.zoom}&x={u:.4f}&y={v:.4f}", "zoomed")
        point_at(page, u, v)
        page.wait_for_selector("#tooltip:not([hidden])", timeout=10_000)
        page.screenshot(path=str(out / f"{args.prefix}hover.png"))
        shot(f"#class={quote(args.cls)}", "class")
        shot(f"#z={args.zoom}&x={u:.4f}&y={v:.4f}", "panel", settle=1500)
        page.mouse.click(*point_at(page, u, v))
        page.wait_for_selector("#panel:not([hidden])", timeout=10_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / f"{args.prefix}panel.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
