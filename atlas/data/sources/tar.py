"""Uncompressed tar shards as a source (:class:`TarSource`): image members read by their offset,
WebDataset ``.cls`` labels, a few open shards per process."""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from atlas.data.labels import infer_label
from atlas.data.sources.base import (
    _ACCEPTED,
    IMAGE_EXTENSIONS,
    EmptySourceError,
    ImageRef,
    ImageSource,
    PathLike,
    _has_image_extension,
    _is_compressed_tar,
)

log = logging.getLogger("atlas.data.sources")


class TarSource(ImageSource):
    """Image members of uncompressed tar shards, read by offset.

    Shards are taken in sorted order and their image members in archive order. A WebDataset-style
    ``<key>.cls`` member (an integer) gives the label of the images with the same key. Each
    process opens the shards it reads on first use and keeps at most ``max_open`` of them open.
    """

    kind = "tar"

    def __init__(self, shards: Sequence[PathLike], root: str | None = None, max_open: int = 8):
        if not shards:
            raise EmptySourceError(f"no tar shards given. Accepted sources: {_ACCEPTED}.")
        shard_paths = sorted(os.path.abspath(os.path.expanduser(os.fspath(s))) for s in shards)
        for s in shard_paths:
            if _is_compressed_tar(s):
                raise ValueError(
                    f"{s} is a compressed tar; members are read by offset, so shards must be plain "
                    f"uncompressed .tar files (unpack it, or re-create it with `tar cf`)"
                )
            if not os.path.isfile(s):
                raise ValueError(f"tar shard {s!r} does not exist")
        common = os.path.commonpath([os.path.dirname(s) for s in shard_paths])
        names = [os.path.relpath(s, common).replace(os.sep, "/") for s in shard_paths]

        refs: list[ImageRef] = []
        shard_of: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        ignored = 0
        for si, (path, name) in enumerate(zip(shard_paths, names)):
            members, cls_labels, n_ignored = _scan_tar(path)
            ignored += n_ignored
            stem = name.rsplit("/", 1)[-1][: -len(".tar")]
            for member, offset, size in members:
                label = cls_labels.get(_webdataset_key(member))
                if label is None:
                    label = infer_label([stem, *member.split("/")])
                refs.append(ImageRef(len(refs), f"{name}::{member}", label))
                shard_of.append(si)
                offsets.append(offset)
                sizes.append(size)
        where = root or (shard_paths[0] if len(shard_paths) == 1 else f"{common} ({len(shard_paths)} shards)")
        if not refs:
            raise EmptySourceError(
                f"no image members in {where} ({ignored} other member(s) ignored). Image members need "
                f"one of the extensions {', '.join(sorted(IMAGE_EXTENSIONS))} (any case). "
                f"Accepted sources: {_ACCEPTED}."
            )
        super().__init__(where, refs, ignored)
        self.shards = tuple(shard_paths)
        self.max_open = max(1, int(max_open))
        self._shard_of = np.asarray(shard_of, dtype=np.int32)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._reset_handles()

    def _reset_handles(self) -> None:
        self._pid = os.getpid()
        self._handles: OrderedDict[int, io.BufferedReader] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_handles", "_lock", "_pid"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_handles()

    def _handle(self, shard: int) -> io.BufferedReader:
        f = self._handles.get(shard)
        if f is not None:
            self._handles.move_to_end(shard)
            return f
        f = open(self.shards[shard], "rb")  # noqa: SIM115 -- kept open across reads, closed in close()
        self._handles[shard] = f
        while len(self._handles) > self.max_open:
            _, old = self._handles.popitem(last=False)
            old.close()
        return f

    def read_bytes(self, ref: ImageRef | str) -> bytes:
        ref = self._resolve(ref)
        i = ref.index
        shard, offset, size = int(self._shard_of[i]), int(self._offsets[i]), int(self._sizes[i])
        if os.getpid() != self._pid:  # a forked worker: the parent's handles share its file offsets
            self._reset_handles()
        with self._lock:
            f = self._handle(shard)
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise EOFError(f"{self.shards[shard]} ends {size - len(data)} bytes into member {ref.key!r}")
        return data

    def close(self) -> None:
        with self._lock:
            for f in self._handles.values():
                f.close()
            self._handles.clear()

    def __del__(self) -> None:
        handles = getattr(self, "_handles", None)
        if handles and getattr(self, "_pid", None) == os.getpid():
            for f in handles.values():
                f.close()


def _webdataset_key(member: str) -> str:
    """``dir/sample.jpg`` -> ``dir/sample`` (WebDataset: the key ends at the first dot of the name)."""
    head, _, name = member.rpartition("/")
    stem = name.split(".", 1)[0]
    return f"{head}/{stem}" if head else stem


def _scan_tar(path: str) -> tuple[list[tuple[str, int, int]], dict[str, int], int]:
    """((member, data offset, size) of image members, labels from .cls members, ignored count)."""
    members: list[tuple[str, int, int]] = []
    cls_labels: dict[str, int] = {}
    ignored = 0
    try:
        tf = tarfile.open(path, "r:")
    except tarfile.ReadError as e:
        raise ValueError(
            f"{path} is not an uncompressed tar file ({e}); shards must be plain .tar files"
        ) from None
    with tf:
        try:
            for m in tf:
                if not m.isreg():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if base.startswith("."):
                    ignored += 1
                elif _has_image_extension(base):
                    members.append((m.name, m.offset_data, m.size))
                elif base.lower().endswith(".cls") and m.size <= 32:
                    f = tf.extractfile(m)
                    text = f.read().decode("ascii", "replace").strip() if f else ""
                    if re.fullmatch(r"-?\d+", text):
                        cls_labels[_webdataset_key(m.name)] = int(text)
                    else:
                        ignored += 1
                else:
                    ignored += 1
        except (tarfile.ReadError, EOFError) as e:
            log.warning("%s: tar archive ends early after %d image members (%s); keeping those",
                        path, len(members), e)
    return members, cls_labels, ignored
