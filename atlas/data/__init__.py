"""Images in: sources, labels, decoding and loading, for the collect stage and the tools.

- :mod:`atlas.data.sources`: folders, list files, tar shards and globs as ordered image sources;
  :func:`list_photos`, the photo files of a folder (the one list of extensions, :data:`IMAGE_EXTENSIONS`)
- :mod:`atlas.data.labels`: ImageNet class indices from WordNet ids in paths or list-file labels
- :mod:`atlas.data.decoding`: bytes -> RGB image, or :class:`BadImage` with a stable skip reason;
  the batched JPEG decoder (TorchCodec where it works, else PIL)
- :mod:`atlas.data.loader`: a ``DataLoader`` dataset over a source; bad files counted, never fatal
- :mod:`atlas.data.datasets`: named public image sets (Imagenette) a source spec can name
"""

from atlas.data.decoding import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    SKIP_REASONS,
    BadImage,
    decode_image,
    decode_jpegs,
    jpeg_batch_decoder,
    open_photo,
    reason_name,
    to_rgb,
    torchcodec_problem,
)
from atlas.data.labels import infer_label
from atlas.data.loader import ImageDataset, collate_images, load_image, read_image_bytes
from atlas.data.sources import (
    IMAGE_EXTENSIONS,
    EmptySourceError,
    FolderSource,
    ImageRef,
    ImageSource,
    ListSource,
    TarSource,
    list_photos,
    open_source,
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
    "decode_jpegs",
    "infer_label",
    "jpeg_batch_decoder",
    "list_photos",
    "load_image",
    "open_photo",
    "open_source",
    "read_image_bytes",
    "reason_name",
    "to_rgb",
    "torchcodec_problem",
]
