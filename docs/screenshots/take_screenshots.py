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
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import sync_playwright

from atlas.serve import make_server

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
        "--disable-component-update", "--disable-sync"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--class", dest="cls", default="scuba diver")
    ap.add_argument("--zoom", type=float, default=3)
    ap.add_argument("--prefix", default="sample-")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    server = make_server(args.run_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})

        def shot(hash_: str, name: str, settle: int = 2500) -> None:
            page.goto(base + hash_)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_timeout(settle)
            page.screenshot(path=str(out / f"{args.prefix}{name}.png"))

        shot("", "overview")
        shot(f"#z={args.zoom}&x=0.5&y=0.5", "zoomed")
        page.mouse.move(640, 400)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / f"{args.prefix}hover.png"))
        shot(f"#class={quote(args.cls)}", "class")
        shot(f"#z={args.zoom}&x=0.5&y=0.5", "panel", settle=1500)
        page.mouse.click(640, 400)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(out / f"{args.prefix}panel.png"))
        browser.close()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
