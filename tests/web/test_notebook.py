"""`atlas.show` and the example notebook ``docs/notebook.ipynb``, executed in a real Jupyter kernel.

The notebook runs cell by cell with nbclient on a small fake atlas, the real InceptionV1 and a
sample photo; while its kernel is alive the atlas frame it displayed is loaded in headless
Chromium, and the viewer must come up inside the frame.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_viewer import browser  # noqa: F401 (browser is a fixture)

import atlas
from atlas.stages.tiles import build_tiles
from atlas.web.notebook import AtlasView, ImageView
from atlasfixture import write_fake_run

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "docs" / "notebook.ipynb"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("notebook") / "demo"
    fake = write_fake_run(root, sizes=(4, 8), icon_size=16, n_points=600, n_images=6, seed=4)
    build_tiles(fake.cells, fake.icons, root / "tiles", progress=False)
    return root


@contextlib.contextmanager
def _page_of_another_origin(body: str, folder: Path) -> Iterator[str]:
    """Serve ``body`` as index.html from another port, as Jupyter serves the notebook page."""
    folder.mkdir()
    (folder / "index.html").write_text(f"<!doctype html><html><body>{body}</body></html>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


def _png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_show_images(tmp_path):
    batch = torch.rand(2, 3, 8, 10)
    view = atlas.show(batch)
    assert isinstance(view, ImageView) and _png(view._repr_png_()).size == (20, 8)  # tiled left to right
    hwc = np.zeros((5, 6, 3))
    hwc[..., 0] = 1
    assert np.asarray(_png(atlas.show(hwc)._repr_png_()))[0, 0].tolist() == [255, 0, 0]
    Image.new("RGB", (7, 3), "blue").save(tmp_path / "fig.png")
    assert _png(atlas.show(tmp_path / "fig.png")._repr_png_()).size == (7, 3)
    with pytest.raises(ValueError, match="neither a folder of an atlas run nor an image"):
        atlas.show(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        atlas.show(np.zeros((4, 4)))


def test_show_run_serves_an_embeddable_viewer(run):
    view = atlas.show(run, height=420)
    try:
        assert isinstance(view, AtlasView) and view.names == ["demo"]
        assert f'src="{view.url}"' in view._repr_html_() and 'height="420"' in view._repr_html_()
        with urllib.request.urlopen(view.url, timeout=10) as r:
            assert "frame-ancestors *" in r.headers["Content-Security-Policy"] and "X-Frame-Options" not in r.headers
    finally:
        view.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(view.url, timeout=2)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.browser
def test_example_notebook_runs(run, browser, tmp_path, monkeypatch, sample_dir, inceptionv1_weights):  # noqa: F811
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("ATLAS_NOTEBOOK_RUN", str(run))
    monkeypatch.setenv("ATLAS_NOTEBOOK_PHOTO", str(sample_dir / "n04251144_snorkel.JPEG"))
    monkeypatch.setenv("ATLAS_NOTEBOOK_STEPS", "4")
    monkeypatch.setenv("ATLAS_INCEPTIONV1_WEIGHTS", str(inceptionv1_weights))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    outputs: dict[int, list] = {}
    with client.setup_kernel():
        for i in code:
            outputs[i] = client.execute_cell(nb.cells[i], i).outputs
            if "atlas.show(RUN)" in nb.cells[i].source:
                (out,) = outputs[i]
                frame_html = out["data"]["text/html"]
                url = re.search(r'src="([^"]+)"', frame_html).group(1)
                with urllib.request.urlopen(url + "atlas.json", timeout=10) as r:
                    assert [x["name"] for x in json.loads(r.read())["runs"]] == ["demo"]
                with _page_of_another_origin(frame_html, tmp_path / "host") as host_url:
                    page = browser.new_page()
                    try:
                        page.goto(host_url)
                        frame = page.frame_locator("iframe")
                        frame.locator("body[data-ready='1']").wait_for(state="attached", timeout=20_000)
                        assert frame.locator("#subtitle").inner_text().startswith("demo")
                    finally:
                        page.close()
    images = [o for i in code for o in outputs[i] if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the visualization and the explain figure
    vis, fig = (_png(base64.b64decode(o["data"]["image/png"])) for o in images)
    assert vis.size == (128, 128) and fig.width > 400
    assert (tmp_path / "explain.png").is_file()
    assert not [o for i in code for o in outputs[i] if o.get("output_type") == "error"]
    with pytest.raises(urllib.error.URLError):  # the last cell stopped the server
        urllib.request.urlopen(url, timeout=2)
