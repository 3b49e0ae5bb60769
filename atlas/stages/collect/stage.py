"""Collect: images -> spatial activations of one or more layers, with class attribution, in HDF5.

Following Carter et al., "Activation Atlas" (Distill 2019): for every image we run the model,
sample spatial positions of the layer's (H, W) grid -- by default one random position per image,
away from the edges -- and store the C-dimensional activation vector ``h`` at each sampled
position together with its attribution to the class logits,

    attribution_c = h . d logit_c / d h      (at that position only),

keeping the top-k classes and values per row (and optionally the full vector). How the rows
and their attribution are computed -- forward mode for every class at a few positions, or one
backward pass per candidate class for all positions at once -- lives in :mod:`atlas.stages.collect.rows`,
which the Dask tasks of :mod:`atlas.runtime.distributed` share.

On a GPU (:mod:`atlas.stages.collect.batch_decode`): ``decode="auto"`` decodes JPEGs in batches on the GPU
(the workers only read the files), the model runs channels-last, batches are pinned and copied
without blocking, and ``precision="bf16"``/``"fp16"`` runs the forward and attribution passes
under ``torch.autocast``. ``breakdown=True`` times what the main loop (and so the GPU) waited on:
decode, host->device copies, the model, the attribution and the writes
(:attr:`CollectSummary.timings`).

Streaming and resumable: images are read by a DataLoader with decode workers, in order, and
every block of ``block_size`` images is committed atomically to a part file (see
:mod:`atlas.store.activations`). Rerunning the same command after a crash or a kill redoes only
the missing blocks; the finished file has exactly the rows an uninterrupted run would have.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from atlas.checks import at_least
from atlas.data import SKIP_REASONS, ImageDataset, ImageSource, open_source
from atlas.data.datasets import resolve_source
from atlas.models import AtlasModel, load_model, resolve_device
from atlas.runtime.distributed import ModelSpec, Scheduler
from atlas.stages.collect.batch_decode import EncodedImageDataset, autocast, decode_batch, resolve_decode
from atlas.stages.collect.layers import describe_tokens, layer_specs
from atlas.stages.collect.rows import (
    CollectSettings,
    buffer_batch,
    capture_until_last,
    commit_block,
    compute_rows,
    sample_positions,
)
from atlas.store.activations import ActivationsFile, LayerSpec, PartStore, finalize, parts_dir_for
from atlas.store.lineage import check_output

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class NoUsableImagesError(ValueError):
    """Not one image of the source could be read: nothing is written (see :func:`collect`)."""


def check_loader(batch_size: int, workers: int | None) -> None:
    """The loader settings of :func:`collect` (``workers`` None: the default)."""
    at_least("batch_size", batch_size, 1)
    if workers is not None:
        at_least("workers", workers, 0, " (0 decodes in the main process; leave it out for one per spare core)")


def check_source_name(root: str) -> None:
    """Refuse a source whose own path is not UTF-8 (the files inside may have any name): it is
    stored as text in every artifact of the run."""
    try:
        root.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the source path {root!r} is not valid UTF-8 (the escapes are its bytes that are not); "
                         "rename it, or link to it under a UTF-8 name (ln -s) and collect from the link") from None


@dataclass
class CollectSummary:
    """What a collect run did; ``skipped`` counts images by reason."""

    output: Path
    images: int
    rows: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_second: float = 0.0
    resumed_blocks: int = 0
    up_to_date: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    #: how the token layers' positions were read (:func:`describe_tokens`); empty without any
    tokens: str = ""

    def describe_breakdown(self) -> str:
        """Where the main loop's time went (``collect(..., breakdown=True)``), one line."""
        if not self.timings:
            return "no breakdown (run collect with breakdown=True / --breakdown)"
        total = sum(self.timings.values())
        parts = ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in self.timings.items())
        return f"waited on: {parts}"

    def describe(self) -> str:
        if self.up_to_date:
            return f"{self.output} is complete and current; nothing to do"
        rows = ", ".join(f"{layer}: {n} rows" for layer, n in self.rows.items())
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        resumed = f"; {self.resumed_blocks} blocks were already done" if self.resumed_blocks else ""
        tokens = f" ({self.tokens})" if self.tokens else ""
        return (
            f"collected {self.images} images ({skipped} skipped: {reasons}) -> {rows}{tokens} "
            f"in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s){resumed}; wrote {self.output}"
        )


def default_workers() -> int:
    """Decode workers: one per spare core, at least one, at most four."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def collect(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    model: AtlasModel | ModelSpec | str = "inceptionv1",
    settings: CollectSettings | None = None,
    *,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | torch.device = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_blocks: int | None = None,
    scheduler: str | Scheduler | Client | None = None,
    decode: str = "auto",
    precision: str = "fp32",
    breakdown: bool = False,
) -> CollectSummary:
    """Run the collect stage: ``source`` images -> ``output`` (``activations.h5``).

    Args:
        source: a folder (recursive), a text file of paths, one or more ``.tar`` shards (or a
            glob), as understood by :func:`atlas.data.open_source`.
        output: the HDF5 file to write; its parts folder ``<output>.parts/`` holds unfinished work.
        model: an :class:`~atlas.models.AtlasModel`, a spec for :func:`atlas.models.load_model`, or an
            :class:`atlas.runtime.distributed.ModelSpec`.
        settings: what to collect (layers, sampling, attribution); see :class:`CollectSettings`.
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"`` ...
        batch_size: images per forward pass (does not change the results).
        workers: decode processes for the DataLoader (default: :func:`default_workers`; 0 decodes
            in the main process).
        overwrite: discard an existing output or partial run instead of reusing/resuming it (or
            refusing it, when it was made with other settings).
        max_blocks: stop after this many new blocks (for tests of resumption); the run is then
            left unfinished, exactly as a kill would leave it.
        scheduler: run every missing block as a Dask task (:mod:`atlas.runtime.distributed`): a scheduler
            address (``"tcp://HOST:8786"``), ``"local"``/``"local:N"`` (worker processes on this
            machine), an :class:`atlas.runtime.distributed.Scheduler` or a ``distributed.Client``. The
            workers load the model themselves, so ``model`` must be a spec (a name or a
            :class:`~atlas.runtime.distributed.ModelSpec`), and ``workers`` is the number of decode threads
            inside each task (default 1). The rows are those of the in-process run.
        decode: ``"auto"`` (batched JPEG decoding on the GPU when the model is on CUDA, PIL in
            the workers otherwise), ``"cpu"`` or ``"gpu"`` (see :mod:`atlas.stages.collect.batch_decode`; with
            a CPU model ``"gpu"`` runs the batched path with TorchCodec's CPU decoder; without
            TorchCodec both ``"gpu"`` and ``"auto"`` decode with PIL in the workers). The
            batched path's pixels differ from PIL's by rounding (0.23 of 255 on average),
            so, like ``batch_size``, it is not part of the settings hash.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the model and attribution
            passes under ``torch.autocast``. Part of the settings hash when not fp32.
        breakdown: time the phases of the main loop (synchronizing the GPU between them) into
            :attr:`CollectSummary.timings`: ``decode`` (waiting for the workers, plus the
            batched decode), ``host_to_device``, ``model`` (a plain forward pass of each batch,
            timed separately and excluded from images/s), ``attribution`` (the rest of the rows'
            computation), ``write``. In-process runs only.

    Returns a :class:`CollectSummary`. When ``output`` is already complete for the same
    settings, nothing is recomputed; when it (or a partial run) was made with other settings,
    :class:`~atlas.store.common.SettingsChangedError` names the changes and nothing is touched,
    unless ``overwrite``. File names that are not UTF-8 are collected like any other
    (their keys keep the name's bytes, see :mod:`atlas.store.activations`); a source path that is
    not UTF-8 is refused before any work. When not one image could be read, nothing is written
    (the parts are removed, so a rerun reads every image again) and :class:`NoUsableImagesError`
    says why, by reason.
    """
    settings = settings or CollectSettings()
    check_loader(batch_size, workers)
    autocast(precision, "cpu")  # checks the name before any work
    if breakdown and scheduler is not None:
        raise ValueError("breakdown=True times the in-process loop; drop the scheduler (or the breakdown)")
    output = Path(output)
    t0 = time.perf_counter()
    if isinstance(source, str):
        source = resolve_source(source)
    model_spec = None
    if scheduler is not None or isinstance(model, ModelSpec):  # a model argument workers cannot load fails first
        model_spec = ModelSpec.of(model, weights=weights, random_init=random_init, device=device)
    src = open_source(source)  # an empty or missing source fails here, before the model loads
    check_source_name(str(src.root))
    refs = src.refs()
    if model_spec is not None:
        weights, random_init = model_spec.weights, model_spec.random_init
        # in a distributed run the workers load the model; here it only gives the layer shapes and
        # the image transform, which do not depend on the weights
        model = model_spec.for_shapes().load("cpu") if scheduler is not None else model_spec.load()
    elif isinstance(model, str):
        model = load_model(model, weights=weights, random_init=random_init, device=device)
    elif device != "auto":
        model = model.to(resolve_device(device))
    specs = layer_specs(model, settings.layers)
    if describe_tokens(specs):
        log.info("token layers: %s", describe_tokens(specs))
    hashed = {
        "collect": collect_record(settings),
        "model": model.name,
        "weights": weights_id(weights),
        "random_init": random_init,
        "image_transform": repr(model.image_transform),
        "source": str(src.root),
        "n_images": len(refs),
    }
    if precision != "fp32":  # fp32 runs keep the hash of earlier versions
        hashed["precision"] = precision
    # a finished file of other settings is kept unless overwrite (SettingsChangedError names the changes)
    if check_output(output, "activations", hashed, stage="collect", overwrite=overwrite).state == "current":
        return CollectSummary(output, len(refs), {}, up_to_date=True)
    if overwrite and output.exists():
        output.unlink()
    parts = PartStore(output, hashed)
    parts.open(overwrite=overwrite)
    n_blocks = math.ceil(len(refs) / settings.block_size)
    done = parts.done_blocks()
    todo = [blk for blk in range(n_blocks) if blk not in done]
    if max_blocks is not None:
        todo = todo[:max_blocks]
    if done:
        log.info("resuming %s: %d of %d blocks already done", output, len(done), n_blocks)

    if scheduler is None:
        timings: dict[str, float] = {}
        n_done_images, skipped = _collect_in_process(model, src, todo, specs, settings, parts, batch_size=batch_size,
                                                     workers=workers, progress=progress, decode=decode,
                                                     precision=precision, timings=timings if breakdown else None)
    else:
        n_done_images, skipped = _collect_distributed(scheduler, model_spec, source, src, todo, specs, settings,
                                                      parts, output, batch_size=batch_size, workers=workers,
                                                      progress=progress, decode=decode, precision=precision)
    reason_names = {code: name for name, code in SKIP_REASONS.items()}
    elapsed = time.perf_counter() - t0
    if scheduler is None and breakdown:
        elapsed -= timings.pop("_extra", 0.0)  # the separately timed model passes are not part of the run
    summary = CollectSummary(output, n_done_images, {}, skipped, elapsed,
                             n_done_images / elapsed if elapsed else 0.0, resumed_blocks=len(done),
                             timings=timings if scheduler is None and breakdown else {},
                             tokens=describe_tokens(specs))
    if len(parts.done_blocks()) < n_blocks:
        log.info("stopped with %d of %d blocks done; run the same command again to resume",
                 len(parts.done_blocks()), n_blocks)
        return summary
    status = parts.statuses(n_blocks)
    if len(status) and (status != 0).all():
        codes, counts = np.unique(status, return_counts=True)
        reasons = ", ".join(f"{n} {reason_names.get(int(c), str(c))}" for c, n in zip(codes, counts))
        parts.remove()  # so that a rerun after fixing the files reads them again
        raise NoUsableImagesError(
            f"none of the {len(refs)} images of {src.root} could be read ({reasons}); nothing was written. "
            "Check the files (atlas.data.decode_image names each one's problem) and run collect again")
    summary.rows = finalize(
        output, parts, n_blocks=n_blocks, layers=specs,
        image_keys=[r.key for r in refs], image_labels=np.array([r.label for r in refs], np.int32),
        settings=hashed,
        attrs={"model": model.name, "source": str(src.root), "n_images": len(refs), "top_k": settings.top_k},
        reasons=SKIP_REASONS,
    )
    # counted from the final file, so blocks done by an earlier (killed) run are included
    with ActivationsFile(output) as acts:
        summary.skipped = acts.skip_counts()
    return summary


def _collect_in_process(
    model: AtlasModel,
    src: ImageSource,
    todo: Sequence[int],
    specs: Sequence[LayerSpec],
    settings: CollectSettings,
    parts: PartStore,
    *,
    batch_size: int,
    workers: int | None,
    progress: bool,
    decode: str = "auto",
    precision: str = "fp32",
    timings: dict[str, float] | None = None,
) -> tuple[int, dict[str, int]]:
    """Collect blocks ``todo`` in this process (decode workers feed the model); returns
    ``(images done, skipped images by reason)``. With ``timings`` (a dict), the phases of the
    loop are timed into it (see :func:`collect`'s ``breakdown``)."""
    dev = model.device
    refs = src.refs()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    n_classes = fast(torch.zeros(1, 3, model.input_size, model.input_size, device=dev)).shape[1]
    indices = [i for blk in todo for i in range(blk * settings.block_size, min(len(refs), (blk + 1) * settings.block_size))]
    where = resolve_decode(decode, dev, model.image_transform)
    if where == "gpu":
        dataset: ImageDataset = EncodedImageDataset(src, model.image_transform, indices=indices)
    else:
        dataset = ImageDataset(src, model.image_transform, indices=indices)
    log.info("collect on %s: decoding %s, precision %s, batches of %d", dev,
             "JPEGs in batches on the device" if where == "gpu" else "with PIL in the workers", precision, batch_size)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=dataset.collate_fn,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    reason_names = {code: name for name, code in SKIP_REASONS.items()}
    skipped: Counter[str] = Counter()
    buffers: dict[int, dict] = {}
    n_done_images = 0
    clock = _PhaseClock(timings, dev)
    bar = tqdm(total=len(indices), unit="img", desc=f"collect {','.join(settings.layers)}",
               disable=not progress, dynamic_ncols=True)
    try:
        it = iter(loader)
        while True:
            clock.start()
            try:
                batch = next(it)
            except StopIteration:
                break
            if where == "gpu":
                all_idx, jpegs, decoded, failures = batch
                imgs, ok_idx, bad = decode_batch(jpegs, decoded, model.image_transform, dev)
                failures = [*failures, *bad]
                clock.lap("decode")
                imgs = imgs.contiguous(memory_format=torch.channels_last)
            else:
                all_idx, imgs, ok_idx, failures = batch
                clock.lap("decode")
                imgs = imgs.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
                clock.lap("host_to_device")
            rows = None
            if len(ok_idx):
                if clock.on and settings.attribution:
                    with autocast(precision, dev), torch.no_grad():
                        capture_until_last(fast, imgs, [s.name for s in specs])
                    clock.lap("model", extra=True)
                with autocast(precision, dev):
                    rows = compute_rows(fast, imgs, ok_idx.tolist(), specs, settings,
                                        labels=[refs[i].label for i in ok_idx.tolist()])
                clock.lap("attribution" if settings.attribution else "model")
            status = {int(i): 0 for i in all_idx.tolist()}
            for i, code in failures:
                status[int(i)] = int(code)
                skipped[reason_names.get(int(code), str(code))] += 1
            buffer_batch(buffers, rows, status, settings.block_size)
            for blk in sorted(buffers):
                buf = buffers[blk]
                size = min(len(refs), (blk + 1) * settings.block_size) - blk * settings.block_size
                if len(buf["status"]) == size:
                    commit_block(parts, blk, buf, specs, settings, n_classes)
                    del buffers[blk]
            clock.lap("write")
            n_done_images += len(all_idx)
            bar.update(len(all_idx))
            bar.set_postfix(skipped=sum(skipped.values()), refresh=False)
    finally:
        bar.close()
    return n_done_images, dict(skipped)


class _PhaseClock:
    """Accumulates wall time per phase into ``timings`` (a no-op when it is None).

    On CUDA the device is synchronized at every lap, so a phase's time includes its kernels.
    ``extra`` laps (work done only to be timed) go to ``timings["_extra"]`` too, so the caller
    can leave them out of the throughput. The model's share is also subtracted from the
    attribution lap that follows it: attribution = rows' computation - a plain forward pass.
    """

    def __init__(self, timings: dict[str, float] | None, device: torch.device):
        self.timings = timings
        self.on = timings is not None
        self.sync = self.on and device.type == "cuda"
        self.device = device
        self._t = 0.0
        self._model = 0.0
        if self.on:
            for k in ("decode", "host_to_device", "model", "attribution", "write"):
                timings.setdefault(k, 0.0)  # type: ignore[union-attr]

    def start(self) -> None:
        if self.on:
            self._t = time.perf_counter()

    def lap(self, phase: str, *, extra: bool = False) -> None:
        if not self.on:
            return
        if self.sync:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        dt = now - self._t
        self._t = now
        if self.timings is None:
            return
        if extra:
            self._model = dt
            self.timings["_extra"] = self.timings.get("_extra", 0.0) + dt
            self.timings["model"] += dt
            return
        if phase == "attribution":
            dt = max(0.0, dt - self._model)  # the rows' pass includes a forward pass like the one timed
            self._model = 0.0
        self.timings[phase] += dt


def _collect_distributed(
    scheduler: str | Scheduler | Client,
    model_spec: ModelSpec,
    source: Any,
    src: ImageSource,
    todo: Sequence[int],
    specs: Sequence[LayerSpec],
    settings: CollectSettings,
    parts: PartStore,
    output: Path,
    *,
    batch_size: int,
    workers: int | None,
    progress: bool,
    decode: str = "auto",
    precision: str = "fp32",
) -> tuple[int, dict[str, int]]:
    """Collect blocks ``todo`` as Dask tasks (:mod:`atlas.stages.collect.blocks`); returns
    ``(images done, skipped images by reason)``."""
    from atlas.runtime.distributed import client_for, keys_digest, portable_source
    from atlas.stages.collect.blocks import BlockJob, run_collect_blocks

    if not todo:
        return 0, {}
    refs = src.refs()
    bs = settings.block_size
    jobs = []
    for blk in todo:
        start, stop = blk * bs, min(len(refs), (blk + 1) * bs)
        jobs.append(BlockJob(
            output=str(output.absolute()), parts_settings=parts.settings, model=model_spec, n_images=len(refs),
            block=blk, start=start, stop=stop, keys_digest=keys_digest([r.key for r in refs[start:stop]]),
            settings=settings, specs=tuple(specs), batch_size=batch_size, decode_threads=max(1, workers or 1),
            decode=decode, precision=precision,
        ))
    portable = portable_source(source)
    with client_for(scheduler) as client:
        results = run_collect_blocks(client, jobs, src if portable is None else portable, progress=progress,
                                     desc=f"collect {','.join(settings.layers)}")
    skipped: Counter[str] = Counter()
    for r in results:
        skipped.update(r.skipped)
    return sum(r.images for r in results), dict(skipped)


def collect_record(settings: CollectSettings) -> dict:
    """The collect settings as ``activations.h5`` records and hashes them; an empty
    ``shared_grid`` is left out, so files collected before it existed stay current."""
    record = asdict(settings)
    if not settings.shared_grid:
        record.pop("shared_grid")
    return record


def weights_id(weights: str | os.PathLike | None) -> str | None:
    """How ``activations.h5`` records a weight file (``"name:size"``; the path as given when it is
    not a file; None for the model's default weights)."""
    if weights is None:
        return None
    p = Path(weights)
    return f"{p.name}:{p.stat().st_size}" if p.is_file() else str(p)


__all__ = ["CollectSettings", "CollectSummary", "NoUsableImagesError", "collect", "compute_rows", "describe_tokens", "collect_record",
           "layer_specs", "sample_positions", "parts_dir_for", "weights_id"]
