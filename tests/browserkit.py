"""Headless Chromium for the viewer tests, shared by the tests of every folder: where the browser
is, how it is launched, the viewport, and the skip (or, with ATLAS_REQUIRE_BROWSER, the failure)
when it or Playwright is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ATLAS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
    "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def _require_browser():
    problems = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        problems.append("the playwright package is missing (pip install playwright)")
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing (apt-get install -y chromium, or set ATLAS_CHROMIUM)")
    if problems:
        message = "; ".join(problems)
        if os.environ.get("ATLAS_REQUIRE_BROWSER"):
            pytest.fail(f"browser tests required (ATLAS_REQUIRE_BROWSER is set) but {message}")
        pytest.skip(f"browser tests skipped: {message}")
    return sync_playwright
