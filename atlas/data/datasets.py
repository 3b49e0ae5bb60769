"""Named public image sets that a source spec can refer to instead of a path.

``"imagenette"`` (or ``"imagenette:val"``, ``"imagenette:train"``): fast.ai's Imagenette, ten easy
ImageNet classes, 160 px version (``imagenette2-160.tgz``, about 94 MB; val has 3,925 photos,
train 9,469), downloaded once by torchvision into ``$ATLAS_DATA_DIR`` (default
``~/.cache/atlas/datasets``). Photos sit in WordNet-id folders, so labels are known.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

NAMED = ("imagenette", "imagenette:val", "imagenette:train")


def data_dir() -> Path:
    return Path(os.environ.get("ATLAS_DATA_DIR", "~/.cache/atlas/datasets")).expanduser()


def resolve_source(spec: str | os.PathLike) -> str | os.PathLike:
    """Turn a named data set into its local folder (downloading it once); pass paths through."""
    if not isinstance(spec, str) or spec not in NAMED:
        return spec
    split = spec.split(":", 1)[1] if ":" in spec else "val"
    root = data_dir()
    folder = root / "imagenette2-160" / split
    if folder.is_dir():
        return str(folder)
    from torchvision.datasets import Imagenette

    log.info("downloading Imagenette (160 px, about 94 MB) into %s", root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        Imagenette(str(root), split=split, size="160px", download=True)
    except Exception as e:  # URLError, OSError, ... depending on how the network fails
        raise ValueError(
            f"could not download Imagenette into {root}: {e}. Without internet, point the source at a "
            f"local folder of images instead (e.g. --source /path/to/photos or ATLAS_IMAGES=/path)."
        ) from e
    return str(folder)
