"""Scale-out on Dask distributed: schedulers, and the models and sources that workers load.

A *scheduler* is named by a string:

- ``"tcp://HOST:PORT"`` (or any Dask address): an existing scheduler. Start one with
  ``dask scheduler`` (it prints its address, by default ``tcp://HOST:8786``) and workers on
  every machine with ``dask worker tcp://HOST:8786 --nthreads 1`` (one worker per GPU).
- ``"local"`` or ``"local:N"``: a :class:`distributed.LocalCluster` of ``N`` worker processes
  (default: one per CPU core), one thread each, started for the run and closed after it.

The stages' tasks live with their stages and use what is here: collect's blocks in
:mod:`atlas.stages.collect.blocks` (the model and source each worker needs: :class:`ModelSpec`,
:func:`worker_model`, :func:`worker_source`), render's batches in :mod:`atlas.stages.render.dask`,
reduce's placement chunks in :mod:`atlas.stages.reduce.stage`. With ``device="auto"`` on a
machine with several GPUs, the worker named ``k`` (a ``LocalCluster`` names its workers 0, 1, ...)
uses GPU ``k mod n_gpus`` (:func:`worker_device`); remote workers started one per GPU
(``CUDA_VISIBLE_DEVICES``) see only their own.

Workers load the model themselves from a small :class:`ModelSpec` (a name, or a
``"module:function"`` factory) and keep it per worker process (:func:`worker_model`); sources
given by path are opened once per worker process too. Only block numbers, settings and a
digest of each block's image keys travel with the tasks; rows never pass through the
scheduler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # distributed, torch and the data modules are imported where they are used
    from distributed import Client, LocalCluster

    from atlas.data import ImageSource
    from atlas.models import AtlasModel

log = logging.getLogger(__name__)

#: How to start a scheduler and workers; appended to connection errors.
HOW_TO_START = (
    "Start a scheduler with `dask scheduler` (it prints its address, by default tcp://HOST:8786) and "
    "at least one worker with `dask worker tcp://HOST:8786 --nthreads 1`, or use scheduler \"local:N\" "
    "for N worker processes on this machine."
)

_LOCAL = re.compile(r"local(?::(\d+))?")


class SchedulerError(ValueError):
    """A scheduler that cannot be used: a bad spec, an address nobody answers, no workers."""


# --------------------------------------------------------------------------- the scheduler


def parse_scheduler(spec: str) -> tuple[str, int | None]:
    """Check a scheduler spec: ``("local", n_workers or None)`` or ``("address", None)``.

    Raises :class:`SchedulerError` for anything else, saying which forms are accepted.
    """
    text = spec.strip()
    m = _LOCAL.fullmatch(text)
    if m:
        n = int(m.group(1)) if m.group(1) else None
        if n is not None and n < 1:
            raise SchedulerError(f"scheduler {spec!r}: the number of local workers must be at least 1, e.g. local:2")
        return "local", n
    host, port = _host_port(text)
    if host is None or port is None:
        raise SchedulerError(
            f"scheduler {spec!r} is neither \"local\", \"local:N\" nor a scheduler address such as "
            f"tcp://HOST:8786. {HOW_TO_START}"
        )
    return "address", None


def _host_port(address: str) -> tuple[str | None, int | None]:
    """``(host, port)`` of ``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``HOST:PORT``, else Nones."""
    if "://" not in address:
        address = "tcp://" + address
    try:
        parts = urlsplit(address)
        return parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        return None, None


def _probe(address: str, timeout: float) -> None:
    """Fail fast, and clearly, when nothing listens at a TCP scheduler address."""
    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    host, port = _host_port(address)
    if scheme not in ("tcp", "tls") or host is None or port is None:
        return  # other transports (inproc, ucx, ...) are left to Dask
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise SchedulerError(f"cannot reach the Dask scheduler at {address} ({e}). {HOW_TO_START}") from e


def connect(
    spec: str, *, timeout: float = 10.0, worker_timeout: float = 120.0
) -> tuple[Client, LocalCluster | None]:
    """A :class:`distributed.Client` for ``spec`` (and the cluster it started, for ``local``).

    Args:
        spec: ``"local"``, ``"local:N"`` or a scheduler address (see the module docstring).
        timeout: seconds to wait for the scheduler to answer.
        worker_timeout: seconds to wait for the first worker of a remote scheduler.

    Raises:
        SchedulerError: the spec is malformed, nothing answers at the address, or the
            scheduler has no worker after ``worker_timeout`` seconds; the message says how to
            start a scheduler and workers.
    """
    from distributed import Client

    kind, n = parse_scheduler(spec)
    dask_log = logging.getLogger("distributed")
    if dask_log.level in (logging.NOTSET, logging.INFO) and not log.isEnabledFor(logging.DEBUG):
        # Dask logs every connection and worker (de)registration at INFO (its default level),
        # which drowns the progress bars; with debug logging (`atlas -v`) it stays as it is.
        dask_log.setLevel(logging.WARNING)
    if kind == "local":
        cluster = local_cluster(n or os.cpu_count() or 1)
        try:
            return Client(cluster), cluster
        except BaseException:
            cluster.close()
            raise
    address = spec.strip()
    _probe(address, timeout)
    try:
        client = Client(address, timeout=f"{timeout}s")
    except Exception as e:  # OSError, TimeoutError, or whatever a non-Dask listener provokes
        raise SchedulerError(
            f"cannot connect to a Dask scheduler at {address} within {timeout:g} s ({type(e).__name__}: {e}). "
            f"{HOW_TO_START}"
        ) from e
    if not client.scheduler_info().get("workers"):
        log.info("waiting up to %.0f s for a worker to join the scheduler at %s", worker_timeout, address)
        try:
            client.wait_for_workers(1, timeout=worker_timeout)
        except Exception as e:  # TimeoutError (its type moved between Dask versions)
            client.close()
            raise SchedulerError(
                f"the Dask scheduler at {address} has no worker after {worker_timeout:g} s; start one with "
                f"`dask worker {address} --nthreads 1` on each machine (one per GPU)."
            ) from e
    return client, None


def local_cluster(n_workers: int) -> LocalCluster:
    """A :class:`distributed.LocalCluster` of ``n_workers`` processes with one thread each.

    Dask starts worker processes with OMP/MKL/OpenBLAS at one thread (so N workers do not
    oversubscribe N cores) and with ``MALLOC_TRIM_THRESHOLD_=65536``; the latter is left out
    here: it makes glibc hand freed memory back to the system eagerly, and the model's
    activations are allocated and freed every batch; with it, collect took 1.5x the CPU time
    per image (InceptionV1 at 112 px, one thread: 69 vs 46 ms; benchmarks/README.md).
    """
    import dask
    from distributed import LocalCluster

    log.info("starting a local Dask cluster of %d worker processes", n_workers)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0")


class Scheduler:
    """A scheduler spec, connected on first use and shared by the stages of a run.

    >>> with Scheduler("local:2") as sched:          # doctest: +SKIP
    ...     collect(src, out, "inceptionv1", scheduler=sched)
    ...     reduce_file(out, layout, scheduler=sched)  # same cluster, started once
    """

    def __init__(self, spec: str, *, timeout: float = 10.0, worker_timeout: float = 120.0):
        parse_scheduler(spec)  # fail early on a malformed spec
        self.spec = spec
        self.timeout = timeout
        self.worker_timeout = worker_timeout
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None

    def client(self) -> Client:
        """The connected client (connecting, or starting the local cluster, on the first call)."""
        if self._client is None:
            self._client, self._cluster = connect(self.spec, timeout=self.timeout,
                                                  worker_timeout=self.worker_timeout)
        return self._client

    def close(self) -> None:
        """Disconnect, and stop the local cluster if this object started one."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Scheduler({self.spec!r}, connected={self._client is not None})"


@contextmanager
def client_for(scheduler: str | Scheduler | Client) -> Iterator[Client]:
    """A client for a spec string, a :class:`Scheduler` or a client; closes only what it opened."""
    from distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
    elif isinstance(scheduler, Scheduler):
        yield scheduler.client()
    elif isinstance(scheduler, str):
        with Scheduler(scheduler) as sched:
            yield sched.client()
    else:
        raise TypeError(f"scheduler must be a spec string, an atlas.runtime.distributed.Scheduler or a distributed.Client, "
                        f"not {type(scheduler).__name__}")


def worker_slots(client: Client) -> int:
    """Threads across the cluster's workers (at least 1): how many tasks run at once."""
    return max(1, sum(client.nthreads().values()))


# --------------------------------------------------------------------------- models on workers


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model itself, instead of receiving a pickled one.

    Attributes:
        name: a spec of :func:`atlas.models.load_model` (``"inceptionv1"``, ``"torchvision:NAME"``).
        weights: a weight file; it must exist at this path on every worker.
        random_init: seeded random weights (the same in every process).
        device: where workers run the model: ``"auto"`` (a worker's GPU when it has one).
        factory: ``"package.module:function"``, a function without arguments that returns an
            :class:`~atlas.models.AtlasModel` (or an ``nn.Module`` for :func:`load_model`), for
            models that have no name; the module must be importable on every worker.
            ``name`` is then ignored.
    """

    name: str = "inceptionv1"
    weights: str | None = None
    random_init: bool = False
    device: str = "auto"
    factory: str | None = None

    def __post_init__(self) -> None:
        if self.factory is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.factory):
            raise ValueError(f"factory {self.factory!r} must read 'package.module:function'")
        if self.weights is not None:  # workers may run elsewhere: no relative paths
            object.__setattr__(self, "weights", os.path.abspath(os.path.expanduser(str(self.weights))))

    @classmethod
    def of(
        cls,
        model: Any,
        *,
        weights: str | os.PathLike | None = None,
        random_init: bool = False,
        device: Any = "auto",
    ) -> ModelSpec:
        """The spec of collect's ``model`` argument: a name (with ``weights``, ``random_init``,
        ``device``) or a spec (``device`` replaces its own unless ``"auto"``).

        A model object cannot be loaded by a worker, so it is refused with the alternatives.
        """
        if isinstance(model, ModelSpec):
            return model if str(device) == "auto" else dataclasses.replace(model, device=str(device))
        if isinstance(model, str):
            return cls(model, None if weights is None else os.fspath(weights), random_init, str(device))
        raise ValueError(
            f"a distributed collect needs a model that each worker loads itself, not a {type(model).__name__} "
            "object: give a name such as 'inceptionv1' or 'torchvision:resnet50' (with weights=...), or "
            "atlas.runtime.distributed.ModelSpec(factory='package.module:function') for a model built by your own code"
        )

    def for_shapes(self) -> ModelSpec:
        """The same architecture without reading weights: layer shapes and the image transform
        (what the client needs) do not depend on them."""
        return self if self.factory is not None else dataclasses.replace(self, weights=None, random_init=True)

    def load(self, device: str | None = None) -> AtlasModel:
        """Build the model on ``device`` (default: :attr:`device`), in eval mode without gradients."""
        from atlas.models import load_model

        device = self.device if device is None else device
        if self.factory is None:
            return load_model(self.name, weights=self.weights, random_init=self.random_init, device=device)
        module_name, _, attr = self.factory.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"model factory {self.factory!r}: cannot import {module_name!r} here ({e}); "
                             "it must be importable on the client and on every worker") from e
        for part in attr.split("."):
            obj = getattr(obj, part)
        return load_model(obj(), device=device)


_MODELS: dict[ModelSpec, tuple[AtlasModel, int]] = {}
_SOURCES: dict[Any, ImageSource] = {}
_CACHE_LOCK = threading.Lock()


def worker_model(spec: ModelSpec) -> tuple[AtlasModel, int]:
    """``(model, n_classes)`` for ``spec``, loaded once per process and kept.

    The model is the channels-last copy collect runs (the same numbers as the in-process path).
    """
    with _CACHE_LOCK:
        if spec not in _MODELS:
            import torch

            t0 = time.perf_counter()
            model = spec.load(worker_device(spec.device)).to(memory_format=torch.channels_last)
            size = model.input_size
            with torch.no_grad():
                n_classes = int(model(torch.zeros(1, 3, size, size, device=model.device)).shape[1])
            _MODELS[spec] = (model, n_classes)
            log.info("worker %d loaded %s in %.1f s", os.getpid(), spec, time.perf_counter() - t0)
        return _MODELS[spec]


def worker_source(spec: str | tuple[str, ...] | ImageSource) -> ImageSource:
    """An image source from a path spec, opened once per process and kept; sources pass through."""
    from atlas.data import ImageSource, open_source

    if isinstance(spec, ImageSource):
        return spec
    with _CACHE_LOCK:
        if spec not in _SOURCES:
            _SOURCES[spec] = open_source(list(spec) if isinstance(spec, tuple) else spec)
        return _SOURCES[spec]


def portable_source(source: Any) -> str | tuple[str, ...] | None:
    """The source as absolute path(s) that a worker can open itself, or None for a source object."""
    from atlas.data import ImageSource

    if isinstance(source, ImageSource):
        return None
    if isinstance(source, (str, os.PathLike)):
        return os.path.abspath(os.path.expanduser(os.fspath(source)))
    return tuple(os.path.abspath(os.path.expanduser(os.fspath(s))) for s in source)


def keys_digest(keys: Sequence[str]) -> str:
    """A short digest of image keys, so that a worker can check it sees the client's images."""
    h = hashlib.sha1()
    for k in keys:
        h.update(k.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def worker_device(device: str) -> str:
    """The device a Dask worker runs on: ``device``, except that ``"auto"`` on a worker named by
    an integer ``k`` on a machine with several GPUs is ``cuda:{k mod n_gpus}`` (one worker per GPU)."""
    if device != "auto":
        return device
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n <= 1:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not inside a worker
        return device
    return f"cuda:{int(name) % n}" if isinstance(name, int) or str(name).isdigit() else device


__all__ = [
    "HOW_TO_START",
    "ModelSpec",
    "Scheduler",
    "SchedulerError",
    "client_for",
    "connect",
    "keys_digest",
    "local_cluster",
    "parse_scheduler",
    "portable_source",
    "worker_device",
    "worker_model",
    "worker_slots",
    "worker_source",
]
