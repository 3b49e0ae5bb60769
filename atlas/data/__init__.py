"""Images in: sources, labels, decoding and loading for the collect stage (see :mod:`atlas.data.sources`).

- :mod:`atlas.data.sources`: folders, list files, tar shards and globs as ordered image sources
- :mod:`atlas.data.datasets`: named public image sets (Imagenette) a source spec can name
"""

from atlas.data.sources import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    IMAGE_EXTENSIONS,
    SKIP_REASONS,
    BadImage,
    EmptySourceError,
    FolderSource,
    ImageDataset,
    ImageRef,
    ImageSource,
    ListSource,
    TarSource,
    collate_images,
    decode_image,
    infer_label,
    load_image,
    open_photo,
    open_source,
    read_image_bytes,
    reason_name,
    to_rgb,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "IMAGE_EXTENSIONS",
    "SKIP_REASONS",
    "BadImage",
    "EmptySourceError",
    "FolderSource",
    "ImageDataset",
    "ImageRef",
    "ImageSource",
    "ListSource",
    "TarSource",
    "collate_images",
    "decode_image",
    "infer_label",
    "load_image",
    "open_photo",
    "open_source",
    "read_image_bytes",
    "reason_name",
    "to_rgb",
]
