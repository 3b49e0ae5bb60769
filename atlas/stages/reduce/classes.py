"""Class atlases and two-class comparison layouts (the paper's class-filtered views)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from atlas.stages.reduce.bounds import normalize_layout
from atlas.stages.reduce.estimator import AtlasUMAP
from atlas.store.activations import ActivationsFile
from atlas.store.layout import KIND as LAYOUT_KIND
from atlas.store.layout import NONFINITE, PLACED, LayoutWriter, read_rows
from atlas.store.lineage import check_output

log = logging.getLogger(__name__)



def resolve_class(name_or_index: str | int) -> int:
    """Class index of a name, WordNet id or index (``ValueError`` with close matches)."""
    from atlas.resources import class_index

    if isinstance(name_or_index, (int, np.integer)):
        if name_or_index < 0:
            raise ValueError(f"class index must be >= 0, got {name_or_index}")
        return int(name_or_index)
    return class_index(str(name_or_index))


def class_attribution(top_classes: np.ndarray, top_values: np.ndarray, class_index: int) -> np.ndarray:
    """``(n,)`` attribution of each row to ``class_index`` from its top-k lists.

    A row not listing the class gets its k-th (smallest listed) value: the true attribution is
    at most that.
    """
    hit = np.asarray(top_classes) == class_index
    vals = np.asarray(top_values, np.float32)
    return np.where(hit.any(axis=1), np.where(hit, vals, -np.inf).max(axis=1), vals[:, -1])


def select_class_rows(
    acts: ActivationsFile, layer: str, class_index: int, top_n: int = 2000, chunk_rows: int = 65536
) -> np.ndarray:
    """Rows of a class activation atlas (Carter et al. 2019, "Focusing on a single class").

    The rows whose top attribution class is ``class_index``, plus the ``top_n`` rows most
    attributed to it (among rows listing it in their top-k; ties broken by row id).

    Returns:
        ``(M,)`` int64 sorted row ids.
    """
    group = acts.file[f"layers/{layer}"]
    if "attribution/top_classes" not in group:
        raise ValueError(f"{acts.path} has no attribution for {layer}; a class filter needs it "
                         "(collect again with attribution on)")
    top1: list[np.ndarray] = []
    best_r = np.empty(0, np.int64)
    best_v = np.empty(0, np.float32)
    for start, tc in acts.iter_chunks(layer, "attribution/top_classes", chunk_rows):
        tv = acts.read(layer, "attribution/top_values", start, start + len(tc))
        top1.append(np.flatnonzero(tc[:, 0] == class_index) + start)
        hit = tc == class_index
        rows = np.flatnonzero(hit.any(axis=1))
        if top_n and len(rows):
            v = np.where(hit[rows], tv[rows], -np.inf).max(axis=1).astype(np.float32)
            r = np.concatenate([best_r, rows + start])
            v = np.concatenate([best_v, v])
            order = np.lexsort((r, -v))[:top_n]
            best_r, best_v = r[order], v[order]
    return np.union1d(np.concatenate(top1), best_r).astype(np.int64)


def comparison_layout(
    acts: np.ndarray,
    attr_a: np.ndarray,
    attr_b: np.ndarray,
    *,
    n_neighbors: int = 20,
    min_dist: float = 0.01,
    metric: str = "cosine",
    random_state: int | None = 0,
) -> np.ndarray:
    """Two-class comparison layout (Carter et al. 2019, "Class comparison").

    x: the attribution difference ``d = attr_a - attr_b`` scaled by its 99th percentile of
    ``|d|`` and clipped, ``x = 0.5 + 0.5 * clip(d / p99(|d|), -1, 1)`` (0.5 = equal
    attribution, right = class A); y: a 1-D UMAP of the rows, normalised with
    :func:`normalize_layout`.

    Args:
        acts: ``(M, C)`` activations of the selected rows.
        attr_a, attr_b: ``(M,)`` attribution of each row to class A and class B.

    Returns:
        ``(M, 2)`` float32 in ``[0, 1]``; rows the metric cannot place get y = 0.5.
    """
    d = np.asarray(attr_a, np.float64) - np.asarray(attr_b, np.float64)
    if d.shape != (len(acts),):
        raise ValueError(f"attr_a and attr_b must have shape ({len(acts)},), "
                         f"got {np.shape(attr_a)}, {np.shape(attr_b)}")
    scale = np.percentile(np.abs(d), 99) if len(d) else 0.0
    x = 0.5 + 0.5 * np.clip(d / scale, -1, 1) if scale > 0 else np.full(len(d), 0.5)
    est = AtlasUMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, n_components=1,
                    sample_size=max(3, len(acts)), random_state=random_state)
    y = est.fit_transform(acts)[:, 0]
    ok = np.isfinite(y)
    y01 = np.full(len(y), 0.5, np.float32)
    if ok.any():
        y01[ok] = normalize_layout(y[ok, None])[:, 0]
    return np.stack([x, y01], axis=1).astype(np.float32)


def comparison_file(
    activations_path: str | os.PathLike,
    layout_path: str | os.PathLike,
    class_a: str | int,
    class_b: str | int,
    *,
    layer: str | None = None,
    top_n: int = 2000,
    n_neighbors: int = 20,
    min_dist: float = 0.01,
    random_state: int | None = 0,
    overwrite: bool = False,
) -> Path:
    """Write a ``layout.h5`` of the two-class comparison layout, ready for :func:`atlas.stages.grid.grid_file`.

    Rows: the class rows of A and of B (:func:`select_class_rows` with ``top_n`` each); x and y
    from :func:`comparison_layout`, with each row's attribution to A and B taken from
    ``attribution/full`` when collected, else from its top-k (:func:`class_attribution`).
    Left as it is when ``layout_path`` is already a complete comparison with the same settings
    over the same activations; written whole (the data are tens of thousands of rows) when there
    is none or its activations changed since. A comparison of other settings is kept and
    :class:`~atlas.store.common.SettingsChangedError` names the changes, unless ``overwrite``.
    """
    a_idx, b_idx = resolve_class(class_a), resolve_class(class_b)
    if a_idx == b_idx:
        raise ValueError(f"compare two different classes; both are {a_idx}")
    with ActivationsFile(activations_path) as acts:
        layer = acts.layer(layer)
        settings = {"compare": [a_idx, b_idx], "top_n": top_n, "n_neighbors": n_neighbors, "min_dist": min_dist,
                    "random_state": random_state, "layer": layer,
                    "source_settings_hash": str(acts.attrs.get("settings_hash", ""))}
        found = check_output(layout_path, LAYOUT_KIND, settings, stage="compare",
                             inputs={"activations": activations_path}, input_keys=("source_settings_hash",),
                             overwrite=overwrite)
        if found.state == "current":
            log.info("%s is complete and current; keeping it", layout_path)
            return Path(layout_path)
        rows = np.union1d(select_class_rows(acts, layer, a_idx, top_n), select_class_rows(acts, layer, b_idx, top_n))
        if len(rows) < 3:
            raise ValueError(f"classes {a_idx} and {b_idx} select only {len(rows)} rows of {layer}; need at least 3")
        x = read_rows(acts.dataset(layer, "activations"), rows)
        group = acts.file[f"layers/{layer}"]
        if "attribution/full" in group:
            full = read_rows(group["attribution/full"], rows)
            attr_a, attr_b = full[:, a_idx].astype(np.float32), full[:, b_idx].astype(np.float32)
        else:
            tc = read_rows(group["attribution/top_classes"], rows)
            tv = read_rows(group["attribution/top_values"], rows)
            attr_a, attr_b = class_attribution(tc, tv, a_idx), class_attribution(tc, tv, b_idx)
        status = AtlasUMAP(metric="cosine").row_status(x)
        xy = comparison_layout(x, attr_a, attr_b, n_neighbors=n_neighbors, min_dist=min_dist,
                               random_state=random_state)
        xy[status == NONFINITE] = np.nan
        with LayoutWriter.create(layout_path, rows, settings, {
            "model": acts.model, "layer": layer, "source": str(Path(activations_path)),
            "source_settings_hash": str(acts.attrs.get("settings_hash", "")), "class_index": a_idx,
            "class_name": f"{class_a} vs {class_b}", "compare_class_index": b_idx,
        }, inputs={"activations": activations_path}) as w:
            ok = np.flatnonzero(status == PLACED)
            w.write_fit(rows[ok], xy[ok], rows[ok], xy[ok], 0)
            w.write_rows(0, xy, status)
            w.commit(len(rows))
            w.finish(xy, status, np.zeros(2), np.ones(2))
    return Path(layout_path)
