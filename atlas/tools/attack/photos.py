"""The photos an attack runs on: views of a photo as the model sees them (:func:`augment_photo`),
the source views the model gets right (:func:`source_images`), the photos of a class in the
atlas's own image source, and the images of other classes for the universal mode."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.models import AtlasModel
from atlas.resources import imagenet_class_names
from atlas.store.runs import run_file
from atlas.tools.attack.evaluate import predict

log = logging.getLogger("atlas.tools.attack")


def augment_photo(img: Image.Image, model: AtlasModel, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` views of one photo as the model sees them: the photo itself, then random resized
    crops (35-100% of the area) and mirror images, ``(n, 3, S, S)``."""
    import torchvision.transforms.v2 as T

    views = [model.image_transform(img)]
    crop = T.RandomResizedCrop(model.input_size, scale=(0.35, 1.0), antialias=True)
    for i in range(1, n):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        torch.manual_seed(seed)
        view = crop(img)
        if i % 2:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(model.image_transform(view))
    return torch.stack(views)


def _photo_paths(spec: str | os.PathLike) -> list[tuple[str, int]]:
    from atlas.data import open_source

    src = open_source(spec)
    out = []
    for ref in src.refs():
        p = src.path(ref)
        if p is not None:
            out.append((p, int(ref.label)))
    if not out:
        raise ValueError(f"{spec} holds no image files (tar shards are not read here)")
    return out


def _load(path: str, model: AtlasModel) -> Image.Image | None:
    from atlas.data import BadImage, decode_image

    try:
        return decode_image(Path(path).read_bytes())
    except (BadImage, OSError) as e:
        log.warning("skipping %s: %s", path, getattr(e, "reason", e))
        return None


def comparison_views(model: AtlasModel, photo_sets: Sequence[Sequence[str]], *, augment: int = 24,
                     seed: int = 0) -> torch.Tensor:
    """The views the class-comparison rows are computed from: for each set of photos in turn,
    ``augment`` views per photo when the set has fewer than 8 photos (one each from 8 on), from
    one seeded generator; unreadable photos are skipped."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([augment_photo(im, model, max(1, augment if len(ps) < 8 else 1), gen)
                      for ps in photo_sets for im in (_load(q, model) for q in ps) if im is not None])


def source_views(model: AtlasModel, source: int, photos: Sequence[str], *, augment: int = 24, seed: int = 0,
                 batch_size: int = 32) -> tuple[torch.Tensor, np.ndarray, int]:
    """Views of the source-class ``photos`` that the model classifies as ``source`` (top-1):
    ``augment`` views per photo when there are few photos (one view each from 8 photos on).
    Returns the images, the index into ``photos`` of each one's photo, and the number of views
    tried; a clear error when none is classified as the source."""
    gen = torch.Generator().manual_seed(seed)
    per = max(1, augment if len(photos) < 8 else 1)
    views, owner = [], []
    for i, p in enumerate(photos):
        img = _load(p, model)
        if img is not None:
            views.append(augment_photo(img, model, per, gen))
            owner += [i] * len(views[-1])
    if not views:
        raise ValueError("none of the source photos could be read")
    x = torch.cat(views)
    ok = predict(model, x, batch_size).argmax(1) == source
    if not ok.any():
        names = model.class_names or imagenet_class_names()
        raise ValueError(f"the model classifies none of the {len(x)} views of {len(photos)} photo(s) of "
                         f"{names[source]!r} as {names[source]!r}; give photos it gets right (--images)")
    return x[ok], np.asarray(owner)[ok.numpy()], len(x)


def source_images(model: AtlasModel, source: int, photos: Sequence[str], *, augment: int = 24, seed: int = 0,
                  batch_size: int = 32) -> tuple[torch.Tensor, int]:
    """:func:`source_views` without the photo of each view: the images and the views tried."""
    x, _owner, tried = source_views(model, source, photos, augment=augment, seed=seed, batch_size=batch_size)
    return x, tried


def _class_photos(run_dir: Path, c: int, given: str | os.PathLike | None, names: Sequence[str], flag: str) -> list[str]:
    """Photos of class ``c``: those given, else those labelled ``c`` in the atlas's image source."""
    if given is not None:
        return [q for q, _ in _photo_paths(given)]
    from atlas.store.activations import ActivationsFile

    path = run_file(run_dir, "activations.h5")
    if not path.is_file():
        raise ValueError(f"{run_dir} holds no activations.h5 to find photos of {names[c]!r} in; give them with {flag}")
    with ActivationsFile(path) as acts:
        root = str(acts.attrs.get("source", ""))
        labels, keys = acts.image_labels(), acts.image_keys()
    out = [str(Path(root) / k) for k, lab in zip(keys, labels) if lab == c and "::" not in k]
    if not out:
        raise ValueError(f"the atlas's images ({root}) hold no photo labelled {names[c]!r}; give photos of it with {flag}")
    return out


def _universal_images(model: AtlasModel, spec: str | os.PathLike, *, exclude: Sequence[int], limit: int | None,
                      batch_size: int, progress: bool) -> tuple[torch.Tensor, int]:
    """Photos of other classes that the model classifies correctly (when labelled) or at all."""
    from tqdm.auto import tqdm

    items = [(p, lab) for p, lab in _photo_paths(spec) if lab not in exclude]
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    xs, labels = [], []
    for p, lab in tqdm(items, desc="load universal images", unit="img", disable=not progress, leave=False):
        img = _load(p, model)
        if img is not None:
            xs.append(model.image_transform(img))
            labels.append(lab)
    if not xs:
        raise ValueError(f"no readable images in {spec}")
    x = torch.stack(xs)
    top1 = predict(model, x, batch_size).argmax(1).numpy()
    lab = np.asarray(labels)
    keep = np.where(lab >= 0, top1 == lab, ~np.isin(top1, exclude)) & ~np.isin(top1, exclude)
    if not keep.any():
        raise ValueError(f"none of the {len(x)} universal images of {spec} is classified correctly (when labelled) "
                         "as a class other than the source and target; give other photos")
    return x[torch.from_numpy(keep)], int(keep.sum())
