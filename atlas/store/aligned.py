"""``maps.h5``: the linear maps between the two sides of an aligned atlas, written by its fit step
(:mod:`atlas.stages.aligned.fit`).

Layout (``Ca``, ``Cb`` channels of side a's and side b's layer; ``K`` photos held out, ``V`` kept
for choosing the ridge)::

    /                  attrs: atlas_version, kind="aligned_maps", settings_json, settings_hash,
                              complete, artifact_id, inputs_json (see atlas.store.lineage:
                              activations_a, activations_b), layer_a, layer_b, model_a, model_b,
                              label_a, label_b, scale_a, scale_b (root mean square row length of
                              each side's training rows), ridge_ab, ridge_ba (the ridges chosen),
                              n_rows, n_train_rows, n_validation_rows, n_heldout_rows,
                              n_train_images, n_validation_images, n_heldout_images, r2_json
                              (the held-out scores, as in fit.json)
    /w_ab              (Ca, Cb) float32   side a -> side b: b ~ a @ w_ab + bias_ab
    /bias_ab           (Cb,)    float32
    /w_ba              (Cb, Ca) float32   side b -> side a: a ~ b @ w_ba + bias_ba
    /bias_ba           (Ca,)    float32
    /heldout_images    (K,)     int64     photos (indices into /images of the activations) left
                                          out of the fit and scored on
    /validation_images (V,)     int64     training photos the ridge was chosen on

Written at once under a temporary name and renamed into place (:func:`atlas.store.common.atomic_h5`),
so a file at the path is always complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlas.store.common import atomic_h5, open_artifact, plain_attr, stamp
from atlas.store.lineage import ID_ATTR, new_id, record_inputs

KIND = "aligned_maps"


@dataclass
class MapsFile:
    """A ``maps.h5`` in memory."""

    path: Path
    w_ab: np.ndarray  # (Ca, Cb) float32
    bias_ab: np.ndarray  # (Cb,) float32
    w_ba: np.ndarray  # (Cb, Ca) float32
    bias_ba: np.ndarray  # (Ca,) float32
    heldout_images: np.ndarray  # (K,) int64
    validation_images: np.ndarray  # (V,) int64
    attrs: dict[str, Any]

    @property
    def scale_a(self) -> float:
        return float(self.attrs["scale_a"])

    @property
    def scale_b(self) -> float:
        return float(self.attrs["scale_b"])

    @property
    def r2(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("r2_json", "{}"))


def write_maps(
    path: str | os.PathLike,
    w_ab: np.ndarray,
    bias_ab: np.ndarray,
    w_ba: np.ndarray,
    bias_ba: np.ndarray,
    heldout_images: np.ndarray,
    validation_images: np.ndarray,
    settings: Mapping[str, Any],
    attrs: Mapping[str, Any],
    *,
    r2: Mapping[str, Any],
    inputs: Mapping[str, str | os.PathLike],
) -> None:
    """Write ``maps.h5`` (complete, with a fresh identity); ``inputs`` ({name: path}) are recorded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path) as f:
        stamp(f, KIND, settings, **attrs)
        record_inputs(f, path, inputs)
        f.attrs["r2_json"] = json.dumps(dict(r2), sort_keys=True)
        for name, data, dtype in (("w_ab", w_ab, np.float32), ("bias_ab", bias_ab, np.float32),
                                  ("w_ba", w_ba, np.float32), ("bias_ba", bias_ba, np.float32),
                                  ("heldout_images", heldout_images, np.int64),
                                  ("validation_images", validation_images, np.int64)):
            f.create_dataset(name, data=np.asarray(data, dtype))
        f["w_ab"].attrs["meaning"] = "side a's activations -> side b's: b ~ a @ w_ab + bias_ab"
        f["w_ba"].attrs["meaning"] = "side b's activations -> side a's: a ~ b @ w_ba + bias_ba"
        f.attrs[ID_ATTR] = new_id()
        f.attrs["complete"] = True


def read_maps(path: str | os.PathLike) -> MapsFile:
    """Load a complete ``maps.h5``; :class:`~atlas.store.common.ArtifactError` names the fix otherwise."""
    with open_artifact(path, KIND, stage="align") as f:
        return MapsFile(Path(path), f["w_ab"][:], f["bias_ab"][:], f["w_ba"][:], f["bias_ba"][:],
                        f["heldout_images"][:], f["validation_images"][:], {k: plain_attr(v) for k, v in f.attrs.items()})


__all__ = ["KIND", "MapsFile", "read_maps", "write_maps"]
