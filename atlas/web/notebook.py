"""Atlases, feature visualizations and figures inline in Jupyter: :func:`show`.

``atlas.show(RUN)`` starts a read-only atlas server for the run on a free loopback port, in a
background thread of the kernel, and returns an :class:`AtlasView`, which Jupyter displays as the
viewer in a frame (it has ``_repr_html_``); ``view.close()`` stops the server. The frame loads
from ``127.0.0.1``, so the browser showing the notebook must run on the kernel's machine (the
usual local Jupyter); elsewhere, export the atlas (`atlas export`) and open the site.

``atlas.show(IMAGE)`` returns an :class:`ImageView` (``_repr_png_``) of a PNG/JPEG file (a
figure of `atlas explain`, a strip of `atlas vis`), a PIL image, a ``VisResult`` of
:func:`atlas.optvis.render_vis`, or images as an array/tensor: ``(B, 3, H, W)``, ``(3, H, W)``
or ``(H, W, 3)`` with values in [0, 1]; a batch is tiled left to right.

No IPython import is needed: Jupyter displays any object with these methods.
"""

from __future__ import annotations

import html
import io
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class AtlasView:
    """The atlas viewer served from this process, shown in a frame by Jupyter."""

    def __init__(self, run_dir: str | os.PathLike, *, height: int = 600, port: int = 0):
        from atlas.web.serve import make_server

        self.run_dir = Path(run_dir)
        self.height = height
        self.server = make_server(self.run_dir, "127.0.0.1", port, embeddable=True)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"atlas-show-{self.server.server_address[1]}", daemon=True)
        self._thread.start()
        self.names = [run.name for run in self.server.runs().values()]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def _repr_html_(self) -> str:
        title = html.escape(f"Activation atlas: {', '.join(self.names)}")
        return (f'<iframe src="{html.escape(self.url)}" title="{title}" width="100%" height="{int(self.height)}" '
                f'style="border: 1px solid #ddd"></iframe>')

    def __repr__(self) -> str:
        return f"AtlasView({str(self.run_dir)!r}, url={self.url!r})"

    def close(self) -> None:
        """Stop the server (the frame then shows nothing new)."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class ImageView:
    """An image Jupyter shows inline (PNG)."""

    def __init__(self, image: Image.Image):
        self.image = image

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()

    def __repr__(self) -> str:
        return f"ImageView({self.image.width}x{self.image.height})"

    def save(self, path: str | os.PathLike) -> Path:
        self.image.save(path)
        return Path(path)


def _to_pil(images: Any) -> Image.Image:
    """Images in [0, 1] as an array or tensor -> one RGB image (a batch tiled left to right)."""
    arr = images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr[None]  # (3, H, W)
    if arr.ndim == 4:  # (B, C, H, W) -> (H, B * W, C)
        arr = np.concatenate(list(arr.transpose(0, 2, 3, 1)), axis=1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (B, 3, H, W), (3, H, W) or (H, W, 3), not shape {tuple(arr.shape)}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))


def show(obj: Any, *, height: int = 600, port: int = 0) -> AtlasView | ImageView:
    """Something to display inline in Jupyter (see the module docs).

    Args:
        obj: a run folder (holding ``tiles/``), a tiles folder or a folder of runs -> the atlas
            viewer; an image file, PIL image, ``VisResult`` or image array/tensor -> the image.
        height: height of the viewer's frame in pixels.
        port: the viewer's port; 0 picks a free one.
    """
    from atlas.optvis import VisResult

    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir():
            return AtlasView(path, height=height, port=port)
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            with Image.open(path) as img:
                return ImageView(img.convert("RGB"))
        raise ValueError(f"{obj} is neither a folder of an atlas run nor an image file ({', '.join(IMAGE_SUFFIXES)})")
    if isinstance(obj, Image.Image):
        return ImageView(obj.convert("RGB"))
    if isinstance(obj, VisResult):
        return ImageView(_to_pil(obj.images))
    if hasattr(obj, "shape"):
        return ImageView(_to_pil(obj))
    raise ValueError(f"cannot show a {type(obj).__name__}; give a run folder, an image file, a PIL image, "
                     "a VisResult or an image array")


__all__ = ["AtlasView", "ImageView", "show"]
