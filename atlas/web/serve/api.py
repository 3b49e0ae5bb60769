"""The read-only JSON API, and the pure functions behind it that ``atlas export`` shares.

Routes (``run`` may be left out when one atlas is served)::

    /api/runs                         the atlases found under the served folder (also /atlas.json)
    /api/class?run=&name=[&level=]    per-cell attribution to a class (for highlighting)
    /api/cell?run=&level=&id=         one cell: count, top classes with names, examples, URLs
    /api/classes?run=&q=[&limit=]     class names matching a query (autocomplete)
    /api/overlays?run=                photos placed on the atlas by `atlas explain --atlas`
                                      (the run's overlays/index.json; an empty list when none)
    /api/attacks?run=                 a comparison atlas: where the neighbourhoods chosen by
                                      `atlas attack` for its two classes lie on it
                                      (:func:`atlas.web.serve.attacks.attack_marks`)

A class highlight is, per grid level, ``{"max": m, "cells": [[cell id, attribution], ...]}``
over the cells whose top classes hold the class with a positive value (:func:`class_highlight`);
an export writes the same document for every class of the atlas to ``classes/<index>.json``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from atlas.web.serve.attacks import attack_marks, comparison_folders, report_files
from atlas.web.serve.errors import HTTPError, parse_int
from atlas.web.serve.files import LRU, inside
from atlas.web.serve.runs import Run, comparison_axis, data_url, ordered_runs

#: per class index: (cell ids, attribution values) of the cells whose top classes hold it
Attribution = dict[int, tuple[list[int], list[float]]]


def read_region(run: Run, level: dict[str, Any], ry: int, rx: int) -> dict[str, Any] | None:
    """The per-cell metadata of region ``(ry, rx)`` of a grid level, or None where no cell landed."""
    if [ry, rx] not in level.get("regions", []):
        return None
    path = inside(run.path, str(level["meta_url"]).format(ry=ry, rx=rx).split("/"))
    return json.loads(path.read_bytes())


def level_attribution(regions: Iterable[dict[str, Any] | None]) -> Attribution:
    """Index a level's region documents by class: ``{class: (cell ids, values)}``."""
    index: Attribution = {}
    for doc in regions:
        for cell in doc["cells"] if doc else []:
            for c, v in cell["top"]:
                ids, values = index.setdefault(c, ([], []))
                ids.append(cell["id"])
                values.append(v)
    return index


def class_highlight(attribution: Attribution, class_index: int) -> dict[str, Any]:
    """``{"max", "cells"}``: the cells with a positive attribution to the class, and the largest."""
    ids, values = attribution.get(class_index, ([], []))
    cells = [[i, v] for i, v in zip(ids, values) if v > 0]
    return {"max": max((v for _i, v in cells), default=0.0), "cells": cells}


def _index_entries(run: Run, folder: str, key: str, ref: str, suffix: str,
                   fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The valid entries of ``run/<folder>/index.json``'s list ``key``: dicts with a string
    ``name`` and a string ``ref`` that stays under ``folder/`` and ends in ``suffix``, cut to
    ``fields``. A missing or broken index has none."""
    try:
        doc = json.loads((run.path / folder / "index.json").read_text(encoding="utf-8"))
        entries = doc[key] if isinstance(doc, dict) else []
    except (OSError, ValueError, KeyError):
        entries = []
    return [
        {k: e[k] for k in fields if k in e}
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get(ref), str)
        and e[ref].startswith(f"{folder}/") and e[ref].endswith(suffix) and ".." not in e[ref]
    ]


def overlay_entries(run: Run) -> list[dict[str, Any]]:
    """The valid entries of the run's ``overlays/index.json`` (photos placed by `atlas explain`)."""
    return _index_entries(run, "overlays", "overlays", "file", ".json",
                          ("name", "file", "photo", "class", "probability"))


def channel_view_entries(run: Run) -> list[dict[str, Any]]:
    """The valid entries of the run's ``channels/index.json`` (pages written by `atlas channels --run`)."""
    return _index_entries(run, "channels", "views", "page", "/index.html", ("name", "page", "photo", "layer"))


class ApiServer(Protocol):
    """What :class:`JsonApi` needs of its server (:class:`~atlas.web.serve.server.AtlasServer` has it)."""

    parsed: LRU
    root: Path

    def runs(self) -> dict[str, Run]: ...

    def run(self, run_id: str | None) -> Run: ...


class JsonApi:
    """Mixin of the request handler: the ``/api/...`` routes, with parsed files cached on the server."""

    server: ApiServer
    headers: Any
    _send_bytes: Callable[[int, bytes, dict[str, str]], None]
    _security_headers: Callable[[], None]

    def _send_json(self, obj: Any) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        etag = '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
        headers["ETag"] = etag
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self._security_headers()
            self.end_headers()
            return
        if len(body) > 1024 and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=5, mtime=0)
            headers["Content-Encoding"] = "gzip"
        self._send_bytes(200, body, headers)

    def _api_runs(self, query: dict[str, str]) -> None:
        runs = self.server.runs()
        self._send_json({"api": True, "runs": [run.describe(runs) for _id, run in ordered_runs(runs)]})

    def _level(self, run: Run, query: dict[str, str]) -> dict[str, Any]:
        if not query.get("level"):
            raise HTTPError(400, "pass level= (a grid size of the atlas)")
        size = parse_int(query["level"], "level", 1, 1 << 20)
        for level in run.manifest.get("levels", []):
            if level.get("size") == size:
                return level
        sizes = [lv.get("size") for lv in run.manifest.get("levels", [])]
        raise HTTPError(404, f"no grid level {size}; this atlas has {sizes}")

    def _region(self, run: Run, level: dict[str, Any], ry: int, rx: int) -> dict[str, Any] | None:
        if [ry, rx] not in level.get("regions", []):
            return None
        path = inside(run.path, str(level["meta_url"]).format(ry=ry, rx=rx).split("/"))
        st = path.stat()
        key = ("region", str(path), st.st_mtime_ns)
        doc = self.server.parsed.get(key)
        if doc is None:
            doc = read_region(run, level, ry, rx)
            self.server.parsed.put(key, doc, st.st_size * 4)
        return doc

    def _api_cell(self, query: dict[str, str]) -> None:
        run = self.server.run(query.get("run"))
        level = self._level(run, query)
        size = int(level["size"])
        cell_id = parse_int(query.get("id"), "id", 0, size * size - 1)
        iy, ix = divmod(cell_id, size)
        r = int(level.get("region", 40))
        doc = self._region(run, level, iy // r, ix // r)
        cell = next((c for c in doc["cells"] if c["id"] == cell_id), None) if doc else None
        if cell is None:
            raise HTTPError(404, f"grid {size} has no cell {cell_id} (too few activations landed there)")
        names = doc["names"] if doc else {}
        base = data_url(run.id, "/data/")
        self._send_json({
            "run": run.id,
            "level": size,
            **{k: cell[k] for k in ("id", "iy", "ix", "count", "done", "center", "examples")},
            "top": [{"class": c, "name": names.get(str(c), f"class {c}"), "value": v} for c, v in cell["top"]],
            "thumbs": [base + quote(t) if t else None for t in cell.get("thumbs", [])],
            "icon": {**cell["icon"], "sprite": base + quote(cell["icon"]["sprite"])} if cell.get("icon") else None,
        })

    def _class_index(self, run: Run, query: dict[str, str]) -> tuple[int, str]:
        name = query.get("name") or query.get("q")
        if not name:
            raise HTTPError(400, "pass name= (a class name, WordNet id or index)")
        from atlas.resources import class_index

        classes = list(run.manifest.get("classes", []))
        try:
            idx = class_index(name, classes or None)
        except ValueError as e:
            raise HTTPError(404, str(e)) from e
        return idx, classes[idx] if idx < len(classes) else f"class {idx}"

    def _level_attribution(self, run: Run, level: dict[str, Any]) -> Attribution:
        key = ("classes", run.id, run.mtime_ns, level["size"])
        index = self.server.parsed.get(key)
        if index is None:
            index = level_attribution(self._region(run, level, ry, rx) for ry, rx in level.get("regions", []))
            self.server.parsed.put(key, index, 64 * sum(len(ids) for ids, _v in index.values()))
        return index

    def _api_class(self, query: dict[str, str]) -> None:
        run = self.server.run(query.get("run"))
        idx, name = self._class_index(run, query)
        one = self._level(run, query) if query.get("level") else None
        levels = [one] if one is not None else list(run.manifest.get("levels", []))
        out = {str(level["size"]): class_highlight(self._level_attribution(run, level), idx) for level in levels}
        result: dict[str, Any] = {"run": run.id, "class": {"index": idx, "name": name}}
        if one is not None:
            result.update(level=one["size"], **out[str(one["size"])])
        else:
            result["levels"] = out
        self._send_json(result)

    def _api_classes(self, query: dict[str, str]) -> None:
        runs = self.server.runs()
        run = self.server.run(query.get("run")) if query.get("run") or len(runs) == 1 else None
        if run is not None:
            classes = list(run.manifest.get("classes", []))
        else:
            from atlas.resources import imagenet_class_names

            classes = imagenet_class_names()
        q = query.get("q", "").strip().lower()
        limit = parse_int(query.get("limit", "20"), "limit", 1, 1000)
        starts = [i for i, n in enumerate(classes) if n.lower().startswith(q)]
        contains = [i for i, n in enumerate(classes) if q in n.lower() and not n.lower().startswith(q)]
        hits = (starts + contains)[:limit]
        self._send_json({"classes": [{"index": i, "name": classes[i]} for i in hits]})

    def _api_overlays(self, query: dict[str, str]) -> None:
        self._send_json({"overlays": overlay_entries(self.server.run(query.get("run")))})

    def _api_channels(self, query: dict[str, str]) -> None:
        self._send_json({"views": channel_view_entries(self.server.run(query.get("run")))})

    def _api_attacks(self, query: dict[str, str]) -> None:
        run = self.server.run(query.get("run"))
        if comparison_axis(run.manifest) is None:
            raise HTTPError(404, f"atlas {run.id!r} is not a comparison atlas (one built by `atlas compare RUN A B`, "
                                 "which records its two classes); attacks are marked on comparisons only")
        root = self.server.root
        where = comparison_folders(run, root)
        files = report_files(where[1], root) if where else []
        stamps = []
        for path in (where[0] / "layout.h5", where[1] / "layout.h5") if where else ():
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        key = ("attacks", run.id, run.mtime_ns, tuple(stamps), tuple((str(f.path), f.stamp) for f in files))
        doc = self.server.parsed.get(key)
        if doc is None:
            doc = attack_marks(run, root, files)
            self.server.parsed.put(key, doc, 1024 + 512 * (len(doc["marks"]) + len(doc["off_map"])))
        self._send_json(doc)


__all__ = ["ApiServer", "Attribution", "JsonApi", "channel_view_entries", "class_highlight", "level_attribution", "overlay_entries",
           "read_region"]
