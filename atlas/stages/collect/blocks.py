"""The collect stage on Dask: one task per block of images, each writing its block's part file.

The images are cut into the blocks collect already commits one at a time (``block_size`` images
each); each missing block is one Dask task (:func:`collect_block`) that decodes its images, runs
the model and writes the block's part file ``<output>.parts/part-XXXXXXXX.h5`` atomically (write to
a temporary name, then rename), exactly as the in-process collect does. The client joins the parts
at the end with the same :func:`atlas.store.activations.finalize`. Hence:

- a task is idempotent: running a block twice rewrites the same rows into the same part, so a
  worker killed mid-task (whose task Dask reschedules on another worker), or killed after
  writing its part but before reporting, neither loses nor duplicates rows;
- an interrupted distributed run resumes like an in-process one (and either kind can finish
  the other's partial run: the parts are the same);
- the run directory must be on a filesystem that the client and every worker see at the same
  path; a worker that cannot see it fails its task with an error that says so.

Schedulers, and how workers load the model and open the source, are in :mod:`atlas.runtime.distributed`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atlas.runtime.distributed import ModelSpec, keys_digest, worker_model, worker_source

if TYPE_CHECKING:
    from distributed import Client

    from atlas.data import ImageSource
    from atlas.stages.collect.rows import CollectSettings
    from atlas.store.activations import LayerSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockJob:
    """One collect task: block ``block`` of the source, images ``[start, stop)``.

    Attributes:
        output: absolute path of ``activations.h5``; the part goes to ``<output>.parts/``.
        parts_settings: the hashed collect settings (they name the parts folder's owner).
        keys_digest: :func:`keys_digest` of the block's image keys as the client sees them.
        decode_threads: threads decoding images ahead of the model inside the task.
        decode: ``"auto"``, ``"cpu"`` or ``"gpu"`` (:func:`atlas.stages.collect.batch_decode.resolve_decode`
            on the worker's device).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (:func:`atlas.stages.collect.batch_decode.autocast`).
    """

    output: str
    parts_settings: Mapping[str, Any]
    model: ModelSpec
    n_images: int
    block: int
    start: int
    stop: int
    keys_digest: str
    settings: CollectSettings
    specs: tuple[LayerSpec, ...]
    batch_size: int
    decode_threads: int = 1
    decode: str = "auto"
    precision: str = "fp32"


@dataclass
class BlockResult:
    """What a task reports: images done, skipped images by reason, rows per layer, its worker."""

    block: int
    images: int
    skipped: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    worker: str = ""


def _decoded(dataset: Any, threads: int, ahead: int) -> Iterator[Any]:
    """``dataset[i]`` for every i in order, decoded by ``threads`` threads at most ``ahead`` items ahead."""
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="atlas-decode") as pool:
        pending: list[Future] = []
        nxt = 0
        while nxt < len(dataset) or pending:
            while nxt < len(dataset) and len(pending) < ahead:
                pending.append(pool.submit(dataset.__getitem__, nxt))
                nxt += 1
            yield pending.pop(0).result()


def collect_block(job: BlockJob, source: str | tuple[str, ...] | ImageSource) -> BlockResult:
    """The Dask task of one block: decode, compute rows, write the block's part file atomically.

    Runs on a worker. The model comes from :func:`worker_model` and the source from
    :func:`worker_source` (both kept per process). Idempotent: the part is a pure function of
    the job, written under a temporary name and renamed into place.
    """
    import json

    import torch

    from atlas.data import SKIP_REASONS, ImageDataset
    from atlas.stages.collect.batch_decode import EncodedImageDataset, autocast, decode_batch, resolve_decode
    from atlas.stages.collect.rows import buffer_batch, commit_block, compute_rows
    from atlas.store.activations import PartStore

    t0 = time.perf_counter()
    parts = PartStore(job.output, job.parts_settings)
    meta = parts.dir / "settings.json"
    where = f"worker {socket.gethostname()} (pid {os.getpid()})"
    if not meta.is_file():
        raise FileNotFoundError(
            f"{where} cannot see {meta}: the run directory must be on a filesystem shared by the client and "
            f"every worker, at the same path"
        )
    found = json.loads(meta.read_text()).get("settings_hash")
    if found != parts.hash:
        raise ValueError(f"{parts.dir} now belongs to other collect settings (hash {found}, this task {parts.hash}); "
                         "another collect overwrote the run while this one was running")
    src = worker_source(source)
    refs = src.refs()
    if len(refs) != job.n_images or keys_digest([r.key for r in refs[job.start:job.stop]]) != job.keys_digest:
        raise ValueError(
            f"{where} sees {len(refs)} images in {src.root}, or other images in block {job.block}, than the client "
            f"({job.n_images} images): the source must be the same files, at the same path, on every machine"
        )
    model, n_classes = worker_model(job.model)
    dev = model.device
    on_device = resolve_decode(job.decode, dev, model.image_transform) == "gpu"
    kind = EncodedImageDataset if on_device else ImageDataset
    dataset = kind(src, model.image_transform, indices=range(job.start, job.stop))
    collate = dataset.collate_fn
    reason_names = {code: name for name, code in SKIP_REASONS.items()}
    skipped: Counter[str] = Counter()
    buffers: dict[int, dict] = {}
    batch: list[Any] = []
    items = _decoded(dataset, job.decode_threads, ahead=2 * job.batch_size)
    for k, item in enumerate(items, start=1):
        batch.append(item)
        if len(batch) < job.batch_size and k < len(dataset):
            continue
        if on_device:
            all_idx, jpegs, decoded, failures = collate(batch)
            imgs, ok_idx, bad = decode_batch(jpegs, decoded, model.image_transform, dev)
            failures = [*failures, *bad]
        else:
            all_idx, imgs, ok_idx, failures = collate(batch)
        batch = []
        rows = None
        if len(ok_idx):
            imgs = imgs.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with autocast(job.precision, dev):
                rows = compute_rows(model, imgs, ok_idx.tolist(), job.specs, job.settings,
                                    labels=[refs[i].label for i in ok_idx.tolist()])
        status = {int(i): 0 for i in all_idx.tolist()}
        for i, code in failures:
            status[int(i)] = int(code)
            skipped[reason_names.get(int(code), str(code))] += 1
        buffer_batch(buffers, rows, status, job.settings.block_size)
    buf = buffers[job.block]
    commit_block(parts, job.block, buf, job.specs, job.settings, n_classes)
    n_rows = {layer: sum(len(r[layer]["image_index"]) for r in buf["rows"]) for layer in (s.name for s in job.specs)}
    return BlockResult(job.block, job.stop - job.start, dict(skipped), n_rows, time.perf_counter() - t0,
                       f"{socket.gethostname()}:{os.getpid()}")


def run_collect_blocks(
    client: Client,
    jobs: Sequence[BlockJob],
    source: str | tuple[str, ...] | ImageSource,
    *,
    progress: bool = True,
    desc: str = "collect",
    retries: int = 1,
    on_block: Callable[[BlockResult], None] | None = None,
) -> list[BlockResult]:
    """Run the blocks as Dask tasks; a progress bar advances as blocks finish.

    ``source`` is a path spec every worker opens itself, or an :class:`ImageSource`, which is
    then sent to each worker once (scattered), not with every task. ``retries`` re-runs a task
    that raised (a flaky network filesystem); a task whose worker died is rescheduled by Dask
    anyway. ``on_block(result)`` is called in the client as each block finishes.

    Raises the first task error after cancelling the rest; finished blocks stay on disk, so the
    same call resumes.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    from atlas.data import ImageSource
    from atlas.store.common import settings_hash

    if not jobs:
        return []
    arg: Any = client.scatter(source, broadcast=False, hash=False) if isinstance(source, ImageSource) else source
    run = f"{settings_hash(jobs[0].parts_settings)}-{uuid.uuid4().hex[:8]}"
    futures = {
        client.submit(collect_block, job, arg, key=f"atlas-collect-{run}-{job.block:08d}", retries=retries): job
        for job in jobs
    }
    results: list[BlockResult] = []
    bar = tqdm(total=sum(j.stop - j.start for j in jobs), unit="img", desc=desc, disable=not progress,
               dynamic_ncols=True)
    try:
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                result = fut.result()
            except Exception as e:
                from distributed import KilledWorker

                if isinstance(e, KilledWorker):
                    raise RuntimeError(
                        f"collect block {job.block} (images {job.start}..{job.stop - 1}) killed every worker that "
                        f"ran it (out of memory? try a smaller batch_size); finished blocks are kept, rerun to resume"
                    ) from e
                log.error("collect block %d (images %d..%d) failed on a Dask worker: %s; finished blocks are kept, "
                          "rerun to resume", job.block, job.start, job.stop - 1, e)
                raise
            results.append(result)
            bar.update(result.images)
            bar.set_postfix(skipped=sum(sum(r.skipped.values()) for r in results), refresh=False)
            if on_block is not None:
                on_block(result)
            fut.release()
    finally:
        bar.close()
        client.cancel([f for f in futures if not f.done()])
    return results


__all__ = ["BlockJob", "BlockResult", "collect_block", "run_collect_blocks"]
