"""The render's batches as Dask tasks (``render_cells(..., scheduler=...)``).

Each batch of cells the in-process render would optimize together (:class:`IconBatch`) is one
task (:func:`render_task`); a worker renders it on its own device
(:func:`atlas.runtime.distributed.worker_device`) and returns the icons (a few hundred KB), and the
client writes every finished batch into ``icons.h5`` (only :mod:`atlas.store` opens HDF5). A worker
lost mid-run costs the batches it held, which Dask runs again on another worker; each task's result
is written once, and a batch's icons depend only on the batch, so nothing is missing or doubled.
Schedulers, model specs and devices: :mod:`atlas.runtime.distributed`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from atlas.models import AtlasModel
from atlas.runtime.distributed import ModelSpec, worker_device
from atlas.stages.render.batch import IconBatch, IconBatchResult, render_icon_batch

if TYPE_CHECKING:  # distributed is imported where it is used
    from distributed import Client

log = logging.getLogger(__name__)

_MODELS: dict[ModelSpec, AtlasModel] = {}
_MODELS_LOCK = threading.Lock()


def worker_render_model(spec: ModelSpec) -> AtlasModel:
    """The model of a render task, loaded once per worker process on :func:`worker_device` (as it
    is: the render gives the model channels-last inputs itself where that is faster)."""
    with _MODELS_LOCK:
        if spec not in _MODELS:
            t0 = time.perf_counter()
            _MODELS[spec] = spec.load(worker_device(spec.device))
            log.info("worker %d loaded %s for rendering in %.1f s", os.getpid(), spec, time.perf_counter() - t0)
        return _MODELS[spec]


def render_task(spec: ModelSpec, batch: IconBatch) -> IconBatchResult:
    """The Dask task of one render batch: :func:`render_icon_batch` on this worker's model."""
    result = render_icon_batch(worker_render_model(spec), batch)
    result.worker = f"{socket.gethostname()}:{os.getpid()}"
    return result


def run_render_batches(
    client: Client,
    spec: ModelSpec,
    batches: Sequence[IconBatch],
    *,
    on_batch: Callable[[IconBatchResult], None],
    retries: int = 1,
) -> int:
    """Render ``batches`` as Dask tasks (:func:`render_task`); ``on_batch(result)`` runs in the
    client for each finished batch (the render stage writes it there).

    Returns the number of batches done. Raises the first task error after cancelling the rest;
    batches already handed to ``on_batch`` stay written, so the same render resumes.
    """
    from distributed import KilledWorker, as_completed

    if not batches:
        return 0
    run = uuid.uuid4().hex[:8]
    futures = {
        client.submit(render_task, spec, b, key=f"atlas-render-{run}-{b.size}-{int(b.rows[0]):08d}", retries=retries): b
        for b in batches
    }
    done = 0
    try:
        for fut in as_completed(futures):
            b = futures[fut]
            try:
                result = fut.result()
            except KilledWorker as e:
                raise RuntimeError(f"render batch of level {b.size}, rows {int(b.rows[0])}..{int(b.rows[-1])}, killed "
                                   "every worker that ran it (out of memory? try a smaller batch_size); finished "
                                   "batches are kept, rerun to resume") from e
            on_batch(result)
            done += 1
            fut.release()
    finally:
        client.cancel([f for f in futures if not f.done()])
    return done

