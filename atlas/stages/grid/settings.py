"""The grid stage's settings: the defaults, :class:`GridSettings` (the one home of them, which the
config's ``[grid]`` section and ``atlas grid`` read), the check of the sizes, and the memory a grid
plans to use (:func:`grid_memory_bytes`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from atlas.checks import at_least
from atlas.checks import sizes as check_sizes

#: Cells with fewer rows are dropped. Lucid's activation-atlas recipe
#: (``bin_laid_out_activations``, threshold=5, ``count > threshold``) keeps cells of 6 or more:
#: the mean of a handful of rows is mostly the noise of one or two images and renders as a
#: noisy icon.
DEFAULT_MIN_COUNT = 6
#: Zoom levels: 20 x 20 is the paper's overview; each level doubles the resolution.
DEFAULT_SIZES = (20, 40, 80, 160)
#: Dataset examples per cell: a 4 x 2 strip in a hover card, enough to see what the cell
#: responds to without dominating the file (M x 8 int64).
DEFAULT_EXAMPLES = 8
#: Classes per cell by mean attribution.
DEFAULT_TOP_K = 5
#: The largest grid size: 16.8 million cells, far more than any layout fills (a million rows at
#: 6 a cell fill a 400 x 400 grid); a larger one only costs memory (:func:`grid_memory_bytes`).
MAX_GRID_SIZE = 4096
#: Share of the available memory a grid may plan to use.
MEMORY_SHARE = 0.8


@dataclass(frozen=True)
class GridSettings:
    """Everything that decides what ``cells.h5`` holds (hashed into the file).

    Attributes:
        sizes: cells per side of each zoom level (default :data:`DEFAULT_SIZES`).
        min_count: cells with fewer rows are dropped (default :data:`DEFAULT_MIN_COUNT`, as
            Lucid's recipe).
        top_k: classes kept per cell, by mean attribution.
        n_examples: dataset examples per cell (nearest the cell mean by cosine, one per image).
        class_filter: keep only the rows of one class (name, WordNet id or index; see
            :func:`atlas.stages.reduce.select_class_rows`) on an existing layout.
        class_top_n: with ``class_filter``, also keep this many rows most attributed to it.
        chunk_rows: rows read at a time (memory knob; not part of the hash).
    """

    sizes: tuple[int, ...] = DEFAULT_SIZES
    min_count: int = DEFAULT_MIN_COUNT
    top_k: int = DEFAULT_TOP_K
    n_examples: int = DEFAULT_EXAMPLES
    class_filter: str | None = None
    class_top_n: int = 2000
    chunk_rows: int = 32768

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", check_grid_sizes("sizes", self.sizes))
        at_least("min_count", self.min_count, 1)
        at_least("top_k", self.top_k, 1)
        at_least("n_examples", self.n_examples, 0)
        at_least("class_top_n", self.class_top_n, 0)
        at_least("chunk_rows", self.chunk_rows, 1)

    def hashed(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("chunk_rows")
        d["sizes"] = list(self.sizes)
        return d


def check_grid_sizes(key: str, sizes: Any) -> tuple[int, ...]:
    """Grid sizes: distinct positive integers up to :data:`MAX_GRID_SIZE` (a :class:`SettingError` naming ``key``)."""
    values = tuple(sizes)
    big = max((v for v in values if isinstance(v, int)), default=0)
    return check_sizes(key, values, largest=MAX_GRID_SIZE,
                       hint=f": a {big} x {big} grid has {big * big:,} cells, more than any layout fills "
                            f"(the default finest level is {DEFAULT_SIZES[-1]}); use smaller sizes")


def grid_memory_bytes(sizes: Sequence[int], n_rows: int, channels: int, *, min_count: int = 1,
                      n_classes: int = 1000, n_examples: int = DEFAULT_EXAMPLES,
                      chunk_rows: int = GridSettings.chunk_rows) -> int:
    """About the most memory :func:`grid_file` holds for these levels: per level, int64 arrays over
    every cell of the grid (row counts and three cell indexes, 33 bytes a cell) and over the rows
    (cell ids), and per kept cell (at most ``n_rows // min_count`` of them) the float64 sums of its
    activations and class attribution and its examples; plus one chunk of rows."""
    total = 2 * chunk_rows * channels * 4
    for size in sizes:
        cells = size * size
        kept = min(cells, n_rows // max(1, min_count))
        total += 33 * cells + 8 * n_rows + kept * (12 * channels + 9 * n_classes + 32 * n_examples)
    return total
