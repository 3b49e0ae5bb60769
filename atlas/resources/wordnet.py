"""The WordNet noun hierarchy above the 1000 ImageNet classes, and "close relatives".

``data/imagenet_hypernyms.tsv`` holds, for each ImageNet class (WordNet id), every WordNet noun
synset above it with its distance in hypernym steps (``is-a`` links, instance links included;
the shortest distance where there are several paths), and the names of those ancestors. It is
made once from the WordNet 3.0 database (``data.noun``; Debian's ``wordnet-base`` package
installs it at ``/usr/share/wordnet/data.noun``) with::

    python -m atlas.resources.wordnet /usr/share/wordnet/data.noun -o data/imagenet_hypernyms.tsv

Two classes are *close relatives* when a common ancestor lies at most ``max_hops`` steps above
both and is a narrow group, one that holds at most ``max_group`` of the 1000 classes: a wok and a
frying pan (one step below "pan"), a great white shark and a tiger shark (two steps below
"shark", a group of 3). A snorkel and a computer keyboard are both two steps below "device", but
"device" holds hundreds of classes, so they are not relatives. The patch attack leaves a source's
and a target's relatives out when it looks for neighbourhoods of a third class.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

#: default limits of :func:`close_relatives`: steps up to the common ancestor, and its size
DEFAULT_MAX_HOPS = 2
DEFAULT_MAX_GROUP = 25


def parse_data_noun(lines: Iterable[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``data.noun`` lines -> (synset id -> its hypernym ids, synset id -> its first lemma).

    Ids are ``n`` + the 8-digit offset, as ImageNet writes WordNet ids. Hypernyms are the ``@``
    (hypernym) and ``@i`` (instance hypernym) pointers to other noun synsets.
    """
    parents: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for line in lines:
        if not line or line.startswith(" "):  # the licence header lines start with two spaces
            continue
        fields = line.split(" | ")[0].split()
        offset, _lex, pos, w_cnt = fields[0], fields[1], fields[2], int(fields[3], 16)
        if pos != "n":
            continue
        sid = "n" + offset
        names[sid] = fields[4].replace("_", " ")
        i = 4 + 2 * w_cnt
        p_cnt = int(fields[i])
        ups = []
        for k in range(p_cnt):
            sym, target, tpos = fields[i + 1 + 4 * k: i + 4 + 4 * k]
            if sym in ("@", "@i") and tpos == "n":
                ups.append("n" + target)
        parents[sid] = ups
    return parents, names


def ancestors(sid: str, parents: dict[str, list[str]]) -> dict[str, int]:
    """Every synset above ``sid`` with its shortest distance in hypernym steps (``sid``: 0)."""
    dist = {sid: 0}
    frontier = [sid]
    while frontier:
        nxt = []
        for s in frontier:
            for p in parents.get(s, ()):
                if p not in dist:
                    dist[p] = dist[s] + 1
                    nxt.append(p)
        frontier = nxt
    return dist


def write_table(data_noun: str | Path, out: str | Path, wnids: Sequence[str]) -> int:
    """Write ``imagenet_hypernyms.tsv`` for ``wnids`` from a WordNet 3.0 ``data.noun``; returns rows."""
    with open(data_noun, encoding="utf-8", errors="replace") as f:
        parents, names = parse_data_noun(f)
    missing = [w for w in wnids if w not in parents]
    if missing:
        raise ValueError(f"{data_noun} lacks {len(missing)} ImageNet synsets (e.g. {missing[:3]}); "
                         "give the WordNet 3.0 data.noun")
    rows = ["wnid\tancestors (wnid:steps:name, nearest first)"]
    for w in wnids:
        anc = sorted(ancestors(w, parents).items(), key=lambda kv: (kv[1], kv[0]))
        rows.append(w + "\t" + ";".join(f"{a}:{d}:{names.get(a, '')}" for a, d in anc if d > 0))
    Path(out).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(wnids)


@lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, int]]:
    text = resources.files(__package__).joinpath("data", "imagenet_hypernyms.tsv").read_text(encoding="utf-8")
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[1:]:
        if not line.strip():
            continue
        wnid, rest = line.split("\t")
        out[wnid] = {a: int(d) for a, d, _name in (item.split(":", 2) for item in rest.split(";") if item)}
    return out


def hypernyms(wnid: str) -> dict[str, int]:
    """The WordNet synsets above an ImageNet class (``wnid``), with their distance in steps."""
    table = _table()
    if wnid not in table:
        raise ValueError(f"{wnid!r} is not an ImageNet-1k WordNet id")
    return dict(table[wnid])


@lru_cache(maxsize=1)
def group_sizes() -> dict[str, int]:
    """For every WordNet synset above an ImageNet class: how many of the 1000 classes it holds."""
    out: dict[str, int] = {}
    for anc in _table().values():
        for a in anc:
            out[a] = out.get(a, 0) + 1
    return out


def hops_apart(a: str, b: str, max_group: int | None = None) -> int:
    """The fewest steps up from both ``a`` and ``b`` to a common ancestor: ``max(steps from a,
    steps from b)`` minimised over their common ancestors (0 when ``a == b``). With
    ``max_group``, only ancestors holding at most that many of the 1000 classes count."""
    if a == b:
        return 0
    da, db = {a: 0, **hypernyms(a)}, {b: 0, **hypernyms(b)}
    sizes = group_sizes()
    common = [c for c in set(da) & set(db) if max_group is None or sizes.get(c, 1) <= max_group]
    return min((max(da[c], db[c]) for c in common), default=10**6)


def close_relatives(wnid: str, wnids: Sequence[str], max_hops: int = DEFAULT_MAX_HOPS,
                    max_group: int | None = DEFAULT_MAX_GROUP) -> list[int]:
    """Indices into ``wnids`` of the classes with a common ancestor at most ``max_hops`` steps
    above both them and ``wnid`` that holds at most ``max_group`` of the 1000 classes (``wnid``
    itself included when it is in ``wnids``)."""
    return [i for i, w in enumerate(wnids) if w in _table() and hops_apart(wnid, w, max_group) <= max_hops]


def main(argv: Sequence[str] | None = None) -> int:
    from atlas.resources import imagenet_wnids

    ap = argparse.ArgumentParser(description="write the ImageNet classes' WordNet ancestors from WordNet 3.0")
    ap.add_argument("data_noun", help="WordNet 3.0 data.noun, e.g. /usr/share/wordnet/data.noun")
    ap.add_argument("-o", "--out", default="data/imagenet_hypernyms.tsv")
    args = ap.parse_args(argv)
    n = write_table(args.data_noun, args.out, imagenet_wnids())
    print(f"wrote {n} classes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
